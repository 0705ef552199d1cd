//! Checks of pinned messages.

use chorus_schemas::EventBody;

use super::{TimelineWriter, created, edited, sent};
use crate::history::{HistoryError, HistoryStore};

/// `pins` lists the pinned messages as they stand now (an edit shows), most recently pinned
/// first; pinning again moves a message to the front, unpinning takes it out, and a pin takes a
/// seq like any event every member sees.
pub async fn pins_list_pinned_messages_newest_first(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let pin = |target_seq: u64, pinned: bool| EventBody::MessagePinned { target_seq, pinned };
    let mut timeline = TimelineWriter::new();
    timeline.push("g:p", "alice", created(None, &["alice", "bob"])); // 1
    timeline.push("g:p", "alice", sent("one")); // 2
    timeline.push("g:p", "bob", sent("two")); // 3
    timeline.push("g:p", "bob", pin(2, true)); // 4
    timeline.push("g:p", "alice", pin(3, true)); // 5
    timeline.push("g:p", "bob", edited(3, "two!")); // 6
    timeline.apply_to(store, 0).await?;
    let listed = |pins: Vec<crate::history::PinView>| -> Vec<(u64, String, u64, Option<String>)> {
        pins.into_iter()
            .map(|pin| {
                (
                    pin.message.seq,
                    pin.pinned_by,
                    pin.pinned_seq,
                    pin.message.text,
                )
            })
            .collect()
    };
    assert_eq!(
        listed(store.pins("g:p").await?),
        vec![
            (3, "alice".to_owned(), 5, Some("two!".to_owned())),
            (2, "bob".to_owned(), 4, Some("one".to_owned())),
        ],
        "newest pin first, each message as it stands"
    );
    timeline.push("g:p", "alice", pin(2, true)); // 7
    timeline.push("g:p", "bob", pin(3, false)); // 8
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        listed(store.pins("g:p").await?),
        vec![(2, "alice".to_owned(), 7, Some("one".to_owned()))],
        "pinned again moves to the front; unpinned is gone"
    );
    let summaries = store.conversations("alice").await?;
    assert_eq!(summaries[0].last_seq, 8, "pins take seqs");
    assert!(store.pins("g:other").await?.is_empty());
    Ok(())
}
