//! Behaviour the docs promise that no other test pins down, each checked through the public
//! API against kinesis-sim, the fake seam or a small HTTP server written here:
//!
//! - a producer built with `.client(..)` works, and its SDK never retries on its own;
//! - the record size limit is the stream's, capped at `max_request_bytes`;
//! - `ResourceInUseException` fails records at once;
//! - `SdkKinesis::list_shards` reads every page and never sends `NextToken` with the stream;
//! - dropping a `PendingRecord` does not cancel its record;
//! - the Tokio runtime shutting down mid-request resolves every record;
//! - `BuildError::NoRuntime` and the `NoOpenShards` build error;
//! - the stream-wide back-off after whole-request failures in a row;
//! - `rate_limit_percent` below 100 holds each shard near that share of its limit.

mod support;

use aws_sdk_kinesis::config::retry::RetryConfig;
use bytes::Bytes;
use kinesis_producer::kinesis::{
    BoxFuture, ClientError, PutRecordsRequest, PutRecordsResultEntry, StreamSummary,
};
use kinesis_producer::retry::BACKOFF_MIN;
use kinesis_producer::shard_map::ShardInfo;
use kinesis_producer::{
    deaggregate, AddError, BuildError, Kinesis, PendingRecord, Producer, ProducerBuilder,
    RecordError, SdkKinesis, StreamRef, UserRecord, ValidationError,
};
use kinesis_sim::{Faults, SimConfig, Simulator, StreamOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use support::fake::FakeKinesis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound of any wait: a hang fails instead of blocking the suite.
const DEADLINE: Duration = Duration::from_secs(30);

async fn sim_with_stream(stream: &str, shards: u32) -> Simulator {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream(stream, shards).expect("create stream");
    sim
}

fn builder(stream: &str) -> ProducerBuilder {
    Producer::builder()
        .stream_name(stream)
        .max_buffered_time(Duration::from_millis(10))
}

/// Every user record the simulator holds for `stream`, as (partition key, data).
fn stored_user_records(sim: &Simulator, stream: &str) -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for s in sim.records(stream) {
        for sub in deaggregate(
            &s.partition_key,
            s.explicit_hash_key.as_deref(),
            Bytes::from(s.data),
        )
        .expect("stored records decode")
        {
            out.push((sub.partition_key, sub.data));
        }
    }
    out.sort();
    out
}

fn sorted(records: &[UserRecord]) -> Vec<(String, Bytes)> {
    let mut v: Vec<_> = records
        .iter()
        .map(|r| (r.partition_key.to_string(), r.data.clone()))
        .collect();
    v.sort();
    v
}

async fn resolve(pending: PendingRecord) -> Result<kinesis_producer::PutOutcome, RecordError> {
    tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("the record resolved in time")
}

// ---- .client(..): SDK retries off -------------------------------------------------------

