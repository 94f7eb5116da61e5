//! Real third-party clients against culvert.
//!
//! matrix-nio (Python) is driven by `tests/clients/nio_smoke.py`. The Python interpreter with
//! nio installed comes from `NIO_PYTHON` (`scripts/test` sets it up in a virtualenv); when it is
//! missing the tests are skipped with a message, unless `REQUIRE_REAL_CLIENTS=1` (set by
//! `scripts/test`, hence CI) makes that a failure.

use std::path::PathBuf;

use crate::common::TestServer;

/// Runs the nio smoke script against `server`; `None` when nio is unavailable (and allowed to be).
async fn run_nio_smoke(server: &TestServer, user: &str, extra_args: &[&str]) -> Option<()> {
    let mut args = vec![
        "--homeserver",
        server.base.as_str(),
        "--username",
        user,
        "--password",
        "nio-password-1",
    ];
    args.extend_from_slice(extra_args);
    crate::common::run_python_client("nio", "nio_smoke.py", &args, "nio smoke: ok")
        .await
        .map(|_| ())
}

#[tokio::test]
async fn matrix_nio_registers_logs_in_and_manages_its_account() {
    let server = TestServer::start().await;
    if run_nio_smoke(&server, "niouser", &[]).await.is_none() {
        return;
    }
    // And the server agrees with what nio did.
    let session = server.login_ok("niouser", "nio-password-1").await;
    let (_, profile) = server
        .get("/_matrix/client/v3/profile/@niouser:test.local", None)
        .await;
    assert_eq!(profile["displayname"], "Nio Smoke");
    let (_, devices) = server
        .get("/_matrix/client/v3/devices", Some(&session.token))
        .await;
    assert!(
        devices["devices"].as_array().unwrap().len() >= 2,
        "{devices}"
    );
}

/// nio's token registration opens with an `auth` that has neither type nor session, then
/// expects a stage after the token: both must work as they do on Synapse.
#[tokio::test]
async fn matrix_nio_registers_with_a_registration_token() {
    let server = TestServer::start_with(
        "registration_token = \"nio-sesame\"\nrate_limits = { enabled = false }",
    )
    .await;
    if run_nio_smoke(&server, "niotoken", &["--registration-token", "nio-sesame"])
        .await
        .is_none()
    {
        return;
    }
    server.login_ok("niotoken", "nio-password-1").await;
}

/// The rooms scenario: two nio clients create, invite, join, talk both ways, change the topic,
/// redact, type and send a receipt, each observing the other through its own `/sync`.
#[tokio::test]
async fn matrix_nio_two_users_in_a_room() {
    let server = TestServer::start().await;
    run_nio_script(&server, "nio_rooms.py", "nio rooms: ok").await;
}

/// The media scenario: a nio client uploads an image, downloads it (authenticated media) and
/// its cropped and scaled thumbnails; the script checks bytes, names and dimensions.
#[tokio::test]
async fn matrix_nio_uploads_and_downloads_media() {
    let server = TestServer::start().await;
    run_nio_script(&server, "nio_media.py", "nio media: ok").await;
}

/// Runs a matrix-nio script of `tests/clients` against `server`; it must end with `ok_line`.
/// Skipped (and under `REQUIRE_REAL_CLIENTS` failed) without a Python that has matrix-nio.
async fn run_nio_script(server: &TestServer, script: &str, ok_line: &str) {
    crate::common::run_python_client("nio", script, &["--homeserver", &server.base], ok_line).await;
}

/// The directory of the matrix-js-sdk scripts, when their dependencies are installed there
/// (`scripts/test` links `node_modules` in from its cache) and `node` runs.
pub fn js_clients_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/js"));
    let installed = dir
        .join("node_modules/matrix-js-sdk/package.json")
        .is_file();
    let node_runs = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    (installed && node_runs).then_some(dir)
}

