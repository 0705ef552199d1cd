//! Consumer groups ([`EventLog::consumer`](chorus_log::EventLog::consumer)): the classic group
//! protocol with the `cooperative-sticky` assignor, manual commits only, `read_committed`.
//!
//! - The rebalance callback runs inside [`Consumer::poll`], on a runtime worker thread, so it
//!   makes no broker round trip: it only queues what happened. `poll` takes a queued
//!   assignment first: it resolves the start positions on a blocking thread to absolute offsets
//!   (committed offset, else the low watermark for [`StartFrom::Earliest`], else the current
//!   end offset for [`StartFrom::Latest`], so a `Latest` member sees every record appended
//!   after its `Assigned` event), hands them to librdkafka's (incremental) assign — which
//!   librdkafka awaits before the rebalance goes on, so nothing is fetched for the partitions
//!   before — and returns `Assigned`. A poll cancelled meanwhile keeps the assignment and
//!   finishes it at the next poll. The committed offsets are fetched with `require_stable`
//!   (`read_committed`): an earlier holder's transaction that sent offsets of these partitions
//!   has ended before `Assigned` is returned (the other half of KIP-447 fencing, see
//!   `transactional.rs`). `poll` returns queued events **before** any record, and
//!   [`Consumer::assignment`] reflects exactly the events returned so far.
//! - [`Consumer::seek`] uses librdkafka's seek (a synchronous fetch-version barrier: nothing
//!   fetched from the old position is returned afterwards); [`Consumer::commit`] is a
//!   synchronous commit of exactly the given offsets.
//! - **Drain rule**: once `Revoked(ps)` was returned, no record of `ps` is returned (records
//!   buffered for them are dropped; Kafka redelivers from the committed offset to the next
//!   holder). The revocation callback only queues the event; librdkafka's (incremental)
//!   unassign is deferred to the start of the *next* `poll`, so between the `Revoked` event and
//!   the next poll the member may still [`Consumer::commit`] the revoked partitions (the port's
//!   "finish in-flight work before the next poll"). The group cannot complete the rebalance
//!   before that unassign and rejoin, so a member is told `Revoked` (and has released the
//!   partitions) before another member can be told `Assigned`, as long as it keeps polling (a
//!   member that stops polling is evicted after `max.poll.interval.ms`/session timeout).
//! - Dropping a [`KafkaConsumer`] releases any deferred revocation, then closes the rdkafka
//!   consumer on a blocking thread, which leaves the group.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chorus_log::{
    Consumer, LogError, Offset, PartitionId, PollEvent, Record, StartFrom, TransactionalWriter,
};
use futures_util::FutureExt;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::Notify;

use crate::config::REQUEST_TIMEOUT;
use crate::read::to_record;
use crate::{Inner, backend, join_error};

impl Inner {
    /// `group`'s committed offset of `topic`/`partition`, through a short-lived consumer of
    /// that group that joins nothing.
    pub(crate) async fn committed(
        self: &Arc<Self>,
        group: &str,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Option<Offset>, LogError> {
        self.check_partition(topic, partition).await?;
        let config = self.config.committed_query_config(group);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().map_err(backend)?;
            let mut query = TopicPartitionList::new();
            query.add_partition(&topic, partition as i32);
            let answer = consumer
                .committed_offsets(query, REQUEST_TIMEOUT)
                .map_err(backend)?;
            let offset = answer
                .find_partition(&topic, partition as i32)
                .map(|element| element.offset());
            Ok(match offset {
                Some(KafkaOffset::Offset(offset)) if offset >= 0 => Some(offset as Offset),
                _ => None,
            })
        })
        .await
        .map_err(join_error)?
    }

    /// Joins `group` on `topic` (see the module docs).
    pub(crate) async fn join_group(
        self: &Arc<Self>,
        group: &str,
        topic: &str,
        start: StartFrom,
    ) -> Result<Box<dyn Consumer>, LogError> {
        if group.is_empty() {
            return Err(LogError::Backend("empty group name".into()));
        }
        self.partition_count(topic).await?;
        let context = GroupContext {
            topic: topic.to_owned(),
            events: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        };
        let consumer: StreamConsumer<GroupContext> = self
            .config
            .group_member_config(group, start)
            .create_with_context(context)
            .map_err(backend)?;
        consumer.subscribe(&[topic]).map_err(backend)?;
        Ok(Box::new(KafkaConsumer {
            inner: Arc::clone(self),
            writable: Arc::new(Mutex::new(BTreeSet::new())),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            writer_opened: false,
            consumer: Some(Arc::new(consumer)),
            topic: topic.to_owned(),
            start,
            assigning: None,
            held: BTreeSet::new(),
            pending: VecDeque::new(),
            pending_seeks: HashMap::new(),
            releasing: None,
        }))
    }
}

