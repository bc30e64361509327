//! What goes in (`UserRecord`) and what comes out (`PutOutcome`, `Attempt`).

use bytes::Bytes;
use compact_str::CompactString;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One record as the user hands it to the producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Partition key: 1 to 256 Unicode characters. Decides the shard unless an explicit hash key
    /// is given. Empty: no key (only on an `AUTO` stream, see [`UserRecord::unkeyed`]). Held
    /// inline up to 24 bytes: a key given as `&str` (or a `CompactString` cloned) goes from here
    /// to the request body without an allocation.
    pub partition_key: CompactString,
    /// Optional explicit hash key: a decimal integer from 0 to 2^128 - 1 that overrides the
    /// partition key's hash for shard selection.
    pub explicit_hash_key: Option<String>,
    /// The payload. Empty data is allowed.
    pub data: Bytes,
    /// The stream it goes to, by name or ARN (an ARN starts with `arn:`); `None`: the
    /// producer's stream (the builder's `stream_name` or `stream_arn`). See [`UserRecord::to`].
    pub stream: Option<Arc<str>>,
}

impl UserRecord {
    /// A record with a partition key and a payload.
    pub fn new(partition_key: impl Into<CompactString>, data: impl Into<Bytes>) -> Self {
        UserRecord {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
            stream: None,
        }
    }

    /// A record without a partition key, for a stream whose `RecordDistributionStrategy` is
    /// `AUTO` (the service places it; no key is sent). On a stream that places records by key,
    /// `add` refuses it with [`crate::ValidationError::PartitionKeyEmpty`]. An empty partition
    /// key given to [`UserRecord::new`] means the same.
    pub fn unkeyed(data: impl Into<Bytes>) -> Self {
        UserRecord::new(CompactString::default(), data)
    }

    /// Whether it has no partition key.
    pub fn is_unkeyed(&self) -> bool {
        self.partition_key.is_empty()
    }

    /// Sets the explicit hash key (decimal, 0 to 2^128 - 1).
    pub fn with_explicit_hash_key(mut self, explicit_hash_key: impl Into<String>) -> Self {
        self.explicit_hash_key = Some(explicit_hash_key.into());
        self
    }

    /// Sends it to another stream than the producer's, by name or ARN (an ARN starts with
    /// `arn:`). One producer serves any number of streams with one buffer bound, one in-flight
    /// limit and one client; each stream has its own shard map, rate limits, aggregates and
    /// settings, read on its first record. A stream named once by name and once by ARN is
    /// treated as two. Pass an `Arc<str>` kept by the caller to avoid a copy per record.
    pub fn to(mut self, stream: impl Into<Arc<str>>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// Size as Kinesis counts it against limits: data bytes plus partition key bytes.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// One PutRecords attempt that carried a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// When the request was sent.
    pub start: Instant,
    /// How long until the response (or the failure) arrived.
    pub duration: Duration,
    /// The error code of this attempt, `None` if it succeeded.
    pub error_code: Option<Arc<str>>,
    /// The service's (or the client's) message for the error.
    pub error_message: Option<Arc<str>>,
}

impl Attempt {
    /// Whether this attempt stored the record.
    pub fn succeeded(&self) -> bool {
        self.error_code.is_none()
    }
}

/// A record's successful result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The shard that stored the record (or the aggregate that holds it).
    pub shard_id: Arc<str>,
    /// The sequence number of the Kinesis record that holds it.
    pub sequence_number: Arc<str>,
    /// Position inside the aggregate, if the record was sent aggregated.
    pub sub_sequence_number: Option<u64>,
    /// Every attempt, in order; the last one succeeded.
    pub attempts: Vec<Attempt>,
}
