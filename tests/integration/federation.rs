//! Federation between two culverts over TLS on loopback: server keys, signed requests, the
//! notary, and what happens to unsigned or forged requests.

use reqwest::StatusCode;
use ruma::{
    ServerName, UserId,
    api::federation::query::get_profile_information,
    serde::{Base64, base64::Standard},
};
use serde_json::json;

use crate::common::{TestServer, assert_error, eventually, next_batch};

pub(crate) fn name(server: &TestServer) -> ruma::OwnedServerName {
    ServerName::parse(server.server_name()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_fetch_each_others_keys_and_sign_their_requests() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let bob = b.register("bob", "bob-password-1").await;
    b.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id),
        Some(&bob.token),
        json!({ "displayname": "Bob on B" }),
    )
    .await;

    // A fetches B's key directly, and it is the key B signs with.
    let b_key_id = b.services().globals.signing_key_id();
    let keys = a
        .services()
        .server_public_keys(&name(&b), std::slice::from_ref(&b_key_id), 0)
        .await
        .unwrap();
    let b_public =
        Base64::<Standard, Vec<u8>>::new(b.services().globals.signing_key().public_key().to_vec());
    assert_eq!(
        keys.get(&b_key_id).map(|k| k.encode()),
        Some(b_public.encode())
    );

    // A signed request from A to B passes B's check (B fetches A's key to verify it).
    let request = get_profile_information::v1::Request::new(UserId::parse(&bob.user_id).unwrap());
    let profile = a
        .services()
        .send_federation_request(&name(&b), request)
        .await
        .expect("a signed request is accepted");
    assert_eq!(
        serde_json::to_value(&profile.data).unwrap()["displayname"],
        "Bob on B"
    );

    // A user that does not exist: B answers 404 and A reports it as such.
    let missing = get_profile_information::v1::Request::new(
        UserId::parse(format!("@nobody:{}", b.server_name())).unwrap(),
    );
    let error = a
        .services()
        .send_federation_request(&name(&b), missing)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));
}

