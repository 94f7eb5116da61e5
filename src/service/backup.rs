//! Online backups: the database through RocksDB's BackupEngine (`store::backup`: consistent
//! while the server writes, incremental, checksummed) and the media files beside it, in the
//! directory `[global.backup] path` names, the newest `keep` kept.
//!
//! Layout: `<path>/db/` (the BackupEngine's), `<path>/media/<2 hex>/<sha256>` (files are named
//! by their content's hash and never change, so each is copied once and checked by hashing
//! it again). The database goes first, then the media: every file the backed-up database
//! names was on disk when its copy began, unless an admin deleted it in between. Media files
//! stay in the backup directory after their media is deleted (older backups may name them).
//!
//! `create` runs in the server (the admin API, the admin room, `culvert backup create`
//! against a running server) or on a stopped server's database; `list`, `verify` and
//! `restore` read only the backup directory.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use crate::{
    config::{BackupConfig, Config},
    store::{
        Store,
        backup::{self, BackupInfo},
    },
    utils,
};

/// What one `create` did.
#[derive(Clone, Debug)]
pub struct BackupReport {
    pub backup: BackupInfo,
    /// Media files copied this time (the others were in the backup directory already).
    pub media_copied: u64,
    pub media_bytes: u64,
    /// Media files the backup directory holds.
    pub media_files: u64,
}

/// Serialises backups taken by this process.
static BACKUP_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The backup settings, checked: configured, and the directory outside the database's.
pub fn settings(config: &Config) -> Result<&BackupConfig, String> {
    let backup = config
        .backup
        .as_ref()
        .ok_or("no backup directory is configured: set `backup = { path = \"…\" }` in [global]")?;
    let inside = |outer: &Path| {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        absolute(&backup.path).starts_with(absolute(outer))
    };
    if inside(&config.database_path) {
        return Err(format!(
            "the backup directory {} is inside the database directory {}: choose one outside it",
            backup.path.display(),
            config.database_path.display()
        ));
    }
    Ok(backup)
}

fn db_dir(backup: &BackupConfig) -> PathBuf {
    backup.path.join("db")
}

fn media_dir(backup: &BackupConfig) -> PathBuf {
    backup.path.join("media")
}

/// Takes a backup of `store` and the media files (blocking: run it off the async threads).
pub fn create(store: &Store, config: &Config) -> Result<BackupReport, String> {
    let settings = settings(config)?;
    let _guard = BACKUP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    tracing::info!(path = %settings.path.display(), "backup: the database");
    let backup = store
        .back_up(&db_dir(settings), settings.keep)
        .map_err(|e| format!("the database backup failed: {e}"))?;
    tracing::info!(
        id = backup.id,
        bytes = backup.size,
        "backup: the database is done; the media files"
    );
    let (media_copied, media_bytes, media_files) =
        copy_media(&config.media_path(), &media_dir(settings))?;
    tracing::info!(id = backup.id, media_copied, media_files, "backup: done");
    Ok(BackupReport {
        backup,
        media_copied,
        media_bytes,
        media_files,
    })
}

/// Whether `name` is a media file's (64 hex digits); uploads in progress have other names.
fn media_file_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every media file under `dir`: `(two-digit directory, file name)`.
fn media_files(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut files = Vec::new();
    let Ok(shards) = std::fs::read_dir(dir) else {
        return Ok(files);
    };
    for shard in shards {
        let shard = shard.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        if shard_name.len() != 2 || !shard.path().is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(shard.path())
            .map_err(|e| format!("reading {}: {e}", shard.path().display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", shard.path().display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if media_file_name(&name) {
                files.push((shard_name.clone(), name));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Copies the media files `to` lacks; returns (copied, bytes copied, files in `to`).
fn copy_media(from: &Path, to: &Path) -> Result<(u64, u64, u64), String> {
    let (mut copied, mut bytes, mut total) = (0, 0, 0);
    for (shard, name) in media_files(from)? {
        total += 1;
        let target = to.join(&shard).join(&name);
        if target.exists() {
            continue;
        }
        let source = from.join(&shard).join(&name);
        std::fs::create_dir_all(to.join(&shard))
            .map_err(|e| format!("cannot create {}: {e}", to.join(&shard).display()))?;
        let temporary = target.with_extension("partial");
        let written = (|| -> std::io::Result<u64> {
            let mut input = std::fs::File::open(&source)?;
            let mut output = std::fs::File::create(&temporary)?;
            let n = std::io::copy(&mut input, &mut output)?;
            output.flush()?;
            output.sync_all()?;
            std::fs::rename(&temporary, &target)?;
            Ok(n)
        })();
        match written {
            Ok(n) => {
                copied += 1;
                bytes += n;
            }
            // Deleted since the database was backed up: nothing to keep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.exists() => {
                let _ = std::fs::remove_file(&temporary);
                total -= 1;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(format!("copying {}: {e}", source.display()));
            }
        }
    }
    Ok((copied, bytes, total))
}

/// The backups kept, oldest first.
pub fn list(config: &Config) -> Result<Vec<BackupInfo>, String> {
    let settings = settings(config)?;
    if !db_dir(settings).exists() {
        return Ok(Vec::new());
    }
    backup::backups(&db_dir(settings)).map_err(|e| e.to_string())
}

/// The newest backup's ID, or `id` if it exists.
fn chosen(config: &Config, id: Option<u32>) -> Result<u32, String> {
    let all = list(config)?;
    match id {
        Some(id) if all.iter().any(|b| b.id == id) => Ok(id),
        Some(id) => Err(format!("there is no backup {id}")),
        None => all
            .last()
            .map(|b| b.id)
            .ok_or_else(|| "there is no backup yet".to_owned()),
    }
}

/// Checks a backup (the newest unless `id`): the database's files against their checksums
/// (by restoring them into a scratch directory beside the backups), and every media file
/// against its name. Returns the backup checked.
pub fn verify(config: &Config, id: Option<u32>) -> Result<u32, String> {
    let settings = settings(config)?;
    let id = chosen(config, id)?;
    let scratch = settings
        .path
        .join(format!(".verify-{}", utils::random_string(8)));
    backup::verify(&db_dir(settings), id, &scratch)
        .map_err(|e| format!("backup {id} is damaged: {e}"))?;
    let media = media_dir(settings);
    for (shard, name) in media_files(&media)? {
        let path = media.join(&shard).join(&name);
        let content =
            std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if utils::hex(&utils::sha256(&content)) != name.to_lowercase() {
            return Err(format!(
                "media file {} is damaged: its content does not match its name",
                path.display()
            ));
        }
    }
    Ok(id)
}

/// Restores a backup (the newest unless `id`) into `to`, a new database directory: the
/// database, and the media files into `to/media` (the default media path of a server whose
/// `database_path` is `to`). Returns the backup restored.
pub fn restore(config: &Config, id: Option<u32>, to: &Path) -> Result<u32, String> {
    let settings = settings(config)?;
    let id = chosen(config, id)?;
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    backup::restore(&db_dir(settings), id, to).map_err(|e| e.to_string())?;
    copy_media(&media_dir(settings), &to.join("media"))?;
    Ok(id)
}

impl super::Services {
    /// Takes a backup now (the server keeps running; writes go on meanwhile).
    pub async fn create_backup(&self) -> crate::Result<BackupReport> {
        settings(&self.config).map_err(crate::Error::invalid_param)?;
        let store = self.store.clone();
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || create(&store, &config))
            .await
            .map_err(|e| crate::Error::internal(format!("backup task: {e}")))?
            .map_err(crate::Error::internal)
    }
}
