//! Presence: whether a user is `online`, `unavailable` or `offline`, with an optional status
//! message and the time they were last active.
//!
//! A real change (state or status message) is stored with a stream count, so `/sync` tokens
//! cover it and long-polling clients wake up for it; the `presence_stream` index lists changes in
//! count order, so an incremental `/sync` seeks from its token instead of looking at every user.
//! A mere "still here" (a `/sync` of someone already online, or setting the same presence again)
//! only moves the last-active time, in memory: taking a count for it would wake every
//! long-polling client each time any one of them syncs.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use ruma::{
    OwnedRoomId, OwnedUserId, UserId, events::room::member::MembershipState,
    presence::PresenceState,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, keys},
    utils,
};

/// How long after their last activity an online user still counts as `currently_active`.
const ACTIVE_WINDOW_MS: u64 = 5 * 60 * 1000;

/// A user whose clients have not synced (or set presence) for this long goes offline: clients
/// long-poll `/sync` about every 30 seconds while they run.
pub const GONE_AFTER_MS: u64 = 2 * 60 * 1000;

/// What the `presence` column family holds for each user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_msg: Option<String>,
    /// Last activity (ms since the epoch) as of the last stored change.
    pub last_active_ts: u64,
    /// Stream count of the last change (its key in `presence_stream`).
    pub count: u64,
}

/// Last-active times newer than the stored records (refreshes that took no stream count), and
/// when each user's clients were last heard from (any presence update but `offline`).
#[derive(Default)]
pub struct Presence {
    last_active: Mutex<HashMap<OwnedUserId, u64>>,
    last_seen: Mutex<HashMap<OwnedUserId, u64>>,
}

impl Presence {
    fn touch(&self, user_id: &UserId, now: u64) {
        let mut map = self.last_active.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(user_id.to_owned(), now);
    }

    fn last_active(&self, user_id: &UserId) -> Option<u64> {
        let map = self.last_active.lock().unwrap_or_else(|p| p.into_inner());
        map.get(user_id).copied()
    }

    fn seen(&self, user_id: &UserId, now: u64) {
        let mut map = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(user_id.to_owned(), now);
    }

    fn last_seen(&self, user_id: &UserId) -> Option<u64> {
        let map = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        map.get(user_id).copied()
    }
}

/// What a client asked for in a presence change.
pub enum PresenceUpdate<'a> {
    /// `PUT /presence/{userId}/status`: state and status message.
    Explicit {
        state: &'a str,
        status_msg: Option<&'a str>,
    },
    /// `/sync`'s `set_presence`: the state only; the status message stays.
    Sync { state: &'a str },
}

/// The presence states a client may set (ruma accepts any string).
pub fn parse_state(state: &PresenceState) -> Result<&'static str> {
    match state {
        PresenceState::Online => Ok("online"),
        PresenceState::Unavailable => Ok("unavailable"),
        PresenceState::Offline => Ok("offline"),
        other => Err(Error::invalid_param(format!(
            "Unknown presence state {}; use online, unavailable or offline.",
            other.as_str()
        ))),
    }
}

