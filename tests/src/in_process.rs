//! `chorus serve` in the test's own process, on `127.0.0.1:0` with a data directory of its own
//! and the test credentials, in dev mode.

use std::path::Path;

use chorus::Served;
use chorus_core::config::ChorusConfig;

use crate::api::Api;
use crate::credentials::{API_KEY, JWT_SECRET};

/// A config for a test server on a fresh port in `data_dir`.
pub fn test_config(data_dir: &Path) -> ChorusConfig {
    let mut config = ChorusConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        data_dir: data_dir.to_path_buf(),
        dev_mode: true,
        ..ChorusConfig::default()
    };
    config.auth.jwt_secret = JWT_SECRET.into();
    config.auth.api_key = API_KEY.into();
    config
}

/// Raises the message rate limits, for tests that send more than a burst and are not about
/// rate limiting.
pub fn generous_limits(config: &mut ChorusConfig) {
    config.limits.message_burst = 10_000;
    config.limits.user_message_burst = 10_000;
}

/// An in-process `chorus serve` with its own data directory.
pub struct TestServer {
    pub served: Served,
    pub http: reqwest::Client,
    /// Kept so the directory outlives the server.
    pub data_dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> anyhow::Result<TestServer> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ChorusConfig)) -> anyhow::Result<TestServer> {
        let data_dir = tempfile::tempdir()?;
        let served = Self::serve_in(data_dir.path(), adjust).await?;
        Ok(TestServer {
            served,
            http: reqwest::Client::new(),
            data_dir,
        })
    }

    /// Starts a server on an existing data directory.
    pub async fn serve_in(
        data_dir: &Path,
        adjust: impl FnOnce(&mut ChorusConfig),
    ) -> anyhow::Result<Served> {
        let mut config = test_config(data_dir);
        adjust(&mut config);
        chorus::serve(config).await
    }

    pub fn url(&self) -> String {
        self.served.url()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.served.addr)
    }

    pub fn api(&self) -> Api {
        Api {
            base: self.url(),
            http: self.http.clone(),
        }
    }
}
