//! A user who keeps talking through failures the way a real client does (the Rust twin of the
//! web client's `chorus-client.js`): a message is resent under the same client id until it is
//! acknowledged, a lost connection is reopened with backoff, and every `event` received live is
//! recorded, so a test can tell live deliveries from gap fills. A send gives up only after
//! [`SEND_DEADLINE`], and only a refusal other than `unavailable` or `rate_limited` fails it.
//! How each connection ended and every `error` frame are recorded too, so a test can tell what
//! the user saw; after a close with 1012 (the node restarts) it reconnects at once, as the web
//! client does.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use crate::websocket::Client;

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
    /// How each lost connection ended: the server's close code, `None` without a close frame.
    pub closes: Vec<Option<u16>>,
    /// Connection attempts that failed.
    pub failed_connects: usize,
    /// Every `error` frame received.
    pub errors: Vec<Value>,
}

/// The close of a node that restarts: reconnect at once (docs/protocol.md).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

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
            closes: Vec::new(),
            failed_connects: 0,
            errors: Vec::new(),
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
            let restarted = self.closes.last() == Some(&Some(CLOSE_SERVICE_RESTART));
            if attempt > 0 {
                self.resends += 1;
            }
            if attempt > 0 && !(restarted && self.client.is_none()) {
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
                    Err(_) => {
                        self.failed_connects += 1;
                        continue;
                    }
                }
            }
            let Some(client) = self.client.as_mut() else {
                continue;
            };
            if client.send_json(frame.clone()).await.is_err() {
                self.lost();
                continue;
            }
            match self.await_outcome(id, ACK_PATIENCE).await {
                Outcome::Acked(seq) => {
                    self.acked.insert(id.to_owned(), seq);
                    return Ok(seq);
                }
                Outcome::Retry => {}
                Outcome::Lost => self.lost(),
                Outcome::Refused(error) => bail!("{}: {id} refused: {error}", self.user),
            }
        }
    }

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
                    self.errors.push(frame.clone());
                    let code = frame["code"].as_str().unwrap_or_default();
                    if code == "unavailable" || code == "rate_limited" {
                        return Outcome::Retry;
                    }
                    return Outcome::Refused(frame.to_string());
                }
                Some("error") => self.errors.push(frame),
                _ => {}
            }
        }
    }

    /// The connection is gone: records how it ended.
    fn lost(&mut self) {
        if let Some(client) = self.client.take() {
            self.closes.push(client.closed_with);
        }
    }

    /// Reads whatever arrives within `patience`, recording events (used after the last send).
    pub async fn drain(&mut self, patience: Duration) {
        let until = tokio::time::Instant::now() + patience;
        while let Some(client) = self.client.as_mut() {
            match client.next_frame(until).await {
                Ok(Some(frame)) if frame["type"] == "event" => self.record(&frame),
                Ok(Some(frame)) if frame["type"] == "error" => self.errors.push(frame),
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => return self.lost(),
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
