//! Server-side search (`POST /search`, category `room_events`): a full-text index of the
//! words of messages (`content.body`), room names and topics, kept per room in RocksDB.
//!
//! Words are the text split at everything that is not a letter or a digit, compatibility-
//! decomposed with accents dropped and lower-cased, so "Crème" is found as "creme". Each word
//! is an entry `room_id 0xFF word 0xFF stream count`, written by [`SearchIndex`] (a consumer
//! of the commit pipeline) in the event's own batch and taken out in a redaction's. A query
//! word is a prefix scan within each of the searcher's rooms, so "hel" also finds "hello";
//! the results are the events that have every word of the query.
//!
//! Encrypted rooms are never indexed: their messages are `m.room.encrypted`, whose ciphertext
//! has no words. Only events the searcher may see are returned (membership and history
//! visibility, as `/messages` decides).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedRoomId, RoomId,
    events::room::member::MembershipState,
};
use serde_json::{Value, json};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

use super::{
    client_event::{Detail, Viewer},
    members::Membership,
    pdu,
    sync_filter::EventMatcher,
    timeline::pipeline::{Appending, EventConsumer, Staged},
};
use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, keys},
};

/// Longest word kept (in characters): longer runs are cut, so a pasted key or hash still
/// matches by its start and cannot blow up the index.
const MAX_WORD: usize = 40;
/// Most words indexed per event.
const MAX_WORDS: usize = 2000;
/// Most words a query may have.
const MAX_QUERY_WORDS: usize = 10;
/// Most index entries one query word reads per room.
const MAX_POSTINGS: usize = 100_000;
/// Matches checked for visibility per request, and visible ones counted (`count`).
const MAX_EXAMINED: usize = 5000;
const MAX_COUNTED: usize = 1000;
/// Results per page when the filter names no limit, and the most a page may have.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;

/// The field an event's words come from (the `keys` of a search).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Body = 1,
    Name = 2,
    Topic = 3,
}

impl Field {
    pub fn key(self) -> &'static str {
        match self {
            Field::Body => "content.body",
            Field::Name => "content.name",
            Field::Topic => "content.topic",
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Field::Body),
            2 => Some(Field::Name),
            3 => Some(Field::Topic),
            _ => None,
        }
    }
}

/// The words of `text`, folded (see the module's doc), in order, repeats kept.
pub fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut length = 0;
    let finish = |word: &mut String, length: &mut usize, words: &mut Vec<String>| {
        if !word.is_empty() && words.len() < MAX_WORDS {
            words.push(std::mem::take(word));
        }
        word.clear();
        *length = 0;
    };
    for c in text.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_alphanumeric() {
            if length < MAX_WORD {
                word.extend(c.to_lowercase());
                length += 1;
            }
        } else {
            finish(&mut word, &mut length, &mut words);
        }
    }
    finish(&mut word, &mut length, &mut words);
    words
}

/// The text an event is found by, and which field it is: a message's body, a room's name or
/// topic (state events).
fn searchable(pdu: &CanonicalJsonObject) -> Option<(Field, &str)> {
    let (field, name) = match pdu::str_field(pdu, "type")? {
        "m.room.message" => (Field::Body, "body"),
        "m.room.name" if pdu::str_field(pdu, "state_key") == Some("") => (Field::Name, "name"),
        "m.room.topic" if pdu::str_field(pdu, "state_key") == Some("") => (Field::Topic, "topic"),
        _ => return None,
    };
    match pdu.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get(name) {
            Some(CanonicalJsonValue::String(text)) => Some((field, text.as_str())),
            _ => None,
        },
        _ => None,
    }
}

/// An event's words with their entry values (field, occurrences), before the stream count
/// that completes their keys is known.
fn word_values(pdu: &CanonicalJsonObject) -> Vec<(String, [u8; 5])> {
    let Some((field, text)) = searchable(pdu) else {
        return Vec::new();
    };
    let mut counted: BTreeMap<String, u32> = BTreeMap::new();
    for word in words(text) {
        *counted.entry(word).or_default() += 1;
    }
    counted
        .into_iter()
        .map(|(word, times)| {
            let mut value = [field as u8, 0, 0, 0, 0];
            value[1..].copy_from_slice(&times.to_be_bytes());
            (word, value)
        })
        .collect()
}

/// The index entries of an event at stream count `count`: key and value.
pub fn index_entries(
    room_id: &[u8],
    pdu: &CanonicalJsonObject,
    count: u64,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    word_values(pdu)
        .into_iter()
        .map(|(word, value)| (word_key(room_id, &word, count), value.to_vec()))
        .collect()
}

