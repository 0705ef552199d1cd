//! The push stage: delivers the `notifications` routers write for offline members
//! (docs/protocol.md, "Offline push") to a business system's webhook.
//!
//! One consumer group (`<prefix>push`) on `notifications`; each member of it POSTs the records
//! of its partitions in batches of at most `push.batch_records`:
//! `{"notifications":[{…}, …]}` (each as routers wrote it, with its `id`). Guarantees:
//! - a record's position is committed only once the webhook accepted its batch (a 2xx) or the
//!   batch went to `notifications-dead-letter`: a push role killed at any point redelivers from
//!   the last batch not acknowledged, and never a batch the webhook acknowledged unless it died
//!   between that answer and the commit right after it (the `id`s let the webhook drop it);
//! - a failed call (no answer within `push.timeout_ms`, a non-2xx) is tried again after a wait
//!   that doubles from `push.backoff_initial_ms` up to `push.backoff_max_ms`; after
//!   `push.max_attempts` calls the batch goes to `notifications-dead-letter` with its reason;
//! - a batch the webhook refuses itself (a 4xx other than 408 and 429) is split in halves, each
//!   handed over again, until what is refused is one notification: only that one is
//!   dead-lettered, at once (a refused notification costs about 2·log2(`push.batch_records`)
//!   calls, and its batch-mates are delivered);
//! - after `push.breaker_failures` failures in a row the webhook's breaker opens: no call for
//!   `push.breaker_open_ms` (consumption waits; that wait is not an attempt), then one call
//!   tries it.
//!
//! Metrics: `chorus_push_deliveries_total{outcome}` (`delivered`, `retried`, `dead_lettered`)
//! and the breaker's `chorus_breaker_state{breaker="push_webhook"}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::breaker::{Breaker, BreakerError};
use chorus_core::config::{PushSection, Topics};
use chorus_core::metrics::Metrics;
use chorus_log::{
    Consumer, EventLog, LogError, NewRecord, PartitionId, PollEvent, Record, StartFrom,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long one poll waits for records.
const POLL_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("event log: {0}")]
    Log(#[from] LogError),
}

/// Why a call did not deliver a batch.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("calling the webhook: {0}")]
    Call(#[from] reqwest::Error),
    #[error("the webhook answered HTTP {0}")]
    Status(u16),
}

