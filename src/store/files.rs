//! File descriptors for RocksDB's table files.
//!
//! RocksDB keeps one descriptor per table (SST) file it has open. When a database has more
//! table files than it may keep open, point reads close and reopen tables, re-reading their
//! index and filter blocks every time: on a database of a million events (~800 table files)
//! Conduit's default of 512 made an import read 1.4 TB from the page cache (BENCHMARKS.md).
//! So the process's soft `RLIMIT_NOFILE` is raised to its hard limit at start, and unless
//! `rocksdb_max_open_files` is configured RocksDB may keep half of that open; the other half
//! stays for client and federation connections.

/// The soft limit on open files after raising it as far as the hard limit allows.
pub fn raise_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            tracing::debug!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "could not raise the open-files limit"
            );
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is narrower on 32-bit targets
    {
        limit.rlim_cur as u64
    }
}

/// How many table files RocksDB may keep open: the configured number, or half of the soft
/// limit on open files (at least 64; RocksDB reads `-1` as no limit).
pub fn max_open_files(configured: Option<i32>, soft_limit: u64) -> i32 {
    match configured {
        Some(n) => n,
        None => (soft_limit / 2).clamp(64, i32::MAX as u64) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_limit_unless_configured() {
        assert_eq!(max_open_files(None, 20_000), 10_000);
        assert_eq!(max_open_files(None, 1_024), 512);
        assert_eq!(max_open_files(None, 50), 64);
        assert_eq!(max_open_files(None, u64::MAX), i32::MAX);
        assert_eq!(max_open_files(Some(128), 20_000), 128);
        assert_eq!(max_open_files(Some(-1), 1_024), -1);
    }
}
