//! The caller's scope as a search filter: the documents of a set of conversations.
//!
//! Each conversation is looked up in the segment's term dictionary and its postings set bits in
//! one bitset, scoring nothing. Tantivy's `TermSetQuery` does the same from an automaton it
//! builds for every search: its builder's zeroed registry and the walk of the dictionary took
//! about a third of a query's CPU for a user in a hundred conversations (profiled, see
//! docs/BENCHMARKS.md). Here the cost is one dictionary lookup per conversation and segment,
//! plus its postings: linear in the conversations, no clause per conversation.

use std::sync::Arc;

use tantivy::query::{
    BitSetDocSet, ConstScorer, EnableScoring, Explanation, Query, Scorer, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{BitSet, DocId, DocSet, Score, SegmentReader, TantivyError, Term};

/// Matches the documents whose `field` is one of the conversations, with score 0: the scope
/// filters and leaves the ranking to the text.
#[derive(Debug, Clone)]
pub(super) struct ConversationFilter {
    field: Field,
    /// Sorted, without duplicates.
    terms: Arc<[Term]>,
}

impl ConversationFilter {
    pub(super) fn new<'a>(field: Field, conversations: impl IntoIterator<Item = &'a str>) -> Self {
        let mut terms: Vec<Term> = conversations
            .into_iter()
            .map(|conversation| Term::from_field_text(field, conversation))
            .collect();
        terms.sort_unstable();
        terms.dedup();
        ConversationFilter {
            field,
            terms: terms.into(),
        }
    }
}

impl Query for ConversationFilter {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for ConversationFilter {
    fn scorer(&self, reader: &SegmentReader, _boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let mut documents = BitSet::with_max_value(reader.max_doc());
        let inverted_index = reader.inverted_index(self.field)?;
        for term in self.terms.iter() {
            let Some(term_info) = inverted_index.get_term_info(term)? else {
                continue;
            };
            let mut postings = inverted_index
                .read_block_postings_from_terminfo(&term_info, IndexRecordOption::Basic)?;
            loop {
                let block = postings.docs();
                if block.is_empty() {
                    break;
                }
                for &document in block {
                    documents.insert(document);
                }
                postings.advance();
            }
        }
        Ok(Box::new(ConstScorer::new(
            BitSetDocSet::from(documents),
            0.0,
        )))
    }

    fn explain(&self, reader: &SegmentReader, document: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.seek(document) == document {
            Ok(Explanation::new("in the caller's conversations", 0.0))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "document {document} is not in the caller's conversations"
            )))
        }
    }
}
