//! Packaging files checked with the tools that will read them: the systemd unit with
//! `systemd-analyze verify`, the Nix files with `nix-instantiate --parse`, the Debian maintainer
//! scripts with `sh -n`. Without a tool the check is skipped with a message, unless
//! `REQUIRE_PACKAGING_TOOLS=1` (set by `scripts/test`, hence CI) makes that a failure.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `tool` runs; if not, either skip (say so) or fail when tools are required.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        crate::common::skip(
            Some("REQUIRE_PACKAGING_TOOLS"),
            &format!("{tool} is not installed"),
        );
    }
    found
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the tool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn the_systemd_unit_verifies() {
    if !have("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(repo().join("debian/culvert.service")).unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("ExecStart=/usr/bin/culvert --config /etc/culvert/conduit.toml"));
    // Verify it pointing at the binary just built (the installed path does not exist here).
    let dir = tempfile::TempDir::new().unwrap();
    let copy = dir.path().join("culvert.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/culvert", env!("CARGO_BIN_EXE_culvert")),
    )
    .unwrap();
    let text = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    assert!(!text.contains("Unknown"), "{text}");

    // The daily backup: a timer (off until enabled) and the one-shot unit it starts.
    let backup = std::fs::read_to_string(repo().join("debian/culvert-backup.service")).unwrap();
    assert!(
        backup.contains(
            "ExecStart=/usr/bin/culvert --config /etc/culvert/conduit.toml backup create"
        )
    );
    let timer = std::fs::read_to_string(repo().join("debian/culvert-backup.timer")).unwrap();
    assert!(timer.contains("OnCalendar=daily") && timer.contains("WantedBy=timers.target"));
    std::fs::write(
        dir.path().join("culvert-backup.service"),
        backup.replace("/usr/bin/culvert", env!("CARGO_BIN_EXE_culvert")),
    )
    .unwrap();
    std::fs::write(dir.path().join("culvert-backup.timer"), timer).unwrap();
    for unit in ["culvert-backup.service", "culvert-backup.timer"] {
        let text = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.path().join(unit)));
        assert!(!text.contains("Unknown"), "{unit}: {text}");
    }
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains(r#"{ unit-name = "culvert-backup", enable = false, start = false }"#),
        "the package installs the backup units, off"
    );
}

#[test]
fn the_nix_files_parse() {
    if !have("nix-instantiate") {
        return;
    }
    let mut files: Vec<PathBuf> = vec![repo().join("flake.nix")];
    for entry in std::fs::read_dir(repo().join("nix")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "nix") {
            files.push(path);
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    for file in &files {
        run(Command::new("nix-instantiate").arg("--parse").arg(file));
    }
    // The module's backup option: the config's `backup` key and a timer-started unit.
    let module = std::fs::read_to_string(repo().join("nix/module.nix")).unwrap();
    for needed in [
        "backup = {",
        "systemd.services.culvert-backup",
        "startAt = cfg.backup.startAt",
        "backup create",
    ] {
        assert!(module.contains(needed), "nix/module.nix lacks {needed:?}");
    }
}

#[test]
fn the_debian_maintainer_scripts_are_valid_shell() {
    let debian = repo().join("debian");
    for script in ["config", "postinst", "postrm"] {
        let path: &Path = &debian.join(script);
        run(Command::new("sh").arg("-n").arg(path));
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{script}");
    }
    // The config the package writes is one culvert accepts.
    let postinst = std::fs::read_to_string(debian.join("postinst")).unwrap();
    let start = postinst.find("<<CONFIG\n").unwrap() + "<<CONFIG\n".len();
    let end = postinst.find("\nCONFIG\n").unwrap();
    let config = postinst[start..end]
        .replace("$server_name", "example.org")
        .replace("$address", "127.0.0.1")
        .replace("$port", "6167");
    culvert::config::Config::from_toml_str(&config).expect("the written config is valid");
}
