//! Reading what the append path wrote: PDUs by ID, the state before and after events and at
//! stream counts, a room's latest events, lookups by count and timestamp. Reads take no lock;
//! they see whole events only, since each event is one batch.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId,
    room_version_rules::RoomVersionRules,
};

use super::{RoomRecord, StoredPdu, Timeline, timestamp_key};
use crate::{
    Error, Result,
    service::rooms::{event::Pdu, state_store::StateEntry},
    store::{Cf, keys},
};

impl Timeline {
    /// An event's signed PDU, by ID: a copy to keep or change ([`Self::stored_pdu`] shares it).
    pub fn pdu_json(&self, event_id: &EventId) -> Result<Option<CanonicalJsonObject>> {
        Ok(self
            .stored_pdu(event_id)?
            .map(|stored| Arc::unwrap_or_clone(stored).pdu))
    }

    /// An event as stored, parsed once for all readers (see [`super::parsed`]).
    pub(super) fn pdu_by_short(&self, short: u64) -> Result<Option<Arc<StoredPdu>>> {
        if let Some(stored) = self.parsed.get(short) {
            return Ok(Some(stored));
        }
        let ticket = self.parsed.before_read(short);
        let Some(bytes) = self.store.get(Cf::Pdus, &keys::u64_be(short))? else {
            return Ok(None);
        };
        let mut stored = serde_json::from_slice::<StoredPdu>(&bytes)?;
        stored.short = Some(short);
        let stored = Arc::new(stored);
        self.parsed.keep(short, &stored, bytes.len(), ticket);
        Ok(Some(stored))
    }

    pub(super) fn load_pdu(
        &self,
        event_id: &EventId,
        rules: &RoomVersionRules,
    ) -> Option<Arc<Pdu>> {
        if let Some(pdu) = self.auth_events.get(event_id) {
            return Some(pdu);
        }
        // The auth rules see a missing event either way; a storage error is said in the log,
        // not taken silently for an event that is not there.
        let json = match self.pdu_json(event_id) {
            Ok(json) => json?,
            Err(e) => {
                tracing::error!(%event_id, "reading an event for the auth rules failed: {e}");
                return None;
            }
        };
        let pdu = match Pdu::from_json(event_id.to_owned(), &json, rules) {
            Ok(pdu) => Arc::new(pdu),
            Err(e) => {
                tracing::warn!(%event_id, "a stored event does not parse for the auth rules: {e}");
                return None;
            }
        };
        self.auth_events.insert(event_id.to_owned(), pdu.clone());
        Some(pdu)
    }

