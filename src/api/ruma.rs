//! Glue between axum and ruma: every endpoint is a ruma request type. [`Ruma<T>`] parses the
//! request (body size, JSON, path and query) and authenticates it as `T`'s metadata says;
//! [`RumaResponse`] serialises the answer; [`RouterExt::ruma_route`] mounts a handler on every
//! path the endpoint has had (r0, v3, unstable).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Path, Request},
    handler::Handler,
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::BytesMut;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use ruma::{
    OwnedDeviceId, OwnedUserId, UserId,
    api::{
        IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional,
            NoAccessToken, NoAuthentication,
        },
        error::{DeserializationError, FromHttpRequestError},
        path_builder::{SinglePath, VersionHistory},
    },
};

use crate::{
    Error,
    service::{
        Services,
        appservice::{Appservice, AppserviceIdentity},
    },
};

pub type State = Arc<Services>;

/// Whether and how an endpoint wants an access token, derived from ruma's auth scheme type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKind {
    /// No token is looked at.
    None,
    /// A token, if given, must be valid.
    Optional,
    /// A valid token is required.
    Required,
}

pub trait AuthRequirement {
    const KIND: AuthKind;
}
impl AuthRequirement for NoAuthentication {
    const KIND: AuthKind = AuthKind::None;
}
impl AuthRequirement for NoAccessToken {
    const KIND: AuthKind = AuthKind::None;
}
impl AuthRequirement for AccessToken {
    const KIND: AuthKind = AuthKind::Required;
}
impl AuthRequirement for AccessTokenOptional {
    const KIND: AuthKind = AuthKind::Optional;
}
// Any endpoint accepts an appservice's `as_token` (see `appservice_identity`); the endpoints
// only appservices may call check `Ruma::appservice` themselves.
impl AuthRequirement for AppserviceToken {
    const KIND: AuthKind = AuthKind::Required;
}
impl AuthRequirement for AppserviceTokenOptional {
    const KIND: AuthKind = AuthKind::Optional;
}

/// Every path an endpoint is served on.
pub trait AllPaths {
    fn all_paths(&self) -> Vec<&'static str>;
}
impl AllPaths for VersionHistory {
    fn all_paths(&self) -> Vec<&'static str> {
        self.unstable_paths()
            .map(|(_, path)| path)
            .chain(self.stable_paths().map(|(_, path)| path))
            .collect()
    }
}
impl AllPaths for SinglePath {
    fn all_paths(&self) -> Vec<&'static str> {
        vec![self.path()]
    }
}

/// A parsed, authenticated request of type `T`.
pub struct Ruma<T> {
    pub body: T,
    /// Set when a valid access token came with the request.
    pub sender_user: Option<OwnedUserId>,
    pub sender_device: Option<OwnedDeviceId>,
    pub client_ip: Option<IpAddr>,
    /// Set when the request came with an application service's `as_token`; `sender_user` is
    /// then the user it acts as (its sender, or the `user_id` it masquerades as).
    pub appservice: Option<Arc<Appservice>>,
    /// The account's restrictions, as the extractor read them to check the request
    /// (handlers ask this instead of reading them again).
    pub restriction: crate::service::users::Restriction,
}

impl<T> Ruma<T> {
    /// Whether the sender is shadow-banned: what it sends is to reach nobody.
    pub fn shadow_banned(&self) -> bool {
        self.restriction.shadow_banned
    }
    /// The authenticated user. Only call on endpoints whose auth is [`AuthKind::Required`].
    pub fn user(&self) -> &UserId {
        self.sender_user
            .as_deref()
            .expect("auth required: the extractor checked the token")
    }
    pub fn device(&self) -> &ruma::DeviceId {
        self.sender_device
            .as_deref()
            .expect("auth required: the extractor checked the token")
    }
    /// Who events are formatted for: the authenticated user and device.
    pub fn viewer(&self) -> crate::service::rooms::client_event::Viewer<'_> {
        crate::service::rooms::client_event::Viewer {
            user_id: self.user(),
            device_id: self.sender_device.as_deref(),
        }
    }
    /// A key for per-client rate limits.
    pub fn ip_key(&self) -> String {
        self.client_ip.map(|ip| ip.to_string()).unwrap_or_default()
    }
    /// Whether rate limits apply: not to appservices registered with `rate_limited: false`.
    pub fn rate_limited(&self) -> bool {
        self.appservice.as_ref().is_none_or(|s| s.rate_limited())
    }
    /// `origin_server_ts` to use for `ts` (timestamp massaging): honoured for appservices only.
    pub fn massaged_ts(&self, ts: Option<ruma::MilliSecondsSinceUnixEpoch>) -> Option<u64> {
        self.appservice.as_ref()?;
        ts.map(|ts| u64::from(ts.get()))
    }
}

