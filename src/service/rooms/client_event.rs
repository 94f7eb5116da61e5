//! Events as clients see them. Every room event a client or an application service receives —
//! in `/sync`, `/messages`, `/context`, `/event`, `/state`, `/members`, appservice
//! transactions — is made here from the stored PDU, in the spec's `ClientEvent` format
//! (`/sync` then drops `room_id`: `ClientEventWithoutRoomID`), with the `unsigned` fields the
//! server adds for whoever asked:
//!
//! - `age`: milliseconds since the event was sent;
//! - `transaction_id`: to the device that sent it, the ID of its transaction, so the client
//!   can replace its local echo with the event (without it, clients show a message twice);
//! - `membership`: the viewer's membership when the event was sent (spec v1.11);
//! - `prev_content`, `prev_sender`, `replaces_state`: for a state event, the one it replaced
//!   ("changed their display name from A to B");
//! - `redacted_because` and `redacted_by`: for a redacted event, the redaction, as a client
//!   event, and its ID;
//! - `m.relations`: for a timeline event, the aggregations of the events that relate to it
//!   (its edit, its thread, references; see `relations`).
//!
//! The fields of a remote PDU's own `unsigned` are not passed on: they are another server's
//! claims about its own view.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, DeviceId, EventId, OwnedRoomId, RoomId, UserId,
};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::{members::Membership, pdu, relations, timeline::StoredPdu};
use crate::{Error, Result, service::Services, utils};

/// The top-level fields a client event takes from its PDU.
const CLIENT_FIELDS: [&str; 6] = [
    "type",
    "content",
    "sender",
    "origin_server_ts",
    "state_key",
    "redacts",
];

/// A PDU's fields in the client format, without `unsigned`: what clients and the server's own
/// reads (content, sender, type) share. The one place a PDU becomes a client event's body.
pub(crate) fn client_fields(
    room_id: &RoomId,
    event_id: &EventId,
    pdu: &CanonicalJsonObject,
) -> Map<String, Value> {
    let mut event = Map::new();
    for field in CLIENT_FIELDS {
        if let Some(value) = pdu.get(field) {
            event.insert(field.to_owned(), json_value(value));
        }
    }
    event.insert("event_id".into(), event_id.as_str().into());
    event.insert("room_id".into(), room_id.as_str().into());
    // v11+ keep `redacts` in the content; clients built for older rooms read it at the top.
    if !event.contains_key("redacts")
        && let Some(redacts) = event.get("content").and_then(|c| c.get("redacts")).cloned()
    {
        event.insert("redacts".into(), redacts);
    }
    event
}

/// A client event written straight from its stored PDU: serialised field by field from the
/// PDU's own values, never copied into a `serde_json::Value` tree first (a page of history
/// spent a quarter of its time building, serialising and dropping those trees). The fields and
/// their order are [`client_fields`]' (sorted, as a `serde_json::Map` has them), then
/// `unsigned`.
pub struct ClientEvent {
    stored: Arc<StoredPdu>,
    room_id: OwnedRoomId,
    /// `false` in `/sync`'s `ClientEventWithoutRoomID` format (see [`without_room_id`]).
    with_room_id: bool,
    /// The event's stream count where the reader knew it.
    pub count: Option<u64>,
    unsigned: Map<String, Value>,
}

impl ClientEvent {
    fn field(&self, name: &str) -> Option<&CanonicalJsonValue> {
        self.stored.pdu.get(name)
    }

    pub fn event_id(&self) -> &EventId {
        &self.stored.event_id
    }

    pub fn event_type(&self) -> Option<&str> {
        pdu::str_field(&self.stored.pdu, "type")
    }

