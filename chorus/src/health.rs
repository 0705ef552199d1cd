//! What a node says about the services it depends on, in `GET /health` and in the
//! `chorus_dependency_up{dependency}` gauge of `GET /metrics`.
//!
//! Each distributed role declares its dependencies: Kafka is **required** (nothing works without
//! the log; a role started before Kafka answers waits for it with backoff and serves only
//! `/health` and `/metrics` meanwhile), Redis and ClickHouse are **optional** (the role serves in
//! its degraded mode while they are down: broadcast delivery, a projector that holds, 503 on
//! history reads). Optional dependencies are probed every [`PROBE_INTERVAL`] through the
//! adapter's own breaker, so the state shown is never older than that, and probing is what
//! heals a dependency that no traffic touches (ClickHouse's migrations are applied by the first
//! call that finds it answering). Once a role runs, Kafka is probed the same way (a bounded
//! `end_offset` call through the event-log port, see `roles::probe_kafka`): a broker that becomes
//! unreachable later is shown within [`PROBE_INTERVAL`] plus [`KAFKA_PROBE_TIMEOUT`], and the
//! node says `available` again by itself once the broker answers.
//!
//! `/health` answers:
//! - 200 `{"status":"ok", …}`: every dependency is up;
//! - 200 `{"status":"degraded", …}`: an optional dependency is down; the node serves in its
//!   degraded mode, so a load balancer keeps it (taking it out would only move its users to
//!   nodes that are degraded the same way);
//! - 503 `{"status":"starting", …}`: a required dependency was never reached; the node serves
//!   nothing else yet (readiness probes keep traffic away; it is alive and keeps trying);
//! - 503 `{"status":"unavailable", …}`: a required dependency that was up does not answer any
//!   more (`"state":"down"`). The node keeps running and serving its routes, but it cannot
//!   acknowledge, deliver or project anything without the log, so readiness probes should take
//!   it out until the dependency answers again (the next successful probe says `ok`).
//!
//! - 503 `{"status":"draining", …}`: the node is stopping (SIGTERM): it accepts nothing new and
//!   is handing its sessions over (they close with 1012, reconnect now).
//!
//! with `"dependencies": {"<name>": {"state": "up"|"down"|"waiting", "required": bool,
//! "error": "<last failure>"}}`. `chorus serve` has no outside dependency: 200 `ok` until it
//! drains.
//!
//! For orchestrators (the Kubernetes manifests in `deploy/k8s` use them):
//! - `GET /health/ready` answers 200 only while the node can accept and acknowledge: its role's
//!   own routes serve (not only `/health` while it waits for Kafka), every required dependency
//!   answers, and it is not draining; 503 otherwise, with the `/health` body. A degraded node
//!   (Redis or ClickHouse down) is ready: it accepts and acknowledges in its degraded mode.
//! - `GET /health/live` answers 200 whenever the process answers at all, draining included:
//!   nothing a restart would fix is reported there (a node whose task failed exits by itself),
//!   so an outage of a dependency never gets nodes killed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use prometheus::{Encoder, IntGaugeVec, Opts, Registry};
use serde_json::json;

/// How often dependencies are probed (optional ones, and Kafka once the role runs).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a Kafka probe may take before Kafka counts as down: short, so that an unreachable
/// broker is shown soon (librdkafka's own request timeout is longer).
pub const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyState {
    Up,
    /// A dependency that does not answer: the node is degraded (optional) or unavailable
    /// (required, once reached).
    Down,
    /// A required dependency not reached yet: the node is starting.
    Waiting,
}

impl DependencyState {
    fn as_str(self) -> &'static str {
        match self {
            DependencyState::Up => "up",
            DependencyState::Down => "down",
            DependencyState::Waiting => "waiting",
        }
    }
}

struct Dependency {
    required: bool,
    state: DependencyState,
    /// The last failure, while not up.
    error: Option<String>,
}

/// Where a node is in its life, for readiness: [`SERVING`] from when its role's own routes
/// serve until it starts [`DRAINING`].
const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

/// The dependencies of one node and their states.
pub struct Dependencies {
    entries: Mutex<BTreeMap<&'static str, Dependency>>,
    /// [`STARTING`], [`SERVING`] or [`DRAINING`].
    phase: AtomicU8,
    /// Renders `chorus_dependency_up`.
    registry: Registry,
    /// 1 while a dependency answers, 0 otherwise.
    up: IntGaugeVec,
}

