//! Purging through the admin API: a deleted room leaves no trace in the store (also when the
//! purge was cut short), and a history purge takes old messages but keeps state and the rest.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

/// Every column family entry whose key or value names `room_id` but not `except` (an entry
/// of another room that mentions this one), as `(column family, key)`.
fn traces_of(server: &TestServer, room_id: &str, except: &str) -> Vec<(String, String)> {
    let store = &server.services().store;
    let mut found = Vec::new();
    for cf in culvert::store::Cf::ALL {
        for item in store.scan_prefix(*cf, b"") {
            let (key, value) = item.unwrap();
            let names = |bytes: &[u8], id: &str| {
                !id.is_empty() && bytes.windows(id.len()).any(|w| w == id.as_bytes())
            };
            if (names(&key, room_id) || names(&value, room_id))
                && !names(&key, except)
                && !names(&value, except)
            {
                found.push((
                    cf.name().to_owned(),
                    String::from_utf8_lossy(&key).into_owned(),
                ));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_purges_it_from_the_store() {
    let server = TestServer::start().await;
    let root = server.register("root", "root-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let carol = server.register("carol", "carol-password-1").await;
    let dave = server.register("dave", "dave-password-1").await;
    let room = server
        .create_room(
            &bob,
            json!({ "preset": "public_chat", "name": "Spam", "room_alias_name": "spam" }),
        )
        .await;
    server
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{room}"),
            Some(&bob.token),
            json!({ "visibility": "public" }),
        )
        .await;
    server.join(&carol, &room).await;
    let first = server.say(&bob, &room, "buy now").await;
    let reply = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/thread1"),
            Some(&carol.token),
            json!({ "msgtype": "m.text", "body": "in a thread",
                    "m.relates_to": { "rel_type": "m.thread", "event_id": first } }),
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    let reaction = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/r1"),
            Some(&carol.token),
            json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": first, "key": "👍" } }),
        )
        .await;
    assert_eq!(reaction.0, StatusCode::OK, "{}", reaction.1);
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{first}"),
            Some(&carol.token),
            json!({}),
        )
        .await;
    server
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{room}/tags/u.work",
                carol.user_id
            ),
            Some(&carol.token),
            json!({}),
        )
        .await;
    let invited = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&bob.token),
            json!({ "user_id": dave.user_id }),
        )
        .await;
    assert_eq!(invited.0, StatusCode::OK, "{}", invited.1);
    // A room that stays, to show the purge takes only its own room's entries.
    let other = server
        .create_room(&carol, json!({ "preset": "private_chat", "name": "Stays" }))
        .await;
    let kept = server.say(&carol, &other, &format!("see {room}")).await;
    assert!(!traces_of(&server, &room, &other).is_empty());

    let path = format!("/_synapse/admin/v2/rooms/{room}");
    // Admins only; not the admin room; not an unknown room unless only blocked.
    let refused = server.delete(&path, Some(&bob.token), json!({})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let unknown = server
        .delete(
            "/_synapse/admin/v2/rooms/!nosuch:test.local",
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let bad = server
        .delete(&path, Some(&root.token), json!({ "purge": "yes" }))
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let no_user = server
        .delete(
            &path,
            Some(&root.token),
            json!({ "new_room_user_id": "@nobody:test.local" }),
        )
        .await;
    assert_error(&no_user, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    let (status, started) = server
        .delete(&path, Some(&root.token), json!({ "block": true }))
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let delete_id = started["delete_id"].as_str().unwrap().to_owned();
    let status_path = format!("/_synapse/admin/v2/rooms/delete_status/{delete_id}");
    let done = crate::common::poll(
        crate::common::PATIENCE,
        std::time::Duration::from_millis(50),
        || async {
            let status = server.get_ok(&status_path, &root).await;
            (status["status"] == "complete").then_some(status)
        },
    )
    .await
    .expect("the deletion completes");
    let mut kicked: Vec<&str> = done["shutdown_room"]["kicked_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    kicked.sort();
    let mut expected = vec![
        bob.user_id.as_str(),
        carol.user_id.as_str(),
        dave.user_id.as_str(),
    ];
    expected.sort();
    assert_eq!(kicked, expected, "{done}");
    assert_eq!(
        done["shutdown_room"]["local_aliases"],
        json!(["#spam:test.local"])
    );

    // Gone, but for the block.
    assert_eq!(
        traces_of(&server, &room, &other),
        vec![("blocked_rooms".to_owned(), room.clone())]
    );
    let details = server
        .get(
            &format!("/_synapse/admin/v1/rooms/{room}"),
            Some(&root.token),
        )
        .await;
    assert_error(&details, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert!(!server.joined_rooms(&bob).await.contains(&room));
    let alias = server
        .get(
            "/_matrix/client/v3/directory/room/%23spam:test.local",
            Some(&bob.token),
        )
        .await;
    assert_error(&alias, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let event = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{first}"),
            Some(&bob.token),
        )
        .await;
    assert_ne!(event.0, StatusCode::OK, "{}", event.1);
    let rejoin = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_error(&rejoin, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let public = server.get_ok("/_matrix/client/v3/publicRooms", &bob).await;
    assert!(!public.to_string().contains(&room), "{public}");
    // Syncs and the other room carry on.
    server
        .get_ok("/_matrix/client/v3/sync?timeout=0", &carol)
        .await;
    let (status, sliding) = server
        .post(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0",
            Some(&carol.token),
            json!({ "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 1 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sliding}");
    assert!(sliding["rooms"][room.as_str()].is_null(), "{sliding}");
    assert_eq!(sliding["lists"]["all"]["count"], 1, "{sliding}");
    let kept_event = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{other}/event/{kept}"),
            &carol,
        )
        .await;
    assert_eq!(kept_event["content"]["body"], format!("see {room}"));
    let statuses = server
        .get_ok(
            &format!("/_synapse/admin/v2/rooms/{room}/delete_status"),
            &root,
        )
        .await;
    assert_eq!(statuses["results"][0]["delete_id"], delete_id.as_str());

    // The synchronous v1, keeping the history, moving the members to a new room.
    let third = server
        .create_room(
            &carol,
            json!({ "preset": "public_chat", "room_alias_name": "third" }),
        )
        .await;
    server.join(&bob, &third).await;
    let (status, shut) = server
        .delete(
            &format!("/_synapse/admin/v1/rooms/{third}"),
            Some(&root.token),
            json!({ "purge": false, "new_room_user_id": root.user_id,
                    "room_name": "Gone", "message": "This room was closed." }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{shut}");
    let new_room = shut["new_room_id"].as_str().expect("a new room").to_owned();
    assert_eq!(shut["local_aliases"], json!(["#third:test.local"]));
    assert!(server.joined_rooms(&bob).await.contains(&new_room));
    assert!(!server.joined_rooms(&bob).await.contains(&third));
    server
        .wait_for_message(&bob, &new_room, "This room was closed.")
        .await;
    let moved = server
        .get_ok(
            "/_matrix/client/v3/directory/room/%23third:test.local",
            &bob,
        )
        .await;
    assert_eq!(moved["room_id"], new_room.as_str());
    // Kept: the admin API still describes it, with nobody of this server in it.
    let details = server
        .get_ok(&format!("/_synapse/admin/v1/rooms/{third}"), &root)
        .await;
    assert_eq!(details["joined_local_members"], 0, "{details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_cut_short_is_finished_at_the_next_start() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    server.say(&alice, &room, "soon gone").await;
    let left = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(left.0, StatusCode::OK);
    // What the purge's first batch writes before the crash: its marker.
    server
        .services()
        .store
        .put(
            culvert::store::Cf::Global,
            format!("purge:{room}").as_bytes(),
            b"",
        )
        .unwrap();
    let server = server.restart().await;
    assert_eq!(
        traces_of(&server, &room, ""),
        Vec::<(String, String)>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_history_takes_old_messages_and_keeps_state_and_the_rest() {
    let server = TestServer::start().await;
    let root = server.register("root", "root-password-1").await;
    let alice = server.register("alice", "alice-password-1").await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Old times" }),
        )
        .await;
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(
            server
                .say(&alice, &room, &format!("message{n} oldword"))
                .await,
        );
    }
    let reaction = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/r1"),
            Some(&alice.token),
            json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": ids[1], "key": "👍" } }),
        )
        .await;
    assert_eq!(reaction.0, StatusCode::OK);
    let reply = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/reply1"),
            Some(&alice.token),
            json!({ "msgtype": "m.text", "body": "in the thread",
                    "m.relates_to": { "rel_type": "m.thread", "event_id": ids[2] } }),
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK);
    let reply_id = reply.1["event_id"].as_str().unwrap().to_owned();
    let point = server.say(&alice, &room, "message6 kept").await;
    let last = server.say(&alice, &room, "message7 newest").await;

    let path = format!("/_synapse/admin/v1/purge_history/{room}");
    let refused = server.post(&path, Some(&alice.token), json!({})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let no_point = server.post(&path, Some(&root.token), json!({})).await;
    assert_error(&no_point, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let unknown = server
        .post(
            "/_synapse/admin/v1/purge_history/!nosuch:test.local",
            Some(&root.token),
            json!({ "purge_up_to_ts": 1 }),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let status_of = |purge_id: String| {
        let server = &server;
        let root = &root;
        async move {
            crate::common::poll(
                crate::common::PATIENCE,
                std::time::Duration::from_millis(50),
                || {
                    let purge_id = purge_id.clone();
                    async move {
                        let status = server
                            .get_ok(
                                &format!("/_synapse/admin/v1/purge_history_status/{purge_id}"),
                                root,
                            )
                            .await;
                        (status["status"] != "active").then_some(status)
                    }
                },
            )
            .await
            .expect("the purge ends")
        }
    };
    let event = |id: String| {
        let server = &server;
        let alice = &alice;
        let room = room.clone();
        async move {
            server
                .get(
                    &format!("/_matrix/client/v3/rooms/{room}/event/{id}"),
                    Some(&alice.token),
                )
                .await
                .0
        }
    };

    // Local events stay unless asked for.
    let (status, started) = server
        .post(&format!("{path}/{point}"), Some(&root.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let done = status_of(started["purge_id"].as_str().unwrap().to_owned()).await;
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(event(ids[0].clone()).await, StatusCode::OK);

    // With delete_local_events: everything before the point but the state.
    let (_, started) = server
        .post(
            &path,
            Some(&root.token),
            json!({ "purge_up_to_event_id": point, "delete_local_events": true }),
        )
        .await;
    let done = status_of(started["purge_id"].as_str().unwrap().to_owned()).await;
    assert_eq!(done["status"], "complete", "{done}");
    for gone in ids.iter().chain([&reply_id]) {
        assert_eq!(event(gone.clone()).await, StatusCode::NOT_FOUND, "{gone}");
    }
    for kept in [&point, &last] {
        assert_eq!(event(kept.clone()).await, StatusCode::OK, "{kept}");
    }
    let name = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            &alice,
        )
        .await;
    assert_eq!(name["name"], "Old times");
    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"),
            &alice,
        )
        .await;
    let bodies = crate::common::message_bodies(&messages["chunk"]);
    assert_eq!(bodies, ["message7 newest", "message6 kept"], "{messages}");
    assert!(
        messages["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create"),
        "state events stay: {messages}"
    );
    let (status, found) = server
        .post(
            "/_matrix/client/v3/search",
            Some(&alice.token),
            json!({ "search_categories": { "room_events": { "search_term": "oldword" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        found["search_categories"]["room_events"]["count"], 0,
        "{found}"
    );
    let threads = server
        .get_ok(&format!("/_matrix/client/v1/rooms/{room}/threads"), &alice)
        .await;
    assert_eq!(threads["chunk"], json!([]), "{threads}");
    server
        .get_ok("/_matrix/client/v3/sync?timeout=0", &alice)
        .await;

    // By time: up to the newest, which always stays.
    let (_, started) = server
        .post(
            &path,
            Some(&root.token),
            json!({ "purge_up_to_ts": culvert::utils::now_millis() + 60_000,
                    "delete_local_events": true }),
        )
        .await;
    let done = status_of(started["purge_id"].as_str().unwrap().to_owned()).await;
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(event(point.clone()).await, StatusCode::NOT_FOUND);
    assert_eq!(event(last.clone()).await, StatusCode::OK);
    let missing = server
        .get(
            "/_synapse/admin/v1/purge_history_status/nosuch",
            Some(&root.token),
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}