/// A's genuine `X-Matrix` authorization for `GET path` addressed to `destination`.
fn x_matrix_get(a: &TestServer, destination: &ServerName, path: &str) -> String {
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    let request = http::Request::builder()
        .method("GET")
        .uri(path)
        .body(Vec::<u8>::new())
        .unwrap();
    let input = XMatrixSigningInput::new(
        name(a),
        destination.to_owned(),
        a.services().globals.signing_key(),
    );
    let x_matrix = XMatrix::sign_http_request(&request, input).unwrap();
    http::HeaderValue::from(&x_matrix)
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_forged_requests_get_401() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let bob = b.register("bob", "bob-password-1").await;
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        crate::common::urlencode(&bob.user_id)
    );

    // No Authorization header at all.
    let result = b.get(&path, None).await;
    assert_error(&result, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");

    // A well-formed header whose signature is not A's.
    let forged = format!(
        "X-Matrix origin=\"{}\",destination=\"{}\",key=\"{}\",sig=\"{}\"",
        a.server_name(),
        b.server_name(),
        a.services().globals.signing_key_id(),
        Base64::<Standard, Vec<u8>>::new(vec![7u8; 64]).encode()
    );
    let response = b
        .http
        .get(format!("{}{path}", b.base))
        .header("Authorization", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    // A genuine signature for a different request (another user) does not carry over.
    let other_path = "/_matrix/federation/v1/query/profile?user_id=%40eve%3Aexample.org";
    let signed_for_other = x_matrix_get(&a, &name(&b), other_path);
    let response = b
        .http
        .get(format!("{}{path}", b.base))
        .header("Authorization", signed_for_other)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Addressed to another server: a genuine signature of A over this very request, but for
    // the destination `elsewhere.example` (a request B could have been handed by that server).
    let misaddressed = x_matrix_get(&a, &ServerName::parse("elsewhere.example").unwrap(), &path);
    assert!(
        misaddressed.contains("destination=elsewhere.example"),
        "{misaddressed}"
    );
    let response = b
        .http
        .get(format!("{}{path}", b.base))
        .header("Authorization", misaddressed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notary_hands_on_keys_it_countersigned() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;

    // B, asked for A's keys, fetches them from A and countersigns them.
    let (status, body) = b
        .get(&format!("/_matrix/key/v2/query/{}", a.server_name()), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let document = &body["server_keys"][0];
    assert_eq!(document["server_name"], a.server_name());
    let a_key_id = a.services().globals.signing_key_id();
    assert!(document["verify_keys"][&a_key_id]["key"].is_string());
    // Both signatures verify: A's own over its keys, and B's countersignature — with the keys
    // each server really has, not just present.
    let public_keys = |servers: &[&TestServer]| {
        let mut map = ruma::signatures::PublicKeyMap::new();
        for server in servers {
            let globals = &server.services().globals;
            let key = Base64::<Standard, Vec<u8>>::new(globals.signing_key().public_key().to_vec());
            map.insert(
                server.server_name(),
                [(globals.signing_key_id().to_string(), key)].into(),
            );
        }
        map
    };
    let signed: ruma::CanonicalJsonObject = serde_json::from_value(document.clone()).unwrap();
    ruma::signatures::verify_json(&public_keys(&[&a, &b]), &signed)
        .expect("A's signature and B's countersignature verify");
    // A changed key no longer verifies: the check above is a real one.
    let mut altered = signed.clone();
    altered.insert(
        "valid_until_ts".into(),
        ruma::CanonicalJsonValue::Integer(ruma::Int::MAX),
    );
    assert!(ruma::signatures::verify_json(&public_keys(&[&b]), &altered).is_err());

    // The batch form, including B's own keys.
    let (status, body) = b
        .post(
            "/_matrix/key/v2/query",
            None,
            json!({ "server_keys": { a.server_name(): {}, b.server_name(): {} } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["server_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["server_name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&a.server_name().as_str()));
    assert!(names.contains(&b.server_name().as_str()));

    // A server that does not answer: no keys, not an error.
    let (status, body) = b.get("/_matrix/key/v2/query/127.0.0.1:9", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["server_keys"], json!([]));

    // The version endpoint names the software.
    let (status, body) = b.get("/_matrix/federation/v1/version", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["server"]["name"], "culvert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_denylist_keeps_federation_off_loopback() {
    // The real default list, which denies loopback (naming the key, even in a comment, keeps
    // the test set-up from writing `ip_range_denylist = []`).
    let a = TestServer::start_federating("# ip_range_denylist: the default").await;
    let b = TestServer::start_federating("").await;
    let error = a
        .services()
        .send_federation_request(
            &name(&b),
            get_profile_information::v1::Request::new(
                UserId::parse(format!("@x:{}", b.server_name())).unwrap(),
            ),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("ip_range_denylist"), "{error}");
    assert_eq!(error.status(), None, "no request reached B");
}

#[tokio::test]
async fn federation_is_refused_when_disabled() {
    let server = TestServer::start().await;
    let result = server
        .get(
            "/_matrix/federation/v1/query/profile?user_id=%40a%3Atest.local",
            None,
        )
        .await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_joins_a_room_on_another_culvert_and_messages_flow_both_ways() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = a
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Across", "room_alias_name": "across" }),
        )
        .await;
    a.say(&alice, &room, "before bob").await;

    // Bob joins through A, by alias (B asks A for the alias).
    let alias = format!("#across:{}", a.server_name());
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                crate::common::urlencode(&alias)
            ),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room);
    assert!(b.joined_rooms(&bob).await.contains(&room));

    // B knows the room's state: its name, and both members.
    let name = b
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            &bob,
        )
        .await;
    assert_eq!(name["name"], "Across");
    let members = b
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            &bob,
        )
        .await;
    assert!(members["joined"][&alice.user_id].is_object(), "{members}");
    assert!(members["joined"][&bob.user_id].is_object(), "{members}");

    // A sees Bob's join, as it was sent to A.
    let members = a
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            &alice,
        )
        .await;
    assert!(members["joined"][&bob.user_id].is_object(), "{members}");

    // Messages both ways.
    a.say(&alice, &room, "hello from A").await;
    b.wait_for_message(&bob, &room, "hello from A").await;
    b.say(&bob, &room, "hello from B").await;
    a.wait_for_message(&alice, &room, "hello from B").await;

    // A state change on B reaches A.
    let (status, _) = b
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(&bob.token),
            json!({ "topic": "set on B" }),
        )
        .await;
    // Bob has no power to set the topic in a public_chat room: refused locally.
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(&alice.token),
            json!({ "topic": "set on A" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("the topic reaching B", || async {
        let (status, topic) = b
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
                Some(&bob.token),
            )
            .await;
        status == StatusCode::OK && topic["topic"] == "set on A"
    })
    .await;
}

