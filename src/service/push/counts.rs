//! Unread notification counts: the entries of `unread_notifications` (`user 0xFF room 0xFF
//! count` → thread and highlight), written by the evaluator with each notifying event, deleted
//! by the user's read receipts (and by their own events) up to the event they are at. A room's
//! counts are one prefix scan of the user's entries in it; a user's badge, one seek per joined
//! room.
//!
//! Deleted entries stay behind as RocksDB tombstones until compaction, and a scan walks through
//! them: in a busy room every send deletes the sender's entries, so a scan from the start of
//! the prefix grew with the room's history (a send into a room of 16 cost thousands of skipped
//! keys). Each user's *floor* in a room — no live entry below it — is remembered in memory
//! once a deletion commits, and scans seek from it. Forgotten (a restart, the cache's bound),
//! a scan starts at the prefix again: slower, never wrong.
//!
//! A user who does not read a busy room gathers entries there, and every `/sync` of theirs
//! asks for the room's counts: counted afresh each time, a room of a hundred members cost each
//! new message a hundred scans of hundreds of entries (a third of the server's time in the
//! `deliver` benchmark). So the counts are remembered with the position their entries were
//! read up to ([`UnreadCountsCache`]), and a later read scans only what was written since:
//! entries are written with their event's stream count, and counts become visible in order.
//! A deletion (a receipt, the user's own event, a purge) forgets the counts it changed.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Value, json};

use super::evaluate::UnreadRecord;
use crate::{
    Result,
    service::{Services, cache_memory::HeapSize},
    store::{Cf, keys},
};

/// The thread name of the main timeline (receipts' `thread_id`, and unread entries).
pub const MAIN_THREAD: &str = "main";

/// The key of an unread notification.
pub fn unread_key(user_id: &UserId, room_id: &RoomId, count: u64) -> Vec<u8> {
    keys::join([user_id.as_bytes(), room_id.as_bytes(), &keys::u64_be(count)])
}

/// Unread entries marked read (by a receipt, or by the user's own event), to delete in that
/// change's batch; and, for after the batch is written, the floors the deletion raises.
#[derive(Default)]
pub(crate) struct ReadEntries {
    pub keys: Vec<Vec<u8>>,
    /// `(user, room, floor)`: no entry of the user in the room below `floor` is live once
    /// `keys` are deleted.
    pub floors: Vec<(OwnedUserId, OwnedRoomId, u64)>,
}

impl ReadEntries {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn extend(&mut self, other: ReadEntries) {
        self.keys.extend(other.keys);
        self.floors.extend(other.floors);
    }
}

/// Scans a user's entries in a room from their floor, and picks those `read` says are read
/// (`Some(false)` keeps an entry, `None` ends the scan there).
fn read_entries(
    services: &Services,
    user_id: &UserId,
    room_id: &RoomId,
    mut read: impl FnMut(u64, &UnreadRecord) -> Option<bool>,
) -> Result<ReadEntries> {
    let (prefix, start) = services.unread_scan(user_id, room_id);
    let mut entries = ReadEntries::default();
    let (mut first_kept, mut last_read) = (None, None);
    for item in services
        .store
        .scan_prefix_from(Cf::UnreadNotifications, &prefix, &start)
    {
        let (key, value) = item?;
        let count = keys::parse_u64_be(&key[prefix.len()..]).unwrap_or(u64::MAX);
        let record: UnreadRecord = serde_json::from_slice(&value)?;
        match read(count, &record) {
            Some(true) => {
                entries.keys.push(key.to_vec());
                last_read = Some(count);
            }
            Some(false) => {
                first_kept.get_or_insert(count);
            }
            None => {
                first_kept.get_or_insert(count);
                break;
            }
        }
    }
    if let Some(floor) = first_kept.or(last_read.map(|c| c.saturating_add(1))) {
        entries
            .floors
            .push((user_id.to_owned(), room_id.to_owned(), floor));
    }
    Ok(entries)
}

/// A room's unread notifications: in all, and per thread (`main` for the main timeline).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    pub notifications: u64,
    pub highlights: u64,
    pub threads: BTreeMap<String, (u64, u64)>,
}

impl UnreadCounts {
    fn add(&mut self, record: UnreadRecord) {
        let thread = self.threads.entry(record.thread).or_default();
        thread.0 += 1;
        self.notifications += 1;
        if record.highlight {
            thread.1 += 1;
            self.highlights += 1;
        }
    }

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

/// Counts of a user's entries in a room below a stream count.
#[derive(Clone)]
struct CountedBelow {
    counts: UnreadCounts,
    /// Every live entry below this count is in `counts`.
    next: u64,
}

impl HeapSize for CountedBelow {
    fn heap_bytes(&self) -> usize {
        self.counts
            .threads
            .keys()
            .map(|thread| thread.capacity() + 3 * std::mem::size_of::<u64>())
            .sum()
    }
}

/// Remembered unread counts (see the module's description), by user and room.
pub(crate) struct UnreadCountsCache {
    counted: quick_cache::sync::Cache<(OwnedUserId, OwnedRoomId), CountedBelow>,
    /// Moved on by every deletion, under this lock, before the counts it changed are dropped.
    /// A read remembers what it counted only if no deletion came since it began: a deletion
    /// written while it scanned may not be in what it saw.
    deletions: Mutex<u64>,
}

impl UnreadCountsCache {
    pub fn new(entries: usize) -> Self {
        Self {
            counted: quick_cache::sync::Cache::new(entries),
            deletions: Mutex::new(0),
        }
    }

