//! Transactional writers of the embedded log: consume-transform-produce (KIP-447) without a
//! broker.
//!
//! A group member's writer ([`EmbeddedTransactionalWriter`]) commits records to output topics
//! together with the member's "next to read" offsets of its input partitions. It is fenced by the
//! group: a commit goes ahead only if the member *owns* every input partition it names (a
//! partition revoked but not yet released, between `Revoked` and the member's next poll, is
//! still owned, so in-flight work may finish), and otherwise fails with [`LogError::Fenced`]
//! before anything is written. The check and the whole commit run under the member's *commit
//! gate* (read), and a release takes that gate (write) first (`group.rs`), so ownership cannot
//! change while a commit is in flight: the partition's next holder is told `Assigned` only once
//! no commit of its earlier holder can still write.
//!
//! Durability and visibility, honestly: the records are appended in one group commit (one WAL
//! sync however many output partitions they touch) and are durable and visible to readers
//! before the offsets are committed. The offsets are visible at once and written to the group's
//! file within a second (`GroupShared::commit_transacted`: one write for all the transactions of
//! that second, not one synced file each). A crash (or a failed offset write, or a commit future
//! dropped) between the two leaves the records without (the last second of) the offsets: they
//! stay behind, never ahead, so a consumer whose resume point lives in its output (the router)
//! loses nothing and re-reads what it must dedupe. A crash during the records' group commit
//! (never acknowledged) may leave a prefix of them, like any append (`wal.rs`). Between the two
//! steps a reader can see the records before [`EventLog::committed`](crate::EventLog::committed)
//! shows the offsets; no member is assigned the input partitions in that window.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::RwLock;

use super::group::{GroupShared, MemberId};
use super::{LogShared, PartitionBatches, TopicLog};
use crate::{LogError, Offset, Output, PartitionId, TransactionalWriter};

/// Held (read) by a commit in flight, (write) by a release of the member's partitions.
pub(super) type CommitGate = Arc<RwLock<()>>;

/// The transactional writer of one member of a consumer group of an
/// [`EmbeddedLog`](super::EmbeddedLog).
pub(super) struct EmbeddedTransactionalWriter {
    /// Where the records go (and what keeps the log open while the writer lives).
    shared: Arc<LogShared>,
    /// The member's input topic: its partitions are the ones `offsets` name.
    input_topic: Arc<TopicLog>,
    /// The group whose ownership fences the writer and whose offsets it commits.
    group: Arc<GroupShared>,
    /// The member this writer commits for.
    member_id: MemberId,
    /// The member's commit gate (see the module docs).
    commit_gate: CommitGate,
    /// The id given at open, for diagnostics (the embedded log leaves no transaction open
    /// across restarts, so it has nothing to abort under it).
    id: String,
}

impl EmbeddedTransactionalWriter {
    pub(super) fn new(
        shared: Arc<LogShared>,
        input_topic: Arc<TopicLog>,
        group: Arc<GroupShared>,
        member_id: MemberId,
        commit_gate: CommitGate,
        id: &str,
    ) -> EmbeddedTransactionalWriter {
        EmbeddedTransactionalWriter {
            shared,
            input_topic,
            group,
            member_id,
            commit_gate,
            id: id.to_owned(),
        }
    }
}

#[async_trait]
impl TransactionalWriter for EmbeddedTransactionalWriter {
    async fn commit_outputs(
        &mut self,
        outputs: Vec<Output>,
        offsets: &[(PartitionId, Offset)],
    ) -> Result<Vec<Vec<Offset>>, LogError> {
        if offsets.is_empty() {
            return Err(LogError::TransactionWithoutOffsets);
        }
        for &(partition, _) in offsets {
            if partition as usize >= self.input_topic.partitions.len() {
                return Err(LogError::BadPartition {
                    topic: self.input_topic.name.clone(),
                    partition,
                });
            }
        }
        // every output's batches go into one group commit: one WAL sync for the transaction
        let mut grouped = Vec::with_capacity(outputs.len());
        for output in outputs {
            let output_topic = self.shared.topic(&output.topic)?;
            grouped.push(PartitionBatches::group(&output_topic, output.records)?);
        }
        let (batches, counts) = PartitionBatches::concat(grouped);

        let _commit_in_flight = self.commit_gate.read().await;
        let input_partitions = offsets.iter().map(|&(partition, _)| partition);
        if let Some(partition) = self.group.first_not_owned(self.member_id, input_partitions) {
            tracing::debug!(writer = %self.id, member_id = self.member_id, partition, "transaction fenced");
            return Err(LogError::Fenced {
                topic: self.input_topic.name.clone(),
                partition,
            });
        }
        let placed = batches.submit(&self.shared).await?;
        self.group.commit_transacted(offsets);
        let mut placed = placed.into_iter().map(|(_, offset)| offset);
        Ok(counts
            .into_iter()
            .map(|count| placed.by_ref().take(count).collect())
            .collect())
    }
}
