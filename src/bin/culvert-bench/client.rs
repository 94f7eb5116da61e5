//! A deliberately small Matrix client: only the client-server API calls the scenarios need,
//! on plain JSON values, so the tool drives culvert, Synapse or any homeserver the same way
//! (it does not use culvert's own types on purpose).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The simplified sliding sync endpoint (MSC4186) as matrix-sdk 0.18 and Synapse speak it.
pub const SLIDING_SYNC_PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line ("error sending request: …: connection refused"):
/// reqwest's own message leaves out why.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How accounts are created on the server under test.
#[derive(Clone, Debug, Default)]
pub struct AccountAuth {
    /// Completes the `m.login.registration_token` stage when the server asks for it.
    pub registration_token: Option<String>,
    /// Synapse's shared-secret admin registration; servers without that endpoint (404) fall back
    /// to the ordinary `/register`, so one command line works against both.
    pub shared_secret: Option<String>,
}

/// The server under test: one base URL and one connection pool shared by every simulated user
/// (a long-poll holds its own connection, so concurrency equals open connections).
#[derive(Clone)]
pub struct Server {
    http: reqwest::Client,
    base: Arc<str>,
    auth: Arc<AccountAuth>,
}

/// A logged-in account (one device).
#[derive(Clone)]
pub struct User {
    pub server: Server,
    pub user_id: String,
    pub token: String,
    /// Transaction IDs must be unique per device; a per-user counter plus the process's start
    /// time keeps them unique across runs of the tool too.
    txn: Arc<AtomicU64>,
}

/// A response: status, JSON body (Null when empty) and the body's size in bytes.
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub bytes: usize,
}

