//! Stream management: CreateStream (capacity mode, record distribution, record size),
//! DeleteStream, DescribeStream (paged by `Limit` / `ExclusiveStartShardId`),
//! DescribeStreamSummary, ListStreams (paged by `Limit` / `ExclusiveStartStreamName` /
//! `NextToken`), and the live settings: UpdateStreamMode, UpdateMaxRecordSize and
//! UpdateStreamRecordDistributionStrategy (by `StreamARN`). Creation and listing are
//! account-level (no fault gate); the others pass the named stream's gate.

use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::shards::{shard_json, shards_after};
use super::validate::{self, Checks};
use super::{
    epoch_secs, not_active, ok, parse, resolve_arn, update, ApiError, Reply, Res, Staged, Step,
    StreamRef, B64,
};
use crate::config::{
    RecordDistribution, StreamMode, StreamOptions, MAX_MAX_RECORD_SIZE_KIB,
    MIN_MAX_RECORD_SIZE_KIB, ON_DEMAND_INITIAL_SHARDS,
};
use crate::state::{check_settings, Registry, Stream, StreamStatus};

/// Most shards one CreateStream may ask for under the model; the account limit is lower.
const MODEL_MAX_SHARDS: i64 = 100_000;
/// The account's shard limit.
const ACCOUNT_SHARD_LIMIT: i64 = 10_000;
/// Most shards one DescribeStream returns (and its default `Limit`).
const DESCRIBE_PAGE: usize = 100;
const MODES: &[&str] = &["PROVISIONED", "ON_DEMAND"];
const DISTRIBUTIONS: &[&str] = &["AUTO", "USER_PARTITION_KEY"];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ModeDetailsIn {
    stream_mode: Option<String>,
}

/// Validates `StreamModeDetails` (when given) at `path`.
fn mode_arg(details: Option<&ModeDetailsIn>, path: &str) -> Result<Option<StreamMode>, Reply> {
    let Some(d) = details else { return Ok(None) };
    let at = format!("{path}.streamMode");
    let s = validate::required(d.stream_mode.as_deref(), &at)?;
    let s = validate::one_of(Some(s), &at, MODES)?;
    Ok(StreamMode::from_api(s))
}

fn distribution_arg(v: Option<&str>, path: &str) -> Result<Option<RecordDistribution>, Reply> {
    match v {
        None => Ok(None),
        some => Ok(RecordDistribution::from_api(validate::one_of(
            some,
            &path,
            DISTRIBUTIONS,
        )?)),
    }
}

