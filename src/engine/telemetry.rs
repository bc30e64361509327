//! Telemetry: turns each engine event into its `stats()` counters, its `metrics` and, for a
//! fire-and-forget record that fails, the user's callback, so the engine names an event once
//! instead of updating three sinks side by side.
//!
//! It also writes `tracing` events (target `kinesis_producer`; the library installs no
//! subscriber): a shard map refreshed (shard counts before and after), the stream's settings
//! changed, stranded sub-records re-sent, the endpoint back-off entered and left (a warning), and,
//! at most once per stats period, throttling (the stream's total and the most throttled shards)
//! and records expired (a warning). Nothing is written per record.

use super::entry::Entry;
use crate::config::StreamRef;
use crate::dead_letter::{DeadLetter, DeadLetterSender};
use crate::error::RecordError;
use crate::metrics::{Metrics, ShardMetrics};
use crate::producer::FailureCallback;
use crate::stats::{ShardStats, SharedStats};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often per-shard stats are published to handles.
pub(super) const STATS_PERIOD: Duration = Duration::from_secs(1);
/// Most shards named in one throttling event.
const THROTTLED_SHARDS_LOGGED: usize = 5;

pub(super) struct Telemetry {
    pub(super) stats: Arc<SharedStats>,
    metrics: Metrics,
    on_failure: Option<FailureCallback>,
    /// When per-shard stats were last published.
    pub last_published: Instant,
    /// Throttles and expiries as of the last event about them.
    logged: (u64, u64),
    stream: Arc<str>,
    dead_letters: Option<(StreamRef, DeadLetterSender)>,
}

/// One shard's counters and metric handles.
pub(super) struct ShardTelemetry {
    pub stats: ShardStats,
    metrics: ShardMetrics,
}

impl Telemetry {
    pub fn new(
        stream: &str,
        stats: Arc<SharedStats>,
        metrics: Metrics,
        on_failure: Option<FailureCallback>,
        now: Instant,
    ) -> Self {
        Telemetry {
            stats,
            metrics,
            on_failure,
            last_published: now,
            logged: (0, 0),
            stream: stream.into(),
            dead_letters: None,
        }
    }

    /// Failed records go to this channel too.
    pub fn set_dead_letters(&mut self, stream: StreamRef, tx: DeadLetterSender) {
        self.dead_letters = Some((stream, tx));
    }

    /// Counters and handles for a shard new to the map.
    pub fn shard(&self, shard_id: &str) -> ShardTelemetry {
        ShardTelemetry {
            // `rate_factor` comes from the stream's rate controller when the stats are published.
            stats: ShardStats {
                shard_id: shard_id.to_string(),
                ..Default::default()
            },
            metrics: self.metrics.shard(shard_id),
        }
    }

    pub fn received(&self) {
        SharedStats::add(&self.stats.records_received, 1);
        self.metrics.received.increment(1);
    }

    /// A Kinesis record of `user_records` user records, the oldest buffered for `buffered`,
    /// goes into a request.
    pub fn packed(&self, user_records: usize, buffered: Duration) {
        self.metrics.buffering_time.record(buffered.as_secs_f64());
        self.metrics.per_kinesis_record.record(user_records as f64);
    }

    /// A request of `user_records` user records left for the service.
    pub fn dispatched(&self, user_records: usize) {
        self.metrics.per_request.record(user_records as f64);
    }

    /// A request was answered (with any outcome) after `took`.
    pub fn answered(&self, took: Duration) {
        SharedStats::add(&self.stats.requests, 1);
        self.metrics.requests.increment(1);
        self.metrics.request_time.record(took.as_secs_f64());
    }

    pub fn error(&self, code: &str) {
        self.metrics.error(code);
    }

