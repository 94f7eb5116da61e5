//! Per-user account data, global (room `None`) or per room. Each change takes a stream count
//! (kept beside the content), so `/sync` sends what changed since a token and wakes on changes.
//!
//! Two types the server itself acts on. `m.ignored_user_list`: ignored users' events (but not
//! their state events) are left out of the ignorer's timelines (`/sync`, sliding sync,
//! `/messages`, `/context`), their invites out of `/sync`, and they notify no one who ignores
//! them. `m.invite_permission_config` (spec v1.18, MSC4380): with `default_action: block`,
//! invites to the user are refused (403 `M_INVITE_BLOCKED`, from this server's users and
//! other servers alike), and those already received are left out of `/sync` and sliding sync
//! and notify no one (they come back if blocking is switched off). Both are kept parsed in
//! caches, so looking them up costs no read.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{Value, value::RawValue};

use crate::{
    Result,
    service::{
        Services,
        rooms::{client_event::ClientEvent, timeline::activity::Change},
    },
    store::{Batch, Cf, Store, keys},
};

pub struct AccountData {
    store: Store,
    /// Each user's `m.ignored_user_list`, parsed (see [`Services::ignored_users`]).
    ignored: quick_cache::sync::Cache<OwnedUserId, Arc<HashSet<OwnedUserId>>>,
    /// Whether each user blocks invites (see [`Services::invites_blocked`]).
    invites_blocked: quick_cache::sync::Cache<OwnedUserId, bool>,
    /// Counts writes of the cached types: a lookup that read the store while one happened
    /// does not keep what it read in the cache (see [`AccountData::cached`]).
    writes: AtomicU64,
}

/// The account data type of the users a user ignores.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";
/// The account data type by which a user blocks invites.
pub const INVITE_PERMISSION_CONFIG: &str = "m.invite_permission_config";

/// Whether `event` (client format) is one `ignored` hides: sent by an ignored user, and not
/// a state event (the room's state stays whole).
pub fn hidden_by(ignored: &HashSet<OwnedUserId>, event: &Value) -> bool {
    hidden_sender(
        ignored,
        event.get("state_key").is_some(),
        event["sender"].as_str(),
    )
}

/// [`hidden_by`] for an event made straight from its stored form.
pub fn hidden_event(ignored: &HashSet<OwnedUserId>, event: &ClientEvent) -> bool {
    hidden_sender(ignored, event.is_state(), event.sender())
}

fn hidden_sender(ignored: &HashSet<OwnedUserId>, is_state: bool, sender: Option<&str>) -> bool {
    !ignored.is_empty()
        && !is_state
        && sender
            .and_then(|s| UserId::parse(s).ok())
            .is_some_and(|sender| ignored.contains(&sender))
}

fn key(user_id: &UserId, room_id: Option<&RoomId>, event_type: &str) -> Vec<u8> {
    let room = room_id.map(|r| r.as_bytes()).unwrap_or_default();
    keys::join([user_id.as_bytes(), room, event_type.as_bytes()])
}

/// The prefix of one user's account data for one room (or the global account data).
fn scope(user_id: &UserId, room_id: Option<&RoomId>) -> Vec<u8> {
    let room = room_id.map(|r| r.as_bytes()).unwrap_or_default();
    keys::prefix(&keys::join([user_id.as_bytes(), room]))
}

impl AccountData {
    /// What the caches of ignored users and invite blocks take (see
    /// [`crate::service::cache_memory`]).
    pub fn cache_bytes(&self) -> u64 {
        use crate::service::cache_memory::cache_bytes;
        cache_bytes(&self.ignored) + cache_bytes(&self.invites_blocked)
    }

    pub fn new(store: Store) -> Self {
        Self {
            store,
            ignored: quick_cache::sync::Cache::new(4096),
            invites_blocked: quick_cache::sync::Cache::new(4096),
            writes: AtomicU64::new(0),
        }
    }

    /// A cached value of a user's global account data of `event_type`, or `parse` of what
    /// the store holds, cached unless a write of a cached type happened meanwhile (then it
    /// may be the old value).
    fn cached<V: Clone>(
        &self,
        cache: &quick_cache::sync::Cache<OwnedUserId, V>,
        user_id: &UserId,
        event_type: &str,
        parse: impl FnOnce(Option<Value>) -> V,
    ) -> Result<V> {
        if let Some(value) = cache.get(user_id) {
            return Ok(value);
        }
        let writes = self.writes.load(Ordering::SeqCst);
        let content = self
            .get(user_id, None, event_type)?
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
        let value = parse(content);
        cache.insert(user_id.to_owned(), value.clone());
        // A write since the read may have come before or after this insert: either way the
        // value is taken out again (the writer's own removal may have come before the insert).
        if self.writes.load(Ordering::SeqCst) != writes {
            cache.remove(user_id);
        }
        Ok(value)
    }

    /// The stored content, as the JSON the client uploaded.
    pub fn get(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
    ) -> Result<Option<Box<RawValue>>> {
        match self
            .store
            .get(Cf::AccountData, &key(user_id, room_id, event_type))?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }
}

