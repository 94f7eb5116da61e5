//! Federation between two culverts over TLS on loopback: server keys, signed requests, the
//! notary, and what happens to unsigned or forged requests.

use reqwest::StatusCode;
use ruma::{
    ServerName, UserId,
    api::federation::query::get_profile_information,
    serde::{Base64, base64::Standard},
};
use serde_json::json;

use crate::common::{TestServer, assert_error};

fn name(server: &TestServer) -> ruma::OwnedServerName {
    ServerName::parse(server.server_name()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_fetch_each_others_keys_and_sign_their_requests() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let bob = b.register("bob", "bob-password-1").await;
    b.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id),
        Some(&bob.token),
        json!({ "displayname": "Bob on B" }),
    )
    .await;

    // A fetches B's key directly, and it is the key B signs with.
    let b_key_id = b.services().globals.signing_key_id();
    let keys = a
        .services()
        .server_public_keys(&name(&b), std::slice::from_ref(&b_key_id), 0)
        .await
        .unwrap();
    let b_public =
        Base64::<Standard, Vec<u8>>::new(b.services().globals.signing_key().public_key().to_vec());
    assert_eq!(
        keys.get(&b_key_id).map(|k| k.encode()),
        Some(b_public.encode())
    );

    // A signed request from A to B passes B's check (B fetches A's key to verify it).
    let request = get_profile_information::v1::Request::new(UserId::parse(&bob.user_id).unwrap());
    let profile = a
        .services()
        .send_federation_request(&name(&b), request)
        .await
        .expect("a signed request is accepted");
    assert_eq!(
        serde_json::to_value(&profile.data).unwrap()["displayname"],
        "Bob on B"
    );

    // A user that does not exist: B answers 404 and A reports it as such.
    let missing = get_profile_information::v1::Request::new(
        UserId::parse(format!("@nobody:{}", b.server_name())).unwrap(),
    );
    let error = a
        .services()
        .send_federation_request(&name(&b), missing)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_forged_requests_get_401() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let bob = b.register("bob", "bob-password-1").await;
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        crate::common::urlencode(&bob.user_id)
    );

    // No Authorization header at all.
    let result = b.get(&path, None).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");

    // A well-formed header whose signature is not A's.
    let forged = format!(
        "X-Matrix origin=\"{}\",destination=\"{}\",key=\"{}\",sig=\"{}\"",
        a.server_name(),
        b.server_name(),
        a.services().globals.signing_key_id(),
        Base64::<Standard, Vec<u8>>::new(vec![7u8; 64]).encode()
    );
    let response = b
        .http
        .get(format!("{}{path}", b.base))
        .header("Authorization", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    // A genuine signature for a different request (another user) does not carry over.
    let other_path = "/_matrix/federation/v1/query/profile?user_id=%40eve%3Aexample.org";
    let signed_for_other = {
        let mut request = http::Request::builder()
            .method("GET")
            .uri(other_path)
            .body(Vec::<u8>::new())
            .unwrap();
        let input = ruma::api::federation::authentication::XMatrixSigningInput::new(
            name(&a),
            name(&b),
            a.services().globals.signing_key(),
        );
        let x_matrix =
            ruma::api::federation::authentication::XMatrix::sign_http_request(&request, input)
                .unwrap();
        request
            .headers_mut()
            .insert("authorization", http::HeaderValue::from(&x_matrix));
        request.headers()["authorization"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let response = b
        .http
        .get(format!("{}{path}", b.base))
        .header("Authorization", signed_for_other)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Addressed to another server.
    let misaddressed = forged.replace(&b.server_name(), "elsewhere.example");
    let response = b
        .http
        .get(format!("{}{path}", b.base))
        .header("Authorization", misaddressed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notary_hands_on_keys_it_countersigned() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;

    // B, asked for A's keys, fetches them from A and countersigns them.
    let (status, body) = b
        .get(&format!("/_matrix/key/v2/query/{}", a.server_name()), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let document = &body["server_keys"][0];
    assert_eq!(document["server_name"], a.server_name());
    let a_key_id = a.services().globals.signing_key_id();
    assert!(document["verify_keys"][&a_key_id]["key"].is_string());
    assert!(document["signatures"][a.server_name()][&a_key_id].is_string());
    let b_key_id = b.services().globals.signing_key_id();
    assert!(document["signatures"][b.server_name()][&b_key_id].is_string());

    // The batch form, including B's own keys.
    let (status, body) = b
        .post(
            "/_matrix/key/v2/query",
            None,
            json!({ "server_keys": { a.server_name(): {}, b.server_name(): {} } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["server_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["server_name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&a.server_name().as_str()));
    assert!(names.contains(&b.server_name().as_str()));

    // A server that does not answer: no keys, not an error.
    let (status, body) = b.get("/_matrix/key/v2/query/127.0.0.1:9", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["server_keys"], json!([]));

    // The version endpoint names the software.
    let (status, body) = b.get("/_matrix/federation/v1/version", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["server"]["name"], "culvert");
}

#[tokio::test]
async fn federation_is_refused_when_disabled() {
    let server = TestServer::start().await;
    let result = server
        .get(
            "/_matrix/federation/v1/query/profile?user_id=%40a%3Atest.local",
            None,
        )
        .await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}
