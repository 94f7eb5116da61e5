//! The media repository over HTTP: uploads (plain and asynchronous), downloads and their
//! headers, range requests, the size limit, thumbnails from every supported format, refused
//! images, the legacy endpoints and their freeze, deduplicated storage, admin deletion and
//! quarantine, and URL previews behind the outbound deny-list.

use std::io::Cursor;

use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::common::{Session, TestServer, assert_error};

const V1: &str = "/_matrix/client/v1/media";
const LEGACY: &str = "/_matrix/media/v3";

struct Fetched {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    fn error(&self) -> (StatusCode, Value) {
        (self.status, self.json())
    }
}

async fn send(request: reqwest::RequestBuilder) -> Fetched {
    let response = request.send().await.expect("request sent");
    Fetched {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

/// `POST /upload`; returns the raw answer.
async fn upload_raw(
    server: &TestServer,
    who: &Session,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> Fetched {
    let mut url = format!("{}{LEGACY}/upload", server.base);
    if let Some(name) = filename {
        url.push_str(&format!("?filename={}", crate::common::urlencode(name)));
    }
    send(
        server
            .http
            .post(url)
            .bearer_auth(&who.token)
            .header(header::CONTENT_TYPE, content_type)
            .body(bytes),
    )
    .await
}

/// Uploads and returns `(server_name, media_id)` from the `mxc://` URI.
pub async fn upload(
    server: &TestServer,
    who: &Session,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> (String, String) {
    let answer = upload_raw(server, who, bytes, content_type, filename).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.json());
    split_mxc(answer.json()["content_uri"].as_str().expect("content_uri"))
}

fn split_mxc(mxc: &str) -> (String, String) {
    let rest = mxc.strip_prefix("mxc://").expect("an mxc URI");
    let (server, id) = rest.split_once('/').expect("server/media_id");
    (server.to_owned(), id.to_owned())
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> Fetched {
    let mut request = server.http.get(format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    send(request).await
}

async fn download(server: &TestServer, who: &Session, mxc: &(String, String)) -> Fetched {
    get(
        server,
        &format!("{V1}/download/{}/{}", mxc.0, mxc.1),
        Some(&who.token),
    )
    .await
}

/// Files in the content store (the temporary directory aside).
fn stored_files(server: &TestServer) -> usize {
    let dir = server.services().media.dir().to_owned();
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("media dir") {
        let entry = entry.unwrap();
        if entry.file_name() == "tmp" {
            assert_eq!(
                std::fs::read_dir(entry.path()).unwrap().count(),
                0,
                "temporary files left behind"
            );
            continue;
        }
        count += std::fs::read_dir(entry.path()).unwrap().count();
    }
    count
}

fn image_bytes(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8, 255])
    });
    let image = image::DynamicImage::ImageRgba8(image);
    let image = if format == image::ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(image.to_rgb8())
    } else {
        image
    };
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .expect("encode test image");
    bytes
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .expect("the thumbnail decodes")
}

