//! Media: local uploads, and the remote media Synapse had cached (their servers may be gone).

use super::*;

/// A media row, whoever's: what the file is stored as here.
struct MediaRow {
    server: OwnedServerName,
    media_id: String,
    /// Relative to the media store.
    file: PathBuf,
    sha256: Option<String>,
    record: MediaRecord,
}

/// Synapse's own rule for a path component: `[A-Za-z0-9_\-.\[\]:]`, not empty, not `.`/`..`.
fn path_component(text: &str) -> bool {
    !text.is_empty()
        && text != "."
        && text != ".."
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']' | ':'))
}

/// Synapse's split of a file's ID into directories: `ab/cd/rest`.
fn split_id(id: &str) -> Option<PathBuf> {
    (id.len() > 4 && id.is_ascii() && path_component(id))
        .then(|| Path::new(&id[..2]).join(&id[2..4]).join(&id[4..]))
}

fn record(row: &[Cell], uploader: Option<String>) -> MediaRecord {
    let quarantined_by = row[4].text();
    MediaRecord {
        sha256: None,
        content_type: row[1].text(),
        filename: row[2].text().filter(|f| !f.is_empty()),
        size: 0,
        uploader,
        created_ts: row[3]
            .int()
            .map_or_else(crate::utils::now_millis, |t| t.max(0) as u64),
        unused_expires_ts: None,
        authenticated_only: false,
        quarantined: quarantined_by.is_some(),
        quarantined_by,
        protected: false,
    }
}

impl Import<'_> {
    pub(super) async fn media(&self, report: &mut ImportReport) -> Result<(), StartError> {
        let sha256 = |table: &str| {
            if self.db.has_column(table, "sha256") {
                "sha256"
            } else {
                "NULL"
            }
        };
        let mut all = Vec::new();
        // Uploads (not URL previews, not reservations that never got their file).
        for row in self
            .db
            .rows(
                &format!(
                    "SELECT media_id, media_type, upload_name, created_ts, quarantined_by, {}, user_id, safe_from_quarantine \
                     FROM local_media_repository WHERE media_length IS NOT NULL AND url_cache IS NULL",
                    sha256("local_media_repository")
                ),
                &[],
            )
            .map_err(StartError::Other)?
        {
            let Some(media_id) = row[0].text() else {
                continue;
            };
            let Some(file) = split_id(&media_id) else {
                report.skip(format!("media {media_id:?}: not a media ID Synapse makes"));
                continue;
            };
            let mut record = record(&row, row[6].text());
            record.protected = row[7].flag();
            all.push(MediaRow {
                server: self.settings.server_name.clone(),
                media_id,
                file: Path::new("local_content").join(file),
                sha256: row[5].text(),
                record,
            });
        }
        // Other servers' media as Synapse cached them (files named by their own IDs).
        for row in self
            .db
            .rows(
                &format!(
                    "SELECT media_id, media_type, upload_name, created_ts, quarantined_by, {}, media_origin, filesystem_id \
                     FROM remote_media_cache WHERE media_length IS NOT NULL",
                    sha256("remote_media_cache")
                ),
                &[],
            )
            .map_err(StartError::Other)?
        {
            let (Some(media_id), Some(origin), Some(fsid)) =
                (row[0].text(), row[6].text(), row[7].text())
            else {
                continue;
            };
            let (Ok(server), Some(file)) = (OwnedServerName::try_from(origin.as_str()), split_id(&fsid))
            else {
                report.skip(format!("cached media {origin:?}/{media_id:?}: unreadable"));
                continue;
            };
            if !path_component(&origin) {
                report.skip(format!("cached media {origin:?}/{media_id:?}: unreadable"));
                continue;
            }
            all.push(MediaRow {
                server,
                media_id,
                file: Path::new("remote_content").join(origin).join(file),
                sha256: row[5].text(),
                record: record(&row, None),
            });
        }
        let store = self.settings.media_store.clone().unwrap_or_default();
        let mut progress = Progress::new("media", all.len() as u64);
        for media in all {
            progress.step();
            let mxc = format!("mxc://{}/{}", media.server, media.media_id);
            let local = media.server == self.settings.server_name;
            let kind = if local {
                "media"
            } else {
                "cached remote media"
            };
            let path = store.join(&media.file);
            if !path.is_file() {
                report.skip(format!("{mxc}: its file {} is missing", path.display()));
                continue;
            }
            let Some(services) = self.services else {
                report.count(kind);
                continue;
            };
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| StartError::Other(format!("{}: {e}", path.display())))?;
            let stream =
                tokio_util::io::ReaderStream::new(file).map(|chunk| chunk.map_err(Arc::new));
            let received = services.media.receive(stream, u64::MAX).await?;
            if let Some(expected) = &media.sha256
                && received.sha256() != expected.to_ascii_lowercase()
            {
                report.skip(format!("{mxc}: its file does not match its hash"));
                continue;
            }
            if services
                .media
                .import(&media.server, &media.media_id, received, media.record)?
            {
                report.count(kind);
            } else {
                report.skip(format!("{mxc}: exists here"));
            }
        }
        progress.finish();
        Ok(())
    }
}