    /// A Kinesis record of `size` bytes was stored (on a shard the map knows, if `shard`).
    pub fn stored(&self, size: usize, shard: Option<&mut ShardTelemetry>) {
        SharedStats::add(&self.stats.kinesis_records_put, 1);
        SharedStats::add(&self.stats.bytes_put, size as u64);
        self.metrics.kinesis_put.increment(1);
        self.metrics.bytes_put.increment(size as u64);
        if let Some(st) = shard {
            st.stats.kinesis_records_put += 1;
            st.stats.bytes_put += size as u64;
            st.metrics.kinesis_put.increment(1);
        }
    }

    /// The service throttled a Kinesis record of `shard`.
    pub fn throttled(&self, shard: &mut ShardTelemetry) {
        shard.stats.throttles += 1;
        shard.metrics.throttles.increment(1);
        SharedStats::add(&self.stats.throttles, 1);
        self.metrics.throttles.increment(1);
    }

    /// `n` user records were stored.
    pub fn put(&self, n: usize) {
        SharedStats::add(&self.stats.records_put, n as u64);
        self.metrics.put.increment(n as u64);
    }

    /// A user record finally failed: an untracked one goes to the callback, every one to the
    /// dead-letter channel (never waiting for it).
    pub fn failed(&self, e: &Entry, error: &RecordError) {
        SharedStats::add(&self.stats.records_failed, 1);
        self.metrics.failed.increment(1);
        let callback = self.on_failure.as_ref().filter(|_| e.reply.is_none());
        if callback.is_none() && self.dead_letters.is_none() {
            return;
        }
        // Rebuilt once from the entry's parts, for the callback and the dead letter alike.
        let record = e.record();
        if let Some(cb) = callback {
            cb(&record, error);
        }
        if let Some((stream, tx)) = &self.dead_letters {
            let letter = DeadLetter {
                stream: stream.clone(),
                record,
                hash_key: e.hash_key,
                error: error.clone(),
            };
            let counter = match tx.try_send(letter) {
                Ok(()) => &self.stats.dead_letters_sent,
                Err(_) => &self.stats.dead_letters_dropped,
            };
            SharedStats::add(counter, 1);
        }
    }

    /// Of the failed, one whose TTL ran out.
    pub fn expired(&self) {
        SharedStats::add(&self.stats.records_expired, 1);
        self.metrics.expired.increment(1);
    }

    /// `n` user records go out again after an attempt whose outcome is unknown.
    pub fn possible_duplicates(&self, n: usize) {
        SharedStats::add(&self.stats.possible_duplicates, n as u64);
        self.metrics.possible_duplicates.increment(n as u64);
    }

    pub fn retried(&self, n: usize) {
        SharedStats::add(&self.stats.retries, n as u64);
        self.metrics.retries.increment(n as u64);
    }

    /// A sub-record stored outside its shard's range is sent again.
    /// `n` sub-records of one aggregate stored on `shard` lie outside its range: re-sent.
    pub fn stranded(&self, n: usize, shard: &str) {
        SharedStats::add(&self.stats.stranded_resent, n as u64);
        self.metrics.stranded.increment(n as u64);
        tracing::info!(
            stream = &*self.stream,
            shard,
            stranded = n,
            "sub-records of an aggregate stored outside their shard's range: re-sent plain"
        );
    }

    /// The endpoint back-off started (`Some(delay)`) or ended (`None`).
    pub fn endpoint_backoff(&self, delay: Option<Duration>) {
        match delay {
            Some(delay) => tracing::warn!(
                stream = &*self.stream,
                ?delay,
                "endpoint failing: requests paused (back-off entered)"
            ),
            None => tracing::info!(stream = &*self.stream, "endpoint answering: back-off left"),
        }
    }

    /// A stream met on its first record was read: it has `shards` open shards.
    pub fn discovered(&self, shards: usize) {
        tracing::info!(stream = &*self.stream, shards, "stream discovered");
    }

