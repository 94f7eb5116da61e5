//! `GET /rooms/{roomId}/context/{eventId}`: the events around an event.

use axum::extract;
use ruma::api::client::context::get_context::v3 as context_v3;
use serde_json::{Value, json};

use crate::{
    Result,
    api::ruma::{Ruma, State},
};

/// Most context events one request returns.
const MAX_LIMIT: usize = 1000;

pub async fn get_context(
    extract::State(services): extract::State<State>,
    request: Ruma<context_v3::Request>,
) -> Result<axum::Json<Value>> {
    let body = &request.body;
    let limit = usize::try_from(u64::from(body.limit))
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    let context = services.context(
        &body.room_id,
        request.viewer(),
        &body.event_id,
        limit,
        &body.filter,
    )?;
    Ok(axum::Json(json!({
        "start": context.start.to_string(),
        "end": context.end.to_string(),
        "events_before": context.events_before,
        "event": context.event,
        "events_after": context.events_after,
        "state": context.state,
    })))
}
