//! The conformance suite of the history port: every [`HistoryStore`] adapter must pass it.
//!
//! Each check takes a *fresh* store (nothing applied, every position 0), drives it only through
//! the port, and panics (like `assert!`) when the contract of [`crate::history`] is broken; store
//! errors are returned. [`history_conformance!`](crate::history_conformance) makes each check a
//! test of the adapter whose test file invokes it (the list of checks is kept there, once);
//! [`run_all`] runs every check, each on a store from the caller's factory. Compiled with the
//! feature `testsuite` (for adapters' test files).
//! Nothing here knows about a particular backend, so the embedded (redb) adapter and the
//! ClickHouse adapter are held to the same contract.
//!
//! Atomicity of `apply` under a crash cannot be observed through the port; what is checked is its
//! visible half: the position moves with the data, replays change nothing, and records below the
//! position are skipped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use chorus_log::{Offset, PartitionId};
use chorus_schemas::{EventBody, TimelineEvent};

use super::{ConversationSummary, HistoryError, HistoryStore, MessagePage, MessageView};

mod per_user;
mod pins;
mod reactions;
mod replies;
mod roles;
pub use per_user::*;
pub use pins::*;
pub use reactions::*;
pub use replies::*;
pub use roles::*;

/// More than any check stores, so that "everything" reads are never truncated.
const READ_ALL: usize = 1_000;

/// The names of the suite's checks, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = crate::history_conformance!(@checks names {});

/// Runs every check, each on a fresh store made by `new_store`, in the order of the list in
/// [`history_conformance!`](crate::history_conformance).
pub async fn run_all<NewStore, StoreFuture>(mut new_store: NewStore) -> Result<(), HistoryError>
where
    NewStore: FnMut() -> StoreFuture,
    StoreFuture: Future<Output = Result<Arc<dyn HistoryStore>, HistoryError>>,
{
    crate::history_conformance!(@checks run_all { new_store });
    Ok(())
}

