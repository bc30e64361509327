//! Soak and overload: the producer against an in-process kinesis-sim for a long run, with the
//! process's memory sampled from `/proc/self/status`. Prints one JSON summary; exits 1 when a
//! check fails. `scripts/soak.sh` runs it (10 minutes) together with the 100,000-case fuzzing.
//!
//! ```text
//! cargo run --release --example soak -- [--minutes 10] [--overload-secs 60] [--shards 4]
//!     [--fault-rate 0.05] [--aggregation on|off] [--record-size 200]
//! ```
//!
//! Phases, on one producer (buffer bound: 20,000 records / 8 MiB):
//! 1. **Overload** (`--overload-secs`): callers offer 10x the stream's capacity, through
//!    `add().await` (waits), `try_add` (hands records back) and `add_blocking` (blocks a
//!    thread); no faults. Check: RSS peak <= RSS after start-up + 2 x max_buffered_bytes +
//!    max_buffered_records x 1 KiB + 64 MiB (in-flight requests, SDK and runtime buffers).
//! 2. **Soak** (`--minutes`): 2x capacity offered (3/4 through `add().await` on a schedule,
//!    1/4 through `try_add`, which sheds what does not fit) with faults: per-record InternalFailure at the
//!    fault rate, HTTP 500 and 503 at half of it each, dropped connections at a fifth of it.
//!    RSS is sampled every 10 s. Check: no sample after the first minute exceeds the sample at
//!    one minute by more than 10 % + 16 MiB (the tolerance for allocator noise).
//!
//! Both phases: every accepted record's future resolves (counted), none fails (the faults are
//! all retryable and the TTL is 30 s), stats add up, and the simulator stored at least what
//! the producer counts as stored (more only where a dropped connection hid a success).

use futures::stream::{FuturesUnordered, StreamExt};
use kinesis_producer::{AddError, PendingRecord, Producer, UserRecord};
use kinesis_sim::{Faults, SimConfig, Simulator};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const STREAM: &str = "soak";
const MAX_RECORDS: usize = 20_000;
const MAX_BYTES: usize = 8 << 20;
const MIB: f64 = 1024.0 * 1024.0;

struct Args {
    minutes: f64,
    overload_secs: f64,
    shards: u32,
    fault_rate: f64,
    aggregation: bool,
    record_size: usize,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 10.0,
        overload_secs: 60.0,
        shards: 4,
        fault_rate: 0.05,
        aggregation: true,
        record_size: 200,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).map(String::as_str).unwrap_or("");
        let bad = |what: &str| -> ! {
            eprintln!("soak: {what} needs a value, got {value:?}");
            std::process::exit(2)
        };
        match argv[i].as_str() {
            "--minutes" => a.minutes = value.parse().unwrap_or_else(|_| bad("--minutes")),
            "--overload-secs" => {
                a.overload_secs = value.parse().unwrap_or_else(|_| bad("--overload-secs"))
            }
            "--shards" => a.shards = value.parse().unwrap_or_else(|_| bad("--shards")),
            "--fault-rate" => a.fault_rate = value.parse().unwrap_or_else(|_| bad("--fault-rate")),
            "--aggregation" => a.aggregation = value == "on",
            "--record-size" => {
                a.record_size = value.parse().unwrap_or_else(|_| bad("--record-size"))
            }
            other => {
                eprintln!(
                    "soak: unknown argument {other:?} (see the doc comment of examples/soak.rs)"
                );
                std::process::exit(2)
            }
        }
        i += 2;
    }
    a
}

/// (VmRSS, VmHWM) in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Counts of one phase, shared by its callers.
#[derive(Default)]
struct Counts {
    offered: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    longest_wait_us: AtomicU64,
}

impl Counts {
    fn waited(&self, d: Duration) {
        self.longest_wait_us
            .fetch_max(d.as_micros() as u64, Ordering::Relaxed);
    }
}

fn record(n: u64, size: usize) -> UserRecord {
    let mut data = format!("{n:012}|").into_bytes();
    data.resize(size, b'.');
    UserRecord::new(format!("key-{}", n % 10_007), data)
}