fn record_size_arg(v: Option<i64>) -> Result<Option<u32>, Reply> {
    let (min, max) = (
        MIN_MAX_RECORD_SIZE_KIB.into(),
        MAX_MAX_RECORD_SIZE_KIB.into(),
    );
    Ok(match v {
        None => None,
        Some(k) => Some(validate::int_in(k, &"maxRecordSizeInKiB", min, max)? as u32),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateStreamIn {
    stream_name: Option<String>,
    shard_count: Option<i64>,
    stream_mode_details: Option<ModeDetailsIn>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: Option<i64>,
    record_distribution_strategy: Option<String>,
}

pub(super) fn create_stream<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: CreateStreamIn = parse(body)?;
    let name = validate::required(req.stream_name, &"streamName")?;
    validate::length_in(&name, name.chars().count(), &"streamName", 1, 128)?;
    if let Some(n) = req.shard_count {
        validate::int_in(n, &"shardCount", 1, MODEL_MAX_SHARDS)?;
    }
    let mode = mode_arg(req.stream_mode_details.as_ref(), "streamModeDetails")?;
    let max_kib = record_size_arg(req.max_record_size_in_kib)?;
    let distribution = distribution_arg(
        req.record_distribution_strategy.as_deref(),
        "recordDistributionStrategy",
    )?;
    let shards = req.shard_count.unwrap_or(ON_DEMAND_INITIAL_SHARDS.into());
    if shards > ACCOUNT_SHARD_LIMIT {
        return Err(ApiError::new(
            400,
            "LimitExceededException",
            format!(
                "This request would exceed the shard limit for the account {}.",
                reg.cfg.account_id
            ),
        )
        .into());
    }
    let opts = StreamOptions {
        shards: shards as u32,
        max_record_size_kib: max_kib,
        limits: None,
        mode: mode.unwrap_or_default(),
        distribution: distribution.unwrap_or_default(),
    };
    Ok(Staged::ungated(move || {
        match reg.create(&name, &opts, reg.cfg.transitions.creating) {
            Ok(_) => ok(&json!({})),
            Err(crate::SimError::StreamExists(_)) => Err(ApiError::in_use(format!(
                "Stream {name} under account {} already exists.",
                reg.cfg.account_id
            ))
            .into()),
            Err(e) => Err(ApiError::invalid(invalid_message(&e)).into()),
        }
    }))
}

fn invalid_message(e: &crate::SimError) -> String {
    match e {
        crate::SimError::InvalidArgument(m) => m.clone(),
        other => other.to_string(),
    }
}

pub(super) fn delete_stream<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let stream = parse::<StreamRef>(body)?.resolve(reg)?;
    let name = stream.name.clone();
    Ok(Staged::on(&stream, move || {
        reg.delete(&name, reg.cfg.transitions.deleting);
        ok(&json!({}))
    }))
}

/// The members DescribeStream and DescribeStreamSummary share.
fn description(s: &Stream) -> Map<String, Value> {
    let settings = s.settings();
    let v = json!({
        "StreamName": s.name,
        "StreamARN": s.arn,
        "StreamStatus": s.status().as_str(),
        "StreamModeDetails": {"StreamMode": settings.mode.as_str()},
        "RetentionPeriodHours": 24,
        "StreamCreationTimestamp": epoch_secs(s.created),
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
        "MaxRecordSizeInKiB": settings.max_record_size_kib,
        "RecordDistributionStrategy": settings.distribution.as_str(),
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object"),
    }
}

/// True while a stream shows no shards (it is still being created).
fn shards_hidden(s: &Stream) -> bool {
    s.status() == StreamStatus::Creating
}

pub(super) fn describe_stream_summary<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let stream = parse::<StreamRef>(body)?.resolve(reg)?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        let mut d = description(&s);
        let open = if shards_hidden(&s) {
            0
        } else {
            s.lock().open_count()
        };
        d.insert("OpenShardCount".into(), json!(open));
        d.insert("ConsumerCount".into(), json!(0));
        ok(&json!({ "StreamDescriptionSummary": d }))
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeStreamIn {
    #[serde(flatten)]
    stream: StreamRef,
    limit: Option<i64>,
    exclusive_start_shard_id: Option<String>,
}

pub(super) fn describe_stream<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: DescribeStreamIn = parse(body)?;
    let limit = validate::int_or(req.limit, DESCRIBE_PAGE as i64, &"limit", 1, 10_000)? as usize;
    let page = limit.min(DESCRIBE_PAGE);
    let stream = req.stream.resolve(reg)?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        let (shards, more) = if shards_hidden(&s) {
            (Vec::new(), false)
        } else {
            let st = s.lock();
            let start = shards_after(&st, req.exclusive_start_shard_id.as_deref());
            let rest = &st.shards[start..];
            let shards = rest.iter().take(page).map(shard_json).collect::<Vec<_>>();
            (shards, rest.len() > page)
        };
        let mut d = description(&s);
        d.insert("Shards".into(), json!(shards));
        d.insert("HasMoreShards".into(), json!(more));
        ok(&json!({ "StreamDescription": d }))
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListStreamsIn {
    limit: Option<i64>,
    exclusive_start_stream_name: Option<String>,
    next_token: Option<String>,
}

pub(super) fn list_streams<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: ListStreamsIn = parse(body)?;
    let limit = validate::int_or(req.limit, 100, &"limit", 1, 10_000)? as usize;
    let after = match &req.next_token {
        None => req.exclusive_start_stream_name,
        Some(t) => Some(
            B64.decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::invalid("Invalid NextToken."))?,
        ),
    };
    Ok(Staged::ungated(move || {
        let names = reg.names();
        let start = after.map_or(0, |a| names.partition_point(|n| *n <= a));
        let rest = &names[start..];
        let page = &rest[..rest.len().min(limit)];
        let summaries: Vec<Value> = page
            .iter()
            .filter_map(|n| reg.get(n))
            .map(|s| {
                let d = description(&s);
                let keep = [
                    "StreamName",
                    "StreamARN",
                    "StreamStatus",
                    "StreamModeDetails",
                ];
                let mut m: Map<String, Value> = keep
                    .iter()
                    .map(|k| (k.to_string(), d[*k].clone()))
                    .collect();
                m.insert(
                    "StreamCreationTimestamp".into(),
                    d["StreamCreationTimestamp"].clone(),
                );
                Value::Object(m)
            })
            .collect();
        let more = rest.len() > page.len();
        let mut v =
            json!({"StreamNames": page, "HasMoreStreams": more, "StreamSummaries": summaries});
        if let (true, Some(last)) = (more, page.last()) {
            v["NextToken"] = json!(B64.encode(last));
        }
        ok(&v)
    }))
}

