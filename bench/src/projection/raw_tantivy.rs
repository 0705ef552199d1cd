//! The raw Tantivy baseline: the same message documents indexed and queried with Tantivy alone.
//!
//! The index takes its schema from the Chorus search index built in the same run (read from its
//! `meta.json`, so the fields and their options are exactly Chorus's) and registers Chorus's
//! analyzer (`chorus_store::tokenizer`), so text is tokenized identically. What it leaves out is
//! what Chorus adds around Tantivy: the log, Avro decoding, the projector's batching, the upsert
//! by key (a delete term per document), one index per partition, and a commit per batch with its
//! position. One `IndexWriter` (Tantivy's own choice of indexing threads, unless told) with the
//! memory budget Chorus gives all its writers together, one commit at the end. Two variants put
//! back one of Chorus's costs each, to show what it weighs ([`RawOptions`]): a delete term before
//! every document (Chorus's upsert), and a commit every so many documents.
//!
//! A query is the same as Chorus's: the text parsed by a `QueryParser` on the text field with AND
//! as the default operator, AND any of the user's conversations, the best `limit` by BM25, each
//! hit's stored fields loaded and a snippet made (what a search answer needs). The only
//! difference is that it is one index instead of one per partition.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chorus_store::search_index::TOTAL_WRITER_MEMORY_BYTES;
use chorus_store::tokenizer::register_chorus_tokenizer;
use indicatif::ProgressBar;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// Separates conversation and seq in a document key, as in `chorus_store::search_index`.
const KEY_SEPARATOR: char = '\u{1f}';
/// Snippet length in characters, as in `chorus_store::search_index`.
const SNIPPET_MAX_CHARS: usize = 150;

/// One message document, as the search projection indexes it.
pub struct RawDocument {
    /// Index into the corpus's conversations.
    pub conversation: u32,
    pub seq: u64,
    pub sender: String,
    pub ts_ms: i64,
    pub text: String,
}

/// The fields of Chorus's schema, looked up by name.
#[derive(Clone, Copy)]
struct RawFields {
    key: Field,
    conversation: Field,
    seq: Field,
    sender: Field,
    ts: Field,
    text: Field,
}

impl RawFields {
    fn of(schema: &Schema) -> anyhow::Result<Self> {
        let field = |name: &str| {
            schema
                .get_field(name)
                .with_context(|| format!("chorus's search schema has no field {name:?}"))
        };
        Ok(RawFields {
            key: field("key")?,
            conversation: field("conversation")?,
            seq: field("seq")?,
            sender: field("sender")?,
            ts: field("ts")?,
            text: field("text")?,
        })
    }
}

/// How to build the raw index.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawOptions {
    /// Indexing threads; `None`: Tantivy's choice.
    pub threads: Option<usize>,
    /// Delete the document's key before adding it, as Chorus's upsert does.
    pub upsert: bool,
    /// Commit after every this many documents; `None`: once, at the end.
    pub commit_every: Option<usize>,
}

/// How the raw index was built.
pub struct RawIndexing {
    pub documents: u64,
    pub seconds: f64,
    pub indexing_threads: usize,
    pub memory_budget_bytes: usize,
    pub upsert: bool,
    pub commits: u64,
    /// CPU time of the whole process (user + system) while indexing.
    pub cpu_seconds: f64,
}

/// A raw index, built and ready to query.
pub struct RawIndex {
    reader: IndexReader,
    fields: RawFields,
    query_parser: QueryParser,
}

/// The schema of the Chorus search index under `chorus_search_dir` (its first partition).
pub fn chorus_schema(chorus_search_dir: &Path) -> anyhow::Result<Schema> {
    let partition_dir = chorus_search_dir.join("p0");
    let index = Index::open_in_dir(&partition_dir)
        .with_context(|| format!("opening {}", partition_dir.display()))?;
    Ok(index.schema())
}

