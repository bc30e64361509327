//! The rate controller that lets producers that do not know of each other share a stream.
//!
//! One controller per stream scales every shard limiter's rate by one factor `F`. Pooled
//! over the stream's shards, its signal has as many samples as the producer's whole flow:
//! aggregated records come a few dozen a second per shard, too few for one shard's throttled
//! fraction to be read in a fraction of a second. A producer fed from one buffer sends on every
//! shard at about its slowest shard's rate anyway, so one factor loses nothing, where factors
//! per shard drift apart and idle what the others could use.
//!
//! Over a jittered window of about [`WINDOW`] the controller counts the Kinesis records
//! answered and those throttled (in records and in bytes). At the end of a window:
//!
//! - **Throttled** (fraction `p`, the larger of records and bytes): `F` is cut by `BETA * p`,
//!   at most [`MAX_CUT`] (DCTCP's decrease). A throttled window at the full rate with none in
//!   the [`SUSTAINED`] before it is drift between the producer's buckets and the service's:
//!   the shard limiters rebuild their reserve and `F` stays.
//! - **Not throttled, and a limiter held a record back** (the rate is what limits):
//!   `d ln F / dt = ALPHA + GAMMA * ln(1 / F)`. The first term is a multiplicative increase,
//!   the same for every producer in proportion to its own rate, so the throttled fraction
//!   does not grow with the number of producers; the second is larger the smaller the
//!   producer's share, which pulls shares together.
//!
//! Summed over N producers at fair shares the increase is `(ALPHA + GAMMA ln N)` of the
//! shard's rate per second and the decrease `BETA p / WINDOW`, so the throttled fraction
//! settles near `WINDOW (ALPHA + GAMMA ln N) / BETA` (0.3 % at N = 2, 1.4 % at N = 32), growing
//! only with `ln N`. `BETA` above 1 overshoots a cut on purpose: the service's bucket holds a
//! second of budget, so a dip below the limit is spent later rather than lost.
//!
//! **Start.** A new controller starts at [`START_FACTOR`] and grows `F` by
//! [`SLOW_START_GROWTH`] every window until the full rate or the first throttled window (slow
//! start, as TCP's): a producer that joins a busy stream then starts near its share instead of
//! at the full rate, which multiplicative control would keep. A lone producer reaches the full
//! rate in about 1.3 s.
//!
//! **Aggregates** are bounded by [`aggregate_cap`] while `F` is below 1, so that a small share
//! still answers in enough Kinesis records to be measured. Pure: time comes in as `now`.

use std::time::{Duration, Instant};

/// Nominal measurement window; each is jittered by ±25 % so producers do not act in step.
pub const WINDOW: Duration = Duration::from_millis(150);
/// Multiplicative increase per second while the rate limits and nothing is throttled.
pub const ALPHA: f64 = 0.02;
/// Fairness term: extra increase per second of `GAMMA * ln(1 / F)`.
pub const GAMMA: f64 = 0.1;
/// Cut per window, per unit of throttled fraction.
pub const BETA: f64 = 4.0;
/// Largest cut in one window. Where the service counts in fixed one-second windows (not a
/// token bucket), a second's excess comes back throttled within one window, not spread over
/// five: a larger cap would cut far below the limit, and a window's budget unspent is lost.
pub const MAX_CUT: f64 = 0.2;
/// Lowest factor.
pub const MIN_FACTOR: f64 = 1.0 / 256.0;
/// Growth per window in slow start.
pub const SLOW_START_GROWTH: f64 = 1.5;
/// Where a new controller starts.
pub const START_FACTOR: f64 = 1.0 / 32.0;
/// A throttled window at the full rate within this time of the previous one means the stream
/// is shared.
pub const SUSTAINED: Duration = Duration::from_secs(5);

/// Aggregates hold at most this fraction of a second of the shard's rate in force.
pub const AGGREGATE_DIVISOR: f64 = 20.0;
/// ... but never less than this (bytes).
pub const MIN_AGGREGATE: usize = 2048;

/// The largest aggregate at `factor` of a shard's `bytes_per_sec`, within `configured`.
///
/// At a small share a producer's full aggregates would be a few a second: too few for the
/// throttled fraction to be read within a window, and each throttled one a large part of the
/// producer's rate. Aggregates of a twentieth of a second of the rate in force keep about
/// twenty Kinesis records a second per shard whatever the share (the records limit, 1,000 a
/// second, is not approached).
pub fn aggregate_cap(factor: f64, bytes_per_sec: f64, configured: usize) -> usize {
    let cap = (factor * bytes_per_sec / AGGREGATE_DIVISOR) as usize;
    cap.max(MIN_AGGREGATE).min(configured)
}

/// The counts of one window.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    records: u64,
    bytes: u64,
    throttled_records: u64,
    throttled_bytes: u64,
}

impl Counts {
    fn throttled_fraction(&self) -> f64 {
        let r = self.throttled_records as f64 / self.records.max(1) as f64;
        let b = self.throttled_bytes as f64 / self.bytes.max(1) as f64;
        r.max(b)
    }
}

