//! Prometheus metrics: what an operator watches on a running server. Counts of things that
//! happen (requests and their latency, events, sync answers, transactions, pushes) are kept
//! here and bumped where they happen — a few atomic adds, so they are always kept; figures
//! that describe state (queue depths, RocksDB, memory) are read only when a scrape asks.
//!
//! No label carries user data: a request's endpoint is its route template
//! (`/_matrix/client/v3/rooms/{room_id}/send/…`), never its path, and nothing is labelled by
//! user, room, server or token. The metrics are served on their own listener (see
//! `api::metrics`), off by default.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::{Services, rooms::timeline::pipeline};
use crate::{
    Result,
    store::{Batch, Cf},
};

/// A queue (or the accounts) is counted up to this many entries at a scrape (more show as
/// this).
const QUEUE_COUNT_LIMIT: usize = 1_000_000;

/// A request's route template (what the router matched), or `unmatched`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Endpoint(pub Arc<str>);

impl EncodeLabelValue for Endpoint {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: Endpoint,
    method: &'static str,
    status: u16,
}

/// Which sync API a long-poll or an answer belongs to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SyncApi {
    sync,
    sliding_sync,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: SyncApi,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

/// How an attempt to deliver something (a transaction, a push) ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    sent,
    failed,
    /// The push gateway refused the pushkey (the pusher is removed).
    rejected,
    /// Failing for a day: dropped.
    given_up,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

type RequestHistograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 0.5 ms to ~60 s (long-polls land at the top).
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

/// The counters kept while the server runs.
pub struct Metrics {
    requests: RequestHistograms,
    long_polls: Family<ApiLabels, Gauge>,
    sync_responses: Family<ApiLabels, Counter>,
    events: Family<OriginLabels, Counter>,
    federation_transactions: Family<OutcomeLabels, Counter>,
    appservice_transactions: Family<OutcomeLabels, Counter>,
    pushes: Family<OutcomeLabels, Counter>,
    started_at: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            requests: Family::new_with_constructor(request_histogram),
            long_polls: Family::default(),
            sync_responses: Family::default(),
            events: Family::default(),
            federation_transactions: Family::default(),
            appservice_transactions: Family::default(),
            pushes: Family::default(),
            started_at: crate::utils::now_millis() as f64 / 1000.0,
        };
        // The usual series exist from the start (at 0), so that a dashboard shows a flat
        // line rather than no data.
        for api in [SyncApi::sync, SyncApi::sliding_sync] {
            let _ = metrics.long_polls.get_or_create(&ApiLabels { api });
            let _ = metrics.sync_responses.get_or_create(&ApiLabels { api });
        }
        for origin in ["local", "remote"] {
            let _ = metrics.events.get_or_create(&OriginLabels { origin });
        }
        for outcome in [Outcome::sent, Outcome::failed] {
            let labels = OutcomeLabels { outcome };
            let _ = metrics.federation_transactions.get_or_create(&labels);
            let _ = metrics.appservice_transactions.get_or_create(&labels);
            let _ = metrics.pushes.get_or_create(&labels);
        }
        metrics
    }
}

