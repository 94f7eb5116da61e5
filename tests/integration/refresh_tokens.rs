//! Refresh tokens (spec v1.3): sessions that ask get an expiring access token and a refresh
//! token; `/refresh` hands out a next pair while the current one keeps working until the next
//! is used; expiry is a soft logout; logout, a repeated refresh and a server that hands out
//! none give the spec's errors.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, assert_error};

const SHORT: &str = "access_token_lifetime_ms = 1500\nrate_limits = { enabled = false }";

async fn login(server: &TestServer, name: &str, refresh: bool) -> Value {
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": name },
                "password": format!("{name}-password-1"),
                "refresh_token": refresh,
                "device_id": "PHONE",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn refresh(server: &TestServer, token: &str) -> (StatusCode, Value) {
    server
        .post(
            "/_matrix/client/v3/refresh",
            None,
            json!({ "refresh_token": token }),
        )
        .await
}

async fn refreshed(server: &TestServer, token: &str) -> (String, String) {
    let (status, body) = refresh(server, token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in_ms"], 1500, "{body}");
    (
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned(),
        body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned(),
    )
}

async fn whoami(server: &TestServer, token: &str) -> (StatusCode, Value) {
    server
        .get("/_matrix/client/v3/account/whoami", Some(token))
        .await
}

fn assert_unknown(result: &(StatusCode, Value), soft: bool) {
    assert_error(result, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(result.1["soft_logout"], soft, "{}", result.1);
}

#[tokio::test]
async fn refresh_tokens_rotate_expire_softly_and_are_revoked() {
    let server = TestServer::start_with(SHORT).await;
    server.register("alice", "alice-password-1").await;

    // Without asking: no refresh token, and a token that does not expire.
    let plain = login(&server, "alice", false).await;
    assert!(plain.get("refresh_token").is_none() && plain.get("expires_in_ms").is_none());
    let plain_token = plain["access_token"].as_str().unwrap().to_owned();

    // Asking: an expiring access token and a refresh token (the same device, logged in again).
    let first = login(&server, "alice", true).await;
    assert_eq!(first["expires_in_ms"], 1500, "{first}");
    let (a1, r1) = (
        first["access_token"].as_str().unwrap().to_owned(),
        first["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_unknown(&whoami(&server, &plain_token).await, false);
    assert_eq!(whoami(&server, &a1).await.0, StatusCode::OK);

    // A refresh: the old pair keeps working until the new one is used.
    let (a2, _r2) = refreshed(&server, &r1).await;
    assert_eq!(whoami(&server, &a1).await.0, StatusCode::OK);
    // Refreshing again with the old refresh token (the client lost the answer) replaces the
    // unused pair.
    let (a3, r3) = refreshed(&server, &r1).await;
    assert_unknown(&whoami(&server, &a2).await, false);
    assert_eq!(whoami(&server, &a1).await.0, StatusCode::OK);
    // The new access token used: the old pair is gone.
    let me = whoami(&server, &a3).await;
    assert_eq!(me.0, StatusCode::OK, "{}", me.1);
    assert_eq!(me.1["device_id"], "PHONE");
    assert_unknown(&whoami(&server, &a1).await, false);
    assert_unknown(&refresh(&server, &r1).await, false);

    // Expiry: a soft logout, and the refresh token still brings the session back.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_unknown(&whoami(&server, &a3).await, true);
    let (a4, r4) = refreshed(&server, &r3).await;
    assert_eq!(whoami(&server, &a4).await.0, StatusCode::OK);
    // A next refresh token used before its access token: its pair becomes current, the old
    // one goes.
    let (_a5, r5) = refreshed(&server, &r4).await;
    let (a6, r6) = refreshed(&server, &r5).await;
    assert_unknown(&refresh(&server, &r4).await, false);
    assert_unknown(&whoami(&server, &a4).await, false);

    // Logout revokes every token of the device.
    let (status, _) = server
        .post("/_matrix/client/v3/logout", Some(&a6), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_unknown(&refresh(&server, &r6).await, false);
    assert_unknown(&refresh(&server, &r5).await, false);

    // Bad input.
    let missing = server
        .post("/_matrix/client/v3/refresh", None, json!({}))
        .await;
    assert_eq!(missing.0, StatusCode::BAD_REQUEST, "{}", missing.1);
    assert_unknown(&refresh(&server, "not-a-token").await, false);
}

#[tokio::test]
async fn registration_hands_out_refresh_tokens_and_a_server_can_refuse_them() {
    let server = TestServer::start_with(SHORT).await;
    let body = json!({ "username": "bob", "password": "bob-password-1", "refresh_token": true });
    let (_, uia) = server
        .post("/_matrix/client/v3/register", None, body.clone())
        .await;
    let mut body = body;
    body["auth"] = json!({ "type": "m.login.dummy", "session": uia["session"] });
    let (status, registered) = server.post("/_matrix/client/v3/register", None, body).await;
    assert_eq!(status, StatusCode::OK, "{registered}");
    assert_eq!(registered["expires_in_ms"], 1500, "{registered}");
    let refresh_token = registered["refresh_token"].as_str().expect("refresh_token");
    refreshed(&server, refresh_token).await;

    // `access_token_lifetime_ms = 0`: none handed out, tokens never expire.
    let none = TestServer::start_with("access_token_lifetime_ms = 0").await;
    none.register("carol", "carol-password-1").await;
    let session = login(&none, "carol", true).await;
    assert!(session.get("refresh_token").is_none(), "{session}");
    assert!(session.get("expires_in_ms").is_none(), "{session}");
}
