//! Users' devices and keys for other servers (`/user/devices`, `/user/keys/query`,
//! `/user/keys/claim`) and this server's room directory (`/publicRooms`).

use std::collections::BTreeMap;

use axum::{Json, extract};
use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::federation::{
        device::get_devices,
        directory::{get_public_rooms, get_public_rooms_filtered},
        keys::{claim_keys, get_keys},
    },
    directory::RoomNetwork,
};
use serde_json::{Value, json};

use crate::{
    Result,
    api::{ruma::State, server::auth::Fed},
    service::rooms::directory::{DirectoryPage, DirectoryQuery},
};

pub async fn devices(
    extract::State(services): extract::State<State>,
    request: Fed<get_devices::v1::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        services.user_devices_for_server(&request.body.user_id)?,
    ))
}

pub async fn keys_query(
    extract::State(services): extract::State<State>,
    request: Fed<get_keys::v1::Request>,
) -> Result<Json<Value>> {
    Ok(Json(
        services.query_keys_for_server(&request.body.device_keys)?,
    ))
}

pub async fn keys_claim(
    extract::State(services): extract::State<State>,
    request: Fed<claim_keys::v1::Request>,
) -> Result<Json<Value>> {
    let requested: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>> = request
        .body
        .one_time_keys
        .iter()
        .map(|(user, devices)| {
            let devices = devices
                .iter()
                .map(|(device, algorithm)| (device.clone(), algorithm.to_string()))
                .collect();
            (user.clone(), devices)
        })
        .collect();
    Ok(Json(services.claim_keys_for_server(&requested)?))
}

fn page_json(page: DirectoryPage) -> Result<Json<Value>> {
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
    Ok(Json(response))
}

fn third_party(network: &RoomNetwork) -> bool {
    matches!(network, RoomNetwork::ThirdParty(_))
}

pub async fn public_rooms(
    extract::State(services): extract::State<State>,
    request: Fed<get_public_rooms::v1::Request>,
) -> Result<Json<Value>> {
    let body = request.body;
    if third_party(&body.room_network) {
        // No bridge serves a third-party network here: its directory is empty.
        return Ok(Json(json!({ "chunk": [], "total_room_count_estimate": 0 })));
    }
    page_json(services.public_rooms(DirectoryQuery {
        limit: body.limit.map(u64::from),
        since: body.since,
        ..DirectoryQuery::default()
    })?)
}

pub async fn public_rooms_filtered(
    extract::State(services): extract::State<State>,
    request: Fed<get_public_rooms_filtered::v1::Request>,
) -> Result<Json<Value>> {
    let body = request.body;
    if third_party(&body.room_network) {
        return Ok(Json(json!({ "chunk": [], "total_room_count_estimate": 0 })));
    }
    page_json(
        services.public_rooms(DirectoryQuery {
            limit: body.limit.map(u64::from),
            since: body.since,
            search_term: body.filter.generic_search_term,
            room_types: body
                .filter
                .room_types
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect(),
        })?,
    )
}
