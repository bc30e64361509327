//! The shard map: which open shard holds a hash key, from `ListShards`.
//!
//! Open shards are kept sorted by ending hash key; a lookup is a binary search for the first
//! shard whose range ends at or after the key. Closed shards are remembered too (by id), so that
//! a response naming a shard can be checked against that shard's range after a resharding.

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
    by_id: HashMap<Arc<str>, ShardInfo>,
}

impl ShardMap {
    /// Builds a map from every shard `ListShards` returned (open and closed).
    pub fn new(shards: Vec<ShardInfo>) -> Self {
        let by_id = shards.iter().map(|s| (s.id.clone(), s.clone())).collect();
        let mut open: Vec<ShardInfo> = shards.into_iter().filter(|s| s.open).collect();
        open.sort_by_key(|s| (s.end, s.start));
        ShardMap { open, by_id }
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
        let i = self.open.partition_point(|s| s.end < key.0);
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