/// Makes every check of this suite its own test of the adapter whose test file invokes it, so
/// that file names no check: the list of checks is kept here, once, next to the checks (the
/// shape of `chorus_log::event_log_conformance!`).
///
/// Give it the attribute(s) of each test (the runtime, e.g. `#[tokio::test]`) and a store
/// constructor: `store = <expr>`, an async function `fn(check: &'static str) -> Option<S>` where
/// `S: Borrow<dyn HistoryStore>` (a store, or a value that owns one with what it lives on, e.g.
/// a temporary folder removed when the check ends). `check` is the check's name; `None` skips
/// the check (an adapter whose service is missing outside CI: the constructor prints why, or
/// panics where a skip is not acceptable). A store error fails the test.
///
/// ```ignore
/// chorus_store::history_conformance!(
///     #[tokio::test]
///     store = fresh_store,
/// );
/// ```
#[macro_export]
macro_rules! history_conformance {
    ($(#[$test_attribute:meta])+ store = $constructor:expr $(,)?) => {
        $crate::history_conformance!(
            @checks tests { $(#[$test_attribute])+ store = $constructor }
        );
    };
    // The one list of the suite's checks, in the order `run_all` runs them; hands it to the
    // arm named by `$arm`.
    (@checks $arm:ident { $($context:tt)* }) => {
        $crate::history_conformance! { @$arm { $($context)* } [
            apply_is_atomic_with_position_and_idempotent,
            events_are_the_sequenced_timeline_in_order,
            messages_reflect_edits_and_recalls,
            message_pages_are_ascending_windows,
            conversations_list_memberships_with_read_cursors,
            unread_counts_follow_the_read_cursor,
            mutes_are_per_user_and_the_last_one_counts,
            blocks_are_the_blockers_own,
            pins_list_pinned_messages_newest_first,
            replies_quote_the_message_they_answer,
            attachments_are_kept_until_recalled,
            mention_counts_follow_the_read_cursor,
            reactions_count_each_user_once,
            rosters_follow_role_changes,
            renames_change_the_title,
            former_members_keep_their_removal_seq,
            retention_is_the_latest_setting,
            conversation_pages_list_each_conversation_once,
            conversation_pages_skip_conversations_left,
            group_membership_follows_member_events,
            direct_conversations_have_exactly_their_two_members,
        ] }
    };
    (@tests $context:tt [$($check:ident),* $(,)?]) => {
        $(
            $crate::history_conformance!(@test $context $check);
        )*
    };
    (@test { $(#[$test_attribute:meta])+ store = $constructor:expr } $check:ident) => {
        $(#[$test_attribute])+
        async fn $check() {
            let Some(store) = ($constructor)(stringify!($check)).await else {
                return;
            };
            $crate::history::conformance::$check(::std::borrow::Borrow::<
                dyn $crate::history::HistoryStore,
            >::borrow(&store))
            .await
            .expect("store error");
        }
    };
    (@names {} [$($check:ident),* $(,)?]) => {
        &[$(stringify!($check)),*]
    };
    (@run_all { $new_store:ident } [$($check:ident),* $(,)?]) => {
        $(
            $crate::history::conformance::$check($new_store().await?.as_ref()).await?;
        )*
    };
}

/// Writes timeline records the way the router does: offsets increase per partition, each
/// conversation's sequenced events take seq 1, 2, 3, …, read cursors take none.
struct TimelineWriter {
    /// The offset the next record gets.
    next_offset: Offset,
    /// The last seq given per conversation.
    last_seq: HashMap<String, u64>,
    /// Records written since the last [`TimelineWriter::take_batch`].
    pending: Vec<(Offset, TimelineEvent)>,
}

impl TimelineWriter {
    fn new() -> Self {
        TimelineWriter {
            next_offset: 0,
            last_seq: HashMap::new(),
            pending: Vec::new(),
        }
    }

    fn push(&mut self, conversation: &str, sender: &str, body: EventBody) -> TimelineEvent {
        let seq = body.is_sequenced().then(|| {
            let last_seq = self.last_seq.entry(conversation.to_owned()).or_insert(0);
            *last_seq += 1;
            *last_seq
        });
        let offset = self.next_offset;
        self.next_offset += 1;
        let event = TimelineEvent {
            conversation: conversation.to_owned(),
            seq,
            event_id: format!("event-{conversation}-{offset}"),
            sender: sender.to_owned(),
            ts_ms: 1_700_000_000_000 + offset as i64 * 1_000,
            origin_cluster: "conformance".to_owned(),
            client_msg_id: Some(format!("client-{offset}")),
            ingress_offset: offset,
            body,
        };
        self.pending.push((offset, event.clone()));
        event
    }

    /// The records written since the last call, and the offset after them.
    fn take_batch(&mut self) -> (Vec<(Offset, TimelineEvent)>, Offset) {
        (std::mem::take(&mut self.pending), self.next_offset)
    }

    /// Applies the pending records to `partition` as one batch.
    async fn apply_to(
        &mut self,
        store: &dyn HistoryStore,
        partition: PartitionId,
    ) -> Result<(), HistoryError> {
        let (records, next_offset) = self.take_batch();
        store.apply(partition, &records, next_offset).await
    }
}

fn sent(text: &str) -> EventBody {
    EventBody::message(text)
}

fn edited(target_seq: u64, text: &str) -> EventBody {
    EventBody::MessageEdited {
        target_seq,
        text: text.to_owned(),
    }
}

fn recalled(target_seq: u64) -> EventBody {
    EventBody::MessageRecalled { target_seq }
}

fn created(title: Option<&str>, members: &[&str]) -> EventBody {
    EventBody::ConversationCreated {
        title: title.map(str::to_owned),
        members: members.iter().map(|member| (*member).to_owned()).collect(),
    }
}

fn added(members: &[&str]) -> EventBody {
    EventBody::MembersAdded {
        members: members.iter().map(|member| (*member).to_owned()).collect(),
    }
}

fn removed(members: &[&str]) -> EventBody {
    EventBody::MembersRemoved {
        members: members.iter().map(|member| (*member).to_owned()).collect(),
    }
}

fn muted(muted: bool) -> EventBody {
    EventBody::ConversationMuted { muted }
}

fn read_up_to(seq: u64) -> EventBody {
    EventBody::ReadCursorMoved { seq }
}

/// The view of a message that `sent_event` created, as it stands when untouched.
fn fresh_view(sent_event: &TimelineEvent, text: &str) -> MessageView {
    MessageView::new(
        sent_event.seq.unwrap_or_default(),
        sent_event.event_id.clone(),
        sent_event.sender.clone(),
        sent_event.ts_ms,
        text.to_owned(),
    )
}

fn seqs(views: &[MessageView]) -> Vec<u64> {
    views.iter().map(|view| view.seq).collect()
}

async fn sorted_members(
    store: &dyn HistoryStore,
    conversation: &str,
) -> Result<Vec<String>, HistoryError> {
    let mut members = store.members(conversation).await?;
    members.sort();
    Ok(members)
}

/// Everything the port can tell about some conversations and users, to compare before/after.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// `events` of each conversation.
    events: Vec<Vec<TimelineEvent>>,
    /// `messages` of each conversation.
    messages: Vec<Vec<MessageView>>,
    /// Sorted `members` of each conversation.
    members: Vec<Vec<String>>,
    /// `conversations` of each user.
    conversations: Vec<Vec<ConversationSummary>>,
}

impl Snapshot {
    async fn take(
        store: &dyn HistoryStore,
        conversations: &[&str],
        users: &[&str],
    ) -> Result<Snapshot, HistoryError> {
        let mut snapshot = Snapshot {
            events: Vec::new(),
            messages: Vec::new(),
            members: Vec::new(),
            conversations: Vec::new(),
        };
        for conversation in conversations {
            snapshot
                .events
                .push(store.events(conversation, 0, READ_ALL).await?);
            let messages = store
                .messages(conversation, MessagePage::After(0), READ_ALL)
                .await?;
            snapshot.messages.push(messages);
            snapshot
                .members
                .push(sorted_members(store, conversation).await?);
        }
        for user in users {
            snapshot
                .conversations
                .push(store.conversations(user).await?);
        }
        Ok(snapshot)
    }
}

/// `apply` stores the position with the data; same, overlapping and older batches change
/// nothing; records below the position are skipped; partitions are independent.
pub async fn apply_is_atomic_with_position_and_idempotent(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    assert_eq!(
        store.position(0).await?,
        0,
        "a fresh store starts partition 0 at 0"
    );
    assert_eq!(
        store.position(5).await?,
        0,
        "a fresh store starts partition 5 at 0"
    );

    let conversations = ["g:team"];
    let users = ["alice", "bob"];
    let mut timeline = TimelineWriter::new();
    timeline.push("g:team", "alice", created(Some("Team"), &["alice", "bob"]));
    timeline.push("g:team", "alice", sent("hello"));
    timeline.push("g:team", "alice", edited(2, "hello, edited"));
    timeline.push("g:team", "bob", read_up_to(2));
    let (first_batch, first_next_offset) = timeline.take_batch();
    store.apply(0, &first_batch, first_next_offset).await?;
    assert_eq!(
        store.position(0).await?,
        4,
        "the position is the batch's next offset"
    );
    let after_first = Snapshot::take(store, &conversations, &users).await?;
    assert_eq!(
        after_first.events[0].len(),
        3,
        "three sequenced events: {after_first:?}"
    );

    store.apply(0, &first_batch, first_next_offset).await?;
    assert_eq!(
        Snapshot::take(store, &conversations, &users).await?,
        after_first,
        "replaying the same batch changes nothing"
    );
    assert_eq!(store.position(0).await?, 4);

    let reply = timeline.push("g:team", "bob", sent("hi"));
    let (second_batch, second_next_offset) = timeline.take_batch();
    let overlapping: Vec<(Offset, TimelineEvent)> = first_batch[1..]
        .iter()
        .chain(second_batch.iter())
        .cloned()
        .collect();
    store.apply(0, &overlapping, second_next_offset).await?;
    assert_eq!(store.position(0).await?, 5);
    let messages = store
        .messages("g:team", MessagePage::After(0), READ_ALL)
        .await?;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(
        (messages[0].text.as_deref(), messages[0].edited),
        (Some("hello, edited"), true),
        "a replayed send below the position must not undo the edit that followed it"
    );
    assert_eq!(messages[1], fresh_view(&reply, "hi"));
    assert_eq!(store.events("g:team", 0, READ_ALL).await?.len(), 4);

    let after_second = Snapshot::take(store, &conversations, &users).await?;
    store.apply(0, &first_batch, first_next_offset).await?;
    assert_eq!(
        Snapshot::take(store, &conversations, &users).await?,
        after_second,
        "replaying an older batch changes nothing"
    );
    assert_eq!(
        store.position(0).await?,
        5,
        "the position never moves backwards"
    );

    let mut below_position = TimelineWriter::new();
    below_position.next_offset = 3;
    below_position.last_seq.insert("g:team".to_owned(), 40);
    below_position.push("g:team", "alice", sent("never applied"));
    let (stale_records, _) = below_position.take_batch();
    store.apply(0, &stale_records, 6).await?;
    assert_eq!(
        Snapshot::take(store, &conversations, &users).await?,
        after_second,
        "a record with an offset below the position is skipped, even if it is new"
    );
    assert_eq!(store.position(0).await?, 6);

    store.apply(0, &[], 10).await?;
    assert_eq!(
        store.position(0).await?,
        10,
        "an empty batch still moves the position (gaps)"
    );

    assert_eq!(
        store.position(1).await?,
        0,
        "partition 1 is untouched by partition 0"
    );
    let mut other_partition = TimelineWriter::new();
    other_partition.push("g:other", "carol", created(None, &["carol"]));
    other_partition.push("g:other", "carol", sent("elsewhere"));
    other_partition.apply_to(store, 1).await?;
    assert_eq!(store.position(1).await?, 2);
    assert_eq!(
        store.position(0).await?,
        10,
        "partition 0 is untouched by partition 1"
    );
    assert_eq!(store.events("g:other", 0, READ_ALL).await?.len(), 2);
    Ok(())
}

/// `events` returns every sequenced event (never read cursors), ascending by seq, paged by
/// `after_seq` and `limit`, and only the conversation asked for.
pub async fn events_are_the_sequenced_timeline_in_order(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    let mut expected = Vec::new();
    expected.push(timeline.push("g:log", "alice", created(Some("Log"), &["alice", "bob"])));
    timeline.push("g:lo", "zed", created(None, &["zed"]));
    timeline.push("g:log2", "zed", created(None, &["zed"]));
    for index in 0..5 {
        expected.push(timeline.push("g:log", "alice", sent(&format!("first {index}"))));
    }
    timeline.push("g:log", "bob", read_up_to(3));
    timeline.apply_to(store, 0).await?;

    expected.push(timeline.push("g:log", "alice", added(&["carol"])));
    timeline.push("g:lo", "zed", sent("not in g:log"));
    for index in 0..5 {
        expected.push(timeline.push("g:log", "bob", sent(&format!("second {index}"))));
    }
    expected.push(timeline.push("g:log", "alice", edited(2, "first 0, edited")));
    expected.push(timeline.push("g:log", "bob", recalled(8)));
    timeline.push("g:log", "carol", read_up_to(12));
    expected.push(timeline.push("g:log", "alice", removed(&["carol"])));
    timeline.push("g:log2", "zed", sent("not in g:log either"));
    timeline.apply_to(store, 0).await?;

    let expected_seqs: Vec<u64> = (1..=15).collect();
    let actual_seqs: Vec<Option<u64>> = expected.iter().map(|event| event.seq).collect();
    assert_eq!(
        actual_seqs,
        expected_seqs.iter().copied().map(Some).collect::<Vec<_>>()
    );

    let all = store.events("g:log", 0, READ_ALL).await?;
    assert_eq!(
        all, expected,
        "every sequenced event, as written, in seq order"
    );

    let page = store.events("g:log", 3, 4).await?;
    assert_eq!(page, expected[3..7], "events after seq 3, at most 4");
    let page = store.events("g:log", 9, 4).await?;
    assert_eq!(
        page,
        expected[9..13],
        "numeric (not lexicographic) seq order past 9"
    );
    let tail = store.events("g:log", 13, READ_ALL).await?;
    assert_eq!(tail, expected[13..], "the last page is short");
    assert!(
        store.events("g:log", 15, READ_ALL).await?.is_empty(),
        "nothing after the last seq"
    );
    assert!(store.events("g:log", u64::MAX, READ_ALL).await?.is_empty());
    assert!(
        store.events("g:log", 0, 0).await?.is_empty(),
        "limit 0 returns nothing"
    );
    assert!(store.events("g:unknown", 0, READ_ALL).await?.is_empty());
    assert_eq!(
        store.events("g:lo", 0, READ_ALL).await?.len(),
        2,
        "g:lo keeps to itself"
    );
    assert_eq!(
        store.events("g:log2", 0, READ_ALL).await?.len(),
        2,
        "g:log2 keeps to itself"
    );
    Ok(())
}

/// `messages` holds only sent messages, with edits and recalls applied; edits and recalls of
/// unknown or recalled messages are ignored, within a batch and across batches.
pub async fn messages_reflect_edits_and_recalls(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    timeline.push("g:chat", "alice", created(Some("Chat"), &["alice", "bob"]));
    let one = timeline.push("g:chat", "alice", sent("one"));
    let two = timeline.push("g:chat", "bob", sent("two"));
    timeline.apply_to(store, 0).await?;

    let three = timeline.push("g:chat", "alice", sent("three"));
    timeline.push("g:chat", "alice", edited(2, "one, edited"));
    timeline.push("g:chat", "bob", recalled(3));
    timeline.push("g:chat", "bob", edited(3, "edit after recall"));
    timeline.push("g:chat", "alice", edited(99, "edit of an unknown message"));
    timeline.push("g:chat", "alice", recalled(98));
    timeline.push("g:chat", "alice", edited(4, "three, edited"));
    timeline.apply_to(store, 0).await?;
    timeline.push("g:chat", "alice", recalled(4));
    timeline.push("g:chat", "alice", added(&["carol"]));
    timeline.apply_to(store, 0).await?;

    let expected = vec![
        MessageView {
            text: Some("one, edited".to_owned()),
            edited: true,
            ..fresh_view(&one, "one")
        },
        MessageView {
            text: None,
            recalled: true,
            ..fresh_view(&two, "two")
        },
        MessageView {
            text: None,
            edited: true,
            recalled: true,
            ..fresh_view(&three, "three")
        },
    ];
    let messages = store
        .messages("g:chat", MessagePage::After(0), READ_ALL)
        .await?;
    assert_eq!(
        messages, expected,
        "sender, ts and event id stay the original's; only message_sent events are messages"
    );
    assert_eq!(
        store
            .messages("g:chat", MessagePage::Before(u64::MAX), READ_ALL)
            .await?,
        expected
    );
    assert!(
        store
            .messages("g:unknown", MessagePage::After(0), READ_ALL)
            .await?
            .is_empty()
    );
    Ok(())
}

/// `After(n)` is the first `limit` messages above `n`; `Before(n)` the last `limit` below `n`;
/// both ascending, both skipping non-message seqs.
pub async fn message_pages_are_ascending_windows(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    timeline.push("g:pages", "alice", created(None, &["alice", "bob"]));
    for index in 1..=5 {
        timeline.push("g:pages", "alice", sent(&format!("m{index}")));
    }
    timeline.push("g:pages", "alice", added(&["carol"]));
    for index in 6..=12 {
        timeline.push("g:pages", "bob", sent(&format!("m{index}")));
    }
    timeline.push("g:pages2", "bob", sent("another conversation"));
    timeline.apply_to(store, 0).await?;

    let page = |page: MessagePage, limit: usize| async move {
        store
            .messages("g:pages", page, limit)
            .await
            .map(|views| seqs(&views))
    };
    let all = store
        .messages("g:pages", MessagePage::After(0), READ_ALL)
        .await?;
    assert_eq!(seqs(&all), vec![2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14]);
    let texts: Vec<String> = all.iter().filter_map(|view| view.text.clone()).collect();
    let expected_texts: Vec<String> = (1..=12).map(|index| format!("m{index}")).collect();
    assert_eq!(texts, expected_texts);

    assert_eq!(page(MessagePage::After(0), 5).await?, vec![2, 3, 4, 5, 6]);
    assert_eq!(page(MessagePage::After(6), 3).await?, vec![8, 9, 10]);
    assert_eq!(
        page(MessagePage::After(5), 2).await?,
        vec![6, 8],
        "skips the member event"
    );
    assert_eq!(page(MessagePage::After(12), 5).await?, vec![13, 14]);
    assert_eq!(page(MessagePage::After(14), 5).await?, Vec::<u64>::new());
    assert_eq!(
        page(MessagePage::After(u64::MAX), 5).await?,
        Vec::<u64>::new()
    );
    assert_eq!(
        page(MessagePage::After(0), 0).await?,
        Vec::<u64>::new(),
        "limit 0"
    );

    assert_eq!(
        page(MessagePage::Before(u64::MAX), 3).await?,
        vec![12, 13, 14]
    );
    assert_eq!(page(MessagePage::Before(15), 3).await?, vec![12, 13, 14]);
    assert_eq!(
        page(MessagePage::Before(14), 3).await?,
        vec![11, 12, 13],
        "exclusive bound"
    );
    assert_eq!(page(MessagePage::Before(9), 3).await?, vec![5, 6, 8]);
    assert_eq!(
        page(MessagePage::Before(4), 10).await?,
        vec![2, 3],
        "a short first page"
    );
    assert_eq!(page(MessagePage::Before(2), 10).await?, Vec::<u64>::new());
    assert_eq!(page(MessagePage::Before(0), 10).await?, Vec::<u64>::new());
    assert_eq!(
        page(MessagePage::Before(u64::MAX), 0).await?,
        Vec::<u64>::new(),
        "limit 0"
    );
    Ok(())
}

/// `conversations` lists the user's current conversations sorted by id, with the highest seq
/// and the user's own read cursor, which only moves forward.
pub async fn conversations_list_memberships_with_read_cursors(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    timeline.push("g:b", "alice", created(Some("Bee"), &["alice", "bob"]));
    timeline.push("g:b", "bob", sent("b1"));
    timeline.push("g:b", "alice", sent("b2"));
    timeline.push("g:a", "alice", created(Some("Ay"), &["alice", "carol"]));
    timeline.push("dm:alice:bob", "bob", sent("hi alice"));
    timeline.push("g:b", "alice", read_up_to(3));
    timeline.apply_to(store, 0).await?;
    timeline.push("g:b", "alice", read_up_to(2));
    timeline.push("dm:alice:bob", "bob", read_up_to(1));
    timeline.push("g:a", "carol", sent("a1"));
    timeline.push("g:a", "carol", added(&["dave"]));
    timeline.apply_to(store, 0).await?;

    let summary = |id: &str, last_seq: u64, read_seq: u64, unread: u64, title: Option<&str>| {
        ConversationSummary {
            id: id.to_owned(),
            last_seq,
            read_seq,
            unread,
            mentions: 0,
            message_ttl_s: None,
            muted: false,
            blocked: false,
            title: title.map(str::to_owned),
        }
    };
    assert_eq!(
        store.conversations("alice").await?,
        vec![
            summary("dm:alice:bob", 1, 0, 1, None),
            summary("g:a", 3, 0, 1, Some("Ay")),
            summary("g:b", 3, 3, 0, Some("Bee")),
        ],
        "sorted by id; last_seq counts member events; a lower cursor never moves it back"
    );
    assert_eq!(
        store.conversations("bob").await?,
        vec![
            summary("dm:alice:bob", 1, 1, 0, None),
            summary("g:b", 3, 0, 1, Some("Bee"))
        ],
        "read cursors are per user; one's own messages are never unread"
    );
    assert_eq!(
        store.conversations("dave").await?,
        vec![summary("g:a", 3, 0, 1, Some("Ay"))]
    );
    assert!(store.conversations("nobody").await?.is_empty());

    timeline.push("g:a", "carol", removed(&["alice"]));
    timeline.push("g:b", "alice", read_up_to(3));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        store.conversations("alice").await?,
        vec![
            summary("dm:alice:bob", 1, 0, 1, None),
            summary("g:b", 3, 3, 0, Some("Bee"))
        ],
        "a removed member no longer lists the conversation"
    );
    assert_eq!(
        store.conversations("carol").await?,
        vec![summary("g:a", 4, 0, 0, Some("Ay"))]
    );
    Ok(())
}

/// `conversations_page` cuts the sorted list at a cursor: walking the pages with the last id of
/// each as the next cursor yields every conversation once, in order, and nothing else.
pub async fn conversation_pages_list_each_conversation_once(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    let groups: Vec<String> = (0..7).map(|index| format!("g:page{index}")).collect();
    for group in &groups {
        timeline.push(group, "alice", created(None, &["alice", "bob"]));
    }
    timeline.push("g:bob-only", "bob", created(None, &["bob"]));
    timeline.push("dm:alice:carol", "carol", sent("hi"));
    timeline.push("g:page3", "alice", read_up_to(1));
    timeline.apply_to(store, 0).await?;
    let everything = store.conversations("alice").await?;
    assert_eq!(everything.len(), 8);

    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .conversations_page("alice", cursor.as_deref(), 3)
            .await?;
        assert!(page.len() <= 3, "a page holds at most its limit");
        pages += 1;
        assert!(pages <= 4, "paging ends");
        let Some(last) = page.last() else { break };
        cursor = Some(last.id.clone());
        paged.extend(page);
    }
    assert_eq!(paged, everything, "the pages, joined, are the list");
    assert_eq!(
        store.conversations_page("alice", None, READ_ALL).await?,
        everything
    );
    let after_cursor = store
        .conversations_page("alice", Some("g:page2"), 2)
        .await?;
    let ids: Vec<&str> = after_cursor
        .iter()
        .map(|summary| summary.id.as_str())
        .collect();
    assert_eq!(ids, ["g:page3", "g:page4"], "strictly after the cursor");
    assert_eq!(after_cursor[0].read_seq, 1, "entries are whole summaries");
    let between = store
        .conversations_page("alice", Some("g:page2x"), 1)
        .await?;
    assert_eq!(between[0].id, "g:page3", "a cursor need not be a listed id");
    let past_other_users = store
        .conversations_page("alice", Some("g:bob-only"), 2)
        .await?;
    let ids: Vec<&str> = past_other_users
        .iter()
        .map(|summary| summary.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["g:page0", "g:page1"],
        "a cursor may be someone else's conversation"
    );
    let mut one_by_one = Vec::new();
    let mut cursor: Option<String> = None;
    while let Some(entry) = store
        .conversations_page("alice", cursor.as_deref(), 1)
        .await?
        .pop()
    {
        assert!(one_by_one.len() < everything.len(), "paging by one ends");
        cursor = Some(entry.id.clone());
        one_by_one.push(entry);
    }
    assert_eq!(one_by_one, everything, "pages of one, joined, are the list");
    let last_page = store
        .conversations_page("alice", Some("g:page5"), 2)
        .await?;
    let ids: Vec<&str> = last_page
        .iter()
        .map(|summary| summary.id.as_str())
        .collect();
    assert_eq!(ids, ["g:page6"], "the last page is short: no next");
    assert!(
        store
            .conversations_page("alice", Some("g:page6"), 3)
            .await?
            .is_empty()
    );
    assert!(
        store
            .conversations_page("nobody", None, 3)
            .await?
            .is_empty()
    );
    Ok(())
}

/// Pages hold only the conversations the user is in now: those they left are skipped (a page is
/// still full when more follow), one they left and rejoined is listed, and one with many
/// membership changes is listed once, whatever the page size.
pub async fn conversation_pages_skip_conversations_left(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    let mut timeline = TimelineWriter::new();
    let mut changes: Vec<(&str, &str, EventBody)> = vec![
        ("g:a", "alice", created(None, &["alice"])),
        ("g:b", "alice", created(None, &["alice"])),
        ("g:b", "alice", removed(&["alice"])),
        ("g:c", "alice", created(None, &["alice"])),
        ("g:c", "alice", removed(&["alice"])),
        ("g:c", "bob", added(&["alice"])),
        ("g:d", "alice", created(None, &["alice"])),
    ];
    changes.extend((0..6).map(|_| ("g:d", "bob", added(&["alice"]))));
    changes.extend([
        ("g:e", "alice", created(None, &["alice"])),
        ("g:e", "alice", removed(&["alice"])),
        ("g:f", "alice", created(None, &["alice"])),
        ("g:g", "alice", created(None, &["alice"])),
        ("g:g", "bob", removed(&["alice"])),
    ]);
    // one batch per change, as a projector applying them as they come would
    for (conversation, sender, body) in changes {
        timeline.push(conversation, sender, body);
        timeline.apply_to(store, 0).await?;
    }
    let everything = store.conversations("alice").await?;
    let ids: Vec<&str> = everything
        .iter()
        .map(|summary| summary.id.as_str())
        .collect();
    assert_eq!(ids, ["g:a", "g:c", "g:d", "g:f"]);

    for limit in 1..=4 {
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .conversations_page("alice", cursor.as_deref(), limit)
                .await?;
            assert!(page.len() <= limit, "a page holds at most its limit");
            assert!(paged.len() <= everything.len(), "paging ends");
            let Some(last) = page.last() else { break };
            cursor = Some(last.id.clone());
            let full = page.len() == limit;
            paged.extend(page);
            if !full {
                assert_eq!(paged.len(), everything.len(), "only the last page is short");
            }
        }
        assert_eq!(paged, everything, "pages of {limit}, joined, are the list");
    }
    let after_first = store.conversations_page("alice", Some("g:a"), 2).await?;
    let ids: Vec<&str> = after_first
        .iter()
        .map(|summary| summary.id.as_str())
        .collect();
    assert_eq!(ids, ["g:c", "g:d"], "a left conversation takes no place");
    let after_left = store.conversations_page("alice", Some("g:d"), 3).await?;
    let ids: Vec<&str> = after_left
        .iter()
        .map(|summary| summary.id.as_str())
        .collect();
    assert_eq!(ids, ["g:f"], "conversations left at the end are not listed");
    Ok(())
}

/// A group's members: the listed members of its creation, then additions and removals. The
/// creating sender is a member only if listed (business systems create groups they are not in).
pub async fn group_membership_follows_member_events(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    assert!(
        store.members("g:club").await?.is_empty(),
        "unknown conversations have no members"
    );
    assert!(!store.is_member("g:club", "alice").await?);

    let mut timeline = TimelineWriter::new();
    timeline.push(
        "g:club",
        "alice",
        created(Some("Club"), &["alice", "bob", "carol"]),
    );
    timeline.push("g:club2", "zed", created(None, &["yan"]));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        sorted_members(store, "g:club").await?,
        ["alice", "bob", "carol"],
        "the listed members"
    );
    for member in ["alice", "bob", "carol"] {
        assert!(
            store.is_member("g:club", member).await?,
            "{member} is a member"
        );
    }
    assert!(
        !store.is_member("g:club", "zed").await?,
        "g:club2's members stay in g:club2"
    );
    assert_eq!(
        sorted_members(store, "g:club2").await?,
        ["yan"],
        "a creator who is not listed (a business system) is not a member"
    );

    timeline.push("g:club", "alice", added(&["dave", "erin"]));
    timeline.push("g:club", "alice", removed(&["bob", "nobody"]));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        sorted_members(store, "g:club").await?,
        ["alice", "carol", "dave", "erin"]
    );
    assert!(!store.is_member("g:club", "bob").await?, "bob was removed");
    assert!(!store.is_member("g:club", "nobody").await?);

    timeline.push("g:club", "carol", added(&["bob"]));
    timeline.push("g:club", "carol", removed(&["alice"]));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        sorted_members(store, "g:club").await?,
        ["bob", "carol", "dave", "erin"]
    );
    assert!(store.is_member("g:club", "bob").await?, "bob is back");
    assert!(
        !store.is_member("g:club", "alice").await?,
        "even the creator can leave"
    );
    Ok(())
}

