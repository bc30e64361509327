//! The run: feed records into the producer with backpressure, resolve their futures as they
//! finish, and build the report.
//!
//! Memory stays bounded whatever the input size: the reader thread is at most a channel's
//! capacity ahead, `Producer::add().await` waits while the producer holds `max_buffered_records`,
//! and the tracker task resolves futures as soon as they finish (so the futures alive at once
//! are about the records the producer holds).

use crate::input::{Item, Source};
use crate::report::{
    thousands, Example, FailureGroup, Histogram, Latency, Report, SettingsSeen, ShardReport,
    StreamReport,
};
use crate::{target, OnOff, OrderingArg, ProduceArgs, ScopeArg};
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use kinesis_producer::{
    AddError, AggregationScope, BuildError, Ordering, PendingRecord, Producer, RecordError,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Invalid lines echoed to stderr before the rest are only counted.
const MAX_INVALID_ECHOED: u64 = 1000;

/// An accepted record on its way to the tracker.
struct Tracked {
    line: u64,
    /// The stream it was sent to (`None`: the producer's).
    stream: Option<Arc<str>>,
    size: usize,
    added: Instant,
    pending: PendingRecord,
}

/// What the tracker saw.
#[derive(Default)]
struct Outcomes {
    put: u64,
    failed: u64,
    bytes_put: u64,
    latency: Histogram,
    failures: BTreeMap<String, FailureGroup>,
    /// (put, failed, bytes put) by stream (`None`: the producer's own).
    by_stream: HashMap<Option<Arc<str>>, (u64, u64, u64)>,
}

/// The report's name for a failure.
fn failure_code(e: &RecordError) -> String {
    match e {
        RecordError::Rejected { code, .. } => code.to_string(),
        RecordError::Expired { .. } => "RecordExpired".into(),
        RecordError::ShutDown { .. } => "ProducerShutDown".into(),
        _ => "Other".into(),
    }
}

/// One row per stream the records went to: outcomes as the tracker saw them, Kinesis
/// counters from the producer (for streams it still serves).
fn stream_rows(
    producer: &Producer,
    own: &str,
    by_stream: HashMap<Option<Arc<str>>, (u64, u64, u64)>,
) -> Vec<StreamReport> {
    let mut rows: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (stream, (put, failed, bytes)) in by_stream {
        let name = stream.map_or_else(|| own.to_string(), |s| s.to_string());
        let row = rows.entry(name).or_default();
        *row = (row.0 + put, row.1 + failed, row.2 + bytes);
    }
    rows.into_iter()
        .map(|(stream, (records_put, records_failed, bytes_put))| {
            let stats = producer.stream_stats(&stream);
            StreamReport {
                kinesis_records_put: stats.as_ref().map(|s| s.kinesis_records_put),
                throttles: stats.as_ref().map(|s| s.throttles),
                stream,
                records_put,
                records_failed,
                bytes_put,
            }
        })
        .collect()
}

/// Resolves pending records as they finish, until the feeder is done and nothing is pending.
async fn track(
    mut rx: mpsc::UnboundedReceiver<Tracked>,
    progress: ProgressBar,
    examples: usize,
) -> Outcomes {
    let mut out = Outcomes::default();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((t, result)) = pending.next(), if !pending.is_empty() => {
                let t: Tracked = t;
                progress.inc(1);
                let row = out.by_stream.entry(t.stream.clone()).or_default();
                match &result {
                    Ok(_) => {
                        row.0 += 1;
                        row.2 += t.size as u64;
                    }
                    Err(_) => row.1 += 1,
                }
                match result {
                    Ok(_) => {
                        out.put += 1;
                        out.bytes_put += t.size as u64;
                        out.latency.record(t.added.elapsed());
                    }
                    Err(e) => {
                        out.failed += 1;
                        let group = out.failures.entry(failure_code(&e)).or_default();
                        group.count += 1;
                        if group.examples.len() < examples {
                            group.examples.push(Example { line: t.line, message: e.to_string() });
                        }
                        progress.set_message(format!("{} failed", out.failed));
                    }
                }
            }
            msg = rx.recv(), if open => match msg {
                Some(mut t) => pending.push(async move {
                    let result = (&mut t.pending).await;
                    (t, result)
                }),
                None => open = false,
            },
            else => break,
        }
    }
    out
}

