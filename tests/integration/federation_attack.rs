//! Federation under attack: what a hostile or broken server gets from culvert. Every request
//! here is correctly signed by server A (a real culvert whose key B fetches), so each test
//! reaches the check it names rather than the signature check in front of it.

use reqwest::StatusCode;
use ruma::{
    CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedTransactionId,
    api::federation::transactions::send_transaction_message, serde::Raw,
};
use serde_json::{json, value::to_raw_value};

use crate::{
    common::{Session, TestServer, eventually, message_bodies, next_batch},
    federation::{crafted_event, crafted_event_with, crafted_pdu, name, send_to, shared_room},
};

/// Sends a transaction from A to B as built by `fill`; B's HTTP status.
async fn transaction_status(
    a: &TestServer,
    b: &TestServer,
    txn: &str,
    fill: impl FnOnce(&mut send_transaction_message::v1::Request),
) -> StatusCode {
    let mut request = send_transaction_message::v1::Request::new(
        OwnedTransactionId::from(txn),
        name(a),
        MilliSecondsSinceUnixEpoch::now(),
    );
    fill(&mut request);
    match a
        .services()
        .send_federation_request(&name(b), request)
        .await
    {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status().expect("B answered with an error status"),
    }
}

/// The spec's limits: at most 50 PDUs and 100 EDUs per transaction. More is refused whole
/// with 400 — none of it is processed — and a transaction at the limits is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_over_the_limits_are_refused_whole() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;

    // 51 PDUs, one of them a genuine message of a room B is in: refused, and that message
    // is not stored by B.
    let (id, genuine) = crafted_event(&a, &room, &alice.user_id, "in a big transaction", |_| {});
    let status = transaction_status(&a, &b, "too-many-pdus", |request| {
        request.pdus = std::iter::repeat_n(genuine.clone(), 50)
            .chain([to_raw_value(&json!({ "type": "m.room.message" })).unwrap()])
            .collect();
    })
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let id = EventId::parse(&id).unwrap();
    assert!(
        b.services().timeline.pdu_json(&id).unwrap().is_none(),
        "a PDU of a refused transaction was stored"
    );

    // 101 EDUs, typing notifications of Alice in the room: refused, Bob sees no typing.
    let typing = Raw::from_json(
        to_raw_value(&json!({
            "edu_type": "m.typing",
            "content": { "room_id": room, "user_id": alice.user_id, "typing": true },
        }))
        .unwrap(),
    );
    let status = transaction_status(&a, &b, "too-many-edus", |request| {
        request.edus = vec![typing.clone(); 101];
    })
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let sync = b.get_ok("/_matrix/client/v3/sync?timeout=0", &bob).await;
    let ephemeral = &sync["rooms"]["join"][&room]["ephemeral"]["events"];
    assert!(
        !ephemeral
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.typing"
                && !e["content"]["user_ids"].as_array().unwrap().is_empty()),
        "a refused transaction's EDU was processed: {sync}"
    );

    // At the limits: 50 PDUs (the genuine one, repeated) and 100 EDUs are taken.
    let status = transaction_status(&a, &b, "at-the-limits", |request| {
        request.pdus = vec![genuine.clone(); 50];
        request.edus = vec![typing.clone(); 100];
    })
    .await;
    assert_eq!(status, StatusCode::OK);
    b.wait_for_message(&bob, &room, "in a big transaction")
        .await;
}

/// The same PDU many times in one transaction is stored and shown once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdu_repeated_in_a_transaction_is_stored_once() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;
    let (id, pdu) = crafted_event(&a, &room, &alice.user_id, "said thrice", |_| {});
    let results = send_to(&a, &b, "thrice", vec![pdu.clone(), pdu.clone(), pdu]).await;
    let id = EventId::parse(&id).unwrap();
    assert_eq!(results.get(&id), Some(&Ok(())), "{results:?}");
    assert_eq!(results.len(), 1, "{results:?}");

    let (status, page) = b
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let texts = message_bodies(&page["chunk"]);
    assert_eq!(
        texts.iter().filter(|t| *t == "said thrice").count(),
        1,
        "{texts:?}"
    );
}

