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

use crate::protocol::outbound::EventOutcome;

/// A JSON frame, serialised once and shared by every recipient.
pub type Frame = Arc<str>;

/// What a node is asked to hand to its local sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// The frame goes to every local session of these users.
    ToUsers {
        users: Vec<String>,
        frame: Frame,
        /// Where a frame of a conversation's timeline comes from (set by the router; `None` for
        /// typing, and in deliveries from nodes that predate it: the field is optional on the
        /// wire, so both can be read by either).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sequencing: Option<Sequencing>,
    },
    /// The outcome of an event (its ack or its error) goes to its sender's session, written as
    /// a frame only there, or completes the HTTP request waiting under that id, typed.
    ToSession {
        session: String,
        /// On the wire between nodes (Redis channel, `deliveries` topic) the outcome travels as
        /// the text of its frame under the key `frame`, as it always did, so nodes of the
        /// previous version and this one exchange acks during a rolling upgrade.
        #[serde(
            rename = "frame",
            with = "crate::protocol::outbound::outcome_as_frame_text"
        )]
        outcome: EventOutcome,
    },
}

/// The origin of a timeline frame (an `event`, or a `read` mark), which the edge uses to keep
/// each connection's order when a router that lost its partition still sends (a paused
/// process, resumed after its successor took over):
/// - `owner_epoch` is the sending router's ownership epoch of `partition`: the `timeline` end
///   offset it found when it recovered the partition, once the group said no transaction of an
///   earlier holder could still commit. So every record of an earlier owner lies below that
///   offset, and an owner that appended
///   anything started below its first record, so a later owner's epoch is strictly greater than
///   that of every earlier owner with something to deliver. A node drops a delivery whose epoch
///   is below the highest it has seen for the partition;
/// - `seq` is the event's seq (`None` for read marks); a connection never gets an event at or
///   below the seq it already got for the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequencing {
    /// The `timeline` partition of the conversation.
    pub partition: u32,
    /// The sending router's ownership epoch of the partition.
    pub owner_epoch: u64,
    /// The conversation the frame belongs to.
    pub conversation: String,
    /// The event's seq; `None` for frames without one (read marks).
    pub seq: Option<u64>,
}

/// Where a node's deliveries land: its session hub. Must not block.
pub trait DeliverySink: Send + Sync + 'static {
    fn deliver(&self, delivery: Delivery);
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The backend cannot answer now: why, and the backend's error behind it when there is one.
    #[error("presence backend unavailable: {0}")]
    Unavailable(#[source] chorus_log::Unavailability),
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
    /// For each live node holding at least one of `users`, the users it holds.
    async fn nodes_of(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Vec<String>>, PresenceError>;
    /// Tells presence that `node` is alive. Nodes call it periodically; the sessions of a node
    /// that stops calling it are dropped once its liveness expires (distributed adapters).
    /// Returns whether presence still knew the node: `false` means its session entries may be
    /// gone (its liveness expired, or the backend restarted empty), and the node must register
    /// its sessions again.
    async fn heartbeat(&self, _node: &str) -> Result<bool, PresenceError> {
        Ok(true)
    }
}

#[async_trait]
pub trait NodeBus: Send + Sync + 'static {
    /// Makes `sink` receive the deliveries addressed to `node`.
    async fn attach(&self, node: &str, sink: Arc<dyn DeliverySink>) -> Result<(), PresenceError>;
    /// Sends a delivery to one node. Fails with [`PresenceError::Unavailable`] when the bus
    /// knows nobody received it (no node attached under that name: gone, or re-attaching after
    /// an outage), so the caller may take another path; a node that dies after receiving it
    /// loses it (at-least-once is restored by the client's gap filling).
    async fn send(&self, node: &str, delivery: Delivery) -> Result<(), PresenceError>;

    /// Sends many deliveries, each to its node, keeping their order per node; returns those not
    /// known to be received (as [`NodeBus::send`] would have failed them), in input order.
    /// Adapters with round trips override it to pay one for the whole batch.
    async fn send_many(&self, deliveries: Vec<(String, Delivery)>) -> Vec<(String, Delivery)> {
        let mut failed = Vec::new();
        for (node, delivery) in deliveries {
            if self.send(&node, delivery.clone()).await.is_err() {
                failed.push((node, delivery));
            }
        }
        failed
    }
}

/// A user's sessions in [`LocalPresence`]: (session, node) pairs.
type LocalSessions = Vec<(Box<str>, Arc<str>)>;

/// In-process presence: a map guarded by a lock. The embedded default's adapter.
#[derive(Default)]
pub struct LocalPresence {
    /// user → their (session, node) pairs: a short list (a user has a few devices), cheaper
    /// per idle session than a map of its own.
    sessions: RwLock<HashMap<String, LocalSessions>>,
    /// The nodes' names, each kept once however many sessions it holds.
    nodes: RwLock<HashSet<Arc<str>>>,
}

