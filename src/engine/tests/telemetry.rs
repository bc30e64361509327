//! Telemetry from the engine's events: metrics (through a local recorder), `tracing` events
//! (through a thread-local subscriber), per-shard stats and the dead-letter channel.

use super::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use std::sync::Mutex;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(tracing::Level, String)>>>);

struct Text<'a>(&'a mut String);

impl tracing::field::Visit for Text<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut text = String::new();
        event.record(&mut Text(&mut text));
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), text));
    }
}

impl Events {
    fn with(&self, needle: &str) -> Vec<(tracing::Level, String)> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|(_, t)| t.contains(needle))
            .cloned()
            .collect()
    }
}

fn counter(seen: &[(String, DebugValue)], name: &str) -> u64 {
    seen.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

fn histogram(seen: &[(String, DebugValue)], name: &str) -> Vec<f64> {
    seen.iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, v)| match v {
            DebugValue::Histogram(h) => h.iter().map(|x| x.0).collect(),
            _ => vec![],
        })
        .collect()
}

#[test]
fn events_reach_metrics_logs_stats_and_dead_letters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let (tx, mut letters) = tokio::sync::mpsc::channel(16);
    let h = tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            let mut h = Harness::new(2, agg_config());
            h.engine
                .telemetry
                .set_dead_letters(StreamRef::Name("s".into()), tx);
            // Three records for shard 0, one for shard 1: two Kinesis records, one request.
            for _ in 0..3 {
                h.add_to(0, 2, "k", "abc");
            }
            h.add_to(1, 2, "k", "abc");
            h.advance(Duration::from_millis(100));
            let sent = h.poll_after_window();
            assert_eq!(sent.len(), 1);
            // The aggregate lands where predicted; the plain record of shard 1 on shard 0 (a
            // stale map: a plain record is stored wherever it lands).
            let results = vec![
                PutRecordsResultEntry::Ok {
                    shard_id: "shardId-000000000000".into(),
                    sequence_number: "1".into(),
                },
                PutRecordsResultEntry::Ok {
                    shard_id: "shardId-000000000000".into(),
                    sequence_number: "2".into(),
                },
            ];
            h.engine.on_response(sent[0].0, Ok(results), h.now);
            // The map refreshes: same shard count (a debug event), then a split (info).
            h.engine.on_shard_map(Ok(shards(2)), h.now);
            h.engine.on_shard_map(Ok(shards(3)), h.now);
            // A record fails for good: a dead letter.
            let mut rx = h.add_to(0, 3, "gone", "x");
            h.advance(Duration::from_millis(100));
            let sent = h.poll_after_window();
            let denied = ClientError::service("AccessDeniedException", "no", 400);
            h.engine.on_response(sent[0].0, Err(denied), h.now);
            assert!(outcome(&mut rx).is_err());
            // The stream's record limit changes.
            let summary = crate::kinesis::StreamSummary {
                max_record_size_kib: Some(2048),
                auto_distribution: false,
                on_demand: None,
                status: "ACTIVE".into(),
            };
            h.engine.on_stream_settings(Ok(summary), h.now);
            h.advance(STATS_PERIOD);
            let _ = h.poll();
            h
        })
    });
    let seen: Vec<(String, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k.key().name().to_string(), v))
        .collect();
    let mut per_kinesis = histogram(&seen, crate::metrics::USER_RECORDS_PER_KINESIS_RECORD);
    per_kinesis.sort_by(f64::total_cmp);
    assert_eq!(
        per_kinesis,
        [1.0, 1.0, 3.0],
        "two of the first request, one of the second"
    );
    assert_eq!(histogram(&seen, crate::metrics::BUFFERING_TIME).len(), 3);
    assert_eq!(
        histogram(&seen, crate::metrics::USER_RECORDS_PER_REQUEST),
        [4.0, 1.0]
    );
    assert_eq!(counter(&seen, crate::metrics::MISPREDICTIONS), 1);
    assert_eq!(counter(&seen, crate::metrics::SHARD_MAP_REFRESHES), 2);
    assert_eq!(counter(&seen, crate::metrics::USER_RECORDS_FAILED), 1);
    assert_eq!(counter(&seen, crate::metrics::STREAM_SETTINGS_CHANGES), 1);
    let limit = seen
        .iter()
        .find(|(n, _)| n == crate::metrics::RECORD_SIZE_LIMIT)
        .map(|(_, v)| match v {
            DebugValue::Gauge(g) => g.0,
            _ => f64::NAN,
        });
    assert_eq!(limit, Some((2 << 20) as f64));

    let stats = &h.engine.telemetry.stats;
    let shard_stats = stats.shards.lock().unwrap().clone();
    let ids: Vec<&str> = shard_stats.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "shardId-000000000000",
            "shardId-000000000001",
            "shardId-000000000002"
        ]
    );
    let stored_bytes = stats.bytes_put.load(std::sync::atomic::Ordering::Relaxed);
    let put: u64 = shard_stats.iter().map(|s| s.bytes_put).sum::<u64>();
    assert!(stored_bytes > 0);
    assert_eq!(put, stored_bytes, "per shard, the stream's bytes");

    let letter = letters.try_recv().expect("a dead letter");
    assert_eq!(&letter.record.data[..], b"x");
    assert_eq!(letter.error.code(), Some("AccessDeniedException"));
    assert!(letters.try_recv().is_err(), "once");

    assert_eq!(events.with("shard map refreshed").len(), 2);
    let changed = events.with("open shards changed");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].0, tracing::Level::INFO);
    assert!(changed[0].1.contains("shards_before=2") && changed[0].1.contains("shards_after=3"));
    assert_eq!(events.with("stream settings changed").len(), 1);
    assert!(
        events.with("throttled").is_empty(),
        "nothing throttled, nothing said"
    );
    assert!(events.with("expired").is_empty());
}

