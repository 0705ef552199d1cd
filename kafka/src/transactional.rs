//! The group member's transactional writer
//! ([`Consumer::transactional_writer`](chorus_log::Consumer::transactional_writer)): exactly
//! once for consume-transform-produce as KIP-447 designed it. One transactional producer per
//! member, `transactional.id` given by the caller (stable across restarts of one process, so
//! `init_transactions` aborts what the previous run left open). Each commit is one transaction:
//! the records (to any partitions of the output topics), then the member's input offsets with
//! `send_offsets_to_transaction` and the consumer's group metadata, then the commit.
//!
//! Fencing, at three lines:
//! - the writer refuses a commit naming an input partition the member does not hold (per the
//!   events `poll` returned, a revoked partition until the next poll): `Fenced`, before anything
//!   is produced (`check_held`); and a release waits for the transaction under way (the gate),
//!   so the next holder's stable offset fetch sees it pending or ended;
//! - it refuses a membership librdkafka has reset (an evicted member), which the broker would
//!   accept unchecked (`transaction::send_offsets`);
//! - the broker refuses the offsets of a member the group no longer counts (a zombie that was
//!   paused past its session timeout and does not know it yet: `UNKNOWN_MEMBER_ID`; a replaced
//!   static member: `FENCED_INSTANCE_ID`); the writer aborts and answers `Fenced`.
//!
//! A refusal of the offsets that may be transient (a rebalance in progress, a generation the
//! member has not learnt yet, the coordinator moving) aborts the transaction — after a completed
//! abort nothing of it can become visible — and runs it again, within [`RETRY_DEADLINE`]. The other side of the guarantee is in
//! `group.rs`: a member is told `Assigned` only after a `require_stable` offset fetch, which the
//! broker answers only once no transaction holding offsets of those partitions is pending.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chorus_log::{LogError, Offset, Output, PartitionId, TransactionalWriter};
use parking_lot::Mutex;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};

use crate::group::GroupContext;
use crate::produce::produce_with;
use crate::transaction::{
    TRANSACTION_REQUEST, TxnFailure, abort, await_visible, commit_resumed, is_fencing_code,
    is_group_fencing_code, send_offsets, transaction_error,
};
use crate::{Inner, backend, join_error};

/// Longest a transaction is run again after its offsets were refused for a reason that may
/// pass (a rebalance in progress, a coordinator moving).
const RETRY_DEADLINE: Duration = Duration::from_secs(20);

impl Inner {
    /// Opens the transactional writer of a group member; see the module docs.
    pub(crate) async fn open_transactional_writer(
        self: &Arc<Self>,
        id: &str,
        consumer: Weak<StreamConsumer<GroupContext>>,
        input_topic: &str,
        held: Arc<Mutex<BTreeSet<PartitionId>>>,
        gate: Arc<tokio::sync::RwLock<()>>,
    ) -> Result<Box<dyn TransactionalWriter>, LogError> {
        if id.is_empty() {
            return Err(LogError::Backend("empty transactional id".into()));
        }
        let producer: FutureProducer = self
            .config
            .transactional_writer_config(id)
            .create()
            .map_err(backend)?;
        let producer = Arc::new(producer);
        let initializing = Arc::clone(&producer);
        tokio::task::spawn_blocking(move || initializing.init_transactions(TRANSACTION_REQUEST))
            .await
            .map_err(join_error)?
            .map_err(|error| {
                LogError::backend_failure_while(format!("init transactions of {id}"), error)
            })?;
        Ok(Box::new(KafkaTransactionalWriter {
            inner: Arc::clone(self),
            producer: Some(producer),
            consumer,
            input_topic: input_topic.to_owned(),
            held,
            gate,
            id: id.to_owned(),
        }))
    }
}

