//! Moving in from another homeserver: `culvert import conduit` reads a Conduit database and
//! writes what it holds into this server's, keeping the server's identity (its signing key),
//! accounts with their passwords and logged-in devices, rooms with their history, and media.
//!
//! The source is opened read-only and never changed. The target must be a new database (no
//! accounts, no rooms) unless `--force`; then what exists here already is kept and reported.
//! `--dry-run` reads everything and reports what would be imported, writing nothing.

pub mod conduit;
pub mod synapse;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// What an import is asked to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Read and count, write nothing.
    pub dry_run: bool,
    /// Import into a database that is not new.
    pub force: bool,
}

/// What an import did: counts by kind, and what it left out and why.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub counts: BTreeMap<&'static str, u64>,
    pub skipped: Vec<String>,
}

impl ImportReport {
    pub fn count(&mut self, kind: &'static str) {
        *self.counts.entry(kind).or_default() += 1;
    }

    pub fn skip(&mut self, why: String) {
        tracing::warn!("not imported: {why}");
        self.skipped.push(why);
    }

    /// The report as the command line prints it.
    pub fn render(&self, dry_run: bool) -> String {
        let mut text = String::new();
        text.push_str(if dry_run {
            "dry run: nothing was written; would import\n"
        } else {
            "imported\n"
        });
        for (kind, count) in &self.counts {
            text.push_str(&format!("  {kind}: {count}\n"));
        }
        if self.skipped.is_empty() {
            text.push_str("nothing was left out\n");
        } else {
            text.push_str(&format!("left out ({}):\n", self.skipped.len()));
            for why in &self.skipped {
                text.push_str(&format!("  {why}\n"));
            }
        }
        text
    }
}

/// Progress lines for a long step: at most one every two seconds, then one at the end.
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    pub fn new(what: &'static str, total: u64) -> Self {
        let now = Instant::now();
        Self {
            what,
            total,
            done: 0,
            started: now,
            last: now,
        }
    }

    pub fn step(&mut self) {
        self.done += 1;
        if self.last.elapsed() >= Duration::from_secs(2) {
            self.last = Instant::now();
            let elapsed = self.started.elapsed().as_secs_f64();
            let rate = self.done as f64 / elapsed.max(0.001);
            let left = self.total.saturating_sub(self.done) as f64 / rate.max(0.001);
            eprintln!(
                "{}: {}/{} ({rate:.0}/s, about {left:.0} s left)",
                self.what, self.done, self.total
            );
        }
    }

    pub fn finish(self) {
        eprintln!(
            "{}: {} in {:.1} s",
            self.what,
            self.done,
            self.started.elapsed().as_secs_f64()
        );
    }
}
