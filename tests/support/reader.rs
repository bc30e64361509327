//! Reading a whole stream back from a Kinesis-compatible service, for end-to-end tests.
//!
//! ```text
//! ListShards (all pages, closed shards too) ─▶ per shard: GetShardIterator TRIM_HORIZON
//!   ─▶ GetRecords until caught up (no records and MillisBehindLatest 0) or the shard ends
//!   ─▶ raw Kinesis records ─▶ our `deaggregate_strict` ─▶ user records with shard, sequence number,
//!                                                    position inside the aggregate
//! ```
//!
//! Plus the pieces every emulator test needs: an `SdkConfig` for a local endpoint, stream
//! creation that waits for `ACTIVE`, and the independent decoder (PyPI `aws-kinesis-agg`, run
//! through `tests/support/agg_reference.py`) to cross-check aggregates found in a stream.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;
use base64::Engine as _;
use bytes::Bytes;
use kinesis_producer::aggregation::MAGIC;
use kinesis_producer::{deaggregate_strict, HashKey};

/// Shared AWS configuration for a local endpoint: fixed region, static credentials (the
/// emulators want a SigV4 header but do not verify it).
pub async fn sdk_config(endpoint_url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "e2e"))
        .endpoint_url(endpoint_url)
        .load()
        .await
}

/// Creates a stream and waits until it is `ACTIVE`.
pub async fn create_stream(client: &Client, name: &str, shards: i32, max_record_kib: Option<i32>) {
    let mut req = client.create_stream().stream_name(name).shard_count(shards);
    if let Some(kib) = max_record_kib {
        req = req.max_record_size_in_kib(kib);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("CreateStream {name}: {}", err_text(&e)));
    wait_active(client, name).await;
}

/// Polls DescribeStreamSummary until the stream is `ACTIVE` (30 s at most).
pub async fn wait_active(client: &Client, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .ok()
            .and_then(|d| {
                d.stream_description_summary()
                    .map(|s| s.stream_status().clone())
            });
        if status == Some(StreamStatus::Active) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} not ACTIVE after 30 s (status {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An SDK error with its code and message (the `Display` of `SdkError` hides them).
pub fn err_text<E>(e: &aws_sdk_kinesis::error::SdkError<E>) -> String
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    format!(
        "{}",
        aws_smithy_types::error::display::DisplayErrorContext(e)
    )
}

/// One shard as ListShards reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRange {
    /// Shard id.
    pub shard_id: String,
    /// First hash key, inclusive.
    pub start: u128,
    /// Last hash key, inclusive.
    pub end: u128,
    /// Closed (has an ending sequence number).
    pub closed: bool,
    /// Parent, if the shard came from a split or merge.
    pub parent: Option<String>,
}

impl ShardRange {
    /// Whether `hash_key` lies in this shard's range.
    pub fn contains(&self, hash_key: u128) -> bool {
        self.start <= hash_key && hash_key <= self.end
    }
}

/// A Kinesis record as stored.
#[derive(Clone, Debug)]
pub struct RawRecord {
    /// The shard that holds it.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
    /// Its (outer) partition key.
    pub partition_key: String,
    /// Its data (an aggregate or one user record).
    pub data: Bytes,
}

impl RawRecord {
    /// Whether the data carries the KPL aggregate magic.
    pub fn is_aggregate(&self) -> bool {
        self.data.len() >= 20 && self.data[..4] == MAGIC
    }
}

/// One user record recovered from the stream.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    /// The shard that holds it.
    pub shard_id: String,
    /// Sequence number of the Kinesis record that holds it.
    pub sequence_number: String,
    /// Position inside the aggregate (0 for a plain record).
    pub sub_index: u64,
    /// Whether it came out of an aggregate.
    pub aggregated: bool,
    /// Partition key.
    pub partition_key: String,
    /// Explicit hash key from the aggregate's table (a plain record's is not stored).
    pub explicit_hash_key: Option<String>,
    /// Data.
    pub data: Bytes,
    /// Index into [`StreamContents::raw`].
    pub raw_index: usize,
}

impl ReadRecord {
    /// The hash key Kinesis (and KCL) use for this user record: the explicit hash key if it
    /// has one, else the MD5 of its partition key.
    pub fn hash_key(&self) -> u128 {
        match &self.explicit_hash_key {
            Some(k) => {
                HashKey::parse_explicit(k)
                    .expect("stored explicit hash key")
                    .0
            }
            None => HashKey::from_partition_key(&self.partition_key).0,
        }
    }
}

/// Everything read from a stream.
#[derive(Debug, Default)]
pub struct StreamContents {
    /// Every shard, open and closed, as ListShards lists them.
    pub shards: Vec<ShardRange>,
    /// Raw Kinesis records, shard by shard, in sequence order within a shard.
    pub raw: Vec<RawRecord>,
    /// User records, in the order of `raw` and of their position inside each aggregate.
    pub users: Vec<ReadRecord>,
}

