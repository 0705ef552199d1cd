//! The timeline scenario: the corpus sequenced by the router's `SequencerState` and appended to
//! the embedded log's `timeline`, as the router would write it; what the other scenarios need to
//! know about it ([`Timeline`]), and its report.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chorus_core::config::ChorusConfig;
use chorus_core::validate::validate_ingress;
use chorus_log::{EventLog, NewRecord, Offset, partition_for_key};
use chorus_router::state::{Decision, SequencerState};
use chorus_schemas::{EventBody, encode_timeline};
use serde_json::json;

use super::corpus::{Corpus, Language, SEARCHER};
use super::raw_tantivy::RawDocument;
use crate::report::{self, Report, Row};

/// Timeline records per append while writing the corpus.
const APPEND_BATCH: usize = 4096;

/// The timeline as written, and what the other scenarios need to know about it.
pub(crate) struct Timeline {
    /// Records appended (group creations and messages).
    pub(crate) events: u64,
    pub(crate) messages: u64,
    groups: u64,
    /// End offset of every partition of `timeline` once written.
    pub(crate) ends: Vec<Offset>,
    /// The message documents, for the raw baseline.
    pub(crate) documents: Vec<RawDocument>,
    /// Messages by language: English, Chinese, Japanese, Korean.
    by_language: [u64; 4],
    /// Bytes of message text.
    text_bytes: u64,
    /// Messages in the searcher's conversations.
    searcher_messages: u64,
    /// Bytes of Avro-encoded records.
    record_bytes: u64,
    /// Generating, sequencing, encoding and appending, together.
    pub(crate) seconds: f64,
}

impl Timeline {
    pub(super) fn report(&self, corpus: &Corpus, config: &ChorusConfig) -> Report {
        let spec = &corpus.spec;
        let [english, chinese, japanese, korean] = self.by_language;
        Report {
            scenario: "projection timeline".into(),
            json: json!({
                "events": self.events, "messages": self.messages, "groups": self.groups,
                "direct_conversations": corpus.conversations.len() as u64 - self.groups,
                "conversations": corpus.conversations.len(), "users": corpus.users.len(),
                "seed": spec.seed, "group_share": spec.group_share, "cjk_share": spec.cjk_share,
                "messages_by_language": {"english": english, "chinese": chinese,
                                         "japanese": japanese, "korean": korean},
                "text_bytes": self.text_bytes, "record_bytes": self.record_bytes,
                "searcher": SEARCHER, "searcher_conversations": spec.searcher_conversations,
                "searcher_messages": self.searcher_messages,
                "partitions": config.partitions(), "partition_ends": self.ends,
                "seconds": self.seconds,
                "note": "generated, sequenced by the router's SequencerState, Avro-encoded and appended to the embedded log's timeline",
            }),
            rows: vec![
                Row::new("timeline events", self.events as f64, "events"),
                Row::new(
                    "written (generate + sequence + append)",
                    self.events as f64 / self.seconds,
                    "events/s",
                ),
            ],
        }
    }
}

/// Sequences the corpus as the router would and appends it to `timeline`.
pub(crate) async fn write_timeline(
    corpus: &Corpus,
    config: &ChorusConfig,
    log: &Arc<dyn EventLog>,
) -> anyhow::Result<Timeline> {
    let partitions = config.partitions();
    let topic = config.topics().timeline;
    log.ensure_topic(&topic).await?;
    let mut states: Vec<SequencerState> = (0..partitions)
        .map(|_| SequencerState::new(config.router.dedup_window))
        .collect();
    // the ingress offset each event is sequenced from (one ingress record per event)
    let mut ingress_offsets = vec![0u64; partitions as usize];
    let searcher_conversations: HashSet<String> =
        corpus.searcher_conversations().into_iter().collect();
    let mut timeline = Timeline {
        events: 0,
        messages: 0,
        groups: 0,
        ends: Vec::new(),
        documents: Vec::with_capacity(corpus.spec.messages as usize),
        by_language: [0; 4],
        text_bytes: 0,
        searcher_messages: 0,
        record_bytes: 0,
        seconds: 0.0,
    };
    let bar = report::progress("timeline", Some(corpus.event_count()));
    let started = Instant::now();
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    for generated in corpus.events() {
        validate_ingress(&generated.event, &config.limits)
            .map_err(|error| anyhow::anyhow!("a generated event is invalid: {error:?}"))?;
        let partition = partition_for_key(generated.event.conversation.as_bytes(), partitions);
        let ingress_offset = &mut ingress_offsets[partition as usize];
        let decision = states[partition as usize].decide(generated.event, *ingress_offset);
        *ingress_offset += 1;
        let event = match decision {
            Decision::Sequence(event) => event,
            refused => anyhow::bail!("the sequencer refused a generated event: {refused:?}"),
        };
        let value = encode_timeline(&event)?;
        timeline.record_bytes += value.len() as u64;
        batch.push(NewRecord::new(event.conversation.as_bytes(), value));
        timeline.events += 1;
        match (event.body, generated.language) {
            (EventBody::MessageSent(chorus_schemas::Message { text, .. }), Some(language)) => {
                timeline.messages += 1;
                timeline.text_bytes += text.len() as u64;
                let slot = match language {
                    Language::English => 0,
                    Language::Chinese => 1,
                    Language::Japanese => 2,
                    Language::Korean => 3,
                };
                timeline.by_language[slot] += 1;
                if searcher_conversations.contains(&event.conversation) {
                    timeline.searcher_messages += 1;
                }
                timeline.documents.push(RawDocument {
                    conversation: generated.conversation,
                    seq: event.seq.context("a sequenced message without a seq")?,
                    sender: event.sender,
                    ts_ms: event.ts_ms,
                    text,
                });
            }
            (EventBody::ConversationCreated { .. }, _) => timeline.groups += 1,
            (other, _) => anyhow::bail!("unexpected generated event {other:?}"),
        }
        if batch.len() >= APPEND_BATCH {
            let appended = batch.len() as u64;
            log.append(&topic, std::mem::take(&mut batch)).await?;
            bar.inc(appended);
        }
    }
    if !batch.is_empty() {
        log.append(&topic, batch).await?;
    }
    timeline.seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    for partition in 0..partitions {
        timeline.ends.push(log.end_offset(&topic, partition).await?);
    }
    anyhow::ensure!(
        timeline.ends.iter().sum::<u64>() == timeline.events,
        "the timeline holds {} records for {} events",
        timeline.ends.iter().sum::<u64>(),
        timeline.events
    );
    Ok(timeline)
}
