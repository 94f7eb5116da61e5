//! Membership over HTTP: invite, join, leave, kick, ban, unban; joined rooms and members; reading
//! state as a member and after leaving.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

async fn post(
    server: &TestServer,
    who: &Session,
    path: String,
    body: Value,
) -> (StatusCode, Value) {
    server.post(&path, Some(&who.token), body).await
}

#[tokio::test]
async fn invite_join_leave_and_state_after_leaving() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    server
        .put(
            "/_matrix/client/v3/profile/@bob:test.local/displayname",
            Some(&bob.token),
            json!({ "displayname": "Bobby" }),
        )
        .await;
    let room = server
        .create_room(&alice, json!({ "name": "Private" }))
        .await;
    let base = format!("/_matrix/client/v3/rooms/{room}");

    // Invite-only: Bob cannot walk in, nor read the state.
    assert_error(
        &post(&server, &bob, format!("{base}/join"), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.get(&format!("{base}/state"), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    let (status, _) = post(
        &server,
        &alice,
        format!("{base}/invite"),
        json!({ "user_id": "@bob:test.local" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Joining through /join/{roomIdOrAlias} works too.
    let (status, body) = post(
        &server,
        &bob,
        format!("/_matrix/client/v3/join/{room}"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
    assert_eq!(server.joined_rooms(&bob).await, vec![room.clone()]);

    let (status, members) = server
        .get(&format!("{base}/joined_members"), Some(&bob.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        members["joined"]["@bob:test.local"]["display_name"],
        "Bobby"
    );
    assert_eq!(members["joined"].as_object().unwrap().len(), 2);

    // Reading state as a member: all of it, one event, its content.
    let (status, state) = server.get(&format!("{base}/state"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Private")
    );
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event_id"].is_string() && e["room_id"] == room.as_str())
    );
    let (_, name) = server
        .get(&format!("{base}/state/m.room.name/"), Some(&bob.token))
        .await;
    assert_eq!(name, json!({ "name": "Private" }));
    let (_, name_event) = server
        .get(
            &format!("{base}/state/m.room.name?format=event"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(name_event["sender"], "@alice:test.local");
    assert_error(
        &server
            .get(&format!("{base}/state/m.room.topic/"), Some(&bob.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Bob leaves: no longer joined; he still sees the state as it was when he left.
    let (status, _) = post(&server, &bob, format!("{base}/leave"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(server.joined_rooms(&bob).await.is_empty());
    server
        .put(
            &format!("{base}/state/m.room.name/"),
            Some(&alice.token),
            json!({ "name": "Renamed" }),
        )
        .await;
    let (_, name) = server
        .get(&format!("{base}/state/m.room.name/"), Some(&bob.token))
        .await;
    assert_eq!(
        name,
        json!({ "name": "Private" }),
        "state frozen at his leave"
    );
    let (_, own) = server
        .get(
            &format!("{base}/state/m.room.member/@bob:test.local"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(own["membership"], "leave");
    assert_error(
        &server
            .get(&format!("{base}/joined_members"), Some(&bob.token))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn kick_ban_and_unban_in_a_public_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let base = format!("/_matrix/client/v3/rooms/{room}");
    let send = |txn: &str| format!("{base}/send/m.room.message/{txn}");
    let hello = json!({ "msgtype": "m.text", "body": "hi" });

    assert_eq!(
        post(&server, &bob, format!("{base}/join"), json!({}))
            .await
            .0,
        StatusCode::OK,
        "public: anyone may join"
    );
    assert_eq!(
        server
            .put(&send("b1"), Some(&bob.token), hello.clone())
            .await
            .0,
        StatusCode::OK
    );
    // Bob has no power to kick Alice.
    assert_error(
        &post(
            &server,
            &bob,
            format!("{base}/kick"),
            json!({ "user_id": "@alice:test.local" }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    let (status, _) = post(
        &server,
        &alice,
        format!("{base}/kick"),
        json!({ "user_id": "@bob:test.local", "reason": "calm down" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &server
            .put(&send("b2"), Some(&bob.token), hello.clone())
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &post(
            &server,
            &alice,
            format!("{base}/kick"),
            json!({ "user_id": "@bob:test.local" }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    let (status, _) = post(
        &server,
        &alice,
        format!("{base}/ban"),
        json!({ "user_id": "@bob:test.local" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &post(&server, &bob, format!("{base}/join"), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, _) = post(
        &server,
        &alice,
        format!("{base}/unban"),
        json!({ "user_id": "@bob:test.local" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &post(
            &server,
            &alice,
            format!("{base}/unban"),
            json!({ "user_id": "@bob:test.local" }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(
        post(&server, &bob, format!("{base}/join"), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(server.joined_rooms(&bob).await, vec![room]);
}

#[tokio::test]
async fn membership_refusals() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let base = format!("/_matrix/client/v3/rooms/{room}");
    assert_error(
        &post(
            &server,
            &alice,
            "/_matrix/client/v3/rooms/!unknown:test.local/join".into(),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &post(
            &server,
            &alice,
            "/_matrix/client/v3/join/%23lounge:test.local".into(),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &post(
            &server,
            &alice,
            format!("{base}/invite"),
            json!({ "user_id": "@nobody:test.local" }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &post(
            &server,
            &alice,
            format!("{base}/invite"),
            json!({ "user_id": "@x:elsewhere.org" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    assert_error(
        &post(&server, &alice, format!("{base}/invite"), json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &server.post(&format!("{base}/leave"), None, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn an_empty_body_counts_as_no_fields() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    // As matrix-nio sends it: POST with no body at all.
    let response = server
        .http
        .post(format!("{}/_matrix/client/v3/join/{room}", server.base))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Where a field is required, an empty body names it.
    let response = server
        .http
        .post(format!(
            "{}/_matrix/client/v3/rooms/{room}/invite",
            server.base
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap()["errcode"],
        "M_BAD_JSON"
    );
}

/// `GET /mutual_rooms` (v1.19) and its unstable path: the rooms both users are joined to, a
/// page at a time; asking about oneself is 400; an unknown user shares nothing.
#[tokio::test]
async fn mutual_rooms_lists_rooms_both_users_joined() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let mut shared = Vec::new();
    for _ in 0..3 {
        let room = server
            .create_room(&alice, json!({ "preset": "public_chat" }))
            .await;
        server.join(&bob, &room).await;
        shared.push(room);
    }
    // Alice alone, and a room Bob left.
    server.create_room(&alice, json!({})).await;
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", shared[2]),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    shared.truncate(2);
    shared.sort();
    let path = |user: &str| format!("/_matrix/client/v1/mutual_rooms?user_id={user}");
    let (status, body) = server.get(&path(&bob.user_id), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "joined": shared, "count": 2 }));
    let unstable = server
        .get(
            &format!(
                "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms?user_id={}",
                alice.user_id
            ),
            Some(&bob.token),
        )
        .await;
    assert_eq!(unstable, (StatusCode::OK, json!({ "joined": shared })));
    let nobody = server
        .get(&path("@nobody:test.local"), Some(&alice.token))
        .await;
    assert_eq!(nobody.1, json!({ "joined": [], "count": 0 }));
    assert_error(
        &server.get(&path(&alice.user_id), Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .get(
                &format!("{}&from=junk", path(&bob.user_id)),
                Some(&alice.token),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let missing = server
        .get("/_matrix/client/v1/mutual_rooms", Some(&alice.token))
        .await;
    assert_eq!(missing.0, StatusCode::BAD_REQUEST, "{}", missing.1);
}

/// Invite blocking (spec v1.18, MSC4380): with `m.invite_permission_config` set to block,
/// `/invite`, an invite sent as state and `/createRoom` with the user among its invitees are
/// refused with 403 `M_INVITE_BLOCKED` (the room is then not created), invites received
/// before are left out of `/sync` and sliding sync, and other users are invited as before.
/// Any other `default_action` lets invites through, and the hidden invite comes back.
#[tokio::test]
async fn blocked_invites_are_refused_and_hidden() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let carol = server.register("carol", "carol-password-1").await;
    let earlier = server
        .create_room(&alice, json!({ "invite": [bob.user_id] }))
        .await;
    let config = |content: Value| {
        let (server, bob) = (&server, &bob);
        async move {
            let (status, body) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/user/{}/account_data/m.invite_permission_config",
                        bob.user_id
                    ),
                    Some(&bob.token),
                    content,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let sliding_rooms = || {
        let (server, bob) = (&server, &bob);
        async move {
            let (status, body) = server
                .post(
                    "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
                    Some(&bob.token),
                    json!({ "lists": { "all": { "ranges": [[0, 20]], "timeline_limit": 1 } } }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let sync = server.get_ok("/_matrix/client/v3/sync", &bob).await;
    assert!(sync["rooms"]["invite"][&earlier].is_object(), "{sync}");

    config(json!({ "default_action": "block" })).await;
    // The invite received before: out of /sync and sliding sync.
    let sync = server.get_ok("/_matrix/client/v3/sync", &bob).await;
    assert!(sync["rooms"]["invite"].get(&earlier).is_none(), "{sync}");
    let sliding = sliding_rooms().await;
    assert!(sliding["rooms"].get(&earlier).is_none(), "{sliding}");
    assert_eq!(sliding["lists"]["all"]["count"], 0, "{sliding}");

    // New invites, by every endpoint: refused.
    let room = server.create_room(&alice, json!({})).await;
    let refused = post(
        &server,
        &alice,
        format!("/_matrix/client/v3/rooms/{room}/invite"),
        json!({ "user_id": bob.user_id }),
    )
    .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_INVITE_BLOCKED");
    let refused = server
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                bob.user_id
            ),
            Some(&alice.token),
            json!({ "membership": "invite" }),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_INVITE_BLOCKED");
    let joined_before = server
        .get_ok("/_matrix/client/v3/joined_rooms", &alice)
        .await;
    let refused = post(
        &server,
        &alice,
        "/_matrix/client/v3/createRoom".to_owned(),
        json!({ "invite": [carol.user_id, bob.user_id], "is_direct": true }),
    )
    .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_INVITE_BLOCKED");
    let joined_after = server
        .get_ok("/_matrix/client/v3/joined_rooms", &alice)
        .await;
    assert_eq!(joined_before, joined_after, "no room was created");
    let members = server
        .get_ok(&format!("/_matrix/client/v3/rooms/{room}/members"), &alice)
        .await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 1, "{members}");
    // Carol, who blocks nothing, is invited as before.
    let invited = post(
        &server,
        &alice,
        format!("/_matrix/client/v3/rooms/{room}/invite"),
        json!({ "user_id": carol.user_id }),
    )
    .await;
    assert_eq!(invited.0, StatusCode::OK, "{}", invited.1);

    // Any other value lets invites through; the earlier invite is listed again.
    for content in [
        json!({ "default_action": "allow" }),
        json!({ "default_action": 7 }),
        json!({}),
    ] {
        config(content.clone()).await;
        let sync = server.get_ok("/_matrix/client/v3/sync", &bob).await;
        assert!(
            sync["rooms"]["invite"][&earlier].is_object(),
            "{content}: {sync}"
        );
    }
    let sliding = sliding_rooms().await;
    assert!(sliding["rooms"][&earlier].is_object(), "{sliding}");
    let invited = post(
        &server,
        &alice,
        format!("/_matrix/client/v3/rooms/{room}/invite"),
        json!({ "user_id": bob.user_id }),
    )
    .await;
    assert_eq!(invited.0, StatusCode::OK, "{}", invited.1);
}
