//! [`ProducerBuilder`]: settings, then `build`: read the stream's summary and shard map, start
//! the engine's thread, hand back the [`Producer`].

use super::driver::{with_timeout, Driver, Shared};
use super::streams::{Registry, StreamEntry};
use super::{FailureCallback, Inner, Producer};
use crate::buffer::BufferGauge;
use crate::config::{AggregationScope, MetricsGranularity, Ordering, ProducerConfig, StreamRef};
use crate::dead_letter::DeadLetterSender;
use crate::engine::{Engine, EngineSettings};
use crate::error::{BuildError, RecordError, RecordLimitFrom};
use crate::kinesis::{ClientError, ClientErrorKind, Kinesis, SdkKinesis};
use crate::limits::MAX_REQUEST_BYTES;
use crate::metrics::Metrics;
use crate::record::UserRecord;
use crate::shard_map::ShardMap;
use crate::stats::SharedStats;
use crate::stream_settings::{LiveSettings, RecordLimit, StreamSettings};
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Builds a [`Producer`]; every setting has a `DEFAULT_*` constant in [`crate::config`].
#[derive(Default)]
pub struct ProducerBuilder {
    config: ProducerConfig,
    on_failure: Option<FailureCallback>,
    dead_letters: Option<DeadLetterSender>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl ProducerBuilder {
    /// The stream, by name (any non-empty string).
    pub fn stream_name(mut self, name: impl Into<String>) -> Self {
        self.config.stream = Some(StreamRef::Name(name.into()));
        self
    }

    /// The stream, by ARN.
    pub fn stream_arn(mut self, arn: impl Into<String>) -> Self {
        self.config.stream = Some(StreamRef::Arn(arn.into()));
        self
    }

    /// Most bytes per request, data + partition keys (at most 10 MiB). Unset, the producer
    /// follows the service: 10 MiB where the stream allows records over 1 MiB, else 5 MiB.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes = Some(bytes);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: ProducerConfig) -> Self {
        self.config = config;
        self
    }

    setters! {
        /// KPL aggregation on or off (default on).
        aggregation: bool;
        /// Largest aggregate in bytes (data + outer partition key; default 51,200).
        aggregation_max_size: usize;
        /// Most user records per aggregate.
        aggregation_max_count: usize;
        /// Which records share an aggregate (default [`AggregationScope::Shard`]);
        /// [`AggregationScope::PartitionKey`]: only records of one partition key, whose outer
        /// record carries that key.
        aggregation_scope: AggregationScope;
        /// Most Kinesis records per PutRecords request (1..=500).
        max_records_per_request: usize;
        /// Longest a record waits to be batched (default 100 ms).
        max_buffered_time: Duration;
        /// Time-to-live of a record, retries included (default 30 s).
        record_ttl: Duration;
        /// Share of each shard's limits to use, percent (default 100).
        rate_limit_percent: u32;
        /// Per-shard rate limiting on or off (default on).
        rate_limiting: bool;
        /// Adapt the rate to producers sharing the stream (default on).
        adaptive_rate: bool;
        /// Most requests in flight at once.
        max_in_flight: usize;
        /// Timeout of one request (the shortest, with adaptive concurrency).
        request_timeout: Duration;
        /// Adapt the in-flight limit and the timeout to the endpoint's latency (default on).
        adaptive_concurrency: bool;
        /// Most user records held.
        max_buffered_records: usize;
        /// Most bytes held.
        max_buffered_bytes: usize;
        /// Ordering guarantee (default none).
        ordering: Ordering;
        /// Period of shard map refreshes.
        shard_map_refresh_interval: Duration;
        /// Period of stream settings reads (default 60 s, jittered).
        stream_settings_refresh_interval: Duration;
        /// How long another stream goes without records before its state is released
        /// (default 5 minutes).
        stream_idle_timeout: Duration;
        /// Labels on metrics.
        metrics_granularity: MetricsGranularity;
        /// How long shutdown waits before failing what is left.
        shutdown_timeout: Duration;
    }

    /// Called with each fire-and-forget record that fails (on the engine thread: keep it short).
    pub fn on_untracked_failure(
        mut self,
        f: impl Fn(&UserRecord, &RecordError) + Send + Sync + 'static,
    ) -> Self {
        self.on_failure = Some(Arc::new(f));
        self
    }

    /// Every record that finally fails, tracked or not, is offered once to this channel with its
    /// error (see [`crate::dead_letter`]): bounded, never waited for; what it cannot take is
    /// counted in `stats().dead_letters_dropped`.
    pub fn dead_letters(mut self, tx: DeadLetterSender) -> Self {
        self.dead_letters = Some(tx);
        self
    }

    /// Builds with shared AWS configuration (region, credentials, endpoint), SDK retries off.
    pub async fn build(self, sdk_config: &aws_types::SdkConfig) -> Result<Producer, BuildError> {
        self.kinesis(Arc::new(SdkKinesis::from_sdk_config(sdk_config)))
            .await
    }

