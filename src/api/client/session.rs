//! Sessions: `/login` (flows; password, login-token and appservice login), `/login/get_token`,
//! `/refresh`, `/logout`, `/logout/all`.

use std::time::Duration;

use axum::extract;
use ruma::api::client::{
    session::{
        get_login_token::v1 as login_token_v1,
        get_login_types::v3::{
            self as login_types_v3, ApplicationServiceLoginType, LoginType, PasswordLoginType,
            TokenLoginType,
        },
        login::v3::{self as login_v3, LoginInfo},
        logout::v3 as logout_v3,
        logout_all::v3 as logout_all_v3,
        refresh_token::v3 as refresh_v3,
    },
    uiaa::UserIdentifier,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::{ratelimit::Action, users::Users},
};

pub async fn login_types(
    _: Ruma<login_types_v3::Request>,
) -> RumaResponse<login_types_v3::Response> {
    let mut token = TokenLoginType::new();
    token.get_login_token = true;
    RumaResponse(login_types_v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::Token(token),
        LoginType::ApplicationService(ApplicationServiceLoginType::new()),
    ]))
}

pub async fn login(
    extract::State(services): extract::State<State>,
    request: Ruma<login_v3::Request>,
) -> Result<RumaResponse<login_v3::Response>> {
    if request.rate_limited() {
        services
            .rate_limiter
            .check(Action::Login, &request.ip_key())
            .map_err(Error::limit_exceeded)?;
    }
    let client_ip = request.client_ip;
    let appservice = request.appservice;
    let body = request.body;

    if let LoginInfo::ApplicationService(info) = &body.login_info {
        // `m.login.application_service`: a user of the appservice's namespace, no password.
        let Some(service) = appservice else {
            return Err(Error::missing_token());
        };
        #[allow(deprecated)]
        let name = match (&info.identifier, &info.user) {
            (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
            (None, Some(user)) => user.clone(),
            _ => return Err(Error::bad_json("Only m.id.user identifiers are supported.")),
        };
        let user_id = Users::parse_existing(&name, &services.server_name)
            .map_err(|_| Error::forbidden("Invalid user ID."))?;
        if !service.is_user_match(&user_id) {
            return Err(Error::new(
                http::StatusCode::FORBIDDEN,
                ruma::api::error::ErrorKind::Exclusive,
                "This user is not in the application service's namespace.",
            ));
        }
        if !services.users.is_active(&user_id)? {
            return Err(Error::forbidden("No such user, or it is deactivated."));
        }
        tracing::info!(user = %user_id, appservice = service.id(), "appservice login");
        return start_session(&services, &body, client_ip, user_id).await;
    }

    if let LoginInfo::Token(token) = &body.login_info {
        // `m.login.token`: a token `/login/get_token` made, used once.
        let user_id = services.redeem_login_token(&token.token).await?;
        if !services.users.is_active(&user_id)? {
            return Err(Error::forbidden("This account has been deactivated."));
        }
        tracing::info!(user = %user_id, "login with a login token");
        return start_session(&services, &body, client_ip, user_id).await;
    }
    let LoginInfo::Password(password) = &body.login_info else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::Unknown,
            "Unsupported login type; this server offers m.login.password and m.login.token.",
        ));
    };
    // `user` is the pre-r0.4 way of naming the account; some clients still send it.
    #[allow(deprecated)]
    let legacy_user = &password.user;
    let name = match (&password.identifier, legacy_user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
        (None, Some(user)) => user.clone(),
        _ => {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                "Only m.id.user identifiers are supported.",
            ));
        }
    };
    let wrong = || Error::forbidden("Invalid user name or password.");
    let user_id = Users::parse_existing(&name, &services.server_name).map_err(|_| wrong())?;
    services
        .rate_limiter
        .check(Action::Login, user_id.as_str())
        .map_err(Error::limit_exceeded)?;

    if services.users.get(&user_id)?.is_some_and(|r| r.deactivated) {
        return Err(Error::new(
            http::StatusCode::FORBIDDEN,
            ruma::api::error::ErrorKind::UserDeactivated,
            "This account has been deactivated.",
        ));
    }
    if !services
        .check_password_blocking(user_id.clone(), password.password.clone())
        .await?
    {
        return Err(wrong());
    }

    start_session(&services, &body, client_ip, user_id).await
}

