//! Reading a page of a user's conversations from raw `members` rows without reading them all.
//!
//! A page reads the user's `members` rows in conversation order from the cursor, a window at a
//! time; for each conversation the change with the highest seq decides whether the user is a
//! member (the rule of `argMax(present, seq)`). A full window's last conversation may go on past
//! it, so it is left out and read again by the next window; a window holding one conversation
//! only is doubled. So a page reads about as many rows as it returns, however long the list.

use clickhouse::Row;
use serde::Deserialize;

/// One row of `members` as a page reads it.
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize)]
pub(crate) struct MembershipChange {
    pub(crate) conversation: String,
    pub(crate) seq: u64,
    pub(crate) present: u8,
}

/// What one window of raw `members` rows of a user (in conversation order, a conversation's rows
/// in any order, at most `window` of them) says about the user's memberships.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MembershipWindow {
    /// The window is full of a single conversation's rows: read a larger one.
    TooSmall,
    /// The latest change (highest seq) of each conversation whose rows were all read, in id
    /// order. A full window's last conversation may go on past it, so it is left out (the next
    /// window starts after the last one here) and `more_may_follow` is set.
    Read {
        latest: Vec<MembershipChange>,
        more_may_follow: bool,
    },
}

impl MembershipWindow {
    pub(crate) fn read(changes: Vec<MembershipChange>, window: u64) -> MembershipWindow {
        let window_is_full = changes.len() as u64 >= window;
        let mut latest: Vec<MembershipChange> = Vec::new();
        for change in changes {
            match latest.last_mut() {
                Some(last) if last.conversation == change.conversation => {
                    if change.seq >= last.seq {
                        *last = change;
                    }
                }
                _ => latest.push(change),
            }
        }
        if window_is_full {
            if latest.len() <= 1 {
                return MembershipWindow::TooSmall;
            }
            latest.pop(); // it may go on past the window
        }
        MembershipWindow::Read {
            latest,
            more_may_follow: window_is_full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(conversation: &str, seq: u64, present: u8) -> MembershipChange {
        MembershipChange {
            conversation: conversation.to_owned(),
            seq,
            present,
        }
    }

    #[test]
    fn a_membership_window_keeps_the_latest_change_of_each_whole_conversation() {
        // rows of a conversation come in any order; the highest seq wins
        let partial = MembershipWindow::read(
            vec![
                change("g:a", 1, 1),
                change("g:b", 2, 0),
                change("g:b", 1, 1),
                change("g:c", 1, 1),
            ],
            4,
        );
        assert_eq!(
            partial,
            MembershipWindow::Read {
                latest: vec![change("g:a", 1, 1), change("g:b", 2, 0)],
                more_may_follow: true,
            },
            "a full window's last conversation may go on: it is read again"
        );
        let last = MembershipWindow::read(vec![change("g:c", 2, 0), change("g:c", 3, 1)], 4);
        assert_eq!(
            last,
            MembershipWindow::Read {
                latest: vec![change("g:c", 3, 1)],
                more_may_follow: false,
            },
            "a window that is not full read everything"
        );
        assert_eq!(
            MembershipWindow::read(vec![change("g:d", 1, 1), change("g:d", 2, 1)], 2),
            MembershipWindow::TooSmall
        );
        assert_eq!(
            MembershipWindow::read(Vec::new(), 2),
            MembershipWindow::Read {
                latest: Vec::new(),
                more_may_follow: false,
            }
        );
    }
}