impl<T> FromRequest<State> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthRequirement,
{
    type Rejection = Error;

    async fn from_request(req: Request, services: &State) -> Result<Self, Error> {
        let (mut parts, body) = req.into_parts();
        let mut path_args: Vec<String> =
            Path::<Vec<String>>::from_request_parts(&mut parts, services)
                .await
                .map(|Path(args)| args)
                .unwrap_or_default();
        // A route mounted with a trailing slash stands for an empty last parameter (the empty
        // state key of `/state/{type}/`), see `RouterExt::ruma_route`. (The slash-less form,
        // `/state/{type}`, ruma's state endpoints parse themselves.)
        if parts
            .extensions
            .get::<MatchedPath>()
            .is_some_and(|m| m.as_str().ends_with('/'))
        {
            path_args.push(String::new());
        }
        let client_ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());

        let mut appservice = None;
        let (sender_user, sender_device) = match T::Authentication::KIND {
            AuthKind::None => (None, None),
            kind => match access_token(&parts) {
                Some(token) => match services.appservices.by_as_token(&token) {
                    Some(service) => {
                        let identity = appservice_identity::<T>(services, &service, &parts).await?;
                        appservice = Some(service);
                        (Some(identity.user_id), Some(identity.device_id))
                    }
                    None => match services.devices.authenticate(&token).await? {
                        Some(session) => (Some(session.user_id), Some(session.device_id)),
                        None => return Err(Error::unknown_token()),
                    },
                },
                None if kind == AuthKind::Required => return Err(Error::missing_token()),
                None => (None, None),
            },
        };

        // The account's restrictions, whoever acts for it (a device, or a bridge).
        let mut restriction = crate::service::users::Restriction::default();
        if let Some(user_id) = &sender_user {
            let path = parts
                .extensions
                .get::<MatchedPath>()
                .map_or(parts.uri.path(), |m| m.as_str());
            restriction =
                check_restriction(services, user_id, &parts.method, path, parts.uri.path())?;
        }

        let bytes = read_body(&parts, body, services.config.max_request_size as usize).await?;
        if !bytes.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(Error::not_json("The request body is not valid JSON."));
        }
        // An empty body on POST/PUT means "no fields" (clients such as matrix-nio send nothing to
        // `/join`): parse it as `{}`, so endpoints whose fields are all optional accept it and
        // the others name the missing field. (Endpoints with non-JSON bodies, such as media
        // upload, will need their own extractor.)
        let bytes = if bytes.is_empty()
            && (parts.method == http::Method::POST || parts.method == http::Method::PUT)
        {
            bytes::Bytes::from_static(b"{}")
        } else {
            bytes
        };
        let bytes = drop_empty_uia_auth(bytes);
        let parts_path = parts.uri.path().to_owned();
        let http_request = http::Request::from_parts(parts, &bytes[..]);
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        // ruma's parsing is trusted to refuse, not to panic; where it does (a body it does not
        // expect), that is a bad request, answered as one.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            T::try_from_http_request(http_request, &args)
        }))
        .map_err(|_| {
            tracing::info!(path = %parts_path, "request parsing panicked");
            Error::bad_json("The request could not be parsed: a field is missing or malformed.")
        })?;
        let body = parsed.map_err(request_error)?;
        Ok(Ruma {
            body,
            sender_user,
            sender_device,
            client_ip,
            appservice,
            restriction,
        })
    }
}

