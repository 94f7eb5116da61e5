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

/// Registration tokens made through the admin API open a closed server to their holders, each
/// for as many registrations as it allows, counted when the account is made.
#[tokio::test]
async fn admin_registration_tokens_let_people_register_on_a_closed_server() {
    let server = TestServer::start_with("allow_registration = false").await;
    let services = server.services();
    let owner = ruma::UserId::parse("@owner:test.local").unwrap();
    let hash = culvert::service::users::hash_password("owner-password-1").unwrap();
    services
        .users
        .create(&owner, Some(hash), true, false, |_| {})
        .await
        .unwrap();
    let owner = server.login_ok("owner", "owner-password-1").await;
    const REGISTER: &str = "/_matrix/client/v3/register";
    let closed = server
        .post(
            REGISTER,
            None,
            json!({ "username": "early", "password": "early-password-1" }),
        )
        .await;
    assert_error(&closed, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    let (status, made) = server
        .post(
            "/_synapse/admin/v1/registration_tokens/new",
            Some(&owner.token),
            json!({ "token": "family", "uses_allowed": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let register = |name: &'static str| {
        let server = &server;
        async move {
            let body = json!({ "username": name, "password": "their-password-1" });
            let (status, uia) = server.post(REGISTER, None, body.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
            assert_eq!(
                uia["flows"],
                json!([{ "stages": ["m.login.registration_token", "m.login.dummy"] }])
            );
            let mut with_token = body.clone();
            with_token["auth"] = json!({
                "type": "m.login.registration_token", "token": "family", "session": uia["session"],
            });
            let (status, answer) = server.post(REGISTER, None, with_token).await;
            if answer["completed"] != json!(["m.login.registration_token"]) {
                return (status, answer);
            }
            let mut dummy = body;
            dummy["auth"] = json!({ "type": "m.login.dummy", "session": uia["session"] });
            server.post(REGISTER, None, dummy).await
        }
    };
    let (status, body) = register("dora").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, token) = server
        .get(
            "/_synapse/admin/v1/registration_tokens/family",
            Some(&owner.token),
        )
        .await;
    assert_eq!(token["completed"], 1, "{token}");
    // Used up: registration is closed again.
    let (status, body) = server
        .post(
            REGISTER,
            None,
            json!({ "username": "eve", "password": "their-password-1" }),
        )
        .await;
    assert_error(&(status, body), StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // More uses: open again, and a wrong token is refused at its stage.
    let (status, _) = server
        .put(
            "/_synapse/admin/v1/registration_tokens/family",
            Some(&owner.token),
            json!({ "uses_allowed": 2 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, uia) = server
        .post(
            REGISTER,
            None,
            json!({ "username": "mallory", "password": "their-password-1",
                    "auth": { "type": "m.login.registration_token", "token": "guess" } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
    assert_eq!(uia["errcode"], "M_FORBIDDEN", "{uia}");
    let (status, body) = register("frank").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, token) = server
        .get(
            "/_synapse/admin/v1/registration_tokens/family",
            Some(&owner.token),
        )
        .await;
    assert_eq!(token["completed"], 2, "{token}");
    assert!(
        server
            .services()
            .users
            .exists(&ruma::UserId::parse("@frank:test.local").unwrap())
            .unwrap()
    );
}
