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
/// a finished fsync covers. Blocking waiters sleep on the condition variable, async ones on the
/// watch channel (so that a request waiting for the disk leaves its worker thread to others).
pub(super) struct GroupSync {
    state: Mutex<GroupState>,
    changed: Condvar,
    synced: tokio::sync::watch::Sender<u64>,
}

impl Default for GroupSync {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changed: Condvar::new(),
            synced: tokio::sync::watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct GroupState {
    written: u64,
    synced: u64,
    syncing: bool,
}

/// What a waiter does next.
enum Step {
    Done,
    /// Wait for the fsync under way.
    Wait,
    /// Lead the next fsync, which covers the writes numbered up to this.
    Lead(u64),
}

impl GroupSync {
    /// Numbers a write that has just returned from RocksDB.
    pub(super) fn ticket(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.written += 1;
        state.written
    }

    fn next_step(&self, ticket: u64) -> Step {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.synced >= ticket {
            Step::Done
        } else if state.syncing {
            Step::Wait
        } else {
            state.syncing = true;
            Step::Lead(state.written)
        }
    }

    /// Records the end of an fsync that covered writes up to `covers`, and wakes the waiters.
    fn finished(&self, covers: u64, ok: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.syncing = false;
        if ok {
            state.synced = state.synced.max(covers);
        }
        let synced = state.synced;
        drop(state);
        self.changed.notify_all();
        self.synced.send_replace(synced);
    }

    /// Returns once an fsync of the log that began after write `ticket` finished has ended.
    pub(super) fn wait(&self, db: &DB, ticket: u64) -> Result<(), rocksdb::Error> {
        loop {
            match self.next_step(ticket) {
                Step::Done => return Ok(()),
                Step::Wait => {
                    let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    if state.syncing && state.synced < ticket {
                        drop(self.changed.wait(state).unwrap_or_else(|p| p.into_inner()));
                    }
                }
                Step::Lead(covers) => {
                    let result = db.flush_wal(true);
                    self.finished(covers, result.is_ok());
                    result?;
                }
            }
        }
    }

    /// [`GroupSync::wait`] for async callers: the fsync runs on a blocking thread, and waiting
    /// for another's holds no worker thread.
    pub(super) async fn wait_async(
        &self,
        store: &super::Store,
        ticket: u64,
    ) -> Result<(), rocksdb::Error> {
        let mut synced = self.synced.subscribe();
        loop {
            match self.next_step(ticket) {
                Step::Done => return Ok(()),
                Step::Wait => {
                    // Every fsync finished since the subscription (or since the last wake-up)
                    // wakes this; the state is then read again.
                    let _ = synced.changed().await;
                }
                Step::Lead(covers) => {
                    // The fsync and its bookkeeping run on their own, to the end, even if this
                    // request is dropped meanwhile (its client went away): the waiters of the
                    // group are not left waiting for a leader that is gone.
                    let store = store.clone();
                    let fsync = tokio::task::spawn_blocking(move || {
                        let result = store.inner.db.flush_wal(true);
                        store.inner.group.finished(covers, result.is_ok());
                        result
                    });
                    fsync
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{Batch, Cf, Store, StoreOptions};

    fn store(dir: &tempfile::TempDir) -> Store {
        let options = StoreOptions {
            durability: Durability::Group,
            ..StoreOptions::default()
        };
        Store::open(dir.path(), &options).unwrap()
    }

    fn synced_and_written(store: &Store) -> (u64, u64) {
        let state = store.inner.group.state.lock().unwrap();
        (state.synced, state.written)
    }

    #[test]
    fn concurrent_blocking_writers_all_return_synced() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = store(&dir);
        let (_, before) = synced_and_written(&store);
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for n in 0..50u8 {
                        let mut batch = Batch::new();
                        batch.put(Cf::Global, [b'g', t, n], b"x");
                        store.write(batch).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let (synced, written) = synced_and_written(&store);
        assert_eq!(written, before + 400);
        assert_eq!(
            synced, written,
            "every write waited for an fsync covering it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_writers_share_fsyncs_and_all_return_synced() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Arc::new(store(&dir));
        let (_, before) = synced_and_written(&store);
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..32u8 {
            let store = store.clone();
            tasks.spawn(async move {
                for n in 0..20u8 {
                    let mut batch = Batch::new();
                    batch.put(Cf::Global, [b'a', t, n], b"x");
                    let pending = store.write_pending(batch).unwrap();
                    store.make_durable_async(pending).await.unwrap();
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let (synced, written) = synced_and_written(&store);
        assert_eq!((synced, written), (before + 640, before + 640));
    }

    #[test]
    fn other_settings_wait_for_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        for durability in [Durability::Process, Durability::Each] {
            let options = StoreOptions {
                durability,
                ..StoreOptions::default()
            };
            let store = Store::open(&dir.path().join(format!("{durability:?}")), &options).unwrap();
            let mut batch = Batch::new();
            batch.put(Cf::Global, b"k", b"v");
            let pending = store.write_pending(batch).unwrap();
            assert!(pending.0.is_none());
            store.make_durable(pending).unwrap();
        }
    }
}
