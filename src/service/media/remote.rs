//! Media of other servers, for local clients: fetched over federation the first time it is
//! asked for, stored under the remote server's name (`Media::store_remote`), then served from
//! disk like local media. Thumbnails of remote media are made here from the fetched original
//! (no thumbnail is fetched), so they come out of the same thumbnail code as local ones.
//!
//! The authenticated federation endpoint (`/_matrix/federation/v1/media/download`, a
//! `multipart/mixed` answer, possibly naming a `Location`) is tried first; servers that do not
//! have it (404 `M_UNRECOGNIZED`, 400, 405, 501) are asked on the legacy
//! `/_matrix/media/v3/download/…?allow_remote=false`. Every request goes through the
//! federation client, so `federation_denylist` and `ip_range_denylist` apply.

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};
use ruma::{
    ServerName,
    api::{
        IncomingResponseExt,
        error::ErrorKind,
        federation::authenticated_media::{FileOrLocation, get_content},
    },
    http_headers::ContentDisposition,
};

use super::{ReceivedFile, StoredContent};
use crate::{
    Error, Result,
    service::{
        Services,
        federation::{
            client::FederationError,
            media_client::{RawResponse, TIMED_OUT},
        },
    },
};

/// Room for the multipart framing and the metadata part around the content.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

impl Services {
    /// The content of `server`'s media ID: local or already fetched media from the store,
    /// else (unless `allow_remote` is false) fetched from `server` first. Concurrent requests
    /// for the same media wait for one fetch.
    pub async fn media_content(
        &self,
        server: &ServerName,
        media_id: &str,
        wait: Duration,
        allow_remote: bool,
    ) -> Result<StoredContent> {
        self.ensure_remote_media(server, media_id, wait, allow_remote)
            .await?;
        self.media.content(server, media_id, wait).await
    }

