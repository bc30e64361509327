//! PutRecords and PutRecord. Each record is first checked against the API model (data
//! present, base64 and at most 10 MiB; partition key 1-256 characters when given;
//! ExplicitHashKey pattern), then, once the stream is known and writable (`ACTIVE` or
//! `UPDATING`), against the stream: ExplicitHashKey range, partition key required under
//! `USER_PARTITION_KEY`, the stream's own record size, and the 10 MiB request limit. The
//! stream then places each record (by hash key, or on a pseudo-random open shard under `AUTO`), assigns
//! sequence numbers and applies the per-shard budgets record by record.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::validate::{self, MemberPath, Rule, HASH_KEY_PATTERN};
use super::{ok, parse, resolve, ApiError, Staged, Step, B64};
use crate::config::RecordDistribution;
use crate::hash::{parse_explicit_hash_key, partition_key_hash, HashKeyError};
use crate::state::{
    sequence_number, shard_id, PutEntry, PutResult, Registry, Stream, StreamStatus,
};

/// Largest record the API model allows on any stream (10 MiB); each stream's own
/// `MaxRecordSizeInKiB` is checked once the stream is known.
const MODEL_MAX_RECORD_BYTES: usize = 10 * 1_048_576;
const MAX_PUT_RECORDS: usize = 500;
const MAX_PARTITION_KEY_CHARS: usize = 256;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsIn<'a> {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(borrow)]
    records: Option<Vec<RecordIn<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordIn<'a> {
    /// Base64, borrowed from the request body unless it holds an escape.
    #[serde(borrow)]
    data: Option<Text<'a>>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
    #[serde(rename = "StreamName")]
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

/// A string borrowed from the request body where it can be. (`#[serde(borrow)]` borrows a
/// `Cow<str>` field only when the field is exactly that type: in an `Option` it is always
/// copied.)
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

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

/// One record after the model's checks, before its stream's.
struct Decoded {
    index: Option<usize>,
    /// The data's length, and the data itself where the stream keeps records.
    data_len: usize,
    data: Vec<u8>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
    /// The ExplicitHashKey's value or its range error, which AWS reports only once the
    /// stream is known.
    hash_key: Option<Result<u128, ApiError>>,
}

fn member(index: Option<usize>, field: &'static str) -> MemberPath {
    MemberPath { index, field }
}

/// The model's length error for a blob, shown the way AWS (Java) shows a ByteBuffer.
fn data_too_long(len: usize, index: Option<usize>, max: usize) -> ApiError {
    let shown = format!("java.nio.HeapByteBuffer[pos=0 lim={len} cap={len}]");
    validate::fail(
        Some(&shown),
        &member(index, "data"),
        Rule::LengthAtMost(max),
    )
}

/// Decodes base64 as AWS does, with its message for a length that is no multiple of 4, into
/// `out` (cleared first); returns the decoded length.
fn decode_blob(b64: &str, out: &mut Vec<u8>) -> Result<usize, ApiError> {
    let why = if !b64.len().is_multiple_of(4) {
        format!(
            "Base64 encoded length is expected a multiple of 4 bytes but found: {}",
            b64.len()
        )
    } else {
        out.clear();
        match B64.decode_vec(b64.as_bytes(), out) {
            Ok(()) => return Ok(out.len()),
            Err(e) => e.to_string(),
        }
    };
    Err(ApiError::serialization(format!(
        "'{b64}' can not be converted to a Blob: {why}"
    )))
}

/// Checks one record against the API model; `index` is its 0-based position in
/// PutRecords (`None` for PutRecord), used only in the member path of a message. The data
/// is kept only if `keep` (the simulator stores records); otherwise it is decoded into
/// `scratch`, decoding space reused across a request's records.
fn decode_record(
    r: RecordIn,
    index: Option<usize>,
    keep: bool,
    scratch: &mut Vec<u8>,
) -> Result<Decoded, ApiError> {
    let mut data = Vec::new();
    let data_len = decode_blob(
        &validate::required(r.data, &member(index, "data"))?.0,
        if keep { &mut data } else { scratch },
    )?;
    if data_len > MODEL_MAX_RECORD_BYTES {
        return Err(data_too_long(data_len, index, MODEL_MAX_RECORD_BYTES));
    }
    if let Some(pk) = &r.partition_key {
        let chars = if pk.is_ascii() {
            pk.len()
        } else {
            pk.chars().count()
        };
        let at = member(index, "partitionKey");
        validate::length_in(pk, chars, &at, 1, MAX_PARTITION_KEY_CHARS)?;
    }
    let hash_key = match &r.explicit_hash_key {
        None => None,
        Some(k) => Some(match parse_explicit_hash_key(k) {
            Ok(h) => Ok(h),
            Err(HashKeyError::NotANumber) => {
                let at = member(index, "explicitHashKey");
                return Err(validate::fail(Some(k), &at, Rule::Pattern(HASH_KEY_PATTERN)));
            }
            Err(HashKeyError::OutOfRange) => Err(ApiError::invalid(format!(
                "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {k}"
            ))),
        }),
    };
    Ok(Decoded {
        index,
        data_len,
        data,
        partition_key: r.partition_key,
        explicit_hash_key: r.explicit_hash_key,
        hash_key,
    })
}

