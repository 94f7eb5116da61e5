//! The published room directory (`/publicRooms`, `/directory/list/room/{id}`), room summaries,
//! and the checks on `m.room.canonical_alias` content.
//!
//! A room is described from its current state by point reads (a handful of state keys and one
//! prefix scan of its members), never by expanding the whole state: a directory answer
//! describes every published room.

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, RoomVersionId, UserId,
    events::room::member::MembershipState,
};
use serde::Serialize;
use serde_json::Value;

use super::{state_store::StateEntry, timeline::RoomRecord};
use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf},
};

/// What the directory and the room summary say about a room. Serialises as a spec
/// `PublishedRoomsChunk`; the summary adds the fields marked `skip`.
#[derive(Clone, Debug, Serialize)]
pub struct RoomDescription {
    pub room_id: OwnedRoomId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    pub num_joined_members: u64,
    pub world_readable: bool,
    pub guest_can_join: bool,
    pub join_rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type: Option<String>,
    /// Rooms whose members may join (restricted join rules); only the summary shows them.
    #[serde(skip)]
    pub allowed_room_ids: Vec<String>,
    #[serde(skip)]
    pub room_version: RoomVersionId,
    /// The `algorithm` of `m.room.encryption`, if the room is encrypted.
    #[serde(skip)]
    pub encryption: Option<String>,
}

impl RoomDescription {
    /// Whether `term` (already lower-cased) occurs in the name, topic, canonical alias or ID.
    fn matches(&self, term: &str) -> bool {
        [
            self.name.as_deref(),
            self.topic.as_deref(),
            self.canonical_alias.as_deref(),
            Some(self.room_id.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|text| text.to_lowercase().contains(term))
    }

    /// Whether anyone may see the summary: the room invites the public to join or knock, or
    /// lets anyone read its history.
    /// The room summary of the spec (`/room_summary`, `/hierarchy`): the description with its
    /// room version, encryption and, for restricted rooms, the rooms whose members may join.
    pub fn summary_json(&self) -> Result<Value> {
        let mut summary = serde_json::to_value(self)?;
        summary["room_version"] = self.room_version.as_str().into();
        if let Some(algorithm) = &self.encryption {
            summary["encryption"] = algorithm.as_str().into();
        }
        if !self.allowed_room_ids.is_empty() {
            summary["allowed_room_ids"] = serde_json::to_value(&self.allowed_room_ids)?;
        }
        Ok(summary)
    }

    pub fn open_to_all(&self) -> bool {
        matches!(
            self.join_rule.as_str(),
            "public" | "knock" | "knock_restricted"
        ) || self.world_readable
    }
}

/// What `/publicRooms` was asked for.
#[derive(Debug, Default)]
pub struct DirectoryQuery {
    pub limit: Option<u64>,
    pub since: Option<String>,
    /// Case-insensitive substring of the name, topic, canonical alias or room ID.
    pub search_term: Option<String>,
    /// Room types to keep (`None` in the list: rooms without a type); empty keeps all.
    pub room_types: Vec<Option<String>>,
}

/// One page of the directory.
#[derive(Debug)]
pub struct DirectoryPage {
    pub rooms: Vec<RoomDescription>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: u64,
}

/// Rooms per page when the client names no limit, and the most it may ask for.
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 500;

/// Pagination tokens are offsets into the ordered directory, written `o<offset>` so that they
/// stay opaque to clients and cannot be mistaken for other tokens.
fn batch_token(offset: u64) -> String {
    format!("o{offset}")
}

fn parse_batch_token(token: &str) -> Result<u64> {
    token
        .strip_prefix('o')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::invalid_param("Unknown pagination token."))
}

fn bad_alias(message: impl Into<String>) -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::BadAlias,
        message,
    )
}

