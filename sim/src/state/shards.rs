//! The mutable state of one stream: its shards (open ones sorted by hash range for binary
//! search routing), stored records, per-shard token buckets, and resharding (uniform
//! rescaling, split, merge) with AWS parent links.

use std::time::{Duration, Instant, SystemTime};

use super::view::{sequence_number, shard_id, ShardCounters, ShardSnapshot};
use crate::config::{RateLimits, ThrottleModel};
use crate::hash::uniform_range;

#[derive(Debug)]
pub(crate) struct Rec {
    pub seq: u64,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
    pub arrival: SystemTime,
}

/// Budget of one shard: records and bytes, a token bucket holding one second of rate or
/// fixed one-second windows (`RateLimits::model`).
#[derive(Debug)]
struct Bucket {
    records: f64,
    bytes: f64,
    last: Instant,
    /// Start of the current one-second window (`SecondWindows`).
    window: Instant,
}

impl Bucket {
    fn full(limits: &RateLimits, now: Instant) -> Self {
        Bucket {
            records: f64::from(limits.records_per_sec),
            bytes: limits.bytes_per_sec as f64,
            last: now,
            window: now,
        }
    }

    /// Takes one record of `size` bytes if the budget allows. A record larger than the
    /// whole byte budget is admitted when the budget is whole (it then runs into debt).
    fn try_take(&mut self, limits: &RateLimits, share: f64, size: u64, now: Instant) -> bool {
        let keep = (1.0 - share).clamp(0.0, 1.0);
        let rec_rate = f64::from(limits.records_per_sec) * keep;
        let byte_rate = limits.bytes_per_sec as f64 * keep;
        match limits.model {
            ThrottleModel::TokenBucket => {
                let dt = now.saturating_duration_since(self.last).as_secs_f64();
                self.last = now;
                self.records = (self.records + dt * rec_rate).min(rec_rate);
                self.bytes = (self.bytes + dt * byte_rate).min(byte_rate);
            }
            ThrottleModel::SecondWindows => {
                let second = Duration::from_secs(1);
                if now.saturating_duration_since(self.window) >= second {
                    let elapsed = now.saturating_duration_since(self.window).as_secs();
                    self.window += second * elapsed as u32;
                    // A new window: the budget is whole again, less any debt.
                    self.records = rec_rate.min(self.records + rec_rate);
                    self.bytes = byte_rate.min(self.bytes + byte_rate);
                }
            }
        }
        let size = size as f64;
        if self.records >= 1.0 && self.bytes >= size.min(byte_rate).max(f64::MIN_POSITIVE) {
            self.records -= 1.0;
            self.bytes -= size;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shard {
    pub index: u32,
    pub parent: Option<u32>,
    pub adjacent_parent: Option<u32>,
    pub start: u128,
    pub end: u128,
    pub starting_seq: u64,
    pub ending_seq: Option<u64>,
    pub created: SystemTime,
    pub closed: Option<SystemTime>,
    pub records: Vec<Rec>,
    bucket: Bucket,
    pub counters: ShardCounters,
}

impl Shard {
    pub fn is_open(&self) -> bool {
        self.ending_seq.is_none()
    }

    pub fn snapshot(&self) -> ShardSnapshot {
        ShardSnapshot {
            shard_id: shard_id(self.index),
            parent_shard_id: self.parent.map(shard_id),
            adjacent_parent_shard_id: self.adjacent_parent.map(shard_id),
            starting_hash_key: self.start,
            ending_hash_key: self.end,
            open: self.is_open(),
            starting_sequence_number: sequence_number(self.starting_seq),
            ending_sequence_number: self.ending_seq.map(sequence_number),
            stored_records: self.records.len(),
        }
    }
}

/// One record to append, already validated and decoded.
#[derive(Debug)]
pub(crate) struct PutEntry {
    /// Hash key to route by; `None` places the record on the next open shard in turn
    /// (the `AUTO` record distribution).
    pub hash: Option<u128>,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    /// The data's length; the data itself is empty unless records are stored.
    pub data_len: usize,
    pub data: Vec<u8>,
    /// Injected `InternalFailure` for this record.
    pub fail: bool,
}

/// What happened to one [`PutEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutResult {
    Stored { shard: u32, seq: u64 },
    Throttled { shard: u32 },
    Failed,
}

/// Why a split or merge cannot be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReshardError {
    NoShard(u32),
    Closed(u32),
    KeyOutside {
        shard: u32,
        key: u128,
        start: u128,
        end: u128,
    },
    NotAdjacent(u32, u32),
}

impl ReshardError {
    /// The message AWS gives, naming the stream and the account.
    pub fn message(&self, stream: &str, account: &str) -> String {
        let at = format!("in stream {stream} under account {account}");
        match self {
            ReshardError::NoShard(i) => format!("Could not find shard {} {at}.", shard_id(*i)),
            ReshardError::Closed(i) => format!("Shard {} {at} is not open.", shard_id(*i)),
            ReshardError::KeyOutside { shard, key, start, end } => format!(
                "NewStartingHashKey {key} used in SplitShard() on shard {} {at} is not both greater than one plus the shard's StartingHashKey {start} and less than the shard's EndingHashKey {end}.",
                shard_id(*shard)
            ),
            ReshardError::NotAdjacent(a, b) => format!(
                "Shards {} and {} {at} are not an adjacent pair of shards eligible for merging",
                shard_id(*a),
                shard_id(*b)
            ),
        }
    }
}

/// Mutable state of a stream.
#[derive(Debug)]
pub(crate) struct StreamState {
    pub shards: Vec<Shard>,
    /// Indices of open shards sorted by starting hash key.
    open: Vec<u32>,
    next_seq: u64,
    /// Draws so far for records without a hash key (the input of their pseudo-random shard).
    auto_draws: u64,
    pub limits: RateLimits,
    pub competing_share: f64,
    store: bool,
}

impl StreamState {
    pub fn new(shards: u32, limits: RateLimits, store: bool) -> Self {
        let mut st = StreamState {
            shards: Vec::new(),
            open: Vec::new(),
            next_seq: 1,
            auto_draws: 0,
            limits,
            competing_share: 0.0,
            store,
        };
        let now = SystemTime::now();
        for i in 0..shards {
            let (s, e) = uniform_range(i, shards);
            st.add_shard(s, e, None, None, now);
        }
        st
    }

