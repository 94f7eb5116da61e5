//! `culvert import synapse` against a database a real Synapse (PyPI) filled through its client
//! API: the test starts Synapse, makes accounts, rooms with history (edits, reactions,
//! redactions, state changes), media, account data, push rules, filters, E2EE keys and a key
//! backup, and a room shared with a second server (culvert); stops Synapse; imports its
//! database into a new culvert that takes Synapse's name and port; and checks all of it through
//! culvert's client API — and that the second server and the imported one still talk.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{
    common::{
        Session, TestServer, federating_config_on, message_bodies, output_text as text,
        run_culvert as culvert, skip, test_config, timeline_has, urlencode,
    },
    e2ee::{CrossSigning, device_keys_with_pair, one_time_keys, signed},
    synapse::{self, Synapse},
    synapse_media_and_rooms::{download_media, upload_media},
};

const PASSWORD: &str = "synapse-password-1";

/// A bridge's registration file, which Synapse's config names.
struct Appservice {
    _dir: TempDir,
    /// The config line naming it.
    config: String,
}

const AS_TOKEN: &str = "import-test-as-token";

impl Appservice {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("bridge.yaml");
        std::fs::write(
            &path,
            format!(
                "id: importbridge\nurl: null\nas_token: {AS_TOKEN}\nhs_token: import-test-hs-token\nsender_localpart: importbot\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '@import_.*'\n  aliases: []\n  rooms: []\n"
            ),
        )
        .unwrap();
        Self {
            config: format!("app_service_config_files: ['{}']", path.display()),
            _dir: dir,
        }
    }
}

/// What the test made in Synapse, to look for after the import.
struct Made {
    alice: Session,
    bob: Session,
    lobby: String,
    shared: String,
    media_id: String,
    media: Vec<u8>,
    redacted: String,
    edited: String,
    master_key: String,
}

async fn ok(result: (StatusCode, Value), what: &str) -> Value {
    assert_eq!(result.0, StatusCode::OK, "{what}: {}", result.1);
    result.1
}

