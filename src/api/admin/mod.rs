//! Synapse's admin API (`/_synapse/admin/…`), the part web admin UIs (Ketesa, synapse-admin)
//! and admin scripts use, so they work against culvert unchanged. Only server admins may call
//! it (403 `M_FORBIDDEN` for others, as Synapse answers), and every change is logged with the
//! admin who made it. The handlers are thin: the work is in `service::admin` and the
//! services it calls, shared with the other admin paths.
//!
//! These endpoints have no ruma types: [`Admin`] authenticates, [`AdminJson`] parses bodies
//! into the handlers' own structs with Matrix errors for what does not parse.

pub mod backups;
pub mod federation;
pub mod media;
pub mod registration_tokens;
pub mod rooms;
pub mod users;

use axum::{
    Router,
    extract::{FromRequest, FromRequestParts, Request},
    routing::{delete, get, post, put},
};
use http::request::Parts;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, de::DeserializeOwned};

use crate::{
    Error, Result,
    api::ruma::{RouterExt, State, access_token, read_body},
};

pub fn routes(router: Router<State>) -> Router<State> {
    router.merge(admin_routes().layer(axum::middleware::from_fn(read_whole_body)))
}

/// The largest admin request body: they are small (Synapse's admin API has none near this).
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// Reads each admin request's body before its handler runs, whether the handler uses it or
/// not: a body left unread makes the HTTP server close the connection after answering, and a
/// client reusing the connection for its next request finds it dropped (the admin script
/// did, now and then, after a `POST …/quarantine` with `{}`).
async fn read_whole_body(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    match read_body(&parts, body, MAX_ADMIN_BODY).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(e) => e.into_response(),
    }
}

