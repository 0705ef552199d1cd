//! The history port's conformance suite against the embedded (redb) adapter, each check on a
//! fresh database in a temporary directory; plus what only the embedded adapter promises:
//! everything, positions included, survives closing and reopening the file.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chorus_schemas::{EventBody, TimelineEvent};
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::history::{HistoryError, HistoryStore, MessagePage, conformance};
use tempfile::TempDir;

fn fresh_store() -> (TempDir, Arc<EmbeddedHistory>) {
    let directory = tempfile::tempdir().unwrap();
    let store = EmbeddedHistory::open(&directory.path().join("history.redb")).unwrap();
    (directory, store)
}

#[tokio::test]
async fn apply_is_atomic_with_position_and_idempotent() {
    let (_directory, store) = fresh_store();
    conformance::apply_is_atomic_with_position_and_idempotent(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn events_are_the_sequenced_timeline_in_order() {
    let (_directory, store) = fresh_store();
    conformance::events_are_the_sequenced_timeline_in_order(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn messages_reflect_edits_and_recalls() {
    let (_directory, store) = fresh_store();
    conformance::messages_reflect_edits_and_recalls(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn message_pages_are_ascending_windows() {
    let (_directory, store) = fresh_store();
    conformance::message_pages_are_ascending_windows(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn conversations_list_memberships_with_read_cursors() {
    let (_directory, store) = fresh_store();
    conformance::conversations_list_memberships_with_read_cursors(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn conversation_pages_list_each_conversation_once() {
    let (_directory, store) = fresh_store();
    conformance::conversation_pages_list_each_conversation_once(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn conversation_pages_skip_conversations_left() {
    let (_directory, store) = fresh_store();
    conformance::conversation_pages_skip_conversations_left(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn group_membership_follows_member_events() {
    let (_directory, store) = fresh_store();
    conformance::group_membership_follows_member_events(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn direct_conversations_have_exactly_their_two_members() {
    let (_directory, store) = fresh_store();
    conformance::direct_conversations_have_exactly_their_two_members(store.as_ref())
        .await
        .unwrap();
}

#[tokio::test]
async fn run_all_passes_with_a_store_factory() {
    let directory = tempfile::tempdir().unwrap();
    let stores_made = AtomicUsize::new(0);
    conformance::run_all(|| {
        let path = directory.path().join(format!(
            "history-{}.redb",
            stores_made.fetch_add(1, Ordering::Relaxed)
        ));
        async move {
            let store: Arc<dyn HistoryStore> = EmbeddedHistory::open(&path)?;
            Ok::<_, HistoryError>(store)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        stores_made.load(Ordering::Relaxed),
        9,
        "one fresh store per check"
    );
}

fn message(conversation: &str, seq: u64, text: &str) -> TimelineEvent {
    TimelineEvent {
        conversation: conversation.to_owned(),
        seq: Some(seq),
        event_id: format!("event-{seq}"),
        sender: "alice".to_owned(),
        ts_ms: 1_700_000_000_000,
        origin_cluster: "test".to_owned(),
        client_msg_id: None,
        ingress_offset: seq,
        body: EventBody::MessageSent {
            text: text.to_owned(),
        },
    }
}

#[tokio::test]
async fn embedded_history_survives_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("history.redb");
    {
        let store = EmbeddedHistory::open(&path).unwrap();
        let records = vec![
            (0, message("dm:alice:bob", 1, "one")),
            (1, message("dm:alice:bob", 2, "two")),
        ];
        store.apply(3, &records, 2).await.unwrap();
    }
    let reopened = EmbeddedHistory::open(&path).unwrap();
    assert_eq!(reopened.position(3).await.unwrap(), 2);
    let messages = reopened
        .messages("dm:alice:bob", MessagePage::After(0), 10)
        .await
        .unwrap();
    let texts: Vec<Option<&str>> = messages.iter().map(|view| view.text.as_deref()).collect();
    assert_eq!(texts, [Some("one"), Some("two")]);
    assert!(reopened.is_member("dm:alice:bob", "bob").await.unwrap());
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_unavailable() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("history.redb");
    let _store = EmbeddedHistory::open(&path).unwrap();
    let second = EmbeddedHistory::open(&path);
    assert!(
        matches!(second, Err(HistoryError::Unavailable(_))),
        "{:?}",
        second.err()
    );
}
