//! One partition's sequencer: recover, then decide → append → ack and deliver, batch by batch.
//!
//! Acks and deliveries of a batch are handed, once its append returned, to the partition's
//! notifier task, which sends them in batch order while the next batch is decided and appended:
//! nothing is acknowledged before it is durable, and per-conversation order is kept.
//!
//! Every delivery of a timeline frame carries its [`Sequencing`]: the partition, this worker's
//! ownership epoch (the `timeline` end found when it recovered the partition, see
//! [`chorus_core::presence::Sequencing`]), the conversation and the seq, so that nodes can drop
//! what a router sends after it lost the partition (a paused process resumed) and keep each
//! connection's seq order. Before anything else a new owner delivers again the last
//! `router.takeover_redelivery_events` events of the partition: the committed tail an earlier
//! owner may not have sent; nodes drop what a connection already got.
//!
//! Recovery starts from the newest usable snapshot ([`crate::snapshot`]) and folds the timeline
//! after it; every `router.snapshot_every_events` appended events the worker takes a new one
//! between two batches and writes it from a task of its own (at most one in flight).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chorus_core::broadcast::EVERY_NODE;
use chorus_core::presence::{Delivery, Frame, Sequencing};
use chorus_core::protocol::outbound::{EventOutcome, block_json, event_json, mute_json, read_json};
use chorus_core::validate::validate_ingress;
use chorus_log::{NewRecord, Offset, PartitionId, Record};
use chorus_schemas::{EventBody, IngressEvent, TimelineEvent, decode_ingress, encode_timeline};
use tokio::sync::mpsc;

use crate::committer::Committer;

mod mirrored;
mod push;
use crate::regions;
use crate::snapshot::{self, Anchor};
use crate::state::{Decision, SequencerState};
use crate::{RouterContext, RouterError};
use mirrored::{
    Mirrored, mirror_source, mirrored_ack_target, return_record, return_topic, returned_outcome,
};

/// Batches of notices waiting for the notifier before the sequencer waits for it.
const NOTIFY_QUEUE: usize = 8;
/// Queued ingress batches one append may take together, in multiples of `router.batch_records`.
const COALESCE_BATCHES: usize = 4;
/// How often a worker updates its lag gauge.
const LAG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How many timeline records one recovery read asks for.
const RECOVERY_READ: usize = 4096;

/// A partition as recovered by its new owner.
pub(crate) struct Recovered {
    pub(crate) state: SequencerState,
    /// The `timeline` end found at recovery: this owner's epoch.
    pub(crate) owner_epoch: Offset,
    /// Where the fold started: the offset the restored snapshot covers, `None` from 0.
    pub(crate) snapshot_covers: Option<Offset>,
    /// Deliveries of the partition's last sequenced events, sent again before anything else.
    tail: Vec<Notice>,
}

