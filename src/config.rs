//! Producer configuration: a typed builder with `DEFAULT_*` constants, validated in `build()`.

use crate::error::ConfigError;
use crate::limits::{MAX_RECORDS_PER_REQUEST, MAX_REQUEST_BYTES};
use std::time::Duration;

/// Default: aggregate user records into KPL aggregates.
pub const DEFAULT_AGGREGATION: bool = true;
/// Default largest aggregate, counted as Kinesis counts a record (data + partition key): 50 KiB.
pub const DEFAULT_AGGREGATION_MAX_SIZE: usize = 51_200;
/// Default most user records in one aggregate.
pub const DEFAULT_AGGREGATION_MAX_COUNT: usize = 4_294_967_295;
/// Default: any records of one shard share an aggregate.
pub const DEFAULT_AGGREGATION_SCOPE: AggregationScope = AggregationScope::Shard;
/// Records per PutRecords request (the API limit).
pub const DEFAULT_MAX_RECORDS_PER_REQUEST: usize = MAX_RECORDS_PER_REQUEST;
/// Request byte limit (data + partition keys) on a stream whose records are at most 1 MiB, when
/// `max_request_bytes` is not set: 1 MiB. The service takes 5 MiB, but requests of 1 MiB hold a
/// fifth of the memory in bodies being built and sent, for about 2.5 % more CPU per record
/// (BENCHMARKS.md, issue 12); set `max_request_bytes` up to 5 MiB for fewer, larger requests.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Default longest time a record waits to be batched.
pub const DEFAULT_MAX_BUFFERED_TIME: Duration = Duration::from_millis(100);
/// Default time-to-live of a record, retries included.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(30);
/// Default share of each shard's limits the producer may use, in percent.
pub const DEFAULT_RATE_LIMIT_PERCENT: u32 = 100;
/// Default most PutRecords requests in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// Default: adapt the in-flight limit and the request timeout to the endpoint's latency.
pub const DEFAULT_ADAPTIVE_CONCURRENCY: bool = true;
/// Default timeout of one PutRecords request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(6);
/// Default most user records held by the producer (queued, in flight or awaiting retry).
pub const DEFAULT_MAX_BUFFERED_RECORDS: usize = 200_000;
/// Default most bytes (data + partition keys) held by the producer.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;
/// Default period of shard map refreshes.
pub const DEFAULT_SHARD_MAP_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Default period of `DescribeStreamSummary` reads (jittered ±20 %; see
/// [`crate::stream_settings`] for why).
pub const DEFAULT_STREAM_SETTINGS_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Default [`ProducerConfig::stream_idle_timeout`].
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time `shutdown()` waits for records before failing the rest.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The stream to write to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamRef {
    /// By name (any non-empty string; compatible services accept other forms, such as paths).
    Name(String),
    /// By ARN.
    Arn(String),
}

impl StreamRef {
    /// A name, or an ARN if it starts with `arn:`.
    pub fn parse(name_or_arn: &str) -> Self {
        if name_or_arn.starts_with("arn:") {
            StreamRef::Arn(name_or_arn.to_string())
        } else {
            StreamRef::Name(name_or_arn.to_string())
        }
    }

    /// The name or ARN as given.
    pub fn as_str(&self) -> &str {
        match self {
            StreamRef::Name(s) | StreamRef::Arn(s) => s,
        }
    }
}

/// Order guarantee for records of the same partition key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ordering {
    /// No guarantee (like PutRecords): highest throughput.
    #[default]
    None,
    /// Records with the same hash key (partition key, or explicit hash key) are stored in `add`
    /// order as a KCL consumer reads them, even under partial failures and across resharding:
    /// at most one Kinesis record in flight per shard (PutRecords promises no order within a
    /// request), failed records retried before anything newer of their shard, and after a
    /// split, merge or `UpdateShardCount` a new shard sends nothing until what the retired
    /// shards of its range still had in flight has come back.
    ///
    /// The ceiling is one Kinesis record per shard per round trip. With aggregation that
    /// record is an aggregate that grows while the previous one is in flight, up to a second of
    /// the shard's bytes (1 MiB) within the record limit: the shard's full rate at round trips
    /// up to about a second. Without aggregation it is `1 / round trip` records per second per
    /// shard (50/s at 20 ms); the admission cap then holds `add` to what that rate sends in half
    /// the TTL, so records wait in `add` rather than expire in the buffer.
    PerShard,
}

