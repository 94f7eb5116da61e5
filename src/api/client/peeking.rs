//! Peeking and the legacy views of one room: `GET /events?room_id=` and
//! `GET /rooms/{roomId}/initialSync` (see `service::rooms::peeking`).

use axum::{Json, extract};
use ruma::api::client::peeking::{
    get_current_state::v3 as initial_sync_v3, listen_to_new_events::v3 as events_v3,
};
use serde_json::{Value, json};

use super::room::stream_token;
use crate::{
    Result,
    api::ruma::{Ruma, State},
};

pub async fn events(
    extract::State(services): extract::State<State>,
    request: Ruma<events_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let peeked = services
        .peek_events(
            &body.room_id,
            request.viewer(),
            stream_token(body.from.as_deref())?,
            body.timeout.unwrap_or_default(),
        )
        .await?;
    Ok(Json(json!({
        "start": peeked.start.to_string(),
        "end": peeked.end.to_string(),
        "chunk": peeked.events,
    })))
}

pub async fn initial_sync(
    extract::State(services): extract::State<State>,
    request: Ruma<initial_sync_v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(services.room_initial_sync(
        &request.body.room_id,
        request.viewer(),
    )?))
}
