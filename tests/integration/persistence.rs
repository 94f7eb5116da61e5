//! Nothing is lost across a graceful restart, or when the process is killed right after a 200.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{Session, TestServer, next_batch, test_config};

#[tokio::test]
async fn restart_keeps_accounts_devices_and_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let second = server.login_ok("alice", "pw").await;
    let path = "/_matrix/client/v3/user/@alice:test.local/account_data/org.example.kept";
    assert_eq!(
        server
            .put(path, Some(&alice.token), json!({ "kept": true }))
            .await
            .0,
        StatusCode::OK
    );
    server
        .put(
            "/_matrix/client/v3/profile/@alice:test.local/displayname",
            Some(&alice.token),
            json!({ "displayname": "Alice" }),
        )
        .await;
    let key_before = server.services().globals.signing_key().public_key();

    let server = server.restart().await;
    // Tokens issued before the restart still work; devices, profile and account data are there.
    let (status, whoami) = server
        .get("/_matrix/client/v3/account/whoami", Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(whoami["device_id"], alice.device_id);
    let (_, devices) = server
        .get("/_matrix/client/v3/devices", Some(&second.token))
        .await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
    assert_eq!(
        server.get(path, Some(&alice.token)).await.1,
        json!({ "kept": true })
    );
    assert_eq!(
        server
            .get(
                "/_matrix/client/v3/profile/@alice:test.local/displayname",
                None
            )
            .await
            .1["displayname"],
        "Alice"
    );
    server.login_ok("alice", "pw").await;
    // The server keeps its signing key.
    assert_eq!(
        server.services().globals.signing_key().public_key(),
        key_before
    );
}

