//! Metrics, the ledger, adaptive concurrency.

use super::*;

#[test]
fn metrics_reach_the_facade_with_labels() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let cfg = ProducerConfig {
            metrics_granularity: crate::config::MetricsGranularity::Shard,
            ..config()
        };
        let mut h = Harness::new(1, cfg);
        let _a = h.add_to(0, 1, "a", "1");
        let _b = h.add_to(0, 1, "b", "2");
        h.advance(Duration::from_millis(100));
        let (id, req) = h.poll().pop().unwrap();
        h.engine.on_response(
            id,
            Ok(vec![
                ok_entry(&req.records[0], 1),
                err_entry("InternalFailure"),
            ]),
            h.now,
        );
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, label: Option<(&str, &str)>| -> u64 {
        snapshot
            .iter()
            .filter(|(k, ..)| k.key().name() == name)
            .filter(|(k, ..)| {
                let labels: Vec<_> = k
                    .key()
                    .labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect();
                labels.iter().any(|(k, v)| k == "stream" && v == "s")
                    && label.is_none_or(|(lk, lv)| labels.iter().any(|(k, v)| k == lk && v == lv))
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum()
    };
    use crate::metrics::*;
    assert_eq!(counter(USER_RECORDS_RECEIVED, None), 2);
    assert_eq!(counter(USER_RECORDS_PUT, None), 1);
    assert_eq!(counter(REQUESTS, None), 1);
    assert_eq!(counter(RETRIES, None), 1);
    assert_eq!(counter(ERRORS, Some(("code", "InternalFailure"))), 1);
    assert_eq!(
        counter(KINESIS_RECORDS_PUT, Some(("shard", "shardId-000000000000"))),
        1
    );
}

#[test]
fn the_ledger_counts_what_is_held_and_gives_room_back_exactly_once() {
    let mut h = Harness::new(2, config());
    let agree = |h: &Harness| {
        assert_eq!(
            (h.engine.ledger.held(), h.engine.ledger.bytes()),
            (h.gauge.records_held(), h.gauge.bytes_held()),
            "ledger and buffer room disagree"
        );
    };
    let mut rxs: Vec<Rx> = (0..6)
        .map(|i| h.add_to(i % 2, 2, &format!("k{i}"), "payload"))
        .collect();
    assert_eq!(h.engine.ledger.held(), 6);
    assert_eq!(h.engine.ledger.bytes(), 6 * ("k0".len() + "payload".len()));
    agree(&h);
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    assert_eq!(req.records.len(), 6);
    // Two stored, two to retry, two rejected for good.
    let results = req
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| match i {
            0 | 1 => ok_entry(r, 2),
            2 | 3 => err_entry("InternalFailure"),
            _ => err_entry("AccessDeniedException"),
        })
        .collect();
    h.engine.on_response(id, Ok(results), h.now);
    assert_eq!(h.engine.ledger.held(), 2, "the two retries are still held");
    agree(&h);
    // A late duplicate answer to the same request changes nothing.
    h.engine
        .on_response(id, Ok(vec![err_entry("InternalFailure"); 6]), h.now);
    assert_eq!(h.engine.ledger.held(), 2);
    agree(&h);
    // The shards back off before the retry goes out.
    let mut retry = None;
    for _ in 0..100 {
        h.advance(Duration::from_millis(100));
        if let Some(sent) = h.poll().pop() {
            retry = Some(sent);
            break;
        }
    }
    let (id, req) = retry.expect("retry request");
    assert_eq!(req.records.len(), 2);
    h.ok_all(id, &req, 2);
    assert_eq!((h.engine.ledger.held(), h.engine.ledger.bytes()), (0, 0));
    agree(&h);
    assert!(rxs.iter_mut().all(|rx| !pending(rx)));
    assert_eq!(
        h.engine
            .telemetry
            .stats
            .records_pending
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the ledger publishes its count for stats()"
    );
}

