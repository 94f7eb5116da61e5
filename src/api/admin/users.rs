//! Synapse's user admin API: accounts (list, look up, create and change, admin flag, password,
//! suspension, deactivation), their devices, rooms, account data and pushers.

use axum::{
    Json,
    extract::{self, Path},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use ruma::{OwnedDeviceId, OwnedUserId, events::room::member::MembershipState};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Admin, AdminJson, AdminQuery, backwards, existing_user, flag, local_user, number, present,
};
use crate::{
    Error, Result,
    api::ruma::State,
    service::{
        admin::{Account, AccountChanges, AccountFilter, AccountOrder},
        users::Users,
    },
};

/// `GET /v1/server_version` (public, as in Synapse).
pub async fn server_version() -> Json<Value> {
    Json(json!({ "server_version": env!("CARGO_PKG_VERSION") }))
}

/// The listing's query parameters (v2 and v3 differ only in `deactivated`).
#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    name: Option<String>,
    user_id: Option<String>,
    guests: Option<String>,
    admins: Option<String>,
    deactivated: Option<String>,
    locked: Option<String>,
    order_by: Option<String>,
    dir: Option<String>,
}

/// An account in a listing (Synapse's fields; `creation_ts` in ms).
fn listed(account: &Account) -> Value {
    let record = &account.record;
    json!({
        "name": account.user_id,
        "user_type": record.user_type,
        "is_guest": record.guest,
        "admin": record.admin,
        "deactivated": record.deactivated,
        "shadow_banned": record.shadow_banned,
        "displayname": account.displayname,
        "avatar_url": account.avatar_url,
        "creation_ts": record.created_ts,
        "erased": record.erased,
        "last_seen_ts": account.last_seen_ts,
        "locked": record.locked,
    })
}

/// One account in full (Synapse's fields; `creation_ts` in seconds, as Synapse gives it
/// here).
fn details(account: &Account) -> Value {
    let record = &account.record;
    json!({
        "name": account.user_id,
        "admin": record.admin,
        "deactivated": record.deactivated,
        "locked": record.locked,
        "suspended": record.suspended,
        "shadow_banned": record.shadow_banned,
        "creation_ts": record.created_ts / 1000,
        "appservice_id": null,
        "consent_server_notice_sent": null,
        "consent_version": null,
        "consent_ts": null,
        "user_type": record.user_type,
        "is_guest": record.guest,
        "displayname": account.displayname,
        "avatar_url": account.avatar_url,
        "threepids": [],
        "external_ids": [],
        "erased": record.erased,
        "last_seen_ts": account.last_seen_ts,
    })
}

async fn list(services: &State, query: ListQuery, v3: bool) -> Result<Json<Value>> {
    let deactivated = flag("deactivated", &query.deactivated)?;
    let filter = AccountFilter {
        name: query.name.filter(|n| !n.is_empty()),
        user_id: query.user_id.filter(|u| !u.is_empty()),
        guests: flag("guests", &query.guests)?.unwrap_or(true),
        admins: flag("admins", &query.admins)?,
        // v2: deactivated accounts only when asked for, beside the others; v3: a filter.
        deactivated: if v3 {
            deactivated
        } else if deactivated == Some(true) {
            None
        } else {
            Some(false)
        },
        locked: flag("locked", &query.locked)?.unwrap_or(false),
    };
    let order = match query.order_by.as_deref() {
        None => AccountOrder::Name,
        Some(name) => AccountOrder::parse(name)
            .ok_or_else(|| Error::invalid_param(format!("Unknown value for order_by: {name}")))?,
    };
    let backwards = backwards(&query.dir, false)?;
    let from = number("from", &query.from, 0)?;
    let limit = number("limit", &query.limit, 100)?;
    let (page, total) = services.admin_list_accounts(&filter, order, backwards, from, limit)?;
    let mut body = json!({
        "users": page.iter().map(listed).collect::<Vec<_>>(),
        "total": total,
    });
    if from + page.len() < total {
        body["next_token"] = json!((from + page.len()).to_string());
    }
    Ok(Json(body))
}

