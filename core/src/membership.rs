//! Read access to conversation membership, for stages that must check it outside the sequencer
//! (typing indicators at the edge). The sequencer's own state is authoritative for writes; this
//! view comes from the history projection and may lag it slightly.

use async_trait::async_trait;

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// The members of a conversation (empty when unknown).
    async fn members(&self, conversation: &str) -> Result<Vec<String>, String>;
}
