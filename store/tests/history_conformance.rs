//! The history port's conformance suite against the embedded (redb) adapter, each check on a
//! fresh database in a temporary directory; plus what only the embedded adapter promises:
//! everything, positions included, survives closing and reopening the file.

use std::borrow::Borrow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chorus_schemas::{EventBody, TimelineEvent};
use chorus_store::embedded::EmbeddedHistory;
use chorus_store::history::{HistoryError, HistoryStore, MessagePage, conformance};
use tempfile::TempDir;

/// A fresh store in its own temporary folder, removed when the check ends.
struct FreshStore {
    store: Arc<EmbeddedHistory>,
    _directory: TempDir,
}

impl Borrow<dyn HistoryStore> for FreshStore {
    fn borrow(&self) -> &(dyn HistoryStore + 'static) {
        self.store.as_ref()
    }
}

async fn fresh_store(_check: &'static str) -> Option<FreshStore> {
    let directory = tempfile::tempdir().unwrap();
    let store = EmbeddedHistory::open(&directory.path().join("history.redb")).unwrap();
    Some(FreshStore {
        store,
        _directory: directory,
    })
}

chorus_store::history_conformance!(
    #[tokio::test]
    store = fresh_store,
);

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
        conformance::CHECKS.len(),
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
        body: EventBody::message(text),
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

/// Applies within one sync interval share one durable commit: a trickle of small batches does
/// not cost a synced transaction each, and every apply is visible to readers at once.
#[tokio::test]
async fn applies_within_the_sync_interval_share_one_durable_commit() {
    use chorus_store::embedded::SYNC_INTERVAL;
    let directory = tempfile::tempdir().unwrap();
    let store = EmbeddedHistory::open(&directory.path().join("history.redb")).unwrap();
    let started = std::time::Instant::now();
    for seq in 1..=50u64 {
        let records = vec![(seq - 1, message("dm:alice:bob", seq, "trickle"))];
        store.apply(0, &records, seq).await.unwrap();
        assert_eq!(store.position(0).await.unwrap(), seq);
    }
    let intervals = started.elapsed().as_secs_f64() / SYNC_INTERVAL.as_secs_f64();
    let most = 1 + intervals.ceil() as u64;
    assert!(
        store.durable_commits() <= most,
        "{} durable commits for 50 applies in {intervals:.2} sync intervals",
        store.durable_commits()
    );
    let page = store
        .messages("dm:alice:bob", MessagePage::After(0), 100)
        .await
        .unwrap();
    assert_eq!(page.len(), 50);
}

/// Applies that were not yet durable when the store closed are there after reopening.
#[tokio::test]
async fn non_durable_applies_are_made_durable_at_close() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("history.redb");
    {
        let store = EmbeddedHistory::open(&path).unwrap();
        for seq in 1..=3u64 {
            let records = vec![(seq - 1, message("dm:alice:bob", seq, "late"))];
            store.apply(0, &records, seq).await.unwrap();
        }
        assert!(
            store.durable_commits() < 3,
            "the later applies were not durable commits"
        );
    }
    let reopened = EmbeddedHistory::open(&path).unwrap();
    assert_eq!(reopened.position(0).await.unwrap(), 3);
}