fn word_key(room_id: &[u8], word: &str, count: u64) -> Vec<u8> {
    keys::join([room_id, word.as_bytes(), &keys::u64_be(count)])
}

/// The commit pipeline's part: an event's words in its batch, a redacted event's out.
pub struct SearchIndex(pub std::sync::Weak<Services>);

impl EventConsumer for SearchIndex {
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        let mut work = SearchWork::default();
        if let Some(redacted) = event.redacted
            && searchable(redacted.pdu).is_some()
            && let Some(services) = self.0.upgrade()
            && let Some(count) = services.timeline.count_of(redacted.event_id)?
        {
            work.delete = index_entries(event.room_id.as_bytes(), redacted.pdu, count)
                .into_iter()
                .map(|(key, _)| key)
                .collect();
        }
        work.words = word_values(event.pdu);
        if !work.words.is_empty() {
            work.room = event.room_id.as_bytes().to_vec();
        }
        Ok((!work.words.is_empty() || !work.delete.is_empty()).then(|| Box::new(work) as _))
    }
}

#[derive(Default)]
struct SearchWork {
    room: Vec<u8>,
    words: Vec<(String, [u8; 5])>,
    delete: Vec<Vec<u8>>,
}

impl Staged for SearchWork {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        for key in self.delete.drain(..) {
            batch.delete(Cf::SearchWords, key);
        }
        for (word, value) in self.words.drain(..) {
            batch.put(
                Cf::SearchWords,
                word_key(&self.room, &word, count),
                value.to_vec(),
            );
        }
        Ok(())
    }
}

/// The order of results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Most matches first (then newest).
    Rank,
    /// Newest first.
    Recent,
}

/// A `room_events` search.
pub struct SearchQuery<'a> {
    pub term: &'a str,
    /// Which fields to look in (empty: all).
    pub fields: Vec<Field>,
    pub filter: &'a EventMatcher,
    pub order: Order,
    /// Results already returned by earlier pages.
    pub skip: usize,
    pub before_limit: usize,
    pub after_limit: usize,
    pub include_profile: bool,
    pub context: bool,
    pub include_state: bool,
    pub group_by_room: bool,
    pub group_by_sender: bool,
}

/// One match: where, its stream count, how often the words occur.
struct Hit {
    room_id: OwnedRoomId,
    count: u64,
    rank: u32,
}

