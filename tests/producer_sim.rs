//! The producer against kinesis-sim over real HTTP: the unmodified SDK, the simulator's
//! validation, limits and faults. Each test owns its simulator (port 0) and stream.

mod support;

use aws_config::SdkConfig;
use bytes::Bytes;
use kinesis_producer::{
    deaggregate_strict, HashKey, PendingRecord, Producer, ProducerBuilder, PutOutcome, RecordError,
    UserRecord,
};
use kinesis_sim::{Faults, SimConfig, Simulator, StoredRecord};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Upper bound of any wait in these tests: a hang fails instead of blocking the suite.
const DEADLINE: Duration = Duration::from_secs(20);

async fn start(stream: &str, shards: u32) -> Simulator {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream(stream, shards).expect("create stream");
    sim
}

async fn sdk_config(sim: &Simulator) -> SdkConfig {
    support::reader::sdk_config(&sim.endpoint_url()).await
}

fn builder(stream: &str) -> ProducerBuilder {
    Producer::builder()
        .stream_name(stream)
        .max_buffered_time(Duration::from_millis(20))
}

async fn build(sim: &Simulator, builder: ProducerBuilder) -> Producer {
    builder.build(&sdk_config(sim).await).await.expect("build")
}

fn record(i: usize, keys: usize) -> UserRecord {
    UserRecord::new(
        format!("key-{}", i % keys),
        format!("data-{i}-{}", "x".repeat(i % 50)),
    )
}

async fn add_all(p: &Producer, n: usize, keys: usize) -> Vec<(UserRecord, PendingRecord)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = record(i, keys);
        out.push((r.clone(), p.add(r).await.expect("accepted")));
    }
    out
}

async fn resolve(
    added: Vec<(UserRecord, PendingRecord)>,
) -> Vec<(UserRecord, Result<PutOutcome, RecordError>)> {
    let mut out = Vec::with_capacity(added.len());
    for (r, pending) in added {
        let result = tokio::time::timeout(DEADLINE, pending)
            .await
            .expect("resolved in time");
        out.push((r, result));
    }
    out
}

/// The hash key Kinesis routes a record by.
fn hash_of(partition_key: &str, explicit_hash_key: Option<&str>) -> u128 {
    match explicit_hash_key {
        Some(h) => h.parse().expect("decimal hash key"),
        None => HashKey::from_partition_key(partition_key).0,
    }
}

/// Attempt error code of a sub-record re-sent because its aggregate landed on a shard whose
/// range does not hold it (the only re-send after a success).
const STRANDED_CODE: &str = support::invariants::STRANDED_CODE;

/// Every outcome is Ok and names a stored Kinesis record (shard id + sequence number) that
/// holds the user record at its sub-sequence number, inside the hash range of that shard; no
/// two outcomes name the same place. The stream holds nothing else: every user record is stored
/// exactly once, plus one copy per stranded-sub-record re-send its attempts show. Returns the
/// number of such extra copies.
fn assert_stored(
    sim: &Simulator,
    stream: &str,
    results: &[(UserRecord, Result<PutOutcome, RecordError>)],
) -> usize {
    let stored: Vec<StoredRecord> = sim.records(stream);
    let ranges: HashMap<String, (u128, u128)> = sim
        .shards(stream)
        .into_iter()
        .map(|s| (s.shard_id, (s.starting_hash_key, s.ending_hash_key)))
        .collect();
    let mut by_place = HashMap::new();
    // Stored copies of each user record, by its data (unique per record in these tests).
    let mut copies: HashMap<Bytes, usize> = HashMap::new();
    for s in &stored {
        let subs = deaggregate_strict(
            &s.partition_key,
            s.explicit_hash_key.as_deref(),
            Bytes::from(s.data.clone()),
        )
        .expect("stored records decode");
        for sub in &subs {
            *copies.entry(sub.data.clone()).or_default() += 1;
        }
        let previous = by_place.insert((s.shard_id.clone(), s.sequence_number.clone()), subs);
        assert!(
            previous.is_none(),
            "sequence number {} twice",
            s.sequence_number
        );
    }
    let mut seen = HashSet::new();
    let mut stranded_copies = 0;
    for (r, result) in results {
        let out = result
            .as_ref()
            .unwrap_or_else(|e| panic!("{r:?} failed: {e}"));
        let place = (out.shard_id.to_string(), out.sequence_number.to_string());
        let subs = by_place
            .get(&place)
            .unwrap_or_else(|| panic!("outcome {place:?} of {r:?} not stored"));
        let index = out.sub_sequence_number.unwrap_or(0);
        let sub = &subs[index as usize];
        assert_eq!(sub.partition_key, r.partition_key);
        assert_eq!(sub.data, r.data);
        assert_eq!(sub.explicit_hash_key, r.explicit_hash_key);
        let (start, end) = ranges[&place.0];
        let h = hash_of(&r.partition_key, r.explicit_hash_key.as_deref());
        assert!(
            (start..=end).contains(&h),
            "{r:?} stored in {} outside its range",
            place.0
        );
        assert!(seen.insert((place, index)), "two records at one place");
        assert!(out.attempts.last().is_some_and(|a| a.succeeded()));
        let stranded = out
            .attempts
            .iter()
            .filter(|a| a.error_code.as_deref() == Some(STRANDED_CODE))
            .count();
        let found = copies.remove(&r.data).unwrap_or(0);
        assert_eq!(
            found,
            1 + stranded,
            "{r:?}: stored copies, one plus one per stranded re-send"
        );
        stranded_copies += stranded;
    }
    let unknown: Vec<_> = copies.keys().take(3).collect();
    assert!(
        copies.is_empty(),
        "the stream holds data that was never added: {unknown:?}"
    );
    stranded_copies
}

