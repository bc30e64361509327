//! The state of one shard: its queue of user records (retries at the front, in order), the
//! sealed Kinesis record waiting for its limiter, its token buckets, back-off and outstanding
//! count, and how a Kinesis record is built from the queue, shard-wide or one partition key per
//! aggregate (see `shard.rs` for the set of shards and how a poll finds those with work).

use super::entry::{Entry, KRecord};
use super::ledger::Outstanding;
use super::telemetry::ShardTelemetry;
use crate::aggregation::{Aggregator, TryPush};
use crate::config::AggregationScope;
use crate::kinesis::PutRecordsEntry;
use crate::limiter::ShardLimiter;
use crate::retry::Backoff;
use crate::shard_map::ShardInfo;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Queue capacity an empty shard may keep (1,024 bytes of entries); a larger one is freed when
/// the queue drains. At 10,000 shards a queue holds a few dozen records between aggregates:
/// keeping 64 slots (10 KiB) per drained queue held 40 MiB more heap than the records in them
/// (`bench_e2e cpu --shards 10000 --heap`; BENCHMARKS.md, issue 12), for about 5 % less CPU.
pub(super) const IDLE_QUEUE_CAPACITY: usize = 8;

/// Under [`AggregationScope::PartitionKey`], how many queued records of other keys an aggregate
/// looks past, after the last record of its key, for the next one (see
/// [`ShardState::take_same_key`]). 256: a key among up to a few hundred others active on one
/// shard still finds its next record, and a scan that finds nothing costs a few hundred `u128`
/// comparisons.
pub(super) const SAME_KEY_LOOKAHEAD: usize = 256;