impl Services {
    /// A user's stored presence record, if they ever had one.
    pub fn presence_record(&self, user_id: &UserId) -> Result<Option<PresenceRecord>> {
        match self.store.get(Cf::Presence, user_id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Applies a presence change by `user_id` for themself. Only a transition (new state or
    /// new status message) is stored with a stream count; otherwise only the last-active time
    /// moves, in memory.
    pub async fn set_presence(&self, user_id: &UserId, update: PresenceUpdate<'_>) -> Result<()> {
        let now = utils::now_millis();
        let current = self.presence_record(user_id)?;
        let (state, status_msg) = match update {
            PresenceUpdate::Explicit { state, status_msg } => {
                (state, status_msg.map(str::to_owned))
            }
            PresenceUpdate::Sync { state } => {
                (state, current.as_ref().and_then(|r| r.status_msg.clone()))
            }
        };
        let active = state == "online";
        if state != "offline" {
            self.presence.seen(user_id, now);
        }
        let changed = current
            .as_ref()
            .is_none_or(|r| r.state != state || r.status_msg != status_msg);
        if !changed {
            if active {
                self.presence.touch(user_id, now);
            }
            return Ok(());
        }
        // Going offline or away keeps the last activity it had.
        let last_active_ts = if active {
            now
        } else {
            self.last_active_ts(user_id, current.as_ref())
                .unwrap_or(now)
        };
        let store = self.store.clone();
        let user = user_id.to_owned();
        self.timeline
            .commit_counted(Batch::new(), move |batch, count| {
                // Re-read under the stream lock: a concurrent change may have moved the index.
                if let Some(bytes) = store.get(Cf::Presence, user.as_bytes())? {
                    let previous: PresenceRecord = serde_json::from_slice(&bytes)?;
                    batch.delete(Cf::PresenceStream, keys::u64_be(previous.count));
                }
                let record = PresenceRecord {
                    state: state.to_owned(),
                    status_msg,
                    last_active_ts,
                    count,
                };
                batch.put(Cf::Presence, user.as_bytes(), serde_json::to_vec(&record)?);
                batch.put(Cf::PresenceStream, keys::u64_be(count), user.as_bytes());
                Ok(())
            })
            .await?;
        if active {
            self.presence.touch(user_id, now);
        }
        self.push_presence(user_id)?;
        self.federate_presence(user_id).await;
        Ok(())
    }

    /// Queues a presence change for the appservices that asked for ephemeral events and own
    /// the user or share a room with it (MSC2409).
    fn push_presence(&self, user_id: &UserId) -> Result<()> {
        if !self.appservices.any_receive_ephemeral() {
            return Ok(());
        }
        let mut targets = self.appservices.interested_in_user(user_id);
        for room in self.joined_rooms(user_id)? {
            targets.extend(self.appservices.interested_in_room(&room)?);
        }
        targets.retain(|s| s.receive_ephemeral());
        targets.sort_by(|a, b| a.id().cmp(b.id()));
        targets.dedup_by(|a, b| a.id() == b.id());
        let event = json!({
            "type": "m.presence",
            "sender": user_id,
            "content": self.presence_content(user_id)?,
        });
        self.push_edu_to(&targets, event)
    }

    /// Sets offline every user who is not offline but whose clients have not been heard from
    /// since `now - GONE_AFTER_MS` (as if they had set it: others' syncs are told). Called
    /// periodically by the server; reads every presence record, which is no hot path.
    pub async fn expire_presence(&self, now: u64) -> Result<usize> {
        let mut gone = Vec::new();
        for item in self.store.scan_prefix(Cf::Presence, b"") {
            let (key, value) = item?;
            let record: PresenceRecord = serde_json::from_slice(&value)?;
            if record.state == "offline" {
                continue;
            }
            let Ok(user_id) = UserId::parse(String::from_utf8_lossy(&key).as_ref()) else {
                continue;
            };
            // Remote users' servers tell when they go offline.
            if user_id.server_name() != self.server_name {
                continue;
            }
            let heard = self
                .presence
                .last_seen(&user_id)
                .unwrap_or(record.last_active_ts)
                .max(record.last_active_ts);
            if now.saturating_sub(heard) > GONE_AFTER_MS {
                gone.push(user_id);
            }
        }
        for user_id in &gone {
            self.set_presence(user_id, PresenceUpdate::Sync { state: "offline" })
                .await?;
        }
        Ok(gone.len())
    }

    fn last_active_ts(&self, user_id: &UserId, record: Option<&PresenceRecord>) -> Option<u64> {
        let stored = record.map(|r| r.last_active_ts);
        match (stored, self.presence.last_active(user_id)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// `presence`, `last_active_ago`, `currently_active` and `status_msg` of a user, as
    /// `GET /presence` and `m.presence` events show them (`offline` without a record).
    pub fn presence_content(&self, user_id: &UserId) -> Result<Value> {
        let record = self.presence_record(user_id)?;
        Ok(self.content_of(user_id, record.as_ref()))
    }

    fn content_of(&self, user_id: &UserId, record: Option<&PresenceRecord>) -> Value {
        let now = utils::now_millis();
        let state = record.map_or("offline", |r| r.state.as_str());
        let mut content = json!({ "presence": state });
        if let Some(last) = self.last_active_ts(user_id, record) {
            let ago = now.saturating_sub(last);
            content["last_active_ago"] = json!(ago);
            content["currently_active"] = json!(state == "online" && ago < ACTIVE_WINDOW_MS);
        } else {
            content["currently_active"] = json!(false);
        }
        if let Some(msg) = record.and_then(|r| r.status_msg.as_deref()) {
            content["status_msg"] = json!(msg);
        }
        content
    }

    /// Whether `viewer` may see `target`'s presence: themself, or someone sharing a joined room
    /// (one prefix scan of the viewer's rooms, then a point read per joined room).
    pub fn may_see_presence(&self, viewer: &UserId, target: &UserId) -> Result<bool> {
        Ok(viewer == target || self.shares_room(&self.joined_rooms(viewer)?, target)?)
    }

    fn joined_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .members
            .rooms_of(user_id)?
            .into_iter()
            .filter(|(_, m)| m.membership == MembershipState::Join)
            .map(|(room_id, _)| room_id)
            .collect())
    }

    /// Whether `target` is joined to one of `rooms` (a point read per room, until one is).
    pub(crate) fn shares_room(&self, rooms: &[OwnedRoomId], target: &UserId) -> Result<bool> {
        for room_id in rooms {
            if self
                .members
                .membership(room_id, target)?
                .is_some_and(|m| m.membership == MembershipState::Join)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The `m.presence` events for `/sync`: of the user and everyone sharing a joined room with
    /// them, every known one on an initial sync (`since` = `None`), else those changed after
    /// `since` and at or before `upto` (a seek in `presence_stream`).
    pub fn presence_events(
        &self,
        user_id: &UserId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        let mut push = |user: &UserId, record: &PresenceRecord| {
            events.push(json!({
                "type": "m.presence",
                "sender": user.as_str(),
                "content": self.content_of(user, Some(record)),
            }));
        };
        match since {
            None => {
                let mut seen: HashSet<OwnedUserId> = HashSet::new();
                seen.insert(user_id.to_owned());
                for room_id in self.joined_rooms(user_id)? {
                    for (member, m) in self.members.of_room(&room_id)? {
                        if m == MembershipState::Join {
                            seen.insert(member);
                        }
                    }
                }
                let mut users: Vec<_> = seen.into_iter().collect();
                users.sort_unstable();
                for user in users {
                    if let Some(record) = self.presence_record(&user)? {
                        push(&user, &record);
                    }
                }
            }
            Some(since) => {
                // The user's rooms are read once, and only if someone else changed.
                let mut rooms: Option<Vec<OwnedRoomId>> = None;
                let start = keys::u64_be(since.saturating_add(1));
                for item in self.store.scan_prefix_from(Cf::PresenceStream, b"", &start) {
                    let (key, value) = item?;
                    let count = keys::parse_u64_be(&key)
                        .ok_or_else(|| Error::internal("corrupt presence_stream key"))?;
                    if count > upto {
                        break;
                    }
                    let user = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|u| UserId::parse(u).ok())
                        .ok_or_else(|| Error::internal("corrupt presence_stream value"))?;
                    if user != user_id {
                        if rooms.is_none() {
                            rooms = Some(self.joined_rooms(user_id)?);
                        }
                        if !self.shares_room(rooms.as_deref().unwrap_or_default(), &user)? {
                            continue;
                        }
                    }
                    if let Some(record) = self.presence_record(&user)? {
                        push(&user, &record);
                    }
                }
            }
        }
        Ok(events)
    }
}
