//! `GET /_matrix/federation/v1/query/profile` and `/query/directory`: what other servers may
//! ask about this server's users and aliases.

use axum::extract;
use ruma::api::federation::query::{get_profile_information, get_room_information};

use crate::{
    Error, Result,
    api::{
        ruma::{RumaResponse, State},
        server::auth::Fed,
    },
};

pub async fn profile(
    extract::State(services): extract::State<State>,
    request: Fed<get_profile_information::v1::Request>,
) -> Result<RumaResponse<get_profile_information::v1::Response>> {
    let user_id = &request.body.user_id;
    if user_id.server_name() != services.server_name {
        return Err(Error::invalid_param("That user is not on this server."));
    }
    if !services.users.exists(user_id)? {
        return Err(Error::not_found("No such user."));
    }
    let mut profile = services.users.profile(user_id)?;
    if let Some(field) = &request.body.field {
        profile.retain(|name, _| name == field.as_str());
    }
    let data = serde_json::from_value(serde_json::Value::Object(profile.into_iter().collect()))
        .map_err(|e| Error::internal(format!("stored profile unreadable: {e}")))?;
    let mut response = get_profile_information::v1::Response::new();
    response.data = data;
    Ok(RumaResponse(response))
}

pub async fn directory(
    extract::State(services): extract::State<State>,
    request: Fed<get_room_information::v1::Request>,
) -> Result<RumaResponse<get_room_information::v1::Response>> {
    let alias = &request.body.room_alias;
    if alias.server_name() != services.server_name {
        return Err(Error::invalid_param("That alias is not on this server."));
    }
    let room_id = services
        .resolve_alias(alias)?
        .ok_or_else(|| Error::not_found("No such room alias."))?;
    let servers = services.servers_in_room(&room_id)?;
    Ok(RumaResponse(get_room_information::v1::Response::new(
        room_id, servers,
    )))
}
