//! What a server admin does to media: look a piece up, delete it, quarantine it (never served
//! again, here or to other servers) or protect it from quarantine; list and delete a user's
//! uploads; find the media a room's events use; delete old local media and old copies of
//! other servers' media.
//!
//! `media` is keyed by server and media ID, with no index by uploader or room: listings read
//! every record of this server (one prefix scan), a room's media its whole timeline. These are
//! admins' requests, not hot paths.

use std::collections::BTreeSet;

use ruma::{OwnedServerName, RoomId, ServerName, UserId};
use serde_json::Value;

use crate::{
    Error, Result,
    service::{Services, media::MediaRecord},
    store::{Cf, keys},
};

/// A piece of media named by an admin: its server and ID.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MediaName {
    pub server: OwnedServerName,
    pub media_id: String,
}

impl MediaName {
    /// From `mxc://server/id`.
    pub fn parse_mxc(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("mxc://")?;
        let (server, media_id) = rest.split_once('/')?;
        let server = ServerName::parse(server).ok()?;
        let well_formed = !media_id.is_empty()
            && media_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        well_formed.then(|| Self {
            server,
            media_id: media_id.to_owned(),
        })
    }

    pub fn mxc(&self) -> String {
        format!("mxc://{}/{}", self.server, self.media_id)
    }
}

/// How a user's media listing is sorted (Synapse's `order_by`).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum MediaOrder {
    MediaId,
    UploadName,
    #[default]
    CreatedTs,
    MediaLength,
    MediaType,
    Quarantined,
    Protected,
}

impl MediaOrder {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "media_id" => Self::MediaId,
            "upload_name" => Self::UploadName,
            "created_ts" | "last_access_ts" => Self::CreatedTs,
            "media_length" => Self::MediaLength,
            "media_type" => Self::MediaType,
            "quarantined_by" => Self::Quarantined,
            "safe_from_quarantine" => Self::Protected,
            _ => return None,
        })
    }
}

impl Services {
    /// Every piece of this server's media, with its ID (one prefix scan).
    fn local_media(&self) -> Result<Vec<(String, MediaRecord)>> {
        let prefix = keys::prefix(self.server_name.as_bytes());
        let mut all = Vec::new();
        for item in self.store.scan_prefix(Cf::Media, &prefix) {
            let (key, value) = item?;
            let media_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Ok(record) = serde_json::from_slice::<MediaRecord>(&value) {
                all.push((media_id, record));
            }
        }
        Ok(all)
    }

    /// A user's uploads, sorted (`backwards`: largest first).
    pub fn admin_user_media(
        &self,
        user_id: &UserId,
        order: MediaOrder,
        backwards: bool,
    ) -> Result<Vec<(String, MediaRecord)>> {
        let mut media: Vec<(String, MediaRecord)> = self
            .local_media()?
            .into_iter()
            .filter(|(_, r)| r.uploader.as_deref() == Some(user_id.as_str()))
            .collect();
        media.sort_by(|(a_id, a), (b_id, b)| {
            let by = match order {
                MediaOrder::MediaId => a_id.cmp(b_id),
                MediaOrder::UploadName => a.filename.cmp(&b.filename),
                MediaOrder::CreatedTs => a.created_ts.cmp(&b.created_ts),
                MediaOrder::MediaLength => a.size.cmp(&b.size),
                MediaOrder::MediaType => a.content_type.cmp(&b.content_type),
                MediaOrder::Quarantined => a.quarantined.cmp(&b.quarantined),
                MediaOrder::Protected => a.protected.cmp(&b.protected),
            }
            .then_with(|| a_id.cmp(b_id));
            if backwards { by.reverse() } else { by }
        });
        Ok(media)
    }

