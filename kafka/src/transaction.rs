//! The transaction mechanics of the group member's transactional writer (`transactional.rs`):
//! committing (resumed after retriable failures, within [`COMMIT_DEADLINE`]), aborting, sending
//! the offsets with the group's metadata, waiting until the last stable offset passed what was
//! committed, and telling fencing apart from other failures.
//!
//! It holds the crate's only `unsafe`: two direct calls into librdkafka that rust-rdkafka does
//! not offer in the form needed (see [`commit_transaction`] and [`send_offsets`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_log::{LogError, Offset, PartitionId};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::{Inner, join_error};

/// Longest `init_transactions`, `abort_transaction`, `send_offsets_to_transaction` or one
/// `commit_transaction` call may take.
pub(crate) const TRANSACTION_REQUEST: Duration = Duration::from_secs(30);
/// Longest a commit is resumed after retriable failures: well past the transaction timeout
/// (`transaction.timeout.ms`, 10 s): by then the coordinator has aborted a transaction the
/// producer could not finish, so waiting longer cannot end in a commit.
const COMMIT_DEADLINE: Duration = Duration::from_secs(60);
/// Pause before resuming a commit that failed fast with a retriable error.
const COMMIT_RETRY_BACKOFF: Duration = Duration::from_millis(10);

/// Why a transactional call failed (read from librdkafka's error object).
#[derive(Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
pub(crate) struct TxnFailure {
    pub(crate) code: RDKafkaErrorCode,
    pub(crate) message: String,
    /// The transaction must be aborted before the producer can be used again.
    pub(crate) requires_abort: bool,
    /// Calling again resumes the call (`rd_kafka_error_is_retriable`: a timeout, the call goes
    /// on in the background).
    pub(crate) retriable: bool,
}

/// Commits `producer`'s open transaction on blocking threads. A failure librdkafka marks
/// retriable (a commit that timed out goes on in the background) resumes the commit by calling
/// it again, as rd_kafka.h documents, until [`COMMIT_DEADLINE`]; the first other failure, or a
/// retriable one past the deadline, is returned as the commit's outcome. The outer error is only
/// a failed blocking task. `what` names the transaction in logs.
pub(crate) async fn commit_resumed(
    producer: &Arc<FutureProducer>,
    what: &str,
) -> Result<Result<(), TxnFailure>, LogError> {
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
                    what,
                    "transaction commit resumed after a retriable failure"
                );
                tokio::time::sleep(COMMIT_RETRY_BACKOFF).await;
            }
            outcome => return Ok(outcome),
        }
    }
}

/// Aborts `producer`'s open transaction on a blocking thread; `true` once the abort completed
/// (nothing of the transaction can become visible).
pub(crate) async fn abort(producer: Arc<FutureProducer>, what: &str) -> bool {
    let aborted =
        tokio::task::spawn_blocking(move || producer.abort_transaction(TRANSACTION_REQUEST)).await;
    match aborted {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, what, "abort failed");
            false
        }
        Err(error) => {
            tracing::warn!(%error, what, "abort task failed");
            false
        }
    }
}

/// Waits until the last stable offset of `topic`/`partition` reached `end`: the coordinator
/// writes commit markers after answering the commit, so records are visible to read_committed
/// readers only then (an ack sent after this is followed by reads that find the event).
pub(crate) async fn await_visible(
    inner: &Arc<Inner>,
    topic: &str,
    partition: PartitionId,
    end: Offset,
) -> Result<(), LogError> {
    let deadline = tokio::time::Instant::now() + TRANSACTION_REQUEST;
    let mut backoff = Duration::from_millis(1);
    loop {
        let stable = inner.end_offset(topic, partition).await?;
        if stable >= end {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LogError::Backend(format!(
                "{topic}/{partition}: committed records below {end} still not visible (LSO {stable})"
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(20));
    }
}

/// Maps a transactional error: a newer producer's epoch on the same id shows up as fencing.
pub(crate) fn transaction_error(
    topic: &str,
    partition: PartitionId,
    error: KafkaError,
) -> LogError {
    if error.rdkafka_error_code().is_some_and(is_fencing_code) {
        LogError::Fenced {
            topic: topic.to_owned(),
            partition,
        }
    } else {
        LogError::backend_failure_while(format!("transaction on {topic}/{partition}"), error)
    }
}

/// Codes by which the coordinator says a newer producer took the transactional id.
pub(crate) fn is_fencing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
    )
}

/// Codes by which the group coordinator refuses a member's transactional offset commit because
/// the group no longer counts the member (KIP-447 fencing): it was removed (its session expired
/// while it was paused) or replaced (a static member). Not `ILLEGAL_GENERATION`: that member is
/// still in the group, a generation behind while a rebalance completes, and under the
/// cooperative protocol it still owns every partition it has not released (which the writer
/// checks itself), so its transaction is aborted and run again with the new generation.
pub(crate) fn is_group_fencing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::FencedInstanceId
    )
}

/// A consumer's group membership as librdkafka knows it right now.
pub(crate) struct Membership {
    pub(crate) generation: i32,
    pub(crate) member_id: String,
}

