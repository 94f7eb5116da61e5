//! Events as clients get them: the `unsigned` fields (`transaction_id` for the sending device,
//! `age`, `membership`, `prev_content`/`prev_sender`/`replaces_state`, `redacted_because` as a
//! client event) in `/sync`, `/messages`, `/event` and `/context`, and member events that carry
//! the member's profile. The same client sequence runs against culvert and against the test
//! suite's Synapse, and both must answer with the same `unsigned` keys.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    common::{Session, TestServer, urlencode},
    e2ee::{CrossSigning, device_keys_with_pair, signed},
    synapse::{self, Synapse},
};

/// A homeserver spoken to over its client-server API only.
struct Homeserver {
    base: String,
    http: reqwest::Client,
}

impl Homeserver {
    fn culvert(server: &TestServer) -> Self {
        Self {
            base: server.base.clone(),
            http: server.http.clone(),
        }
    }

    fn synapse(synapse: &Synapse) -> Self {
        Self {
            base: synapse.base.clone(),
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        who: Option<&Session>,
        body: Option<Value>,
    ) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(who) = who {
            request = request.bearer_auth(&who.token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "{method} {path}: {body}");
        body
    }

    async fn get(&self, path: &str, who: &Session) -> Value {
        self.call(Method::GET, path, Some(who), None).await
    }

    async fn put(&self, path: &str, who: &Session, body: Value) -> Value {
        self.call(Method::PUT, path, Some(who), Some(body)).await
    }

    async fn post(&self, path: &str, who: &Session, body: Value) -> Value {
        self.call(Method::POST, path, Some(who), Some(body)).await
    }

    /// Registers through the dummy stage of user-interactive auth.
    async fn register(&self, name: &str) -> Session {
        let body = json!({ "username": name, "password": "format-password-1" });
        let url = format!("{}/_matrix/client/v3/register", self.base);
        let first: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut body = body;
        body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
        let done: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Session::from_json(&done)
    }

    async fn login(&self, name: &str) -> Session {
        let url = format!("{}/_matrix/client/v3/login", self.base);
        let done: Value = self
            .http
            .post(&url)
            .json(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": name },
                "password": "format-password-1",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Session::from_json(&done)
    }

    async fn send(&self, who: &Session, room: &str, body: &str, txn: &str) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        self.put(&path, who, json!({ "msgtype": "m.text", "body": body }))
            .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn state(&self, who: &Session, room: &str, kind: &str, content: Value) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room}/state/{kind}/");
        self.put(&path, who, content).await["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A first sync with room timelines of up to 50 events.
    async fn sync(&self, who: &Session) -> Value {
        let filter = urlencode(&json!({ "room": { "timeline": { "limit": 50 } } }).to_string());
        self.get(
            &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
            who,
        )
        .await
    }
}

/// What the shared client sequence saw.
struct Seen {
    room: String,
    alice: Session,
    bob: Session,
    hello: String,
    before_join: String,
    invite: String,
    first_topic: String,
    second_topic: String,
    renamed: String,
    oops: String,
    redaction: String,
    /// `/sync` of alice's sending device, of her second device, and of bob.
    sync_sender: Value,
    sync_other_device: Value,
    sync_bob: Value,
    /// `/messages` backwards, as alice's sending device and as bob.
    messages_sender: Value,
    messages_bob: Value,
    event_sender: Value,
    context_sender: Value,
}

/// Alice (two devices) and Bob in a private room: an invite, messages with transaction IDs,
/// two topics, a new display name, a redaction.
async fn client_sequence(hs: &Homeserver) -> Seen {
    let alice = hs.register("fmtalice").await;
    let alice2 = hs.login("fmtalice").await;
    let bob = hs.register("fmtbob").await;
    let profile =
        |who: &Session, field: &str| format!("/_matrix/client/v3/profile/{}/{field}", who.user_id);
    hs.put(
        &profile(&alice, "displayname"),
        &alice,
        json!({ "displayname": "Alice A" }),
    )
    .await;
    hs.put(
        &profile(&bob, "displayname"),
        &bob,
        json!({ "displayname": "Bob B" }),
    )
    .await;
    hs.put(
        &profile(&bob, "avatar_url"),
        &bob,
        json!({ "avatar_url": "mxc://example.org/bob" }),
    )
    .await;
    let room = hs
        .post(
            "/_matrix/client/v3/createRoom",
            &alice,
            json!({ "preset": "private_chat", "name": "format" }),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    hs.post(
        &format!("/_matrix/client/v3/rooms/{room}/invite"),
        &alice,
        json!({ "user_id": bob.user_id }),
    )
    .await;
    let before_join = hs.send(&alice, &room, "before the join", "t-before").await;
    hs.post(
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        &bob,
        json!({}),
    )
    .await;
    let hello = hs.send(&alice, &room, "hello", "t-hello").await;
    let first_topic = hs
        .state(&alice, &room, "m.room.topic", json!({ "topic": "first" }))
        .await;
    let second_topic = hs
        .state(&alice, &room, "m.room.topic", json!({ "topic": "second" }))
        .await;
    hs.put(
        &profile(&alice, "displayname"),
        &alice,
        json!({ "displayname": "Alice B" }),
    )
    .await;
    let oops = hs.send(&alice, &room, "oops", "t-oops").await;
    let redaction = hs
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/redact/{oops}/t-redact"),
            &alice,
            json!({ "reason": "typo" }),
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The member events, as the room's state has them now.
    let state = hs
        .get(&format!("/_matrix/client/v3/rooms/{room}/state"), &alice)
        .await;
    let member_of = |user: &str| {
        state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == user)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let renamed = member_of(&alice.user_id);
    // Bob's invite: the event before his join.
    let bob_join = hs
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{room}/event/{}",
                member_of(&bob.user_id)
            ),
            &alice,
        )
        .await;
    let invite = bob_join["unsigned"]["replaces_state"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("bob's join replaced his invite: {bob_join}"));
    let messages_path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50");
    let messages = |who| hs.get(&messages_path, who);
    Seen {
        sync_sender: hs.sync(&alice).await,
        sync_other_device: hs.sync(&alice2).await,
        sync_bob: hs.sync(&bob).await,
        messages_sender: messages(&alice).await,
        messages_bob: messages(&bob).await,
        event_sender: hs
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{hello}"),
                &alice,
            )
            .await,
        context_sender: hs
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/context/{hello}?limit=10"),
                &alice,
            )
            .await,
        room,
        alice,
        bob,
        hello,
        before_join,
        invite,
        first_topic,
        second_topic,
        renamed,
        oops,
        redaction,
    }
}

