//! The command line: `culvert [serve]`, `check-config`, `user …` admin commands and `backup …`:
//! `user` and `backup create` open the database while the server is stopped and ask the
//! running server otherwise (through its admin API, with the token it leaves for the command
//! line: `service::admin::cli`).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    config::Config,
    server,
    service::{
        Services, StartError,
        users::{self, Users},
    },
    utils,
};

#[derive(Parser, Debug)]
#[command(name = "culvert", version, about = "A lightweight Matrix homeserver")]
pub struct Cli {
    /// Config file (Conduit's TOML format). Also CULVERT_CONFIG or CONDUIT_CONFIG. Without one,
    /// an embedded default is used (server_name "localhost", data in ./culvert-data).
    #[arg(long, short, global = true, env = "CULVERT_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Check the configuration and print the effective settings, then exit.
    CheckConfig,
    /// Manage accounts, whether the server runs or not.
    #[command(subcommand)]
    User(UserCommand),
    /// Replace the server's signing key (stop the server first). The old key stays published
    /// in `old_verify_keys`, so what it signed still verifies.
    RotateSigningKey,
    /// Backups of the database and the media files, in `[global.backup] path`.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Move in from another homeserver: its database into this server's (stop both first).
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand, Debug)]
enum ImportCommand {
    /// A Conduit database (0.9–0.11, RocksDB): the signing key, accounts with their
    /// passwords, devices and access tokens, account data, filters, rooms with their
    /// history, aliases, the directory and media. The config's server_name must be
    /// Conduit's. The Conduit database is only read.
    Conduit {
        /// Conduit's `database_path` (its media are read from `media/` inside it).
        #[arg(long)]
        from: PathBuf,
        /// Read everything and report what would be imported; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Import into a database that already holds accounts or rooms.
        #[arg(long)]
        force: bool,
    },
    /// A Synapse database (1.100 or later, SQLite or PostgreSQL): the signing key, accounts with their
    /// passwords (bcrypt, replaced by Argon2 at the next login), devices and access tokens,
    /// account data, push rules, filters, rooms with their history, aliases, the directory,
    /// receipts, local media and E2EE keys. The config's server_name must be Synapse's. The
    /// Synapse database is only read.
    Synapse {
        /// Synapse's homeserver.yaml (repeat for further config files; later ones win).
        #[arg(long = "synapse-config", required_unless_present = "database")]
        synapse_config: Vec<PathBuf>,
        /// Its database, if not the one its config names: an SQLite file or a PostgreSQL
        /// connection string (`postgresql://user:password@host/dbname`).
        #[arg(long)]
        database: Option<PathBuf>,
        /// Its media store, if not the one its config names.
        #[arg(long)]
        media_store: Option<PathBuf>,
        /// Its signing key file, if not the one its config names.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Read everything and report what would be imported; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Import into a database that already holds accounts or rooms.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BackupCommand {
    /// Take a backup (the running server takes it if it runs; writes go on meanwhile).
    Create,
    /// List the backups kept.
    List,
    /// Check a backup (the newest unless ID): database files against their checksums, media
    /// files against their hashes.
    Verify { id: Option<u32> },
    /// Restore a backup (the newest unless ID) into a new, empty database directory; point
    /// `database_path` at it (media go to its `media` directory).
    Restore {
        id: Option<u32>,
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create an account. Without --password a random one is generated and printed.
    Create {
        name: String,
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        password: Option<String>,
    },
    /// Set a new password (random unless given) and log out all of the account's devices.
    ResetPassword {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Deactivate an account for good.
    Deactivate { name: String },
    /// List all accounts.
    List,
}

/// culvert's own allocations go to mimalloc (`main.rs`); RocksDB's C++ ones still go to glibc.
///
/// - mimalloc gives memory it no longer uses back to the system at once (`purge_delay` 0; its
///   default of 1 s kept a 1,000-room sliding sync 3 MiB higher and was slower there too), and
///   does not commit its arenas up front (`arena_eager_commit`). `MIMALLOC_*` variables still
///   override both.
/// - glibc raises its mmap threshold each time a large mmapped block is freed, after which
///   large buffers come from the per-thread heaps and stay there: a burst of logins (Argon2's
///   19 MiB per password hash, when glibc served culvert's allocations) left the server 2 GiB
///   larger for good. A fixed threshold sends such buffers straight back to the system.
fn tune_allocator() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: setting options is what mimalloc's API is for; called once, before other threads.
    unsafe {
        libmimalloc_sys::mi_option_set_default(PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; it is called once, before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

pub fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let config_path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("CONDUIT_CONFIG").map(PathBuf::from));
    let config = match Config::load(config_path.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("culvert: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("culvert: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => server::start(config).await?.run_until_signal().await,
            Command::CheckConfig => {
                println!("configuration is valid");
                println!("server_name = {}", config.server_name);
                println!("database_path = {}", config.database_path.display());
                println!("listening on {}:{}", config.address, config.port);
                println!("allow_registration = {}", config.allow_registration);
                let appservices = crate::service::appservice::check_files(
                    &config.server_name,
                    &config.app_service_config_files,
                )
                .map_err(StartError::Other)?;
                for service in &appservices {
                    println!("application service {:?}: registration valid", service.id());
                }
                for key in config.unused_conduit_keys() {
                    println!(
                        "note: `{key}` is accepted for Conduit compatibility but has no effect"
                    );
                }
                for key in &config.ignored_environment {
                    println!(
                        "note: an environment variable names `{}`, which is no configuration key; ignored",
                        key.to_uppercase()
                    );
                }
                Ok(())
            }
            Command::User(command) => user_command(config, command).await,
            Command::Backup(command) => backup_command(config, command).await,
            Command::Import(ImportCommand::Conduit {
                from,
                dry_run,
                force,
            }) => {
                let options = crate::service::import::ImportOptions { dry_run, force };
                let report =
                    crate::service::import::conduit::import(config, &from, options).await?;
                print!("{}", report.render(dry_run));
                Ok(())
            }
            Command::Import(ImportCommand::Synapse {
                synapse_config,
                database,
                media_store,
                signing_key,
                dry_run,
                force,
            }) => {
                let options = crate::service::import::ImportOptions { dry_run, force };
                let source = crate::service::import::synapse::SynapseSource {
                    configs: synapse_config,
                    database,
                    media_store,
                    signing_key,
                };
                let report =
                    crate::service::import::synapse::import(config, &source, options).await?;
                print!("{}", report.render(dry_run));
                Ok(())
            }
            Command::RotateSigningKey => {
                let services = Services::open(config)?;
                let key_id = services.globals.rotate_signing_key()?;
                println!("new signing key {key_id}; the old one is kept in old_verify_keys");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("culvert: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let mut filter = std::env::var("RUST_LOG")
        .ok()
        .unwrap_or_else(|| filter.to_owned());
    // ruma's auth rules log every check at `info`: one line per event's auth check would
    // drown the server's own lines. Quieter unless the filter names that crate.
    if !filter.contains("ruma_state_res") {
        filter.push_str(",ruma_state_res=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn user_command(config: Config, command: UserCommand) -> Result<(), StartError> {
    let services = match Services::open(config.clone()) {
        Ok(services) => services,
        // The server runs: ask it.
        Err(StartError::Store(crate::store::StoreError::Locked(_))) => {
            return live::user_command(&config, command).await;
        }
        Err(e) => return Err(e),
    };
    let server_name = services.server_name.clone();
    match command {
        UserCommand::Create {
            name,
            admin,
            password,
        } => {
            let user_id = Users::parse_new_localpart(&name, &server_name)?;
            let (password, generated) = password_or_random(password);
            let hash = users::hash_password(&password)?;
            let record = services
                .users
                .create(&user_id, Some(hash), admin, false, |_| {})
                .await?;
            println!(
                "created {user_id}{}",
                if record.admin { " (admin)" } else { "" }
            );
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::ResetPassword { name, password } => {
            let user_id = existing_user(&services, &name)?;
            let (password, generated) = password_or_random(password);
            let hash = users::hash_password(&password)?;
            // As the admin API does it (and announcing the devices' going).
            services.set_password(&user_id, hash, true).await?;
            println!("password of {user_id} reset; all its devices were logged out");
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::Deactivate { name } => {
            let user_id = existing_user(&services, &name)?;
            services.deactivate_account(&user_id, false).await?;
            println!("deactivated {user_id}; it left its rooms");
        }
        UserCommand::List => {
            for (user_id, record) in services.users.list()? {
                let mut flags = Vec::new();
                if record.admin {
                    flags.push("admin");
                }
                if record.deactivated {
                    flags.push("deactivated");
                }
                if record.guest {
                    flags.push("guest");
                }
                if record.locked {
                    flags.push("locked");
                }
                println!("{user_id}\t{}", flags.join(","));
            }
        }
    }
    services
        .store
        .flush()
        .map_err(|e| StartError::Other(e.to_string()))?;
    Ok(())
}

async fn backup_command(config: Config, command: BackupCommand) -> Result<(), StartError> {
    use crate::service::backup;
    backup::settings(&config).map_err(StartError::Other)?;
    match command {
        BackupCommand::Create => {
            let store = match crate::store::Store::open(
                &config.database_path,
                &crate::store::StoreOptions::default(),
            ) {
                Ok(store) => store,
                // The server runs: it takes the backup.
                Err(crate::store::StoreError::Locked(_)) => {
                    return live::create_backup(&config).await;
                }
                Err(e) => return Err(e.into()),
            };
            let report = tokio::task::spawn_blocking(move || backup::create(&store, &config))
                .await
                .map_err(|e| StartError::Other(e.to_string()))?
                .map_err(StartError::Other)?;
            println!(
                "backup {} taken: {} bytes of database files; {} media files copied ({} in the backup directory)",
                report.backup.id, report.backup.size, report.media_copied, report.media_files
            );
        }
        BackupCommand::List => {
            let backups = backup::list(&config).map_err(StartError::Other)?;
            if backups.is_empty() {
                println!("no backups yet");
            }
            for b in backups {
                println!(
                    "{}\t{}\t{} bytes\t{} files",
                    b.id,
                    utils::format_millis(b.timestamp.max(0) as u64 * 1000),
                    b.size,
                    b.files
                );
            }
        }
        BackupCommand::Verify { id } => {
            let id = tokio::task::spawn_blocking(move || backup::verify(&config, id))
                .await
                .map_err(|e| StartError::Other(e.to_string()))?
                .map_err(StartError::Other)?;
            println!("backup {id} is sound");
        }
        BackupCommand::Restore { id, to } => {
            let target = to.clone();
            let id = tokio::task::spawn_blocking(move || backup::restore(&config, id, &to))
                .await
                .map_err(|e| StartError::Other(e.to_string()))?
                .map_err(StartError::Other)?;
            println!(
                "backup {id} restored into {}: set database_path to it (media are in its media directory)",
                target.display()
            );
        }
    }
    Ok(())
}

fn existing_user(services: &Services, name: &str) -> Result<ruma::OwnedUserId, StartError> {
    let user_id = Users::parse_existing(name, &services.server_name)?;
    match services.users.get(&user_id)? {
        Some(record) if !record.deactivated => Ok(user_id),
        Some(_) => Err(StartError::Other(format!("{user_id} is deactivated"))),
        None => Err(StartError::Other(format!("no account {user_id}"))),
    }
}

fn password_or_random(password: Option<String>) -> (String, bool) {
    match password {
        Some(password) => (password, false),
        None => (utils::random_string(20), true),
    }
}

/// The `user` commands against a running server: the same work through its admin API.
mod live {
    use reqwest::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::{UserCommand, password_or_random};
    use crate::{
        config::Config,
        service::{StartError, admin::cli, users::Users},
    };

    struct Server {
        http: reqwest::Client,
        access: cli::CliAccess,
    }

    impl Server {
        async fn call(
            &self,
            method: Method,
            path: &str,
            body: Option<Value>,
        ) -> Result<(StatusCode, Value), StartError> {
            let mut request = self
                .http
                .request(method, format!("{}{path}", self.access.url))
                .bearer_auth(&self.access.token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| StartError::Other(format!("cannot reach the running server: {e}")))?;
            let status = response.status();
            let body = response.json().await.unwrap_or(Value::Null);
            Ok((status, body))
        }

        /// The answer, or its Matrix error as the command's error.
        async fn ok(
            &self,
            method: Method,
            path: &str,
            body: Option<Value>,
        ) -> Result<Value, StartError> {
            let (status, body) = self.call(method, path, body).await?;
            if status.is_success() {
                return Ok(body);
            }
            Err(StartError::Other(format!(
                "the server refused: {} {}",
                body["errcode"].as_str().unwrap_or(status.as_str()),
                body["error"].as_str().unwrap_or_default()
            )))
        }
    }

    /// The running server, through the access file it left.
    fn connect(config: &Config) -> Result<Server, StartError> {
        let access = cli::read_access(&config.database_path).map_err(StartError::Other)?;
        if access.url.starts_with("https") {
            return Err(StartError::Other(
                "the server runs with TLS, which this command does not speak: stop it first".into(),
            ));
        }
        Ok(Server {
            http: reqwest::Client::new(),
            access,
        })
    }

    /// `culvert backup create` while the server runs: it takes the backup.
    pub async fn create_backup(config: &Config) -> Result<(), StartError> {
        let server = connect(config)?;
        let report = server
            .ok(Method::POST, "/_culvert/admin/v1/backups", Some(json!({})))
            .await?;
        println!(
            "backup {} taken by the running server: {} bytes of database files; {} media files copied ({} in the backup directory)",
            report["backup_id"], report["size"], report["media_copied"], report["media_files"]
        );
        Ok(())
    }

    pub async fn user_command(config: &Config, command: UserCommand) -> Result<(), StartError> {
        let server = connect(config)?;
        let server_name = &config.server_name;
        match command {
            UserCommand::Create {
                name,
                admin,
                password,
            } => {
                let user_id = Users::parse_new_localpart(&name, server_name)?;
                let path = format!("/_synapse/admin/v2/users/{user_id}");
                let (status, _) = server.call(Method::GET, &path, None).await?;
                if status == StatusCode::OK {
                    return Err(StartError::Other(format!("{user_id} exists already")));
                }
                let (password, generated) = password_or_random(password);
                let body = json!({ "password": password, "admin": admin });
                let created = server.ok(Method::PUT, &path, Some(body)).await?;
                let admin = created["admin"].as_bool().unwrap_or(false);
                println!("created {user_id}{}", if admin { " (admin)" } else { "" });
                if generated {
                    println!("password: {password}");
                }
            }
            UserCommand::ResetPassword { name, password } => {
                let user_id = Users::parse_existing(&name, server_name)?;
                let (password, generated) = password_or_random(password);
                let body = json!({ "new_password": password, "logout_devices": true });
                server
                    .ok(
                        Method::POST,
                        &format!("/_synapse/admin/v1/reset_password/{user_id}"),
                        Some(body),
                    )
                    .await?;
                println!("password of {user_id} reset; all its devices were logged out");
                if generated {
                    println!("password: {password}");
                }
            }
            UserCommand::Deactivate { name } => {
                let user_id = Users::parse_existing(&name, server_name)?;
                server
                    .ok(
                        Method::POST,
                        &format!("/_synapse/admin/v1/deactivate/{user_id}"),
                        Some(json!({})),
                    )
                    .await?;
                println!("deactivated {user_id}; it left its rooms");
            }
            UserCommand::List => {
                let mut from = 0u64;
                loop {
                    let path =
                        format!("/_synapse/admin/v3/users?locked=true&limit=500&from={from}");
                    let page = server.ok(Method::GET, &path, None).await?;
                    for user in page["users"].as_array().into_iter().flatten() {
                        let flags: Vec<&str> = [
                            ("admin", "admin"),
                            ("deactivated", "deactivated"),
                            ("is_guest", "guest"),
                            ("locked", "locked"),
                        ]
                        .into_iter()
                        .filter(|(field, _)| user[field] == true)
                        .map(|(_, flag)| flag)
                        .collect();
                        println!(
                            "{}\t{}",
                            user["name"].as_str().unwrap_or_default(),
                            flags.join(",")
                        );
                    }
                    match page["next_token"].as_str().and_then(|t| t.parse().ok()) {
                        Some(next) => from = next,
                        None => break,
                    }
                }
            }
        }
        Ok(())
    }
}
