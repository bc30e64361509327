//! Simulator configuration: server-wide settings, per-stream options and fault injection.

use std::time::{Duration, Instant};

/// Per-shard write limits of a provisioned Kinesis stream (records and bytes per second).
pub const DEFAULT_SHARD_RECORDS_PER_SEC: u32 = 1_000;
/// Per-shard byte rate: 1 MiB/s of data plus partition-key bytes.
pub const DEFAULT_SHARD_BYTES_PER_SEC: u64 = 1_048_576;
/// Largest PutRecords request (sum of data and partition-key bytes): 10 MiB.
pub const DEFAULT_REQUEST_LIMIT_BYTES: u64 = 10 * 1_048_576;
/// Default maximum record size in KiB (1 MiB).
pub const DEFAULT_MAX_RECORD_SIZE_KIB: u32 = 1024;
/// Smallest `MaxRecordSizeInKiB` the API accepts (1 MiB).
pub const MIN_MAX_RECORD_SIZE_KIB: u32 = 1024;
/// Largest `MaxRecordSizeInKiB` the API accepts (10 MiB).
pub const MAX_MAX_RECORD_SIZE_KIB: u32 = 10_240;
/// Shards of an on-demand stream created without `ShardCount`.
pub const ON_DEMAND_INITIAL_SHARDS: u32 = 4;
/// Account id used in ARNs and error messages.
pub const DEFAULT_ACCOUNT_ID: &str = "123456789012";
/// Region used in ARNs.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Per-shard write-rate enforcement: records and bytes per second, counted as `model` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// When false no record is ever throttled (for CPU benchmarks).
    pub enabled: bool,
    /// Records per second per shard.
    pub records_per_sec: u32,
    /// Bytes (data + partition key) per second per shard.
    pub bytes_per_sec: u64,
    /// How the per-second limits are counted.
    pub model: ThrottleModel,
}

/// How a shard's per-second limits are counted (see `docs/compatibility.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ThrottleModel {
    /// A token bucket holding one second of rate, refilled continuously (the default): after
    /// an idle second a shard takes one second's budget at once, then the rate.
    #[default]
    TokenBucket,
    /// Fixed one-second windows: each window takes up to one second's budget, in any pattern,
    /// and nothing more until the next window starts (up to twice the budget across a
    /// window boundary).
    SecondWindows,
}

impl ThrottleModel {
    /// The name used by the `kinesis-sim` flag: `bucket` or `window`.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleModel::TokenBucket => "bucket",
            ThrottleModel::SecondWindows => "window",
        }
    }
    /// Parses `bucket` or `window`.
    pub fn parse(s: &str) -> Option<Self> {
        [ThrottleModel::TokenBucket, ThrottleModel::SecondWindows]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            records_per_sec: DEFAULT_SHARD_RECORDS_PER_SEC,
            bytes_per_sec: DEFAULT_SHARD_BYTES_PER_SEC,
            model: ThrottleModel::TokenBucket,
        }
    }
}

impl RateLimits {
    /// No throttling at all.
    pub fn unlimited() -> Self {
        RateLimits {
            enabled: false,
            ..RateLimits::default()
        }
    }
}

/// Server-wide configuration; [`SimConfig::default`] matches AWS defaults.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Port on 127.0.0.1; 0 picks a free port.
    pub port: u16,
    /// Default per-shard limits for streams created without [`StreamOptions::limits`].
    pub limits: RateLimits,
    /// Largest PutRecords request in bytes (data + partition keys).
    pub request_limit_bytes: u64,
    /// Default maximum record size (data bytes) in KiB.
    pub max_record_size_kib: u32,
    /// Account id in ARNs and messages.
    pub account_id: String,
    /// Region in ARNs.
    pub region: String,
    /// Keep record payloads for GetRecords and [`crate::Simulator::records`]. Turn off for
    /// long benchmarks so memory stays flat; counters are kept either way.
    pub store_records: bool,
    /// How long streams stay `CREATING`, `UPDATING` and `DELETING` after the API actions
    /// that start those states; all zero (the default) keeps every stream `ACTIVE`.
    pub transitions: Transitions,
}

/// Durations of the stream status transitions driven by the API (CreateStream,
/// UpdateShardCount / SplitShard / MergeShards / UpdateStreamMode, DeleteStream). Streams
/// made through [`crate::Simulator::create_stream`] are `ACTIVE` at once whatever these say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transitions {
    /// `CREATING` after CreateStream: writes and reads answer `ResourceNotFoundException`,
    /// ListShards lists nothing, resharding answers `ResourceInUseException`.
    pub creating: std::time::Duration,
    /// `UPDATING` after a reshard or mode change, which takes effect when it ends; writes
    /// proceed, another update answers `ResourceInUseException`.
    pub updating: std::time::Duration,
    /// `DELETING` after DeleteStream: writes answer `ResourceNotFoundException`, the name
    /// stays taken; then the stream is gone.
    pub deleting: std::time::Duration,
}

