//! The peer "a user would write by hand": a plain aws-sdk-kinesis loop that sends PutRecords of
//! 500 records, with no shard awareness and no rate limiting. Entries that come back failed are
//! put at the front of the next request (the usual hand-written retry); nothing else.
//!
//! ```text
//! cargo run --release --example naive_putrecords -- --endpoint URL [--stream s] [--seconds 10]
//!     [--record-size 100] [--keys 10000] [--concurrency 1]
//! ```
//!
//! Prints one JSON line: user records stored per second, entries sent, entries throttled and the
//! throttled fraction (as the loop saw them in the responses).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

#[derive(Default, Clone, Copy)]
struct Counts {
    stored: u64,
    sent: u64,
    throttled: u64,
    failed_other: u64,
    requests: u64,
    request_errors: u64,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = arg(&args, "--endpoint").unwrap_or_else(|| {
        eprintln!("usage: naive_putrecords --endpoint URL [--stream s] [--seconds 10] [--record-size 100] [--keys 10000] [--concurrency 1]");
        std::process::exit(2)
    });
    let stream = arg(&args, "--stream").unwrap_or_else(|| "s".into());
    let seconds: f64 = arg(&args, "--seconds").map_or(10.0, |v| v.parse().expect("seconds"));
    let record_size: usize = arg(&args, "--record-size").map_or(100, |v| v.parse().expect("size"));
    let keys: usize = arg(&args, "--keys").map_or(10_000, |v| v.parse().expect("keys"));
    let concurrency: usize = arg(&args, "--concurrency").map_or(1, |v| v.parse().expect("n"));

    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "naive"))
        .endpoint_url(endpoint)
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(conf);
    let keys: Arc<Vec<String>> = Arc::new((0..keys).map(|i| format!("key-{i:05}")).collect());
    let data = vec![0x5Au8; record_size];
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);

    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let keys = keys.clone();
        let data = data.clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Counts::default();
            let mut k = w * 7919;
            let mut retry: VecDeque<PutRecordsRequestEntry> = VecDeque::new();
            while Instant::now() < until {
                let mut entries: Vec<PutRecordsRequestEntry> = retry.drain(..).collect();
                while entries.len() < 500 {
                    let key = &keys[k % keys.len()];
                    k += 1;
                    entries.push(
                        PutRecordsRequestEntry::builder()
                            .partition_key(key)
                            .data(Blob::new(data.clone()))
                            .build()
                            .expect("entry"),
                    );
                }
                c.requests += 1;
                c.sent += entries.len() as u64;
                match client
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(entries.clone()))
                    .send()
                    .await
                {
                    Ok(out) => {
                        for (entry, r) in entries.into_iter().zip(out.records()) {
                            match r.error_code() {
                                None => c.stored += 1,
                                Some(code) => {
                                    if code == "ProvisionedThroughputExceededException" {
                                        c.throttled += 1;
                                    } else {
                                        c.failed_other += 1;
                                    }
                                    retry.push_back(entry);
                                }
                            }
                        }
                    }
                    Err(_) => {
                        c.request_errors += 1;
                        retry.extend(entries);
                    }
                }
            }
            c
        }));
    }
    let mut total = Counts::default();
    for t in tasks {
        let c = t.await.expect("worker");
        total.stored += c.stored;
        total.sent += c.sent;
        total.throttled += c.throttled;
        total.failed_other += c.failed_other;
        total.requests += c.requests;
        total.request_errors += c.request_errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"peer\":\"naive_putrecords\",\"concurrency\":{concurrency},\"record_size\":{record_size},\
         \"seconds\":{:.3},\"records_stored\":{},\"user_records_per_sec\":{:.0},\
         \"entries_sent\":{},\"entries_throttled\":{},\"entries_failed_other\":{},\
         \"throttle_fraction\":{:.5},\"requests\":{},\"request_errors\":{}}}",
        elapsed,
        total.stored,
        total.stored as f64 / elapsed,
        total.sent,
        total.throttled,
        total.failed_other,
        total.throttled as f64 / total.sent.max(1) as f64,
        total.requests,
        total.request_errors,
    );
}
