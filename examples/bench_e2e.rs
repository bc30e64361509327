//! End-to-end benchmarks of the producer against kinesis-sim over real HTTP.
//!
//! ```text
//! cargo run --release --example bench_e2e -- <scenario> [options]
//!
//! scenarios (defaults in brackets):
//!   cpu        limits off, 64 shards, 100-byte records, as fast as possible [10 s]:
//!              user records/s, CPU s per million records (process, producer, simulator),
//!              peak RSS, and `floor_us_per_record`: the CPU of only the unavoidable work on
//!              the same records (see `floor_us_per_record`), with the producer's ratio to it,
//!              and `signing_us_per_record`: the SHA-256 of the floor's request bodies that
//!              SigV4 requires, which the floor leaves out
//!   accuracy   limits on, 8 shards, 2x capacity [60 s]; aggregated 1 KB records by default,
//!              `--aggregation off` switches to 100-byte records: per-shard utilization and
//!              the fraction of PutRecords entries throttled
//!   shared     two producers on one 8-shard stream, each offering 1x capacity [30 s]
//!   latency    10 % of capacity, max_buffered_time 100 ms [20 s]: add-to-ack p50/p99
//!   overload   10x capacity, max_buffered_bytes 64 MiB [60 s]: peak RSS
//!   fleet      N independent producers (each its own engine and client) on one 8-shard stream,
//!              2x capacity in total split evenly [40 s, warm-up 10 s]: per-shard utilization,
//!              throttled fraction, Jain's index of the producers' accepted rates, add-to-ack
//!              p99 (one record in 64 tracked); `--join-leave` adds a producer at T/3 and
//!              removes one at 2T/3 and reports how long the figures took to return within
//!              bounds (`reconverge_s`); code in `bench_e2e/fleet.rs`
//!
//! options:
//!   --seconds S          run length
//!   --warmup S           seconds excluded from the utilization window [min(5, S/6)]
//!   --aggregation on|off [on]
//!   --record-size N      data bytes per record
//!   --shards N           shards of the stream (of each stream)
//!   --streams N          cpu: N streams of --shards shards each, one producer writing to all
//!                        (records go round-robin, `UserRecord::to`) [1]
//!   --keys N             distinct partition keys [10000]
//!   --load X             offered load as a multiple of the stream's capacity
//!   --tracked            use add() (futures dropped) instead of add_untracked()
//!   --heap               cpu: count live heap bytes through the run and report the peak
//!                        (peak_heap_growth_mib; an atomic per allocation, so CPU reads higher)
//!   --endpoint URL       use an external endpoint (e.g. the kinesis-sim binary) instead of the
//!   --stream NAME        in-process simulator; the stream must exist [stream: bench]
//!   --producers N        fleet: producers [8]
//!   --throttle-model M   in-process simulator's limits: bucket (token bucket) or window
//!                        (one-second windows) [bucket]
//!   --join-leave         fleet: a producer joins at T/3, one leaves at 2T/3
//!   --series PATH        fleet: write one JSON line per second (per-producer accepted rates,
//!                        rate factors, throttled fraction) for scripts/chart_fleet.py
//!   --max-buffered-records N, --max-request-bytes N, --max-in-flight N
//!                        the producer's settings, when not the defaults
//! ```
//!
//! Every scenario prints one JSON line on stdout. CPU time comes from `getrusage` (whole
//! process) and `/proc/self/task/*/stat` (the in-process simulator runs on its own runtime,
//! threads named `kinesis-sim`, so its share can be taken out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{Credentials, Region};
use bytes::Bytes;
use kinesis_producer::{Producer, ProducerBuilder, Stats, UserRecord};
use kinesis_sim::{RateLimits, SimConfig, Simulator, StreamCounters, ThrottleModel};

#[path = "bench_e2e/fleet.rs"]
mod fleet;
#[path = "bench_e2e/floor.rs"]
mod floor;
use floor::{encode_aggregate, json_entry};

const MIB: f64 = 1_048_576.0;
const SHARD_RECORDS: f64 = 1_000.0;
const SIM_THREAD: &str = "kinesis-sim";

