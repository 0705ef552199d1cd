//! The broadcast delivery path: deliveries carried by a topic of the event log (`deliveries`)
//! that every ingest node tails, used while presence or the node bus (Redis) is down.
//!
//! Invariants:
//! - a record names its target node, or [`EVERY_NODE`]; each node hands its sink only the
//!   records for itself or for every node. The sink (the node's session hub) filters further on
//!   its own: a `ToUsers` delivery reaches only users with a session there, a `ToSession` only
//!   that session. So a broadcast of `ToUsers { members }` reaches exactly the members' online
//!   sessions, wherever they are, without presence;
//! - records of one target keep their order (one key per target, so one partition);
//! - a record carries the whole [`Delivery`], its `sequencing` included, so a node applies the
//!   same ordering checks (owner epoch, per-connection seq) to both paths;
//! - a node tails from the end the topic had when it attached, through its own consumer group
//!   (`<topic>.<node>`, never committed): a restarted node has no sessions waiting for old
//!   deliveries, and clients fill any gap from history. Delivery here is best effort, like every
//!   live delivery; durability lives in `timeline`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::presence::{Delivery, DeliverySink};
use chorus_log::{EventLog, LogError, NewRecord, PollEvent, StartFrom, TopicSettings};

/// The target of a delivery meant for every node.
pub const EVERY_NODE: &str = "*";

/// Records one poll of a tailing node takes at most.
const POLL_RECORDS: usize = 512;

#[derive(Serialize, Deserialize)]
struct Envelope {
    node: String,
    delivery: Delivery,
}

/// Sends deliveries over the `deliveries` topic and lets nodes tail it.
pub struct BroadcastBus {
    log: Arc<dyn EventLog>,
    topic: String,
}

impl BroadcastBus {
    /// The bus on `topic`, which it creates if needed with `settings` (a short retention:
    /// nothing reads a delivery again once the tailing nodes passed it).
    pub async fn open(
        log: Arc<dyn EventLog>,
        topic: &str,
        settings: TopicSettings,
    ) -> Result<Arc<Self>, LogError> {
        log.ensure_topic_with(topic, settings).await?;
        Ok(Arc::new(BroadcastBus {
            log,
            topic: topic.to_owned(),
        }))
    }

    /// Appends deliveries, each for a node or [`EVERY_NODE`], in one call; returns once they
    /// are durable (and so on their way to every tailing node).
    pub async fn publish(&self, deliveries: Vec<(String, Delivery)>) -> Result<(), LogError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(deliveries.len());
        for (node, delivery) in deliveries {
            let key = node.clone().into_bytes();
            let value = serde_json::to_vec(&Envelope { node, delivery })
                .map_err(|error| LogError::Backend(format!("encoding a delivery: {error}")))?;
            records.push(NewRecord::new(key, value));
        }
        self.log.append(&self.topic, records).await?;
        Ok(())
    }

    /// Tails the topic from its current end on behalf of `node`, handing `sink` what is for
    /// the node or for every node, until the returned task is aborted. Returns once the tail is
    /// positioned, so anything published afterwards reaches the sink.
    pub async fn attach(
        self: &Arc<Self>,
        node: &str,
        sink: Arc<dyn DeliverySink>,
    ) -> Result<tokio::task::JoinHandle<()>, LogError> {
        let group = format!("{}.{node}", self.topic);
        let mut consumer = self
            .log
            .consumer(&group, &self.topic, StartFrom::Latest)
            .await?;
        let partitions = self.log.partition_count(&self.topic).await?;
        // Wait for the assignment of every partition: from then on nothing is missed.
        let mut assigned = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while assigned < partitions as usize {
            if tokio::time::Instant::now() >= deadline {
                return Err(LogError::Backend(format!(
                    "{group}: only {assigned} of {partitions} partitions of {} assigned",
                    self.topic
                )));
            }
            match consumer
                .poll(POLL_RECORDS, Duration::from_millis(200))
                .await?
            {
                PollEvent::Assigned(list) => assigned += list.len(),
                PollEvent::Revoked(list) => assigned = assigned.saturating_sub(list.len()),
                PollEvent::Records(records) => hand_over(node, &sink, &records),
                PollEvent::Idle => {}
            }
        }
        let node = node.to_owned();
        let topic = self.topic.clone();
        Ok(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match consumer.poll(POLL_RECORDS, Duration::from_secs(1)).await {
                    Ok(PollEvent::Records(records)) => {
                        backoff = Duration::from_millis(100);
                        hand_over(&node, &sink, &records);
                    }
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(error) => {
                        tracing::warn!(%error, topic, "broadcast tail failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }))
    }
}

fn hand_over(node: &str, sink: &Arc<dyn DeliverySink>, records: &[chorus_log::Record]) {
    for record in records {
        match serde_json::from_slice::<Envelope>(&record.value) {
            Ok(envelope) if envelope.node == node || envelope.node == EVERY_NODE => {
                sink.deliver(envelope.delivery)
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "undecodable broadcast delivery ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::conformance::CollectingSink;
    use chorus_log::embedded::{EmbeddedLog, EmbeddedLogConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_receive_their_own_and_everyones_deliveries_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = EmbeddedLogConfig::new(dir.path());
        config.partitions = 1; // one total order, so the sentinel closes every stream
        let log = EmbeddedLog::open(config).expect("log");
        let bus = BroadcastBus::open(log, "deliveries", TopicSettings::default())
            .await
            .expect("bus");
        let one = Arc::new(CollectingSink::default());
        let two = Arc::new(CollectingSink::default());
        let _tail_one = bus.attach("n1", one.clone()).await.expect("attach n1");
        let _tail_two = bus.attach("n2", two.clone()).await.expect("attach n2");
        let to_session = |session: &str| Delivery::ToSession {
            session: session.to_owned(),
            outcome: crate::protocol::outbound::EventOutcome::Acked {
                client_msg_id: Some(format!("ack for {session}")),
                conversation: "dm:alice:bob".into(),
                seq: 1,
                event_id: "e1".into(),
            },
        };
        let to_everyone = |frame: &str| Delivery::ToUsers {
            users: vec!["alice".into(), "bob".into()],
            frame: frame.into(),
            sequencing: Some(crate::presence::Sequencing {
                partition: 0,
                owner_epoch: 5,
                conversation: "dm:alice:bob".into(),
                seq: Some(3),
            }),
        };
        bus.publish(vec![
            ("n1".into(), to_session("s1")),
            ("n2".into(), to_session("s2")),
            (EVERY_NODE.into(), to_everyone("event")),
            ("n3".into(), to_session("s3")),
            ("n1".into(), to_session("s4")),
        ])
        .await
        .expect("publish");
        bus.publish(vec![(EVERY_NODE.into(), to_everyone("sentinel"))])
            .await
            .expect("publish the sentinel");
        assert_eq!(
            one.wait_for(4).await,
            vec![
                to_session("s1"),
                to_everyone("event"),
                to_session("s4"),
                to_everyone("sentinel")
            ]
        );
        assert_eq!(
            two.wait_for(3).await,
            vec![
                to_session("s2"),
                to_everyone("event"),
                to_everyone("sentinel")
            ]
        );
    }
}
