//! Full-text search over messages: one Tantivy index per timeline partition, under `<dir>/p<N>/`.
//!
//! Invariants:
//! - one document per live message, keyed by `conversation\u{1f}seq`: a send adds it, an edit
//!   replaces it (keeping the original sender and time), a recall deletes it; edits of unknown or
//!   recalled messages are ignored, as in the history store, so a recalled message never comes
//!   back into search;
//! - the partition's position ("next offset to apply") is the payload of the index's last commit,
//!   so it is atomic with the documents it describes; [`SearchIndex::apply`] reads it under the
//!   partition's writer lock and applies what [`records_to_apply`] keeps (it skips records below
//!   the position and never moves it backwards), and a send upserts by key, so replays change
//!   nothing;
//! - after every commit the partition's reader is reloaded (readers use `ReloadPolicy::Manual`),
//!   so searches see every applied batch and the committed searcher is the truth edits consult;
//! - a conversation's documents live in the index of `partition_for_key(conversation)`, which
//!   holds when `partitions` equals the timeline topic's partition count and the projector
//!   applies partition `p` of the timeline to index `p`;
//! - every text goes through the "chorus" analyzer ([`crate::tokenizer`]) when indexed and when
//!   queried;
//! - user queries are parsed by [`parse_user_query`] (the bounded grammar of
//!   [`crate::search_query`]), never by Tantivy's recursive query parser;
//! - search results only ever come from the conversations the caller passed in; the scope is one
//!   filter per partition ([`scope_filter`]: one dictionary lookup per conversation, no clause
//!   per conversation), scoring nothing, so a user in thousands of conversations is served by
//!   the same query shape as a user in one.
//!
//! [`SearchIndex::apply`] and [`SearchIndex::search`] block (disk I/O, CPU): run them on a
//! blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_log::{Offset, PartitionId, partition_for_key};
use chorus_schemas::{EventBody, TimelineEvent};
use parking_lot::{ArcMutexGuard, Mutex, RawMutex, RwLock};
use serde::Serialize;
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::{BooleanQuery, EmptyQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
    Value,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{TextAnalyzer, TokenizerManager};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};
use tracing::{debug, warn};

mod copy;
mod scope_filter;
pub use copy::PartitionSnapshot;
use scope_filter::ConversationFilter;

use crate::history::ErrorCause;
use crate::position::records_to_apply;
pub use crate::search_query::SearchQueryLimits;
use crate::search_query::build_user_query;
use crate::tokenizer::{CHORUS_TOKENIZER_NAME, chorus_text_analyzer, register_chorus_tokenizer};

/// One search result (`GET /v1/search`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub conversation: String,
    pub seq: u64,
    pub sender: String,
    pub ts: i64,
    /// The text around the best match, HTML-escaped (`&`, `<`, `>`, `"`, `'`), with the matched
    /// terms wrapped in `<b>`…`</b>`, the only markup; the start of the text when nothing is
    /// highlighted.
    pub snippet: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[source] ErrorCause),
    #[error("bad query: {0}")]
    BadQuery(String),
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(error: tantivy::TantivyError) -> Self {
        SearchError::Index(Box::new(error))
    }
}

/// The writers' memory budget, shared by all partitions.
pub const TOTAL_WRITER_MEMORY_BYTES: usize = 200_000_000;
/// Tantivy's minimum memory budget per indexing thread.
const MIN_WRITER_MEMORY_BYTES: usize = 15_000_000;
/// Separates conversation and seq in a document key (a control character no id contains).
const KEY_SEPARATOR: char = '\u{1f}';
/// The longest snippet, in characters.
const SNIPPET_MAX_CHARS: usize = 150;
/// The most hits one search returns, whatever the caller asks (bounds the collectors' memory).
pub const MAX_SEARCH_HITS: usize = 1_000;

