//! Congestion control toward the endpoint: how many requests may be in flight, and how long to
//! wait for one, learned from the latency the endpoint shows. Pure: time comes in as `now`.
//!
//! A slow endpoint (an emulator that takes seconds per large request, a saturated proxy) gets
//! slower the more requests it is given at once. Sending more then only makes requests pass
//! their timeout while the endpoint is still storing them; the records are sent again, stored
//! twice, and the endpoint slows further: congestion collapse. So the limit on requests in
//! flight adapts (AIMD on a latency gradient, as Netflix's concurrency-limits does):
//!
//! - the limit starts at [`INITIAL_LIMIT`] and, until the first sign of congestion, grows by
//!   one with every answer (doubling each round trip, as TCP's slow start), so a slow endpoint
//!   is never handed a burst of `max_in_flight` large requests at once;
//! - after that, every answer whose latency stays within [`LATENCY_TOLERANCE`] × the lowest
//!   latency seen (or [`LATENCY_SLACK`] above it) raises the limit by `1 / limit`: about one
//!   more request per round trip, up to `max_in_flight`;
//! - an answer slower than that lowers the limit by [`GRADIENT_DECREASE`], at most once per
//!   round trip;
//! - a timeout, a dropped connection or a whole-request 5xx or throttling error is congestion:
//!   the limit halves (at most once per round trip).
//!
//! The request timeout follows the same samples: at least the configured `request_timeout`,
//! stretched to [`TIMEOUT_MARGIN`] × the slowest latency seen in the current and the previous
//! window × the requests in flight (an endpoint that works on requests side by side takes
//! longer for each the more it has) when the endpoint is slower than that, and doubled after
//! each timeout until an answer comes (Karn's rule). (TCP's `srtt + 4 · rttvar` is not used: it
//! never exceeds that bound by more than the last window's samples already show.) A request
//! abandoned while the endpoint is still storing it is sent again and stored twice, so the
//! timer errs long: it is for a dead connection, not for a slow answer. Before the first
//! answer, when nothing is known of the endpoint, a request gets the configured timeout per MiB
//! it carries.
//!
//! Requests differ in size (one record to 10 MiB), and a slow endpoint's latency grows with
//! it: latency is measured per [`QUANTUM`] of request bytes (a request smaller than a quantum
//! counts as one), and a request's expected latency and timeout scale with its size.
//!
//! The lowest latency is measured afresh every [`MIN_LATENCY_WINDOW`], so the controller follows
//! an endpoint whose base latency changes. Latency measured under our own load would only show
//! our own queue, so when answers have been slower than the lowest latency, the fresh
//! measurement is a probe (as BBR's ProbeRTT): one request in flight until a request sent
//! during the probe is answered; its latency is the new base, and the limit is restored.

use std::time::{Duration, Instant};

/// An answer slower than this many times the lowest latency (plus the slack) means the
/// endpoint queues requests.
pub const LATENCY_TOLERANCE: f64 = 2.0;
/// Latency an answer may add to the lowest before it counts as queueing, whatever the ratio:
/// requests differ in size (1 to 500 records, up to 10 MiB), so a fast endpoint's latency
/// varies by much more than 2× without any queueing; a second more is what matters.
pub const LATENCY_SLACK: Duration = Duration::from_secs(1);
/// Limit multiplier when latency shows queueing.
pub const GRADIENT_DECREASE: f64 = 0.9;
/// Limit multiplier on a timeout, a dropped connection or a whole-request failure.
pub const CONGESTION_DECREASE: f64 = 0.5;
/// How long the lowest latency seen is kept before it is measured afresh.
pub const MIN_LATENCY_WINDOW: Duration = Duration::from_secs(30);
/// The timeout is at least this many times the slowest latency seen in the window.
pub const TIMEOUT_MARGIN: f64 = 4.0;
/// Request bytes per unit of latency accounting (smaller requests count as one unit).
pub const QUANTUM: usize = 256 * 1024;
/// Requests in flight at first.
pub const INITIAL_LIMIT: usize = 1;
/// Longest request timeout the controller will stretch to.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// Latency units of a request of `bytes`.
fn units(bytes: usize) -> f64 {
    (bytes.max(QUANTUM) as f64) / QUANTUM as f64
}

