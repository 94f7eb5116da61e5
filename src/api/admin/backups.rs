//! culvert's own admin endpoints for backups (Synapse has none): take one while the server
//! runs, list them. Under `/_culvert/admin/v1/`, for server admins and the command line.

use axum::{Json, extract};
use serde_json::{Value, json};

use super::Admin;
use crate::{Result, api::ruma::State, service::backup};

/// `POST /_culvert/admin/v1/backups`: takes a backup now; answers when it is done.
pub async fn create(
    extract::State(services): extract::State<State>,
    admin: Admin,
) -> Result<Json<Value>> {
    let report = services.create_backup().await?;
    admin.audit("backup", &report.backup.id);
    Ok(Json(json!({
        "backup_id": report.backup.id,
        "timestamp": report.backup.timestamp,
        "size": report.backup.size,
        "files": report.backup.files,
        "media_copied": report.media_copied,
        "media_bytes_copied": report.media_bytes,
        "media_files": report.media_files,
    })))
}

/// `GET /_culvert/admin/v1/backups`: the backups kept, oldest first.
pub async fn list(
    extract::State(services): extract::State<State>,
    _: Admin,
) -> Result<Json<Value>> {
    let backups: Vec<Value> = backup::list(&services.config)
        .map_err(crate::Error::invalid_param)?
        .into_iter()
        .map(|b| {
            json!({ "backup_id": b.id, "timestamp": b.timestamp, "size": b.size, "files": b.files })
        })
        .collect();
    Ok(Json(json!({ "backups": backups })))
}
