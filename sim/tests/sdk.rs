//! kinesis-sim driven by the unmodified aws-sdk-kinesis over real HTTP.

mod support;

use support::client;

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ScalingType, ShardFilter, ShardFilterType, ShardIteratorType,
};
use aws_sdk_kinesis::Client;
use kinesis_sim::hash::{partition_key_hash, uniform_range, MAX_HASH_KEY};
use kinesis_sim::{Faults, RateLimits, SimConfig, Simulator, StreamOptions};

async fn sim() -> (Simulator, Client) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let c = client(&sim.endpoint_url());
    (sim, c)
}

fn entry(pk: &str, data: &[u8]) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .partition_key(pk)
        .data(Blob::new(data))
        .build()
        .unwrap()
}

fn shard_index_for(hash: u128, n: u32) -> u32 {
    (0..n)
        .find(|&i| {
            let (s, e) = uniform_range(i, n);
            s <= hash && hash <= e
        })
        .unwrap()
}

fn error_code<E: aws_sdk_kinesis::error::ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("").to_string()
}

#[tokio::test]
async fn create_describe_list_with_pagination_and_slashes() {
    let (sim, c) = sim().await;
    let name = "team/a/b-c";
    c.create_stream()
        .stream_name(name)
        .shard_count(5)
        .send()
        .await
        .unwrap();
    let d = c
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await
        .unwrap();
    let s = d.stream_description_summary().unwrap();
    assert_eq!(s.open_shard_count(), 5);
    assert_eq!(
        s.stream_arn(),
        "arn:aws:kinesis:us-east-1:123456789012:stream/team/a/b-c"
    );
    assert_eq!(s.stream_status().as_str(), "ACTIVE");
    assert_eq!(s.max_record_size_in_kib(), Some(1024));
    assert_eq!(s.encryption_type().map(|e| e.as_str()), Some("NONE"));

    // By ARN too.
    let by_arn = c
        .describe_stream_summary()
        .stream_arn(s.stream_arn())
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_arn.stream_description_summary().unwrap().stream_name(),
        name
    );

    // Pagination: 5 shards, 2 per page.
    let mut ids = Vec::new();
    let first = c
        .list_shards()
        .stream_name(name)
        .max_results(2)
        .send()
        .await
        .unwrap();
    ids.extend(first.shards().iter().map(|s| s.shard_id().to_string()));
    let mut token = first.next_token().map(str::to_string);
    while let Some(t) = token {
        let page = c
            .list_shards()
            .next_token(&t)
            .max_results(2)
            .send()
            .await
            .unwrap();
        ids.extend(page.shards().iter().map(|s| s.shard_id().to_string()));
        token = page.next_token().map(str::to_string);
    }
    let expected: Vec<String> = (0..5).map(kinesis_sim::shard_id).collect();
    assert_eq!(ids, expected);
    let all = c.list_shards().stream_name(name).send().await.unwrap();
    for (i, sh) in all.shards().iter().enumerate() {
        let (s, e) = uniform_range(i as u32, 5);
        let r = sh.hash_key_range().unwrap();
        assert_eq!(r.starting_hash_key(), s.to_string());
        assert_eq!(r.ending_hash_key(), e.to_string());
    }

    // NextToken together with StreamName is rejected like AWS.
    let t = first.next_token().unwrap();
    let err = c
        .list_shards()
        .stream_name(name)
        .next_token(t)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "InvalidArgumentException");

    // Unknown stream.
    let err = c
        .describe_stream_summary()
        .stream_name("nope")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());

    // Duplicate create.
    let err = c
        .create_stream()
        .stream_name(name)
        .shard_count(1)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_in_use_exception());
    c.delete_stream().stream_name(name).send().await.unwrap();
    assert!(sim.stream_names().is_empty());
}

