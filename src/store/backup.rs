//! Backups of the database with RocksDB's BackupEngine: consistent while the server writes
//! (memtables are flushed, then the files of that moment are copied), incremental (a file
//! already in the backup directory is not copied again), each backup checksummed.
//! `service::backup` adds the media files and decides when and where.

use std::path::Path;

use rocksdb::{
    Env,
    backup::{BackupEngine, BackupEngineOptions, RestoreOptions},
};

use super::{Store, StoreError};

/// One backup in a backup directory.
#[derive(Clone, Debug)]
pub struct BackupInfo {
    pub id: u32,
    /// When it was taken (seconds since the epoch).
    pub timestamp: i64,
    /// Bytes of database files it holds (files shared with other backups counted in each).
    pub size: u64,
    pub files: u32,
}

fn engine(dir: &Path) -> Result<BackupEngine, StoreError> {
    let mut options = BackupEngineOptions::new(dir)?;
    options.set_sync(true);
    let env = Env::new()?;
    Ok(BackupEngine::open(&options, &env)?)
}

/// The backups in `dir`, oldest first.
pub fn backups(dir: &Path) -> Result<Vec<BackupInfo>, StoreError> {
    let mut all: Vec<BackupInfo> = engine(dir)?
        .get_backup_info()
        .into_iter()
        .map(|info| BackupInfo {
            id: info.backup_id,
            timestamp: info.timestamp,
            size: info.size,
            files: info.num_files,
        })
        .collect();
    all.sort_by_key(|b| b.id);
    Ok(all)
}

impl Store {
    /// Takes a backup of the database into `dir` (made if needed) and keeps the newest `keep`
    /// backups there; returns the new one.
    pub fn back_up(&self, dir: &Path, keep: usize) -> Result<BackupInfo, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        let mut engine = engine(dir)?;
        engine.create_new_backup_flush(&self.inner.db, true)?;
        engine.purge_old_backups(keep.max(1))?;
        let newest = backups(dir)?
            .into_iter()
            .max_by_key(|b| b.id)
            .ok_or_else(|| StoreError::Other("the new backup is not listed".into()))?;
        Ok(newest)
    }
}

/// Checks backup `id` in `dir`: its files are all there with their sizes, and a restore of it
/// into `scratch` (removed afterwards) passes RocksDB's checksums of every file.
pub fn verify(dir: &Path, id: u32, scratch: &Path) -> Result<(), StoreError> {
    let mut engine = engine(dir)?;
    engine.verify_backup(id)?;
    let _ = std::fs::remove_dir_all(scratch);
    let restored = engine.restore_from_backup(scratch, scratch, &RestoreOptions::default(), id);
    let _ = std::fs::remove_dir_all(scratch);
    restored?;
    Ok(())
}

/// Restores backup `id` of `dir` into the database directory `to`, which must not hold a
/// database.
pub fn restore(dir: &Path, id: u32, to: &Path) -> Result<(), StoreError> {
    if to.join("CURRENT").exists() {
        return Err(StoreError::Other(format!(
            "{} holds a database already: restore into an empty directory",
            to.display()
        )));
    }
    let mut engine = engine(dir)?;
    engine.restore_from_backup(to, to, &RestoreOptions::default(), id)?;
    Ok(())
}
