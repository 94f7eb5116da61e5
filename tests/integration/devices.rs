//! Device management.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn list_get_rename() {
    let server = TestServer::start().await;
    let a = server.register("devs", "pw").await;
    let b = server.login_ok("devs", "pw").await;
    let (status, body) = server
        .get("/_matrix/client/v3/devices", Some(&a.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![a.device_id.as_str(), b.device_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(body["devices"][0]["last_seen_ts"].as_u64().unwrap() > 0);

    let path = format!("/_matrix/client/v3/devices/{}", b.device_id);
    let (status, _) = server
        .put(&path, Some(&a.token), json!({ "display_name": "Phone" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get(&path, Some(&a.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["display_name"], "Phone");
    assert_eq!(body["device_id"], b.device_id);

    assert_error(
        &server
            .get("/_matrix/client/v3/devices/NOSUCHDEVICE", Some(&a.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .put(
                "/_matrix/client/v3/devices/NOSUCHDEVICE",
                Some(&a.token),
                json!({ "display_name": "x" }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Another user's device is invisible.
    let other = server.register("other", "pw").await;
    assert_error(
        &server.get(&path, Some(&other.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server.get("/_matrix/client/v3/devices", None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn deleting_devices_needs_the_password_and_kills_tokens() {
    let server = TestServer::start().await;
    let a = server.register("deleter", "pw").await;
    let b = server.login_ok("deleter", "pw").await;
    let c = server.login_ok("deleter", "pw").await;
    let path = format!("/_matrix/client/v3/devices/{}", b.device_id);

    let (status, uia) = server.delete(&path, Some(&a.token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = |password: &str| json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "deleter" }, "password": password, "session": uia["session"] } });
    let (status, body) = server.delete(&path, Some(&a.token), auth("wrong")).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::UNAUTHORIZED, json!("M_FORBIDDEN"))
    );
    server.assert_token_alive(&b.token).await;
    let (status, _) = server.delete(&path, Some(&a.token), auth("pw")).await;
    assert_eq!(status, StatusCode::OK);
    server.assert_token_dead(&b.token).await;
    assert_error(
        &server.delete(&path, Some(&a.token), json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Bulk deletion.
    let path = "/_matrix/client/v3/delete_devices";
    let body = json!({ "devices": [c.device_id] });
    let (status, uia) = server.post(path, Some(&a.token), body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .post(path, Some(&a.token), json!({ "devices": [c.device_id], "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "@deleter:test.local" }, "password": "pw", "session": uia["session"] } }))
        .await;
    assert_eq!(status, StatusCode::OK);
    server.assert_token_dead(&c.token).await;
    let (_, devices) = server
        .get("/_matrix/client/v3/devices", Some(&a.token))
        .await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
}
