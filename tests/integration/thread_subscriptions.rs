//! Thread subscriptions (MSC4306) and their changes (MSC4308): off unless configured (then not
//! advertised, 404 `M_UNRECOGNIZED`, no postcontent rules); subscribe, read and unsubscribe,
//! the rules for automatic subscriptions; the changes paged back and in the sliding-sync
//! extension; the push rules that notify subscribers of a thread only.

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

const ON: &str = "thread_subscriptions = true\nrate_limits = { enabled = false }";
const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const CHANGES: &str = "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions";
const EXTENSION: &str = "io.element.msc4308.thread_subscriptions";

static TXN: AtomicU64 = AtomicU64::new(0);

async fn send(server: &TestServer, who: &Session, room: &str, content: Value) -> String {
    let txn = TXN.fetch_add(1, Ordering::Relaxed);
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/ts{txn}");
    let (status, body) = server.put(&path, Some(&who.token), content).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

fn reply(root: &str, body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body,
            "m.relates_to": { "rel_type": "m.thread", "event_id": root } })
}

fn path(room: &str, root: &str) -> String {
    format!("/_matrix/client/unstable/io.element.msc4306/rooms/{room}/thread/{root}/subscription")
}

async fn subscribe(
    server: &TestServer,
    who: &Session,
    room: &str,
    root: &str,
    body: Value,
) -> (StatusCode, Value) {
    server.put(&path(room, root), Some(&who.token), body).await
}

async fn subscription(
    server: &TestServer,
    who: &Session,
    room: &str,
    root: &str,
) -> (StatusCode, Value) {
    server.get(&path(room, root), Some(&who.token)).await
}

async fn unsubscribe(
    server: &TestServer,
    who: &Session,
    room: &str,
    root: &str,
) -> (StatusCode, Value) {
    server
        .delete(&path(room, root), Some(&who.token), json!({}))
        .await
}

async fn two_in_a_room(server: &TestServer) -> (Session, Session, String) {
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    (alice, bob, room)
}

