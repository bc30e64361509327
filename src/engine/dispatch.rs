//! From shard queues to requests: each shard's records become Kinesis records (aggregated or
//! not), pass its limiter and enter the collector; full or due batches wait in the outbox and
//! leave as PutRecords requests while fewer than the congestion controller's limit (at most
//! `max_in_flight`) are in flight and the endpoint is not backing off. Records past their TTL never leave.

use super::entry::{Entry, KRecord};
use super::{Action, Engine, InFlight};
use crate::collector::Batch;
use crate::config::Ordering;
use crate::kinesis::PutRecordsRequest;
use crate::retry::Backoff;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// How far the rate factor must rise above the one at which shards were last held back by
/// their limiters before they are woken to work their waits out again (see `Shards::limit`).
const LIMITED_REWAKE: f64 = 1.25;

/// Whole-request failures in a row after which all sending backs off.
const ENDPOINT_BACKOFF_AFTER: u32 = 2;

/// The stream-wide back-off: one failed request among successful ones (a latency spike, a
/// dropped connection) is retried at once; failures in a row mean the endpoint is in trouble,
/// and then all sending backs off.
#[derive(Default)]
pub(super) struct EndpointBackoff {
    backoff: Backoff,
    until: Option<Instant>,
    failures: u32,
}

impl EndpointBackoff {
    /// A response with per-record results arrived.
    ///
    /// Returns whether this ends a back-off.
    pub fn answered(&mut self) -> bool {
        let was_backing_off = self.failures >= ENDPOINT_BACKOFF_AFTER;
        self.backoff.reset();
        self.until = None;
        self.failures = 0;
        was_backing_off
    }

    /// A whole request failed with a retryable error. Returns the pause if this starts a
    /// back-off (later failures only lengthen it).
    pub fn failed(&mut self, now: Instant) -> Option<std::time::Duration> {
        self.failures += 1;
        if self.failures >= ENDPOINT_BACKOFF_AFTER {
            let delay = self.backoff.next_delay();
            self.until = Some(now + delay);
            return (self.failures == ENDPOINT_BACKOFF_AFTER).then_some(delay);
        }
        None
    }

    /// When sending may resume, if it is paused at `now`.
    pub fn paused_until(&mut self, now: Instant) -> Option<Instant> {
        if self.until.is_some_and(|t| t <= now) {
            self.until = None;
        }
        self.until
    }

    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

impl Engine {
    pub(super) fn saturated(&self) -> bool {
        self.requests_in_flight() + self.outbox.len() >= self.concurrency.limit()
    }

    /// Drains the shards that may have work: those a timer or an event made ready, and, while
    /// the in-flight limit has room, those it blocked earlier. Costs in proportion to the shards
    /// visited, never to the shard count.
    pub(super) fn drain_ready(&mut self, now: Instant, flushing: bool, expired: &mut Vec<Entry>) {
        self.shards.fire_timers(now);
        let factor = self.rate.factor(now);
        if factor >= self.limited_at * LIMITED_REWAKE {
            self.shards.wake_limited();
            self.limited_at = factor;
        }
        self.limited_at = self.limited_at.min(factor);
        self.round_robin = self.round_robin.wrapping_add(1);
        self.shards.rotate_ready(self.round_robin);
        while let Some(i) = self.shards.next_to_drain(!self.saturated()) {
            self.drains += 1;
            self.drain_shard(i, now, factor, flushing, expired);
            let st = self.shards.state_mut(i);
            st.shrink_idle();
            if let Some(at) = st.wake {
                self.shards.schedule(i, at);
            }
        }
    }

    /// The aggregate size bound at rate `factor` (see [`crate::limiter::control::aggregate_cap`]);
    /// the aggregator follows it.
    fn aggregate_max(&mut self, factor: f64) -> usize {
        let max = match self.s.shard_rate {
            Some((_, bytes)) if factor < 1.0 => {
                crate::limiter::control::aggregate_cap(factor, bytes, self.s.aggregate_max)
            }
            _ => self.s.aggregate_max,
        };
        self.aggregator.set_max_size(max);
        max
    }