    /// Makes sure remote media is in the store (a no-op for local or stored media).
    pub async fn ensure_remote_media(
        &self,
        server: &ServerName,
        media_id: &str,
        wait: Duration,
        allow_remote: bool,
    ) -> Result<()> {
        if server == self.server_name || self.media.get(server, media_id)?.is_some() {
            return Ok(());
        }
        if !allow_remote {
            return Err(Error::not_found(
                "That media is not stored here and allow_remote is false.",
            ));
        }
        let lock = self.media.fetch_lock(server, media_id);
        let _guard = lock.lock().await;
        // Whoever held the lock before may have stored it.
        if self.media.get(server, media_id)?.is_some() {
            return Ok(());
        }
        let result = self.fetch_remote_media(server, media_id, wait).await;
        self.media.fetch_done(server, media_id);
        match result {
            Ok(()) => Ok(()),
            // Stored meanwhile by a request that did not share the lock: as good.
            Err(Error::Matrix {
                kind: ErrorKind::CannotOverwriteMedia,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn fetch_remote_media(
        &self,
        server: &ServerName,
        media_id: &str,
        wait: Duration,
    ) -> Result<()> {
        let limit = self.media.max_upload_size;
        let mut request = get_content::v1::Request::new(media_id.to_owned());
        request.timeout_ms = wait;
        let response = self
            .send_federation_request_raw(server, request)
            .await
            .map_err(fetch_error)?;
        let status = response.status;
        if status.is_success() {
            let headers = response.headers.clone();
            let body = response
                .bytes_limited(limit + MULTIPART_OVERHEAD)
                .await
                .map_err(fetch_error)?;
            let mut http_response = http::Response::new(&body[..]);
            *http_response.status_mut() = status;
            *http_response.headers_mut() = headers;
            let parsed =
                get_content::v1::Response::try_from_http_response(http_response).map_err(|e| {
                    bad_gateway(format!("{server} sent an unreadable media answer: {e}"))
                })?;
            return match parsed.content {
                FileOrLocation::File(content) => {
                    if content.file.len() as u64 > limit {
                        return Err(too_large(limit));
                    }
                    let filename = content.content_disposition.and_then(|d| d.filename);
                    let file = self.media.receive_bytes(content.file).await?;
                    self.media
                        .store_remote(server, media_id, file, content.content_type, filename)
                }
                FileOrLocation::Location(url) => {
                    let response = self.get_url_raw(server, &url).await.map_err(fetch_error)?;
                    self.store_raw(server, media_id, response).await
                }
                _ => Err(bad_gateway(format!(
                    "{server} sent a media answer of an unknown kind."
                ))),
            };
        }
        let body = response.error_body().await;
        if !falls_back(status, &body) {
            return Err(remote_status_error(server, status, &body));
        }
        // A server from before authenticated media: its legacy endpoint, asked not to fetch
        // from elsewhere in turn.
        let path = format!(
            "/_matrix/media/v3/download/{}/{}?allow_remote=false",
            encode_segment(server.as_str()),
            encode_segment(media_id)
        );
        let response = self
            .get_unauthenticated_raw(server, &path)
            .await
            .map_err(fetch_error)?;
        self.store_raw(server, media_id, response).await
    }

    /// Stores the body of a plain (non-multipart) media answer, streamed to disk.
    async fn store_raw(
        &self,
        server: &ServerName,
        media_id: &str,
        response: RawResponse,
    ) -> Result<()> {
        if !response.status.is_success() {
            let status = response.status;
            let body = response.error_body().await;
            return Err(remote_status_error(server, status, &body));
        }
        let limit = self.media.max_upload_size;
        let (content_type, filename) = content_headers(&response.headers);
        let file: ReceivedFile = self
            .media
            .receive(response.into_stream(), limit)
            .await
            .map_err(|e| match e {
                Error::Matrix {
                    kind: ErrorKind::TooLarge,
                    ..
                } => too_large(limit),
                e => bad_gateway(format!("reading media from {server}: {e}")),
            })?;
        self.media
            .store_remote(server, media_id, file, content_type, filename)
    }
}

/// Whether an error answer means "no federation media endpoint here" (older servers).
fn falls_back(status: StatusCode, body: &str) -> bool {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
            true
        }
        StatusCode::NOT_FOUND => serde_json::from_str::<serde_json::Value>(body)
            .map(|v| v["errcode"] == "M_UNRECOGNIZED")
            // A bare 404 page (a proxy in front of an old server) is not a Matrix answer.
            .unwrap_or(true),
        _ => false,
    }
}

fn content_headers(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let filename = headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| ContentDisposition::try_from(v.as_bytes()).ok())
        .and_then(|d| d.filename);
    (content_type, filename)
}

fn bad_gateway(message: String) -> Error {
    Error::new(StatusCode::BAD_GATEWAY, ErrorKind::Unknown, message)
}

fn too_large(limit: u64) -> Error {
    Error::new(
        StatusCode::BAD_GATEWAY,
        ErrorKind::TooLarge,
        format!("The remote media is larger than this server's limit of {limit} bytes."),
    )
}

fn remote_status_error(server: &ServerName, status: StatusCode, body: &str) -> Error {
    match status {
        StatusCode::NOT_FOUND => Error::not_found(format!("{server} has no such media.")),
        StatusCode::GATEWAY_TIMEOUT => Error::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::NotYetUploaded,
            format!("{server} has not received that media yet."),
        ),
        _ => bad_gateway(format!("{server} answered {status}: {body}")),
    }
}

/// Unreachable is 502, too slow 504, no federation at all 404 (nothing can be fetched).
fn fetch_error(e: FederationError) -> Error {
    match &e {
        FederationError::Disabled => Error::not_found(format!("Remote media unavailable: {e}")),
        FederationError::Unreachable { message, .. } if message == TIMED_OUT => Error::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unknown,
            e.to_string(),
        ),
        _ => bad_gateway(e.to_string()),
    }
}

/// Percent-encodes a path segment (media IDs are opaque; keep anything but unreserved out).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        let c = byte as char;
        if c.is_ascii_alphanumeric() || "-._~:".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_decision() {
        assert!(falls_back(
            StatusCode::NOT_FOUND,
            r#"{"errcode":"M_UNRECOGNIZED"}"#
        ));
        assert!(!falls_back(
            StatusCode::NOT_FOUND,
            r#"{"errcode":"M_NOT_FOUND"}"#
        ));
        assert!(falls_back(StatusCode::BAD_REQUEST, ""));
        assert!(!falls_back(StatusCode::FORBIDDEN, ""));
        assert_eq!(encode_segment("ab/c d"), "ab%2Fc%20d");
    }
}