impl Services {
    /// The `room_events` answer of `/search` for `viewer`, in the spec's format; its
    /// `next_batch` counts the matches earlier pages and this one went through.
    pub fn search_room_events(&self, viewer: Viewer<'_>, query: &SearchQuery<'_>) -> Result<Value> {
        let terms: Vec<String> = {
            let mut seen = BTreeSet::new();
            words(query.term)
                .into_iter()
                .filter(|w| seen.insert(w.clone()))
                .take(MAX_QUERY_WORDS)
                .collect()
        };
        if terms.is_empty() {
            return Err(Error::invalid_param(
                "search_term has no words to search for.",
            ));
        }
        let limit = query
            .filter
            .limit
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, MAX_LIMIT);
        let rooms: Vec<OwnedRoomId> = self
            .members
            .rooms_of(viewer.user_id)?
            .into_iter()
            .filter(|(room, m)| {
                m.membership == MembershipState::Join && query.filter.allows_room(room.as_str())
            })
            .map(|(room, _)| room)
            .collect();
        let mut hits = Vec::new();
        for room_id in &rooms {
            self.search_room(room_id, &terms, &query.fields, &mut hits)?;
        }
        match query.order {
            Order::Recent => hits.sort_by_key(|hit| std::cmp::Reverse(hit.count)),
            Order::Rank => hits.sort_by(|a, b| b.rank.cmp(&a.rank).then(b.count.cmp(&a.count))),
        }
        // Only what the user may see counts, is paged through and lends words to the
        // highlights; the visible matches are counted up to a bound (the spec's count is
        // approximate), reading no more than a bounded number of matches.
        let mut visible = Vec::new();
        let mut memberships: HashMap<&RoomId, Option<Membership>> = HashMap::new();
        for hit in hits.iter().take(MAX_EXAMINED) {
            let Some((short, state)) = self.timeline.short_and_state_at(&hit.room_id, hit.count)?
            else {
                continue;
            };
            if !memberships.contains_key(&*hit.room_id) {
                let membership = self.members.membership(&hit.room_id, viewer.user_id)?;
                memberships.insert(&hit.room_id, membership);
            }
            let membership = memberships.get(&*hit.room_id).and_then(Option::as_ref);
            // Indexed events are messages, names and topics, never the viewer's own
            // membership: the state before the event decides.
            let may_see = self.may_see_at(
                &hit.room_id,
                viewer.user_id,
                state,
                hit.count,
                Some(membership),
            )?;
            if may_see {
                visible.push((hit, short));
                if visible.len() >= MAX_COUNTED.max(query.skip + limit + 1) {
                    break;
                }
            }
        }
        let mut view = self.event_view(Some(viewer));
        let mut results = Vec::new();
        let mut highlights = BTreeSet::new();
        for (hit, short) in visible.iter().skip(query.skip).take(limit) {
            let Some(event_id) = self.timeline.event_id_of(*short)? else {
                continue;
            };
            let event_id = &event_id;
            let event = view.event(&hit.room_id, event_id, Some(hit.count), Detail::Timeline)?;
            if !query.filter.matches(&event) {
                continue;
            }
            for field in ["body", "name", "topic"] {
                if let Some(text) = event["content"][field].as_str() {
                    highlights.extend(
                        words(text)
                            .into_iter()
                            .filter(|w| terms.iter().any(|t| w.starts_with(t.as_str()))),
                    );
                }
            }
            let mut result = json!({ "rank": hit.rank, "result": event });
            if query.context {
                result["context"] = self.search_context(&hit.room_id, viewer, event_id, query)?;
            }
            results.push(result);
        }
        let next_batch = (visible.len() > query.skip + limit).then_some(query.skip + limit);
        let total = visible.len();
        highlights.extend(terms.iter().cloned());
        let mut answer = json!({
            "results": results,
            "count": total,
            "highlights": highlights.into_iter().take(50).collect::<Vec<_>>(),
        });
        if let Some(next) = next_batch {
            answer["next_batch"] = next.to_string().into();
        }
        if query.include_state {
            let mut state = serde_json::Map::new();
            let rooms_shown: BTreeSet<&str> = answer["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["result"]["room_id"].as_str())
                .collect();
            for room in rooms_shown {
                let room_id = RoomId::parse(room).map_err(|_| Error::internal("bad room ID"))?;
                let mut events = Vec::new();
                for event_id in self.visible_state(&room_id, viewer.user_id)?.values() {
                    events.push(view.event(&room_id, event_id, None, Detail::State)?);
                }
                state.insert(room.to_owned(), Value::Array(events));
            }
            answer["state"] = Value::Object(state);
        }
        let groups = groups(&answer["results"], query, next_batch);
        if !groups.is_empty() {
            answer["groups"] = Value::Object(groups);
        }
        Ok(answer)
    }

    /// The events of one room that have every word of `terms` (prefix matches). Each word's
    /// entries are read newest first, so a word too common to read whole keeps its newest
    /// matches.
    fn search_room(
        &self,
        room_id: &RoomId,
        terms: &[String],
        fields: &[Field],
        hits: &mut Vec<Hit>,
    ) -> Result<()> {
        let room = room_id.as_bytes();
        let mut found: Option<HashMap<u64, u32>> = None;
        for term in terms {
            let mut prefix = keys::prefix(room);
            prefix.extend_from_slice(term.as_bytes());
            let Some(end) = keys::prefix_end(&prefix) else {
                continue;
            };
            let mut this: HashMap<u64, u32> = HashMap::new();
            for item in self
                .store
                .scan_prefix_rev_from(Cf::SearchWords, &prefix, &end)
                .take(MAX_POSTINGS)
            {
                let (key, value) = item?;
                // `room 0xFF word 0xFF count`: the count is the last eight bytes.
                let Some(split) = key.len().checked_sub(9) else {
                    continue;
                };
                let Some(count) = keys::parse_u64_be(&key[split + 1..]) else {
                    continue;
                };
                let field = value.first().copied().and_then(Field::from_byte);
                if !fields.is_empty() && field.is_none_or(|f| !fields.contains(&f)) {
                    continue;
                }
                let times = value
                    .get(1..5)
                    .and_then(|t| t.try_into().ok())
                    .map_or(1, u32::from_be_bytes);
                *this.entry(count).or_default() += times;
            }
            found = Some(match found {
                None => this,
                Some(before) => before
                    .into_iter()
                    .filter_map(|(count, rank)| this.get(&count).map(|more| (count, rank + more)))
                    .collect(),
            });
            if found.as_ref().is_some_and(HashMap::is_empty) {
                return Ok(());
            }
        }
        for (count, rank) in found.unwrap_or_default() {
            hits.push(Hit {
                room_id: room_id.to_owned(),
                count,
                rank,
            });
        }
        Ok(())
    }

