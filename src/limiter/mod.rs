//! Per-shard rate limiting: token buckets for records and bytes, scaled by the stream's rate
//! controller.
//!
//! Each shard gets two buckets holding one second of its limit (1,000 records/s, 1 MiB/s of
//! data + partition key, scaled by the configured percentage and by the factor of the stream's
//! [`RateControl`]), refilled continuously: the same model the service applies, so a producer
//! that never overdraws its buckets is not throttled by its own traffic.
//!
//! The two buckets can still drift apart by the variation in request latency: records granted
//! over an interval reach the service together, a little earlier or later than the previous
//! batch. So the producer keeps a [`RESERVE`] of the service's budget unspent: its buckets start
//! that much short of full, and after a throttle (the service's bucket is empty) they are set
//! that much below empty, which rebuilds the margin. Throttling that keeps coming means other
//! writers share the stream; [`RateControl`] answers that. Pure: time comes in as `now`.

pub mod control;
#[cfg(test)]
mod fleet_tests;

pub use control::RateControl;

use std::time::{Duration, Instant};

/// Throttles closer together than this count as one event.
pub const THROTTLE_HOLDOFF: Duration = Duration::from_millis(200);
/// Share of a bucket's one-second capacity kept unspent as a margin for latency variation.
pub const RESERVE: f64 = 0.05;

/// A token bucket with continuous refill. Tokens may go negative when a single take is larger
/// than the capacity (a record bigger than one second of budget); the debt is repaid by refill.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second and holding at most `capacity`.
    pub fn new(rate: f64, capacity: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// When `n` tokens can be taken: now if available, else when refill gets there. A take
    /// larger than the capacity is allowed once the bucket is full.
    pub fn ready_at(&mut self, n: f64, now: Instant) -> Instant {
        self.refill(now);
        let need = n.min(self.capacity);
        if self.tokens >= need {
            return now;
        }
        let secs = (need - self.tokens) / self.rate;
        now + Duration::from_secs_f64(secs.min(1e6))
    }

    /// Takes `n` tokens (may go negative if `n` exceeds the capacity and the bucket is full).
    pub fn take(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// Changes the refill rate (capacity follows: one second of rate).
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.capacity = rate;
        self.tokens = self.tokens.min(self.capacity);
    }

    /// Lowers the level to `level` (after a refill to `now`) if it is higher.
    pub fn lower_to(&mut self, level: f64, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(level);
    }

    /// The bucket's capacity (one second of rate).
    pub fn capacity(&self) -> f64 {
        self.capacity
    }
}

/// The limiter of one shard (or of the whole stream when distribution is `AUTO`).
#[derive(Clone, Debug)]
pub struct ShardLimiter {
    records: TokenBucket,
    bytes: TokenBucket,
    base_records: f64,
    base_bytes: f64,
    factor: f64,
    last_throttle: Option<Instant>,
    unlimited: bool,
}

impl ShardLimiter {
    /// A limiter allowing `records_per_sec` and `bytes_per_sec`, buckets full but for the
    /// [`RESERVE`] at `now`.
    pub fn new(records_per_sec: f64, bytes_per_sec: f64, now: Instant) -> Self {
        let mut records = TokenBucket::new(records_per_sec, records_per_sec, now);
        let mut bytes = TokenBucket::new(bytes_per_sec, bytes_per_sec, now);
        records.lower_to(records_per_sec * (1.0 - RESERVE), now);
        bytes.lower_to(bytes_per_sec * (1.0 - RESERVE), now);
        ShardLimiter {
            records,
            bytes,
            base_records: records_per_sec,
            base_bytes: bytes_per_sec,
            factor: 1.0,
            last_throttle: None,
            unlimited: false,
        }
    }

    /// A limiter that never holds anything back (benchmarks of the pure pipeline).
    pub fn unlimited(now: Instant) -> Self {
        // The buckets are never consulted.
        ShardLimiter {
            unlimited: true,
            ..Self::new(0.0, 0.0, now)
        }
    }

    /// The fraction of the configured rate in force.
    pub fn rate_factor(&self) -> f64 {
        self.factor
    }

    /// Scales the configured rate by `factor` (the stream's [`RateControl`]) from `now` on.
    pub fn follow(&mut self, factor: f64, now: Instant) {
        if factor != self.factor && !self.unlimited {
            self.factor = factor;
            self.records.set_rate(self.base_records * factor, now);
            self.bytes.set_rate(self.base_bytes * factor, now);
        }
    }

    /// When a Kinesis record of `bytes` could be sent: `now` if both buckets allow it.
    pub fn ready_at(&mut self, bytes: usize, now: Instant) -> Instant {
        if self.unlimited {
            return now;
        }
        let a = self.records.ready_at(1.0, now);
        let b = self.bytes.ready_at(bytes as f64, now);
        a.max(b)
    }

    /// Takes one record and `bytes` if both buckets allow it now; otherwise returns when they will.
    pub fn try_acquire(&mut self, bytes: usize, now: Instant) -> Result<(), Instant> {
        let at = self.ready_at(bytes, now);
        if at > now {
            return Err(at);
        }
        if !self.unlimited {
            self.records.take(1.0);
            self.bytes.take(bytes as f64);
        }
        Ok(())
    }

