//! The content repository: uploads (streamed to disk, not parsed as JSON, so these are plain
//! axum handlers rather than ruma routes), downloads with the spec's safety headers and HTTP
//! range requests, thumbnails, the media config and URL previews. Authenticated
//! `/_matrix/client/v1/media/*` and legacy `/_matrix/media/{v3,r0}/*` paths share handlers.

use std::{collections::HashMap, io::SeekFrom, path::Path as FsPath, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Request, State as AxumState},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use ruma::{OwnedUserId, ServerName, api::error::ErrorKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::{
    Error, Result,
    api::ruma::{RouterExt, State, access_token},
    service::media::Method,
};

/// Default wait for a pending upload when the client gives no `timeout_ms` (the spec's).
const DEFAULT_WAIT: Duration = Duration::from_secs(20);

const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; object-src 'self';";

/// Content types the spec lets a server serve `inline` (client-server API, "Serving inline
/// content"); everything else is an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

pub fn routes() -> Router<State> {
    let download = get(download_authenticated);
    let legacy_download = get(download_legacy);
    let mut router = Router::new()
        .plain_route("/_matrix/media/v1/create", post(create))
        .plain_route("/_matrix/client/v1/media/config", get(config))
        .plain_route("/_matrix/client/v1/media/preview_url", get(preview_url))
        .plain_route(
            "/_matrix/client/v1/media/download/{server}/{media_id}",
            download.clone(),
        )
        // matrix-nio asks with a trailing slash when it names no file.
        .plain_route(
            "/_matrix/client/v1/media/download/{server}/{media_id}/",
            download.clone(),
        )
        .plain_route(
            "/_matrix/client/v1/media/download/{server}/{media_id}/{filename}",
            download,
        )
        .plain_route(
            "/_matrix/client/v1/media/thumbnail/{server}/{media_id}",
            get(thumbnail_authenticated),
        );
    for version in ["v3", "r0"] {
        let base = format!("/_matrix/media/{version}");
        router = router
            .plain_route(&format!("{base}/upload"), post(upload))
            .plain_route(
                &format!("{base}/upload/{{server}}/{{media_id}}"),
                put(upload_to),
            )
            .plain_route(&format!("{base}/config"), get(config))
            .plain_route(&format!("{base}/preview_url"), get(preview_url))
            .plain_route(
                &format!("{base}/download/{{server}}/{{media_id}}"),
                legacy_download.clone(),
            )
            .plain_route(
                &format!("{base}/download/{{server}}/{{media_id}}/"),
                legacy_download.clone(),
            )
            .plain_route(
                &format!("{base}/download/{{server}}/{{media_id}}/{{filename}}"),
                legacy_download.clone(),
            )
            .plain_route(
                &format!("{base}/thumbnail/{{server}}/{{media_id}}"),
                get(thumbnail_legacy),
            );
    }
    router
}

async fn authenticate(services: &State, parts: &Parts) -> Result<OwnedUserId> {
    let token = access_token(parts).ok_or_else(Error::missing_token)?;
    let user = services
        .devices
        .authenticate(&token)
        .await?
        .map(|session| session.user_id)
        .ok_or_else(Error::unknown_token)?;
    let path = parts.uri.path();
    crate::api::ruma::check_restriction(services, &user, &parts.method, path, path)?;
    Ok(user)
}

fn query(parts: &Parts) -> HashMap<String, String> {
    parts
        .uri
        .query()
        .and_then(|q| serde_html_form::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn server_name(s: &str) -> Result<&ServerName> {
    <&ServerName>::try_from(s).map_err(|_| Error::invalid_param("Invalid server name."))
}

fn wait_from(query: &HashMap<String, String>) -> Result<Duration> {
    match query.get("timeout_ms") {
        None => Ok(DEFAULT_WAIT),
        Some(ms) => ms
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| Error::invalid_param("timeout_ms must be a non-negative integer.")),
    }
}

/// `allow_remote` (legacy endpoints; honoured on the authenticated ones too): whether media
/// of other servers that is not stored here may be fetched. Defaults to true.
fn allow_remote(query: &HashMap<String, String>) -> Result<bool> {
    match query.get("allow_remote").map(String::as_str) {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(Error::invalid_param("allow_remote must be true or false.")),
    }
}

/// The upload's content type and (query) file name.
fn upload_metadata(parts: &Parts) -> (Option<String>, Option<String>) {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|t| !t.is_empty());
    let filename = query(parts).remove("filename").filter(|f| !f.is_empty());
    (content_type, filename)
}

/// Refuses a declared `Content-Length` over the limit before reading anything.
fn check_declared_length(parts: &Parts, limit: u64) -> Result<()> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| l.parse::<u64>().ok());
    if declared.is_some_and(|l| l > limit) {
        return Err(Error::too_large(format!(
            "The upload is larger than {limit} bytes."
        )));
    }
    Ok(())
}

