//! The shard map: which open shard holds a hash key, from `ListShards`.
//!
//! Open shards are kept sorted by ending hash key; a lookup finds the first shard whose range
//! ends at or after the key. It starts from a bucket table on the key's top bits (at least two
//! buckets per open shard), which gives the few shards that can hold the key; a binary search
//! over the range's ends among those alone finishes it. With ranges split evenly, as
//! `CreateStream` and uniform scaling make them, a bucket spans one or two shards, so a lookup
//! costs the same at 10,000 shards as at 4 (a plain binary search touched 14 cache lines of the
//! ends at 10,000). Closed shards are remembered too (by id), so that a response naming a shard
//! can be checked against that shard's range after a resharding.

use crate::hash_key::HashKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One shard as `ListShards` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard id, e.g. `shardId-000000000003`.
    pub id: Arc<str>,
    /// First hash key of the range (inclusive).
    pub start: u128,
    /// Last hash key of the range (inclusive).
    pub end: u128,
    /// Whether the shard still accepts writes (no ending sequence number).
    pub open: bool,
}

impl ShardInfo {
    /// Whether the key lies in this shard's range.
    pub fn contains(&self, key: HashKey) -> bool {
        self.start <= key.0 && key.0 <= self.end
    }
}

/// Open shards sorted by range, plus the ranges of every known shard.
#[derive(Clone, Debug, Default)]
pub struct ShardMap {
    open: Vec<ShardInfo>,
    /// `open[i].end`, packed: the lookup reads these, not the whole `ShardInfo`s.
    ends: Vec<u128>,
    /// Bucket `b` covers the keys whose top `bits` bits are `b`; `buckets[b]` is the index of
    /// the first open shard that ends at or after the bucket's first key, and `buckets[b + 1]`
    /// bounds the shards its keys can fall in. One more entry than buckets.
    buckets: Vec<u32>,
    bits: u32,
    by_id: HashMap<Arc<str>, ShardInfo>,
}

/// Bucket table size in bits, for `n` open shards: at least two buckets per shard, at most
/// 2^20 (4 MiB), at least 2^4.
fn bucket_bits(n: usize) -> u32 {
    (n.max(1) * 2)
        .next_power_of_two()
        .trailing_zeros()
        .clamp(4, 20)
}

impl ShardMap {
    /// Builds a map from every shard `ListShards` returned (open and closed).
    pub fn new(shards: Vec<ShardInfo>) -> Self {
        let by_id = shards.iter().map(|s| (s.id.clone(), s.clone())).collect();
        let mut open: Vec<ShardInfo> = shards.into_iter().filter(|s| s.open).collect();
        open.sort_by_key(|s| (s.end, s.start));
        let ends: Vec<u128> = open.iter().map(|s| s.end).collect();
        let bits = bucket_bits(ends.len());
        // One pass over the buckets and the ends together.
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut i = 0;
        for b in 0..1u128 << bits {
            let first_key = b << (128 - bits);
            while i < ends.len() && ends[i] < first_key {
                i += 1;
            }
            buckets.push(i as u32);
        }
        buckets.push(ends.len() as u32);
        ShardMap {
            open,
            ends,
            buckets,
            bits,
            by_id,
        }
    }

    /// Open shards, sorted by ending hash key.
    pub fn open_shards(&self) -> &[ShardInfo] {
        &self.open
    }

    /// Number of open shards.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no shard is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Index (into [`Self::open_shards`]) of the open shard that holds `key`. A key in a gap
    /// between ranges (which AWS never leaves; some emulators do) goes to the next shard up;
    /// `None` only when there is no open shard.
    pub fn lookup(&self, key: HashKey) -> Option<usize> {
        if self.open.is_empty() {
            return None;
        }
        // The shards ending before the bucket's first key cannot hold the key; nor can those
        // after the first one ending at or after the next bucket's first key (`hi`), which is
        // the answer when every end in `lo..hi` is below the key.
        let b = (key.0 >> (128 - self.bits)) as usize;
        let (lo, hi) = (self.buckets[b] as usize, self.buckets[b + 1] as usize);
        let i = lo + self.ends[lo..hi].partition_point(|&end| end < key.0);
        Some(i.min(self.open.len() - 1))
    }

    /// Any known shard (open or closed) by id.
    pub fn shard(&self, id: &str) -> Option<&ShardInfo> {
        self.by_id.get(id)
    }
}

/// When to refresh the shard map: at start, on a misprediction, and every `interval`.
#[derive(Debug)]
pub struct RefreshSchedule {
    interval: Duration,
    last: Instant,
    requested: bool,
    in_progress: bool,
    retry_after: Option<Instant>,
}

