//! Relations between events (`m.relates_to`: edits, threads, reactions, references) and the
//! server-side views clients build on them: `/relations`, `/threads`, and the aggregations
//! bundled into each timeline event's `unsigned["m.relations"]` (made in `client_event`).
//!
//! The index is written by [`RelationIndex`], a consumer of the commit pipeline, in the batch
//! of every event that enters a timeline (made here, received, backfilled); a redaction takes
//! its target's entry out in its own batch, so a redacted edit, reply or reaction no longer
//! counts. Entries are keyed by the parent's event ID (a relation may arrive before the event
//! it points to) and the child's stream count, so an event's children are one prefix scan in
//! timeline order, and an event with none costs one seek that finds nothing.
//!
//! Threads have two more indexes, kept in the same batches: each room's threads by latest
//! reply (`thread_activity`, the order of `/threads`; `thread_roots` says which entry is
//! current), and who replied in each (`thread_participants`, `include=participated`).
//!
//! Events made here are checked before they are committed (the spec's rules as Synapse
//! applies them): a relation must point into the same room, a user reacts with a key once
//! (`M_DUPLICATE_ANNOTATION`), and a thread cannot start from an event that itself relates to
//! another.

use std::sync::Weak;

use http::StatusCode;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, RoomId, UserId, api::error::ErrorKind,
};
use serde_json::Value;

use super::{
    client_event::{Detail, Viewer},
    history::Direction,
    pdu,
    timeline::pipeline::{Appending, EventConsumer, Origin, Staged},
};
use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, Store, keys},
};

pub const THREAD: &str = "m.thread";
pub const REPLACE: &str = "m.replace";
pub const ANNOTATION: &str = "m.annotation";
pub const REFERENCE: &str = "m.reference";

/// Most index entries one `/relations` or `/threads` request reads.
const MAX_SCAN: usize = 2000;
/// Most references bundled with an event (the rest are for `/relations` to page through).
const MAX_REFERENCES: usize = 50;
/// How deep `recurse=true` follows relations of relations (the spec asks for at least 3).
pub const RECURSION_DEPTH: u64 = 3;

/// What an event's `content["m.relates_to"]` says, when it names a relation type and a parent.
#[derive(Debug, PartialEq, Eq)]
pub struct Relation<'a> {
    pub rel_type: &'a str,
    pub parent: &'a str,
    /// An annotation's key (the reaction).
    pub key: Option<&'a str>,
}

/// The relation an event declares, if any (`m.in_reply_to` alone is a reply, not a relation).
pub fn relation_of(pdu: &CanonicalJsonObject) -> Option<Relation<'_>> {
    let Some(CanonicalJsonValue::Object(content)) = pdu.get("content") else {
        return None;
    };
    let Some(CanonicalJsonValue::Object(relates_to)) = content.get("m.relates_to") else {
        return None;
    };
    let text = |name: &str| match relates_to.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    Some(Relation {
        rel_type: text("rel_type")?,
        parent: text("event_id")?,
        key: text("key"),
    })
}

/// One index entry: an event that relates to another.
#[derive(Clone, Debug)]
pub struct Child {
    /// Its stream count.
    pub count: u64,
    pub origin_server_ts: u64,
    pub event_id: String,
    pub rel_type: String,
    pub event_type: String,
    pub sender: String,
    pub key: String,
}

fn relation_key(parent: &str, count: u64) -> Vec<u8> {
    keys::join([parent.as_bytes(), &keys::u64_be(count)])
}

/// The kinds of `relation_kinds`, in key order: bundling reads the first two in one scan.
/// Kind 0 is no child but a mark, `parent 0xFF 0x00` → empty: the parent has (or had) an edit
/// or a reference. Most events have neither, and a point read of the mark (its absence
/// answered by bloom filters) is far cheaper than opening an iterator on every timeline
/// event to find nothing (a fifth of a `/messages` page's time before the mark).
const KIND_MARK: u8 = 0;
const KIND_EDIT: u8 = 1;
const KIND_REFERENCE: u8 = 2;
const KIND_THREAD: u8 = 3;
const KIND_ANNOTATION: u8 = 4;
const KIND_OTHER: u8 = 5;

fn kind_of(rel_type: &str) -> u8 {
    match rel_type {
        REPLACE => KIND_EDIT,
        REFERENCE => KIND_REFERENCE,
        THREAD => KIND_THREAD,
        ANNOTATION => KIND_ANNOTATION,
        _ => KIND_OTHER,
    }
}

