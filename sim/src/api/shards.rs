//! Shards: ListShards (at most 1000 a page, an opaque `NextToken`, `ExclusiveStartShardId`,
//! `ShardFilter`) and resharding (UpdateShardCount, SplitShard, MergeShards) of provisioned
//! streams, which runs when the stream's `UPDATING` time ends; plus the JSON shape of one
//! shard that DescribeStream shares.

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::validate::{self, Checks, Rule, HASH_KEY_PATTERN};
use super::{
    epoch_time, ok, parse, resolve, update, ApiError, Reply, Staged, Step, StreamRef, B64,
};
use crate::config::StreamMode;
use crate::hash::parse_explicit_hash_key;
use crate::state::{
    parse_shard_id, sequence_number, shard_id, Registry, ReshardError, Shard, Stream, StreamState,
    StreamStatus,
};

/// Most shards one ListShards call returns, whatever `MaxResults` says.
const LIST_PAGE: usize = 1000;

/// Index of the first shard whose id sorts after `exclusive_start` (ids compare as
/// strings, as AWS compares them; zero-padding makes that index order). Binary search.
pub(super) fn shards_after(st: &StreamState, exclusive_start: Option<&str>) -> usize {
    let Some(ex) = exclusive_start else { return 0 };
    let (mut lo, mut hi) = (0, st.shards.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if shard_id(mid as u32).as_str() <= ex {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// One shard as ListShards and DescribeStream show it.
pub(super) fn shard_json(s: &Shard) -> Value {
    let mut v = json!({
        "ShardId": shard_id(s.index),
        "HashKeyRange": {
            "StartingHashKey": s.start.to_string(),
            "EndingHashKey": s.end.to_string(),
        },
        "SequenceNumberRange": {"StartingSequenceNumber": sequence_number(s.starting_seq)},
    });
    if let Some(p) = s.parent {
        v["ParentShardId"] = json!(shard_id(p));
    }
    if let Some(p) = s.adjacent_parent {
        v["AdjacentParentShardId"] = json!(shard_id(p));
    }
    if let Some(e) = s.ending_seq {
        v["SequenceNumberRange"]["EndingSequenceNumber"] = json!(sequence_number(e));
    }
    v
}

// ---------------------------------------------------------------------------------------
// ListShards

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListShardsIn {
    #[serde(flatten)]
    stream: StreamRef,
    next_token: Option<String>,
    exclusive_start_shard_id: Option<String>,
    max_results: Option<i64>,
    shard_filter: Option<ShardFilterIn>,
}

#[derive(Deserialize, Serialize, Clone, Default)]
#[serde(rename_all = "PascalCase")]
struct ShardFilterIn {
    r#type: Option<String>,
    shard_id: Option<String>,
    timestamp: Option<f64>,
}

/// The continuation state carried in a ListShards NextToken.
#[derive(Deserialize, Serialize)]
struct ListToken {
    stream: String,
    after: u32,
    filter: Option<ShardFilterIn>,
}

const FILTER_TYPES: &[&str] = &[
    "AFTER_SHARD_ID",
    "AT_TRIM_HORIZON",
    "FROM_TRIM_HORIZON",
    "AT_LATEST",
    "AT_TIMESTAMP",
    "FROM_TIMESTAMP",
];

fn shard_matches(s: &Shard, f: &ShardFilterIn) -> Result<bool, Reply> {
    let ts = |f: &ShardFilterIn| {
        f.timestamp
            .ok_or_else(|| -> Reply {
                ApiError::invalid("Timestamp must be supplied in a ShardFilter with a Type of FROM_TIMESTAMP or AT_TIMESTAMP").into()
            })
            .and_then(epoch_time)
    };
    let ty = f.r#type.as_deref().unwrap_or("");
    Ok(match ty {
        "AT_LATEST" => s.is_open(),
        "AT_TRIM_HORIZON" => s.parent.is_none(),
        "FROM_TRIM_HORIZON" => true,
        "AFTER_SHARD_ID" => {
            let id = f
                .shard_id
                .as_deref()
                .and_then(parse_shard_id)
                .ok_or_else(|| -> Reply {
                    ApiError::invalid(
                        "ShardId must be supplied in a ShardFilter with a Type of AFTER_SHARD_ID",
                    )
                    .into()
                })?;
            s.index > id
        }
        "AT_TIMESTAMP" => {
            let t = ts(f)?;
            s.created <= t && s.closed.is_none_or(|c| c > t)
        }
        "FROM_TIMESTAMP" => {
            let t = ts(f)?;
            s.closed.is_none_or(|c| c > t)
        }
        other => {
            return Err(validate::fail(
                Some(&other),
                &"shardFilter.type",
                Rule::OneOf(FILTER_TYPES),
            )
            .into())
        }
    })
}

pub(super) fn list_shards<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: ListShardsIn = parse(body)?;
    let max = validate::int_or(req.max_results, 1000, &"maxResults", 1, 10_000)? as usize;
    let page = max.min(LIST_PAGE);
    let (stream, after, filter) = if let Some(token) = &req.next_token {
        if req.stream.stream_name.is_some() || req.stream.stream_arn.is_some() {
            return Err(
                ApiError::invalid("NextToken and StreamName cannot be provided together.").into(),
            );
        }
        if req.exclusive_start_shard_id.is_some() {
            return Err(ApiError::invalid(
                "NextToken and ExclusiveStartShardId cannot be provided together.",
            )
            .into());
        }
        let t: ListToken = B64
            .decode(token.as_bytes())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| -> Reply { ApiError::invalid("Invalid NextToken.").into() })?;
        let stream = resolve(reg, Some(&t.stream), None)?;
        (stream, Some(t.after), t.filter)
    } else {
        if req.stream.stream_name.is_none() && req.stream.stream_arn.is_none() {
            return Err(
                ApiError::invalid("Either NextToken or StreamName should be provided.").into(),
            );
        }
        let stream = req.stream.resolve(reg)?;
        (stream, None, req.shard_filter)
    };
    let exclusive_start = req.exclusive_start_shard_id;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        let (shards, more, last) = {
            let st = s.lock();
            let start = match after {
                Some(a) => (a as usize + 1).min(st.shards.len()),
                None => shards_after(&st, exclusive_start.as_deref()),
            };
            let visible = if s.status() == StreamStatus::Creating {
                &[][..]
            } else {
                &st.shards[start..]
            };
            let mut out = Vec::new();
            let mut more = false;
            let mut last = 0;
            for sh in visible {
                if let Some(f) = &filter {
                    if !shard_matches(sh, f)? {
                        continue;
                    }
                }
                if out.len() == page {
                    more = true;
                    break;
                }
                last = sh.index;
                out.push(shard_json(sh));
            }
            (out, more, last)
        };
        let mut v = json!({"Shards": shards});
        if more {
            let token = ListToken {
                stream: s.name.clone(),
                after: last,
                filter,
            };
            v["NextToken"] = json!(B64.encode(serde_json::to_vec(&token).expect("json")));
        }
        ok(&v)
    }))
}

