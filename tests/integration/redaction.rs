//! Redaction: who may redact, and that the content is gone from storage.

use reqwest::StatusCode;
use ruma::EventId;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

async fn redact(
    server: &TestServer,
    who: &Session,
    room: &str,
    event: &str,
    txn: &str,
) -> (StatusCode, Value) {
    let path = format!("/_matrix/client/v3/rooms/{room}/redact/{event}/{txn}");
    server
        .put(&path, Some(&who.token), json!({ "reason": "oops" }))
        .await
}

fn stored_content(server: &TestServer, event: &str) -> Value {
    let pdu = server
        .services()
        .timeline
        .pdu_json(&EventId::parse(event).unwrap())
        .unwrap()
        .unwrap();
    pdu["content"].clone().into()
}

#[tokio::test]
async fn redaction_permissions_and_erasure() {
    for version in ["11", "12"] {
        let server = TestServer::start().await;
        let alice = server.register("alice", "pw").await;
        let bob = server.register("bob", "pw").await;
        let (_, created) = server
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&alice.token),
                json!({ "preset": "public_chat", "room_version": version }),
            )
            .await;
        let room = created["room_id"].as_str().unwrap().to_owned();
        server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(&bob.token),
                json!({}),
            )
            .await;
        let alices = server.say(&alice, &room, "alice-secret").await;
        let oops = server.say(&bob, &room, "bob-oops").await;
        let other = server.say(&bob, &room, "bob-other").await;

        // Read before the redaction: the server keeps recently read events parsed, and a
        // redaction must not leave the old copy there.
        assert_eq!(stored_content(&server, &oops)["body"], "bob-oops");
        let event_path = format!("/_matrix/client/v3/rooms/{room}/event/{oops}");
        let (_, before) = server.get(&event_path, Some(&alice.token)).await;
        assert_eq!(before["content"]["body"], "bob-oops", "{before}");

        // Bob may redact his own message, not Alice's.
        let (status, first) = redact(&server, &bob, &room, &oops, "r1").await;
        assert_eq!(status, StatusCode::OK, "{version}: {first}");
        let (_, again) = redact(&server, &bob, &room, &oops, "r1").await;
        assert_eq!(
            again["event_id"], first["event_id"],
            "idempotent per transaction"
        );
        assert_eq!(
            stored_content(&server, &oops),
            json!({}),
            "{version}: the content is gone from storage"
        );
        let (_, after) = server.get(&event_path, Some(&alice.token)).await;
        assert_eq!(after["content"], json!({}), "{version}: {after}");
        assert_error(
            &redact(&server, &bob, &room, &alices, "r2").await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        assert_eq!(stored_content(&server, &alices)["body"], "alice-secret");

        // Alice (power 100 in v11, creator in v12) may redact Bob's.
        let (status, _) = redact(&server, &alice, &room, &other, "r3").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stored_content(&server, &other), json!({}));

        // Clients see the redacted event and the redaction.
        let (_, page) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10"),
                Some(&bob.token),
            )
            .await;
        let chunk = page["chunk"].as_array().unwrap();
        let redacted = chunk
            .iter()
            .find(|e| e["event_id"] == oops.as_str())
            .unwrap();
        assert_eq!(redacted["content"], json!({}));
        assert!(
            redacted["unsigned"]["redacted_because"].is_object(),
            "{redacted}"
        );
        let redaction = chunk
            .iter()
            .find(|e| e["event_id"] == first["event_id"])
            .unwrap();
        assert_eq!(redaction["type"], "m.room.redaction");
        assert_eq!(redaction["redacts"], oops.as_str());

        assert_error(
            &redact(&server, &alice, &room, "$doesnotexist", "r4").await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
}

/// A redaction sent through `PUT /send/m.room.redaction` (spec v1.18, MSC4169), in a room
/// version that keeps `redacts` at the top level (10) and one that keeps it in the content
/// (11): the target is redacted either way, with the same permission rules as `/redact`.
#[tokio::test]
async fn redactions_may_be_sent_like_any_event() {
    for version in ["10", "11"] {
        let server = TestServer::start_with("rate_limits = { enabled = false }").await;
        let alice = server.register("alice", "pw").await;
        let bob = server.register("bob", "pw").await;
        let (_, created) = server
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&alice.token),
                json!({ "preset": "public_chat", "room_version": version }),
            )
            .await;
        let room = created["room_id"].as_str().unwrap().to_owned();
        server.join(&bob, &room).await;
        let target = server.say(&bob, &room, "to be redacted").await;
        let alices = server.say(&alice, &room, "alice's own").await;
        let send = |who: &Session, txn: &str, content: Value| {
            let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.redaction/{txn}");
            let token = who.token.clone();
            let server = &server;
            async move { server.put(&path, Some(&token), content).await }
        };
        let (status, sent) = send(&bob, "r1", json!({ "redacts": target, "reason": "oops" })).await;
        assert_eq!(status, StatusCode::OK, "{version}: {sent}");
        assert!(
            stored_content(&server, &target).get("body").is_none(),
            "{version}"
        );
        let redaction = server
            .get_ok(
                &format!(
                    "/_matrix/client/v3/rooms/{room}/event/{}",
                    sent["event_id"].as_str().unwrap()
                ),
                &alice,
            )
            .await;
        let redacts = if version == "10" {
            &redaction["redacts"]
        } else {
            &redaction["content"]["redacts"]
        };
        assert_eq!(redacts, target.as_str(), "{version}: {redaction}");
        assert_eq!(redaction["content"]["reason"], "oops");
        // Bob may not redact Alice's message; a redaction without `redacts` is malformed.
        assert_error(
            &send(&bob, "r2", json!({ "redacts": alices })).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        let missing = send(&bob, "r3", json!({ "reason": "no target" })).await;
        assert_eq!(missing.0, StatusCode::BAD_REQUEST, "{}", missing.1);
    }
}
