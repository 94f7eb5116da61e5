//! The `culvert` binary: configuration errors, environment overrides, admin commands.

use std::process::Output;

use crate::common::{TestServer, output_text as text, test_config};

fn culvert(args: &[&str], envs: &[(&str, &str)], cwd: &std::path::Path) -> Output {
    crate::common::culvert_command()
        .args(args)
        .current_dir(cwd)
        .envs(envs.iter().copied())
        .output()
        .expect("culvert runs")
}

#[test]
fn version_and_help() {
    let dir = tempfile::TempDir::new().unwrap();
    let output = culvert(&["--version"], &[], dir.path());
    assert!(output.status.success());
    assert!(text(&output).starts_with("culvert "), "{}", text(&output));
    let output = culvert(&["--help"], &[], dir.path());
    assert!(text(&output).contains("check-config") && text(&output).contains("user"));
}

#[test]
fn embedded_default_and_environment_overrides() {
    let dir = tempfile::TempDir::new().unwrap();
    let output = culvert(&["check-config"], &[], dir.path());
    assert!(output.status.success(), "{}", text(&output));
    let out = text(&output);
    assert!(out.contains("server_name = localhost"), "{out}");
    assert!(out.contains("127.0.0.1:6167"), "{out}");
    assert!(out.contains("culvert-data"), "{out}");

    // CONDUIT_ and CULVERT_ variables override; CULVERT_ wins over CONDUIT_.
    let output = culvert(
        &["check-config"],
        &[
            ("CONDUIT_SERVER_NAME", "conduit.example"),
            ("CONDUIT_PORT", "7000"),
            ("CULVERT_PORT", "8008"),
        ],
        dir.path(),
    );
    let out = text(&output);
    assert!(out.contains("server_name = conduit.example"), "{out}");
    assert!(out.contains(":8008"), "{out}");

    let output = culvert(
        &["check-config"],
        &[("CULVERT_PORT", "not-a-port")],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("port"), "{}", text(&output));

    // Variables that name no key (a wrapper's CULVERT_BIN, a container's CONDUIT_VERSION, a
    // nested one) are noted and left out, not fatal; the others still apply.
    let output = culvert(
        &["check-config"],
        &[
            ("CULVERT_BIN", "/usr/bin/culvert"),
            ("CONDUIT_VERSION", "0.11"),
            ("CULVERT_WELL_KNOWN__NONSENSE", "x"),
            ("CULVERT_PORT", "8009"),
        ],
        dir.path(),
    );
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains(":8009"), "{out}");
    for name in ["BIN", "VERSION", "WELL_KNOWN__NONSENSE"] {
        assert!(out.contains(&format!("`{name}`")), "{name} noted: {out}");
    }
}

#[test]
fn invalid_config_names_the_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let cases = [
        ("bogus_option = true", "bogus_option"),
        ("port = \"eighty\"", "port"),
        ("allow_registration = \"yes please\"", "allow_registration"),
        ("database_backend = \"sqlite\"", "database_backend"),
    ];
    for (line, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, test_config(dir.path(), line)).unwrap();
        let output = culvert(
            &["--config", path.to_str().unwrap(), "check-config"],
            &[],
            dir.path(),
        );
        assert_eq!(output.status.code(), Some(2), "{line}: {}", text(&output));
        let out = text(&output);
        assert!(
            out.contains(key),
            "{line}: message should name {key}: {out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
    let path = dir.path().join("bad-name.toml");
    std::fs::write(
        &path,
        "[global]\nserver_name = \"not a server name!\"\ndatabase_path = \"/tmp/x\"\n",
    )
    .unwrap();
    let output = culvert(
        &["--config", path.to_str().unwrap(), "check-config"],
        &[],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("server_name"), "{}", text(&output));

    let output = culvert(
        &["--config", "/no/such/file.toml", "check-config"],
        &[],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("/no/such/file.toml"));

    // A real Conduit config, with keys culvert does not use, is accepted.
    let path = dir.path().join("conduit.toml");
    std::fs::write(
        &path,
        "[global]\nserver_name = \"example.org\"\ndatabase_backend = \"rocksdb\"\ndatabase_path = \"/var/lib/matrix-conduit/\"\nport = 6167\nmax_request_size = 20_000_000\nallow_registration = true\nallow_federation = true\nallow_check_for_updates = true\ntrusted_servers = [\"matrix.org\"]\nmax_concurrent_requests = 100\nenable_lightning_bolt = true\naddress = \"127.0.0.1\"\nlog = \"warn,state_res=warn,_=off\"\n\n[global.well_known]\nclient = \"https://matrix.example.org\"\nserver = \"matrix.example.org:443\"\n",
    )
    .unwrap();
    let output = culvert(
        &["--config", path.to_str().unwrap(), "check-config"],
        &[],
        dir.path(),
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("enable_lightning_bolt"),
        "unused keys are reported"
    );
    // CONDUIT_CONFIG names the file too.
    let output = culvert(
        &["check-config"],
        &[("CONDUIT_CONFIG", path.to_str().unwrap())],
        dir.path(),
    );
    assert!(
        text(&output).contains("server_name = example.org"),
        "{}",
        text(&output)
    );
}