async fn shutdown(p: &Producer) {
    tokio::time::timeout(DEADLINE, p.shutdown())
        .await
        .expect("shutdown in time")
        .expect("shutdown");
}

async fn every_record_stored_once(aggregation: bool) {
    let stream = if aggregation { "agg-on" } else { "agg-off" };
    let sim = start(stream, 4).await;
    let p = build(&sim, builder(stream).aggregation(aggregation)).await;
    let added = add_all(&p, 2_000, 97).await;
    let results = resolve(added).await;
    assert_stored(&sim, stream, &results);
    shutdown(&p).await;
    let stats = p.stats();
    assert_eq!(stats.records_put, 2_000);
    assert_eq!(stats.records_failed, 0);
    assert_eq!(stats.records_pending, 0);
    let stored = sim.records(stream).len() as u64;
    assert_eq!(stats.kinesis_records_put, stored);
    if aggregation {
        assert!(stored < 2_000, "aggregation packed records: {stored}");
        assert!(results.iter().any(|(_, r)| r
            .as_ref()
            .is_ok_and(|o| o.sub_sequence_number.is_some_and(|s| s > 0))));
    } else {
        assert_eq!(stored, 2_000);
        assert!(results
            .iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|o| o.sub_sequence_number.is_none())));
    }
    let per_shard: u64 = stats.shards.iter().map(|s| s.kinesis_records_put).sum();
    assert_eq!(per_shard, stored, "per-shard stats add up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_stored_once_aggregation_off() {
    every_record_stored_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_stored_once_aggregation_on() {
    every_record_stored_once(true).await;
}

/// On a stream of thousands of shards the engine takes records a few ahead of the one it
/// queues (to prefetch their shards' state): every record is still stored once, in its
/// shard's range, and a flush taken behind records still answers only once they are resolved.
async fn thousands_of_shards(aggregation: bool) {
    use futures::FutureExt as _;
    let stream = if aggregation {
        "wide-agg"
    } else {
        "wide-plain"
    };
    let sim = start(stream, 4_096).await;
    let p = build(&sim, builder(stream).aggregation(aggregation)).await;
    let added = add_all(&p, 6_000, 6_000).await;
    tokio::time::timeout(DEADLINE, p.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    let results: Vec<_> = added
        .into_iter()
        .map(|(r, pending)| {
            // (Unconstrained: Tokio's cooperative budget would report a ready future pending
            // after a hundred or so polls in one task.)
            let result = tokio::task::unconstrained(pending).now_or_never();
            assert!(result.is_some(), "{r:?} unresolved when the flush answered");
            (r, result.expect("resolved"))
        })
        .collect();
    assert_stored(&sim, stream, &results);
    let shards_used: HashSet<_> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|o| o.shard_id.to_string()))
        .collect();
    assert!(shards_used.len() > 2_000, "{} shards", shards_used.len());
    shutdown(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_shards_aggregation_off() {
    thousands_of_shards(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_shards_aggregation_on() {
    thousands_of_shards(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_hash_keys_route_and_round_trip() {
    let stream = "ehk";
    let sim = start(stream, 4).await;
    let p = build(&sim, builder(stream)).await;
    let quarter = u128::MAX / 4;
    let mut added = Vec::new();
    for i in 0..400u128 {
        let h = (i % 4) * quarter + i;
        let r = UserRecord::new("same-key", format!("d{i}")).with_explicit_hash_key(h.to_string());
        added.push((r.clone(), p.add(r).await.unwrap()));
    }
    let results = resolve(added).await;
    assert_stored(&sim, stream, &results);
    let shards: HashSet<_> = results
        .iter()
        .map(|(_, r)| r.as_ref().unwrap().shard_id.clone())
        .collect();
    assert_eq!(shards.len(), 4, "one partition key spread by hash keys");
    shutdown(&p).await;
}

/// The producer's own limiter keeps a small stream within its limits while offered far more
/// than it takes: everything is stored, and whatever the service throttled the producer counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offered_over_capacity_everything_is_stored() {
    let stream = "small";
    let sim = start(stream, 2).await;
    let p = build(&sim, builder(stream).aggregation(false)).await;
    let started = Instant::now();
    let added = add_all(&p, 3_000, 500).await;
    let results = resolve(added).await;
    let took = started.elapsed();
    assert_stored(&sim, stream, &results);
    shutdown(&p).await;
    let stats = p.stats();
    let counters = sim.counters(stream);
    assert_eq!(stats.throttles, counters.throttled_records());
    assert_eq!(counters.accepted_records(), 3_000);
    // 2 shards at 1,000 records/s, buckets starting full (one second of rate): at least ~0.5 s.
    assert!(took >= Duration::from_millis(400), "{took:?}");
}

/// A competing writer eats into every shard's budget: the service throttles, the producer
/// retries, backs its rate off and finally stores everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_leads_to_retries_and_success() {
    let stream = "contended";
    let sim = start(stream, 1).await;
    sim.set_faults(
        stream,
        Faults {
            competing_writer_share: 0.6,
            ..Faults::default()
        },
    )
    .unwrap();
    let p = build(&sim, builder(stream).aggregation(false)).await;
    let added = add_all(&p, 1_200, 100).await;
    let results = resolve(added).await;
    assert_stored(&sim, stream, &results);
    shutdown(&p).await;
    let stats = p.stats();
    assert!(stats.throttles > 0, "{stats:?}");
    assert!(stats.retries > 0, "{stats:?}");
    assert_eq!(stats.throttles, sim.counters(stream).throttled_records());
    assert_eq!(stats.shards.len(), 1);
    assert!(stats.shards[0].throttles > 0);
    assert!(
        stats.shards[0].rate_factor < 1.0,
        "rate backed off: {stats:?}"
    );
    let retried = results
        .iter()
        .filter(|(_, r)| r.as_ref().unwrap().attempts.len() > 1)
        .count();
    assert!(retried > 0);
    let throttled_attempt = results
        .iter()
        .flat_map(|(_, r)| &r.as_ref().unwrap().attempts)
        .find(|a| a.error_code.as_deref() == Some("ProvisionedThroughputExceededException"));
    let message = throttled_attempt
        .expect("a throttled attempt")
        .error_message
        .clone();
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("shardId-000000000000")),
        "AWS-style message naming the shard: {message:?}"
    );
}

/// Per-record InternalFailure and whole-request HTTP 500/503 are retried until success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_are_retried() {
    for aggregation in [false, true] {
        let stream = if aggregation { "faulty-agg" } else { "faulty" };
        let sim = start(stream, 4).await;
        // Faults start after `build`: its DescribeStreamSummary and ListShards calls are not
        // retried.
        // Small aggregates and requests: many requests, so faults surely hit some.
        let b = builder(stream)
            .aggregation(aggregation)
            .aggregation_max_size(1024)
            .max_records_per_request(50);
        let p = build(&sim, b).await;
        sim.set_faults(
            stream,
            Faults {
                internal_failure_rate: 0.2,
                http_500_rate: 0.15,
                http_503_rate: 0.15,
                latency: Duration::from_millis(2),
                latency_jitter: Duration::from_millis(5),
                ..Faults::default()
            },
        )
        .unwrap();
        let added = add_all(&p, 1_500, 200).await;
        let results = resolve(added).await;
        assert_stored(&sim, stream, &results);
        shutdown(&p).await;
        let stats = p.stats();
        assert_eq!(stats.records_put, 1_500);
        assert!(stats.retries > 0, "{stats:?}");
        assert!(sim.counters(stream).failed_records() > 0);
        let codes: HashSet<String> = results
            .iter()
            .flat_map(|(_, r)| &r.as_ref().unwrap().attempts)
            .filter_map(|a| a.error_code.as_deref().map(str::to_owned))
            .collect();
        assert!(codes.contains("InternalFailure"), "{codes:?}");
    }
}

/// The stream disappears mid-run: every record added afterwards fails at once with
/// ResourceNotFoundException (no retries until the TTL), and the producer still shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_stream_fails_fast() {
    let stream = "doomed";
    let sim = start(stream, 2).await;
    let p = build(&sim, builder(stream).record_ttl(Duration::from_secs(30))).await;
    let before = resolve(add_all(&p, 200, 50).await).await;
    assert_stored(&sim, stream, &before);
    sim.delete_stream(stream).unwrap();
    let started = Instant::now();
    let after = resolve(add_all(&p, 300, 50).await).await;
    let took = started.elapsed();
    for (r, result) in &after {
        let e = result.as_ref().expect_err("stream is gone");
        assert_eq!(e.code(), Some("ResourceNotFoundException"), "{r:?}: {e}");
        assert!(matches!(e, RecordError::Rejected { .. }), "{e:?}");
        assert!(e.to_string().contains("ResourceNotFoundException"), "{e}");
    }
    assert!(
        took < Duration::from_secs(5),
        "failed fast, not at the TTL: {took:?}"
    );
    shutdown(&p).await;
    let stats = p.stats();
    assert_eq!(stats.records_put, 200);
    assert_eq!(stats.records_failed, 300);
    assert_eq!(stats.records_expired, 0);
    assert_eq!(stats.records_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_name_with_slashes() {
    let stream = "team/orders/v1";
    let sim = start(stream, 3).await;
    let p = build(&sim, builder(stream)).await;
    let results = resolve(add_all(&p, 300, 30).await).await;
    assert_stored(&sim, stream, &results);
    shutdown(&p).await;
    assert_eq!(p.stats().records_put, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_stream_fails_build() {
    let sim = start("exists", 1).await;
    let err = builder("does-not-exist")
        .build(&sdk_config(&sim).await)
        .await
        .expect_err("no such stream");
    assert!(
        matches!(err, kinesis_producer::BuildError::StreamNotFound { .. }),
        "{err:?}"
    );
}

/// Resharding (2 → 3 shards, so children straddle parents) while aggregates are in flight: no
/// record is lost, every outcome points inside its shard's range, and the map was refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_mid_run_loses_nothing() {
    let stream = "resharded";
    let sim = start(stream, 2).await;
    let p = build(
        &sim,
        builder(stream).max_buffered_time(Duration::from_millis(50)),
    )
    .await;
    let mut added = Vec::new();
    for i in 0..3_000 {
        if i == 1_500 {
            sim.reshard(stream, 3).unwrap();
        }
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = record(i, 1_000);
        added.push((r.clone(), p.add(r).await.unwrap()));
    }
    let results = resolve(added).await;
    // Sub-records stranded in an aggregate outside their shard's range are re-sent: the stream
    // holds exactly one (KCL-invisible) extra copy per re-send, and nothing else.
    let stranded_copies = assert_stored(&sim, stream, &results);
    shutdown(&p).await;
    let stats = p.stats();
    assert_eq!(stats.records_put, 3_000);
    assert_eq!(stats.stranded_resent, stranded_copies as u64, "{stats:?}");
    assert!(stats.shard_map_refreshes >= 1, "{stats:?}");
    let open: Vec<_> = sim.shards(stream).into_iter().filter(|s| s.open).collect();
    assert_eq!(open.len(), 3);
    let late: HashSet<_> = results[2_000..]
        .iter()
        .map(|(_, r)| r.as_ref().unwrap().shard_id.to_string())
        .collect();
    assert!(
        late.iter().all(|s| open.iter().any(|o| &o.shard_id == s)),
        "records added well after the reshard land on the new shards: {late:?}"
    );
}

/// The stream's record limit is lowered under a running producer (`UpdateMaxRecordSize`): a
/// record over the new limit makes the service refuse its whole request. Only that record
/// fails, with the service's message; the records that shared its request are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_a_lowered_limit_fails_alone() {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream_with(
        "lowered",
        kinesis_sim::StreamOptions {
            shards: 1,
            max_record_size_kib: Some(10 * 1024),
            ..Default::default()
        },
    )
    .expect("create");
    // No rate limit and a long linger, so that the big record shares a request with others.
    let p = build(
        &sim,
        builder("lowered")
            .aggregation(false)
            .rate_limiting(false)
            .max_buffered_time(Duration::from_millis(500)),
    )
    .await;
    assert!(
        p.max_record_size() > 2 << 20,
        "the producer read the 10 MiB limit"
    );
    sim.set_max_record_size_kib("lowered", 1024)
        .expect("lower the limit");
    let small: Vec<UserRecord> = (0..5).map(|i| record(i, 5)).collect();
    let big = UserRecord::new("big", vec![7u8; 2 << 20]);
    let mut pending = Vec::new();
    for r in small
        .iter()
        .take(2)
        .chain([&big])
        .chain(small.iter().skip(2))
    {
        pending.push((r.clone(), p.add(r.clone()).await.expect("accepted")));
    }
    let mut stored = Vec::new();
    let mut refused_with_big = 0;
    for (r, f) in pending {
        match tokio::time::timeout(DEADLINE, f).await.expect("resolves") {
            Ok(out) => {
                let note = out.attempts[0].error_message.as_deref().unwrap_or("");
                if note.starts_with("refused with its request because of another record") {
                    refused_with_big += 1;
                }
                stored.push(r)
            }
            Err(e) => {
                assert_eq!(r.partition_key, "big", "only the big record fails: {e}");
                assert_eq!(e.code(), Some("ValidationException"), "{e}");
                assert!(e.to_string().contains("1048576"), "{e}");
            }
        }
    }
    assert_eq!(stored, small, "every small record stored");
    assert!(
        refused_with_big > 0,
        "no small record shared the big one's request: the case was not exercised"
    );
    let on_stream: Vec<Bytes> = sim
        .records("lowered")
        .into_iter()
        .map(|s| Bytes::from(s.data))
        .collect();
    assert_eq!(on_stream.len(), 5);
    for r in &small {
        assert!(on_stream.contains(&r.data), "read back");
    }
    p.shutdown().await.expect("shutdown");
}

/// Large records end to end on a stream that allows them: with `max_request_bytes` unset, the
/// producer follows the service (10 MiB requests where the stream's records may exceed 1 MiB),
/// and records of 0.5 to 9.9 MiB are stored and read back intact. A record over the limit is
/// refused at `add` with the limit and where it comes from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_up_to_the_streams_10_mib_limit_are_stored_whole() {
    let sim = Simulator::start(SimConfig {
        limits: kinesis_sim::RateLimits::unlimited(),
        ..SimConfig::default()
    })
    .await
    .expect("start");
    sim.create_stream_with(
        "large",
        kinesis_sim::StreamOptions {
            shards: 2,
            max_record_size_kib: Some(10 * 1024),
            ..Default::default()
        },
    )
    .expect("create");
    let p = build(&sim, builder("large").rate_limiting(false)).await;
    assert_eq!(p.max_record_size(), 10 << 20);
    let mib = 1 << 20;
    let sizes = [mib / 2, 3 * mib, 49 * mib / 10, 7 * mib, 99 * mib / 10];
    let records: Vec<UserRecord> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| UserRecord::new(format!("line-{i}"), vec![i as u8 + 1; n - 6]))
        .collect();
    let mut pending = Vec::new();
    for r in &records {
        pending.push(p.add(r.clone()).await.expect("accepted"));
    }
    for f in pending {
        tokio::time::timeout(DEADLINE, f)
            .await
            .expect("resolves")
            .expect("stored");
    }
    let stored: HashMap<String, Bytes> = sim
        .records("large")
        .into_iter()
        .map(|s| (s.partition_key, Bytes::from(s.data)))
        .collect();
    assert_eq!(stored.len(), 5);
    for r in &records {
        assert_eq!(
            stored[r.partition_key.as_str()],
            r.data,
            "{} read back intact",
            r.partition_key
        );
    }
    let over = UserRecord::new("k", vec![0u8; 10 << 20]);
    let err = p.try_add(over).expect_err("one byte over").to_string();
    assert!(
        err.contains("10485761")
            && err.contains("10485760")
            && err.contains("MaxRecordSizeInKiB of 10240"),
        "{err}"
    );
    p.shutdown().await.expect("shutdown");
}
