//! `POST /search` (`room_events`): words folded and matched by prefix, every word of the query
//! required, ranked or newest first, paged; context with profiles, state and groups; only the
//! searcher's rooms and what history visibility lets them see; redacted and encrypted content
//! never found; the spec's errors for bad queries.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

async fn search(server: &TestServer, who: &Session, criteria: Value) -> Value {
    let (status, body) = try_search(server, who, criteria, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["search_categories"]["room_events"].clone()
}

async fn try_search(
    server: &TestServer,
    who: &Session,
    criteria: Value,
    next_batch: Option<&str>,
) -> (StatusCode, Value) {
    let path = match next_batch {
        Some(next) => format!("/_matrix/client/v3/search?next_batch={next}"),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    server
        .post(
            &path,
            Some(&who.token),
            json!({ "search_categories": { "room_events": criteria } }),
        )
        .await
}

fn bodies(found: &Value) -> Vec<String> {
    found["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let content = &r["result"]["content"];
            content["body"]
                .as_str()
                .or(content["topic"].as_str())
                .or(content["name"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_words_in_the_rooms_the_user_may_read() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Kitchen", "topic": "Cooking tips" }),
        )
        .await;
    server.join(&bob, &room).await;
    server
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({ "displayname": "Alice A." }),
        )
        .await;
    let fox = server.say(&alice, &room, "The quick brown fox").await;
    server.say(&bob, &room, "Crème Brûlée recipe").await;
    server.say(&alice, &room, "hello world").await;
    server.say(&bob, &room, "Hello again, world! Hello!").await;
    let private = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    server.say(&alice, &private, "a private fox").await;
    // An encrypted message's ciphertext has no words.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/enc1"),
            Some(&alice.token),
            json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "fox fox fox",
                    "sender_key": "k", "session_id": "s", "device_id": "D" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Folded, by prefix, every word required.
    let found = search(&server, &bob, json!({ "search_term": "FOX" })).await;
    assert_eq!(bodies(&found), vec!["The quick brown fox"], "{found}");
    assert_eq!(found["count"], 1);
    assert_eq!(found["highlights"], json!(["fox"]));
    assert_eq!(found["results"][0]["result"]["event_id"], fox.as_str());
    assert!(found["results"][0]["rank"].is_number());
    assert_eq!(
        bodies(&search(&server, &bob, json!({ "search_term": "creme brulee" })).await),
        vec!["Crème Brûlée recipe"]
    );
    let hel = search(
        &server,
        &bob,
        json!({ "search_term": "hel", "order_by": "recent" }),
    )
    .await;
    assert_eq!(
        bodies(&hel),
        vec!["Hello again, world! Hello!", "hello world"]
    );
    // Ranked: the message with "hello" twice first.
    let ranked = search(
        &server,
        &bob,
        json!({ "search_term": "hello world", "order_by": "rank" }),
    )
    .await;
    assert_eq!(
        bodies(&ranked),
        vec!["Hello again, world! Hello!", "hello world"]
    );
    assert_eq!(
        bodies(&search(&server, &bob, json!({ "search_term": "world again" })).await),
        vec!["Hello again, world! Hello!"]
    );
    assert!(
        bodies(&search(&server, &bob, json!({ "search_term": "fox recipe" })).await).is_empty()
    );
    // Keys: the topic and name are found as such, not as bodies.
    let topic = search(
        &server,
        &bob,
        json!({ "search_term": "cooking", "keys": ["content.topic"] }),
    )
    .await;
    assert_eq!(bodies(&topic), vec!["Cooking tips"]);
    assert!(
        bodies(
            &search(
                &server,
                &bob,
                json!({ "search_term": "cooking", "keys": ["content.body"] })
            )
            .await
        )
        .is_empty()
    );
    assert_eq!(
        bodies(
            &search(
                &server,
                &bob,
                json!({ "search_term": "kitchen", "keys": ["content.name"] })
            )
            .await
        ),
        vec!["Kitchen"]
    );
    // The room filter.
    let elsewhere = search(
        &server,
        &alice,
        json!({ "search_term": "fox", "filter": { "not_rooms": [room] } }),
    )
    .await;
    assert_eq!(bodies(&elsewhere), vec!["a private fox"]);
    let alices = search(
        &server,
        &alice,
        json!({ "search_term": "fox", "order_by": "recent" }),
    )
    .await;
    assert_eq!(
        bodies(&alices),
        vec!["a private fox", "The quick brown fox"]
    );

    // Pages of one.
    let first = search(
        &server,
        &bob,
        json!({ "search_term": "hello", "order_by": "recent", "filter": { "limit": 1 } }),
    )
    .await;
    assert_eq!(bodies(&first), vec!["Hello again, world! Hello!"]);
    let next = first["next_batch"].as_str().expect("next_batch").to_owned();
    let (status, second) = try_search(
        &server,
        &bob,
        json!({ "search_term": "hello", "order_by": "recent", "filter": { "limit": 1 } }),
        Some(&next),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let second = &second["search_categories"]["room_events"];
    assert_eq!(bodies(second), vec!["hello world"]);
    assert!(second.get("next_batch").is_none(), "{second}");

    // Context with profiles, state, groups.
    let full = search(
        &server,
        &bob,
        json!({ "search_term": "brown", "include_state": true,
                "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
                "groupings": { "group_by": [{ "key": "room_id" }, { "key": "sender" }] } }),
    )
    .await;
    let context = &full["results"][0]["context"];
    assert_eq!(
        context["events_after"].as_array().unwrap().len(),
        1,
        "{context}"
    );
    assert_eq!(
        context["events_after"][0]["content"]["body"],
        "Crème Brûlée recipe"
    );
    assert_eq!(context["events_before"].as_array().unwrap().len(), 1);
    assert!(context["start"].is_string() && context["end"].is_string());
    assert_eq!(
        context["profile_info"][&alice.user_id]["displayname"],
        "Alice A."
    );
    assert!(
        full["state"][&room]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name")
    );
    assert_eq!(full["groups"]["room_id"][&room]["results"], json!([fox]));
    assert_eq!(full["groups"]["sender"][&alice.user_id]["order"], 0);

    // A redacted message is no longer found.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{fox}/r1"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(bodies(&search(&server, &bob, json!({ "search_term": "quick" })).await).is_empty());

    // Bad queries.
    let none = try_search(&server, &bob, json!({ "search_term": " ?! " }), None).await;
    assert_error(&none, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let key = try_search(
        &server,
        &bob,
        json!({ "search_term": "x", "keys": ["content.other"] }),
        None,
    )
    .await;
    assert_eq!(key.0, StatusCode::BAD_REQUEST, "{}", key.1);
    let token = try_search(
        &server,
        &bob,
        json!({ "search_term": "x" }),
        Some("nonsense"),
    )
    .await;
    assert_error(&token, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let order = try_search(
        &server,
        &bob,
        json!({ "search_term": "x", "order_by": "loudest" }),
        None,
    )
    .await;
    assert_eq!(order.0, StatusCode::BAD_REQUEST, "{}", order.1);
    let missing = server
        .post(
            "/_matrix/client/v3/search",
            Some(&bob.token),
            json!({ "search_categories": { "room_events": {} } }),
        )
        .await;
    assert_eq!(missing.0, StatusCode::BAD_REQUEST, "{}", missing.1);
    let huge = search(
        &server,
        &bob,
        json!({ "search_term": "hello", "filter": { "limit": 1_000_000 } }),
    )
    .await;
    assert_eq!(bodies(&huge).len(), 2);
}

/// History visibility `joined`: a user who joined later does not find what was said before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_respects_history_visibility() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password-1").await;
    let carol = server.register("carol", "carol-password-1").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat",
                    "initial_state": [{ "type": "m.room.history_visibility", "state_key": "",
                                        "content": { "history_visibility": "joined" } }] }),
        )
        .await;
    server
        .say(&alice, &room, "before carol: secret plans")
        .await;
    server.join(&carol, &room).await;
    server.say(&alice, &room, "after carol: public plans").await;
    let found = search(&server, &carol, json!({ "search_term": "plans" })).await;
    assert_eq!(bodies(&found), vec!["after carol: public plans"], "{found}");
    // Nothing of what Carol may not see shows: not its count, not its words.
    let hidden = search(&server, &carol, json!({ "search_term": "sec" })).await;
    assert_eq!(hidden["count"], 0, "{hidden}");
    assert_eq!(hidden["highlights"], json!(["sec"]));
    assert!(hidden["results"].as_array().unwrap().is_empty());
    let alices = search(
        &server,
        &alice,
        json!({ "search_term": "plans", "order_by": "recent" }),
    )
    .await;
    assert_eq!(bodies(&alices).len(), 2);
}
