//! The presence and node-to-node delivery port, with its in-process adapter.
//!
//! Presence maps user → sessions → node. The router looks up the nodes that hold a recipient and
//! sends each node one [`Delivery`] naming the recipients; the node's [`DeliverySink`] (its
//! session hub) hands the pre-serialised frame to its local sessions. Delivery is at least once
//! and may race; clients order by seq and fill gaps from history, so a lost delivery costs a
//! history fetch, never a message.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// A JSON frame, serialised once and shared by every recipient.
pub type Frame = Arc<str>;

/// What a node is asked to hand to its local sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// The frame goes to every local session of these users.
    ToUsers { users: Vec<String>, frame: Frame },
    /// The frame goes to one session (an ack or an error for its sender), or completes an HTTP
    /// request waiting under that id.
    ToSession { session: String, frame: Frame },
}

/// Where a node's deliveries land: its session hub. Must not block.
pub trait DeliverySink: Send + Sync + 'static {
    fn deliver(&self, delivery: Delivery);
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records that `session` of `user` is open on `node`.
    async fn session_opened(
        &self,
        user: &str,
        session: &str,
        node: &str,
    ) -> Result<(), PresenceError>;
    /// Removes a session.
    async fn session_closed(&self, user: &str, session: &str) -> Result<(), PresenceError>;
    /// How many sessions `user` has open, over all nodes.
    async fn session_count(&self, user: &str) -> Result<usize, PresenceError>;
    /// For each node holding at least one of `users`, the users it holds.
    async fn nodes_of(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Vec<String>>, PresenceError>;
}

#[async_trait]
pub trait NodeBus: Send + Sync + 'static {
    /// Makes `sink` receive the deliveries addressed to `node`.
    async fn attach(&self, node: &str, sink: Arc<dyn DeliverySink>) -> Result<(), PresenceError>;
    /// Sends a delivery to one node. A node that is gone drops it (at-least-once is restored by
    /// the client's gap filling).
    async fn send(&self, node: &str, delivery: Delivery) -> Result<(), PresenceError>;
}

/// In-process presence: a map guarded by a lock. The embedded default's adapter.
#[derive(Default)]
pub struct LocalPresence {
    /// user → (session → node).
    sessions: RwLock<HashMap<String, HashMap<String, String>>>,
}

#[async_trait]
impl Presence for LocalPresence {
    async fn session_opened(
        &self,
        user: &str,
        session: &str,
        node: &str,
    ) -> Result<(), PresenceError> {
        self.sessions
            .write()
            .entry(user.to_owned())
            .or_default()
            .insert(session.to_owned(), node.to_owned());
        Ok(())
    }

    async fn session_closed(&self, user: &str, session: &str) -> Result<(), PresenceError> {
        let mut sessions = self.sessions.write();
        if let Some(user_sessions) = sessions.get_mut(user) {
            user_sessions.remove(session);
            if user_sessions.is_empty() {
                sessions.remove(user);
            }
        }
        Ok(())
    }

    async fn session_count(&self, user: &str) -> Result<usize, PresenceError> {
        Ok(self.sessions.read().get(user).map_or(0, HashMap::len))
    }

    async fn nodes_of(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Vec<String>>, PresenceError> {
        let sessions = self.sessions.read();
        let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
        for user in users {
            let Some(user_sessions) = sessions.get(user) else {
                continue;
            };
            let nodes: HashSet<&String> = user_sessions.values().collect();
            for node in nodes {
                by_node.entry(node.clone()).or_default().push(user.clone());
            }
        }
        Ok(by_node)
    }
}

/// In-process node bus: a direct call into the attached sink. The embedded default's adapter.
#[derive(Default)]
pub struct LocalBus {
    /// node → its sink.
    sinks: RwLock<HashMap<String, Arc<dyn DeliverySink>>>,
}

#[async_trait]
impl NodeBus for LocalBus {
    async fn attach(&self, node: &str, sink: Arc<dyn DeliverySink>) -> Result<(), PresenceError> {
        self.sinks.write().insert(node.to_owned(), sink);
        Ok(())
    }

    async fn send(&self, node: &str, delivery: Delivery) -> Result<(), PresenceError> {
        let sink = self.sinks.read().get(node).cloned();
        if let Some(sink) = sink {
            sink.deliver(delivery);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn presence_groups_users_by_node() {
        let presence = LocalPresence::default();
        presence.session_opened("alice", "s1", "n1").await.unwrap();
        presence.session_opened("alice", "s2", "n2").await.unwrap();
        presence.session_opened("bob", "s3", "n1").await.unwrap();
        assert_eq!(presence.session_count("alice").await.unwrap(), 2);
        let nodes = presence
            .nodes_of(&["alice".into(), "bob".into(), "carol".into()])
            .await
            .unwrap();
        let mut n1 = nodes["n1"].clone();
        n1.sort();
        assert_eq!(n1, vec!["alice".to_owned(), "bob".to_owned()]);
        assert_eq!(nodes["n2"], vec!["alice".to_owned()]);
        presence.session_closed("alice", "s2").await.unwrap();
        assert!(
            !presence
                .nodes_of(&["alice".into()])
                .await
                .unwrap()
                .contains_key("n2")
        );
    }
}
