//! Discovery: `/versions`, `/.well-known/matrix/*`, `/capabilities`.

use std::collections::BTreeMap;

use axum::{Json, Router, extract, routing::get};
use ruma::{
    RoomVersionId,
    api::client::discovery::{
        discover_homeserver,
        get_capabilities::v3::{
            self as capabilities_v3, Capabilities, ProfileFieldsCapability, RoomVersionStability,
        },
        get_supported_versions,
    },
};

use crate::{
    Error, Result,
    api::ruma::{RouterExt, Ruma, RumaResponse, State},
    service::rooms::SUPPORTED_ROOM_VERSIONS,
};

/// The spec versions whose client-server endpoints and behaviours culvert follows (see
/// ARCHITECTURE.md, "Spec versions").
const SUPPORTED_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
    "v1.9", "v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18",
    "v1.19",
];

/// The last version that still had the legacy mention push rules: served (by config), they
/// keep `/versions` from claiming a later one.
const LAST_WITH_LEGACY_MENTIONS: &str = "v1.16";

pub async fn versions(
    extract::State(services): extract::State<State>,
    _: Ruma<get_supported_versions::Request>,
) -> RumaResponse<get_supported_versions::Response> {
    let legacy = services.config.legacy_mention_push_rules;
    let last = SUPPORTED_VERSIONS
        .iter()
        .position(|v| legacy && *v == LAST_WITH_LEGACY_MENTIONS)
        .unwrap_or(SUPPORTED_VERSIONS.len() - 1);
    let mut response = get_supported_versions::Response::new(
        SUPPORTED_VERSIONS[..=last]
            .iter()
            .map(|v| (*v).to_owned())
            .collect(),
    );
    response.unstable_features = BTreeMap::from([
        // Authenticated media (a v1.11 feature) without claiming the rest of v1.11: clients
        // such as Element switch to `/_matrix/client/v1/media` on this flag.
        ("org.matrix.msc3916.stable".to_owned(), true),
        // Cross-signing: Element still checks this flag before it sets cross-signing up (and
        // otherwise says the server does not support it).
        ("org.matrix.e2e_cross_signing".to_owned(), true),
        // Simplified sliding sync (MSC4186): Element X and matrix-rust-sdk clients need it.
        ("org.matrix.simplified_msc3575".to_owned(), true),
        // `use_state_after` (MSC4222), also under its unstable names.
        ("org.matrix.msc4222".to_owned(), true),
        // Delayed events (MSC4140), unless turned off: Element Call's leave after a crash.
        (
            "org.matrix.msc4140".to_owned(),
            services.delayed_events.max_delay_ms > 0,
        ),
        // Invite blocking (MSC4380, v1.18) under its stable names, for clients that look for
        // it here when the server stops short of v1.18 (legacy mention rules served).
        ("org.matrix.msc4380.stable".to_owned(), true),
        // Thread subscriptions and their sliding-sync extension, when turned on.
        (
            "org.matrix.msc4306".to_owned(),
            services.thread_subscriptions_enabled(),
        ),
        (
            "org.matrix.msc4308".to_owned(),
            services.thread_subscriptions_enabled(),
        ),
    ]);
    RumaResponse(response)
}

pub async fn well_known_client(
    extract::State(services): extract::State<State>,
    _: Ruma<discover_homeserver::Request>,
) -> Result<Json<serde_json::Value>> {
    let base_url = services
        .config
        .well_known
        .client
        .clone()
        .ok_or_else(|| Error::not_found("No client well-known is configured."))?;
    let mut body = serde_json::json!({ "m.homeserver": { "base_url": base_url } });
    // MatrixRTC's call transports, where Element Call looked for them before MSC4143's
    // endpoint (and still looks when the endpoint is missing).
    let transports = &services.config.matrix_rtc.transports;
    if !transports.is_empty() {
        body["org.matrix.msc4143.rtc_foci"] = serde_json::to_value(transports)?;
    }
    Ok(Json(body))
}

/// `GET /rtc/transports` (MSC4143): the MatrixRTC transports configured for calls, at the
/// stable path Element X asks first and at the unstable one Synapse serves.
pub async fn rtc_transports(
    extract::State(services): extract::State<State>,
    _: Ruma<ruma::api::client::rtc::transports::v1::Request>,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(
        serde_json::json!({ "rtc_transports": services.config.matrix_rtc.transports }),
    ))
}

/// `/.well-known/matrix/server` belongs to the federation API; it is mounted here because it is
/// plain configuration, with no request to parse. `/.well-known/matrix/support` (spec v1.10)
/// too: the server's contacts and support page, 404 while none is configured.
pub fn well_known_server(router: Router<State>) -> Router<State> {
    router
        .plain_route(
            "/.well-known/matrix/support",
            get(
                |extract::State(services): extract::State<State>| async move {
                    let well_known = &services.config.well_known;
                    if well_known.support_contacts.is_empty() && well_known.support_page.is_none() {
                        return Err(Error::not_found("No support information is configured."));
                    }
                    let mut body = serde_json::json!({ "contacts": well_known.support_contacts });
                    if let Some(page) = &well_known.support_page {
                        body["support_page"] = page.as_str().into();
                    }
                    Ok(Json(body))
                },
            ),
        )
        .plain_route(
            "/.well-known/matrix/server",
            get(
                |extract::State(services): extract::State<State>| async move {
                    match &services.config.well_known.server {
                        Some(server) => Ok(Json(serde_json::json!({ "m.server": server }))),
                        None => Err(Error::not_found("No server well-known is configured.")),
                    }
                },
            ),
        )
}

pub async fn capabilities(
    extract::State(services): extract::State<State>,
    request: Ruma<capabilities_v3::Request>,
) -> RumaResponse<capabilities_v3::Response> {
    let mut capabilities = Capabilities::new();
    let available: BTreeMap<RoomVersionId, RoomVersionStability> = SUPPORTED_ROOM_VERSIONS
        .into_iter()
        .map(|v| (v, RoomVersionStability::Stable))
        .collect();
    capabilities.room_versions.default = services.config.default_room_version.clone();
    capabilities.room_versions.available = available;
    capabilities.change_password.enabled = true;
    capabilities.profile_fields = Some(ProfileFieldsCapability::new(true));
    // Deprecated since v1.16 in favour of `m.profile_fields`, but older clients still read them.
    #[allow(deprecated)]
    {
        capabilities.set_displayname.enabled = true;
        capabilities.set_avatar_url.enabled = true;
    }
    capabilities.thirdparty_id_changes.enabled = false;
    capabilities.get_login_token.enabled = true;
    // Admins may lock and suspend accounts (spec v1.18).
    let admin = request
        .sender_user
        .as_ref()
        .and_then(|user| services.users.get(user).ok().flatten())
        .is_some_and(|record| record.admin);
    capabilities.account_moderation.lock = admin;
    capabilities.account_moderation.suspend = admin;
    RumaResponse(capabilities_v3::Response::new(capabilities))
}

/// `GET /.well-known/matrix/policy_server` (spec v1.18): culvert is no policy server, so it
/// has no key to publish.
pub async fn policy_server(
    _: Ruma<ruma::api::client::discovery::discover_policy_server::Request>,
) -> Result<Json<serde_json::Value>> {
    Err(Error::not_found("This server is not a policy server."))
}
