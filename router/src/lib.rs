//! The router: the sequencer and delivery stage.
//!
//! It consumes `ingress` in the consumer group `chorus-router`. Each assigned partition gets a
//! worker that owns the partition's [`state::SequencerState`] and is the single writer of the
//! same partition of `timeline`. Exactly once is Kafka's consume-transform-produce design
//! (KIP-447), through the port's transactional writer (`Consumer::transactional_writer`):
//!
//! 1. the process has **one transactional writer**, `transactional.id`
//!    `<prefix>chorus-router-<node_id>`, driven by the [`committer`] task: each cycle commits the
//!    timeline records of every partition that has work together with their `ingress` offsets
//!    and the group's metadata, in one transaction. It is fenced by the consumer group: a
//!    zombie (a router that lost its partitions without noticing: a long pause) is no longer in
//!    the group's generation, so its transaction is refused and aborted, and nothing it wrote
//!    becomes visible. On assignment, the partition's state is recovered once the group says
//!    no earlier holder's transaction can still commit (the `Assigned` event comes after a
//!    stable offset fetch): the newest usable snapshot of the partition's state ([`snapshot`],
//!    in `timeline-snapshots`, written by the owner every `router.snapshot_every_events`
//!    events) is restored and the `timeline` after it folded in (without a usable snapshot, the
//!    whole partition). The ingress position to resume from is one past the highest
//!    `ingress_offset` found there: the checkpoint lives in the sequencer's own output and
//!    moves atomically with it, so an ingress record is sequenced at most once, and exactly once
//!    once its transaction committed. (The committed `ingress` offsets move in the same
//!    transactions; they are what fences it, and what lag is measured by.)
//! 2. each batch of ingress records is decoded (undecodable or invalid records from business
//!    systems go to the dead-letter topic with the reason in a header), decided, and the
//!    sequenced events are appended to `timeline` in one call;
//! 3. only after that append returns (the events are durable) are acks sent to senders and
//!    events delivered to every online session of every member, through presence and the node
//!    bus. While presence or the bus fails (Redis down, breaker open), acks go to their node
//!    and events to every node over the broadcast path ([`BroadcastBus`], a `deliveries` topic
//!    each ingest node tails and filters locally); targeted delivery resumes as soon as they
//!    answer again. Live delivery is best effort; clients fill gaps from history. Each timeline
//!    delivery carries the worker's ownership epoch (the `timeline` end it recovered to) and the
//!    event's seq, so nodes drop what a router sends after losing the partition and never put an
//!    event behind a later one on a connection; and a new owner first delivers again the last
//!    `router.takeover_redelivery_events` events, the tail an earlier owner may not have sent;
//! 4. a failed timeline append stops the router with an error (crash-only, never retried:
//!    `worker::append_timeline_batch_crash_only`): the state may hold events the log lacks, and a
//!    retry could append the batch twice, so only recovery from the log by the partition's next
//!    owner is trusted. A fenced commit means the group gave the partition to another router:
//!    nothing of the batch is acknowledged;
//! 5. on revocation and shutdown the worker finishes the batches it was given (explicit drain),
//!    bounded by half the consumer group's session timeout, so the next owner is not kept
//!    waiting; past that the worker is aborted, which loses nothing (see `drain`).

mod committer;
pub mod group_limits;
pub mod regions;
pub mod snapshot;
pub mod state;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::broadcast::BroadcastBus;
use chorus_core::config::{RouterConfig, Topics};
use chorus_core::metrics::Metrics;
use chorus_core::presence::{LocalBus, LocalPresence, NodeBus, Presence};
use chorus_log::{
    EventLog, LogError, Offset, PartitionId, PollEvent, Record, StartFrom, TopicSettings,
    by_partition,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The consumer group of routers on `ingress`: `<topic prefix>chorus-router`, so deployments
/// that share a Kafka cluster under different prefixes never share a group.
pub fn router_group(config: &RouterConfig) -> String {
    format!("{}chorus-router", config.topic_prefix)
}

/// The `transactional.id` of the router process's writer: `<topic prefix>chorus-router-<node
/// id>`, the same across restarts of one node (its new run aborts what the old one left open)
/// and different between nodes (`node_id` is unique per process in a cluster).
pub fn transactional_id(config: &RouterConfig) -> String {
    format!("{}chorus-router-{}", config.topic_prefix, config.node_id)
}

/// Why the router stopped. Every variant but `WorkerExited` keeps its cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// A worker returned without an error while the router still ran.
    #[error("partition {partition} worker stopped: exited")]
    WorkerExited { partition: PartitionId },
    /// The region relay returned without an error while the router still ran.
    #[error("region relay stopped: exited")]
    RelayExited,
    /// The region relay's task panicked or was cancelled.
    #[error("region relay stopped: {source}")]
    RelayTask {
        #[source]
        source: tokio::task::JoinError,
    },
    /// A worker's task panicked or was cancelled.
    #[error("partition {partition} worker stopped: {source}")]
    WorkerTask {
        partition: PartitionId,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A worker's notifier task (acks and deliveries) panicked or was cancelled.
    #[error("partition {partition} worker stopped: notifier: {source}")]
    NotifierTask {
        partition: PartitionId,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A timeline record could not be decoded during recovery: the state would come out short
    /// and seqs be reused, so the partition is refused.
    #[error(
        "partition {partition} worker stopped: timeline offset {offset} cannot be decoded ({source}); is this binary older than the data?"
    )]
    UndecodableTimeline {
        partition: PartitionId,
        offset: chorus_log::Offset,
        #[source]
        source: chorus_schemas::CodecError,
    },
    /// A decided event could not be encoded for `timeline`.
    #[error("partition {partition} worker stopped: encoding timeline: {source}")]
    EncodeTimeline {
        partition: PartitionId,
        #[source]
        source: chorus_schemas::CodecError,
    },
}

