//! Global account data: `GET/PUT /user/{userId}/account_data/{type}`.

use axum::extract;
use ruma::{
    api::client::config::{
        get_global_account_data::v3 as get_v3, set_global_account_data::v3 as set_v3,
    },
    serde::Raw,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
};

/// Types the server manages itself; clients may not set them through this endpoint.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

fn require_own(sender: &ruma::UserId, target: &ruma::UserId) -> Result<()> {
    if sender != target {
        return Err(Error::forbidden(
            "You may only access your own account data.",
        ));
    }
    Ok(())
}

pub async fn get_global(
    extract::State(services): extract::State<State>,
    request: Ruma<get_v3::Request>,
) -> Result<RumaResponse<get_v3::Response>> {
    require_own(request.user(), &request.body.user_id)?;
    let event_type = request.body.event_type.to_string();
    let content = services
        .account_data
        .get(request.user(), None, &event_type)?
        .ok_or_else(|| Error::not_found("No account data of that type."))?;
    Ok(RumaResponse(get_v3::Response::new(Raw::from_json(content))))
}

pub async fn set_global(
    extract::State(services): extract::State<State>,
    request: Ruma<set_v3::Request>,
) -> Result<RumaResponse<set_v3::Response>> {
    require_own(request.user(), &request.body.user_id)?;
    let event_type = request.body.event_type.to_string();
    if SERVER_MANAGED.contains(&event_type.as_str()) {
        return Err(Error::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            ruma::api::error::ErrorKind::BadJson,
            format!("{event_type} is managed by the server and cannot be set here."),
        ));
    }
    let content = request.body.data.json();
    if !content.get().trim_start().starts_with('{') {
        return Err(Error::bad_json(
            "Account data content must be a JSON object.",
        ));
    }
    services
        .account_data
        .set(request.user(), None, &event_type, content)?;
    Ok(RumaResponse(set_v3::Response::new()))
}
