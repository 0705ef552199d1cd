//! Failed authentication is rate-limited per source address.
//!
//! Guarantees: once a source address (an IPv4 address, or an IPv6 /64 network, since one host
//! commonly holds a whole /64) has presented `http.auth_failure_burst` bad credentials (a user
//! token that does not verify, a wrong business API key), every further authentication attempt
//! from it is refused with `429 rate_limited` until its budget refills at
//! `http.auth_failures_per_minute` — valid credentials included, so a guesser learns nothing
//! while limited. A missing credential is not an attempt and counts nothing. Every failure is
//! counted in `chorus_auth_failures_total{kind}`, every refusal in
//! `chorus_auth_rate_limited_total{kind}`.
//!
//! Memory is bounded: at most `http.auth_failure_addresses` addresses are remembered. When the
//! table is full, addresses whose budget has refilled are forgotten first; if it is still full,
//! a new address is not remembered (its failures are counted but not limited) rather than
//! letting an attacker with many addresses evict the ones being limited.
//!
//! The serving loop (`core::serve`) puts a [`RequestOrigin`] into every request's extensions;
//! the credential checks (`core::http`, the WebSocket upgrade) pass their check through
//! [`authenticate`]. Why not `governor`: deciding that an address is limited must not spend
//! its budget (a valid credential from a clean address costs nothing), and governor's keyed
//! limiter has no check that leaves the cell untouched.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::HttpSection;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;

/// What kind of credential an attempt presented; the `kind` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A user's JWT.
    Token,
    /// A business system's API key.
    ApiKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Token => "token",
            CredentialKind::ApiKey => "api_key",
        }
    }
}

/// The failure budget of one address: a token bucket that each failure drains by one.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Failures still allowed, as of `updated` (fractional while refilling).
    remaining: f64,
    /// When `remaining` was computed.
    updated: Instant,
}

/// Per-address failure budgets of one node.
pub struct AuthFailureLimiter {
    /// The budgets of addresses that failed recently.
    budgets: Mutex<HashMap<IpAddr, Budget>>,
    /// Budget of a fresh address (`http.auth_failure_burst`).
    burst: f64,
    /// Refill per second (`http.auth_failures_per_minute` / 60).
    refill_per_second: f64,
    /// Most addresses remembered (`http.auth_failure_addresses`).
    max_addresses: usize,
    /// Where failures and refusals are counted.
    metrics: Arc<Metrics>,
}

/// The key an address is limited under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
fn limited_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                ))
            }
        },
    }
}

impl AuthFailureLimiter {
    pub fn new(settings: &HttpSection, metrics: Arc<Metrics>) -> Self {
        AuthFailureLimiter {
            budgets: Mutex::new(HashMap::new()),
            burst: f64::from(settings.auth_failure_burst.max(1)),
            refill_per_second: f64::from(settings.auth_failures_per_minute) / 60.0,
            max_addresses: settings.auth_failure_addresses.max(1),
            metrics,
        }
    }

    /// The budget as of `now`.
    fn refilled(&self, budget: Budget, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(budget.updated).as_secs_f64();
        (budget.remaining + elapsed * self.refill_per_second).min(self.burst)
    }

    /// Whether attempts from `address` are refused now. Spends nothing.
    pub fn is_limited(&self, address: IpAddr) -> bool {
        let now = Instant::now();
        self.budgets
            .lock()
            .get(&limited_key(address))
            .is_some_and(|budget| self.refilled(*budget, now) < 1.0)
    }

    /// Spends one failure of `address`'s budget.
    pub fn record_failure(&self, address: IpAddr, kind: CredentialKind) {
        self.metrics
            .auth_failures
            .with_label_values(&[kind.as_str()])
            .inc();
        let key = limited_key(address);
        let now = Instant::now();
        let mut budgets = self.budgets.lock();
        if !budgets.contains_key(&key) && budgets.len() >= self.max_addresses {
            budgets.retain(|_, budget| self.refilled(*budget, now) < self.burst);
            if budgets.len() >= self.max_addresses {
                tracing::warn!(
                    addresses = budgets.len(),
                    "auth failure table full; not limiting a new address"
                );
                return;
            }
        }
        let budget = budgets.entry(key).or_insert(Budget {
            remaining: self.burst,
            updated: now,
        });
        budget.remaining = (self.refilled(*budget, now) - 1.0).max(0.0);
        budget.updated = now;
    }

    /// How many addresses are remembered.
    pub fn remembered_addresses(&self) -> usize {
        self.budgets.lock().len()
    }
}

/// Where a request came from, and the limiter its credential checks go through. The serving
/// loop inserts one into every request's extensions.
#[derive(Clone)]
pub struct RequestOrigin {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The node's limiter.
    limiter: Arc<AuthFailureLimiter>,
}

