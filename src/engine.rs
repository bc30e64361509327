//! The engine: the synchronous core that owns all producer state and makes every decision.
//!
//! ```text
//!  on_record ──► shard queue ──► aggregator ──► sealed Kinesis record ──► limiter ──► collector
//!   (per predicted shard)        (optional)      (one per shard)        (per shard)     │
//!                                                                                       ▼
//!  on_response ◄── dispatch (at most max_in_flight) ◄───────────────────────────── outbox
//!     │ success: resolve futures; a record stored off its predicted shard → refresh the map
//!     │ retryable failure: back to the front of its shard's queue, shard backs off
//!     └ permanent failure: resolve with the service's error
//! ```
//!
//! The engine does no I/O and never reads the clock: every entry point takes `now`, and
//! [`Engine::poll`] returns the I/O to perform as [`Action`]s. The loop in `producer.rs` moves
//! messages, performs actions and sleeps until [`Engine::next_deadline`]; tests drive the same
//! core with a virtual clock.

use crate::aggregation::{Aggregator, TryPush};
use crate::buffer::BufferGauge;
use crate::collector::{Batch, Collector};
use crate::config::{
    Ordering, ProducerConfig, StreamRef, SHARD_BYTES_PER_SEC, SHARD_RECORDS_PER_SEC,
};
use crate::error::RecordError;
use crate::hash_key::HashKey;
use crate::kinesis::{
    ClientError, ClientErrorKind, PutRecordsEntry, PutRecordsRequest, PutRecordsResultEntry,
};
use crate::limiter::ShardLimiter;
use crate::metrics::{Metrics, ShardMetrics};
use crate::record::{Attempt, PutOutcome, UserRecord};
use crate::retry::{self, Backoff, Decision};
use crate::shard_map::{RefreshSchedule, ShardInfo, ShardMap};
use crate::stats::{ShardStats, SharedStats};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where a record's result goes.
pub(crate) type Reply = oneshot::Sender<Result<PutOutcome, RecordError>>;
/// Called with each failed fire-and-forget record.
pub type FailureCallback = Arc<dyn Fn(&UserRecord, &RecordError) + Send + Sync>;

/// How often per-shard stats are published to handles.
const STATS_PERIOD: Duration = Duration::from_secs(1);
/// Error code recorded on an attempt whose aggregate landed outside a sub-record's shard.
pub(crate) const STRANDED_CODE: &str = "SubRecordOutsideShardRange";

/// A user record held by the engine.
pub(crate) struct Entry {
    pub seq: u64,
    pub record: UserRecord,
    pub hash_key: HashKey,
    pub arrival: Instant,
    pub deadline: Instant,
    pub attempts: Vec<Attempt>,
    pub reply: Option<Reply>,
}

impl Entry {
    /// A new entry; `seq` is assigned by the engine.
    pub fn new(
        record: UserRecord,
        hash_key: HashKey,
        arrival: Instant,
        ttl: Duration,
        reply: Option<Reply>,
    ) -> Self {
        Entry {
            seq: 0,
            record,
            hash_key,
            arrival,
            deadline: retry::deadline(arrival, ttl),
            attempts: Vec::new(),
            reply,
        }
    }

    fn size(&self) -> usize {
        self.record.size()
    }
}

/// A Kinesis record: one user record, or an aggregate of user records of one predicted shard.
struct KRecord {
    shard: Arc<str>,
    entries: Vec<Entry>,
    aggregated: bool,
    wire: PutRecordsEntry,
    size: usize,
    oldest: Instant,
}

struct ShardState {
    info: ShardInfo,
    queue: VecDeque<Entry>,
    queued_bytes: usize,
    sealed: Option<KRecord>,
    limiter: ShardLimiter,
    backoff: Backoff,
    backoff_until: Option<Instant>,
    /// Kinesis records of this shard in the collector, the outbox or in flight.
    outstanding: usize,
    wake: Option<Instant>,
    stats: ShardStats,
    metrics: ShardMetrics,
}

struct InFlight {
    records: Vec<KRecord>,
    start: Instant,
}

/// An aggregate stored on a shard the map did not know yet: its sub-records are checked
/// against that shard's range once the refreshed map arrives.
struct Parked {
    record: KRecord,
    shard_id: Arc<str>,
    sequence_number: Arc<str>,
    attempt: Attempt,
}

