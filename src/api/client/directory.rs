//! The room directory's aliases: `PUT/GET/DELETE /directory/room/{alias}`, `/rooms/{id}/aliases`.

use axum::extract;
use ruma::api::client::{
    alias::{
        create_alias::v3 as create_v3, delete_alias::v3 as delete_v3, get_alias::v3 as get_v3,
    },
    room::aliases::v3 as aliases_v3,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
};

pub async fn create_alias(
    extract::State(services): extract::State<State>,
    request: Ruma<create_v3::Request>,
) -> Result<RumaResponse<create_v3::Response>> {
    let body = &request.body;
    let membership = services
        .timeline
        .membership(&body.room_id, request.user())?;
    if membership.is_none_or(|m| m.membership != "join") {
        return Err(Error::forbidden(
            "You must be in the room to give it an alias.",
        ));
    }
    services.create_alias(&body.room_alias, &body.room_id, request.user())?;
    Ok(RumaResponse(create_v3::Response::new()))
}

pub async fn get_alias(
    extract::State(services): extract::State<State>,
    request: Ruma<get_v3::Request>,
) -> Result<RumaResponse<get_v3::Response>> {
    let room_id = services
        .resolve_alias(&request.body.room_alias)?
        .ok_or_else(|| Error::not_found("No room has that alias."))?;
    Ok(RumaResponse(get_v3::Response::new(
        room_id,
        vec![services.server_name.clone()],
    )))
}

pub async fn delete_alias(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_v3::Request>,
) -> Result<RumaResponse<delete_v3::Response>> {
    services.delete_alias(&request.body.room_alias, request.user())?;
    Ok(RumaResponse(delete_v3::Response::new()))
}

pub async fn room_aliases(
    extract::State(services): extract::State<State>,
    request: Ruma<aliases_v3::Request>,
) -> Result<RumaResponse<aliases_v3::Response>> {
    let room_id = &request.body.room_id;
    // Members (or former members) may list a room's aliases.
    services.visible_state(room_id, request.user())?;
    Ok(RumaResponse(aliases_v3::Response::new(
        services.room_aliases(room_id)?,
    )))
}
