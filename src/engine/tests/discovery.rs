//! A stream met on its first record: read before its records are queued.

use super::*;
use crate::engine::discovery::RETRY_AFTER;
use crate::kinesis::StreamSummary;

fn discovering(config: ProducerConfig) -> Harness {
    let mut h = Harness::new(1, config.clone());
    let settings = StreamSettings::default();
    let live = Arc::new(LiveSettings::new(
        settings,
        settings.record_limit(config.request_bytes_for(1 << 20)),
    ));
    let s = EngineSettings::new(&config, StreamRef::Name("other".into()), settings, live);
    let engine = Engine::discovering(
        s,
        h.gauge.clone(),
        SharedStats::new(h.now),
        Metrics::new("other", config.metrics_granularity),
        h.now,
    );
    std::mem::replace(&mut h.engine, engine).release();
    h
}

fn summary(kib: Option<u32>) -> Result<StreamSummary, ClientError> {
    Ok(StreamSummary {
        max_record_size_kib: kib,
        auto_distribution: false,
        on_demand: None,
        status: "ACTIVE".into(),
    })
}

/// The reads the engine asks for at this poll: (ListShards, DescribeStreamSummary).
fn reads(h: &mut Harness) -> (bool, bool) {
    h.engine.poll(h.now, &mut h.actions);
    let map = h
        .actions
        .iter()
        .any(|a| matches!(a, Action::RefreshShardMap));
    let settings = h
        .actions
        .iter()
        .any(|a| matches!(a, Action::ReadStreamSettings));
    assert!(
        h.actions.iter().all(|a| !matches!(a, Action::Send { .. })),
        "nothing sent while the stream is read"
    );
    h.actions.clear();
    (map, settings)
}

fn not_found() -> ClientError {
    ClientError::service("ResourceNotFoundException", "Stream other not found", 400)
}

#[test]
fn records_wait_for_the_streams_settings_and_map_then_go_in_order() {
    let mut h = discovering(agg_config());
    let mut rxs: Vec<Rx> = (0..3)
        .map(|i| h.add_to(1, 2, "k", &format!("{i}")))
        .collect();
    assert_eq!(reads(&mut h), (true, true), "both read at the first poll");
    // A transient settings error: read again within four seconds, records still waiting.
    let e = ClientError::service("InternalFailure", "try again", 500);
    h.engine.on_stream_settings(Err(e), h.now);
    assert!(pending(&mut rxs[0]));
    assert_eq!(reads(&mut h), (false, false));
    h.advance(Duration::from_secs(4));
    assert_eq!(reads(&mut h), (false, true));
    h.engine.on_stream_settings(summary(Some(2048)), h.now);
    assert_eq!(reads(&mut h), (false, false));
    // A map without an open shard is no map: read again.
    h.engine.on_shard_map(Ok(vec![]), h.now);
    assert!(pending(&mut rxs[0]));
    h.advance(Duration::from_secs(1));
    assert_eq!(reads(&mut h), (true, false));
    // A transient map error: read again a second later, records still waiting.
    let e = ClientError::service("LimitExceededException", "slow down", 400);
    h.engine.on_shard_map(Err(e), h.now);
    assert_eq!(reads(&mut h), (false, false));
    h.advance(Duration::from_secs(1));
    assert_eq!(reads(&mut h), (true, false));
    h.engine.on_shard_map(Ok(shards(2)), h.now);
    assert_eq!(
        h.engine.s.record_limit.bytes,
        2 << 20,
        "the stream's own limit"
    );
    // They linger for an aggregate from when they reach their shard, as any record would.
    h.advance(h.engine.s.config.max_buffered_time);
    let sent = h.poll_after_window();
    assert_eq!(sent.len(), 1);
    let records = &sent[0].1.records;
    assert_eq!(records.len(), 1, "one aggregate of the three");
    assert_eq!(sent[0].1.stream.as_str(), "other");
    let (id, req) = sent.into_iter().next().unwrap();
    h.ok_all(id, &req, 2);
    for rx in &mut rxs {
        assert_eq!(&*outcome(rx).unwrap().shard_id, "shardId-000000000001");
    }
}