impl Services {
    /// Stores account data (content and its stream count in one batch) and wakes `/sync`.
    pub async fn set_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
        content: &RawValue,
    ) -> Result<()> {
        let key = key(user_id, room_id, event_type);
        let mut batch = Batch::new();
        batch.put(Cf::AccountData, key.clone(), content.get().as_bytes());

        // Room account data is news in that room for sliding sync (`timeline::activity`).
        let change = room_id.map(|room_id| (room_id, Change::AccountData));
        self.timeline
            .commit_counted_in(change, batch, |batch, count| {
                batch.put(Cf::AccountDataCounts, key, keys::u64_be(count));
                Ok(())
            })
            .await?;
        // After the write, counted first: a lookup that read the old value meanwhile does not
        // cache it (`AccountData::cached`), and one that cached it before is removed here.
        if room_id.is_none() && matches!(event_type, IGNORED_USER_LIST | INVITE_PERMISSION_CONFIG) {
            self.account_data.writes.fetch_add(1, Ordering::SeqCst);
            self.account_data.ignored.remove(user_id);
            self.account_data.invites_blocked.remove(user_id);
        }
        Ok(())
    }

    /// Account data events (`{type, content}`) of one scope changed after `since` (all of them
    /// without a token). One prefix scan of the user's entries in that scope.
    pub fn account_data_changes(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        since: Option<u64>,
    ) -> Result<Vec<Value>> {
        let prefix = scope(user_id, room_id);
        let mut events = Vec::new();
        for item in self.store.scan_prefix(Cf::AccountData, &prefix) {
            let (key, content) = item?;
            let event_type = &key[prefix.len()..];
            if event_type.contains(&keys::SEP) {
                continue; // a room's entry while listing global ones
            }
            if let Some(since) = since {
                let count = self
                    .store
                    .get(Cf::AccountDataCounts, &key)?
                    .and_then(|b| keys::parse_u64_be(&b))
                    .unwrap_or(0);
                if count <= since {
                    continue;
                }
            }
            events.push(serde_json::json!({
                "type": String::from_utf8_lossy(event_type),
                "content": serde_json::from_slice::<Value>(&content)?,
            }));
        }
        Ok(events)
    }
}

impl Services {
    /// All of a user's account data: global (type → content) and per room (room → type →
    /// content). One prefix scan (admins' requests).
    pub fn all_account_data(
        &self,
        user_id: &UserId,
    ) -> Result<(
        serde_json::Map<String, Value>,
        serde_json::Map<String, Value>,
    )> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut global = serde_json::Map::new();
        let mut rooms = serde_json::Map::new();
        for item in self.store.scan_prefix(Cf::AccountData, &prefix) {
            let (key, content) = item?;
            let rest = &key[prefix.len()..];
            let Some(at) = rest.iter().position(|b| *b == keys::SEP) else {
                continue;
            };
            let room = String::from_utf8_lossy(&rest[..at]).into_owned();
            let event_type = String::from_utf8_lossy(&rest[at + 1..]).into_owned();
            let content: Value = serde_json::from_slice(&content)?;
            if room.is_empty() {
                global.insert(event_type, content);
            } else if let Value::Object(of_room) = rooms
                .entry(room)
                .or_insert_with(|| Value::Object(Default::default()))
            {
                of_room.insert(event_type, content);
            }
        }
        Ok((global, rooms))
    }

    /// The users `user_id` ignores (`m.ignored_user_list`), from the cache or one read.
    pub fn ignored_users(&self, user_id: &UserId) -> Result<Arc<HashSet<OwnedUserId>>> {
        let data = &self.account_data;
        data.cached(&data.ignored, user_id, IGNORED_USER_LIST, |content| {
            Arc::new(
                content
                    .and_then(|content| {
                        content["ignored_users"].as_object().map(|users| {
                            users.keys().filter_map(|u| UserId::parse(u).ok()).collect()
                        })
                    })
                    .unwrap_or_default(),
            )
        })
    }

    /// Whether `user_id` blocks all invites (`m.invite_permission_config` with
    /// `default_action: block`; anything else lets invites through), from the cache or one
    /// read. Users of other servers: their server decides.
    pub fn invites_blocked(&self, user_id: &UserId) -> Result<bool> {
        if user_id.server_name() != self.server_name {
            return Ok(false);
        }
        let data = &self.account_data;
        data.cached(
            &data.invites_blocked,
            user_id,
            INVITE_PERMISSION_CONFIG,
            |content| content.is_some_and(|content| content["default_action"] == "block"),
        )
    }

    /// Refuses an invite to `invitee` who blocks invites: 403 `M_INVITE_BLOCKED`.
    pub fn check_invite_permitted(&self, invitee: &UserId) -> Result<()> {
        if self.invites_blocked(invitee)? {
            return Err(crate::Error::new(
                http::StatusCode::FORBIDDEN,
                ruma::api::error::ErrorKind::InviteBlocked,
                format!("{invitee} does not accept invites."),
            ));
        }
        Ok(())
    }
}