#[tokio::test]
async fn text_and_binary_files_round_trip_with_safe_headers() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;

    let text = b"Hello, media!\n".to_vec();
    let mxc = upload(
        &server,
        &alice,
        text.clone(),
        "text/plain; charset=utf-8",
        Some("hello.txt"),
    )
    .await;
    assert_eq!(mxc.0, "test.local");
    let got = download(&server, &alice, &mxc).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, text);
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(
        got.header("content-disposition"),
        "inline; filename=\"hello.txt\""
    );
    assert_eq!(
        got.header("content-security-policy"),
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';"
    );
    assert_eq!(got.header("x-content-type-options"), "nosniff");
    assert_eq!(got.header("cross-origin-resource-policy"), "cross-origin");
    assert!(got.header("cache-control").contains("immutable"));
    assert_eq!(got.header("content-length"), text.len().to_string());

    // Binary, with a non-ASCII name: an attachment, the name encoded per RFC 6266.
    let binary: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mxc = upload(
        &server,
        &alice,
        binary.clone(),
        "application/octet-stream",
        Some("données.bin"),
    )
    .await;
    let got = download(&server, &alice, &mxc).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == binary, "binary content differs");
    assert_eq!(
        got.header("content-disposition"),
        "attachment; filename*=utf-8''donn%C3%A9es.bin"
    );

    // The file name in the path wins; the legacy path serves the same bytes.
    let got = get(
        &server,
        &format!("{V1}/download/{}/{}/other.dat", mxc.0, mxc.1),
        Some(&alice.token),
    )
    .await;
    assert_eq!(
        got.header("content-disposition"),
        "attachment; filename=\"other.dat\""
    );
    let got = get(
        &server,
        &format!("{LEGACY}/download/{}/{}", mxc.0, mxc.1),
        None,
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == binary);
    assert!(got.header("cache-control").starts_with("public"));

    // HTML is never inline; no file name means none in the header.
    let mxc = upload(
        &server,
        &alice,
        b"<script>alert(1)</script>".to_vec(),
        "text/html",
        None,
    )
    .await;
    let got = download(&server, &alice, &mxc).await;
    assert_eq!(got.header("content-disposition"), "attachment");
    assert_eq!(got.header("content-type"), "text/html");

    // Unknown media.
    let got = get(
        &server,
        &format!("{V1}/download/test.local/nosuchmedia"),
        Some(&alice.token),
    )
    .await;
    assert_error(&got.error(), StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

#[tokio::test]
async fn range_requests() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    let mxc = upload(&server, &alice, data.clone(), "video/mp4", None).await;
    let path = format!("{}{V1}/download/{}/{}", server.base, mxc.0, mxc.1);
    let ranged = |range: &str| {
        server
            .http
            .get(&path)
            .bearer_auth(&alice.token)
            .header(header::RANGE, range)
    };

    let got = send(ranged("bytes=10-19")).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.body, data[10..20]);
    assert_eq!(got.header("content-range"), "bytes 10-19/1000");
    assert_eq!(got.header("content-length"), "10");
    assert_eq!(got.header("accept-ranges"), "bytes");

    let got = send(ranged("bytes=990-")).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.body, data[990..]);
    let got = send(ranged("bytes=-5")).await;
    assert_eq!(got.body, data[995..]);
    assert_eq!(got.header("content-range"), "bytes 995-999/1000");

    // Several ranges: the whole file instead.
    let got = send(ranged("bytes=0-1,5-6")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, data);

    let got = send(ranged("bytes=1000-")).await;
    assert_eq!(got.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(got.header("content-range"), "bytes */1000");
}

