//! Fuzzing with proptest (stable Rust: no `cargo fuzz`) of every decoder that reads bytes from
//! outside: `deaggregate`, ExplicitHashKey parsing, and kinesis-sim's request decoding (over
//! HTTP, as the SDK reaches it). No panic, no unbounded allocation, answers that agree with a
//! reference.
//!
//! The normal test run uses a few hundred cases per target; the soak command runs 100,000:
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz` (see `scripts/soak.sh`).
//!
//! Allocation is measured by a counting global allocator, per thread: while armed, it tracks
//! the peak of bytes live on the calling thread, so `deaggregate` can be held to a bound
//! proportional to its input.

use bytes::Bytes;
use kinesis_producer::aggregation::testing::{cases, framed, protobuf_like, user_record};
use kinesis_producer::aggregation::{Aggregator, TryPush, MAGIC};
use kinesis_producer::hash_key::ExplicitHashKeyError;
use kinesis_producer::{deaggregate, deaggregate_strict, DeaggregateError, HashKey};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

// ---- allocation accounting ----------------------------------------------------------------

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: defers every call to the system allocator; the bookkeeping touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the peak of bytes it held live on this thread.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, PEAK.with(|p| p.get()).max(0) as usize)
}

// ---- deaggregate --------------------------------------------------------------------------

/// A valid aggregate of `n` records.
fn aggregate(records: &[(String, Option<String>, Vec<u8>)]) -> Option<Vec<u8>> {
    let mut agg = Aggregator::new(usize::MAX / 2, usize::MAX);
    for (k, h, d) in records {
        if let TryPush::NoCapacity = agg.try_push(k, h.as_deref(), d) {
            return None;
        }
    }
    agg.finish().map(|a| a.data.to_vec())
}

fn deaggregate_checked(data: Vec<u8>) -> Result<(), TestCaseError> {
    let len = data.len();
    let bytes = Bytes::from(data);
    for strict in [false, true] {
        let (result, peak) = peak_allocation(|| {
            if strict {
                deaggregate_strict("outer", Some("7"), bytes.clone())
            } else {
                deaggregate("outer", Some("7"), bytes.clone())
            }
        });
        // Sub-record data shares the input buffer; tables and keys are at most a few copies
        // of the input: anything beyond that grows with a length field, not with the input.
        prop_assert!(
            peak <= 8 * len + 64 * 1024,
            "deaggregate (strict: {}) held {} bytes for a {}-byte input",
            strict,
            peak,
            len
        );
        if let Ok(subs) = result {
            // Only the consumer's reading yields nothing, for an aggregate without records.
            prop_assert!(!strict || !subs.is_empty(), "Ok with no record");
            prop_assert!(
                subs.len() <= len.max(1),
                "{} records from {} bytes",
                subs.len(),
                len
            );
            let data: usize = subs.iter().map(|s| s.data.len()).sum();
            prop_assert!(data <= len);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn fuzz_deaggregate_arbitrary_bytes(
        framing in 0u8..3,
        tail in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let data = match framing {
            0 => tail,
            1 => [&MAGIC[..], &tail].concat(),
            // With a valid digest, so that the parser runs.
            _ => framed(&tail).to_vec(),
        };
        deaggregate_checked(data)?;
    }

    #[test]
    fn fuzz_deaggregate_protobuf_with_valid_digest(protobuf in protobuf_like()) {
        deaggregate_checked(framed(&protobuf).to_vec())?;
    }

    #[test]
    fn fuzz_deaggregate_mutated_aggregates(
        records in prop::collection::vec(user_record(64), 1..12),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let Some(data) = aggregate(&records) else { return Ok(()) };
        // Unchanged: an exact round trip.
        let subs = deaggregate("outer", None, Bytes::from(data.clone())).unwrap();
        prop_assert_eq!(subs.len(), records.len());
        for (s, (k, h, d)) in subs.iter().zip(&records) {
            prop_assert_eq!(&s.partition_key, k);
            prop_assert_eq!(&s.explicit_hash_key, h);
            prop_assert_eq!(&s.data[..], &d[..]);
        }
        // Mutated inside the protobuf (byte flipped, cut, inserted or removed), digest
        // recomputed so the parser sees the damage.
        let mut protobuf = data[MAGIC.len()..data.len() - 16].to_vec();
        for (at, byte, kind) in mutations {
            if protobuf.is_empty() {
                break;
            }
            let i = at.index(protobuf.len());
            match kind {
                0 => protobuf[i] ^= byte,
                1 => protobuf.truncate(i),
                2 => protobuf.insert(i, byte),
                _ => {
                    protobuf.remove(i);
                }
            }
        }
        deaggregate_checked(framed(&protobuf).to_vec())?;
        // Mutated without fixing the digest: refused by the strict reading, passed on whole
        // as one plain record by the consumer's (as the KCL does), never misread.
        let mut raw = data.clone();
        let i = cut.index(raw.len() - MAGIC.len()) + MAGIC.len();
        raw[i] ^= 0x5A;
        let raw = Bytes::from(raw);
        let is_digest_mismatch = matches!(
            deaggregate_strict("outer", None, raw.clone()),
            Err(DeaggregateError::DigestMismatch { .. })
        );
        prop_assert!(is_digest_mismatch);
        let plain = deaggregate("outer", None, raw.clone()).unwrap();
        prop_assert_eq!(plain.len(), 1);
        prop_assert_eq!(&plain[0].data, &raw);
    }
}

// ---- ExplicitHashKey --------------------------------------------------------------------------

const MAX_HASH_KEY: &str = "340282366920938463463374607431768211455";

/// The API's rule, written independently: pattern `0|([1-9]\d{0,38})` and value <= 2^128 - 1
/// (compared as decimal strings of equal length).
fn reference(text: &str) -> Option<u128> {
    let digits = text.bytes().all(|b| b.is_ascii_digit());
    let pattern =
        text == "0" || (digits && (1..=39).contains(&text.len()) && !text.starts_with('0'));
    if !pattern {
        return None;
    }
    if text.len() == 39 && text > MAX_HASH_KEY {
        return None;
    }
    let mut v: u128 = 0;
    for b in text.bytes() {
        v = v * 10 + u128::from(b - b'0');
    }
    Some(v)
}

fn hash_key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,45}",
        "[-+ ]?[0-9]{1,40}[ a-z]?",
        any::<u128>().prop_map(|v| v.to_string()),
        // Around 2^128: the last two digits vary from below to above the limit.
        (0u8..100).prop_map(|d| format!("{}{d:02}", &MAX_HASH_KEY[..37])),
        (0u8..10, "[0-9]{38}").prop_map(|(d, rest)| format!("{d}{rest}")),
        "0{1,5}[0-9]{0,40}",
        "[٠-٩０-９]{1,5}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(2048)))]

    #[test]
    fn fuzz_explicit_hash_key(text in hash_key_text()) {
        let parsed = HashKey::parse_explicit(&text);
        match (reference(&text), &parsed) {
            (Some(v), Ok(h)) => {
                prop_assert_eq!(h.0, v);
                prop_assert_eq!(h.to_string(), text.clone(), "canonical text round-trips");
            }
            (None, Err(e)) => {
                let message = e.to_string();
                prop_assert!(!message.is_empty());
                if let ExplicitHashKeyError::NotDecimal { index, ch } = e {
                    prop_assert_eq!(text[*index..].chars().next(), Some(*ch));
                }
            }
            (expected, got) => {
                prop_assert!(false, "{:?}: reference {:?}, parse_explicit {:?}", text, expected, got);
            }
        }
    }

    #[test]
    fn fuzz_hash_key_display_round_trip(v in any::<u128>()) {
        prop_assert_eq!(HashKey::parse_explicit(&HashKey(v).to_string()), Ok(HashKey(v)));
    }
}

// ---- kinesis-sim request decoding ----------------------------------------------------------

const SIM_STREAM: &str = "fuzz";

struct SimHandle {
    addr: std::net::SocketAddr,
    _runtime: tokio::runtime::Runtime,
    _sim: kinesis_sim::Simulator,
}

/// One simulator for the whole test binary (records not kept, so memory stays flat).
fn sim() -> &'static SimHandle {
    static SIM: OnceLock<SimHandle> = OnceLock::new();
    SIM.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sim = runtime.block_on(async {
            let cfg = kinesis_sim::SimConfig {
                store_records: false,
                ..kinesis_sim::SimConfig::default()
            };
            let sim = kinesis_sim::Simulator::start(cfg).await.unwrap();
            sim.create_stream(SIM_STREAM, 3).unwrap();
            sim
        });
        SimHandle {
            addr: sim.local_addr(),
            _runtime: runtime,
            _sim: sim,
        }
    })
}

/// A keep-alive HTTP/1.1 connection to the simulator.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect() -> Client {
        let tcp = TcpStream::connect(sim().addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(tcp),
        }
    }

    /// Sends one request; returns (status, body), or an error text if the connection ended
    /// without a complete response.
    fn call(&mut self, target: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let head = format!(
            "POST / HTTP/1.1\r\nHost: sim\r\nX-Amz-Target: {target}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let tcp = self.reader.get_mut();
        tcp.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
        tcp.write_all(body).map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line: {line:?}"))?;
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).map_err(|e| e.to_string())?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad length {h:?}"))?;
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok((status, body))
    }
}

thread_local! {
    static CLIENT: std::cell::RefCell<Option<Client>> = const { std::cell::RefCell::new(None) };
}

/// Sends a request and checks the answer: a complete HTTP response, status 200 or 400, and a
/// JSON body; errors carry `__type`. A connection closed without a response means the handler
/// panicked (no faults are set on this simulator).
fn check_request(action: &str, body: &[u8]) -> Result<(), TestCaseError> {
    let target = format!("{}{action}", kinesis_sim::TARGET_PREFIX);
    let answer = CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        let client = c.get_or_insert_with(Client::connect);
        let answer = client.call(&target, body);
        if answer.is_err() {
            *c = None;
        }
        answer
    });
    let (status, body_out) = answer.map_err(|e| {
        TestCaseError::fail(format!(
            "{action} {:?}: no response ({e})",
            String::from_utf8_lossy(body)
        ))
    })?;
    // No faults are set on this simulator: every request it cannot serve is the client's
    // fault (400), so any other status (a 5xx above all) is a bug.
    prop_assert!(
        [200u16, 400].contains(&status),
        "{} {:?} answered HTTP {}: {}",
        action,
        String::from_utf8_lossy(body),
        status,
        String::from_utf8_lossy(&body_out)
    );
    let json: serde_json::Value = serde_json::from_slice(&body_out).map_err(|e| {
        TestCaseError::fail(format!("{action}: body is not JSON ({e}): {body_out:?}"))
    })?;
    if status != 200 {
        prop_assert!(
            json.get("__type").is_some(),
            "{}: error without __type: {}",
            action,
            json
        );
    }
    Ok(())
}

const ACTIONS: &[&str] = &[
    "PutRecords",
    "PutRecord",
    "CreateStream",
    "DeleteStream",
    "DescribeStreamSummary",
    "DescribeStream",
    "ListStreams",
    "ListShards",
    "GetShardIterator",
    "GetRecords",
    "UpdateShardCount",
    "SplitShard",
    "MergeShards",
];

fn json_number() -> BoxedStrategy<serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        any::<i64>().prop_map(|v| json!(v)),
        (-3i64..12).prop_map(|v| json!(v)),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| json!(v)),
        Just(json!(1e300)),
        Just(json!(-1e300)),
        Just(json!(1.8e19)),
        Just(json!(u64::MAX)),
        Just(json!(10_001)),
    ]
    .boxed()
}

fn json_text() -> BoxedStrategy<serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(SIM_STREAM)),
        Just(json!("")),
        any::<String>().prop_map(|s| json!(s)),
        "[A-Za-z0-9+/=|_-]{0,40}".prop_map(|s| json!(s)),
        (0u32..12).prop_map(|i| json!(format!("shardId-{i:012}"))),
        (
            0u32..5,
            0usize..10,
            prop_oneof![Just(SIM_STREAM.to_string()), "[a-z]{0,5}"]
        )
            .prop_map(|(shard, pos, stream)| {
                use base64::Engine as _;
                json!(base64::engine::general_purpose::STANDARD
                    .encode(format!("{shard}|{pos}|{stream}")))
            }),
        "[0-9]{0,60}".prop_map(|s| json!(s)),
        Just(json!(format!("49{:054}", 1))),
        prop::sample::select(vec![
            "AT_TIMESTAMP",
            "FROM_TIMESTAMP",
            "AFTER_SHARD_ID",
            "AT_LATEST",
            "AT_TRIM_HORIZON",
            "FROM_TRIM_HORIZON",
            "TRIM_HORIZON",
            "LATEST",
            "AT_SEQUENCE_NUMBER",
            "AFTER_SEQUENCE_NUMBER",
            "UNIFORM_SCALING",
        ])
        .prop_map(|s| json!(s)),
    ]
    .boxed()
}

fn json_scalar() -> BoxedStrategy<serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        4 => json_text(),
        3 => json_number(),
        1 => Just(json!(null)),
        1 => any::<bool>().prop_map(|b| json!(b)),
    ]
    .boxed()
}

const FIELDS: &[&str] = &[
    "StreamName",
    "StreamARN",
    "Records",
    "Data",
    "PartitionKey",
    "ExplicitHashKey",
    "ShardCount",
    "MaxRecordSizeInKiB",
    "NextToken",
    "ExclusiveStartShardId",
    "MaxResults",
    "ShardFilter",
    "Type",
    "ShardId",
    "Timestamp",
    "ShardIteratorType",
    "StartingSequenceNumber",
    "ShardIterator",
    "Limit",
    "TargetShardCount",
    "ScalingType",
    "ShardToSplit",
    "NewStartingHashKey",
    "ShardToMerge",
    "AdjacentShardToMerge",
];

/// JSON objects with Kinesis field names and hostile values, nested two levels deep.
fn request_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = json_scalar();
    let value = leaf.prop_recursive(2, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..6).prop_map(|fields| {
                serde_json::Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            }),
        ]
    });
    prop::collection::vec((prop::sample::select(FIELDS), value), 0..8).prop_map(|fields| {
        serde_json::Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    })
}

/// Keeps the simulator's state small over 100,000 cases: the fuzz stream is never deleted or
/// resharded, and no stream is created with more than 11 shards. (Each such request is
/// bounded; 100,000 of them would not be.)
fn harmless(action: &str, body: &serde_json::Value) -> bool {
    let names_fuzz_stream = body.get("StreamName").is_some_and(|n| n == SIM_STREAM);
    match action {
        "UpdateShardCount" | "SplitShard" | "MergeShards" | "DeleteStream" => !names_fuzz_stream,
        "CreateStream" => body
            .get("ShardCount")
            .and_then(|v| v.as_i64())
            .is_none_or(|n| !(12..=10_000).contains(&n)),
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn fuzz_sim_request_decoding_json(
        action in prop_oneof![8 => prop::sample::select(ACTIONS).prop_map(str::to_string), 1 => "[A-Za-z]{0,12}"],
        body in request_json(),
    ) {
        // Rejecting would hit proptest's global reject limit over 100,000 cases: read instead.
        let action = if harmless(&action, &body) { action } else { "DescribeStream".into() };
        check_request(&action, &serde_json::to_vec(&body).unwrap())?;
    }

    #[test]
    fn fuzz_sim_request_decoding_bytes(
        action in prop::sample::select(ACTIONS),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            "\\{[\"A-Za-z:,\\[\\]{}0-9 .e+-]{0,80}\\}".prop_map(String::into_bytes),
        ],
    ) {
        check_request(action, &body)?;
    }
}

/// Well-formed requests of the reading and writing actions, on the fuzz stream, with hostile
/// values in every field: deeper into each handler than random objects get.
fn shaped_request() -> BoxedStrategy<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let record = || {
        (
            json_scalar(),
            json_scalar(),
            prop::option::of(json_scalar()),
        )
            .prop_map(|(data, key, ehk)| {
                let mut r = json!({"Data": data, "PartitionKey": key});
                if let Some(h) = ehk {
                    r["ExplicitHashKey"] = h;
                }
                r
            })
    };
    prop_oneof![
        (json_scalar(), json_scalar(), json_scalar(), json_scalar()).prop_map(
            |(ty, shard, ts, max)| (
                "ListShards",
                json!({"StreamName": SIM_STREAM, "MaxResults": max,
                       "ShardFilter": {"Type": ty, "ShardId": shard, "Timestamp": ts}})
            )
        ),
        (json_scalar(), json_scalar(), json_scalar(), json_scalar()).prop_map(
            |(shard, ty, seq, ts)| (
                "GetShardIterator",
                json!({"StreamName": SIM_STREAM, "ShardId": shard, "ShardIteratorType": ty,
                       "StartingSequenceNumber": seq, "Timestamp": ts})
            )
        ),
        (json_scalar(), json_scalar())
            .prop_map(|(it, limit)| ("GetRecords", json!({"ShardIterator": it, "Limit": limit}))),
        prop::collection::vec(record(), 0..6).prop_map(|records| (
            "PutRecords",
            json!({"StreamName": SIM_STREAM, "Records": records})
        )),
        record().prop_map(|mut r| {
            r["StreamName"] = json!(SIM_STREAM);
            ("PutRecord", r)
        }),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn fuzz_sim_request_decoding_shaped((action, body) in shaped_request()) {
        check_request(action, &serde_json::to_vec(&body).unwrap())?;
    }
}

/// Values that once panicked inside the simulator, kept as plain cases.
#[test]
fn sim_survives_out_of_range_timestamps() {
    for ts in ["1e300", "-1e300", "1.8e19", "1e12", "0"] {
        let list = format!(
            r#"{{"StreamName":"{SIM_STREAM}","ShardFilter":{{"Type":"AT_TIMESTAMP","Timestamp":{ts}}}}}"#
        );
        check_request("ListShards", list.as_bytes()).unwrap();
        let from = list.replace("AT_TIMESTAMP", "FROM_TIMESTAMP");
        check_request("ListShards", from.as_bytes()).unwrap();
        let iterator = format!(
            r#"{{"StreamName":"{SIM_STREAM}","ShardId":"shardId-000000000000","ShardIteratorType":"AT_TIMESTAMP","Timestamp":{ts}}}"#
        );
        check_request("GetShardIterator", iterator.as_bytes()).unwrap();
    }
}

/// The allocation meter itself: it sees what the closure allocates, and only that.
#[test]
fn allocation_meter_sees_allocations() {
    let outside = vec![1u8; 1 << 20];
    let (inside, peak) = peak_allocation(|| vec![0u8; 100_000]);
    assert!((100_000..1 << 20).contains(&peak), "peak {peak}");
    drop((outside, inside));
}
