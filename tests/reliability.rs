//! Reliability: the producer against kinesis-sim under injected faults, overload and shutdown,
//! with aggregation off and on. Each case adds 20,000 tagged records and then checks the
//! invariants of `support::invariants::verify`: every future resolved (once: it is a oneshot),
//! every `Ok` stored exactly where it says, every other stored copy explained by an attempt of
//! unknown outcome, the buffer bound held throughout (sampled from `stats()`).
//!
//! Run time is kept down by turning the shard limits off (simulator and producer) wherever
//! the fault does not need them, and by scaling the outage window down (5 s instead of 10 s,
//! TTLs scaled with it so that the TTL-vs-outage relation stays). The long soak is
//! `scripts/soak.sh` (see the README).

mod support;

use kinesis_producer::{
    AddError, PendingRecord, Producer, ProducerBuilder, RecordError, Stats, UserRecord,
};
use kinesis_sim::{Faults, RateLimits, SimConfig, Simulator, StreamCounters};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::invariants::{
    resolve_all, tagged_record, verify, wait_until, BoundSampler, Outcome, Verdict,
};

/// Records per case.
const N: usize = 20_000;
/// Distinct partition keys.
const KEYS: usize = 500;
/// Upper bound of any wait: a hang fails instead of blocking the suite.
const DEADLINE: Duration = Duration::from_secs(120);
/// Buffer bound of every case: well below `N`, so `add` waits for room during the run.
const MAX_RECORDS: usize = 8_000;
const MAX_BYTES: usize = 4 << 20;
const STREAM: &str = "reliability";

async fn sim_with(shards: u32, limits: bool) -> Simulator {
    let cfg = SimConfig {
        limits: if limits {
            RateLimits::default()
        } else {
            RateLimits::unlimited()
        },
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg).await.expect("start the simulator");
    sim.create_stream(STREAM, shards)
        .expect("create the stream");
    sim
}

fn builder(aggregation: bool, limits: bool) -> ProducerBuilder {
    Producer::builder()
        .stream_name(STREAM)
        .aggregation(aggregation)
        .rate_limiting(limits)
        .max_buffered_time(Duration::from_millis(20))
        .max_buffered_records(MAX_RECORDS)
        .max_buffered_bytes(MAX_BYTES)
        // Far beyond any case's run time (debug builds on a loaded 2-core CI machine are slow);
        // the outage cases set their own TTLs.
        .record_ttl(Duration::from_secs(120))
}

async fn build(sim: &Simulator, b: ProducerBuilder) -> Producer {
    let config = support::reader::sdk_config(&sim.endpoint_url()).await;
    b.build(&config).await.expect("build the producer")
}

/// Adds records `ids` one by one with `add().await`, pausing `pause` every `every` records.
async fn add_range(
    p: &Producer,
    ids: std::ops::Range<usize>,
    pace: Option<(usize, Duration)>,
) -> Vec<(UserRecord, PendingRecord)> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some((every, pause)) = pace {
            if id.is_multiple_of(every) {
                tokio::time::sleep(pause).await;
            }
        }
        let r = tagged_record(id, KEYS);
        let pending = p.add(r.clone()).await.expect("a valid record is accepted");
        out.push((r, pending));
    }
    out
}

/// [`add_range`], noting when each `add` returned.
async fn add_range_timed(
    p: &Producer,
    ids: std::ops::Range<usize>,
    pace: Option<(usize, Duration)>,
) -> (Vec<(UserRecord, PendingRecord)>, Vec<Instant>) {
    let mut out = Vec::with_capacity(ids.len());
    let mut at = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(add_range(p, id..id + 1, pace).await);
        at.push(Instant::now());
    }
    (out, at)
}

