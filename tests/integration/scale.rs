//! The hot paths stay a few point reads and short scans however big the database grows: each
//! request is measured (in store reads, not time) on a nearly empty server, then again after
//! thousands of rooms and events were added, and must cost about the same.

use culvert::store::ReadStats;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, next_batch};

/// Other users' rooms added between the two measurements, and messages added to the measured
/// room.
const OTHER_ROOMS: usize = 1000;
const MORE_MESSAGES: usize = 1000;

/// What each hot path read, once.
#[derive(Debug)]
struct Costs {
    send: ReadStats,
    sync_incremental: ReadStats,
    sync_initial: ReadStats,
    messages: ReadStats,
    join: ReadStats,
}

async fn measured<F: std::future::Future<Output = Value>>(
    server: &TestServer,
    request: F,
) -> (ReadStats, Value) {
    let before = server.services().store.read_stats();
    let body = request.await;
    (server.services().store.read_stats() - before, body)
}

async fn costs(server: &TestServer, room: &str, bob: &Session, joiner: &Session) -> Costs {
    // Bob has read the room: the thousand fillers are not his unread notifications (marking
    // that many read costs a delete each, once — his send would pay it).
    let last = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"),
            bob,
        )
        .await;
    let last = last["chunk"][0]["event_id"]
        .as_str()
        .expect("an event")
        .to_owned();
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let since = next_batch(&server.get_ok("/_matrix/client/v3/sync", bob).await);
    let (send, _) = measured(server, async {
        json!(
            server
                .say(bob, room, &format!("measured-{}", joiner.user_id))
                .await
        )
    })
    .await;
    let (sync_incremental, body) = measured(
        server,
        server.get_ok(&format!("/_matrix/client/v3/sync?since={since}"), bob),
    )
    .await;
    assert_eq!(
        body["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the incremental sync returns exactly the new message: {body}"
    );
    let (sync_initial, _) = measured(server, server.get_ok("/_matrix/client/v3/sync", bob)).await;
    let (messages, body) = measured(
        server,
        server.get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10"),
            bob,
        ),
    )
    .await;
    assert_eq!(body["chunk"].as_array().map(Vec::len), Some(10));
    let (join, _) = measured(server, async {
        server.join(joiner, room).await;
        Value::Null
    })
    .await;
    Costs {
        send,
        sync_incremental,
        sync_initial,
        messages,
        join,
    }
}

/// Fills the server: `OTHER_ROOMS` rooms of another user, a few requests at a time, and
/// `MORE_MESSAGES` messages in the measured room.
async fn grow(server: &TestServer, room: &str, alice: &Session) {
    let carol = server.register("carol", "pw").await;
    let mut pending = Vec::new();
    for i in 0..OTHER_ROOMS {
        let http = server.http.clone();
        let url = format!("{}/_matrix/client/v3/createRoom", server.base);
        let token = carol.token.clone();
        pending.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "name": format!("room {i}") }))
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert_eq!(status, StatusCode::OK, "{}", response.text().await.unwrap());
        }));
        if pending.len() == 8 {
            for task in pending.drain(..) {
                task.await.unwrap();
            }
        }
    }
    for task in pending {
        task.await.unwrap();
    }
    for i in 0..MORE_MESSAGES {
        server.say(alice, room, &format!("filler-{i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_paths_cost_the_same_on_a_big_database() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    for i in 0..20 {
        server.say(&alice, &room, &format!("early-{i}")).await;
    }
    let small = costs(&server, &room, &bob, &server.register("dave", "pw").await).await;

    grow(&server, &room, &alice).await;
    let events_before = server.services().timeline.current_count();
    assert!(
        events_before > (OTHER_ROOMS * 7 + MORE_MESSAGES) as u64,
        "the database holds thousands of events ({events_before})"
    );
    let large = costs(&server, &room, &bob, &server.register("erin", "pw").await).await;

    // The same requests on a database a thousand rooms and events bigger read about the same:
    // a little slack for state-snapshot chains of different depth, nothing that grows with
    // the number of rooms or events.
    let pairs = [
        ("send", small.send, large.send),
        (
            "incremental sync",
            small.sync_incremental,
            large.sync_incremental,
        ),
        ("initial sync", small.sync_initial, large.sync_initial),
        ("messages", small.messages, large.messages),
        ("join", small.join, large.join),
    ];
    for (what, small, large) in pairs {
        eprintln!("{what}: small database {small:?}, big database {large:?}");
        assert!(
            large.total() <= small.total() + 64,
            "{what}: {small:?} on a small database, {large:?} on a big one"
        );
    }
}

#[tokio::test]
async fn a_quiet_room_costs_an_incremental_sync_one_seek() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let mut rooms = Vec::new();
    for _ in 0..20 {
        let room = server.create_room(&alice, json!({})).await;
        for i in 0..15 {
            server.say(&alice, &room, &format!("m{i}")).await;
        }
        rooms.push(room);
    }
    let since = crate::common::next_batch(&server.get_ok("/_matrix/client/v3/sync", &alice).await);
    server.say(&alice, &rooms[0], "news").await;
    let (cost, body) = measured(
        &server,
        server.get_ok(&format!("/_matrix/client/v3/sync?since={since}"), &alice),
    )
    .await;
    assert_eq!(body["rooms"]["join"].as_object().unwrap().len(), 1);
    // 19 quiet rooms: a seek (and one ID read) each, not a page of their timelines.
    assert!(
        cost.total() < 19 * 3 + 60,
        "an incremental sync over 20 rooms, one with news, read {cost:?}"
    );
}
