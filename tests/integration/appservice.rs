//! Application services: registration files, namespaces and exclusivity, `as_token`
//! masquerading, transactions pushed in order and retried (also across restarts), ephemeral
//! events and keys for encrypted bridges. The appservice is a small axum server inside the test
//! (also used by `appservice_queries.rs`).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode as AxStatus},
    routing::{get, post, put},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::common::{Session, TestServer, assert_error, message_bodies, urlencode};

pub(crate) const AS_TOKEN: &str = "fake-as-token";
const HS_TOKEN: &str = "fake-hs-token";

/// One `PUT /transactions/{txnId}` the fake appservice received.
#[derive(Clone, Debug)]
struct Attempt {
    txn_id: String,
    body: Value,
    authorization: Option<String>,
    accepted: bool,
}

#[derive(Default)]
pub(crate) struct Fake {
    attempts: Mutex<Vec<Attempt>>,
    /// Transactions still to refuse with a 500.
    fail_next: AtomicUsize,
    /// Refuse every transaction (the appservice is "down").
    down: AtomicBool,
    /// culvert's base URL, for the query handlers that register users and create rooms.
    culvert: Mutex<String>,
    pub(crate) user_queries: Mutex<Vec<String>>,
    pub(crate) pings: Mutex<Vec<Value>>,
}

impl Fake {
    fn accepted(&self) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.accepted)
            .cloned()
            .collect()
    }
    /// Message bodies of every accepted transaction, in the order received.
    fn accepted_messages(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .flat_map(|a| message_bodies(&a.body["events"]))
            .collect()
    }
}

