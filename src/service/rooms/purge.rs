//! Purging a room: taking everything this server keeps of it out of the store, once its local
//! members have left (an admin's room deletion, `service::admin::room_deletion`); and purging
//! a room's old history ([`Services::purge_history`], described there).
//!
//! Two steps, each durable:
//! 1. One batch takes the room out of every reader's view — its record, timeline, members,
//!    receipts, aliases, directory entries, thread and search indexes, and its members'
//!    entries keyed by user and room (memberships, room account data and tags, unread counts,
//!    notifications, thread subscriptions, lazy-loading and sliding-sync positions,
//!    transaction IDs) — and leaves a marker (`purge:<room_id>` in `global`).
//! 2. Its events — found by one pass over `pdus`, since events fetched from other servers
//!    (outliers) have no timeline entry — go in batches of [`EVENTS_PER_BATCH`]: the PDU, the
//!    state before it, its place in the timeline, its cached auth chain, and the relation
//!    entries under it. The last batch deletes the marker; a start-up finds a marker left by a
//!    crash and finishes the purge.
//!
//! Kept: the short-ID registry (event ID ↔ short ID; IDs are never reused, and a short ID
//! without a PDU already means "unknown" everywhere), state snapshots (short IDs only, no
//! content; shared by hash), media, reports, users' key backups (their own keys), the block.
//! A full pass over `pdus` is an admin's background job, not a hot path.

use std::collections::HashSet;

use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde::Deserialize;

use crate::{
    Result,
    service::Services,
    store::{Batch, Cf, keys},
};

/// What a purge reads of a stored PDU: its ID and its room.
#[derive(Deserialize)]
struct StoredRoomOf {
    event_id: String,
    pdu: RoomOf,
}

#[derive(Deserialize)]
struct RoomOf {
    room_id: Option<String>,
}

/// Events deleted per batch in step 2.
const EVENTS_PER_BATCH: usize = 500;

/// What a purge took out.
#[derive(Clone, Copy, Debug, Default)]
pub struct Purged {
    pub events: u64,
}

/// Where the marker of an unfinished purge lives in `global`.
fn marker(room_id: &RoomId) -> Vec<u8> {
    [b"purge:".as_slice(), room_id.as_bytes()].concat()
}

/// Column families keyed `room_id 0xFF …`.
const ROOM_PREFIXED: [Cf; 12] = [
    Cf::Timeline,
    Cf::RoomMembers,
    Cf::Receipts,
    Cf::RoomAliases,
    Cf::ReceiptStream,
    Cf::TimestampEvents,
    Cf::RoomServers,
    Cf::ThreadRoots,
    Cf::ThreadCounts,
    Cf::ThreadActivity,
    Cf::SearchWords,
    Cf::DelayedByState,
];

/// Column families keyed by the room ID alone.
const ROOM_KEYED: [Cf; 4] = [
    Cf::Rooms,
    Cf::RoomBumps,
    Cf::PublicRooms,
    Cf::PublicJoinRooms,
];

/// Column families keyed `user_id 0xFF room_id …`.
const USER_ROOM_PREFIXED: [Cf; 5] = [
    Cf::UserRooms,
    Cf::AccountData,
    Cf::AccountDataCounts,
    Cf::UnreadNotifications,
    Cf::ThreadSubscriptions,
];

/// Column families keyed `user_id 0xFF device_id 0xFF room_id …`.
const DEVICE_ROOM_PREFIXED: [Cf; 3] = [Cf::LazyLoadedMembers, Cf::TxnIds, Cf::DelayedTxns];

/// Column families keyed `event_id 0xFF …` (relations under the event).
const EVENT_PREFIXED: [Cf; 4] = [
    Cf::Relations,
    Cf::RelationKinds,
    Cf::Annotations,
    Cf::ThreadParticipants,
];

/// Column families keyed by an event's short ID.
const SHORT_KEYED: [Cf; 4] = [Cf::Pdus, Cf::EventState, Cf::EventCount, Cf::AuthChains];