/// The schema's fields.
#[derive(Debug, Clone, Copy)]
struct MessageFields {
    /// `conversation\u{1f}seq`, untokenized: the handle to delete or replace one message.
    key: Field,
    /// The conversation id, untokenized: the scope filter, and returned in hits.
    conversation: Field,
    /// The message's seq, returned in hits.
    seq: Field,
    /// The sender, returned in hits (kept through edits).
    sender: Field,
    /// When the message was sent (ms since the epoch), returned in hits (kept through edits).
    ts: Field,
    /// The current text, analysed by the "chorus" tokenizer with positions; stored for snippets.
    text: Field,
}

impl MessageFields {
    fn build_schema() -> (Schema, MessageFields) {
        let mut builder = Schema::builder();
        let text_indexing = TextFieldIndexing::default()
            .set_tokenizer(CHORUS_TOKENIZER_NAME)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let fields = MessageFields {
            key: builder.add_text_field("key", STRING),
            conversation: builder.add_text_field("conversation", STRING | STORED),
            seq: builder.add_u64_field("seq", INDEXED | STORED),
            sender: builder.add_text_field("sender", STRING | STORED),
            ts: builder.add_i64_field("ts", STORED),
            text: builder.add_text_field(
                "text",
                TextOptions::default()
                    .set_indexing_options(text_indexing)
                    .set_stored(),
            ),
        };
        (builder.build(), fields)
    }
}

fn message_key(conversation: &str, seq: u64) -> String {
    format!("{conversation}{KEY_SEPARATOR}{seq}")
}

/// One partition's index.
struct PartitionIndex {
    /// Reloaded after every commit; searches and edit look-ups read through it.
    reader: IndexReader,
    /// The only writer; the lock makes each apply one batch-then-commit step.
    writer: Arc<Mutex<IndexWriter>>,
    /// The payload of the last commit, mirrored so `position` never waits for a running apply.
    position: AtomicU64,
}

/// The original sender and time of a message, kept when an edit replaces its document.
#[derive(Debug, Clone)]
struct MessageOrigin {
    /// The message's sender.
    sender: String,
    /// When the message was sent.
    ts: i64,
}

/// What a batch has done to a key so far (not yet visible to the committed searcher).
#[derive(Debug, Clone)]
enum PendingMessage {
    Live(MessageOrigin),
    Recalled,
}

/// One hit with its score, before merging partitions (here, or across search shards, which
/// send these to the node that asked).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ScoredHit {
    /// BM25 score within its partition: a partition's statistics are the same whichever node
    /// holds it, so hits of partitions searched on different nodes merge as if on one.
    pub score: f32,
    /// The hit as returned; its snippet is made once the hits are merged
    /// ([`SearchIndex::fill_snippets`]).
    pub hit: SearchHit,
    /// The message's text, from which its snippet is made; empty once it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

/// The weights a partition's snippets are made with: each term of the query and
/// `1 / (1 + its document frequency in the partition)`, as Tantivy's `SnippetGenerator::create`
/// weighs them (they choose the fragment shown of a long text).
pub type SnippetTerms = BTreeMap<String, f32>;

/// The best matches of a search of some partitions, merged, before their snippets: what a
/// search shard answers, so that only the hits that win the merge of every shard's get one.
#[derive(Debug, Default, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Matches {
    /// At most the `limit` asked, best first in the merge order, each with its text.
    pub hits: Vec<ScoredHit>,
    /// The snippet weights of each partition with a hit here.
    pub snippet_terms: BTreeMap<PartitionId, SnippetTerms>,
}

/// The one order of search hits, best first: score, then newer, then conversation id, then
/// higher seq (a message's key, so no two hits tie).
fn merge_order(left: &ScoredHit, right: &ScoredHit) -> std::cmp::Ordering {
    right
        .score
        .total_cmp(&left.score)
        .then_with(|| right.hit.ts.cmp(&left.hit.ts))
        .then_with(|| left.hit.conversation.cmp(&right.hit.conversation))
        .then_with(|| right.hit.seq.cmp(&left.hit.seq))
}