/// A string field of a JSON object, if it is one.
fn string_field(content: &Value, field: &str) -> Option<String> {
    content
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl Services {
    /// The content of the state event `(event_type, "")` in a compressed state, if present.
    fn state_content(
        &self,
        room_id: &RoomId,
        entries: &[StateEntry],
        event_type: &str,
    ) -> Result<Option<Value>> {
        match self.timeline.lookup(entries, event_type, "")? {
            Some(event_id) => Ok(Some(
                self.timeline.event_fields(room_id, &event_id)?["content"].take(),
            )),
            None => Ok(None),
        }
    }

    /// Describes a room from its current state: what `/publicRooms` lists and
    /// `/room_summary` answers. `404 M_NOT_FOUND` for a room this server does not know.
    pub fn describe_room(&self, room_id: &RoomId) -> Result<RoomDescription> {
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("No such room."))?;
        self.describe(room_id, &room)
    }

    fn describe(&self, room_id: &RoomId, room: &RoomRecord) -> Result<RoomDescription> {
        let entries = self.timeline.current_state_entries(room)?;
        let content = |event_type: &str| -> Result<Value> {
            Ok(self
                .state_content(room_id, &entries, event_type)?
                .unwrap_or(Value::Null))
        };
        let create = content("m.room.create")?;
        let join_rules = content("m.room.join_rules")?;
        // Without a join rules event nobody can join uninvited: the auth rules read it as
        // `invite`.
        let join_rule = string_field(&join_rules, "join_rule").unwrap_or_else(|| "invite".into());
        let allowed_room_ids = if matches!(join_rule.as_str(), "restricted" | "knock_restricted") {
            join_rules["allow"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["type"] == "m.room_membership")
                .filter_map(|a| string_field(a, "room_id"))
                .collect()
        } else {
            Vec::new()
        };
        let canonical_alias = string_field(&content("m.room.canonical_alias")?, "alias")
            .filter(|a| RoomAliasId::parse(a).is_ok());
        let avatar_url =
            string_field(&content("m.room.avatar")?, "url").filter(|url| url.starts_with("mxc://"));
        let num_joined_members = self
            .members
            .of_room(room_id)?
            .iter()
            .filter(|(_, membership)| *membership == MembershipState::Join)
            .count() as u64;
        Ok(RoomDescription {
            room_id: room_id.to_owned(),
            canonical_alias,
            name: string_field(&content("m.room.name")?, "name"),
            topic: string_field(&content("m.room.topic")?, "topic"),
            avatar_url,
            num_joined_members,
            world_readable: content("m.room.history_visibility")?["history_visibility"]
                == "world_readable",
            guest_can_join: content("m.room.guest_access")?["guest_access"] == "can_join",
            join_rule,
            room_type: string_field(&create, "type"),
            allowed_room_ids,
            room_version: room.version.clone(),
            encryption: string_field(&content("m.room.encryption")?, "algorithm"),
        })
    }

    /// Whether a room is published in this server's directory. `404` for an unknown room.
    pub fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        if self.timeline.room(room_id)?.is_none() {
            return Err(Error::not_found("No such room."));
        }
        Ok(self.store.contains(Cf::PublicRooms, room_id.as_bytes())?)
    }

    /// Publishes or hides a room, as `user_id`: allowed to server admins and to members with the
    /// power to change the room's canonical alias.
    pub fn set_published(&self, room_id: &RoomId, user_id: &UserId, publish: bool) -> Result<()> {
        if self.timeline.room(room_id)?.is_none() {
            return Err(Error::not_found("No such room."));
        }
        let admin = self.users.get(user_id)?.is_some_and(|u| u.admin);
        if !admin {
            let joined = self
                .members
                .membership(room_id, user_id)?
                .is_some_and(|m| m.membership == MembershipState::Join);
            if !joined
                || self.power_level(room_id, user_id)?
                    < self.state_power_needed(room_id, "m.room.canonical_alias")?
            {
                return Err(Error::forbidden(
                    "Only server admins and room members who may change the room's canonical alias may publish it.",
                ));
            }
        }
        self.publish(room_id, publish)
    }

    /// Publishes or hides a room with no permission check (createRoom's `visibility`).
    pub fn publish(&self, room_id: &RoomId, publish: bool) -> Result<()> {
        let mut batch = Batch::new();
        if publish {
            batch.put(Cf::PublicRooms, room_id.as_bytes(), Vec::new());
        } else {
            batch.delete(Cf::PublicRooms, room_id.as_bytes());
        }
        self.store.write(batch)?;
        Ok(())
    }

    /// The power level a user needs to send the state event `event_type`, per the room's
    /// current power levels (`state_default` is 50 with a power levels event, 0 without).
    pub fn state_power_needed(&self, room_id: &RoomId, event_type: &str) -> Result<i64> {
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("No such room."))?;
        let entries = self.timeline.current_state_entries(&room)?;
        Ok(
            match self.state_content(room_id, &entries, "m.room.power_levels")? {
                Some(power) => power["events"][event_type]
                    .as_i64()
                    .or_else(|| power["state_default"].as_i64())
                    .unwrap_or(50),
                None => 0,
            },
        )
    }

    /// One page of this server's published rooms, filtered, ordered by joined members (most
    /// first), then room ID.
    ///
    /// The directory is read whole (one scan of `public_rooms`) and each room described, so the
    /// cost grows with the number of published rooms; a cached listing can come when that
    /// matters.
    pub fn public_rooms(&self, query: DirectoryQuery) -> Result<DirectoryPage> {
        let offset = query
            .since
            .as_deref()
            .map(parse_batch_token)
            .transpose()?
            .unwrap_or(0);
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let term = query
            .search_term
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase);

        let mut rooms = Vec::new();
        for item in self.store.scan_prefix(Cf::PublicRooms, b"") {
            let (key, _) = item?;
            let room_id = std::str::from_utf8(&key)
                .ok()
                .and_then(|r| RoomId::parse(r).ok())
                .ok_or_else(|| Error::internal("corrupt public_rooms key"))?;
            // A published room this server no longer has is skipped rather than failing the
            // whole directory.
            let Some(room) = self.timeline.room(&room_id)? else {
                continue;
            };
            let description = self.describe(&room_id, &room)?;
            if term.as_deref().is_some_and(|t| !description.matches(t)) {
                continue;
            }
            if !query.room_types.is_empty() && !query.room_types.contains(&description.room_type) {
                continue;
            }
            rooms.push(description);
        }
        rooms.sort_by(|a, b| {
            b.num_joined_members
                .cmp(&a.num_joined_members)
                .then_with(|| a.room_id.cmp(&b.room_id))
        });

        let total = rooms.len() as u64;
        let start = offset.min(total);
        let end = start.saturating_add(limit).min(total);
        let next_batch = (end < total).then(|| batch_token(end));
        let prev_batch = (start > 0).then(|| batch_token(start.saturating_sub(limit)));
        let rooms = rooms
            .into_iter()
            .skip(start as usize)
            .take((end - start) as usize)
            .collect();
        Ok(DirectoryPage {
            rooms,
            next_batch,
            prev_batch,
            total,
        })
    }

    /// A room's summary for `requester` (`None`: unauthenticated), and the requester's
    /// membership. Allowed to anyone with a membership in the room, and to everyone when the
    /// room is public, knockable or world-readable; otherwise `404 M_NOT_FOUND`, as for a room
    /// that does not exist, so as not to reveal it.
    pub fn summary_for(
        &self,
        room_id: &RoomId,
        requester: Option<&UserId>,
    ) -> Result<(RoomDescription, Option<MembershipState>)> {
        let hidden = || Error::not_found("No such room, or you may not see it.");
        let room = self.timeline.room(room_id)?.ok_or_else(hidden)?;
        let membership = match requester {
            Some(user_id) => self
                .members
                .membership(room_id, user_id)?
                .map(|m| m.membership),
            None => None,
        };
        let description = self.describe(room_id, &room)?;
        if membership.is_none() && !description.open_to_all() {
            return Err(hidden());
        }
        // The spec leaves `membership` out only for unauthenticated requests; a user who never
        // had one has, in Matrix terms, left.
        let membership = requester.map(|_| membership.unwrap_or(MembershipState::Leave));
        Ok((description, membership))
    }

    /// Checks the content of an `m.room.canonical_alias` event for `room_id`: `alias` and
    /// every `alt_aliases` entry must be room aliases (else `400 M_INVALID_PARAM`), and this
    /// server's aliases must exist and point to the room (else `400 M_BAD_ALIAS`). Aliases of
    /// other servers cannot be checked without federation and are accepted.
    pub fn check_canonical_alias(&self, room_id: &RoomId, content: &Value) -> Result<()> {
        for alias in canonical_aliases(content)? {
            if alias.server_name() == self.server_name
                && self.resolve_alias(&alias)?.as_deref() != Some(room_id)
            {
                return Err(bad_alias(format!("{alias} does not point to this room.")));
            }
        }
        Ok(())
    }

    /// The same check for an `m.room.canonical_alias` in createRoom's `initial_state`, before
    /// the room exists: the only alias of this server that will point to it is `new_alias`
    /// (`room_alias_name`), which createRoom creates first.
    pub fn check_initial_canonical_alias(
        &self,
        content: &Value,
        new_alias: Option<&RoomAliasId>,
    ) -> Result<()> {
        for alias in canonical_aliases(content)? {
            if alias.server_name() == self.server_name && Some(&*alias) != new_alias {
                return Err(bad_alias(format!("{alias} does not point to this room.")));
            }
        }
        Ok(())
    }
}

