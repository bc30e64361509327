//! Whole-request errors: what each kind does to the in-flight limit, the duplicate count, the
//! settings schedule, and which records a validation error fails.

use super::*;

/// A request of `n` plain records to shard 0 of 1, sent.
fn one_request(h: &mut Harness, n: usize) -> (u64, PutRecordsRequest, Vec<Rx>) {
    let rxs: Vec<Rx> = (0..n)
        .map(|i| h.add_to(0, 1, &format!("k{i}"), "d"))
        .collect();
    h.advance(Duration::from_millis(100));
    let mut sent = h.poll_after_window();
    assert_eq!(sent.len(), 1);
    let (id, req) = sent.pop().unwrap();
    assert_eq!(req.records.len(), n);
    (id, req, rxs)
}

fn limit_after(error: ClientError) -> usize {
    let cfg = ProducerConfig {
        adaptive_concurrency: true,
        rate_limiting: false,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    // Slow start to a limit of 8 on quick answers.
    for _ in 0..7 {
        let (id, req, _) = one_request(&mut h, 1);
        h.ok_all(id, &req, 1);
    }
    assert_eq!(h.engine.concurrency.limit(), 8);
    let (id, _, _) = one_request(&mut h, 1);
    h.engine.on_response(id, Err(error), h.now);
    h.engine.concurrency.limit()
}

#[test]
fn a_retryable_service_error_is_congestion_a_final_one_an_answer() {
    assert_eq!(
        limit_after(ClientError::service("ServiceUnavailable", "down", 503)),
        4,
        "halved"
    );
    assert_eq!(
        limit_after(ClientError::service("AccessDeniedException", "no", 400)),
        9,
        "an answer like any other"
    );
}

#[test]
fn only_an_unknown_outcome_counts_possible_duplicates() {
    let mut h = Harness::new(1, config());
    let (id, _, _) = one_request(&mut h, 3);
    h.engine.on_response(
        id,
        Err(ClientError::service("ServiceUnavailable", "down", 503)),
        h.now,
    );
    let dups = || {
        h.engine
            .telemetry
            .stats
            .possible_duplicates
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(dups(), 0, "a 503 says the request was not applied");
    let mut h = Harness::new(1, config());
    let (id, _, _) = one_request(&mut h, 3);
    let timeout = ClientError::new(ClientErrorKind::Timeout, "no answer");
    h.engine.on_response(id, Err(timeout), h.now);
    let dups = h
        .engine
        .telemetry
        .stats
        .possible_duplicates
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dups, 3);
}

#[test]
fn a_validation_error_reads_the_stream_settings_other_errors_do_not() {
    let reads_after = |error: ClientError| {
        let mut h = Harness::new(1, config());
        let (id, _, _) = one_request(&mut h, 1);
        h.engine.on_response(id, Err(error), h.now);
        h.engine.poll(h.now, &mut h.actions);
        h.actions
            .iter()
            .any(|a| matches!(a, Action::ReadStreamSettings))
    };
    assert!(reads_after(ClientError::service(
        "ValidationException",
        "1 validation error detected",
        400
    )));
    assert!(!reads_after(ClientError::service(
        "ServiceUnavailable",
        "down",
        503
    )));
}

#[test]
fn only_a_validation_error_names_culprits_and_only_in_range() {
    let named = "1 validation error detected: Value at 'records.2.member.data' failed";
    let outcomes = |error: ClientError| {
        let mut h = Harness::new(1, config());
        let (id, _, mut rxs) = one_request(&mut h, 3);
        h.engine.on_response(id, Err(error), h.now);
        rxs.iter_mut()
            .map(|rx| match rx.try_recv() {
                Ok(Err(e)) => e.code().unwrap_or("").to_string(),
                Ok(Ok(_)) => "stored".into(),
                Err(_) => "retried".into(),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        outcomes(ClientError::service("ValidationException", named, 400)),
        ["retried", "ValidationException", "retried"]
    );
    assert_eq!(
        outcomes(ClientError::service("AccessDeniedException", named, 400)),
        ["AccessDeniedException"; 3],
        "another final error fails them all, whatever its message says"
    );
    assert_eq!(
        outcomes(ClientError::service("ServiceUnavailable", named, 503)),
        ["retried"; 3]
    );
    let past_the_end = "Value at 'records.4.member.data' failed";
    assert_eq!(
        outcomes(ClientError::service(
            "ValidationException",
            past_the_end,
            400
        )),
        ["ValidationException"; 3],
        "a position the request does not have: all fail"
    );
}

#[test]
fn a_record_retried_at_its_deadline_expires_uncounted_as_a_retry() {
    let cfg = ProducerConfig {
        record_ttl: Duration::from_millis(500),
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let deadline = h.now + Duration::from_millis(500);
    let (id, _, mut rxs) = one_request(&mut h, 1);
    h.now = deadline;
    h.engine.on_response(
        id,
        Err(ClientError::service("ServiceUnavailable", "down", 503)),
        h.now,
    );
    assert!(matches!(
        outcome(&mut rxs[0]),
        Err(RecordError::Expired { .. })
    ));
    let retries = h
        .engine
        .telemetry
        .stats
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(retries, 0);
}
