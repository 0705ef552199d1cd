//! A circuit breaker for calls to outside services (Redis, ClickHouse), with its state in the
//! metrics.
//!
//! After `failures` consecutive failures the breaker opens: calls fail at once with
//! [`BreakerError::Open`] for `open_for`, then one trial call is let through (half-open); a success
//! closes it. Callers degrade while it is open (for example, delivery by broadcast instead of
//! by presence lookup) and never lose an acknowledged event. The `failsafe` crate does the work
//! behind this small type, so it can be swapped for another implementation in one place.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use failsafe::futures::CircuitBreaker as _;
use failsafe::{Config, StateMachine, backoff, failure_policy};

use crate::metrics::Metrics;

/// Numeric states exported as `chorus_breaker_state{breaker}`.
pub const STATE_CLOSED: i64 = 0;
pub const STATE_HALF_OPEN: i64 = 1;
pub const STATE_OPEN: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    #[error("circuit open: {0} is failing, calls are paused")]
    Open(&'static str),
    #[error(transparent)]
    Inner(E),
}

/// Reports state changes to the metrics and the log.
pub struct BreakerInstrument {
    /// The breaker's name, the metric label.
    name: &'static str,
    metrics: Arc<Metrics>,
}

impl BreakerInstrument {
    fn record(&self, state: i64, label: &str) {
        self.metrics
            .breaker_state
            .with_label_values(&[self.name])
            .set(state);
        self.metrics
            .breaker_transitions
            .with_label_values(&[self.name, label])
            .inc();
    }
}

impl failsafe::Instrument for BreakerInstrument {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        tracing::warn!(breaker = self.name, "circuit opened");
        self.record(STATE_OPEN, "open");
    }

    fn on_half_open(&self) {
        tracing::info!(breaker = self.name, "circuit half-open: trying one call");
        self.record(STATE_HALF_OPEN, "half_open");
    }

    fn on_closed(&self) {
        tracing::info!(breaker = self.name, "circuit closed");
        self.record(STATE_CLOSED, "closed");
    }
}

type Machine =
    StateMachine<failure_policy::ConsecutiveFailures<backoff::Constant>, BreakerInstrument>;

pub struct Breaker {
    /// The breaker's name, in errors and metrics.
    name: &'static str,
    /// failsafe's state machine.
    machine: Machine,
}

impl Breaker {
    pub fn new(
        name: &'static str,
        failures: u32,
        open_for: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics
            .breaker_state
            .with_label_values(&[name])
            .set(STATE_CLOSED);
        let machine = Config::new()
            .failure_policy(failure_policy::consecutive_failures(
                failures,
                backoff::constant(open_for),
            ))
            .instrument(BreakerInstrument { name, metrics })
            .build();
        Breaker { name, machine }
    }

    /// Runs `call` unless the circuit is open; its outcome feeds the breaker.
    pub async fn call<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BreakerError<E>> {
        match self.machine.call(call).await {
            Ok(value) => Ok(value),
            Err(failsafe::Error::Rejected) => Err(BreakerError::Open(self.name)),
            Err(failsafe::Error::Inner(error)) => Err(BreakerError::Inner(error)),
        }
    }

    /// Whether a call would be let through now.
    pub fn is_closed(&self) -> bool {
        self.machine.is_call_permitted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_closes_after_a_success() {
        let metrics = Arc::new(Metrics::new());
        let breaker = Breaker::new("test", 2, Duration::from_millis(50), metrics.clone());
        for _ in 0..2 {
            let failed: Result<(), _> = breaker.call(async { Err::<(), _>("down") }).await;
            assert!(matches!(failed, Err(BreakerError::Inner("down"))));
        }
        let rejected = breaker.call(async { Ok::<_, &str>(()) }).await;
        assert!(
            matches!(rejected, Err(BreakerError::Open("test"))),
            "open after two failures"
        );
        assert!(
            metrics
                .render()
                .contains("chorus_breaker_state{breaker=\"test\"} 2")
        );
        tokio::time::sleep(Duration::from_millis(60)).await; // the open period itself is the condition
        assert!(
            breaker.call(async { Ok::<_, &str>(()) }).await.is_ok(),
            "half-open trial passes"
        );
        assert!(
            metrics
                .render()
                .contains("chorus_breaker_state{breaker=\"test\"} 0")
        );
        let text = metrics.render();
        assert!(
            text.contains("chorus_breaker_transitions_total{breaker=\"test\",state=\"open\"} 1"),
            "{text}"
        );
    }
}
