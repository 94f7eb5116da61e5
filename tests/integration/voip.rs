//! `GET /voip/turnServer`: nothing configured → an empty answer (nheko asks at every start);
//! a shared secret → coturn's time-limited credentials; static credentials as given.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

const TURN: &str = "/_matrix/client/v3/voip/turnServer";

#[tokio::test]
async fn without_turn_the_answer_is_empty() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    assert_eq!(server.get_ok(TURN, &alice).await, json!({}));
    assert_error(
        &server.get(TURN, None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn a_shared_secret_gives_coturn_credentials() {
    let dir = tempfile::TempDir::new().unwrap();
    let secret_file = dir.path().join("turn_secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    let server = TestServer::start_with(&format!(
        "rate_limits = {{ enabled = false }}\nturn_uris = [\"turn:turn.test.local:3478?transport=udp\"]\nturn_secret_file = \"{}\"\nturn_ttl = 600",
        secret_file.display()
    ))
    .await;
    let alice = server.register("alice", "pw").await;
    let before = culvert::utils::now_millis() / 1000;
    let answer = server.get_ok(TURN, &alice).await;
    assert_eq!(
        answer["uris"],
        json!(["turn:turn.test.local:3478?transport=udp"])
    );
    assert_eq!(answer["ttl"], 600);
    let username = answer["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice.user_id);
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (before + 600..=before + 602).contains(&expiry),
        "{username}"
    );
    assert_eq!(
        answer["password"],
        culvert::service::voip::turn_password(b"s3cret", username),
        "base64(HMAC-SHA1(secret, username)), the secret file's line end trimmed"
    );
}

#[tokio::test]
async fn static_credentials_are_handed_out_as_configured() {
    let server = TestServer::start_with(
        "rate_limits = { enabled = false }\nturn_uris = [\"turns:turn.test.local:5349\"]\nturn_username = \"calls\"\nturn_password = \"open-sesame\"",
    )
    .await;
    let alice = server.register("alice", "pw").await;
    let answer = server.get_ok(TURN, &alice).await;
    assert_eq!(
        answer,
        json!({
            "username": "calls",
            "password": "open-sesame",
            "uris": ["turns:turn.test.local:5349"],
            "ttl": 86400,
        })
    );
}