/// A group member's writer: one transactional producer, one transaction per commit.
struct KafkaTransactionalWriter {
    /// For last-stable-offset queries.
    inner: Arc<Inner>,
    /// `None` only while being dropped.
    producer: Option<Arc<FutureProducer>>,
    /// The member whose group metadata goes with the offsets (weak: the member leaves the group
    /// when dropped, whatever its writer does; then the writer is fenced).
    consumer: Weak<StreamConsumer<GroupContext>>,
    input_topic: String,
    /// The partitions the member holds (per the events its `poll` returned, revoked ones until
    /// the next poll), shared with the consumer.
    held: Arc<Mutex<BTreeSet<PartitionId>>>,
    /// Held across each transaction; the member's `poll` takes it before releasing partitions.
    gate: Arc<tokio::sync::RwLock<()>>,
    id: String,
}

/// How one attempt at a transaction ended, when it did not commit.
enum Attempt {
    /// Aborted for a reason that may pass; nothing of it is visible: run it again.
    Again(TxnFailure),
    /// The outcome to return.
    Done(LogError),
}

impl KafkaTransactionalWriter {
    fn producer(&self) -> Result<Arc<FutureProducer>, LogError> {
        self.producer.clone().ok_or(LogError::Closed)
    }

    fn fenced(&self, partition: PartitionId) -> LogError {
        LogError::Fenced {
            topic: self.input_topic.clone(),
            partition,
        }
    }

    /// `Fenced` naming the first partition of `offsets` the member does not hold.
    fn check_held(&self, offsets: &[(PartitionId, Offset)]) -> Result<(), LogError> {
        let held = self.held.lock();
        match offsets
            .iter()
            .find(|(partition, _)| !held.contains(partition))
        {
            Some((partition, _)) => Err(self.fenced(*partition)),
            None => Ok(()),
        }
    }

    /// `Fenced` if the producer failed fatally because a newer producer took its id.
    fn producer_fenced(&self, producer: &FutureProducer, first: PartitionId) -> Option<LogError> {
        let (code, reason) = producer.client().fatal_error()?;
        tracing::warn!(?code, reason, id = %self.id, "transactional writer failed");
        is_fencing_code(code).then(|| self.fenced(first))
    }

    /// One attempt: begin, produce, send the offsets, commit. `Ok` with the records' offsets
    /// once committed.
    async fn attempt(
        &self,
        producer: &Arc<FutureProducer>,
        outputs: &[Output],
        offsets: &TopicPartitionList,
        first: PartitionId,
    ) -> Result<Vec<Vec<(PartitionId, Offset)>>, Attempt> {
        producer
            .begin_transaction()
            .map_err(|error| Attempt::Done(transaction_error(&self.input_topic, first, error)))?;
        let producing = outputs
            .iter()
            .map(|output| produce_with(producer, &output.topic, &output.records));
        let placements = match futures_util::future::try_join_all(producing).await {
            Ok(placements) => placements,
            Err(error) => {
                if let Some(fenced) = self.producer_fenced(producer, first) {
                    return Err(Attempt::Done(fenced));
                }
                abort(Arc::clone(producer), &self.id).await;
                return Err(Attempt::Done(error));
            }
        };
        let Some(consumer) = self.consumer.upgrade() else {
            abort(Arc::clone(producer), &self.id).await;
            return Err(Attempt::Done(self.fenced(first)));
        };
        let sending = (Arc::clone(producer), consumer, offsets.clone());
        let sent = tokio::task::spawn_blocking(move || {
            let (producer, consumer, offsets) = sending;
            send_offsets(&producer, &consumer, &offsets, TRANSACTION_REQUEST)
        })
        .await
        .map_err(|error| Attempt::Done(join_error(error)))?;
        match sent {
            Ok(membership) => tracing::trace!(
                generation = membership.generation,
                member = %membership.member_id,
                "offsets sent to the transaction"
            ),
            Err(refusal) => {
                let aborted = abort(Arc::clone(producer), &self.id).await;
                return Err(match refusal {
                    // an evicted member (librdkafka reset its membership)
                    None => Attempt::Done(self.fenced(first)),
                    Some(failure) if is_group_fencing_code(failure.code) => {
                        tracing::warn!(code = ?failure.code, message = %failure.message, id = %self.id, "offsets refused: not in the group's generation");
                        Attempt::Done(self.fenced(first))
                    }
                    Some(failure) if aborted && !is_fatal(failure.code) => Attempt::Again(failure),
                    Some(failure) => Attempt::Done(LogError::backend_failure_while(
                        format!("offsets of {} in transaction {}", self.input_topic, self.id),
                        failure,
                    )),
                });
            }
        }
        if let Err(failure) = commit_resumed(producer, &self.id)
            .await
            .map_err(Attempt::Done)?
        {
            if let Some(fenced) = self.producer_fenced(producer, first) {
                return Err(Attempt::Done(fenced));
            }
            if failure.requires_abort {
                abort(Arc::clone(producer), &self.id).await;
            }
            return Err(Attempt::Done(
                if is_fencing_code(failure.code) || is_group_fencing_code(failure.code) {
                    self.fenced(first)
                } else {
                    LogError::backend_failure_while(format!("transaction {}", self.id), failure)
                },
            ));
        }
        Ok(placements)
    }
}

