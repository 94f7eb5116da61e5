//! Reading a room's history and state: `/state`, `/state_ids`, `/backfill`, `/event_auth`
//! and `/timestamp_to_event`. The checks (the origin in the room, the server ACL, history
//! visibility) are in `service::federation::serve`.

use axum::extract;
use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, UInt,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event_by_timestamp, get_room_state, get_room_state_ids},
    },
};
use serde_json::value::RawValue;

use crate::{
    Error, Result,
    api::{
        ruma::{RumaResponse, State},
        server::auth::Fed,
    },
};

/// At most this many events per `/backfill`.
const MAX_BACKFILL: u64 = 100;

fn raw_pdus(pdus: &[CanonicalJsonObject]) -> Result<Vec<Box<RawValue>>> {
    pdus.iter()
        .map(|pdu| serde_json::value::to_raw_value(pdu).map_err(|e| Error::internal(e.to_string())))
        .collect()
}

pub async fn state(
    extract::State(services): extract::State<State>,
    request: Fed<get_room_state::v1::Request>,
) -> Result<RumaResponse<get_room_state::v1::Response>> {
    let body = &request.body;
    let (state, chain) =
        services.state_for_server(&request.origin, &body.room_id, &body.event_id)?;
    Ok(RumaResponse(get_room_state::v1::Response::new(
        raw_pdus(&chain)?,
        raw_pdus(&state)?,
    )))
}

pub async fn state_ids(
    extract::State(services): extract::State<State>,
    request: Fed<get_room_state_ids::v1::Request>,
) -> Result<RumaResponse<get_room_state_ids::v1::Response>> {
    let body = &request.body;
    let (state, chain) =
        services.state_ids_for_server(&request.origin, &body.room_id, &body.event_id)?;
    Ok(RumaResponse(get_room_state_ids::v1::Response::new(
        chain, state,
    )))
}

pub async fn backfill(
    extract::State(services): extract::State<State>,
    request: Fed<get_backfill::v1::Request>,
) -> Result<RumaResponse<get_backfill::v1::Response>> {
    let body = &request.body;
    if body.v.is_empty() {
        return Err(Error::invalid_param("Name at least one event in `v`."));
    }
    let limit = u64::from(body.limit).min(MAX_BACKFILL) as usize;
    let pdus = services.backfill_for_server(&request.origin, &body.room_id, &body.v, limit)?;
    Ok(RumaResponse(get_backfill::v1::Response::new(
        services.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        raw_pdus(&pdus)?,
    )))
}

pub async fn event_auth(
    extract::State(services): extract::State<State>,
    request: Fed<get_event_authorization::v1::Request>,
) -> Result<RumaResponse<get_event_authorization::v1::Response>> {
    let body = &request.body;
    let chain = services.event_auth_for_server(&request.origin, &body.room_id, &body.event_id)?;
    Ok(RumaResponse(get_event_authorization::v1::Response::new(
        raw_pdus(&chain)?,
    )))
}

pub async fn timestamp_to_event(
    extract::State(services): extract::State<State>,
    request: Fed<get_event_by_timestamp::v1::Request>,
) -> Result<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let body = &request.body;
    let forward = matches!(body.dir, ruma::api::Direction::Forward);
    let (event_id, ts) = services.timestamp_for_server(
        &request.origin,
        &body.room_id,
        u64::from(body.ts.get()),
        forward,
    )?;
    let ts = UInt::new(ts).ok_or_else(|| Error::internal("timestamp out of range"))?;
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(
        event_id,
        MilliSecondsSinceUnixEpoch(ts),
    )))
}