/// `dm:<a>:<b>` has exactly `a` and `b` as members once it has an event, and none before.
pub async fn direct_conversations_have_exactly_their_two_members(
    store: &dyn HistoryStore,
) -> Result<(), HistoryError> {
    assert!(
        !store.is_member("dm:alice:bob", "alice").await?,
        "no members before any event"
    );
    assert!(store.members("dm:alice:bob").await?.is_empty());

    let mut timeline = TimelineWriter::new();
    timeline.push("dm:alice:bob", "bob", sent("hello"));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        sorted_members(store, "dm:alice:bob").await?,
        ["alice", "bob"]
    );
    assert!(
        store.is_member("dm:alice:bob", "alice").await?,
        "the receiver is a member"
    );
    assert!(
        store.is_member("dm:alice:bob", "bob").await?,
        "the sender is a member"
    );
    assert!(!store.is_member("dm:alice:bob", "carol").await?);

    timeline.push("dm:alice:bob", "alice", sent("hi bob"));
    timeline.apply_to(store, 0).await?;
    assert_eq!(
        sorted_members(store, "dm:alice:bob").await?,
        ["alice", "bob"]
    );
    let bobs = store.conversations("bob").await?;
    let ids: Vec<&str> = bobs.iter().map(|summary| summary.id.as_str()).collect();
    assert_eq!(ids, ["dm:alice:bob"]);
    assert_eq!(bobs[0].last_seq, 2);
    Ok(())
}
