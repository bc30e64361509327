//! Retry decisions: which errors are worth retrying, the back-off schedule, and the TTL.
//!
//! The decision lives here, apart from the mechanism in the engine (which re-enqueues failed
//! records at the front of their shard's queue). Pure: no clock, no I/O.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::{Duration, Instant};

/// What to do with a record after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after a back-off. `throttled` says the shard's rate should back off too.
    Retry {
        /// The service said the shard (or account) is over its limit.
        throttled: bool,
    },
    /// Fail the record now with the error.
    Fail,
}

/// Error codes that mean "over a limit": retried, and the rate backs off.
const THROTTLING: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "LimitExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "KMSThrottlingException",
];

/// Error codes that retrying cannot fix.
const PERMANENT: &[&str] = &[
    "ResourceNotFoundException",
    "ResourceInUseException",
    "AccessDeniedException",
    "ValidationException",
    "InvalidArgumentException",
    "SerializationException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSAccessDeniedException",
    "KMSNotFoundException",
    "KMSOptInRequired",
];

/// Decision for one record's `ErrorCode` inside a PutRecords response.
///
/// `ProvisionedThroughputExceededException` and `InternalFailure` are retried; so are codes this
/// version does not know (losing a record to an unknown code is worse than retrying it until its
/// TTL). Validation, missing stream, access and KMS errors (other than KMS throttling) fail.
pub fn classify_code(code: &str) -> Decision {
    if THROTTLING.contains(&code) {
        Decision::Retry { throttled: true }
    } else if PERMANENT.contains(&code) {
        Decision::Fail
    } else {
        Decision::Retry { throttled: false }
    }
}

/// Decision for a whole request that failed: by code when the service sent one, else by HTTP
/// status (5xx retried, other 4xx failed); no response at all (timeout, connection) is retried.
pub fn classify_request(code: Option<&str>, status: Option<u16>) -> Decision {
    if let Some(code) = code.filter(|c| !c.is_empty()) {
        let by_code = classify_code(code);
        if by_code == Decision::Fail || THROTTLING.contains(&code) {
            return by_code;
        }
    }
    match status {
        Some(429) => Decision::Retry { throttled: true },
        Some(s) if (400..500).contains(&s) && code != Some("ExpiredTokenException") => {
            Decision::Fail
        }
        _ => Decision::Retry { throttled: false },
    }
}

