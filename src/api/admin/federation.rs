//! Synapse's federation admin API: the other servers this one sends to, how sending to each
//! goes, the rooms shared with one, and resetting one's back-off.

use axum::{
    Json,
    extract::{self, Path},
};
use ruma::{OwnedServerName, ServerName};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminQuery, backwards, number};
use crate::{Error, Result, api::ruma::State, service::federation::destinations::DestinationState};

fn destination_json(name: &ServerName, state: Option<&DestinationState>) -> Value {
    let state = state.cloned().unwrap_or_default();
    json!({
        "destination": name,
        "retry_last_ts": state.retry_last_ts.unwrap_or(0),
        "retry_interval": state.retry_interval_ms,
        "failure_ts": state.failure_ts,
        "last_successful_stream_ordering": null,
        "last_success_ts": state.last_success_ts,
    })
}

fn known(services: &State, raw: &str) -> Result<(OwnedServerName, Option<DestinationState>)> {
    let name = ServerName::parse(raw)
        .map_err(|e| Error::invalid_param(format!("Invalid server name {raw:?}: {e}")))?;
    services
        .admin_destinations()?
        .into_iter()
        .find(|(known, _)| *known == name)
        .ok_or_else(|| Error::not_found("Unknown destination"))
}

#[derive(Deserialize)]
pub struct ListQuery {
    from: Option<String>,
    limit: Option<String>,
    destination: Option<String>,
    order_by: Option<String>,
    dir: Option<String>,
}

/// `GET /v1/federation/destinations`.
pub async fn list(
    extract::State(services): extract::State<State>,
    _: Admin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> Result<Json<Value>> {
    let from = number("from", &query.from, 0)?;
    let limit = number("limit", &query.limit, 100)?;
    let backwards = backwards(&query.dir, false)?;
    let mut all = services.admin_destinations()?;
    if let Some(part) = query.destination.as_deref().filter(|p| !p.is_empty()) {
        all.retain(|(name, _)| name.as_str().contains(part));
    }
    let key = |state: &Option<DestinationState>, order: &str| -> u64 {
        let state = state.clone().unwrap_or_default();
        match order {
            "retry_last_ts" => state.retry_last_ts.unwrap_or(0),
            "retry_interval" => state.retry_interval_ms,
            "failure_ts" => state.failure_ts.unwrap_or(0),
            _ => state.last_success_ts.unwrap_or(0),
        }
    };
    match query.order_by.as_deref() {
        None | Some("destination") => {}
        Some(
            order @ ("retry_last_ts"
            | "retry_interval"
            | "failure_ts"
            | "last_successful_stream_ordering"),
        ) => all.sort_by_key(|(_, state)| key(state, order)),
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown value for order_by: {other}"
            )));
        }
    }
    if backwards {
        all.reverse();
    }
    let total = all.len();
    let page: Vec<Value> = all
        .iter()
        .skip(from)
        .take(limit)
        .map(|(name, state)| destination_json(name, state.as_ref()))
        .collect();
    let mut body = json!({ "destinations": page, "total": total });
    if from + limit < total {
        body["next_token"] = json!((from + limit).to_string());
    }
    Ok(Json(body))
}

/// `GET /v1/federation/destinations/{destination}`.
pub async fn one(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Value>> {
    let (name, state) = known(&services, &raw)?;
    Ok(Json(destination_json(&name, state.as_ref())))
}

/// `GET /v1/federation/destinations/{destination}/rooms`: the rooms it has members in.
pub async fn rooms(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Value>> {
    let (name, _) = known(&services, &raw)?;
    let rooms: Vec<Value> = services
        .admin_destination_rooms(&name)?
        .into_iter()
        .map(|room_id| json!({ "room_id": room_id, "stream_ordering": 0 }))
        .collect();
    Ok(Json(json!({ "total": rooms.len(), "rooms": rooms })))
}

/// `POST /v1/federation/destinations/{destination}/reset_connection`: forgets its failures
/// and tries again now (400 when it is not failing).
pub async fn reset_connection(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Value>> {
    let (name, _) = known(&services, &raw)?;
    if !services.federation.destinations.reset(&name) {
        return Err(Error::invalid_param(
            "The retry timing does not need to be reset for this destination.",
        ));
    }
    admin.audit("reset federation connection", &name);
    Ok(Json(json!({})))
}
