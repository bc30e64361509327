//! The rate controller against a model stream, with a virtual clock: N producers, each with its
//! own controller, limiters and one buffer for all its shards, and no knowledge of the others,
//! offer twice the stream's capacity in total; a model of the service (a token bucket per shard
//! holding one second of rate, as kinesis-sim's default) throttles record by record. Checked:
//! utilization, throttled fraction and Jain's fairness index once converged, and again after a
//! producer leaves and another joins, a competing writer comes and goes, or one producer's keys
//! are skewed; the same under fixed one-second windows. These assert convergence, not timing.

use super::*;

const SHARD_RECORDS: f64 = 1000.0;
const SHARD_BYTES: f64 = 1_048_576.0;
const STEP: Duration = Duration::from_millis(2);
const SHARDS: usize = 8;

/// The service's bucket for one shard.
struct ModelShard {
    /// Share of the shard's limits a competing writer takes.
    competing: f64,
    /// Fixed one-second windows (kinesis-sim's `SecondWindows`) instead of a token bucket.
    windowed: bool,
    window: Instant,
    records: f64,
    bytes: f64,
    last: Instant,
    accepted_records: f64,
    accepted_bytes: f64,
    accepted_entries: u64,
    throttled_entries: u64,
}

impl ModelShard {
    fn new(now: Instant) -> Self {
        ModelShard {
            competing: 0.0,
            windowed: false,
            window: now,
            records: SHARD_RECORDS,
            bytes: SHARD_BYTES,
            last: now,
            accepted_records: 0.0,
            accepted_bytes: 0.0,
            accepted_entries: 0,
            throttled_entries: 0,
        }
    }

    fn take(&mut self, size: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let keep = 1.0 - self.competing;
        if self.windowed {
            let second = Duration::from_secs(1);
            if now.saturating_duration_since(self.window) >= second {
                self.window += second * now.saturating_duration_since(self.window).as_secs() as u32;
                self.records = (SHARD_RECORDS * keep).min(self.records + SHARD_RECORDS * keep);
                self.bytes = (SHARD_BYTES * keep).min(self.bytes + SHARD_BYTES * keep);
            }
        } else {
            self.records = (self.records + dt * SHARD_RECORDS * keep).min(SHARD_RECORDS * keep);
            self.bytes = (self.bytes + dt * SHARD_BYTES * keep).min(SHARD_BYTES * keep);
        }
        if self.records >= 1.0 && self.bytes >= size.min(SHARD_BYTES) {
            self.records -= 1.0;
            self.bytes -= size;
            self.accepted_records += 1.0;
            self.accepted_bytes += size;
            self.accepted_entries += 1;
            true
        } else {
            self.throttled_entries += 1;
            false
        }
    }
}

/// One producer: its controller, a limiter and a backlog per shard, answers on their way.
struct ModelProducer {
    control: RateControl,
    limiters: Vec<ShardLimiter>,
    /// The shards its keys fall on (all, but for a skewed producer).
    keys_on: Vec<usize>,
    /// Bytes waiting per shard; all count against one buffer.
    backlog: Vec<f64>,
    /// Answers on their way back: (when, shard, size, stored).
    answers: Vec<(Instant, usize, f64, bool)>,
    accepted: f64,
    /// Size of its Kinesis records now (aggregates shrink with the rate).
    size: f64,
    active: bool,
    /// Sends nothing before this (instances do not start in the same millisecond).
    starts: Instant,
}

struct Fleet {
    now: Instant,
    shards: Vec<ModelShard>,
    producers: Vec<ModelProducer>,
    /// Largest Kinesis record in bytes (a full aggregate, or one plain record).
    size: f64,
    aggregated: bool,
    /// Offered bytes per second per producer per shard.
    offered: f64,
    /// Buffer per producer, in bytes.
    buffer: f64,
    /// Requests on their way to the service: (arrival, producer, shard, size).
    requests: Vec<(Instant, usize, usize, f64)>,
    rng: u64,
}

/// The engine's aggregate bound (the configured 50 KiB at the full rate).
fn aggregate_size(factor: f64, largest: f64) -> f64 {
    if factor < 1.0 {
        control::aggregate_cap(factor, SHARD_BYTES, largest as usize) as f64
    } else {
        largest
    }
}

