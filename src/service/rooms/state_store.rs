//! State snapshots, stored as deltas against a parent snapshot.
//!
//! A state is a sorted array of `(short state key, short event id)` entries (see `short`). Each
//! distinct state gets a short state hash; identical states (every message event leaves the
//! state as it was) share one. A snapshot is stored as what it adds to and removes from its
//! parent; loading walks to the root and applies the deltas. Chains are cut (a full snapshot is
//! stored) once they reach [`MAX_CHAIN`] deltas or a delta would be larger than half the state,
//! so a load reads at most `MAX_CHAIN` records.

use std::{collections::BTreeMap, sync::Arc};

use super::short::ShortIds;
use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
    utils,
};

/// `(short state key, short event id)`.
pub type StateEntry = (u64, u64);

/// Deltas in a chain before a full snapshot is stored again.
pub const MAX_CHAIN: u32 = 16;

/// State entries the snapshot cache holds at most (16 bytes each, so about 2 MiB).
const CACHE_ENTRIES: u64 = 128 * 1024;

/// Weighs a cached snapshot by its number of entries.
#[derive(Clone)]
struct EntriesWeighter;

impl quick_cache::Weighter<u64, Arc<Vec<StateEntry>>> for EntriesWeighter {
    fn weight(&self, _id: &u64, state: &Arc<Vec<StateEntry>>) -> u64 {
        state.len().max(1) as u64
    }
}

struct Record {
    parent: u64,
    depth: u32,
    added: Vec<StateEntry>,
    removed: Vec<StateEntry>,
}

fn encode_entries(out: &mut Vec<u8>, entries: &[StateEntry]) {
    for (key, event) in entries {
        out.extend_from_slice(&keys::u64_be(*key));
        out.extend_from_slice(&keys::u64_be(*event));
    }
}

fn decode_entries(bytes: &[u8]) -> Result<Vec<StateEntry>> {
    if !bytes.len().is_multiple_of(16) {
        return Err(Error::internal("corrupt state delta"));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let key = keys::parse_u64_be(&c[..8]).expect("8 bytes");
            let event = keys::parse_u64_be(&c[8..]).expect("8 bytes");
            (key, event)
        })
        .collect())
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 16 * (self.added.len() + self.removed.len()));
        out.extend_from_slice(&keys::u64_be(self.parent));
        out.extend_from_slice(&self.depth.to_be_bytes());
        out.extend_from_slice(&(self.added.len() as u32).to_be_bytes());
        encode_entries(&mut out, &self.added);
        encode_entries(&mut out, &self.removed);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::internal("corrupt state delta");
        if bytes.len() < 16 {
            return Err(corrupt());
        }
        let parent = keys::parse_u64_be(&bytes[..8]).ok_or_else(corrupt)?;
        let depth = u32::from_be_bytes(bytes[8..12].try_into().map_err(|_| corrupt())?);
        let n_added = u32::from_be_bytes(bytes[12..16].try_into().map_err(|_| corrupt())?) as usize;
        let split = 16 + 16 * n_added;
        if bytes.len() < split {
            return Err(corrupt());
        }
        Ok(Record {
            parent,
            depth,
            added: decode_entries(&bytes[16..split])?,
            removed: decode_entries(&bytes[split..])?,
        })
    }
}

pub struct StateStore {
    store: Store,
    /// Recently loaded or saved snapshots. A snapshot never changes once written, so the cache
    /// is never stale; it spares the walk down the delta chain on the hot paths (every append
    /// loads the current state, every history-visibility check the state before an event).
    cache: quick_cache::sync::Cache<u64, Arc<Vec<StateEntry>>, EntriesWeighter>,
}

impl StateStore {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: quick_cache::sync::Cache::with_weighter(4096, CACHE_ENTRIES, EntriesWeighter),
        }
    }

    fn record(&self, id: u64) -> Result<Record> {
        let bytes = self
            .store
            .get(Cf::StateDiff, &keys::u64_be(id))?
            .ok_or_else(|| Error::internal(format!("missing state snapshot {id}")))?;
        Record::decode(&bytes)
    }

    /// What the cached snapshots take (see [`crate::service::cache_memory`]).
    pub fn cache_bytes(&self) -> u64 {
        crate::service::cache_memory::cache_bytes(&self.cache)
    }

    /// The full state of snapshot `id`, sorted by short state key.
    pub fn load(&self, id: u64) -> Result<Vec<StateEntry>> {
        if let Some(state) = self.cache.get(&id) {
            return Ok(state.as_ref().clone());
        }
        let state = self.load_uncached(id)?;
        self.cache.insert(id, Arc::new(state.clone()));
        Ok(state)
    }

    fn load_uncached(&self, id: u64) -> Result<Vec<StateEntry>> {
        let mut chain = vec![self.record(id)?];
        while chain.last().expect("non-empty").parent != 0 {
            let parent = chain.last().expect("non-empty").parent;
            chain.push(self.record(parent)?);
        }
        let mut state = BTreeMap::new();
        for record in chain.iter().rev() {
            for (key, event) in &record.removed {
                if state.get(key) == Some(event) {
                    state.remove(key);
                }
            }
            state.extend(record.added.iter().copied());
        }
        Ok(state.into_iter().collect())
    }

    /// Stores `state` (sorted by short state key, one entry per key), as a delta against
    /// `parent` (its id and its entries, which the caller has already loaded) where that pays,
    /// and returns its short state hash. Saving a state that already exists returns the existing
    /// id and writes nothing.
    pub fn save(
        &self,
        short: &ShortIds,
        parent: Option<(u64, &[StateEntry])>,
        state: &[StateEntry],
    ) -> Result<u64> {
        debug_assert!(
            state.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, unique keys"
        );
        let mut bytes = Vec::with_capacity(16 * state.len());
        encode_entries(&mut bytes, state);
        let hash = utils::sha256(&bytes);
        if let Some(id) = self.store.get(Cf::StateHashShort, &hash)? {
            return keys::parse_u64_be(&id).ok_or_else(|| Error::internal("corrupt state hash"));
        }

        let full = || Record {
            parent: 0,
            depth: 0,
            added: state.to_vec(),
            removed: Vec::new(),
        };
        let record = match parent {
            None => full(),
            Some((parent_id, parent_state)) => {
                let parent_record = self.record(parent_id)?;
                let (added, removed) = diff(parent_state, state);
                if parent_record.depth + 1 >= MAX_CHAIN
                    || added.len() + removed.len() > state.len() / 2 + 1
                {
                    full()
                } else {
                    Record {
                        parent: parent_id,
                        depth: parent_record.depth + 1,
                        added,
                        removed,
                    }
                }
            }
        };
        let id = short.next_id()?;
        let mut batch = Batch::new();
        batch.put(Cf::StateHashShort, hash.to_vec(), keys::u64_be(id));
        batch.put(Cf::StateDiff, keys::u64_be(id), record.encode());
        // Durable with the event that moves a room to this state (written after it).
        self.store.write_without_waiting(batch)?;
        self.cache.insert(id, Arc::new(state.to_vec()));
        Ok(id)
    }
}

