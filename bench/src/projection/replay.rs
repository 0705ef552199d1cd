//! The replay scenario: `chorus replay` of every projection on the data directory, timed, and
//! its report.

use std::io::IsTerminal;
use std::time::Instant;

use chorus_core::config::ChorusConfig;
use chorus_projector::ProjectorSettings;
use chorus_projector::replay::{Projection, replay};
use serde_json::json;

use super::process_cpu_seconds;
use super::timeline::Timeline;
use crate::report::{Report, Row};

/// `chorus replay` of every projection on the data directory, timed.
pub(super) async fn replay_report(
    config: &ChorusConfig,
    timeline: &Timeline,
    raw_rate: f64,
) -> anyhow::Result<Report> {
    let cpu_before = process_cpu_seconds()?;
    let started = Instant::now();
    let replayed = replay(
        &ProjectorSettings::from_config(config),
        Projection::All,
        std::io::stderr().is_terminal(),
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds()? - cpu_before;
    let mut rows = vec![Row::new(
        "every projection",
        timeline.events as f64 / seconds,
        "events/s",
    )];
    let mut projections = serde_json::Map::new();
    for projection in &replayed {
        anyhow::ensure!(
            projection.records == timeline.events,
            "replay of {} applied {} records of {}",
            projection.projection,
            projection.records,
            timeline.events
        );
        projections.insert(
            projection.projection.clone(),
            json!({"records": projection.records, "seconds": projection.seconds,
                   "events_per_second": projection.records as f64 / projection.seconds,
                   "messages_per_second": timeline.messages as f64 / projection.seconds}),
        );
        let row = Row::new(
            projection.projection.clone(),
            timeline.messages as f64 / projection.seconds,
            "msg/s",
        );
        rows.push(match projection.projection.as_str() {
            "search" => row.against(raw_rate),
            _ => row,
        });
    }
    Ok(Report {
        scenario: "replay".into(),
        json: json!({
            "events": timeline.events, "messages": timeline.messages, "seconds": seconds,
            "events_per_second": timeline.events as f64 / seconds,
            "cpu_seconds": cpu_seconds, "cores_busy": cpu_seconds / seconds,
            "projections": projections,
            "batch_records": config.projector.batch_records,
            "entry_point": "chorus_projector::replay::replay (what `chorus replay` runs on a stopped node)",
            "same_code_as_projector": "the same sinks (HistorySink, SearchSink) but not the projector's loop: chorus_projector::rebuild reads each partition with read_range and applies every read batch at once (a Tantivy commit per batch of batch_records), projections one after the other",
        }),
        rows,
    })
}
