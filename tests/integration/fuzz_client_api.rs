//! Schema-driven fuzzing of the client API: schemathesis (PyPI), a tool written by others,
//! generates requests from the spec's own OpenAPI files and fails on any 5xx answer or dropped
//! connection. The suite runs every spec file with a few examples each
//! (`tests/clients/schemathesis_client_api.py`); `scripts/fuzz-client-api` runs it at length.

use crate::common::{TestServer, skip};

/// The spec's client-server OpenAPI files: `MATRIX_SPEC_DIR`, or the workplace's `shared/`
/// beside the repository.
fn client_server_spec() -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("MATRIX_SPEC_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/matrix-spec/data/api/client-server"),
    };
    dir.join("login.yaml").is_file().then_some(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_in_the_client_api() {
    let Some(spec) = client_server_spec() else {
        skip(
            None,
            "the spec's OpenAPI files are not beside the repository (set MATRIX_SPEC_DIR)",
        );
        return;
    };
    let python = std::env::var_os("SCHEMATHESIS_PYTHON")
        .map(std::path::PathBuf::from)
        .filter(|python| {
            std::process::Command::new(python)
                .args(["-c", "import schemathesis"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(python) = python else {
        skip(
            Some("REQUIRE_REAL_CLIENTS"),
            "set SCHEMATHESIS_PYTHON to a Python with schemathesis installed (see scripts/test)",
        );
        return;
    };
    let server = TestServer::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/schemathesis_client_api.py"
    );
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(&server.base)
        .arg(&spec)
        .args(["--max-examples", "4", "--seed", "1"])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found server errors:\n{stdout}\n{stderr}"
    );
    // Every spec file was run (72 in spec v1.19), and the server still answers.
    let files: usize = stdout
        .split("fuzz ok: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(files >= 60, "too few spec files fuzzed:\n{stdout}");
    let (status, _) = server.get("/_matrix/client/versions", None).await;
    assert!(status.is_success());
}
