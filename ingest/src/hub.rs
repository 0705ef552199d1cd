//! The node's session hub: which local sessions exist, and the node's [`DeliverySink`].
//!
//! Invariants:
//! - every session has a bounded outbox (`limits.session_outbox_frames`); delivery never waits.
//!   When an outbox is full the session is a slow consumer: it is flagged and its task closes the
//!   connection with code 1013, and the client reconnects and fills the gap from history. One slow
//!   client never holds up delivery to anyone else;
//! - an HTTP request waiting for its outcome (business events, group creation) registers a
//!   one-shot waiter under a pseudo-session id; a `ToSession` delivery completes it with the
//!   typed [`EventOutcome`]. For a WebSocket session the outcome is written as its `ack` or
//!   `error` frame here, the only place it becomes text;
//! - events of a conversation reach a connection in strictly increasing seq order: a timeline
//!   delivery whose router's ownership epoch is below the highest the node has seen for the
//!   partition is dropped (it comes from a router that lost the partition, e.g. a paused
//!   process resumed after its successor took over), and a session is never handed an event at
//!   or below the seq it was already handed for that conversation (checked and pushed under the
//!   session's lock, so concurrent deliveries cannot overtake each other). A dropped event is one
//!   the client already has, or one it learns of by the hole before the next; it fills from
//!   `/events`. Both are counted in `chorus_deliveries_dropped_total{reason}`.

mod outbox;

use std::collections::HashMap;
use std::sync::Arc;

use chorus_core::metrics::Metrics;
use chorus_core::presence::{Delivery, DeliverySink, Frame, Sequencing};
use chorus_core::protocol::outbound::EventOutcome;
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

pub use outbox::Outbox;
use outbox::Pushed;

/// A local session as the hub sees it.
struct SessionSlot {
    /// The session id (unique per node).
    id: Arc<str>,
    /// Frames for the session's socket; when it overflows, the session task closes the socket.
    outbox: Arc<Outbox>,
    /// The highest seq handed to this session per conversation; held while pushing an event.
    sent: Mutex<SentSeqs>,
}

/// Per session: the highest seq handed over for each conversation it got events of.
#[derive(Default)]
struct SentSeqs {
    highest: HashMap<String, u64>,
}

impl SentSeqs {
    /// Whether event `seq` of `conversation` may go to the session (above everything it got for
    /// the conversation); if so, it becomes the highest.
    fn admit(&mut self, conversation: &str, seq: u64) -> bool {
        match self.highest.get_mut(conversation) {
            Some(highest) if seq <= *highest => false,
            Some(highest) => {
                *highest = seq;
                true
            }
            None => {
                self.highest.insert(conversation.to_owned(), seq);
                true
            }
        }
    }
}

/// Per node: the highest router ownership epoch seen for each `timeline` partition.
#[derive(Default)]
struct OwnerEpochs {
    highest: HashMap<u32, u64>,
}

impl OwnerEpochs {
    /// Whether a delivery sent by the owner of `partition` at `epoch` may go out (no later
    /// owner has been heard from); if so, its epoch becomes the highest.
    fn admit(&mut self, partition: u32, epoch: u64) -> bool {
        let highest = self.highest.entry(partition).or_insert(epoch);
        if epoch < *highest {
            return false;
        }
        *highest = epoch;
        true
    }
}

/// What a session task gets when it registers.
pub struct SessionRegistration {
    pub outbox: Arc<Outbox>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.outbox.close();
    }
}

