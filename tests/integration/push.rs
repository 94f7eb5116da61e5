//! Push: rules evaluated on every event (mentions, display names, `@room` with and without the
//! power to, notices, edits, per-room rules that take effect at once), unread counts in `/sync`
//! (per thread too) reset by receipts and by the user's own events, `/notifications`, pushers
//! and their validation, and the push sender against a gateway in the test: the payload, the
//! `event_id_only` format, badge updates, rejected pushkeys, retries, and a `kill -9` with
//! pushes still queued.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{
    PATIENCE, Session, TestServer, assert_error, eventually, next_batch, poll, urlencode,
};

/// What the test gateway answers.
#[derive(Clone, Debug)]
enum Answer {
    Accept,
    /// 500 for the next N requests, then accept.
    Fail(usize),
    /// Reject this pushkey.
    Reject(String),
}

/// A push gateway on loopback that records every `/_matrix/push/v1/notify` body.
pub(crate) struct Gateway {
    pub(crate) url: String,
    received: Arc<Mutex<Vec<Value>>>,
    answer: Arc<Mutex<Answer>>,
}

impl Gateway {
    pub(crate) async fn start() -> Self {
        Self::start_on(0).await
    }

    async fn start_on(port: u16) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Answer::Accept));
        let (seen, mode) = (received.clone(), answer.clone());
        let app = axum::Router::new().route(
            "/_matrix/push/v1/notify",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let (seen, mode) = (seen.clone(), mode.clone());
                async move {
                    let mut mode = mode.lock().unwrap();
                    match &mut *mode {
                        Answer::Fail(n) if *n > 0 => {
                            *n -= 1;
                            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({})));
                        }
                        Answer::Reject(key) => {
                            let key = key.clone();
                            seen.lock().unwrap().push(body);
                            return (StatusCode::OK, axum::Json(json!({ "rejected": [key] })));
                        }
                        _ => {}
                    }
                    seen.lock().unwrap().push(body);
                    (StatusCode::OK, axum::Json(json!({ "rejected": [] })))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("gateway port");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/_matrix/push/v1/notify"),
            received,
            answer,
        }
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Waits for the `n`th request and returns it.
    pub(crate) async fn nth(&self, n: usize) -> Value {
        poll(PATIENCE, Duration::from_millis(50), || async {
            self.received().get(n).cloned()
        })
        .await
        .unwrap_or_else(|| panic!("the gateway never got request {n}: {:?}", self.received()))
    }
}

/// Loopback gateways need the deny-list off.
/// A server for these tests: with the legacy mention rules, which the tests of names and
/// `@room` in message bodies rely on (see `mentions_without_the_legacy_rules` for the default).
async fn server() -> TestServer {
    TestServer::start_with(
        "rate_limits = { enabled = false }\nip_range_denylist = []\nlegacy_mention_push_rules = true",
    )
    .await
}

fn pusher(url: &str, pushkey: &str, format: Option<&str>) -> Value {
    let mut data = json!({ "url": url, "custom": "kept" });
    if let Some(format) = format {
        data["format"] = json!(format);
    }
    json!({
        "kind": "http",
        "app_id": "org.culvert.test",
        "pushkey": pushkey,
        "app_display_name": "Test",
        "device_display_name": "Phone",
        "lang": "en",
        "data": data,
    })
}

async fn set_pusher(server: &TestServer, who: &Session, body: Value) -> (StatusCode, Value) {
    server
        .post("/_matrix/client/v3/pushers/set", Some(&who.token), body)
        .await
}

/// Alice and Bob (display name "Bobby") in a private room.
async fn two_in_a_room(server: &TestServer) -> (Session, Session, String) {
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    server
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id),
            Some(&bob.token),
            json!({ "displayname": "Bobby" }),
        )
        .await;
    let room = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [bob.user_id] }),
        )
        .await;
    server.join(&bob, &room).await;
    (alice, bob, room)
}

async fn send(server: &TestServer, who: &Session, room: &str, content: Value) -> String {
    let txn = format!("t{}", rand_suffix());
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, body) = server.put(&path, Some(&who.token), content).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

/// `(notification_count, highlight_count)` of a room in a sync response.
fn counts(sync: &Value, room: &str) -> (u64, u64) {
    let c = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        c["notification_count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counts: {sync}")),
        c["highlight_count"].as_u64().unwrap(),
    )
}

async fn sync(server: &TestServer, who: &Session) -> Value {
    server.get_ok("/_matrix/client/v3/sync", who).await
}

