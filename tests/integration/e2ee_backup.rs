//! Server-side key backup: versions, sessions, the better-session rule, version mismatches.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Session, TestServer, assert_error};

const VERSION: &str = "/_matrix/client/v3/room_keys/version";
const KEYS: &str = "/_matrix/client/v3/room_keys/keys";
const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM: &str = "!room:example.org";

fn session(first_message_index: u64, forwarded_count: u64, is_verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": { "ephemeral": tag, "ciphertext": tag, "mac": tag },
    })
}

async fn create_version(server: &TestServer, who: &Session, public_key: &str) -> String {
    let (status, body) = server
        .post(
            VERSION,
            Some(&who.token),
            json!({ "algorithm": ALGORITHM, "auth_data": { "public_key": public_key } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["version"].as_str().expect("version").to_owned()
}

fn session_path(version: &str, session_id: &str) -> String {
    format!("{KEYS}/{ROOM}/{session_id}?version={version}")
}

async fn put_session(
    server: &TestServer,
    who: &Session,
    version: &str,
    id: &str,
    data: Value,
) -> Value {
    let (status, body) = server
        .put(&session_path(version, id), Some(&who.token), data)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn backup_versions_are_created_read_updated_and_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;

    assert_error(
        &server.get(VERSION, Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .post(
                VERSION,
                Some(&alice.token),
                json!({ "algorithm": ALGORITHM }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    let v1 = create_version(&server, &alice, "pk1").await;
    let latest = server.get_ok(VERSION, &alice).await;
    assert_eq!(latest["version"], v1);
    assert_eq!(latest["algorithm"], ALGORITHM);
    assert_eq!(latest["auth_data"]["public_key"], "pk1");
    assert_eq!(latest["count"], 0);
    assert!(latest["etag"].is_string(), "{latest}");
    // Bob has none; alice's is hers only.
    assert_error(
        &server
            .get(&format!("{VERSION}/{v1}"), Some(&bob.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    let v2 = create_version(&server, &alice, "pk2").await;
    assert_ne!(v1, v2);
    assert_eq!(server.get_ok(VERSION, &alice).await["version"], v2);
    assert_eq!(
        server.get_ok(&format!("{VERSION}/{v1}"), &alice).await["auth_data"]["public_key"],
        "pk1"
    );

    // Update: auth_data only; the algorithm and the version in the body must match.
    let path = format!("{VERSION}/{v2}");
    let (status, body) = server
        .put(
            &path,
            Some(&alice.token),
            json!({ "algorithm": ALGORITHM, "auth_data": { "public_key": "pk2b" }, "version": v2 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        server.get_ok(&path, &alice).await["auth_data"]["public_key"],
        "pk2b"
    );
    assert_error(
        &server
            .put(
                &path,
                Some(&alice.token),
                json!({ "algorithm": "m.other", "auth_data": {} }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .put(
                &path,
                Some(&alice.token),
                json!({ "algorithm": ALGORITHM, "auth_data": {}, "version": v1 }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server
            .put(
                &format!("{VERSION}/999"),
                Some(&alice.token),
                json!({ "algorithm": ALGORITHM, "auth_data": {} }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Delete: gone, the previous one is current again, deleting twice succeeds, and the number
    // is not handed out again.
    let (status, _) = server.delete(&path, Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &server.get(&path, Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (status, _) = server.delete(&path, Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &server
            .delete(&format!("{VERSION}/999"), Some(&alice.token), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(server.get_ok(VERSION, &alice).await["version"], v1);
    let v3 = create_version(&server, &alice, "pk3").await;
    assert!(v3 != v1 && v3 != v2, "{v3}");
}

/// The ciphertext of the stored copy of session `s1`.
async fn stored(server: &TestServer, who: &Session, version: &str) -> String {
    server.get_ok(&session_path(version, "s1"), who).await["session_data"]["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_owned()
}

#[tokio::test]
async fn backed_up_sessions_keep_the_better_copy_and_refuse_old_versions() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let old = create_version(&server, &alice, "pk1").await;
    let version = create_version(&server, &alice, "pk2").await;

    // Uploading to a version that is not the current one.
    let result = server
        .put(
            &session_path(&old, "s1"),
            Some(&alice.token),
            session(0, 0, false, "a"),
        )
        .await;
    assert_error(&result, StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(result.1["current_version"], version, "{}", result.1);
    assert_error(
        &server
            .put(
                &session_path(&version, "s1"),
                Some(&alice.token),
                json!({ "first_message_index": 0 }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );

    let first = put_session(
        &server,
        &alice,
        &version,
        "s1",
        session(5, 1, false, "first"),
    )
    .await;
    assert_eq!(first["count"], 1, "{first}");
    let etag = first["etag"].clone();

    // Worse copies are ignored (the etag stays); better ones replace in the spec's order.
    let worse = put_session(
        &server,
        &alice,
        &version,
        "s1",
        session(6, 0, false, "worse"),
    )
    .await;
    assert_eq!(worse["etag"], etag);
    assert_eq!(stored(&server, &alice, &version).await, "first");
    put_session(
        &server,
        &alice,
        &version,
        "s1",
        session(5, 0, false, "fewer forwards"),
    )
    .await;
    assert_eq!(stored(&server, &alice, &version).await, "fewer forwards");
    put_session(
        &server,
        &alice,
        &version,
        "s1",
        session(2, 3, false, "lower index"),
    )
    .await;
    assert_eq!(stored(&server, &alice, &version).await, "lower index");
    let verified = put_session(
        &server,
        &alice,
        &version,
        "s1",
        session(9, 9, true, "verified"),
    )
    .await;
    assert_eq!(stored(&server, &alice, &version).await, "verified");
    assert_ne!(verified["etag"], etag);
    put_session(
        &server,
        &alice,
        &version,
        "s1",
        session(0, 0, false, "unverified"),
    )
    .await;
    assert_eq!(stored(&server, &alice, &version).await, "verified");

    // Several rooms at once, then reads of all / one room / one session.
    let (status, body) = server
        .put(
            &format!("{KEYS}?version={version}"),
            Some(&alice.token),
            json!({ "rooms": {
                ROOM: { "sessions": { "s2": session(0, 0, false, "s2") } },
                "!other:example.org": { "sessions": { "s3": session(0, 0, false, "s3") } },
            } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 3, "{body}");
    let info = server.get_ok(VERSION, &alice).await;
    assert_eq!(info["count"], 3);
    assert_eq!(info["etag"], body["etag"]);
    let all = server
        .get_ok(&format!("{KEYS}?version={version}"), &alice)
        .await;
    assert_eq!(
        all["rooms"][ROOM]["sessions"].as_object().unwrap().len(),
        2,
        "{all}"
    );
    assert!(all["rooms"]["!other:example.org"]["sessions"]["s3"].is_object());
    let room = server
        .get_ok(&format!("{KEYS}/{ROOM}?version={version}"), &alice)
        .await;
    assert_eq!(room["sessions"].as_object().unwrap().len(), 2, "{room}");
    let empty = server
        .get_ok(
            &format!("{KEYS}/!nothing:example.org?version={version}"),
            &alice,
        )
        .await;
    assert_eq!(empty, json!({ "sessions": {} }));
    assert_error(
        &server
            .get(&session_path(&version, "nope"), Some(&alice.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .get(&format!("{KEYS}?version=999"), Some(&alice.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Deletes: one session, one room, everything.
    let (status, body) = server
        .delete(&session_path(&version, "s2"), Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 2);
    let (_, body) = server
        .delete(
            &format!("{KEYS}/{ROOM}?version={version}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(body["count"], 1, "{body}");
    let (_, body) = server
        .delete(
            &format!("{KEYS}?version={version}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(body["count"], 0, "{body}");
    let all = server
        .get_ok(&format!("{KEYS}?version={version}"), &alice)
        .await;
    assert_eq!(all, json!({ "rooms": {} }));

    // Deleting the version deletes its sessions with it.
    put_session(&server, &alice, &version, "s9", session(0, 0, false, "s9")).await;
    let (status, _) = server
        .delete(
            &format!("{VERSION}/{version}"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &server
            .get(&session_path(&version, "s9"), Some(&alice.token))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let store = &server.services().store;
    assert_eq!(
        store
            .scan_prefix(culvert::store::Cf::BackupSessions, b"")
            .count(),
        0
    );
}