impl RawIndex {
    /// Indexes `documents` into a fresh index in `dir`, committing as `options` say.
    pub fn build(
        dir: &Path,
        schema: Schema,
        conversations: &[String],
        documents: &[RawDocument],
        options: RawOptions,
        bar: &ProgressBar,
    ) -> anyhow::Result<(RawIndex, RawIndexing)> {
        std::fs::create_dir_all(dir)?;
        let fields = RawFields::of(&schema)?;
        let mut index = Index::create_in_dir(dir, schema.clone())?;
        let tokenizers = tantivy::tokenizer::TokenizerManager::default();
        register_chorus_tokenizer(&tokenizers);
        index.set_tokenizers(tokenizers.clone());
        let cpu_before = crate::server::cpu_seconds(std::process::id())?;
        let started = Instant::now();
        let mut writer: IndexWriter = match options.threads {
            Some(threads) => index.writer_with_num_threads(threads, TOTAL_WRITER_MEMORY_BYTES)?,
            None => index.writer(TOTAL_WRITER_MEMORY_BYTES)?,
        };
        let indexing_threads = options.threads.unwrap_or_else(|| {
            let available = std::thread::available_parallelism().map_or(1, usize::from);
            available.min(8)
        });
        let mut commits = 0u64;
        for (count, document) in documents.iter().enumerate() {
            let conversation = &conversations[document.conversation as usize];
            let key = format!("{conversation}{KEY_SEPARATOR}{}", document.seq);
            if options.upsert {
                writer.delete_term(Term::from_field_text(fields.key, &key));
            }
            let mut tantivy_document = TantivyDocument::default();
            tantivy_document.add_text(fields.key, key);
            tantivy_document.add_text(fields.conversation, conversation);
            tantivy_document.add_u64(fields.seq, document.seq);
            tantivy_document.add_text(fields.sender, &document.sender);
            tantivy_document.add_i64(fields.ts, document.ts_ms);
            tantivy_document.add_text(fields.text, &document.text);
            writer.add_document(tantivy_document)?;
            if options
                .commit_every
                .is_some_and(|every| (count + 1) % every.max(1) == 0)
            {
                writer.commit()?;
                commits += 1;
            }
            if count % 4096 == 0 {
                bar.set_position(count as u64);
            }
        }
        writer.commit()?;
        commits += 1;
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = crate::server::cpu_seconds(std::process::id())? - cpu_before;
        bar.set_position(documents.len() as u64);
        writer.wait_merging_threads()?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let mut query_parser = QueryParser::new(schema, vec![fields.text], tokenizers);
        query_parser.set_conjunction_by_default();
        let indexing = RawIndexing {
            documents: documents.len() as u64,
            seconds,
            indexing_threads,
            memory_budget_bytes: TOTAL_WRITER_MEMORY_BYTES,
            upsert: options.upsert,
            commits,
            cpu_seconds,
        };
        Ok((
            RawIndex {
                reader,
                fields,
                query_parser,
            },
            indexing,
        ))
    }

    pub fn document_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The best `limit` matches of `query` among `conversations`, with their stored fields and
    /// snippets; returns how many there were. Blocking.
    pub fn search(
        &self,
        query: &str,
        conversations: &[String],
        limit: usize,
    ) -> anyhow::Result<usize> {
        let (text_query, _ignored) = self.query_parser.parse_query_lenient(query);
        let conversation_clauses: Vec<(Occur, Box<dyn Query>)> = conversations
            .iter()
            .map(|conversation| {
                let term = Term::from_field_text(self.fields.conversation, conversation);
                let clause: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                (Occur::Should, clause)
            })
            .collect();
        let scoped_query = BooleanQuery::new(vec![
            (Occur::Must, text_query.box_clone()),
            (
                Occur::Must,
                Box::new(BooleanQuery::new(conversation_clauses)),
            ),
        ]);
        let searcher = self.reader.searcher();
        let top_documents =
            searcher.search(&scoped_query, &TopDocs::with_limit(limit).order_by_score())?;
        if top_documents.is_empty() {
            return Ok(0);
        }
        let mut snippets =
            SnippetGenerator::create(&searcher, text_query.as_ref(), self.fields.text)?;
        snippets.set_max_num_chars(SNIPPET_MAX_CHARS);
        let mut found = 0;
        for (_score, address) in top_documents {
            let document: TantivyDocument = searcher.doc(address)?;
            let snippet = snippets.snippet_from_doc(&document);
            // what an answer carries: the stored fields and the snippet
            std::hint::black_box((
                document.get_first(self.fields.sender),
                document.get_first(self.fields.seq),
                document.get_first(self.fields.ts),
                document.get_first(self.fields.conversation),
                snippet.to_html(),
            ));
            found += 1;
        }
        Ok(found)
    }
}
