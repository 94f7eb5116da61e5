//! Event filters (the spec's `EventFilter` / `RoomEventFilter`), compiled once per request from
//! ruma's filter types and applied to events in the client format. Used by `/sync` for each of
//! its sections, and by every endpoint that takes a `RoomEventFilter`.

use std::collections::HashSet;

use ruma::api::client::filter::{
    Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter, RoomFilter, UrlFilter,
};
use serde_json::{Map, Value};

use super::client_event::ClientEvent;

/// Largest `limit` any filter may ask for; larger values are clamped.
pub const MAX_LIMIT: usize = 100;

/// Which events pass: types (with `*` wildcards), senders, rooms and the `url` test.
#[derive(Clone, Debug, Default)]
pub struct EventMatcher {
    types: Option<Vec<String>>,
    not_types: Vec<String>,
    senders: Option<HashSet<String>>,
    not_senders: HashSet<String>,
    rooms: Option<HashSet<String>>,
    not_rooms: HashSet<String>,
    contains_url: Option<bool>,
    /// The filter's `limit`, if it set one (already clamped to 1..=[`MAX_LIMIT`]).
    pub limit: Option<usize>,
}

/// A `*` in a filter's type matches any run of characters (also none).
fn type_matches(pattern: &str, event_type: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = event_type.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: the whole type must match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

fn clamp_limit(limit: Option<ruma::UInt>) -> Option<usize> {
    limit.map(|l| {
        usize::try_from(u64::from(l))
            .unwrap_or(MAX_LIMIT)
            .clamp(1, MAX_LIMIT)
    })
}

fn id_set<T: AsRef<str>>(ids: &[T]) -> HashSet<String> {
    ids.iter().map(|id| id.as_ref().to_owned()).collect()
}

impl EventMatcher {
    /// From a `RoomEventFilter` (timeline, state, ephemeral, room account data, `/messages`).
    pub fn from_room_event_filter(filter: &RoomEventFilter) -> Self {
        Self {
            types: filter.types.clone(),
            not_types: filter.not_types.clone(),
            senders: filter.senders.as_deref().map(id_set),
            not_senders: id_set(&filter.not_senders),
            rooms: filter.rooms.as_deref().map(id_set),
            not_rooms: id_set(&filter.not_rooms),
            contains_url: filter.url_filter.map(|u| u == UrlFilter::EventsWithUrl),
            limit: clamp_limit(filter.limit),
        }
    }

    /// From an `EventFilter` (global account data, presence).
    pub fn from_event_filter(filter: &Filter) -> Self {
        Self {
            types: filter.types.clone(),
            not_types: filter.not_types.clone(),
            senders: filter.senders.as_deref().map(id_set),
            not_senders: id_set(&filter.not_senders),
            limit: clamp_limit(filter.limit),
            ..Self::default()
        }
    }

    /// Whether any event of this type could pass (used to skip work for excluded sections).
    pub fn allows_type(&self, event_type: &str) -> bool {
        if self.not_types.iter().any(|p| type_matches(p, event_type)) {
            return false;
        }
        self.types
            .as_ref()
            .is_none_or(|types| types.iter().any(|p| type_matches(p, event_type)))
    }

    /// Whether the filter's `rooms`/`not_rooms` let this room through.
    pub fn allows_room(&self, room_id: &str) -> bool {
        !self.not_rooms.contains(room_id)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.contains(room_id))
    }

    /// Whether an event (client format; `sender` may be absent for ephemeral and account data
    /// events) passes.
    pub fn matches(&self, event: &Value) -> bool {
        self.matches_parts(
            event["type"].as_str().unwrap_or_default(),
            event["sender"].as_str(),
            event["room_id"].as_str(),
            || event["content"].get("url").is_some(),
        )
    }

    /// [`EventMatcher::matches`] for an event made straight from its stored form.
    pub fn matches_event(&self, event: &ClientEvent) -> bool {
        self.matches_parts(
            event.event_type().unwrap_or_default(),
            event.sender(),
            Some(event.room_id().as_str()),
            || event.has_url(),
        )
    }

    fn matches_parts(
        &self,
        event_type: &str,
        sender: Option<&str>,
        room_id: Option<&str>,
        has_url: impl FnOnce() -> bool,
    ) -> bool {
        if !self.allows_type(event_type) {
            return false;
        }
        if let Some(sender) = sender {
            if self.not_senders.contains(sender) {
                return false;
            }
            if self.senders.as_ref().is_some_and(|s| !s.contains(sender)) {
                return false;
            }
        }
        if let Some(room_id) = room_id
            && !self.allows_room(room_id)
        {
            return false;
        }
        if let Some(wanted) = self.contains_url
            && has_url() != wanted
        {
            return false;
        }
        true
    }
}