    pub fn sender(&self) -> Option<&str> {
        pdu::str_field(&self.stored.pdu, "sender")
    }

    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }

    pub fn is_state(&self) -> bool {
        self.field("state_key").is_some()
    }

    pub fn state_key(&self) -> Option<&str> {
        pdu::str_field(&self.stored.pdu, "state_key")
    }

    /// `content.membership` (of a member event).
    pub fn membership(&self) -> Option<&str> {
        pdu::content_str(&self.stored.pdu, "membership")
    }

    /// The event in `/sync`'s format: without `room_id`, also in the redaction it may carry.
    pub fn without_room_id(mut self) -> Self {
        self.with_room_id = false;
        strip_room_id_of_redaction(&mut self.unsigned);
        self
    }

    /// Whether its content has a `url` (the filters' `contains_url`).
    pub fn has_url(&self) -> bool {
        matches!(self.field("content"), Some(CanonicalJsonValue::Object(c)) if c.contains_key("url"))
    }

    /// `redacts` at the top, or in the content (v11+), where clients built for older rooms
    /// read it at the top.
    fn redacts(&self) -> Option<&CanonicalJsonValue> {
        self.field("redacts")
            .or_else(|| match self.field("content") {
                Some(CanonicalJsonValue::Object(content)) => content.get("redacts"),
                _ => None,
            })
    }

    /// The event as a `serde_json` value, for callers that edit it.
    pub fn into_value(mut self) -> Value {
        let unsigned = std::mem::take(&mut self.unsigned);
        self.value_with(unsigned)
    }

    /// [`ClientEvent::into_value`] of a copy.
    pub fn to_value(&self) -> Value {
        self.value_with(self.unsigned.clone())
    }

    fn value_with(&self, unsigned: Map<String, Value>) -> Value {
        let mut event = client_fields(&self.room_id, &self.stored.event_id, &self.stored.pdu);
        if !self.with_room_id {
            event.remove("room_id");
        }
        event.insert("unsigned".into(), Value::Object(unsigned));
        Value::Object(event)
    }
}

impl Serialize for ClientEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(content) = self.field("content") {
            map.serialize_entry("content", content)?;
        }
        map.serialize_entry("event_id", self.stored.event_id.as_str())?;
        if let Some(ts) = self.field("origin_server_ts") {
            map.serialize_entry("origin_server_ts", ts)?;
        }
        if let Some(redacts) = self.redacts() {
            map.serialize_entry("redacts", redacts)?;
        }
        if self.with_room_id {
            map.serialize_entry("room_id", self.room_id.as_str())?;
        }
        for field in ["sender", "state_key", "type"] {
            if let Some(value) = self.field(field) {
                map.serialize_entry(field, value)?;
            }
        }
        map.serialize_entry("unsigned", &self.unsigned)?;
        map.end()
    }
}

/// A canonical JSON value as a `serde_json` one, built from the borrowed value (cloning it
/// first and converting the copy allocates every map twice).
fn json_value(value: &CanonicalJsonValue) -> Value {
    match value {
        CanonicalJsonValue::Null => Value::Null,
        CanonicalJsonValue::Bool(b) => Value::Bool(*b),
        CanonicalJsonValue::Integer(i) => Value::from(i64::from(*i)),
        CanonicalJsonValue::String(s) => Value::String(s.clone()),
        CanonicalJsonValue::Array(items) => Value::Array(items.iter().map(json_value).collect()),
        CanonicalJsonValue::Object(object) => Value::Object(
            object
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        ),
    }
}

/// The redaction as a redacted PDU records it in `unsigned.redacted_because`: its client
/// fields (a PDU's values are canonical JSON, so the conversion holds).
pub(crate) fn redaction_record(
    room_id: &RoomId,
    event_id: &EventId,
    pdu: &CanonicalJsonObject,
) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(Value::Object(client_fields(room_id, event_id, pdu))) {
        Ok(CanonicalJsonValue::Object(record)) => record,
        _ => CanonicalJsonObject::new(),
    }
}

/// The redaction recorded in a redacted PDU's `unsigned.redacted_because`, as a client event.
/// culvert records it in the client format; databases from before that hold the redaction's
/// PDU, whose event ID (from room version 3 on) is its reference hash.
fn redaction_as_client_event(
    services: &Services,
    room_id: &RoomId,
    because: &CanonicalJsonObject,
) -> Option<Value> {
    if because.contains_key("event_id") && !because.contains_key("hashes") {
        return Some(CanonicalJsonValue::Object(because.clone()).into());
    }
    let event_id = match pdu::str_field(because, "event_id") {
        Some(id) => EventId::parse(id).ok()?,
        None => {
            let version = services.timeline.room(room_id).ok()??.version;
            let rules = version.rules()?;
            let hash = ruma::signatures::reference_hash(because, &rules).ok()?;
            EventId::parse(format!("${hash}")).ok()?
        }
    };
    Some(Value::Object(client_fields(room_id, &event_id, because)))
}

/// An event in the `ClientEventWithoutRoomID` format of `/sync`: without `room_id`, also in the
/// redaction it may carry.
pub fn without_room_id(mut event: Value) -> Value {
    if let Some(object) = event.as_object_mut() {
        object.remove("room_id");
        if let Some(Value::Object(unsigned)) = object.get_mut("unsigned") {
            strip_room_id_of_redaction(unsigned);
        }
    }
    event
}

