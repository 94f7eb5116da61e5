//! `Pdu`: a stored event in the shape ruma's state resolution and auth rules work on.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId, events::TimelineEventType,
    room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{Error, Result};

/// An event as the auth rules and state resolution see it.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// `None` for the create event of a v12 room (its room ID derives from it).
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub event_type: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub rejected: bool,
}

fn bad(field: &str) -> Error {
    Error::bad_json(format!("PDU field `{field}` is missing or malformed"))
}

fn str_field<'a>(json: &'a CanonicalJsonObject, field: &str) -> Result<&'a str> {
    match json.get(field) {
        Some(CanonicalJsonValue::String(s)) => Ok(s),
        _ => Err(bad(field)),
    }
}

/// `prev_events`/`auth_events`: plain IDs (v3+) or `[id, {hashes}]` pairs (v1, v2).
fn references(json: &CanonicalJsonObject, field: &str) -> Result<Vec<OwnedEventId>> {
    let Some(CanonicalJsonValue::Array(items)) = json.get(field) else {
        return Err(bad(field));
    };
    items
        .iter()
        .map(|item| {
            let id = match item {
                CanonicalJsonValue::String(id) => id,
                CanonicalJsonValue::Array(pair) => match pair.first() {
                    Some(CanonicalJsonValue::String(id)) => id,
                    _ => return Err(bad(field)),
                },
                _ => return Err(bad(field)),
            };
            EventId::parse(id).map_err(|_| bad(field))
        })
        .collect()
}

impl Pdu {
    /// Reads a PDU of the room version with `rules`. `event_id` comes from the caller (v3+ PDUs
    /// do not contain it; it is their reference hash).
    pub fn from_json(
        event_id: OwnedEventId,
        json: &CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<Self> {
        let content = match json.get("content") {
            Some(value @ CanonicalJsonValue::Object(_)) => value,
            _ => return Err(bad("content")),
        };
        let content = serde_json::value::to_raw_value(content).map_err(|_| bad("content"))?;
        let redacts = if rules.redaction.content_field_redacts {
            match json.get("content") {
                Some(CanonicalJsonValue::Object(c)) => match c.get("redacts") {
                    Some(CanonicalJsonValue::String(id)) => Some(id.as_str()),
                    _ => None,
                },
                _ => None,
            }
        } else {
            json.get("redacts").and_then(|v| match v {
                CanonicalJsonValue::String(id) => Some(id.as_str()),
                _ => None,
            })
        };
        let ts = match json.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts))
                .ok()
                .and_then(UInt::new)
                .ok_or_else(|| bad("origin_server_ts"))?,
            _ => return Err(bad("origin_server_ts")),
        };
        Ok(Pdu {
            event_id,
            room_id: match json.get("room_id") {
                Some(CanonicalJsonValue::String(id)) => {
                    Some(RoomId::parse(id).map_err(|_| bad("room_id"))?)
                }
                _ => None,
            },
            sender: UserId::parse(str_field(json, "sender")?).map_err(|_| bad("sender"))?,
            origin_server_ts: MilliSecondsSinceUnixEpoch(ts),
            event_type: str_field(json, "type")?.into(),
            content,
            state_key: match json.get("state_key") {
                Some(CanonicalJsonValue::String(key)) => Some(key.clone()),
                None => None,
                Some(_) => return Err(bad("state_key")),
            },
            prev_events: references(json, "prev_events")?,
            auth_events: references(json, "auth_events")?,
            redacts: redacts
                .map(|id| EventId::parse(id).map_err(|_| bad("redacts")))
                .transpose()?,
            rejected: false,
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.event_type
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