/// The kind an event's relation is indexed under: an `m.replace` without `m.new_content` is
/// no edit (unless encrypted: the server cannot look inside), so it is never bundled as one.
fn entry_kind(relation: &Relation<'_>, pdu: &CanonicalJsonObject) -> u8 {
    let kind = kind_of(relation.rel_type);
    let encrypted = pdu::str_field(pdu, "type") == Some("m.room.encrypted");
    let has_new_content = matches!(
        pdu.get("content"),
        Some(CanonicalJsonValue::Object(content))
            if matches!(content.get("m.new_content"), Some(CanonicalJsonValue::Object(_)))
    );
    if kind == KIND_EDIT && !encrypted && !has_new_content {
        KIND_OTHER
    } else {
        kind
    }
}

/// The prefix of `parent`'s children of one kind in `relation_kinds`.
fn kind_prefix(parent: &str, kind: u8) -> Vec<u8> {
    let mut key = keys::prefix(parent.as_bytes());
    key.push(kind);
    key
}

/// Whether `key` (of `relation_kinds`) is a parent's mark, not a child's entry: a child
/// removed leaves its parent's mark (another child may need it; a stale one costs a scan).
pub fn is_mark(key: &[u8]) -> bool {
    // An event ID holds no 0xFF: the mark's is its first, right before the kind.
    key.len() >= 2
        && key.iter().position(|b| *b == keys::SEP) == Some(key.len() - 2)
        && key[key.len() - 1] == KIND_MARK
}

/// The mark `relation_kinds` holds for a parent of an edit or a reference, if `kind` is one.
fn mark_for(parent: &str, kind: u8) -> Option<Vec<u8>> {
    matches!(kind, KIND_EDIT | KIND_REFERENCE).then(|| kind_prefix(parent, KIND_MARK))
}

/// The marks for the edit and reference entries among `relation_kinds` keys (for the
/// migration that adds them to older databases).
pub fn mark_of_entry(key: &[u8]) -> Option<Vec<u8>> {
    // `parent 0xFF kind count (u64 BE)`
    let split = key.len().checked_sub(10)?;
    if key[split] != keys::SEP || !matches!(key[split + 1], KIND_EDIT | KIND_REFERENCE) {
        return None;
    }
    let mut mark = key[..=split].to_vec();
    mark.push(KIND_MARK);
    Some(mark)
}

fn kind_key(parent: &str, kind: u8, count: u64) -> Vec<u8> {
    let mut key = kind_prefix(parent, kind);
    key.extend(keys::u64_be(count));
    key
}

/// A thread's key in `thread_roots` and `thread_counts`: replies count in their own room.
fn thread_key(room: &[u8], root: &str) -> Vec<u8> {
    keys::join([room, root.as_bytes()])
}

/// A `thread_roots` value: the latest reply's stream count, then its `relations` value (so
/// bundling the thread reads no other entry for it).
fn thread_root_value(latest: u64, child: &[u8]) -> Vec<u8> {
    let mut value = keys::u64_be(latest).to_vec();
    value.extend_from_slice(child);
    value
}

/// The latest reply's stream count of a `thread_roots` value.
fn thread_latest(value: &[u8]) -> Option<u64> {
    keys::parse_u64_be(value.get(..8)?)
}

/// A reaction's key in `annotations`.
fn annotation_key(parent: &str, sender: &str, event_type: &str, key: &str) -> Vec<u8> {
    keys::join([
        parent.as_bytes(),
        sender.as_bytes(),
        event_type.as_bytes(),
        key.as_bytes(),
    ])
}

fn child_value(
    ts: u64,
    event_id: &str,
    relation: &Relation<'_>,
    event_type: &str,
    sender: &str,
) -> Vec<u8> {
    let mut value = keys::u64_be(ts).to_vec();
    value.extend(keys::join([
        event_id.as_bytes(),
        relation.rel_type.as_bytes(),
        event_type.as_bytes(),
        sender.as_bytes(),
        relation.key.unwrap_or_default().as_bytes(),
    ]));
    value
}

fn parse_child(key: &[u8], value: &[u8]) -> Option<Child> {
    let count = keys::parse_u64_be(key.get(key.len().checked_sub(8)?..)?)?;
    let origin_server_ts = keys::parse_u64_be(value.get(..8)?)?;
    let mut parts = keys::split(&value[8..]).map(|p| String::from_utf8_lossy(p).into_owned());
    Some(Child {
        count,
        origin_server_ts,
        event_id: parts.next()?,
        rel_type: parts.next()?,
        event_type: parts.next()?,
        sender: parts.next()?,
        key: parts.next().unwrap_or_default(),
    })
}

