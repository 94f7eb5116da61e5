//! Short ids: a u64 for each event ID, each `(event type, state key)` pair and each distinct
//! state, so that states are compact sorted arrays of `(short state key, short event id)`.
//!
//! Ids come from one counter reserved in blocks: a block is recorded on disk before any id in
//! it is handed out, so a restart (or a crash) never hands out an id twice; the unused rest of a
//! block is skipped. Get-or-create is serialised and written at once, so the same key can never
//! get two ids, even from two rooms at the same moment. A mapping written for an event that was
//! then refused is harmless: it is never referenced.
//!
//! These writes do not wait for the disk (with `durability = "group"`, an fsync per new event
//! ID would be waited for under the room's lock): an id matters only once a record that uses
//! it is written, later in the same write-ahead log, and waiting for that record's fsync makes
//! the mapping (and the reserved block) durable too. A power cut keeps a prefix of the log, so
//! it never keeps a record whose mapping or block it lost.
//!
//! A mapping never changes once written, so the ones in use are kept in memory (sending an
//! event looks up the same few state keys and auth events every time); keys not found are not
//! remembered, since they may be created at any moment.

use std::sync::{Arc, Mutex};

use quick_cache::sync::Cache;

use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
};

const COUNTER_KEY: &[u8] = b"shortid_reserved";
const BLOCK: u64 = 1024;
/// Mappings each cache keeps (four caches; about half a megabyte in all).
const CACHED: usize = 2048;

struct Reservation {
    next: u64,
    reserved_until: u64,
}

pub struct ShortIds {
    store: Store,
    /// Held while allocating and writing a new mapping.
    lock: Mutex<Reservation>,
    /// Forward mappings in use: event ID → id, and `(type, state key)` → id.
    event_ids: Cache<Vec<u8>, u64>,
    state_keys: Cache<Vec<u8>, u64>,
    /// Reverse mappings in use: id → event ID, and id → `(type, state key)`.
    events_by_id: Cache<u64, Arc<str>>,
    state_keys_by_id: Cache<u64, Arc<(String, String)>>,
}

impl ShortIds {
    pub fn load(store: Store) -> Result<Self> {
        let reserved = match store.get(Cf::Global, COUNTER_KEY)? {
            Some(bytes) => keys::parse_u64_be(&bytes)
                .ok_or_else(|| Error::internal("corrupt short id counter"))?,
            None => 0,
        };
        Ok(Self {
            store,
            lock: Mutex::new(Reservation {
                next: reserved + 1,
                reserved_until: reserved,
            }),
            event_ids: Cache::new(CACHED),
            state_keys: Cache::new(CACHED),
            events_by_id: Cache::new(CACHED),
            state_keys_by_id: Cache::new(CACHED),
        })
    }

    /// What the four caches take (see [`crate::service::cache_memory`]).
    pub fn cache_bytes(&self) -> u64 {
        use crate::service::cache_memory::cache_bytes;
        cache_bytes(&self.event_ids)
            + cache_bytes(&self.state_keys)
            + cache_bytes(&self.events_by_id)
            + cache_bytes(&self.state_keys_by_id)
    }

    /// A fresh id; the caller holds the allocation lock.
    fn allocate(&self, reservation: &mut Reservation) -> Result<u64> {
        if reservation.next > reservation.reserved_until {
            let until = reservation.reserved_until + BLOCK;
            let mut batch = Batch::new();
            batch.put(Cf::Global, COUNTER_KEY, keys::u64_be(until));
            self.store.write_without_waiting(batch)?;
            reservation.reserved_until = until;
        }
        let id = reservation.next;
        reservation.next += 1;
        Ok(id)
    }

    /// A fresh id for something that has no other key (a new state snapshot).
    pub fn next_id(&self) -> Result<u64> {
        let mut reservation = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.allocate(&mut reservation)
    }

    /// The cache of a forward column family.
    fn cache(&self, forward: Cf) -> &Cache<Vec<u8>, u64> {
        match forward {
            Cf::EventIdShort => &self.event_ids,
            _ => &self.state_keys,
        }
    }

    fn get_or_create(&self, forward: Cf, reverse: Cf, key: &[u8]) -> Result<u64> {
        if let Some(id) = self.get(forward, key)? {
            return Ok(id);
        }
        let mut reservation = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // Someone may have created it while we waited for the lock.
        if let Some(id) = self.get(forward, key)? {
            return Ok(id);
        }
        let id = self.allocate(&mut reservation)?;
        let mut batch = Batch::new();
        batch.put(forward, key.to_vec(), keys::u64_be(id));
        batch.put(reverse, keys::u64_be(id), key.to_vec());
        self.store.write_without_waiting(batch)?;
        self.cache(forward).insert(key.to_vec(), id);
        Ok(id)
    }

