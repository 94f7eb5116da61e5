//! The one typed configuration struct, read in Conduit's format.
//!
//! Sources, later ones winning:
//! 1. the embedded default ([`EMBEDDED_DEFAULT`]) — only when no config file is given;
//! 2. the TOML file from `--config`, `CULVERT_CONFIG` or `CONDUIT_CONFIG` (its `[global]` table);
//! 3. `CONDUIT_<KEY>` environment variables (compatibility);
//! 4. `CULVERT_<KEY>` environment variables.
//!
//! Nested keys use a double underscore: `CULVERT_WELL_KNOWN__CLIENT`.
//! Unknown keys and wrong types stop start-up with a message that names the key.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use ruma::{OwnedServerName, RoomVersionId};
use serde::Deserialize;

/// Used when no config file is given, so that `culvert` alone starts a usable server.
pub const EMBEDDED_DEFAULT: &str = r#"
[global]
server_name = "localhost"
database_path = "./culvert-data"
address = "127.0.0.1"
port = 6167
"#;

/// The whole configuration: the `[global]` table of a Conduit config file.
///
/// Keys that Conduit has but culvert does not act on yet are still accepted (and typed), so a
/// Conduit config starts culvert unchanged; [`Config::unused_conduit_keys`] lists the ones set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server's name: the part after the colon in `@user:server_name`. Never change it later.
    pub server_name: OwnedServerName,
    /// Directory holding the RocksDB database (and, later, media).
    pub database_path: PathBuf,
    /// Only "rocksdb" is supported.
    #[serde(default = "default_backend")]
    pub database_backend: String,
    #[serde(default = "default_address")]
    pub address: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    /// TLS served directly by culvert, for client and federation traffic (reloaded on SIGHUP).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_request_size")]
    pub max_request_size: u32,
    /// Seconds a client has to send a request's head (its line and headers), on a new
    /// connection or a kept-alive one; a slower client (slowloris) is cut off. Default 30.
    #[serde(default = "default_request_header_timeout_secs")]
    pub request_header_timeout_secs: u64,
    #[serde(default)]
    pub allow_registration: bool,
    /// When set, registering requires this token (`m.login.registration_token`).
    #[serde(default)]
    pub registration_token: Option<String>,
    #[serde(default)]
    pub allow_guest_registration: bool,
    #[serde(default)]
    pub allow_federation: bool,
    #[serde(default = "default_true")]
    pub allow_encryption: bool,
    #[serde(default = "default_true")]
    pub allow_room_creation: bool,
    #[serde(default = "default_true")]
    pub allow_unstable_room_versions: bool,
    #[serde(default = "default_room_version")]
    pub default_room_version: RoomVersionId,
    #[serde(default = "default_trusted_servers")]
    pub trusted_servers: Vec<OwnedServerName>,
    /// A tracing-subscriber filter, e.g. "info" or "warn,culvert=debug".
    #[serde(default = "default_log")]
    pub log: String,
    #[serde(default)]
    pub well_known: WellKnownConfig,
    /// One figure (MiB) for the memory culvert keeps for speed: a third each for RocksDB's
    /// block cache, its write buffers (memtables) and recently read events kept parsed
    /// ([`Config::memory_plan`]). Default 96. `db_cache_capacity_mb` and
    /// `pdu_cache_capacity`, when set, win over their share.
    #[serde(default)]
    pub memory_budget_mb: Option<f64>,
    /// RocksDB block cache size (default: a third of `memory_budget_mb`, 32).
    #[serde(default)]
    pub db_cache_capacity_mb: Option<f64>,
    /// Table files RocksDB keeps open; unset: half the process's open-files limit, which
    /// culvert raises to its hard limit at start (`store::files`).
    #[serde(default)]
    pub rocksdb_max_open_files: Option<i32>,
    /// When an acknowledged write is safe: `process` (survives a killed process), `each` or
    /// `group` (survive a power cut; see `store::durability`).
    #[serde(default)]
    pub durability: crate::store::durability::Durability,
    /// Extra CA certificates (PEM files) trusted for federation TLS, besides the webpki roots.
    #[serde(default)]
    pub federation_extra_ca_certs: Vec<PathBuf>,
    /// Accept any TLS certificate from other servers. Tests only: logs a loud warning.
    #[serde(default)]
    pub allow_invalid_tls_certificates: bool,
    /// Servers never federated with (exact server names), in either direction.
    #[serde(default)]
    pub federation_denylist: Vec<OwnedServerName>,
    /// Rate limits for login and registration (culvert's own table).
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    /// Largest media upload accepted, in bytes (`M_TOO_LARGE` above it). Uploads stream to disk,
    /// so this is independent of `max_request_size`.
    #[serde(default = "default_max_upload_size")]
    pub max_upload_size: u64,
    /// When true, media uploaded from now on is served only by the authenticated
    /// `/_matrix/client/v1/media/*` endpoints; the legacy `/_matrix/media/v3/*` ones answer 404
    /// for it (the spec's transition to authenticated media). Older media stays reachable.
    #[serde(default)]
    pub freeze_legacy_media: bool,
    /// Whether `/preview_url` fetches pages for clients. Off by default: it makes the server
    /// fetch arbitrary URLs.
    #[serde(default)]
    pub url_preview_enabled: bool,
    /// How long an access token lives when the client asked for a refresh token (`/login`,
    /// `/register` with `refresh_token: true`), in ms; it refreshes through `/refresh` before.
    /// 0: no refresh tokens are handed out, and access tokens never expire (as for clients
    /// that do not ask).
    #[serde(default = "default_access_token_lifetime_ms")]
    pub access_token_lifetime_ms: u64,
    /// Thread subscriptions (MSC4306, and MSC4308's sliding-sync extension), as Element X
    /// uses them: the endpoints, and two push rules by which a thread's messages notify only
    /// users subscribed to it (mentions still notify). Off by default, because clients that
    /// never subscribe (most but Element X today) would then stop notifying about threads.
    #[serde(default)]
    pub thread_subscriptions: bool,
    /// Serve the three legacy mention push rules (`.m.rule.contains_display_name`,
    /// `.m.rule.contains_user_name`, `.m.rule.roomnotif`), which spec v1.17 removed
    /// (MSC4210): with them, a message naming a user in its text highlights for them even
    /// when its client sends no `m.mentions` (older clients and simple bots). Off by default,
    /// as the spec says; on, `/versions` stops at v1.16.
    #[serde(default)]
    pub legacy_mention_push_rules: bool,
    /// The admin room (`#admins:server`): the server's admins are its members and give
    /// commands there (`!admin help`). On by default.
    #[serde(default = "default_true")]
    pub admin_room: bool,
    /// Largest page or image `/preview_url` downloads, in bytes.
    #[serde(default = "default_url_preview_max_size")]
    pub url_preview_max_size: u64,
    /// Addresses (CIDR) the server never connects to when it fetches URLs on someone's behalf
    /// (URL previews, later federation): by default every loopback, private, link-local,
    /// CGNAT, unique-local, multicast, documentation and otherwise non-public range. `[]`
    /// allows everything. See `service::outbound_guard`.
    #[serde(default = "crate::service::outbound_guard::default_denylist")]
    pub ip_range_denylist: Vec<String>,
    /// Application-service registration files (the standard YAML: `id`, `url`, `as_token`,
    /// `hs_token`, `sender_localpart`, `namespaces`, …), loaded at start-up. A file that does not
    /// parse or validate stops start-up with a message naming it.
    #[serde(default)]
    pub app_service_config_files: Vec<PathBuf>,

    /// How many recently read events are kept parsed in memory (Conduit's key; default 1024).
    #[serde(default)]
    pub pdu_cache_capacity: Option<u32>,

    // ---- Accepted for compatibility with Conduit configs; not acted on (yet). ----
    #[serde(default)]
    pub max_concurrent_requests: Option<u16>,
    #[serde(default)]
    pub enable_lightning_bolt: Option<bool>,
    #[serde(default)]
    pub allow_check_for_updates: Option<bool>,
    #[serde(default)]
    pub conduit_cache_capacity_modifier: Option<f64>,
    #[serde(default)]
    pub cleanup_second_interval: Option<u32>,
    #[serde(default)]
    pub max_fetch_prev_events: Option<u16>,
    #[serde(default)]
    pub allow_jaeger: Option<bool>,
    #[serde(default)]
    pub tracing_flame: Option<bool>,
    #[serde(default)]
    pub proxy: Option<toml::Value>,
    #[serde(default)]
    pub jwt_secret: Option<String>,
    #[serde(default)]
    pub turn_username: Option<String>,
    #[serde(default)]
    pub turn_password: Option<String>,
    #[serde(default)]
    pub turn_uris: Option<Vec<String>>,
    #[serde(default)]
    pub turn_secret: Option<String>,
    /// A file holding `turn_secret` (read at start-up; keeps the secret out of the config).
    #[serde(default)]
    pub turn_secret_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub turn_ttl: Option<u64>,
    /// Whether guests get TURN credentials too (Conduit's key; default false).
    #[serde(default)]
    pub turn_allow_guests: bool,
    /// The longest delay a delayed event (MSC4140, what Element Call's leave needs) may have:
    /// milliseconds, or a duration such as `"24h"`, `"10m"`, `"30s"`; 0 turns them off.
    #[serde(default = "default_max_event_delay")]
    pub max_event_delay_duration: Millis,
    /// MatrixRTC (Element Call): the call transports clients are told of.
    #[serde(default)]
    pub matrix_rtc: MatrixRtcConfig,
    /// Where media files live (Conduit's `[global.media]` table).
    #[serde(default)]
    pub media: MediaConfig,
    /// Online backups (`[global.backup]`); absent: `culvert backup` has nowhere to write.
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    /// Prometheus metrics (`[global.metrics]`); absent: not served.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub emergency_password: Option<String>,
    /// `CULVERT_*`/`CONDUIT_*` environment variables that name no key, left out (warned about
    /// once logging runs).
    #[serde(skip)]
    pub ignored_environment: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Path to the PEM certificate chain.
    pub certs: PathBuf,
    /// Path to the PEM private key.
    pub key: PathBuf,
}