/// A server may only send events of rooms the receiving server is in: a PDU of a room B never
/// joined is refused and not stored (B does not become a host of rooms by being told of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdus_of_rooms_the_server_is_not_in_are_refused() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let room = a
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let (id, pdu) = crafted_event(&a, &room, &alice.user_id, "not for B", |_| {});
    let results = send_to(&a, &b, "elsewhere", vec![pdu]).await;
    let id = EventId::parse(&id).unwrap();
    // Dropped (without the room's version its event ID cannot even be known) or refused.
    assert!(
        results.get(&id).is_none_or(|r| r.is_err()),
        "a PDU of an unknown room was accepted: {results:?}"
    );
    assert!(b.services().timeline.pdu_json(&id).unwrap().is_none());
}

/// An event at the highest depth canonical JSON allows (2^53 − 1), correctly signed and
/// authorised, must not stop the room: the next event's depth cannot go higher, so it stays
/// there (as Synapse caps depth), and members on both servers go on talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_at_the_highest_depth_does_not_stop_the_room() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;
    let highest = ruma::Int::MAX;
    let (id, deep) = crafted_event_with(
        &a,
        &room,
        &alice.user_id,
        "from the deep",
        |pdu| {
            pdu.insert("depth".into(), CanonicalJsonValue::Integer(highest));
        },
        |_| {},
    );
    let results = send_to(&a, &b, "deep", vec![deep]).await;
    let id = EventId::parse(&id).unwrap();
    assert_eq!(results.get(&id), Some(&Ok(())), "{results:?}");
    b.wait_for_message(&bob, &room, "from the deep").await;

    // Bob's next message on B builds on it: accepted, at the highest depth, and it reaches A.
    let (status, body) = b
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/after-the-deep"),
            Some(&bob.token),
            json!({ "msgtype": "m.text", "body": "still talking" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let next = EventId::parse(body["event_id"].as_str().unwrap()).unwrap();
    let pdu = b.services().timeline.pdu_json(&next).unwrap().unwrap();
    assert_eq!(pdu["depth"], CanonicalJsonValue::Integer(highest));
    a.wait_for_message(&alice, &room, "still talking").await;
}

/// `user`'s membership in `room` as `who` on `server` sees it ("" when it has none).
async fn membership(server: &TestServer, who: &Session, room: &str, user: &str) -> String {
    let (_, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}"),
            Some(&who.token),
        )
        .await;
    body["membership"].as_str().unwrap_or_default().to_owned()
}

/// The event IDs an event of B's builds on.
fn prev_events_of(b: &TestServer, event_id: &str) -> Vec<String> {
    let pdu = b
        .services()
        .timeline
        .pdu_json(&EventId::parse(event_id).unwrap())
        .unwrap()
        .expect("stored");
    match &pdu["prev_events"] {
        CanonicalJsonValue::Array(ids) => ids
            .iter()
            .filter_map(|id| match id {
                CanonicalJsonValue::String(id) => Some(id.clone()),
                _ => None,
            })
            .collect(),
        other => panic!("prev_events: {other:?}"),
    }
}

/// Soft failure: Mallory's message, made before her ban and sent after it, is allowed by the
/// state it names but not by the room's present. B keeps it in the DAG (stored, answered
/// without error) but never shows it to a client and never builds on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_present_state_forbids_is_soft_failed() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;
    let mallory = a.register("mallory", "mallory-password-1").await;
    a.join(&mallory, &room).await;
    eventually("B sees Mallory join", || async {
        membership(&b, &bob, &room, &mallory.user_id).await == "join"
    })
    .await;
    let (held_id, held) = crafted_event(&a, &room, &mallory.user_id, "said after the ban", |_| {});
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&alice.token),
            json!({ "user_id": mallory.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("B sees the ban", || async {
        membership(&b, &bob, &room, &mallory.user_id).await == "ban"
    })
    .await;
    let since = next_batch(&b.get_ok("/_matrix/client/v3/sync?timeout=0", &bob).await);

    let results = send_to(&a, &b, "after-the-ban", vec![held]).await;
    let held_event = EventId::parse(&held_id).unwrap();
    assert_eq!(results.get(&held_event), Some(&Ok(())), "{results:?}");
    assert!(
        b.services()
            .timeline
            .pdu_json(&held_event)
            .unwrap()
            .is_some(),
        "a soft-failed event is kept in the DAG"
    );

    // Bob's next message does not build on it, and neither it nor any sync shows it.
    let next = b.say(&bob, &room, "after the soft-failed one").await;
    assert!(
        !prev_events_of(&b, &next).contains(&held_id),
        "a soft-failed event became a forward extremity"
    );
    let sync = b
        .get_ok(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            &bob,
        )
        .await;
    let shown = message_bodies(&sync["rooms"]["join"][&room]["timeline"]["events"]);
    assert!(
        shown.contains(&"after the soft-failed one".to_owned()),
        "{sync}"
    );
    assert!(!shown.contains(&"said after the ban".to_owned()), "{sync}");
    let texts = b.history(&bob, &room).await;
    assert!(
        !texts.contains(&"said after the ban".to_owned()),
        "{texts:?}"
    );
    let (status, _) = b
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{held_id}"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a soft-failed event is served"
    );
}

