//! Calls: `GET /voip/turnServer` (nothing configured → an empty answer, nheko asks at every
//! start; a shared secret → coturn's time-limited credentials; static credentials as given)
//! and MatrixRTC's transports for Element Call.

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
        answer["password"].as_str().unwrap(),
        python_turn_password("s3cret", username),
        "base64(HMAC-SHA1(secret, username)), the secret file's line end trimmed"
    );
}

/// coturn's formula computed by another implementation than culvert's (ring): Python's `hmac`.
fn python_turn_password(secret: &str, username: &str) -> String {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64, hashlib, hmac, sys; \
             print(base64.b64encode(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), \
             hashlib.sha1).digest()).decode())",
            secret,
            username,
        ])
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
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

/// MatrixRTC's call transports (MSC4143): at the stable path Element X asks first, at the
/// unstable one Synapse serves, and in the client well-known; none configured → an empty list.
#[tokio::test]
async fn rtc_transports_are_served_where_call_clients_look() {
    const STABLE: &str = "/_matrix/client/v1/rtc/transports";
    const UNSTABLE: &str = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports";
    let bare = TestServer::start().await;
    let alice = bare.register("alice", "pw").await;
    for path in [STABLE, UNSTABLE] {
        assert_eq!(
            bare.get_ok(path, &alice).await,
            json!({ "rtc_transports": [] })
        );
        assert_error(
            &bare.get(path, None).await,
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
        );
    }

    let transport = json!({ "type": "livekit", "livekit_service_url": "https://lk.test.local" });
    let server = TestServer::start_with(
        "rate_limits = { enabled = false }\nwell_known = { client = \"https://matrix.test.local\" }\n\
         [global.matrix_rtc]\ntransports = [{ type = \"livekit\", livekit_service_url = \"https://lk.test.local\" }]",
    )
    .await;
    let bob = server.register("bob", "pw").await;
    for path in [STABLE, UNSTABLE] {
        assert_eq!(
            server.get_ok(path, &bob).await,
            json!({ "rtc_transports": [transport.clone()] }),
            "{path}"
        );
    }
    let (status, well_known) = server.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        well_known["m.homeserver"]["base_url"],
        "https://matrix.test.local"
    );
    assert_eq!(
        well_known["org.matrix.msc4143.rtc_foci"],
        json!([transport])
    );
}

/// A TURN secret file that cannot be read stops the server at start-up, with the key named (not
/// a 500 on every `/voip/turnServer` later).
#[test]
fn an_unreadable_turn_secret_file_is_a_start_up_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let missing = dir.path().join("no-such-secret");
    let config = format!(
        "[global]\nserver_name = \"a.b\"\ndatabase_path = \"/x\"\nturn_uris = [\"turn:t.a.b\"]\nturn_secret_file = \"{}\"\n",
        missing.display()
    );
    let error = culvert::config::Config::from_toml_str(&config)
        .unwrap_err()
        .to_string();
    assert!(error.contains("turn_secret_file"), "{error}");
    assert!(error.contains("no-such-secret"), "{error}");
}