/// Bob's notification count in the room (main timeline and threads together).
async fn notifications(server: &TestServer, who: &Session, room: &str) -> (u64, u64) {
    let sync = server.get_ok("/_matrix/client/v3/sync", who).await;
    let counts = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        counts["notification_count"].as_u64().unwrap_or(0),
        counts["highlight_count"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn off_by_default_unadvertised_and_unrecognized_with_thread_replies_notifying() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let versions = server.get("/_matrix/client/versions", None).await.1;
    let features = &versions["unstable_features"];
    assert_ne!(features["org.matrix.msc4306"], true, "{versions}");
    assert_ne!(features["org.matrix.msc4308"], true, "{versions}");
    let (alice, bob, room) = two_in_a_room(&server).await;
    let root = send(&server, &alice, &room, text("root")).await;
    assert_error(
        &subscribe(&server, &bob, &room, &root, json!({})).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &server
            .get(&format!("{CHANGES}?dir=b"), Some(&bob.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    let rules = server.get_ok("/_matrix/client/v3/pushrules/", &bob).await;
    assert!(rules["global"].get("postcontent").is_none(), "{rules}");
    // Thread replies notify everyone, as before.
    send(&server, &alice, &room, reply(&root, "in the thread")).await;
    assert_eq!(notifications(&server, &bob, &room).await, (2, 0));
}

#[tokio::test]
async fn subscriptions_are_made_read_and_undone_and_automatic_ones_follow_the_rules() {
    let server = TestServer::start_with(ON).await;
    let versions = server.get("/_matrix/client/versions", None).await.1;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4306"], true);
    assert_eq!(versions["unstable_features"]["org.matrix.msc4308"], true);
    let (alice, bob, room) = two_in_a_room(&server).await;
    let root = send(&server, &alice, &room, text("root")).await;
    let first = send(&server, &alice, &room, reply(&root, "first")).await;
    let main = send(&server, &alice, &room, text("in the main timeline")).await;

    // None yet.
    assert_error(
        &subscription(&server, &bob, &room, &root).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // By hand; an automatic one after it leaves it manual.
    let ok = subscribe(&server, &bob, &room, &root, json!({})).await;
    assert_eq!(ok, (StatusCode::OK, json!({})));
    let got = subscription(&server, &bob, &room, &root).await;
    assert_eq!(got, (StatusCode::OK, json!({ "automatic": false })));
    let auto = subscribe(&server, &bob, &room, &root, json!({ "automatic": first })).await;
    assert_eq!(auto.0, StatusCode::OK, "{}", auto.1);
    assert_eq!(
        subscription(&server, &bob, &room, &root).await.1,
        json!({ "automatic": false })
    );

    // Unsubscribed (twice: idempotent).
    assert_eq!(
        unsubscribe(&server, &bob, &room, &root).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(
        unsubscribe(&server, &bob, &room, &root).await.0,
        StatusCode::OK
    );
    assert_error(
        &subscription(&server, &bob, &room, &root).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // An automatic subscription caused by an event the user had when unsubscribing: refused.
    assert_error(
        &subscribe(&server, &bob, &room, &root, json!({ "automatic": first })).await,
        StatusCode::CONFLICT,
        "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION",
    );
    // One caused by a newer event: made.
    let second = send(&server, &alice, &room, reply(&root, "second")).await;
    let auto = subscribe(&server, &bob, &room, &root, json!({ "automatic": second })).await;
    assert_eq!(auto.0, StatusCode::OK, "{}", auto.1);
    assert_eq!(
        subscription(&server, &bob, &room, &root).await.1,
        json!({ "automatic": true })
    );
    // By hand after an automatic one: manual.
    subscribe(&server, &bob, &room, &root, json!({})).await;
    assert_eq!(
        subscription(&server, &bob, &room, &root).await.1,
        json!({ "automatic": false })
    );

    // Causes that are not in the thread.
    for cause in [main.as_str(), "$unknown:localhost", first.as_str()] {
        let other_root = if cause == first { &main } else { &root };
        assert_error(
            &subscribe(
                &server,
                &bob,
                &room,
                other_root,
                json!({ "automatic": cause }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD",
        );
    }
    // Threads that do not exist or may not be seen: unknown event, a reply (no root), an
    // event of another room, a private room's thread for someone outside it.
    let private = server.create_room(&alice, json!({})).await;
    let hidden = send(&server, &alice, &private, text("private root")).await;
    for (in_room, thread) in [
        (&room, "$unknown:localhost"),
        (&room, first.as_str()),
        (&room, hidden.as_str()),
        (&private, hidden.as_str()),
    ] {
        for result in [
            subscribe(&server, &bob, in_room, thread, json!({})).await,
            subscription(&server, &bob, in_room, thread).await,
            unsubscribe(&server, &bob, in_room, thread).await,
        ] {
            assert_error(&result, StatusCode::NOT_FOUND, "M_NOT_FOUND");
        }
    }
    // A malformed body.
    let bad = subscribe(&server, &bob, &room, &root, json!({ "automatic": 5 })).await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST, "{}", bad.1);
}

/// The changes listed by `/thread_subscriptions` (newest first, the latest per thread) and by
/// the sliding-sync extension (since the connection's position; `prev_batch` for the rest).
#[tokio::test]
async fn changes_are_paged_back_and_synced_through_the_extension() {
    let server = TestServer::start_with(ON).await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let mut roots = Vec::new();
    for n in 0..3 {
        roots.push(send(&server, &alice, &room, text(&format!("root {n}"))).await);
    }
    for root in &roots {
        subscribe(&server, &bob, &room, root, json!({})).await;
    }
    unsubscribe(&server, &bob, &room, &roots[0]).await;

    // Newest first: roots[0]'s unsubscription, then roots[2], then roots[1].
    let page = server
        .get_ok(&format!("{CHANGES}?dir=b&limit=2"), &bob)
        .await;
    assert_eq!(
        page["unsubscribed"][&room]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec![roots[0].clone()]),
        "{page}"
    );
    let subscribed = &page["subscribed"][&room];
    assert_eq!(subscribed[&roots[2]]["automatic"], false, "{page}");
    assert!(subscribed.get(&roots[1]).is_none(), "{page}");
    let stamp_unsub = page["unsubscribed"][&room][&roots[0]]["bump_stamp"]
        .as_u64()
        .expect("bump_stamp");
    assert!(stamp_unsub > subscribed[&roots[2]]["bump_stamp"].as_u64().unwrap());
    let end = page["end"].as_str().expect("end").to_owned();
    let rest = server
        .get_ok(&format!("{CHANGES}?dir=b&limit=2&from={end}"), &bob)
        .await;
    assert_eq!(
        rest,
        json!({ "subscribed": { &room: { &roots[1]: {
            "automatic": false,
            "bump_stamp": rest["subscribed"][&room][&roots[1]]["bump_stamp"] } } } }),
        "{rest}"
    );
    for bad in ["dir=f", "dir=b&limit=0", "dir=b&from=junk", "dir=b&to=junk"] {
        let result = server
            .get(&format!("{CHANGES}?{bad}"), Some(&bob.token))
            .await;
        assert_eq!(result.0, StatusCode::BAD_REQUEST, "{bad}: {}", result.1);
    }
    // Alice has none.
    assert_eq!(
        server.get_ok(&format!("{CHANGES}?dir=b"), &alice).await,
        json!({})
    );

    // Sliding sync: everything on a first request, then only what changed.
    let request = json!({
        "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 1 } },
        "extensions": { EXTENSION: { "enabled": true } },
    });
    let (status, first) = server
        .post(SLIDING, Some(&bob.token), request.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let ext = &first["extensions"][EXTENSION];
    assert_eq!(
        ext["subscribed"][&room].as_object().map(|o| o.len()),
        Some(2),
        "{first}"
    );
    assert!(
        ext["unsubscribed"][&room].get(&roots[0]).is_some(),
        "{first}"
    );
    assert!(ext.get("prev_batch").is_none(), "{first}");
    let pos = first["pos"].as_str().expect("pos").to_owned();
    let quiet = request.clone();
    let (_, nothing) = server
        .post(
            &format!("{SLIDING}?pos={pos}"),
            Some(&bob.token),
            quiet.clone(),
        )
        .await;
    assert_eq!(nothing["extensions"][EXTENSION], json!({}), "{nothing}");

    // Two changes after the position, an extension limit of one: the newest, and a
    // `prev_batch` that pages back to the other (down to the position).
    subscribe(&server, &bob, &room, &roots[0], json!({})).await;
    unsubscribe(&server, &bob, &room, &roots[1]).await;
    let mut limited = quiet.clone();
    limited["extensions"][EXTENSION]["limit"] = json!(1);
    let (_, next) = server
        .post(&format!("{SLIDING}?pos={pos}"), Some(&bob.token), limited)
        .await;
    let ext = &next["extensions"][EXTENSION];
    assert!(
        ext["unsubscribed"][&room].get(&roots[1]).is_some(),
        "{next}"
    );
    assert!(ext.get("subscribed").is_none(), "{next}");
    let prev_batch = ext["prev_batch"].as_str().expect("prev_batch");
    let back = server
        .get_ok(&format!("{CHANGES}?dir=b&from={prev_batch}&to={pos}"), &bob)
        .await;
    assert_eq!(
        back["subscribed"][&room]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec![roots[0].clone()]),
        "{back}"
    );
    assert!(
        back.get("end").is_none() && back.get("unsubscribed").is_none(),
        "{back}"
    );

    // A waiting request wakes for a change.
    let next_pos = next["pos"].as_str().expect("pos").to_owned();
    let waiting = request.clone();
    let wait = {
        let base = server.base.clone();
        let token = bob.token.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}{SLIDING}?pos={next_pos}&timeout=10000"))
                .bearer_auth(token)
                .json(&waiting)
                .send()
                .await
                .expect("sliding sync")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    subscribe(&server, &bob, &room, &roots[1], json!({})).await;
    let woken = tokio::time::timeout(std::time::Duration::from_secs(5), wait)
        .await
        .expect("woken before the timeout")
        .expect("task");
    assert_eq!(
        woken["extensions"][EXTENSION]["subscribed"][&room][&roots[1]]["automatic"], false,
        "{woken}"
    );
}

/// With the postcontent rules, a thread's messages notify its subscribers only — even in a
/// room they muted — and mentions notify anyway; clients cannot add postcontent rules; the
/// rules can be switched off like any server-default rule.
#[tokio::test]
async fn thread_messages_notify_subscribers_and_mentions_only() {
    let server = TestServer::start_with(ON).await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let rules = server.get_ok("/_matrix/client/v3/pushrules/", &bob).await;
    let ids: Vec<&str> = rules["global"]["postcontent"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["rule_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        [
            ".io.element.msc4306.rule.unsubscribed_thread",
            ".io.element.msc4306.rule.subscribed_thread"
        ],
        "{rules}"
    );

    let root = send(&server, &alice, &room, text("root")).await;
    assert_eq!(notifications(&server, &bob, &room).await, (1, 0));
    // Not subscribed: silent.
    send(&server, &alice, &room, reply(&root, "not for him")).await;
    assert_eq!(notifications(&server, &bob, &room).await, (1, 0));
    // Subscribed: notified, even with the room muted (a room rule without actions).
    subscribe(&server, &bob, &room, &root, json!({})).await;
    let mute = server
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{room}"),
            Some(&bob.token),
            json!({ "actions": [] }),
        )
        .await;
    assert_eq!(mute.0, StatusCode::OK, "{}", mute.1);
    send(&server, &alice, &room, reply(&root, "for him")).await;
    assert_eq!(notifications(&server, &bob, &room).await, (2, 0));
    send(&server, &alice, &room, text("muted main timeline")).await;
    assert_eq!(notifications(&server, &bob, &room).await, (2, 0));
    // Unsubscribed again: only a mention notifies.
    unsubscribe(&server, &bob, &room, &root).await;
    send(&server, &alice, &room, reply(&root, "still not for him")).await;
    assert_eq!(notifications(&server, &bob, &room).await, (2, 0));
    let mut mention = reply(&root, "look here");
    mention["m.mentions"] = json!({ "user_ids": [bob.user_id] });
    send(&server, &alice, &room, mention).await;
    assert_eq!(notifications(&server, &bob, &room).await, (3, 1));

    // No custom postcontent rules.
    assert_error(
        &server
            .put(
                "/_matrix/client/v3/pushrules/global/io.element.msc4306.postcontent/mine",
                Some(&bob.token),
                json!({ "actions": ["notify"], "conditions": [] }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Switching the "unsubscribed" rule off lets the room's rules decide again (unmuted: the
    // message rule notifies); the switch is kept.
    server
        .delete(
            &format!("/_matrix/client/v3/pushrules/global/room/{room}"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    let off = server
        .put(
            "/_matrix/client/v3/pushrules/global/io.element.msc4306.postcontent/.io.element.msc4306.rule.unsubscribed_thread/enabled",
            Some(&bob.token),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(off.0, StatusCode::OK, "{}", off.1);
    let rule = server
        .get_ok(
            "/_matrix/client/v3/pushrules/global/io.element.msc4306.postcontent/.io.element.msc4306.rule.unsubscribed_thread",
            &bob,
        )
        .await;
    assert_eq!(rule["enabled"], false, "{rule}");
    send(&server, &alice, &room, reply(&root, "now for everyone")).await;
    assert_eq!(notifications(&server, &bob, &room).await, (4, 1));
}
