//! Federation between two culverts, beyond events: EDUs both ways (typing, receipts, presence,
//! to-device messages, device lists), the read endpoints (`/state_ids`, `/state`,
//! `/backfill`, `/event_auth`, `/timestamp_to_event`, `/user/devices`, `/user/keys/*`,
//! `/publicRooms`) and server ACLs.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use ruma::{
    CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedServerName, RoomId, ServerName,
    UInt, UserId,
    api::{
        Direction,
        federation::{
            authorization::get_event_authorization,
            backfill::get_backfill,
            device::get_devices,
            directory::get_public_rooms,
            event::{get_event_by_timestamp, get_room_state, get_room_state_ids},
            keys::{claim_keys, get_keys},
        },
    },
    serde::{Base64, base64::Standard},
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::common::{Session, TestServer, next_batch, urlencode};

fn name(server: &TestServer) -> OwnedServerName {
    ServerName::parse(server.server_name()).unwrap()
}

/// Two federating servers; Alice on A created a public room (with alias `#shared`) and Bob
/// on B joined it.
struct Pair {
    a: TestServer,
    b: TestServer,
    alice: Session,
    bob: Session,
    room: String,
}

async fn pair() -> Pair {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = a
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "room_alias_name": "shared" }),
        )
        .await;
    let alias = format!("#shared:{}", a.server_name());
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", urlencode(&alias)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A has Bob's join before anything else happens.
    crate::common::eventually("A to see Bob's join", || async {
        let members = a
            .get_ok(
                &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
                &alice,
            )
            .await;
        members["joined"][&bob.user_id].is_object()
    })
    .await;
    Pair {
        a,
        b,
        alice,
        bob,
        room,
    }
}

fn ephemeral_of<'v>(body: &'v Value, room: &str, kind: &str) -> Vec<&'v Value> {
    body["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .map(|events| events.iter().filter(|e| e["type"] == kind).collect())
        .unwrap_or_default()
}