/// What a stretch of the run measured.
#[derive(Debug)]
struct Figures {
    utilization_min: f64,
    throttle_fraction: f64,
    jain: f64,
}

impl Fleet {
    /// `n` producers offering `load` times the stream's capacity in total; aggregated: 50 KiB
    /// Kinesis records (the bytes limit binds), else 110-byte records (the records limit binds).
    fn new(n: usize, load: f64, aggregated: bool, seed: u64) -> Self {
        let now = Instant::now();
        let size = if aggregated { 51_200.0 } else { 110.0 };
        let capacity = (SHARD_BYTES / size).min(SHARD_RECORDS);
        let mut f = Fleet {
            now,
            shards: (0..SHARDS).map(|_| ModelShard::new(now)).collect(),
            producers: Vec::new(),
            size,
            aggregated,
            offered: capacity * size * load / n as f64,
            // Two seconds of the producer's offered load over all its shards.
            buffer: 2.0 * capacity * size * load / n as f64 * SHARDS as f64,
            requests: Vec::new(),
            rng: seed | 1,
        };
        for _ in 0..n {
            f.join();
        }
        f
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn join(&mut self) {
        let now = self.now;
        let starts = now + Duration::from_millis(self.rand() % 500);
        let seed = self.rand();
        self.producers.push(ModelProducer {
            control: RateControl::new(starts, seed),
            limiters: (0..SHARDS)
                .map(|_| ShardLimiter::new(SHARD_RECORDS, SHARD_BYTES, now))
                .collect(),
            keys_on: (0..SHARDS).collect(),
            backlog: vec![0.0; SHARDS],
            answers: Vec::new(),
            accepted: 0.0,
            size: self.size,
            active: true,
            starts,
        });
    }

    /// Runs for `secs` of virtual time.
    fn run(&mut self, secs: f64) {
        let end = self.now + Duration::from_secs_f64(secs);
        while self.now < end {
            self.now += STEP;
            let now = self.now;
            // Answers, 2-10 ms after the service decided.
            for p in &mut self.producers {
                let mut k = 0;
                while k < p.answers.len() {
                    if p.answers[k].0 > now {
                        k += 1;
                        continue;
                    }
                    let (_, shard, size, ok) = p.answers.swap_remove(k);
                    p.control.answered(size as usize, !ok, now);
                    if ok {
                        p.accepted += size;
                    } else {
                        p.limiters[shard].on_throttle(now);
                        p.backlog[shard] += size; // retried
                    }
                }
            }
            // Requests reaching the service now, in a random order.
            let mut due = Vec::new();
            let mut k = 0;
            while k < self.requests.len() {
                if self.requests[k].0 <= now {
                    due.push(self.requests.swap_remove(k));
                } else {
                    k += 1;
                }
            }
            for i in (1..due.len()).rev() {
                let j = (self.rand() % (i as u64 + 1)) as usize;
                due.swap(i, j);
            }
            for (_, producer, shard, size) in due {
                let ok = self.shards[shard].take(size, now);
                let back = now + Duration::from_millis(2 + self.rand() % 9);
                self.producers[producer]
                    .answers
                    .push((back, shard, size, ok));
            }
            // Sends: each request takes 2-10 ms to reach the service.
            for i in 0..self.producers.len() {
                let arrives = now + Duration::from_millis(2 + self.rand() % 9);
                let p = &mut self.producers[i];
                if !p.active || p.starts > now {
                    continue;
                }
                let factor = p.control.factor(now);
                if self.aggregated {
                    p.size = aggregate_size(factor, self.size);
                }
                let room = p.backlog.iter().sum::<f64>() < self.buffer;
                let spread = SHARDS as f64 / p.keys_on.len() as f64;
                for s in 0..SHARDS {
                    if room && p.keys_on.contains(&s) {
                        p.backlog[s] += self.offered * spread * STEP.as_secs_f64();
                    }
                    let l = &mut p.limiters[s];
                    l.follow(factor, now);
                    while p.backlog[s] >= p.size {
                        if l.try_acquire(p.size as usize, now).is_err() {
                            p.control.limited();
                            break;
                        }
                        p.backlog[s] -= p.size;
                        self.requests.push((arrives, i, s, p.size));
                    }
                }
            }
        }
    }

    /// Runs `secs` and measures that stretch.
    fn measure(&mut self, secs: f64) -> Figures {
        let before: Vec<(f64, f64, u64, u64)> = self
            .shards
            .iter()
            .map(|s| {
                (
                    s.accepted_records,
                    s.accepted_bytes,
                    s.accepted_entries,
                    s.throttled_entries,
                )
            })
            .collect();
        let accepted_before: Vec<f64> = self.producers.iter().map(|p| p.accepted).collect();
        self.run(secs);
        let mut utilization_min = f64::INFINITY;
        let (mut ok, mut throttled) = (0, 0);
        for (s, b) in self.shards.iter().zip(&before) {
            let records = (s.accepted_records - b.0) / secs / SHARD_RECORDS;
            let bytes = (s.accepted_bytes - b.1) / secs / SHARD_BYTES;
            utilization_min = utilization_min.min(records.max(bytes));
            ok += s.accepted_entries - b.2;
            throttled += s.throttled_entries - b.3;
        }
        let rates: Vec<f64> = self
            .producers
            .iter()
            .zip(&accepted_before)
            .filter(|(p, _)| p.active)
            .map(|(p, a)| p.accepted - a)
            .collect();
        let sum: f64 = rates.iter().sum();
        let squares: f64 = rates.iter().map(|x| x * x).sum();
        Figures {
            utilization_min,
            throttle_fraction: throttled as f64 / (ok + throttled).max(1) as f64,
            jain: sum * sum / (rates.len() as f64 * squares),
        }
    }
}

fn assert_converged(f: &Figures, what: &str) {
    assert!(f.utilization_min >= 0.95, "{what}: {f:?}");
    assert!(f.throttle_fraction <= 0.02, "{what}: {f:?}");
    assert!(f.jain >= 0.95, "{what}: {f:?}");
}

fn converged(n: usize, aggregated: bool, windowed: bool) -> Figures {
    let mut fleet = Fleet::new(n, 2.0, aggregated, 42 + n as u64);
    for s in &mut fleet.shards {
        s.windowed = windowed;
    }
    fleet.run(10.0);
    let f = fleet.measure(30.0);
    eprintln!("n={n} aggregated={aggregated} windowed={windowed}: {f:?}");
    f
}

fn converges(n: usize, aggregated: bool) {
    let f = converged(n, aggregated, false);
    assert_converged(&f, &format!("{n} producers, aggregated {aggregated}"));
}

#[test]
fn one_producer_uses_the_whole_stream_unthrottled() {
    for aggregated in [true, false] {
        let mut fleet = Fleet::new(1, 2.0, aggregated, 1);
        fleet.run(5.0);
        let f = fleet.measure(20.0);
        assert!(f.utilization_min >= 0.99, "{f:?}");
        assert_eq!(f.throttle_fraction, 0.0, "{f:?}");
        assert_eq!(fleet.producers[0].control.current(), 1.0);
    }
}

#[test]
fn two_producers_converge() {
    converges(2, true);
    converges(2, false);
}

#[test]
fn eight_producers_converge() {
    converges(8, true);
    converges(8, false);
}

/// Plain, the model's 32 producers settle at Jain 0.936 (below the 0.95 target; the
/// benchmark's figure is in BENCHMARKS.md): each sends 250 records a second, so a 1 % throttled
/// fraction is a throttle every 400 ms, and the spread of those cuts is what the fairness term
/// pulls against.
#[test]
fn thirty_two_producers_converge() {
    converges(32, true);
    let f = converged(32, false, false);
    assert!(
        f.utilization_min >= 0.95 && f.throttle_fraction <= 0.02,
        "{f:?}"
    );
    assert!(f.jain >= 0.93, "{f:?}");
}

/// Under fixed one-second windows (kinesis-sim's `window` model) a second's excess comes back
/// throttled at once, and what a window leaves unspent is lost. The model measures the shards
/// at 0.92-1.0 of their limits, Jain 0.93-1.0, and 0.6-6.5 % of Kinesis records throttled (the
/// targets of 0.95 and 2 % missed at 2, resp. 8 and 32 producers; see `MAX_CUT` and
/// BENCHMARKS.md). Checked: what holds, so that a change that makes it worse fails.
#[test]
fn under_one_second_windows_the_shards_stay_full() {
    for aggregated in [true, false] {
        for n in [2, 8, 32] {
            let f = converged(n, aggregated, true);
            assert!(f.utilization_min >= 0.9, "{n} {aggregated}: {f:?}");
            assert!(f.throttle_fraction <= 0.08, "{n} {aggregated}: {f:?}");
            assert!(f.jain >= 0.9, "{n} {aggregated}: {f:?}");
        }
    }
}

/// One of eight leaves: from 5 s on the others use its share; one joins: from 5 s on it is
/// near its share and the stream within bounds.
#[test]
fn a_producer_leaving_and_one_joining_reconverge() {
    for aggregated in [false, true] {
        let mut fleet = Fleet::new(8, 2.0, aggregated, 8);
        fleet.run(20.0);
        assert_converged(&fleet.measure(10.0), "before");
        fleet.producers[7].active = false;
        fleet.run(5.0);
        let f = fleet.measure(10.0);
        eprintln!("aggregated={aggregated}, 5-15 s after a leave: {f:?}");
        assert_converged(&f, "5-15 s after a producer left");
        fleet.join();
        fleet.run(5.0);
        let f = fleet.measure(10.0);
        eprintln!("aggregated={aggregated}, 5-15 s after a join: {f:?}");
        assert_converged(&f, "5-15 s after a producer joined");
    }
}

/// Multiplicative control alone would keep a head start: a producer at the full rate and three
/// at a tenth of it (each offering twice the stream) are pulled toward fair shares.
#[test]
fn an_unfair_start_is_corrected() {
    let mut fleet = Fleet::new(4, 8.0, false, 5);
    for p in &mut fleet.producers {
        p.control = RateControl::new(fleet.now, 9);
    }
    fleet.run(2.0);
    for p in &mut fleet.producers[1..] {
        p.control.scale(0.1);
    }
    let before = fleet.measure(3.0);
    assert!(before.jain < 0.7, "{before:?}");
    fleet.run(20.0);
    let after = fleet.measure(10.0);
    eprintln!("{before:?} -> {after:?}");
    assert!(after.jain > before.jain + 0.15, "{before:?} -> {after:?}");
    assert!(
        after.utilization_min >= 0.95 && after.throttle_fraction <= 0.02,
        "{after:?}"
    );
}

/// A competing writer takes 40 % of one shard: the fleet backs off until that shard is within
/// bounds (every producer's keys reach it, so each is held to its rate there), and takes the
/// shard back when the writer stops.
#[test]
fn a_competing_writer_on_one_shard_is_made_room_for() {
    for aggregated in [false, true] {
        let mut fleet = Fleet::new(8, 2.0, aggregated, 11);
        fleet.run(20.0);
        fleet.shards[3].competing = 0.4;
        fleet.run(10.0);
        let f = fleet.measure(10.0);
        eprintln!("aggregated={aggregated}, a competing writer: {f:?}");
        assert!(f.throttle_fraction <= 0.02, "{f:?}");
        // The lowest shard is the shared one: the fleet has most of what the writer left.
        assert!(f.utilization_min >= 0.55, "{f:?}");
        fleet.shards[3].competing = 0.0;
        fleet.run(10.0);
        assert_converged(&fleet.measure(10.0), "10-20 s after the writer stopped");
    }
}

/// One producer's keys all fall on two shards; the others' are spread. Every shard stays
/// full, within the throttling bound.
#[test]
fn a_producer_with_skewed_keys_does_not_upset_the_rest() {
    for aggregated in [false, true] {
        let mut fleet = Fleet::new(8, 2.0, aggregated, 12);
        fleet.producers[0].keys_on = vec![0, 1];
        fleet.run(20.0);
        let f = fleet.measure(20.0);
        eprintln!("aggregated={aggregated}, skewed keys: {f:?}");
        assert!(f.utilization_min >= 0.95, "{f:?}");
        assert!(f.throttle_fraction <= 0.02, "{f:?}");
    }
}