async fn receipt(
    server: &TestServer,
    who: &Session,
    room: &str,
    event: &str,
    kind: &str,
    body: Value,
) {
    let path = format!("/_matrix/client/v3/rooms/{room}/receipt/{kind}/{event}");
    let (status, answer) = server.post(&path, Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn messages_mentions_and_names_count_and_receipts_reset() {
    let server = server().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let before = next_batch(&sync(&server, &bob).await);

    // A message: one notification for bob, in the same sync that brings it; none for alice.
    send(&server, &alice, &room, text("hello")).await;
    let first = server
        .get_ok(&format!("/_matrix/client/v3/sync?since={before}"), &bob)
        .await;
    assert_eq!(counts(&first, &room), (1, 0), "{first}");
    assert_eq!(counts(&sync(&server, &alice).await, &room), (0, 0));

    // An intentional mention highlights; the display name in the body too (no m.mentions);
    // a notice does not count; an edit does not count.
    send(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "hi", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    let named = send(&server, &alice, &room, text("look Bobby")).await;
    send(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.notice", "body": "a bot says" }),
    )
    .await;
    send(
        &server,
        &alice,
        &room,
        json!({
            "msgtype": "m.text", "body": "* look here",
            "m.new_content": { "msgtype": "m.text", "body": "look here" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": named },
        }),
    )
    .await;
    // A display-name mention with m.mentions that names nobody: the legacy rule does not apply.
    send(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "Bobby said", "m.mentions": {} }),
    )
    .await;
    let now = sync(&server, &bob).await;
    assert_eq!(counts(&now, &room), (4, 2), "{now}");

    // A receipt at the second message leaves the later ones.
    let events = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"),
            &bob,
        )
        .await;
    let messages: Vec<String> = events["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    receipt(
        &server,
        &bob,
        &room,
        &messages[1],
        "m.read.private",
        json!({}),
    )
    .await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (2, 1));
    // A receipt further back does not bring them back.
    receipt(&server, &bob, &room, &messages[0], "m.read", json!({})).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (2, 1));
    // Bob writes: what came before in the room counts as read.
    send(&server, &bob, &room, text("ok")).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (0, 0));

    // A new display name counts from the member event that sets it; the old one no longer.
    server
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id),
            Some(&bob.token),
            json!({ "displayname": "Roberto" }),
        )
        .await;
    send(&server, &alice, &room, text("Bobby?")).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (1, 0));
    send(&server, &alice, &room, text("Roberto!")).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (2, 1));
    receipt(
        &server,
        &bob,
        &room,
        &send(&server, &bob, &room, text("hm")).await,
        "m.read",
        json!({}),
    )
    .await;

    // Counts survive a restart.
    send(&server, &alice, &room, text("after")).await;
    let server = server.restart().await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (1, 0));
}

/// Without the legacy mention rules (spec v1.17, the default): a name or `@room` in a body
/// notifies but does not highlight; `m.mentions` does.
#[tokio::test]
async fn mentions_without_the_legacy_rules() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    send(&server, &alice, &room, text("look Bobby and bob")).await;
    send(&server, &alice, &room, text("@room listen")).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (2, 0));
    send(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "hi", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    send(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "all", "m.mentions": { "room": true } }),
    )
    .await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (4, 2));
}