/// A client configured with generous SDK retries: the producer must rebuild it with retries
/// off, so the simulator sees exactly the requests the engine made (an SDK retry of a 5xx
/// would show up as an extra request there), and the success path still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_built_producer_stores_records_and_the_sdk_never_retries() {
    let stream = "client";
    let sim = sim_with_stream(stream, 2).await;
    let sdk = support::reader::sdk_config(&sim.endpoint_url()).await;
    let conf = aws_sdk_kinesis::config::Builder::from(&sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(5))
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(conf);
    let p = builder(stream)
        .aggregation(false)
        .client(client)
        .await
        .expect("build with a client");

    // Success path.
    let first: Vec<UserRecord> = (0..50)
        .map(|i| UserRecord::new(format!("k{i}"), format!("ok-{i}")))
        .collect();
    let mut pending = Vec::new();
    for r in &first {
        pending.push(p.add(r.clone()).await.expect("accepted"));
    }
    for (r, pending) in first.iter().zip(pending) {
        let out = resolve(pending).await.expect("stored");
        assert_eq!(out.attempts.len(), 1, "{r:?}: {out:?}");
    }
    assert_eq!(stored_user_records(&sim, stream), sorted(&first));
    let requests_ok = p.stats().requests;
    assert_eq!(sim.counters(stream).put_requests, requests_ok);

    // Every PutRecords answered with HTTP 503, then 500: each engine attempt is one request.
    let second: Vec<UserRecord> = (0..20)
        .map(|i| UserRecord::new(format!("k{i}"), format!("after-5xx-{i}")))
        .collect();
    for faults in [
        Faults {
            http_503_rate: 1.0,
            ..Faults::default()
        },
        Faults {
            http_500_rate: 1.0,
            ..Faults::default()
        },
    ] {
        sim.set_faults(stream, faults).unwrap();
        let before = sim.counters(stream);
        let seen_before = before.http_500_injected + before.http_503_injected;
        let pending = p
            .add(UserRecord::new("probe", format!("probe-{seen_before}")))
            .await
            .unwrap();
        let hit = support::invariants::wait_until(DEADLINE, || {
            let c = sim.counters(stream);
            c.http_500_injected + c.http_503_injected >= seen_before + 2
        })
        .await;
        assert!(hit, "the fault answered requests");
        sim.set_faults(stream, Faults::default()).unwrap();
        let out = resolve(pending)
            .await
            .expect("stored once the fault is gone");
        let codes: Vec<_> = out
            .attempts
            .iter()
            .map(|a| a.error_code.as_deref().unwrap_or("ok").to_string())
            .collect();
        assert!(codes.len() >= 3, "{codes:?}");
        assert_eq!(codes.last().map(String::as_str), Some("ok"), "{codes:?}");
    }
    let mut pending = Vec::new();
    for r in &second {
        pending.push(p.add(r.clone()).await.unwrap());
    }
    for pending in pending {
        resolve(pending).await.expect("stored");
    }
    p.shutdown().await.unwrap();
    let stats = p.stats();
    let counters = sim.counters(stream);
    assert!(counters.http_503_injected >= 2 && counters.http_500_injected >= 2);
    assert_eq!(
        counters.put_requests, stats.requests,
        "every PutRecords the simulator saw was one the engine sent: no SDK retries"
    );
    assert_eq!(stats.records_put, 50 + 2 + 20);
}

// ---- the record size limit --------------------------------------------------------------

/// The limit in force is the stream's `MaxRecordSizeInKiB`, but never more than
/// `max_request_bytes` (a record must fit in a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_size_limit_is_capped_at_max_request_bytes() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.create_stream("one-mib", 1).unwrap();
    sim.create_stream_with(
        "ten-mib",
        StreamOptions {
            max_record_size_kib: Some(10 * 1024),
            ..StreamOptions::new(1)
        },
    )
    .unwrap();
    let sdk = support::reader::sdk_config(&sim.endpoint_url()).await;
    for (stream, max_request_bytes, want) in [
        ("one-mib", 5 << 20, 1 << 20),
        ("one-mib", 100_000, 100_000),
        ("ten-mib", 5 << 20, 5 << 20),
        ("ten-mib", 10 << 20, 10 << 20),
    ] {
        let p = builder(stream)
            .max_request_bytes(max_request_bytes)
            .build(&sdk)
            .await
            .expect("build");
        assert_eq!(
            p.max_record_size(),
            want,
            "{stream}, max_request_bytes {max_request_bytes}"
        );
        let over = UserRecord::new("k", vec![7u8; want]); // key + data = want + 1
        match p.try_add(over.clone()) {
            Err(AddError::Invalid {
                error: ValidationError::RecordTooLarge { size, limit, .. },
                record,
            }) => {
                assert_eq!((size, limit), (want + 1, want));
                assert_eq!(record, over, "the record comes back");
            }
            other => panic!("{stream}: {other:?}"),
        }
        if want == 100_000 {
            // At the limit: accepted and stored whole.
            let at = UserRecord::new("k", vec![8u8; want - 1]);
            let pending = p.add(at.clone()).await.expect("at the limit");
            resolve(pending).await.expect("stored");
            assert!(stored_user_records(&sim, stream)
                .contains(&(at.partition_key.to_string(), at.data)));
        }
        p.shutdown().await.unwrap();
    }
}

// ---- ResourceInUseException is final ----------------------------------------------------