/// Rebuilds a partition's state from its `timeline`, and the deliveries of its last
/// `router.takeover_redelivery_events` sequenced events (with the members each had then).
/// Call it only once the partition was assigned (`Assigned` comes once no earlier holder's
/// transaction can still commit), so no earlier owner can add to the timeline behind the
/// recovered state (and the end found is an ownership epoch).
pub(crate) async fn recover(
    context: &RouterContext,
    partition: PartitionId,
) -> Result<Recovered, RouterError> {
    let topics = context.config.topics();
    let mut state = SequencerState::for_config(&context.config);
    let end = context.log.end_offset(&topics.timeline, partition).await?;
    let owner = Owner {
        partition,
        epoch: end,
    };
    let tail_events = context.config.router.takeover_redelivery_events;
    // On Kafka each transaction adds a marker, so the last n events lie within the last 2n
    // offsets; members are only worked out for events there.
    let tail_from = end.saturating_sub(2 * tail_events as u64);
    let mut tail: VecDeque<Notice> = VecDeque::with_capacity(tail_events.min(RECOVERY_READ));
    let mut position = 0;
    let mut snapshot_covers = None;
    if context.config.router.snapshot_every_events > 0 {
        // The fold must start at or before `tail_from`: the tail is delivered to the members
        // each event had, which only a fold through it knows. Snapshots are at least
        // `snapshot_every_events >= 2 * tail_events` apart, so the one before the newest is
        // always old enough.
        let loaded = snapshot::load(
            context.log.as_ref(),
            &context.metrics,
            &topics.timeline_snapshots,
            &topics.timeline,
            partition,
            end,
            tail_from,
        )
        .await;
        if let Some(loaded) = loaded {
            state.restore(loaded.image);
            position = loaded.covers;
            snapshot_covers = Some(loaded.covers);
        }
    }
    let from = if snapshot_covers.is_some() {
        "snapshot"
    } else {
        "start"
    };
    context
        .metrics
        .router_recoveries
        .with_label_values(&[from])
        .inc();
    tracing::debug!(
        partition,
        end,
        ?snapshot_covers,
        "recovering the partition's state"
    );
    while position < end {
        let records = context
            .log
            .read_range(&topics.timeline, partition, position, end, RECOVERY_READ)
            .await?;
        let Some(last) = records.last() else {
            break;
        };
        position = last.offset + 1;
        for record in &records {
            // An undecodable record here would make the state (last seq, dedup window, resume
            // point) come out short and seqs be reused: refuse the partition instead.
            let event = chorus_schemas::decode_timeline(&record.value).map_err(|source| {
                RouterError::UndecodableTimeline {
                    partition,
                    offset: record.offset,
                    source,
                }
            })?;
            state.apply(&event);
            if tail_events > 0
                && record.offset >= tail_from
                && event.seq.is_some()
                && !matches!(event.body, EventBody::ReadCursorMoved { .. })
            {
                if tail.len() == tail_events {
                    tail.pop_front();
                }
                // delivered again, not notified again: the previous owner wrote their
                // notifications (or died first, and those are lost: worker/push.rs)
                tail.extend(sequenced_notices(&state, &event, None, owner, false));
            }
        }
    }
    if context.config.regions.enabled() {
        // events this partition forwarded moved its ingress position without a timeline record
        let forwarded = crate::regions::forwarded_through(context, partition).await?;
        state.handled_through(forwarded);
    }
    Ok(Recovered {
        state,
        owner_epoch: end,
        snapshot_covers,
        tail: tail.into(),
    })
}

/// The partition a worker owns and its ownership epoch, stamped on every timeline delivery.
#[derive(Clone, Copy)]
struct Owner {
    partition: PartitionId,
    epoch: Offset,
}

/// What to tell whom once a batch is durable.
enum Notice {
    /// An event's outcome for its sender's session: its ack (again, for a retried id) or its
    /// error. It stays typed until the sender's node writes it to the socket.
    ToSender {
        node: String,
        session: String,
        outcome: EventOutcome,
    },
    /// A sequenced event (or read mark) for the conversation's members, and a message's push
    /// notifications for those of them found offline.
    Deliver {
        members: Vec<String>,
        frame: Frame,
        sequencing: Sequencing,
        push: Option<push::PushCandidate>,
    },
}

