//! Per-shard rate limiting: token buckets for records and bytes, with back-off on throttling.
//!
//! Each shard gets two buckets holding one second of its limit (1,000 records/s, 1 MiB/s of
//! data + partition key, scaled by the configured percentage), refilled continuously: the same
//! model the service applies, so a producer that never overdraws its buckets is never throttled
//! by its own traffic. When the service throttles the shard anyway (other writers share it), the
//! shard's rate is halved (at most once per [`THROTTLE_HOLDOFF`]) and its tokens drained; it then
//! climbs back by [`RECOVERY_PER_SEC`] of the full rate per second without throttling (AIMD), so
//! producers sharing a stream converge instead of storming. Pure: time comes in as `now`.

use std::time::{Duration, Instant};

/// Lowest fraction of the configured rate back-off can reach.
pub const MIN_RATE_FACTOR: f64 = 0.05;
/// Fraction of the configured rate regained per second without throttling.
pub const RECOVERY_PER_SEC: f64 = 0.05;
/// Throttles closer together than this count as one event.
pub const THROTTLE_HOLDOFF: Duration = Duration::from_millis(200);

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

    /// Empties the bucket.
    pub fn drain(&mut self) {
        self.tokens = self.tokens.min(0.0);
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
    last_change: Instant,
    last_throttle: Option<Instant>,
    unlimited: bool,
}

impl ShardLimiter {
    /// A limiter allowing `records_per_sec` and `bytes_per_sec`, buckets full at `now`.
    pub fn new(records_per_sec: f64, bytes_per_sec: f64, now: Instant) -> Self {
        ShardLimiter {
            records: TokenBucket::new(records_per_sec, records_per_sec, now),
            bytes: TokenBucket::new(bytes_per_sec, bytes_per_sec, now),
            base_records: records_per_sec,
            base_bytes: bytes_per_sec,
            factor: 1.0,
            last_change: now,
            last_throttle: None,
            unlimited: false,
        }
    }

    /// A limiter that never holds anything back (benchmarks of the pure pipeline).
    pub fn unlimited(now: Instant) -> Self {
        let mut l = Self::new(f64::MAX / 4.0, f64::MAX / 4.0, now);
        l.unlimited = true;
        l
    }

    /// Current fraction of the configured rate (1.0 without recent throttling).
    pub fn rate_factor(&self) -> f64 {
        self.factor
    }

    fn recover(&mut self, now: Instant) {
        if self.factor < 1.0 {
            let secs = now
                .saturating_duration_since(self.last_change)
                .as_secs_f64();
            let factor = (self.factor + secs * RECOVERY_PER_SEC).min(1.0);
            if factor != self.factor {
                self.apply(factor, now);
            }
        }
    }

    fn apply(&mut self, factor: f64, now: Instant) {
        self.factor = factor;
        self.last_change = now;
        self.records.set_rate(self.base_records * factor, now);
        self.bytes.set_rate(self.base_bytes * factor, now);
    }

    /// When a Kinesis record of `bytes` could be sent: `now` if both buckets allow it.
    pub fn ready_at(&mut self, bytes: usize, now: Instant) -> Instant {
        if self.unlimited {
            return now;
        }
        self.recover(now);
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

    /// The service throttled this shard: halve the rate (once per hold-off) and drain tokens.
    pub fn on_throttle(&mut self, now: Instant) {
        if self.unlimited {
            return;
        }
        if self
            .last_throttle
            .is_some_and(|t| now.saturating_duration_since(t) < THROTTLE_HOLDOFF)
        {
            return;
        }
        self.last_throttle = Some(now);
        self.recover(now);
        self.apply((self.factor * 0.5).max(MIN_RATE_FACTOR), now);
        self.records.drain();
        self.bytes.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // burst: one second of budget at once
        let mut burst = 0;
        while l.try_acquire(10, t0).is_ok() {
            burst += 1;
        }
        assert_eq!(burst, 1000);
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
        // 1 MiB burst + 10 MiB over 10 s = 11 MiB / 50 KiB
        let expected = 11 * 1048576 / 51_200;
        assert!(
            (sent as i64 - expected as i64).abs() <= 1,
            "{sent} vs {expected}"
        );
    }

    #[test]
    fn oversized_record_waits_for_full_bucket_then_goes_into_debt() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(1000.0, 1000.0, t0);
        assert!(l.try_acquire(3000, t0).is_ok());
        let at = l.try_acquire(1, t0).unwrap_err();
        assert_eq!(at, t0 + Duration::from_secs_f64(2.001));
    }

    #[test]
    fn backs_off_on_throttle_and_recovers() {
        let t0 = Instant::now();
        let mut l = ShardLimiter::new(1000.0, 1048576.0, t0);
        l.on_throttle(t0);
        assert_eq!(l.rate_factor(), 0.5);
        l.on_throttle(t0 + ms(50)); // within hold-off: ignored
        assert_eq!(l.rate_factor(), 0.5);
        l.on_throttle(t0 + ms(300));
        assert!((l.rate_factor() - 0.25).abs() < 0.02);
        // no tokens right after a throttle
        assert!(l.try_acquire(1, t0 + ms(300)).is_err());
        // rate at 25 % for the next second
        let (sent, now) = drive(&mut l, t0 + ms(301), 1, 1);
        assert!((200..=320).contains(&sent), "{sent}");
        // recovers fully within (1 - 0.25) / 0.05 = 15 s
        let _ = drive(&mut l, now, 16, 1);
        assert_eq!(l.rate_factor(), 1.0);
        for _ in 0..100 {
            l.on_throttle(now + Duration::from_secs(100));
        }
        assert!(l.rate_factor() >= MIN_RATE_FACTOR);
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