fn progress_bar(len: Option<u64>, quiet: bool) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let (bar, template) = match len {
        Some(n) => (
            ProgressBar::with_draw_target(Some(n), target),
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records ({rate}, eta {eta}) {msg}",
        ),
        None => (
            ProgressBar::with_draw_target(None, target),
            "{spinner} [{elapsed_precise}] {human_pos} records ({rate}) {msg}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/s", thousands(state.per_sec().round() as u64));
            },
        ));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn build_producer(args: &ProduceArgs, target: &target::Target) -> Result<Producer, String> {
    let p = &args.producer;
    let mut b = Producer::builder();
    b = if target.stream.starts_with("arn:") {
        b.stream_arn(&target.stream)
    } else {
        b.stream_name(&target.stream)
    };
    b = b
        .aggregation(p.aggregation == OnOff::On)
        .aggregation_scope(match p.aggregation_scope {
            ScopeArg::Shard => AggregationScope::Shard,
            ScopeArg::PartitionKey => AggregationScope::PartitionKey,
        })
        .ordering(match p.ordering {
            OrderingArg::None => Ordering::None,
            OrderingArg::PerShard => Ordering::PerShard,
        });
    if let Some(v) = p.rate_limit_percent {
        b = b.rate_limit_percent(v);
    }
    if let Some(v) = p.max_buffered_time_ms {
        b = b.max_buffered_time(Duration::from_millis(v));
    }
    if let Some(v) = p.ttl_ms {
        b = b.record_ttl(Duration::from_millis(v));
    }
    if let Some(v) = p.max_in_flight {
        b = b.max_in_flight(v);
    }
    if let Some(v) = p.max_buffered_records {
        b = b.max_buffered_records(v);
    }
    if let Some(v) = p.settings_refresh_ms {
        b = b.stream_settings_refresh_interval(Duration::from_millis(v));
    }
    if target.no_limits {
        b = b.rate_limiting(false);
    }
    b.build(&target.sdk_config).await.map_err(|e| match e {
        BuildError::StreamNotFound { .. } => e.to_string(),
        _ => format!("stream {}: {e}", target.stream),
    })
}

/// How often the report's watcher looks at the stream's settings.
const SETTINGS_WATCH: Duration = Duration::from_millis(50);

/// Records each change of the stream's settings the producer follows during the run.
struct SettingsWatch {
    seen: Arc<Mutex<Vec<SettingsSeen>>>,
    task: tokio::task::JoinHandle<()>,
    start: SettingsSeen,
    started: Instant,
}

impl SettingsWatch {
    fn start(producer: Producer, start: SettingsSeen) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (out, first) = (seen.clone(), start.clone());
        let task = tokio::spawn(async move {
            let mut last = first;
            loop {
                tokio::time::sleep(SETTINGS_WATCH).await;
                let at = started.elapsed().as_secs_f64();
                let now = SettingsSeen::of(producer.stream_settings(), at);
                if !now.same_settings(&last) {
                    out.lock().expect("not poisoned").push(now.clone());
                    last = now;
                }
            }
        });
        SettingsWatch {
            seen,
            task,
            start,
            started,
        }
    }

    /// The changes seen, the settings in force at the end included.
    fn finish(self, producer: &Producer) -> Vec<SettingsSeen> {
        self.task.abort();
        let mut seen = std::mem::take(&mut *self.seen.lock().expect("not poisoned"));
        let end = SettingsSeen::of(
            producer.stream_settings(),
            self.started.elapsed().as_secs_f64(),
        );
        if !end.same_settings(seen.last().unwrap_or(&self.start)) {
            seen.push(end);
        }
        seen
    }
}