/// The E2EE acceptance scenario with matrix-js-sdk and its Rust crypto (vodozemac in wasm):
/// two users decrypt each other in an encrypted room, a later device of one receives the keys of
/// newer messages, cross-signing bootstrapped by one is seen by the other, and a key backup is
/// restored on a fresh device that then decrypts old messages; finally secret storage (account
/// data) carries the cross-signing and backup keys to a device that knows only the recovery key.
/// Each step is asserted by the script (`tests/clients/js/e2ee.mjs`).
#[tokio::test]
async fn matrix_js_sdk_end_to_end_encryption() {
    let Some(dir) = js_clients_dir() else {
        crate::common::skip(
            Some("REQUIRE_REAL_CLIENTS"),
            "run `npm ci --prefix tests/clients/js` (scripts/test does) with node >= 20",
        );
        return;
    };
    let server = TestServer::start().await;
    let output = tokio::process::Command::new("node")
        .current_dir(&dir)
        .args(["e2ee.mjs", "--homeserver", &server.base])
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("js e2ee: ok"),
        "js e2ee failed:\n{stdout}\n{stderr}"
    );
    // The server saw what the clients did: alice's cross-signing keys and her backup.
    let alice = server.login_ok("jsalice", "js-e2ee-password-1").await;
    let (_, keys) = server
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            serde_json::json!({ "device_keys": { "@jsalice:test.local": [] } }),
        )
        .await;
    assert!(
        keys["master_keys"]["@jsalice:test.local"].is_object(),
        "{keys}"
    );
    let backup = server
        .get_ok("/_matrix/client/v3/room_keys/version", &alice)
        .await;
    assert!(backup["count"].as_u64().unwrap_or(0) >= 2, "{backup}");
}

/// Runs one matrix-js-sdk script of `tests/clients/js` against `server`; it must end with the
/// line `ok_line`. `None` (skip) when the scripts cannot run, unless `REQUIRE_REAL_CLIENTS`.
async fn run_js(server: &TestServer, script: &str, ok_line: &str) -> Option<()> {
    run_js_with(server, script, &[], ok_line).await.map(|_| ())
}

/// How long one matrix-js-sdk script may run (they take seconds to a minute).
const JS_SCRIPT_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Like [`run_js`] with more arguments; answers the script's standard output.
async fn run_js_with(
    server: &TestServer,
    script: &str,
    args: &[&str],
    ok_line: &str,
) -> Option<String> {
    let Some(dir) = js_clients_dir() else {
        crate::common::skip(
            Some("REQUIRE_REAL_CLIENTS"),
            "run `npm ci --prefix tests/clients/js` (scripts/test does) with node >= 20",
        );
        return None;
    };
    // Bounded: a script that fails while a process it started lives on (holding its output
    // open) must fail the test, not hang the suite.
    let output = tokio::time::timeout(
        JS_SCRIPT_LIMIT,
        tokio::process::Command::new("node")
            .current_dir(&dir)
            .args([script, "--homeserver", &server.base])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} did not end within {JS_SCRIPT_LIMIT:?}"))
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(ok_line),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    Some(stdout.into_owned())
}

/// matrix-js-sdk's local echo: a message it sends shows once, even when the server's answer to
/// the send comes after the sync that carries the event (`tests/clients/js/local_echo.mjs`).
#[tokio::test]
async fn matrix_js_sdk_replaces_its_local_echo_once() {
    let server = TestServer::start().await;
    run_js(&server, "local_echo.mjs", "js local echo: ok").await;
}

/// matrix-js-sdk's MatrixRTC session (Element Call's engine) on delayed events: its membership
/// manager schedules a delayed leave, joins, keeps the leave alive; when alice's process is
/// killed the server sends the leave and bob's client sees her leave the call
/// (`tests/clients/js/rtc.mjs`).
#[tokio::test]
async fn matrix_js_sdk_call_membership_leaves_when_its_client_dies() {
    let server = TestServer::start().await;
    run_js(&server, "rtc.mjs", "js rtc: ok").await;
}

/// matrix-js-sdk cross-signs a second device of its user from the first, and another user's
/// client sees both devices signed by their owner (`tests/clients/js/cross_signing.mjs`).
#[tokio::test]
async fn matrix_js_sdk_cross_signs_its_own_devices() {
    let server = TestServer::start().await;
    run_js(&server, "cross_signing.mjs", "js cross-signing: ok").await;
}

/// matrix-js-sdk's thread support: threads made through the SDK, a reply edited, a reaction
/// refused the second time (`M_DUPLICATE_ANNOTATION`); a fresh client builds the `Thread` from
/// the server's bundled aggregations, `/threads` and `/relations` (`tests/clients/js/threads.mjs`).
#[tokio::test]
async fn matrix_js_sdk_builds_threads_from_the_servers_aggregations() {
    let server = TestServer::start_with("rate_limits = { enabled = false }").await;
    run_js(&server, "threads.mjs", "js threads: ok").await;
}

