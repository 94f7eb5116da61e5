//! Synapse's media admin API: look up, delete, quarantine and protect media; a user's
//! uploads; the media of a room; old local media and old copies of other servers' media.

use axum::{
    Json,
    extract::{self, Path},
};
use ruma::ServerName;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminQuery, backwards, existing_user, flag, local_user, number, room_id};
use crate::{
    Error, Result,
    api::ruma::State,
    service::{
        admin::media::{MediaName, MediaOrder},
        media::MediaRecord,
    },
};

fn media_name(server: &str, media_id: &str) -> Result<MediaName> {
    MediaName::parse_mxc(&format!("mxc://{server}/{media_id}"))
        .ok_or_else(|| Error::invalid_param("Invalid server name or media ID."))
}

/// One piece of media in a listing (Synapse's fields).
fn listed(media_id: &str, record: &MediaRecord) -> Value {
    json!({
        "media_id": media_id,
        "media_type": record.content_type,
        "media_length": record.size,
        "upload_name": record.filename,
        "created_ts": record.created_ts,
        // Downloads are not recorded.
        "last_access_ts": null,
        "quarantined_by": quarantined_by(record),
        "safe_from_quarantine": record.protected,
        "user_id": record.uploader,
        "authenticated": record.authenticated_only,
        "sha256": record.sha256,
        "url_cache": null,
    })
}

/// A `before_ts` query parameter: required, and in milliseconds (a value from 1970 is
/// someone's seconds).
fn before_ts(raw: &Option<String>) -> Result<u64> {
    if raw.is_none() {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::MissingParam,
            "Missing integer query parameter 'before_ts'",
        ));
    }
    let ts = number("before_ts", raw, 0)? as u64;
    if ts < 30_000_000_000 {
        return Err(Error::invalid_param(
            "Query parameter before_ts you provided is from the year 1970. Double check that \
             you are providing a timestamp in milliseconds.",
        ));
    }
    Ok(ts)
}

fn quarantined_by(record: &MediaRecord) -> Option<String> {
    record
        .quarantined
        .then(|| record.quarantined_by.clone().unwrap_or_default())
}

/// `GET /v1/media/{serverName}/{mediaId}`: what is known of a piece of media.
pub async fn info(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let name = media_name(&server, &media_id)?;
    let record = services
        .media
        .get(&name.server, &name.media_id)?
        .ok_or_else(|| Error::not_found("Media not found"))?;
    let mut info = listed(&name.media_id, &record);
    let local = name.server == services.server_name;
    info["media_origin"] = json!(if local { "local" } else { name.server.as_str() });
    Ok(Json(json!({ "media_info": info })))
}

/// `DELETE /v1/media/{serverName}/{mediaId}`: deletes a piece of this server's media.
pub async fn delete(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let name = media_name(&server, &media_id)?;
    if !services.admin_delete_media(&name)? {
        return Err(Error::not_found("Media not found"));
    }
    admin.audit("delete media", &name.mxc());
    Ok(Json(
        json!({ "deleted_media": [name.media_id], "total": 1 }),
    ))
}

#[derive(Deserialize)]
pub struct OldMediaQuery {
    before_ts: Option<String>,
    size_gt: Option<String>,
    keep_profiles: Option<String>,
}

/// `POST /v1/media/delete` and `/v1/media/{serverName}/delete`: this server's media uploaded
/// before `before_ts`, larger than `size_gt`.
pub async fn delete_old(
    extract::State(services): extract::State<State>,
    admin: Admin,
    server: Option<Path<String>>,
    AdminQuery(query): AdminQuery<OldMediaQuery>,
) -> Result<Json<Value>> {
    if let Some(Path(server)) = server
        && ServerName::parse(&server).ok().as_deref() != Some(services.server_name.as_ref())
    {
        return Err(Error::invalid_param("Can only delete local media."));
    }
    let before_ts = before_ts(&query.before_ts)?;
    let size_gt = number("size_gt", &query.size_gt, 0)? as u64;
    let keep_profiles = flag("keep_profiles", &query.keep_profiles)?.unwrap_or(true);
    let deleted = services.admin_delete_old_media(before_ts, size_gt, keep_profiles)?;
    admin.audit(
        "delete old media",
        &format!("{} before {before_ts}", deleted.len()),
    );
    Ok(Json(
        json!({ "total": deleted.len(), "deleted_media": deleted }),
    ))
}

