//! Reports to the admins: an event, a room, a user; kept with reporter, reason and time;
//! the spec's 404s for what the reporter cannot see or what does not exist; rate-limited.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_kept_for_the_admins() {
    // Rate limits on (the defaults).
    let server = TestServer::start_with("").await;
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let private = server
        .create_room(&alice, json!({ "preset": "private_chat" }))
        .await;
    server.join(&bob, &room).await;
    let spam = server.say(&alice, &room, "spam").await;
    let secret = server.say(&alice, &private, "secret").await;

    let ok = |result: (StatusCode, serde_json::Value)| {
        assert_eq!(result.0, StatusCode::OK, "{}", result.1);
        assert_eq!(result.1, json!({}));
    };
    ok(server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/report/{spam}"),
            Some(&bob.token),
            json!({ "reason": "unsolicited", "score": -100 }),
        )
        .await);
    ok(server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/report"),
            Some(&bob.token),
            json!({ "reason": "" }),
        )
        .await);
    ok(server
        .post(
            &format!("/_matrix/client/v3/users/{}/report", alice.user_id),
            Some(&bob.token),
            json!({ "reason": "x".repeat(10_000) }),
        )
        .await);
    let reports = server.services().reports().unwrap();
    assert_eq!(reports.len(), 3);
    let first = serde_json::to_value(&reports[0]).unwrap();
    assert_eq!(first["kind"], "event");
    assert_eq!(first["event_id"], spam.as_str());
    assert_eq!(first["room_id"], room.as_str());
    assert_eq!(first["reporter"], bob.user_id.as_str());
    assert_eq!(first["reason"], "unsolicited");
    let second = serde_json::to_value(&reports[1]).unwrap();
    assert_eq!(second["kind"], "room");
    let third = serde_json::to_value(&reports[2]).unwrap();
    assert_eq!(
        (third["kind"].as_str(), third["user_id"].as_str()),
        (Some("user"), Some(alice.user_id.as_str()))
    );
    assert_eq!(
        third["reason"].as_str().unwrap().len(),
        4096,
        "long reasons are cut"
    );

    // What Bob cannot see, and what does not exist: 404, nothing kept.
    for path in [
        format!("/_matrix/client/v3/rooms/{private}/report/{secret}"),
        format!("/_matrix/client/v3/rooms/{room}/report/$nothing:test.local"),
        format!("/_matrix/client/v3/rooms/{room}/report/{secret}"),
        "/_matrix/client/v3/rooms/!nowhere:test.local/report".to_owned(),
        "/_matrix/client/v3/users/@nobody:test.local/report".to_owned(),
    ] {
        let answer = server
            .post(&path, Some(&bob.token), json!({ "reason": "r" }))
            .await;
        assert_error(&answer, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    // A reason must be text; reports need a user.
    let bad_reason = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/report"),
            Some(&bob.token),
            json!({ "reason": 5 }),
        )
        .await;
    assert_error(&bad_reason, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let anonymous = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/report"),
            None,
            json!({ "reason": "r" }),
        )
        .await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    assert_eq!(server.services().reports().unwrap().len(), 3);

    // A flood of reports is slowed down.
    let mut limited = false;
    for _ in 0..30 {
        let answer = server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/report"),
                Some(&bob.token),
                json!({ "reason": "again" }),
            )
            .await;
        if answer.0 == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.1["errcode"], "M_LIMIT_EXCEEDED");
            limited = true;
            break;
        }
        assert_eq!(answer.0, StatusCode::OK);
    }
    assert!(limited, "thirty reports in a row pass");
}