#[tokio::test]
async fn room_mentions_need_the_power_and_rule_changes_act_at_once() {
    let server = server().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let carol = server.register("carol", "pw").await;
    let invite = format!("/_matrix/client/v3/rooms/{room}/invite");
    server
        .post(
            &invite,
            Some(&alice.token),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    server.join(&carol, &room).await;
    // Carol (power 0) may not notify the room: @room highlights nobody.
    send(&server, &carol, &room, text("@room listen")).await;
    send(
        &server,
        &carol,
        &room,
        json!({ "msgtype": "m.text", "body": "all", "m.mentions": { "room": true } }),
    )
    .await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (2, 0));
    // Alice (power 100) may; carol, who joined after the room's members were last looked at
    // for notifications, is notified too.
    send(&server, &alice, &room, text("@room listen")).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (3, 1));
    assert_eq!(counts(&sync(&server, &carol).await, &room), (1, 1));
    // Given the power to notify the room, carol's next @room highlights at once.
    let levels_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/");
    let mut levels = server.get_ok(&levels_path, &alice).await;
    levels["users"][carol.user_id.as_str()] = json!(50);
    let (status, body) = server.put(&levels_path, Some(&alice.token), levels).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send(&server, &carol, &room, text("@room now")).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (4, 2));

    // Bob mutes the room: a room rule without actions, in effect for the next message.
    let rule = format!(
        "/_matrix/client/v3/pushrules/global/room/{}",
        urlencode(&room)
    );
    let (status, body) = server
        .put(&rule, Some(&bob.token), json!({ "actions": [] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send(&server, &alice, &room, text("muted?")).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (4, 2));
    // A disabled rule no longer applies.
    let (status, _) = server
        .put(
            &format!("{rule}/enabled"),
            Some(&bob.token),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send(&server, &alice, &room, text("loud again")).await;
    assert_eq!(counts(&sync(&server, &bob).await, &room), (5, 2));
}

#[tokio::test]
async fn threads_are_counted_apart_and_read_apart() {
    let server = server().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let root = send(&server, &alice, &room, text("root")).await;
    let in_thread = |body: &str| {
        json!({ "msgtype": "m.text", "body": body,
                "m.relates_to": { "rel_type": "m.thread", "event_id": root } })
    };
    send(&server, &alice, &room, in_thread("reply 1")).await;
    let last_reply = send(&server, &alice, &room, in_thread("reply 2")).await;
    send(&server, &alice, &room, text("main again")).await;

    // Without the filter: all together.
    assert_eq!(counts(&sync(&server, &bob).await, &room), (4, 0));
    // With it: the main timeline apart from the thread.
    let filter = urlencode(
        &json!({ "room": { "timeline": { "unread_thread_notifications": true } } }).to_string(),
    );
    let split = server
        .get_ok(&format!("/_matrix/client/v3/sync?filter={filter}"), &bob)
        .await;
    assert_eq!(counts(&split, &room), (2, 0), "{split}");
    let threads = &split["rooms"]["join"][&room]["unread_thread_notifications"];
    assert_eq!(threads[&root]["notification_count"], 2, "{split}");
    // A threaded receipt in the thread reads the thread only.
    receipt(
        &server,
        &bob,
        &room,
        &last_reply,
        "m.read",
        json!({ "thread_id": root }),
    )
    .await;
    let split = server
        .get_ok(&format!("/_matrix/client/v3/sync?filter={filter}"), &bob)
        .await;
    assert_eq!(counts(&split, &room), (2, 0));
    assert!(
        split["rooms"]["join"][&room]["unread_thread_notifications"].is_null(),
        "{split}"
    );
}

#[tokio::test]
async fn a_receipt_from_elsewhere_updates_the_counts_of_an_otherwise_quiet_room() {
    let server = server().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let event = send(&server, &alice, &room, text("hello")).await;
    // Bob's client that does not take receipts (filtered out) still learns the new counts.
    let filter =
        urlencode(&json!({ "room": { "ephemeral": { "not_types": ["m.receipt"] } } }).to_string());
    let first = server
        .get_ok(&format!("/_matrix/client/v3/sync?filter={filter}"), &bob)
        .await;
    assert_eq!(counts(&first, &room), (1, 0));
    let since = next_batch(&first);
    receipt(&server, &bob, &room, &event, "m.read", json!({})).await;
    let next = server
        .get_ok(
            &format!("/_matrix/client/v3/sync?filter={filter}&since={since}&timeout=0"),
            &bob,
        )
        .await;
    assert_eq!(counts(&next, &room), (0, 0), "{next}");
}

#[tokio::test]
async fn notifications_are_listed_newest_first_with_their_read_flag() {
    let server = server().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send(&server, &alice, &room, text(&format!("n{i}"))).await);
    }
    send(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "hey", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    let all = server
        .get_ok("/_matrix/client/v3/notifications", &bob)
        .await;
    let list = all["notifications"].as_array().unwrap();
    // Five messages, the mention, and the invite that brought bob (read by his own join).
    assert_eq!(list.len(), 7, "{all}");
    assert_eq!(list[6]["event"]["content"]["membership"], "invite");
    assert_eq!(list[6]["read"], true, "his join read it");
    assert_eq!(list[0]["event"]["content"]["body"], "hey");
    assert_eq!(list[0]["room_id"], room.as_str());
    assert!(list[0]["ts"].as_u64().is_some());
    assert!(
        list[0]["actions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("notify")))
    );
    assert!(list[..6].iter().all(|n| n["read"] == false));
    // Pages.
    let page = server
        .get_ok("/_matrix/client/v3/notifications?limit=2", &bob)
        .await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 2);
    let next = page["next_token"].as_str().expect("next_token").to_owned();
    let page2 = server
        .get_ok(
            &format!("/_matrix/client/v3/notifications?limit=10&from={next}"),
            &bob,
        )
        .await;
    assert_eq!(page2["notifications"].as_array().unwrap().len(), 5);
    assert_eq!(page2["notifications"][0]["event"]["content"]["body"], "n3");
    // Highlights only.
    let highlights = server
        .get_ok("/_matrix/client/v3/notifications?only=highlight", &bob)
        .await;
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 1);
    // Read after a receipt.
    receipt(&server, &bob, &room, &sent[4], "m.read", json!({})).await;
    let after = server
        .get_ok("/_matrix/client/v3/notifications", &bob)
        .await;
    let read: Vec<bool> = after["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["read"].as_bool().unwrap())
        .collect();
    assert_eq!(read, vec![false, true, true, true, true, true, true]);
    // Bad input.
    assert_error(
        &server
            .get(
                "/_matrix/client/v3/notifications?from=abc",
                Some(&bob.token),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .get(
                "/_matrix/client/v3/notifications?only=everything",
                Some(&bob.token),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn pushers_are_set_checked_replaced_and_deleted_with_their_device() {
    let server = server().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let url = "https://push.example.org/_matrix/push/v1/notify";
    let (status, body) = set_pusher(&server, &alice, pusher(url, "key-1", None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = server.get_ok("/_matrix/client/v3/pushers", &alice).await;
    let pushers = listed["pushers"].as_array().unwrap();
    assert_eq!(pushers.len(), 1, "{listed}");
    assert_eq!(pushers[0]["pushkey"], "key-1");
    assert_eq!(pushers[0]["data"]["url"], url);
    assert_eq!(pushers[0]["data"]["custom"], "kept");
    assert_eq!(pushers[0]["app_display_name"], "Test");

    // Bad pushers: nothing stored.
    let long_key = "k".repeat(513);
    let mut long_app = pusher(url, "key-2", None);
    long_app["app_id"] = json!("a".repeat(65));
    let mut email = pusher(url, "bob@example.org", None);
    email["kind"] = json!("email");
    let mut unknown = pusher(url, "key-3", None);
    unknown["kind"] = json!("carrier-pigeon");
    for (what, body) in [
        ("a 513-byte pushkey", pusher(url, &long_key, None)),
        ("a 65-character app_id", long_app),
        (
            "a URL with another path",
            pusher("https://push.example.org/notify", "key-4", None),
        ),
        ("not a URL", pusher("not a url", "key-5", None)),
        (
            "an ftp URL",
            pusher(
                "ftp://push.example.org/_matrix/push/v1/notify",
                "key-6",
                None,
            ),
        ),
        ("an e-mail pusher", email),
        ("an unknown kind", unknown),
    ] {
        let answer = set_pusher(&server, &alice, body).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
        eprintln!("refused {what}");
    }
    let mut missing = pusher(url, "key-7", None);
    missing["data"] = json!({});
    let answer = set_pusher(&server, &alice, missing).await;
    assert_eq!(
        answer.0,
        StatusCode::BAD_REQUEST,
        "missing data.url: {}",
        answer.1
    );
    assert_eq!(
        server.get_ok("/_matrix/client/v3/pushers", &alice).await["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing more stored"
    );

    // The same pushkey for bob: with `append` both keep it, without it alice loses it.
    let mut appended = pusher(url, "key-1", None);
    appended["append"] = json!(true);
    assert_eq!(set_pusher(&server, &bob, appended).await.0, StatusCode::OK);
    assert_eq!(
        server.get_ok("/_matrix/client/v3/pushers", &alice).await["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        set_pusher(&server, &bob, pusher(url, "key-1", None))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        server.get_ok("/_matrix/client/v3/pushers", &alice).await["pushers"],
        json!([])
    );
    assert_eq!(
        server.get_ok("/_matrix/client/v3/pushers", &bob).await["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Deleted with `kind: null`.
    let (status, _) = set_pusher(
        &server,
        &bob,
        json!({ "kind": null, "app_id": "org.culvert.test", "pushkey": "key-1" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.get_ok("/_matrix/client/v3/pushers", &bob).await["pushers"],
        json!([])
    );

    // Deleted with the device that set it (logout).
    assert_eq!(
        set_pusher(&server, &alice, pusher(url, "key-8", None))
            .await
            .0,
        StatusCode::OK
    );
    let other = server.login_ok("alice", "pw").await;
    assert_eq!(
        set_pusher(&server, &other, pusher(url, "key-9", None))
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = server
        .post("/_matrix/client/v3/logout", Some(&other.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let left = server.get_ok("/_matrix/client/v3/pushers", &alice).await;
    let keys: Vec<&str> = left["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pushkey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["key-8"], "{left}");
}

#[tokio::test]
async fn the_gateway_gets_each_notification_then_a_badge_update() {
    let server = server().await;
    let gateway = Gateway::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let (status, body) = set_pusher(&server, &bob, pusher(&gateway.url, "bob-phone", None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event = send(
        &server,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "ring", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    let pushed = gateway.nth(0).await;
    let n = &pushed["notification"];
    assert_eq!(n["event_id"], event.as_str(), "{pushed}");
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id.as_str());
    assert_eq!(n["sender_display_name"], "alice");
    assert_eq!(n["content"]["body"], "ring");
    assert_eq!(n["prio"], "high", "a highlight rings");
    assert_eq!(n["counts"]["unread"], 1);
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.culvert.test");
    assert_eq!(device["pushkey"], "bob-phone");
    assert!(
        device["pushkey_ts"]
            .as_u64()
            .is_some_and(|ts| ts > 1_600_000_000 && ts < 100_000_000_000),
        "seconds: {device}"
    );
    assert_eq!(
        device["data"],
        json!({ "custom": "kept" }),
        "data without the URL"
    );
    assert_eq!(device["tweaks"]["highlight"], true);
    assert_eq!(device["tweaks"]["sound"], "default");

    // Reading it: the gateway hears the badge is 0.
    receipt(&server, &bob, &room, &event, "m.read", json!({})).await;
    let badge = gateway.nth(1).await;
    assert_eq!(badge["notification"]["counts"]["unread"], 0, "{badge}");
    assert!(badge["notification"].get("event_id").is_none());

    // Alice's own pusher hears nothing of her own messages; a message read before it could be
    // pushed is not pushed.
    assert_eq!(
        set_pusher(&server, &alice, pusher(&gateway.url, "alice-phone", None))
            .await
            .0,
        StatusCode::OK
    );
    let quiet = send(&server, &alice, &room, text("plain")).await;
    let plain = gateway.nth(2).await;
    assert_eq!(plain["notification"]["event_id"], quiet.as_str());
    assert_eq!(
        plain["notification"]["prio"], "high",
        "the one-to-one rule has a sound"
    );
    assert_eq!(plain["notification"]["devices"][0]["pushkey"], "bob-phone");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gateway
            .received()
            .iter()
            .all(|r| r["notification"]["devices"][0]["pushkey"] != "alice-phone"),
        "{:?}",
        gateway.received()
    );
}

/// The badge is the number of rooms with unread notifications, however many each has, plus
/// the pending invites; reading a room takes it off.
#[tokio::test]
async fn the_badge_counts_rooms_with_unread_notifications_and_invites() {
    let server = server().await;
    let gateway = Gateway::start().await;
    let (alice, bob, first) = two_in_a_room(&server).await;
    let second = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [bob.user_id] }),
        )
        .await;
    server.join(&bob, &second).await;
    server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [bob.user_id] }),
        )
        .await;
    let (status, body) = set_pusher(&server, &bob, pusher(&gateway.url, "bob-badge", None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for n in 0..3 {
        send(&server, &alice, &first, text(&format!("first {n}"))).await;
    }
    let mut last = String::new();
    for n in 0..2 {
        last = send(&server, &alice, &second, text(&format!("second {n}"))).await;
    }
    let fifth = gateway.nth(4).await;
    assert_eq!(fifth["notification"]["event_id"], last.as_str(), "{fifth}");
    assert_eq!(
        fifth["notification"]["counts"]["unread"], 3,
        "two rooms with unread messages and one invite: {fifth}"
    );
    receipt(&server, &bob, &second, &last, "m.read", json!({})).await;
    let update = gateway.nth(5).await;
    assert_eq!(update["notification"]["counts"]["unread"], 2, "{update}");
    assert!(update["notification"].get("event_id").is_none());
}

#[tokio::test]
async fn event_id_only_pushers_get_ids_and_counts_alone() {
    let server = server().await;
    let gateway = Gateway::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    assert_eq!(
        set_pusher(
            &server,
            &bob,
            pusher(&gateway.url, "bob-lean", Some("event_id_only"))
        )
        .await
        .0,
        StatusCode::OK
    );
    let event = send(&server, &alice, &room, text("quiet please")).await;
    let n = gateway.nth(0).await["notification"].clone();
    assert_eq!(n["event_id"], event.as_str());
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["counts"]["unread"], 1);
    for absent in ["content", "sender", "type", "sender_display_name"] {
        assert!(n.get(absent).is_none(), "{absent} in {n}");
    }
    assert!(n["devices"][0].get("tweaks").is_none());
    assert_eq!(n["devices"][0]["data"]["format"], "event_id_only");
}

#[tokio::test]
async fn a_rejected_pushkey_ends_its_pusher_and_failures_are_retried() {
    let server = server().await;
    let gateway = Gateway::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    *gateway.answer.lock().unwrap() = Answer::Fail(2);
    assert_eq!(
        set_pusher(&server, &bob, pusher(&gateway.url, "bob-flaky", None))
            .await
            .0,
        StatusCode::OK
    );
    let event = send(&server, &alice, &room, text("eventually")).await;
    // Two 500s, then the retry (after 1 s and 2 s of back-off) gets through.
    let pushed = gateway.nth(0).await;
    assert_eq!(pushed["notification"]["event_id"], event.as_str());

    *gateway.answer.lock().unwrap() = Answer::Reject("bob-flaky".into());
    send(&server, &alice, &room, text("rejected")).await;
    gateway.nth(1).await;
    eventually("the rejected pusher to be removed", || async {
        server.get_ok("/_matrix/client/v3/pushers", &bob).await["pushers"] == json!([])
    })
    .await;
}

/// The pushers' queue is the notifications written with each event: a server killed with
/// pushes queued (the gateway was down) delivers each of them once after it restarts.
#[tokio::test]
async fn queued_pushes_survive_a_kill_and_are_sent_once() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = crate::persistence::free_port();
    let gateway_port = crate::persistence::free_port();
    let extra = "rate_limits = { enabled = false }\nip_range_denylist = []";
    let mut child = crate::persistence::spawn_binary_with(dir.path(), port, extra).await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>, body: Value| {
        let mut request = http
            .request(method, format!("{}{path}", child.base))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let register = |name: &'static str| {
        let call = &call;
        async move {
            let first: Value = call(
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                None,
                json!({ "username": name, "password": "pw" }),
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            let done: Value = call(
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                None,
                json!({
                    "username": name, "password": "pw",
                    "auth": { "type": "m.login.dummy", "session": first["session"] },
                }),
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            done["access_token"].as_str().unwrap().to_owned()
        }
    };
    let alice = register("alice").await;
    let bob = register("bob").await;
    let room: Value = call(
        reqwest::Method::POST,
        "/_matrix/client/v3/createRoom",
        Some(&alice),
        json!({ "invite": ["@bob:test.local"] }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let room = room["room_id"].as_str().unwrap().to_owned();
    call(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(&bob),
        json!({}),
    )
    .await
    .unwrap();
    // The gateway is not there yet: nothing listens on its port.
    let url = format!("http://127.0.0.1:{gateway_port}/_matrix/push/v1/notify");
    let status = call(
        reqwest::Method::POST,
        "/_matrix/client/v3/pushers/set",
        Some(&bob),
        pusher(&url, "bob-phone", None),
    )
    .await
    .unwrap()
    .status();
    assert_eq!(status, StatusCode::OK);
    let mut sent = Vec::new();
    for i in 0..3 {
        let answer: Value = call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/k{i}"),
            Some(&alice),
            text(&format!("queued {i}")),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        sent.push(answer["event_id"].as_str().unwrap().to_owned());
    }
    child.child.kill().expect("SIGKILL");
    child.child.wait().unwrap();
    drop(child);

    let gateway = Gateway::start_on(gateway_port).await;
    let _child = crate::persistence::spawn_binary_with(dir.path(), port, extra).await;
    for (i, event) in sent.iter().enumerate() {
        let pushed = gateway.nth(i).await;
        assert_eq!(
            pushed["notification"]["event_id"],
            event.as_str(),
            "in order"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Vec<Value> = gateway
        .received()
        .iter()
        .filter_map(|r| r["notification"].get("event_id").cloned())
        .collect();
    assert_eq!(events.len(), 3, "each once: {events:?}");
}
