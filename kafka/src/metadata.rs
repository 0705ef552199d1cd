//! Topics and offsets: partition counts (cached once a topic is ready), topic creation with the
//! configured partitions and replication factor and the topic's [`TopicSettings`], and the last stable offset (LSO), the
//! read_committed high watermark that is [`EventLog::end_offset`](chorus_log::EventLog::end_offset).
//! A topic counts as ready only once every partition's leader answers offset requests, so the
//! first append or read after `ensure_topic` does not race leader election; requests that fail
//! while leadership settles are retried within [`REQUEST_TIMEOUT`]. A metadata request that
//! fails says why a broker connection last failed, if one did ([`MetaContext`]): refused SASL
//! credentials or an untrusted certificate show up in the error, not only in the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_log::{LogError, Offset, PartitionId, TopicSettings};
use parking_lot::Mutex;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;

use crate::config::REQUEST_TIMEOUT;
use crate::{Inner, backend, join_error};

/// Longest `ensure_topic` waits for a created topic to show up with leaders.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Inner {
    /// Partition count from a fresh metadata request; `None` when the topic does not exist.
    /// `Some(0)` means the topic exists but not every partition has a leader yet.
    async fn fetch_partition_count(self: &Arc<Self>, topic: &str) -> Result<Option<u32>, LogError> {
        let inner = Arc::clone(self);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = inner
                .meta
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(|error| {
                    inner.serve_meta_events();
                    match inner.meta.context().recent_connection_failure() {
                        Some(failure) => LogError::backend_failure_while(
                            format!("metadata of {topic} (the client's last error: {failure})"),
                            error,
                        ),
                        None => backend(error),
                    }
                })?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Ok(None);
            };
            match found.error() {
                None => {}
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                | Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) => return Ok(None),
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE) => return Ok(Some(0)),
                Some(other) => {
                    return Err(LogError::backend_failure_while(
                        format!("metadata of {topic}"),
                        RDKafkaErrorCode::from(other),
                    ));
                }
            }
            let partitions = found.partitions();
            if partitions.is_empty() {
                return Ok(None);
            }
            let ready = partitions
                .iter()
                .all(|partition| partition.leader() >= 0 && partition.error().is_none());
            Ok(Some(if ready { partitions.len() as u32 } else { 0 }))
        })
        .await
        .map_err(join_error)?
    }

    /// The topic's partition count, cached once known; waits for a topic that exists but
    /// has no leaders yet.
    pub(crate) async fn partition_count(self: &Arc<Self>, topic: &str) -> Result<u32, LogError> {
        if let Some(count) = self.partitions.lock().get(topic) {
            return Ok(*count);
        }
        match self.fetch_partition_count(topic).await? {
            None => Err(LogError::UnknownTopic(topic.to_owned())),
            Some(0) => {
                // Exists but not ready yet: wait for leaders like ensure_topic does.
                self.wait_for_topic(topic).await
            }
            Some(count) => {
                self.partitions.lock().insert(topic.to_owned(), count);
                Ok(count)
            }
        }
    }

    async fn wait_for_topic(self: &Arc<Self>, topic: &str) -> Result<u32, LogError> {
        let deadline = tokio::time::Instant::now() + TOPIC_READY_TIMEOUT;
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.fetch_partition_count(topic).await? {
                Some(count) if count > 0 && self.leaders_answer(topic, count).await => {
                    self.partitions.lock().insert(topic.to_owned(), count);
                    return Ok(count);
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(LogError::Backend(format!(
                        "topic {topic} did not become ready within {TOPIC_READY_TIMEOUT:?}"
                    )));
                }
                _ => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Whether every partition's leader already serves offset requests (metadata shows a new
    /// topic's leaders slightly before they do).
    async fn leaders_answer(self: &Arc<Self>, topic: &str, count: u32) -> bool {
        let inner = Arc::clone(self);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            (0..count).all(|partition| {
                inner
                    .meta
                    .fetch_watermarks(&topic, partition as i32, REQUEST_TIMEOUT)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    /// The read_committed high watermark (LSO), retrying while leadership settles.
    pub(crate) async fn end_offset(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Offset, LogError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let mut backoff = Duration::from_millis(10);
        loop {
            let inner = Arc::clone(self);
            let name = topic.to_owned();
            let outcome = tokio::task::spawn_blocking(move || {
                inner
                    .meta
                    .fetch_watermarks(&name, partition as i32, REQUEST_TIMEOUT)
            })
            .await
            .map_err(join_error)?;
            match outcome {
                Ok((_, high)) => return Ok(high.max(0) as Offset),
                Err(error) if is_retriable(&error) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, topic, partition, "end offset retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(error) => return Err(backend(error)),
            }
        }
    }

    /// The LSO of each of `partitions` in one `ListOffsets` request per leader (the latest
    /// offset of a `read_committed` client); a partition that request did not answer is asked
    /// on its own, as [`Inner::end_offset`] does, and left out if that fails too.
    pub(crate) async fn end_offsets(
        self: &Arc<Self>,
        topic: &str,
        partitions: &[PartitionId],
    ) -> BTreeMap<PartitionId, Offset> {
        let Ok(count) = self.partition_count(topic).await else {
            return BTreeMap::new();
        };
        let asked: Vec<PartitionId> = partitions
            .iter()
            .copied()
            .filter(|partition| *partition < count)
            .collect();
        let inner = Arc::clone(self);
        let name = topic.to_owned();
        let request = asked.clone();
        let answered = tokio::task::spawn_blocking(move || {
            let mut latest = TopicPartitionList::new();
            for partition in &request {
                // the latest offset is asked as the "timestamp" -1
                latest
                    .add_partition_offset(&name, *partition as i32, rdkafka::Offset::End)
                    .ok()?;
            }
            inner.meta.offsets_for_times(latest, REQUEST_TIMEOUT).ok()
        })
        .await
        .ok()
        .flatten();
        let mut ends = BTreeMap::new();
        if let Some(answered) = answered {
            for element in answered.elements() {
                if let (Ok(()), rdkafka::Offset::Offset(end)) = (element.error(), element.offset())
                {
                    ends.insert(element.partition() as PartitionId, end.max(0) as Offset);
                }
            }
        }
        let alone: Vec<PartitionId> = asked
            .into_iter()
            .filter(|partition| !ends.contains_key(partition))
            .collect();
        if !alone.is_empty() {
            tracing::debug!(topic, ?alone, "end offsets asked partition by partition");
            self.end_offsets_alone
                .fetch_add(alone.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        for partition in alone {
            if let Ok(end) = self.end_offset(topic, partition).await {
                ends.insert(partition, end);
            }
        }
        ends
    }

    /// The topic's partition count, or `BadPartition` when `partition` is not below it.
    pub(crate) async fn check_partition(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
    ) -> Result<u32, LogError> {
        let count = self.partition_count(topic).await?;
        if partition >= count {
            return Err(LogError::BadPartition {
                topic: topic.to_owned(),
                partition,
            });
        }
        Ok(count)
    }

    /// Finds the topic, or creates it with the configured partitions and replication factor
    /// and `settings` (`retention.ms`, `cleanup.policy`), then waits until every partition's
    /// leader answers. An existing topic keeps the configs it has: an operator may have tuned
    /// them, and altering configs behind their back would undo that; the adapter only says so.
    pub(crate) async fn ensure_topic(
        self: &Arc<Self>,
        topic: &str,
        settings: TopicSettings,
    ) -> Result<u32, LogError> {
        if let Some(count) = self.partitions.lock().get(topic) {
            return Ok(*count);
        }
        if let Some(count) = self.fetch_partition_count(topic).await? {
            if settings != TopicSettings::default() {
                tracing::info!(
                    topic,
                    ?settings,
                    "topic exists; its configs are left as they are"
                );
            }
            if count > 0 {
                self.partitions.lock().insert(topic.to_owned(), count);
                return Ok(count);
            }
            return self.wait_for_topic(topic).await;
        }
        let retention_ms = settings
            .retention
            .map(|retention| retention.as_millis().max(1).to_string());
        let mut new_topic = NewTopic::new(
            topic,
            self.config.partitions as i32,
            TopicReplication::Fixed(i32::from(self.config.replication_factor)),
        );
        if let Some(retention_ms) = &retention_ms {
            new_topic = new_topic.set("retention.ms", retention_ms);
        }
        if settings.compacted {
            new_topic = new_topic.set("cleanup.policy", "compact");
        }
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(backend)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::backend_failure_while(
                        format!("create topic {name}"),
                        code,
                    ));
                }
            }
        }
        self.wait_for_topic(topic).await
    }
}

/// Errors of metadata-level requests that go away once leadership settles.
fn is_retriable(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OffsetNotAvailable
                | RDKafkaErrorCode::FencedLeaderEpoch
                | RDKafkaErrorCode::UnknownLeaderEpoch
        )
    )
}