    /// Builds with an existing client (its configuration is reused with SDK retries off).
    pub async fn client(self, client: aws_sdk_kinesis::Client) -> Result<Producer, BuildError> {
        self.kinesis(Arc::new(SdkKinesis::new(&client))).await
    }

    /// Builds over any implementation of the I/O seam (tests, other transports).
    pub async fn kinesis(self, kinesis: Arc<dyn Kinesis>) -> Result<Producer, BuildError> {
        let config = self.config;
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let stream = config.stream.clone().expect("validated");
        let timeout = config.request_timeout;
        let build_error = |operation: &'static str, e: ClientError| match e.code.as_deref() {
            Some("ResourceNotFoundException") => BuildError::StreamNotFound {
                stream: stream.as_str().to_string(),
                message: e.message.to_string(),
            },
            _ => BuildError::Kinesis {
                operation,
                code: e.code_or_kind().to_string(),
                message: e.message.to_string(),
            },
        };
        let summary = startup_call(timeout, || kinesis.describe_stream_summary(&stream))
            .await
            .map_err(|e| build_error("DescribeStreamSummary", e))?;
        let shards = startup_call(timeout, || kinesis.list_shards(&stream))
            .await
            .map_err(|e| build_error("ListShards", e))?;
        let map = ShardMap::new(shards);
        if map.is_empty() {
            return Err(BuildError::Kinesis {
                operation: "ListShards",
                code: "NoOpenShards".into(),
                message: format!(
                    "stream {} has no open shard (status {})",
                    stream.as_str(),
                    summary.status
                ),
            });
        }
        let stream_settings = StreamSettings::from_summary(&summary);
        let request_bytes = config.request_bytes_for(stream_settings.stream_record_limit());
        let record_limit = stream_settings.record_limit(request_bytes);
        config.validate_for_stream(record_limit.bytes)?;
        let live = Arc::new(LiveSettings::new(stream_settings, record_limit));

        tracing::info!(
            stream = stream.as_str(),
            shards = map.len(),
            record_distribution = if summary.auto_distribution {
                "AUTO"
            } else {
                "USER_PARTITION_KEY"
            },
            record_size_limit = record_limit.bytes,
            "producer started"
        );
        let now = Instant::now();
        let gauge = Arc::new(BufferGauge::new(
            config.max_buffered_records,
            config.max_buffered_bytes,
        ));
        let stats = SharedStats::new(now);
        let metrics = Metrics::new(stream.as_str(), config.metrics_granularity);
        let mut settings =
            EngineSettings::new(&config, stream.clone(), stream_settings, live.clone());
        settings.on_failure = self.on_failure.clone();
        settings.dead_letters = self.dead_letters.clone();
        let registry = Arc::new(Registry::default());
        registry.insert(StreamEntry {
            name: stream.as_str().into(),
            stats: stats.clone(),
            live: live.clone(),
        });
        let shared = Shared {
            requests: settings.requests.clone(),
            config: config.clone(),
            gauge: gauge.clone(),
            kinesis,
            runtime,
            on_failure: self.on_failure,
            dead_letters: self.dead_letters,
            registry: registry.clone(),
        };
        let engine = Engine::new(settings, map, gauge.clone(), stats.clone(), metrics, now);
        let tx =
            Driver::spawn(shared, engine, stream.clone()).map_err(|e| BuildError::Kinesis {
                operation: "spawn",
                code: "ThreadSpawn".into(),
                message: e.to_string(),
            })?;
        Ok(Producer {
            inner: Arc::new(Inner {
                tx,
                gauge,
                registry,
                closed: AtomicBool::new(false),
                live,
                any_stream_limit: RecordLimit {
                    bytes: config.request_bytes_for(MAX_REQUEST_BYTES),
                    from: RecordLimitFrom::MaxRequestBytes,
                },
                stream,
            }),
        })
    }
}

/// Attempts of a start-up call (DescribeStreamSummary, ListShards) before `build` gives up.
const STARTUP_ATTEMPTS: usize = 4;

/// A start-up call, retried with back-off on transient errors (5xx, throttling, a refused or
/// dropped connection) so that one hiccup does not fail `build`. Timeouts and permanent errors
/// (missing stream, credentials, access) fail at once: `build` never hangs.
async fn startup_call<T, Fut>(
    timeout: Duration,
    call: impl FnMut() -> Fut,
) -> Result<T, ClientError>
where
    Fut: Future<Output = Result<T, ClientError>>,
{
    use backon::Retryable;
    let mut call = call;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_times(STARTUP_ATTEMPTS - 1)
        .with_jitter();
    (|| with_timeout(timeout, call()))
        .retry(backoff)
        .when(|e: &ClientError| {
            !matches!(
                e.kind,
                ClientErrorKind::Timeout | ClientErrorKind::Construction
            ) && crate::retry::classify_request(e.code.as_deref(), e.status)
                != crate::retry::Decision::Fail
        })
        .await
}