fn origin_server_ts(pdu: &CanonicalJsonObject) -> u64 {
    match pdu.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
        _ => 0,
    }
}

/// The `thread_roots` value for a thread whose latest reply (at `latest`) has the
/// `relations` value `child` — for the migration.
pub fn thread_root_entry(latest: u64, child: &[u8]) -> Vec<u8> {
    thread_root_value(latest, child)
}

/// An event's entries, as the migration that indexes older databases writes them.
pub struct IndexEntries {
    /// Its entries in `relations`, `relation_kinds`, and `annotations` or
    /// `thread_participants`.
    pub puts: Vec<(Cf, Vec<u8>, Vec<u8>)>,
    /// For a thread reply, the root (the thread's count, latest reply and place in the
    /// activity order are the migration's to work out).
    pub thread_root: Option<String>,
}

/// The index entries of one stored event with stream count `count`, if it relates to another.
pub fn index_entries(
    event_id: &str,
    pdu: &CanonicalJsonObject,
    count: u64,
) -> Option<IndexEntries> {
    let relation = relation_of(pdu)?;
    let sender = pdu::str_field(pdu, "sender").unwrap_or_default();
    let event_type = pdu::str_field(pdu, "type").unwrap_or_default();
    let value = child_value(
        origin_server_ts(pdu),
        event_id,
        &relation,
        event_type,
        sender,
    );
    let parent = relation.parent;
    let kind = entry_kind(&relation, pdu);
    let mut puts = vec![
        (Cf::Relations, relation_key(parent, count), value.clone()),
        (Cf::RelationKinds, kind_key(parent, kind, count), value),
    ];
    if let Some(mark) = mark_for(parent, kind) {
        puts.push((Cf::RelationKinds, mark, Vec::new()));
    }
    if kind == KIND_THREAD {
        puts.push((
            Cf::ThreadParticipants,
            keys::join([parent.as_bytes(), sender.as_bytes()]),
            Vec::new(),
        ));
    }
    if kind == KIND_ANNOTATION
        && let Some(key) = relation.key
    {
        puts.push((
            Cf::Annotations,
            annotation_key(parent, sender, event_type, key),
            keys::u64_be(count).to_vec(),
        ));
    }
    Some(IndexEntries {
        puts,
        thread_root: (kind == KIND_THREAD).then(|| parent.to_owned()),
    })
}

/// Reads an event's children from the index, in timeline order (`Forward`) or newest first,
/// starting after/before `from` (exclusive forward, inclusive backward, like `/messages`).
fn children<'a>(
    store: &'a Store,
    cf: Cf,
    prefix: &'a [u8],
    from: Option<u64>,
    direction: Direction,
) -> Box<dyn Iterator<Item = Result<Child>> + 'a> {
    let parse = |item: Result<crate::store::KeyValue, rocksdb::Error>| -> Option<Result<Child>> {
        match item {
            Ok((key, value)) => parse_child(&key, &value).map(Ok),
            Err(e) => Some(Err(e.into())),
        }
    };
    match direction {
        Direction::Forward => {
            let mut start = prefix.to_vec();
            start.extend(keys::u64_be(from.map_or(0, |f| f.saturating_add(1))));
            Box::new(store.scan_prefix_from(cf, prefix, &start).filter_map(parse))
        }
        Direction::Backward => {
            let mut start = prefix.to_vec();
            start.extend(keys::u64_be(from.unwrap_or(u64::MAX)));
            Box::new(
                store
                    .scan_prefix_rev_from(cf, prefix, &start)
                    .filter_map(parse),
            )
        }
    }
}

/// What the index knows of an event's children, for its bundled aggregations.
#[derive(Default)]
pub struct Summary {
    /// The edit that applies: latest by `origin_server_ts`, then event ID.
    pub edit: Option<Child>,
    /// Replies in its thread: how many, the latest, whether the viewer wrote one.
    pub thread: Option<ThreadSummary>,
    /// Events that reference it (the first [`MAX_REFERENCES`]).
    pub references: Vec<Child>,
}

pub struct ThreadSummary {
    pub count: u64,
    pub latest: Child,
    pub participated: bool,
}

impl Summary {
    pub fn is_empty(&self) -> bool {
        self.edit.is_none() && self.thread.is_none() && self.references.is_empty()
    }
}

