//! Push: `/pushers`, `/pushers/set` and `/notifications` (see `service::push`). The rules
//! themselves are `push_rules.rs`.

use axum::{Json, extract};
use ruma::api::client::push::{
    get_notifications::v3 as notifications_v3, get_pushers::v3 as pushers_v3,
    set_pusher::v3 as set_pusher_v3,
};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::push::counts::{DEFAULT_NOTIFICATIONS, MAX_NOTIFICATIONS},
};

pub async fn pushers(
    extract::State(services): extract::State<State>,
    request: Ruma<pushers_v3::Request>,
) -> Result<RumaResponse<pushers_v3::Response>> {
    Ok(RumaResponse(pushers_v3::Response::new(
        services.pushers(request.user())?,
    )))
}

pub async fn set_pusher(
    extract::State(services): extract::State<State>,
    request: Ruma<set_pusher_v3::Request>,
) -> Result<RumaResponse<set_pusher_v3::Response>> {
    let user = request.user().to_owned();
    let device = request.device().to_owned();
    services
        .set_pusher(&user, &device, request.body.action)
        .await?;
    Ok(RumaResponse(set_pusher_v3::Response::new()))
}

pub async fn notifications(
    extract::State(services): extract::State<State>,
    request: Ruma<notifications_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let from = body
        .from
        .as_deref()
        .map(|from| {
            from.parse::<u64>()
                .map_err(|_| Error::invalid_param("Unknown pagination token."))
        })
        .transpose()?;
    let limit = body
        .limit
        .map_or(DEFAULT_NOTIFICATIONS, |l| {
            usize::try_from(u64::from(l)).unwrap_or(MAX_NOTIFICATIONS)
        })
        .clamp(1, MAX_NOTIFICATIONS);
    let only_highlights = match body.only.as_deref() {
        None => false,
        Some("highlight") => true,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown value of `only`: {other} (only `highlight` is defined)."
            )));
        }
    };
    let page = services.notifications(request.user(), from, limit, only_highlights)?;
    let mut answer = json!({ "notifications": page.notifications });
    if let Some(next) = page.next_token {
        answer["next_token"] = next.to_string().into();
    }
    Ok(Json(answer))
}
