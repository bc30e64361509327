//! Batching and limits: linger, request size, per-shard limiter, in-flight limit, flush, shutdown.

use super::*;

#[test]
fn batches_until_max_buffered_time() {
    let mut h = Harness::new(4, config());
    let mut rxs: Vec<Rx> = (0..10)
        .map(|i| h.add_to(i % 4, 4, &format!("k{i}"), "data"))
        .collect();
    assert!(h.poll().is_empty(), "nothing is due yet");
    assert_eq!(
        h.engine.next_deadline(),
        Some(h.now + Duration::from_millis(100))
    );
    h.advance(Duration::from_millis(99));
    assert!(h.poll().is_empty());
    h.advance(MS);
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.records.len(), 10);
    h.ok_all(sent[0].0, &sent[0].1.clone(), 4);
    for (i, rx) in rxs.iter_mut().enumerate() {
        let out = outcome(rx).expect("stored");
        assert_eq!(&*out.shard_id, format!("shardId-{:012}", i % 4));
        assert_eq!(out.attempts.len(), 1);
        assert!(out.attempts[0].succeeded());
    }
    assert_eq!(h.gauge.records_held(), 0, "buffer room given back");
}

/// An aggregate sealed when its linger ended goes in the same poll, even a poll that comes
/// late; one sealed from records that reached the engine overdue (a backlog) waits the
/// request's window for the records released after it.
#[test]
fn a_lingered_aggregate_goes_at_once_and_a_backlog_waits_the_window() {
    let cfg = ProducerConfig {
        aggregation: true,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    h.add_to(0, 1, "a", "x");
    h.add_to(0, 1, "b", "x");
    h.advance(Duration::from_millis(103)); // the timer fired 3 ms late
    let sent = h.poll();
    assert_eq!(sent.len(), 1, "no window after a linger");
    assert_eq!(sent[0].1.records.len(), 1, "one aggregate of both records");

    // Records that reached the engine 5 s after `add`: the shard lingers from their arrival
    // at the engine, then the request they open stays open the window.
    let hash = HashKey(even_range(0, 1).0);
    for key in ["c", "d"] {
        let (tx, _rx) = oneshot::channel();
        let record = UserRecord::new(key, "x".to_string());
        assert!(h.gauge.try_acquire(record.size()));
        let added = h.now - Duration::from_secs(5);
        h.engine
            .on_record(Entry::new(record, hash, added, Some(tx)), h.now);
    }
    h.advance(Duration::from_millis(100));
    assert!(h.poll().is_empty(), "held for the window");
    let window = h.engine.s.config.max_buffered_time / crate::collector::MIN_WINDOW_DIVISOR;
    h.advance(window);
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.records.len(), 1);
}

#[test]
fn full_request_goes_at_once_within_limits() {
    let mut h = Harness::new(
        2,
        ProducerConfig {
            rate_limiting: false,
            ..config()
        },
    );
    for i in 0..1200 {
        h.add_to(i % 2, 2, "k", "0123456789");
    }
    let sent = h.poll();
    assert_eq!(
        sent.iter()
            .map(|(_, r)| r.records.len())
            .collect::<Vec<_>>(),
        vec![500, 500]
    );
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    assert_eq!(sent[0].1.records.len(), 200);
}

