//! Consumer groups: exclusive, in-process partition assignment and committed offsets.
//!
//! Per (group, topic), live members are kept in join order and partition `p` targets member
//! `p % members` (round robin). Each partition also has an *owner*, which only changes hands
//! through a release: the owner learns of a revocation at a poll (`Revoked`), keeps the partition
//! until its next poll (so it can finish and commit in-flight work), and releases it there (or
//! when dropped). Only a partition without owner is given to its target (`Assigned` at the
//! target's next poll). So at any instant a partition has at most one owner.
//!
//! Transactions of a member's writer (`transactions.rs`) commit only for partitions it owns, and
//! a release waits for the member's commit in flight (`EmbeddedConsumer::poll`, and `Drop`), so
//! a partition's next owner is assigned it only once no transaction of an earlier owner can
//! still commit.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{self, FutureExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::LogShared;
use super::files::{group_file_stem, write_file_atomically};
use super::frame::{ReadLimits, frame_len};
use super::partition::PartitionLog;
use super::transactions::{CommitGate, EmbeddedTransactionalWriter};
use super::{MAX_READ_BYTES, TopicLog};
use crate::{
    Consumer, LogError, Offset, PartitionId, PollEvent, Record, StartFrom, TransactionalWriter,
};

/// Longest the offsets of a transactional commit wait before they are written to the group's
/// file (see `GroupShared::commit_transacted`).
pub(super) const TRANSACTED_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// Identifies a member within its (group, topic).
pub(super) type MemberId = u64;

/// The committed offsets file of one (group, topic).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CommittedOffsetsFile {
    /// The group's real name (the file name is an encoding of it).
    pub(super) group: String,
    /// The topic, as a consistency check against the folder the file is in.
    pub(super) topic: String,
    /// "Next to read" offset per partition.
    pub(super) offsets: BTreeMap<PartitionId, Offset>,
}

/// All (group, topic) states of the process.
#[derive(Default)]
pub(super) struct GroupCoordinator {
    /// Known groups: joined in this process, or found on disk with committed offsets.
    groups: Mutex<HashMap<(String, String), Arc<GroupShared>>>,
}

impl GroupCoordinator {
    /// Registers a group whose committed offsets were read from disk on open.
    pub(super) fn register_loaded(
        &self,
        topic: &TopicLog,
        file: CommittedOffsetsFile,
    ) -> Result<(), LogError> {
        let group = GroupShared::new(&file.group, topic)?;
        {
            let mut offsets = group.offsets.lock();
            offsets.pending = file.offsets.clone();
            offsets.durable = file.offsets;
        }
        self.groups
            .lock()
            .insert((file.group, topic.name.clone()), Arc::new(group));
        Ok(())
    }

    /// The group's state, created on first use.
    pub(super) fn get_or_create(
        &self,
        group: &str,
        topic: &TopicLog,
    ) -> Result<Arc<GroupShared>, LogError> {
        let mut groups = self.groups.lock();
        let key = (group.to_owned(), topic.name.clone());
        if let Some(existing) = groups.get(&key) {
            return Ok(Arc::clone(existing));
        }
        let created = Arc::new(GroupShared::new(group, topic)?);
        groups.insert(key, Arc::clone(&created));
        Ok(created)
    }

    /// The group's durable committed offset of a partition, if the group is known and has one.
    pub(super) fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Option<Offset> {
        let group_state = self
            .groups
            .lock()
            .get(&(group.to_owned(), topic.to_owned()))
            .cloned()?;
        group_state.committed(partition)
    }
}

/// One consumer group on one topic.
pub(super) struct GroupShared {
    /// Where committed offsets are persisted.
    offsets_path: PathBuf,
    /// Group name, written into the offsets file.
    group: String,
    /// Topic name, written into the offsets file.
    topic: String,
    /// Members, owners and targets.
    membership: Mutex<Membership>,
    /// Committed offsets, pending and durable.
    offsets: Mutex<CommittedOffsets>,
    /// Serializes writes of the offsets file (concurrent commits are folded into one write).
    persist: Mutex<()>,
}

/// A live member, as the group knows it.
struct Member {
    /// Its id, unique within the group.
    id: MemberId,
    /// Wakes its poll when its assignment should change.
    wakeup: Arc<Notify>,
}