/// `POST /_matrix/media/v3/upload`
async fn upload(AxumState(services): AxumState<State>, request: Request) -> Result<Response> {
    let (parts, body) = request.into_parts();
    let user = authenticate(&services, &parts).await?;
    let limit = services.media.max_upload_size;
    check_declared_length(&parts, limit)?;
    let (content_type, filename) = upload_metadata(&parts);
    let file = services
        .media
        .receive(body.into_data_stream(), limit)
        .await?;
    let mxc = services
        .media
        .create_local(Some(&user), file, content_type, filename)?;
    Ok(Json(json!({ "content_uri": mxc })).into_response())
}

/// `POST /_matrix/media/v1/create`
async fn create(AxumState(services): AxumState<State>, request: Request) -> Result<Response> {
    let (parts, _) = request.into_parts();
    let user = authenticate(&services, &parts).await?;
    let (mxc, expires) = services.media.create_pending(&user)?;
    Ok(Json(json!({ "content_uri": mxc, "unused_expires_at": expires })).into_response())
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
async fn upload_to(
    AxumState(services): AxumState<State>,
    Path(args): Path<Vec<String>>,
    request: Request,
) -> Result<Response> {
    let (parts, body) = request.into_parts();
    let user = authenticate(&services, &parts).await?;
    let [server, media_id] = &args[..] else {
        return Err(Error::invalid_param("Bad media path."));
    };
    let server = server_name(server)?;
    // Refuse before reading a body that could not be stored anyway.
    services.media.check_pending(server, media_id, &user)?;
    let limit = services.media.max_upload_size;
    check_declared_length(&parts, limit)?;
    let (content_type, filename) = upload_metadata(&parts);
    let file = services
        .media
        .receive(body.into_data_stream(), limit)
        .await?;
    services
        .media
        .complete_pending(server, media_id, &user, file, content_type, filename)?;
    Ok(Json(json!({})).into_response())
}

/// `GET /_matrix/client/v1/media/config` and the legacy one.
async fn config(AxumState(services): AxumState<State>, request: Request) -> Result<Response> {
    let (parts, _) = request.into_parts();
    authenticate(&services, &parts).await?;
    Ok(Json(json!({ "m.upload.size": services.media.max_upload_size })).into_response())
}

/// `GET /_matrix/client/v1/media/preview_url` and the legacy one. Disabled (the default), the
/// endpoint answers like one that is not built.
async fn preview_url(AxumState(services): AxumState<State>, request: Request) -> Result<Response> {
    let (parts, _) = request.into_parts();
    let user = authenticate(&services, &parts).await?;
    if !services.media.previews.enabled {
        return Err(Error::unrecognized(
            StatusCode::NOT_FOUND,
            "URL previews are disabled on this server.",
        ));
    }
    let url = query(&parts).remove("url").ok_or_else(|| {
        Error::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::MissingParam,
            "The url parameter is required.",
        )
    })?;
    let preview = services
        .media
        .previews
        .preview(&services.media, &url, &user)
        .await?;
    Ok(Json(preview).into_response())
}

