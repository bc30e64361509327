//! The Kinesis awsJson1.1 API: one function per action, each parsing its request, validating
//! it like AWS, passing the stream's fault gate and touching the stream state.
//!
//! ```text
//! body ─▶ serde (no lock) ─▶ validate ─▶ resolve stream ─▶ fault gate ─▶ lock: apply ─▶ JSON
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::hash::{parse_explicit_hash_key, partition_key_hash, HashKeyError};
use crate::state::{
    parse_sequence_number, parse_shard_id, sequence_number, shard_id, AtomicCounters, PutEntry,
    PutResult, Registry, Shard, Stream,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const API_MAX_RECORD_BYTES: usize = 1_048_576;
const MAX_PUT_RECORDS: usize = 500;
const MAX_PARTITION_KEY_CHARS: usize = 256;

/// An API error: HTTP status, `__type` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: Option<String>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: Some(message.into()),
        }
    }
    fn validation(msg: impl AsRef<str>) -> Self {
        Self::new(
            400,
            "ValidationException",
            format!("1 validation error detected: {}", msg.as_ref()),
        )
    }
    fn invalid(msg: impl Into<String>) -> Self {
        Self::new(400, "InvalidArgumentException", msg)
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self::new(400, "ResourceNotFoundException", msg)
    }
    fn serialization(msg: impl Into<String>) -> Self {
        Self::new(400, "SerializationException", msg)
    }
    pub fn unknown_operation() -> Self {
        ApiError {
            status: 400,
            kind: "UnknownOperationException",
            message: None,
        }
    }
    /// JSON body `{"__type": .., "message": ..}`.
    pub fn body(&self) -> Vec<u8> {
        let v = match &self.message {
            Some(m) => json!({"__type": self.kind, "message": m}),
            None => json!({"__type": self.kind}),
        };
        serde_json::to_vec(&v).expect("json")
    }
}

/// What the server should do with a request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// HTTP 200 with this JSON body.
    Ok(Vec<u8>),
    /// An error response.
    Err(ApiError),
    /// Close the connection without a response.
    Drop,
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Err(e)
    }
}

type Res = Result<Reply, Reply>;

fn ok(v: &impl Serialize) -> Res {
    Ok(Reply::Ok(serde_json::to_vec(v).expect("json")))
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    let body = if body.is_empty() { &b"{}"[..] } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::serialization(e.to_string()).into())
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Dispatches one request by action name (the part after `Kinesis_20131202.`).
pub(crate) async fn handle(reg: &Arc<Registry>, action: &str, body: &[u8]) -> Reply {
    let res = match action {
        "PutRecords" => put_records(reg, body).await,
        "PutRecord" => put_record(reg, body).await,
        "CreateStream" => create_stream(reg, body),
        "DeleteStream" => delete_stream(reg, body).await,
        "DescribeStreamSummary" => describe_stream_summary(reg, body).await,
        "DescribeStream" => describe_stream(reg, body).await,
        "ListStreams" => list_streams(reg),
        "ListShards" => list_shards(reg, body).await,
        "GetShardIterator" => get_shard_iterator(reg, body).await,
        "GetRecords" => get_records(reg, body).await,
        "UpdateShardCount" => update_shard_count(reg, body).await,
        "SplitShard" => split_shard(reg, body).await,
        "MergeShards" => merge_shards(reg, body).await,
        _ => Err(ApiError::unknown_operation().into()),
    };
    res.unwrap_or_else(|r| r)
}

// ---------------------------------------------------------------------------------------
// Stream resolution and the fault gate

fn resolve(reg: &Registry, name: Option<&str>, arn: Option<&str>) -> Result<Arc<Stream>, Reply> {
    let name = match (name, arn) {
        (Some(""), _) => {
            return Err(ApiError::validation(
                "Value '' at 'streamName' failed to satisfy constraint: Member must have length greater than or equal to 1",
            )
            .into())
        }
        (Some(n), _) => n,
        (None, Some(arn)) => match arn.split_once(":stream/") {
            Some((_, n)) if reg.arn(n) == arn => n,
            _ => {
                return Err(ApiError::not_found(format!("Stream arn {arn} not found.")).into())
            }
        },
        (None, None) => {
            return Err(ApiError::validation(
                "Value null at 'streamName' failed to satisfy constraint: Member must not be null",
            )
            .into())
        }
    };
    reg.get(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "Stream {name} under account {} not found.",
            reg.cfg.account_id
        ))
        .into()
    })
}