/// A long-poll being parked: counted in `culvert_long_polls` until dropped.
pub struct LongPoll(Gauge<i64, AtomicI64>);

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// A request answered: `endpoint` is its route template, `method` its HTTP method (one of
    /// the standard ones, or `other`).
    pub fn request(&self, endpoint: Endpoint, method: &'static str, status: u16, took: Duration) {
        let labels = RequestLabels {
            endpoint,
            method,
            status,
        };
        self.requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// A sync request parks until news or its timeout; the returned guard counts it.
    pub fn long_poll(&self, api: SyncApi) -> LongPoll {
        let gauge = self.long_polls.get_or_create_owned(&ApiLabels { api });
        gauge.inc();
        LongPoll(gauge)
    }

    /// A sync answer was sent.
    pub fn sync_response(&self, api: SyncApi) {
        self.sync_responses.get_or_create(&ApiLabels { api }).inc();
    }

    pub fn federation_transaction(&self, outcome: Outcome) {
        self.federation_transactions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn appservice_transaction(&self, outcome: Outcome) {
        self.appservice_transactions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn push(&self, outcome: Outcome) {
        self.pushes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The commit-pipeline consumer that counts committed events by origin.
    pub fn event_counter(&self) -> Arc<EventCounter> {
        Arc::new(EventCounter(self.events.clone()))
    }
}

/// Counts each event once its commit is durable (`culvert_events_total{origin}`).
pub struct EventCounter(Family<OriginLabels, Counter>);

struct Counted(Counter<u64, AtomicU64>);

impl pipeline::Staged for Counted {
    fn write(&mut self, _batch: &mut Batch, _count: u64) -> Result<()> {
        Ok(())
    }
    fn committed(self: Box<Self>) {
        self.0.inc();
    }
}

impl pipeline::EventConsumer for EventCounter {
    fn prepare(
        &self,
        event: &pipeline::Appending<'_>,
    ) -> Result<Option<Box<dyn pipeline::Staged>>> {
        let origin = match event.origin {
            pipeline::Origin::Local => "local",
            pipeline::Origin::Remote | pipeline::Origin::RemoteJoin => "remote",
            pipeline::Origin::Backfill => "backfill",
            pipeline::Origin::Import => "import",
        };
        let counter = self.0.get_or_create_owned(&OriginLabels { origin });
        Ok(Some(Box::new(Counted(counter))))
    }
}

impl Services {
    /// The metrics in Prometheus' text format (version 0.0.4), state figures read now.
    pub fn render_metrics(&self) -> String {
        let metrics = &self.metrics;
        let mut root = Registry::default();
        register_process(&mut root, metrics.started_at);
        let registry = root.sub_registry_with_prefix("culvert");
        registry.register(
            "http_request_duration_seconds",
            "Requests answered, by endpoint (route template), method and status, and how long they took",
            metrics.requests.clone(),
        );
        registry.register(
            "long_polls",
            "Sync requests waiting for news",
            metrics.long_polls.clone(),
        );
        registry.register(
            "sync_responses",
            "Sync answers sent",
            metrics.sync_responses.clone(),
        );
        registry.register(
            "events",
            "Events committed to rooms' timelines, by origin (local: sent here; remote: received over federation; backfill: history fetched)",
            metrics.events.clone(),
        );
        registry.register(
            "federation_transactions",
            "Federation transactions sent to other servers, by outcome",
            metrics.federation_transactions.clone(),
        );
        registry.register(
            "appservice_transactions",
            "Transactions pushed to application services, by outcome",
            metrics.appservice_transactions.clone(),
        );
        registry.register(
            "pushes",
            "Notifications sent to push gateways, by outcome",
            metrics.pushes.clone(),
        );

        let store = &self.store;
        let failing = self
            .federation
            .destinations
            .all()
            .iter()
            .filter(|(_, state)| state.failure_ts.is_some())
            .count();
        let gauges: [(&str, &str, u64); 5] = [
            (
                "federation_queue_events",
                "Events and EDUs waiting in the federation outbox",
                store.count_keys(Cf::FederationOutbox, QUEUE_COUNT_LIMIT) as u64,
            ),
            (
                "federation_failing_destinations",
                "Servers the last transaction to which failed (sending backs off)",
                failing as u64,
            ),
            (
                "appservice_queue_items",
                "Events and EDUs waiting for application services",
                store.count_keys(Cf::AppserviceQueue, QUEUE_COUNT_LIMIT) as u64,
            ),
            (
                "pushers",
                "Pushers registered (each has a sender)",
                store.count_keys(Cf::Pushers, QUEUE_COUNT_LIMIT) as u64,
            ),
            (
                "users",
                "Accounts on this server (deactivated ones included)",
                store.count_keys(Cf::Users, QUEUE_COUNT_LIMIT) as u64,
            ),
        ];
        for (name, help, value) in gauges {
            registry.register(name, help, ConstGauge::new(value as i64));
        }

        let caches = Family::<CacheLabels, Gauge<i64, AtomicI64>>::default();
        let mut by_cache = self.timeline.cache_bytes().to_vec();
        by_cache.extend([
            ("short_ids", self.short_ids.cache_bytes()),
            ("push", self.push.cache_bytes()),
            ("account_data", self.account_data.cache_bytes()),
        ]);
        for (cache, bytes) in by_cache {
            caches
                .get_or_create(&CacheLabels { cache })
                .set(bytes as i64);
        }
        registry.register(
            "cache_bytes",
            "Bytes culvert's own caches hold (an estimate: their tables and the heap of their entries), by cache",
            caches,
        );

        let figures = store.figures();
        let rocksdb = registry.sub_registry_with_prefix("rocksdb");
        let rocks_gauges = [
            (
                "memtable_bytes",
                "Bytes in memtables over all column families",
                figures.memtable_bytes,
            ),
            (
                "sst_bytes",
                "Bytes of SST files over all column families",
                figures.sst_bytes,
            ),
            (
                "block_cache_bytes",
                "Bytes held by the block cache",
                figures.block_cache_bytes,
            ),
            (
                "block_cache_capacity_bytes",
                "The block cache's capacity",
                figures.block_cache_capacity_bytes,
            ),
            (
                "table_readers_bytes",
                "Bytes of index and filter blocks held outside the block cache",
                figures.table_readers_bytes,
            ),
            (
                "running_compactions",
                "Compactions running now",
                figures.running_compactions,
            ),
            (
                "pending_compaction_bytes",
                "Bytes compactions still have to rewrite (estimate)",
                figures.pending_compaction_bytes,
            ),
        ];
        for (name, help, value) in rocks_gauges {
            rocksdb.register(name, help, ConstGauge::new(value as i64));
        }
        let rocks_counters = [
            (
                "block_cache_hits",
                "Block cache lookups that found the block",
                figures.block_cache_hits,
            ),
            (
                "block_cache_misses",
                "Block cache lookups that read the disk",
                figures.block_cache_misses,
            ),
            (
                "compaction_written_bytes",
                "Bytes written by compactions",
                figures.compaction_written_bytes,
            ),
        ];
        for (name, help, value) in rocks_counters {
            if let Some(value) = value {
                rocksdb.register(name, help, ConstCounter::new(value));
            }
        }
        register_allocators(registry.sub_registry_with_prefix("allocator"));
        let reads = store.read_stats();
        registry.register(
            "store_point_reads",
            "Point reads of the database by requests and tasks",
            ConstCounter::new(reads.point_reads),
        );
        registry.register(
            "store_keys_scanned",
            "Keys visited by scans of the database",
            ConstCounter::new(reads.keys_scanned),
        );

        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &root) {
            tracing::warn!("encoding the metrics failed: {e}");
        }
        text
    }
}

/// The standard process figures (`process_…`, as every Prometheus client library names them).
fn register_process(registry: &mut Registry, started_at: f64) {
    registry.register(
        "process_start_time_seconds",
        "When the process started (seconds since the epoch)",
        ConstGauge::new(started_at),
    );
    let Some(stat) = read_proc_stat() else {
        return;
    };
    registry.register(
        "process_resident_memory_bytes",
        "Resident memory",
        ConstGauge::new(stat.resident_bytes as i64),
    );
    registry.register(
        "process_virtual_memory_bytes",
        "Virtual memory",
        ConstGauge::new(stat.virtual_bytes as i64),
    );
    registry.register(
        "process_cpu_seconds",
        "CPU time used (user and system)",
        ConstCounter::new(stat.cpu_seconds),
    );
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            ConstGauge::new(fds.count() as i64),
        );
    }
    registry.register(
        "process_threads",
        "Threads",
        ConstGauge::new(stat.threads as i64),
    );
}

