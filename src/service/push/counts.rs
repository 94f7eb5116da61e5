//! Unread notification counts: the entries of `unread_notifications` (`user 0xFF room 0xFF
//! count` → thread and highlight), written by the evaluator with each notifying event, deleted
//! by the user's read receipts (and by their own events) up to the event they are at. A room's
//! counts are one prefix scan of the user's entries in it; a user's badge, one scan of theirs.

use std::collections::{BTreeMap, HashSet};

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use super::evaluate::UnreadRecord;
use crate::{
    Result,
    service::Services,
    store::{Cf, keys},
};

/// The thread name of the main timeline (receipts' `thread_id`, and unread entries).
pub const MAIN_THREAD: &str = "main";

/// The key of an unread notification.
pub fn unread_key(user_id: &UserId, room_id: &RoomId, count: u64) -> Vec<u8> {
    keys::join([user_id.as_bytes(), room_id.as_bytes(), &keys::u64_be(count)])
}

/// A room's unread notifications: in all, and per thread (`main` for the main timeline).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    pub notifications: u64,
    pub highlights: u64,
    pub threads: BTreeMap<String, (u64, u64)>,
}

impl UnreadCounts {
    /// `unread_notifications` of a `/sync` room (all threads together, or the main timeline
    /// alone when the client asked for counts per thread) and, per thread,
    /// `unread_thread_notifications`.
    pub fn sync_json(&self, per_thread: bool) -> (Value, Option<Value>) {
        let counts = |(n, h): (u64, u64)| json!({ "notification_count": n, "highlight_count": h });
        if !per_thread {
            return (counts((self.notifications, self.highlights)), None);
        }
        let main = self.threads.get(MAIN_THREAD).copied().unwrap_or((0, 0));
        let threads: serde_json::Map<String, Value> = self
            .threads
            .iter()
            .filter(|(thread, _)| *thread != MAIN_THREAD)
            .map(|(thread, c)| (thread.clone(), counts(*c)))
            .collect();
        (
            counts(main),
            (!threads.is_empty()).then_some(Value::Object(threads)),
        )
    }
}

impl Services {
    /// `user_id`'s unread notifications in `room_id` (one prefix scan).
    pub fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts> {
        let prefix = keys::prefix(&keys::join([user_id.as_bytes(), room_id.as_bytes()]));
        let mut counts = UnreadCounts::default();
        for item in self.store.scan_prefix(Cf::UnreadNotifications, &prefix) {
            let (_, value) = item?;
            let record: UnreadRecord = serde_json::from_slice(&value)?;
            let thread = counts.threads.entry(record.thread).or_default();
            thread.0 += 1;
            counts.notifications += 1;
            if record.highlight {
                thread.1 += 1;
                counts.highlights += 1;
            }
        }
        Ok(counts)
    }

    /// The unread entries a read receipt of `user_id` at stream count `upto` marks read: in
    /// `thread` (`main`, or a thread root), or in every thread for an unthreaded receipt.
    pub(crate) fn read_by_receipt(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        upto: u64,
        thread: Option<&str>,
    ) -> Result<Vec<Vec<u8>>> {
        let prefix = keys::prefix(&keys::join([user_id.as_bytes(), room_id.as_bytes()]));
        let mut read = Vec::new();
        for item in self.store.scan_prefix(Cf::UnreadNotifications, &prefix) {
            let (key, value) = item?;
            let count = keys::parse_u64_be(&key[prefix.len()..]).unwrap_or(u64::MAX);
            if count > upto {
                break;
            }
            let record: UnreadRecord = serde_json::from_slice(&value)?;
            if thread.is_none_or(|t| t == record.thread) {
                read.push(key.to_vec());
            }
        }
        Ok(read)
    }

