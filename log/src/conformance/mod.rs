//! The conformance suite of the [`EventLog`] port: every adapter must pass every function here.
//!
//! Each check is an `async fn(&Harness)` that panics (through `assert!`) on a violation. An
//! adapter's test file invokes [`event_log_conformance!`](crate::event_log_conformance), which
//! makes every check its own test (the list of checks is kept once, in that macro), or calls
//! [`run_all`].
//!
//! What the harness must provide:
//! - [`Harness::open`] returns a handle on **the same durable storage** every time it is called:
//!   calling it again after every handle of the previous call (and its consumers) was dropped is
//!   a restart, and everything acknowledged before must still be there ([`durable_across_reopen`]).
//!   For the embedded log, open an `EmbeddedLog` on the same folder; for Kafka, connect to the
//!   same cluster.
//! - [`Harness::topic_prefix`] starts every topic and group name the suite creates (each test
//!   appends its own name and a unique suffix, so runs never share topics). Use characters of
//!   `[a-zA-Z0-9._-]` only.
//! - `ensure_topic` creates topics with at least 2 partitions (the group tests need two).
//!
//! What the suite assumes of the port, and no more: offsets strictly increase within a partition
//! (never that they are contiguous or start at a given number, except that reading a fresh topic
//! from 0 returns everything); records appear within a bounded time (every wait is a deadline of
//! [`DEADLINE`], never a fixed sleep), so brokers with real latency pass.
//!
//! Where the checks live, by subject (every check is re-exported here, where the macro names
//! it): `records.rs` (appends, reads, end offsets, durability), `groups.rs` (consumer groups),
//! `transactions.rs` (transactional writers). This file holds the
//! harness, the macro and the helpers the checks share.

mod groups;
mod records;
mod transactions;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio::time::Instant;

pub use self::groups::{
    committed_offsets_resume_after_rejoin, group_members_split_partitions_exclusively,
    member_leaving_hands_partitions_over, start_from_earliest_and_latest,
};
pub use self::records::{
    append_then_read_in_order, append_to_explicit_partition, concurrent_appenders_lose_nothing,
    durable_across_reopen, end_offset_moves_past_appended, end_offsets_agree_with_end_offset,
    read_from_offset_and_wait_for_new_records, read_range_stops_at_the_end,
    same_key_same_partition, unknown_topic_and_bad_partition_are_errors,
};
pub use self::transactions::{
    a_member_that_released_a_partition_is_fenced,
    a_revoked_partition_may_commit_until_the_next_poll,
    a_transaction_commits_records_and_offsets_together, a_transaction_spans_output_topics,
};
use crate::{Consumer, EventLog, Offset, PartitionId, PollEvent, Record, StartFrom};

/// Opens (or reopens) the log under test; see the module docs.
pub type OpenLog = Arc<dyn Fn() -> BoxFuture<'static, Arc<dyn EventLog>> + Send + Sync>;

/// How the suite reaches the adapter under test.
#[derive(Clone)]
pub struct Harness {
    /// Opens a handle on the log under test; a second call after dropping the first is a restart.
    pub open: OpenLog,
    /// Prefix of every topic and group name the suite creates.
    pub topic_prefix: String,
}

/// Longest the suite waits for any condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Timeout of one consumer poll while driving members.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// Wait of one `read` while collecting records.
const READ_WAIT: Duration = Duration::from_millis(500);
/// Wait of a `read` that is expected to find nothing.
const EMPTY_READ_WAIT: Duration = Duration::from_millis(100);

/// Runs every conformance check in turn, in the order of the list in
/// [`event_log_conformance!`](crate::event_log_conformance).
pub async fn run_all(harness: &Harness) {
    crate::event_log_conformance!(@checks run_all { harness });
}

