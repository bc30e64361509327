//! The engine driven by a virtual clock: batching, limits, failures, aggregation, resharding.

use super::outcome::STRANDED_CODE;
use super::*;
use crate::config::Ordering;
use crate::hash_key::HashKey;
use crate::kinesis::{ClientErrorKind, PutRecordsEntry};
use crate::record::{PutOutcome, UserRecord};
use crate::shard_map::{even_range, even_shards as shards};
use std::time::Duration;
use tokio::sync::oneshot::error::TryRecvError;

type Rx = oneshot::Receiver<Result<PutOutcome, RecordError>>;

struct Harness {
    engine: Engine,
    now: Instant,
    gauge: Arc<BufferGauge>,
    actions: Vec<Action>,
}

/// Fixed concurrency: these tests count requests in flight from the first poll (the adaptive
/// controller is tested in `congestion.rs` and below).
fn config() -> ProducerConfig {
    ProducerConfig {
        stream: Some(StreamRef::Name("s".into())),
        aggregation: false,
        adaptive_concurrency: false,
        ..Default::default()
    }
}

impl Harness {
    fn new(n: u32, config: ProducerConfig) -> Self {
        Self::with_prediction(n, config, true)
    }

    fn with_prediction(n: u32, config: ProducerConfig, predict: bool) -> Self {
        let now = Instant::now();
        let gauge = Arc::new(BufferGauge::new(
            config.max_buffered_records,
            config.max_buffered_bytes,
        ));
        let settings = EngineSettings::new(&config, StreamRef::Name("s".into()), predict);
        let engine = Engine::new(
            settings,
            ShardMap::new(shards(n)),
            gauge.clone(),
            SharedStats::new(now),
            Metrics::new("s", config.metrics_granularity),
            now,
        );
        Harness {
            engine,
            now,
            gauge,
            actions: Vec::new(),
        }
    }

    /// Adds a record aimed at `shard` of `n` (by explicit hash key).
    fn add_to(&mut self, shard: u32, n: u32, key: &str, data: &str) -> Rx {
        let hash = even_range(shard, n).0;
        let record =
            UserRecord::new(key, data.to_string()).with_explicit_hash_key(hash.to_string());
        self.add(record, HashKey(hash))
    }

    fn add(&mut self, record: UserRecord, hash: HashKey) -> Rx {
        let (tx, rx) = oneshot::channel();
        assert!(self.gauge.try_acquire(record.size()));
        let ttl = self.engine.s.config.record_ttl;
        self.engine
            .on_record(Entry::new(record, hash, self.now, ttl, Some(tx)), self.now);
        rx
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Polls and returns the requests sent.
    fn poll(&mut self) -> Vec<(u64, PutRecordsRequest)> {
        self.engine.poll(self.now, &mut self.actions);
        self.actions
            .drain(..)
            .filter_map(|a| match a {
                Action::Send { id, request, .. } => Some((id, request)),
                Action::RefreshShardMap => None,
            })
            .collect()
    }

    /// Polls once more after the short window a request opened by overdue records (retries,
    /// a backlog) stays open.
    fn poll_after_window(&mut self) -> Vec<(u64, PutRecordsRequest)> {
        let mut sent = self.poll();
        if sent.is_empty() {
            self.advance(
                self.engine.s.config.max_buffered_time / crate::collector::MIN_WINDOW_DIVISOR,
            );
            sent = self.poll();
        }
        sent
    }

    fn poll_refresh(&mut self) -> bool {
        self.engine.poll(self.now, &mut self.actions);
        let refresh = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::RefreshShardMap));
        assert!(
            self.actions
                .iter()
                .all(|a| !matches!(a, Action::Send { .. })),
            "no send expected"
        );
        self.actions.clear();
        refresh
    }

    /// Answers a request: each record stored on the shard its explicit hash key names.
    fn ok_all(&mut self, id: u64, req: &PutRecordsRequest, n: u32) {
        let results = req.records.iter().map(|r| ok_entry(r, n)).collect();
        self.engine.on_response(id, Ok(results), self.now);
    }
}

