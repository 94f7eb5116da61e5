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