/// Longest an assignment waits for its committed offsets to be stable: past any transaction
/// timeout the adapter's writers use (10 s) plus the coordinator's check interval, so every
/// transaction that was pending has ended by then.
const STABLE_OFFSETS_WAIT: Duration = Duration::from_secs(60);

/// What a rebalance callback leaves for `poll`.
enum Rebalance {
    /// Partitions given to this member and not yet assigned in librdkafka: `poll` positions
    /// and assigns them, then returns `Assigned`.
    Assign(TopicPartitionList),
    /// Partitions taken away: `poll` returns `Revoked`, and their unassign is deferred until
    /// the poll after that.
    Revoke(Vec<PartitionId>, TopicPartitionList),
}

/// Rebalance callbacks of a group consumer: queue what happened, with no broker round trip.
pub(crate) struct GroupContext {
    topic: String,
    /// Rebalances for `poll`, in the order they happened.
    events: Mutex<VecDeque<Rebalance>>,
    notify: Notify,
    /// Set when the consumer is dropped: revocations (the close's own included) are released
    /// at once, since nobody polls any more.
    closing: std::sync::atomic::AtomicBool,
}

impl ClientContext for GroupContext {}

impl GroupContext {
    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<PartitionId> {
        partitions_of(&self.topic, list)
    }

    fn push(&self, event: Rebalance) {
        self.events.lock().push_back(event);
        self.notify.notify_one();
    }
}

/// The partitions of `topic` in `list`, sorted.
fn partitions_of(topic: &str, list: &TopicPartitionList) -> Vec<PartitionId> {
    let mut partitions: Vec<PartitionId> = list
        .elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| element.partition() as PartitionId)
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

/// The assignment with explicit start positions: committed, else beginning (Earliest) or the
/// end offset as of now (Latest). Falls back to librdkafka's own resolution on errors. Broker
/// round trips: call it on a blocking thread, never in the rebalance callback.
fn positioned<K>(consumer: &K, start: StartFrom, list: &TopicPartitionList) -> TopicPartitionList
where
    K: rdkafka::consumer::Consumer<GroupContext>,
{
    // `read_committed` makes librdkafka ask with `require_stable`: the broker answers only once
    // no transaction holding offsets of these partitions is pending (KIP-447), and librdkafka
    // asks again while it is. Asked again past one request timeout, up to STABLE_OFFSETS_WAIT:
    // by then every such transaction ended (the coordinator aborts what outlives its timeout).
    let asking_since = std::time::Instant::now();
    let committed = loop {
        match consumer.committed_offsets(list.clone(), REQUEST_TIMEOUT) {
            Ok(committed) => break committed,
            Err(error) if asking_since.elapsed() < STABLE_OFFSETS_WAIT => {
                tracing::debug!(%error, "committed offsets not stable yet; asking again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => {
                tracing::warn!(%error, "committed offsets unavailable in rebalance");
                return list.clone();
            }
        }
    };
    let mut positioned = TopicPartitionList::new();
    for element in list.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let stored = committed
            .find_partition(topic, partition)
            .map(|found| found.offset());
        let offset = match (stored, start) {
            (Some(KafkaOffset::Offset(offset)), _) if offset >= 0 => KafkaOffset::Offset(offset),
            (_, StartFrom::Earliest) => {
                match consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT) {
                    Ok((low, _)) => KafkaOffset::Offset(low),
                    Err(error) => {
                        tracing::warn!(%error, topic, partition, "start offset unavailable in rebalance");
                        KafkaOffset::Beginning
                    }
                }
            }
            (_, StartFrom::Latest) => {
                match consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT) {
                    Ok((_, high)) => KafkaOffset::Offset(high),
                    Err(error) => {
                        tracing::warn!(%error, topic, partition, "end offset unavailable in rebalance");
                        KafkaOffset::End
                    }
                }
            }
        };
        if let Err(error) = positioned.add_partition_offset(topic, partition, offset) {
            tracing::warn!(%error, topic, partition, "bad start position");
            positioned.add_partition(topic, partition);
        }
    }
    positioned
}

