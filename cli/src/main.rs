//! `kpl`: the command-line producer of the `kinesis-producer` library.
//!
//! ```text
//!  input (file/stdin lines or NDJSON, or a generator) ──► reader thread ──► bounded channel
//!        ──► feeder: Producer::add().await (backpressure) ──► pending futures ──► tracker
//!        tracker: resolves futures as they finish (latency, failures, progress) ──► report
//! ```
//!
//! With neither `--endpoint-url` nor `--aws`, `kpl produce` starts kinesis-sim in-process (4
//! shards, shard limits on) and produces into it: the out-of-the-box demo.
//!
//! Exit status: 0 when every record was put; 1 when some record failed, some input line was
//! invalid or the input could not be read to its end; 2 for bad command-line usage; 3 when the
//! run could not start (endpoint, stream, credentials, input file).

mod input;
mod produce;
mod report;
mod target;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Every record was put.
const EXIT_OK: u8 = 0;
/// Some record failed, an input line was invalid or the input could not be read.
const EXIT_INCOMPLETE: u8 = 1;
/// Bad usage (clap reports its own errors with this status too).
const EXIT_USAGE: u8 = 2;
/// The run could not start.
const EXIT_SETUP: u8 = 3;

/// Produce records to Amazon Kinesis Data Streams, any Kinesis-compatible service, or an
/// embedded simulator.
#[derive(Debug, Parser)]
#[command(name = "kpl", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The producer's log on stderr: warnings by default (throttling, expiries, endpoint
    /// back-off), -v adds shard map and stream settings changes, -vv every map refresh.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read records from a file or stdin (or generate them) and put them into a stream.
    ///
    /// With neither --endpoint-url nor --aws, an in-process kinesis-sim is started (4 shards,
    /// shard limits on) and the stream is created in it.
    ///
    /// Exit status: 0 if every record was put, 1 if any record failed or any input line was
    /// invalid, 2 on bad usage, 3 if the run could not start.
    Produce(Box<ProduceArgs>),
}

/// Options of `kpl produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
    #[command(flatten)]
    pub sim: SimArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Where records come from.
#[derive(Debug, Args)]
#[command(next_help_heading = "Input")]
pub struct InputArgs {
    /// Read records from FILE ("-" or absent: stdin).
    #[arg(long, short = 'i', value_name = "FILE", conflicts_with = "generate")]
    pub input: Option<PathBuf>,
    /// Input format: one record per line, or NDJSON (one JSON value per line; the line is
    /// the data). Blank lines are skipped.
    #[arg(long, value_enum, default_value_t = Format::Lines)]
    pub format: Format,
    /// Partition key for every record (default: a random key per record).
    #[arg(long, conflicts_with = "key_field")]
    pub key: Option<String>,
    /// NDJSON: take the partition key from this field (a top-level name, or a JSON pointer
    /// such as /user/id). A line without it gets a random key unless --require-key.
    #[arg(long, value_name = "NAME")]
    pub key_field: Option<String>,
    /// NDJSON: a line without the key field is invalid instead of getting a random key.
    #[arg(long, requires = "key_field")]
    pub require_key: bool,
    /// NDJSON: take the explicit hash key (decimal, 0 to 2^128-1) from this field.
    #[arg(long, value_name = "NAME")]
    pub ehk_field: Option<String>,
    /// NDJSON: send each line to the stream (name or ARN) this field names; a line without it
    /// goes to --stream. One producer serves them all; the report has a row per stream.
    #[arg(long, value_name = "NAME")]
    pub stream_field: Option<String>,
    /// Generate N synthetic records instead of reading input.
    #[arg(long, value_name = "N")]
    pub generate: Option<u64>,
    /// Generated records: data bytes per record.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 100,
        requires = "generate"
    )]
    pub record_size: usize,
    /// Generated records: number of distinct partition keys.
    #[arg(long, value_name = "K", default_value_t = 1000, requires = "generate",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Each line is one record's data.
    Lines,
    /// Each line is a JSON value (the record's data); keys may come from a field.
    Ndjson,
}

