//! The ingest stage's port for conversation membership, which it must check outside the
//! sequencer (typing indicators at the edge). The sequencer's own state is authoritative for
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
}

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// The members of a conversation (empty when unknown).
    async fn members(&self, conversation: &str) -> Result<Vec<String>, MembershipError>;
}
