//! Reading events: `GET /_matrix/federation/v1/event/{eventId}` and
//! `POST /_matrix/federation/v1/get_missing_events/{roomId}`.

use axum::extract;
use ruma::api::federation::event::{get_event, get_missing_events};

use crate::{
    Error, Result,
    api::{
        ruma::{RumaResponse, State},
        server::auth::Fed,
    },
};

pub async fn event(
    extract::State(services): extract::State<State>,
    request: Fed<get_event::v1::Request>,
) -> Result<RumaResponse<get_event::v1::Response>> {
    let pdu = services.event_for_server(&request.origin, &request.body.event_id)?;
    let pdu = serde_json::value::to_raw_value(&pdu).map_err(|e| Error::internal(e.to_string()))?;
    Ok(RumaResponse(get_event::v1::Response::new(
        services.server_name.clone(),
        ruma::MilliSecondsSinceUnixEpoch::now(),
        pdu,
    )))
}

pub async fn missing_events(
    extract::State(services): extract::State<State>,
    request: Fed<get_missing_events::v1::Request>,
) -> Result<RumaResponse<get_missing_events::v1::Response>> {
    let body = &request.body;
    let events = services.missing_events_for_server(
        &request.origin,
        &body.room_id,
        &body.earliest_events,
        &body.latest_events,
        u64::from(body.limit).min(100) as usize,
        u64::from(body.min_depth),
    )?;
    let events = events
        .iter()
        .map(|pdu| serde_json::value::to_raw_value(pdu).map_err(|e| Error::internal(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    Ok(RumaResponse(get_missing_events::v1::Response::new(events)))
}