/// The best `limit` of `hits` (from any partitions), best first, in [`merge_order`]. The one
/// merge rule, whether the partitions were searched here or on several search shards.
pub fn merge_hits(mut hits: Vec<ScoredHit>, limit: usize) -> Vec<ScoredHit> {
    hits.sort_by(merge_order);
    hits.truncate(limit);
    hits
}

/// The search index of all partitions. Send + Sync: share it as `Arc<SearchIndex>`.
pub struct SearchIndex {
    /// Indexed by partition id; a slot is replaced when a copy of the partition is installed
    /// ([`SearchIndex::install_partition`]).
    partitions: Vec<RwLock<Arc<PartitionIndex>>>,
    /// Where the partitions' directories are (`p<N>/`), and copies in transit.
    dir: PathBuf,
    /// How each partition is opened.
    opener: PartitionOpener,
    /// The schema's fields (the same in every partition).
    fields: MessageFields,
    /// Analyses the words of user queries (cloned per search: analysing needs `&mut`).
    query_analyzer: TextAnalyzer,
}

impl SearchIndex {
    /// Opens (creating if missing) one index per partition under `dir/p<N>/`, with the writers'
    /// memory budget split between partitions.
    pub fn open(dir: &Path, partitions: u32) -> Result<Arc<Self>, SearchError> {
        if partitions == 0 {
            return Err(SearchError::Index(
                "the partition count must be positive".into(),
            ));
        }
        let (schema, fields) = MessageFields::build_schema();
        let tokenizer_manager = TokenizerManager::default();
        register_chorus_tokenizer(&tokenizer_manager);
        let opener = PartitionOpener {
            schema,
            tokenizer_manager,
            writer_memory_bytes: (TOTAL_WRITER_MEMORY_BYTES / partitions as usize)
                .max(MIN_WRITER_MEMORY_BYTES),
        };
        // copies that were in transit or served when the node stopped
        copy::clear_transit(dir)?;
        let mut partition_indexes = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            let partition_dir = partition_dir(dir, partition);
            partition_indexes.push(RwLock::new(Arc::new(opener.open(&partition_dir)?)));
        }
        debug!(dir = %dir.display(), partitions, "opened search index");
        Ok(Arc::new(SearchIndex {
            partitions: partition_indexes,
            dir: dir.to_owned(),
            opener,
            fields,
            query_analyzer: chorus_text_analyzer(),
        }))
    }

    /// The partition's position: the next offset to apply (0 for a fresh index).
    pub fn position(&self, partition: PartitionId) -> Result<Offset, SearchError> {
        Ok(self.partition(partition)?.position.load(Ordering::Acquire))
    }

    /// Every partition's position, by partition id.
    pub fn positions(&self) -> Vec<Offset> {
        self.partitions
            .iter()
            .map(|slot| slot.read().position.load(Ordering::Acquire))
            .collect()
    }

    /// The number of searchable documents (live messages) over all partitions.
    pub fn document_count(&self) -> u64 {
        self.partition_documents().iter().sum()
    }

    /// The number of searchable documents of each partition, by partition id.
    pub fn partition_documents(&self) -> Vec<u64> {
        self.partitions
            .iter()
            .map(|slot| slot.read().reader.searcher().num_docs())
            .collect()
    }

    /// Applies `records` of `partition` (skipping offsets below its position) and commits them
    /// with `next_offset` as the new position. Blocking.
    pub fn apply(
        &self,
        partition: PartitionId,
        records: &[(Offset, TimelineEvent)],
        next_offset: Offset,
    ) -> Result<(), SearchError> {
        let (partition_index, mut writer) = self.partition_writer(partition)?;
        // read under the writer's lock, which every apply of this partition holds
        let position = partition_index.position.load(Ordering::Acquire);
        let Some(pending) = records_to_apply(position, records, next_offset) else {
            return Ok(());
        };
        let new_position = pending.new_position;
        let written = self
            .write_batch(
                &writer,
                &partition_index.reader.searcher(),
                &pending.records,
            )
            .and_then(|()| commit_with_position(&mut writer, new_position));
        if let Err(error) = written {
            if let Err(rollback_error) = writer.rollback() {
                warn!(partition, %rollback_error, "rolling back a failed search batch");
            }
            return Err(error);
        }
        partition_index
            .position
            .store(new_position, Ordering::Release);
        partition_index.reader.reload()?;
        Ok(())
    }

    /// Adds, replaces and deletes the documents of a batch (uncommitted).
    fn write_batch(
        &self,
        writer: &IndexWriter,
        committed: &Searcher,
        records: &[&(Offset, TimelineEvent)],
    ) -> Result<(), SearchError> {
        let mut pending: HashMap<String, PendingMessage> = HashMap::new();
        for (_, event) in records.iter().copied() {
            let conversation = event.conversation.as_str();
            match &event.body {
                EventBody::MessageSent(chorus_schemas::Message { text, .. }) => {
                    let Some(seq) = event.seq else {
                        warn!(conversation, event_id = %event.event_id, "message without a seq");
                        continue;
                    };
                    let origin = MessageOrigin {
                        sender: event.sender.clone(),
                        ts: event.ts_ms,
                    };
                    let key = message_key(conversation, seq);
                    // a seq is assigned once and records below the position are skipped, so
                    // no document has this key yet: no delete term (a third of raw indexing)
                    self.add_document(writer, &key, conversation, seq, &origin, text)?;
                    pending.insert(key, PendingMessage::Live(origin));
                }
                EventBody::MessageEdited { target_seq, text } => {
                    let key = message_key(conversation, *target_seq);
                    let origin = match pending.get(&key) {
                        Some(PendingMessage::Live(origin)) => Some(origin.clone()),
                        Some(PendingMessage::Recalled) => None,
                        None => self.committed_origin(committed, &key)?,
                    };
                    let Some(origin) = origin else {
                        debug!(
                            conversation,
                            target_seq, "edit of an unknown or recalled message"
                        );
                        continue;
                    };
                    writer.delete_term(Term::from_field_text(self.fields.key, &key));
                    self.add_document(writer, &key, conversation, *target_seq, &origin, text)?;
                    pending.insert(key, PendingMessage::Live(origin));
                }
                EventBody::MessageRecalled { target_seq } => {
                    let key = message_key(conversation, *target_seq);
                    writer.delete_term(Term::from_field_text(self.fields.key, &key));
                    pending.insert(key, PendingMessage::Recalled);
                }
                EventBody::ConversationCreated { .. }
                | EventBody::MembersAdded { .. }
                | EventBody::MembersRemoved { .. }
                | EventBody::ReadCursorMoved { .. }
                | EventBody::ConversationMuted { .. }
                | EventBody::UserBlocked { .. }
                | EventBody::MessagePinned { .. }
                | EventBody::ReactionChanged { .. }
                | EventBody::RoleChanged { .. }
                | EventBody::ConversationRenamed { .. }
                | EventBody::ConversationDisbanded { .. }
                | EventBody::RetentionSet { .. } => {}
            }
        }
        Ok(())
    }

    /// Adds the message's document under `key`.
    fn add_document(
        &self,
        writer: &IndexWriter,
        key: &str,
        conversation: &str,
        seq: u64,
        origin: &MessageOrigin,
        text: &str,
    ) -> Result<(), SearchError> {
        let mut document = TantivyDocument::default();
        document.add_text(self.fields.key, key);
        document.add_text(self.fields.conversation, conversation);
        document.add_u64(self.fields.seq, seq);
        document.add_text(self.fields.sender, &origin.sender);
        document.add_i64(self.fields.ts, origin.ts);
        document.add_text(self.fields.text, text);
        writer.add_document(document)?;
        Ok(())
    }

    /// The sender and time of the committed, live document under `key`.
    fn committed_origin(
        &self,
        committed: &Searcher,
        key: &str,
    ) -> Result<Option<MessageOrigin>, SearchError> {
        let key_query = TermQuery::new(
            Term::from_field_text(self.fields.key, key),
            IndexRecordOption::Basic,
        );
        let found = committed.search(&key_query, &TopDocs::with_limit(1).order_by_score())?;
        let Some((_, address)) = found.into_iter().next() else {
            return Ok(None);
        };
        let document: TantivyDocument = committed.doc(address)?;
        let sender = document
            .get_first(self.fields.sender)
            .and_then(|value| value.as_str());
        let ts = document
            .get_first(self.fields.ts)
            .and_then(|value| value.as_i64());
        match (sender, ts) {
            (Some(sender), Some(ts)) => Ok(Some(MessageOrigin {
                sender: sender.to_owned(),
                ts,
            })),
            _ => Err(SearchError::Index(
                format!("document {key:?} lacks its sender or ts").into(),
            )),
        }
    }

    /// [`SearchIndex::search_with_limits`] with the default configuration's query bounds.
    pub fn search(
        &self,
        query: &str,
        conversations: &[String],
        limit: usize,
    ) -> Result<Vec<SearchHit>, SearchError> {
        self.search_with_limits(query, &SearchQueryLimits::default(), conversations, limit)
    }

    /// The best `limit` (at most [`MAX_SEARCH_HITS`]) messages matching `query` in
    /// `conversations`, best first. The query is parsed by [`parse_user_query`] within
    /// `query_limits` (words ANDed, quoted phrases, `-`/`NOT`, `+`, `OR`, bounded parentheses;
    /// `:` is plain text); a query over a bound or empty is [`SearchError::BadQuery`].
    /// Scores come from each partition's own statistics. Blocking.
    pub fn search_with_limits(
        &self,
        query: &str,
        query_limits: &SearchQueryLimits,
        conversations: &[String],
        limit: usize,
    ) -> Result<Vec<SearchHit>, SearchError> {
        let parsed = build_user_query(
            query,
            query_limits,
            self.fields.text,
            &mut self.query_analyzer.clone(),
        )?;
        let Some(text_query) = parsed else {
            return Ok(Vec::new());
        };
        self.search_parsed(text_query.as_ref(), conversations, limit)
    }

    /// The best `limit` (at most [`MAX_SEARCH_HITS`]) messages matching `text_query` (from
    /// [`parse_user_query`]) in `conversations`, best first, with their snippets. Blocking.
    pub fn search_parsed(
        &self,
        text_query: &dyn Query,
        conversations: &[String],
        limit: usize,
    ) -> Result<Vec<SearchHit>, SearchError> {
        let mut matches = self.matches(text_query, conversations, limit)?;
        self.fill_snippets(&mut matches.hits, &matches.snippet_terms);
        Ok(matches.hits.into_iter().map(|scored| scored.hit).collect())
    }

    /// The best `limit` (at most [`MAX_SEARCH_HITS`]) matches of `text_query` in
    /// `conversations`, with their scores and texts, best first in the merge order, and the
    /// snippet weights of their partitions: merge them with [`merge_hits`], here or on the node
    /// that asked this one (the best of several nodes are among the union of each node's
    /// best), then [`SearchIndex::fill_snippets`] the winners only. Blocking.
    pub fn matches(
        &self,
        text_query: &dyn Query,
        conversations: &[String],
        limit: usize,
    ) -> Result<Matches, SearchError> {
        if conversations.is_empty() || limit == 0 {
            return Ok(Matches::default());
        }
        let limit = limit.min(MAX_SEARCH_HITS);
        let partition_count = self.partitions.len() as u32;
        let mut conversations_by_partition: BTreeMap<PartitionId, Vec<&str>> = BTreeMap::new();
        for conversation in conversations {
            let partition = partition_for_key(conversation.as_bytes(), partition_count);
            conversations_by_partition
                .entry(partition)
                .or_default()
                .push(conversation);
        }
        let mut searchers = Vec::new();
        let mut matches = Vec::new();
        for (partition, partition_conversations) in conversations_by_partition {
            let searcher = self.partition(partition)?.reader.searcher();
            let top_documents =
                self.search_partition(&searcher, text_query, &partition_conversations, limit)?;
            if !top_documents.is_empty() {
                matches.extend(
                    top_documents
                        .into_iter()
                        .map(|(score, address)| (searchers.len(), score, address)),
                );
                searchers.push((partition, searcher));
            }
        }
        // Only matches scoring at least the `limit`-th best score can be among the best; ties
        // at that score are settled by the merge order, which needs their documents.
        if matches.len() > limit {
            let mut scores: Vec<f32> = matches.iter().map(|(_, score, _)| *score).collect();
            let (_, cutoff, _) =
                scores.select_nth_unstable_by(limit - 1, |left, right| right.total_cmp(left));
            let cutoff = *cutoff;
            matches.retain(|(_, score, _)| score.total_cmp(&cutoff).is_ge());
        }
        let mut found = Vec::with_capacity(matches.len());
        for (searcher_index, score, address) in matches {
            let document: TantivyDocument = searchers[searcher_index].1.doc(address)?;
            let hit = self.hit_from_document(&document)?;
            let text = document
                .get_first(self.fields.text)
                .and_then(|value| value.as_str())
                .unwrap_or_default()
                .to_owned();
            found.push((searcher_index, ScoredHit { score, hit, text }));
        }
        found.sort_by(|left, right| merge_order(&left.1, &right.1));
        found.truncate(limit);
        // the snippet weights of each partition that has a hit to show
        let mut snippet_terms = BTreeMap::new();
        for (searcher_index, _) in &found {
            let (partition, searcher) = &searchers[*searcher_index];
            if !snippet_terms.contains_key(partition) {
                snippet_terms.insert(*partition, self.snippet_terms(searcher, text_query)?);
            }
        }
        Ok(Matches {
            hits: found.into_iter().map(|(_, scored)| scored).collect(),
            snippet_terms,
        })
    }

    /// Makes here the snippets of the hits whose text is longer than `max_text_bytes` (and
    /// drops those texts): a search shard answers a long message as its snippet, so an answer
    /// is bounded by `limit × max_text_bytes` of text whatever the messages' size.
    pub fn fill_long_snippets(&self, matches: &mut Matches, max_text_bytes: usize) {
        for hit in &mut matches.hits {
            if hit.text.len() > max_text_bytes {
                self.fill_snippets(std::slice::from_mut(hit), &matches.snippet_terms);
            }
        }
    }

    /// The snippet weights of the query's terms in one partition (as
    /// `SnippetGenerator::create` computes them).
    fn snippet_terms(
        &self,
        searcher: &Searcher,
        text_query: &dyn Query,
    ) -> Result<SnippetTerms, SearchError> {
        let mut terms = std::collections::BTreeSet::new();
        text_query.query_terms(&mut |term, _| {
            if term.field() == self.fields.text {
                terms.insert(term.clone());
            }
        });
        let mut weights = SnippetTerms::new();
        for term in terms {
            let Some(text) = term.value().as_str().map(str::to_owned) else {
                continue;
            };
            let frequency = searcher.doc_freq(&term)?;
            if frequency > 0 {
                weights.insert(text, 1.0 / (1.0 + frequency as f32));
            }
        }
        Ok(weights)
    }

    /// Makes the snippet of each hit that has none yet, from its text and the weights of its
    /// partition in `snippet_terms` (hits of a partition missing there are shown plain), and
    /// drops the texts. The hits of shards that made their own snippets keep them.
    pub fn fill_snippets(
        &self,
        hits: &mut [ScoredHit],
        snippet_terms: &BTreeMap<PartitionId, SnippetTerms>,
    ) {
        let partition_count = self.partitions.len() as u32;
        let mut generators: HashMap<PartitionId, SnippetGenerator> = HashMap::new();
        for scored in hits {
            let text = std::mem::take(&mut scored.text);
            if !scored.hit.snippet.is_empty() {
                continue;
            }
            let partition = partition_for_key(scored.hit.conversation.as_bytes(), partition_count);
            let generator = generators.entry(partition).or_insert_with(|| {
                SnippetGenerator::new(
                    snippet_terms.get(&partition).cloned().unwrap_or_default(),
                    chorus_text_analyzer(),
                    self.fields.text,
                    SNIPPET_MAX_CHARS,
                )
            });
            scored.hit.snippet = snippet(&text, generator);
        }
    }

    /// The best `limit` matches of `text_query` among `conversations` of one partition.
    fn search_partition(
        &self,
        searcher: &Searcher,
        text_query: &dyn Query,
        conversations: &[&str],
        limit: usize,
    ) -> Result<Vec<(f32, tantivy::DocAddress)>, SearchError> {
        let conversation_filter =
            ConversationFilter::new(self.fields.conversation, conversations.iter().copied());
        let scoped_query = BooleanQuery::new(vec![
            (Occur::Must, text_query.box_clone()),
            (Occur::Must, Box::new(conversation_filter)),
        ]);
        Ok(searcher.search(&scoped_query, &TopDocs::with_limit(limit).order_by_score())?)
    }

    /// A hit's stored fields, without its snippet yet.
    fn hit_from_document(&self, document: &TantivyDocument) -> Result<SearchHit, SearchError> {
        let text_of = |field: Field| document.get_first(field).and_then(|value| value.as_str());
        let conversation = text_of(self.fields.conversation);
        let sender = text_of(self.fields.sender);
        let seq = document
            .get_first(self.fields.seq)
            .and_then(|value| value.as_u64());
        let ts = document
            .get_first(self.fields.ts)
            .and_then(|value| value.as_i64());
        let (Some(conversation), Some(sender), Some(seq), Some(ts)) =
            (conversation, sender, seq, ts)
        else {
            return Err(SearchError::Index(
                "a message document lacks a stored field".into(),
            ));
        };
        Ok(SearchHit {
            conversation: conversation.to_owned(),
            seq,
            sender: sender.to_owned(),
            ts,
            snippet: String::new(),
        })
    }

    fn slot(&self, partition: PartitionId) -> Result<&RwLock<Arc<PartitionIndex>>, SearchError> {
        self.partitions.get(partition as usize).ok_or_else(|| {
            SearchError::Index(
                format!(
                    "partition {partition} out of range ({} partitions)",
                    self.partitions.len()
                )
                .into(),
            )
        })
    }

    /// The partition's index as it stands (a copy installed later replaces it in the slot).
    fn partition(&self, partition: PartitionId) -> Result<Arc<PartitionIndex>, SearchError> {
        Ok(self.slot(partition)?.read().clone())
    }

    /// The partition's index with its writer locked, the one in the slot once locked: an apply
    /// that waited for the lock while a copy was installed writes into the copy, never into the
    /// replaced index.
    fn partition_writer(
        &self,
        partition: PartitionId,
    ) -> Result<(Arc<PartitionIndex>, ArcMutexGuard<RawMutex, IndexWriter>), SearchError> {
        loop {
            let index = self.partition(partition)?;
            let writer = index.writer.lock_arc();
            if Arc::ptr_eq(&index, &self.partition(partition)?) {
                return Ok((index, writer));
            }
        }
    }
}