#[test]
fn a_missing_stream_fails_its_records_and_is_read_again_later() {
    let mut h = discovering(config());
    let mut waiting = h.add_to(0, 1, "k", "a");
    assert_eq!(reads(&mut h), (true, true));
    h.engine.on_stream_settings(Err(not_found()), h.now);
    match outcome(&mut waiting) {
        Err(RecordError::Rejected { code, message, .. }) => {
            assert_eq!(&*code, "ResourceNotFoundException");
            assert!(message.contains("other"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The map read answers late, also missing: nothing more to fail.
    h.engine.on_shard_map(Err(not_found()), h.now);
    // Within the retry period a record fails at once, without a read.
    h.advance(RETRY_AFTER - MS);
    let mut soon = h.add_to(0, 1, "k", "b");
    assert!(outcome(&mut soon).is_err());
    assert_eq!(reads(&mut h), (false, false));
    // After it, the next record reads the stream again (it may exist now).
    h.advance(MS);
    let mut later = h.add_to(0, 1, "k", "c");
    assert!(pending(&mut later));
    h.advance(Duration::from_secs(3));
    assert_eq!(reads(&mut h), (true, true));
    h.engine.on_stream_settings(summary(None), h.now);
    h.engine.on_shard_map(Ok(shards(1)), h.now);
    let sent = h.poll_after_window();
    let (id, req) = sent.into_iter().next().unwrap();
    h.ok_all(id, &req, 1);
    assert!(outcome(&mut later).is_ok());
    assert_eq!(h.engine.ledger.held(), 0);
    let (free, _, withheld, _) = h.gauge.room();
    assert_eq!(free + withheld, h.gauge.max_records, "all room back");
}

#[test]
fn records_waiting_for_a_stream_that_does_not_answer_expire_at_their_ttl() {
    // A TTL shorter than the stats period and the admission tick: the records' own deadlines
    // are the engine's next.
    let ttl = Duration::from_millis(400);
    let cfg = ProducerConfig {
        record_ttl: ttl,
        ..config()
    };
    let mut h = discovering(cfg);
    let t0 = h.now;
    let mut first = h.add_to(0, 1, "k", "a");
    h.advance(Duration::from_millis(200));
    let mut second = h.add_to(0, 1, "k", "b");
    assert_eq!(reads(&mut h), (true, true));
    assert_eq!(h.engine.next_deadline(), Some(t0 + ttl));
    h.now = t0 + ttl;
    let _ = h.poll();
    assert!(matches!(
        outcome(&mut first),
        Err(RecordError::Expired { .. })
    ));
    assert!(pending(&mut second));
    assert_eq!(
        h.engine.next_deadline(),
        Some(t0 + ttl + Duration::from_millis(200))
    );
    h.advance(Duration::from_millis(200));
    let _ = h.poll();
    assert!(matches!(
        outcome(&mut second),
        Err(RecordError::Expired { .. })
    ));
}

#[test]
fn the_gauges_show_a_discovered_streams_settings_at_once() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut h = discovering(config());
        assert_eq!(reads(&mut h), (true, true));
        let auto = Ok(StreamSummary {
            max_record_size_kib: Some(4096),
            auto_distribution: true,
            on_demand: Some(true),
            status: "ACTIVE".into(),
        });
        h.engine.on_stream_settings(auto, h.now);
        h.engine.on_shard_map(Ok(shards(2)), h.now);
    });
    // One snapshot: a read may drain the gauges.
    let seen = snapshotter.snapshot().into_vec();
    let gauge = |name: &str| {
        seen.iter().find_map(|(key, _, _, value)| {
            let ours = key.key().labels().any(|l| l.value() == "other");
            (key.key().name() == name && ours).then_some(value)
        })
    };
    assert_eq!(
        gauge(crate::metrics::AUTO_DISTRIBUTION),
        Some(&DebugValue::Gauge(1.0.into())),
        "before any stats period"
    );
    assert_eq!(
        gauge(crate::metrics::RECORD_SIZE_LIMIT),
        Some(&DebugValue::Gauge(((4 << 20) as f64).into()))
    );
}

#[test]
fn a_released_streams_admission_cap_no_longer_counts() {
    let h = Harness::new(1, config());
    let alone = h.gauge.withheld();
    assert!(alone.0 > 0, "one shard's cap is below the bound: {alone:?}");
    // A second stream's engine on the same gauge.
    let settings = StreamSettings::default();
    let live = Arc::new(LiveSettings::new(
        settings,
        settings.record_limit(config().request_bytes_for(1 << 20)),
    ));
    let s = EngineSettings::new(&config(), StreamRef::Name("other".into()), settings, live);
    let mut second = Engine::new(
        s,
        ShardMap::new(shards(1)),
        h.gauge.clone(),
        SharedStats::new(h.now),
        Metrics::new("other", config().metrics_granularity),
        h.now,
    );
    second.update_capacity();
    let both = h.gauge.withheld();
    assert!(
        both.0 < alone.0,
        "two streams' caps add up: {both:?} vs {alone:?}"
    );
    second.release();
    assert_eq!(
        h.gauge.withheld(),
        alone,
        "the released stream's cap is gone"
    );
}