impl LocalPresence {
    fn node_name(&self, node: &str) -> Arc<str> {
        if let Some(known) = self.nodes.read().get(node) {
            return known.clone();
        }
        let name: Arc<str> = node.into();
        self.nodes.write().insert(name.clone());
        name
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn session_opened(
        &self,
        user: &str,
        session: &str,
        node: &str,
    ) -> Result<(), PresenceError> {
        let node = self.node_name(node);
        let mut sessions = self.sessions.write();
        let user_sessions = sessions
            .entry(user.to_owned())
            .or_insert_with(|| Vec::with_capacity(1));
        match user_sessions
            .iter_mut()
            .find(|(known, _)| &**known == session)
        {
            Some(entry) => entry.1 = node,
            None => user_sessions.push((session.into(), node)),
        }
        Ok(())
    }

    async fn session_closed(&self, user: &str, session: &str) -> Result<(), PresenceError> {
        let mut sessions = self.sessions.write();
        if let Some(user_sessions) = sessions.get_mut(user) {
            user_sessions.retain(|(known, _)| &**known != session);
            if user_sessions.is_empty() {
                sessions.remove(user);
            }
        }
        Ok(())
    }

    async fn session_count(&self, user: &str) -> Result<usize, PresenceError> {
        Ok(self.sessions.read().get(user).map_or(0, Vec::len))
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
            let nodes: HashSet<&str> = user_sessions.iter().map(|(_, node)| &**node).collect();
            for node in nodes {
                by_node
                    .entry(node.to_owned())
                    .or_default()
                    .push(user.clone());
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
        match sink {
            Some(sink) => {
                sink.deliver(delivery);
                Ok(())
            }
            None => Err(PresenceError::Unavailable(
                format!("no node {node} is attached").into(),
            )),
        }
    }
}

/// The presence and bus port conformance suite: every adapter must pass it.
pub mod conformance {
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;
    use tokio::sync::Notify;

    use super::*;

    /// Collects deliveries for a test.
    #[derive(Default)]
    pub struct CollectingSink {
        /// Everything delivered, in order.
        pub received: Mutex<Vec<Delivery>>,
        /// Woken on each delivery.
        pub arrived: Notify,
    }

    impl DeliverySink for CollectingSink {
        fn deliver(&self, delivery: Delivery) {
            self.received.lock().push(delivery);
            self.arrived.notify_waiters();
        }
    }

    impl CollectingSink {
        /// Waits (bounded) until `count` deliveries arrived.
        pub async fn wait_for(&self, count: usize) -> Vec<Delivery> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let notified = self.arrived.notified();
                if self.received.lock().len() >= count {
                    return self.received.lock().clone();
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    panic!(
                        "only {} of {count} deliveries arrived",
                        self.received.lock().len()
                    );
                }
            }
        }
    }

    /// Sessions are grouped by node; closing a session removes it; counts follow.
    /// `prefix` keeps the user names of concurrent runs apart.
    pub async fn sessions_group_by_node(presence: &dyn Presence, prefix: &str) {
        let alice = format!("{prefix}alice");
        let bob = format!("{prefix}bob");
        let node_one = format!("{prefix}n1");
        let node_two = format!("{prefix}n2");
        for node in [&node_one, &node_two] {
            presence.heartbeat(node).await.expect("heartbeat");
        }
        presence
            .session_opened(&alice, "s1", &node_one)
            .await
            .expect("open");
        presence
            .session_opened(&alice, "s2", &node_two)
            .await
            .expect("open");
        presence
            .session_opened(&bob, "s3", &node_one)
            .await
            .expect("open");
        assert_eq!(presence.session_count(&alice).await.expect("count"), 2);
        let nobody = format!("{prefix}nobody");
        let nodes = presence
            .nodes_of(&[alice.clone(), bob.clone(), nobody])
            .await
            .expect("lookup");
        assert_eq!(nodes.len(), 2, "{nodes:?}");
        let mut on_one = nodes[&node_one].clone();
        on_one.sort();
        assert_eq!(on_one, vec![alice.clone(), bob.clone()]);
        assert_eq!(nodes[&node_two], vec![alice.clone()]);
        presence.session_closed(&alice, "s2").await.expect("close");
        assert_eq!(presence.session_count(&alice).await.expect("count"), 1);
        let nodes = presence
            .nodes_of(std::slice::from_ref(&alice))
            .await
            .expect("lookup");
        assert!(!nodes.contains_key(&node_two), "{nodes:?}");
        presence.session_closed(&alice, "s1").await.expect("close");
        presence.session_closed(&bob, "s3").await.expect("close");
        assert!(
            presence
                .nodes_of(&[alice, bob])
                .await
                .expect("lookup")
                .is_empty()
        );
    }

