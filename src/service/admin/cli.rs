//! How the command line reaches a running server: at start-up the server writes, into its
//! database directory, a file readable only by the account it runs as, holding its local
//! address and a fresh random token. A request with that token acts as the server's own admin
//! (`@culvert:server`) on the admin API; `culvert user …` reads the file when the database is
//! in use, so the same commands work whether the server runs or not. Whoever can read the
//! database can do anything anyway; nobody else can read the file.

use std::{net::SocketAddr, path::Path, sync::OnceLock};

use ruma::{OwnedUserId, ServerName};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, service::Services, utils};

/// The file's name, in the database directory.
pub const FILE_NAME: &str = "admin-cli.json";

/// What the file holds.
#[derive(Serialize, Deserialize)]
pub struct CliAccess {
    /// Where the server listens, as the command line reaches it (`http://127.0.0.1:6167`).
    pub url: String,
    pub token: String,
}

/// The token of this run, once written.
#[derive(Default)]
pub struct CliToken(OnceLock<String>);

impl Services {
    /// Writes the command line's access file for a server listening on `addr` (a fresh token
    /// each start; owner-only permissions from the moment it exists).
    pub fn write_cli_access(&self, addr: SocketAddr, tls: bool) -> Result<()> {
        let token = self
            .cli_token
            .0
            .get_or_init(|| utils::random_string(32))
            .clone();
        let host = match addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let scheme = if tls { "https" } else { "http" };
        let access = CliAccess {
            url: format!("{scheme}://{host}:{}", addr.port()),
            token,
        };
        let path = self.config.database_path.join(FILE_NAME);
        write_private(&path, &serde_json::to_vec(&access)?)
            .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))
    }

    /// Whether `token` is the command line's token of this run (compared in constant time).
    pub fn is_cli_token(&self, token: &str) -> bool {
        self.cli_token
            .0
            .get()
            .is_some_and(|t| utils::constant_time_eq(t.as_bytes(), token.as_bytes()))
    }

    /// The server's own user, as whom the command line acts.
    pub fn server_user(&self) -> OwnedUserId {
        server_user(&self.server_name)
    }
}

/// The server's own user on `server_name` (`@culvert:server`).
pub fn server_user(server_name: &ServerName) -> OwnedUserId {
    OwnedUserId::try_from(format!(
        "@{}:{}",
        crate::service::users::SERVER_LOCALPART,
        server_name
    ))
    .expect("a server name makes a valid user ID")
}

/// Replaces `path` with `contents`, readable and writable by the owner only.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Reads the access file of the server using `database_path`.
pub fn read_access(database_path: &Path) -> std::result::Result<CliAccess, String> {
    let path = database_path.join(FILE_NAME);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "the server is running, and its access file {} cannot be read ({e}): run this as \
             the account the server runs as (e.g. sudo -u _culvert), or stop the server",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is damaged: {e}", path.display()))
}
