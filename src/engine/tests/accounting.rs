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
