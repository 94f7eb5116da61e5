//! `culvert import conduit` against a database a real Conduit (0.11.0-alpha) wrote: the
//! fixture in `../shared/fixtures/conduit` (or `FIXTURES_DIR`), used in place and only read.
//! After the import a culvert server is the same server: the Conduit accounts log in with
//! their passwords, their clients' access tokens still work, and rooms, history, account data
//! and media are there — checked through the client API by matrix-nio.

use std::path::{Path, PathBuf};

use crate::common::{
    TestServer, output_text as text, run_culvert as culvert, run_python_client, skip,
};

const ALICE: &str = "@alice:conduit.test";
const CONDUIT_AS_TOKEN: &str = "conduit-as-token";

/// The Conduit fixture, or `None` (the test is reported skipped) when this machine lacks it.
fn fixture() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("FIXTURES_DIR").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")),
        Some(PathBuf::from("/work/shared/fixtures")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .map(|dir| dir.join("conduit"))
        .find(|dir| dir.join("manifest.json").is_file());
    if found.is_none() {
        skip(
            Some("REQUIRE_FIXTURES"),
            "no Conduit fixture (set FIXTURES_DIR to the directory holding conduit/)",
        );
    }
    found
}

/// Every file under `dir` with its length and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(listing(&path));
        } else if let Ok(meta) = entry.metadata() {
            found.push((path, meta.len(), meta.modified().expect("mtime")));
        }
    }
    found.sort();
    found
}

fn config_file(dir: &Path, server_name: &str, database: &Path) -> PathBuf {
    let path = dir.join(format!("{server_name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[global]\nserver_name = \"{server_name}\"\ndatabase_path = \"{}\"\nadmin_room = false\n",
            database.display()
        ),
    )
    .expect("config written");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conduit_database_moves_in_whole() {
    let Some(fixture) = fixture() else {
        return;
    };
    let source = fixture.join("database");
    let before = listing(&source);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let database = dir.path().join("db");

    // Another server's name is refused: a server's name never changes.
    let wrong = config_file(dir.path(), "elsewhere.test", &dir.path().join("wrong"));
    let source_arg = source.to_str().expect("UTF-8 path");
    let refused = culvert(&["import", "conduit", "--from", source_arg], &wrong);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("server_name = \"conduit.test\""),
        "{}",
        text(&refused)
    );

    let config = config_file(dir.path(), "conduit.test", &database);
    // A dry run reads everything, reports, and writes nothing.
    let dry = culvert(
        &["import", "conduit", "--from", source_arg, "--dry-run"],
        &config,
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("accounts: 3"), "{}", text(&dry));
    assert!(!database.exists(), "a dry run wrote {}", database.display());

    let imported = culvert(&["import", "conduit", "--from", source_arg], &config);
    let report = text(&imported);
    assert!(imported.status.success(), "{report}");
    for line in [
        "accounts: 3",
        "devices: 4",
        "media: 3",
        "aliases: 1",
        "rooms in the directory: 1",
        "read receipts: 1",
    ] {
        assert!(report.contains(line), "no {line:?} in:\n{report}");
    }
    // The lobby, the DM, the encrypted room and the space (Conduit's admin room stays out).
    assert!(report.contains("rooms: 4"), "{report}");
    // Not a second time into the same database.
    let again = culvert(&["import", "conduit", "--from", source_arg], &config);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    // The source was only read.
    assert_eq!(listing(&source), before, "the Conduit database changed");

    let server = TestServer::start_on(
        database.clone(),
        "server_name = \"conduit.test\"\nport = 0\nrate_limits = { enabled = false }",
    )
    .await;
    let manifest = fixture.join("manifest.json");
    // The same server to others: Conduit's signing key is ours, and what it signed verifies.
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("JSON");
    let first = facts["rooms"]["lobby"]["first_message"]["event_id"]
        .as_str()
        .expect("the lobby's first message");
    let event_id = ruma::EventId::parse(first).expect("event ID");
    let services = server.services();
    let pdu = services
        .timeline
        .pdu_json(&event_id)
        .expect("read")
        .expect("the lobby's first message is stored");
    let key_id = services.globals.signing_key_id();
    let signatures = &pdu["signatures"];
    let ruma::CanonicalJsonValue::Object(signatures) = signatures else {
        panic!("no signatures: {signatures:?}");
    };
    let ruma::CanonicalJsonValue::Object(ours) = &signatures["conduit.test"] else {
        panic!("not signed by conduit.test");
    };
    assert!(
        ours.contains_key(&key_id),
        "signed with {ours:?}, our key is {key_id}"
    );
    let public_key = ruma::serde::Base64::<ruma::serde::base64::Standard, Vec<u8>>::new(
        services.globals.signing_key().public_key().to_vec(),
    );
    let keys = std::collections::BTreeMap::from([(
        "conduit.test".to_owned(),
        std::collections::BTreeMap::from([(key_id, public_key)]),
    )]);
    let rules = ruma::RoomVersionId::V12.rules().expect("v12 rules");
    ruma::signatures::verify_event(&keys, &pdu, &rules).expect("Conduit's signature verifies");
    // nio with its E2EE extra decrypts the encrypted room with the fixture's client stores.
    run_python_client(
        "vodozemac",
        "nio_conduit_import.py",
        &[
            "--homeserver",
            &server.base,
            "--manifest",
            manifest.to_str().expect("UTF-8 path"),
            "--part",
            "all",
        ],
        "conduit import: ok",
    )
    .await;

    // Bob's read receipt on the lobby's last message, as alice's sync shows it.
    let (status, login) = server.login("alice", "alice-pw-1234").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{login}");
    let token = login["access_token"].as_str().expect("token");
    let (status, sync) = server.get("/_matrix/client/v3/sync", Some(token)).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{sync}");
    let lobby = facts["rooms"]["lobby"]["room_id"].as_str().expect("lobby");
    let last = facts["rooms"]["lobby"]["last_message"]["event_id"]
        .as_str()
        .expect("last message");
    let receipts = &sync["rooms"]["join"][lobby]["ephemeral"]["events"];
    let read = receipts
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "m.receipt")
        .map(|e| &e["content"][last]["m.read"]["@bob:conduit.test"]);
    assert!(read.is_some_and(|r| r.is_object()), "{receipts}");
}

