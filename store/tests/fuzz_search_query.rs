//! Fuzz target of the search query path: the whole sanitising and parsing step
//! ([`parse_user_query`], what `GET /v1/search?q=` runs) and the search that executes it.
//!
//! Guarantee checked on every input: a query built from the grammar's own tokens (parentheses,
//! `AND`/`OR`/`NOT`, `+`/`-`, quotes, field-like `name:`, `*`, `^`, `~`, ranges, escapes), words
//! in several scripts, and runs of one token repeated hundreds or thousands of times (the nesting
//! that overflowed the stack in issue 11), returns `Ok` or `SearchError::BadQuery` under the
//! default limits and under very large ones, never panics and never overflows the stack of a
//! tokio worker thread (2 MiB, the size it runs on here); an accepted query runs on an index.
//!
//! Under `cargo test` the target runs a bounded number of random inputs (seconds); the long run
//! is described in docs/FUZZING.md.

use std::sync::Arc;

use bolero::{TypeGenerator, check};
use chorus_schemas::{EventBody, TimelineEvent};
use chorus_store::search_index::parse_user_query;
use chorus_store::{SearchError, SearchIndex, SearchQueryLimits};

/// Inputs of one short run under `cargo test`.
const SHORT_RUN_ITERATIONS: usize = 400;
/// The stack of a tokio worker thread, where searches run in the server.
const WORKER_STACK_BYTES: usize = 2 * 1024 * 1024;

/// One piece of a query.
#[derive(Debug, Clone, TypeGenerator)]
enum QueryPiece {
    Token(u8),
    Word(u8),
    Text(String),
    /// One token repeated: deep nesting, long operator chains.
    Repeat(u8, u16),
}

const TOKENS: [&str; 24] = [
    "(",
    ")",
    " ",
    "NOT ",
    " AND ",
    " OR ",
    "+",
    "-",
    "\"",
    ":",
    "*",
    "^2",
    "~1",
    "[",
    "]",
    "{",
    "}",
    " TO ",
    "\\",
    "text:",
    "conversation:",
    "'",
    "!",
    "\t",
];
const WORDS: [&str; 10] = [
    "hello",
    "北京",
    "开会",
    "今天我们去北京开会",
    "naïve",
    "🙂",
    "a",
    "x1",
    "ÀÉÎ",
    "مرحبا",
];

fn render(pieces: &[QueryPiece]) -> String {
    let mut query = String::new();
    for piece in pieces {
        match piece {
            QueryPiece::Token(selector) => {
                query.push_str(TOKENS[usize::from(*selector) % TOKENS.len()])
            }
            QueryPiece::Word(selector) => {
                query.push_str(WORDS[usize::from(*selector) % WORDS.len()])
            }
            QueryPiece::Text(text) => query.push_str(text),
            QueryPiece::Repeat(selector, count) => {
                let token = TOKENS[usize::from(*selector) % TOKENS.len()];
                query.push_str(&token.repeat(usize::from(*count) % 6_000));
            }
        }
    }
    query
}

/// Limits far above the defaults, so the parser itself (not a bound) meets deep inputs.
fn huge_limits() -> SearchQueryLimits {
    SearchQueryLimits {
        max_bytes: 1024 * 1024,
        max_depth: 64,
        max_clauses: 100_000,
    }
}

/// A one-partition index with a few messages, so accepted queries run on real documents.
fn small_index(directory: &tempfile::TempDir) -> Arc<SearchIndex> {
    let index = SearchIndex::open(directory.path(), 1).unwrap();
    let texts = [
        "hello world",
        "今天我们去北京开会",
        "naïve café 🙂",
        "a b c d e f",
    ];
    let records: Vec<(u64, TimelineEvent)> = texts
        .iter()
        .zip(0u64..)
        .map(|(text, offset)| {
            (
                offset,
                TimelineEvent {
                    conversation: "dm:alice:bob".into(),
                    seq: Some(offset + 1),
                    event_id: format!("e{offset}"),
                    sender: "alice".into(),
                    ts_ms: 1,
                    origin_cluster: "local".into(),
                    client_msg_id: None,
                    ingress_offset: offset,
                    body: EventBody::message(*text),
                },
            )
        })
        .collect();
    index.apply(0, &records, records.len() as u64).unwrap();
    index
}

fn check_query(index: &SearchIndex, query: &str) {
    for limits in [SearchQueryLimits::default(), huge_limits()] {
        match parse_user_query(query, &limits) {
            Ok(_) => {
                let found =
                    index.search_with_limits(query, &limits, &["dm:alice:bob".to_owned()], 10);
                assert!(
                    matches!(found, Ok(_) | Err(SearchError::BadQuery(_))),
                    "{found:?}"
                );
            }
            Err(SearchError::BadQuery(message)) => assert!(!message.is_empty()),
            Err(other) => panic!("parse gave {other} for {query:?}"),
        }
    }
}

/// Runs `body` on a thread with a tokio worker's stack, as the server would.
fn on_worker_stack(body: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK_BYTES)
        .spawn(body)
        .unwrap()
        .join()
        .expect("the search step panicked");
}

#[test]
fn fuzz_search_query_path() {
    on_worker_stack(|| {
        let directory = tempfile::tempdir().unwrap();
        // a panic fails the test, so the index is never used after one
        let index = std::panic::AssertUnwindSafe(small_index(&directory));
        check!()
            .with_type::<Vec<QueryPiece>>()
            .with_iterations(SHORT_RUN_ITERATIONS)
            .for_each(|pieces| check_query(&index, &render(pieces)));
    });
}

/// The shapes of issue 11 that aborted a node (and variants of them), through the whole path.
#[test]
fn the_issue_shapes_answer_without_overflowing_the_stack() {
    on_worker_stack(|| {
        let directory = tempfile::tempdir().unwrap();
        let index = small_index(&directory);
        let shapes = [
            format!("{}hello{}", "(".repeat(800), ")".repeat(800)),
            format!("{}hello", "NOT ".repeat(3_000)),
            "(".repeat(5_000),
            format!("{}hello", "-".repeat(5_000)),
            format!("{}hello", "+(".repeat(2_000)),
            "\"".repeat(10_000),
            format!("{}hello", "text:".repeat(2_000)),
        ];
        for shape in &shapes {
            check_query(&index, shape);
        }
    });
}

/// Found by `fuzz_search_query_path`: excluding a word of several tokens or a quoted phrase
/// (`-"hello world"`, `-北京开会`, `-a-b`) panicked inside Tantivy's phrase scorer
/// ("target (0) should be greater than or equal to doc (2147483647)"), failing the request in
/// every build with debug assertions. Each must answer, with every message but the excluded ones.
#[test]
fn excluded_phrases_do_not_panic_and_exclude() {
    on_worker_stack(|| {
        let directory = tempfile::tempdir().unwrap();
        let index = small_index(&directory);
        for (query, expected_hits) in [
            ("-\"hello world\"", 3),
            ("-北京开会", 3),
            ("-a-b", 3),
            // the word "hello-hello" (a phrase of two hellos) is in no message
            ("----hello-hello((((", 4),
        ] {
            let hits = index
                .search_with_limits(
                    query,
                    &SearchQueryLimits::default(),
                    &["dm:alice:bob".to_owned()],
                    10,
                )
                .unwrap_or_else(|error| panic!("{query:?}: {error}"));
            assert_eq!(hits.len(), expected_hits, "{query:?}");
        }
    });
}
