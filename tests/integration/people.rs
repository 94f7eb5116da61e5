//! People: presence (endpoints and `/sync`), profile changes reaching member events, and the
//! user directory.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, next_batch};

fn presence_path(user: &str) -> String {
    format!("/_matrix/client/v3/presence/{user}/status")
}

async fn sync_since(server: &TestServer, who: &Session, since: Option<&str>, extra: &str) -> Value {
    let path = match since {
        Some(since) => format!("/_matrix/client/v3/sync?since={since}&timeout=0{extra}"),
        None => format!("/_matrix/client/v3/sync?timeout=0{extra}"),
    };
    server.get_ok(&path, who).await
}

/// The `m.presence` event of `user` in a sync response, if any.
fn presence_of<'a>(response: &'a Value, user: &str) -> Option<&'a Value> {
    response["presence"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sender"] == user)
}

async fn set_presence(server: &TestServer, who: &Session, body: Value) {
    let (status, response) = server
        .put(&presence_path(&who.user_id), Some(&who.token), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
}

#[tokio::test]
async fn presence_can_be_set_for_oneself_and_read_by_room_mates() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    // Never set: offline.
    let own = server.get_ok(&presence_path(&alice.user_id), &alice).await;
    assert_eq!(own["presence"], "offline");

    set_presence(
        &server,
        &alice,
        json!({ "presence": "online", "status_msg": "Writing tests" }),
    )
    .await;
    let own = server.get_ok(&presence_path(&alice.user_id), &alice).await;
    assert_eq!(own["presence"], "online");
    assert_eq!(own["status_msg"], "Writing tests");
    assert_eq!(own["currently_active"], true);
    assert!(own["last_active_ago"].as_u64().unwrap() < 60_000, "{own}");

    // Strangers may not look; room mates may.
    let stranger = server
        .get(&presence_path(&alice.user_id), Some(&bob.token))
        .await;
    assert_error(&stranger, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let seen = server.get_ok(&presence_path(&alice.user_id), &bob).await;
    assert_eq!(seen["presence"], "online");
    assert_eq!(seen["status_msg"], "Writing tests");

    set_presence(&server, &alice, json!({ "presence": "unavailable" })).await;
    let seen = server.get_ok(&presence_path(&alice.user_id), &bob).await;
    assert_eq!(seen["presence"], "unavailable");
    assert!(seen.get("status_msg").is_none(), "{seen}");
    assert_eq!(seen["currently_active"], false);

    // After leaving, the room no longer counts.
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    let after_leave = server
        .get(&presence_path(&alice.user_id), Some(&bob.token))
        .await;
    assert_error(&after_leave, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

#[tokio::test]
async fn presence_refuses_bad_requests() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    // Someone else's presence.
    let result = server
        .put(
            &presence_path(&bob.user_id),
            Some(&alice.token),
            json!({ "presence": "online" }),
        )
        .await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // Unknown and remote users.
    for user in ["@nobody:test.local", "@alice:elsewhere.example"] {
        let result = server.get(&presence_path(user), Some(&alice.token)).await;
        assert_error(&result, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    // Not a presence state; no presence at all; no token.
    let path = presence_path(&alice.user_id);
    let result = server
        .put(&path, Some(&alice.token), json!({ "presence": "busy" }))
        .await;
    assert_error(&result, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let result = server
        .put(&path, Some(&alice.token), json!({ "status_msg": "hi" }))
        .await;
    assert_error(&result, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let result = server
        .put(&path, None, json!({ "presence": "online" }))
        .await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    // A bad sync set_presence is a bad parameter too.
    let result = server
        .get(
            "/_matrix/client/v3/sync?timeout=0&set_presence=busy",
            Some(&alice.token),
        )
        .await;
    assert_eq!(result.0, StatusCode::BAD_REQUEST, "{}", result.1);
}

#[tokio::test]
async fn sync_carries_presence_of_room_mates_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    set_presence(
        &server,
        &alice,
        json!({ "presence": "online", "status_msg": "here" }),
    )
    .await;

    // An initial sync has every known presence of room mates, and one's own (now online).
    let first = sync_since(&server, &bob, None, "").await;
    let event = presence_of(&first, &alice.user_id).expect("alice's presence");
    assert_eq!(event["type"], "m.presence");
    assert_eq!(event["content"]["presence"], "online");
    assert_eq!(event["content"]["status_msg"], "here");
    assert_eq!(event["content"]["currently_active"], true);
    assert!(event["content"]["last_active_ago"].is_u64());
    assert_eq!(
        presence_of(&first, &bob.user_id).unwrap()["content"]["presence"],
        "online"
    );
    let carol_first = sync_since(&server, &carol, None, "").await;
    assert!(presence_of(&carol_first, &alice.user_id).is_none());

    // A change reaches room mates' incremental syncs once, and nobody else's.
    let since = next_batch(&first);
    let carol_since = next_batch(&carol_first);
    set_presence(
        &server,
        &alice,
        json!({ "presence": "unavailable", "status_msg": "lunch" }),
    )
    .await;
    let next = sync_since(&server, &bob, Some(&since), "").await;
    let event = presence_of(&next, &alice.user_id).expect("alice's change");
    assert_eq!(event["content"]["presence"], "unavailable");
    assert_eq!(event["content"]["status_msg"], "lunch");
    assert_eq!(event["content"]["currently_active"], false);
    assert!(
        presence_of(&next, &bob.user_id).is_none(),
        "bob did not change"
    );
    let again = sync_since(&server, &bob, Some(&next_batch(&next)), "").await;
    assert_eq!(again["presence"]["events"], json!([]));
    let carol_next = sync_since(&server, &carol, Some(&carol_since), "").await;
    assert!(presence_of(&carol_next, &alice.user_id).is_none());
}

#[tokio::test]
async fn staying_online_takes_no_stream_position() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;

    // The first sync brings alice online: her own presence, a new position.
    let first = sync_since(&server, &alice, None, "").await;
    assert_eq!(
        presence_of(&first, &alice.user_id).unwrap()["content"]["presence"],
        "online"
    );
    let token = next_batch(&first);
    // Syncing again, or saying "online" again, changes nothing: same token, no events.
    for _ in 0..3 {
        let next = sync_since(&server, &alice, Some(&token), "").await;
        assert_eq!(next_batch(&next), token);
        assert_eq!(next["presence"]["events"], json!([]));
    }
    set_presence(&server, &alice, json!({ "presence": "online" })).await;
    let next = sync_since(&server, &alice, Some(&token), "").await;
    assert_eq!(next_batch(&next), token);
    // `offline` leaves presence alone.
    let next = sync_since(&server, &alice, Some(&token), "&set_presence=offline").await;
    assert_eq!(next_batch(&next), token);
    assert_eq!(
        server.get_ok(&presence_path(&alice.user_id), &alice).await["presence"],
        "online"
    );
    // A long poll of an online user waits instead of waking itself up.
    let started = Instant::now();
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/sync?since={token}&timeout=700"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "woke early: {body}"
    );
    // `unavailable` is a transition.
    let next = sync_since(&server, &alice, Some(&token), "&set_presence=unavailable").await;
    assert_ne!(next_batch(&next), token);
    assert_eq!(
        presence_of(&next, &alice.user_id).unwrap()["content"]["presence"],
        "unavailable"
    );
}

#[tokio::test]
async fn a_presence_change_wakes_a_long_poll() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    set_presence(&server, &alice, json!({ "presence": "online" })).await;
    let since = next_batch(&sync_since(&server, &bob, None, "").await);

    let started = Instant::now();
    let poll_path = format!("/_matrix/client/v3/sync?since={since}&timeout=20000");
    let poll = server.get(&poll_path, Some(&bob.token));
    let change = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        set_presence(
            &server,
            &alice,
            json!({ "presence": "online", "status_msg": "back" }),
        )
        .await;
    };
    let ((status, body), ()) = tokio::join!(poll, change);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        presence_of(&body, &alice.user_id).unwrap()["content"]["status_msg"],
        "back"
    );
}