pub struct Hub {
    /// user → their sessions on this node.
    sessions: RwLock<HashMap<String, Vec<SessionSlot>>>,
    /// session id → user, to route acks and errors to one session.
    session_users: RwLock<HashMap<Arc<str>, String>>,
    /// HTTP requests waiting for their outcome, by pseudo-session id.
    waiters: Mutex<HashMap<String, oneshot::Sender<EventOutcome>>>,
    /// The highest router ownership epoch seen per timeline partition.
    owner_epochs: Mutex<OwnerEpochs>,
    /// Outbox capacity per session.
    outbox_frames: usize,
    pub metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(outbox_frames: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            sessions: RwLock::new(HashMap::new()),
            session_users: RwLock::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            owner_epochs: Mutex::new(OwnerEpochs::default()),
            outbox_frames,
            metrics,
        }
    }

    pub fn register(&self, user: &str, session: Arc<str>) -> SessionRegistration {
        let outbox = Outbox::new(self.outbox_frames);
        let slot = SessionSlot {
            id: session.clone(),
            outbox: outbox.clone(),
            sent: Mutex::new(SentSeqs::default()),
        };
        // most users have one session here: room for one, not the four a first push makes
        self.sessions
            .write()
            .entry(user.to_owned())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(slot);
        self.session_users.write().insert(session, user.to_owned());
        self.metrics.connections.inc();
        SessionRegistration { outbox }
    }

    pub fn unregister(&self, user: &str, session: &str) {
        let mut sessions = self.sessions.write();
        if let Some(slots) = sessions.get_mut(user) {
            slots.retain(|slot| &*slot.id != session);
            if slots.is_empty() {
                sessions.remove(user);
            }
        }
        drop(sessions);
        if self.session_users.write().remove(session).is_some() {
            self.metrics.connections.dec();
        }
    }

    /// Number of open sessions on this node.
    /// Every local session as (user, session id).
    pub fn sessions(&self) -> Vec<(String, Arc<str>)> {
        self.session_users
            .read()
            .iter()
            .map(|(session, user)| (user.clone(), session.clone()))
            .collect()
    }

    pub fn session_count(&self) -> usize {
        self.session_users.read().len()
    }

    /// Registers an HTTP request waiting for the outcome delivered to `pseudo_session`.
    pub fn wait_for(&self, pseudo_session: &str) -> oneshot::Receiver<EventOutcome> {
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .insert(pseudo_session.to_owned(), sender);
        receiver
    }

    /// Forgets a waiter that gave up.
    pub fn forget_waiter(&self, pseudo_session: &str) {
        self.waiters.lock().remove(pseudo_session);
    }

    fn dropped(&self, reason: &str, sequencing: &Sequencing) {
        tracing::trace!(
            reason,
            partition = sequencing.partition,
            owner_epoch = sequencing.owner_epoch,
            conversation = %sequencing.conversation,
            seq = ?sequencing.seq,
            "timeline delivery dropped"
        );
        self.metrics
            .deliveries_dropped
            .with_label_values(&[reason])
            .inc();
    }

    fn push(&self, slot: &SessionSlot, frame: &Frame) {
        self.count(slot.outbox.push(frame.clone()));
    }

    fn count(&self, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.metrics.deliveries.inc(),
            Pushed::Full => self.metrics.reject("slow_consumer"),
            Pushed::Closed => {}
        }
    }
}

