//! Delayed events (MSC4140): listing a user's scheduled events, and restarting, cancelling or
//! sending one. Scheduling is a query parameter of `/send` and `/state` (see `room`).

use axum::{Json, extract};
use ruma::api::client::delayed_events::{
    get_all_delayed_events::unstable as list_unstable,
    get_delayed_event::unstable as get_unstable,
    update_delayed_event::{UpdateAction, unstable_v1 as update_v1, unstable_v2 as update_v2},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::{delayed_events::DelayedAction, ratelimit::Action},
};

/// The delay a `/send` or `/state` request asks for (`org.matrix.msc4140.delay`, in ms), if any.
pub fn requested_delay(query: Option<&str>) -> Result<Option<u64>> {
    #[derive(Deserialize)]
    struct Query {
        #[serde(rename = "org.matrix.msc4140.delay")]
        delay: Option<String>,
    }
    let Some(query) = query else {
        return Ok(None);
    };
    let parsed: Query = serde_html_form::from_str(query)
        .map_err(|e| Error::invalid_param(format!("Bad query: {e}")))?;
    match parsed.delay {
        None => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(delay) if delay > 0 => Ok(Some(delay)),
            _ => Err(Error::invalid_param(
                "org.matrix.msc4140.delay must be a positive number of milliseconds.",
            )),
        },
    }
}

/// The user's delayed events: scheduled ones, or with `status=finalised` what became of the
/// latest ones (sent with their event ID, or the error that stopped them).
pub async fn list(
    extract::State(services): extract::State<State>,
    extract::RawQuery(query): extract::RawQuery,
    request: Ruma<list_unstable::Request>,
) -> Result<Json<Value>> {
    #[derive(Deserialize)]
    struct Query {
        status: Option<String>,
    }
    let query: Query = serde_html_form::from_str(query.as_deref().unwrap_or_default())
        .map_err(|e| Error::invalid_param(format!("Bad query: {e}")))?;
    let delayed = &services.delayed_events;
    let events: Vec<Value> = match query.status.as_deref() {
        None | Some("scheduled") => delayed
            .of_user(request.user())?
            .iter()
            .map(|e| e.to_json())
            .collect(),
        Some("finalised") => delayed
            .finalised_of_user(request.user())?
            .iter()
            .map(|e| e.to_json())
            .collect(),
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown status {other}: scheduled or finalised."
            )));
        }
    };
    Ok(Json(json!({ "delayed_events": events })))
}

pub async fn get(
    extract::State(services): extract::State<State>,
    request: Ruma<get_unstable::Request>,
) -> Result<Json<Value>> {
    let event = services
        .delayed_events
        .get(request.user(), &request.body.delay_id)?;
    Ok(Json(json!({ "delayed_event": event.to_json() })))
}

/// `POST .../delayed_events/{delay_id}` with `{"action": ...}` (what matrix-js-sdk sends).
pub async fn update_with_body(
    extract::State(services): extract::State<State>,
    request: Ruma<update_v1::Request>,
) -> Result<Json<Value>> {
    let action = request.body.action.clone();
    update(&services, &request, &request.body.delay_id, &action).await
}

/// `POST .../delayed_events/{delay_id}/{action}` (no token needed: the delay ID is enough).
pub async fn update_by_path(
    extract::State(services): extract::State<State>,
    request: Ruma<update_v2::Request>,
) -> Result<Json<Value>> {
    let action = request.body.action.clone();
    update(&services, &request, &request.body.delay_id, &action).await
}

async fn update<T>(
    services: &State,
    request: &Ruma<T>,
    delay_id: &str,
    action: &UpdateAction,
) -> Result<Json<Value>> {
    let action = match action.as_str() {
        "restart" => DelayedAction::Restart,
        "cancel" => DelayedAction::Cancel,
        "send" => DelayedAction::Send,
        other => {
            return Err(Error::invalid_param(format!(
                "Unknown action {other}: restart, cancel or send."
            )));
        }
    };
    let key = match &request.sender_user {
        Some(user) => user.to_string(),
        None => request.ip_key(),
    };
    if request.rate_limited() {
        services
            .rate_limiter
            .check(Action::DelayedEventUpdate, &key)
            .map_err(Error::limit_exceeded)?;
    }
    services.update_delayed_event(delay_id, action).await?;
    Ok(Json(json!({})))
}
