//! The public handle and the loop that drives the engine.
//!
//! ```text
//!  Producer (Clone) ──add()──► validate, hash, wait for buffer room ──► ingest channel
//!                                                                          │
//!        engine thread: select { ingest, I/O results, timer } ─► Engine ─► actions
//!                                                                          │
//!        tokio runtime: PutRecords / ListShards calls ──► I/O results ─────┘
//! ```
//!
//! # Backpressure
//! `add().await` waits until the producer holds fewer than `max_buffered_records` records and
//! `max_buffered_bytes` bytes (queued, in flight and awaiting retry all count); `try_add` never
//! waits and hands the record back; `add_blocking` blocks the calling thread.
//!
//! # Cancellation
//! Dropping the future returned by `add` (or [`PendingRecord`]) does not cancel the record: once
//! accepted, it is sent, and its result is counted in metrics and stats.
//!
//! # Shutdown
//! `shutdown().await` stops intake, sends everything and waits until every record is resolved;
//! after `shutdown_timeout` what is left fails with [`RecordError::ShutDown`]. Dropping the last
//! handle does the same in the background. The engine's requests run on the Tokio runtime that
//! called `build`; keep it alive until shutdown has finished.

use crate::buffer::BufferGauge;
use crate::config::{
    MetricsGranularity, Ordering, ProducerConfig, StreamRef, DEFAULT_MAX_RECORD_SIZE,
};
use crate::engine::{Action, Engine, EngineSettings, Entry, FailureCallback};
use crate::error::{AddError, BuildError, RecordError, ValidationError};
use crate::hash_key::HashKey;
use crate::kinesis::{ClientError, ClientErrorKind, Kinesis, PutRecordsResultEntry, SdkKinesis};
use crate::metrics::Metrics;
use crate::record::{PutOutcome, UserRecord};
use crate::shard_map::{ShardInfo, ShardMap};
use crate::stats::{SharedStats, Stats};
use crossbeam_channel::{Receiver, Sender};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest partition key, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Longest wait of the engine loop when nothing is scheduled.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Messages the engine takes from the ingest channel between two polls.
const INGEST_BATCH: usize = 4096;

enum Msg {
    Record(Entry),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

enum Event {
    Response(u64, Result<Vec<PutRecordsResultEntry>, ClientError>),
    ShardMap(Result<Vec<ShardInfo>, ClientError>),
}

/// The producer was shut down: `flush` or `shutdown` cannot wait for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the producer is shut down")]
pub struct ProducerClosed;

/// A cheap, cloneable handle to one producer engine. `Clone + Send + Sync`.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<Msg>,
    gauge: Arc<BufferGauge>,
    stats: Arc<SharedStats>,
    closed: AtomicBool,
    max_record_size: usize,
    record_ttl: Duration,
    stream: StreamRef,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.inner.stream)
            .finish()
    }
}

/// The future of one accepted record: resolves exactly once with its outcome.
#[derive(Debug)]
pub struct PendingRecord {
    rx: oneshot::Receiver<Result<PutOutcome, RecordError>>,
}

impl Future for PendingRecord {
    type Output = Result<PutOutcome, RecordError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            // The engine resolves every record before it stops; a dropped sender means the
            // engine thread itself died.
            r.unwrap_or(Err(RecordError::ShutDown { attempts: vec![] }))
        })
    }
}

