//! The first checks on a PDU from another server ("Checks performed on receipt of a PDU",
//! steps 1–3): a valid PDU of its room version, signed by the servers that must sign it, and a
//! content hash that matches (else it is redacted before anything else sees it). The auth
//! checks (steps 4–6) happen where it is appended (`rooms::remote`).

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomVersionId,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{PublicKeyMap, Verified},
    state_res::check_pdu_format,
};

use crate::{
    Error, Result,
    service::{Services, rooms::pdu::rules_of},
};

/// The ID of a PDU as its room version defines it: carried inside it (v1, v2) or its
/// reference hash (v3 and later).
pub fn event_id_of(pdu: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId> {
    match rules.event_id_format {
        EventIdFormatVersion::V1 => match pdu.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => {
                EventId::parse(id).map_err(|e| Error::bad_json(format!("Bad event_id: {e}")))
            }
            _ => Err(Error::bad_json("The PDU has no event_id.")),
        },
        _ => {
            let hash = ruma::signatures::reference_hash(pdu, rules)
                .map_err(|e| Error::bad_json(format!("Cannot hash the PDU: {e}")))?;
            EventId::new_v2_or_v3(&hash).map_err(|e| Error::internal(e.to_string()))
        }
    }
}

impl Services {
    /// Steps 1–3 of the receipt checks. Returns the event ID and the PDU, redacted when its
    /// content hash does not match. A PDU failing format or signature checks is refused
    /// (`M_BAD_JSON` / `M_FORBIDDEN`).
    pub async fn check_incoming_pdu(
        &self,
        version: &RoomVersionId,
        mut pdu: CanonicalJsonObject,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let rules = rules_of(version)?;
        // From v3 on the ID is derived, never carried; a stray one would change the hash.
        if rules.event_id_format != EventIdFormatVersion::V1 {
            pdu.remove("event_id");
        }
        check_pdu_format(&pdu, &rules.event_format)
            .map_err(|e| Error::bad_json(format!("Invalid PDU: {e}")))?;
        let event_id = event_id_of(&pdu, &rules)?;

        let servers =
            ruma::signatures::required_server_signatures_to_verify_event(&pdu, &rules.signatures)
                .map_err(|e| Error::forbidden(format!("Event {event_id}: {e}")))?;
        // Room versions 5 and later require keys valid when the event was sent.
        let at = if !rules.enforce_key_validity {
            0
        } else {
            match pdu.get("origin_server_ts") {
                Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
                _ => 0,
            }
        };
        let mut keys = PublicKeyMap::new();
        for server in servers {
            let key_ids: Vec<String> = match pdu.get("signatures") {
                Some(CanonicalJsonValue::Object(signatures)) => {
                    match signatures.get(server.as_str()) {
                        Some(CanonicalJsonValue::Object(by_server)) => {
                            by_server.keys().cloned().collect()
                        }
                        _ => Vec::new(),
                    }
                }
                _ => Vec::new(),
            };
            if key_ids.is_empty() {
                return Err(Error::forbidden(format!(
                    "Event {event_id} is not signed by {server}."
                )));
            }
            let found = self.server_public_keys(&server, &key_ids, at).await?;
            keys.insert(server.to_string(), found);
        }
        match ruma::signatures::verify_event(&keys, &pdu, &rules) {
            Ok(Verified::All) => Ok((event_id, pdu)),
            Ok(Verified::Signatures) => {
                tracing::info!(%event_id, "content hash mismatch: the event is redacted");
                let redacted = ruma::canonical_json::redact(pdu, &rules.redaction, None)
                    .map_err(|e| Error::bad_json(format!("Cannot redact {event_id}: {e}")))?;
                Ok((event_id, redacted))
            }
            Err(e) => Err(Error::forbidden(format!(
                "Event {event_id} has a bad signature: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ruma::{RoomId, UserId};
    use serde_json::json;

    use super::*;
    use crate::{config::Config, service::rooms::pdu};

    /// A server of its own (`example.org`, its key known without asking anyone) in a
    /// temporary directory.
    fn services(dir: &tempfile::TempDir) -> Arc<Services> {
        let config = Config::from_toml_str(&format!(
            "[global]\nserver_name = \"example.org\"\ndatabase_path = \"{}\"\n",
            dir.path().join("db").display()
        ))
        .unwrap();
        Services::open(config).unwrap()
    }

    /// An event of `@alice:example.org` with `content`, signed by the server's own key.
    fn signed_event(
        services: &Services,
        version: &RoomVersionId,
        event_type: &str,
        content: CanonicalJsonObject,
    ) -> pdu::SignedPdu {
        let room = RoomId::parse("!room:example.org").unwrap();
        let sender = UserId::parse("@alice:example.org").unwrap();
        pdu::build(
            pdu::NewEvent {
                room_id: Some(&room),
                sender: &sender,
                event_type,
                state_key: None,
                content,
                redacts: None,
                prev_events: &[],
                auth_events: &[],
                depth: 5,
                origin_server_ts: 1_700_000_000_000,
            },
            &version.rules().unwrap(),
            &services.server_name,
            services.globals.signing_key(),
        )
        .unwrap()
    }

    /// A message of `@alice:example.org`, signed by the server's own key.
    fn message(services: &Services, version: &RoomVersionId) -> CanonicalJsonObject {
        let CanonicalJsonValue::Object(content) =
            CanonicalJsonValue::try_from(json!({ "msgtype": "m.text", "body": "hi" })).unwrap()
        else {
            unreachable!()
        };
        signed_event(services, version, "m.room.message", content).json
    }

    fn kind_of(error: &Error) -> (http::StatusCode, String) {
        let (status, body) = error.to_status_and_body();
        (
            status,
            body["errcode"].as_str().unwrap_or_default().to_owned(),
        )
    }

    async fn refused(
        services: &Services,
        version: &RoomVersionId,
        pdu: CanonicalJsonObject,
    ) -> (http::StatusCode, String) {
        kind_of(&services.check_incoming_pdu(version, pdu).await.unwrap_err())
    }

    #[tokio::test]
    async fn a_valid_pdu_passes_with_its_id_in_every_version() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        for version in ["1", "3", "10", "11", "12"] {
            let version = RoomVersionId::try_from(version).unwrap();
            let pdu = message(&services, &version);
            let expected = event_id_of(&pdu, &version.rules().unwrap()).unwrap();
            let (id, checked) = services
                .check_incoming_pdu(&version, pdu.clone())
                .await
                .unwrap();
            assert_eq!(id, expected, "{version}");
            assert_eq!(checked["content"], pdu["content"], "{version}");
        }
    }

    #[tokio::test]
    async fn a_stray_event_id_is_ignored_from_version_3() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let version = RoomVersionId::V11;
        let mut pdu = message(&services, &version);
        let expected = event_id_of(&pdu, &version.rules().unwrap()).unwrap();
        pdu.insert(
            "event_id".into(),
            CanonicalJsonValue::String("$forged".into()),
        );
        let (id, _) = services.check_incoming_pdu(&version, pdu).await.unwrap();
        assert_eq!(id, expected);
    }

    #[tokio::test]
    async fn malformed_pdus_are_bad_json() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let version = RoomVersionId::V10;
        let bad = (http::StatusCode::BAD_REQUEST, "M_BAD_JSON".to_owned());
        // A required field missing, one of the wrong type, one over its size limit.
        for (field, value) in [
            ("sender", None),
            ("depth", Some(CanonicalJsonValue::String("deep".into()))),
            ("type", Some(CanonicalJsonValue::String("t".repeat(300)))),
            ("prev_events", Some(CanonicalJsonValue::String("$x".into()))),
        ] {
            let mut pdu = message(&services, &version);
            match value {
                Some(value) => pdu.insert(field.into(), value),
                None => pdu.remove(field),
            };
            assert_eq!(refused(&services, &version, pdu).await, bad, "{field}");
        }
        // Version 1 carries its event ID: without it there is no event.
        let v1 = RoomVersionId::V1;
        let mut pdu = message(&services, &v1);
        pdu.remove("event_id");
        assert_eq!(refused(&services, &v1, pdu).await, bad);
        // A PDU over 65,536 bytes.
        let mut pdu = message(&services, &version);
        pdu.insert(
            "padding".into(),
            CanonicalJsonValue::String("x".repeat(70_000)),
        );
        assert_eq!(refused(&services, &version, pdu).await, bad);
    }

    #[tokio::test]
    async fn unsigned_or_forged_pdus_are_forbidden() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let version = RoomVersionId::V10;
        let forbidden = (http::StatusCode::FORBIDDEN, "M_FORBIDDEN".to_owned());
        // No signature of the sender's server.
        let mut pdu = message(&services, &version);
        pdu.insert(
            "signatures".into(),
            CanonicalJsonValue::Object(Default::default()),
        );
        assert_eq!(refused(&services, &version, pdu).await, forbidden);
        // A signature that is not the server's.
        let mut pdu = message(&services, &version);
        let CanonicalJsonValue::Object(signatures) = pdu.get_mut("signatures").unwrap() else {
            unreachable!()
        };
        let CanonicalJsonValue::Object(ours) = signatures.get_mut("example.org").unwrap() else {
            unreachable!()
        };
        for signature in ours.values_mut() {
            *signature = CanonicalJsonValue::String("A".repeat(86));
        }
        assert_eq!(refused(&services, &version, pdu).await, forbidden);
        // A changed field the signature covers (the redacted form keeps `depth`).
        let mut pdu = message(&services, &version);
        pdu.insert("depth".into(), CanonicalJsonValue::Integer(6u32.into()));
        assert_eq!(refused(&services, &version, pdu).await, forbidden);
    }

    #[tokio::test]
    async fn a_content_hash_mismatch_redacts_the_pdu() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let version = RoomVersionId::V11;
        let mut pdu = message(&services, &version);
        let CanonicalJsonValue::Object(content) = pdu.get_mut("content").unwrap() else {
            unreachable!()
        };
        content.insert("body".into(), CanonicalJsonValue::String("changed".into()));
        let (_, checked) = services.check_incoming_pdu(&version, pdu).await.unwrap();
        assert_eq!(
            checked["content"],
            CanonicalJsonValue::Object(Default::default())
        );
    }

