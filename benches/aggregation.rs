//! Throughput of the KPL aggregate encoder and decoder.
//!
//! Workload: 100-byte user records, 1,000 distinct partition keys, no explicit hash keys,
//! aggregates of at most 51,200 bytes (the default) and no count limit. Encoding includes
//! `finish()`, and so the MD5 of every aggregate.
//!
//! ```text
//! cargo bench --bench aggregation
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kinesis_producer::aggregation::{deaggregate, Aggregate, Aggregator, TryPush};

const RECORDS: usize = 100_000;
const DISTINCT_KEYS: usize = 1_000;
const DATA_LEN: usize = 100;
const MAX_SIZE: usize = 51_200;

fn keys() -> Vec<String> {
    (0..DISTINCT_KEYS).map(|i| format!("user-{i:06}")).collect()
}

/// Encodes `RECORDS` records, cycling through the keys with a stride so that consecutive
/// records rarely share a key, and collects the aggregates into `sink`.
fn encode(agg: &mut Aggregator, keys: &[String], data: &[u8], sink: &mut Vec<Aggregate>) {
    for i in 0..RECORDS {
        let key = &keys[(i * 7919) % keys.len()];
        if agg.try_push(key, None, data) == TryPush::NoCapacity {
            sink.push(agg.finish().expect("a full aggregate is not empty"));
            assert_eq!(agg.try_push(key, None, data), TryPush::Added);
        }
    }
    sink.extend(agg.finish());
}

fn bench_encode(c: &mut Criterion) {
    let keys = keys();
    let data = [0x5Au8; DATA_LEN];
    let mut agg = Aggregator::new(MAX_SIZE, usize::MAX);
    let mut sink = Vec::with_capacity(RECORDS / 400 + 1);

    let mut group = c.benchmark_group("aggregation");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("encode_100B_1000keys", |b| {
        b.iter(|| {
            sink.clear();
            encode(&mut agg, black_box(&keys), black_box(&data), &mut sink);
            black_box(sink.len())
        });
    });

    sink.clear();
    encode(&mut agg, &keys, &data, &mut sink);
    let aggregates = std::mem::take(&mut sink);
    group.bench_function("deaggregate_100B_1000keys", |b| {
        b.iter(|| {
            let mut n = 0;
            for a in &aggregates {
                n += deaggregate(&a.partition_key, None, a.data.clone())
                    .expect("valid aggregate")
                    .len();
            }
            assert_eq!(n, RECORDS);
            black_box(n)
        });
    });
    group.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
