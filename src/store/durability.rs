//! When a write that returned is safe, and group commit.
//!
//! Every write goes through RocksDB's write-ahead log. Returned from `write`, it is in the
//! operating system's page cache: it survives the process being killed, not a power cut —
//! unless the log was fsynced. Three settings (`durability` in the config):
//! - `process`: no fsync. A power cut loses the last seconds of acknowledged writes.
//! - `each`: every write fsyncs the log before it returns (RocksDB's `sync` write option).
//!   Writes made one after another (every event: they commit under one stream lock) pay a
//!   full fsync each.
//! - `group`: a write returns once a log fsync made after it has finished. The first writer
//!   to wait starts one; writers arriving meanwhile wait for the next, which covers all of
//!   them: one fsync per group of concurrent writers, however many there are. Events commit
//!   under the stream lock unsynced and wait after releasing it, so they group too.

use std::sync::{Condvar, Mutex};

use rocksdb::DB;
use serde::Deserialize;

/// When a write that returned survives a crash of the machine (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Survives the process being killed; the last acknowledged writes may be lost to a power
    /// cut.
    Process,
    /// Survives a power cut: each write fsyncs the log.
    Each,
    /// Survives a power cut: writes wait for a shared fsync of the log.
    #[default]
    Group,
}

/// A write made with [`Durability::Group`] that is not yet known to be on disk: wait for it
/// with `Store::make_durable` before acknowledging what it wrote.
#[must_use = "a pending write must be made durable before it is acknowledged"]
pub struct Pending(pub(super) Option<u64>);

/// The group-commit state: writes are numbered as they finish; `synced` is the highest number
/// a finished fsync covers.
#[derive(Default)]
pub(super) struct GroupSync {
    state: Mutex<GroupState>,
    changed: Condvar,
}

#[derive(Default)]
struct GroupState {
    written: u64,
    synced: u64,
    syncing: bool,
}

impl GroupSync {
    /// Numbers a write that has just returned from RocksDB.
    pub(super) fn ticket(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.written += 1;
        state.written
    }

    /// Returns once an fsync of the log that began after write `ticket` finished has ended.
    pub(super) fn wait(&self, db: &DB, ticket: u64) -> Result<(), rocksdb::Error> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if state.syncing {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead the next fsync: it covers every write numbered so far.
            state.syncing = true;
            let covers = state.written;
            drop(state);
            let result = db.flush_wal(true);
            state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.syncing = false;
            if result.is_ok() {
                state.synced = state.synced.max(covers);
            }
            self.changed.notify_all();
            result?;
        }
    }
}