#[test]
fn throttling_and_expiries_are_summarized_once_a_period() {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    tracing::subscriber::with_default(subscriber, || {
        let cfg = ProducerConfig {
            record_ttl: Duration::from_millis(300),
            ..config()
        };
        let mut h = Harness::new(2, cfg);
        // Two throttled records of shard 0.
        for _ in 0..2 {
            h.add_to(0, 2, "k", "d");
        }
        h.advance(Duration::from_millis(100));
        let sent = h.poll_after_window();
        let throttled = err_entry("ProvisionedThroughputExceededException");
        h.engine
            .on_response(sent[0].0, Ok(vec![throttled.clone(), throttled]), h.now);
        h.advance(STATS_PERIOD);
        let _ = h.poll();
        // Nothing new in the next period: no new event. Then the two expire.
        h.advance(STATS_PERIOD);
        let _ = h.poll();
        h.advance(STATS_PERIOD);
        let _ = h.poll();
    });
    let throttling = events.with("throttled by the service");
    assert_eq!(throttling.len(), 1, "{throttling:?}");
    let text = &throttling[0].1;
    assert!(
        text.contains("throttled=2")
            && text.contains("shards=1")
            && text.contains("shardId-000000000000"),
        "{text}"
    );
    let expired = events.with("records expired");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].0, tracing::Level::WARN);
    assert!(expired[0].1.contains("expired=2"), "{}", expired[0].1);
}

#[test]
fn a_second_throttling_period_reports_only_its_own_throttles() {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    tracing::subscriber::with_default(subscriber, || {
        let mut h = Harness::new(1, config());
        let throttled = err_entry("ProvisionedThroughputExceededException");
        // Period 1: two throttled; period 2: one more.
        for n in [2, 1] {
            for _ in 0..n {
                h.add_to(0, 1, "k", "d");
            }
            h.advance(Duration::from_millis(100));
            let sent = h.poll_after_window();
            let mut answers: Vec<_> = sent[0].1.records.iter().map(|r| ok_entry(r, 1)).collect();
            for a in answers.iter_mut().take(n) {
                *a = throttled.clone();
            }
            h.engine.on_response(sent[0].0, Ok(answers), h.now);
            h.advance(STATS_PERIOD);
            let _ = h.poll();
        }
    });
    let throttling: Vec<String> = events
        .with("throttled by the service")
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(throttling.len(), 2, "{throttling:?}");
    assert!(throttling[0].contains("throttled=2"), "{}", throttling[0]);
    assert!(throttling[1].contains("throttled=1"), "{}", throttling[1]);
    assert!(
        throttling[1].contains(r#"most=[(1, "shardId-000000000000")]"#),
        "the shard's throttles of this period: {}",
        throttling[1]
    );
}

#[test]
fn the_endpoint_back_off_is_logged_when_entered_and_left() {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    tracing::subscriber::with_default(subscriber, || {
        let cfg = ProducerConfig {
            rate_limiting: false,
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        h.add_to(0, 1, "k", "d");
        for _ in 0..2 {
            h.advance(Duration::from_millis(100));
            let sent = h.poll_after_window();
            let e = ClientError::service("ServiceUnavailable", "down", 503);
            h.engine.on_response(sent[0].0, Err(e), h.now);
        }
        assert_eq!(events.with("back-off entered").len(), 1);
        assert!(events.with("back-off left").is_empty());
        h.now = h.engine.endpoint.until().expect("backing off");
        let sent = h.poll_after_window();
        let req = sent[0].1.clone();
        h.ok_all(sent[0].0, &req, 1);
    });
    let entered = events.with("back-off entered");
    assert_eq!(entered.len(), 1);
    assert_eq!(entered[0].0, tracing::Level::WARN);
    assert!(entered[0].1.contains("delay="), "{}", entered[0].1);
    let left = events.with("back-off left");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, tracing::Level::INFO);
}