/// Wait between failed refresh attempts.
const REFRESH_RETRY: Duration = Duration::from_secs(1);

impl RefreshSchedule {
    /// A schedule whose last refresh happened at `now`.
    pub fn new(interval: Duration, now: Instant) -> Self {
        RefreshSchedule {
            interval,
            last: now,
            requested: false,
            in_progress: false,
            retry_after: None,
        }
    }

    /// Asks for a refresh as soon as possible (a response showed the map is stale).
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Whether a refresh should start now. Marks it in progress if so.
    pub fn start_if_due(&mut self, now: Instant) -> bool {
        if self.in_progress || self.retry_after.is_some_and(|t| now < t) {
            return false;
        }
        let due = self.requested || now.saturating_duration_since(self.last) >= self.interval;
        if due {
            self.in_progress = true;
            self.requested = false;
        }
        due
    }

    /// A refresh finished; `ok` says whether it produced a new map.
    pub fn finished(&mut self, ok: bool, now: Instant) {
        self.in_progress = false;
        if ok {
            self.last = now;
            self.retry_after = None;
        } else {
            self.requested = true;
            self.retry_after = Some(now + REFRESH_RETRY);
        }
    }

    /// When the next refresh is due (for the engine's timer).
    pub fn next_due(&self) -> Option<Instant> {
        if self.in_progress {
            return None;
        }
        if self.requested {
            return Some(self.retry_after.unwrap_or(self.last));
        }
        self.last.checked_add(self.interval)
    }
}

/// The AWS hash range of shard `i` of `n` evenly split shards: `[i*2^128/n, (i+1)*2^128/n - 1]`.
///
/// A test helper: compiled for the crate's tests and with the `testing` feature only.
#[cfg(any(test, feature = "testing"))]
pub fn even_range(i: u32, n: u32) -> (u128, u128) {
    let bound = |k: u32| -> Option<u128> {
        if k == n {
            return None;
        }
        // k * 2^128 / n without overflow: split 2^128 = n*q + r.
        let q = u128::MAX / n as u128;
        let r = u128::MAX % n as u128 + 1;
        let (k, n) = (k as u128, n as u128);
        Some(k * q + (k * r) / n)
    };
    let start = bound(i).unwrap_or(0);
    let end = bound(i + 1).map_or(u128::MAX, |b| b - 1);
    (start, end)
}