impl Producer {
    /// A builder with every setting at its default.
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder::default()
    }

    /// The stream this producer writes to.
    pub fn stream(&self) -> &StreamRef {
        &self.inner.stream
    }

    /// The record size limit in force (data + partition key), from the stream.
    pub fn max_record_size(&self) -> usize {
        self.inner.max_record_size
    }

    /// Validates and hashes a record: everything `add` checks before queueing.
    fn prepare(
        &self,
        record: UserRecord,
        reply: Option<crate::engine::Reply>,
    ) -> Result<Entry, AddError> {
        if self.inner.closed.load(AtomicOrdering::Acquire) {
            return Err(AddError::ShutDown { record });
        }
        match validate(
            &record,
            self.inner.max_record_size,
            self.inner.gauge.max_bytes,
        ) {
            Ok(hash_key) => Ok(Entry::new(
                record,
                hash_key,
                Instant::now(),
                self.inner.record_ttl,
                reply,
            )),
            Err(error) => Err(AddError::Invalid { error, record }),
        }
    }

    fn send(&self, entry: Entry) -> Result<(), AddError> {
        // An `add` that waited for room while `shutdown()` ran must not slip in after the
        // engine stopped (it would never be counted, and an untracked record would vanish).
        if self.inner.closed.load(AtomicOrdering::Acquire) {
            self.inner.gauge.release(1, entry.record.size());
            return Err(AddError::ShutDown {
                record: entry.record,
            });
        }
        self.inner.tx.send(Msg::Record(entry)).map_err(|e| {
            let Msg::Record(entry) = e.into_inner() else {
                unreachable!("sent a record")
            };
            self.inner.gauge.release(1, entry.record.size());
            AddError::ShutDown {
                record: entry.record,
            }
        })
    }

    /// Adds a record, waiting for buffer room. Returns the record's future.
    pub async fn add(&self, record: UserRecord) -> Result<PendingRecord, AddError> {
        let (tx, rx) = oneshot::channel();
        let entry = self.prepare(record, Some(tx))?;
        self.inner.gauge.acquire(entry.record.size()).await;
        self.send(entry)?;
        Ok(PendingRecord { rx })
    }

    /// Adds a record if there is buffer room now; otherwise hands it back in
    /// [`AddError::BufferFull`]. Never waits.
    pub fn try_add(&self, record: UserRecord) -> Result<PendingRecord, AddError> {
        let (tx, rx) = oneshot::channel();
        let entry = self.prepare(record, Some(tx))?;
        if !self.inner.gauge.try_acquire(entry.record.size()) {
            let g = &self.inner.gauge;
            return Err(AddError::BufferFull {
                buffered_records: g.records_held(),
                buffered_bytes: g.bytes_held(),
                max_records: g.max_records,
                max_bytes: g.max_bytes,
                record: entry.record,
            });
        }
        self.send(entry)?;
        Ok(PendingRecord { rx })
    }

    /// Adds a record from a thread outside an async runtime, blocking it while the buffer is
    /// full. Do not call it from inside an async task (it would block the runtime's thread).
    pub fn add_blocking(&self, record: UserRecord) -> Result<PendingRecord, AddError> {
        futures::executor::block_on(self.add(record))
    }

    /// Fire and forget: adds a record without a per-record future (the fastest path). Waits
    /// for buffer room like `add`. Failures reach metrics, stats and the builder's
    /// `on_untracked_failure` callback.
    pub async fn add_untracked(&self, record: UserRecord) -> Result<(), AddError> {
        let entry = self.prepare(record, None)?;
        self.inner.gauge.acquire(entry.record.size()).await;
        self.send(entry)
    }

    /// Sends everything buffered now and waits until every record added before this call is
    /// resolved (stored or failed).
    pub async fn flush(&self) -> Result<(), ProducerClosed> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Flush(tx))
            .map_err(|_| ProducerClosed)?;
        rx.await.map_err(|_| ProducerClosed)
    }

    /// Stops intake, sends everything and waits until every record is resolved (or
    /// `shutdown_timeout` passes, after which the rest fail with [`RecordError::ShutDown`]).
    /// Other handles get [`AddError::ShutDown`] from then on.
    pub async fn shutdown(&self) -> Result<(), ProducerClosed> {
        self.inner.closed.store(true, AtomicOrdering::Release);
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Shutdown(tx))
            .map_err(|_| ProducerClosed)?;
        rx.await.map_err(|_| ProducerClosed)
    }

    /// A snapshot of the producer's counters.
    pub fn stats(&self) -> Stats {
        let g = &self.inner.gauge;
        self.inner
            .stats
            .snapshot(g.records_held() as u64, g.bytes_held() as u64)
    }
}

/// Checks a record against the Kinesis limits and returns its hash key.
pub(crate) fn validate(
    record: &UserRecord,
    max_record_size: usize,
    max_buffered_bytes: usize,
) -> Result<HashKey, ValidationError> {
    let key = &record.partition_key;
    if key.is_empty() {
        return Err(ValidationError::PartitionKeyEmpty);
    }
    // A key of at most 256 bytes has at most 256 characters: count only longer ones.
    if key.len() > MAX_PARTITION_KEY_CHARS {
        let chars = key.chars().count();
        if chars > MAX_PARTITION_KEY_CHARS {
            return Err(ValidationError::PartitionKeyTooLong {
                chars,
                limit: MAX_PARTITION_KEY_CHARS,
            });
        }
    }
    let size = record.size();
    if size > max_record_size {
        return Err(ValidationError::RecordTooLarge {
            data_bytes: record.data.len(),
            key_bytes: key.len(),
            size,
            limit: max_record_size,
        });
    }
    if size > max_buffered_bytes {
        return Err(ValidationError::LargerThanBuffer {
            size,
            limit: max_buffered_bytes,
        });
    }
    match &record.explicit_hash_key {
        Some(ehk) => {
            HashKey::parse_explicit(ehk).map_err(|reason| ValidationError::ExplicitHashKey {
                value: ehk.chars().take(64).collect(),
                reason,
            })
        }
        None => Ok(HashKey::from_partition_key(key)),
    }
}