/// The aliases an `m.room.canonical_alias` content names (`alias`, then `alt_aliases`), each
/// checked to be a room alias (`400 M_INVALID_PARAM` otherwise). All are parsed before any is
/// looked up, so a malformed one is always reported as such.
fn canonical_aliases(content: &Value) -> Result<Vec<OwnedRoomAliasId>> {
    let not_a_list = || Error::invalid_param("`alt_aliases` must be a list of room aliases.");
    let mut aliases = Vec::new();
    match content.get("alias") {
        None | Some(Value::Null) => {}
        Some(Value::String(alias)) => aliases.push(alias.as_str()),
        Some(_) => return Err(Error::invalid_param("`alias` must be a room alias.")),
    }
    match content.get("alt_aliases") {
        None | Some(Value::Null) => {}
        Some(Value::Array(alt)) => {
            for alias in alt {
                aliases.push(alias.as_str().ok_or_else(not_a_list)?);
            }
        }
        Some(_) => return Err(not_a_list()),
    }
    aliases
        .into_iter()
        .map(|alias| {
            RoomAliasId::parse(alias)
                .map_err(|e| Error::invalid_param(format!("{alias} is not a room alias: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tokens_round_trip_and_reject_garbage() {
        assert_eq!(parse_batch_token(&batch_token(42)).unwrap(), 42);
        for bad in [
            "",
            "o",
            "42",
            "o-1",
            "o4x",
            "p3",
            "o99999999999999999999999",
        ] {
            assert!(parse_batch_token(bad).is_err(), "{bad}");
        }
    }
}