/// The outcome of the fault gate for a request that may proceed.
struct Gate {
    /// Drop the connection after applying the request.
    drop_after: bool,
}

/// Applies the stream's faults: unreachable, latency, HTTP 500/503, dropped connections.
async fn gate(reg: &Registry, stream: &Stream, is_write: bool) -> Result<Gate, Reply> {
    let c = &stream.counters;
    AtomicCounters::bump(&c.requests);
    if is_write {
        AtomicCounters::bump(&c.put_requests);
    }
    let f = stream.faults();
    if f.unreachable_until.is_some_and(|u| Instant::now() < u) || reg_unreachable(reg) {
        AtomicCounters::bump(&c.unreachable);
        return Err(Reply::Drop);
    }
    enum Decision {
        Proceed(bool),
        Http500,
        Http503,
        Drop,
    }
    let (delay, decision) = {
        let mut rng = rand::rng();
        let mut delay = f.latency;
        if !f.latency_jitter.is_zero() {
            delay += f.latency_jitter.mul_f64(rng.random::<f64>());
        }
        if f.latency_spike_rate > 0.0 && rng.random::<f64>() < f.latency_spike_rate {
            delay += f.latency_spike;
        }
        let decision = if f.http_500_rate > 0.0 && rng.random::<f64>() < f.http_500_rate {
            Decision::Http500
        } else if f.http_503_rate > 0.0 && rng.random::<f64>() < f.http_503_rate {
            Decision::Http503
        } else if f.drop_connection_rate > 0.0 && rng.random::<f64>() < f.drop_connection_rate {
            if is_write && rng.random::<bool>() {
                Decision::Proceed(true)
            } else {
                Decision::Drop
            }
        } else {
            Decision::Proceed(false)
        };
        (delay, decision)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match decision {
        Decision::Proceed(drop_after) => {
            if drop_after {
                AtomicCounters::bump(&c.dropped);
            }
            Ok(Gate { drop_after })
        }
        Decision::Http500 => {
            AtomicCounters::bump(&c.http_500);
            Err(ApiError::new(500, "InternalFailure", "Internal service failure.").into())
        }
        Decision::Http503 => {
            AtomicCounters::bump(&c.http_503);
            Err(ApiError::new(503, "ServiceUnavailable", "Service is unavailable.").into())
        }
        Decision::Drop => {
            AtomicCounters::bump(&c.dropped);
            Err(Reply::Drop)
        }
    }
}

fn reg_unreachable(reg: &Registry) -> bool {
    reg.unreachable_until
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_some_and(|u| Instant::now() < u)
}

impl Gate {
    fn finish(self, r: Res) -> Res {
        if self.drop_after {
            Err(Reply::Drop)
        } else {
            r
        }
    }
}

// ---------------------------------------------------------------------------------------
// PutRecords / PutRecord

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
) -> Result<(PutEntry, usize), Reply> {
    let at = MemberPath(index);
    let data = r.data.ok_or_else(|| {
        ApiError::validation(format!(
            "Value null at '{at}data' failed to satisfy constraint: Member must not be null"
        ))
    })?;
    let data = B64.decode(data.as_bytes()).map_err(|e| {
        ApiError::serialization(format!("'{data}' can not be converted to a Blob: {e}"))
    })?;
    let api_max = API_MAX_RECORD_BYTES.max(reg.cfg.max_record_size_kib as usize * 1024);
    if data.len() > api_max {
        let n = data.len();
        return Err(ApiError::validation(format!(
            "Value 'java.nio.HeapByteBuffer[pos=0 lim={n} cap={n}]' at '{at}data' failed to satisfy constraint: Member must have length less than or equal to {api_max}"
        )).into());
    }
    let pk = r.partition_key.ok_or_else(|| {
        ApiError::validation(format!(
            "Value null at '{at}partitionKey' failed to satisfy constraint: Member must not be null"
        ))
    })?;
    let chars = if pk.is_ascii() {
        pk.len()
    } else {
        pk.chars().count()
    };
    if chars == 0 {
        return Err(ApiError::validation(format!(
            "Value '' at '{at}partitionKey' failed to satisfy constraint: Member must have length greater than or equal to 1"
        )).into());
    }
    if chars > MAX_PARTITION_KEY_CHARS {
        return Err(ApiError::validation(format!(
            "Value '{pk}' at '{at}partitionKey' failed to satisfy constraint: Member must have length less than or equal to {MAX_PARTITION_KEY_CHARS}"
        )).into());
    }
    let hash = match &r.explicit_hash_key {
        None => partition_key_hash(&pk),
        Some(k) => match parse_explicit_hash_key(k) {
            Ok(h) => h,
            Err(HashKeyError::NotANumber) => return Err(ApiError::validation(format!(
                "Value '{k}' at '{at}explicitHashKey' failed to satisfy constraint: Member must satisfy regular expression pattern: 0|([1-9]\\d{{0,38}})"
            )).into()),
            Err(HashKeyError::OutOfRange) => return Err(ApiError::invalid(format!(
                "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {k}"
            )).into()),
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

/// Lazily formatted member path prefix: `records.N.member.` or nothing.
#[derive(Clone, Copy)]
struct MemberPath(Option<usize>);

impl std::fmt::Display for MemberPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(i) => write!(f, "records.{}.member.", i + 1),
            None => Ok(()),
        }
    }
}

