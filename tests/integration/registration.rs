//! `/register` and its helpers, under each registration policy.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

const REGISTER: &str = "/_matrix/client/v3/register";

#[tokio::test]
async fn open_registration_uia_dance() {
    let server = TestServer::start().await;
    let (status, uia) = server
        .post(
            REGISTER,
            None,
            json!({ "username": "alice", "password": "pw-alice" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(uia["flows"], json!([{ "stages": ["m.login.dummy"] }]));
    let session = uia["session"].as_str().unwrap();

    let (status, body) = server
        .post(
            REGISTER,
            None,
            json!({
                "username": "alice", "password": "pw-alice",
                "initial_device_display_name": "Alice's laptop",
                "auth": { "type": "m.login.dummy", "session": session },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@alice:test.local");
    assert!(body["access_token"].as_str().unwrap().len() >= 32);
    let device_id = body["device_id"].as_str().unwrap();

    // The first account is the server admin; the next one is not.
    let alice = server
        .services()
        .users
        .get(&ruma::UserId::parse("@alice:test.local").unwrap())
        .unwrap()
        .unwrap();
    assert!(alice.admin);
    let bob = server.register("bob", "pw-bob").await;
    let bob_record = server
        .services()
        .users
        .get(&ruma::UserId::parse(&bob.user_id).unwrap())
        .unwrap()
        .unwrap();
    assert!(!bob_record.admin);

    // The device got its display name.
    let token = body["access_token"].as_str().unwrap();
    let (_, device) = server
        .get(
            &format!("/_matrix/client/v3/devices/{device_id}"),
            Some(token),
        )
        .await;
    assert_eq!(device["display_name"], "Alice's laptop");

    // Auth sent straight away (no prior 401), as some clients do, also works.
    let (status, body) = server
        .post(
            REGISTER,
            None,
            json!({ "username": "carol", "password": "pw", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn taken_and_invalid_names() {
    let server = TestServer::start().await;
    server.register("alice", "pw").await;
    assert_error(
        &server
            .post(
                REGISTER,
                None,
                json!({ "username": "alice", "password": "x" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
    assert_error(
        &server
            .post(
                REGISTER,
                None,
                json!({ "username": "Not Valid!", "password": "x" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
    );

    let available = "/_matrix/client/v3/register/available?username=";
    let (status, body) = server.get(&format!("{available}dave"), None).await;
    assert_eq!(
        (status, body["available"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_error(
        &server.get(&format!("{available}alice"), None).await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
    assert_error(
        &server.get(&format!("{available}BAD%20NAME"), None).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
    );

    // A stale or made-up UIA session is refused.
    let result = server
        .post(REGISTER, None, json!({ "username": "erin", "password": "x", "auth": { "type": "m.login.dummy", "session": "made-up" } }))
        .await;
    assert_eq!(result.0, StatusCode::BAD_REQUEST, "{}", result.1);
}

#[tokio::test]
async fn guests_refused_unless_enabled() {
    let server = TestServer::start().await;
    assert_error(
        &server
            .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    let server = TestServer::start_with("allow_guest_registration = true").await;
    let (status, body) = server
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, whoami) = server
        .get(
            "/_matrix/client/v3/account/whoami",
            body["access_token"].as_str(),
        )
        .await;
    assert_eq!(whoami["is_guest"], true);
}

#[tokio::test]
async fn registration_token_flow() {
    let server = TestServer::start_with(
        "registration_token = \"let-me-in\"\nrate_limits = { enabled = false }",
    )
    .await;
    let (status, uia) = server
        .post(
            REGISTER,
            None,
            json!({ "username": "tok", "password": "pw" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        uia["flows"],
        json!([{ "stages": ["m.login.registration_token", "m.login.dummy"] }])
    );
    let session = uia["session"].as_str().unwrap();

    // The dummy stage alone does not complete the flow.
    let (status, body) = server
        .post(REGISTER, None, json!({ "username": "tok", "password": "pw", "auth": { "type": "m.login.dummy", "session": session } }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["completed"], json!(["m.login.dummy"]));

    // A wrong token: 401 with M_FORBIDDEN and the same session.
    let (status, body) = server
        .post(REGISTER, None, json!({ "username": "tok", "password": "pw", "auth": { "type": "m.login.registration_token", "token": "wrong", "session": session } }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(body["session"], session);

    let (status, body) = server
        .post(REGISTER, None, json!({ "username": "tok", "password": "pw", "auth": { "type": "m.login.registration_token", "token": "let-me-in", "session": session } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@tok:test.local");

    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity?token=";
    assert_eq!(
        server.get(&format!("{validity}let-me-in"), None).await.1["valid"],
        true
    );
    assert_eq!(
        server.get(&format!("{validity}nope"), None).await.1["valid"],
        false
    );
}

#[tokio::test]
async fn closed_registration_with_first_start_token() {
    let server = TestServer::start_with("allow_registration = false").await;
    // No account yet: the bootstrap token (logged at start) is the way in.
    let token = server
        .services()
        .globals
        .bootstrap_token(false)
        .unwrap()
        .expect("bootstrap token created at start");
    let (status, uia) = server
        .post(
            REGISTER,
            None,
            json!({ "username": "owner", "password": "pw" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        uia["flows"],
        json!([{ "stages": ["m.login.registration_token", "m.login.dummy"] }])
    );
    let (status, body) = server
        .post(REGISTER, None, json!({ "username": "owner", "password": "pw", "auth": { "type": "m.login.registration_token", "token": token, "session": uia["session"] } }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["completed"], json!(["m.login.registration_token"]));
    let (status, body) = server
        .post(REGISTER, None, json!({ "username": "owner", "password": "pw", "auth": { "type": "m.login.dummy", "session": uia["session"] } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let owner = server
        .services()
        .users
        .get(&ruma::UserId::parse("@owner:test.local").unwrap())
        .unwrap()
        .unwrap();
    assert!(owner.admin, "the first account is admin");

    // The token is used up and registration is now closed.
    assert_eq!(
        server.services().globals.bootstrap_token(false).unwrap(),
        None
    );
    assert_error(
        &server
            .post(
                REGISTER,
                None,
                json!({ "username": "intruder", "password": "pw" }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .get(
                "/_matrix/client/v1/register/m.login.registration_token/validity?token=x",
                None,
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn registration_is_rate_limited() {
    let server =
        TestServer::start_with("rate_limits = { register_per_minute = 1, register_burst = 2 }")
            .await;
    for _ in 0..2 {
        server
            .get("/_matrix/client/v3/register/available?username=x", None)
            .await;
    }
    let limited = server
        .get("/_matrix/client/v3/register/available?username=x", None)
        .await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    assert!(
        limited.1["retry_after_ms"].as_u64().unwrap() > 0,
        "{}",
        limited.1
    );
}