    fn add_shard(
        &mut self,
        start: u128,
        end: u128,
        parent: Option<u32>,
        adjacent_parent: Option<u32>,
        now: SystemTime,
    ) -> u32 {
        let index = self.shards.len() as u32;
        self.shards.push(Shard {
            index,
            parent,
            adjacent_parent,
            start,
            end,
            starting_seq: self.next_seq,
            ending_seq: None,
            created: now,
            closed: None,
            records: Vec::new(),
            bucket: Bucket::full(&self.limits, Instant::now()),
            counters: ShardCounters {
                shard_id: shard_id(index),
                ..ShardCounters::default()
            },
        });
        let pos = self
            .open
            .partition_point(|&i| self.shards[i as usize].start < start);
        self.open.insert(pos, index);
        index
    }

    fn close(&mut self, index: u32, now: SystemTime) {
        self.mark_closed(index, now);
        self.open.retain(|&i| i != index);
    }

    /// Closes a shard without touching the list of open shards.
    fn mark_closed(&mut self, index: u32, now: SystemTime) {
        let shard = &mut self.shards[index as usize];
        shard.ending_seq = Some(self.next_seq);
        shard.closed = Some(now);
    }

    /// Number of open shards.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The open shard whose range contains `hash` (binary search), or for `None` (`AUTO`
    /// distribution) a pseudo-random open shard: even over many records, and unrelated to the
    /// order records arrive in, as the service's own placement is (a round robin would put a
    /// producer's per-shard batches back on their shards by coincidence).
    fn place(&mut self, hash: Option<u128>) -> u32 {
        match hash {
            Some(h) => self.route(h),
            None => {
                self.auto_draws += 1;
                // splitmix64
                let mut z = self.auto_draws.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                self.open[(z % self.open.len() as u64) as usize]
            }
        }
    }

    /// The open shard whose range contains `hash`.
    pub fn route(&self, hash: u128) -> u32 {
        let pos = self
            .open
            .partition_point(|&i| self.shards[i as usize].start <= hash);
        self.open[pos.saturating_sub(1)]
    }

    /// Looks up a shard by index.
    pub fn shard(&self, index: u32) -> Option<&Shard> {
        self.shards.get(index as usize)
    }