fn ok_entry(r: &PutRecordsEntry, n: u32) -> PutRecordsResultEntry {
    let key = match &r.explicit_hash_key {
        Some(k) => k.parse::<u128>().unwrap(),
        None => HashKey::from_partition_key(&r.partition_key).0,
    };
    let i = (0..n).find(|&i| even_range(i, n).1 >= key).unwrap();
    PutRecordsResultEntry::Ok {
        shard_id: format!("shardId-{i:012}").into(),
        sequence_number: format!("{:056}", key % 1000).into(),
    }
}

fn err_entry(code: &str) -> PutRecordsResultEntry {
    PutRecordsResultEntry::Err {
        code: code.into(),
        message: format!("{code} message").into(),
    }
}

fn outcome(rx: &mut Rx) -> Result<PutOutcome, RecordError> {
    match rx.try_recv() {
        Ok(r) => r,
        Err(TryRecvError::Empty) => panic!("not resolved yet"),
        Err(TryRecvError::Closed) => panic!("dropped unresolved"),
    }
}

fn pending(rx: &mut Rx) -> bool {
    matches!(rx.try_recv(), Err(TryRecvError::Empty))
}

const MS: Duration = Duration::from_millis(1);

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
    // the rest goes at 1,000/s
    h.advance(Duration::from_millis(250));
    let sent: usize = h
        .poll_after_window()
        .iter()
        .map(|(_, r)| r.records.len())
        .sum();
    assert!((240..=260).contains(&sent), "{sent}");
}

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
fn refresh_moves_queued_records_to_the_new_shards() {
    let mut h = Harness::new(1, config());
    let mut rxs: Vec<Rx> = (0..4u32)
        .map(|i| {
            let hash = even_range(i, 4).0;
            h.add(
                UserRecord::new(format!("k{i}"), "x").with_explicit_hash_key(hash.to_string()),
                HashKey(hash),
            )
        })
        .collect();
    let mut new_shards = shards(4);
    new_shards.push(ShardInfo {
        id: "shardId-000000000000".into(),
        start: 0,
        end: u128::MAX,
        open: false,
    });
    // rename the children so that the parent is gone from the open set
    for (i, s) in new_shards.iter_mut().take(4).enumerate() {
        s.id = format!("shardId-00000000010{i}").into();
    }
    h.engine.on_shard_map(Ok(new_shards), h.now);
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    assert_eq!(req.records.len(), 4);
    let results = req
        .records
        .iter()
        .map(|r| {
            let key: u128 = r.explicit_hash_key.as_ref().unwrap().parse().unwrap();
            let i = (0..4).find(|&i| even_range(i, 4).0 == key).unwrap();
            PutRecordsResultEntry::Ok {
                shard_id: format!("shardId-00000000010{i}").into(),
                sequence_number: "1".into(),
            }
        })
        .collect();
    h.engine.on_response(id, Ok(results), h.now);
    for rx in &mut rxs {
        assert!(outcome(rx).is_ok());
    }
    assert!(!h.poll_refresh(), "predictions matched the new map");
}

