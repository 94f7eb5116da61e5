//! Simplified sliding sync (MSC4186): lists, ranges and their order, `required_state` with
//! `$LAZY`/`$ME`/wildcards, room subscriptions, every extension, `M_UNKNOWN_POS`, long-polls,
//! a restart, bad input, and what a quiet connection costs.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error, urlencode};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One request; `pos` and `timeout` (ms) go in the query.
async fn request(
    server: &TestServer,
    who: &Session,
    pos: Option<&str>,
    timeout: u64,
    body: Value,
) -> (StatusCode, Value) {
    let mut path = format!("{SLIDING}?timeout={timeout}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", urlencode(pos)));
    }
    server.post(&path, Some(&who.token), body).await
}

/// A request that must answer 200.
async fn sliding(server: &TestServer, who: &Session, pos: Option<&str>, body: Value) -> Value {
    let (status, answer) = request(server, who, pos, 0, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["pos"].is_string(), "{answer}");
    answer
}

fn pos(answer: &Value) -> String {
    answer["pos"].as_str().expect("pos").to_owned()
}

/// The list body Element X starts with (timeline of one, room-list state).
fn room_list(range_end: u64, timeline_limit: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": { "all": {
            "ranges": [[0, range_end]],
            "timeline_limit": timeline_limit,
            "required_state": [
                ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
                ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.create", ""],
            ],
        } },
    })
}

