//! Relations (spec "Event relationships"): edits, threads, reactions and references indexed as
//! they are sent, read back through `/relations` and `/threads`, and bundled in
//! `unsigned["m.relations"]` of `/event`, `/messages`, `/context` and `/sync`; redactions take
//! them out; the rules on what a user may send; between two servers.

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

const NO_LIMITS: &str = "rate_limits = { enabled = false }";

static TXN: AtomicU64 = AtomicU64::new(0);

async fn try_send(
    server: &TestServer,
    who: &Session,
    room: &str,
    event_type: &str,
    content: Value,
) -> (StatusCode, Value) {
    let txn = TXN.fetch_add(1, Ordering::Relaxed);
    let path = format!("/_matrix/client/v3/rooms/{room}/send/{event_type}/rel{txn}");
    server.put(&path, Some(&who.token), content).await
}

async fn send(
    server: &TestServer,
    who: &Session,
    room: &str,
    event_type: &str,
    content: Value,
) -> String {
    let (status, body) = try_send(server, who, room, event_type, content).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

/// Sends an `m.room.message` with `content`; returns its event ID.
async fn send_message(server: &TestServer, who: &Session, room: &str, content: Value) -> String {
    send(server, who, room, "m.room.message", content).await
}

fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

fn thread_reply(root: &str, body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body,
            "m.relates_to": { "rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                              "m.in_reply_to": { "event_id": root } } })
}

fn edit(original: &str, body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": format!("* {body}"),
            "m.new_content": { "msgtype": "m.text", "body": body },
            "m.relates_to": { "rel_type": "m.replace", "event_id": original } })
}

fn reaction(target: &str, key: &str) -> Value {
    json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": key } })
}

async fn event(server: &TestServer, who: &Session, room: &str, id: &str) -> Value {
    server
        .get_ok(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), who)
        .await
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn relations(server: &TestServer, who: &Session, room: &str, rest: &str) -> Value {
    server
        .get_ok(
            &format!("/_matrix/client/v1/rooms/{room}/relations/{rest}"),
            who,
        )
        .await
}