/// Awaits every accepted record's future and counts the outcomes.
fn spawn_resolver(
    counts: Arc<Counts>,
) -> (
    mpsc::UnboundedSender<PendingRecord>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<PendingRecord>();
    let handle = tokio::spawn(async move {
        let mut pending = FuturesUnordered::new();
        let mut open = true;
        while open || !pending.is_empty() {
            tokio::select! {
                next = rx.recv(), if open => match next {
                    Some(p) => pending.push(p),
                    None => open = false,
                },
                Some(result) = pending.next(), if !pending.is_empty() => {
                    let counter = if result.is_ok() { &counts.ok } else { &counts.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = result {
                        eprintln!("soak: record failed: {e}");
                    }
                }
            }
        }
    });
    (tx, handle)
}

/// Runs callers for `duration`: `waiters` tasks calling `add().await` and `blockers` threads
/// calling `add_blocking`, together offering `rate` records/s (`None`: as fast as they are let
/// through), plus one task offering `try_rate` records/s through `try_add` (shedding what
/// does not fit).
#[allow(clippy::too_many_arguments)]
async fn phase(
    p: &Producer,
    duration: Duration,
    rate: Option<f64>,
    waiters: usize,
    blockers: usize,
    try_rate: Option<f64>,
    next_id: Arc<AtomicU64>,
    record_size: usize,
    counts: Arc<Counts>,
) {
    let (tx, resolver) = spawn_resolver(counts.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let every = rate.map(|r| Duration::from_secs_f64((waiters + blockers).max(1) as f64 / r));
    let mut tasks = Vec::new();
    for _ in 0..waiters {
        let (p, tx, stop, next_id, counts) = (
            p.clone(),
            tx.clone(),
            stop.clone(),
            next_id.clone(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut due = tokio::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(every) = every {
                    // A schedule, not a fixed sleep: after waiting for room the caller
                    // catches up, so the offer stays at the rate.
                    due += every;
                    tokio::time::sleep_until(due).await;
                }
                let r = record(next_id.fetch_add(1, Ordering::Relaxed), record_size);
                counts.offered.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let pending = p.add(r).await.expect("a valid record is accepted");
                counts.waited(t.elapsed());
                counts.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(pending);
            }
        }));
    }
    if let Some(try_rate) = try_rate {
        let (p, tx, stop, next_id, counts) = (
            p.clone(),
            tx.clone(),
            stop.clone(),
            next_id.clone(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let mut done = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (begun.elapsed().as_secs_f64() * try_rate) as u64;
                while done < due {
                    done += 1;
                    let r = record(next_id.fetch_add(1, Ordering::Relaxed), record_size);
                    counts.offered.fetch_add(1, Ordering::Relaxed);
                    match p.try_add(r.clone()) {
                        Ok(pending) => {
                            counts.accepted.fetch_add(1, Ordering::Relaxed);
                            let _ = tx.send(pending);
                        }
                        Err(AddError::BufferFull { record, .. }) => {
                            assert_eq!(record, r, "try_add hands the record back unchanged");
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("try_add: {e}"),
                    }
                }
            }
        }));
    }
    let mut threads = Vec::new();
    for _ in 0..blockers {
        let (p, tx, stop, next_id, counts) = (
            p.clone(),
            tx.clone(),
            stop.clone(),
            next_id.clone(),
            counts.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = record(next_id.fetch_add(1, Ordering::Relaxed), record_size);
                counts.offered.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let pending = p.add_blocking(r).expect("a valid record is accepted");
                counts.waited(t.elapsed());
                counts.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(pending);
            }
        }));
    }
    drop(tx);
    tokio::time::sleep_until((start + duration).into()).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("caller task");
    }
    for t in threads {
        tokio::task::spawn_blocking(move || t.join().expect("caller thread"))
            .await
            .expect("join");
    }
    resolver.await.expect("resolver");
}