/// What the two allocators hold: mimalloc serves culvert's own (Rust) allocations, glibc's
/// malloc RocksDB's. Read to tell a leak from memory an allocator keeps after it was freed.
fn register_allocators(registry: &mut Registry) {
    let mut committed = 0usize;
    // SAFETY: every out-parameter but one is null, which mi_process_info allows.
    unsafe {
        libmimalloc_sys::mi_process_info(
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut committed,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
    registry.register(
        "rust_committed_bytes",
        "Memory mimalloc holds for culvert's own allocations (in use or kept for reuse)",
        ConstGauge::new(committed as i64),
    );
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads malloc's bookkeeping (under its arenas' locks).
        let info = unsafe { libc::mallinfo2() };
        registry.register(
            "c_in_use_bytes",
            "Memory glibc's malloc has handed out and not yet got back (RocksDB's, mostly)",
            ConstGauge::new((info.uordblks + info.hblkhd) as i64),
        );
        registry.register(
            "c_free_held_bytes",
            "Memory freed to glibc's malloc that it keeps in its heaps instead of returning",
            ConstGauge::new(info.fordblks as i64),
        );
    }
}

struct ProcStat {
    resident_bytes: u64,
    virtual_bytes: u64,
    cpu_seconds: f64,
    threads: u64,
}

/// `/proc/self/stat` (Linux): CPU ticks, threads, virtual size and resident pages.
fn read_proc_stat() -> Option<ProcStat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: the fields after it follow its `)`.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    // Numbered from field 3 (`state`): utime 14, stime 15, num_threads 20, vsize 23, rss 24.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(ProcStat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
    })
}