/// Room IDs of an answer's rooms in the order of their `bump_stamp`s (newest first).
fn by_bump(answer: &Value) -> Vec<String> {
    let mut rooms: Vec<(u64, String)> = answer["rooms"]
        .as_object()
        .map(|rooms| {
            rooms
                .iter()
                .map(|(id, room)| (room["bump_stamp"].as_u64().unwrap_or(0), id.clone()))
                .collect()
        })
        .unwrap_or_default();
    rooms.sort_by(|a, b| b.cmp(a));
    rooms.into_iter().map(|(_, id)| id).collect()
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Three rooms of alice's, each with a message, the oldest first.
async fn three_rooms(server: &TestServer, alice: &Session) -> Vec<String> {
    let mut rooms = Vec::new();
    for name in ["one", "two", "three"] {
        let room = server.create_room(alice, json!({ "name": name })).await;
        server.say(alice, &room, &format!("in {name}")).await;
        rooms.push(room);
    }
    rooms
}

#[tokio::test]
async fn lists_order_rooms_by_activity_and_a_message_moves_its_room_up() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let rooms = three_rooms(&server, &alice).await;

    // The first twenty (of three), with one event each.
    let first = sliding(&server, &alice, None, room_list(19, 1)).await;
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    assert_eq!(
        by_bump(&first),
        vec![rooms[2].clone(), rooms[1].clone(), rooms[0].clone()]
    );
    let three = &first["rooms"][&rooms[2]];
    assert_eq!(three["initial"], true, "{three}");
    assert_eq!(three["name"], "three");
    assert_eq!(bodies(&three["timeline"]), vec!["in three"]);
    assert_eq!(three["joined_count"], 1);
    assert!(three["prev_batch"].is_string());
    assert!(
        three.get("num_live").is_none(),
        "no position, no live count: {three}"
    );
    let state_types: Vec<&str> = three["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(state_types.contains(&"m.room.name") && state_types.contains(&"m.room.create"));
    assert!(
        state_types.contains(&"m.room.member"),
        "$ME: {state_types:?}"
    );
    assert!(three["timeline"][0].get("room_id").is_none(), "sync format");

    // Only the second range: the middle room.
    let mut middle = room_list(1, 1);
    middle["conn_id"] = json!("middle");
    middle["lists"]["all"]["ranges"] = json!([[1, 1]]);
    let answer = sliding(&server, &alice, None, middle).await;
    assert_eq!(by_bump(&answer), vec![rooms[1].clone()], "{answer}");

    // Nothing new: an incremental request sends no room again.
    let quiet = sliding(&server, &alice, Some(&pos(&first)), room_list(19, 1)).await;
    assert_eq!(quiet["rooms"], json!({}), "{quiet}");
    assert_eq!(quiet["lists"]["all"]["count"], 3);

    // A message in the oldest room: it comes first, with just the new event.
    server.say(&alice, &rooms[0], "news").await;
    let news = sliding(&server, &alice, Some(&pos(&quiet)), room_list(19, 1)).await;
    let room = &news["rooms"][&rooms[0]];
    assert_eq!(bodies(&room["timeline"]), vec!["news"], "{news}");
    assert!(room.get("initial").is_none(), "known to the client: {room}");
    assert_eq!(room["num_live"], 1);
    assert_eq!(
        news["rooms"].as_object().unwrap().len(),
        1,
        "only the changed room: {news}"
    );
    let order = sliding(&server, &alice, None, room_list(0, 1)).await;
    assert_eq!(
        by_bump(&order),
        vec![rooms[0].clone()],
        "now first: {order}"
    );
}

#[tokio::test]
async fn a_growing_range_sends_only_the_rooms_new_to_the_connection() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let rooms = three_rooms(&server, &alice).await;
    let first = sliding(&server, &alice, None, room_list(0, 1)).await;
    assert_eq!(by_bump(&first), vec![rooms[2].clone()]);
    let grown = sliding(&server, &alice, Some(&pos(&first)), room_list(2, 1)).await;
    assert_eq!(
        by_bump(&grown),
        vec![rooms[1].clone(), rooms[0].clone()],
        "{grown}"
    );
    for room in [&rooms[1], &rooms[0]] {
        assert_eq!(grown["rooms"][room]["initial"], true);
    }
    // A larger timeline for a room the client has: its latest events again, marked expanded.
    for i in 0..3 {
        server.say(&alice, &rooms[2], &format!("more {i}")).await;
    }
    let expanded = sliding(&server, &alice, Some(&pos(&grown)), room_list(2, 3)).await;
    let room = &expanded["rooms"][&rooms[2]];
    assert_eq!(
        bodies(&room["timeline"]),
        vec!["more 0", "more 1", "more 2"],
        "{expanded}"
    );
    assert_eq!(room["unstable_expanded_timeline"], true);
    assert_eq!(room["limited"], true, "more history above: {room}");
    for other in [&rooms[0], &rooms[1]] {
        assert_eq!(
            bodies(&expanded["rooms"][other]["timeline"]).len(),
            1,
            "the others get their latest events too"
        );
    }
}