    /// A stream met on its first record cannot be used: its records fail with the error.
    pub fn discovery_failed(&self, code: &str, message: &str) {
        tracing::warn!(
            stream = &*self.stream,
            code,
            error = message,
            "stream cannot be used: its records fail"
        );
    }

    /// An idle stream's state was released.
    pub fn released(&self) {
        tracing::info!(stream = &*self.stream, "idle stream released");
    }

    pub fn mispredicted(&self) {
        self.metrics.mispredictions.increment(1);
    }

    /// The stream's settings changed to these.
    pub fn settings_changed(&self, auto_distribution: bool, record_limit: usize) {
        self.metrics.settings_changes.increment(1);
        self.settings(auto_distribution, record_limit);
        tracing::info!(
            stream = &*self.stream,
            record_distribution = if auto_distribution {
                "AUTO"
            } else {
                "USER_PARTITION_KEY"
            },
            record_size_limit = record_limit,
            "stream settings changed"
        );
    }

    /// The settings in force, as gauges.
    pub fn settings(&self, auto_distribution: bool, record_limit: usize) {
        self.metrics.record_size_limit.set(record_limit as f64);
        self.metrics
            .auto_distribution
            .set(if auto_distribution { 1.0 } else { 0.0 });
    }

    pub fn map_refreshed(&self, open_before: usize, open_after: usize) {
        SharedStats::add(&self.stats.shard_map_refreshes, 1);
        self.metrics.refreshes.increment(1);
        if open_before == open_after {
            tracing::debug!(
                stream = &*self.stream,
                shards = open_after,
                "shard map refreshed"
            );
        } else {
            tracing::info!(
                stream = &*self.stream,
                shards_before = open_before,
                shards_after = open_after,
                "shard map refreshed: open shards changed"
            );
        }
    }

    /// Publishes per-shard stats to handles and the pending gauges to metrics.
    pub fn publish(
        &mut self,
        shards: impl Iterator<Item = ShardStats>,
        held: usize,
        bytes: usize,
        now: Instant,
    ) {
        self.last_published = now;
        let shards: Vec<ShardStats> = shards.collect();
        let stats = self.stats.clone();
        if let Ok(mut guard) = stats.shards.lock() {
            let previous = std::mem::replace(&mut *guard, shards);
            self.log_period(&previous, &guard);
        }
        self.metrics.records_pending.set(held as f64);
        self.metrics.bytes_pending.set(bytes as f64);
    }

    /// Throttling and expiry since the last period, one event each at most.
    fn log_period(&mut self, previous: &[ShardStats], now: &[ShardStats]) {
        let throttles = self
            .stats
            .throttles
            .load(std::sync::atomic::Ordering::Relaxed);
        let expired = self
            .stats
            .records_expired
            .load(std::sync::atomic::Ordering::Relaxed);
        if throttles > self.logged.0 {
            let before: std::collections::HashMap<&str, u64> = previous
                .iter()
                .map(|s| (s.shard_id.as_str(), s.throttles))
                .collect();
            let mut rising: Vec<(u64, &str)> = now
                .iter()
                .filter_map(|s| {
                    let d = s.throttles - before.get(s.shard_id.as_str()).copied().unwrap_or(0);
                    (d > 0).then_some((d, s.shard_id.as_str()))
                })
                .collect();
            rising.sort_unstable_by(|a, b| b.cmp(a));
            let shards = rising.len();
            rising.truncate(THROTTLED_SHARDS_LOGGED);
            // Expected at the stream's limit: information, not a warning.
            tracing::info!(
                stream = &*self.stream,
                throttled = throttles - self.logged.0,
                shards,
                most = ?rising,
                "Kinesis records throttled by the service (ProvisionedThroughputExceeded)"
            );
        }
        if expired > self.logged.1 {
            tracing::warn!(
                stream = &*self.stream,
                expired = expired - self.logged.1,
                "records expired before they were stored (record_ttl)"
            );
        }
        self.logged = (throttles, expired);
    }
}
