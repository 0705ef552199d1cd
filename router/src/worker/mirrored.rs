//! A worker's part in two regions (docs/MULTI_REGION.md): outcomes sent back to the region an
//! event was forwarded from, and peers' mirrored timelines applied only as each conversation's
//! next seq ([`Mirrored`]).

use std::collections::{BTreeMap, HashMap};

use chorus_core::protocol::outbound::EventOutcome;
use chorus_log::{NewRecord, Offset, Record};
use chorus_schemas::{IngressEvent, TimelineEvent, decode_timeline, encode_timeline};

use super::{Notice, origin_of};
use crate::RouterContext;
use crate::regions;
use crate::state::{MirrorDecision, SequencerState};

/// Where the outcome of an event forwarded from another region goes when it is not a new
/// timeline event (a refusal, or the ack of a retry): back to that region, on its
/// `forward-<region>` topic, which MirrorMaker carries there. `None` for events of this region.
pub(super) fn return_topic(context: &RouterContext, event: &IngressEvent) -> Option<String> {
    let regions = &context.config.regions;
    let from_peer = regions.peers.contains(&event.origin_cluster);
    (from_peer && event.origin_node.is_some() && event.origin_session.is_some())
        .then(|| context.config.topics().forward(&event.origin_cluster))
}

/// The record that carries `outcome` back to the region a forwarded event came from: the event
/// itself (which names its sender's node and session) with the outcome's frame in a header.
pub(super) fn return_record(record: &Record, outcome: &EventOutcome) -> NewRecord {
    NewRecord::new(record.key.clone(), record.value.clone())
        .with_header(regions::OUTCOME_HEADER, outcome.frame().to_string())
}

/// The notice of an outcome a home region sent back for an event this region forwarded.
pub(super) fn returned_outcome(
    context: &RouterContext,
    record: &Record,
    event: &IngressEvent,
) -> Option<Notice> {
    let (node, session) = origin_of(context, event)?;
    let text = std::str::from_utf8(record.header(regions::OUTCOME_HEADER)?).ok()?;
    let outcome = chorus_core::protocol::outbound::outcome_from_frame_text(text).ok()?;
    Some(Notice::ToSender {
        node,
        session,
        outcome,
    })
}

/// The peer region an ingress record was relayed from, when it is an event of that peer's
/// mirrored `timeline` (and the peer is configured).
pub(super) fn mirror_source<'a>(context: &'a RouterContext, record: &Record) -> Option<&'a str> {
    let source = record.header(regions::MIRROR_SOURCE_HEADER)?;
    context
        .config
        .regions
        .peers
        .iter()
        .find(|peer| peer.as_bytes() == source)
        .map(String::as_str)
}

/// The sender to ack for a mirrored event applied here: one connected to this region, named by
/// the headers its home put on it.
pub(super) fn mirrored_ack_target(
    context: &RouterContext,
    event: &TimelineEvent,
    record: &NewRecord,
) -> Option<(String, String)> {
    if event.origin_cluster != context.config.cluster {
        return None;
    }
    let text = |name: &str| {
        record
            .headers
            .iter()
            .find(|(header, _)| header == name)
            .and_then(|(_, value)| String::from_utf8(value.clone()).ok())
    };
    Some((
        text(regions::ORIGIN_NODE_HEADER)?,
        text(regions::ORIGIN_SESSION_HEADER)?,
    ))
}

/// Most mirrored events a partition holds while it waits for a hole to be filled.
const MAX_HELD: usize = 100_000;

/// Events of peers' mirrored timelines held until their conversation's earlier seqs arrive.
#[derive(Default)]
pub(super) struct Mirrored {
    /// conversation → seq → (source region, the relayed record).
    held: HashMap<String, BTreeMap<u64, (String, Record)>>,
    count: usize,
}