    /// How many uploads and bytes each local user has, of the media uploaded in
    /// `[from_ts, until_ts)`: `(user, count, bytes)` by user ID.
    pub fn admin_media_statistics(
        &self,
        from_ts: u64,
        until_ts: u64,
    ) -> Result<Vec<(ruma::OwnedUserId, u64, u64)>> {
        let mut by_user: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for (_, record) in self.local_media()? {
            let Some(uploader) = record.uploader else {
                continue;
            };
            if record.created_ts < from_ts || record.created_ts >= until_ts {
                continue;
            }
            let entry = by_user.entry(uploader).or_default();
            entry.0 += 1;
            entry.1 += record.size;
        }
        Ok(by_user
            .into_iter()
            .filter_map(|(user, (count, bytes))| {
                ruma::OwnedUserId::try_from(user)
                    .ok()
                    .map(|u| (u, count, bytes))
            })
            .collect())
    }

    /// Deletes media of this server (400 for another server's: only its copy is here, and
    /// `purge_media_cache` deletes those). `false` when there is no such media.
    pub fn admin_delete_media(&self, name: &MediaName) -> Result<bool> {
        if name.server != self.server_name {
            return Err(Error::invalid_param("Can only delete local media."));
        }
        self.media.delete(&name.server, &name.media_id)
    }

    /// Deletes this server's media uploaded before `before_ts` and larger than `size_gt`
    /// bytes, except protected media and, with `keep_profiles`, what users and rooms use as
    /// avatars. Returns the media IDs deleted.
    pub fn admin_delete_old_media(
        &self,
        before_ts: u64,
        size_gt: u64,
        keep_profiles: bool,
    ) -> Result<Vec<String>> {
        let avatars = if keep_profiles {
            self.avatar_media()?
        } else {
            BTreeSet::new()
        };
        let mut deleted = Vec::new();
        for (media_id, record) in self.local_media()? {
            if record.created_ts >= before_ts || record.size <= size_gt || record.protected {
                continue;
            }
            let name = MediaName {
                server: self.server_name.clone(),
                media_id,
            };
            if avatars.contains(&name) {
                continue;
            }
            if self.media.delete(&name.server, &name.media_id)? {
                deleted.push(name.media_id);
            }
        }
        Ok(deleted)
    }

