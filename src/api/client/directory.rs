//! The room directory: aliases (`PUT/GET/DELETE /directory/room/{alias}`,
//! `/rooms/{id}/aliases`), published rooms (`/directory/list/room/{id}`, `/publicRooms`) and
//! room summaries (`/room_summary/{roomIdOrAlias}`).

use axum::extract;
use ruma::{
    OwnedRoomId, ServerName,
    api::client::{
        alias::{
            create_alias::v3 as create_v3, delete_alias::v3 as delete_v3, get_alias::v3 as get_v3,
        },
        directory::{
            get_public_rooms::v3 as public_v3, get_public_rooms_filtered::v3 as filtered_v3,
            get_room_visibility::v3 as get_visibility_v3,
            set_room_visibility::v3 as set_visibility_v3,
        },
        room::{Visibility, aliases::v3 as aliases_v3, get_summary::v1 as summary_v1},
    },
    directory::RoomNetwork,
    events::room::member::MembershipState,
};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::rooms::directory::{DirectoryPage, DirectoryQuery},
};

pub async fn create_alias(
    extract::State(services): extract::State<State>,
    request: Ruma<create_v3::Request>,
) -> Result<RumaResponse<create_v3::Response>> {
    let body = &request.body;
    let membership = services.members.membership(&body.room_id, request.user())?;
    if membership.is_none_or(|m| m.membership != MembershipState::Join) {
        return Err(Error::forbidden(
            "You must be in the room to give it an alias.",
        ));
    }
    services
        .appservices
        .check_alias_exclusive(&body.room_alias, request.appservice.as_deref())?;
    services.create_alias(&body.room_alias, &body.room_id, request.user())?;
    Ok(RumaResponse(create_v3::Response::new()))
}

pub async fn get_alias(
    extract::State(services): extract::State<State>,
    request: Ruma<get_v3::Request>,
) -> Result<RumaResponse<get_v3::Response>> {
    let room_id = services
        .resolve_alias_with_appservices(&request.body.room_alias)
        .await?
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

pub async fn get_visibility(
    extract::State(services): extract::State<State>,
    request: Ruma<get_visibility_v3::Request>,
) -> Result<RumaResponse<get_visibility_v3::Response>> {
    let visibility = if services.is_published(&request.body.room_id)? {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(RumaResponse(get_visibility_v3::Response::new(visibility)))
}

pub async fn set_visibility(
    extract::State(services): extract::State<State>,
    request: Ruma<set_visibility_v3::Request>,
) -> Result<RumaResponse<set_visibility_v3::Response>> {
    let publish = match request.body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => {
            return Err(Error::invalid_param(
                "visibility must be `public` or `private`.",
            ));
        }
    };
    services.set_published(&request.body.room_id, request.user(), publish)?;
    Ok(RumaResponse(set_visibility_v3::Response::new()))
}

/// The server whose directory is asked for, when it is not this one.
fn remote<'a>(services: &State, server: Option<&'a ServerName>) -> Option<&'a ServerName> {
    server.filter(|server| *server != services.server_name)
}

fn page_json(page: DirectoryPage) -> Result<axum::Json<Value>> {
    let mut response = json!({
        "chunk": serde_json::to_value(&page.rooms)?,
        "total_room_count_estimate": page.total,
    });
    if let Some(next) = page.next_batch {
        response["next_batch"] = json!(next);
    }
    if let Some(prev) = page.prev_batch {
        response["prev_batch"] = json!(prev);
    }
    Ok(axum::Json(response))
}

pub async fn public_rooms(
    extract::State(services): extract::State<State>,
    request: Ruma<public_v3::Request>,
) -> Result<axum::Json<Value>> {
    let body = request.body;
    if let Some(server) = remote(&services, body.server.as_deref()) {
        return Ok(axum::Json(
            services
                .remote_public_rooms(server, body.limit, body.since, None, RoomNetwork::Matrix)
                .await?,
        ));
    }
    page_json(services.public_rooms(DirectoryQuery {
        limit: body.limit.map(u64::from),
        since: body.since,
        ..DirectoryQuery::default()
    })?)
}

pub async fn public_rooms_filtered(
    extract::State(services): extract::State<State>,
    request: Ruma<filtered_v3::Request>,
) -> Result<axum::Json<Value>> {
    let body = request.body;
    if let Some(server) = remote(&services, body.server.as_deref()) {
        return Ok(axum::Json(
            services
                .remote_public_rooms(
                    server,
                    body.limit,
                    body.since,
                    Some(body.filter),
                    body.room_network,
                )
                .await?,
        ));
    }
    let query = DirectoryQuery {
        limit: body.limit.map(u64::from),
        since: body.since,
        search_term: body.filter.generic_search_term,
        room_types: body
            .filter
            .room_types
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect(),
    };
    if let RoomNetwork::ThirdParty(_) = body.room_network {
        // No application service bridges a third-party network here: its directory is empty.
        return Ok(axum::Json(
            json!({ "chunk": [], "total_room_count_estimate": 0 }),
        ));
    }
    page_json(services.public_rooms(query)?)
}

pub async fn room_summary(
    extract::State(services): extract::State<State>,
    request: Ruma<summary_v1::Request>,
) -> Result<axum::Json<Value>> {
    let room_id = match OwnedRoomId::try_from(request.body.room_id_or_alias.clone()) {
        Ok(room_id) => room_id,
        Err(alias) => services
            .resolve_alias(&alias)?
            .ok_or_else(|| Error::not_found("No room has that alias."))?,
    };
    let (description, membership) =
        services.summary_for(&room_id, request.sender_user.as_deref())?;
    let mut summary = description.summary_json()?;
    if let Some(membership) = membership {
        summary["membership"] = json!(membership);
    }
    Ok(axum::Json(summary))
}
