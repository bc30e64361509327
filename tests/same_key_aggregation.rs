//! Same-key aggregation (`AggregationScope::PartitionKey`) against kinesis-sim over HTTP: every
//! stored aggregate holds records of its outer partition key only (and of its outer explicit
//! hash key, when it has one), and every record is stored exactly once, where its future says
//! (`support::invariants::verify`). Each test owns its simulator (port 0) and stream.

mod support;

use bytes::Bytes;
use kinesis_producer::aggregation::MAGIC;
use kinesis_producer::{deaggregate_strict, AggregationScope, Ordering, Producer};
use kinesis_sim::{SimConfig, Simulator};
use std::collections::HashMap;
use std::time::Duration;
use support::invariants::{hash_of, record_id, resolve_all, tagged_record, verify};

/// What the stream holds, checked: every aggregate's sub-records share its outer partition key
/// and hash key, and the outer explicit hash key is there only if the sub-records carry one.
/// Returns (Kinesis records, aggregates, user records in aggregates).
fn check_same_key(sim: &Simulator, stream: &str) -> (usize, usize, usize) {
    let (mut kinesis, mut aggregates, mut in_aggregates) = (0, 0, 0);
    for s in sim.records(stream) {
        kinesis += 1;
        if !s.data.starts_with(&MAGIC) {
            continue;
        }
        let subs = deaggregate_strict(
            &s.partition_key,
            s.explicit_hash_key.as_deref(),
            Bytes::from(s.data.clone()),
        )
        .expect("decodes");
        aggregates += 1;
        in_aggregates += subs.len();
        let outer = hash_of(&s.partition_key, s.explicit_hash_key.as_deref());
        for sub in &subs {
            assert_eq!(
                sub.partition_key,
                s.partition_key,
                "aggregate {} holds record {:?} of another key",
                s.sequence_number,
                record_id(&sub.data)
            );
            assert_eq!(
                hash_of(&sub.partition_key, sub.explicit_hash_key.as_deref()),
                outer,
                "aggregate {}: a sub-record routed elsewhere than the outer record",
                s.sequence_number
            );
        }
        assert_eq!(
            s.explicit_hash_key.is_some(),
            subs[0].explicit_hash_key.is_some(),
            "aggregate {}: outer explicit hash key only when the records carry one",
            s.sequence_number
        );
    }
    (kinesis, aggregates, in_aggregates)
}

async fn producer(sim: &Simulator, stream: &str, ordering: Ordering) -> Producer {
    Producer::builder()
        .stream_name(stream)
        .aggregation_scope(AggregationScope::PartitionKey)
        .ordering(ordering)
        .max_buffered_time(Duration::from_millis(50))
        .record_ttl(Duration::from_secs(120))
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_aggregates_hold_one_key_and_every_record_is_stored_once() {
    const STREAM: &str = "same-key";
    const N: usize = 20_000;
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream(STREAM, 4).expect("create");
    let p = producer(&sim, STREAM, Ordering::None).await;
    // 40 keys interleaved; every 11th record carries an explicit hash key of its own.
    let mut pending = Vec::with_capacity(N);
    for id in 0..N {
        let r = tagged_record(id, 40);
        pending.push((r.clone(), p.add(r).await.expect("accepted")));
    }
    let outcomes = resolve_all(pending, Duration::from_secs(120)).await;
    let v = verify(&sim, STREAM, &outcomes);
    assert_eq!(v.ok, N, "every record stored: {v:?}");
    assert_eq!(v.stored_user_records, N, "each exactly once: {v:?}");
    let (kinesis, aggregates, in_aggregates) = check_same_key(&sim, STREAM);
    assert_eq!(kinesis, v.kinesis_records);
    assert!(
        aggregates > 0 && in_aggregates >= N / 2 && kinesis <= N / 4,
        "records of a key aggregated: {kinesis} Kinesis records, {aggregates} aggregates \
         holding {in_aggregates} of {N} records"
    );
    p.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_aggregation_keeps_per_key_order_under_per_shard_ordering() {
    const STREAM: &str = "same-key-ordered";
    const N: usize = 6_000;
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream(STREAM, 2).expect("create");
    let p = producer(&sim, STREAM, Ordering::PerShard).await;
    let mut pending = Vec::with_capacity(N);
    for id in 0..N {
        let r = tagged_record(id, 12);
        pending.push((r.clone(), p.add(r).await.expect("accepted")));
    }
    let outcomes = resolve_all(pending, Duration::from_secs(120)).await;
    let v = verify(&sim, STREAM, &outcomes);
    assert_eq!((v.ok, v.stored_user_records), (N, N), "{v:?}");
    check_same_key(&sim, STREAM);
    // No reshard: each shard read by sequence number, sub-records in order.
    let mut records = sim.records(STREAM);
    records.sort_by(|a, b| {
        a.shard_id
            .cmp(&b.shard_id)
            .then_with(|| support::reader::sequence_cmp(&a.sequence_number, &b.sequence_number))
    });
    let mut last: HashMap<u128, usize> = HashMap::new();
    for r in records {
        let subs = deaggregate_strict(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            Bytes::from(r.data.clone()),
        )
        .expect("decodes");
        for s in subs {
            let key = hash_of(&s.partition_key, s.explicit_hash_key.as_deref());
            let id = record_id(&s.data).expect("tagged");
            if let Some(&prev) = last.get(&key) {
                assert!(id > prev, "hash key {key}: record {id} stored after {prev}");
            }
            last.insert(key, id);
        }
    }
    p.shutdown().await.expect("shutdown");
}