/// The event `id` in a sync's timeline of `room`.
fn in_sync<'a>(sync: &'a Value, room: &str, id: &str) -> &'a Value {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == id))
        .unwrap_or_else(|| panic!("{id} is not in the timeline of {sync}"))
}

/// The event `id` in a `/messages` chunk.
fn in_chunk<'a>(messages: &'a Value, id: &str) -> &'a Value {
    messages["chunk"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == id))
        .unwrap_or_else(|| panic!("{id} is not in {messages}"))
}

fn unsigned_keys(event: &Value) -> BTreeSet<String> {
    event["unsigned"]
        .as_object()
        .map(|u| u.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every event of the sequence whose `unsigned` is compared, by name, as seen.
fn compared(seen: &Seen) -> Vec<(&'static str, Value)> {
    let room = &seen.room;
    vec![
        (
            "hello, sync, sending device",
            in_sync(&seen.sync_sender, room, &seen.hello).clone(),
        ),
        (
            "hello, sync, other device",
            in_sync(&seen.sync_other_device, room, &seen.hello).clone(),
        ),
        (
            "hello, sync, bob",
            in_sync(&seen.sync_bob, room, &seen.hello).clone(),
        ),
        (
            "hello, /messages, sending device",
            in_chunk(&seen.messages_sender, &seen.hello).clone(),
        ),
        ("hello, /event", seen.event_sender.clone()),
        ("hello, /context", seen.context_sender["event"].clone()),
        (
            "before the join, /messages, bob",
            in_chunk(&seen.messages_bob, &seen.before_join).clone(),
        ),
        (
            "second topic, sync",
            in_sync(&seen.sync_sender, room, &seen.second_topic).clone(),
        ),
        (
            "new display name, sync",
            in_sync(&seen.sync_sender, room, &seen.renamed).clone(),
        ),
        (
            "redacted message, sync",
            in_sync(&seen.sync_sender, room, &seen.oops).clone(),
        ),
    ]
}

/// What culvert must show, in detail (Synapse is compared by keys).
fn check_seen(seen: &Seen) {
    let room = &seen.room;
    // The sending device gets its transaction IDs everywhere; no one else does.
    let hello = in_sync(&seen.sync_sender, room, &seen.hello);
    assert_eq!(hello["unsigned"]["transaction_id"], "t-hello", "{hello}");
    assert!(hello["unsigned"]["age"].as_u64().is_some(), "{hello}");
    assert_eq!(hello["unsigned"]["membership"], "join", "{hello}");
    assert!(
        hello.get("room_id").is_none(),
        "sync events carry no room_id: {hello}"
    );
    for other in [
        in_sync(&seen.sync_other_device, room, &seen.hello),
        in_sync(&seen.sync_bob, room, &seen.hello),
    ] {
        assert!(other["unsigned"]["transaction_id"].is_null(), "{other}");
        assert_eq!(other["unsigned"]["membership"], "join", "{other}");
    }
    for (name, event) in [
        ("/messages", in_chunk(&seen.messages_sender, &seen.hello)),
        ("/event", &seen.event_sender),
        ("/context", &seen.context_sender["event"]),
    ] {
        assert_eq!(
            event["unsigned"]["transaction_id"], "t-hello",
            "{name}: {event}"
        );
        assert_eq!(event["room_id"], room.as_str(), "{name}: {event}");
    }
    assert!(in_chunk(&seen.messages_bob, &seen.hello)["unsigned"]["transaction_id"].is_null());
    // Bob was invited when "before the join" was sent.
    let before = in_chunk(&seen.messages_bob, &seen.before_join);
    assert_eq!(before["unsigned"]["membership"], "invite", "{before}");
    // A state event says what it replaced.
    let topic = in_sync(&seen.sync_sender, room, &seen.second_topic);
    assert_eq!(
        topic["unsigned"]["prev_content"],
        json!({ "topic": "first" }),
        "{topic}"
    );
    assert_eq!(
        topic["unsigned"]["prev_sender"],
        seen.alice.user_id.as_str()
    );
    assert_eq!(
        topic["unsigned"]["replaces_state"],
        seen.first_topic.as_str()
    );
    let renamed = in_sync(&seen.sync_sender, room, &seen.renamed);
    assert_eq!(renamed["content"]["displayname"], "Alice B", "{renamed}");
    assert_eq!(
        renamed["unsigned"]["prev_content"]["displayname"], "Alice A",
        "{renamed}"
    );
    // The redaction is a client event.
    let oops = in_sync(&seen.sync_sender, room, &seen.oops);
    let because = &oops["unsigned"]["redacted_because"];
    assert_eq!(because["event_id"], seen.redaction.as_str(), "{oops}");
    assert_eq!(because["type"], "m.room.redaction");
    assert_eq!(because["redacts"], seen.oops.as_str());
    assert_eq!(because["content"]["reason"], "typo");
    assert_eq!(
        because["unsigned"]["transaction_id"], "t-redact",
        "{because}"
    );
    assert!(
        because.get("room_id").is_none(),
        "the sync format inside too: {because}"
    );
    assert_eq!(oops["unsigned"]["redacted_by"], seen.redaction.as_str());
    for federation_field in [
        "hashes",
        "signatures",
        "auth_events",
        "prev_events",
        "depth",
    ] {
        assert!(
            because.get(federation_field).is_none(),
            "{federation_field} in {because}"
        );
    }
    // The invite names the invitee as their profile has them.
    let invite = in_sync(&seen.sync_sender, room, &seen.invite);
    assert_eq!(invite["content"]["membership"], "invite", "{invite}");
    assert_eq!(invite["content"]["displayname"], "Bob B", "{invite}");
    assert_eq!(
        invite["content"]["avatar_url"], "mxc://example.org/bob",
        "{invite}"
    );
    let bob_in_alices_view = in_sync(&seen.sync_sender, room, &seen.invite);
    assert_eq!(bob_in_alices_view["state_key"], seen.bob.user_id.as_str());
}

#[tokio::test]
async fn events_carry_the_unsigned_fields_clients_rely_on() {
    let server = TestServer::start().await;
    let seen = client_sequence(&Homeserver::culvert(&server)).await;
    check_seen(&seen);
}

/// The same sequence against Synapse: the same `unsigned` keys for every compared event, and
/// the same profile in the invite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culvert_and_synapse_give_the_same_unsigned_fields() {
    let Some(python) = synapse::available() else {
        return;
    };
    let synapse = Synapse::start(&python).await;
    let server = TestServer::start().await;
    let ours = client_sequence(&Homeserver::culvert(&server)).await;
    let theirs = client_sequence(&Homeserver::synapse(&synapse)).await;
    let mut differences = Vec::new();
    for ((name, our), (_, their)) in compared(&ours).into_iter().zip(compared(&theirs)) {
        let (a, b) = (unsigned_keys(&our), unsigned_keys(&their));
        if a != b {
            differences.push(format!(
                "{name}: culvert {a:?}, Synapse {b:?}\n  culvert: {our}\n  Synapse: {their}"
            ));
        }
        let because = |e: &Value| -> BTreeSet<String> {
            e["unsigned"]["redacted_because"]
                .as_object()
                .map(|u| u.keys().cloned().collect())
                .unwrap_or_default()
        };
        if because(&our) != because(&their) {
            differences.push(format!(
                "{name}, redacted_because: culvert {:?}, Synapse {:?}",
                because(&our),
                because(&their)
            ));
        }
        assert_eq!(
            our["unsigned"]["transaction_id"].is_string(),
            their["unsigned"]["transaction_id"].is_string(),
            "{name}: transaction_id"
        );
    }
    let invite =
        |seen: &Seen| in_sync(&seen.sync_sender, &seen.room, &seen.invite)["content"].clone();
    assert_eq!(invite(&ours), invite(&theirs), "the invite's content");
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// One device of alice's cross-signs another the way clients do (the device's key object as
/// `/keys/query` gave it, its own signature still on, plus the self-signing key's): the upload's
/// failures, and the signers of the second device as bob's `/keys/query` then shows them.
async fn cross_sign_a_second_device(hs: &Homeserver) -> (Value, BTreeSet<String>) {
    let alice = hs.register("xsalice").await;
    let bob = hs.register("xsbob").await;
    let second = hs.login("xsalice").await;
    let keys = CrossSigning::new();
    hs.post(
        "/_matrix/client/v3/keys/device_signing/upload",
        &alice,
        keys.body(&alice.user_id),
    )
    .await;
    let (device_keys, _) = device_keys_with_pair(&second);
    hs.post(
        "/_matrix/client/v3/keys/upload",
        &second,
        json!({ "device_keys": device_keys }),
    )
    .await;
    let query = json!({ "device_keys": { &alice.user_id: [] } });
    let queried = hs
        .post("/_matrix/client/v3/keys/query", &alice, query.clone())
        .await;
    let mut object = queried["device_keys"][&alice.user_id][&second.device_id].clone();
    object.as_object_mut().unwrap().remove("unsigned");
    let object = signed(&alice.user_id, &keys.self_signing.0, object);
    let answer = hs
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            &alice,
            json!({ &alice.user_id: { &second.device_id: object } }),
        )
        .await;
    let seen = hs.post("/_matrix/client/v3/keys/query", &bob, query).await;
    let signers = seen["device_keys"][&alice.user_id][&second.device_id]["signatures"]
        [&alice.user_id]
        .as_object()
        .map(|s| {
            s.keys()
                .map(|k| {
                    if *k == format!("ed25519:{}", second.device_id) {
                        "the device".to_owned()
                    } else if *k == format!("ed25519:{}", keys.self_signing.1) {
                        "the self-signing key".to_owned()
                    } else {
                        k.clone()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    (answer["failures"].clone(), signers)
}

/// The cross-signing outcome of that sequence is the same on culvert and on Synapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn culvert_and_synapse_cross_sign_a_second_device_alike() {
    let Some(python) = synapse::available() else {
        return;
    };
    let synapse = Synapse::start(&python).await;
    let server = TestServer::start().await;
    let ours = cross_sign_a_second_device(&Homeserver::culvert(&server)).await;
    let theirs = cross_sign_a_second_device(&Homeserver::synapse(&synapse)).await;
    assert_eq!(ours.0, json!({}), "no failure on culvert");
    assert_eq!(
        ours.1,
        BTreeSet::from(["the device".to_owned(), "the self-signing key".to_owned()])
    );
    assert_eq!(ours, theirs, "culvert and Synapse agree");
}
