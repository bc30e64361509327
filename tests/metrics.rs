//! Metrics through the `metrics` facade, seen by metrics-util's debugging recorder installed
//! as the global recorder (hence a file of its own: one recorder per test process): counters
//! agree with `stats()`, the pending gauges show what is held, the histograms hold one value
//! per Kinesis record sent or per request, and labels follow the granularity.

use kinesis_producer::metrics::*;
use kinesis_producer::{MetricsGranularity, Producer, Stats, UserRecord};
use kinesis_sim::{Faults, SimConfig, Simulator};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

type Labels = BTreeSet<(String, String)>;

/// Everything recorded so far. The debugging recorder drains on every snapshot (counters and
/// gauges swap to 0, histograms are emptied), so counters and histogram values are accumulated
/// here across snapshots, and a gauge holds what the last snapshot read.
#[derive(Default)]
struct Seen {
    counters: BTreeMap<(String, Labels), u64>,
    gauges: BTreeMap<(String, Labels), f64>,
    histograms: BTreeMap<(String, Labels), Vec<f64>>,
}

impl Seen {
    fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: Labels = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            let id = (key.name().to_string(), labels);
            match value {
                DebugValue::Counter(c) => *self.counters.entry(id).or_default() += c,
                DebugValue::Gauge(g) => {
                    self.gauges.insert(id, g.0);
                }
                DebugValue::Histogram(h) => self
                    .histograms
                    .entry(id)
                    .or_default()
                    .extend(h.into_iter().map(|v| v.0)),
            }
        }
    }

    fn counter(&self, name: &str, labels: &Labels) -> u64 {
        self.counters
            .get(&(name.to_string(), labels.clone()))
            .copied()
            .unwrap_or_else(|| panic!("counter {name} {labels:?} not registered"))
    }

    fn gauge(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.gauges
            .get(&(name.to_string(), labels.clone()))
            .copied()
    }

    fn histogram(&self, name: &str, labels: &Labels) -> Vec<f64> {
        self.histograms
            .get(&(name.to_string(), labels.clone()))
            .cloned()
            .unwrap_or_default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const RECORDS: usize = 400;

fn record(i: usize) -> UserRecord {
    UserRecord::new(format!("key-{}", i % 37), format!("record-{i:04}"))
}

/// Counters equal the stats; one histogram value per Kinesis record sent (buffering time,
/// user records per Kinesis record) and per request (request time, user records per request).
fn check_figures(seen: &Seen, l: &Labels, stats: &Stats) {
    assert_eq!(stats.retries, 0, "no retries, so the figures are exact");
    assert_eq!(stats.records_put, RECORDS as u64);
    assert_eq!(seen.counter(USER_RECORDS_RECEIVED, l), RECORDS as u64);
    assert_eq!(seen.counter(USER_RECORDS_PUT, l), RECORDS as u64);
    assert_eq!(seen.counter(USER_RECORDS_FAILED, l), 0);
    assert_eq!(seen.counter(REQUESTS, l), stats.requests);
    assert_eq!(
        seen.counter(KINESIS_RECORDS_PUT, l),
        stats.kinesis_records_put
    );
    assert_eq!(seen.counter(BYTES_PUT, l), stats.bytes_put);
    let buffering = seen.histogram(BUFFERING_TIME, l);
    assert_eq!(buffering.len() as u64, stats.kinesis_records_put, "{l:?}");
    assert!(buffering.iter().all(|&s| s >= 0.0), "{buffering:?}");
    let per_kinesis = seen.histogram(USER_RECORDS_PER_KINESIS_RECORD, l);
    assert_eq!(per_kinesis.len() as u64, stats.kinesis_records_put);
    assert_eq!(per_kinesis.iter().sum::<f64>(), RECORDS as f64);
    assert!(
        per_kinesis.iter().any(|&n| n > 1.0),
        "aggregated: {per_kinesis:?}"
    );
    let per_request = seen.histogram(USER_RECORDS_PER_REQUEST, l);
    assert_eq!(per_request.len() as u64, stats.requests);
    assert_eq!(per_request.iter().sum::<f64>(), RECORDS as f64);
    assert_eq!(
        seen.histogram(REQUEST_TIME, l).len() as u64,
        stats.requests,
        "{l:?}"
    );
    // The stream's settings in force, as gauges, and no change seen.
    assert_eq!(
        seen.gauge(RECORD_SIZE_LIMIT, l),
        Some(stats.record_size_limit as f64),
        "{l:?}"
    );
    assert_eq!(seen.gauge(AUTO_DISTRIBUTION, l), Some(0.0), "{l:?}");
    assert_eq!(seen.counter(STREAM_SETTINGS_CHANGES, l), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_histograms_and_labels_at_every_granularity() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");
    let mut seen = Seen::default();

    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let sdk = kinesis_sdk_config(&sim.endpoint_url()).await;
    let latency = Duration::from_millis(1_500);
    for (stream, granularity) in [
        ("m-global", MetricsGranularity::Global),
        ("m-stream", MetricsGranularity::Stream),
        ("m-shard", MetricsGranularity::Shard),
    ] {
        sim.create_stream(stream, 2).unwrap();
        let p = Producer::builder()
            .stream_name(stream)
            .metrics_granularity(granularity)
            .max_buffered_time(Duration::from_millis(20))
            .build(&sdk)
            .await
            .unwrap();
        let l = match granularity {
            MetricsGranularity::Global => labels(&[]),
            _ => labels(&[("stream", stream)]),
        };
        // Every request takes `latency`: the records stay held long enough for the gauges
        // (published about once a second) to show all of them.
        sim.set_faults(
            stream,
            Faults {
                latency,
                ..Faults::default()
            },
        )
        .unwrap();
        let mut pending = Vec::new();
        let mut bytes = 0;
        for i in 0..RECORDS {
            let r = record(i);
            bytes += r.size();
            pending.push(p.add(r).await.unwrap());
        }
        let until = Instant::now() + Duration::from_secs(10);
        let mut held = None;
        while Instant::now() < until {
            seen.take(&snapshotter);
            held = seen
                .gauge(RECORDS_PENDING, &l)
                .zip(seen.gauge(BYTES_PENDING, &l));
            if held.is_some_and(|(r, _)| r > 0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            held,
            Some((RECORDS as f64, bytes as f64)),
            "{stream}: the gauges show every record held"
        );
        for pending in pending {
            tokio::time::timeout(Duration::from_secs(30), pending)
                .await
                .unwrap()
                .expect("stored");
        }
        p.shutdown().await.unwrap();
        let stats = p.stats();
        seen.take(&snapshotter);
        check_figures(&seen, &l, &stats);
        assert!(
            seen.histogram(REQUEST_TIME, &l)
                .iter()
                .all(|&s| s >= latency.as_secs_f64()),
            "{stream}: request time covers the simulator's latency"
        );

        // Labels: per-shard counters only at shard granularity, one series per shard.
        let shard_series: BTreeMap<String, u64> = seen
            .counters
            .iter()
            .filter(|((name, ls), _)| {
                name == KINESIS_RECORDS_PUT && ls.contains(&("stream".into(), stream.into()))
            })
            .filter_map(|((_, ls), &v)| {
                ls.iter()
                    .find(|(k, _)| k == "shard")
                    .map(|(_, shard)| (shard.clone(), v))
            })
            .collect();
        if granularity == MetricsGranularity::Shard {
            let per_shard: BTreeMap<String, u64> = stats
                .shards
                .iter()
                .map(|s| (s.shard_id.clone(), s.kinesis_records_put))
                .collect();
            assert_eq!(shard_series, per_shard, "one series per shard, as in stats");
            assert_eq!(
                shard_series.values().sum::<u64>(),
                stats.kinesis_records_put
            );
            assert_eq!(shard_series.len(), 2);
        } else {
            assert!(shard_series.is_empty(), "{stream}: {shard_series:?}");
        }
    }
    // Global granularity: its series carry no label at all; no other series is unlabelled
    // except those.
    let unlabelled: BTreeSet<&str> = seen
        .counters
        .keys()
        .filter(|(_, ls)| ls.is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(unlabelled.contains(USER_RECORDS_PUT), "{unlabelled:?}");
    let stream_labels: BTreeSet<String> = seen
        .counters
        .keys()
        .flat_map(|(_, ls)| ls.iter())
        .filter(|(k, _)| k == "stream")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        stream_labels,
        ["m-shard", "m-stream"].map(String::from).into(),
        "the global-granularity producer never labels its stream"
    );
    sim.shutdown().await;
}

async fn kinesis_sdk_config(endpoint_url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "AKID", "SECRET", None, None, "metrics",
        ))
        .endpoint_url(endpoint_url)
        .load()
        .await
}
