//! `/account/password` and `/account/deactivate`, both behind user-interactive auth.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

fn password_auth(user: &str, password: &str, session: &Value) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
        "session": session,
    })
}

#[tokio::test]
async fn change_password_logs_out_other_devices() {
    let server = TestServer::start().await;
    let main: Session = server.register("pat", "old-password").await;
    let other = server.login_ok("pat", "old-password").await;
    let path = "/_matrix/client/v3/account/password";

    let (status, uia) = server
        .post(
            path,
            Some(&main.token),
            json!({ "new_password": "new-password" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(uia["flows"], json!([{ "stages": ["m.login.password"] }]));

    // Wrong current password: still 401, with M_FORBIDDEN.
    let (status, body) = server
        .post(path, Some(&main.token), json!({ "new_password": "new-password", "auth": password_auth("pat", "nope", &uia["session"]) }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Someone else's password does not authorise a change of this account.
    server.register("mallory", "mallory-pw").await;
    let (status, body) = server
        .post(path, Some(&main.token), json!({ "new_password": "new-password", "auth": password_auth("mallory", "mallory-pw", &uia["session"]) }))
        .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::UNAUTHORIZED, json!("M_FORBIDDEN"))
    );

    let (status, body) = server
        .post(path, Some(&main.token), json!({ "new_password": "new-password", "auth": password_auth("pat", "old-password", &uia["session"]) }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert_error(
        &server.login("pat", "old-password").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    server.login_ok("pat", "new-password").await;
    // logout_devices defaults to true: the other device is gone, this one stays.
    server.assert_token_dead(&other.token).await;
    server.assert_token_alive(&main.token).await;

    // Without a token there is no account to change.
    assert_error(
        &server
            .post(path, None, json!({ "new_password": "x" }))
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn change_password_can_keep_devices() {
    let server = TestServer::start().await;
    let main = server.register("keeper", "pw1").await;
    let other = server.login_ok("keeper", "pw1").await;
    let path = "/_matrix/client/v3/account/password";
    let (_, uia) = server
        .post(path, Some(&main.token), json!({ "new_password": "pw2" }))
        .await;
    let (status, _) = server
        .post(path, Some(&main.token), json!({ "new_password": "pw2", "logout_devices": false, "auth": password_auth("keeper", "pw1", &uia["session"]) }))
        .await;
    assert_eq!(status, StatusCode::OK);
    server.assert_token_alive(&other.token).await;
}

#[tokio::test]
async fn deactivation_is_final() {
    let server = TestServer::start().await;
    let session = server.register("gone", "pw").await;
    let other = server.login_ok("gone", "pw").await;
    server
        .put(
            "/_matrix/client/v3/profile/@gone:test.local/displayname",
            Some(&session.token),
            json!({ "displayname": "Soon Gone" }),
        )
        .await;
    let path = "/_matrix/client/v3/account/deactivate";
    let (status, uia) = server.post(path, Some(&session.token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server
        .post(
            path,
            Some(&session.token),
            json!({ "auth": password_auth("gone", "pw", &uia["session"]) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");

    assert_error(
        &server.login("gone", "pw").await,
        StatusCode::FORBIDDEN,
        "M_USER_DEACTIVATED",
    );
    for token in [&session.token, &other.token] {
        server.assert_token_dead(token).await;
    }
    assert_error(
        &server
            .get("/_matrix/client/v3/profile/@gone:test.local", None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // The name is never handed out again.
    assert_error(
        &server
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({ "username": "gone", "password": "x" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
}

/// Third-party identifiers: none are verified here, and every endpoint says so the spec's way
/// (never 404): an empty list, refused verification tokens, nothing to add or remove.
#[tokio::test]
async fn third_party_identifiers_are_answered_as_unsupported() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let alice = server.register("alice", "alice-password-1").await;
    let token = Some(alice.token.as_str());
    let (status, list) = server.get("/_matrix/client/v3/account/3pid", token).await;
    assert_eq!((status, list), (StatusCode::OK, json!({ "threepids": [] })));
    let email = json!({ "client_secret": "secret", "email": "a@example.org", "send_attempt": 1 });
    let phone = json!({ "client_secret": "secret", "country": "GB",
                        "phone_number": "07700900000", "send_attempt": 1 });
    for (path, body, auth, status, errcode) in [
        (
            "register/email/requestToken",
            &email,
            None,
            StatusCode::FORBIDDEN,
            "M_THREEPID_DENIED",
        ),
        (
            "register/msisdn/requestToken",
            &phone,
            None,
            StatusCode::FORBIDDEN,
            "M_THREEPID_DENIED",
        ),
        (
            "account/3pid/email/requestToken",
            &email,
            token,
            StatusCode::FORBIDDEN,
            "M_THREEPID_DENIED",
        ),
        (
            "account/3pid/msisdn/requestToken",
            &phone,
            token,
            StatusCode::FORBIDDEN,
            "M_THREEPID_DENIED",
        ),
        (
            "account/password/email/requestToken",
            &email,
            None,
            StatusCode::BAD_REQUEST,
            "M_THREEPID_NOT_FOUND",
        ),
        (
            "account/password/msisdn/requestToken",
            &phone,
            None,
            StatusCode::BAD_REQUEST,
            "M_THREEPID_NOT_FOUND",
        ),
    ] {
        let result = server
            .post(&format!("/_matrix/client/v3/{path}"), auth, body.clone())
            .await;
        assert_error(&result, status, errcode);
    }
    let add = server
        .post(
            "/_matrix/client/v3/account/3pid/add",
            token,
            json!({ "client_secret": "secret", "sid": "1" }),
        )
        .await;
    assert_error(&add, StatusCode::BAD_REQUEST, "M_THREEPID_AUTH_FAILED");
    let bind = server
        .post(
            "/_matrix/client/v3/account/3pid/bind",
            token,
            json!({ "client_secret": "secret", "sid": "1", "id_server": "id.example.org",
                    "id_access_token": "x" }),
        )
        .await;
    assert_error(&bind, StatusCode::BAD_REQUEST, "M_THREEPID_AUTH_FAILED");
    for path in ["delete", "unbind"] {
        let removed = server
            .post(
                &format!("/_matrix/client/v3/account/3pid/{path}"),
                token,
                json!({ "medium": "email", "address": "a@example.org" }),
            )
            .await;
        assert_eq!(
            removed,
            (
                StatusCode::OK,
                json!({ "id_server_unbind_result": "no-support" })
            )
        );
    }
    // Bad input and no token still get their errors.
    let bad = server
        .post(
            "/_matrix/client/v3/register/email/requestToken",
            None,
            json!({}),
        )
        .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST, "{}", bad.1);
    let anonymous = server.get("/_matrix/client/v3/account/3pid", None).await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
}

/// `GET /admin/whois/{userId}`: a user's devices and where they were last seen, for the user
/// and for admins; 403 for others, 404 for unknown users.
#[tokio::test]
async fn whois_shows_sessions_to_the_user_and_to_admins() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let admin = server.register("admin", "admin-password-1").await;
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let path = |user: &str| format!("/_matrix/client/v3/admin/whois/{user}");
    for asker in [&alice, &admin] {
        let (status, body) = server.get(&path(&alice.user_id), Some(&asker.token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user_id"], alice.user_id);
        let connection = &body["devices"][&alice.device_id]["sessions"][0]["connections"][0];
        assert_eq!(connection["ip"], "127.0.0.1", "{body}");
        assert!(connection["last_seen"].is_u64(), "{body}");
    }
    assert_error(
        &server.get(&path(&alice.user_id), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .get(&path("@nobody:test.local"), Some(&admin.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

/// Admins lock and suspend accounts (spec v1.18): only admins ask or change, about local,
/// active, non-admin accounts; a suspended account reads but may not act in rooms, upload or
/// change its profile; a locked one may only log out; both survive a restart.
#[tokio::test]
async fn admins_lock_and_suspend_accounts() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let admin = server.register("admin", "admin-password-1").await;
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let room = server
        .create_room(&bob, json!({ "preset": "public_chat" }))
        .await;
    server.join(&alice, &room).await;
    let lock = |user: &str| format!("/_matrix/client/v1/admin/lock/{user}");
    let suspend = |user: &str| format!("/_matrix/client/v1/admin/suspend/{user}");

    let caps = |who: &Session| {
        let who = who.token.clone();
        let server = &server;
        async move {
            server
                .get("/_matrix/client/v3/capabilities", Some(&who))
                .await
                .1["capabilities"]["m.account_moderation"]
                .clone()
        }
    };
    assert_eq!(caps(&admin).await, json!({ "lock": true, "suspend": true }));
    assert!(caps(&alice).await.as_object().is_none_or(|c| c.is_empty()));

    // Who may ask, about whom.
    assert_error(
        &server.get(&lock(&alice.user_id), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .get(&lock("@alice:elsewhere.org"), Some(&admin.token))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .get(&suspend("@nobody:test.local"), Some(&admin.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server.get(&lock(&admin.user_id), Some(&admin.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(
        server.get(&lock(&alice.user_id), Some(&admin.token)).await,
        (StatusCode::OK, json!({ "locked": false }))
    );

    // Suspended: reads and leaving work; sending, creating rooms, profile and uploads do not.
    let suspended = server
        .put(
            &suspend(&alice.user_id),
            Some(&admin.token),
            json!({ "suspended": true }),
        )
        .await;
    assert_eq!(suspended, (StatusCode::OK, json!({ "suspended": true })));
    let token = Some(alice.token.as_str());
    assert_eq!(
        server.get("/_matrix/client/v3/sync", token).await.0,
        StatusCode::OK
    );
    for result in [
        server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s1"),
                token,
                json!({ "msgtype": "m.text", "body": "hi" }),
            )
            .await,
        server
            .post("/_matrix/client/v3/createRoom", token, json!({}))
            .await,
        server
            .put(
                &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
                token,
                json!({ "displayname": "A" }),
            )
            .await,
        server
            .post("/_matrix/media/v1/create", token, json!({}))
            .await,
    ] {
        assert_error(&result, StatusCode::FORBIDDEN, "M_USER_SUSPENDED");
    }
    let left = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            token,
            json!({}),
        )
        .await;
    assert_eq!(left.0, StatusCode::OK, "{}", left.1);
    // Encryption keys are not media: their uploads stay allowed.
    let keys = server
        .post("/_matrix/client/v3/keys/upload", token, json!({}))
        .await;
    assert_eq!(keys.0, StatusCode::OK, "{}", keys.1);
    server
        .put(
            &suspend(&alice.user_id),
            Some(&admin.token),
            json!({ "suspended": false }),
        )
        .await;
    server.join(&alice, &room).await;

    // Locked: nothing but logging out, and it holds across a restart.
    let locked = server
        .put(
            &lock(&alice.user_id),
            Some(&admin.token),
            json!({ "locked": true }),
        )
        .await;
    assert_eq!(locked, (StatusCode::OK, json!({ "locked": true })));
    let server = server.restart().await;
    let refused = server.get("/_matrix/client/v3/account/whoami", token).await;
    assert_error(&refused, StatusCode::UNAUTHORIZED, "M_USER_LOCKED");
    assert_eq!(refused.1["soft_logout"], true, "{}", refused.1);
    assert_eq!(
        server
            .get(&lock(&alice.user_id), Some(&admin.token))
            .await
            .1,
        json!({ "locked": true })
    );
    let out = server
        .post("/_matrix/client/v3/logout", token, json!({}))
        .await;
    assert_eq!(out.0, StatusCode::OK, "{}", out.1);
}
