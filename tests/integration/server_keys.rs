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

#[tokio::test]
async fn a_rotated_key_is_published_as_old_and_the_new_one_signs() {
    let server = TestServer::start().await;
    let (_, before) = server.get("/_matrix/key/v2/server", None).await;
    let old_id = before["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let old_key = before["verify_keys"][&old_id]["key"].clone();

    // What `culvert rotate-signing-key` does; it takes effect at the next start.
    let new_id = server.services().globals.rotate_signing_key().unwrap();
    assert_ne!(new_id, old_id);
    let server = server.restart().await;
    let (status, after) = server.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, StatusCode::OK);
    let verify_keys = after["verify_keys"].as_object().unwrap();
    assert_eq!(verify_keys.len(), 1);
    assert!(verify_keys.contains_key(&new_id), "{after}");
    assert_eq!(after["old_verify_keys"][&old_id]["key"], old_key);
    assert!(
        after["old_verify_keys"][&old_id]["expired_ts"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Signed by the new key only.
    let object: CanonicalJsonObject = serde_json::from_value(after.clone()).unwrap();
    let public_key =
        Base64::<Standard, Vec<u8>>::parse(after["verify_keys"][&new_id]["key"].as_str().unwrap())
            .unwrap();
    let keys: PublicKeyMap = [(
        "test.local".to_owned(),
        [(new_id.clone(), public_key)].into(),
    )]
    .into();
    verify_json(&keys, &object).expect("signed by the new key");
    assert!(after["signatures"]["test.local"][&old_id].is_null());
}
