//! The load generator (`culvert-bench`) run as a binary against an in-process server with tiny
//! parameters. Only counts and the shape of the output are asserted: timings belong in
//! BENCHMARKS.md, never in the test suite.

use std::path::Path;

use serde_json::Value;

use crate::common::TestServer;

struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs the tool against `server` with `args`; `--url` comes first.
async fn bench(server: &TestServer, args: &[&str]) -> Outcome {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_culvert-bench"))
        .arg("--url")
        .arg(&server.base)
        .args(args)
        .output()
        .await
        .expect("culvert-bench starts");
    Outcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a scenario that must succeed and returns its JSON report.
async fn bench_ok(server: &TestServer, dir: &Path, name: &str, args: &[&str]) -> Value {
    let json = dir.join(format!("{name}.json"));
    let svg = dir.join(format!("{name}.svg"));
    let mut all = vec![
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let outcome = bench(server, &all).await;
    assert!(
        outcome.success,
        "culvert-bench {args:?} failed:\n{}\n{}",
        outcome.stdout, outcome.stderr
    );
    assert!(
        outcome.stdout.contains("medians over runs"),
        "{}",
        outcome.stdout
    );
    let chart = std::fs::read_to_string(&svg).expect("SVG written");
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    // Results are committed to docs/bench: each run's samples are one path, not a line each.
    assert!(!chart.contains("<circle") && chart.contains(r#"stroke-linecap="round""#));
    let report = std::fs::read_to_string(&json).expect("JSON written");
    assert_eq!(report.lines().count(), 1, "the JSON report is one line");
    serde_json::from_str(&report).expect("JSON")
}

fn figure(report: &Value, name: &str) -> f64 {
    report["median"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("figure {name} missing in {}", report["median"]))
}

#[tokio::test]
async fn send_counts_every_message_in_every_run() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id().to_string();
    let report = bench_ok(
        &server,
        dir.path(),
        "send",
        &[
            "--runs",
            "2",
            "--pid",
            &pid,
            "--label",
            "culvert",
            "send",
            "--senders",
            "2",
            "--count",
            "20",
            "--warmup",
            "2",
            "--duration",
            "120",
        ],
    )
    .await;
    assert_eq!(report["scenario"], "send");
    assert_eq!(report["params"]["senders"], 2);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(run["figures"]["events"], 40.0, "{run}");
        assert_eq!(run["figures"]["errors"], 0.0);
        // Warm-up messages are not in the series either.
        assert_eq!(run["series"].as_array().unwrap().len(), 40);
    }
    assert!(figure(&report, "events_per_s") > 0.0);
    let (p50, p99) = (
        figure(&report, "send_p50_ms"),
        figure(&report, "send_p99_ms"),
    );
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50}, p99 {p99}");
    // The in-process server is this test process: /proc sampling saw it.
    assert!(figure(&report, "server_rss_peak_mib") > 1.0);
    assert!(figure(&report, "server_cpu_seconds") >= 0.0);

    // Many rooms: same count, spread over the rooms.
    let report = bench_ok(
        &server,
        dir.path(),
        "send-rooms",
        &[
            "--runs",
            "1",
            "send",
            "--senders",
            "3",
            "--rooms",
            "4",
            "--count",
            "8",
            "--warmup",
            "1",
            "--duration",
            "120",
        ],
    )
    .await;
    assert_eq!(figure(&report, "events"), 24.0);
    assert_eq!(figure(&report, "rooms"), 4.0);
}

#[tokio::test]
async fn deliver_reaches_every_member_exactly_once() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let report = bench_ok(
        &server,
        dir.path(),
        "deliver",
        &[
            "--runs",
            "2",
            "deliver",
            "--users",
            "3",
            "--messages",
            "10",
            "--warmup",
            "2",
            "--rate",
            "50",
            "--grace",
            "20",
        ],
    )
    .await;
    for run in report["runs"].as_array().unwrap() {
        let f = &run["figures"];
        assert_eq!(f["expected_deliveries"], 30.0, "{f}");
        assert_eq!(f["delivered"], 30.0, "{f}");
        assert_eq!(f["lost"], 0.0, "{f}");
        assert_eq!(f["duplicates"], 0.0, "{f}");
        assert_eq!(run["series"].as_array().unwrap().len(), 30);
    }
    let (p50, p99) = (
        figure(&report, "deliver_p50_ms"),
        figure(&report, "deliver_p99_ms"),
    );
    assert!(p50 <= p99, "p50 {p50}, p99 {p99}");
    assert!(figure(&report, "deliver_from_request_p50_ms") >= 0.0);
}

