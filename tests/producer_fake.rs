//! The whole producer through its I/O seam, with a scripted fake Kinesis.

// `AddError` carries the caller's record back (see `src/producer/mod.rs`).
#![allow(clippy::result_large_err)]

mod support;

use kinesis_producer::kinesis::{ClientError, ClientErrorKind};
use kinesis_producer::{
    AddError, BuildError, Ordering, PendingRecord, Producer, ProducerBuilder, RecordError,
    UserRecord,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use support::fake::FakeKinesis;

fn builder() -> ProducerBuilder {
    Producer::builder()
        .stream_name("orders")
        .aggregation(false)
        .rate_limiting(false)
        .max_buffered_time(Duration::from_millis(10))
}

async fn add_all(p: &Producer, n: usize, keys: usize) -> Vec<(UserRecord, PendingRecord)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = UserRecord::new(format!("key-{}", i % keys), format!("data-{i}"));
        let pending = p.add(r.clone()).await.expect("accepted");
        out.push((r, pending));
    }
    out
}

/// Every outcome is Ok and matches exactly one stored record; nothing stored twice.
async fn assert_all_stored(fake: &FakeKinesis, added: Vec<(UserRecord, PendingRecord)>) {
    let stored = fake.stored();
    let by_seq: HashMap<&str, &support::fake::Stored> = stored
        .iter()
        .map(|s| (s.sequence_number.as_str(), s))
        .collect();
    assert_eq!(by_seq.len(), stored.len());
    assert_eq!(stored.len(), added.len(), "stored exactly once each");
    for (record, pending) in added {
        let out = pending.await.expect("stored");
        let s = by_seq[&*out.sequence_number];
        assert_eq!(s.shard_id, &*out.shard_id);
        assert_eq!(s.partition_key, record.partition_key);
        assert_eq!(s.data, record.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_stored_once_with_matching_outcome() {
    let fake = FakeKinesis::new(8);
    let p = builder().kinesis(fake.seam()).await.unwrap();
    let added = add_all(&p, 5_000, 100).await;
    p.flush().await.unwrap();
    assert_all_stored(&fake, added).await;
    let stats = p.stats();
    assert_eq!(stats.records_put, 5_000);
    assert_eq!(stats.records_pending, 0);
    p.shutdown().await.unwrap();
}

/// Requests are packed to 1 MiB unless `max_request_bytes` says otherwise: the same 6 MB of
/// plain 10 KB records, added at once, go in requests of at most 1 MiB by default and in
/// larger ones when 5 MiB is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_packed_to_one_mib_by_default() {
    for max_request_bytes in [None, Some(5 << 20)] {
        let fake = FakeKinesis::new(8);
        let b = builder().max_buffered_time(Duration::from_millis(200));
        let b = match max_request_bytes {
            Some(n) => b.max_request_bytes(n),
            None => b,
        };
        let p = b.kinesis(fake.seam()).await.unwrap();
        for i in 0..600 {
            p.add_untracked(UserRecord::new(format!("k{i}"), vec![b'x'; 10_000]))
                .await
                .expect("accepted");
        }
        p.flush().await.unwrap();
        assert_eq!(fake.stored().len(), 600);
        let largest = fake.max_request_bytes_seen.load(Relaxed);
        match max_request_bytes {
            None => assert!(
                (512 << 10..=1 << 20).contains(&largest),
                "largest request {largest} bytes"
            ),
            Some(_) => assert!(largest > 1 << 20, "largest request {largest} bytes"),
        }
        p.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_are_retried_to_success() {
    let fake = FakeKinesis::new(4);
    fake.fail_every(5, "InternalFailure");
    let p = builder().kinesis(fake.seam()).await.unwrap();
    let added = add_all(&p, 2_000, 50).await;
    p.flush().await.unwrap();
    let stats = p.stats();
    assert!(stats.retries >= 400, "{stats:?}");
    assert_all_stored(&fake, added).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_failures_are_retried() {
    let fake = FakeKinesis::new(2);
    let mut e500 = ClientError::new(ClientErrorKind::Service, "internal");
    e500.status = Some(500);
    fake.script_request_errors([
        e500,
        ClientError::new(ClientErrorKind::Timeout, "timed out"),
        ClientError::new(ClientErrorKind::Connection, "connection reset"),
        ClientError::service("ThrottlingException", "slow down", 400),
    ]);
    let p = builder().kinesis(fake.seam()).await.unwrap();
    let added = add_all(&p, 100, 10).await;
    p.flush().await.unwrap();
    assert!(fake.requests.load(Relaxed) >= 5);
    let (_, first) = added.into_iter().next().unwrap();
    let out = first.await.unwrap();
    let codes: Vec<Option<&str>> = out
        .attempts
        .iter()
        .map(|a| a.error_code.as_deref())
        .collect();
    assert_eq!(
        codes,
        vec![
            Some("HttpError500"),
            Some("Timeout"),
            Some("ConnectionError"),
            Some("ThrottlingException"),
            None
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_errors_fail_fast_and_others_go_on() {
    let fake = FakeKinesis::new(2);
    fake.script_records([
        Some("AccessDeniedException"),
        None,
        Some("KMSNotFoundException"),
    ]);
    let p = builder().kinesis(fake.seam()).await.unwrap();
    let added = add_all(&p, 3, 3).await;
    let results: Vec<_> = futures::future::join_all(added.into_iter().map(|(_, f)| f)).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    let codes: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter_map(|e| e.code())
        .collect();
    assert_eq!(codes.len(), 2);
    assert!(codes.contains(&"AccessDeniedException") && codes.contains(&"KMSNotFoundException"));
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(e, RecordError::Rejected { attempts, .. } if attempts.len() == 1),
            "{e:?}"
        );
    }
    // still serving
    let ok = p.add(UserRecord::new("k", "after")).await.unwrap().await;
    assert!(ok.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_on_unexpected_shard_refreshes_map_without_resending() {
    let fake = FakeKinesis::new(2);
    let p = builder().kinesis(fake.seam()).await.unwrap();
    assert_eq!(fake.list_calls.load(Relaxed), 1);
    fake.reshard(4, 10); // new shards, ids 10..13
    let added = add_all(&p, 200, 200).await;
    p.flush().await.unwrap();
    for _ in 0..100 {
        if p.stats().shard_map_refreshes >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fake.list_calls.load(Relaxed) >= 2, "the map was refreshed");
    assert_eq!(p.stats().shard_map_refreshes, 1);
    assert_all_stored(&fake, added).await; // exactly once: no re-send
                                           // after the refresh predictions match
    let out = p
        .add(UserRecord::new("after", "x"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        out.shard_id.starts_with("shardId-00000000001"),
        "{}",
        out.shard_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_add_waits_and_try_add_hands_back() {
    let fake = FakeKinesis::new(1);
    fake.set_latency(Duration::from_millis(300));
    let p = builder()
        .max_buffered_records(10)
        .kinesis(fake.seam())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..10 {
        pending.push(p.try_add(UserRecord::new("k", format!("{i}"))).unwrap());
    }
    match p.try_add(UserRecord::new("k", "overflow")) {
        Err(AddError::BufferFull {
            record,
            max_records,
            ..
        }) => {
            assert_eq!(&record.data[..], b"overflow", "the record comes back");
            assert_eq!(max_records, 10);
        }
        other => panic!("{other:?}"),
    }
    let waiting = tokio::spawn({
        let p = p.clone();
        async move { p.add(UserRecord::new("k", "waits")).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "add waits while the buffer is full");
    assert!(p.stats().records_pending <= 10);
    waiting.await.unwrap().unwrap();
    for f in pending {
        f.await.unwrap();
    }
    // add_blocking from a plain thread
    let p2 = p.clone();
    let out = std::thread::spawn(move || {
        p2.add_blocking(UserRecord::new("k", "blocking"))
            .map(|_| ())
    })
    .join()
    .unwrap();
    assert!(out.is_ok());
    p.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_requests_in_flight_resolves_everything() {
    let fake = FakeKinesis::new(4);
    fake.set_latency(Duration::from_millis(200));
    let p = builder()
        .max_in_flight(2)
        .max_records_per_request(10)
        .kinesis(fake.seam())
        .await
        .unwrap();
    let added = add_all(&p, 300, 30).await;
    p.shutdown().await.unwrap();
    assert!(matches!(
        p.add(UserRecord::new("k", "late")).await,
        Err(AddError::ShutDown { .. })
    ));
    assert!(fake.max_in_flight_seen.load(Relaxed) <= 2);
    assert_all_stored(&fake, added).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_fails_the_rest_clearly() {
    let fake = FakeKinesis::new(1);
    fake.set_latency(Duration::from_secs(5));
    let p = builder()
        .shutdown_timeout(Duration::from_millis(200))
        .kinesis(fake.seam())
        .await
        .unwrap();
    let pending = p.add(UserRecord::new("k", "x")).await.unwrap();
    p.shutdown().await.unwrap();
    let err = pending.await.unwrap_err();
    assert!(matches!(err, RecordError::ShutDown { .. }), "{err}");
    assert!(err.to_string().contains("shut down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_drains_in_the_background() {
    let fake = FakeKinesis::new(2);
    let p = builder().kinesis(fake.seam()).await.unwrap();
    let added = add_all(&p, 100, 10).await;
    drop(p);
    for (_, f) in added {
        f.await.unwrap();
    }
    assert_eq!(fake.stored().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_shard_ordering_holds_under_failures() {
    let fake = FakeKinesis::new(4);
    fake.fail_every(3, "ProvisionedThroughputExceededException");
    let p = builder()
        .ordering(Ordering::PerShard)
        .kinesis(fake.seam())
        .await
        .unwrap();
    let added = add_all(&p, 120, 12).await;
    p.flush().await.unwrap();
    let mut last: HashMap<String, String> = HashMap::new();
    for (record, f) in added {
        let out = f.await.unwrap();
        if let Some(prev) = last.get(record.partition_key.as_str()) {
            assert!(
                prev.as_str() < &*out.sequence_number,
                "order broken for {}",
                record.partition_key
            );
        }
        last.insert(
            record.partition_key.to_string(),
            out.sequence_number.to_string(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_callers_from_tasks_and_threads() {
    let fake = FakeKinesis::new(16);
    let p = builder()
        .max_buffered_records(1_000)
        .kinesis(fake.seam())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..5_000 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            p.add(UserRecord::new(format!("task-{t}"), "x"))
                .await
                .unwrap()
                .await
                .unwrap()
        }));
    }
    let threads: Vec<_> = (0..4)
        .map(|th| {
            let p = p.clone();
            std::thread::spawn(move || {
                let pending: Vec<_> = (0..1_250)
                    .map(|i| {
                        p.add_blocking(UserRecord::new(format!("thread-{th}-{i}"), "y"))
                            .unwrap()
                    })
                    .collect();
                pending
                    .into_iter()
                    .map(futures::executor::block_on)
                    .filter(|r| r.is_ok())
                    .count()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let from_threads: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(from_threads, 5_000);
    assert_eq!(fake.stored().len(), 10_000);
    assert_eq!(p.stats().records_put, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_failures_reach_the_callback() {
    let fake = FakeKinesis::new(1);
    fake.script_records([Some("ResourceNotFoundException")]);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = builder()
        .on_untracked_failure({
            let seen = seen.clone();
            move |r, e| {
                seen.lock()
                    .unwrap()
                    .push((r.partition_key.to_string(), e.code().map(str::to_string)))
            }
        })
        .kinesis(fake.seam())
        .await
        .unwrap();
    p.add_untracked(UserRecord::new("lost", "x")).await.unwrap();
    p.add_untracked(UserRecord::new("fine", "y")).await.unwrap();
    p.flush().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(
            "lost".to_string(),
            Some("ResourceNotFoundException".to_string())
        )]
    );
    assert_eq!(p.stats().records_failed, 1);
    assert_eq!(p.stats().records_put, 1);
}

#[tokio::test]
async fn build_errors_are_clear() {
    let fake = FakeKinesis::new(1);
    fake.fail_describe(ClientError::service(
        "ResourceNotFoundException",
        "Stream orders under account 1 not found.",
        400,
    ));
    let err = builder().kinesis(fake.seam()).await.unwrap_err();
    assert!(matches!(err, BuildError::StreamNotFound { .. }), "{err}");
    assert!(err.to_string().contains("orders"));

    let err = Producer::builder()
        .kinesis(FakeKinesis::new(1).seam())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stream_name"), "{err}");
    let err = builder()
        .max_in_flight(0)
        .kinesis(FakeKinesis::new(1).seam())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_in_flight"), "{err}");
    let err = builder()
        .record_ttl(Duration::ZERO)
        .kinesis(FakeKinesis::new(1).seam())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("record_ttl"), "{err}");
    let err = builder()
        .max_request_bytes(11 << 20)
        .kinesis(FakeKinesis::new(1).seam())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_request_bytes"), "{err}");
    let err = builder()
        .aggregation(true)
        .aggregation_max_size(2 << 20)
        .kinesis(FakeKinesis::new(1).seam())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("aggregation_max_size"), "{err}");
}

#[tokio::test]
async fn build_against_an_unreachable_endpoint_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "AKID", "SECRET", None, None, "test",
        ))
        .load()
        .await;
    let start = std::time::Instant::now();
    let err = builder()
        .request_timeout(Duration::from_secs(2))
        .build(&sdk)
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(
            err,
            BuildError::Kinesis {
                operation: "DescribeStreamSummary",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn build_without_credentials_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(conf);
    let err = builder().client(client).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BuildError::Kinesis {
                operation: "DescribeStreamSummary",
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.to_lowercase().contains("credentials") || text.contains("identity"),
        "{text}"
    );
}

#[tokio::test]
async fn build_rides_out_transient_start_up_errors() {
    let fake = FakeKinesis::new(1);
    let mut e503 = ClientError::new(ClientErrorKind::Service, "unavailable");
    e503.status = Some(503);
    fake.script_describe_errors([
        e503,
        ClientError::new(ClientErrorKind::Connection, "refused"),
    ]);
    let p = builder()
        .kinesis(fake.seam())
        .await
        .expect("two transient errors are retried");
    p.shutdown().await.unwrap();

    let fake = FakeKinesis::new(1);
    fake.script_describe_errors([ClientError::service("AccessDeniedException", "no", 400)]);
    let err = builder().kinesis(fake.seam()).await.unwrap_err();
    assert!(err.to_string().contains("AccessDeniedException"), "{err}");
}