#[derive(Deserialize)]
pub struct BeforeQuery {
    before_ts: Option<String>,
}

/// `POST /v1/purge_media_cache?before_ts=…`: the copies of other servers' media fetched
/// before then.
pub async fn purge_remote(
    extract::State(services): extract::State<State>,
    admin: Admin,
    AdminQuery(query): AdminQuery<BeforeQuery>,
) -> Result<Json<Value>> {
    let before_ts = before_ts(&query.before_ts)?;
    let deleted = services.admin_purge_remote_media(before_ts)?;
    admin.audit(
        "purge remote media",
        &format!("{deleted} before {before_ts}"),
    );
    Ok(Json(json!({ "deleted": deleted })))
}

async fn set_quarantine(
    services: &State,
    admin: &Admin,
    server: &str,
    media_id: &str,
    quarantine: bool,
) -> Result<Json<Value>> {
    let name = media_name(server, media_id)?;
    if services
        .admin_quarantine(&name, &admin.0, quarantine)?
        .is_none()
    {
        return Err(Error::not_found("Media not found"));
    }
    admin.audit(
        if quarantine {
            "quarantine media"
        } else {
            "release media from quarantine"
        },
        &name.mxc(),
    );
    Ok(Json(json!({})))
}

/// `POST /v1/media/quarantine/{serverName}/{mediaId}`.
pub async fn quarantine(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    set_quarantine(&services, &admin, &server, &media_id, true).await
}

/// `POST /v1/media/unquarantine/{serverName}/{mediaId}`.
pub async fn unquarantine(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    set_quarantine(&services, &admin, &server, &media_id, false).await
}

async fn set_protected(
    services: &State,
    admin: &Admin,
    media_id: &str,
    protect: bool,
) -> Result<Json<Value>> {
    media_name(services.server_name.as_str(), media_id)?;
    if services.admin_protect(media_id, protect)?.is_none() {
        return Err(Error::not_found("Media not found"));
    }
    admin.audit(
        if protect {
            "protect media"
        } else {
            "unprotect media"
        },
        &media_id,
    );
    Ok(Json(json!({})))
}

/// `POST /v1/media/protect/{mediaId}`: this server's media, safe from quarantine.
pub async fn protect(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(media_id): Path<String>,
) -> Result<Json<Value>> {
    set_protected(&services, &admin, &media_id, true).await
}

/// `POST /v1/media/unprotect/{mediaId}`.
pub async fn unprotect(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(media_id): Path<String>,
) -> Result<Json<Value>> {
    set_protected(&services, &admin, &media_id, false).await
}

#[derive(Deserialize)]
pub struct UserMediaQuery {
    from: Option<String>,
    limit: Option<String>,
    order_by: Option<String>,
    dir: Option<String>,
}

/// `GET /v1/users/{userId}/media`: a user's uploads, a page at a time (newest first when
/// neither `order_by` nor `dir` is given).
pub async fn user_media(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(user_id): Path<String>,
    AdminQuery(query): AdminQuery<UserMediaQuery>,
) -> Result<Json<Value>> {
    let user_id = existing_user(&services, &user_id)?;
    let order = match query.order_by.as_deref() {
        None => MediaOrder::default(),
        Some(name) => MediaOrder::parse(name)
            .ok_or_else(|| Error::invalid_param(format!("Unknown value for order_by: {name}")))?,
    };
    // Neither given: newest first, as Synapse has always listed them.
    let backwards = backwards(&query.dir, query.order_by.is_none())?;
    let from = number("from", &query.from, 0)?;
    let limit = number("limit", &query.limit, 100)?;
    let media = services.admin_user_media(&user_id, order, backwards)?;
    let total = media.len();
    let page: Vec<Value> = media
        .iter()
        .skip(from)
        .take(limit)
        .map(|(id, record)| listed(id, record))
        .collect();
    let mut body = json!({ "media": page, "total": total });
    if from + limit < total {
        body["next_token"] = json!(from + limit);
    }
    Ok(Json(body))
}

/// `DELETE /v1/users/{userId}/media`: deletes a user's uploads.
pub async fn delete_user_media(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = local_user(&services, &user_id)?;
    let mut deleted = Vec::new();
    for (media_id, _) in services.admin_user_media(&user_id, MediaOrder::MediaId, false)? {
        let name = MediaName {
            server: services.server_name.clone(),
            media_id,
        };
        if services.admin_delete_media(&name)? {
            deleted.push(name.media_id);
        }
    }
    admin.audit("delete a user's media", &user_id);
    Ok(Json(
        json!({ "total": deleted.len(), "deleted_media": deleted }),
    ))
}