/// A state reset attempted by a malicious server. Bob (100) made Mallory of A a moderator
/// who may change power levels, then demoted her; A sends a power-levels event of hers forked from before the demotion
/// (everyone at 49), then a message of hers joining both forks. State resolution orders the
/// more powerful sender's change first and checks hers against it: the demotion stands, her
/// fork's levels never become the room's, and the room goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_power_levels_event_does_not_undo_a_demotion() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    // The room lives on B: its creator (Bob here) is B's first user, Mallory A's.
    let (bob, mallory, room) = shared_room(&b, &a).await;
    let levels_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/");
    let mut levels = b.get_ok(&levels_path, &bob).await;
    levels["users"][&mallory.user_id] = json!(50);
    levels["events"]["m.room.power_levels"] = json!(50);
    let (status, body) = b.put(&levels_path, Some(&bob.token), levels.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("A sees Mallory a moderator", || async {
        a.get_ok(&levels_path, &mallory).await["users"][&mallory.user_id] == 50
    })
    .await;

    // Her fork, made now (she may) and kept back.
    let mut forked = levels.clone();
    forked["users_default"] = json!(49);
    let (fork_id, fork) = crafted_pdu(
        &a,
        &room,
        &mallory.user_id,
        ("m.room.power_levels", Some("")),
        forked,
        |_| {},
    );
    // Bob demotes her.
    levels["users"]
        .as_object_mut()
        .unwrap()
        .remove(&mallory.user_id);
    let (status, body) = b.put(&levels_path, Some(&bob.token), levels.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let demotion_id = body["event_id"].as_str().unwrap().to_owned();
    eventually("A sees the demotion", || async {
        a.get_ok(&levels_path, &mallory).await["users"]
            .get(&mallory.user_id)
            .is_none()
    })
    .await;

    let fork = serde_json::value::to_raw_value(&fork).unwrap();
    let results = send_to(&a, &b, "the-fork", vec![fork]).await;
    assert_eq!(
        results.get(&EventId::parse(&fork_id).unwrap()),
        Some(&Ok(())),
        "{results:?}"
    );
    let depth = |id: &str| match b
        .services()
        .timeline
        .pdu_json(&EventId::parse(id).unwrap())
        .unwrap()
        .expect("stored")["depth"]
    {
        CanonicalJsonValue::Integer(depth) => depth,
        ref other => panic!("depth: {other:?}"),
    };
    let top = depth(&fork_id).max(depth(&demotion_id));
    let (merge_id, merge) = crafted_event_with(
        &a,
        &room,
        &mallory.user_id,
        "joining the forks",
        |pdu| {
            pdu.insert(
                "prev_events".into(),
                CanonicalJsonValue::Array(vec![
                    CanonicalJsonValue::String(fork_id.clone()),
                    CanonicalJsonValue::String(demotion_id.clone()),
                ]),
            );
            pdu.insert(
                "depth".into(),
                CanonicalJsonValue::Integer(top + ruma::Int::from(1u8)),
            );
        },
        |_| {},
    );
    let results = send_to(&a, &b, "the-merge", vec![merge]).await;
    assert_eq!(
        results.get(&EventId::parse(&merge_id).unwrap()),
        Some(&Ok(())),
        "{results:?}"
    );
    // The merge went through resolution and is shown; the demotion stands.
    b.wait_for_message(&bob, &room, "joining the forks").await;
    let now = b.get_ok(&levels_path, &bob).await;
    assert!(now["users"].get(&mallory.user_id).is_none(), "{now}");
    assert_eq!(now["users_default"], 0, "the fork's levels won: {now}");
    // Mallory, at 0, cannot set the room's state from A.
    let (status, _) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(&mallory.token),
            json!({ "topic": "mine now" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Events citing events that do not exist: 1,000 prev_events are refused as malformed before
/// anything is fetched (at most 20, as ruma's format check and Synapse have it); 20 unknown
/// ones cost B a bounded number of requests (one `/get_missing_events` round that finds
/// nothing, `/state_ids` for each) and a refusal, and the room goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_citing_missing_events_cost_bounded_work() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;
    let made_up = |count: usize| {
        CanonicalJsonValue::Array(
            (0..count)
                .map(|i| CanonicalJsonValue::String(format!("${i:0>43}")))
                .collect(),
        )
    };
    for (count, text) in [(1000, "a thousand parents"), (20, "twenty unknown parents")] {
        let (id, pdu) = crafted_event_with(
            &a,
            &room,
            &alice.user_id,
            text,
            |pdu| {
                pdu.insert("prev_events".into(), made_up(count));
            },
            |_| {},
        );
        let results = send_to(&a, &b, text, vec![pdu]).await;
        let id = EventId::parse(&id).unwrap();
        assert!(
            results.get(&id).is_none_or(|r| r.is_err()),
            "{count} missing prev_events: {results:?}"
        );
        assert!(b.services().timeline.pdu_json(&id).unwrap().is_none());
    }
    a.say(&alice, &room, "the room goes on").await;
    b.wait_for_message(&bob, &room, "the room goes on").await;
    let texts = b.history(&bob, &room).await;
    assert!(!texts.iter().any(|t| t.contains("parents")), "{texts:?}");
}

/// A burst of joins: A sends the joins of 200 users B has never heard of, as a chain in four
/// transactions of 50. B takes them all, counts them right, and its own user goes on talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_is_taken_and_the_room_goes_on() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (_alice, bob, room) = shared_room(&a, &b).await;
    let mut previous: Option<(String, ruma::Int)> = None;
    let mut joins = Vec::new();
    for i in 0..200 {
        let user = format!("@spam{i}:{}", a.server_name());
        let (id, pdu) = crafted_pdu(
            &a,
            &room,
            &user,
            ("m.room.member", Some(&user)),
            json!({ "membership": "join" }),
            |pdu| {
                if let Some((prev, depth)) = &previous {
                    pdu.insert(
                        "prev_events".into(),
                        CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(prev.clone())]),
                    );
                    pdu.insert(
                        "depth".into(),
                        CanonicalJsonValue::Integer(*depth + ruma::Int::from(1u8)),
                    );
                }
            },
        );
        let CanonicalJsonValue::Integer(depth) = pdu["depth"] else {
            panic!("no depth");
        };
        previous = Some((id, depth));
        joins.push(serde_json::value::to_raw_value(&pdu).unwrap());
    }
    for (n, transaction) in joins.chunks(50).enumerate() {
        let results = send_to(&a, &b, &format!("joins-{n}"), transaction.to_vec()).await;
        assert_eq!(results.len(), 50, "{results:?}");
        assert!(results.values().all(|r| r.is_ok()), "{results:?}");
    }
    let members = b
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            &bob,
        )
        .await;
    assert_eq!(
        members["joined"].as_object().unwrap().len(),
        202,
        "{members}"
    );
    b.say(&bob, &room, "still talking").await;
    assert!(
        b.history(&bob, &room)
            .await
            .contains(&"still talking".to_owned())
    );
}

