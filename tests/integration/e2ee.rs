//! End-to-end encryption: key upload, query and claim; to-device messages through /sync.

use std::collections::HashSet;

use culvert::store::{Cf, keys};
use reqwest::StatusCode;
use ruma::{
    CanonicalJsonValue,
    serde::{Base64, base64::Standard},
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, next_batch};

const UPLOAD: &str = "/_matrix/client/v3/keys/upload";
const QUERY: &str = "/_matrix/client/v3/keys/query";
const CLAIM: &str = "/_matrix/client/v3/keys/claim";

/// Device keys for `who`'s device, signed with a fresh ed25519 key of that device (or of
/// `signing_device`, to forge a bad signature).
pub(crate) fn device_keys_signed_as(user_id: &str, device_id: &str, signing_device: &str) -> Value {
    let der = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&der, signing_device.to_owned()).unwrap();
    let public = Base64::<Standard, _>::new(pair.public_key().to_vec()).encode();
    let keys = json!({
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device_id}"): "Y3VydmUyNTUxOXB1YmxpY2tleWZvcnRlc3Rpbmdvbmx5",
            format!("ed25519:{device_id}"): public,
        },
    });
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(keys).unwrap() else {
        unreachable!()
    };
    sign_json(user_id, &pair, &mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

pub(crate) fn device_keys(who: &Session) -> Value {
    device_keys_signed_as(&who.user_id, &who.device_id, &who.device_id)
}

/// `n` signed_curve25519 one-time keys with IDs `{prefix}{i}`.
pub(crate) fn one_time_keys(prefix: &str, n: usize) -> Value {
    let mut keys = serde_json::Map::new();
    for i in 0..n {
        keys.insert(
            format!("signed_curve25519:{prefix}{i}"),
            json!({ "key": format!("otk-{prefix}{i}"), "signatures": {} }),
        );
    }
    Value::Object(keys)
}

pub(crate) async fn upload_ok(server: &TestServer, who: &Session, body: Value) -> Value {
    let (status, response) = server.post(UPLOAD, Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

async fn claim(server: &TestServer, claimer: &Session, owner: &Session) -> Value {
    let (status, response) = server
        .post(
            CLAIM,
            Some(&claimer.token),
            json!({ "one_time_keys": { &owner.user_id: { &owner.device_id: "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

/// The single key ID a claim handed out for `owner`'s device, if any.
fn claimed_id(response: &Value, owner: &Session) -> Option<String> {
    let keys = response["one_time_keys"][&owner.user_id][&owner.device_id].as_object()?;
    assert_eq!(keys.len(), 1, "{response}");
    keys.keys().next().cloned()
}

pub(crate) async fn sync(server: &TestServer, who: &Session, since: Option<&str>) -> Value {
    let query = match since {
        Some(since) => format!("?since={since}&timeout=0"),
        None => String::new(),
    };
    server
        .get_ok(&format!("/_matrix/client/v3/sync{query}"), who)
        .await
}

fn to_device_bodies(response: &Value) -> Vec<String> {
    response["to_device"]["events"]
        .as_array()
        .expect("to_device.events")
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn send_to_device(server: &TestServer, from: &Session, txn: &str, messages: Value) {
    let path = format!("/_matrix/client/v3/sendToDevice/m.test/{txn}");
    let (status, body) = server
        .put(&path, Some(&from.token), json!({ "messages": messages }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn device_keys_are_uploaded_validated_and_queried() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let alice2 = server.login_ok("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    let keys = device_keys(&alice);
    let response = upload_ok(&server, &alice, json!({ "device_keys": keys })).await;
    assert_eq!(response["one_time_key_counts"]["signed_curve25519"], 0);

    // Keys for another device, or another user, or signed by the wrong key, are refused.
    for body in [
        json!({ "device_keys": device_keys(&alice2) }),
        json!({ "device_keys": device_keys(&bob) }),
        json!({ "device_keys": device_keys_signed_as(&alice.user_id, &alice.device_id, "OTHER") }),
    ] {
        assert_error(
            &server.post(UPLOAD, Some(&alice.token), body).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    // A tampered key no longer matches its signature.
    let mut tampered = device_keys(&alice);
    tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    assert_error(
        &server
            .post(
                UPLOAD,
                Some(&alice.token),
                json!({ "device_keys": tampered }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Unsigned keys are refused.
    let mut unsigned = device_keys(&alice);
    unsigned.as_object_mut().unwrap().remove("signatures");
    assert_error(
        &server
            .post(
                UPLOAD,
                Some(&alice.token),
                json!({ "device_keys": unsigned }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Malformed bodies.
    for body in [
        json!({ "device_keys": "nope" }),
        json!({ "device_keys": { "user_id": alice.user_id } }),
        json!({ "one_time_keys": { "signed_curve25519:A": 5 } }),
        json!({ "one_time_keys": "nope" }),
    ] {
        assert_error(
            &server.post(UPLOAD, Some(&alice.token), body).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        );
    }

    // Bob sees alice's stored keys (all devices, or the one asked for), with her device name.
    server
        .put(
            &format!("/_matrix/client/v3/devices/{}", alice.device_id),
            Some(&alice.token),
            json!({ "display_name": "Laptop" }),
        )
        .await;
    let (status, response) = server
        .post(
            QUERY,
            Some(&bob.token),
            json!({ "device_keys": { &alice.user_id: [] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let devices = response["device_keys"][&alice.user_id].as_object().unwrap();
    assert_eq!(
        devices.len(),
        1,
        "only alice's first device has keys: {response}"
    );
    let got = &devices[&alice.device_id];
    assert_eq!(got["keys"], keys["keys"]);
    assert_eq!(got["signatures"], keys["signatures"]);
    assert_eq!(got["unsigned"]["device_display_name"], "Laptop");

    let (_, response) = server
        .post(
            QUERY,
            Some(&bob.token),
            json!({ "device_keys": {
                &alice.user_id: [alice.device_id, alice2.device_id],
                "@someone:elsewhere.example": [],
            } }),
        )
        .await;
    assert_eq!(
        response["device_keys"][&alice.user_id]
            .as_object()
            .unwrap()
            .len(),
        1
    );
    assert!(
        response["failures"]["elsewhere.example"].is_object(),
        "{response}"
    );
    assert_eq!(response["master_keys"], json!({}));
    assert_error(
        &server
            .post(QUERY, Some(&bob.token), json!({ "device_keys": ["x"] }))
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &server.post(QUERY, None, json!({ "device_keys": {} })).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn one_time_keys_are_claimed_once_then_the_fallback_key() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    let response = upload_ok(
        &server,
        &alice,
        json!({
            "one_time_keys": one_time_keys("A", 2),
            "fallback_keys": { "signed_curve25519:F1": { "key": "fallback1", "fallback": true, "signatures": {} } },
        }),
    )
    .await;
    assert_eq!(response["one_time_key_counts"]["signed_curve25519"], 2);
    // Uploading the same keys again is harmless; the same ID with other content is refused.
    let response = upload_ok(
        &server,
        &alice,
        json!({ "one_time_keys": one_time_keys("A", 2) }),
    )
    .await;
    assert_eq!(response["one_time_key_counts"]["signed_curve25519"], 2);
    assert_error(
        &server
            .post(
                UPLOAD,
                Some(&alice.token),
                json!({ "one_time_keys": { "signed_curve25519:A0": { "key": "different" } } }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    let first = sync(&server, &alice, None).await;
    assert_eq!(first["device_one_time_keys_count"]["signed_curve25519"], 2);
    assert_eq!(
        first["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    let one = claimed_id(&claim(&server, &bob, &alice).await, &alice).unwrap();
    let two = claimed_id(&claim(&server, &bob, &alice).await, &alice).unwrap();
    assert_ne!(one, two);
    assert!(one.starts_with("signed_curve25519:A") && two.starts_with("signed_curve25519:A"));
    // None left: the fallback key, as often as asked, and now marked used.
    for _ in 0..2 {
        let response = claim(&server, &bob, &alice).await;
        assert_eq!(
            claimed_id(&response, &alice).as_deref(),
            Some("signed_curve25519:F1")
        );
        assert_eq!(
            response["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:F1"]["key"],
            "fallback1"
        );
    }
    let later = sync(&server, &alice, None).await;
    assert_eq!(later["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(later["device_unused_fallback_key_types"], json!([]));
    // A new fallback key replaces the used one, unused.
    upload_ok(
        &server,
        &alice,
        json!({ "fallback_keys": { "signed_curve25519:F2": { "key": "fallback2", "fallback": true } } }),
    )
    .await;
    let later = sync(&server, &alice, None).await;
    assert_eq!(
        later["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    let response = claim(&server, &bob, &alice).await;
    assert_eq!(
        claimed_id(&response, &alice).as_deref(),
        Some("signed_curve25519:F2")
    );

    // Unknown devices and algorithms give nothing; other servers are failures.
    let (status, response) = server
        .post(
            CLAIM,
            Some(&bob.token),
            json!({ "one_time_keys": {
                &alice.user_id: { "NOSUCHDEVICE": "signed_curve25519" },
                "@x:elsewhere.example": { "D": "signed_curve25519" },
            } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["one_time_keys"], json!({}));
    assert!(response["failures"]["elsewhere.example"].is_object());
    assert_error(
        &server
            .post(CLAIM, Some(&bob.token), json!({ "one_time_keys": 3 }))
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

// Several worker threads, so that the server really handles the claims in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_hand_out_each_key_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    const KEYS: usize = 5;
    const CLAIMS: usize = 12;
    upload_ok(
        &server,
        &alice,
        json!({
            "one_time_keys": one_time_keys("K", KEYS),
            "fallback_keys": { "signed_curve25519:FB": { "key": "fb", "fallback": true } },
        }),
    )
    .await;
    let claims = (0..CLAIMS).map(|_| claim(&server, &bob, &alice));
    let results = futures_join_all(claims).await;
    let ids: Vec<String> = results
        .iter()
        .map(|r| claimed_id(r, &alice).expect("a key or the fallback"))
        .collect();
    let one_time: Vec<&String> = ids
        .iter()
        .filter(|id| id.as_str() != "signed_curve25519:FB")
        .collect();
    let distinct: HashSet<&String> = one_time.iter().copied().collect();
    assert_eq!(one_time.len(), KEYS, "{ids:?}");
    assert_eq!(distinct.len(), KEYS, "{ids:?}");
    assert_eq!(ids.len() - one_time.len(), CLAIMS - KEYS);
}

/// Runs the futures concurrently (on this task) and collects their results in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot
                && let std::task::Poll::Ready(value) = future.as_mut().poll(cx)
            {
                *output = Some(value);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn to_device_messages_are_kept_until_acknowledged_and_survive_a_restart() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let bob2 = server.login_ok("bob", "pw").await;

    let initial = sync(&server, &bob, None).await;
    assert_eq!(to_device_bodies(&initial), Vec::<String>::new());
    let s0 = next_batch(&initial);

    send_to_device(
        &server,
        &alice,
        "t1",
        json!({ &bob.user_id: { &bob.device_id: { "body": "one" } } }),
    )
    .await;
    // A retried transaction is not queued again.
    send_to_device(
        &server,
        &alice,
        "t1",
        json!({ &bob.user_id: { &bob.device_id: { "body": "one again" } } }),
    )
    .await;

    let got = sync(&server, &bob, Some(&s0)).await;
    assert_eq!(to_device_bodies(&got), ["one"]);
    let event = &got["to_device"]["events"][0];
    assert_eq!(event["sender"], alice.user_id.as_str());
    assert_eq!(event["type"], "m.test");
    let s1 = next_batch(&got);
    // The response was lost: syncing again from the old token delivers the message again.
    let again = sync(&server, &bob, Some(&s0)).await;
    assert_eq!(to_device_bodies(&again), ["one"]);
    // Bob's other device got nothing.
    assert_eq!(
        to_device_bodies(&sync(&server, &bob2, Some(&s0)).await),
        Vec::<String>::new()
    );

    // Kept across a restart until acknowledged.
    let server = server.restart().await;
    let again = sync(&server, &bob, Some(&s0)).await;
    assert_eq!(to_device_bodies(&again), ["one"]);
    // Acknowledged by syncing from s1: never again, even from the old token.
    let after = sync(&server, &bob, Some(&s1)).await;
    assert_eq!(to_device_bodies(&after), Vec::<String>::new());
    let old = sync(&server, &bob, Some(&s0)).await;
    assert_eq!(to_device_bodies(&old), Vec::<String>::new());

    // `*` reaches every device of the user.
    let s2 = next_batch(&sync(&server, &bob2, None).await);
    send_to_device(
        &server,
        &alice,
        "t2",
        json!({ &bob.user_id: { "*": { "body": "all" } }, "@x:elsewhere.example": { "D": { "body": "remote" } } }),
    )
    .await;
    assert_eq!(
        to_device_bodies(&sync(&server, &bob, Some(&s1)).await),
        ["all"]
    );
    assert_eq!(
        to_device_bodies(&sync(&server, &bob2, Some(&s2)).await),
        ["all"]
    );

    // Malformed bodies.
    let path = "/_matrix/client/v3/sendToDevice/m.test/t3";
    for body in [
        json!({}),
        json!({ "messages": [] }),
        json!({ "messages": { &bob.user_id: { &bob.device_id: "text" } } }),
    ] {
        assert_error(
            &server.put(path, Some(&alice.token), body).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        );
    }
}

#[tokio::test]
async fn a_to_device_message_wakes_a_long_poll() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let since = next_batch(&sync(&server, &bob, None).await);
    let path = format!("/_matrix/client/v3/sync?since={since}&timeout=20000");
    let poll = server.get_ok(&path, &bob);
    let send = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        send_to_device(
            &server,
            &alice,
            "wake",
            json!({ &bob.user_id: { &bob.device_id: { "body": "wake up" } } }),
        )
        .await;
    };
    let started = std::time::Instant::now();
    let (response, ()) = tokio::join!(poll, send);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(to_device_bodies(&response), ["wake up"]);
}

#[tokio::test]
async fn deleting_a_device_deletes_its_keys_and_queue() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    upload_ok(
        &server,
        &bob,
        json!({
            "device_keys": device_keys(&bob),
            "one_time_keys": one_time_keys("B", 3),
            "fallback_keys": { "signed_curve25519:FB": { "key": "fb", "fallback": true } },
        }),
    )
    .await;
    send_to_device(
        &server,
        &alice,
        "t1",
        json!({ &bob.user_id: { &bob.device_id: { "body": "queued" } } }),
    )
    .await;
    send_to_device(
        &server,
        &bob,
        "sent",
        json!({ &alice.user_id: { &alice.device_id: { "body": "from bob" } } }),
    )
    .await;

    let (status, _) = server
        .post("/_matrix/client/v3/logout", Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (_, response) = server
        .post(
            QUERY,
            Some(&alice.token),
            json!({ "device_keys": { &bob.user_id: [] } }),
        )
        .await;
    assert_eq!(
        response["device_keys"][&bob.user_id],
        json!({}),
        "{response}"
    );
    assert_eq!(
        claim(&server, &alice, &bob).await["one_time_keys"],
        json!({})
    );
    let store = &server.services().store;
    let prefix = keys::prefix(&keys::join([
        bob.user_id.as_bytes(),
        bob.device_id.as_bytes(),
    ]));
    for cf in [
        Cf::DeviceKeys,
        Cf::OneTimeKeys,
        Cf::FallbackKeys,
        Cf::ToDevice,
        Cf::ToDeviceTxn,
    ] {
        assert_eq!(store.scan_prefix(cf, &prefix).count(), 0, "{cf:?}");
    }
    // What bob sent before is still delivered.
    assert_eq!(
        to_device_bodies(&sync(&server, &alice, None).await),
        ["from bob"]
    );
}

// ---- Cross-signing and device list tracking ----

pub(crate) const SIGNING_UPLOAD: &str = "/_matrix/client/v3/keys/device_signing/upload";

/// An ed25519 key pair whose key ID (`version`) is its own public key, as cross-signing keys
/// are named; and that public key.
pub(crate) fn cross_signing_pair() -> (Ed25519KeyPair, String) {
    let der = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&der, "probe".to_owned()).unwrap();
    let public = Base64::<Standard, _>::new(probe.public_key().to_vec()).encode();
    (
        Ed25519KeyPair::from_der(&der, public.clone()).unwrap(),
        public,
    )
}

/// Signs `value` as `user_id` with `pair` (adding to its `signatures`).
pub(crate) fn signed(user_id: &str, pair: &Ed25519KeyPair, value: Value) -> Value {
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(value).unwrap()
    else {
        unreachable!()
    };
    sign_json(user_id, pair, &mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

pub(crate) fn cross_signing_key(user_id: &str, usage: &str, public: &str) -> Value {
    json!({
        "user_id": user_id,
        "usage": [usage],
        "keys": { format!("ed25519:{public}"): public },
    })
}

/// A user's three cross-signing key pairs and the upload body with the keys, the self-signing
/// and user-signing keys signed by the master key.
pub(crate) struct CrossSigning {
    pub(crate) master: (Ed25519KeyPair, String),
    pub(crate) self_signing: (Ed25519KeyPair, String),
    pub(crate) user_signing: (Ed25519KeyPair, String),
}

impl CrossSigning {
    pub(crate) fn new() -> Self {
        Self {
            master: cross_signing_pair(),
            self_signing: cross_signing_pair(),
            user_signing: cross_signing_pair(),
        }
    }

    pub(crate) fn body(&self, user_id: &str) -> Value {
        json!({
            "master_key": cross_signing_key(user_id, "master", &self.master.1),
            "self_signing_key": signed(
                user_id,
                &self.master.0,
                cross_signing_key(user_id, "self_signing", &self.self_signing.1),
            ),
            "user_signing_key": signed(
                user_id,
                &self.master.0,
                cross_signing_key(user_id, "user_signing", &self.user_signing.1),
            ),
        })
    }
}

/// Device keys for `who` with the device's key pair (to sign with it later).
pub(crate) fn device_keys_with_pair(who: &Session) -> (Value, Ed25519KeyPair) {
    let der = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&der, who.device_id.clone()).unwrap();
    let public = Base64::<Standard, _>::new(pair.public_key().to_vec()).encode();
    let keys = json!({
        "user_id": who.user_id,
        "device_id": who.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", who.device_id): "Y3VydmUyNTUxOXB1YmxpY2tleWZvcnRlc3Rpbmdvbmx5",
            format!("ed25519:{}", who.device_id): public,
        },
    });
    (signed(&who.user_id, &pair, keys), pair)
}

pub(crate) async fn query(server: &TestServer, who: &Session, users: &[&Session]) -> Value {
    let wanted: serde_json::Map<String, Value> = users
        .iter()
        .map(|u| (u.user_id.clone(), json!([])))
        .collect();
    let (status, response) = server
        .post(QUERY, Some(&who.token), json!({ "device_keys": wanted }))
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

pub(crate) fn password_auth(who: &Session, session: &str) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": who.user_id },
        "password": "pw",
        "session": session,
    })
}

fn changed_users(response: &Value, section: &str) -> Vec<String> {
    let mut users: Vec<String> = response["device_lists"][section]
        .as_array()
        .unwrap_or_else(|| panic!("device_lists.{section} in {response}"))
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    users.sort();
    users
}

async fn key_changes(server: &TestServer, who: &Session, from: &str, to: &str) -> Value {
    server
        .get_ok(
            &format!("/_matrix/client/v3/keys/changes?from={from}&to={to}"),
            who,
        )
        .await
}

#[tokio::test]
async fn device_list_changes_reach_users_sharing_a_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let dave = server.register("dave", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;

    let t0 = next_batch(&sync(&server, &bob, None).await);
    // Alice's new device keys; dave (no shared room) uploads too.
    upload_ok(
        &server,
        &alice,
        json!({ "device_keys": device_keys(&alice) }),
    )
    .await;
    upload_ok(&server, &dave, json!({ "device_keys": device_keys(&dave) })).await;
    let response = sync(&server, &bob, Some(&t0)).await;
    assert_eq!(
        changed_users(&response, "changed"),
        [alice.user_id.as_str()]
    );
    let t1 = next_batch(&response);
    let changes = key_changes(&server, &bob, &t0, &t1).await;
    assert_eq!(changes["changed"], json!([alice.user_id]), "{changes}");
    assert_eq!(changes["left"], json!([]));
    // Nothing new: nothing reported.
    let response = sync(&server, &bob, Some(&t1)).await;
    assert_eq!(changed_users(&response, "changed"), Vec::<String>::new());
    let t1 = next_batch(&response);

    // Carol joins: her devices are new to bob.
    server.join(&carol, &room).await;
    let response = sync(&server, &bob, Some(&t1)).await;
    assert_eq!(
        changed_users(&response, "changed"),
        [carol.user_id.as_str()]
    );
    let t2 = next_batch(&response);
    let changes = key_changes(&server, &bob, &t1, &t2).await;
    assert_eq!(changes["changed"], json!([carol.user_id]), "{changes}");

    // Cross-signing keys are a change too.
    let keys = CrossSigning::new();
    let (status, body) = server
        .post(
            SIGNING_UPLOAD,
            Some(&carol.token),
            keys.body(&carol.user_id),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = sync(&server, &bob, Some(&t2)).await;
    assert_eq!(
        changed_users(&response, "changed"),
        [carol.user_id.as_str()]
    );
    let t3 = next_batch(&response);

    // Carol leaves: she no longer shares a room with bob.
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&carol.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = sync(&server, &bob, Some(&t3)).await;
    assert_eq!(changed_users(&response, "left"), [carol.user_id.as_str()]);
    let t4 = next_batch(&response);
    let changes = key_changes(&server, &bob, &t3, &t4).await;
    assert_eq!(changes["left"], json!([carol.user_id]), "{changes}");
    // A change of someone who left is no longer reported.
    upload_ok(
        &server,
        &carol,
        json!({ "device_keys": device_keys(&carol) }),
    )
    .await;
    let response = sync(&server, &bob, Some(&t4)).await;
    assert_eq!(changed_users(&response, "changed"), Vec::<String>::new());
    let t5 = next_batch(&response);

    // Deleting a device is a change (alice's second device, behind the password).
    let alice2 = server.login_ok("alice", "pw").await;
    let path = format!("/_matrix/client/v3/devices/{}", alice2.device_id);
    let (status, uia) = server.delete(&path, Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
    let auth = password_auth(&alice, uia["session"].as_str().unwrap());
    let (status, body) = server
        .delete(&path, Some(&alice.token), json!({ "auth": auth }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = sync(&server, &bob, Some(&t5)).await;
    assert_eq!(
        changed_users(&response, "changed"),
        [alice.user_id.as_str()]
    );
    // Alice sees her own change.
    let own = sync(&server, &alice, Some(&t5)).await;
    assert!(
        changed_users(&own, "changed").contains(&alice.user_id),
        "{own}"
    );

    // Bad tokens.
    assert_error(
        &server
            .get(
                "/_matrix/client/v3/keys/changes?from=nope&to=1",
                Some(&bob.token),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn a_device_list_change_wakes_a_long_poll() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let since = next_batch(&sync(&server, &bob, None).await);
    let path = format!("/_matrix/client/v3/sync?since={since}&timeout=20000");
    let poll = server.get_ok(&path, &bob);
    let upload = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        upload_ok(
            &server,
            &alice,
            json!({ "device_keys": device_keys(&alice) }),
        )
        .await;
    };
    let started = std::time::Instant::now();
    let (response, ()) = tokio::join!(poll, upload);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(
        changed_users(&response, "changed"),
        [alice.user_id.as_str()]
    );
}

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

#[tokio::test]
async fn a_dehydrated_device_receives_messages_while_nobody_is_online() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let body = |device_id: &str| {
        json!({
            "device_id": device_id,
            "initial_device_display_name": "Dehydrated",
            "device_data": { "algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "opaque" },
            "device_keys": device_keys_signed_as(&alice.user_id, device_id, device_id),
            "one_time_keys": one_time_keys(device_id, 2),
            "fallback_keys": {},
        })
    };
    assert_error(
        &server.get(DEHYDRATED, Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (status, created) = server
        .put(DEHYDRATED, Some(&alice.token), body("DEHY1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["device_id"], "DEHY1");
    let fetched = server.get_ok(DEHYDRATED, &alice).await;
    assert_eq!(fetched["device_id"], "DEHY1");
    assert_eq!(fetched["device_data"]["device_pickle"], "opaque");
    // Its keys are there for others to find and claim.
    let keys = query(&server, &bob, &[&alice]).await;
    assert!(
        keys["device_keys"][&alice.user_id]["DEHY1"].is_object(),
        "{keys}"
    );

    // Bob's message to all of alice's devices waits for the dehydrated one.
    send_to_device(
        &server,
        &bob,
        "t1",
        json!({ &alice.user_id: { "*": { "body": "while away" } } }),
    )
    .await;
    let events_path = format!("{DEHYDRATED}/DEHY1/events");
    let (status, page) = server
        .post(&events_path, Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"][0]["content"]["body"], "while away");
    let next = page["next_batch"].as_str().expect("next_batch").to_owned();
    // The next page acknowledges the first: nothing more.
    let (_, page) = server
        .post(
            &events_path,
            Some(&alice.token),
            json!({ "next_batch": next }),
        )
        .await;
    assert_eq!(page["events"], json!([]));
    assert_error(
        &server
            .post(
                &format!("{DEHYDRATED}/OTHER/events"),
                Some(&alice.token),
                json!({}),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.post(&events_path, Some(&bob.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // A new dehydrated device replaces the old one, keys and all; badly signed keys are refused
    // and leave nothing behind.
    let (status, _) = server
        .put(DEHYDRATED, Some(&alice.token), body("DEHY2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let keys = query(&server, &bob, &[&alice]).await;
    assert!(
        keys["device_keys"][&alice.user_id].get("DEHY1").is_none(),
        "{keys}"
    );
    let mut forged = body("DEHY3");
    forged["device_keys"] = device_keys_signed_as(&alice.user_id, "DEHY3", "ELSEWHERE");
    let (status, _) = server.put(DEHYDRATED, Some(&alice.token), forged).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        server.get_ok(DEHYDRATED, &alice).await["device_id"],
        "DEHY2"
    );

    let (status, deleted) = server
        .delete(DEHYDRATED, Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["device_id"], "DEHY2");
    assert_error(
        &server.get(DEHYDRATED, Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

/// Element checks this flag before it sets cross-signing up.
#[tokio::test]
async fn versions_advertise_cross_signing() {
    let server = TestServer::start().await;
    let (status, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        versions["unstable_features"]["org.matrix.e2e_cross_signing"], true,
        "{versions}"
    );
}

/// One-time keys are claimed in the order they were uploaded, not by key ID (MSC4225, spec
/// v1.13): a client that uploads `Z…` before `A…` gets `Z…` claimed first, and a retried
/// upload of a key keeps its first place.
#[tokio::test]
async fn one_time_keys_are_claimed_oldest_first() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    for batch in [["Z1", "Z2"], ["A1", "A2"]] {
        let keys: serde_json::Map<String, Value> = batch
            .iter()
            .map(|id| {
                (
                    format!("signed_curve25519:{id}"),
                    json!({ "key": format!("key{id}"), "signatures": {} }),
                )
            })
            .collect();
        upload_ok(&server, &alice, json!({ "one_time_keys": keys })).await;
    }
    // The first batch again (a retry): no new places.
    upload_ok(
        &server,
        &alice,
        json!({ "one_time_keys": {
            "signed_curve25519:Z1": { "key": "keyZ1", "signatures": {} },
            "signed_curve25519:Z2": { "key": "keyZ2", "signatures": {} } } }),
    )
    .await;
    let mut claimed = Vec::new();
    for _ in 0..4 {
        claimed.push(claimed_id(&claim(&server, &bob, &alice).await, &alice).unwrap());
    }
    assert_eq!(
        claimed,
        [
            "signed_curve25519:Z1",
            "signed_curve25519:Z2",
            "signed_curve25519:A1",
            "signed_curve25519:A2"
        ]
    );
    assert_eq!(
        claimed_id(&claim(&server, &bob, &alice).await, &alice),
        None
    );
}
