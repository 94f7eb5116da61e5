//! Short ids: a u64 for each event ID, each `(event type, state key)` pair and each distinct
//! state, so that states are compact sorted arrays of `(short state key, short event id)`.
//!
//! Ids come from one counter reserved in blocks: a block is recorded on disk before any id in
//! it is handed out, so a restart (or a crash) never hands out an id twice; the unused rest of a
//! block is skipped. Get-or-create is serialised and written at once, so the same key can never
//! get two ids, even from two rooms at the same moment. A mapping written for an event that was
//! then refused is harmless: it is never referenced.

use std::sync::Mutex;

use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
};

const COUNTER_KEY: &[u8] = b"shortid_reserved";
const BLOCK: u64 = 1024;

struct Reservation {
    next: u64,
    reserved_until: u64,
}

pub struct ShortIds {
    store: Store,
    /// Held while allocating and writing a new mapping.
    lock: Mutex<Reservation>,
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
        })
    }

    /// A fresh id; the caller holds the allocation lock.
    fn allocate(&self, reservation: &mut Reservation) -> Result<u64> {
        if reservation.next > reservation.reserved_until {
            let until = reservation.reserved_until + BLOCK;
            self.store
                .put(Cf::Global, COUNTER_KEY, &keys::u64_be(until))?;
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

    fn get_or_create(&self, forward: Cf, reverse: Cf, key: &[u8]) -> Result<u64> {
        if let Some(id) = self.store.get(forward, key)? {
            return keys::parse_u64_be(&id).ok_or_else(|| Error::internal("corrupt short id"));
        }
        let mut reservation = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // Someone may have created it while we waited for the lock.
        if let Some(id) = self.store.get(forward, key)? {
            return keys::parse_u64_be(&id).ok_or_else(|| Error::internal("corrupt short id"));
        }
        let id = self.allocate(&mut reservation)?;
        let mut batch = Batch::new();
        batch.put(forward, key.to_vec(), keys::u64_be(id));
        batch.put(reverse, keys::u64_be(id), key.to_vec());
        self.store.write(batch)?;
        Ok(id)
    }

    fn get(&self, forward: Cf, key: &[u8]) -> Result<Option<u64>> {
        self.store
            .get(forward, key)?
            .map(|id| keys::parse_u64_be(&id).ok_or_else(|| Error::internal("corrupt short id")))
            .transpose()
    }

    pub fn event(&self, event_id: &str) -> Result<u64> {
        self.get_or_create(Cf::EventIdShort, Cf::ShortEventId, event_id.as_bytes())
    }

    pub fn existing_event(&self, event_id: &str) -> Result<Option<u64>> {
        self.get(Cf::EventIdShort, event_id.as_bytes())
    }

    pub fn event_id(&self, short: u64) -> Result<Option<String>> {
        Ok(self
            .store
            .get(Cf::ShortEventId, &keys::u64_be(short))?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
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
        let Some(bytes) = self.store.get(Cf::ShortStateKey, &keys::u64_be(short))? else {
            return Ok(None);
        };
        let mut parts = keys::split(&bytes);
        match (parts.next(), parts.next()) {
            (Some(kind), Some(key)) => Ok(Some((
                String::from_utf8_lossy(kind).into_owned(),
                String::from_utf8_lossy(key).into_owned(),
            ))),
            _ => Err(Error::internal("corrupt short state key record")),
        }
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