/// Fills Synapse through its client API (and `carol` on the second server).
async fn fill(synapse: &Synapse, second: &TestServer, carol: &Session) -> Made {
    let alice = synapse.register("alice").await;
    let bob = synapse.register("bob").await;
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();

    // Profile and media.
    let media: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let media_id = upload_media(
        &http,
        &synapse.base,
        &alice.token,
        media.clone(),
        "application/octet-stream",
        "notes.bin",
    )
    .await;
    let mxc = format!("mxc://{}/{media_id}", synapse.server_name);
    let profile = format!("/_matrix/client/v3/profile/{}", urlencode(&alice.user_id));
    ok(
        synapse
            .put(
                &format!("{profile}/displayname"),
                &alice,
                json!({ "displayname": "Alice A." }),
            )
            .await,
        "displayname",
    )
    .await;
    ok(
        synapse
            .put(
                &format!("{profile}/avatar_url"),
                &alice,
                json!({ "avatar_url": mxc }),
            )
            .await,
        "avatar",
    )
    .await;

    // A public room with an alias, in the directory, with history.
    let created = ok(
        synapse
            .post(
                "/_matrix/client/v3/createRoom",
                &alice,
                json!({ "preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby",
                        "room_version": "11", "visibility": "public" }),
            )
            .await,
        "createRoom",
    )
    .await;
    let lobby = created["room_id"].as_str().unwrap().to_owned();
    ok(
        synapse
            .post(&format!("/_matrix/client/v3/join/{lobby}"), &bob, json!({}))
            .await,
        "bob joins",
    )
    .await;
    for i in 1..=5 {
        synapse
            .say(&alice, &lobby, &format!("lobby message {i}"))
            .await;
    }
    let edited = synapse.say(&bob, &lobby, "bob says helo").await;
    let send =
        |kind: &str, txn: &str| format!("/_matrix/client/v3/rooms/{lobby}/send/{kind}/{txn}");
    ok(
        synapse
            .put(
                &send("m.room.message", "edit1"),
                &bob,
                json!({ "msgtype": "m.text", "body": "* bob says hello",
                        "m.new_content": { "msgtype": "m.text", "body": "bob says hello" },
                        "m.relates_to": { "rel_type": "m.replace", "event_id": edited } }),
            )
            .await,
        "edit",
    )
    .await;
    ok(
        synapse
            .put(
                &send("m.reaction", "react1"),
                &alice,
                json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": edited, "key": "👍" } }),
            )
            .await,
        "reaction",
    )
    .await;
    let redacted = synapse
        .say(&alice, &lobby, "a secret said by mistake")
        .await;
    ok(
        synapse
            .put(
                &format!("/_matrix/client/v3/rooms/{lobby}/redact/{redacted}/r1"),
                &alice,
                json!({ "reason": "oops" }),
            )
            .await,
        "redaction",
    )
    .await;
    ok(
        synapse
            .put(
                &format!("/_matrix/client/v3/rooms/{lobby}/state/m.room.topic/"),
                &alice,
                json!({ "topic": "Everything and nothing" }),
            )
            .await,
        "topic",
    )
    .await;
    synapse.say(&bob, &lobby, "last lobby message").await;

    // Account data, a tag, a push rule and a switched default, a filter.
    let user_path = format!("/_matrix/client/v3/user/{}", urlencode(&alice.user_id));
    ok(
        synapse
            .put(
                &format!("{user_path}/account_data/org.example.settings"),
                &alice,
                json!({ "theme": "dark" }),
            )
            .await,
        "account data",
    )
    .await;
    ok(
        synapse
            .put(
                &format!("{user_path}/rooms/{lobby}/account_data/org.example.room"),
                &alice,
                json!({ "pinned": true }),
            )
            .await,
        "room account data",
    )
    .await;
    ok(
        synapse
            .put(
                &format!("{user_path}/rooms/{lobby}/tags/m.favourite"),
                &alice,
                json!({ "order": 0.25 }),
            )
            .await,
        "tag",
    )
    .await;
    ok(
        synapse
            .put(
                "/_matrix/client/v3/pushrules/global/content/culvertword",
                &alice,
                json!({ "pattern": "culvert", "actions": ["notify"] }),
            )
            .await,
        "push rule",
    )
    .await;
    ok(
        synapse
            .put(
                "/_matrix/client/v3/pushrules/global/underride/.m.rule.message/enabled",
                &alice,
                json!({ "enabled": false }),
            )
            .await,
        "push rule switch",
    )
    .await;
    let filter = ok(
        synapse
            .post(
                &format!("{user_path}/filter"),
                &alice,
                json!({ "room": { "timeline": { "limit": 7 } } }),
            )
            .await,
        "filter",
    )
    .await;
    assert_eq!(filter["filter_id"], "0");

    // E2EE: device keys with one-time keys, cross-signing keys signing the device, a backup.
    let (keys, _) = device_keys_with_pair(&alice);
    ok(
        synapse
            .post(
                "/_matrix/client/v3/keys/upload",
                &alice,
                json!({ "device_keys": keys, "one_time_keys": one_time_keys("syn", 5) }),
            )
            .await,
        "keys",
    )
    .await;
    let cross = CrossSigning::new();
    let mut body = cross.body(&alice.user_id);
    let (status, uia) = synapse
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            &alice,
            body.clone(),
        )
        .await;
    if status == StatusCode::UNAUTHORIZED {
        body["auth"] = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": alice.user_id },
            "password": PASSWORD,
            "session": uia["session"],
        });
        ok(
            synapse
                .post(
                    "/_matrix/client/v3/keys/device_signing/upload",
                    &alice,
                    body,
                )
                .await,
            "cross-signing keys",
        )
        .await;
    } else {
        assert_eq!(status, StatusCode::OK, "cross-signing keys: {uia}");
    }
    let mut device = keys.clone();
    device.as_object_mut().unwrap().remove("signatures");
    let device = signed(&alice.user_id, &cross.self_signing.0, device);
    ok(
        synapse
            .post(
                "/_matrix/client/v3/keys/signatures/upload",
                &alice,
                json!({ alice.user_id.clone(): { alice.device_id.clone(): device } }),
            )
            .await,
        "device signature",
    )
    .await;
    let version = ok(
        synapse
            .post(
                "/_matrix/client/v3/room_keys/version",
                &alice,
                json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                        "auth_data": { "public_key": "aGVsbG8gd29ybGQgdGhpcyBpcyBhIGtleQ" } }),
            )
            .await,
        "backup version",
    )
    .await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(
        synapse
            .put(
                &format!("/_matrix/client/v3/room_keys/keys/{lobby}/session1?version={version}"),
                &alice,
                json!({ "first_message_index": 1, "forwarded_count": 0, "is_verified": true,
                        "session_data": { "ephemeral": "ZXBo", "ciphertext": "Y2lwaGVy", "mac": "bWFj" } }),
            )
            .await,
        "backup session",
    )
    .await;

    // A pusher for alice's phone.
    ok(
        synapse
            .post(
                "/_matrix/client/v3/pushers/set",
                &alice,
                json!({ "kind": "http", "app_id": "org.example.app", "pushkey": "pushkey-1",
                        "app_display_name": "Example", "device_display_name": "Phone",
                        "lang": "en", "data": { "url": "https://push.example.org/_matrix/push/v1/notify",
                                                "format": "event_id_only" } }),
            )
            .await,
        "pusher",
    )
    .await;

    // Media of the second server, which Synapse fetches and caches.
    let remote_media: Vec<u8> = b"carol's picture".to_vec();
    let remote_id = upload_media(
        &http,
        &second.base,
        &carol.token,
        remote_media.clone(),
        "image/png",
        "carol.png",
    )
    .await;
    let (status, _, _, bytes) = download_media(
        &http,
        &synapse.base,
        &alice.token,
        &format!(
            "/_matrix/client/v1/media/download/{}/{remote_id}",
            second.server_name()
        ),
    )
    .await;
    assert_eq!((status, bytes), (StatusCode::OK, remote_media));

    // A room on the second server that alice joins over federation; they talk.
    let shared = second
        .create_room(carol, json!({ "preset": "public_chat", "name": "Across" }))
        .await;
    second.say(carol, &shared, "carol before alice").await;
    ok(
        synapse
            .post(
                &format!(
                    "/_matrix/client/v3/join/{shared}?server_name={}",
                    urlencode(&second.server_name())
                ),
                &alice,
                json!({}),
            )
            .await,
        "alice joins the second server's room",
    )
    .await;
    synapse.say(&alice, &shared, "alice from synapse").await;
    second
        .sync_until(carol, "alice's message", |b| {
            timeline_has(b, &shared, "alice from synapse")
        })
        .await;

    Made {
        alice,
        bob,
        lobby,
        shared,
        media_id,
        media,
        redacted,
        edited,
        master_key: cross.master.1.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_database_moves_in_and_federates_on() {
    let Some(python) = synapse::available() else {
        return;
    };
    let appservice = Appservice::new();
    let synapse = Synapse::start_with(&python, None, &appservice.config).await;
    let database = synapse.dir().join("homeserver.db");
    move_in(synapse, || std::fs::read(&database).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_database_on_postgresql_moves_in_and_federates_on() {
    let Some(python) = synapse::available() else {
        return;
    };
    let Some(postgres) = Postgres::start(&python) else {
        return;
    };
    let appservice = Appservice::new();
    let synapse = Synapse::start_with(
        &python,
        Some(&postgres.synapse_database()),
        &appservice.config,
    )
    .await;
    move_in(synapse, || postgres.dump()).await;
}

/// Fills `synapse` (with a second server to share a room with), stops it, imports it into a
/// culvert on its name and port, and checks everything there; `source` reads Synapse's
/// database whole, to show the import left it as it was.
async fn move_in(mut synapse: Synapse, source: impl Fn() -> Vec<u8>) {
    let second = TestServer::start_federating("").await;
    let carol = second.register("carol", "carol-password-1").await;
    let made = fill(&synapse, &second, &carol).await;
    synapse.stop_gracefully();
    let before = source();

    // culvert takes Synapse's name and port.
    let dir = TempDir::new().unwrap();
    let port = synapse.port();
    let extra = federating_config_on(dir.path(), port, "");
    let db_path = dir.path().join("db");
    let config = dir.path().join("culvert.toml");
    std::fs::write(&config, test_config(&db_path, &extra)).unwrap();
    let hs_yaml = synapse.dir().join("homeserver.yaml");
    let hs_yaml = hs_yaml.to_str().unwrap();

    let dry = culvert(
        &[
            "import",
            "synapse",
            "--synapse-config",
            hs_yaml,
            "--dry-run",
        ],
        &config,
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("dry run"), "{}", text(&dry));
    assert!(
        !db_path.join("CURRENT").exists(),
        "a dry run wrote a database"
    );

    let run = culvert(&["import", "synapse", "--synapse-config", hs_yaml], &config);
    let report = text(&run);
    assert!(run.status.success(), "{report}");
    for line in [
        "accounts: 2",
        "rooms: 2",
        "media: 1",
        "aliases: 1",
        "rooms in the directory: 1",
        "filters: 1",
        "key backups: 1",
        "cross-signing keys: 1",
        "cross-signing signatures: 1",
        "pushers: 1",
        "cached remote media: 1",
        "application services: 1",
        "known server keys: 1",
        "nothing was left out",
    ] {
        assert!(report.contains(line), "no {line:?} in\n{report}");
    }
    // Once is enough: a second import is refused, and Synapse's database is as it was.
    let again = culvert(&["import", "synapse", "--synapse-config", hs_yaml], &config);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    let after = source();
    if after != before {
        let (before, after) = (
            String::from_utf8_lossy(&before),
            String::from_utf8_lossy(&after),
        );
        let changed: Vec<(&str, &str)> = before
            .lines()
            .zip(after.lines())
            .filter(|(b, a)| b != a)
            .take(10)
            .collect();
        panic!("the import changed Synapse's database: {changed:#?}");
    }

    let server = TestServer::start_on(db_path, &extra).await;
    check(&server, &made).await;

    // The second server still talks to the imported one (it knows the same signing key).
    second
        .say(&carol, &made.shared, "carol after the move")
        .await;
    server
        .sync_until(&made.alice, "carol's message after the move", |b| {
            timeline_has(b, &made.shared, "carol after the move")
        })
        .await;
    server
        .say(&made.alice, &made.shared, "alice from culvert")
        .await;
    second
        .sync_until(&carol, "alice's message from culvert", |b| {
            timeline_has(b, &made.shared, "alice from culvert")
        })
        .await;
}

/// A PostgreSQL server of Debian's `postgresql` package, on a Unix socket in a private
/// directory, with a database for Synapse (UTF-8, collation C, as Synapse requires). As root
/// (PostgreSQL refuses to run as root) it runs as the `postgres` user.
struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl Postgres {
    /// `None` (the test is reported skipped) without PostgreSQL or psycopg2 on this machine.
    fn start(python: &std::path::Path) -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").is_file())
            .max();
        let psycopg2 = Command::new(python)
            .args(["-c", "import psycopg2"])
            .status()
            .is_ok_and(|s| s.success());
        let (Some(bin), true) = (bin, psycopg2) else {
            skip(
                Some("REQUIRE_POSTGRES"),
                "no PostgreSQL (Debian's postgresql) or no psycopg2 in SYNAPSE_PYTHON",
            );
            return None;
        };
        let dir = TempDir::new().unwrap();
        std::fs::create_dir(dir.path().join("socket")).unwrap();
        let postgres = Postgres {
            bin,
            dir,
            child: None,
        };
        if postgres.as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(postgres.dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown for postgres");
        }
        let data = postgres.dir.path().join("data");
        let output = postgres
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "-U",
                "synapse",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "initdb: {}", text(&output));
        let mut postgres = postgres;
        postgres.child = Some(
            postgres
                .command("postgres")
                .arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(postgres.socket())
                .args(["-c", "listen_addresses=", "-c", "fsync=off"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        for _ in 0..300 {
            if postgres.socket().join(".s.PGSQL.5432").exists() {
                let created = postgres
                    .command("createdb")
                    .arg("-h")
                    .arg(postgres.socket())
                    .args(["-U", "synapse", "-T", "template0", "synapse"])
                    .output()
                    .unwrap();
                if created.status.success() {
                    return Some(postgres);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("PostgreSQL did not start");
    }

    fn as_root(&self) -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    }

    /// One of PostgreSQL's programs, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// Synapse's `database:` section for it.
    fn synapse_database(&self) -> String {
        format!(
            "  name: psycopg2\n  args:\n    user: synapse\n    database: synapse\n    host: {}\n    port: 5432\n    cp_min: 1\n    cp_max: 5",
            self.socket().display()
        )
    }

    /// The whole database as SQL (`pg_dump`): equal before and after means unchanged.
    fn dump(&self) -> Vec<u8> {
        let output = self
            .command("pg_dump")
            .arg("-h")
            .arg(self.socket())
            .args(["-U", "synapse", "synapse"])
            .output()
            .unwrap();
        assert!(output.status.success(), "pg_dump: {}", text(&output));
        // Without the random key each dump guards its psql meta-commands with.
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "fast"])
                .output();
            let _ = child.wait();
        }
    }
}

/// What Synapse held, through the imported server's client API.
async fn check(server: &TestServer, made: &Made) {
    let alice = &made.alice;
    // Old tokens work; the old password logs in (bcrypt), and again once it was rehashed.
    server.assert_token_alive(&alice.token).await;
    server.assert_token_alive(&made.bob.token).await;
    let name = alice
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap();
    server.login_ok(name, PASSWORD).await;
    server.login_ok(name, PASSWORD).await;
    let wrong = server.login(name, "not-the-password").await;
    assert_eq!(wrong.0, StatusCode::FORBIDDEN, "{}", wrong.1);
    let hash = server
        .services()
        .users
        .get(&ruma::UserId::parse(alice.user_id.as_str()).unwrap())
        .unwrap()
        .unwrap()
        .password_hash
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "not rehashed: {hash}");

    // Profile and media.
    let profile = server
        .get_ok(
            &format!("/_matrix/client/v3/profile/{}", urlencode(&alice.user_id)),
            alice,
        )
        .await;
    assert_eq!(profile["displayname"], "Alice A.");
    let server_name = server.server_name();
    assert_eq!(
        profile["avatar_url"],
        format!("mxc://{server_name}/{}", made.media_id)
    );
    let (status, _, _, bytes) = download_media(
        &reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap(),
        &server.base,
        &alice.token,
        &format!(
            "/_matrix/client/v1/media/download/{server_name}/{}",
            made.media_id
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, made.media);

    // The lobby: history in order, the edit, the reaction, the redaction, state, alias,
    // directory.
    let lobby = &made.lobby;
    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{lobby}/messages?dir=b&limit=100"),
            alice,
        )
        .await;
    let mut bodies = message_bodies(&messages["chunk"]);
    bodies.reverse();
    let expected: Vec<String> = (1..=5)
        .map(|i| format!("lobby message {i}"))
        .chain([
            "bob says helo".into(),
            "* bob says hello".into(),
            // The redacted message: no body left.
            String::new(),
            "last lobby message".into(),
        ])
        .collect();
    assert_eq!(bodies, expected, "{messages}");
    let redacted = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{lobby}/event/{}", made.redacted),
            alice,
        )
        .await;
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    let relations = server
        .get_ok(
            &format!("/_matrix/client/v1/rooms/{lobby}/relations/{}", made.edited),
            alice,
        )
        .await;
    assert_eq!(
        relations["chunk"].as_array().map(Vec::len),
        Some(2),
        "{relations}"
    );
    let topic = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{lobby}/state/m.room.topic/"),
            alice,
        )
        .await;
    assert_eq!(topic["topic"], "Everything and nothing");
    let alias = server
        .get_ok(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                urlencode(&format!("#lobby:{server_name}"))
            ),
            alice,
        )
        .await;
    assert_eq!(alias["room_id"], *lobby);
    let public = server.get_ok("/_matrix/client/v3/publicRooms", alice).await;
    assert!(
        public["chunk"]
            .as_array()
            .is_some_and(|c| c.iter().any(|r| r["room_id"] == *lobby)),
        "{public}"
    );
    let mut joined = server.joined_rooms(alice).await;
    joined.sort();
    let mut expected = vec![made.lobby.clone(), made.shared.clone()];
    expected.sort();
    assert_eq!(joined, expected);

    // Account data, tags, push rules, filter.
    let user_path = format!("/_matrix/client/v3/user/{}", urlencode(&alice.user_id));
    let settings = server
        .get_ok(
            &format!("{user_path}/account_data/org.example.settings"),
            alice,
        )
        .await;
    assert_eq!(settings, json!({ "theme": "dark" }));
    let room_data = server
        .get_ok(
            &format!("{user_path}/rooms/{lobby}/account_data/org.example.room"),
            alice,
        )
        .await;
    assert_eq!(room_data, json!({ "pinned": true }));
    let tags = server
        .get_ok(&format!("{user_path}/rooms/{lobby}/tags"), alice)
        .await;
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.25, "{tags}");
    let rule = server
        .get_ok(
            "/_matrix/client/v3/pushrules/global/content/culvertword",
            alice,
        )
        .await;
    assert_eq!(rule["pattern"], "culvert", "{rule}");
    assert_eq!(rule["actions"], json!(["notify"]), "{rule}");
    let message_rule = server
        .get_ok(
            "/_matrix/client/v3/pushrules/global/underride/.m.rule.message",
            alice,
        )
        .await;
    assert_eq!(message_rule["enabled"], false, "{message_rule}");
    let filter = server.get_ok(&format!("{user_path}/filter/0"), alice).await;
    assert_eq!(filter["room"]["timeline"]["limit"], 7, "{filter}");

    // The pusher, and the bridge (its token is known here).
    let pushers = server.get_ok("/_matrix/client/v3/pushers", alice).await;
    assert_eq!(pushers["pushers"][0]["pushkey"], "pushkey-1", "{pushers}");
    assert_eq!(
        pushers["pushers"][0]["data"]["format"], "event_id_only",
        "{pushers}"
    );
    let bot = server
        .get("/_matrix/client/v3/account/whoami", Some(AS_TOKEN))
        .await;
    assert_eq!(
        bot.1["user_id"],
        format!("@importbot:{server_name}"),
        "{}",
        bot.1
    );

    // E2EE: the device's keys (signed by the self-signing key), its one-time keys, the
    // cross-signing keys, the backup.
    let (status, keys) = server
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&made.bob.token),
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let device = &keys["device_keys"][&alice.user_id][&alice.device_id];
    assert!(device.is_object(), "{keys}");
    let signatures = device["signatures"][&alice.user_id].as_object().unwrap();
    assert_eq!(
        signatures.len(),
        2,
        "the device's own and the self-signing key's: {device}"
    );
    assert!(
        keys["master_keys"][&alice.user_id]["keys"]
            .as_object()
            .is_some_and(|k| k.contains_key(&format!("ed25519:{}", made.master_key))),
        "{keys}"
    );
    let counts = server
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(
        counts.1["one_time_key_counts"]["signed_curve25519"], 5,
        "{}",
        counts.1
    );
    let backup = server
        .get_ok("/_matrix/client/v3/room_keys/version", alice)
        .await;
    assert_eq!(backup["count"], 1, "{backup}");
    let session = server
        .get_ok(
            &format!(
                "/_matrix/client/v3/room_keys/keys/{lobby}/session1?version={}",
                backup["version"].as_str().unwrap()
            ),
            alice,
        )
        .await;
    assert_eq!(session["first_message_index"], 1, "{session}");
}