impl Services {
    /// The summary of `event_id`'s children: edits and references in one short scan (the
    /// kinds before replies and reactions), the thread from its counters — however many
    /// reactions and replies the event has. `original` is the event as stored, whose sender
    /// and type an edit must share; `edits_only` skips threads and references (for events
    /// bundled inside another's aggregations).
    pub fn relation_summary(
        &self,
        event_id: &EventId,
        original: &CanonicalJsonObject,
        viewer: Option<&UserId>,
        edits_only: bool,
    ) -> Result<Summary> {
        let mut summary = Summary::default();
        let sender = pdu::str_field(original, "sender").unwrap_or_default();
        let event_type = pdu::str_field(original, "type").unwrap_or_default();
        // Only a message event that is not itself an edit and not redacted can be edited.
        let redacted = matches!(original.get("unsigned"), Some(CanonicalJsonValue::Object(u)) if u.contains_key("redacted_because"));
        let editable = original.get("state_key").is_none()
            && !redacted
            && relation_of(original).is_none_or(|r| r.rel_type != REPLACE);
        if edits_only && !editable {
            return Ok(summary);
        }
        let parent = event_id.as_str();
        let prefix = keys::prefix(parent.as_bytes());
        let first = if editable { KIND_EDIT } else { KIND_REFERENCE };
        let marked = self
            .store
            .contains(Cf::RelationKinds, &kind_prefix(parent, KIND_MARK))?;
        let last = if edits_only {
            KIND_EDIT
        } else {
            KIND_REFERENCE
        };
        let start = kind_prefix(parent, first);
        let scan = marked.then(|| {
            self.store
                .scan_prefix_from(Cf::RelationKinds, &prefix, &start)
        });
        for item in scan.into_iter().flatten() {
            let (key, value) = item?;
            if key.get(prefix.len()).is_none_or(|kind| *kind > last) {
                break;
            }
            let Some(child) = parse_child(&key, &value) else {
                continue;
            };
            match child.rel_type.as_str() {
                REPLACE if child.sender == sender && child.event_type == event_type => {
                    let newer = summary.edit.as_ref().is_none_or(|best| {
                        (child.origin_server_ts, &child.event_id)
                            > (best.origin_server_ts, &best.event_id)
                    });
                    if newer {
                        summary.edit = Some(child);
                    }
                }
                REFERENCE => {
                    summary.references.push(child);
                    if summary.references.len() == MAX_REFERENCES {
                        break;
                    }
                }
                _ => {}
            }
        }
        if !edits_only && let Some(room) = pdu::str_field(original, "room_id") {
            summary.thread = self.thread_summary(room, parent, sender, viewer)?;
        }
        Ok(summary)
    }

    /// A thread root's replies in `room`: the count, the latest, whether the viewer took
    /// part (a point read for an event that has no thread; four for a root).
    fn thread_summary(
        &self,
        room: &str,
        root: &str,
        root_sender: &str,
        viewer: Option<&UserId>,
    ) -> Result<Option<ThreadSummary>> {
        let key = thread_key(room.as_bytes(), root);
        let Some(value) = self.store.get(Cf::ThreadRoots, &key)? else {
            return Ok(None);
        };
        let Some(latest) = thread_latest(&value)
            .and_then(|count| parse_child(&relation_key(root, count), &value[8..]))
        else {
            return Ok(None);
        };
        let count = self
            .store
            .get(Cf::ThreadCounts, &key)?
            .map_or(0, |c| crate::store::parse_counter(&c));
        let participated = match viewer {
            Some(viewer) if viewer.as_str() == root_sender => true,
            Some(viewer) => self.store.contains(
                Cf::ThreadParticipants,
                &keys::join([root.as_bytes(), viewer.as_bytes()]),
            )?,
            None => false,
        };
        Ok(Some(ThreadSummary {
            count: u64::try_from(count).unwrap_or(0).max(1),
            latest,
            participated,
        }))
    }