fn admin_routes() -> Router<State> {
    const V1: &str = "/_synapse/admin/v1";
    const V2: &str = "/_synapse/admin/v2";
    Router::new()
        .plain_route(&format!("{V1}/server_version"), get(users::server_version))
        .plain_route(&format!("{V2}/users"), get(users::list_v2))
        .plain_route("/_synapse/admin/v3/users", get(users::list_v3))
        .plain_route(
            &format!("{V2}/users/{{user_id}}"),
            get(users::get_account).put(users::put_account),
        )
        .plain_route(
            &format!("{V1}/users/{{user_id}}/admin"),
            get(users::get_admin).put(users::put_admin),
        )
        .plain_route(&format!("{V1}/whois/{{user_id}}"), get(users::whois))
        .plain_route(
            &format!("{V1}/users/{{user_id}}/joined_rooms"),
            get(users::joined_rooms),
        )
        .plain_route(
            &format!("{V1}/users/{{user_id}}/memberships"),
            get(users::memberships),
        )
        .plain_route(
            &format!("{V2}/users/{{user_id}}/devices"),
            get(users::devices).post(users::create_device),
        )
        .plain_route(
            &format!("{V2}/users/{{user_id}}/devices/{{device_id}}"),
            get(users::device)
                .put(users::rename_device)
                .delete(users::delete_device),
        )
        .plain_route(
            &format!("{V2}/users/{{user_id}}/delete_devices"),
            post(users::delete_devices),
        )
        .plain_route(
            &format!("{V1}/users/{{user_id}}/accountdata"),
            get(users::account_data),
        )
        .plain_route(
            &format!("{V1}/users/{{user_id}}/pushers"),
            get(users::pushers),
        )
        .plain_route(
            &format!("{V1}/username_available"),
            get(users::username_available),
        )
        .plain_route(&format!("{V1}/suspend/{{user_id}}"), put(users::suspend))
        .plain_route(
            &format!("{V1}/users/{{user_id}}/login"),
            post(users::login_as),
        )
        .plain_route(
            &format!("{V1}/users/{{user_id}}/override_ratelimit"),
            get(users::override_ratelimit)
                .post(users::override_ratelimit)
                .delete(users::override_ratelimit),
        )
        .plain_route(
            &format!("{V1}/send_server_notice"),
            post(users::send_server_notice),
        )
        .plain_route(
            &format!("{V1}/send_server_notice/{{txn_id}}"),
            put(users::send_server_notice_txn),
        )
        .plain_route(
            &format!("{V1}/users/{{user_id}}/shadow_ban"),
            post(users::shadow_ban).delete(users::shadow_ban),
        )
        .plain_route(
            &format!("{V1}/reset_password/{{user_id}}"),
            post(users::reset_password),
        )
        .plain_route(
            &format!("{V1}/deactivate/{{user_id}}"),
            post(users::deactivate),
        )
        .plain_route(&format!("{V1}/rooms"), get(rooms::list))
        .plain_route(
            &format!("{V1}/rooms/{{room_id}}"),
            get(rooms::details).delete(rooms::delete_now),
        )
        .plain_route(
            &format!("{V2}/rooms/{{room_id}}"),
            delete(rooms::delete_in_background),
        )
        .plain_route(
            &format!("{V2}/rooms/{{room_id}}/delete_status"),
            get(rooms::delete_status_of_room),
        )
        .plain_route(
            &format!("{V2}/rooms/delete_status/{{delete_id}}"),
            get(rooms::delete_status),
        )
        .plain_route(
            &format!("{V1}/rooms/{{room_id}}/members"),
            get(rooms::members),
        )
        .plain_route(&format!("{V1}/rooms/{{room_id}}/state"), get(rooms::state))
        .plain_route(
            &format!("{V1}/purge_history/{{room_id}}"),
            post(rooms::purge_history),
        )
        .plain_route(
            &format!("{V1}/purge_history/{{room_id}}/{{event_id}}"),
            post(rooms::purge_history_to_event),
        )
        .plain_route(
            &format!("{V1}/purge_history_status/{{purge_id}}"),
            get(rooms::purge_history_status),
        )
        .plain_route(
            &format!("{V1}/rooms/{{room_id}}/messages"),
            get(rooms::messages),
        )
        .plain_route(
            &format!("{V1}/rooms/{{room_id}}/make_room_admin"),
            post(rooms::make_room_admin),
        )
        .plain_route(
            &format!("{V1}/rooms/{{room_id}}/block"),
            get(rooms::get_block).put(rooms::put_block),
        )
        .plain_route(
            &format!("{V1}/registration_tokens"),
            get(registration_tokens::list),
        )
        .plain_route(
            &format!("{V1}/registration_tokens/new"),
            post(registration_tokens::create),
        )
        .plain_route(
            &format!("{V1}/registration_tokens/{{token}}"),
            get(registration_tokens::get)
                .put(registration_tokens::update)
                .delete(registration_tokens::delete),
        )
        .plain_route(
            &format!("{V1}/media/{{server_name}}/{{media_id}}"),
            get(media::info).delete(media::delete),
        )
        .plain_route(&format!("{V1}/media/delete"), post(media::delete_old))
        .plain_route(
            &format!("{V1}/media/{{server_name}}/delete"),
            post(media::delete_old),
        )
        .plain_route(
            &format!("{V1}/media/quarantine/{{server_name}}/{{media_id}}"),
            post(media::quarantine),
        )
        .plain_route(
            &format!("{V1}/media/unquarantine/{{server_name}}/{{media_id}}"),
            post(media::unquarantine),
        )
        .plain_route(
            &format!("{V1}/media/protect/{{media_id}}"),
            post(media::protect),
        )
        .plain_route(
            &format!("{V1}/media/unprotect/{{media_id}}"),
            post(media::unprotect),
        )
        .plain_route(
            &format!("{V1}/purge_media_cache"),
            post(media::purge_remote),
        )
        .plain_route(
            &format!("{V1}/statistics/users/media"),
            get(media::statistics),
        )
        .plain_route(
            &format!("{V1}/users/{{user_id}}/media"),
            get(media::user_media).delete(media::delete_user_media),
        )
        .plain_route(
            &format!("{V1}/room/{{room_id}}/media"),
            get(media::room_media),
        )
        .plain_route(
            &format!("{V1}/room/{{room_id}}/media/quarantine"),
            post(media::quarantine_room_media),
        )
        .plain_route(
            &format!("{V1}/quarantine_media/{{room_id}}"),
            post(media::quarantine_room_media),
        )
        .plain_route(
            &format!("{V1}/user/{{user_id}}/media/quarantine"),
            post(media::quarantine_user_media),
        )
        .plain_route(
            &format!("{V1}/federation/destinations"),
            get(federation::list),
        )
        .plain_route(
            &format!("{V1}/federation/destinations/{{destination}}"),
            get(federation::one),
        )
        .plain_route(
            &format!("{V1}/federation/destinations/{{destination}}/rooms"),
            get(federation::rooms),
        )
        .plain_route(
            &format!("{V1}/federation/destinations/{{destination}}/reset_connection"),
            post(federation::reset_connection),
        )
        .plain_route(
            "/_culvert/admin/v1/backups",
            get(backups::list).post(backups::create),
        )
        .plain_route(&format!("{V1}/event_reports"), get(rooms::event_reports))
        .plain_route(
            &format!("{V1}/event_reports/{{id}}"),
            get(rooms::event_report_details).delete(rooms::delete_event_report),
        )
}

