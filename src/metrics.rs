//! Metric names and recording, through the `metrics` facade (any exporter works).
//!
//! Counters are registered once with their labels and kept as handles, so recording on the hot
//! path is an atomic add, not a label lookup. Labels: `stream`, plus `shard` on per-shard metrics
//! when the granularity is [`MetricsGranularity::Shard`].

use crate::config::MetricsGranularity;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Label};

/// User records accepted by `add`.
pub const USER_RECORDS_RECEIVED: &str = "kinesis_producer_user_records_received_total";
/// User records stored.
pub const USER_RECORDS_PUT: &str = "kinesis_producer_user_records_put_total";
/// User records that finally failed (any reason).
pub const USER_RECORDS_FAILED: &str = "kinesis_producer_user_records_failed_total";
/// User records whose TTL expired.
pub const USER_RECORDS_EXPIRED: &str = "kinesis_producer_user_records_expired_total";
/// Kinesis records (aggregates or single user records) stored.
pub const KINESIS_RECORDS_PUT: &str = "kinesis_producer_kinesis_records_put_total";
/// PutRecords requests sent.
pub const REQUESTS: &str = "kinesis_producer_put_records_requests_total";
/// Errors, labelled by `code`.
pub const ERRORS: &str = "kinesis_producer_errors_total";
/// User record retries.
pub const RETRIES: &str = "kinesis_producer_retries_total";
/// User records sent again after an attempt of unknown outcome (timeout, dropped connection).
pub const POSSIBLE_DUPLICATES: &str = "kinesis_producer_possible_duplicates_total";
/// Kinesis records throttled by the service.
pub const THROTTLES: &str = "kinesis_producer_throttles_total";
/// Bytes (data + partition key of Kinesis records) stored.
pub const BYTES_PUT: &str = "kinesis_producer_bytes_put_total";
/// Sub-records re-sent because their aggregate landed on a shard whose range does not hold them.
pub const STRANDED_RESENT: &str = "kinesis_producer_stranded_subrecords_resent_total";
/// Shard map refreshes completed.
pub const SHARD_MAP_REFRESHES: &str = "kinesis_producer_shard_map_refreshes_total";
/// Kinesis records stored on a shard other than the predicted one.
pub const MISPREDICTIONS: &str = "kinesis_producer_shard_mispredictions_total";
/// Changes of the stream's settings (record distribution, record size limit) seen while running.
pub const STREAM_SETTINGS_CHANGES: &str = "kinesis_producer_stream_settings_changes_total";
/// The record size limit in force, bytes (data + partition key).
pub const RECORD_SIZE_LIMIT: &str = "kinesis_producer_record_size_limit_bytes";
/// 1 while the stream's record distribution is `AUTO` (no prediction, no aggregation), else 0.
pub const AUTO_DISTRIBUTION: &str = "kinesis_producer_auto_distribution";
/// Seconds from `add` to the send of the Kinesis record holding it (oldest user record).
pub const BUFFERING_TIME: &str = "kinesis_producer_buffering_time_seconds";
/// Seconds a PutRecords request took.
pub const REQUEST_TIME: &str = "kinesis_producer_request_time_seconds";
/// User records per Kinesis record.
pub const USER_RECORDS_PER_KINESIS_RECORD: &str =
    "kinesis_producer_user_records_per_kinesis_record";
/// User records per PutRecords request.
pub const USER_RECORDS_PER_REQUEST: &str = "kinesis_producer_user_records_per_request";
/// User records held by the producer.
pub const RECORDS_PENDING: &str = "kinesis_producer_records_pending";
/// Bytes held by the producer.
pub const BYTES_PENDING: &str = "kinesis_producer_bytes_pending";

/// Registered metric handles of one producer.
#[derive(Clone)]
pub(crate) struct Metrics {
    labels: Vec<Label>,
    granularity: MetricsGranularity,
    pub received: Counter,
    pub put: Counter,
    pub failed: Counter,
    pub expired: Counter,
    pub kinesis_put: Counter,
    pub requests: Counter,
    pub retries: Counter,
    pub possible_duplicates: Counter,
    pub throttles: Counter,
    pub bytes_put: Counter,
    pub stranded: Counter,
    pub refreshes: Counter,
    pub mispredictions: Counter,
    pub settings_changes: Counter,
    pub record_size_limit: Gauge,
    pub auto_distribution: Gauge,
    pub buffering_time: Histogram,
    pub request_time: Histogram,
    pub per_kinesis_record: Histogram,
    pub per_request: Histogram,
    pub records_pending: Gauge,
    pub bytes_pending: Gauge,
}

/// Per-shard handles (labelled with the shard only at `Shard` granularity).
#[derive(Clone)]
pub(crate) struct ShardMetrics {
    pub kinesis_put: Counter,
    pub throttles: Counter,
}

impl Metrics {
    pub fn new(stream: &str, granularity: MetricsGranularity) -> Self {
        let labels = match granularity {
            MetricsGranularity::Global => vec![],
            _ => vec![Label::new("stream", stream.to_string())],
        };
        let l = || labels.clone();
        Metrics {
            received: counter!(USER_RECORDS_RECEIVED, l()),
            put: counter!(USER_RECORDS_PUT, l()),
            failed: counter!(USER_RECORDS_FAILED, l()),
            expired: counter!(USER_RECORDS_EXPIRED, l()),
            kinesis_put: counter!(KINESIS_RECORDS_PUT, l()),
            requests: counter!(REQUESTS, l()),
            retries: counter!(RETRIES, l()),
            possible_duplicates: counter!(POSSIBLE_DUPLICATES, l()),
            throttles: counter!(THROTTLES, l()),
            bytes_put: counter!(BYTES_PUT, l()),
            stranded: counter!(STRANDED_RESENT, l()),
            refreshes: counter!(SHARD_MAP_REFRESHES, l()),
            mispredictions: counter!(MISPREDICTIONS, l()),
            settings_changes: counter!(STREAM_SETTINGS_CHANGES, l()),
            record_size_limit: gauge!(RECORD_SIZE_LIMIT, l()),
            auto_distribution: gauge!(AUTO_DISTRIBUTION, l()),
            buffering_time: histogram!(BUFFERING_TIME, l()),
            request_time: histogram!(REQUEST_TIME, l()),
            per_kinesis_record: histogram!(USER_RECORDS_PER_KINESIS_RECORD, l()),
            per_request: histogram!(USER_RECORDS_PER_REQUEST, l()),
            records_pending: gauge!(RECORDS_PENDING, l()),
            bytes_pending: gauge!(BYTES_PENDING, l()),
            labels,
            granularity,
        }
    }

    /// Handles for one shard's metrics.
    pub fn shard(&self, shard_id: &str) -> ShardMetrics {
        if self.granularity == MetricsGranularity::Shard {
            let mut labels = self.labels.clone();
            labels.push(Label::new("shard", shard_id.to_string()));
            ShardMetrics {
                kinesis_put: counter!(KINESIS_RECORDS_PUT, labels.clone()),
                throttles: counter!(THROTTLES, labels),
            }
        } else {
            ShardMetrics {
                kinesis_put: Counter::noop(),
                throttles: Counter::noop(),
            }
        }
    }

    /// Counts an error by code.
    pub fn error(&self, code: &str) {
        let mut labels = self.labels.clone();
        labels.push(Label::new("code", code.to_string()));
        counter!(ERRORS, labels).increment(1);
    }
}