#[tokio::test]
async fn resource_in_use_fails_records_at_once() {
    let fake = FakeKinesis::new(1);
    let p = Producer::builder()
        .stream_name("busy")
        .aggregation(false)
        .max_buffered_time(Duration::from_millis(5))
        .kinesis(fake.seam())
        .await
        .unwrap();
    // Per record: the first record of the next request is refused.
    fake.script_records([Some("ResourceInUseException"), None]);
    let a = p.add(UserRecord::new("k", "a")).await.unwrap();
    let b = p.add(UserRecord::new("k", "b")).await.unwrap();
    let (a, b) = (resolve(a).await, resolve(b).await);
    match a {
        Err(RecordError::Rejected { code, attempts, .. }) => {
            assert_eq!(&*code, "ResourceInUseException");
            assert_eq!(attempts.len(), 1, "not retried");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.expect("the other record is stored").attempts.len(), 1);
    // Whole request: every record in it is refused at once.
    fake.script_request_errors([ClientError::service(
        "ResourceInUseException",
        "Stream busy is being updated.",
        400,
    )]);
    let c = p.add(UserRecord::new("k", "c")).await.unwrap();
    match resolve(c).await {
        Err(RecordError::Rejected {
            code,
            message,
            attempts,
        }) => {
            assert_eq!(&*code, "ResourceInUseException");
            assert_eq!(&*message, "Stream busy is being updated.");
            assert_eq!(attempts.len(), 1, "not retried");
        }
        other => panic!("{other:?}"),
    }
    p.shutdown().await.unwrap();
    let stats = p.stats();
    assert_eq!((stats.records_put, stats.records_failed), (1, 2));
    assert_eq!(stats.retries, 0);
}

// ---- ListShards paging --------------------------------------------------------------------

/// What a [`serve`] server received: (action, JSON body), in order.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A minimal HTTP/1.1 server on 127.0.0.1 speaking the JSON 1.1 protocol: every request is
/// recorded and answered with `answer(action, body)` as `(status, JSON)`. Returns its URL.
async fn serve(
    answer: impl Fn(&str, &Value) -> (u16, Value) + Send + Sync + 'static,
) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let answer = Arc::new(answer);
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (log, answer) = (log.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let head_end = loop {
                        if let Some(i) = find(&buf, b"\r\n\r\n") {
                            break i + 4;
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                    };
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Value =
                        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
                    buf.drain(..head_end + len);
                    let action = header("x-amz-target")
                        .and_then(|t| t.rsplit('.').next().map(str::to_string))
                        .unwrap_or_default();
                    log.lock().unwrap().push((action.clone(), body.clone()));
                    let (status, reply) = answer(&action, &body);
                    let text = reply.to_string();
                    let response = format!(
                        "HTTP/1.1 {status} {}\r\nContent-Type: application/x-amz-json-1.1\r\n\
                         Content-Length: {}\r\nx-amzn-RequestId: test\r\n\r\n{text}",
                        if status == 200 { "OK" } else { "Bad Request" },
                        text.len()
                    );
                    if conn.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

fn shard_json(i: u32, start: u128, end: u128, open: bool) -> Value {
    let mut range = json!({ "StartingSequenceNumber": format!("{}", 1000 + i) });
    if !open {
        range["EndingSequenceNumber"] = json!(format!("{}", 2000 + i));
    }
    json!({
        "ShardId": format!("shardId-{i:012}"),
        "HashKeyRange": {
            "StartingHashKey": start.to_string(),
            "EndingHashKey": end.to_string()
        },
        "SequenceNumberRange": range
    })
}

/// Three pages: shard 0 and 1 (a closed parent); shard 2 and 3; shard 4.
fn paged_list_shards(action: &str, body: &Value) -> (u16, Value) {
    let q = u128::MAX / 4;
    if action != "ListShards" {
        return (
            400,
            json!({"__type": "UnknownOperationException", "message": action}),
        );
    }
    match body.get("NextToken").and_then(Value::as_str) {
        None => (
            200,
            json!({
                "Shards": [shard_json(0, 0, q, true), shard_json(1, q + 1, u128::MAX, false)],
                "NextToken": "page-2"
            }),
        ),
        Some("page-2") => (
            200,
            json!({
                "Shards": [shard_json(2, q + 1, 2 * q, true), shard_json(3, 2 * q + 1, 3 * q, true)],
                "NextToken": "page-3"
            }),
        ),
        Some("page-3") => (
            200,
            json!({ "Shards": [shard_json(4, 3 * q + 1, u128::MAX, true)] }),
        ),
        Some(other) => (
            400,
            json!({"__type": "InvalidArgumentException", "message": format!("unknown token {other}")}),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shards_reads_every_page_and_sends_next_token_alone() {
    let q = u128::MAX / 4;
    let want = vec![
        ShardInfo {
            id: "shardId-000000000000".into(),
            start: 0,
            end: q,
            open: true,
        },
        ShardInfo {
            id: "shardId-000000000001".into(),
            start: q + 1,
            end: u128::MAX,
            open: false,
        },
        ShardInfo {
            id: "shardId-000000000002".into(),
            start: q + 1,
            end: 2 * q,
            open: true,
        },
        ShardInfo {
            id: "shardId-000000000003".into(),
            start: 2 * q + 1,
            end: 3 * q,
            open: true,
        },
        ShardInfo {
            id: "shardId-000000000004".into(),
            start: 3 * q + 1,
            end: u128::MAX,
            open: true,
        },
    ];
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/paged";
    for (stream, first_body) in [
        (
            StreamRef::Name("paged".into()),
            json!({"StreamName": "paged"}),
        ),
        (StreamRef::Arn(arn.into()), json!({"StreamARN": arn})),
    ] {
        let (url, seen) = serve(paged_list_shards).await;
        let sdk = support::reader::sdk_config(&url).await;
        let kinesis = SdkKinesis::new(&aws_sdk_kinesis::Client::new(&sdk));
        let shards = tokio::time::timeout(DEADLINE, kinesis.list_shards(&stream))
            .await
            .expect("answered")
            .unwrap_or_else(|e| panic!("{stream:?}: {e}"));
        assert_eq!(shards, want, "{stream:?}: every page, in order");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("ListShards".to_string(), first_body),
                ("ListShards".to_string(), json!({"NextToken": "page-2"})),
                ("ListShards".to_string(), json!({"NextToken": "page-3"})),
            ],
            "{stream:?}: the stream on the first page only, NextToken alone after"
        );
    }
}

// ---- dropping a PendingRecord -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_pending_record_is_still_stored() {
    let stream = "dropped";
    let sim = sim_with_stream(stream, 2).await;
    let sdk = support::reader::sdk_config(&sim.endpoint_url()).await;
    for aggregation in [false, true] {
        let p = builder(stream)
            .aggregation(aggregation)
            .build(&sdk)
            .await
            .unwrap();
        let records: Vec<UserRecord> = (0..300)
            .map(|i| UserRecord::new(format!("k{}", i % 17), format!("{aggregation}-{i}")))
            .collect();
        for r in &records {
            drop(p.add(r.clone()).await.expect("accepted"));
        }
        tokio::time::timeout(DEADLINE, p.flush())
            .await
            .expect("flushed in time")
            .unwrap();
        p.shutdown().await.unwrap();
        let stats = p.stats();
        assert_eq!((stats.records_put, stats.records_failed), (300, 0));
        let prefix = format!("{aggregation}-");
        let stored: Vec<_> = stored_user_records(&sim, stream)
            .into_iter()
            .filter(|(_, d)| d.starts_with(prefix.as_bytes()))
            .collect();
        assert_eq!(stored, sorted(&records), "aggregation {aggregation}");
    }
}

// ---- the runtime shuts down mid-request ---------------------------------------------------

/// The runtime that built the producer goes away while requests are in flight (2 s at the
/// simulator): no record hangs. Each resolves, stored or failed with `ShutDown` naming the
/// cancelled request; an `Ok` is really stored; the producer still shuts down.
#[test]
fn runtime_shut_down_mid_request_resolves_every_record() {
    let stream = "orphaned";
    let sim_rt = tokio::runtime::Runtime::new().unwrap();
    let sim = sim_rt.block_on(sim_with_stream(stream, 2));
    let producer_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let records: Vec<UserRecord> = (0..200)
        .map(|i| UserRecord::new(format!("k{i}"), format!("r-{i}")))
        .collect();
    let (p, pending) = producer_rt.block_on(async {
        let sdk = support::reader::sdk_config(&sim.endpoint_url()).await;
        let p = builder(stream).build(&sdk).await.unwrap();
        sim.set_faults(
            stream,
            Faults {
                latency: Duration::from_secs(2),
                ..Faults::default()
            },
        )
        .unwrap();
        let mut pending = Vec::new();
        for r in &records[..100] {
            pending.push(p.add(r.clone()).await.unwrap());
        }
        let sent =
            support::invariants::wait_until(DEADLINE, || sim.counters(stream).put_requests > 0)
                .await;
        assert!(sent, "requests are in flight");
        (p, pending)
    });
    producer_rt.shutdown_background();
    sim_rt.block_on(async {
        // Records added after the runtime is gone resolve too.
        let mut pending = pending;
        for r in &records[100..] {
            pending.push(p.add(r.clone()).await.unwrap());
        }
        let mut ok = Vec::new();
        let mut cancelled = 0;
        for (r, pending) in records.iter().zip(pending) {
            match resolve(pending).await {
                Ok(out) => ok.push((r.clone(), out)),
                Err(RecordError::ShutDown { attempts }) => {
                    let last = attempts.last().expect("an attempt was made");
                    assert_eq!(last.error_code.as_deref(), Some("Cancelled"), "{r:?}");
                    cancelled += 1;
                }
                Err(e) => panic!("{r:?}: {e:?}"),
            }
        }
        assert!(cancelled > 0, "requests were cut off");
        tokio::time::timeout(DEADLINE, p.shutdown())
            .await
            .expect("shutdown does not hang")
            .unwrap();
        let stats = p.stats();
        assert_eq!(stats.records_put, ok.len() as u64);
        assert_eq!(stats.records_failed, cancelled);
        assert_eq!(stats.records_pending, 0);
        // Cut-off requests may still land at the simulator: let them, then check every Ok.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let stored = stored_user_records(&sim, stream);
        for (r, _) in &ok {
            assert!(
                stored.contains(&(r.partition_key.to_string(), r.data.clone())),
                "{r:?} reported stored"
            );
        }
    });
    sim_rt.block_on(sim.shutdown());
}

// ---- build errors -------------------------------------------------------------------------

#[test]
fn build_outside_a_tokio_runtime_is_refused() {
    let fake = FakeKinesis::new(1);
    let built = futures::executor::block_on(builder("s").kinesis(fake.seam()));
    let err = built.expect_err("no runtime");
    assert!(matches!(err, BuildError::NoRuntime), "{err:?}");
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
    assert_eq!(fake.list_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A seam whose stream has the given shards (and takes no records).
struct FixedShards(Vec<ShardInfo>);

impl Kinesis for FixedShards {
    fn put_records(
        &self,
        _request: PutRecordsRequest,
    ) -> BoxFuture<'_, Result<Vec<PutRecordsResultEntry>, ClientError>> {
        Box::pin(async { panic!("no record may be sent") })
    }

    fn list_shards(&self, _: &StreamRef) -> BoxFuture<'_, Result<Vec<ShardInfo>, ClientError>> {
        let shards = self.0.clone();
        Box::pin(async move { Ok(shards) })
    }

    fn describe_stream_summary(
        &self,
        _: &StreamRef,
    ) -> BoxFuture<'_, Result<StreamSummary, ClientError>> {
        Box::pin(async {
            Ok(StreamSummary {
                max_record_size_kib: Some(1024),
                auto_distribution: false,
                on_demand: None,
                status: "UPDATING".into(),
            })
        })
    }
}

#[tokio::test]
async fn build_without_an_open_shard_is_refused() {
    let closed = ShardInfo {
        id: "shardId-000000000000".into(),
        start: 0,
        end: u128::MAX,
        open: false,
    };
    for shards in [vec![], vec![closed]] {
        let err = builder("closed")
            .kinesis(Arc::new(FixedShards(shards.clone())))
            .await
            .expect_err("no open shard");
        match &err {
            BuildError::Kinesis {
                operation,
                code,
                message,
            } => {
                assert_eq!((*operation, code.as_str()), ("ListShards", "NoOpenShards"));
                assert!(
                    message.contains("closed") && message.contains("UPDATING"),
                    "{message}"
                );
            }
            other => panic!("{shards:?}: {other:?}"),
        }
        assert!(err.to_string().contains("NoOpenShards"), "{err}");
    }
}

// ---- stream-wide back-off -----------------------------------------------------------------

/// One whole-request failure is retried at once; from the second in a row on, all sending
/// backs off, exponentially; a success resets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_failures_in_a_row_back_off_the_whole_stream() {
    let fake = FakeKinesis::new(2);
    let p = Producer::builder()
        .stream_name("flaky")
        .max_buffered_time(Duration::from_millis(5))
        .kinesis(fake.seam())
        .await
        .unwrap();
    let unavailable = || ClientError::service("ServiceUnavailable", "try later", 503);
    // Phase 1: five failures in a row, then success.
    fake.script_request_errors((0..5).map(|_| unavailable()));
    let out = resolve(p.add(UserRecord::new("k", "a")).await.unwrap())
        .await
        .expect("stored after the failures");
    assert_eq!(out.attempts.len(), 6);
    let times = fake.request_times();
    assert_eq!(times.len(), 6);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] < BACKOFF_MIN,
        "a lone failure is retried at once: {gaps:?}"
    );
    for (i, gap) in gaps.iter().enumerate().skip(1) {
        // After failure i + 1 in a row: at least BACKOFF_MIN * 2^(i - 1).
        let floor = BACKOFF_MIN * (1 << (i - 1));
        assert!(*gap >= floor, "gap {i} {gap:?} < {floor:?}: {gaps:?}");
    }
    // Phase 2: after the success the count starts over: one failure, retried at once.
    fake.script_request_errors([unavailable()]);
    let out = resolve(p.add(UserRecord::new("k", "b")).await.unwrap())
        .await
        .expect("stored");
    assert_eq!(out.attempts.len(), 2);
    let times = fake.request_times();
    assert_eq!(times.len(), 8);
    assert!(
        times[7] - times[6] < BACKOFF_MIN,
        "the back-off was reset by the success: {:?}",
        times[7] - times[6]
    );
    p.shutdown().await.unwrap();
}

