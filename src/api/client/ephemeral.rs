//! Typing notifications and read receipts.

use axum::extract;
use ruma::api::client::{
    receipt::create_receipt::v3 as receipt_v3, typing::create_typing_event::v3 as typing_v3,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
};

pub async fn typing(
    extract::State(services): extract::State<State>,
    request: Ruma<typing_v3::Request>,
) -> Result<RumaResponse<typing_v3::Response>> {
    let body = &request.body;
    if request.user() != body.user_id {
        return Err(Error::forbidden("You may only set your own typing state."));
    }
    if request.shadow_banned() {
        return Ok(RumaResponse(typing_v3::Response::new()));
    }
    let timeout = match &body.state {
        typing_v3::Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    services
        .set_typing(&body.room_id, request.user(), timeout)
        .await?;
    Ok(RumaResponse(typing_v3::Response::new()))
}

pub async fn receipt(
    extract::State(services): extract::State<State>,
    request: Ruma<receipt_v3::Request>,
) -> Result<RumaResponse<receipt_v3::Response>> {
    let body = &request.body;
    let receipt_type = body.receipt_type.to_string();
    if receipt_type != "m.read" && receipt_type != "m.read.private" {
        return Err(Error::invalid_param(format!(
            "Receipt type {receipt_type} is not supported (yet)."
        )));
    }
    let thread = body.thread.as_str();
    services
        .set_receipt(
            &body.room_id,
            request.user(),
            &receipt_type,
            &body.event_id,
            thread,
        )
        .await?;
    Ok(RumaResponse(receipt_v3::Response::new()))
}
