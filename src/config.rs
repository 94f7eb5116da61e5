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
    /// TLS served directly by culvert (used by the federation work; accepted now).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_request_size")]
    pub max_request_size: u32,
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
    /// RocksDB block cache size.
    #[serde(default = "default_db_cache_capacity_mb")]
    pub db_cache_capacity_mb: f64,
    #[serde(default = "default_rocksdb_max_open_files")]
    pub rocksdb_max_open_files: i32,
    /// Rate limits for login and registration (culvert's own table).
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    /// Application-service registration files (the standard YAML: `id`, `url`, `as_token`,
    /// `hs_token`, `sender_localpart`, `namespaces`, …), loaded at start-up. A file that does not
    /// parse or validate stops start-up with a message naming it.
    #[serde(default)]
    pub app_service_config_files: Vec<PathBuf>,

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
    pub pdu_cache_capacity: Option<u32>,
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
    #[serde(default)]
    pub turn_ttl: Option<u64>,
    #[serde(default)]
    pub media: Option<toml::Value>,
    #[serde(default)]
    pub emergency_password: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Path to the PEM certificate chain.
    pub certs: PathBuf,
    /// Path to the PEM private key.
    pub key: PathBuf,
}

/// What `/.well-known/matrix/{client,server}` answer. Unset: 404.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WellKnownConfig {
    /// Base URL of the client API, e.g. "https://matrix.example.org".
    pub client: Option<String>,
    /// Delegated federation endpoint, e.g. "matrix.example.org:443".
    pub server: Option<String>,
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
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login_per_minute: 10,
            login_burst: 10,
            register_per_minute: 10,
            register_burst: 10,
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
fn default_true() -> bool {
    true
}
fn default_room_version() -> RoomVersionId {
    RoomVersionId::V12
}
fn default_trusted_servers() -> Vec<OwnedServerName> {
    vec![OwnedServerName::try_from("matrix.org").expect("valid server name")]
}
fn default_log() -> String {
    "info".to_owned()
}
fn default_db_cache_capacity_mb() -> f64 {
    32.0
}
fn default_rocksdb_max_open_files() -> i32 {
    512
}

/// A configuration problem, worded for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
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
        Self::from_figment(
            figment
                .merge(env_provider("CONDUIT_"))
                .merge(env_provider("CULVERT_")),
        )
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
        if self.max_request_size < 4096 {
            return Err(ConfigError(
                "invalid configuration key `max_request_size`: must be at least 4096 bytes".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError(format!("invalid configuration key `log`: {e}")));
        }
        Ok(())
    }

    /// Conduit keys present in the config that culvert accepts but does not act on.
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
            ("pdu_cache_capacity", self.pdu_cache_capacity.is_some()),
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
            ("turn_username", self.turn_username.is_some()),
            ("turn_password", self.turn_password.is_some()),
            ("turn_uris", self.turn_uris.is_some()),
            ("turn_secret", self.turn_secret.is_some()),
            ("turn_ttl", self.turn_ttl.is_some()),
            ("media", self.media.is_some()),
            ("emergency_password", self.emergency_password.is_some()),
        ];
        set.into_iter()
            .filter(|(_, present)| *present)
            .map(|(k, _)| k)
            .collect()
    }
}

/// `PREFIX_<KEY>` variables, lower-cased, `__` for nesting; the config-path variable is not a key.
fn env_provider(prefix: &str) -> Env {
    Env::prefixed(prefix)
        .ignore(&["CONFIG"])
        .split("__")
        .global()
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
    fn embedded_default_parses() {
        let config = Config::from_toml_str(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(config.server_name, "localhost");
        assert_eq!(config.port, 6167);
        assert_eq!(config.database_path, PathBuf::from("./culvert-data"));
        assert_eq!(config.default_room_version, RoomVersionId::V12);
        assert!(config.rate_limits.enabled);
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