/// Who holds and who should hold each partition.
struct Membership {
    /// Live members in join order; the assignment rule deals partitions over this list.
    members: Vec<Member>,
    /// The member holding each partition now; cleared only by that member's release or drop.
    owners: Vec<Option<MemberId>>,
    /// The member each partition should go to under the current membership.
    targets: Vec<Option<MemberId>>,
    /// Id for the next member to join.
    next_member_id: MemberId,
}

/// An assignment change a member must act on.
enum AssignmentChange {
    /// Partitions it owns that target another member.
    Revoke(Vec<PartitionId>),
    /// Partitions without owner that target it; it owns them now.
    Acquire(Vec<PartitionId>),
}

/// The committed offsets of a group, with versions to fold concurrent commits into one write.
#[derive(Default)]
struct CommittedOffsets {
    /// Offsets requested by commits, durable or not yet; what `committed` answers.
    pending: BTreeMap<PartitionId, Offset>,
    /// Bumped by every commit request.
    pending_version: u64,
    /// Offsets known to be on disk.
    durable: BTreeMap<PartitionId, Offset>,
    /// The `pending_version` that `durable` reflects.
    durable_version: u64,
    /// A write of transactions' offsets is scheduled (`commit_transacted`).
    write_scheduled: bool,
}

/// Round robin over members in join order: partition `p` goes to member `p % members`.
fn round_robin_targets(members: &[MemberId], partitions: usize) -> Vec<Option<MemberId>> {
    (0..partitions)
        .map(|partition| match members.len() {
            0 => None,
            count => Some(members[partition % count]),
        })
        .collect()
}

impl Membership {
    fn retarget(&mut self) {
        let member_ids: Vec<MemberId> = self.members.iter().map(|member| member.id).collect();
        self.targets = round_robin_targets(&member_ids, self.owners.len());
    }

    fn wake_all(&self) {
        for member in &self.members {
            member.wakeup.notify_one();
        }
    }

    fn wake(&self, member_id: MemberId) {
        if let Some(member) = self.members.iter().find(|member| member.id == member_id) {
            member.wakeup.notify_one();
        }
    }

    /// Clears ownership of `partitions` held by `member_id` and wakes their targets.
    fn release(&mut self, member_id: MemberId, partitions: &[PartitionId]) {
        for &partition in partitions {
            let slot = partition as usize;
            if self.owners[slot] != Some(member_id) {
                continue;
            }
            self.owners[slot] = None;
            if let Some(target) = self.targets[slot] {
                self.wake(target);
            }
        }
    }

    fn next_change(&mut self, member_id: MemberId) -> Option<AssignmentChange> {
        let revoke: Vec<PartitionId> = (0..self.owners.len())
            .filter(|&slot| {
                self.owners[slot] == Some(member_id) && self.targets[slot] != Some(member_id)
            })
            .map(|slot| slot as PartitionId)
            .collect();
        if !revoke.is_empty() {
            return Some(AssignmentChange::Revoke(revoke));
        }
        let acquire: Vec<PartitionId> = (0..self.owners.len())
            .filter(|&slot| self.owners[slot].is_none() && self.targets[slot] == Some(member_id))
            .map(|slot| slot as PartitionId)
            .collect();
        if acquire.is_empty() {
            return None;
        }
        for &partition in &acquire {
            self.owners[partition as usize] = Some(member_id);
        }
        Some(AssignmentChange::Acquire(acquire))
    }
}

impl GroupShared {
    fn new(group: &str, topic: &TopicLog) -> Result<GroupShared, LogError> {
        let offsets_path = topic
            .groups_dir()
            .join(format!("{}.json", group_file_stem(group)?));
        let partition_count = topic.partitions.len();
        Ok(GroupShared {
            offsets_path,
            group: group.to_owned(),
            topic: topic.name.clone(),
            membership: Mutex::new(Membership {
                members: Vec::new(),
                owners: vec![None; partition_count],
                targets: vec![None; partition_count],
                next_member_id: 0,
            }),
            offsets: Mutex::new(CommittedOffsets::default()),
            persist: Mutex::new(()),
        })
    }

    /// The latest committed offset: durable once a plain commit returned, within
    /// [`TRANSACTED_PERSIST_INTERVAL`] of a transactional one (see [`Self::commit_transacted`]).
    fn committed(&self, partition: PartitionId) -> Option<Offset> {
        self.offsets.lock().pending.get(&partition).copied()
    }

