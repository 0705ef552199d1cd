//! Test support for Chorus's end-to-end tests: a real server (in-process on `127.0.0.1:0`, or the
//! `chorus` binary as a child process), real WebSocket clients, and an HTTP client.
//!
//! Waiting is always for a condition with a deadline (a frame, an HTTP answer), never a sleep.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chorus::Served;
use chorus_core::auth::TokenAuthority;
use chorus_core::config::ChorusConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const JWT_SECRET: &str = "chorus-test-secret-0123456789";
pub const API_KEY: &str = "chorus-test-api-key";
/// How long a test waits for one expected thing before failing.
pub const WAIT: Duration = Duration::from_secs(15);

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

/// Signs a token for `user` with the test secret.
pub fn token(user: &str, device: Option<&str>) -> String {
    TokenAuthority::new(JWT_SECRET.as_bytes())
        .issue(user, device, 3600)
        .expect("valid user")
}

/// HTTP calls against a server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// GET with a user token; returns (status, body).
    pub async fn get(&self, user: &str, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token(user, None))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// POST JSON with a bearer credential; returns (status, body).
    pub async fn post(
        &self,
        bearer: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// Business events with the test API key; returns the `results`.
    pub async fn business(&self, events: Value) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self
            .post(API_KEY, "/v1/events", &json!({ "events": events }))
            .await?;
        if status != 200 {
            bail!("POST /v1/events answered {status}: {body}");
        }
        Ok(body["results"].as_array().cloned().unwrap_or_default())
    }

    pub async fn events(
        &self,
        user: &str,
        conversation: &str,
        after_seq: u64,
    ) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after = after_seq;
        loop {
            let path =
                format!("/v1/conversations/{conversation}/events?after_seq={after}&limit=1000");
            let (status, body) = self.get(user, &path).await?;
            if status != 200 {
                bail!("GET {path} answered {status}: {body}");
            }
            let page = body["events"].as_array().cloned().unwrap_or_default();
            let Some(last) = page.last() else { break };
            after = last["seq"].as_u64().context("seq")?;
            all.extend(page);
        }
        Ok(all)
    }

    pub async fn messages(&self, user: &str, conversation: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let path =
                format!("/v1/conversations/{conversation}/messages?after_seq={after}&limit=1000");
            let (status, body) = self.get(user, &path).await?;
            if status != 200 {
                bail!("GET {path} answered {status}: {body}");
            }
            let page = body["messages"].as_array().cloned().unwrap_or_default();
            let Some(last) = page.last() else { break };
            after = last["seq"].as_u64().context("seq")?;
            all.extend(page);
        }
        Ok(all)
    }

    pub async fn search(&self, user: &str, query: &str) -> anyhow::Result<Vec<Value>> {
        let encoded: String = url_encode(query);
        let (status, body) = self
            .get(user, &format!("/v1/search?q={encoded}&limit=100"))
            .await?;
        if status != 200 {
            bail!("search answered {status}: {body}");
        }
        Ok(body["hits"].as_array().cloned().unwrap_or_default())
    }
}

/// Percent-encodes a query value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A WebSocket client session.
pub struct Client {
    pub user: String,
    pub session: String,
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while looking for another one, in arrival order.
    backlog: Vec<Value>,
}

impl Client {
    /// Connects as `user` (optionally naming the device) and waits for `welcome`.
    pub async fn connect(ws_url: &str, user: &str, device: Option<&str>) -> anyhow::Result<Client> {
        let url = format!("{ws_url}?token={}", token(user, device));
        let (stream, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await??;
        let mut client = Client {
            user: user.to_owned(),
            session: String::new(),
            stream,
            backlog: Vec::new(),
        };
        let welcome = client.expect(|frame| frame["type"] == "welcome").await?;
        assert_eq!(welcome["user"], user);
        client.session = welcome["session"].as_str().unwrap_or_default().to_owned();
        Ok(client)
    }

    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        self.stream.send(message).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, frame: Value) -> anyhow::Result<()> {
        self.send_raw(Message::text(frame.to_string())).await
    }

    /// Sends a message and returns its ack (or the error frame as `Err`).
    pub async fn send_message(
        &mut self,
        id: &str,
        conversation: &str,
        text: &str,
    ) -> anyhow::Result<Value> {
        self.send_json(
            json!({"type": "send", "id": id, "conversation": conversation, "text": text}),
        )
        .await?;
        self.outcome(id).await
    }

    /// Waits for the ack or error frame of client message `id`.
    pub async fn outcome(&mut self, id: &str) -> anyhow::Result<Value> {
        let frame = self
            .expect(|frame| {
                (frame["type"] == "ack" || frame["type"] == "error") && frame["id"] == id
            })
            .await?;
        if frame["type"] == "error" {
            return Err(anyhow!("error frame: {frame}"));
        }
        Ok(frame)
    }

