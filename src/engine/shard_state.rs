//! The state of one shard: its queue of user records (retries at the front, in order), the
//! sealed Kinesis record waiting for its limiter, its token buckets, back-off and outstanding
//! count, and how a Kinesis record is built from the queue (see `shard.rs` for the set of
//! shards and how a poll finds those with work).

use super::entry::{Entry, KRecord};
use super::ledger::Outstanding;
use super::telemetry::ShardTelemetry;
use crate::aggregation::{Aggregator, TryPush};
use crate::kinesis::PutRecordsEntry;
use crate::limiter::ShardLimiter;
use crate::retry::Backoff;
use crate::shard_map::ShardInfo;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Queue capacity an empty shard may keep; a larger one is freed when the queue drains.
pub(super) const IDLE_QUEUE_CAPACITY: usize = 64;

pub(super) struct ShardState {
    pub info: ShardInfo,
    /// Unique among the states the engine ever made (given by [`Shards::install`]).
    pub uid: u64,
    pub queue: VecDeque<Entry>,
    pub queued_bytes: usize,
    pub sealed: Option<KRecord>,
    pub limiter: ShardLimiter,
    pub backoff: Backoff,
    pub backoff_until: Option<Instant>,
    pub outstanding: Outstanding,
    /// When the shard next has something to do without new input (set by the drain).
    pub wake: Option<Instant>,
    pub telemetry: ShardTelemetry,
    /// When the queue last went from empty to holding a new record (engine time): a record
    /// already past its `max_buffered_time` when it arrives (a backlog in the ingest channel)
    /// lingers a short window from here, so that the records behind it share its aggregate.
    pub opened: Option<Instant>,
    /// The time of this shard's live entry in the timer heap.
    pub(super) timer: Option<Instant>,
    /// In the ready queue.
    pub(super) ready: bool,
    /// In the blocked queue.
    pub(super) blocked: bool,
}

impl ShardState {
    pub fn new(info: ShardInfo, limiter: ShardLimiter, telemetry: ShardTelemetry) -> Self {
        ShardState {
            info,
            uid: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            sealed: None,
            limiter,
            backoff: Backoff::default(),
            backoff_until: None,
            outstanding: Outstanding::default(),
            wake: None,
            telemetry,
            opened: None,
            timer: None,
            ready: false,
            blocked: false,
        }
    }

    /// Whether it holds records that have not left for the collector.
    pub fn holds(&self) -> bool {
        !self.queue.is_empty() || self.sealed.is_some()
    }

    /// Whether the queue holds a full aggregate's worth of records.
    pub fn full(&self, max_size: usize, max_count: usize) -> bool {
        self.queued_bytes >= max_size || self.queue.len() >= max_count
    }

    /// Gives back memory a drained queue kept from a burst (no high-water mark kept for ever).
    /// Also halves a queue that uses under a quarter of its capacity: memory follows the work
    /// as it drains, at an amortized cost of one move per record.
    pub fn shrink_idle(&mut self) {
        let cap = self.queue.capacity();
        if cap > IDLE_QUEUE_CAPACITY {
            if self.queue.is_empty() {
                self.queue = VecDeque::new();
            } else if self.queue.len() < cap / 4 {
                self.queue.shrink_to(cap / 2);
            }
        }
    }

    pub fn push_back(&mut self, e: Entry) {
        self.queued_bytes += e.size();
        self.queue.push_back(e);
    }

    pub fn push_front(&mut self, e: Entry) {
        self.queued_bytes += e.size();
        self.queue.push_front(e);
    }

    pub fn pop_front(&mut self) -> Option<Entry> {
        let e = self.queue.pop_front()?;
        self.queued_bytes -= e.size();
        if self.queue.is_empty() {
            self.opened = None;
        }
        Some(e)
    }

    /// When the record at the front should be sealed into a Kinesis record, if the aggregate
    /// is not full before: `max_buffered_time` after it arrived, or, for a record that was
    /// overdue when it reached an empty queue, `max_buffered_time` after that. (The engine only
    /// sees overdue records when it lags behind `add`, a backlog in the ingest channel; sealing
    /// each of them alone would make it lag further, many small aggregates each with its own
    /// request entry, so under a backlog the aggregate waits as if the record had just been
    /// added.)
    pub fn linger_due(&self, max_buffered_time: Duration) -> Option<Instant> {
        let front = self.queue.front()?;
        let due = front
            .arrival
            .checked_add(max_buffered_time)
            .unwrap_or(front.arrival);
        Some(match self.opened {
            Some(opened) if opened > due => opened + max_buffered_time,
            _ => due,
        })
    }

    /// Every record it holds that has not left for the collector, oldest first.
    pub fn drain_held(&mut self) -> impl Iterator<Item = Entry> + '_ {
        let sealed = self.sealed.take().map(|r| r.entries).unwrap_or_default();
        self.queued_bytes = 0;
        self.opened = None;
        sealed.into_iter().chain(self.queue.drain(..))
    }

    /// Takes the next Kinesis record off the queue: an aggregate of as many queued records as
    /// fit, or a single record (sent raw: aggregation off, the record too large to share, only
    /// one record at hand, or a record marked plain, which no aggregate takes).
    pub fn build_record(&mut self, aggregator: &mut Aggregator, aggregation: bool) -> KRecord {
        let first = self.pop_front().expect("caller checked the queue");
        let shard = self.info.id.clone();
        if !aggregation || first.plain || self.queue.is_empty() {
            return KRecord::single(shard, self.uid, first);
        }
        let r = &first.record;
        if let TryPush::NoCapacity =
            aggregator.try_push(&r.partition_key, r.explicit_hash_key.as_deref(), &r.data)
        {
            return KRecord::single(shard, self.uid, first);
        }
        let mut entries = vec![first];
        while let Some(next) = self.queue.front().filter(|e| !e.plain) {
            let r = &next.record;
            match aggregator.try_push(&r.partition_key, r.explicit_hash_key.as_deref(), &r.data) {
                TryPush::Added => entries.push(self.pop_front().expect("front exists")),
                TryPush::NoCapacity => break,
            }
        }
        let aggregate = aggregator.finish().expect("aggregate holds records");
        if entries.len() == 1 {
            return KRecord::single(shard, self.uid, entries.pop().expect("one entry"));
        }
        let oldest = entries.iter().map(|e| e.arrival).min().expect("entries");
        KRecord {
            shard,
            origin: self.uid,
            size: aggregate.data.len() + aggregate.partition_key.len(),
            // The outer hash key is the first sub-record's: inside the predicted shard's
            // range, so the aggregate lands on the shard all its sub-records were predicted for.
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
}
