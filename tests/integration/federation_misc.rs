//! Federation between two culverts, the remaining pieces: knocking on a room of another server,
//! restricted joins vouched for by the resident server, the space hierarchy over federation,
//! other servers' public room directories, and invites sent as state or blocked.

use reqwest::StatusCode;
use ruma::{RoomId, ServerName, api::federation::space::get_hierarchy};
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, urlencode};

fn name(server: &TestServer) -> ruma::OwnedServerName {
    ServerName::parse(server.server_name()).unwrap()
}

/// The membership of `user` in `room` as `server` sees it, asked by `who`.
async fn membership_on(server: &TestServer, who: &Session, room: &str, user: &str) -> Value {
    let (_, body) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}"),
            Some(&who.token),
        )
        .await;
    body["membership"].clone()
}

/// Waits until `server` says `user` has the membership `want` in `room` (asked as `who`).
async fn wait_membership(server: &TestServer, who: &Session, room: &str, user: &str, want: &str) {
    let what = format!("{user} to become {want} in {room}");
    crate::common::eventually(&what, || async {
        membership_on(server, who, room, user).await == want
    })
    .await;
}

async fn knock(server: &TestServer, who: &Session, room: &str, via: &str) -> (StatusCode, Value) {
    server
        .post(
            &format!("/_matrix/client/v3/knock/{}?via={via}", urlencode(room)),
            Some(&who.token),
            json!({ "reason": "let me in" }),
        )
        .await
}

/// A room on A with the join rule `knock`.
async fn knock_room(a: &TestServer, alice: &Session, version: &str) -> String {
    a.create_room(
        alice,
        json!({
            "preset": "private_chat",
            "room_version": version,
            "name": "Knock here",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": "knock" }
            }]
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_knocks_on_a_room_of_another_culvert_and_is_let_in() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = knock_room(&a, &alice, "12").await;

    let (status, body) = knock(&b, &bob, &room, &a.server_name()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);

    // A has the knock, with its reason.
    assert_eq!(
        membership_on(&a, &alice, &room, &bob.user_id).await,
        "knock"
    );

    // Bob's /sync on B shows the knock with the room's stripped state.
    let sync = b.get_ok("/_matrix/client/v3/sync?timeout=0", &bob).await;
    let events = sync["rooms"]["knock"][&room]["knock_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no knock in {sync}"))
        .clone();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock here"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id.as_str()
            && e["content"]["membership"] == "knock"),
        "{events:?}"
    );

    // Alice lets him in: an invite after the knock, then Bob joins from B.
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = b.get_ok("/_matrix/client/v3/sync?timeout=0", &bob).await;
    assert!(sync["rooms"]["invite"][&room].is_object(), "{sync}");
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{room}"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(b.joined_rooms(&bob).await.contains(&room));
    wait_membership(&a, &alice, &room, &bob.user_id, "join").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knocks_the_room_does_not_allow_are_refused_and_a_knock_can_be_withdrawn() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let via = a.server_name();

    // A public room takes joins, not knocks.
    let public = a
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let result = knock(&b, &bob, &public, &via).await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Room version 6 has no knocking at all.
    let old = knock_room(&a, &alice, "6").await;
    let result = knock(&b, &bob, &old, &via).await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // A room nobody knows.
    let unknown = format!("!nothing:{via}");
    let result = knock(&b, &bob, &unknown, &via).await;
    assert_error(&result, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Nothing of these reached B's /sync.
    let sync = b.get_ok("/_matrix/client/v3/sync?timeout=0", &bob).await;
    assert!(
        sync["rooms"]["knock"]
            .as_object()
            .is_none_or(|k| k.is_empty()),
        "{sync}"
    );

    // A knock, then withdrawn: A sees the leave.
    let room = knock_room(&a, &alice, "11").await;
    let (status, body) = knock(&b, &bob, &room, &via).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_membership(&a, &alice, &room, &bob.user_id, "leave").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_rooms_let_in_members_of_the_allowed_room_only() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let carol = b.register("carol", "carol-password-1").await;
    let via = a.server_name();
    let space = a
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let restricted = a
        .create_room(
            &alice,
            json!({
                "preset": "private_chat",
                "room_version": "10",
                "initial_state": [{
                    "type": "m.room.join_rules", "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{ "type": "m.room_membership", "room_id": space }]
                    }
                }]
            }),
        )
        .await;

    // A local user of A in the space joins too (A vouches through Alice); one who is not
    // is refused.
    let dave = a.register("dave", "dave-password-1").await;
    let erin = a.register("erin", "erin-password-1").await;
    a.join(&dave, &space).await;
    a.join(&dave, &restricted).await;
    let result = a
        .post(
            &format!("/_matrix/client/v3/rooms/{restricted}/join"),
            Some(&erin.token),
            json!({}),
        )
        .await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let member = a
        .get_ok(
            &format!(
                "/_matrix/client/v3/rooms/{restricted}/state/m.room.member/{}",
                dave.user_id
            ),
            &alice,
        )
        .await;
    assert_eq!(member["join_authorised_via_users_server"], alice.user_id);

    // Carol is in no allowed room: refused.
    let result = b
        .post(
            &format!("/_matrix/client/v3/join/{restricted}?via={via}"),
            Some(&carol.token),
            json!({}),
        )
        .await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Bob joins the space, then the restricted room.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{space}?via={via}"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{restricted}?via={via}"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(b.joined_rooms(&bob).await.contains(&restricted));

    // The join names Alice as the user who let him in, and carries both servers' signatures.
    let member = a
        .get_ok(
            &format!(
                "/_matrix/client/v3/rooms/{restricted}/state/m.room.member/{}",
                bob.user_id
            ),
            &alice,
        )
        .await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["join_authorised_via_users_server"], alice.user_id);
    let state = a
        .services()
        .timeline
        .current_state(&RoomId::parse(&restricted).unwrap())
        .unwrap();
    let join_id = &state[&("m.room.member".to_owned(), bob.user_id.clone())];
    let pdu = a.services().timeline.pdu_json(join_id).unwrap().unwrap();
    let signatures = serde_json::to_value(&pdu["signatures"]).unwrap();
    assert!(signatures[a.server_name()].is_object(), "{signatures}");
    assert!(signatures[b.server_name()].is_object(), "{signatures}");
}

