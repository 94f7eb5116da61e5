//! Media across two culverts over TLS on loopback: B's clients download and thumbnail A's
//! media through B (fetched once over federation, then served from B's store), and A's
//! federation media endpoints answer multipart/mixed to signed requests only.

use std::io::Cursor;

use reqwest::StatusCode;
use ruma::{
    ServerName, UInt,
    api::federation::authenticated_media::{FileOrLocation, get_content, get_content_thumbnail},
};

use crate::common::{Session, TestServer, assert_error, urlencode};

fn name(server: &TestServer) -> ruma::OwnedServerName {
    ServerName::parse(server.server_name()).unwrap()
}

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
            .unwrap_or("")
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> Fetched {
    let mut request = server.http.get(format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request sent");
    Fetched {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

/// Uploads on `server`; returns the media ID.
async fn upload(
    server: &TestServer,
    who: &Session,
    bytes: Vec<u8>,
    content_type: &str,
    filename: &str,
) -> String {
    let response = server
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename={}",
            server.base,
            urlencode(filename)
        ))
        .bearer_auth(&who.token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    let mxc = body["content_uri"].as_str().unwrap();
    mxc.rsplit('/').next().unwrap().to_owned()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(image)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .expect("an image")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_media_is_fetched_once_then_served_from_the_local_store() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let image = png(640, 400);
    let media_id = upload(&a, &alice, image.clone(), "image/png", "cat.png").await;
    let v1 = format!(
        "/_matrix/client/v1/media/download/{}/{media_id}",
        a.server_name()
    );

    // allow_remote=false: B has not got it and must not fetch it.
    let got = get(&b, &format!("{v1}?allow_remote=false"), Some(&bob.token)).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.json()["errcode"], "M_NOT_FOUND");
    assert!(
        b.services()
            .media
            .get(&name(&a), &media_id)
            .unwrap()
            .is_none()
    );

    // Several clients at once: all get the bytes; B stores it once.
    let fetches = (0..4).map(|_| get(&b, &v1, Some(&bob.token)));
    for got in futures_util::future::join_all(fetches).await {
        assert_eq!(got.status, StatusCode::OK, "{:?}", got.json());
        assert!(got.body == image);
        assert_eq!(got.header("content-type"), "image/png");
        assert_eq!(
            got.header("content-disposition"),
            "inline; filename=\"cat.png\""
        );
    }
    let stored = b.services().media.get(&name(&a), &media_id).unwrap();
    let stored = stored.expect("B stored A's media");
    assert_eq!(stored.size, image.len() as u64);
    assert_eq!(stored.filename.as_deref(), Some("cat.png"));

    // A thumbnail made by B from the fetched original.
    let got = get(
        &b,
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}/{media_id}?width=320&height=240&method=scale",
            a.server_name()
        ),
        Some(&bob.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.json());
    assert_eq!(dimensions(&got.body), (320, 200));

    // A forgets the media: B still serves it (authenticated and legacy paths), from its store.
    assert!(a.services().media.delete(&name(&a), &media_id).unwrap());
    let on_a = get(
        &a,
        &format!(
            "/_matrix/client/v1/media/download/{}/{media_id}",
            a.server_name()
        ),
        Some(&alice.token),
    )
    .await;
    assert_eq!(on_a.status, StatusCode::NOT_FOUND);
    let got = get(&b, &v1, Some(&bob.token)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == image);
    let got = get(
        &b,
        &format!(
            "/_matrix/media/v3/download/{}/{media_id}/other.png",
            a.server_name()
        ),
        None,
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == image);
    assert_eq!(
        got.header("content-disposition"),
        "inline; filename=\"other.png\""
    );
    let got = get(
        &b,
        &format!(
            "/_matrix/media/v3/thumbnail/{}/{media_id}?width=32&height=32&method=crop",
            a.server_name()
        ),
        None,
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(dimensions(&got.body), (32, 32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_quarantined_unreachable_and_oversized_remote_media() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("max_upload_size = 1000").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let download =
        |server: String, id: &str| format!("/_matrix/client/v1/media/download/{server}/{id}");

    // A has no such media.
    let got = get(
        &b,
        &download(a.server_name(), "nosuchmedia"),
        Some(&bob.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{:?}", got.json());
    assert_eq!(got.json()["errcode"], "M_NOT_FOUND");

    // Quarantined on A: not served to other servers either.
    let quarantined = upload(&a, &alice, b"secret".to_vec(), "text/plain", "q.txt").await;
    a.services()
        .media
        .set_quarantined(&name(&a), &quarantined, true)
        .unwrap();
    let got = get(
        &b,
        &download(a.server_name(), &quarantined),
        Some(&bob.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);

    // Larger than B's limit: refused, nothing stored.
    let big = upload(&a, &alice, vec![b'x'; 5000], "text/plain", "big.txt").await;
    let got = get(&b, &download(a.server_name(), &big), Some(&bob.token)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{:?}", got.json());
    assert_eq!(got.json()["errcode"], "M_TOO_LARGE");
    assert!(b.services().media.get(&name(&a), &big).unwrap().is_none());
    // Within it: fine.
    let small = upload(&a, &alice, vec![b'y'; 900], "text/plain", "small.txt").await;
    let got = get(&b, &download(a.server_name(), &small), Some(&bob.token)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), 900);
    assert_eq!(got.header("content-type"), "text/plain");

    // Nobody listens there: 502.
    let got = get(&b, &download("localhost:1".into(), "abc"), Some(&bob.token)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{:?}", got.json());

    // A denied server is not contacted.
    let c =
        TestServer::start_federating(&format!("federation_denylist = [\"{}\"]", a.server_name()))
            .await;
    let carol = c.register("carol", "carol-password-1").await;
    let got = get(&c, &download(a.server_name(), &small), Some(&carol.token)).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(c.services().media.get(&name(&a), &small).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_media_endpoints_answer_multipart_to_signed_requests_only() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let text = b"Hello over federation\n".to_vec();
    let text_id = upload(&a, &alice, text.clone(), "text/plain", "hello.txt").await;
    let image_id = upload(&a, &alice, png(640, 400), "image/png", "big.png").await;

    // The raw answer is multipart/mixed.
    let raw = b
        .services()
        .send_federation_request_raw(&name(&a), get_content::v1::Request::new(text_id.clone()))
        .await
        .unwrap();
    assert_eq!(raw.status, StatusCode::OK);
    let content_type = raw.headers["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("multipart/mixed; boundary="),
        "{content_type}"
    );

    // Parsed by ruma: metadata, then the content with its type and file name.
    let response = b
        .services()
        .send_federation_request(&name(&a), get_content::v1::Request::new(text_id.clone()))
        .await
        .unwrap();
    let FileOrLocation::File(content) = response.content else {
        panic!("a file, not a location");
    };
    assert!(content.file == text);
    assert_eq!(content.content_type.as_deref(), Some("text/plain"));
    let disposition = content.content_disposition.expect("a disposition");
    assert_eq!(disposition.filename.as_deref(), Some("hello.txt"));
    assert_eq!(disposition.disposition_type.as_str(), "inline");

    // A thumbnail through the federation endpoint.
    let mut request = get_content_thumbnail::v1::Request::new(
        image_id.clone(),
        UInt::from(96u32),
        UInt::from(96u32),
    );
    request.method = Some(ruma::media::Method::Crop);
    let response = b
        .services()
        .send_federation_request(&name(&a), request)
        .await
        .unwrap();
    let FileOrLocation::File(content) = response.content else {
        panic!("a file, not a location");
    };
    assert_eq!(content.content_type.as_deref(), Some("image/png"));
    assert_eq!(dimensions(&content.file), (96, 96));

    // Unknown media: 404.
    let error = b
        .services()
        .send_federation_request(&name(&a), get_content::v1::Request::new("nope".into()))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));

    // Unsigned: 401.
    let result = a
        .get(
            &format!("/_matrix/federation/v1/media/download/{text_id}"),
            None,
        )
        .await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    let result = a
        .get(
            &format!("/_matrix/federation/v1/media/thumbnail/{image_id}?width=32&height=32"),
            None,
        )
        .await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
}

/// A stand-in for an older homeserver over TLS: no federation media endpoint (404
/// `M_UNRECOGNIZED`) except for `moved`, whose multipart answer names a `Location`; the legacy
/// download endpoint serves `old`. Returns its server name and the paths it was asked for.
async fn old_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::{extract::Request, response::IntoResponse};

    let (listener, name) = crate::common::tls_listener().await;
    let server_name = name.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let router = axum::Router::new().fallback(move |request: Request| {
        let log = log.clone();
        let name = name.clone();
        async move {
            let asked = request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            log.lock().unwrap().push(asked);
            let path = request.uri().path();
            if path == format!("/_matrix/media/v3/download/{name}/old") {
                assert_eq!(request.uri().query(), Some("allow_remote=false"));
                return (
                    [
                        ("content-type", "text/plain"),
                        ("content-disposition", "attachment; filename=\"old.txt\""),
                    ],
                    "from the legacy endpoint",
                )
                    .into_response();
            }
            if path == "/_matrix/federation/v1/media/download/moved" {
                let body = format!(
                    "\r\n--b0undary\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
                     --b0undary\r\nLocation: https://{name}/files/moved\r\n\r\n\r\n--b0undary--\r\n"
                );
                return (
                    [("content-type", "multipart/mixed; boundary=b0undary")],
                    body,
                )
                    .into_response();
            }
            if path == "/files/moved" {
                return ([("content-type", "image/gif")], "GIF89a-ish").into_response();
            }
            (
                StatusCode::NOT_FOUND,
                [("content-type", "application/json")],
                r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#,
            )
                .into_response()
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    (server_name, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_servers_are_asked_on_the_legacy_endpoint_and_locations_are_followed() {
    let (old, seen) = old_server().await;
    let b = TestServer::start_federating("").await;
    let bob = b.register("bob", "bob-password-1").await;

    let got = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{old}/old"),
        Some(&bob.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.json());
    assert_eq!(got.body, b"from the legacy endpoint");
    assert_eq!(got.header("content-type"), "text/plain");
    assert_eq!(
        got.header("content-disposition"),
        "inline; filename=\"old.txt\""
    );
    assert_eq!(
        seen.lock().unwrap().clone(),
        [
            "/_matrix/federation/v1/media/download/old".to_owned(),
            format!("/_matrix/media/v3/download/{old}/old?allow_remote=false"),
        ]
    );

    // A multipart answer naming a Location: the content is fetched from there.
    let got = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{old}/moved"),
        Some(&bob.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.json());
    assert_eq!(got.body, b"GIF89a-ish");
    assert_eq!(got.header("content-type"), "image/gif");

    // Neither endpoint has it: 404.
    let got = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{old}/gone"),
        Some(&bob.token),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.json()["errcode"], "M_NOT_FOUND");
}
