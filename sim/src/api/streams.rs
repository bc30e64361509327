//! Stream management: CreateStream, DeleteStream, DescribeStream, DescribeStreamSummary
//! and ListStreams. Creation is account-level (no fault gate); the others pass the named
//! stream's gate.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::shards::shard_json;
use super::validate::{self, Rule};
use super::{epoch_secs, ok, parse, ApiError, Reply, Staged, Step, StreamRef};
use crate::config::StreamOptions;
use crate::state::Registry;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateStreamIn {
    stream_name: Option<String>,
    shard_count: Option<i64>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: Option<i64>,
}

pub(super) fn create_stream<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: CreateStreamIn = parse(body)?;
    let name = validate::required(req.stream_name, &"streamName")?;
    validate::length_in(&name, name.chars().count(), &"streamName", 1, 128)?;
    let shards = req.shard_count.unwrap_or(4);
    if shards < 1 {
        return Err(validate::fail(Some(&shards), &"shardCount", Rule::ValueAtLeast(1)).into());
    }
    if shards > 10_000 {
        return Err(Reply::Err(ApiError::new(
            400,
            "LimitExceededException",
            format!(
                "This request would exceed the shard limit for the account {}.",
                reg.cfg.account_id
            ),
        )));
    }
    let max_kib = match req.max_record_size_in_kib {
        None => None,
        Some(k) => Some(validate::int_in(k, &"maxRecordSizeInKiB", 1024, 10_240)? as u32),
    };
    let opts = StreamOptions {
        shards: shards as u32,
        max_record_size_kib: max_kib,
        limits: None,
    };
    Ok(Staged::ungated(move || match reg.create(&name, &opts) {
        Ok(_) => ok(&json!({})),
        Err(_) => Err(ApiError::in_use(format!(
            "Stream {name} under account {} already exists.",
            reg.cfg.account_id
        ))
        .into()),
    }))
}

pub(super) fn delete_stream<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let stream = parse::<StreamRef>(body)?.resolve(reg)?;
    let name = stream.name.clone();
    Ok(Staged::on(&stream, move || {
        reg.delete(&name);
        ok(&json!({}))
    }))
}

fn stream_mode() -> Value {
    json!({"StreamMode": "PROVISIONED"})
}

pub(super) fn describe_stream_summary<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let stream = parse::<StreamRef>(body)?.resolve(reg)?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        let open = s.lock().open_count();
        ok(&json!({"StreamDescriptionSummary": {
            "StreamName": s.name,
            "StreamARN": s.arn,
            "StreamStatus": "ACTIVE",
            "StreamModeDetails": stream_mode(),
            "RetentionPeriodHours": 24,
            "StreamCreationTimestamp": epoch_secs(s.created),
            "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
            "EncryptionType": "NONE",
            "OpenShardCount": open,
            "ConsumerCount": 0,
            "MaxRecordSizeInKiB": s.max_record_size_kib,
        }}))
    }))
}

pub(super) fn describe_stream<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let stream = parse::<StreamRef>(body)?.resolve(reg)?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        let shards: Vec<Value> = s.lock().shards.iter().map(shard_json).collect();
        ok(&json!({"StreamDescription": {
            "StreamName": s.name,
            "StreamARN": s.arn,
            "StreamStatus": "ACTIVE",
            "StreamModeDetails": stream_mode(),
            "Shards": shards,
            "HasMoreShards": false,
            "RetentionPeriodHours": 24,
            "StreamCreationTimestamp": epoch_secs(s.created),
            "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
            "EncryptionType": "NONE",
        }}))
    }))
}

pub(super) fn list_streams<'a>(reg: &'a Arc<Registry>, _body: &'a [u8]) -> Step<'a> {
    Ok(Staged::ungated(move || {
        let names = reg.names();
        let summaries: Vec<Value> = names
            .iter()
            .filter_map(|n| reg.get(n))
            .map(|s| {
                json!({
                    "StreamName": s.name,
                    "StreamARN": s.arn,
                    "StreamStatus": "ACTIVE",
                    "StreamModeDetails": stream_mode(),
                    "StreamCreationTimestamp": epoch_secs(s.created),
                })
            })
            .collect();
        ok(&json!({"StreamNames": names, "HasMoreStreams": false, "StreamSummaries": summaries}))
    }))
}