#[tokio::test]
async fn uploads_over_the_limit_are_refused_and_leave_nothing() {
    // Uploads stream to disk with their own limit, independent of the (smaller) JSON one.
    let server = TestServer::start_with(
        "max_upload_size = 10000\nmax_request_size = 4096\nrate_limits = { enabled = false }",
    )
    .await;
    let alice = server.register("alice", "password-1").await;
    let config = get(&server, &format!("{V1}/config"), Some(&alice.token)).await;
    assert_eq!(config.json()["m.upload.size"], 10000);
    let legacy = get(&server, &format!("{LEGACY}/config"), Some(&alice.token)).await;
    assert_eq!(legacy.json()["m.upload.size"], 10000);

    let answer = upload_raw(&server, &alice, vec![7; 10001], "text/plain", None).await;
    assert_error(
        &answer.error(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );

    // Without a Content-Length (chunked), the stream is cut at the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![1u8; 4000])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let answer = send(
        server
            .http
            .post(format!("{}{LEGACY}/upload", server.base))
            .bearer_auth(&alice.token)
            .body(body),
    )
    .await;
    assert_error(
        &answer.error(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );

    assert_eq!(stored_files(&server), 0);
    let store = &server.services().store;
    assert!(store.is_empty(culvert::store::Cf::Media).unwrap());
    assert!(store.is_empty(culvert::store::Cf::MediaFiles).unwrap());

    // Exactly at the limit is fine.
    upload(&server, &alice, vec![7; 10000], "text/plain", None).await;
    assert_eq!(stored_files(&server), 1);
}

#[tokio::test]
async fn thumbnails_from_png_jpeg_webp_and_gif() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    for (format, content_type, thumb_type) in [
        (image::ImageFormat::Png, "image/png", "image/png"),
        (image::ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
        (image::ImageFormat::WebP, "image/webp", "image/png"),
        (image::ImageFormat::Gif, "image/gif", "image/png"),
    ] {
        let mxc = upload(
            &server,
            &alice,
            image_bytes(640, 400, format),
            content_type,
            None,
        )
        .await;
        let thumb = |w: u32, h: u32, method: &str| {
            let path = format!(
                "{V1}/thumbnail/{}/{}?width={w}&height={h}&method={method}",
                mxc.0, mxc.1
            );
            let server = &server;
            let token = alice.token.clone();
            async move { get(server, &path, Some(&token)).await }
        };
        // Crop: exactly the standard size asked for (snapped up from 90x90).
        let got = thumb(90, 90, "crop").await;
        assert_eq!(got.status, StatusCode::OK, "{content_type}");
        assert_eq!(got.header("content-type"), thumb_type, "{content_type}");
        assert!(got.header("content-disposition").starts_with("inline"));
        assert_eq!(dimensions(&got.body), (96, 96), "{content_type}");
        // Scale: fits 320x240 keeping the aspect ratio.
        let got = thumb(320, 240, "scale").await;
        assert_eq!(got.status, StatusCode::OK, "{content_type}");
        assert_eq!(dimensions(&got.body), (320, 200), "{content_type}");
        // Made once: asking again gives the stored bytes.
        let again = thumb(320, 240, "scale").await;
        assert!(again.body == got.body);
        // The legacy path too.
        let got = get(
            &server,
            &format!(
                "{LEGACY}/thumbnail/{}/{}?width=32&height=32&method=crop",
                mxc.0, mxc.1
            ),
            None,
        )
        .await;
        assert_eq!(dimensions(&got.body), (32, 32), "{content_type}");
    }

    // An image smaller than the thumbnail keeps its size: a JPEG is served as it is; other
    // formats, which may be animated, as their first frame (a thumbnail is never animated
    // unless asked for, spec v1.11), never upscaled.
    let small_jpeg = image_bytes(20, 10, image::ImageFormat::Jpeg);
    let mxc = upload(&server, &alice, small_jpeg.clone(), "image/jpeg", None).await;
    let got = get(
        &server,
        &format!("{V1}/thumbnail/{}/{}?width=96&height=96", mxc.0, mxc.1),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == small_jpeg);
    let mut animated = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut animated);
        let frames = [image::Rgba([0, 0, 0, 255]), image::Rgba([255, 0, 0, 255])]
            .map(|pixel| image::Frame::new(image::RgbaImage::from_pixel(20, 10, pixel)));
        encoder.encode_frames(frames).expect("a two-frame GIF");
    }
    for (small, content_type) in [
        (image_bytes(20, 10, image::ImageFormat::Png), "image/png"),
        (animated, "image/gif"),
    ] {
        let mxc = upload(&server, &alice, small, content_type, None).await;
        let got = get(
            &server,
            &format!("{V1}/thumbnail/{}/{}?width=96&height=96", mxc.0, mxc.1),
            Some(&alice.token),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{content_type}");
        assert!(
            got.body.starts_with(b"\x89PNG"),
            "{content_type}: not one PNG frame"
        );
        assert_eq!(dimensions(&got.body), (20, 10), "{content_type}");
    }

    // A tall narrow image is cropped, never stretched: 40 wide stays 40 wide.
    let narrow = image_bytes(40, 500, image::ImageFormat::Png);
    let mxc = upload(&server, &alice, narrow, "image/png", None).await;
    let got = get(
        &server,
        &format!(
            "{V1}/thumbnail/{}/{}?width=96&height=96&method=crop",
            mxc.0, mxc.1
        ),
        Some(&alice.token),
    )
    .await;
    assert_eq!(dimensions(&got.body), (40, 96));

    // Bad parameters.
    let got = get(
        &server,
        &format!("{V1}/thumbnail/{}/{}?width=-1&height=96", mxc.0, mxc.1),
        Some(&alice.token),
    )
    .await;
    assert_error(&got.error(), StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let got = get(
        &server,
        &format!(
            "{V1}/thumbnail/{}/{}?width=1&height=96&method=stretch",
            mxc.0, mxc.1
        ),
        Some(&alice.token),
    )
    .await;
    assert_error(&got.error(), StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

/// A PNG made of the signature and an IHDR chunk claiming `width` x `height` RGBA pixels.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&width.to_be_bytes());
    chunk.extend_from_slice(&height.to_be_bytes());
    chunk.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    png
}

#[tokio::test]
async fn corrupt_images_bombs_and_non_images_are_refused_cleanly() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    let thumbnail = |mxc: (String, String)| {
        let path = format!(
            "{V1}/thumbnail/{}/{}?width=96&height=96&method=crop",
            mxc.0, mxc.1
        );
        let server = &server;
        let token = alice.token.clone();
        async move { get(server, &path, Some(&token)).await }
    };

    let mut corrupt = image_bytes(200, 200, image::ImageFormat::Png);
    corrupt.truncate(120);
    corrupt.extend_from_slice(&[0x55; 200]);
    let mxc = upload(&server, &alice, corrupt, "image/png", None).await;
    let got = thumbnail(mxc).await;
    assert_error(&got.error(), StatusCode::BAD_REQUEST, "M_UNKNOWN");

    let mxc = upload(
        &server,
        &alice,
        b"not an image".to_vec(),
        "image/jpeg",
        None,
    )
    .await;
    let got = thumbnail(mxc).await;
    assert_error(&got.error(), StatusCode::BAD_REQUEST, "M_UNKNOWN");

    // 100000 x 100000 pixels would be 40 GB: refused from the header alone.
    let mxc = upload(
        &server,
        &alice,
        png_header_only(100_000, 100_000),
        "image/png",
        None,
    )
    .await;
    let got = thumbnail(mxc).await;
    assert_error(&got.error(), StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");

    let mxc = upload(&server, &alice, b"just text".to_vec(), "text/plain", None).await;
    let got = thumbnail(mxc).await;
    assert_error(&got.error(), StatusCode::BAD_REQUEST, "M_UNKNOWN");

    // The server is fine afterwards.
    let mxc = upload(
        &server,
        &alice,
        image_bytes(200, 200, image::ImageFormat::Png),
        "image/png",
        None,
    )
    .await;
    assert_eq!(thumbnail(mxc).await.status, StatusCode::OK);
}

#[tokio::test]
async fn asynchronous_upload() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    let bob = server.register("bob", "password-1").await;

    let created = send(
        server
            .http
            .post(format!("{}/_matrix/media/v1/create", server.base))
            .bearer_auth(&alice.token),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    let created = created.json();
    assert!(
        created["unused_expires_at"].as_u64().unwrap() > 1_700_000_000_000,
        "{created}"
    );
    let mxc = split_mxc(created["content_uri"].as_str().unwrap());

    // Not there yet: a short wait ends in 504 M_NOT_YET_UPLOADED.
    let got = get(
        &server,
        &format!("{V1}/download/{}/{}?timeout_ms=100", mxc.0, mxc.1),
        Some(&alice.token),
    )
    .await;
    assert_error(
        &got.error(),
        StatusCode::GATEWAY_TIMEOUT,
        "M_NOT_YET_UPLOADED",
    );

    let put = |who: &Session, body: &'static [u8], mxc: &(String, String)| {
        server
            .http
            .put(format!(
                "{}{LEGACY}/upload/{}/{}",
                server.base, mxc.0, mxc.1
            ))
            .bearer_auth(&who.token)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
    };
    // Someone else may not fill it.
    let got = send(put(&bob, b"bob's", &mxc)).await;
    assert_error(&got.error(), StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // A download that waits sees the upload arrive.
    let waiting = {
        let url = format!(
            "{}{V1}/download/{}/{}?timeout_ms=10000",
            server.base, mxc.0, mxc.1
        );
        let request = server.http.get(url).bearer_auth(&alice.token);
        tokio::spawn(async move { send(request).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = send(put(&alice, b"later content", &mxc)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json(), serde_json::json!({}));
    let waited = waiting.await.unwrap();
    assert_eq!(waited.status, StatusCode::OK);
    assert_eq!(waited.body, b"later content");
    assert_eq!(waited.header("content-type"), "text/plain");

    // Only once.
    let got = send(put(&alice, b"again", &mxc)).await;
    assert_error(
        &got.error(),
        StatusCode::CONFLICT,
        "M_CANNOT_OVERWRITE_MEDIA",
    );
    // At most MAX_PENDING_PER_USER IDs waiting per user; a completed one frees its place.
    let create = || {
        send(
            server
                .http
                .post(format!("{}/_matrix/media/v1/create", server.base))
                .bearer_auth(&bob.token),
        )
    };
    for _ in 0..culvert::service::media::MAX_PENDING_PER_USER {
        assert_eq!(create().await.status, StatusCode::OK);
    }
    let got = create().await;
    assert_error(
        &got.error(),
        StatusCode::TOO_MANY_REQUESTS,
        "M_LIMIT_EXCEEDED",
    );
    assert_eq!(
        send(
            server
                .http
                .post(format!("{}/_matrix/media/v1/create", server.base))
                .bearer_auth(&alice.token)
        )
        .await
        .status,
        StatusCode::OK
    );

    // Unknown IDs and IDs of other servers.
    let got = send(put(
        &alice,
        b"x",
        &("test.local".to_owned(), "nosuchid".to_owned()),
    ))
    .await;
    assert_error(&got.error(), StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let got = send(put(
        &alice,
        b"x",
        &("elsewhere.org".to_owned(), mxc.1.clone()),
    ))
    .await;
    assert_error(&got.error(), StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

#[tokio::test]
async fn authenticated_endpoints_need_a_token_and_legacy_downloads_do_not() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    let mxc = upload(
        &server,
        &alice,
        image_bytes(100, 100, image::ImageFormat::Png),
        "image/png",
        Some("a.png"),
    )
    .await;
    for path in [
        format!("{V1}/download/{}/{}", mxc.0, mxc.1),
        format!("{V1}/download/{}/{}/x.png", mxc.0, mxc.1),
        format!("{V1}/thumbnail/{}/{}?width=32&height=32", mxc.0, mxc.1),
        format!("{V1}/config"),
        format!("{V1}/preview_url?url=https://example.org"),
        format!("{LEGACY}/config"),
    ] {
        let got = get(&server, &path, None).await;
        assert_error(&got.error(), StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
        let got = get(&server, &path, Some("not-a-token")).await;
        assert_error(&got.error(), StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    }
    let got = send(
        server
            .http
            .post(format!("{}{LEGACY}/upload", server.base))
            .body("x"),
    )
    .await;
    assert_error(&got.error(), StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");

    // The access_token query parameter works too (matrix-nio uses it).
    let got = get(
        &server,
        &format!(
            "{V1}/download/{}/{}/?access_token={}",
            mxc.0, mxc.1, alice.token
        ),
        None,
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("content-disposition"),
        "inline; filename=\"a.png\""
    );

    for path in [
        format!("{LEGACY}/download/{}/{}", mxc.0, mxc.1),
        format!("/_matrix/media/r0/download/{}/{}/b.png", mxc.0, mxc.1),
        format!("{LEGACY}/thumbnail/{}/{}?width=32&height=32", mxc.0, mxc.1),
    ] {
        assert_eq!(
            get(&server, &path, None).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn freezing_legacy_media_hides_only_new_uploads_from_legacy_endpoints() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    let png = image_bytes(100, 100, image::ImageFormat::Png);
    let old = upload(&server, &alice, png.clone(), "image/png", None).await;

    let server = server
        .restart_with("freeze_legacy_media = true\nrate_limits = { enabled = false }")
        .await;
    let alice = server.login_ok("alice", "password-1").await;
    let new = upload(&server, &alice, png.clone(), "image/png", None).await;

    let legacy = |mxc: &(String, String)| {
        [
            format!("{LEGACY}/download/{}/{}", mxc.0, mxc.1),
            format!("{LEGACY}/thumbnail/{}/{}?width=32&height=32", mxc.0, mxc.1),
        ]
    };
    for path in legacy(&old) {
        assert_eq!(
            get(&server, &path, None).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    for path in legacy(&new) {
        let got = get(&server, &path, None).await;
        assert_error(&got.error(), StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    let got = download(&server, &alice, &new).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == png);
}

#[tokio::test]
async fn identical_uploads_share_one_file_until_both_are_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    let bob = server.register("bob", "password-1").await;
    let png = image_bytes(400, 300, image::ImageFormat::Png);
    let first = upload(&server, &alice, png.clone(), "image/png", Some("a.png")).await;
    let second = upload(&server, &bob, png.clone(), "image/png", Some("b.png")).await;
    assert_ne!(first, second);
    assert_eq!(stored_files(&server), 1);
    // Each keeps its own name.
    let got = download(&server, &bob, &second).await;
    assert_eq!(
        got.header("content-disposition"),
        "inline; filename=\"b.png\""
    );

    // A thumbnail of the first adds a file.
    let got = get(
        &server,
        &format!(
            "{V1}/thumbnail/{}/{}?width=96&height=96&method=crop",
            first.0, first.1
        ),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(stored_files(&server), 2);

    let media = &server.services().media;
    let name = |s: &str| <&ruma::ServerName>::try_from(s).unwrap().to_owned();
    assert!(media.delete(&name(&first.0), &first.1).unwrap());
    assert!(!media.delete(&name(&first.0), &first.1).unwrap());
    // The thumbnail's file went; the content stays for the second ID.
    assert_eq!(stored_files(&server), 1);
    let got = download(&server, &alice, &first).await;
    assert_error(&got.error(), StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let got = download(&server, &alice, &second).await;
    assert!(got.body == png);

    // Quarantined media is not served, released it is again.
    assert!(
        media
            .set_quarantined(&name(&second.0), &second.1, true)
            .unwrap()
    );
    let got = download(&server, &alice, &second).await;
    assert_error(&got.error(), StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert!(
        media
            .set_quarantined(&name(&second.0), &second.1, false)
            .unwrap()
    );
    assert_eq!(
        download(&server, &alice, &second).await.status,
        StatusCode::OK
    );

    assert!(media.delete(&name(&second.0), &second.1).unwrap());
    assert_eq!(stored_files(&server), 0);
}

/// A tiny web site on 127.0.0.1: an HTML page with Open Graph tags, its image, and a
/// redirect to the page.
async fn spawn_web_site() -> String {
    use axum::{Router, http::header as h, routing::get};
    let png = image_bytes(48, 32, image::ImageFormat::Png);
    let router = Router::new()
        .route(
            "/page",
            get(|| async {
                (
                    [(h::CONTENT_TYPE, "text/html; charset=utf-8")],
                    r#"<html><head><title>fallback</title>
                    <meta property="og:title" content="A &amp; B's page">
                    <meta property="og:description" content="Described.">
                    <meta property="og:image" content="/image.png">
                    </head><body>hi</body></html>"#,
                )
            }),
        )
        .route(
            "/image.png",
            get(move || {
                let png = png.clone();
                async move { ([(h::CONTENT_TYPE, "image/png")], png) }
            }),
        )
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(h::LOCATION, "/page")]) }),
        )
        .route(
            "/to-private",
            get(|| async { (StatusCode::FOUND, [(h::LOCATION, "http://10.0.0.1/")]) }),
        )
        .route(
            "/to-metadata",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(h::LOCATION, "http://metadata.internal.invalid/")],
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn preview_path(url: &str) -> String {
    format!("{V1}/preview_url?url={}", crate::common::urlencode(url))
}

#[tokio::test]
async fn url_previews_are_off_by_default() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    let got = get(
        &server,
        &preview_path("https://example.org/"),
        Some(&alice.token),
    )
    .await;
    assert_error(&got.error(), StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn url_previews_refuse_loopback_by_default() {
    let site = spawn_web_site().await;
    let server =
        TestServer::start_with("url_preview_enabled = true\nrate_limits = { enabled = false }")
            .await;
    let alice = server.register("alice", "password-1").await;
    let port = site.rsplit(':').next().unwrap();
    for url in [
        format!("{site}/page"),
        format!("http://localhost:{port}/page"),
        format!("http://[::1]:{port}/page"),
        format!("http://[::ffff:127.0.0.1]:{port}/page"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        let got = get(&server, &preview_path(&url), Some(&alice.token)).await;
        assert_error(&got.error(), StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
    let got = get(
        &server,
        &preview_path("ftp://example.org/"),
        Some(&alice.token),
    )
    .await;
    assert_error(&got.error(), StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let got = get(&server, &format!("{V1}/preview_url"), Some(&alice.token)).await;
    assert_error(&got.error(), StatusCode::BAD_REQUEST, "M_MISSING_PARAM");
}

#[tokio::test]
async fn url_previews_of_an_allowed_site_carry_open_graph_and_the_image() {
    let site = spawn_web_site().await;
    let server = TestServer::start_with(
        "url_preview_enabled = true\nip_range_denylist = []\nrate_limits = { enabled = false }",
    )
    .await;
    let alice = server.register("alice", "password-1").await;

    let got = get(
        &server,
        &preview_path(&format!("{site}/page")),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let preview = got.json();
    assert_eq!(preview["og:title"], "A & B's page", "{preview}");
    assert_eq!(preview["og:description"], "Described.");
    assert_eq!(preview["og:image:width"], 48);
    assert_eq!(preview["og:image:height"], 32);
    assert_eq!(preview["og:image:type"], "image/png");
    let image = split_mxc(preview["og:image"].as_str().expect("og:image"));
    let got = download(&server, &alice, &image).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(dimensions(&got.body), (48, 32));

    // Cached: the same answer again (the same mxc URI, no second image stored).
    let again = get(
        &server,
        &preview_path(&format!("{site}/page")),
        Some(&alice.token),
    )
    .await;
    assert_eq!(again.json(), preview);

    // Redirects are followed; an image URL is previewed as the image.
    let got = get(
        &server,
        &preview_path(&format!("{site}/redirect")),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.json()["og:title"], "A & B's page");
    let got = get(
        &server,
        &format!(
            "{LEGACY}/preview_url?url={}",
            crate::common::urlencode(&format!("{site}/image.png"))
        ),
        Some(&alice.token),
    )
    .await;
    let preview = got.json();
    assert!(
        preview["og:image"]
            .as_str()
            .unwrap()
            .starts_with("mxc://test.local/")
    );
    assert_eq!(
        preview["matrix:image:size"].as_u64().unwrap() as usize,
        got_len(&server, &alice, &preview).await
    );
}

async fn got_len(server: &TestServer, who: &Session, preview: &Value) -> usize {
    let mxc = split_mxc(preview["og:image"].as_str().unwrap());
    download(server, who, &mxc).await.body.len()
}

#[tokio::test]
async fn url_previews_never_follow_redirects_into_denied_ranges() {
    let site = spawn_web_site().await;
    // Loopback allowed (the test site lives there), the 10/8 network not.
    let server = TestServer::start_with(
        "url_preview_enabled = true\nip_range_denylist = [\"10.0.0.0/8\"]\nrate_limits = { enabled = false }",
    )
    .await;
    let alice = server.register("alice", "password-1").await;
    let got = get(
        &server,
        &preview_path(&format!("{site}/page")),
        Some(&alice.token),
    )
    .await;
    assert_eq!(got.json()["og:title"], "A & B's page");
    let got = get(
        &server,
        &preview_path(&format!("{site}/to-private")),
        Some(&alice.token),
    )
    .await;
    assert_error(&got.error(), StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // A name that does not resolve is a gateway error, not a refusal.
    let got = get(
        &server,
        &preview_path(&format!("{site}/to-metadata")),
        Some(&alice.token),
    )
    .await;
    assert_error(&got.error(), StatusCode::BAD_GATEWAY, "M_UNKNOWN");
}

#[tokio::test]
async fn remote_media_stored_by_the_service_is_served_like_local_media() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "password-1").await;
    let media = &server.services().media;
    let remote = <&ruma::ServerName>::try_from("remote.example").unwrap();
    let png = image_bytes(200, 100, image::ImageFormat::Png);
    let file = media.receive_bytes(png.clone()).await.unwrap();
    media
        .store_remote(
            remote,
            "abcdef",
            file,
            Some("image/png".into()),
            Some("r.png".into()),
        )
        .unwrap();
    let again = media.receive_bytes(png.clone()).await.unwrap();
    assert!(
        media
            .store_remote(remote, "abcdef", again, None, None)
            .is_err()
    );
    assert_eq!(stored_files(&server), 1);

    let mxc = ("remote.example".to_owned(), "abcdef".to_owned());
    let got = download(&server, &alice, &mxc).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == png);
    assert_eq!(
        got.header("content-disposition"),
        "inline; filename=\"r.png\""
    );
    let got = get(
        &server,
        &format!("{V1}/thumbnail/remote.example/abcdef?width=32&height=32&method=crop"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(dimensions(&got.body), (32, 32));
    // Remote media not stored here is not found (fetching it is the federation's job).
    let got = get(
        &server,
        &format!("{V1}/download/remote.example/other"),
        Some(&alice.token),
    )
    .await;
    assert_error(&got.error(), StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Clients learn that authenticated media is served here.
    let (_, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(
        versions["unstable_features"]["org.matrix.msc3916.stable"],
        true
    );
}