    /// Appends records, enforcing per-shard budgets record by record.
    pub fn put(&mut self, entries: Vec<PutEntry>, now: Instant) -> Vec<PutResult> {
        let arrival = SystemTime::now();
        let limits = self.limits;
        let share = self.competing_share;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let index = self.place(e.hash);
            let size = (e.data_len + e.partition_key.len()) as u64;
            let shard = &mut self.shards[index as usize];
            if e.fail {
                shard.counters.failed_records += 1;
                shard.counters.failed_bytes += size;
                out.push(PutResult::Failed);
                continue;
            }
            if limits.enabled && !shard.bucket.try_take(&limits, share, size, now) {
                shard.counters.throttled_records += 1;
                shard.counters.throttled_bytes += size;
                out.push(PutResult::Throttled { shard: index });
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            shard.counters.accepted_records += 1;
            shard.counters.accepted_bytes += size;
            if self.store {
                shard.records.push(Rec {
                    seq,
                    partition_key: e.partition_key,
                    explicit_hash_key: e.explicit_hash_key,
                    data: e.data,
                    arrival,
                });
            }
            out.push(PutResult::Stored { shard: index, seq });
        }
        out
    }

    /// Uniform rescaling to `n` shards: every open shard closes; `n` new shards cover the
    /// key space uniformly. Each child's parent is the old shard holding its first key; the
    /// adjacent parent is the one holding its last key, when different.
    pub fn reshard_uniform(&mut self, n: u32) {
        assert!(n > 0);
        let now = SystemTime::now();
        let children: Vec<_> = (0..n)
            .map(|i| {
                let (s, e) = uniform_range(i, n);
                let (p, q) = (self.route(s), self.route(e));
                (s, e, p, (q != p).then_some(q))
            })
            .collect();
        for i in std::mem::take(&mut self.open) {
            self.mark_closed(i, now);
        }
        self.next_seq += 1;
        for (s, e, p, q) in children {
            self.add_shard(s, e, Some(p), q, now);
        }
    }

    /// SplitShard: the open shard `index` becomes `[start, key-1]` and `[key, end]`.
    pub fn split(&mut self, index: u32, key: u128) -> Result<(), ReshardError> {
        let (s, e) = self.check_split(index, key)?;
        let now = SystemTime::now();
        self.close(index, now);
        self.next_seq += 1;
        self.add_shard(s, key - 1, Some(index), None, now);
        self.add_shard(key, e, Some(index), None, now);
        Ok(())
    }

    fn open_shard(&self, index: u32) -> Result<&Shard, ReshardError> {
        match self.shards.get(index as usize) {
            None => Err(ReshardError::NoShard(index)),
            Some(s) if !s.is_open() => Err(ReshardError::Closed(index)),
            Some(s) => Ok(s),
        }
    }

    /// Whether [`Self::split`] would succeed; the shard's range if so. As AWS states it,
    /// the key must be greater than one plus the shard's first key and less than its last.
    pub fn check_split(&self, index: u32, key: u128) -> Result<(u128, u128), ReshardError> {
        let shard = self.open_shard(index)?;
        let (start, end) = (shard.start, shard.end);
        if key > start.saturating_add(1) && key < end {
            Ok((start, end))
        } else {
            Err(ReshardError::KeyOutside {
                shard: index,
                key,
                start,
                end,
            })
        }
    }

    /// MergeShards: two adjacent open shards become one.
    pub fn merge(&mut self, a: u32, b: u32) -> Result<(), ReshardError> {
        let (s, e) = self.check_merge(a, b)?;
        let now = SystemTime::now();
        self.close(a, now);
        self.close(b, now);
        self.next_seq += 1;
        self.add_shard(s, e, Some(a), Some(b), now);
        Ok(())
    }

    /// Whether [`Self::merge`] would succeed; the merged range if so.
    pub fn check_merge(&self, a: u32, b: u32) -> Result<(u128, u128), ReshardError> {
        let (sa, sb) = (self.open_shard(a)?, self.open_shard(b)?);
        let adjacent =
            sa.end.checked_add(1) == Some(sb.start) || sb.end.checked_add(1) == Some(sa.start);
        if !adjacent {
            return Err(ReshardError::NotAdjacent(a, b));
        }
        Ok((sa.start.min(sb.start), sa.end.max(sb.end)))
    }