/// Everything resolved, nothing held, counters consistent with the outcomes.
async fn finish(p: &Producer, outcomes: &[Outcome]) -> Stats {
    tokio::time::timeout(DEADLINE, p.shutdown())
        .await
        .expect("shutdown in time")
        .expect("shutdown");
    let stats = p.stats();
    let ok = outcomes.iter().filter(|(_, r)| r.is_ok()).count() as u64;
    assert_eq!(stats.records_received, outcomes.len() as u64, "{stats:?}");
    assert_eq!(stats.records_put, ok, "{stats:?}");
    assert_eq!(
        stats.records_failed,
        outcomes.len() as u64 - ok,
        "{stats:?}"
    );
    assert_eq!((stats.records_pending, stats.bytes_pending), (0, 0));
    stats
}

struct Report {
    verdict: Verdict,
    stats: Stats,
    counters: StreamCounters,
    outcomes: Vec<Outcome>,
    took: Duration,
}

/// One fault-matrix case: `N` records through a producer against a faulty simulator.
async fn run_case(
    shards: u32,
    limits: bool,
    faults: Faults,
    aggregation: bool,
    tweak: impl FnOnce(ProducerBuilder) -> ProducerBuilder,
    pace: Option<(usize, Duration)>,
) -> Report {
    let started = Instant::now();
    let sim = sim_with(shards, limits).await;
    let p = build(&sim, tweak(builder(aggregation, limits))).await;
    sim.set_faults(STREAM, faults).unwrap();
    let sampler = BoundSampler::start(
        &p,
        MAX_RECORDS as u64,
        MAX_BYTES as u64,
        Duration::from_millis(5),
    );
    let pending = add_range(&p, 0..N, pace).await;
    let outcomes = resolve_all(pending, DEADLINE).await;
    let samples = sampler.finish().await;
    assert!(
        samples.max_records > 0,
        "the sampler saw the buffer in use: {samples:?}"
    );
    let stats = finish(&p, &outcomes).await;
    let verdict = verify(&sim, STREAM, &outcomes);
    let counters = sim.counters(STREAM);
    assert_eq!(
        counters.accepted_records(),
        verdict.kinesis_records as u64,
        "the sim's counters agree with its records"
    );
    assert!(stats.kinesis_records_put <= verdict.kinesis_records as u64);
    let report = Report {
        verdict,
        stats,
        counters,
        outcomes,
        took: started.elapsed(),
    };
    eprintln!(
        "aggregation {aggregation}: {:?} in {:?}; retries {}, requests {}, sim {:?}",
        report.verdict,
        report.took,
        report.stats.retries,
        report.stats.requests,
        (
            report.counters.http_500_injected,
            report.counters.http_503_injected,
            report.counters.connections_dropped,
            report.counters.failed_records(),
            report.counters.throttled_records()
        )
    );
    report
}

fn all_ok(r: &Report) {
    if let Some((rec, Err(e))) = r.outcomes.iter().find(|(_, res)| res.is_err()) {
        panic!("{rec:?} failed: {e}");
    }
    assert_eq!(r.verdict.ok, N);
}

/// The ids of the records whose result matches `f`, in ascending order.
fn ids_where(
    outcomes: &[Outcome],
    f: impl Fn(&Result<kinesis_producer::PutOutcome, RecordError>) -> bool,
) -> Vec<usize> {
    let mut ids: Vec<usize> = outcomes
        .iter()
        .filter(|(_, res)| f(res))
        .map(|(r, _)| support::invariants::record_id(&r.data).expect("tagged record"))
        .collect();
    ids.sort_unstable();
    ids
}

fn attempt_codes(r: &Report) -> std::collections::HashSet<String> {
    r.outcomes
        .iter()
        .flat_map(|(_, res)| match res {
            Ok(o) => o.attempts.clone(),
            Err(e) => e.attempts().to_vec(),
        })
        .filter_map(|a| a.error_code.as_deref().map(str::to_owned))
        .collect()
}