impl Mirrored {
    /// Decides one relayed record of `source`'s timeline: the events to append now (this one
    /// and any held ones it lets through), each with its local `timeline` record, which names
    /// its home and keeps the ack target the home put on it. An undecodable record is an error
    /// (dead-lettered: the mirror carries only what a home router wrote).
    pub(super) fn decide(
        &mut self,
        context: &RouterContext,
        state: &mut SequencerState,
        record: &Record,
        source: &str,
        offset: Offset,
    ) -> Result<Vec<(TimelineEvent, NewRecord)>, String> {
        let event = decode_timeline(&record.value).map_err(|error| error.to_string())?;
        let outcomes = &context.metrics.region_mirror_events;
        let conversation = event.conversation.clone();
        let seq = event.seq;
        let mut applied = Vec::new();
        match state.decide_mirrored(event, source, offset) {
            MirrorDecision::Apply(event) => {
                outcomes.with_label_values(&[source, "applied"]).inc();
                applied.push(mirrored_record(*event, record, source)?);
            }
            MirrorDecision::Duplicate => {
                outcomes.with_label_values(&[source, "duplicate"]).inc();
                return Ok(applied);
            }
            MirrorDecision::Foreign => {
                outcomes.with_label_values(&[source, "foreign"]).inc();
                tracing::warn!(%conversation, source, "mirrored event not homed in its source region; ignored");
                return Ok(applied);
            }
            MirrorDecision::Hole { expected } => {
                outcomes.with_label_values(&[source, "held"]).inc();
                if self.count >= MAX_HELD {
                    tracing::error!(%conversation, source, ?seq, expected, "too many mirrored events held; dropped (the mirror lost events)");
                    return Ok(applied);
                }
                tracing::warn!(%conversation, source, ?seq, expected, "hole in a mirrored timeline; holding the event");
                if let Some(seq) = seq
                    && self
                        .held
                        .entry(conversation)
                        .or_default()
                        .insert(seq, (source.to_owned(), record.clone()))
                        .is_none()
                {
                    self.count += 1;
                }
                self.publish(context);
                return Ok(applied);
            }
        }
        // the event may have filled a hole: what waited behind it follows
        while let Some(held) = self.held.get_mut(&conversation) {
            let next = state.last_seq(&conversation) + 1;
            let Some((held_source, held_record)) = held.remove(&next) else {
                // anything at or below the last seq is a duplicate now
                let before = held.len();
                held.retain(|seq, _| *seq > next);
                self.count -= before - held.len();
                if held.is_empty() {
                    self.held.remove(&conversation);
                }
                break;
            };
            self.count -= 1;
            let event = decode_timeline(&held_record.value).map_err(|error| error.to_string())?;
            if let MirrorDecision::Apply(event) = state.decide_mirrored(event, &held_source, offset)
            {
                outcomes
                    .with_label_values(&[held_source.as_str(), "applied"])
                    .inc();
                applied.push(mirrored_record(*event, &held_record, &held_source)?);
            }
        }
        self.publish(context);
        Ok(applied)
    }

    fn publish(&self, context: &RouterContext) {
        for peer in &context.config.regions.peers {
            let held = self
                .held
                .values()
                .flat_map(|held| held.values())
                .filter(|(source, _)| source == peer)
                .count();
            context
                .metrics
                .region_mirror_held
                .with_label_values(&[peer.as_str()])
                .set(held as i64);
        }
    }
}

/// The local `timeline` record of an event applied from `home`'s mirrored timeline: marked
/// [`regions::MIRRORED_HEADER`] (never mirrored back), with the ack target its home put on it.
fn mirrored_record(
    event: TimelineEvent,
    relayed: &Record,
    home: &str,
) -> Result<(TimelineEvent, NewRecord), String> {
    let value = encode_timeline(&event).map_err(|error| error.to_string())?;
    let mut record = NewRecord::new(event.conversation.as_bytes(), value)
        .with_header(regions::MIRRORED_HEADER, home);
    for name in [regions::ORIGIN_NODE_HEADER, regions::ORIGIN_SESSION_HEADER] {
        if let Some(value) = relayed.header(name) {
            record = record.with_header(name, value.to_vec());
        }
    }
    Ok((event, record))
}