    /// A page of the events that relate to `parent` (`/relations`), as `viewer` may see them.
    pub fn relations(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        parent: &EventId,
        query: &RelationsQuery<'_>,
    ) -> Result<RelationsPage> {
        // The parent must be one the user may see (else 404, as for `/event`).
        self.visible_event(room_id, viewer, parent)?;
        let mut view = self.event_view(Some(viewer));
        let wanted = |child: &Child| {
            query.rel_type.is_none_or(|t| t == child.rel_type)
                && query.event_type.is_none_or(|t| t == child.event_type)
        };
        let within = |count: u64| match (query.direction, query.to) {
            (_, None) => true,
            (Direction::Backward, Some(to)) => count > to,
            (Direction::Forward, Some(to)) => count <= to,
        };
        // One relation type: that kind's entries only (not every reaction for a thread) —
        // except edits, whose malformed ones are filed under "other" and still listed here.
        let by_kind = query.rel_type.filter(|t| *t != REPLACE);
        let prefix = match by_kind {
            Some(rel_type) => kind_prefix(parent.as_str(), kind_of(rel_type)),
            None => keys::prefix(parent.as_bytes()),
        };
        let cf = match by_kind {
            Some(_) => Cf::RelationKinds,
            None => Cf::Relations,
        };
        let candidates: Box<dyn Iterator<Item = Result<Child>>> = if query.recurse {
            Box::new(self.descendants(parent, query)?.into_iter().map(Ok))
        } else {
            children(&self.store, cf, &prefix, query.from, query.direction)
        };
        let mut candidates = candidates.peekable();
        let mut events = Vec::new();
        let mut scanned = 0;
        let mut next = None;
        while let Some(child) = candidates.next() {
            let child = child?;
            if !within(child.count) {
                break;
            }
            scanned += 1;
            if wanted(&child)
                && let Some(event) = self.visible_child(room_id, viewer, &mut view, &child)?
            {
                events.push(event);
            }
            if events.len() == query.limit || scanned == MAX_SCAN {
                // A token only when something may follow (no page that is sure to be empty).
                let further = match candidates.peek() {
                    Some(Ok(after)) => within(after.count),
                    Some(Err(_)) => true,
                    None => false,
                };
                if further {
                    next = Some(match query.direction {
                        Direction::Backward => child.count.saturating_sub(1),
                        Direction::Forward => child.count,
                    });
                }
                break;
            }
        }
        Ok(RelationsPage { events, next })
    }

    /// `parent`'s children and theirs, to [`RECURSION_DEPTH`] levels, in the requested order
    /// and past `from`.
    fn descendants(&self, parent: &EventId, query: &RelationsQuery<'_>) -> Result<Vec<Child>> {
        let mut found = Vec::new();
        let mut level = vec![parent.as_str().to_owned()];
        for _ in 0..RECURSION_DEPTH {
            let mut next = Vec::new();
            for id in &level {
                let prefix = keys::prefix(id.as_bytes());
                for child in children(
                    &self.store,
                    Cf::Relations,
                    &prefix,
                    None,
                    Direction::Forward,
                ) {
                    let child = child?;
                    next.push(child.event_id.clone());
                    found.push(child);
                    if found.len() >= MAX_SCAN {
                        break;
                    }
                }
            }
            if next.is_empty() || found.len() >= MAX_SCAN {
                break;
            }
            level = next;
        }
        found.retain(|c| match (query.direction, query.from) {
            (_, None) => true,
            (Direction::Backward, Some(from)) => c.count <= from,
            (Direction::Forward, Some(from)) => c.count > from,
        });
        found.sort_by_key(|c| c.count);
        if query.direction == Direction::Backward {
            found.reverse();
        }
        found.dedup_by_key(|c| c.count);
        Ok(found)
    }

    /// A child event in the client format, if it is in `room_id` and `viewer` may see it.
    fn visible_child(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        view: &mut super::client_event::EventView<'_>,
        child: &Child,
    ) -> Result<Option<Value>> {
        let Ok(event_id) = EventId::parse(&child.event_id) else {
            return Ok(None);
        };
        if !self.event_in_room(room_id, &event_id)? {
            return Ok(None);
        }
        let event = view.event(room_id, &event_id, Some(child.count), Detail::Timeline)?;
        Ok(self
            .may_see_event(room_id, viewer.user_id, &event, child.count)?
            .then_some(event))
    }

    /// A page of a room's threads, newest activity first (`/threads`): the roots, with their
    /// bundled aggregations.
    pub fn threads(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        participated_only: bool,
        from: Option<u64>,
        limit: usize,
    ) -> Result<RelationsPage> {
        let user_id = viewer.user_id;
        self.require_history_reader(room_id, user_id)?;
        let mut view = self.event_view(Some(viewer));
        let prefix = keys::prefix(room_id.as_bytes());
        let mut start = prefix.clone();
        start.extend(keys::u64_be(from.unwrap_or(u64::MAX)));
        let mut events = Vec::new();
        let mut scanned = 0;
        let mut entries = self
            .store
            .scan_prefix_rev_from(Cf::ThreadActivity, &prefix, &start)
            .peekable();
        while let Some(item) = entries.next() {
            let (key, root) = item?;
            scanned += 1;
            let Some(count) = key
                .len()
                .checked_sub(8)
                .and_then(|at| keys::parse_u64_be(&key[at..]))
            else {
                continue;
            };
            // Only the root's current entry counts (an older reply's may linger).
            let Ok(root_id) = EventId::parse(String::from_utf8_lossy(&root).as_ref()) else {
                continue;
            };
            let current = self
                .store
                .get(
                    Cf::ThreadRoots,
                    &thread_key(room_id.as_bytes(), root_id.as_str()),
                )?
                .and_then(|c| thread_latest(&c));
            if current == Some(count)
                && self.event_in_room(room_id, &root_id)?
                && (!participated_only || self.participated(&root_id, user_id)?)
            {
                let event = view.event(room_id, &root_id, None, Detail::Timeline)?;
                let root_count = self.timeline.count_of(&root_id)?.unwrap_or(count);
                if self.may_see_event(room_id, user_id, &event, root_count)? {
                    events.push(event);
                }
            }
            if events.len() == limit || scanned == MAX_SCAN {
                let further = entries.peek().is_some();
                return Ok(RelationsPage {
                    events,
                    next: further.then(|| count.saturating_sub(1)),
                });
            }
        }
        Ok(RelationsPage { events, next: None })
    }

