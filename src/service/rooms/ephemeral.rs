//! Ephemeral room data: typing notifications (in memory, with expiry) and read receipts
//! (stored). Each change takes a stream count, so `/sync` tokens cover them and a change wakes
//! long-polling clients like a new event does.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{
    EventId, OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::timeline::activity::Change;
use crate::{
    Error, Result,
    service::{
        Services,
        push::counts::{MAIN_THREAD, ReadEntries},
    },
    store::{Batch, Cf, keys},
    utils,
};

/// Longest a client may ask to be shown as typing.
const MAX_TYPING: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    /// Stream count of the last change.
    changed: u64,
    users: HashMap<OwnedUserId, Instant>,
}

/// Who is typing where.
#[derive(Default)]
pub struct Typing {
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    event_id: String,
    ts: u64,
    count: u64,
}

impl Services {
    fn require_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let membership = self.members.membership(room_id, user_id)?;
        if membership.is_none_or(|m| m.membership != MembershipState::Join) {
            return Err(Error::forbidden("You are not in this room."));
        }
        Ok(())
    }

    /// Marks `user_id` as typing in `room_id` for `timeout` (or as no longer typing).
    pub async fn set_typing(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.require_joined(room_id, user_id)?;
        let count = self
            .timeline
            .commit_counted(Batch::new(), |_, _| Ok(()))
            .await?;
        // Before the typing map's lock is taken (it is not held across an await).
        self.federate_typing(room_id, user_id, timeout).await;
        let mut rooms = self.typing.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.entry(room_id.to_owned()).or_default();
        room.changed = count;
        match timeout {
            Some(timeout) => {
                room.users
                    .insert(user_id.to_owned(), Instant::now() + timeout.min(MAX_TYPING));
            }
            None => {
                room.users.remove(user_id);
            }
        }
        drop(rooms);
        // Application services that asked for ephemeral events (MSC2409).
        if let Some(mut event) = self.typing_event(room_id, None) {
            event["room_id"] = json!(room_id);
            self.push_room_edu(room_id, event)?;
        }
        Ok(())
    }

    /// Ends the typing notifications past their timeout: each room where someone stopped takes
    /// a new stream count, so syncs that showed them typing hear they stopped.
    pub async fn expire_typing(&self) -> Result<()> {
        let now = Instant::now();
        let expired: Vec<OwnedRoomId> = {
            let rooms = self.typing.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms
                .iter()
                .filter(|(_, room)| room.users.values().any(|until| *until <= now))
                .map(|(room_id, _)| room_id.clone())
                .collect()
        };
        for room_id in expired {
            let count = self
                .timeline
                .commit_counted(Batch::new(), |_, _| Ok(()))
                .await?;
            let mut rooms = self.typing.rooms.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(room) = rooms.get_mut(&room_id) {
                room.users.retain(|_, until| *until > now);
                room.changed = count;
            }
        }
        Ok(())
    }

    /// The `m.typing` event for a room, if it changed after `since` (always on a first sync).
    pub fn typing_event(&self, room_id: &RoomId, since: Option<u64>) -> Option<Value> {
        let mut rooms = self.typing.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.get_mut(room_id)?;
        let now = Instant::now();
        room.users.retain(|_, until| *until > now);
        if since.is_some_and(|since| room.changed <= since) {
            return None;
        }
        let mut users: Vec<&str> = room.users.keys().map(|u| u.as_str()).collect();
        users.sort_unstable();
        Some(json!({ "type": "m.typing", "content": { "user_ids": users } }))
    }

    /// Records `user_id`'s receipt of `receipt_type` (`m.read`, `m.read.private`) at `event_id`.
    pub async fn set_receipt(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        receipt_type: &str,
        event_id: &EventId,
        thread: Option<&str>,
    ) -> Result<()> {
        self.require_joined(room_id, user_id)?;
        if !self.may_see_event_in(room_id, user_id, event_id)? {
            return Err(Error::not_found("No such event in this room."));
        }
        // A threaded receipt names the thread its event is in (a thread's root is in its own
        // thread and in the main timeline).
        if let Some(thread) = thread {
            let pdu = self
                .timeline
                .pdu_json(event_id)?
                .ok_or_else(|| Error::not_found("No such event in this room."))?;
            let in_thread = self.thread_of(&pdu)?;
            let own_root = thread == event_id.as_str() && in_thread == MAIN_THREAD;
            if in_thread != thread && !own_root {
                return Err(Error::invalid_param(format!(
                    "{event_id} is not in the thread {thread}."
                )));
            }
        }
        let key = keys::join([
            room_id.as_bytes(),
            user_id.as_bytes(),
            receipt_type.as_bytes(),
            thread.unwrap_or_default().as_bytes(),
        ]);
        let target = event_id.to_owned();
        let event_id = event_id.to_string();
        let now = utils::now_millis();
        {
            let mut receipt = json!({ "ts": now });
            if let Some(thread) = thread {
                receipt["thread_id"] = json!(thread);
            }
            let edu = json!({
                "type": "m.receipt",
                "room_id": room_id,
                "content": { &event_id: { receipt_type: { user_id.as_str(): receipt } } },
            });
            // Private receipts go only to the appservices owning the user.
            let only_for = (receipt_type == "m.read.private").then_some(user_id);
            self.push_room_edu_for(room_id, edu, only_for)?;
        }
        // A read receipt of a local user marks their notifications up to its event read
        // (the counts of `/sync`), in the receipt's own batch.
        let read = match (user_id.server_name() == self.server_name, receipt_type) {
            (true, "m.read" | "m.read.private") => match self.timeline.count_of(&target)? {
                Some(upto) => self.read_by_receipt(user_id, room_id, upto, thread)?,
                None => ReadEntries::default(),
            },
            _ => ReadEntries::default(),
        };
        let room = room_id.as_bytes().to_vec();
        let stream_entry = |count: u64| keys::join([&room, &keys::u64_be(count)]);
        let change = Some((room_id, Change::Receipt));
        self.timeline
            .commit_counted_in(change, Batch::new(), |batch, count| {
                // Under the stream lock: no other change of this receipt is half-way.
                if let Some(old) = self.store.get(Cf::Receipts, &key)? {
                    let old: Receipt = serde_json::from_slice(&old)?;
                    batch.delete(Cf::ReceiptStream, stream_entry(old.count));
                }
                let receipt = Receipt {
                    event_id,
                    ts: now,
                    count,
                };
                batch.put(Cf::Receipts, key.clone(), serde_json::to_vec(&receipt)?);
                batch.put(
                    Cf::ReceiptStream,
                    stream_entry(count),
                    key[room.len() + 1..].to_vec(),
                );
                for read in &read.keys {
                    batch.delete(Cf::UnreadNotifications, read.clone());
                }
                Ok(())
            })
            .await?;
        self.unread_entries_deleted(&read);
        if !read.is_empty() {
            // The badge went down: the user's pushers tell their phones.
            self.push.wake_user(user_id);
        }
        self.federate_receipt(room_id, user_id, receipt_type, &target, thread)
            .await;
        Ok(())
    }

    fn may_see_event_in(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        event_id: &EventId,
    ) -> Result<bool> {
        let Some(pdu) = self.timeline.pdu_json(event_id)? else {
            return Ok(false);
        };
        if !super::pdu::pdu_in_room(event_id, &pdu, room_id) {
            return Ok(false);
        }
        let event = self.timeline.event_fields(room_id, event_id)?;
        self.may_see_event(room_id, user_id, &event, u64::MAX)
    }

    /// The `m.receipt` event with the receipts of a room that changed after `since`, as
    /// `viewer` may see them (private receipts only their own). A first sync reads all of the
    /// room's receipts (one prefix scan); a later one only the changes after its token (a seek
    /// in the room's receipt stream, then a point read each).
    pub fn receipt_event(
        &self,
        room_id: &RoomId,
        viewer: &UserId,
        since: Option<u64>,
    ) -> Result<Option<Value>> {
        let prefix = keys::prefix(room_id.as_bytes());
        let mut receipts: Vec<(Vec<u8>, Receipt)> = Vec::new();
        match since {
            None => {
                for item in self.store.scan_prefix(Cf::Receipts, &prefix) {
                    let (key, value) = item?;
                    receipts.push((
                        key[prefix.len()..].to_vec(),
                        serde_json::from_slice(&value)?,
                    ));
                }
            }
            Some(since) => {
                let start = keys::join([room_id.as_bytes(), &keys::u64_be(since + 1)]);
                for item in self
                    .store
                    .scan_prefix_from(Cf::ReceiptStream, &prefix, &start)
                {
                    let (_, receipt_key) = item?;
                    let mut key = prefix.clone();
                    key.extend_from_slice(&receipt_key);
                    let Some(value) = self.store.get(Cf::Receipts, &key)? else {
                        continue;
                    };
                    receipts.push((receipt_key.to_vec(), serde_json::from_slice(&value)?));
                }
            }
        }
        let mut content: Map<String, Value> = Map::new();
        for (key, receipt) in receipts {
            let mut parts = keys::split(&key);
            let (Some(user), Some(kind), Some(thread)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::internal("corrupt receipt key"));
            };
            let user = String::from_utf8_lossy(user).into_owned();
            let kind = String::from_utf8_lossy(kind).into_owned();
            if kind == "m.read.private" && user != viewer.as_str() {
                continue;
            }
            let mut data = json!({ "ts": receipt.ts });
            if !thread.is_empty() {
                data["thread_id"] = Value::String(String::from_utf8_lossy(thread).into_owned());
            }
            let by_type = content.entry(receipt.event_id).or_insert_with(|| json!({}));
            by_type[&kind][&user] = data;
        }
        Ok((!content.is_empty()).then(|| json!({ "type": "m.receipt", "content": content })))
    }
}
