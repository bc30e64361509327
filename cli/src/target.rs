//! The service `kpl` talks to: the embedded simulator, any endpoint, or AWS.

use crate::{SimArgs, TargetArgs};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use kinesis_sim::{Faults, RateLimits, SimConfig, Simulator};
use std::time::Duration;

/// Stream created in the embedded simulator when `--stream` is not given.
pub const DEFAULT_STREAM: &str = "kpl-demo";
/// Shards of the embedded simulator's stream when `--shards` is not given.
pub const DEFAULT_SHARDS: u32 = 4;
/// Region used with `--endpoint-url` (and the simulator) when `--region` is not given.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A connected target: the SDK configuration to build the producer with, and the simulator
/// when it runs in-process (kept alive for the whole run).
pub struct Target {
    /// AWS SDK configuration pointing at the service.
    pub sdk_config: SdkConfig,
    /// The stream name or ARN.
    pub stream: String,
    /// Human description, e.g. "embedded kinesis-sim (4 shards, limits on)".
    pub description: String,
    /// The embedded simulator, if any.
    pub sim: Option<Simulator>,
    /// Faults to inject into the embedded simulator once the producer has started (the
    /// producer's start-up calls are not retried, so they run fault-free).
    pub faults: Option<Faults>,
    /// Whether shard limits are off (the producer's rate limiting then goes off too).
    pub no_limits: bool,
}

impl Target {
    /// Turns on the fault injection the options asked for (embedded simulator only).
    pub fn inject_faults(&self) -> Result<(), String> {
        match (&self.sim, &self.faults) {
            (Some(sim), Some(faults)) => sim
                .set_faults(&self.stream, faults.clone())
                .map_err(|e| format!("cannot set faults on {:?}: {e}", self.stream)),
            _ => Ok(()),
        }
    }
}

fn dummy_credentials() -> Credentials {
    Credentials::new("kpl-local", "kpl-local", None, None, "kpl-static")
}

fn has_env_credentials() -> bool {
    std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty())
}

/// Starts the simulator or prepares the SDK configuration, as the options say.
pub async fn connect(target: &TargetArgs, sim: &SimArgs) -> Result<Target, String> {
    let region = target.region.clone();
    if target.aws {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(Region::new(r));
        }
        let sdk_config = loader.load().await;
        let stream = target.stream.clone().expect("checked in main");
        let description = format!(
            "Amazon Kinesis ({})",
            sdk_config
                .region()
                .map_or("no region configured".to_string(), |r| r.to_string())
        );
        return Ok(Target {
            sdk_config,
            stream,
            description,
            sim: None,
            faults: None,
            no_limits: false,
        });
    }
    if let Some(url) = &target.endpoint_url {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.unwrap_or_else(|| DEFAULT_REGION.into())))
            .endpoint_url(url);
        if !has_env_credentials() {
            loader = loader.credentials_provider(dummy_credentials());
        }
        let stream = target.stream.clone().expect("checked in main");
        return Ok(Target {
            sdk_config: loader.load().await,
            stream,
            description: url.clone(),
            sim: None,
            faults: None,
            no_limits: false,
        });
    }
    embedded(target, sim).await
}

async fn embedded(target: &TargetArgs, args: &SimArgs) -> Result<Target, String> {
    let shards = args.shards.unwrap_or(DEFAULT_SHARDS);
    let region = target
        .region
        .clone()
        .unwrap_or_else(|| DEFAULT_REGION.into());
    let config = SimConfig {
        limits: if args.no_limits {
            RateLimits::unlimited()
        } else {
            RateLimits::default()
        },
        region: region.clone(),
        // Nothing reads the records back: keep the simulator's memory flat for long runs.
        store_records: false,
        ..SimConfig::default()
    };
    let sim = Simulator::start(config)
        .await
        .map_err(|e| format!("cannot start the embedded kinesis-sim: {e}"))?;
    let stream = target
        .stream
        .clone()
        .unwrap_or_else(|| DEFAULT_STREAM.into());
    let mut options = kinesis_sim::StreamOptions {
        max_record_size_kib: args.max_record_size_kib,
        ..kinesis_sim::StreamOptions::new(shards)
    };
    if args.auto_distribution {
        options.mode = kinesis_sim::StreamMode::OnDemand;
        options.distribution = kinesis_sim::RecordDistribution::Auto;
    }
    for name in std::iter::once(&stream).chain(&args.extra_stream) {
        sim.create_stream_with(name, options.clone())
            .map_err(|e| format!("cannot create stream {name:?} in kinesis-sim: {e}"))?;
    }
    let ms = Duration::from_millis;
    let faults = Faults {
        internal_failure_rate: args.internal_failure_rate.unwrap_or(0.0),
        http_500_rate: args.http_500_rate.unwrap_or(0.0),
        http_503_rate: args.http_503_rate.unwrap_or(0.0),
        latency: ms(args.latency_ms.unwrap_or(0)),
        latency_jitter: ms(args.latency_jitter_ms.unwrap_or(0)),
        drop_connection_rate: args.drop_connection_rate.unwrap_or(0.0),
        competing_writer_share: args.competing_writer_share.unwrap_or(0.0),
        reshard_at: args
            .reshard_after_ms
            .zip(args.reshard_to)
            .map(|(t, n)| (ms(t), n)),
        ..Faults::default()
    };
    let faulty = faults != Faults::default();
    let sdk_config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .endpoint_url(sim.endpoint_url())
        .credentials_provider(dummy_credentials())
        .load()
        .await;
    let description = format!(
        "embedded kinesis-sim at {} ({shards} shard{}, limits {}{})",
        sim.endpoint_url(),
        if shards == 1 { "" } else { "s" },
        if args.no_limits { "off" } else { "on" },
        if faulty { ", faults injected" } else { "" },
    );
    Ok(Target {
        sdk_config,
        stream,
        description,
        sim: Some(sim),
        faults: faulty.then_some(faults),
        no_limits: args.no_limits,
    })
}
