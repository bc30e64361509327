//! The engine: the synchronous core that owns all producer state and makes every decision.
//!
//! ```text
//!  on_record ──► shard queue ──► aggregator ──► sealed Kinesis record ──► limiter ──► collector
//!   (per predicted shard)        (optional)      (one per shard)        (per shard)     │
//!                                                                                       ▼
//!  on_response ◄── dispatch (in-flight limit ≤ max_in_flight) ◄──────────────────── outbox
//!     │ success: resolve futures; a record stored off its predicted shard → refresh the map
//!     │ retryable failure: back to the front of its shard's queue, shard backs off
//!     └ permanent failure: resolve with the service's error
//! ```
//!
//! The engine does no I/O and never reads the clock: every entry point takes `now`, and
//! [`Engine::poll`] returns the I/O to perform as [`Action`]s. The driver in
//! `producer/driver.rs` moves messages, performs actions and sleeps until
//! [`Engine::next_deadline`]; tests drive the same core with a virtual clock. The steps live in
//! sibling files: `shard` (per-shard state and the shard set), `dispatch` (from queues to
//! requests), `outcome` (responses, retries, expiry), `ledger` (what is held; the only place
//! buffer room is given back) and `telemetry` (stats, metrics and the failure callback).

mod discovery;
mod dispatch;
mod engine_settings;
mod entry;
mod ledger;
mod map;
mod outcome;
mod settings;
mod shard;
mod shard_state;
mod telemetry;
#[cfg(test)]
mod tests;

#[cfg(test)]
use engine_settings::aggregate_max;
pub(crate) use engine_settings::EngineSettings;
pub(crate) use entry::Entry;

use crate::admission::Admission;
use crate::aggregation::Aggregator;
use crate::buffer::BufferGauge;
use crate::collector::{Batch, Collector};
use crate::congestion::Concurrency;
use crate::error::RecordError;
use crate::hash_key::HashKey;
use crate::kinesis::{ClientError, PutRecordsRequest, PutRecordsResultEntry, SequenceNumber};
use crate::limiter::RateControl;
use crate::metrics::Metrics;
use crate::record::Attempt;
use crate::retry;
use crate::shard_map::{RefreshSchedule, ShardInfo, ShardMap};
use crate::stats::{ShardStats, SharedStats};
use crate::stream_settings::SettingsSchedule;
use dispatch::EndpointBackoff;
use entry::KRecord;
use ledger::Ledger;
use shard::Shards;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use telemetry::{Telemetry, STATS_PERIOD};
use tokio::sync::oneshot;

/// A request in flight.
struct InFlight {
    records: Vec<KRecord>,
    /// Data + partition keys of its Kinesis records.
    bytes: usize,
    start: Instant,
}

/// Where the service stored a Kinesis record, and the attempt that stored it.
struct Landing {
    shard_id: Arc<str>,
    sequence_number: SequenceNumber,
    attempt: Attempt,
}

/// An aggregate stored on a shard the map does not know yet, parked: its sub-records are
/// checked against that shard's range once the refreshed map arrives.
struct Parked {
    record: KRecord,
    landing: Landing,
}

/// I/O the engine asks the loop to perform.
pub(crate) enum Action {
    /// Send a PutRecords request, giving up after `timeout`; feed the result to
    /// [`Engine::on_response`] with `id`.
    Send {
        id: u64,
        request: PutRecordsRequest,
        timeout: Duration,
    },
    /// Call ListShards; feed the result to [`Engine::on_shard_map`].
    RefreshShardMap,
    /// Call DescribeStreamSummary; feed the result to [`Engine::on_stream_settings`].
    ReadStreamSettings,
}