// ---- rate_limit_percent -------------------------------------------------------------------

/// Records per second a shard accepted once its bucket's initial burst is spent: the count of
/// records that arrived more than a second after the shard's first, over that window.
fn steady_rates(sim: &Simulator, stream: &str) -> HashMap<String, f64> {
    let mut arrivals: HashMap<String, Vec<f64>> = HashMap::new();
    for r in sim.records(stream) {
        let t = r.arrival.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        arrivals.entry(r.shard_id).or_default().push(t);
    }
    arrivals
        .into_iter()
        .map(|(shard, mut ts)| {
            ts.sort_by(f64::total_cmp);
            let from = ts[0] + 1.0;
            let last = *ts.last().unwrap();
            let n = ts.iter().filter(|&&t| t > from).count();
            assert!(last - from >= 0.5, "{shard}: too short a window to measure");
            (shard, n as f64 / (last - from))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_percent_holds_each_shard_near_that_share() {
    let stream = "half";
    let sim = sim_with_stream(stream, 2).await;
    let sdk = support::reader::sdk_config(&sim.endpoint_url()).await;
    let p = builder(stream)
        .aggregation(false)
        .rate_limit_percent(50)
        .build(&sdk)
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..3_000 {
        let r = UserRecord::new(format!("k{}", i % 500), format!("{i}"));
        pending.push(p.add(r).await.unwrap());
    }
    for pending in pending {
        resolve(pending).await.expect("stored");
    }
    p.shutdown().await.unwrap();
    let counters = sim.counters(stream);
    assert_eq!(counters.accepted_records(), 3_000);
    assert_eq!(
        counters.throttled_records(),
        0,
        "half the limit never throttles"
    );
    let rates = steady_rates(&sim, stream);
    assert_eq!(rates.len(), 2);
    for (shard, rate) in rates {
        // Shard limit 1,000 records/s: half is 500.
        assert!(
            (400.0..=600.0).contains(&rate),
            "{shard}: {rate:.0} records/s"
        );
    }
}
