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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
        Self::spawn_announcing(arguments, environment, " is listening on ").await
    }

    /// Like [`ChildServer::spawn`], but returns as soon as the process took its address
    /// ("… is starting on <url>"), before it is ready: for roles that wait for Kafka.
    pub async fn spawn_starting(
        arguments: &[String],
        environment: &[(&str, String)],
    ) -> anyhow::Result<ChildServer> {
        Self::spawn_announcing(arguments, environment, " is starting on ").await
    }

    /// Runs `chorus <arguments>` and waits for the line with `announcement` followed by its url.
    async fn spawn_announcing(
        arguments: &[String],
        environment: &[(&str, String)],
        announcement: &str,
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
                if let Some((_, rest)) = line.split_once(announcement) {
                    let url = rest.split_whitespace().next().context("a url")?;
                    return Ok::<_, anyhow::Error>(url.to_owned());
                }
            }
            bail!("chorus {arguments:?} exited before saying \"{announcement}<url>\"")
        })
        .await??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ChildServer { child, url })
    }

    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http", "ws", 1))
    }

    /// The address the process listens on.
    pub fn addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.url.trim_start_matches("http://").parse()?)
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

/// `CHORUS_CLICKHOUSE_URL`, which `scripts/test` sets once it installed the ClickHouse harness
/// (the engine the tests start with [`OwnClickHouse`]). Without it a test is skipped with a
/// notice, except in CI (`CI=true`), where that is a failure.
pub fn clickhouse_service() -> Option<String> {
    match std::env::var("CHORUS_CLICKHOUSE_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CHORUS_CLICKHOUSE_URL must be set in CI (scripts/test installs the harness)")
        }
        Err(_) => {
            eprintln!("skipped: CHORUS_CLICKHOUSE_URL is not set (run ./scripts/test)");
            None
        }
    }
}