#[test]
fn request_byte_limit() {
    let cfg = ProducerConfig {
        max_request_bytes: Some(1000),
        rate_limiting: false,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    for _ in 0..10 {
        h.add_to(0, 1, "k", &"x".repeat(299)); // 300 bytes each
    }
    h.advance(Duration::from_millis(100));
    let sizes: Vec<usize> = h.poll().iter().map(|(_, r)| r.records.len()).collect();
    assert_eq!(sizes, vec![3, 3, 3, 1]);
}

#[test]
fn shard_limiter_holds_one_shard_not_others() {
    let mut h = Harness::new(2, config());
    let mut first: Vec<Rx> = (0..1500).map(|_| h.add_to(0, 2, "k", "x")).collect();
    let mut other = h.add_to(1, 2, "k", "x");
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    let total: usize = sent.iter().map(|(_, r)| r.records.len()).sum();
    assert_eq!(
        total, 1001,
        "1,000 of shard 0 (its one-second burst) and shard 1's record"
    );
    for (id, req) in &sent {
        h.ok_all(*id, req, 2);
    }
    assert!(outcome(&mut other).is_ok());
    assert!(pending(&mut first[1200]));
    // the rest goes at 1,000/s: 250 ms of it, the last part during the request's window
    let window = h.engine.s.config.max_buffered_time / crate::collector::MIN_WINDOW_DIVISOR;
    h.advance(Duration::from_millis(250) - window);
    let sent: usize = h
        .poll_after_window()
        .iter()
        .map(|(_, r)| r.records.len())
        .sum();
    assert!((240..=260).contains(&sent), "{sent}");
}

#[test]
fn max_in_flight_is_respected() {
    let cfg = ProducerConfig {
        max_in_flight: 2,
        max_records_per_request: 1,
        rate_limiting: false,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    for _ in 0..5 {
        h.add_to(0, 1, "k", "x");
    }
    let sent = h.poll();
    assert_eq!(sent.len(), 2);
    assert!(h.poll().is_empty());
    h.ok_all(sent[0].0, &sent[0].1, 1);
    assert_eq!(h.poll().len(), 1);
}

#[test]
fn flush_resolves_after_everything_before_it() {
    let mut h = Harness::new(1, config());
    let mut a = h.add_to(0, 1, "a", "1");
    let (ftx, mut frx) = oneshot::channel();
    h.engine.on_flush(ftx);
    let _later = h.add_to(0, 1, "b", "2");
    let sent = h.poll();
    assert_eq!(
        sent.len(),
        1,
        "flush sends without waiting for max_buffered_time"
    );
    assert!(frx.try_recv().is_err());
    h.ok_all(sent[0].0, &sent[0].1, 1);
    assert!(outcome(&mut a).is_ok());
    assert_eq!(frx.try_recv(), Ok(()));
}

#[test]
fn a_record_added_during_shutdown_goes_at_once_and_after_the_deadline_fails() {
    let cfg = ProducerConfig {
        shutdown_timeout: Duration::from_secs(1),
        ..agg_config()
    };
    let mut h = Harness::new(1, cfg);
    h.engine.on_shutdown(None, h.now);
    let mut a = h.add_to(0, 1, "k", "a");
    let mut b = h.add_to(0, 1, "k", "b");
    let sent = h.poll();
    assert_eq!(sent.len(), 1, "no linger while shutting down");
    assert_eq!(sent[0].1.records.len(), 1, "one aggregate of both");
    h.ok_all(sent[0].0, &sent[0].1, 1);
    assert!(outcome(&mut a).is_ok() && outcome(&mut b).is_ok());
    h.advance(Duration::from_millis(999));
    let mut c = h.add_to(0, 1, "k", "c");
    assert!(
        pending(&mut c),
        "before the deadline a record is still taken"
    );
    h.advance(MS);
    let mut d = h.add_to(0, 1, "k", "d");
    assert!(matches!(outcome(&mut d), Err(RecordError::ShutDown { .. })));
    let _ = h.poll();
    assert!(matches!(outcome(&mut c), Err(RecordError::ShutDown { .. })));
}

#[test]
fn shutdown_drains_then_fails_what_is_left_at_the_deadline() {
    let cfg = ProducerConfig {
        shutdown_timeout: Duration::from_secs(1),
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let mut a = h.add_to(0, 1, "a", "1");
    let (stx, mut srx) = oneshot::channel();
    h.engine.on_shutdown(Some(stx), h.now);
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    assert!(!h.engine.is_finished());
    h.advance(Duration::from_secs(1));
    let _ = h.poll();
    assert!(matches!(outcome(&mut a), Err(RecordError::ShutDown { .. })));
    assert!(h.engine.is_finished());
    assert_eq!(srx.try_recv(), Ok(()));
    // a late response is ignored
    h.ok_all(sent[0].0, &sent[0].1, 1);
    assert_eq!(h.gauge.records_held(), 0);
}

/// A full buffer with nothing in flight and no shard held back: no record can arrive until
/// something is sent, so the request goes at once instead of after `max_buffered_time`. With
/// room left, or a request in flight (its answer makes room), it waits as before.
#[test]
fn a_full_buffer_with_nothing_in_flight_sends_at_once() {
    let cfg = ProducerConfig {
        max_buffered_records: 10,
        ..config()
    };
    let mut h = Harness::new(4, cfg);
    let add = |h: &mut Harness, n: usize| {
        for i in 0..n {
            h.add_to(i as u32 % 4, 4, &format!("k{i}"), "data");
        }
    };
    add(&mut h, 5);
    assert!(h.poll().is_empty(), "room left: waits to fill");
    h.advance(Duration::from_millis(100));
    let first = h.poll();
    assert_eq!(first.len(), 1, "due by age");
    add(&mut h, 5);
    assert!(h.gauge.is_full());
    assert!(
        h.poll().is_empty(),
        "full, but the request in flight will make room"
    );
    h.ok_all(first[0].0, &first[0].1.clone(), 4);
    assert!(h.poll().is_empty(), "room left: waits to fill");
    add(&mut h, 5);
    let sent = h.poll();
    assert_eq!(sent.len(), 1, "full with nothing in flight: goes at once");
    assert_eq!(sent[0].1.records.len(), 10);
}

/// Not starved while a request waits to go (its answer makes room), nor while a shard's
/// limiter holds records back (what it releases next joins the request: sent at once, each
/// release would go in a request of its own).
#[test]
fn a_full_buffer_waits_for_a_request_about_to_go_or_a_limited_shard() {
    let cfg = ProducerConfig {
        max_buffered_records: 8,
        max_records_per_request: 5,
        ..config()
    };
    let mut h = Harness::new(4, cfg);
    for i in 0..8 {
        h.add_to(i % 4, 4, "k", "d");
    }
    let sent = h.poll();
    assert_eq!(
        sent.len(),
        1,
        "the full request goes; the other 3 wait for its answer"
    );
    assert_eq!(sent[0].1.records.len(), 5);
    h.ok_all(sent[0].0, &sent[0].1.clone(), 4);
    assert!(
        h.poll().is_empty(),
        "the 3 wait to fill, not in a request of their own"
    );

    let cfg = ProducerConfig {
        max_buffered_records: 2_000,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    for i in 0..2_000 {
        h.add_to(0, 1, &format!("k{i}"), "d");
    }
    for (id, req) in h.poll() {
        h.ok_all(id, &req, 1);
    }
    let held = h.gauge.records_held();
    assert!(
        held > 0 && held < 2_000,
        "the limiter held some back: {held}"
    );
    for i in 0..2_000 - held {
        h.add_to(0, 1, &format!("m{i}"), "d");
    }
    assert!(h.gauge.is_full());
    h.advance(Duration::from_millis(20));
    assert!(
        h.poll().is_empty(),
        "what the limiter releases waits for the request's window"
    );
}