impl Services {
    /// Takes everything kept of `room_id` out of the store (see the module's description).
    /// The caller makes sure no local user is still in it; the room's lock is held
    /// throughout, so no event enters it meanwhile.
    pub async fn purge_room(&self, room_id: &RoomId) -> Result<Purged> {
        let _guard = self.timeline.lock_room(room_id).await;
        let _forget = self.push.forget_unread_counts_after();
        let members: Vec<OwnedUserId> = self
            .members
            .of_room(room_id)?
            .into_iter()
            .map(|(user_id, _)| user_id)
            .collect();
        if self.timeline.room(room_id)?.is_some() {
            self.purge_room_records(room_id, &members)?;
        }
        let purged = self.purge_room_events(room_id)?;
        for user_id in &members {
            self.sliding.room_lists.forget_user(user_id);
        }
        self.appservices.forget_room_interest(room_id);
        tracing::info!(room = %room_id, events = purged.events, "room purged");
        Ok(purged)
    }

    /// Step 1: the room out of every reader's view, in one batch with the marker.
    fn purge_room_records(&self, room_id: &RoomId, members: &[OwnedUserId]) -> Result<()> {
        let room = room_id.as_bytes();
        let mut batch = Batch::new();
        batch.put(Cf::Global, marker(room_id), Vec::new());
        for alias in self.room_aliases(room_id)? {
            batch.delete(Cf::Aliases, alias.as_bytes());
        }
        for cf in ROOM_PREFIXED {
            batch.delete_prefix(cf, keys::prefix(room));
        }
        for cf in ROOM_KEYED {
            batch.delete(cf, room);
        }
        for user_id in members
            .iter()
            .filter(|u| u.server_name() == self.server_name)
        {
            let user = user_id.as_bytes();
            for cf in USER_ROOM_PREFIXED {
                // The exact key (`user_rooms`) and the keys below it.
                batch.delete(cf, keys::join([user, room]));
                batch.delete_prefix(cf, keys::join([user, room, b""]));
            }
            batch.delete(Cf::RemoteInvites, keys::join([user, room]));
            for (device_id, _) in self.devices.list(user_id)? {
                for cf in DEVICE_ROOM_PREFIXED {
                    batch.delete_prefix(cf, keys::join([user, device_id.as_bytes(), room, b""]));
                }
            }
            // Keyed by user and stream count, the room in the value: one scan each.
            let prefix = keys::prefix(user);
            for item in self.store.scan_prefix(Cf::Notifications, &prefix) {
                let (key, value) = item?;
                let record: serde_json::Value = serde_json::from_slice(&value)?;
                if record["room_id"] == room_id.as_str() {
                    batch.delete(Cf::Notifications, key.to_vec());
                }
            }
            let in_room = keys::prefix(room);
            for item in self
                .store
                .scan_prefix(Cf::ThreadSubscriptionChanges, &prefix)
            {
                let (key, value) = item?;
                if value.starts_with(&in_room) {
                    batch.delete(Cf::ThreadSubscriptionChanges, key.to_vec());
                }
            }
            // Sliding-sync connections' entries end with the room.
            let last_part = [&[keys::SEP], room].concat();
            for item in self.store.scan_prefix(Cf::SlidingRooms, &prefix) {
                let (key, _) = item?;
                if key.ends_with(&last_part) {
                    batch.delete(Cf::SlidingRooms, key.to_vec());
                }
            }
        }
        self.store.write(batch)?;
        Ok(())
    }

