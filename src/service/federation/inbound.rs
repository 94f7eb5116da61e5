//! Inbound transactions (`PUT /_matrix/federation/v1/send/{txnId}`): each PDU checked
//! (format, signatures, hash — `pdu_check`; auth and soft-fail — `rooms::timeline::remote`)
//! and appended; missing `prev_events` fetched with `/get_missing_events` first. A transaction
//! is processed once per origin: a repeat gets the first answer back.
//!
//! The rooms of a transaction are processed side by side (each room's PDUs in order, under
//! that room's lock), so one slow room — a gap to fill — does not stall the others.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, ServerName, UInt,
    api::federation::event::{get_event, get_missing_events, get_room_state_ids},
};
use serde_json::value::RawValue;

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            pdu::{pdu_in_room, str_field},
            timeline::{Appended, referenced_ids},
        },
    },
    store::{Cf, keys},
};

/// How many missing events one `/get_missing_events` round asks for.
const MAX_MISSING: u32 = 50;
/// At most this many rounds for one gap (so at most 500 events).
const MAX_GAP_ROUNDS: usize = 10;
/// At most this many unknown state and auth events fetched to place one event.
const MAX_STATE_FETCH: usize = 2000;
/// At most this many PDUs and EDUs per transaction, as the spec allows.
pub const MAX_TXN_PDUS: usize = 50;
pub const MAX_TXN_EDUS: usize = 100;

pub type PduResults = BTreeMap<OwnedEventId, Result<(), String>>;