/// Copies `from` into `to` (files only, recursively).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("directory made");
    for entry in std::fs::read_dir(from).expect("readable").flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("file copied");
        }
    }
}

/// A Conduit that ran for a while has its data in table files, not only in its log, and
/// Conduit compresses the bottommost level with ZSTD: a copy of the fixture rewritten that
/// way (every tree compacted into ZSTD tables) imports the same. In that copy one message is
/// missing, as history a server never fetched is: the next one, whose `prev_events` name it,
/// comes in with the state Conduit kept for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conduit_database_in_zstd_tables_with_a_gap_imports_the_same() {
    let Some(fixture) = fixture() else {
        return;
    };
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("manifest.json")).expect("manifest"))
            .expect("JSON");
    let lobby = &facts["rooms"]["lobby"];
    let gone = lobby["plain_messages"][49]["event_id"]
        .as_str()
        .expect("message 50");
    let after = lobby["plain_messages"][50]["event_id"]
        .as_str()
        .expect("message 51");
    let room = lobby["room_id"].as_str().expect("lobby");
    let cross = crate::e2ee::CrossSigning::new();
    let dir = tempfile::TempDir::new().expect("temp dir");
    let source = dir.path().join("conduit");
    copy_dir(&fixture.join("database"), &source);
    {
        let mut options = rocksdb::Options::default();
        options.set_compression_type(rocksdb::DBCompressionType::Zstd);
        options.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
        let trees = rocksdb::DB::list_cf(&options, &source).expect("trees");
        let db = rocksdb::DB::open_cf(&options, &source, &trees).expect("opened read-write");
        let by_id = db.cf_handle("eventid_pduid").expect("eventid_pduid");
        let pdu_id = db.get_cf(by_id, gone).expect("read").expect("message 50");
        db.delete_cf(db.cf_handle("pduid_pdu").expect("pduid_pdu"), &pdu_id)
            .expect("deleted");
        db.delete_cf(by_id, gone).expect("deleted");
        // What the fixture lacks, written as Conduit writes it: alice's cross-signing keys, a
        // pusher, an application service.
        let put = |tree: &str, key: &[u8], value: &[u8]| {
            db.put_cf(db.cf_handle(tree).expect(tree), key, value)
                .expect("written");
        };
        let body = cross.body(ALICE);
        for (tree, field, public) in [
            ("userid_masterkeyid", "master_key", &cross.master.1),
            (
                "userid_selfsigningkeyid",
                "self_signing_key",
                &cross.self_signing.1,
            ),
            (
                "userid_usersigningkeyid",
                "user_signing_key",
                &cross.user_signing.1,
            ),
        ] {
            let key_id = [ALICE.as_bytes(), &[0xFF], public.as_bytes()].concat();
            put("keyid_key", &key_id, body[field].to_string().as_bytes());
            put(tree, ALICE.as_bytes(), &key_id);
        }
        let pusher = serde_json::json!({
            "kind": "http", "app_id": "org.example.conduit", "pushkey": "conduit-pushkey",
            "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
            "data": { "url": "https://push.example.org/_matrix/push/v1/notify" },
        });
        put(
            "senderkey_pusher",
            &[ALICE.as_bytes(), &[0xFF], b"conduit-pushkey"].concat(),
            pusher.to_string().as_bytes(),
        );
        // Another server's signing keys, as Conduit caches them (a signed key document).
        let (pair, public) = crate::e2ee::cross_signing_pair();
        let document = crate::e2ee::signed(
            "other.example",
            &pair,
            serde_json::json!({
                "server_name": "other.example",
                "verify_keys": { format!("ed25519:{public}"): { "key": public } },
                "old_verify_keys": {},
                "valid_until_ts": 4_000_000_000_000u64,
            }),
        );
        put(
            "server_signingkeys",
            b"other.example",
            document.to_string().as_bytes(),
        );
        put(
            "id_appserviceregistrations",
            b"conduitbridge",
            format!("id: conduitbridge\nurl: null\nas_token: {CONDUIT_AS_TOKEN}\nhs_token: conduit-hs-token\nsender_localpart: conduitbot\nnamespaces:\n  users: []\n  aliases: []\n  rooms: []\n").as_bytes(),
        );
        for tree in &trees {
            let cf = db.cf_handle(tree).expect("tree");
            db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        db.flush_wal(true).expect("flushed");
    }
    let tables = std::fs::read_dir(&source)
        .expect("readable")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        .count();
    assert!(tables > 10, "only {tables} table files");

    let database = dir.path().join("db");
    let config = config_file(dir.path(), "conduit.test", &database);
    let imported = culvert(
        &[
            "import",
            "conduit",
            "--from",
            source.to_str().expect("UTF-8"),
        ],
        &config,
    );
    let report = text(&imported);
    assert!(imported.status.success(), "{report}");
    for line in [
        "accounts: 3",
        "devices: 4",
        "events: 254",
        "media: 3",
        "rooms: 4",
        "cross-signing keys: 1",
        "pushers: 1",
        "application services: 1",
        "known server keys: 1",
        "private read markers: ",
    ] {
        assert!(report.contains(line), "no {line:?} in:\n{report}");
    }
    assert!(!report.contains("earlier events"), "{report}");

    let server = TestServer::start_on(
        database,
        "server_name = \"conduit.test\"\nport = 0\nrate_limits = { enabled = false }",
    )
    .await;
    let (status, login) = server.login("alice", "alice-pw-1234").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{login}");
    let token = login["access_token"].as_str().expect("token");
    let (status, event) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{after}"),
            Some(token),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{event}");
    let (status, _) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{gone}"),
            Some(token),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    // The room goes on from there: a message sent now follows the imported history.
    let (status, sent) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/after-import"),
            Some(token),
            serde_json::json!({ "msgtype": "m.text", "body": "after the move" }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{sent}");

    // What was added to the copy: the cross-signing keys, the pusher, the bridge.
    let (status, keys) = server
        .post(
            "/_matrix/client/v3/keys/query",
            Some(token),
            serde_json::json!({ "device_keys": { ALICE: [] } }),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{keys}");
    for (kind, public) in [
        ("master_keys", &cross.master.1),
        ("self_signing_keys", &cross.self_signing.1),
    ] {
        assert_eq!(
            keys[kind][ALICE]["keys"][format!("ed25519:{public}")],
            **public,
            "{kind}: {keys}"
        );
    }
    let (_, pushers) = server.get("/_matrix/client/v3/pushers", Some(token)).await;
    assert_eq!(
        pushers["pushers"][0]["pushkey"], "conduit-pushkey",
        "{pushers}"
    );
    let (_, bot) = server
        .get("/_matrix/client/v3/account/whoami", Some(CONDUIT_AS_TOKEN))
        .await;
    assert_eq!(bot["user_id"], "@conduitbot:conduit.test", "{bot}");
}
