//! The fenced writer ([`EventLog::fenced_writer`](chorus_log::EventLog::fenced_writer)): one
//! transactional producer per partition, `transactional.id` `chorus-writer-<topic>-<partition>`,
//! the same in every process (topic names carry the deployment's prefix). Opening one calls
//! `init_transactions`, which bumps the producer epoch: that fences the previous holder of the id
//! (in any process) and aborts its open transaction. Each append is one transaction and returns
//! once the last stable offset passed its records, so they are visible to every read_committed
//! reader when it returns. A writer that was fenced fails with [`LogError::Fenced`] and nothing of
//! its open transaction becomes visible. A commit that times out is resumed (librdkafka marks the
//! timeout retriable: the commit goes on in the background), within [`COMMIT_DEADLINE`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chorus_log::{FencedWriter, LogError, NewRecord, Offset, PartitionId};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use crate::produce::produce_with;
use crate::{Inner, backend, join_error};

/// Longest `init_transactions`, `abort_transaction` or one `commit_transaction` call may take.
const TRANSACTION_REQUEST: Duration = Duration::from_secs(30);
/// Longest a commit is resumed after retriable failures. Two transaction timeouts
/// (`transaction.timeout.ms`, 30 s): by then the coordinator has aborted a transaction the
/// producer could not finish, so waiting longer cannot end in a commit.
const COMMIT_DEADLINE: Duration = Duration::from_secs(60);
/// Pause before resuming a commit that failed fast with a retriable error.
const COMMIT_RETRY_BACKOFF: Duration = Duration::from_millis(10);

impl Inner {
    /// Opens the fenced writer of `topic`/`partition`; see the module docs.
    pub(crate) async fn open_fenced_writer(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Box<dyn FencedWriter>, LogError> {
        self.check_partition(topic, partition).await?;
        let producer: FutureProducer = self
            .config
            .fenced_writer_config(topic, partition)
            .create()
            .map_err(backend)?;
        let producer = Arc::new(producer);
        let initializing = Arc::clone(&producer);
        tokio::task::spawn_blocking(move || initializing.init_transactions(TRANSACTION_REQUEST))
            .await
            .map_err(join_error)?
            .map_err(|error| transaction_error(topic, partition, error))?;
        Ok(Box::new(KafkaFencedWriter {
            inner: Arc::clone(self),
            producer: Some(producer),
            topic: topic.to_owned(),
            partition,
        }))
    }
}

/// A partition's single writer: one transactional producer, one transaction per append.
struct KafkaFencedWriter {
    /// For last-stable-offset queries.
    inner: Arc<Inner>,
    /// `None` only while being dropped.
    producer: Option<Arc<FutureProducer>>,
    topic: String,
    partition: PartitionId,
}

impl KafkaFencedWriter {
    fn producer(&self) -> Result<Arc<FutureProducer>, LogError> {
        self.producer.clone().ok_or(LogError::Closed)
    }

    /// `Fenced` if the producer failed fatally because a newer writer took its id (librdkafka
    /// then purges its queue, so the produce errors themselves only say "purged").
    fn fenced(&self, producer: &FutureProducer) -> Option<LogError> {
        let (code, reason) = producer.client().fatal_error()?;
        tracing::warn!(?code, reason, topic = %self.topic, partition = self.partition, "fenced writer failed");
        is_fencing_code(code).then(|| LogError::Fenced {
            topic: self.topic.clone(),
            partition: self.partition,
        })
    }