/// The fields every queued record touches come first, within the first cache line
/// (`repr(C)` keeps the order, `align(64)` starts each state on a line): at thousands of
/// shards a state is rarely in cache when a record arrives for it.
#[repr(C, align(64))]
pub(super) struct ShardState {
    pub queue: VecDeque<Entry>,
    pub queued_bytes: usize,
    /// When the queue last went from empty to holding a new record (engine time): a record
    /// already past its `max_buffered_time` when it arrives (a backlog in the ingest channel)
    /// lingers a short window from here, so that the records behind it share its aggregate.
    pub opened: Option<Instant>,
    /// In the ready queue.
    pub(super) ready: bool,
    /// In the blocked queue.
    pub(super) blocked: bool,
    /// In the limited list.
    pub(super) limited: bool,
    pub info: ShardInfo,
    /// Unique among the states the engine ever made (given by
    /// [`Shards::install`](super::shard::Shards::install)).
    pub uid: u64,
    pub sealed: Option<KRecord>,
    pub limiter: ShardLimiter,
    pub backoff: Backoff,
    pub backoff_until: Option<Instant>,
    pub outstanding: Outstanding,
    /// When the shard next has something to do without new input (set by the drain).
    pub wake: Option<Instant>,
    pub telemetry: ShardTelemetry,
    /// The time of this shard's live entry in the timer heap.
    pub(super) timer: Option<Instant>,
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
            limited: false,
        }
    }

    /// Whether it holds records that have not left for the collector.
    pub fn holds(&self) -> bool {
        !self.queue.is_empty() || self.sealed.is_some()
    }

    /// Whether the queue holds a full aggregate's worth of records.
    ///
    /// Counted over the whole queue under either aggregation scope. Under
    /// [`AggregationScope::PartitionKey`] a full queue does not mean a full aggregate for the
    /// front record's key, but it does mean the shard has a backlog to send rather than wait on:
    /// the drain then builds Kinesis records until the queue is no longer full, and the rest
    /// linger as before, which still pays: records of a key that arrive during the linger join
    /// its aggregate while they are within the look-ahead. (Counting per key would need a map
    /// per shard updated on every record.)
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
        let arrival = self.queue.front()?.arrival();
        let due = arrival.checked_add(max_buffered_time).unwrap_or(arrival);
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
    /// one record at hand, or a record marked plain, which no aggregate takes). Under
    /// [`AggregationScope::PartitionKey`] the aggregate holds only records of the first one's
    /// partition key (see [`ShardState::take_same_key`]).
    pub fn build_record(
        &mut self,
        aggregator: &mut Aggregator,
        aggregation: bool,
        scope: AggregationScope,
    ) -> KRecord {
        let first = self.pop_front().expect("caller checked the queue");
        let shard = self.info.id.clone();
        if !aggregation || first.plain() || self.queue.is_empty() {
            return KRecord::single(shard, self.uid, first);
        }
        if let TryPush::NoCapacity = aggregator.try_push(
            &first.key,
            first.explicit_hash_key().as_deref(),
            &first.data,
        ) {
            return KRecord::single(shard, self.uid, first);
        }
        let mut entries = match scope {
            AggregationScope::Shard => {
                // Push the records that fit, then move them off the queue at once, into a
                // vector of their number.
                let (mut taken, mut bytes) = (0, 0);
                for next in self.queue.iter().take_while(|e| !e.plain()) {
                    let ehk = next.explicit_hash_key();
                    match aggregator.try_push(&next.key, ehk.as_deref(), &next.data) {
                        TryPush::Added => (taken, bytes) = (taken + 1, bytes + next.size()),
                        TryPush::NoCapacity => break,
                    }
                }
                self.queued_bytes -= bytes;
                let capacity = self.queue.capacity();
                let entries = if 4 * (taken + 1) >= 3 * capacity {
                    // The aggregate's records fill most of the queue's buffer: the
                    // aggregate takes the buffer itself rather than a copy of its records,
                    // and the records left behind (a backlog) move to a new buffer of the
                    // same size. (A drained queue would give the buffer back anyway; the
                    // bound on the unused part keeps an aggregate in flight from holding
                    // much more than its records.)
                    let rest = if taken == self.queue.len() {
                        VecDeque::new()
                    } else {
                        let mut rest = VecDeque::with_capacity(capacity);
                        rest.extend(self.queue.drain(taken..));
                        rest
                    };
                    let mut buffer = std::mem::replace(&mut self.queue, rest);
                    buffer.push_front(first);
                    Vec::from(buffer)
                } else {
                    let mut entries = Vec::with_capacity(taken + 1);
                    entries.push(first);
                    entries.extend(self.queue.drain(..taken));
                    entries
                };
                if self.queue.is_empty() {
                    self.opened = None;
                }
                entries
            }
            AggregationScope::PartitionKey => {
                let mut entries = self.take_same_key(aggregator, &first);
                entries.insert(0, first);
                entries
            }
        };
        let aggregate = aggregator.finish().expect("aggregate holds records");
        if entries.len() == 1 {
            return KRecord::single(shard, self.uid, entries.pop().expect("one entry"));
        }
        let explicit_hash_key = match scope {
            // The first sub-record's hash key: inside the predicted shard's range, so the
            // aggregate lands on the shard all its sub-records were predicted for.
            AggregationScope::Shard => Some(entries[0].hash_key.to_string()),
            // Every sub-record has the first one's hash key, which the outer record carries as
            // the user gave it: its explicit hash key, or none (the partition key's MD5 is the
            // hash key), as a plain record of that key would.
            AggregationScope::PartitionKey => entries[0].explicit_hash_key().map(|k| k.to_string()),
        };
        let oldest = entries.iter().map(Entry::arrival).min().expect("entries");
        KRecord {
            shard,
            origin: self.uid,
            size: aggregate.data.len() + aggregate.partition_key.len(),
            wire: PutRecordsEntry {
                explicit_hash_key,
                data: aggregate.data,
                partition_key: aggregate.partition_key.into(),
            },
            entries: SmallVec::from_vec(entries),
            aggregated: true,
            oldest,
        }
    }

    /// Pushes the queued records that share `first`'s partition key and hash key into
    /// `aggregator` (which holds `first`) while they fit, and takes them off the queue, in
    /// order; the records passed over keep their order at the front of the queue.
    ///
    /// **Bounded work.** The scan looks at most [`SAME_KEY_LOOKAHEAD`] records past the last
    /// one it took (or past `first`), so an aggregate of `n` records costs at most
    /// `(n + 1) × SAME_KEY_LOOKAHEAD` comparisons (a `u128` hash key first, the partition key
    /// only when the hash keys are equal) and at most three moves per record scanned, whatever
    /// the queue's length: a constant per record that leaves the queue. A key whose records keep coming within the
    /// look-ahead of each other is followed through a long queue; one whose records are spread
    /// thinner among other keys gets several smaller aggregates. (An index of each queue by key
    /// would find them all, but costs a map update per record on the hot path and holes in the
    /// queue for the records taken out of its middle; the look-ahead keeps the queue a plain
    /// deque.)
    ///
    /// **Order.** The scan stops at a record of the same hash key that it may not take (another
    /// partition key with the same explicit hash key, or a record marked plain): records of one
    /// hash key are never reordered, as [`crate::config::Ordering::PerShard`] needs. The records
    /// passed over have other hash keys; they only wait for a later Kinesis record.
    fn take_same_key(&mut self, aggregator: &mut Aggregator, first: &Entry) -> Vec<Entry> {
        let (key, hash) = (&first.key, first.hash_key);
        let same = |e: &Entry| !e.plain() && e.hash_key == hash && e.key == *key;
        let mut last = None;
        let mut passed = 0;
        for (i, e) in self.queue.iter().enumerate() {
            if passed >= SAME_KEY_LOOKAHEAD {
                break;
            }
            if e.hash_key != hash {
                passed += 1;
                continue;
            }
            if !same(e) {
                break;
            }
            let ehk = e.explicit_hash_key();
            match aggregator.try_push(key, ehk.as_deref(), &e.data) {
                TryPush::Added => (last, passed) = (Some(i), 0),
                TryPush::NoCapacity => break,
            }
        }
        let Some(last) = last else {
            return Vec::new();
        };
        // Every record of the key up to `last` was pushed (the scan stops at the first one it
        // cannot take). Take them out; rotate the others, in order, back to the front. A pop
        // frees the slot the push then uses: nothing is reallocated.
        let mut taken = Vec::new();
        let mut kept = 0;
        for _ in 0..=last {
            let e = self.queue.pop_front().expect("scanned");
            if same(&e) {
                self.queued_bytes -= e.size();
                taken.push(e);
            } else {
                self.queue.push_back(e);
                kept += 1;
            }
        }
        self.queue.rotate_right(kept);
        if self.queue.is_empty() {
            self.opened = None;
        }
        taken
    }
}