/// Where backups go and how many are kept (`[global.backup]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The backup directory: outside the database directory (ideally on another disk).
    pub path: PathBuf,
    /// Backups kept; older ones are removed when a new one is taken.
    #[serde(default = "default_backups_kept")]
    pub keep: usize,
}

/// Where the Prometheus metrics are served (`[global.metrics]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address of the metrics listener (`/metrics`), e.g. `127.0.0.1:9167`: its own
    /// port, never the public one.
    pub address: std::net::SocketAddr,
}

fn default_backups_kept() -> usize {
    7
}

/// What `/.well-known/matrix/{client,server}` answer. Unset: 404.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WellKnownConfig {
    /// Base URL of the client API, e.g. "https://matrix.example.org".
    pub client: Option<String>,
    /// Delegated federation endpoint, e.g. "matrix.example.org:443".
    pub server: Option<String>,
    /// `/.well-known/matrix/support`: a page where users find help...
    pub support_page: Option<String>,
    /// ...and whom to contact, e.g. `[{ role = "m.role.admin", matrix_id = "@admin:example.org",
    /// email_address = "admin@example.org" }]` (each with a role and an ID or an address).
    #[serde(default)]
    pub support_contacts: Vec<SupportContact>,
}

/// A contact of `/.well-known/matrix/support`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupportContact {
    /// `m.role.admin`, `m.role.security`, or a namespaced role of one's own.
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix_id: Option<ruma::OwnedUserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
}