async fn room_with_three(server: &TestServer) -> (Session, Session, Session, String) {
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let carol = server.register("carol", "carol-password-1").await;
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    server.join(&bob, &room).await;
    server.join(&carol, &room).await;
    (alice, bob, carol, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_threads_and_references_are_bundled_wherever_timeline_events_go() {
    let server = TestServer::start_with(NO_LIMITS).await;
    let (alice, bob, carol, room) = room_with_three(&server).await;
    let root = send_message(&server, &alice, &room, text("root")).await;
    let first_edit = send_message(&server, &alice, &room, edit(&root, "root v2")).await;
    let second_edit = send_message(&server, &alice, &room, edit(&root, "root v3")).await;
    // Edits by someone else, and of another type, are not edits of this event.
    send_message(&server, &bob, &room, edit(&root, "bob's")).await;
    send(&server, &alice, &room, "m.sticker", edit(&root, "sticker")).await;
    let r1 = send_message(&server, &bob, &room, thread_reply(&root, "one")).await;
    let r2 = send_message(&server, &alice, &room, thread_reply(&root, "two")).await;
    let r3 = send_message(&server, &bob, &room, thread_reply(&root, "three")).await;
    let r3_edit = send_message(&server, &bob, &room, edit(&r3, "three!")).await;
    let reference = send_message(
        &server,
        &carol,
        &room,
        json!({ "msgtype": "m.text", "body": "see",
                "m.relates_to": { "rel_type": "m.reference", "event_id": root } }),
    )
    .await;

    let check = |event: &Value, participated: bool| {
        let relations = &event["unsigned"]["m.relations"];
        assert_eq!(
            relations["m.replace"]["event_id"],
            second_edit.as_str(),
            "{event}"
        );
        assert_eq!(
            relations["m.replace"]["content"]["m.new_content"]["body"],
            "root v3"
        );
        // The original's content stays as sent.
        assert_eq!(event["content"]["body"], "root");
        let thread = &relations["m.thread"];
        assert_eq!(thread["count"], 3, "{event}");
        assert_eq!(thread["current_user_participated"], participated);
        assert_eq!(thread["latest_event"]["event_id"], r3.as_str());
        // The latest reply comes with its own edit.
        assert_eq!(
            thread["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"],
            r3_edit.as_str()
        );
        assert_eq!(
            relations["m.reference"]["chunk"],
            json!([{ "event_id": reference }])
        );
    };
    check(&event(&server, &bob, &room, &root).await, true);
    check(&event(&server, &alice, &room, &root).await, true);
    check(&event(&server, &carol, &room, &root).await, false);
    // An edit carries no aggregation of its own; the first edit is still stored as sent.
    let edit_event = event(&server, &alice, &room, &first_edit).await;
    assert!(
        edit_event["unsigned"].get("m.relations").is_none(),
        "{edit_event}"
    );

    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            &carol,
        )
        .await;
    let found = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .expect("the root in /messages")
        .clone();
    check(&found, false);
    let context = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/context/{root}?limit=2"),
            &bob,
        )
        .await;
    check(&context["event"], true);
    let sync = server
        .get_ok(
            "/_matrix/client/v3/sync?filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A50%7D%7D%7D",
            &carol,
        )
        .await;
    let found = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .expect("the root in /sync")
        .clone();
    check(&found, false);

    // `/relations`: every child, newest first; by type; by type and event type.
    let all = relations(&server, &bob, &room, &root).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 8, "{all}");
    assert_eq!(ids(&all["chunk"])[0], reference);
    assert!(all.get("next_batch").is_none() && all.get("recursion_depth").is_none());
    let thread = relations(&server, &bob, &room, &format!("{root}/m.thread")).await;
    assert_eq!(
        ids(&thread["chunk"]),
        vec![r3.clone(), r2.clone(), r1.clone()]
    );
    let stickers = relations(&server, &bob, &room, &format!("{root}/m.replace/m.sticker")).await;
    assert_eq!(stickers["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(stickers["chunk"][0]["type"], "m.sticker");

    // Pages of two, backward and forward, with `to`.
    let page1 = relations(&server, &bob, &room, &format!("{root}/m.thread?limit=2")).await;
    assert_eq!(ids(&page1["chunk"]), vec![r3.clone(), r2.clone()]);
    let next = page1["next_batch"].as_str().expect("next_batch").to_owned();
    let page2 = relations(
        &server,
        &bob,
        &room,
        &format!("{root}/m.thread?limit=2&from={next}"),
    )
    .await;
    assert_eq!(ids(&page2["chunk"]), vec![r1.clone()]);
    assert_eq!(page2["prev_batch"], next.as_str());
    assert!(page2.get("next_batch").is_none(), "{page2}");
    let forward = relations(
        &server,
        &bob,
        &room,
        &format!("{root}/m.thread?dir=f&limit=2"),
    )
    .await;
    assert_eq!(ids(&forward["chunk"]), vec![r1.clone(), r2.clone()]);
    let rest = forward["next_batch"].as_str().unwrap();
    let forward2 = relations(
        &server,
        &bob,
        &room,
        &format!("{root}/m.thread?dir=f&from={rest}"),
    )
    .await;
    assert_eq!(ids(&forward2["chunk"]), vec![r3.clone()]);
    let bounded = relations(&server, &bob, &room, &format!("{root}/m.thread?to={next}")).await;
    assert_eq!(ids(&bounded["chunk"]), vec![r3.clone(), r2.clone()]);

    // `recurse`: a reaction to a reply relates to the root only indirectly.
    let deep = send(&server, &carol, &room, "m.reaction", reaction(&r1, "👀")).await;
    let direct = relations(&server, &bob, &room, &root).await;
    assert!(!ids(&direct["chunk"]).contains(&deep));
    let recursive = relations(&server, &bob, &room, &format!("{root}?recurse=true")).await;
    assert_eq!(ids(&recursive["chunk"])[0], deep);
    assert_eq!(recursive["recursion_depth"], 3);
    let reactions = relations(
        &server,
        &bob,
        &room,
        &format!("{root}/m.annotation?recurse=true"),
    )
    .await;
    assert_eq!(ids(&reactions["chunk"]), vec![deep]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_are_listed_by_latest_reply_and_by_participation() {
    let server = TestServer::start_with(NO_LIMITS).await;
    let (alice, bob, carol, room) = room_with_three(&server).await;
    let a = send_message(&server, &alice, &room, text("thread A")).await;
    let b = send_message(&server, &alice, &room, text("thread B")).await;
    let c = send_message(&server, &carol, &room, text("thread C")).await;
    send_message(&server, &alice, &room, text("no thread")).await;
    send_message(&server, &alice, &room, thread_reply(&a, "a1")).await;
    send_message(&server, &bob, &room, thread_reply(&b, "b1")).await;
    send_message(&server, &alice, &room, thread_reply(&c, "c1")).await;
    send_message(&server, &alice, &room, thread_reply(&a, "a2")).await;

    let threads = server
        .get_ok(&format!("/_matrix/client/v1/rooms/{room}/threads"), &bob)
        .await;
    assert_eq!(
        ids(&threads["chunk"]),
        vec![a.clone(), c.clone(), b.clone()]
    );
    assert_eq!(
        threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"],
        2
    );
    assert!(threads.get("next_batch").is_none());
    // Bob replied in B; Carol wrote C's root.
    let bobs = server
        .get_ok(
            &format!("/_matrix/client/v1/rooms/{room}/threads?include=participated"),
            &bob,
        )
        .await;
    assert_eq!(ids(&bobs["chunk"]), vec![b.clone()]);
    let carols = server
        .get_ok(
            &format!("/_matrix/client/v1/rooms/{room}/threads?include=participated"),
            &carol,
        )
        .await;
    assert_eq!(ids(&carols["chunk"]), vec![c.clone()]);
    // Pages of one; the last one says it is the last.
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut path = format!("/_matrix/client/v1/rooms/{room}/threads?limit=1");
    loop {
        let page = server.get_ok(&path, &bob).await;
        pages += 1;
        seen.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(next) => {
                path = format!("/_matrix/client/v1/rooms/{room}/threads?limit=1&from={next}")
            }
            None => break,
        }
        assert!(seen.len() <= 3, "pagination does not end: {seen:?}");
    }
    assert_eq!(seen, vec![a.clone(), c, b.clone()]);
    assert_eq!(pages, 3);

    // Threaded receipts name the thread their event is in; a root is in its thread and in
    // the main timeline.
    let a1 = ids(&relations(&server, &bob, &room, &format!("{a}/m.thread")).await["chunk"])
        .pop()
        .expect("a1");
    for (event, thread, status) in [
        (&a1, a.as_str(), StatusCode::OK),
        (&a, a.as_str(), StatusCode::OK),
        (&a, "main", StatusCode::OK),
        (&a1, "main", StatusCode::BAD_REQUEST),
        (&a1, b.as_str(), StatusCode::BAD_REQUEST),
        (&b, a.as_str(), StatusCode::BAD_REQUEST),
        // A reply is no thread of its own.
        (&a1, a1.as_str(), StatusCode::BAD_REQUEST),
    ] {
        let answer = server
            .post(
                &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"),
                Some(&bob.token),
                json!({ "thread_id": thread }),
            )
            .await;
        assert_eq!(answer.0, status, "{event} in {thread}: {}", answer.1);
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(answer.1["errcode"], "M_INVALID_PARAM");
        }
    }

    // Outsiders may not list threads; nonsense tokens are refused.
    let dave = server.register("dave", "dave-password-1").await;
    let (status, body) = server
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/threads"),
            Some(&dave.token),
        )
        .await;
    assert_error(&(status, body), StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let bad = server
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/threads?from=nonsense"),
            Some(&bob.token),
        )
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_once_per_key_and_redactions_take_relations_out() {
    let server = TestServer::start_with(NO_LIMITS).await;
    let (alice, bob, _carol, room) = room_with_three(&server).await;
    let message = send_message(&server, &alice, &room, text("react to me")).await;
    let thumbs = send(&server, &bob, &room, "m.reaction", reaction(&message, "👍")).await;
    let again = try_send(&server, &bob, &room, "m.reaction", reaction(&message, "👍")).await;
    assert_error(&again, StatusCode::BAD_REQUEST, "M_DUPLICATE_ANNOTATION");
    send(&server, &bob, &room, "m.reaction", reaction(&message, "🎉")).await;
    send(
        &server,
        &alice,
        &room,
        "m.reaction",
        reaction(&message, "👍"),
    )
    .await;
    let annotations = relations(&server, &bob, &room, &format!("{message}/m.annotation")).await;
    assert_eq!(annotations["chunk"].as_array().unwrap().len(), 3);

    // A redacted reaction leaves the index; the same reaction may then be sent again.
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{thumbs}/undo1"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let annotations = relations(&server, &bob, &room, &format!("{message}/m.annotation")).await;
    assert!(!ids(&annotations["chunk"]).contains(&thumbs));
    assert_eq!(annotations["chunk"].as_array().unwrap().len(), 2);
    send(&server, &bob, &room, "m.reaction", reaction(&message, "👍")).await;

    // Redacting the latest edit brings back the one before; redacting a reply uncounts it.
    let edit1 = send_message(&server, &alice, &room, edit(&message, "v2")).await;
    let edit2 = send_message(&server, &alice, &room, edit(&message, "v3")).await;
    let reply1 = send_message(&server, &bob, &room, thread_reply(&message, "r1")).await;
    let reply2 = send_message(&server, &bob, &room, thread_reply(&message, "r2")).await;
    let shown = event(&server, &alice, &room, &message).await;
    assert_eq!(
        shown["unsigned"]["m.relations"]["m.replace"]["event_id"],
        edit2.as_str()
    );
    for (n, id) in [&edit2, &reply2].into_iter().enumerate() {
        let (status, body) = server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/redact/{id}/undo-more{n}"),
                Some(&alice.token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let shown = event(&server, &alice, &room, &message).await;
    let bundled = &shown["unsigned"]["m.relations"];
    assert_eq!(bundled["m.replace"]["event_id"], edit1.as_str(), "{shown}");
    assert_eq!(bundled["m.thread"]["count"], 1);
    assert_eq!(
        bundled["m.thread"]["latest_event"]["event_id"],
        reply1.as_str()
    );

    // The thread is listed while a reply is left; with its last reply redacted it is gone,
    // and Bob no longer took part.
    let threads = |who: &Session, query: &'static str| {
        let path = format!("/_matrix/client/v1/rooms/{room}/threads{query}");
        let server = &server;
        let who = who.clone();
        async move { ids(&server.get_ok(&path, &who).await["chunk"]) }
    };
    assert_eq!(threads(&alice, "").await, vec![message.clone()]);
    assert_eq!(
        threads(&bob, "?include=participated").await,
        vec![message.clone()]
    );
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{reply1}/undo-last"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(threads(&alice, "").await.is_empty());
    assert!(threads(&bob, "?include=participated").await.is_empty());

    // A redacted original is not shown edited.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{message}/undo-original"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let shown = event(&server, &alice, &room, &message).await;
    assert!(
        shown["unsigned"]["m.relations"].get("m.replace").is_none(),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relations_that_may_not_be_made_or_read_get_the_spec_answers() {
    let server = TestServer::start_with(NO_LIMITS).await;
    let (alice, bob, _carol, room) = room_with_three(&server).await;
    let other_room = server.create_room(&alice, json!({})).await;
    let elsewhere = send_message(&server, &alice, &other_room, text("elsewhere")).await;
    let message = send_message(&server, &alice, &room, text("here")).await;

    // Into another room.
    let cross = try_send(
        &server,
        &alice,
        &room,
        "m.room.message",
        thread_reply(&elsewhere, "x"),
    )
    .await;
    assert_error(&cross, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    // Not an event ID.
    let nonsense = try_send(
        &server,
        &alice,
        &room,
        "m.room.message",
        thread_reply("not-an-id", "x"),
    )
    .await;
    assert_error(&nonsense, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    // A thread from an event that relates to another.
    let reply = send_message(&server, &bob, &room, thread_reply(&message, "in thread")).await;
    let nested = try_send(
        &server,
        &alice,
        &room,
        "m.room.message",
        thread_reply(&reply, "x"),
    )
    .await;
    assert_error(&nested, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    // A reaction without a key.
    let keyless = try_send(
        &server,
        &alice,
        &room,
        "m.reaction",
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": message } }),
    )
    .await;
    assert_error(&keyless, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    // Unknown parents (which may arrive later) and custom relation types are accepted.
    send_message(&server, &alice, &room, json!({ "body": "x", "m.relates_to": { "rel_type": "m.reference", "event_id": "$unknown:example.org" } }),
    )
    .await;
    let custom = send(
        &server,
        &bob,
        &room,
        "org.example.note",
        json!({ "m.relates_to": { "rel_type": "org.example.custom", "event_id": message } }),
    )
    .await;
    let listed = relations(
        &server,
        &alice,
        &room,
        &format!("{message}/org.example.custom"),
    )
    .await;
    assert_eq!(ids(&listed["chunk"]), vec![custom.clone()]);

    // Reading: an unknown event, one of another room, one the user may not see.
    for path in [
        format!("/_matrix/client/v1/rooms/{room}/relations/$nothing:example.org"),
        format!("/_matrix/client/v1/rooms/{room}/relations/{elsewhere}"),
    ] {
        let answer = server.get(&path, Some(&alice.token)).await;
        assert_error(&answer, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    let outsider = server.register("dave", "dave-password-1").await;
    let hidden = server
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/relations/{message}"),
            Some(&outsider.token),
        )
        .await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let bad_token = server
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/relations/{message}?from=x"),
            Some(&alice.token),
        )
        .await;
    assert_error(&bad_token, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let bad_dir = server
        .get(
            &format!("/_matrix/client/v1/rooms/{room}/relations/{message}?dir=sideways"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(bad_dir.0, StatusCode::BAD_REQUEST, "{}", bad_dir.1);
    // An absurd limit is capped, not an error.
    let huge = relations(
        &server,
        &alice,
        &room,
        &format!("{message}?limit=99999999999"),
    )
    .await;
    assert_eq!(ids(&huge["chunk"]), vec![custom, reply]);
}

/// Between two culverts: Bob on B replies in a thread of Alice's on A, edits his own message
/// and reacts; A counts the reply, shows the edit, lists the thread; B, which received Alice's
/// root over federation, bundles Alice's remote edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_replies_edits_and_reactions_count_on_both_servers() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = crate::federation::shared_room(&a, &b).await;
    let root = send_message(&a, &alice, &room, text("root on A")).await;
    b.wait_for_message(&bob, &room, "root on A").await;
    let reply = send_message(&b, &bob, &room, thread_reply(&root, "reply from B")).await;
    let bobs = send_message(&b, &bob, &room, text("typo")).await;
    let bobs_edit = send_message(&b, &bob, &room, edit(&bobs, "fixed")).await;
    let thumbs = send(&b, &bob, &room, "m.reaction", reaction(&root, "👍")).await;
    let alices_edit = send_message(&a, &alice, &room, edit(&root, "root, edited")).await;

    // A: the remote reply is counted, the remote edit replaces, the reaction is listed.
    a.wait_for_message(&alice, &room, "* fixed").await;
    crate::common::eventually("A lists B's reaction", || async {
        let listed = relations(&a, &alice, &room, &format!("{root}/m.annotation")).await;
        ids(&listed["chunk"]) == vec![thumbs.clone()]
    })
    .await;
    let on_a = event(&a, &alice, &room, &root).await;
    let thread = &on_a["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 1, "{on_a}");
    assert_eq!(thread["latest_event"]["event_id"], reply.as_str());
    assert_eq!(thread["latest_event"]["sender"], bob.user_id.as_str());
    assert_eq!(
        thread["current_user_participated"], true,
        "Alice wrote the root"
    );
    let edited = event(&a, &alice, &room, &bobs).await;
    assert_eq!(
        edited["unsigned"]["m.relations"]["m.replace"]["event_id"],
        bobs_edit.as_str(),
        "{edited}"
    );
    let threads = a
        .get_ok(&format!("/_matrix/client/v1/rooms/{room}/threads"), &alice)
        .await;
    assert_eq!(ids(&threads["chunk"]), vec![root.clone()]);

    // B: Alice's edit of her root, received over federation, replaces it there too.
    b.wait_for_message(&bob, &room, "* root, edited").await;
    let on_b = event(&b, &bob, &room, &root).await;
    let bundled = &on_b["unsigned"]["m.relations"];
    assert_eq!(
        bundled["m.replace"]["event_id"],
        alices_edit.as_str(),
        "{on_b}"
    );
    assert_eq!(bundled["m.thread"]["count"], 1);
    assert_eq!(bundled["m.thread"]["current_user_participated"], true);
    let bobs_threads = b
        .get_ok(
            &format!("/_matrix/client/v1/rooms/{room}/threads?include=participated"),
            &bob,
        )
        .await;
    assert_eq!(ids(&bobs_threads["chunk"]), vec![root]);
}

/// Bundling costs the same however many reactions and replies an event has: reactions are
/// never read for it, a thread's count is a counter (store reads, not time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundling_reads_do_not_grow_with_reactions_and_replies() {
    let server = TestServer::start_with(NO_LIMITS).await;
    let (alice, bob, _carol, room) = room_with_three(&server).await;
    let message = send_message(&server, &alice, &room, text("popular")).await;
    let root = send_message(&server, &alice, &room, text("busy thread")).await;
    let mut n = 0;
    let mut grow = async |by: usize| {
        for _ in 0..by {
            n += 1;
            send(
                &server,
                &bob,
                &room,
                "m.reaction",
                reaction(&message, &format!("k{n}")),
            )
            .await;
            send_message(
                &server,
                &bob,
                &room,
                thread_reply(&root, &format!("reply {n}")),
            )
            .await;
        }
    };
    grow(3).await;
    // Measured warm (the second read of each), so caches count the same both times.
    let cost = async |id: &str| {
        event(&server, &alice, &room, id).await;
        let before = server.services().store.read_stats();
        let event = event(&server, &alice, &room, id).await;
        (server.services().store.read_stats() - before, event)
    };
    let (message_small, _) = cost(&message).await;
    let (root_small, event_small) = cost(&root).await;
    assert_eq!(
        event_small["unsigned"]["m.relations"]["m.thread"]["count"],
        3
    );
    grow(200).await;
    let (message_big, _) = cost(&message).await;
    let (root_big, event_big) = cost(&root).await;
    let thread = &event_big["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 203, "{event_big}");
    assert_eq!(thread["latest_event"]["content"]["body"], "reply 203");
    assert_eq!(thread["current_user_participated"], true); // alice wrote the root
    assert_eq!(
        message_big, message_small,
        "a message's cost grew with its reactions"
    );
    assert_eq!(root_big, root_small, "a root's cost grew with its replies");
}

/// An `m.replace` without `m.new_content` is no edit: never bundled, though still a relation.
#[tokio::test]
async fn an_edit_without_new_content_is_not_bundled() {
    let server = TestServer::start_with(NO_LIMITS).await;
    let (alice, _bob, _carol, room) = room_with_three(&server).await;
    let original = send_message(&server, &alice, &room, text("original")).await;
    let valid = send_message(&server, &alice, &room, edit(&original, "edited")).await;
    let mut broken = edit(&original, "broken");
    broken.as_object_mut().unwrap().remove("m.new_content");
    let broken = send_message(&server, &alice, &room, broken).await;
    let event = event(&server, &alice, &room, &original).await;
    assert_eq!(
        event["unsigned"]["m.relations"]["m.replace"]["event_id"], valid,
        "{event}"
    );
    let all = relations(&server, &alice, &room, &original).await;
    assert_eq!(ids(&all["chunk"]), vec![broken.clone(), valid.clone()]);
    let edits = relations(&server, &alice, &room, &format!("{original}/m.replace")).await;
    assert_eq!(ids(&edits["chunk"]), vec![broken, valid]);
}