/// The directory of partition `partition`'s index under `dir`.
fn partition_dir(dir: &Path, partition: PartitionId) -> PathBuf {
    dir.join(format!("p{partition}"))
}

/// How a partition's index is opened: the same schema, analyzers and writer budget for all.
struct PartitionOpener {
    schema: Schema,
    tokenizer_manager: TokenizerManager,
    writer_memory_bytes: usize,
}

impl PartitionOpener {
    fn open(&self, partition_dir: &Path) -> Result<PartitionIndex, SearchError> {
        open_partition(
            partition_dir,
            &self.schema,
            &self.tokenizer_manager,
            self.writer_memory_bytes,
        )
    }
}

fn open_partition(
    partition_dir: &Path,
    schema: &Schema,
    tokenizer_manager: &TokenizerManager,
    writer_memory_bytes: usize,
) -> Result<PartitionIndex, SearchError> {
    std::fs::create_dir_all(partition_dir).map_err(|error| {
        SearchError::Index(format!("creating {}: {error}", partition_dir.display()).into())
    })?;
    let directory = MmapDirectory::open(partition_dir).map_err(|error| {
        SearchError::Index(format!("opening {}: {error}", partition_dir.display()).into())
    })?;
    let mut index = Index::open_or_create(directory, schema.clone())?;
    if index.schema() != *schema {
        return Err(SearchError::Index(
            format!(
                "{} holds an index of another schema",
                partition_dir.display()
            )
            .into(),
        ));
    }
    index.set_tokenizers(tokenizer_manager.clone());
    let position = match index.load_metas()?.payload {
        Some(payload) => payload.parse::<Offset>().map_err(|error| {
            SearchError::Index(
                format!(
                    "bad position {payload:?} in {}: {error}",
                    partition_dir.display()
                )
                .into(),
            )
        })?,
        None => 0,
    };
    let writer_options = IndexWriterOptions::builder()
        .memory_budget_per_thread(writer_memory_bytes)
        .num_worker_threads(1)
        .num_merge_threads(1)
        .build();
    let writer = index.writer_with_options(writer_options)?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    Ok(PartitionIndex {
        reader,
        writer: Arc::new(Mutex::new(writer)),
        position: AtomicU64::new(position),
    })
}

