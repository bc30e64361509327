//! Paging as the API defines it — ListShards (`MaxResults`, at most 1000 a page,
//! `NextToken`, `ExclusiveStartShardId`), DescribeStream (`Limit`, at most 100 a page,
//! `HasMoreShards`), ListStreams (`Limit`, `HasMoreStreams`, `NextToken`) — and a
//! 10,000-shard stream served without per-request work proportional to its size.

mod support;

use support::client;

use std::time::Instant;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kinesis_sim::hash::uniform_range;
use kinesis_sim::{shard_id, RateLimits, SimConfig, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shards_pages_a_10000_shard_stream() {
    let sim = Simulator::start(SimConfig {
        limits: RateLimits::unlimited(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let c = client(&sim.endpoint_url());
    let t = Instant::now();
    c.create_stream()
        .stream_name("big")
        .shard_count(10_000)
        .send()
        .await
        .unwrap();
    let created = t.elapsed();

    // MaxResults above 1000 is accepted and capped at 1000 a page.
    let mut pages = Vec::new();
    let first = c
        .list_shards()
        .stream_name("big")
        .max_results(10_000)
        .send()
        .await
        .unwrap();
    pages.push(first.shards().len());
    let mut ids: Vec<String> = first
        .shards()
        .iter()
        .map(|s| s.shard_id().to_string())
        .collect();
    let mut token = first.next_token().map(str::to_string);
    while let Some(tk) = token {
        let page = c
            .list_shards()
            .next_token(tk)
            .max_results(10_000)
            .send()
            .await
            .unwrap();
        pages.push(page.shards().len());
        ids.extend(page.shards().iter().map(|s| s.shard_id().to_string()));
        token = page.next_token().map(str::to_string);
    }
    assert_eq!(pages, vec![1000; 10]);
    assert_eq!(ids, (0..10_000).map(shard_id).collect::<Vec<_>>());
    let last = c.list_shards().stream_name("big").send().await.unwrap();
    assert_eq!(
        (last.shards().len(), last.next_token().is_some()),
        (1000, true)
    );

    // Smaller pages, and starting after a given shard.
    let p = c
        .list_shards()
        .stream_name("big")
        .max_results(7)
        .send()
        .await
        .unwrap();
    let p2 = c
        .list_shards()
        .next_token(p.next_token().unwrap())
        .max_results(3)
        .send()
        .await
        .unwrap();
    let got: Vec<&str> = p2.shards().iter().map(|s| s.shard_id()).collect();
    assert_eq!(
        got,
        vec![
            "shardId-000000000007",
            "shardId-000000000008",
            "shardId-000000000009"
        ]
    );
    let tail = c
        .list_shards()
        .stream_name("big")
        .exclusive_start_shard_id("shardId-000000009499")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.shards().len(), 500);
    assert_eq!(tail.shards()[0].shard_id(), "shardId-000000009500");
    assert!(tail.next_token().is_none());

    // PutRecords routes by binary search: the first and last key of a few shards.
    let picks = [0u32, 1, 4_999, 5_000, 9_998, 9_999];
    let mut entries = Vec::new();
    for &i in &picks {
        let (s, e) = uniform_range(i, 10_000);
        for key in [s, e] {
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key("k")
                    .explicit_hash_key(key.to_string())
                    .data(Blob::new("x"))
                    .build()
                    .unwrap(),
            );
        }
    }
    let out = c
        .put_records()
        .stream_name("big")
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    let routed: Vec<&str> = out
        .records()
        .iter()
        .map(|r| r.shard_id().unwrap())
        .collect();
    let want: Vec<String> = picks
        .iter()
        .flat_map(|&i| [shard_id(i), shard_id(i)])
        .collect();
    assert_eq!(routed, want);
    // A 10,000-shard stream is created in well under the SDK's timeouts (debug build).
    assert!(
        created.as_secs() < 5,
        "creating 10,000 shards took {created:?}"
    );

    // UpdateShardCount on 10,000 shards: parents found by binary search.
    sim.reshard("big", 5_000).unwrap();
    assert_eq!(sim.shards("big").iter().filter(|s| s.open).count(), 5_000);
    sim.shutdown().await;
}

#[tokio::test]
async fn describe_stream_and_list_streams_page() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let c = client(&sim.endpoint_url());
    sim.create_stream("s", 250).unwrap();
    let page = |limit: Option<i32>, start: Option<&str>| {
        let c = c.clone();
        let start = start.map(str::to_string);
        async move {
            let d = c
                .describe_stream()
                .stream_name("s")
                .set_limit(limit)
                .set_exclusive_start_shard_id(start)
                .send()
                .await
                .unwrap();
            let d = d.stream_description().unwrap().clone();
            let ids: Vec<String> = d
                .shards()
                .iter()
                .map(|s| s.shard_id().to_string())
                .collect();
            (ids, d.has_more_shards())
        }
    };
    let (ids, more) = page(None, None).await;
    assert_eq!(
        (ids.len(), more, ids[99].as_str()),
        (100, true, "shardId-000000000099")
    );
    let (ids, more) = page(Some(1000), Some("shardId-000000000099")).await;
    assert_eq!(
        (ids.len(), more, ids[0].as_str()),
        (100, true, "shardId-000000000100")
    );
    let (ids, more) = page(Some(60), Some("shardId-000000000199")).await;
    assert_eq!((ids.len(), more), (50, false));
    let (ids, more) = page(Some(50), Some("shardId-000000000199")).await;
    assert_eq!((ids.len(), more), (50, false));
    let (ids, more) = page(Some(49), Some("shardId-000000000199")).await;
    assert_eq!((ids.len(), more), (49, true));

    for n in ["a", "b", "c", "d", "e"] {
        sim.create_stream(n, 1).unwrap();
    }
    let l = c.list_streams().limit(2).send().await.unwrap();
    assert_eq!(
        (l.stream_names(), l.has_more_streams()),
        (&["a".to_string(), "b".to_string()][..], true)
    );
    assert_eq!(l.stream_summaries().len(), 2);
    let l2 = c
        .list_streams()
        .next_token(l.next_token().unwrap())
        .limit(3)
        .send()
        .await
        .unwrap();
    assert_eq!(l2.stream_names(), ["c", "d", "e"]);
    assert!(l2.has_more_streams());
    let l3 = c
        .list_streams()
        .exclusive_start_stream_name("e")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (l3.stream_names(), l3.has_more_streams(), l3.next_token()),
        (&["s".to_string()][..], false, None)
    );
    sim.shutdown().await;
}