/// Takes `room_id` out of the redaction an event's `unsigned` may carry (`/sync`'s format).
fn strip_room_id_of_redaction(unsigned: &mut Map<String, Value>) {
    if let Some(Value::Object(because)) = unsigned.get_mut("redacted_because") {
        because.remove("room_id");
    }
}

/// Who an event is formatted for.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub user_id: &'a UserId,
    /// The requesting device, which sees its own transaction IDs.
    pub device_id: Option<&'a DeviceId>,
}

/// How much of `unsigned` to work out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Timeline events (`/sync` timelines, `/messages`, `/context`, `/event`): everything,
    /// including the viewer's membership at the event and what a state event replaced.
    Timeline,
    /// State sections and member lists: `age`, `transaction_id` and `redacted_because`.
    State,
    /// A timeline event bundled inside another's aggregations (a thread's latest reply, an
    /// edit): like `Timeline`, but of its own aggregations only its edit.
    Bundled,
}

/// One request's view of events: formats them for its viewer, remembering what it read
/// (the viewer's membership per room) for the next event.
pub struct EventView<'a> {
    services: &'a Services,
    viewer: Option<Viewer<'a>>,
    now: u64,
    /// The viewer's current membership record per room.
    current: HashMap<OwnedRoomId, Option<Membership>>,
}

impl Services {
    /// Formats events for `viewer` (`None`: an application service, which gets no
    /// viewer-specific fields).
    pub fn event_view<'a>(&'a self, viewer: Option<Viewer<'a>>) -> EventView<'a> {
        EventView {
            services: self,
            viewer,
            now: utils::now_millis(),
            current: HashMap::new(),
        }
    }
}