/// `[global.matrix_rtc]`: the MatrixRTC transports (MSC4143) of `GET /rtc/transports` and the
/// client well-known's `org.matrix.msc4143.rtc_foci`, e.g. `transports = [{ type = "livekit",
/// livekit_service_url = "https://livekit-jwt.example.org" }]`. Each is passed on as written;
/// it needs a `type`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixRtcConfig {
    #[serde(default)]
    pub transports: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Conduit's `[global.media]` table: `backend = "filesystem"` and an optional `path` (default
/// `<database_path>/media`). Conduit's `directory_structure` and `retention` are accepted and
/// ignored (culvert names files by content hash).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    #[serde(default = "default_media_backend")]
    pub backend: String,
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub directory_structure: Option<toml::Value>,
    #[serde(default)]
    pub retention: Option<toml::Value>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            backend: default_media_backend(),
            path: None,
            directory_structure: None,
            retention: None,
        }
    }
}

fn default_media_backend() -> String {
    "filesystem".to_owned()
}

/// Token buckets for the endpoints people guess passwords and names on.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained login attempts per minute, per client IP and per account.
    pub login_per_minute: u32,
    pub login_burst: u32,
    /// Sustained registration attempts (and availability checks) per minute, per client IP.
    pub register_per_minute: u32,
    pub register_burst: u32,
    /// Sustained events a user may send per minute (messages and state, not appservices');
    /// 0: no limit (the default). Admins exempt or limit single users otherwise
    /// (`override_ratelimit`).
    pub message_per_minute: u32,
    pub message_burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login_per_minute: 10,
            login_burst: 10,
            register_per_minute: 10,
            register_burst: 10,
            message_per_minute: 0,
            message_burst: 10,
        }
    }
}