/// A big, old room always holds events of servers that are gone, whose keys nobody can fetch
/// any more: a joining server leaves those events out of the state (as Synapse does) instead
/// of failing the join — before, one such event made every join answer 403.
#[tokio::test]
async fn a_join_leaves_out_the_events_of_a_server_that_is_gone() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let gone = TestServer::start_federating("").await;
    // Carol of the gone server joined Alice's room on A, then her server went away for good:
    // B has never seen it, and no notary is configured (`trusted_servers = []`).
    let (alice, carol, room) = shared_room(&a, &gone).await;
    gone.stop().await;

    let dave = b.register("dave", "dave-password-1").await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{room}?via={}", a.server_name()),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let members = b
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            &dave,
        )
        .await;
    assert!(members["joined"][&alice.user_id].is_object(), "{members}");
    assert!(members["joined"][&dave.user_id].is_object(), "{members}");
    // Carol's join could not be checked: it is not part of the state B keeps.
    assert!(members["joined"][&carol.user_id].is_null(), "{members}");

    // And the room works: Alice's next message reaches Dave.
    a.say(&alice, &room, "welcome, dave").await;
    let mut seen = false;
    for _ in 0..100 {
        let (_, page) = b
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"),
                Some(&dave.token),
            )
            .await;
        if page["chunk"].as_array().is_some_and(|events| {
            events
                .iter()
                .any(|e| e["content"]["body"] == "welcome, dave")
        }) {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen, "Alice's message did not reach B");
}

/// A room on A that a user of B joined: the set-up of the tests that feed B crafted events.
pub(crate) async fn shared_room(
    a: &TestServer,
    b: &TestServer,
) -> (crate::common::Session, crate::common::Session, String) {
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = a
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/join/{room}?via={}", a.server_name()),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (alice, bob, room)
}

/// An event of `sender` in `room` as A would make it (A's current extremities and auth
/// events), signed by A's key. `tamper` changes it after signing.
pub(crate) fn crafted_event(
    a: &TestServer,
    room: &str,
    sender: &str,
    text: &str,
    tamper: impl FnOnce(&mut ruma::CanonicalJsonObject),
) -> (String, Box<serde_json::value::RawValue>) {
    crafted_event_with(a, room, sender, text, |_| {}, tamper)
}

/// [`crafted_event`], with `before` changing the event before A hashes and signs it (a
/// malicious server's own event, correctly signed).
pub(crate) fn crafted_event_with(
    a: &TestServer,
    room: &str,
    sender: &str,
    text: &str,
    before: impl FnOnce(&mut ruma::CanonicalJsonObject),
    tamper: impl FnOnce(&mut ruma::CanonicalJsonObject),
) -> (String, Box<serde_json::value::RawValue>) {
    let (id, mut json) = crafted_pdu(
        a,
        room,
        sender,
        ("m.room.message", None),
        json!({ "msgtype": "m.text", "body": text }),
        before,
    );
    tamper(&mut json);
    (id, serde_json::value::to_raw_value(&json).unwrap())
}

/// Any event of `sender` in `room` — `kind` is its type and state key — as A would make it
/// (A's current extremities and auth events), changed by `before`, then hashed and signed by
/// A's key. Its ID and its JSON.
pub(crate) fn crafted_pdu(
    a: &TestServer,
    room: &str,
    sender: &str,
    kind: (&str, Option<&str>),
    content: serde_json::Value,
    before: impl FnOnce(&mut ruma::CanonicalJsonObject),
) -> (String, ruma::CanonicalJsonObject) {
    use culvert::service::rooms::{pdu, timeline::LocalEvent};
    let room_id = ruma::RoomId::parse(room).unwrap();
    let sender = UserId::parse(sender).unwrap();
    let services = a.services();
    let (version, mut template) = services
        .timeline
        .event_template(
            &room_id,
            &sender,
            LocalEvent {
                event_type: kind.0,
                state_key: kind.1,
                content,
                redacts: None,
            },
        )
        .unwrap();
    before(&mut template);
    let signed = pdu::finish(
        template,
        Some(&room_id),
        &version.rules().unwrap(),
        &services.server_name,
        services.globals.signing_key(),
    )
    .unwrap();
    (signed.event_id.to_string(), signed.json)
}

