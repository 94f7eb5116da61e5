//! The test harness: a real culvert in-process on 127.0.0.1:0 with a temporary database,
//! talked to over HTTP with reqwest.

use std::{path::PathBuf, sync::Arc};

use culvert::{config::Config, server::RunningServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const SERVER_NAME: &str = "test.local";

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    /// Where the database lives; `_dir` keeps a temporary one alive.
    db_path: PathBuf,
    _dir: Option<Arc<TempDir>>,
    extra_config: String,
    server: Option<RunningServer>,
}

/// The config every test server gets; `extra` lines go into `[global]`. Registration is open
/// unless `extra` says otherwise.
pub fn test_config(dir: &std::path::Path, extra: &str) -> String {
    // The admin room invites the first account: only the tests of the admin room want that.
    let admin_room = if extra.contains("admin_room") {
        ""
    } else {
        "admin_room = false"
    };
    let registration = if extra.contains("allow_registration") {
        ""
    } else {
        "allow_registration = true"
    };
    // A federating server (`federating_config`) names itself and its port.
    let name_and_port = if extra.contains("server_name =") {
        String::new()
    } else {
        format!("server_name = \"{SERVER_NAME}\"\nport = 0")
    };
    format!(
        r#"[global]
database_path = "{}"
address = "127.0.0.1"
{name_and_port}
{registration}
{admin_room}
{extra}
"#,
        dir.display()
    )
}

impl TestServer {
    /// Open registration, rate limits off.
    pub async fn start() -> Self {
        Self::start_with("rate_limits = { enabled = false }").await
    }

    /// With extra `[global]` config lines (they replace the default rate-limit line).
    pub async fn start_with(extra: &str) -> Self {
        let dir = Arc::new(TempDir::new().expect("temp dir"));
        Self::start_in(dir.path().to_owned(), Some(dir), extra.to_owned()).await
    }

    /// On an existing database directory.
    pub async fn start_on(db_path: PathBuf, extra: &str) -> Self {
        Self::start_in(db_path, None, extra.to_owned()).await
    }

    async fn start_in(db_path: PathBuf, dir: Option<Arc<TempDir>>, extra_config: String) -> Self {
        let config = Config::from_toml_str(&test_config(&db_path, &extra_config))
            .expect("test config is valid");
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let server = culvert::server::start(config).await.expect("server starts");
        Self {
            base: format!("{scheme}://{}", server.addr),
            // Federating test servers present self-signed certificates.
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .expect("test HTTP client"),
            db_path,
            _dir: dir,
            extra_config,
            server: Some(server),
        }
    }