#[test]
fn per_shard_ordering_one_request_in_flight_per_shard() {
    let cfg = ProducerConfig {
        ordering: Ordering::PerShard,
        ..config()
    };
    let mut h = Harness::new(2, cfg);
    let mut a1 = h.add_to(0, 2, "a", "1");
    let mut a2 = h.add_to(0, 2, "a", "2");
    let mut b1 = h.add_to(1, 2, "b", "1");
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    let (id, req) = &sent[0];
    let keys: Vec<(&str, &[u8])> = req
        .records
        .iter()
        .map(|r| (r.partition_key.as_str(), &r.data[..]))
        .collect();
    assert_eq!(
        keys,
        vec![("b", &b"1"[..]), ("a", &b"1"[..])],
        "one record per shard per request"
    );
    // shard 0 fails, shard 1 succeeds
    h.engine.on_response(
        *id,
        Ok(vec![
            ok_entry(&req.records[0], 2),
            err_entry("InternalFailure"),
        ]),
        h.now,
    );
    assert!(outcome(&mut b1).is_ok());
    h.advance(Duration::from_secs(6));
    let (id, req) = h.poll_after_window().pop().unwrap();
    assert_eq!(
        &req.records[0].data[..],
        b"1",
        "the failed record goes before the newer one"
    );
    assert_eq!(req.records.len(), 1);
    h.ok_all(id, &req, 2);
    assert!(outcome(&mut a1).is_ok());
    assert!(pending(&mut a2));
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll_after_window().pop().unwrap();
    assert_eq!(&req.records[0].data[..], b"2");
    h.ok_all(id, &req, 2);
    assert!(outcome(&mut a2).is_ok());
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

#[test]
fn throttling_backs_off_the_shard_rate() {
    let mut h = Harness::new(1, config());
    let throttled = || Ok(vec![err_entry("ProvisionedThroughputExceededException")]);
    let _a = h.add_to(0, 1, "a", "1");
    h.advance(Duration::from_millis(100));
    let (id, _) = h.poll().pop().unwrap();
    h.engine.on_response(id, throttled(), h.now);
    assert_eq!(
        h.engine.shards[0].limiter.rate_factor(),
        1.0,
        "a lone throttle"
    );
    h.advance(Duration::from_millis(500));
    let (id, _) = h
        .poll_after_window()
        .pop()
        .expect("retried after the back-off");
    h.engine.on_response(id, throttled(), h.now);
    assert_eq!(
        h.engine.shards[0].limiter.rate_factor(),
        crate::limiter::DECREASE_FACTOR
    );
    assert_eq!(h.engine.shards[0].telemetry.stats.throttles, 2);
}

fn agg_config() -> ProducerConfig {
    ProducerConfig {
        aggregation: true,
        rate_limiting: false,
        ..config()
    }
}

#[test]
fn aggregates_records_of_one_shard_and_reports_positions() {
    let mut h = Harness::new(2, agg_config());
    let mut rxs: Vec<Rx> = (0..5)
        .map(|i| h.add_to(0, 2, &format!("k{i}"), "data"))
        .collect();
    let mut other = h.add_to(1, 2, "lonely", "x");
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    assert_eq!(
        req.records.len(),
        2,
        "one aggregate for shard 0, one plain record for shard 1"
    );
    let agg = req
        .records
        .iter()
        .find(|r| r.data.starts_with(&crate::aggregation::MAGIC))
        .unwrap();
    assert_eq!(agg.partition_key, "k0");
    assert_eq!(
        agg.explicit_hash_key.as_deref(),
        Some("0"),
        "outer hash key inside shard 0"
    );
    let plain = req
        .records
        .iter()
        .find(|r| r.partition_key == "lonely")
        .unwrap();
    assert_eq!(&plain.data[..], b"x", "a single record is sent raw");
    let subs = crate::aggregation::deaggregate(&agg.partition_key, None, agg.data.clone()).unwrap();
    assert_eq!(subs.len(), 5);
    h.ok_all(id, &req, 2);
    for (i, rx) in rxs.iter_mut().enumerate() {
        let out = outcome(rx).unwrap();
        assert_eq!(out.sub_sequence_number, Some(i as u64));
    }
    assert_eq!(outcome(&mut other).unwrap().sub_sequence_number, None);
}

#[test]
fn aggregate_size_limit_is_exact() {
    let cfg = ProducerConfig {
        aggregation_max_size: 1_000,
        ..agg_config()
    };
    let mut h = Harness::new(1, cfg);
    for i in 0..50 {
        h.add_to(0, 1, &format!("key-{i}"), &"x".repeat(90));
    }
    h.add_to(0, 1, "big", &"y".repeat(5_000)); // too large to share an aggregate
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    let records: Vec<&PutRecordsEntry> = sent.iter().flat_map(|(_, r)| &r.records).collect();
    let mut subs = 0;
    for r in &records {
        if r.partition_key == "big" {
            assert_eq!(r.data.len(), 5_000, "sent alone, raw");
            continue;
        }
        assert!(r.data.len() + r.partition_key.len() <= 1_000);
        subs += crate::aggregation::deaggregate(&r.partition_key, None, r.data.clone())
            .unwrap()
            .len();
    }
    assert_eq!(subs, 50);
}

#[test]
fn stranded_sub_records_are_resent_after_a_split() {
    let mut h = Harness::new(1, agg_config());
    let half = 1u128 << 127;
    let keys = [1u128, half - 1, half, u128::MAX];
    let mut rxs: Vec<Rx> = keys
        .iter()
        .map(|&k| {
            h.add(
                UserRecord::new(format!("k{k}"), "d").with_explicit_hash_key(k.to_string()),
                HashKey(k),
            )
        })
        .collect();
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    assert_eq!(req.records.len(), 1, "one aggregate");
    // the shard was split meanwhile: the aggregate (outer key 1) landed on the lower child,
    // which the producer's map does not know yet
    let child = PutRecordsResultEntry::Ok {
        shard_id: "shardId-000000000001".into(),
        sequence_number: "77".into(),
    };
    h.engine.on_response(id, Ok(vec![child]), h.now);
    assert!(
        pending(&mut rxs[0]),
        "parked until the map says the child's range"
    );
    assert!(h.poll_refresh());
    let split = vec![
        ShardInfo {
            id: "shardId-000000000000".into(),
            start: 0,
            end: u128::MAX,
            open: false,
        },
        ShardInfo {
            id: "shardId-000000000001".into(),
            start: 0,
            end: half - 1,
            open: true,
        },
        ShardInfo {
            id: "shardId-000000000002".into(),
            start: half,
            end: u128::MAX,
            open: true,
        },
    ];
    h.engine.on_shard_map(Ok(split), h.now);
    for rx in &mut rxs[..2] {
        let out = outcome(rx).unwrap();
        assert_eq!(&*out.shard_id, "shardId-000000000001");
    }
    assert_eq!(
        h.engine
            .telemetry
            .stats
            .stranded_resent
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll_after_window().pop().unwrap();
    assert_eq!(
        req.records.len(),
        1,
        "the two stranded records, re-aggregated for the upper child"
    );
    let results = vec![PutRecordsResultEntry::Ok {
        shard_id: "shardId-000000000002".into(),
        sequence_number: "78".into(),
    }];
    h.engine.on_response(id, Ok(results), h.now);
    for rx in &mut rxs[2..] {
        let out = outcome(rx).unwrap();
        assert_eq!(&*out.shard_id, "shardId-000000000002");
        assert_eq!(out.attempts.len(), 2);
        assert_eq!(out.attempts[0].error_code.as_deref(), Some(STRANDED_CODE));
    }
}

#[test]
fn auto_distribution_limits_stream_wide_and_never_predicts() {
    // AUTO: the service ignores keys, so one stream-wide limiter of 4 shards' budget.
    let cfg = ProducerConfig {
        aggregation: true,
        ..config()
    };
    let mut h = Harness::with_prediction(4, cfg, false);
    assert_eq!(h.engine.shards.len(), 1);
    assert!(!h.engine.s.aggregation, "aggregation is off under AUTO");
    let mut rxs: Vec<Rx> = (0..5_000)
        .map(|i| h.add_to(0, 4, &format!("k{i}"), "x"))
        .collect();
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    let total: usize = sent.iter().map(|(_, r)| r.records.len()).sum();
    assert_eq!(
        total, 4_000,
        "four shards' one-second burst, whatever the keys"
    );
    for (id, req) in &sent {
        // stored anywhere: no misprediction
        let results = req
            .records
            .iter()
            .map(|_| PutRecordsResultEntry::Ok {
                shard_id: "shardId-000000000003".into(),
                sequence_number: "1".into(),
            })
            .collect();
        h.engine.on_response(*id, Ok(results), h.now);
    }
    assert!(outcome(&mut rxs[0]).is_ok());
    assert!(!h.poll_refresh(), "no refresh: nothing is predicted");
}

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
            Action::RefreshShardMap => None,
        })
        .collect();
    assert_eq!(timeouts, vec![Duration::from_secs(24)]);
}

