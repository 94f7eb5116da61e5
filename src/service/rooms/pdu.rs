//! Building and signing PDUs: the full federation form of an event, as its room version defines
//! it (event ID format, reference format, room ID format, content hash, signature).

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId,
    RoomVersionId, ServerName, UserId,
    room_version_rules::{
        EventIdFormatVersion, EventsReferenceFormatVersion, RoomIdFormatVersion, RoomVersionRules,
    },
    signatures::Ed25519KeyPair,
};

use crate::{Error, Result};

/// The spec's limit on a PDU, in bytes of canonical JSON.
pub const MAX_PDU_SIZE: usize = 65_535;

/// An event referred to from `prev_events` or `auth_events`. Room versions 1 and 2 refer to
/// events with their reference hash too, so there the referenced PDU is needed; later versions
/// need only the ID (and callers need not load the PDU).
pub struct EventRef<'a> {
    pub event_id: &'a EventId,
    pub pdu: Option<&'a CanonicalJsonObject>,
}

/// What a new event is made of, before hashing and signing.
pub struct NewEvent<'a> {
    /// `None` only for the `m.room.create` event of a room version whose room ID is derived
    /// from that event (v12).
    pub room_id: Option<&'a RoomId>,
    pub sender: &'a UserId,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub content: CanonicalJsonObject,
    /// For `m.room.redaction`: placed at the top level (v1–v10) or in the content (v11+).
    pub redacts: Option<&'a EventId>,
    pub prev_events: &'a [EventRef<'a>],
    pub auth_events: &'a [EventRef<'a>],
    pub depth: u64,
    pub origin_server_ts: u64,
}

/// A hashed and signed PDU with its IDs.
#[derive(Debug, Clone)]
pub struct SignedPdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub json: CanonicalJsonObject,
}

fn string(s: impl Into<String>) -> CanonicalJsonValue {
    CanonicalJsonValue::String(s.into())
}

fn integer(n: u64) -> Result<CanonicalJsonValue> {
    ruma::Int::try_from(n)
        .map(CanonicalJsonValue::Integer)
        .map_err(|_| Error::internal("integer out of the canonical JSON range"))
}

fn references(refs: &[EventRef<'_>], rules: &RoomVersionRules) -> Result<CanonicalJsonValue> {
    let items = refs
        .iter()
        .map(|r| match rules.events_reference_format {
            EventsReferenceFormatVersion::V1 => {
                let pdu = r.pdu.ok_or_else(|| {
                    Error::internal("rooms v1 and v2 refer to events by hash: the PDU is needed")
                })?;
                let hash = ruma::signatures::reference_hash(pdu, rules)
                    .map_err(|e| Error::internal(format!("reference hash: {e}")))?;
                let hashes = CanonicalJsonObject::from([("sha256".to_owned(), string(hash))]);
                Ok(CanonicalJsonValue::Array(vec![
                    string(r.event_id.as_str()),
                    CanonicalJsonValue::Object(hashes),
                ]))
            }
            _ => Ok(string(r.event_id.as_str())),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CanonicalJsonValue::Array(items))
}

/// Assembles, hashes and signs `new` as a PDU of the room version with `rules`.
pub fn build(
    new: NewEvent<'_>,
    rules: &RoomVersionRules,
    server_name: &ServerName,
    key: &Ed25519KeyPair,
) -> Result<SignedPdu> {
    let room_id = new.room_id.map(ToOwned::to_owned);
    let json = assemble(new, rules, Some(server_name))?;
    finish(json, room_id.as_deref(), rules, server_name, key)
}

/// The unsigned PDU: every field but `hashes` and `signatures` (the form `make_join` hands
/// to another server). `event_id_server` gives rooms v1 and v2 their random event ID.
pub fn assemble(
    new: NewEvent<'_>,
    rules: &RoomVersionRules,
    event_id_server: Option<&ServerName>,
) -> Result<CanonicalJsonObject> {
    let derives_room_id = rules.room_id_format == RoomIdFormatVersion::V2;
    let is_create = new.event_type == "m.room.create" && new.state_key == Some("");
    let mut content = new.content;
    let mut json = CanonicalJsonObject::new();
    json.insert("type".into(), string(new.event_type));
    json.insert("sender".into(), string(new.sender.as_str()));
    json.insert("origin_server_ts".into(), integer(new.origin_server_ts)?);
    json.insert("depth".into(), integer(new.depth)?);
    json.insert("prev_events".into(), references(new.prev_events, rules)?);
    json.insert("auth_events".into(), references(new.auth_events, rules)?);
    if let Some(state_key) = new.state_key {
        json.insert("state_key".into(), string(state_key));
    }
    match (new.room_id, derives_room_id && is_create) {
        (_, true) => {} // the room ID is derived from this very event
        (Some(room_id), false) => {
            json.insert("room_id".into(), string(room_id.as_str()));
        }
        (None, false) => return Err(Error::internal("only a v12 create event lacks a room ID")),
    }
    if let Some(redacts) = new.redacts {
        if rules.redaction.content_field_redacts {
            content.insert("redacts".into(), string(redacts.as_str()));
        } else {
            json.insert("redacts".into(), string(redacts.as_str()));
        }
    }
    json.insert("content".into(), CanonicalJsonValue::Object(content));

    // Rooms v1 and v2 carry a random event ID inside the (signed) PDU.
    if rules.event_id_format == EventIdFormatVersion::V1
        && let Some(server_name) = event_id_server
    {
        json.insert(
            "event_id".into(),
            string(EventId::new_v1(server_name).as_str()),
        );
    }
    Ok(json)
}

/// A string field of a PDU (`room_id`, `sender`, `type`, `state_key`, …), if it is there and
/// a string.
pub fn str_field<'a>(pdu: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match pdu.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// A string field of a PDU's `content` (`membership`, `join_rule`, …), if it is there and a
/// string.
pub fn content_str<'a>(pdu: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match pdu.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get(name) {
            Some(CanonicalJsonValue::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// The rules of a room version, or 400 `M_UNSUPPORTED_ROOM_VERSION` for one this server
/// does not know.
pub fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version.rules().ok_or_else(|| {
        Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::UnsupportedRoomVersion,
            format!("Room version {version} is not supported."),
        )
    })
}

/// The highest depth an event can have: canonical JSON's largest integer, 2^53 − 1.
pub const MAX_DEPTH: u64 = (1 << 53) - 1;

/// The depth of an event made on top of events reaching `depth`. It stops at [`MAX_DEPTH`]:
/// another server may send an event that deep (correctly signed and allowed), and the room
/// must go on, so later events stay at that depth instead of failing to be made (Synapse caps
/// depth the same way).
pub fn depth_after(depth: u64) -> u64 {
    depth.saturating_add(1).min(MAX_DEPTH)
}

/// A PDU's `depth` (0 when missing or not a non-negative integer).
pub fn depth_of(pdu: &CanonicalJsonObject) -> u64 {
    match pdu.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) => u64::try_from(i64::from(*d)).unwrap_or(0),
        _ => 0,
    }
}