impl Services {
    /// Handles one inbound transaction's PDUs; answers per PDU, as `/send` does.
    pub async fn handle_transaction_pdus(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawValue>],
    ) -> Result<PduResults> {
        if pdus.len() > MAX_TXN_PDUS {
            return Err(Error::bad_json(format!(
                "A transaction carries at most {MAX_TXN_PDUS} PDUs."
            )));
        }
        let txn_key = keys::join([origin.as_bytes(), txn_id.as_bytes()]);
        if let Some(previous) = self.store.get(Cf::FederationTxns, &txn_key)? {
            let answered: BTreeMap<OwnedEventId, Option<String>> =
                serde_json::from_slice(&previous)?;
            return Ok(answered
                .into_iter()
                .map(|(id, error)| (id, error.map_or(Ok(()), Err)))
                .collect());
        }
        // Rooms side by side, each room's PDUs in order: a room with a gap to fill does not
        // hold up the others.
        let mut by_room: BTreeMap<ruma::OwnedRoomId, Vec<CanonicalJsonObject>> = BTreeMap::new();
        for raw in pdus {
            let Ok(pdu) = serde_json::from_str::<CanonicalJsonObject>(raw.get()) else {
                tracing::info!(%origin, "dropping a PDU that is not a JSON object");
                continue;
            };
            let Some(room_id) = str_field(&pdu, "room_id").and_then(|r| RoomId::parse(r).ok())
            else {
                tracing::info!(%origin, "dropping a PDU without a room ID");
                continue;
            };
            by_room.entry(room_id).or_default().push(pdu);
        }
        let rooms = by_room.into_iter().map(|(room_id, pdus)| async move {
            let mut results = Vec::with_capacity(pdus.len());
            for pdu in pdus {
                results.push(self.receive_pdu(origin, &room_id, pdu).await);
            }
            results
        });
        let mut results = PduResults::new();
        for outcome in futures_util::future::join_all(rooms)
            .await
            .into_iter()
            .flatten()
        {
            match outcome {
                Ok((event_id, outcome)) => {
                    tracing::debug!(%origin, %event_id, ?outcome, "a PDU of a transaction");
                    let result = match outcome {
                        Appended::New | Appended::Known => Ok(()),
                        Appended::SoftFailed => Ok(()),
                        Appended::MissingPrevious(_) => {
                            Err("prev_events could not be fetched".to_owned())
                        }
                    };
                    results.insert(event_id, result);
                }
                Err((Some(event_id), e)) => {
                    tracing::info!(%origin, %event_id, "refused a PDU: {e}");
                    results.insert(event_id, Err(e.to_string()));
                }
                Err((None, e)) => tracing::info!(%origin, "refused a PDU: {e}"),
            }
        }
        let answered: BTreeMap<&OwnedEventId, Option<&String>> = results
            .iter()
            .map(|(id, r)| (id, r.as_ref().err()))
            .collect();
        self.store.put(
            Cf::FederationTxns,
            &txn_key,
            &serde_json::to_vec(&answered)?,
        )?;
        Ok(results)
    }

    /// One PDU of a transaction: checked, its gap filled from `origin`, appended.
    async fn receive_pdu(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        pdu: CanonicalJsonObject,
    ) -> Result<(OwnedEventId, Appended), (Option<OwnedEventId>, Error)> {
        let room = self
            .timeline
            .room(room_id)
            .map_err(|e| (None, e))?
            .ok_or_else(|| (None, Error::not_found("This server is not in that room.")))?;
        let (event_id, pdu) = self
            .check_incoming_pdu(&room.version, pdu)
            .await
            .map_err(|e| (None, e))?;
        let with_id = |e: Error| (Some(event_id.clone()), e);
        if self.config.is_server_denied(origin) {
            return Err(with_id(Error::forbidden("Denied.")));
        }
        // The room's m.room.server_acl (fedread hook).
        if !self.server_acl_allows(room_id, origin).map_err(with_id)? {
            return Err(with_id(Error::forbidden(
                "The room's server ACL denies your server.",
            )));
        }
        let outcome = self
            .timeline
            .append_remote(room_id, &event_id, pdu.clone())
            .await
            .map_err(with_id)?;
        let Appended::MissingPrevious(missing) = outcome else {
            return Ok((event_id, outcome));
        };
        self.fill_gap(origin, room_id, &room.version, &event_id, &missing)
            .await
            .map_err(with_id)?;
        let outcome = self
            .timeline
            .append_remote(room_id, &event_id, pdu.clone())
            .await
            .map_err(with_id)?;
        if !matches!(outcome, Appended::MissingPrevious(_)) {
            return Ok((event_id, outcome));
        }
        // The gap is too deep to fetch: take the state before the event from the origin.
        let outcome = self
            .append_with_remote_state(origin, room_id, &room.version, &event_id, pdu)
            .await
            .map_err(with_id)?;
        Ok((event_id, outcome))
    }

    /// Fetches the events between the room's forward extremities and `latest` from `origin`
    /// (`/get_missing_events`, newest first, `MAX_MISSING` a round; further rounds go on from
    /// the oldest fetched while that still refers to unknown events, up to `MAX_GAP_ROUNDS`),
    /// then appends them oldest first.
    async fn fill_gap(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &ruma::RoomVersionId,
        latest: &EventId,
        missing: &[OwnedEventId],
    ) -> Result<()> {
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        let mut fetched: BTreeMap<OwnedEventId, (i64, CanonicalJsonObject)> = BTreeMap::new();
        let mut from = vec![latest.to_owned()];
        for _ in 0..MAX_GAP_ROUNDS {
            let mut request = get_missing_events::v1::Request::new(
                room_id.to_owned(),
                room.extremities.clone(),
                from.clone(),
            );
            request.limit = UInt::from(MAX_MISSING);
            let response = self.send_federation_request(origin, request).await?;
            let before = fetched.len();
            for raw in &response.events {
                let pdu: CanonicalJsonObject = serde_json::from_str(raw.get())
                    .map_err(|e| Error::bad_json(format!("Not a PDU: {e}")))?;
                if str_field(&pdu, "room_id") != Some(room_id.as_str()) {
                    continue;
                }
                let (id, pdu) = self.check_incoming_pdu(version, pdu).await?;
                let depth = match pdu.get("depth") {
                    Some(CanonicalJsonValue::Integer(d)) => i64::from(*d),
                    _ => 0,
                };
                fetched.insert(id, (depth, pdu));
            }
            // Still a hole below what came? Go on from the events whose parents are unknown.
            let mut unconnected = Vec::new();
            for (id, (_, pdu)) in &fetched {
                let dangling = referenced_ids(pdu, "prev_events").into_iter().any(|prev| {
                    !fetched.contains_key(&prev)
                        && !self.timeline.has_state_for(&prev).unwrap_or(false)
                });
                if dangling {
                    unconnected.push(id.clone());
                }
            }
            if unconnected.is_empty() || fetched.len() == before {
                break;
            }
            from = unconnected;
        }
        // Oldest first, so each one's prev_events are there when it is appended.
        let mut ordered: Vec<(i64, OwnedEventId, CanonicalJsonObject)> = fetched
            .into_iter()
            .map(|(id, (depth, pdu))| (depth, id, pdu))
            .collect();
        ordered.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, id, pdu) in ordered {
            let appended = match self.timeline.append_remote(room_id, &id, pdu.clone()).await {
                // The oldest fetched still hangs in the air: its state comes from the origin.
                Ok(Appended::MissingPrevious(_)) => {
                    self.append_with_remote_state(origin, room_id, version, &id, pdu)
                        .await
                }
                other => other,
            };
            if let Err(e) = appended {
                tracing::info!(%id, "a fetched missing event was refused: {e}");
            }
        }
        let still_missing: Vec<&OwnedEventId> = missing
            .iter()
            .filter(|id| !self.timeline.has_state_for(id).unwrap_or(false))
            .collect();
        if !still_missing.is_empty() {
            tracing::info!(%room_id, ?still_missing, "a gap in the room could not be filled");
        }
        Ok(())
    }

    /// Appends an event whose `prev_events` cannot be fetched, with the state before it as
    /// `origin` describes it: `/state_ids` at each unknown prev event, the events named there
    /// that are unknown here fetched (`/event`), checked and stored as outliers, the prev event
    /// itself added when it is state, and the states of several prev events resolved.
    async fn append_with_remote_state(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &ruma::RoomVersionId,
        event_id: &EventId,
        pdu: CanonicalJsonObject,
    ) -> Result<Appended> {
        let mut states = Vec::new();
        for prev in referenced_ids(&pdu, "prev_events") {
            if self.timeline.has_state_for(&prev)? {
                states.push(self.timeline.state_after(&prev)?);
                continue;
            }
            let ids = self
                .send_federation_request(
                    origin,
                    get_room_state_ids::v1::Request::new(prev.clone(), room_id.to_owned()),
                )
                .await?;
            let mut wanted: Vec<OwnedEventId> = Vec::new();
            for id in ids
                .pdu_ids
                .iter()
                .chain(&ids.auth_chain_ids)
                .chain(std::iter::once(&prev))
            {
                if self.timeline.pdu_json(id)?.is_none() && !wanted.contains(id) {
                    wanted.push(id.clone());
                }
            }
            if wanted.len() > MAX_STATE_FETCH {
                return Err(Error::bad_json(format!(
                    "The state at {prev} names more than {MAX_STATE_FETCH} unknown events."
                )));
            }
            let fetched = self.fetch_events(origin, room_id, version, &wanted).await?;
            self.timeline.store_outliers(&fetched)?;
            let mut state = crate::service::rooms::state_res::State::new();
            for id in ids.pdu_ids.iter().chain(std::iter::once(&prev)) {
                let Some(json) = self.timeline.pdu_json(id)? else {
                    continue;
                };
                if let (
                    Some(CanonicalJsonValue::String(kind)),
                    Some(CanonicalJsonValue::String(key)),
                ) = (json.get("type"), json.get("state_key"))
                {
                    state.insert((kind.clone(), key.clone()), id.clone());
                }
            }
            states.push(state);
        }
        let state = self.timeline.resolve_state(version, &states)?;
        self.timeline
            .append_remote_with_state(room_id, event_id, pdu, state)
            .await
    }

    /// Fetches events from `origin` (`/event`), a few at a time, keeping those that pass the
    /// receipt checks and belong to `room_id`.
    async fn fetch_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &ruma::RoomVersionId,
        ids: &[OwnedEventId],
    ) -> Result<Vec<(OwnedEventId, CanonicalJsonObject)>> {
        let mut fetched = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(16) {
            let requests = chunk.iter().map(|id| async move {
                let response = self
                    .send_federation_request(origin, get_event::v1::Request::new(id.clone()))
                    .await?;
                let pdu: CanonicalJsonObject = serde_json::from_str(response.pdu.get())
                    .map_err(|e| Error::bad_json(format!("Not a PDU: {e}")))?;
                let (checked, pdu) = self.check_incoming_pdu(version, pdu).await?;
                if &checked != id {
                    return Err(Error::bad_json(format!(
                        "{origin} sent another event for {id}"
                    )));
                }
                Ok::<_, Error>((checked, pdu))
            });
            for result in futures_util::future::join_all(requests).await {
                match result {
                    Ok((id, pdu)) => {
                        if pdu_in_room(&id, &pdu, room_id) {
                            fetched.push((id, pdu));
                        }
                    }
                    Err(e) => {
                        tracing::info!(%room_id, %origin, "fetching a state event failed: {e}")
                    }
                }
            }
        }
        Ok(fetched)
    }
}