    /// The metrics listener's address (with `metrics = { address = … }` in the config).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().expect("running").metrics_addr
    }

    pub fn services(&self) -> &culvert::service::Services {
        &self.server.as_ref().expect("running").services
    }

    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(mut self) -> Self {
        let server = self.server.take().expect("running");
        server.stop().await.expect("clean stop");
        Self::start_in(
            self.db_path.clone(),
            self._dir.clone(),
            self.extra_config.clone(),
        )
        .await
    }

    pub async fn request(
        &self,
        method: Method,
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
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("response is not JSON: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(Method::GET, path, token, None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, token, Some(body)).await
    }
    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(Method::PUT, path, token, Some(body)).await
    }
    pub async fn delete(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        self.request(Method::DELETE, path, token, Some(body)).await
    }

    /// Registers through the whole UIA dance (dummy stage). Returns (user_id, token, device_id).
    pub async fn register(&self, name: &str, password: &str) -> Session {
        let body = json!({ "username": name, "password": password });
        let (status, uia) = self
            .post("/_matrix/client/v3/register", None, body.clone())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
        let session = uia["session"].as_str().expect("UIA session").to_owned();
        let mut body = body;
        body["auth"] = json!({ "type": "m.login.dummy", "session": session });
        let (status, done) = self.post("/_matrix/client/v3/register", None, body).await;
        assert_eq!(status, StatusCode::OK, "{done}");
        Session::from_json(&done)
    }

    /// Asserts that `token` no longer authenticates (401 `M_UNKNOWN_TOKEN`).
    pub async fn assert_token_dead(&self, token: &str) {
        let result = self
            .get("/_matrix/client/v3/account/whoami", Some(token))
            .await;
        assert_error(&result, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    }

    /// Asserts that `token` authenticates.
    pub async fn assert_token_alive(&self, token: &str) {
        let (status, body) = self
            .get("/_matrix/client/v3/account/whoami", Some(token))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// A GET as `who` that must answer 200; returns the body.
    pub async fn get_ok(&self, path: &str, who: &Session) -> Value {
        let (status, body) = self.get(path, Some(&who.token)).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// `POST /createRoom` as `who`; returns the room ID.
    pub async fn create_room(&self, who: &Session, body: Value) -> String {
        let (status, response) = self
            .post("/_matrix/client/v3/createRoom", Some(&who.token), body)
            .await;
        assert_eq!(status, StatusCode::OK, "{response}");
        response["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Sends a text message as `who` (the text doubles as transaction ID); returns the event ID.
    pub async fn say(&self, who: &Session, room: &str, text: &str) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{text}");
        let content = serde_json::json!({ "msgtype": "m.text", "body": text });
        let (status, body) = self.put(&path, Some(&who.token), content).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["event_id"].as_str().expect("event_id").to_owned()
    }

    /// `POST /rooms/{room}/join` as `who`, which must answer 200.
    pub async fn join(&self, who: &Session, room: &str) {
        let (status, body) = self
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(&who.token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// The rooms `who` is joined to (`/joined_rooms`).
    pub async fn joined_rooms(&self, who: &Session) -> Vec<String> {
        let body = self.get_ok("/_matrix/client/v3/joined_rooms", who).await;
        body["joined_rooms"]
            .as_array()
            .expect("joined_rooms")
            .iter()
            .map(|r| r.as_str().expect("room ID").to_owned())
            .collect()
    }

    pub async fn login(&self, name: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": name },
                "password": password,
            }),
        )
        .await
    }

    pub async fn login_ok(&self, name: &str, password: &str) -> Session {
        let (status, body) = self.login(name, password).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Session::from_json(&body)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A server not stopped explicitly is aborted with its runtime; nothing to flush in tests.
        let _ = self.server.take();
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

impl Session {
    pub fn from_json(body: &Value) -> Self {
        Self {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            device_id: body["device_id"].as_str().expect("device_id").to_owned(),
        }
    }
}

/// Asserts a Matrix error: status and errcode.
#[track_caller]
pub fn assert_error(result: &(StatusCode, Value), status: StatusCode, errcode: &str) {
    assert_eq!(result.0, status, "unexpected status, body {}", result.1);
    assert_eq!(result.1["errcode"], errcode, "unexpected body {}", result.1);
    assert!(
        result.1["error"].is_string(),
        "error message missing in {}",
        result.1
    );
}

/// The bodies of the `m.room.message` events in a JSON array of events, in order.
pub fn message_bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("an array of events")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Percent-encodes everything but unreserved characters (for IDs and JSON in paths and queries).
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sync response's `next_batch`.
pub fn next_batch(response: &Value) -> String {
    response["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned()
}

/// Config lines for a server that federates over TLS on loopback: a fresh self-signed
/// certificate in `dir`, the server name `localhost:<port>` on a free port, any peer
/// certificate accepted, loopback peers allowed (`ip_range_denylist = []`), keys fetched
/// directly (no notaries).
pub fn federating_config(dir: &std::path::Path, extra: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    federating_config_on(dir, port, extra)
}

/// [`federating_config`] on a given port (`localhost:<port>` is the server's name).
pub fn federating_config_on(dir: &std::path::Path, port: u16, extra: &str) -> String {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_path = dir.join("tls-cert.pem");
    let key_path = dir.join("tls-key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write certificate");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let denylist = if extra.contains("ip_range_denylist") {
        ""
    } else {
        "ip_range_denylist = []"
    };
    let notaries = if extra.contains("trusted_servers") {
        ""
    } else {
        "trusted_servers = []"
    };
    format!(
        r#"server_name = "localhost:{port}"
port = {port}
allow_federation = true
allow_invalid_tls_certificates = true
{denylist}
{notaries}
rate_limits = {{ enabled = false }}
tls = {{ certs = "{}", key = "{}" }}
{extra}"#,
        cert_path.display(),
        key_path.display()
    )
}

impl TestServer {
    /// A server federating over TLS on loopback (see [`federating_config`]).
    pub async fn start_federating(extra: &str) -> Self {
        let dir = Arc::new(TempDir::new().expect("temp dir"));
        let config = federating_config(dir.path(), extra);
        Self::start_in(dir.path().join("db"), Some(dir), config).await
    }

    /// Stops the server for good (its port is free again afterwards).
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }

    /// The `[global]` lines this server was started with, besides the defaults.
    pub fn extra_config(&self) -> &str {
        &self.extra_config
    }

    /// This server's name (`localhost:<port>` for federating servers).
    pub fn server_name(&self) -> String {
        self.services().server_name.to_string()
    }
}

impl TestServer {
    /// Stops the server gracefully and starts a new one on the same database with other
    /// `[global]` config lines.
    pub async fn restart_with(mut self, extra: &str) -> Self {
        self.extra_config = extra.to_owned();
        self.restart().await
    }
}

impl TestServer {
    /// Like [`TestServer::restart`], but listening on the same port again, for clients that
    /// keep the server's URL (an appservice bridge).
    pub async fn restart_same_port(mut self) -> Self {
        let server = self.server.take().expect("running");
        let port = server.addr.port();
        server.stop().await.expect("clean stop");
        let text = test_config(&self.db_path, &self.extra_config)
            .replace("port = 0", &format!("port = {port}"));
        let config = Config::from_toml_str(&text).expect("test config is valid");
        let server = culvert::server::start(config).await.expect("server starts");
        Self {
            base: format!("http://{}", server.addr),
            http: reqwest::Client::new(),
            db_path: self.db_path.clone(),
            _dir: self._dir.clone(),
            extra_config: self.extra_config.clone(),
            server: Some(server),
        }
    }
}

/// How long a test waits for something that happens asynchronously (another server's
/// delivery, an appservice transaction) before it fails.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `check` every `every` until it yields a value; `None` once `within` has passed.
pub async fn poll<T, F, Fut>(
    within: std::time::Duration,
    every: std::time::Duration,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs `check` every 100 ms until it holds; fails the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let every = std::time::Duration::from_millis(100);
    let held = poll(PATIENCE, every, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
    if held.is_none() {
        panic!("timed out after {PATIENCE:?} waiting for {what}");
    }
}

/// Follows a sync stream (a `timeout=0` sync, then long-polls of 500 ms from each
/// `next_batch`) until a response satisfies `found`, and returns that response; `None` after
/// [`PATIENCE`]. `sync` performs one GET of the path it is given and returns the body, so this
/// drives culvert and Synapse alike.
pub async fn follow_sync<F, Fut>(mut sync: F, found: impl Fn(&Value) -> bool) -> Option<Value>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut since: Option<String> = None;
    while tokio::time::Instant::now() < deadline {
        let path = match &since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=500&since={since}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let body = sync(path).await;
        if found(&body) {
            return Some(body);
        }
        // A failed sync has no next_batch: start again from a fresh one.
        since = body["next_batch"].as_str().map(ToOwned::to_owned);
        if since.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    None
}

/// Whether a sync response's timeline for `room` carries a message with body `text`.
pub fn timeline_has(body: &Value, room: &str, text: &str) -> bool {
    let events = &body["rooms"]["join"][room]["timeline"]["events"];
    events.is_array() && message_bodies(events).iter().any(|b| b == text)
}

impl TestServer {
    /// Syncs `who` until a response satisfies `found` (see [`follow_sync`]); fails the test
    /// with `what` after [`PATIENCE`].
    pub async fn sync_until(
        &self,
        who: &Session,
        what: &str,
        found: impl Fn(&Value) -> bool,
    ) -> Value {
        follow_sync(|path| async move { self.get_ok(&path, who).await }, found)
            .await
            .unwrap_or_else(|| panic!("{what} never reached {} in its sync", who.user_id))
    }

    /// Waits until `who`'s sync shows the message `text` in `room`; returns its event ID.
    pub async fn wait_for_message(&self, who: &Session, room: &str, text: &str) -> String {
        let body = self
            .sync_until(who, text, |body| timeline_has(body, room, text))
            .await;
        body["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["content"]["body"] == text)
            .and_then(|e| e["event_id"].as_str())
            .expect("the message's event ID")
            .to_owned()
    }
}

/// A test that cannot run on this machine. Under `requirement` (an environment variable such as
/// `REQUIRE_SYNAPSE`, set by `scripts/test`) that is a failure; otherwise the test is recorded
/// as skipped — a `SKIPPED` line, and a line (`test TAB reason`) in the file named by
/// `TEST_SKIP_LOG` that `scripts/test` counts in its closing summary — and the caller returns
/// without asserting.
pub fn skip(requirement: Option<&str>, reason: &str) {
    if let Some(variable) = requirement {
        assert!(
            std::env::var_os(variable).is_none(),
            "{variable} is set but this test cannot run: {reason}"
        );
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_owned();
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("TEST_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{test}\t{reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        written.expect("TEST_SKIP_LOG is writable");
    }
}

/// Runs `tests/clients/<script>` with the real-client tests' Python (`NIO_PYTHON`) and `args`,
/// and asserts that it succeeded and printed `ok_line`; returns its output. `None` when that
/// Python lacks the client library `module` (a failure under `REQUIRE_REAL_CLIENTS`, as
/// `scripts/test` sets it).
pub async fn run_python_client(
    module: &str,
    script: &str,
    args: &[&str],
    ok_line: &str,
) -> Option<String> {
    let python = std::env::var_os("NIO_PYTHON")
        .map(std::path::PathBuf::from)
        .filter(|python| {
            std::process::Command::new(python)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(python) = python else {
        skip(
            Some("REQUIRE_REAL_CLIENTS"),
            &format!("set NIO_PYTHON to a Python with {module} installed (see scripts/test)"),
        );
        return None;
    };
    let script = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(ok_line),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    Some(stdout)
}

/// The `culvert` binary, logging errors only, without the caller's `CULVERT_*`/`CONDUIT_*`
/// variables (each would be read as a config key).
pub fn culvert_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_culvert"));
    command.env("RUST_LOG", "error");
    for (key, _) in std::env::vars() {
        if key.starts_with("CULVERT_") || key.starts_with("CONDUIT_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `culvert --config <config> <args>` to its end.
pub fn run_culvert(args: &[&str], config: &std::path::Path) -> std::process::Output {
    culvert_command()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("culvert runs")
}

/// What a finished command wrote, stdout then stderr.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl TestServer {
    /// The texts of the messages `who` sees in `room`'s history (`/messages`, newest first,
    /// the last 100).
    pub async fn history(&self, who: &Session, room: &str) -> Vec<String> {
        let page = self
            .get_ok(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"),
                who,
            )
            .await;
        message_bodies(&page["chunk"])
    }
}

/// A TLS listener on a free loopback port with a fresh self-signed certificate, for stand-ins
/// of other servers; and its server name (`localhost:<port>`).
pub async fn tls_listener() -> (culvert::tls::TlsListener, String) {
    let dir = TempDir::new().expect("temp dir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("write certificate");
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem())
        .expect("write key");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let name = format!("localhost:{}", tcp.local_addr().expect("bound").port());
    // The certificate is read here, once; the files may go with `dir`.
    let listener = culvert::tls::TlsListener::new(
        tcp,
        culvert::config::TlsConfig {
            certs: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        },
    )
    .expect("TLS listener");
    (listener, name)
}
