//! Stream settings that change live (capacity mode, record distribution, record size) and
//! the stream status transitions, driven by the unmodified aws-sdk-kinesis over real HTTP
//! and through the in-process handle.

mod support;

use support::client;

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, RecordDistributionStrategy, StreamMode, StreamModeDetails, StreamStatus,
};
use aws_sdk_kinesis::Client;
use kinesis_sim::{
    RecordDistribution, SimConfig, SimError, Simulator, StreamSettings, Transitions,
};

fn mode(m: StreamMode) -> StreamModeDetails {
    StreamModeDetails::builder().stream_mode(m).build().unwrap()
}

fn entry(pk: Option<&str>, size: usize) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .set_partition_key(pk.map(str::to_string))
        .data(Blob::new(vec![b'x'; size]))
        .build()
        .unwrap()
}

/// (code, message) of a service error.
fn err<E: ProvideErrorMetadata>(e: &E) -> (String, String) {
    (
        e.code().unwrap_or("").to_string(),
        e.message().unwrap_or("").to_string(),
    )
}

async fn summary(c: &Client, name: &str) -> aws_sdk_kinesis::types::StreamDescriptionSummary {
    c.describe_stream_summary()
        .stream_name(name)
        .send()
        .await
        .unwrap()
        .stream_description_summary
        .unwrap()
}

/// Records per shard id for one PutRecords answer.
fn per_shard(out: &aws_sdk_kinesis::operation::put_records::PutRecordsOutput) -> Vec<usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in out.records() {
        *counts.entry(r.shard_id().unwrap().to_string()).or_insert(0) += 1;
    }
    counts.into_values().collect()
}

