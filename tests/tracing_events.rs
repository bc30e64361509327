//! The library's `tracing` events, captured by a subscriber installed here (the library installs
//! none): start, shard map changes, settings changes, throttling (at most once per stats period,
//! never per record), endpoint back-off entered and left, expiries, streams discovered, released
//! or unusable.

mod support;

use kinesis_producer::{Producer, UserRecord};
use kinesis_sim::{Faults, SimConfig, Simulator};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One event: level, message, and the other fields as `name=value` pairs.
#[derive(Clone, Debug)]
struct Seen {
    level: tracing::Level,
    message: String,
    fields: String,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

struct Fields<'a>(&'a mut String, &'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.1, "{}={value:?} ", field.name());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "kinesis_producer"
            && !event.metadata().target().starts_with("kinesis_producer::")
        {
            return;
        }
        let (mut message, mut fields) = (String::new(), String::new());
        event.record(&mut Fields(&mut message, &mut fields));
        self.0.lock().unwrap().push(Seen {
            level: *event.metadata().level(),
            message,
            fields,
        });
    }
}

impl Capture {
    fn matching(&self, message: &str) -> Vec<Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.message.contains(message))
            .cloned()
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_what_operators_watch_and_none_per_record() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .expect("the only subscriber of this test binary");

    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream("traced", 1).expect("create");
    let p = Producer::builder()
        .stream_name("traced")
        .aggregation(false)
        // The service, not the producer, holds the shard to its rate: throttles.
        .rate_limiting(false)
        .record_ttl(Duration::from_secs(2))
        .stream_settings_refresh_interval(Duration::from_millis(200))
        .stream_idle_timeout(Duration::from_millis(300))
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build");
    let started = capture.matching("producer started");
    assert_eq!(started.len(), 1);
    assert!(started[0].fields.contains("shards=1"), "{started:?}");

    // Twice the shard's record rate for three seconds, the producer's limiter off: throttled,
    // summarized once a second.
    let t0 = Instant::now();
    let mut pending = Vec::new();
    for i in 0..6_000 {
        let r = UserRecord::new(format!("k{}", i % 100), "x");
        pending.push(p.add(r).await.expect("accepted"));
        if i % 1_000 == 999 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for f in pending {
        let _ = f.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let st = p.stats();
    let throttle_events = capture.matching("throttled by the service");
    assert!(st.throttles > 0, "the case was not exercised: {st:?}");
    assert!(!throttle_events.is_empty(), "{st:?}");
    assert!(
        (throttle_events.len() as f64) <= elapsed + 2.0
            && (throttle_events.len() as u64) < st.throttles,
        "{} throttling events for {} throttles in {elapsed:.1} s: not rate-limited",
        throttle_events.len(),
        st.throttles
    );
    assert!(throttle_events[0].fields.contains("shardId-000000000000"));

    // The endpoint fails every request: back-off entered (a warning), records expire (a
    // warning), then it answers again: back-off left.
    sim.set_faults(
        "traced",
        Faults {
            http_503_rate: 1.0,
            ..Faults::default()
        },
    )
    .unwrap();
    let doomed: Vec<_> = futures_join(&p, 20).await;
    for f in doomed {
        assert!(f.await.is_err(), "expired while the endpoint failed");
    }
    sim.set_faults("traced", Faults::default()).unwrap();
    p.add(UserRecord::new("k", "after"))
        .await
        .expect("accepted")
        .await
        .expect("stored once the endpoint answers");
    let entered = capture.matching("back-off entered");
    assert_eq!(entered.len(), 1, "{entered:?}");
    assert_eq!(entered[0].level, tracing::Level::WARN);
    assert_eq!(capture.matching("back-off left").len(), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await; // a stats period
    let expired = capture.matching("records expired");
    assert!(!expired.is_empty());
    assert_eq!(expired[0].level, tracing::Level::WARN);
    let expired_total: u64 = expired
        .iter()
        .map(|e| {
            e.fields
                .split_whitespace()
                .find_map(|f| f.strip_prefix("expired="))
                .and_then(|n| n.parse::<u64>().ok())
                .expect("an expired count")
        })
        .sum();
    assert_eq!(expired_total, p.stats().records_expired, "{expired:?}");

    // A reshard and a settings change.
    sim.reshard("traced", 2).unwrap();
    sim.set_max_record_size_kib("traced", 2048).unwrap();
    p.add(UserRecord::new("k", "x"))
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while capture.matching("open shards changed").is_empty()
        || capture.matching("stream settings changed").is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "never logged the reshard and the new limit"
        );
        p.add(UserRecord::new("k", "x"))
            .await
            .unwrap()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let map = capture.matching("open shards changed");
    assert!(
        map[0].fields.contains("shards_before=1") && map[0].fields.contains("shards_after=2"),
        "{map:?}"
    );
    let settings = capture.matching("stream settings changed");
    assert!(
        settings[0].fields.contains("record_size_limit=2097152"),
        "{settings:?}"
    );

    // Another stream: discovered on its first record, released when idle; a missing one
    // cannot be used.
    sim.create_stream("second", 3).unwrap();
    p.add(UserRecord::new("k", "x").to("second"))
        .await
        .unwrap()
        .await
        .expect("stored in the second stream");
    let discovered = capture.matching("stream discovered");
    assert_eq!(discovered.len(), 1, "{discovered:?}");
    assert!(
        discovered[0].fields.contains("stream=\"second\"")
            && discovered[0].fields.contains("shards=3"),
        "{discovered:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while capture.matching("idle stream released").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the idle stream was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(capture.matching("idle stream released")[0]
        .fields
        .contains("stream=\"second\""));
    let missing = p.add(UserRecord::new("k", "x").to("absent")).await.unwrap();
    assert!(missing.await.is_err());
    let unusable = capture.matching("stream cannot be used");
    assert_eq!(unusable.len(), 1, "{unusable:?}");
    assert_eq!(unusable[0].level, tracing::Level::WARN);
    assert!(
        unusable[0].fields.contains("ResourceNotFoundException"),
        "{unusable:?}"
    );

    // Nothing per record: thousands of records, a few dozen events.
    let total = capture.0.lock().unwrap().len();
    assert!(
        total < 100,
        "{total} events for {} records",
        st.records_received
    );
    p.shutdown().await.expect("shutdown");
}

async fn futures_join(p: &Producer, n: usize) -> Vec<kinesis_producer::PendingRecord> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            p.add(UserRecord::new(format!("d{i}"), "y"))
                .await
                .expect("accepted"),
        );
    }
    out
}
