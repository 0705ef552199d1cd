//! The "unavailable" cause the ports' errors share (`HistoryError::Unavailable` of chorus-store,
//! `PresenceError::Unavailable` of chorus-core): a port that cannot answer now says why in words
//! callers and operators read, and keeps the error behind it (a client library's) as the error's
//! `source` instead of flattening it to text. Its `Display` is the reason alone, so the errors'
//! texts are what they were when the reason was a `String`.

use crate::BackendError;

/// Why a port cannot answer now: the reason the caller reads (a breaker open, a database held by
/// another process, a schema not in place yet, a service unreachable), and the error behind it
/// when there is one, kept as the `source`. Reads as the reason's text.
#[derive(Debug)]
pub struct Unavailability {
    /// What the caller reads (the `Display` of the failure).
    reason: String,
    /// The error behind the reason, if any.
    cause: Option<BackendError>,
}

impl Unavailability {
    /// A failure whose cause is `cause`: its text is the reason.
    pub fn caused_by(cause: impl std::error::Error + Send + Sync + 'static) -> Unavailability {
        Unavailability {
            reason: cause.to_string(),
            cause: Some(Box::new(cause)),
        }
    }

    /// The same failure, its reason preceded by `context`.
    pub fn in_context(self, context: &str) -> Unavailability {
        Unavailability {
            reason: format!("{context}: {}", self.reason),
            cause: self.cause,
        }
    }
}

impl std::fmt::Display for Unavailability {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.reason)
    }
}

impl std::error::Error for Unavailability {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

impl std::ops::Deref for Unavailability {
    type Target = str;

    fn deref(&self) -> &str {
        &self.reason
    }
}

impl From<String> for Unavailability {
    /// A reason without an error behind it.
    fn from(reason: String) -> Unavailability {
        Unavailability {
            reason,
            cause: None,
        }
    }
}

impl From<&str> for Unavailability {
    /// A reason without an error behind it.
    fn from(reason: &str) -> Unavailability {
        Unavailability::from(reason.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn an_unavailability_reads_as_its_reason_and_keeps_its_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let unavailable = Unavailability::caused_by(cause).in_context("not in place yet");
        assert_eq!(unavailable.to_string(), "not in place yet: refused");
        assert!(unavailable.contains("refused"));
        assert_eq!(
            unavailable.source().map(ToString::to_string).as_deref(),
            Some("refused")
        );
        let reason_only = Unavailability::from("circuit open");
        assert_eq!(reason_only.to_string(), "circuit open");
        assert!(reason_only.source().is_none());
    }
}
