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
    common::{TestServer, message_bodies},
    federation::{crafted_event, crafted_event_with, name, send_to, shared_room},
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