/// A stream takes writes while `ACTIVE` or `UPDATING`; otherwise AWS answers as if it
/// did not exist.
fn writable(reg: &Registry, stream: &Stream) -> Result<(), ApiError> {
    match stream.status() {
        StreamStatus::Active | StreamStatus::Updating => Ok(()),
        _ => Err(ApiError::not_found(format!(
            "Stream {} under account {} not found.",
            stream.name, reg.cfg.account_id
        ))),
    }
}

/// The stream's checks on decoded records (ExplicitHashKey range errors first, then per
/// record its partition key and size) and the entries to append with their total size.
fn admit(stream: &Stream, records: Vec<Decoded>) -> Result<(Vec<PutEntry>, u64), ApiError> {
    let settings = stream.settings();
    let auto = settings.distribution == RecordDistribution::Auto;
    if !auto {
        let range_error = records
            .iter()
            .find_map(|d| d.hash_key.as_ref()?.as_ref().err());
        if let Some(e) = range_error {
            return Err(e.clone());
        }
    }
    let max = settings.max_record_size_kib as usize * 1024;
    let mut total = 0u64;
    let mut entries = Vec::with_capacity(records.len());
    for d in records {
        let (partition_key, hash) = if auto {
            (d.partition_key.unwrap_or_default(), None)
        } else {
            let at = member(d.index, "partitionKey");
            let pk = validate::required(d.partition_key, &at)?;
            let hash = match d.hash_key {
                Some(h) => h?,
                None => partition_key_hash(&pk),
            };
            (pk, Some(hash))
        };
        if d.data_len > max {
            return Err(data_too_long(d.data_len, d.index, max));
        }
        total += (d.data_len + partition_key.len()) as u64;
        entries.push(PutEntry {
            hash,
            partition_key,
            explicit_hash_key: d.explicit_hash_key,
            data_len: d.data_len,
            data: d.data,
            fail: false,
        });
    }
    Ok((entries, total))
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
    let keep = reg.cfg.store_records;
    let mut scratch = Vec::new();
    let decoded = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| decode_record(r, Some(i), keep, &mut scratch))
        .collect::<Result<Vec<_>, _>>()?;
    let stream = resolve(reg, req.stream_name.as_deref(), req.stream_arn.as_deref())?;
    writable(reg, &stream)?;
    let (mut entries, total) = admit(&stream, decoded)?;
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
    let decoded = decode_record(req, None, reg.cfg.store_records, &mut Vec::new())?;
    let stream = resolve(reg, name.as_deref(), arn.as_deref())?;
    writable(reg, &stream)?;
    let (entries, _) = admit(&stream, vec![decoded])?;
    let s = stream.clone();
    Ok(Staged::write(&stream, move || {
        let mut entries = entries;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_borrowed_from_the_body_unless_it_holds_an_escape() {
        let body = br#"{"StreamName":"s","Records":[{"Data":"AA+A","PartitionKey":"k"},
            {"Data":"AA\/A","PartitionKey":"k"}]}"#;
        let req: PutRecordsIn = serde_json::from_slice(body).expect("parsed");
        let data: Vec<&Cow<'_, str>> = req
            .records
            .iter()
            .flatten()
            .map(|r| &r.data.as_ref().expect("data").0)
            .collect();
        assert!(matches!(data[0], Cow::Borrowed("AA+A")), "{:?}", data[0]);
        assert!(
            matches!(data[1], Cow::Owned(s) if s == "AA/A"),
            "{:?}",
            data[1]
        );
    }
}
