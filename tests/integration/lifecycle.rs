//! A room's life beyond join and leave, over HTTP: knocking, forgetting, upgrading, and finding
//! events by timestamp.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, message_bodies, next_batch};

const V3: &str = "/_matrix/client/v3";

async fn post(server: &TestServer, who: &Session, path: &str, body: Value) -> (StatusCode, Value) {
    server.post(path, Some(&who.token), body).await
}

async fn post_ok(server: &TestServer, who: &Session, path: &str, body: Value) -> Value {
    let (status, body) = post(server, who, path, body).await;
    assert_eq!(status, StatusCode::OK, "POST {path}: {body}");
    body
}

async fn sync(server: &TestServer, who: &Session, query: &str) -> Value {
    server.get_ok(&format!("{V3}/sync?{query}"), who).await
}

/// The content of a room's current state event, as `who` sees it.
async fn state(server: &TestServer, who: &Session, room: &str, event_type: &str) -> Value {
    server
        .get_ok(&format!("{V3}/rooms/{room}/state/{event_type}/"), who)
        .await
}

/// `who`'s membership in `room` per the room's state, as another member `viewer` sees it.
async fn membership_of(server: &TestServer, viewer: &Session, room: &str, who: &Session) -> Value {
    let path = format!("{V3}/rooms/{room}/state/m.room.member/{}", who.user_id);
    server.get_ok(&path, viewer).await["membership"].clone()
}

fn knock_rules() -> Value {
    json!([{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }])
}

#[tokio::test]
async fn knock_then_invite_and_join_with_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "room_version": "10", "name": "Door", "initial_state": knock_rules() }),
        )
        .await;
    let alice_token = next_batch(&sync(&server, &alice, "").await);

    let body = post_ok(
        &server,
        &bob,
        &format!("{V3}/knock/{room}"),
        json!({ "reason": "hi" }),
    )
    .await;
    assert_eq!(body["room_id"], room);

    // Bob sees the knock with stripped state; nothing of the room's history.
    let bob_sync = sync(&server, &bob, "").await;
    let knock_state = &bob_sync["rooms"]["knock"][&room]["knock_state"]["events"];
    let events = knock_state.as_array().expect("knock_state events");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Door")
    );
    assert!(events.iter().any(|e| e["type"] == "m.room.join_rules"));
    let knock = events
        .iter()
        .find(|e| e["type"] == "m.room.member")
        .expect("the knock itself");
    assert_eq!(knock["state_key"], bob.user_id);
    assert_eq!(knock["content"]["membership"], "knock");
    assert_eq!(knock["content"]["reason"], "hi");
    assert!(bob_sync["rooms"]["join"].get(&room).is_none());
    assert_error(
        &server
            .get(
                &format!("{V3}/rooms/{room}/messages?dir=b"),
                Some(&bob.token),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let bob_token = bob_sync["next_batch"].as_str().unwrap().to_owned();

    // The moderator sees the knock in the room's timeline.
    let alice_sync = sync(&server, &alice, &format!("since={alice_token}&timeout=0")).await;
    let timeline = &alice_sync["rooms"]["join"][&room]["timeline"]["events"];
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id
                && e["content"]["membership"] == "knock"),
        "{timeline}"
    );

    // Accepted: an invite, then Bob joins.
    post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{room}/invite"),
        json!({ "user_id": bob.user_id }),
    )
    .await;
    post_ok(&server, &bob, &format!("{V3}/rooms/{room}/join"), json!({})).await;
    assert_eq!(server.joined_rooms(&bob).await, vec![room.clone()]);
    let later = sync(&server, &bob, &format!("since={bob_token}&timeout=0")).await;
    assert!(later["rooms"]["join"].get(&room).is_some());
    assert!(later["rooms"]["knock"].get(&room).is_none());
}