/// Hands partitions to librdkafka (completing the rebalance step that gave them).
fn assign<C, K>(consumer: &K, list: &TopicPartitionList)
where
    C: ConsumerContext,
    K: rdkafka::consumer::Consumer<C>,
{
    let outcome = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_assign(list),
        _ => consumer.assign(list),
    };
    if let Err(error) = outcome {
        tracing::error!(%error, "assign failed");
    }
}

/// Gives revoked partitions back to librdkafka (which then rejoins the group).
fn release<C, K>(consumer: &K, list: &TopicPartitionList)
where
    C: ConsumerContext,
    K: rdkafka::consumer::Consumer<C>,
{
    let outcome = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(list),
        _ => consumer.unassign(),
    };
    if let Err(error) = outcome {
        tracing::error!(%error, "unassign failed");
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            base_consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Positioning costs broker round trips, and this runs on a runtime worker:
                // `poll` does it on a blocking thread. Nothing to position (or nobody left to
                // poll): assign at once.
                let closing = self.closing.load(std::sync::atomic::Ordering::SeqCst);
                if self.partitions_of(tpl).is_empty() || closing {
                    assign(base_consumer, tpl);
                } else {
                    self.push(Rebalance::Assign(tpl.clone()));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // The unassign is deferred to the next poll after the `Revoked` event was
                // returned: until then the member may still commit what it finished (the group
                // cannot move on, so nobody else is given these partitions meanwhile).
                let partitions = self.partitions_of(tpl);
                if partitions.is_empty() || self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    release(base_consumer, tpl);
                } else {
                    self.push(Rebalance::Revoke(partitions, tpl.clone()));
                }
            }
            other => {
                tracing::error!(error = %RDKafkaErrorCode::from(other), "rebalance error");
                if !cooperative {
                    let _ = base_consumer.unassign();
                }
            }
        }
    }
}

/// A member of a consumer group; see the module docs for its event and drain rules.
pub struct KafkaConsumer {
    inner: Arc<Inner>,
    /// The partitions this member's transactional writer may commit: held, or revoked and not
    /// yet released (`held` plus `releasing`), shared with the writer.
    writable: Arc<Mutex<BTreeSet<PartitionId>>>,
    /// Held by the writer across a transaction (read), by `poll` across a release (write): a
    /// partition is never released while a transaction that names it is under way, so its next
    /// holder's stable offset fetch finds that transaction pending (and waits) or ended.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// A member has at most one transactional writer.
    writer_opened: bool,
    /// `None` only while dropping.
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    topic: String,
    /// Where a partition without a committed offset starts.
    start: StartFrom,
    /// An assignment taken from the queue and not yet handed to librdkafka (its positioning
    /// was under way when a poll was cancelled): the next poll finishes it first.
    assigning: Option<TopicPartitionList>,
    /// Partitions per the events returned so far.
    held: BTreeSet<PartitionId>,
    /// Records received but not yet returned (an event went first, or more than `max`).
    pending: VecDeque<Record>,
    /// Partitions revoked by the last returned event, released at the next poll; they may still
    /// be committed until then.
    releasing: Option<(TopicPartitionList, BTreeSet<PartitionId>)>,
    /// Seeks librdkafka refused because the partition was not fetching yet; retried in `poll`.
    pending_seeks: HashMap<PartitionId, Offset>,
}

impl KafkaConsumer {
    fn client(&self) -> &Arc<StreamConsumer<GroupContext>> {
        self.consumer.as_ref().expect("consumer present until drop")
    }

    fn release(&mut self) {
        if let Some((list, partitions)) = self.releasing.take() {
            // the writer stops committing them before librdkafka lets the group move on
            let mut writable = self.writable.lock();
            for partition in &partitions {
                writable.remove(partition);
            }
            drop(writable);
            release(self.client().as_ref(), &list);
        }
    }

