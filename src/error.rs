//! Errors: adding a record, a record's final failure, and building a producer.

use crate::record::{Attempt, UserRecord};
use std::sync::Arc;
use std::time::Duration;

/// A record was refused by `add`, `try_add` or `add_blocking`; the record comes back with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddError {
    /// The record breaks a Kinesis limit; nothing was queued.
    #[error("invalid record: {error}")]
    Invalid {
        /// What is wrong.
        error: ValidationError,
        /// The caller's record, unchanged.
        record: UserRecord,
    },
    /// `try_add` only: the buffer is at its bound in force: `max_buffered_records` and
    /// `max_buffered_bytes`, or lower while the stream drains slower than records arrive (what
    /// can be sent within half the record TTL; see [`crate::admission`]).
    #[error("buffer full: {buffered_records} records / {buffered_bytes} bytes buffered (limits {max_records} records, {max_bytes} bytes)")]
    BufferFull {
        /// The caller's record, unchanged.
        record: UserRecord,
        /// Records held when the call was made (approximate).
        buffered_records: usize,
        /// Bytes held when the call was made (approximate).
        buffered_bytes: usize,
        /// The record bound in force (`max_buffered_records` or lower).
        max_records: usize,
        /// The byte bound in force (`max_buffered_bytes` or lower).
        max_bytes: usize,
    },
    /// The producer was shut down.
    #[error("the producer is shut down")]
    ShutDown {
        /// The caller's record, unchanged.
        record: UserRecord,
    },
}

impl AddError {
    /// The record that was not accepted.
    pub fn into_record(self) -> UserRecord {
        match self {
            AddError::Invalid { record, .. }
            | AddError::BufferFull { record, .. }
            | AddError::ShutDown { record } => record,
        }
    }
}

/// Where the record size limit in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordLimitFrom {
    /// The stream's `MaxRecordSizeInKiB`, as `DescribeStreamSummary` reported it.
    Stream {
        /// The stream's limit in KiB (1,024 to 10,240).
        kib: u16,
    },
    /// The API's default of 1 MiB: the service did not report `MaxRecordSizeInKiB`.
    ApiDefault,
    /// `max_request_bytes`, below the stream's limit: a record must fit in one request.
    MaxRequestBytes,
}

impl std::fmt::Display for RecordLimitFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordLimitFrom::Stream { kib } => {
                write!(f, "the stream's MaxRecordSizeInKiB of {kib}")
            }
            RecordLimitFrom::ApiDefault => f.write_str(
                "the API's default of 1 MiB: the service did not report MaxRecordSizeInKiB",
            ),
            RecordLimitFrom::MaxRequestBytes => {
                f.write_str("max_request_bytes: a record must fit in one request")
            }
        }
    }
}

/// A record breaks one of the Kinesis limits. Each variant names the field, its size and the limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The partition key is empty on a stream that places records by key.
    #[error("partition_key is empty; it must be 1 to 256 Unicode characters (only a stream whose RecordDistributionStrategy is AUTO takes records without a key)")]
    PartitionKeyEmpty,
    /// A record without a partition key was queued while the stream's distribution was `AUTO`,
    /// and the stream switched to `USER_PARTITION_KEY`, which requires one.
    #[error("partition_key is empty, and the stream's RecordDistributionStrategy switched from AUTO to USER_PARTITION_KEY while the record was queued; it must now be 1 to 256 Unicode characters")]
    PartitionKeyRequired,
    /// The partition key has more than 256 characters.
    #[error("partition_key has {chars} Unicode characters; the limit is {limit}")]
    PartitionKeyTooLong {
        /// Characters in the key.
        chars: usize,
        /// The limit (256).
        limit: usize,
    },
    /// The explicit hash key is not a decimal integer in range.
    #[error("explicit_hash_key {value:?} {reason}")]
    ExplicitHashKey {
        /// The offending value (truncated to 64 characters).
        value: String,
        /// Why.
        reason: crate::hash_key::ExplicitHashKeyError,
    },
    /// Data plus partition key exceed the record size limit in force.
    #[error("record size (data {data_bytes} + partition_key {key_bytes} bytes = {size} bytes) exceeds the record limit of {limit} bytes ({limit_from})")]
    RecordTooLarge {
        /// Data bytes.
        data_bytes: usize,
        /// Partition key bytes (UTF-8).
        key_bytes: u16,
        /// The sum.
        size: usize,
        /// The limit in force.
        limit: usize,
        /// Where the limit comes from.
        limit_from: RecordLimitFrom,
    },
    /// The record alone exceeds `max_buffered_bytes`, so it could never be buffered.
    #[error("record size {size} bytes exceeds max_buffered_bytes {limit}")]
    LargerThanBuffer {
        /// The record's size.
        size: usize,
        /// `max_buffered_bytes`.
        limit: usize,
    },
}