/// Builds a [`Producer`]; every setting has a `DEFAULT_*` constant in [`crate::config`].
#[derive(Default)]
pub struct ProducerBuilder {
    config: ProducerConfig,
    on_failure: Option<FailureCallback>,
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
        /// Most Kinesis records per PutRecords request (1..=500).
        max_records_per_request: usize;
        /// Most bytes per request, data + partition keys (default 5 MiB, at most 10 MiB).
        max_request_bytes: usize;
        /// Longest a record waits to be batched (default 100 ms).
        max_buffered_time: Duration;
        /// Time-to-live of a record, retries included (default 30 s).
        record_ttl: Duration;
        /// Share of each shard's limits to use, percent (default 100).
        rate_limit_percent: u32;
        /// Per-shard rate limiting on or off (default on).
        rate_limiting: bool;
        /// Most requests in flight at once.
        max_in_flight: usize;
        /// Timeout of one request.
        request_timeout: Duration;
        /// Most user records held.
        max_buffered_records: usize;
        /// Most bytes held.
        max_buffered_bytes: usize;
        /// Ordering guarantee (default none).
        ordering: Ordering;
        /// Period of shard map refreshes.
        shard_map_refresh_interval: Duration;
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

    /// Builds with shared AWS configuration (region, credentials, endpoint), SDK retries off.
    pub async fn build(self, sdk_config: &aws_config::SdkConfig) -> Result<Producer, BuildError> {
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
        let max_record_size = summary
            .max_record_size_kib
            .map_or(DEFAULT_MAX_RECORD_SIZE, |k| k as usize * 1024)
            .min(config.max_request_bytes);
        config.validate_for_stream(max_record_size)?;

        let now = Instant::now();
        let gauge = Arc::new(BufferGauge::new(
            config.max_buffered_records,
            config.max_buffered_bytes,
        ));
        let stats = SharedStats::new(now);
        let metrics = Metrics::new(stream.as_str(), config.metrics_granularity);
        let mut settings = EngineSettings::new(&config, stream.clone(), !summary.auto_distribution);
        settings.on_failure = self.on_failure;
        let engine = Engine::new(settings, map, gauge.clone(), stats.clone(), metrics, now);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let driver = Driver {
            engine,
            kinesis,
            runtime,
            events_tx,
            request_timeout: timeout,
            stream: stream.clone(),
        };
        std::thread::Builder::new()
            .name(format!("kinesis-producer:{}", stream.as_str()))
            .spawn(move || driver.run(rx, events_rx))
            .map_err(|e| BuildError::Kinesis {
                operation: "spawn",
                code: "ThreadSpawn".into(),
                message: e.to_string(),
            })?;
        Ok(Producer {
            inner: Arc::new(Inner {
                tx,
                gauge,
                stats,
                closed: AtomicBool::new(false),
                max_record_size,
                record_ttl: config.record_ttl,
                stream,
            }),
        })
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(ClientError::new(
            ClientErrorKind::Timeout,
            format!("no answer within {timeout:?}"),
        ))
    })
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

/// The engine's thread: moves messages in, performs actions, sleeps until the next deadline.
struct Driver {
    engine: Engine,
    kinesis: Arc<dyn Kinesis>,
    runtime: tokio::runtime::Handle,
    events_tx: Sender<Event>,
    request_timeout: Duration,
    stream: StreamRef,
}

/// Sends a "cancelled" result if a request's task is dropped before it answers (the runtime
/// shut down), so the engine never waits for a response that cannot come.
struct ResponseGuard {
    id: u64,
    tx: Option<Sender<Event>>,
}

impl ResponseGuard {
    fn send(mut self, result: Result<Vec<PutRecordsResultEntry>, ClientError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Event::Response(self.id, result));
        }
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let e = ClientError::new(
                ClientErrorKind::Cancelled,
                "the Tokio runtime shut down during the request",
            );
            let _ = tx.send(Event::Response(self.id, Err(e)));
        }
    }
}