/// Which user records one aggregate may hold.
///
/// Kinesis routes an aggregate by its outer record's partition key (or explicit hash key), and
/// a consumer that does not deaggregate (a Lambda that routes by `PartitionKey`, a Firehose
/// delivery stream, an analytics job) sees only that outer key. Shard-wide aggregates pack
/// records of many keys behind the first one's key; same-key aggregates keep the outer key true
/// for every record inside, at the cost of smaller aggregates when a shard carries many keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AggregationScope {
    /// Any records of one predicted shard share an aggregate (the KPL's behaviour): the fewest
    /// Kinesis records. The outer partition key is the first record's, and the outer explicit
    /// hash key is the first record's hash key, so the aggregate lands on the predicted shard.
    #[default]
    Shard,
    /// An aggregate holds only records with one partition key (and one hash key: records of a
    /// key that carry different explicit hash keys go in separate aggregates), and its outer
    /// record carries that partition key, and the records' explicit hash key only if they carry
    /// one, like a plain record of that key. Records of other keys keep their order in the
    /// shard's queue.
    ///
    /// An aggregate gathers the records of its key from a bounded look-ahead of the shard's queue
    /// (see `engine/shard_state.rs`): records of a key that arrive far apart among many other
    /// keys go in separate, smaller aggregates. With many keys per shard each Kinesis record
    /// holds few user records, so the per-shard limit of 1,000 records/s binds sooner; under
    /// [`Ordering::PerShard`] a shard sends one aggregate, so one key, per round trip.
    PartitionKey,
}

/// Which labels metrics carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetricsGranularity {
    /// No labels.
    Global,
    /// A `stream` label.
    #[default]
    Stream,
    /// `stream` and `shard` labels on per-shard metrics.
    Shard,
}