/// The `n` open shards of a new stream: AWS ids (`shardId-000000000000`, ...) and even ranges.
///
/// A test helper: compiled for the crate's tests and with the `testing` feature only.
#[cfg(any(test, feature = "testing"))]
pub fn even_shards(n: u32) -> Vec<ShardInfo> {
    (0..n)
        .map(|i| {
            let (start, end) = even_range(i, n);
            ShardInfo {
                id: format!("shardId-{i:012}").into(),
                start,
                end,
                open: true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_no_open_shard() {
        assert!(ShardMap::new(vec![]).is_empty());
        let closed = ShardInfo {
            id: "shardId-000000000000".into(),
            start: 0,
            end: u128::MAX,
            open: false,
        };
        assert!(ShardMap::new(vec![closed.clone()]).is_empty());
        let open = ShardInfo {
            open: true,
            ..closed
        };
        assert!(!ShardMap::new(vec![open]).is_empty());
    }

    #[test]
    fn a_key_above_the_last_range_goes_to_the_last_shard() {
        // Some emulators leave the top of the key space uncovered.
        let shards = (0..3u128)
            .map(|i| ShardInfo {
                id: format!("shardId-00000000000{i}").into(),
                start: i * 100,
                end: i * 100 + 99,
                open: true,
            })
            .collect();
        let map = ShardMap::new(shards);
        assert_eq!(map.lookup(HashKey(250)), Some(2));
        assert_eq!(map.lookup(HashKey(1_000)), Some(2));
        assert_eq!(map.lookup(HashKey(u128::MAX)), Some(2));
    }

    fn even_map(n: u32) -> ShardMap {
        ShardMap::new(even_shards(n))
    }

    #[test]
    fn even_ranges_cover_the_key_space() {
        for n in [1u32, 2, 3, 4, 7, 64, 4096] {
            let mut next = 0u128;
            for i in 0..n {
                let (s, e) = even_range(i, n);
                assert_eq!(s, next, "n={n} i={i}");
                assert!(e >= s);
                next = e.wrapping_add(1);
            }
            assert_eq!(next, 0, "last range of {n} ends at 2^128-1");
        }
        assert_eq!(even_range(1, 2).0, 1u128 << 127);
    }

    /// The first shard ending at or after the key: what the bucket table must agree with.
    fn binary_search(map: &ShardMap, key: u128) -> Option<usize> {
        let open = map.open_shards();
        (!open.is_empty()).then(|| open.partition_point(|s| s.end < key).min(open.len() - 1))
    }

    #[test]
    fn bucket_sizes_follow_the_shard_count() {
        assert_eq!(bucket_bits(0), 4);
        assert_eq!(bucket_bits(4), 4);
        assert_eq!(bucket_bits(64), 7);
        assert_eq!(bucket_bits(10_000), 15);
        assert_eq!(bucket_bits(10_000_000), 20);
        assert_eq!(even_map(10_000).buckets.len(), (1 << 15) + 1);
    }

    proptest::proptest! {
        /// Uneven ranges (a stream split and merged many times), gaps between them and above
        /// the last (as some emulators leave), and keys on every bucket edge: the bucket table
        /// finds the shard a binary search over every shard finds.
        #[test]
        fn bucket_lookup_agrees_with_a_binary_search(
            cuts in proptest::collection::vec(proptest::num::u128::ANY, 1..300),
            gaps in proptest::collection::vec(0u8..4, 300),
            keys in proptest::collection::vec(proptest::num::u128::ANY, 50),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            cuts.dedup();
            let mut start = 0u128;
            let mut shards = Vec::new();
            for (i, &end) in cuts.iter().enumerate() {
                if end < start {
                    continue;
                }
                // A gap of a quarter of the range before this one, now and then.
                let s = if gaps[i] == 0 { start + (end - start) / 4 } else { start };
                shards.push(ShardInfo { id: format!("s{i}").into(), start: s, end, open: true });
                if end == u128::MAX {
                    break;
                }
                start = end + 1;
            }
            let map = ShardMap::new(shards);
            let edges = (0..=1u128 << map.bits).flat_map(|b| {
                let first = b.checked_shl(128 - map.bits).filter(|_| b < 1 << map.bits);
                [first, first.and_then(|f| f.checked_sub(1))]
            });
            let ends = map.open_shards().iter().flat_map(|s| [s.start, s.end, s.end.saturating_add(1)]);
            for key in keys.into_iter().chain(edges.flatten()).chain(ends) {
                proptest::prop_assert_eq!(map.lookup(HashKey(key)), binary_search(&map, key), "key {}", key);
            }
        }
    }

    #[test]
    fn lookup_at_extremes_and_every_boundary() {
        for n in [1u32, 2, 5, 64] {
            let map = even_map(n);
            assert_eq!(map.lookup(HashKey(0)), Some(0));
            assert_eq!(map.lookup(HashKey(u128::MAX)), Some(n as usize - 1));
            for (i, s) in map.open_shards().iter().enumerate() {
                assert_eq!(map.lookup(HashKey(s.start)), Some(i));
                assert_eq!(map.lookup(HashKey(s.end)), Some(i));
                if s.end < u128::MAX {
                    assert_eq!(map.lookup(HashKey(s.end + 1)), Some(i + 1));
                }
            }
        }
    }

    #[test]
    fn closed_shards_are_known_but_not_routed_to() {
        let mut shards: Vec<ShardInfo> = even_map(2).open_shards().to_vec();
        shards.push(ShardInfo {
            id: "parent".into(),
            start: 0,
            end: u128::MAX,
            open: false,
        });
        let map = ShardMap::new(shards);
        assert_eq!(map.len(), 2);
        assert!(map.shard("parent").is_some_and(|s| !s.open));
        assert_eq!(map.lookup(HashKey(5)), Some(0));
        assert!(ShardMap::new(vec![]).lookup(HashKey(1)).is_none());
    }

    #[test]
    fn refresh_schedule() {
        let t0 = Instant::now();
        let mut r = RefreshSchedule::new(Duration::from_secs(60), t0);
        assert!(!r.start_if_due(t0 + Duration::from_secs(1)));
        r.request();
        assert!(r.start_if_due(t0 + Duration::from_secs(1)));
        assert!(
            !r.start_if_due(t0 + Duration::from_secs(2)),
            "one at a time"
        );
        r.finished(false, t0 + Duration::from_secs(2));
        assert!(
            !r.start_if_due(t0 + Duration::from_millis(2500)),
            "waits after a failure"
        );
        assert!(r.start_if_due(t0 + Duration::from_secs(3)));
        r.finished(true, t0 + Duration::from_secs(3));
        assert_eq!(r.next_due(), Some(t0 + Duration::from_secs(63)));
        assert!(!r.start_if_due(t0 + Duration::from_secs(62)));
        assert!(r.start_if_due(t0 + Duration::from_secs(63)));
    }
}