impl EventView<'_> {
    /// The event `event_id` of `room_id` as a client event, with `count` its stream count
    /// where the caller knows it.
    pub fn event(
        &mut self,
        room_id: &RoomId,
        event_id: &EventId,
        count: Option<u64>,
        detail: Detail,
    ) -> Result<Value> {
        self.client_event_by_id(room_id, event_id, count, detail)
            .map(ClientEvent::into_value)
    }

    /// An event already read (by its short ID, from a timeline) as a [`ClientEvent`], which
    /// holds the stored event and is serialised from it.
    pub(crate) fn client_event(
        &mut self,
        room_id: &RoomId,
        stored: Arc<StoredPdu>,
        count: Option<u64>,
        detail: Detail,
    ) -> Result<ClientEvent> {
        let unsigned = self.unsigned(room_id, &stored, count, detail)?;
        Ok(ClientEvent {
            stored,
            room_id: room_id.to_owned(),
            with_room_id: true,
            count,
            unsigned,
        })
    }

    /// The event `event_id` as a [`ClientEvent`].
    pub(crate) fn client_event_by_id(
        &mut self,
        room_id: &RoomId,
        event_id: &EventId,
        count: Option<u64>,
        detail: Detail,
    ) -> Result<ClientEvent> {
        let stored = self
            .services
            .timeline
            .stored_pdu(event_id)?
            .ok_or_else(|| Error::not_found("No such event."))?;
        self.client_event(room_id, stored, count, detail)
    }

    fn unsigned(
        &mut self,
        room_id: &RoomId,
        stored: &StoredPdu,
        count: Option<u64>,
        detail: Detail,
    ) -> Result<Map<String, Value>> {
        let event = &stored.pdu;
        let mut unsigned = Map::new();
        if let Some(CanonicalJsonValue::Integer(ts)) = stored.pdu.get("origin_server_ts") {
            let ts = u64::try_from(i64::from(*ts)).unwrap_or(0);
            unsigned.insert("age".into(), self.now.saturating_sub(ts).into());
        }
        if let Some(CanonicalJsonValue::Object(own)) = stored.pdu.get("unsigned")
            && let Some(CanonicalJsonValue::Object(because)) = own.get("redacted_because")
            && let Some(because) = redaction_as_client_event(self.services, room_id, because)
        {
            // The redaction as this viewer gets any event (its own `age`, `transaction_id`),
            // when it is stored here; else as recorded.
            let redaction_id = because["event_id"]
                .as_str()
                .and_then(|id| EventId::parse(id).ok());
            let because = match &redaction_id {
                Some(id) if *id != stored.event_id => self
                    .event(room_id, id, None, Detail::State)
                    .unwrap_or(because),
                _ => because,
            };
            if let Some(id) = redaction_id {
                unsigned.insert("redacted_by".into(), id.as_str().into());
            }
            unsigned.insert("redacted_because".into(), because);
        }
        let sender = pdu::str_field(&stored.pdu, "sender").unwrap_or_default();
        if let (Some(viewer), Some(sent_by)) = (self.viewer, &stored.sent_by)
            && viewer.user_id.as_str() == sender
            && viewer.device_id == Some(&*sent_by.device_id)
        {
            unsigned.insert("transaction_id".into(), sent_by.txn_id.clone().into());
        }
        if detail == Detail::State {
            return Ok(unsigned);
        }
        if let Some(viewer) = self.viewer {
            let membership = self.membership_at(room_id, viewer.user_id, stored, count)?;
            unsigned.insert("membership".into(), membership.into());
        }
        if let (Some(kind), Some(key)) = (
            pdu::str_field(event, "type"),
            pdu::str_field(event, "state_key"),
        ) {
            let timeline = &self.services.timeline;
            let before = timeline.state_entries_before_stored(stored)?;
            if let Some(previous) = timeline.lookup(&before, kind, key)?
                && previous != stored.event_id
                && let Some(prev) = timeline.stored_pdu(&previous)?
            {
                let prev = &prev.pdu;
                if let Some(content) = prev.get("content") {
                    unsigned.insert("prev_content".into(), content.clone().into());
                }
                if let Some(prev_sender) = pdu::str_field(prev, "sender") {
                    unsigned.insert("prev_sender".into(), prev_sender.into());
                }
                unsigned.insert("replaces_state".into(), previous.as_str().into());
            }
        }
        if let Some(viewer) = self.viewer {
            let relations = self.bundled_relations(room_id, viewer, stored, detail)?;
            if !relations.is_empty() {
                unsigned.insert("m.relations".into(), Value::Object(relations));
            }
        }
        Ok(unsigned)
    }

    /// The aggregations of the event's children bundled with it (spec "Aggregations of child
    /// events"): its edit (the replacing event), its thread's summary with the latest reply,
    /// and the events that reference it. Bundled events are left out when the viewer may not
    /// see them.
    fn bundled_relations(
        &mut self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        stored: &StoredPdu,
        detail: Detail,
    ) -> Result<Map<String, Value>> {
        let summary = self.services.relation_summary(
            &stored.event_id,
            &stored.pdu,
            Some(viewer.user_id),
            detail == Detail::Bundled,
        )?;
        let mut relations = Map::new();
        if summary.is_empty() {
            return Ok(relations);
        }
        if let Some(edit) = &summary.edit
            && let Some(event) = self.bundled_event(room_id, viewer, edit)?
        {
            relations.insert(relations::REPLACE.into(), event);
        }
        if let Some(thread) = &summary.thread
            && let Some(latest) = self.bundled_event(room_id, viewer, &thread.latest)?
        {
            relations.insert(
                relations::THREAD.into(),
                serde_json::json!({
                    "latest_event": latest,
                    "count": thread.count,
                    "current_user_participated": thread.participated,
                }),
            );
        }
        let mut chunk = Vec::new();
        for reference in &summary.references {
            // Only IDs are bundled, but only of events in the room the viewer may see.
            let Ok(id) = EventId::parse(&reference.event_id) else {
                continue;
            };
            let probe =
                serde_json::json!({ "event_id": id.as_str(), "type": reference.event_type });
            if self.services.event_in_room(room_id, &id)?
                && self
                    .services
                    .may_see_event(room_id, viewer.user_id, &probe, reference.count)?
            {
                chunk.push(serde_json::json!({ "event_id": id.as_str() }));
            }
        }
        if !chunk.is_empty() {
            relations.insert(
                relations::REFERENCE.into(),
                serde_json::json!({ "chunk": chunk }),
            );
        }
        Ok(relations)
    }

    /// A child event to bundle, if it is in the room and the viewer may see it.
    fn bundled_event(
        &mut self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        child: &relations::Child,
    ) -> Result<Option<Value>> {
        let Ok(event_id) = EventId::parse(&child.event_id) else {
            return Ok(None);
        };
        if !self.services.event_in_room(room_id, &event_id)? {
            return Ok(None);
        }
        let event = self.event(room_id, &event_id, Some(child.count), Detail::Bundled)?;
        Ok(self
            .services
            .may_see_event(room_id, viewer.user_id, &event, child.count)?
            .then_some(event))
    }

    /// The viewer's membership when the event was sent: what the event itself says when it is
    /// about them; their current membership when it last changed before the event (the usual
    /// case, one read per room and request); otherwise as the state before the event has it.
    fn membership_at(
        &mut self,
        room_id: &RoomId,
        user_id: &UserId,
        stored: &StoredPdu,
        count: Option<u64>,
    ) -> Result<String> {
        let event = &stored.pdu;
        if pdu::str_field(event, "type") == Some("m.room.member")
            && pdu::str_field(event, "state_key") == Some(user_id.as_str())
        {
            return Ok(pdu::content_str(event, "membership")
                .unwrap_or("leave")
                .to_owned());
        }
        if !self.current.contains_key(room_id) {
            let current = self.services.members.membership(room_id, user_id)?;
            self.current.insert(room_id.to_owned(), current);
        }
        let count = match count {
            Some(count) => Some(count),
            None => self.services.timeline.count_of(&stored.event_id)?,
        };
        if let (Some(Some(current)), Some(count)) = (self.current.get(room_id), count)
            && current.count < count
        {
            return Ok(current.membership.as_str().to_owned());
        }
        let timeline = &self.services.timeline;
        let before = timeline.state_entries_before_stored(stored)?;
        Ok(
            match timeline.lookup(&before, "m.room.member", user_id.as_str())? {
                Some(id) => timeline
                    .stored_pdu(&id)?
                    .and_then(|member| {
                        pdu::content_str(&member.pdu, "membership").map(str::to_owned)
                    })
                    .unwrap_or_else(|| "leave".to_owned()),
                None => "leave".to_owned(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_value_converts_like_the_owned_conversion() {
        let value = json!({
            "a": [1, -2, "x", null, true, { "nested": { "deep": ["y", 3] } }],
            "b": { "": "", "ünïcode": "✓" },
            "c": 9007199254740991_i64,
        });
        let canonical = CanonicalJsonValue::try_from(value.clone()).unwrap();
        assert_eq!(json_value(&canonical), Value::from(canonical.clone()));
        assert_eq!(json_value(&canonical), value);
    }

    /// A [`ClientEvent`] serialises to what [`client_fields`] and `unsigned` make, byte for
    /// byte: state or not, `redacts` at the top or in the content (v11), no `content` at all.
    #[test]
    fn a_client_event_serialises_as_its_value_would() {
        let pdus = [
            json!({ "type": "m.room.message", "sender": "@a:x", "origin_server_ts": 5,
                    "content": { "body": "hi", "url": "mxc://x/y", "n": [1, { "k": null }] },
                    "room_id": "!r:x", "hashes": { "sha256": "h" }, "depth": 3 }),
            json!({ "type": "m.room.member", "state_key": "@a:x", "sender": "@a:x",
                    "origin_server_ts": 6, "content": { "membership": "join" } }),
            json!({ "type": "m.room.redaction", "sender": "@a:x", "origin_server_ts": 7,
                    "content": { "redacts": "$e:x" } }),
            json!({ "type": "m.room.redaction", "sender": "@a:x", "origin_server_ts": 8,
                    "redacts": "$f:x", "content": {} }),
            json!({ "type": "m.custom", "sender": "@a:x" }),
        ];
        for pdu in pdus {
            let CanonicalJsonValue::Object(pdu) = CanonicalJsonValue::try_from(pdu).unwrap() else {
                unreachable!()
            };
            let mut unsigned = Map::new();
            unsigned.insert("age".into(), 12.into());
            unsigned.insert(
                "redacted_because".into(),
                json!({ "event_id": "$r:x", "room_id": "!r:x", "type": "m.room.redaction" }),
            );
            let event = || ClientEvent {
                stored: Arc::new(StoredPdu::new(ruma::owned_event_id!("$ev:x"), pdu.clone())),
                room_id: ruma::owned_room_id!("!r:x"),
                with_room_id: true,
                count: Some(1),
                unsigned: unsigned.clone(),
            };
            let direct = serde_json::to_string(&event()).unwrap();
            let through_value = serde_json::to_string(&event().into_value()).unwrap();
            assert_eq!(direct, through_value);
            let direct = serde_json::to_string(&event().without_room_id()).unwrap();
            let through_value = serde_json::to_string(&without_room_id(event().into_value()));
            assert_eq!(direct, through_value.unwrap());
            assert!(!direct.contains("!r:x"), "{direct}");
        }
    }
}
