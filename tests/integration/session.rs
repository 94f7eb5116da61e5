//! `/login` and `/logout`.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn login_flows_and_password_login() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["flows"],
        json!([{ "type": "m.login.password" }, { "type": "m.login.application_service" }])
    );

    let registered = server.register("alice", "correct horse").await;
    // By localpart, by full user ID, and through the deprecated `user` field.
    let by_localpart = server.login_ok("alice", "correct horse").await;
    assert_eq!(by_localpart.user_id, "@alice:test.local");
    let by_id = server.login_ok("@alice:test.local", "correct horse").await;
    assert_ne!(by_id.device_id, by_localpart.device_id);
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "alice", "password": "correct horse" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["home_server"], "test.local");

    assert_error(
        &server.login("alice", "wrong").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.login("nobody", "wrong").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.login("@alice:elsewhere.org", "correct horse").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({ "type": "m.login.token", "token": "x" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );

    // All four sessions work.
    for token in [&registered.token, &by_localpart.token, &by_id.token] {
        server.assert_token_alive(token).await;
    }
}

#[tokio::test]
async fn login_with_existing_device_replaces_its_token() {
    let server = TestServer::start().await;
    let first = server.register("dev", "pw").await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "dev" }, "password": "pw", "device_id": first.device_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["device_id"], first.device_id);
    server.assert_token_dead(&first.token).await;
    let (_, devices) = server
        .get("/_matrix/client/v3/devices", body["access_token"].as_str())
        .await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn logout_and_logout_all() {
    let server = TestServer::start().await;
    let a = server.register("leaver", "pw").await;
    let b = server.login_ok("leaver", "pw").await;
    let c = server.login_ok("leaver", "pw").await;

    let (status, _) = server
        .post("/_matrix/client/v3/logout", Some(&a.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    server.assert_token_dead(&a.token).await;
    server.assert_token_alive(&b.token).await;
    let (_, devices) = server
        .get("/_matrix/client/v3/devices", Some(&b.token))
        .await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);

    let (status, _) = server
        .post("/_matrix/client/v3/logout/all", Some(&b.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for token in [&b.token, &c.token] {
        server.assert_token_dead(token).await;
    }
    // The password still works.
    server.login_ok("leaver", "pw").await;
}

#[tokio::test]
async fn login_is_rate_limited_per_ip() {
    let server =
        TestServer::start_with("rate_limits = { login_per_minute = 1, login_burst = 3 }").await;
    server.register("limited", "pw").await;
    for _ in 0..3 {
        assert_error(
            &server.login("limited", "wrong").await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
    let limited = server.login("limited", "pw").await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    assert!(limited.1["retry_after_ms"].as_u64().unwrap() > 1000);
}