/// Which service to talk to.
#[derive(Debug, Args)]
#[command(next_help_heading = "Target")]
pub struct TargetArgs {
    /// Stream name or ARN (default with the embedded simulator: kpl-demo).
    #[arg(long, short = 's')]
    pub stream: Option<String>,
    /// Any Kinesis-compatible endpoint (kinesalite, LocalStack, ...). Credentials come from
    /// the environment, or dummy static ones if none are set.
    #[arg(long, value_name = "URL", conflicts_with = "aws")]
    pub endpoint_url: Option<String>,
    /// Use Amazon Kinesis with the normal AWS configuration chain (env, profile, SSO, IMDS).
    #[arg(long)]
    pub aws: bool,
    /// Region (default: us-east-1 with --endpoint-url, the configuration chain with --aws).
    #[arg(long)]
    pub region: Option<String>,
}

/// How the library produces.
#[derive(Debug, Args)]
#[command(next_help_heading = "Producer")]
pub struct ProducerArgs {
    /// KPL aggregation of user records into Kinesis records.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub aggregation: OnOff,
    /// Which user records share an aggregate: any of one shard, or only those of one partition
    /// key (the Kinesis record then carries that key, for consumers that route by it).
    #[arg(long, value_enum, default_value_t = ScopeArg::Shard)]
    pub aggregation_scope: ScopeArg,
    /// Ordering guarantee for records of the same partition key.
    #[arg(long, value_enum, default_value_t = OrderingArg::None)]
    pub ordering: OrderingArg,
    /// Share of each shard's write limits to use, percent (1-100).
    #[arg(long, value_name = "PERCENT")]
    pub rate_limit_percent: Option<u32>,
    /// Longest a record waits to be batched, milliseconds.
    #[arg(long, value_name = "MS")]
    pub max_buffered_time_ms: Option<u64>,
    /// Time-to-live of a record (retries included), milliseconds.
    #[arg(long, value_name = "MS")]
    pub ttl_ms: Option<u64>,
    /// Most PutRecords requests in flight at once.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Most user records held by the producer (the backpressure bound).
    #[arg(long, value_name = "N")]
    pub max_buffered_records: Option<usize>,
    /// Period of the producer's reads of the stream's settings (record distribution, record
    /// size limit), milliseconds [default: 60000, jittered].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub settings_refresh_ms: Option<u64>,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `--aggregation-scope` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    /// Any records of one shard share an aggregate (fewest Kinesis records).
    Shard,
    /// An aggregate holds records of one partition key, which its Kinesis record carries.
    PartitionKey,
}

impl ScopeArg {
    /// The value as written on the command line (and in the report).
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeArg::Shard => "shard",
            ScopeArg::PartitionKey => "partition-key",
        }
    }
}

/// `--ordering` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderingArg {
    /// No order guarantee (highest throughput).
    None,
    /// Records of one partition key are stored in input order.
    PerShard,
}

fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a probability in 0..=1"))
    }
}

