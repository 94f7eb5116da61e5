//! The admin room: made at the first start, the admins invited (the first account at its
//! registration, others when made admins) and removed when no longer admins; `!admin …`
//! commands answered by `@culvert:<server>` as notices replying to them, for admins only.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, urlencode};

/// Sends `line` into `room` as `who`; returns the command's event ID.
async fn send(server: &TestServer, who: &Session, room: &str, line: &str) -> String {
    let txn = format!("t{}", rand_suffix());
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, body) = server
        .put(
            &path,
            Some(&who.token),
            json!({ "msgtype": "m.text", "body": line }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Sends a command and waits for the server's answer to it (its content).
async fn command(server: &TestServer, who: &Session, room: &str, line: &str) -> Value {
    let event_id = send(server, who, room, line).await;
    let server_user = format!("@culvert:{}", crate::common::SERVER_NAME);
    let found = crate::common::poll(
        crate::common::PATIENCE,
        std::time::Duration::from_millis(50),
        || {
            let event_id = event_id.clone();
            let server_user = server_user.clone();
            async move {
                let (_, body) = server
                    .get(
                        &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"),
                        Some(&who.token),
                    )
                    .await;
                body["chunk"]
                    .as_array()?
                    .iter()
                    .find(|e| {
                        e["sender"] == server_user.as_str()
                            && e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
                                == event_id.as_str()
                    })
                    .map(|e| e["content"].clone())
            }
        },
    )
    .await;
    found.unwrap_or_else(|| panic!("no answer to {line:?}"))
}

fn body(answer: &Value) -> &str {
    answer["body"].as_str().expect("a body")
}

async fn membership(server: &TestServer, room: &str, user: &Session) -> Option<String> {
    let admin = server.services();
    let room_id = ruma::RoomId::parse(room).unwrap();
    let user_id = ruma::UserId::parse(&user.user_id).unwrap();
    admin
        .members
        .membership(&room_id, &user_id)
        .unwrap()
        .map(|m| m.membership.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_command_the_server_from_the_admin_room() {
    let server =
        TestServer::start_with("rate_limits = { enabled = false }\nadmin_room = true").await;
    // The server's own user is no account anyone may take.
    let (status, refused) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "culvert", "password": "some-password-1" }),
        )
        .await;
    assert_error(&(status, refused), StatusCode::BAD_REQUEST, "M_USER_IN_USE");

    // The first account is the admin, invited at its registration.
    let alice = server.register("alice", "alice-password-1").await;
    let alias = urlencode(&format!("#admins:{}", crate::common::SERVER_NAME));
    let room = server
        .get_ok(
            &format!("/_matrix/client/v3/directory/room/{alias}"),
            &alice,
        )
        .await["room_id"]
        .as_str()
        .expect("the admin room's alias")
        .to_owned();
    let invited = server
        .sync_until(&alice, "the admin room's invite", |body| {
            body["rooms"]["invite"][room.as_str()].is_object()
        })
        .await;
    assert!(invited["rooms"]["invite"][room.as_str()].is_object());
    server.join(&alice, &room).await;
    let create = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.create/"),
            &alice,
        )
        .await;
    assert_eq!(create["m.federate"], false, "the admin room stays here");
    let guests = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.guest_access/"),
            &alice,
        )
        .await;
    assert_eq!(guests["guest_access"], "forbidden");
    let member = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@culvert:test.local"),
            &alice,
        )
        .await;
    assert_eq!(member["displayname"], "culvert", "{member}");

    // Help, with and without `help`, and clap's word on a wrong command.
    let help = command(&server, &alice, &room, "!admin help").await;
    assert_eq!(help["msgtype"], "m.notice");
    for word in ["users", "rooms", "tokens", "reports"] {
        assert!(body(&help).contains(word), "{help}");
    }
    let users_help = command(&server, &alice, &room, "!admin help users").await;
    assert!(body(&users_help).contains("reset-password"), "{users_help}");
    let wrong = command(&server, &alice, &room, "!admin users frobnicate").await;
    assert!(body(&wrong).contains("frobnicate"), "{wrong}");

    // Accounts: created with a given and a random password, listed, reset, locked.
    let created = command(
        &server,
        &alice,
        &room,
        "!admin users create bob --password bob-password-1",
    )
    .await;
    assert!(body(&created).contains("@bob:"), "{created}");
    let bob = server.login_ok("bob", "bob-password-1").await;
    let random = command(&server, &alice, &room, "!admin users create carol").await;
    let password = body(&random)
        .rsplit(' ')
        .next()
        .expect("the generated password")
        .to_owned();
    let carol = server.login_ok("carol", &password).await;
    let taken = command(&server, &alice, &room, "!admin users create bob").await;
    assert!(body(&taken).starts_with("Failed:"), "{taken}");
    let list = command(&server, &alice, &room, "!admin users list").await;
    assert!(body(&list).starts_with("3 accounts:"), "{list}");
    for user in [&alice, &bob, &carol] {
        assert!(body(&list).contains(&user.user_id), "{list}");
    }
    assert!(
        list["formatted_body"].as_str().unwrap().contains("<table>"),
        "{list}"
    );
    let reset = command(
        &server,
        &alice,
        &room,
        "!admin users reset-password carol --password carol-password-2",
    )
    .await;
    assert!(body(&reset).contains("changed"), "{reset}");
    server.assert_token_dead(&carol.token).await;
    let carol = server.login_ok("carol", "carol-password-2").await;
    command(&server, &alice, &room, "!admin users lock carol").await;
    let (status, locked) = server
        .get("/_matrix/client/v3/account/whoami", Some(&carol.token))
        .await;
    assert_error(&(status, locked), StatusCode::UNAUTHORIZED, "M_USER_LOCKED");
    command(&server, &alice, &room, "!admin users unlock carol").await;
    server.assert_token_alive(&carol.token).await;

    // A new admin is invited; once no longer one, removed.
    command(&server, &alice, &room, "!admin users make-admin bob").await;
    assert_eq!(
        membership(&server, &room, &bob).await.as_deref(),
        Some("invite")
    );
    server.join(&bob, &room).await;
    let self_demotion = command(&server, &bob, &room, "!admin users revoke-admin bob").await;
    assert!(
        body(&self_demotion).starts_with("Failed:"),
        "{self_demotion}"
    );
    command(
        &server,
        &alice,
        &room,
        &format!(
            "!admin users revoke-admin @bob:{}",
            crate::common::SERVER_NAME
        ),
    )
    .await;
    assert_eq!(
        membership(&server, &room, &bob).await.as_deref(),
        Some("leave")
    );
    assert!(
        !server
            .services()
            .users
            .get(&ruma::UserId::parse(&bob.user_id).unwrap())
            .unwrap()
            .unwrap()
            .admin
    );

    // Someone who is no admin gets no service even inside the room.
    let (status, body_) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body_}");
    server.join(&carol, &room).await;
    let refused = command(&server, &carol, &room, "!admin users list").await;
    assert!(
        body(&refused).contains("Only the server's admins"),
        "{refused}"
    );
    // Messages that are no commands get no answer.
    send(&server, &alice, &room, "hello, admins").await;

    // Rooms: listed, described, blocked.
    let public = server
        .create_room(&bob, json!({ "preset": "public_chat", "name": "Lobby" }))
        .await;
    let rooms = command(&server, &alice, &room, "!admin rooms list").await;
    assert!(
        body(&rooms).contains(&public) && body(&rooms).contains("Lobby"),
        "{rooms}"
    );
    let info = command(
        &server,
        &alice,
        &room,
        &format!("!admin rooms info {public}"),
    )
    .await;
    assert!(body(&info).contains("Lobby"), "{info}");
    let unknown = command(
        &server,
        &alice,
        &room,
        "!admin rooms info #nowhere:test.local",
    )
    .await;
    assert!(body(&unknown).starts_with("Failed:"), "{unknown}");
    command(
        &server,
        &alice,
        &room,
        &format!("!admin rooms block {public}"),
    )
    .await;
    let (status, blocked) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{public}/join"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_error(&(status, blocked), StatusCode::FORBIDDEN, "M_FORBIDDEN");
    command(
        &server,
        &alice,
        &room,
        &format!("!admin rooms unblock {public}"),
    )
    .await;
    server.join(&alice, &public).await;

    // Deleting a room: its members leave, it is purged; the admin room itself cannot go.
    let doomed = server
        .create_room(
            &bob,
            json!({ "preset": "public_chat", "room_alias_name": "doomed" }),
        )
        .await;
    let deleted = command(
        &server,
        &alice,
        &room,
        "!admin rooms delete #doomed:test.local",
    )
    .await;
    assert!(
        body(&deleted).contains("1 local members left") && body(&deleted).contains("purged"),
        "{deleted}"
    );
    assert!(
        server
            .services()
            .timeline
            .room(&ruma::RoomId::parse(&doomed).unwrap())
            .unwrap()
            .is_none()
    );
    let kept = command(
        &server,
        &alice,
        &room,
        &format!("!admin rooms delete {room}"),
    )
    .await;
    assert!(body(&kept).starts_with("Failed:"), "{kept}");

    // Shadow-banning.
    let banned = command(&server, &alice, &room, "!admin users shadow-ban carol").await;
    assert!(body(&banned).contains("shadow-banned"), "{banned}");
    let list = command(&server, &alice, &room, "!admin users list").await;
    assert!(body(&list).contains("shadow-banned"), "{list}");
    command(&server, &alice, &room, "!admin users unban carol").await;
    assert!(
        !server
            .services()
            .users
            .restriction(&ruma::UserId::parse(&carol.user_id).unwrap())
            .shadow_banned
    );

    // Media: an upload quarantined (no longer served), listed, deleted.
    let (host, media_id) = crate::media::upload(
        &server,
        &bob,
        b"picture".to_vec(),
        "text/plain",
        Some("pic.txt"),
    )
    .await;
    let mxc = format!("mxc://{host}/{media_id}");
    let quarantined = command(
        &server,
        &alice,
        &room,
        &format!("!admin media quarantine {mxc}"),
    )
    .await;
    assert!(
        body(&quarantined).starts_with("Quarantined"),
        "{quarantined}"
    );
    let download = server
        .get(
            &format!("/_matrix/client/v1/media/download/{host}/{media_id}"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(download.0, StatusCode::NOT_FOUND);
    let of = command(&server, &alice, &room, "!admin media of bob").await;
    assert!(
        body(&of).contains(&mxc) && body(&of).contains("quarantined"),
        "{of}"
    );
    let deleted = command(
        &server,
        &alice,
        &room,
        &format!("!admin media delete {mxc}"),
    )
    .await;
    assert!(body(&deleted).starts_with("Deleted"), "{deleted}");
    let again = command(
        &server,
        &alice,
        &room,
        &format!("!admin media delete {mxc}"),
    )
    .await;
    assert!(body(&again).starts_with("Failed:"), "{again}");

    // Registration tokens and reports.
    let token = command(&server, &alice, &room, "!admin tokens create abc --uses 2").await;
    assert!(body(&token).contains("abc"), "{token}");
    let tokens = command(&server, &alice, &room, "!admin tokens list").await;
    assert!(body(&tokens).contains("abc"), "{tokens}");
    command(&server, &alice, &room, "!admin tokens delete abc").await;
    let (status, reported) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{public}/report"),
            Some(&bob.token),
            json!({ "reason": "too loud" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reported}");
    let reports = command(&server, &alice, &room, "!admin reports").await;
    assert!(body(&reports).contains("too loud"), "{reports}");
    let backup = command(&server, &alice, &room, "!admin backup").await;
    assert!(body(&backup).contains("no backup directory"), "{backup}");
    let stats = command(&server, &alice, &room, "!admin server").await;
    assert!(body(&stats).contains("active accounts"), "{stats}");

    // Deactivation, through the room, leaves the admin room too for an admin.
    command(&server, &alice, &room, "!admin users make-admin carol").await;
    command(&server, &alice, &room, "!admin users deactivate carol").await;
    assert_eq!(
        membership(&server, &room, &carol).await.as_deref(),
        Some("leave")
    );

    // Every command answered is gone from the queue.
    crate::common::eventually("an empty command queue", || async {
        server
            .services()
            .store
            .scan_prefix(culvert::store::Cf::AdminCommands, b"")
            .count()
            == 0
    })
    .await;

    // After a restart the same room is used, and still answers.
    let server = server.restart().await;
    let again = command(&server, &alice, &room, "!admin server").await;
    assert!(body(&again).contains("active accounts"), "{again}");
    let (_, rooms) = server
        .services()
        .admin_list_rooms(
            Some("Admins"),
            culvert::service::admin::RoomOrder::Name,
            false,
            0,
            10,
        )
        .unwrap();
    assert_eq!(rooms, 1, "one admin room");
}

#[tokio::test]
async fn no_admin_room_when_turned_off() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password-1").await;
    let alias = urlencode(&format!("#admins:{}", crate::common::SERVER_NAME));
    let result = server
        .get(
            &format!("/_matrix/client/v3/directory/room/{alias}"),
            Some(&alice.token),
        )
        .await;
    assert_error(&result, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}