/// Lazy-loading of member events, as the state filter asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LazyMembers {
    /// Every member event, as any other state.
    Off,
    /// Only the members the returned events need; `redundant`: even those already sent.
    On { redundant: bool },
}

/// A whole sync filter, compiled.
#[derive(Clone, Debug)]
pub struct SyncFilter {
    rooms: EventMatcher,
    pub include_leave: bool,
    pub timeline: EventMatcher,
    pub state: EventMatcher,
    pub ephemeral: EventMatcher,
    pub room_account_data: EventMatcher,
    pub account_data: EventMatcher,
    pub presence: EventMatcher,
    pub lazy_members: LazyMembers,
    /// `unread_thread_notifications`: counts per thread (the room's counts then cover the main
    /// timeline alone).
    pub thread_counts: bool,
    /// `event_fields`: dot-separated paths of the fields to keep in room events.
    event_fields: Option<Vec<Vec<String>>>,
}

impl Default for SyncFilter {
    fn default() -> Self {
        Self::new(&FilterDefinition::default())
    }
}

impl SyncFilter {
    pub fn new(filter: &FilterDefinition) -> Self {
        let RoomFilter {
            include_leave,
            account_data,
            timeline,
            ephemeral,
            state,
            not_rooms,
            rooms,
            ..
        } = &filter.room;
        // Clients put `lazy_load_members` on the state filter (the spec's place); some put it
        // on the timeline filter too. Either turns it on.
        let lazy = match (state.lazy_load_options, timeline.lazy_load_options) {
            (
                LazyLoadOptions::Enabled {
                    include_redundant_members,
                },
                _,
            )
            | (
                LazyLoadOptions::Disabled,
                LazyLoadOptions::Enabled {
                    include_redundant_members,
                },
            ) => LazyMembers::On {
                redundant: include_redundant_members,
            },
            _ => LazyMembers::Off,
        };
        let thread_counts =
            timeline.unread_thread_notifications || state.unread_thread_notifications;
        Self {
            thread_counts,
            rooms: EventMatcher {
                rooms: rooms.as_deref().map(id_set),
                not_rooms: id_set(not_rooms),
                ..EventMatcher::default()
            },
            include_leave: *include_leave,
            timeline: EventMatcher::from_room_event_filter(timeline),
            state: EventMatcher::from_room_event_filter(state),
            ephemeral: EventMatcher::from_room_event_filter(ephemeral),
            room_account_data: EventMatcher::from_room_event_filter(account_data),
            account_data: EventMatcher::from_event_filter(&filter.account_data),
            presence: EventMatcher::from_event_filter(&filter.presence),
            lazy_members: lazy,
            event_fields: filter.event_fields.as_ref().map(|fields| {
                fields
                    .iter()
                    .map(|f| split_path(f))
                    .filter(|p| !p.is_empty())
                    .collect()
            }),
        }
    }

    /// Whether a room takes part in this sync at all (`room.rooms` / `room.not_rooms`).
    pub fn includes_room(&self, room_id: &str) -> bool {
        self.rooms.allows_room(room_id)
    }

    /// Whether `event_fields` cuts events down (see [`SyncFilter::project`]).
    pub fn projects(&self) -> bool {
        self.event_fields.is_some()
    }

