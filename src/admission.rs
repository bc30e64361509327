//! Admission that matches the drain: how much the producer lets `add` buffer, given what it can
//! send within a record's TTL. Pure: time comes in as `now`.
//!
//! The buffer bound (`max_buffered_records`, `max_buffered_bytes`) is fixed; when the stream
//! drains slower than callers add (one shard, a throttled fleet, a slow endpoint), a full buffer
//! holds more than can be sent before the records' TTL runs out, and they expire instead of
//! `add` waiting. So the bound in force is also capped at what the producer can send in
//! [`TTL_SHARE`] of the TTL: the stream's write capacity (open shards × the per-shard limits ×
//! `rate_limit_percent`) to begin with, then the rate the producer has seen records drain while
//! it had a backlog, once it has seen one. The rest of the TTL is left for retries. The cap never
//! goes below a floor ([`MIN_RECORDS`] records, and [`MIN_BYTES`] or the largest record
//! allowed), so a stream that stores nothing for a while (an outage) does not shut `add` out for
//! good, and any valid record can be admitted.

use std::time::{Duration, Instant};

/// Share of the record TTL that buffered records may take to drain.
pub const TTL_SHARE: f64 = 0.5;
/// The cap never goes below this many records (or `max_buffered_records`, if smaller).
pub const MIN_RECORDS: usize = 1_000;
/// The cap never goes below this many bytes (or `max_buffered_bytes`, if smaller).
pub const MIN_BYTES: usize = 1 << 20;
/// How often the drain rate is measured.
pub const TICK: Duration = Duration::from_secs(1);
/// Weight of a new measurement in the drain estimate.
const EWMA: f64 = 0.5;

/// The admission cap of one producer.
#[derive(Clone, Debug)]
pub struct Admission {
    ttl: f64,
    max: (usize, usize),
    floor: (usize, usize),
    /// Records/s and bytes/s the stream accepts, if limited (`f64::INFINITY` for records when
    /// records are aggregated: the record limit then applies to aggregates, not user records).
    capacity: Option<(f64, f64)>,
    /// Drain rate seen while backlogged, records/s and bytes/s.
    measured: Option<(f64, f64)>,
    /// User records and bytes stored since `tick_start`.
    drained: (u64, u64),
    tick_start: Instant,
}

impl Admission {
    /// A cap for records living `ttl`, within the configured bound `max` (records, bytes),
    /// for records of at most `max_record_size` bytes.
    pub fn new(ttl: Duration, max: (usize, usize), max_record_size: usize, now: Instant) -> Self {
        Admission {
            ttl: ttl.as_secs_f64(),
            max,
            floor: (
                MIN_RECORDS.min(max.0),
                MIN_BYTES.max(max_record_size).min(max.1),
            ),
            capacity: None,
            measured: None,
            drained: (0, 0),
            tick_start: now,
        }
    }

    /// The record size limit changed: the byte floor still admits one record of that size.
    pub fn set_max_record_size(&mut self, max_record_size: usize) {
        self.floor.1 = MIN_BYTES.max(max_record_size).min(self.max.1);
    }

    /// The stream's write capacity changed (start, reshard, settings): `None` when the producer
    /// does not limit its rate.
    pub fn set_capacity(&mut self, capacity: Option<(f64, f64)>) {
        self.capacity = capacity;
    }

    /// `records` user records of `bytes` bytes were stored.
    pub fn on_drained(&mut self, records: usize, bytes: usize) {
        self.drained.0 += records as u64;
        self.drained.1 += bytes as u64;
    }

    /// Ends a measuring tick if one is due; `held` is what the producer holds now. A tick in
    /// which the producer held more than it drained (it had a backlog throughout) measures the
    /// drain rate; others say nothing about it.
    pub fn tick(&mut self, held: (usize, usize), now: Instant) {
        let secs = now.saturating_duration_since(self.tick_start).as_secs_f64();
        if secs < TICK.as_secs_f64() {
            return;
        }
        let (records, bytes) = self.drained;
        if held.0 as u64 > records && held.1 as u64 > bytes {
            let rate = (records as f64 / secs, bytes as f64 / secs);
            self.measured = Some(match self.measured {
                None => rate,
                Some((r, b)) => (r + EWMA * (rate.0 - r), b + EWMA * (rate.1 - b)),
            });
        }
        self.drained = (0, 0);
        self.tick_start = now;
    }