async fn download_authenticated(
    AxumState(services): AxumState<State>,
    Path(args): Path<Vec<String>>,
    request: Request,
) -> Result<Response> {
    let (parts, _) = request.into_parts();
    authenticate(&services, &parts).await?;
    download(&services, &parts, &args, true).await
}

async fn download_legacy(
    AxumState(services): AxumState<State>,
    Path(args): Path<Vec<String>>,
    request: Request,
) -> Result<Response> {
    let (parts, _) = request.into_parts();
    download(&services, &parts, &args, false).await
}

async fn download(
    services: &State,
    parts: &Parts,
    args: &[String],
    authenticated: bool,
) -> Result<Response> {
    let (server, media_id, filename) = match args {
        [server, media_id] => (server, media_id, None),
        [server, media_id, filename] => (
            server,
            media_id,
            Some(filename.as_str()).filter(|f| !f.is_empty()),
        ),
        _ => return Err(Error::invalid_param("Bad media path.")),
    };
    let server = server_name(server)?;
    let query = query(parts);
    let wait = wait_from(&query)?;
    // Other servers' media is fetched over federation the first time (see media::remote).
    let content = services
        .media_content(server, media_id, wait, allow_remote(&query)?)
        .await?;
    if !authenticated && !services.media.legacy_allowed(&content.record) {
        return Err(Error::not_found(
            "This media is only served by the authenticated media endpoints.",
        ));
    }
    let content_type = content
        .record
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let kind = if is_inline_type(&content_type) {
        "inline"
    } else {
        "attachment"
    };
    let filename = filename.or(content.record.filename.as_deref());
    let disposition = content_disposition(kind, filename);
    serve_file(
        &content.path,
        &content_type,
        &disposition,
        authenticated,
        &parts.headers,
    )
    .await
}

async fn thumbnail_authenticated(
    AxumState(services): AxumState<State>,
    Path(args): Path<Vec<String>>,
    request: Request,
) -> Result<Response> {
    let (parts, _) = request.into_parts();
    authenticate(&services, &parts).await?;
    thumbnail(&services, &parts, &args, true).await
}

async fn thumbnail_legacy(
    AxumState(services): AxumState<State>,
    Path(args): Path<Vec<String>>,
    request: Request,
) -> Result<Response> {
    let (parts, _) = request.into_parts();
    thumbnail(&services, &parts, &args, false).await
}

async fn thumbnail(
    services: &State,
    parts: &Parts,
    args: &[String],
    authenticated: bool,
) -> Result<Response> {
    let [server, media_id] = args else {
        return Err(Error::invalid_param("Bad media path."));
    };
    let server = server_name(server)?;
    let query = query(parts);
    let dimension = |name: &str| -> Result<u32> {
        let value = query.get(name).ok_or_else(|| {
            Error::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::MissingParam,
                format!("The {name} parameter is required."),
            )
        })?;
        value
            .parse::<u32>()
            .map_err(|_| Error::invalid_param(format!("{name} must be a non-negative integer.")))
    };
    let (width, height) = (dimension("width")?, dimension("height")?);
    let method = match query.get("method") {
        None => Method::Scale,
        Some(m) => Method::parse(m)
            .ok_or_else(|| Error::invalid_param("method must be \"crop\" or \"scale\"."))?,
    };
    let wait = wait_from(&query)?;
    // Thumbnails of other servers' media are made here, from the fetched original.
    services
        .ensure_remote_media(server, media_id, wait, allow_remote(&query)?)
        .await?;
    if !authenticated {
        // The freeze applies to thumbnails too: look at the media record first.
        let record = services
            .media
            .get(server, media_id)?
            .ok_or_else(|| Error::not_found("Media not found."))?;
        if !services.media.legacy_allowed(&record) {
            return Err(Error::not_found(
                "This media is only served by the authenticated media endpoints.",
            ));
        }
    }
    let thumb = services
        .media
        .thumbnail(server, media_id, width, height, method, wait)
        .await?;
    let extension = thumb
        .content_type
        .strip_prefix("image/")
        .unwrap_or("bin")
        .to_owned();
    let disposition = content_disposition("inline", Some(&format!("thumbnail.{extension}")));
    serve_file(
        &thumb.path,
        &thumb.content_type,
        &disposition,
        authenticated,
        &parts.headers,
    )
    .await
}

