//! Prometheus metrics: off by default and never on the public port; when on, their own
//! listener answers Prometheus text that the Prometheus project's parser reads, the counters
//! move with requests, events and long-polls, and no label carries a user, room or token.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, assert_error, run_python_client};

const METRICS_ON: &str =
    "rate_limits = { enabled = false }\nmetrics = { address = \"127.0.0.1:0\" }";

/// One sample as the Python parser read it.
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Scrapes `server`'s metrics through `tests/clients/metrics_scrape.py`; `None` when the
/// Python client cannot run (the test is then reported skipped).
async fn scrape(server: &TestServer) -> Option<Vec<Sample>> {
    let url = format!(
        "http://{}/metrics",
        server.metrics_addr().expect("metrics on")
    );
    let out = run_python_client(
        "prometheus_client",
        "metrics_scrape.py",
        &[&url],
        "metrics: parsed",
    )
    .await?;
    Some(
        out.lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| {
                let v: Value = serde_json::from_str(line).expect("a JSON sample");
                Sample {
                    name: v["name"].as_str().expect("name").to_owned(),
                    labels: serde_json::from_value(v["labels"].clone()).expect("labels"),
                    value: v["value"].as_f64().expect("value"),
                }
            })
            .collect(),
    )
}

/// The value of the sample `name` with (at least) `labels`; 0 when there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn has(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