/// `GET /v2/users`.
pub async fn list_v2(
    extract::State(services): extract::State<State>,
    _: Admin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> Result<Json<Value>> {
    list(&services, query, false).await
}

/// `GET /v3/users`.
pub async fn list_v3(
    extract::State(services): extract::State<State>,
    _: Admin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> Result<Json<Value>> {
    list(&services, query, true).await
}

/// `GET /v2/users/{userId}`.
pub async fn get_account(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = local_user(&services, &user_id)?;
    let account = services
        .admin_account(&user_id)?
        .ok_or_else(|| Error::not_found("User not found"))?;
    Ok(Json(details(&account)))
}

/// The body of `PUT /v2/users/{userId}`.
#[derive(Deserialize)]
pub struct PutAccount {
    password: Option<String>,
    logout_devices: Option<bool>,
    displayname: Option<String>,
    avatar_url: Option<String>,
    threepids: Option<Vec<Value>>,
    external_ids: Option<Vec<Value>>,
    admin: Option<bool>,
    deactivated: Option<bool>,
    locked: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    user_type: Option<Option<String>>,
}

/// `PUT /v2/users/{userId}`: creates the account (201) or changes it (200); answers with it.
pub async fn put_account(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<PutAccount>,
) -> Result<Response> {
    let user_id = local_user(&services, &user_id)?;
    // culvert keeps no third-party identifiers nor SSO identities.
    for (field, list) in [
        ("threepids", &body.threepids),
        ("external_ids", &body.external_ids),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(Error::invalid_param(format!(
                "`{field}` must be empty: this server keeps none."
            )));
        }
    }
    if let Some(avatar) = &body.avatar_url
        && !avatar.is_empty()
        && !avatar.starts_with("mxc://")
    {
        return Err(Error::invalid_param("`avatar_url` must be an mxc:// URI."));
    }
    if body.admin == Some(false) && user_id == admin.0 {
        return Err(Error::invalid_param("You may not demote yourself."));
    }
    let changes = AccountChanges {
        password: body.password,
        logout_devices: body.logout_devices.unwrap_or(true),
        displayname: body.displayname,
        avatar_url: body.avatar_url,
        admin: body.admin,
        deactivated: body.deactivated,
        locked: body.locked,
        user_type: body.user_type,
    };
    let created = services.admin_put_account(&user_id, changes).await?;
    admin.audit(
        if created {
            "create account"
        } else {
            "change account"
        },
        &user_id,
    );
    let account = services
        .admin_account(&user_id)?
        .ok_or_else(|| Error::internal("the account vanished"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(details(&account))).into_response())
}

/// `GET /v1/users/{userId}/admin`.
pub async fn get_admin(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let admin = services.users.get(&user_id)?.is_some_and(|r| r.admin);
    Ok(Json(json!({ "admin": admin })))
}

#[derive(Deserialize)]
pub struct PutAdmin {
    admin: bool,
}

/// `PUT /v1/users/{userId}/admin`: an admin cannot demote themself.
pub async fn put_admin(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<PutAdmin>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    if !body.admin && user_id == admin.0 {
        return Err(Error::invalid_param("You may not demote yourself."));
    }
    services.set_admin(&user_id, body.admin).await?;
    admin.audit(
        if body.admin {
            "make admin"
        } else {
            "remove admin"
        },
        &user_id,
    );
    Ok(Json(json!({})))
}

/// `GET /v1/whois/{userId}`: as the client API's whois.
pub async fn whois(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    Ok(Json(crate::api::client::admin::whois_json(
        &services, &user_id,
    )?))
}

/// `GET /v1/users/{userId}/joined_rooms`.
pub async fn joined_rooms(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = local_user(&services, &user_id)?;
    let rooms: Vec<String> = services
        .members
        .rooms_of(&user_id)?
        .into_iter()
        .filter(|(_, m)| m.membership == MembershipState::Join)
        .map(|(room_id, _)| room_id.to_string())
        .collect();
    Ok(Json(json!({ "total": rooms.len(), "joined_rooms": rooms })))
}

/// `GET /v1/users/{userId}/memberships`: every room the user has a membership in.
pub async fn memberships(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = local_user(&services, &user_id)?;
    let memberships: Map<String, Value> = services
        .members
        .rooms_of(&user_id)?
        .into_iter()
        .map(|(room_id, m)| (room_id.to_string(), json!(m.membership)))
        .collect();
    Ok(Json(json!({ "memberships": memberships })))
}

fn device_json(
    user_id: &OwnedUserId,
    device_id: &OwnedDeviceId,
    record: &crate::service::devices::DeviceRecord,
) -> Value {
    json!({
        "user_id": user_id,
        "device_id": device_id,
        "display_name": record.display_name,
        "last_seen_ip": record.last_seen_ip,
        "last_seen_ts": record.last_seen_ts,
        "last_seen_user_agent": null,
    })
}

/// `GET /v2/users/{userId}/devices`.
pub async fn devices(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let devices: Vec<Value> = services
        .devices
        .list(&user_id)?
        .iter()
        .map(|(device_id, record)| device_json(&user_id, device_id, record))
        .collect();
    Ok(Json(json!({ "total": devices.len(), "devices": devices })))
}

#[derive(Deserialize)]
pub struct CreateDevice {
    device_id: OwnedDeviceId,
}

/// `POST /v2/users/{userId}/devices`: a device without tokens (nothing if it exists).
pub async fn create_device(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<CreateDevice>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    if services
        .create_appservice_device(&user_id, &body.device_id, None)
        .await?
    {
        admin.audit("create device", &format!("{user_id} {}", body.device_id));
    }
    Ok(Json(json!({})))
}

/// `GET /v2/users/{userId}/devices/{deviceId}`.
pub async fn device(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let device_id = OwnedDeviceId::from(device_id);
    let record = services
        .devices
        .get(&user_id, &device_id)?
        .ok_or_else(|| Error::not_found("Device not found"))?;
    Ok(Json(device_json(&user_id, &device_id, &record)))
}

#[derive(Deserialize)]
pub struct RenameDevice {
    display_name: Option<String>,
}

/// `PUT /v2/users/{userId}/devices/{deviceId}`.
pub async fn rename_device(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
    AdminJson(body): AdminJson<RenameDevice>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let device_id = OwnedDeviceId::from(device_id);
    if services.devices.get(&user_id, &device_id)?.is_none() {
        return Err(Error::not_found("Device not found"));
    }
    if let Some(name) = body.display_name {
        services
            .devices
            .set_display_name(&user_id, &device_id, Some(name))
            .await?;
        admin.audit("rename device", &format!("{user_id} {device_id}"));
    }
    Ok(Json(json!({})))
}

/// `DELETE /v2/users/{userId}/devices/{deviceId}` (a device that is gone already: done).
pub async fn delete_device(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let device_id = OwnedDeviceId::from(device_id);
    services
        .delete_devices(&user_id, std::slice::from_ref(&device_id))
        .await?;
    admin.audit("delete device", &format!("{user_id} {device_id}"));
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct DeleteDevices {
    devices: Vec<OwnedDeviceId>,
}

/// `POST /v2/users/{userId}/delete_devices`.
pub async fn delete_devices(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<DeleteDevices>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    services.delete_devices(&user_id, &body.devices).await?;
    admin.audit(
        "delete devices",
        &format!("{user_id} {}", body.devices.len()),
    );
    Ok(Json(json!({})))
}

/// `GET /v1/users/{userId}/accountdata`: global and per-room account data.
pub async fn account_data(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let (global, rooms) = services.all_account_data(&user_id)?;
    Ok(Json(
        json!({ "account_data": { "global": global, "rooms": rooms } }),
    ))
}

/// `GET /v1/users/{userId}/pushers`.
pub async fn pushers(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let pushers = services.pushers(&user_id)?;
    Ok(Json(json!({ "total": pushers.len(), "pushers": pushers })))
}

#[derive(Deserialize)]
pub struct UsernameQuery {
    username: String,
}

/// `GET /v1/username_available?username=…`: whether a new account may take the name
/// (whatever the registration policy).
pub async fn username_available(
    extract::State(services): extract::State<State>,
    _: Admin,
    AdminQuery(query): AdminQuery<UsernameQuery>,
) -> Result<Json<Value>> {
    let user_id = Users::parse_new_localpart(&query.username, &services.server_name)?;
    if services.users.exists(&user_id)? {
        return Err(crate::service::users::user_in_use());
    }
    Ok(Json(json!({ "available": true })))
}

#[derive(Deserialize)]
pub struct Suspend {
    suspend: bool,
}

/// `PUT /v1/suspend/{userId}` (MSC3823).
pub async fn suspend(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<Suspend>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    services
        .users
        .set_restriction(&user_id, None, Some(body.suspend))
        .await?;
    admin.audit(if body.suspend { "suspend" } else { "unsuspend" }, &user_id);
    Ok(Json(
        json!({ format!("user_{user_id}_suspended"): body.suspend }),
    ))
}

#[derive(Deserialize)]
pub struct ResetPassword {
    new_password: String,
    logout_devices: Option<bool>,
}

/// `POST /v1/reset_password/{userId}`: logs every device out unless told not to.
pub async fn reset_password(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<ResetPassword>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let hash = crate::service::users::hash_password_bounded(body.new_password).await?;
    services
        .set_password(&user_id, hash, body.logout_devices.unwrap_or(true))
        .await?;
    admin.audit("reset password", &user_id);
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct Deactivate {
    #[serde(default)]
    erase: bool,
}

/// `POST /v1/deactivate/{userId}`.
pub async fn deactivate(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<Deactivate>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    services.deactivate_account(&user_id, body.erase).await?;
    admin.audit(
        if body.erase {
            "deactivate and erase"
        } else {
            "deactivate"
        },
        &user_id,
    );
    // No identity server is bound to: nothing to unbind.
    Ok(Json(json!({ "id_server_unbind_result": "success" })))
}

/// `POST /v1/users/{userId}/shadow_ban` and `DELETE` to lift it: the account's messages,
/// state changes, invites and typing silently reach nobody (it gets event IDs as usual).
pub async fn shadow_ban(
    extract::State(services): extract::State<State>,
    admin: Admin,
    method: http::Method,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let ban = method == http::Method::POST;
    if ban && services.users.get(&user_id)?.is_some_and(|r| r.admin) {
        return Err(Error::invalid_param("Admins cannot be shadow-banned."));
    }
    services.users.set_shadow_banned(&user_id, ban).await?;
    admin.audit(if ban { "shadow-ban" } else { "lift shadow-ban" }, &user_id);
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct ServerNoticeBody {
    user_id: String,
    content: Value,
    #[serde(rename = "type")]
    event_type: Option<String>,
    state_key: Option<String>,
}

async fn server_notice(
    services: &State,
    admin: &Admin,
    body: ServerNoticeBody,
    txn: Option<&str>,
) -> Result<Json<Value>> {
    let user_id = local_user(services, &body.user_id)?;
    let notice = crate::service::admin::server_notices::Notice {
        event_type: body.event_type.as_deref().unwrap_or("m.room.message"),
        state_key: body.state_key.as_deref(),
        content: body.content,
    };
    let event_id = services
        .send_server_notice(&user_id, notice, txn.map(|t| (admin.0.as_ref(), t)))
        .await?;
    admin.audit("send server notice", &user_id);
    Ok(Json(json!({ "event_id": event_id })))
}

/// `POST /v1/send_server_notice`.
pub async fn send_server_notice(
    extract::State(services): extract::State<State>,
    admin: Admin,
    AdminJson(body): AdminJson<ServerNoticeBody>,
) -> Result<Json<Value>> {
    server_notice(&services, &admin, body, None).await
}

/// `PUT /v1/send_server_notice/{txnId}`: idempotent per admin and transaction ID.
pub async fn send_server_notice_txn(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(txn_id): Path<String>,
    AdminJson(body): AdminJson<ServerNoticeBody>,
) -> Result<Json<Value>> {
    server_notice(&services, &admin, body, Some(&txn_id)).await
}

#[derive(Deserialize)]
pub struct LoginAsBody {
    valid_until_ms: Option<u64>,
}

/// `POST /v1/users/{userId}/login`: an access token to act as the user (a device of the
/// user's, named after the admin, so the user sees it; expiring at `valid_until_ms`).
pub async fn login_as(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<LoginAsBody>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    if user_id == admin.0 {
        return Err(Error::invalid_param(
            "Cannot use admin API to login as self",
        ));
    }
    if !services.users.is_active(&user_id)? {
        return Err(Error::invalid_param("The account is deactivated."));
    }
    if body
        .valid_until_ms
        .is_some_and(|t| t <= crate::utils::now_millis())
    {
        return Err(Error::invalid_param("`valid_until_ms` is in the past."));
    }
    let token = services
        .devices
        .create_admin_login(
            &user_id,
            format!("Admin login by {}", admin.0),
            body.valid_until_ms,
        )
        .await?;
    services.announce_device_list_change(&[&user_id]).await?;
    admin.audit("log in as", &user_id);
    Ok(Json(json!({ "access_token": token })))
}

#[derive(Deserialize)]
pub struct MessageLimitBody {
    #[serde(default)]
    messages_per_second: u32,
    #[serde(default)]
    burst_count: u32,
}

/// `GET`, `POST` and `DELETE /v1/users/{userId}/override_ratelimit`: a user's own limit on
/// sending events (0 per second: none), instead of `rate_limits.message_per_minute`.
pub async fn override_ratelimit(
    extract::State(services): extract::State<State>,
    admin: Admin,
    method: http::Method,
    Path(user_id): Path<String>,
    AdminJson(body): AdminJson<MessageLimitBody>,
) -> Result<Json<Value>> {
    use crate::service::ratelimit::MessageLimit;
    let user_id = existing_user(&services, &user_id)?;
    match method {
        http::Method::POST => {
            let limit = MessageLimit {
                messages_per_second: body.messages_per_second,
                burst_count: body.burst_count,
            };
            services.set_message_limit(&user_id, Some(limit))?;
            admin.audit("override rate limit", &user_id);
            Ok(Json(serde_json::to_value(limit)?))
        }
        http::Method::DELETE => {
            services.set_message_limit(&user_id, None)?;
            admin.audit("remove rate limit override", &user_id);
            Ok(Json(json!({})))
        }
        _ => Ok(Json(
            match services.rate_limiter.override_of(user_id.as_str()) {
                Some(limit) => serde_json::to_value(limit)?,
                None => json!({}),
            },
        )),
    }
}