/// Everything the router needs, built once by the binary.
#[derive(Clone)]
pub struct RouterContext {
    /// The router's slice of the configuration.
    pub config: Arc<RouterConfig>,
    pub log: Arc<dyn EventLog>,
    pub presence: Arc<dyn Presence>,
    pub bus: Arc<dyn NodeBus>,
    /// The broadcast path for deliveries and acks while presence or the bus is unavailable
    /// (distributed roles); `None` where both are in-process and cannot fail.
    pub fallback: Option<Arc<BroadcastBus>>,
    pub metrics: Arc<Metrics>,
}

impl RouterContext {
    /// A router whose presence and node bus live in this process ([`LocalPresence`],
    /// [`LocalBus`], both new and empty) and that has no broadcast fallback: what a test or a
    /// bench needs. Where another stage must share the presence or the bus, or a test attaches
    /// its own node to the bus, set that field over this one
    /// (`RouterContext { bus, ..RouterContext::in_process(config, log, metrics) }`).
    pub fn in_process(
        config: Arc<RouterConfig>,
        log: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
    ) -> RouterContext {
        RouterContext {
            config,
            log,
            presence: Arc::new(LocalPresence::default()),
            bus: Arc::new(LocalBus::default()),
            fallback: None,
            metrics,
        }
    }

    fn topics(&self) -> Topics {
        self.config.topics()
    }
}

/// A running partition worker.
struct WorkerHandle {
    /// Batches of ingress records for the worker; bounded, so a slow worker slows polling.
    batches: mpsc::Sender<Vec<Record>>,
    /// The worker task; its result says why it stopped.
    task: JoinHandle<Result<(), RouterError>>,
}