fn default_backend() -> String {
    "rocksdb".to_owned()
}
fn default_address() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_port() -> u16 {
    6167
}
fn default_max_request_size() -> u32 {
    20 * 1024 * 1024
}
fn default_request_header_timeout_secs() -> u64 {
    30
}
fn default_max_upload_size() -> u64 {
    50 * 1024 * 1024
}
fn default_access_token_lifetime_ms() -> u64 {
    5 * 60 * 1000
}

fn default_url_preview_max_size() -> u64 {
    10 * 1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_room_version() -> RoomVersionId {
    RoomVersionId::V12
}
/// `memory_budget_mb` when unset: a 32 MiB block cache, 32 MiB of memtables and 1,024
/// parsed events.
pub const DEFAULT_MEMORY_BUDGET_MB: f64 = 96.0;
/// What one event kept parsed is reckoned to cost: events up to 8 KiB of JSON are kept, and a
/// parsed one (a map node per object, a string per key and value) takes several times its JSON.
const ASSUMED_PARSED_EVENT_BYTES: usize = 32 * 1024;

/// The memory `memory_budget_mb` buys, by consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub block_cache_bytes: usize,
    /// All column families' write buffers together.
    pub memtable_bytes: usize,
    /// Events kept parsed ([`crate::service::rooms::timeline`]).
    pub parsed_events: usize,
}

fn default_trusted_servers() -> Vec<OwnedServerName> {
    vec![OwnedServerName::try_from("matrix.org").expect("valid server name")]
}
fn default_log() -> String {
    "info".to_owned()
}

fn default_max_event_delay() -> Millis {
    Millis(24 * 60 * 60 * 1000)
}

/// A duration in milliseconds, written as a number of milliseconds or as a number with a unit
/// (`ms`, `s`, `m`, `h`, `d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub u64);