    /// A delivery sent to a node reaches the sink attached for it, and only that one.
    pub async fn deliveries_reach_the_attached_node(bus: &dyn NodeBus, prefix: &str) {
        let sink_one = Arc::new(CollectingSink::default());
        let sink_two = Arc::new(CollectingSink::default());
        let node_one = format!("{prefix}n1");
        let node_two = format!("{prefix}n2");
        bus.attach(&node_one, sink_one.clone())
            .await
            .expect("attach");
        bus.attach(&node_two, sink_two.clone())
            .await
            .expect("attach");
        let to_users = Delivery::ToUsers {
            users: vec!["bob".into()],
            frame: "{\"n\":1}".into(),
            sequencing: Some(Sequencing {
                partition: 3,
                owner_epoch: 7,
                conversation: "dm:alice:bob".into(),
                seq: Some(12),
            }),
        };
        let to_session = Delivery::ToSession {
            session: "s9".into(),
            outcome: EventOutcome::Acked {
                client_msg_id: Some("c2".into()),
                conversation: "dm:alice:bob".into(),
                seq: 2,
                event_id: "e2".into(),
            },
        };
        bus.send(&node_one, to_users.clone()).await.expect("send");
        bus.send(&node_one, to_session.clone()).await.expect("send");
        assert_eq!(
            sink_one.wait_for(2).await,
            vec![to_users.clone(), to_session.clone()],
            "in order"
        );
        bus.send(
            &node_two,
            Delivery::ToUsers {
                users: vec![],
                frame: "{}".into(),
                sequencing: None,
            },
        )
        .await
        .expect("send");
        sink_two.wait_for(1).await;
        assert_eq!(
            sink_one.received.lock().len(),
            2,
            "node one got nothing of node two's"
        );
        let batch = vec![
            (node_two.clone(), to_session.clone()),
            (format!("{prefix}nobody"), to_session.clone()),
            (node_two.clone(), to_users.clone()),
        ];
        let failed = bus.send_many(batch).await;
        assert_eq!(
            failed,
            vec![(format!("{prefix}nobody"), to_session.clone())],
            "send_many reports exactly what nobody received"
        );
        assert_eq!(
            sink_two.wait_for(3).await[1..],
            [to_session.clone(), to_users.clone()],
            "send_many keeps the order per node"
        );
        let unheard = bus
            .send(
                &format!("{prefix}nobody"),
                Delivery::ToUsers {
                    users: vec![],
                    frame: "{}".into(),
                    sequencing: None,
                },
            )
            .await;
        assert!(
            matches!(unheard, Err(PresenceError::Unavailable(_))),
            "a delivery no node can receive is reported: {unheard:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_adapters_pass_the_conformance_suite() {
        conformance::sessions_group_by_node(&LocalPresence::default(), "").await;
        conformance::deliveries_reach_the_attached_node(&LocalBus::default(), "").await;
    }

    #[test]
    fn outcomes_travel_between_nodes_in_the_shape_of_the_previous_version() {
        // what a node of the previous version sent: the outcome as the text of its frame
        let ack = r#"{"ToSession":{"session":"s1","frame":"{\"conversation\":\"dm:alice:bob\",\"event_id\":\"e1\",\"id\":\"c1\",\"seq\":7,\"type\":\"ack\"}"}}"#;
        let error = r#"{"ToSession":{"session":"s2","frame":"{\"code\":\"forbidden\",\"id\":null,\"message\":\"not a member\",\"type\":\"error\"}"}}"#;
        let typed_ack = Delivery::ToSession {
            session: "s1".into(),
            outcome: EventOutcome::Acked {
                client_msg_id: Some("c1".into()),
                conversation: "dm:alice:bob".into(),
                seq: 7,
                event_id: "e1".into(),
            },
        };
        let typed_error = Delivery::ToSession {
            session: "s2".into(),
            outcome: EventOutcome::Failed {
                client_msg_id: None,
                error: crate::error::ApiError::new(
                    crate::error::ErrorCode::Forbidden,
                    "not a member",
                ),
            },
        };
        for (text, typed) in [(ack, typed_ack), (error, typed_error)] {
            assert_eq!(
                serde_json::from_str::<Delivery>(text).expect("read the previous shape"),
                typed
            );
            assert_eq!(serde_json::to_string(&typed).expect("encode"), text);
        }
        let neither = r#"{"ToSession":{"session":"s3","frame":"{\"type\":\"event\"}"}}"#;
        assert!(serde_json::from_str::<Delivery>(neither).is_err());
    }

    #[test]
    fn deliveries_without_sequencing_stay_readable_both_ways() {
        // a node or router that predates the field sends none: read as `None`
        let old: Delivery =
            serde_json::from_str(r#"{"ToUsers":{"users":["bob"],"frame":"{}"}}"#).expect("old");
        assert_eq!(
            old,
            Delivery::ToUsers {
                users: vec!["bob".into()],
                frame: "{}".into(),
                sequencing: None
            }
        );
        // and a `None` is not written, so older readers see exactly what they know
        let untagged = serde_json::to_string(&old).expect("encode");
        assert_eq!(untagged, r#"{"ToUsers":{"users":["bob"],"frame":"{}"}}"#);
        let tagged = Delivery::ToUsers {
            users: vec!["bob".into()],
            frame: "{}".into(),
            sequencing: Some(Sequencing {
                partition: 2,
                owner_epoch: 41,
                conversation: "dm:alice:bob".into(),
                seq: Some(9),
            }),
        };
        let encoded = serde_json::to_string(&tagged).expect("encode");
        assert_eq!(
            serde_json::from_str::<Delivery>(&encoded).expect("decode"),
            tagged
        );
    }

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