async fn transaction(
    State(fake): State<Arc<Fake>>,
    Path(txn_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (AxStatus, Json<Value>) {
    let fail = fake.down.load(Ordering::SeqCst)
        || fake
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    fake.attempts.lock().unwrap().push(Attempt {
        txn_id,
        body,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        accepted: !fail,
    });
    if fail {
        (AxStatus::INTERNAL_SERVER_ERROR, Json(json!({})))
    } else {
        (AxStatus::OK, Json(json!({})))
    }
}

/// A user query: the bridge creates `@irc_new…` users on demand, as bridges do for ghosts.
async fn query_user(
    State(fake): State<Arc<Fake>>,
    Path(user_id): Path<String>,
) -> (AxStatus, Json<Value>) {
    fake.user_queries.lock().unwrap().push(user_id.clone());
    if !user_id.starts_with("@irc_new") {
        return (AxStatus::NOT_FOUND, Json(json!({})));
    }
    let localpart = user_id[1..].split(':').next().unwrap().to_owned();
    let base = fake.culvert.lock().unwrap().clone();
    let response = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/register"))
        .bearer_auth(AS_TOKEN)
        .json(&json!({ "type": "m.login.application_service", "username": localpart }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    (AxStatus::OK, Json(json!({})))
}

/// An alias query: the bridge creates the room with that alias.
async fn query_alias(
    State(fake): State<Arc<Fake>>,
    Path(alias): Path<String>,
) -> (AxStatus, Json<Value>) {
    let name = alias[1..].split(':').next().unwrap().to_owned();
    let base = fake.culvert.lock().unwrap().clone();
    let response = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/createRoom"))
        .bearer_auth(AS_TOKEN)
        .json(&json!({ "room_alias_name": name, "preset": "public_chat" }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    (AxStatus::OK, Json(json!({})))
}

async fn ping(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Json<Value> {
    fake.pings.lock().unwrap().push(body);
    Json(json!({}))
}

async fn protocol() -> Json<Value> {
    Json(json!({
        "user_fields": ["network", "nickname"],
        "location_fields": ["network", "channel"],
        "icon": "mxc://example.org/irc",
        "field_types": {
            "network": { "regexp": "[a-z.]+", "placeholder": "irc.example.org" },
            "nickname": { "regexp": "[^\\s]+", "placeholder": "nick" },
            "channel": { "regexp": "#[^\\s]+", "placeholder": "#channel" }
        },
        "instances": [{ "network_id": "libera", "desc": "Libera", "fields": { "network": "libera.chat" } }]
    }))
}

async fn thirdparty_user() -> Json<Value> {
    Json(json!([{
        "userid": "@irc_alice:test.local",
        "protocol": "irc",
        "fields": { "network": "libera.chat", "nickname": "alice" }
    }]))
}

/// Starts the fake appservice; returns its state and base URL.
async fn start_fake() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
        .route("/_matrix/app/v1/users/{user}", get(query_user))
        .route("/_matrix/app/v1/rooms/{alias}", get(query_alias))
        .route("/_matrix/app/v1/ping", post(ping))
        .route("/_matrix/app/v1/thirdparty/protocol/irc", get(protocol))
        .route("/_matrix/app/v1/thirdparty/user/irc", get(thirdparty_user))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, format!("http://{addr}"))
}

pub(crate) fn registration(
    id: &str,
    url: &str,
    as_token: &str,
    hs_token: &str,
    sender: &str,
) -> String {
    format!(
        r#"id: {id}
url: {url}
as_token: {as_token}
hs_token: {hs_token}
sender_localpart: {sender}
namespaces:
  users:
    - exclusive: true
      regex: '@irc_.*:test\.local'
  aliases:
    - exclusive: true
      regex: '#irc_.*:test\.local'
  rooms: []
rate_limited: false
protocols: [irc]
receive_ephemeral: true
org.matrix.msc3202: true
"#
    )
}

/// A culvert with the fake appservice registered (and any extra registration files).
pub(crate) struct Setup {
    pub(crate) server: TestServer,
    pub(crate) fake: Arc<Fake>,
    pub(crate) _dir: TempDir,
}

pub(crate) async fn setup_with(extra_files: &[(&str, String)]) -> Setup {
    let (fake, url) = start_fake().await;
    let dir = TempDir::new().unwrap();
    let mut paths = vec![dir.path().join("fake.yaml")];
    std::fs::write(
        &paths[0],
        registration("fake", &url, AS_TOKEN, HS_TOKEN, "fakebot"),
    )
    .unwrap();
    for (name, text) in extra_files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let server = TestServer::start_with(&format!(
        "rate_limits = {{ enabled = false }}\napp_service_config_files = [{}]",
        list.join(", ")
    ))
    .await;
    *fake.culvert.lock().unwrap() = server.base.clone();
    Setup {
        server,
        fake,
        _dir: dir,
    }
}

pub(crate) async fn setup() -> Setup {
    setup_with(&[]).await
}

/// Registers `localpart` as the appservice; returns the response.
async fn as_register(server: &TestServer, localpart: &str) -> (StatusCode, Value) {
    server
        .post(
            "/_matrix/client/v3/register",
            Some(AS_TOKEN),
            json!({ "type": "m.login.application_service", "username": localpart }),
        )
        .await
}

/// Polls `check` (a plain closure over what the fake appservice recorded) until it holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    crate::common::eventually(what, || std::future::ready(check())).await
}

pub(crate) fn as_user(path: &str, user: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}user_id={}", urlencode(user))
}

// ---- registration files ----

async fn start_error(files: &[(&str, &str)]) -> String {
    let dir = TempDir::new().unwrap();
    let mut list = Vec::new();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        list.push(format!("{:?}", path.display().to_string()));
    }
    let db = dir.path().join("db");
    let config = culvert::config::Config::from_toml_str(&crate::common::test_config(
        &db,
        &format!("app_service_config_files = [{}]", list.join(", ")),
    ))
    .unwrap();
    match culvert::server::start(config).await {
        Ok(_) => panic!("start-up should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn invalid_registration_files_refuse_start_up_naming_file_and_problem() {
    let good = registration("one", "http://127.0.0.1:1", "as1", "hs1", "bot1");
    // (files, the file the error must name, the problem it must name)
    type Case<'a> = (Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("bad.yaml", "id: [unclosed".into())],
            "bad.yaml",
            "invalid YAML",
        ),
        (
            vec![(
                "regex.yaml",
                good.replace(r"'@irc_.*:test\.local'", "'@irc_(:'"),
            )],
            "regex.yaml",
            "invalid regex",
        ),
        (
            vec![("same.yaml", good.replace("hs_token: hs1", "hs_token: as1"))],
            "same.yaml",
            "must differ",
        ),
        (
            vec![("missing.yaml", good.replace("hs_token: hs1\n", ""))],
            "missing.yaml",
            "hs_token",
        ),
        (
            vec![
                ("a.yaml", good.clone()),
                (
                    "b.yaml",
                    registration("one", "http://127.0.0.1:1", "as2", "hs2", "bot2"),
                ),
            ],
            "b.yaml",
            "duplicate appservice id",
        ),
        (
            vec![
                ("a.yaml", good.clone()),
                (
                    "c.yaml",
                    registration("two", "http://127.0.0.1:1", "as1", "hs2", "bot2"),
                ),
            ],
            "c.yaml",
            "as_token",
        ),
    ];
    for (files, file, problem) in cases {
        let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let error = start_error(&refs).await;
        assert!(error.contains(file), "{file}: {error}");
        assert!(error.contains(problem), "{problem}: {error}");
    }
    // A missing file too.
    let dir = TempDir::new().unwrap();
    let config = culvert::config::Config::from_toml_str(&crate::common::test_config(
        dir.path(),
        "app_service_config_files = [\"/nonexistent/reg.yaml\"]",
    ))
    .unwrap();
    let error = match culvert::server::start(config).await {
        Ok(_) => panic!("must refuse"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("/nonexistent/reg.yaml"), "{error}");
}

/// What `culvert check-config` runs on the registration files (the same checks as start-up,
/// without opening the database). (Called through the library: the `culvert` binary in a shared
/// target directory may be another branch's build.)
#[test]
fn check_config_validates_registration_files() {
    let dir = TempDir::new().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        registration("one", "http://127.0.0.1:1", "as1", "hs1", "bot1"),
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        registration("two", "http://127.0.0.1:1", "as2", "as2", "bot2"),
    )
    .unwrap();
    let server_name: ruma::OwnedServerName = "test.local".try_into().unwrap();
    let valid = culvert::service::appservice::check_files(&server_name, &[&good]).unwrap();
    assert_eq!(valid[0].id(), "one");
    let error = culvert::service::appservice::check_files(&server_name, &[&good, &bad])
        .err()
        .unwrap();
    assert!(
        error.contains("bad.yaml") && error.contains("must differ"),
        "{error}"
    );
}

// ---- namespaces, exclusivity, registration and login ----

#[tokio::test]
async fn exclusive_namespaces_belong_to_the_appservice() {
    let Setup { server, .. } = setup().await;
    // A normal user cannot take a name in the exclusive namespace…
    let taken = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "irc_bob", "password": "pw-123456", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_error(&taken, StatusCode::BAD_REQUEST, "M_EXCLUSIVE");
    let available = server
        .get(
            "/_matrix/client/v3/register/available?username=irc_bob",
            None,
        )
        .await;
    assert_error(&available, StatusCode::BAD_REQUEST, "M_EXCLUSIVE");
    // …nor register as an appservice without its token.
    let no_token = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "type": "m.login.application_service", "username": "irc_bob" }),
        )
        .await;
    assert_error(&no_token, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");

    // The appservice registers its users (no UIA, no password)…
    let (status, body) = as_register(&server, "irc_bob").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@irc_bob:test.local");
    assert!(body["access_token"].is_string());
    assert_error(
        &as_register(&server, "irc_bob").await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
    // …but not users outside its namespace.
    assert_error(
        &as_register(&server, "bob").await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
    );
    // It may log its users in with m.login.application_service.
    let (status, login) = server
        .post(
            "/_matrix/client/v3/login",
            Some(AS_TOKEN),
            json!({
                "type": "m.login.application_service",
                "identifier": { "type": "m.id.user", "user": "irc_bob" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert_eq!(login["user_id"], "@irc_bob:test.local");
    let bob = Session::from_json(&login);
    server.assert_token_alive(&bob.token).await;
    let login_types = server.get("/_matrix/client/v3/login", None).await.1;
    assert!(
        login_types["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.application_service"),
        "{login_types}"
    );

    // Aliases in the exclusive namespace: not for normal users, fine for the appservice.
    let alice = server.register("alice", "pw-alice-1").await;
    let room = server.create_room(&alice, json!({})).await;
    let alias = urlencode("#irc_chan:test.local");
    let refused = server
        .put(
            &format!("/_matrix/client/v3/directory/room/{alias}"),
            Some(&alice.token),
            json!({ "room_id": room }),
        )
        .await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "M_EXCLUSIVE");
    let refused = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "room_alias_name": "irc_other" }),
        )
        .await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "M_EXCLUSIVE");
    let as_room = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(AS_TOKEN),
            json!({ "room_alias_name": "irc_chan" }),
        )
        .await;
    assert_eq!(as_room.0, StatusCode::OK, "{}", as_room.1);
    // But not outside its namespace.
    let outside = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(AS_TOKEN),
            json!({ "room_alias_name": "not_irc" }),
        )
        .await;
    assert_error(&outside, StatusCode::BAD_REQUEST, "M_EXCLUSIVE");
    // Other names are still free for everyone.
    let (status, _) = server
        .put(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                urlencode("#plain:test.local")
            ),
            Some(&alice.token),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn masquerading_with_user_id_and_device_id() {
    let Setup { server, .. } = setup().await;
    server.register("alice", "pw-alice-1").await;
    // The as_token alone acts as the sender (created on first use).
    let me = server
        .get("/_matrix/client/v3/account/whoami", Some(AS_TOKEN))
        .await;
    assert_eq!(me.0, StatusCode::OK, "{}", me.1);
    assert_eq!(me.1["user_id"], "@fakebot:test.local");
    // Also as the deprecated query parameter.
    let me = server
        .get(
            &format!("/_matrix/client/v3/account/whoami?access_token={AS_TOKEN}"),
            None,
        )
        .await;
    assert_eq!(me.1["user_id"], "@fakebot:test.local");
    let (status, body) = as_register(&server, "irc_bob").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let device = body["device_id"].as_str().unwrap().to_owned();
    let me = server
        .get(
            &as_user("/_matrix/client/v3/account/whoami", "@irc_bob:test.local"),
            Some(AS_TOKEN),
        )
        .await;
    assert_eq!(me.0, StatusCode::OK, "{}", me.1);
    assert_eq!(me.1["user_id"], "@irc_bob:test.local");
    // MSC3202 device masquerading, unstable and stable names.
    for name in ["org.matrix.msc3202.device_id", "device_id"] {
        let path = format!(
            "{}&{name}={device}",
            as_user("/_matrix/client/v3/account/whoami", "@irc_bob:test.local")
        );
        let me = server.get(&path, Some(AS_TOKEN)).await;
        assert_eq!(me.0, StatusCode::OK, "{}", me.1);
        assert_eq!(me.1["device_id"], device.as_str());
        let wrong = server
            .get(&path.replace(&device, "NOSUCHDEVICE"), Some(AS_TOKEN))
            .await;
        assert_error(&wrong, StatusCode::BAD_REQUEST, "M_UNKNOWN_DEVICE");
    }
    // Outside its namespace: refused.
    let other = server
        .get(
            &as_user("/_matrix/client/v3/account/whoami", "@alice:test.local"),
            Some(AS_TOKEN),
        )
        .await;
    assert_error(&other, StatusCode::FORBIDDEN, "M_EXCLUSIVE");
    // In its namespace but never registered: refused.
    let ghost = server
        .get(
            &as_user(
                "/_matrix/client/v3/account/whoami",
                "@irc_nobody:test.local",
            ),
            Some(AS_TOKEN),
        )
        .await;
    assert_error(&ghost, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // A normal user's user_id parameter means nothing.
    let alice = server.login_ok("alice", "pw-alice-1").await;
    let me = server
        .get(
            &as_user("/_matrix/client/v3/account/whoami", "@irc_bob:test.local"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(me.1["user_id"], "@alice:test.local");
    // A wrong token is still a wrong token.
    let bad = server
        .get("/_matrix/client/v3/account/whoami", Some("not-a-token"))
        .await;
    assert_error(&bad, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
}

/// Spec v1.17 (MSC4190): an appservice creates a device for its user with `PUT /devices`
/// (201, then 200 for a rename), acts from it, uploads and resets cross-signing keys and
/// deletes devices without user-interactive auth; a normal user gets 404 for a device it does
/// not have and still needs its password.
#[tokio::test]
async fn appservices_manage_devices_without_passwords() {
    let Setup { server, .. } = setup().await;
    let (status, body) = as_register(&server, "irc_dee").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dee = "@irc_dee:test.local";
    let device_path = |device: &str| as_user(&format!("/_matrix/client/v3/devices/{device}"), dee);

    let (status, body) = server
        .put(
            &device_path("BRIDGED"),
            Some(AS_TOKEN),
            json!({ "display_name": "bridge" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .put(
            &device_path("BRIDGED"),
            Some(AS_TOKEN),
            json!({ "display_name": "bridge 2" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, device) = server.get(&device_path("BRIDGED"), Some(AS_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(device["display_name"], "bridge 2");
    // The new device acts (MSC4326), and has no token of its own to log in with.
    let me = server
        .get(
            &format!(
                "{}&device_id=BRIDGED",
                as_user("/_matrix/client/v3/account/whoami", dee)
            ),
            Some(AS_TOKEN),
        )
        .await;
    assert_eq!(me.0, StatusCode::OK, "{}", me.1);
    assert_eq!(me.1["device_id"], "BRIDGED");

    // Cross-signing keys, uploaded and then replaced: no password asked.
    let key = |name: &str, usage: &str| {
        let public = format!("{name}{}", "A".repeat(43 - name.len()));
        json!({
            "user_id": dee,
            "usage": [usage],
            "keys": { format!("ed25519:{public}"): public },
        })
    };
    for generation in ["first", "second"] {
        let (status, body) = server
            .post(
                &as_user("/_matrix/client/v3/keys/device_signing/upload", dee),
                Some(AS_TOKEN),
                json!({ "master_key": key(generation, "master") }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{generation}: {body}");
    }

    // Deleting devices: one, then several; no password asked.
    for device in ["GONE1", "GONE2", "GONE3"] {
        let (status, body) = server
            .put(&device_path(device), Some(AS_TOKEN), json!({}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = server
        .delete(&device_path("GONE1"), Some(AS_TOKEN), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post(
            &as_user("/_matrix/client/v3/delete_devices", dee),
            Some(AS_TOKEN),
            json!({ "devices": ["GONE2", "GONE3"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, devices) = server
        .get(&as_user("/_matrix/client/v3/devices", dee), Some(AS_TOKEN))
        .await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"BRIDGED"), "{devices}");
    assert!(!ids.iter().any(|d| d.starts_with("GONE")), "{devices}");

    // A normal user: no device created, and a password needed to delete.
    let alice = server.register("alice", "pw-alice-1").await;
    let (status, body) = server
        .put(
            "/_matrix/client/v3/devices/MADEUP",
            Some(&alice.token),
            json!({ "display_name": "x" }),
        )
        .await;
    assert_error(&(status, body), StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, body) = server
        .delete(
            &format!("/_matrix/client/v3/devices/{}", alice.device_id),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["flows"].is_array(), "{body}");
}

/// `rate_limited: false`: the appservice's requests skip the rate limits others meet.
#[tokio::test]
async fn appservices_without_rate_limits_are_not_limited() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("fake.yaml");
    std::fs::write(
        &path,
        registration("fake", "null", AS_TOKEN, HS_TOKEN, "fakebot"),
    )
    .unwrap();
    let server = TestServer::start_with(&format!(
        "rate_limits = {{ enabled = true, register_per_minute = 1, register_burst = 1 }}\n\
         app_service_config_files = [{:?}]",
        path.display().to_string()
    ))
    .await;
    for i in 0..5 {
        let (status, body) = as_register(&server, &format!("irc_user{i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Ordinary clients do meet the limit.
    let mut limited = false;
    for i in 0..3 {
        let (status, _) = server
            .get(
                &format!("/_matrix/client/v3/register/available?username=someone{i}"),
                None,
            )
            .await;
        limited |= status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited);
}

// ---- pushing transactions ----

/// A room of alice's with the bridged user @irc_bob joined; returns (alice, room).
pub(crate) async fn bridged_room(server: &TestServer) -> (Session, String) {
    let alice = server.register("alice", "pw-alice-1").await;
    let (status, body) = as_register(server, "irc_bob").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = server
        .create_room(&alice, json!({ "invite": ["@irc_bob:test.local"] }))
        .await;
    let (status, body) = server
        .post(
            &as_user(
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                "@irc_bob:test.local",
            ),
            Some(AS_TOKEN),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (alice, room)
}

#[tokio::test]
async fn transactions_arrive_in_order_and_are_retried_after_failures() {
    let Setup { server, fake, _dir } = setup().await;
    let (alice, room) = bridged_room(&server).await;
    // A room the appservice has nothing to do with.
    let private = server.create_room(&alice, json!({})).await;
    server.say(&alice, &private, "not-for-the-bridge").await;

    fake.fail_next.store(2, Ordering::SeqCst);
    let sent: Vec<String> = (0..10).map(|i| format!("msg-{i}")).collect();
    for text in &sent {
        server.say(&alice, &room, text).await;
    }
    // The bridged user answers (its own events come back to it too).
    let reply = server
        .put(
            &as_user(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r1"),
                "@irc_bob:test.local",
            ),
            Some(AS_TOKEN),
            json!({ "msgtype": "m.text", "body": "reply" }),
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    eventually("all messages", || {
        fake.accepted_messages().contains(&"reply".to_owned())
    })
    .await;

    let mut expected = sent.clone();
    expected.push("reply".into());
    assert_eq!(fake.accepted_messages(), expected, "in order, once each");
    let attempts = fake.attempts.lock().unwrap().clone();
    assert!(attempts.iter().filter(|a| !a.accepted).count() >= 2);
    for attempt in &attempts {
        assert_eq!(
            attempt.authorization.as_deref(),
            Some(format!("Bearer {HS_TOKEN}").as_str())
        );
    }
    // A failed transaction is retried with the same ID and the same content.
    for failed in attempts.iter().filter(|a| !a.accepted) {
        let retry = attempts
            .iter()
            .find(|a| a.accepted && a.txn_id == failed.txn_id)
            .expect("the failed transaction was retried");
        assert_eq!(retry.body, failed.body);
    }
    // Transaction IDs of accepted transactions are distinct.
    let accepted = fake.accepted();
    let mut ids: Vec<&str> = accepted.iter().map(|a| a.txn_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), accepted.len());
    // The membership events came too (the invite of the bridged user made the room
    // interesting), but nothing of the private room.
    let all: Vec<Value> = accepted
        .iter()
        .flat_map(|a| a.body["events"].as_array().unwrap().clone())
        .collect();
    assert!(
        all.iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == "@irc_bob:test.local")
    );
    assert!(all.iter().all(|e| e["room_id"] == room.as_str()));
    assert!(all.iter().all(|e| e["event_id"].is_string()));

    // Ephemeral events (receive_ephemeral): typing in the bridged room.
    let typing = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/typing/{}",
                urlencode(&alice.user_id)
            ),
            Some(&alice.token),
            json!({ "typing": true, "timeout": 10000 }),
        )
        .await;
    assert_eq!(typing.0, StatusCode::OK, "{}", typing.1);
    eventually("a typing notification", || {
        fake.accepted().iter().any(|a| {
            a.body["ephemeral"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["type"] == "m.typing" && e["room_id"] == room.as_str())
            }) && a.body["de.sorunome.msc2409.ephemeral"].is_array()
        })
    })
    .await;
}

#[tokio::test]
async fn the_queue_survives_a_restart_and_resends_the_same_transaction() {
    let Setup { server, fake, _dir } = setup().await;
    let (alice, room) = bridged_room(&server).await;
    // The appservice is down: a transaction is tried, and fails.
    fake.down.store(true, Ordering::SeqCst);
    server.say(&alice, &room, "before-restart").await;
    eventually("a failed attempt", || {
        fake.attempts.lock().unwrap().iter().any(|a| {
            !a.accepted && message_bodies(&a.body["events"]).contains(&"before-restart".into())
        })
    })
    .await;
    let tried = fake
        .attempts
        .lock()
        .unwrap()
        .iter()
        .rfind(|a| !a.accepted)
        .cloned()
        .unwrap();

    let server = server.restart().await;
    *fake.culvert.lock().unwrap() = server.base.clone();
    fake.down.store(false, Ordering::SeqCst);
    eventually("the retried transaction", || {
        fake.accepted_messages()
            .contains(&"before-restart".to_owned())
    })
    .await;
    let first = fake.accepted()[0].clone();
    let last_attempt_before = tried;
    // The same transaction ID with the same content after the restart.
    let same = fake
        .accepted()
        .into_iter()
        .find(|a| a.txn_id == last_attempt_before.txn_id)
        .expect("the pending transaction was resent");
    assert_eq!(same.body, last_attempt_before.body);
    let _ = first;

    // New events after the restart still reach the appservice, under a new transaction ID.
    let alice = server.login_ok("alice", "pw-alice-1").await;
    server.say(&alice, &room, "after-restart").await;
    eventually("the message after the restart", || {
        fake.accepted_messages()
            .contains(&"after-restart".to_owned())
    })
    .await;
    let accepted = fake.accepted();
    let last = accepted.last().unwrap();
    assert_ne!(last.txn_id, same.txn_id);
    let count = fake
        .accepted_messages()
        .iter()
        .filter(|m| *m == "before-restart")
        .count();
    assert_eq!(count, 1, "accepted once");
}

// ---- ephemeral events, to-device messages and keys for encrypted bridges ----

/// Every accepted transaction's `field` entries (arrays) or objects, flattened.
fn accepted_field(fake: &Fake, field: &str) -> Vec<Value> {
    fake.accepted()
        .iter()
        .flat_map(|a| match &a.body[field] {
            Value::Array(items) => items.clone(),
            Value::Null => Vec::new(),
            other => vec![other.clone()],
        })
        .collect()
}

#[tokio::test]
async fn ephemeral_events_to_device_messages_and_key_counts_reach_the_bridge() {
    let Setup { server, fake, _dir } = setup().await;
    let (alice, room) = bridged_room(&server).await;
    let last = server.say(&alice, &room, "read me").await;

    // A read receipt and a presence change in the bridged room (MSC2409).
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .put(
            &format!(
                "/_matrix/client/v3/presence/{}/status",
                urlencode(&alice.user_id)
            ),
            Some(&alice.token),
            json!({ "presence": "online", "status_msg": "bridging" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("a receipt and a presence update", || {
        let edus = accepted_field(&fake, "ephemeral");
        edus.iter().any(|e| {
            e["type"] == "m.receipt"
                && e["room_id"] == room.as_str()
                && e["content"][&last].is_object()
        }) && edus.iter().any(|e| {
            e["type"] == "m.presence"
                && e["sender"] == alice.user_id.as_str()
                && e["content"]["status_msg"] == "bridging"
        })
    })
    .await;

    // Private receipts go only to the appservice owning their user: alice's not, irc_bob's yes.
    for (path_user, token) in [
        (None, alice.token.as_str()),
        (Some("@irc_bob:test.local"), AS_TOKEN),
    ] {
        let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{last}");
        let path = match path_user {
            Some(user) => as_user(&path, user),
            None => path,
        };
        let (status, body) = server.post(&path, Some(token), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    eventually("irc_bob's private receipt", || {
        accepted_field(&fake, "ephemeral")
            .iter()
            .any(|e| e["content"][&last]["m.read.private"]["@irc_bob:test.local"].is_object())
    })
    .await;
    assert!(
        !accepted_field(&fake, "ephemeral")
            .iter()
            .any(|e| e["content"][&last]["m.read.private"][&alice.user_id].is_object()),
        "alice's private receipt is hers"
    );

    // The bridged user's device (an encrypted bridge logs its users in).
    let (status, login) = server
        .post(
            "/_matrix/client/v3/login",
            Some(AS_TOKEN),
            json!({
                "type": "m.login.application_service",
                "identifier": { "type": "m.id.user", "user": "irc_bob" },
                "device_id": "BRIDGEDEV",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");

    // To-device messages for it (MSC4203).
    let (status, body) = server
        .put(
            "/_matrix/client/v3/sendToDevice/m.room_key_request/td1",
            Some(&alice.token),
            json!({ "messages": { "@irc_bob:test.local": { "BRIDGEDEV": { "action": "request" } } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("the to-device message", || {
        accepted_field(&fake, "de.sorunome.msc2409.to_device")
            .iter()
            .any(|m| {
                m["type"] == "m.room_key_request"
                    && m["sender"] == alice.user_id.as_str()
                    && m["to_user_id"] == "@irc_bob:test.local"
                    && m["to_device_id"] == "BRIDGEDEV"
                    && m["content"]["action"] == "request"
            })
    })
    .await;

    // One-time key counts (MSC3202): uploaded through device masquerading, then claimed.
    let upload = format!(
        "{}&org.matrix.msc3202.device_id=BRIDGEDEV",
        as_user("/_matrix/client/v3/keys/upload", "@irc_bob:test.local")
    );
    let (status, body) = server
        .post(
            &upload,
            Some(AS_TOKEN),
            json!({ "one_time_keys": { "signed_curve25519:AAAA": { "key": "k1", "signatures": {} } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 1);
    let counts_are = |n: u64| {
        let fake = fake.clone();
        move || {
            accepted_field(&fake, "org.matrix.msc3202.device_one_time_keys_count")
                .last()
                .is_some_and(|c| c["@irc_bob:test.local"]["BRIDGEDEV"]["signed_curve25519"] == n)
        }
    };
    eventually("a key count of 1", counts_are(1)).await;
    let (status, body) = server
        .post(
            "/_matrix/client/v3/keys/claim",
            Some(&alice.token),
            json!({ "one_time_keys": { "@irc_bob:test.local": { "BRIDGEDEV": "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("a key count of 0", counts_are(0)).await;

    // Device-list changes of users sharing a room with the bridge (MSC3202).
    let second = server.login_ok("alice", "pw-alice-1").await;
    let (status, _) = server
        .post("/_matrix/client/v3/logout", Some(&second.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("alice's device-list change", || {
        accepted_field(&fake, "org.matrix.msc3202.device_lists")
            .iter()
            .any(|d| {
                d["changed"]
                    .as_array()
                    .is_some_and(|c| c.contains(&json!(alice.user_id)))
            })
    })
    .await;
}

/// A message of a bridged user (sent through the appservice) reaches a sliding-sync client and
/// moves the room to the top of its list.
#[tokio::test]
async fn bridged_messages_reach_sliding_sync() {
    let Setup { server, _dir, .. } = setup().await;
    let (alice, room) = bridged_room(&server).await;
    let other = server.create_room(&alice, json!({ "name": "later" })).await;
    server.say(&alice, &other, "newer").await;
    let sliding = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let list = json!({ "lists": { "all": { "ranges": [[0, 0]], "timeline_limit": 1 } } });
    let (status, first) = server
        .post(
            &format!("{sliding}?timeout=0"),
            Some(&alice.token),
            list.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(first["rooms"].get(&other).is_some(), "{first}");
    let reply = server
        .put(
            &as_user(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/b1"),
                "@irc_bob:test.local",
            ),
            Some(AS_TOKEN),
            json!({ "msgtype": "m.text", "body": "from the bridge" }),
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    let pos = first["pos"].as_str().unwrap();
    let (status, next) = server
        .post(
            &format!("{sliding}?timeout=0&pos={}", urlencode(pos)),
            Some(&alice.token),
            list,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let data = &next["rooms"][&room];
    assert_eq!(
        data["timeline"][0]["content"]["body"], "from the bridge",
        "{next}"
    );
    assert_eq!(data["timeline"][0]["sender"], "@irc_bob:test.local");
}
