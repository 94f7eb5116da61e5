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
        json!([
            { "type": "m.login.password" },
            { "type": "m.login.token", "get_login_token": true },
            { "type": "m.login.application_service" }
        ])
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
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({ "type": "m.login.sso" }),
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

/// `POST /login/get_token` (v1.7): after the password again, a token that signs one other
/// device in with `m.login.token`, once.
#[tokio::test]
async fn a_login_token_signs_in_one_other_device_once() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let alice = server.register("alice", "alice-password-1").await;
    let capabilities = server
        .get("/_matrix/client/v3/capabilities", Some(&alice.token))
        .await
        .1;
    assert_eq!(
        capabilities["capabilities"]["m.get_login_token"]["enabled"],
        true
    );
    let path = "/_matrix/client/v1/login/get_token";
    let (status, uia) = server.post(path, Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
    assert_eq!(uia["flows"], json!([{ "stages": ["m.login.password"] }]));
    let auth = |password: &str| {
        json!({ "auth": { "type": "m.login.password", "session": uia["session"],
                          "identifier": { "type": "m.id.user", "user": "alice" },
                          "password": password } })
    };
    let (status, _) = server.post(path, Some(&alice.token), auth("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, answer) = server
        .post(path, Some(&alice.token), auth("alice-password-1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["expires_in_ms"], 120_000);
    let token = answer["login_token"].as_str().expect("login_token");

    let login = json!({ "type": "m.login.token", "token": token,
                        "initial_device_display_name": "the other device" });
    let (status, session) = server
        .post("/_matrix/client/v3/login", None, login.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["user_id"], alice.user_id);
    assert_ne!(session["device_id"], alice.device_id.as_str());
    server
        .assert_token_alive(session["access_token"].as_str().unwrap())
        .await;
    // Once only.
    assert_error(
        &server.post("/_matrix/client/v3/login", None, login).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Not without an access token.
    assert_error(
        &server.post(path, None, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

/// A login token past its two minutes is refused (its record made expired directly in the
/// store: the test does not wait two minutes), and used up all the same.
#[tokio::test]
async fn an_expired_login_token_is_refused() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let alice = server.register("alice", "alice-password-1").await;
    let mut batch = culvert::store::Batch::new();
    batch.put(
        culvert::store::Cf::LoginTokens,
        culvert::utils::sha256(b"expired-login-token").to_vec(),
        culvert::store::keys::join([alice.user_id.as_bytes(), b"1"]),
    );
    server.services().store.write(batch).unwrap();
    let login = json!({ "type": "m.login.token", "token": "expired-login-token" });
    for _ in 0..2 {
        assert_error(
            &server
                .post("/_matrix/client/v3/login", None, login.clone())
                .await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
    assert!(
        server
            .services()
            .store
            .get(
                culvert::store::Cf::LoginTokens,
                &culvert::utils::sha256(b"expired-login-token")
            )
            .unwrap()
            .is_none()
    );
}