/// What cannot be imported is refused with a message naming the problem, and nothing is
/// written: another server's database, a file that is no Synapse database, a PostgreSQL that
/// does not answer, a config without a signing key.
#[test]
fn a_wrong_source_is_refused_with_its_reason() {
    let dir = TempDir::new().unwrap();
    let db_path = dir.path().join("db");
    let config = dir.path().join("culvert.toml");
    std::fs::write(
        &config,
        test_config(&db_path, "server_name = \"here.example\"\nport = 0"),
    )
    .unwrap();
    let key = dir.path().join("signing.key");
    std::fs::write(&key, format!("ed25519 a_test {}\n", "A".repeat(43))).unwrap();
    let junk = dir.path().join("homeserver.db");
    std::fs::write(&junk, b"not a database at all").unwrap();
    // Synapse's config for `name`, on the junk SQLite file or the given databases section.
    let yaml = |name: &str, databases: &str| {
        let path = dir.path().join(format!("{name}-{}.yaml", databases.len()));
        let database = if databases.is_empty() {
            format!(
                "database:\n  name: sqlite3\n  args:\n    database: {}\n",
                junk.display()
            )
        } else {
            databases.to_owned()
        };
        std::fs::write(
            &path,
            format!(
                "server_name: \"{name}\"\nsigning_key_path: {}\n{database}",
                key.display()
            ),
        )
        .unwrap();
        path
    };
    let cases = [
        (yaml("elsewhere.example", ""), "server_name"),
        (yaml("here.example", ""), "homeserver.db"),
        (
            yaml(
                "here.example",
                "databases:\n  main:\n    name: psycopg2\n    data_stores: [main]\n    args: {}\n",
            ),
            "state",
        ),
    ];
    for (synapse_config, reason) in cases {
        let run = culvert(
            &[
                "import",
                "synapse",
                "--synapse-config",
                synapse_config.to_str().unwrap(),
            ],
            &config,
        );
        let report = text(&run);
        assert!(!run.status.success(), "{report}");
        assert!(report.contains(reason), "no {reason:?} in: {report}");
        assert!(!report.contains("panicked"), "{report}");
    }
    // A PostgreSQL that is not there, and a key file that is none.
    let run = culvert(
        &[
            "import",
            "synapse",
            "--database",
            "host=/nonexistent user=synapse dbname=synapse",
            "--signing-key",
            key.to_str().unwrap(),
        ],
        &config,
    );
    assert!(!run.status.success(), "{}", text(&run));
    assert!(text(&run).contains("PostgreSQL"), "{}", text(&run));
    std::fs::write(&key, "not a key").unwrap();
    let run = culvert(
        &[
            "import",
            "synapse",
            "--database",
            junk.to_str().unwrap(),
            "--signing-key",
            key.to_str().unwrap(),
        ],
        &config,
    );
    assert!(text(&run).contains("signing key"), "{}", text(&run));
    assert!(
        !db_path.join("CURRENT").exists(),
        "a refused import wrote a database"
    );
}