struct FlushWaiter {
    barrier: u64,
    remaining: usize,
    reply: oneshot::Sender<()>,
}

/// I/O the engine asks the loop to perform.
pub(crate) enum Action {
    /// Send a PutRecords request; feed the result to [`Engine::on_response`] with `id`.
    Send { id: u64, request: PutRecordsRequest },
    /// Call ListShards; feed the result to [`Engine::on_shard_map`].
    RefreshShardMap,
}

/// Settings the engine needs, derived from the configuration and the stream.
#[derive(Clone)]
pub(crate) struct EngineSettings {
    pub stream: StreamRef,
    pub aggregation: bool,
    pub aggregation_max_size: usize,
    pub aggregation_max_count: usize,
    pub max_records_per_request: usize,
    pub max_request_bytes: usize,
    pub max_buffered_time: Duration,
    pub record_ttl: Duration,
    pub max_in_flight: usize,
    pub ordering: Ordering,
    pub shutdown_timeout: Duration,
    /// Records/s and bytes/s allowed per shard; `None`: unlimited.
    pub shard_rate: Option<(f64, f64)>,
    /// `false` when the stream's record distribution is `AUTO`.
    pub predict: bool,
    pub shard_map_refresh_interval: Duration,
    pub on_failure: Option<FailureCallback>,
}

impl EngineSettings {
    pub fn new(config: &ProducerConfig, stream: StreamRef, predict: bool) -> Self {
        let pct = config.rate_limit_percent as f64 / 100.0;
        EngineSettings {
            stream,
            // Under AUTO distribution records land anywhere, and KCL drops sub-records that
            // hash outside their shard: aggregation would hide records from consumers.
            aggregation: config.aggregation && predict,
            aggregation_max_size: config.aggregation_max_size,
            aggregation_max_count: config.aggregation_max_count,
            max_records_per_request: config.max_records_per_request,
            max_request_bytes: config.max_request_bytes,
            max_buffered_time: config.max_buffered_time,
            record_ttl: config.record_ttl,
            max_in_flight: config.max_in_flight,
            ordering: config.ordering,
            shutdown_timeout: config.shutdown_timeout,
            shard_rate: config.rate_limiting.then(|| {
                (
                    SHARD_RECORDS_PER_SEC as f64 * pct,
                    SHARD_BYTES_PER_SEC as f64 * pct,
                )
            }),
            predict,
            shard_map_refresh_interval: config.shard_map_refresh_interval,
            on_failure: None,
        }
    }
}

/// The producer's synchronous core.
pub(crate) struct Engine {
    s: EngineSettings,
    map: ShardMap,
    shards: Vec<ShardState>,
    index: HashMap<Arc<str>, usize>,
    aggregator: Aggregator,
    collector: Collector<KRecord>,
    outbox: VecDeque<Batch<KRecord>>,
    in_flight: HashMap<u64, InFlight>,
    next_request: u64,
    next_seq: u64,
    held: usize,
    refresh: RefreshSchedule,
    parked: Vec<Parked>,
    flushes: Vec<FlushWaiter>,
    shutdown: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    global_backoff: Backoff,
    global_backoff_until: Option<Instant>,
    round_robin: usize,
    last_stats: Instant,
    gauge: Arc<BufferGauge>,
    stats: Arc<SharedStats>,
    metrics: Metrics,
    scratch: Vec<Entry>,
}

impl Engine {
    pub fn new(
        s: EngineSettings,
        map: ShardMap,
        gauge: Arc<BufferGauge>,
        stats: Arc<SharedStats>,
        metrics: Metrics,
        now: Instant,
    ) -> Self {
        let mut engine = Engine {
            aggregator: Aggregator::new(s.aggregation_max_size, s.aggregation_max_count),
            collector: Collector::new(s.max_records_per_request, s.max_request_bytes),
            refresh: RefreshSchedule::new(s.shard_map_refresh_interval, now),
            s,
            map: ShardMap::default(),
            shards: Vec::new(),
            index: HashMap::new(),
            outbox: VecDeque::new(),
            in_flight: HashMap::new(),
            next_request: 0,
            next_seq: 0,
            held: 0,
            parked: Vec::new(),
            flushes: Vec::new(),
            shutdown: None,
            global_backoff: Backoff::default(),
            global_backoff_until: None,
            round_robin: 0,
            last_stats: now,
            gauge,
            stats,
            metrics,
            scratch: Vec::new(),
        };
        engine.install_map(map, now);
        engine
    }