/// Why an accepted record finally failed. `Clone`: one response fans out to many records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record's time-to-live ran out before it was stored.
    #[error("record TTL of {ttl:?} expired after {} attempts{}", attempts.len(), last_error_suffix(attempts))]
    Expired {
        /// The configured `record_ttl`.
        ttl: Duration,
        /// Every attempt made, in order.
        attempts: Vec<Attempt>,
    },
    /// The service refused the record with an error that retrying cannot fix.
    #[error("rejected by Kinesis: {code}: {message}")]
    Rejected {
        /// The error code, e.g. `ResourceNotFoundException`, `AccessDeniedException`, `KMSDisabledException`.
        code: Arc<str>,
        /// The service's message.
        message: Arc<str>,
        /// Every attempt made, in order.
        attempts: Vec<Attempt>,
    },
    /// The stream's settings changed while the record was queued, and it no longer meets them
    /// (the record size limit was lowered below its size, or the stream switched from `AUTO` to
    /// `USER_PARTITION_KEY` and the record has no partition key). It was never sent.
    #[error("the stream's settings changed while the record was queued: {error}")]
    Invalid {
        /// The same error `add` gives such a record now.
        error: ValidationError,
        /// Every attempt made, in order.
        attempts: Vec<Attempt>,
    },
    /// The producer shut down (deadline passed) before the record could be stored.
    #[error("producer shut down before the record was confirmed stored ({} attempts{})", attempts.len(), last_error_suffix(attempts))]
    ShutDown {
        /// Every attempt made, in order.
        attempts: Vec<Attempt>,
    },
}

impl RecordError {
    /// The error code of the last attempt (or of the rejection), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            RecordError::Rejected { code, .. } => Some(code),
            RecordError::Expired { attempts, .. }
            | RecordError::Invalid { attempts, .. }
            | RecordError::ShutDown { attempts } => {
                attempts.last().and_then(|a| a.error_code.as_deref())
            }
        }
    }

    /// Every attempt made for the record.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            RecordError::Expired { attempts, .. }
            | RecordError::Rejected { attempts, .. }
            | RecordError::Invalid { attempts, .. }
            | RecordError::ShutDown { attempts } => attempts,
        }
    }
}

fn last_error_suffix(attempts: &[Attempt]) -> String {
    match attempts.last() {
        Some(Attempt {
            error_code: Some(code),
            error_message,
            ..
        }) => format!(
            "; last error {code}: {}",
            error_message.as_deref().unwrap_or("")
        ),
        _ => String::new(),
    }
}

/// The producer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The stream does not exist (or is not visible with these credentials).
    #[error("stream {stream} not found: {message}")]
    StreamNotFound {
        /// The stream name or ARN.
        stream: String,
        /// The service's message.
        message: String,
    },
    /// Talking to Kinesis failed while starting (credentials, endpoint, permissions).
    #[error("could not start the producer: {operation} failed: {code}: {message}")]
    Kinesis {
        /// The call that failed, e.g. `DescribeStreamSummary`.
        operation: &'static str,
        /// Error code or kind.
        code: String,
        /// Details.
        message: String,
    },
    /// No Tokio runtime was running when `build` was called.
    #[error("Producer::build must be called inside a Tokio runtime")]
    NoRuntime,
}

/// A configuration value is out of range. The message names the setting and its limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Neither `stream_name` nor `stream_arn` was set, or the one set is empty.
    #[error("a stream is required: set stream_name or stream_arn (non-empty)")]
    MissingStream,
    /// A setting is outside its allowed range.
    #[error("{field} = {value} is out of range: {limit}")]
    OutOfRange {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: String,
        /// The allowed range, in words.
        limit: std::borrow::Cow<'static, str>,
    },
}
