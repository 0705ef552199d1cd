//! What one size of `scale` reports, on one server: the figures of a measurement (`Summary`), and
//! the table rows, each Chorus figure beside Centrifugo's when it ran.

use super::*;
use crate::report::Row;

/// The figures of one size on one server, and their JSON.
pub(super) struct Summary {
    /// Resident bytes the nodes clients connect to grew per session (Chorus's ingest nodes,
    /// Centrifugo's nodes).
    node_bytes: f64,
    /// The same over every server process (Chorus's routers too; Centrifugo has only its nodes).
    server_bytes: f64,
    /// Redis's `used_memory` grown per session.
    redis_bytes: Option<f64>,
    /// The client processes' resident bytes per session (not the server's: counted apart).
    client_bytes: f64,
    connect_seconds: f64,
    /// CPU-seconds per second of the server processes with every session open and no traffic.
    idle_cpu: f64,
    deliveries_per_cpu_second: f64,
    deliveries_per_second: f64,
    latency: Histogram<u64>,
    machine_busy: f64,
    /// The machine's load average over a minute, when the size started and when it ended.
    load: (Option<f64>, Option<f64>),
    pub json: Value,
}

impl Summary {
    /// The figures of `measured`; fails, with them, when a delivery or an ack is missing or a send
    /// was refused. `extra` joins the JSON (what the server ran).
    pub fn of(
        measured: Measured,
        args: &Args,
        size: &Size,
        load: (Option<f64>, Option<f64>),
        extra: Value,
    ) -> anyhow::Result<Summary> {
        let total = size.layout.total;
        let per_session =
            |before: u64, after: u64| after.saturating_sub(before) as f64 / total as f64;
        let node_bytes = per_session(measured.before.nodes, measured.after.nodes);
        let server_bytes = per_session(measured.before.all, measured.after.all);
        let redis_bytes = match (measured.before.redis, measured.after.redis) {
            (Some(before), Some(after)) => Some(per_session(before, after)),
            _ => None,
        };
        let client_bytes = measured.client_bytes as f64 / total as f64;
        let expected = size.expected();
        let counts = measured.counts;
        let missing = expected.saturating_sub(counts.delivered);
        let unacked = expected.saturating_sub(counts.acked);
        let deliveries_per_cpu_second = counts.delivered as f64 / measured.cpu_seconds.max(0.01);
        let deliveries_per_second = counts.delivered as f64 / measured.window_seconds.max(0.001);
        let mut json = json!({
            "sessions": total, "nodes": size.layout.nodes, "client_processes": size.clients,
            "source_addresses": args.source_addresses, "opening_at_once": args.opening,
            "connect_seconds": measured.connect_seconds,
            "idle_server_cpu_seconds_per_second": measured.idle_cpu,
            "node_rss_before_bytes": measured.before.nodes,
            "node_rss_after_bytes": measured.after.nodes,
            "server_rss_before_bytes": measured.before.all,
            "server_rss_after_bytes": measured.after.all,
            "redis_used_memory_before_bytes": measured.before.redis,
            "redis_used_memory_after_bytes": measured.after.redis,
            "node_bytes_per_session": node_bytes,
            "server_bytes_per_session": server_bytes,
            "redis_bytes_per_session": redis_bytes,
            "client_bytes_per_session": client_bytes,
            "senders": size.senders, "messages_per_sender": size.messages, "rate": args.rate,
            "seconds": args.seconds, "payload_bytes": args.payload,
            "expected_deliveries": expected, "counts": counts.to_json(),
            "missing_deliveries": missing, "missing_acks": unacked,
            "errors": measured.errors,
            "window_seconds": measured.window_seconds,
            "server_cpu_seconds": measured.cpu_seconds,
            "deliveries_per_cpu_second": deliveries_per_cpu_second,
            "deliveries_per_second": deliveries_per_second,
            "delivery_latency": report::summary(&measured.latency),
            "ack_latency": report::summary(&measured.ack_latency),
            "machine_cpu_busy": measured.machine_busy,
            "load_average_1m_start": load.0, "load_average_1m_end": load.1,
        });
        if let (Value::Object(json), Value::Object(extra)) = (&mut json, extra) {
            json.extend(extra);
        }
        anyhow::ensure!(
            missing == 0 && unacked == 0 && measured.errors.is_empty(),
            "{missing} of {expected} deliveries missing, {unacked} acks missing, errors {:?}: \
             {json}",
            measured.errors
        );
        Ok(Summary {
            node_bytes,
            server_bytes,
            redis_bytes,
            client_bytes,
            connect_seconds: measured.connect_seconds,
            idle_cpu: measured.idle_cpu,
            deliveries_per_cpu_second,
            deliveries_per_second,
            latency: measured.latency,
            machine_busy: measured.machine_busy,
            load,
            json,
        })
    }

    /// (metric, figure, unit) of every row; a figure not read is `None`.
    fn figures(&self) -> [(&'static str, Option<f64>, &'static str); 14] {
        [
            ("node bytes/session", Some(self.node_bytes), "B"),
            ("all server bytes/session", Some(self.server_bytes), "B"),
            ("Redis bytes/session", self.redis_bytes, "B"),
            (
                "client processes' bytes/session",
                Some(self.client_bytes),
                "B",
            ),
            ("connect time", Some(self.connect_seconds), "s"),
            (
                "server CPU, sessions idle",
                Some(self.idle_cpu * 100.0),
                "% of a core",
            ),
            (
                "deliveries per server CPU-second",
                Some(self.deliveries_per_cpu_second),
                "/s",
            ),
            (
                "deliveries per second",
                Some(self.deliveries_per_second),
                "/s",
            ),
            (
                "delivery p50",
                Some(report::millis(&self.latency, 0.5)),
                "ms",
            ),
            (
                "delivery p99",
                Some(report::millis(&self.latency, 0.99)),
                "ms",
            ),
            // the run fails before this when one is missing: the row says none was
            ("missing deliveries", Some(0.0), ""),
            // the clients, Kafka, Redis and anything else running, included
            ("machine CPU busy", Some(self.machine_busy * 100.0), "%"),
            ("load average (1 min), start", self.load.0, ""),
            ("load average (1 min), end", self.load.1, ""),
        ]
    }
}

/// The rows of one size: its processes, then each Chorus figure against Centrifugo's when it ran.
pub(super) fn rows(size: &Size, chorus: &Summary, centrifugo: Option<&Summary>) -> Vec<Row> {
    let label = report::figure(size.layout.total as f64);
    let mut rows = vec![
        Row::new(
            format!("{label}: nodes (ingest | Centrifugo)"),
            size.layout.nodes as f64,
            "",
        ),
        Row::new(
            format!("{label}: client processes"),
            size.clients as f64,
            "",
        ),
    ];
    let baseline = centrifugo.map(Summary::figures);
    for (index, (metric, figure, unit)) in chorus.figures().into_iter().enumerate() {
        let Some(figure) = figure else { continue };
        let row = Row::new(format!("{label}: {metric}"), figure, unit);
        rows.push(
            match baseline.as_ref().and_then(|baseline| baseline[index].1) {
                Some(baseline) => row.against(baseline),
                None => row,
            },
        );
    }
    rows
}

/// The machine's load average over the last minute (`/proc/loadavg`), when it can be read.
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_average_is_read() {
        assert!(load_average().is_some_and(|load| load >= 0.0));
    }
}
