//! Every ClickHouse call goes through a [`Guard`]: a circuit breaker and a timeout, and, while
//! the schema is not in place, the migrations first ([`crate::migrations`]).

use std::future::Future;
use std::time::Duration;

use chorus_core::breaker::{Breaker, BreakerError};
use chorus_store::history::{HistoryError, Unavailability};

use crate::migrations::Schema;

/// Every ClickHouse call goes through a circuit breaker (`chorus_breaker_state{breaker=
/// "clickhouse"}`) and is bounded in time: while ClickHouse fails, calls fail fast with
/// [`HistoryError::Unavailable`] (the API answers 503 `unavailable`; the projector keeps its
/// position and retries with backoff). Only transport failures and timeouts count against the
/// breaker; a query ClickHouse refuses is an answer, not an outage.
///
/// Calls made before the schema is in place first apply it (see [`Schema::ensure`]).
pub(crate) struct Guard {
    /// Opens after consecutive outages, so calls then fail fast.
    pub(crate) breaker: Breaker,
    /// Longest one call may take before it counts as an outage.
    pub(crate) timeout: Duration,
    /// Applied before the first call that finds ClickHouse answering.
    pub(crate) schema: Schema,
}

impl Guard {
    /// Runs `call` once the schema is in place, through the breaker and the timeout.
    pub(crate) async fn run<T>(
        &self,
        call: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, HistoryError> {
        self.schema.ensure(self).await?;
        self.run_unchecked(call).await
    }

    /// The breaker and the timeout, without the schema check.
    pub(crate) async fn run_unchecked<T>(
        &self,
        call: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, HistoryError> {
        let bounded = async {
            match tokio::time::timeout(self.timeout, call).await {
                Err(_) => Err(clickhouse::error::Error::TimedOut),
                Ok(Err(error)) if is_outage(&error) => Err(error),
                Ok(answer) => Ok(answer),
            }
        };
        match self.breaker.call(bounded).await {
            Ok(answer) => answer.map_err(storage),
            Err(BreakerError::Open(name)) => Err(HistoryError::Unavailable(
                format!("{name} circuit open: ClickHouse is failing, calls are paused").into(),
            )),
            Err(BreakerError::Inner(error)) => Err(storage(error)),
        }
    }
}

/// Runs a ClickHouse call through a [`Guard`].
pub(crate) trait Through<T>: Future<Output = clickhouse::error::Result<T>> + Sized {
    fn through(self, guard: &Guard) -> impl Future<Output = Result<T, HistoryError>> {
        guard.run(self)
    }
}

impl<T, F: Future<Output = clickhouse::error::Result<T>>> Through<T> for F {}

fn is_outage(error: &clickhouse::error::Error) -> bool {
    matches!(
        error,
        clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut
    )
}

fn storage(error: clickhouse::error::Error) -> HistoryError {
    if is_outage(&error) {
        HistoryError::Unavailable(Unavailability::caused_by(error))
    } else {
        HistoryError::Storage(Box::new(error))
    }
}
