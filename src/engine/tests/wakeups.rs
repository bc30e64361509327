//! What `poll` does on its own schedule and what `next_deadline` promises: stats published once a
//! period, admission measured once a tick, the shutdown answered only once drained, wake-ups
//! only while something is held or due, scratch memory given back after a burst.

use super::*;

#[test]
fn an_idle_engine_sleeps_until_its_next_read_and_a_busy_one_wakes_each_period() {
    let mut h = Harness::new(1, config());
    let _ = h.poll();
    let idle = h.engine.next_deadline().expect("reads are scheduled");
    assert!(
        idle >= h.now + Duration::from_secs(40),
        "nothing held: no wake-up before the map and settings reads, {:?}",
        idle - h.now
    );
    let _rx = h.add_to(0, 1, "k", "d");
    h.advance(Duration::from_millis(100));
    let sent = h.poll_after_window();
    assert_eq!(sent.len(), 1);
    // The record is in flight and nothing else is due: the stats period still wakes it.
    let busy = h.engine.next_deadline().expect("a wake-up");
    assert!(busy <= h.now + STATS_PERIOD, "{:?}", busy - h.now);
}

#[test]
fn a_batch_waiting_for_in_flight_room_is_not_due_at_once() {
    // Adaptive concurrency starts with one request in flight. A 600-byte record, then one that
    // fills a 1,000-byte request alone, close two requests in one drain.
    let cfg = ProducerConfig {
        adaptive_concurrency: true,
        rate_limiting: false,
        max_request_bytes: Some(1_000),
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    h.add_to(0, 1, "k", &"a".repeat(599));
    h.add_to(0, 1, "k", &"b".repeat(999));
    let sent = h.poll();
    assert_eq!(sent.len(), 1, "one request in flight");
    assert_eq!(h.engine.outbox.len(), 1, "the other waits in the outbox");
    let next = h.engine.next_deadline().expect("a wake-up");
    assert!(next > h.now, "no room in flight: nothing to do at once");
    h.ok_all(sent[0].0, &sent[0].1, 1);
    let next = h.engine.next_deadline().expect("a wake-up");
    assert!(next <= h.now, "room freed: dispatch at once");
}

#[test]
fn a_batch_held_by_the_endpoint_back_off_is_due_when_it_ends() {
    let cfg = ProducerConfig {
        rate_limiting: false,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    h.add_to(0, 1, "k", "d");
    let unavailable = || ClientError::service("ServiceUnavailable", "down", 503);
    for _ in 0..2 {
        h.advance(Duration::from_millis(100));
        let sent = h.poll_after_window();
        assert_eq!(sent.len(), 1);
        h.engine.on_response(sent[0].0, Err(unavailable()), h.now);
    }
    assert!(
        h.poll_after_window().is_empty(),
        "nothing goes during the back-off"
    );
    assert!(!h.engine.outbox.is_empty(), "held by the back-off");
    let until = h.engine.endpoint.until().expect("backing off");
    assert_eq!(h.engine.next_deadline(), Some(until));
}

#[test]
fn stats_are_published_once_a_period() {
    let mut h = Harness::new(1, config());
    let _ = h.poll();
    let _rx = h.add_to(0, 1, "k", "d");
    h.advance(Duration::from_millis(100));
    let sent = h.poll_after_window();
    h.ok_all(sent[0].0, &sent[0].1, 1);
    let _ = h.poll();
    let published = |h: &Harness| {
        h.engine
            .telemetry
            .stats
            .shards
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.kinesis_records_put)
            .sum::<u64>()
    };
    assert_eq!(published(&h), 0, "not before the period ends");
    h.advance(STATS_PERIOD);
    let _ = h.poll();
    assert_eq!(published(&h), 1);
}

#[test]
fn admission_measures_a_stalled_drain_once_a_tick() {
    let mut h = Harness::new(1, config());
    let full = h.engine.admission.cap();
    for i in 0..2_000 {
        h.add_to(0, 1, &format!("k{i}"), "d");
    }
    // Requests go out and are never answered: nothing drains for three ticks.
    for _ in 0..3 {
        let _ = h.poll();
        h.advance(crate::admission::TICK);
    }
    let _ = h.poll();
    let cap = h.engine.admission.cap();
    assert!(cap.0 < full.0, "the cap fell from {full:?} to {cap:?}");
    assert_eq!(cap.0, crate::admission::MIN_RECORDS);
}

#[test]
fn shutdown_is_answered_only_once_everything_is_resolved() {
    let mut h = Harness::new(1, config());
    let mut rx = h.add_to(0, 1, "k", "d");
    let (stx, mut srx) = oneshot::channel();
    h.engine.on_shutdown(Some(stx), h.now);
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    assert!(srx.try_recv().is_err(), "a record is still in flight");
    h.ok_all(sent[0].0, &sent[0].1, 1);
    assert!(outcome(&mut rx).is_ok());
    let _ = h.poll();
    assert_eq!(srx.try_recv(), Ok(()));
}

#[test]
fn a_map_without_open_shards_is_not_installed() {
    let mut h = Harness::new(2, config());
    let closed: Vec<ShardInfo> = shards(2)
        .into_iter()
        .map(|s| ShardInfo { open: false, ..s })
        .collect();
    h.engine.on_shard_map(Ok(closed), h.now);
    assert_eq!(h.engine.shards.len(), 2, "the map in hand stays");
    let mut rx = h.add_to(1, 2, "k", "d");
    h.advance(Duration::from_millis(100));
    let sent = h.poll_after_window();
    h.ok_all(sent[0].0, &sent[0].1, 2);
    assert_eq!(&*outcome(&mut rx).unwrap().shard_id, "shardId-000000000001");
}

#[test]
fn scratch_memory_is_given_back_after_a_burst_of_expiries() {
    let expire_in_one_poll = |n: usize| {
        let cfg = ProducerConfig {
            record_ttl: Duration::from_millis(50),
            max_in_flight: 1,
            rate_limiting: false,
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        // One request of 500 goes; the rest wait for room in flight and expire together.
        for i in 0..500 + n {
            h.add_to(0, 1, &format!("k{i}"), "d");
        }
        assert_eq!(h.poll().len(), 1);
        h.advance(Duration::from_millis(60));
        let _ = h.poll();
        let expired = h
            .engine
            .telemetry
            .stats
            .records_expired
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(expired, n as u64);
        h.engine.scratch.capacity()
    };
    assert_eq!(
        expire_in_one_poll(1_024),
        1_024,
        "a burst of 1,024 keeps its room"
    );
    assert_eq!(expire_in_one_poll(1_025), 0, "a larger one gives it back");
}

#[test]
fn published_shard_stats_carry_the_streams_rate_factor() {
    let mut h = Harness::new(
        1,
        ProducerConfig {
            adaptive_rate: true,
            ..config()
        },
    );
    // Throttled windows a second apart, past slow start: the controller cuts the rate.
    for _ in 0..3 {
        h.add_to(0, 1, "k", "d");
        h.advance(Duration::from_millis(500));
        let sent = h.poll_after_window();
        let throttled = err_entry("ProvisionedThroughputExceededException");
        h.engine.on_response(sent[0].0, Ok(vec![throttled]), h.now);
        h.advance(Duration::from_millis(500));
    }
    h.advance(STATS_PERIOD);
    let _ = h.poll();
    let published = h.engine.telemetry.stats.shards.lock().unwrap()[0].rate_factor;
    let factor = h.engine.rate.current();
    assert!(
        factor < 0.95,
        "sustained throttles lower the rate: {factor}"
    );
    assert_eq!(published, factor, "published as the controller has it");
}

#[test]
fn the_endpoint_back_off_reports_when_it_starts_and_ends() {
    let t0 = Instant::now();
    let mut b = EndpointBackoff::default();
    assert_eq!(b.failed(t0), None, "one failure is no back-off yet");
    assert!(!b.answered(), "an answer after one failure ends nothing");
    assert_eq!(b.failed(t0), None);
    let delay = b.failed(t0).expect("the second failure in a row starts it");
    assert_eq!(b.until(), Some(t0 + delay));
    assert_eq!(b.failed(t0), None, "later failures only lengthen it");
    assert!(b.answered(), "an answer ends it");
    assert!(!b.answered());
    assert_eq!(b.until(), None);
}

#[test]
fn the_auto_distribution_gauge_follows_the_stream() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let gauge = |keyed: bool| {
        metrics::with_local_recorder(&recorder, || {
            let mut h = Harness::with_prediction(2, config(), keyed);
            h.advance(STATS_PERIOD);
            let _ = h.poll();
        });
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find_map(|(key, _, _, value)| {
                (key.key().name() == crate::metrics::AUTO_DISTRIBUTION).then_some(value)
            })
    };
    assert_eq!(gauge(true), Some(DebugValue::Gauge(0.0.into())));
    assert_eq!(gauge(false), Some(DebugValue::Gauge(1.0.into())));
}

#[test]
fn each_request_records_how_many_user_records_it_carries() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut h = Harness::new(2, agg_config());
        for i in 0..7 {
            h.add_to(i % 2, 2, "k", "d");
        }
        h.advance(Duration::from_millis(100));
        assert_eq!(h.poll().len(), 1);
    });
    let per_request: Vec<f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == crate::metrics::USER_RECORDS_PER_REQUEST)
        .flat_map(|(.., value)| match value {
            DebugValue::Histogram(v) => v.into_iter().map(|x| x.0).collect(),
            _ => vec![],
        })
        .collect();
    assert_eq!(per_request, vec![7.0], "two aggregates of 4 and 3 records");
}