#[test]
fn adaptive_concurrency_starts_with_one_request_grows_with_answers_and_halves_on_timeouts() {
    let mut h = Harness::new(
        4,
        ProducerConfig {
            adaptive_concurrency: true,
            max_in_flight: 8,
            rate_limiting: false,
            ..config()
        },
    );
    let _rxs: Vec<Rx> = (0..4_000)
        .map(|i| h.add_to(i % 4, 4, &format!("k{i}"), "d"))
        .collect();
    h.advance(Duration::from_millis(100));
    let first = h.poll();
    assert_eq!(first.len(), 1, "slow start: one request at first");
    h.advance(Duration::from_millis(20));
    let (id, req) = &first[0];
    h.ok_all(*id, req, 4);
    let second = h.poll();
    assert_eq!(second.len(), 2, "one answer, one more request");
    // Both time out: the endpoint is congested.
    for (id, _) in &second {
        let e = ClientError::new(ClientErrorKind::Timeout, "no answer within 6s");
        h.engine.on_response(*id, Err(e), h.now);
    }
    assert_eq!(h.engine.concurrency.limit(), 1, "halved once, from 2 to 1");
    assert_eq!(
        h.engine
            .telemetry
            .stats
            .possible_duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        1_000,
        "the 1,000 records of two timed-out requests may be stored twice"
    );
    // The next request waits longer before it is abandoned: twice as long per timeout.
    h.advance(Duration::from_secs(1));
    h.engine.poll(h.now, &mut h.actions);
    let timeouts: Vec<Duration> = h
        .actions
        .drain(..)
        .filter_map(|a| match a {
            Action::Send { timeout, .. } => Some(timeout),
            _ => None,
        })
        .collect();
    assert_eq!(timeouts, vec![Duration::from_secs(24)]);
}

