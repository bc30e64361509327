//! What the engine is configured with: the producer's settings and what the stream's settings
//! make of them (aggregation, prediction, limits in force).

use crate::config::{ProducerConfig, StreamRef};
use crate::error::RecordLimitFrom;
use crate::limits::{SHARD_BYTES_PER_SEC, SHARD_RECORDS_PER_SEC};
use crate::producer::FailureCallback;
use crate::stream_settings::{LiveSettings, RecordLimit, StreamSettings};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// What the engine needs: the configuration, plus what was derived from it and the stream.
#[derive(Clone)]
pub(crate) struct EngineSettings {
    pub config: ProducerConfig,
    pub stream: StreamRef,
    /// Aggregate: configured, and the stream's distribution is not `AUTO`.
    pub aggregation: bool,
    /// Records/s and bytes/s allowed per shard; `None`: unlimited.
    pub shard_rate: Option<(f64, f64)>,
    /// `false` when the stream's record distribution is `AUTO`.
    pub predict: bool,
    /// The record size limit in force (data + partition key).
    pub record_limit: RecordLimit,
    /// The request byte limit in force (data + partition keys).
    pub request_bytes: usize,
    /// Largest aggregate: `aggregation_max_size`, or under per-shard ordering (one Kinesis
    /// record per shard per round trip) [`ORDERED_AGGREGATE_MAX`]: an aggregate then grows with
    /// the round trip and carries a shard's rate.
    pub aggregate_max: usize,
    /// The stream's settings as last read.
    pub stream_settings: StreamSettings,
    /// Where the settings in force are published for `add` and `stats()`.
    pub live: Arc<LiveSettings>,
    pub on_failure: Option<FailureCallback>,
    pub dead_letters: Option<crate::dead_letter::DeadLetterSender>,
    /// Requests in flight, counted across every stream the producer serves: the in-flight
    /// limit holds for all of them together.
    pub requests: Arc<AtomicUsize>,
}

impl EngineSettings {
    pub fn new(
        config: &ProducerConfig,
        stream: StreamRef,
        stream_settings: StreamSettings,
        live: Arc<LiveSettings>,
    ) -> Self {
        let pct = config.rate_limit_percent as f64 / 100.0;
        let predict = !stream_settings.auto_distribution;
        let mut s = EngineSettings {
            config: config.clone(),
            stream,
            // Under AUTO distribution records land anywhere, and KCL drops sub-records that
            // hash outside their shard: aggregation would hide records from consumers.
            aggregation: config.aggregation && predict,
            shard_rate: config.rate_limiting.then_some((
                SHARD_RECORDS_PER_SEC as f64 * pct,
                SHARD_BYTES_PER_SEC as f64 * pct,
            )),
            predict,
            // Set from the stream's settings just below.
            record_limit: RecordLimit {
                bytes: 0,
                from: RecordLimitFrom::ApiDefault,
            },
            aggregate_max: 0,
            request_bytes: 0,
            stream_settings,
            live,
            on_failure: None,
            dead_letters: None,
            requests: Arc::new(AtomicUsize::new(0)),
        };
        s.follow_limits(stream_settings);
        s
    }

    /// Takes the limits of the stream's settings as last read: the request and record limits
    /// in force, and the largest aggregate.
    pub fn follow_limits(&mut self, settings: StreamSettings) {
        self.stream_settings = settings;
        self.request_bytes = self
            .config
            .request_bytes_for(settings.stream_record_limit());
        self.record_limit = settings.record_limit(self.request_bytes);
        self.aggregate_max = aggregate_max(&self.config, self.record_limit);
    }
}

/// Largest aggregate under per-shard ordering: a quarter of a shard's bytes per second, so that
/// one aggregate per round trip carries the shard's full rate up to a 250 ms round trip while
/// several still fit in a second's budget (an aggregate the size of the whole budget is
/// throttled whenever the service's accounting and the limiter's disagree by a little).
pub(crate) const ORDERED_AGGREGATE_MAX: usize = SHARD_BYTES_PER_SEC as usize / 4;

/// See [`EngineSettings::aggregate_max`].
pub(crate) fn aggregate_max(config: &ProducerConfig, limit: RecordLimit) -> usize {
    match config.ordering {
        crate::config::Ordering::PerShard => config
            .aggregation_max_size
            .max(limit.bytes.min(ORDERED_AGGREGATE_MAX)),
        crate::config::Ordering::None => config.aggregation_max_size,
    }
}
