//! The web client (`web/`), tested where it runs: its library's unit tests under Node
//! (`node --test`), and the page in Debian's headless Chromium, driven by playwright-core
//! (`tests/web/browser.test.mjs`), against a real `chorus serve` child process.
//!
//! `scripts/test` installs what these need (chromium, `npm ci` in `tests/web`). Without them a
//! test is skipped with a notice, except in CI (`CI=true`), where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use chorus_tests::ChildServer;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

/// Whether a tool the test needs is there; without it the test is skipped with a notice, or
/// fails in CI.
fn available(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is missing in CI (scripts/test installs it)");
    }
    eprintln!("skipped: {what} is missing (run ./scripts/test, which installs it)");
    false
}

fn node_runs() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Runs a node command in the workspace; fails the test with its output unless it succeeds.
fn run_node(arguments: &[&str]) {
    let output = Command::new("node")
        .args(arguments)
        .current_dir(workspace())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "node {arguments:?} failed ({})",
        output.status
    );
}

#[test]
fn client_library_unit_tests() {
    if !available("node", node_runs()) {
        return;
    }
    run_node(&["--test", "web/"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_users_chat_in_headless_chromium() -> anyhow::Result<()> {
    let playwright = workspace().join("tests/web/node_modules/playwright-core");
    if !available("node", node_runs())
        || !available("chromium", chromium_path().exists())
        || !available(
            "playwright-core (npm ci --prefix tests/web)",
            playwright.exists(),
        )
    {
        return Ok(());
    }
    let data = tempfile::tempdir()?;
    let server = ChildServer::start(&data.path().join("data"), None).await?;
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("test-artifacts");
    let url = server.url.clone();
    let artifact_dir = artifacts.display().to_string();
    // the browser test blocks; the server runs on the runtime's other threads
    tokio::task::spawn_blocking(move || {
        run_node(&["tests/web/browser.test.mjs", &url, &artifact_dir]);
    })
    .await?;
    println!(
        "screenshots: {}",
        artifacts.join("web-client-*.png").display()
    );
    server.kill().await
}