    fn join(&self) -> (MemberId, Arc<Notify>) {
        let mut membership = self.membership.lock();
        let member_id = membership.next_member_id;
        membership.next_member_id += 1;
        let wakeup = Arc::new(Notify::new());
        membership.members.push(Member {
            id: member_id,
            wakeup: Arc::clone(&wakeup),
        });
        membership.retarget();
        membership.wake_all();
        (member_id, wakeup)
    }

    fn leave(&self, member_id: MemberId) {
        self.persist_pending();
        let mut membership = self.membership.lock();
        membership.members.retain(|member| member.id != member_id);
        for owner in &mut membership.owners {
            if *owner == Some(member_id) {
                *owner = None;
            }
        }
        membership.retarget();
        membership.wake_all();
    }

    /// The first of `partitions` that `member_id` does not own, if any (released, never held,
    /// or out of range), as of now.
    pub(super) fn first_not_owned(
        &self,
        member_id: MemberId,
        partitions: impl IntoIterator<Item = PartitionId>,
    ) -> Option<PartitionId> {
        let membership = self.membership.lock();
        partitions.into_iter().find(|&partition| {
            membership.owners.get(partition as usize).copied().flatten() != Some(member_id)
        })
    }

    /// Records the offsets and returns once they (or a later version) are on disk.
    pub(super) async fn commit(
        self: &Arc<Self>,
        offsets: &[(PartitionId, Offset)],
    ) -> Result<(), LogError> {
        let version = {
            let mut committed = self.offsets.lock();
            committed.pending.extend(offsets.iter().copied());
            committed.pending_version += 1;
            committed.pending_version
        };
        let group = Arc::clone(self);
        tokio::task::spawn_blocking(move || group.persist_up_to(version))
            .await
            .map_err(|join_error| {
                LogError::backend_failure_while("offset commit task failed", join_error)
            })?
    }

    /// Commits the offsets of a transaction: visible at once (to `committed` and to the next
    /// holder's start position), written to the group's file within
    /// [`TRANSACTED_PERSIST_INTERVAL`] (one scheduled write covers every transaction of that
    /// interval) or when a member leaves, never one synced file per transaction. A crash loses
    /// at most that interval of offsets: they stay behind the records, never ahead (the
    /// transactional writer's documented embedded guarantee), and the router resumes from its
    /// timeline anyway.
    pub(super) fn commit_transacted(self: &Arc<Self>, offsets: &[(PartitionId, Offset)]) {
        let schedule = {
            let mut committed = self.offsets.lock();
            committed.pending.extend(offsets.iter().copied());
            committed.pending_version += 1;
            !std::mem::replace(&mut committed.write_scheduled, true)
        };
        if !schedule {
            return;
        }
        let group = Arc::clone(self);
        let write = async move {
            tokio::time::sleep(TRANSACTED_PERSIST_INTERVAL).await;
            let version = {
                let mut committed = group.offsets.lock();
                committed.write_scheduled = false;
                committed.pending_version
            };
            let writing = Arc::clone(&group);
            match tokio::task::spawn_blocking(move || writing.persist_up_to(version)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(group = %group.group, %error, "transaction offsets not written")
                }
                Err(error) => {
                    tracing::warn!(group = %group.group, %error, "transaction offsets task failed")
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(write)),
            Err(_) => {
                self.offsets.lock().write_scheduled = false;
                if let Err(error) = self.persist_up_to(u64::MAX) {
                    tracing::warn!(group = %self.group, %error, "transaction offsets not written");
                }
            }
        }
    }

    /// Writes what is committed and not yet on disk (a member leaving: its last transactions'
    /// offsets do not wait for the scheduled write). Blocking.
    fn persist_pending(&self) {
        let version = {
            let committed = self.offsets.lock();
            if committed.durable_version >= committed.pending_version {
                return;
            }
            committed.pending_version
        };
        if let Err(error) = self.persist_up_to(version) {
            tracing::warn!(group = %self.group, %error, "committed offsets not written on leave");
        }
    }

