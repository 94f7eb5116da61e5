//! Registration: `/register`, `/register/available`, registration token validity.

use axum::extract;
use ruma::UserId;
use ruma::api::client::account::{
    check_registration_token_validity::v1 as token_validity_v1,
    get_username_availability::v3 as available_v3,
    register::{LoginType, RegistrationKind, v3 as register_v3},
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::{
        appservice::Appservice,
        devices::Devices,
        globals::Globals,
        ratelimit::Action,
        registration::RegistrationPolicy,
        users::{self, Users},
    },
    utils,
};

pub async fn register(
    extract::State(services): extract::State<State>,
    request: Ruma<register_v3::Request>,
) -> Result<RumaResponse<register_v3::Response>> {
    if request.rate_limited() {
        services
            .rate_limiter
            .check(Action::Register, &request.ip_key())
            .map_err(Error::limit_exceeded)?;
    }
    if let Some(service) = request.appservice.clone() {
        return register_for_appservice(&services, &service, request).await;
    }
    let client_ip = request.client_ip;
    let upgrading = request
        .sender_user
        .clone()
        .filter(|user| services.users.restriction(user).guest);
    let body = request.body;
    if body.login_type == Some(LoginType::ApplicationService) {
        return Err(Error::missing_token());
    }
    let guest = body.kind == RegistrationKind::Guest;
    // A guest registering with its access token (and its own name, or none) becomes a full
    // account under the same user ID.
    if let Some(guest_id) = upgrading.filter(|id| {
        !guest
            && body
                .username
                .as_deref()
                .is_none_or(|name| name == id.localpart() || name == id.as_str())
    }) {
        let flows = services
            .registration_flows()?
            .ok_or_else(|| Error::forbidden("Registration is disabled on this server."))?;
        let password = body
            .password
            .clone()
            .ok_or_else(|| Error::bad_json("A full account needs a password."))?;
        let token = services
            .user_interactive_auth("register", &flows, body.auth.as_ref(), None)
            .await?;
        let token = services.admin_registration_token(token)?;
        let hash = users::hash_password_bounded(password).await?;
        let _tokens = token_use(&services, token.as_deref()).await?;
        services
            .users
            .upgrade_guest(&guest_id, hash, |batch| {
                if let Some(token) = &token {
                    let _ = services.registration_tokens.use_into(batch, token);
                }
            })
            .await?;
        // The session like a login's: a device the guest names keeps its ID but gets new
        // tokens (its old ones stop working).
        let session = match body.inhibit_login {
            true => None,
            false => Some(
                services
                    .devices
                    .create_session(
                        &guest_id,
                        body.device_id.clone(),
                        body.initial_device_display_name.clone(),
                        client_ip,
                        services.refreshable(body.refresh_token),
                    )
                    .await,
            ),
        };
        tracing::info!(user = %guest_id, "a guest account became a full account");
        let mut response = register_v3::Response::new(guest_id);
        if let Some(session) = session {
            with_session(&mut response, session?);
        }
        return Ok(RumaResponse(response));
    }

    // The admin-made registration token the account is made with: one use, counted in the
    // account's batch.
    let mut used_token = None;
    let user_id = if guest {
        if !services.config.allow_guest_registration {
            return Err(Error::forbidden("Guest access is disabled on this server."));
        }
        // Guests get a random numeric-looking name and no password.
        Users::parse_new_localpart(
            &utils::random_string(12).to_lowercase(),
            &services.server_name,
        )?
    } else {
        let flows = services
            .registration_flows()?
            .ok_or_else(|| Error::forbidden("Registration is disabled on this server."))?;
        let user_id = match &body.username {
            Some(name) => Users::parse_new_localpart(name, &services.server_name)?,
            None => Users::parse_new_localpart(
                &utils::random_string(12).to_lowercase(),
                &services.server_name,
            )?,
        };
        // Say that the name is taken before the client goes through authentication.
        if services.users.exists(&user_id)? {
            return Err(users::user_in_use());
        }
        // Names in an appservice's exclusive namespace are the appservice's to register.
        services.appservices.check_user_exclusive(&user_id, None)?;
        let token = services
            .user_interactive_auth("register", &flows, body.auth.as_ref(), None)
            .await?;
        used_token = services.admin_registration_token(token)?;
        user_id
    };

    let password_hash = match body.password.filter(|_| !guest) {
        Some(password) => Some(users::hash_password_bounded(password).await?),
        None => None,
    };
    let bootstrap =
        services.registration_policy()? == RegistrationPolicy::Token { bootstrap: true };

    let refreshable = services.refreshable(body.refresh_token);
    let mut session = None;
    let _tokens = token_use(&services, used_token.as_deref()).await?;
    let record = services
        .users
        .create(&user_id, password_hash, false, guest, |batch| {
            if bootstrap {
                Globals::remove_bootstrap_token(batch);
            }
            if let Some(token) = &used_token {
                // Still valid: checked under the lock just before.
                let _ = services.registration_tokens.use_into(batch, token);
            }
            if !body.inhibit_login {
                session = Some(Devices::new_device_into(
                    batch,
                    &user_id,
                    body.device_id.clone(),
                    body.initial_device_display_name.clone(),
                    client_ip,
                    refreshable,
                ));
            }
        })
        .await?;
    tracing::info!(user = %user_id, admin = record.admin, guest, "registered a new account");
    if record.admin {
        // The first account: into the admin room.
        services.sync_admin_room_member(&user_id, false).await;
    }

    let mut response = register_v3::Response::new(user_id);
    if let Some(session) = session {
        with_session(&mut response, session?);
    }
    Ok(RumaResponse(response))
}