pub(crate) struct ChildServer {
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl ChildServer {
    /// Registers `name` (password "pw") through the user-interactive dummy stage.
    pub(crate) async fn register(&self, http: &reqwest::Client, name: &str) -> Session {
        let url = format!("{}/_matrix/client/v3/register", self.base);
        let first: serde_json::Value = http
            .post(&url)
            .json(&json!({ "username": name, "password": "pw" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let response = http
            .post(&url)
            .json(&json!({ "username": name, "password": "pw", "auth": { "type": "m.login.dummy", "session": first["session"] } }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Session::from_json(&response.json().await.unwrap())
    }

    /// A new room of `who`'s; its ID.
    pub(crate) async fn create_room(&self, http: &reqwest::Client, who: &Session) -> String {
        let created: serde_json::Value = http
            .post(format!("{}/_matrix/client/v3/createRoom", self.base))
            .bearer_auth(&who.token)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["room_id"].as_str().unwrap().to_owned()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the real `culvert` binary on `dir` and waits until it answers.
async fn spawn_binary(dir: &std::path::Path, port: u16) -> ChildServer {
    spawn_binary_with(dir, port, "rate_limits = { enabled = false }").await
}

/// Like [`spawn_binary`] with other `[global]` config lines.
pub(crate) async fn spawn_binary_with(
    dir: &std::path::Path,
    port: u16,
    extra: &str,
) -> ChildServer {
    let config = test_config(&dir.join("db"), extra).replace("port = 0", &format!("port = {port}"));
    let config_path = dir.join("culvert.toml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_culvert"))
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("culvert binary starts");
    let server = ChildServer {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http
            .get(format!("{}/_matrix/client/versions", server.base))
            .send()
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("culvert did not start listening on port {port}");
}

#[tokio::test]
async fn sigkill_right_after_200_loses_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let mut server = spawn_binary(dir.path(), port).await;
    let http = reqwest::Client::new();

    // Register (UIA dance), then write account data; kill -9 the moment the 200 arrives.
    let url = |path: &str| format!("{}{path}", server.base);
    let session = server.register(&http, "crash").await;
    let response = http
        .put(url(
            "/_matrix/client/v3/user/@crash:test.local/account_data/org.example.crash",
        ))
        .bearer_auth(&session.token)
        .json(&json!({ "survived": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    server.child.wait().unwrap();
    drop(server);

    let server = spawn_binary(dir.path(), port).await;
    let url = |path: &str| format!("{}{path}", server.base);
    let whoami = http
        .get(url("/_matrix/client/v3/account/whoami"))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        whoami.status(),
        StatusCode::OK,
        "the token issued before the crash works"
    );
    let data: serde_json::Value = http
        .get(url(
            "/_matrix/client/v3/user/@crash:test.local/account_data/org.example.crash",
        ))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(data, json!({ "survived": 1 }));
}

/// Run as a systemd `Type=notify` service, culvert says READY=1 once it listens (feeding the
/// watchdog when asked) and STOPPING=1 when told to stop.
#[tokio::test]
async fn systemd_notify_readiness_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;

    let dir = tempfile::TempDir::new().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = free_port();
    let config =
        test_config(&dir.path().join("db"), "").replace("port = 0", &format!("port = {port}"));
    std::fs::write(dir.path().join("culvert.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_culvert"))
        .arg("--config")
        .arg(dir.path().join("culvert.toml"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    let read = |buf: &mut [u8]| -> String {
        let n = socket.recv(buf).expect("a notification from culvert");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    received.push(read(&mut buf));
    assert!(received[0].contains("READY=1"), "{received:?}");
    // By READY=1 the server answers.
    let response = reqwest::get(format!("http://127.0.0.1:{port}/_matrix/client/versions"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The watchdog is fed (every 100 ms here).
    let next = read(&mut buf);
    assert!(next.contains("WATCHDOG=1"), "{next}");

    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut stopping = false;
    for _ in 0..20 {
        if read(&mut buf).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 was announced");
    assert!(child.wait().unwrap().success(), "graceful shutdown exits 0");
}

#[tokio::test]
async fn rooms_and_sync_tokens_survive_a_restart() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "name": "Kept", "invite": ["@bob:test.local"] }),
        )
        .await;
    server.join(&bob, &room).await;
    let hello = server.say(&alice, &room, "before").await;
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{hello}"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = next_batch(&server.get_ok("/_matrix/client/v3/sync", &bob).await);

    let server = server.restart().await;
    server.say(&alice, &room, "after").await;

    // The token from before the restart still works: exactly the new message, nothing twice.
    let next = server
        .get_ok(&format!("/_matrix/client/v3/sync?since={token}"), &bob)
        .await;
    let timeline = &next["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(crate::common::message_bodies(timeline), vec!["after"]);
    assert_eq!(timeline.as_array().unwrap().len(), 1, "{timeline}");
    // History, state and receipts are all there.
    let page = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            &bob,
        )
        .await;
    assert_eq!(
        crate::common::message_bodies(&page["chunk"]),
        vec!["after", "before"]
    );
    let name = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            &bob,
        )
        .await;
    assert_eq!(name["name"], "Kept");
    let first = server.get_ok("/_matrix/client/v3/sync", &bob).await;
    let receipts = &first["rooms"]["join"][&room]["ephemeral"]["events"];
    assert!(
        receipts
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.receipt"
                && e["content"][&hello]["m.read"]["@bob:test.local"].is_object()),
        "{receipts}"
    );
    // And new counts keep rising past the old token.
    assert!(
        first["next_batch"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > token.parse::<u64>().unwrap()
    );
}

#[tokio::test]
async fn sigkill_right_after_a_send_loses_no_event() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let mut server = spawn_binary(dir.path(), port).await;
    let http = reqwest::Client::new();
    let url = |base: &str, path: &str| format!("{base}{path}");
    let session = server.register(&http, "crash").await;
    let room = server.create_room(&http, &session).await;
    let token: serde_json::Value = http
        .get(url(&server.base, "/_matrix/client/v3/sync"))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["next_batch"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    for i in 0..5 {
        let response = http
            .put(url(
                &server.base,
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/k{i}"),
            ))
            .bearer_auth(&session.token)
            .json(&json!({ "msgtype": "m.text", "body": format!("k{i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        sent.push(format!("k{i}"));
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    drop(server);

    let server = spawn_binary(dir.path(), port).await;
    let next: serde_json::Value = http
        .get(url(
            &server.base,
            &format!("/_matrix/client/v3/sync?since={token}"),
        ))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        crate::common::message_bodies(&next["rooms"]["join"][&room]["timeline"]["events"]),
        sent,
        "every acknowledged event, once, through the pre-crash token"
    );
}