/// The end of every login: a session on the device the client named (or a new one), with a
/// refresh token when asked for and handed out.
async fn start_session(
    services: &State,
    body: &login_v3::Request,
    client_ip: Option<std::net::IpAddr>,
    user_id: ruma::OwnedUserId,
) -> Result<RumaResponse<login_v3::Response>> {
    // A locked account gets no new session (told only after its password was right).
    if services.users.restriction(&user_id).locked {
        return Err(Error::new(
            http::StatusCode::UNAUTHORIZED,
            ruma::api::error::ErrorKind::UserLocked,
            "This account has been locked by the server's administrators.",
        ));
    }
    let (device_id, tokens) = services
        .devices
        .create_session(
            &user_id,
            body.device_id.clone(),
            body.initial_device_display_name.clone(),
            client_ip,
            services.refreshable(body.refresh_token),
        )
        .await?;
    tracing::info!(user = %user_id, device = %device_id, "logged in");
    let mut response = login_v3::Response::new(user_id, tokens.access_token, device_id);
    response.refresh_token = tokens.refresh_token;
    response.expires_in = tokens.expires_in_ms.map(Duration::from_millis);
    #[allow(deprecated)]
    {
        response.home_server = Some(services.server_name.clone());
    }
    Ok(RumaResponse(response))
}

/// `POST /login/get_token` (spec v1.7): after the user confirms their password, a token that
/// signs one other device in (`m.login.token`) within two minutes.
pub async fn get_login_token(
    extract::State(services): extract::State<State>,
    request: Ruma<login_token_v1::Request>,
) -> Result<RumaResponse<login_token_v1::Response>> {
    if request.rate_limited() {
        services
            .rate_limiter
            .check(Action::Login, request.user().as_str())
            .map_err(Error::limit_exceeded)?;
    }
    let user_id = request.user().to_owned();
    services
        .confirm_password(
            &format!("login_token:{user_id}"),
            request.body.auth.as_ref(),
            &user_id,
        )
        .await?;
    let token = services.create_login_token(&user_id).await?;
    Ok(RumaResponse(login_token_v1::Response::new(
        Duration::from_millis(crate::service::login_tokens::LIFETIME_MS),
        token,
    )))
}

/// `POST /refresh` (spec v1.3): a new access token (and refresh token) for the device the
/// refresh token belongs to; an unknown, revoked or replaced one is `M_UNKNOWN_TOKEN`.
pub async fn refresh(
    extract::State(services): extract::State<State>,
    request: Ruma<refresh_v3::Request>,
) -> Result<RumaResponse<refresh_v3::Response>> {
    if request.rate_limited() {
        services
            .rate_limiter
            .check(Action::Login, &request.ip_key())
            .map_err(Error::limit_exceeded)?;
    }
    let lifetime = services.config.access_token_lifetime_ms;
    let tokens = match lifetime {
        0 => None,
        lifetime => {
            services
                .devices
                .refresh(&request.body.refresh_token, lifetime)
                .await?
        }
    };
    let tokens = tokens.ok_or_else(|| {
        Error::new(
            http::StatusCode::UNAUTHORIZED,
            ruma::api::error::ErrorKind::UnknownToken(
                ruma::api::error::UnknownTokenErrorData::new(),
            ),
            "Unknown or revoked refresh token.",
        )
    })?;
    let mut response = refresh_v3::Response::new(tokens.access_token);
    response.refresh_token = tokens.refresh_token;
    response.expires_in_ms = tokens.expires_in_ms.map(Duration::from_millis);
    Ok(RumaResponse(response))
}

pub async fn logout(
    extract::State(services): extract::State<State>,
    request: Ruma<logout_v3::Request>,
) -> Result<RumaResponse<logout_v3::Response>> {
    services
        .delete_devices(request.user(), &[request.device().to_owned()])
        .await?;
    Ok(RumaResponse(logout_v3::Response::new()))
}

pub async fn logout_all(
    extract::State(services): extract::State<State>,
    request: Ruma<logout_all_v3::Request>,
) -> Result<RumaResponse<logout_all_v3::Response>> {
    services.delete_all_devices(request.user(), None).await?;
    Ok(RumaResponse(logout_all_v3::Response::new()))
}