/// The in-flight limit and request timeout of one endpoint.
#[derive(Clone, Debug)]
pub struct Concurrency {
    max: usize,
    limit: f64,
    min_timeout: Duration,
    /// Lowest latency per unit seen in the current window (seconds), and when the window
    /// started.
    min_latency: Option<(f64, Instant)>,
    /// Highest latency per unit seen in the current and the previous window (seconds).
    max_latency: (f64, f64),
    /// Smoothed latency per unit, in seconds (RFC 6298's gain of 1/8).
    srtt: Option<f64>,
    /// Timeouts in a row: each doubles the timeout.
    timeouts: u32,
    last_decrease: Option<Instant>,
    /// A probe of the base latency: when it started, and the limit to restore after it.
    probe: Option<(Instant, f64)>,
    /// Growing by one per answer until the first sign of congestion.
    slow_start: bool,
    /// `false`: always `max_in_flight` and the configured timeout.
    adaptive: bool,
}

impl Concurrency {
    /// Starts at [`INITIAL_LIMIT`] requests (at most `max_in_flight`) and the configured
    /// timeout.
    pub fn new(max_in_flight: usize, request_timeout: Duration) -> Self {
        Concurrency {
            max: max_in_flight.max(1),
            limit: INITIAL_LIMIT.clamp(1, max_in_flight.max(1)) as f64,
            slow_start: true,
            adaptive: true,
            min_timeout: request_timeout,
            min_latency: None,
            max_latency: (0.0, 0.0),
            srtt: None,
            timeouts: 0,
            last_decrease: None,
            probe: None,
        }
    }

    /// Always `max_in_flight` requests and the configured timeout, whatever the endpoint does.
    pub fn fixed(max_in_flight: usize, request_timeout: Duration) -> Self {
        Concurrency {
            limit: max_in_flight.max(1) as f64,
            adaptive: false,
            ..Self::new(max_in_flight, request_timeout)
        }
    }

    /// Requests that may be in flight now (1 to `max_in_flight`).
    pub fn limit(&self) -> usize {
        if self.probe.is_some() {
            return 1;
        }
        (self.limit as usize).clamp(1, self.max)
    }