/// Refuses what a locked or suspended account may not do (spec v1.18): a locked one anything
/// but logging out (401 `M_USER_LOCKED`, a soft logout); a suspended one what acts on rooms
/// or its profile — sending, state, joining, inviting, knocking, moderating, creating and
/// upgrading rooms, aliases and the room directory, profile changes, media uploads (403
/// `M_USER_SUSPENDED`). Reading, leaving, redacting, receipts, keys, devices, logging out and
/// deactivating stay allowed. A guest may only call what the spec's guest access allows
/// (403 `M_GUEST_ACCESS_FORBIDDEN`). `path` is the route's template, `uri_path` the request's.
/// Returns the restrictions it read, for the handler.
pub fn check_restriction(
    services: &Services,
    user_id: &ruma::UserId,
    method: &http::Method,
    path: &str,
    uri_path: &str,
) -> Result<crate::service::users::Restriction, Error> {
    let restriction = services.users.restriction(user_id);
    if restriction.guest && !guest_may(method, path, uri_path) {
        return Err(Error::new(
            http::StatusCode::FORBIDDEN,
            ruma::api::error::ErrorKind::GuestAccessForbidden,
            "Guest accounts may not do this: register a full account.",
        ));
    }
    if restriction.locked && !(path.ends_with("/logout") || path.ends_with("/logout/all")) {
        return Err(Error::with_fields(
            http::StatusCode::UNAUTHORIZED,
            ruma::api::error::ErrorKind::UserLocked,
            "This account has been locked by the server's administrators.",
            [("soft_logout", serde_json::Value::Bool(true))],
        ));
    }
    if restriction.suspended && suspended_may_not(method, path) {
        return Err(Error::new(
            http::StatusCode::FORBIDDEN,
            ruma::api::error::ErrorKind::UserSuspended,
            "This account is suspended: it may read, but not act in rooms or change its profile.",
        ));
    }
    Ok(restriction)
}

/// What the spec's guest access allows a guest account (by route template): reading rooms
/// and syncing, joining and leaving, sending messages, typing and receipts, its devices,
/// keys, to-device messages, account data, filters, presence and display name, and media.
fn guest_may(method: &http::Method, path: &str, uri_path: &str) -> bool {
    let path = path.trim_end_matches('/');
    let ends = |suffixes: &[&str]| suffixes.iter().any(|s| path.ends_with(s));
    let has = |parts: &[&str]| parts.iter().any(|s| path.contains(s));
    match *method {
        http::Method::GET => {
            ends(&[
                "/pushrules",
                "/sync",
                "/events",
                "/state",
                "/members",
                "/messages",
                "/initialSync",
                "/joined_members",
                "/account/whoami",
                "/capabilities",
                "/turnServer",
                "/devices",
                "/keys/changes",
                "/joined_rooms",
                "/versions",
                "/login",
            ]) || has(&[
                "/state/",
                "/context/",
                "/event/",
                "/relations/",
                "/presence/",
                "/profile/",
                "/devices/",
                "/account_data/",
                "/filter/",
                "/media/",
                "/pushrules/",
            ])
        }
        http::Method::PUT => {
            // Messages only (`m.room.message`), not other events.
            (path.contains("/send/") && uri_path.contains("/send/m.room.message/"))
                || (path.contains("/profile/") && uri_path.ends_with("/displayname"))
                || has(&[
                    "/typing/",
                    "/presence/",
                    "/devices/",
                    "/sendToDevice/",
                    "/account_data/",
                ])
        }
        http::Method::POST => {
            path.contains("/join/")
                || ends(&[
                    "/join",
                    "/leave",
                    "/read_markers",
                    "/keys/query",
                    "/keys/upload",
                    "/keys/claim",
                    "/filter",
                    "/logout",
                    "/logout/all",
                    "/register",
                ])
                || path.contains("/receipt/")
        }
        _ => false,
    }
}

fn suspended_may_not(method: &http::Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    match *method {
        http::Method::PUT => [
            "/send/",
            "/state/",
            "/profile/",
            "/directory/room/",
            "/directory/list/room/",
            "/upload/",
        ]
        .iter()
        .any(|part| path.contains(part)),
        http::Method::POST => {
            path.ends_with("/createRoom")
                || path.contains("/join/")
                || path.ends_with("/join")
                || path.contains("/knock/")
                || ["/invite", "/kick", "/ban", "/unban", "/upgrade"]
                    .iter()
                    .any(|end| path.ends_with(end))
                // Media uploads, not key uploads (`/keys/upload` stays allowed).
                || (path.contains("/media/")
                    && (path.ends_with("/upload") || path.ends_with("/create")))
        }
        http::Method::DELETE => path.contains("/profile/") || path.contains("/directory/room/"),
        _ => false,
    }
}

/// Whom a request with an `as_token` acts as: the `user_id` query parameter (identity
/// assertion) and `device_id` (MSC3202's `org.matrix.msc3202.device_id`, or the stable name).
/// `/register` only names the appservice, so its user need not exist yet.
async fn appservice_identity<T: 'static>(
    services: &Services,
    service: &Appservice,
    parts: &http::request::Parts,
) -> Result<AppserviceIdentity, Error> {
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded_pairs(q).collect())
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let registering = std::any::TypeId::of::<T>()
        == std::any::TypeId::of::<ruma::api::client::account::register::v3::Request>();
    services
        .appservice_identity(
            service,
            param("user_id"),
            param("org.matrix.msc3202.device_id").or(param("device_id")),
            registering,
        )
        .await
}