async fn set_typing(server: &TestServer, who: &Session, room: &str, typing: bool) {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", who.user_id),
            Some(&who.token),
            json!({ "typing": typing, "timeout": 20000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn send_receipt(server: &TestServer, who: &Session, room: &str, event_id: &str) {
    let (status, body) = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{room}/receipt/m.read/{}",
                urlencode(event_id)
            ),
            Some(&who.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn set_presence(server: &TestServer, who: &Session, state: &str, msg: &str) {
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", who.user_id),
            Some(&who.token),
            json!({ "presence": state, "status_msg": msg }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn presence_of<'v>(body: &'v Value, user: &str) -> Option<&'v Value> {
    body["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["sender"] == user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_receipts_and_presence_cross_both_ways() {
    let Pair {
        a,
        b,
        alice,
        bob,
        room,
    } = pair().await;

    // Typing, A → B and B → A.
    set_typing(&a, &alice, &room, true).await;
    b.sync_until(&bob, "Alice's typing", |body| {
        ephemeral_of(body, &room, "m.typing")
            .iter()
            .any(|e| e["content"]["user_ids"] == json!([alice.user_id]))
    })
    .await;
    set_typing(&b, &bob, &room, true).await;
    a.sync_until(&alice, "Bob's typing", |body| {
        ephemeral_of(body, &room, "m.typing").iter().any(|e| {
            e["content"]["user_ids"]
                .as_array()
                .is_some_and(|u| u.contains(&json!(bob.user_id)))
        })
    })
    .await;
    // Stopping is federated too.
    set_typing(&b, &bob, &room, false).await;
    a.sync_until(&alice, "Bob's stop", |body| {
        ephemeral_of(body, &room, "m.typing").iter().any(|e| {
            e["content"]["user_ids"]
                .as_array()
                .is_some_and(|u| !u.contains(&json!(bob.user_id)))
        })
    })
    .await;

    // Receipts: both read a message of the other.
    a.say(&alice, &room, "read me, Bob").await;
    let from_alice = b.wait_for_message(&bob, &room, "read me, Bob").await;
    send_receipt(&b, &bob, &room, &from_alice).await;
    a.sync_until(&alice, "Bob's receipt", |body| {
        ephemeral_of(body, &room, "m.receipt")
            .iter()
            .any(|e| e["content"][&from_alice]["m.read"][&bob.user_id]["ts"].is_u64())
    })
    .await;
    b.say(&bob, &room, "read me, Alice").await;
    let from_bob = a.wait_for_message(&alice, &room, "read me, Alice").await;
    send_receipt(&a, &alice, &room, &from_bob).await;
    b.sync_until(&bob, "Alice's receipt", |body| {
        ephemeral_of(body, &room, "m.receipt")
            .iter()
            .any(|e| e["content"][&from_bob]["m.read"][&alice.user_id]["ts"].is_u64())
    })
    .await;

    // Presence both ways (a change of state and status message).
    set_presence(&a, &alice, "unavailable", "on A, away").await;
    b.sync_until(&bob, "Alice's presence", |body| {
        presence_of(body, &alice.user_id).is_some_and(|e| {
            e["content"]["presence"] == "unavailable" && e["content"]["status_msg"] == "on A, away"
        })
    })
    .await;
    set_presence(&b, &bob, "online", "on B, here").await;
    a.sync_until(&alice, "Bob's presence", |body| {
        presence_of(body, &bob.user_id).is_some_and(|e| {
            e["content"]["presence"] == "online" && e["content"]["status_msg"] == "on B, here"
        })
    })
    .await;
    // And GET /presence on A shows Bob's remote presence.
    let shown = a
        .get_ok(
            &format!("/_matrix/client/v3/presence/{}/status", bob.user_id),
            &alice,
        )
        .await;
    assert_eq!(shown["presence"], "online", "{shown}");
}

/// Device keys for `who`'s device, signed by the device's own fresh ed25519 key.
fn device_keys(who: &Session) -> Value {
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
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(keys).unwrap() else {
        unreachable!()
    };
    sign_json(&who.user_id, &pair, &mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

async fn upload_keys(server: &TestServer, who: &Session, body: Value) {
    let (status, response) = server
        .post("/_matrix/client/v3/keys/upload", Some(&who.token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_and_device_list_changes_cross() {
    let Pair {
        a,
        b,
        alice,
        bob,
        room: _,
    } = pair().await;

    // Alice (A) sends a to-device message to Bob's device on B, twice with one transaction ID.
    for _ in 0..2 {
        let (status, body) = a
            .put(
                "/_matrix/client/v3/sendToDevice/m.test/txn-1",
                Some(&alice.token),
                json!({ "messages": { &bob.user_id: { &bob.device_id: { "body": "psst" } } } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let body = b
        .sync_until(&bob, "the to-device message", |body| {
            body["to_device"]["events"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        })
        .await;
    let events = body["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["sender"], alice.user_id);
    assert_eq!(events[0]["type"], "m.test");
    assert_eq!(events[0]["content"]["body"], "psst");

    // A device list change on B: Alice's incremental sync lists Bob as changed.
    let first = a.get_ok("/_matrix/client/v3/sync?timeout=0", &alice).await;
    let mut since = next_batch(&first);
    let bob_keys = device_keys(&bob);
    upload_keys(
        &b,
        &bob,
        json!({
            "device_keys": bob_keys,
            "one_time_keys": { "signed_curve25519:BOB1": { "key": "otk-bob", "signatures": {} } },
        }),
    )
    .await;
    let mut seen = false;
    for _ in 0..40 {
        let body = a
            .get_ok(
                &format!("/_matrix/client/v3/sync?timeout=500&since={since}"),
                &alice,
            )
            .await;
        if body["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.contains(&json!(bob.user_id)))
        {
            seen = true;
            break;
        }
        since = next_batch(&body);
    }
    assert!(seen, "Bob's device list change never reached Alice's sync");

    // Alice's client then queries Bob's keys through A, which asks B; and claims a key.
    let (status, body) = a
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { &bob.user_id: [] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["device_keys"][&bob.user_id][&bob.device_id]["keys"], bob_keys["keys"],
        "{body}"
    );
    assert_eq!(body["failures"], json!({}), "{body}");
    let (status, body) = a
        .post(
            "/_matrix/client/v3/keys/claim",
            Some(&alice.token),
            json!({ "one_time_keys": { &bob.user_id: { &bob.device_id: "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["one_time_keys"][&bob.user_id][&bob.device_id]["signed_curve25519:BOB1"]["key"],
        "otk-bob",
        "{body}"
    );
    // A server that cannot be reached is a failure, not an error.
    let (status, body) = a
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { "@nobody:127.0.0.1:9": [] }, "timeout": 3000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["failures"]["127.0.0.1:9"].is_object(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_reads_return_state_history_and_auth_chains() {
    let Pair {
        a,
        b,
        alice,
        bob: _,
        room,
    } = pair().await;
    let message = a.say(&alice, &room, "the latest").await;
    let room_id = RoomId::parse(&room).unwrap();
    let message_id = EventId::parse(&message).unwrap();
    let b_services = b.services();
    let a_name = name(&a);
    let state_of = |id: &str| a.services().timeline.pdu_json(&EventId::parse(id).unwrap());

    // /state_ids at the message: the room's state before it, with its auth chain.
    let state = a.services().timeline.current_state(&room_id).unwrap();
    let response = b_services
        .send_federation_request(
            &a_name,
            get_room_state_ids::v1::Request::new(message_id.clone(), room_id.clone()),
        )
        .await
        .expect("state_ids");
    let mut expected: Vec<_> = state.values().cloned().collect();
    expected.sort();
    let got_chain = response.auth_chain_ids.len();
    let mut got = response.pdu_ids.clone();
    got.sort();
    assert_eq!(got, expected);
    // The auth chain completes the state: every state event's auth events are in one or the
    // other (the state events themselves are not repeated in the chain).
    for id in &response.pdu_ids {
        let pdu = state_of(id.as_str()).unwrap().unwrap();
        let Some(CanonicalJsonValue::Array(auth)) = pdu.get("auth_events") else {
            panic!("no auth_events");
        };
        for auth_id in auth {
            let CanonicalJsonValue::String(auth_id) = auth_id else {
                panic!("odd auth_events entry");
            };
            let auth_id = EventId::parse(auth_id).unwrap();
            assert!(
                response.pdu_ids.contains(&auth_id) || response.auth_chain_ids.contains(&auth_id),
                "{auth_id} missing"
            );
        }
    }
    assert!(!response.auth_chain_ids.contains(&message_id));

    // /state: the same events, as PDUs.
    let response = b_services
        .send_federation_request(
            &a_name,
            get_room_state::v1::Request::new(message_id.clone(), room_id.clone()),
        )
        .await
        .expect("state");
    assert_eq!(response.pdus.len(), expected.len());
    assert_eq!(response.auth_chain.len(), got_chain);

    // /backfill from the message: it first, then what came before, newest first.
    let mut request =
        get_backfill::v1::Request::new(room_id.clone(), vec![message_id.clone()], UInt::from(3u32));
    request.limit = UInt::from(3u32);
    let response = b_services
        .send_federation_request(&a_name, request)
        .await
        .expect("backfill");
    assert_eq!(response.pdus.len(), 3);
    let first: Value = serde_json::from_str(response.pdus[0].get()).unwrap();
    assert_eq!(first["content"]["body"], "the latest");
    let depths: Vec<u64> = response
        .pdus
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(p.get()).unwrap()["depth"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(depths.windows(2).all(|w| w[0] > w[1]), "{depths:?}");
    // The second is the message's prev_event.
    let stored = state_of(&message).unwrap().unwrap();
    let prev = match stored.get("prev_events") {
        Some(CanonicalJsonValue::Array(prev)) => match &prev[0] {
            CanonicalJsonValue::String(id) => id.clone(),
            other => panic!("odd prev_events entry {other:?}"),
        },
        _ => panic!("no prev_events"),
    };
    let prev_pdu = serde_json::to_value(state_of(&prev).unwrap().unwrap()).unwrap();
    let second: Value = serde_json::from_str(response.pdus[1].get()).unwrap();
    assert_eq!(second, prev_pdu);

    // /event_auth of the message: power levels and Alice's join, and what authorised them.
    let response = b_services
        .send_federation_request(
            &a_name,
            get_event_authorization::v1::Request::new(room_id.clone(), message_id.clone()),
        )
        .await
        .expect("event_auth");
    let types: Vec<String> = response
        .auth_chain
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(p.get()).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // (The create event is in the chain only before room version 12, whose room ID names it.)
    for kind in ["m.room.power_levels", "m.room.member"] {
        assert!(types.iter().any(|t| t == kind), "{types:?}");
    }

    // /timestamp_to_event: the message, found from just before it going forward... and an
    // event that does not exist is 404, not 500.
    let ts = match stored.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap(),
        _ => panic!("no origin_server_ts"),
    };
    let response = b_services
        .send_federation_request(
            &a_name,
            get_event_by_timestamp::v1::Request::new(
                room_id.clone(),
                MilliSecondsSinceUnixEpoch(UInt::new(ts + 60_000).unwrap()),
                Direction::Backward,
            ),
        )
        .await
        .expect("timestamp_to_event");
    assert_eq!(response.event_id, message_id);
    let error = b_services
        .send_federation_request(
            &a_name,
            get_event_by_timestamp::v1::Request::new(
                room_id.clone(),
                MilliSecondsSinceUnixEpoch(UInt::new(ts + 60_000).unwrap()),
                Direction::Forward,
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));
    let unknown = EventId::parse(format!("$nothing:{}", a.server_name())).unwrap();
    let error = b_services
        .send_federation_request(
            &a_name,
            get_event_authorization::v1::Request::new(room_id.clone(), unknown),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));

    // A room B's users are not in: 403 for each.
    let private = a
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let private_id = RoomId::parse(&private).unwrap();
    let secret = EventId::parse(a.say(&alice, &private, "secret").await).unwrap();
    let error = b_services
        .send_federation_request(
            &a_name,
            get_room_state_ids::v1::Request::new(secret.clone(), private_id.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::FORBIDDEN));
    let error = b_services
        .send_federation_request(
            &a_name,
            get_backfill::v1::Request::new(
                private_id.clone(),
                vec![secret.clone()],
                UInt::from(10u32),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::FORBIDDEN));
    let error = b_services
        .send_federation_request(
            &a_name,
            get_event_authorization::v1::Request::new(private_id.clone(), secret.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::FORBIDDEN));

    // An event of another room named in this room's request: 404, not a leak.
    let error = b_services
        .send_federation_request(
            &a_name,
            get_room_state_ids::v1::Request::new(secret, room_id.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));

    // /publicRooms lists the public room.
    let (status, _) = a
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{room}"),
            Some(&alice.token),
            json!({ "visibility": "public" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = b_services
        .send_federation_request(&a_name, get_public_rooms::v1::Request::new())
        .await
        .expect("publicRooms");
    assert!(
        response.chunk.iter().any(|r| r.room_id == room_id),
        "{:?}",
        response.chunk
    );

    // Unsigned requests are refused.
    let (status, _) = b
        .get(
            &format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={}",
                urlencode(&room),
                urlencode(&message)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_keys_of_a_user_are_served_to_other_servers() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let bob = b.register("bob", "bob-password-1").await;
    let keys = device_keys(&bob);
    upload_keys(
        &b,
        &bob,
        json!({
            "device_keys": keys,
            "one_time_keys": { "signed_curve25519:AAAA": { "key": "otk-a", "signatures": {} } },
        }),
    )
    .await;
    let b_name = name(&b);
    let bob_id = UserId::parse(&bob.user_id).unwrap();
    let a_services = a.services();

    let devices = a_services
        .send_federation_request(&b_name, get_devices::v1::Request::new(bob_id.clone()))
        .await
        .expect("user/devices");
    assert_eq!(devices.user_id, bob_id);
    assert_eq!(devices.devices.len(), 1);
    assert_eq!(devices.devices[0].device_id.as_str(), bob.device_id);
    assert_eq!(
        serde_json::to_value(&devices.devices[0].keys).unwrap(),
        keys
    );
    assert!(u64::from(devices.stream_id) > 0);

    let query = a_services
        .send_federation_request(
            &b_name,
            get_keys::v1::Request::new(BTreeMap::from([(bob_id.clone(), Vec::new())])),
        )
        .await
        .expect("user/keys/query");
    let got = serde_json::to_value(&query.device_keys[&bob_id][bob.device_id.as_str()]).unwrap();
    assert_eq!(got["keys"], keys["keys"]);

    let claims = BTreeMap::from([(
        bob_id.clone(),
        BTreeMap::from([(
            bob.device_id.as_str().into(),
            ruma::OneTimeKeyAlgorithm::SignedCurve25519,
        )]),
    )]);
    let claimed = a_services
        .send_federation_request(&b_name, claim_keys::v1::Request::new(claims.clone()))
        .await
        .expect("user/keys/claim");
    let claimed = serde_json::to_value(&claimed.one_time_keys).unwrap();
    assert_eq!(
        claimed[&bob.user_id][&bob.device_id]["signed_curve25519:AAAA"]["key"], "otk-a",
        "{claimed}"
    );
    // Handed out once: the next claim finds nothing.
    let again = a_services
        .send_federation_request(&b_name, claim_keys::v1::Request::new(claims))
        .await
        .expect("user/keys/claim");
    assert!(
        again
            .one_time_keys
            .get(&bob_id)
            .is_none_or(|d| d.is_empty())
    );

    // Another server's user, or an unknown one: not answered.
    let other = UserId::parse(format!("@carol:{}", a.server_name())).unwrap();
    let error = a_services
        .send_federation_request(&b_name, get_devices::v1::Request::new(other))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    let nobody = UserId::parse(format!("@nobody:{}", b.server_name())).unwrap();
    let error = a_services
        .send_federation_request(&b_name, get_devices::v1::Request::new(nobody))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_acl_shuts_out_the_denied_server() {
    let Pair {
        a,
        b,
        alice,
        bob,
        room,
    } = pair().await;
    b.say(&bob, &room, "before the ACL").await;
    a.wait_for_message(&alice, &room, "before the ACL").await;

    // Both test servers are on `localhost` (ACLs ignore ports): deny it, which only matters to
    // A for requests from B.
    let (status, body) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&alice.token),
            json!({ "allow": ["*"], "deny": ["localhost"], "allow_ip_literals": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // B's messages no longer reach Alice. B's own transaction carrying one is handled before
    // it is answered, so no waiting is needed: the event is refused and A does not store it.
    let (refused_id, refused) =
        crate::federation::crafted_event(&b, &room, &bob.user_id, "after the ACL", |_| {});
    let results = crate::federation::send_to(&b, &a, "after-the-acl", vec![refused]).await;
    let refused_id = EventId::parse(&refused_id).unwrap();
    assert!(
        matches!(results.get(&refused_id), Some(Err(e)) if e.contains("ACL")),
        "{results:?}"
    );
    assert!(
        a.services()
            .timeline
            .pdu_json(&refused_id)
            .unwrap()
            .is_none()
    );
    let bodies = a.history(&alice, &room).await;
    assert!(bodies.contains(&"before the ACL".to_owned()), "{bodies:?}");
    assert!(!bodies.contains(&"after the ACL".to_owned()), "{bodies:?}");

    // Nor does Bob's typing (EDUs are handled before the transaction is answered too).
    a.services()
        .handle_transaction_edus(
            &name(&b),
            &[edu(json!({ "edu_type": "m.typing",
                "content": { "room_id": room, "user_id": bob.user_id, "typing": true } }))],
        )
        .await;
    let body = a.get_ok("/_matrix/client/v3/sync?timeout=0", &alice).await;
    assert!(
        ephemeral_of(&body, &room, "m.typing")
            .iter()
            .all(|e| e["content"]["user_ids"] == json!([])),
        "{body}"
    );

    // A new user of B cannot join through A any more (B, already in the room, would not
    // need to; asked directly, A's make_join refuses).
    let carol = UserId::parse(format!("@carol:{}", b.server_name())).unwrap();
    let error = b
        .services()
        .send_federation_request(
            &name(&a),
            ruma::api::federation::membership::prepare_join_event::v1::Request::new(
                RoomId::parse(&room).unwrap(),
                carol,
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::FORBIDDEN));
    assert!(error.to_string().contains("ACL"), "{error}");

    // And B's reads of the room are refused.
    let latest = a.say(&alice, &room, "after, on A").await;
    let error = b
        .services()
        .send_federation_request(
            &name(&a),
            get_room_state_ids::v1::Request::new(
                EventId::parse(latest).unwrap(),
                RoomId::parse(&room).unwrap(),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::FORBIDDEN));

    // Lifted, the ACL lets B's next message in, and it is shown; the refused one never is.
    let (status, body) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl/"),
            Some(&alice.token),
            json!({ "allow": ["*"], "deny": [], "allow_ip_literals": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (allowed_id, allowed) =
        crate::federation::crafted_event(&b, &room, &bob.user_id, "once allowed", |_| {});
    let results = crate::federation::send_to(&b, &a, "once-allowed", vec![allowed]).await;
    assert_eq!(
        results.get(&EventId::parse(&allowed_id).unwrap()),
        Some(&Ok(())),
        "{results:?}"
    );
    a.wait_for_message(&alice, &room, "once allowed").await;
    let bodies = a.history(&alice, &room).await;
    assert!(!bodies.contains(&"after the ACL".to_owned()), "{bodies:?}");
}

fn edu(value: Value) -> ruma::serde::Raw<ruma::api::federation::transactions::edu::Edu> {
    ruma::serde::Raw::from_json(serde_json::value::to_raw_value(&value).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_edus_are_checked_against_their_origin() {
    let Pair {
        a,
        b,
        alice,
        bob,
        room,
    } = pair().await;
    let a_services = a.services();
    let b_name = name(&b);

    // A to-device message delivered twice under one message ID arrives once.
    let to_device = edu(json!({
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": bob.user_id,
            "type": "m.test",
            "message_id": "msg-1",
            "messages": { &alice.user_id: { "*": { "body": "once" } } },
        },
    }));
    a_services
        .handle_transaction_edus(&b_name, std::slice::from_ref(&to_device))
        .await;
    a_services
        .handle_transaction_edus(&b_name, std::slice::from_ref(&to_device))
        .await;
    // One claiming to come from a user of another server (A's own) is dropped.
    let spoofed = edu(json!({
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": alice.user_id,
            "type": "m.test",
            "message_id": "msg-2",
            "messages": { &alice.user_id: { "*": { "body": "spoofed" } } },
        },
    }));
    a_services
        .handle_transaction_edus(&b_name, &[spoofed])
        .await;
    let body = a.get_ok("/_matrix/client/v3/sync?timeout=0", &alice).await;
    let bodies: Vec<&str> = body["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["once"], "{body}");
    let since = next_batch(&body);

    // Typing for a user of B who is not in the room, for a user of another server, and from
    // a server with nobody in the room: all dropped. Garbage EDUs too.
    let stranger = format!("@stranger:{}", b.server_name());
    a_services
        .handle_transaction_edus(
            &b_name,
            &[
                edu(json!({ "edu_type": "m.typing",
                    "content": { "room_id": room, "user_id": stranger, "typing": true } })),
                edu(json!({ "edu_type": "m.typing",
                    "content": { "room_id": room, "user_id": alice.user_id, "typing": true } })),
                edu(json!({ "edu_type": "m.typing", "content": "nonsense" })),
                edu(json!({ "edu_type": "m.receipt", "content": [1, 2] })),
                edu(json!({ "edu_type": "m.presence", "content": { "push": "no" } })),
                edu(json!({ "no_type": true })),
            ],
        )
        .await;
    let elsewhere = ServerName::parse("elsewhere.example").unwrap();
    a_services
        .handle_transaction_edus(
            &elsewhere,
            &[edu(json!({ "edu_type": "m.typing",
                "content": { "room_id": room, "user_id": "@x:elsewhere.example", "typing": true } }))],
        )
        .await;
    // Presence of a user of another server than the origin is dropped too.
    a_services
        .handle_transaction_edus(
            &b_name,
            &[edu(json!({ "edu_type": "m.presence",
                "content": { "push": [{ "user_id": alice.user_id, "presence": "unavailable",
                    "last_active_ago": 5 }] } }))],
        )
        .await;
    let body = a
        .get_ok(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            &alice,
        )
        .await;
    assert!(ephemeral_of(&body, &room, "m.typing").is_empty(), "{body}");
    assert!(
        presence_of(&body, &alice.user_id)
            .is_none_or(|e| e["content"]["presence"] != "unavailable")
    );

    // A genuine one from B for Bob is accepted.
    a_services
        .handle_transaction_edus(
            &b_name,
            &[edu(json!({ "edu_type": "m.typing",
                "content": { "room_id": room, "user_id": bob.user_id, "typing": true } }))],
        )
        .await;
    let body = a
        .get_ok(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            &alice,
        )
        .await;
    assert_eq!(
        ephemeral_of(&body, &room, "m.typing")[0]["content"]["user_ids"],
        json!([bob.user_id]),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_redacts_what_the_server_may_not_see() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = a
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "room_alias_name": "hidden",
                "initial_state": [{
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": { "history_visibility": "joined" },
                }],
            }),
        )
        .await;
    a.say(&alice, &room, "before bob").await;
    let alias = format!("#hidden:{}", a.server_name());
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{}", urlencode(&alias)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = a.say(&alice, &room, "after bob").await;
    let response = b
        .services()
        .send_federation_request(
            &name(&a),
            get_backfill::v1::Request::new(
                RoomId::parse(&room).unwrap(),
                vec![EventId::parse(after).unwrap()],
                UInt::from(50u32),
            ),
        )
        .await
        .expect("backfill");
    let pdus: Vec<Value> = response
        .pdus
        .iter()
        .map(|p| serde_json::from_str(p.get()).unwrap())
        .collect();
    let bodies: Vec<&str> = pdus
        .iter()
        .filter_map(|p| p["content"]["body"].as_str())
        .collect();
    assert!(bodies.contains(&"after bob"), "{bodies:?}");
    assert!(!bodies.contains(&"before bob"), "{bodies:?}");
    // The hidden message is there, redacted: the graph has no hole.
    assert!(
        pdus.iter()
            .any(|p| p["type"] == "m.room.message" && p["content"] == json!({})),
        "{pdus:?}"
    );
}