    /// A result's context: events before and after it, and the senders' profiles if asked.
    fn search_context(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        event_id: &EventId,
        query: &SearchQuery<'_>,
    ) -> Result<Value> {
        let limit = 2 * query.before_limit.max(query.after_limit);
        let context = self.context(
            room_id,
            viewer,
            event_id,
            limit,
            &ruma::api::client::filter::RoomEventFilter::default(),
        )?;
        let (cut_before, cut_after) = (
            context.events_before.len() > query.before_limit,
            context.events_after.len() > query.after_limit,
        );
        let before: Vec<Value> = context
            .events_before
            .into_iter()
            .take(query.before_limit)
            .collect();
        let after: Vec<Value> = context
            .events_after
            .into_iter()
            .take(query.after_limit)
            .collect();
        // Where the events returned end (not those read and left out), as `/messages` tokens.
        let count_of = |event: Option<&Value>| -> Result<Option<u64>> {
            let id = event
                .and_then(|e| e["event_id"].as_str())
                .unwrap_or(event_id.as_str());
            Ok(match EventId::parse(id) {
                Ok(id) => self.timeline.count_of(&id)?,
                Err(_) => None,
            })
        };
        let start = match cut_before {
            true => count_of(before.last())?.map_or(context.start, |c| c.saturating_sub(1)),
            false => context.start,
        };
        let end = match cut_after {
            true => count_of(after.last())?.unwrap_or(context.end),
            false => context.end,
        };
        let mut answer = json!({
            "start": start.to_string(),
            "end": end.to_string(),
            "events_before": before,
            "events_after": after,
        });
        if query.include_profile {
            let mut profiles = serde_json::Map::new();
            let senders: BTreeSet<&str> = answer["events_before"]
                .as_array()
                .into_iter()
                .chain(answer["events_after"].as_array())
                .flatten()
                .chain(std::iter::once(&context.event))
                .filter_map(|e| e["sender"].as_str())
                .collect();
            let state = self.timeline.current_state(room_id)?;
            for sender in senders {
                let mut profile = serde_json::Map::new();
                if let Some(id) = state.get(&("m.room.member".to_owned(), sender.to_owned())) {
                    let member = self.timeline.event_fields(room_id, id)?;
                    for field in ["displayname", "avatar_url"] {
                        if let Some(value) = member["content"][field].as_str() {
                            profile.insert(field.into(), value.into());
                        }
                    }
                }
                profiles.insert(sender.to_owned(), Value::Object(profile));
            }
            answer["profile_info"] = Value::Object(profiles);
        }
        Ok(answer)
    }
}

/// `groups`: the page's results by room and by sender, as asked.
fn groups(
    results: &Value,
    query: &SearchQuery<'_>,
    next: Option<usize>,
) -> serde_json::Map<String, Value> {
    let mut groups = serde_json::Map::new();
    for (wanted, key) in [
        (query.group_by_room, "room_id"),
        (query.group_by_sender, "sender"),
    ] {
        if !wanted {
            continue;
        }
        let mut by: Vec<(String, Vec<Value>)> = Vec::new();
        for result in results.as_array().into_iter().flatten() {
            let (Some(value), Some(event_id)) = (
                result["result"][key].as_str(),
                result["result"]["event_id"].as_str(),
            ) else {
                continue;
            };
            match by.iter_mut().find(|(v, _)| v == value) {
                Some((_, ids)) => ids.push(event_id.into()),
                None => by.push((value.to_owned(), vec![event_id.into()])),
            }
        }
        let mut group = serde_json::Map::new();
        for (order, (value, ids)) in by.into_iter().enumerate() {
            let mut entry = json!({ "results": ids, "order": order });
            if let Some(next) = next {
                entry["next_batch"] = next.to_string().into();
            }
            group.insert(value, entry);
        }
        groups.insert(key.to_owned(), Value::Object(group));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_folded_and_split() {
        assert_eq!(
            words("Crème Brûlée, s'il-vous-plaît!"),
            ["creme", "brulee", "s", "il", "vous", "plait"]
        );
        assert_eq!(words("ÅNGSTRÖM  ﬁne 42nd"), ["angstrom", "fine", "42nd"]);
        assert_eq!(words("日本語 テキスト"), ["日本語", "テキスト"]);
        assert!(words(" ... !!! ").is_empty());
        let long = "a".repeat(100);
        assert_eq!(words(&long), ["a".repeat(MAX_WORD)]);
    }
}
