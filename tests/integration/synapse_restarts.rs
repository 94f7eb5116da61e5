//! Interop with a real Synapse (set up in `synapse.rs`) through outages: culvert's backlog
//! reaches a Synapse that was stopped, and survives the culvert binary being killed.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{
    common::{Session, message_bodies, poll, timeline_has, urlencode},
    synapse::{Synapse, available, synapse_sees},
};

/// The real `culvert` binary, federating over TLS; kill -9 and start again at will.
struct CulvertProcess {
    config_path: PathBuf,
    base: String,
    http: reqwest::Client,
    child: Option<Child>,
    _dir: TempDir,
}

impl Drop for CulvertProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl CulvertProcess {
    async fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let lines = crate::common::federating_config(dir.path(), "");
        let port: u16 = lines
            .lines()
            .find_map(|l| l.strip_prefix("port = "))
            .and_then(|p| p.trim().parse().ok())
            .expect("the federating config names its port");
        let config = crate::common::test_config(&dir.path().join("db"), &lines);
        let config_path = dir.path().join("culvert.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut process = CulvertProcess {
            config_path,
            base: format!("https://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
            child: None,
            _dir: dir,
        };
        process.run().await;
        process
    }

    async fn run(&mut self) {
        self.child = Some(
            // TEST_CULVERT_BINARY: another build of culvert to run (e.g. a release build).
            Command::new(
                std::env::var_os("TEST_CULVERT_BINARY")
                    .unwrap_or_else(|| env!("CARGO_BIN_EXE_culvert").into()),
            )
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.config_path.with_extension("log")).unwrap())
            .spawn()
            .expect("culvert binary starts"),
        );
        for _ in 0..300 {
            if self
                .http
                .get(format!("{}/_matrix/client/versions", self.base))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the culvert binary did not start: {}",
            std::fs::read_to_string(self.config_path.with_extension("log")).unwrap_or_default()
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success() || status == StatusCode::UNAUTHORIZED,
            "{path}: {status} {body}"
        );
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogs_survive_a_stopped_synapse_and_a_killed_culvert() {
    let Some(python) = available() else { return };
    let mut synapse = Synapse::start(&python).await;
    let mut culvert = CulvertProcess::start().await;
    use reqwest::Method;

    // Alice on culvert (registration with the dummy stage), a public room with an alias.
    let first = culvert
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "alice", "password": "alice-password-1" }),
        )
        .await;
    let alice = culvert
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "alice", "password": "alice-password-1",
                      "auth": { "type": "m.login.dummy", "session": first["session"] } }),
        )
        .await;
    let token = alice["access_token"].as_str().unwrap().to_owned();
    let room = culvert
        .call(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&token),
            json!({ "preset": "public_chat", "room_alias_name": "lasting" }),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let culvert_name = culvert.base.replace("https://127.0.0.1", "localhost");
    let sam = synapse.register("sam").await;
    let (status, body) = synapse
        .post(
            &format!(
                "/_matrix/client/v3/join/{}",
                urlencode(&format!("#lasting:{culvert_name}"))
            ),
            &sam,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut txn = 0;
    let mut say = async |culvert: &CulvertProcess, text: String| {
        txn += 1;
        culvert
            .call(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{txn}"),
                Some(&token),
                json!({ "msgtype": "m.text", "body": text }),
            )
            .await;
    };
    say(&culvert, "warm-up".into()).await;
    synapse_sees(&synapse, &sam, "the warm-up", |b| {
        timeline_has(b, &room, "warm-up")
    })
    .await;

    // Synapse goes away; culvert keeps accepting messages; Synapse comes back and gets them.
    synapse.stop();
    for i in 0..5 {
        say(&culvert, format!("while synapse was down {i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    synapse.run().await;
    let room_ref = &room;
    eventually_synapse_has(
        &synapse,
        &sam,
        room_ref,
        (0..5).map(|i| format!("while synapse was down {i}")),
    )
    .await;

    // culvert is killed right after acknowledging messages; after a restart they still go out.
    for i in 0..5 {
        say(&culvert, format!("before the kill {i}")).await;
    }
    culvert.kill();
    culvert.run().await;
    eventually_synapse_has(
        &synapse,
        &sam,
        room_ref,
        (0..5).map(|i| format!("before the kill {i}")),
    )
    .await;
}

/// Waits until Synapse has every one of `texts` in `room`, reading its /messages.
async fn eventually_synapse_has(
    synapse: &Synapse,
    who: &Session,
    room: &str,
    texts: impl Iterator<Item = String>,
) {
    let wanted: Vec<String> = texts.collect();
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100");
    let every = Duration::from_millis(500);
    let all_there = poll(Duration::from_secs(60), every, || async {
        let (status, body) = synapse.get(&path, who).await;
        let got = if status == StatusCode::OK {
            message_bodies(&body["chunk"])
        } else {
            Vec::new()
        };
        wanted.iter().all(|w| got.contains(w)).then_some(())
    })
    .await;
    if all_there.is_none() {
        panic!(
            "Synapse never got all of {wanted:?}\n{}",
            synapse.log_tail()
        );
    }
}