pub(crate) async fn run(
    context: RouterContext,
    partition: PartitionId,
    recovered: Recovered,
    committer: Committer,
    mut batches: mpsc::Receiver<Vec<Record>>,
) -> Result<(), RouterError> {
    let Recovered {
        mut state,
        owner_epoch,
        tail,
        ..
    } = recovered;
    let owner = Owner {
        partition,
        epoch: owner_epoch,
    };
    let topics = context.config.topics();
    let partition_label = partition.to_string();
    // Acks and deliveries go out in batch order from a task of their own, so the next batch's
    // append overlaps this batch's Redis round trips; the channel is bounded, so a slow bus
    // slows sequencing rather than piling notices up.
    let (notices_out, mut notices_in) = mpsc::channel::<Vec<Notice>>(NOTIFY_QUEUE);
    let notifier = {
        let context = context.clone();
        tokio::spawn(async move {
            while let Some(notices) = notices_in.recv().await {
                let notifying = std::time::Instant::now();
                let notice_count = notices.len();
                notify(&context, notices).await;
                tracing::trace!(partition, notice_count, elapsed = ?notifying.elapsed(), "batch notified");
            }
        })
    };
    if !tail.is_empty() {
        tracing::debug!(
            partition,
            owner_epoch,
            count = tail.len(),
            "delivering the partition's last events again"
        );
        if notices_out.send(tail).await.is_err() {
            tracing::warn!(partition, "notifier stopped before the redelivery");
        }
    }
    let max_batch = context.config.router.batch_records.max(1) * COALESCE_BATCHES;
    let mut lag_updated: Option<std::time::Instant> = None;
    let mut snapshots = Snapshots::new(context.config.router.snapshot_every_events);
    let mut mirrored = Mirrored::default();
    while let Some(mut batch) = batches.recv().await {
        // under load, batches queue up while a transaction commits: take them all in one
        while batch.len() < max_batch
            && let Ok(more) = batches.try_recv()
        {
            batch.extend(more);
        }
        let mut timeline_records = Vec::with_capacity(batch.len());
        let mut forwards: Vec<(String, NewRecord)> = Vec::new();
        let mut dead_letters = Vec::new();
        let mut notices = Vec::with_capacity(batch.len());
        for record in batch {
            if record.offset < state.next_ingress_offset() {
                continue; // already sequenced before a restart or rebalance
            }
            let offset = record.offset;
            state.handled_through(offset + 1);
            if let Some(source) = mirror_source(&context, &record) {
                let applied = mirrored.decide(&context, &mut state, &record, source, offset);
                match applied {
                    Ok(applied) => {
                        for (event, record) in applied {
                            notices.extend(sequenced_notices(
                                &state,
                                &event,
                                mirrored_ack_target(&context, &event, &record),
                                owner,
                                context.config.notifications,
                            ));
                            timeline_records.push(record);
                        }
                    }
                    Err(error) => dead_letters.push(dead_letter(
                        &record,
                        &topics.ingress,
                        "undecodable",
                        &error,
                    )),
                }
                continue;
            }
            let event = match decode_ingress(&record.value) {
                Ok(event) => event,
                Err(error) => {
                    dead_letters.push(dead_letter(
                        &record,
                        &topics.ingress,
                        "undecodable",
                        &error.to_string(),
                    ));
                    continue;
                }
            };
            if record.header(regions::OUTCOME_HEADER).is_some() {
                // the outcome of an event this region forwarded, sent back by its home
                match returned_outcome(&context, &record, &event) {
                    Some(notice) => notices.push(notice),
                    None => tracing::debug!(offset, "returned outcome without a local sender"),
                }
                continue;
            }
            let origin = origin_of(&context, &event);
            let returns_to = return_topic(&context, &event);
            if let Err(error) = validate_ingress(&event, &context.config.limits) {
                context.metrics.reject(error.code.as_str());
                let outcome = EventOutcome::Failed {
                    client_msg_id: event.client_msg_id.clone(),
                    error,
                };
                match (origin, returns_to) {
                    (Some((node, session)), _) => notices.push(Notice::ToSender {
                        node,
                        session,
                        outcome,
                    }),
                    (None, Some(topic)) => forwards.push((topic, return_record(&record, &outcome))),
                    (None, None) => {
                        let EventOutcome::Failed { error, .. } = outcome else {
                            unreachable!("built as Failed above")
                        };
                        dead_letters.push(dead_letter(
                            &record,
                            &topics.ingress,
                            error.code.as_str(),
                            &error.message,
                        ))
                    }
                }
                continue;
            }
            let client_msg_id = event.client_msg_id.clone();
            let conversation = event.conversation.clone();
            let remote_origin = (event.origin_node.clone(), event.origin_session.clone());
            match state.decide(event, offset) {
                Decision::Sequence(timeline_event) => {
                    let value = encode_timeline(&timeline_event)
                        .map_err(|source| RouterError::EncodeTimeline { partition, source })?;
                    let mut timeline_record =
                        NewRecord::new(timeline_event.conversation.as_bytes(), value);
                    if origin.is_none()
                        && let (Some(node), Some(session)) = (&remote_origin.0, &remote_origin.1)
                    {
                        // forwarded from another region: its router acks the sender once the
                        // event came back through the mirror
                        timeline_record = timeline_record
                            .with_header(regions::ORIGIN_NODE_HEADER, node.as_str())
                            .with_header(regions::ORIGIN_SESSION_HEADER, session.as_str());
                    }
                    timeline_records.push(timeline_record);
                    notices.extend(sequenced_notices(
                        &state,
                        &timeline_event,
                        origin,
                        owner,
                        context.config.notifications,
                    ));
                }
                Decision::Forward { home } => {
                    context
                        .metrics
                        .region_forwarded
                        .with_label_values(&[home.as_str()])
                        .inc();
                    let mut forward = NewRecord::new(record.key.clone(), record.value.clone())
                        .with_header(regions::FORWARDED_FROM_HEADER, offset.to_string());
                    forward.headers.extend(record.headers.iter().cloned());
                    forwards.push((topics.forward(&home), forward));
                    if let Some((node, session)) = origin {
                        notices.push(Notice::ToSender {
                            node,
                            session,
                            outcome: EventOutcome::Accepted {
                                client_msg_id,
                                conversation,
                                home,
                            },
                        });
                    }
                }
                Decision::Duplicate { seq, event_id } => {
                    let outcome = EventOutcome::Acked {
                        client_msg_id,
                        conversation,
                        seq,
                        event_id,
                    };
                    match (origin, returns_to) {
                        (Some((node, session)), _) => notices.push(Notice::ToSender {
                            node,
                            session,
                            outcome,
                        }),
                        // a retry forwarded from another region: its sender may be on a new
                        // session, which only this answer reaches
                        (None, Some(topic)) => {
                            forwards.push((topic, return_record(&record, &outcome)))
                        }
                        (None, None) => {}
                    }
                }
                Decision::Reject(error) => {
                    context.metrics.reject(error.code.as_str());
                    match (origin, returns_to) {
                        (Some((node, session)), _) => notices.push(Notice::ToSender {
                            node,
                            session,
                            outcome: EventOutcome::Failed {
                                client_msg_id,
                                error,
                            },
                        }),
                        // refused by its home after the forwarding region accepted it (the
                        // conversation changed in between): the sender learns why
                        (None, Some(topic)) => {
                            let outcome = EventOutcome::Failed {
                                client_msg_id,
                                error,
                            };
                            forwards.push((topic, return_record(&record, &outcome)));
                        }
                        (None, None) => dead_letters.push(dead_letter(
                            &record,
                            &topics.ingress,
                            error.code.as_str(),
                            &error.message,
                        )),
                    }
                }
            }
        }
        // Dead letters first: the resume point comes from the timeline, so a crash after the
        // timeline append and before this one would lose them; this order makes them at least
        // once (a restart may repeat some; `source_partition`/`source_offset` identify them).
        if !dead_letters.is_empty() {
            for record in &dead_letters {
                let reason = record.headers.iter().find(|(name, _)| name == "reason");
                let reason = reason
                    .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                    .unwrap_or_default();
                context
                    .metrics
                    .dead_letters
                    .with_label_values(&[reason.as_str()])
                    .inc();
            }
            context
                .log
                .append(&topics.dead_letter, dead_letters)
                .await?;
        }
        if !timeline_records.is_empty() || !forwards.is_empty() {
            let count = timeline_records.len() as u64;
            let last_value_crc = timeline_records
                .last()
                .map(|last| crc32fast::hash(&last.value));
            let appending = std::time::Instant::now();
            let offsets = append_timeline_batch_crash_only(
                &committer,
                partition,
                timeline_records,
                forwards,
                state.next_ingress_offset(),
            )
            .await?;
            tracing::trace!(partition, count, elapsed = ?appending.elapsed(), "timeline batch appended");
            context.metrics.events_sequenced.inc_by(count);
            if let (Some(last_offset), Some(last_value_crc)) = (offsets.last(), last_value_crc) {
                let anchor = Anchor {
                    offset: *last_offset,
                    value_crc: last_value_crc,
                };
                snapshots.appended(&context, &state, owner, anchor, offsets.len());
            }
        }
        if !notices.is_empty() && notices_out.send(notices).await.is_err() {
            break; // the notifier only stops if it panicked; its join below reports it
        }
        // the lag gauge costs a broker round trip on Kafka: at most once a second
        if lag_updated.is_none_or(|at| at.elapsed() >= LAG_INTERVAL) {
            lag_updated = Some(std::time::Instant::now());
            let end = context
                .log
                .end_offset(&topics.ingress, partition)
                .await
                .unwrap_or(0);
            let lag = end.saturating_sub(state.next_ingress_offset());
            context
                .metrics
                .consumer_lag
                .with_label_values(&["router", partition_label.as_str()])
                .set(lag as i64);
        }
    }
    // a drained worker has told everyone about everything it appended
    drop(notices_out);
    notifier
        .await
        .map_err(|source| RouterError::NotifierTask { partition, source })?;
    snapshots.finish().await;
    Ok(())
}

