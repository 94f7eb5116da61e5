//! Typing notifications and read receipts, delivered through `/sync`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, next_batch};

async fn sync(server: &TestServer, who: &Session, since: &str) -> Value {
    server
        .get_ok(
            &format!("/_matrix/client/v3/sync?since={since}&timeout=0"),
            who,
        )
        .await
}

fn ephemeral<'a>(response: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    response["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

async fn room_with_two(server: &TestServer) -> (Session, Session, String) {
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (_, created) = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "preset": "public_chat" }),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    (alice, bob, room)
}

#[tokio::test]
async fn typing_reaches_other_members() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let (_, first) = server
        .get("/_matrix/client/v3/sync", Some(&bob.token))
        .await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/@alice:test.local");

    let (status, _) = server
        .put(
            &typing,
            Some(&alice.token),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = sync(&server, &bob, &since).await;
    assert_eq!(
        ephemeral(&response, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!(["@alice:test.local"])
    );

    let since = response["next_batch"].as_str().unwrap().to_owned();
    server
        .put(&typing, Some(&alice.token), json!({ "typing": false }))
        .await;
    let response = sync(&server, &bob, &since).await;
    assert_eq!(
        ephemeral(&response, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([])
    );
    // Nothing changed since: no typing event at all.
    let since = response["next_batch"].as_str().unwrap().to_owned();
    assert!(
        sync(&server, &bob, &since).await["rooms"]["join"]
            .as_object()
            .unwrap()
            .is_empty()
    );

    assert_error(
        &server
            .put(
                &typing,
                Some(&bob.token),
                json!({ "typing": true, "timeout": 1000 }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let carol = server.register("carol", "pw").await;
    assert_error(
        &server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/typing/@carol:test.local"),
                Some(&carol.token),
                json!({ "typing": true, "timeout": 1000 }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn read_receipts_public_and_private() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let (_, sent) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            Some(&alice.token),
            json!({ "msgtype": "m.text", "body": "read me" }),
        )
        .await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let (_, first) = server
        .get("/_matrix/client/v3/sync", Some(&alice.token))
        .await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    let receipt = |kind: &str| format!("/_matrix/client/v3/rooms/{room}/receipt/{kind}/{event}");
    assert_eq!(
        server
            .post(&receipt("m.read"), Some(&bob.token), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    let response = sync(&server, &alice, &since).await;
    let receipts = ephemeral(&response, &room, "m.receipt").expect("a receipt event");
    assert!(
        receipts["content"][&event]["m.read"]["@bob:test.local"]["ts"]
            .as_u64()
            .unwrap()
            > 0
    );

    // A private receipt is only for its owner.
    let since = response["next_batch"].as_str().unwrap().to_owned();
    let (_, bob_first) = server
        .get("/_matrix/client/v3/sync", Some(&bob.token))
        .await;
    let bob_since = bob_first["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .post(&receipt("m.read.private"), Some(&bob.token), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    assert!(ephemeral(&sync(&server, &alice, &since).await, &room, "m.receipt").is_none());
    let own = sync(&server, &bob, &bob_since).await;
    assert!(ephemeral(&own, &room, "m.receipt").unwrap()["content"][&event]["m.read.private"]["@bob:test.local"].is_object());

    assert_error(
        &server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/$nope"),
                Some(&bob.token),
                json!({}),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .post(&receipt("m.fully_read"), Some(&bob.token), json!({}))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn a_moved_receipt_is_sent_once_and_only_its_new_place() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let first_event = server.say(&alice, &room, "one").await;
    let second_event = server.say(&alice, &room, "two").await;
    let receipt = |event: &str| format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}");
    let (status, _) = server
        .post(&receipt(&first_event), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let since = next_batch(&server.get_ok("/_matrix/client/v3/sync", &alice).await);

    // Bob reads on: alice's next sync has the receipt at its new place only.
    let (status, _) = server
        .post(&receipt(&second_event), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let moved = sync(&server, &alice, &since).await;
    let content = &ephemeral(&moved, &room, "m.receipt").expect("the moved receipt")["content"];
    assert!(content[&second_event]["m.read"]["@bob:test.local"].is_object());
    assert!(content.get(&first_event).is_none(), "{content}");
    // And not again.
    let since = moved["next_batch"].as_str().unwrap().to_owned();
    server.say(&alice, &room, "three").await;
    let later = sync(&server, &alice, &since).await;
    assert!(ephemeral(&later, &room, "m.receipt").is_none());
    // A first sync still has every receipt.
    let initial = server.get_ok("/_matrix/client/v3/sync", &alice).await;
    assert!(
        ephemeral(&initial, &room, "m.receipt").unwrap()["content"][&second_event]["m.read"]
            ["@bob:test.local"]
            .is_object()
    );
}

/// A typing notification ends by itself at its timeout, and a client that saw it typing hears
/// that it stopped (without anyone saying so).
#[tokio::test]
async fn typing_ends_at_its_timeout_and_clients_hear_it() {
    let server = TestServer::start().await;
    let (alice, bob, room) = room_with_two(&server).await;
    let start = next_batch(&server.get_ok("/_matrix/client/v3/sync", &bob).await);
    let path = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    let (status, _) = server
        .put(
            &path,
            Some(&alice.token),
            json!({ "typing": true, "timeout": 1000 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let typing = sync(&server, &bob, &start).await;
    assert_eq!(
        ephemeral(&typing, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!([alice.user_id])
    );
    // A long-poll from there wakes when the timeout passes, with nobody typing.
    let since = next_batch(&typing);
    let started = std::time::Instant::now();
    let stopped = server
        .get_ok(
            &format!("/_matrix/client/v3/sync?since={since}&timeout=10000"),
            &bob,
        )
        .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "woken by the expiry"
    );
    assert_eq!(
        ephemeral(&stopped, &room, "m.typing").map(|e| e["content"]["user_ids"].clone()),
        Some(json!([])),
        "{stopped}"
    );
}
