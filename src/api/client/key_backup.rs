//! `/room_keys/version` and `/room_keys/keys`: server-side key backup (see
//! `service::key_backup`). The handlers only unpack ruma's requests into JSON.

use axum::{Json, extract};
use ruma::api::client::backup::{
    add_backup_keys::v3 as put_all_v3, add_backup_keys_for_room::v3 as put_room_v3,
    add_backup_keys_for_session::v3 as put_session_v3, create_backup_version::v3 as create_v3,
    delete_backup_keys::v3 as delete_all_v3, delete_backup_keys_for_room::v3 as delete_room_v3,
    delete_backup_keys_for_session::v3 as delete_session_v3,
    delete_backup_version::v3 as delete_version_v3, get_backup_info::v3 as info_v3,
    get_backup_keys::v3 as get_all_v3, get_backup_keys_for_room::v3 as get_room_v3,
    get_backup_keys_for_session::v3 as get_session_v3, get_latest_backup_info::v3 as latest_v3,
    update_backup_version::v3 as update_v3,
};
use serde_json::{Value, json};

use super::keys::raw_value;
use crate::{
    Result,
    api::ruma::{Ruma, State},
    service::key_backup::Scope,
};

pub async fn create_version(
    extract::State(services): extract::State<State>,
    request: Ruma<create_v3::Request>,
) -> Result<Json<Value>> {
    let body = raw_value(request.body.algorithm.json())?;
    let version = services.create_backup_version(request.user(), &body)?;
    Ok(Json(json!({ "version": version })))
}

pub async fn latest_version(
    extract::State(services): extract::State<State>,
    request: Ruma<latest_v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(services.backup_info(request.user(), None)?))
}

pub async fn get_version(
    extract::State(services): extract::State<State>,
    request: Ruma<info_v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(services.backup_info(
        request.user(),
        Some(&request.body.version),
    )?))
}

pub async fn update_version(
    extract::State(services): extract::State<State>,
    request: Ruma<update_v3::Request>,
) -> Result<Json<Value>> {
    let body = raw_value(request.body.algorithm.json())?;
    services.update_backup_version(request.user(), &request.body.version, &body)?;
    Ok(Json(json!({})))
}

pub async fn delete_version(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_version_v3::Request>,
) -> Result<Json<Value>> {
    services.delete_backup_version(request.user(), &request.body.version)?;
    Ok(Json(json!({})))
}

pub async fn put_keys(
    extract::State(services): extract::State<State>,
    request: Ruma<put_all_v3::Request>,
) -> Result<Json<Value>> {
    let mut sessions = Vec::new();
    for (room_id, room) in &request.body.rooms {
        for (session_id, data) in &room.sessions {
            sessions.push((
                room_id.to_string(),
                session_id.clone(),
                raw_value(data.json())?,
            ));
        }
    }
    Ok(Json(services.put_backup_keys(
        request.user(),
        &request.body.version,
        sessions,
    )?))
}

pub async fn put_room_keys(
    extract::State(services): extract::State<State>,
    request: Ruma<put_room_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let mut sessions = Vec::new();
    for (session_id, data) in &body.sessions {
        sessions.push((
            body.room_id.to_string(),
            session_id.clone(),
            raw_value(data.json())?,
        ));
    }
    Ok(Json(services.put_backup_keys(
        request.user(),
        &body.version,
        sessions,
    )?))
}

pub async fn put_session_key(
    extract::State(services): extract::State<State>,
    request: Ruma<put_session_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let sessions = vec![(
        body.room_id.to_string(),
        body.session_id.clone(),
        raw_value(body.session_data.json())?,
    )];
    Ok(Json(services.put_backup_keys(
        request.user(),
        &body.version,
        sessions,
    )?))
}

pub async fn get_keys(
    extract::State(services): extract::State<State>,
    request: Ruma<get_all_v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(services.get_backup_keys(
        request.user(),
        &request.body.version,
        Scope::All,
    )?))
}

pub async fn get_room_keys(
    extract::State(services): extract::State<State>,
    request: Ruma<get_room_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    Ok(Json(services.get_backup_keys(
        request.user(),
        &body.version,
        Scope::Room(body.room_id.as_str()),
    )?))
}

pub async fn get_session_key(
    extract::State(services): extract::State<State>,
    request: Ruma<get_session_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    Ok(Json(services.get_backup_keys(
        request.user(),
        &body.version,
        Scope::Session(body.room_id.as_str(), &body.session_id),
    )?))
}

pub async fn delete_keys(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_all_v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(services.delete_backup_keys(
        request.user(),
        &request.body.version,
        Scope::All,
    )?))
}

pub async fn delete_room_keys(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_room_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    Ok(Json(services.delete_backup_keys(
        request.user(),
        &body.version,
        Scope::Room(body.room_id.as_str()),
    )?))
}

pub async fn delete_session_key(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_session_v3::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    Ok(Json(services.delete_backup_keys(
        request.user(),
        &body.version,
        Scope::Session(body.room_id.as_str(), &body.session_id),
    )?))
}