/// The records a whole-request validation error names, as 0-based positions in the request.
///
/// The service validates every record before it stores any, and refuses the request as a
/// whole when one breaks a constraint, naming each culprit by its 1-based position:
/// `Value '…' at 'records.3.member.data' failed to satisfy constraint: …`. Only the named
/// records are bad; the others can be sent again. An empty result: the message names no record.
pub fn invalid_record_positions(message: &str) -> Vec<usize> {
    const AT: &str = "'records.";
    let mut out: Vec<usize> = message
        .match_indices(AT)
        .filter_map(|(i, _)| {
            let rest = &message[i + AT.len()..];
            let digits = rest.split('.').next()?;
            let n: usize = digits.parse().ok()?;
            rest[digits.len()..]
                .starts_with(".member")
                .then_some(n.checked_sub(1)?)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// First back-off delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest back-off delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential back-off with jitter (from `backon`), restarted after a success.
#[derive(Debug)]
pub struct Backoff {
    inner: ExponentialBackoff,
    /// A delay was taken since it last started over: a reset has something to undo. (A shard's
    /// back-off is reset on every record it stores; rebuilding it each time cost more than the
    /// rest of the record's bookkeeping on that path.)
    used: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            inner: Self::builder().build(),
            used: false,
        }
    }
}

impl Backoff {
    fn builder() -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(BACKOFF_MIN)
            .with_max_delay(BACKOFF_MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.used = true;
        self.inner.next().unwrap_or(BACKOFF_MAX)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        if std::mem::take(&mut self.used) {
            self.inner = Self::builder().build();
        }
    }
}

/// `start + d`, saturating far in the future instead of overflowing (a huge TTL never wraps).
pub fn saturating_add(start: Instant, d: Duration) -> Instant {
    start.checked_add(d).unwrap_or_else(|| {
        // About 30 years: later than any process lives, and representable on every platform.
        let mut far = Duration::from_secs(1 << 30);
        loop {
            if let Some(t) = start.checked_add(far) {
                return t;
            }
            far /= 2;
        }
    })
}

/// A record's deadline: when it was added plus its TTL.
pub fn deadline(added: Instant, ttl: Duration) -> Instant {
    saturating_add(added, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_messages_name_the_records_at_fault() {
        let one = "1 validation error detected: Value 'java.nio.HeapByteBuffer[pos=0 lim=1048577 cap=1048577]' at 'records.2.member.data' failed to satisfy constraint: Member must have length less than or equal to 1048576";
        assert_eq!(invalid_record_positions(one), vec![1]);
        let two = "2 validation errors detected: Value '' at 'records.5.member.partitionKey' failed to satisfy constraint: Member must have length greater than or equal to 1; Value null at 'records.1.member.data' failed to satisfy constraint: Member must not be null; Value '' at 'records.5.member.data' failed";
        assert_eq!(invalid_record_positions(two), vec![0, 4]);
        for none in [
            "Records size exceeds 10 MB limit",
            "Value at 'records' failed to satisfy constraint: Member must have length less than or equal to 500",
            "at 'records.0.member.data'",
            "at 'records.x.member.data'",
            "at 'records.3.data'",
            "",
        ] {
            assert_eq!(invalid_record_positions(none), Vec::<usize>::new(), "{none}");
        }
    }

    #[test]
    fn record_error_codes() {
        let table = [
            (
                "ProvisionedThroughputExceededException",
                Decision::Retry { throttled: true },
            ),
            ("InternalFailure", Decision::Retry { throttled: false }),
            (
                "KMSThrottlingException",
                Decision::Retry { throttled: true },
            ),
            ("ResourceNotFoundException", Decision::Fail),
            ("ResourceInUseException", Decision::Fail),
            ("AccessDeniedException", Decision::Fail),
            ("ValidationException", Decision::Fail),
            ("InvalidArgumentException", Decision::Fail),
            ("KMSDisabledException", Decision::Fail),
            ("KMSInvalidStateException", Decision::Fail),
            ("KMSAccessDeniedException", Decision::Fail),
            ("KMSNotFoundException", Decision::Fail),
            ("KMSOptInRequired", Decision::Fail),
            ("SomethingNew", Decision::Retry { throttled: false }),
        ];
        for (code, want) in table {
            assert_eq!(classify_code(code), want, "{code}");
        }
    }

    #[test]
    fn request_errors() {
        let retry = Decision::Retry { throttled: false };
        let throttled = Decision::Retry { throttled: true };
        let table = [
            (None, None, retry), // timeout, connection refused
            (None, Some(500), retry),
            (None, Some(503), retry),
            (Some("InternalFailure"), Some(500), retry),
            (Some("ServiceUnavailable"), Some(503), retry),
            (None, Some(429), throttled),
            (Some("LimitExceededException"), Some(400), throttled),
            (Some("ThrottlingException"), Some(400), throttled),
            (Some("ResourceNotFoundException"), Some(400), Decision::Fail),
            (Some("ResourceInUseException"), Some(400), Decision::Fail),
            (Some("AccessDeniedException"), Some(400), Decision::Fail),
            (Some("ValidationException"), Some(400), Decision::Fail),
            (Some("KMSDisabledException"), Some(400), Decision::Fail),
            (Some("ExpiredTokenException"), Some(400), retry),
            (None, Some(413), Decision::Fail),
            // A permanent code is final whatever the status (or with none)...
            (Some("AccessDeniedException"), None, Decision::Fail),
            (Some("ValidationException"), Some(500), Decision::Fail),
            // ...while an unknown code falls back to the status.
            (Some("SomeNewException"), Some(400), Decision::Fail),
            (Some("SomeNewException"), Some(502), retry),
        ];
        for (code, status, want) in table {
            assert_eq!(classify_request(code, status), want, "{code:?} {status:?}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(
            first >= BACKOFF_MIN && first <= BACKOFF_MIN * 2,
            "{first:?}"
        );
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= BACKOFF_MAX * 2, "{last:?}");
        }
        assert!(last >= BACKOFF_MAX, "{last:?} reaches the cap");
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN * 2);
        // A second reset in a row, and one after a single delay, start over as well.
        b.reset();
        b.reset();
        let first = b.next_delay();
        assert!(first <= BACKOFF_MIN * 2, "{first:?}");
        b.next_delay();
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN * 2);
    }

    #[test]
    fn ttl_saturates() {
        let now = Instant::now();
        let d = deadline(now, Duration::MAX);
        assert!(d > now + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(
            deadline(now, Duration::from_secs(30)),
            now + Duration::from_secs(30)
        );
    }
}