fn check_record_size(stream: &Stream, e: &PutEntry) -> Result<(), Reply> {
    let max = stream.max_record_size_kib as usize * 1024;
    if e.data.len() > max {
        return Err(ApiError::invalid(format!(
            "Record data size {} exceeds the stream's max record size of {max} bytes",
            e.data.len()
        ))
        .into());
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

async fn put_records(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: PutRecordsIn = parse(body)?;
    let records = req.records.ok_or_else(|| {
        ApiError::validation(
            "Value null at 'records' failed to satisfy constraint: Member must not be null",
        )
    })?;
    if records.is_empty() {
        return Err(ApiError::validation(
            "Value '[]' at 'records' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ).into());
    }
    if records.len() > MAX_PUT_RECORDS {
        return Err(ApiError::validation(format!(
            "Value '[{} records]' at 'records' failed to satisfy constraint: Member must have length less than or equal to {MAX_PUT_RECORDS}",
            records.len()
        )).into());
    }
    let n = records.len();
    let mut entries = Vec::with_capacity(n);
    let mut total = 0u64;
    let mut deferred: Option<Reply> = None;
    for (i, r) in records.into_iter().enumerate() {
        match decode_record(reg, r, Some(i)) {
            Ok((e, size)) => {
                total += size as u64;
                entries.push(e);
            }
            // Range errors of ExplicitHashKey come after the stream check, like AWS.
            Err(Reply::Err(e)) if e.kind == "InvalidArgumentException" => {
                deferred.get_or_insert(Reply::Err(e));
            }
            Err(e) => return Err(e),
        }
    }
    let stream = resolve(reg, req.stream_name.as_deref(), req.stream_arn.as_deref())?;
    if let Some(e) = deferred {
        return Err(e);
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
    let gate = gate(reg, &stream, true).await?;
    let rate = stream.faults().internal_failure_rate;
    if rate > 0.0 {
        let mut rng = rand::rng();
        for e in &mut entries {
            e.fail = rng.random::<f64>() < rate;
        }
    }
    let results = stream.lock().put(entries, Instant::now());
    let mut failed = 0;
    let out: Vec<PutRecordsEntryOut> = results
        .into_iter()
        .map(|r| match r {
            PutResult::Stored { shard, seq } => PutRecordsEntryOut {
                sequence_number: Some(sequence_number(seq)),
                shard_id: Some(shard_id(shard)),
                error_code: None,
                error_message: None,
            },
            PutResult::Throttled { shard } => {
                failed += 1;
                PutRecordsEntryOut {
                    sequence_number: None,
                    shard_id: None,
                    error_code: Some("ProvisionedThroughputExceededException"),
                    error_message: Some(throttle_message(reg, &stream, shard)),
                }
            }
            PutResult::Failed => {
                failed += 1;
                PutRecordsEntryOut {
                    sequence_number: None,
                    shard_id: None,
                    error_code: Some("InternalFailure"),
                    error_message: Some("Internal service failure.".into()),
                }
            }
        })
        .collect();
    gate.finish(ok(&PutRecordsOut {
        failed_record_count: failed,
        records: out,
        encryption_type: "NONE",
    }))
}

async fn put_record(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: RecordIn = parse(body)?;
    let (name, arn) = (req.stream_name.clone(), req.stream_arn.clone());
    let (entry, size) = match decode_record(reg, req, None) {
        Ok(x) => x,
        Err(Reply::Err(e)) if e.kind == "InvalidArgumentException" => {
            resolve(reg, name.as_deref(), arn.as_deref())?;
            return Err(e.into());
        }
        Err(e) => return Err(e),
    };
    let stream = resolve(reg, name.as_deref(), arn.as_deref())?;
    check_record_size(&stream, &entry)?;
    if size as u64 > reg.cfg.request_limit_bytes {
        return Err(ApiError::invalid("Record size exceeds the request limit").into());
    }
    let gate = gate(reg, &stream, true).await?;
    let mut entry = entry;
    let rate = stream.faults().internal_failure_rate;
    entry.fail = rate > 0.0 && rand::rng().random::<f64>() < rate;
    let result = stream.lock().put(vec![entry], Instant::now());
    let r = match result[0] {
        PutResult::Stored { shard, seq } => ok(&json!({
            "ShardId": shard_id(shard),
            "SequenceNumber": sequence_number(seq),
            "EncryptionType": "NONE",
        })),
        PutResult::Throttled { shard } => Err(ApiError::new(
            400,
            "ProvisionedThroughputExceededException",
            throttle_message(reg, &stream, shard),
        )
        .into()),
        PutResult::Failed => {
            Err(ApiError::new(500, "InternalFailure", "Internal service failure.").into())
        }
    };
    gate.finish(r)
}

// ---------------------------------------------------------------------------------------
// Stream management

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct StreamRef {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

impl StreamRef {
    fn resolve(&self, reg: &Registry) -> Result<Arc<Stream>, Reply> {
        resolve(reg, self.stream_name.as_deref(), self.stream_arn.as_deref())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateStreamIn {
    stream_name: Option<String>,
    shard_count: Option<i64>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: Option<i64>,
}

fn create_stream(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: CreateStreamIn = parse(body)?;
    let name = req.stream_name.ok_or_else(|| {
        ApiError::validation(
            "Value null at 'streamName' failed to satisfy constraint: Member must not be null",
        )
    })?;
    if name.is_empty() {
        return Err(ApiError::validation(
            "Value '' at 'streamName' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ).into());
    }
    let shards = req.shard_count.unwrap_or(4);
    if shards < 1 {
        return Err(ApiError::validation(format!(
            "Value '{shards}' at 'shardCount' failed to satisfy constraint: Member must have value greater than or equal to 1"
        )).into());
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
        Some(k) if (1024..=10_240).contains(&k) => Some(k as u32),
        Some(k) => {
            return Err(ApiError::validation(format!(
                "Value '{k}' at 'maxRecordSizeInKiB' failed to satisfy constraint: Member must be between 1024 and 10240"
            ))
            .into())
        }
    };
    let opts = crate::config::StreamOptions {
        shards: shards as u32,
        max_record_size_kib: max_kib,
        limits: None,
    };
    match reg.create(&name, &opts) {
        Ok(_) => ok(&json!({})),
        Err(_) => Err(ApiError::new(
            400,
            "ResourceInUseException",
            format!(
                "Stream {name} under account {} already exists.",
                reg.cfg.account_id
            ),
        )
        .into()),
    }
}

async fn delete_stream(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: StreamRef = parse(body)?;
    let stream = req.resolve(reg)?;
    let gate = gate(reg, &stream, false).await?;
    reg.delete(&stream.name);
    gate.finish(ok(&json!({})))
}

fn stream_mode() -> Value {
    json!({"StreamMode": "PROVISIONED"})
}

async fn describe_stream_summary(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: StreamRef = parse(body)?;
    let stream = req.resolve(reg)?;
    let gate = gate(reg, &stream, false).await?;
    let open = stream.lock().open_count();
    gate.finish(ok(&json!({"StreamDescriptionSummary": {
        "StreamName": stream.name,
        "StreamARN": stream.arn,
        "StreamStatus": "ACTIVE",
        "StreamModeDetails": stream_mode(),
        "RetentionPeriodHours": 24,
        "StreamCreationTimestamp": epoch_secs(stream.created),
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
        "OpenShardCount": open,
        "ConsumerCount": 0,
        "MaxRecordSizeInKiB": stream.max_record_size_kib,
    }})))
}

fn shard_json(s: &Shard) -> Value {
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

async fn describe_stream(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: StreamRef = parse(body)?;
    let stream = req.resolve(reg)?;
    let gate = gate(reg, &stream, false).await?;
    let shards: Vec<Value> = stream.lock().shards.iter().map(shard_json).collect();
    gate.finish(ok(&json!({"StreamDescription": {
        "StreamName": stream.name,
        "StreamARN": stream.arn,
        "StreamStatus": "ACTIVE",
        "StreamModeDetails": stream_mode(),
        "Shards": shards,
        "HasMoreShards": false,
        "RetentionPeriodHours": 24,
        "StreamCreationTimestamp": epoch_secs(stream.created),
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
    }})))
}

fn list_streams(reg: &Arc<Registry>) -> Res {
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
}

// ---------------------------------------------------------------------------------------
// ListShards

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListShardsIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
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

/// Epoch seconds as a `SystemTime`; an error (not a panic) when out of range.
fn epoch_time(t: f64) -> Result<SystemTime, Reply> {
    Duration::try_from_secs_f64(t.max(0.0))
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .ok_or_else(|| ApiError::invalid(format!("Timestamp {t} is out of range.")).into())
}

fn shard_matches(s: &Shard, f: &ShardFilterIn) -> Result<bool, Reply> {
    let ts = |f: &ShardFilterIn| {
        f.timestamp
            .ok_or_else(|| -> Reply {
                ApiError::invalid("Timestamp must be specified for this ShardFilter type").into()
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
                    ApiError::invalid("ShardId must be specified for AFTER_SHARD_ID").into()
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
        other => return Err(ApiError::validation(format!(
            "Value '{other}' at 'shardFilter.type' failed to satisfy constraint: Member must satisfy enum value set: [AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, AT_LATEST, AT_TIMESTAMP, FROM_TIMESTAMP]"
        )).into()),
    })
}

async fn list_shards(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: ListShardsIn = parse(body)?;
    let max = req.max_results.unwrap_or(1000);
    if !(1..=10_000).contains(&max) {
        let bound = if max < 1 {
            "greater than or equal to 1"
        } else {
            "less than or equal to 10000"
        };
        return Err(ApiError::validation(format!(
            "Value '{max}' at 'maxResults' failed to satisfy constraint: Member must have value {bound}"
        ))
        .into());
    }
    let (stream, after, filter) = if let Some(token) = &req.next_token {
        if req.stream_name.is_some() || req.stream_arn.is_some() {
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
        if req.stream_name.is_none() && req.stream_arn.is_none() {
            return Err(
                ApiError::invalid("Either NextToken or StreamName should be provided.").into(),
            );
        }
        let stream = resolve(reg, req.stream_name.as_deref(), req.stream_arn.as_deref())?;
        let after = match &req.exclusive_start_shard_id {
            None => None,
            Some(id) => Some(parse_shard_id(id).ok_or_else(|| -> Reply {
                ApiError::invalid(format!("Invalid ExclusiveStartShardId {id}")).into()
            })?),
        };
        (stream, after, req.shard_filter)
    };
    let gate = gate(reg, &stream, false).await?;
    let max = max as usize;
    let (shards, more, last) = {
        let st = stream.lock();
        let mut out = Vec::new();
        let mut more = false;
        let mut last = 0;
        for s in &st.shards {
            if after.is_some_and(|a| s.index <= a) {
                continue;
            }
            if let Some(f) = &filter {
                if !shard_matches(s, f)? {
                    continue;
                }
            }
            if out.len() == max {
                more = true;
                break;
            }
            last = s.index;
            out.push(shard_json(s));
        }
        (out, more, last)
    };
    let mut v = json!({"Shards": shards});
    if more {
        let token = ListToken {
            stream: stream.name.clone(),
            after: last,
            filter,
        };
        v["NextToken"] = json!(B64.encode(serde_json::to_vec(&token).expect("json")));
    }
    gate.finish(ok(&v))
}

// ---------------------------------------------------------------------------------------
// Shard iterators and GetRecords

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetShardIteratorIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
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

async fn get_shard_iterator(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: GetShardIteratorIn = parse(body)?;
    let id = req.shard_id.as_deref().ok_or_else(|| {
        ApiError::validation(
            "Value null at 'shardId' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let ty = req.shard_iterator_type.as_deref().unwrap_or("null");
    const TYPES: [&str; 5] = [
        "AFTER_SEQUENCE_NUMBER",
        "LATEST",
        "AT_TIMESTAMP",
        "TRIM_HORIZON",
        "AT_SEQUENCE_NUMBER",
    ];
    if !TYPES.contains(&ty) {
        return Err(ApiError::validation(format!(
            "Value '{ty}' at 'shardIteratorType' failed to satisfy constraint: Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, LATEST, AT_TIMESTAMP, TRIM_HORIZON, AT_SEQUENCE_NUMBER]"
        )).into());
    }
    let stream = resolve(reg, req.stream_name.as_deref(), req.stream_arn.as_deref())?;
    let by_seq = ty.ends_with("SEQUENCE_NUMBER");
    if by_seq != req.starting_sequence_number.is_some() {
        return Err(ApiError::invalid(format!(
            "Must either specify (1) AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER and StartingSequenceNumber or (2) TRIM_HORIZON or LATEST and no StartingSequenceNumber. Request specified {ty} and {}StartingSequenceNumber.",
            if by_seq { "no " } else { "also " }
        )).into());
    }
    let not_found = || -> Reply {
        ApiError::not_found(format!(
            "Shard {id} in stream {} under account {} does not exist",
            stream.name, reg.cfg.account_id
        ))
        .into()
    };
    let index = parse_shard_id(id).ok_or_else(not_found)?;
    let gate = gate(reg, &stream, false).await?;
    let pos = {
        let st = stream.lock();
        let shard = st.shard(index).ok_or_else(not_found)?;
        let recs = &shard.records;
        match ty {
            "TRIM_HORIZON" => 0,
            "LATEST" => recs.len(),
            "AT_TIMESTAMP" => {
                let t = req.timestamp.ok_or_else(|| -> Reply {
                    ApiError::invalid("Must specify timestampInMillis parameter for iterator of type AT_TIMESTAMP.").into()
                })?;
                let t = epoch_time(t)?;
                recs.partition_point(|r| r.arrival < t)
            }
            _ => {
                let seq_s = req.starting_sequence_number.as_deref().unwrap_or("");
                let seq = parse_sequence_number(seq_s).ok_or_else(|| -> Reply {
                    ApiError::invalid(format!(
                        "StartingSequenceNumber {seq_s} used in GetShardIterator on shard {id} in stream {} under account {} is invalid.",
                        stream.name, reg.cfg.account_id
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
    gate.finish(ok(
        &json!({"ShardIterator": encode_iterator(&stream.name, index, pos)}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecordsIn {
    shard_iterator: Option<String>,
    limit: Option<i64>,
}

async fn get_records(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: GetRecordsIn = parse(body)?;
    let it = req.shard_iterator.as_deref().ok_or_else(|| {
        ApiError::validation(
            "Value null at 'shardIterator' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let limit = req.limit.unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::validation(format!(
            "Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 10000"
        ))
        .into());
    }
    let (name, index, pos) = decode_iterator(it)
        .ok_or_else(|| -> Reply { ApiError::invalid("Invalid ShardIterator.").into() })?;
    let stream = resolve(reg, Some(&name), None)?;
    let gate = gate(reg, &stream, false).await?;
    const MAX_BYTES: usize = 10 * 1_048_576;
    let (batch, next, closed_and_done, children, behind) = {
        let st = stream.lock();
        let shard = st
            .shard(index)
            .ok_or_else(|| -> Reply { ApiError::invalid("Invalid ShardIterator.").into() })?;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut p = pos.min(shard.records.len());
        while p < shard.records.len() && batch.len() < limit as usize {
            let r = &shard.records[p];
            if !batch.is_empty() && bytes + r.data.len() > MAX_BYTES {
                break;
            }
            bytes += r.data.len();
            batch.push((r.seq, r.arrival, r.partition_key.clone(), r.data.clone()));
            p += 1;
        }
        let done = !shard.is_open() && p >= shard.records.len();
        let children: Vec<Value> = if done {
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
        } else {
            Vec::new()
        };
        let behind = shard
            .records
            .get(p)
            .map(|r| {
                SystemTime::now()
                    .duration_since(r.arrival)
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        (batch, p, done, children, behind)
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
    if closed_and_done {
        v["ChildShards"] = json!(children);
    } else {
        v["NextShardIterator"] = json!(encode_iterator(&stream.name, index, next));
    }
    gate.finish(ok(&v))
}

// ---------------------------------------------------------------------------------------
// Resharding

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateShardCountIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    target_shard_count: Option<i64>,
    scaling_type: Option<String>,
}

async fn update_shard_count(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: UpdateShardCountIn = parse(body)?;
    let target = req.target_shard_count.ok_or_else(|| {
        ApiError::validation(
            "Value null at 'targetShardCount' failed to satisfy constraint: Member must not be null",
        )
    })?;
    if !(1..=10_000).contains(&target) {
        return Err(ApiError::validation(format!(
            "Value '{target}' at 'targetShardCount' failed to satisfy constraint: Member must have value between 1 and 10000"
        ))
        .into());
    }
    match req.scaling_type.as_deref() {
        Some("UNIFORM_SCALING") => {}
        other => {
            return Err(ApiError::validation(format!(
                "Value '{}' at 'scalingType' failed to satisfy constraint: Member must satisfy enum value set: [UNIFORM_SCALING]",
                other.unwrap_or("null")
            ))
            .into())
        }
    }
    let stream = resolve(reg, req.stream_name.as_deref(), req.stream_arn.as_deref())?;
    let gate = gate(reg, &stream, false).await?;
    let current = {
        let mut st = stream.lock();
        let current = st.open_count();
        st.reshard_uniform(target as u32);
        current
    };
    gate.finish(ok(&json!({
        "StreamName": stream.name,
        "StreamARN": stream.arn,
        "CurrentShardCount": current,
        "TargetShardCount": target,
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SplitShardIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    shard_to_split: Option<String>,
    new_starting_hash_key: Option<String>,
}

fn shard_arg(stream: &Stream, reg: &Registry, id: Option<&str>, field: &str) -> Result<u32, Reply> {
    let id = id.ok_or_else(|| -> Reply {
        ApiError::validation(format!(
            "Value null at '{field}' failed to satisfy constraint: Member must not be null"
        ))
        .into()
    })?;
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

async fn split_shard(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: SplitShardIn = parse(body)?;
    let key_s = req.new_starting_hash_key.as_deref().ok_or_else(|| {
        ApiError::validation(
            "Value null at 'newStartingHashKey' failed to satisfy constraint: Member must not be null",
        )
    })?;
    let key = parse_explicit_hash_key(key_s).map_err(|_| {
        ApiError::validation(format!(
            "Value '{key_s}' at 'newStartingHashKey' failed to satisfy constraint: Member must satisfy regular expression pattern: 0|([1-9]\\d{{0,38}})"
        ))
    })?;
    let stream = resolve(reg, req.stream_name.as_deref(), req.stream_arn.as_deref())?;
    let index = shard_arg(&stream, reg, req.shard_to_split.as_deref(), "shardToSplit")?;
    let gate = gate(reg, &stream, false).await?;
    let r = stream.lock().split(index, key);
    gate.finish(match r {
        Ok(()) => ok(&json!({})),
        Err(m) => Err(ApiError::invalid(m).into()),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MergeShardsIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    shard_to_merge: Option<String>,
    adjacent_shard_to_merge: Option<String>,
}

async fn merge_shards(reg: &Arc<Registry>, body: &[u8]) -> Res {
    let req: MergeShardsIn = parse(body)?;
    let stream = resolve(reg, req.stream_name.as_deref(), req.stream_arn.as_deref())?;
    let a = shard_arg(&stream, reg, req.shard_to_merge.as_deref(), "shardToMerge")?;
    let b = shard_arg(
        &stream,
        reg,
        req.adjacent_shard_to_merge.as_deref(),
        "adjacentShardToMerge",
    )?;
    let gate = gate(reg, &stream, false).await?;
    let r = stream.lock().merge(a, b);
    gate.finish(match r {
        Ok(()) => ok(&json!({})),
        Err(m) => Err(ApiError::invalid(m).into()),
    })
}