/// When the worker snapshots its state, and the snapshot being written.
struct Snapshots {
    /// `router.snapshot_every_events`; 0: never.
    every: usize,
    /// Events appended since the last snapshot was taken.
    since_last: usize,
    /// The snapshot being compressed and written; at most one per partition.
    in_flight: Option<tokio::task::JoinHandle<()>>,
    /// The slot the next snapshot goes to (compaction keeps the newest of each of two).
    slot: u8,
}

impl Snapshots {
    fn new(every: usize) -> Self {
        Snapshots {
            every,
            since_last: 0,
            in_flight: None,
            slot: 0,
        }
    }

    /// Called after each append returned, with the state that now folds the timeline up to and
    /// including `anchor`. Takes a snapshot once `every` events were appended since the last
    /// one and none is in flight (else it tries again after the next append); the state is
    /// serialized here, compression and the write run in a task of their own.
    fn appended(
        &mut self,
        context: &RouterContext,
        state: &SequencerState,
        owner: Owner,
        anchor: Anchor,
        count: usize,
    ) {
        if self.every == 0 {
            return;
        }
        self.since_last += count;
        if self.since_last < self.every
            || self
                .in_flight
                .as_ref()
                .is_some_and(|writing| !writing.is_finished())
        {
            return;
        }
        self.since_last = 0;
        let metrics = context.metrics.clone();
        // Valid whoever writes it and whenever it lands: it folds timeline[0..anchor], which
        // never changes once appended. A zombie's late snapshot is older than its successor's
        // state, which costs recovery a longer tail, never a wrong state.
        let taken = match snapshot::take(state, owner.partition, anchor, owner.epoch) {
            Ok(taken) => taken,
            Err(error) => {
                tracing::warn!(partition = owner.partition, %error, "snapshot not taken");
                metrics
                    .router_snapshots
                    .with_label_values(&["failed"])
                    .inc();
                return;
            }
        };
        let slot = self.slot;
        self.slot = 1 - self.slot;
        let log = context.log.clone();
        let topic = context.config.topics().timeline_snapshots;
        let partition = owner.partition;
        self.in_flight = Some(tokio::spawn(async move {
            let covers = taken.covers();
            let written = async {
                let records =
                    tokio::task::spawn_blocking(move || snapshot::encode_records(taken, slot))
                        .await
                        .map_err(chorus_log::LogError::backend_failure)?
                        .map_err(chorus_log::LogError::from)?;
                let bytes: usize = records.iter().map(|record| record.value.len()).sum();
                snapshot::write(log.as_ref(), &topic, partition, records).await?;
                Ok::<usize, chorus_log::LogError>(bytes)
            }
            .await;
            match written {
                Ok(bytes) => {
                    tracing::debug!(partition, covers, bytes, "snapshot written");
                    metrics
                        .router_snapshots
                        .with_label_values(&["written"])
                        .inc();
                }
                Err(error) => {
                    // recovery falls back to an older snapshot or the start: slower, never wrong
                    tracing::warn!(partition, covers, %error, "snapshot not written");
                    metrics
                        .router_snapshots
                        .with_label_values(&["failed"])
                        .inc();
                }
            }
        }));
    }

