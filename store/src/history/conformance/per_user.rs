//! Checks of what each user has of their own in a conversation: mutes, blocks and unread
//! counts.

use chorus_schemas::EventBody;

use super::{TimelineWriter, added, created, edited, muted, read_up_to, recalled, sent};
use crate::history::{HistoryError, HistoryStore};

/// A summary's `muted` is the user's own: the last mute event of the user in the conversation
/// decides, another user's mutes change nothing, and a mute takes no seq.
pub async fn mutes_are_per_user_and_the_last_one_counts(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let muted_of = async |user: &str, conversation: &str| -> Result<Option<bool>, HistoryError> {
        let summaries = store.conversations(user).await?;
        Ok(summaries
            .iter()
            .find(|summary| summary.id == conversation)
            .map(|summary| summary.muted))
    };
    let mut timeline = TimelineWriter::new();
    timeline.push("g:m", "alice", created(None, &["alice", "bob"]));
    timeline.push("g:m", "bob", sent("hi"));
    timeline.push("dm:alice:bob", "alice", sent("hello"));
    timeline.push("g:m", "alice", muted(true));
    timeline.apply_to(store, 0).await?;
    assert_eq!(muted_of("alice", "g:m").await?, Some(true));
    assert_eq!(
        muted_of("bob", "g:m").await?,
        Some(false),
        "mutes are per user"
    );
    assert_eq!(
        muted_of("alice", "dm:alice:bob").await?,
        Some(false),
        "per conversation"
    );
    let summaries = store.conversations("alice").await?;
    let group = summaries.iter().find(|summary| summary.id == "g:m");
    assert_eq!(
        group.map(|summary| summary.last_seq),
        Some(2),
        "a mute takes no seq"
    );
    timeline.push("g:m", "alice", muted(false));
    timeline.push("g:m", "bob", muted(true));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        muted_of("alice", "g:m").await?,
        Some(false),
        "the last one counts"
    );
    assert_eq!(muted_of("bob", "g:m").await?, Some(true));
    timeline.push("g:m", "alice", muted(true));
    timeline.push("g:m", "alice", muted(false));
    timeline.push("g:m", "alice", muted(true));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        muted_of("alice", "g:m").await?,
        Some(true),
        "within one batch too"
    );
    Ok(())
}

/// A direct conversation's summary says whether the caller blocked the other member: the
/// blocker's own flag, the last block event decides, and a block takes no seq.
pub async fn blocks_are_the_blockers_own(store: &dyn HistoryStore) -> Result<(), HistoryError> {
    let blocked_of = async |user: &str| -> Result<Option<(bool, u64)>, HistoryError> {
        let summaries = store.conversations(user).await?;
        Ok(summaries
            .iter()
            .find(|summary| summary.id == "dm:alice:bob")
            .map(|summary| (summary.blocked, summary.last_seq)))
    };
    let block = |blocked: bool| EventBody::UserBlocked { blocked };
    let mut timeline = TimelineWriter::new();
    timeline.push("dm:alice:bob", "bob", sent("hi"));
    timeline.push("dm:alice:bob", "alice", block(true));
    timeline.apply_to(store, 0).await?;
    assert_eq!(blocked_of("alice").await?, Some((true, 1)), "no seq taken");
    assert_eq!(
        blocked_of("bob").await?,
        Some((false, 1)),
        "the blocker's own"
    );
    timeline.push("dm:alice:bob", "alice", block(false));
    timeline.push("dm:alice:bob", "bob", block(true));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        blocked_of("alice").await?,
        Some((false, 1)),
        "the last one counts"
    );
    assert_eq!(blocked_of("bob").await?, Some((true, 1)));
    Ok(())
}

/// A summary's `unread` counts the messages after the user's read cursor that someone else
/// sent and did not recall (not member events, edits or recalls themselves, nor the user's own),
/// is the same for every device of the user (the cursor is the user's), and stops at
/// [`UNREAD_CAP`](crate::history::UNREAD_CAP).
pub async fn unread_counts_follow_the_read_cursor(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let unread_of = async |user: &str, conversation: &str| -> Result<u64, HistoryError> {
        let summaries = store.conversations(user).await?;
        Ok(summaries
            .iter()
            .find(|summary| summary.id == conversation)
            .map_or(0, |summary| summary.unread))
    };
    let mut timeline = TimelineWriter::new();
    timeline.push("g:u", "alice", created(None, &["alice", "bob", "carol"])); // 1
    timeline.push("g:u", "bob", sent("one")); // 2
    timeline.push("g:u", "carol", sent("two")); // 3
    timeline.push("g:u", "alice", sent("mine")); // 4
    timeline.push("g:u", "bob", sent("three")); // 5
    timeline.push("g:u", "bob", edited(5, "three!")); // 6
    timeline.push("g:u", "carol", sent("recalled soon")); // 7
    timeline.push("g:u", "carol", recalled(7)); // 8
    timeline.push("g:u", "alice", added(&["dave"])); // 9
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        unread_of("alice", "g:u").await?,
        3,
        "bob's two messages and carol's one, not mine, the edit, the recall or the member event"
    );
    assert_eq!(
        unread_of("bob", "g:u").await?,
        2,
        "carol's and alice's, not his own"
    );
    timeline.push("g:u", "alice", read_up_to(3));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        unread_of("alice", "g:u").await?,
        1,
        "only bob's after seq 3"
    );
    assert_eq!(
        unread_of("bob", "g:u").await?,
        2,
        "another user's cursor changes nothing"
    );
    timeline.push("g:u", "alice", read_up_to(9));
    timeline.apply_to(store, 0).await?;
    assert_eq!(unread_of("alice", "g:u").await?, 0);

    let many = usize::try_from(crate::history::UNREAD_CAP).expect("small") + 5;
    for n in 0..many {
        timeline.push("dm:alice:bob", "bob", sent(&format!("m{n}")));
    }
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        unread_of("alice", "dm:alice:bob").await?,
        crate::history::UNREAD_CAP,
        "counted up to the cap"
    );
    timeline.push("dm:alice:bob", "alice", read_up_to(many as u64 - 2));
    timeline.apply_to(store, 0).await?;
    assert_eq!(unread_of("alice", "dm:alice:bob").await?, 2);
    Ok(())
}