// ---------------------------------------------------------------------------------------
// Resharding

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateShardCountIn {
    #[serde(flatten)]
    stream: StreamRef,
    target_shard_count: Option<i64>,
    scaling_type: Option<String>,
}

pub(super) fn update_shard_count<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: UpdateShardCountIn = parse(body)?;
    let scaling = validate::required(req.scaling_type.as_deref(), &"scalingType")?;
    let target = validate::required(req.target_shard_count, &"targetShardCount")?;
    let target = validate::int_in(target, &"targetShardCount", 1, 10_000)?;
    validate::one_of(Some(scaling), &"scalingType", &["UNIFORM_SCALING"])?;
    let stream = provisioned(reg, req.stream.resolve(reg)?)?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        let current = s.lock().open_count();
        update(reg, &s, move |s| s.lock().reshard_uniform(target as u32))?;
        ok(&json!({
            "StreamName": s.name,
            "StreamARN": s.arn,
            "CurrentShardCount": current,
            "TargetShardCount": target,
        }))
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SplitShardIn {
    #[serde(flatten)]
    stream: StreamRef,
    shard_to_split: Option<String>,
    new_starting_hash_key: Option<String>,
}

/// A split or merge that cannot be done: `InvalidArgumentException` with AWS's message.
fn reshard_error(reg: &Registry, s: &Stream, e: ReshardError) -> ApiError {
    ApiError::invalid(e.message(&s.name, &reg.cfg.account_id))
}

