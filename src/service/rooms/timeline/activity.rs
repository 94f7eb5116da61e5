//! What changed recently, by stream count: which room each of the last few thousand commits
//! touched (a new event, a receipt, room account data, a membership kept outside the room's
//! timeline), in memory.
//! "Which of my rooms changed since count N?" — what a quiet sliding-sync connection asks on
//! every request — is then answered in the number of changes, not the number of rooms.
//!
//! Entries are recorded under the stream lock, before the count is published, so a reader that
//! saw count N finds every change up to N here. The window is bounded; a question about a count
//! older than the window gets `None`, and the caller falls back to looking at every room.
//!
//! The same window remembers which of the user-wide streams a `/sync` scans after its token
//! (to-device messages, account data, device lists, presence) the recent commits wrote to,
//! read off each commit's batch: a long-poll woken by a message then skips the scans of the
//! streams nobody wrote to.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use ruma::{OwnedRoomId, RoomId};

use crate::store::{Batch, Cf};

/// How many commits are remembered.
const CAPACITY: usize = 16_384;

/// What a commit changed in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new event in the room's timeline.
    Event,
    /// A read receipt.
    Receipt,
    /// A user's account data for the room (tags, the fully-read marker, …).
    AccountData,
    /// A local user's membership kept outside the room's timeline (an invite to, a knock on or
    /// the rejection of a room this server is not in).
    Membership,
}

/// A set of the user-wide streams `/sync` reads after its token, by the table each is kept in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streams(u8);

impl Streams {
    pub const TO_DEVICE: Self = Self(1);
    pub const ACCOUNT_DATA: Self = Self(1 << 1);
    pub const DEVICE_LISTS: Self = Self(1 << 2);
    pub const PRESENCE: Self = Self(1 << 3);

    /// Each stream and the table a change to it always writes (its position index).
    const TABLES: [(Cf, Self); 4] = [
        (Cf::ToDevice, Self::TO_DEVICE),
        (Cf::AccountDataCounts, Self::ACCOUNT_DATA),
        (Cf::DeviceListStream, Self::DEVICE_LISTS),
        (Cf::PresenceStream, Self::PRESENCE),
    ];

    /// The streams `batch` writes to.
    pub fn written_by(batch: &Batch) -> Self {
        Self::TABLES
            .iter()
            .filter(|(cf, _)| batch.writes_to(*cf))
            .fold(Self::default(), |all, (_, stream)| Self(all.0 | stream.0))
    }