    fn persist_up_to(&self, version: u64) -> Result<(), LogError> {
        let _writing = self.persist.lock();
        let (snapshot, snapshot_version) = {
            let committed = self.offsets.lock();
            if committed.durable_version >= version {
                return Ok(());
            }
            (committed.pending.clone(), committed.pending_version)
        };
        let file = CommittedOffsetsFile {
            group: self.group.clone(),
            topic: self.topic.clone(),
            offsets: snapshot,
        };
        let contents = serde_json::to_vec_pretty(&file).map_err(|error| {
            LogError::backend_failure_while("encoding committed offsets", error)
        })?;
        write_file_atomically(&self.offsets_path, &contents)?;
        let mut committed = self.offsets.lock();
        committed.durable = file.offsets;
        committed.durable_version = snapshot_version;
        Ok(())
    }
}

/// A member of a consumer group on one topic of an [`EmbeddedLog`](super::EmbeddedLog).
pub(super) struct EmbeddedConsumer {
    /// Keeps the log (its directory lock and files) open while this member lives; its
    /// transactional writer appends through it.
    log: Arc<LogShared>,
    /// The topic consumed.
    topic: Arc<TopicLog>,
    /// The group's shared state.
    group: Arc<GroupShared>,
    /// This member's id in the group.
    member_id: MemberId,
    /// Notified by the group when this member's assignment should change.
    wakeup: Arc<Notify>,
    /// Where to start in partitions without committed offset.
    start: StartFrom,
    /// Assigned partitions and the position ("next to read") in each.
    positions: BTreeMap<PartitionId, Offset>,
    /// Partitions reported as revoked at the last poll: still owned (so in-flight work can be
    /// committed), released at the next poll.
    revoking: Vec<PartitionId>,
    /// Where the next poll starts reading, rotated so no partition is starved.
    fairness_cursor: usize,
    /// Held (read) by each commit of this member's transactional writer, taken (write) before
    /// this member releases partitions (`transactions.rs`).
    commit_gate: CommitGate,
    /// Whether this member opened its transactional writer (it has at most one).
    writer_opened: bool,
}

impl EmbeddedConsumer {
    pub(super) fn join(
        log: Arc<LogShared>,
        topic: Arc<TopicLog>,
        group: Arc<GroupShared>,
        start: StartFrom,
    ) -> EmbeddedConsumer {
        let (member_id, wakeup) = group.join();
        tracing::debug!(group = %group.group, topic = %topic.name, member_id, "consumer joined");
        EmbeddedConsumer {
            log,
            topic,
            group,
            member_id,
            wakeup,
            start,
            positions: BTreeMap::new(),
            revoking: Vec::new(),
            fairness_cursor: 0,
            commit_gate: CommitGate::default(),
            writer_opened: false,
        }
    }

    fn partition(&self, partition: PartitionId) -> &Arc<PartitionLog> {
        &self.topic.partitions[partition as usize]
    }

    /// Applies the next assignment change, if there is one, as a poll event.
    fn assignment_event(&mut self) -> Option<PollEvent> {
        let change = self.group.membership.lock().next_change(self.member_id)?;
        match change {
            AssignmentChange::Revoke(partitions) => {
                for partition in &partitions {
                    self.positions.remove(partition);
                }
                self.revoking.extend(partitions.iter().copied());
                tracing::debug!(group = %self.group.group, member_id = self.member_id, ?partitions, "partitions revoked");
                Some(PollEvent::Revoked(partitions))
            }
            AssignmentChange::Acquire(partitions) => {
                for &partition in &partitions {
                    let position = match (self.group.committed(partition), self.start) {
                        (Some(committed), _) => committed,
                        (None, StartFrom::Earliest) => 0,
                        (None, StartFrom::Latest) => self.partition(partition).end_offset(),
                    };
                    self.positions.insert(partition, position);
                }
                tracing::debug!(group = %self.group.group, member_id = self.member_id, ?partitions, "partitions assigned");
                Some(PollEvent::Assigned(partitions))
            }
        }
    }

