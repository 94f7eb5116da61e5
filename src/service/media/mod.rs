//! The media repository: files on the filesystem, metadata in RocksDB.
//!
//! Files are named by the hex SHA-256 of their content (`<media path>/<2 hex>/<64 hex>`), so
//! identical uploads are stored once. Every record that points at a file (a media ID, a
//! thumbnail) counts as one reference in `media_files`; the file is removed when the last
//! reference goes. Reference counts and the renames/removals of files change only under
//! `files_lock`, so a concurrent upload of the same content never loses its file.
//!
//! Bodies arrive as a stream and are written to a temporary file while hashed
//! ([`Media::receive`]); nothing holds a whole file in memory. Records are keyed by server
//! name and media ID, so media fetched from other servers (federation) can live here too.

pub mod preview;
pub mod remote;
pub mod thumbnail;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use ruma::{OwnedMxcUri, OwnedUserId, ServerName, UserId, api::error::ErrorKind};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{
    Error, Result,
    config::Config,
    store::{Batch, Cf, Store, keys},
    utils,
};

pub use thumbnail::Method;

/// How long an `mxc://` URI from `/create` waits for its upload.
const UNUSED_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest a download waits for a pending upload (clients ask with `timeout_ms`).
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most `/create` media IDs a user may have waiting for their upload (429 beyond).
pub const MAX_PENDING_PER_USER: usize = 50;

/// What is stored about one piece of media (`media` column family).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Hex SHA-256 of the content: the file's name. `None` while an asynchronous upload
    /// (`/create`) has not arrived.
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    /// The local user who uploaded it (none for remote media and URL-preview images).
    pub uploader: Option<String>,
    pub created_ts: u64,
    /// Pending uploads only: when the unused `mxc://` URI expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_expires_ts: Option<u64>,
    /// Uploaded while `freeze_legacy_media` was on: not served by the legacy endpoints.
    #[serde(default)]
    pub authenticated_only: bool,
    /// Quarantined by an admin: never served.
    #[serde(default)]
    pub quarantined: bool,
    /// The admin who quarantined it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_by: Option<String>,
    /// Protected by an admin from quarantine (Synapse's `safe_from_quarantine`).
    #[serde(default)]
    pub protected: bool,
}

/// A stored thumbnail (`media_thumbnails` column family).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThumbnailRecord {
    pub sha256: String,
    pub content_type: String,
    pub size: u64,
    pub width: u32,
    pub height: u32,
}

/// A body written to a temporary file, with its hash. Dropped unused, the file goes.
pub struct ReceivedFile {
    temp: PathBuf,
    sha256: String,
    size: u64,
}

