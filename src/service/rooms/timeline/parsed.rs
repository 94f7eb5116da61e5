//! Recently read events, kept parsed. A room list, a sync or a page of history reads the same
//! state events and latest messages again and again, and turning their stored JSON back into
//! objects cost more than reading it (a sliding-sync room list spent a fifth of its time so).
//!
//! A stored event changes only when it is rewritten (redacted, or an outlier's copy replaced):
//! the store tells this cache of every write to `pdus` once the write is visible, and the
//! entry goes. A reader that read the old bytes just before such a write could put them back
//! afterwards; so each reader notes the write counter of its key's stripe before reading and
//! takes its entry out again if a write to that stripe came in between.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::StoredPdu;
use crate::store::keys;

/// Events parsed and kept when `pdu_cache_capacity` is not configured.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Larger events are not kept: a few huge ones would otherwise hold megabytes.
const LARGEST_KEPT: usize = 8 * 1024;
/// Write counters: a write makes readers of 1 in this many keys drop what they just read.
const STRIPES: usize = 64;

pub(super) struct ParsedPdus {
    cache: quick_cache::sync::Cache<u64, Arc<StoredPdu>>,
    writes: [AtomicU64; STRIPES],
}

/// What a reader saw of the write counter before reading (see [`ParsedPdus::before_read`]).
pub(super) struct ReadTicket(u64);

impl ParsedPdus {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
            writes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn stripe(&self, short: u64) -> &AtomicU64 {
        &self.writes[(short % STRIPES as u64) as usize]
    }

    pub(super) fn get(&self, short: u64) -> Option<Arc<StoredPdu>> {
        self.cache.get(&short)
    }

    /// To call before reading the event from the store.
    pub(super) fn before_read(&self, short: u64) -> ReadTicket {
        ReadTicket(self.stripe(short).load(Ordering::SeqCst))
    }

    /// Keeps an event read from the store (`bytes` long), unless it was rewritten meanwhile.
    pub(super) fn keep(
        &self,
        short: u64,
        stored: &Arc<StoredPdu>,
        bytes: usize,
        ticket: ReadTicket,
    ) {
        if bytes > LARGEST_KEPT {
            return;
        }
        self.cache.insert(short, stored.clone());
        // A write since the read may have happened before the insert, its removal finding
        // nothing: this reader's copy may be the old one.
        if self.stripe(short).load(Ordering::SeqCst) != ticket.0 {
            self.cache.remove(&short);
        }
    }

    /// What the kept events take (see [`crate::service::cache_memory`]).
    pub(super) fn bytes(&self) -> u64 {
        crate::service::cache_memory::cache_bytes(&self.cache)
    }

    /// The store wrote `key` of `pdus` (see [`crate::store::WriteWatcher`]).
    pub(super) fn written(&self, key: &[u8]) {
        let Some(short) = keys::parse_u64_be(key) else {
            return;
        };
        self.stripe(short).fetch_add(1, Ordering::SeqCst);
        self.cache.remove(&short);
    }
}

#[cfg(test)]
mod tests {
    use ruma::{CanonicalJsonObject, owned_event_id};

    use super::*;

    fn stored() -> Arc<StoredPdu> {
        Arc::new(StoredPdu::new(
            owned_event_id!("$a:x"),
            CanonicalJsonObject::new(),
        ))
    }

    #[test]
    fn a_write_removes_the_entry_and_a_racing_reader_keeps_nothing() {
        let parsed = ParsedPdus::new(16);
        let ticket = parsed.before_read(7);
        parsed.keep(7, &stored(), 100, ticket);
        assert!(parsed.get(7).is_some(), "kept when nothing was written");
        parsed.written(&keys::u64_be(7));
        assert!(parsed.get(7).is_none(), "a write removes the entry");

        // A reader read the old bytes, then the rewrite landed, then the reader keeps its copy.
        let ticket = parsed.before_read(7);
        parsed.written(&keys::u64_be(7));
        parsed.keep(7, &stored(), 100, ticket);
        assert!(
            parsed.get(7).is_none(),
            "the racing reader's old copy is not kept"
        );

        let ticket = parsed.before_read(8);
        parsed.keep(8, &stored(), LARGEST_KEPT + 1, ticket);
        assert!(parsed.get(8).is_none(), "large events are not kept");
    }
}
