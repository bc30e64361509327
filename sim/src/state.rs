//! In-memory streams: shards, records, token buckets, resharding and inspection snapshots.
//!
//! Each stream sits behind its own `Mutex`; the registry of streams behind an `RwLock` held
//! only for lookups. Request parsing, base64 and JSON happen outside these locks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Instant, SystemTime};

use crate::config::{Faults, RateLimits, SimConfig, StreamOptions};
use crate::hash::uniform_range;

/// Formats a shard index as an AWS shard id (`shardId-000000000007`).
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

/// Parses `shardId-000000000007` (or a bare number) back to its index.
pub fn parse_shard_id(id: &str) -> Option<u32> {
    id.strip_prefix("shardId-").unwrap_or(id).parse().ok()
}

/// Formats an internal sequence counter as a 56-digit decimal string (AWS width), so that
/// string order equals numeric order.
pub fn sequence_number(n: u64) -> String {
    format!("49{n:054}")
}

/// Parses a sequence number produced by [`sequence_number`].
pub fn parse_sequence_number(s: &str) -> Option<u64> {
    if s.len() != 56 {
        return None;
    }
    s.strip_prefix("49")?.parse().ok()
}

/// One record as stored by the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Shard the record landed on.
    pub shard_id: String,
    /// Its sequence number (56 decimal digits).
    pub sequence_number: String,
    /// Partition key as sent.
    pub partition_key: String,
    /// Explicit hash key as sent, if any.
    pub explicit_hash_key: Option<String>,
    /// The decoded payload.
    pub data: Vec<u8>,
    /// Arrival time (ApproximateArrivalTimestamp).
    pub arrival: SystemTime,
}

/// A shard as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// `shardId-000000000000` style id.
    pub shard_id: String,
    /// Parent (split/merge/reshard source), if any.
    pub parent_shard_id: Option<String>,
    /// Second parent of a merge, if any.
    pub adjacent_parent_shard_id: Option<String>,
    /// First hash key of the shard's range.
    pub starting_hash_key: u128,
    /// Last hash key of the shard's range (inclusive).
    pub ending_hash_key: u128,
    /// False once the shard was closed by a reshard.
    pub open: bool,
    /// Starting sequence number.
    pub starting_sequence_number: String,
    /// Ending sequence number once closed.
    pub ending_sequence_number: Option<String>,
    /// Number of stored records.
    pub stored_records: usize,
}

/// Per-shard write counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Shard id.
    pub shard_id: String,
    /// Records accepted (stored).
    pub accepted_records: u64,
    /// Bytes (data + partition key) accepted.
    pub accepted_bytes: u64,
    /// Records rejected with `ProvisionedThroughputExceededException`.
    pub throttled_records: u64,
    /// Bytes of throttled records.
    pub throttled_bytes: u64,
    /// Records failed with an injected `InternalFailure`.
    pub failed_records: u64,
    /// Bytes of failed records.
    pub failed_bytes: u64,
}

/// Counters of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Requests naming the stream (all actions, including faulted ones).
    pub requests: u64,
    /// PutRecords and PutRecord requests that reached the stream.
    pub put_requests: u64,
    /// Injected HTTP 500 responses.
    pub http_500_injected: u64,
    /// Injected HTTP 503 responses.
    pub http_503_injected: u64,
    /// Connections dropped by `drop_connection_rate`.
    pub connections_dropped: u64,
    /// Requests dropped while the stream was unreachable.
    pub unreachable_dropped: u64,
    /// Per-shard counters in shard-index order (closed shards included).
    pub shards: Vec<ShardCounters>,
}

impl StreamCounters {
    /// Sum of accepted records over all shards.
    pub fn accepted_records(&self) -> u64 {
        self.shards.iter().map(|s| s.accepted_records).sum()
    }
    /// Sum of throttled records over all shards.
    pub fn throttled_records(&self) -> u64 {
        self.shards.iter().map(|s| s.throttled_records).sum()
    }
    /// Sum of injected-failure records over all shards.
    pub fn failed_records(&self) -> u64 {
        self.shards.iter().map(|s| s.failed_records).sum()
    }
}

/// Request-level counters, updated without the stream lock.
#[derive(Debug, Default)]
pub(crate) struct AtomicCounters {
    pub requests: AtomicU64,
    pub put_requests: AtomicU64,
    pub http_500: AtomicU64,
    pub http_503: AtomicU64,
    pub dropped: AtomicU64,
    pub unreachable: AtomicU64,
}

impl AtomicCounters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct Rec {
    pub seq: u64,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
    pub arrival: SystemTime,
}

/// Token bucket of one shard: records and bytes, capacity one second of rate.
#[derive(Debug)]
struct Bucket {
    records: f64,
    bytes: f64,
    last: Instant,
}