/// A hostile server over TLS on loopback, with a signing key of its own made here (its events
/// and requests are signed by ruma's signing in this test, not by culvert): it publishes its
/// key, and holds every `/get_missing_events` request open for ever. Its name, its key, and
/// the paths it was asked for.
async fn tarpit() -> (
    String,
    ruma::signatures::Ed25519KeyPair,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use axum::{extract::Request, response::IntoResponse};
    use ruma::signatures::{Ed25519KeyPair, sign_json};

    let (listener, name) = crate::common::tls_listener().await;
    let der = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&der, "tarpit".to_owned()).unwrap();
    let public =
        ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec())
            .encode();
    let CanonicalJsonValue::Object(mut keys) = CanonicalJsonValue::try_from(json!({
        "server_name": name,
        "valid_until_ts": culvert::utils::now_millis() + 86_400_000,
        "verify_keys": { "ed25519:tarpit": { "key": public } },
        "old_verify_keys": {},
    }))
    .unwrap() else {
        unreachable!()
    };
    sign_json(&name, &pair, &mut keys).unwrap();
    let keys = serde_json::to_string(&keys).unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let router = axum::Router::new().fallback(move |request: Request| {
        let log = log.clone();
        let keys = keys.clone();
        async move {
            let path = request.uri().path().to_owned();
            log.lock().unwrap().push(path.clone());
            if path == "/_matrix/key/v2/server" {
                return ([("content-type", "application/json")], keys).into_response();
            }
            if path.starts_with("/_matrix/federation/v1/get_missing_events/") {
                std::future::pending::<()>().await;
            }
            (
                StatusCode::NOT_FOUND,
                [("content-type", "application/json")],
                r#"{"errcode":"M_NOT_FOUND","error":"Nothing here"}"#,
            )
                .into_response()
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    (
        name,
        Ed25519KeyPair::from_der(&der, "tarpit".to_owned()).unwrap(),
        asked,
    )
}

/// A server that never answers `/get_missing_events` holds up nobody else: it sends B an
/// event whose prev_events B lacks (signed with ruma's own signing in this test) and keeps
/// B's request to fill the gap open; meanwhile the room goes on — A's messages reach Bob.
/// (B gives up on the tarpit after its request timeout; the rounds of a gap are bounded,
/// `a_gap_too_deep_to_fetch_takes_the_state_from_the_origin`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_get_missing_events_holds_up_nobody_else() {
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;
    let (tarpit, pair, asked) = tarpit().await;

    let room_id = ruma::RoomId::parse(&room).unwrap();
    let version = b
        .services()
        .timeline
        .room(&room_id)
        .unwrap()
        .unwrap()
        .version;
    let CanonicalJsonValue::Object(mut pdu) = CanonicalJsonValue::try_from(json!({
        "room_id": room,
        "sender": format!("@mallory:{tarpit}"),
        "type": "m.room.message",
        "content": { "msgtype": "m.text", "body": "from the tarpit" },
        "origin_server_ts": culvert::utils::now_millis(),
        "prev_events": [format!("${:0>43}", 7)],
        "auth_events": [],
        "depth": 100,
    }))
    .unwrap() else {
        unreachable!()
    };
    let rules = version.rules().unwrap();
    ruma::signatures::hash_and_sign_event(&tarpit, &pair, &mut pdu, &rules.redaction).unwrap();
    let body = serde_json::to_vec(&json!({
        "origin": tarpit,
        "origin_server_ts": culvert::utils::now_millis(),
        "pdus": [pdu],
    }))
    .unwrap();
    let path = "/_matrix/federation/v1/send/tarpit-1";
    let request = http::Request::builder()
        .method("PUT")
        .uri(path)
        .body(body.clone())
        .unwrap();
    let input =
        XMatrixSigningInput::new(ruma::ServerName::parse(&tarpit).unwrap(), name(&b), &pair);
    let authorization =
        http::HeaderValue::from(&XMatrix::sign_http_request(&request, input).unwrap());
    let send = b
        .http
        .put(format!("{}{path}", b.base))
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .body(body)
        .send();
    let stuck = tokio::spawn(send);

    eventually("B asks the tarpit for the missing events", || async {
        asked
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.contains("get_missing_events"))
    })
    .await;
    a.say(&alice, &room, "the room goes on").await;
    b.wait_for_message(&bob, &room, "the room goes on").await;
    assert!(
        !stuck.is_finished(),
        "the tarpit's transaction is still held"
    );
    assert!(
        !b.history(&bob, &room)
            .await
            .contains(&"from the tarpit".to_owned())
    );
    stuck.abort();
}