/// A stream's rate factor, from the throttling its Kinesis records meet.
#[derive(Clone, Debug)]
pub struct RateControl {
    factor: f64,
    slow_start: bool,
    window_start: Instant,
    window_end: Instant,
    counts: Counts,
    /// A limiter held a record back in this window.
    limited: bool,
    last_congestion: Option<Instant>,
    rng: u64,
    /// Always the full rate ([`RateControl::fixed`]).
    fixed: bool,
}

impl RateControl {
    /// A controller in slow start; `seed` jitters its windows.
    pub fn new(now: Instant, seed: u64) -> Self {
        let mut c = RateControl {
            factor: START_FACTOR,
            slow_start: true,
            window_start: now,
            window_end: now,
            counts: Counts::default(),
            limited: false,
            last_congestion: None,
            rng: seed | 1,
            fixed: false,
        };
        c.open_window(now);
        c
    }

    /// A controller that always gives the full rate.
    pub fn fixed(now: Instant) -> Self {
        // (`advance` returns at once: the windows and slow start are never looked at.)
        RateControl {
            factor: 1.0,
            fixed: true,
            ..Self::new(now, 1)
        }
    }

    /// The factor in force at `now` (closing the window if it has ended).
    pub fn factor(&mut self, now: Instant) -> f64 {
        self.advance(now);
        self.factor
    }

    /// The factor as of the last window's end.
    pub fn current(&self) -> f64 {
        self.factor
    }

    /// Multiplies the factor by `by` (tests of unequal starts).
    #[cfg(test)]
    pub(super) fn scale(&mut self, by: f64) {
        self.factor *= by;
    }

    /// A shard limiter held a record back.
    pub fn limited(&mut self) {
        self.limited = true;
    }

    /// The service answered a Kinesis record of `bytes`: stored, or throttled.
    pub fn answered(&mut self, bytes: usize, throttled: bool, now: Instant) {
        self.advance(now);
        self.counts.records += 1;
        self.counts.bytes += bytes as u64;
        if throttled {
            self.counts.throttled_records += 1;
            self.counts.throttled_bytes += bytes as u64;
        }
    }

    fn open_window(&mut self, now: Instant) {
        // xorshift: the jitter needs no quality, only to differ between producers.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.75 + (self.rng % 1024) as f64 / 2048.0;
        self.window_start = now;
        self.window_end = now + WINDOW.mul_f64(jitter);
        self.counts = Counts::default();
        self.limited = false;
    }

    fn advance(&mut self, now: Instant) {
        if self.fixed || now < self.window_end {
            return;
        }
        let secs = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64();
        let p = self.counts.throttled_fraction();
        if self.counts.throttled_records > 0 {
            self.on_congestion(p, now);
        } else if self.slow_start {
            // One step per window passed (an idle producer's windows close when it is next
            // asked).
            let windows = (secs / WINDOW.as_secs_f64()).floor().clamp(1.0, 64.0);
            self.factor *= SLOW_START_GROWTH.powf(windows);
            if self.factor >= 1.0 {
                self.factor = 1.0;
                self.slow_start = false;
            }
        } else if self.limited {
            let growth = ALPHA + GAMMA * (1.0 / self.factor).ln();
            // (A window that closes late, for want of answers, counts as one second at most.)
            self.factor = (self.factor * (growth * secs.min(1.0)).exp()).min(1.0);
        }
        self.open_window(now);
    }

