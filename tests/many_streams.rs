//! One producer, many streams: records name their stream (`UserRecord::to`); one buffer bound,
//! one in-flight limit and one client serve them all, each stream with its own shard map,
//! limiters, aggregates and settings. Against kinesis-sim (read back) and the scripted fake.

mod support;

use bytes::Bytes;
use kinesis_producer::{
    deaggregate_strict, PendingRecord, Producer, PutOutcome, RecordError, UserRecord,
};
use kinesis_sim::{SimConfig, Simulator};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use support::fake::FakeKinesis;

/// Upper bound of any wait in these tests: a hang fails instead of blocking the suite.
const DEADLINE: Duration = Duration::from_secs(20);

async fn resolve(
    pending: Vec<(Bytes, PendingRecord)>,
) -> Vec<(Bytes, Result<PutOutcome, RecordError>)> {
    let mut out = Vec::with_capacity(pending.len());
    for (data, p) in pending {
        let r = tokio::time::timeout(DEADLINE, p)
            .await
            .expect("resolved in time");
        out.push((data, r));
    }
    out
}

/// The user records a stream of the simulator holds (aggregates opened), by data, with the
/// outer partition key and shard of each; asserts each is stored once.
fn stored(sim: &Simulator, stream: &str) -> HashMap<Bytes, String> {
    let mut out = HashMap::new();
    for s in sim.records(stream) {
        let subs = deaggregate_strict(
            &s.partition_key,
            s.explicit_hash_key.as_deref(),
            Bytes::from(s.data.clone()),
        )
        .expect("stored records decode");
        for sub in subs {
            let previous = out.insert(sub.data.clone(), s.shard_id.clone());
            assert!(
                previous.is_none(),
                "{:?} stored twice in {stream}",
                sub.data
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_and_a_missing_one_through_one_producer() {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream("alpha", 4).expect("create");
    sim.create_stream("beta", 2).expect("create");
    let sdk = support::reader::sdk_config(&sim.endpoint_url()).await;
    let (letters_tx, mut letters) = tokio::sync::mpsc::channel(1024);
    let p = Producer::builder()
        .stream_name("alpha")
        .max_buffered_time(Duration::from_millis(20))
        .dead_letters(letters_tx)
        .build(&sdk)
        .await
        .expect("build");
    let beta: std::sync::Arc<str> = "beta".into();
    let mut pending: HashMap<&str, Vec<(Bytes, PendingRecord)>> = HashMap::new();
    for i in 0..600 {
        // Interleaved, with keys shared across streams: aggregates must still not mix them.
        let (stream, record) = match i % 3 {
            0 => (
                "alpha",
                UserRecord::new(format!("k{}", i % 20), format!("a-{i}")),
            ),
            1 => (
                "beta",
                UserRecord::new(format!("k{}", i % 20), format!("b-{i}")).to(beta.clone()),
            ),
            _ => (
                "nope",
                UserRecord::new(format!("k{}", i % 20), format!("n-{i}")).to("nope"),
            ),
        };
        let data = record.data.clone();
        let added = p.add(record).await.expect("accepted");
        pending.entry(stream).or_default().push((data, added));
    }
    // A flush waits for every stream's records, the missing stream's failures included.
    tokio::time::timeout(DEADLINE, p.flush())
        .await
        .expect("flushed in time")
        .unwrap();
    let flushed = p.stats();
    assert_eq!(
        (
            flushed.records_put,
            flushed.records_failed,
            flushed.records_pending
        ),
        (400, 200, 0)
    );
    let mut results = HashMap::new();
    for (stream, list) in pending {
        results.insert(stream, resolve(list).await);
    }
    for stream in ["alpha", "beta"] {
        let held = stored(&sim, stream);
        let shards: Vec<String> = sim.shards(stream).into_iter().map(|s| s.shard_id).collect();
        let ours = &results[stream];
        assert_eq!(ours.len(), 200);
        assert_eq!(held.len(), 200, "{stream} holds exactly its own records");
        for (data, result) in ours {
            let out = result.as_ref().unwrap_or_else(|e| panic!("{stream}: {e}"));
            assert_eq!(
                held.get(data).map(String::as_str),
                Some(&*out.shard_id),
                "{stream}: stored where the outcome says"
            );
            assert!(shards.iter().any(|s| **s == *out.shard_id));
        }
    }
    for (data, result) in &results["nope"] {
        match result {
            Err(RecordError::Rejected { code, .. }) => {
                assert_eq!(&**code, "ResourceNotFoundException", "{data:?}")
            }
            other => panic!("a record for a missing stream: {other:?}"),
        }
    }
    // Every failed record reaches the dead-letter channel once, naming its stream.
    let mut dead = Vec::new();
    while let Ok(letter) = letters.try_recv() {
        assert_eq!(letter.stream.as_str(), "nope");
        dead.push(letter.record.data);
    }
    dead.sort();
    let mut expected: Vec<Bytes> = results["nope"].iter().map(|(d, _)| d.clone()).collect();
    expected.sort();
    assert_eq!(dead, expected);

    let beta_stats = p.stream_stats("beta").expect("beta is served");
    assert_eq!(
        (beta_stats.records_received, beta_stats.records_put),
        (200, 200)
    );
    let nope = p.stream_stats("nope").expect("nope is known");
    assert_eq!((nope.records_received, nope.records_failed), (200, 200));
    let total = p.stats();
    assert_eq!(
        (
            total.records_received,
            total.records_put,
            total.records_failed
        ),
        (600, 400, 200)
    );
    assert_eq!(&*p.streams()[0], "alpha", "the producer's own stream first");
    assert_eq!(p.streams().len(), 3);
    p.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_released_and_read_again_on_its_next_record() {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream("main", 1).expect("create");
    sim.create_stream("side", 2).expect("create");
    let sdk = support::reader::sdk_config(&sim.endpoint_url()).await;
    let p = Producer::builder()
        .stream_name("main")
        .max_buffered_time(Duration::from_millis(10))
        .stream_idle_timeout(Duration::from_millis(200))
        .build(&sdk)
        .await
        .expect("build");
    // One `Arc` for both records: the driver's cache of recent names must forget a released
    // stream's slot.
    let side: std::sync::Arc<str> = "side".into();
    let first = p
        .add(UserRecord::new("k", "one").to(side.clone()))
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.streams().len(), 2);
    let released = tokio::time::timeout(DEADLINE, async {
        while p.streams().len() > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "the idle stream is released");
    assert!(p.stream_stats("side").is_none());
    assert_eq!(p.stats().records_put, 1, "its counters stay in the totals");
    // Its next record reads the stream again.
    let second = p.add(UserRecord::new("k", "two").to(side)).await.unwrap();
    tokio::time::timeout(DEADLINE, second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.stats().records_put, 2);
    assert_eq!(stored(&sim, "side").len(), 2);
    // The producer's own stream is never released.
    assert_eq!(&*p.streams()[0], "main");
    p.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_holds_for_all_streams_together() {
    let fake = FakeKinesis::new(4);
    fake.set_latency(Duration::from_millis(50));
    let p = Producer::builder()
        .stream_name("one")
        .aggregation(false)
        .rate_limiting(false)
        .adaptive_concurrency(false)
        .max_in_flight(2)
        .max_records_per_request(5)
        .max_buffered_time(Duration::from_millis(5))
        .kinesis(fake.seam())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..300 {
        let r = UserRecord::new(format!("k{i}"), format!("{i}"));
        let r = match i % 3 {
            0 => r,
            1 => r.to("two"),
            _ => r.to("three"),
        };
        pending.push((r.data.clone(), p.add(r).await.unwrap()));
    }
    for (_, r) in resolve(pending).await {
        r.expect("stored");
    }
    assert_eq!(
        fake.max_in_flight_seen.load(Relaxed),
        2,
        "three streams, two requests in flight at most (and the limit used)"
    );
    assert_eq!(fake.stored().len(), 300);
    p.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_its_stream_fails_with_the_streams_limit() {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream("main", 1).expect("create");
    sim.create_stream("small", 1).expect("create");
    let sdk = support::reader::sdk_config(&sim.endpoint_url()).await;
    let p = Producer::builder()
        .stream_name("main")
        .build(&sdk)
        .await
        .expect("build");
    // Over the API's 1 MiB default: `add` cannot know the stream's limit yet and takes it; the
    // stream's engine refuses it with the limit it read.
    let big = UserRecord::new("k", vec![0u8; (1 << 20) + 1]).to("small");
    let pending = p
        .add(big)
        .await
        .expect("accepted before the stream is read");
    match tokio::time::timeout(DEADLINE, pending).await.unwrap() {
        Err(RecordError::Invalid { error, .. }) => {
            let text = error.to_string();
            assert!(text.contains("1048576"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // Unkeyed records go only to AUTO streams.
    let unkeyed = p.add(UserRecord::unkeyed("x").to("small")).await.unwrap();
    assert!(matches!(
        tokio::time::timeout(DEADLINE, unkeyed).await.unwrap(),
        Err(RecordError::Invalid { .. })
    ));
    p.shutdown().await.unwrap();
}