    // ---- inputs -------------------------------------------------------------------------

    /// A new user record (validated by `add`; its buffer room already taken).
    pub fn on_record(&mut self, mut entry: Entry, now: Instant) {
        self.next_seq += 1;
        entry.seq = self.next_seq;
        self.held += 1;
        SharedStats::add(&self.stats.records_received, 1);
        self.metrics.received.increment(1);
        if self
            .shutdown
            .as_ref()
            .is_some_and(|(deadline, _)| now >= *deadline)
        {
            self.resolve(entry, Err(RecordError::ShutDown { attempts: vec![] }));
            return;
        }
        self.enqueue_back(entry);
    }

    /// `flush()`: `reply` fires once every record received so far is resolved.
    pub fn on_flush(&mut self, reply: oneshot::Sender<()>) {
        if self.held == 0 {
            let _ = reply.send(());
        } else {
            self.flushes.push(FlushWaiter {
                barrier: self.next_seq,
                remaining: self.held,
                reply,
            });
        }
    }

    /// `shutdown()` or the last handle dropped: drain everything, then stop. Past the deadline
    /// what is left fails with [`RecordError::ShutDown`].
    pub fn on_shutdown(&mut self, reply: Option<oneshot::Sender<()>>, now: Instant) {
        let deadline = retry::saturating_add(now, self.s.shutdown_timeout);
        let (d, replies) = self.shutdown.get_or_insert_with(|| (deadline, Vec::new()));
        *d = (*d).min(deadline);
        replies.extend(reply);
    }

    /// Whether the engine has shut down and holds nothing: the loop may end.
    pub fn is_finished(&self) -> bool {
        self.shutdown.is_some() && self.held == 0
    }

    /// The result of a request sent by [`Action::Send`].
    pub fn on_response(
        &mut self,
        id: u64,
        result: Result<Vec<PutRecordsResultEntry>, ClientError>,
        now: Instant,
    ) {
        let Some(InFlight { records, start }) = self.in_flight.remove(&id) else {
            return; // failed already at the shutdown deadline
        };
        let duration = now.saturating_duration_since(start);
        SharedStats::add(&self.stats.requests, 1);
        self.metrics.requests.increment(1);
        self.metrics.request_time.record(duration.as_secs_f64());
        let mut retry_entries: Vec<Entry> = Vec::new();
        match result {
            Ok(results) => {
                self.global_backoff.reset();
                self.global_backoff_until = None;
                let mut backoff_shards: Vec<Arc<str>> = Vec::new();
                for (record, result) in records.into_iter().zip(results) {
                    let shard = self.index.get(&record.shard).copied();
                    if let Some(i) = shard {
                        self.shards[i].outstanding = self.shards[i].outstanding.saturating_sub(1);
                    }
                    match result {
                        PutRecordsResultEntry::Ok {
                            shard_id,
                            sequence_number,
                        } => {
                            if let Some(i) = shard {
                                let st = &mut self.shards[i];
                                st.backoff.reset();
                                st.stats.kinesis_records_put += 1;
                                st.stats.bytes_put += record.size as u64;
                                st.metrics.kinesis_put.increment(1);
                            }
                            let attempt = Attempt {
                                start,
                                duration,
                                error_code: None,
                                error_message: None,
                            };
                            self.on_stored(
                                record,
                                shard_id,
                                sequence_number,
                                attempt,
                                &mut retry_entries,
                            );
                        }
                        PutRecordsResultEntry::Err { code, message } => {
                            self.metrics.error(&code);
                            let decision = retry::classify_code(&code);
                            if let (Decision::Retry { throttled: true }, Some(i)) =
                                (decision, shard)
                            {
                                let st = &mut self.shards[i];
                                st.limiter.on_throttle(now);
                                st.stats.throttles += 1;
                                st.metrics.throttles.increment(1);
                                SharedStats::add(&self.stats.throttles, 1);
                                self.metrics.throttles.increment(1);
                            }
                            if !backoff_shards.contains(&record.shard) {
                                backoff_shards.push(record.shard.clone());
                            }
                            let attempt = Attempt {
                                start,
                                duration,
                                error_code: Some(code.clone()),
                                error_message: Some(message.clone()),
                            };
                            self.on_failed(
                                record,
                                decision,
                                code,
                                message,
                                attempt,
                                &mut retry_entries,
                            );
                        }
                    }
                }
                for id in backoff_shards {
                    if let Some(&i) = self.index.get(&id) {
                        let st = &mut self.shards[i];
                        st.backoff_until = Some(now + st.backoff.next_delay());
                    }
                }
            }
            Err(error) => {
                let code = error.code_or_kind();
                self.metrics.error(&code);
                let decision = match error.kind {
                    ClientErrorKind::Cancelled => Decision::Fail,
                    _ => retry::classify_request(error.code.as_deref(), error.status),
                };
                if matches!(decision, Decision::Retry { .. }) {
                    self.global_backoff_until = Some(now + self.global_backoff.next_delay());
                }
                for record in records {
                    if let Some(&i) = self.index.get(&record.shard) {
                        let st = &mut self.shards[i];
                        st.outstanding = st.outstanding.saturating_sub(1);
                        if decision == (Decision::Retry { throttled: true }) {
                            st.limiter.on_throttle(now);
                        }
                    }
                    let attempt = Attempt {
                        start,
                        duration,
                        error_code: Some(code.clone()),
                        error_message: Some(error.message.clone()),
                    };
                    if error.kind == ClientErrorKind::Cancelled {
                        for mut e in record.entries {
                            e.attempts.push(attempt.clone());
                            let attempts = std::mem::take(&mut e.attempts);
                            self.resolve(e, Err(RecordError::ShutDown { attempts }));
                        }
                        continue;
                    }
                    self.on_failed(
                        record,
                        decision,
                        code.clone(),
                        error.message.clone(),
                        attempt,
                        &mut retry_entries,
                    );
                }
            }
        }
        self.requeue(retry_entries, now);
    }

