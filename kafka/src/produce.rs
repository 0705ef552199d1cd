//! Appends through the shared idempotent producer (`acks=all`): every record goes to an explicit
//! partition ([`partition_for_key`] over the topic's actual partition count, or the one given),
//! and an append returns only after the delivery report of *every* record of the call came back
//! OK, so an acknowledged record is on every in-sync replica. Records of one call keep their
//! order per partition (idempotence keeps order across retries). A full local queue is waited
//! out (backoff), never an error. The transactional writer produces through the same [`produce_with`],
//! inside its transaction.

use std::sync::Arc;
use std::time::Duration;

use chorus_log::{LogError, NewRecord, Offset, PartitionId, partition_for_key};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::Inner;

impl Inner {
    /// Appends each record to the partition of its key ([`partition_for_key`] over the topic's
    /// partition count).
    pub(crate) async fn append(
        self: &Arc<Self>,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<(PartitionId, Offset)>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let partitions = self.partition_count(topic).await?;
        let placed: Vec<(PartitionId, NewRecord)> = records
            .into_iter()
            .map(|record| (partition_for_key(&record.key, partitions), record))
            .collect();
        produce_with(&self.producer, topic, &placed).await
    }

    /// Appends every record to `partition`.
    pub(crate) async fn append_to(
        self: &Arc<Self>,
        topic: &str,
        partition: PartitionId,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Offset>, LogError> {
        self.check_partition(topic, partition).await?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let placed: Vec<(PartitionId, NewRecord)> = records
            .into_iter()
            .map(|record| (partition, record))
            .collect();
        let placements = produce_with(&self.producer, topic, &placed).await?;
        Ok(placements.into_iter().map(|(_, offset)| offset).collect())
    }
}

/// Enqueues every record on `producer`, then awaits every delivery report.
pub(crate) async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    records: &[(PartitionId, NewRecord)],
) -> Result<Vec<(PartitionId, Offset)>, LogError> {
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(records.len());
    for (partition, record) in records {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let mut future_record = FutureRecord::to(topic)
            .partition(*partition as i32)
            .key(record.key.as_slice())
            .payload(record.value.as_slice())
            .headers(headers);
        let mut backoff = Duration::from_millis(1);
        loop {
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    future_record = back;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
                Err((error, _)) => return Err(produce_error(topic, error)),
            }
        }
    }
    let results = futures_util::future::join_all(deliveries).await;
    let mut placements = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(Ok(delivery)) if delivery.offset >= 0 && delivery.partition >= 0 => {
                placements.push((delivery.partition as PartitionId, delivery.offset as Offset))
            }
            Ok(Ok(delivery)) => {
                return Err(LogError::Backend(format!(
                    "produce to {topic}: delivered without an offset ({delivery:?})"
                )));
            }
            Ok(Err((error, _))) => return Err(produce_error(topic, error)),
            Err(_) => return Err(LogError::Closed),
        }
    }
    Ok(placements)
}

fn produce_error(topic: &str, error: KafkaError) -> LogError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            LogError::UnknownTopic(topic.to_owned())
        }
        _ => LogError::backend_failure_while(format!("produce to {topic}"), error),
    }
}