impl DeliverySink for Hub {
    fn deliver(&self, delivery: Delivery) {
        match delivery {
            Delivery::ToUsers {
                users,
                frame,
                sequencing,
            } => {
                if let Some(sequencing) = &sequencing
                    && !self
                        .owner_epochs
                        .lock()
                        .admit(sequencing.partition, sequencing.owner_epoch)
                {
                    self.dropped("stale_owner", sequencing);
                    return;
                }
                let event = sequencing
                    .as_ref()
                    .and_then(|sequencing| sequencing.seq.map(|seq| (sequencing, seq)));
                let sessions = self.sessions.read();
                for user in &users {
                    for slot in sessions.get(user).into_iter().flatten() {
                        let Some((sequencing, seq)) = event else {
                            self.push(slot, &frame);
                            continue;
                        };
                        let mut sent = slot.sent.lock();
                        if sent.admit(&sequencing.conversation, seq) {
                            self.push(slot, &frame);
                        } else {
                            self.dropped("already_sent", sequencing);
                        }
                    }
                }
            }
            Delivery::ToSession { session, outcome } => {
                if let Some(waiter) = self.waiters.lock().remove(&session) {
                    let _ = waiter.send(outcome);
                    return;
                }
                let Some(user) = self.session_users.read().get(session.as_str()).cloned() else {
                    return; // the session has gone; the client retries and gets the ack again
                };
                let sessions = self.sessions.read();
                let slot = sessions
                    .get(&user)
                    .into_iter()
                    .flatten()
                    .find(|slot| *slot.id == *session);
                if let Some(slot) = slot {
                    let frame: Frame = outcome.frame().to_string().into();
                    // the session owes an outcome for each event it appended with a client id
                    let pushed = match outcome.client_msg_id() {
                        Some(_) => slot.outbox.push_outcome(frame),
                        None => slot.outbox.push(frame),
                    };
                    self.count(pushed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked() -> EventOutcome {
        EventOutcome::Acked {
            client_msg_id: Some("c1".into()),
            conversation: "dm:alice:bob".into(),
            seq: 1,
            event_id: "e1".into(),
        }
    }

    #[test]
    fn an_outcome_for_a_client_id_settles_what_the_session_owes() {
        let hub = Hub::new(4, Arc::new(Metrics::new()));
        let alice = hub.register("alice", "s1".into());
        alice.outbox.owe_outcome();
        alice.outbox.owe_outcome();
        // a refused read mark has no client id: it was never owed
        hub.deliver(Delivery::ToSession {
            session: "s1".into(),
            outcome: EventOutcome::Failed {
                client_msg_id: None,
                error: chorus_core::error::ApiError::new(
                    chorus_core::error::ErrorCode::BadRequest,
                    "seq beyond the last",
                ),
            },
        });
        assert_eq!(alice.outbox.owed(), 2);
        hub.deliver(Delivery::ToSession {
            session: "s1".into(),
            outcome: acked(),
        });
        assert_eq!(alice.outbox.owed(), 1);
        // the other append failed: its error went back at once
        alice.outbox.forgo_outcome();
        assert_eq!(alice.outbox.owed(), 0);
        assert_eq!(
            alice.outbox.try_recv().map(|f| f.contains("error")),
            Some(true)
        );
        assert_eq!(
            alice.outbox.try_recv().map(|f| f.contains("\"ack\"")),
            Some(true)
        );
    }

    #[tokio::test]
    async fn delivers_to_every_session_of_each_user_and_flags_slow_ones() {
        let hub = Hub::new(2, Arc::new(Metrics::new()));
        let phone = hub.register("bob", "s1".into());
        let laptop = hub.register("bob", "s2".into());
        let frame: Frame = "{}".into();
        hub.deliver(Delivery::ToUsers {
            users: vec!["bob".into()],
            frame: frame.clone(),
            sequencing: None,
        });
        assert_eq!(phone.outbox.recv().await.unwrap(), frame);
        assert_eq!(laptop.outbox.recv().await.unwrap(), frame);
        for _ in 0..3 {
            hub.deliver(Delivery::ToSession {
                session: "s1".into(),
                outcome: acked(),
            });
        }
        phone.outbox.overflowed().await; // the third frame overflowed the outbox of 2
        hub.unregister("bob", "s1");
        hub.unregister("bob", "s2");
        assert_eq!(hub.session_count(), 0);
    }

    #[tokio::test]
    async fn waiters_receive_their_outcome() {
        let hub = Hub::new(2, Arc::new(Metrics::new()));
        let waiter = hub.wait_for("http-1");
        hub.deliver(Delivery::ToSession {
            session: "http-1".into(),
            outcome: acked(),
        });
        assert_eq!(waiter.await.unwrap(), acked());
    }

    #[test]
    fn a_connection_gets_each_conversation_in_increasing_seq_order_only() {
        let mut sent = SentSeqs::default();
        assert!(
            sent.admit("dm:a:b", 5),
            "a first event goes out, whatever its seq"
        );
        assert!(sent.admit("dm:a:b", 6));
        assert!(!sent.admit("dm:a:b", 6), "a duplicate is dropped");
        assert!(
            !sent.admit("dm:a:b", 2),
            "an earlier seq after a later one is dropped"
        );
        assert!(
            sent.admit("dm:a:b", 9),
            "a hole is let through: the client fills it"
        );
        assert!(sent.admit("g:team", 1), "conversations are tracked apart");
        assert!(!sent.admit("dm:a:b", 8));
    }

    #[test]
    fn deliveries_of_an_earlier_owner_are_dropped_once_a_later_one_was_heard() {
        let mut epochs = OwnerEpochs::default();
        assert!(epochs.admit(3, 100), "the first owner heard of");
        assert!(epochs.admit(3, 100), "the same owner again");
        assert!(epochs.admit(3, 250), "a later owner");
        assert!(
            !epochs.admit(3, 100),
            "the earlier owner, resumed, is stale"
        );
        assert!(epochs.admit(4, 7), "partitions are tracked apart");
        assert!(epochs.admit(3, 250));
    }

    fn event(owner_epoch: u64, conversation: &str, seq: u64) -> Delivery {
        Delivery::ToUsers {
            users: vec!["alice".into(), "bob".into()],
            frame: format!("{conversation}#{seq}@{owner_epoch}").into(),
            sequencing: Some(Sequencing {
                partition: 1,
                owner_epoch,
                conversation: conversation.to_owned(),
                seq: Some(seq),
            }),
        }
    }

    fn drain(registration: &SessionRegistration) -> Vec<String> {
        let mut frames = Vec::new();
        while let Some(frame) = registration.outbox.try_recv() {
            frames.push(frame.to_string());
        }
        frames
    }

    #[test]
    fn a_resumed_router_cannot_put_stale_events_on_a_connection() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(64, metrics.clone());
        let alice = hub.register("alice", "s1".into());
        let bob = hub.register("bob", "s2".into());
        // the first owner (epoch 10) delivers 1 and 2, then is paused with 3 and 4 unsent
        hub.deliver(event(10, "dm:alice:bob", 1));
        hub.deliver(event(10, "dm:alice:bob", 2));
        // its successor (epoch 40) delivers the tail again (2, 3, 4), then new events
        for seq in 2..=6 {
            hub.deliver(event(40, "dm:alice:bob", seq));
        }
        // a read mark of the successor: no seq, goes out
        hub.deliver(Delivery::ToUsers {
            users: vec!["bob".into()],
            frame: "read@40".into(),
            sequencing: Some(Sequencing {
                partition: 1,
                owner_epoch: 40,
                conversation: "dm:alice:bob".into(),
                seq: None,
            }),
        });
        // the first owner resumes and sends what it had queued, and a read mark
        hub.deliver(event(10, "dm:alice:bob", 3));
        hub.deliver(event(10, "dm:alice:bob", 4));
        hub.deliver(Delivery::ToUsers {
            users: vec!["bob".into()],
            frame: "read@10".into(),
            sequencing: Some(Sequencing {
                partition: 1,
                owner_epoch: 10,
                conversation: "dm:alice:bob".into(),
                seq: None,
            }),
        });
        let expected: Vec<String> = [
            "dm:alice:bob#1@10",
            "dm:alice:bob#2@10",
            "dm:alice:bob#3@40",
            "dm:alice:bob#4@40",
            "dm:alice:bob#5@40",
            "dm:alice:bob#6@40",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(drain(&alice), expected);
        let mut bob_expected = expected.clone();
        bob_expected.push("read@40".into());
        assert_eq!(drain(&bob), bob_expected);
        assert_eq!(
            metrics
                .deliveries_dropped
                .with_label_values(&["stale_owner"])
                .get(),
            3
        );
        assert_eq!(
            metrics
                .deliveries_dropped
                .with_label_values(&["already_sent"])
                .get(),
            2,
            "the successor's 2 on both connections"
        );
        // a connection opened later starts its own order
        let later = hub.register("alice", "s3".into());
        hub.deliver(event(40, "dm:alice:bob", 7));
        assert_eq!(drain(&later), vec!["dm:alice:bob#7@40".to_owned()]);
    }
}
