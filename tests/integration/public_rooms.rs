//! The published room directory (`/directory/list/room`, `/publicRooms`), room summaries and
//! the checks on `m.room.canonical_alias`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

const V3: &str = "/_matrix/client/v3";

fn visibility_path(room: &str) -> String {
    format!("{V3}/directory/list/room/{room}")
}

async fn set_state(server: &TestServer, who: &Session, room: &str, kind: &str, content: Value) {
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{room}/state/{kind}/"),
            Some(&who.token),
            content,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The room IDs of a directory answer's chunk, in order.
fn room_ids(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .expect("a chunk")
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn room_visibility_in_the_directory() {
    let server = TestServer::start().await;
    // The first account is the server admin.
    let admin = server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let public = server
        .create_room(&alice, json!({ "visibility": "public" }))
        .await;
    let private = server.create_room(&alice, json!({})).await;

    let (status, body) = server.get(&visibility_path(&public), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "visibility": "public" }));
    let (_, body) = server.get(&visibility_path(&private), None).await;
    assert_eq!(body, json!({ "visibility": "private" }));
    assert_error(
        &server
            .get(&visibility_path("!nowhere:test.local"), None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // A non-member, and a member without the power to change the canonical alias, may not.
    let publish = json!({ "visibility": "public" });
    assert_error(
        &server
            .put(
                &visibility_path(&private),
                Some(&bob.token),
                publish.clone(),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    server.join(&bob, &public).await;
    assert_error(
        &server
            .put(
                &visibility_path(&public),
                Some(&bob.token),
                json!({ "visibility": "private" }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // The room's creator may; so may a server admin who is not in the room.
    let (status, body) = server
        .put(
            &visibility_path(&private),
            Some(&alice.token),
            publish.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let (_, body) = server.get(&visibility_path(&private), None).await;
    assert_eq!(body["visibility"], "public");
    let (status, _) = server
        .put(
            &visibility_path(&public),
            Some(&admin.token),
            json!({ "visibility": "private" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = server.get(&visibility_path(&public), None).await;
    assert_eq!(body["visibility"], "private");

    // Bad requests.
    assert_error(
        &server
            .put(
                &visibility_path("!nowhere:test.local"),
                Some(&admin.token),
                publish.clone(),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .put(
                &visibility_path(&public),
                Some(&alice.token),
                json!({ "visibility": "secret" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server.put(&visibility_path(&public), None, publish).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );

    // Publication is stored.
    let server = server.restart().await;
    let (_, body) = server.get(&visibility_path(&private), None).await;
    assert_eq!(body["visibility"], "public");
    let (_, body) = server.get(&visibility_path(&public), None).await;
    assert_eq!(body["visibility"], "private");
}

#[tokio::test]
async fn public_rooms_lists_filters_and_paginates() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let cheese = server
        .create_room(
            &alice,
            json!({
                "visibility": "public",
                "name": "Cheese Lovers",
                "topic": "Tasty tasty cheese",
                "room_alias_name": "fromage",
            }),
        )
        .await;
    let space = server
        .create_room(
            &alice,
            json!({
                "visibility": "public",
                "name": "A space",
                "creation_content": { "type": "m.space" },
            }),
        )
        .await;
    let busy = server
        .create_room(&alice, json!({ "visibility": "public", "name": "Busy" }))
        .await;
    server.join(&bob, &busy).await;
    let hidden = server
        .create_room(&alice, json!({ "name": "Cheese secrets" }))
        .await;
    set_state(
        &server,
        &alice,
        &cheese,
        "m.room.avatar",
        json!({ "url": "mxc://test.local/cheese" }),
    )
    .await;

    // Most members first, then by room ID; unpublished rooms are not listed; no token needed.
    let (status, page) = server.get(&format!("{V3}/publicRooms"), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut quiet = [cheese.clone(), space.clone()];
    quiet.sort();
    let all = vec![busy.clone(), quiet[0].clone(), quiet[1].clone()];
    assert_eq!(room_ids(&page), all);
    assert!(!room_ids(&page).contains(&hidden));
    assert_eq!(page["total_room_count_estimate"], 3);
    assert!(page.get("next_batch").is_none() && page.get("prev_batch").is_none());
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk[0]["num_joined_members"], 2);
    let described = chunk.iter().find(|r| r["room_id"] == cheese).unwrap();
    assert_eq!(
        described,
        &json!({
            "room_id": cheese,
            "name": "Cheese Lovers",
            "topic": "Tasty tasty cheese",
            "canonical_alias": "#fromage:test.local",
            "avatar_url": "mxc://test.local/cheese",
            "num_joined_members": 1,
            "world_readable": false,
            "guest_can_join": false,
            "join_rule": "public",
        })
    );
    let described = chunk.iter().find(|r| r["room_id"] == space).unwrap();
    assert_eq!(described["room_type"], "m.space");

    // One room per page: next_batch leads forward, prev_batch back.
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let path = match &since {
            Some(token) => format!("{V3}/publicRooms?limit=1&since={token}"),
            None => format!("{V3}/publicRooms?limit=1"),
        };
        let (status, page) = server.get(&path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total_room_count_estimate"], 3);
        assert_eq!(
            page.get("prev_batch").is_some(),
            !pages.is_empty(),
            "{page}"
        );
        seen.extend(room_ids(&page));
        pages.push(page.clone());
        match page["next_batch"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
        assert!(pages.len() < 5, "pagination does not end");
    }
    assert_eq!(seen, all);
    let prev = pages[2]["prev_batch"].as_str().unwrap();
    let (_, back) = server
        .get(&format!("{V3}/publicRooms?limit=1&since={prev}"), None)
        .await;
    assert_eq!(room_ids(&back), room_ids(&pages[1]));

    // The filtered form: a case-insensitive search term, room types, limit and since.
    let filtered = |body: Value| {
        let server = &server;
        let token = alice.token.clone();
        async move {
            server
                .post(&format!("{V3}/publicRooms"), Some(&token), body)
                .await
        }
    };
    let (status, page) = filtered(json!({ "filter": { "generic_search_term": "CHEESE" } })).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(room_ids(&page), vec![cheese.clone()]);
    assert_eq!(page["total_room_count_estimate"], 1);
    let (_, page) = filtered(json!({ "filter": { "generic_search_term": "fromage" } })).await;
    assert_eq!(room_ids(&page), vec![cheese.clone()]);
    let (_, page) = filtered(json!({ "filter": { "generic_search_term": busy } })).await;
    assert_eq!(room_ids(&page), vec![busy.clone()]);
    let (_, page) =
        filtered(json!({ "filter": { "generic_search_term": "nothing like it" } })).await;
    assert_eq!(room_ids(&page), Vec::<String>::new());
    let (_, page) = filtered(json!({ "filter": { "room_types": ["m.space"] } })).await;
    assert_eq!(room_ids(&page), vec![space.clone()]);
    let (_, page) = filtered(json!({ "filter": { "room_types": [null] } })).await;
    let mut untyped = room_ids(&page);
    untyped.sort();
    let mut expected = vec![busy.clone(), cheese.clone()];
    expected.sort();
    assert_eq!(untyped, expected);
    let (_, page) = filtered(json!({ "limit": 2 })).await;
    assert_eq!(room_ids(&page), all[..2].to_vec());
    let next = page["next_batch"].as_str().unwrap().to_owned();
    let (_, page) = filtered(json!({ "limit": 2, "since": next })).await;
    assert_eq!(room_ids(&page), all[2..].to_vec());
    assert!(page.get("next_batch").is_none());
    let (status, _) = server
        .get(&format!("{V3}/publicRooms?server=test.local"), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Failures: unknown tokens, other servers, no token on POST.
    assert_error(
        &server
            .get(&format!("{V3}/publicRooms?since=garbage"), None)
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &filtered(json!({ "since": "o-1" })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .get(&format!("{V3}/publicRooms?server=elsewhere.org"), None)
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    assert_error(
        &server
            .post(
                &format!("{V3}/publicRooms?server=elsewhere.org"),
                Some(&alice.token),
                json!({}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    assert_error(
        &server
            .post(&format!("{V3}/publicRooms"), None, json!({}))
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );

    // A hidden room leaves the directory.
    let (status, _) = server
        .put(
            &visibility_path(&cheese),
            Some(&alice.token),
            json!({ "visibility": "private" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, page) = server.get(&format!("{V3}/publicRooms"), None).await;
    assert!(!room_ids(&page).contains(&cheese));
    assert_eq!(page["total_room_count_estimate"], 2);
}

#[tokio::test]
async fn room_summaries() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let summary = |room: &str| format!("/_matrix/client/v1/room_summary/{room}");
    let public = server
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "name": "Town square",
                "topic": "Everything",
                "room_alias_name": "square",
                "creation_content": { "type": "m.space" },
            }),
        )
        .await;

    // Anyone may see a public room's summary, by ID or alias; without a token, no membership.
    let (status, body) = server.get(&summary(&public), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], public.as_str());
    assert_eq!(body["name"], "Town square");
    assert_eq!(body["topic"], "Everything");
    assert_eq!(body["canonical_alias"], "#square:test.local");
    assert_eq!(body["num_joined_members"], 1);
    assert_eq!(body["join_rule"], "public");
    assert_eq!(body["room_type"], "m.space");
    assert_eq!(body["world_readable"], false);
    assert_eq!(body["guest_can_join"], false);
    assert!(body["room_version"].is_string(), "{body}");
    assert!(body.get("membership").is_none(), "{body}");
    assert!(body.get("encryption").is_none(), "{body}");
    let (status, by_alias) = server.get(&summary("%23square:test.local"), None).await;
    assert_eq!(status, StatusCode::OK, "{by_alias}");
    assert_eq!(by_alias["room_id"], public.as_str());
    // A signed-in user who never joined has, in Matrix terms, left.
    let (_, body) = server.get(&summary(&public), Some(&bob.token)).await;
    assert_eq!(body["membership"], "leave");
    let (_, body) = server.get(&summary(&public), Some(&alice.token)).await;
    assert_eq!(body["membership"], "join");

    // A private room: members (of any kind) only; to others it does not exist.
    let private = server
        .create_room(&alice, json!({ "invite": [carol.user_id] }))
        .await;
    set_state(
        &server,
        &alice,
        &private,
        "m.room.encryption",
        json!({ "algorithm": "m.megolm.v1.aes-sha2" }),
    )
    .await;
    let hidden = |result: (StatusCode, Value)| {
        assert_error(&result, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    };
    hidden(server.get(&summary(&private), None).await);
    hidden(server.get(&summary(&private), Some(&bob.token)).await);
    let (status, body) = server.get(&summary(&private), Some(&carol.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["membership"], "invite");
    assert_eq!(body["join_rule"], "invite");
    assert_eq!(body["encryption"], "m.megolm.v1.aes-sha2");
    assert_eq!(body["num_joined_members"], 1);
    let (_, body) = server.get(&summary(&private), Some(&alice.token)).await;
    assert_eq!(body["membership"], "join");

    // World-readable history opens the summary to everyone.
    set_state(
        &server,
        &alice,
        &private,
        "m.room.history_visibility",
        json!({ "history_visibility": "world_readable" }),
    )
    .await;
    let (status, body) = server.get(&summary(&private), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["world_readable"], true);

    // Knocking opens it too; restricted rules name the rooms whose members may join.
    let knock = server.create_room(&alice, json!({})).await;
    hidden(server.get(&summary(&knock), None).await);
    set_state(
        &server,
        &alice,
        &knock,
        "m.room.join_rules",
        json!({
            "join_rule": "knock_restricted",
            "allow": [{ "type": "m.room_membership", "room_id": public }],
        }),
    )
    .await;
    let (status, body) = server.get(&summary(&knock), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["join_rule"], "knock_restricted");
    assert_eq!(body["allowed_room_ids"], json!([public]));

    // Unknown rooms and aliases; a bad token.
    hidden(server.get(&summary("!nowhere:test.local"), None).await);
    hidden(server.get(&summary("%23nowhere:test.local"), None).await);
    assert_error(
        &server.get(&summary(&public), Some("not-a-token")).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
}

#[tokio::test]
async fn canonical_alias_must_point_to_the_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server
        .create_room(&alice, json!({ "room_alias_name": "main" }))
        .await;
    let other = server
        .create_room(&alice, json!({ "room_alias_name": "other" }))
        .await;
    let (status, _) = server
        .put(
            &format!("{V3}/directory/room/%23second:test.local"),
            Some(&alice.token),
            json!({ "room_id": room }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let path = format!("{V3}/rooms/{room}/state/m.room.canonical_alias/");
    let put = |content: Value| {
        let server = &server;
        let path = path.clone();
        let token = alice.token.clone();
        async move { server.put(&path, Some(&token), content).await }
    };

    // Not aliases at all.
    for content in [
        json!({ "alias": "main" }),
        json!({ "alias": 7 }),
        json!({ "alias": "#main:test.local", "alt_aliases": ["#ok:test.local", "nope"] }),
        json!({ "alt_aliases": "#main:test.local" }),
    ] {
        assert_error(
            &put(content).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    // This server's aliases must exist and point here.
    for content in [
        json!({ "alias": "#missing:test.local" }),
        json!({ "alias": "#other:test.local" }),
        json!({ "alias": "#main:test.local", "alt_aliases": ["#other:test.local"] }),
    ] {
        assert_error(&put(content).await, StatusCode::BAD_REQUEST, "M_BAD_ALIAS");
    }
    // The state is unchanged by the refusals.
    let (_, state) = server.get(&path, Some(&alice.token)).await;
    assert_eq!(state, json!({ "alias": "#main:test.local" }));

    // Valid: this room's aliases, other servers' aliases (unchecked), and no alias at all.
    let valid = json!({
        "alias": "#second:test.local",
        "alt_aliases": ["#main:test.local", "#far:elsewhere.org"],
    });
    let (status, body) = put(valid.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, state) = server.get(&path, Some(&alice.token)).await;
    assert_eq!(state, valid);
    let (status, body) = put(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The other room's own alias is fine there.
    let (status, body) = server
        .put(
            &format!("{V3}/rooms/{other}/state/m.room.canonical_alias/"),
            Some(&alice.token),
            json!({ "alias": "#other:test.local" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // createRoom's initial_state is held to the same rules: only the alias it creates can point
    // to the new room.
    let initial = |name: Option<&str>, alias: &str| {
        let mut body = json!({
            "initial_state": [{
                "type": "m.room.canonical_alias",
                "state_key": "",
                "content": { "alias": alias },
            }],
        });
        if let Some(name) = name {
            body["room_alias_name"] = json!(name);
        }
        body
    };
    let create = |body: Value| {
        let server = &server;
        let token = alice.token.clone();
        async move {
            server
                .post(&format!("{V3}/createRoom"), Some(&token), body)
                .await
        }
    };
    assert_error(
        &create(initial(None, "#main:test.local")).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_ALIAS",
    );
    assert_error(
        &create(initial(Some("fresh"), "fresh")).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Nothing was created by the refusals: the alias is still free.
    assert_error(
        &server
            .get(&format!("{V3}/directory/room/%23fresh:test.local"), None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (status, body) = create(initial(Some("fresh"), "#fresh:test.local")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = create(initial(None, "#far:elsewhere.org")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
