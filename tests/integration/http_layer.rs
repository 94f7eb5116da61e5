//! The HTTP layer: versions, CORS, unknown paths, body errors, access tokens.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn versions_and_cors() {
    let server = TestServer::start().await;
    let response = server
        .http
        .get(format!("{}/_matrix/client/versions", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body: serde_json::Value = response.json().await.unwrap();
    let versions: Vec<&str> = body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        versions.contains(&"v1.1") && versions.contains(&"r0.6.1"),
        "{body}"
    );

    // A pre-flight on any path, known or not, is answered with the CORS headers.
    for path in ["/_matrix/client/v3/login", "/_matrix/client/v3/nonexistent"] {
        let response = server
            .http
            .request(Method::OPTIONS, format!("{}{path}", server.base))
            .header("Origin", "https://app.element.io")
            .header("Access-Control-Request-Method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert!(
            headers["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("PUT")
        );
        assert!(
            headers["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("Authorization")
        );
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_unrecognized() {
    let server = TestServer::start().await;
    assert_error(
        &server
            .get("/_matrix/client/v3/no/such/endpoint", None)
            .await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &server.get("/", None).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    // Paths next to built ones are no exception.
    assert_error(
        &server
            .get("/_matrix/client/v3/thirdparty/no/such/lookup", None)
            .await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &server
            .delete("/_matrix/client/versions", None, json!({}))
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    );
}

#[tokio::test]
async fn malformed_bodies_get_matrix_errors() {
    let server = TestServer::start().await;
    let url = format!("{}/_matrix/client/v3/login", server.base);
    let not_json = server
        .http
        .post(&url)
        .body("{this is not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = not_json.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");

    // Valid JSON of the wrong shape.
    assert_error(
        &server
            .post("/_matrix/client/v3/login", None, json!({ "type": 5 }))
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &server
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({ "username": ["x"] }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    // A malformed user ID in the path.
    assert_error(
        &server
            .get("/_matrix/client/v3/profile/not-a-user-id", None)
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let server =
        TestServer::start_with("max_request_size = 4096\nrate_limits = { enabled = false }").await;
    let session = server.register("big", "password1").await;
    let huge = "x".repeat(10_000);
    let result = server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.big",
                session.user_id
            ),
            Some(&session.token),
            json!({ "blob": huge }),
        )
        .await;
    assert_error(&result, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    // Nothing was half-written.
    assert_error(
        &server
            .get(
                &format!(
                    "/_matrix/client/v3/user/{}/account_data/org.example.big",
                    session.user_id
                ),
                Some(&session.token),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // A chunked body (no Content-Length) is cut off too.
    let stream = futures_util_stream(huge.into_bytes());
    let response = server
        .http
        .put(format!(
            "{}/_matrix/client/v3/user/{}/account_data/org.example.big",
            server.base, session.user_id
        ))
        .bearer_auth(&session.token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

fn futures_util_stream(
    bytes: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct Chunks(Vec<Vec<u8>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.pop().map(Ok))
        }
    }
    Chunks(bytes.chunks(1000).map(<[u8]>::to_vec).rev().collect())
}

#[tokio::test]
async fn access_tokens_header_and_query() {
    let server = TestServer::start().await;
    let session = server.register("tokens", "password1").await;

    assert_error(
        &server.get("/_matrix/client/v3/account/whoami", None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    let unknown = server
        .get("/_matrix/client/v3/account/whoami", Some("nonsense"))
        .await;
    assert_error(&unknown, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(unknown.1["soft_logout"], false);

    let (status, body) = server
        .get("/_matrix/client/v3/account/whoami", Some(&session.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], session.user_id);
    assert_eq!(body["device_id"], session.device_id);

    // The deprecated query parameter still works, on the r0 path too.
    let (status, body) = server
        .get(
            &format!(
                "/_matrix/client/r0/account/whoami?access_token={}",
                session.token
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], session.user_id);
}

#[tokio::test]
async fn capabilities_and_well_known() {
    let server = TestServer::start().await;
    let session = server.register("caps", "password1").await;
    assert_error(
        &server.get("/_matrix/client/v3/capabilities", None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    let (status, body) = server
        .get("/_matrix/client/v3/capabilities", Some(&session.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Capabilities at their spec default may be omitted: absent `m.change_password` means enabled.
    assert_ne!(
        body["capabilities"]["m.change_password"]["enabled"], false,
        "{body}"
    );
    assert_eq!(body["capabilities"]["m.room_versions"]["default"], "12");
    assert_eq!(
        body["capabilities"]["m.room_versions"]["available"]["12"],
        "stable"
    );
    assert_eq!(body["capabilities"]["m.3pid_changes"]["enabled"], false);
    assert_eq!(body["capabilities"]["m.profile_fields"]["enabled"], true);

    assert_error(
        &server.get("/.well-known/matrix/client", None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server.get("/.well-known/matrix/server", None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    let configured = TestServer::start_with(
        "well_known = { client = \"https://matrix.example.org\", server = \"matrix.example.org:443\" }",
    )
    .await;
    let (status, body) = configured.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["m.homeserver"]["base_url"],
        "https://matrix.example.org"
    );
    let (status, body) = configured.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["m.server"], "matrix.example.org:443");
    assert_error(
        &configured.get("/.well-known/matrix/support", None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Support contacts and page (spec v1.10), as configured.
    let support = TestServer::start_with(
        "[global.well_known]\nsupport_page = \"https://example.org/help\"\n\
         support_contacts = [{ role = \"m.role.admin\", matrix_id = \"@admin:example.org\", email_address = \"admin@example.org\" }, { role = \"m.role.security\", email_address = \"security@example.org\" }]",
    )
    .await;
    let (status, body) = support.get("/.well-known/matrix/support", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "contacts": [
                { "role": "m.role.admin", "matrix_id": "@admin:example.org", "email_address": "admin@example.org" },
                { "role": "m.role.security", "email_address": "security@example.org" },
            ],
            "support_page": "https://example.org/help",
        })
    );
    let error = culvert::config::Config::from_toml_str(
        "[global]\nserver_name = \"a.b\"\ndatabase_path = \"/x\"\n[global.well_known]\nsupport_contacts = [{ role = \"m.role.admin\" }]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("support_contacts"), "{error}");
}

/// `POST /login` with an access token and `{}` made ruma's parser panic (the connection was
/// dropped without an answer); it is a bad request now.
#[tokio::test]
async fn a_login_body_ruma_cannot_parse_is_a_bad_request() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let answer = server
        .post("/_matrix/client/v3/login", Some(&alice.token), json!({}))
        .await;
    assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{}", answer.1);
    assert!(answer.1["errcode"].is_string(), "{}", answer.1);
}

/// Every route culvert mounts, given bodies that are no JSON, empty objects and objects of the
/// wrong shape, with a valid token and path parameters that name nothing: each answers (no
/// dropped connection), never with a 5xx, and every refusal is a Matrix error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_malformed_requests() {
    let server = TestServer::start().await;
    let mut alice = server.register("alice", "pw").await;
    server.register("bob", "pw").await;
    let routes = culvert::api::ruma::mounted_routes();
    assert!(routes.len() > 150, "the routes are known: {}", routes.len());
    let fill = |path: &str| -> String {
        let mut out = String::new();
        let mut rest = path;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
            let name = &rest[open + 1..close - 1];
            out.push_str(match name {
                "room_id" | "roomId" => "%21nosuch%3Atest.local",
                "room_id_or_alias" | "roomIdOrAlias" => "%23nosuch%3Atest.local",
                "room_alias" | "roomAlias" => "%23nosuch%3Atest.local",
                "user_id" | "userId" => "%40alice%3Atest.local",
                "event_id" | "eventId" => "%24nosuch",
                "server_name" | "serverName" | "origin" => "test.local",
                "media_id" | "mediaId" => "nosuch",
                _ => "x",
            });
            rest = &rest[close..];
        }
        out.push_str(rest);
        out
    };
    let bodies: [&[u8]; 4] = [
        b"{not json",
        b"{}",
        br#"{"a": [1, {"b": null}], "kind": 5}"#,
        b"[]",
    ];
    let mut failures = Vec::new();
    // A plain route (the admin API, media, discovery: method `*`) is tried with every method.
    // Alice is the first account, so an admin: the admin API's handlers are reached too, and
    // aimed at Bob's account, never at hers.
    let routes: Vec<(String, String)> = routes
        .into_iter()
        .flat_map(|(method, path)| {
            if method == "*" {
                let path = path.replace("{user_id}", "%40bob%3Atest.local");
                ["GET", "POST", "PUT", "DELETE"]
                    .map(|method| (method.to_owned(), path.clone()))
                    .to_vec()
            } else {
                vec![(method, path)]
            }
        })
        .collect();
    assert!(
        routes
            .iter()
            .any(|(_, path)| path.starts_with("/_synapse/admin/")),
        "the plain routes are known"
    );
    for (method, path) in &routes {
        let url = format!("{}{}", server.base, fill(path));
        let method: reqwest::Method = method.parse().unwrap();
        let tries: Vec<Option<&[u8]>> = if method == reqwest::Method::GET {
            vec![None]
        } else {
            bodies.iter().map(|b| Some(*b)).collect()
        };
        for body in tries {
            let mut request = server
                .http
                .request(method.clone(), &url)
                .bearer_auth(&alice.token)
                .header("content-type", "application/json");
            if let Some(body) = body {
                request = request.body(body.to_vec());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    failures.push(format!("{method} {path}: no answer ({e})"));
                    continue;
                }
            };
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let shown = String::from_utf8_lossy(body.unwrap_or_default());
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if answer["errcode"] == "M_UNKNOWN_TOKEN" {
                // A logout went through: go on with a new token.
                alice = server.login_ok("alice", "pw").await;
            }
            // User-interactive auth asks for a stage with a 401 that has no errcode.
            let uia = status == StatusCode::UNAUTHORIZED && answer["flows"].is_array();
            if status.is_server_error() {
                failures.push(format!("{method} {path} with {shown}: {status} {text}"));
            } else if status.is_client_error()
                && !uia
                && serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["errcode"].as_str().map(str::to_owned))
                    .is_none()
            {
                failures.push(format!(
                    "{method} {path} with {shown}: {status} without errcode: {text}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Sends `request` on `stream` and reads one HTTP/1.1 answer (headers and a
/// `Content-Length` body); `None` when the server closed the connection instead.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

/// A body nobody reads (an unknown endpoint's, an admin endpoint that takes none) is read all
/// the same: the connection stays open for the client's next request.
#[tokio::test]
async fn unread_bodies_do_not_close_the_connection() {
    let server = TestServer::start().await;
    let root = server.register("root", "root-password-1").await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let body = format!("{{\"padding\": \"{}\"}}", "x".repeat(32 * 1024));
    for (method, path, token) in [
        ("POST", "/_matrix/client/v3/no_such_endpoint", None),
        ("PATCH", "/_matrix/client/v3/account/whoami", None),
        (
            "POST",
            "/_synapse/admin/v1/media/protect/nosuchmedia",
            Some(root.token.as_str()),
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let first = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange(&mut stream, first.as_bytes())
            .await
            .expect("an answer");
        assert!(
            !answer.starts_with("HTTP/1.1 2"),
            "{method} {path}: {answer}"
        );
        let second = format!("GET /_matrix/client/versions HTTP/1.1\r\nHost: {address}\r\n\r\n");
        let answer = exchange(&mut stream, second.as_bytes()).await;
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
            "after {method} {path}, the connection was closed: {answer:?}"
        );
    }
}

/// Slowloris: clients that send a request head a byte at a time (or nothing at all) to hold
/// connections open. They are cut off after `request_header_timeout_secs`, and the server
/// answers everyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(
        "rate_limits = { enabled = false }\nrequest_header_timeout_secs = 2",
    )
    .await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let started = std::time::Instant::now();
    let mut slow = Vec::new();
    for i in 0..40 {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            // Every fourth client sends nothing; the others trickle a head that never ends.
            if i % 4 != 0 {
                stream
                    .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .unwrap();
            }
            let mut buf = [0u8; 256];
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(300));
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        // The server closed (or answered and closed): cut off.
                        Ok(0) | Err(_) => return started.elapsed(),
                        Ok(_) => {}
                    },
                    _ = tick.tick() => {
                        if started.elapsed() > std::time::Duration::from_secs(30) {
                            panic!("a slow client was never cut off");
                        }
                        if i % 4 != 0 && stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                            return started.elapsed();
                        }
                    }
                }
            }
        }));
    }
    // Everyone else is served meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..5 {
        let (status, body) = server.get("/_matrix/client/versions", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for client in slow {
        let cut_off_after = client.await.unwrap();
        assert!(
            cut_off_after >= std::time::Duration::from_millis(1500),
            "cut off before the timeout: {cut_off_after:?}"
        );
    }
}
