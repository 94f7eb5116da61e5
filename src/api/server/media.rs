//! `GET /_matrix/federation/v1/media/download/{mediaId}` and `/media/thumbnail/{mediaId}`:
//! this server's media for other servers, as `multipart/mixed` (a JSON metadata part `{}`,
//! then the content with its type and disposition). Only local media is served; the content
//! is streamed from disk between the multipart framing, not loaded into memory.

use std::{path::Path, time::Duration};

use axum::{body::Body, extract, response::Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, header};
use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};
use tokio_util::io::ReaderStream;

use crate::{
    Error, Result,
    api::{
        client::media::{content_disposition, is_inline_type},
        ruma::State,
        server::auth::Fed,
    },
    service::media::Method,
    utils,
};

/// The longest a remote server's request waits for a pending (`/create`) upload.
const MAX_WAIT: Duration = Duration::from_secs(20);

pub async fn download(
    extract::State(services): extract::State<State>,
    request: Fed<get_content::v1::Request>,
) -> Result<Response> {
    let wait = request.body.timeout_ms.min(MAX_WAIT);
    let content = services
        .media
        .content(&services.server_name, &request.body.media_id, wait)
        .await?;
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
    let disposition = content_disposition(kind, content.record.filename.as_deref());
    multipart(&content.path, &content_type, &disposition).await
}

pub async fn thumbnail(
    extract::State(services): extract::State<State>,
    request: Fed<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let body = &request.body;
    let wait = body.timeout_ms.min(MAX_WAIT);
    let method = match &body.method {
        None => Method::Scale,
        Some(m) => Method::parse(m.as_str())
            .ok_or_else(|| Error::invalid_param("method must be \"crop\" or \"scale\"."))?,
    };
    let dimension = |v: ruma::UInt| u32::try_from(u64::from(v)).unwrap_or(u32::MAX);
    let thumb = services
        .media
        .thumbnail(
            &services.server_name,
            &body.media_id,
            dimension(body.width),
            dimension(body.height),
            method,
            wait,
        )
        .await?;
    let extension = thumb
        .content_type
        .strip_prefix("image/")
        .unwrap_or("bin")
        .to_owned();
    let disposition = content_disposition("inline", Some(&format!("thumbnail.{extension}")));
    multipart(&thumb.path, &thumb.content_type, &disposition).await
}

/// The stored file between the multipart framing: metadata part, content part, end.
async fn multipart(path: &Path, content_type: &str, disposition: &str) -> Result<Response> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::internal(format!("opening media file {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| Error::internal(format!("media file metadata: {e}")))?
        .len();
    // Alphanumeric, so it cannot need quoting; 32 random characters will not occur in the
    // content by chance.
    let boundary = utils::random_string(32);
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: {}\r\nContent-Disposition: {}\r\n\r\n",
        header_safe(content_type),
        header_safe(disposition)
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() as u64 + size + tail.len() as u64;
    let stream = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(ReaderStream::new(file))
        .chain(futures_util::stream::once(
            async move { Ok(Bytes::from(tail)) },
        ));
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}"))
            .expect("alphanumeric boundary"),
    );
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from_str(&length.to_string()).expect("digits"),
    );
    Ok(response)
}

/// A value for a header line inside the body: no line breaks (stored values come from
/// uploads, and a CR or LF would start a header of the uploader's choosing).
fn header_safe(value: &str) -> String {
    value.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    mod properties {
        use proptest::prelude::*;
        use ruma::api::{IncomingResponseExt, federation::authenticated_media::FileOrLocation};

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any stored file, under any content type an upload could have given it (line
            /// breaks included), comes out of the multipart framing as the receiving server's
            /// parser (ruma's) reads it: the same bytes, the content type without line breaks,
            /// and a `Content-Length` that is the body's.
            #[test]
            fn any_file_survives_the_multipart_framing(
                content in proptest::collection::vec(any::<u8>(), 0..4096),
                content_type in "[ -~]{0,24}(\r\n[ -~]{1,12})?",
            ) {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let dir = tempfile::TempDir::new().unwrap();
                let path = dir.path().join("file");
                std::fs::write(&path, &content).unwrap();
                let response = runtime
                    .block_on(multipart(&path, &content_type, "inline"))
                    .unwrap();
                let (parts, body) = response.into_parts();
                let body = runtime.block_on(axum::body::to_bytes(body, usize::MAX)).unwrap();
                prop_assert_eq!(
                    parts.headers[header::CONTENT_LENGTH].to_str().unwrap(),
                    body.len().to_string()
                );
                let mut received = http::Response::new(&body[..]);
                *received.headers_mut() = parts.headers;
                let parsed = get_content::v1::Response::try_from_http_response(received).unwrap();
                let FileOrLocation::File(file) = parsed.content else {
                    panic!("not a file");
                };
                prop_assert_eq!(file.file, content);
                let expected = header_safe(&content_type);
                prop_assert_eq!(file.content_type.as_deref().unwrap_or(""), expected.trim());
            }
        }
    }
}
