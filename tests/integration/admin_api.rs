//! Synapse's admin API on culvert: `tests/clients/admin_api.py`, a script that does what a web
//! admin UI's API layer does, with Python's `requests` (an HTTP client of its own), against
//! culvert here and against a real Synapse in `synapse.rs` — the same assertions pass on both.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

/// The Python of the real-client tests (`NIO_PYTHON`), when it has `requests`.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("NIO_PYTHON").map(PathBuf::from)?;
    let ok = std::process::Command::new(&candidate)
        .args(["-c", "import requests"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(candidate)
}

/// Runs the admin script against a server; `None` when no Python with `requests` is there
/// (and that is allowed).
pub async fn run_admin_script(base: &str, server_name: &str, admin: &[&str]) -> Option<()> {
    let Some(python) = python() else {
        crate::common::skip(
            Some("REQUIRE_REAL_CLIENTS"),
            "set NIO_PYTHON to a Python with requests installed (see scripts/test)",
        );
        return None;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/admin_api.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([base, server_name])
        .args(admin)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the admin script failed against {base}:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    Some(())
}

#[tokio::test]
async fn an_admin_script_manages_accounts_through_the_synapse_admin_api() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    // The first account is the server's admin.
    let root = server.register("root", "root-password-1").await;
    run_admin_script(
        &server.base,
        &server.server_name(),
        &["--admin-token", &root.token],
    )
    .await;
}

/// What the script cannot see from outside: bad input gets Matrix errors, never a 500, and an
/// admin's changes are in effect at once for the client API.
#[tokio::test]
async fn admin_api_bad_input_and_effects() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let root = server.register("root", "root-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let users = "/_synapse/admin/v2/users";
    for (path, what) in [
        (format!("{users}?limit=-1"), "a negative limit"),
        (format!("{users}?from=x"), "a from that is no number"),
        (format!("{users}?order_by=shoe_size"), "an unknown order"),
        (format!("{users}?dir=sideways"), "an unknown direction"),
        (format!("{users}?admins=maybe"), "a flag that is no boolean"),
        (format!("{users}/not-a-user-id"), "a malformed user ID"),
        (
            "/_synapse/admin/v1/username_available".to_owned(),
            "no user name",
        ),
    ] {
        let (status, body) = server.get(&path, Some(&root.token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(body["errcode"].is_string(), "{what}: {body}");
    }
    // Bodies: not JSON, the wrong shape, unsupported third-party identifiers, a bad avatar.
    let bob_path = format!("{users}/{}", bob.user_id);
    let response = reqwest::Client::new()
        .put(format!("{}{bob_path}", server.base))
        .bearer_auth(&root.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_error(&(status, body), StatusCode::BAD_REQUEST, "M_NOT_JSON");
    for body in [
        json!({ "threepids": [{ "medium": "email", "address": "b@example.org" }] }),
        json!({ "avatar_url": "https://example.org/a.png" }),
        json!({ "user_type": "wizard" }),
        json!({ "locked": "very" }),
    ] {
        let (status, answer) = server.put(&bob_path, Some(&root.token), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    // An admin may not demote themself.
    let (status, body) = server
        .put(
            &format!("/_synapse/admin/v1/users/{}/admin", root.user_id),
            Some(&root.token),
            json!({ "admin": false }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A reactivation needs a password.
    let (status, _) = server
        .post(
            &format!("/_synapse/admin/v1/deactivate/{}", bob.user_id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .put(
            &bob_path,
            Some(&root.token),
            json!({ "deactivated": false }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A user type, set and cleared.
    let (_, body) = server
        .put(
            &bob_path,
            Some(&root.token),
            json!({ "user_type": "bot", "deactivated": false, "password": "bob-password-2" }),
        )
        .await;
    assert_eq!(body["user_type"], "bot", "{body}");
    assert_eq!(body["deactivated"], false, "{body}");
    let (_, body) = server
        .put(&bob_path, Some(&root.token), json!({ "user_type": null }))
        .await;
    assert_eq!(body["user_type"], json!(null), "{body}");
    // The display name an admin sets reaches the rooms the user is in.
    let bob = server.login_ok("bob", "bob-password-2").await;
    let room = server
        .create_room(&root, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let (status, _) = server
        .put(
            &bob_path,
            Some(&root.token),
            json!({ "displayname": "Robert" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, member) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                bob.user_id
            ),
            Some(&root.token),
        )
        .await;
    assert_eq!(member["displayname"], "Robert", "{member}");
    // A deactivated admin is no admin.
    let (status, _) = server
        .put(
            &format!("{users}/@second:{}", server.server_name()),
            Some(&root.token),
            json!({ "password": "second-password-1", "admin": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let second = server.login_ok("second", "second-password-1").await;
    let (status, _) = server.get(users, Some(&second.token)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post(
            &format!("/_synapse/admin/v1/deactivate/{}", second.user_id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.get(users, Some(&second.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "its tokens are gone");
}
