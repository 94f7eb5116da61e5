//! Every client-server endpoint of the spec (v1.19's OpenAPI, non-deprecated; the list in
//! `spec_endpoints.txt`, made by `scripts/spec-endpoints`) is answered by a handler: a request
//! with made-up parameters gets the endpoint's own answer or error, never the router's
//! 404 `M_UNRECOGNIZED` or a 405. Left out on purpose: the OAuth 2.0 authorization-server
//! metadata and the SSO redirects (culvert has neither OAuth nor SSO login).

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::TestServer;

const NOT_BUILT: &[&str] = &[
    "/_matrix/client/v1/auth_metadata",
    "/_matrix/client/v3/login/sso/redirect",
    "/_matrix/client/v3/login/sso/redirect/{idpId}",
];

#[tokio::test]
async fn every_spec_endpoint_has_a_handler() {
    // URL previews are off by default (and then answered as not built): turned on here.
    let server =
        TestServer::start_with("rate_limits = { enabled = false }\nurl_preview_enabled = true")
            .await;
    let alice = server.register("alice", "alice-password-1").await;
    let client = reqwest::Client::new();
    let list = include_str!("spec_endpoints.txt");
    let mut unanswered = Vec::new();
    let mut checked = 0;
    for line in list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut parts = line.split(' ');
        let (Some(method), Some(path), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("malformed line {line:?}");
        };
        if NOT_BUILT.contains(&path) {
            continue;
        }
        // Made-up path parameters: the handler answers (usually 400 or 404 of its own).
        let mut concrete = String::new();
        let mut rest = path;
        while let Some(open) = rest.find('{') {
            concrete.push_str(&rest[..open]);
            let close = rest[open..].find('}').expect("closing brace") + open;
            concrete.push('x');
            rest = &rest[close + 1..];
        }
        concrete.push_str(rest);
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = client
            .request(method.clone(), format!("{}{concrete}", server.base))
            .bearer_auth(&alice.token);
        if method == Method::PUT || method == Method::POST {
            request = request.json(&serde_json::json!({}));
        }
        let response = request.send().await.expect("an answer");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        checked += 1;
        if status == StatusCode::METHOD_NOT_ALLOWED
            || (status == StatusCode::NOT_FOUND && body["errcode"] == "M_UNRECOGNIZED")
        {
            unanswered.push(format!("{method} {path} ({file})"));
        }
    }
    assert!(checked > 150, "only {checked} endpoints in the list");
    assert!(
        unanswered.is_empty(),
        "endpoints without a handler:\n{}",
        unanswered.join("\n")
    );
}