impl Default for Dependencies {
    fn default() -> Self {
        let registry =
            Registry::new_custom(Some("chorus".into()), None).expect("a fixed prefix is valid");
        let up = IntGaugeVec::new(
            Opts::new(
                "dependency_up",
                "1 while an outside service this node depends on answers, 0 otherwise",
            ),
            &["dependency"],
        )
        .expect("valid");
        registry
            .register(Box::new(up.clone()))
            .expect("names are unique");
        Dependencies {
            entries: Mutex::new(BTreeMap::new()),
            phase: AtomicU8::new(STARTING),
            registry,
            up,
        }
    }
}

impl Dependencies {
    /// Declares a dependency, not reached yet: `waiting` when required, `down` when optional.
    pub fn declare(&self, name: &'static str, required: bool) {
        let state = match required {
            true => DependencyState::Waiting,
            false => DependencyState::Down,
        };
        self.up.with_label_values(&[name]).set(0);
        self.lock().insert(
            name,
            Dependency {
                required,
                state,
                error: None,
            },
        );
    }

    /// Records a probe's or a connection attempt's outcome; logs changes of state.
    pub fn report(&self, name: &'static str, outcome: Result<(), String>) {
        let mut entries = self.lock();
        let Some(dependency) = entries.get_mut(name) else {
            return;
        };
        let before = dependency.state;
        match outcome {
            Ok(()) => {
                dependency.state = DependencyState::Up;
                dependency.error = None;
                self.up.with_label_values(&[name]).set(1);
                if before != DependencyState::Up {
                    tracing::info!(dependency = name, "dependency up");
                }
            }
            Err(error) => {
                // a required dependency never reached stays `waiting`; once reached, `down`
                if before == DependencyState::Up || !dependency.required {
                    dependency.state = DependencyState::Down;
                }
                self.up.with_label_values(&[name]).set(0);
                if before == DependencyState::Up && dependency.required {
                    tracing::warn!(dependency = name, %error, "required dependency down; unavailable");
                } else if before == DependencyState::Up {
                    tracing::warn!(dependency = name, %error, "dependency down; serving degraded");
                }
                dependency.error = Some(error);
            }
        }
    }

    /// The node's role serves its own routes (it can accept, once its required dependencies
    /// answer).
    pub fn serving(&self) {
        let _ = self
            .phase
            .compare_exchange(STARTING, SERVING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The node is stopping: not ready from now on.
    pub fn draining(&self) {
        self.phase.store(DRAINING, Ordering::Release);
    }

    /// The `/health/ready` answer: (status code, the `/health` body). See the module docs.
    pub fn ready(&self) -> (u16, serde_json::Value) {
        let (code, body) = self.health();
        let serving = self.phase.load(Ordering::Acquire) == SERVING;
        match (code, serving) {
            (200, true) => (200, body),
            (200, false) => {
                let mut body = body;
                body["status"] = json!("starting");
                (503, body)
            }
            _ => (503, body),
        }
    }

    /// The state of `name`, if declared.
    pub fn state(&self, name: &str) -> Option<DependencyState> {
        self.lock().get(name).map(|dependency| dependency.state)
    }

    /// The `/health` answer: (status code, body). See the module docs.
    pub fn health(&self) -> (u16, serde_json::Value) {
        let entries = self.lock();
        let starting = entries
            .values()
            .any(|dependency| dependency.required && dependency.state == DependencyState::Waiting);
        let unavailable = entries
            .values()
            .any(|dependency| dependency.required && dependency.state == DependencyState::Down);
        let degraded = entries
            .values()
            .any(|dependency| dependency.state != DependencyState::Up);
        let draining = self.phase.load(Ordering::Acquire) == DRAINING;
        let (code, status) = match (starting, unavailable, degraded) {
            _ if draining => (503, "draining"),
            (true, _, _) => (503, "starting"),
            (false, true, _) => (503, "unavailable"),
            (false, false, true) => (200, "degraded"),
            (false, false, false) => (200, "ok"),
        };
        let dependencies: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(name, dependency)| {
                let mut entry = json!({
                    "state": dependency.state.as_str(),
                    "required": dependency.required,
                });
                if let Some(error) = &dependency.error {
                    entry["error"] = json!(error);
                }
                ((*name).to_owned(), entry)
            })
            .collect();
        (
            code,
            json!({"status": status, "dependencies": dependencies}),
        )
    }

    /// `chorus_dependency_up` in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Dependency>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_says_starting_degraded_and_ok() {
        let dependencies = Dependencies::default();
        assert_eq!(dependencies.health().0, 200, "nothing declared: ok");
        dependencies.declare("kafka", true);
        dependencies.declare("redis", false);
        let (code, body) = dependencies.health();
        assert_eq!((code, body["status"].as_str()), (503, Some("starting")));
        assert_eq!(body["dependencies"]["kafka"]["state"], "waiting");
        dependencies.report("kafka", Err("refused".into()));
        assert_eq!(dependencies.state("kafka"), Some(DependencyState::Waiting));
        dependencies.report("kafka", Ok(()));
        dependencies.report("redis", Err("connection refused".into()));
        let (code, body) = dependencies.health();
        assert_eq!((code, body["status"].as_str()), (200, Some("degraded")));
        assert_eq!(body["dependencies"]["redis"]["state"], "down");
        assert_eq!(body["dependencies"]["redis"]["error"], "connection refused");
        assert!(
            dependencies
                .render()
                .contains("chorus_dependency_up{dependency=\"redis\"} 0"),
            "{}",
            dependencies.render()
        );
        dependencies.report("redis", Ok(()));
        assert_eq!(
            dependencies.health(),
            (
                200,
                json!({"status": "ok", "dependencies": {
                    "kafka": {"state": "up", "required": true},
                    "redis": {"state": "up", "required": false},
                }})
            )
        );
        assert!(
            dependencies
                .render()
                .contains("chorus_dependency_up{dependency=\"redis\"} 1")
        );
        dependencies.report("kafka", Err("gone".into()));
        assert_eq!(dependencies.state("kafka"), Some(DependencyState::Down));
    }

