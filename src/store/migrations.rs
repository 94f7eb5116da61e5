//! Schema versions. A new database starts at [`CURRENT`]; an older one is upgraded step by step,
//! each step committing its changes together with its new version number in one batch, so a crash
//! mid-upgrade resumes at the step that was interrupted.

use std::path::Path;

use tracing::info;

use super::{Batch, Cf, Store, StoreError, keys};

/// The schema this build writes.
pub const CURRENT: u64 = 9;

const VERSION_KEY: &[u8] = b"schema_version";

/// One upgrade step: from `CURRENT - 1` … to its index + 2. Each returns the changes to write.
type Step = fn(&Store) -> Result<Batch, rocksdb::Error>;

/// Steps in order: `STEPS[0]` upgrades version 1 to 2, and so on.
const STEPS: &[Step] = &[
    index_timestamps,
    index_room_servers,
    index_relations,
    index_words,
    reindex_relations,
    order_one_time_keys,
    mark_bundled_parents,
    mark_shared_family,
];

/// 1 → 2: fills the `TimestampEvents` index (`/timestamp_to_event`) for events stored before the
/// append path wrote it: one pass over every room's timeline, reading each event's
/// `origin_server_ts`.
fn index_timestamps(store: &Store) -> Result<Batch, rocksdb::Error> {
    let mut batch = Batch::new();
    for item in store.scan_prefix(Cf::Timeline, &[]) {
        let (key, short) = item?;
        // `room_id 0xFF count (8 bytes)`.
        let Some(split) = key.len().checked_sub(9) else {
            continue;
        };
        let (room, count) = (&key[..split], &key[split + 1..]);
        let Some(pdu) = store.get(Cf::Pdus, &short)? else {
            continue;
        };
        let ts = serde_json::from_slice::<serde_json::Value>(&pdu)
            .ok()
            .and_then(|stored| stored["pdu"]["origin_server_ts"].as_u64())
            .unwrap_or(0);
        let mut at = keys::u64_be(ts).to_vec();
        at.extend_from_slice(count);
        batch.put(
            Cf::TimestampEvents,
            keys::join([room, at.as_slice()]),
            short.to_vec(),
        );
    }
    Ok(batch)
}