impl Bucket {
    fn full(limits: &RateLimits, now: Instant) -> Self {
        Bucket {
            records: f64::from(limits.records_per_sec),
            bytes: limits.bytes_per_sec as f64,
            last: now,
        }
    }

    /// Takes one record of `size` bytes if the budget allows. A record larger than the
    /// whole byte capacity is admitted when the bucket is full (it then runs into debt).
    fn try_take(&mut self, limits: &RateLimits, share: f64, size: u64, now: Instant) -> bool {
        let keep = (1.0 - share).clamp(0.0, 1.0);
        let rec_rate = f64::from(limits.records_per_sec) * keep;
        let byte_rate = limits.bytes_per_sec as f64 * keep;
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.records = (self.records + dt * rec_rate).min(rec_rate);
        self.bytes = (self.bytes + dt * byte_rate).min(byte_rate);
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
    pub hash: u128,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
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

/// Mutable state of a stream.
#[derive(Debug)]
pub(crate) struct StreamState {
    pub shards: Vec<Shard>,
    /// Indices of open shards sorted by starting hash key.
    open: Vec<u32>,
    next_seq: u64,
    pub limits: RateLimits,
    pub competing_share: f64,
    store: bool,
}

impl StreamState {
    fn new(shards: u32, limits: RateLimits, store: bool) -> Self {
        let mut st = StreamState {
            shards: Vec::new(),
            open: Vec::new(),
            next_seq: 1,
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
        self.open.push(index);
        let shards = &self.shards;
        self.open.sort_by_key(|&i| shards[i as usize].start);
        index
    }

    fn close(&mut self, index: u32, now: SystemTime) {
        let seq = self.next_seq;
        let shard = &mut self.shards[index as usize];
        shard.ending_seq = Some(seq);
        shard.closed = Some(now);
        self.open.retain(|&i| i != index);
    }

    /// Number of open shards.
    pub fn open_count(&self) -> usize {
        self.open.len()
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
            let index = self.route(e.hash);
            let size = (e.data.len() + e.partition_key.len()) as u64;
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
        let old: Vec<u32> = self.open.clone();
        let owner = |st: &StreamState, key: u128| -> u32 {
            *old.iter()
                .find(|&&i| {
                    let s = &st.shards[i as usize];
                    s.start <= key && key <= s.end
                })
                .expect("open shards cover the key space")
        };
        let mut children = Vec::new();
        for i in 0..n {
            let (s, e) = uniform_range(i, n);
            let p = owner(self, s);
            let q = owner(self, e);
            children.push((s, e, p, (q != p).then_some(q)));
        }
        for &i in &old {
            self.close(i, now);
        }
        self.next_seq += 1;
        for (s, e, p, q) in children {
            self.add_shard(s, e, Some(p), q, now);
        }
    }

    /// SplitShard: the open shard `index` becomes `[start, key-1]` and `[key, end]`.
    pub fn split(&mut self, index: u32, key: u128) -> Result<(), String> {
        let shard = self
            .shards
            .get(index as usize)
            .ok_or_else(|| format!("Could not find shard {}", shard_id(index)))?;
        if !shard.is_open() {
            return Err(format!("Shard {} is not open", shard_id(index)));
        }
        let (s, e) = (shard.start, shard.end);
        if key <= s || key > e {
            return Err(format!(
                "NewStartingHashKey {key} used in SplitShard() on shard {} is not within the shard's hash key range.",
                shard_id(index)
            ));
        }
        let now = SystemTime::now();
        self.close(index, now);
        self.next_seq += 1;
        self.add_shard(s, key - 1, Some(index), None, now);
        self.add_shard(key, e, Some(index), None, now);
        Ok(())
    }

    /// MergeShards: two adjacent open shards become one.
    pub fn merge(&mut self, a: u32, b: u32) -> Result<(), String> {
        let (sa, sb) = match (self.shards.get(a as usize), self.shards.get(b as usize)) {
            (Some(x), Some(y)) => (x, y),
            _ => return Err("Could not find both shards to merge".into()),
        };
        if !sa.is_open() || !sb.is_open() {
            return Err("Both shards to merge must be open".into());
        }
        let adjacent =
            sa.end.checked_add(1) == Some(sb.start) || sb.end.checked_add(1) == Some(sa.start);
        if !adjacent {
            return Err(format!(
                "Shards {} and {} are not adjacent",
                shard_id(a),
                shard_id(b)
            ));
        }
        let (s, e) = (sa.start.min(sb.start), sa.end.max(sb.end));
        let now = SystemTime::now();
        self.close(a, now);
        self.close(b, now);
        self.next_seq += 1;
        self.add_shard(s, e, Some(a), Some(b), now);
        Ok(())
    }

    /// Shards whose parent or adjacent parent is `index`.
    pub fn children(&self, index: u32) -> Vec<&Shard> {
        self.shards
            .iter()
            .filter(|s| s.parent == Some(index) || s.adjacent_parent == Some(index))
            .collect()
    }
}

/// One stream: identity, state behind a mutex, faults and request counters.
#[derive(Debug)]
pub(crate) struct Stream {
    pub name: String,
    pub arn: String,
    pub created: SystemTime,
    pub max_record_size_kib: u32,
    pub state: Mutex<StreamState>,
    pub faults: RwLock<Faults>,
    pub counters: AtomicCounters,
}

impl Stream {
    pub fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn counters(&self) -> StreamCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamCounters {
            requests: get(&c.requests),
            put_requests: get(&c.put_requests),
            http_500_injected: get(&c.http_500),
            http_503_injected: get(&c.http_503),
            connections_dropped: get(&c.dropped),
            unreachable_dropped: get(&c.unreachable),
            shards: self
                .lock()
                .shards
                .iter()
                .map(|s| s.counters.clone())
                .collect(),
        }
    }

    pub fn records(&self) -> Vec<StoredRecord> {
        let st = self.lock();
        st.shards
            .iter()
            .flat_map(|s| {
                s.records.iter().map(move |r| StoredRecord {
                    shard_id: shard_id(s.index),
                    sequence_number: sequence_number(r.seq),
                    partition_key: r.partition_key.clone(),
                    explicit_hash_key: r.explicit_hash_key.clone(),
                    data: r.data.clone(),
                    arrival: r.arrival,
                })
            })
            .collect()
    }
}

/// Why a stream operation of the inspection API failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimError {
    /// A stream of that name exists already.
    StreamExists(String),
    /// No stream of that name.
    StreamNotFound(String),
    /// An argument was out of range (shard count 0, bad split key, ...).
    InvalidArgument(String),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::StreamExists(s) => write!(f, "stream {s} already exists"),
            SimError::StreamNotFound(s) => write!(f, "stream {s} not found"),
            SimError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
        }
    }
}

