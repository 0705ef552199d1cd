//! Dev mode never silently serves a non-loopback address (issue 11): `chorus serve` turns it on by
//! default only on a loopback address. On another address without an explicit `dev_mode`, it
//! starts with dev tokens off and says so, or, with no JWT secret to run without them, refuses to
//! start and says why; an explicit `CHORUS_DEV_MODE=true` is obeyed.

use std::process::Stdio;
use std::time::Duration;

use chorus_process::{ChildServer, LISTENING};

const WAIT: Duration = Duration::from_secs(30);

/// `chorus serve --listen <listen>` in a fresh data directory with only `environment`.
fn serve(
    listen: &str,
    data_dir: &std::path::Path,
    environment: &[(&str, &str)],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"));
    command
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env_clear()
        .env("CHORUS_LOG", "warn")
        .envs(environment.iter().copied())
        .stderr(Stdio::piped());
    command
}

/// Starts the server (through the shared launcher) and returns it with its port and its
/// "Dev mode: …" line.
async fn started(command: tokio::process::Command) -> (ChildServer, u16, String) {
    let server = ChildServer::spawn(command, LISTENING, WAIT)
        .await
        .expect("started in time");
    let port = server.addr().expect("a listening address").port();
    let dev_line = server
        .line_containing("Dev mode:", WAIT)
        .await
        .expect("chorus serve says whether dev mode is on");
    (server, port, dev_line.trim().to_owned())
}

/// `POST /v1/dev/token` on the loopback interface: the status.
async fn dev_token_status(port: u16) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/dev/token"))
        .json(&serde_json::json!({"user": "alice"}))
        .send()
        .await
        .expect("answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_non_loopback_address_gets_dev_mode_only_when_asked_for() {
    let secret = ("CHORUS_JWT_SECRET", "a-secret-of-at-least-16-bytes");
    let api_key = ("CHORUS_API_KEY", "a-key");

    // the default address is loopback: dev mode on, as before
    let data = tempfile::tempdir().expect("tempdir");
    let (child, port, dev_line) = started(serve("127.0.0.1:0", data.path(), &[])).await;
    assert!(dev_line.starts_with("Dev mode: on"), "{dev_line}");
    assert_eq!(dev_token_status(port).await, 200);
    child.kill().await.expect("killed");

    // every interface, with a secret: starts with dev tokens off, and says so
    let data = tempfile::tempdir().expect("tempdir");
    let (child, port, dev_line) =
        started(serve("0.0.0.0:0", data.path(), &[secret, api_key])).await;
    assert!(dev_line.starts_with("Dev mode: off"), "{dev_line}");
    assert_eq!(dev_token_status(port).await, 404, "no dev tokens");
    child.kill().await.expect("killed");

    // every interface, no secret: refuses to start, and says why
    let data = tempfile::tempdir().expect("tempdir");
    let output = tokio::time::timeout(WAIT, serve("0.0.0.0:0", data.path(), &[]).output())
        .await
        .expect("exits in time")
        .expect("runs");
    assert!(!output.status.success(), "refused to start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("dev mode is off") && stderr.contains("0.0.0.0:0 is not"),
        "{stderr}"
    );
    assert!(stderr.contains("CHORUS_DEV_MODE=true"), "{stderr}");
    assert!(
        !data.path().join("dev-jwt-secret").exists(),
        "no dev secret generated"
    );

    // every interface, dev mode asked for explicitly: obeyed
    let data = tempfile::tempdir().expect("tempdir");
    let (child, port, dev_line) = started(serve(
        "0.0.0.0:0",
        data.path(),
        &[("CHORUS_DEV_MODE", "true")],
    ))
    .await;
    assert!(dev_line.starts_with("Dev mode: on"), "{dev_line}");
    assert_eq!(dev_token_status(port).await, 200);
    child.kill().await.expect("killed");
}
