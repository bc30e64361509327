//! The end-of-run report (human text or JSON) and the latency histogram behind it.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Exact buckets below this many microseconds; above, 32 buckets per power of two.
const LINEAR: u64 = 64;
/// Buckets per power of two above [`LINEAR`] (relative error at most 1/32).
const SUB: u64 = 32;

/// A log-linear latency histogram in microseconds: constant memory whatever the record count,
/// quantiles within about 3%.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - u64::from(v.leading_zeros()); // >= 6
    let shift = exp - 5;
    let mantissa = v >> shift; // 32..=63
    (LINEAR + (exp - 6) * SUB + (mantissa - SUB)) as usize
}

/// The middle of a bucket's range.
fn bucket_value(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let exp = (i - LINEAR) / SUB + 6;
    let mantissa = (i - LINEAR) % SUB + SUB;
    let shift = exp - 5;
    (mantissa << shift) + (1 << shift) / 2
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = bucket(us);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// The value below which a share `q` (0..=1) of the recorded latencies lie.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_micros(bucket_value(i).min(self.max));
            }
        }
        Duration::from_micros(self.max)
    }

    /// The largest latency recorded.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max)
    }
}

/// Latency from `add` to the record's acknowledgement, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// Quantiles of a histogram.
    pub fn of(h: &Histogram) -> Latency {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        Latency {
            p50_ms: ms(h.quantile(0.50)),
            p99_ms: ms(h.quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// One shard's share of the stream's work.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    /// The shard id.
    pub shard_id: String,
    /// Kinesis records (aggregates count once) stored on it.
    pub kinesis_records_put: u64,
    /// Bytes stored on it (data + partition key of Kinesis records).
    pub bytes_put: u64,
    /// Records the service throttled on it.
    pub throttles: u64,
    /// Average use of the shard's write limits over the run (at least one second), percent.
    pub utilization_percent: f64,
    /// The producer's current rate on it, as a fraction of its configured limit.
    pub rate_factor: f64,
}

/// One stream's share of the run.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    /// The stream's name or ARN.
    pub stream: String,
    /// Records stored in it.
    pub records_put: u64,
    /// Records for it that finally failed.
    pub records_failed: u64,
    /// User bytes stored in it.
    pub bytes_put: u64,
    /// Kinesis records stored in it (`null` if the producer no longer served it at the end).
    pub kinesis_records_put: Option<u64>,
    /// Kinesis records the service throttled in it (likewise).
    pub throttles: Option<u64>,
}

/// A line or record and what went wrong with it.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// Input line (or generated record) number.
    pub line: u64,
    /// What went wrong.
    pub message: String,
}

/// Failures of one error code.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailureGroup {
    /// Records that failed with this code.
    pub count: u64,
    /// The first few of them.
    pub examples: Vec<Example>,
}

/// The stream's settings as the producer saw them at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SettingsSeen {
    /// Seconds since the run started.
    pub at_secs: f64,
    /// `PROVISIONED`, `ON_DEMAND`, or `unknown` where the service does not report it.
    pub mode: String,
    /// `USER_PARTITION_KEY` or `AUTO`.
    pub record_distribution: String,
    /// The record size limit in force (data + partition key), bytes.
    pub record_size_limit: usize,
}

impl SettingsSeen {
    /// What the producer follows now.
    pub fn of(live: &kinesis_producer::stream_settings::LiveSettings, at_secs: f64) -> Self {
        SettingsSeen {
            at_secs: (at_secs * 1000.0).round() / 1000.0,
            mode: match live.on_demand() {
                Some(true) => "ON_DEMAND",
                Some(false) => "PROVISIONED",
                None => "unknown",
            }
            .into(),
            record_distribution: if live.auto_distribution() {
                "AUTO"
            } else {
                "USER_PARTITION_KEY"
            }
            .into(),
            record_size_limit: live.record_limit().bytes,
        }
    }

    /// Whether both name the same settings (whenever they were seen).
    pub fn same_settings(&self, other: &SettingsSeen) -> bool {
        (
            &self.mode,
            &self.record_distribution,
            self.record_size_limit,
        ) == (
            &other.mode,
            &other.record_distribution,
            other.record_size_limit,
        )
    }

    fn line(&self) -> String {
        format!(
            "{}, {}, record limit {}",
            self.mode,
            self.record_distribution,
            bytes(self.record_size_limit as u64)
        )
    }
}