    /// Whether `user_id` wrote a thread's root or replied in it.
    fn participated(&self, root: &EventId, user_id: &UserId) -> Result<bool> {
        let key = keys::join([root.as_bytes(), user_id.as_bytes()]);
        if self.store.contains(Cf::ThreadParticipants, &key)? {
            return Ok(true);
        }
        Ok(self
            .timeline
            .stored_pdu(root)?
            .is_some_and(|root| pdu::str_field(&root.pdu, "sender") == Some(user_id.as_str())))
    }
}

/// What `/relations` asks for.
pub struct RelationsQuery<'a> {
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub direction: Direction,
    pub limit: usize,
    pub recurse: bool,
}

/// A page of `/relations` or `/threads`.
pub struct RelationsPage {
    pub events: Vec<Value>,
    /// The token to continue from, when more may follow.
    pub next: Option<u64>,
}

/// The commit pipeline's part: indexes each event's relation in its batch, takes a redacted
/// event's out, and refuses relations a local user may not make.
pub struct RelationIndex(pub Weak<Services>);

impl EventConsumer for RelationIndex {
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        let Some(services) = self.0.upgrade() else {
            return Ok(None);
        };
        let mut work = RelationWork::default();
        if let Some(redacted) = event.redacted
            && let Some(relation) = relation_of(redacted.pdu)
            && let Some(count) = services.timeline.count_of(redacted.event_id)?
        {
            let sender = pdu::str_field(redacted.pdu, "sender").unwrap_or_default();
            let event_type = pdu::str_field(redacted.pdu, "type").unwrap_or_default();
            let kind = entry_kind(&relation, redacted.pdu);
            work.delete
                .push((Cf::Relations, relation_key(relation.parent, count)));
            work.delete
                .push((Cf::RelationKinds, kind_key(relation.parent, kind, count)));
            if kind == KIND_ANNOTATION
                && let Some(key) = relation.key
            {
                // Only its own entry (another event with the same reaction may hold it).
                let reacted = annotation_key(relation.parent, sender, event_type, key);
                let holder = services.store.get(Cf::Annotations, &reacted)?;
                if holder.as_deref() == Some(&keys::u64_be(count)[..]) {
                    work.delete.push((Cf::Annotations, reacted));
                }
            }
            if kind == KIND_THREAD {
                work.thread_change =
                    services.thread_without(event.room_id, relation.parent, count, sender)?;
            }
        }
        if let Some(relation) = relation_of(event.pdu)
            && services.check_relation(event, &relation)?
        {
            let kind = entry_kind(&relation, event.pdu);
            work.put = Some(NewRelation {
                parent: relation.parent.to_owned(),
                kind,
                value: child_value(
                    origin_server_ts(event.pdu),
                    event.event_id.as_str(),
                    &relation,
                    event.event_type,
                    event.sender.as_str(),
                ),
                annotation: match (kind, relation.key) {
                    (KIND_ANNOTATION, Some(key)) => Some(annotation_key(
                        relation.parent,
                        event.sender.as_str(),
                        event.event_type,
                        key,
                    )),
                    _ => None,
                },
                thread: if kind == KIND_THREAD {
                    let key = thread_key(event.room_id.as_bytes(), relation.parent);
                    Some(ThreadReply {
                        room: event.room_id.as_bytes().to_vec(),
                        participant: keys::join([
                            relation.parent.as_bytes(),
                            event.sender.as_bytes(),
                        ]),
                        latest: services
                            .store
                            .get(Cf::ThreadRoots, &key)?
                            .and_then(|c| thread_latest(&c)),
                        key,
                    })
                } else {
                    None
                },
            });
        }
        Ok((work.put.is_some() || !work.delete.is_empty()).then(|| Box::new(work) as _))
    }
}