/// Before an account is made with an admin-made token: the tokens' lock (held until the
/// account's batch, which counts the use, is written) once the token is still valid — another
/// registration may have taken its last use since the token stage — else 401 `M_FORBIDDEN`.
async fn token_use<'a>(
    services: &'a State,
    token: Option<&str>,
) -> Result<Option<tokio::sync::MutexGuard<'a, ()>>> {
    let Some(token) = token else {
        return Ok(None);
    };
    let guard = services.registration_tokens.lock().await;
    if !services.registration_tokens.is_valid(token)? {
        return Err(Error::new(
            http::StatusCode::UNAUTHORIZED,
            ruma::api::error::ErrorKind::Forbidden,
            "The registration token was used up or expired meanwhile.",
        ));
    }
    Ok(Some(guard))
}

/// `m.login.application_service`: an appservice registers a user of its namespace; no
/// user-interactive auth, no password, open even when registration is closed.
async fn register_for_appservice(
    services: &State,
    service: &Appservice,
    request: Ruma<register_v3::Request>,
) -> Result<RumaResponse<register_v3::Response>> {
    let client_ip = request.client_ip;
    let body = request.body;
    let localpart = body
        .username
        .as_deref()
        .ok_or_else(|| Error::bad_json("An appservice must name the user to register."))?;
    // Bridges send either the localpart or the whole user ID.
    let user_id = match UserId::parse(localpart) {
        Ok(full) if full.server_name() == services.server_name => full,
        _ => Users::parse_new_localpart(localpart, &services.server_name)?,
    };
    services
        .appservices
        .check_user_exclusive(&user_id, Some(service))?;
    let refreshable = services.refreshable(body.refresh_token);
    let mut session = None;
    services
        .users
        .create_for_appservice(&user_id, |batch| {
            if !body.inhibit_login {
                session = Some(Devices::new_device_into(
                    batch,
                    &user_id,
                    body.device_id.clone(),
                    body.initial_device_display_name.clone(),
                    client_ip,
                    refreshable,
                ));
            }
        })
        .await?;
    tracing::info!(user = %user_id, appservice = service.id(), "appservice registered a user");
    let mut response = register_v3::Response::new(user_id);
    if let Some(session) = session {
        with_session(&mut response, session?);
    }
    Ok(RumaResponse(response))
}

pub async fn available(
    extract::State(services): extract::State<State>,
    request: Ruma<available_v3::Request>,
) -> Result<RumaResponse<available_v3::Response>> {
    services
        .rate_limiter
        .check(Action::Register, &request.ip_key())
        .map_err(Error::limit_exceeded)?;
    let user_id = Users::parse_new_localpart(&request.body.username, &services.server_name)?;
    if services.users.exists(&user_id)? {
        return Err(users::user_in_use());
    }
    services
        .appservices
        .check_user_exclusive(&user_id, request.appservice.as_deref())?;
    Ok(RumaResponse(available_v3::Response::new(true)))
}

pub async fn token_validity(
    extract::State(services): extract::State<State>,
    request: Ruma<token_validity_v1::Request>,
) -> Result<RumaResponse<token_validity_v1::Response>> {
    services
        .rate_limiter
        .check(Action::Register, &request.ip_key())
        .map_err(Error::limit_exceeded)?;
    if services.registration_policy()? == RegistrationPolicy::Closed {
        return Err(Error::forbidden("Registration is disabled on this server."));
    }
    let valid = services.registration_token_valid(&request.body.token)?;
    Ok(RumaResponse(token_validity_v1::Response::new(valid)))
}

/// Puts a registration's new session (device and tokens) into its answer.
fn with_session(
    response: &mut register_v3::Response,
    (device_id, tokens): (ruma::OwnedDeviceId, crate::service::devices::NewTokens),
) {
    response.device_id = Some(device_id);
    response.access_token = Some(tokens.access_token);
    response.refresh_token = tokens.refresh_token;
    response.expires_in = tokens.expires_in_ms.map(std::time::Duration::from_millis);
}