#[tokio::test]
async fn profile_changes_reach_member_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let left = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    server.join(&bob, &left).await;
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{left}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    let since = next_batch(&sync_since(&server, &alice, None, "").await);

    let result = server
        .put(
            "/_matrix/client/v3/profile/@bob:test.local/displayname",
            Some(&bob.token),
            json!({ "displayname": "Bobby Tables" }),
        )
        .await;
    assert_eq!(result.0, StatusCode::OK, "{}", result.1);
    let result = server
        .put(
            "/_matrix/client/v3/profile/@bob:test.local/avatar_url",
            Some(&bob.token),
            json!({ "avatar_url": "mxc://test.local/bobface" }),
        )
        .await;
    assert_eq!(result.0, StatusCode::OK, "{}", result.1);

    let member = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:test.local"),
            &alice,
        )
        .await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["displayname"], "Bobby Tables");
    assert_eq!(member["avatar_url"], "mxc://test.local/bobface");

    // Alice's sync shows the new member events in the timeline.
    let next = sync_since(&server, &alice, Some(&since), "").await;
    let events = next["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .expect("timeline")
        .clone();
    let members: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id)
        .collect();
    assert_eq!(members.len(), 2, "{events:?}");
    assert_eq!(members[0]["content"]["displayname"], "Bobby Tables");
    assert_eq!(
        members[1]["content"]["avatar_url"],
        "mxc://test.local/bobface"
    );
    assert_eq!(members[1]["content"]["membership"], "join");

    // The room bob left is untouched: he stays out.
    let member = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{left}/state/m.room.member/@bob:test.local"),
            &alice,
        )
        .await;
    assert_eq!(member["membership"], "leave");

    // Removing the avatar removes it from the member event; a custom field sends nothing.
    server
        .delete(
            "/_matrix/client/v3/profile/@bob:test.local/avatar_url",
            Some(&bob.token),
            json!({}),
        )
        .await;
    let member = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:test.local"),
            &alice,
        )
        .await;
    assert!(member.get("avatar_url").is_none(), "{member}");
    assert_eq!(member["displayname"], "Bobby Tables");
    let token = next_batch(&sync_since(&server, &alice, None, "").await);
    server
        .put(
            "/_matrix/client/v3/profile/@bob:test.local/m.tz",
            Some(&bob.token),
            json!({ "m.tz": "Europe/Paris" }),
        )
        .await;
    let next = sync_since(&server, &alice, Some(&token), "&set_presence=offline").await;
    assert!(next["rooms"]["join"].get(&room).is_none(), "{next}");

    // Someone else's profile is still refused, and sends nothing.
    let result = server
        .put(
            "/_matrix/client/v3/profile/@bob:test.local/displayname",
            Some(&alice.token),
            json!({ "displayname": "Hacked" }),
        )
        .await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