/// What `to` adds to and removes from `from` (both sorted by key).
fn diff(from: &[StateEntry], to: &[StateEntry]) -> (Vec<StateEntry>, Vec<StateEntry>) {
    let from_map: BTreeMap<u64, u64> = from.iter().copied().collect();
    let to_map: BTreeMap<u64, u64> = to.iter().copied().collect();
    let added = to
        .iter()
        .filter(|(k, e)| from_map.get(k) != Some(e))
        .copied()
        .collect();
    let removed = from
        .iter()
        .filter(|(k, e)| to_map.get(k) != Some(e))
        .copied()
        .collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn stores() -> (tempfile::TempDir, StateStore, ShortIds) {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let short = ShortIds::load(store.clone()).unwrap();
        (dir, StateStore::new(store), short)
    }

    #[test]
    fn snapshots_round_trip_through_deltas() {
        let (_dir, states, short) = stores();
        let root: Vec<StateEntry> = (1..=20).map(|k| (k, 100 + k)).collect();
        let root_id = states.save(&short, None, &root).unwrap();
        assert_eq!(states.load_uncached(root_id).unwrap(), root);

        // Change one entry, add one, remove one.
        let mut child = root.clone();
        child[3].1 = 999;
        child.push((21, 121));
        child.retain(|(k, _)| *k != 7);
        let child_id = states.save(&short, Some((root_id, &root)), &child).unwrap();
        assert_eq!(states.load_uncached(child_id).unwrap(), child);
        assert_eq!(
            states.record(child_id).unwrap().parent,
            root_id,
            "stored as a delta"
        );
        assert_eq!(states.record(child_id).unwrap().added.len(), 2);
        assert_eq!(
            states.load_uncached(root_id).unwrap(),
            root,
            "the parent is untouched"
        );

        // The same state again is the same snapshot.
        assert_eq!(
            states
                .save(&short, Some((child_id, &child)), &child)
                .unwrap(),
            child_id
        );
        assert_eq!(states.save(&short, None, &root).unwrap(), root_id);
    }

    #[test]
    fn long_chains_are_cut_and_still_load() {
        let (_dir, states, short) = stores();
        let mut state: Vec<StateEntry> = (1..=50).map(|k| (k, k)).collect();
        let mut id = states.save(&short, None, &state).unwrap();
        for step in 0..100u64 {
            let parent = state.clone();
            state[(step % 50) as usize].1 = 1000 + step;
            id = states.save(&short, Some((id, &parent)), &state).unwrap();
            assert!(states.record(id).unwrap().depth < MAX_CHAIN);
            assert_eq!(states.load_uncached(id).unwrap(), state, "step {step}");
        }
    }

    #[test]
    fn loads_after_the_first_come_from_the_cache() {
        let (_dir, states, short) = stores();
        let root: Vec<StateEntry> = (1..=20).map(|k| (k, k)).collect();
        let id = states.save(&short, None, &root).unwrap();
        // A fresh store instance has an empty cache: the first load reads, the second does not.
        let fresh = StateStore::new(states.store.clone());
        let before = fresh.store.read_stats();
        assert_eq!(fresh.load(id).unwrap(), root);
        let first = fresh.store.read_stats() - before;
        assert_eq!(first.point_reads, 1);
        assert_eq!(fresh.load(id).unwrap(), root);
        assert_eq!(fresh.store.read_stats() - before, first);
    }

    #[test]
    fn a_mostly_new_state_is_stored_whole() {
        let (_dir, states, short) = stores();
        let a: Vec<StateEntry> = (1..=10).map(|k| (k, k)).collect();
        let b: Vec<StateEntry> = (11..=20).map(|k| (k, k)).collect();
        let a_id = states.save(&short, None, &a).unwrap();
        let b_id = states.save(&short, Some((a_id, &a)), &b).unwrap();
        assert_eq!(states.record(b_id).unwrap().parent, 0);
        assert_eq!(states.load_uncached(b_id).unwrap(), b);
        let empty = states.save(&short, Some((a_id, &a)), &[]).unwrap();
        assert_eq!(states.load_uncached(empty).unwrap(), vec![]);
    }
}
