//! Application services, against the fake appservice of `appservice.rs`: the ping, user and
//! alias queries, third-party lookups, timestamp massaging and the per-network room directory.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    appservice::{AS_TOKEN, Setup, as_user, bridged_room, registration, setup, setup_with},
    common::{assert_error, urlencode},
};

#[tokio::test]
async fn ping_reaches_the_appservice_or_says_why_not() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let Setup { server, fake, _dir } = setup_with(&[
        (
            "nourl.yaml",
            registration("nourl", "null", "as-n", "hs-n", "nourlbot")
                .replace("'@irc_.*:test\\.local'", "'@nourl_.*'")
                .replace("'#irc_.*:test\\.local'", "'#nourl_.*'"),
        ),
        (
            "down.yaml",
            registration(
                "down",
                &format!("http://127.0.0.1:{closed}"),
                "as-d",
                "hs-d",
                "downbot",
            )
            .replace("'@irc_.*:test\\.local'", "'@down_.*'")
            .replace("'#irc_.*:test\\.local'", "'#down_.*'"),
        ),
    ])
    .await;
    let (status, body) = server
        .post(
            "/_matrix/client/v1/appservice/fake/ping",
            Some(AS_TOKEN),
            json!({ "transaction_id": "ping-1" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    assert_eq!(fake.pings.lock().unwrap()[0]["transaction_id"], "ping-1");

    let wrong_id = server
        .post(
            "/_matrix/client/v1/appservice/other/ping",
            Some(AS_TOKEN),
            json!({}),
        )
        .await;
    assert_error(&wrong_id, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let alice = server.register("alice", "pw-alice-1").await;
    let not_as = server
        .post(
            "/_matrix/client/v1/appservice/fake/ping",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_error(&not_as, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let no_url = server
        .post(
            "/_matrix/client/v1/appservice/nourl/ping",
            Some("as-n"),
            json!({}),
        )
        .await;
    assert_error(&no_url, StatusCode::BAD_REQUEST, "M_URL_NOT_SET");
    let down = server
        .post(
            "/_matrix/client/v1/appservice/down/ping",
            Some("as-d"),
            json!({}),
        )
        .await;
    assert_error(&down, StatusCode::BAD_GATEWAY, "M_CONNECTION_FAILED");
    // A user query to an appservice that does not answer: 408, as the spec says.
    let timeout = server
        .get(
            &format!(
                "/_matrix/client/v3/profile/{}",
                urlencode("@down_someone:test.local")
            ),
            Some(&alice.token),
        )
        .await;
    assert_error(&timeout, StatusCode::REQUEST_TIMEOUT, "M_UNKNOWN");
}

#[tokio::test]
async fn unknown_users_and_aliases_in_a_namespace_are_asked_for() {
    let Setup { server, fake, _dir } = setup().await;
    let alice = server.register("alice", "pw-alice-1").await;
    // A profile lookup of a ghost the bridge has not created yet: it is asked, creates it.
    let profile = server
        .get(
            &format!(
                "/_matrix/client/v3/profile/{}",
                urlencode("@irc_newbie:test.local")
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(profile.0, StatusCode::OK, "{}", profile.1);
    assert_eq!(
        fake.user_queries.lock().unwrap().as_slice(),
        ["@irc_newbie:test.local"]
    );
    // Inviting one at room creation works the same way.
    let room = server
        .create_room(&alice, json!({ "invite": ["@irc_newcomer:test.local"] }))
        .await;
    assert!(!room.is_empty());
    // A user the bridge does not know stays unknown.
    let unknown = server
        .get(
            &format!(
                "/_matrix/client/v3/profile/{}",
                urlencode("@irc_ghost:test.local")
            ),
            Some(&alice.token),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    // Users outside every namespace are never asked about.
    let before = fake.user_queries.lock().unwrap().len();
    let _ = server
        .get(
            &format!(
                "/_matrix/client/v3/profile/{}",
                urlencode("@nobody:test.local")
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(fake.user_queries.lock().unwrap().len(), before);

    // An unknown alias in the namespace: the bridge creates the room, then it resolves.
    let alias = urlencode("#irc_lobby:test.local");
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v3/directory/room/{alias}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["room_id"].is_string());
    // And joining by an alias works too.
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/join/{alias}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let missing = server
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                urlencode("#elsewhere:test.local")
            ),
            Some(&alice.token),
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

#[tokio::test]
async fn third_party_lookups_go_to_the_appservice_of_the_protocol() {
    let Setup { server, _dir, .. } = setup().await;
    let alice = server.register("alice", "pw-alice-1").await;
    let protocols = server
        .get_ok("/_matrix/client/v3/thirdparty/protocols", &alice)
        .await;
    let irc = &protocols["irc"];
    assert_eq!(irc["icon"], "mxc://example.org/irc", "{protocols}");
    assert_eq!(irc["instances"][0]["network_id"], "libera");
    assert!(irc["instances"][0]["instance_id"].is_string());
    let one = server
        .get_ok("/_matrix/client/v3/thirdparty/protocol/irc", &alice)
        .await;
    assert_eq!(one["user_fields"][1], "nickname");
    let unknown = server
        .get(
            "/_matrix/client/v3/thirdparty/protocol/xmpp",
            Some(&alice.token),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let users = server
        .get_ok(
            "/_matrix/client/v3/thirdparty/user/irc?nickname=alice",
            &alice,
        )
        .await;
    assert_eq!(users[0]["userid"], "@irc_alice:test.local", "{users}");
    let none = server
        .get(
            "/_matrix/client/v3/thirdparty/location/irc?channel=%23x",
            Some(&alice.token),
        )
        .await;
    assert_error(&none, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

#[tokio::test]
async fn appservices_may_date_their_events_and_publish_rooms_per_network() {
    let Setup { server, _dir, .. } = setup().await;
    let (alice, room) = bridged_room(&server).await;
    let (status, body) = server
        .put(
            &format!(
                "{}&ts=1234567890",
                as_user(
                    &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/old1"),
                    "@irc_bob:test.local"
                )
            ),
            Some(AS_TOKEN),
            json!({ "msgtype": "m.text", "body": "from the past" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event_id = body["event_id"].as_str().unwrap();
    let event = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"),
            &alice,
        )
        .await;
    assert_eq!(event["origin_server_ts"], 1234567890);
    // State events too (in a room of the appservice's sender).
    let (status, body) = server
        .post("/_matrix/client/v3/createRoom", Some(AS_TOKEN), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let own = body["room_id"].as_str().unwrap().to_owned();
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{own}/state/m.room.topic/?ts=1234"),
            Some(AS_TOKEN),
            json!({ "topic": "old topic" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, event) = server
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{own}/event/{}",
                body["event_id"].as_str().unwrap()
            ),
            Some(AS_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["origin_server_ts"], 1234);
    // A normal user's `ts` is ignored.
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/n1?ts=1234"),
            Some(&alice.token),
            json!({ "msgtype": "m.text", "body": "now" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event_id = body["event_id"].as_str().unwrap();
    let event = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"),
            &alice,
        )
        .await;
    assert!(event["origin_server_ts"].as_u64().unwrap() > 1_600_000_000_000);

    // The per-network room directory: appservices only.
    let path = format!("/_matrix/client/v3/directory/list/appservice/libera/{room}");
    let refused = server
        .put(&path, Some(&alice.token), json!({ "visibility": "public" }))
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let (status, body) = server
        .put(&path, Some(AS_TOKEN), json!({ "visibility": "public" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let public = server
        .get_ok("/_matrix/client/v3/publicRooms", &alice)
        .await;
    assert!(
        public["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == room.as_str()),
        "{public}"
    );
}
