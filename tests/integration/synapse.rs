//! Interop with a real Synapse (from PyPI) federating with culvert over TLS on loopback.
//!
//! The Synapse comes from the Python named by `SYNAPSE_PYTHON` (scripts/test installs
//! matrix-synapse into a cached virtualenv and sets it). Without it the tests are skipped with
//! a message, unless `REQUIRE_SYNAPSE=1`.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::common::{
    Session, TestServer, eventually, follow_sync, message_bodies, timeline_has, urlencode,
};

/// A Synapse process serving client and federation traffic over TLS.
pub struct Synapse {
    pub base: String,
    pub server_name: String,
    pub(crate) http: reqwest::Client,
    child: Option<Child>,
    python: PathBuf,
    pub(crate) dir: TempDir,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.stop();
    }
}

fn synapse_python() -> Option<PathBuf> {
    let python = PathBuf::from(std::env::var_os("SYNAPSE_PYTHON")?);
    let ok = Command::new(&python)
        .args(["-c", "import synapse"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// The Synapse to test against, or `None` (skip) when there is none and none is required.
pub fn available() -> Option<PathBuf> {
    let python = synapse_python();
    if python.is_none() {
        crate::common::skip(
            Some("REQUIRE_SYNAPSE"),
            "no Synapse (set SYNAPSE_PYTHON to a Python with matrix-synapse)",
        );
    }
    python
}

/// Synapse's shared secret for registering accounts through its admin API (an admin, for the
/// admin-API script).
const SHARED_SECRET: &str = "culvert-tests-shared-secret";

/// A Synapse with the user `sam` and a federating culvert with the user `alice`, the set-up
/// of most tests here; `None` (skip) as [`available`] says.
pub(crate) async fn synapse_and_culvert() -> Option<(Synapse, TestServer, Session, Session)> {
    let python = available()?;
    let synapse = Synapse::start(&python).await;
    let culvert = TestServer::start_federating("").await;
    let alice = culvert.register("alice", "alice-password-1").await;
    let sam = synapse.register("sam").await;
    Some((synapse, culvert, alice, sam))
}

impl Synapse {
    pub async fn start(python: &std::path::Path) -> Self {
        Self::start_with(python, None, "").await
    }

    /// A Synapse whose `database:` section is `database` (YAML, indented by two), or SQLite
    /// in its directory (`homeserver.db`) with `None`; `extra` adds top-level config lines.
    pub async fn start_with(python: &std::path::Path, database: Option<&str>, extra: &str) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server_name = format!("localhost:{port}");
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let d = dir.path().display();
        std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
        let unlimited = "{per_second: 10000, burst_count: 10000}";
        let database = database.map_or_else(
            || format!("  name: sqlite3\n  args:\n    database: {d}/homeserver.db"),
            str::to_owned,
        );
        let config = format!(
            r#"server_name: "{server_name}"
pid_file: {d}/homeserver.pid
listeners:
  - port: {port}
    type: http
    tls: true
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [client, federation]
        compress: false
tls_certificate_path: {d}/tls.crt
tls_private_key_path: {d}/tls.key
federation_verify_certificates: false
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
trusted_key_servers: []
suppress_key_server_warning: true
database:
{database}
log_config: {d}/log.yaml
media_store_path: {d}/media
signing_key_path: {d}/signing.key
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "{SHARED_SECRET}"
report_stats: false
bcrypt_rounds: 4
presence:
  enabled: true
# Repeated identical syncs (the tests poll) must not be answered from a cache.
caches:
  sync_response_cache_duration: 0
rc_message: {unlimited}
rc_registration: {unlimited}
rc_login:
  address: {unlimited}
  account: {unlimited}
  failed_attempts: {unlimited}
rc_joins:
  local: {unlimited}
  remote: {unlimited}
rc_joins_per_room: {unlimited}
rc_invites:
  per_room: {unlimited}
  per_user: {unlimited}
  per_issuer: {unlimited}
rc_federation:
  window_size: 1000
  sleep_limit: 1000
  sleep_delay: 1
  reject_limit: 1000
  concurrent: 100
federation_rr_transactions_per_room_per_second: 1000
# Anyone may publish rooms to the directory (Synapse's default lets nobody).
room_list_publication_rules:
  - action: allow
{extra}
"#
        );
        std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
        std::fs::write(
            dir.path().join("log.yaml"),
            format!(
                "version: 1\nformatters:\n  precise:\n    format: '%(asctime)s - %(name)s - %(levelname)s - %(message)s'\nhandlers:\n  file:\n    class: logging.FileHandler\n    formatter: precise\n    filename: {d}/homeserver.log\nroot:\n  level: INFO\n  handlers: [file]\ndisable_existing_loggers: false\n"
            ),
        )
        .unwrap();
        let config_path = dir.path().join("homeserver.yaml");
        let status = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(&config_path)
            .arg("--generate-keys")
            .stdout(Stdio::null())
            .status()
            .expect("synapse runs");
        assert!(status.success(), "synapse --generate-keys failed");
        let mut synapse = Synapse {
            base: format!("https://127.0.0.1:{port}"),
            server_name,
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
            child: None,
            python: python.to_owned(),
            dir,
        };
        synapse.run().await;
        synapse
    }

    /// Starts the Synapse process (again) on its configuration and database.
    pub async fn run(&mut self) {
        let config_path = self.dir.path().join("homeserver.yaml");
        let stdout = std::fs::File::create(self.dir.path().join("stdout")).unwrap();
        self.child = Some(
            Command::new(&self.python)
                .args(["-m", "synapse.app.homeserver", "--config-path"])
                .arg(&config_path)
                .stdout(stdout.try_clone().unwrap())
                .stderr(stdout)
                .spawn()
                .expect("synapse starts"),
        );
        for _ in 0..300 {
            if let Ok(r) = self
                .http
                .get(format!("{}/_matrix/client/versions", self.base))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Synapse did not start: {}", self.log_tail());
    }

    /// Stops the Synapse process (SIGKILL: nothing is flushed politely).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the Synapse process politely (SIGTERM) and waits for it to end, as an operator
    /// stops it before moving its data.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..300 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The directory holding its config (`homeserver.yaml`), database, media and keys.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The port it listens on (its server name is `localhost:<port>`).
    pub fn port(&self) -> u16 {
        self.server_name
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the server name")
    }

    /// The end of Synapse's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("homeserver.log"))
            .or_else(|_| std::fs::read_to_string(self.dir.path().join("stdout")))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request to Synapse");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn register(&self, name: &str) -> Session {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(json!({ "username": name, "password": "synapse-password-1",
                             "auth": { "type": "m.login.dummy" } })),
            )
            .await;
        if status == StatusCode::UNAUTHORIZED {
            // First round of user-interactive auth: answer with its session.
            let session = body["session"].as_str().unwrap_or_default().to_owned();
            let (status, body) = self
                .request(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/register",
                    None,
                    Some(json!({ "username": name, "password": "synapse-password-1",
                                 "auth": { "type": "m.login.dummy", "session": session } })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "Synapse registration: {body}");
            return Session::from_json(&body);
        }
        assert_eq!(status, StatusCode::OK, "Synapse registration: {body}");
        Session::from_json(&body)
    }

    pub async fn post(&self, path: &str, who: &Session, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, Some(&who.token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, who: &Session, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::PUT, path, Some(&who.token), Some(body))
            .await
    }

    pub async fn get(&self, path: &str, who: &Session) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, Some(&who.token), None)
            .await
    }

    pub async fn say(&self, who: &Session, room: &str, text: &str) -> String {
        let txn = format!("t{}", rand_suffix());
        let (status, body) = self
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
                who,
                json!({ "msgtype": "m.text", "body": text }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "Synapse send: {body}");
        body["event_id"].as_str().unwrap().to_owned()
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Polls `check` on a Synapse user's sync until it holds (federation is asynchronous).
pub(crate) async fn synapse_sees(
    synapse: &Synapse,
    who: &Session,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    let sync = |path: String| async move {
        let (status, body) = synapse.get(&path, who).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    };
    if follow_sync(sync, check).await.is_none() {
        panic!("Synapse never saw {what}\n{}", synapse.log_tail());
    }
}

/// The admin-API script (`tests/clients/admin_api.py`) culvert passes (`admin_api.rs`) passes
/// against Synapse too: what it asserts is Synapse's behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_script_passes_against_synapse() {
    let Some(python) = available() else {
        return;
    };
    let synapse = Synapse::start(&python).await;
    crate::admin_api::run_admin_script(
        &synapse.base,
        &synapse.server_name,
        &["--shared-secret", SHARED_SECRET],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_joins_a_culvert_room_and_they_talk() {
    let Some((synapse, culvert, alice, sam)) = synapse_and_culvert().await else {
        return;
    };
    let room = culvert
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "meet", "name": "Meeting" }),
        )
        .await;
    culvert.say(&alice, &room, "before sam").await;

    // Sam joins through culvert, by alias.
    let alias = format!("#meet:{}", culvert.server_name());
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/join/{}", urlencode(&alias)),
            &sam,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    assert_eq!(body["room_id"], room);

    // Both ways.
    culvert.say(&alice, &room, "hello synapse").await;
    synapse_sees(&synapse, &sam, "alice's message", |b| {
        timeline_has(b, &room, "hello synapse")
    })
    .await;
    synapse.say(&sam, &room, "hello culvert").await;
    culvert
        .sync_until(&alice, "sam's message", |b| {
            timeline_has(b, &room, "hello culvert")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_culvert_user_joins_synapse_rooms_by_alias_and_by_id() {
    let Some((synapse, culvert, alice, sam)) = synapse_and_culvert().await else {
        return;
    };
    for (version, alias_name) in [("12", "v12room"), ("11", "v11room")] {
        let (status, body) = synapse
            .post(
                "/_matrix/client/v3/createRoom",
                &sam,
                json!({ "preset": "public_chat", "room_version": version,
                        "room_alias_name": alias_name, "name": format!("Synapse v{version}") }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let room = body["room_id"].as_str().unwrap().to_owned();
        synapse.say(&sam, &room, "history before alice").await;

        let target = if version == "12" {
            urlencode(&format!("#{alias_name}:{}", synapse.server_name))
        } else {
            format!("{room}?via={}", urlencode(&synapse.server_name))
        };
        let (status, body) = culvert
            .post(
                &format!("/_matrix/client/v3/join/{target}"),
                Some(&alice.token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
        assert_eq!(body["room_id"], room);

        let name = culvert
            .get_ok(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
                &alice,
            )
            .await;
        assert_eq!(name["name"], format!("Synapse v{version}"));

        // History from before the join: fetched from Synapse when Alice pages back.
        let (status, page) = culvert
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let history = message_bodies(&page["chunk"]);
        assert!(
            history.iter().any(|b| b == "history before alice"),
            "no backfilled history: {history:?}"
        );
        assert!(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.room.create"),
            "the history goes back to the room's creation: {page}"
        );

        synapse
            .say(&sam, &room, &format!("hi alice in v{version}"))
            .await;
        culvert
            .sync_until(&alice, "sam's message", |b| {
                timeline_has(b, &room, &format!("hi alice in v{version}"))
            })
            .await;
        culvert
            .say(&alice, &room, &format!("hi sam in v{version}"))
            .await;
        synapse_sees(&synapse, &sam, "alice's message", |b| {
            timeline_has(b, &room, &format!("hi sam in v{version}"))
        })
        .await;
    }
}

/// The content of a state event as a user of Synapse reads it, once it got there.
pub(crate) async fn synapse_state(
    synapse: &Synapse,
    who: &Session,
    room: &str,
    kind: &str,
    key: &str,
) -> Value {
    let (status, body) = synapse
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/{kind}/{}",
                urlencode(key)
            ),
            who,
        )
        .await;
    if status == StatusCode::OK {
        body
    } else {
        Value::Null
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_state_redactions_kicks_and_bans_cross_both_ways() {
    let Some((synapse, culvert, alice, sam)) = synapse_and_culvert().await else {
        return;
    };

    // Alice invites Sam to a private room; Sam sees the invite and joins.
    let room = culvert
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Private" }),
        )
        .await;
    let (status, body) = culvert
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({ "user_id": sam.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    synapse_sees(&synapse, &sam, "the invite", |b| {
        b["rooms"]["invite"][&room]["invite_state"]["events"].is_array()
    })
    .await;
    let (status, body) = synapse
        .post(&format!("/_matrix/client/v3/join/{room}"), &sam, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    eventually("culvert sees Sam joined", || async {
        let members = culvert
            .get_ok(
                &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
                &alice,
            )
            .await;
        members["joined"][&sam.user_id].is_object()
    })
    .await;

    // State changes from culvert reach Synapse: name, topic, power levels.
    for (kind, content) in [
        ("m.room.name", json!({ "name": "Renamed on culvert" })),
        ("m.room.topic", json!({ "topic": "topic from culvert" })),
    ] {
        let (status, body) = culvert
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/{kind}/"),
                Some(&alice.token),
                content.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        eventually(&format!("{kind} reaches Synapse"), || async {
            synapse_state(&synapse, &sam, &room, kind, "").await == content
        })
        .await;
    }
    let mut levels = culvert
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
            &alice,
        )
        .await;
    levels["users"][&sam.user_id] = json!(50);
    let (status, body) = culvert
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"),
            Some(&alice.token),
            levels,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("power levels reach Synapse", || async {
        synapse_state(&synapse, &sam, &room, "m.room.power_levels", "").await["users"][&sam.user_id]
            == 50
    })
    .await;
    // With power 50 Sam may set the topic now; the change reaches culvert.
    eventually("Sam may set the topic", || async {
        let (status, _) = synapse
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
                &sam,
                json!({ "topic": "topic from synapse" }),
            )
            .await;
        status == StatusCode::OK
    })
    .await;
    eventually("Synapse's topic reaches culvert", || async {
        let (status, topic) = culvert
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
                Some(&alice.token),
            )
            .await;
        status == StatusCode::OK && topic["topic"] == "topic from synapse"
    })
    .await;

    // Redactions both ways.
    let sams = synapse.say(&sam, &room, "redact me, alice").await;
    culvert
        .sync_until(&alice, "sam's message", |b| {
            timeline_has(b, &room, "redact me, alice")
        })
        .await;
    let (status, body) = culvert
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{sams}/r1"),
            Some(&alice.token),
            json!({ "reason": "test" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Synapse applies culvert's redaction", || async {
        let (status, event) = synapse
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{sams}"),
                &sam,
            )
            .await;
        status == StatusCode::OK && event["content"] == json!({})
    })
    .await;
    let alices = culvert.say(&alice, &room, "redact me, sam").await;
    eventually("Synapse has alice's message", || async {
        synapse
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{alices}"),
                &sam,
            )
            .await
            .0
            == StatusCode::OK
    })
    .await;
    let (status, body) = synapse
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{alices}/r2"),
            &sam,
            json!({}),
        )
        .await;
    // Sam has power 50, the default redact level: allowed.
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("culvert applies Synapse's redaction", || async {
        let (status, event) = culvert
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{alices}"),
                Some(&alice.token),
            )
            .await;
        status == StatusCode::OK && event["content"] == json!({})
    })
    .await;

    // Sam invites Alice to a room on Synapse; she sees it and joins through the invite.
    let (status, body) = synapse
        .post(
            "/_matrix/client/v3/createRoom",
            &sam,
            json!({ "preset": "private_chat", "name": "Sam's", "invite": [alice.user_id] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    let sams_room = body["room_id"].as_str().unwrap().to_owned();
    culvert
        .sync_until(&alice, "Sam's invite", |b| {
            b["rooms"]["invite"][&sams_room]["invite_state"]["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["content"]["name"] == "Sam's"))
        })
        .await;
    let (status, body) = culvert
        .post(
            &format!("/_matrix/client/v3/rooms/{sams_room}/join"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log_tail());
    synapse.say(&sam, &sams_room, "welcome alice").await;
    culvert
        .sync_until(&alice, "the welcome", |b| {
            timeline_has(b, &sams_room, "welcome alice")
        })
        .await;

    // Sam kicks Alice: culvert sees her leave.
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{sams_room}/kick"),
            &sam,
            json!({ "user_id": alice.user_id, "reason": "bye" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("culvert sees the kick", || async {
        !culvert.joined_rooms(&alice).await.contains(&sams_room)
    })
    .await;

    // Invited again, Alice rejoins; then Sam bans her: culvert knows her membership is "ban".
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{sams_room}/invite"),
            &sam,
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Alice can rejoin Sam's room", || async {
        culvert
            .post(
                &format!("/_matrix/client/v3/rooms/{sams_room}/join"),
                Some(&alice.token),
                json!({}),
            )
            .await
            .0
            == StatusCode::OK
    })
    .await;
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{sams_room}/ban"),
            &sam,
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("culvert sees the ban", || async {
        culvert
            .services()
            .members
            .member_state(
                &ruma::RoomId::parse(&sams_room).unwrap(),
                &ruma::UserId::parse(&alice.user_id).unwrap(),
            )
            .unwrap()
            == Some(ruma::events::room::member::MembershipState::Ban)
    })
    .await;

    // Alice kicks Sam from her room: Synapse sees him leave; invited again, he comes back.
    let (status, body) = culvert
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            Some(&alice.token),
            json!({ "user_id": sam.user_id, "reason": "out" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Synapse sees the kick", || async {
        let (_, rooms) = synapse.get("/_matrix/client/v3/joined_rooms", &sam).await;
        !rooms["joined_rooms"]
            .as_array()
            .is_some_and(|r| r.iter().any(|id| id == &json!(room)))
    })
    .await;
    let (status, body) = culvert
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({ "user_id": sam.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Sam can rejoin", || async {
        synapse
            .post(&format!("/_matrix/client/v3/join/{room}"), &sam, json!({}))
            .await
            .0
            == StatusCode::OK
    })
    .await;

    // Alice bans Sam from her room: Synapse sees the ban.
    let (status, body) = culvert
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&alice.token),
            json!({ "user_id": sam.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Synapse sees the ban", || async {
        // A banned user's room is in the archive, with the ban as its last state.
        let filter = urlencode(r#"{"room":{"include_leave":true}}"#);
        let (_, body) = synapse
            .get(
                &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
                &sam,
            )
            .await;
        body["rooms"]["leave"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == sam.user_id
                        && e["content"]["membership"] == "ban"
                })
            })
    })
    .await;
}

/// matrix-js-sdk with its Rust crypto: a culvert user and a Synapse user in an encrypted room
/// decrypt each other's messages (keys queried and claimed, room keys sent to-device, all over
/// federation); the culvert user's room is on culvert, so Synapse joins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_encryption_across_culvert_and_synapse_with_matrix_js_sdk() {
    let Some(python) = available() else { return };
    let Some(dir) = crate::clients::js_clients_dir() else {
        crate::common::skip(
            Some("REQUIRE_REAL_CLIENTS"),
            "no matrix-js-sdk (npm ci --prefix tests/clients/js)",
        );
        return;
    };
    let synapse = Synapse::start(&python).await;
    let culvert = TestServer::start_federating("").await;
    let output = tokio::process::Command::new("node")
        .current_dir(&dir)
        .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
        .args([
            "e2ee_federated.mjs",
            "--homeserver-a",
            &culvert.base,
            "--homeserver-b",
            &synapse.base,
        ])
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("js federated e2ee: ok"),
        "federated e2ee failed:\n{stdout}\n{stderr}\n{}",
        synapse.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_presence_and_profiles_cross_both_ways() {
    let Some((synapse, culvert, alice, sam)) = synapse_and_culvert().await else {
        return;
    };
    let room = culvert
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "chat" }),
        )
        .await;
    let (status, body) = synapse
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                urlencode(&format!("#chat:{}", culvert.server_name()))
            ),
            &sam,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alices = culvert.say(&alice, &room, "read me").await;
    let sams = synapse.say(&sam, &room, "read me too").await;
    culvert
        .sync_until(&alice, "sam's message", |b| {
            timeline_has(b, &room, "read me too")
        })
        .await;

    let typing_of = |b: &Value, user: &str| {
        b["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.typing"
                        && e["content"]["user_ids"]
                            .as_array()
                            .is_some_and(|ids| ids.iter().any(|id| id == user))
                })
            })
    };
    let receipt_of = |b: &Value, event: &str, user: &str| {
        b["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.receipt" && e["content"][event]["m.read"][user].is_object()
                })
            })
    };

    // Typing, both ways.
    let (status, _) = culvert
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
            Some(&alice.token),
            json!({ "typing": true, "timeout": 20000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    synapse_sees(&synapse, &sam, "alice typing", |b| {
        typing_of(b, &alice.user_id)
    })
    .await;
    let (status, _) = synapse
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", sam.user_id),
            &sam,
            json!({ "typing": true, "timeout": 20000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    culvert
        .sync_until(&alice, "sam typing", |b| typing_of(b, &sam.user_id))
        .await;

    // Read receipts, both ways.
    let (status, _) = culvert
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{sams}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    synapse_sees(&synapse, &sam, "alice's receipt", |b| {
        receipt_of(b, &sams, &alice.user_id)
    })
    .await;
    let (status, _) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{alices}"),
            &sam,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    culvert
        .sync_until(&alice, "sam's receipt", |b| {
            receipt_of(b, &alices, &sam.user_id)
        })
        .await;

    // Presence, both ways.
    let (status, _) = culvert
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", alice.user_id),
            Some(&alice.token),
            json!({ "presence": "online", "status_msg": "on culvert" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("Synapse knows alice's presence", || async {
        let (status, body) = synapse
            .get(
                &format!("/_matrix/client/v3/presence/{}/status", alice.user_id),
                &sam,
            )
            .await;
        status == StatusCode::OK && body["status_msg"] == "on culvert"
    })
    .await;
    let (status, _) = synapse
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", sam.user_id),
            &sam,
            json!({ "presence": "online", "status_msg": "on synapse" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("culvert knows sam's presence", || async {
        let (status, body) = culvert
            .get(
                &format!("/_matrix/client/v3/presence/{}/status", sam.user_id),
                Some(&alice.token),
            )
            .await;
        status == StatusCode::OK && body["status_msg"] == "on synapse"
    })
    .await;

    // Profile changes (member events in the shared room), both ways, and profile lookups.
    let (status, _) = culvert
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({ "displayname": "Alice of culvert" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("Synapse sees alice's new name in the room", || async {
        synapse_state(&synapse, &sam, &room, "m.room.member", &alice.user_id).await["displayname"]
            == "Alice of culvert"
    })
    .await;
    let (status, _) = synapse
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", sam.user_id),
            &sam,
            json!({ "displayname": "Sam of synapse" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("culvert sees sam's new name in the room", || async {
        let (status, member) = culvert
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                    sam.user_id
                ),
                Some(&alice.token),
            )
            .await;
        status == StatusCode::OK && member["displayname"] == "Sam of synapse"
    })
    .await;
    let (status, profile) = synapse
        .get(
            &format!("/_matrix/client/v3/profile/{}", alice.user_id),
            &sam,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile["displayname"], "Alice of culvert");
    let (status, profile) = culvert
        .get(
            &format!("/_matrix/client/v3/profile/{}", sam.user_id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile["displayname"], "Sam of synapse");
}