impl Services {
    /// Whether `event`'s relation goes into the index: for events made here, `Err` with the
    /// spec's answer when the relation is not allowed; events from elsewhere that point into
    /// another room are left out.
    fn check_relation(&self, event: &Appending<'_>, relation: &Relation<'_>) -> Result<bool> {
        let local = event.origin == Origin::Local;
        let refuse = |kind: ErrorKind, message: &str| -> Result<bool> {
            if local {
                Err(Error::new(StatusCode::BAD_REQUEST, kind, message))
            } else {
                Ok(false)
            }
        };
        let Ok(parent_id) = EventId::parse(relation.parent) else {
            return refuse(
                ErrorKind::InvalidParam,
                "m.relates_to.event_id is not an event ID.",
            );
        };
        let Some(parent) = self.timeline.stored_pdu(&parent_id)? else {
            // Not (yet) known here: indexed, to count once it arrives.
            return Ok(true);
        };
        if !pdu::pdu_in_room(&parent_id, &parent.pdu, event.room_id) {
            return refuse(
                ErrorKind::InvalidParam,
                "Relations must be in the same room.",
            );
        }
        if !local {
            return Ok(true);
        }
        match relation.rel_type {
            ANNOTATION => {
                let Some(key) = relation.key else {
                    return refuse(ErrorKind::InvalidParam, "An annotation needs a key.");
                };
                let reacted = annotation_key(
                    parent_id.as_str(),
                    event.sender.as_str(),
                    event.event_type,
                    key,
                );
                if self.store.contains(Cf::Annotations, &reacted)? {
                    return refuse(
                        ErrorKind::DuplicateAnnotation,
                        "You already reacted with this key.",
                    );
                }
            }
            THREAD if relation_of(&parent.pdu).is_some() => {
                return refuse(
                    ErrorKind::InvalidParam,
                    "Cannot start a thread from an event with a relation.",
                );
            }
            _ => {}
        }
        Ok(true)
    }
}

#[derive(Default)]
struct RelationWork {
    put: Option<NewRelation>,
    /// A redacted event's entries.
    delete: Vec<(Cf, Vec<u8>)>,
    /// A redacted thread reply's thread, as it is without it.
    thread_change: Option<ThreadChange>,
}

/// A reply's stream count and its `relations` value.
type ReplyEntry = (u64, Vec<u8>);

/// What redacting one of a thread's replies changes in the thread indexes.
struct ThreadChange {
    room: Vec<u8>,
    root: String,
    /// The activity entry to drop (the redacted reply was the latest) and the reply that is
    /// latest now, if any is left (its count and `relations` value).
    latest: Option<(u64, Option<ReplyEntry>)>,
    /// The redactor's participant entry, when it was their only reply.
    participant: Option<Vec<u8>>,
}

impl Services {
    /// The change to a thread's indexes when its reply at stream count `redacted` (sent by
    /// `sender`) is redacted: one scan of the root's replies.
    fn thread_without(
        &self,
        room_id: &RoomId,
        root: &str,
        redacted: u64,
        sender: &str,
    ) -> Result<Option<ThreadChange>> {
        let mut latest_left = None;
        let mut sender_left = false;
        let prefix = kind_prefix(root, KIND_THREAD);
        for child in children(
            &self.store,
            Cf::RelationKinds,
            &prefix,
            None,
            Direction::Forward,
        ) {
            let child = child?;
            if child.count != redacted {
                latest_left = Some(child.count);
                sender_left |= child.sender == sender;
            }
        }
        let current = self
            .store
            .get(Cf::ThreadRoots, &thread_key(room_id.as_bytes(), root))?
            .and_then(|c| thread_latest(&c));
        // The reply that becomes the latest, with its entry for `thread_roots`.
        let latest_left = match latest_left {
            Some(count) if current == Some(redacted) => self
                .store
                .get(Cf::Relations, &relation_key(root, count))?
                .map(|value| (count, value)),
            _ => None,
        };
        Ok(Some(ThreadChange {
            room: room_id.as_bytes().to_vec(),
            root: root.to_owned(),
            latest: (current == Some(redacted)).then_some((redacted, latest_left)),
            participant: (!sender_left).then(|| keys::join([root.as_bytes(), sender.as_bytes()])),
        }))
    }
}

struct NewRelation {
    parent: String,
    kind: u8,
    value: Vec<u8>,
    /// A reaction's `annotations` key.
    annotation: Option<Vec<u8>>,
    thread: Option<ThreadReply>,
}