/// How long a broker connection failure explains a failed metadata request: one request's time
/// and some, so a failure long since healed is not blamed.
const CONNECTION_FAILURE_RELEVANCE: Duration = Duration::from_secs(30);

/// Most events one [`Inner::serve_meta_events`] takes off the metadata client's queue.
const META_EVENTS_PER_SERVE: usize = 1024;

/// The context of the metadata client, the first client every operation asks (partition
/// counts): it keeps the reason of librdkafka's last client error, why a broker connection
/// failed (`SASL authentication error: …`, `SSL handshake failed: … certificate verify failed`,
/// `Connection refused`; not the "all brokers are down" that sums them up), which the failed
/// request itself does not carry (it only times out or
/// says "broker transport failure"). librdkafka puts such errors (and its log lines) on the
/// client's main queue, which [`Inner::serve_meta_events`] serves.
#[derive(Default)]
pub(crate) struct MetaContext {
    /// When the last client error came, and its reason.
    last_connection_failure: Mutex<Option<(Instant, String)>>,
}

impl MetaContext {
    /// The reason of a client error that came within [`CONNECTION_FAILURE_RELEVANCE`], if one did.
    fn recent_connection_failure(&self) -> Option<String> {
        self.last_connection_failure
            .lock()
            .as_ref()
            .filter(|(when, _)| when.elapsed() < CONNECTION_FAILURE_RELEVANCE)
            .map(|(_, reason)| reason.clone())
    }
}

impl ClientContext for MetaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(%error, reason, "librdkafka metadata client error");
        // "n/m brokers are down" sums failures up; the failure itself came before it
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.last_connection_failure.lock() = Some((Instant::now(), reason.to_owned()));
        }
    }
}

impl ConsumerContext for MetaContext {}

impl Inner {
    /// Serves what waits on the metadata client's queue (its errors reach [`MetaContext`], its
    /// log lines the log), without waiting; nothing else polls that group-less client.
    fn serve_meta_events(&self) {
        for _ in 0..META_EVENTS_PER_SERVE {
            // error events come back as `Err` after the context saw them; nothing else arrives
            let _ = self.meta.poll(Duration::ZERO);
        }
    }
}
