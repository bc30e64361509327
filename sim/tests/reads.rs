//! GetShardIterator and GetRecords through the unmodified aws-sdk-kinesis: iterator types
//! (TRIM_HORIZON, LATEST, AT_TIMESTAMP, AT/AFTER_SEQUENCE_NUMBER), `Limit`, and the 10 MiB
//! cap of one GetRecords answer.

mod support;

use support::client;

use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use kinesis_sim::{RateLimits, SimConfig, Simulator, StreamOptions};

async fn iterator(
    c: &Client,
    ty: ShardIteratorType,
    seq: Option<&str>,
    at: Option<DateTime>,
) -> String {
    c.get_shard_iterator()
        .stream_name("r")
        .shard_id("shardId-000000000000")
        .shard_iterator_type(ty)
        .set_starting_sequence_number(seq.map(str::to_string))
        .set_timestamp(at)
        .send()
        .await
        .unwrap()
        .shard_iterator
        .unwrap()
}

/// Data of each record GetRecords returns for `it` with `limit`, and the next iterator.
async fn read(
    c: &Client,
    it: &str,
    limit: Option<i32>,
) -> (Vec<Vec<u8>>, Vec<String>, Option<String>) {
    let out = c
        .get_records()
        .shard_iterator(it)
        .set_limit(limit)
        .send()
        .await
        .unwrap();
    let data = out
        .records()
        .iter()
        .map(|r| r.data().as_ref().to_vec())
        .collect();
    let seqs = out
        .records()
        .iter()
        .map(|r| r.sequence_number().to_string())
        .collect();
    (data, seqs, out.next_shard_iterator().map(str::to_string))
}

#[tokio::test]
async fn iterator_types_limit_and_the_10_mib_cap() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let c = client(&sim.endpoint_url());
    let opts = StreamOptions {
        limits: Some(RateLimits::unlimited()),
        ..StreamOptions::new(1)
    };
    sim.create_stream_with("r", opts).unwrap();
    let put = |d: Vec<u8>| {
        c.put_record()
            .stream_name("r")
            .partition_key("k")
            .data(Blob::new(d))
            .send()
    };
    for i in 0..3u8 {
        put(vec![i]).await.unwrap();
    }
    let latest = iterator(&c, ShardIteratorType::Latest, None, None).await;
    let before_big = DateTime::from(std::time::SystemTime::now());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for i in 0..11u8 {
        put(vec![i; 1_048_576]).await.unwrap();
    }

    let trim = iterator(&c, ShardIteratorType::TrimHorizon, None, None).await;
    let (data, seqs, next) = read(&c, &trim, Some(2)).await;
    assert_eq!(data, vec![vec![0], vec![1]]);
    // AT / AFTER_SEQUENCE_NUMBER start at / after the record with that number.
    let at = iterator(
        &c,
        ShardIteratorType::AtSequenceNumber,
        Some(&seqs[1]),
        None,
    )
    .await;
    assert_eq!(read(&c, &at, Some(1)).await.0, vec![vec![1]]);
    let after = iterator(
        &c,
        ShardIteratorType::AfterSequenceNumber,
        Some(&seqs[1]),
        None,
    )
    .await;
    assert_eq!(read(&c, &after, Some(1)).await.0, vec![vec![2]]);
    let (data, _, _) = read(&c, &next.unwrap(), Some(1)).await;
    assert_eq!(data, vec![vec![2]]);

    // LATEST (taken before the 1 MiB records) and AT_TIMESTAMP see only those; one answer
    // holds at most 10 MiB, then the rest.
    for it in [
        latest,
        iterator(&c, ShardIteratorType::AtTimestamp, None, Some(before_big)).await,
    ] {
        let (data, _, next) = read(&c, &it, None).await;
        assert_eq!(data.len(), 10, "10 MiB cap");
        assert_eq!(data[9], vec![9; 1_048_576]);
        let (rest, _, _) = read(&c, &next.unwrap(), None).await;
        assert_eq!(rest, vec![vec![10; 1_048_576]]);
    }
    sim.shutdown().await;
}
