//! `GET /_matrix/key/v2/server`: the key is published, self-signed, and stable across restarts.

use reqwest::StatusCode;
use ruma::{
    CanonicalJsonObject,
    serde::{Base64, base64::Standard},
    signatures::{PublicKeyMap, verify_json},
};

use crate::common::TestServer;

#[tokio::test]
async fn server_keys_are_published_and_self_signed() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["server_name"], "test.local");
    let verify_keys = body["verify_keys"].as_object().expect("verify_keys");
    assert_eq!(verify_keys.len(), 1);
    let (key_id, key) = verify_keys.iter().next().unwrap();
    assert!(key_id.starts_with("ed25519:"), "{key_id}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(body["valid_until_ts"].as_u64().unwrap() > now + 3_600_000);

    // Verify the signature exactly as a remote server would.
    let object: CanonicalJsonObject = serde_json::from_value(body.clone()).unwrap();
    let public_key = Base64::<Standard, Vec<u8>>::parse(key["key"].as_str().unwrap()).unwrap();
    let keys: PublicKeyMap = [(
        "test.local".to_owned(),
        [(key_id.clone(), public_key)].into(),
    )]
    .into();
    verify_json(&keys, &object).expect("the key object is signed by the key it publishes");

    // Tampering breaks the signature.
    let mut tampered = object.clone();
    tampered.insert(
        "server_name".into(),
        ruma::CanonicalJsonValue::String("evil.example".into()),
    );
    assert!(verify_json(&keys, &tampered).is_err());

    // The same key after a restart.
    let server = server.restart().await;
    let (_, again) = server.get("/_matrix/key/v2/server", None).await;
    assert_eq!(again["verify_keys"], body["verify_keys"]);
}
