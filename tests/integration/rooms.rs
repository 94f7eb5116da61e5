//! Rooms over HTTP: `createRoom`, sending messages and state.

use std::collections::HashMap;

use reqwest::StatusCode;
use ruma::{EventId, OwnedEventId, RoomId};
use serde_json::{Value, json};

use crate::common::{TestServer, assert_error, urlencode};

/// The current state as `(type, state_key)` → content, read straight from the server's store.
fn state(server: &TestServer, room_id: &str) -> HashMap<(String, String), Value> {
    let room_id = RoomId::parse(room_id).unwrap();
    let timeline = &server.services().timeline;
    timeline
        .current_state(&room_id)
        .unwrap()
        .into_iter()
        .map(|(key, id)| {
            let pdu = timeline.pdu_json(&id).unwrap().unwrap();
            (key, Value::from(pdu["content"].clone()))
        })
        .collect()
}

fn key(event_type: &str, state_key: &str) -> (String, String) {
    (event_type.to_owned(), state_key.to_owned())
}

#[tokio::test]
async fn create_private_room_in_default_version_12() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    server
        .put(
            "/_matrix/client/v3/profile/@alice:test.local/displayname",
            Some(&alice.token),
            json!({ "displayname": "Alice" }),
        )
        .await;
    let room = server.create_room(&alice,
        json!({
            "name": "Lounge", "topic": "Chat",
            "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }],
        }),
    )
    .await;
    assert!(
        room.starts_with('!') && !room.contains(':'),
        "v12 room IDs derive from the create event: {room}"
    );
    let state = state(&server, &room);
    assert_eq!(state[&key("m.room.create", "")]["room_version"], "12");
    assert!(
        state[&key("m.room.create", "")].get("creator").is_none(),
        "v11+ use the sender"
    );
    assert_eq!(
        state[&key("m.room.member", "@alice:test.local")],
        json!({ "membership": "join", "displayname": "Alice" })
    );
    let power = &state[&key("m.room.power_levels", "")];
    assert_eq!(power["users"], json!({}), "v12 creators are not listed");
    assert_eq!(power["events"]["m.room.tombstone"], 150);
    assert_eq!(power["invite"], 0);
    assert_eq!(state[&key("m.room.join_rules", "")]["join_rule"], "invite");
    assert_eq!(
        state[&key("m.room.history_visibility", "")]["history_visibility"],
        "shared"
    );
    assert_eq!(
        state[&key("m.room.guest_access", "")]["guest_access"],
        "can_join"
    );
    assert_eq!(
        state[&key("m.room.encryption", "")]["algorithm"],
        "m.megolm.v1.aes-sha2"
    );
    assert_eq!(state[&key("m.room.name", "")]["name"], "Lounge");
    assert_eq!(state[&key("m.room.topic", "")]["topic"], "Chat");
    assert_eq!(
        state[&key("m.room.topic", "")]["m.topic"],
        json!({ "m.text": [{ "mimetype": "text/plain", "body": "Chat" }] })
    );
    assert_eq!(state.len(), 9);
}

#[tokio::test]
async fn public_room_in_version_11_and_overrides() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice,
        json!({ "room_version": "11", "visibility": "public", "power_level_content_override": { "state_default": 0 } }),
    )
    .await;
    assert!(room.ends_with(":test.local"), "{room}");
    let state = state(&server, &room);
    assert_eq!(state[&key("m.room.join_rules", "")]["join_rule"], "public");
    assert_eq!(
        state[&key("m.room.guest_access", "")]["guest_access"],
        "forbidden"
    );
    let power = &state[&key("m.room.power_levels", "")];
    assert_eq!(power["users"], json!({ "@alice:test.local": 100 }));
    assert_eq!(power["invite"], 50);
    assert_eq!(power["state_default"], 0, "the override wins");
}

