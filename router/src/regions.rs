//! One region of several, linked by MirrorMaker 2 (docs/MULTI_REGION.md).
//!
//! Every conversation has one home region, whose router alone gives it seqs
//! ([`crate::state::HomeRule`]). Each region's `timeline` is the complete, ordered record of
//! every conversation the region serves, so projections, search and gap filling read only their
//! own region's `timeline`:
//!
//! - **forward intents**: an event whose conversation is homed elsewhere is appended by the
//!   partition's router to `forward-<home>` in the same transaction that moves its `ingress`
//!   offset, and its sender is told `accepted` ([`FORWARDED_FROM_HEADER`] keeps the `ingress`
//!   offset it came from: the resume point counts it, [`last_forwarded`]);
//! - **mirror results**: MirrorMaker copies `forward-<home>` to the home as
//!   `<region>.forward-<home>`, and each home's `timeline` to every peer as `<home>.timeline`;
//! - **the relay** ([`relay`]) copies both kinds of mirrored topic into the local `ingress`
//!   (consume-transform-produce in transactions, its own consumer group), so the router keeps
//!   one input and one resume point. A forwarded event is sequenced by the home's router like any
//!   other (a retried id is a duplicate there too). An event of a peer's timeline is marked with
//!   [`MIRROR_SOURCE_HEADER`] and *applied* by the router only when its seq is its
//!   conversation's next ([`crate::state::SequencerState::decide_mirrored`]): MirrorMaker's
//!   re-copies are dropped, a hole is held until the mirror fills it;
//! - **loop-free**: what a router applied from a mirror carries [`MIRRORED_HEADER`], which
//!   MirrorMaker's filter (`scripts/services/mirrormaker`, `deploy/regions/`) and the relay both
//!   leave behind, and remote topics are never written to (MirrorMaker's
//!   `DefaultReplicationPolicy` prefixes them and never copies one back).

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_core::config::Topics;
use chorus_log::{
    LogError, NewRecord, Offset, PartitionId, PollEvent, StartFrom, partition_for_key,
};
use tokio_util::sync::CancellationToken;

use crate::{RouterContext, RouterError};

/// On an `ingress` record the relay copied from a peer's mirrored `timeline`: the peer's name.
pub const MIRROR_SOURCE_HEADER: &str = "chorus-mirror-source";
/// On a local `timeline` record applied from a peer's mirrored `timeline`: its home region.
/// MirrorMaker does not copy such records back, nor does the relay.
pub const MIRRORED_HEADER: &str = "chorus-mirrored";
/// On a home's `timeline` record of an event forwarded from another region: the ingest node and
/// session of its sender, which that region's router acks once the event came back.
pub const ORIGIN_NODE_HEADER: &str = "chorus-origin-node";
pub const ORIGIN_SESSION_HEADER: &str = "chorus-origin-session";
/// On a `forward-<region>` record written by a home for an event `region` forwarded to it: the
/// event's outcome (its `ack` or `error` frame) when that is not a new timeline event — a
/// refusal, or the ack of a retried id — for `region`'s router to tell the sender.
pub const OUTCOME_HEADER: &str = "chorus-outcome";
/// On a `forward-<home>` record: the offset of the `ingress` record it was forwarded from.
pub const FORWARDED_FROM_HEADER: &str = "chorus-forwarded-from";

/// How many records one relay poll takes.
const RELAY_BATCH: usize = 500;

/// What a mirrored topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `<peer>.forward-<local>`: events from the peer's users, for this region to sequence.
    Forward,
    /// `<peer>.timeline`: the peer's sequenced events, for this region to apply.
    Timeline,
}

/// The mirrored topics this region's relay reads: per peer, its forwards to this region and
/// its timeline.
fn sources(context: &RouterContext) -> Vec<(String, String, Kind)> {
    let topics = context.config.topics();
    let local = &context.config.cluster;
    context
        .config
        .regions
        .peers
        .iter()
        .flat_map(|peer| {
            [
                (
                    peer.clone(),
                    Topics::mirrored(peer, &topics.forward(local)),
                    Kind::Forward,
                ),
                (
                    peer.clone(),
                    Topics::mirrored(peer, &topics.timeline),
                    Kind::Timeline,
                ),
            ]
        })
        .collect()
}

