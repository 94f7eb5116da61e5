//! Memtables written out once the writes go quiet.
//!
//! RocksDB keeps recent writes in memtables until they fill (a third of `memory_budget_mb`).
//! A small server writes in bursts — a bridge's backfill, a thousand rooms joined, an import —
//! and then sits quiet for hours with what the burst wrote still held in memory: 25 MiB after
//! a user's thousand rooms were made, on a server whose code and heap take 50 (BENCHMARKS.md,
//! "Memtables written out when the writes go quiet"), and a longer write-ahead log to replay at
//! the next start. Once the writes have stayed quiet for a few seconds, the memtables that hold
//! anything are flushed to table files, and their arena blocks go back to the system (glibc
//! maps blocks that large on their own: `cli::tune_allocator` fixes its mmap threshold).
//!
//! A busy server is not touched: RocksDB flushes it when its memtables fill, as before.

use std::{sync::atomic::Ordering, time::Duration};

use rocksdb::FlushOptions;

use super::Store;

/// How often the writes are looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// Seconds in a row with at most [`QUIET_BYTES_PER_TICK`] written that make a quiet spell.
const QUIET_TICKS: u32 = 5;
/// Writes this small do not break a quiet spell: presence, a sliding-sync connection's
/// position, a receipt now and then.
const QUIET_BYTES_PER_TICK: u64 = 16 * 1024;
/// Memtables holding less than this are left alone (flushing them would gain little and make
/// small table files for compaction to merge).
pub const FLUSH_FROM_BYTES: u64 = 4 << 20;
/// During a long quiet spell the memtables are looked at again this often (trickling writes
/// still add up).
const RECHECK_TICKS: u32 = 60;

/// Watches the bytes written to the store, one [`TICK`] at a time, for quiet spells.
#[derive(Debug)]
pub struct QuietSpells {
    last_written: u64,
    quiet_ticks: u32,
}

impl QuietSpells {
    pub fn new(store: &Store) -> Self {
        QuietSpells {
            last_written: store.written_bytes(),
            quiet_ticks: 0,
        }
    }

    /// Called once per [`TICK`] with the bytes written so far: true when the memtables should be
    /// looked at — a quiet spell has just begun, or has gone on another [`RECHECK_TICKS`].
    pub fn tick(&mut self, written: u64) -> bool {
        let new = written.saturating_sub(self.last_written);
        self.last_written = written;
        if new > QUIET_BYTES_PER_TICK {
            self.quiet_ticks = 0;
            return false;
        }
        self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        self.quiet_ticks >= QUIET_TICKS
            && (self.quiet_ticks - QUIET_TICKS).is_multiple_of(RECHECK_TICKS)
    }
}

impl Store {
    /// Bytes of every write batch applied since the store was opened.
    pub fn written_bytes(&self) -> u64 {
        self.inner.written_bytes.load(Ordering::Relaxed)
    }

    /// Bytes held by the memtables being written to (not those already being flushed).
    pub fn active_memtable_bytes(&self) -> u64 {
        self.families()
            .map(|family| self.memtable_property(family, "rocksdb.cur-size-active-mem-table"))
            .sum()
    }

    fn memtable_property(&self, family: &rocksdb::ColumnFamily, name: &str) -> u64 {
        self.inner
            .db
            .property_int_value_cf(family, name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Starts flushing the memtable of every column family that holds entries, without waiting
    /// for the table files; returns the memtable bytes handed over, or `None` when they were
    /// fewer than `at_least`.
    pub fn flush_memtables(&self, at_least: u64) -> Result<Option<u64>, rocksdb::Error> {
        let held = self.active_memtable_bytes();
        if held < at_least {
            return Ok(None);
        }
        let full: Vec<_> = self
            .families()
            .filter(|family| {
                self.memtable_property(family, "rocksdb.num-entries-active-mem-table") > 0
            })
            .collect();
        if full.is_empty() {
            return Ok(None);
        }
        let mut options = FlushOptions::default();
        options.set_wait(false);
        self.inner.db.flush_cfs_opt(&full, &options)?;
        Ok(Some(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, Cf, StoreOptions};

    #[test]
    fn a_quiet_spell_begins_after_five_quiet_seconds_and_is_looked_at_again_each_minute() {
        let mut spells = QuietSpells {
            last_written: 0,
            quiet_ticks: 0,
        };
        let mut written = 0;
        // A burst: no tick is quiet.
        for _ in 0..10 {
            written += 1 << 20;
            assert!(!spells.tick(written));
        }
        // Small writes only: the fifth such second starts the spell.
        let looked: Vec<bool> = (0..5)
            .map(|_| {
                written += 1000;
                spells.tick(written)
            })
            .collect();
        assert_eq!(looked, [false, false, false, false, true]);
        let again = (0..RECHECK_TICKS)
            .map(|_| spells.tick(written))
            .collect::<Vec<_>>();
        assert_eq!(again.iter().filter(|&&b| b).count(), 1);
        assert!(again[RECHECK_TICKS as usize - 1]);
        // A write bigger than a quiet second's ends the spell.
        written += QUIET_BYTES_PER_TICK + 1;
        assert!(!spells.tick(written));
        assert!(!spells.tick(written));
    }

    #[test]
    fn flushing_empties_the_memtables_that_held_writes_and_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let before = store.written_bytes();
        let mut batch = Batch::new();
        for i in 0u32..2000 {
            batch.put(Cf::Pdus, i.to_be_bytes(), [7u8; 1024]);
            batch.put(Cf::EventIdShort, format!("$e{i}"), i.to_be_bytes());
            batch.put(Cf::Users, format!("@u{i}"), [9u8; 64]);
        }
        store.write(batch).unwrap();
        assert!(store.written_bytes() - before > 2000 * 1024);
        assert_eq!(store.flush_memtables(FLUSH_FROM_BYTES * 100).unwrap(), None);
        let held = store
            .flush_memtables(FLUSH_FROM_BYTES / 4)
            .unwrap()
            .unwrap();
        assert!(held > 2000 * 1024, "{held}");
        // The flush runs in the background: wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.active_memtable_bytes()
            > 64 * 1024 * super::super::shared::families().count() as u64
        {
            assert!(
                std::time::Instant::now() < deadline,
                "memtables not flushed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            store.get(Cf::Pdus, &1999u32.to_be_bytes()).unwrap(),
            Some(vec![7u8; 1024])
        );
        assert_eq!(
            store.get(Cf::Users, b"@u1999").unwrap(),
            Some(vec![9u8; 64])
        );
        assert!(store.flush_memtables(FLUSH_FROM_BYTES).unwrap().is_none());
    }
}
