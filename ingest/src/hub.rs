//! The node's session hub: which local sessions exist, and the node's [`DeliverySink`].
//!
//! Invariants:
//! - every session has a bounded outbox (`limits.session_outbox_frames`); delivery never waits.
//!   When an outbox is full the session is a slow consumer: it is flagged and its task closes the
//!   connection with code 1013, and the client reconnects and fills the gap from history. One slow
//!   client never holds up delivery to anyone else;
//! - an HTTP request waiting for its outcome (business events, group creation) registers a
//!   one-shot waiter under a pseudo-session id; a `ToSession` delivery completes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chorus_core::metrics::Metrics;
use chorus_core::presence::{Delivery, DeliverySink, Frame};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc, oneshot};

/// A local session as the hub sees it.
struct SessionSlot {
    /// The session id (unique per node).
    id: Arc<str>,
    /// Frames for the session's socket.
    outbox: mpsc::Sender<Frame>,
    /// Set when the outbox overflowed; the session task then closes the socket.
    slow: Arc<SlowFlag>,
}

/// Raised by the hub when a session's outbox is full.
#[derive(Default)]
pub struct SlowFlag {
    /// Whether the session overflowed.
    raised: AtomicBool,
    /// Wakes the session task.
    notify: Notify,
}

impl SlowFlag {
    fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Resolves once the flag is raised.
    pub async fn raised(&self) {
        if self.raised.load(Ordering::Acquire) {
            return;
        }
        self.notify.notified().await;
    }
}

/// What a session task gets when it registers.
pub struct SessionRegistration {
    pub outbox: mpsc::Receiver<Frame>,
    pub slow: Arc<SlowFlag>,
}

pub struct Hub {
    /// user → their sessions on this node.
    sessions: RwLock<HashMap<String, Vec<SessionSlot>>>,
    /// session id → user, to route acks and errors to one session.
    session_users: RwLock<HashMap<Arc<str>, String>>,
    /// HTTP requests waiting for their outcome, by pseudo-session id.
    waiters: Mutex<HashMap<String, oneshot::Sender<Frame>>>,
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
            outbox_frames,
            metrics,
        }
    }

    pub fn register(&self, user: &str, session: Arc<str>) -> SessionRegistration {
        let (sender, receiver) = mpsc::channel(self.outbox_frames);
        let slow = Arc::new(SlowFlag::default());
        let slot = SessionSlot {
            id: session.clone(),
            outbox: sender,
            slow: slow.clone(),
        };
        self.sessions
            .write()
            .entry(user.to_owned())
            .or_default()
            .push(slot);
        self.session_users.write().insert(session, user.to_owned());
        self.metrics.connections.inc();
        SessionRegistration {
            outbox: receiver,
            slow,
        }
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
    pub fn wait_for(&self, pseudo_session: &str) -> oneshot::Receiver<Frame> {
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

    fn push(&self, slot: &SessionSlot, frame: &Frame) {
        match slot.outbox.try_send(frame.clone()) {
            Ok(()) => self.metrics.deliveries.inc(),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.reject("slow_consumer");
                slot.slow.raise();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl DeliverySink for Hub {
    fn deliver(&self, delivery: Delivery) {
        match delivery {
            Delivery::ToUsers { users, frame } => {
                let sessions = self.sessions.read();
                for user in &users {
                    for slot in sessions.get(user).into_iter().flatten() {
                        self.push(slot, &frame);
                    }
                }
            }
            Delivery::ToSession { session, frame } => {
                if let Some(waiter) = self.waiters.lock().remove(&session) {
                    let _ = waiter.send(frame);
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
                    self.push(slot, &frame);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_to_every_session_of_each_user_and_flags_slow_ones() {
        let hub = Hub::new(2, Arc::new(Metrics::new()));
        let mut phone = hub.register("bob", "s1".into());
        let mut laptop = hub.register("bob", "s2".into());
        let frame: Frame = "{}".into();
        hub.deliver(Delivery::ToUsers {
            users: vec!["bob".into()],
            frame: frame.clone(),
        });
        assert_eq!(phone.outbox.recv().await.unwrap(), frame);
        assert_eq!(laptop.outbox.recv().await.unwrap(), frame);
        for _ in 0..3 {
            hub.deliver(Delivery::ToSession {
                session: "s1".into(),
                frame: frame.clone(),
            });
        }
        phone.slow.raised().await; // the third frame overflowed the outbox of 2
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
            frame: "{\"ok\":1}".into(),
        });
        assert_eq!(&*waiter.await.unwrap(), "{\"ok\":1}");
    }
}
