//! Reading: GetShardIterator and GetRecords. An iterator is opaque base64 of
//! `shard|position|stream`; GetRecords returns up to `Limit` records and at most 10 MiB
//! (always at least one record), then `NextShardIterator`, or `ChildShards` once a closed
//! shard is read to its end.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::validate::{self, Rule};
use super::{
    epoch_secs, epoch_time, ok, parse, resolve, ApiError, Reply, Staged, Step, StreamRef, B64,
};
use crate::state::{
    parse_sequence_number, parse_shard_id, sequence_number, shard_id, Registry, StreamStatus,
};

/// Most data bytes one GetRecords call returns.
const MAX_GET_BYTES: usize = 10 * 1_048_576;

const ITERATOR_TYPES: &[&str] = &[
    "AFTER_SEQUENCE_NUMBER",
    "LATEST",
    "AT_TIMESTAMP",
    "AT_SEQUENCE_NUMBER",
    "TRIM_HORIZON",
];
/// The StartingSequenceNumber pattern of the API model.
const SEQUENCE_NUMBER_PATTERN: &str = "0|([1-9]\\d{0,128})";

/// Whether `s` matches [`SEQUENCE_NUMBER_PATTERN`].
fn is_sequence_number(s: &str) -> bool {
    s == "0"
        || (matches!(s.as_bytes().first(), Some(b'1'..=b'9'))
            && s.len() <= 129
            && s.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetShardIteratorIn {
    #[serde(flatten)]
    stream: StreamRef,
    shard_id: Option<String>,
    shard_iterator_type: Option<String>,
    starting_sequence_number: Option<String>,
    timestamp: Option<f64>,
}

fn encode_iterator(stream: &str, shard: u32, pos: usize) -> String {
    B64.encode(format!("{shard}|{pos}|{stream}"))
}

fn decode_iterator(it: &str) -> Option<(String, u32, usize)> {
    let raw = String::from_utf8(B64.decode(it.as_bytes()).ok()?).ok()?;
    let mut parts = raw.splitn(3, '|');
    let shard = parts.next()?.parse().ok()?;
    let pos = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_string(), shard, pos))
}

pub(super) fn get_shard_iterator<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: GetShardIteratorIn = parse(body)?;
    let id = validate::required(req.shard_id, &"shardId")?;
    let ty = validate::one_of(
        req.shard_iterator_type.as_deref(),
        &"shardIteratorType",
        ITERATOR_TYPES,
    )?
    .to_string();
    if let Some(seq) = req.starting_sequence_number.as_deref() {
        if !is_sequence_number(seq) {
            let rule = Rule::Pattern(SEQUENCE_NUMBER_PATTERN);
            return Err(validate::fail(Some(&seq), &"startingSequenceNumber", rule).into());
        }
    }
    let stream = req.stream.resolve(reg)?;
    let by_seq = ty.ends_with("SEQUENCE_NUMBER");
    if by_seq != req.starting_sequence_number.is_some() {
        return Err(ApiError::invalid(format!(
            "Must either specify (1) AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER and StartingSequenceNumber or (2) TRIM_HORIZON or LATEST and no StartingSequenceNumber. Request specified {ty} and {}StartingSequenceNumber.",
            if by_seq { "no " } else { "also a " }
        )).into());
    }
    let not_found = {
        let message = format!(
            "Shard {id} in stream {} under account {} does not exist",
            stream.name, reg.cfg.account_id
        );
        move || -> Reply { ApiError::not_found(message).into() }
    };
    let index = parse_shard_id(&id).ok_or_else(not_found.clone())?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        let pos = {
            let st = s.lock();
            let creating = s.status() == StreamStatus::Creating;
            let shard = st
                .shard(index)
                .filter(|_| !creating)
                .ok_or_else(not_found)?;
            let recs = &shard.records;
            match ty.as_str() {
                "TRIM_HORIZON" => 0,
                "LATEST" => recs.len(),
                "AT_TIMESTAMP" => {
                    let t = req.timestamp.ok_or_else(|| -> Reply {
                        ApiError::invalid("Must specify timestampInMillis parameter for iterator of type AT_TIMESTAMP. Current request has no timestamp parameter.").into()
                    })?;
                    let t = epoch_time(t)?;
                    recs.partition_point(|r| r.arrival < t)
                }
                _ => {
                    let seq_s = req.starting_sequence_number.as_deref().unwrap_or("");
                    let seq = parse_sequence_number(seq_s).ok_or_else(|| -> Reply {
                        ApiError::invalid(format!(
                            "StartingSequenceNumber {seq_s} used in GetShardIterator on shard {id} in stream {} under account {} is invalid.",
                            s.name, reg.cfg.account_id
                        ))
                        .into()
                    })?;
                    if ty == "AT_SEQUENCE_NUMBER" {
                        recs.partition_point(|r| r.seq < seq)
                    } else {
                        recs.partition_point(|r| r.seq <= seq)
                    }
                }
            }
        };
        ok(&json!({"ShardIterator": encode_iterator(&s.name, index, pos)}))
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecordsIn {
    shard_iterator: Option<String>,
    limit: Option<i64>,
}