/// The create event's ID in a room whose ID is derived from it (v12 on): the room ID with
/// the `$` sigil for the `!`.
pub fn create_event_id_of(room_id: &RoomId) -> Option<OwnedEventId> {
    EventId::parse(format!("${}", room_id.strip_sigil())).ok()
}

/// Whether a PDU belongs to `room_id`: its `room_id` says so or, for the create event a v12
/// room ID is derived from (which carries no `room_id`), its event ID is the room's.
pub fn pdu_in_room(event_id: &EventId, pdu: &CanonicalJsonObject, room_id: &RoomId) -> bool {
    match pdu.get("room_id") {
        Some(CanonicalJsonValue::String(id)) => id == room_id.as_str(),
        None => event_id.localpart() == room_id.strip_sigil(),
        Some(_) => false,
    }
}

/// Hashes and signs an assembled PDU (ours, or a `make_join` template filled in here) and
/// works out its IDs. `room_id` is `None` only for a v12 create event.
pub fn finish(
    mut json: CanonicalJsonObject,
    room_id: Option<&RoomId>,
    rules: &RoomVersionRules,
    server_name: &ServerName,
    key: &Ed25519KeyPair,
) -> Result<SignedPdu> {
    let derives_room_id = rules.room_id_format == RoomIdFormatVersion::V2;
    let is_create = matches!(json.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create")
        && matches!(json.get("state_key"), Some(CanonicalJsonValue::String(k)) if k.is_empty());
    let random_id = match json.get("event_id") {
        Some(CanonicalJsonValue::String(id))
            if rules.event_id_format == EventIdFormatVersion::V1 =>
        {
            Some(EventId::parse(id).map_err(|e| Error::bad_json(format!("Bad event_id: {e}")))?)
        }
        _ => None,
    };
    if CanonicalJsonValue::Object(json.clone()).to_string().len() > MAX_PDU_SIZE {
        return Err(Error::too_large(
            "The event is larger than the 65535-byte PDU limit.",
        ));
    }
    ruma::signatures::hash_and_sign_event(server_name.as_str(), key, &mut json, &rules.redaction)
        .map_err(|e| Error::internal(format!("signing the event failed: {e}")))?;
    // The hashes and signature add a little: check the final size too.
    if CanonicalJsonValue::Object(json.clone()).to_string().len() > MAX_PDU_SIZE {
        return Err(Error::too_large(
            "The event is larger than the 65535-byte PDU limit.",
        ));
    }

    let event_id = match random_id {
        Some(id) => id,
        None => {
            let hash = ruma::signatures::reference_hash(&json, rules)
                .map_err(|e| Error::internal(format!("reference hash: {e}")))?;
            EventId::new_v2_or_v3(&hash).map_err(|e| Error::internal(e.to_string()))?
        }
    };
    let room_id = match room_id {
        Some(room_id) if !(derives_room_id && is_create) => room_id.to_owned(),
        _ => RoomId::new_v2(event_id.localpart()).map_err(|e| Error::internal(e.to_string()))?,
    };
    Ok(SignedPdu {
        event_id,
        room_id,
        json,
    })
}

#[cfg(test)]
mod tests {
    use ruma::{
        RoomVersionId,
        serde::{Base64, base64::Standard},
        signatures::{PublicKeyMap, Verified, verify_event},
        state_res::check_pdu_format,
    };

    use super::*;

    fn key() -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "test".into()).unwrap()
    }

    #[test]
    fn a_pdu_belongs_to_the_room_it_names_and_a_v12_create_event_to_the_room_of_its_id() {
        let room = RoomId::parse("!abc:example.org").unwrap();
        let other = RoomId::parse("!other:example.org").unwrap();
        let id = EventId::parse("$xyz:example.org").unwrap();
        let mut pdu = CanonicalJsonObject::new();
        pdu.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room.to_string()),
        );
        assert!(pdu_in_room(&id, &pdu, &room));
        assert!(!pdu_in_room(&id, &pdu, &other));
        assert_eq!(str_field(&pdu, "room_id"), Some(room.as_str()));
        assert_eq!(str_field(&pdu, "sender"), None);

        // A v12 create event names no room: its event ID is the room's.
        let hash = "A".repeat(43);
        let create_id = EventId::parse(format!("${hash}")).unwrap();
        let v12_room = RoomId::new_v2(&hash).unwrap();
        let create = CanonicalJsonObject::new();
        assert!(pdu_in_room(&create_id, &create, &v12_room));
        assert!(!pdu_in_room(&create_id, &create, &room));
        assert_eq!(create_event_id_of(&v12_room), Some(create_id));

        // A room_id that is not a string names no room; depth defaults to 0.
        pdu.insert(
            "room_id".into(),
            CanonicalJsonValue::Integer(ruma::Int::from(1u8)),
        );
        assert!(!pdu_in_room(&id, &pdu, &room));
        assert_eq!(depth_of(&pdu), 0);
        pdu.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(ruma::Int::from(7u8)),
        );
        assert_eq!(depth_of(&pdu), 7);
    }

    #[test]
    fn depth_stops_at_the_largest_canonical_integer() {
        assert_eq!(depth_after(0), 1);
        assert_eq!(depth_after(MAX_DEPTH - 1), MAX_DEPTH);
        assert_eq!(depth_after(MAX_DEPTH), MAX_DEPTH);
        assert_eq!(depth_after(u64::MAX), MAX_DEPTH);
        assert!(integer(depth_after(MAX_DEPTH)).is_ok());
    }

    fn public_keys(key: &Ed25519KeyPair) -> PublicKeyMap {
        let public = Base64::<Standard, Vec<u8>>::new(key.public_key().to_vec());
        [(
            "example.org".to_owned(),
            [("ed25519:test".to_owned(), public)].into(),
        )]
        .into()
    }

    fn create_content(version: &RoomVersionId) -> CanonicalJsonObject {
        CanonicalJsonObject::from([("room_version".to_owned(), string(version.as_str()))])
    }

    fn alice() -> ruma::OwnedUserId {
        UserId::parse("@alice:example.org").unwrap()
    }

    fn server() -> &'static ServerName {
        <&ServerName>::try_from("example.org").unwrap()
    }

    /// A create event, then a message referring to it, in every room version: IDs in the right
    /// format, PDU format valid, hashes and signatures verifiable by another server.
    #[test]
    fn create_and_message_in_every_room_version() {
        let key = key();
        let v1_room = RoomId::new_v1(server());
        for version in crate::service::rooms::SUPPORTED_ROOM_VERSIONS {
            let rules = version.rules().unwrap();
            let sender = alice();
            let derived = rules.room_id_format == RoomIdFormatVersion::V2;
            let create = build(
                NewEvent {
                    room_id: (!derived).then_some(&*v1_room),
                    sender: &sender,
                    event_type: "m.room.create",
                    state_key: Some(""),
                    content: create_content(&version),
                    redacts: None,
                    prev_events: &[],
                    auth_events: &[],
                    depth: 1,
                    origin_server_ts: 1_700_000_000_000,
                },
                &rules,
                server(),
                &key,
            )
            .unwrap();
            check_pdu_format(&create.json, &rules.event_format)
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(
                verify_event(&public_keys(&key), &create.json, &rules).unwrap(),
                Verified::All,
                "{version}"
            );
            if derived {
                assert_eq!(
                    create.room_id.as_str(),
                    format!("!{}", create.event_id.localpart())
                );
                assert!(!create.json.contains_key("room_id"));
            } else {
                assert_eq!(create.room_id, v1_room);
            }
            match rules.event_id_format {
                EventIdFormatVersion::V1 => {
                    assert!(
                        create.event_id.as_str().ends_with(":example.org"),
                        "{version}"
                    );
                    assert_eq!(create.json["event_id"], string(create.event_id.as_str()));
                }
                _ => {
                    assert!(!create.json.contains_key("event_id"), "{version}");
                    assert_eq!(
                        create.event_id.as_str().len(),
                        44,
                        "{version}: $ + 43 base64"
                    );
                }
            }
            if rules.event_id_format == EventIdFormatVersion::V3 {
                assert!(
                    !create.event_id.as_str().contains(['+', '/']),
                    "URL-safe in {version}"
                );
            }

            // v12 never lists the create event in auth_events (the room ID stands for it).

            let create_ref = [EventRef {
                event_id: &create.event_id,
                pdu: Some(&create.json),
            }];

            let auth_refs: &[EventRef<'_>] = if rules.event_format.allow_room_create_in_auth_events
            {
                &create_ref
            } else {
                &[]
            };

            let message = build(
                NewEvent {
                    room_id: Some(&create.room_id),
                    sender: &sender,
                    event_type: "m.room.message",
                    state_key: None,
                    content: CanonicalJsonObject::from([
                        ("msgtype".to_owned(), string("m.text")),
                        ("body".to_owned(), string("hello")),
                    ]),
                    redacts: None,
                    prev_events: &create_ref,
                    auth_events: auth_refs,
                    depth: 2,
                    origin_server_ts: 1_700_000_000_001,
                },
                &rules,
                server(),
                &key,
            )
            .unwrap();
            check_pdu_format(&message.json, &rules.event_format)
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(
                verify_event(&public_keys(&key), &message.json, &rules).unwrap(),
                Verified::All
            );
            assert_eq!(message.room_id, create.room_id);
            let CanonicalJsonValue::Array(prev) = &message.json["prev_events"] else {
                panic!()
            };
            match rules.events_reference_format {
                EventsReferenceFormatVersion::V1 => {
                    let CanonicalJsonValue::Array(pair) = &prev[0] else {
                        panic!("{version}")
                    };
                    assert_eq!(pair[0], string(create.event_id.as_str()));
                }
                _ => assert_eq!(prev[0], string(create.event_id.as_str()), "{version}"),
            }
        }
    }

    #[test]
    fn redacts_goes_where_the_room_version_wants_it() {
        let key = key();
        let room = RoomId::new_v1(server());
        let target = EventId::parse("$target").unwrap();
        for (version, in_content) in [(RoomVersionId::V10, false), (RoomVersionId::V11, true)] {
            let rules = version.rules().unwrap();
            let sender = alice();
            let pdu = build(
                NewEvent {
                    room_id: Some(&room),
                    sender: &sender,
                    event_type: "m.room.redaction",
                    state_key: None,
                    content: CanonicalJsonObject::new(),
                    redacts: Some(&target),
                    prev_events: &[],
                    auth_events: &[],
                    depth: 3,
                    origin_server_ts: 1,
                },
                &rules,
                server(),
                &key,
            )
            .unwrap();
            let CanonicalJsonValue::Object(content) = &pdu.json["content"] else {
                panic!()
            };
            assert_eq!(content.contains_key("redacts"), in_content, "{version}");
            assert_eq!(pdu.json.contains_key("redacts"), !in_content, "{version}");
        }
    }

    #[test]
    fn oversized_events_are_refused() {
        let rules = RoomVersionId::V11.rules().unwrap();
        let room = RoomId::new_v1(server());
        let sender = alice();
        let result = build(
            NewEvent {
                room_id: Some(&room),
                sender: &sender,
                event_type: "m.room.message",
                state_key: None,
                content: CanonicalJsonObject::from([(
                    "body".to_owned(),
                    string("x".repeat(70_000)),
                )]),
                redacts: None,
                prev_events: &[],
                auth_events: &[],
                depth: 1,
                origin_server_ts: 1,
            },
            &rules,
            server(),
            &key(),
        );
        assert!(
            matches!(result, Err(Error::Matrix { status, .. }) if status == http::StatusCode::PAYLOAD_TOO_LARGE)
        );
    }
}
