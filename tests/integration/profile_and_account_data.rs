//! Profiles and global account data.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn profile_fields() {
    let server = TestServer::start().await;
    let me = server.register("prof", "pw").await;
    let other = server.register("snoop", "pw").await;

    // A new account's display name is its localpart.
    let (status, body) = server
        .get("/_matrix/client/v3/profile/@prof:test.local", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "displayname": "prof" }));

    let base = "/_matrix/client/v3/profile/@prof:test.local";
    let (status, _) = server
        .put(
            &format!("{base}/displayname"),
            Some(&me.token),
            json!({ "displayname": "Professor" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .put(
            &format!("{base}/avatar_url"),
            Some(&me.token),
            json!({ "avatar_url": "mxc://test.local/abc" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.get(&format!("{base}/displayname"), None).await.1,
        json!({ "displayname": "Professor" })
    );
    assert_eq!(
        server
            .get(
                "/_matrix/client/r0/profile/@prof:test.local/avatar_url",
                None
            )
            .await
            .1,
        json!({ "avatar_url": "mxc://test.local/abc" })
    );
    assert_eq!(
        server.get(base, None).await.1,
        json!({ "displayname": "Professor", "avatar_url": "mxc://test.local/abc" })
    );

    // Custom fields (extended profiles) and deleting a field.
    let (status, _) = server
        .put(
            &format!("{base}/m.tz"),
            Some(&me.token),
            json!({ "m.tz": "Europe/Berlin" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.get(&format!("{base}/m.tz"), None).await.1,
        json!({ "m.tz": "Europe/Berlin" })
    );
    let (status, _) = server
        .delete(&format!("{base}/m.tz"), Some(&me.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &server.get(&format!("{base}/m.tz"), None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Only one's own profile can be changed.
    assert_error(
        &server
            .put(
                &format!("{base}/displayname"),
                Some(&other.token),
                json!({ "displayname": "Hacked" }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .put(
                &format!("{base}/displayname"),
                None,
                json!({ "displayname": "Hacked" }),
            )
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    assert_error(
        &server
            .get("/_matrix/client/v3/profile/@nobody:test.local", None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .get(
                "/_matrix/client/v3/profile/@nobody:test.local/displayname",
                None,
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // A profile may not grow past 64 KiB.
    let big = "x".repeat(40_000);
    let (status, _) = server
        .put(
            &format!("{base}/org.example.a"),
            Some(&me.token),
            json!({ "org.example.a": big }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &server
            .put(
                &format!("{base}/org.example.b"),
                Some(&me.token),
                json!({ "org.example.b": big }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_PROFILE_TOO_LARGE",
    );
}

#[tokio::test]
async fn global_account_data() {
    let server = TestServer::start().await;
    let me = server.register("data", "pw").await;
    let other = server.register("nosy", "pw").await;
    let path = "/_matrix/client/v3/user/@data:test.local/account_data/org.example.settings";

    assert_error(
        &server.get(path, Some(&me.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let content = json!({ "theme": "dark", "nested": { "list": [1, 2, 3] } });
    let (status, _) = server.put(path, Some(&me.token), content.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.get(path, Some(&me.token)).await.1, content);
    // Overwrite.
    server
        .put(path, Some(&me.token), json!({ "theme": "light" }))
        .await;
    assert_eq!(
        server.get(path, Some(&me.token)).await.1,
        json!({ "theme": "light" })
    );

    assert_error(
        &server.get(path, Some(&other.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.put(path, Some(&other.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .put(
                "/_matrix/client/v3/user/@data:test.local/account_data/m.fully_read",
                Some(&me.token),
                json!({ "event_id": "$x" }),
            )
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_BAD_JSON",
    );
    assert_error(
        &server.put(path, Some(&me.token), json!([1, 2])).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &server.put(path, Some(&me.token), json!("text")).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn room_account_data_tags_read_markers_and_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let event = server.say(&alice, &room, "hello").await;
    let user = "/_matrix/client/v3/user/@alice:test.local";

    server
        .put(
            &format!("{user}/account_data/m.direct"),
            Some(&alice.token),
            json!({ "@bob:test.local": [room] }),
        )
        .await;
    let (_, first) = server
        .get("/_matrix/client/v3/sync", Some(&alice.token))
        .await;
    let global: Vec<&Value> = first["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(global.iter().any(|e| e["type"] == "m.direct" && e["content"]["@bob:test.local"][0] == room.as_str()), "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Per-room account data.
    let room_data = format!("{user}/rooms/{room}/account_data/org.example.pref");
    assert_error(
        &server.get(&room_data, Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(
        server
            .put(&room_data, Some(&alice.token), json!({ "pinned": true }))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        server.get(&room_data, Some(&alice.token)).await.1,
        json!({ "pinned": true })
    );
    assert_error(
        &server
            .put(
                &format!("{user}/rooms/{room}/account_data/m.fully_read"),
                Some(&alice.token),
                json!({ "event_id": event }),
            )
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_BAD_JSON",
    );

    // Tags.
    let tags = format!("{user}/rooms/{room}/tags");
    assert_eq!(
        server
            .put(
                &format!("{tags}/m.favourite"),
                Some(&alice.token),
                json!({ "order": 0.5 })
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        server
            .put(&format!("{tags}/u.work"), Some(&alice.token), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    let (_, listed) = server.get(&tags, Some(&alice.token)).await;
    assert_eq!(listed["tags"]["m.favourite"]["order"], 0.5);
    assert!(listed["tags"]["u.work"].is_object());
    assert_eq!(
        server
            .delete(&format!("{tags}/u.work"), Some(&alice.token), json!({}))
            .await
            .0,
        StatusCode::OK
    );
    let (_, listed) = server.get(&tags, Some(&alice.token)).await;
    assert!(listed["tags"].get("u.work").is_none());

    // Read markers: the fully-read marker and a receipt.
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/read_markers"),
            Some(&alice.token),
            json!({ "m.fully_read": event, "m.read": event }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The next sync carries exactly the room's changed account data, not the unchanged m.direct.
    let (_, next) = server
        .get(
            &format!("/_matrix/client/v3/sync?since={since}"),
            Some(&alice.token),
        )
        .await;
    assert!(
        next["account_data"]["events"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{next}"
    );
    let joined = &next["rooms"]["join"][&room];
    let types: Vec<&str> = joined["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"org.example.pref")
            && types.contains(&"m.tag")
            && types.contains(&"m.fully_read"),
        "{types:?}"
    );
    let fully_read = joined["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.fully_read")
        .unwrap();
    assert_eq!(fully_read["content"]["event_id"], event.as_str());
    assert!(
        joined["ephemeral"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.receipt")
    );

    let bob = server.register("bob", "pw").await;
    assert_error(
        &server.get(&tags, Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.get(&room_data, Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

/// `m.ignored_user_list`: an ignored user's messages leave the ignorer's timelines (`/sync`,
/// `/messages`, `/context`) but their state events stay; their invites are not shown; they
/// notify no one who ignores them; unignoring shows new messages again.
#[tokio::test]
async fn ignored_users_are_hidden_from_the_ignorer() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let ignore = |users: Value| {
        let (server, bob) = (&server, &bob);
        async move {
            let (status, _) = server
                .put(
                    &format!(
                        "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                        bob.user_id
                    ),
                    Some(&bob.token),
                    json!({ "ignored_users": users }),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    ignore(json!({ alice.user_id.clone(): {} })).await;
    let hidden = server.say(&alice, &room, "you will not see this").await;
    let topic = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(&alice.token),
            json!({ "topic": "state stays" }),
        )
        .await;
    assert_eq!(topic.0, StatusCode::OK);
    let bodies = |events: &Value| -> Vec<String> {
        events
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let sync = server.get_ok("/_matrix/client/v3/sync", &bob).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    assert!(bodies(timeline).is_empty(), "{timeline}");
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.topic"),
        "state events of ignored users stay: {timeline}"
    );
    let counts = &sync["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(
        counts["notification_count"].as_u64().unwrap_or(0),
        0,
        "{counts}"
    );
    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
            &bob,
        )
        .await;
    assert!(bodies(&messages["chunk"]).is_empty(), "{messages}");
    let topic_id = topic.1["event_id"].as_str().unwrap();
    let context = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/context/{topic_id}"),
            &bob,
        )
        .await;
    assert!(bodies(&context["events_before"]).is_empty(), "{context}");
    // Alice's invites to Bob are not shown either.
    let other = server
        .create_room(&alice, json!({ "invite": [bob.user_id] }))
        .await;
    let sync = server.get_ok("/_matrix/client/v3/sync", &bob).await;
    assert!(sync["rooms"]["invite"].get(&other).is_none(), "{sync}");
    let (status, sliding) = server
        .post(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(&bob.token),
            json!({ "lists": { "all": { "ranges": [[0, 20]], "timeline_limit": 1 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sliding}");
    assert!(sliding["rooms"].get(&other).is_none(), "{sliding}");
    assert_eq!(
        sliding["lists"]["all"]["count"], 1,
        "only the shared room: {sliding}"
    );
    // Alice herself sees her messages; unignored, Bob sees new ones.
    let own = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
            &alice,
        )
        .await;
    assert!(
        own["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_id"] == hidden.as_str())
    );
    ignore(json!({})).await;
    server.say(&alice, &room, "visible again").await;
    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
            &bob,
        )
        .await;
    assert!(bodies(&messages["chunk"]).contains(&"visible again".to_owned()));
}