/// Capacity mode of a stream (`StreamModeDetails.StreamMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StreamMode {
    /// Shards provisioned by count (the default).
    #[default]
    Provisioned,
    /// Shards managed by the service; required for [`RecordDistribution::Auto`].
    OnDemand,
}

impl StreamMode {
    /// The API's name: `PROVISIONED` or `ON_DEMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamMode::Provisioned => "PROVISIONED",
            StreamMode::OnDemand => "ON_DEMAND",
        }
    }
    /// Parses the API's name.
    pub fn from_api(s: &str) -> Option<Self> {
        [StreamMode::Provisioned, StreamMode::OnDemand]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// How records are placed on shards (`RecordDistributionStrategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RecordDistribution {
    /// By the MD5 of the partition key or the ExplicitHashKey; a partition key is required
    /// (the default).
    #[default]
    UserPartitionKey,
    /// Evenly over the open shards whatever the keys; the partition key is optional.
    /// On-demand streams only.
    Auto,
}

impl RecordDistribution {
    /// The API's name: `USER_PARTITION_KEY` or `AUTO`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordDistribution::UserPartitionKey => "USER_PARTITION_KEY",
            RecordDistribution::Auto => "AUTO",
        }
    }
    /// Parses the API's name.
    pub fn from_api(s: &str) -> Option<Self> {
        [
            RecordDistribution::UserPartitionKey,
            RecordDistribution::Auto,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// The settings of a stream that can change while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// Capacity mode.
    pub mode: StreamMode,
    /// Record placement.
    pub distribution: RecordDistribution,
    /// Largest record (data bytes) in KiB, 1024..=10240.
    pub max_record_size_kib: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            port: 0,
            limits: RateLimits::default(),
            request_limit_bytes: DEFAULT_REQUEST_LIMIT_BYTES,
            max_record_size_kib: DEFAULT_MAX_RECORD_SIZE_KIB,
            account_id: DEFAULT_ACCOUNT_ID.to_string(),
            region: DEFAULT_REGION.to_string(),
            store_records: true,
            transitions: Transitions::default(),
        }
    }
}

/// Options for [`crate::Simulator::create_stream_with`].
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Number of shards (at least 1).
    pub shards: u32,
    /// Per-stream max record size; `None` uses [`SimConfig::max_record_size_kib`].
    pub max_record_size_kib: Option<u32>,
    /// Per-stream limits; `None` uses [`SimConfig::limits`].
    pub limits: Option<RateLimits>,
    /// Capacity mode (default `PROVISIONED`).
    pub mode: StreamMode,
    /// Record placement (default `USER_PARTITION_KEY`); `AUTO` needs `ON_DEMAND`.
    pub distribution: RecordDistribution,
}

impl StreamOptions {
    /// Options for a stream of `shards` shards with server defaults otherwise.
    pub fn new(shards: u32) -> Self {
        StreamOptions {
            shards,
            ..StreamOptions::default()
        }
    }
}

/// Fault injection for one stream, replaceable at any time with
/// [`crate::Simulator::set_faults`]. Rates are probabilities in `0..=1` drawn per request
/// (per record for `internal_failure_rate`). `Faults::default()` injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Per-record probability that a PutRecords entry fails with `InternalFailure`
    /// (PutRecord: the whole request fails with HTTP 500 `InternalFailure`).
    pub internal_failure_rate: f64,
    /// Per-request probability of HTTP 500 `InternalFailure` (nothing stored).
    pub http_500_rate: f64,
    /// Per-request probability of HTTP 503 `ServiceUnavailable` (nothing stored).
    pub http_503_rate: f64,
    /// Fixed delay added to every request.
    pub latency: Duration,
    /// Uniform random extra delay in `0..latency_jitter`.
    pub latency_jitter: Duration,
    /// Per-request probability of an extra `latency_spike` delay.
    pub latency_spike_rate: f64,
    /// Delay of a latency spike (e.g. 2 s).
    pub latency_spike: Duration,
    /// Per-request probability that the connection is closed without a response. Half of
    /// the dropped write requests are applied (stored) first, half are not.
    pub drop_connection_rate: f64,
    /// Until this instant every request for the stream is dropped without a response.
    pub unreachable_until: Option<Instant>,
    /// Reshard the stream (uniform scaling) to the given shard count this long after the
    /// faults are set.
    pub reshard_at: Option<(Duration, u32)>,
    /// Share `0..1` of every shard's budget consumed by an invisible competing writer.
    pub competing_writer_share: f64,
}