struct ThreadReply {
    room: Vec<u8>,
    /// The thread's `thread_roots`/`thread_counts` key.
    key: Vec<u8>,
    participant: Vec<u8>,
    /// The thread's latest reply before this one.
    latest: Option<u64>,
}

impl Staged for RelationWork {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        for (cf, key) in self.delete.drain(..) {
            batch.delete(cf, key);
        }
        if let Some(change) = self.thread_change.take() {
            let key = thread_key(&change.room, &change.root);
            batch.add(Cf::ThreadCounts, key.clone(), -1);
            if let Some(participant) = change.participant {
                batch.delete(Cf::ThreadParticipants, participant);
            }
            if let Some((dropped, latest)) = change.latest {
                batch.delete(
                    Cf::ThreadActivity,
                    keys::join([&change.room, &keys::u64_be(dropped)[..]]),
                );
                match latest {
                    Some((latest, child)) => {
                        batch.put(Cf::ThreadRoots, key, thread_root_value(latest, &child));
                        batch.put(
                            Cf::ThreadActivity,
                            keys::join([&change.room, &keys::u64_be(latest)[..]]),
                            change.root.into_bytes(),
                        );
                    }
                    None => batch.delete(Cf::ThreadRoots, key),
                }
            }
        }
        let Some(new) = self.put.take() else {
            return Ok(());
        };
        batch.put(
            Cf::RelationKinds,
            kind_key(&new.parent, new.kind, count),
            new.value.clone(),
        );
        if let Some(mark) = mark_for(&new.parent, new.kind) {
            batch.put(Cf::RelationKinds, mark, Vec::new());
        }
        batch.put(
            Cf::Relations,
            relation_key(&new.parent, count),
            new.value.clone(),
        );
        if let Some(annotation) = new.annotation {
            batch.put(Cf::Annotations, annotation, keys::u64_be(count));
        }
        if let Some(thread) = new.thread {
            batch.put(Cf::ThreadParticipants, thread.participant, Vec::new());
            batch.add(Cf::ThreadCounts, thread.key.clone(), 1);
            // A backfilled reply older than the latest does not move the thread.
            if thread.latest.is_none_or(|latest| latest < count) {
                if let Some(latest) = thread.latest {
                    batch.delete(
                        Cf::ThreadActivity,
                        keys::join([&thread.room, &keys::u64_be(latest)[..]]),
                    );
                }
                batch.put(
                    Cf::ThreadRoots,
                    thread.key,
                    thread_root_value(count, &new.value),
                );
                batch.put(
                    Cf::ThreadActivity,
                    keys::join([&thread.room, &keys::u64_be(count)[..]]),
                    new.parent.into_bytes(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::canonical_json::to_canonical_value;
    use serde_json::json;

    use super::*;

    fn pdu(value: Value) -> CanonicalJsonObject {
        match to_canonical_value(value).unwrap() {
            CanonicalJsonValue::Object(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn relation_needs_a_type_and_a_parent() {
        let reaction = pdu(json!({"content": {"m.relates_to": {
            "rel_type": "m.annotation", "event_id": "$p", "key": "👍"}}}));
        assert_eq!(
            relation_of(&reaction),
            Some(Relation {
                rel_type: "m.annotation",
                parent: "$p",
                key: Some("👍")
            })
        );
        let reply =
            pdu(json!({"content": {"m.relates_to": {"m.in_reply_to": {"event_id": "$p"}}}}));
        assert_eq!(relation_of(&reply), None);
        let no_parent = pdu(json!({"content": {"m.relates_to": {"rel_type": "m.thread"}}}));
        assert_eq!(relation_of(&no_parent), None);
        let not_object = pdu(json!({"content": {"m.relates_to": "x"}}));
        assert_eq!(relation_of(&not_object), None);
    }

    #[test]
    fn index_values_round_trip() {
        let relation = Relation {
            rel_type: "m.annotation",
            parent: "$p",
            key: Some("🎉"),
        };
        let value = child_value(42, "$c", &relation, "m.reaction", "@a:x");
        let child = parse_child(&relation_key("$p", 7), &value).unwrap();
        assert_eq!(child.count, 7);
        assert_eq!(child.origin_server_ts, 42);
        assert_eq!(child.event_id, "$c");
        assert_eq!(child.rel_type, "m.annotation");
        assert_eq!(child.event_type, "m.reaction");
        assert_eq!(child.sender, "@a:x");
        assert_eq!(child.key, "🎉");
    }
}