    /// Shards whose parent or adjacent parent is `index`.
    pub fn children(&self, index: u32) -> Vec<&Shard> {
        self.shards
            .iter()
            .filter(|s| s.parent == Some(index) || s.adjacent_parent == Some(index))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::MAX_HASH_KEY;

    fn entry(hash: u128) -> PutEntry {
        PutEntry {
            hash: Some(hash),
            partition_key: "k".into(),
            explicit_hash_key: None,
            data_len: 10,
            data: vec![0; 10],
            fail: false,
        }
    }

    #[test]
    fn token_bucket_admits_one_second_of_records() {
        let mut st = StreamState::new(1, RateLimits::default(), true);
        let now = Instant::now();
        let res = st.put((0..1500).map(|_| entry(5)).collect(), now);
        let ok = res
            .iter()
            .filter(|r| matches!(r, PutResult::Stored { .. }))
            .count();
        assert_eq!(ok, 1000);
        // Half a second later, 500 more fit.
        let later = now + std::time::Duration::from_millis(500);
        let res = st.put((0..1000).map(|_| entry(5)).collect(), later);
        let ok = res
            .iter()
            .filter(|r| matches!(r, PutResult::Stored { .. }))
            .count();
        assert_eq!(ok, 500);
    }

    #[test]
    fn second_windows_admit_one_second_of_records_per_window() {
        let limits = RateLimits {
            model: ThrottleModel::SecondWindows,
            ..RateLimits::default()
        };
        let mut st = StreamState::new(1, limits, false);
        let t0 = Instant::now();
        let stored = |res: Vec<PutResult>| {
            res.iter()
                .filter(|r| matches!(r, PutResult::Stored { .. }))
                .count()
        };
        // Late in the first window, the whole budget at once.
        let late = t0 + std::time::Duration::from_millis(900);
        assert_eq!(
            stored(st.put((0..1500).map(|_| entry(5)).collect(), late)),
            1000
        );
        // Half a second later, no refill within the window... but a new window has begun.
        let next = t0 + std::time::Duration::from_millis(1000);
        assert_eq!(
            stored(st.put((0..1500).map(|_| entry(5)).collect(), next)),
            1000
        );
        let same = t0 + std::time::Duration::from_millis(1999);
        assert_eq!(stored(st.put((0..10).map(|_| entry(5)).collect(), same)), 0);
        // The token bucket: 100 ms after emptying it, 100 records.
        let mut st = StreamState::new(1, RateLimits::default(), false);
        assert_eq!(
            stored(st.put((0..1500).map(|_| entry(5)).collect(), late)),
            1000
        );
        let soon = late + std::time::Duration::from_millis(100);
        assert_eq!(
            stored(st.put((0..1500).map(|_| entry(5)).collect(), soon)),
            100
        );
    }

    #[test]
    fn byte_budget_and_competing_writer() {
        let mut st = StreamState::new(1, RateLimits::default(), false);
        st.competing_share = 0.5;
        let now = Instant::now();
        let big = PutEntry {
            data_len: 100 * 1024,
            data: vec![0; 100 * 1024],
            ..entry(1)
        };
        let res = st.put(
            (0..10)
                .map(|_| PutEntry {
                    data_len: big.data_len,
                    data: big.data.clone(),
                    ..entry(1)
                })
                .collect(),
            now,
        );
        let ok = res
            .iter()
            .filter(|r| matches!(r, PutResult::Stored { .. }))
            .count();
        assert_eq!(ok, 5, "half of 1 MiB fits five 100 KiB records");
    }

    #[test]
    fn reshard_split_merge() {
        let mut st = StreamState::new(2, RateLimits::unlimited(), true);
        st.reshard_uniform(3);
        assert_eq!(st.open_count(), 3);
        let c = &st.shards[2];
        assert_eq!((c.parent, c.adjacent_parent), (Some(0), None));
        let m = &st.shards[3];
        assert_eq!((m.parent, m.adjacent_parent), (Some(0), Some(1)));
        assert_eq!(
            (st.shards[4].parent, st.shards[4].adjacent_parent),
            (Some(1), None)
        );
        assert!(!st.shards[0].is_open());
        assert!(st.shards[2].starting_seq > st.shards[0].ending_seq.unwrap());
        st.split(4, MAX_HASH_KEY - 10).unwrap();
        assert!(st.split(4, 1).is_err());
        assert_eq!(st.route(MAX_HASH_KEY), 6);
        assert_eq!(st.route(MAX_HASH_KEY - 11), 5);
        st.merge(5, 6).unwrap();
        assert_eq!(st.route(MAX_HASH_KEY), 7);
        assert_eq!(st.shards[7].end, MAX_HASH_KEY);
        assert!(st.merge(2, 7).is_err());
    }
}