    /// The result of an [`Action::RefreshShardMap`].
    pub fn on_shard_map(&mut self, result: Result<Vec<ShardInfo>, ClientError>, now: Instant) {
        let shards = match result {
            Ok(shards) if shards.iter().any(|s| s.open) => shards,
            Ok(_) => {
                self.metrics.error("NoOpenShards");
                self.refresh.finished(false, now);
                return;
            }
            Err(e) => {
                self.metrics.error(&e.code_or_kind());
                self.refresh.finished(false, now);
                return;
            }
        };
        self.refresh.finished(true, now);
        SharedStats::add(&self.stats.shard_map_refreshes, 1);
        self.metrics.refreshes.increment(1);
        self.install_map(ShardMap::new(shards), now);
        let mut retry_entries = Vec::new();
        for p in std::mem::take(&mut self.parked) {
            self.check_stranded(
                p.record,
                p.shard_id,
                p.sequence_number,
                p.attempt,
                &mut retry_entries,
            );
        }
        self.requeue(retry_entries, now);
    }

    // ---- decisions ----------------------------------------------------------------------

    /// Does everything due at `now` and returns the I/O to perform.
    pub fn poll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.refresh.start_if_due(now) {
            actions.push(Action::RefreshShardMap);
        }
        if let Some((deadline, _)) = &self.shutdown {
            if now >= *deadline {
                self.fail_everything();
            }
        }
        let flushing = !self.flushes.is_empty() || self.shutdown.is_some();
        let n = self.shards.len();
        if n > 0 {
            self.round_robin = (self.round_robin + 1) % n;
        }
        let mut expired = std::mem::take(&mut self.scratch);
        for k in 0..n {
            let i = (self.round_robin + k) % n;
            self.drain_shard(i, now, flushing, &mut expired);
        }
        for e in expired.drain(..) {
            self.expire(e);
        }
        self.scratch = expired;
        if let Some(batch) = self
            .collector
            .take_ready(now, self.s.max_buffered_time, flushing)
        {
            self.outbox.push_back(batch);
        }
        if self.global_backoff_until.is_some_and(|t| t <= now) {
            self.global_backoff_until = None;
        }
        while self.in_flight.len() < self.s.max_in_flight && self.global_backoff_until.is_none() {
            let Some(batch) = self.outbox.pop_front() else {
                break;
            };
            actions.push(self.dispatch(batch, now));
        }
        if now.saturating_duration_since(self.last_stats) >= STATS_PERIOD {
            self.publish_stats(now);
        }
        if self.shutdown.is_some() && self.held == 0 {
            for reply in self
                .shutdown
                .as_mut()
                .map(|(_, r)| std::mem::take(r))
                .unwrap_or_default()
            {
                let _ = reply.send(());
            }
            self.publish_stats(now);
        }
    }

    /// When [`Engine::poll`] next has something to do without new input.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        at(self.refresh.next_due());
        at(self.shutdown.as_ref().map(|(d, _)| *d));
        if self.in_flight.len() < self.s.max_in_flight {
            if let Some(g) = self.global_backoff_until {
                if !self.outbox.is_empty() {
                    at(Some(g));
                }
            } else if !self.outbox.is_empty() {
                at(Some(self.last_stats)); // dispatch at once
            }
        }
        at(self.collector.due_at(self.s.max_buffered_time));
        for st in &self.shards {
            at(st.wake);
        }
        if self.held > 0 {
            at(Some(self.last_stats + STATS_PERIOD));
        }
        t
    }

    /// Moves what shard `i` may send now into the collector, and sets the shard's wake time.
    fn drain_shard(&mut self, i: usize, now: Instant, flushing: bool, expired: &mut Vec<Entry>) {
        let st = &mut self.shards[i];
        st.wake = None;
        while st.queue.front().is_some_and(|e| e.deadline <= now) {
            let e = st.queue.pop_front().expect("front exists");
            st.queued_bytes -= e.size();
            expired.push(e);
        }
        let head_deadline = st.queue.front().map(|e| e.deadline);
        if st.queue.is_empty() && st.sealed.is_none() {
            return;
        }
        let blocked_by_order = self.s.ordering == Ordering::PerShard && st.outstanding > 0;
        let saturated = self.in_flight.len() + self.outbox.len() >= self.s.max_in_flight;
        if let Some(t) = st.backoff_until.filter(|t| *t > now) {
            st.wake = Some(head_deadline.map_or(t, |d| d.min(t)));
            return;
        }
        st.backoff_until = None;
        if blocked_by_order || saturated {
            st.wake = head_deadline;
            return;
        }
        loop {
            let st = &mut self.shards[i];
            if st.sealed.is_none() {
                let Some(front) = st.queue.front() else { break };
                if self.s.aggregation && !flushing {
                    let due = front
                        .arrival
                        .checked_add(self.s.max_buffered_time)
                        .unwrap_or(front.arrival);
                    let full = st.queued_bytes >= self.s.aggregation_max_size
                        || st.queue.len() >= self.s.aggregation_max_count;
                    if !full && due > now {
                        st.wake = Some(due.min(front.deadline));
                        break;
                    }
                }
                let record = build_record(st, &mut self.aggregator, self.s.aggregation);
                st.sealed = Some(record);
            }
            let size = st.sealed.as_ref().map_or(0, |r| r.size);
            if let Err(at) = st.limiter.try_acquire(size, now) {
                st.wake = Some(head_deadline.map_or(at, |d| d.min(at)));
                break;
            }
            let record = st.sealed.take().expect("sealed record");
            st.outstanding += 1;
            let per_shard_done = self.s.ordering == Ordering::PerShard;
            let oldest = record.oldest;
            if let Some(batch) = self.collector.push(record, size, oldest) {
                self.outbox.push_back(batch);
            }
            if self.collector.is_full() {
                self.outbox.push_back(self.collector.take());
            }
            if per_shard_done || self.in_flight.len() + self.outbox.len() >= self.s.max_in_flight {
                let st = &mut self.shards[i];
                if !st.queue.is_empty() && !per_shard_done {
                    st.wake = st.queue.front().map(|e| e.deadline);
                }
                break;
            }
        }
    }

    fn dispatch(&mut self, batch: Batch<KRecord>, now: Instant) -> Action {
        self.next_request += 1;
        let id = self.next_request;
        let mut user_records = 0usize;
        let mut wire = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            user_records += r.entries.len();
            self.metrics
                .buffering_time
                .record(now.saturating_duration_since(r.oldest).as_secs_f64());
            self.metrics
                .per_kinesis_record
                .record(r.entries.len() as f64);
            wire.push(r.wire.clone());
        }
        self.metrics.per_request.record(user_records as f64);
        self.in_flight.insert(
            id,
            InFlight {
                records: batch.records,
                start: now,
            },
        );
        Action::Send {
            id,
            request: PutRecordsRequest {
                stream: self.s.stream.clone(),
                records: wire,
            },
        }
    }

    /// A Kinesis record was stored on `shard_id`.
    fn on_stored(
        &mut self,
        record: KRecord,
        shard_id: Arc<str>,
        sequence_number: Arc<str>,
        attempt: Attempt,
        retry_entries: &mut Vec<Entry>,
    ) {
        SharedStats::add(&self.stats.kinesis_records_put, 1);
        SharedStats::add(&self.stats.bytes_put, record.size as u64);
        self.metrics.kinesis_put.increment(1);
        self.metrics.bytes_put.increment(record.size as u64);
        if !self.s.predict || shard_id == record.shard {
            self.resolve_stored(
                record.entries,
                record.aggregated,
                &shard_id,
                &sequence_number,
                &attempt,
            );
            return;
        }
        // The map is stale. A plain record always lands where its hash key belongs: it
        // succeeded. An aggregate's sub-records may now lie outside the storing shard's range.
        self.refresh.request();
        self.metrics.mispredictions.increment(1);
        if !record.aggregated {
            self.resolve_stored(record.entries, false, &shard_id, &sequence_number, &attempt);
        } else if self.map.shard(&shard_id).is_some() {
            self.check_stranded(record, shard_id, sequence_number, attempt, retry_entries);
        } else {
            self.parked.push(Parked {
                record,
                shard_id,
                sequence_number,
                attempt,
            });
        }
    }

    /// Resolves an aggregate's sub-records that lie in the storing shard's range; re-sends the
    /// others (KCL would drop them).
    fn check_stranded(
        &mut self,
        record: KRecord,
        shard_id: Arc<str>,
        sequence_number: Arc<str>,
        attempt: Attempt,
        retry_entries: &mut Vec<Entry>,
    ) {
        let Some(range) = self.map.shard(&shard_id).cloned() else {
            // Not even the refreshed map knows the shard: nothing to check against.
            self.resolve_stored(record.entries, true, &shard_id, &sequence_number, &attempt);
            return;
        };
        for (i, mut e) in record.entries.into_iter().enumerate() {
            if range.contains(e.hash_key) {
                e.attempts.push(attempt.clone());
                let attempts = std::mem::take(&mut e.attempts);
                self.resolve(
                    e,
                    Ok(PutOutcome {
                        shard_id: shard_id.clone(),
                        sequence_number: sequence_number.clone(),
                        sub_sequence_number: Some(i as u64),
                        attempts,
                    }),
                );
            } else {
                SharedStats::add(&self.stats.stranded_resent, 1);
                self.metrics.stranded.increment(1);
                e.attempts.push(Attempt {
                    error_code: Some(STRANDED_CODE.into()),
                    error_message: Some(
                        format!("stored in {shard_id} ({sequence_number}) whose hash range does not hold the record's hash key; re-sent").into(),
                    ),
                    ..attempt.clone()
                });
                retry_entries.push(e);
            }
        }
    }

    fn resolve_stored(
        &mut self,
        entries: Vec<Entry>,
        aggregated: bool,
        shard_id: &Arc<str>,
        sequence_number: &Arc<str>,
        attempt: &Attempt,
    ) {
        for (i, mut e) in entries.into_iter().enumerate() {
            e.attempts.push(attempt.clone());
            let attempts = std::mem::take(&mut e.attempts);
            self.resolve(
                e,
                Ok(PutOutcome {
                    shard_id: shard_id.clone(),
                    sequence_number: sequence_number.clone(),
                    sub_sequence_number: aggregated.then_some(i as u64),
                    attempts,
                }),
            );
        }
    }

    fn on_failed(
        &mut self,
        record: KRecord,
        decision: Decision,
        code: Arc<str>,
        message: Arc<str>,
        attempt: Attempt,
        retry_entries: &mut Vec<Entry>,
    ) {
        for mut e in record.entries {
            e.attempts.push(attempt.clone());
            match decision {
                Decision::Retry { .. } => retry_entries.push(e),
                Decision::Fail => {
                    let attempts = std::mem::take(&mut e.attempts);
                    self.resolve(
                        e,
                        Err(RecordError::Rejected {
                            code: code.clone(),
                            message: message.clone(),
                            attempts,
                        }),
                    );
                }
            }
        }
    }

    /// Puts records to retry back at the front of their shard's queue, in their order, ahead of
    /// newer records; records past their TTL fail instead.
    fn requeue(&mut self, entries: Vec<Entry>, now: Instant) {
        let mut by_shard: Vec<Vec<Entry>> = Vec::new();
        for e in entries {
            if e.deadline <= now {
                self.expire(e);
                continue;
            }
            SharedStats::add(&self.stats.retries, 1);
            self.metrics.retries.increment(1);
            let i = self.shard_for(e.hash_key);
            if by_shard.len() <= i {
                by_shard.resize_with(i + 1, Vec::new);
            }
            by_shard[i].push(e);
        }
        for (i, list) in by_shard.into_iter().enumerate() {
            let st = &mut self.shards[i];
            for e in list.into_iter().rev() {
                st.queued_bytes += e.size();
                st.queue.push_front(e);
            }
        }
    }

    fn enqueue_back(&mut self, entry: Entry) {
        let i = self.shard_for(entry.hash_key);
        let st = &mut self.shards[i];
        st.queued_bytes += entry.size();
        st.queue.push_back(entry);
    }

    fn shard_for(&self, key: HashKey) -> usize {
        if self.s.predict {
            self.map.lookup(key).unwrap_or(0)
        } else {
            0
        }
    }

    fn expire(&mut self, mut e: Entry) {
        let attempts = std::mem::take(&mut e.attempts);
        SharedStats::add(&self.stats.records_expired, 1);
        self.metrics.expired.increment(1);
        self.resolve(
            e,
            Err(RecordError::Expired {
                ttl: self.s.record_ttl,
                attempts,
            }),
        );
    }

    /// Delivers a record's result, gives its buffer room back and counts it.
    fn resolve(&mut self, e: Entry, result: Result<PutOutcome, RecordError>) {
        let size = e.size();
        self.held -= 1;
        self.gauge.release(1, size);
        match &result {
            Ok(_) => {
                SharedStats::add(&self.stats.records_put, 1);
                self.metrics.put.increment(1);
            }
            Err(err) => {
                SharedStats::add(&self.stats.records_failed, 1);
                self.metrics.failed.increment(1);
                if e.reply.is_none() {
                    if let Some(cb) = &self.s.on_failure {
                        cb(&e.record, err);
                    }
                }
            }
        }
        if let Some(reply) = e.reply {
            let _ = reply.send(result);
        }
        if !self.flushes.is_empty() {
            for w in &mut self.flushes {
                if e.seq <= w.barrier {
                    w.remaining -= 1;
                }
            }
            let mut i = 0;
            while i < self.flushes.len() {
                if self.flushes[i].remaining == 0 {
                    let _ = self.flushes.swap_remove(i).reply.send(());
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Shutdown deadline: every record still held fails.
    fn fail_everything(&mut self) {
        let mut all: Vec<Entry> = Vec::new();
        for st in &mut self.shards {
            all.extend(st.queue.drain(..));
            st.queued_bytes = 0;
            st.outstanding = 0;
            if let Some(r) = st.sealed.take() {
                all.extend(r.entries);
            }
        }
        let collected = self.collector.take();
        all.extend(collected.records.into_iter().flat_map(|r| r.entries));
        all.extend(
            self.outbox
                .drain(..)
                .flat_map(|b| b.records)
                .flat_map(|r| r.entries),
        );
        all.extend(
            self.in_flight
                .drain()
                .flat_map(|(_, f)| f.records)
                .flat_map(|r| r.entries),
        );
        all.extend(self.parked.drain(..).flat_map(|p| p.record.entries));
        for mut e in all {
            let attempts = std::mem::take(&mut e.attempts);
            self.resolve(e, Err(RecordError::ShutDown { attempts }));
        }
    }

    /// Replaces the shard map. Shards that remain keep their state; records queued for shards
    /// that are gone move to the shards that now hold their hash keys, in order.
    fn install_map(&mut self, map: ShardMap, now: Instant) {
        let open: Vec<ShardInfo> = if self.s.predict {
            map.open_shards().to_vec()
        } else {
            vec![ShardInfo {
                id: "*".into(),
                start: 0,
                end: u128::MAX,
                open: true,
            }]
        };
        let rate_scale = if self.s.predict {
            1.0
        } else {
            map.len().max(1) as f64
        };
        let mut old: HashMap<Arc<str>, ShardState> = self
            .shards
            .drain(..)
            .map(|s| (s.info.id.clone(), s))
            .collect();
        let mut orphans: Vec<ShardState> = Vec::new();
        let mut new_states = Vec::with_capacity(open.len());
        for info in open {
            let state = match old.remove(&info.id) {
                Some(mut st) => {
                    if !self.s.predict {
                        st.limiter = self.new_limiter(rate_scale, now);
                    }
                    st
                }
                None => ShardState {
                    limiter: self.new_limiter(rate_scale, now),
                    stats: ShardStats {
                        shard_id: info.id.to_string(),
                        rate_factor: 1.0,
                        ..Default::default()
                    },
                    metrics: self.metrics.shard(&info.id),
                    info,
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    sealed: None,
                    backoff: Backoff::default(),
                    backoff_until: None,
                    outstanding: 0,
                    wake: None,
                },
            };
            new_states.push(state);
        }
        orphans.extend(old.into_values());
        orphans.sort_by_key(|s| s.info.end);
        self.index = new_states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.info.id.clone(), i))
            .collect();
        self.shards = new_states;
        self.map = map;
        for mut st in orphans {
            if let Some(r) = st.sealed.take() {
                for e in r.entries {
                    self.enqueue_back(e);
                }
            }
            for e in st.queue.drain(..) {
                self.enqueue_back(e);
            }
        }
    }

    fn new_limiter(&self, scale: f64, now: Instant) -> ShardLimiter {
        match self.s.shard_rate {
            Some((records, bytes)) => ShardLimiter::new(records * scale, bytes * scale, now),
            None => ShardLimiter::unlimited(now),
        }
    }

    fn publish_stats(&mut self, now: Instant) {
        self.last_stats = now;
        let shards: Vec<ShardStats> = self
            .shards
            .iter()
            .map(|s| ShardStats {
                rate_factor: s.limiter.rate_factor(),
                ..s.stats.clone()
            })
            .collect();
        if let Ok(mut guard) = self.stats.shards.lock() {
            *guard = shards;
        }
        self.metrics.records_pending.set(self.held as f64);
        self.metrics
            .bytes_pending
            .set(self.gauge.bytes_held() as f64);
    }
}

/// Takes the next Kinesis record off a shard's queue: an aggregate of as many queued records as
/// fit, or a single record (sent raw: aggregation off, the record too large to share, or only
/// one record at hand).
fn build_record(st: &mut ShardState, aggregator: &mut Aggregator, aggregation: bool) -> KRecord {
    let first = st.queue.pop_front().expect("caller checked the queue");
    st.queued_bytes -= first.size();
    let shard = st.info.id.clone();
    let single = |e: Entry| KRecord {
        shard: shard.clone(),
        size: e.size(),
        oldest: e.arrival,
        wire: PutRecordsEntry {
            data: e.record.data.clone(),
            partition_key: e.record.partition_key.clone(),
            explicit_hash_key: e.record.explicit_hash_key.clone(),
        },
        entries: vec![e],
        aggregated: false,
    };
    if !aggregation || st.queue.is_empty() {
        return single(first);
    }
    let r = &first.record;
    if let TryPush::NoCapacity =
        aggregator.try_push(&r.partition_key, r.explicit_hash_key.as_deref(), &r.data)
    {
        return single(first);
    }
    let mut entries = vec![first];
    while let Some(next) = st.queue.front() {
        let r = &next.record;
        match aggregator.try_push(&r.partition_key, r.explicit_hash_key.as_deref(), &r.data) {
            TryPush::Added => {
                let e = st.queue.pop_front().expect("front exists");
                st.queued_bytes -= e.size();
                entries.push(e);
            }
            TryPush::NoCapacity => break,
        }
    }
    let aggregate = aggregator.finish().expect("aggregate holds records");
    if entries.len() == 1 {
        return single(entries.pop().expect("one entry"));
    }
    let oldest = entries
        .iter()
        .map(|e| e.arrival)
        .min()
        .unwrap_or(entries[0].arrival);
    KRecord {
        shard,
        size: aggregate.data.len() + aggregate.partition_key.len(),
        // The outer hash key is the first sub-record's: inside the predicted shard's range,
        // so the aggregate lands on the shard all its sub-records were predicted for.
        wire: PutRecordsEntry {
            explicit_hash_key: Some(entries[0].hash_key.to_string()),
            data: aggregate.data,
            partition_key: aggregate.partition_key,
        },
        entries,
        aggregated: true,
        oldest,
    }
}
