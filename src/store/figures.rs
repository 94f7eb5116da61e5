//! What the database says about itself, for the metrics an operator watches: memory held by
//! memtables and the block cache, bytes on disk, compactions, cache hits. Read at each scrape
//! (off every request's path).

use rocksdb::statistics::Ticker;

use super::{Cf, Store};

/// The database's figures at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreFigures {
    /// Bytes in memtables, over every column family.
    pub memtable_bytes: u64,
    /// Bytes of the SST files, over every column family.
    pub sst_bytes: u64,
    /// Bytes the block cache holds, and its capacity.
    pub block_cache_bytes: u64,
    pub block_cache_capacity_bytes: u64,
    /// Bytes of index and filter blocks held outside the block cache (table readers).
    pub table_readers_bytes: u64,
    /// Compactions running now.
    pub running_compactions: u64,
    /// Bytes compactions still have to rewrite (RocksDB's estimate).
    pub pending_compaction_bytes: u64,
    /// Block cache lookups since the start (with statistics on; else none).
    pub block_cache_hits: Option<u64>,
    pub block_cache_misses: Option<u64>,
    /// Bytes written by compactions since the start (with statistics on).
    pub compaction_written_bytes: Option<u64>,
}

impl Store {
    /// The database's figures now: one property read per column family and figure.
    pub fn figures(&self) -> StoreFigures {
        let db = &self.inner.db;
        let mut figures = StoreFigures {
            block_cache_bytes: self.inner.cache.get_usage() as u64,
            block_cache_capacity_bytes: self.inner.cache_capacity as u64,
            ..StoreFigures::default()
        };
        let int = |cf: &rocksdb::ColumnFamily, name: &str| {
            db.property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        for handle in self.families() {
            figures.memtable_bytes += int(handle, "rocksdb.cur-size-all-mem-tables");
            figures.sst_bytes += int(handle, "rocksdb.total-sst-files-size");
            figures.table_readers_bytes += int(handle, "rocksdb.estimate-table-readers-mem");
            figures.pending_compaction_bytes +=
                int(handle, "rocksdb.estimate-pending-compaction-bytes");
        }
        figures.running_compactions = db
            .property_int_value("rocksdb.num-running-compactions")
            .ok()
            .flatten()
            .unwrap_or(0);
        if let Some(options) = &self.inner.statistics {
            figures.block_cache_hits = Some(options.get_ticker_count(Ticker::BlockCacheHit));
            figures.block_cache_misses = Some(options.get_ticker_count(Ticker::BlockCacheMiss));
            figures.compaction_written_bytes =
                Some(options.get_ticker_count(Ticker::CompactWriteBytes));
        }
        figures
    }

    /// How many keys `cf` holds, counting at most `limit` (a queue's depth). Reads keys only;
    /// not counted in [`Store::read_stats`], which describe requests.
    pub fn count_keys(&self, cf: Cf, limit: usize) -> usize {
        let table = super::shared::stored_key(cf, &[]);
        let mut iter = self.inner.db.raw_iterator_cf(self.handle(cf));
        iter.seek(&table);
        let mut count = 0;
        while iter.key().is_some_and(|key| key.starts_with(&table)) && count < limit {
            count += 1;
            iter.next();
        }
        count
    }
}