// ---- no per-shard scan: every reason a shard wakes ----------------------------------------

/// Drains during `f`.
fn drains(h: &mut Harness, f: impl FnOnce(&mut Harness)) -> u64 {
    let before = h.engine.drains;
    f(h);
    h.engine.drains - before
}

#[test]
fn idle_shards_cost_nothing_per_poll() {
    let n = 10_000;
    let mut h = Harness::new(n, agg_config());
    assert_eq!(drains(&mut h, |h| assert!(h.poll().is_empty())), 0);
    assert_eq!(
        h.engine.shards.next_timer(),
        None,
        "nothing held, no shard timer"
    );
    let mut rx = h.add_to(4321, n, "k", "x");
    assert_eq!(drains(&mut h, |h| assert!(h.poll().is_empty())), 1);
    // the linger deadline is the only timer; polls before it visit no shard
    assert_eq!(
        h.engine.shards.next_timer(),
        Some(h.now + h.engine.s.config.max_buffered_time)
    );
    h.advance(50 * MS);
    assert_eq!(drains(&mut h, |h| assert!(h.poll().is_empty())), 0);
    // more records for the lingering shard do not visit it again
    let _more: Vec<Rx> = (0..10).map(|_| h.add_to(4321, n, "k", "y")).collect();
    assert_eq!(drains(&mut h, |h| assert!(h.poll().is_empty())), 0);
    h.advance(50 * MS);
    let sent = drains(&mut h, |h| {
        let sent = h.poll();
        assert_eq!(sent.len(), 1);
        let (id, req) = &sent[0];
        assert_eq!(req.records.len(), 1, "one aggregate");
        h.ok_all(*id, req, n);
    });
    assert_eq!(sent, 1);
    assert!(outcome(&mut rx).is_ok());
}