#[tokio::test]
async fn put_records_route_by_md5_and_explicit_hash_key_and_read_back() {
    let (sim, c) = sim().await;
    sim.create_stream("routing", 4).unwrap();
    let mut entries: Vec<PutRecordsRequestEntry> = (0..40)
        .map(|i| entry(&format!("key-{i}"), format!("payload-{i}").as_bytes()))
        .collect();
    let explicit = [
        0u128,
        uniform_range(1, 4).0,
        uniform_range(1, 4).0 - 1,
        MAX_HASH_KEY,
    ];
    for (j, h) in explicit.iter().enumerate() {
        entries.push(
            PutRecordsRequestEntry::builder()
                .partition_key("same")
                .explicit_hash_key(h.to_string())
                .data(Blob::new(format!("ehk-{j}")))
                .build()
                .unwrap(),
        );
    }
    let out = c
        .put_records()
        .stream_name("routing")
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_record_count(), Some(0));
    let res = out.records();
    for (i, r) in res.iter().take(40).enumerate() {
        let want = shard_index_for(partition_key_hash(&format!("key-{i}")), 4);
        assert_eq!(r.shard_id(), Some(kinesis_sim::shard_id(want).as_str()));
    }
    let want_ehk = [0, 1, 0, 3];
    for (j, w) in want_ehk.iter().enumerate() {
        assert_eq!(
            res[40 + j].shard_id(),
            Some(kinesis_sim::shard_id(*w).as_str())
        );
    }
    // Sequence numbers increase per shard (as strings, fixed width) and are unique.
    let mut last: std::collections::HashMap<String, String> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for r in res {
        let seq = r.sequence_number().unwrap().to_string();
        assert_eq!(seq.len(), 56);
        assert!(seen.insert(seq.clone()));
        let shard = r.shard_id().unwrap().to_string();
        if let Some(prev) = last.get(&shard) {
            assert!(&seq > prev);
        }
        last.insert(shard, seq);
    }

    // Read back shard 0 with GetRecords, in order, with a Limit.
    let it = c
        .get_shard_iterator()
        .stream_name("routing")
        .shard_id(kinesis_sim::shard_id(0))
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let mut iter = it.shard_iterator().map(str::to_string);
    let mut read = Vec::new();
    while let Some(i) = iter.take() {
        let got = c
            .get_records()
            .shard_iterator(i)
            .limit(3)
            .send()
            .await
            .unwrap();
        if got.records().is_empty() {
            break;
        }
        read.extend(got.records().iter().map(|r| r.data().as_ref().to_vec()));
        iter = got.next_shard_iterator().map(str::to_string);
    }
    let stored: Vec<Vec<u8>> = sim
        .records("routing")
        .into_iter()
        .filter(|r| r.shard_id == kinesis_sim::shard_id(0))
        .map(|r| r.data)
        .collect();
    assert_eq!(read, stored);
    assert!(read.contains(&b"ehk-0".to_vec()));
    assert_eq!(sim.records("routing").len(), 44);

    // AT_SEQUENCE_NUMBER / AFTER_SEQUENCE_NUMBER.
    let seq = res[40].sequence_number().unwrap();
    for (ty, first) in [
        (ShardIteratorType::AtSequenceNumber, Some(b"ehk-0".to_vec())),
        (
            ShardIteratorType::AfterSequenceNumber,
            Some(b"ehk-2".to_vec()),
        ),
    ] {
        let it = c
            .get_shard_iterator()
            .stream_name("routing")
            .shard_id(kinesis_sim::shard_id(0))
            .shard_iterator_type(ty)
            .starting_sequence_number(seq)
            .send()
            .await
            .unwrap();
        let got = c
            .get_records()
            .shard_iterator(it.shard_iterator().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.records().first().map(|r| r.data().as_ref().to_vec()),
            first
        );
    }

    // PutRecord.
    let one = c
        .put_record()
        .stream_name("routing")
        .partition_key("x")
        .explicit_hash_key(MAX_HASH_KEY.to_string())
        .data(Blob::new("single"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.shard_id(), kinesis_sim::shard_id(3));
}