    async fn await_visible(&self, end: Offset) -> Result<(), LogError> {
        let deadline = tokio::time::Instant::now() + TRANSACTION_REQUEST;
        let mut backoff = Duration::from_millis(1);
        loop {
            let stable = self.inner.end_offset(&self.topic, self.partition).await?;
            if stable >= end {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LogError::Backend(format!(
                    "{}/{}: committed records below {end} still not visible (LSO {stable})",
                    self.topic, self.partition
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    }

    /// Commits the open transaction on a blocking thread. A failure librdkafka marks retriable
    /// (a commit that timed out goes on in the background) resumes the commit by calling it
    /// again, as rd_kafka.h documents, until [`COMMIT_DEADLINE`]; the first other failure, or a
    /// retriable one past the deadline, is returned as the commit's outcome. The outer error is
    /// only a failed blocking task.
    async fn commit(
        &self,
        producer: &Arc<FutureProducer>,
    ) -> Result<Result<(), CommitFailure>, LogError> {
        let deadline = Instant::now() + COMMIT_DEADLINE;
        loop {
            let committing = Arc::clone(producer);
            let outcome = tokio::task::spawn_blocking(move || {
                commit_transaction(&committing, TRANSACTION_REQUEST)
            })
            .await
            .map_err(join_error)?;
            match outcome {
                Err(failure) if failure.retriable && Instant::now() < deadline => {
                    tracing::warn!(
                        code = ?failure.code,
                        message = %failure.message,
                        topic = %self.topic,
                        partition = self.partition,
                        "transaction commit resumed after a retriable failure"
                    );
                    tokio::time::sleep(COMMIT_RETRY_BACKOFF).await;
                }
                outcome => return Ok(outcome),
            }
        }
    }

    async fn abort(&self, producer: Arc<FutureProducer>) {
        let aborted =
            tokio::task::spawn_blocking(move || producer.abort_transaction(TRANSACTION_REQUEST))
                .await;
        if let Ok(Err(error)) = aborted {
            tracing::warn!(%error, topic = %self.topic, partition = self.partition, "abort failed");
        }
    }
}

#[async_trait]
impl FencedWriter for KafkaFencedWriter {
    async fn append(&mut self, records: Vec<NewRecord>) -> Result<Vec<Offset>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let producer = self.producer()?;
        let (topic, partition) = (self.topic.as_str(), self.partition);
        producer
            .begin_transaction()
            .map_err(|error| transaction_error(topic, partition, error))?;
        let placed = records
            .into_iter()
            .map(|record| (partition, record))
            .collect();
        let offsets: Vec<Offset> = match produce_with(&producer, topic, placed).await {
            Ok(placements) => placements.into_iter().map(|(_, offset)| offset).collect(),
            Err(error) => {
                if let Some(fenced) = self.fenced(&producer) {
                    return Err(fenced);
                }
                self.abort(Arc::clone(&producer)).await;
                return Err(error);
            }
        };
        let produced = Instant::now();
        if let Err(failure) = self.commit(&producer).await? {
            if let Some(fenced) = self.fenced(&producer) {
                return Err(fenced);
            }
            if failure.requires_abort {
                self.abort(producer).await;
            }
            return Err(if is_fencing_code(failure.code) {
                LogError::Fenced {
                    topic: topic.to_owned(),
                    partition,
                }
            } else {
                LogError::backend_failure_while(
                    format!("transaction on {topic}/{partition}"),
                    failure,
                )
            });
        }
        // The coordinator writes commit markers after answering the commit: wait until the
        // last stable offset passes the records, so they are visible when this returns (an ack
        // sent now is followed by reads that find the event).
        let committed_at = Instant::now();
        if let Some(last) = offsets.last() {
            self.await_visible(last + 1).await?;
        }
        tracing::trace!(
            partition,
            commit = ?committed_at.duration_since(produced),
            visible = ?committed_at.elapsed(),
            "transaction committed"
        );
        Ok(offsets)
    }

    fn partition(&self) -> PartitionId {
        self.partition
    }
}

impl Drop for KafkaFencedWriter {
    fn drop(&mut self) {
        // Destroying a producer waits for its threads: not on an async worker.
        if let Some(producer) = self.producer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(producer));
        }
    }
}

/// Why a transaction commit failed (read from librdkafka's error object).
#[derive(Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
struct CommitFailure {
    code: RDKafkaErrorCode,
    message: String,
    /// The transaction must be aborted before the producer can be used again.
    requires_abort: bool,
    /// Calling the commit again resumes it (`rd_kafka_error_is_retriable`: a timeout, the
    /// commit goes on in the background).
    retriable: bool,
}

/// Commits `producer`'s open transaction (blocking; run it on a blocking thread).
///
/// rust-rdkafka's `commit_transaction` flushes first, and its flush polls in slices of up to
/// 100 ms for as long as anything is in the producer's out queue, the transaction's own control
/// requests included: about one commit in a hundred stalled for 100 ms, which was the p99 of
/// every ack in Kafka mode (docs/BENCHMARKS.md). The writer has awaited the delivery report of
/// every record before it commits, so the flush inside `rd_kafka_commit_transaction` itself has
/// nothing to wait for; this calls it directly. Its only caller is `KafkaFencedWriter::commit`,
/// itself called only from `KafkaFencedWriter::append`, which takes the writer by `&mut self`.
// The crate's one `unsafe` (denied everywhere else by the workspace lints): the direct call into
// librdkafka described above, and the reading and freeing of the error object it returns.
#[allow(unsafe_code)]
fn commit_transaction(producer: &FutureProducer, timeout: Duration) -> Result<(), CommitFailure> {
    use rdkafka::bindings as rdsys;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live librdkafka producer owned by `producer`, which the caller
    // holds (an `Arc`) until the call returns. The producer belongs to one `KafkaFencedWriter`,
    // and every transactional call on it (begin, produce, commit, abort) is made from that
    // writer's `append(&mut self)` and awaited before `append` returns: `&mut self` rules out a
    // concurrent call on this producer, which librdkafka's transactional API does not allow.
    // While this call blocks (it flushes, then waits for the coordinator), the producer's own
    // poll thread (rdkafka's `ThreadedProducer` under `FutureProducer`) keeps serving delivery
    // reports and callbacks, as rd_kafka.h requires of an application that serves them itself.
    let error =
        unsafe { rdsys::rd_kafka_commit_transaction(producer.client().native_ptr(), timeout_ms) };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: `error` is a non-null error object returned to us by librdkafka; it is read here
    // and destroyed exactly once, and its string is copied before that.
    unsafe {
        let code = RDKafkaErrorCode::from(rdsys::rd_kafka_error_code(error));
        let message = std::ffi::CStr::from_ptr(rdsys::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        let requires_abort = rdsys::rd_kafka_error_txn_requires_abort(error) != 0;
        let retriable = rdsys::rd_kafka_error_is_retriable(error) != 0;
        rdsys::rd_kafka_error_destroy(error);
        Err(CommitFailure {
            code,
            message,
            requires_abort,
            retriable,
        })
    }
}

/// Maps a transactional error: a newer writer's epoch shows up as fencing.
fn transaction_error(topic: &str, partition: PartitionId, error: KafkaError) -> LogError {
    if error.rdkafka_error_code().is_some_and(is_fencing_code) {
        LogError::Fenced {
            topic: topic.to_owned(),
            partition,
        }
    } else {
        LogError::backend_failure_while(format!("transaction on {topic}/{partition}"), error)
    }
}

fn is_fencing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
    )
}