#[tokio::test]
async fn on_demand_auto_distribution_and_record_size_through_the_api() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let c = client(&sim.endpoint_url());
    c.create_stream()
        .stream_name("od")
        .stream_mode_details(mode(StreamMode::OnDemand))
        .send()
        .await
        .unwrap();
    let s = summary(&c, "od").await;
    let arn = s.stream_arn().to_string();
    assert_eq!(s.open_shard_count(), 4, "on-demand without ShardCount");
    assert_eq!(
        s.stream_mode_details().unwrap().stream_mode(),
        &StreamMode::OnDemand
    );
    assert_eq!(
        s.record_distribution_strategy(),
        Some(&RecordDistributionStrategy::UserPartitionKey)
    );
    assert_eq!(s.max_record_size_in_kib(), Some(1024));

    // USER_PARTITION_KEY: one key, one shard; a missing key is the model's null error.
    let same: Vec<_> = (0..8).map(|_| entry(Some("same"), 1)).collect();
    let out = c
        .put_records()
        .stream_name("od")
        .set_records(Some(same.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(per_shard(&out), vec![8]);
    let e = c
        .put_records()
        .stream_name("od")
        .records(entry(Some("a"), 1))
        .records(entry(None, 1))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err(&e.into_service_error()),
        (
            "ValidationException".to_string(),
            "1 validation error detected: Value null at 'records.2.member.partitionKey' failed to satisfy constraint: Member must not be null".to_string()
        )
    );

    // AUTO: the same key is spread over the open shards (pseudo-randomly, evenly on average);
    // no key is fine.
    c.update_stream_record_distribution_strategy()
        .stream_arn(&arn)
        .record_distribution_strategy(RecordDistributionStrategy::Auto)
        .send()
        .await
        .unwrap();
    assert_eq!(
        summary(&c, "od").await.record_distribution_strategy(),
        Some(&RecordDistributionStrategy::Auto)
    );
    let same: Vec<_> = (0..400).map(|_| entry(Some("same"), 1)).collect();
    let out = c
        .put_records()
        .stream_name("od")
        .set_records(Some(same))
        .send()
        .await
        .unwrap();
    let spread = per_shard(&out);
    assert!(
        spread.len() == 4
            && spread.iter().all(|&n| (70..=130).contains(&n))
            && spread.iter().sum::<usize>() == 400,
        "{spread:?}"
    );
    let keyless: Vec<_> = (0..400).map(|_| entry(None, 1)).collect();
    let out = c
        .put_records()
        .stream_name("od")
        .set_records(Some(keyless))
        .send()
        .await
        .unwrap();
    let spread = per_shard(&out);
    assert_eq!(out.failed_record_count(), Some(0));
    assert!(
        spread.len() == 4 && spread.iter().all(|&n| (70..=130).contains(&n)),
        "{spread:?}"
    );
    c.put_record()
        .stream_name("od")
        .data(Blob::new("k"))
        .send()
        .await
        .unwrap();

    // Leaving ON_DEMAND while AUTO is refused, nothing changes.
    let e = c
        .update_stream_mode()
        .stream_arn(&arn)
        .stream_mode_details(mode(StreamMode::Provisioned))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err(&e.into_service_error()),
        (
            "InvalidArgumentException".to_string(),
            "Record distribution strategy AUTO is only supported for ON_DEMAND streams."
                .to_string()
        )
    );
    assert_eq!(
        summary(&c, "od")
            .await
            .stream_mode_details()
            .unwrap()
            .stream_mode(),
        &StreamMode::OnDemand
    );

    // The stream's own record size: 3 MiB is refused at 1 MiB, accepted at 10 MiB.
    let three = 3 * 1_048_576;
    let e = c
        .put_record()
        .stream_name("od")
        .data(Blob::new(vec![1; three]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err(&e.into_service_error()).1,
        "1 validation error detected: Value 'java.nio.HeapByteBuffer[pos=0 lim=3145728 cap=3145728]' at 'data' failed to satisfy constraint: Member must have length less than or equal to 1048576"
    );
    for bad in [1023, 10_241] {
        let e = c
            .update_max_record_size()
            .stream_arn(&arn)
            .max_record_size_in_kib(bad)
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            err(&e.into_service_error()).0,
            "ValidationException",
            "{bad}"
        );
    }
    assert_eq!(
        summary(&c, "od").await.max_record_size_in_kib(),
        Some(1024),
        "unchanged"
    );
    c.update_max_record_size()
        .stream_arn(&arn)
        .max_record_size_in_kib(10_240)
        .send()
        .await
        .unwrap();
    assert_eq!(
        summary(&c, "od").await.max_record_size_in_kib(),
        Some(10_240)
    );
    c.put_record()
        .stream_name("od")
        .data(Blob::new(vec![1; three]))
        .send()
        .await
        .unwrap();
    let e = c
        .put_record()
        .stream_name("od")
        .data(Blob::new(vec![1; 10 * 1_048_576 + 1]))
        .send()
        .await
        .unwrap_err();
    assert!(err(&e.into_service_error())
        .1
        .ends_with("Member must have length less than or equal to 10485760"));
    // The PutRecords request limit is 10 MiB of data and keys.
    let three_recs: Vec<_> = (0..3).map(|_| entry(Some("k"), three)).collect();
    let out = c
        .put_records()
        .stream_name("od")
        .set_records(Some(three_recs))
        .send()
        .await
        .unwrap();
    // Accepted as a request; under AUTO two records may share a shard, whose byte rate then
    // throttles the second: that is the only failure allowed.
    assert!(
        out.records().iter().all(|r| r.error_code().is_none()
            || r.error_code() == Some("ProvisionedThroughputExceededException")),
        "{out:?}"
    );
    let four: Vec<_> = (0..4).map(|_| entry(Some("k"), three)).collect();
    let e = c
        .put_records()
        .stream_name("od")
        .set_records(Some(four))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err(&e.into_service_error()),
        (
            "InvalidArgumentException".to_string(),
            "Records size exceeds 10 MB limit".to_string()
        )
    );

    // Back to USER_PARTITION_KEY, then PROVISIONED; the distribution of a provisioned
    // stream cannot be set.
    c.update_stream_record_distribution_strategy()
        .stream_arn(&arn)
        .record_distribution_strategy(RecordDistributionStrategy::UserPartitionKey)
        .send()
        .await
        .unwrap();
    c.update_stream_mode()
        .stream_arn(&arn)
        .stream_mode_details(mode(StreamMode::Provisioned))
        .send()
        .await
        .unwrap();
    assert_eq!(
        summary(&c, "od")
            .await
            .stream_mode_details()
            .unwrap()
            .stream_mode(),
        &StreamMode::Provisioned
    );
    let e = c
        .update_stream_record_distribution_strategy()
        .stream_arn(&arn)
        .record_distribution_strategy(RecordDistributionStrategy::Auto)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err(&e.into_service_error()).0, "InvalidArgumentException");
    let unknown = arn.replace("/od", "/nope");
    let e = c
        .update_stream_mode()
        .stream_arn(&unknown)
        .stream_mode_details(mode(StreamMode::OnDemand))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err(&e.into_service_error()).0, "ResourceNotFoundException");
    assert_eq!(
        sim.stream_settings("od").unwrap(),
        StreamSettings {
            mode: kinesis_sim::StreamMode::Provisioned,
            distribution: RecordDistribution::UserPartitionKey,
            max_record_size_kib: 10_240,
        }
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn in_process_switches_are_checked_like_the_api() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let c = client(&sim.endpoint_url());
    sim.create_stream("s", 2).unwrap();
    let before = sim.stream_settings("s").unwrap();
    assert!(matches!(
        sim.set_record_distribution("s", RecordDistribution::Auto),
        Err(SimError::InvalidArgument(_))
    ));
    assert!(matches!(
        sim.set_max_record_size_kib("s", 1023),
        Err(SimError::InvalidArgument(_))
    ));
    assert!(matches!(
        sim.set_max_record_size_kib("s", 10_241),
        Err(SimError::InvalidArgument(_))
    ));
    assert_eq!(sim.stream_settings("s").unwrap(), before, "nothing changed");
    assert_eq!(
        sim.set_stream_mode("nope", kinesis_sim::StreamMode::OnDemand),
        Err(SimError::StreamNotFound("nope".into()))
    );

    sim.set_stream_mode("s", kinesis_sim::StreamMode::OnDemand)
        .unwrap();
    sim.set_record_distribution("s", RecordDistribution::Auto)
        .unwrap();
    sim.set_max_record_size_kib("s", 2048).unwrap();
    let s = summary(&c, "s").await;
    assert_eq!(
        s.stream_mode_details().unwrap().stream_mode(),
        &StreamMode::OnDemand
    );
    assert_eq!(
        s.record_distribution_strategy(),
        Some(&RecordDistributionStrategy::Auto)
    );
    assert_eq!(s.max_record_size_in_kib(), Some(2048));
    let d = c.describe_stream().stream_name("s").send().await.unwrap();
    assert_eq!(
        d.stream_description()
            .unwrap()
            .stream_mode_details()
            .unwrap()
            .stream_mode(),
        &StreamMode::OnDemand
    );
    // AUTO over 2 shards: alternate whatever the key.
    let recs: Vec<_> = (0..6).map(|_| entry(Some("one"), 1)).collect();
    let out = c
        .put_records()
        .stream_name("s")
        .set_records(Some(recs))
        .send()
        .await
        .unwrap();
    assert_eq!(per_shard(&out), vec![3, 3]);
    // Switching to PROVISIONED while AUTO is refused.
    assert!(matches!(
        sim.set_stream_mode("s", kinesis_sim::StreamMode::Provisioned),
        Err(SimError::InvalidArgument(_))
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn creating_updating_deleting_last_as_configured() {
    let d = Duration::from_millis(400);
    let cfg = SimConfig {
        transitions: Transitions {
            creating: d,
            updating: d,
            deleting: d,
        },
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg).await.unwrap();
    let c = client(&sim.endpoint_url());
    let status = |s: aws_sdk_kinesis::types::StreamDescriptionSummary| s.stream_status().clone();
    let code = |e: &dyn ProvideErrorMetadata| e.code().unwrap_or("").to_string();

    // The in-process handle creates ACTIVE streams at once.
    sim.create_stream("now", 1).unwrap();
    assert_eq!(
        sim.stream_status("now").unwrap(),
        kinesis_sim::StreamStatus::Active
    );

    c.create_stream()
        .stream_name("t")
        .shard_count(2)
        .send()
        .await
        .unwrap();
    let s = summary(&c, "t").await;
    assert_eq!(
        (status(s.clone()), s.open_shard_count()),
        (StreamStatus::Creating, 0)
    );
    let e = c
        .put_record()
        .stream_name("t")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "ResourceNotFoundException");
    let shards = c.list_shards().stream_name("t").send().await.unwrap();
    assert!(shards.shards().is_empty());
    tokio::time::sleep(d + Duration::from_millis(100)).await;
    assert_eq!(status(summary(&c, "t").await), StreamStatus::Active);

    // A split is pending while UPDATING; writes go on; a second update is refused.
    c.split_shard()
        .stream_name("t")
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key("1000")
        .send()
        .await
        .unwrap();
    assert_eq!(status(summary(&c, "t").await), StreamStatus::Updating);
    assert_eq!(
        c.list_shards()
            .stream_name("t")
            .send()
            .await
            .unwrap()
            .shards()
            .len(),
        2
    );
    c.put_record()
        .stream_name("t")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap();
    let e = c
        .update_shard_count()
        .stream_name("t")
        .target_shard_count(4)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .unwrap_err();
    let e = e.into_service_error();
    assert_eq!(
        (code(&e), e.message().unwrap_or("")),
        (
            "ResourceInUseException".to_string(),
            "Stream t under account 123456789012 not ACTIVE, instead in state UPDATING"
        )
    );
    tokio::time::sleep(d + Duration::from_millis(100)).await;
    let s = summary(&c, "t").await;
    assert_eq!(
        (status(s.clone()), s.open_shard_count()),
        (StreamStatus::Active, 3)
    );

    // DELETING: described, not writable, the name stays taken; then gone.
    c.delete_stream().stream_name("t").send().await.unwrap();
    assert_eq!(status(summary(&c, "t").await), StreamStatus::Deleting);
    let e = c
        .put_record()
        .stream_name("t")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "ResourceNotFoundException");
    let e = c
        .create_stream()
        .stream_name("t")
        .shard_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "ResourceInUseException");
    tokio::time::sleep(d + Duration::from_millis(100)).await;
    let e = c
        .describe_stream_summary()
        .stream_name("t")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e.into_service_error()), "ResourceNotFoundException");
    assert_eq!(sim.stream_names(), vec!["now".to_string()]);
    c.create_stream()
        .stream_name("t")
        .shard_count(1)
        .send()
        .await
        .unwrap();
    sim.shutdown().await;
}
