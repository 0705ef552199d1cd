//! One transaction per cycle for the whole router process (KIP-447).
//!
//! Every partition worker hands its decided batch — the timeline records, the events it
//! forwards to their home regions, and the `ingress` offset after the batch — to the process's
//! one [`TransactionalWriter`], through this task.
//! The task takes every batch waiting when it is free and commits them all in one transaction:
//! the records to their `timeline` partitions, the `ingress` offsets with the consumer group's
//! metadata. While a transaction commits, the next cycle's batches gather, so under load one
//! transaction carries every partition that has work (one producer, one commit round trip,
//! one set of markers), and at low load a batch commits at once.
//!
//! The writer is fenced by the group: a transaction naming a partition this member no longer
//! holds, or sent by a member the group no longer counts (a paused zombie), fails with
//! [`LogError::Fenced`] and nothing of it becomes visible. Every worker whose batch was in it
//! gets the failure; like any failed append, it stops the router (crash-only: see
//! `worker::append_timeline_batch_crash_only`).

use std::collections::BTreeMap;

use chorus_log::{LogError, NewRecord, Offset, Output, PartitionId, TransactionalWriter};
use tokio::sync::{mpsc, oneshot};

/// Batches waiting for the committer before workers wait for it.
const QUEUE: usize = 64;

/// One worker's decided batch.
struct Request {
    partition: PartitionId,
    records: Vec<NewRecord>,
    /// Events forwarded to their home region: `(forward topic, record)`, to the same partition.
    forwards: Vec<(String, NewRecord)>,
    /// The partition's `ingress` offset after the batch ("next to read").
    next_ingress: Offset,
    reply: oneshot::Sender<Result<Vec<Offset>, LogError>>,
}

/// Hands batches to the committer task; cheap to clone, one per worker.
#[derive(Clone)]
pub(crate) struct Committer {
    requests: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committer task over `writer`, which appends to `timeline`.
    pub(crate) fn start(
        writer: Box<dyn TransactionalWriter>,
        timeline: String,
    ) -> (Committer, tokio::task::JoinHandle<()>) {
        let (requests, receiver) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(writer, timeline, receiver));
        (Committer { requests }, task)
    }

    /// Commits `records` to `partition` of `timeline`, and `forwards` to the same partition of
    /// their forward topics, with the partition's ingress offset, in the next transaction;
    /// returns the timeline records' offsets once committed and visible.
    pub(crate) async fn commit(
        &self,
        partition: PartitionId,
        records: Vec<NewRecord>,
        forwards: Vec<(String, NewRecord)>,
        next_ingress: Offset,
    ) -> Result<Vec<Offset>, LogError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            partition,
            records,
            forwards,
            next_ingress,
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }
}

async fn run(
    mut writer: Box<dyn TransactionalWriter>,
    timeline: String,
    mut requests: mpsc::Receiver<Request>,
) {
    while let Some(first) = requests.recv().await {
        let mut cycle = vec![first];
        while let Ok(more) = requests.try_recv() {
            cycle.push(more);
        }
        let mut offsets: BTreeMap<PartitionId, Offset> = BTreeMap::new();
        let mut records = Vec::with_capacity(cycle.iter().map(|r| r.records.len()).sum());
        let mut forwards: BTreeMap<String, Vec<(PartitionId, NewRecord)>> = BTreeMap::new();
        let mut replies = Vec::with_capacity(cycle.len());
        for request in cycle {
            let next = offsets.entry(request.partition).or_default();
            *next = (*next).max(request.next_ingress);
            replies.push((request.partition, request.records.len(), request.reply));
            records.extend(
                request
                    .records
                    .into_iter()
                    .map(|record| (request.partition, record)),
            );
            for (topic, record) in request.forwards {
                forwards
                    .entry(topic)
                    .or_default()
                    .push((request.partition, record));
            }
        }
        let offsets: Vec<(PartitionId, Offset)> = offsets.into_iter().collect();
        let committing = std::time::Instant::now();
        let count = records.len();
        let mut outputs = vec![Output {
            topic: timeline.clone(),
            records,
        }];
        outputs.extend(
            forwards
                .into_iter()
                .map(|(topic, records)| Output { topic, records }),
        );
        let outcome = writer
            .commit_outputs(outputs, &offsets)
            .await
            .map(|mut placed| placed.swap_remove(0));
        tracing::trace!(
            partitions = offsets.len(),
            count,
            elapsed = ?committing.elapsed(),
            ok = outcome.is_ok(),
            "cycle committed"
        );
        match outcome {
            Ok(committed) => {
                let mut committed = committed.into_iter();
                for (_, count, reply) in replies {
                    let _ = reply.send(Ok(committed.by_ref().take(count).collect()));
                }
            }
            Err(error) => {
                for (_, _, reply) in replies {
                    let _ = reply.send(Err(share(&error)));
                }
            }
        }
    }
}

/// The failure of a transaction as each of its workers gets it: fencing as fencing (naming
/// the partition the writer found fenced), anything else as what it said.
fn share(error: &LogError) -> LogError {
    match error {
        LogError::Fenced { topic, partition } => LogError::Fenced {
            topic: topic.clone(),
            partition: *partition,
        },
        LogError::Closed => LogError::Closed,
        other => LogError::Backend(other.to_string()),
    }
}
