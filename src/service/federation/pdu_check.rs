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

use crate::{Error, Result, service::Services};

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

pub fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version.rules().ok_or_else(|| {
        Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::UnsupportedRoomVersion,
            format!("Room version {version} is not supported."),
        )
    })
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
