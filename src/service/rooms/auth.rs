//! Authorising events with the room version's auth rules (ruma-state-res), against a state.

use ruma::{
    EventId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::AuthorizationRules,
    state_res,
};
use serde_json::value::RawValue as RawJsonValue;

use super::event::Pdu;
use crate::{Error, Result};

/// The state keys whose current events a new event must cite as its `auth_events`.
pub fn auth_event_keys(
    rules: &AuthorizationRules,
    event_type: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawJsonValue,
) -> Result<Vec<(StateEventType, String)>> {
    state_res::auth_types_for_event(event_type, sender, state_key, content, rules)
        .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))
}

/// Checks `pdu` against the auth rules: first the rules that need no state (its auth events,
/// fetched with `fetch_event`), then those that need the state `fetch_state` looks into (the
/// state before the event). A refusal is `M_FORBIDDEN` with ruma's reason.
pub fn authorize<E: state_res::Event>(
    rules: &AuthorizationRules,
    pdu: &Pdu,
    fetch_event: impl Fn(&EventId) -> Option<E>,
    fetch_state: impl Fn(&StateEventType, &str) -> Option<E>,
) -> Result<()> {
    state_res::check_state_independent_auth_rules(rules, pdu, fetch_event)
        .map_err(|e| Error::forbidden(format!("Event not allowed: {e}")))?;
    state_res::check_state_dependent_auth_rules(rules, pdu, fetch_state)
        .map_err(|e| Error::forbidden(format!("Event not allowed: {e}")))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use ruma::{
        CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId,
        ServerName, room_version_rules::RoomVersionRules, signatures::Ed25519KeyPair,
    };
    use serde_json::json;

    use super::*;
    use crate::service::rooms::pdu::{self, EventRef, NewEvent};

    /// A single-server room kept in memory: enough to drive the auth rules event by event.
    struct TestRoom {
        rules: RoomVersionRules,
        key: Ed25519KeyPair,
        room_id: Option<OwnedRoomId>,
        events: HashMap<OwnedEventId, (Arc<Pdu>, CanonicalJsonObject)>,
        state: HashMap<(StateEventType, String), OwnedEventId>,
        last: Option<OwnedEventId>,
        depth: u64,
    }

    impl TestRoom {
        fn new(version: RoomVersionId) -> Self {
            let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "t".into()).unwrap();
            let rules = version.rules().unwrap();
            // Before v12 the room ID is chosen up front; in v12 it derives from the create event.
            let room_id = (rules.room_id_format
                == ruma::room_version_rules::RoomIdFormatVersion::V1)
                .then(|| RoomId::new_v1(<&ServerName>::try_from("example.org").unwrap()));
            Self {
                rules,
                key,
                room_id,
                events: HashMap::new(),
                state: HashMap::new(),
                last: None,
                depth: 0,
            }
        }

        /// Builds, signs and authorises an event; on success it becomes part of the room.
        fn send(
            &mut self,
            sender: &str,
            event_type: &str,
            state_key: Option<&str>,
            content: serde_json::Value,
        ) -> Result<OwnedEventId> {
            let sender = UserId::parse(sender).unwrap();
            let kind = TimelineEventType::from(event_type);
            let raw = serde_json::value::to_raw_value(&content).unwrap();
            let keys = auth_event_keys(&self.rules.authorization, &kind, &sender, state_key, &raw)?;
            let auth_ids: Vec<OwnedEventId> = keys
                .iter()
                .filter_map(|k| self.state.get(k).cloned())
                .collect();
            let auth_refs: Vec<EventRef<'_>> = auth_ids
                .iter()
                .map(|id| EventRef {
                    event_id: id,
                    pdu: Some(&self.events[id].1),
                })
                .collect();
            let prev_refs: Vec<EventRef<'_>> = self
                .last
                .iter()
                .map(|id| EventRef {
                    event_id: id,
                    pdu: Some(&self.events[id].1),
                })
                .collect();
            let CanonicalJsonValue::Object(content) =
                CanonicalJsonValue::try_from(content).unwrap()
            else {
                panic!("content must be an object")
            };
            let signed = pdu::build(
                NewEvent {
                    room_id: self.room_id.as_deref(),
                    sender: &sender,
                    event_type,
                    state_key,
                    content,
                    redacts: None,
                    prev_events: &prev_refs,
                    auth_events: &auth_refs,
                    depth: self.depth + 1,
                    origin_server_ts: 1_700_000_000_000 + self.depth,
                },
                &self.rules,
                <&ServerName>::try_from("example.org").unwrap(),
                &self.key,
            )?;
            let event = Pdu::from_json(signed.event_id.clone(), &signed.json, &self.rules)?;
            authorize(
                &self.rules.authorization,
                &event,
                |id: &EventId| self.events.get(id).map(|(pdu, _)| pdu.clone()),
                |kind: &StateEventType, key: &str| {
                    self.state
                        .get(&(kind.clone(), key.to_owned()))
                        .and_then(|id| self.events.get(id))
                        .map(|(pdu, _)| pdu.clone())
                },
            )?;
            self.room_id.get_or_insert(signed.room_id.clone());
            if let Some(key) = state_key {
                self.state
                    .insert((event_type.into(), key.to_owned()), signed.event_id.clone());
            }
            self.events
                .insert(signed.event_id.clone(), (Arc::new(event), signed.json));
            self.last = Some(signed.event_id.clone());
            self.depth += 1;
            Ok(signed.event_id)
        }
    }

    const ALICE: &str = "@alice:example.org";
    const BOB: &str = "@bob:example.org";

    fn forbidden(result: Result<OwnedEventId>) -> String {
        match result {
            Err(Error::Matrix {
                kind: ruma::api::error::ErrorKind::Forbidden,
                message,
                ..
            }) => message,
            other => panic!("expected M_FORBIDDEN, got {other:?}"),
        }
    }

    fn start_room(version: RoomVersionId) -> TestRoom {
        let mut room = TestRoom::new(version.clone());
        let mut create = json!({ "room_version": version.as_str() });
        if !room.rules.authorization.use_room_create_sender {
            create["creator"] = json!(ALICE);
        }
        room.send(ALICE, "m.room.create", Some(""), create).unwrap();
        room.send(
            ALICE,
            "m.room.member",
            Some(ALICE),
            json!({ "membership": "join" }),
        )
        .unwrap();
        // v12 creators hold infinite power and must not be listed in `users`.
        let users = if room.rules.authorization.explicitly_privilege_room_creators {
            json!({})
        } else {
            json!({ ALICE: 100 })
        };
        room.send(
            ALICE,
            "m.room.power_levels",
            Some(""),
            json!({ "users": users, "state_default": 50, "invite": 0 }),
        )
        .unwrap();
        room.send(
            ALICE,
            "m.room.join_rules",
            Some(""),
            json!({ "join_rule": "invite" }),
        )
        .unwrap();
        room
    }

    #[test]
    fn membership_and_power_rules_in_v10_v11_and_v12() {
        for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
            let mut room = start_room(version.clone());
            if version == RoomVersionId::V12 {
                let room_id = room.room_id.clone().unwrap();
                assert!(
                    !room_id.as_str().contains(':'),
                    "v12 room IDs have no server part"
                );
            }
            room.send(
                ALICE,
                "m.room.message",
                None,
                json!({ "msgtype": "m.text", "body": "hi" }),
            )
            .unwrap();

            // Bob is no member: he may neither speak nor join an invite-only room.
            forbidden(room.send(BOB, "m.room.message", None, json!({ "body": "let me in" })));
            forbidden(room.send(
                BOB,
                "m.room.member",
                Some(BOB),
                json!({ "membership": "join" }),
            ));

            // Invited, he can join and speak, but not change state that needs power 50.
            room.send(
                ALICE,
                "m.room.member",
                Some(BOB),
                json!({ "membership": "invite" }),
            )
            .unwrap();
            room.send(
                BOB,
                "m.room.member",
                Some(BOB),
                json!({ "membership": "join" }),
            )
            .unwrap();
            room.send(BOB, "m.room.message", None, json!({ "body": "thanks" }))
                .unwrap();
            forbidden(room.send(
                BOB,
                "m.room.name",
                Some(""),
                json!({ "name": "Bob's room" }),
            ));
            room.send(
                ALICE,
                "m.room.name",
                Some(""),
                json!({ "name": "Alice's room" }),
            )
            .unwrap();

            // Nobody may send a second create event, and a member cannot join someone else.
            forbidden(room.send(
                ALICE,
                "m.room.create",
                Some(""),
                json!({ "room_version": version.as_str() }),
            ));
            forbidden(room.send(
                BOB,
                "m.room.member",
                Some("@carol:example.org"),
                json!({ "membership": "join" }),
            ));

            // Kicked, Bob is out again.
            room.send(
                ALICE,
                "m.room.member",
                Some(BOB),
                json!({ "membership": "leave" }),
            )
            .unwrap();
            forbidden(room.send(
                BOB,
                "m.room.message",
                None,
                json!({ "body": "still here?" }),
            ));
        }
    }

    #[test]
    fn v12_rejects_creators_listed_in_power_levels() {
        let mut room = start_room(RoomVersionId::V12);
        let message = forbidden(room.send(
            ALICE,
            "m.room.power_levels",
            Some(""),
            json!({ "users": { ALICE: 100 } }),
        ));
        assert!(!message.is_empty());
        // In v11 the same event is fine.
        let mut room = start_room(RoomVersionId::V11);
        room.send(
            ALICE,
            "m.room.power_levels",
            Some(""),
            json!({ "users": { ALICE: 100 } }),
        )
        .unwrap();
    }

    #[test]
    fn pdus_read_back_from_json() {
        let mut room = start_room(RoomVersionId::V1);
        let id = room
            .send(
                ALICE,
                "m.room.message",
                None,
                json!({ "body": "old style" }),
            )
            .unwrap();
        let (pdu, json) = &room.events[&id];
        assert_eq!(
            pdu.prev_events.len(),
            1,
            "v1 references ([id, hashes] pairs) parse"
        );
        assert!(json.contains_key("event_id"));
        assert_eq!(
            pdu.room_id.as_deref(),
            room.room_id.as_deref().map(|r: &RoomId| r)
        );
    }
}
