//! `/sync` over HTTP: initial and incremental syncs, long-polling, invites, leaves, gaps.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, message_bodies, next_batch, urlencode};

async fn sync(server: &TestServer, who: &Session, query: &str) -> Value {
    server
        .get_ok(&format!("/_matrix/client/v3/sync?{query}"), who)
        .await
}

fn bodies(timeline: &Value) -> Vec<String> {
    message_bodies(&timeline["events"])
}

fn types(events: &Value) -> Vec<String> {
    let mut types: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    types
}

#[tokio::test]
async fn initial_and_incremental_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server
        .create_room(&alice, json!({ "name": "Lounge" }))
        .await;
    for text in ["one", "two", "three"] {
        server.say(&alice, &room, text).await;
    }

    // Everything fits in the default timeline of 10: create … three, nothing before it.
    let full = sync(&server, &alice, "").await;
    let joined = &full["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 10);
    assert_eq!(joined["timeline"]["limited"], false);
    assert_eq!(joined["timeline"]["events"][0]["type"], "m.room.create");
    assert!(joined["state"]["events"].as_array().unwrap().is_empty());
    assert!(
        joined["timeline"]["events"][0].get("room_id").is_none(),
        "sync events omit room_id"
    );

    // A small limit: the last three messages, limited, with the state before them.
    let filter = urlencode(r#"{"room":{"timeline":{"limit":3}}}"#);
    let small = sync(&server, &alice, &format!("filter={filter}")).await;
    let joined = &small["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]), vec!["one", "two", "three"]);
    assert_eq!(joined["timeline"]["limited"], true);
    assert!(joined["timeline"]["prev_batch"].is_string());
    assert_eq!(
        types(&joined["state"]["events"]),
        vec![
            "m.room.create",
            "m.room.guest_access",
            "m.room.history_visibility",
            "m.room.join_rules",
            "m.room.member",
            "m.room.name",
            "m.room.power_levels"
        ]
    );

    // Incremental: nothing new, then exactly the new message, with no state.
    let since = full["next_batch"].as_str().unwrap().to_owned();
    let nothing = sync(&server, &alice, &format!("since={since}&timeout=0")).await;
    assert!(nothing["rooms"]["join"].as_object().unwrap().is_empty());
    assert_eq!(nothing["next_batch"], since.as_str());
    server.say(&alice, &room, "four").await;
    let next = sync(&server, &alice, &format!("since={since}")).await;
    let joined = &next["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]), vec!["four"]);
    assert_eq!(
        joined["timeline"]["events"].as_array().unwrap().len(),
        1,
        "never a duplicate"
    );
    assert_eq!(joined["timeline"]["limited"], false);
    assert!(joined["state"]["events"].as_array().unwrap().is_empty());
    assert_ne!(next["next_batch"], since.as_str());

    assert_error(
        &server
            .get("/_matrix/client/v3/sync?since=garbage", Some(&alice.token))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server.get("/_matrix/client/v3/sync", None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn long_poll_wakes_on_a_new_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let since = next_batch(&sync(&server, &bob, "").await);

    let waiting = long_poll(&server, &bob, &since);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.say(&alice, &room, "wake up").await;
    let (woke, took) = waiting.await.unwrap();
    assert!(
        took < Duration::from_secs(15),
        "answered on the event, not at the timeout"
    );
    assert_eq!(
        bodies(&woke["rooms"]["join"][&room]["timeline"]),
        vec!["wake up"]
    );
}

/// Starts a long-poll of `who` from `since`; the answer, and how long it took.
fn long_poll(
    server: &TestServer,
    who: &Session,
    since: &str,
) -> tokio::task::JoinHandle<(Value, Duration)> {
    let http = server.http.clone();
    let url = format!(
        "{}/_matrix/client/v3/sync?since={since}&timeout=20000",
        server.base
    );
    let token = who.token.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let response = http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        (response.json::<Value>().await.unwrap(), started.elapsed())
    })
}

/// A client long-polling from the newest position parks without reading anything, and a sync
/// woken by a commit reads only the streams written since its token: account data, tags and
/// receipts written while it waits must still wake it and be in its answer, also when a
/// message came first in the same window.
#[tokio::test]
async fn a_long_poll_from_the_newest_position_wakes_for_account_data_tags_and_receipts() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let since = next_batch(&sync(&server, &bob, "").await);
    let user = urlencode(&bob.user_id);

    // Global account data.
    let waiting = long_poll(&server, &bob, &since);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/user/{user}/account_data/org.example.colour"),
            Some(&bob.token),
            json!({ "colour": "teal" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (woke, took) = waiting.await.unwrap();
    assert!(took < Duration::from_secs(15), "woken, not timed out");
    assert_eq!(
        types(&woke["account_data"]["events"]),
        ["org.example.colour"]
    );
    let since = next_batch(&woke);

    // A message, then a tag, in one window: both are in the answer (or the next one).
    let waiting = long_poll(&server, &bob, &since);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.say(&alice, &room, "tag this").await;
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/user/{user}/rooms/{room}/tags/u.work"),
            Some(&bob.token),
            json!({ "order": 0.5 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (mut woke, took) = waiting.await.unwrap();
    assert!(took < Duration::from_secs(15), "woken, not timed out");
    assert_eq!(
        bodies(&woke["rooms"]["join"][&room]["timeline"]),
        ["tag this"]
    );
    if woke["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        // Woken by the message before the tag was written: the tag comes next.
        let (next, took) = long_poll(&server, &bob, &next_batch(&woke)).await.unwrap();
        assert!(took < Duration::from_secs(15), "the tag is news");
        woke = next;
    }
    assert_eq!(
        woke["rooms"]["join"][&room]["account_data"]["events"][0]["content"]["tags"]["u.work"]["order"],
        0.5
    );
    let since = next_batch(&woke);

    // A receipt of someone else's.
    let last = server.say(&bob, &room, "read me").await;
    let (woke, _) = long_poll(&server, &bob, &since).await.unwrap();
    let since = next_batch(&woke);
    let waiting = long_poll(&server, &bob, &since);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (woke, took) = waiting.await.unwrap();
    assert!(took < Duration::from_secs(15), "woken, not timed out");
    let ephemeral = &woke["rooms"]["join"][&room]["ephemeral"]["events"];
    assert_eq!(types(ephemeral), ["m.receipt"]);
    assert!(
        ephemeral[0]["content"][&last]["m.read"][&alice.user_id].is_object(),
        "{ephemeral}"
    );
    assert_eq!(
        woke["account_data"]["events"],
        json!([]),
        "nothing else came"
    );
}

#[tokio::test]
async fn invites_joins_and_leaves_appear_in_the_right_sections() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let since = next_batch(&sync(&server, &bob, "").await);
    let room = server
        .create_room(
            &alice,
            json!({ "name": "Secret", "invite": ["@bob:test.local"] }),
        )
        .await;

    let invited = sync(&server, &bob, &format!("since={since}")).await;
    let invite_state = &invited["rooms"]["invite"][&room]["invite_state"]["events"];
    let names: Vec<&Value> = invite_state
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(names[0]["content"]["name"], "Secret");
    assert!(
        invite_state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == "@bob:test.local"
                && e["content"]["membership"] == "invite")
    );
    assert!(invited["rooms"]["join"].as_object().unwrap().is_empty());

    // After joining, the room arrives in `join` with everything the client needs.
    let since = invited["next_batch"].as_str().unwrap().to_owned();
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    let joined = sync(&server, &bob, &format!("since={since}")).await;
    assert!(joined["rooms"]["invite"].as_object().unwrap().is_empty());
    let room_data = &joined["rooms"]["join"][&room];
    let mut all = room_data["state"]["events"].as_array().unwrap().clone();
    all.extend(
        room_data["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    assert!(
        all.iter().any(|e| e["type"] == "m.room.name"),
        "full state on joining"
    );
    assert!(all.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == "@bob:test.local"
        && e["content"]["membership"] == "join"));

    // Leaving: the room moves to `leave`, with the leave event.
    let since = joined["next_batch"].as_str().unwrap().to_owned();
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    let left = sync(&server, &bob, &format!("since={since}")).await;
    let timeline = &left["rooms"]["leave"][&room]["timeline"]["events"];
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "leave")
    );
    assert!(left["rooms"]["join"].as_object().unwrap().is_empty());
    // And later messages are not his to see.
    let since = left["next_batch"].as_str().unwrap().to_owned();
    server.say(&alice, &room, "gone").await;
    let after = sync(&server, &bob, &format!("since={since}&timeout=0")).await;
    assert!(after["rooms"]["join"].as_object().unwrap().is_empty());
    assert!(after["rooms"]["leave"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn state_changed_inside_a_gap_is_delivered() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let since = next_batch(&sync(&server, &alice, "").await);
    server.say(&alice, &room, "a").await;
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(&alice.token),
            json!({ "topic": "changed in the gap" }),
        )
        .await;
    for text in ["b", "c", "d"] {
        server.say(&alice, &room, text).await;
    }
    let filter = urlencode(r#"{"room":{"timeline":{"limit":2}}}"#);
    let response = sync(&server, &alice, &format!("since={since}&filter={filter}")).await;
    let joined = &response["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]), vec!["c", "d"]);
    assert_eq!(joined["timeline"]["limited"], true);
    let state = joined["state"]["events"].as_array().unwrap();
    assert_eq!(state.len(), 1, "only what changed in the gap: {state:?}");
    assert_eq!(state[0]["content"]["topic"], "changed in the gap");
}

#[tokio::test]
async fn stored_filters_apply_to_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let path = "/_matrix/client/v3/user/@alice:test.local/filter";
    let (status, created) = server
        .post(
            path,
            Some(&alice.token),
            json!({ "room": { "timeline": { "limit": 2 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let filter_id = created["filter_id"].as_str().unwrap().to_owned();
    let (status, filter) = server
        .get(&format!("{path}/{filter_id}"), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(filter["room"]["timeline"]["limit"], 2);
    assert_error(
        &server
            .get(&format!("{path}/{filter_id}"), Some(&bob.token))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.post(path, Some(&bob.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .get(&format!("{path}/999999"), Some(&alice.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    let room = server.create_room(&alice, json!({})).await;
    server.say(&alice, &room, "x").await;
    let response = sync(&server, &alice, &format!("filter={filter_id}")).await;
    assert_eq!(
        response["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_error(
        &server
            .get("/_matrix/client/v3/sync?filter=424242", Some(&alice.token))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn sync_respects_history_visibility() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice.token),
            json!({ "history_visibility": "joined" }),
        )
        .await;
    server.say(&alice, &room, "before-bob").await;
    let since = next_batch(&sync(&server, &bob, "").await);
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    server.say(&alice, &room, "after-bob").await;

    for query in [String::new(), format!("since={since}")] {
        let response = sync(&server, &bob, &query).await;
        let seen = bodies(&response["rooms"]["join"][&room]["timeline"]);
        assert_eq!(
            seen,
            vec!["after-bob"],
            "query {query:?}: nothing from before bob joined"
        );
    }
}

#[tokio::test]
async fn room_summary_names_heroes_and_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    server.register("bob", "pw").await;
    server.register("carol", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "invite": ["@bob:test.local", "@carol:test.local"] }),
        )
        .await;
    let first = sync(&server, &alice, "").await;
    let summary = &first["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 1);
    assert_eq!(summary["m.invited_member_count"], 2);
    assert_eq!(
        summary["m.heroes"],
        json!(["@bob:test.local", "@carol:test.local"])
    );

    // No membership change: no summary; a message alone does not repeat it.
    let since = first["next_batch"].as_str().unwrap().to_owned();
    server.say(&alice, &room, "hi").await;
    let next = sync(&server, &alice, &format!("since={since}")).await;
    assert!(
        next["rooms"]["join"][&room]
            .get("summary")
            .is_none_or(|s| s.as_object().is_some_and(|o| o.is_empty()))
    );
}

/// A sync query parameter carrying an inline filter.
fn with_filter(filter: Value) -> String {
    format!("filter={}", urlencode(&filter.to_string()))
}

fn state_keys_of(events: &Value, event_type: &str) -> Vec<String> {
    let mut keys: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == event_type)
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn timeline_filters_pick_types_senders_and_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let other = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    for (who, text) in [(&alice, "a1"), (&bob, "b1"), (&alice, "a2"), (&bob, "b2")] {
        server.say(who, &room, text).await;
    }
    server.say(&alice, &other, "elsewhere").await;

    // Only messages, not bob's; the limit counts the events that pass, reading past the rest.
    let filter = json!({ "room": { "timeline": {
        "types": ["m.room.mess*"], "not_senders": ["@bob:test.local"], "limit": 2
    } } });
    let response = sync(&server, &alice, &with_filter(filter)).await;
    let timeline = &response["rooms"]["join"][&room]["timeline"];
    assert_eq!(bodies(timeline), vec!["a1", "a2"]);
    assert!(
        timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] == "m.room.message"),
        "{timeline}"
    );

    // `rooms` and `not_rooms` select rooms in every section.
    let only = sync(
        &server,
        &alice,
        &with_filter(json!({ "room": { "rooms": [other] } })),
    )
    .await;
    let joined: Vec<&String> = only["rooms"]["join"].as_object().unwrap().keys().collect();
    assert_eq!(joined, vec![&other]);
    let not = sync(
        &server,
        &alice,
        &with_filter(json!({ "room": { "rooms": [other, room], "not_rooms": [other] } })),
    )
    .await;
    let joined: Vec<&String> = not["rooms"]["join"].as_object().unwrap().keys().collect();
    assert_eq!(joined, vec![&room]);

    // State filters, ephemeral filters and event_fields.
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/@alice:test.local"),
            Some(&alice.token),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    let filter = json!({
        "event_fields": ["type", "content.body"],
        "room": {
            "timeline": { "limit": 1 },
            "state": { "types": ["m.room.join_rules"] },
            "ephemeral": { "not_types": ["m.typing"] },
        },
    });
    let response = sync(&server, &alice, &with_filter(filter)).await;
    let joined = &response["rooms"]["join"][&room];
    assert_eq!(
        joined["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["m.room.join_rules"]
    );
    assert!(
        joined["ephemeral"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "m.typing")
    );
    assert_eq!(
        joined["timeline"]["events"][0],
        json!({ "type": "m.room.message", "content": { "body": "b2" } })
    );
    let unfiltered = sync(&server, &alice, "").await;
    assert!(
        unfiltered["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.typing")
    );
}

#[tokio::test]
async fn lazy_loading_sends_only_the_members_the_timeline_needs_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    server.join(&carol, &room).await;
    server.say(&bob, &room, "from bob").await;
    server.say(&bob, &room, "bob again").await;

    let lazy = json!({ "room": {
        "timeline": { "limit": 2 },
        "state": { "lazy_load_members": true },
    } });
    let first = sync(&server, &alice, &with_filter(lazy.clone())).await;
    let state = &first["rooms"]["join"][&room]["state"]["events"];
    assert_eq!(
        state_keys_of(state, "m.room.member"),
        vec!["@alice:test.local", "@bob:test.local"],
        "the sender and the syncing user, not carol"
    );
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create"),
        "other state is complete"
    );

    // Bob again: his member event was sent to this device already, carol's is needed now.
    server.say(&bob, &room, "third").await;
    server.say(&carol, &room, "hello from carol").await;
    let since = next_batch(&first);
    let next = sync(
        &server,
        &alice,
        &format!("since={since}&{}", with_filter(lazy)),
    )
    .await;
    let joined = &next["rooms"]["join"][&room];
    assert_eq!(
        bodies(&joined["timeline"]),
        vec!["third", "hello from carol"]
    );
    assert_eq!(
        state_keys_of(&joined["state"]["events"], "m.room.member"),
        vec!["@carol:test.local"]
    );

    // With include_redundant_members, every needed member comes each time.
    let redundant = json!({ "room": {
        "timeline": { "limit": 2 },
        "state": { "lazy_load_members": true, "include_redundant_members": true },
    } });
    let again = sync(
        &server,
        &alice,
        &format!("since={since}&{}", with_filter(redundant)),
    )
    .await;
    assert_eq!(
        state_keys_of(
            &again["rooms"]["join"][&room]["state"]["events"],
            "m.room.member"
        ),
        vec!["@bob:test.local", "@carol:test.local"]
    );

    // Another device of alice has seen nothing yet: it gets bob's member event too.
    let phone = server.login_ok("alice", "pw").await;
    let other_device = sync(
        &server,
        &phone,
        &with_filter(json!({ "room": { "timeline": { "limit": 2 }, "state": { "lazy_load_members": true } } })),
    )
    .await;
    assert_eq!(
        state_keys_of(
            &other_device["rooms"]["join"][&room]["state"]["events"],
            "m.room.member"
        ),
        vec!["@alice:test.local", "@bob:test.local", "@carol:test.local"]
    );
}

#[tokio::test]
async fn full_state_and_state_after() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({ "name": "Full" })).await;
    let since = next_batch(&sync(&server, &alice, "").await);
    server.say(&alice, &room, "new").await;

    // full_state: every state event, but the timeline still starts at `since`.
    let full = sync(&server, &alice, &format!("since={since}&full_state=true")).await;
    let joined = &full["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]), vec!["new"]);
    assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        types(&joined["state"]["events"]),
        vec![
            "m.room.create",
            "m.room.guest_access",
            "m.room.history_visibility",
            "m.room.join_rules",
            "m.room.member",
            "m.room.name",
            "m.room.power_levels"
        ]
    );

    // use_state_after: the state up to the end of the timeline, under `state_after` only.
    let since = next_batch(&full);
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(&alice.token),
            json!({ "topic": "in the timeline" }),
        )
        .await;
    server.say(&alice, &room, "after the topic").await;
    let after = sync(
        &server,
        &alice,
        &format!("since={since}&use_state_after=true"),
    )
    .await;
    let joined = &after["rooms"]["join"][&room];
    assert!(joined.get("state").is_none(), "{joined}");
    let state_after = joined["state_after"]["events"].as_array().unwrap();
    assert_eq!(state_after.len(), 1, "{state_after:?}");
    assert_eq!(state_after[0]["content"]["topic"], "in the timeline");
    // The unstable name matrix-js-sdk sends on every sync gets the unstable section name.
    let unstable = sync(
        &server,
        &alice,
        &format!("since={since}&org.matrix.msc4222.use_state_after=true"),
    )
    .await;
    let joined = &unstable["rooms"]["join"][&room];
    assert!(
        joined.get("state").is_none() && joined.get("state_after").is_none(),
        "{joined}"
    );
    assert_eq!(
        joined["org.matrix.msc4222.state_after"]["events"][0]["content"]["topic"],
        "in the timeline"
    );
    let plain = sync(&server, &alice, &format!("since={since}")).await;
    assert!(
        plain["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .unwrap()
            .is_empty(),
        "without state_after the topic is only in the timeline"
    );
}

/// A member who joined in a gap of the timeline is only in the state sections; the device
/// lists read them under either name of `state_after` (matrix-js-sdk asks with the unstable
/// one), so the client learns to query the newcomer's devices.
#[tokio::test]
async fn device_lists_read_members_joined_in_a_gap_under_either_state_after() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let since = next_batch(&sync(&server, &alice, "").await);
    server.join(&bob, &room).await;
    server.say(&alice, &room, "one").await;
    server.say(&alice, &room, "two").await;
    // A timeline of one event: bob's join falls in the gap before it.
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%7D%7D";
    for (parameter, section) in [
        ("use_state_after", "state_after"),
        (
            "org.matrix.msc4222.use_state_after",
            "org.matrix.msc4222.state_after",
        ),
    ] {
        let response = sync(
            &server,
            &alice,
            &format!("since={since}&filter={filter}&{parameter}=true"),
        )
        .await;
        let joined = &response["rooms"]["join"][&room];
        assert_eq!(bodies(&joined["timeline"]), vec!["two"], "{joined}");
        assert!(
            joined[section]["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["state_key"] == bob.user_id.as_str()),
            "bob's join in {section}: {joined}"
        );
        assert_eq!(
            response["device_lists"]["changed"],
            json!([bob.user_id]),
            "with {parameter}"
        );
    }
}

#[tokio::test]
async fn include_leave_lists_left_rooms_on_a_first_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Was here" }),
        )
        .await;
    server.join(&bob, &room).await;
    server.say(&bob, &room, "bye").await;
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    server.say(&alice, &room, "after bob left").await;

    let plain = sync(&server, &bob, "").await;
    assert!(plain["rooms"]["leave"].as_object().unwrap().is_empty());
    let archive = sync(
        &server,
        &bob,
        &with_filter(json!({ "room": { "include_leave": true, "timeline": { "limit": 2 } } })),
    )
    .await;
    let left = &archive["rooms"]["leave"][&room];
    let timeline = bodies(&left["timeline"]);
    assert_eq!(timeline, vec!["bye"], "up to the leave, nothing after");
    assert!(
        left["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name"),
        "{left}"
    );
}

#[tokio::test]
async fn account_data_filters_apply() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    for kind in ["org.example.keep", "org.example.drop"] {
        let (status, _) = server
            .put(
                &format!("/_matrix/client/v3/user/@alice:test.local/account_data/{kind}"),
                Some(&alice.token),
                json!({ "x": 1 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let response = sync(
        &server,
        &alice,
        &with_filter(json!({ "account_data": { "not_types": ["org.example.drop"] } })),
    )
    .await;
    // A first sync always carries the push rules (the filter does not exclude them here).
    assert_eq!(
        types(&response["account_data"]["events"]),
        vec!["m.push_rules", "org.example.keep"]
    );
}

/// An invite's stripped state names the inviter (their member event): clients call an
/// unnamed room — a direct chat — after them rather than "Empty Room".
#[tokio::test]
async fn an_invite_carries_the_inviters_member_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "is_direct": true, "invite": [bob.user_id] }),
        )
        .await;
    let response = server.get_ok("/_matrix/client/v3/sync", &bob).await;
    let stripped = response["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"));
    let member = |user: &str| {
        stripped
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == user)
            .map(|e| e["content"]["membership"].clone())
    };
    assert_eq!(member(&alice.user_id), Some(json!("join")), "{response}");
    assert_eq!(member(&bob.user_id), Some(json!("invite")));
}