impl RequestOrigin {
    pub fn new(peer: SocketAddr, limiter: Arc<AuthFailureLimiter>) -> Self {
        RequestOrigin { peer, limiter }
    }
}

/// Runs a credential check (`attempt`) for a request from `origin`: refused with
/// `429 rate_limited` while the address is limited; an `unauthorized` outcome spends one
/// failure of its budget. Without an origin (a request that did not come through the serving
/// loop, e.g. a filter test) the check just runs.
pub fn authenticate<T>(
    origin: Option<&RequestOrigin>,
    kind: CredentialKind,
    attempt: impl FnOnce() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let Some(origin) = origin else {
        return attempt();
    };
    let address = origin.peer.ip();
    if origin.limiter.is_limited(address) {
        origin
            .limiter
            .metrics
            .auth_rate_limited
            .with_label_values(&[kind.as_str()])
            .inc();
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many failed authentications from this address; retry later",
        ));
    }
    let outcome = attempt();
    if let Err(error) = &outcome
        && error.code == ErrorCode::Unauthorized
    {
        origin.limiter.record_failure(address, kind);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, per_minute: u32, addresses: usize) -> Arc<AuthFailureLimiter> {
        let settings = HttpSection {
            auth_failure_burst: burst,
            auth_failures_per_minute: per_minute,
            auth_failure_addresses: addresses,
            ..HttpSection::default()
        };
        Arc::new(AuthFailureLimiter::new(&settings, Arc::new(Metrics::new())))
    }

    fn origin(limiter: &Arc<AuthFailureLimiter>, address: &str) -> RequestOrigin {
        RequestOrigin::new(
            SocketAddr::new(address.parse().unwrap(), 40000),
            limiter.clone(),
        )
    }

    fn bad() -> Result<(), ApiError> {
        Err(ApiError::new(ErrorCode::Unauthorized, "invalid token"))
    }

    #[test]
    fn an_address_is_limited_after_its_burst_even_with_a_good_credential() {
        let limiter = limiter(3, 1, 10);
        let attacker = origin(&limiter, "10.0.0.1");
        for _ in 0..3 {
            let error = authenticate(Some(&attacker), CredentialKind::Token, bad).unwrap_err();
            assert_eq!(error.code, ErrorCode::Unauthorized);
        }
        let refused = authenticate(Some(&attacker), CredentialKind::Token, || Ok(())).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        let neighbour = origin(&limiter, "10.0.0.2");
        authenticate(Some(&neighbour), CredentialKind::ApiKey, || Ok(())).unwrap();
        assert_eq!(
            limiter
                .metrics
                .auth_failures
                .with_label_values(&["token"])
                .get(),
            3
        );
        assert_eq!(
            limiter
                .metrics
                .auth_rate_limited
                .with_label_values(&["token"])
                .get(),
            1
        );
    }

    #[test]
    fn other_errors_and_successes_spend_nothing() {
        let limiter = limiter(1, 1, 10);
        let client = origin(&limiter, "10.0.0.1");
        for _ in 0..5 {
            authenticate(Some(&client), CredentialKind::Token, || Ok(())).unwrap();
            let _ = authenticate(Some(&client), CredentialKind::Token, || {
                Err::<(), _>(ApiError::new(ErrorCode::BadRequest, "not a credential"))
            });
        }
        assert!(!limiter.is_limited("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = limiter(1, 1, 10);
        limiter.record_failure("2001:db8:1:2::5".parse().unwrap(), CredentialKind::Token);
        assert!(limiter.is_limited("2001:db8:1:2:ffff::1".parse().unwrap()));
        assert!(!limiter.is_limited("2001:db8:1:3::5".parse().unwrap()));
        limiter.record_failure("::ffff:10.1.2.3".parse().unwrap(), CredentialKind::Token);
        assert!(limiter.is_limited("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn the_table_is_bounded_and_keeps_limited_addresses() {
        let limiter = limiter(1, 1, 2);
        limiter.record_failure("10.0.0.1".parse().unwrap(), CredentialKind::Token);
        limiter.record_failure("10.0.0.2".parse().unwrap(), CredentialKind::Token);
        limiter.record_failure("10.0.0.3".parse().unwrap(), CredentialKind::Token);
        assert_eq!(limiter.remembered_addresses(), 2);
        assert!(limiter.is_limited("10.0.0.1".parse().unwrap()));
        assert!(limiter.is_limited("10.0.0.2".parse().unwrap()));
        assert!(!limiter.is_limited("10.0.0.3".parse().unwrap()));
    }
}