#[derive(Clone, Debug)]
struct Opts {
    scenario: String,
    seconds: f64,
    warmup: Option<f64>,
    aggregation: bool,
    record_size: usize,
    shards: u32,
    streams: usize,
    keys: usize,
    load: Option<f64>,
    tracked: bool,
    /// Count live heap bytes through the `cpu` run (costs an atomic per allocation).
    heap: bool,
    endpoint: Option<String>,
    stream: String,
    producers: Option<usize>,
    throttle_model: ThrottleModel,
    join_leave: bool,
    series: Option<String>,
    /// The producer's `max_buffered_records`, `max_request_bytes` and `max_in_flight`, when
    /// not the defaults.
    max_buffered_records: Option<usize>,
    max_request_bytes: Option<usize>,
    max_in_flight: Option<usize>,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_e2e <cpu|accuracy|shared|latency|overload|fleet> [--seconds S] \
         [--warmup S] [--aggregation on|off] [--record-size N] [--shards N] [--streams N] \
         [--keys N] [--load X] [--tracked] [--heap] [--endpoint URL] [--stream NAME] [--producers N] \
         [--throttle-model bucket|window] [--join-leave] [--series PATH] \
         [--max-buffered-records N] [--max-request-bytes N] [--max-in-flight N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| usage());
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut tracked = false;
    let mut heap = false;
    let mut join_leave = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tracked" => tracked = true,
            "--heap" => heap = true,
            "--join-leave" => join_leave = true,
            "--seconds"
            | "--warmup"
            | "--aggregation"
            | "--record-size"
            | "--shards"
            | "--streams"
            | "--keys"
            | "--load"
            | "--endpoint"
            | "--stream"
            | "--producers"
            | "--throttle-model"
            | "--series"
            | "--max-buffered-records"
            | "--max-request-bytes"
            | "--max-in-flight" => {
                let v = args.next().unwrap_or_else(|| usage());
                flags.insert(a.trim_start_matches("--").to_string(), v);
            }
            _ => usage(),
        }
    }
    let num =
        |k: &str| -> Option<f64> { flags.get(k).map(|v| v.parse().unwrap_or_else(|_| usage())) };
    let aggregation = match flags.get("aggregation").map(String::as_str) {
        None | Some("on") | Some("true") => true,
        Some("off") | Some("false") => false,
        _ => usage(),
    };
    // Per-scenario defaults: (seconds, record size, shards).
    let (seconds, record_size, shards) = match scenario.as_str() {
        "cpu" => (10.0, 100, 64),
        "accuracy" => (60.0, if aggregation { 1024 } else { 100 }, 8),
        "shared" => (30.0, if aggregation { 1024 } else { 100 }, 8),
        "latency" => (20.0, 100, 8),
        "overload" => (60.0, 1024, 8),
        "fleet" => (40.0, if aggregation { 1024 } else { 100 }, 8),
        _ => usage(),
    };
    let throttle_model = match flags.get("throttle-model") {
        None => ThrottleModel::TokenBucket,
        Some(m) => ThrottleModel::parse(m).unwrap_or_else(|| usage()),
    };
    Opts {
        scenario,
        seconds: num("seconds").unwrap_or(seconds),
        warmup: num("warmup"),
        aggregation,
        record_size: num("record-size").map_or(record_size, |v| v as usize),
        shards: num("shards").map_or(shards, |v| v as u32),
        streams: num("streams").map_or(1, |v| (v as usize).max(1)),
        keys: num("keys").map_or(10_000, |v| v as usize),
        load: num("load"),
        tracked,
        heap,
        endpoint: flags.get("endpoint").cloned(),
        stream: flags
            .get("stream")
            .cloned()
            .unwrap_or_else(|| "bench".into()),
        producers: num("producers").map(|v| v as usize),
        throttle_model,
        join_leave,
        series: flags.get("series").cloned(),
        max_buffered_records: num("max-buffered-records").map(|v| v as usize),
        max_request_bytes: num("max-request-bytes").map(|v| v as usize),
        max_in_flight: num("max-in-flight").map(|v| v as usize),
    }
}

// ---- measurement helpers ------------------------------------------------------------------

/// The system allocator, counting live heap bytes while [`COUNTING`] is set (around `build`,
/// to measure what the producer keeps per shard, and through the run with `--heap`; one
/// relaxed load otherwise).
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);
/// Highest [`LIVE`] seen (`--heap`).
static PEAK: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