    /// Reads available records from assigned partitions, spreading `max_records` fairly: each
    /// pass gives every partition that still has data an equal share, starting at a rotating
    /// partition.
    async fn fetch(&mut self, max_records: usize) -> Result<Vec<Record>, LogError> {
        let assigned: Vec<PartitionId> = self.positions.keys().copied().collect();
        if assigned.is_empty() || max_records == 0 {
            return Ok(Vec::new());
        }
        let first = self.fairness_cursor % assigned.len();
        self.fairness_cursor = self.fairness_cursor.wrapping_add(1);
        let mut candidates: Vec<PartitionId> = assigned[first..]
            .iter()
            .chain(&assigned[..first])
            .copied()
            .collect();
        let mut records = Vec::new();
        let mut records_left = max_records;
        let mut bytes_left = MAX_READ_BYTES;
        while records_left > 0 && bytes_left > 0 && !candidates.is_empty() {
            let share = records_left.div_ceil(candidates.len());
            let mut still_full = Vec::new();
            for partition in candidates {
                let asked = share.min(records_left);
                if asked == 0 || bytes_left == 0 {
                    break;
                }
                let Some(&from) = self.positions.get(&partition) else {
                    continue;
                };
                let limits = ReadLimits {
                    from,
                    max_records: asked,
                    max_bytes: bytes_left,
                };
                let batch = self.partition(partition).read_available(limits).await?;
                let Some(last) = batch.last() else {
                    continue;
                };
                self.positions.insert(partition, last.offset + 1);
                if batch.len() == asked {
                    still_full.push(partition);
                }
                records_left -= batch.len();
                let batch_bytes: usize = batch
                    .iter()
                    .map(|record| frame_len(&record.key, &record.value, &record.headers))
                    .sum();
                bytes_left = bytes_left.saturating_sub(batch_bytes);
                records.extend(batch);
            }
            candidates = still_full;
        }
        Ok(records)
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<PollEvent, LogError> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        if !self.revoking.is_empty() {
            // The one place a member gives partitions up while it lives: after its commit in
            // flight, if any. So when the next holder is assigned them, no transaction of this
            // member can still commit (a later one finds them not owned and is fenced). Taken
            // before `revoking` is emptied, so a poll that times out (`Idle`) or is cancelled
            // while it waits releases nothing: a later poll does.
            let gate = self.commit_gate.write();
            let _no_commit_in_flight = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, gate).await {
                    Ok(no_commit_in_flight) => no_commit_in_flight,
                    Err(_) => return Ok(PollEvent::Idle),
                },
                None => gate.await,
            };
            let released = std::mem::take(&mut self.revoking);
            self.group
                .membership
                .lock()
                .release(self.member_id, &released);
        }
        loop {
            // Subscribe before looking, so records published after the look still wake us.
            let mut end_offsets: Vec<watch::Receiver<Offset>> = self
                .positions
                .keys()
                .map(|&partition| self.partition(partition).subscribe())
                .collect();
            if let Some(event) = self.assignment_event() {
                return Ok(event);
            }
            let records = self.fetch(max_records).await?;
            if !records.is_empty() {
                return Ok(PollEvent::Records(records));
            }
            let new_records = async {
                if end_offsets.is_empty() {
                    return future::pending::<()>().await;
                }
                let changes = end_offsets
                    .iter_mut()
                    .map(|receiver| receiver.changed().boxed());
                let _ = future::select_all(changes).await;
            };
            let woken = async {
                tokio::select! {
                    () = self.wakeup.notified() => {}
                    () = new_records => {}
                }
            };
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, woken).await.is_err() {
                        return Ok(PollEvent::Idle);
                    }
                }
                None => woken.await,
            }
        }
    }

    fn seek(&mut self, partition: PartitionId, offset: Offset) -> Result<(), LogError> {
        let Some(position) = self.positions.get_mut(&partition) else {
            return Err(LogError::NotAssigned {
                topic: self.topic.name.clone(),
                partition,
            });
        };
        *position = offset;
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(PartitionId, Offset)]) -> Result<(), LogError> {
        for &(partition, _) in offsets {
            if partition as usize >= self.topic.partitions.len() {
                return Err(LogError::BadPartition {
                    topic: self.topic.name.clone(),
                    partition,
                });
            }
            let owned =
                self.positions.contains_key(&partition) || self.revoking.contains(&partition);
            if !owned {
                return Err(LogError::NotAssigned {
                    topic: self.topic.name.clone(),
                    partition,
                });
            }
        }
        if offsets.is_empty() {
            return Ok(());
        }
        self.group.commit(offsets).await
    }

    fn assignment(&self) -> Vec<PartitionId> {
        self.positions.keys().copied().collect()
    }

    async fn transactional_writer(
        &mut self,
        id: &str,
    ) -> Result<Box<dyn TransactionalWriter>, LogError> {
        if self.writer_opened {
            return Err(LogError::Backend(format!(
                "group member {} of group {} already has a transactional writer",
                self.member_id, self.group.group
            )));
        }
        self.writer_opened = true;
        Ok(Box::new(EmbeddedTransactionalWriter::new(
            Arc::clone(&self.log),
            Arc::clone(&self.topic),
            Arc::clone(&self.group),
            self.member_id,
            Arc::clone(&self.commit_gate),
            id,
        )))
    }

    fn position(&self, partition: PartitionId) -> Option<Offset> {
        self.positions.get(&partition).copied()
    }
}