    /// Waits for the snapshot in flight, if any (bounded by the caller's drain limit).
    async fn finish(self) {
        if let Some(writing) = self.in_flight {
            let _ = writing.await;
        }
    }
}

/// Appends a decided batch to the partition's `timeline`, with the partition's `ingress` offset
/// after it, in the router's next transaction ([`Committer`]). Crash-only: never retried. The
/// state has already applied every event of the batch (seqs assigned, dedup window moved) and
/// the transaction may have committed before the failure was seen (a commit whose outcome is
/// unknown), so a retry could write the same events twice under new offsets, and going on
/// without them would leave holes in the seqs. On failure the error stops this worker and with
/// it the router (nothing of the batch is acknowledged); the partition's next owner recovers the
/// state from what the log holds once no transaction of this one can still commit.
async fn append_timeline_batch_crash_only(
    committer: &Committer,
    partition: PartitionId,
    timeline_records: Vec<NewRecord>,
    forwards: Vec<(String, NewRecord)>,
    next_ingress: Offset,
) -> Result<Vec<Offset>, chorus_log::LogError> {
    committer
        .commit(partition, timeline_records, forwards, next_ingress)
        .await
}

/// The sender's node and session to tell the outcome to, when the sender is connected to this
/// region (with `[regions]`, an event forwarded from another region is acked by that region's
/// router once it came back through the mirror).
fn origin_of(context: &RouterContext, event: &IngressEvent) -> Option<(String, String)> {
    if context.config.regions.enabled() && event.origin_cluster != context.config.cluster {
        return None;
    }
    match (&event.origin_node, &event.origin_session) {
        (Some(node), Some(session)) => Some((node.clone(), session.clone())),
        _ => None,
    }
}