/// Every setting of a producer. Build one with [`crate::Producer::builder`].
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// The stream.
    pub stream: Option<StreamRef>,
    /// Aggregate user records into KPL aggregates.
    pub aggregation: bool,
    /// Largest aggregate (data + outer partition key), bytes.
    pub aggregation_max_size: usize,
    /// Most user records per aggregate.
    pub aggregation_max_count: usize,
    /// Which records share an aggregate: any of one shard (default), or only those of one
    /// partition key, whose outer record then carries that key.
    pub aggregation_scope: AggregationScope,
    /// Most Kinesis records per request (1..=500).
    pub max_records_per_request: usize,
    /// Most bytes (data + partition keys) per request (up to 10 MiB). `None`: 10 MiB where the
    /// stream allows records over 1 MiB (`MaxRecordSizeInKiB`), 1 MiB
    /// ([`DEFAULT_MAX_REQUEST_BYTES`]) elsewhere.
    pub max_request_bytes: Option<usize>,
    /// Longest a record waits for a batch before it is sent.
    pub max_buffered_time: Duration,
    /// Time-to-live of a record, from `add` to the last retry.
    pub record_ttl: Duration,
    /// Share of each shard's limits to use, percent (1..=100).
    pub rate_limit_percent: u32,
    /// Rate-limit per shard at all. Turn off only where the service enforces no shard limits
    /// (CPU benchmarks against a simulator with limits off).
    pub rate_limiting: bool,
    /// Share the stream with producers it does not know of: start below the full rate and
    /// adapt every shard's rate to the throttling met (see [`crate::limiter::RateControl`]).
    /// `false`: always the full rate (the configured percentage); a throttle only rebuilds
    /// the limiter's reserve.
    pub adaptive_rate: bool,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// Adapt the in-flight limit (up to `max_in_flight`, from one request at first) and the
    /// request timeout (from `request_timeout` up) to the latency the endpoint shows, so that a
    /// slow endpoint is not sent requests it cannot answer in time (see
    /// [`crate::congestion`]). `false`: always `max_in_flight` and `request_timeout`.
    pub adaptive_concurrency: bool,
    /// Most user records held.
    pub max_buffered_records: usize,
    /// Most bytes held (data + partition keys).
    pub max_buffered_bytes: usize,
    /// Ordering guarantee.
    pub ordering: Ordering,
    /// Period of shard map refreshes.
    pub shard_map_refresh_interval: Duration,
    /// Period of `DescribeStreamSummary` reads that follow the stream's record distribution and
    /// record size limit (also read at once on evidence of a change).
    pub stream_settings_refresh_interval: Duration,
    /// How long a stream other than the producer's own (see [`crate::UserRecord::to`]) may go
    /// without records before its state (shard map, limiters, stats) is released; its next
    /// record reads the stream again.
    pub stream_idle_timeout: Duration,
    /// Labels on metrics.
    pub metrics_granularity: MetricsGranularity,
    /// How long `shutdown()` (and dropping the last handle) waits before failing what is left.
    pub shutdown_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            stream: None,
            aggregation: DEFAULT_AGGREGATION,
            aggregation_max_size: DEFAULT_AGGREGATION_MAX_SIZE,
            aggregation_max_count: DEFAULT_AGGREGATION_MAX_COUNT,
            aggregation_scope: DEFAULT_AGGREGATION_SCOPE,
            max_records_per_request: DEFAULT_MAX_RECORDS_PER_REQUEST,
            max_request_bytes: None,
            max_buffered_time: DEFAULT_MAX_BUFFERED_TIME,
            record_ttl: DEFAULT_RECORD_TTL,
            rate_limit_percent: DEFAULT_RATE_LIMIT_PERCENT,
            rate_limiting: true,
            adaptive_rate: true,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            adaptive_concurrency: DEFAULT_ADAPTIVE_CONCURRENCY,
            max_buffered_records: DEFAULT_MAX_BUFFERED_RECORDS,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            ordering: Ordering::None,
            shard_map_refresh_interval: DEFAULT_SHARD_MAP_REFRESH_INTERVAL,
            stream_settings_refresh_interval: DEFAULT_STREAM_SETTINGS_REFRESH_INTERVAL,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            metrics_granularity: MetricsGranularity::Stream,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

fn out_of_range(
    field: &'static str,
    value: impl ToString,
    limit: impl Into<std::borrow::Cow<'static, str>>,
) -> ConfigError {
    ConfigError::OutOfRange {
        field,
        value: value.to_string(),
        limit: limit.into(),
    }
}

