//! Format edge cases settled against the emulators (issue 16, item 5b): what kinesalite and
//! kinesis-local answer to an `ExplicitHashKey` with leading zeros, which the producer refuses
//! (the API's pattern is `0|([1-9]\d{0,38})`).
//!
//! ```text
//! start emulator ─▶ CreateStream (2 shards), wait ACTIVE ─▶ raw PutRecord / PutRecords
//!                ─▶ exact status, error type and message, or the shard the record landed on
//! ```
//!
//! Without the emulators the tests are skipped with a message; with `CI=true` that is a failure.

use kinesis_producer::hash_key::ExplicitHashKeyError;
use kinesis_producer::HashKey;
use kinesis_sim::emulators::{call, start_or_skip, Emulator, RunningEmulator};
use serde_json::{json, Value};
use std::time::Duration;

const STREAM: &str = "edges";

/// Starts `kind` with a two-shard stream that is ACTIVE, or `None` to skip.
async fn emulator_with_stream(kind: Emulator) -> Option<(RunningEmulator, String)> {
    let emulator = start_or_skip(kind).await?;
    let url = emulator.endpoint_url();
    let (status, body) = call(
        &url,
        "CreateStream",
        &json!({"StreamName": STREAM, "ShardCount": 2}),
    )
    .await;
    assert_eq!(status, 200, "CreateStream: {body}");
    for _ in 0..100 {
        let (_, body) = call(
            &url,
            "DescribeStreamSummary",
            &json!({"StreamName": STREAM}),
        )
        .await;
        if body["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE" {
            return Some((emulator, url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{kind:?}: stream {STREAM} never became ACTIVE");
}

async fn put_record(url: &str, ehk: &str) -> (u16, Value) {
    call(
        url,
        "PutRecord",
        &json!({"StreamName": STREAM, "PartitionKey": "pk", "Data": "eA==", "ExplicitHashKey": ehk}),
    )
    .await
}

/// A two-record PutRecords: `ehk` first, then the valid key "7".
async fn put_records(url: &str, ehk: &str) -> (u16, Value) {
    call(
        url,
        "PutRecords",
        &json!({"StreamName": STREAM, "Records": [
            {"PartitionKey": "pk", "Data": "eA==", "ExplicitHashKey": ehk},
            {"PartitionKey": "pk", "Data": "eA==", "ExplicitHashKey": "7"},
        ]}),
    )
    .await
}

/// 2^128 - 1 with one leading zero: 40 characters.
const PADDED_MAX: &str = "0340282366920938463463374607431768211455";

#[test]
fn the_producer_refuses_leading_zeros() {
    for key in ["007", "00", PADDED_MAX] {
        assert_eq!(
            HashKey::parse_explicit(key),
            Err(ExplicitHashKeyError::LeadingZero),
            "{key}"
        );
    }
    assert_eq!(HashKey::parse_explicit("0"), Ok(HashKey(0)));
}

/// kinesalite accepts leading zeros and routes by the numeric value: "007" lands where "7"
/// does (shard 0), and 2^128 - 1 written with 40 characters lands on the last shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesalite_accepts_leading_zeros_as_numbers() {
    let Some((_emulator, url)) = emulator_with_stream(Emulator::Kinesalite).await else {
        return;
    };
    for (key, shard) in [
        ("007", "shardId-000000000000"),
        ("00", "shardId-000000000000"),
        (PADDED_MAX, "shardId-000000000001"),
    ] {
        let (status, body) = put_record(&url, key).await;
        assert_eq!(status, 200, "PutRecord {key}: {body}");
        assert_eq!(body["ShardId"], shard, "PutRecord {key}: {body}");
    }
    let (status, body) = put_records(&url, "007").await;
    assert_eq!(status, 200, "PutRecords: {body}");
    assert_eq!(body["FailedRecordCount"], 0, "{body}");
    let shards: Vec<&Value> = body["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["ShardId"])
        .collect();
    assert_eq!(shards, [&json!("shardId-000000000000"); 2], "{body}");
}

/// kinesis-local refuses every leading zero, for the whole request (not per record):
/// HTTP 400 `InvalidArgumentException`, "ExplicitHashKey contains invalid characters".
/// "0" alone is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_local_refuses_leading_zeros() {
    let Some((_emulator, url)) = emulator_with_stream(Emulator::KinesisLocal).await else {
        return;
    };
    let refused = json!({
        "__type": "InvalidArgumentException",
        "message": "ExplicitHashKey contains invalid characters",
    });
    for key in ["007", "00", PADDED_MAX] {
        assert_eq!(put_record(&url, key).await, (400, refused.clone()), "{key}");
        assert_eq!(
            put_records(&url, key).await,
            (400, refused.clone()),
            "{key}"
        );
    }
    let (status, body) = put_record(&url, "0").await;
    assert_eq!(status, 200, "PutRecord 0: {body}");
    assert_eq!(body["ShardId"], "shardId-000000000000", "{body}");
}