/// Runs the relay of every mirrored topic until `shutdown`; the first to fail stops the others
/// and is returned. Nothing to do (returns at once) without `[regions]`.
pub async fn relay(context: RouterContext, shutdown: CancellationToken) -> Result<(), RouterError> {
    let mut tasks = tokio::task::JoinSet::new();
    let stop = shutdown.child_token();
    for (peer, topic, kind) in sources(&context) {
        tasks.spawn(relay_topic(
            context.clone(),
            peer,
            topic,
            kind,
            stop.clone(),
        ));
    }
    let mut first_error = None;
    while let Some(finished) = tasks.join_next().await {
        stop.cancel();
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(source) => {
                first_error.get_or_insert(RouterError::RelayTask { source });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Copies one mirrored topic into `ingress`, exactly once per record of the mirrored topic: the
/// copies and the relay's offsets commit in one transaction (fenced by its consumer group, like
/// the router's). What MirrorMaker copied twice is copied twice; the router's dedup (forwards)
/// and seq rule (timelines) make that change nothing.
async fn relay_topic(
    context: RouterContext,
    peer: String,
    topic: String,
    kind: Kind,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    let topics = context.config.topics();
    let log = context.log.clone();
    // MirrorMaker creates it when it first copies; until then the relay waits on an empty one
    log.ensure_topic(&topic).await?;
    let ingress_partitions = log.ensure_topic(&topics.ingress).await?;
    let group = format!("{}chorus-relay-{topic}", context.config.topic_prefix);
    let mut consumer = log.consumer(&group, &topic, StartFrom::Earliest).await?;
    let writer_id = format!(
        "{}chorus-relay-{topic}-{}",
        context.config.topic_prefix, context.config.node_id
    );
    let mut writer = consumer.transactional_writer(&writer_id).await?;
    let relayed = context
        .metrics
        .region_relayed
        .with_label_values(&[topic.as_str()]);
    tracing::info!(%topic, %peer, ?kind, "region relay started");
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            polled = consumer.poll(RELAY_BATCH, Duration::from_millis(250)) => polled?,
        };
        let PollEvent::Records(records) = polled else {
            continue;
        };
        let mut offsets: BTreeMap<PartitionId, Offset> = BTreeMap::new();
        let mut copies = Vec::with_capacity(records.len());
        for record in records {
            let next = offsets.entry(record.partition).or_default();
            *next = (*next).max(record.offset + 1);
            if record.header(MIRRORED_HEADER).is_some() {
                continue; // applied from a mirror over there: never back
            }
            let mut copy = NewRecord::new(record.key.clone(), record.value);
            copy.headers = record
                .headers
                .into_iter()
                .filter(|(name, _)| name != MIRROR_SOURCE_HEADER && name != FORWARDED_FROM_HEADER)
                .collect();
            if kind == Kind::Timeline {
                copy = copy.with_header(MIRROR_SOURCE_HEADER, peer.as_str());
            }
            let partition = partition_for_key(&record.key, ingress_partitions);
            copies.push((partition, copy));
        }
        let count = copies.len() as u64;
        let offsets: Vec<(PartitionId, Offset)> = offsets.into_iter().collect();
        writer.commit(&topics.ingress, copies, &offsets).await?;
        relayed.inc_by(count);
    }
}

/// The `ingress` offset after the last event this partition forwarded (from the newest record
/// of each forward topic's partition), so recovery resumes past forwarded events as it does
/// past sequenced ones. Only the partition's owner writes there, in its transactions.
pub(crate) async fn forwarded_through(
    context: &RouterContext,
    partition: PartitionId,
) -> Result<Offset, LogError> {
    let topics = context.config.topics();
    let mut through = 0;
    for peer in &context.config.regions.peers {
        if let Some(offset) = last_forwarded(context, &topics.forward(peer), partition).await? {
            through = through.max(offset + 1);
        }
    }
    Ok(through)
}

/// The [`FORWARDED_FROM_HEADER`] of the newest record of `topic`'s `partition`, reading back
/// from its end in growing windows (the tail may be transaction markers or aborted records).
async fn last_forwarded(
    context: &RouterContext,
    topic: &str,
    partition: PartitionId,
) -> Result<Option<Offset>, LogError> {
    let end = context.log.end_offset(topic, partition).await?;
    let mut window: u64 = 16;
    loop {
        let from = end.saturating_sub(window);
        let mut newest = None;
        let mut position = from;
        while position < end {
            let records = context
                .log
                .read_range(topic, partition, position, end, 1024)
                .await?;
            let Some(last) = records.last() else {
                break;
            };
            position = last.offset + 1;
            let found = records.iter().rev().find_map(|record| {
                record
                    .header(FORWARDED_FROM_HEADER)
                    .and_then(|value| std::str::from_utf8(value).ok())
                    .and_then(|value| value.parse::<Offset>().ok())
            });
            newest = found.or(newest);
        }
        if newest.is_some() || from == 0 {
            return Ok(newest);
        }
        window = window.saturating_mul(8);
    }
}
