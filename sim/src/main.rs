//! `kinesis-sim`: serve a simulated Kinesis endpoint on 127.0.0.1 until Ctrl-C. Streams change
//! mode, record distribution and record size through the API actions themselves
//! (UpdateStreamMode, UpdateStreamRecordDistributionStrategy, UpdateMaxRecordSize), so any SDK
//! or raw HTTP client can switch them.

use std::time::Duration;

use clap::Parser;
use kinesis_sim::{Faults, RateLimits, SimConfig, Simulator, ThrottleModel, Transitions};

/// A simulated Amazon Kinesis Data Streams endpoint (awsJson1.1 over HTTP).
#[derive(Debug, Parser)]
#[command(name = "kinesis-sim", version)]
struct Args {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 4567)]
    port: u16,
    /// Stream to create at start, as NAME:SHARDS (repeatable).
    #[arg(long = "stream", value_parser = parse_stream)]
    streams: Vec<(String, u32)>,
    /// Disable per-shard throttling.
    #[arg(long)]
    no_limits: bool,
    /// Per-shard records per second.
    #[arg(long, default_value_t = 1000)]
    shard_records_per_sec: u32,
    /// Per-shard bytes per second.
    #[arg(long, default_value_t = 1_048_576)]
    shard_bytes_per_sec: u64,
    /// How per-shard limits are counted: `bucket` (a token bucket holding one second of rate,
    /// refilled continuously) or `window` (fixed one-second windows).
    #[arg(long, default_value = "bucket", value_parser = parse_model)]
    throttle_model: ThrottleModel,
    /// Do not keep record payloads (flat memory for long benchmarks).
    #[arg(long)]
    no_store: bool,
    /// Per-record InternalFailure probability.
    #[arg(long, default_value_t = 0.0)]
    internal_failure_rate: f64,
    /// Per-request HTTP 500 probability.
    #[arg(long, default_value_t = 0.0)]
    http_500_rate: f64,
    /// Per-request HTTP 503 probability.
    #[arg(long, default_value_t = 0.0)]
    http_503_rate: f64,
    /// Per-request probability of closing the connection without a response.
    #[arg(long, default_value_t = 0.0)]
    drop_connection_rate: f64,
    /// Fixed latency per request in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Random extra latency up to this many milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// Share 0..1 of every shard's budget used by an invisible competing writer.
    #[arg(long, default_value_t = 0.0)]
    competing_writer_share: f64,
    /// Milliseconds a stream made by CreateStream stays CREATING.
    #[arg(long, default_value_t = 0)]
    creating_ms: u64,
    /// Milliseconds a reshard or UpdateStreamMode keeps a stream UPDATING.
    #[arg(long, default_value_t = 0)]
    updating_ms: u64,
    /// Milliseconds a stream stays DELETING after DeleteStream.
    #[arg(long, default_value_t = 0)]
    deleting_ms: u64,
}

fn parse_model(s: &str) -> Result<ThrottleModel, String> {
    ThrottleModel::parse(s).ok_or_else(|| format!("expected bucket or window, got {s}"))
}

fn parse_stream(s: &str) -> Result<(String, u32), String> {
    let (name, n) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected NAME:SHARDS, got {s}"))?;
    let n: u32 = n.parse().map_err(|e| format!("shard count in {s}: {e}"))?;
    if name.is_empty() || n == 0 {
        return Err(format!("expected NAME:SHARDS with SHARDS >= 1, got {s}"));
    }
    Ok((name.to_string(), n))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let limits = RateLimits {
        enabled: !a.no_limits,
        records_per_sec: a.shard_records_per_sec,
        bytes_per_sec: a.shard_bytes_per_sec,
        model: a.throttle_model,
    };
    let cfg = SimConfig {
        port: a.port,
        limits,
        store_records: !a.no_store,
        transitions: Transitions {
            creating: Duration::from_millis(a.creating_ms),
            updating: Duration::from_millis(a.updating_ms),
            deleting: Duration::from_millis(a.deleting_ms),
        },
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg).await?;
    let faults = Faults {
        internal_failure_rate: a.internal_failure_rate,
        http_500_rate: a.http_500_rate,
        http_503_rate: a.http_503_rate,
        drop_connection_rate: a.drop_connection_rate,
        latency: Duration::from_millis(a.latency_ms),
        latency_jitter: Duration::from_millis(a.latency_jitter_ms),
        competing_writer_share: a.competing_writer_share,
        ..Faults::default()
    };
    for (name, shards) in &a.streams {
        sim.create_stream(name, *shards)?;
        sim.set_faults(name, faults.clone())?;
        eprintln!("stream {name}: {shards} shards");
    }
    println!("{}", sim.endpoint_url());
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