/// The server admin a request comes from: its access token is an admin's device's (no
/// appservice acts as an admin), or the command line's (the server's own user). 401 without
/// a valid token, 403 `M_FORBIDDEN` for others.
pub struct Admin(pub OwnedUserId);

impl Admin {
    /// Logs what the admin did (the audit trail: who, what, to whom).
    pub fn audit(&self, action: &str, target: &dyn std::fmt::Display) {
        tracing::info!(admin = %self.0, action, target = %target, "admin action");
    }
}

impl FromRequestParts<State> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, services: &State) -> Result<Self> {
        let token = access_token(parts).ok_or_else(Error::missing_token)?;
        // The command line on this machine (`service::admin::cli`).
        if services.is_cli_token(&token) {
            return Ok(Admin(services.server_user()));
        }
        let session = services
            .devices
            .authenticate(&token)
            .await?
            .ok_or_else(Error::unknown_token)?;
        // A locked account is refused as everywhere (the check the client API makes).
        crate::api::ruma::check_restriction(
            services,
            &session.user_id,
            &parts.method,
            parts.uri.path(),
            parts.uri.path(),
        )?;
        if !services
            .users
            .get(&session.user_id)?
            .is_some_and(|r| r.admin && !r.deactivated)
        {
            return Err(Error::forbidden("You are not a server admin"));
        }
        Ok(Admin(session.user_id))
    }
}

/// A JSON body parsed into `T`: an empty body counts as `{}`; what is not JSON is 400
/// `M_NOT_JSON`, what does not fit `T` 400 `M_BAD_JSON` naming the problem.
pub struct AdminJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<State> for AdminJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, services: &State) -> Result<Self> {
        let (parts, body) = req.into_parts();
        let bytes = read_body(&parts, body, services.config.max_request_size as usize).await?;
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|_| Error::not_json("The request body is not valid JSON."))?;
        serde_json::from_value(value)
            .map(AdminJson)
            .map_err(|e| Error::bad_json(format!("The request body does not fit: {e}")))
    }
}

/// The query string parsed into `T`: 400 `M_INVALID_PARAM` naming what does not fit.
pub struct AdminQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<State> for AdminQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &State) -> Result<Self> {
        serde_html_form::from_str(parts.uri.query().unwrap_or_default())
            .map(AdminQuery)
            .map_err(|e| Error::invalid_param(format!("Invalid query parameters: {e}")))
    }
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`, with
/// `#[serde(default)]`).
pub fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A user ID from the path that must be one of this server's: 400 otherwise (as Synapse
/// answers).
pub fn local_user(services: &State, raw: &str) -> Result<OwnedUserId> {
    let user_id = UserId::parse(raw)
        .map_err(|e| Error::invalid_param(format!("Invalid user ID {raw:?}: {e}")))?;
    if user_id.server_name() != services.server_name {
        return Err(Error::invalid_param("Can only look up local users"));
    }
    Ok(user_id)
}

/// A local user ID from the path that names an existing account: 404 otherwise.
pub fn existing_user(services: &State, raw: &str) -> Result<OwnedUserId> {
    let user_id = local_user(services, raw)?;
    if !services.users.exists(&user_id)? {
        return Err(Error::not_found("User not found"));
    }
    Ok(user_id)
}

/// A `true`/`false` query parameter (400 `M_INVALID_PARAM` for anything else).
pub fn flag(name: &str, value: &Option<String>) -> Result<Option<bool>> {
    match value.as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(Error::invalid_param(format!(
            "`{name}` must be true or false, not {other:?}."
        ))),
    }
}

/// A non-negative integer query parameter, `default` when absent.
pub fn number(name: &str, value: &Option<String>, default: usize) -> Result<usize> {
    match value.as_deref() {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|_| Error::invalid_param(format!("`{name}` must be a non-negative integer."))),
    }
}

/// A `dir` query parameter: whether it asks for backwards (`b`), `default` when absent.
pub fn backwards(dir: &Option<String>, default: bool) -> Result<bool> {
    match dir.as_deref() {
        None => Ok(default),
        Some("f") => Ok(false),
        Some("b") => Ok(true),
        Some(_) => Err(Error::invalid_param("`dir` must be f or b.")),
    }
}

/// A room ID from the path (400 `M_INVALID_PARAM` when it is none).
pub fn room_id(raw: &str) -> Result<ruma::OwnedRoomId> {
    ruma::RoomId::parse(raw)
        .map_err(|e| Error::invalid_param(format!("Invalid room ID {raw:?}: {e}")))
}
