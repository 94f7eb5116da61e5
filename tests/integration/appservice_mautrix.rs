//! Application services with a real bridge framework: mautrix-python's AppService runs an echo
//! bridge against culvert, talking both ways and across a restart.

use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::common::{Session, TestServer, urlencode};

/// The Python with mautrix installed: `NIO_PYTHON` (the test virtualenv of `scripts/test`,
/// which installs tests/clients/requirements.txt).
fn mautrix_python() -> Option<std::path::PathBuf> {
    let candidate = std::env::var_os("NIO_PYTHON").map(std::path::PathBuf::from)?;
    let ok = std::process::Command::new(&candidate)
        .args(["-c", "import mautrix.appservice"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(candidate)
}

/// The bridge process and its stdout lines.
struct Bridge {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    log: std::path::PathBuf,
}

impl Bridge {
    /// Waits (30 s at most) for a stdout line starting with `prefix`.
    async fn expect(&mut self, prefix: &str) -> String {
        let wait = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                if line.starts_with(prefix) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match wait {
            Ok(Some(line)) => line,
            _ => panic!(
                "the bridge never said {prefix:?}; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }
}

/// Waits (30 s at most) until `who`'s `/sync` shows a message with `body` from `sender` in
/// `room`; returns that event.
async fn sync_until_message(
    server: &TestServer,
    who: &Session,
    room: &str,
    sender: &str,
    body: &str,
) -> Value {
    let mut since: Option<String> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=2000&since={s}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let response = server.get_ok(&path, who).await;
        if let Some(events) = response["rooms"]["join"][room]["timeline"]["events"].as_array()
            && let Some(event) = events
                .iter()
                .find(|e| e["sender"] == sender && e["content"]["body"] == body)
        {
            return event.clone();
        }
        since = response["next_batch"].as_str().map(str::to_owned);
    }
    panic!(
        "{body:?} from {sender} never reached {}'s sync",
        who.user_id
    );
}

/// The acceptance scenario with a framework written elsewhere: mautrix-python's AppService runs
/// an echo bridge (tests/clients/mautrix_bridge.py). It registers its bot and ghost, the ghost
/// joins when a Matrix user invites it, the user's messages reach the bridge in transactions and
/// the ghost's answers (masqueraded, timestamp-massaged) reach the user's `/sync`; after culvert
/// restarts, the conversation goes on.
#[tokio::test]
async fn a_mautrix_bridge_talks_both_ways_and_survives_a_restart() {
    let Some(python) = mautrix_python() else {
        crate::common::skip(
            Some("REQUIRE_REAL_CLIENTS"),
            "set NIO_PYTHON to a Python with mautrix installed (see scripts/test)",
        );
        return;
    };
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = TempDir::new().unwrap();
    let registration_path = dir.path().join("echo.yaml");
    std::fs::write(
        &registration_path,
        format!(
            r#"id: echo
url: http://127.0.0.1:{port}
as_token: echo-as-token-0123
hs_token: echo-hs-token-4567
sender_localpart: echobot
namespaces:
  users:
    - exclusive: true
      regex: '@echo_.*:test\.local'
  aliases: []
  rooms: []
rate_limited: false
de.sorunome.msc2409.push_ephemeral: true
receive_ephemeral: true
"#
        ),
    )
    .unwrap();
    let server = TestServer::start_with(&format!(
        "rate_limits = {{ enabled = false }}\napp_service_config_files = [{:?}]",
        registration_path.display().to_string()
    ))
    .await;

    let log = dir.path().join("bridge.log");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/mautrix_bridge.py"
    );
    let mut child = tokio::process::Command::new(python)
        .current_dir(dir.path())
        .arg(script)
        .args(["--homeserver", &server.base, "--domain", "test.local"])
        .args(["--port", &port.to_string()])
        .args([
            "--as-token",
            "echo-as-token-0123",
            "--hs-token",
            "echo-hs-token-4567",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let stdout = child.stdout.take().unwrap();
    let mut bridge = Bridge {
        child,
        lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        log,
    };
    bridge.expect("bridge: ready").await;
    // The bridge registered its ghost with m.login.application_service.
    let ghost = "@echo_ghost:test.local";
    let profile = server
        .get(
            &format!("/_matrix/client/v3/profile/{}", urlencode(ghost)),
            None,
        )
        .await;
    assert_eq!(profile.1["displayname"], "Echo Ghost", "{}", profile.1);

    // A Matrix user invites the ghost; the bridge sees the invite and the ghost joins.
    let alice = server.register("alice", "pw-alice-1").await;
    let room = server
        .create_room(&alice, json!({ "invite": [ghost], "is_direct": true }))
        .await;
    bridge.expect(&format!("bridge: joined {room}")).await;

    // Both ways: the user's message reaches the bridge, the ghost's answer reaches the user.
    server.say(&alice, &room, "hello bridge").await;
    bridge.expect("bridge: got hello bridge").await;
    let echo = sync_until_message(&server, &alice, &room, ghost, "echo: hello bridge").await;
    let ts = echo["origin_server_ts"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        ts < now - 500,
        "the bridge's massaged timestamp was kept: {echo}"
    );

    // culvert restarts (same address); the bridge keeps going.
    let server = server.restart_same_port().await;
    server.say(&alice, &room, "after restart").await;
    bridge.expect("bridge: got after restart").await;
    sync_until_message(&server, &alice, &room, ghost, "echo: after restart").await;

    // Closing stdin ends the bridge.
    drop(bridge.child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(15), bridge.child.wait())
        .await
        .expect("the bridge exits")
        .unwrap();
    assert!(status.success(), "bridge exit: {status}");
}
