//! `Ordering::PerShard` across resharding, under load, against kinesis-sim over HTTP: per-key
//! order must hold as a KCL consumer reads the stream (a parent shard to its end before its
//! children; a sub-record outside its holding shard's range dropped).

mod support;

use bytes::Bytes;
use kinesis_producer::{deaggregate_strict, Ordering, Producer};
use kinesis_sim::{SimConfig, Simulator};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::invariants::{hash_of, record_id, resolve_all, tagged_record, verify};

const KEYS: usize = 200;

/// Every user record in the order a KCL consumer reads them: shards parents first (by depth in
/// the lineage), each shard by sequence number, sub-records in order, out-of-range ones dropped;
/// each as (shard, hash key, id). Order is promised per hash key: records of one partition key
/// with different explicit hash keys go to different shards.
fn kcl_order(sim: &Simulator, stream: &str) -> Vec<(String, u128, usize)> {
    let shards = sim.shards(stream);
    let mut depth: HashMap<String, usize> = HashMap::new();
    // Parents always have lower indices than their children in the sim.
    for s in &shards {
        let d = [&s.parent_shard_id, &s.adjacent_parent_shard_id]
            .into_iter()
            .flatten()
            .map(|p| depth[p] + 1)
            .max()
            .unwrap_or(0);
        depth.insert(s.shard_id.clone(), d);
    }
    let ranges: HashMap<&str, (u128, u128)> = shards
        .iter()
        .map(|s| {
            (
                s.shard_id.as_str(),
                (s.starting_hash_key, s.ending_hash_key),
            )
        })
        .collect();
    let mut records = sim.records(stream);
    records.sort_by(|a, b| {
        (depth[&a.shard_id], &a.shard_id)
            .cmp(&(depth[&b.shard_id], &b.shard_id))
            .then_with(|| support::reader::sequence_cmp(&a.sequence_number, &b.sequence_number))
    });
    let mut out = Vec::new();
    for r in records {
        let subs = deaggregate_strict(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            Bytes::from(r.data.clone()),
        )
        .expect("decodes");
        let aggregated = subs.len() > 1;
        let (lo, hi) = ranges[r.shard_id.as_str()];
        for s in subs {
            let h = hash_of(&s.partition_key, s.explicit_hash_key.as_deref());
            if aggregated && !(lo..=hi).contains(&h) {
                continue; // KCL drops it
            }
            let id = record_id(&s.data).expect("tagged");
            out.push((r.shard_id.clone(), h, id));
        }
    }
    out
}

/// Reads the stream as a KCL consumer does and asserts that each hash key's records come in
/// the order they were added; returns the shard each record was read from, in reading order.
fn assert_per_key_order(sim: &Simulator, stream: &str) -> Vec<String> {
    let mut last: HashMap<u128, usize> = HashMap::new();
    let mut read = Vec::new();
    for (shard, key, id) in kcl_order(sim, stream) {
        if let Some(&prev) = last.get(&key) {
            assert!(
                id > prev,
                "key {key}: record {id} read after {prev} (in {shard}): per-key order broken"
            );
        }
        last.insert(key, id);
        read.push(shard);
    }
    read
}

async fn ordered_across_reshards(aggregation: bool) {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream("ordered", 4).expect("create");
    let p = Producer::builder()
        .stream_name("ordered")
        .ordering(Ordering::PerShard)
        .aggregation(aggregation)
        .record_ttl(Duration::from_secs(300))
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build");
    // Plain, an ordered shard sends one record per round trip: a smaller run.
    let n: usize = if aggregation { 60_000 } else { 4_000 };
    let mut pending = Vec::with_capacity(n);
    for id in 0..n {
        // Under load: each change comes while records of every key are queued and in flight.
        if id == n / 5 {
            let s = &sim.shards("ordered")[0];
            let mid = s.starting_hash_key + (s.ending_hash_key - s.starting_hash_key) / 2;
            sim.split_shard("ordered", 0, mid).expect("split");
        } else if id == 2 * n / 5 {
            sim.merge_shards("ordered", 2, 3).expect("merge");
        } else if id == 3 * n / 5 {
            sim.reshard("ordered", 8).expect("4 -> 8");
        } else if id == 4 * n / 5 {
            sim.reshard("ordered", 4).expect("8 -> 4");
        }
        let r = tagged_record(id, KEYS);
        pending.push((r.clone(), p.add(r).await.expect("accepted")));
    }
    let outcomes = resolve_all(pending, Duration::from_secs(240)).await;
    let v = verify(&sim, "ordered", &outcomes);
    assert_eq!(v.ok, n, "every record stored: {v:?}");
    let read = assert_per_key_order(&sim, "ordered");
    assert_eq!(read.len(), n, "each record visible once to the KCL reader");
    let st = p.stats();
    assert!(
        st.shard_map_refreshes >= 1,
        "the producer followed the reshards: {st:?}"
    );
    p.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_across_split_merge_and_update_shard_count_aggregated() {
    ordered_across_reshards(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_across_split_merge_and_update_shard_count_plain() {
    ordered_across_reshards(false).await;
}

/// On a stream of thousands of shards the engine takes records from its channel a few ahead of
/// the one it queues (to prefetch their shards' state); per-key order still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_on_thousands_of_shards() {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream("wide", 4_096).expect("create");
    let p = Producer::builder()
        .stream_name("wide")
        .ordering(Ordering::PerShard)
        .record_ttl(Duration::from_secs(300))
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build");
    let n = 40_000;
    let mut pending = Vec::with_capacity(n);
    for id in 0..n {
        let r = tagged_record(id, 4_000);
        pending.push((r.clone(), p.add(r).await.expect("accepted")));
    }
    let outcomes = resolve_all(pending, Duration::from_secs(240)).await;
    let v = verify(&sim, "wide", &outcomes);
    assert_eq!(v.ok, n, "every record stored: {v:?}");
    let shards: HashSet<String> = assert_per_key_order(&sim, "wide").into_iter().collect();
    assert!(shards.len() > 2_048, "{} shards written", shards.len());
    p.shutdown().await.expect("shutdown");
}