/// `GET /v1/room/{roomId}/media`: the media a room's events use, this server's and others'.
pub async fn room_media(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(room): Path<String>,
) -> Result<Json<Value>> {
    let media = services.admin_room_media(&room_id(&room)?)?;
    let (local, remote): (Vec<_>, Vec<_>) = media
        .into_iter()
        .partition(|name| name.server == services.server_name);
    let mxc = |names: Vec<MediaName>| names.iter().map(MediaName::mxc).collect::<Vec<_>>();
    Ok(Json(json!({ "local": mxc(local), "remote": mxc(remote) })))
}

/// `POST /v1/room/{roomId}/media/quarantine` (and the older `/v1/quarantine_media/{roomId}`).
pub async fn quarantine_room_media(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(room): Path<String>,
) -> Result<Json<Value>> {
    let room_id = room_id(&room)?;
    let count = services.admin_quarantine_room_media(&room_id, &admin.0)?;
    admin.audit("quarantine a room's media", &room_id);
    Ok(Json(json!({ "num_quarantined": count })))
}

/// `POST /v1/user/{userId}/media/quarantine`.
pub async fn quarantine_user_media(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = local_user(&services, &user_id)?;
    let count = services.admin_quarantine_user_media(&user_id, &admin.0)?;
    admin.audit("quarantine a user's media", &user_id);
    Ok(Json(json!({ "num_quarantined": count })))
}

#[derive(Deserialize)]
pub struct StatisticsQuery {
    from: Option<String>,
    limit: Option<String>,
    order_by: Option<String>,
    dir: Option<String>,
    from_ts: Option<String>,
    until_ts: Option<String>,
    search_term: Option<String>,
}

/// `GET /v1/statistics/users/media`: each local user's uploads, counted and summed.
pub async fn statistics(
    extract::State(services): extract::State<State>,
    _: Admin,
    AdminQuery(query): AdminQuery<StatisticsQuery>,
) -> Result<Json<Value>> {
    let from = number("from", &query.from, 0)?;
    let limit = number("limit", &query.limit, 100)?;
    let from_ts = number("from_ts", &query.from_ts, 0)? as u64;
    let until_ts = match &query.until_ts {
        Some(_) => number("until_ts", &query.until_ts, 0)? as u64,
        None => u64::MAX,
    };
    if until_ts <= from_ts {
        return Err(Error::invalid_param("`until_ts` must be after `from_ts`."));
    }
    let backwards = backwards(&query.dir, false)?;
    let mut users: Vec<(ruma::OwnedUserId, Option<String>, u64, u64)> = Vec::new();
    for (user_id, count, bytes) in services.admin_media_statistics(from_ts, until_ts)? {
        let displayname = services
            .users
            .profile_field(&user_id, "displayname")?
            .and_then(|v| v.as_str().map(str::to_owned));
        if let Some(term) = query.search_term.as_deref().filter(|t| !t.is_empty()) {
            let term = term.to_lowercase();
            let in_name = displayname
                .as_deref()
                .is_some_and(|d| d.to_lowercase().contains(&term));
            if !user_id.as_str().to_lowercase().contains(&term) && !in_name {
                continue;
            }
        }
        users.push((user_id, displayname, count, bytes));
    }
    match query.order_by.as_deref() {
        None | Some("user_id") => {}
        Some("displayname") => users.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0))),
        Some("media_count") => users.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(&b.0))),
        Some("media_length") => users.sort_by(|a, b| a.3.cmp(&b.3).then(a.0.cmp(&b.0))),
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown value for order_by: {other}"
            )));
        }
    }
    if backwards {
        users.reverse();
    }
    let total = users.len();
    let page: Vec<Value> = users
        .iter()
        .skip(from)
        .take(limit)
        .map(|(user_id, displayname, count, bytes)| {
            json!({
                "user_id": user_id,
                "displayname": displayname,
                "media_count": count,
                "media_length": bytes,
            })
        })
        .collect();
    let mut body = json!({ "users": page, "total": total });
    if from + limit < total {
        body["next_token"] = json!(from + limit);
    }
    Ok(Json(body))
}
