//! Synapse's admin API on culvert: `tests/clients/admin_api.py`, a script that does what a web
//! admin UI's API layer does, with Python's `requests` (an HTTP client of its own), against
//! culvert here and against a real Synapse in `synapse.rs` — the same assertions pass on both.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

/// Runs the admin script against a server; `None` when no Python with `requests` is there
/// (and that is allowed).
pub async fn run_admin_script(base: &str, server_name: &str, admin: &[&str]) -> Option<()> {
    let mut args = vec![base, server_name];
    args.extend_from_slice(admin);
    crate::common::run_python_client("requests", "admin_api.py", &args, "all checks passed")
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_admin_script_manages_accounts_through_the_synapse_admin_api() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    // The first account is the server's admin.
    let root = server.register("root", "root-password-1").await;
    run_admin_script(
        &server.base,
        &server.server_name(),
        &["--admin-token", &root.token],
    )
    .await;
}

/// What the script cannot see from outside: bad input gets Matrix errors, never a 500, and an
/// admin's changes are in effect at once for the client API.
#[tokio::test]
async fn admin_api_bad_input_and_effects() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let root = server.register("root", "root-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let users = "/_synapse/admin/v2/users";
    for (path, what) in [
        (format!("{users}?limit=-1"), "a negative limit"),
        (format!("{users}?from=x"), "a from that is no number"),
        (format!("{users}?order_by=shoe_size"), "an unknown order"),
        (format!("{users}?dir=sideways"), "an unknown direction"),
        (format!("{users}?admins=maybe"), "a flag that is no boolean"),
        (format!("{users}/not-a-user-id"), "a malformed user ID"),
        (
            "/_synapse/admin/v1/username_available".to_owned(),
            "no user name",
        ),
    ] {
        let (status, body) = server.get(&path, Some(&root.token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(body["errcode"].is_string(), "{what}: {body}");
    }
    // Bodies: not JSON, the wrong shape, unsupported third-party identifiers, a bad avatar.
    let bob_path = format!("{users}/{}", bob.user_id);
    let response = reqwest::Client::new()
        .put(format!("{}{bob_path}", server.base))
        .bearer_auth(&root.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_error(&(status, body), StatusCode::BAD_REQUEST, "M_NOT_JSON");
    for body in [
        json!({ "threepids": [{ "medium": "email", "address": "b@example.org" }] }),
        json!({ "avatar_url": "https://example.org/a.png" }),
        json!({ "user_type": "wizard" }),
        json!({ "locked": "very" }),
    ] {
        let (status, answer) = server.put(&bob_path, Some(&root.token), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    // An admin may not demote themself.
    let (status, body) = server
        .put(
            &format!("/_synapse/admin/v1/users/{}/admin", root.user_id),
            Some(&root.token),
            json!({ "admin": false }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A reactivation needs a password.
    let (status, _) = server
        .post(
            &format!("/_synapse/admin/v1/deactivate/{}", bob.user_id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .put(
            &bob_path,
            Some(&root.token),
            json!({ "deactivated": false }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A user type, set and cleared.
    let (_, body) = server
        .put(
            &bob_path,
            Some(&root.token),
            json!({ "user_type": "bot", "deactivated": false, "password": "bob-password-2" }),
        )
        .await;
    assert_eq!(body["user_type"], "bot", "{body}");
    assert_eq!(body["deactivated"], false, "{body}");
    let (_, body) = server
        .put(&bob_path, Some(&root.token), json!({ "user_type": null }))
        .await;
    assert_eq!(body["user_type"], json!(null), "{body}");
    // The display name an admin sets reaches the rooms the user is in.
    let bob = server.login_ok("bob", "bob-password-2").await;
    let room = server
        .create_room(&root, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let (status, _) = server
        .put(
            &bob_path,
            Some(&root.token),
            json!({ "displayname": "Robert" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, member) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{}",
                bob.user_id
            ),
            Some(&root.token),
        )
        .await;
    assert_eq!(member["displayname"], "Robert", "{member}");
    // A deactivated admin is no admin.
    let (status, _) = server
        .put(
            &format!("{users}/@second:{}", server.server_name()),
            Some(&root.token),
            json!({ "password": "second-password-1", "admin": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let second = server.login_ok("second", "second-password-1").await;
    let (status, _) = server.get(users, Some(&second.token)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post(
            &format!("/_synapse/admin/v1/deactivate/{}", second.user_id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.get(users, Some(&second.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "its tokens are gone");
}

/// Registration tokens made through the admin API open a closed server to their holders, each
/// for as many registrations as it allows, counted when the account is made.
#[tokio::test]
async fn admin_registration_tokens_let_people_register_on_a_closed_server() {
    let server = TestServer::start_with("allow_registration = false").await;
    let services = server.services();
    let owner = ruma::UserId::parse("@owner:test.local").unwrap();
    let hash = culvert::service::users::hash_password("owner-password-1").unwrap();
    services
        .users
        .create(&owner, Some(hash), true, false, |_| {})
        .await
        .unwrap();
    let owner = server.login_ok("owner", "owner-password-1").await;
    const REGISTER: &str = "/_matrix/client/v3/register";
    let closed = server
        .post(
            REGISTER,
            None,
            json!({ "username": "early", "password": "early-password-1" }),
        )
        .await;
    assert_error(&closed, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    let (status, made) = server
        .post(
            "/_synapse/admin/v1/registration_tokens/new",
            Some(&owner.token),
            json!({ "token": "family", "uses_allowed": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let register = |name: &'static str| {
        let server = &server;
        async move {
            let body = json!({ "username": name, "password": "their-password-1" });
            let (status, uia) = server.post(REGISTER, None, body.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
            assert_eq!(
                uia["flows"],
                json!([{ "stages": ["m.login.registration_token", "m.login.dummy"] }])
            );
            let mut with_token = body.clone();
            with_token["auth"] = json!({
                "type": "m.login.registration_token", "token": "family", "session": uia["session"],
            });
            let (status, answer) = server.post(REGISTER, None, with_token).await;
            if answer["completed"] != json!(["m.login.registration_token"]) {
                return (status, answer);
            }
            let mut dummy = body;
            dummy["auth"] = json!({ "type": "m.login.dummy", "session": uia["session"] });
            server.post(REGISTER, None, dummy).await
        }
    };
    let (status, body) = register("dora").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, token) = server
        .get(
            "/_synapse/admin/v1/registration_tokens/family",
            Some(&owner.token),
        )
        .await;
    assert_eq!(token["completed"], 1, "{token}");
    // Used up: registration is closed again.
    let (status, body) = server
        .post(
            REGISTER,
            None,
            json!({ "username": "eve", "password": "their-password-1" }),
        )
        .await;
    assert_error(&(status, body), StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // More uses: open again, and a wrong token is refused at its stage.
    let (status, _) = server
        .put(
            "/_synapse/admin/v1/registration_tokens/family",
            Some(&owner.token),
            json!({ "uses_allowed": 2 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, uia) = server
        .post(
            REGISTER,
            None,
            json!({ "username": "mallory", "password": "their-password-1",
                    "auth": { "type": "m.login.registration_token", "token": "guess" } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
    assert_eq!(uia["errcode"], "M_FORBIDDEN", "{uia}");
    let (status, body) = register("frank").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, token) = server
        .get(
            "/_synapse/admin/v1/registration_tokens/family",
            Some(&owner.token),
        )
        .await;
    assert_eq!(token["completed"], 2, "{token}");
    assert!(
        server
            .services()
            .users
            .exists(&ruma::UserId::parse("@frank:test.local").unwrap())
            .unwrap()
    );
}

#[tokio::test]
async fn media_admin_deletes_old_media_keeps_avatars_and_quarantines_a_users_uploads() {
    let server = TestServer::start().await;
    let root = server.register("root", "root-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let upload = |bytes: &'static [u8], name: &'static str| {
        crate::media::upload(&server, &bob, bytes.to_vec(), "text/plain", Some(name))
    };
    let (host, avatar) = upload(b"my face", "face.txt").await;
    let (_, small) = upload(b"tiny", "tiny.txt").await;
    let (_, big) = upload(b"a larger file", "big.txt").await;
    let set = server
        .put(
            &format!("/_matrix/client/v3/profile/{}/avatar_url", bob.user_id),
            Some(&bob.token),
            json!({ "avatar_url": format!("mxc://{host}/{avatar}") }),
        )
        .await;
    assert_eq!(set.0, StatusCode::OK, "{}", set.1);

    let info = server
        .get_ok(&format!("/_synapse/admin/v1/media/{host}/{big}"), &root)
        .await;
    assert_eq!(info["media_info"]["media_origin"], "local");
    assert_eq!(info["media_info"]["user_id"], bob.user_id.as_str());
    assert_eq!(info["media_info"]["media_length"], 13);
    let missing = server
        .get(
            &format!("/_synapse/admin/v1/media/{host}/nosuchmedia"),
            Some(&root.token),
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let bad = server
        .get(
            &format!("/_synapse/admin/v1/media/{host}/bad%20id"),
            Some(&root.token),
        )
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let remote = server
        .delete(
            "/_synapse/admin/v1/media/elsewhere.example/abc",
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_error(&remote, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let missing_ts = server
        .post(
            "/_synapse/admin/v1/media/delete",
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_error(&missing_ts, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");

    // Older than now and larger than 5 bytes: the big file; the avatar stays.
    let now = culvert::utils::now_millis() + 1000;
    let (status, deleted) = server
        .post(
            &format!("/_synapse/admin/v1/media/{host}/delete?before_ts={now}&size_gt=5"),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted, json!({ "deleted_media": [big], "total": 1 }));
    for kept in [&avatar, &small] {
        server
            .get_ok(&format!("/_synapse/admin/v1/media/{host}/{kept}"), &root)
            .await;
    }
    let (status, elsewhere) = server
        .post(
            &format!("/_synapse/admin/v1/media/elsewhere.example/delete?before_ts={now}"),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{elsewhere}");

    // Quarantine every upload of bob's: the two left.
    let (status, quarantined) = server
        .post(
            &format!("/_synapse/admin/v1/user/{}/media/quarantine", bob.user_id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{quarantined}");
    assert_eq!(quarantined, json!({ "num_quarantined": 2 }));
    let listed = server
        .get_ok(
            &format!("/_synapse/admin/v1/users/{}/media", bob.user_id),
            &root,
        )
        .await;
    assert!(
        listed["media"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["quarantined_by"] == root.user_id.as_str()),
        "{listed}"
    );
    let (status, all) = server
        .delete(
            &format!("/_synapse/admin/v1/users/{}/media", bob.user_id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["total"], 2, "{all}");
    let listed = server
        .get_ok(
            &format!("/_synapse/admin/v1/users/{}/media", bob.user_id),
            &root,
        )
        .await;
    assert_eq!(listed["total"], 0);
}

#[tokio::test]
async fn a_shadow_banned_account_is_answered_as_usual_and_reaches_nobody() {
    let server = TestServer::start().await;
    let root = server.register("root", "root-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let carol = server.register("carol", "carol-password-1").await;
    let dave = server.register("dave", "dave-password-1").await;
    let room = server
        .create_room(&carol, json!({ "preset": "public_chat", "topic": "calm" }))
        .await;
    server.join(&bob, &room).await;
    let path = format!("/_synapse/admin/v1/users/{}/shadow_ban", bob.user_id);
    let refused = server.post(&path, Some(&carol.token), json!({})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let admin = server
        .post(
            &format!("/_synapse/admin/v1/users/{}/shadow_ban", root.user_id),
            Some(&root.token),
            json!({}),
        )
        .await;
    assert_error(&admin, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (status, body) = server.post(&path, Some(&root.token), json!({})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let shown = server
        .get_ok(&format!("/_synapse/admin/v2/users/{}", bob.user_id), &root)
        .await;
    assert_eq!(shown["shadow_banned"], true);

    // A message, a state change, an invite, typing, a room with an invite: all "work".
    let dropped = server.say(&bob, &room, "spam spam").await;
    assert!(dropped.starts_with('$'));
    let lost = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{dropped}"),
            Some(&carol.token),
        )
        .await;
    assert_error(&lost, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, topic) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(&bob.token),
            json!({ "topic": "spam" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{topic}");
    let invited = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&bob.token),
            json!({ "user_id": dave.user_id }),
        )
        .await;
    assert_eq!(invited.0, StatusCode::OK, "{}", invited.1);
    let typing = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", bob.user_id),
            Some(&bob.token),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(typing.0, StatusCode::OK, "{}", typing.1);
    let own = server
        .create_room(&bob, json!({ "invite": [dave.user_id] }))
        .await;
    let state = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            &carol,
        )
        .await;
    assert_eq!(state["topic"], "calm");
    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            &carol,
        )
        .await;
    assert!(!messages.to_string().contains("spam"), "{messages}");
    let dave_sync = server
        .get_ok("/_matrix/client/v3/sync?timeout=0", &dave)
        .await;
    assert!(
        dave_sync["rooms"]["invite"]
            .as_object()
            .is_none_or(|i| i.is_empty()),
        "{dave_sync}"
    );
    assert!(server.joined_rooms(&bob).await.contains(&own));
    let typing_now = server
        .services()
        .typing_event(&ruma::RoomId::parse(&room).unwrap(), None);
    assert!(
        typing_now.is_none_or(|t| t["content"]["user_ids"] == json!([])),
        "bob is not shown typing"
    );

    // Lifted: heard again.
    let (status, _) = server.delete(&path, Some(&root.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    server.say(&bob, &room, "sorry").await;
    server.wait_for_message(&carol, &room, "sorry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_destinations_show_sending_and_a_reset_retries_at_once() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    // Alice is A's first account: its admin.
    let (alice, _bob, room) = crate::federation::shared_room(&a, &b).await;
    let b_name = b.server_name();
    let one = format!("/_synapse/admin/v1/federation/destinations/{b_name}");
    a.say(&alice, &room, "hello, b").await;
    crate::common::eventually("a delivery to B", || async {
        let (status, body) = a.get(&one, Some(&alice.token)).await;
        status == StatusCode::OK && body["last_success_ts"].is_u64()
    })
    .await;
    let list = a
        .get_ok("/_synapse/admin/v1/federation/destinations", &alice)
        .await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["destinations"][0]["destination"], b_name.as_str());
    assert_eq!(list["destinations"][0]["failure_ts"], json!(null));
    let rooms = a.get_ok(&format!("{one}/rooms"), &alice).await;
    assert_eq!(rooms["rooms"][0]["room_id"], room.as_str(), "{rooms}");
    let not_failing = a
        .post(
            &format!("{one}/reset_connection"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_error(&not_failing, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let unknown = a
        .get(
            "/_synapse/admin/v1/federation/destinations/nowhere.example",
            Some(&alice.token),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // B goes away: sending fails and backs off; a reset has it try again at once.
    b.stop().await;
    a.say(&alice, &room, "anyone there?").await;
    crate::common::eventually("a failure to reach B", || async {
        let (_, body) = a.get(&one, Some(&alice.token)).await;
        body["failure_ts"].is_u64() && body["retry_interval"].as_u64() > Some(0)
    })
    .await;
    // Failures back off (2 s, 4 s, …): wait for a long enough interval to see a reset cut it.
    crate::common::eventually("a back-off of 4 s or more", || async {
        let (_, body) = a.get(&one, Some(&alice.token)).await;
        body["retry_interval"].as_u64() >= Some(4000)
    })
    .await;
    let (_, before) = a.get(&one, Some(&alice.token)).await;
    let reset_at = culvert::utils::now_millis();
    let (status, body) = a
        .post(
            &format!("{one}/reset_connection"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let retried = crate::common::poll(
        std::time::Duration::from_millis(3000),
        std::time::Duration::from_millis(50),
        || async {
            let (_, body) = a.get(&one, Some(&alice.token)).await;
            (body["retry_last_ts"].as_u64() >= Some(reset_at)).then_some(body)
        },
    )
    .await;
    assert!(
        retried.is_some(),
        "no retry within 3 s of the reset; before it: {before}"
    );
}

#[tokio::test]
async fn server_notices_reach_a_user_in_a_tagged_room_only_the_server_writes_in() {
    let server = TestServer::start().await;
    let root = server.register("root", "root-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let path = "/_synapse/admin/v1/send_server_notice";
    let notice = |text: &str| json!({ "user_id": bob.user_id, "content": { "msgtype": "m.text", "body": text } });
    let refused = server.post(path, Some(&bob.token), notice("x")).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let remote = server
        .post(
            path,
            Some(&root.token),
            json!({ "user_id": "@x:elsewhere.example", "content": {} }),
        )
        .await;
    assert_error(&remote, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let nobody = server
        .post(
            path,
            Some(&root.token),
            json!({ "user_id": "@nobody:test.local", "content": {} }),
        )
        .await;
    assert_error(&nobody, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let (status, sent) = server
        .post(path, Some(&root.token), notice("Maintenance at 10:00"))
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let invited = server
        .sync_until(&bob, "the notices room's invite", |body| {
            body["rooms"]["invite"]
                .as_object()
                .is_some_and(|i| !i.is_empty())
        })
        .await;
    let room = invited["rooms"]["invite"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    server.join(&bob, &room).await;
    let tag = server
        .get_ok(
            &format!("/_matrix/client/v3/user/{}/rooms/{room}/tags", bob.user_id),
            &bob,
        )
        .await;
    assert!(tag["tags"]["m.server_notice"].is_object(), "{tag}");
    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10"),
            &bob,
        )
        .await;
    let first = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "Maintenance at 10:00")
        .expect("the notice");
    assert_eq!(first["sender"], "@culvert:test.local");
    assert_eq!(first["event_id"], sent["event_id"]);
    let speak = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            Some(&bob.token),
            json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    assert_error(&speak, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // A transaction ID makes it idempotent; the same room serves the next notice.
    let txn_path = format!("{path}/txn1");
    let (_, once) = server
        .put(&txn_path, Some(&root.token), notice("Once"))
        .await;
    let (_, again) = server
        .put(&txn_path, Some(&root.token), notice("Once"))
        .await;
    assert_eq!(once["event_id"], again["event_id"], "{once} {again}");
    server.wait_for_message(&bob, &room, "Once").await;

    // Left: the next notice comes in a new room.
    let left = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(left.0, StatusCode::OK);
    let (status, _) = server
        .post(path, Some(&root.token), notice("After leaving"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let invited = server
        .sync_until(&bob, "a new notices room", |body| {
            body["rooms"]["invite"]
                .as_object()
                .is_some_and(|i| i.keys().any(|r| *r != room))
        })
        .await;
    assert!(invited["rooms"]["invite"][room.as_str()].is_null());
}

#[tokio::test]
async fn an_admin_acts_as_a_user_with_a_token_that_expires() {
    let server = TestServer::start().await;
    let root = server.register("root", "root-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let path = format!("/_synapse/admin/v1/users/{}/login", bob.user_id);
    let refused = server.post(&path, Some(&bob.token), json!({})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let past = server
        .post(&path, Some(&root.token), json!({ "valid_until_ms": 1 }))
        .await;
    assert_error(&past, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let until = culvert::utils::now_millis() + 1500;
    let (status, body) = server
        .post(&path, Some(&root.token), json!({ "valid_until_ms": until }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let who = server
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_eq!(who.1["user_id"], bob.user_id.as_str(), "{}", who.1);
    // The user sees the device it acts from.
    let devices = server.get_ok("/_matrix/client/v3/devices", &bob).await;
    assert!(
        devices
            .to_string()
            .contains(&format!("Admin login by {}", root.user_id)),
        "{devices}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let expired = server
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_error(&expired, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
}

/// Every route of the admin API (from the router's record of what it mounted, so a new one
/// is covered the day it is added) refuses an account that is no admin (403) and a request
/// without a token (401), whatever the method; only `server_version` is public, as in Synapse.
#[tokio::test]
async fn every_admin_route_refuses_non_admins() {
    let server = TestServer::start().await;
    let _root = server.register("root", "root-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let room = server
        .create_room(&bob, json!({ "preset": "private_chat" }))
        .await;
    let mut routes = Vec::new();
    for (_, path) in culvert::api::ruma::mounted_routes() {
        let Some(rest) = path.strip_prefix("/_synapse/admin/") else {
            continue;
        };
        let path = format!("/_synapse/admin/{rest}")
            .replace("{user_id}", &bob.user_id)
            .replace("{room_id}", &room)
            .replace("{event_id}", "$event")
            .replace("{server_name}", "test.local")
            .replace("{destination}", "elsewhere.example");
        let path = regex_free_fill(&path);
        // A plain route: every method is tried; those it does not serve answer 405.
        for method in ["GET", "POST", "PUT", "DELETE"] {
            routes.push((method.to_owned(), path.clone()));
        }
    }
    let mut served = 0;
    for (method, path) in &routes {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        if path.ends_with("/server_version") {
            continue;
        }
        let body = Some(json!({}));
        let anonymous = server
            .request(method.clone(), path, None, body.clone())
            .await;
        if anonymous.0 == StatusCode::METHOD_NOT_ALLOWED {
            continue;
        }
        served += 1;
        assert_error(&anonymous, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
        let as_bob = server
            .request(method.clone(), path, Some(&bob.token), body)
            .await;
        assert_error(&as_bob, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
    assert!(served > 60, "the route table was read: {served} routes");
}

/// Fills the route parameters left (`{name}`) with a placeholder value.
fn regex_free_fill(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed parameter") + start + 1;
        out.push('x');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn sending_is_limited_when_configured_and_admins_override_it_per_user() {
    let server = TestServer::start_with(
        "rate_limits = { enabled = true, message_per_minute = 60, message_burst = 3 }",
    )
    .await;
    let root = server.register("root", "root-password-1").await;
    let alice = server.register("alice", "alice-password-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    let send = |n: u32| {
        let server = &server;
        let alice = &alice;
        let room = room.clone();
        async move {
            server
                .put(
                    &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{n}"),
                    Some(&alice.token),
                    json!({ "msgtype": "m.text", "body": format!("m{n}") }),
                )
                .await
        }
    };
    // createRoom's events do not count; sends do: a burst of 3, then 429.
    for n in 0..3 {
        assert_eq!(send(n).await.0, StatusCode::OK);
    }
    let limited = send(3).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    assert!(
        limited.1["retry_after_ms"].as_u64().is_some(),
        "{}",
        limited.1
    );

    let path = format!(
        "/_synapse/admin/v1/users/{}/override_ratelimit",
        alice.user_id
    );
    assert_eq!(server.get_ok(&path, &root).await, json!({}));
    let (status, set) = server
        .post(
            &path,
            Some(&root.token),
            json!({ "messages_per_second": 0 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set, json!({ "messages_per_second": 0, "burst_count": 0 }));
    for n in 10..20 {
        assert_eq!(send(n).await.0, StatusCode::OK, "exempt");
    }
    // Kept across a restart.
    let server = server.restart().await;
    assert_eq!(
        server.get_ok(&path, &root).await,
        json!({ "messages_per_second": 0, "burst_count": 0 })
    );
    let (status, _) = server.delete(&path, Some(&root.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.get_ok(&path, &root).await, json!({}));
    let mut refused = false;
    for n in 30..35 {
        let (status, _) = server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{n}"),
                Some(&alice.token),
                json!({ "msgtype": "m.text", "body": "again" }),
            )
            .await;
        refused |= status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(refused, "the server's limit is back");
}
