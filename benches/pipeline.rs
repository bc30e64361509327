//! The pure pieces of the pipeline, and the whole `add` → request path into a discarding sink.
//!
//! * `hash_key`: MD5 of 8, 16, 32 and 64-byte partition keys.
//! * `shard_lookup`: maps of 1, 64, 4,096 and 10,000 evenly split shards.
//! * `collector`: packing 100-byte records (count-bound requests of 500) and 50 KB aggregates
//!   (byte-bound requests of 5 MiB).
//! * `pipeline`: `Producer::add` (tracked, futures dropped) and `add_untracked` of 100-byte
//!   records with 10,000 distinct keys, 64 shards, rate limiting off, aggregation on and off,
//!   into a [`Kinesis`] implementation that answers every record `Ok` without any I/O. One
//!   iteration adds 100,000 records and waits for `flush()`, so every record is acknowledged.
//!
//! Throughput is reported in user records (criterion's "elem/s").
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench pipeline
//! ```

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kinesis_producer::collector::Collector;
use kinesis_producer::config::StreamRef;
use kinesis_producer::kinesis::{
    BoxFuture, ClientError, PutRecordsRequest, PutRecordsResultEntry, SequenceNumber, StreamSummary,
};
use kinesis_producer::shard_map::{even_shards, ShardInfo, ShardMap};
use kinesis_producer::{HashKey, Kinesis, Producer, UserRecord};

const SHARDS: u32 = 64;
const KEYS: usize = 10_000;
const DATA_LEN: usize = 100;
const RECORDS_PER_ITER: usize = 100_000;

/// A deterministic spread of hash keys (a multiplicative sequence over the whole key space).
fn hash_keys(n: usize) -> Vec<HashKey> {
    (0..n as u128)
        .map(|i| HashKey(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)))
        .collect()
}

fn bench_hash_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash_key");
    for len in [8usize, 16, 32, 64] {
        // 256 distinct keys of exactly `len` ASCII bytes.
        let keys: Vec<String> = (0..256)
            .map(|i| format!("{:0>width$}", format!("k{i}"), width = len))
            .collect();
        group.throughput(Throughput::Elements(keys.len() as u64));
        group.bench_with_input(BenchmarkId::new("md5", len), &keys, |b, keys| {
            b.iter(|| {
                let mut acc = 0u128;
                for k in keys {
                    acc ^= HashKey::from_partition_key(black_box(k)).0;
                }
                black_box(acc)
            });
        });
    }
    group.finish();
}

fn bench_shard_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_lookup");
    let keys = hash_keys(1024);
    for n in [1u32, 64, 4096, 10_000] {
        let map = ShardMap::new(even_shards(n));
        group.throughput(Throughput::Elements(keys.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &map, |b, map| {
            b.iter(|| {
                let mut acc = 0usize;
                for k in &keys {
                    acc = acc.wrapping_add(map.lookup(black_box(*k)).unwrap_or(0));
                }
                black_box(acc)
            });
        });
    }
    group.finish();
}

fn bench_collector(c: &mut Criterion) {
    let mut group = c.benchmark_group("collector");
    let t = Instant::now();
    // (name, records pushed per iteration, size of each)
    for (name, n, size) in [("100B", 100_000usize, 110usize), ("50KB", 10_000, 51_200)] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(name, |b| {
            let mut collector: Collector<u64> = Collector::new(500, 5 * 1024 * 1024);
            b.iter(|| {
                let mut requests = 0usize;
                for i in 0..n as u64 {
                    if let Some(batch) = collector.push(black_box(i), size, t, t) {
                        requests += 1;
                        black_box(batch.records.len());
                    }
                    if collector.is_full() {
                        requests += 1;
                        black_box(collector.take().records.len());
                    }
                }
                if let Some(batch) = collector.take_ready(t, Duration::ZERO, true) {
                    requests += 1;
                    black_box(batch.records.len());
                }
                black_box(requests)
            });
        });
    }
    group.finish();
}

/// A [`Kinesis`] that stores nothing and answers every record `Ok`, on the shard the record's
/// hash key belongs to (so the producer never sees a misprediction). Routing uses a key → shard
/// table built up front, so the sink costs a hash-map lookup per Kinesis record, not an MD5.
pub struct DiscardSink {
    shards: Vec<ShardInfo>,
    map: ShardMap,
    by_key: HashMap<String, Arc<str>>,
    sequence_number: SequenceNumber,
}

