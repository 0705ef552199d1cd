//! The raw Kafka baseline: what the broker gives a plain rdkafka client with the settings Chorus's
//! ingest path uses (idempotent producer, `acks=all`), on the same machine and payload size, so
//! Chorus's figures can be read as a ratio of it.
//!
//! `in_flight` producer tasks each send one record at a time to a fresh topic and wait for its
//! delivery report (the durable ack); one consumer (`read_committed`, assigned every partition from
//! the start) reads them back. Recorded: acknowledged sends per second, ack latency (send → delivery
//! report) and round trip (send → consumed, from the timestamp carried in the record).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::summary;

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

pub(crate) async fn run(
    bootstrap: &str,
    partitions: i32,
    in_flight: usize,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<Value> {
    let topic = format!("bench-raw-{}-{}", std::process::id(), micros_now());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    for outcome in admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await?
    {
        outcome.map_err(|(name, error)| anyhow::anyhow!("creating {name}: {error}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("compression.type", "none")
        .create()?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    // assigned, not subscribed: it reads from the start without waiting for a group to form
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(&topic, partition, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let ack = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let round_trip = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let reader = {
        let round_trip = round_trip.clone();
        tokio::spawn(async move {
            loop {
                let Ok(message) = consumer.recv().await else {
                    continue;
                };
                if let Some(bytes) = message.payload().and_then(|payload| payload.get(..8)) {
                    let sent = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
                    let _ = round_trip
                        .lock()
                        .record(micros_now().saturating_sub(sent).max(1));
                }
            }
        })
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(in_flight);
    for task in 0..in_flight {
        let producer = producer.clone();
        let topic = topic.clone();
        let ack = ack.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{task}");
            let mut acked = 0u64;
            while Instant::now() < until {
                let mut value = micros_now().to_le_bytes().to_vec();
                value.resize(payload.max(8), b'x');
                let sent = Instant::now();
                let record = FutureRecord::to(&topic).key(&key).payload(&value);
                if producer.send(record, Duration::from_secs(30)).await.is_ok() {
                    acked += 1;
                    let _ = ack.lock().record(sent.elapsed().as_micros().max(1) as u64);
                }
            }
            acked
        }));
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await.context("producer task")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // let the reader drain what is still in flight
    tokio::time::sleep(Duration::from_secs(1)).await;
    reader.abort();
    let ack = ack.lock();
    let round_trip = round_trip.lock();
    Ok(json!({
        "scenario": "raw-kafka",
        "in_flight": in_flight,
        "payload_bytes": payload,
        "partitions": partitions,
        "seconds": elapsed,
        "acked": acked,
        "acked_per_second": acked as f64 / elapsed,
        "ack_latency": summary(&ack),
        "round_trip_latency": summary(&round_trip),
    }))
}
