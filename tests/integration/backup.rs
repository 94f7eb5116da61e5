//! Online backups: taken while events keep coming, restored into a fresh directory where a
//! new server finds every event acknowledged before the backup began and the media; `verify`
//! finds a damaged database file or media file; the settings' errors.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{
    TestServer, assert_error, output_text as text, run_culvert as culvert, test_config,
};

/// Every file under `dir` whose name ends with `suffix`.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_ending(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_acknowledged_event_and_the_media() {
    let backups = tempfile::TempDir::new().unwrap();
    let backup_line = format!(
        "rate_limits = {{ enabled = false }}\nbackup = {{ path = \"{}\", keep = 2 }}",
        backups.path().display()
    );
    let server = Arc::new(TestServer::start_with(&backup_line).await);
    let alice = server.register("alice", "alice-password-1").await;
    let bob = server.register("bob", "bob-password-1").await;
    let refused = server
        .post("/_culvert/admin/v1/backups", Some(&bob.token), json!({}))
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let room = server
        .create_room(&alice, json!({ "preset": "public_chat" }))
        .await;
    let (host, media_id) = crate::media::upload(
        &server,
        &alice,
        b"a picture of the backup".to_vec(),
        "text/plain",
        Some("backup.txt"),
    )
    .await;

    // Messages keep coming, each noted with when its 200 arrived.
    let acknowledged: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (server, acknowledged, stop) = (server.clone(), acknowledged.clone(), stop.clone());
        let (token, room) = (alice.token.clone(), room.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (status, body) = server
                    .put(
                        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/load{n}"),
                        Some(&token),
                        json!({ "msgtype": "m.text", "body": format!("load {n}") }),
                    )
                    .await;
                if status == StatusCode::OK {
                    let id = body["event_id"].as_str().unwrap().to_owned();
                    acknowledged.lock().unwrap().push((id, Instant::now()));
                }
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let began = Instant::now();
    let (status, report) = server
        .post("/_culvert/admin/v1/backups", Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["media_copied"], 1, "{report}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    let before: Vec<String> = acknowledged
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at < began)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        before.len() >= 5,
        "only {} events before the backup",
        before.len()
    );
    let listed = server.get_ok("/_culvert/admin/v1/backups", &alice).await;
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed}");

    // The server goes; its database is not used again.
    let server = Arc::into_inner(server).expect("the sender let go");
    server.stop().await;

    // The command line, on the backup directory alone.
    let work = tempfile::TempDir::new().unwrap();
    let config_path = work.path().join("conduit.toml");
    let restored = work.path().join("restored");
    std::fs::write(
        &config_path,
        test_config(&work.path().join("unused"), &backup_line),
    )
    .unwrap();
    let list = culvert(&["backup", "list"], &config_path);
    assert!(list.status.success(), "{}", text(&list));
    assert!(text(&list).starts_with("1\t"), "{}", text(&list));
    let verify = culvert(&["backup", "verify"], &config_path);
    assert!(
        text(&verify).contains("backup 1 is sound"),
        "{}",
        text(&verify)
    );
    let restore = culvert(
        &["backup", "restore", "--to", restored.to_str().unwrap()],
        &config_path,
    );
    assert!(restore.status.success(), "{}", text(&restore));
    let again = culvert(
        &["backup", "restore", "--to", restored.to_str().unwrap()],
        &config_path,
    );
    assert!(
        !again.status.success(),
        "a restore over a database: {}",
        text(&again)
    );

    // A server on the restored directory has every acknowledged event and the media.
    let server = TestServer::start_on(restored.clone(), &backup_line).await;
    for event_id in &before {
        let (status, event) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{event_id} lost: {event}");
    }
    let download = server
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{host}/{media_id}",
            server.base
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(
        download.bytes().await.unwrap().as_ref(),
        b"a picture of the backup"
    );
    // `culvert backup create` while this server runs: the server takes it; stopped, the
    // command line does.
    let restored_config = work.path().join("restored.toml");
    std::fs::write(&restored_config, test_config(&restored, &backup_line)).unwrap();
    let live = {
        let config = restored_config.clone();
        tokio::task::spawn_blocking(move || culvert(&["backup", "create"], &config))
            .await
            .unwrap()
    };
    assert!(
        text(&live).contains("taken by the running server"),
        "{}",
        text(&live)
    );
    server.stop().await;
    let offline = culvert(&["backup", "create"], &restored_config);
    assert!(
        offline.status.success() && text(&offline).contains("backup 3 taken"),
        "{}",
        text(&offline)
    );
    let list = culvert(&["backup", "list"], &config_path);
    let kept: Vec<String> = text(&list).lines().map(|l| l[..1].to_owned()).collect();
    assert_eq!(kept, ["2", "3"], "keep = 2: {}", text(&list));

    // Damage is found: a database file, then a media file.
    let tables = files_ending(&backups.path().join("db"), ".sst");
    let table = tables.first().expect("a table file in the backup");
    let mut bytes = std::fs::read(table).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(table, &bytes).unwrap();
    let verify = culvert(&["backup", "verify"], &config_path);
    assert!(!verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("damaged"), "{}", text(&verify));
    bytes[middle] ^= 0xFF;
    std::fs::write(table, &bytes).unwrap();
    let verify = culvert(&["backup", "verify"], &config_path);
    assert!(verify.status.success(), "mended: {}", text(&verify));
    let media = files_ending(&backups.path().join("media"), "");
    let media_file = media.iter().find(|p| p.is_file()).expect("a media file");
    std::fs::write(media_file, b"something else").unwrap();
    let verify = culvert(&["backup", "verify"], &config_path);
    assert!(text(&verify).contains("media file"), "{}", text(&verify));
}

#[tokio::test]
async fn backup_settings_errors_are_clear() {
    // Not configured: the admin API says so.
    let server = TestServer::start().await;
    let alice = server.register("alice", "alice-password-1").await;
    let none = server
        .post("/_culvert/admin/v1/backups", Some(&alice.token), json!({}))
        .await;
    assert_error(&none, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    assert!(
        none.1["error"].as_str().unwrap().contains("backup"),
        "{}",
        none.1
    );

    // Inside the database directory: the server does not start.
    let dir = tempfile::TempDir::new().unwrap();
    let config = culvert::config::Config::from_toml_str(&test_config(
        dir.path(),
        &format!(
            "backup = {{ path = \"{}\" }}",
            dir.path().join("backups").display()
        ),
    ))
    .unwrap();
    let error = culvert::server::start(config).await.err().expect("refused");
    assert!(
        error.to_string().contains("inside the database directory"),
        "{error}"
    );
}