    /// Next raw message from the socket (frames, close), with the deadline.
    pub async fn next_message(&mut self) -> anyhow::Result<Option<Message>> {
        match tokio::time::timeout(WAIT, self.stream.next()).await {
            Err(_) => bail!("no message within {WAIT:?}"),
            Ok(None) => Ok(None),
            Ok(Some(message)) => Ok(Some(message?)),
        }
    }

    /// The first frame (from the backlog, then the socket) that matches; others are kept.
    pub async fn expect(&mut self, matches: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        if let Some(index) = self.backlog.iter().position(&matches) {
            return Ok(self.backlog.remove(index));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "{}: no matching frame within {WAIT:?}; backlog {:?}",
                        self.user,
                        self.backlog
                    )
                })?;
            let Some(message) = message else {
                bail!("{}: connection closed", self.user)
            };
            let message = message?;
            let Message::Text(text) = message else {
                if let Message::Close(close) = message {
                    bail!("{}: closed by server: {close:?}", self.user);
                }
                continue;
            };
            let frame: Value = serde_json::from_str(&text)?;
            if matches(&frame) {
                return Ok(frame);
            }
            self.backlog.push(frame);
        }
    }

    /// Collects `count` `event` frames of `conversation`, in arrival order.
    pub async fn events(&mut self, conversation: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let conversation = conversation.to_owned();
            events.push(
                self.expect(move |frame| {
                    frame["type"] == "event" && frame["conversation"] == conversation
                })
                .await?,
            );
        }
        Ok(events)
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        self.stream.close(None).await?;
        Ok(())
    }
}

/// The `chorus` binary built beside the test executables.
pub fn chorus_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CHORUS_BIN") {
        return PathBuf::from(path);
    }
    let mut path = std::env::current_exe().expect("test executable path");
    path.pop(); // the test binary
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("chorus")
}

/// `chorus serve` as a child process.
pub struct ChildServer {
    pub child: tokio::process::Child,
    pub url: String,
}

impl ChildServer {
    /// Starts `chorus serve` on a free port with `data_dir` and waits for its "listening" line.
    /// `config_toml`, if given, is written beside the data directory and passed as `--config`.
    pub async fn start(data_dir: &Path, config_toml: Option<&str>) -> anyhow::Result<ChildServer> {
        let mut arguments = Vec::new();
        if let Some(config_toml) = config_toml {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, config_toml)?;
            arguments.extend(["--config".to_owned(), path.display().to_string()]);
        }
        arguments.extend(["serve", "--listen", "127.0.0.1:0", "--data-dir"].map(str::to_owned));
        arguments.push(data_dir.display().to_string());
        Self::spawn(&arguments, &[]).await
    }

    /// Runs `chorus <arguments>` with the test secrets and `environment`, and waits for its
    /// "… is listening on <url>" line.
    pub async fn spawn(
        arguments: &[String],
        environment: &[(&str, String)],
    ) -> anyhow::Result<ChildServer> {
        let binary = chorus_binary();
        if !binary.exists() {
            bail!(
                "{} is missing: build it first (cargo build --bin chorus)",
                binary.display()
            );
        }
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(arguments)
            .env("CHORUS_JWT_SECRET", JWT_SECRET)
            .env("CHORUS_API_KEY", API_KEY)
            .env("CHORUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in environment {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(WAIT * 2, async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, url)) = line.split_once(" is listening on ") {
                    return Ok::<_, anyhow::Error>(url.trim().to_owned());
                }
            }
            bail!("chorus {arguments:?} exited before listening")
        })
        .await??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ChildServer { child, url })
    }

    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http", "ws", 1))
    }

    /// `kill -9`.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The real Kafka broker and redis-server that `scripts/test` started, as
/// `(CHORUS_KAFKA_BOOTSTRAP, CHORUS_REDIS_URL)`. Without them a test is skipped with a notice,
/// except in CI (`CI=true`), where that is a failure.
pub fn distributed_services() -> Option<(String, String)> {
    let kafka = std::env::var("CHORUS_KAFKA_BOOTSTRAP").ok();
    let redis = std::env::var("CHORUS_REDIS_URL").ok();
    match (kafka, redis) {
        (Some(kafka), Some(redis)) => Some((kafka, redis)),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "CHORUS_KAFKA_BOOTSTRAP and CHORUS_REDIS_URL must be set in CI (scripts/test starts both)"
            )
        }
        _ => {
            eprintln!(
                "skipped: CHORUS_KAFKA_BOOTSTRAP / CHORUS_REDIS_URL not set (run ./scripts/test)"
            );
            None
        }
    }
}

/// The environment of one distributed role process: the services, a topic prefix private to
/// the test run, and the node's name.
pub fn role_environment(
    services: &(String, String),
    run: &str,
    node: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("CHORUS_KAFKA_BOOTSTRAP", services.0.clone()),
        ("CHORUS_REDIS_URL", services.1.clone()),
        ("CHORUS_TOPIC_PREFIX", format!("{run}.")),
        ("CHORUS_NODE_ID", format!("{run}-{node}")),
    ]
}