fn main() {
    let a = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(run(a));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(a: Args) -> bool {
    let started = Instant::now();
    let sim = Simulator::start(SimConfig {
        store_records: false,
        ..SimConfig::default()
    })
    .await
    .expect("start kinesis-sim");
    sim.create_stream(STREAM, a.shards).expect("create stream");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(sim.endpoint_url())
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "AKID", "SECRET", None, None, "soak",
        ))
        .load()
        .await;
    let p = Producer::builder()
        .stream_name(STREAM)
        .aggregation(a.aggregation)
        .max_buffered_records(MAX_RECORDS)
        .max_buffered_bytes(MAX_BYTES)
        .build(&sdk)
        .await
        .expect("build the producer");
    // Capacity in user records/s: each shard takes 1,000 Kinesis records and 1 MiB per second;
    // aggregated, the bytes bind first.
    let record_bytes = (a.record_size + 10) as f64;
    let per_shard = if a.aggregation {
        MIB / record_bytes
    } else {
        (MIB / record_bytes).min(1_000.0)
    };
    let capacity = per_shard * f64::from(a.shards);
    let next_id = Arc::new(AtomicU64::new(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (baseline, _) = memory();

    // Phase 1: overload at 10x capacity, no faults.
    let overload = Arc::new(Counts::default());
    let sampling = Arc::new(AtomicBool::new(true));
    let max_pending = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (p, sampling, max_pending) = (p.clone(), sampling.clone(), max_pending.clone());
        tokio::spawn(async move {
            let mut breaches = 0u64;
            while sampling.load(Ordering::Relaxed) {
                let s = p.stats();
                max_pending.fetch_max(s.records_pending, Ordering::Relaxed);
                // The engine's own count within the bound, and the semaphores never showing
                // more room than the bound (a double release).
                if s.records_pending > MAX_RECORDS as u64
                    || s.bytes_pending > MAX_BYTES as u64
                    || s.buffer_records_free > MAX_RECORDS as u64
                    || s.buffer_bytes_free > MAX_BYTES as u64
                {
                    breaches += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            breaches
        })
    };
    let t = Instant::now();
    phase(
        &p,
        Duration::from_secs_f64(a.overload_secs),
        None,
        4,
        2,
        Some(10.0 * capacity),
        next_id.clone(),
        a.record_size,
        overload.clone(),
    )
    .await;
    let overload_secs = t.elapsed().as_secs_f64();
    let (_, overload_hwm) = memory();
    let allowance = 2 * MAX_BYTES as u64 + MAX_RECORDS as u64 * 1024 + 64 * (1 << 20);
    // Rates over the offer window (the phase then waits for what it accepted to resolve).
    let overload_offered = overload.offered.load(Ordering::Relaxed) as f64 / a.overload_secs;

    // Phase 2: soak at 2x capacity with faults.
    let fr = a.fault_rate;
    sim.set_faults(
        STREAM,
        Faults {
            internal_failure_rate: fr,
            http_500_rate: fr / 2.0,
            http_503_rate: fr / 2.0,
            drop_connection_rate: fr / 5.0,
            ..Faults::default()
        },
    )
    .expect("faults");
    let soak = Arc::new(Counts::default());
    let rss_samples = Arc::new(std::sync::Mutex::new(Vec::<(f64, u64)>::new()));
    let soak_start = Instant::now();
    let rss_sampler = {
        let samples = rss_samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let (rss, _) = memory();
                samples
                    .lock()
                    .unwrap()
                    .push((soak_start.elapsed().as_secs_f64(), rss));
            }
        })
    };
    phase(
        &p,
        Duration::from_secs_f64(a.minutes * 60.0),
        Some(1.5 * capacity),
        4,
        0,
        Some(0.5 * capacity),
        next_id.clone(),
        a.record_size,
        soak.clone(),
    )
    .await;
    let soak_secs = soak_start.elapsed().as_secs_f64();
    rss_sampler.abort();
    sampling.store(false, Ordering::Relaxed);
    let breaches = sampler.await.unwrap_or(1);
    let shutdown_started = Instant::now();
    let shut = tokio::time::timeout(Duration::from_secs(120), p.shutdown()).await;
    let shutdown_secs = shutdown_started.elapsed().as_secs_f64();
    let stats = p.stats();
    let counters = sim.counters(STREAM);
    let samples = rss_samples.lock().unwrap().clone();

    // Checks.
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (name, c) in [("overload", &overload), ("soak", &soak)] {
        let (accepted, ok, failed) = (get(&c.accepted), get(&c.ok), get(&c.failed));
        check(
            ok + failed == accepted,
            format!("{name}: {accepted} accepted, {ok} ok + {failed} failed resolved"),
        );
        check(failed == 0, format!("{name}: {failed} records failed"));
    }
    check(matches!(shut, Ok(Ok(()))), format!("shutdown: {shut:?}"));
    let accepted = get(&overload.accepted) + get(&soak.accepted);
    check(
        stats.records_received == accepted
            && stats.records_put + stats.records_failed == accepted
            && stats.records_pending == 0,
        format!("stats do not add up: {stats:?} for {accepted} accepted"),
    );
    check(
        (stats.buffer_records_free, stats.buffer_bytes_free)
            == (MAX_RECORDS as u64, MAX_BYTES as u64)
            && stats.bytes_pending == 0,
        format!("the ledger and the buffer's semaphores disagree after shutdown: {stats:?}"),
    );
    check(
        counters.accepted_records() >= stats.kinesis_records_put,
        format!(
            "the simulator stored {} Kinesis records, the producer counts {}",
            counters.accepted_records(),
            stats.kinesis_records_put
        ),
    );
    check(
        breaches == 0,
        format!("buffer bound breached in {breaches} samples"),
    );
    check(
        overload_hwm <= baseline + allowance,
        format!(
            "overload RSS peak {:.1} MiB over baseline {:.1} MiB + allowance {:.1} MiB",
            overload_hwm as f64 / MIB,
            baseline as f64 / MIB,
            allowance as f64 / MIB
        ),
    );
    check(
        overload_offered >= 10.0 * capacity,
        format!("overload offered only {overload_offered:.0}/s for a capacity of {capacity:.0}/s"),
    );
    check(
        get(&overload.refused) > 0,
        "try_add never handed a record back".into(),
    );
    let at_one_minute = samples.iter().find(|(t, _)| *t >= 60.0).map(|s| s.1);
    let mut growth_mib = 0.0;
    if let Some(reference) = at_one_minute {
        let max_after = samples
            .iter()
            .filter(|(t, _)| *t >= 60.0)
            .map(|s| s.1)
            .max()
            .unwrap_or(reference);
        growth_mib = (max_after as f64 - reference as f64) / MIB;
        let limit = reference as f64 * 1.10 + 16.0 * MIB;
        check(
            (max_after as f64) <= limit,
            format!(
                "RSS grew after the first minute: {:.1} MiB at 1 min, {:.1} MiB max later",
                reference as f64 / MIB,
                max_after as f64 / MIB
            ),
        );
    }
    let (_, hwm) = memory();
    let summary = serde_json::json!({
        "ok": failures.is_empty(),
        "failures": failures,
        "duration_secs": started.elapsed().as_secs_f64(),
        "config": {
            "shards": a.shards,
            "aggregation": a.aggregation,
            "record_size": a.record_size,
            "fault_rate": a.fault_rate,
            "max_buffered_records": MAX_RECORDS,
            "max_buffered_bytes": MAX_BYTES,
            "capacity_records_per_sec": capacity.round(),
        },
        "overload": {
            "secs": overload_secs,
            "offered_per_sec": overload_offered.round(),
            "accepted_per_sec": (get(&overload.accepted) as f64 / a.overload_secs).round(),
            "try_add_refused": get(&overload.refused),
            "longest_wait_ms": get(&overload.longest_wait_us) / 1_000,
            "max_records_pending": max_pending.load(Ordering::Relaxed),
            "rss_baseline_mib": baseline as f64 / MIB,
            "rss_peak_mib": overload_hwm as f64 / MIB,
            "rss_allowance_mib": allowance as f64 / MIB,
        },
        "soak": {
            "secs": soak_secs,
            "scheduled_per_sec": (2.0 * capacity).round(),
            "attempted_per_sec": (get(&soak.offered) as f64 / (a.minutes * 60.0)).round(),
            "accepted_per_sec": (get(&soak.accepted) as f64 / (a.minutes * 60.0)).round(),
            "try_add_refused": get(&soak.refused),
            "records_ok": get(&soak.ok),
            "records_failed": get(&soak.failed),
            "rss_samples_mib": samples.iter().map(|(t, r)| vec![t.round(), (*r as f64 / MIB * 10.0).round() / 10.0]).collect::<Vec<_>>(),
            "rss_growth_after_first_minute_mib": (growth_mib * 10.0).round() / 10.0,
            "rss_tolerance": "10 % + 16 MiB over the sample at 1 minute",
        },
        "shutdown_secs": shutdown_secs,
        "rss_peak_mib": hwm as f64 / MIB,
        "stats": {
            "records_received": stats.records_received,
            "records_put": stats.records_put,
            "records_failed": stats.records_failed,
            "kinesis_records_put": stats.kinesis_records_put,
            "requests": stats.requests,
            "retries": stats.retries,
            "throttles": stats.throttles,
        },
        "sim": {
            "accepted_records": counters.accepted_records(),
            "failed_records": counters.failed_records(),
            "throttled_records": counters.throttled_records(),
            "http_500": counters.http_500_injected,
            "http_503": counters.http_503_injected,
            "connections_dropped": counters.connections_dropped,
        },
    });
    println!("{}", serde_json::to_string_pretty(&summary).expect("json"));
    summary["ok"].as_bool().unwrap_or(false)
}