/// matrix-js-sdk's sliding sync (MSC4186 without a `conn_id`): a list of rooms with their
/// timelines, a new message shown once, an invite (`tests/clients/js/sliding_sync.mjs`).
#[tokio::test]
async fn matrix_js_sdk_syncs_with_sliding_sync() {
    let server = TestServer::start().await;
    run_js(&server, "sliding_sync.mjs", "js sliding sync: ok").await;
}

/// matrix-sdk and matrix-sdk-ui 0.18 (what Element X is built on) drive culvert's simplified
/// sliding sync: `SyncService` with its room-list and encryption connections, the sorted room
/// list, a room subscription and timeline, an invite joined through the SDK, an encrypted
/// message decrypted, and thread subscriptions (MSC4306/MSC4308) made, skipped and synced
/// (`tests/clients/rust-sdk`, built by `scripts/test`).
#[tokio::test]
async fn matrix_sdk_syncs_like_element_x() {
    let bin = std::env::var_os("SDK_SLIDING_SYNC_BIN")
        .map(PathBuf::from)
        .filter(|bin| bin.is_file());
    let Some(bin) = bin else {
        crate::common::skip(
            Some("REQUIRE_REAL_CLIENTS"),
            "build tests/clients/rust-sdk and set SDK_SLIDING_SYNC_BIN (scripts/test does)",
        );
        return;
    };
    // Thread subscriptions on: the scenario's last step uses them.
    let server = TestServer::start_with("thread_subscriptions = true").await;
    let output = tokio::process::Command::new(bin)
        .args(["--homeserver", &server.base])
        .output()
        .await
        .expect("sdk-sliding-sync runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("sdk sliding sync: ok"),
        "matrix-sdk sliding sync failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("6. an older reply's automatic subscription was skipped"),
        "the thread-subscription step did not run:\n{stdout}"
    );
}

/// matrix-nio as a guest: registers with `kind=guest`, peeks at a world-readable room's state,
/// joins it (it lets guests in), reads through its own sync, writes, and is refused creating
/// a room (`tests/clients/nio_guest.py`).
#[tokio::test]
async fn matrix_nio_guest_reads_and_joins_a_world_readable_room() {
    let server = TestServer::start_with(
        "allow_guest_registration = true\nrate_limits = { enabled = false }",
    )
    .await;
    run_nio_script(&server, "nio_guest.py", "nio guest: ok").await;
}

/// matrix-nio in the admin room: the first account finds the invite in its sync, joins, gives
/// a command and reads the server's notice answering it; a non-admin is refused
/// (`tests/clients/nio_admin_room.py`).
#[tokio::test]
async fn matrix_nio_gives_commands_in_the_admin_room() {
    let server = TestServer::start_with(
        "admin_room = true
rate_limits = { enabled = false }",
    )
    .await;
    run_nio_script(&server, "nio_admin_room.py", "nio admin room: ok").await;
}

/// matrix-js-sdk logs in with a refresh token and keeps creating rooms, sending and syncing
/// across three expiries of a two-second access token through its own refresh logic
/// (`tests/clients/js/refresh.mjs`).
#[tokio::test]
async fn matrix_js_sdk_refreshes_its_access_token_across_expiries() {
    let server = TestServer::start_with("access_token_lifetime_ms = 2000").await;
    run_js(&server, "refresh.mjs", "js refresh: ok").await;
}

/// matrix-js-sdk registers a pusher, sees a room's unread count rise through its own sync and
/// fall after its read receipt; the gateway in the test gets the push
/// (`tests/clients/js/push.mjs`).
#[tokio::test]
async fn matrix_js_sdk_registers_a_pusher_and_follows_the_counts() {
    let server =
        TestServer::start_with("rate_limits = { enabled = false }\nip_range_denylist = []").await;
    let gateway = crate::push::Gateway::start().await;
    let Some(stdout) = run_js_with(
        &server,
        "push.mjs",
        &["--gateway", &gateway.url],
        "js push: ok",
    )
    .await
    else {
        return;
    };
    let event = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pushed event: "))
        .expect("the script names the event")
        .to_owned();
    let pushed = gateway.nth(0).await;
    assert_eq!(
        pushed["notification"]["event_id"],
        event.as_str(),
        "{pushed}"
    );
    assert_eq!(
        pushed["notification"]["devices"][0]["pushkey"],
        "js-pushkey"
    );
    assert!(
        pushed["notification"].get("content").is_none(),
        "event_id_only"
    );
}