pub fn is_inline_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// `inline` or `attachment`, with the file name per RFC 6266: a quoted `filename` when it is
/// plain printable ASCII, else `filename*` with UTF-8 percent-encoding (RFC 8187).
pub fn content_disposition(kind: &str, filename: Option<&str>) -> String {
    let Some(name) = filename else {
        return kind.to_owned();
    };
    let plain = name
        .chars()
        .all(|c| (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\');
    if plain {
        return format!("{kind}; filename=\"{name}\"");
    }
    let mut encoded = String::new();
    for byte in name.bytes() {
        let c = byte as char;
        if c.is_ascii_alphanumeric() || "!#$&+-.^_`|~".contains(c) {
            encoded.push(c);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("{kind}; filename*=utf-8''{encoded}")
}

/// Which bytes a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    Full,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range. Several ranges, other units and malformed headers are ignored (the
/// whole file is sent, as RFC 9110 allows).
fn parse_range(header: Option<&str>, size: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // The last N bytes.
        let Ok(n) = last.parse::<u64>() else {
            return Range::Full;
        };
        if n == 0 || size == 0 {
            return Range::Unsatisfiable;
        }
        return Range::Part(size - n.min(size), size - 1);
    }
    let Ok(start) = first.parse::<u64>() else {
        return Range::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return Range::Full,
        }
    };
    if start >= size {
        return Range::Unsatisfiable;
    }
    Range::Part(start, end.min(size - 1))
}

/// Streams (part of) a stored file with the content repository's headers.
async fn serve_file(
    path: &FsPath,
    content_type: &str,
    disposition: &str,
    authenticated: bool,
    request_headers: &HeaderMap,
) -> Result<Response> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::internal(format!("opening media file {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| Error::internal(format!("media file metadata: {e}")))?
        .len();
    let range = parse_range(
        request_headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok()),
        size,
    );
    let mut response = match range {
        Range::Unsatisfiable => {
            let mut response = Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorKind::Unknown,
                "The requested range is not satisfiable.",
            )
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            return Ok(response);
        }
        Range::Full => {
            let mut response = Response::new(Body::from_stream(ReaderStream::new(file)));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, header_value(&size.to_string()));
            response
        }
        Range::Part(start, end) => {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| Error::internal(format!("seeking in media file: {e}")))?;
            let len = end - start + 1;
            let mut response = Response::new(Body::from_stream(ReaderStream::new(file.take(len))));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_LENGTH, header_value(&len.to_string()));
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{size}")),
            );
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(disposition).unwrap_or_else(|_| {
            HeaderValue::from_static(if disposition.starts_with("inline") {
                "inline"
            } else {
                "attachment"
            })
        }),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content under a media ID never changes. Authenticated answers are for one user: no
    // shared caches.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if authenticated {
            "private, max-age=31536000, immutable"
        } else {
            "public, max-age=31536000, immutable"
        }),
    );
    Ok(response)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("ASCII digits and punctuation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Range::Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Range::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Range::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Range::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Range::Part(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Range::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Range::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Range::Full);
    }

    #[test]
    fn dispositions() {
        assert_eq!(content_disposition("inline", None), "inline");
        assert_eq!(
            content_disposition("attachment", Some("a b.txt")),
            "attachment; filename=\"a b.txt\""
        );
        assert_eq!(
            content_disposition("inline", Some("é \"x\".png")),
            "inline; filename*=utf-8''%C3%A9%20%22x%22.png"
        );
    }

    #[test]
    fn inline_types() {
        assert!(is_inline_type("image/png"));
        assert!(is_inline_type("text/plain; charset=utf-8"));
        assert!(!is_inline_type("text/html"));
        assert!(!is_inline_type("image/svg+xml"));
        assert!(!is_inline_type("application/octet-stream"));
    }
}