#[tokio::test]
async fn throttles_per_record_at_documented_rate() {
    let (sim, c) = sim().await;
    sim.create_stream("hot", 2).unwrap();
    // All to shard 0 by explicit hash key, plus one record per request to shard 1.
    let mut accepted = 0;
    let mut throttled = 0;
    let mut shard1_ok = 0;
    for _ in 0..6 {
        let mut recs: Vec<PutRecordsRequestEntry> = (0..499)
            .map(|_| {
                PutRecordsRequestEntry::builder()
                    .partition_key("p")
                    .explicit_hash_key("1")
                    .data(Blob::new(vec![7u8; 10]))
                    .build()
                    .unwrap()
            })
            .collect();
        recs.push(
            PutRecordsRequestEntry::builder()
                .partition_key("p")
                .explicit_hash_key(MAX_HASH_KEY.to_string())
                .data(Blob::new("other"))
                .build()
                .unwrap(),
        );
        let out = c
            .put_records()
            .stream_name("hot")
            .set_records(Some(recs))
            .send()
            .await
            .unwrap();
        for r in &out.records()[..499] {
            match r.error_code() {
                None => accepted += 1,
                Some("ProvisionedThroughputExceededException") => {
                    throttled += 1;
                    assert_eq!(
                        r.error_message(),
                        Some("Rate exceeded for shard shardId-000000000000 in stream hot under account 123456789012.")
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if out.records()[499].error_code().is_none() {
            shard1_ok += 1;
        }
        assert_eq!(
            out.failed_record_count(),
            Some(
                out.records()
                    .iter()
                    .filter(|r| r.error_code().is_some())
                    .count() as i32
            )
        );
    }
    assert!((1000..1150).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + throttled, 6 * 499);
    assert_eq!(shard1_ok, 6);
    let counters = sim.counters("hot");
    assert_eq!(counters.shards[0].accepted_records, accepted);
    assert_eq!(counters.shards[0].throttled_records, throttled);

    // PutRecord over budget: HTTP 400 ProvisionedThroughputExceededException.
    sim.create_stream_with(
        "one-per-sec",
        StreamOptions {
            limits: Some(RateLimits {
                records_per_sec: 1,
                ..RateLimits::default()
            }),
            ..StreamOptions::new(1)
        },
    )
    .unwrap();
    let put_one = || {
        c.put_record()
            .stream_name("one-per-sec")
            .partition_key("p")
            .data(Blob::new("x"))
            .send()
    };
    put_one().await.unwrap();
    let err = put_one().await.unwrap_err();
    assert!(err
        .into_service_error()
        .is_provisioned_throughput_exceeded_exception());

    // Byte limit: 1 MiB/s -> three 400 KiB records, two fit.
    sim.create_stream("bytes", 1).unwrap();
    let big: Vec<PutRecordsRequestEntry> =
        (0..3).map(|_| entry("k", &vec![1u8; 400 * 1024])).collect();
    let out = c
        .put_records()
        .stream_name("bytes")
        .set_records(Some(big))
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_record_count(), Some(1));
}

#[tokio::test]
async fn limits_can_be_switched_off_and_changed() {
    let sim = Simulator::start(SimConfig {
        limits: RateLimits::unlimited(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let c = client(&sim.endpoint_url());
    sim.create_stream("free", 1).unwrap();
    sim.create_stream_with(
        "slow",
        StreamOptions {
            limits: Some(RateLimits {
                enabled: true,
                records_per_sec: 10,
                bytes_per_sec: 1 << 20,
                ..RateLimits::default()
            }),
            ..StreamOptions::new(1)
        },
    )
    .unwrap();
    for (stream, want_failed) in [("free", 0), ("slow", 490)] {
        let recs: Vec<_> = (0..500).map(|i| entry(&i.to_string(), b"d")).collect();
        let out = c
            .put_records()
            .stream_name(stream)
            .set_records(Some(recs))
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_record_count(), Some(want_failed), "{stream}");
    }
}

#[tokio::test]
async fn reshard_update_split_merge() {
    let (sim, c) = sim().await;
    sim.create_stream("rs", 2).unwrap();
    c.put_records()
        .stream_name("rs")
        .records(entry("a", b"before"))
        .send()
        .await
        .unwrap();
    let up = c
        .update_shard_count()
        .stream_name("rs")
        .target_shard_count(4)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .unwrap();
    assert_eq!(up.current_shard_count(), Some(2));
    let all = c.list_shards().stream_name("rs").send().await.unwrap();
    assert_eq!(all.shards().len(), 6);
    for s in &all.shards()[..2] {
        assert!(s
            .sequence_number_range()
            .unwrap()
            .ending_sequence_number()
            .is_some());
    }
    for (i, s) in all.shards()[2..].iter().enumerate() {
        assert!(s
            .sequence_number_range()
            .unwrap()
            .ending_sequence_number()
            .is_none());
        let (start, end) = uniform_range(i as u32, 4);
        assert_eq!(
            s.hash_key_range().unwrap().starting_hash_key(),
            start.to_string()
        );
        assert_eq!(
            s.hash_key_range().unwrap().ending_hash_key(),
            end.to_string()
        );
        let parent = if i < 2 { 0 } else { 1 };
        assert_eq!(
            s.parent_shard_id(),
            Some(kinesis_sim::shard_id(parent).as_str())
        );
    }
    let open = c
        .list_shards()
        .stream_name("rs")
        .shard_filter(
            ShardFilter::builder()
                .r#type(ShardFilterType::AtLatest)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(open.shards().len(), 4);
    let from = c
        .list_shards()
        .stream_name("rs")
        .shard_filter(
            ShardFilter::builder()
                .r#type(ShardFilterType::FromTrimHorizon)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(from.shards().len(), 6);
    let at_th = c
        .list_shards()
        .stream_name("rs")
        .shard_filter(
            ShardFilter::builder()
                .r#type(ShardFilterType::AtTrimHorizon)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(at_th.shards().len(), 2);

    // Reading a closed parent to its end: no NextShardIterator, ChildShards listed.
    let parent = sim.records("rs")[0].shard_id.clone();
    let it = c
        .get_shard_iterator()
        .stream_name("rs")
        .shard_id(&parent)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let got = c
        .get_records()
        .shard_iterator(it.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.records().len(), 1);
    assert!(got.next_shard_iterator().is_none());
    assert_eq!(got.child_shards().len(), 2);

    // SplitShard shardId-000000000002 in the middle; MergeShards the halves back.
    let s2 = uniform_range(0, 4);
    let mid = s2.0 + (s2.1 - s2.0) / 2;
    c.split_shard()
        .stream_name("rs")
        .shard_to_split(kinesis_sim::shard_id(2))
        .new_starting_hash_key(mid.to_string())
        .send()
        .await
        .unwrap();
    let snap = sim.shards("rs");
    assert_eq!(snap.len(), 8);
    assert!(!snap[2].open);
    assert_eq!(
        (snap[6].starting_hash_key, snap[6].ending_hash_key),
        (s2.0, mid - 1)
    );
    assert_eq!(
        (snap[7].starting_hash_key, snap[7].ending_hash_key),
        (mid, s2.1)
    );
    assert_eq!(
        snap[7].parent_shard_id.as_deref(),
        Some("shardId-000000000002")
    );
    c.merge_shards()
        .stream_name("rs")
        .shard_to_merge(kinesis_sim::shard_id(6))
        .adjacent_shard_to_merge(kinesis_sim::shard_id(7))
        .send()
        .await
        .unwrap();
    let snap = sim.shards("rs");
    assert_eq!((snap[8].starting_hash_key, snap[8].ending_hash_key), s2);
    assert_eq!(
        snap[8].adjacent_parent_shard_id.as_deref(),
        Some("shardId-000000000007")
    );
    // Non-adjacent merge is rejected.
    let err = c
        .merge_shards()
        .stream_name("rs")
        .shard_to_merge(kinesis_sim::shard_id(8))
        .adjacent_shard_to_merge(kinesis_sim::shard_id(4))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), "InvalidArgumentException");
    let d = c
        .describe_stream_summary()
        .stream_name("rs")
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.stream_description_summary().unwrap().open_shard_count(),
        4
    );
}

#[tokio::test]
async fn faults_are_observable() {
    let (sim, c) = sim().await;
    sim.create_stream("f", 2).unwrap();
    let put = |n: usize| {
        let recs: Vec<_> = (0..n).map(|i| entry(&i.to_string(), b"x")).collect();
        c.put_records()
            .stream_name("f")
            .set_records(Some(recs))
            .send()
    };

    // Per-record InternalFailure.
    sim.set_faults(
        "f",
        Faults {
            internal_failure_rate: 1.0,
            ..Faults::default()
        },
    )
    .unwrap();
    let out = put(10).await.unwrap();
    assert_eq!(out.failed_record_count(), Some(10));
    assert!(out
        .records()
        .iter()
        .all(|r| r.error_code() == Some("InternalFailure")));
    assert_eq!(sim.counters("f").failed_records(), 10);

    // HTTP 500 and 503.
    sim.set_faults(
        "f",
        Faults {
            http_500_rate: 1.0,
            ..Faults::default()
        },
    )
    .unwrap();
    let err = put(1).await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    sim.set_faults(
        "f",
        Faults {
            http_503_rate: 1.0,
            ..Faults::default()
        },
    )
    .unwrap();
    let err = put(1).await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    let cnt = sim.counters("f");
    assert_eq!((cnt.http_500_injected, cnt.http_503_injected), (1, 1));

    // Latency and spikes.
    sim.set_faults(
        "f",
        Faults {
            latency: Duration::from_millis(150),
            latency_spike_rate: 1.0,
            latency_spike: Duration::from_millis(100),
            ..Faults::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    put(1).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(250));

    // Dropped connections: both stored and not stored happen.
    sim.set_faults(
        "f",
        Faults {
            drop_connection_rate: 1.0,
            ..Faults::default()
        },
    )
    .unwrap();
    let before = sim.records("f").len();
    for _ in 0..20 {
        let err = put(1).await.unwrap_err();
        assert!(
            err.raw_response().is_none(),
            "no HTTP response expected: {err:?}"
        );
    }
    let stored = sim.records("f").len() - before;
    assert!(
        stored > 0 && stored < 20,
        "stored {stored} of 20 dropped requests"
    );
    assert_eq!(sim.counters("f").connections_dropped, 20);

    // Unreachable for a while, then back.
    sim.set_faults(
        "f",
        Faults {
            unreachable_until: Some(Instant::now() + Duration::from_millis(300)),
            ..Faults::default()
        },
    )
    .unwrap();
    assert!(put(1).await.is_err());
    tokio::time::sleep(Duration::from_millis(350)).await;
    put(1).await.unwrap();
    sim.set_unreachable_until(Some(Instant::now() + Duration::from_secs(60)));
    assert!(c.list_shards().stream_name("f").send().await.is_err());
    sim.set_unreachable_until(None);

    // Scheduled reshard.
    sim.set_faults(
        "f",
        Faults {
            reshard_at: Some((Duration::from_millis(100), 3)),
            ..Faults::default()
        },
    )
    .unwrap();
    assert_eq!(sim.shards("f").iter().filter(|s| s.open).count(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.shards("f").iter().filter(|s| s.open).count(), 3);

    // Competing writer takes half of each shard's budget.
    sim.create_stream("shared", 1).unwrap();
    sim.set_faults(
        "shared",
        Faults {
            competing_writer_share: 0.5,
            ..Faults::default()
        },
    )
    .unwrap();
    let recs: Vec<_> = (0..500).map(|i| entry(&i.to_string(), b"x")).collect();
    let a = c
        .put_records()
        .stream_name("shared")
        .set_records(Some(recs.clone()))
        .send()
        .await
        .unwrap();
    let b = c
        .put_records()
        .stream_name("shared")
        .set_records(Some(recs))
        .send()
        .await
        .unwrap();
    let ok = 1000 - a.failed_record_count().unwrap() - b.failed_record_count().unwrap();
    assert!((500..560).contains(&ok), "accepted {ok}");
}