/// In slow start (1/32 of the rate) a record of nearly 1 MiB leaves the shard's limiter a debt
/// that takes about 30 s to refill at that rate, and the shard's timer is set by it. As the
/// rate rises, the shard is woken to work its wait out again: the next record goes within
/// about a second of the full rate, not after the debt at the slow-start rate (and not past
/// its 30 s TTL).
#[test]
fn a_shard_held_back_at_a_low_rate_is_woken_as_the_rate_rises() {
    let mut h = Harness::new(
        1,
        ProducerConfig {
            adaptive_rate: true,
            ..config()
        },
    );
    let _big = h.add_to(0, 1, "big", &"x".repeat(1_000_000));
    h.advance(Duration::from_millis(100));
    let (id, req) = h
        .poll_after_window()
        .pop()
        .expect("the bucket was full: sent at once");
    h.ok_all(id, &req, 1);
    let t0 = h.now;
    let mut small = h.add_to(0, 1, "small", "1");
    let mut sent = None;
    // Drains while the rate is already full and the record waits for the debt: once woken
    // at the full rate, the shard waits for its timer (not a drain per poll).
    let mut drains_at_full_rate = 0;
    while sent.is_none() && h.now < t0 + Duration::from_secs(40) {
        h.advance(Duration::from_millis(50));
        let (full, before) = (h.engine.rate.current() == 1.0, h.engine.drains);
        sent = h.poll().pop();
        if full && sent.is_none() {
            drains_at_full_rate += h.engine.drains - before;
        }
    }
    let (id, req) = sent.expect("sent within 40 s");
    let waited = h.now - t0;
    assert!(
        waited < Duration::from_secs(3),
        "sent {waited:?} after it was added; the rate factor is {}",
        h.engine.rate.current()
    );
    assert!(
        drains_at_full_rate <= 2,
        "{drains_at_full_rate} drains while the shard waited at the full rate"
    );
    h.ok_all(id, &req, 1);
    assert!(outcome(&mut small).is_ok());
}