impl StreamContents {
    /// The shard with this id.
    pub fn shard(&self, shard_id: &str) -> &ShardRange {
        self.shards
            .iter()
            .find(|s| s.shard_id == shard_id)
            .unwrap_or_else(|| panic!("no shard {shard_id} in ListShards"))
    }

    /// The open shard whose range holds `hash_key`.
    pub fn open_shard_for(&self, hash_key: u128) -> &ShardRange {
        self.shards
            .iter()
            .find(|s| !s.closed && s.contains(hash_key))
            .unwrap_or_else(|| panic!("no open shard holds hash key {hash_key}"))
    }

    /// Raw records by sequence number.
    pub fn raw_by_sequence(&self) -> HashMap<&str, &RawRecord> {
        self.raw
            .iter()
            .map(|r| (r.sequence_number.as_str(), r))
            .collect()
    }
}

/// Every shard of the stream (ListShards, following NextToken; closed shards included).
pub async fn list_shards(client: &Client, stream: &str) -> Vec<ShardRange> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // NextToken and StreamName are mutually exclusive.
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListShards {stream}: {}", err_text(&e)));
        for s in resp.shards() {
            let range = s.hash_key_range().expect("hash key range");
            out.push(ShardRange {
                shard_id: s.shard_id().to_owned(),
                start: range.starting_hash_key().parse().expect("start key"),
                end: range.ending_hash_key().parse().expect("end key"),
                closed: s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some(),
                parent: s.parent_shard_id().map(str::to_owned),
            });
        }
        match resp.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
    }
    out
}

/// Reads every record of every shard from TRIM_HORIZON to the end, and deaggregates.
///
/// # Panics
/// On any API error, or an aggregate our decoder rejects.
pub async fn read_stream(client: &Client, stream: &str) -> StreamContents {
    let shards = list_shards(client, stream).await;
    let mut raw = Vec::new();
    for shard in &shards {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(&shard.shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetShardIterator {}: {}", shard.shard_id, err_text(&e)))
            .shard_iterator()
            .map(str::to_owned);
        let mut calls = 0;
        while let Some(it) = iterator.take() {
            calls += 1;
            assert!(
                calls < 100_000,
                "GetRecords on {} never ends",
                shard.shard_id
            );
            let resp = client
                .get_records()
                .shard_iterator(it)
                .limit(10_000)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GetRecords {}: {}", shard.shard_id, err_text(&e)));
            for r in resp.records() {
                raw.push(RawRecord {
                    shard_id: shard.shard_id.clone(),
                    sequence_number: r.sequence_number().to_owned(),
                    partition_key: r.partition_key().unwrap_or_default().to_owned(),
                    data: Bytes::copy_from_slice(r.data().as_ref()),
                });
            }
            let caught_up =
                resp.records().is_empty() && resp.millis_behind_latest().unwrap_or(0) == 0;
            if !caught_up {
                iterator = resp.next_shard_iterator().map(str::to_owned);
            }
        }
    }
    let mut users = Vec::new();
    for (raw_index, r) in raw.iter().enumerate() {
        let aggregated = r.is_aggregate();
        let subs = deaggregate_strict(&r.partition_key, None, r.data.clone()).unwrap_or_else(|e| {
            panic!(
                "record {} on {} does not deaggregate: {e}",
                r.sequence_number, r.shard_id
            )
        });
        for s in subs {
            users.push(ReadRecord {
                shard_id: r.shard_id.clone(),
                sequence_number: r.sequence_number.clone(),
                sub_index: s.sub_sequence_number,
                aggregated,
                partition_key: s.partition_key,
                explicit_hash_key: s.explicit_hash_key,
                data: s.data,
                raw_index,
            });
        }
    }
    StreamContents { shards, raw, users }
}

/// Orders sequence numbers (decimal strings without leading zeros, up to 56 digits).
pub fn sequence_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

// ---- the independent decoder: aws-kinesis-agg -------------------------------------------

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn python_works(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import six, aws_kinesis_agg.deaggregator"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn python_candidates() -> Vec<PathBuf> {
    let root = Path::new(MANIFEST_DIR);
    let mut v = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        v.push(root.join(t).join("pyenv/bin/python"));
    }
    v.push(root.join("target/pyenv/bin/python"));
    v
}