/// Options of the embedded simulator (only without --endpoint-url and --aws).
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Embedded simulator")]
pub struct SimArgs {
    /// Shards of the stream created in the simulator [default: 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub shards: Option<u32>,
    /// No shard write limits in the simulator, and no rate limiting in the producer (CPU
    /// benchmark).
    #[arg(long)]
    pub no_limits: bool,
    /// Another stream to create in the simulator, with the same shards (repeatable; for
    /// --stream-field).
    #[arg(long, value_name = "NAME")]
    pub extra_stream: Vec<String>,
    /// Per-record probability of an InternalFailure.
    #[arg(long, value_name = "P", value_parser = rate)]
    pub internal_failure_rate: Option<f64>,
    /// Per-request probability of HTTP 500 InternalFailure.
    #[arg(long, value_name = "P", value_parser = rate)]
    pub http_500_rate: Option<f64>,
    /// Per-request probability of HTTP 503 ServiceUnavailable.
    #[arg(long, value_name = "P", value_parser = rate)]
    pub http_503_rate: Option<f64>,
    /// Latency added to every request, milliseconds.
    #[arg(long, value_name = "MS")]
    pub latency_ms: Option<u64>,
    /// Random extra latency up to this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub latency_jitter_ms: Option<u64>,
    /// Per-request probability that the connection is dropped without a response.
    #[arg(long, value_name = "P", value_parser = rate)]
    pub drop_connection_rate: Option<f64>,
    /// Share (0-1) of every shard's budget used by an invisible competing writer.
    #[arg(long, value_name = "SHARE", value_parser = rate)]
    pub competing_writer_share: Option<f64>,
    /// Reshard the stream to --reshard-to shards this many milliseconds into the run.
    #[arg(long, value_name = "MS", requires = "reshard_to")]
    pub reshard_after_ms: Option<u64>,
    /// The stream's record size limit in KiB (`MaxRecordSizeInKiB`, 1024-10240) [default:
    /// 1024].
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u32).range(1024..=10240))]
    pub max_record_size_kib: Option<u32>,
    /// Create the stream `ON_DEMAND` with `RecordDistributionStrategy` `AUTO`: the service
    /// places records whatever their keys, and lines without a key are sent without one.
    #[arg(long)]
    pub auto_distribution: bool,
    /// Shard count of the scheduled reshard.
    #[arg(long, value_name = "N", requires = "reshard_after_ms",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub reshard_to: Option<u32>,
}

impl SimArgs {
    /// Names of the options given, for the error when no simulator runs.
    fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut check = |set: bool, name| {
            if set {
                v.push(name)
            }
        };
        check(self.shards.is_some(), "--shards");
        check(self.no_limits, "--no-limits");
        check(
            self.internal_failure_rate.is_some(),
            "--internal-failure-rate",
        );
        check(self.http_500_rate.is_some(), "--http-500-rate");
        check(self.http_503_rate.is_some(), "--http-503-rate");
        check(self.latency_ms.is_some(), "--latency-ms");
        check(self.latency_jitter_ms.is_some(), "--latency-jitter-ms");
        check(
            self.drop_connection_rate.is_some(),
            "--drop-connection-rate",
        );
        check(
            self.competing_writer_share.is_some(),
            "--competing-writer-share",
        );
        check(self.reshard_after_ms.is_some(), "--reshard-after-ms");
        check(self.max_record_size_kib.is_some(), "--max-record-size-kib");
        check(self.auto_distribution, "--auto-distribution");
        v
    }
}

/// How the result is shown.
#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Failures listed per error code (and invalid lines listed) in the report.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub show_failures: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(match cli.verbose {
            0 => tracing_subscriber::filter::LevelFilter::WARN,
            1 => tracing_subscriber::filter::LevelFilter::INFO,
            _ => tracing_subscriber::filter::LevelFilter::DEBUG,
        })
        .init();
    let Command::Produce(args) = cli.command;
    if args.target.endpoint_url.is_some() || args.target.aws {
        let given = args.sim.given();
        if !given.is_empty() {
            eprintln!(
                "error: {} only apply to the embedded simulator (without --endpoint-url and --aws)",
                given.join(", ")
            );
            return ExitCode::from(EXIT_USAGE);
        }
        if args.target.stream.is_none() {
            eprintln!("error: --stream is required with --endpoint-url or --aws");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    if args.input.format == Format::Lines
        && (args.input.key_field.is_some()
            || args.input.ehk_field.is_some()
            || args.input.stream_field.is_some())
    {
        eprintln!("error: --key-field, --ehk-field and --stream-field need --format ndjson");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let json = args.output.json;
    match runtime.block_on(produce::run(*args)) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("error: cannot encode the report: {e}"),
                }
            } else {
                print!("{}", report.human());
            }
            ExitCode::from(if report.success {
                EXIT_OK
            } else {
                EXIT_INCOMPLETE
            })
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}
