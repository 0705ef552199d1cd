//! The raw baselines: what the log under Chorus gives a plain client on the same machine and
//! payload size, so Chorus's figures read as a ratio of it.
//!
//! - **Kafka**: a plain rdkafka producer with the settings Chorus's ingest uses (idempotent,
//!   `acks=all`, `linger.ms=2`) on a fresh topic, and one `read_committed` consumer assigned every
//!   partition from the start.
//! - **Embedded**: Chorus's own embedded log opened directly (fsynced group commits, the same
//!   partition count as `chorus serve`), appended to and read back through its consumer.
//!
//! `in_flight` producer tasks each send one record at a time and wait for it to be durable (the
//! ack). The reader measures the round trip (send → consumed) from the send time carried in the
//! first eight bytes of each record.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chorus_log::{EventLog, NewRecord, PollEvent, StartFrom};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::report::{self, micros_histogram};

/// What a raw baseline measured.
pub struct Outcome {
    pub acked_per_second: f64,
    pub ack_micros: Histogram<u64>,
    pub round_trip_micros: Histogram<u64>,
    pub json: Value,
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// A record of `payload` bytes starting with the current wall-clock time.
fn stamped(payload: usize) -> Vec<u8> {
    let mut value = wall_micros().to_le_bytes().to_vec();
    value.resize(payload.max(8), b'x');
    value
}

/// Records the round trip of a record made by [`stamped`].
fn record_round_trip(histogram: &Mutex<Histogram<u64>>, value: &[u8]) {
    if let Some(bytes) = value.get(..8) {
        let sent = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        histogram
            .lock()
            .saturating_record(wall_micros().saturating_sub(sent).max(1));
    }
}

/// Runs `in_flight` closed-loop senders (or, with `rate`, sends at that many per second whatever
/// the acks do) for `seconds`; `send` makes one record durable.
#[allow(clippy::too_many_arguments)]
async fn drive<F, Fut>(
    name: &str,
    in_flight: usize,
    rate: Option<f64>,
    seconds: u64,
    payload: usize,
    round_trip: Arc<Mutex<Histogram<u64>>>,
    reader: tokio::task::JoinHandle<()>,
    send: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(usize, Vec<u8>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    // warm-up: one record through, unrecorded, so the reader's start (connecting, fetching
    // offsets) is not counted as the round trip of the first records
    send(0, stamped(payload)).await?;
    let ready_until = Instant::now() + Duration::from_secs(30);
    while round_trip.lock().is_empty() {
        anyhow::ensure!(
            Instant::now() < ready_until,
            "{name}: the reader saw nothing within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    round_trip.lock().reset();
    let progress = report::progress(name, None);
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(in_flight);
    if let Some(rate) = rate {
        // open loop: one task per send, started on schedule; latency counts from the schedule
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sends = tokio::task::JoinSet::new();
        let mut number = 0usize;
        while Instant::now() < until {
            let scheduled = ticker.tick().await.into_std();
            let (send, progress) = (send.clone(), progress.clone());
            number += 1;
            let key = number % in_flight.max(1);
            sends.spawn(async move {
                let outcome = send(key, stamped(payload)).await;
                progress.inc(1);
                outcome.map(|()| scheduled.elapsed())
            });
        }
        let mut ack = micros_histogram();
        let mut errors = 0u64;
        while let Some(outcome) = sends.join_next().await {
            match outcome.context("send task")? {
                Ok(latency) => ack.saturating_record(latency.as_micros().max(1) as u64),
                Err(_) => errors += 1,
            }
        }
        tasks.push(tokio::spawn(async move { (ack, errors) }));
    }
    for task in 0..if rate.is_some() { 0 } else { in_flight } {
        let (send, progress) = (send.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut ack = micros_histogram();
            let mut errors = 0u64;
            while Instant::now() < until {
                let sent = Instant::now();
                match send(task, stamped(payload)).await {
                    Ok(()) => {
                        ack.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                        progress.inc(1);
                    }
                    Err(_) => errors += 1,
                }
            }
            (ack, errors)
        }));
    }
    let mut ack = micros_histogram();
    let mut errors = 0;
    for task in tasks {
        let (histogram, failed) = task.await.context("sender task")?;
        ack.add(&histogram)?;
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // the reader gets until every acked record is read (or 10 s) before it stops
    let read_until = Instant::now() + Duration::from_secs(10);
    while round_trip.lock().len() < ack.len() && Instant::now() < read_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    progress.finish_and_clear();
    let round_trip = round_trip.lock().clone();
    let acked_per_second = ack.len() as f64 / elapsed;
    let json = json!({
        "baseline": name, "in_flight": rate.is_none().then_some(in_flight), "rate": rate, "payload_bytes": payload, "seconds": elapsed,
        "acked": ack.len(), "acked_per_second": acked_per_second, "errors": errors,
        "ack_latency": report::summary(&ack), "round_trip_latency": report::summary(&round_trip),
    });
    Ok(Outcome {
        acked_per_second,
        ack_micros: ack,
        round_trip_micros: round_trip,
        json,
    })
}

/// The raw Kafka baseline on `bootstrap`.
pub async fn kafka(
    bootstrap: &str,
    partitions: i32,
    in_flight: usize,
    rate: Option<f64>,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<Outcome> {
    let topic = format!("bench-raw-{}-{}", std::process::id(), wall_micros());
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
    let round_trip = Arc::new(Mutex::new(micros_histogram()));
    let reader = {
        let round_trip = round_trip.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(message) = consumer.recv().await {
                    record_round_trip(&round_trip, message.payload().unwrap_or_default());
                }
            }
        })
    };
    let topic = Arc::new(topic);
    let mut outcome = drive(
        "raw kafka",
        in_flight,
        rate,
        seconds,
        payload,
        round_trip,
        reader,
        move |task, value| {
            let (producer, topic) = (producer.clone(), topic.clone());
            async move {
                let key = format!("k{task}");
                let record = FutureRecord::to(&topic).key(&key).payload(&value);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(error, _)| anyhow::anyhow!(error))?;
                Ok(())
            }
        },
    )
    .await?;
    outcome.json["partitions"] = json!(partitions);
    Ok(outcome)
}

