//! Other servers' users and this server's rooms: `make_join` / `send_join` (v2),
//! `make_leave` / `send_leave` (v2), `make_knock` / `send_knock`, and invites of local users
//! (`invite` v2).

use axum::extract;
use ruma::api::federation::membership::{
    create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
    prepare_knock_event, prepare_leave_event,
};

use crate::{
    Error, Result,
    api::{
        ruma::{RumaResponse, State},
        server::auth::Fed,
    },
};

/// The room's server ACL applies to joins through it too.
fn check_acl(services: &State, room_id: &ruma::RoomId, origin: &ruma::ServerName) -> Result<()> {
    if services.server_acl_allows(room_id, origin)? {
        Ok(())
    } else {
        Err(Error::forbidden(
            "The room's server ACL denies your server.",
        ))
    }
}

pub async fn make_join(
    extract::State(services): extract::State<State>,
    request: Fed<prepare_join_event::v1::Request>,
) -> Result<RumaResponse<prepare_join_event::v1::Response>> {
    let body = &request.body;
    check_acl(&services, &body.room_id, &request.origin)?;
    let (version, template) =
        services.make_join_template(&request.origin, &body.room_id, &body.user_id, &body.ver)?;
    let event =
        serde_json::value::to_raw_value(&template).map_err(|e| Error::internal(e.to_string()))?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(RumaResponse(response))
}

pub async fn send_join(
    extract::State(services): extract::State<State>,
    request: Fed<create_join_event::v2::Request>,
) -> Result<RumaResponse<create_join_event::v2::Response>> {
    let body = &request.body;
    check_acl(&services, &body.room_id, &request.origin)?;
    let room_state = services
        .accept_send_join(&request.origin, &body.room_id, &body.event_id, &body.pdu)
        .await?;
    Ok(RumaResponse(create_join_event::v2::Response::new(
        room_state,
    )))
}

pub async fn make_leave(
    extract::State(services): extract::State<State>,
    request: Fed<prepare_leave_event::v1::Request>,
) -> Result<RumaResponse<prepare_leave_event::v1::Response>> {
    let body = &request.body;
    let (version, template) =
        services.make_leave_template(&request.origin, &body.room_id, &body.user_id)?;
    let event =
        serde_json::value::to_raw_value(&template).map_err(|e| Error::internal(e.to_string()))?;
    Ok(RumaResponse(prepare_leave_event::v1::Response::new(
        Some(version),
        event,
    )))
}

pub async fn send_leave(
    extract::State(services): extract::State<State>,
    request: Fed<create_leave_event::v2::Request>,
) -> Result<RumaResponse<create_leave_event::v2::Response>> {
    let body = &request.body;
    services
        .accept_membership_event(
            &request.origin,
            &body.room_id,
            &body.event_id,
            &body.pdu,
            ruma::events::room::member::MembershipState::Leave,
        )
        .await?;
    Ok(RumaResponse(create_leave_event::v2::Response::new()))
}

pub async fn invite(
    extract::State(services): extract::State<State>,
    request: Fed<create_invite::v2::Request>,
) -> Result<RumaResponse<create_invite::v2::Response>> {
    let signed = services
        .accept_remote_invite(&request.origin, &request.body)
        .await?;
    let event =
        serde_json::value::to_raw_value(&signed).map_err(|e| Error::internal(e.to_string()))?;
    Ok(RumaResponse(create_invite::v2::Response::new(event)))
}

pub async fn make_knock(
    extract::State(services): extract::State<State>,
    request: Fed<prepare_knock_event::v1::Request>,
) -> Result<RumaResponse<prepare_knock_event::v1::Response>> {
    let body = &request.body;
    check_acl(&services, &body.room_id, &request.origin)?;
    let (version, template) =
        services.make_knock_template(&request.origin, &body.room_id, &body.user_id, &body.ver)?;
    let event =
        serde_json::value::to_raw_value(&template).map_err(|e| Error::internal(e.to_string()))?;
    Ok(RumaResponse(prepare_knock_event::v1::Response::new(
        version, event,
    )))
}

pub async fn send_knock(
    extract::State(services): extract::State<State>,
    request: Fed<create_knock_event::v1::Request>,
) -> Result<RumaResponse<create_knock_event::v1::Response>> {
    let body = &request.body;
    check_acl(&services, &body.room_id, &request.origin)?;
    let state = services
        .accept_send_knock(&request.origin, &body.room_id, &body.event_id, &body.pdu)
        .await?;
    Ok(RumaResponse(create_knock_event::v1::Response::new(state)))
}
