//! Peeking into `world_readable` rooms and the legacy views of one room: `/events?room_id=`
//! (waits for new events like `/sync`), `/rooms/{id}/initialSync`, and `/messages` and
//! `/state` for someone who is not a member.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, assert_error};

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn anyone_may_peek_into_a_world_readable_room() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let open = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "world_readable" } }] }),
        )
        .await;
    let closed = server.create_room(&alice, json!({})).await;
    server.say(&alice, &open, "one").await;
    server.say(&alice, &closed, "secret").await;

    // Bob is in neither room: the world-readable one he may read.
    let sync = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{open}/initialSync"),
            &bob,
        )
        .await;
    assert_eq!(sync["room_id"], open.as_str());
    assert_eq!(bodies(&sync["messages"]["chunk"]), vec!["one"], "{sync}");
    assert!(sync["messages"]["start"].is_string() && sync["messages"]["end"].is_string());
    assert!(sync.get("membership").is_none(), "{sync}");
    assert!(
        sync["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create"),
        "{sync}"
    );
    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{open}/messages?dir=b"),
            &bob,
        )
        .await;
    assert_eq!(bodies(&messages["chunk"]), vec!["one"]);
    server
        .get_ok(&format!("/_matrix/client/v3/rooms/{open}/state"), &bob)
        .await;

    // `/events`: nothing new at once, then a new message wakes a waiting call.
    let now = server
        .get_ok(
            &format!("/_matrix/client/v3/events?room_id={open}&timeout=0"),
            &bob,
        )
        .await;
    assert_eq!(now["chunk"], json!([]), "{now}");
    let end = now["end"].as_str().expect("end").to_owned();
    let waiting = {
        let (base, token, open) = (server.base.clone(), bob.token.clone(), open.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!(
                    "{base}/_matrix/client/v3/events?room_id={open}&from={end}&timeout=10000"
                ))
                .bearer_auth(token)
                .send()
                .await
                .expect("events")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.say(&alice, &open, "two").await;
    let woken = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken before its timeout")
        .expect("task");
    assert_eq!(bodies(&woken["chunk"]), vec!["two"], "{woken}");

    // The other room stays closed to him, in every view.
    for path in [
        format!("/_matrix/client/v3/rooms/{closed}/initialSync"),
        format!("/_matrix/client/v3/events?room_id={closed}&timeout=0"),
        format!("/_matrix/client/v3/rooms/{closed}/messages?dir=b"),
        format!("/_matrix/client/v3/rooms/{closed}/state"),
    ] {
        assert_error(
            &server.get(&path, Some(&bob.token)).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
    // A member's view says so.
    let own = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{closed}/initialSync"),
            &alice,
        )
        .await;
    assert_eq!(own["membership"], "join");
    assert_eq!(bodies(&own["messages"]["chunk"]), vec!["secret"]);
    // Bad input.
    let missing = server
        .get("/_matrix/client/v3/events", Some(&bob.token))
        .await;
    assert_eq!(missing.0, StatusCode::BAD_REQUEST, "{}", missing.1);
    assert_error(
        &server
            .get(
                &format!("/_matrix/client/v3/events?room_id={open}&from=junk"),
                Some(&bob.token),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}
