//! Delayed events (MSC4140): scheduled with `/send` and `/state`, listed, restarted, cancelled
//! and sent early; sent on time, after a restart, and after `kill -9`; a state change by
//! someone else cancels a pending delayed state event, the owner's own does not.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, eventually};

const UNSTABLE: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";
const CONFIG: &str = "rate_limits = { enabled = false }\nmax_event_delay_duration = \"10m\"";

async fn send_delayed(
    server: &TestServer,
    who: &Session,
    room: &str,
    txn: &str,
    delay: &str,
    body: &str,
) -> (StatusCode, Value) {
    let path = format!(
        "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}?org.matrix.msc4140.delay={delay}"
    );
    server
        .put(
            &path,
            Some(&who.token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await
}

async fn schedule(
    server: &TestServer,
    who: &Session,
    room: &str,
    txn: &str,
    delay_ms: u64,
    body: &str,
) -> String {
    let (status, answer) = send_delayed(server, who, room, txn, &delay_ms.to_string(), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["delay_id"].as_str().expect("a delay_id").to_owned()
}

/// The message bodies of the room's latest events, newest first.
async fn recent_bodies(server: &TestServer, who: &Session, room: &str) -> Vec<String> {
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50");
    let page = server.get_ok(&path, who).await;
    crate::common::message_bodies(&page["chunk"])
}

async fn delay_ids(server: &TestServer, who: &Session) -> Vec<String> {
    let listed = server.get_ok(UNSTABLE, who).await;
    listed["delayed_events"]
        .as_array()
        .expect("delayed_events")
        .iter()
        .map(|e| e["delay_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The user's finalised delayed events, latest first.
async fn finalised(server: &TestServer, who: &Session) -> Vec<Value> {
    let listed = server
        .get_ok(&format!("{UNSTABLE}?status=finalised"), who)
        .await;
    listed["delayed_events"]
        .as_array()
        .expect("delayed_events")
        .clone()
}

async fn update(server: &TestServer, token: Option<&str>, id: &str, action: &str) -> StatusCode {
    server
        .post(&format!("{UNSTABLE}/{id}/{action}"), token, json!({}))
        .await
        .0
}

#[tokio::test]
async fn delayed_messages_are_sent_listed_restarted_cancelled_and_sent_early() {
    let server = TestServer::start_with(CONFIG).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let (_, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);

    // Scheduled: listed with its content and delay; a retried transaction gets the same ID.
    let soon = schedule(&server, &alice, &room, "t1", 700, "soon").await;
    assert_eq!(
        schedule(&server, &alice, &room, "t1", 700, "soon").await,
        soon
    );
    let listed = server.get_ok(UNSTABLE, &alice).await;
    let entry = &listed["delayed_events"][0];
    assert_eq!(entry["delay_id"], soon.as_str(), "{listed}");
    assert_eq!(entry["room_id"], room.as_str());
    assert_eq!(entry["type"], "m.room.message");
    assert_eq!(entry["content"]["body"], "soon");
    assert_eq!(entry["delay"], 700);
    assert_eq!(entry["delay_ms"], 700);
    assert!(entry.get("state_key").is_none());
    let one = server.get_ok(&format!("{UNSTABLE}/{soon}"), &alice).await;
    assert_eq!(one["delayed_event"]["delay_id"], soon.as_str());
    // Someone else's delayed events are not theirs to see.
    assert_error(
        &server
            .get(&format!("{UNSTABLE}/{soon}"), Some(&bob.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert!(delay_ids(&server, &bob).await.is_empty());
    assert!(
        !recent_bodies(&server, &alice, &room)
            .await
            .contains(&"soon".to_owned()),
        "not sent before its time"
    );

    // Sent on time, once; then gone from the list, and its ID unknown.
    server.wait_for_message(&alice, &room, "soon").await;
    eventually("the sent event to leave the list", || async {
        delay_ids(&server, &alice).await.is_empty()
    })
    .await;
    let bodies = recent_bodies(&server, &alice, &room).await;
    assert_eq!(
        bodies.iter().filter(|b| *b == "soon").count(),
        1,
        "{bodies:?}"
    );
    assert_eq!(
        update(&server, None, &soon, "restart").await,
        StatusCode::NOT_FOUND
    );
    let sent = &finalised(&server, &alice).await[0];
    assert_eq!(sent["delay_id"], soon.as_str(), "{sent}");
    assert!(
        sent["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('$'))
    );
    assert!(sent["finalised_ts"].is_u64());

    // Cancelled (matrix-js-sdk's form: the action in the body, with the token): never sent.
    let never = schedule(&server, &alice, &room, "t2", 60_000, "never").await;
    let (status, _) = server
        .post(
            &format!("{UNSTABLE}/{never}"),
            Some(&alice.token),
            json!({ "action": "cancel" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(delay_ids(&server, &alice).await.is_empty());
    assert_eq!(
        update(&server, None, &never, "send").await,
        StatusCode::NOT_FOUND
    );
    let latest = &finalised(&server, &alice).await[0];
    assert_eq!(latest["delay_id"], never.as_str());
    assert!(latest["error"]["errcode"].is_string() && latest.get("event_id").is_none());

    // Sent early, by its delay ID alone (no token: how a call's SFU does it).
    let early = schedule(&server, &alice, &room, "t3", 60_000, "early").await;
    assert_eq!(update(&server, None, &early, "send").await, StatusCode::OK);
    assert!(
        recent_bodies(&server, &alice, &room)
            .await
            .contains(&"early".to_owned())
    );
    assert!(delay_ids(&server, &alice).await.is_empty());

    // Restarted: the timer starts again from the restart.
    let restarted = schedule(&server, &alice, &room, "t4", 3_000, "restarted").await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        update(&server, None, &restarted, "restart").await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert!(
        !recent_bodies(&server, &alice, &room)
            .await
            .contains(&"restarted".to_owned()),
        "not sent at its first deadline after a restart"
    );
    server.wait_for_message(&alice, &room, "restarted").await;

    // Bad input.
    for delay in ["0", "-5", "soon", ""] {
        assert_error(
            &send_delayed(&server, &alice, &room, &format!("bad{delay}"), delay, "x").await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    let (status, too_long) = send_delayed(&server, &alice, &room, "long", "600001", "x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{too_long}");
    assert_eq!(too_long["errcode"], "M_UNKNOWN");
    assert_eq!(
        too_long["org.matrix.msc4140.errcode"],
        "M_MAX_DELAY_EXCEEDED"
    );
    assert_eq!(too_long["org.matrix.msc4140.max_delay"], 600_000);
    // Not in the room: refused.
    assert_error(
        &send_delayed(&server, &bob, &room, "b1", "1000", "x").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .post(
                &format!("{UNSTABLE}/{restarted}"),
                Some(&alice.token),
                json!({ "action": "explode" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_eq!(
        update(&server, None, "cvd_nothing", "cancel").await,
        StatusCode::NOT_FOUND
    );
    assert_error(
        &server.get(UNSTABLE, None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    assert!(
        delay_ids(&server, &alice).await.is_empty(),
        "nothing half-stored"
    );
    assert_error(
        &server
            .get(&format!("{UNSTABLE}?status=pending"), Some(&alice.token))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // What became of them is kept for the latest 50 only.
    for i in 0..55 {
        let id = schedule(&server, &alice, &room, &format!("many{i}"), 60_000, "many").await;
        assert_eq!(update(&server, None, &id, "cancel").await, StatusCode::OK);
    }
    assert_eq!(finalised(&server, &alice).await.len(), 50);
}

#[tokio::test]
async fn a_state_change_by_someone_else_cancels_a_delayed_state_event() {
    let server = TestServer::start_with(CONFIG).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "power_level_content_override": { "users": { bob.user_id.clone(): 100 } },
            }),
        )
        .await;
    server.join(&bob, &room).await;
    let state_path = format!(
        "/_matrix/client/v3/rooms/{room}/state/org.matrix.msc3401.call.member/_{}_DEV_m.call",
        alice.user_id
    );
    let delayed_path = format!("{state_path}?org.matrix.msc4140.delay=60000");

    // Element Call's order: the delayed leave first, then the join by the same user.
    let (status, leave) = server
        .put(&delayed_path, Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{leave}");
    let leave = leave["delay_id"].as_str().unwrap().to_owned();
    let listed = server.get_ok(UNSTABLE, &alice).await;
    assert_eq!(
        listed["delayed_events"][0]["state_key"],
        format!("_{}_DEV_m.call", alice.user_id)
    );
    let (status, _) = server
        .put(
            &state_path,
            Some(&alice.token),
            json!({ "application": "m.call" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        delay_ids(&server, &alice).await,
        vec![leave.clone()],
        "the owner's own change keeps it"
    );

    // Sent by its ID: the leave replaces the join.
    assert_eq!(update(&server, None, &leave, "send").await, StatusCode::OK);
    let current = server.get_ok(&state_path, &alice).await;
    assert_eq!(current, json!({}));

    // Someone else's change to the same state cancels it.
    let (_, pending) = server
        .put(&delayed_path, Some(&alice.token), json!({}))
        .await;
    let pending = pending["delay_id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .put(
            &state_path,
            Some(&bob.token),
            json!({ "overwritten": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(delay_ids(&server, &alice).await.is_empty());
    assert_eq!(
        update(&server, None, &pending, "send").await,
        StatusCode::NOT_FOUND
    );
    let cancelled = &finalised(&server, &alice).await[0];
    assert_eq!(cancelled["delay_id"], pending.as_str());
    assert_eq!(
        cancelled["error"]["org.matrix.msc4140.errcode"],
        "M_CANCELLED_BY_STATE_UPDATE"
    );
    let current = server.get_ok(&state_path, &alice).await;
    assert_eq!(current, json!({ "overwritten": true }));
}

#[tokio::test]
async fn delayed_events_are_sent_after_a_restart_and_after_kill_9() {
    // A graceful restart: the overdue event is sent at once when the server is back.
    let server = TestServer::start_with(CONFIG).await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    schedule(&server, &alice, &room, "r1", 1_000, "after restart").await;
    schedule(&server, &alice, &room, "r2", 600_000, "much later").await;
    let server = server.restart().await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    server
        .wait_for_message(&alice, &room, "after restart")
        .await;
    assert_eq!(
        delay_ids(&server, &alice).await.len(),
        1,
        "the later one is still scheduled"
    );

    // kill -9 right after the 200: the scheduled event is sent by the next process.
    let dir = tempfile::TempDir::new().unwrap();
    let port = crate::persistence::free_port();
    let mut child = crate::persistence::spawn_binary_with(dir.path(), port, CONFIG).await;
    let http = reqwest::Client::new();
    let session = child.register(&http, "k").await;
    let token = session.token.clone();
    let room = child.create_room(&http, &session).await;
    let response = http
        .put(format!(
            "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/k1?org.matrix.msc4140.delay=1500",
            child.base
        ))
        .bearer_auth(&token)
        .json(&json!({ "msgtype": "m.text", "body": "survives" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    child.child.kill().expect("SIGKILL");
    child.child.wait().unwrap();
    drop(child);

    let child = crate::persistence::spawn_binary_with(dir.path(), port, CONFIG).await;
    eventually(
        "the delayed event to be sent by the restarted server",
        || async {
            let page: Value = http
                .get(format!(
                    "{}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20",
                    child.base
                ))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            crate::common::message_bodies(&page["chunk"]) == vec!["survives".to_owned()]
        },
    )
    .await;
}

#[tokio::test]
async fn delayed_events_can_be_turned_off() {
    let server =
        TestServer::start_with("rate_limits = { enabled = false }\nmax_event_delay_duration = 0")
            .await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let (_, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], false);
    assert_error(
        &send_delayed(&server, &alice, &room, "off", "1000", "x").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert!(
        recent_bodies(&server, &alice, &room).await.is_empty(),
        "nothing sent at once"
    );
}

/// Restart, cancel and send take the delay ID as the credential: they are rate-limited, per
/// user or (without a token) per client address, so IDs cannot be guessed at speed.
#[tokio::test]
async fn updates_by_delay_id_are_rate_limited() {
    let server = TestServer::start_with("max_event_delay_duration = \"10m\"").await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        statuses.push(update(&server, None, &format!("cvd_guess{i}"), "cancel").await);
    }
    assert_eq!(statuses[0], StatusCode::NOT_FOUND);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

/// At most 100 scheduled delayed events per user: the 101st is refused with a time to retry,
/// and one more may be scheduled once one of them ends.
#[tokio::test]
async fn a_user_may_schedule_a_hundred_delayed_events() {
    let server = TestServer::start_with(CONFIG).await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let mut first = None;
    for i in 0..100 {
        let id = schedule(&server, &alice, &room, &format!("n{i}"), 600_000, "later").await;
        first.get_or_insert(id);
    }
    let refused = send_delayed(&server, &alice, &room, "n100", "600000", "later").await;
    assert_error(&refused, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    assert!(
        refused.1["retry_after_ms"].as_u64().is_some(),
        "{}",
        refused.1
    );
    assert_eq!(delay_ids(&server, &alice).await.len(), 100);
    let first = first.unwrap();
    assert_eq!(
        update(&server, None, &first, "cancel").await,
        StatusCode::OK
    );
    schedule(&server, &alice, &room, "n101", 600_000, "later").await;
}