    /// Keeps only the fields `event_fields` names (all of them when it is absent).
    pub fn project(&self, event: Value) -> Value {
        let Some(paths) = &self.event_fields else {
            return event;
        };
        let mut kept = Map::new();
        for path in paths {
            copy_path(&event, &mut kept, path);
        }
        Value::Object(kept)
    }
}

/// Splits a dot-separated property path; `\.` is a literal dot and `\\` a backslash.
fn split_path(path: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    parts.last_mut().expect("never empty").push(next);
                }
            }
            '.' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    if parts.iter().any(String::is_empty) {
        return Vec::new();
    }
    parts
}

/// Copies the value at `path` of `from` (if present) into `to`, creating the objects on the way.
fn copy_path(from: &Value, to: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = from.get(first) else {
        return;
    };
    if rest.is_empty() {
        to.insert(first.clone(), value.clone());
        return;
    }
    let entry = to
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(inner) = entry {
        copy_path(value, inner, rest);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn wildcards_match_any_run_of_characters() {
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(type_matches("*", "anything"));
        assert!(type_matches("m.*.message", "m.room.message"));
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(!type_matches("m.room.message", "m.room.messages"));
        assert!(!type_matches("m.room.*", "m.call.invite"));
        assert!(type_matches("*.member", "m.room.member"));
        assert!(!type_matches("*.member", "m.room.members"));
    }

    fn filter(json: Value) -> RoomEventFilter {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn exclusions_win_over_inclusions() {
        let matcher = EventMatcher::from_room_event_filter(&filter(json!({
            "types": ["m.room.*"],
            "not_types": ["m.room.member"],
            "senders": ["@a:x", "@b:x"],
            "not_senders": ["@b:x"],
        })));
        let event = |t: &str, s: &str| json!({ "type": t, "sender": s, "content": {} });
        assert!(matcher.matches(&event("m.room.message", "@a:x")));
        assert!(!matcher.matches(&event("m.room.member", "@a:x")));
        assert!(!matcher.matches(&event("m.room.message", "@b:x")));
        assert!(!matcher.matches(&event("m.room.message", "@c:x")));
        assert!(!matcher.matches(&event("m.call.invite", "@a:x")));
    }

    #[test]
    fn contains_url_and_rooms() {
        let with_url = EventMatcher::from_room_event_filter(&filter(json!({
            "contains_url": true, "not_rooms": ["!no:x"]
        })));
        let image = json!({ "type": "m.room.message", "room_id": "!r:x", "content": { "url": "mxc://x/y" } });
        let text =
            json!({ "type": "m.room.message", "room_id": "!r:x", "content": { "body": "hi" } });
        assert!(with_url.matches(&image));
        assert!(!with_url.matches(&text));
        let mut elsewhere = image.clone();
        elsewhere["room_id"] = json!("!no:x");
        assert!(!with_url.matches(&elsewhere));
    }

    #[test]
    fn event_fields_keep_only_the_named_paths() {
        let definition: FilterDefinition =
            serde_json::from_value(json!({ "event_fields": ["type", "content.body", "a\\.b"] }))
                .unwrap();
        let filter = SyncFilter::new(&definition);
        let event = json!({
            "type": "m.room.message",
            "sender": "@a:x",
            "content": { "body": "hi", "msgtype": "m.text" },
            "a.b": 1,
        });
        assert_eq!(
            filter.project(event),
            json!({ "type": "m.room.message", "content": { "body": "hi" }, "a.b": 1 })
        );
    }

    #[test]
    fn lazy_loading_from_either_filter() {
        let state: FilterDefinition =
            serde_json::from_value(json!({ "room": { "state": { "lazy_load_members": true } } }))
                .unwrap();
        assert_eq!(
            SyncFilter::new(&state).lazy_members,
            LazyMembers::On { redundant: false }
        );
        let timeline: FilterDefinition = serde_json::from_value(json!({
            "room": { "timeline": { "lazy_load_members": true, "include_redundant_members": true } }
        }))
        .unwrap();
        assert_eq!(
            SyncFilter::new(&timeline).lazy_members,
            LazyMembers::On { redundant: true }
        );
        assert_eq!(SyncFilter::default().lazy_members, LazyMembers::Off);
    }
}