/// Commits the writer's pending operations with `position` as the commit payload.
fn commit_with_position(writer: &mut IndexWriter, position: Offset) -> Result<(), SearchError> {
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&position.to_string());
    prepared.commit()?;
    Ok(())
}

/// Parses a user's search query (`q` of `GET /v1/search`) into the query on the message text
/// that [`SearchIndex::search_with_limits`] runs (before scoping it to the caller's
/// conversations): the whole sanitising and parsing step, for any input. [`EmptyQuery`] when
/// nothing in the text is searchable; [`SearchError::BadQuery`] when it is empty or breaks one
/// of `limits`, naming the bound. Never recurses on the input's nesting (see
/// [`crate::search_query`]).
pub fn parse_user_query(
    text: &str,
    limits: &SearchQueryLimits,
) -> Result<Box<dyn Query>, SearchError> {
    let (_, fields) = MessageFields::build_schema();
    let parsed = build_user_query(text, limits, fields.text, &mut chorus_text_analyzer())?;
    Ok(parsed.unwrap_or_else(|| Box::new(EmptyQuery)))
}

/// A hit's snippet: the text around the query's words, highlighted, or the text's start.
fn snippet(text: &str, generator: &SnippetGenerator) -> String {
    // as `SnippetGenerator::snippet_from_doc` reads a document's one text
    let snippet = generator.snippet(text.trim());
    if snippet.is_empty() {
        plain_snippet(text)
    } else {
        snippet.to_html()
    }
}

/// A snippet without highlights: the start of the text, escaped like highlighted snippets.
fn plain_snippet(text: &str) -> String {
    let mut snippet = String::new();
    for character in text.chars().take(SNIPPET_MAX_CHARS) {
        match character {
            '"' => snippet.push_str("&quot;"),
            '&' => snippet.push_str("&amp;"),
            '\'' => snippet.push_str("&#x27;"),
            '<' => snippet.push_str("&lt;"),
            '>' => snippet.push_str("&gt;"),
            other => snippet.push(other),
        }
    }
    snippet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_snippets_are_escaped_and_bounded() {
        assert_eq!(
            plain_snippet("a <b> & 'c' \"d\""),
            "a &lt;b&gt; &amp; &#x27;c&#x27; &quot;d&quot;"
        );
        assert_eq!(plain_snippet(&"x".repeat(500)).len(), SNIPPET_MAX_CHARS);
    }

    #[test]
    fn keys_join_conversation_and_seq() {
        assert_eq!(message_key("g:team", 42), "g:team\u{1f}42");
    }
}