    fn apply(&mut self, event: &PollEvent) {
        match event {
            PollEvent::Assigned(partitions) => {
                self.held.extend(partitions.iter().copied());
                self.writable.lock().extend(partitions.iter().copied());
            }
            PollEvent::Revoked(partitions) => {
                for partition in partitions {
                    self.held.remove(partition);
                    self.pending_seeks.remove(partition);
                }
                self.pending
                    .retain(|record| !partitions.contains(&record.partition));
            }
            PollEvent::Records(_) | PollEvent::Idle => {}
        }
    }

    /// Moves the fetch position with librdkafka's `seek`, which bumps the partition's fetch
    /// version synchronously (messages fetched from the old position are discarded). Start
    /// positions are always absolute (see `GroupContext::positioned`), so no offset lookup of
    /// the assignment can race with it; a seek refused because the fetcher has not started yet
    /// is retried by `poll`.
    fn try_seek(&self, partition: PartitionId, offset: Offset) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            &self.topic,
            partition as i32,
            KafkaOffset::Offset(offset as i64),
        )?;
        let answer = self
            .client()
            .seek_partitions(list, Duration::from_secs(1))?;
        for element in answer.elements() {
            element.error()?;
        }
        Ok(())
    }

    fn retry_seeks(&mut self) {
        let seeks: Vec<(PartitionId, Offset)> =
            self.pending_seeks.iter().map(|(p, o)| (*p, *o)).collect();
        for (partition, offset) in seeks {
            if self.try_seek(partition, offset).is_ok() {
                self.pending_seeks.remove(&partition);
                self.pending.retain(|record| record.partition != partition);
            }
        }
    }

    fn take_records(&mut self, max: usize) -> Vec<Record> {
        let mut records = Vec::new();
        while records.len() < max {
            let Some(record) = self.pending.pop_front() else {
                break;
            };
            if self.held.contains(&record.partition)
                && !self.pending_seeks.contains_key(&record.partition)
            {
                records.push(record);
            }
        }
        records
    }

    fn accept(&mut self, message: &BorrowedMessage<'_>) {
        if message.topic() == self.topic {
            self.pending.push_back(to_record(message));
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max_records: usize, timeout: Duration) -> Result<PollEvent, LogError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let consumer = Arc::clone(self.client());
        if self.releasing.is_some() {
            let gate = Arc::clone(&self.gate);
            let _no_transaction_under_way = gate.write().await;
            self.release();
        }
        loop {
            if self.assigning.is_none() {
                match consumer.context().events.lock().pop_front() {
                    Some(Rebalance::Assign(list)) => self.assigning = Some(list),
                    Some(Rebalance::Revoke(partitions, list)) => {
                        self.releasing = Some((list, partitions.iter().copied().collect()));
                        let event = PollEvent::Revoked(partitions);
                        self.apply(&event);
                        return Ok(event);
                    }
                    None => {}
                }
            }
            if let Some(list) = self.assigning.clone() {
                let client = Arc::clone(&consumer);
                let start = self.start;
                let positioned_list =
                    tokio::task::spawn_blocking(move || positioned(client.as_ref(), start, &list))
                        .await
                        .map_err(join_error)?;
                self.assigning = None;
                assign(consumer.as_ref(), &positioned_list);
                let event = PollEvent::Assigned(partitions_of(&self.topic, &positioned_list));
                self.apply(&event);
                return Ok(event);
            }
            if !self.pending_seeks.is_empty() {
                self.retry_seeks();
            }
            let records = self.take_records(max_records.max(1));
            if !records.is_empty() {
                return Ok(PollEvent::Records(records));
            }
            let received = tokio::select! {
                received = consumer.recv() => Some(received),
                () = consumer.context().notify.notified() => None,
                () = tokio::time::sleep_until(deadline) => return Ok(PollEvent::Idle),
            };
            match received {
                None => {}
                Some(Ok(message)) => {
                    self.accept(&message);
                    drop(message);
                    // Take what is already there, without waiting, up to the limit.
                    while self.pending.len() < max_records {
                        match consumer.recv().now_or_never() {
                            Some(Ok(message)) => self.accept(&message),
                            Some(Err(_)) | None => break,
                        }
                    }
                }
                Some(Err(error)) => {
                    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
                        // The group gave this member's place to another (a static member
                        // replaced): fencing, as its writer would be told.
                        if let Some((RDKafkaErrorCode::FencedInstanceId, reason)) =
                            consumer.client().fatal_error()
                        {
                            tracing::warn!(reason, "group member fenced");
                            return Err(LogError::Fenced {
                                topic: self.topic.clone(),
                                partition: self.held.first().copied().unwrap_or(0),
                            });
                        }
                        return Err(backend(error));
                    }
                    tracing::debug!(%error, "transient consumer error");
                }
            }
        }
    }

    fn seek(&mut self, partition: PartitionId, offset: Offset) -> Result<(), LogError> {
        if !self.held.contains(&partition) {
            return Err(LogError::NotAssigned {
                topic: self.topic.clone(),
                partition,
            });
        }
        self.pending.retain(|record| record.partition != partition);
        match self.try_seek(partition, offset) {
            Ok(()) => {
                self.pending_seeks.remove(&partition);
            }
            Err(error) => {
                tracing::debug!(%error, partition, offset, "seek deferred until the partition fetches");
                self.pending_seeks.insert(partition, offset);
            }
        }
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(PartitionId, Offset)]) -> Result<(), LogError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            let releasing = self
                .releasing
                .as_ref()
                .is_some_and(|(_, partitions)| partitions.contains(partition));
            if !self.held.contains(partition) && !releasing {
                return Err(LogError::NotAssigned {
                    topic: self.topic.clone(),
                    partition: *partition,
                });
            }
            list.add_partition_offset(
                &self.topic,
                *partition as i32,
                KafkaOffset::Offset(*offset as i64),
            )
            .map_err(backend)?;
        }
        let consumer = Arc::clone(self.client());
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(join_error)?
            .map_err(backend)
    }

    async fn transactional_writer(
        &mut self,
        id: &str,
    ) -> Result<Box<dyn TransactionalWriter>, LogError> {
        if self.writer_opened {
            return Err(LogError::Backend(
                "this member already has a transactional writer".into(),
            ));
        }
        let writer = self
            .inner
            .open_transactional_writer(
                id,
                Arc::downgrade(self.client()),
                &self.topic,
                Arc::clone(&self.writable),
                Arc::clone(&self.gate),
            )
            .await?;
        self.writer_opened = true;
        Ok(writer)
    }

    fn assignment(&self) -> Vec<PartitionId> {
        self.held.iter().copied().collect()
    }

    /// The first record received but not returned yet, else librdkafka's position, which moves
    /// past transaction markers as the consumer reads on.
    fn position(&self, partition: PartitionId) -> Option<Offset> {
        if !self.held.contains(&partition) || self.pending_seeks.contains_key(&partition) {
            return None;
        }
        if let Some(record) = self
            .pending
            .iter()
            .find(|record| record.partition == partition)
        {
            return Some(record.offset);
        }
        let positions = self.client().position().ok()?;
        let element = positions.find_partition(&self.topic, partition as i32)?;
        match element.offset() {
            KafkaOffset::Offset(offset) if offset >= 0 => Some(offset as Offset),
            _ => None,
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Closing leaves the group and may block for a round trip; keep it off async workers
        // when there is a runtime.
        if self.consumer.is_none() {
            return;
        }
        // Closing waits for deferred unassigns: do them first, and release at once from now on.
        self.release();
        // the writer commits nothing more for a member that left
        self.writable.lock().clear();
        let client = Arc::clone(self.client());
        client
            .context()
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Assignments never handed over are assigned as they are (nobody reads them now), so
        // the close's own revocation finds librdkafka where it expects; queued revocations
        // are released.
        if let Some(list) = self.assigning.take() {
            assign(client.as_ref(), &list);
        }
        let queued: Vec<Rebalance> = client.context().events.lock().drain(..).collect();
        for rebalance in &queued {
            match rebalance {
                Rebalance::Assign(list) => assign(client.as_ref(), list),
                Rebalance::Revoke(_, list) => release(client.as_ref(), list),
            }
        }
        drop(client);
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(move || drop(consumer))),
            Err(_) => drop(consumer),
        }
    }
}
