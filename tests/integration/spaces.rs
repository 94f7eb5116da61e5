//! Spaces: the client `/hierarchy` walks a space's children depth-first, shows each user only
//! the rooms they may see, pages, honours `max_depth` and `suggested_only`, and asks another
//! server about a child it hosts.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

async fn add_child(
    server: &TestServer,
    who: &Session,
    space: &str,
    child: &str,
    via: &str,
    extra: Value,
) {
    let mut content = json!({ "via": [via] });
    for (k, v) in extra.as_object().unwrap() {
        content[k] = v.clone();
    }
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}"),
            Some(&who.token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn hierarchy(server: &TestServer, who: &Session, space: &str, query: &str) -> Value {
    server
        .get_ok(
            &format!("/_matrix/client/v1/rooms/{space}/hierarchy{query}"),
            who,
        )
        .await
}

fn room_ids(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchy_walks_the_rooms_each_user_may_see() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    let here = "test.local";
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let carol = server.register("carol", "carol-password-1").await;
    let space = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Space", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let public = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Public" }))
        .await;
    let private = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Private" }),
        )
        .await;
    let restricted = server
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Members only", "room_version": "10",
                    "initial_state": [{ "type": "m.room.join_rules", "state_key": "",
                        "content": { "join_rule": "restricted",
                                     "allow": [{ "type": "m.room_membership", "room_id": space }] } }] }),
        )
        .await;
    let subspace = server
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Sub", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let deep = server
        .create_room(&alice, json!({ "preset": "public_chat", "name": "Deep" }))
        .await;
    add_child(
        &server,
        &alice,
        &space,
        &public,
        here,
        json!({ "order": "b", "suggested": true }),
    )
    .await;
    add_child(
        &server,
        &alice,
        &space,
        &private,
        here,
        json!({ "order": "c" }),
    )
    .await;
    add_child(
        &server,
        &alice,
        &space,
        &restricted,
        here,
        json!({ "order": "a" }),
    )
    .await;
    add_child(&server, &alice, &space, &subspace, here, json!({})).await;
    add_child(
        &server,
        &alice,
        &subspace,
        &deep,
        here,
        json!({ "suggested": true }),
    )
    .await;
    // A removed child (no `via`) is no child.
    let gone = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{gone}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.join(&bob, &space).await;

    // Bob is in the space: the restricted room is his to see, the private one is not.
    let bobs = hierarchy(&server, &bob, &space, "").await;
    assert_eq!(
        room_ids(&bobs),
        vec![
            space.clone(),
            restricted.clone(),
            public.clone(),
            subspace.clone(),
            deep.clone()
        ],
        "{bobs}"
    );
    let top = &bobs["rooms"][0];
    assert_eq!(top["name"], "Space");
    assert_eq!(top["room_type"], "m.space");
    assert_eq!(top["children_state"].as_array().unwrap().len(), 4, "{top}");
    assert_eq!(top["children_state"][0]["type"], "m.space.child");
    assert!(top["children_state"][0]["origin_server_ts"].is_u64());
    assert_eq!(bobs["rooms"][1]["join_rule"], "restricted");
    assert_eq!(bobs["rooms"][1]["allowed_room_ids"], json!([space]));
    assert_eq!(bobs["rooms"][2]["children_state"], json!([]));
    assert!(bobs.get("next_batch").is_none());
    // Carol is in nothing: public rooms only.
    let carols = hierarchy(&server, &carol, &space, "").await;
    assert_eq!(
        room_ids(&carols),
        vec![
            space.clone(),
            public.clone(),
            subspace.clone(),
            deep.clone()
        ]
    );
    // Alice, member everywhere, sees all; depth and suggestions narrow the walk.
    let all = hierarchy(&server, &alice, &space, "").await;
    assert_eq!(all["rooms"].as_array().unwrap().len(), 6);
    let shallow = hierarchy(&server, &alice, &space, "?max_depth=1").await;
    assert!(!room_ids(&shallow).contains(&deep));
    assert_eq!(shallow["rooms"].as_array().unwrap().len(), 5);
    let only_space = hierarchy(&server, &alice, &space, "?max_depth=0").await;
    assert_eq!(room_ids(&only_space), vec![space.clone()]);
    let suggested = hierarchy(&server, &alice, &space, "?suggested_only=true").await;
    assert_eq!(room_ids(&suggested), vec![space.clone(), public.clone()]);

    // Pages of two make up the whole walk; a token is bound to its settings.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut token = None;
    loop {
        let page = hierarchy(&server, &alice, &space, &query).await;
        assert!(
            !room_ids(&page).is_empty(),
            "a token led to an empty page: {query}"
        );
        seen.extend(room_ids(&page));
        match page["next_batch"].as_str() {
            Some(next) => {
                token = Some(next.to_owned());
                query = format!("?limit=2&from={next}");
            }
            None => break,
        }
        assert!(seen.len() <= 6, "{seen:?}");
    }
    assert_eq!(seen, room_ids(&all));
    // A page that takes every room the user may see has no token, even when rooms they may
    // not see come after (here a private room last in the subspace, hidden from Bob).
    let hidden = server.create_room(&alice, json!({})).await;
    add_child(&server, &alice, &subspace, &hidden, here, json!({})).await;
    let exact = hierarchy(&server, &bob, &space, "?limit=5").await;
    assert_eq!(room_ids(&exact).len(), 5, "{exact}");
    assert!(exact.get("next_batch").is_none(), "{exact}");
    let changed = server
        .get(
            &format!(
                "/_matrix/client/v1/rooms/{space}/hierarchy?max_depth=1&from={}",
                token.unwrap()
            ),
            Some(&alice.token),
        )
        .await;
    assert_error(&changed, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let zero = server
        .get(
            &format!("/_matrix/client/v1/rooms/{space}/hierarchy?limit=0"),
            Some(&alice.token),
        )
        .await;
    assert_error(&zero, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // A space the user may not see, and one nobody knows.
    let hidden = server
        .get(
            &format!("/_matrix/client/v1/rooms/{private}/hierarchy"),
            Some(&carol.token),
        )
        .await;
    assert_error(&hidden, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let unknown = server
        .get(
            "/_matrix/client/v1/rooms/!nowhere:test.local/hierarchy",
            Some(&carol.token),
        )
        .await;
    assert_error(&unknown, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

/// A space on A with a child room only B is in: A asks B (the child's `via`) about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hierarchy_asks_another_server_about_its_rooms() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let space = a
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Space on A", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let on_b = b
        .create_room(
            &bob,
            json!({ "preset": "public_chat", "name": "Room on B", "topic": "from B" }),
        )
        .await;
    let private_on_b = b
        .create_room(
            &bob,
            json!({ "preset": "private_chat", "name": "Private on B" }),
        )
        .await;
    add_child(
        &a,
        &alice,
        &space,
        &on_b,
        &b.server_name(),
        json!({ "order": "1" }),
    )
    .await;
    add_child(
        &a,
        &alice,
        &space,
        &private_on_b,
        &b.server_name(),
        json!({ "order": "2" }),
    )
    .await;
    let page = hierarchy(&a, &alice, &space, "").await;
    assert_eq!(room_ids(&page), vec![space.clone(), on_b.clone()], "{page}");
    let remote = &page["rooms"][1];
    assert_eq!(remote["name"], "Room on B");
    assert_eq!(remote["topic"], "from B");
    assert_eq!(remote["num_joined_members"], 1);
    assert_eq!(remote["join_rule"], "public");
    assert!(remote["children_state"].is_array());
}
