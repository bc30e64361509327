//! PutRecords and PutRecord: each record is validated against the API model (data present
//! and base64, partition key length in characters, ExplicitHashKey pattern and range),
//! then against its stream (record size limit, request size limit); the stream assigns
//! shards and sequence numbers and applies the per-shard budgets record by record.
//! Validation order follows AWS: model violations before the stream lookup, an
//! ExplicitHashKey out of range after it.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::validate::{self, MemberPath, Rule, HASH_KEY_PATTERN};
use super::{ok, parse, resolve, ApiError, Staged, Step, B64};
use crate::hash::{parse_explicit_hash_key, partition_key_hash, HashKeyError};
use crate::state::{sequence_number, shard_id, PutEntry, PutResult, Registry, Stream};

const API_MAX_RECORD_BYTES: usize = 1_048_576;
const MAX_PUT_RECORDS: usize = 500;
const MAX_PARTITION_KEY_CHARS: usize = 256;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    records: Option<Vec<RecordIn>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordIn {
    data: Option<String>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
    #[serde(rename = "StreamName")]
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsOut {
    failed_record_count: u32,
    records: Vec<PutRecordsEntryOut>,
    encryption_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsEntryOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shard_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<String>,
}

/// Validates and decodes one record; `index` is its 0-based position in PutRecords (`None`
/// for PutRecord), used only to build the member path of an error message.
fn decode_record(
    reg: &Registry,
    r: RecordIn,
    index: Option<usize>,
) -> Result<(PutEntry, usize), ApiError> {
    let at = |field| MemberPath { index, field };
    let data = validate::required(r.data, &at("data"))?;
    let data = B64.decode(data.as_bytes()).map_err(|e| {
        ApiError::serialization(format!("'{data}' can not be converted to a Blob: {e}"))
    })?;
    let api_max = API_MAX_RECORD_BYTES.max(reg.cfg.max_record_size_kib as usize * 1024);
    if data.len() > api_max {
        let n = data.len();
        let shown = format!("java.nio.HeapByteBuffer[pos=0 lim={n} cap={n}]");
        return Err(validate::fail(
            Some(&shown),
            &at("data"),
            Rule::LengthAtMost(api_max),
        ));
    }
    let pk = validate::required(r.partition_key, &at("partitionKey"))?;
    let chars = if pk.is_ascii() {
        pk.len()
    } else {
        pk.chars().count()
    };
    validate::length_in(&pk, chars, &at("partitionKey"), 1, MAX_PARTITION_KEY_CHARS)?;
    let hash = match &r.explicit_hash_key {
        None => partition_key_hash(&pk),
        Some(k) => match parse_explicit_hash_key(k) {
            Ok(h) => h,
            Err(HashKeyError::NotANumber) => {
                return Err(validate::fail(
                    Some(k),
                    &at("explicitHashKey"),
                    Rule::Pattern(HASH_KEY_PATTERN),
                ))
            }
            Err(HashKeyError::OutOfRange) => return Err(ApiError::invalid(format!(
                "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {k}"
            ))),
        },
    };
    let size = data.len() + pk.len();
    Ok((
        PutEntry {
            hash,
            partition_key: pk,
            explicit_hash_key: r.explicit_hash_key,
            data,
            fail: false,
        },
        size,
    ))
}

fn check_record_size(stream: &Stream, e: &PutEntry) -> Result<(), ApiError> {
    let max = stream.max_record_size_kib as usize * 1024;
    if e.data.len() > max {
        return Err(ApiError::invalid(format!(
            "Record data size {} exceeds the stream's max record size of {max} bytes",
            e.data.len()
        )));
    }
    Ok(())
}

fn throttle_message(reg: &Registry, stream: &Stream, shard: u32) -> String {
    format!(
        "Rate exceeded for shard {} in stream {} under account {}.",
        shard_id(shard),
        stream.name,
        reg.cfg.account_id
    )
}

/// Marks each entry as an injected `InternalFailure` with the stream's current rate.
fn inject_failures(stream: &Stream, entries: &mut [PutEntry]) {
    let rate = stream.faults().internal_failure_rate;
    if rate > 0.0 {
        let mut rng = rand::rng();
        for e in entries {
            e.fail = rng.random::<f64>() < rate;
        }
    }
}

pub(super) fn put_records<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: PutRecordsIn = parse(body)?;
    let records = validate::required(req.records, &"records")?;
    let shown = format!("[{} records]", records.len());
    let shown: &dyn std::fmt::Display = if records.is_empty() { &"[]" } else { &shown };
    validate::length_in(shown, records.len(), &"records", 1, MAX_PUT_RECORDS)?;
    let mut entries = Vec::with_capacity(records.len());
    let mut total = 0u64;
    let mut deferred: Option<ApiError> = None;
    for (i, r) in records.into_iter().enumerate() {
        match decode_record(reg, r, Some(i)) {
            Ok((e, size)) => {
                total += size as u64;
                entries.push(e);
            }
            // Range errors of ExplicitHashKey come after the stream check, like AWS.
            Err(e) if e.kind == "InvalidArgumentException" => {
                deferred.get_or_insert(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = resolve(reg, req.stream_name.as_deref(), req.stream_arn.as_deref())?;
    if let Some(e) = deferred {
        return Err(e.into());
    }
    for e in &entries {
        check_record_size(&stream, e)?;
    }
    if total > reg.cfg.request_limit_bytes {
        return Err(ApiError::invalid(format!(
            "Records size exceeds {} MB limit",
            reg.cfg.request_limit_bytes / 1_048_576
        ))
        .into());
    }
    let s = stream.clone();
    Ok(Staged::write(&stream, move || {
        inject_failures(&s, &mut entries);
        let results = s.lock().put(entries, Instant::now());
        let mut failed = 0;
        let out: Vec<PutRecordsEntryOut> = results
            .into_iter()
            .map(|r| {
                let (sequence_number, shard_id, error_code, error_message) = match r {
                    PutResult::Stored { shard, seq } => (
                        Some(sequence_number(seq)),
                        Some(shard_id(shard)),
                        None,
                        None,
                    ),
                    PutResult::Throttled { shard } => (
                        None,
                        None,
                        Some("ProvisionedThroughputExceededException"),
                        Some(throttle_message(reg, &s, shard)),
                    ),
                    PutResult::Failed => (
                        None,
                        None,
                        Some("InternalFailure"),
                        Some("Internal service failure.".into()),
                    ),
                };
                failed += u32::from(error_code.is_some());
                PutRecordsEntryOut {
                    sequence_number,
                    shard_id,
                    error_code,
                    error_message,
                }
            })
            .collect();
        ok(&PutRecordsOut {
            failed_record_count: failed,
            records: out,
            encryption_type: "NONE",
        })
    }))
}

pub(super) fn put_record<'a>(reg: &'a Arc<Registry>, body: &'a [u8]) -> Step<'a> {
    let req: RecordIn = parse(body)?;
    let (name, arn) = (req.stream_name.clone(), req.stream_arn.clone());
    let (entry, size) = match decode_record(reg, req, None) {
        Ok(x) => x,
        Err(e) if e.kind == "InvalidArgumentException" => {
            resolve(reg, name.as_deref(), arn.as_deref())?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let stream = resolve(reg, name.as_deref(), arn.as_deref())?;
    check_record_size(&stream, &entry)?;
    if size as u64 > reg.cfg.request_limit_bytes {
        return Err(ApiError::invalid("Record size exceeds the request limit").into());
    }
    let s = stream.clone();
    Ok(Staged::write(&stream, move || {
        let mut entries = vec![entry];
        inject_failures(&s, &mut entries);
        let result = s.lock().put(entries, Instant::now());
        match result[0] {
            PutResult::Stored { shard, seq } => ok(&json!({
                "ShardId": shard_id(shard),
                "SequenceNumber": sequence_number(seq),
                "EncryptionType": "NONE",
            })),
            PutResult::Throttled { shard } => Err(ApiError::new(
                400,
                "ProvisionedThroughputExceededException",
                throttle_message(reg, &s, shard),
            )
            .into()),
            PutResult::Failed => Err(ApiError::internal_failure().into()),
        }
    }))
}