    fn deletions(&self) -> std::sync::MutexGuard<'_, u64> {
        self.deletions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the counts of these users' rooms (their entries there were deleted).
    fn forget<'a>(&self, user_rooms: impl Iterator<Item = (&'a OwnedUserId, &'a OwnedRoomId)>) {
        let mut deletions = self.deletions();
        *deletions += 1;
        for (user_id, room_id) in user_rooms {
            self.counted.remove(&(user_id.clone(), room_id.clone()));
        }
    }

    /// Forgets every count (a purge deleted entries of many users).
    pub fn forget_all(&self) {
        let mut deletions = self.deletions();
        *deletions += 1;
        self.counted.clear();
    }

    pub fn cache_bytes(&self) -> u64 {
        crate::service::cache_memory::cache_bytes(&self.counted)
    }
}

impl Services {
    /// `user_id`'s unread notifications in `room_id`: the remembered counts and a scan of the
    /// entries written since (one seek, usually), or, when none are remembered, a scan from the
    /// user's floor.
    pub fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts> {
        let cache = &self.push.unread_counts;
        let began = *cache.deletions();
        let key = (user_id.to_owned(), room_id.to_owned());
        let (prefix, floor_start) = self.unread_scan(user_id, room_id);
        let remembered = cache.counted.get(&key);
        let (mut counted, start) = match remembered {
            Some(counted) => {
                let start = [&prefix[..], &keys::u64_be(counted.next)].concat();
                (counted, start.max(floor_start))
            }
            None => (
                CountedBelow {
                    counts: UnreadCounts::default(),
                    next: 0,
                },
                floor_start,
            ),
        };
        let mut read_any = false;
        for item in self
            .store
            .scan_prefix_from(Cf::UnreadNotifications, &prefix, &start)
        {
            let (key, value) = item?;
            let count = keys::parse_u64_be(&key[prefix.len()..]).unwrap_or(u64::MAX);
            counted.counts.add(serde_json::from_slice(&value)?);
            counted.next = count.saturating_add(1);
            read_any = true;
        }
        // Remembered again only when something new was read (otherwise it is remembered already).
        if read_any {
            let deletions = cache.deletions();
            if *deletions == began {
                cache.counted.insert(key, counted.clone());
            }
        }
        Ok(counted.counts)
    }

    /// The unread entries a read receipt of `user_id` at stream count `upto` marks read: in
    /// `thread` (`main`, or a thread root), or in every thread for an unthreaded receipt.
    pub(crate) fn read_by_receipt(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        upto: u64,
        thread: Option<&str>,
    ) -> Result<ReadEntries> {
        read_entries(self, user_id, room_id, |count, record| {
            (count <= upto).then(|| thread.is_none_or(|t| t == record.thread))
        })
    }

    /// The sender's unread entries in the room their own event marks read: those of the
    /// same thread (the spec: sending an event counts as reading up to it).
    pub(crate) fn read_by_own_event(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        thread: &str,
    ) -> Result<ReadEntries> {
        read_entries(self, sender, room_id, |_, record| {
            Some(record.thread == thread)
        })
    }

    /// Where a scan of `user_id`'s entries in `room_id` starts: `(prefix, start)`, the start
    /// at their floor when it is known.
    fn unread_scan(&self, user_id: &UserId, room_id: &RoomId) -> (Vec<u8>, Vec<u8>) {
        let prefix = keys::prefix(&keys::join([user_id.as_bytes(), room_id.as_bytes()]));
        let floor = self
            .push
            .unread_floors
            .get(&(user_id.to_owned(), room_id.to_owned()))
            .unwrap_or(0);
        let start = [&prefix[..], &keys::u64_be(floor)].concat();
        (prefix, start)
    }

    /// Once a deletion of read entries is written: remembers the floors it raised, and forgets
    /// the counts it changed.
    pub(crate) fn unread_entries_deleted(&self, read: &ReadEntries) {
        if !read.is_empty() {
            self.push.unread_counts.forget(
                read.floors
                    .iter()
                    .map(|(user_id, room_id, _)| (user_id, room_id)),
            );
        }
        for (user_id, room_id, floor) in &read.floors {
            let key = (user_id.clone(), room_id.clone());
            let known = self.push.unread_floors.get(&key).unwrap_or(0);
            if *floor > known {
                self.push.unread_floors.insert(key, *floor);
            }
        }
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
        let mut badge = 0u64;
        for (room_id, member) in self.members.rooms_of(user_id)? {
            match member.membership {
                // One seek from the floor: whether anything is unread there.
                MembershipState::Join => {
                    let (prefix, start) = self.unread_scan(user_id, &room_id);
                    if self
                        .store
                        .scan_prefix_from(Cf::UnreadNotifications, &prefix, &start)
                        .next()
                        .transpose()?
                        .is_some()
                    {
                        badge += 1;
                    }
                }
                MembershipState::Invite => badge += 1,
                _ => {}
            }
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