    /// Whether `user_id` sent a read receipt in `room_id` after stream count `since` (a seek
    /// in the room's receipt stream).
    pub(crate) fn own_receipt_since(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        since: u64,
    ) -> Result<bool> {
        let prefix = keys::prefix(room_id.as_bytes());
        let start = keys::join([room_id.as_bytes(), &keys::u64_be(since.saturating_add(1))]);
        for item in self
            .store
            .scan_prefix_from(Cf::ReceiptStream, &prefix, &start)
        {
            let (_, receipt) = item?;
            if keys::split(&receipt).next() == Some(user_id.as_bytes()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The badge a user's phone shows, as Synapse counts it: rooms they are invited to, and
    /// joined rooms with unread notifications (an invite's own notification, or what was left
    /// unread in a room since left, is not counted again).
    pub fn badge_count(&self, user_id: &UserId) -> Result<u64> {
        let mut joined: HashSet<Vec<u8>> = HashSet::new();
        let mut badge = 0u64;
        for (room_id, member) in self.members.rooms_of(user_id)? {
            match member.membership.as_str() {
                "join" => {
                    joined.insert(room_id.as_bytes().to_vec());
                }
                "invite" => badge += 1,
                _ => {}
            }
        }
        let prefix = keys::prefix(user_id.as_bytes());
        // One seek per room with unread notifications: each room's entries are skipped at once
        // (`room ++ SEP ++ count`: past the highest count comes the next room).
        let mut from = prefix.clone();
        while let Some(item) = self
            .store
            .scan_prefix_from(Cf::UnreadNotifications, &prefix, &from)
            .next()
        {
            let (key, _) = item?;
            let rest = &key[prefix.len()..];
            let Some(room) = rest.len().checked_sub(9).map(|end| &rest[..end]) else {
                break;
            };
            if joined.contains(room) {
                badge += 1;
            }
            from = [&prefix[..], room, &[keys::SEP], &[0xFF; 8], &[0]].concat();
        }
        Ok(badge)
    }
}

/// Most notifications one `/notifications` page returns, and the default.
pub const MAX_NOTIFICATIONS: usize = 500;
pub const DEFAULT_NOTIFICATIONS: usize = 50;

/// One page of `/notifications`.
pub struct NotificationsPage {
    pub notifications: Vec<Value>,
    /// The token of the next page, when there may be one.
    pub next_token: Option<u64>,
}

impl Services {
    /// `GET /notifications`: `user_id`'s notifications, newest first, below `from` (a stream
    /// count), up to `limit`; with `only_highlights`, the highlights alone. Each with its actions,
    /// the event, whether it is read, the room and when it happened.
    pub fn notifications(
        &self,
        user_id: &UserId,
        from: Option<u64>,
        limit: usize,
        only_highlights: bool,
    ) -> Result<NotificationsPage> {
        use crate::service::rooms::client_event::{Detail, Viewer, without_room_id};

        let prefix = keys::prefix(user_id.as_bytes());
        let start = keys::join([
            user_id.as_bytes(),
            &keys::u64_be(from.map_or(u64::MAX, |f| f.saturating_sub(1))),
        ]);
        let mut view = self.event_view(Some(Viewer {
            user_id,
            device_id: None,
        }));
        let mut notifications = Vec::new();
        let mut last = None;
        for item in self
            .store
            .scan_prefix_rev_from(Cf::Notifications, &prefix, &start)
        {
            let (key, value) = item?;
            let count = keys::parse_u64_be(&key[prefix.len()..]).unwrap_or(0);
            let record: super::evaluate::NotificationRecord = serde_json::from_slice(&value)?;
            if only_highlights && !record.highlight {
                continue;
            }
            let Ok(event) = view.event(
                &record.room_id,
                &record.event_id,
                Some(count),
                Detail::Timeline,
            ) else {
                continue; // the event is gone
            };
            let read = !self.store.contains(
                Cf::UnreadNotifications,
                &unread_key(user_id, &record.room_id, count),
            )?;
            notifications.push(json!({
                "actions": record.actions,
                "event": without_room_id(event),
                "read": read,
                "room_id": record.room_id,
                "ts": record.ts,
            }));
            last = Some(count);
            if notifications.len() == limit {
                break;
            }
        }
        let next_token = (notifications.len() == limit).then_some(last).flatten();
        Ok(NotificationsPage {
            notifications,
            next_token,
        })
    }
}