impl Drop for EmbeddedConsumer {
    /// Leaves the group, releasing every partition, after the commit of this member's writer in
    /// flight, if any (as a release in `poll` does). When one is in flight, a helper thread
    /// waits for it and leaves: a plain thread rather than a tokio task, so the member leaves
    /// even if no runtime is current or the runtime shuts down.
    fn drop(&mut self) {
        let group = Arc::clone(&self.group);
        let member_id = self.member_id;
        tracing::debug!(group = %group.group, topic = %self.topic.name, member_id, "consumer leaving");
        if let Ok(_no_commit_in_flight) = self.commit_gate.try_write() {
            group.leave(member_id);
            return;
        }
        let commit_gate = Arc::clone(&self.commit_gate);
        let leave_after_commit = std::thread::Builder::new()
            .name("chorus-log-leave".to_owned())
            .spawn(move || {
                let _no_commit_in_flight = commit_gate.blocking_write();
                group.leave(member_id);
            });
        if let Err(error) = leave_after_commit {
            // Without a thread, leaving now beats never leaving: the commit in flight was
            // checked when it started, so it completes, and the next holder may see it late.
            tracing::warn!(%error, member_id, "could not wait for the commit in flight; leaving now");
            self.group.leave(member_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventLog, NewRecord};

    fn membership(partitions: usize) -> Membership {
        Membership {
            members: Vec::new(),
            owners: vec![None; partitions],
            targets: vec![None; partitions],
            next_member_id: 0,
        }
    }

    fn add_member(membership: &mut Membership) -> MemberId {
        let id = membership.next_member_id;
        membership.next_member_id += 1;
        membership.members.push(Member {
            id,
            wakeup: Arc::new(Notify::new()),
        });
        membership.retarget();
        id
    }

    fn acquired(change: Option<AssignmentChange>) -> Vec<PartitionId> {
        match change {
            Some(AssignmentChange::Acquire(partitions)) => partitions,
            _ => panic!("expected an acquisition"),
        }
    }

    fn revoked(change: Option<AssignmentChange>) -> Vec<PartitionId> {
        match change {
            Some(AssignmentChange::Revoke(partitions)) => partitions,
            _ => panic!("expected a revocation"),
        }
    }

    #[test]
    fn round_robin_splits_evenly_in_join_order() {
        assert_eq!(round_robin_targets(&[], 3), vec![None, None, None]);
        assert_eq!(round_robin_targets(&[7], 2), vec![Some(7), Some(7)]);
        assert_eq!(
            round_robin_targets(&[4, 9, 2], 8),
            vec![
                Some(4),
                Some(9),
                Some(2),
                Some(4),
                Some(9),
                Some(2),
                Some(4),
                Some(9)
            ]
        );
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_releases_it() {
        let mut state = membership(4);
        let first = add_member(&mut state);
        assert_eq!(acquired(state.next_change(first)), vec![0, 1, 2, 3]);
        assert!(state.next_change(first).is_none());

        let second = add_member(&mut state);
        // The newcomer gets nothing while the first member still owns its partitions.
        assert!(state.next_change(second).is_none());
        assert_eq!(revoked(state.next_change(first)), vec![1, 3]);
        // Revocation reported but not yet released: still nothing for the newcomer.
        assert!(state.next_change(second).is_none());
        state.release(first, &[1, 3]);
        assert_eq!(acquired(state.next_change(second)), vec![1, 3]);
        assert_eq!(
            state.owners,
            vec![Some(first), Some(second), Some(first), Some(second)]
        );
    }

    /// An embedded log on a fresh folder with one 2-partition topic, and its group `g` there.
    async fn log_with_group() -> (
        tempfile::TempDir,
        Arc<super::super::EmbeddedLog>,
        Arc<TopicLog>,
        Arc<GroupShared>,
    ) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut config = super::super::EmbeddedLogConfig::new(dir.path());
        config.partitions = 2;
        let log = super::super::EmbeddedLog::open(config).expect("open the log");
        log.ensure_topic("t").await.expect("ensure_topic");
        let topic = log.shared.topic("t").expect("topic");
        let group = log.shared.groups.get_or_create("g", &topic).expect("group");
        (dir, log, topic, group)
    }

    fn join(
        log: &super::super::EmbeddedLog,
        topic: &Arc<TopicLog>,
        group: &Arc<GroupShared>,
    ) -> EmbeddedConsumer {
        EmbeddedConsumer::join(
            Arc::clone(&log.shared),
            Arc::clone(topic),
            Arc::clone(group),
            StartFrom::Earliest,
        )
    }

    const PATIENCE: Duration = Duration::from_secs(10);
    /// How long a poll shows that a partition did *not* move (a wrong move shows up well
    /// within it; a right answer never depends on it).
    const SETTLE: Duration = Duration::from_millis(50);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_waits_for_the_commit_in_flight() {
        let (_dir, log, topic, group) = log_with_group().await;
        let mut first = join(&log, &topic, &group);
        let first_id = first.member_id;
        let assigned = first.poll(10, PATIENCE).await.expect("poll");
        assert_eq!(assigned, PollEvent::Assigned(vec![0, 1]));
        let mut second = join(&log, &topic, &group);
        let revoked = first.poll(10, PATIENCE).await.expect("poll");
        assert_eq!(revoked, PollEvent::Revoked(vec![1]));

        let commit_in_flight = Arc::clone(&first.commit_gate).read_owned().await;
        let timed_out = first.poll(10, SETTLE).await.expect("poll");
        assert_eq!(timed_out, PollEvent::Idle, "a poll keeps its timeout");
        assert_eq!(group.first_not_owned(first_id, [0, 1]), None);
        let releasing = tokio::spawn(async move {
            let event = first.poll(10, PATIENCE).await.expect("poll");
            (first, event)
        });
        let while_committing = second.poll(10, SETTLE).await.expect("poll");
        assert_eq!(while_committing, PollEvent::Idle, "released under a commit");
        assert_eq!(group.first_not_owned(first_id, [0, 1]), None);
        drop(commit_in_flight);
        let assigned = second.poll(10, PATIENCE).await.expect("poll");
        assert_eq!(assigned, PollEvent::Assigned(vec![1]));
        assert_eq!(group.first_not_owned(first_id, [0, 1]), Some(1));
        // Wake the first member's poll, which released partition 1 and kept partition 0.
        log.append_to("t", 0, vec![NewRecord::new("k", b"v".to_vec())])
            .await
            .expect("append");
        let (_first, after_release) = releasing.await.expect("poll task");
        assert!(matches!(after_release, PollEvent::Records(records) if records.len() == 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_dropped_during_a_commit_leaves_after_it() {
        let (_dir, log, topic, group) = log_with_group().await;
        let mut first = join(&log, &topic, &group);
        let assigned = first.poll(10, PATIENCE).await.expect("poll");
        assert_eq!(assigned, PollEvent::Assigned(vec![0, 1]));
        let mut second = join(&log, &topic, &group);

        let commit_in_flight = Arc::clone(&first.commit_gate).read_owned().await;
        drop(first);
        let while_committing = second.poll(10, SETTLE).await.expect("poll");
        assert_eq!(while_committing, PollEvent::Idle, "left under a commit");
        drop(commit_in_flight);
        let assigned = second.poll(10, PATIENCE).await.expect("poll");
        assert_eq!(assigned, PollEvent::Assigned(vec![0, 1]));
    }

    #[test]
    fn release_by_a_non_owner_changes_nothing() {
        let mut state = membership(2);
        let first = add_member(&mut state);
        let second = add_member(&mut state);
        assert_eq!(acquired(state.next_change(first)), vec![0]);
        state.release(second, &[0]);
        assert_eq!(state.owners[0], Some(first));
    }
}