#[tokio::test]
async fn knocks_can_be_rescinded_kicked_and_banned() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({ "room_version": "11", "room_alias_name": "door", "initial_state": knock_rules() }),
        )
        .await;

    // By alias; then Bob changes his mind.
    let token = next_batch(&sync(&server, &bob, "").await);
    server.say(&alice, &room, "before the knock").await;
    let body = post_ok(
        &server,
        &bob,
        &format!("{V3}/knock/%23door:test.local"),
        json!({}),
    )
    .await;
    assert_eq!(body["room_id"], room);
    assert_eq!(membership_of(&server, &alice, &room, &bob).await, "knock");
    server.say(&alice, &room, "while knocking").await;
    post_ok(
        &server,
        &bob,
        &format!("{V3}/rooms/{room}/leave"),
        json!({}),
    )
    .await;
    assert_eq!(membership_of(&server, &alice, &room, &bob).await, "leave");
    let bob_sync = sync(&server, &bob, "").await;
    assert!(bob_sync["rooms"]["knock"].get(&room).is_none());

    // Having knocked and left is not having been a member: no conversation, no state.
    let left = sync(&server, &bob, &format!("since={token}&timeout=0")).await;
    let timeline = &left["rooms"]["leave"][&room]["timeline"]["events"];
    assert!(message_bodies(timeline).is_empty(), "{timeline}");
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["state_key"] == bob.user_id && e["content"]["membership"] == "leave"),
        "{timeline}"
    );
    let page = server
        .get_ok(&format!("{V3}/rooms/{room}/messages?dir=b"), &bob)
        .await;
    assert!(message_bodies(&page["chunk"]).is_empty(), "{page}");
    assert_error(
        &server
            .get(&format!("{V3}/rooms/{room}/state"), Some(&bob.token))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // Knocks again: the moderator turns him away (a kick).
    post_ok(&server, &bob, &format!("{V3}/knock/{room}"), json!({})).await;
    post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{room}/kick"),
        json!({ "user_id": bob.user_id }),
    )
    .await;
    assert_eq!(membership_of(&server, &alice, &room, &bob).await, "leave");

    // And once more: banned, after which knocking is refused.
    post_ok(&server, &bob, &format!("{V3}/knock/{room}"), json!({})).await;
    post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{room}/ban"),
        json!({ "user_id": bob.user_id }),
    )
    .await;
    assert_eq!(membership_of(&server, &alice, &room, &bob).await, "ban");
    assert_error(
        &post(&server, &bob, &format!("{V3}/knock/{room}"), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn knocking_is_refused_where_the_rules_do_not_allow_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let public = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let invite_only = server.create_room(&alice, json!({})).await;
    // Room version 6 predates knocking: the join rule is meaningless there.
    let old = server
        .create_room(
            &alice,
            json!({ "room_version": "6", "initial_state": knock_rules() }),
        )
        .await;
    for room in [&public, &invite_only, &old] {
        assert_error(
            &post(&server, &bob, &format!("{V3}/knock/{room}"), json!({})).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
    // Already in: nothing to knock for.
    let knockable = server
        .create_room(
            &alice,
            json!({ "room_version": "10", "initial_state": knock_rules() }),
        )
        .await;
    assert_error(
        &post(
            &server,
            &alice,
            &format!("{V3}/knock/{knockable}"),
            json!({}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &post(
            &server,
            &bob,
            &format!("{V3}/knock/!nowhere:test.local"),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &post(
            &server,
            &bob,
            &format!("{V3}/knock/%23nothing:test.local"),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .post(&format!("{V3}/knock/{knockable}"), None, json!({}))
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    let bob_sync = sync(&server, &bob, "").await;
    assert_eq!(bob_sync["rooms"]["knock"], json!({}));
}

#[tokio::test]
async fn forgotten_rooms_disappear_until_rejoined() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    post_ok(&server, &bob, &format!("{V3}/rooms/{room}/join"), json!({})).await;
    server.say(&bob, &room, "hello").await;
    let forget = format!("{V3}/rooms/{room}/forget");

    // Still joined: leave first.
    assert_error(
        &post(&server, &bob, &forget, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    let token = next_batch(&sync(&server, &bob, "").await);
    post_ok(
        &server,
        &bob,
        &format!("{V3}/rooms/{room}/leave"),
        json!({}),
    )
    .await;
    // Left but not forgotten: history up to the leave is still readable.
    server
        .get_ok(&format!("{V3}/rooms/{room}/messages?dir=b"), &bob)
        .await;

    assert_eq!(post_ok(&server, &bob, &forget, json!({})).await, json!({}));
    // Forgetting twice, or a room never joined, is fine.
    post_ok(&server, &bob, &forget, json!({})).await;
    post_ok(
        &server,
        &bob,
        &format!("{V3}/rooms/!nowhere:test.local/forget"),
        json!({}),
    )
    .await;

    let filter = r#"{"room":{"include_leave":true}}"#;
    let everything = sync(&server, &bob, &format!("filter={filter}")).await;
    let since = sync(
        &server,
        &bob,
        &format!("since={token}&timeout=0&filter={filter}"),
    )
    .await;
    for response in [&everything, &since] {
        for section in ["join", "invite", "leave", "knock"] {
            assert!(
                response["rooms"][section].get(&room).is_none(),
                "{section}: {response}"
            );
        }
    }
    assert!(server.joined_rooms(&bob).await.is_empty());
    for path in [
        format!("{V3}/rooms/{room}/messages?dir=b"),
        format!("{V3}/rooms/{room}/state"),
    ] {
        assert_error(
            &server.get(&path, Some(&bob.token)).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
    // The room still knows Bob left.
    assert_eq!(membership_of(&server, &alice, &room, &bob).await, "leave");

    // Joining again brings it all back.
    post_ok(&server, &bob, &format!("{V3}/rooms/{room}/join"), json!({})).await;
    assert_eq!(server.joined_rooms(&bob).await, vec![room.clone()]);
    let again = sync(&server, &bob, "").await;
    assert!(again["rooms"]["join"].get(&room).is_some());
    server
        .get_ok(&format!("{V3}/rooms/{room}/messages?dir=b"), &bob)
        .await;
}

#[tokio::test]
async fn banned_users_may_forget_and_still_be_unbanned() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    post_ok(&server, &bob, &format!("{V3}/rooms/{room}/join"), json!({})).await;
    post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{room}/ban"),
        json!({ "user_id": bob.user_id }),
    )
    .await;
    post_ok(
        &server,
        &bob,
        &format!("{V3}/rooms/{room}/forget"),
        json!({}),
    )
    .await;
    assert!(
        sync(&server, &bob, "").await["rooms"]["leave"]
            .get(&room)
            .is_none()
    );
    post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{room}/unban"),
        json!({ "user_id": bob.user_id }),
    )
    .await;
    post_ok(&server, &bob, &format!("{V3}/rooms/{room}/join"), json!({})).await;

    // Invited is "in" the room too.
    post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{room}/invite"),
        json!({ "user_id": carol.user_id }),
    )
    .await;
    assert_error(
        &post(
            &server,
            &carol,
            &format!("{V3}/rooms/{room}/forget"),
            json!({}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
}

/// The `m.room.create` event of a room, from its state.
async fn create_event(server: &TestServer, who: &Session, room: &str) -> Value {
    let events = server
        .get_ok(&format!("{V3}/rooms/{room}/state"), who)
        .await;
    events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .cloned()
        .expect("a create event")
}

#[tokio::test]
async fn upgrading_a_room_to_v12() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let mallory = server.register("mallory", "pw").await;
    let old = server
        .create_room(
            &alice,
            json!({
                "room_version": "10",
                "preset": "public_chat",
                "name": "Town square",
                "topic": "Everything",
                "room_alias_name": "square",
            }),
        )
        .await;
    post_ok(&server, &bob, &format!("{V3}/rooms/{old}/join"), json!({})).await;
    post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{old}/ban"),
        json!({ "user_id": mallory.user_id }),
    )
    .await;
    let upgrade = format!("{V3}/rooms/{old}/upgrade");

    // Refusals first, which create nothing.
    assert_error(
        &post(&server, &bob, &upgrade, json!({ "new_version": "12" })).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &post(&server, &alice, &upgrade, json!({ "new_version": "99" })).await,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    assert_error(
        &post(&server, &mallory, &upgrade, json!({ "new_version": "12" })).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &post(&server, &alice, &upgrade, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_eq!(server.joined_rooms(&alice).await, vec![old.clone()]);

    let body = post_ok(&server, &alice, &upgrade, json!({ "new_version": "12" })).await;
    let new = body["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned();
    assert_ne!(new, old);

    // The old room: a tombstone, and only moderators may speak or invite.
    let tombstone = state(&server, &alice, &old, "m.room.tombstone").await;
    assert_eq!(tombstone["replacement_room"], new);
    assert!(tombstone["body"].is_string());
    let old_power = state(&server, &alice, &old, "m.room.power_levels").await;
    assert!(old_power["events_default"].as_i64().unwrap() >= 50);
    assert!(old_power["invite"].as_i64().unwrap() >= 50);
    let (status, _) = server
        .put(
            &format!("{V3}/rooms/{old}/send/m.room.message/late"),
            Some(&bob.token),
            json!({ "msgtype": "m.text", "body": "late" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The new room: predecessor, copied state, creator unlisted in power levels, bans.
    let create = create_event(&server, &alice, &new).await;
    assert_eq!(create["content"]["room_version"], "12");
    assert_eq!(create["content"]["predecessor"]["room_id"], old);
    assert_eq!(create["sender"], alice.user_id);
    assert_eq!(
        state(&server, &alice, &new, "m.room.name").await["name"],
        "Town square"
    );
    assert_eq!(
        state(&server, &alice, &new, "m.room.topic").await["topic"],
        "Everything"
    );
    assert_eq!(
        state(&server, &alice, &new, "m.room.join_rules").await["join_rule"],
        "public"
    );
    let new_power = state(&server, &alice, &new, "m.room.power_levels").await;
    assert!(
        new_power["users"].get(&alice.user_id).is_none(),
        "{new_power}"
    );
    assert_eq!(membership_of(&server, &alice, &new, &mallory).await, "ban");

    // The alias moved, and is the new room's canonical alias.
    let (status, resolved) = server
        .get(&format!("{V3}/directory/room/%23square:test.local"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resolved["room_id"], new);
    assert_eq!(
        state(&server, &alice, &new, "m.room.canonical_alias").await["alias"],
        "#square:test.local"
    );

    // Bob follows: joining the public replacement works.
    post_ok(&server, &bob, &format!("{V3}/rooms/{new}/join"), json!({})).await;
    // The old room cannot be upgraded by someone without the power, even now.
    assert_error(
        &post(&server, &bob, &upgrade, json!({ "new_version": "11" })).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn upgrading_a_room_within_v11_and_out_of_v12() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let old = server
        .create_room(&alice, json!({ "room_version": "11", "name": "Same" }))
        .await;
    let body = post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{old}/upgrade"),
        json!({ "new_version": "11" }),
    )
    .await;
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let create = create_event(&server, &alice, &new).await;
    assert_eq!(create["content"]["room_version"], "11");
    assert_eq!(create["content"]["predecessor"]["room_id"], old);
    assert!(create["content"]["predecessor"]["event_id"].is_string());
    assert_eq!(
        state(&server, &alice, &new, "m.room.name").await["name"],
        "Same"
    );
    assert_eq!(
        state(&server, &alice, &new, "m.room.join_rules").await["join_rule"],
        "invite"
    );
    assert_eq!(
        state(&server, &alice, &new, "m.room.power_levels").await["users"][&alice.user_id],
        100
    );
    assert_eq!(
        state(&server, &alice, &old, "m.room.tombstone").await["replacement_room"],
        new
    );

    // Out of a v12 room (creator unlisted) into v11: the upgrader keeps 100.
    let v12 = server
        .create_room(&alice, json!({ "room_version": "12" }))
        .await;
    let body = post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{v12}/upgrade"),
        json!({ "new_version": "11" }),
    )
    .await;
    let down = body["replacement_room"].as_str().unwrap().to_owned();
    assert_eq!(
        state(&server, &alice, &down, "m.room.power_levels").await["users"][&alice.user_id],
        100
    );
    // Into v12 with another creator: named in the create event, unlisted in power levels.
    let bob = server.register("bob", "pw").await;
    let body = post_ok(
        &server,
        &alice,
        &format!("{V3}/rooms/{new}/upgrade"),
        json!({ "new_version": "12", "additional_creators": [bob.user_id] }),
    )
    .await;
    let newest = body["replacement_room"].as_str().unwrap().to_owned();
    let create = create_event(&server, &alice, &newest).await;
    assert_eq!(
        create["content"]["additional_creators"],
        json!([bob.user_id])
    );
    assert_eq!(create["content"]["predecessor"]["room_id"], new);
    let power = state(&server, &alice, &newest, "m.room.power_levels").await;
    assert!(power["users"].get(&alice.user_id).is_none(), "{power}");
    assert!(power["users"].get(&bob.user_id).is_none(), "{power}");

    assert_error(
        &post(
            &server,
            &alice,
            &format!("{V3}/rooms/!nowhere:test.local/upgrade"),
            json!({ "new_version": "11" }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

async fn origin_ts(server: &TestServer, who: &Session, room: &str, event_id: &str) -> u64 {
    let event = server
        .get_ok(&format!("{V3}/rooms/{room}/event/{event_id}"), who)
        .await;
    event["origin_server_ts"]
        .as_u64()
        .expect("origin_server_ts")
}

async fn at_ts(
    server: &TestServer,
    who: &Session,
    room: &str,
    ts: u64,
    dir: &str,
) -> (StatusCode, Value) {
    server
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}"),
            Some(&who.token),
        )
        .await
}

#[tokio::test]
async fn timestamp_to_event_finds_the_closest_visible_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let mut sent = Vec::new();
    for text in ["a", "b", "c"] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let id = server.say(&alice, &room, text).await;
        sent.push((id.clone(), origin_ts(&server, &alice, &room, &id).await));
    }
    let (a, b, c) = (&sent[0], &sent[1], &sent[2]);
    assert!(a.1 < b.1 && b.1 < c.1);

    for (ts, dir, expected) in [
        (b.1, "f", b),
        (b.1, "b", b),
        (a.1 + 1, "f", b),
        (c.1 - 1, "b", b),
        (c.1 + 60_000, "b", c),
    ] {
        let (status, body) = at_ts(&server, &alice, &room, ts, dir).await;
        assert_eq!(status, StatusCode::OK, "{ts} {dir}: {body}");
        assert_eq!(body["event_id"], expected.0.as_str(), "{ts} {dir}");
        assert_eq!(body["origin_server_ts"], expected.1);
    }
    assert_error(
        &at_ts(&server, &alice, &room, c.1 + 60_000, "f").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &at_ts(&server, &alice, &room, 0, "b").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Not a member: forbidden. Bad parameters: 400.
    assert_error(
        &at_ts(&server, &bob, &room, b.1, "f").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, _) = at_ts(&server, &alice, &room, b.1, "sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?dir=f"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn timestamp_to_event_skips_what_the_user_may_not_see() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "initial_state": [{
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": { "history_visibility": "joined" },
                }],
            }),
        )
        .await;
    let secret = server.say(&alice, &room, "before bob").await;
    let secret_ts = origin_ts(&server, &alice, &room, &secret).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    post_ok(&server, &bob, &format!("{V3}/rooms/{room}/join"), json!({})).await;

    // Forward from just after Alice's message (the room's set-up events may share its
    // millisecond), Bob's first visible event is his own join.
    let (status, body) = at_ts(&server, &bob, &room, secret_ts + 1, "f").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let join = server
        .get_ok(
            &format!(
                "{V3}/rooms/{room}/event/{}",
                body["event_id"].as_str().unwrap()
            ),
            &bob,
        )
        .await;
    assert_eq!(join["type"], "m.room.member");
    assert_eq!(join["state_key"], bob.user_id);
    // Backward, the message is skipped (the room's first events, sent before the visibility
    // became `joined`, are shared history).
    let (status, body) = at_ts(&server, &bob, &room, secret_ts, "b").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["event_id"], secret);
    let (status, body) = at_ts(&server, &alice, &room, secret_ts, "b").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["event_id"], secret);
}

#[tokio::test]
async fn a_moderator_below_the_state_levels_can_still_upgrade() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    // Bob (50) may send the tombstone, but not history visibility or encryption (100).
    let old = server
        .create_room(
            &alice,
            json!({
                "room_version": "10",
                "preset": "public_chat",
                "power_level_content_override": {
                    "users": { alice.user_id.clone(): 100, bob.user_id.clone(): 50 },
                    "events": {
                        "m.room.tombstone": 50,
                        "m.room.history_visibility": 100,
                        "m.room.encryption": 100,
                    },
                },
                "initial_state": [{
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": { "algorithm": "m.megolm.v1.aes-sha2" },
                }],
            }),
        )
        .await;
    post_ok(&server, &bob, &format!("{V3}/rooms/{old}/join"), json!({})).await;
    let body = post_ok(
        &server,
        &bob,
        &format!("{V3}/rooms/{old}/upgrade"),
        json!({ "new_version": "11" }),
    )
    .await;
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    assert_eq!(
        state(&server, &bob, &new, "m.room.encryption").await["algorithm"],
        "m.megolm.v1.aes-sha2"
    );
    assert_eq!(
        state(&server, &bob, &new, "m.room.history_visibility").await["history_visibility"],
        "shared"
    );
    // Set up with Bob raised, then the old levels restored.
    let power = state(&server, &bob, &new, "m.room.power_levels").await;
    assert_eq!(power["users"][&bob.user_id], 50, "{power}");
    assert_eq!(power["users"][&alice.user_id], 100, "{power}");
    // Bob lacked the power to restrict the old room's power levels (100): that step is skipped.
    assert_eq!(
        state(&server, &bob, &old, "m.room.tombstone").await["replacement_room"],
        new
    );
}
