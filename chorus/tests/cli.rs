//! The `chorus` binary's own commands, and the example config in `deploy/`.

use std::process::Command;

use chorus_core::auth::TokenAuthority;
use chorus_core::config::ChorusConfig;

#[test]
fn the_example_config_parses_validates_and_lists_every_default() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/chorus.example.toml"
    ))
    .expect("deploy/chorus.example.toml exists");
    let mut parsed = ChorusConfig::from_toml(&text, "chorus.example.toml").expect("parses");
    assert_eq!(
        parsed,
        ChorusConfig::default(),
        "the example states the defaults"
    );
    parsed.dev_mode = true;
    parsed.validate().expect("valid in dev mode");
}

#[test]
fn token_prints_a_jwt_the_server_accepts() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["token", "--user", "alice", "--data-dir"])
        .arg(data_dir.path())
        .env("CHORUS_JWT_SECRET", "a-secret-for-this-test")
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let claims = TokenAuthority::new(b"a-secret-for-this-test")
        .verify(token.trim())
        .expect("valid");
    assert_eq!(claims.sub, "alice");
}

#[test]
fn bad_config_keys_are_named_in_the_error() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let config = data_dir.path().join("bad.toml");
    std::fs::write(&config, "[limits]\nmax_frame_byte = 1\n").expect("writes");
    let output = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&config)
        .args(["token", "--user", "alice"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_frame_byte"));
}