#[tokio::test]
async fn initial_sync_idle_and_history() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let report = bench_ok(
        &server,
        dir.path(),
        "initial-sync",
        &[
            "--runs",
            "1",
            "initial-sync",
            "--rooms",
            "3",
            "--history",
            "2",
            "--samples",
            "2",
        ],
    )
    .await;
    assert_eq!(figure(&report, "rooms_seen"), 3.0);
    assert_eq!(figure(&report, "samples"), 2.0);
    assert!(figure(&report, "sync_bytes") > 100.0);

    let pid = std::process::id().to_string();
    let report = bench_ok(
        &server,
        dir.path(),
        "idle",
        &[
            "--runs",
            "1",
            "--pid",
            &pid,
            "idle",
            "--clients",
            "3",
            "--duration",
            "1",
            "--poll-timeout",
            "400",
        ],
    )
    .await;
    assert_eq!(figure(&report, "connected"), 3.0);
    assert_eq!(figure(&report, "errors"), 0.0);
    // Each client's long-poll timed out at least once in the measured second.
    assert!(figure(&report, "sync_responses") >= 3.0);
    assert!(figure(&report, "server_rss_mean_mib") > 1.0);

    let report = bench_ok(
        &server,
        dir.path(),
        "history",
        &["--runs", "1", "history", "--events", "30", "--page", "7"],
    )
    .await;
    assert_eq!(figure(&report, "messages_seen"), 30.0);
    // 30 messages and the room's creation events, 7 at a time.
    assert!(figure(&report, "pages") >= 5.0);

    // 40 messages, two of 5 words each: a word is in about 16 of them.
    let report = bench_ok(
        &server,
        dir.path(),
        "search",
        &[
            "--runs",
            "1",
            "search",
            "--events",
            "40",
            "--vocabulary",
            "5",
            "--queries",
            "3",
        ],
    )
    .await;
    assert_eq!(figure(&report, "queries"), 3.0);
    let matches = figure(&report, "matches_per_query");
    assert!((8.0..=40.0).contains(&matches), "{matches}");
    assert!(figure(&report, "query_p50_ms") > 0.0);

    // 7 threads in pages of 3: the whole list is 3 pages.
    let report = bench_ok(
        &server,
        dir.path(),
        "threads",
        &[
            "--runs",
            "1",
            "threads",
            "--threads",
            "7",
            "--page",
            "3",
            "--samples",
            "2",
        ],
    )
    .await;
    assert_eq!(figure(&report, "threads"), 7.0);
    assert_eq!(figure(&report, "pages"), 3.0);
    assert!(figure(&report, "first_page_p50_ms") > 0.0);
}

#[tokio::test]
async fn account_creation_paths_and_failures() {
    // A registration token: needed and used.
    let server = TestServer::start_with(
        "allow_registration = true\nregistration_token = \"bench-token\"\nrate_limits = { enabled = false }",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--runs", "1", "history", "--events", "3", "--page", "10"];
    let with_token: Vec<&str> = ["--registration-token", "bench-token"]
        .into_iter()
        .chain(args)
        .collect();
    let report = bench_ok(&server, dir.path(), "token", &with_token).await;
    assert_eq!(figure(&report, "messages_seen"), 3.0);
    let without = bench(&server, &args).await;
    assert!(!without.success);
    assert!(without.stderr.contains("register"), "{}", without.stderr);

    // --shared-secret against a server without Synapse's admin API falls back to /register.
    let open = TestServer::start().await;
    let with_secret: Vec<&str> = ["--shared-secret", "s3cret"]
        .into_iter()
        .chain(args)
        .collect();
    bench_ok(&open, dir.path(), "secret", &with_secret).await;

    // Closed registration: a clear failure, no panic.
    let closed = TestServer::start_with("allow_registration = false").await;
    let outcome = bench(&closed, &args).await;
    assert!(!outcome.success);
    assert!(outcome.stderr.contains("register"), "{}", outcome.stderr);

    // Bad arguments are refused before any request.
    let outcome = bench(&open, &["send", "--senders", "0"]).await;
    assert!(!outcome.success);
    assert!(outcome.stderr.contains("--senders"), "{}", outcome.stderr);
}

#[tokio::test]
async fn refuses_what_is_not_a_homeserver() {
    let outcome = tokio::process::Command::new(env!("CARGO_BIN_EXE_culvert-bench"))
        .args(["--url", "http://127.0.0.1:9", "--runs", "1", "history"])
        .output()
        .await
        .expect("culvert-bench starts");
    assert!(!outcome.status.success());
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    assert!(stderr.contains("not a Matrix homeserver"), "{stderr}");
}

#[tokio::test]
async fn push_counts_every_notification_at_the_gateway_once() {
    // The tool's gateway listens on loopback.
    let server =
        TestServer::start_with("rate_limits = { enabled = false }\nip_range_denylist = []").await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--runs",
        "2",
        "push",
        "--members",
        "4",
        "--senders",
        "2",
        "--count",
        "5",
        "--messages",
        "3",
        "--rate",
        "20",
        "--warmup",
        "1",
        "--drain",
        "30",
    ];
    let report = bench_ok(&server, dir.path(), "push", &args).await;
    assert_eq!(report["scenario"], "push");
    for run in report["runs"].as_array().unwrap() {
        let f = &run["figures"];
        assert_eq!(f["events"], 10.0, "{f}");
        assert_eq!(f["pushers"], 4.0, "{f}");
        assert_eq!(f["lost"], 0.0, "{f}");
        assert_eq!(f["duplicates"], 0.0, "{f}");
        // The chart: one point per notification of the latency phase (3 messages, 3 others).
        assert_eq!(run["series"].as_array().unwrap().len(), 9, "{f}");
    }
    assert!(figure(&report, "push_p50_ms") <= figure(&report, "push_p99_ms"));

    // The baseline: the same room without pushers has no gateway figures.
    let baseline = bench_ok(
        &server,
        dir.path(),
        "baseline",
        &[
            "--runs",
            "1",
            "push",
            "--members",
            "3",
            "--senders",
            "1",
            "--count",
            "4",
            "--no-pushers",
        ],
    )
    .await;
    assert_eq!(baseline["median"]["events"], 4.0);
    assert_eq!(baseline["median"]["pushers"], 0.0);
    assert!(baseline["median"].get("push_p50_ms").is_none());
}