impl Driver {
    fn run(mut self, ingest: Receiver<Msg>, events: Receiver<Event>) {
        let mut ingest = Some(ingest);
        let mut actions = Vec::new();
        loop {
            let now = Instant::now();
            self.engine.poll(now, &mut actions);
            for action in actions.drain(..) {
                self.perform(action);
            }
            if self.engine.is_finished() {
                break;
            }
            let wait = self.engine.next_deadline().map_or(IDLE_WAIT, |d| {
                d.saturating_duration_since(Instant::now()).min(IDLE_WAIT)
            });
            let never = crossbeam_channel::never();
            let intake = ingest.as_ref().unwrap_or(&never);
            crossbeam_channel::select! {
                recv(intake) -> msg => match msg {
                    Ok(msg) => {
                        let now = Instant::now();
                        self.on_msg(msg, now);
                        for _ in 0..INGEST_BATCH {
                            match intake.try_recv() {
                                Ok(msg) => self.on_msg(msg, now),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => {
                        // Every handle is gone: drain in the background, then stop.
                        ingest = None;
                        self.engine.on_shutdown(None, Instant::now());
                    }
                },
                recv(events) -> ev => {
                    if let Ok(ev) = ev {
                        self.on_event(ev);
                        while let Ok(ev) = events.try_recv() {
                            self.on_event(ev);
                        }
                    }
                },
                default(wait) => {}
            }
        }
    }

    fn on_msg(&mut self, msg: Msg, now: Instant) {
        match msg {
            Msg::Record(entry) => self.engine.on_record(entry, now),
            Msg::Flush(reply) => self.engine.on_flush(reply),
            Msg::Shutdown(reply) => self.engine.on_shutdown(Some(reply), now),
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Response(id, result) => self.engine.on_response(id, result, now),
            Event::ShardMap(result) => self.engine.on_shard_map(result, now),
        }
    }

    fn perform(&self, action: Action) {
        let kinesis = self.kinesis.clone();
        let tx = self.events_tx.clone();
        let timeout = self.request_timeout;
        match action {
            Action::Send { id, request } => {
                let guard = ResponseGuard { id, tx: Some(tx) };
                self.runtime.spawn(async move {
                    let result = with_timeout(timeout, kinesis.put_records(request)).await;
                    guard.send(result);
                });
            }
            Action::RefreshShardMap => {
                let stream = self.stream.clone();
                self.runtime.spawn(async move {
                    let result = with_timeout(timeout, kinesis.list_shards(&stream)).await;
                    let _ = tx.send(Event::ShardMap(result));
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn producer_is_clone_send_sync() {
        assert_send_sync_clone::<Producer>();
    }

    #[test]
    fn validation_names_field_size_and_limit() {
        let v = |r: &UserRecord| validate(r, 1 << 20, 64 << 20);
        assert_eq!(
            v(&UserRecord::new("", "x")),
            Err(ValidationError::PartitionKeyEmpty)
        );
        let long = "k".repeat(257);
        let err = v(&UserRecord::new(long, "x")).unwrap_err();
        assert_eq!(
            err,
            ValidationError::PartitionKeyTooLong {
                chars: 257,
                limit: 256
            }
        );
        assert!(err.to_string().contains("257") && err.to_string().contains("256"));
        // 256 four-byte characters: 1,024 bytes but within the character limit.
        assert!(v(&UserRecord::new("😀".repeat(256), "x")).is_ok());
        assert!(
            v(&UserRecord::new("\0\u{1}\t", "")).is_ok(),
            "control characters and empty data are allowed"
        );
        let at_limit = UserRecord::new("k", vec![0u8; (1 << 20) - 1]);
        assert!(v(&at_limit).is_ok());
        let over = UserRecord::new("k", vec![0u8; 1 << 20]);
        let err = v(&over).unwrap_err().to_string();
        assert!(err.contains("1048577") && err.contains("1048576"), "{err}");
        for bad in [
            "-1",
            "340282366920938463463374607431768211456",
            "abc",
            " 1",
            "",
        ] {
            let r = UserRecord::new("k", "x").with_explicit_hash_key(bad);
            let err = v(&r).unwrap_err().to_string();
            assert!(err.contains("explicit_hash_key"), "{err}");
        }
        let r = UserRecord::new("k", "x")
            .with_explicit_hash_key("340282366920938463463374607431768211455");
        assert_eq!(v(&r), Ok(HashKey(u128::MAX)));
        assert!(matches!(
            validate(&UserRecord::new("k", vec![0u8; 100]), 1 << 20, 50),
            Err(ValidationError::LargerThanBuffer {
                size: 101,
                limit: 50
            })
        ));
    }
}
