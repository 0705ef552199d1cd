//! Chorus's metrics, typed: every metric has one field here with its written name, and call
//! sites use the field, never a string. Exposed at `GET /metrics` in Prometheus text format.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    /// The registry `/metrics` renders.
    registry: Registry,
    /// The full name of every metric registered (`chorus_…`) with its label names, whether or
    /// not it has a sample yet.
    catalogue: std::collections::BTreeMap<String, Vec<String>>,
    /// Open WebSocket sessions on this node.
    pub connections: IntGauge,
    /// Events accepted at the edge and appended to `ingress`, by kind.
    pub events_in: IntCounterVec,
    /// Events the sequencer appended to `timeline`, by kind.
    pub events_sequenced: IntCounter,
    /// Acks sent to senders (retries included).
    pub acks: IntCounter,
    /// Frames handed to local sessions (events, typing, read marks).
    pub deliveries: IntCounter,
    /// Requests or events refused, by reason (the error code, or `slow_consumer`, …).
    pub rejections: IntCounterVec,
    /// Records written to the dead-letter topic, by reason.
    pub dead_letters: IntCounterVec,
    /// Records between a consumer's position and the end of its partition.
    pub consumer_lag: IntGaugeVec,
    /// Next offset each projection will apply, per partition.
    pub projector_position: IntGaugeVec,
    /// Circuit breaker state per breaker: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// Circuit breaker state changes, by breaker and new state.
    pub breaker_transitions: IntCounterVec,
    /// Deliveries and acks sent over the broadcast path because presence or the node bus was
    /// unavailable, by kind (`targeted` to a known node, `broadcast` to every node).
    pub degraded_deliveries: IntCounterVec,
    /// Times an ingest node registered its sessions again because presence had lost them.
    pub presence_reregistrations: IntCounter,
    /// Timeline frames a node did not hand to a session, by reason: `stale_owner` (sent by a
    /// router whose ownership of the partition had ended), `already_sent` (a seq at or below
    /// the one the connection already got for the conversation).
    pub deliveries_dropped: IntCounterVec,
    /// The ownership epoch of each `timeline` partition this router owns (absent: not owned).
    pub router_partition_epoch: IntGaugeVec,
    /// Partitions a router recovered, by where the fold started (`snapshot`, `start`).
    pub router_recoveries: IntCounterVec,
    /// Snapshots a recovery found and could not use, by reason (`corrupt`, `beyond_end`,
    /// `mismatch`, `unreadable`); each made the fold start earlier.
    pub router_snapshot_fallbacks: IntCounterVec,
    /// Sequencer snapshots a router wrote, by outcome (`written`, `failed`).
    pub router_snapshots: IntCounterVec,
    /// Events of another region's mirrored timeline a router decided, by source region and
    /// outcome (`applied`, `duplicate`, `held`, `foreign`) (docs/MULTI_REGION.md).
    pub region_mirror_events: IntCounterVec,
    /// Mirrored events a router holds because an earlier seq of their conversation has not
    /// arrived (a hole waiting for the mirror), by source region.
    pub region_mirror_held: IntGaugeVec,
    /// Events a router forwarded to their conversation's home region, by home.
    pub region_forwarded: IntCounterVec,
    /// Records the region relay copied from a mirrored topic into `ingress`, by source topic.
    pub region_relayed: IntCounterVec,
    /// Calls of a business hook, by hook (`before_send`) and outcome (`allow`, `refuse`,
    /// `replace`, `failed`: no usable answer in time, `open`: not called, its breaker open).
    pub hook_calls: IntCounterVec,
    /// Messages the configured policy decided because a hook could not, by hook and policy
    /// (`allow`, `refuse`).
    pub hook_policy_applied: IntCounterVec,
    /// Push notifications routers wrote to `notifications`, by outcome (`appended`, `failed`).
    pub notifications: IntCounterVec,
    /// Notifications the push role handed over, by outcome (`delivered`: the webhook accepted
    /// them, `retried`: a failed call tried again, `dead_lettered`: given up on).
    pub push_deliveries: IntCounterVec,
    /// Attachment operations, by operation (`request`, `upload`, `download`, `forward`) and
    /// outcome (`ok`, `refused`: the client's error, `failed`: the store's).
    pub attachment_operations: IntCounterVec,
    /// Open TCP connections of the HTTP listener (HTTP and upgraded WebSocket together).
    pub http_connections_open: IntGauge,
    /// Connections refused at `http.max_open_connections` (answered 503 and closed).
    pub http_connections_rejected: IntCounter,
    /// Idle connections closed at `http.max_open_connections` to make room for a new one.
    pub http_connections_evicted: IntCounter,
    /// Connections closed because a client was too slow to send a request, by phase
    /// (`header`: its line and headers, `body`: its body).
    pub http_timeouts: IntCounterVec,
    /// Failed authentications (a bad credential was presented), by kind (`token`, `api_key`).
    pub auth_failures: IntCounterVec,
    /// Authentication attempts refused because their source address failed too often, by kind.
    pub auth_rate_limited: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("chorus".into()), None).expect("a fixed prefix is valid");
        let connections = IntGauge::new("connections", "open websocket sessions").expect("valid");
        let events_in = IntCounterVec::new(
            Opts::new("events_in_total", "events appended to ingress, by kind"),
            &["kind"],
        )
        .expect("valid");
        let events_sequenced =
            IntCounter::new("events_sequenced_total", "events appended to timeline")
                .expect("valid");
        let acks = IntCounter::new("acks_total", "acks sent to senders").expect("valid");
        let deliveries =
            IntCounter::new("deliveries_total", "frames handed to local sessions").expect("valid");
        let rejections = IntCounterVec::new(
            Opts::new("rejections_total", "refused requests and events, by reason"),
            &["reason"],
        )
        .expect("valid");
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "dead_letters_total",
                "records written to the dead-letter topic",
            ),
            &["reason"],
        )
        .expect("valid");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag",
                "records between position and end of partition",
            ),
            &["consumer", "partition"],
        )
        .expect("valid");
        let projector_position = IntGaugeVec::new(
            Opts::new("projector_position", "next timeline offset to apply"),
            &["projection", "partition"],
        )
        .expect("valid");
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "breaker_state",
                "circuit breaker state: 0 closed, 1 half-open, 2 open",
            ),
            &["breaker"],
        )
        .expect("valid");
        let breaker_transitions = IntCounterVec::new(
            Opts::new("breaker_transitions_total", "circuit breaker state changes"),
            &["breaker", "state"],
        )
        .expect("valid");
        let degraded_deliveries = IntCounterVec::new(
            Opts::new(
                "degraded_deliveries_total",
                "deliveries sent over the broadcast path while presence or the bus was down",
            ),
            &["kind"],
        )
        .expect("valid");
        let presence_reregistrations = IntCounter::new(
            "presence_reregistrations_total",
            "times this node registered its sessions again after presence lost them",
        )
        .expect("valid");
        let deliveries_dropped = IntCounterVec::new(
            Opts::new(
                "deliveries_dropped_total",
                "timeline frames not handed to a session: stale owner or already sent",
            ),
            &["reason"],
        )
        .expect("valid");
        let router_partition_epoch = IntGaugeVec::new(
            Opts::new(
                "router_partition_epoch",
                "ownership epoch of each timeline partition this router owns",
            ),
            &["partition"],
        )
        .expect("valid");
        let router_recoveries = IntCounterVec::new(
            Opts::new(
                "router_recoveries_total",
                "partitions recovered, by where the fold started: snapshot or start",
            ),
            &["from"],
        )
        .expect("valid");
        let region_mirror_events = IntCounterVec::new(
            Opts::new(
                "region_mirror_events_total",
                "events of a peer region's mirrored timeline, by source and outcome",
            ),
            &["source", "outcome"],
        )
        .expect("valid");
        let region_mirror_held = IntGaugeVec::new(
            Opts::new(
                "region_mirror_held",
                "mirrored events held until an earlier seq of their conversation arrives",
            ),
            &["source"],
        )
        .expect("valid");
        let region_forwarded = IntCounterVec::new(
            Opts::new(
                "region_forwarded_total",
                "events forwarded to their conversation's home region, by home",
            ),
            &["home"],
        )
        .expect("valid");
        let region_relayed = IntCounterVec::new(
            Opts::new(
                "region_relayed_total",
                "records copied from a mirrored topic into ingress, by source topic",
            ),
            &["topic"],
        )
        .expect("valid");
        let hook_calls = IntCounterVec::new(
            Opts::new(
                "hook_calls_total",
                "calls of a business hook, by hook and outcome",
            ),
            &["hook", "outcome"],
        )
        .expect("valid");
        let attachment_operations = IntCounterVec::new(
            Opts::new(
                "attachment_operations_total",
                "attachment operations, by operation and outcome",
            ),
            &["operation", "outcome"],
        )
        .expect("valid");
        let hook_policy_applied = IntCounterVec::new(
            Opts::new(
                "hook_policy_applied_total",
                "messages a hook's policy decided because the hook could not, by hook and policy",
            ),
            &["hook", "policy"],
        )
        .expect("valid");
        let notifications = IntCounterVec::new(
            Opts::new(
                "notifications_total",
                "push notifications written for offline members, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid");
        let push_deliveries = IntCounterVec::new(
            Opts::new(
                "push_deliveries_total",
                "notifications the push role handed to the webhook, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid");
        let router_snapshot_fallbacks = IntCounterVec::new(
            Opts::new(
                "router_snapshot_fallbacks_total",
                "snapshots found at recovery and not used, by reason",
            ),
            &["reason"],
        )
        .expect("valid");
        let router_snapshots = IntCounterVec::new(
            Opts::new(
                "router_snapshots_total",
                "sequencer snapshots written, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid");
        let http_connections_open = IntGauge::new(
            "http_connections_open",
            "open tcp connections of the http listener, websocket included",
        )
        .expect("valid");
        let http_connections_rejected = IntCounter::new(
            "http_connections_rejected_total",
            "connections refused at http.max_open_connections",
        )
        .expect("valid");
        let http_connections_evicted = IntCounter::new(
            "http_connections_evicted_total",
            "idle connections closed at http.max_open_connections to make room",
        )
        .expect("valid");
        let http_timeouts = IntCounterVec::new(
            Opts::new(
                "http_timeouts_total",
                "connections closed because the client was too slow to send a request",
            ),
            &["phase"],
        )
        .expect("valid");
        let auth_failures = IntCounterVec::new(
            Opts::new("auth_failures_total", "failed authentications, by kind"),
            &["kind"],
        )
        .expect("valid");
        let auth_rate_limited = IntCounterVec::new(
            Opts::new(
                "auth_rate_limited_total",
                "authentication attempts refused after too many failures from their address",
            ),
            &["kind"],
        )
        .expect("valid");
        let mut catalogue = std::collections::BTreeMap::new();
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events_in.clone()),
            Box::new(events_sequenced.clone()),
            Box::new(acks.clone()),
            Box::new(deliveries.clone()),
            Box::new(rejections.clone()),
            Box::new(dead_letters.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(projector_position.clone()),
            Box::new(breaker_state.clone()),
            Box::new(breaker_transitions.clone()),
            Box::new(degraded_deliveries.clone()),
            Box::new(presence_reregistrations.clone()),
            Box::new(deliveries_dropped.clone()),
            Box::new(router_partition_epoch.clone()),
            Box::new(router_recoveries.clone()),
            Box::new(router_snapshot_fallbacks.clone()),
            Box::new(router_snapshots.clone()),
            Box::new(region_mirror_events.clone()),
            Box::new(region_mirror_held.clone()),
            Box::new(region_forwarded.clone()),
            Box::new(region_relayed.clone()),
            Box::new(hook_calls.clone()),
            Box::new(hook_policy_applied.clone()),
            Box::new(notifications.clone()),
            Box::new(push_deliveries.clone()),
            Box::new(attachment_operations.clone()),
            Box::new(http_connections_open.clone()),
            Box::new(http_connections_rejected.clone()),
            Box::new(http_connections_evicted.clone()),
            Box::new(http_timeouts.clone()),
            Box::new(auth_failures.clone()),
            Box::new(auth_rate_limited.clone()),
        ];
        for collector in collectors {
            catalogue.extend(collector.desc().iter().map(|desc| {
                (
                    format!("chorus_{}", desc.fq_name),
                    desc.variable_labels.clone(),
                )
            }));
            registry.register(collector).expect("names are unique");
        }
        Metrics {
            registry,
            catalogue,
            connections,
            events_in,
            events_sequenced,
            acks,
            deliveries,
            rejections,
            dead_letters,
            consumer_lag,
            projector_position,
            breaker_state,
            breaker_transitions,
            degraded_deliveries,
            presence_reregistrations,
            deliveries_dropped,
            router_partition_epoch,
            router_recoveries,
            router_snapshot_fallbacks,
            router_snapshots,
            region_mirror_events,
            region_mirror_held,
            region_forwarded,
            region_relayed,
            hook_calls,
            hook_policy_applied,
            notifications,
            push_deliveries,
            attachment_operations,
            http_connections_open,
            http_connections_rejected,
            http_connections_evicted,
            http_timeouts,
            auth_failures,
            auth_rate_limited,
        }
    }

    /// Every metric's full name (`chorus_…`) and label names, sampled or not (a labelled metric
    /// shows in `/metrics` only once it has a sample): what dashboards may query.
    pub fn catalogue(&self) -> &std::collections::BTreeMap<String, Vec<String>> {
        &self.catalogue
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    pub fn reject(&self, reason: &str) {
        self.rejections.with_label_values(&[reason]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of `text` that start with `prefix` and go on with `[a-z_]`.
    fn words_starting(text: &str, prefix: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let word: String = rest[at..]
                .chars()
                .take_while(|character| character.is_ascii_lowercase() || *character == '_')
                .collect();
            rest = &rest[at + word.len().max(1)..];
            found.push(word);
        }
        found
    }

    /// The label names an expression groups by (`by (a, b)`).
    fn grouping_labels(expr: &str) -> Vec<String> {
        let mut labels = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("by (") {
            let inside = &rest[at + 4..];
            let end = inside.find(')').unwrap_or(inside.len());
            labels.extend(
                inside[..end]
                    .split(',')
                    .map(|label| label.trim().to_owned())
                    .filter(|label| !label.is_empty()),
            );
            rest = &inside[end..];
        }
        labels
    }

    #[test]
    fn every_metric_and_label_the_grafana_dashboard_queries_exists() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana/chorus-dashboard.json"))
                .expect("the dashboard is JSON");
        let catalogue = Metrics::new().catalogue().clone();
        let mut queried = std::collections::BTreeSet::new();
        let panels = dashboard["panels"].as_array().expect("panels");
        for panel in panels.iter().filter(|panel| panel["type"] != "row") {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{} queries nothing", panel["title"]);
            for target in targets {
                let expr = target["expr"].as_str().expect("expr");
                let metrics = words_starting(expr, "chorus_");
                assert!(!metrics.is_empty(), "{expr}: no chorus metric");
                for metric in &metrics {
                    assert!(catalogue.contains_key(metric), "{expr}: no metric {metric}");
                    queried.insert(metric.clone());
                }
                let legend = target["legendFormat"].as_str().unwrap_or_default();
                let legend_labels: Vec<String> = legend
                    .split("{{")
                    .skip(1)
                    .filter_map(|part| part.split_once("}}").map(|(label, _)| label.to_owned()))
                    .collect();
                for label in grouping_labels(expr).into_iter().chain(legend_labels) {
                    // Prometheus itself labels every scraped series with its target
                    if ["instance", "job"].contains(&label.as_str()) {
                        continue;
                    }
                    assert!(
                        metrics
                            .iter()
                            .any(|metric| catalogue[metric].contains(&label)),
                        "{expr}: none of {metrics:?} has the label {label}"
                    );
                }
            }
        }
        // and the dashboard shows every metric there is
        let unshown: Vec<&String> = catalogue
            .keys()
            .filter(|name| !queried.contains(*name))
            .collect();
        assert!(unshown.is_empty(), "metrics no panel shows: {unshown:?}");
    }
}