impl Millis {
    pub fn as_millis(self) -> u64 {
        self.0
    }

    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let factor = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1000,
            "m" => 60 * 1000,
            "h" => 60 * 60 * 1000,
            "d" => 24 * 60 * 60 * 1000,
            _ => return None,
        };
        number.checked_mul(factor).map(Self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(ms) => Ok(Self(ms)),
            Written::Text(text) => Self::parse(&text).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{text}` is no duration (milliseconds, or a number with ms, s, m, h or d)"
                ))
            }),
        }
    }
}

/// A configuration problem, worded for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The directory media files are stored in.
    pub fn media_path(&self) -> PathBuf {
        self.media
            .path
            .clone()
            .unwrap_or_else(|| self.database_path.join("media"))
    }

    /// Loads the configuration from `file` (or the embedded default when `None`) and the
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist or is not a file",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file(path).nested());
            }
            None => figment = figment.merge(Toml::string(EMBEDDED_DEFAULT).nested()),
        }
        // The file is strict; the environment is not: a `CULVERT_*`/`CONDUIT_*` variable that
        // names no key (a wrapper script's `CULVERT_BIN`, a container's `CONDUIT_VERSION`) is
        // warned about and left out, as Conduit does.
        let mut ignored: Vec<String> = Vec::new();
        loop {
            let with_env = figment
                .clone()
                .merge(env_provider("CONDUIT_", &ignored))
                .merge(env_provider("CULVERT_", &ignored));
            let unknown = unknown_env_keys(&with_env);
            if unknown.is_empty() || unknown.iter().all(|k| ignored.contains(k)) {
                let mut config = Self::from_figment(with_env)?;
                config.ignored_environment = ignored;
                return Ok(config);
            }
            ignored.extend(unknown);
        }
    }

    /// Parses a config from TOML text alone (no environment); used by tests and `check-config`.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text).nested()))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|error| {
            let messages: Vec<String> = error
                .into_iter()
                .map(|e| {
                    let key = e.path.join(".");
                    if key.is_empty() {
                        format!("invalid configuration: {}", e.kind)
                    } else {
                        format!("invalid configuration key `{key}`: {}", e.kind)
                    }
                })
                .collect();
            ConfigError(messages.join("; "))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.database_backend != "rocksdb" {
            return Err(ConfigError(format!(
                "invalid configuration key `database_backend`: culvert only supports \"rocksdb\", not {:?}",
                self.database_backend
            )));
        }
        if self.registration_token.as_deref() == Some("") {
            return Err(ConfigError(
                "invalid configuration key `registration_token`: must not be empty (remove it to disable)".into(),
            ));
        }
        if self.request_header_timeout_secs == 0 {
            return Err(ConfigError(
                "invalid configuration key `request_header_timeout_secs`: must be at least 1"
                    .into(),
            ));
        }
        if self.max_request_size < 4096 {
            return Err(ConfigError(
                "invalid configuration key `max_request_size`: must be at least 4096 bytes".into(),
            ));
        }
        if self.media.backend != "filesystem" {
            return Err(ConfigError(format!(
                "invalid configuration key `media.backend`: culvert only supports \"filesystem\", not {:?}",
                self.media.backend
            )));
        }
        if let Err(e) = crate::service::outbound_guard::parse_denylist(&self.ip_range_denylist) {
            return Err(ConfigError(format!(
                "invalid configuration key `ip_range_denylist`: {e}"
            )));
        }
        if let Some(path) = &self.turn_secret_file
            && let Err(e) = std::fs::read_to_string(path)
        {
            return Err(ConfigError(format!(
                "invalid configuration key `turn_secret_file`: cannot read {}: {e}",
                path.display()
            )));
        }
        if let Some(i) =
            self.well_known.support_contacts.iter().position(|c| {
                c.role.is_empty() || (c.matrix_id.is_none() && c.email_address.is_none())
            })
        {
            return Err(ConfigError(format!(
                "invalid configuration key `well_known.support_contacts`: contact {} needs a role and a matrix_id or an email_address",
                i + 1
            )));
        }
        let has_type = |t: &serde_json::Map<String, serde_json::Value>| {
            t.get("type")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|k| !k.is_empty())
        };
        if let Some(i) = self.matrix_rtc.transports.iter().position(|t| !has_type(t)) {
            return Err(ConfigError(format!(
                "invalid configuration key `matrix_rtc.transports`: transport {} has no `type`",
                i + 1
            )));
        }
        if let Some(metrics) = &self.metrics
            && metrics.address.port() == self.port
            && self.port != 0
            && (metrics.address.ip() == self.address
                || metrics.address.ip().is_unspecified()
                || self.address.is_unspecified())
        {
            return Err(ConfigError(format!(
                "invalid configuration key `metrics.address`: {} is the server's own port; the metrics need a port of their own",
                metrics.address
            )));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError(format!("invalid configuration key `log`: {e}")));
        }
        Ok(())
    }

    /// Conduit keys present in the config that culvert accepts but does not act on.
    /// Whether federation with `server` is refused by `federation_denylist`.
    pub fn is_server_denied(&self, server: &ruma::ServerName) -> bool {
        self.federation_denylist
            .iter()
            .any(|denied| denied == server)
    }

    /// The SSRF guard of federation's connections: `ip_range_denylist` as a predicate.
    pub fn outbound_ip_guard(&self) -> Result<crate::service::federation::IpGuard, String> {
        let guard = crate::service::outbound_guard::OutboundGuard::new(&self.ip_range_denylist)?;
        Ok(std::sync::Arc::new(move |ip| !guard.is_denied(ip)))
    }

    /// How `memory_budget_mb` is spent (see the field).
    pub fn memory_plan(&self) -> MemoryPlan {
        const MIB: f64 = 1024.0 * 1024.0;
        let third = self
            .memory_budget_mb
            .unwrap_or(DEFAULT_MEMORY_BUDGET_MB)
            .max(3.0)
            / 3.0;
        MemoryPlan {
            block_cache_bytes: (self.db_cache_capacity_mb.unwrap_or(third).max(1.0) * MIB) as usize,
            memtable_bytes: (third * MIB) as usize,
            parsed_events: self
                .pdu_cache_capacity
                .map(|n| n as usize)
                .unwrap_or((third * MIB) as usize / ASSUMED_PARSED_EVENT_BYTES),
        }
    }

    pub fn unused_conduit_keys(&self) -> Vec<&'static str> {
        let set = [
            (
                "max_concurrent_requests",
                self.max_concurrent_requests.is_some(),
            ),
            (
                "enable_lightning_bolt",
                self.enable_lightning_bolt.is_some(),
            ),
            (
                "allow_check_for_updates",
                self.allow_check_for_updates.is_some(),
            ),
            (
                "conduit_cache_capacity_modifier",
                self.conduit_cache_capacity_modifier.is_some(),
            ),
            (
                "cleanup_second_interval",
                self.cleanup_second_interval.is_some(),
            ),
            (
                "max_fetch_prev_events",
                self.max_fetch_prev_events.is_some(),
            ),
            ("allow_jaeger", self.allow_jaeger.is_some()),
            ("tracing_flame", self.tracing_flame.is_some()),
            ("proxy", self.proxy.is_some()),
            ("jwt_secret", self.jwt_secret.is_some()),
            (
                "media.directory_structure",
                self.media.directory_structure.is_some(),
            ),
            ("media.retention", self.media.retention.is_some()),
            ("emergency_password", self.emergency_password.is_some()),
        ];
        set.into_iter()
            .filter(|(_, present)| *present)
            .map(|(k, _)| k)
            .collect()
    }
}

/// `PREFIX_<KEY>` variables, lower-cased, `__` for nesting; the config-path variable is not a key,
/// nor are the `ignored` ones (raw keys after the prefix, lower-case, `__` kept).
fn env_provider(prefix: &str, ignored: &[String]) -> Env {
    let ignored: Vec<String> = ignored.to_vec();
    Env::prefixed(prefix)
        .ignore(&["CONFIG"])
        .filter(move |key| !ignored.iter().any(|i| key.as_str().eq_ignore_ascii_case(i)))
        .split("__")
        .global()
}

/// The raw environment keys (after the prefix, `__` for nesting) of the unknown fields the
/// environment providers of `figment` bring.
fn unknown_env_keys(figment: &Figment) -> Vec<String> {
    let Err(errors) = figment.extract::<Config>() else {
        return Vec::new();
    };
    errors
        .into_iter()
        .filter(|e| matches!(e.kind, figment::error::Kind::UnknownField(..)))
        .filter(|e| {
            e.metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"))
        })
        .filter_map(|e| {
            let figment::error::Kind::UnknownField(field, _) = &e.kind else {
                return None;
            };
            let mut path: Vec<String> = e.path.clone();
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            Some(path.join("__"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let config = Config::from_toml_str(include_str!("../conduit.toml.example")).unwrap();
        assert_eq!(config.server_name, "example.org");
        assert!(!config.allow_registration);
        assert!(config.unused_conduit_keys().is_empty());
    }

    #[test]
    fn durability_is_one_of_three_and_group_by_default() {
        use crate::store::durability::Durability;
        let base = "[global]\nserver_name = \"a.b\"\ndatabase_path = \"/x\"\n";
        assert_eq!(
            Config::from_toml_str(base).unwrap().durability,
            Durability::Group
        );
        for (text, expected) in [
            ("process", Durability::Process),
            ("each", Durability::Each),
            ("group", Durability::Group),
        ] {
            let config =
                Config::from_toml_str(&format!("{base}durability = \"{text}\"\n")).unwrap();
            assert_eq!(config.durability, expected);
        }
        let error = Config::from_toml_str(&format!("{base}durability = \"fsync\"\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("durability"), "{error}");
    }

    #[test]
    fn the_memory_budget_is_split_in_three_unless_a_share_is_set() {
        let base = "[global]\nserver_name = \"a.b\"\ndatabase_path = \"/x\"\n";
        let plan = |extra: &str| {
            Config::from_toml_str(&format!("{base}{extra}"))
                .unwrap()
                .memory_plan()
        };
        const MIB: usize = 1 << 20;
        let default = MemoryPlan {
            block_cache_bytes: 32 * MIB,
            memtable_bytes: 32 * MIB,
            parsed_events: 1024,
        };
        assert_eq!(plan(""), default);
        assert_eq!(plan("memory_budget_mb = 96\n"), default);
        assert_eq!(
            plan("memory_budget_mb = 48\n"),
            MemoryPlan {
                block_cache_bytes: 16 * MIB,
                memtable_bytes: 16 * MIB,
                parsed_events: 512,
            }
        );
        assert_eq!(
            plan("memory_budget_mb = 48\ndb_cache_capacity_mb = 8.0\npdu_cache_capacity = 100\n"),
            MemoryPlan {
                block_cache_bytes: 8 * MIB,
                memtable_bytes: 16 * MIB,
                parsed_events: 100,
            }
        );
        // Nonsense is floored, never zero.
        assert_eq!(plan("memory_budget_mb = 0\n").memtable_bytes, MIB);
    }

    #[test]
    fn event_delays_take_milliseconds_or_units() {
        let base = "[global]\nserver_name = \"a.b\"\ndatabase_path = \"/x\"\n";
        let delay = |line: &str| {
            Config::from_toml_str(&format!("{base}{line}"))
                .map(|c| c.max_event_delay_duration.as_millis())
        };
        assert_eq!(delay("").unwrap(), 86_400_000, "a day by default");
        assert_eq!(delay("max_event_delay_duration = 0\n").unwrap(), 0);
        assert_eq!(delay("max_event_delay_duration = 1500\n").unwrap(), 1500);
        assert_eq!(
            delay("max_event_delay_duration = \"10m\"\n").unwrap(),
            600_000
        );
        assert_eq!(
            delay("max_event_delay_duration = \"2h\"\n").unwrap(),
            7_200_000
        );
        assert_eq!(
            delay("max_event_delay_duration = \"250ms\"\n").unwrap(),
            250
        );
        let error = delay("max_event_delay_duration = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_event_delay_duration"), "{error}");
    }

    #[test]
    fn rtc_transports_are_passed_on_and_need_a_type() {
        let base = "[global]\nserver_name = \"a.b\"\ndatabase_path = \"/x\"\n";
        assert!(
            Config::from_toml_str(base)
                .unwrap()
                .matrix_rtc
                .transports
                .is_empty()
        );
        let config = Config::from_toml_str(&format!(
            "{base}[global.matrix_rtc]\ntransports = [{{ type = \"livekit\", livekit_service_url = \"https://lk.a.b\" }}]\n"
        ))
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(config.matrix_rtc.transports[0].clone()),
            serde_json::json!({ "type": "livekit", "livekit_service_url": "https://lk.a.b" })
        );
        let error = Config::from_toml_str(&format!(
            "{base}[global.matrix_rtc]\ntransports = [{{ livekit_service_url = \"https://lk.a.b\" }}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("matrix_rtc.transports"), "{error}");
    }

    #[test]
    fn embedded_default_parses() {
        let config = Config::from_toml_str(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(config.server_name, "localhost");
        assert_eq!(config.port, 6167);
        assert_eq!(config.database_path, PathBuf::from("./culvert-data"));
        assert_eq!(config.default_room_version, RoomVersionId::V12);
        assert!(config.rate_limits.enabled);
    }

    #[test]
    fn media_keys_and_conduits_media_table() {
        let base = "[global]\nserver_name = \"a.b\"\ndatabase_path = \"/x\"\n";
        let config = Config::from_toml_str(base).unwrap();
        assert_eq!(config.media_path(), PathBuf::from("/x/media"));
        assert_eq!(config.max_upload_size, 50 * 1024 * 1024);
        assert!(!config.url_preview_enabled && !config.freeze_legacy_media);
        assert!(config.ip_range_denylist.iter().any(|r| r == "127.0.0.0/8"));
        // Conduit's form of the table.
        let config = Config::from_toml_str(&format!(
            "{base}[global.media]\nbackend = \"filesystem\"\npath = \"/srv/media\"\n"
        ))
        .unwrap();
        assert_eq!(config.media_path(), PathBuf::from("/srv/media"));
        let config = Config::from_toml_str(&format!(
            "{base}[global.media]\nbackend = \"filesystem\"\n[global.media.directory_structure]\ndepth = 2\nlength = 2\n"
        ))
        .unwrap();
        assert_eq!(
            config.unused_conduit_keys(),
            vec!["media.directory_structure"]
        );
        let config = Config::from_toml_str(&format!("{base}ip_range_denylist = []\n")).unwrap();
        assert!(config.ip_range_denylist.is_empty());
        for (line, key) in [
            ("ip_range_denylist = [\"10.0.0.0/99\"]", "ip_range_denylist"),
            ("media = { backend = \"s3\" }", "media.backend"),
            ("max_upload_size = -1", "max_upload_size"),
        ] {
            let err = Config::from_toml_str(&format!("{base}{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let base = "[global]\nserver_name = \"a.b\"\ndatabase_path = \"/x\"\n";
        for (line, key) in [
            ("no_such_key = 1", "no_such_key"),
            ("port = \"x\"", "port"),
            ("max_request_size = -5", "max_request_size"),
            ("log = \"[[[\"", "log"),
            ("registration_token = \"\"", "registration_token"),
            ("well_known = { clients = \"x\" }", "clients"),
        ] {
            let err = Config::from_toml_str(&format!("{base}{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
        let err =
            Config::from_toml_str("[global]\nserver_name = \"bad name\"\ndatabase_path = \"/x\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("server_name"), "{err}");
        let err = Config::from_toml_str("[global]\ndatabase_path = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server_name"), "{err}");
    }
}
