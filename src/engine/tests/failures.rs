//! Failures: partial and whole-request errors, permanent errors, TTL, misprediction, throttling, validation errors naming records.

use super::*;

#[test]
fn partial_failure_retries_ahead_of_newer_records_with_attempts() {
    let mut h = Harness::new(
        1,
        ProducerConfig {
            rate_limiting: false,
            ..config()
        },
    );
    let mut a = h.add_to(0, 1, "a", "1");
    let mut b = h.add_to(0, 1, "b", "2");
    let mut c = h.add_to(0, 1, "c", "3");
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    let results = vec![
        err_entry("ProvisionedThroughputExceededException"),
        ok_entry(&req.records[1], 1),
        err_entry("InternalFailure"),
    ];
    h.advance(Duration::from_millis(20));
    h.engine.on_response(id, Ok(results), h.now);
    assert!(outcome(&mut b).is_ok());
    let mut d = h.add_to(0, 1, "d", "4");
    // the shard backs off before the retry
    assert!(h.poll().is_empty());
    h.advance(Duration::from_secs(1));
    let (id, req) = h.poll_after_window().pop().unwrap();
    let keys: Vec<&str> = req
        .records
        .iter()
        .map(|r| r.partition_key.as_str())
        .collect();
    assert_eq!(keys, vec!["a", "c", "d"], "retries first, in their order");
    h.ok_all(id, &req, 1);
    let out = outcome(&mut a).unwrap();
    assert_eq!(out.attempts.len(), 2);
    assert_eq!(
        out.attempts[0].error_code.as_deref(),
        Some("ProvisionedThroughputExceededException")
    );
    assert_eq!(out.attempts[0].duration, Duration::from_millis(20));
    assert_eq!(
        outcome(&mut c).unwrap().attempts[0].error_code.as_deref(),
        Some("InternalFailure")
    );
    assert!(outcome(&mut d).is_ok());
    assert_eq!(
        h.engine
            .telemetry
            .stats
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn permanent_errors_fail_at_once_with_the_service_message() {
    let mut h = Harness::new(1, config());
    let mut a = h.add_to(0, 1, "a", "1");
    let mut b = h.add_to(0, 1, "b", "2");
    h.advance(Duration::from_millis(100));
    let (id, _) = h.poll().pop().unwrap();
    h.engine.on_response(
        id,
        Ok(vec![
            err_entry("KMSDisabledException"),
            err_entry("AccessDeniedException"),
        ]),
        h.now,
    );
    match outcome(&mut a) {
        Err(RecordError::Rejected {
            code,
            message,
            attempts,
        }) => {
            assert_eq!(&*code, "KMSDisabledException");
            assert_eq!(&*message, "KMSDisabledException message");
            assert_eq!(attempts.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        outcome(&mut b).unwrap_err().code(),
        Some("AccessDeniedException")
    );
    // whole-request failure that cannot be fixed by retrying
    let mut c = h.add_to(0, 1, "c", "3");
    h.advance(Duration::from_millis(100));
    let (id, _) = h.poll().pop().unwrap();
    let e = ClientError::service(
        "ResourceNotFoundException",
        "Stream s under account 1 not found.",
        400,
    );
    h.engine.on_response(id, Err(e), h.now);
    let err = outcome(&mut c).unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"));
    assert!(
        err.to_string()
            .contains("Stream s under account 1 not found."),
        "{err}"
    );
}

#[test]
fn whole_request_errors_are_retried_until_ttl() {
    let cfg = ProducerConfig {
        record_ttl: Duration::from_secs(2),
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let mut a = h.add_to(0, 1, "a", "1");
    let mut attempts = 0;
    while h.engine.ledger.held() > 0 && attempts < 100 {
        h.advance(Duration::from_millis(100));
        for (id, _) in h.poll() {
            attempts += 1;
            let mut e = ClientError::new(ClientErrorKind::Service, "boom");
            e.status = Some(503);
            h.engine.on_response(id, Err(e), h.now);
        }
    }
    assert!(attempts >= 3, "{attempts} attempts");
    let err = outcome(&mut a).unwrap_err();
    assert!(matches!(err, RecordError::Expired { .. }), "{err:?}");
    assert_eq!(err.attempts().len(), attempts);
    assert_eq!(err.code(), Some("HttpError503"));
    assert_eq!(h.engine.ledger.held(), 0);
}

#[test]
fn expired_error_lists_attempts_and_last_error() {
    let cfg = ProducerConfig {
        record_ttl: Duration::from_millis(500),
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let mut a = h.add_to(0, 1, "a", "1");
    h.advance(Duration::from_millis(100));
    let (id, _) = h.poll().pop().unwrap();
    h.engine.on_response(
        id,
        Err(ClientError::new(ClientErrorKind::Timeout, "no answer")),
        h.now,
    );
    h.advance(Duration::from_millis(400));
    assert!(h.poll().is_empty());
    match outcome(&mut a) {
        Err(e @ RecordError::Expired { .. }) => {
            assert_eq!(e.attempts().len(), 1);
            let text = e.to_string();
            assert!(text.contains("TTL") && text.contains("Timeout"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn huge_ttl_never_wraps() {
    let cfg = ProducerConfig {
        record_ttl: Duration::MAX,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let mut a = h.add_to(0, 1, "a", "1");
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    h.ok_all(id, &req, 1);
    assert!(outcome(&mut a).is_ok());
}

#[test]
fn misprediction_refreshes_the_map_without_resending() {
    let mut h = Harness::new(2, config());
    let mut a = h.add_to(0, 2, "a", "1");
    h.advance(Duration::from_millis(100));
    let (id, _) = h.poll().pop().unwrap();
    let stored_elsewhere = PutRecordsResultEntry::Ok {
        shard_id: "shardId-000000000007".into(),
        sequence_number: "1".into(),
    };
    h.engine.on_response(id, Ok(vec![stored_elsewhere]), h.now);
    let out = outcome(&mut a).unwrap();
    assert_eq!(&*out.shard_id, "shardId-000000000007");
    assert!(h.poll_refresh(), "a refresh is asked for");
    assert_eq!(h.engine.ledger.held(), 0, "nothing re-sent");
}

#[test]
fn throttling_backs_off_the_streams_rate() {
    let mut h = Harness::new(
        1,
        ProducerConfig {
            adaptive_rate: true,
            ..config()
        },
    );
    let throttled = || Ok(vec![err_entry("ProvisionedThroughputExceededException")]);
    // Slow start: the full rate within a few windows.
    h.advance(crate::limiter::control::WINDOW * 20);
    assert_eq!(h.engine.rate.factor(h.now), 1.0);
    let _a = h.add_to(0, 1, "a", "1");
    h.advance(Duration::from_millis(100));
    let (id, _) = h.poll().pop().unwrap();
    h.engine.on_response(id, throttled(), h.now);
    h.advance(crate::limiter::control::WINDOW * 2);
    let (id, _) = h
        .poll_after_window()
        .pop()
        .expect("retried after the back-off");
    assert_eq!(h.engine.rate.current(), 1.0, "a lone throttled window");
    h.engine.on_response(id, throttled(), h.now);
    // The record is sent again once its back-off ends, and its window has closed by then.
    let mut again = Vec::new();
    for _ in 0..50 {
        h.advance(Duration::from_millis(100));
        again = h.poll();
        if !again.is_empty() {
            break;
        }
    }
    let (id, req) = again.pop().expect("sent again");
    let f = h.engine.rate.current();
    assert!(f < 1.0, "a second throttled window cuts the rate: {f}");
    assert_eq!(h.engine.shards[0].telemetry.stats.throttles, 2);
    h.ok_all(id, &req, 1);
    assert_eq!(
        h.engine.shards[0].limiter.rate_factor(),
        f,
        "the limiter follows"
    );
}

#[test]
fn a_validation_error_naming_one_record_fails_that_record_only() {
    let mut h = Harness::new(1, config());
    let mut rxs: Vec<Rx> = ["a", "b", "c"]
        .iter()
        .map(|k| h.add_to(0, 1, k, "data"))
        .collect();
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    assert_eq!(req.records.len(), 3);
    let message = "1 validation error detected: Value 'java.nio.HeapByteBuffer[pos=0 lim=1048577 cap=1048577]' at 'records.2.member.data' failed to satisfy constraint: Member must have length less than or equal to 1048576";
    let e = ClientError::service("ValidationException", message, 400);
    h.engine.on_response(id, Err(e), h.now);
    match outcome(&mut rxs[1]) {
        Err(RecordError::Rejected {
            code, message: m, ..
        }) => {
            assert_eq!(&*code, "ValidationException");
            assert_eq!(&*m, message);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        pending(&mut rxs[0]) && pending(&mut rxs[2]),
        "the others go again"
    );
    let (id, req) = h.poll().pop().expect("the other two, sent again at once");
    assert_eq!(req.records.len(), 2);
    h.ok_all(id, &req, 1);
    for i in [0, 2] {
        let out = outcome(&mut rxs[i]).unwrap();
        assert_eq!(out.attempts.len(), 2);
        let note = out.attempts[0].error_message.as_deref().unwrap();
        assert!(
            note.starts_with("refused with its request because of another record"),
            "{note}"
        );
    }
    // A validation error that names no record (or one the request does not have) fails all.
    let mut more: Vec<Rx> = ["d", "e"].iter().map(|k| h.add_to(0, 1, k, "x")).collect();
    h.advance(Duration::from_millis(100));
    let (id, _) = h.poll().pop().unwrap();
    let e = ClientError::service(
        "ValidationException",
        "at 'records.7.member.data' failed",
        400,
    );
    h.engine.on_response(id, Err(e), h.now);
    assert!(more.iter_mut().all(|rx| outcome(rx).is_err()));
}
