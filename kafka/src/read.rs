//! Plain reads ([`EventLog::read`](chorus_log::EventLog::read),
//! [`EventLog::read_range`](chorus_log::EventLog::read_range)): group-less consumers from a small
//! pool (a per-process dummy `group.id` that never commits), `assign`ed to the one partition at
//! `from`, `read_committed`. A reader goes back to the pool unassigned and drained, so nothing of
//! an old assignment leaks into the next read. `read_range` stops at the partition's end (an
//! end-of-partition event under read_committed: the tail of a partition written in transactions
//! is a commit marker, not a record) and answers an error, not an empty read, when it can tell
//! neither within [`CATCH_UP_WAIT`].

use std::sync::Arc;
use std::time::Duration;

use chorus_log::{CATCH_UP_WAIT, LogError, Offset, PartitionId, Record};
use futures_util::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};

use crate::{Inner, backend};

/// Reader consumers kept for reuse.
const READER_POOL_SIZE: usize = 8;

impl Inner {
    fn take_reader(&self) -> Result<Arc<StreamConsumer<ReaderContext>>, LogError> {
        if let Some(reader) = self.readers.lock().pop() {
            return Ok(reader);
        }
        let reader: StreamConsumer<ReaderContext> = self
            .config
            .reader_config(&self.reader_group)
            .create_with_context(ReaderContext)
            .map_err(backend)?;
        Ok(Arc::new(reader))
    }

    fn return_reader(&self, reader: Arc<StreamConsumer<ReaderContext>>) {
        if reader.unassign().is_err() {
            return;
        }
        // Discard whatever the old assignment still had queued.
        for _ in 0..10_000 {
            match reader.recv().now_or_never() {
                Some(_) => {}
                None => break,
            }
        }
        let mut readers = self.readers.lock();
        if readers.len() < READER_POOL_SIZE {
            readers.push(reader);
        } else {
            drop(readers);
            // Closing may block briefly: not on the async worker.
            tokio::task::spawn_blocking(move || drop(reader));
        }
    }

    pub(crate) async fn read(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let (records, _) = self.fetch(topic, partition, from, max, wait, false).await?;
        Ok(records)
    }

    /// Reads up to `max` records from `from`, waiting up to `wait` for the first. With
    /// `stop_at_end`, returns as soon as the reader reaches the partition's end (the LSO under
    /// read_committed) without a record; the flag says whether that happened.
    async fn fetch(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        max: usize,
        wait: Duration,
        stop_at_end: bool,
    ) -> Result<(Vec<Record>, bool), LogError> {
        self.check_partition(topic, partition).await?;
        if max == 0 {
            return Ok((Vec::new(), false));
        }
        let reader = self.take_reader()?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition as i32, KafkaOffset::Offset(from as i64))
            .map_err(backend)?;
        reader.assign(&assignment).map_err(backend)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut records: Vec<Record> = Vec::new();
        let mut outcome = Ok(());
        let mut reached_end = false;
        let accept = |message: &BorrowedMessage<'_>, records: &mut Vec<Record>| {
            if message.topic() == topic
                && message.partition() == partition as i32
                && message.offset() >= from as i64
                && records
                    .last()
                    .is_none_or(|last| (message.offset() as u64) > last.offset)
            {
                records.push(to_record(message));
            }
        };
        while records.is_empty() {
            match tokio::time::timeout_at(deadline, reader.recv()).await {
                Err(_) => break,
                Ok(Ok(message)) => accept(&message, &mut records),
                Ok(Err(KafkaError::PartitionEOF(eof))) if eof == partition as i32 => {
                    if stop_at_end {
                        reached_end = true;
                        break;
                    }
                }
                Ok(Err(error)) => {
                    if is_fatal_read_error(&error) {
                        outcome = Err(backend(error));
                        break;
                    }
                    tracing::debug!(%error, topic, partition, "transient read error");
                }
            }
        }
        while outcome.is_ok() && !records.is_empty() && records.len() < max {
            match reader.recv().now_or_never() {
                Some(Ok(message)) => accept(&message, &mut records),
                Some(Err(_)) | None => break,
            }
        }
        records.truncate(max);
        self.return_reader(reader);
        outcome.map(|()| (records, reached_end))
    }

    /// Stops at the partition end (an end-of-partition event under read_committed) instead of
    /// waiting: the tail of a partition written in transactions is a commit marker, not a record.
    pub(crate) async fn read_range(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
        from: Offset,
        end: Offset,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        if from >= end {
            return Ok(Vec::new());
        }
        let (mut records, reached_end) = self
            .fetch(topic, partition, from, max, CATCH_UP_WAIT, true)
            .await?;
        if records.is_empty() && !reached_end {
            return Err(LogError::Backend(format!(
                "no record of {topic}/{partition} in [{from}, {end}) and no partition end within {CATCH_UP_WAIT:?}"
            )));
        }
        records.retain(|record| record.offset < end);
        Ok(records)
    }
}

/// The context of plain readers: end-of-partition notices that reach the client's error
/// callback (after a reader went back to the pool) are expected, not errors.
pub(crate) struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::trace!(reason, "reader reached a partition end");
        } else {
            tracing::error!(%error, reason, "librdkafka reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

fn is_fatal_read_error(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
        ) | KafkaError::MessageConsumptionFatal(_)
    )
}

pub(crate) fn to_record(message: &BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: message.partition() as PartitionId,
        offset: message.offset() as Offset,
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}