pub(super) fn get_records<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: GetRecordsIn = parse(body)?;
    let it = validate::required(req.shard_iterator.as_deref(), &"shardIterator")?;
    let limit = validate::int_or(req.limit, 10_000, &"limit", 1, 10_000)? as usize;
    let invalid = || -> Reply { ApiError::invalid("Invalid ShardIterator.").into() };
    let (name, index, pos) = decode_iterator(it).ok_or_else(invalid)?;
    let stream = resolve(reg, Some(&name), None)?;
    let s = stream.clone();
    Ok(Staged::on(&stream, move || {
        // Copy out under the lock; encode after releasing it.
        let (batch, next, children, behind) = {
            let st = s.lock();
            let shard = st.shard(index).ok_or_else(invalid)?;
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut p = pos.min(shard.records.len());
            while p < shard.records.len() && batch.len() < limit {
                let r = &shard.records[p];
                if !batch.is_empty() && bytes + r.data.len() > MAX_GET_BYTES {
                    break;
                }
                bytes += r.data.len();
                batch.push((r.seq, r.arrival, r.partition_key.clone(), r.data.clone()));
                p += 1;
            }
            let done = !shard.is_open() && p >= shard.records.len();
            let children: Option<Vec<Value>> = done.then(|| {
                st.children(index)
                    .into_iter()
                    .map(|c| {
                        let mut parents = vec![shard_id(c.parent.unwrap_or(index))];
                        parents.extend(c.adjacent_parent.map(shard_id));
                        json!({
                            "ShardId": shard_id(c.index),
                            "ParentShards": parents,
                            "HashKeyRange": {
                                "StartingHashKey": c.start.to_string(),
                                "EndingHashKey": c.end.to_string(),
                            },
                        })
                    })
                    .collect()
            });
            let behind = shard
                .records
                .get(p)
                .map(|r| {
                    SystemTime::now()
                        .duration_since(r.arrival)
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            (batch, p, children, behind)
        };
        let records: Vec<Value> = batch
            .into_iter()
            .map(|(seq, arrival, pk, data)| {
                json!({
                    "SequenceNumber": sequence_number(seq),
                    "ApproximateArrivalTimestamp": epoch_secs(arrival),
                    "Data": B64.encode(&data),
                    "PartitionKey": pk,
                })
            })
            .collect();
        let mut v = json!({
            "Records": records,
            "MillisBehindLatest": behind.as_millis() as u64,
        });
        match children {
            Some(children) => v["ChildShards"] = json!(children),
            None => v["NextShardIterator"] = json!(encode_iterator(&s.name, index, next)),
        }
        ok(&v)
    }))
}
