//! The family the small tables share. Every RocksDB column family costs about 70 KiB of memory
//! however little it holds (its memtable, its table and blob caches' lock stripes, statistics,
//! versions), so 87 of them were half of what a bare server held of its own (BENCHMARKS.md,
//! "Small tables in one column family"). The tables that grow with the history or are written
//! for every event, those every `/sync` scans (a scan that finds nothing costs next to nothing in
//! a small family, a seek through every level in a large one), and the few with options of their
//! own keep a family each; every other table is a key range of one shared family, its keys
//! prefixed by the table's tag byte (`in shared TAG` in [`super::Cf`]'s list). [`super::Store`]
//! adds and strips the tag, so nothing above the store sees it.
//!
//! A database from before (schema 8) had a family per table: [`move_old_families`] copies each
//! into the shared family when the store opens, then drops it.

use std::borrow::Cow;

use rocksdb::{DB, WriteBatch};
use tracing::info;

use super::Cf;

/// The shared family's name.
pub const FAMILY: &str = "shared";

/// The column families a database has: every table's own and the shared one.
pub fn families() -> impl Iterator<Item = &'static str> {
    Cf::ALL
        .iter()
        .filter(|cf| cf.shared_tag().is_none())
        .map(|cf| cf.name())
        .chain(std::iter::once(FAMILY))
}

/// The name of the family that holds `cf`.
pub fn family_of(cf: Cf) -> &'static str {
    match cf.shared_tag() {
        Some(_) => FAMILY,
        None => cf.name(),
    }
}

/// `key` of `cf` as stored: with the table's tag in front for a shared table.
pub fn stored_key(cf: Cf, key: &[u8]) -> Cow<'_, [u8]> {
    if cf.shared_tag().is_none() {
        return Cow::Borrowed(key);
    }
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored_key_in(cf, key, &mut stored);
    Cow::Owned(stored)
}

/// `key` of `cf` as stored, written into `buffer` (no allocation once it is large enough).
pub fn stored_key_in<'b>(cf: Cf, key: &'b [u8], buffer: &'b mut Vec<u8>) -> &'b [u8] {
    match cf.shared_tag() {
        Some(tag) => {
            buffer.clear();
            buffer.push(tag);
            buffer.extend_from_slice(key);
            buffer
        }
        None => key,
    }
}

/// How many bytes of a stored key come before the table's own key.
pub fn tag_len(cf: Cf) -> usize {
    usize::from(cf.shared_tag().is_some())
}

/// Copies every shared table still in a family of its own (`existing`: the database's
/// families) into the shared family, then drops the old family. A crash midway leaves the old
/// family in place, and the copy (the same keys and values again) starts over at the next open.
pub fn move_old_families(db: &mut DB, existing: &[String]) -> Result<(), rocksdb::Error> {
    const BATCH_BYTES: usize = 4 << 20;
    for &cf in Cf::ALL {
        let Some(tag) = cf.shared_tag() else { continue };
        if !existing.iter().any(|name| name == cf.name()) {
            continue;
        }
        let mut moved = 0u64;
        {
            let old = db
                .cf_handle(cf.name())
                .expect("every existing family is opened");
            let shared = db.cf_handle(FAMILY).expect("the shared family is opened");
            let mut iter = db.raw_iterator_cf(old);
            iter.seek_to_first();
            let mut batch = WriteBatch::default();
            let mut key = Vec::new();
            while let (Some(old_key), Some(value)) = (iter.key(), iter.value()) {
                key.clear();
                key.push(tag);
                key.extend_from_slice(old_key);
                batch.put_cf(shared, &key, value);
                moved += 1;
                if batch.size_in_bytes() >= BATCH_BYTES {
                    db.write(std::mem::take(&mut batch))?;
                    info!(
                        table = cf.name(),
                        moved, "moving a table into the shared family"
                    );
                }
                iter.next();
            }
            iter.status()?;
            db.write(batch)?;
        }
        // The copy on disk before the original goes.
        db.flush_wal(true)?;
        db.drop_cf(cf.name())?;
        info!(
            table = cf.name(),
            moved, "table moved into the shared family"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_unique_and_leave_room_above() {
        let mut seen = std::collections::HashSet::new();
        for &cf in Cf::ALL {
            if let Some(tag) = cf.shared_tag() {
                assert!(seen.insert(tag), "tag {tag:#x} used twice");
                // A scan of a whole table is bounded by the next tag.
                assert!(tag < 0xFF, "{}", cf.name());
                assert!(tag > 0, "{}", cf.name());
            }
        }
        assert!(!families().any(|name| name == "default"));
        let own = families().count();
        assert_eq!(own + seen.len(), Cf::ALL.len() + 1);
    }

    #[test]
    fn the_tables_with_options_of_their_own_keep_their_family() {
        for cf in super::super::COUNTER_CFS
            .iter()
            .chain(super::super::SMALL_MEMTABLE_CFS)
            .chain([&Cf::Global])
        {
            assert_eq!(cf.shared_tag(), None, "{}", cf.name());
        }
    }
}
