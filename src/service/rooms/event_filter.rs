//! Whether an event passes a `RoomEventFilter` (the client-server API's "Filtering" section):
//! one function for every endpoint that takes one (`/context`, and `/messages` and `/sync`
//! timelines and state).
//!
//! Covered: `rooms`/`not_rooms`, `senders`/`not_senders`, `types`/`not_types` (with `*`
//! wildcards), `contains_url`. `limit` and the lazy-loading options are about how many and which
//! member events an endpoint returns, so the endpoint applies them.

use ruma::api::client::filter::{RoomEventFilter, UrlFilter};
use serde_json::Value;

/// Whether `name` matches `pattern`, where each `*` matches any sequence of characters
/// (including none) and everything else matches itself.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    // Without a `*` the pattern is a plain string.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    // Greedy leftmost matching of the middle pieces is enough: `*` absorbs whatever lies
    // between them, and the last piece must end the name.
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether an event with these fields passes `filter`. `content` is the event's content (for
/// `contains_url`).
pub fn passes(
    filter: &RoomEventFilter,
    room_id: &str,
    sender: &str,
    event_type: &str,
    content: &Value,
) -> bool {
    // The `not_` lists win over the allow lists, as the spec says.
    if filter.not_rooms.iter().any(|r| r.as_str() == room_id)
        || filter
            .rooms
            .as_ref()
            .is_some_and(|rooms| !rooms.iter().any(|r| r.as_str() == room_id))
    {
        return false;
    }
    if filter.not_senders.iter().any(|s| s.as_str() == sender)
        || filter
            .senders
            .as_ref()
            .is_some_and(|senders| !senders.iter().any(|s| s.as_str() == sender))
    {
        return false;
    }
    if filter
        .not_types
        .iter()
        .any(|pattern| glob_matches(pattern, event_type))
        || filter.types.as_ref().is_some_and(|types| {
            !types
                .iter()
                .any(|pattern| glob_matches(pattern, event_type))
        })
    {
        return false;
    }
    let has_url = content.get("url").is_some();
    match filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => has_url,
        Some(UrlFilter::EventsWithoutUrl) => !has_url,
        _ => true,
    }
}

/// Whether an event in the client format (`type`, `sender`, `room_id`, `content`) passes
/// `filter`.
pub fn event_passes(filter: &RoomEventFilter, event: &Value) -> bool {
    let field = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or_default();
    passes(
        filter,
        field("room_id"),
        field("sender"),
        field("type"),
        event.get("content").unwrap_or(&Value::Null),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter(json: Value) -> RoomEventFilter {
        serde_json::from_value(json).unwrap()
    }

    fn event(kind: &str, sender: &str, content: Value) -> Value {
        json!({ "type": kind, "sender": sender, "room_id": "!r:x", "content": content })
    }

    #[test]
    fn wildcards() {
        assert!(glob_matches("m.room.message", "m.room.message"));
        assert!(!glob_matches("m.room.message", "m.room.message.x"));
        assert!(!glob_matches("m.room", "m.room.message"));
        assert!(glob_matches("m.room.*", "m.room.message"));
        assert!(glob_matches("m.room.*", "m.room."));
        assert!(!glob_matches("m.room.*", "m.roo"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*.member", "m.room.member"));
        assert!(glob_matches("m.*.m*r", "m.room.member"));
        assert!(!glob_matches("m.*.x*r", "m.room.member"));
        assert!(glob_matches("a*a", "aa"));
        assert!(!glob_matches("a*a", "a"));
        assert!(glob_matches("**", "anything"));
    }

    #[test]
    fn fields() {
        let msg = event("m.room.message", "@a:x", json!({ "body": "hi" }));
        let image = event("m.room.message", "@b:x", json!({ "url": "mxc://x/y" }));
        let member = event("m.room.member", "@a:x", json!({ "membership": "join" }));

        let empty = RoomEventFilter::default();
        assert!(
            [&msg, &image, &member]
                .iter()
                .all(|e| event_passes(&empty, e))
        );

        let types = filter(json!({ "types": ["m.room.m*"], "not_types": ["m.room.member"] }));
        assert!(event_passes(&types, &msg));
        assert!(!event_passes(&types, &member), "not_types wins");
        assert!(
            !event_passes(&filter(json!({ "types": [] })), &msg),
            "empty list: nothing"
        );

        let senders = filter(json!({ "senders": ["@a:x", "@b:x"], "not_senders": ["@b:x"] }));
        assert!(event_passes(&senders, &msg));
        assert!(!event_passes(&senders, &image));

        let rooms = filter(json!({ "rooms": ["!r:x"] }));
        assert!(event_passes(&rooms, &msg));
        assert!(!event_passes(
            &filter(json!({ "rooms": ["!other:x"] })),
            &msg
        ));
        assert!(!event_passes(
            &filter(json!({ "not_rooms": ["!r:x"] })),
            &msg
        ));

        let with_url = filter(json!({ "contains_url": true }));
        let without_url = filter(json!({ "contains_url": false }));
        assert!(event_passes(&with_url, &image) && !event_passes(&with_url, &msg));
        assert!(!event_passes(&without_url, &image) && event_passes(&without_url, &msg));
    }
}