impl std::error::Error for SimError {}

/// All streams of one simulator.
#[derive(Debug)]
pub(crate) struct Registry {
    pub cfg: SimConfig,
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    pub unreachable_until: RwLock<Option<Instant>>,
}

impl Registry {
    pub fn new(cfg: SimConfig) -> Self {
        Registry {
            cfg,
            streams: RwLock::new(HashMap::new()),
            unreachable_until: RwLock::new(None),
        }
    }

    /// True while the whole endpoint is made unreachable.
    pub fn unreachable(&self) -> bool {
        self.unreachable_until
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| Instant::now() < u)
    }

    pub fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{}",
            self.cfg.region, self.cfg.account_id, name
        )
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn create(&self, name: &str, opts: &StreamOptions) -> Result<Arc<Stream>, SimError> {
        if opts.shards == 0 {
            return Err(SimError::InvalidArgument(
                "shard count must be at least 1".into(),
            ));
        }
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(name) {
            return Err(SimError::StreamExists(name.to_string()));
        }
        let limits = opts.limits.unwrap_or(self.cfg.limits);
        let stream = Arc::new(Stream {
            name: name.to_string(),
            arn: self.arn(name),
            created: SystemTime::now(),
            max_record_size_kib: opts
                .max_record_size_kib
                .unwrap_or(self.cfg.max_record_size_kib),
            state: Mutex::new(StreamState::new(
                opts.shards,
                limits,
                self.cfg.store_records,
            )),
            faults: RwLock::new(Faults::default()),
            counters: AtomicCounters::default(),
        });
        map.insert(name.to_string(), stream.clone());
        Ok(stream)
    }

    pub fn delete(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::MAX_HASH_KEY;

    fn entry(hash: u128) -> PutEntry {
        PutEntry {
            hash,
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: vec![0; 10],
            fail: false,
        }
    }

    #[test]
    fn sequence_numbers_sort_as_strings() {
        let a = sequence_number(9);
        let b = sequence_number(10);
        assert_eq!(a.len(), 56);
        assert!(a < b);
        assert_eq!(parse_sequence_number(&b), Some(10));
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
    fn byte_budget_and_competing_writer() {
        let mut st = StreamState::new(1, RateLimits::default(), false);
        st.competing_share = 0.5;
        let now = Instant::now();
        let big = PutEntry {
            data: vec![0; 100 * 1024],
            ..entry(1)
        };
        let res = st.put(
            (0..10)
                .map(|_| PutEntry {
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