/// The environment of one distributed role process: the services, a topic prefix private to
/// the test run, and the node's name. History stays in each node's own store (an empty
/// `CHORUS_CLICKHOUSE_URL` overrides the one `scripts/test` exports) unless the test adds a
/// ClickHouse URL after these.
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
        ("CHORUS_CLICKHOUSE_URL", String::new()),
        (
            "CHORUS_LOG",
            std::env::var("CHORUS_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
}

/// The arguments of one distributed role process: `--config <config> <role> --listen
/// 127.0.0.1:<port>` (port 0: any free one), and `--data-dir <data_dir>` for the roles that keep
/// files (projector, search).
pub fn role_arguments(config: &Path, role: &str, port: u16, data_dir: &Path) -> Vec<String> {
    let mut arguments = vec![
        "--config".to_owned(),
        config.display().to_string(),
        role.to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    if role == "projector" || role == "search" {
        arguments.extend(["--data-dir".to_owned(), data_dir.display().to_string()]);
    }
    arguments
}

/// A user who keeps talking through failures the way a real client does: it resends a message
/// with the same client id until it is acknowledged, reconnects (with backoff) when its node
/// goes away, and remembers every `event` it received live, so a test can tell live deliveries
/// from gap fills.
pub struct Participant {
    pub user: String,
    /// Where to (re)connect; a test may point it at a restarted node.
    pub node: std::sync::Arc<parking_lot::Mutex<String>>,
    client: Option<Client>,
    /// Seqs of the `event` frames received live, per conversation.
    pub live: std::collections::HashMap<String, std::collections::BTreeSet<u64>>,
    /// The seq each acknowledged client message id got.
    pub acked: std::collections::BTreeMap<String, u64>,
    /// Connections opened after the first.
    pub reconnects: usize,
    /// Sends repeated after a lost connection or a missing ack.
    pub resends: usize,
}

/// How long a participant waits for an ack before resending (longer than a router takeover:
/// the consumer group's session timeout plus recovery).
pub const ACK_PATIENCE: Duration = Duration::from_secs(20);
/// How long a participant keeps trying to get one message acknowledged before the test fails.
pub const SEND_DEADLINE: Duration = Duration::from_secs(180);

impl Participant {
    pub fn new(user: &str, node: std::sync::Arc<parking_lot::Mutex<String>>) -> Participant {
        Participant {
            user: user.to_owned(),
            node,
            client: None,
            live: Default::default(),
            acked: Default::default(),
            reconnects: 0,
            resends: 0,
        }
    }

    /// Connects now (the test's starting point); later connections happen on demand.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        let url = self.node.lock().clone();
        self.client = Some(Client::connect(&url, &self.user, None).await?);
        Ok(())
    }

    /// Sends a message and returns its seq, resending with the same id until it is acknowledged.
    /// An error frame other than `unavailable` or `rate_limited` fails the send.
    pub async fn send(&mut self, id: &str, conversation: &str, text: &str) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + SEND_DEADLINE;
        let frame = json!({"type": "send", "id": id, "conversation": conversation, "text": text});
        let mut attempt = 0u32;
        loop {
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: {id} was not acknowledged within {SEND_DEADLINE:?}",
                    self.user
                );
            }
            if attempt > 0 {
                self.resends += 1;
                // a client's retry backoff; the condition (an ack) is awaited below
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
            }
            attempt += 1;
            if self.client.is_none() {
                let url = self.node.lock().clone();
                match Client::connect(&url, &self.user, None).await {
                    Ok(client) => {
                        self.client = Some(client);
                        self.reconnects += 1;
                    }
                    Err(_) => continue,
                }
            }
            let Some(client) = self.client.as_mut() else {
                continue;
            };
            if client.send_json(frame.clone()).await.is_err() {
                self.client = None;
                continue;
            }
            match self.await_outcome(id, ACK_PATIENCE).await {
                Outcome::Acked(seq) => {
                    self.acked.insert(id.to_owned(), seq);
                    return Ok(seq);
                }
                Outcome::Retry => {}
                Outcome::Lost => self.client = None,
                Outcome::Refused(error) => bail!("{}: {id} refused: {error}", self.user),
            }
        }
    }

    /// Reads frames until the outcome of `id` arrives, recording events on the way.
    async fn await_outcome(&mut self, id: &str, patience: Duration) -> Outcome {
        let until = tokio::time::Instant::now() + patience;
        loop {
            let Some(client) = self.client.as_mut() else {
                return Outcome::Lost;
            };
            let frame = match client.next_frame(until).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Outcome::Retry, // patience ran out: resend
                Err(_) => return Outcome::Lost,
            };
            match frame["type"].as_str() {
                Some("event") => self.record(&frame),
                Some("ack") if frame["id"] == id => {
                    return match frame["seq"].as_u64() {
                        Some(seq) => Outcome::Acked(seq),
                        None => Outcome::Refused(format!("ack without seq: {frame}")),
                    };
                }
                Some("error") if frame["id"] == id => {
                    let code = frame["code"].as_str().unwrap_or_default();
                    if code == "unavailable" || code == "rate_limited" {
                        return Outcome::Retry;
                    }
                    return Outcome::Refused(frame.to_string());
                }
                _ => {}
            }
        }
    }

    /// Reads whatever arrives within `patience`, recording events (used after the last send).
    pub async fn drain(&mut self, patience: Duration) {
        let until = tokio::time::Instant::now() + patience;
        while let Some(client) = self.client.as_mut() {
            match client.next_frame(until).await {
                Ok(Some(frame)) if frame["type"] == "event" => self.record(&frame),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn record(&mut self, frame: &Value) {
        if let (Some(conversation), Some(seq)) =
            (frame["conversation"].as_str(), frame["seq"].as_u64())
        {
            self.live
                .entry(conversation.to_owned())
                .or_default()
                .insert(seq);
        }
    }
}

enum Outcome {
    Acked(u64),
    /// No answer in time, or a transient refusal: resend on the same connection.
    Retry,
    /// The connection is gone: reconnect, then resend.
    Lost,
    Refused(String),
}

impl Client {
    /// The next frame (backlog first) arriving before `until`; `None` when the time is up.
    pub async fn next_frame(
        &mut self,
        until: tokio::time::Instant,
    ) -> anyhow::Result<Option<Value>> {
        if !self.backlog.is_empty() {
            return Ok(Some(self.backlog.remove(0)));
        }
        loop {
            let message = match tokio::time::timeout_at(until, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("{}: connection closed", self.user),
                Ok(Some(message)) => message?,
            };
            match message {
                Message::Text(text) => return Ok(Some(serde_json::from_str(&text)?)),
                Message::Close(close) => bail!("{}: closed by server: {close:?}", self.user),
                _ => {}
            }
        }
    }
}

impl Participant {
    /// Reads frames until the event `seq` of `conversation` was received live, or `patience`
    /// runs out (then fails).
    pub async fn await_live(
        &mut self,
        conversation: &str,
        seq: u64,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + patience;
        loop {
            if self
                .live
                .get(conversation)
                .is_some_and(|seqs| seqs.contains(&seq))
            {
                return Ok(());
            }
            let Some(client) = self.client.as_mut() else {
                bail!("{}: not connected", self.user);
            };
            match client.next_frame(until).await? {
                Some(frame) if frame["type"] == "event" => self.record(&frame),
                Some(_) => {}
                None => bail!(
                    "{}: event {seq} of {conversation} did not arrive live within {patience:?}",
                    self.user
                ),
            }
        }
    }
}

/// A redis-server of the test's own on `port` (no persistence), so a test can stop it and start
/// an empty one again without disturbing other tests.
pub struct OwnRedis {
    child: tokio::process::Child,
}

impl OwnRedis {
    pub async fn start(port: u16) -> anyhow::Result<OwnRedis> {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server is installed (scripts/services/redis installs it)")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                bail!("redis-server on port {port} did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(OwnRedis { child })
    }

    /// `kill -9`: the data is gone with it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a test's own server).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The value of one Prometheus sample in a `/metrics` text, e.g.
/// `metric(text, "chorus_breaker_transitions_total", &[("breaker", "redis"), ("state", "open")])`;
/// 0 when absent. Labels must all match (order-independent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `GET <base>/metrics` as text.
pub async fn metrics_text(base: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?)
}

/// How long a node under a flood of slow clients may take to answer `/health`.
pub const PROMPT_ANSWER: Duration = Duration::from_secs(5);

/// The status of `GET <base>/health`, which must answer within [`PROMPT_ANSWER`].
pub async fn health_status(base: &str) -> anyhow::Result<u16> {
    let response =
        tokio::time::timeout(PROMPT_ANSWER, reqwest::get(format!("{base}/health"))).await??;
    Ok(response.status().as_u16())
}

/// A request line and a header, without the blank line that would end the head.
const PARTIAL_REQUEST_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: chorus\r\n";
/// A partial request head that stops in the middle of a header line.
const UNFINISHED_HEADER_LINE: &[u8] = b"GET /health HTTP/1.1\r\nHost: chorus\r\nX-Slow: ";

/// Opens `count` connections to `address` (each within [`PROMPT_ANSWER`]), each sending a
/// partial request head that stops in the middle of a header line, and keeps them open. A write
/// refused by a node that already closed the connection does not stop the flood.
pub async fn open_partial_requests(
    address: std::net::SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    let mut flood = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = tokio::time::timeout(PROMPT_ANSWER, TcpStream::connect(address)).await??;
        let _ = stream.write_all(UNFINISHED_HEADER_LINE).await;
        flood.push(stream);
    }
    Ok(flood)
}

/// Sends a partial request head to `address` and returns how long the node took to close the
/// connection; fails if it is still open after `limit`.
pub async fn partial_head_closed_after(
    address: std::net::SocketAddr,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(PARTIAL_REQUEST_HEAD).await?;
    let started = tokio::time::Instant::now();
    read_until_closed(&mut stream, limit).await?;
    Ok(started.elapsed())
}

/// Reads until the server closes the connection; returns what it sent. Fails if it is still open
/// after `limit`.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> anyhow::Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => bail!(
                "the connection is still open after {limit:?} (received {:?})",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(received),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

/// The ClickHouse test harness (`scripts/services/clickhouse_http.py`, the real engine through
/// chdb) as a child process of the test's own, on `port` with its data in `data`, so a test can
/// stop it and start it again without disturbing other tests. Killed on drop.
pub struct OwnClickHouse {
    child: tokio::process::Child,
}

impl OwnClickHouse {
    pub async fn start(port: u16, data: &Path) -> anyhow::Result<OwnClickHouse> {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/services/clickhouse_http.py"
        );
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("python3 runs the harness (scripts/services/clickhouse installs chdb)")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(WAIT * 4, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("listening on") {
                    return Ok(());
                }
            }
            bail!("the ClickHouse harness exited before listening")
        })
        .await??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(OwnClickHouse { child })
    }

    /// `kill -9`; the data folder stays.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