    /// Moves what shard `i` may send now, at the stream's rate `factor`, into the collector,
    /// and sets the shard's wake time; a shard stopped by the in-flight limit joins the blocked
    /// queue.
    fn drain_shard(
        &mut self,
        i: usize,
        now: Instant,
        factor: f64,
        flushing: bool,
        expired: &mut Vec<Entry>,
    ) {
        let saturated = self.saturated();
        let per_shard = self.s.config.ordering == Ordering::PerShard;
        let aggregate_max = self.aggregate_max(factor);
        let ttl = self.s.config.record_ttl;
        let st = self.shards.state_mut(i);
        st.wake = None;
        while st.queue.front().is_some_and(|e| e.deadline(ttl) <= now) {
            expired.push(st.pop_front().expect("front exists"));
        }
        let head_deadline = st.queue.front().map(|e| e.deadline(ttl));
        if !st.holds() {
            return;
        }
        if let Some(t) = st.backoff_until.filter(|t| *t > now) {
            st.wake = Some(head_deadline.map_or(t, |d| d.min(t)));
            return;
        }
        st.backoff_until = None;
        st.limiter.follow(factor, now);
        if per_shard && st.outstanding.get() > 0 {
            // Woken when its outstanding count falls to 0 (`returned`).
            st.wake = head_deadline;
            return;
        }
        if saturated {
            st.wake = head_deadline;
            self.shards.block(i);
            return;
        }
        loop {
            let st = self.shards.state_mut(i);
            // Sealed now because its linger ended: on time, not part of a backlog.
            let mut lingered = false;
            if st.sealed.is_none() {
                let Some(front) = st.queue.front() else { break };
                if self.s.aggregation && !flushing {
                    let (deadline, arrival) = (front.deadline(ttl), front.arrival());
                    let max_buffered_time = self.s.config.max_buffered_time;
                    let due = st.linger_due(max_buffered_time).expect("queue has a front");
                    let full = st.full(aggregate_max, self.s.config.aggregation_max_count);
                    if !full && due > now {
                        st.wake = Some(due.min(deadline));
                        break;
                    }
                    // (Not a linger lengthened for a record that arrived overdue: that one is
                    // part of a backlog.)
                    lingered = !full && Some(due) == arrival.checked_add(max_buffered_time);
                }
                st.sealed = Some(st.build_record(
                    &mut self.aggregator,
                    self.s.aggregation,
                    self.s.config.aggregation_scope,
                ));
            }
            let size = st.sealed.as_ref().map_or(0, |r| r.size);
            if let Err(at) = st.limiter.try_acquire(size, now) {
                self.rate.limited();
                st.wake = Some(head_deadline.map_or(at, |d| d.min(at)));
                self.shards.limit(i);
                break;
            }
            let record = st.sealed.take().expect("sealed record");
            self.ledger.sent(&mut st.outstanding);
            let oldest = record.oldest;
            let closed = if lingered {
                self.collector.push_due(record, size, oldest)
            } else {
                self.collector.push(record, size, oldest, now)
            };
            if let Some(batch) = closed {
                self.outbox.push_back(batch);
            }
            if self.collector.is_full() {
                self.outbox.push_back(self.collector.take());
            }
            if per_shard || self.saturated() {
                let st = self.shards.state_mut(i);
                if !per_shard && st.holds() {
                    st.wake = st.queue.front().map(|e| e.deadline(ttl));
                    self.shards.block(i);
                }
                break;
            }
        }
    }

    /// Sends batches from the outbox while the in-flight limit and the endpoint allow.
    pub(super) fn send_ready(&mut self, now: Instant, actions: &mut Vec<Action>) {
        while self.requests_in_flight() < self.concurrency.limit()
            && self.endpoint.paused_until(now).is_none()
        {
            let Some(mut batch) = self.outbox.pop_front() else {
                break;
            };
            // A batch may wait in the outbox (endpoint back-off, in-flight limit) past its
            // records' TTL: never send those.
            self.take_expired(&mut batch, now);
            if !batch.records.is_empty() {
                actions.push(self.dispatch(batch, now));
            }
        }
    }

    /// Takes the Kinesis records holding an entry past its TTL out of `batch`: the expired
    /// entries fail, the others go back to the front of their shard's queue, in order.
    fn take_expired(&mut self, batch: &mut Batch<KRecord>, now: Instant) {
        let ttl = self.s.config.record_ttl;
        if batch.records.iter().all(|r| r.live(now, ttl)) {
            return;
        }
        let mut back: Vec<Entry> = Vec::new();
        for r in std::mem::take(&mut batch.records) {
            if r.live(now, ttl) {
                batch.records.push(r);
                continue;
            }
            batch.bytes = batch.bytes.saturating_sub(r.size);
            self.returned(&r);
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
            self.telemetry
                .packed(r.entries.len(), now.saturating_duration_since(r.oldest));
            // The wire form is only read here (a retry rebuilds it from the entries): move it
            // out instead of copying every partition key.
            wire.push(std::mem::take(&mut r.wire));
        }
        self.telemetry.dispatched(user_records);
        self.s.requests.fetch_add(1, Relaxed);
        self.in_flight.insert(
            id,
            InFlight {
                records: batch.records,
                bytes: batch.bytes,
                start: now,
            },
        );
        Action::Send {
            id,
            timeout: self.concurrency.timeout(batch.bytes),
            request: PutRecordsRequest {
                stream: self.s.stream.clone(),
                records: wire,
            },
        }
    }

    /// A Kinesis record left the pipeline (answered, taken back or failed): its shard has one
    /// fewer outstanding.
    pub(super) fn returned(&mut self, r: &KRecord) {
        let mut counting = std::mem::take(&mut self.counting);
        self.shards.counting(r, &mut counting);
        for i in counting.drain(..) {
            let st = self.shards.state_mut(i);
            self.ledger.returned(&mut st.outstanding);
            if st.outstanding.get() == 0 && st.holds() {
                self.shards.mark_ready(i);
            }
        }
        self.counting = counting;
    }
}
