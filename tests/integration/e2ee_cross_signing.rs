//! Cross-signing: signing keys uploaded, checked and queried; signatures verified and merged
//! into the keys `/keys/query` gives.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    common::{Session, TestServer, assert_error, next_batch},
    e2ee::{
        CrossSigning, SIGNING_UPLOAD, cross_signing_key, cross_signing_pair, device_keys_signed_as,
        device_keys_with_pair, password_auth, query, signed, sync, upload_ok,
    },
};

const SIGNATURES_UPLOAD: &str = "/_matrix/client/v3/keys/signatures/upload";

#[tokio::test]
async fn cross_signing_keys_are_uploaded_checked_and_queried() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    // Failures first: no master key to sign with; a key signed by something else; a key of
    // someone else. Nothing is stored by a refused upload.
    let keys = CrossSigning::new();
    let mut body = keys.body(&alice.user_id);
    let ssk_only = json!({ "self_signing_key": body["self_signing_key"].clone() });
    assert_error(
        &server
            .post(SIGNING_UPLOAD, Some(&alice.token), ssk_only)
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let other = CrossSigning::new();
    body["self_signing_key"] = signed(
        &alice.user_id,
        &other.master.0,
        cross_signing_key(&alice.user_id, "self_signing", &keys.self_signing.1),
    );
    assert_error(
        &server.post(SIGNING_UPLOAD, Some(&alice.token), body).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .post(SIGNING_UPLOAD, Some(&bob.token), keys.body(&alice.user_id))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let response = query(&server, &alice, &[&alice]).await;
    assert_eq!(response["master_keys"], json!({}), "{response}");

    // The first upload needs no user-interactive auth.
    let (status, response) = server
        .post(
            SIGNING_UPLOAD,
            Some(&alice.token),
            keys.body(&alice.user_id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");

    let own = query(&server, &alice, &[&alice]).await;
    let expected = keys.body(&alice.user_id);
    assert_eq!(own["master_keys"][&alice.user_id], expected["master_key"]);
    assert_eq!(
        own["self_signing_keys"][&alice.user_id],
        expected["self_signing_key"]
    );
    assert_eq!(
        own["user_signing_keys"][&alice.user_id],
        expected["user_signing_key"]
    );
    // Others see the master and self-signing keys, never the user-signing key.
    let seen = query(&server, &bob, &[&alice]).await;
    assert_eq!(seen["master_keys"][&alice.user_id], expected["master_key"]);
    assert!(seen["self_signing_keys"][&alice.user_id].is_object());
    assert_eq!(seen["user_signing_keys"], json!({}), "{seen}");

    // The same keys again (a retry whose answer was lost): accepted without the password
    // (MSC3967, spec v1.11); one of them changed is not.
    let (status, response) = server
        .post(
            SIGNING_UPLOAD,
            Some(&alice.token),
            keys.body(&alice.user_id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let mut partly_new = keys.body(&alice.user_id);
    partly_new["user_signing_key"] =
        CrossSigning::new().body(&alice.user_id)["user_signing_key"].clone();
    let result = server
        .post(SIGNING_UPLOAD, Some(&alice.token), partly_new)
        .await;
    assert_eq!(result.0, StatusCode::UNAUTHORIZED, "{}", result.1);

    // Replacing keys needs the password.
    let fresh = CrossSigning::new();
    let result = server
        .post(
            SIGNING_UPLOAD,
            Some(&alice.token),
            fresh.body(&alice.user_id),
        )
        .await;
    assert_eq!(result.0, StatusCode::UNAUTHORIZED, "{}", result.1);
    let session = result.1["session"].as_str().unwrap().to_owned();
    let mut body = fresh.body(&alice.user_id);
    body["auth"] = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": alice.user_id },
        "password": "wrong",
        "session": session,
    });
    let result = server.post(SIGNING_UPLOAD, Some(&alice.token), body).await;
    assert_eq!(result.0, StatusCode::UNAUTHORIZED, "{}", result.1);
    let mut body = fresh.body(&alice.user_id);
    body["auth"] = password_auth(&alice, &session);
    let (status, response) = server.post(SIGNING_UPLOAD, Some(&alice.token), body).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let own = query(&server, &alice, &[&alice]).await;
    assert_eq!(
        own["master_keys"][&alice.user_id],
        fresh.body(&alice.user_id)["master_key"]
    );
}

#[tokio::test]
async fn signatures_are_verified_and_merged_into_queried_keys() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (alice_device, alice_pair) = device_keys_with_pair(&alice);
    upload_ok(
        &server,
        &alice,
        json!({ "device_keys": alice_device.clone() }),
    )
    .await;
    let alice_keys = CrossSigning::new();
    let bob_keys = CrossSigning::new();
    for (who, keys) in [(&alice, &alice_keys), (&bob, &bob_keys)] {
        let (status, body) = server
            .post(SIGNING_UPLOAD, Some(&who.token), keys.body(&who.user_id))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let before = next_batch(&sync(&server, &alice, None).await);
    let ssk_id = format!("ed25519:{}", alice_keys.self_signing.1);
    let usk_id = format!("ed25519:{}", alice_keys.user_signing.1);
    let device_key_id = format!("ed25519:{}", alice.device_id);

    // Alice's device signed by her self-signing key; her master key signed by her device; bob's
    // master key signed by her user-signing key.
    let device_signed = signed(&alice.user_id, &alice_keys.self_signing.0, {
        let mut d = query(&server, &alice, &[&alice]).await["device_keys"][&alice.user_id]
            [&alice.device_id]
            .clone();
        d.as_object_mut().unwrap().remove("signatures");
        d.as_object_mut().unwrap().remove("unsigned");
        d
    });
    let master = alice_keys.body(&alice.user_id)["master_key"].clone();
    let master_signed = signed(&alice.user_id, &alice_pair, master);
    let bob_master = bob_keys.body(&bob.user_id)["master_key"].clone();
    let bob_master_signed = signed(
        &alice.user_id,
        &alice_keys.user_signing.0,
        bob_master.clone(),
    );
    let (status, response) = server
        .post(
            SIGNATURES_UPLOAD,
            Some(&alice.token),
            json!({
                &alice.user_id: {
                    &alice.device_id: device_signed,
                    &alice_keys.master.1: master_signed,
                },
                &bob.user_id: { &bob_keys.master.1: bob_master_signed },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["failures"], json!({}), "{response}");
    // Announced as alice's change (the signature of bob's key is hers), not bob's.
    let path = format!(
        "/_matrix/client/v3/keys/changes?from={before}&to={}",
        u64::MAX
    );
    assert_eq!(
        server.get_ok(&path, &alice).await["changed"],
        json!([alice.user_id])
    );

    let seen = query(&server, &bob, &[&alice, &bob]).await;
    let device = &seen["device_keys"][&alice.user_id][&alice.device_id];
    assert!(
        device["signatures"][&alice.user_id][&ssk_id].is_string(),
        "{seen}"
    );
    assert!(device["signatures"][&alice.user_id][&device_key_id].is_string());
    let alice_master = &seen["master_keys"][&alice.user_id];
    assert!(alice_master["signatures"][&alice.user_id][&device_key_id].is_string());
    // Alice's signature of bob's master key is hers: bob does not see it, she does.
    assert!(
        seen["master_keys"][&bob.user_id]["signatures"][&alice.user_id].is_null(),
        "{seen}"
    );
    let own = query(&server, &alice, &[&bob]).await;
    assert!(own["master_keys"][&bob.user_id]["signatures"][&alice.user_id][&usk_id].is_string());

    // Re-uploading the same device keys keeps the cross-signing signature.
    upload_ok(&server, &alice, json!({ "device_keys": alice_device })).await;
    let again = query(&server, &bob, &[&alice]).await;
    assert!(
        again["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id]
            [&ssk_id]
            .is_string(),
        "{again}"
    );

    // Failures: a forged signature, a key that is not stored, a changed object, and a signer
    // who may not sign that key (bob's master key signed by alice's self-signing key).
    let forger = cross_signing_pair().0;
    let forged = {
        let mut d = device["signatures"].clone();
        d = json!({ &alice.user_id: { &ssk_id: d[&alice.user_id][&ssk_id].clone() } });
        let mut keys = device.clone();
        keys["signatures"] = d;
        keys["signatures"][&alice.user_id][&ssk_id] =
            signed(&alice.user_id, &forger, json!({ "other": "thing" }))["signatures"]
                [&alice.user_id]
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .clone();
        keys.as_object_mut().unwrap().remove("unsigned");
        keys
    };
    let mut changed = device.clone();
    changed["algorithms"] = json!(["m.other"]);
    let wrong_signer = signed(&alice.user_id, &alice_keys.self_signing.0, bob_master);
    let (status, response) = server
        .post(
            SIGNATURES_UPLOAD,
            Some(&alice.token),
            json!({
                &alice.user_id: {
                    &alice.device_id: forged,
                    "NOSUCHDEVICE": device_signed_for("NOSUCHDEVICE", &alice, &alice_keys),
                },
                &bob.user_id: { &bob_keys.master.1: wrong_signer },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let failures = &response["failures"];
    assert_eq!(
        failures[&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
        "{response}"
    );
    assert_eq!(
        failures[&alice.user_id]["NOSUCHDEVICE"]["errcode"],
        "M_NOT_FOUND"
    );
    assert_eq!(
        failures[&bob.user_id][&bob_keys.master.1]["errcode"],
        "M_INVALID_SIGNATURE"
    );
    let (_, response) = server
        .post(
            SIGNATURES_UPLOAD,
            Some(&alice.token),
            json!({ &alice.user_id: { &alice.device_id: signed(&alice.user_id, &alice_keys.self_signing.0, {
                let mut c = changed.clone();
                c.as_object_mut().unwrap().remove("signatures");
                c.as_object_mut().unwrap().remove("unsigned");
                c
            }) } }),
        )
        .await;
    assert_eq!(
        response["failures"][&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
        "{response}"
    );
}

/// What clients do when one device cross-signs another of its user's: they upload the
/// device's key object as `/keys/query` gave it, its own signature still on, plus the new
/// self-signing-key signature. The stored signature is taken as known, the new one is kept; a
/// bad signature next to a good one is refused alone, the good one is kept all the same.
#[tokio::test]
async fn a_device_signed_again_with_its_own_signature_on_it_is_cross_signed() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let keys = CrossSigning::new();
    let (status, body) = server
        .post(
            SIGNING_UPLOAD,
            Some(&alice.token),
            keys.body(&alice.user_id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ssk_id = format!("ed25519:{}", keys.self_signing.1);
    let mut devices = Vec::new();
    for label in ["second", "third"] {
        let device = server.login_ok("alice", "pw").await;
        let (keys_of_device, _) = device_keys_with_pair(&device);
        upload_ok(&server, &device, json!({ "device_keys": keys_of_device })).await;
        devices.push((label, device));
    }
    // As /keys/query shows them, signed once more by the self-signing key.
    let queried = query(&server, &alice, &[&alice]).await;
    let cross_signed = |device: &Session| {
        let mut object = queried["device_keys"][&alice.user_id][&device.device_id].clone();
        object.as_object_mut().unwrap().remove("unsigned");
        signed(&alice.user_id, &keys.self_signing.0, object)
    };
    let second = &devices[0].1;
    let third = &devices[1].1;
    let mut third_with_a_bad_signature = cross_signed(third);
    third_with_a_bad_signature["signatures"][&alice.user_id]["ed25519:NOTADEVICE"] =
        json!("bm90IGEgc2lnbmF0dXJl");
    let (status, response) = server
        .post(
            SIGNATURES_UPLOAD,
            Some(&alice.token),
            json!({ &alice.user_id: {
                &second.device_id: cross_signed(second),
                &third.device_id: third_with_a_bad_signature,
            } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert!(
        response["failures"][&alice.user_id][&second.device_id].is_null(),
        "the device's own signature is no failure: {response}"
    );
    assert_eq!(
        response["failures"][&alice.user_id][&third.device_id]["errcode"], "M_INVALID_SIGNATURE",
        "{response}"
    );
    let seen = query(&server, &bob, &[&alice]).await;
    for device in [second, third] {
        let signatures =
            &seen["device_keys"][&alice.user_id][&device.device_id]["signatures"][&alice.user_id];
        assert!(signatures[&ssk_id].is_string(), "cross-signed: {seen}");
        assert!(
            signatures[format!("ed25519:{}", device.device_id)].is_string(),
            "its own signature kept: {seen}"
        );
        assert!(signatures["ed25519:NOTADEVICE"].is_null(), "{seen}");
    }
    // Sending the same again changes nothing and is no failure.
    let (status, response) = server
        .post(
            SIGNATURES_UPLOAD,
            Some(&alice.token),
            json!({ &alice.user_id: { &second.device_id: cross_signed(second) } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["failures"], json!({}), "{response}");
}

fn device_signed_for(device_id: &str, who: &Session, keys: &CrossSigning) -> Value {
    let mut d = device_keys_signed_as(&who.user_id, device_id, device_id);
    d.as_object_mut().unwrap().remove("signatures");
    signed(&who.user_id, &keys.self_signing.0, d)
}