impl CallError {
    /// Whether the webhook refused this batch itself (trying it again cannot help).
    fn is_refusal(&self) -> bool {
        matches!(self, CallError::Status(status)
            if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// What became of one batch.
enum HandOver {
    Delivered,
    /// The webhook refused the batch itself: one of its notifications, or all.
    Refused(String),
    /// Every attempt failed.
    DeadLetter(String),
    /// The node is stopping: nothing is committed, the next owner delivers the batch.
    Stopped,
}

/// What the push stage reads from the configuration.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub push: PushSection,
    pub topics: Topics,
    /// The consumer group (`<prefix>push`).
    pub group: String,
}

impl PushSettings {
    pub fn new(push: PushSection, topic_prefix: &str) -> PushSettings {
        PushSettings {
            push,
            topics: Topics::with_prefix(topic_prefix),
            group: format!("{topic_prefix}push"),
        }
    }
}

pub struct Pusher {
    log: Arc<dyn EventLog>,
    settings: PushSettings,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    breaker: Breaker,
}

impl Pusher {
    pub fn new(log: Arc<dyn EventLog>, settings: PushSettings, metrics: Arc<Metrics>) -> Pusher {
        let push = &settings.push;
        let breaker = Breaker::new(
            "push_webhook",
            push.breaker_failures,
            Duration::from_millis(push.breaker_open_ms),
            metrics.clone(),
        );
        Pusher {
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(push.timeout_ms))
                .build()
                .unwrap_or_default(),
            log,
            settings,
            metrics,
            breaker,
        }
    }

    /// Delivers until `shutdown`; an error of the log stops it (nothing unacknowledged is
    /// committed, so the next owner of the partitions takes over where it stopped).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PushError> {
        let topics = &self.settings.topics;
        self.log.ensure_topic(&topics.notifications).await?;
        self.log
            .ensure_topic(&topics.notifications_dead_letter)
            .await?;
        let mut consumer = self
            .log
            .consumer(
                &self.settings.group,
                &topics.notifications,
                StartFrom::Earliest,
            )
            .await?;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = consumer.poll(self.settings.push.batch_records, POLL_WAIT) => event?,
            };
            if let PollEvent::Records(records) = event
                && !self.deliver(consumer.as_mut(), records, &shutdown).await?
            {
                return Ok(());
            }
        }
    }

    /// Hands `records` over batch by batch, committing each once it is delivered or
    /// dead-lettered; `false` when stopped midway.
    async fn deliver(
        &self,
        consumer: &mut dyn Consumer,
        records: Vec<Record>,
        shutdown: &CancellationToken,
    ) -> Result<bool, PushError> {
        for batch in records.chunks(self.settings.push.batch_records) {
            // a refused batch is split in halves until the refused notifications are alone:
            // the rest are delivered; parts are settled in the batch's order, so committing
            // each part's offsets never passes a record not yet settled
            let mut parts = vec![batch];
            while let Some(part) = parts.pop() {
                let reason = match self.hand_over(part, shutdown).await {
                    HandOver::Stopped => return Ok(false),
                    HandOver::Delivered => None,
                    HandOver::Refused(_) if part.len() > 1 => {
                        let (first, second) = part.split_at(part.len() / 2);
                        parts.push(second);
                        parts.push(first);
                        continue;
                    }
                    HandOver::Refused(reason) | HandOver::DeadLetter(reason) => Some(reason),
                };
                if let Some(reason) = reason {
                    self.dead_letter(part, &reason).await?;
                }
                let mut next: BTreeMap<PartitionId, u64> = BTreeMap::new();
                for record in part {
                    let offset = next.entry(record.partition).or_default();
                    *offset = (*offset).max(record.offset + 1);
                }
                let offsets: Vec<(PartitionId, u64)> = next.into_iter().collect();
                consumer.commit(&offsets).await?;
            }
        }
        Ok(true)
    }

    /// Writes `records` to `notifications-dead-letter` with the reason and where they were.
    async fn dead_letter(&self, records: &[Record], reason: &str) -> Result<(), PushError> {
        let dead: Vec<NewRecord> = records
            .iter()
            .map(|record| {
                NewRecord::new(record.key.clone(), record.value.clone())
                    .with_header("reason", reason)
                    .with_header("source_partition", record.partition.to_string())
                    .with_header("source_offset", record.offset.to_string())
            })
            .collect();
        self.log
            .append(&self.settings.topics.notifications_dead_letter, dead)
            .await?;
        self.count("dead_lettered", records.len());
        Ok(())
    }

    /// Calls the webhook until it accepts the batch, refuses it, or the attempts run out.
    async fn hand_over(&self, batch: &[Record], shutdown: &CancellationToken) -> HandOver {
        let notifications: Vec<Value> = batch
            .iter()
            .map(|record| {
                serde_json::from_slice(&record.value).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&record.value).into_owned())
                })
            })
            .collect();
        let body = json!({ "notifications": notifications });
        let push = &self.settings.push;
        let mut wait = Duration::from_millis(push.backoff_initial_ms);
        let mut attempts = 0;
        loop {
            let pause = match self.breaker.call(self.post(&body)).await {
                Ok(()) => {
                    self.count("delivered", batch.len());
                    return HandOver::Delivered;
                }
                // open: wait for the breaker, without counting an attempt
                Err(BreakerError::Open(_)) => Duration::from_millis(push.breaker_open_ms),
                Err(BreakerError::Inner(error)) => {
                    attempts += 1;
                    if error.is_refusal() {
                        tracing::warn!(%error, records = batch.len(), "notifications refused");
                        return HandOver::Refused(format!("{error} (refused)"));
                    }
                    if attempts >= push.max_attempts {
                        tracing::warn!(%error, attempts, "notifications dead-lettered");
                        return HandOver::DeadLetter(format!("{error} (after {attempts} calls)"));
                    }
                    tracing::debug!(%error, attempts, "webhook call failed; trying again");
                    self.count("retried", batch.len());
                    let pause = wait;
                    wait = (wait * 2).min(Duration::from_millis(push.backoff_max_ms));
                    pause
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return HandOver::Stopped,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn post(&self, body: &Value) -> Result<(), CallError> {
        let response = self
            .client
            .post(&self.settings.push.webhook_url)
            .json(body)
            .send()
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(CallError::Status(response.status().as_u16()))
        }
    }

    fn count(&self, outcome: &str, records: usize) {
        self.metrics
            .push_deliveries
            .with_label_values(&[outcome])
            .inc_by(records as u64);
    }
}