/// Everything `kpl produce` tells at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Whether every record was put and every line was valid.
    pub success: bool,
    /// The stream.
    pub stream: String,
    /// The service, in words.
    pub target: String,
    /// Whether aggregation was on.
    pub aggregation: bool,
    /// Which records shared an aggregate: `shard` or `partition-key` (`--aggregation-scope`).
    pub aggregation_scope: &'static str,
    /// The record size limit in force at the end (data + partition key), from the stream.
    pub record_size_limit: usize,
    /// The stream's settings when the run started.
    pub stream_settings: SettingsSeen,
    /// Every change of the stream's settings the producer saw during the run, in order.
    pub settings_changes: Vec<SettingsSeen>,
    /// Input lines (or generated records) turned into records or found invalid.
    pub records_read: u64,
    /// Lines that could not become records (unparsable, missing key, rejected by `add`).
    pub invalid_lines: u64,
    /// Records accepted by the producer.
    pub records_added: u64,
    /// Records stored.
    pub records_put: u64,
    /// Records that finally failed.
    pub records_failed: u64,
    /// User bytes stored: data + partition key of every record put.
    pub bytes_put: u64,
    /// Wall time from the first add to the last acknowledgement, seconds.
    pub elapsed_secs: f64,
    /// Records put per second.
    pub records_per_sec: f64,
    /// User MiB put per second.
    pub mib_per_sec: f64,
    /// Kinesis records stored (an aggregate counts once).
    pub kinesis_records_put: u64,
    /// Bytes of Kinesis records stored (as the service counts them).
    pub kinesis_bytes_put: u64,
    /// PutRecords requests.
    pub requests: u64,
    /// Record retries.
    pub retries: u64,
    /// Kinesis records throttled by the service.
    pub throttles: u64,
    /// Shard map refreshes.
    pub shard_map_refreshes: u64,
    /// Latency from `add` to acknowledgement of the records put.
    pub latency: Latency,
    /// Per-shard counters and utilization of the shard limits (the producer's own stream).
    pub shards: Vec<ShardReport>,
    /// One row per stream records went to (with --stream-field, several).
    pub streams: Vec<StreamReport>,
    /// Failed records by error code.
    pub failures: BTreeMap<String, FailureGroup>,
    /// The first invalid lines.
    pub invalid_examples: Vec<Example>,
    /// Why reading stopped early, if it did.
    pub read_error: Option<String>,
    /// Whether the run was interrupted (Ctrl-C).
    pub interrupted: bool,
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .map(|g| std::str::from_utf8(g).expect("ASCII digits"))
        .collect();
    groups.reverse();
    groups.join(",")
}

/// Bytes with a binary unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

impl Report {
    /// The report as text for a person.
    pub fn human(&self) -> String {
        let mut o = String::new();
        let status = if self.success {
            "all records put"
        } else if self.interrupted {
            "INTERRUPTED"
        } else {
            "INCOMPLETE"
        };
        let _ = writeln!(o, "kpl produce: {status}");
        let _ = writeln!(o, "  stream            {} on {}", self.stream, self.target);
        let _ = writeln!(
            o,
            "  records put       {} of {} added ({} failed, {} invalid lines)",
            thousands(self.records_put),
            thousands(self.records_added),
            thousands(self.records_failed),
            thousands(self.invalid_lines)
        );
        let _ = writeln!(
            o,
            "  bytes put         {} (data + partition keys) in {:.2} s",
            bytes(self.bytes_put),
            self.elapsed_secs
        );
        let _ = writeln!(
            o,
            "  throughput        {} records/s, {:.2} MiB/s",
            thousands(self.records_per_sec.round() as u64),
            self.mib_per_sec
        );
        let _ = writeln!(
            o,
            "  kinesis records   {} ({}) in {} PutRecords requests, aggregation {}",
            thousands(self.kinesis_records_put),
            bytes(self.kinesis_bytes_put),
            thousands(self.requests),
            match (self.aggregation, self.aggregation_scope) {
                (false, _) => "off",
                (true, "partition-key") => "on (one partition key per aggregate)",
                (true, _) => "on",
            }
        );
        let _ = writeln!(o, "  stream settings   {}", self.stream_settings.line());
        for c in &self.settings_changes {
            let _ = writeln!(o, "    changed at {:.2} s to {}", c.at_secs, c.line());
        }
        let _ = writeln!(
            o,
            "  retries           {}   throttles {}   shard map refreshes {}",
            thousands(self.retries),
            thousands(self.throttles),
            thousands(self.shard_map_refreshes)
        );
        let _ = writeln!(
            o,
            "  latency           p50 {}   p99 {}   max {}   (add to acknowledgement)",
            ms(self.latency.p50_ms),
            ms(self.latency.p99_ms),
            ms(self.latency.max_ms)
        );
        if !self.shards.is_empty() {
            let _ = writeln!(
                o,
                "  shards            utilization of the limits (1,000 records/s, 1 MiB/s per shard)"
            );
            for s in &self.shards {
                let _ = writeln!(
                    o,
                    "    {:<22} {:>6.1}%  {:>10} records  {:>10}  throttles {}",
                    s.shard_id,
                    s.utilization_percent,
                    thousands(s.kinesis_records_put),
                    bytes(s.bytes_put),
                    thousands(s.throttles)
                );
            }
        }
        if self.streams.len() > 1 {
            let _ = writeln!(o, "  streams");
            for s in &self.streams {
                let _ = writeln!(
                    o,
                    "    {:<22} {:>10} put  {:>10}  {:>8} failed",
                    s.stream,
                    thousands(s.records_put),
                    bytes(s.bytes_put),
                    thousands(s.records_failed)
                );
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(o, "  failures by error code");
            for (code, g) in &self.failures {
                let _ = writeln!(o, "    {code}: {}", thousands(g.count));
                for e in &g.examples {
                    let _ = writeln!(o, "      line {}: {}", e.line, e.message);
                }
            }
        }
        if self.invalid_lines > 0 {
            let _ = writeln!(o, "  invalid lines     {}", thousands(self.invalid_lines));
            for e in &self.invalid_examples {
                let _ = writeln!(o, "      line {}: {}", e.line, e.message);
            }
        }
        if let Some(e) = &self.read_error {
            let _ = writeln!(o, "  input error       {e}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 30, u64::MAX / 2]) {
            let b = bucket(v);
            assert!(b >= last, "bucket order at {v}");
            last = b;
            let mid = bucket_value(b);
            let err = (mid as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 1.0 / 32.0, "value {v} -> {mid}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).as_secs_f64() * 1e3;
        let p99 = h.quantile(0.99).as_secs_f64() * 1e3;
        assert!((48.0..=52.0).contains(&p50), "{p50}");
        assert!((96.0..=100.0).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_millis(100));
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