/// A space on A with a public child (suggested) and an invite-only child.
async fn space_with_children(a: &TestServer, alice: &Session) -> (String, String, String) {
    let space = a
        .create_room(
            alice,
            json!({
                "preset": "public_chat",
                "name": "The space",
                "creation_content": { "type": "m.space" }
            }),
        )
        .await;
    let open = a
        .create_room(alice, json!({ "preset": "public_chat", "name": "Open" }))
        .await;
    let closed = a
        .create_room(alice, json!({ "preset": "private_chat", "name": "Closed" }))
        .await;
    for (child, suggested) in [(&open, true), (&closed, false)] {
        let (status, body) = a
            .put(
                &format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}"),
                Some(&alice.token),
                json!({ "via": [a.server_name()], "suggested": suggested }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    (space, open, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_server_reads_a_space_hierarchy() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let (space, open, closed) = space_with_children(&a, &alice).await;

    let response = b
        .services()
        .send_federation_request(
            &name(&a),
            get_hierarchy::v1::Request::new(RoomId::parse(&space).unwrap()),
        )
        .await
        .expect("the hierarchy");
    let parent = serde_json::to_value(&response.room).unwrap();
    assert_eq!(parent["room_id"], space);
    assert_eq!(parent["name"], "The space");
    assert_eq!(parent["room_type"], "m.space");
    assert_eq!(parent["children_state"].as_array().unwrap().len(), 2);
    let children: Vec<String> = response
        .children
        .iter()
        .map(|c| c.room_id.to_string())
        .collect();
    assert_eq!(children, vec![open.clone()]);
    let inaccessible: Vec<String> = response
        .inaccessible_children
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(inaccessible, vec![closed.clone()]);

    // Suggested children only: the closed one is not even listed.
    let mut request = get_hierarchy::v1::Request::new(RoomId::parse(&space).unwrap());
    request.suggested_only = true;
    let response = b
        .services()
        .send_federation_request(&name(&a), request)
        .await
        .expect("the hierarchy");
    let parent = serde_json::to_value(&response.room).unwrap();
    assert_eq!(parent["children_state"].as_array().unwrap().len(), 1);
    assert!(response.inaccessible_children.is_empty());

    // An invite-only room B takes no part in, and a room nobody knows: 404.
    for room in [closed, format!("!nothing:{}", a.server_name())] {
        let error = b
            .services()
            .send_federation_request(
                &name(&a),
                get_hierarchy::v1::Request::new(RoomId::parse(&room).unwrap()),
            )
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(StatusCode::NOT_FOUND), "{room}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_list_another_servers_public_rooms() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let listed = a
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "visibility": "public", "name": "Listed on A" }),
        )
        .await;
    a.create_room(
        &alice,
        json!({ "preset": "public_chat", "name": "Unlisted" }),
    )
    .await;

    // GET on B, naming A.
    let body = b
        .get_ok(
            &format!("/_matrix/client/v3/publicRooms?server={}", a.server_name()),
            &bob,
        )
        .await;
    let chunk = body["chunk"].as_array().expect("chunk");
    assert_eq!(chunk.len(), 1, "{body}");
    assert_eq!(chunk[0]["room_id"], listed);
    assert_eq!(chunk[0]["name"], "Listed on A");
    assert_eq!(body["total_room_count_estimate"], 1);

    // POST with a filter.
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", a.server_name()),
            Some(&bob.token),
            json!({ "filter": { "generic_search_term": "listed on" }, "limit": 5 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["chunk"].as_array().unwrap().len(), 1, "{body}");
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", a.server_name()),
            Some(&bob.token),
            json!({ "filter": { "generic_search_term": "no such room" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["chunk"].as_array().unwrap().is_empty(), "{body}");

    // B's own directory is still B's.
    let own = b
        .get_ok(
            &format!("/_matrix/client/v3/publicRooms?server={}", b.server_name()),
            &bob,
        )
        .await;
    assert!(own["chunk"].as_array().unwrap().is_empty(), "{own}");

    // A server nobody answers at: 502.
    let (status, body) = b
        .get(
            "/_matrix/client/v3/publicRooms?server=localhost:1",
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_tokens_prove_who_a_user_is_for_an_hour() {
    let a = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = a.register("bob", "bob-password-1").await;
    let path = format!(
        "/_matrix/client/v3/user/{}/openid/request_token",
        urlencode(&alice.user_id)
    );
    let (status, body) = a.post(&path, Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], a.server_name());
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(token, alice.token);

    // A third party (no X-Matrix signature) asks who it belongs to.
    let info = format!("/_matrix/federation/v1/openid/userinfo?access_token={token}");
    let (status, body) = a.get(&info, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], alice.user_id);

    // Someone else's token, no token, an unknown token, and a token that is not an OpenID one.
    let result = a.post(&path, Some(&bob.token), json!({})).await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let result = a.post(&path, None, json!({})).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    for bad in ["nonsense", alice.token.as_str()] {
        let result = a
            .get(
                &format!("/_matrix/federation/v1/openid/userinfo?access_token={bad}"),
                None,
            )
            .await;
        assert_error(&result, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    }
    let result = a.get("/_matrix/federation/v1/openid/userinfo", None).await;
    assert_eq!(result.0, StatusCode::BAD_REQUEST, "{}", result.1);

    // An expired token is refused (and forgotten).
    let mut batch = culvert::store::Batch::new();
    batch.put(
        culvert::store::Cf::OpenidTokens,
        b"expired-token".as_slice(),
        serde_json::to_vec(&json!({ "user_id": alice.user_id, "expires_at": 1 })).unwrap(),
    );
    a.services().store.write(batch).unwrap();
    let result = a
        .get(
            "/_matrix/federation/v1/openid/userinfo?access_token=expired-token",
            None,
        )
        .await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert!(
        a.services()
            .store
            .get(culvert::store::Cf::OpenidTokens, b"expired-token")
            .unwrap()
            .is_none()
    );
}

/// Invites across servers as state events and against invite blocking (MSC4380): an invite
/// sent with `PUT /state/m.room.member` reaches the invitee's server; B refuses invites to a
/// user who blocks them, A's client hears 403 `M_INVITE_BLOCKED` (from `/invite`, `/state`
/// and `/createRoom`), and the refused invite is withdrawn rather than left in the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_invites_as_state_and_blocked_invites() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let carol = b.register("carol", "carol-password-1").await;
    let room = a
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let member_path =
        |user: &str| format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}");

    // Carol is invited through /state: B hears of it.
    let (status, body) = a
        .put(
            &member_path(&carol.user_id),
            Some(&alice.token),
            json!({ "membership": "invite", "reason": "as state" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    b.sync_until(&carol, "the invite sent as state", |sync| {
        sync["rooms"]["invite"][&room].is_object()
    })
    .await;

    // Bob blocks invites.
    let (status, body) = b
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.invite_permission_config",
                bob.user_id
            ),
            Some(&bob.token),
            json!({ "default_action": "block" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refused = a
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_INVITE_BLOCKED");
    // Withdrawn: the room does not show Bob as invited.
    assert_eq!(
        membership_on(&a, &alice, &room, &bob.user_id).await,
        "leave"
    );
    let refused = a
        .put(
            &member_path(&bob.user_id),
            Some(&alice.token),
            json!({ "membership": "invite" }),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_INVITE_BLOCKED");
    let refused = a
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "invite": [bob.user_id], "is_direct": true }),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_INVITE_BLOCKED");
    let sync = b.get_ok("/_matrix/client/v3/sync?timeout=0", &bob).await;
    assert!(
        sync["rooms"]["invite"]
            .as_object()
            .is_none_or(|invites| invites.is_empty()),
        "{sync}"
    );
}

/// A server that speaks to us is up: when sending to it had been failing (here: recorded as
/// failing, with a ten-minute back-off), its next signed request ends the back-off at once,
/// so what is queued for it goes now rather than when the back-off runs out — after a
/// restart or a crash, a server's peers catch it up as soon as it talks to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearing_from_a_failing_destination_ends_its_back_off() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = crate::federation::shared_room(&a, &b).await;
    let destinations = &a.services().federation.destinations;
    destinations.failed(&name(&b), std::time::Duration::from_secs(600));
    assert!(destinations.state(&name(&b)).unwrap().failure_ts.is_some());
    b.say(&bob, &room, "back again").await;
    a.wait_for_message(&alice, &room, "back again").await;
    let state = destinations.state(&name(&b)).unwrap();
    assert!(state.failure_ts.is_none(), "{state:?}");
    assert_eq!(state.retry_interval_ms, 0);
}