    #[test]
    fn a_required_dependency_lost_after_start_makes_the_node_unavailable_until_it_answers() {
        let dependencies = Dependencies::default();
        dependencies.declare("kafka", true);
        dependencies.declare("redis", false);
        dependencies.report("kafka", Ok(()));
        dependencies.report("redis", Ok(()));
        assert_eq!(dependencies.health().0, 200);
        dependencies.report("kafka", Err("probe timed out".into()));
        let (code, body) = dependencies.health();
        assert_eq!((code, body["status"].as_str()), (503, Some("unavailable")));
        assert_eq!(body["dependencies"]["kafka"]["state"], "down");
        assert_eq!(body["dependencies"]["kafka"]["error"], "probe timed out");
        assert!(
            dependencies
                .render()
                .contains("chorus_dependency_up{dependency=\"kafka\"} 0"),
            "{}",
            dependencies.render()
        );
        // an optional dependency down as well does not hide that the node is unavailable
        dependencies.report("redis", Err("refused".into()));
        assert_eq!(dependencies.health().1["status"], "unavailable");
        dependencies.report("redis", Ok(()));
        dependencies.report("kafka", Ok(()));
        let (code, body) = dependencies.health();
        assert_eq!((code, body["status"].as_str()), (200, Some("ok")));
        assert!(
            dependencies
                .render()
                .contains("chorus_dependency_up{dependency=\"kafka\"} 1")
        );
    }

    #[test]
    fn ready_only_while_serving_with_every_required_dependency_and_not_draining() {
        let dependencies = Dependencies::default();
        dependencies.declare("kafka", true);
        dependencies.declare("redis", false);
        let ready = || {
            let (code, body) = dependencies.ready();
            (code, body["status"].as_str().unwrap_or_default().to_owned())
        };
        assert_eq!(ready(), (503, "starting".into()), "kafka not reached yet");
        dependencies.report("kafka", Ok(()));
        assert_eq!(
            ready(),
            (503, "starting".into()),
            "kafka answers, but only /health serves until the role's routes do"
        );
        dependencies.serving();
        assert_eq!(
            ready(),
            (200, "degraded".into()),
            "degraded (redis down) still accepts and acknowledges"
        );
        dependencies.report("kafka", Err("probe timed out".into()));
        assert_eq!(ready(), (503, "unavailable".into()));
        dependencies.report("kafka", Ok(()));
        dependencies.report("redis", Ok(()));
        assert_eq!(ready(), (200, "ok".into()));
        dependencies.draining();
        assert_eq!(ready(), (503, "draining".into()));
        assert_eq!(dependencies.health().0, 503, "/health says so too");
        dependencies.serving();
        assert_eq!(ready(), (503, "draining".into()), "a drain is not undone");
    }
}