impl DiscardSink {
    /// A sink for a stream of `shards` evenly split shards whose records use `keys`.
    pub fn new(shards: u32, keys: &[String]) -> Self {
        let infos = even_shards(shards);
        let map = ShardMap::new(infos.clone());
        let by_key = keys
            .iter()
            .map(|k| {
                let i = map
                    .lookup(HashKey::from_partition_key(k))
                    .expect("open shard");
                (k.clone(), map.open_shards()[i].id.clone())
            })
            .collect();
        DiscardSink {
            shards: infos,
            map,
            by_key,
            sequence_number: "49590338271490256608559692538361571095921575989136588898".into(),
        }
    }

    fn route(&self, partition_key: &str, explicit_hash_key: Option<&str>) -> Arc<str> {
        let key = match explicit_hash_key {
            Some(ehk) => HashKey(ehk.parse().unwrap_or(0)),
            None => match self.by_key.get(partition_key) {
                Some(id) => return id.clone(),
                None => HashKey::from_partition_key(partition_key),
            },
        };
        let i = self.map.lookup(key).unwrap_or(0);
        self.map.open_shards()[i].id.clone()
    }
}

impl Kinesis for DiscardSink {
    fn put_records(
        &self,
        request: PutRecordsRequest,
    ) -> BoxFuture<'_, Result<Vec<PutRecordsResultEntry>, ClientError>> {
        let results = request
            .records
            .iter()
            .map(|r| PutRecordsResultEntry::Ok {
                shard_id: self.route(&r.partition_key, r.explicit_hash_key.as_deref()),
                sequence_number: self.sequence_number.clone(),
            })
            .collect();
        Box::pin(async move { Ok(results) })
    }

    fn list_shards(
        &self,
        _stream: &StreamRef,
    ) -> BoxFuture<'_, Result<Vec<ShardInfo>, ClientError>> {
        let shards = self.shards.clone();
        Box::pin(async move { Ok(shards) })
    }

    fn describe_stream_summary(
        &self,
        _stream: &StreamRef,
    ) -> BoxFuture<'_, Result<StreamSummary, ClientError>> {
        Box::pin(async move {
            Ok(StreamSummary {
                max_record_size_kib: Some(1024),
                auto_distribution: false,
                on_demand: None,
                status: "ACTIVE".into(),
            })
        })
    }
}

fn bench_pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i:05}")).collect();
    let data = Bytes::from(vec![0x5Au8; DATA_LEN]);

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(RECORDS_PER_ITER as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for aggregation in [true, false] {
        let producer = runtime.block_on(async {
            Producer::builder()
                .stream_name("bench")
                .aggregation(aggregation)
                .rate_limiting(false)
                .kinesis(Arc::new(DiscardSink::new(SHARDS, &keys)))
                .await
                .expect("producer")
        });
        let agg = if aggregation { "agg" } else { "noagg" };
        group.bench_function(format!("add_{agg}"), |b| {
            b.to_async(&runtime).iter(|| async {
                for i in 0..RECORDS_PER_ITER {
                    let key = keys[i % KEYS].clone();
                    let pending = producer
                        .add(UserRecord::new(key, data.clone()))
                        .await
                        .expect("add");
                    drop(pending); // dropping the future does not cancel the record
                }
                producer.flush().await.expect("flush");
            });
        });
        group.bench_function(format!("add_untracked_{agg}"), |b| {
            b.to_async(&runtime).iter(|| async {
                for i in 0..RECORDS_PER_ITER {
                    let key = keys[i % KEYS].clone();
                    producer
                        .add_untracked(UserRecord::new(key, data.clone()))
                        .await
                        .expect("add");
                }
                producer.flush().await.expect("flush");
            });
        });
        let stats = producer.stats();
        assert_eq!(stats.records_failed, 0, "{stats:?}");
        runtime.block_on(producer.shutdown()).expect("shutdown");
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_hash_key,
    bench_shard_lookup,
    bench_collector,
    bench_pipeline
);
criterion_main!(benches);