/// The venv's python with `aws-kinesis-agg`, installing it once if needed. `None` means skip;
/// with `CI=true` a missing package panics instead.
pub fn python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        if let Some(p) = python_candidates().into_iter().find(|p| python_works(p)) {
            return Ok(p);
        }
        let script = Path::new(MANIFEST_DIR).join("scripts/setup-test-deps.sh");
        let setup = Command::new("bash")
            .arg(&script)
            .current_dir(MANIFEST_DIR)
            .output();
        python_candidates()
            .into_iter()
            .find(|p| python_works(p))
            .ok_or_else(|| format!("aws-kinesis-agg venv missing (setup: {setup:?})"))
    });
    match found {
        Ok(p) => Some(p.clone()),
        Err(why) if kinesis_sim::emulators::require_emulators() => {
            panic!("CI=true and the reference decoder is missing: {why}")
        }
        Err(why) => {
            eprintln!("skipping the aws-kinesis-agg cross-check: {why}");
            None
        }
    }
}

/// One aggregate as aws-kinesis-agg reads it.
#[derive(Debug)]
pub struct PyAggregate {
    /// User records it reported.
    pub count: usize,
    /// Every user record flagged `aggregated`.
    pub flagged: bool,
    /// MD5 trailer matches.
    pub md5_ok: bool,
    /// (sub-sequence number, partition key, data, explicit hash key).
    pub records: Vec<(u64, String, Vec<u8>, Option<String>)>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Decodes `records` (aggregates) with aws-kinesis-agg via `tests/support/agg_reference.py`.
pub fn python_decode(python: &Path, records: &[&RawRecord]) -> Vec<PyAggregate> {
    let items: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "partition_key": r.partition_key,
                "data": base64::engine::general_purpose::STANDARD.encode(&r.data),
            })
        })
        .collect();
    let input = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "e2e-agg-{}-{:?}.json",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(
        &input,
        serde_json::to_vec(&serde_json::json!({ "aggregates": items })).expect("json"),
    )
    .expect("write input");
    let out = Command::new(python)
        .arg(Path::new(MANIFEST_DIR).join("tests/support/agg_reference.py"))
        .arg("decode")
        .arg(&input)
        .output()
        .expect("run python");
    let _ = std::fs::remove_file(&input);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "agg_reference.py decode failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut aggs: Vec<PyAggregate> = Vec::new();
    for line in String::from_utf8(out.stdout).expect("utf-8").lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "AGG" => aggs.push(PyAggregate {
                count: f[2].parse().expect("count"),
                flagged: f[3] == "1",
                md5_ok: f[4] == "1",
                records: Vec::new(),
            }),
            "REC" => {
                let key = String::from_utf8(unhex(f[4])).expect("utf-8 key");
                let ehk = (f[6] != "-").then(|| String::from_utf8(unhex(f[6])).expect("ehk"));
                aggs.last_mut().expect("AGG first").records.push((
                    f[3].parse().expect("sub-sequence number"),
                    key,
                    unhex(f[5]),
                    ehk,
                ));
            }
            other => panic!("unexpected line from agg_reference.py: {other}"),
        }
    }
    aggs
}

/// Decodes every aggregate in `contents` with aws-kinesis-agg and asserts it reads the same
/// user records as our `deaggregate`. Returns the number of aggregates checked (0 when the
/// reference decoder is unavailable outside CI).
pub fn cross_check_with_python(contents: &StreamContents) -> usize {
    let Some(python) = python() else { return 0 };
    let aggregates: Vec<(usize, &RawRecord)> = contents
        .raw
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_aggregate())
        .collect();
    if aggregates.is_empty() {
        return 0;
    }
    let mut ours: HashMap<usize, Vec<&ReadRecord>> = HashMap::new();
    for u in &contents.users {
        ours.entry(u.raw_index).or_default().push(u);
    }
    // Bounded batches keep the JSON and the hex output of one call moderate.
    let mut checked = 0;
    for batch in aggregates.chunks(500) {
        let records: Vec<&RawRecord> = batch.iter().map(|(_, r)| *r).collect();
        let decoded = python_decode(&python, &records);
        assert_eq!(decoded.len(), batch.len(), "aws-kinesis-agg output count");
        for ((raw_index, raw), py) in batch.iter().zip(&decoded) {
            let ours = &ours[raw_index];
            let at = format!("aggregate {} on {}", raw.sequence_number, raw.shard_id);
            assert!(py.flagged && py.md5_ok, "{at}: aws-kinesis-agg rejects it");
            assert_eq!(py.count, ours.len(), "{at}: user record count");
            for (p, o) in py.records.iter().zip(ours) {
                assert_eq!(p.0, o.sub_index, "{at}: sub-sequence number");
                assert_eq!(p.1, o.partition_key, "{at}#{}: partition key", o.sub_index);
                assert_eq!(p.2, o.data, "{at}#{}: data", o.sub_index);
                assert_eq!(
                    p.3, o.explicit_hash_key,
                    "{at}#{}: explicit hash key",
                    o.sub_index
                );
            }
            checked += 1;
        }
    }
    checked
}