    #[tokio::test]
    async fn an_unknown_room_version_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let version = RoomVersionId::try_from("org.example.custom").unwrap();
        let pdu = message(&services, &RoomVersionId::V10);
        let error = services
            .check_incoming_pdu(&version, pdu)
            .await
            .unwrap_err();
        assert_eq!(
            kind_of(&error),
            (
                http::StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION".to_owned()
            )
        );
    }

    #[tokio::test]
    async fn a_version_1_event_id_that_does_not_parse_is_bad_json() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let v1 = RoomVersionId::V1;
        let mut pdu = message(&services, &v1);
        pdu.insert(
            "event_id".into(),
            CanonicalJsonValue::String("no sigil".into()),
        );
        assert_eq!(
            refused(&services, &v1, pdu).await,
            (http::StatusCode::BAD_REQUEST, "M_BAD_JSON".to_owned())
        );
    }

    /// `event_id_of` on its own: a PDU it cannot hash (no `type` to redact by) has no ID.
    /// (Behind the format check no such PDU reaches it.)
    #[test]
    fn a_pdu_that_cannot_be_hashed_has_no_event_id() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let version = RoomVersionId::V11;
        let mut pdu = message(&services, &version);
        pdu.insert("type".into(), CanonicalJsonValue::Integer(5u32.into()));
        let error = event_id_of(&pdu, &version.rules().unwrap()).unwrap_err();
        assert_eq!(
            kind_of(&error),
            (http::StatusCode::BAD_REQUEST, "M_BAD_JSON".to_owned())
        );
    }

    /// [`message`], with another `sender` (the signature left as it was).
    fn message_sent_by(
        services: &Services,
        version: &RoomVersionId,
        sender: &str,
    ) -> CanonicalJsonObject {
        let mut pdu = message(services, version);
        pdu.insert("sender".into(), CanonicalJsonValue::String(sender.into()));
        pdu
    }

    /// A sender that is no user ID: whose servers must sign cannot be known.
    #[tokio::test]
    async fn a_sender_that_is_no_user_id_is_forbidden() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let version = RoomVersionId::V10;
        let pdu = message_sent_by(&services, &version, "alice-without-a-server");
        assert_eq!(
            refused(&services, &version, pdu).await,
            (http::StatusCode::FORBIDDEN, "M_FORBIDDEN".to_owned())
        );
    }

    /// A PDU of another server's user, "signed" by that server with a key that cannot be
    /// fetched (this test server does not federate): no key verifies it, so it is refused.
    #[tokio::test]
    async fn a_signature_whose_key_cannot_be_fetched_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let version = RoomVersionId::V10;
        let mut pdu = message_sent_by(&services, &version, "@mallory:elsewhere.invalid");
        let CanonicalJsonValue::Object(signatures) = pdu.get_mut("signatures").unwrap() else {
            unreachable!()
        };
        let mut theirs = CanonicalJsonObject::new();
        theirs.insert(
            "ed25519:gone".into(),
            CanonicalJsonValue::String("A".repeat(86)),
        );
        signatures.insert(
            "elsewhere.invalid".into(),
            CanonicalJsonValue::Object(theirs),
        );
        assert_eq!(
            refused(&services, &version, pdu).await,
            (http::StatusCode::FORBIDDEN, "M_FORBIDDEN".to_owned())
        );
    }

    /// Generated JSON content as canonical JSON allows it: integers within ±(2^53 − 1), no
    /// floats, any Unicode in keys and strings, nested a few levels.
    fn content_strategy() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        const SAFE: i64 = (1 << 53) - 1;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            (-SAFE..=SAFE).prop_map(serde_json::Value::from),
            "\\PC{0,16}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("\\PC{0,8}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map("\\PC{1,8}", value, 0..5)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }

    mod properties {
        use proptest::prelude::*;
        use ruma::canonical_json::to_canonical_value;

        proptest! {
            /// Canonical JSON round trips: any JSON value canonical JSON allows becomes the
            /// same text (keys sorted, no whitespace) however often it is converted, and that
            /// text reads back as the value it came from.
            #[test]
            fn canonical_json_round_trips(value in super::content_strategy()) {
                let text = to_canonical_value(&value).unwrap().to_string();
                prop_assert_eq!(&serde_json::from_str::<serde_json::Value>(&text).unwrap(), &value);
                let again = to_canonical_value(serde_json::from_str::<serde_json::Value>(&text).unwrap())
                    .unwrap()
                    .to_string();
                prop_assert_eq!(&again, &text);
                prop_assert_eq!(&text, &serde_json::to_string(&value).unwrap());
            }
        }
    }

    /// For any content, in every room version: an event this server builds and signs passes
    /// the receipt checks with its content unchanged and the ID its version defines; the same
    /// event with its content altered keeps valid signatures (they cover the redacted form)
    /// and comes back redacted.
    #[test]
    fn built_events_pass_and_altered_ones_come_back_redacted() {
        use proptest::test_runner::{Config, TestRunner};
        let dir = tempfile::TempDir::new().unwrap();
        let services = services(&dir);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut runner = TestRunner::new(Config::default());
        runner
            .run(&content_strategy(), |content| {
                let CanonicalJsonValue::Object(content) =
                    CanonicalJsonValue::try_from(content).unwrap()
                else {
                    unreachable!()
                };
                for version in ["1", "3", "10", "11", "12"] {
                    let version = RoomVersionId::try_from(version).unwrap();
                    let rules = version.rules().unwrap();
                    let built = signed_event(
                        &services,
                        &version,
                        "org.example.generated",
                        content.clone(),
                    );
                    let (id, checked) = runtime
                        .block_on(services.check_incoming_pdu(&version, built.json.clone()))
                        .unwrap();
                    proptest::prop_assert_eq!(&id, &built.event_id, "{}", version);
                    proptest::prop_assert_eq!(
                        &checked["content"],
                        &CanonicalJsonValue::Object(content.clone())
                    );

                    let mut altered = built.json.clone();
                    let Some(CanonicalJsonValue::Object(altered_content)) =
                        altered.get_mut("content")
                    else {
                        unreachable!()
                    };
                    altered_content
                        .insert("org.example.added".into(), CanonicalJsonValue::Bool(true));
                    let (_, checked) = runtime
                        .block_on(services.check_incoming_pdu(&version, altered))
                        .unwrap();
                    let expected =
                        ruma::canonical_json::redact(built.json.clone(), &rules.redaction, None)
                            .unwrap();
                    proptest::prop_assert_eq!(&checked["content"], &expected["content"]);
                }
                Ok(())
            })
            .unwrap();
    }
}
