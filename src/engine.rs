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

/// Whole-request failures in a row after which all sending backs off.
const ENDPOINT_BACKOFF_AFTER: u32 = 2;
/// How often per-shard stats are published to handles.
const STATS_PERIOD: Duration = Duration::from_secs(1);
/// Error code recorded on an attempt whose aggregate landed outside a sub-record's shard.
pub(crate) const STRANDED_CODE: &str = "SubRecordOutsideShardRange";
/// Error code recorded on an attempt still in flight when the shutdown deadline passed.
pub(crate) const SHUTDOWN_IN_FLIGHT_CODE: &str = "ShutDownInFlight";

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
    pub on_failure: Option<FailureCallback>,
}

impl EngineSettings {
    pub fn new(config: &ProducerConfig, stream: StreamRef, predict: bool) -> Self {
        let pct = config.rate_limit_percent as f64 / 100.0;
        EngineSettings {
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
    /// Whole-request failures since the last response with results.
    request_failures: u32,
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
            aggregator: Aggregator::new(
                s.config.aggregation_max_size,
                s.config.aggregation_max_count,
            ),
            collector: Collector::new(s.config.max_records_per_request, s.config.max_request_bytes),
            refresh: RefreshSchedule::new(s.config.shard_map_refresh_interval, now),
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
            request_failures: 0,
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
        let deadline = retry::saturating_add(now, self.s.config.shutdown_timeout);
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
                self.request_failures = 0;
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
                            if decision != Decision::Fail && !backoff_shards.contains(&record.shard)
                            {
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
                    // One failed request among successful ones (a latency spike, a dropped
                    // connection) is retried at once; failures in a row mean the endpoint is
                    // in trouble, and then all sending backs off.
                    self.request_failures += 1;
                    if self.request_failures >= ENDPOINT_BACKOFF_AFTER {
                        self.global_backoff_until = Some(now + self.global_backoff.next_delay());
                    }
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
                self.fail_everything(now);
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
        if let Some(batch) =
            self.collector
                .take_ready(now, self.s.config.max_buffered_time, flushing)
        {
            self.outbox.push_back(batch);
        }
        if self.global_backoff_until.is_some_and(|t| t <= now) {
            self.global_backoff_until = None;
        }
        while self.in_flight.len() < self.s.config.max_in_flight
            && self.global_backoff_until.is_none()
        {
            let Some(mut batch) = self.outbox.pop_front() else {
                break;
            };
            // A batch may wait in the outbox (global back-off, max_in_flight) past its
            // records' TTL: never send those.
            self.take_expired(&mut batch, now);
            if !batch.records.is_empty() {
                actions.push(self.dispatch(batch, now));
            }
        }
        if now.saturating_duration_since(self.last_stats) >= STATS_PERIOD {
            self.publish_stats(now);
        }
        if self.shutdown.is_some() && self.held == 0 {
            // Publish before answering, so `stats()` after `shutdown()` is final.
            self.publish_stats(now);
            for reply in self
                .shutdown
                .as_mut()
                .map(|(_, r)| std::mem::take(r))
                .unwrap_or_default()
            {
                let _ = reply.send(());
            }
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
        if self.in_flight.len() < self.s.config.max_in_flight {
            if let Some(g) = self.global_backoff_until {
                if !self.outbox.is_empty() {
                    at(Some(g));
                }
            } else if !self.outbox.is_empty() {
                at(Some(self.last_stats)); // dispatch at once
            }
        }
        at(self.collector.due_at(self.s.config.max_buffered_time));
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
        let blocked_by_order = self.s.config.ordering == Ordering::PerShard && st.outstanding > 0;
        let saturated = self.in_flight.len() + self.outbox.len() >= self.s.config.max_in_flight;
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
                        .checked_add(self.s.config.max_buffered_time)
                        .unwrap_or(front.arrival);
                    let full = st.queued_bytes >= self.s.config.aggregation_max_size
                        || st.queue.len() >= self.s.config.aggregation_max_count;
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
            let per_shard_done = self.s.config.ordering == Ordering::PerShard;
            let oldest = record.oldest;
            if let Some(batch) = self.collector.push(record, size, oldest, now) {
                self.outbox.push_back(batch);
            }
            if self.collector.is_full() {
                self.outbox.push_back(self.collector.take());
            }
            if per_shard_done
                || self.in_flight.len() + self.outbox.len() >= self.s.config.max_in_flight
            {
                let st = &mut self.shards[i];
                if !st.queue.is_empty() && !per_shard_done {
                    st.wake = st.queue.front().map(|e| e.deadline);
                }
                break;
            }
        }
    }

    /// Takes the Kinesis records holding an entry past its TTL out of `batch`: the expired
    /// entries fail, the others go back to the front of their shard's queue, in order.
    fn take_expired(&mut self, batch: &mut Batch<KRecord>, now: Instant) {
        let live = |r: &KRecord| r.entries.iter().all(|e| e.deadline > now);
        if batch.records.iter().all(live) {
            return;
        }
        let mut back: Vec<Entry> = Vec::new();
        for r in std::mem::take(&mut batch.records) {
            if live(&r) {
                batch.records.push(r);
                continue;
            }
            batch.bytes = batch.bytes.saturating_sub(r.size);
            if let Some(&i) = self.index.get(&r.shard) {
                self.shards[i].outstanding = self.shards[i].outstanding.saturating_sub(1);
            }
            back.extend(r.entries);
        }
        self.put_back(back, now);
    }

    fn dispatch(&mut self, mut batch: Batch<KRecord>, now: Instant) -> Action {
        self.next_request += 1;
        let id = self.next_request;
        let mut user_records = 0usize;
        let mut wire = Vec::with_capacity(batch.records.len());
        for r in &mut batch.records {
            user_records += r.entries.len();
            self.metrics
                .buffering_time
                .record(now.saturating_duration_since(r.oldest).as_secs_f64());
            self.metrics
                .per_kinesis_record
                .record(r.entries.len() as f64);
            // The wire form is only read here (a retry rebuilds it from the entries): move it
            // out instead of copying every partition key.
            wire.push(std::mem::replace(
                &mut r.wire,
                PutRecordsEntry {
                    data: bytes::Bytes::new(),
                    partition_key: String::new(),
                    explicit_hash_key: None,
                },
            ));
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
        // Buffer room, stats and metrics once per Kinesis record rather than once per user
        // record, before any future resolves (as `resolve` does).
        let n = entries.len();
        let bytes: usize = entries.iter().map(Entry::size).sum();
        self.gauge.release(n, bytes);
        SharedStats::add(&self.stats.records_put, n as u64);
        self.metrics.put.increment(n as u64);
        for (i, mut e) in entries.into_iter().enumerate() {
            // Fire-and-forget records have no future: no outcome to build.
            if let Some(reply) = e.reply.take() {
                e.attempts.push(attempt.clone());
                let attempts = std::mem::take(&mut e.attempts);
                let _ = reply.send(Ok(PutOutcome {
                    shard_id: shard_id.clone(),
                    sequence_number: sequence_number.clone(),
                    sub_sequence_number: aggregated.then_some(i as u64),
                    attempts,
                }));
            }
            self.settled(e.seq);
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

    /// Records to retry: counted, then put back (see [`Engine::put_back`]).
    fn requeue(&mut self, entries: Vec<Entry>, now: Instant) {
        let retries = entries.iter().filter(|e| e.deadline > now).count() as u64;
        SharedStats::add(&self.stats.retries, retries);
        self.metrics.retries.increment(retries);
        self.put_back(entries, now);
    }

    /// Puts records back at the front of their shard's queue, in their order, ahead of newer
    /// records, to be drained at the next poll; records past their TTL fail instead.
    fn put_back(&mut self, entries: Vec<Entry>, now: Instant) {
        let mut by_shard: Vec<Vec<Entry>> = Vec::new();
        for e in entries {
            if e.deadline <= now {
                self.expire(e);
                continue;
            }
            let i = self.shard_for(e.hash_key);
            if by_shard.len() <= i {
                by_shard.resize_with(i + 1, Vec::new);
            }
            by_shard[i].push(e);
        }
        for (i, list) in by_shard.into_iter().enumerate() {
            let st = &mut self.shards[i];
            if !list.is_empty() {
                st.wake = Some(now);
            }
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
                ttl: self.s.config.record_ttl,
                attempts,
            }),
        );
    }

    /// Delivers a record's result, gives its buffer room back and counts it.
    fn resolve(&mut self, e: Entry, result: Result<PutOutcome, RecordError>) {
        let size = e.size();
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
        let seq = e.seq;
        if let Some(reply) = e.reply {
            let _ = reply.send(result);
        }
        self.settled(seq);
    }

    /// A record's result was delivered: it no longer counts as held, and flush waiters
    /// that wait for it are one record closer.
    fn settled(&mut self, seq: u64) {
        self.held -= 1;
        if !self.flushes.is_empty() {
            for w in &mut self.flushes {
                if seq <= w.barrier {
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
    fn fail_everything(&mut self, now: Instant) {
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
        // A request still in flight may yet be applied: say so in the record's attempts, so
        // the error does not claim the record was not stored.
        for (_, f) in std::mem::take(&mut self.in_flight) {
            let attempt = Attempt {
                start: f.start,
                duration: now.saturating_duration_since(f.start),
                error_code: Some(SHUTDOWN_IN_FLIGHT_CODE.into()),
                error_message: Some(
                    "the shutdown deadline passed while the request was in flight; the record may have been stored".into(),
                ),
            };
            for mut e in f.records.into_iter().flat_map(|r| r.entries) {
                e.attempts.push(attempt.clone());
                all.push(e);
            }
        }
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard_map::{even_range, even_shards as shards};
    use tokio::sync::oneshot::error::TryRecvError;

    type Rx = oneshot::Receiver<Result<PutOutcome, RecordError>>;

    struct Harness {
        engine: Engine,
        now: Instant,
        gauge: Arc<BufferGauge>,
        actions: Vec<Action>,
    }

    fn config() -> ProducerConfig {
        ProducerConfig {
            stream: Some(StreamRef::Name("s".into())),
            aggregation: false,
            ..Default::default()
        }
    }

    impl Harness {
        fn new(n: u32, config: ProducerConfig) -> Self {
            Self::with_prediction(n, config, true)
        }

        fn with_prediction(n: u32, config: ProducerConfig, predict: bool) -> Self {
            let now = Instant::now();
            let gauge = Arc::new(BufferGauge::new(
                config.max_buffered_records,
                config.max_buffered_bytes,
            ));
            let settings = EngineSettings::new(&config, StreamRef::Name("s".into()), predict);
            let engine = Engine::new(
                settings,
                ShardMap::new(shards(n)),
                gauge.clone(),
                SharedStats::new(now),
                Metrics::new("s", config.metrics_granularity),
                now,
            );
            Harness {
                engine,
                now,
                gauge,
                actions: Vec::new(),
            }
        }

        /// Adds a record aimed at `shard` of `n` (by explicit hash key).
        fn add_to(&mut self, shard: u32, n: u32, key: &str, data: &str) -> Rx {
            let hash = even_range(shard, n).0;
            let record =
                UserRecord::new(key, data.to_string()).with_explicit_hash_key(hash.to_string());
            self.add(record, HashKey(hash))
        }

        fn add(&mut self, record: UserRecord, hash: HashKey) -> Rx {
            let (tx, rx) = oneshot::channel();
            assert!(self.gauge.try_acquire(record.size()));
            let ttl = self.engine.s.config.record_ttl;
            self.engine
                .on_record(Entry::new(record, hash, self.now, ttl, Some(tx)), self.now);
            rx
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
        }

        /// Polls and returns the requests sent.
        fn poll(&mut self) -> Vec<(u64, PutRecordsRequest)> {
            self.engine.poll(self.now, &mut self.actions);
            self.actions
                .drain(..)
                .filter_map(|a| match a {
                    Action::Send { id, request } => Some((id, request)),
                    Action::RefreshShardMap => None,
                })
                .collect()
        }

        /// Polls once more after the short window a request opened by overdue records (retries,
        /// a backlog) stays open.
        fn poll_after_window(&mut self) -> Vec<(u64, PutRecordsRequest)> {
            let mut sent = self.poll();
            if sent.is_empty() {
                self.advance(
                    self.engine.s.config.max_buffered_time / crate::collector::MIN_WINDOW_DIVISOR,
                );
                sent = self.poll();
            }
            sent
        }

        fn poll_refresh(&mut self) -> bool {
            self.engine.poll(self.now, &mut self.actions);
            let refresh = self
                .actions
                .iter()
                .any(|a| matches!(a, Action::RefreshShardMap));
            assert!(
                self.actions
                    .iter()
                    .all(|a| !matches!(a, Action::Send { .. })),
                "no send expected"
            );
            self.actions.clear();
            refresh
        }

        /// Answers a request: each record stored on the shard its explicit hash key names.
        fn ok_all(&mut self, id: u64, req: &PutRecordsRequest, n: u32) {
            let results = req.records.iter().map(|r| ok_entry(r, n)).collect();
            self.engine.on_response(id, Ok(results), self.now);
        }
    }

    fn ok_entry(r: &PutRecordsEntry, n: u32) -> PutRecordsResultEntry {
        let key = match &r.explicit_hash_key {
            Some(k) => k.parse::<u128>().unwrap(),
            None => HashKey::from_partition_key(&r.partition_key).0,
        };
        let i = (0..n).find(|&i| even_range(i, n).1 >= key).unwrap();
        PutRecordsResultEntry::Ok {
            shard_id: format!("shardId-{i:012}").into(),
            sequence_number: format!("{:056}", key % 1000).into(),
        }
    }

    fn err_entry(code: &str) -> PutRecordsResultEntry {
        PutRecordsResultEntry::Err {
            code: code.into(),
            message: format!("{code} message").into(),
        }
    }

    fn outcome(rx: &mut Rx) -> Result<PutOutcome, RecordError> {
        match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => panic!("not resolved yet"),
            Err(TryRecvError::Closed) => panic!("dropped unresolved"),
        }
    }

    fn pending(rx: &mut Rx) -> bool {
        matches!(rx.try_recv(), Err(TryRecvError::Empty))
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn batches_until_max_buffered_time() {
        let mut h = Harness::new(4, config());
        let mut rxs: Vec<Rx> = (0..10)
            .map(|i| h.add_to(i % 4, 4, &format!("k{i}"), "data"))
            .collect();
        assert!(h.poll().is_empty(), "nothing is due yet");
        assert_eq!(
            h.engine.next_deadline(),
            Some(h.now + Duration::from_millis(100))
        );
        h.advance(Duration::from_millis(99));
        assert!(h.poll().is_empty());
        h.advance(MS);
        let sent = h.poll();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.records.len(), 10);
        h.ok_all(sent[0].0, &sent[0].1.clone(), 4);
        for (i, rx) in rxs.iter_mut().enumerate() {
            let out = outcome(rx).expect("stored");
            assert_eq!(&*out.shard_id, format!("shardId-{:012}", i % 4));
            assert_eq!(out.attempts.len(), 1);
            assert!(out.attempts[0].succeeded());
        }
        assert_eq!(h.gauge.records_held(), 0, "buffer room given back");
    }

    #[test]
    fn full_request_goes_at_once_within_limits() {
        let mut h = Harness::new(
            2,
            ProducerConfig {
                rate_limiting: false,
                ..config()
            },
        );
        for i in 0..1200 {
            h.add_to(i % 2, 2, "k", "0123456789");
        }
        let sent = h.poll();
        assert_eq!(
            sent.iter()
                .map(|(_, r)| r.records.len())
                .collect::<Vec<_>>(),
            vec![500, 500]
        );
        h.advance(Duration::from_millis(100));
        let sent = h.poll();
        assert_eq!(sent[0].1.records.len(), 200);
    }

    #[test]
    fn request_byte_limit() {
        let cfg = ProducerConfig {
            max_request_bytes: 1000,
            rate_limiting: false,
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        for _ in 0..10 {
            h.add_to(0, 1, "k", &"x".repeat(299)); // 300 bytes each
        }
        h.advance(Duration::from_millis(100));
        let sizes: Vec<usize> = h.poll().iter().map(|(_, r)| r.records.len()).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
    }

    #[test]
    fn shard_limiter_holds_one_shard_not_others() {
        let mut h = Harness::new(2, config());
        let mut first: Vec<Rx> = (0..1500).map(|_| h.add_to(0, 2, "k", "x")).collect();
        let mut other = h.add_to(1, 2, "k", "x");
        h.advance(Duration::from_millis(100));
        let sent = h.poll();
        let total: usize = sent.iter().map(|(_, r)| r.records.len()).sum();
        assert_eq!(
            total, 1001,
            "1,000 of shard 0 (its one-second burst) and shard 1's record"
        );
        for (id, req) in &sent {
            h.ok_all(*id, req, 2);
        }
        assert!(outcome(&mut other).is_ok());
        assert!(pending(&mut first[1200]));
        // the rest goes at 1,000/s
        h.advance(Duration::from_millis(250));
        let sent: usize = h
            .poll_after_window()
            .iter()
            .map(|(_, r)| r.records.len())
            .sum();
        assert!((240..=260).contains(&sent), "{sent}");
    }

    #[test]
    fn partial_failure_retries_ahead_of_newer_records_with_attempts() {
        let mut h = Harness::new(
            1,
            ProducerConfig {
                rate_limiting: false,
                ..config()
            },
        );
        let mut a = h.add_to(0, 1, "a", "1");
        let mut b = h.add_to(0, 1, "b", "2");
        let mut c = h.add_to(0, 1, "c", "3");
        h.advance(Duration::from_millis(100));
        let (id, req) = h.poll().pop().unwrap();
        let results = vec![
            err_entry("ProvisionedThroughputExceededException"),
            ok_entry(&req.records[1], 1),
            err_entry("InternalFailure"),
        ];
        h.advance(Duration::from_millis(20));
        h.engine.on_response(id, Ok(results), h.now);
        assert!(outcome(&mut b).is_ok());
        let mut d = h.add_to(0, 1, "d", "4");
        // the shard backs off before the retry
        assert!(h.poll().is_empty());
        h.advance(Duration::from_secs(1));
        let (id, req) = h.poll_after_window().pop().unwrap();
        let keys: Vec<&str> = req
            .records
            .iter()
            .map(|r| r.partition_key.as_str())
            .collect();
        assert_eq!(keys, vec!["a", "c", "d"], "retries first, in their order");
        h.ok_all(id, &req, 1);
        let out = outcome(&mut a).unwrap();
        assert_eq!(out.attempts.len(), 2);
        assert_eq!(
            out.attempts[0].error_code.as_deref(),
            Some("ProvisionedThroughputExceededException")
        );
        assert_eq!(out.attempts[0].duration, Duration::from_millis(20));
        assert_eq!(
            outcome(&mut c).unwrap().attempts[0].error_code.as_deref(),
            Some("InternalFailure")
        );
        assert!(outcome(&mut d).is_ok());
        assert_eq!(
            h.engine
                .stats
                .retries
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn permanent_errors_fail_at_once_with_the_service_message() {
        let mut h = Harness::new(1, config());
        let mut a = h.add_to(0, 1, "a", "1");
        let mut b = h.add_to(0, 1, "b", "2");
        h.advance(Duration::from_millis(100));
        let (id, _) = h.poll().pop().unwrap();
        h.engine.on_response(
            id,
            Ok(vec![
                err_entry("KMSDisabledException"),
                err_entry("AccessDeniedException"),
            ]),
            h.now,
        );
        match outcome(&mut a) {
            Err(RecordError::Rejected {
                code,
                message,
                attempts,
            }) => {
                assert_eq!(&*code, "KMSDisabledException");
                assert_eq!(&*message, "KMSDisabledException message");
                assert_eq!(attempts.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            outcome(&mut b).unwrap_err().code(),
            Some("AccessDeniedException")
        );
        // whole-request failure that cannot be fixed by retrying
        let mut c = h.add_to(0, 1, "c", "3");
        h.advance(Duration::from_millis(100));
        let (id, _) = h.poll().pop().unwrap();
        let e = ClientError::service(
            "ResourceNotFoundException",
            "Stream s under account 1 not found.",
            400,
        );
        h.engine.on_response(id, Err(e), h.now);
        let err = outcome(&mut c).unwrap_err();
        assert_eq!(err.code(), Some("ResourceNotFoundException"));
        assert!(
            err.to_string()
                .contains("Stream s under account 1 not found."),
            "{err}"
        );
    }

    #[test]
    fn whole_request_errors_are_retried_until_ttl() {
        let cfg = ProducerConfig {
            record_ttl: Duration::from_secs(2),
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        let mut a = h.add_to(0, 1, "a", "1");
        let mut attempts = 0;
        while h.engine.held > 0 && attempts < 100 {
            h.advance(Duration::from_millis(100));
            for (id, _) in h.poll() {
                attempts += 1;
                let mut e = ClientError::new(ClientErrorKind::Service, "boom");
                e.status = Some(503);
                h.engine.on_response(id, Err(e), h.now);
            }
        }
        assert!(attempts >= 3, "{attempts} attempts");
        let err = outcome(&mut a).unwrap_err();
        assert!(matches!(err, RecordError::Expired { .. }), "{err:?}");
        assert_eq!(err.attempts().len(), attempts);
        assert_eq!(err.code(), Some("HttpError503"));
        assert_eq!(h.engine.held, 0);
    }

    #[test]
    fn expired_error_lists_attempts_and_last_error() {
        let cfg = ProducerConfig {
            record_ttl: Duration::from_millis(500),
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        let mut a = h.add_to(0, 1, "a", "1");
        h.advance(Duration::from_millis(100));
        let (id, _) = h.poll().pop().unwrap();
        h.engine.on_response(
            id,
            Err(ClientError::new(ClientErrorKind::Timeout, "no answer")),
            h.now,
        );
        h.advance(Duration::from_millis(400));
        assert!(h.poll().is_empty());
        match outcome(&mut a) {
            Err(e @ RecordError::Expired { .. }) => {
                assert_eq!(e.attempts().len(), 1);
                let text = e.to_string();
                assert!(text.contains("TTL") && text.contains("Timeout"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn huge_ttl_never_wraps() {
        let cfg = ProducerConfig {
            record_ttl: Duration::MAX,
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        let mut a = h.add_to(0, 1, "a", "1");
        h.advance(Duration::from_millis(100));
        let (id, req) = h.poll().pop().unwrap();
        h.ok_all(id, &req, 1);
        assert!(outcome(&mut a).is_ok());
    }

    #[test]
    fn misprediction_refreshes_the_map_without_resending() {
        let mut h = Harness::new(2, config());
        let mut a = h.add_to(0, 2, "a", "1");
        h.advance(Duration::from_millis(100));
        let (id, _) = h.poll().pop().unwrap();
        let stored_elsewhere = PutRecordsResultEntry::Ok {
            shard_id: "shardId-000000000007".into(),
            sequence_number: "1".into(),
        };
        h.engine.on_response(id, Ok(vec![stored_elsewhere]), h.now);
        let out = outcome(&mut a).unwrap();
        assert_eq!(&*out.shard_id, "shardId-000000000007");
        assert!(h.poll_refresh(), "a refresh is asked for");
        assert_eq!(h.engine.held, 0, "nothing re-sent");
    }

    #[test]
    fn refresh_moves_queued_records_to_the_new_shards() {
        let mut h = Harness::new(1, config());
        let mut rxs: Vec<Rx> = (0..4u32)
            .map(|i| {
                let hash = even_range(i, 4).0;
                h.add(
                    UserRecord::new(format!("k{i}"), "x").with_explicit_hash_key(hash.to_string()),
                    HashKey(hash),
                )
            })
            .collect();
        let mut new_shards = shards(4);
        new_shards.push(ShardInfo {
            id: "shardId-000000000000".into(),
            start: 0,
            end: u128::MAX,
            open: false,
        });
        // rename the children so that the parent is gone from the open set
        for (i, s) in new_shards.iter_mut().take(4).enumerate() {
            s.id = format!("shardId-00000000010{i}").into();
        }
        h.engine.on_shard_map(Ok(new_shards), h.now);
        h.advance(Duration::from_millis(100));
        let (id, req) = h.poll().pop().unwrap();
        assert_eq!(req.records.len(), 4);
        let results = req
            .records
            .iter()
            .map(|r| {
                let key: u128 = r.explicit_hash_key.as_ref().unwrap().parse().unwrap();
                let i = (0..4).find(|&i| even_range(i, 4).0 == key).unwrap();
                PutRecordsResultEntry::Ok {
                    shard_id: format!("shardId-00000000010{i}").into(),
                    sequence_number: "1".into(),
                }
            })
            .collect();
        h.engine.on_response(id, Ok(results), h.now);
        for rx in &mut rxs {
            assert!(outcome(rx).is_ok());
        }
        assert!(!h.poll_refresh(), "predictions matched the new map");
    }

    #[test]
    fn per_shard_ordering_one_request_in_flight_per_shard() {
        let cfg = ProducerConfig {
            ordering: Ordering::PerShard,
            ..config()
        };
        let mut h = Harness::new(2, cfg);
        let mut a1 = h.add_to(0, 2, "a", "1");
        let mut a2 = h.add_to(0, 2, "a", "2");
        let mut b1 = h.add_to(1, 2, "b", "1");
        h.advance(Duration::from_millis(100));
        let sent = h.poll();
        assert_eq!(sent.len(), 1);
        let (id, req) = &sent[0];
        let keys: Vec<(&str, &[u8])> = req
            .records
            .iter()
            .map(|r| (r.partition_key.as_str(), &r.data[..]))
            .collect();
        assert_eq!(
            keys,
            vec![("b", &b"1"[..]), ("a", &b"1"[..])],
            "one record per shard per request"
        );
        // shard 0 fails, shard 1 succeeds
        h.engine.on_response(
            *id,
            Ok(vec![
                ok_entry(&req.records[0], 2),
                err_entry("InternalFailure"),
            ]),
            h.now,
        );
        assert!(outcome(&mut b1).is_ok());
        h.advance(Duration::from_secs(6));
        let (id, req) = h.poll_after_window().pop().unwrap();
        assert_eq!(
            &req.records[0].data[..],
            b"1",
            "the failed record goes before the newer one"
        );
        assert_eq!(req.records.len(), 1);
        h.ok_all(id, &req, 2);
        assert!(outcome(&mut a1).is_ok());
        assert!(pending(&mut a2));
        h.advance(Duration::from_millis(100));
        let (id, req) = h.poll_after_window().pop().unwrap();
        assert_eq!(&req.records[0].data[..], b"2");
        h.ok_all(id, &req, 2);
        assert!(outcome(&mut a2).is_ok());
    }

    #[test]
    fn max_in_flight_is_respected() {
        let cfg = ProducerConfig {
            max_in_flight: 2,
            max_records_per_request: 1,
            rate_limiting: false,
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        for _ in 0..5 {
            h.add_to(0, 1, "k", "x");
        }
        let sent = h.poll();
        assert_eq!(sent.len(), 2);
        assert!(h.poll().is_empty());
        h.ok_all(sent[0].0, &sent[0].1, 1);
        assert_eq!(h.poll().len(), 1);
    }

    #[test]
    fn flush_resolves_after_everything_before_it() {
        let mut h = Harness::new(1, config());
        let mut a = h.add_to(0, 1, "a", "1");
        let (ftx, mut frx) = oneshot::channel();
        h.engine.on_flush(ftx);
        let _later = h.add_to(0, 1, "b", "2");
        let sent = h.poll();
        assert_eq!(
            sent.len(),
            1,
            "flush sends without waiting for max_buffered_time"
        );
        assert!(frx.try_recv().is_err());
        h.ok_all(sent[0].0, &sent[0].1, 1);
        assert!(outcome(&mut a).is_ok());
        assert_eq!(frx.try_recv(), Ok(()));
    }

    #[test]
    fn shutdown_drains_then_fails_what_is_left_at_the_deadline() {
        let cfg = ProducerConfig {
            shutdown_timeout: Duration::from_secs(1),
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        let mut a = h.add_to(0, 1, "a", "1");
        let (stx, mut srx) = oneshot::channel();
        h.engine.on_shutdown(Some(stx), h.now);
        let sent = h.poll();
        assert_eq!(sent.len(), 1);
        assert!(!h.engine.is_finished());
        h.advance(Duration::from_secs(1));
        let _ = h.poll();
        assert!(matches!(outcome(&mut a), Err(RecordError::ShutDown { .. })));
        assert!(h.engine.is_finished());
        assert_eq!(srx.try_recv(), Ok(()));
        // a late response is ignored
        h.ok_all(sent[0].0, &sent[0].1, 1);
        assert_eq!(h.gauge.records_held(), 0);
    }

    #[test]
    fn throttling_backs_off_the_shard_rate() {
        let mut h = Harness::new(1, config());
        let throttled = || Ok(vec![err_entry("ProvisionedThroughputExceededException")]);
        let _a = h.add_to(0, 1, "a", "1");
        h.advance(Duration::from_millis(100));
        let (id, _) = h.poll().pop().unwrap();
        h.engine.on_response(id, throttled(), h.now);
        assert_eq!(
            h.engine.shards[0].limiter.rate_factor(),
            1.0,
            "a lone throttle"
        );
        h.advance(Duration::from_millis(500));
        let (id, _) = h
            .poll_after_window()
            .pop()
            .expect("retried after the back-off");
        h.engine.on_response(id, throttled(), h.now);
        assert_eq!(
            h.engine.shards[0].limiter.rate_factor(),
            crate::limiter::DECREASE_FACTOR
        );
        assert_eq!(h.engine.shards[0].stats.throttles, 2);
    }

    fn agg_config() -> ProducerConfig {
        ProducerConfig {
            aggregation: true,
            rate_limiting: false,
            ..config()
        }
    }

    #[test]
    fn aggregates_records_of_one_shard_and_reports_positions() {
        let mut h = Harness::new(2, agg_config());
        let mut rxs: Vec<Rx> = (0..5)
            .map(|i| h.add_to(0, 2, &format!("k{i}"), "data"))
            .collect();
        let mut other = h.add_to(1, 2, "lonely", "x");
        h.advance(Duration::from_millis(100));
        let (id, req) = h.poll().pop().unwrap();
        assert_eq!(
            req.records.len(),
            2,
            "one aggregate for shard 0, one plain record for shard 1"
        );
        let agg = req
            .records
            .iter()
            .find(|r| r.data.starts_with(&crate::aggregation::MAGIC))
            .unwrap();
        assert_eq!(agg.partition_key, "k0");
        assert_eq!(
            agg.explicit_hash_key.as_deref(),
            Some("0"),
            "outer hash key inside shard 0"
        );
        let plain = req
            .records
            .iter()
            .find(|r| r.partition_key == "lonely")
            .unwrap();
        assert_eq!(&plain.data[..], b"x", "a single record is sent raw");
        let subs =
            crate::aggregation::deaggregate(&agg.partition_key, None, agg.data.clone()).unwrap();
        assert_eq!(subs.len(), 5);
        h.ok_all(id, &req, 2);
        for (i, rx) in rxs.iter_mut().enumerate() {
            let out = outcome(rx).unwrap();
            assert_eq!(out.sub_sequence_number, Some(i as u64));
        }
        assert_eq!(outcome(&mut other).unwrap().sub_sequence_number, None);
    }

    #[test]
    fn aggregate_size_limit_is_exact() {
        let cfg = ProducerConfig {
            aggregation_max_size: 1_000,
            ..agg_config()
        };
        let mut h = Harness::new(1, cfg);
        for i in 0..50 {
            h.add_to(0, 1, &format!("key-{i}"), &"x".repeat(90));
        }
        h.add_to(0, 1, "big", &"y".repeat(5_000)); // too large to share an aggregate
        h.advance(Duration::from_millis(100));
        let sent = h.poll();
        let records: Vec<&PutRecordsEntry> = sent.iter().flat_map(|(_, r)| &r.records).collect();
        let mut subs = 0;
        for r in &records {
            if r.partition_key == "big" {
                assert_eq!(r.data.len(), 5_000, "sent alone, raw");
                continue;
            }
            assert!(r.data.len() + r.partition_key.len() <= 1_000);
            subs += crate::aggregation::deaggregate(&r.partition_key, None, r.data.clone())
                .unwrap()
                .len();
        }
        assert_eq!(subs, 50);
    }

    #[test]
    fn stranded_sub_records_are_resent_after_a_split() {
        let mut h = Harness::new(1, agg_config());
        let half = 1u128 << 127;
        let keys = [1u128, half - 1, half, u128::MAX];
        let mut rxs: Vec<Rx> = keys
            .iter()
            .map(|&k| {
                h.add(
                    UserRecord::new(format!("k{k}"), "d").with_explicit_hash_key(k.to_string()),
                    HashKey(k),
                )
            })
            .collect();
        h.advance(Duration::from_millis(100));
        let (id, req) = h.poll().pop().unwrap();
        assert_eq!(req.records.len(), 1, "one aggregate");
        // the shard was split meanwhile: the aggregate (outer key 1) landed on the lower child,
        // which the producer's map does not know yet
        let child = PutRecordsResultEntry::Ok {
            shard_id: "shardId-000000000001".into(),
            sequence_number: "77".into(),
        };
        h.engine.on_response(id, Ok(vec![child]), h.now);
        assert!(
            pending(&mut rxs[0]),
            "parked until the map says the child's range"
        );
        assert!(h.poll_refresh());
        let split = vec![
            ShardInfo {
                id: "shardId-000000000000".into(),
                start: 0,
                end: u128::MAX,
                open: false,
            },
            ShardInfo {
                id: "shardId-000000000001".into(),
                start: 0,
                end: half - 1,
                open: true,
            },
            ShardInfo {
                id: "shardId-000000000002".into(),
                start: half,
                end: u128::MAX,
                open: true,
            },
        ];
        h.engine.on_shard_map(Ok(split), h.now);
        for rx in &mut rxs[..2] {
            let out = outcome(rx).unwrap();
            assert_eq!(&*out.shard_id, "shardId-000000000001");
        }
        assert_eq!(
            h.engine
                .stats
                .stranded_resent
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        h.advance(Duration::from_millis(100));
        let (id, req) = h.poll_after_window().pop().unwrap();
        assert_eq!(
            req.records.len(),
            1,
            "the two stranded records, re-aggregated for the upper child"
        );
        let results = vec![PutRecordsResultEntry::Ok {
            shard_id: "shardId-000000000002".into(),
            sequence_number: "78".into(),
        }];
        h.engine.on_response(id, Ok(results), h.now);
        for rx in &mut rxs[2..] {
            let out = outcome(rx).unwrap();
            assert_eq!(&*out.shard_id, "shardId-000000000002");
            assert_eq!(out.attempts.len(), 2);
            assert_eq!(out.attempts[0].error_code.as_deref(), Some(STRANDED_CODE));
        }
    }

    #[test]
    fn auto_distribution_limits_stream_wide_and_never_predicts() {
        // AUTO: the service ignores keys, so one stream-wide limiter of 4 shards' budget.
        let cfg = ProducerConfig {
            aggregation: true,
            ..config()
        };
        let mut h = Harness::with_prediction(4, cfg, false);
        assert_eq!(h.engine.shards.len(), 1);
        assert!(!h.engine.s.aggregation, "aggregation is off under AUTO");
        let mut rxs: Vec<Rx> = (0..5_000)
            .map(|i| h.add_to(0, 4, &format!("k{i}"), "x"))
            .collect();
        h.advance(Duration::from_millis(100));
        let sent = h.poll();
        let total: usize = sent.iter().map(|(_, r)| r.records.len()).sum();
        assert_eq!(
            total, 4_000,
            "four shards' one-second burst, whatever the keys"
        );
        for (id, req) in &sent {
            // stored anywhere: no misprediction
            let results = req
                .records
                .iter()
                .map(|_| PutRecordsResultEntry::Ok {
                    shard_id: "shardId-000000000003".into(),
                    sequence_number: "1".into(),
                })
                .collect();
            h.engine.on_response(*id, Ok(results), h.now);
        }
        assert!(outcome(&mut rxs[0]).is_ok());
        assert!(!h.poll_refresh(), "no refresh: nothing is predicted");
    }

    #[test]
    fn metrics_reach_the_facade_with_labels() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let cfg = ProducerConfig {
                metrics_granularity: crate::config::MetricsGranularity::Shard,
                ..config()
            };
            let mut h = Harness::new(1, cfg);
            let _a = h.add_to(0, 1, "a", "1");
            let _b = h.add_to(0, 1, "b", "2");
            h.advance(Duration::from_millis(100));
            let (id, req) = h.poll().pop().unwrap();
            h.engine.on_response(
                id,
                Ok(vec![
                    ok_entry(&req.records[0], 1),
                    err_entry("InternalFailure"),
                ]),
                h.now,
            );
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let counter = |name: &str, label: Option<(&str, &str)>| -> u64 {
            snapshot
                .iter()
                .filter(|(k, ..)| k.key().name() == name)
                .filter(|(k, ..)| {
                    let labels: Vec<_> = k
                        .key()
                        .labels()
                        .map(|l| (l.key().to_string(), l.value().to_string()))
                        .collect();
                    labels.iter().any(|(k, v)| k == "stream" && v == "s")
                        && label
                            .is_none_or(|(lk, lv)| labels.iter().any(|(k, v)| k == lk && v == lv))
                })
                .map(|(_, _, _, v)| match v {
                    DebugValue::Counter(c) => *c,
                    _ => 0,
                })
                .sum()
        };
        use crate::metrics::*;
        assert_eq!(counter(USER_RECORDS_RECEIVED, None), 2);
        assert_eq!(counter(USER_RECORDS_PUT, None), 1);
        assert_eq!(counter(REQUESTS, None), 1);
        assert_eq!(counter(RETRIES, None), 1);
        assert_eq!(counter(ERRORS, Some(("code", "InternalFailure"))), 1);
        assert_eq!(
            counter(KINESIS_RECORDS_PUT, Some(("shard", "shardId-000000000000"))),
            1
        );
    }
}
