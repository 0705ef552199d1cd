//! The search scenario: query-by-query latency of Chorus's search path (the `/v1/search`
//! handler's conversation look-up, then `SearchIndex::search`) against the same queries on the
//! raw Tantivy index, and its report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_store::embedded::EmbeddedHistory;
use chorus_store::{HistoryStore, SearchIndex};
use hdrhistogram::Histogram;
use serde_json::json;

use super::Args;
use super::corpus::{Corpus, SEARCHER};
use super::raw_tantivy::RawIndex;
use crate::report::{self, Report, Row};

/// Most queries run to warm caches before recording.
const MAX_WARMUP_QUERIES: usize = 100;

/// Query-by-query latency of Chorus's search path and the raw index.
pub(super) async fn search_latency(
    args: &Args,
    corpus: &Corpus,
    history: Arc<EmbeddedHistory>,
    index: Arc<SearchIndex>,
    raw: Arc<RawIndex>,
) -> anyhow::Result<Report> {
    let listed = history.conversations(SEARCHER).await?;
    let scope: Arc<Vec<String>> = Arc::new(listed.into_iter().map(|summary| summary.id).collect());
    anyhow::ensure!(
        scope.len() == args.corpus.searcher_conversations as usize,
        "{SEARCHER} is in {} conversations, not {}",
        scope.len(),
        args.corpus.searcher_conversations
    );
    let warmup = (args.queries / 10).min(MAX_WARMUP_QUERIES);
    let queries = corpus.queries(warmup + args.queries);
    let limit = args.hits;
    let mut index_micros = report::micros_histogram();
    let mut handler_micros = report::micros_histogram();
    let mut raw_micros = report::micros_histogram();
    let (mut chorus_hits, mut raw_hits, mut empty, mut agreeing) = (0u64, 0u64, 0u64, 0u64);
    let bar = report::progress("search", Some(queries.len() as u64));
    for (number, query) in queries.iter().enumerate() {
        // as the /v1/search handler: the caller's conversations, then the index, blocking
        let started = Instant::now();
        let conversations: Vec<String> = history
            .conversations(SEARCHER)
            .await?
            .into_iter()
            .map(|summary| summary.id)
            .collect();
        let searching = Instant::now();
        let found = tokio::task::spawn_blocking({
            let index = index.clone();
            let query = query.clone();
            move || index.search(&query, &conversations, limit)
        })
        .await??;
        let index_elapsed = searching.elapsed();
        let handler_elapsed = started.elapsed();
        let raw_started = Instant::now();
        let raw_found = tokio::task::spawn_blocking({
            let raw = raw.clone();
            let query = query.clone();
            let scope = scope.clone();
            move || raw.search(&query, &scope, limit)
        })
        .await??;
        let raw_elapsed = raw_started.elapsed();
        bar.inc(1);
        if number < warmup {
            continue;
        }
        record(&mut index_micros, index_elapsed);
        record(&mut handler_micros, handler_elapsed);
        record(&mut raw_micros, raw_elapsed);
        chorus_hits += found.len() as u64;
        raw_hits += raw_found as u64;
        empty += u64::from(found.is_empty());
        agreeing += u64::from(found.len() == raw_found);
    }
    bar.finish_and_clear();
    let measured = args.queries as u64;
    Ok(Report {
        scenario: "search".into(),
        json: json!({
            "queries": measured, "warmup_queries": warmup, "hits_limit": limit,
            "searcher": SEARCHER, "conversations_in_scope": scope.len(),
            "documents": index.document_count(),
            "chorus_index_search": report::summary(&index_micros),
            "chorus_with_conversation_list": report::summary(&handler_micros),
            "raw_tantivy": report::summary(&raw_micros),
            "mean_hits": {"chorus": chorus_hits as f64 / measured.max(1) as f64,
                          "raw": raw_hits as f64 / measured.max(1) as f64},
            "queries_without_hits": empty,
            "queries_with_equal_hit_counts": agreeing,
            "example_queries": queries.iter().skip(warmup).take(12).collect::<Vec<_>>(),
            "note": "chorus: SearchIndex::search over the searcher's conversations (one index per partition, snippets); with_conversation_list adds the history look-up the /v1/search handler makes first; raw: one index, same query, hits and snippets",
        }),
        rows: vec![
            Row::new("search p50", report::millis(&index_micros, 0.5), "ms")
                .against(report::millis(&raw_micros, 0.5)),
            Row::new("search p99", report::millis(&index_micros, 0.99), "ms")
                .against(report::millis(&raw_micros, 0.99)),
            Row::new(
                "search + conversation list p99",
                report::millis(&handler_micros, 0.99),
                "ms",
            ),
        ],
    })
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(elapsed.as_micros() as u64);
}