    fn on_congestion(&mut self, p: f64, now: Instant) {
        let sustained = self
            .last_congestion
            .is_some_and(|t| now.saturating_duration_since(t) < SUSTAINED);
        self.last_congestion = Some(now);
        // (Slow start ends at the first throttled window, with the same cut.)
        if self.slow_start || self.factor < 1.0 || sustained {
            self.slow_start = false;
            self.factor *= 1.0 - (BETA * p).min(MAX_CUT);
        }
        self.factor = self.factor.max(MIN_FACTOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(c: &mut RateControl, t: Instant) -> Instant {
        let t = t + WINDOW.mul_f64(1.3);
        c.factor(t);
        t
    }

    #[test]
    fn slow_start_grows_each_window_up_to_the_full_rate() {
        let t0 = Instant::now();
        let mut c = RateControl::new(t0, 7);
        let mut t = t0;
        let mut seen = vec![c.current()];
        while c.current() < 1.0 && seen.len() < 100 {
            t = after(&mut c, t);
            seen.push(c.current());
        }
        let steps = (1.0 / START_FACTOR).ln() / SLOW_START_GROWTH.ln();
        assert_eq!(seen.len() - 1, steps.ceil() as usize, "{seen:?}");
        for w in seen.windows(2).take(seen.len() - 2) {
            assert!((w[1] / w[0] - SLOW_START_GROWTH).abs() < 1e-9, "{seen:?}");
        }
        // An idle producer asked again after a while: one step per window passed.
        let mut c = RateControl::new(t0, 7);
        c.factor(t0 + WINDOW * 4);
        assert!((c.current() - START_FACTOR * SLOW_START_GROWTH.powi(4)).abs() < 1e-9);
    }

    #[test]
    fn the_first_throttle_ends_slow_start_with_a_cut() {
        let t0 = Instant::now();
        let mut c = RateControl::new(t0, 7);
        let t = after(&mut c, t0);
        let t = after(&mut c, t);
        let f = c.current();
        c.answered(1000, true, t);
        for _ in 0..19 {
            c.answered(1000, false, t);
        }
        let t = after(&mut c, t);
        assert!((c.current() - f * (1.0 - BETA * 0.05)).abs() < 1e-9);
        // No longer growing: a window unthrottled and unlimited leaves it.
        let f = c.current();
        after(&mut c, t);
        assert_eq!(c.current(), f);
    }

    /// Runs to the full rate, out of slow start.
    fn at_full_rate(t0: Instant) -> (RateControl, Instant) {
        let mut c = RateControl::new(t0, 3);
        let mut t = t0;
        while c.current() < 1.0 {
            t = after(&mut c, t);
        }
        (c, t)
    }

    #[test]
    fn a_lone_throttled_window_at_the_full_rate_is_drift() {
        let (mut c, t) = at_full_rate(Instant::now());
        c.answered(1000, true, t);
        let t = after(&mut c, t);
        assert_eq!(c.current(), 1.0);
        // Another one within the sustained time: the stream is shared.
        c.answered(1000, true, t);
        c.answered(1000, false, t);
        c.answered(1000, false, t);
        c.answered(1000, false, t);
        let t = after(&mut c, t);
        let cut = 1.0 - (BETA * 0.25).min(MAX_CUT);
        assert!((c.current() - cut).abs() < 1e-9, "{}", c.current());
        // Much later, below the full rate, any throttled window cuts.
        let t = t + SUSTAINED * 2;
        c.answered(1000, true, t);
        c.answered(3000, false, t);
        after(&mut c, t);
        assert!((c.current() - cut * cut).abs() < 1e-9, "{}", c.current());
    }

    #[test]
    fn the_cut_follows_the_larger_of_the_record_and_byte_fractions_up_to_the_cap() {
        let (mut c, t) = at_full_rate(Instant::now());
        c.answered(10, true, t);
        // That was drift; next, one record in fifty, but about 4 % of the bytes.
        let t = after(&mut c, t);
        c.answered(1_000, true, t);
        for _ in 0..49 {
            c.answered(490, false, t);
        }
        let t = after(&mut c, t);
        let f = c.current();
        assert!((f - (1.0 - BETA * 1_000.0 / 25_010.0)).abs() < 1e-9, "{f}");
        c.answered(10, true, t);
        after(&mut c, t);
        assert!((c.current() - f * (1.0 - MAX_CUT)).abs() < 1e-9);
    }

    #[test]
    fn the_increase_is_faster_for_a_smaller_share_and_only_while_limited() {
        let (mut c, t) = at_full_rate(Instant::now());
        let mut small = c.clone();
        small.factor = 0.1;
        c.factor = 0.5;
        let t1 = t + WINDOW.mul_f64(1.3);
        for x in [&mut c, &mut small] {
            x.limited();
            x.factor(t1);
        }
        let grew = |f: f64, from: f64| (f / from).ln();
        let big_growth = grew(c.current(), 0.5);
        let small_growth = grew(small.current(), 0.1);
        assert!(big_growth > 0.0 && small_growth > big_growth * 1.2);
        // Not limited: no growth.
        let before = c.current();
        after(&mut c, t1);
        assert_eq!(c.current(), before);
    }

    #[test]
    fn a_window_closes_at_its_end_and_throttles_exactly_the_sustained_time_apart_are_drift() {
        let t0 = Instant::now();
        let mut c = RateControl::new(t0, 5);
        let end = c.window_end;
        c.factor(end - Duration::from_nanos(1));
        assert_eq!(c.current(), START_FACTOR, "open until its end");
        c.factor(end);
        assert_eq!(
            c.current(),
            START_FACTOR * SLOW_START_GROWTH,
            "closed at its end"
        );
        let (mut c, t) = at_full_rate(t0);
        c.answered(1000, true, t);
        let t1 = after(&mut c, t); // drift, at t1
        let w0 = t1 + SUSTAINED - Duration::from_millis(200);
        c.answered(1000, true, w0);
        c.factor(t1 + SUSTAINED);
        assert_eq!(c.current(), 1.0, "the sustained time apart: drift again");
    }

    #[test]
    fn a_fixed_controller_keeps_the_full_rate_whatever_is_throttled() {
        let t0 = Instant::now();
        let mut c = RateControl::fixed(t0);
        let mut t = t0;
        for _ in 0..10 {
            c.answered(1000, true, t);
            t = after(&mut c, t);
        }
        assert_eq!(c.factor(t), 1.0);
    }

    #[test]
    fn windows_are_jittered_differently_per_seed() {
        let t0 = Instant::now();
        let a = RateControl::new(t0, 1);
        let b = RateControl::new(t0, 2);
        assert_ne!(a.window_end, b.window_end);
        for x in [&a, &b] {
            let w = x.window_end - t0;
            assert!(
                w >= WINDOW.mul_f64(0.75) && w < WINDOW.mul_f64(1.25),
                "{w:?}"
            );
        }
    }
}
