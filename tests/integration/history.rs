//! `/messages`: pagination both ways, continuity with sync, history visibility.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, message_bodies};

async fn page(server: &TestServer, who: &Session, room: &str, query: &str) -> Value {
    server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?{query}"),
            who,
        )
        .await
}

fn messages(page: &Value) -> Vec<String> {
    message_bodies(&page["chunk"])
}

#[tokio::test]
async fn paginate_backward_and_forward_without_gaps_or_duplicates() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    for i in 0..25 {
        server.say(&alice, &room, &format!("m{i:02}")).await;
    }
    let total = 6 + 25; // create, member, power levels, join rules, history visibility, guest access

    let first = page(&server, &alice, &room, "dir=b&limit=10").await;
    assert_eq!(
        messages(&first),
        (15..25)
            .rev()
            .map(|i| format!("m{i:02}"))
            .collect::<Vec<_>>(),
        "newest first"
    );
    let mut seen = HashSet::new();
    let mut next = Some(first);
    let mut pages = 0;
    while let Some(current) = next {
        pages += 1;
        for event in current["chunk"].as_array().unwrap() {
            assert!(
                seen.insert(event["event_id"].as_str().unwrap().to_owned()),
                "duplicate {event}"
            );
        }
        next = match current["end"].as_str() {
            Some(end) => Some(
                page(
                    &server,
                    &alice,
                    &room,
                    &format!("dir=b&limit=10&from={end}"),
                )
                .await,
            ),
            None => None,
        };
    }
    assert_eq!(seen.len(), total);
    assert_eq!(pages, 4);

    // Forward: a first page of 20 with a token, then the rest and no token (history ends).
    let forward = page(&server, &alice, &room, "dir=f&limit=20").await;
    assert_eq!(forward["chunk"].as_array().unwrap().len(), 20);
    assert_eq!(forward["chunk"][0]["type"], "m.room.create");
    let end = forward["end"].as_str().expect("more to come").to_owned();
    let rest = page(
        &server,
        &alice,
        &room,
        &format!("dir=f&limit=100&from={end}"),
    )
    .await;
    assert_eq!(rest["chunk"].as_array().unwrap().len(), total - 20);
    assert_eq!(messages(&rest).last().unwrap(), "m24");
    assert!(rest.get("end").is_none(), "no further events: no end token");
    // `to` bounds a page: backward from the newest, stopping at the first page's end.
    let bounded = page(&server, &alice, &room, &format!("dir=b&limit=100&to={end}")).await;
    assert_eq!(bounded["chunk"].as_array().unwrap().len(), total - 20);
}

#[tokio::test]
async fn sync_prev_batch_continues_into_messages() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    for i in 0..8 {
        server.say(&alice, &room, &format!("s{i}")).await;
    }
    let (_, sync) = server.get("/_matrix/client/v3/sync?filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A3%7D%7D%7D", Some(&alice.token)).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    let prev = timeline["prev_batch"].as_str().unwrap();
    let older = page(
        &server,
        &alice,
        &room,
        &format!("dir=b&limit=5&from={prev}"),
    )
    .await;
    assert_eq!(
        messages(&older),
        vec!["s4", "s3", "s2", "s1", "s0"],
        "exactly the messages before the timeline"
    );
}

#[tokio::test]
async fn history_visibility_is_enforced() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.say(&alice, &room, "shared-before").await;
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice.token),
            json!({ "history_visibility": "joined" }),
        )
        .await;
    server.say(&alice, &room, "secret").await;
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    server.say(&alice, &room, "after-bob").await;

    let seen = messages(&page(&server, &bob, &room, "dir=b&limit=100").await);
    assert!(seen.contains(&"after-bob".to_owned()));
    assert!(
        seen.contains(&"shared-before".to_owned()),
        "sent while history was shared"
    );
    assert!(
        !seen.contains(&"secret".to_owned()),
        "sent while only joined members could see, before bob joined"
    );
    // Alice, joined throughout, sees everything.
    assert_eq!(
        messages(&page(&server, &alice, &room, "dir=b&limit=100").await).len(),
        3
    );

    assert_error(
        &server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
                Some(&carol.token),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from=nonsense"),
                Some(&alice.token),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn single_events_and_member_lists() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/e1");
    let (_, sent) = server
        .put(
            &path,
            Some(&alice.token),
            json!({ "msgtype": "m.text", "body": "one" }),
        )
        .await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();

    let (status, event) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["body"], "one");
    assert_eq!(event["room_id"], room.as_str());
    // Not a member: not found, like a missing event.
    assert_error(
        &server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"),
                Some(&carol.token),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/$missing"),
                Some(&alice.token),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    let (_, first_sync) = server
        .get("/_matrix/client/v3/sync", Some(&alice.token))
        .await;
    let before_bob = first_sync["next_batch"].as_str().unwrap().to_owned();
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({ "user_id": "@carol:test.local" }),
        )
        .await;

    let members = |query: &str| {
        let path = format!("/_matrix/client/v3/rooms/{room}/members{query}");
        let server = &server;
        let token = alice.token.clone();
        async move {
            let (status, body) = server.get(&path, Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let mut users: Vec<String> = body["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    format!(
                        "{}={}",
                        e["state_key"].as_str().unwrap(),
                        e["content"]["membership"].as_str().unwrap()
                    )
                })
                .collect();
            users.sort();
            users
        }
    };
    assert_eq!(
        members("").await,
        vec![
            "@alice:test.local=join",
            "@bob:test.local=join",
            "@carol:test.local=invite"
        ]
    );
    assert_eq!(
        members("?membership=join").await,
        vec!["@alice:test.local=join", "@bob:test.local=join"]
    );
    assert_eq!(
        members("?not_membership=join").await,
        vec!["@carol:test.local=invite"]
    );
    assert_eq!(
        members(&format!("?at={before_bob}")).await,
        vec!["@alice:test.local=join"],
        "as it was at the token"
    );
    assert_error(
        &server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/members"),
                Some(&carol.token),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn messages_filters_and_lazy_loaded_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    for (who, text) in [(&alice, "a1"), (&bob, "b1"), (&alice, "a2"), (&bob, "b2")] {
        server.say(who, &room, text).await;
    }
    let filter = |json: Value| {
        json.to_string()
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };

    let only_bob = page(
        &server,
        &alice,
        &room,
        &format!(
            "dir=b&limit=10&filter={}",
            filter(json!({ "types": ["m.room.message"], "senders": ["@bob:test.local"] }))
        ),
    )
    .await;
    assert_eq!(messages(&only_bob), vec!["b2", "b1"]);
    assert_eq!(only_bob["chunk"].as_array().unwrap().len(), 2);
    assert!(only_bob["state"].as_array().unwrap().is_empty());

    // The filter's own limit applies too; lazy loading adds the senders' member events.
    let lazy = page(
        &server,
        &alice,
        &room,
        &format!(
            "dir=b&limit=10&filter={}",
            filter(json!({ "types": ["m.room.message"], "limit": 3, "lazy_load_members": true }))
        ),
    )
    .await;
    assert_eq!(messages(&lazy), vec!["b2", "a2", "b1"]);
    let mut members: Vec<&str> = lazy["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "m.room.member");
            e["state_key"].as_str().unwrap()
        })
        .collect();
    members.sort();
    assert_eq!(members, vec!["@alice:test.local", "@bob:test.local"]);

    assert_error(
        &server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&filter=%7Bnot"),
                Some(&alice.token),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}
