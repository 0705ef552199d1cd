//! Chorus projections' storage: the history port with its embedded adapter, and the Tantivy
//! search index.
//!
//! Both stores are written only by the projector and read by the search/history API. Each keeps
//! its position per timeline partition ("next offset to apply", see `chorus_core::log`) in the
//! same atomic step as the output it describes: the history store in the same write transaction,
//! the search index in the Tantivy commit payload. Applying a record whose offset is below the
//! stored position is a no-op, so replaying a stretch of the log changes nothing.

pub mod embedded;
pub mod history;
pub mod search_index;
pub mod search_query;
pub mod tokenizer;

pub use embedded::EmbeddedHistory;
pub use history::{ConversationSummary, HistoryError, HistoryStore, MessagePage, MessageView};
pub use search_index::{SearchError, SearchHit, SearchIndex, SearchQueryLimits};