fn dead_letter(record: &Record, source_topic: &str, reason: &str, detail: &str) -> NewRecord {
    tracing::warn!(
        partition = record.partition,
        offset = record.offset,
        reason,
        detail,
        "ingress record dead-lettered"
    );
    let mut dead = NewRecord::new(record.key.clone(), record.value.clone())
        .with_header("reason", reason)
        .with_header("detail", detail)
        .with_header("source_topic", source_topic)
        .with_header("source_partition", record.partition.to_string())
        .with_header("source_offset", record.offset.to_string());
    dead.headers.extend(record.headers.iter().cloned());
    dead
}

/// What to tell whom about a sequenced event once it is durable; `notifications`: whether a
/// message makes push notifications (`push.notifications`).
fn sequenced_notices(
    state: &SequencerState,
    event: &TimelineEvent,
    origin: Option<(String, String)>,
    owner: Owner,
    notifications: bool,
) -> Vec<Notice> {
    let mut notices = Vec::with_capacity(2);
    let mut members = state.members(&event.conversation);
    let sequencing = Sequencing {
        partition: owner.partition,
        owner_epoch: owner.epoch,
        conversation: event.conversation.clone(),
        seq: event.seq,
    };
    match (&event.body, event.seq) {
        (EventBody::ReadCursorMoved { seq }, _) => {
            let frame = read_json(&event.conversation, &event.sender, *seq);
            notices.push(Notice::Deliver {
                members,
                frame: frame.to_string().into(),
                sequencing,
                push: None,
            });
        }
        // a mute or a block is the sender's own: only their devices hear of it
        (EventBody::ConversationMuted { muted }, _) => {
            let frame = mute_json(&event.conversation, *muted);
            notices.push(Notice::Deliver {
                members: vec![event.sender.clone()],
                frame: frame.to_string().into(),
                sequencing,
                push: None,
            });
        }
        (EventBody::UserBlocked { blocked }, _) => {
            let other = members
                .iter()
                .find(|member| **member != event.sender)
                .cloned()
                .unwrap_or_default();
            let frame = block_json(&event.conversation, &other, *blocked);
            notices.push(Notice::Deliver {
                members: vec![event.sender.clone()],
                frame: frame.to_string().into(),
                sequencing,
                push: None,
            });
        }
        (_, Some(seq)) => {
            if let Some((node, session)) = origin {
                notices.push(Notice::ToSender {
                    node,
                    session,
                    outcome: EventOutcome::Acked {
                        client_msg_id: event.client_msg_id.clone(),
                        conversation: event.conversation.clone(),
                        seq,
                        event_id: event.event_id.clone(),
                    },
                });
            }
            if let EventBody::MembersRemoved { members: removed }
            | EventBody::ConversationDisbanded { members: removed } = &event.body
            {
                // the removed learn of their removal too
                members.extend(removed.iter().cloned());
            }
            notices.push(Notice::Deliver {
                members,
                frame: event_json(event).to_string().into(),
                sequencing,
                push: notifications
                    .then(|| push::candidate(state, event))
                    .flatten(),
            });
        }
        (_, None) => {}
    }
    notices
}

