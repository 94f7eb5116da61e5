//! Presence: `PUT`/`GET /presence/{userId}/status`.

use std::time::Duration;

use axum::extract;
use ruma::api::client::presence::{get_presence::v3 as get_v3, set_presence::v3 as set_v3};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::presence::{PresenceUpdate, parse_state},
};

pub async fn set(
    extract::State(services): extract::State<State>,
    request: Ruma<set_v3::Request>,
) -> Result<RumaResponse<set_v3::Response>> {
    let body = &request.body;
    if request.user() != body.user_id {
        return Err(Error::forbidden(
            "You may only set your own presence state.",
        ));
    }
    let state = parse_state(&body.presence)?;
    let update = PresenceUpdate::Explicit {
        state,
        status_msg: body.status_msg.as_deref(),
    };
    services.set_presence(request.user(), update).await?;
    Ok(RumaResponse(set_v3::Response::new()))
}

pub async fn get(
    extract::State(services): extract::State<State>,
    request: Ruma<get_v3::Request>,
) -> Result<RumaResponse<get_v3::Response>> {
    let target = &request.body.user_id;
    // Users of other servers: what their server told us (federation), if anything.
    let known = if target.server_name() == services.server_name {
        services.users.is_active(target)?
    } else {
        services.presence_record(target)?.is_some()
    };
    if !known {
        return Err(Error::not_found("No presence for that user."));
    }
    if !services.may_see_presence(request.user(), target)? {
        return Err(Error::forbidden(
            "You are not allowed to see their presence.",
        ));
    }
    let content = services.presence_content(target)?;
    let presence = content["presence"].as_str().unwrap_or("offline").into();
    let mut response = get_v3::Response::new(presence);
    response.status_msg = content["status_msg"].as_str().map(str::to_owned);
    response.currently_active = content["currently_active"].as_bool();
    response.last_active_ago = content["last_active_ago"]
        .as_u64()
        .map(Duration::from_millis);
    Ok(RumaResponse(response))
}
