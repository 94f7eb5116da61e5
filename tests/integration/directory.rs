//! Room aliases: createRoom's room_alias_name, the directory endpoints, joining by alias.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn aliases_from_creation_to_deletion() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (status, created) = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "preset": "public_chat", "room_alias_name": "lounge" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();

    // The alias resolves, is the canonical alias, and lets Bob join by it.
    let (status, resolved) = server
        .get(
            "/_matrix/client/v3/directory/room/%23lounge:test.local",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        resolved,
        json!({ "room_id": room, "servers": ["test.local"] })
    );
    let (_, canonical) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(canonical["alias"], "#lounge:test.local");
    let (status, joined) = server
        .post(
            "/_matrix/client/v3/join/%23lounge:test.local",
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], room.as_str());

    // Taken names are refused, at creation and in the directory.
    assert_error(
        &server
            .post(
                "/_matrix/client/v3/createRoom",
                Some(&bob.token),
                json!({ "room_alias_name": "lounge" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_ROOM_IN_USE",
    );
    let put = |alias: &str| format!("/_matrix/client/v3/directory/room/{alias}");
    assert_error(
        &server
            .put(
                &put("%23lounge:test.local"),
                Some(&bob.token),
                json!({ "room_id": room }),
            )
            .await,
        StatusCode::CONFLICT,
        "M_UNKNOWN",
    );
    // Bob (a member) adds another alias; another server's alias is refused.
    assert_eq!(
        server
            .put(
                &put("%23bobs:test.local"),
                Some(&bob.token),
                json!({ "room_id": room })
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &server
            .put(
                &put("%23x:elsewhere.org"),
                Some(&bob.token),
                json!({ "room_id": room }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (_, aliases) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/aliases"),
            Some(&bob.token),
        )
        .await;
    let mut list: Vec<&str> = aliases["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    list.sort();
    assert_eq!(list, vec!["#bobs:test.local", "#lounge:test.local"]);

    // Only the creator, an admin or a moderator may delete: Bob may not delete Alice's.
    assert_error(
        &server
            .delete(&put("%23lounge:test.local"), Some(&bob.token), json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(
        server
            .delete(&put("%23bobs:test.local"), Some(&bob.token), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &server
            .get("/_matrix/client/v3/directory/room/%23bobs:test.local", None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .delete(&put("%23bobs:test.local"), Some(&bob.token), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}