/// A shard-id member that must name a shard of `stream`.
fn shard_arg(stream: &Stream, reg: &Registry, id: Option<&str>, field: &str) -> Result<u32, Reply> {
    let id = validate::required(id, &field)?;
    parse_shard_id(id)
        .filter(|&i| stream.lock().shard(i).is_some())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Could not find shard {id} in stream {} under account {}.",
                stream.name, reg.cfg.account_id
            ))
            .into()
        })
}

/// The stream, if it is provisioned: resharding on-demand streams is the service's job
/// (in the simulator, [`crate::Simulator::reshard`]'s).
fn provisioned(reg: &Registry, s: Arc<Stream>) -> Result<Arc<Stream>, Reply> {
    if s.settings().mode == StreamMode::Provisioned {
        return Ok(s);
    }
    Err(ApiError::new(
        400,
        "ValidationException",
        format!(
            "Stream {} under account {} is in ON_DEMAND capacity mode; this API is only supported for PROVISIONED streams.",
            s.name, reg.cfg.account_id
        ),
    )
    .into())
}

pub(super) fn split_shard<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: SplitShardIn = parse(body)?;
    let key_s = validate::required(req.new_starting_hash_key.as_deref(), &"newStartingHashKey")?;
    let key = parse_explicit_hash_key(key_s).map_err(|_| {
        validate::fail(
            Some(&key_s),
            &"newStartingHashKey",
            Rule::Pattern(HASH_KEY_PATTERN),
        )
    })?;
    let stream = provisioned(reg, req.stream.resolve(reg)?)?;
    let index = shard_arg(&stream, reg, req.shard_to_split.as_deref(), "shardToSplit")?;
    stage_reshard(
        reg,
        &stream,
        move |st| st.check_split(index, key),
        move |st| st.split(index, key),
    )
}

/// Stages a split or merge: checked once the gate lets it through, applied when the
/// stream's `UPDATING` time ends.
fn stage_reshard<'a, T>(
    reg: &'a Registry,
    stream: &Arc<Stream>,
    check: impl FnOnce(&StreamState) -> Result<T, ReshardError> + Send + 'a,
    apply: impl FnOnce(&mut StreamState) -> Result<(), ReshardError> + Send + 'static,
) -> Step<'a> {
    let s = stream.clone();
    Ok(Staged::on(stream, move || {
        let checked = check(&s.lock());
        checked.map_err(|e| reshard_error(reg, &s, e))?;
        update(reg, &s, move |s| {
            // Checked above; a change in between (only the in-process handle can make
            // one) leaves the stream as it is.
            let _ = apply(&mut s.lock());
        })?;
        ok(&json!({}))
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MergeShardsIn {
    #[serde(flatten)]
    stream: StreamRef,
    shard_to_merge: Option<String>,
    adjacent_shard_to_merge: Option<String>,
}

pub(super) fn merge_shards<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: MergeShardsIn = parse(body)?;
    let mut checks = Checks::default();
    checks.present(&req.shard_to_merge, &"shardToMerge");
    checks.present(&req.adjacent_shard_to_merge, &"adjacentShardToMerge");
    checks.done()?;
    let stream = provisioned(reg, req.stream.resolve(reg)?)?;
    let a = shard_arg(&stream, reg, req.shard_to_merge.as_deref(), "shardToMerge")?;
    let b = shard_arg(
        &stream,
        reg,
        req.adjacent_shard_to_merge.as_deref(),
        "adjacentShardToMerge",
    )?;
    stage_reshard(
        reg,
        &stream,
        move |st| st.check_merge(a, b),
        move |st| st.merge(a, b),
    )
}