impl ProducerConfig {
    /// Checks every setting that does not depend on the stream.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.stream {
            Some(s) if !s.as_str().is_empty() => {}
            _ => return Err(ConfigError::MissingStream),
        }
        if self.aggregation_max_size == 0 {
            return Err(out_of_range(
                "aggregation_max_size",
                0,
                "must be at least 1 byte",
            ));
        }
        if self.aggregation_max_count == 0 {
            return Err(out_of_range(
                "aggregation_max_count",
                0,
                "must be at least 1",
            ));
        }
        if !(1..=MAX_RECORDS_PER_REQUEST).contains(&self.max_records_per_request) {
            return Err(out_of_range(
                "max_records_per_request",
                self.max_records_per_request,
                "1 to 500 (PutRecords limit)",
            ));
        }
        if let Some(bytes) = self
            .max_request_bytes
            .filter(|b| !(1..=MAX_REQUEST_BYTES).contains(b))
        {
            return Err(out_of_range(
                "max_request_bytes",
                bytes,
                "1 to 10485760 bytes (10 MiB)",
            ));
        }
        if self.aggregation
            && self.aggregation_max_size > self.max_request_bytes.unwrap_or(MAX_REQUEST_BYTES)
        {
            return Err(out_of_range(
                "aggregation_max_size",
                self.aggregation_max_size,
                "must not exceed max_request_bytes",
            ));
        }
        if self.record_ttl.is_zero() {
            return Err(out_of_range("record_ttl", "0s", "must be more than zero"));
        }
        if !(1..=100).contains(&self.rate_limit_percent) {
            return Err(out_of_range(
                "rate_limit_percent",
                self.rate_limit_percent,
                "1 to 100 percent of the shard limits",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(out_of_range("max_in_flight", 0, "must be at least 1"));
        }
        if self.request_timeout.is_zero() {
            return Err(out_of_range(
                "request_timeout",
                "0s",
                "must be more than zero",
            ));
        }
        if self.max_buffered_records == 0 {
            return Err(out_of_range(
                "max_buffered_records",
                0,
                "must be at least 1",
            ));
        }
        if self.max_buffered_bytes == 0 {
            return Err(out_of_range("max_buffered_bytes", 0, "must be at least 1"));
        }
        for (field, value) in [
            (
                "shard_map_refresh_interval",
                self.shard_map_refresh_interval,
            ),
            (
                "stream_settings_refresh_interval",
                self.stream_settings_refresh_interval,
            ),
            ("stream_idle_timeout", self.stream_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(out_of_range(field, "0s", "must be more than zero"));
            }
        }
        Ok(())
    }

    /// The request byte limit in force on a stream whose records may be `stream_record_limit`
    /// bytes: `max_request_bytes` if set, else what the service allows (10 MiB where records
    /// may exceed 1 MiB, [`DEFAULT_MAX_REQUEST_BYTES`] elsewhere).
    pub fn request_bytes_for(&self, stream_record_limit: usize) -> usize {
        self.max_request_bytes.unwrap_or(
            if stream_record_limit > crate::limits::DEFAULT_RECORD_SIZE_LIMIT {
                MAX_REQUEST_BYTES
            } else {
                DEFAULT_MAX_REQUEST_BYTES
            },
        )
    }

    /// Checks the settings that depend on the stream's record size limit.
    pub fn validate_for_stream(&self, max_record_size: usize) -> Result<(), ConfigError> {
        if self.aggregation && self.aggregation_max_size > max_record_size {
            return Err(out_of_range(
                "aggregation_max_size",
                self.aggregation_max_size,
                format!(
                    "must not exceed the stream's record size limit of {max_record_size} bytes"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ProducerConfig {
        ProducerConfig {
            stream: Some(StreamRef::Name("s".into())),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: Vec<(&str, ProducerConfig)> = vec![
            ("stream", ProducerConfig::default()),
            (
                "max_in_flight",
                ProducerConfig {
                    max_in_flight: 0,
                    ..valid()
                },
            ),
            (
                "record_ttl",
                ProducerConfig {
                    record_ttl: Duration::ZERO,
                    ..valid()
                },
            ),
            (
                "max_request_bytes",
                ProducerConfig {
                    max_request_bytes: Some(MAX_REQUEST_BYTES + 1),
                    ..valid()
                },
            ),
            (
                "max_records_per_request",
                ProducerConfig {
                    max_records_per_request: 501,
                    ..valid()
                },
            ),
            (
                "rate_limit_percent",
                ProducerConfig {
                    rate_limit_percent: 0,
                    ..valid()
                },
            ),
            (
                "rate_limit_percent",
                ProducerConfig {
                    rate_limit_percent: 101,
                    ..valid()
                },
            ),
            (
                "max_buffered_records",
                ProducerConfig {
                    max_buffered_records: 0,
                    ..valid()
                },
            ),
        ];
        for (field, config) in cases {
            let err = config.validate().expect_err(field).to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn aggregate_size_bounded_by_record_limit() {
        let c = ProducerConfig {
            aggregation_max_size: 2 << 20,
            ..valid()
        };
        let err = c.validate_for_stream(1 << 20).unwrap_err().to_string();
        assert!(
            err.contains("aggregation_max_size") && err.contains("1048576"),
            "{err}"
        );
        assert_eq!(c.validate_for_stream(2 << 20), Ok(()));
    }
}