    /// The current state of a room: `(event type, state key)` → event ID.
    pub fn current_state(
        &self,
        room_id: &RoomId,
    ) -> Result<HashMap<(String, String), OwnedEventId>> {
        let room = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("No such room."))?;
        self.expand_state(room.state)
    }

    /// The state before an event.
    pub fn state_before(
        &self,
        event_id: &EventId,
    ) -> Result<HashMap<(String, String), OwnedEventId>> {
        self.expand_state(self.state_hash_before(event_id)?)
    }

    /// The short state hash of the state before an event (0: none, before the create event).
    pub fn state_hash_before(&self, event_id: &EventId) -> Result<u64> {
        let short = self
            .short
            .existing_event(event_id.as_str())?
            .ok_or_else(|| Error::not_found("No such event."))?;
        self.state_hash_before_short(short)
    }

    /// [`Timeline::state_hash_before`] of an event read from the store: by the short ID it
    /// was read by, else by its ID.
    pub(crate) fn state_hash_before_stored(&self, stored: &StoredPdu) -> Result<u64> {
        match stored.short {
            Some(short) => self.state_hash_before_short(short),
            None => self.state_hash_before(&stored.event_id),
        }
    }

    /// [`Timeline::state_hash_before`] by the event's short ID.
    fn state_hash_before_short(&self, short: u64) -> Result<u64> {
        self.store
            .get(Cf::EventState, &keys::u64_be(short))?
            .and_then(|b| keys::parse_u64_be(&b))
            .ok_or_else(|| Error::internal("event without state"))
    }

    pub(super) fn expand_state(
        &self,
        state: u64,
    ) -> Result<HashMap<(String, String), OwnedEventId>> {
        if state == 0 {
            return Ok(HashMap::new());
        }
        self.expand_entries(&self.states.load(state)?)
    }

    /// A compressed state as `(event type, state key)` → event ID.
    pub fn expand_entries(
        &self,
        entries: &[StateEntry],
    ) -> Result<HashMap<(String, String), OwnedEventId>> {
        let mut map = HashMap::with_capacity(entries.len());
        for &(key, event) in entries {
            let key = self
                .short
                .state_key_of(key)?
                .ok_or_else(|| Error::internal("unknown state key"))?;
            let event = self
                .short
                .event_id(event)?
                .ok_or_else(|| Error::internal("unknown event"))?;
            map.insert(
                key,
                EventId::parse(&event).map_err(|e| Error::internal(e.to_string()))?,
            );
        }
        Ok(map)
    }

    /// An event's fields in the client format (`type`, `content`, `event_id`, `sender`,
    /// `origin_server_ts`, `room_id`, and `state_key`/`redacts` where present), for the
    /// server's own reads. What clients get is made by `client_event::EventView`, which adds
    /// the `unsigned` fields of the one who asked.
    pub fn event_fields(&self, room_id: &RoomId, event_id: &EventId) -> Result<serde_json::Value> {
        let pdu = self
            .pdu_json(event_id)?
            .ok_or_else(|| Error::not_found("No such event."))?;
        Ok(serde_json::Value::Object(
            crate::service::rooms::client_event::client_fields(room_id, event_id, &pdu),
        ))
    }

    /// An event as stored: its PDU and what was recorded with it.
    pub(crate) fn stored_pdu(&self, event_id: &EventId) -> Result<Option<Arc<StoredPdu>>> {
        let Some(short) = self.short.existing_event(event_id.as_str())? else {
            return Ok(None);
        };
        self.pdu_by_short(short)
    }

    /// Up to `limit` of the room's events with a stream count at or below `upto`, oldest first,
    /// and whether older ones exist (one reverse seek).
    pub fn last_events(
        &self,
        room_id: &RoomId,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, OwnedEventId)>, bool)> {
        self.last_events_above(room_id, 0, upto, limit)
    }

    /// Like [`Timeline::last_events`], but only events with a stream count above `floor`:
    /// an incremental sync reads what is new, not a whole timeline limit's worth of entries
    /// (stepping backwards through a memtable is a search per step).
    pub fn last_events_above(
        &self,
        room_id: &RoomId,
        floor: u64,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, OwnedEventId)>, bool)> {
        let (entries, more) = self.last_entries_above(room_id, floor, upto, limit)?;
        let events = entries
            .into_iter()
            .map(|(count, short)| Ok((count, self.event_id_of_short(short)?)))
            .collect::<Result<_>>()?;
        Ok((events, more))
    }

    /// [`Timeline::last_events_above`] as stream counts and short event IDs: for a reader that
    /// reads the events themselves (by [`Timeline::stored_pdu_by_short`], which has their IDs),
    /// without looking up each ID and then its short ID again.
    pub fn last_entries_above(
        &self,
        room_id: &RoomId,
        floor: u64,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, u64)>, bool)> {
        let prefix = keys::prefix(room_id.as_bytes());
        let start = keys::join([room_id.as_bytes(), &keys::u64_be(upto)]);
        let mut entries = Vec::with_capacity(limit.min(64));
        let mut more = false;
        for item in self
            .store
            .scan_prefix_rev_from(Cf::Timeline, &prefix, &start)
        {
            let (key, value) = item?;
            let entry = timeline_entry_short(prefix.len(), &key, &value)?;
            if entry.0 <= floor {
                break;
            }
            if entries.len() == limit {
                more = true;
                break;
            }
            entries.push(entry);
        }
        entries.reverse();
        Ok((entries, more))
    }

    /// The state of a room after its last event with a stream count at or below `count`.
    pub fn state_at_count(
        &self,
        room_id: &RoomId,
        count: u64,
    ) -> Result<HashMap<(String, String), OwnedEventId>> {
        self.expand_entries(&self.state_entries_at_count(room_id, count)?)
    }

    /// The state after an event: the state before it, plus the event if it is a state event.
    pub fn state_after(
        &self,
        event_id: &EventId,
    ) -> Result<HashMap<(String, String), OwnedEventId>> {
        self.expand_entries(&self.state_entries_after(event_id)?)
    }

    /// A room's compressed current state, for point reads with [`Timeline::lookup`] (cheaper
    /// than [`Timeline::current_state`], which resolves every entry).
    pub fn current_state_entries(&self, room: &RoomRecord) -> Result<Vec<StateEntry>> {
        match room.state {
            0 => Ok(Vec::new()),
            state => self.states.load(state),
        }
    }

    /// The compressed state before an event (empty before the create event).
    pub fn state_entries_before(&self, event_id: &EventId) -> Result<Vec<StateEntry>> {
        self.state_entries(self.state_hash_before(event_id)?)
    }

    /// [`Timeline::state_entries_before`] of an event read from the store (see
    /// [`Timeline::state_hash_before_stored`]).
    pub(crate) fn state_entries_before_stored(
        &self,
        stored: &StoredPdu,
    ) -> Result<Vec<StateEntry>> {
        self.state_entries(self.state_hash_before_stored(stored)?)
    }

    /// The compressed state of a snapshot (0: the empty state before a room's first event).
    pub fn state_entries(&self, state: u64) -> Result<Vec<StateEntry>> {
        match state {
            0 => Ok(Vec::new()),
            state => self.states.load(state),
        }
    }

    /// The `history_visibility` in force at a state snapshot (empty when unset).
    pub fn history_visibility_at(&self, state: u64) -> Result<Arc<str>> {
        if let Some(visibility) = self.visibility.get(&state) {
            return Ok(visibility);
        }
        let entries = self.state_entries(state)?;
        let value = match self.lookup(&entries, "m.room.history_visibility", "")? {
            Some(id) => match self
                .pdu_json(&id)?
                .and_then(|pdu| pdu.get("content").cloned())
            {
                Some(CanonicalJsonValue::Object(content)) => {
                    match content.get("history_visibility") {
                        Some(CanonicalJsonValue::String(v)) => v.clone(),
                        _ => String::new(),
                    }
                }
                _ => String::new(),
            },
            None => String::new(),
        };
        let value: Arc<str> = value.into();
        self.visibility.insert(state, value.clone());
        Ok(value)
    }

    /// The compressed state after an event: the state before it, plus the event itself if it
    /// is a state event.
    pub fn state_entries_after(&self, event_id: &EventId) -> Result<Vec<StateEntry>> {
        let mut entries = self.state_entries_before(event_id)?;
        let stored = self
            .stored_pdu(event_id)?
            .ok_or_else(|| Error::not_found("No such event."))?;
        if let (Some(CanonicalJsonValue::String(kind)), Some(CanonicalJsonValue::String(key))) =
            (stored.pdu.get("type"), stored.pdu.get("state_key"))
        {
            let key = self.short.state_key(kind, key)?;
            let event = self.short.event(event_id.as_str())?;
            match entries.binary_search_by_key(&key, |(k, _)| *k) {
                Ok(i) => entries[i].1 = event,
                Err(i) => entries.insert(i, (key, event)),
            }
        }
        Ok(entries)
    }

    /// The compressed state after the room's last event with a stream count at or below
    /// `count` (empty before the room's first event).
    pub fn state_entries_at_count(&self, room_id: &RoomId, count: u64) -> Result<Vec<StateEntry>> {
        let (events, _) = self.last_events(room_id, count, 1)?;
        match events.into_iter().next() {
            Some((_, event_id)) => self.state_entries_after(&event_id),
            None => Ok(Vec::new()),
        }
    }

    /// The short ID of the event holding `(event_type, state_key)` in a compressed state: a
    /// point read for the state key and a binary search.
    pub fn lookup_short(
        &self,
        entries: &[StateEntry],
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<u64>> {
        let Some(key) = self.short.existing_state_key(event_type, state_key)? else {
            return Ok(None);
        };
        Ok(entries
            .binary_search_by_key(&key, |(k, _)| *k)
            .ok()
            .map(|i| entries[i].1))
    }

    /// The event holding `(event_type, state_key)` in a compressed state: [`Self::lookup_short`]
    /// and a point read for the event ID.
    pub fn lookup(
        &self,
        entries: &[StateEntry],
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        let Some(short) = self.lookup_short(entries, event_type, state_key)? else {
            return Ok(None);
        };
        let id = self
            .short
            .event_id(short)?
            .ok_or_else(|| Error::internal("unknown event"))?;
        Ok(Some(
            EventId::parse(&id).map_err(|e| Error::internal(e.to_string()))?,
        ))
    }

    /// The short ID of the event at stream count `count` of a room's timeline, and the state
    /// before it (two point reads).
    pub fn short_and_state_at(&self, room_id: &RoomId, count: u64) -> Result<Option<(u64, u64)>> {
        let key = keys::join([room_id.as_bytes(), &keys::u64_be(count)]);
        let Some(short) = self
            .store
            .get(Cf::Timeline, &key)?
            .and_then(|s| keys::parse_u64_be(&s))
        else {
            return Ok(None);
        };
        Ok(self
            .store
            .get(Cf::EventState, &keys::u64_be(short))?
            .and_then(|b| keys::parse_u64_be(&b))
            .map(|state| (short, state)))
    }

    /// The event ID of a short ID (usually cached).
    pub fn event_id_of(&self, short: u64) -> Result<Option<OwnedEventId>> {
        Ok(self
            .short
            .event_id(short)?
            .and_then(|id| EventId::parse(id).ok()))
    }

    /// Events of a room after stream count `from`, oldest first, up to `limit`, stopping before
    /// `to` (exclusive).
    pub fn events_after(
        &self,
        room_id: &RoomId,
        from: u64,
        to: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedEventId)>> {
        self.entries_after(room_id, from, to, limit)?
            .into_iter()
            .map(|(count, short)| Ok((count, self.event_id_of_short(short)?)))
            .collect()
    }

    /// [`Timeline::events_after`] as stream counts and short event IDs (see
    /// [`Timeline::last_entries_above`]).
    pub fn entries_after(
        &self,
        room_id: &RoomId,
        from: u64,
        to: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>> {
        let prefix = keys::prefix(room_id.as_bytes());
        let start = keys::join([room_id.as_bytes(), &keys::u64_be(from.saturating_add(1))]);
        let mut entries = Vec::new();
        for item in self.store.scan_prefix_from(Cf::Timeline, &prefix, &start) {
            let (key, value) = item?;
            let entry = timeline_entry_short(prefix.len(), &key, &value)?;
            if entries.len() == limit || to.is_some_and(|to| entry.0 > to) {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// An event's stream count, if it is stored (one point read after the short id).
    pub fn count_of(&self, event_id: &EventId) -> Result<Option<u64>> {
        let Some(short) = self.short.existing_event(event_id.as_str())? else {
            return Ok(None);
        };
        Ok(self
            .store
            .get(Cf::EventCount, &keys::u64_be(short))?
            .and_then(|bytes| keys::parse_u64_be(&bytes)))
    }

    /// Walks the room's events by `origin_server_ts` from `ts`, forward (oldest first, from the
    /// first at or after `ts`) or backward (newest first, from the last at or before `ts`),
    /// calling `visit(ts, stream count, event ID)` until it returns `Some`. One seek, then a
    /// range read that stops with the visitor.
    pub fn find_by_timestamp<T>(
        &self,
        room_id: &RoomId,
        ts: u64,
        forward: bool,
        mut visit: impl FnMut(u64, u64, OwnedEventId) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let prefix = keys::prefix(room_id.as_bytes());
        let corrupt = || Error::internal("corrupt timestamp index entry");
        let mut entry = |key: &[u8], value: &[u8]| -> Result<Option<T>> {
            let at = key
                .get(prefix.len()..)
                .filter(|a| a.len() == 16)
                .ok_or_else(corrupt)?;
            let ts = keys::parse_u64_be(&at[..8]).ok_or_else(corrupt)?;
            let count = keys::parse_u64_be(&at[8..]).ok_or_else(corrupt)?;
            let short = keys::parse_u64_be(value).ok_or_else(corrupt)?;
            let event_id = self.short.event_id(short)?.ok_or_else(corrupt)?;
            let event_id = EventId::parse(&event_id).map_err(|e| Error::internal(e.to_string()))?;
            visit(ts, count, event_id)
        };
        if forward {
            let start = timestamp_key(room_id, ts, 0);
            for item in self
                .store
                .scan_prefix_from(Cf::TimestampEvents, &prefix, &start)
            {
                let (key, value) = item?;
                if let Some(found) = entry(&key, &value)? {
                    return Ok(Some(found));
                }
            }
        } else {
            let start = timestamp_key(room_id, ts, u64::MAX);
            for item in self
                .store
                .scan_prefix_rev_from(Cf::TimestampEvents, &prefix, &start)
            {
                let (key, value) = item?;
                if let Some(found) = entry(&key, &value)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// The latest committed stream count.
    pub fn current_count(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Decodes one `timeline` entry into `(stream count, event ID)`.
    pub(super) fn timeline_entry(
        &self,
        prefix_len: usize,
        key: &[u8],
        value: &[u8],
    ) -> Result<(u64, OwnedEventId)> {
        let (count, short) = timeline_entry_short(prefix_len, key, value)?;
        Ok((count, self.event_id_of_short(short)?))
    }

    /// The ID of the event with short ID `short` (which the timeline holds).
    pub fn event_id_of_short(&self, short: u64) -> Result<OwnedEventId> {
        let event_id = self
            .short
            .event_id(short)?
            .ok_or_else(|| Error::internal("corrupt timeline entry"))?;
        EventId::parse(&event_id).map_err(|e| Error::internal(e.to_string()))
    }

    /// The stored event with short ID `short`, kept parsed (see [`Timeline::stored_pdu`]).
    pub(crate) fn stored_pdu_by_short(&self, short: u64) -> Result<Option<Arc<StoredPdu>>> {
        self.pdu_by_short(short)
    }
}

/// A timeline entry: its stream count (from the key after the room's prefix) and the event's
/// short ID (the value).
fn timeline_entry_short(prefix_len: usize, key: &[u8], value: &[u8]) -> Result<(u64, u64)> {
    let corrupt = || Error::internal("corrupt timeline entry");
    let count = keys::parse_u64_be(&key[prefix_len..]).ok_or_else(corrupt)?;
    let short = keys::parse_u64_be(value).ok_or_else(corrupt)?;
    Ok((count, short))
}