/// Makes every check of this suite its own test of the adapter whose test file invokes it, so
/// that file names no check: the list of checks is kept here, once, next to the checks.
///
/// Give it the attribute(s) of each test (the runtime the adapter needs, e.g.
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`) and a harness constructor:
/// `harness = <expr>`, something callable as `fn(check: &'static str) -> Option<H>` where
/// `H: Borrow<Harness>` (a harness, or a value that owns one with what it lives on, e.g. a
/// temporary folder removed when the check ends). `check` is the check's name (for unique topic
/// names); `None` skips the check (an adapter whose service is missing outside CI: the
/// constructor prints why, or panics where a skip is not acceptable).
///
/// ```ignore
/// chorus_log::event_log_conformance!(
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     harness = fresh_harness,
/// );
/// ```
#[macro_export]
macro_rules! event_log_conformance {
    ($(#[$test_attribute:meta])+ harness = $constructor:expr $(,)?) => {
        $crate::event_log_conformance!(
            @checks tests { $(#[$test_attribute])+ harness = $constructor }
        );
    };
    // The one list of the suite's checks, in the order `run_all` runs them; hands it to the
    // arm named by `$arm`.
    (@checks $arm:ident { $($context:tt)* }) => {
        $crate::event_log_conformance!(@$arm { $($context)* } [
            append_then_read_in_order,
            same_key_same_partition,
            append_to_explicit_partition,
            unknown_topic_and_bad_partition_are_errors,
            read_from_offset_and_wait_for_new_records,
            end_offset_moves_past_appended,
            end_offsets_agree_with_end_offset,
            durable_across_reopen,
            group_members_split_partitions_exclusively,
            member_leaving_hands_partitions_over,
            committed_offsets_resume_after_rejoin,
            start_from_earliest_and_latest,
            concurrent_appenders_lose_nothing,
            read_range_stops_at_the_end,
            a_transaction_commits_records_and_offsets_together,
            a_member_that_released_a_partition_is_fenced,
            a_revoked_partition_may_commit_until_the_next_poll,
            a_transaction_spans_output_topics,
        ]);
    };
    (@tests $context:tt [$($check:ident),* $(,)?]) => {
        $(
            $crate::event_log_conformance!(@test $context $check);
        )*
    };
    (@test { $(#[$test_attribute:meta])+ harness = $constructor:expr } $check:ident) => {
        $(#[$test_attribute])+
        async fn $check() {
            let Some(harness) = ($constructor)(stringify!($check)) else {
                return;
            };
            $crate::conformance::$check(::std::borrow::Borrow::<
                $crate::conformance::Harness,
            >::borrow(&harness))
            .await;
        }
    };
    (@run_all { $harness:expr } [$($check:ident),* $(,)?]) => {
        $(
            $crate::conformance::$check($harness).await;
        )*
    };
}

/// A unique topic or group name under the harness prefix.
fn unique_name(harness: &Harness, label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{}-{label}-{nanos:x}-{sequence}", harness.topic_prefix)
}

async fn new_topic(harness: &Harness, log: &Arc<dyn EventLog>, label: &str) -> String {
    let topic = unique_name(harness, label);
    let partitions = log.ensure_topic(&topic).await.expect("ensure_topic");
    assert!(partitions >= 1, "a topic has at least one partition");
    topic
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn assert_strictly_increasing(offsets: &[Offset], what: &str) {
    assert!(
        offsets.windows(2).all(|pair| pair[0] < pair[1]),
        "{what} must strictly increase: {offsets:?}"
    );
}

/// Reads exactly `count` records from `from` on (never more), checking offsets increase, then
/// checks nothing else follows.
async fn read_exactly(
    log: &Arc<dyn EventLog>,
    topic: &str,
    partition: PartitionId,
    from: Offset,
    count: usize,
) -> Vec<Record> {
    let deadline = Instant::now() + DEADLINE;
    let mut records: Vec<Record> = Vec::with_capacity(count);
    let mut next = from;
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records of partition {partition} from {from} appeared",
            records.len()
        );
        let batch = log
            .read(topic, partition, next, count - records.len(), READ_WAIT)
            .await
            .expect("read");
        assert!(
            batch.len() <= count - records.len(),
            "read returned more than max"
        );
        for record in batch {
            assert!(
                record.offset >= next,
                "read from {next} returned offset {}",
                record.offset
            );
            assert_eq!(record.partition, partition);
            next = record.offset + 1;
            records.push(record);
        }
    }
    let extra = log
        .read(topic, partition, next, 10, EMPTY_READ_WAIT)
        .await
        .expect("read past the records");
    assert!(
        extra.is_empty(),
        "unexpected records after offset {next} in partition {partition}: {extra:?}"
    );
    records
}

/// Reads from `from` until something comes back.
async fn read_until_some(
    log: &Arc<dyn EventLog>,
    topic: &str,
    partition: PartitionId,
    from: Offset,
    max: usize,
) -> Vec<Record> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let batch = log
            .read(topic, partition, from, max, READ_WAIT)
            .await
            .expect("read");
        if !batch.is_empty() {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "no record of partition {partition} from {from} appeared"
        );
    }
}

/// Polls a lone consumer until it is assigned `partition`.
async fn drive_until_assigned(consumer: &mut dyn Consumer, partition: PartitionId) {
    let deadline = Instant::now() + DEADLINE;
    while !consumer.assignment().contains(&partition) {
        assert!(
            Instant::now() < deadline,
            "partition {partition} was never assigned"
        );
        consumer.poll(100, POLL_TIMEOUT).await.expect("poll");
    }
}

/// A consumer under test with what it was told so far.
struct Member {
    /// Name in assertion messages.
    name: &'static str,
    /// The consumer.
    consumer: Box<dyn Consumer>,
    /// Partitions it was assigned and not revoked, per its poll events.
    held: BTreeSet<PartitionId>,
    /// Records it received.
    records: Vec<Record>,
}

impl Member {
    async fn join(
        log: &Arc<dyn EventLog>,
        group: &str,
        topic: &str,
        start: StartFrom,
        name: &'static str,
    ) -> Member {
        let consumer = log
            .consumer(group, topic, start)
            .await
            .expect("join the group");
        Member {
            name,
            consumer,
            held: BTreeSet::new(),
            records: Vec::new(),
        }
    }
}

/// Joins two members one after the other and drives them until they split the partitions.
async fn split_between_two(
    log: &Arc<dyn EventLog>,
    group: &str,
    topic: &str,
    partitions: PartitionId,
) -> Vec<Member> {
    let mut members = vec![Member::join(log, group, topic, StartFrom::Earliest, "first").await];
    drive_members(
        &mut members,
        "the first member holds every partition",
        |members| members[0].held.len() == partitions as usize,
    )
    .await;
    members.push(Member::join(log, group, topic, StartFrom::Earliest, "second").await);
    drive_members(
        &mut members,
        "both members share the partitions",
        |members| {
            let total: usize = members.iter().map(|member| member.held.len()).sum();
            total == partitions as usize && members.iter().all(|member| !member.held.is_empty())
        },
    )
    .await;
    members
}

/// Polls every member in turn until `done` holds, checking after each event that no partition
/// is held by two members, that records come only from held partitions, and that `assignment()`
/// agrees with the events. Rounds alternate the polling order, newest member first then oldest
/// first, so a newcomer also polls before the holder of its partitions has seen the revocation.
async fn drive_members(members: &mut [Member], what: &str, done: impl Fn(&[Member]) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut newest_first = true;
    while !done(members) {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        let order: Vec<usize> = match newest_first {
            true => (0..members.len()).rev().collect(),
            false => (0..members.len()).collect(),
        };
        newest_first = !newest_first;
        for index in order {
            let event = members[index]
                .consumer
                .poll(100, POLL_TIMEOUT)
                .await
                .expect("poll");
            apply_event(members, index, event);
            if done(members) {
                return;
            }
        }
    }
}

fn apply_event(members: &mut [Member], index: usize, event: PollEvent) {
    let name = members[index].name;
    match event {
        PollEvent::Assigned(partitions) => {
            for partition in &partitions {
                let other_holder = members
                    .iter()
                    .enumerate()
                    .find(|(other, member)| *other != index && member.held.contains(partition));
                if let Some((_, other)) = other_holder {
                    panic!(
                        "{name} was assigned partition {partition} still held by {}",
                        other.name
                    );
                }
                let newly_held = members[index].held.insert(*partition);
                assert!(
                    newly_held,
                    "{name} was assigned partition {partition} twice"
                );
            }
        }
        PollEvent::Revoked(partitions) => {
            for partition in &partitions {
                let was_held = members[index].held.remove(partition);
                assert!(
                    was_held,
                    "{name} lost partition {partition} it did not hold"
                );
            }
        }
        PollEvent::Records(records) => {
            for record in records {
                assert!(
                    members[index].held.contains(&record.partition),
                    "{name} received a record of partition {} it does not hold",
                    record.partition
                );
                members[index].records.push(record);
            }
        }
        PollEvent::Idle => {}
    }
    let reported: BTreeSet<PartitionId> =
        members[index].consumer.assignment().into_iter().collect();
    assert_eq!(
        reported, members[index].held,
        "{name}: assignment() disagrees with the poll events"
    );
}
