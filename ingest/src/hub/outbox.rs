//! A session's outbox: the frames the hub hands it, bounded, never waited on by the hub.
//!
//! A queue under a lock and two wake-ups, rather than a channel: an idle session holds none of a
//! channel's preallocated blocks (an empty queue owns no memory), and the hub's overflow signal
//! lives beside the frames it is about, as does the count of outcomes (acks, errors) the session
//! still owes its client, which a stopping node waits for before it closes the session.

use std::collections::VecDeque;
use std::sync::Arc;

use chorus_core::presence::Frame;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Frames an emptied queue keeps room for; a burst's larger buffer is given back.
const KEPT_CAPACITY: usize = 8;

/// What became of a frame the hub handed to an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The outbox was full: the frame is dropped and the session flagged as a slow consumer.
    Full,
    /// The session is gone.
    Closed,
}

/// One session's outbox (shared by the hub, which pushes, and the session task, which takes).
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the session task when a frame arrives or the hub lets go.
    arrived: Notify,
    /// Wakes the session task when it became a slow consumer.
    overflowed: Notify,
    capacity: usize,
}

struct State {
    frames: VecDeque<Frame>,
    slow: bool,
    closed: bool,
    /// Events the session appended whose outcome has not been pushed yet.
    owed: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                slow: false,
                closed: false,
                owed: 0,
            }),
            arrived: Notify::new(),
            overflowed: Notify::new(),
            capacity,
        })
    }

    /// Queues a frame unless the outbox is full (then the session is flagged slow, once) or
    /// closed. Never waits.
    pub(crate) fn push(&self, frame: Frame) -> Pushed {
        let mut state = self.state.lock();
        if state.closed {
            return Pushed::Closed;
        }
        if state.frames.len() >= self.capacity {
            if !state.slow {
                state.slow = true;
                self.overflowed.notify_one();
            }
            return Pushed::Full;
        }
        state.frames.push_back(frame);
        drop(state);
        self.arrived.notify_one();
        Pushed::Queued
    }

    /// Counts an outcome (`ack` or `error`) the session will owe its client: called before the
    /// event is appended, as the outcome may come back before the append returns.
    pub fn owe_outcome(&self) {
        self.state.lock().owed += 1;
    }

    /// The append failed: the client got its error at once and no outcome will come.
    pub fn forgo_outcome(&self) {
        let mut state = self.state.lock();
        state.owed = state.owed.saturating_sub(1);
    }

    /// Queues the outcome of an event the session appended (see [`Outbox::push`]); it is no
    /// longer owed, whether it was queued or lost to an overflow.
    pub(crate) fn push_outcome(&self, frame: Frame) -> Pushed {
        {
            let mut state = self.state.lock();
            state.owed = state.owed.saturating_sub(1);
        }
        self.push(frame)
    }

    /// Outcomes the session owes its client that have not reached the outbox.
    pub fn owed(&self) -> usize {
        self.state.lock().owed
    }

    /// The next frame, if one is queued.
    pub fn try_recv(&self) -> Option<Frame> {
        let mut state = self.state.lock();
        let frame = state.frames.pop_front();
        if state.frames.is_empty() && state.frames.capacity() > KEPT_CAPACITY {
            state.frames.shrink_to(KEPT_CAPACITY);
        }
        frame
    }

    /// The next frame; `None` once the hub let go of the session.
    pub async fn recv(&self) -> Option<Frame> {
        loop {
            // registered before the check, so a frame pushed in between still wakes it
            let arrived = self.arrived.notified();
            if let Some(frame) = self.try_recv() {
                return Some(frame);
            }
            if self.state.lock().closed {
                return None;
            }
            arrived.await;
        }
    }

    /// Resolves once the outbox overflowed (the session is a slow consumer).
    pub async fn overflowed(&self) {
        loop {
            let overflowed = self.overflowed.notified();
            if self.state.lock().slow {
                return;
            }
            overflowed.await;
        }
    }

    /// The hub lets go of the session: `recv` answers `None` once it reaches the end.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.arrived.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_and_an_overflow_flags_the_session_once() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push("a".into()), Pushed::Queued);
        assert_eq!(outbox.push("b".into()), Pushed::Queued);
        assert_eq!(outbox.push("c".into()), Pushed::Full);
        assert_eq!(outbox.push("d".into()), Pushed::Full);
        outbox.overflowed().await;
        assert_eq!(outbox.recv().await.as_deref(), Some("a"));
        assert_eq!(outbox.try_recv().as_deref(), Some("b"));
        assert_eq!(outbox.try_recv(), None);
        outbox.close();
        assert_eq!(outbox.recv().await, None);
        assert_eq!(outbox.push("e".into()), Pushed::Closed);
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_for_a_frame_pushed_from_another_task() {
        let outbox = Outbox::new(4);
        let pusher = outbox.clone();
        let waiting = tokio::spawn(async move { outbox.recv().await });
        tokio::task::yield_now().await;
        assert_eq!(pusher.push("late".into()), Pushed::Queued);
        assert_eq!(waiting.await.unwrap().as_deref(), Some("late"));
    }

    #[test]
    fn an_emptied_outbox_gives_back_a_burst_s_buffer() {
        let outbox = Outbox::new(1000);
        for n in 0..500 {
            outbox.push(format!("{n}").into());
        }
        while outbox.try_recv().is_some() {}
        assert!(outbox.state.lock().frames.capacity() <= KEPT_CAPACITY);
    }
}