/// The access token from `Authorization: Bearer …`, or the deprecated `access_token` query
/// parameter.
pub(crate) fn access_token(parts: &http::request::Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
    }
    let query = parts.uri.query()?;
    form_urlencoded_pairs(query)
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    serde_html_form::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
}

/// Reads the whole body, refusing more than `limit` bytes with `M_TOO_LARGE`.
pub(crate) async fn read_body(
    parts: &http::request::Parts,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, Error> {
    let too_large = || Error::too_large(format!("The request body is larger than {limit} bytes."));
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| l.parse::<usize>().ok());
    if declared.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Error::new(
            StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::Unknown,
            format!("Could not read the request body: {e}"),
        )),
    }
}

/// An `auth` object with neither `type` nor `session` carries no authentication at all; some
/// clients send one to start user-interactive auth (matrix-nio's token registration does).
/// Treat it as absent, as Synapse does, instead of failing the whole request as malformed.
fn drop_empty_uia_auth(bytes: bytes::Bytes) -> bytes::Bytes {
    if !bytes.windows(6).any(|w| w == b"\"auth\"") {
        return bytes;
    }
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(&bytes) else {
        return bytes;
    };
    let empty_auth = body
        .get("auth")
        .and_then(|a| a.as_object())
        .is_some_and(|auth| !auth.contains_key("type") && !auth.contains_key("session"));
    if !empty_auth {
        return bytes;
    }
    body.remove("auth");
    serde_json::to_vec(&body)
        .map(bytes::Bytes::from)
        .unwrap_or(bytes)
}

pub(crate) fn request_error(error: FromHttpRequestError) -> Error {
    match error {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            Error::bad_json(format!("Invalid request body: {e}"))
        }
        FromHttpRequestError::Deserialization(e) => {
            Error::invalid_param(format!("Invalid request parameter: {e}"))
        }
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::unrecognized(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed here.")
        }
        other => Error::invalid_param(format!("Invalid request: {other}")),
    }
}

/// A ruma response, serialised on the way out.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(response) => response
                .map(|body| Body::from(body.freeze()))
                .into_response(),
            Err(e) => {
                Error::internal(format!("response serialisation failed: {e}")).into_response()
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if matches!(self, Error::Database(_) | Error::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let (status, body) = self.to_status_and_body();
        let mut response = (status, body.to_string()).into_response();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

pub trait RouterExt {
    /// Mounts `handler` for request type `R` on every path and the method `R` declares.
    fn ruma_route<R, H, X>(self, handler: H) -> Self
    where
        R: IncomingRequest,
        R::PathBuilder: AllPaths,
        H: Handler<X, State>,
        X: 'static;

    /// `Router::route` for a route that is no ruma endpoint (the admin API, media, discovery),
    /// recorded like [`RouterExt::ruma_route`]'s with the method `*`.
    fn plain_route(self, path: &str, methods: axum::routing::MethodRouter<State>) -> Self;
}

/// Every `(method, path)` mounted through [`RouterExt`] (`*` for a plain route, which may
/// answer several methods), for tests that try each one with bad input.
static MOUNTED: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The routes mounted so far (see [`MOUNTED`]).
pub fn mounted_routes() -> Vec<(String, String)> {
    MOUNTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

impl RouterExt for Router<State> {
    fn ruma_route<R, H, X>(mut self, handler: H) -> Self
    where
        R: IncomingRequest,
        R::PathBuilder: AllPaths,
        H: Handler<X, State>,
        X: 'static,
    {
        let filter =
            MethodFilter::try_from(R::METHOD).expect("ruma endpoints use standard methods");
        for path in R::PATH_BUILDER.all_paths() {
            MOUNTED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((R::METHOD.to_string(), path.to_owned()));
            self = self.route(path, on(filter, handler.clone()));
            // State keys may be empty, and then the spec makes the trailing slash optional:
            // `/state/m.room.topic/` and `/state/m.room.topic` must reach the handler too.
            if let Some(prefix) = path.strip_suffix("{state_key}") {
                self = self.route(prefix, on(filter, handler.clone()));
                self = self.route(prefix.trim_end_matches('/'), on(filter, handler.clone()));
            }
        }
        self
    }

    fn plain_route(self, path: &str, methods: axum::routing::MethodRouter<State>) -> Self {
        MOUNTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(("*".to_owned(), path.to_owned()));
        self.route(path, methods)
    }
}