#[test]
fn a_full_aggregate_wakes_its_shard_before_the_linger() {
    let cfg = ProducerConfig {
        aggregation_max_count: 4,
        ..agg_config()
    };
    let mut h = Harness::new(64, cfg);
    let _rx: Vec<Rx> = (0..3).map(|_| h.add_to(7, 64, "k", "x")).collect();
    assert!(h.poll().is_empty());
    assert!(h.engine.collector.is_empty());
    let _last = h.add_to(7, 64, "k", "x");
    assert_eq!(drains(&mut h, |h| drop(h.poll())), 1);
    assert_eq!(h.engine.collector.len(), 1, "full: sealed at once");
}

#[test]
fn limiter_deadline_wakes_the_shard() {
    let mut h = Harness::new(100, config());
    let _first: Vec<Rx> = (0..1200).map(|_| h.add_to(3, 100, "k", "x")).collect();
    h.advance(100 * MS);
    let sent: usize = h.poll().iter().map(|(_, r)| r.records.len()).sum();
    assert_eq!(sent, 1000, "one second of budget");
    let due = h.engine.next_deadline().expect("limiter deadline");
    assert!(due > h.now && due <= h.now + 10 * MS, "{:?}", due - h.now);
    h.now = due;
    assert_eq!(
        drains(&mut h, |h| drop(h.poll())),
        1,
        "only the limited shard"
    );
    h.advance(200 * MS);
    let sent: usize = h
        .poll_after_window()
        .iter()
        .map(|(_, r)| r.records.len())
        .sum();
    assert!(sent >= 150, "{sent}");
}

