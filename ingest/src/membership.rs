//! The ingest stage's port for conversation membership and messages, which it must read outside
//! the sequencer: typing indicators at the edge, and the message a user forwards (a read of
//! the source conversation, authorized as the history API authorizes reads, followed by a
//! send into the target, which the sequencer checks). The sequencer's own state is authoritative for
//! writes; this view comes from the history projection and may lag it slightly. The composition
//! chooses the adapter (the history store, or none for groups on a node without a shared
//! history).

use async_trait::async_trait;

/// Why the members of a conversation could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The store behind the membership view failed; its error is kept as the cause.
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// This node has no membership view for group conversations.
    #[error("group membership is not available on this ingest node")]
    NoGroupView,
    /// This node has no view of message history (to forward from).
    #[error("message history is not available on this ingest node")]
    NoHistoryView,
}

/// A message as the history projection holds it now, for forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub sender: String,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// `None` once recalled.
    pub text: Option<String>,
    /// The file it carries.
    pub attachment: Option<Box<chorus_schemas::Attachment>>,
}

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// The members of a conversation (empty when unknown).
    async fn members(&self, conversation: &str) -> Result<Vec<String>, MembershipError>;

    /// Message `seq` of `conversation` as it stands now; `None` when there is no such message
    /// (or it is not projected yet).
    async fn message(
        &self,
        conversation: &str,
        seq: u64,
    ) -> Result<Option<StoredMessage>, MembershipError>;
}
