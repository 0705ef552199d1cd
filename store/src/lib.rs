//! Chorus projections' storage: the history port with its embedded adapter, and the Tantivy
//! search index.
//!
//! Both stores are written only by the projector and read by the search/history API. Each keeps
//! its position per timeline partition ("next offset to apply", see `chorus_log`) in the
//! same atomic step as the output it describes: the history store in the same write transaction,
//! the search index in the Tantivy commit payload. Which records of a batch an adapter applies,
//! given its stored position, is decided once, by [`position::records_to_apply`] (records below
//! the position are skipped, so replaying a stretch of the log changes nothing).
//!
//! The crate reads no configuration: callers pass what it needs (e.g. [`SearchQueryLimits`],
//! built from `[limits]`). Errors keep their cause as `source` ([`history::ErrorCause`],
//! [`Unavailability`]). The history port's conformance suite (`history::conformance` and the
//! `history_conformance!` macro) is compiled with the feature `testsuite`.

pub mod embedded;
pub mod history;
pub mod position;
pub mod search_index;
pub mod search_query;
pub mod tokenizer;

pub use embedded::EmbeddedHistory;
pub use history::{
    ConversationSummary, HistoryError, HistoryStore, MessagePage, MessageView, ReplyView,
    Unavailability,
};
pub use search_index::{
    Matches, ScoredHit, SearchError, SearchHit, SearchIndex, SearchQueryLimits, SnippetTerms,
    merge_hits,
};