/// Sends `offsets` to `producer`'s open transaction with the group metadata `consumer` has right
/// now (blocking; run it on a blocking thread), unless that metadata is not a current member's:
/// librdkafka resets the member id and generation of a member it found evicted, and the
/// broker accepts a transactional offset commit with *no* member id and generation without any
/// check (a producer that does not use group metadata), which would let a zombie commit. So a
/// reset membership is refused here (`Err(None)`), and the broker checks every other one
/// against the group's current generation. Returns the membership used.
///
/// rust-rdkafka's `send_offsets_to_transaction` takes a `ConsumerGroupMetadata` whose generation
/// and member id cannot be read; this takes librdkafka's metadata object itself, reads them and
/// sends that same object.
// With `commit_transaction`, the crate's only `unsafe`.
#[allow(unsafe_code)]
pub(crate) fn send_offsets<C: ConsumerContext>(
    producer: &FutureProducer,
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    offsets: &TopicPartitionList,
    timeout: Duration,
) -> Result<Membership, Option<TxnFailure>> {
    use rdkafka::bindings as rdsys;
    use rdkafka::consumer::Consumer as _;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live librdkafka consumer owned by `consumer`, borrowed for the
    // whole call. `rd_kafka_consumer_group_metadata` returns a new object owned by us (or null
    // when the handle is not a consumer), destroyed exactly once below.
    let metadata =
        unsafe { rdsys::rd_kafka_consumer_group_metadata(consumer.client().native_ptr()) };
    if metadata.is_null() {
        return Err(None);
    }
    // SAFETY: `metadata` is the non-null object above; the member id string it returns lives as
    // long as the object and is copied before the object is destroyed.
    let membership = unsafe {
        let member = rdsys::rd_kafka_consumer_group_metadata_member_id(metadata);
        Membership {
            generation: rdsys::rd_kafka_consumer_group_metadata_generation_id(metadata),
            member_id: if member.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(member)
                    .to_string_lossy()
                    .into_owned()
            },
        }
    };
    if membership.generation < 0 || membership.member_id.is_empty() {
        // SAFETY: destroyed once; not used afterwards.
        unsafe { rdsys::rd_kafka_consumer_group_metadata_destroy(metadata) };
        return Err(None);
    }
    // SAFETY: the producer handle is live for the call (borrowed); the partition list is a live
    // list borrowed for the call (librdkafka copies it); `metadata` is live and destroyed once,
    // right after. Transactional calls on this producer are never concurrent: its only caller,
    // the group member's writer, makes them from `commit(&mut self)`.
    let error = unsafe {
        let error = rdsys::rd_kafka_send_offsets_to_transaction(
            producer.client().native_ptr(),
            offsets.ptr(),
            metadata,
            timeout_ms,
        );
        rdsys::rd_kafka_consumer_group_metadata_destroy(metadata);
        error
    };
    match take_error(error) {
        None => Ok(membership),
        Some(failure) => Err(Some(failure)),
    }
}

/// Commits `producer`'s open transaction (blocking; run it on a blocking thread).
///
/// rust-rdkafka's `commit_transaction` flushes first, and its flush polls in slices of up to
/// 100 ms for as long as anything is in the producer's out queue, the transaction's own control
/// requests included: about one commit in a hundred stalled for 100 ms, which was the p99 of
/// every ack in Kafka mode (docs/BENCHMARKS.md). The writer has awaited the delivery report of
/// every record before it commits, so the flush inside `rd_kafka_commit_transaction` itself has
/// nothing to wait for; this calls it directly. Its only caller is [`commit_resumed`], called by
/// the writer from `commit(&mut self)`.
// With `send_offsets`, the crate's only `unsafe` (denied everywhere else by the workspace lints).
#[allow(unsafe_code)]
fn commit_transaction(producer: &FutureProducer, timeout: Duration) -> Result<(), TxnFailure> {
    use rdkafka::bindings as rdsys;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live librdkafka producer owned by `producer`, which the caller
    // holds (an `Arc`) until the call returns. Each producer belongs to one writer, and every
    // transactional call on it (begin, produce, send offsets, commit, abort) is made from that
    // writer's `commit(&mut self)` and awaited before it returns: no concurrent call on this
    // producer, which librdkafka's transactional API does not allow. While this call blocks (it
    // flushes, then waits for the coordinator), the producer's own poll thread (rdkafka's
    // `ThreadedProducer` under `FutureProducer`) keeps serving delivery reports and callbacks,
    // as rd_kafka.h requires of an application that serves them itself.
    let error =
        unsafe { rdsys::rd_kafka_commit_transaction(producer.client().native_ptr(), timeout_ms) };
    match take_error(error) {
        None => Ok(()),
        Some(failure) => Err(failure),
    }
}

/// Reads and frees an error object librdkafka returned (null: no error).
#[allow(unsafe_code)]
fn take_error(error: *mut rdkafka::bindings::rd_kafka_error_t) -> Option<TxnFailure> {
    use rdkafka::bindings as rdsys;
    if error.is_null() {
        return None;
    }
    // SAFETY: `error` is a non-null error object returned to us by librdkafka and not used by
    // anyone else; it is read here and destroyed exactly once, and its string is copied before.
    unsafe {
        let code = RDKafkaErrorCode::from(rdsys::rd_kafka_error_code(error));
        let message = std::ffi::CStr::from_ptr(rdsys::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        let requires_abort = rdsys::rd_kafka_error_txn_requires_abort(error) != 0;
        let retriable = rdsys::rd_kafka_error_is_retriable(error) != 0;
        rdsys::rd_kafka_error_destroy(error);
        Some(TxnFailure {
            code,
            message,
            requires_abort,
            retriable,
        })
    }
}
