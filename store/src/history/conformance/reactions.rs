//! Checks of reactions: per message and emoji, the users whose latest reaction event added it.

use std::collections::BTreeMap;

use chorus_schemas::EventBody;

use super::{TimelineWriter, created, sent};
use crate::history::{HistoryError, HistoryStore, MAX_REACTION_KINDS, ReactionCount};

fn react(target_seq: u64, emoji: &str, added: bool) -> EventBody {
    EventBody::ReactionChanged {
        target_seq,
        emoji: emoji.to_owned(),
        added,
    }
}

fn count(emoji: &str, count: u64, me: bool) -> ReactionCount {
    ReactionCount {
        emoji: emoji.to_owned(),
        count,
        me,
    }
}

/// A user's reaction with an emoji counts once however often it is added; a removal takes it
/// back; counts are per message, most used first, and say whether the reader reacted.
pub async fn reactions_count_each_user_once(store: &dyn HistoryStore) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    timeline.push("g:x", "alice", created(None, &["alice", "bob", "carol"])); // 1
    timeline.push("g:x", "alice", sent("one")); // 2
    timeline.push("g:x", "bob", sent("two")); // 3
    timeline.push("g:x", "bob", react(2, "👍", true));
    timeline.push("g:x", "carol", react(2, "👍", true));
    timeline.push("g:x", "carol", react(2, "👍", true)); // again: still one
    timeline.push("g:x", "alice", react(2, "🎉", true));
    timeline.push("g:x", "bob", react(3, "😂", true));
    timeline.apply_to(store, 0).await?;
    timeline.push("g:x", "bob", react(3, "😂", false)); // taken back
    timeline.push("g:x", "carol", react(3, "❤️", false)); // never added: nothing
    timeline.apply_to(store, 0).await?;

    assert_eq!(
        store.reactions("g:x", &[2, 3, 99], "carol").await?,
        BTreeMap::from([(2, vec![count("👍", 2, true), count("🎉", 1, false)])]),
        "most used first; a message whose reactions were all taken back has none"
    );
    assert_eq!(
        store.reactions("g:x", &[2], "alice").await?,
        BTreeMap::from([(2, vec![count("👍", 2, false), count("🎉", 1, true)])]),
        "`me` is the reader's"
    );
    assert_eq!(
        store.reactions("g:y", &[2], "alice").await?,
        BTreeMap::new(),
        "per conversation"
    );

    // at most MAX_REACTION_KINDS emojis per message, the most used (ties by emoji)
    for n in 0..MAX_REACTION_KINDS + 3 {
        timeline.push("g:x", "bob", react(3, &format!("e{n:02}"), true));
    }
    timeline.push("g:x", "carol", react(3, "e22", true));
    timeline.apply_to(store, 0).await?;
    let many = store.reactions("g:x", &[3], "bob").await?;
    let emojis: Vec<&str> = many[&3].iter().map(|count| count.emoji.as_str()).collect();
    assert_eq!(emojis.len(), MAX_REACTION_KINDS);
    assert_eq!(emojis[0], "e22", "the one with two users first");
    assert_eq!(emojis[1], "e00");
    Ok(())
}