impl Server {
    pub fn new(base: &str, auth: AccountAuth) -> Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            // Every request ends: long-polls ask for at most a minute.
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').into(),
            auth: Arc::new(auth),
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into())
            })
        };
        Ok(Reply {
            status,
            body,
            bytes: bytes.len(),
        })
    }

    /// Like [`Server::call`], but anything but 200 is an error naming the request.
    pub async fn call_ok(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let reply = self.call(method.clone(), path, token, body).await?;
        if reply.status != StatusCode::OK {
            return Err(format!("{method} {path}: {} {}", reply.status, short(&reply.body)).into());
        }
        Ok(reply)
    }

    /// Creates the account `localpart` and logs it in.
    pub async fn register(&self, localpart: &str, password: &str) -> Result<User> {
        if let Some(secret) = &self.auth.shared_secret {
            let nonce = self
                .call(Method::GET, "/_synapse/admin/v1/register", None, None)
                .await?;
            if nonce.status == StatusCode::OK {
                return self
                    .register_shared_secret(secret, &nonce.body, localpart, password)
                    .await;
            }
            // Anything else (404 M_UNRECOGNIZED on culvert): this server has no such endpoint.
        }
        self.register_uia(localpart, password).await
    }

    async fn register_shared_secret(
        &self,
        secret: &str,
        nonce: &Value,
        localpart: &str,
        password: &str,
    ) -> Result<User> {
        let nonce = nonce["nonce"].as_str().ok_or("admin register: no nonce")?;
        let mac = shared_secret_mac(secret, nonce, localpart, password, false);
        let body = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": false,
            "mac": mac,
        });
        let reply = self
            .call_ok(
                Method::POST,
                "/_synapse/admin/v1/register",
                None,
                Some(&body),
            )
            .await?;
        self.user_from(&reply.body)
    }

    /// User-interactive registration: completes whichever offered flow consists only of stages
    /// the tool can do (`m.login.dummy`, and `m.login.registration_token` when given a token).
    async fn register_uia(&self, localpart: &str, password: &str) -> Result<User> {
        let mut body = json!({
            "username": localpart,
            "password": password,
            "initial_device_display_name": "culvert-bench",
        });
        // Each round completes one stage; real flows have one or two.
        for _ in 0..6 {
            let reply = self
                .call(
                    Method::POST,
                    "/_matrix/client/v3/register",
                    None,
                    Some(&body),
                )
                .await?;
            match reply.status {
                StatusCode::OK => return self.user_from(&reply.body),
                StatusCode::UNAUTHORIZED => {
                    let stage = self.next_stage(&reply.body)?;
                    let session = reply.body["session"].clone();
                    body["auth"] = match stage.as_str() {
                        "m.login.registration_token" => json!({
                            "type": stage,
                            "session": session,
                            "token": self.auth.registration_token,
                        }),
                        _ => json!({ "type": stage, "session": session }),
                    };
                }
                status => {
                    return Err(
                        format!("register {localpart}: {status} {}", short(&reply.body)).into(),
                    );
                }
            }
        }
        Err(format!("register {localpart}: the UIA dance did not end").into())
    }

    fn next_stage(&self, uia: &Value) -> Result<String> {
        let doable = |stage: &str| {
            stage == "m.login.dummy"
                || (stage == "m.login.registration_token" && self.auth.registration_token.is_some())
        };
        let completed: Vec<&str> = uia["completed"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let flows = uia["flows"]
            .as_array()
            .ok_or_else(|| format!("register: no UIA flows in {}", short(uia)))?;
        for flow in flows {
            let stages: Vec<&str> = flow["stages"]
                .as_array()
                .map(|s| s.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if stages.iter().all(|s| doable(s))
                && let Some(next) = stages.iter().find(|s| !completed.contains(s))
            {
                return Ok((*next).to_owned());
            }
        }
        Err(format!(
            "register: no flow the tool can complete (open registration, --registration-token or \
             --shared-secret needed): {}",
            short(uia)
        )
        .into())
    }

    /// Logs `user_id` in once more: a new device, so a new (uncached) initial sync.
    pub async fn login(&self, user_id: &str, password: &str) -> Result<User> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user_id },
            "password": password,
            "initial_device_display_name": "culvert-bench",
        });
        let reply = self
            .call_ok(Method::POST, "/_matrix/client/v3/login", None, Some(&body))
            .await?;
        self.user_from(&reply.body)
    }

    fn user_from(&self, body: &Value) -> Result<User> {
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| format!("no access_token in {}", short(body)))?;
        let user_id = body["user_id"]
            .as_str()
            .ok_or_else(|| format!("no user_id in {}", short(body)))?;
        Ok(User {
            server: self.clone(),
            user_id: user_id.to_owned(),
            token: token.to_owned(),
            txn: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl User {
    async fn call_ok(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply> {
        self.server
            .call_ok(method, path, Some(&self.token), body)
            .await
    }

    /// A public room (anyone may join), created by this user.
    pub async fn create_room(&self, name: &str) -> Result<String> {
        let body = json!({ "preset": "public_chat", "name": name });
        let reply = self
            .call_ok(Method::POST, "/_matrix/client/v3/createRoom", Some(&body))
            .await?;
        reply.body["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "createRoom: no room_id".into())
    }

    pub async fn join(&self, room_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/join", enc(room_id));
        self.call_ok(Method::POST, &path, Some(&json!({}))).await?;
        Ok(())
    }

    /// Sets an HTTP pusher to the push gateway at `url` (`.../_matrix/push/v1/notify`).
    pub async fn set_pusher(&self, url: &str, pushkey: &str) -> Result<()> {
        let body = json!({
            "kind": "http",
            "app_id": "org.culvert.bench",
            "pushkey": pushkey,
            "app_display_name": "culvert-bench",
            "device_display_name": "culvert-bench",
            "lang": "en",
            "data": { "url": url },
        });
        self.call_ok(Method::POST, "/_matrix/client/v3/pushers/set", Some(&body))
            .await?;
        Ok(())
    }

    /// Sends an `m.room.message`; returns its event ID.
    pub async fn send(&self, room_id: &str, content: &Value) -> Result<String> {
        self.send_event(room_id, "m.room.message", content).await
    }

    /// Sends a message event of any type; returns its event ID.
    pub async fn send_event(
        &self,
        room_id: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<String> {
        let txn = self.txn.fetch_add(1, Ordering::Relaxed);
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/{}/cb{}.{txn}",
            enc(room_id),
            enc(event_type),
            crate::START_NONCE.as_str()
        );
        let reply = self.call_ok(Method::PUT, &path, Some(content)).await?;
        reply.body["event_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "send: no event_id".into())
    }

    /// `/sync`; `filter` is an inline JSON filter.
    pub async fn sync(
        &self,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> Result<Reply> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&enc(since));
        }
        if let Some(filter) = filter {
            path.push_str("&filter=");
            path.push_str(&enc(filter));
        }
        self.call_ok(Method::GET, &path, None).await
    }

    /// Simplified sliding sync (MSC4186, the unstable path Element X uses): `pos` and `timeout`
    /// in the query, the lists and extensions in `body`.
    pub async fn sliding_sync(
        &self,
        pos: Option<&str>,
        timeout_ms: u64,
        body: &Value,
    ) -> Result<Reply> {
        let mut path = format!("{SLIDING_SYNC_PATH}?timeout={timeout_ms}");
        if let Some(pos) = pos {
            path.push_str("&pos=");
            path.push_str(&enc(pos));
        }
        self.call_ok(Method::POST, &path, Some(body)).await
    }

    /// `POST /search` for `term` in the user's rooms (`room_events`, ranked, the server's
    /// default page).
    pub async fn search(&self, term: &str) -> Result<Reply> {
        let body = serde_json::json!({
            "search_categories": { "room_events": { "search_term": term } }
        });
        self.call_ok(Method::POST, "/_matrix/client/v3/search", Some(&body))
            .await
    }

    /// One page of a room's `/threads`, from `from`.
    pub async fn threads(&self, room_id: &str, from: Option<&str>, limit: u32) -> Result<Reply> {
        let mut path = format!(
            "/_matrix/client/v1/rooms/{}/threads?limit={limit}",
            enc(room_id)
        );
        if let Some(from) = from {
            path.push_str("&from=");
            path.push_str(&enc(from));
        }
        self.call_ok(Method::GET, &path, None).await
    }

    /// One page of `/messages`, backwards.
    pub async fn messages_back(
        &self,
        room_id: &str,
        from: Option<&str>,
        limit: u32,
    ) -> Result<Reply> {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}",
            enc(room_id)
        );
        if let Some(from) = from {
            path.push_str("&from=");
            path.push_str(&enc(from));
        }
        self.call_ok(Method::GET, &path, None).await
    }
}

/// Synapse's admin registration MAC: HMAC-SHA1 over the NUL-separated nonce, user, password and
/// admin flag, in lowercase hex.
pub fn shared_secret_mac(
    secret: &str,
    nonce: &str,
    user: &str,
    password: &str,
    admin: bool,
) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(nonce.as_bytes());
    ctx.update(b"\0");
    ctx.update(user.as_bytes());
    ctx.update(b"\0");
    ctx.update(password.as_bytes());
    ctx.update(b"\0");
    ctx.update(if admin { b"admin" } else { b"notadmin" });
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for path segments and query
/// values alike: room IDs, tokens, filters).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JSON body cut short for an error message.
pub fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