async fn search(server: &TestServer, who: &Session, body: Value) -> Value {
    let (status, response) = server
        .post(
            "/_matrix/client/v3/user_directory/search",
            Some(&who.token),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

fn found_ids(response: &Value) -> Vec<String> {
    response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_user_directory_finds_room_mates_and_public_room_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let dave = server.register("dave", "pw").await;
    let eve = server.register("eve", "pw").await;

    // Bob shares a private room with alice; carol and eve are in a public room; dave is alone.
    let private = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [bob.user_id] }),
        )
        .await;
    server.join(&bob, &private).await;
    let public = server
        .create_room(&carol, json!({ "preset": "public_chat" }))
        .await;
    server.join(&eve, &public).await;
    server
        .create_room(&dave, json!({ "preset": "private_chat" }))
        .await;
    server
        .put(
            "/_matrix/client/v3/profile/@bob:test.local/displayname",
            Some(&bob.token),
            json!({ "displayname": "Robert Builder" }),
        )
        .await;
    server
        .put(
            "/_matrix/client/v3/profile/@bob:test.local/avatar_url",
            Some(&bob.token),
            json!({ "avatar_url": "mxc://test.local/bob" }),
        )
        .await;

    // By display name, case-insensitively, with profile data.
    let found = search(&server, &alice, json!({ "search_term": "rOBERT" })).await;
    assert_eq!(
        found,
        json!({
            "results": [{
                "user_id": "@bob:test.local",
                "display_name": "Robert Builder",
                "avatar_url": "mxc://test.local/bob",
            }],
            "limited": false,
        })
    );
    // By user ID; members of public rooms too; not people only in private rooms.
    assert_eq!(
        found_ids(&search(&server, &alice, json!({ "search_term": "@bob:" })).await),
        ["@bob:test.local"]
    );
    assert_eq!(
        found_ids(&search(&server, &alice, json!({ "search_term": "carol" })).await),
        ["@carol:test.local"]
    );
    assert!(found_ids(&search(&server, &alice, json!({ "search_term": "dave" })).await).is_empty());
    // Dave finds himself (he is in a room) and public room members, but not alice or bob.
    let all = found_ids(&search(&server, &dave, json!({ "search_term": "test.local" })).await);
    assert_eq!(
        all,
        ["@carol:test.local", "@dave:test.local", "@eve:test.local"]
    );

    // Limits.
    let limited = search(
        &server,
        &dave,
        json!({ "search_term": "test.local", "limit": 2 }),
    )
    .await;
    assert_eq!(limited["results"].as_array().unwrap().len(), 2);
    assert_eq!(limited["limited"], true);

    // Deactivated accounts never show.
    let path = "/_matrix/client/v3/account/deactivate";
    let (_, uia) = server.post(path, Some(&eve.token), json!({})).await;
    let (status, body) = server
        .post(
            path,
            Some(&eve.token),
            json!({ "auth": {
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "eve" },
                "password": "pw",
                "session": uia["session"],
            } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(found_ids(&search(&server, &alice, json!({ "search_term": "eve" })).await).is_empty());

    // A room that stops being public stops exposing its members.
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{public}/state/m.room.join_rules/"),
            Some(&carol.token),
            json!({ "join_rule": "invite" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        found_ids(&search(&server, &alice, json!({ "search_term": "carol" })).await).is_empty()
    );
}

#[tokio::test]
async fn the_user_directory_refuses_bad_requests() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let path = "/_matrix/client/v3/user_directory/search";
    let result = server.post(path, Some(&alice.token), json!({})).await;
    assert_error(&result, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let result = server
        .post(
            path,
            Some(&alice.token),
            json!({ "search_term": "a", "limit": "ten" }),
        )
        .await;
    assert_error(&result, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let result = server.post(path, None, json!({ "search_term": "a" })).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    // Nobody to find: an empty answer, not an error.
    let found = search(&server, &alice, json!({ "search_term": "zzz" })).await;
    assert_eq!(found, json!({ "results": [], "limited": false }));
}

#[tokio::test]
async fn public_rooms_from_before_the_index_are_found_after_a_restart() {
    use culvert::store::{Batch, Cf};

    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let carol = server.register("carol", "pw").await;
    let public = server
        .create_room(&carol, json!({ "preset": "public_chat" }))
        .await;
    assert_eq!(
        found_ids(&search(&server, &alice, json!({ "search_term": "carol" })).await),
        ["@carol:test.local"]
    );
    // Make the database look like one written before `public_join_rooms` existed.
    let mut batch = Batch::new();
    batch.delete(Cf::PublicJoinRooms, public.as_bytes());
    batch.delete(Cf::Global, b"public_join_rooms_built".as_slice());
    server.services().store.write(batch).unwrap();
    assert!(
        found_ids(&search(&server, &alice, json!({ "search_term": "carol" })).await).is_empty()
    );

    let server = server.restart().await;
    assert_eq!(
        found_ids(&search(&server, &alice, json!({ "search_term": "carol" })).await),
        ["@carol:test.local"]
    );
}

#[tokio::test]
async fn users_whose_clients_stop_syncing_go_offline() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    // Both sync (and so come online).
    sync_since(&server, &alice, None, "").await;
    let since = next_batch(&sync_since(&server, &bob, None, "").await);
    let services = server.services();
    let now = culvert::utils::now_millis();

    // Shortly after, nobody is gone.
    assert_eq!(services.expire_presence(now + 1000).await.unwrap(), 0);
    // Long after, alice's client has not been heard from: offline, and bob's sync says so.
    let later = now + culvert::service::presence::GONE_AFTER_MS + 1000;
    assert_eq!(services.expire_presence(later).await.unwrap(), 2);
    let response = sync_since(&server, &bob, Some(&since), "&set_presence=offline").await;
    assert_eq!(
        presence_of(&response, "@alice:test.local").expect("alice's presence")["content"]["presence"],
        "offline"
    );
    // A new sync brings her back online.
    sync_since(&server, &alice, None, "").await;
    let (status, body) = server
        .get(&presence_path("@alice:test.local"), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["presence"], "online");
}
