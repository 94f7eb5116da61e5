//! The client-server API's administration endpoints: `GET /admin/whois/{userId}` (a user's
//! devices and where they were last seen), for server admins and for the user themself; and
//! locking and suspending accounts (spec v1.18), for server admins (what the restrictions do:
//! `service::users`).

use axum::{Json, extract};
use ruma::{
    UserId,
    api::client::admin::{
        get_user_info::v3 as whois_v3, is_user_locked::v1 as is_locked_v1,
        is_user_suspended::v1 as is_suspended_v1, lock_user::v1 as lock_v1,
        suspend_user::v1 as suspend_v1,
    },
};
use serde_json::{Map, Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
};

pub async fn whois(
    extract::State(services): extract::State<State>,
    request: Ruma<whois_v3::Request>,
) -> Result<Json<Value>> {
    let asker = request.user();
    let user_id = &request.body.user_id;
    let admin = services.users.get(asker)?.is_some_and(|r| r.admin);
    if asker != user_id && !admin {
        return Err(Error::forbidden(
            "Only server admins may look up other users' sessions.",
        ));
    }
    if user_id.server_name() != services.server_name || !services.users.exists(user_id)? {
        return Err(Error::not_found("No such user on this server."));
    }
    Ok(Json(whois_json(&services, user_id)?))
}

/// A user's devices and where each was last seen, as whois answers (also the Synapse admin
/// API's).
pub(crate) fn whois_json(services: &State, user_id: &UserId) -> Result<Value> {
    let mut devices = Map::new();
    for (device_id, record) in services.devices.list(user_id)? {
        let mut connection = Map::new();
        if let Some(ip) = record.last_seen_ip {
            connection.insert("ip".into(), json!(ip));
        }
        if let Some(ts) = record.last_seen_ts {
            connection.insert("last_seen".into(), json!(ts));
        }
        devices.insert(
            device_id.to_string(),
            json!({ "sessions": [{ "connections": [connection] }] }),
        );
    }
    Ok(json!({ "user_id": user_id, "devices": devices }))
}

/// Who may lock or suspend `target`: an admin, about a local, active account that is not
/// another admin's (the admin check first, so that nobody else learns which accounts exist).
fn moderation_target(services: &State, asker: &UserId, target: &UserId) -> Result<()> {
    if !services.users.get(asker)?.is_some_and(|r| r.admin) {
        return Err(Error::forbidden("Only server admins may do this."));
    }
    if target.server_name() != services.server_name {
        return Err(Error::invalid_param(
            "The user does not belong to this server.",
        ));
    }
    let record = services
        .users
        .get(target)?
        .filter(|r| !r.deactivated)
        .ok_or_else(|| Error::not_found("No such user, or deactivated."))?;
    if record.admin {
        return Err(Error::forbidden("The user is a server admin."));
    }
    Ok(())
}

pub async fn is_locked(
    extract::State(services): extract::State<State>,
    request: Ruma<is_locked_v1::Request>,
) -> Result<Json<Value>> {
    let target = &request.body.user_id;
    moderation_target(&services, request.user(), target)?;
    Ok(Json(
        json!({ "locked": services.users.restriction(target).locked }),
    ))
}

pub async fn lock(
    extract::State(services): extract::State<State>,
    request: Ruma<lock_v1::Request>,
) -> Result<Json<Value>> {
    let target = &request.body.user_id;
    moderation_target(&services, request.user(), target)?;
    let now = services
        .users
        .set_restriction(target, Some(request.body.locked), None)
        .await?;
    tracing::info!(admin = %request.user(), user = %target, locked = now.locked, "account lock set");
    Ok(Json(json!({ "locked": now.locked })))
}

pub async fn is_suspended(
    extract::State(services): extract::State<State>,
    request: Ruma<is_suspended_v1::Request>,
) -> Result<Json<Value>> {
    let target = &request.body.user_id;
    moderation_target(&services, request.user(), target)?;
    Ok(Json(
        json!({ "suspended": services.users.restriction(target).suspended }),
    ))
}

pub async fn suspend(
    extract::State(services): extract::State<State>,
    request: Ruma<suspend_v1::Request>,
) -> Result<Json<Value>> {
    let target = &request.body.user_id;
    moderation_target(&services, request.user(), target)?;
    let now = services
        .users
        .set_restriction(target, None, Some(request.body.suspended))
        .await?;
    tracing::info!(admin = %request.user(), user = %target, suspended = now.suspended, "account suspension set");
    Ok(Json(json!({ "suspended": now.suspended })))
}