#[tokio::test]
async fn retrying_a_position_answers_again_and_a_newer_one_drops_the_old() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let rooms = three_rooms(&server, &alice).await;
    let first = sliding(&server, &alice, None, room_list(19, 1)).await;
    server.say(&alice, &rooms[0], "news").await;
    // The answer to this one is lost: the client sends the same position again.
    let lost = sliding(&server, &alice, Some(&pos(&first)), room_list(19, 1)).await;
    let retry = sliding(&server, &alice, Some(&pos(&first)), room_list(19, 1)).await;
    let ids = |answer: &Value| -> Vec<String> {
        answer["rooms"][&rooms[0]]["timeline"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .map(|e| e["event_id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&lost),
        ids(&retry),
        "the same news again: {lost} {retry}"
    );
    assert_eq!(
        lost["rooms"].as_object().map(|r| r.len()),
        retry["rooms"].as_object().map(|r| r.len())
    );
    assert_eq!(bodies(&retry["rooms"][&rooms[0]]["timeline"]), vec!["news"]);
    // Going on from the retry, the lost answer's position is gone.
    let next = sliding(&server, &alice, Some(&pos(&retry)), room_list(19, 1)).await;
    assert_eq!(next["rooms"], json!({}));
    let (status, body) = request(&server, &alice, Some(&pos(&lost)), 0, room_list(19, 1)).await;
    assert_error(&(status, body), StatusCode::BAD_REQUEST, "M_UNKNOWN_POS");
}

#[tokio::test]
async fn lazy_members_me_and_wildcards_select_the_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat", "topic": "hello" }))
        .await;
    server.join(&bob, &room).await;
    server.join(&carol, &room).await;
    server.say(&bob, &room, "from bob").await;
    let members_of = |answer: &Value| -> Vec<String> {
        let mut users: Vec<String> = answer["rooms"][&room]["required_state"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect();
        users.sort();
        users
    };
    let lazy = |limit: u64, extra: Value| {
        let mut state = vec![json!(["m.room.member", "$LAZY"])];
        state.extend(extra.as_array().cloned().unwrap_or_default());
        json!({ "lists": { "l": { "ranges": [[0, 0]], "timeline_limit": limit, "required_state": state } } })
    };
    // Bob sent the one event shown: his member event, nobody else's.
    let answer = sliding(&server, &carol, None, lazy(1, json!([]))).await;
    assert_eq!(members_of(&answer), vec![bob.user_id.clone()], "{answer}");
    // $ME adds carol's own.
    let answer = sliding(
        &server,
        &carol,
        None,
        lazy(1, json!([["m.room.member", "$ME"]])),
    )
    .await;
    assert_eq!(members_of(&answer), {
        let mut v = vec![bob.user_id.clone(), carol.user_id.clone()];
        v.sort();
        v
    });
    // Every member, every state event.
    let all = sliding(
        &server,
        &carol,
        None,
        json!({ "lists": { "l": { "ranges": [[0, 0]], "timeline_limit": 0, "required_state": [["*", "*"]] } } }),
    )
    .await;
    assert_eq!(members_of(&all).len(), 3, "{all}");
    let types: Vec<&str> = all["rooms"][&room]["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.topic",
    ] {
        assert!(types.contains(&kind), "{kind} in {types:?}");
    }
    // A type with any state key.
    let members = sliding(
        &server,
        &carol,
        None,
        json!({ "lists": { "l": { "ranges": [[0, 0]], "timeline_limit": 0, "required_state": [["m.room.member", "*"]] } } }),
    )
    .await;
    assert_eq!(members_of(&members).len(), 3);
    assert_eq!(
        members["rooms"][&room]["required_state"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "only member events: {members}"
    );

    // Incremental: a new topic is sent as changed state; an unasked-for change is not.
    let start = sliding(
        &server,
        &carol,
        None,
        lazy(1, json!([["m.room.topic", ""]])),
    )
    .await;
    let topic_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
    server
        .put(
            &topic_path,
            Some(&alice.token),
            json!({ "topic": "changed" }),
        )
        .await;
    let name_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/");
    server
        .put(&name_path, Some(&alice.token), json!({ "name": "named" }))
        .await;
    let next = sliding(
        &server,
        &carol,
        Some(&pos(&start)),
        lazy(1, json!([["m.room.topic", ""]])),
    )
    .await;
    let changed = next["rooms"][&room]["required_state"].as_array().unwrap();
    let topic = changed
        .iter()
        .find(|e| e["type"] == "m.room.topic")
        .unwrap();
    assert_eq!(topic["content"]["topic"], "changed", "{next}");
    assert!(changed.iter().all(|e| e["type"] != "m.room.name"), "{next}");
    assert_eq!(
        next["rooms"][&room]["name"], "named",
        "the list shows the new name"
    );
}

#[tokio::test]
async fn subscriptions_invites_and_joins() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server.create_room(&alice, json!({ "name": "club" })).await;
    for i in 0..5 {
        server.say(&alice, &room, &format!("m{i}")).await;
    }
    let invite_path = format!("/_matrix/client/v3/rooms/{room}/invite");
    server
        .post(
            &invite_path,
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    let first = sliding(&server, &bob, None, room_list(9, 1)).await;
    let invited = &first["rooms"][&room];
    assert!(invited["invite_state"].is_array(), "{first}");
    assert!(
        invited.get("timeline").is_none(),
        "no timeline before joining: {invited}"
    );
    let own = invited["invite_state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .expect("the invite itself");
    assert_eq!(own["content"]["membership"], "invite");
    // Joined: the room is new to the client as a joined room.
    server.join(&bob, &room).await;
    let joined = sliding(&server, &bob, Some(&pos(&first)), room_list(9, 1)).await;
    let room_data = &joined["rooms"][&room];
    assert_eq!(room_data["initial"], true, "{joined}");
    assert!(room_data.get("invite_state").is_none());

    // A subscription with a longer timeline: the room again, with more events.
    let mut body = room_list(9, 1);
    body["room_subscriptions"] = json!({ &room: { "timeline_limit": 5, "required_state": [] } });
    let subscribed = sliding(&server, &bob, Some(&pos(&joined)), body).await;
    // The last five: three messages, bob's invite and his join.
    let timeline = bodies(&subscribed["rooms"][&room]["timeline"]);
    assert_eq!(timeline, vec!["m2", "m3", "m4"], "{subscribed}");
    assert_eq!(
        subscribed["rooms"][&room]["unstable_expanded_timeline"],
        true
    );
    // A subscription to a room bob is not in is ignored (no peeking).
    let other = server.create_room(&alice, json!({})).await;
    let mut body = room_list(9, 1);
    body["conn_id"] = json!("peek");
    body["room_subscriptions"] = json!({ &other: { "timeline_limit": 4 } });
    let peek = sliding(&server, &bob, None, body).await;
    assert!(peek["rooms"][&other].is_null(), "{peek}");
}

#[tokio::test]
async fn extensions_carry_to_device_keys_account_data_receipts_and_typing() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    let message = server.say(&alice, &room, "read me").await;
    // To-device: two messages for bob's device.
    for i in 0..2 {
        let path = format!("/_matrix/client/v3/sendToDevice/m.test/t{i}");
        let (status, _) = server
            .put(
                &path,
                Some(&alice.token),
                json!({ "messages": { &bob.user_id: { &bob.device_id: { "n": i } } } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let extensions = |since: Option<&str>| {
        let mut to_device = json!({ "enabled": true, "limit": 1 });
        if let Some(since) = since {
            to_device["since"] = json!(since);
        }
        json!({
            "conn_id": "ext",
            "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
            "extensions": {
                "to_device": to_device,
                "e2ee": { "enabled": true },
                "account_data": { "enabled": true },
                "receipts": { "enabled": true },
                "typing": { "enabled": true },
                "org.example.unknown": { "enabled": true },
            },
        })
    };
    let first = sliding(&server, &bob, None, extensions(None)).await;
    let ext = &first["extensions"];
    // One to-device message a page (limit 1), acknowledged by the next `since`.
    assert_eq!(
        ext["to_device"]["events"].as_array().unwrap().len(),
        1,
        "{ext}"
    );
    assert_eq!(ext["to_device"]["events"][0]["content"]["n"], 0);
    let next_batch = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{ext}"
    );
    assert!(ext["e2ee"]["device_unused_fallback_key_types"].is_array());
    assert!(
        ext["account_data"]["global"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.push_rules"),
        "{ext}"
    );
    let second = sliding(
        &server,
        &bob,
        Some(&pos(&first)),
        extensions(Some(&next_batch)),
    )
    .await;
    assert_eq!(
        second["extensions"]["to_device"]["events"][0]["content"]["n"], 1,
        "{second}"
    );

    // Room account data, a receipt, typing: each reaches the next answer.
    let tag_path = format!(
        "/_matrix/client/v3/user/{}/rooms/{room}/tags/u.work",
        alice.user_id
    );
    server.put(&tag_path, Some(&alice.token), json!({})).await;
    let alice_first = sliding(&server, &alice, None, extensions(None)).await;
    let tags = &alice_first["extensions"]["account_data"]["rooms"][&room];
    assert!(
        tags.as_array()
            .is_some_and(|t| t.iter().any(|e| e["type"] == "m.tag")),
        "{alice_first}"
    );
    let receipt_path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{message}");
    let (status, _) = server
        .post(&receipt_path, Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let typing_path = format!("/_matrix/client/v3/rooms/{room}/typing/{}", bob.user_id);
    server
        .put(
            &typing_path,
            Some(&bob.token),
            json!({ "typing": true, "timeout": 10000 }),
        )
        .await;
    let after = sliding(&server, &alice, Some(&pos(&alice_first)), extensions(None)).await;
    let ext = &after["extensions"];
    assert!(
        ext["receipts"]["rooms"][&room]["content"][&message]["m.read"][&bob.user_id].is_object(),
        "{ext}"
    );
    assert_eq!(
        ext["typing"]["rooms"][&room]["content"]["user_ids"],
        json!([bob.user_id])
    );

    // Keys: bob uploads device keys; alice's e2ee extension names him as changed.
    let keys = json!({ "device_keys": {
        "user_id": bob.user_id, "device_id": bob.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": { format!("curve25519:{}", bob.device_id): "abc" },
    } });
    let (status, body) = server
        .post("/_matrix/client/v3/keys/upload", Some(&bob.token), keys)
        .await;
    if status == StatusCode::OK {
        let changed = sliding(&server, &alice, Some(&pos(&after)), extensions(None)).await;
        let lists = &changed["extensions"]["e2ee"]["device_lists"]["changed"];
        assert!(
            lists
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u == bob.user_id.as_str())),
            "{changed}"
        );
    } else {
        // Unsigned device keys are refused; a device change still announces itself.
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
}

#[tokio::test]
async fn unknown_positions_and_bad_requests_get_the_right_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    server.create_room(&alice, json!({})).await;
    for junk in ["nonsense", "99.1", "0.99999999999999", "-1.5"] {
        let answer = request(&server, &alice, Some(junk), 0, room_list(9, 1)).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "M_UNKNOWN_POS");
    }
    // Another user's or another connection's position is unknown here.
    let alices = sliding(&server, &alice, None, room_list(9, 1)).await;
    let theirs = request(&server, &bob, Some(&pos(&alices)), 0, room_list(9, 1)).await;
    assert_error(&theirs, StatusCode::BAD_REQUEST, "M_UNKNOWN_POS");
    let mut other_conn = room_list(9, 1);
    other_conn["conn_id"] = json!("another");
    let other = request(&server, &alice, Some(&pos(&alices)), 0, other_conn).await;
    assert_error(&other, StatusCode::BAD_REQUEST, "M_UNKNOWN_POS");

    // Inverted ranges, missing timeline limits, not JSON.
    let mut inverted = room_list(9, 1);
    inverted["lists"]["all"]["ranges"] = json!([[5, 2]]);
    assert_error(
        &request(&server, &alice, None, 0, inverted).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let missing = json!({ "lists": { "all": { "ranges": [[0, 1]] } } });
    let answer = request(&server, &alice, None, 0, missing).await;
    assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{}", answer.1);
    let response = server
        .http
        .post(format!("{}{SLIDING}", server.base))
        .bearer_auth(&alice.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Huge ranges and limits are clamped, not refused.
    let mut huge = room_list(u32::MAX as u64, 1_000_000);
    huge["conn_id"] = json!("huge");
    let answer = sliding(&server, &alice, None, huge).await;
    assert_eq!(answer["lists"]["all"]["count"], 1);
    // Without a token: 401.
    let (status, _) = server.post(SLIDING, None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_long_poll_wakes_for_news_and_otherwise_waits_out_its_timeout() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = server.create_room(&alice, json!({})).await;
    let first = sliding(&server, &alice, None, room_list(9, 1)).await;
    // Nothing happens: the answer comes at the timeout, empty.
    let started = Instant::now();
    let (status, idle) = request(&server, &alice, Some(&pos(&first)), 400, room_list(9, 1)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(350), "waited");
    assert_eq!(idle["rooms"], json!({}), "{idle}");
    // A message during the wait ends it.
    let waiting = {
        let (base, token, position) = (server.base.clone(), alice.token.clone(), pos(&idle));
        let http = server.http.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer: Value = http
                .post(format!(
                    "{base}{SLIDING}?timeout=20000&pos={}",
                    urlencode(&position)
                ))
                .bearer_auth(token)
                .json(&room_list(9, 1))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (started.elapsed(), answer)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.say(&alice, &room, "wake up").await;
    let (waited, answer) = waiting.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "woken by the message, not the timeout"
    );
    assert_eq!(
        bodies(&answer["rooms"][&room]["timeline"]),
        vec!["wake up"],
        "{answer}"
    );
}

#[tokio::test]
async fn connections_survive_a_restart() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let rooms = three_rooms(&server, &alice).await;
    let first = sliding(&server, &alice, None, room_list(19, 1)).await;
    let server = server.restart().await;
    // The client goes on from its position: nothing is new, nothing is sent again.
    let again = sliding(&server, &alice, Some(&pos(&first)), room_list(19, 1)).await;
    assert_eq!(again["rooms"], json!({}), "{again}");
    server.say(&alice, &rooms[1], "after the restart").await;
    let news = sliding(&server, &alice, Some(&pos(&again)), room_list(19, 1)).await;
    assert_eq!(
        bodies(&news["rooms"][&rooms[1]]["timeline"]),
        vec!["after the restart"],
        "{news}"
    );
    assert!(news["rooms"][&rooms[1]].get("initial").is_none());
}

#[tokio::test]
async fn a_quiet_connection_reads_nothing_per_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let mut rooms = Vec::new();
    for i in 0..30 {
        let room = server
            .create_room(&alice, json!({ "name": format!("r{i}") }))
            .await;
        server.say(&alice, &room, "hi").await;
        rooms.push(room);
    }
    let mut body = room_list(99, 1);
    body["extensions"] = json!({
        "e2ee": { "enabled": true }, "receipts": { "enabled": true },
        "typing": { "enabled": true }, "account_data": { "enabled": true },
    });
    let first = sliding(&server, &alice, None, body.clone()).await;
    assert_eq!(first["rooms"].as_object().unwrap().len(), 30);
    let before = server.services().store.read_stats();
    let quiet = sliding(&server, &alice, Some(&pos(&first)), body.clone()).await;
    let cost = server.services().store.read_stats() - before;
    assert_eq!(quiet["rooms"], json!({}));
    // The user's token, the account data and key counts: a handful, not one per room.
    assert!(
        cost.total() < 30,
        "a quiet request over 30 rooms read {cost:?}"
    );
    // One room with news: read for it alone.
    server.say(&alice, &rooms[3], "news").await;
    let before = server.services().store.read_stats();
    let news = sliding(&server, &alice, Some(&pos(&quiet)), body).await;
    let cost = server.services().store.read_stats() - before;
    assert_eq!(news["rooms"].as_object().unwrap().len(), 1, "{news}");
    assert!(cost.total() < 30 + 60, "one room with news read {cost:?}");
}

/// A message from another server moves its room to the top of the list and reaches the
/// client through its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_message_moves_its_room_to_the_top() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let shared = a
        .create_room(&alice, json!({ "preset": "public_chat", "name": "shared" }))
        .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{shared}?via={}", a.server_name()),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let local = b.create_room(&bob, json!({ "name": "local" })).await;
    b.say(&bob, &local, "newest here").await;
    let first = sliding(&b, &bob, None, room_list(0, 1)).await;
    assert_eq!(by_bump(&first), vec![local.clone()], "{first}");

    a.say(&alice, &shared, "from afar").await;
    let mut position = pos(&first);
    let deadline = Instant::now() + crate::common::PATIENCE;
    loop {
        let (status, answer) = request(&b, &bob, Some(&position), 1000, room_list(0, 1)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        position = pos(&answer);
        if let Some(room) = answer["rooms"].get(&shared) {
            assert_eq!(bodies(&room["timeline"]), vec!["from afar"], "{answer}");
            assert_eq!(room["initial"], true, "new to this range: {room}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the remote message never arrived"
        );
    }
    let order = sliding(&b, &bob, None, room_list(1, 1)).await;
    assert_eq!(
        by_bump(&order),
        vec![shared.clone(), local.clone()],
        "{order}"
    );
}

/// An invite from another server shows with the stripped state it came with (the room's name,
/// the invite itself); joining makes the room new to the connection as a joined room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_from_another_server_shows_then_the_joined_room() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = a
        .create_room(
            &alice,
            json!({ "name": "far away", "invite": [bob.user_id] }),
        )
        .await;
    a.say(&alice, &room, "before bob").await;
    let deadline = Instant::now() + crate::common::PATIENCE;
    let invited = loop {
        let answer = sliding(&b, &bob, None, room_list(9, 1)).await;
        if answer["rooms"].get(&room).is_some() {
            break answer;
        }
        assert!(Instant::now() < deadline, "the invite never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stripped = invited["rooms"][&room]["invite_state"].as_array().unwrap();
    assert!(
        stripped
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "far away"),
        "{invited}"
    );
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id.as_str()
            && e["content"]["membership"] == "invite"),
        "{invited}"
    );
    assert_eq!(invited["lists"]["all"]["count"], 1);
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let joined = sliding(&b, &bob, Some(&pos(&invited)), room_list(9, 5)).await;
    let data = &joined["rooms"][&room];
    assert_eq!(data["initial"], true, "{joined}");
    assert!(data.get("invite_state").is_none());
    // History from before the join lives on the other server: the timeline starts at the join,
    // and `prev_batch` pages back into it (`/messages` backfills), as with `/sync`.
    let timeline = data["timeline"].as_array().unwrap();
    assert_eq!(
        timeline.last().unwrap()["state_key"],
        bob.user_id.as_str(),
        "{joined}"
    );
    assert!(
        data.get("avatar").is_none(),
        "no avatar event, no avatar: {data}"
    );
    assert_eq!(data["name"], "far away");
    let back = b
        .get_ok(
            &format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=b&from={}&limit=20",
                data["prev_batch"].as_str().unwrap()
            ),
            &bob,
        )
        .await;
    assert!(
        bodies(&back["chunk"]).contains(&"before bob".to_owned()),
        "{back}"
    );
}

/// A request the client abandoned (clients cancel and resend long-polls with the same `pos`)
/// may still answer from the old position after the client got a newer one: that must not take
/// the newer one away.
#[tokio::test]
async fn an_abandoned_request_from_the_old_position_leaves_the_newer_one_usable() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let rooms = three_rooms(&server, &alice).await;
    let first = sliding(&server, &alice, None, room_list(19, 1)).await;
    server.say(&alice, &rooms[0], "news").await;
    // The client's answer: a newer position.
    let answered = sliding(&server, &alice, Some(&pos(&first)), room_list(19, 1)).await;
    // The abandoned request, still running from the old position, answers too.
    let abandoned = sliding(&server, &alice, Some(&pos(&first)), room_list(19, 1)).await;
    assert_eq!(
        bodies(&abandoned["rooms"][&rooms[0]]["timeline"]),
        vec!["news"]
    );
    // The client goes on from the answer it got.
    let next = sliding(&server, &alice, Some(&pos(&answered)), room_list(19, 1)).await;
    assert_eq!(next["rooms"], json!({}), "{next}");
}