    fn get(&self, forward: Cf, key: &[u8]) -> Result<Option<u64>> {
        let cache = self.cache(forward);
        if let Some(id) = cache.get(key) {
            return Ok(Some(id));
        }
        let Some(bytes) = self.store.get(forward, key)? else {
            return Ok(None);
        };
        let id = keys::parse_u64_be(&bytes).ok_or_else(|| Error::internal("corrupt short id"))?;
        cache.insert(key.to_vec(), id);
        Ok(Some(id))
    }

    pub fn event(&self, event_id: &str) -> Result<u64> {
        self.get_or_create(Cf::EventIdShort, Cf::ShortEventId, event_id.as_bytes())
    }

    pub fn existing_event(&self, event_id: &str) -> Result<Option<u64>> {
        self.get(Cf::EventIdShort, event_id.as_bytes())
    }

    pub fn event_id(&self, short: u64) -> Result<Option<String>> {
        if let Some(id) = self.events_by_id.get(&short) {
            return Ok(Some(id.to_string()));
        }
        let Some(bytes) = self.store.get(Cf::ShortEventId, &keys::u64_be(short))? else {
            return Ok(None);
        };
        let id: Arc<str> = String::from_utf8_lossy(&bytes).into();
        self.events_by_id.insert(short, id.clone());
        Ok(Some(id.to_string()))
    }

    pub fn state_key(&self, event_type: &str, state_key: &str) -> Result<u64> {
        let key = keys::join([event_type.as_bytes(), state_key.as_bytes()]);
        self.get_or_create(Cf::StateKeyShort, Cf::ShortStateKey, &key)
    }

    pub fn existing_state_key(&self, event_type: &str, state_key: &str) -> Result<Option<u64>> {
        self.get(
            Cf::StateKeyShort,
            &keys::join([event_type.as_bytes(), state_key.as_bytes()]),
        )
    }

    /// `(event type, state key)` of a short state key.
    pub fn state_key_of(&self, short: u64) -> Result<Option<(String, String)>> {
        Ok(self.state_key_name(short)?.map(Arc::unwrap_or_clone))
    }

    /// [`Self::state_key_of`], shared: for readers that only look at it.
    pub fn state_key_name(&self, short: u64) -> Result<Option<Arc<(String, String)>>> {
        if let Some(name) = self.state_keys_by_id.get(&short) {
            return Ok(Some(name));
        }
        let Some(bytes) = self.store.get(Cf::ShortStateKey, &keys::u64_be(short))? else {
            return Ok(None);
        };
        let mut parts = keys::split(&bytes);
        let name = match (parts.next(), parts.next()) {
            (Some(kind), Some(key)) => Arc::new((
                String::from_utf8_lossy(kind).into_owned(),
                String::from_utf8_lossy(key).into_owned(),
            )),
            _ => return Err(Error::internal("corrupt short state key record")),
        };
        self.state_keys_by_id.insert(short, name.clone());
        Ok(Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    #[test]
    fn ids_are_stable_distinct_and_survive_restarts() {
        let dir = tempfile::TempDir::new().unwrap();
        let (event, member_alice, member_bob, next) = {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let short = ShortIds::load(store).unwrap();
            let event = short.event("$abc").unwrap();
            assert_eq!(
                short.event("$abc").unwrap(),
                event,
                "get-or-create is idempotent"
            );
            let alice = short.state_key("m.room.member", "@alice:x").unwrap();
            let bob = short.state_key("m.room.member", "@bob:x").unwrap();
            assert_ne!(alice, bob);
            assert_eq!(
                short.state_key_of(alice).unwrap(),
                Some(("m.room.member".into(), "@alice:x".into()))
            );
            assert_eq!(short.event_id(event).unwrap().as_deref(), Some("$abc"));
            assert_eq!(short.existing_event("$nope").unwrap(), None);
            (event, alice, bob, short.next_id().unwrap())
        };
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let short = ShortIds::load(store).unwrap();
        assert_eq!(short.event("$abc").unwrap(), event);
        assert_eq!(
            short
                .existing_state_key("m.room.member", "@alice:x")
                .unwrap(),
            Some(member_alice)
        );
        assert_eq!(
            short.state_key("m.room.member", "@bob:x").unwrap(),
            member_bob
        );
        // After a restart new ids never collide with ones handed out before.
        let fresh = short.next_id().unwrap();
        assert!(fresh > next && fresh > member_bob && fresh > event);
    }

    #[test]
    fn concurrent_creation_of_one_key_yields_one_id() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let short = std::sync::Arc::new(ShortIds::load(store).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let short = short.clone();
                std::thread::spawn(move || short.state_key("m.room.member", "@same:x").unwrap())
            })
            .collect();
        let ids: std::collections::HashSet<u64> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(ids.len(), 1);
    }
}