/// Sends `pdus` to B as one transaction signed by A; B's answer per PDU.
pub(crate) async fn send_to(
    a: &TestServer,
    b: &TestServer,
    txn: &str,
    pdus: Vec<Box<serde_json::value::RawValue>>,
) -> std::collections::BTreeMap<ruma::OwnedEventId, Result<(), String>> {
    use ruma::api::federation::transactions::send_transaction_message;
    let mut request = send_transaction_message::v1::Request::new(
        ruma::OwnedTransactionId::from(txn),
        name(a),
        ruma::MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = pdus;
    a.services()
        .send_federation_request(&name(b), request)
        .await
        .expect("B answers the transaction")
        .pdus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_unauthorised_events_never_reach_clients() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;
    let since = next_batch(&b.get_ok("/_matrix/client/v3/sync?timeout=0", &bob).await);

    // 1. A forged signature: the event is refused.
    let (forged_id, forged) = crafted_event(&a, &room, &alice.user_id, "forged", |pdu| {
        let signatures = pdu.get_mut("signatures").unwrap();
        let ruma::CanonicalJsonValue::Object(by_server) = signatures else {
            panic!()
        };
        for (_, sigs) in by_server.iter_mut() {
            let ruma::CanonicalJsonValue::Object(sigs) = sigs else {
                panic!()
            };
            for (_, sig) in sigs.iter_mut() {
                *sig = ruma::CanonicalJsonValue::String(
                    Base64::<Standard, Vec<u8>>::new(vec![1u8; 64]).encode(),
                );
            }
        }
    });
    // 2. Content changed after hashing: the signature (over the redacted form) still holds,
    //    the hash does not; the event is kept redacted.
    let (tampered_id, tampered) = crafted_event(&a, &room, &alice.user_id, "original", |pdu| {
        let ruma::CanonicalJsonValue::Object(content) = pdu.get_mut("content").unwrap() else {
            panic!()
        };
        content.insert(
            "body".into(),
            ruma::CanonicalJsonValue::String("tampered".into()),
        );
    });
    let results = send_to(&a, &b, "security-1", vec![forged, tampered]).await;
    let forged_id = ruma::EventId::parse(&forged_id).unwrap();
    let tampered_id = ruma::EventId::parse(&tampered_id).unwrap();
    assert!(
        results.get(&forged_id).is_none_or(|r| r.is_err()),
        "the forged event was accepted: {results:?}"
    );
    assert_eq!(results.get(&tampered_id), Some(&Ok(())), "{results:?}");

    // 3. A user who is not in the room: signed correctly by A, refused by the auth rules.
    let (intruder_id, intruder) = crafted_event(
        &a,
        &room,
        &format!("@mallory:{}", a.server_name()),
        "intruder",
        |_| {},
    );
    let results = send_to(&a, &b, "security-2", vec![intruder]).await;
    let intruder_id = ruma::EventId::parse(&intruder_id).unwrap();
    assert!(
        matches!(results.get(&intruder_id), Some(Err(_))),
        "the intruder's event was accepted: {results:?}"
    );

    // A real message after them, so the sync below has something to wait for.
    a.say(&alice, &room, "genuine").await;
    b.wait_for_message(&bob, &room, "genuine").await;
    let body = b
        .get_ok(
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            &bob,
        )
        .await;
    let events = &body["rooms"]["join"][&room]["timeline"]["events"];
    let texts = crate::common::message_bodies(events);
    assert!(
        !texts
            .iter()
            .any(|t| t == "forged" || t == "intruder" || t == "tampered"),
        "{texts:?}"
    );
    // The tampered event is there, redacted.
    let (status, event) = b
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{tampered_id}"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"], json!({}));
    // The forged and the intruder's events are unknown to B's clients.
    for id in [&forged_id, &intruder_id] {
        let (status, _) = b
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{id}"),
                Some(&bob.token),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
    }

    // A repeated transaction is answered the same and not processed again.
    let again = send_to(&a, &b, "security-2", vec![]).await;
    assert!(matches!(again.get(&intruder_id), Some(Err(_))), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_redactions_bans_and_history_between_two_culverts() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = a
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "invite": [bob.user_id] }),
        )
        .await;
    for i in 0..30 {
        a.say(&alice, &room, &format!("history {i}")).await;
    }

    // Bob sees the invite (with the room's stripped state) and joins through it.
    b.sync_until(&bob, "the invite", |body| {
        body["rooms"]["invite"][&room]["invite_state"]["events"].is_array()
    })
    .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // History from before the join: backfilled from A when Bob pages back.
    let (status, page) = b
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let texts = crate::common::message_bodies(&page["chunk"]);
    for i in 0..30 {
        assert!(
            texts.contains(&format!("history {i}")),
            "missing history {i}: {texts:?}"
        );
    }

    // Redactions both ways.
    let bobs = b.say(&bob, &room, "bob's words").await;
    a.wait_for_message(&alice, &room, "bob's words").await;
    let (status, _) = b
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{bobs}/r1"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("A applying B's redaction", || async {
        let (_, event) = a
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{bobs}"),
                Some(&alice.token),
            )
            .await;
        event["content"] == json!({})
    })
    .await;

    // Alice bans Bob: B sees its user banned, and B's messages are no longer accepted.
    let (status, _) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually("B seeing the ban", || async {
        !b.joined_rooms(&bob).await.contains(&room)
    })
    .await;
    let (status, _) = b
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/after-ban"),
            Some(&bob.token),
            json!({ "msgtype": "m.text", "body": "after the ban" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A self-signed certificate for `localhost` in `dir`: (certificate path, key path).
fn localhost_certificate(dir: &std::path::Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// Server name resolution through `/.well-known/matrix/server` (served on port 443 by another
/// server): a server named plain `localhost` is reached on the port its delegation names.
/// Needs port 443 (root, or CAP_NET_BIND_SERVICE); skipped with a message without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_is_resolved_through_well_known_delegation() {
    if std::net::TcpListener::bind("127.0.0.1:443").is_err() {
        crate::common::skip(None, "port 443 cannot be bound here");
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let (cert, key) = localhost_certificate(dir.path());
    let b_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // B is `localhost`, listening on a port its name does not say.
    let b = TestServer::start_with(&format!(
        r#"server_name = "localhost"
port = {b_port}
allow_federation = true
allow_invalid_tls_certificates = true
ip_range_denylist = []
trusted_servers = []
rate_limits = {{ enabled = false }}
tls = {{ certs = "{cert}", key = "{key}" }}"#
    ))
    .await;
    // The web server of `localhost` (port 443) delegates to it.
    let _web = TestServer::start_with(&format!(
        r#"server_name = "web.localhost"
port = 443
tls = {{ certs = "{cert}", key = "{key}" }}
well_known = {{ server = "localhost:{b_port}" }}"#
    ))
    .await;
    let a = TestServer::start_federating("").await;
    let bob = b.register("bob", "bob-password-1").await;
    let profile = a
        .services()
        .send_federation_request(
            &ServerName::parse("localhost").unwrap(),
            get_profile_information::v1::Request::new(UserId::parse(&bob.user_id).unwrap()),
        )
        .await
        .expect("A reaches `localhost` through its delegation");
    assert!(serde_json::to_value(&profile.data).unwrap()["displayname"].is_string());
    let destination = a
        .services()
        .federation
        .resolver
        .resolve(&ServerName::parse("localhost").unwrap())
        .await;
    assert_eq!(
        (destination.host.as_str(), destination.port),
        ("localhost", b_port)
    );
}

/// Makes B miss what `work` does on A: A may not talk to B meanwhile (its events queue up for
/// B), then A's queue for B is dropped — as Synapse does when it catches up after an outage —
/// and A talks to B again. Returns A, restarted.
async fn while_b_misses_it(
    a: TestServer,
    b: &TestServer,
    work: impl AsyncFnOnce(&TestServer),
) -> TestServer {
    use culvert::store::{Batch, Cf, keys};
    let lines: String = a
        .extra_config()
        .lines()
        .filter(|l| !l.starts_with("federation_denylist"))
        .collect::<Vec<_>>()
        .join("\n");
    let a = a
        .restart_with(&format!(
            "{lines}\nfederation_denylist = [\"{}\"]",
            b.server_name()
        ))
        .await;
    work(&a).await;
    let services = a.services();
    let prefix = keys::prefix(b.server_name().as_bytes());
    let mut batch = Batch::new();
    for item in services.store.scan_prefix(Cf::FederationOutbox, &prefix) {
        let (key, _) = item.unwrap();
        batch.delete(Cf::FederationOutbox, key.to_vec());
    }
    services.store.write(batch).unwrap();
    a.restart_with(&lines).await
}

/// A server that missed many events (its peer dropped its queue, as Synapse does when it
/// catches up after an outage) fills the gap with rounds of `/get_missing_events` when the
/// next event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_of_many_events_is_filled_from_the_origin() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;
    a.say(&alice, &room, "before the gap").await;
    b.wait_for_message(&bob, &room, "before the gap").await;
    let a = while_b_misses_it(a, &b, async |a| {
        for i in 0..70 {
            a.say(&alice, &room, &format!("missed {i}")).await;
        }
    })
    .await;

    // Talking again: the next message reaches B, which fetches the 70 it missed.
    a.say(&alice, &room, "after the gap").await;
    b.wait_for_message(&bob, &room, "after the gap").await;
    let (status, page) = b
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let texts = crate::common::message_bodies(&page["chunk"]);
    for i in 0..70 {
        assert!(
            texts.contains(&format!("missed {i}")),
            "missed {i} never arrived: {texts:?}"
        );
    }
}

/// A gap deeper than `/get_missing_events` rounds reach: the oldest fetched event is placed
/// with the state the origin gives (`/state_ids`), so a state change from deep in the gap is
/// known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_too_deep_to_fetch_takes_the_state_from_the_origin() {
    let a = TestServer::start_federating("").await;
    let b = TestServer::start_federating("").await;
    let (alice, bob, room) = shared_room(&a, &b).await;
    a.say(&alice, &room, "before the gap").await;
    b.wait_for_message(&bob, &room, "before the gap").await;
    let a = while_b_misses_it(a, &b, async |a| {
        let (status, _) = a
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
                Some(&alice.token),
                json!({ "topic": "set deep in the gap" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        for i in 0..520 {
            a.say(&alice, &room, &format!("deep {i}")).await;
        }
    })
    .await;
    a.say(&alice, &room, "after the deep gap").await;
    b.wait_for_message(&bob, &room, "after the deep gap").await;
    let topic = b
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            &bob,
        )
        .await;
    assert_eq!(topic["topic"], "set deep in the gap");
    // The newest of the gap arrived through the rounds.
    let (_, page) = b
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
            Some(&bob.token),
        )
        .await;
    let texts = crate::common::message_bodies(&page["chunk"]);
    assert!(texts.contains(&"deep 519".to_owned()), "{texts:?}");
    drop(a);
}

/// A server that cannot be reached has its keys vouched for by a `trusted_servers` notary that
/// fetched them earlier (both signatures checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_server_that_is_down_come_from_a_notary() {
    let b = TestServer::start_federating("").await;
    let notary = TestServer::start_federating("").await;
    let b_name = name(&b);
    let b_key_id = b.services().globals.signing_key_id();
    let b_public =
        Base64::<Standard, Vec<u8>>::new(b.services().globals.signing_key().public_key().to_vec())
            .encode();
    // The notary learns B's keys (asking it makes it fetch them).
    let (status, body) = notary
        .get(&format!("/_matrix/key/v2/query/{b_name}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["server_keys"][0]["server_name"], b_name.as_str());
    b.stop().await;

    let a =
        TestServer::start_federating(&format!("trusted_servers = [\"{}\"]", notary.server_name()))
            .await;
    let keys = a
        .services()
        .server_public_keys(&b_name, std::slice::from_ref(&b_key_id), 0)
        .await
        .unwrap();
    assert_eq!(keys.get(&b_key_id).map(|k| k.encode()), Some(b_public));

    // Without a notary there is nothing to be had.
    let lonely = TestServer::start_federating("").await;
    let keys = lonely
        .services()
        .server_public_keys(&b_name, std::slice::from_ref(&b_key_id), 0)
        .await
        .unwrap();
    assert!(keys.is_empty());
}