/// Runs `kpl produce`. `Err` only when the run cannot start.
pub async fn run(args: ProduceArgs) -> Result<Report, String> {
    let mut source = Source::open(&args.input)?;
    let target = target::connect(&args.target, &args.sim).await?;
    let producer = build_producer(&args, &target).await?;
    if producer.stream_settings().auto_distribution() {
        // The service places records itself: a line without a key is sent without one.
        source.send_unkeyed();
    }
    let settings_at_start = SettingsSeen::of(producer.stream_settings(), 0.0);
    let watch = SettingsWatch::start(producer.clone(), settings_at_start.clone());
    target.inject_faults()?;
    let examples = args.output.show_failures;

    let progress = progress_bar(source.len(), args.output.quiet);
    let mut items = source.spawn();
    let (tracked_tx, tracked_rx) = mpsc::unbounded_channel();
    let tracker = tokio::spawn(track(tracked_rx, progress.clone(), examples));

    let mut report = Report {
        stream: target.stream.clone(),
        target: target.description.clone(),
        aggregation: args.producer.aggregation == OnOff::On,
        aggregation_scope: args.producer.aggregation_scope.as_str(),
        stream_settings: settings_at_start,
        ..Report::default()
    };
    let invalid = |report: &mut Report, line: u64, message: String| {
        report.invalid_lines += 1;
        if report.invalid_lines <= MAX_INVALID_ECHOED {
            progress.suspend(|| eprintln!("line {line}: {message}"));
        } else if report.invalid_lines == MAX_INVALID_ECHOED + 1 {
            progress.suspend(|| eprintln!("further invalid lines are only counted"));
        }
        if report.invalid_examples.len() < examples {
            report.invalid_examples.push(Example { line, message });
        }
    };

    let started = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                report.interrupted = true;
                progress.suspend(|| eprintln!("interrupted: finishing the records already added (Ctrl-C again to abort)"));
                tokio::spawn(async {
                    let _ = tokio::signal::ctrl_c().await;
                    std::process::exit(130);
                });
                break;
            }
            item = items.recv() => item,
        };
        let Some(item) = item else { break };
        report.records_read += 1;
        match item {
            Item::Record { line, record } => {
                let size = record.size();
                let stream = record.stream.clone();
                let added = Instant::now();
                match producer.add(record).await {
                    Ok(pending) => {
                        report.records_added += 1;
                        let _ = tracked_tx.send(Tracked {
                            line,
                            stream,
                            size,
                            added,
                            pending,
                        });
                    }
                    Err(AddError::Invalid { error, .. }) => {
                        invalid(&mut report, line, error.to_string())
                    }
                    Err(e) => {
                        report.read_error = Some(format!("line {line}: {e}"));
                        break;
                    }
                }
            }
            Item::Invalid { line, reason } => invalid(&mut report, line, reason),
            Item::ReadError(e) => {
                report.records_read -= 1;
                progress.suspend(|| eprintln!("error: {e}"));
                report.read_error = Some(e);
                break;
            }
        }
    }
    drop(items); // stops the reader if the loop ended early
    drop(tracked_tx);
    if producer.shutdown().await.is_err() {
        report
            .read_error
            .get_or_insert_with(|| "the producer stopped unexpectedly".into());
    }
    let outcomes = tracker
        .await
        .map_err(|e| format!("tracker task failed: {e}"))?;
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let stats = producer.stats();
    report.settings_changes = watch.finish(&producer);
    report.record_size_limit = producer.max_record_size();

    let secs = elapsed.as_secs_f64().max(1e-9);
    report.records_put = outcomes.put;
    report.records_failed = outcomes.failed;
    report.bytes_put = outcomes.bytes_put;
    report.elapsed_secs = (secs * 1000.0).round() / 1000.0;
    report.records_per_sec = (outcomes.put as f64 / secs).round();
    report.mib_per_sec = (outcomes.bytes_put as f64 / secs / 1_048_576.0 * 1000.0).round() / 1000.0;
    report.kinesis_records_put = stats.kinesis_records_put;
    report.kinesis_bytes_put = stats.bytes_put;
    report.requests = stats.requests;
    report.retries = stats.retries;
    report.throttles = stats.throttles;
    report.shard_map_refreshes = stats.shard_map_refreshes;
    report.latency = Latency::of(&outcomes.latency);
    // Shard budgets hold one second of rate: a shorter window would overstate utilization.
    let window = elapsed.max(Duration::from_secs(1));
    let mut shards: Vec<ShardReport> = stats
        .shards
        .iter()
        .map(|s| ShardReport {
            shard_id: s.shard_id.clone(),
            kinesis_records_put: s.kinesis_records_put,
            bytes_put: s.bytes_put,
            throttles: s.throttles,
            utilization_percent: (s.utilization(window) * 1000.0).round() / 10.0,
            rate_factor: (s.rate_factor * 1000.0).round() / 1000.0,
        })
        .collect();
    shards.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    report.shards = shards;
    report.failures = outcomes.failures;
    report.streams = stream_rows(&producer, &report.stream, outcomes.by_stream);
    report.success = !report.interrupted
        && report.read_error.is_none()
        && report.invalid_lines == 0
        && report.records_failed == 0
        && report.records_put == report.records_added;
    if let Some(sim) = target.sim {
        sim.shutdown().await;
    }
    Ok(report)
}
