//! Admission that matches the drain: a stream that drains slower than callers add makes `add`
//! wait (and `try_add` hand the record back) instead of letting records expire in the buffer.
//!
//! One shard with its limits on (1,000 records/s), plain records, the default TTL (30 s) and
//! the default buffer bound (200,000 records, which would take 200 s to drain): callers add as
//! fast as `add` lets them for longer than the TTL. Before admission control, most records
//! expired in the buffer; now none may, and every stored record is read back.

mod support;

use kinesis_producer::config::{
    DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_BUFFERED_RECORDS, DEFAULT_RECORD_TTL,
};
use kinesis_producer::{AddError, PendingRecord, Producer, UserRecord};
use kinesis_sim::{RateLimits, SimConfig, Simulator};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::invariants::{assert_bound_agrees, resolve_all, tagged_record, verify};

const STREAM: &str = "admission";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_on_one_shard_makes_add_wait_and_nothing_expires() {
    let sim = Simulator::start(SimConfig {
        limits: RateLimits::default(),
        ..SimConfig::default()
    })
    .await
    .expect("start the simulator");
    sim.create_stream(STREAM, 1).expect("create the stream");
    let config = support::reader::sdk_config(&sim.endpoint_url()).await;
    let p = Producer::builder()
        .stream_name(STREAM)
        .aggregation(false)
        .build(&config)
        .await
        .expect("build");
    let ttl = DEFAULT_RECORD_TTL;
    assert_eq!(ttl, Duration::from_secs(30), "the default TTL");

    // Far more than the shard takes: every caller is held back by `add` alone.
    let run_for = ttl + Duration::from_secs(8);
    let stop = Arc::new(AtomicBool::new(false));
    let mut adders = Vec::new();
    for caller in 0..4usize {
        let (p, stop) = (p.clone(), stop.clone());
        adders.push(tokio::spawn(async move {
            let mut added: Vec<(UserRecord, PendingRecord)> = Vec::new();
            let mut id = caller;
            // Ids below 1,000,000: the probes of `try_add` use the ones above.
            while !stop.load(Ordering::Relaxed) {
                let r = tagged_record(id, 997);
                added.push((r.clone(), p.add(r).await.expect("accepted")));
                id += 4;
            }
            added
        }));
    }
    let started = Instant::now();
    let mut cap_seen = None;
    let mut refused = 0;
    let mut probes = Vec::new();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = p.stats();
        if s.buffer_records_withheld > 0 {
            cap_seen.get_or_insert(s.buffer_records_withheld);
        }
        // `try_add` hands the record back while the cap is reached.
        let probe = tagged_record(1_000_000 + probes.len() + refused, 997);
        match p.try_add(probe.clone()) {
            Err(AddError::BufferFull {
                record,
                max_records,
                ..
            }) => {
                assert_eq!(record, probe, "the record comes back");
                assert!(max_records < DEFAULT_MAX_BUFFERED_RECORDS, "{max_records}");
                refused += 1;
            }
            Ok(pending) => probes.push((probe, pending)),
            Err(other) => panic!("{other}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut added = probes;
    for a in adders {
        added.extend(a.await.expect("adder"));
    }
    let outcomes = resolve_all(added, Duration::from_secs(120)).await;
    p.flush().await.expect("flush");
    let stats = p.stats();
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|(r, res)| res.as_ref().err().map(|e| (r.partition_key.clone(), e)))
        .take(3)
        .collect();
    assert!(failed.is_empty(), "records failed: {failed:?} ({stats:?})");
    assert_eq!(stats.records_expired, 0, "{stats:?}");
    let withheld = cap_seen.expect("the admission cap held room back from add");
    // One shard drains about 1,000 records/s: the cap is about half a TTL of that.
    assert!(
        withheld > DEFAULT_MAX_BUFFERED_RECORDS as u64 - 20_000,
        "withheld {withheld}"
    );
    assert!(refused > 0, "try_add never met the cap");
    // Callers were held to the drain: over the run, one shard stores about 1,000 a second.
    let secs = run_for.as_secs_f64();
    assert!(
        (outcomes.len() as f64) < 1_100.0 * secs + 16_000.0,
        "{} records accepted in {secs} s",
        outcomes.len()
    );
    let verdict = verify(&sim, STREAM, &outcomes);
    assert_eq!(verdict.ok, outcomes.len(), "{verdict:?}");
    assert_eq!(verdict.stored_user_records, outcomes.len(), "{verdict:?}");
    p.shutdown().await.expect("shutdown");
    assert_bound_agrees(
        &p.stats(),
        DEFAULT_MAX_BUFFERED_RECORDS as u64,
        DEFAULT_MAX_BUFFERED_BYTES as u64,
    );
}