/// Appends a batch's push notifications (best effort: the messages are durable already; a
/// failure loses these notifications, counted).
async fn append_notifications(context: &RouterContext, records: Vec<NewRecord>) {
    if records.is_empty() {
        return;
    }
    let count = records.len() as u64;
    let topic = context.config.topics().notifications;
    let outcome = match context.log.append(&topic, records).await {
        Ok(_) => "appended",
        Err(error) => {
            tracing::warn!(%error, count, "push notifications lost");
            "failed"
        }
    };
    context
        .metrics
        .notifications
        .with_label_values(&[outcome])
        .inc_by(count);
}

/// Sends acks, errors and deliveries: targeted through presence (one lookup for the whole
/// batch) and the node bus (one `send_many`), and over the broadcast path whatever they could
/// not take (one append). A failure loses only the live delivery; the events are durable and
/// clients fill the gap from history.
async fn notify(context: &RouterContext, notices: Vec<Notice>) {
    let recipients: BTreeSet<&String> = notices
        .iter()
        .filter_map(|notice| match notice {
            Notice::Deliver { members, .. } => Some(members),
            _ => None,
        })
        .flatten()
        .collect();
    // user → the live nodes holding a session of theirs; `None` when presence cannot tell
    let located: Option<HashMap<String, Vec<String>>> = if recipients.is_empty() {
        Some(HashMap::new())
    } else {
        let users: Vec<String> = recipients.into_iter().cloned().collect();
        match context.presence.nodes_of(&users).await {
            Ok(by_node) => {
                tracing::trace!(?by_node, "presence lookup");
                let mut located: HashMap<String, Vec<String>> = HashMap::new();
                for (node, users) in by_node {
                    for user in users {
                        located.entry(user).or_default().push(node.clone());
                    }
                }
                Some(located)
            }
            Err(error) => {
                tracing::debug!(%error, "presence unavailable; deliveries go to every node");
                None
            }
        }
    };
    let mut targeted: Vec<(String, Delivery)> = Vec::with_capacity(notices.len() * 2);
    let mut degraded: Vec<(String, Delivery)> = Vec::new();
    let mut notifications: Vec<NewRecord> = Vec::new();
    for notice in &notices {
        if let Notice::Deliver {
            members,
            push: Some(candidate),
            ..
        } = notice
        {
            notifications.extend(push::records(context, members, candidate, located.as_ref()));
        }
    }
    append_notifications(context, notifications).await;
    for notice in notices {
        match notice {
            Notice::ToSender {
                node,
                session,
                outcome,
            } => {
                if matches!(outcome, EventOutcome::Acked { .. }) {
                    context.metrics.acks.inc();
                }
                targeted.push((node, Delivery::ToSession { session, outcome }));
            }
            Notice::Deliver {
                members,
                frame,
                sequencing,
                push: _,
            } => match &located {
                Some(located) => {
                    let mut by_node: BTreeMap<&String, Vec<String>> = BTreeMap::new();
                    for member in &members {
                        for node in located.get(member).into_iter().flatten() {
                            by_node.entry(node).or_default().push(member.clone());
                        }
                    }
                    for (node, users) in by_node {
                        let delivery = Delivery::ToUsers {
                            users,
                            frame: frame.clone(),
                            sequencing: Some(sequencing.clone()),
                        };
                        targeted.push((node.clone(), delivery));
                    }
                }
                None => degraded.push((
                    EVERY_NODE.to_owned(),
                    Delivery::ToUsers {
                        users: members,
                        frame,
                        sequencing: Some(sequencing),
                    },
                )),
            },
        }
    }
    let unreceived = context.bus.send_many(targeted).await;
    if !unreceived.is_empty() {
        tracing::debug!(
            count = unreceived.len(),
            "node bus could not deliver; those go over the broadcast path"
        );
    }
    degraded.extend(unreceived);
    if degraded.is_empty() {
        return;
    }
    let Some(fallback) = &context.fallback else {
        return;
    };
    for (node, _) in &degraded {
        let kind = if node == EVERY_NODE {
            "broadcast"
        } else {
            "targeted"
        };
        context
            .metrics
            .degraded_deliveries
            .with_label_values(&[kind])
            .inc();
    }
    if let Err(error) = fallback.publish(degraded).await {
        tracing::warn!(%error, "broadcast delivery failed; clients will fill the gap from history");
    }
}

#[cfg(test)]
mod tests;