#[test]
fn the_ledger_counts_bytes_and_withholds_room_as_records_leave() {
    let now = Instant::now();
    let gauge = Arc::new(BufferGauge::new(100, 1_000));
    let shared = SharedStats::new(now);
    let mut ledger = Ledger::new(gauge.clone(), shared.clone());
    let mut entries: Vec<Entry> = (0..10)
        .map(|_| {
            let r = UserRecord::new("k", vec![0u8; 9]);
            assert!(gauge.try_acquire(r.size()));
            let mut e = Entry::new(r, HashKey(0), now, None);
            ledger.admit(&mut e);
            e
        })
        .collect();
    assert_eq!((ledger.held(), ledger.bytes()), (10, 100));
    let published = || {
        (
            shared
                .records_pending
                .load(std::sync::atomic::Ordering::Relaxed),
            shared
                .bytes_pending
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    assert_eq!(published(), (10, 100), "stats() sees what the ledger holds");
    // A cap of 5 records and 50 bytes: 95 and 950 to withhold, 90 and 900 free to take now.
    ledger.set_cap((5, 50));
    assert_eq!(gauge.withheld(), (90, 900));
    // Records leaving fill what is still to withhold before any room goes back to `add`.
    let first: Vec<Entry> = entries.drain(..3).collect();
    assert_eq!(ledger.release(&first), (3, 30));
    assert_eq!(gauge.withheld(), (93, 930));
    assert_eq!((gauge.records_free(), gauge.bytes_free()), (0, 0));
    let second: Vec<Entry> = entries.drain(..3).collect();
    assert_eq!(ledger.release(&second), (3, 30));
    assert_eq!(gauge.withheld(), (95, 950));
    assert_eq!((gauge.records_free(), gauge.bytes_free()), (1, 10));
    assert_eq!((ledger.held(), ledger.bytes()), (4, 40));
    assert_eq!(published(), (4, 40));
    // The cap rises back to the bound: everything withheld goes back to `add`.
    ledger.set_cap((100, 1_000));
    assert_eq!(gauge.withheld(), (0, 0));
    assert_eq!((gauge.records_free(), gauge.bytes_free()), (96, 960));
}

#[test]
fn a_flush_waits_for_the_records_before_it_only() {
    let now = Instant::now();
    let gauge = Arc::new(BufferGauge::new(100, 1_000));
    let mut ledger = Ledger::new(gauge.clone(), SharedStats::new(now));
    let admit = |ledger: &mut Ledger| {
        let r = UserRecord::new("k", "d");
        assert!(gauge.try_acquire(r.size()));
        let mut e = Entry::new(r, HashKey(0), now, None);
        ledger.admit(&mut e);
        e
    };
    let old = admit(&mut ledger);
    let (tx, mut rx) = oneshot::channel();
    ledger.flush(tx);
    let new = admit(&mut ledger);
    ledger.release([&new]);
    ledger.delivered(new.seq);
    assert!(
        rx.try_recv().is_err(),
        "a record added after the flush does not count"
    );
    ledger.release([&old]);
    ledger.delivered(old.seq);
    assert_eq!(rx.try_recv(), Ok(()));
}

#[test]
fn an_answer_wakes_a_shard_only_if_it_holds_records() {
    let mut h = Harness::new(1, config());
    let _rx = h.add_to(0, 1, "k", "d");
    h.advance(Duration::from_millis(100));
    let sent = h.poll_after_window();
    let before = h.engine.drains;
    h.ok_all(sent[0].0, &sent[0].1, 1);
    let _ = h.poll();
    assert_eq!(h.engine.drains, before, "an empty shard is not drained");
}

#[test]
fn a_batch_that_waited_past_its_ttl_in_the_outbox_is_not_sent() {
    let cfg = ProducerConfig {
        rate_limiting: false,
        record_ttl: Duration::from_secs(1),
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let deadline = h.now + Duration::from_secs(1);
    let mut rx = h.add_to(0, 1, "k", "d");
    // Two whole-request failures: the endpoint back-off holds the retry in the outbox.
    for _ in 0..2 {
        h.advance(Duration::from_millis(100));
        let sent = h.poll_after_window();
        let e = ClientError::service("ServiceUnavailable", "down", 503);
        h.engine.on_response(sent[0].0, Err(e), h.now);
    }
    assert!(h.poll_after_window().is_empty());
    assert!(!h.engine.outbox.is_empty());
    let until = h.engine.endpoint.until().expect("backing off");
    assert!(until < deadline, "the back-off ends before the TTL");
    // The first poll after the back-off comes exactly at the record's deadline.
    h.now = deadline;
    assert!(h.poll().is_empty(), "a record at its deadline is not sent");
    assert!(matches!(outcome(&mut rx), Err(RecordError::Expired { .. })));
}

/// An aggregate that waits in the outbox past its oldest record's TTL is not sent: that record
/// fails, and the younger one goes back to its queue and out again.
#[test]
fn an_aggregate_past_its_oldest_records_ttl_in_the_outbox_sends_only_the_younger() {
    let cfg = ProducerConfig {
        rate_limiting: false,
        aggregation: true,
        record_ttl: Duration::from_secs(1),
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let deadline = h.now + Duration::from_secs(1);
    let mut old = h.add_to(0, 1, "old", "d");
    h.advance(Duration::from_millis(50));
    let mut young = h.add_to(0, 1, "young", "d");
    for _ in 0..2 {
        h.advance(Duration::from_millis(100));
        let sent = h.poll_after_window();
        assert_eq!(sent[0].1.records.len(), 1, "one aggregate of both");
        let e = ClientError::service("ServiceUnavailable", "down", 503);
        h.engine.on_response(sent[0].0, Err(e), h.now);
    }
    assert!(h.poll_after_window().is_empty());
    assert!(!h.engine.outbox.is_empty());
    h.now = deadline;
    let mut sent = h.poll();
    assert!(matches!(
        outcome(&mut old),
        Err(RecordError::Expired { .. })
    ));
    if sent.is_empty() {
        sent = h.poll_after_window();
    }
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.records.len(), 1);
    assert_eq!(sent[0].1.records[0].partition_key, "young");
    h.ok_all(sent[0].0, &sent[0].1, 1);
    assert!(outcome(&mut young).is_ok());
}