/// Small requests (and aggregates), so that faults drawn per request hit enough of them:
/// 20,000 records make at least 200 requests either way.
fn many_requests(b: ProducerBuilder) -> ProducerBuilder {
    b.max_records_per_request(10).aggregation_max_count(10)
}

/// Runs `case` with aggregation off and on, concurrently.
async fn both<F, Fut>(case: F) -> (Report, Report)
where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = Report>,
{
    tokio::join!(case(false), case(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_failure_on_20_percent_of_records() {
    let (off, on) = both(|agg| {
        let faults = Faults {
            internal_failure_rate: 0.2,
            ..Faults::default()
        };
        run_case(4, false, faults, agg, |b| b, None)
    })
    .await;
    for r in [&off, &on] {
        all_ok(r);
        assert!(r.counters.failed_records() > 0);
        assert!(attempt_codes(r).contains("InternalFailure"));
        assert_eq!(r.verdict.possible_duplicates, 0, "nothing was ambiguous");
        assert_eq!(r.verdict.stored_user_records, N, "stored exactly once each");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_and_503_on_10_percent_of_requests() {
    let (off, on) = both(|agg| {
        let faults = Faults {
            http_500_rate: 0.05,
            http_503_rate: 0.05,
            ..Faults::default()
        };
        run_case(4, false, faults, agg, many_requests, None)
    })
    .await;
    for r in [&off, &on] {
        all_ok(r);
        assert!(r.counters.http_500_injected + r.counters.http_503_injected > 0);
        assert_eq!(r.verdict.stored_user_records, N, "stored exactly once each");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_mid_request_on_5_percent() {
    let (off, on) = both(|agg| {
        let faults = Faults {
            drop_connection_rate: 0.05,
            ..Faults::default()
        };
        run_case(4, false, faults, agg, many_requests, None)
    })
    .await;
    for r in [&off, &on] {
        all_ok(r);
        assert!(r.counters.connections_dropped > 0, "the fault fired");
        assert!(
            r.verdict.unknown_attempts > 0,
            "drops were seen as unknown outcomes"
        );
        // Some dropped requests were applied first: their records are stored twice.
        assert_eq!(
            r.verdict.stored_user_records,
            N + r.verdict.possible_duplicates
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_spikes_past_the_request_timeout() {
    let (off, on) = both(|agg| {
        let faults = Faults {
            latency_spike_rate: 0.05,
            latency_spike: Duration::from_secs(2),
            ..Faults::default()
        };
        run_case(
            4,
            false,
            faults,
            agg,
            // A fixed 1 s timeout, so that the spikes pass it: the adaptive timeout would
            // stretch past 2 s once it has seen the endpoint (tested in `congestion.rs`).
            |b| {
                many_requests(b)
                    .request_timeout(Duration::from_secs(1))
                    .adaptive_concurrency(false)
            },
            None,
        )
    })
    .await;
    for r in [&off, &on] {
        all_ok(r);
        assert!(
            attempt_codes(r).contains("Timeout"),
            "{:?}",
            attempt_codes(r)
        );
        assert_eq!(
            r.verdict.stored_user_records,
            N + r.verdict.possible_duplicates
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_writer_takes_half_of_every_shard() {
    let (off, on) = both(|agg| {
        let faults = Faults {
            competing_writer_share: 0.5,
            ..Faults::default()
        };
        run_case(8, true, faults, agg, |b| b, None)
    })
    .await;
    for r in [&off, &on] {
        all_ok(r);
        assert_eq!(r.verdict.stored_user_records, N);
    }
    // Without aggregation 20,000 records need 5 s of half of 8 shards' record budget: the
    // service throttled and the producer backed off.
    assert!(off.stats.throttles > 0, "{:?}", off.stats);
    assert!(off.took >= Duration::from_secs(4), "{:?}", off.took);
    assert_eq!(off.stats.throttles, off.counters.throttled_records());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_4_to_8_mid_run() {
    let (off, on) = both(|agg| {
        let faults = Faults {
            reshard_at: Some((Duration::from_millis(400), 8)),
            ..Faults::default()
        };
        // Paced over about a second, so that the reshard falls mid-run.
        run_case(
            4,
            false,
            faults,
            agg,
            |b| b,
            Some((500, Duration::from_millis(25))),
        )
    })
    .await;
    for r in [&off, &on] {
        all_ok(r);
        assert!(r.stats.shard_map_refreshes >= 1, "{:?}", r.stats);
        let shards = &r.counters.shards;
        assert_eq!(shards.len(), 12, "4 closed parents and 8 children");
        assert!(shards[..4].iter().all(|s| s.accepted_records > 0));
        assert!(shards[4..].iter().all(|s| s.accepted_records > 0));
        // Stranded sub-records are re-sent, so an aggregated stream may hold extra copies.
        assert_eq!(
            r.verdict.stored_user_records,
            N + r.verdict.possible_duplicates + r.verdict.stranded_copies
        );
    }
    assert_eq!(
        off.verdict.stranded_copies, 0,
        "plain records are never stranded"
    );
}

/// The endpoint is unreachable for 5 s (the 10 s scaled down; TTLs scaled with it:
/// 30 s instead of 60 s, 2.5 s instead of 5 s). A quarter of the records is added (and stored)
/// before the outage. With the long TTL, half is added early in the outage and the last quarter
/// 4 s into it: all must be stored. With the short TTL, the other three quarters are all added
/// early in the outage, so the expected set is exact: the first quarter stored, every other
/// record expired. (Records added late in a short-TTL outage may or may not outlive the
/// stream-wide back-off, which can reach twice `BACKOFF_MAX`: no exact set for them.)
async fn outage_case(aggregation: bool, ttl: Duration) -> Report {
    let started = Instant::now();
    let outage = Duration::from_secs(5);
    let sim = sim_with(4, false).await;
    // Room for every record: during the outage nothing drains, and `add` must not wait.
    let p = build(
        &sim,
        builder(aggregation, false)
            .record_ttl(ttl)
            .max_buffered_records(N),
    )
    .await;
    let sampler = BoundSampler::start(&p, N as u64, MAX_BYTES as u64, Duration::from_millis(5));
    // A quarter before the outage, stored at once.
    let before = resolve_all(add_range(&p, 0..N / 4, None).await, DEADLINE).await;
    assert!(before.iter().all(|(_, r)| r.is_ok()));
    let outage_started = Instant::now();
    sim.set_faults(
        STREAM,
        Faults {
            unreachable_until: Some(outage_started + outage),
            ..Faults::default()
        },
    )
    .unwrap();
    // Half early in the outage, the last quarter 4 s into it (short TTL: all early).
    let early_end = if ttl > outage { 3 * N / 4 } else { N };
    let (early, early_at) = add_range_timed(
        &p,
        N / 4..early_end,
        Some((1_000, Duration::from_millis(20))),
    )
    .await;
    let late = if early_end < N {
        tokio::time::sleep_until((outage_started + Duration::from_secs(4)).into()).await;
        add_range(&p, early_end..N, None).await
    } else {
        Vec::new()
    };
    let early = resolve_all(early, DEADLINE).await;
    let late = resolve_all(late, DEADLINE).await;
    sampler.finish().await;
    let mut outcomes = before;
    if ttl > outage {
        assert!(
            early.iter().all(|(_, r)| r.is_ok()),
            "TTL outlives the outage"
        );
    } else {
        // A record's TTL runs from its `add`. Under load `add` may wait (admission sees nothing
        // drain during the outage), so the exact set is the records whose TTL ended inside it.
        let outage_end = outage_started + outage;
        let doomed: Vec<&Outcome> = early
            .iter()
            .zip(&early_at)
            .filter(|(_, at)| **at + ttl < outage_end)
            .map(|(o, _)| o)
            .collect();
        assert!(
            doomed.len() >= N / 4,
            "the TTL of at least a quarter of the records ends inside the outage: {}",
            doomed.len()
        );
        for (r, res) in doomed {
            let e = res.as_ref().expect_err("TTL shorter than the outage");
            let RecordError::Expired { ttl: t, attempts } = e else {
                panic!("{r:?}: expected a TTL expiry, got {e:?}");
            };
            assert_eq!(*t, ttl);
            let text = e.to_string();
            assert!(
                text.contains("TTL")
                    && text.contains("expired")
                    && text.contains(&format!("after {} attempts", attempts.len())),
                "{text}"
            );
            if let Some(last) = attempts.last() {
                assert!(
                    text.contains(last.error_code.as_deref().unwrap_or("?")),
                    "{text}"
                );
            }
        }
        assert!(
            early
                .iter()
                .any(|(_, r)| r.as_ref().is_err_and(|e| !e.attempts().is_empty())),
            "some expired records were tried during the outage"
        );
    }
    outcomes.extend(early);
    outcomes.extend(late);
    let stats = finish(&p, &outcomes).await;
    let verdict = verify(&sim, STREAM, &outcomes);
    let counters = sim.counters(STREAM);
    assert!(counters.unreachable_dropped > 0, "the outage happened");
    eprintln!(
        "outage, aggregation {aggregation}, TTL {ttl:?}: {verdict:?} in {:?}",
        started.elapsed()
    );
    Report {
        verdict,
        stats,
        counters,
        outcomes,
        took: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_shorter_than_the_ttl_loses_nothing() {
    let (off, on) = both(|agg| outage_case(agg, Duration::from_secs(30))).await;
    for r in [&off, &on] {
        all_ok(r);
        assert!(r.stats.records_expired == 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_longer_than_the_ttl_expires_with_attempts() {
    let (off, on) = both(|agg| outage_case(agg, Duration::from_millis(2_500))).await;
    for r in [&off, &on] {
        // Every record added before the outage is stored; every record whose TTL ended inside
        // it expired (checked one by one in `outage_case`). Under load `add` may wait, and a
        // record added late enough to outlive the outage may be stored: each record is one
        // or the other, and the counters and the stream agree with the outcomes.
        let stored: Vec<usize> = ids_where(&r.outcomes, |res| res.is_ok());
        let expired: Vec<usize> = ids_where(&r.outcomes, |res| {
            matches!(res, Err(RecordError::Expired { .. }))
        });
        assert_eq!(stored.len() + expired.len(), N, "nothing else");
        assert_eq!(&stored[..N / 4], (0..N / 4).collect::<Vec<_>>().as_slice());
        assert!(expired.len() >= N / 4, "{}", expired.len());
        assert_eq!(
            r.stats.records_expired,
            expired.len() as u64,
            "{:?}",
            r.stats
        );
        assert_eq!(
            r.stats.records_failed,
            expired.len() as u64,
            "{:?}",
            r.stats
        );
        assert_eq!(r.verdict.failed, expired.len());
        // Nothing reached the stream during the outage: no expired record is stored.
        assert_eq!(r.verdict.stored_but_failed, 0, "{:?}", r.verdict);
        assert_eq!(
            r.verdict.stored_user_records,
            stored.len(),
            "{:?}",
            r.verdict
        );
    }
}

/// `shutdown()` while the buffer is full and requests are in flight (every request takes
/// `latency`; 2 shards with their limits on, so 20,000 records take seconds). With a deadline
/// shorter than the latency, requests are still in flight when it passes.
async fn shutdown_case(
    aggregation: bool,
    latency: Duration,
    shutdown_timeout: Duration,
) -> (Report, usize) {
    let started = Instant::now();
    let sim = sim_with(2, true).await;
    sim.set_faults(
        STREAM,
        Faults {
            latency,
            ..Faults::default()
        },
    )
    .unwrap();
    let max_records = 2_000;
    let p = build(
        &sim,
        builder(aggregation, true)
            .max_buffered_records(max_records)
            .shutdown_timeout(shutdown_timeout),
    )
    .await;
    let sampler = BoundSampler::start(
        &p,
        max_records as u64,
        MAX_BYTES as u64,
        Duration::from_millis(2),
    );
    let adder = {
        let p = p.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut refused = 0;
            for id in 0..N {
                let r = tagged_record(id, KEYS);
                match p.add(r.clone()).await {
                    Ok(pending) => accepted.push((r, pending)),
                    Err(AddError::ShutDown { record }) => {
                        assert_eq!(record, r, "the record comes back unchanged");
                        refused += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            (accepted, refused)
        })
    };
    // Full, with requests under way (each takes `latency` at the simulator).
    let full = wait_until(Duration::from_secs(10), || {
        p.stats().records_pending == max_records as u64 && sim.counters(STREAM).put_requests > 0
    })
    .await;
    assert!(full, "the buffer filled up: {:?}", p.stats());
    let shutdown_started = Instant::now();
    tokio::time::timeout(DEADLINE, p.shutdown())
        .await
        .expect("shutdown returns")
        .expect("shutdown");
    let shutdown_took = shutdown_started.elapsed();
    assert!(
        shutdown_took <= shutdown_timeout + Duration::from_secs(2),
        "{shutdown_took:?}"
    );
    let (accepted, refused) = adder.await.expect("adder");
    assert!(refused > 0, "adds after shutdown are refused");
    assert!(accepted.len() + refused == N);
    let outcomes = resolve_all(accepted, Duration::from_secs(5)).await;
    sampler.finish().await;
    let stats = p.stats();
    assert_eq!(stats.records_received, outcomes.len() as u64);
    assert_eq!((stats.records_pending, stats.bytes_pending), (0, 0));
    // Requests still in flight at the deadline reach the simulator later: let them land.
    tokio::time::sleep(latency + Duration::from_millis(500)).await;
    let verdict = verify(&sim, STREAM, &outcomes);
    eprintln!(
        "shutdown, aggregation {aggregation}, timeout {shutdown_timeout:?}: {verdict:?}, {refused} refused, shutdown took {shutdown_took:?}"
    );
    (
        Report {
            verdict,
            stats,
            counters: sim.counters(STREAM),
            outcomes,
            took: started.elapsed(),
        },
        refused,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_full_buffer_and_requests_in_flight_drains() {
    let ((off, _), (on, _)) = tokio::join!(
        shutdown_case(false, Duration::from_millis(150), Duration::from_secs(30)),
        shutdown_case(true, Duration::from_millis(150), Duration::from_secs(30))
    );
    for r in [&off, &on] {
        assert!(r.outcomes.iter().all(|(_, res)| res.is_ok()), "drained");
        assert_eq!(r.verdict.stored_user_records, r.outcomes.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_fails_the_rest_without_losing_track() {
    let ((off, _), (on, _)) = tokio::join!(
        shutdown_case(
            false,
            Duration::from_millis(600),
            Duration::from_millis(200)
        ),
        shutdown_case(true, Duration::from_millis(600), Duration::from_millis(200))
    );
    for r in [&off, &on] {
        let failed: Vec<_> = r
            .outcomes
            .iter()
            .filter_map(|(_, res)| res.as_ref().err())
            .collect();
        assert!(!failed.is_empty(), "the deadline cut the drain short");
        for e in failed {
            assert!(matches!(e, RecordError::ShutDown { .. }), "{e:?}");
            assert!(e.to_string().contains("shut down"), "{e}");
        }
        // Requests in flight at the deadline (600 ms each, deadline 200 ms) were applied
        // later: those records failed, are stored, and say that they may have been.
        assert!(r.verdict.stored_but_failed > 0, "{:?}", r.verdict);
        assert!(r.outcomes.iter().any(|(_, res)| res
            .as_ref()
            .is_err_and(|e| e.to_string().contains("may have been stored"))));
    }
}

/// Callers offering far more than the stream takes: `add().await` waits, `try_add` hands the
/// record back, `add_blocking` blocks; the buffer bound holds; every accepted record resolves
/// and is stored where it says. (RSS is measured by the soak example, not here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_backpressure_on_every_path() {
    let sim = sim_with(2, true).await;
    let max_records = 1_000;
    let max_bytes = 64 * 1024;
    let p = build(
        &sim,
        builder(false, true)
            .max_buffered_records(max_records)
            .max_buffered_bytes(max_bytes),
    )
    .await;
    let capacity = 2.0 * 1_000.0; // records/s: 2 shards, aggregation off
    let run_for = Duration::from_secs(4);
    let sampler = BoundSampler::start(
        &p,
        max_records as u64,
        max_bytes as u64,
        Duration::from_millis(2),
    );
    let next_id = Arc::new(AtomicUsize::new(0));
    let offered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let (p, next_id, offered, stop) =
            (p.clone(), next_id.clone(), offered.clone(), stop.clone());
        waiters.push(tokio::spawn(async move {
            let (mut accepted, mut longest) = (Vec::new(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let r = tagged_record(next_id.fetch_add(1, Ordering::Relaxed), KEYS);
                offered.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                accepted.push((r.clone(), p.add(r).await.expect("accepted")));
                longest += t.elapsed(); // total time spent waiting
            }
            (accepted, longest)
        }));
    }
    let trier = {
        let (p, next_id, offered, stop) =
            (p.clone(), next_id.clone(), offered.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut accepted, mut refused) = (Vec::new(), 0u64);
            let mut r = tagged_record(next_id.fetch_add(1, Ordering::Relaxed), KEYS);
            while !stop.load(Ordering::Relaxed) {
                offered.fetch_add(1, Ordering::Relaxed);
                match p.try_add(r.clone()) {
                    Ok(pending) => {
                        accepted.push((r, pending));
                        r = tagged_record(next_id.fetch_add(1, Ordering::Relaxed), KEYS);
                    }
                    Err(AddError::BufferFull {
                        record,
                        max_records: m,
                        ..
                    }) => {
                        assert_eq!(record, r, "the record comes back unchanged");
                        assert_eq!(m, max_records);
                        refused += 1;
                        if refused.is_multiple_of(64) {
                            tokio::task::yield_now().await;
                        }
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            (accepted, refused)
        })
    };
    let mut blockers = Vec::new();
    for _ in 0..2 {
        let (p, next_id, offered, stop) =
            (p.clone(), next_id.clone(), offered.clone(), stop.clone());
        blockers.push(std::thread::spawn(move || {
            let (mut accepted, mut longest) = (Vec::new(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let r = tagged_record(next_id.fetch_add(1, Ordering::Relaxed), KEYS);
                offered.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                accepted.push((r.clone(), p.add_blocking(r).expect("accepted")));
                longest += t.elapsed(); // total time spent waiting
            }
            (accepted, longest)
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut pending = Vec::new();
    let mut add_waited = Duration::MAX;
    for w in waiters {
        let (a, longest) = w.await.unwrap();
        pending.extend(a);
        add_waited = add_waited.min(longest); // the least-waiting caller
    }
    let (a, refused) = trier.await.unwrap();
    let try_accepted = a.len();
    pending.extend(a);
    let mut blocking_waited = Duration::MAX;
    for b in blockers {
        let (a, longest) = tokio::task::spawn_blocking(move || b.join().unwrap())
            .await
            .unwrap();
        pending.extend(a);
        blocking_waited = blocking_waited.min(longest);
    }
    let offered_rate = offered.load(Ordering::Relaxed) as f64 / elapsed;
    let accepted_rate = pending.len() as f64 / elapsed;
    let outcomes = resolve_all(pending, DEADLINE).await;
    let samples = sampler.finish().await;
    let stats = finish(&p, &outcomes).await;
    let verdict = verify(&sim, STREAM, &outcomes);
    eprintln!(
        "overload: offered {offered_rate:.0}/s, accepted {accepted_rate:.0}/s (capacity {capacity}/s); try_add refused {refused}, accepted {try_accepted}; least time a caller waited: add {add_waited:?}, add_blocking {blocking_waited:?}; max pending {}/{} bytes; {verdict:?}",
        samples.max_records, samples.max_bytes
    );
    assert!(
        offered_rate >= 10.0 * capacity,
        "offered {offered_rate:.0}/s"
    );
    assert!(
        accepted_rate <= 2.0 * capacity,
        "accepted {accepted_rate:.0}/s"
    );
    assert!(refused > 0, "try_add handed records back");
    assert!(
        add_waited >= run_for / 2,
        "every add().await caller spent most of the run waiting: {add_waited:?}"
    );
    assert!(
        blocking_waited >= run_for / 2,
        "every add_blocking caller spent most of the run blocked: {blocking_waited:?}"
    );
    assert!(
        samples.max_records == max_records as u64 || samples.max_bytes + 200 > max_bytes as u64,
        "the buffer was full: {samples:?}"
    );
    assert!(outcomes.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(verdict.stored_user_records, outcomes.len());
    assert_eq!(stats.records_put, outcomes.len() as u64);
}

/// An `add` cancelled while it waits for buffer room (dropped by a timeout or a `select!`)
/// must give back whatever room it took: otherwise each cancellation shrinks the buffer for
/// good and the producer finally refuses everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_add_gives_its_room_back() {
    let sim = sim_with(1, false).await;
    sim.set_faults(
        STREAM,
        Faults {
            latency: Duration::from_millis(300),
            ..Faults::default()
        },
    )
    .unwrap();
    let p = build(
        &sim,
        builder(false, false)
            .max_buffered_records(50)
            .max_buffered_bytes(10_000),
    )
    .await;
    // Fill the byte budget, leaving record room: the next add waits on bytes.
    let mut pending = Vec::new();
    for id in 0..4 {
        let r = UserRecord::new("k", format!("{id:09}|{}", "x".repeat(2_400)));
        pending.push((r.clone(), p.add(r).await.unwrap()));
    }
    for id in 4..104 {
        let r = UserRecord::new("k", format!("{id:09}|{}", "y".repeat(2_000)));
        let cancelled = tokio::time::timeout(Duration::from_millis(1), p.add(r.clone())).await;
        if let Ok(Ok(accepted)) = cancelled {
            pending.push((r, accepted));
        }
    }
    let accepted_before = pending.len();
    let mut outcomes = resolve_all(pending, DEADLINE).await;
    tokio::time::timeout(DEADLINE, p.flush())
        .await
        .unwrap()
        .unwrap();
    let stats = p.stats();
    assert_eq!(
        (stats.records_pending, stats.bytes_pending),
        (0, 0),
        "cancelled adds leaked buffer room"
    );
    // And the producer still takes records.
    let r = tagged_record(1_000_000, KEYS);
    let ok = tokio::time::timeout(Duration::from_secs(10), p.add(r.clone())).await;
    let put = ok.expect("add is not stuck").unwrap().await;
    outcomes.push((r, put));
    // Every accepted record is stored where its outcome says; no cancelled add reached the
    // stream (`verify` fails on stored data that was never accepted).
    for (r, res) in &outcomes {
        assert!(res.is_ok(), "{:?}: {res:?}", &r.data[..9]);
    }
    let verdict = verify(&sim, STREAM, &outcomes);
    assert_eq!(verdict.ok, accepted_before + 1);
    assert_eq!(verdict.stored_user_records, outcomes.len(), "{verdict:?}");
    assert!(accepted_before >= 4, "the four first records were accepted");
}
