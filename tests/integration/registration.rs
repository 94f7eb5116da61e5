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

/// Guest access as the spec has it: a guest reads world-readable rooms, joins only rooms that
/// let guests in, sends messages there and nothing else, is refused what guests may not do
/// (`M_GUEST_ACCESS_FORBIDDEN`), and becomes a full account under the same ID.
#[tokio::test]
async fn guests_do_what_guest_access_allows_and_can_upgrade() {
    let server = TestServer::start_with(
        "allow_guest_registration = true\nrate_limits = { enabled = false }",
    )
    .await;
    let alice = server.register("alice", "alice-password-1").await;
    let open = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "initial_state": [
                { "type": "m.room.history_visibility", "state_key": "",
                  "content": { "history_visibility": "world_readable" } },
                { "type": "m.room.guest_access", "state_key": "",
                  "content": { "guest_access": "can_join" } }] }),
        )
        .await;
    let members_only = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.say(&alice, &open, "welcome").await;

    let (status, guest) = server
        .post("/_matrix/client/v3/register?kind=guest", None, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{guest}");
    let token = guest["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let guest_id = guest["user_id"].as_str().unwrap().to_owned();
    let t = Some(token.as_str());

    // Reading without joining, then joining the room that lets guests in, and writing.
    let (status, history) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{open}/messages?dir=b"),
            t,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let (status, joined) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{open}/join"),
            t,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (status, sent) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{open}/send/m.room.message/g1"),
            t,
            json!({ "msgtype": "m.text", "body": "hello from a guest" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert_eq!(
        server.get("/_matrix/client/v3/sync", t).await.0,
        StatusCode::OK
    );
    // A room without guest access: no.
    assert_error(
        &server
            .post(
                &format!("/_matrix/client/v3/rooms/{members_only}/join"),
                t,
                json!({}),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // What guests may not do at all.
    for result in [
        server
            .post("/_matrix/client/v3/createRoom", t, json!({}))
            .await,
        server
            .put(
                &format!("/_matrix/client/v3/rooms/{open}/send/m.reaction/g2"),
                t,
                json!({}),
            )
            .await,
        server
            .put(
                &format!("/_matrix/client/v3/rooms/{open}/state/m.room.topic/"),
                t,
                json!({ "topic": "guests rule" }),
            )
            .await,
        server
            .post(
                "/_matrix/client/v3/user_directory/search",
                t,
                json!({ "search_term": "alice" }),
            )
            .await,
    ] {
        assert_error(&result, StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN");
    }

    // Upgrading: the same user ID, a password, new tokens for the same device (the guest's
    // token stops working); guest limits gone.
    let body = json!({ "password": "guest-now-full-1", "device_id": guest["device_id"] });
    let (status, uia) = server
        .post("/_matrix/client/v3/register", t, body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
    let mut body = body;
    body["auth"] = json!({ "type": "m.login.dummy", "session": uia["session"] });
    let (status, upgraded) = server.post("/_matrix/client/v3/register", t, body).await;
    assert_eq!(status, StatusCode::OK, "{upgraded}");
    assert_eq!(upgraded["user_id"], guest_id.as_str());
    assert_eq!(upgraded["device_id"], guest["device_id"]);
    server.assert_token_dead(&token).await;
    let full = upgraded["access_token"].as_str().unwrap();
    let (_, whoami) = server
        .get("/_matrix/client/v3/account/whoami", Some(full))
        .await;
    assert_ne!(whoami["is_guest"], true, "{whoami}");
    let (status, created) = server
        .post("/_matrix/client/v3/createRoom", Some(full), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let localpart = guest_id[1..guest_id.find(':').unwrap()].to_owned();
    server.login_ok(&localpart, "guest-now-full-1").await;
}