/// Codes that end a producer for good; never worth a second attempt.
fn is_fatal(code: rdkafka::error::RDKafkaErrorCode) -> bool {
    use rdkafka::error::RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::Fatal
            | Code::TransactionalIdAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::TopicAuthorizationFailed
            | Code::UnsupportedVersion
    ) || is_fencing_code(code)
}

#[async_trait]
impl TransactionalWriter for KafkaTransactionalWriter {
    async fn commit_outputs(
        &mut self,
        outputs: Vec<Output>,
        offsets: &[(PartitionId, Offset)],
    ) -> Result<Vec<Vec<Offset>>, LogError> {
        let Some((first, _)) = offsets.first() else {
            return Err(LogError::TransactionWithoutOffsets);
        };
        let first = *first;
        for output in &outputs {
            let partition_count = self.inner.partition_count(&output.topic).await?;
            if let Some((partition, _)) = output.records.iter().find(|(p, _)| *p >= partition_count)
            {
                return Err(LogError::BadPartition {
                    topic: output.topic.clone(),
                    partition: *partition,
                });
            }
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            list.add_partition_offset(
                &self.input_topic,
                *partition as i32,
                KafkaOffset::Offset(*offset as i64),
            )
            .map_err(backend)?;
        }
        let producer = self.producer()?;
        let deadline = tokio::time::Instant::now() + RETRY_DEADLINE;
        let gate = Arc::clone(&self.gate);
        let _released_after_this = gate.read().await;
        let placements = loop {
            self.check_held(offsets)?;
            match self.attempt(&producer, &outputs, &list, first).await {
                Ok(placements) => break placements,
                Err(Attempt::Done(error)) => return Err(error),
                Err(Attempt::Again(failure)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(code = ?failure.code, message = %failure.message, id = %self.id, "transaction aborted and run again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(Attempt::Again(failure)) => {
                    return Err(LogError::backend_failure_while(
                        format!("transaction {} (aborted, out of time)", self.id),
                        failure,
                    ));
                }
            }
        };
        // The coordinator writes the markers after answering the commit: wait until every
        // touched partition's last stable offset passed its records (visible when this returns).
        let mut ends: BTreeMap<(&str, PartitionId), Offset> = BTreeMap::new();
        for (output, placed) in outputs.iter().zip(&placements) {
            for (partition, offset) in placed {
                let end = ends.entry((output.topic.as_str(), *partition)).or_default();
                *end = (*end).max(offset + 1);
            }
        }
        let waits = ends
            .into_iter()
            .map(|((topic, partition), end)| await_visible(&self.inner, topic, partition, end));
        for waited in futures_util::future::join_all(waits).await {
            waited?;
        }
        Ok(placements
            .into_iter()
            .map(|placed| placed.into_iter().map(|(_, offset)| offset).collect())
            .collect())
    }
}

impl Drop for KafkaTransactionalWriter {
    fn drop(&mut self) {
        // Destroying a producer waits for its threads: not on an async worker.
        if let Some(producer) = self.producer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(producer));
        }
    }
}