    /// The service throttled this shard: its bucket is empty, so set ours below empty by the
    /// reserve (once per [`THROTTLE_HOLDOFF`]: the throttles of one burst are one event).
    pub fn on_throttle(&mut self, now: Instant) {
        if self.unlimited
            || self
                .last_throttle
                .is_some_and(|t| now.saturating_duration_since(t) < THROTTLE_HOLDOFF)
        {
            return;
        }
        self.last_throttle = Some(now);
        let records_level = -self.records.capacity() * RESERVE;
        let bytes_level = -self.bytes.capacity() * RESERVE;
        self.records.lower_to(records_level, now);
        self.bytes.lower_to(bytes_level, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_reports_what_it_holds_as_it_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0, t0);
        assert_eq!(b.available(t0), 10.0);
        b.take(4.0);
        assert_eq!(b.available(t0), 6.0);
        assert!((b.available(t0 + Duration::from_millis(200)) - 8.0).abs() < 1e-9);
        assert_eq!(
            b.available(t0 + Duration::from_secs(5)),
            10.0,
            "never above capacity"
        );
    }

    #[test]
    fn a_throttle_sets_the_buckets_below_empty_by_the_reserve() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(1_000.0, 1_000_000.0, t0);
        l.on_throttle(t0);
        // 5 % of a second below empty: a record waits 51 ms (50 owed, then its own).
        let at = l.ready_at(1, t0);
        let waited = at.duration_since(t0).as_secs_f64();
        assert!((waited - 0.051).abs() < 1e-6, "{waited}");
        // The byte bucket too: half a second of bytes waits for 50,000 owed plus its own.
        let at = l.ready_at(500_000, t0);
        let waited = at.duration_since(t0).as_secs_f64();
        assert!((waited - 0.55).abs() < 1e-6, "{waited}");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sends as fast as the limiter allows for `secs` seconds of virtual time, stepping 1 ms.
    fn drive(l: &mut ShardLimiter, t0: Instant, secs: u64, bytes: usize) -> (u64, Instant) {
        let mut sent = 0;
        let mut now = t0;
        let end = t0 + Duration::from_secs(secs);
        while now < end {
            while l.try_acquire(bytes, now).is_ok() {
                sent += 1;
            }
            now += ms(1);
        }
        (sent, now)
    }

    #[test]
    fn records_rate_and_burst() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(1000.0, 1048576.0, t0);
        // burst: one second of budget at once, less the reserve
        let mut burst = 0;
        while l.try_acquire(10, t0).is_ok() {
            burst += 1;
        }
        assert_eq!(burst, 950);
        let next = l.try_acquire(10, t0).unwrap_err();
        assert_eq!(next, t0 + ms(1));
        let (sent, _) = drive(&mut l, t0 + ms(1), 10, 10);
        assert!((9990..=10001).contains(&sent), "{sent} in 10 s");
    }

    #[test]
    fn bytes_rate() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(1000.0, 1048576.0, t0);
        let (sent, _) = drive(&mut l, t0, 10, 51_200);
        // 0.95 MiB burst + 10 MiB over 10 s, in 50 KiB records
        let expected = (10.95 * 1048576.0 / 51_200.0) as i64;
        assert!((sent as i64 - expected).abs() <= 1, "{sent} vs {expected}");
    }

    #[test]
    fn oversized_record_waits_for_full_bucket_then_goes_into_debt() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(1000.0, 1000.0, t0);
        let full = l.try_acquire(3000, t0).unwrap_err();
        assert_eq!(full, t0 + ms(50), "waits until the bucket is full");
        assert!(l.try_acquire(3000, full).is_ok());
        let at = l.try_acquire(1, full).unwrap_err();
        assert_eq!(at, full + Duration::from_secs_f64(2.001));
    }

    #[test]
    fn the_throttles_of_one_burst_rebuild_the_reserve_once() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(1000.0, 1048576.0, t0);
        l.on_throttle(t0);
        // 50 ms of budget below empty: the next record waits 51 ms
        assert_eq!(l.try_acquire(1, t0).unwrap_err(), t0 + ms(51));
        // within the hold-off: the same burst, not lowered again
        l.on_throttle(t0 + ms(30));
        assert_eq!(l.try_acquire(1, t0 + ms(30)).unwrap_err(), t0 + ms(51));
        // after it: lowered again
        l.on_throttle(t0 + THROTTLE_HOLDOFF);
        let at = l.try_acquire(1, t0 + THROTTLE_HOLDOFF).unwrap_err();
        assert_eq!(at, t0 + THROTTLE_HOLDOFF + ms(51));
    }

    #[test]
    fn the_factor_scales_both_rates() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(1_000_000.0, 100_000.0, t0);
        let (full, t1) = drive(&mut l, t0, 3, 10_000);
        l.follow(0.5, t1);
        assert_eq!(l.rate_factor(), 0.5);
        let (half, t2) = drive(&mut l, t1, 3, 10_000);
        // Byte-bound: 10 KB records, 100 KB/s then 50 KB/s (the first run had a burst).
        assert!((30..=40).contains(&full), "{full}");
        assert!((14..=16).contains(&half), "{half}");
        let mut r = ShardLimiter::new(100.0, 1e9, t2);
        r.follow(0.25, t2);
        let (records, _) = drive(&mut r, t2 + Duration::from_secs(2), 4, 1);
        // Record-bound: 25 a second, after a bucket of 25.
        assert!((100..=126).contains(&records), "{records}");
    }

    #[test]
    fn unlimited_never_holds() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::unlimited(t0);
        for _ in 0..1_000_000 {
            assert!(l.try_acquire(1 << 20, t0).is_ok());
        }
    }
}