/// 2 → 3: fills `room_servers` (each room's servers with joined members, counted) from
/// `room_members`, for rooms stored before the append path kept it: one pass over the members.
fn index_room_servers(store: &Store) -> Result<Batch, rocksdb::Error> {
    let mut counts: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
    for item in store.scan_prefix(Cf::RoomMembers, &[]) {
        let (key, membership) = item?;
        if &*membership != b"join" {
            continue;
        }
        // `room_id 0xFF user_id`; the server is what follows the user ID's first colon.
        let mut parts = keys::split(&key);
        let (Some(room), Some(user)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(colon) = user.iter().position(|b| *b == b':') else {
            continue;
        };
        *counts
            .entry(keys::join([room, &user[colon + 1..]]))
            .or_default() += 1;
    }
    let mut batch = Batch::new();
    for (key, joined) in counts {
        batch.put(Cf::RoomServers, key, keys::u64_be(joined));
    }
    Ok(batch)
}

/// 3 → 4: fills the relation and thread indexes (`relations`, `thread_roots`,
/// `thread_activity`, `thread_participants`) for events stored before the commit pipeline wrote
/// them: one pass over every room's timeline, reading each event. What an event's relation is
/// and how its entries look is `service::rooms::relations`' to say.
fn index_relations(store: &Store) -> Result<Batch, rocksdb::Error> {
    use crate::service::rooms::{relations, timeline::StoredPdu};
    let mut batch = Batch::new();
    // Each thread's latest reply and reply count, by (room, root).
    let mut threads: std::collections::BTreeMap<(Vec<u8>, String), ThreadTally> =
        Default::default();
    let mut read = 0u64;
    for item in store.scan_prefix(Cf::Timeline, &[]) {
        let (key, short) = item?;
        read += 1;
        if read.is_multiple_of(100_000) {
            info!(events = read, "indexing relations");
            // Written as it goes (the entries are idempotent; the version is set last), so a
            // large database is not held in one batch.
            store.write(std::mem::take(&mut batch))?;
        }
        let Some(split) = key.len().checked_sub(9) else {
            continue;
        };
        let (room, count) = (&key[..split], &key[split + 1..]);
        let Some(count) = keys::parse_u64_be(count) else {
            continue;
        };
        let Some(bytes) = store.get(Cf::Pdus, &short)? else {
            continue;
        };
        let Ok(stored) = serde_json::from_slice::<StoredPdu>(&bytes) else {
            continue;
        };
        let Some(relations::IndexEntries { puts, thread_root }) =
            relations::index_entries(stored.event_id.as_str(), &stored.pdu, count)
        else {
            continue;
        };
        if let Some(root) = thread_root {
            // Its `relations` value (the first entry), kept for the latest reply.
            let child = puts
                .first()
                .map(|(_, _, value)| value.clone())
                .unwrap_or_default();
            let thread = threads.entry((room.to_vec(), root)).or_insert(ThreadTally {
                latest: count,
                child: child.clone(),
                replies: 0,
            });
            if count >= thread.latest {
                thread.latest = count;
                thread.child = child;
            }
            thread.replies += 1;
        }
        for (cf, key, value) in puts {
            batch.put(cf, key, value);
        }
    }
    for (
        (room, root),
        ThreadTally {
            latest,
            child,
            replies,
        },
    ) in threads
    {
        let key = keys::join([room.as_slice(), root.as_bytes()]);
        batch.put(
            Cf::ThreadRoots,
            key.clone(),
            relations::thread_root_entry(latest, &child),
        );
        batch.put(Cf::ThreadCounts, key, replies.to_be_bytes());
        batch.put(
            Cf::ThreadActivity,
            keys::join([room.as_slice(), &keys::u64_be(latest)]),
            root.into_bytes(),
        );
    }
    info!(events = read, "relations indexed");
    Ok(batch)
}

/// One thread as the relation migration finds it: its latest reply (count and `relations`
/// value) and how many replies it has.
struct ThreadTally {
    latest: u64,
    child: Vec<u8>,
    replies: i64,
}

/// 5 → 6: the relation indexes in their new layout — children by kind (`relation_kinds`),
/// reactions by key (`annotations`), threads keyed by room with reply counters
/// (`thread_roots`, `thread_counts`): the old entries are dropped and every event indexed again
/// as in 3 → 4.
fn reindex_relations(store: &Store) -> Result<Batch, rocksdb::Error> {
    for cf in [
        Cf::Relations,
        Cf::RelationKinds,
        Cf::Annotations,
        Cf::ThreadRoots,
        Cf::ThreadCounts,
        Cf::ThreadActivity,
        Cf::ThreadParticipants,
    ] {
        let mut batch = Batch::new();
        let mut dropped = 0u64;
        for item in store.scan_prefix(cf, &[]) {
            let (key, _) = item?;
            batch.delete(cf, key.to_vec());
            dropped += 1;
            if dropped.is_multiple_of(100_000) {
                store.write(std::mem::take(&mut batch))?;
            }
        }
        store.write(batch)?;
    }
    index_relations(store)
}

/// 6 → 7: the upload order of one-time keys (`one_time_key_order`), which claims follow
/// (MSC4225): keys stored before it get places in key-ID order, before any uploaded later.
fn order_one_time_keys(store: &Store) -> Result<Batch, rocksdb::Error> {
    let mut batch = Batch::new();
    let mut places: std::collections::HashMap<Vec<u8>, u64> = Default::default();
    for item in store.scan_prefix(Cf::OneTimeKeys, &[]) {
        let (key, _) = item?;
        // `user 0xFF device 0xFF algorithm 0xFF key_id`.
        let Some(split) = key.iter().rposition(|b| *b == keys::SEP) else {
            continue;
        };
        let (device_part, key_id) = (&key[..split], &key[split + 1..]);
        let place = places.entry(device_part.to_vec()).or_insert(0);
        *place += 1;
        batch.put(
            Cf::OneTimeKeyOrder,
            keys::join([device_part, &keys::u64_be(*place)]),
            key_id.to_vec(),
        );
    }
    Ok(batch)
}

/// 8 → 9: nothing to write: the small tables were moved into the shared family when the store
/// opened (`shared::move_old_families`, before any step runs). The version only keeps an older
/// culvert, which would look for them in families of their own, from opening the database.
fn mark_shared_family(_store: &Store) -> Result<Batch, rocksdb::Error> {
    Ok(Batch::new())
}

/// 7 → 8: the marks of events with an edit or a reference (`relation_kinds`, kind 0), which
/// bundling reads before it scans: one pass over `relation_kinds`.
fn mark_bundled_parents(store: &Store) -> Result<Batch, rocksdb::Error> {
    use crate::service::rooms::relations;
    let mut batch = Batch::new();
    for item in store.scan_prefix(Cf::RelationKinds, &[]) {
        let (key, _) = item?;
        if let Some(mark) = relations::mark_of_entry(&key) {
            batch.put(Cf::RelationKinds, mark, Vec::<u8>::new());
        }
    }
    Ok(batch)
}

/// 4 → 5: fills the search index (`search_words`) for events stored before the commit
/// pipeline wrote it: one pass over every room's timeline. Which words an event has is
/// `service::rooms::search`'s to say.
fn index_words(store: &Store) -> Result<Batch, rocksdb::Error> {
    use crate::service::rooms::{search, timeline::StoredPdu};
    let mut batch = Batch::new();
    let mut read = 0u64;
    for item in store.scan_prefix(Cf::Timeline, &[]) {
        let (key, short) = item?;
        read += 1;
        if read.is_multiple_of(100_000) {
            info!(events = read, "indexing words for search");
            store.write(std::mem::take(&mut batch))?;
        }
        let Some(split) = key.len().checked_sub(9) else {
            continue;
        };
        let Some(count) = keys::parse_u64_be(&key[split + 1..]) else {
            continue;
        };
        let Some(bytes) = store.get(Cf::Pdus, &short)? else {
            continue;
        };
        let Ok(stored) = serde_json::from_slice::<StoredPdu>(&bytes) else {
            continue;
        };
        for (key, value) in search::index_entries(&key[..split], &stored.pdu, count) {
            batch.put(Cf::SearchWords, key, value);
        }
    }
    info!(events = read, "words indexed");
    Ok(batch)
}

pub(super) fn run(store: &Store, path: &Path) -> Result<(), StoreError> {
    let found = match store.get(Cf::Global, VERSION_KEY)? {
        Some(bytes) => keys::parse_u64_be(&bytes).ok_or_else(|| {
            StoreError::Other(format!("{}: unreadable schema_version", path.display()))
        })?,
        None => {
            // A brand-new database (or one from before versions were recorded: there is none).
            store.put(Cf::Global, VERSION_KEY, &keys::u64_be(CURRENT))?;
            return Ok(());
        }
    };
    if found > CURRENT {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found,
            supported: CURRENT,
        });
    }
    debug_assert_eq!(STEPS.len() as u64, CURRENT - 1);
    for version in found..CURRENT {
        info!(
            from = version,
            to = version + 1,
            "migrating database schema"
        );
        let step = STEPS[(version - 1) as usize];
        let mut batch = step(store)?;
        batch.put(Cf::Global, VERSION_KEY, keys::u64_be(version + 1));
        store.write(batch)?;
        info!(version = version + 1, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::StoreOptions;
    use super::*;

    #[test]
    fn version_2_databases_get_their_room_servers_counted() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut batch = Batch::new();
            for (user, membership) in [
                ("@a:one.example", "join"),
                ("@b:one.example", "join"),
                ("@c:two.example:8448", "join"),
                ("@d:three.example", "leave"),
            ] {
                batch.put(
                    Cf::RoomMembers,
                    keys::join([b"!r:one.example".as_slice(), user.as_bytes()]),
                    membership,
                );
            }
            batch.put(Cf::Global, VERSION_KEY, keys::u64_be(2));
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let count = |server: &str| {
            store
                .get(
                    Cf::RoomServers,
                    &keys::join([b"!r:one.example".as_slice(), server.as_bytes()]),
                )
                .unwrap()
                .and_then(|v| keys::parse_u64_be(&v))
        };
        assert_eq!(count("one.example"), Some(2));
        assert_eq!(count("two.example:8448"), Some(1));
        assert_eq!(count("three.example"), None, "nobody of it is joined");
        assert_eq!(
            store.get(Cf::Global, VERSION_KEY).unwrap(),
            Some(keys::u64_be(CURRENT).to_vec())
        );
    }

    #[test]
    fn version_3_databases_get_their_relations_indexed() {
        let dir = tempfile::TempDir::new().unwrap();
        let room = b"!r:x";
        let event = |id: &str, sender: &str, relates_to: serde_json::Value| {
            serde_json::json!({
                "event_id": id,
                "pdu": {
                    "room_id": "!r:x", "sender": sender, "type": "m.room.message",
                    "origin_server_ts": 5, "content": { "body": "b", "m.relates_to": relates_to },
                },
            })
        };
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            // Version 3: a root, two thread replies and a reply with no rel_type.
            let mut batch = Batch::new();
            for (count, short, stored) in [
                (10, 1, event("$root", "@a:x", serde_json::json!({}))),
                (
                    11,
                    2,
                    event(
                        "$one",
                        "@b:x",
                        serde_json::json!({"rel_type": "m.thread", "event_id": "$root"}),
                    ),
                ),
                (
                    12,
                    3,
                    event(
                        "$two",
                        "@c:x",
                        serde_json::json!({"rel_type": "m.thread", "event_id": "$root"}),
                    ),
                ),
                (
                    13,
                    4,
                    event(
                        "$re",
                        "@c:x",
                        serde_json::json!({"m.in_reply_to": {"event_id": "$root"}}),
                    ),
                ),
            ] {
                batch.put(
                    Cf::Timeline,
                    keys::join([room, &keys::u64_be(count)]),
                    keys::u64_be(short),
                );
                batch.put(
                    Cf::Pdus,
                    keys::u64_be(short),
                    serde_json::to_vec(&stored).unwrap(),
                );
            }
            // An entry of the old layout (keyed by the root alone), which 5 → 6 drops.
            batch.put(Cf::ThreadRoots, b"$root".to_vec(), keys::u64_be(12));
            batch.put(Cf::Global, VERSION_KEY, keys::u64_be(3));
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let children: Vec<_> = store
            .scan_prefix(Cf::Relations, b"$root\xff")
            .map(|item| item.unwrap().0.to_vec())
            .collect();
        assert_eq!(
            children,
            vec![
                keys::join([b"$root".as_slice(), &keys::u64_be(11)]),
                keys::join([b"$root".as_slice(), &keys::u64_be(12)]),
            ]
        );
        assert_eq!(store.get(Cf::ThreadRoots, b"$root").unwrap(), None);
        let thread = keys::join([room, b"$root".as_slice()]);
        assert_eq!(
            store
                .get(Cf::ThreadRoots, &thread)
                .unwrap()
                .map(|v| v[..8].to_vec()),
            Some(keys::u64_be(12).to_vec())
        );
        assert_eq!(
            store
                .get(Cf::ThreadCounts, &thread)
                .unwrap()
                .map(|c| crate::store::parse_counter(&c)),
            Some(2)
        );
        // By kind: the two thread replies under kind 3.
        let kinds: Vec<_> = store
            .scan_prefix(Cf::RelationKinds, b"$root\xff")
            .map(|item| item.unwrap().0.to_vec())
            .collect();
        let kind_key = |count: u64| {
            let mut key = b"$root\xff\x03".to_vec();
            key.extend(keys::u64_be(count));
            key
        };
        assert_eq!(kinds, vec![kind_key(11), kind_key(12)]);
        assert_eq!(
            store
                .get(Cf::ThreadActivity, &keys::join([room, &keys::u64_be(12)]))
                .unwrap(),
            Some(b"$root".to_vec())
        );
        assert!(
            store
                .get(Cf::ThreadActivity, &keys::join([room, &keys::u64_be(11)]))
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .contains(
                    Cf::ThreadParticipants,
                    &keys::join([b"$root".as_slice(), b"@b:x"])
                )
                .unwrap()
        );
        assert!(
            !store
                .contains(
                    Cf::ThreadParticipants,
                    &keys::join([b"$root".as_slice(), b"@a:x"])
                )
                .unwrap()
        );
    }

    #[test]
    fn version_6_databases_get_their_one_time_keys_ordered() {
        let dir = tempfile::TempDir::new().unwrap();
        let device = keys::join([b"@a:x".as_slice(), b"DEV", b"signed_curve25519"]);
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut batch = Batch::new();
            for id in [b"K2".as_slice(), b"K1"] {
                batch.put(
                    Cf::OneTimeKeys,
                    keys::join([device.as_slice(), id]),
                    b"{}".to_vec(),
                );
            }
            batch.put(Cf::Global, VERSION_KEY, keys::u64_be(6));
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let order: Vec<(Vec<u8>, Vec<u8>)> = store
            .scan_prefix(Cf::OneTimeKeyOrder, &keys::prefix(&device))
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        assert_eq!(
            order,
            vec![
                (
                    keys::join([device.as_slice(), &keys::u64_be(1)]),
                    b"K1".to_vec()
                ),
                (
                    keys::join([device.as_slice(), &keys::u64_be(2)]),
                    b"K2".to_vec()
                ),
            ]
        );
    }

    #[test]
    fn version_7_databases_get_the_marks_of_edited_and_referenced_events() {
        let dir = tempfile::TempDir::new().unwrap();
        let entry = |parent: &[u8], kind: u8, count: u64| {
            let mut key = keys::prefix(parent);
            key.push(kind);
            key.extend(keys::u64_be(count));
            key
        };
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut batch = Batch::new();
            // An edit, a reference (at a count whose last bytes are 0xFF 0x00), a thread reply.
            batch.put(Cf::RelationKinds, entry(b"$edited", 1, 5), b"x".to_vec());
            batch.put(
                Cf::RelationKinds,
                entry(b"$cited", 2, 0xFF00),
                b"x".to_vec(),
            );
            batch.put(Cf::RelationKinds, entry(b"$root", 3, 7), b"x".to_vec());
            batch.put(Cf::Global, VERSION_KEY, keys::u64_be(7));
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let marks: Vec<Vec<u8>> = store
            .scan_prefix(Cf::RelationKinds, &[])
            .map(|item| item.unwrap().0.to_vec())
            .filter(|key| crate::service::rooms::relations::is_mark(key))
            .collect();
        assert_eq!(
            marks,
            vec![b"$cited\xff\x00".to_vec(), b"$edited\xff\x00".to_vec()]
        );
        assert!(!crate::service::rooms::relations::is_mark(&entry(
            b"$cited", 2, 0xFF00
        )));
    }

    #[test]
    fn version_4_databases_get_their_words_indexed() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut batch = Batch::new();
            let stored = serde_json::json!({
                "event_id": "$e",
                "pdu": { "room_id": "!r:x", "sender": "@a:x", "type": "m.room.message",
                         "content": { "body": "Hello, hello Wörld" } },
            });
            batch.put(
                Cf::Timeline,
                keys::join([b"!r:x".as_slice(), &keys::u64_be(9)]),
                keys::u64_be(1),
            );
            batch.put(
                Cf::Pdus,
                keys::u64_be(1),
                serde_json::to_vec(&stored).unwrap(),
            );
            batch.put(Cf::Global, VERSION_KEY, keys::u64_be(4));
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let word = |w: &str| {
            store
                .get(
                    Cf::SearchWords,
                    &keys::join([b"!r:x".as_slice(), w.as_bytes(), &keys::u64_be(9)]),
                )
                .unwrap()
        };
        // Field 1 (the body), twice.
        assert_eq!(word("hello"), Some(vec![1, 0, 0, 0, 2]));
        assert_eq!(word("world"), Some(vec![1, 0, 0, 0, 1]));
        assert_eq!(word("wörld"), None);
    }

    #[test]
    fn version_1_databases_get_their_timestamp_index() {
        let dir = tempfile::TempDir::new().unwrap();
        let room = b"!r:x";
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            // A database as version 1 wrote it: a timeline entry and its PDU, no index.
            let mut batch = Batch::new();
            batch.put(
                Cf::Timeline,
                keys::join([room, &keys::u64_be(7)]),
                keys::u64_be(42),
            );
            batch.put(
                Cf::Pdus,
                keys::u64_be(42),
                br#"{"event_id":"$e","pdu":{"origin_server_ts":1234}}"#.to_vec(),
            );
            batch.put(Cf::Global, VERSION_KEY, keys::u64_be(1));
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut at = keys::u64_be(1234).to_vec();
        at.extend_from_slice(&keys::u64_be(7));
        let key = keys::join([room, at.as_slice()]);
        assert_eq!(
            store.get(Cf::TimestampEvents, &key).unwrap(),
            Some(keys::u64_be(42).to_vec())
        );
        let version = store.get(Cf::Global, VERSION_KEY).unwrap().unwrap();
        assert_eq!(keys::parse_u64_be(&version), Some(CURRENT));
    }
}
