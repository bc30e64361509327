//! kinesis-sim for benchmark scripts that need the simulator's counters: serves the simulator
//! (the same library the `kinesis-sim` binary runs) and answers each line read on stdin with one
//! JSON line of counters for every stream. EOF on stdin stops it.
//!
//! ```text
//! cargo run --release --example bench_sim -- --stream s:8 [--no-limits]
//! # prints the endpoint URL, then per stdin line:
//! # {"s":{"accepted_records":..,"accepted_bytes":..,"throttled_records":..,"shards":[[r,b,t],..]}}
//! ```

use std::io::BufRead;

use kinesis_sim::{RateLimits, SimConfig, Simulator};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut streams: Vec<(String, u32)> = Vec::new();
    let mut limits = RateLimits::default();
    let mut port = 0u16;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--stream" => {
                let (name, n) = args[i + 1].rsplit_once(':').expect("NAME:SHARDS");
                streams.push((name.to_string(), n.parse().expect("shards")));
                i += 1;
            }
            "--port" => {
                port = args[i + 1].parse().expect("port");
                i += 1;
            }
            "--no-limits" => limits = RateLimits::unlimited(),
            a => panic!("unknown argument {a}"),
        }
        i += 1;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kinesis-sim")
        .enable_all()
        .build()
        .expect("runtime");
    let sim = rt
        .block_on(Simulator::start(SimConfig {
            port,
            limits,
            store_records: false,
            ..SimConfig::default()
        }))
        .expect("start simulator");
    for (name, n) in &streams {
        sim.create_stream(name, *n).expect("create stream");
    }
    println!("{}", sim.endpoint_url());
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let parts: Vec<String> = streams
            .iter()
            .map(|(name, _)| {
                let c = sim.counters(name);
                let shards: Vec<String> = c
                    .shards
                    .iter()
                    .map(|s| {
                        format!(
                            "[{},{},{}]",
                            s.accepted_records, s.accepted_bytes, s.throttled_records
                        )
                    })
                    .collect();
                format!(
                    "\"{name}\":{{\"accepted_records\":{},\"accepted_bytes\":{},\
                     \"throttled_records\":{},\"shards\":[{}]}}",
                    c.accepted_records(),
                    c.shards.iter().map(|s| s.accepted_bytes).sum::<u64>(),
                    c.throttled_records(),
                    shards.join(",")
                )
            })
            .collect();
        println!("{{{}}}", parts.join(","));
    }
    rt.block_on(sim.shutdown());
}
