//! The producer follows the stream's settings while it runs, against kinesis-sim over HTTP: the
//! settings are changed through the real API actions (`UpdateStreamRecordDistributionStrategy`,
//! `UpdateMaxRecordSize`) with the SDK, as an operator would.
//!
//! What is checked is what the stream stored, read the way KCL reads it (`invariants::verify`:
//! a sub-record outside its holding shard's range is dropped, so a record reported stored there
//! fails the check): every record visible, every future resolved once, extra copies only where an
//! outcome was unknown or a stranded sub-record was re-sent.

mod support;

use aws_sdk_kinesis::types::RecordDistributionStrategy;
use aws_sdk_kinesis::Client;
use kinesis_producer::{Producer, RecordError, RecordLimitFrom, UserRecord, ValidationError};
use kinesis_sim::{SimConfig, Simulator, StreamMode, StreamOptions};
use std::time::{Duration, Instant};
use support::invariants::{resolve_all, tagged_record, verify};

const DEADLINE: Duration = Duration::from_secs(60);
/// How often the producers here re-read the settings (the default is 60 s).
const READ_EVERY: Duration = Duration::from_millis(300);

async fn client(sim: &Simulator) -> Client {
    Client::new(&support::reader::sdk_config(&sim.endpoint_url()).await)
}

async fn arn(client: &Client, stream: &str) -> String {
    client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .expect("DescribeStreamSummary")
        .stream_description_summary()
        .expect("summary")
        .stream_arn()
        .to_string()
}

async fn set_distribution(client: &Client, arn: &str, d: RecordDistributionStrategy) {
    client
        .update_stream_record_distribution_strategy()
        .stream_arn(arn)
        .record_distribution_strategy(d)
        .send()
        .await
        .expect("UpdateStreamRecordDistributionStrategy");
}

async fn set_max_record_size(client: &Client, arn: &str, kib: i32) {
    client
        .update_max_record_size()
        .stream_arn(arn)
        .max_record_size_in_kib(kib)
        .send()
        .await
        .expect("UpdateMaxRecordSize");
}

/// Waits (at most 10 s) until `check` holds for the producer.
async fn until(p: &Producer, what: &str, check: impl Fn(&Producer) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check(p) {
        assert!(Instant::now() < deadline, "the producer never saw {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Aggregation on, 100,000 records offered as fast as `add` takes them (over twice what the
/// stream takes): the stream switches to `AUTO` mid-run, then back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_switch_mid_run_and_back_every_record_visible_to_a_kcl_reader() {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream_with(
        "auto",
        StreamOptions {
            mode: StreamMode::OnDemand,
            ..StreamOptions::new(4)
        },
    )
    .expect("create");
    let c = client(&sim).await;
    let arn = arn(&c, "auto").await;
    // A period longer than the run: the producer learns of the switch to AUTO from evidence
    // (aggregates stored off their shards), of the switch back from the period.
    let p = Producer::builder()
        .stream_name("auto")
        .aggregation(true)
        .stream_settings_refresh_interval(Duration::from_secs(2))
        .record_ttl(Duration::from_secs(120))
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build");
    const N: usize = 100_000;
    let mut pending = Vec::with_capacity(N);
    for id in 0..N {
        if id == N / 4 {
            // Once aggregates flow: those sent before the producer reads the switch land
            // anywhere, and their sub-records are stranded.
            until(&p, "records stored", |p| p.stats().records_put > 0).await;
            set_distribution(&c, &arn, RecordDistributionStrategy::Auto).await;
        }
        if id == N / 4 + 10_000 {
            until(&p, "AUTO", |p| p.stats().auto_distribution).await;
            set_distribution(&c, &arn, RecordDistributionStrategy::UserPartitionKey).await;
        }
        let r = tagged_record(id, 1_000);
        pending.push((r.clone(), p.add(r).await.expect("accepted")));
    }
    until(&p, "USER_PARTITION_KEY", |p| !p.stats().auto_distribution).await;
    let outcomes = resolve_all(pending, DEADLINE).await;
    p.flush().await.expect("flush");
    let st = p.stats();
    let v = verify(&sim, "auto", &outcomes);
    assert_eq!(v.ok, N, "every record stored: {v:?}");
    assert_eq!(st.stream_settings_changes, 2, "{st:?}");
    assert!(st.stream_settings_reads >= 2, "{st:?}");
    assert!(
        st.stranded_resent > 0,
        "no aggregate landed off its shard: the case was not exercised"
    );
    assert_eq!(
        v.stranded_copies as u64, st.stranded_resent,
        "each stranded copy in the stream is one the producer counted: {v:?}"
    );
    let aggregated_after = outcomes[N - 1000..]
        .iter()
        .filter(|(_, r)| r.as_ref().is_ok_and(|o| o.sub_sequence_number.is_some()))
        .count();
    assert!(
        aggregated_after > 900,
        "aggregation resumed after the switch back: {aggregated_after} of the last 1,000"
    );
    p.shutdown().await.expect("shutdown");
}

/// `UpdateMaxRecordSize` raised, then lowered, while the producer runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_size_limit_raised_then_lowered_mid_run() {
    let sim = Simulator::start(SimConfig {
        limits: kinesis_sim::RateLimits::unlimited(),
        ..SimConfig::default()
    })
    .await
    .expect("start");
    sim.create_stream("sizes", 2).expect("create");
    let c = client(&sim).await;
    let arn = arn(&c, "sizes").await;
    let p = Producer::builder()
        .stream_name("sizes")
        .stream_settings_refresh_interval(READ_EVERY)
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build");
    assert_eq!(p.max_record_size(), 1 << 20);
    let big = UserRecord::new("big", vec![3u8; 3 << 20]);
    match p.add(big.clone()).await {
        Err(kinesis_producer::AddError::Invalid { error, .. }) => {
            assert!(error.to_string().contains("1048576"), "{error}")
        }
        other => panic!("a 3 MiB record on a 1 MiB stream: {other:?}"),
    }

    set_max_record_size(&c, &arn, 4096).await;
    until(&p, "the raised limit", |p| p.max_record_size() == 4 << 20).await;
    let stored = p.add(big.clone()).await.expect("accepted now").await;
    let stored = stored.expect("stored");
    let st = p.stats();
    assert_eq!(st.record_size_limit, 4 << 20);
    assert_eq!(st.stream_settings_changes, 1);

    // Lowered: a record accepted under the old limit fails with an error naming the new one
    // (from the service, or from the producer if it saw the change first); nothing else does.
    set_max_record_size(&c, &arn, 1024).await;
    let caught = p.add(big.clone()).await.expect("accepted: not seen yet");
    let small = p
        .add(UserRecord::new("small", "x"))
        .await
        .expect("accepted");
    let err = caught.await.expect_err("over the lowered limit");
    assert!(err.to_string().contains("1048576"), "{err}");
    small.await.expect("the small record is stored");
    until(&p, "the lowered limit", |p| p.max_record_size() == 1 << 20).await;
    match p.add(big.clone()).await {
        Err(kinesis_producer::AddError::Invalid {
            error: ValidationError::RecordTooLarge { limit_from, .. },
            ..
        }) => assert_eq!(limit_from, RecordLimitFrom::Stream { kib: 1024 }),
        other => panic!("refused at add once seen: {other:?}"),
    }
    assert_eq!(p.stats().stream_settings_changes, 2);
    let on_stream: Vec<_> = sim.records("sizes");
    assert_eq!(on_stream.len(), 2, "the 3 MiB record and the small one");
    assert!(on_stream
        .iter()
        .any(|r| r.sequence_number == *stored.sequence_number && r.data.len() == 3 << 20));
    p.shutdown().await.expect("shutdown");
}