    /// Step 2: the room's events, in batches; the marker goes with the last.
    fn purge_room_events(&self, room_id: &RoomId) -> Result<Purged> {
        let needle = format!("\"room_id\":\"{room_id}\"");
        let mut found: Vec<(u64, String)> = Vec::new();
        for item in self.store.scan_prefix(Cf::Pdus, &[]) {
            let (key, value) = item?;
            if !contains(&value, needle.as_bytes()) {
                continue;
            }
            // The needle could sit in another room's content: the PDU's own room decides.
            let Ok(stored) = serde_json::from_slice::<StoredRoomOf>(&value) else {
                continue;
            };
            if stored.pdu.room_id.as_deref() != Some(room_id.as_str()) {
                continue;
            }
            if let Some(short) = keys::parse_u64_be(&key) {
                found.push((short, stored.event_id));
            }
        }
        let mut purged = Purged::default();
        let mut chunks = found.chunks(EVENTS_PER_BATCH).peekable();
        if chunks.peek().is_none() {
            let mut batch = Batch::new();
            batch.delete(Cf::Global, marker(room_id));
            self.store.write(batch)?;
        }
        while let Some(chunk) = chunks.next() {
            let mut batch = Batch::new();
            for (short, event_id) in chunk {
                for cf in SHORT_KEYED {
                    batch.delete(cf, keys::u64_be(*short).to_vec());
                }
                for cf in EVENT_PREFIXED {
                    batch.delete_prefix(cf, keys::prefix(event_id.as_bytes()));
                }
            }
            if chunks.peek().is_none() {
                batch.delete(Cf::Global, marker(room_id));
            }
            self.store.write(batch)?;
            purged.events += chunk.len() as u64;
        }
        Ok(purged)
    }

    /// At start-up: finishes the purges a crash interrupted.
    pub async fn finish_interrupted_purges(&self) -> Result<()> {
        let mut rooms: HashSet<OwnedRoomId> = HashSet::new();
        for item in self.store.scan_prefix(Cf::Global, b"purge:") {
            let (key, _) = item?;
            if let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&key[6..]).as_ref())
            {
                rooms.insert(room_id);
            }
        }
        for room_id in rooms {
            tracing::info!(room = %room_id, "finishing an interrupted purge");
            self.purge_room(&room_id).await?;
        }
        Ok(())
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Where a history purge stops: the events before it go.
#[derive(Clone, Debug)]
pub enum HistoryPoint {
    Event(ruma::OwnedEventId),
    /// The first event at or after this `origin_server_ts` (ms) and the later ones stay.
    Timestamp(u64),
}

impl Services {
    /// Purges a room's history before `point` (Synapse's `purge_history`): its message events
    /// — not its state events, which the room's state and auth rest on — go with their index
    /// entries (timeline, timestamps, search words, relations, threads they root, the local
    /// members' notifications); local users' events only with `delete_local`, as they may be
    /// the only copies there are. The room's newest event always stays. Returns how many
    /// events went. Batches of [`EVENTS_PER_BATCH`], each under the room's lock.
    ///
    /// Events another server still has may come back through backfill when someone pages
    /// back to the start of what is left.
    pub async fn purge_history(
        &self,
        room_id: &RoomId,
        point: HistoryPoint,
        delete_local: bool,
    ) -> Result<u64> {
        if self.timeline.room(room_id)?.is_none() {
            return Err(crate::Error::not_found("Room not found"));
        }
        let prefix = keys::prefix(room_id.as_bytes());
        let newest = self
            .store
            .scan_prefix_rev_from(
                Cf::Timeline,
                &prefix,
                &keys::prefix_end(&prefix).unwrap_or_default(),
            )
            .next()
            .transpose()?
            .and_then(|(key, _)| keys::parse_u64_be(&key[prefix.len()..]));
        let Some(newest) = newest else {
            return Ok(0);
        };
        let end = match point {
            HistoryPoint::Event(event_id) => {
                if !self.event_in_room(room_id, &event_id)? {
                    return Err(crate::Error::not_found("No such event in this room."));
                }
                self.timeline
                    .count_of(&event_id)?
                    .ok_or_else(|| crate::Error::not_found("No such event in this room."))?
            }
            HistoryPoint::Timestamp(ts) => self
                .timeline
                .find_by_timestamp(room_id, ts, true, |_, count, _| Ok(Some(count)))?
                .unwrap_or(newest),
        }
        .min(newest);
        let local_members: Vec<OwnedUserId> = self
            .members
            .of_room(room_id)?
            .into_iter()
            .map(|(user_id, _)| user_id)
            .filter(|u| u.server_name() == self.server_name)
            .collect();
        let _forget = self.push.forget_unread_counts_after();
        let mut purged = 0;
        let mut from = prefix.clone();
        loop {
            let chunk: Vec<(u64, u64)> = self
                .store
                .scan_prefix_from(Cf::Timeline, &prefix, &from)
                .take(EVENTS_PER_BATCH)
                .map(|item| {
                    let (key, value) = item?;
                    Ok((
                        keys::parse_u64_be(&key[prefix.len()..]).unwrap_or(u64::MAX),
                        keys::parse_u64_be(&value).unwrap_or(0),
                    ))
                })
                .collect::<Result<_>>()?;
            let Some(&(last, _)) = chunk.last() else {
                break;
            };
            let _guard = self.timeline.lock_room(room_id).await;
            let mut batch = Batch::new();
            let mut done = false;
            for (count, short) in chunk {
                if count >= end {
                    done = true;
                    break;
                }
                if self.purge_event_into(
                    &mut batch,
                    room_id,
                    count,
                    short,
                    delete_local,
                    &local_members,
                )? {
                    purged += 1;
                }
            }
            self.store.write(batch)?;
            if done {
                break;
            }
            from = keys::join([room_id.as_bytes(), &keys::u64_be(last + 1)]);
        }
        tracing::info!(room = %room_id, purged, "history purged");
        Ok(purged)
    }