#[test]
fn freed_in_flight_capacity_wakes_blocked_shards_in_turn() {
    let cfg = ProducerConfig {
        max_in_flight: 1,
        max_records_per_request: 1,
        rate_limiting: false,
        ..config()
    };
    let n = 1000;
    let mut h = Harness::new(n, cfg);
    let mut rxs: Vec<Rx> = (0..3).map(|s| h.add_to(s * 300, n, "k", "x")).collect();
    h.advance(100 * MS);
    let mut sent = h.poll();
    assert_eq!(sent.len(), 1);
    for _ in 0..2 {
        assert!(h.poll().is_empty(), "saturated");
        let (id, req) = sent.pop().unwrap();
        h.ok_all(id, &req, n);
        assert!(
            h.engine.next_deadline().is_some_and(|d| d <= h.now),
            "room freed: poll at once"
        );
        sent = h.poll_after_window();
        assert_eq!(sent.len(), 1);
    }
    let (id, req) = sent.pop().unwrap();
    h.ok_all(id, &req, n);
    for rx in &mut rxs {
        assert!(outcome(rx).is_ok());
    }
}

#[test]
fn backoff_and_retry_wake_the_shard() {
    let mut h = Harness::new(500, config());
    let mut rx = h.add_to(250, 500, "k", "x");
    h.advance(100 * MS);
    let (id, _) = h.poll().pop().unwrap();
    h.engine
        .on_response(id, Ok(vec![err_entry("InternalFailure")]), h.now);
    // the retry waits for the shard's back-off, and a timer brings it back
    assert!(h.poll().is_empty());
    let due = h.engine.next_deadline().expect("back-off deadline");
    assert!(due > h.now);
    h.now = due;
    let (id, req) = h.poll_after_window().pop().expect("retried");
    h.ok_all(id, &req, 500);
    assert_eq!(outcome(&mut rx).unwrap().attempts.len(), 2);
}

#[test]
fn ttl_expires_records_of_a_shard_blocked_by_the_in_flight_limit() {
    let cfg = ProducerConfig {
        max_in_flight: 1,
        max_records_per_request: 1,
        rate_limiting: false,
        record_ttl: Duration::from_secs(1),
        ..config()
    };
    let mut h = Harness::new(8, cfg);
    let t0 = h.now;
    let mut rxs = [h.add_to(0, 8, "a", "1"), h.add_to(5, 8, "b", "1")];
    h.advance(100 * MS);
    assert_eq!(h.poll().len(), 1);
    assert!(h.poll().is_empty());
    let ttl = t0 + Duration::from_secs(1);
    assert_eq!(
        h.engine.shards.next_timer(),
        Some(ttl),
        "the blocked record's TTL"
    );
    assert!(h.engine.next_deadline().is_some_and(|d| d <= ttl));
    h.now = ttl;
    assert_eq!(drains(&mut h, |h| drop(h.poll())), 1);
    let expired = rxs.iter_mut().map(|rx| !pending(rx)).filter(|e| *e).count();
    assert_eq!(
        expired, 1,
        "the record blocked by the in-flight limit expired"
    );
}

#[test]
fn records_overdue_on_arrival_share_an_aggregate_for_a_short_window() {
    let mut h = Harness::new(4, agg_config());
    h.advance(Duration::from_secs(2));
    let window = h.engine.s.config.max_buffered_time / shard::OVERDUE_DIVISOR;
    let ttl = h.engine.s.config.record_ttl;
    // added a second ago (a backlog in the ingest channel), reaching the engine now
    let late = |h: &mut Harness, data: &str| {
        let hash = even_range(2, 4).0;
        let record =
            UserRecord::new("k", data.to_string()).with_explicit_hash_key(hash.to_string());
        assert!(h.gauge.try_acquire(record.size()));
        let arrival = h.now - Duration::from_secs(1);
        let entry = Entry::new(record, HashKey(hash), arrival, ttl, None);
        h.engine.on_record(entry, h.now);
    };
    late(&mut h, "1");
    assert!(
        h.poll().is_empty(),
        "lingers a window, not max_buffered_time"
    );
    assert_eq!(h.engine.shards.next_timer(), Some(h.now + window));
    h.advance(window / 2);
    late(&mut h, "2");
    late(&mut h, "3");
    assert!(h.poll().is_empty());
    h.advance(window / 2);
    let sent = h.poll_after_window();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.records.len(), 1, "one aggregate of the three");
    assert!(sent[0].1.records[0].data.len() > 3 * 10);
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