// ---------------------------------------------------------------------------------------
// Settings that change live

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateStreamModeIn {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_mode_details: Option<ModeDetailsIn>,
}

fn require_active(reg: &Registry, s: &Stream) -> Result<(), Reply> {
    match s.status() {
        StreamStatus::Active => Ok(()),
        other => Err(not_active(reg, s, other)),
    }
}

pub(super) fn update_stream_mode<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: UpdateStreamModeIn = parse(body)?;
    let mut checks = Checks::default();
    checks.present(&req.stream_arn, &"streamARN");
    checks.present(&req.stream_mode_details, &"streamModeDetails");
    checks.done()?;
    let mode =
        mode_arg(req.stream_mode_details.as_ref(), "streamModeDetails")?.expect("checked present");
    let stream = resolve_arn(reg, req.stream_arn.as_deref())?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        let mut next = s.settings();
        next.mode = mode;
        check_settings(&next).map_err(ApiError::invalid)?;
        update(reg, &s, move |s| {
            let _ = s.update_settings(|st| {
                st.mode = mode;
                if mode == StreamMode::Provisioned {
                    st.distribution = RecordDistribution::UserPartitionKey;
                }
                Ok::<(), ()>(())
            });
        })?;
        ok(&json!({}))
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateMaxRecordSizeIn {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: Option<i64>,
}

pub(super) fn update_max_record_size<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: UpdateMaxRecordSizeIn = parse(body)?;
    let kib = validate::required(req.max_record_size_in_kib, &"maxRecordSizeInKiB")?;
    let kib = record_size_arg(Some(kib))?.expect("given");
    let stream = resolve_arn(reg, req.stream_arn.as_deref())?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        require_active(reg, &s)?;
        set_settings(&s, |st| st.max_record_size_kib = kib)
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateDistributionIn {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    record_distribution_strategy: Option<String>,
}

pub(super) fn update_stream_record_distribution_strategy<'a>(
    reg: &'a Arc<Registry>,
    body: &'a [u8],
) -> Step<'a> {
    let req: UpdateDistributionIn = parse(body)?;
    let mut checks = Checks::default();
    checks.present(&req.stream_arn, &"streamARN");
    checks.present(
        &req.record_distribution_strategy,
        &"recordDistributionStrategy",
    );
    checks.done()?;
    let path = "recordDistributionStrategy";
    let d = distribution_arg(req.record_distribution_strategy.as_deref(), path)?
        .expect("checked present");
    let stream = resolve_arn(reg, req.stream_arn.as_deref())?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        require_active(reg, &s)?;
        if s.settings().mode == StreamMode::Provisioned {
            return Err(ApiError::invalid(format!(
                "Stream {} under account {} is in PROVISIONED capacity mode; the record distribution strategy applies to ON_DEMAND streams only.",
                s.name, reg.cfg.account_id
            ))
            .into());
        }
        set_settings(&s, |st| st.distribution = d)
    }))
}

/// Applies a settings change that [`check_settings`] must accept; `{}` or the error.
fn set_settings(s: &Stream, change: impl FnOnce(&mut crate::StreamSettings)) -> Res {
    s.update_settings(|st| {
        change(st);
        check_settings(st)
    })
    .map_err(ApiError::invalid)?;
    ok(&json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_description_members() {
        let reg = Registry::new(crate::SimConfig::default());
        let s = reg
            .create("d", &StreamOptions::new(1), Default::default())
            .unwrap();
        let d = description(&s);
        assert_eq!(d["StreamStatus"], "ACTIVE");
        assert_eq!(d["StreamModeDetails"], json!({"StreamMode": "PROVISIONED"}));
        assert_eq!(d["MaxRecordSizeInKiB"], 1024);
        assert_eq!(d["RecordDistributionStrategy"], "USER_PARTITION_KEY");
    }
}