    /// The smoothed latency of a small request (one accounting quantum), once one was answered.
    pub fn round_trip(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_secs_f64)
    }

    /// How long to wait for the answer to a request of `bytes`.
    pub fn timeout(&self, bytes: usize) -> Duration {
        if !self.adaptive {
            return self.min_timeout;
        }
        if self.srtt.is_none() {
            // Nothing known of the endpoint yet: the configured timeout per MiB of request.
            let mib = (bytes as f64 / (1 << 20) as f64).max(1.0);
            let t = self.min_timeout.as_secs_f64() * mib * f64::from(1u32 << self.timeouts.min(10));
            return Duration::from_secs_f64(t.min(MAX_TIMEOUT.as_secs_f64()))
                .max(self.min_timeout.min(MAX_TIMEOUT));
        }
        let rto = TIMEOUT_MARGIN
            * self.max_latency.0.max(self.max_latency.1)
            * self.limit() as f64
            * units(bytes);
        let base = self.min_timeout.as_secs_f64().max(rto);
        let backed_off = base * f64::from(1u32 << self.timeouts.min(10));
        Duration::from_secs_f64(backed_off.min(MAX_TIMEOUT.as_secs_f64()))
            .max(self.min_timeout.min(MAX_TIMEOUT))
    }

    /// The endpoint answered a request of `bytes` sent `latency` ago (with results or with an
    /// error of its own).
    pub fn on_answer(&mut self, latency: Duration, bytes: usize, now: Instant) {
        if !self.adaptive {
            return;
        }
        self.timeouts = 0;
        let units = units(bytes);
        let sample = latency.as_secs_f64() / units;
        self.srtt = Some(
            self.srtt
                .map_or(sample, |srtt| 0.875 * srtt + 0.125 * sample),
        );
        if let Some((started, restore)) = self.probe {
            // Only a request sent once the probe began saw an empty endpoint.
            if now.checked_sub(latency).is_some_and(|sent| sent >= started) {
                self.probe = None;
                self.min_latency = Some((sample, now));
                self.limit = restore;
            }
            return;
        }
        let slack = LATENCY_SLACK.as_secs_f64();
        if self
            .min_latency
            .is_some_and(|(_, since)| now.saturating_duration_since(since) >= MIN_LATENCY_WINDOW)
        {
            self.max_latency = (0.0, self.max_latency.0);
        }
        self.max_latency.0 = self.max_latency.0.max(sample);
        let min = match self.min_latency {
            Some((min, since)) if now.saturating_duration_since(since) < MIN_LATENCY_WINDOW => {
                let min = min.min(sample);
                self.min_latency = Some((min, since));
                min
            }
            Some((min, _)) if self.srtt.is_some_and(|srtt| srtt > min + slack) => {
                self.probe = Some((now, self.limit));
                return;
            }
            _ => {
                self.min_latency = Some((sample, now));
                sample
            }
        };
        // What this request would take on an idle endpoint.
        let expected = min * units;
        let queueing = latency.as_secs_f64() > (expected * LATENCY_TOLERANCE).max(expected + slack);
        if queueing {
            self.decrease(GRADIENT_DECREASE, Duration::from_secs_f64(expected), now);
        } else {
            let step = if self.slow_start {
                1.0
            } else {
                1.0 / self.limit
            };
            self.limit = (self.limit + step).min(self.max as f64);
        }
    }

    /// A request timed out, its connection dropped, or it failed as a whole with a retryable
    /// error: the endpoint is overloaded.
    pub fn on_congestion(&mut self, timed_out: bool, now: Instant) {
        if !self.adaptive {
            return;
        }
        if timed_out {
            self.timeouts = self.timeouts.saturating_add(1);
        }
        let rtt = self.min_latency.map_or(0.0, |(min, _)| min);
        self.decrease(CONGESTION_DECREASE, Duration::from_secs_f64(rtt), now);
    }

    /// Lowers the limit, at most once per round trip (`rtt`), so that the answers of one
    /// burst count as one signal.
    fn decrease(&mut self, factor: f64, rtt: Duration, now: Instant) {
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < rtt)
        {
            return;
        }
        self.last_decrease = Some(now);
        self.slow_start = false;
        match &mut self.probe {
            Some((_, restore)) => *restore = (*restore * factor).max(1.0),
            None => self.limit = (self.limit * factor).max(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn latency_is_counted_per_quarter_mebibyte() {
        assert_eq!(units(0), 1.0, "a small request counts as one unit");
        assert_eq!(units(256 * 1024), 1.0);
        assert_eq!(units(512 * 1024), 2.0);
        assert_eq!(units(5 << 20), 20.0);
    }

    /// A controller out of slow start at 32 requests, whose lowest latency is `latency`; the
    /// answers that got it there end before `t0`.
    fn warmed(latency: Duration, t0: Instant) -> Concurrency {
        let mut c = Concurrency::new(32, Duration::from_secs(6));
        let start = t0 - ms(100);
        for i in 0..40 {
            c.on_answer(latency, 0, start + ms(i));
        }
        assert_eq!(c.limit(), 32);
        c
    }

    #[test]
    fn before_any_answer_a_large_request_gets_the_timeout_per_mib() {
        let c = Concurrency::new(32, Duration::from_secs(6));
        assert_eq!(c.timeout(1_000), Duration::from_secs(6));
        assert_eq!(c.timeout(5 << 20), Duration::from_secs(30));
        assert_eq!(c.timeout(100 << 20), MAX_TIMEOUT);
    }

    #[test]
    fn before_any_answer_each_timeout_doubles_the_timeout() {
        let t0 = Instant::now();
        let mut c = Concurrency::new(32, Duration::from_secs(6));
        c.on_congestion(true, t0);
        c.on_congestion(true, t0 + Duration::from_secs(30));
        assert_eq!(c.timeout(1_000), Duration::from_secs(24));
        assert_eq!(c.timeout(2 << 20), Duration::from_secs(48));
    }

    #[test]
    fn the_round_trip_is_smoothed_per_unit() {
        let t0 = Instant::now();
        let mut c = Concurrency::new(32, Duration::from_secs(6));
        assert_eq!(c.round_trip(), None);
        // 200 ms for two quanta: 100 ms a unit.
        c.on_answer(ms(200), 2 * QUANTUM, t0);
        assert_eq!(c.round_trip(), Some(ms(100)));
        // The next sample moves it an eighth of the way: 100 + (300 - 100) / 8 = 125 ms.
        c.on_answer(ms(300), 0, t0 + ms(1));
        assert_eq!(c.round_trip(), Some(ms(125)));
    }

    #[test]
    fn a_slow_latency_is_forgotten_after_two_windows() {
        let t0 = Instant::now();
        let mut c = Concurrency::new(32, Duration::from_secs(1));
        c.on_answer(Duration::from_secs(2), 0, t0);
        assert!(c.timeout(0) >= Duration::from_secs(8), "{:?}", c.timeout(0));
        c.on_answer(ms(10), 0, t0 + MIN_LATENCY_WINDOW + ms(1));
        assert!(
            c.timeout(0) >= Duration::from_secs(8),
            "the previous window still counts"
        );
        c.on_answer(ms(10), 0, t0 + 2 * MIN_LATENCY_WINDOW + ms(2));
        assert_eq!(
            c.timeout(0),
            Duration::from_secs(1),
            "both windows fast now"
        );
    }

    #[test]
    fn a_steady_latency_across_windows_starts_no_probe() {
        let t0 = Instant::now();
        let mut c = warmed(ms(100), t0);
        // A new window with the same latency: the smoothed latency is not above the lowest by
        // the slack, so the limit stays (a probe would drop it to one).
        c.on_answer(ms(100), 0, t0 + MIN_LATENCY_WINDOW + ms(1));
        c.on_answer(ms(100), 0, t0 + MIN_LATENCY_WINDOW + ms(2));
        assert_eq!(c.limit(), 32);
    }

    #[test]
    fn a_large_request_taking_its_size_in_latency_is_not_queueing() {
        let t0 = Instant::now();
        // A slow endpoint: 1 s a quantum, so four quanta in 6 s (1.5 times the expected 4 s,
        // within the tolerance of 2 and beyond the slack of a second) is no queueing.
        let mut c = warmed(Duration::from_secs(1), t0);
        c.on_congestion(false, t0);
        let limit = c.limit();
        for i in 1..=20 {
            c.on_answer(Duration::from_secs(6), 4 * QUANTUM, t0 + ms(200 * i));
        }
        assert!(c.limit() > limit, "{} after {limit}", c.limit());
    }

    #[test]
    fn a_smoothed_latency_within_the_slack_starts_no_probe() {
        let t0 = Instant::now();
        let mut c = warmed(ms(100), t0);
        // Slower answers within the window, but less than the slack above the lowest.
        for i in 1..=10 {
            c.on_answer(ms(600), 0, t0 + Duration::from_secs(i));
        }
        c.on_answer(ms(600), 0, t0 + MIN_LATENCY_WINDOW + Duration::from_secs(1));
        assert!(c.limit() > 1, "no probe: {}", c.limit());
    }

    #[test]
    fn congestion_during_a_probe_lowers_the_limit_it_restores() {
        let t0 = Instant::now();
        let mut c = warmed(ms(100), t0);
        // Slow answers within the window: the smoothed latency climbs far above the lowest.
        for i in 1..=10 {
            c.on_answer(Duration::from_secs(3), 0, t0 + Duration::from_secs(i));
        }
        let before = c.limit();
        assert!(before >= 4, "a limit worth halving: {before}");
        // The next window's first answer starts a probe: one request, `before` to restore.
        let t1 = t0 + MIN_LATENCY_WINDOW + Duration::from_secs(1);
        c.on_answer(Duration::from_secs(3), 0, t1);
        assert_eq!(c.limit(), 1, "probing");
        c.on_congestion(false, t1 + Duration::from_secs(10));
        // The probe's request (sent after it began) is answered: the halved limit returns.
        c.on_answer(ms(100), 0, t1 + Duration::from_secs(20));
        let after = c.limit();
        assert!(
            (before / 2..=before / 2 + 1).contains(&after),
            "{before} halved during the probe, restored as {after}"
        );
    }

    #[test]
    fn a_fixed_controller_ignores_the_endpoint() {
        let t0 = Instant::now();
        let mut c = Concurrency::fixed(32, Duration::from_secs(6));
        assert_eq!(c.limit(), 32);
        c.on_answer(Duration::from_secs(50), 5 << 20, t0);
        c.on_congestion(true, t0 + Duration::from_secs(1));
        assert_eq!(
            (c.limit(), c.timeout(5 << 20)),
            (32, Duration::from_secs(6))
        );
    }

    #[test]
    fn slow_start_reaches_the_configured_limit_in_a_few_answers_and_stays() {
        let t0 = Instant::now();
        let mut c = Concurrency::new(32, Duration::from_secs(6));
        assert_eq!(c.limit(), INITIAL_LIMIT);
        for i in 0..31 {
            c.on_answer(ms(20), 0, t0 + ms(i));
        }
        assert_eq!(c.limit(), 32);
        for i in 31..1_000 {
            c.on_answer(ms(20 + i % 7), 0, t0 + ms(i * 5));
        }
        assert_eq!(c.limit(), 32);
        assert_eq!(c.timeout(0), Duration::from_secs(6));
    }

    /// An endpoint that serves one request at a time, `service` each, first come first
    /// served: latency grows with the number in flight. The controller must settle at a few
    /// requests in flight (an AIMD sawtooth: latency up to 2 s, within the slack of the
    /// 500 ms base), not at 32 (latency 16 s).
    #[test]
    fn a_queueing_endpoint_drives_the_limit_down_and_it_stays_low() {
        let t0 = Instant::now();
        let service = ms(500);
        let mut c = Concurrency::new(32, Duration::from_secs(6));
        // Send times of the requests in the endpoint's queue, oldest first.
        let mut queue: std::collections::VecDeque<Instant> = (0..32).map(|_| t0).collect();
        let mut now = t0;
        let mut limits = Vec::new();
        for _ in 0..400 {
            let sent = queue.pop_front().expect("a request in flight");
            now += service;
            c.on_answer(now - sent, 0, now);
            while queue.len() < c.limit() {
                queue.push_back(now);
            }
            limits.push(c.limit());
        }
        let settled = &limits[300..];
        assert!(settled.iter().all(|&l| l <= 4), "limits {settled:?}");
        assert!(c.timeout(0) >= Duration::from_secs(6));
    }

    #[test]
    fn timeouts_halve_the_limit_once_per_round_trip_and_stretch_the_timeout() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut c = warmed(ms(100), t0);
        c.on_answer(ms(100), 0, t0);
        c.on_congestion(true, t0 + ms(200));
        assert_eq!(c.limit(), 16);
        // Same round trip: one signal.
        c.on_congestion(true, t0 + ms(250));
        assert_eq!(c.limit(), 16);
        // 4 × 100 ms × 16 in flight = 6.4 s (above the 6 s floor), doubled twice.
        assert_eq!(c.timeout(0), Duration::from_millis(25_600));
        c.on_congestion(true, t0 + ms(400));
        assert_eq!(c.limit(), 8);
        // An answer ends the back-off of the timer.
        c.on_answer(ms(100), 0, t0 + ms(500));
        assert_eq!(c.timeout(0), Duration::from_secs(6));
        for i in 0..10 {
            c.on_congestion(false, t0 + Duration::from_secs(i + 1));
        }
        assert_eq!(c.limit(), 1, "never below one request");
        assert_eq!(
            c.timeout(0),
            Duration::from_secs(6),
            "only timeouts stretch it"
        );
    }

    #[test]
    fn a_slow_endpoint_stretches_the_timeout_to_its_latency() {
        let t0 = Instant::now();
        let mut c = Concurrency::new(4, Duration::from_secs(6));
        for i in 0..50 {
            c.on_answer(
                Duration::from_secs(5) + ms(i * 40 % 2_000),
                0,
                t0 + Duration::from_secs(i),
            );
        }
        // The slowest answer was 6.96 s: four times that, for each of the 4 requests in flight.
        assert_eq!(c.limit(), 4);
        let t = c.timeout(0);
        assert!(
            t > Duration::from_millis(4 * 27_800) && t < Duration::from_millis(4 * 27_900),
            "{t:?}"
        );
        for _ in 0..20 {
            c.on_congestion(true, t0 + Duration::from_secs(1_000));
        }
        assert_eq!(c.timeout(0), MAX_TIMEOUT);
    }

    /// An endpoint whose latency grows with the request's size (0.25 s per 256 KiB): a 5 MiB
    /// request taking 5 s is no sign of queueing, and its timeout leaves room for it.
    #[test]
    fn latency_and_timeout_scale_with_the_request_size() {
        let t0 = Instant::now();
        let mut c = Concurrency::new(32, Duration::from_secs(6));
        for i in 0..31 {
            let bytes = if i % 2 == 0 { 1_000 } else { 5 << 20 };
            let latency = ms(250) * units(bytes) as u32;
            c.on_answer(latency, bytes, t0 + Duration::from_secs(i));
        }
        assert_eq!(c.limit(), 32, "no answer looked like queueing");
        // Four times the slowest latency per unit (0.25 s), for each of 32 requests in flight.
        assert_eq!(c.timeout(1_000), Duration::from_secs(32));
        assert_eq!(c.timeout(5 << 20), MAX_TIMEOUT, "20 units: capped");
        // The same 5 s for a small request is queueing.
        c.on_answer(Duration::from_secs(5), 1_000, t0 + Duration::from_secs(40));
        assert_eq!(c.limit(), 28);
    }

    #[test]
    fn the_limit_climbs_back_after_congestion_clears() {
        let t0 = Instant::now();
        let mut c = Concurrency::new(32, Duration::from_secs(6));
        c.on_answer(ms(20), 0, t0);
        for i in 0..6 {
            c.on_congestion(false, t0 + Duration::from_secs(i + 1));
        }
        assert_eq!(c.limit(), 1);
        let mut now = t0 + Duration::from_secs(10);
        let mut answers = 0;
        while c.limit() < 32 {
            now += ms(1);
            c.on_answer(ms(20), 0, now);
            answers += 1;
            assert!(answers < 1_000, "stuck at {}", c.limit());
        }
        // About limit²/2 answers: 32 round trips of growing width.
        assert!(answers > 400, "{answers}");
    }

    #[test]
    fn the_lowest_latency_is_measured_afresh_each_window() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut c = warmed(ms(10), t0);
        // The endpoint moves far away: at first every answer looks like queueing...
        c.on_answer(ms(1_400), 0, t0 + ms(1_500));
        assert_eq!(c.limit(), 28, "32 × 0.9, rounded down");
        for i in 2..=10 {
            c.on_answer(ms(1_400), 0, t0 + ms(1_500) * i);
        }
        let restore = c.limit();
        assert!(restore < 28, "{restore}");
        // ...until the window ends: the answers were slow, so a probe measures the base with
        // one request in flight...
        let later = t0 - ms(100) + MIN_LATENCY_WINDOW + ms(1);
        c.on_answer(ms(1_400), 0, later);
        assert_eq!(c.limit(), 1, "probing");
        // ...an answer to a request sent before the probe does not end it...
        c.on_answer(ms(1_400), 0, later + ms(100));
        assert_eq!(c.limit(), 1);
        // ...one sent during it does: 1.4 s is the new base and the limit is restored.
        c.on_answer(ms(1_400), 0, later + ms(1_500));
        assert_eq!(c.limit(), restore);
        let before = c.limit;
        c.on_answer(ms(1_500), 0, later + ms(3_000));
        assert!(c.limit > before, "{before} then {}", c.limit);
    }
}
