//! What queueing records per shard costs at its least: a single-threaded model of the
//! aggregated pipeline, with and without per-shard queues, at the shard counts of
//! `bench_e2e cpu --sweep` (issue 12's flatness target, BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example queue_floor [-- --records N --rounds R]
//! ```
//!
//! Both variants do, per record, what `bench_e2e`'s floor does (the MD5 of the partition key;
//! per aggregate the KPL framing, its MD5 checksum, and the base64 and JSON of the request
//! body) plus the shard's index (from the hash key's top 64 bits, as equal ranges allow: no
//! memory read, cheaper than any lookup in a real map) and a 128-byte entry holding the key,
//! the data and the hash key, as the producer's entries do:
//!
//! - `streaming`: aggregates are cut from records in arrival order, as if every record went to
//!   one shard (no state per shard);
//! - `queued`: each record waits in its shard's queue until the queue holds as many records as
//!   the producer's aggregates held in the sweep (464 at 64 shards, 20 at 10,000), as any
//!   producer that aggregates per shard must.
//!
//! The difference between the two, and how it grows with the shard count, is the least that
//! holding records per shard costs: no threads, no channel, no futures, no I/O. Prints one JSON
//! line per cell and round (µs of one thread's CPU per record).

#[path = "bench_e2e/floor.rs"]
mod floor;

use bytes::Bytes;
use floor::{encode_aggregate, json_entry};
use md5::{Digest, Md5};
use std::collections::VecDeque;
use std::time::Instant;

/// (shards, user records per aggregate in the producer's sweep).
const CELLS: [(usize, usize); 4] = [(64, 464), (1_024, 144), (4_096, 39), (10_000, 20)];

/// A queued record: 128 bytes, as the producer's entry.
struct Entry {
    key: [u8; 24],
    key_len: u8,
    data: Bytes,
    hash: u128,
    _rest: [u64; 6],
}

const _: () = assert!(std::mem::size_of::<Entry>() == 128);

/// The aggregate of `entries`, encoded, checksummed and appended to `body` in base64.
fn aggregate(entries: &[Entry], agg: &mut Vec<u8>, body: &mut String) {
    encode_aggregate(
        agg,
        entries
            .iter()
            .map(|e| (&e.key[..usize::from(e.key_len)], &e.data[..])),
    );
    if body.len() > 1 << 20 {
        std::hint::black_box(&*body);
        body.clear();
    }
    json_entry(body, agg, "k", None);
}

/// µs of CPU per record for `n` records over `shards` shards, aggregates of `per_aggregate`.
fn run(shards: usize, per_aggregate: usize, n: usize, queued: bool) -> f64 {
    let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i:05}")).collect();
    let data = Bytes::from(vec![7u8; 100]);
    let mut queues: Vec<VecDeque<Entry>> = (0..shards).map(|_| VecDeque::new()).collect();
    let mut arrivals: Vec<Entry> = Vec::new();
    let (mut agg, mut body) = (Vec::new(), String::new());
    let stride = 7919 % keys.len();
    let mut k = 0;
    let t0 = Instant::now();
    for _ in 0..n {
        let key = keys[k].as_bytes();
        k = (k + stride) % keys.len();
        let hash = u128::from_be_bytes(Md5::digest(key).into());
        // Shard i of `shards` equal ranges holds the hash keys whose top 64 bits h satisfy
        // i ≤ h × shards ÷ 2^64 < i + 1.
        let shard = (((hash >> 64) * shards as u128) >> 64) as usize;
        let mut inline = [0u8; 24];
        inline[..key.len()].copy_from_slice(key);
        let entry = Entry {
            key: inline,
            key_len: key.len() as u8,
            data: data.clone(),
            hash,
            _rest: [0; 6],
        };
        let entries: Vec<Entry> = if queued {
            let queue = &mut queues[shard];
            queue.push_back(entry);
            if queue.len() < per_aggregate {
                continue;
            }
            queue.drain(..).collect()
        } else {
            std::hint::black_box(shard);
            arrivals.push(entry);
            if arrivals.len() < per_aggregate {
                continue;
            }
            std::mem::take(&mut arrivals)
        };
        std::hint::black_box(entries.iter().map(|e| e.hash).fold(0, |a, h| a ^ h));
        aggregate(&entries, &mut agg, &mut body);
    }
    std::hint::black_box(&body);
    t0.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut records, mut rounds) = (4_000_000usize, 3usize);
    while let Some(a) = args.next() {
        let mut value = || -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--records" => records = value(),
            "--rounds" => rounds = value(),
            other => panic!("unknown option {other}"),
        }
    }
    for round in 1..=rounds {
        for (shards, per_aggregate) in CELLS {
            let streaming = run(shards, per_aggregate, records, false);
            let queued = run(shards, per_aggregate, records, true);
            println!(
                "{{\"round\":{round},\"shards\":{shards},\"per_aggregate\":{per_aggregate},\
                 \"streaming_us\":{streaming:.3},\"queued_us\":{queued:.3}}}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::floor::encode_aggregate;

    /// The floor's aggregate is one the library's decoder (checked against the KPL's own, in
    /// the crate's tests) reads back: keys, data and order.
    #[test]
    fn the_floor_encodes_a_valid_aggregate() {
        let records: Vec<(String, Vec<u8>)> = (0..300)
            .map(|i| (format!("key-{i:05}"), vec![i as u8; 100 + i % 3]))
            .collect();
        let mut agg = Vec::new();
        encode_aggregate(
            &mut agg,
            records.iter().map(|(k, d)| (k.as_bytes(), &d[..])),
        );
        assert_eq!(agg.len(), agg.capacity(), "encoded at its exact size");
        let subs = kinesis_producer::deaggregate("key-00000", None, agg.into()).expect("valid");
        let got: Vec<(String, Vec<u8>)> = subs
            .into_iter()
            .map(|r| (r.partition_key.to_string(), r.data.to_vec()))
            .collect();
        assert_eq!(got, records);
    }
}