    pub fn contains(self, stream: Self) -> bool {
        self.0 & stream.0 == stream.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// One remembered commit.
#[derive(Clone, Debug)]
pub struct Activity {
    pub count: u64,
    pub room_id: Arc<OwnedRoomId>,
    pub change: Change,
}

/// The window of recent commits.
pub struct RecentActivity {
    inner: Mutex<Window>,
}

struct Window {
    entries: VecDeque<Activity>,
    /// Every commit with a count above this is in `entries`.
    complete_above: u64,
    /// The commits that wrote to a user-wide stream, and which.
    streams: VecDeque<(u64, Streams)>,
    /// Every such commit with a count above this is in `streams`.
    streams_complete_above: u64,
}

impl RecentActivity {
    /// An empty window, complete for the counts above `current` (the stream count at start-up:
    /// what happened before is not known here).
    pub fn new(current: u64) -> Self {
        Self {
            inner: Mutex::new(Window {
                entries: VecDeque::new(),
                complete_above: current,
                streams: VecDeque::new(),
                streams_complete_above: current,
            }),
        }
    }

    /// Remembers that the commit with count `count` changed `room_id`.
    pub fn record(&self, count: u64, room_id: &RoomId, change: Change) {
        let mut window = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if window.entries.len() == CAPACITY
            && let Some(oldest) = window.entries.pop_front()
        {
            window.complete_above = oldest.count;
        }
        // Rooms change in bursts: share the ID with the previous entry of the same room.
        let room_id = match window
            .entries
            .iter()
            .rev()
            .take(8)
            .find(|a| &**a.room_id == room_id)
        {
            Some(previous) => previous.room_id.clone(),
            None => Arc::new(room_id.to_owned()),
        };
        window.entries.push_back(Activity {
            count,
            room_id,
            change,
        });
    }

    /// Remembers that the commit with count `count` wrote to `streams` (nothing to remember
    /// when it wrote to none).
    pub fn record_streams(&self, count: u64, streams: Streams) {
        if streams.is_empty() {
            return;
        }
        let mut window = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if window.streams.len() == CAPACITY
            && let Some((oldest, _)) = window.streams.pop_front()
        {
            window.streams_complete_above = oldest;
        }
        window.streams.push_back((count, streams));
    }

    /// The streams the commits with a count above `since` and at most `upto` wrote to; `None`
    /// when the window does not reach back to `since`.
    pub fn streams_between(&self, since: u64, upto: u64) -> Option<Streams> {
        let window = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if since < window.streams_complete_above {
            return None;
        }
        let start = window.streams.partition_point(|(count, _)| *count <= since);
        Some(
            window
                .streams
                .range(start..)
                .take_while(|(count, _)| *count <= upto)
                .fold(Streams::default(), |all, (_, written)| {
                    Streams(all.0 | written.0)
                }),
        )
    }

    /// The changes with a count above `since` and at most `upto`, oldest first; `None` when the
    /// window does not reach back to `since`.
    pub fn between(&self, since: u64, upto: u64) -> Option<Vec<Activity>> {
        let window = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if since < window.complete_above {
            return None;
        }
        let start = window.entries.partition_point(|a| a.count <= since);
        Some(
            window
                .entries
                .range(start..)
                .take_while(|a| a.count <= upto)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(n: u32) -> OwnedRoomId {
        RoomId::parse(format!("!r{n}:x")).unwrap()
    }

    #[test]
    fn the_streams_written_since_a_count_are_known_until_the_window_has_moved_past_it() {
        let recent = RecentActivity::new(100);
        assert_eq!(recent.streams_between(99, 200), None, "before start-up");
        assert_eq!(recent.streams_between(100, 200), Some(Streams::default()));
        let mut batch = Batch::new();
        batch.put(Cf::ToDevice, b"k".to_vec(), b"v".to_vec());
        batch.put(Cf::Rooms, b"k".to_vec(), b"v".to_vec());
        assert_eq!(Streams::written_by(&batch), Streams::TO_DEVICE);
        recent.record_streams(101, Streams::written_by(&batch));
        recent.record_streams(102, Streams::written_by(&Batch::new()));
        let mut batch = Batch::new();
        batch.delete(Cf::PresenceStream, b"k".to_vec());
        batch.put(Cf::AccountDataCounts, b"k".to_vec(), b"v".to_vec());
        recent.record_streams(103, Streams::written_by(&batch));
        let all = recent.streams_between(100, 200).unwrap();
        for stream in [Streams::TO_DEVICE, Streams::PRESENCE, Streams::ACCOUNT_DATA] {
            assert!(all.contains(stream), "{stream:?}");
        }
        assert!(!all.contains(Streams::DEVICE_LISTS));
        assert_eq!(recent.streams_between(101, 200), Some(Streams(0b1010)));
        assert_eq!(recent.streams_between(100, 102), Some(Streams::TO_DEVICE));
        assert_eq!(recent.streams_between(103, 200), Some(Streams::default()));
        for count in 0..CAPACITY as u64 {
            recent.record_streams(200 + count, Streams::DEVICE_LISTS);
        }
        assert_eq!(recent.streams_between(102, u64::MAX), None, "pushed out");
        assert_eq!(
            recent.streams_between(103, u64::MAX),
            Some(Streams::DEVICE_LISTS)
        );
    }

    #[test]
    fn changes_since_a_count_are_listed_until_the_window_has_moved_past_it() {
        let recent = RecentActivity::new(100);
        assert!(
            recent.between(99, 200).is_none(),
            "before start-up: unknown"
        );
        assert_eq!(recent.between(100, 200).unwrap().len(), 0);
        recent.record(101, &room(1), Change::Event);
        recent.record(102, &room(2), Change::Receipt);
        recent.record(103, &room(1), Change::Event);
        let since_101: Vec<u64> = recent
            .between(101, 200)
            .unwrap()
            .iter()
            .map(|a| a.count)
            .collect();
        assert_eq!(since_101, vec![102, 103]);
        let upto_102: Vec<u64> = recent
            .between(100, 102)
            .unwrap()
            .iter()
            .map(|a| a.count)
            .collect();
        assert_eq!(upto_102, vec![101, 102]);
        for count in 0..CAPACITY as u64 {
            recent.record(200 + count, &room(3), Change::Event);
        }
        // The first three were pushed out: what happened after 102 is no longer all known.
        assert!(
            recent.between(102, u64::MAX).is_none(),
            "pushed out of the window"
        );
        assert!(recent.between(103, u64::MAX).is_some());
        assert_eq!(
            recent
                .between(200 + CAPACITY as u64 - 2, u64::MAX)
                .unwrap()
                .len(),
            1
        );
    }
}