    /// When the next tick is due.
    pub fn next_tick(&self) -> Instant {
        self.tick_start + TICK
    }

    /// The bound in force: records and bytes `add` may buffer.
    pub fn cap(&self) -> (usize, usize) {
        let rate = match (self.capacity, self.measured) {
            (None, None) => return self.max,
            (Some(c), None) => c,
            (None, Some(m)) => m,
            (Some(c), Some(m)) => (c.0.min(m.0), c.1.min(m.1)),
        };
        // Float-to-integer casts saturate: an unlimited rate gives the configured bound.
        let cap = |rate: f64, floor: usize, max: usize| {
            ((rate * self.ttl * TTL_SHARE) as usize).clamp(floor, max)
        };
        (
            cap(rate.0, self.floor.0, self.max.0),
            cap(rate.1, self.floor.1, self.max.1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);
    const MAX: (usize, usize) = (200_000, 64 << 20);

    #[test]
    fn without_limits_or_measurements_the_configured_bound_holds() {
        let a = Admission::new(TTL, MAX, 1 << 20, Instant::now());
        assert_eq!(a.cap(), MAX);
    }

    #[test]
    fn the_stream_capacity_caps_what_waits_to_half_the_ttl() {
        let mut a = Admission::new(TTL, MAX, 1 << 20, Instant::now());
        // One shard, plain records: 1,000 records/s, 1 MiB/s.
        a.set_capacity(Some((1_000.0, 1048576.0)));
        assert_eq!(a.cap(), (15_000, 15 * 1048576));
        // Aggregated: no record limit on user records.
        a.set_capacity(Some((f64::INFINITY, 1048576.0)));
        assert_eq!(a.cap(), (200_000, 15 * 1048576));
        // A big stream: the configured bound is the smaller.
        a.set_capacity(Some((64_000.0, 64.0 * 1048576.0)));
        assert_eq!(a.cap(), MAX);
    }

    #[test]
    fn a_measured_drain_slower_than_the_capacity_lowers_the_cap() {
        let t0 = Instant::now();
        let mut a = Admission::new(TTL, MAX, 1 << 20, t0);
        a.set_capacity(Some((4_000.0, 4.0 * 1048576.0)));
        // A slow endpoint: 200 records (200 KiB) a second while 10,000 wait.
        for i in 1..=10 {
            a.on_drained(200, 200 * 1024);
            a.tick((10_000, 10_000 * 1024), t0 + TICK * i);
        }
        let (records, bytes) = a.cap();
        assert!((2_990..=3_000).contains(&records), "{records}");
        assert!((3_060_000..=3_072_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn ticks_without_a_backlog_do_not_measure() {
        let t0 = Instant::now();
        let mut a = Admission::new(TTL, MAX, 1 << 20, t0);
        a.set_capacity(Some((1_000.0, 1048576.0)));
        // Light load: everything held drains within the tick.
        for i in 1..=5 {
            a.on_drained(50, 5_000);
            a.tick((10, 1_000), t0 + TICK * i);
        }
        assert_eq!(a.cap(), (15_000, 15 * 1048576));
        // Many small records held, but fewer bytes than drained: no backlog of bytes.
        a.on_drained(50, 5_000);
        a.tick((10_000, 1_000), t0 + TICK * 6);
        assert_eq!(a.cap(), (15_000, 15 * 1048576));
        // A tick cut short measures nothing either.
        a.on_drained(1, 1);
        a.tick(
            (100_000, 100 << 20),
            t0 + TICK * 5 + Duration::from_millis(10),
        );
        assert_eq!(a.cap(), (15_000, 15 * 1048576));
    }

    #[test]
    fn an_outage_lowers_the_cap_to_its_floor_and_recovery_raises_it() {
        let t0 = Instant::now();
        let mut a = Admission::new(TTL, MAX, 1 << 20, t0);
        a.set_capacity(Some((1_000.0, 1048576.0)));
        for i in 1..=10 {
            a.tick((15_000, 1_500_000), t0 + TICK * i);
        }
        assert_eq!(a.cap(), (1_000, 1048576), "the floor");
        for i in 11..=30 {
            a.on_drained(1_000, 100_000);
            a.tick((15_000, 1_500_000), t0 + TICK * i);
        }
        let (records, _) = a.cap();
        assert!((14_900..=15_000).contains(&records), "{records}");
    }

    #[test]
    fn the_rate_is_what_drained_over_the_ticks_length() {
        let t0 = Instant::now();
        let mut a = Admission::new(TTL, MAX, 1 << 20, t0);
        // 4,000 records and 4 MB over two seconds: 2,000/s and 2 MB/s.
        a.on_drained(4_000, 4_000_000);
        a.tick((100_000, 100_000_000), t0 + TICK * 2);
        assert_eq!(a.cap(), (30_000, 30_000_000));
        // Holding exactly what drained is no backlog, in records or in bytes: the estimate
        // stays.
        a.on_drained(100, 100);
        a.tick((100, 100), t0 + TICK * 3);
        assert_eq!(a.cap(), (30_000, 30_000_000));
        a.on_drained(100, 100);
        a.tick((100, 101), t0 + TICK * 4);
        assert_eq!(a.cap(), (30_000, 30_000_000));
        a.on_drained(100, 100);
        a.tick((101, 100), t0 + TICK * 5);
        assert_eq!(a.cap(), (30_000, 30_000_000));
        // A new measurement moves the estimate half way: 2,000/s then 4,000/s gives 3,000/s.
        a.on_drained(4_000, 4_000_000);
        a.tick((100_000, 100_000_000), t0 + TICK * 6);
        assert_eq!(a.cap(), (45_000, 45_000_000));
    }

    #[test]
    fn the_floor_is_a_thousand_records_and_a_mib_even_for_small_records() {
        let t0 = Instant::now();
        let mut a = Admission::new(TTL, MAX, 100, t0);
        a.set_capacity(Some((1_000.0, 1048576.0)));
        // Nothing drains at all.
        a.tick((5_000, 500_000), t0 + TICK);
        assert_eq!(a.cap(), (MIN_RECORDS, MIN_BYTES));
        assert_eq!((MIN_RECORDS, MIN_BYTES), (1_000, 1 << 20));
    }

    #[test]
    fn a_raised_record_limit_raises_the_byte_floor() {
        let t0 = Instant::now();
        let mut a = Admission::new(TTL, MAX, 1 << 20, t0);
        a.set_capacity(Some((1.0, 1.0)));
        assert_eq!(a.cap(), (MIN_RECORDS, 1 << 20));
        a.set_max_record_size(4 << 20);
        assert_eq!(
            a.cap(),
            (MIN_RECORDS, 4 << 20),
            "a 4 MiB record can be admitted"
        );
        a.set_max_record_size(100);
        assert_eq!(a.cap(), (MIN_RECORDS, MIN_BYTES));
    }

    #[test]
    fn without_rate_limits_only_a_measured_drain_caps() {
        let t0 = Instant::now();
        let mut a = Admission::new(TTL, MAX, 1 << 20, t0);
        a.on_drained(100, 100_000);
        a.tick((5_000, 5_000_000), t0 + TICK);
        assert_eq!(a.cap(), (1_500, 1_500_000));
        let small = Admission::new(TTL, (10, 1_000), 1_000, t0);
        assert_eq!(small.cap(), (10, 1_000));
        // A stream that allows 10 MiB records can always admit one.
        let mut large = Admission::new(TTL, MAX, 10 << 20, t0);
        large.tick((10, 30 << 20), t0 + TICK);
        assert_eq!(large.cap(), (1_000, 10 << 20));
    }
}