/// The producer's synchronous core.
pub(crate) struct Engine {
    s: EngineSettings,
    shards: Shards,
    aggregator: Aggregator,
    collector: Collector<KRecord>,
    outbox: VecDeque<Batch<KRecord>>,
    in_flight: HashMap<u64, InFlight>,
    next_request: u64,
    ledger: Ledger,
    refresh: RefreshSchedule,
    settings_schedule: SettingsSchedule,
    /// Back from `AUTO`: aggregation resumes once a fresh shard map is installed.
    resume_aggregation: bool,
    parked: Vec<Parked>,
    /// The stream's settings and map are being read (a stream met on its first record).
    discovery: Option<discovery::Discovery>,
    shutdown: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    endpoint: EndpointBackoff,
    concurrency: Concurrency,
    admission: Admission,
    /// The stream's rate factor, from the throttling it meets (producers sharing it).
    rate: RateControl,
    /// Where the next poll's round-robin order over the ready shards starts.
    round_robin: usize,
    /// The rate factor when shards held back by their limiters were last woken, or the lowest
    /// since (see `Shards::limit`).
    limited_at: f64,
    /// Shard drains so far: tests check that a poll visits only shards with work.
    drains: u64,
    telemetry: Telemetry,
    scratch: Vec<Entry>,
    /// Scratch for [`Engine::returned`].
    counting: Vec<usize>,
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
            aggregator: Aggregator::new(s.aggregate_max, s.config.aggregation_max_count),
            collector: Collector::new(s.config.max_records_per_request, s.request_bytes),
            refresh: RefreshSchedule::new(s.config.shard_map_refresh_interval, now),
            settings_schedule: SettingsSchedule::new(
                s.config.stream_settings_refresh_interval,
                now,
                settings::jitter_seed(),
            ),
            resume_aggregation: false,
            shards: Shards::new(s.predict),
            outbox: VecDeque::new(),
            in_flight: HashMap::new(),
            next_request: 0,
            ledger: Ledger::new(gauge, stats.clone()),
            parked: Vec::new(),
            discovery: None,
            shutdown: None,
            endpoint: EndpointBackoff::default(),
            concurrency: if s.config.adaptive_concurrency {
                Concurrency::new(s.config.max_in_flight, s.config.request_timeout)
            } else {
                Concurrency::fixed(s.config.max_in_flight, s.config.request_timeout)
            },
            admission: Admission::new(
                s.config.record_ttl,
                (s.config.max_buffered_records, s.config.max_buffered_bytes),
                s.record_limit.bytes,
                now,
            ),
            rate: if s.config.adaptive_rate {
                RateControl::new(now, settings::jitter_seed())
            } else {
                RateControl::fixed(now)
            },
            round_robin: 0,
            limited_at: 1.0,
            drains: 0,
            telemetry: Telemetry::new(s.stream.as_str(), stats, metrics, s.on_failure.clone(), now),
            scratch: Vec::new(),
            counting: Vec::new(),
            s,
        };
        if let Some(tx) = engine.s.dead_letters.take() {
            let stream = engine.s.stream.clone();
            engine.telemetry.set_dead_letters(stream, tx);
        }
        engine.install_map(map, now);
        engine
            .telemetry
            .settings(!engine.s.predict, engine.s.record_limit.bytes);
        engine
    }

    // ---- inputs -------------------------------------------------------------------------

    /// How many shards it sends to.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Hints that a record of hash key `key` comes soon: its shard's state is brought into
    /// cache meanwhile. Returns the shard's index, for [`Engine::prefetch_queue_slot`].
    pub fn prefetch_state(&self, key: HashKey) -> usize {
        self.shards.prefetch_state(key)
    }

    /// Hints that a record for shard index `shard` comes next: the queue slot it goes to is
    /// brought into cache (the shard's state should be already). A stale index only wastes
    /// the hint.
    pub fn prefetch_queue_slot(&self, shard: usize) {
        self.shards.prefetch_queue_slot(shard);
    }

    /// A new user record (validated by `add`; its buffer room already taken).
    pub fn on_record(&mut self, mut entry: Entry, now: Instant) {
        self.ledger.admit(&mut entry);
        self.telemetry.received();
        if self
            .shutdown
            .as_ref()
            .is_some_and(|(deadline, _)| now >= *deadline)
        {
            self.resolve(entry, Err(RecordError::ShutDown { attempts: vec![] }));
            return;
        }
        if self.discovery.is_some() {
            self.hold_for_discovery(entry, now);
        } else {
            self.queue_record(entry, now);
        }
    }

    /// Queues an admitted record for its shard (or fails it if the stream's settings changed
    /// since `add` checked it).
    fn queue_record(&mut self, entry: Entry, now: Instant) {
        // `add` checked it against the settings it saw; they may have changed since.
        if let Some(error) = self.unfit(&entry) {
            self.resolve(
                entry,
                Err(RecordError::Invalid {
                    error,
                    attempts: vec![],
                }),
            );
            return;
        }
        let (aggregation, max_size, max_count) = (
            self.s.aggregation,
            self.aggregator.max_size(),
            self.s.config.aggregation_max_count,
        );
        // A shard lingering on a partial aggregate already has its timer: only a first record
        // (which starts the linger) or a full aggregate needs a drain. (During a flush or a
        // shutdown a shard does not linger: one with records waits only for its limiter or the
        // in-flight limit, which wake it themselves.)
        self.shards.enqueue_back(entry, now, |st| {
            !aggregation || st.queue.len() == 1 || st.full(max_size, max_count)
        });
    }

    /// `flush()`: `reply` fires once every record received so far is resolved.
    pub fn on_flush(&mut self, reply: oneshot::Sender<()>) {
        self.ledger.flush(reply);
        if self.ledger.flushing() {
            // Lingering aggregates go now.
            self.shards.mark_all_held();
        }
    }

    /// `shutdown()` or the last handle dropped: drain everything, then stop. Past the deadline
    /// what is left fails with [`RecordError::ShutDown`].
    pub fn on_shutdown(&mut self, reply: Option<oneshot::Sender<()>>, now: Instant) {
        let deadline = retry::saturating_add(now, self.s.config.shutdown_timeout);
        let (d, replies) = self.shutdown.get_or_insert_with(|| (deadline, Vec::new()));
        *d = (*d).min(deadline);
        replies.extend(reply);
        self.shards.mark_all_held();
    }

    /// Whether it holds no record and has no request in flight: its state may be released
    /// (the answer of a read still under way is then dropped).
    pub fn is_idle(&self) -> bool {
        self.ledger.held() == 0 && self.in_flight.is_empty()
    }

    /// Whether it has something to send and waits for room under the in-flight limit, which
    /// requests of other streams hold.
    pub fn wants_room(&self) -> bool {
        self.requests_in_flight() >= self.concurrency.limit()
            && (!self.outbox.is_empty() || self.shards.has_blocked())
    }

    /// The stream's state is dropped (idle): its admission cap no longer counts.
    pub fn release(mut self) {
        self.ledger.drop_cap();
        self.telemetry.released();
    }

    /// Whether the engine has shut down and holds nothing: the loop may end.
    pub fn is_finished(&self) -> bool {
        self.shutdown.is_some() && self.ledger.held() == 0
    }

    /// The result of a request sent by [`Action::Send`].
    pub fn on_response(
        &mut self,
        id: u64,
        result: Result<Vec<PutRecordsResultEntry>, ClientError>,
        now: Instant,
    ) {
        let Some(request) = self.in_flight.remove(&id) else {
            return; // failed already at the shutdown deadline
        };
        self.s.requests.fetch_sub(1, Relaxed);
        let latency = now.saturating_duration_since(request.start);
        self.telemetry.answered(latency);
        let retry = match result {
            Ok(results) => {
                self.concurrency.on_answer(latency, request.bytes, now);
                self.on_results(request, results, now)
            }
            Err(error) => self.on_request_error(request, error, now),
        };
        self.requeue(retry, now);
    }

    /// The result of an [`Action::RefreshShardMap`].
    pub fn on_shard_map(&mut self, result: Result<Vec<ShardInfo>, ClientError>, now: Instant) {
        let Some(result) = self.discovered_map(result, now) else {
            return;
        };
        let shards = match result {
            Ok(shards) if shards.iter().any(|s| s.open) => shards,
            Ok(_) => {
                self.telemetry.error("NoOpenShards");
                self.refresh.finished(false, now);
                return;
            }
            Err(e) => {
                self.telemetry.error(&e.code_or_kind());
                self.refresh.finished(false, now);
                return;
            }
        };
        self.refresh.finished(true, now);
        let open_after = shards.iter().filter(|s| s.open).count();
        self.telemetry
            .map_refreshed(self.shards.map.open_shards().len(), open_after);
        if std::mem::take(&mut self.resume_aggregation) {
            self.s.aggregation = true;
        }
        self.install_map(ShardMap::new(shards), now);
        let mut retry_entries = Vec::new();
        for mut p in std::mem::take(&mut self.parked) {
            self.returned(&p.record);
            self.check_stranded(&mut p.record, p.landing, &mut retry_entries);
        }
        self.requeue(retry_entries, now);
    }

    // ---- decisions ----------------------------------------------------------------------

    /// Does everything due at `now` and returns the I/O to perform.
    pub fn poll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.refresh.start_if_due(now) {
            actions.push(Action::RefreshShardMap);
        }
        if self.settings_schedule.start_if_due(now) {
            actions.push(Action::ReadStreamSettings);
        }
        if let Some((deadline, _)) = &self.shutdown {
            if now >= *deadline {
                self.fail_everything(now);
            }
        }
        if self.discovery.is_some() {
            self.poll_discovery(now, false);
        }
        let flushing = self.ledger.flushing() || self.shutdown.is_some();
        let mut expired = std::mem::take(&mut self.scratch);
        self.drain_ready(now, flushing, &mut expired);
        for e in expired.drain(..) {
            self.expire(e);
        }
        if expired.capacity() > 1024 {
            expired = Vec::new(); // no high-water mark kept after a burst of expiries
        }
        self.scratch = expired;
        // Under per-shard ordering a shard has one Kinesis record in flight: what the drain
        // collected is all the ready shards have, and waiting would only add to the round trip.
        let send_now = flushing
            || self.s.config.ordering == crate::config::Ordering::PerShard
            || self.starved();
        if let Some(batch) =
            self.collector
                .take_ready(now, self.s.config.max_buffered_time, send_now)
        {
            self.outbox.push_back(batch);
        }
        self.send_ready(now, actions);
        if now >= self.admission.next_tick() {
            self.admission
                .tick((self.ledger.held(), self.ledger.bytes()), now);
            // The round trip moves; the other capacities change only with the map.
            self.update_capacity();
        }
        if now.saturating_duration_since(self.telemetry.last_published) >= STATS_PERIOD {
            self.publish_stats(now);
        }
        if self.shutdown.is_some() && self.ledger.held() == 0 {
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

    /// Nothing in flight or waiting to go, no shard held back by its limiter, and no room in
    /// the buffer: no record can arrive until something is sent, so a request kept open to fill
    /// would only idle. (With a buffer of about one request, requests went out once the oldest
    /// record had waited `max_buffered_time`: 619 k records/s against 1.41 M; BENCHMARKS.md,
    /// issue 12.)
    fn starved(&self) -> bool {
        self.requests_in_flight() == 0
            && self.outbox.is_empty()
            && !self.shards.any_limited()
            && self.ledger.buffer_full()
    }

    /// Requests in flight, this stream's and the other streams' of the producer.
    fn requests_in_flight(&self) -> usize {
        self.s.requests.load(Relaxed)
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
        at(self.settings_schedule.next_due());
        at(self.shutdown.as_ref().map(|(d, _)| *d));
        if self.requests_in_flight() < self.concurrency.limit() && !self.outbox.is_empty() {
            // Dispatch when the endpoint's back-off ends, or at once.
            at(Some(
                self.endpoint
                    .until()
                    .unwrap_or(self.telemetry.last_published),
            ));
        }
        at(self.collector.due_at(self.s.config.max_buffered_time));
        at(self.shards.next_timer());
        at(self.discovery_deadline());
        if self.shards.has_ready() || (self.shards.has_blocked() && !self.saturated()) {
            // Drain at once.
            at(Some(self.telemetry.last_published));
        }
        if self.ledger.held() > 0 {
            at(Some(self.telemetry.last_published + STATS_PERIOD));
            at(Some(self.admission.next_tick()));
        }
        t
    }

    fn publish_stats(&mut self, now: Instant) {
        let factor = self.rate.factor(now);
        let shards = self.shards.iter().map(|s| ShardStats {
            rate_factor: factor,
            ..s.telemetry.stats.clone()
        });
        self.telemetry
            .publish(shards, self.ledger.held(), self.ledger.bytes(), now);
        // Gauges are set again with the others, for recorders that drain them on each read.
        self.telemetry
            .settings(!self.s.predict, self.s.record_limit.bytes);
    }
}