#[tokio::test]
async fn trusted_private_chat_with_invite() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    server.register("bob", "pw").await;
    for (version, v12) in [("12", true), ("10", false)] {
        let room = server.create_room(&alice,
            json!({ "room_version": version, "preset": "trusted_private_chat", "invite": ["@bob:test.local"], "is_direct": true }),
        )
        .await;
        let state = state(&server, &room);
        assert_eq!(
            state[&key("m.room.member", "@bob:test.local")],
            json!({ "membership": "invite", "is_direct": true, "displayname": "bob" }),
            "the invite carries bob's profile (his display name is his localpart)"
        );
        if v12 {
            assert_eq!(
                state[&key("m.room.create", "")]["additional_creators"],
                json!(["@bob:test.local"])
            );
        } else {
            assert_eq!(
                state[&key("m.room.power_levels", "")]["users"]["@bob:test.local"],
                100
            );
            assert_eq!(
                state[&key("m.room.create", "")]["creator"],
                "@alice:test.local"
            );
        }
    }
}

#[tokio::test]
async fn create_room_refusals() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let path = "/_matrix/client/v3/createRoom";
    assert_error(
        &server.post(path, None, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    assert_error(
        &server
            .post(path, Some(&alice.token), json!({ "room_version": "99" }))
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    assert_error(
        &server
            .post(
                path,
                Some(&alice.token),
                json!({ "invite": ["@nobody:test.local"] }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .post(
                path,
                Some(&alice.token),
                json!({ "invite": ["@someone:elsewhere.org"] }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    assert_error(
        &server
            .post(
                path,
                Some(&alice.token),
                json!({ "room_alias_name": "not valid!" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server.post(path, Some(&alice.token), json!({ "initial_state": [{ "type": "m.room.topic", "content": "not an object" }] })).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &server
            .post(path, Some(&alice.token), json!({ "preset": "party" }))
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    // Refusals create no room.
    let rooms: Vec<_> = server
        .services()
        .store
        .scan_prefix(culvert::store::Cf::Rooms, b"")
        .collect();
    assert!(rooms.is_empty(), "no half-created rooms");

    let closed =
        TestServer::start_with("allow_room_creation = false\nrate_limits = { enabled = false }")
            .await;
    let alice = closed.register("alice", "pw").await;
    assert_error(
        &closed.post(path, Some(&alice.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn send_messages_idempotently_and_only_as_a_member() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let send = |txn: &str| format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let body = json!({ "msgtype": "m.text", "body": "hello" });

    let (status, first) = server
        .put(&send("t1"), Some(&alice.token), body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, again) = server
        .put(&send("t1"), Some(&alice.token), body.clone())
        .await;
    assert_eq!(
        again["event_id"], first["event_id"],
        "a repeated transaction sends nothing new"
    );
    let (_, second) = server
        .put(&send("t2"), Some(&alice.token), body.clone())
        .await;
    assert_ne!(second["event_id"], first["event_id"]);

    let room_id = RoomId::parse(&room).unwrap();
    let timeline = server
        .services()
        .timeline
        .events_after(&room_id, 0, None, usize::MAX)
        .unwrap();
    let ids: Vec<&OwnedEventId> = timeline.iter().map(|(_, id)| id).collect();
    let first_id = EventId::parse(first["event_id"].as_str().unwrap()).unwrap();
    assert_eq!(ids.iter().filter(|id| ***id == first_id).count(), 1);
    let pdu = server
        .services()
        .timeline
        .pdu_json(&first_id)
        .unwrap()
        .unwrap();
    assert_eq!(Value::from(pdu["content"].clone()), body);
    assert_eq!(Value::from(pdu["sender"].clone()), "@alice:test.local");

    // A non-member may not send; unknown rooms and bad bodies are refused.
    assert_error(
        &server
            .put(&send("t3"), Some(&bob.token), body.clone())
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .put(
                "/_matrix/client/v3/rooms/!nope:test.local/send/m.room.message/t4",
                Some(&alice.token),
                body.clone(),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .put(&send("t5"), Some(&alice.token), json!([1, 2]))
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &server.put(&send("t6"), None, body).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn state_events_need_power() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "invite": ["@bob:test.local"] }))
        .await;
    server.join(&bob, &room).await;

    let topic = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
    let (status, body) = server
        .put(&topic, Some(&alice.token), json!({ "topic": "by alice" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["event_id"].as_str().unwrap().starts_with('$'));
    assert_error(
        &server
            .put(&topic, Some(&bob.token), json!({ "topic": "by bob" }))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(
        state(&server, &room)[&key("m.room.topic", "")]["topic"],
        "by alice"
    );
    // A message from Bob is fine.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/b1"),
            Some(&bob.token),
            json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_and_malformed_events_write_nothing() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let room_id = RoomId::parse(&room).unwrap();
    let count = || {
        server
            .services()
            .timeline
            .events_after(&room_id, 0, None, usize::MAX)
            .unwrap()
            .len()
    };
    let before = count();

    // Over the 64 KiB PDU limit (but inside the request size limit): 413 M_TOO_LARGE.
    let huge = json!({ "msgtype": "m.text", "body": "x".repeat(70 * 1024) });
    assert_error(
        &server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big"),
                Some(&alice.token),
                huge.clone(),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    assert_error(
        &server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/org.example.big/"),
                Some(&alice.token),
                huge,
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // State content that is not an object, and membership for someone else by state PUT.
    assert_error(
        &server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
                Some(&alice.token),
                json!("just a string"),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:test.local"),
                Some(&alice.token),
                json!({ "membership": "join" }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Not JSON at all.
    let response = server
        .http
        .put(format!(
            "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/nj",
            server.base
        ))
        .bearer_auth(&bob.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");
    assert_eq!(count(), before, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_rooms_created_at_once_are_distinct() {
    // A v12 room ID is the hash of its create event: the same user creating rooms with the same
    // content in the same millisecond must still get separate rooms.
    let server = std::sync::Arc::new(TestServer::start().await);
    let alice = server.register("alice", "pw").await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let server = server.clone();
            let alice = alice.clone();
            tokio::spawn(async move {
                server
                    .create_room(&alice, json!({ "room_version": "12" }))
                    .await
            })
        })
        .collect();
    let mut rooms = std::collections::HashSet::new();
    for task in tasks {
        let room = task.await.unwrap();
        assert!(
            state(&server, &room).contains_key(&key("m.room.join_rules", "")),
            "{room} was created whole"
        );
        rooms.insert(room);
    }
    assert_eq!(rooms.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_over_http_make_one_chain_without_losses() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let alice = server.register("alice", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let mut senders = vec![alice];
    for name in ["bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let who = server.register(name, "pw").await;
        server.join(&who, &room).await;
        senders.push(who);
    }
    let tasks: Vec<_> = senders
        .iter()
        .cloned()
        .map(|who| {
            let server = server.clone();
            let room = room.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..20 {
                    ids.push(
                        server
                            .say(&who, &room, &format!("{}-{i}", who.user_id))
                            .await,
                    );
                }
                ids
            })
        })
        .collect();
    let mut acknowledged = std::collections::HashSet::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 8 * 20);

    // Every acknowledged event is in the timeline exactly once, in one chain: each event's only
    // prev_event is the one before it, and depth rises by one.
    let room_id = RoomId::parse(&room).unwrap();
    let timeline = server
        .services()
        .timeline
        .events_after(&room_id, 0, None, usize::MAX)
        .unwrap();
    let ids: Vec<String> = timeline.iter().map(|(_, id)| id.to_string()).collect();
    for id in &acknowledged {
        assert_eq!(ids.iter().filter(|i| *i == id).count(), 1, "{id}");
    }
    let pdus: Vec<Value> = timeline
        .iter()
        .map(|(_, id)| {
            let pdu = server.services().timeline.pdu_json(id).unwrap().unwrap();
            Value::from(ruma::CanonicalJsonValue::Object(pdu))
        })
        .collect();
    for pair in pdus.windows(2).zip(ids.windows(2)) {
        let ([before, after], [before_id, _]) = pair else {
            unreachable!()
        };
        assert_eq!(after["prev_events"], json!([before_id]));
        assert_eq!(
            after["depth"].as_u64().unwrap(),
            before["depth"].as_u64().unwrap() + 1
        );
    }
    // A client sees each message once through sync.
    let viewer = server.login_ok("alice", "pw").await;
    let filter = r#"{"room":{"timeline":{"limit":100}}}"#;
    let mut seen = std::collections::HashSet::new();
    let mut since = String::new();
    let mut total = 0;
    for _ in 0..4 {
        let query = if since.is_empty() {
            format!("filter={}", urlencode(filter))
        } else {
            format!("since={since}&timeout=0&filter={}", urlencode(filter))
        };
        let body = server
            .get_ok(&format!("/_matrix/client/v3/sync?{query}"), &viewer)
            .await;
        since = body["next_batch"].as_str().unwrap().to_owned();
        for event in body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            total += 1;
            seen.insert(event["event_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(total, seen.len(), "no event twice");
}