/// Adds `delta` to the live count and keeps its peak.
fn count(delta: isize) {
    let live = LIVE.fetch_add(delta, AtomicOrdering::Relaxed) + delta;
    if delta > 0 {
        PEAK.fetch_max(live, AtomicOrdering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if COUNTING.load(AtomicOrdering::Relaxed) {
            count(layout.size() as isize);
        }
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if COUNTING.load(AtomicOrdering::Relaxed) {
            count(-(layout.size() as isize));
        }
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(AtomicOrdering::Relaxed) {
            count(new_size as isize - layout.size() as isize);
        }
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Net heap bytes allocated (and not freed) while `f` runs, by any thread.
fn heap_kept<T>(f: impl FnOnce() -> T) -> (T, isize) {
    LIVE.store(0, AtomicOrdering::SeqCst);
    COUNTING.store(true, AtomicOrdering::SeqCst);
    let out = f();
    COUNTING.store(false, AtomicOrdering::SeqCst);
    (out, LIVE.load(AtomicOrdering::SeqCst))
}

/// Process CPU seconds (user + system) and peak RSS in KiB, from getrusage.
fn rusage() -> (f64, u64) {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss as u64)
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
fn thread_cpu(prefix: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in dir.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the command name's closing parenthesis: state is field 3, utime 14,
        // stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 {
            let u: f64 = f[11].parse().unwrap_or(0.0);
            let s: f64 = f[12].parse().unwrap_or(0.0);
            total += (u + s) / ticks;
        }
    }
    total
}

#[derive(Clone, Copy)]
struct Cpu {
    process: f64,
    sim: f64,
}

fn cpu_now() -> Cpu {
    Cpu {
        process: rusage().0,
        sim: thread_cpu(SIM_THREAD),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn json_list(xs: &[f64]) -> String {
    let parts: Vec<String> = xs.iter().map(|x| format!("{}", r3(*x))).collect();
    format!("[{}]", parts.join(","))
}

// ---- environment --------------------------------------------------------------------------

struct Env {
    /// The in-process simulator and its runtime (`None` with `--endpoint`).
    sim: Option<(Simulator, tokio::runtime::Runtime)>,
    endpoint: String,
}

fn start_env(o: &Opts, limits: bool) -> Env {
    if let Some(endpoint) = &o.endpoint {
        return Env {
            sim: None,
            endpoint: endpoint.clone(),
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SIM_THREAD)
        .enable_all()
        .build()
        .expect("simulator runtime");
    let cfg = SimConfig {
        limits: if limits {
            RateLimits {
                model: o.throttle_model,
                ..RateLimits::default()
            }
        } else {
            RateLimits::unlimited()
        },
        store_records: false,
        ..SimConfig::default()
    };
    let sim = rt.block_on(Simulator::start(cfg)).expect("start simulator");
    for name in stream_names(o) {
        sim.create_stream(&name, o.shards).expect("create stream");
    }
    let endpoint = sim.endpoint_url();
    Env {
        sim: Some((sim, rt)),
        endpoint,
    }
}

/// The streams of a run: `--stream`, then `<stream>-1` … for `--streams N`.
fn stream_names(o: &Opts) -> Vec<String> {
    (0..o.streams)
        .map(|i| match i {
            0 => o.stream.clone(),
            i => format!("{}-{i}", o.stream),
        })
        .collect()
}

impl Env {
    fn counters(&self, stream: &str) -> Option<StreamCounters> {
        self.sim.as_ref().map(|(s, _)| s.counters(stream))
    }

    fn shutdown(self) {
        if let Some((sim, rt)) = self.sim {
            rt.block_on(sim.shutdown());
        }
    }
}

fn client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "bench"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

/// Per-shard deltas between two counter snapshots: (records, bytes, throttled records).
fn deltas(a: &StreamCounters, b: &StreamCounters) -> Vec<(f64, f64, f64)> {
    b.shards
        .iter()
        .map(|s| {
            let before = a.shards.iter().find(|x| x.shard_id == s.shard_id);
            let (r, by, t) = before.map_or((0, 0, 0), |x| {
                (x.accepted_records, x.accepted_bytes, x.throttled_records)
            });
            (
                (s.accepted_records - r) as f64,
                (s.accepted_bytes - by) as f64,
                (s.throttled_records - t) as f64,
            )
        })
        .collect()
}

// ---- load ---------------------------------------------------------------------------------

struct Load {
    keys: Arc<Vec<String>>,
    data: Bytes,
    /// Where records go, round-robin: `None` is the producer's own stream.
    streams: Arc<Vec<Option<Arc<str>>>>,
}

impl Load {
    fn new(o: &Opts) -> Self {
        Load {
            keys: Arc::new((0..o.keys).map(|i| format!("key-{i:05}")).collect()),
            data: Bytes::from(vec![0x5Au8; o.record_size]),
            streams: Arc::new(
                stream_names(o)
                    .into_iter()
                    .enumerate()
                    .map(|(i, name)| (i > 0).then(|| name.into()))
                    .collect(),
            ),
        }
    }

    /// Capacity of a stream of `shards` shards in user records/s for these records.
    fn capacity(&self, o: &Opts) -> f64 {
        let size = (self.data.len() + self.keys[0].len()) as f64;
        let per_shard = if o.aggregation {
            MIB / size
        } else {
            (MIB / size).min(SHARD_RECORDS)
        };
        per_shard * o.shards as f64
    }
}

/// Latencies (add call to acknowledgement) in seconds, with the time each record was added.
type Latencies = Arc<Mutex<Vec<(Instant, f64)>>>;

/// The latencies of records added at least `warmup` seconds after `start`, in ms, sorted.
fn latencies_ms(latencies: &Latencies, start: Instant, warmup: f64) -> Vec<f64> {
    let mut xs: Vec<f64> = latencies
        .lock()
        .expect("latencies")
        .iter()
        .filter(|(t, _)| t.duration_since(start).as_secs_f64() >= warmup)
        .map(|(_, d)| d * 1000.0)
        .collect();
    xs.sort_by(f64::total_cmp);
    xs
}

/// Adds records until `until` at `rate` records/s (`None`: as fast as possible). Returns the
/// number of records added. With `latencies`, every record's future is awaited in its own task.
#[allow(clippy::too_many_arguments)]
async fn feed(
    producer: Producer,
    keys: Arc<Vec<String>>,
    data: Bytes,
    streams: Arc<Vec<Option<Arc<str>>>>,
    rate: Option<f64>,
    until: Instant,
    tracked: bool,
    latencies: Option<Latencies>,
) -> u64 {
    let start = Instant::now();
    let mut sent: u64 = 0;
    let n = keys.len();
    // A stride through the keys so that consecutive records rarely share a key.
    let stride = 7919 % n.max(1);
    let mut k = 0usize;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let target = match rate {
            Some(r) => ((now - start).as_secs_f64() * r) as u64,
            None => sent + 1024,
        };
        if sent >= target {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let burst = (target - sent).min(4096);
        for _ in 0..burst {
            let mut record = UserRecord::new(keys[k].as_str(), data.clone());
            if let Some(stream) = &streams[sent as usize % streams.len()] {
                record = record.to(stream.clone());
            }
            k += stride;
            if k >= n {
                k -= n;
            }
            if let Some(lat) = &latencies {
                let t0 = Instant::now();
                let pending = producer.add(record).await.expect("add");
                let lat = lat.clone();
                tokio::spawn(async move {
                    if pending.await.is_ok() {
                        let d = t0.elapsed().as_secs_f64();
                        lat.lock().expect("latencies").push((t0, d));
                    }
                });
            } else if tracked {
                drop(producer.add(record).await.expect("add"));
            } else {
                producer.add_untracked(record).await.expect("add");
            }
            sent += 1;
        }
    }
    sent
}

struct Run {
    producers: Vec<Producer>,
    /// Net heap bytes `build` kept (the producer's state for the stream, its shards included).
    build_heap: isize,
    env: Env,
    rt: tokio::runtime::Runtime,
    load: Load,
}

/// The runtime the producers' requests and the feeders run on (2 workers, as the machine has).
fn producer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("producer-rt")
        .enable_all()
        .build()
        .expect("producer runtime")
}

fn setup(
    o: &Opts,
    limits: bool,
    producers: usize,
    tune: impl Fn(ProducerBuilder) -> ProducerBuilder,
) -> Run {
    let env = start_env(o, limits);
    let rt = producer_runtime();
    let client = client(&env.endpoint);
    // Warm the client (connection, endpoint resolution) so that the first build's count holds
    // only the producer's own state.
    rt.block_on(client.list_shards().stream_name(o.stream.clone()).send())
        .expect("warm-up ListShards");
    let mut build_heap = 0;
    let producers = (0..producers)
        .map(|_| {
            let b = Producer::builder()
                .stream_name(o.stream.clone())
                .aggregation(o.aggregation)
                .rate_limiting(limits);
            let b = match o.max_buffered_records {
                Some(n) => b.max_buffered_records(n),
                None => b,
            };
            let b = match o.max_request_bytes {
                Some(n) => b.max_request_bytes(n),
                None => b,
            };
            let b = match o.max_in_flight {
                Some(n) => b.max_in_flight(n),
                None => b,
            };
            let (p, kept) = heap_kept(|| rt.block_on(tune(b).client(client.clone())));
            build_heap += kept;
            p.expect("build producer")
        })
        .collect();
    Run {
        producers,
        build_heap,
        env,
        rt,
        load: Load::new(o),
    }
}

impl Run {
    /// Feeds every producer at `rate` each for `seconds`; at `warmup` seconds and when the
    /// feeding time is up (before waiting for the feeders, whose last blocked `add`s may land
    /// later), takes simulator counter snapshots. Returns (records added, the snapshots with
    /// the measured seconds between them, the instant feeding ended).
    fn drive(
        &self,
        o: &Opts,
        rate: Option<f64>,
        warmup: f64,
        latencies: Option<Latencies>,
    ) -> (u64, Option<(StreamCounters, StreamCounters, f64)>, Instant) {
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(o.seconds);
        let handles: Vec<_> = self
            .producers
            .iter()
            .map(|p| {
                self.rt.spawn(feed(
                    p.clone(),
                    self.load.keys.clone(),
                    self.load.data.clone(),
                    self.load.streams.clone(),
                    rate,
                    until,
                    o.tracked,
                    latencies.clone(),
                ))
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(warmup.min(o.seconds)));
        let first = self.env.counters(&o.stream);
        let first_at = Instant::now();
        std::thread::sleep(until.saturating_duration_since(first_at));
        let last = self.env.counters(&o.stream);
        let interval = first_at.elapsed().as_secs_f64();
        let sent: u64 = self.rt.block_on(async {
            let mut total = 0;
            for h in handles {
                total += h.await.expect("feeder");
            }
            total
        });
        let end = Instant::now();
        let snaps = first.zip(last).map(|(a, b)| (a, b, interval));
        (sent, snaps, end)
    }

    fn flush(&self) {
        self.rt.block_on(async {
            for p in &self.producers {
                p.flush().await.expect("flush");
            }
        });
    }

    fn stats(&self) -> Vec<Stats> {
        self.producers.iter().map(Producer::stats).collect()
    }

    fn finish(self) {
        self.rt.block_on(async {
            for p in &self.producers {
                let _ = p.shutdown().await;
            }
        });
        drop(self.producers);
        self.env.shutdown();
        drop(self.rt);
    }
}

fn warmup(o: &Opts) -> f64 {
    o.warmup.unwrap_or((o.seconds / 6.0).min(5.0))
}

fn sum_stats(stats: &[Stats]) -> (u64, u64, u64, u64) {
    stats.iter().fold((0, 0, 0, 0), |acc, s| {
        (
            acc.0 + s.records_put,
            acc.1 + s.records_failed,
            acc.2 + s.kinesis_records_put,
            acc.3 + s.throttles,
        )
    })
}

// ---- the floor: the work no producer can skip -----------------------------------------

/// CPU seconds of the calling thread.
fn thread_cpu_now() -> f64 {
    // SAFETY: clock_gettime writes into the struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Microseconds of CPU per user record, single-threaded, for only the work any producer must
/// do on these records: the MD5 of each partition key (its shard), and then either
/// - aggregated: the KPL framing (magic, protobuf of keys and records) of aggregates of
///   `per_aggregate` records, the MD5 checksum of each, and the base64 and JSON of the request
///   bodies (one entry per aggregate, with its explicit hash key), or
/// - plain: the base64 and JSON of one entry per record,
///
/// in requests of at most 500 entries and 5 MiB. Not counted: SigV4 signing, HTTP, and all
/// bookkeeping (queues, futures, retries, limits). `per_aggregate` is what the measured run
/// formed (user records ÷ Kinesis records), so the floor covers the same Kinesis records.
///
/// Returns the floor and, apart from it, the SHA-256 of each request body that SigV4 signs
/// (Kinesis accepts no unsigned payload): work every producer does that the floor leaves out.
fn floor_us_per_record(
    load: &Load,
    n: usize,
    aggregation: bool,
    per_aggregate: usize,
) -> (f64, f64) {
    use md5::{Digest, Md5};
    use sha2::Sha256;
    let keys = &load.keys;
    let data = &load.data[..];
    let stride = 7919 % keys.len().max(1);
    let mut signing = 0.0;
    let t0 = thread_cpu_now();
    let mut body = String::new();
    let mut in_request = 0usize;
    let mut hashes = 0u128;
    let mut agg: Vec<u8> = Vec::new();
    let mut agg_keys: Vec<&str> = Vec::new();
    let mut k = 0usize;
    let new_request = |body: &mut String, in_request: &mut usize, signing: &mut f64| {
        if *in_request > 0 {
            body.push_str("]}");
            let t = thread_cpu_now();
            std::hint::black_box(<Sha256 as sha2::Digest>::digest(body.as_bytes()));
            *signing += thread_cpu_now() - t;
        }
        std::hint::black_box(&*body);
        body.clear();
        body.push_str("{\"StreamName\":\"bench\",\"Records\":[");
        *in_request = 0;
    };
    new_request(&mut body, &mut in_request, &mut signing);
    for i in 0..n {
        let key = keys[k].as_str();
        k = (k + stride) % keys.len();
        let hash = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
        hashes ^= hash;
        if !aggregation {
            if in_request == 500 || body.len() + data.len() * 4 / 3 > 5 << 20 {
                new_request(&mut body, &mut in_request, &mut signing);
            }
            json_entry(&mut body, data, key, None);
            in_request += 1;
            continue;
        }
        agg_keys.push(key);
        if agg_keys.len() < per_aggregate.max(1) && i + 1 < n {
            continue;
        }
        encode_aggregate(&mut agg, agg_keys.iter().map(|k| (k.as_bytes(), data)));
        if in_request == 500 || body.len() + agg.len() * 4 / 3 > 5 << 20 {
            new_request(&mut body, &mut in_request, &mut signing);
        }
        json_entry(&mut body, &agg, agg_keys[0], Some(hash));
        in_request += 1;
        agg_keys.clear();
    }
    new_request(&mut body, &mut in_request, &mut signing);
    std::hint::black_box(hashes);
    let per_record = |s: f64| s * 1e6 / n.max(1) as f64;
    (
        per_record(thread_cpu_now() - t0 - signing),
        per_record(signing),
    )
}

// ---- scenarios ----------------------------------------------------------------------------

fn scenario_cpu(o: &Opts) {
    let run = setup(o, false, 1, |b| b);
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    if o.heap {
        LIVE.store(0, AtomicOrdering::SeqCst);
        PEAK.store(0, AtomicOrdering::SeqCst);
        COUNTING.store(true, AtomicOrdering::SeqCst);
    }
    let (sent, _, _) = run.drive(o, None, 0.0, None);
    run.flush();
    COUNTING.store(false, AtomicOrdering::SeqCst);
    // The live heap's highest growth over the run (`--heap`; blocks allocated before the run
    // and freed during it make this an underestimate of at most what existed at the start).
    let peak_heap = o
        .heap
        .then(|| PEAK.load(AtomicOrdering::SeqCst) as f64 / MIB);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_now();
    let stats = run.stats();
    let (put, failed, krecords, throttles) = sum_stats(&stats);
    let requests: u64 = stats.iter().map(|s| s.requests).sum();
    let (_, rss_kib) = rusage();
    let million = put.max(1) as f64 / 1e6;
    let process = cpu1.process - cpu0.process;
    let sim = cpu1.sim - cpu0.sim;
    let producer_us = (process - sim) / million;
    // The floor on the same records: as many as the run put (at most 2 million), grouped as
    // the run grouped them.
    let per_aggregate = (put as f64 / krecords.max(1) as f64).round() as usize;
    let floor_n = (put as usize).clamp(1, 2_000_000);
    let (floor, signing) = floor_us_per_record(&run.load, floor_n, o.aggregation, per_aggregate);
    println!(
        "{{\"scenario\":\"cpu\",\"aggregation\":{},\"tracked\":{},\"external_endpoint\":{},\
         \"streams\":{},\"shards\":{},\"record_size\":{},\"keys\":{},\"seconds\":{},\"records_added\":{sent},\
         \"records_put\":{put},\"records_failed\":{failed},\"kinesis_records\":{krecords},\
         \"requests\":{requests},\"throttles\":{throttles},\"user_records_per_sec\":{},\
         \"cpu_s_per_million_process\":{},\"cpu_s_per_million_producer\":{},\
         \"cpu_s_per_million_sim\":{},\"producer_us_per_record\":{},\
         \"floor_us_per_record\":{},\"producer_to_floor\":{},\"signing_us_per_record\":{},\
         \"peak_rss_mib\":{},\
         \"peak_heap_growth_mib\":{},\"build_heap_bytes\":{}}}",
        o.aggregation,
        o.tracked,
        o.endpoint.is_some(),
        o.streams,
        o.shards,
        o.record_size,
        o.keys,
        r3(elapsed),
        (put as f64 / elapsed).round(),
        r3(process / million),
        r3(producer_us),
        r3(sim / million),
        r3(producer_us),
        r3(floor),
        r3(producer_us / floor),
        r3(signing),
        r3(rss_kib as f64 / 1024.0),
        peak_heap.map_or("null".to_string(), |m| r3(m).to_string()),
        run.build_heap,
    );
    eprintln!(
        "producer {:.3} us/record = {:.2} x floor ({:.3} us/record)",
        producer_us,
        producer_us / floor,
        floor
    );
    run.finish();
}

/// Utilization summary from simulator counters over `secs`: per-shard bytes and records
/// fractions, and the throttled share of entries.
fn utilization(
    first: &StreamCounters,
    last: &StreamCounters,
    secs: f64,
) -> (Vec<f64>, Vec<f64>, f64) {
    let d = deltas(first, last);
    let bytes: Vec<f64> = d.iter().map(|x| x.1 / secs / MIB).collect();
    let records: Vec<f64> = d.iter().map(|x| x.0 / secs / SHARD_RECORDS).collect();
    let accepted: f64 = d.iter().map(|x| x.0).sum();
    let throttled: f64 = d.iter().map(|x| x.2).sum();
    (bytes, records, throttled / (accepted + throttled).max(1.0))
}

fn min_mean(xs: &[f64]) -> (f64, f64) {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    (min, xs.iter().sum::<f64>() / xs.len().max(1) as f64)
}

fn scenario_limited(o: &Opts, producers: usize, default_load: f64) {
    let run = setup(o, true, producers, |b| b);
    let load = o.load.unwrap_or(default_load);
    let rate = run.load.capacity(o) * load;
    let w = warmup(o);
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    let (sent, snaps, _) = run.drive(o, Some(rate), w, None);
    let stats = run.stats();
    // The whole run's rate: records put over the measured time until the stats were read.
    let elapsed = t0.elapsed().as_secs_f64();
    let (put, failed, krecords, throttles) = sum_stats(&stats);
    let requests: u64 = stats.iter().map(|s| s.requests).sum();
    let cpu1 = cpu_now();
    let mut fields = format!(
        "\"scenario\":\"{}\",\"aggregation\":{},\"producers\":{producers},\"shards\":{},\
         \"record_size\":{},\"seconds\":{},\"warmup\":{},\"offered_load\":{load},\
         \"offered_records_per_sec_each\":{},\"records_added\":{sent},\"records_put\":{put},\
         \"records_failed\":{failed},\"user_records_per_sec\":{},\"kinesis_records\":{krecords},\
         \"requests\":{requests},\"producer_throttle_fraction\":{},\"cpu_s\":{},\
         \"cpu_s_sim\":{}",
        o.scenario,
        o.aggregation,
        o.shards,
        o.record_size,
        o.seconds,
        w,
        rate.round(),
        (put as f64 / elapsed).round(),
        (throttles as f64 / (krecords + throttles).max(1) as f64 * 1e5).round() / 1e5,
        r3(cpu1.process - cpu0.process),
        r3(cpu1.sim - cpu0.sim),
    );
    if let Some((first, last, secs)) = snaps {
        let (bytes, records, throttled) = utilization(&first, &last, secs);
        let util: Vec<f64> = bytes.iter().zip(&records).map(|(b, r)| b.max(*r)).collect();
        let (bmin, bmean) = min_mean(&bytes);
        let (rmin, rmean) = min_mean(&records);
        let (umin, umean) = min_mean(&util);
        fields.push_str(&format!(
            ",\"window_s\":{},\"shard_bytes_fraction\":{},\"shard_records_fraction\":{},\
             \"bytes_fraction_min\":{},\"bytes_fraction_mean\":{},\"records_fraction_min\":{},\
             \"records_fraction_mean\":{},\"utilization_min\":{},\"utilization_mean\":{},\
             \"throttle_fraction\":{}",
            r3(secs),
            json_list(&bytes),
            json_list(&records),
            r3(bmin),
            r3(bmean),
            r3(rmin),
            r3(rmean),
            r3(umin),
            r3(umean),
            (throttled * 1e5).round() / 1e5,
        ));
    }
    println!("{{{fields}}}");
    run.finish();
}

fn scenario_latency(o: &Opts) {
    let run = setup(o, true, 1, |b| {
        b.max_buffered_time(Duration::from_millis(100))
    });
    let load = o.load.unwrap_or(0.1);
    let rate = run.load.capacity(o) * load;
    let lat: Latencies = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let w = o.warmup.unwrap_or(1.0);
    let (sent, _, _) = run.drive(o, Some(rate), 0.0, Some(lat.clone()));
    run.flush();
    // Let the acknowledgement tasks finish.
    std::thread::sleep(Duration::from_millis(200));
    let xs = latencies_ms(&lat, start, w);
    let stats = run.stats();
    let (put, failed, _, throttles) = sum_stats(&stats);
    println!(
        "{{\"scenario\":\"latency\",\"aggregation\":{},\"shards\":{},\"record_size\":{},\
         \"seconds\":{},\"offered_load\":{load},\"offered_records_per_sec\":{},\
         \"records_added\":{sent},\"records_put\":{put},\"records_failed\":{failed},\
         \"throttles\":{throttles},\"samples\":{},\"p50_ms\":{},\"p90_ms\":{},\"p99_ms\":{},\
         \"max_ms\":{}}}",
        o.aggregation,
        o.shards,
        o.record_size,
        o.seconds,
        rate.round(),
        xs.len(),
        r3(percentile(&xs, 0.5)),
        r3(percentile(&xs, 0.9)),
        r3(percentile(&xs, 0.99)),
        r3(xs.last().copied().unwrap_or(f64::NAN)),
    );
    run.finish();
}

fn scenario_overload(o: &Opts) {
    const BUFFER: usize = 64 << 20;
    let run = setup(o, true, 1, |b| b.max_buffered_bytes(BUFFER));
    let load = o.load.unwrap_or(10.0);
    let rate = run.load.capacity(o) * load;
    let (_, rss_before) = rusage();
    // Sample the producer's buffer while it runs.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let p = run.producers[0].clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut max_bytes = 0u64;
            while !done.load(AtomicOrdering::Relaxed) {
                max_bytes = max_bytes.max(p.stats().bytes_pending);
                std::thread::sleep(Duration::from_millis(50));
            }
            max_bytes
        })
    };
    let (sent, snaps, _) = run.drive(o, Some(rate), warmup(o), None);
    done.store(true, AtomicOrdering::Relaxed);
    let max_pending = sampler.join().expect("sampler");
    let (_, rss_kib) = rusage();
    let stats = run.stats();
    let (put, failed, _, _) = sum_stats(&stats);
    let expired: u64 = stats.iter().map(|s| s.records_expired).sum();
    let throttle = snaps.map(|(a, b, secs)| utilization(&a, &b, secs).2);
    println!(
        "{{\"scenario\":\"overload\",\"aggregation\":{},\"shards\":{},\"record_size\":{},\
         \"seconds\":{},\"offered_load\":{load},\"offered_records_per_sec\":{},\
         \"records_added\":{sent},\"records_put\":{put},\"records_failed\":{failed},\
         \"records_expired\":{expired},\"max_buffered_bytes\":{BUFFER},\
         \"max_bytes_pending_seen\":{max_pending},\"rss_before_load_mib\":{},\
         \"peak_rss_mib\":{},\"throttle_fraction\":{}}}",
        o.aggregation,
        o.shards,
        o.record_size,
        o.seconds,
        rate.round(),
        r3(rss_before as f64 / 1024.0),
        r3(rss_kib as f64 / 1024.0),
        throttle.map_or("null".to_string(), |t| format!(
            "{}",
            (t * 1e5).round() / 1e5
        )),
    );
    run.finish();
}

fn main() {
    let o = parse_args();
    match o.scenario.as_str() {
        "cpu" => scenario_cpu(&o),
        "accuracy" => scenario_limited(&o, 1, 2.0),
        "shared" => scenario_limited(&o, 2, 1.0),
        "latency" => scenario_latency(&o),
        "overload" => scenario_overload(&o),
        "fleet" => fleet::scenario_fleet(&o),
        _ => usage(),
    }
}
