//! Reporting content to the server's admins: an event, a room, a user.

use axum::{Json, extract};
use ruma::api::client::{
    reporting::report_user::v3 as report_user_v3,
    room::{report_content::v3 as report_event_v3, report_room::v3 as report_room_v3},
};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::ratelimit::Action,
};

fn rate_limit<T>(services: &State, request: &Ruma<T>) -> Result<()> {
    if request.rate_limited() {
        services
            .rate_limiter
            .check(Action::Report, request.user().as_str())
            .map_err(Error::limit_exceeded)?;
    }
    Ok(())
}

pub async fn report_event(
    extract::State(services): extract::State<State>,
    request: Ruma<report_event_v3::Request>,
) -> Result<Json<Value>> {
    rate_limit(&services, &request)?;
    let body = &request.body;
    services.report_event(
        request.viewer(),
        &body.room_id,
        &body.event_id,
        body.reason.as_deref().unwrap_or_default(),
    )?;
    Ok(Json(json!({})))
}

pub async fn report_room(
    extract::State(services): extract::State<State>,
    request: Ruma<report_room_v3::Request>,
) -> Result<Json<Value>> {
    rate_limit(&services, &request)?;
    let body = &request.body;
    services.report_room(request.user(), &body.room_id, &body.reason)?;
    Ok(Json(json!({})))
}

pub async fn report_user(
    extract::State(services): extract::State<State>,
    request: Ruma<report_user_v3::Request>,
) -> Result<Json<Value>> {
    rate_limit(&services, &request)?;
    let body = &request.body;
    services.report_user(request.user(), &body.user_id, &body.reason)?;
    Ok(Json(json!({})))
}