    /// One event of a history purge into `batch`, if it is to go (not a state event, not a
    /// local user's without `delete_local`).
    fn purge_event_into(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        count: u64,
        short: u64,
        delete_local: bool,
        local_members: &[OwnedUserId],
    ) -> Result<bool> {
        let Some(event_id) = self.short_ids.event_id(short)? else {
            return Ok(false);
        };
        let Ok(event_id) = ruma::OwnedEventId::try_from(event_id) else {
            return Ok(false);
        };
        let Some(pdu) = self.timeline.pdu_json(&event_id)? else {
            return Ok(false);
        };
        let field = |name: &str| match pdu.get(name) {
            Some(ruma::CanonicalJsonValue::String(s)) => Some(s.as_str()),
            _ => None,
        };
        if pdu.contains_key("state_key") {
            return Ok(false);
        }
        let local = field("sender")
            .and_then(|s| ruma::UserId::parse(s).ok())
            .is_some_and(|s| s.server_name() == self.server_name);
        if local && !delete_local {
            return Ok(false);
        }
        let room = room_id.as_bytes();
        crate::service::rooms::timeline::unindex_timeline(batch, count, room_id, short, &pdu);
        for (key, _) in crate::service::rooms::search::index_entries(room, &pdu, count) {
            batch.delete(Cf::SearchWords, key);
        }
        // Its own entries under the event it relates to (a reaction's only if it holds it).
        if let Some(entries) =
            crate::service::rooms::relations::index_entries(event_id.as_str(), &pdu, count)
        {
            for (cf, key, value) in entries.puts {
                match cf {
                    Cf::Relations => batch.delete(cf, key),
                    // Not the parent's mark: another child may need it.
                    Cf::RelationKinds if !crate::service::rooms::relations::is_mark(&key) => {
                        batch.delete(cf, key)
                    }
                    Cf::Annotations
                        if self.store.get(cf, &key)?.as_deref() == Some(value.as_slice()) =>
                    {
                        batch.delete(cf, key)
                    }
                    _ => {}
                }
            }
        }
        // The entries under it, and the thread it roots.
        for cf in EVENT_PREFIXED {
            batch.delete_prefix(cf, keys::prefix(event_id.as_bytes()));
        }
        let thread = keys::join([room, event_id.as_bytes()]);
        if let Some(value) = self.store.get(Cf::ThreadRoots, &thread)?
            && let Some(latest) = value.get(..8).and_then(keys::parse_u64_be)
        {
            batch.delete(
                Cf::ThreadActivity,
                keys::join([room, &keys::u64_be(latest)]),
            );
        }
        batch.delete(Cf::ThreadRoots, thread.clone());
        batch.delete(Cf::ThreadCounts, thread);
        for user_id in local_members {
            let user = user_id.as_bytes();
            batch.delete(Cf::Notifications, keys::join([user, &keys::u64_be(count)]));
            batch.delete(
                Cf::UnreadNotifications,
                keys::join([user, room, &keys::u64_be(count)]),
            );
        }
        Ok(true)
    }
}