/// Records without a partition key: stored on an `AUTO` stream (no key sent), refused at `add`
/// on a stream that places records by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_records_on_auto_and_keyed_streams() {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream_with(
        "unkeyed",
        StreamOptions {
            mode: StreamMode::OnDemand,
            distribution: kinesis_sim::RecordDistribution::Auto,
            ..StreamOptions::new(4)
        },
    )
    .expect("create");
    sim.create_stream("keyed", 4).expect("create");
    let cfg = support::reader::sdk_config(&sim.endpoint_url()).await;
    let auto = Producer::builder()
        .stream_name("unkeyed")
        .build(&cfg)
        .await
        .expect("build");
    let mut pending = Vec::new();
    for i in 0..200 {
        let r = UserRecord::unkeyed(format!("u{i}"));
        pending.push(auto.add(r).await.expect("accepted on AUTO"));
    }
    let mut shards = std::collections::HashSet::new();
    for f in pending {
        shards.insert(f.await.expect("stored").shard_id);
    }
    assert!(shards.len() > 1, "the service spread them: {shards:?}");
    let stored = sim.records("unkeyed");
    assert_eq!(stored.len(), 200);
    assert!(stored.iter().all(|r| r.partition_key.is_empty()));

    let keyed = Producer::builder()
        .stream_name("keyed")
        .build(&cfg)
        .await
        .expect("build");
    match keyed.add(UserRecord::unkeyed("x")).await {
        Err(kinesis_producer::AddError::Invalid { error, .. }) => {
            assert_eq!(error, ValidationError::PartitionKeyEmpty);
            assert!(error.to_string().contains("AUTO"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    keyed
        .add(UserRecord::new("k", "y"))
        .await
        .expect("the producer keeps serving")
        .await
        .expect("stored");
    auto.shutdown().await.expect("shutdown");
    keyed.shutdown().await.expect("shutdown");
}

/// An unkeyed record queued when the stream switches back to keys fails with an error naming
/// the switch; keyed records around it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_records_queued_at_a_switch_back_fail_naming_it() {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream_with(
        "back",
        StreamOptions {
            mode: StreamMode::OnDemand,
            distribution: kinesis_sim::RecordDistribution::Auto,
            ..StreamOptions::new(1)
        },
    )
    .expect("create");
    let c = client(&sim).await;
    let arn = arn(&c, "back").await;
    // A long linger keeps the records queued while the switch is read.
    let p = Producer::builder()
        .stream_name("back")
        .aggregation(false)
        .max_buffered_time(Duration::from_secs(5))
        .stream_settings_refresh_interval(READ_EVERY)
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build");
    let unkeyed = p.add(UserRecord::unkeyed("u")).await.expect("accepted");
    let keyed = p.add(UserRecord::new("k", "d")).await.expect("accepted");
    set_distribution(&c, &arn, RecordDistributionStrategy::UserPartitionKey).await;
    match tokio::time::timeout(DEADLINE, unkeyed)
        .await
        .expect("resolves")
    {
        Err(RecordError::Invalid {
            error: ValidationError::PartitionKeyRequired,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    keyed.await.expect("stored");
    assert!(!p.stats().auto_distribution);
    p.shutdown().await.expect("shutdown");
}
