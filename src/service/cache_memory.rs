//! What culvert's own caches hold, in bytes. Every cache is bounded — by entries or by a
//! weight — but some fill slowly: state snapshots, member events and display names accumulate
//! as members come and go and rename themselves, and a day-long memory graph cannot tell such a
//! cache filling towards its bound from a leak unless the cache's size is reported beside it,
//! as RocksDB reports its block cache. The figures are estimates: each cache's own tables plus
//! the heap its keys and values point to, without the allocator's rounding.

use std::{
    collections::{BTreeMap, HashSet},
    hash::{BuildHasher, Hash},
    mem::size_of,
    sync::Arc,
};

use quick_cache::{Lifecycle, Weighter, sync::Cache};
use ruma::{CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId};

use super::rooms::{event::Pdu, timeline::StoredPdu};

/// Heap memory a value points to (not its own size).
pub trait HeapSize {
    fn heap_bytes(&self) -> usize;
}

/// A cache's tables and the heap of the entries in it now.
pub fn cache_bytes<K, V, W, B, L>(cache: &Cache<K, V, W, B, L>) -> u64
where
    K: Eq + Hash + Clone + HeapSize,
    V: Clone + HeapSize,
    W: Weighter<K, V> + Clone,
    B: BuildHasher + Clone,
    L: Lifecycle<K, V> + Clone,
{
    let heap: usize = cache
        .iter()
        .map(|(key, value)| key.heap_bytes() + value.heap_bytes())
        .sum();
    (cache.memory_used().total() + heap) as u64
}

macro_rules! no_heap {
    ($($t:ty),*) => { $(impl HeapSize for $t { fn heap_bytes(&self) -> usize { 0 } })* };
}
no_heap!(u8, u64, bool);

impl HeapSize for String {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl HeapSize for Arc<str> {
    fn heap_bytes(&self) -> usize {
        // The strong and weak counts, then the text.
        2 * size_of::<usize>() + self.len()
    }
}

macro_rules! ruma_id {
    ($($t:ty),*) => { $(impl HeapSize for $t { fn heap_bytes(&self) -> usize { self.as_str().len() } })* };
}
ruma_id!(OwnedEventId, OwnedRoomId, OwnedUserId);

impl<T: HeapSize> HeapSize for Option<T> {
    fn heap_bytes(&self) -> usize {
        self.as_ref().map_or(0, HeapSize::heap_bytes)
    }
}

impl<A: HeapSize, B: HeapSize> HeapSize for (A, B) {
    fn heap_bytes(&self) -> usize {
        self.0.heap_bytes() + self.1.heap_bytes()
    }
}

impl<T: HeapSize> HeapSize for Vec<T> {
    fn heap_bytes(&self) -> usize {
        self.capacity() * size_of::<T>() + self.iter().map(HeapSize::heap_bytes).sum::<usize>()
    }
}

impl<T: HeapSize> HeapSize for Arc<T> {
    fn heap_bytes(&self) -> usize {
        2 * size_of::<usize>() + size_of::<T>() + T::heap_bytes(self)
    }
}

impl<T: HeapSize> HeapSize for HashSet<T> {
    fn heap_bytes(&self) -> usize {
        // A control byte per bucket beside each slot.
        self.capacity() * (size_of::<T>() + 1)
            + self.iter().map(HeapSize::heap_bytes).sum::<usize>()
    }
}

impl<V: HeapSize> HeapSize for BTreeMap<String, V> {
    fn heap_bytes(&self) -> usize {
        // Nodes of up to 11 entries, about two thirds full, each with a parent pointer and
        // two lengths.
        let entry = size_of::<String>() + size_of::<V>();
        let nodes = self.len().div_ceil(7);
        nodes * (11 * entry + 16)
            + self
                .iter()
                .map(|(key, value)| key.heap_bytes() + value.heap_bytes())
                .sum::<usize>()
    }
}

impl HeapSize for CanonicalJsonValue {
    fn heap_bytes(&self) -> usize {
        match self {
            CanonicalJsonValue::String(text) => text.heap_bytes(),
            CanonicalJsonValue::Array(items) => items.heap_bytes(),
            CanonicalJsonValue::Object(object) => object.heap_bytes(),
            _ => 0,
        }
    }
}

impl HeapSize for StoredPdu {
    fn heap_bytes(&self) -> usize {
        self.event_id.heap_bytes()
            + self.pdu.heap_bytes()
            + self.sent_by.as_ref().map_or(0, |sent| {
                size_of_val(sent) + sent.device_id.as_str().len() + sent.txn_id.heap_bytes()
            })
    }
}

impl HeapSize for Pdu {
    fn heap_bytes(&self) -> usize {
        // (A custom event type's name is left out: the auth rules cache state events of the
        // spec's types.)
        self.event_id.heap_bytes()
            + self.room_id.heap_bytes()
            + self.sender.heap_bytes()
            + self.content.get().len()
            + self.state_key.heap_bytes()
            + self.prev_events.heap_bytes()
            + self.auth_events.heap_bytes()
            + self.redacts.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_reports_its_entries_heap_and_less_when_emptied() {
        let cache: Cache<u64, Arc<str>> = Cache::new(64);
        let empty = cache_bytes(&cache);
        for n in 0..32 {
            cache.insert(n, Arc::from("x".repeat(1000)));
        }
        let full = cache_bytes(&cache);
        assert!(full >= empty + 32 * 1000, "{empty} -> {full}");
        cache.clear();
        assert!(cache_bytes(&cache) + 32 * 1000 <= full);
    }

    #[test]
    fn json_counts_its_strings_and_containers() {
        let value: CanonicalJsonValue = serde_json::from_value(serde_json::json!({
            "body": "y".repeat(500),
            "list": ["a", "b"],
        }))
        .unwrap();
        let bytes = value.heap_bytes();
        assert!(
            bytes >= 500 + 2 * size_of::<CanonicalJsonValue>(),
            "{bytes}"
        );
        assert!(bytes < 4096, "{bytes}");
    }
}