#[tokio::test]
async fn metrics_are_off_by_default_and_never_on_the_public_port() {
    let server = TestServer::start().await;
    assert!(server.metrics_addr().is_none());
    let result = server.get("/metrics", None).await;
    assert_error(&result, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");

    // The same port as the server's is refused at start.
    let text = "[global]\nserver_name = \"x.test\"\ndatabase_path = \"/tmp/x\"\nport = 8448\nmetrics = { address = \"127.0.0.1:8448\" }\n";
    let error = culvert::config::Config::from_toml_str(text).expect_err("same port refused");
    assert!(error.0.contains("metrics.address"), "{}", error.0);
    let text = text.replace("127.0.0.1:8448", "127.0.0.1:9167");
    culvert::config::Config::from_toml_str(&text).expect("a port of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_requests_events_and_long_polls() {
    let server = TestServer::start_with(METRICS_ON).await;
    let alice = server.register("alice", "secret-password").await;
    let room = server
        .create_room(&alice, json!({ "name": "Metrics" }))
        .await;
    // A request for a path that matches no route: counted as `unmatched`, its text nowhere.
    let result = server
        .get("/_matrix/client/v3/no-such-thing/@alice:secret", None)
        .await;
    assert_error(&result, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");

    let Some(before) = scrape(&server).await else {
        return;
    };
    let send = [
        (
            "endpoint",
            "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}",
        ),
        ("method", "PUT"),
        ("status", "200"),
    ];
    let local = [("origin", "local")];
    for i in 0..5 {
        server.say(&alice, &room, &format!("m{i}")).await;
    }
    // A long-poll parked while the scrape happens, then woken by a message.
    let sync = server.get_ok("/_matrix/client/v3/sync", &alice).await;
    let since = sync["next_batch"].as_str().expect("next_batch").to_owned();
    let poll = {
        let http = server.http.clone();
        let url = format!(
            "{}/_matrix/client/v3/sync?since={since}&timeout=20000",
            server.base
        );
        let token = alice.token.clone();
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let during = loop {
        let Some(now) = scrape(&server).await else {
            return;
        };
        if value(&now, "culvert_long_polls", &[("api", "sync")]) >= 1.0 {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the long-poll is never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    server.say(&alice, &room, "wake").await;
    let woken = poll.await.expect("task").expect("sync answered");
    assert_eq!(woken.status(), StatusCode::OK);
    let Some(after) = scrape(&server).await else {
        return;
    };

    let count = "culvert_http_request_duration_seconds_count";
    assert_eq!(
        value(&after, count, &send) - value(&before, count, &send),
        6.0
    );
    let events = "culvert_events_total";
    assert_eq!(
        value(&after, events, &local) - value(&before, events, &local),
        6.0
    );
    assert!(value(&during, events, &local) >= value(&before, events, &local) + 5.0);
    assert_eq!(value(&after, "culvert_long_polls", &[("api", "sync")]), 0.0);
    assert!(
        value(&after, "culvert_sync_responses_total", &[("api", "sync")])
            >= value(&before, "culvert_sync_responses_total", &[("api", "sync")]) + 2.0
    );
    // The unmatched request is there, under no path of its own.
    assert!(
        value(
            &after,
            count,
            &[("endpoint", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    // A histogram: buckets that add up.
    let buckets: Vec<&Sample> = after
        .iter()
        .filter(|s| {
            s.name == "culvert_http_request_duration_seconds_bucket"
                && send
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(buckets.len() > 5);
    let inf = buckets
        .iter()
        .find(|s| s.labels["le"] == "+Inf")
        .expect("+Inf bucket");
    assert_eq!(inf.value, value(&after, count, &send));

    // State read at the scrape: memory, the database, the accounts.
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(value(&after, "culvert_rocksdb_block_cache_capacity_bytes", &[]) > 0.0);
    assert!(has(&after, "culvert_rocksdb_block_cache_hits_total"));
    assert!(has(&after, "culvert_rocksdb_memtable_bytes"));
    assert!(has(&after, "culvert_rocksdb_table_readers_bytes"));
    // What each allocator holds: mimalloc culvert's own memory, glibc's malloc RocksDB's.
    assert!(value(&after, "culvert_allocator_rust_committed_bytes", &[]) > 1_000_000.0);
    assert!(value(&after, "culvert_allocator_c_in_use_bytes", &[]) > 1_000_000.0);
    assert!(has(&after, "culvert_allocator_c_free_held_bytes"));
    assert!(has(&after, "culvert_federation_queue_events"));
    // culvert's own caches: the room's state was loaded and its events read back.
    for cache in ["state_snapshots", "parsed_events", "short_ids"] {
        let bytes = value(&after, "culvert_cache_bytes", &[("cache", cache)]);
        assert!(bytes > 100.0, "{cache}: {bytes} bytes");
    }
    assert_eq!(value(&after, "culvert_users", &[]), 1.0);
    assert!(
        value(&after, "culvert_store_point_reads_total", &[])
            > value(&before, "culvert_store_point_reads_total", &[])
    );

    // Every series the Grafana dashboard in docs/ draws exists.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana-dashboard.json"
    ))
    .expect("docs/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut drawn = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("culvert_") || name.starts_with("process_") {
                    assert!(
                        has(&after, name),
                        "the dashboard draws {name}, which is not served"
                    );
                    drawn += 1;
                }
            }
        }
    }
    assert!(drawn > 20, "the dashboard draws {drawn} series");

    // No label value names a user, a room, a server or a token.
    for sample in &after {
        for (key, label) in &sample.labels {
            assert!(
                !label.contains('@')
                    && !label.contains('!')
                    && !label.contains("secret")
                    && !label.contains(&alice.token)
                    && !label.contains(&room),
                "{}{{{key}={label}}}",
                sample.name
            );
        }
    }
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_alone() {
    let server = TestServer::start_with(METRICS_ON).await;
    let base = format!("http://{}", server.metrics_addr().expect("metrics on"));
    let http = server.http.clone();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("answer");
    assert_eq!(metrics.status(), StatusCode::OK);
    for path in ["/", "/_matrix/client/versions", "/metrics/x"] {
        let answer = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // The public port does not serve them.
    let result = server.get("/metrics", None).await;
    assert_error(&result, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    // Stopping the server stops its metrics listener; the next start serves them again.
    let old = server.metrics_addr().expect("metrics on");
    let server = server.restart().await;
    let new = server.metrics_addr().expect("metrics on after a restart");
    if new != old {
        assert!(
            tokio::net::TcpStream::connect(old).await.is_err(),
            "still listening"
        );
    }
    let metrics = http
        .get(format!("http://{new}/metrics"))
        .send()
        .await
        .expect("answer");
    assert_eq!(metrics.status(), StatusCode::OK);
}

/// `culvert_rocksdb_memtable_bytes`, read from the metrics' text as served.
async fn memtable_bytes(server: &TestServer) -> f64 {
    let url = format!(
        "http://{}/metrics",
        server.metrics_addr().expect("metrics on")
    );
    let text = server
        .http
        .get(url)
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix("culvert_rocksdb_memtable_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("culvert_rocksdb_memtable_bytes in the metrics")
}

/// A burst of writes, then quiet: within seconds the memtables that hold the burst are written
/// out to table files and their memory given back (`store::quiet_flush`), and the messages are
/// still there.
#[tokio::test]
async fn memtables_are_written_out_once_the_writes_go_quiet() {
    let server = TestServer::start_with(METRICS_ON).await;
    let alice = server.register("alice", "secret-password").await;
    let room = server.create_room(&alice, json!({ "name": "Burst" })).await;
    let words = "burst ".repeat(8_000);
    for i in 0..120 {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}");
        let content = json!({ "msgtype": "m.text", "body": format!("{i} {words}") });
        let (status, body) = server.put(&path, Some(&alice.token), content).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let burst = memtable_bytes(&server).await;
    assert!(
        burst > 5_000_000.0,
        "the burst is in the memtables: {burst}"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = memtable_bytes(&server).await;
        if now < 1_000_000.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the memtables still hold {now} bytes 30 s after the burst"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let messages = server
        .get_ok(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=200"),
            &alice,
        )
        .await;
    let bodies = messages["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .count();
    assert_eq!(bodies, 120);
}