/// The raw embedded-log baseline, on a fresh log in a temporary directory.
pub async fn embedded(
    partitions: u32,
    in_flight: usize,
    rate: Option<f64>,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let mut config = chorus_log::embedded::EmbeddedLogConfig::new(dir.path());
    config.partitions = partitions;
    let log: Arc<dyn EventLog> = chorus_log::embedded::EmbeddedLog::open(config)?;
    let topic = "raw";
    log.ensure_topic(topic).await?;
    let mut consumer = log
        .consumer("raw-reader", topic, StartFrom::Earliest)
        .await?;
    let round_trip = Arc::new(Mutex::new(micros_histogram()));
    let reader = {
        let round_trip = round_trip.clone();
        tokio::spawn(async move {
            while let Ok(event) = consumer.poll(1024, Duration::from_millis(100)).await {
                if let PollEvent::Records(records) = event {
                    for record in records {
                        record_round_trip(&round_trip, &record.value);
                    }
                }
            }
        })
    };
    let mut outcome = drive(
        "raw embedded log",
        in_flight,
        rate,
        seconds,
        payload,
        round_trip,
        reader,
        move |task, value| {
            let log = log.clone();
            async move {
                log.append(topic, vec![NewRecord::new(format!("k{task}"), value)])
                    .await?;
                Ok(())
            }
        },
    )
    .await?;
    outcome.json["partitions"] = json!(partitions);
    drop(dir);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_record_has_the_payload_size_and_a_round_trip() {
        let value = stamped(100);
        assert_eq!(value.len(), 100);
        let histogram = Mutex::new(micros_histogram());
        record_round_trip(&histogram, &value);
        assert_eq!(histogram.lock().len(), 1);
        assert!(histogram.lock().max() < 60_000_000);
    }
}