impl ReceivedFile {
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl Drop for ReceivedFile {
    fn drop(&mut self) {
        // After a commit the temporary file was renamed away; then this finds nothing.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Content ready to be served: its record and where the bytes are.
pub struct StoredContent {
    pub record: MediaRecord,
    pub path: PathBuf,
}

/// A thumbnail ready to be served.
pub struct StoredThumbnail {
    pub content_type: String,
    pub path: PathBuf,
    pub size: u64,
}

pub struct Media {
    store: Store,
    dir: PathBuf,
    tmp_dir: PathBuf,
    /// Serialises reference counts with the file renames and removals they govern.
    files_lock: Mutex<()>,
    /// Each user's media IDs from `/create` still waiting for content, with their expiry. In
    /// memory: it only enforces [`MAX_PENDING_PER_USER`], and a restart forgiving it is fine.
    pending: Mutex<HashMap<OwnedUserId, Vec<(String, u64)>>>,
    /// Decoding images is CPU- and memory-heavy: a few at a time.
    thumbnail_permits: tokio::sync::Semaphore,
    server_name: ruma::OwnedServerName,
    pub max_upload_size: u64,
    freeze_legacy: bool,
    pub previews: preview::Previewer,
    /// One lock per remote media being fetched, so concurrent requests share one fetch.
    fetches: Mutex<HashMap<Vec<u8>, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl Media {
    /// Creates the media directories and clears temporary files a crash left behind.
    pub fn open(config: &Config, store: Store) -> Result<Self, String> {
        let dir = config.media_path();
        let tmp_dir = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir).map_err(|e| {
            format!(
                "cannot create the media directory {}: {e}",
                tmp_dir.display()
            )
        })?;
        Ok(Self {
            store,
            dir,
            tmp_dir,
            files_lock: Mutex::new(()),
            pending: Mutex::default(),
            thumbnail_permits: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            server_name: config.server_name.clone(),
            max_upload_size: config.max_upload_size,
            freeze_legacy: config.freeze_legacy_media,
            previews: preview::Previewer::new(config)?,
            fetches: Mutex::default(),
        })
    }

    /// The file holding the content with this hex SHA-256.
    pub fn file_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }

    /// Whether the legacy (unauthenticated) endpoints may serve this media.
    pub fn legacy_allowed(&self, record: &MediaRecord) -> bool {
        !(self.freeze_legacy && record.authenticated_only)
    }

    /// Writes `body` to a temporary file, hashing it on the way; more than `limit` bytes is
    /// `M_TOO_LARGE` and leaves nothing behind.
    pub async fn receive<S, E>(&self, mut body: S, limit: u64) -> Result<ReceivedFile>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let temp = self.tmp_dir.join(utils::random_string(24));
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| Error::internal(format!("media temp file: {e}")))?;
        // From here on, dropping `received` removes the temporary file, whatever happens.
        let mut received = ReceivedFile {
            temp,
            sha256: String::new(),
            size: 0,
        };
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Error::new(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::Unknown,
                    format!("Could not read the upload: {e}"),
                )
            })?;
            received.size += chunk.len() as u64;
            if received.size > limit {
                return Err(Error::too_large(format!(
                    "The upload is larger than {limit} bytes."
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::internal(format!("media temp file: {e}")))?;
        }
        // The data must be on disk before the record that points at it is.
        file.sync_all()
            .await
            .map_err(|e| Error::internal(format!("media temp file: {e}")))?;
        received.sha256 = utils::hex(hasher.finish().as_ref());
        Ok(received)
    }

    /// [`Media::receive`] for bytes already in memory (thumbnails, preview images).
    pub async fn receive_bytes(&self, bytes: Vec<u8>) -> Result<ReceivedFile> {
        let stream =
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(bytes))]);
        self.receive(stream, u64::MAX).await
    }

    /// Moves `file` into the content store (unless that content is there already) and writes
    /// `prepare`'s batch with one more reference to it, all under the files lock. `prepare`
    /// may refuse (the checks that must not race another commit belong there); then nothing
    /// changes.
    fn commit(
        &self,
        file: &ReceivedFile,
        prepare: impl FnOnce(&mut Batch) -> Result<()>,
    ) -> Result<()> {
        let _guard = self.files_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Batch::new();
        prepare(&mut batch)?;
        let refs = self.ref_count(&file.sha256)?;
        let path = self.file_path(&file.sha256);
        if refs == 0 || !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::internal(format!("media directory: {e}")))?;
            }
            std::fs::rename(&file.temp, &path)
                .map_err(|e| Error::internal(format!("storing media file: {e}")))?;
        }
        batch.put(
            Cf::MediaFiles,
            file.sha256.as_bytes(),
            keys::u64_be(refs + 1),
        );
        self.store.write(batch)?;
        Ok(())
    }

    fn ref_count(&self, sha256: &str) -> Result<u64> {
        Ok(self
            .store
            .get(Cf::MediaFiles, sha256.as_bytes())?
            .and_then(|v| keys::parse_u64_be(&v))
            .unwrap_or(0))
    }

    fn media_key(server: &ServerName, media_id: &str) -> Vec<u8> {
        keys::join([server.as_bytes(), media_id.as_bytes()])
    }

    pub fn get(&self, server: &ServerName, media_id: &str) -> Result<Option<MediaRecord>> {
        self.store
            .get(Cf::Media, &Self::media_key(server, media_id))?
            .map(|v| serde_json::from_slice(&v).map_err(Error::from))
            .transpose()
    }

    fn new_media_id() -> String {
        utils::random_string(24)
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        format!("mxc://{}/{media_id}", self.server_name).into()
    }

    /// Stores an upload by a local user (or, with no uploader, by the server itself) under a
    /// new media ID.
    pub fn create_local(
        &self,
        uploader: Option<&UserId>,
        file: ReceivedFile,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<OwnedMxcUri> {
        let media_id = Self::new_media_id();
        let record = MediaRecord {
            sha256: Some(file.sha256.clone()),
            content_type,
            filename,
            size: file.size,
            uploader: uploader.map(|u| u.to_string()),
            created_ts: utils::now_millis(),
            unused_expires_ts: None,
            authenticated_only: self.freeze_legacy,
            quarantined: false,
            quarantined_by: None,
            protected: false,
        };
        let key = Self::media_key(&self.server_name, &media_id);
        let value = serde_json::to_vec(&record)?;
        self.commit(&file, |batch| {
            batch.put(Cf::Media, key, value);
            Ok(())
        })?;
        Ok(self.mxc(&media_id))
    }

    /// Stores media fetched from another server (over federation) under that server's name
    /// and media ID, so the download and thumbnail paths serve it like local media. 409
    /// `M_CANNOT_OVERWRITE_MEDIA` when it is stored already (a concurrent fetch won).
    pub fn store_remote(
        &self,
        server: &ServerName,
        media_id: &str,
        file: ReceivedFile,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<()> {
        let record = MediaRecord {
            sha256: Some(file.sha256.clone()),
            content_type,
            filename,
            size: file.size,
            uploader: None,
            created_ts: utils::now_millis(),
            unused_expires_ts: None,
            authenticated_only: self.freeze_legacy,
            quarantined: false,
            quarantined_by: None,
            protected: false,
        };
        let key = Self::media_key(server, media_id);
        let value = serde_json::to_vec(&record)?;
        self.commit(&file, |batch| {
            if self.store.get(Cf::Media, &key)?.is_some() {
                return Err(Error::new(
                    StatusCode::CONFLICT,
                    ErrorKind::CannotOverwriteMedia,
                    "This remote media is stored already.",
                ));
            }
            batch.put(Cf::Media, key.clone(), value);
            Ok(())
        })
    }

    /// Stores media another homeserver kept (`culvert import`) under its server name and
    /// media ID, with `record`'s metadata (its hash and size are the file's). Returns false
    /// (and keeps nothing) when that media ID is taken here.
    pub fn import(
        &self,
        server: &ServerName,
        media_id: &str,
        file: ReceivedFile,
        mut record: MediaRecord,
    ) -> Result<bool> {
        record.sha256 = Some(file.sha256.clone());
        record.size = file.size;
        let key = Self::media_key(server, media_id);
        if self.store.get(Cf::Media, &key)?.is_some() {
            return Ok(false);
        }
        let value = serde_json::to_vec(&record)?;
        self.commit(&file, |batch| {
            batch.put(Cf::Media, key, value);
            Ok(())
        })?;
        Ok(true)
    }

    /// `POST /create`: reserves a media ID for `uploader`; returns it and when it expires.
    pub fn create_pending(&self, uploader: &UserId) -> Result<(OwnedMxcUri, u64)> {
        let media_id = Self::new_media_id();
        let now = utils::now_millis();
        let expires = now + UNUSED_EXPIRY.as_millis() as u64;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let mine = pending.entry(uploader.to_owned()).or_default();
            mine.retain(|(_, expiry)| *expiry > now);
            if mine.len() >= MAX_PENDING_PER_USER {
                let next_free = mine.iter().map(|(_, e)| *e).min().unwrap_or(now);
                return Err(Error::limit_exceeded(Duration::from_millis(
                    next_free.saturating_sub(now),
                )));
            }
            mine.push((media_id.clone(), expires));
        }
        let record = MediaRecord {
            sha256: None,
            content_type: None,
            filename: None,
            size: 0,
            uploader: Some(uploader.to_string()),
            created_ts: now,
            unused_expires_ts: Some(expires),
            authenticated_only: self.freeze_legacy,
            quarantined: false,
            quarantined_by: None,
            protected: false,
        };
        self.store.put(
            Cf::Media,
            &Self::media_key(&self.server_name, &media_id),
            &serde_json::to_vec(&record)?,
        )?;
        Ok((self.mxc(&media_id), expires))
    }

    /// Whether `user` may upload to a media ID from `/create` now: 404 unknown or expired,
    /// 403 someone else's, 409 already uploaded. Checked before the body is read and again
    /// when it is stored.
    pub fn check_pending(&self, server: &ServerName, media_id: &str, user: &UserId) -> Result<()> {
        if server != self.server_name {
            return Err(Error::not_found("Unknown media ID."));
        }
        let record = self
            .get(server, media_id)?
            .ok_or_else(|| Error::not_found("Unknown media ID."))?;
        Self::check_pending_record(&record, user)
    }

    fn check_pending_record(record: &MediaRecord, user: &UserId) -> Result<()> {
        if record.sha256.is_some() {
            return Err(Error::new(
                StatusCode::CONFLICT,
                ErrorKind::CannotOverwriteMedia,
                "Media already uploaded.",
            ));
        }
        if record.uploader.as_deref() != Some(user.as_str()) {
            return Err(Error::forbidden(
                "This media ID was created by another user.",
            ));
        }
        if record
            .unused_expires_ts
            .is_some_and(|t| t < utils::now_millis())
        {
            return Err(Error::not_found("This media ID has expired."));
        }
        Ok(())
    }

    /// `PUT /upload/{serverName}/{mediaId}`: the content for a media ID from `/create`.
    pub fn complete_pending(
        &self,
        server: &ServerName,
        media_id: &str,
        user: &UserId,
        file: ReceivedFile,
        content_type: Option<String>,
        filename: Option<String>,
    ) -> Result<()> {
        let key = Self::media_key(server, media_id);
        self.commit(&file, |batch| {
            // Again under the lock: two uploads racing for one ID, only the first wins.
            let mut record = self
                .get(server, media_id)?
                .ok_or_else(|| Error::not_found("Unknown media ID."))?;
            Self::check_pending_record(&record, user)?;
            record.sha256 = Some(file.sha256.clone());
            record.size = file.size;
            record.content_type = content_type;
            record.filename = filename;
            record.unused_expires_ts = None;
            batch.put(Cf::Media, key, serde_json::to_vec(&record)?);
            Ok(())
        })?;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = pending.get_mut(user) {
            mine.retain(|(id, _)| id != media_id);
            if mine.is_empty() {
                pending.remove(user);
            }
        }
        Ok(())
    }

    /// The content of a media ID, waiting up to `wait` for a pending upload. 404 when unknown,
    /// expired or quarantined; 504 `M_NOT_YET_UPLOADED` when the wait ends first.
    pub async fn content(
        &self,
        server: &ServerName,
        media_id: &str,
        wait: Duration,
    ) -> Result<StoredContent> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let record = self
                .get(server, media_id)?
                .filter(|r| !r.quarantined)
                .ok_or_else(|| Error::not_found("Media not found."))?;
            if let Some(sha256) = &record.sha256 {
                let path = self.file_path(sha256);
                return Ok(StoredContent { record, path });
            }
            if record
                .unused_expires_ts
                .is_some_and(|t| t < utils::now_millis())
            {
                return Err(Error::not_found("Media not found."));
            }
            // A pending upload: poll (uploads are rare and waits short; no wake-up plumbing).
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::NotYetUploaded,
                    "The content has not been uploaded yet.",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn thumbnail_key(server: &ServerName, media_id: &str, size: thumbnail::Size) -> Vec<u8> {
        keys::join([
            server.as_bytes(),
            media_id.as_bytes(),
            format!("{}x{}-{}", size.width, size.height, size.method.as_str()).as_bytes(),
        ])
    }

    /// A thumbnail of a media ID for the requested size, snapped to the spec's standard sizes;
    /// made once, then served from the store.
    pub async fn thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        width: u32,
        height: u32,
        method: Method,
        wait: Duration,
    ) -> Result<StoredThumbnail> {
        let content = self.content(server, media_id, wait).await?;
        let size = thumbnail::Size::standard(width, height, method);
        let key = Self::thumbnail_key(server, media_id, size);
        if let Some(record) = self.stored_thumbnail(&key)? {
            return Ok(record);
        }
        let source_type = content.record.content_type.clone().unwrap_or_default();
        if !thumbnail::can_thumbnail(&source_type) {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::Unknown,
                "Cannot generate thumbnails for this content.",
            ));
        }
        let _permit = self
            .thumbnail_permits
            .acquire()
            .await
            .map_err(|e| Error::internal(format!("thumbnail semaphore: {e}")))?;
        // Another request may have made it while this one waited.
        if let Some(record) = self.stored_thumbnail(&key)? {
            return Ok(record);
        }
        let path = content.path.clone();
        let made = tokio::task::spawn_blocking(move || thumbnail::make(&path, size))
            .await
            .map_err(|e| Error::internal(format!("thumbnail task: {e}")))??;
        let sha256 = content.record.sha256.clone().unwrap_or_default();
        let (file, record) = match made {
            // The original is no larger than the thumbnail: serve the original itself.
            thumbnail::Made::Original { width, height } => {
                let record = ThumbnailRecord {
                    sha256: sha256.clone(),
                    content_type: source_type,
                    size: content.record.size,
                    width,
                    height,
                };
                (None, record)
            }
            thumbnail::Made::Encoded {
                bytes,
                content_type,
                width,
                height,
            } => {
                let file = self.receive_bytes(bytes).await?;
                let record = ThumbnailRecord {
                    sha256: file.sha256.clone(),
                    content_type: content_type.to_owned(),
                    size: file.size,
                    width,
                    height,
                };
                (Some(file), record)
            }
        };
        let value = serde_json::to_vec(&record)?;
        let media_key = Self::media_key(server, media_id);
        let prepare = |batch: &mut Batch| {
            // The media may have been deleted meanwhile: then keep nothing.
            if self.store.get(Cf::Media, &media_key)?.is_none() {
                return Err(Error::not_found("Media not found."));
            }
            batch.put(Cf::MediaThumbnails, key.clone(), value);
            Ok(())
        };
        match file {
            Some(file) => self.commit(&file, prepare)?,
            None => {
                // One more reference to the original's file, taken under the lock like any.
                let _guard = self.files_lock.lock().unwrap_or_else(|e| e.into_inner());
                let mut batch = Batch::new();
                prepare(&mut batch)?;
                let refs = self.ref_count(&sha256)?;
                batch.put(Cf::MediaFiles, sha256.as_bytes(), keys::u64_be(refs + 1));
                self.store.write(batch)?;
            }
        }
        Ok(StoredThumbnail {
            path: self.file_path(&record.sha256),
            content_type: record.content_type,
            size: record.size,
        })
    }

    fn stored_thumbnail(&self, key: &[u8]) -> Result<Option<StoredThumbnail>> {
        let Some(bytes) = self.store.get(Cf::MediaThumbnails, key)? else {
            return Ok(None);
        };
        let record: ThumbnailRecord = serde_json::from_slice(&bytes)?;
        Ok(Some(StoredThumbnail {
            path: self.file_path(&record.sha256),
            content_type: record.content_type,
            size: record.size,
        }))
    }

    /// Admin: deletes a media ID and its thumbnails; files no other record uses are removed.
    /// Returns whether the media existed.
    pub fn delete(&self, server: &ServerName, media_id: &str) -> Result<bool> {
        let _guard = self.files_lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::media_key(server, media_id);
        let Some(record) = self.get(server, media_id)? else {
            return Ok(false);
        };
        let mut batch = Batch::new();
        batch.delete(Cf::Media, key.clone());
        // Reference counts are read from the store, so several thumbnails sharing one file
        // (the original) are counted down here, in memory, before the batch is written.
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        let mut shas = Vec::new();
        if let Some(sha256) = record.sha256 {
            shas.push(sha256);
        }
        let prefix = keys::prefix(&key);
        for entry in self.store.scan_prefix(Cf::MediaThumbnails, &prefix) {
            let (thumb_key, value) = entry?;
            batch.delete(Cf::MediaThumbnails, thumb_key.to_vec());
            let thumb: ThumbnailRecord = serde_json::from_slice(&value)?;
            shas.push(thumb.sha256);
        }
        for sha256 in &shas {
            let refs = match counts.get(sha256) {
                Some(n) => *n,
                None => self.ref_count(sha256)?,
            };
            counts.insert(sha256.clone(), refs.saturating_sub(1));
        }
        let mut unreferenced = Vec::new();
        for (sha256, refs) in counts {
            if refs == 0 {
                batch.delete(Cf::MediaFiles, sha256.as_bytes());
                unreferenced.push(sha256);
            } else {
                batch.put(Cf::MediaFiles, sha256.as_bytes(), keys::u64_be(refs));
            }
        }
        self.store.write(batch)?;
        for sha256 in unreferenced {
            let _ = std::fs::remove_file(self.file_path(&sha256));
        }
        Ok(true)
    }

    /// Admin: quarantines (or releases) a media ID; quarantined media is never served.
    /// Returns whether the media exists.
    pub fn set_quarantined(
        &self,
        server: &ServerName,
        media_id: &str,
        quarantined: bool,
    ) -> Result<bool> {
        self.change(server, media_id, |record| {
            record.quarantined = quarantined;
            if !quarantined {
                record.quarantined_by = None;
            }
        })
    }

    /// Admin: quarantines a media ID in the name of admin `by`, or releases it (`None`).
    pub fn set_quarantined_by(
        &self,
        server: &ServerName,
        media_id: &str,
        by: Option<String>,
    ) -> Result<bool> {
        self.change(server, media_id, |record| {
            record.quarantined = by.is_some();
            record.quarantined_by = by;
        })
    }

    /// Admin: protects a media ID from quarantine, or lifts the protection.
    pub fn set_protected(
        &self,
        server: &ServerName,
        media_id: &str,
        protected: bool,
    ) -> Result<bool> {
        self.change(server, media_id, |record| record.protected = protected)
    }

    /// Changes a media record (under the files' lock, as deletions take it); whether it exists.
    fn change(
        &self,
        server: &ServerName,
        media_id: &str,
        change: impl FnOnce(&mut MediaRecord),
    ) -> Result<bool> {
        let _guard = self.files_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut record) = self.get(server, media_id)? else {
            return Ok(false);
        };
        change(&mut record);
        self.store.put(
            Cf::Media,
            &Self::media_key(server, media_id),
            &serde_json::to_vec(&record)?,
        )?;
        Ok(true)
    }

    /// The lock that fetches of `server`'s `media_id` share (see `remote`).
    pub fn fetch_lock(
        &self,
        server: &ServerName,
        media_id: &str,
    ) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        fetches
            .entry(Self::media_key(server, media_id))
            .or_default()
            .clone()
    }

    /// Forgets a fetch's lock once it is over (waiters still hold their clone of it).
    pub fn fetch_done(&self, server: &ServerName, media_id: &str) {
        let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        fetches.remove(&Self::media_key(server, media_id));
    }

    /// The media directory (tests count its files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