/// Runs the router until `shutdown` is cancelled or a partition worker fails.
pub async fn run(context: RouterContext, shutdown: CancellationToken) -> Result<(), RouterError> {
    let topics = context.topics();
    context.log.ensure_topic(&topics.ingress).await?;
    context.log.ensure_topic(&topics.timeline).await?;
    context.log.ensure_topic(&topics.dead_letter).await?;
    if context.config.notifications {
        context.log.ensure_topic(&topics.notifications).await?;
    }
    if context.config.router.snapshot_every_events > 0 {
        context
            .log
            .ensure_topic_with(&topics.timeline_snapshots, TopicSettings::compacted())
            .await?;
    }
    for peer in &context.config.regions.peers {
        context.log.ensure_topic(&topics.forward(peer)).await?;
    }
    // with `[regions]`, the relay copies the peers' mirrored topics into `ingress`
    let relay_stop = shutdown.child_token();
    let mut relay = context
        .config
        .regions
        .enabled()
        .then(|| tokio::spawn(regions::relay(context.clone(), relay_stop.clone())));
    let mut consumer = context
        .log
        .consumer(
            &router_group(&context.config),
            &topics.ingress,
            StartFrom::Earliest,
        )
        .await?;
    let writer = consumer
        .transactional_writer(&transactional_id(&context.config))
        .await?;
    let (committer, committer_task) = committer::Committer::start(writer, topics.timeline.clone());
    let mut workers: HashMap<PartitionId, WorkerHandle> = HashMap::new();
    let batch_records = context.config.router.batch_records;
    let drain_limit = context.config.drain_timeout;
    let outcome = loop {
        if let Some(failed) = finished_worker(&mut workers).await {
            break Err(failed);
        }
        if let Some(task) = relay.take_if(|task| task.is_finished()) {
            break Err(match task.await {
                Ok(Ok(())) => RouterError::RelayExited,
                Ok(Err(error)) => error,
                Err(source) => RouterError::RelayTask { source },
            });
        }
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            polled = consumer.poll(batch_records, Duration::from_millis(250)) => polled,
        };
        match polled? {
            PollEvent::Assigned(partitions) => {
                for partition in partitions {
                    // No earlier holder's transaction can commit any more (`Assigned` comes
                    // after a stable offset fetch, and the group fences a zombie): recover.
                    let recovered = worker::recover(&context, partition).await?;
                    let resume = recovered.state.next_ingress_offset();
                    consumer.seek(partition, resume)?;
                    let owner_epoch = recovered.owner_epoch;
                    tracing::debug!(
                        partition,
                        resume,
                        owner_epoch,
                        "sequencer partition assigned"
                    );
                    context
                        .metrics
                        .router_partition_epoch
                        .with_label_values(&[partition.to_string().as_str()])
                        .set(i64::try_from(owner_epoch).unwrap_or(i64::MAX));
                    let (batches, receiver) = mpsc::channel(4);
                    let task = tokio::spawn(worker::run(
                        context.clone(),
                        partition,
                        recovered,
                        committer.clone(),
                        receiver,
                    ));
                    workers.insert(partition, WorkerHandle { batches, task });
                }
            }
            PollEvent::Revoked(partitions) => {
                // Drained before the next poll: until then the writer may still commit them.
                for partition in partitions {
                    let _ = context
                        .metrics
                        .router_partition_epoch
                        .remove_label_values(&[partition.to_string().as_str()]);
                    if let Some(handle) = workers.remove(&partition) {
                        drain(partition, handle, drain_limit).await?;
                    }
                }
            }
            PollEvent::Records(records) => {
                for (partition, batch) in by_partition(records) {
                    let Some(handle) = workers.get(&partition) else {
                        continue;
                    };
                    if handle.batches.send(batch).await.is_err() {
                        // the worker stopped; its result is collected at the top of the loop
                        continue;
                    }
                }
            }
            PollEvent::Idle => {}
        }
    };
    relay_stop.cancel();
    if let Some(task) = relay
        && tokio::time::timeout(drain_limit, task).await.is_err()
    {
        tracing::warn!(?drain_limit, "region relay did not stop in time");
    }
    for (partition, handle) in workers.drain() {
        drain(partition, handle, drain_limit).await?;
    }
    // every worker is gone: the committer ends once its last batch is answered
    drop(committer);
    if tokio::time::timeout(drain_limit, committer_task)
        .await
        .is_err()
    {
        tracing::warn!(?drain_limit, "committer did not finish in time");
    }
    outcome
}

/// A partition's sequencer state as a new owner recovers it, and where its fold started.
pub struct RecoveredPartition {
    pub state: state::SequencerState,
    /// The offset the restored snapshot covers; `None` when the fold started at 0.
    pub snapshot_covers: Option<Offset>,
    /// The `timeline` end the state folds up to.
    pub timeline_end: Offset,
}

/// Recovers a partition's state the way a newly assigned worker does (newest usable snapshot,
/// then the timeline after it), without owning the partition: for tools that measure recovery.
/// Without the partition assigned, the timeline may still grow behind the result.
pub async fn recover_partition(
    context: &RouterContext,
    partition: PartitionId,
) -> Result<RecoveredPartition, RouterError> {
    let recovered = worker::recover(context, partition).await?;
    Ok(RecoveredPartition {
        state: recovered.state,
        snapshot_covers: recovered.snapshot_covers,
        timeline_end: recovered.owner_epoch,
    })
}

/// Returns the error of a worker that has stopped, if any.
async fn finished_worker(workers: &mut HashMap<PartitionId, WorkerHandle>) -> Option<RouterError> {
    let finished = workers
        .iter()
        .find(|(_, handle)| handle.task.is_finished())
        .map(|(p, _)| *p)?;
    let handle = workers.remove(&finished)?;
    match handle.task.await {
        Ok(Ok(())) => Some(RouterError::WorkerExited {
            partition: finished,
        }),
        Ok(Err(error)) => Some(error),
        Err(join_error) => Some(RouterError::WorkerTask {
            partition: finished,
            source: join_error,
        }),
    }
}

/// Lets a worker finish the batches it has, then stops it; bounded by `limit` (half the
/// consumer group's session timeout), after which the worker is aborted. Aborting is safe: what
/// it had not acknowledged is sequenced again by the next owner; a transaction of it still in
/// flight either commits before the next owner is told `Assigned` (the stable offset fetch
/// waits for it) or never (the group has moved on: its offsets are refused).
async fn drain(
    partition: PartitionId,
    handle: WorkerHandle,
    limit: Duration,
) -> Result<(), RouterError> {
    drop(handle.batches);
    let mut task = handle.task;
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => Err(RouterError::WorkerTask {
            partition,
            source: join_error,
        }),
        Err(_) => {
            tracing::warn!(partition, ?limit, "worker did not drain in time; aborted");
            task.abort();
            Ok(())
        }
    }
}