    /// Deletes the copies of other servers' media fetched before `before_ts`; returns how
    /// many.
    pub fn admin_purge_remote_media(&self, before_ts: u64) -> Result<u64> {
        let mut old = Vec::new();
        for item in self.store.scan_prefix(Cf::Media, &[]) {
            let (key, value) = item?;
            let mut parts = keys::split(&key);
            let (Some(server), Some(media_id)) = (parts.next(), parts.next()) else {
                continue;
            };
            if server == self.server_name.as_bytes() {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<MediaRecord>(&value) else {
                continue;
            };
            if record.created_ts < before_ts
                && let Ok(server) = ServerName::parse(String::from_utf8_lossy(server).as_ref())
            {
                old.push((server, String::from_utf8_lossy(media_id).into_owned()));
            }
        }
        let mut deleted = 0;
        for (server, media_id) in old {
            if self.media.delete(&server, &media_id)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// The media users and rooms show as avatars (a scan of profiles and of the rooms'
    /// current avatars).
    fn avatar_media(&self) -> Result<BTreeSet<MediaName>> {
        let mut avatars = BTreeSet::new();
        for item in self.store.scan_prefix(Cf::Profile, &[]) {
            let (key, value) = item?;
            if key.ends_with(b"\xFFavatar_url")
                && let Ok(Value::String(uri)) = serde_json::from_slice::<Value>(&value)
                && let Some(name) = MediaName::parse_mxc(&uri)
            {
                avatars.insert(name);
            }
        }
        for item in self.store.scan_prefix(Cf::Rooms, &[]) {
            let (key, _) = item?;
            let Ok(room_id) = RoomId::parse(String::from_utf8_lossy(&key).as_ref()) else {
                continue;
            };
            let state = self.timeline.current_state(&room_id)?;
            if let Some(event_id) = state.get(&("m.room.avatar".to_owned(), String::new()))
                && let Some(uri) =
                    self.timeline.event_fields(&room_id, event_id)?["content"]["url"].as_str()
                && let Some(name) = MediaName::parse_mxc(uri)
            {
                avatars.insert(name);
            }
        }
        Ok(avatars)
    }

    /// Quarantines (or releases) one piece of media; protected media stays served. Returns
    /// whether it changed (`None`: no such media).
    pub fn admin_quarantine(
        &self,
        name: &MediaName,
        admin: &UserId,
        quarantine: bool,
    ) -> Result<Option<bool>> {
        let Some(record) = self.media.get(&name.server, &name.media_id)? else {
            return Ok(None);
        };
        if (quarantine && record.protected) || record.quarantined == quarantine {
            return Ok(Some(false));
        }
        let by = quarantine.then(|| admin.to_string());
        self.media
            .set_quarantined_by(&name.server, &name.media_id, by)?;
        Ok(Some(true))
    }

    /// Protects this server's media from quarantine, or lifts the protection. `None`: no
    /// such media.
    pub fn admin_protect(&self, media_id: &str, protect: bool) -> Result<Option<()>> {
        let server = self.server_name.clone();
        Ok(self
            .media
            .set_protected(&server, media_id, protect)?
            .then_some(()))
    }

    /// The media a room's events use (every `mxc://` URI in their contents, one pass over
    /// its timeline), this server's and other servers'.
    pub fn admin_room_media(&self, room_id: &RoomId) -> Result<BTreeSet<MediaName>> {
        if self.timeline.room(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        let mut found = BTreeSet::new();
        for item in self
            .store
            .scan_prefix(Cf::Timeline, &keys::prefix(room_id.as_bytes()))
        {
            let (_, short) = item?;
            let Some(event_id) = keys::parse_u64_be(&short)
                .map(|short| self.short_ids.event_id(short))
                .transpose()?
                .flatten()
                .and_then(|id| ruma::OwnedEventId::try_from(id).ok())
            else {
                continue;
            };
            if let Ok(fields) = self.timeline.event_fields(room_id, &event_id) {
                collect_mxc(&fields["content"], &mut found);
            }
        }
        Ok(found)
    }

    /// Quarantines every piece of media a room uses; returns how many were quarantined.
    pub fn admin_quarantine_room_media(&self, room_id: &RoomId, admin: &UserId) -> Result<u64> {
        let mut count = 0;
        for name in self.admin_room_media(room_id)? {
            if self.admin_quarantine(&name, admin, true)? == Some(true) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Quarantines every upload of a user; returns how many were quarantined.
    pub fn admin_quarantine_user_media(&self, user_id: &UserId, admin: &UserId) -> Result<u64> {
        let mut count = 0;
        for (media_id, _) in self.admin_user_media(user_id, MediaOrder::MediaId, false)? {
            let name = MediaName {
                server: self.server_name.clone(),
                media_id,
            };
            if self.admin_quarantine(&name, admin, true)? == Some(true) {
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Every `mxc://` URI in a JSON value.
fn collect_mxc(value: &Value, found: &mut BTreeSet<MediaName>) {
    match value {
        Value::String(text) => {
            if let Some(name) = MediaName::parse_mxc(text) {
                found.insert(name);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_mxc(v, found)),
        Value::Object(fields) => fields.values().for_each(|v| collect_mxc(v, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::MediaName;

    #[test]
    fn mxc_uris_parse_strictly() {
        let name = MediaName::parse_mxc("mxc://example.org/abc_DEF-1").unwrap();
        assert_eq!(name.server.as_str(), "example.org");
        assert_eq!(name.media_id, "abc_DEF-1");
        assert_eq!(name.mxc(), "mxc://example.org/abc_DEF-1");
        for bad in [
            "mxc://example.org/",
            "mxc://example.org",
            "https://example.org/abc",
            "mxc://exa mple.org/abc",
            "mxc://example.org/a/b",
        ] {
            assert!(MediaName::parse_mxc(bad).is_none(), "{bad}");
        }
    }
}
