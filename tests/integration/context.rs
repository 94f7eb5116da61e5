//! `/context`: the events around an event, tokens for `/messages`, filters, lazy-loaded
//! members, history visibility.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, message_bodies, urlencode};

fn path(room: &str, event: &str, query: &str) -> String {
    format!(
        "/_matrix/client/v3/rooms/{}/context/{}?{query}",
        urlencode(room),
        urlencode(event)
    )
}

async fn context(
    server: &TestServer,
    who: &Session,
    room: &str,
    event: &str,
    query: &str,
) -> Value {
    server.get_ok(&path(room, event, query), who).await
}

fn bodies(events: &Value) -> Vec<String> {
    message_bodies(events)
}

fn names(range: impl Iterator<Item = usize>) -> Vec<String> {
    range.map(|i| format!("m{i:02}")).collect()
}

#[tokio::test]
async fn events_around_an_event_with_tokens_for_messages() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(server.say(&alice, &room, &format!("m{i:02}")).await);
    }

    // Default limit 10: five before (newest first), five after (oldest first).
    let around = context(&server, &alice, &room, &ids[10], "").await;
    assert_eq!(around["event"]["event_id"], ids[10].as_str());
    assert_eq!(around["event"]["content"]["body"], "m10");
    assert_eq!(bodies(&around["events_before"]), names((5..10).rev()));
    assert_eq!(bodies(&around["events_after"]), names(11..16));

    // The tokens continue with /messages both ways, without gaps or repeats.
    let start = around["start"].as_str().expect("start token");
    let end = around["end"].as_str().expect("end token");
    let older = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3&from={start}"),
            &alice,
        )
        .await;
    assert_eq!(bodies(&older["chunk"]), names((2..5).rev()));
    let newer = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=3&from={end}"),
            &alice,
        )
        .await;
    assert_eq!(bodies(&newer["chunk"]), names(16..19));

    // The state at the last event returned: the room's state (nothing changed since).
    let state = around["state"].as_array().expect("state");
    let types: Vec<&str> = state.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
    ] {
        assert!(types.contains(&kind), "{kind} in {types:?}");
    }
    assert!(
        state
            .iter()
            .all(|e| e["state_key"].is_string() && e["room_id"] == room.as_str())
    );

    // An odd limit gives the extra event to events_after; 0 gives only the event, and the
    // tokens still point right next to it.
    let three = context(&server, &alice, &room, &ids[10], "limit=3").await;
    assert_eq!(bodies(&three["events_before"]), names([9].into_iter()));
    assert_eq!(bodies(&three["events_after"]), names(11..13));
    let zero = context(&server, &alice, &room, &ids[10], "limit=0").await;
    assert_eq!(zero["event"]["event_id"], ids[10].as_str());
    assert_eq!(zero["events_before"], json!([]));
    assert_eq!(zero["events_after"], json!([]));
    let next = server
        .get_ok(
            &format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1&from={}",
                zero["end"].as_str().unwrap()
            ),
            &alice,
        )
        .await;
    assert_eq!(bodies(&next["chunk"]), vec!["m11"]);
    let previous = server
        .get_ok(
            &format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={}",
                zero["start"].as_str().unwrap()
            ),
            &alice,
        )
        .await;
    assert_eq!(bodies(&previous["chunk"]), vec!["m09"]);

    // At the edges of the room: the newest event has nothing after it; the create event has
    // nothing before it.
    let last = context(&server, &alice, &room, &ids[19], "").await;
    assert_eq!(last["events_after"], json!([]));
    assert_eq!(bodies(&last["events_before"]), names((14..19).rev()));
    let first = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1"),
            &alice,
        )
        .await;
    let create = first["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let at_create = context(&server, &alice, &room, &create, "limit=4").await;
    assert_eq!(at_create["event"]["type"], "m.room.create");
    assert_eq!(at_create["events_before"], json!([]));
    assert_eq!(at_create["events_after"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn filters_apply_to_the_surrounding_events_and_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat", "topic": "t" }))
        .await;
    server.join(&bob, &room).await;
    server.join(&carol, &room).await;
    server.say(&alice, &room, "a1").await;
    server.say(&bob, &room, "b1").await;
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/org.example.custom/c1"),
            Some(&bob.token),
            json!({ "x": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/img"),
            Some(&bob.token),
            json!({ "msgtype": "m.image", "body": "pic", "url": "mxc://test.local/abc" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let target = server.say(&bob, &room, "target").await;
    server.say(&alice, &room, "a2").await;
    server.say(&bob, &room, "b2").await;

    // senders + types: only Bob's messages around the target; the target itself is never
    // filtered out.
    let filter = urlencode(r#"{"senders":["@bob:test.local"],"types":["m.room.message"]}"#);
    let bobs = context(&server, &alice, &room, &target, &format!("filter={filter}")).await;
    assert_eq!(bodies(&bobs["events_before"]), vec!["pic", "b1"]);
    assert_eq!(bodies(&bobs["events_after"]), vec!["b2"]);
    assert!(
        bobs["events_before"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["sender"] == bob.user_id)
    );
    // The state is filtered too: only what Bob sent of type m.room.message — nothing.
    assert_eq!(bobs["state"], json!([]));

    // Wildcards and not_types; not_senders.
    let filter = urlencode(
        r#"{"types":["org.example.*","m.room.message"],"not_senders":["@alice:test.local"]}"#,
    );
    let custom = context(&server, &alice, &room, &target, &format!("filter={filter}")).await;
    let kinds: Vec<&str> = custom["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds[..3],
        ["m.room.message", "org.example.custom", "m.room.message"]
    );
    let filter = urlencode(r#"{"not_types":["m.room.message"]}"#);
    let no_messages = context(&server, &alice, &room, &target, &format!("filter={filter}")).await;
    assert!(
        no_messages["events_before"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "m.room.message"),
        "{no_messages}"
    );
    assert!(no_messages["events_after"].as_array().unwrap().is_empty());
    assert_eq!(no_messages["event"]["content"]["body"], "target");

    // contains_url.
    let filter = urlencode(r#"{"contains_url":true}"#);
    let with_url = context(&server, &alice, &room, &target, &format!("filter={filter}")).await;
    assert_eq!(bodies(&with_url["events_before"]), vec!["pic"]);
    assert_eq!(with_url["events_after"], json!([]));

    // The filter's own limit caps the total too.
    let filter = urlencode(r#"{"limit":2}"#);
    let capped = context(&server, &alice, &room, &target, &format!("filter={filter}")).await;
    assert_eq!(capped["events_before"].as_array().unwrap().len(), 1);
    assert_eq!(bodies(&capped["events_after"]), vec!["a2"]);

    // Without lazy-loading, every member; with it, only the returned events' senders.
    let members = |answer: &Value| -> Vec<String> {
        let mut m: Vec<String> = answer["state"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect();
        m.sort();
        m
    };
    let all = context(&server, &alice, &room, &target, "limit=2").await;
    assert_eq!(
        members(&all),
        vec!["@alice:test.local", "@bob:test.local", "@carol:test.local"]
    );
    assert!(
        all["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.topic")
    );
    let filter = urlencode(r#"{"lazy_load_members":true}"#);
    let lazy = context(
        &server,
        &alice,
        &room,
        &target,
        &format!("limit=2&filter={filter}"),
    )
    .await;
    // Returned: "pic" (bob), "target" (bob), "a2" (alice).
    assert_eq!(members(&lazy), vec!["@alice:test.local", "@bob:test.local"]);
    assert!(
        lazy["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.topic"),
        "lazy-loading leaves other state alone"
    );
    let filter = urlencode(
        r#"{"lazy_load_members":true,"include_redundant_members":true,"senders":["@bob:test.local"]}"#,
    );
    let lazy_bob = context(&server, &alice, &room, &target, &format!("filter={filter}")).await;
    assert_eq!(members(&lazy_bob), vec!["@bob:test.local"]);

    // A filter that is not JSON, or not a filter, is refused.
    let (status, _) = server
        .get(&path(&room, &target, "filter=%7Bnope"), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .get(
            &path(
                &room,
                &target,
                &format!("filter={}", urlencode(r#"{"types":"x"}"#)),
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .get(&path(&room, &target, "limit=-1"), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_invisible_and_foreign_events_are_not_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let shared = server.say(&alice, &room, "shared-before").await;
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice.token),
            json!({ "history_visibility": "joined" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret = server.say(&alice, &room, "secret").await;
    server.join(&bob, &room).await;
    let hello = server.say(&bob, &room, "hello").await;

    // The target must be visible: the secret predates Bob's join.
    assert_error(
        &server
            .get(&path(&room, &secret, ""), Some(&bob.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Around a visible one, invisible events are skipped.
    let around = context(&server, &bob, &room, &hello, "limit=20").await;
    let before = bodies(&around["events_before"]);
    assert!(before.contains(&"shared-before".to_owned()), "{before:?}");
    assert!(!before.contains(&"secret".to_owned()), "{before:?}");
    let around_shared = context(&server, &bob, &room, &shared, "limit=20").await;
    assert_eq!(bodies(&around_shared["events_after"]), vec!["hello"]);
    // Alice sees it all.
    let all = context(&server, &alice, &room, &hello, "limit=20").await;
    assert!(bodies(&all["events_before"]).contains(&"secret".to_owned()));

    // Non-members learn nothing, even of an event that exists.
    assert_error(
        &server
            .get(&path(&room, &hello, ""), Some(&carol.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Unless the room is world-readable: then anyone may look (peeking).
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice.token),
            json!({ "history_visibility": "world_readable" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let public = server.say(&alice, &room, "public").await;
    let peek = context(&server, &carol, &room, &public, "").await;
    assert_eq!(peek["event"]["content"]["body"], "public");
    assert_eq!(
        bodies(&peek["events_before"]),
        Vec::<String>::new(),
        "earlier history was not world-readable"
    );
    assert_error(
        &server
            .get(&path(&room, &hello, ""), Some(&carol.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Unknown events, and events of another room.
    assert_error(
        &server
            .get(&path(&room, "$nope:test.local", ""), Some(&alice.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let other = server.create_room(&alice, json!({})).await;
    assert_error(
        &server
            .get(&path(&other, &hello, ""), Some(&alice.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Authentication is required.
    assert_error(
        &server.get(&path(&room, &hello, ""), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}