// Two threads: the command line's process is waited for on one while the server answers it
// on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_work_offline_and_against_a_running_server() {
    let dir = tempfile::TempDir::new().unwrap();
    let config_path = dir.path().join("culvert.toml");
    std::fs::write(&config_path, test_config(&dir.path().join("db"), "")).unwrap();
    let config = config_path.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        culvert(&all, &[], dir.path())
    };

    let output = run(&["user", "create", "root", "--password", "s3cret"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("@root:test.local (admin)"),
        "first user is admin: {}",
        text(&output)
    );
    let output = run(&["user", "create", "plain"]);
    let out = text(&output);
    assert!(
        out.contains("created @plain:test.local") && !out.contains("(admin)"),
        "{out}"
    );
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password printed")
        .to_owned();
    let output = run(&["user", "create", "root"]);
    assert!(
        !output.status.success() && text(&output).contains("taken"),
        "{}",
        text(&output)
    );
    let output = run(&["user", "create", "Bad Name"]);
    assert!(!output.status.success());

    let output = run(&["user", "reset-password", "root", "--password", "new-s3cret"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = run(&["user", "deactivate", "plain"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = run(&["user", "list"]);
    let out = text(&output);
    assert!(out.contains("@root:test.local\tadmin"), "{out}");
    assert!(out.contains("@plain:test.local\tdeactivated"), "{out}");
    let output = run(&["user", "reset-password", "nobody"]);
    assert!(!output.status.success());

    // The server sees what the CLI wrote.
    let server =
        TestServer::start_on(dir.path().join("db"), "rate_limits = { enabled = false }").await;
    server.login_ok("root", "new-s3cret").await;
    assert_eq!(
        server.login("plain", &generated).await.0,
        reqwest::StatusCode::FORBIDDEN
    );
    // While it runs, the same commands go through it (its admin API, with the token it left
    // for the command line in a file only its own account may read).
    let access = dir.path().join("db").join("admin-cli.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&access).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only access file");
    }
    let output = run(&["user", "list"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("@root:test.local\tadmin"), "{out}");
    assert!(out.contains("@plain:test.local\tdeactivated"), "{out}");
    let output = run(&["user", "create", "carol", "--password", "carol-pass-1"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("created @carol:test.local"),
        "{}",
        text(&output)
    );
    let carol = server.login_ok("carol", "carol-pass-1").await;
    let output = run(&["user", "create", "carol"]);
    assert!(
        !output.status.success() && text(&output).contains("exists"),
        "{}",
        text(&output)
    );
    let output = run(&["user", "create", "Bad Name"]);
    assert!(!output.status.success(), "{}", text(&output));
    let output = run(&[
        "user",
        "reset-password",
        "carol",
        "--password",
        "carol-pass-2",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let (status, _) = server
        .get("/_matrix/client/v3/account/whoami", Some(&carol.token))
        .await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "logged out");
    server.login_ok("carol", "carol-pass-2").await;
    let output = run(&["user", "deactivate", "carol"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        server.login("carol", "carol-pass-2").await.0,
        reqwest::StatusCode::FORBIDDEN
    );
    let output = run(&["user", "reset-password", "nobody"]);
    assert!(!output.status.success(), "{}", text(&output));
    // The token is the command line's, for the admin API only, and changes with each start.
    let token: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&access).unwrap()).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let (status, _) = server.get("/_synapse/admin/v2/users", Some(&token)).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (status, _) = server
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    let server = server.restart().await;
    let (status, _) = server.get("/_synapse/admin/v2/users", Some(&token)).await;
    assert_eq!(
        status,
        reqwest::StatusCode::UNAUTHORIZED,
        "a new token each start"
    );
}
