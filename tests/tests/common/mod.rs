//! Helpers the process tests share (`mod common;` in each test file that uses them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chorus_kafka::{KafkaLog, KafkaLogConfig};
use chorus_log::EventLog;

/// The id of the direct conversation of `a` and `b`.
pub fn direct(a: &str, b: &str) -> String {
    if a < b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

/// The sequenced events of `conversations` as the `timeline` topic on `bootstrap` holds them
/// (read_committed), in log order: conversation → [(seq, client message id)].
pub async fn timeline(
    bootstrap: &str,
    topic: &str,
    conversations: &BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, Vec<(u64, Option<String>)>>> {
    let kafka = chorus_core::config::KafkaSection::default();
    let log: Arc<dyn EventLog> = KafkaLog::new(KafkaLogConfig::new(
        bootstrap,
        chorus_core::config::DISTRIBUTED_PARTITIONS,
        kafka.replication_factor,
        kafka.session_timeout_ms,
    ))?;
    let mut found: BTreeMap<String, Vec<(u64, Option<String>)>> = BTreeMap::new();
    for partition in 0..log.partition_count(topic).await? {
        let end = log.end_offset(topic, partition).await?;
        let mut position = 0;
        loop {
            let records = log
                .read_range(topic, partition, position, end, 1000)
                .await?;
            let Some(last) = records.last() else { break };
            position = last.offset + 1;
            for record in records {
                let event = chorus_schemas::decode_timeline(&record.value)?;
                if conversations.contains(&event.conversation)
                    && let Some(seq) = event.seq
                {
                    found
                        .entry(event.conversation.clone())
                        .or_default()
                        .push((seq, event.client_msg_id.clone()));
                }
            }
        }
    }
    Ok(found)
}
