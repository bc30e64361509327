//! The same raw-HTTP script against kinesis-sim, kinesalite and kinesis-local.
//!
//! Every case states the AWS reference outcome (HTTP status and `__type`); kinesis-sim must
//! produce it exactly. Each emulator must produce it too, except for the differences listed
//! in [`KNOWN_DIFFERENCES`] with the reason (a listed difference that no longer occurs fails
//! the test, so the table stays true). Routing of explicit hash keys (0, 2^128-1 and the
//! shard boundaries) and MD5 partition keys must agree across all three, except for the
//! entries of [`ROUTING_QUIRKS`]. With `CI=true` a missing emulator fails the test.

use base64::Engine as _;
use kinesis_sim::emulators::{call, call_raw, start_or_skip, Emulator};
use kinesis_sim::hash::{uniform_range, MAX_HASH_KEY};
use kinesis_sim::{SimConfig, Simulator};
use serde_json::{json, Value};

const STREAM: &str = "conf";
const SHARDS: u32 = 4;

/// `(case, target, what it does instead, why)`.
const KNOWN_DIFFERENCES: &[(&str, &str, &str, &str)] = &[
    (
        "put_records_over_10mib",
        "kinesalite",
        "413",
        "kinesalite answers HTTP 413 with an empty body above 7 MiB",
    ),
    (
        "put_records_over_10mib",
        "kinesis-local",
        "200",
        "kinesis-local does not check the request size",
    ),
    (
        "put_records_ehk_leading_zero",
        "kinesalite",
        "200",
        "kinesalite's unanchored pattern `^0|([1-9]\\d{0,38})$` accepts any key starting with 0",
    ),
    (
        "put_records_ehk_leading_zero",
        "kinesis-local",
        "400 InvalidArgumentException",
        "kinesis-local checks the characters itself, not via the model",
    ),
    (
        "update_max_record_size",
        "kinesalite",
        "400 UnknownOperationException",
        "kinesalite predates UpdateMaxRecordSize",
    ),
    (
        "update_distribution_provisioned",
        "kinesalite",
        "400 UnknownOperationException",
        "kinesalite predates UpdateStreamRecordDistributionStrategy",
    ),
    (
        "update_distribution_provisioned",
        "kinesis-local",
        "400 AccessDeniedException",
        "kinesis-local does not know UpdateStreamRecordDistributionStrategy",
    ),
    (
        "update_max_record_size_too_small",
        "kinesalite",
        "400 UnknownOperationException",
        "kinesalite predates UpdateMaxRecordSize",
    ),
    (
        "update_max_record_size_too_small",
        "kinesis-local",
        "400 InvalidArgumentException",
        "kinesis-local validates the range itself, not via the model",
    ),
    (
        "put_records_by_arn",
        "kinesalite",
        "400 ValidationException",
        "kinesalite predates StreamARN parameters",
    ),
    (
        "list_shards_bad_token_only",
        "kinesalite",
        "not run",
        "kinesalite crashes (levelup ReadError) on an unknown NextToken",
    ),
    (
        "put_records_empty",
        "kinesis-local",
        "200",
        "kinesis-local accepts 0 records",
    ),
    (
        "put_records_501",
        "kinesis-local",
        "200",
        "kinesis-local accepts 501 records",
    ),
    (
        "put_records_pk_empty",
        "kinesis-local",
        "400 InvalidArgumentException",
        "kinesis-local validates the key length itself, not via the model",
    ),
    (
        "put_records_pk_257",
        "kinesis-local",
        "400 InvalidArgumentException",
        "as above",
    ),
    (
        "put_records_pk_257_unicode",
        "kinesis-local",
        "400 InvalidArgumentException",
        "as above",
    ),
    (
        "put_record_pk_empty",
        "kinesis-local",
        "400 InvalidArgumentException",
        "as above",
    ),
    (
        "put_records_ehk_not_number",
        "kinesis-local",
        "500",
        "kinesis-local fails internally on a non-numeric ExplicitHashKey",
    ),
    (
        "put_records_record_over_1mib",
        "kinesis-local",
        "200",
        "kinesis-local checks the record size in PutRecord only",
    ),
    (
        "put_records_no_stream",
        "kinesis-local",
        "400 InvalidArgumentException",
        "kinesis-local checks 'StreamName or StreamARN' itself instead of the model's null check",
    ),
    (
        "unknown_action",
        "kinesis-local",
        "400 AccessDeniedException",
        "kinesis-local answers unknown targets with AccessDenied",
    ),
    (
        "put_records_missing_records",
        "kinesis-local",
        "400 SerializationException",
        "kinesis-local decodes with a strict codec first",
    ),
    (
        "get_records_bad_iterator",
        "kinesis-local",
        "500",
        "kinesis-local fails internally on an undecodable iterator",
    ),
];

/// `(target, hash key label, reason)` for routing that differs from AWS.
const ROUTING_QUIRKS: &[(&str, &str, &str)] = &[
    ("kinesis-local", "start1-1", KINESIS_LOCAL_RANGES),
    ("kinesis-local", "start2-1", KINESIS_LOCAL_RANGES),
    ("kinesis-local", "start3-1", KINESIS_LOCAL_RANGES),
];

/// kinesis-local's quirk (see EMULATORS.md): shard `i` starts at `i*floor((2^128-1)/n)`
/// instead of `floor(i*2^128/n)`, i.e. up to `i` keys lower than AWS, so the key just below
/// an AWS boundary lands on the next shard. The range comparison checks exactly this formula.
const KINESIS_LOCAL_RANGES: &str = "kinesis-local ranges start up to i keys lower than AWS";

struct Case {
    name: &'static str,
    action: &'static str,
    body: Vec<u8>,
    expect: (u16, &'static str),
}

fn case(
    name: &'static str,
    action: &'static str,
    body: Value,
    expect: (u16, &'static str),
) -> Case {
    Case {
        name,
        action,
        body: serde_json::to_vec(&body).unwrap(),
        expect,
    }
}

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn rec(pk: &str, data: &[u8]) -> Value {
    json!({"PartitionKey": pk, "Data": b64(data)})
}

fn rec_ehk(ehk: &str) -> Value {
    json!({"PartitionKey": "k", "Data": b64(b"x"), "ExplicitHashKey": ehk})
}

fn script() -> Vec<Case> {
    let ok = (200, "");
    let val = (400, "ValidationException");
    let inv = (400, "InvalidArgumentException");
    let nf = (400, "ResourceNotFoundException");
    let arn = format!("arn:aws:kinesis:us-east-1:{{ACCOUNT}}:stream/{STREAM}");
    vec![
        case(
            "create_duplicate",
            "CreateStream",
            json!({"StreamName": STREAM, "ShardCount": 1}),
            (400, "ResourceInUseException"),
        ),
        case(
            "describe_summary",
            "DescribeStreamSummary",
            json!({"StreamName": STREAM}),
            ok,
        ),
        case(
            "describe_unknown",
            "DescribeStreamSummary",
            json!({"StreamName": "nope"}),
            nf,
        ),
        case(
            "list_shards",
            "ListShards",
            json!({"StreamName": STREAM}),
            ok,
        ),
        case(
            "list_shards_token_and_name",
            "ListShards",
            json!({"StreamName": STREAM, "NextToken": "abc"}),
            inv,
        ),
        case(
            "put_records_ok",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec("a", b"1"), rec("b", b"2")]}),
            ok,
        ),
        case(
            "put_records_empty",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": []}),
            val,
        ),
        case(
            "put_records_501",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": vec![rec("a", b"x"); 501]}),
            val,
        ),
        case(
            "put_records_missing_records",
            "PutRecords",
            json!({"StreamName": STREAM}),
            val,
        ),
        case(
            "put_records_pk_empty",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec("", b"x")]}),
            val,
        ),
        case(
            "put_records_pk_257",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec(&"k".repeat(257), b"x")]}),
            val,
        ),
        case(
            "put_records_pk_256_unicode",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec(&"é".repeat(256), b"x")]}),
            ok,
        ),
        case(
            "put_records_pk_257_unicode",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec(&"é".repeat(257), b"x")]}),
            val,
        ),
        case(
            "put_records_ehk_max",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec_ehk(&MAX_HASH_KEY.to_string())]}),
            ok,
        ),
        case(
            "put_records_ehk_too_big",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec_ehk("340282366920938463463374607431768211456")]}),
            inv,
        ),
        case(
            "put_records_ehk_negative",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec_ehk("-1")]}),
            inv,
        ),
        case(
            "put_records_ehk_not_number",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec_ehk("abc")]}),
            val,
        ),
        case(
            "put_records_record_1mib",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec("k", &vec![b'x'; 1 << 20])]}),
            ok,
        ),
        case(
            "put_records_record_over_1mib",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec("k", &vec![b'x'; (1 << 20) + 1])]}),
            val,
        ),
        case(
            "put_records_5mib_plus",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": vec![rec("k", &vec![b'x'; 1 << 20]); 5].into_iter().chain([rec("k", &[b'x'; 64])]).collect::<Vec<_>>()}),
            ok,
        ),
        case(
            "put_records_over_10mib",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": vec![rec("k", &vec![b'x'; 1 << 20]); 10].into_iter().chain([rec("k", &[b'x'; 64])]).collect::<Vec<_>>()}),
            inv,
        ),
        case(
            "put_records_ehk_leading_zero",
            "PutRecords",
            json!({"StreamName": STREAM, "Records": [rec_ehk("007")]}),
            val,
        ),
        case(
            "put_records_unknown_stream",
            "PutRecords",
            json!({"StreamName": "nope", "Records": [rec("a", b"x")]}),
            nf,
        ),
        case(
            "put_records_no_stream",
            "PutRecords",
            json!({"Records": [rec("a", b"x")]}),
            val,
        ),
        case(
            "put_records_by_arn",
            "PutRecords",
            json!({"StreamARN": arn, "Records": [rec("a", b"x")]}),
            ok,
        ),
        case(
            "put_record_ok",
            "PutRecord",
            json!({"StreamName": STREAM, "PartitionKey": "a", "Data": b64(b"x")}),
            ok,
        ),
        case(
            "put_record_pk_empty",
            "PutRecord",
            json!({"StreamName": STREAM, "PartitionKey": "", "Data": b64(b"x")}),
            val,
        ),
        case(
            "get_iterator_unknown_shard",
            "GetShardIterator",
            json!({"StreamName": STREAM, "ShardId": "shardId-000000000099", "ShardIteratorType": "TRIM_HORIZON"}),
            nf,
        ),
        case(
            "get_iterator_missing_seq",
            "GetShardIterator",
            json!({"StreamName": STREAM, "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_SEQUENCE_NUMBER"}),
            inv,
        ),
        case(
            "get_iterator_ok",
            "GetShardIterator",
            json!({"StreamName": STREAM, "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}),
            ok,
        ),
        case(
            "get_records_bad_iterator",
            "GetRecords",
            json!({"ShardIterator": "bogus"}),
            inv,
        ),
        case(
            "unknown_action",
            "FrobnicateStream",
            json!({}),
            (400, "UnknownOperationException"),
        ),
        Case {
            name: "malformed_json",
            action: "PutRecords",
            body: b"{not json".to_vec(),
            expect: (400, "SerializationException"),
        },
        case(
            "list_shards_bad_token_only",
            "ListShards",
            json!({"NextToken": "abc"}),
            inv,
        ),
        case(
            "update_distribution_provisioned",
            "UpdateStreamRecordDistributionStrategy",
            json!({"StreamARN": arn, "RecordDistributionStrategy": "AUTO"}),
            inv,
        ),
        case(
            "update_max_record_size_too_small",
            "UpdateMaxRecordSize",
            json!({"StreamARN": arn, "MaxRecordSizeInKiB": 1023}),
            val,
        ),
        case(
            "update_max_record_size",
            "UpdateMaxRecordSize",
            json!({"StreamARN": arn, "MaxRecordSizeInKiB": 2048}),
            ok,
        ),
    ]
}

fn outcome(status: u16, body: &Value) -> (u16, String) {
    let ty = body
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .unwrap_or_default();
    (status, if status == 200 { String::new() } else { ty })
}

fn show(o: &(u16, String)) -> String {
    if o.1.is_empty() {
        o.0.to_string()
    } else {
        format!("{} {}", o.0, o.1)
    }
}

async fn account(endpoint: &str) -> String {
    let (_, v) = call(
        endpoint,
        "DescribeStreamSummary",
        &json!({"StreamName": STREAM}),
    )
    .await;
    let arn = v["StreamDescriptionSummary"]["StreamARN"]
        .as_str()
        .unwrap_or("")
        .to_string();
    arn.split(':').nth(4).unwrap_or("").to_string()
}

async fn create_and_wait(endpoint: &str) {
    let (s, v) = call(
        endpoint,
        "CreateStream",
        &json!({"StreamName": STREAM, "ShardCount": SHARDS}),
    )
    .await;
    assert_eq!(s, 200, "CreateStream at {endpoint}: {v}");
    for _ in 0..100 {
        let (_, v) = call(
            endpoint,
            "DescribeStreamSummary",
            &json!({"StreamName": STREAM}),
        )
        .await;
        if v["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("stream never became ACTIVE at {endpoint}");
}

/// Runs the script; returns each case's outcome (None when not run).
async fn run_script(target: &str, endpoint: &str) -> Vec<Option<(u16, String)>> {
    create_and_wait(endpoint).await;
    let acct = account(endpoint).await;
    let mut out = Vec::new();
    for c in script() {
        let skip = KNOWN_DIFFERENCES
            .iter()
            .any(|d| d.0 == c.name && d.1 == target && d.2 == "not run");
        if skip {
            out.push(None);
            continue;
        }
        let body = String::from_utf8_lossy(&c.body).replace("{ACCOUNT}", &acct);
        let (status, raw) = call_raw(endpoint, c.action, body.as_bytes()).await;
        let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        out.push(Some(outcome(status, &v)));
    }
    out
}

/// Hash keys to route: label and decimal key.
fn routing_keys() -> Vec<(String, String)> {
    let mut keys = vec![
        ("0".to_string(), "0".to_string()),
        ("max".to_string(), MAX_HASH_KEY.to_string()),
    ];
    for i in 1..SHARDS {
        let (s, _) = uniform_range(i, SHARDS);
        keys.push((format!("start{i}"), s.to_string()));
        keys.push((format!("start{i}-1"), (s - 1).to_string()));
        keys.push((format!("start{i}+1"), (s + 1).to_string()));
    }
    keys
}

/// Shard index of every routing key and of 50 MD5-routed partition keys.
async fn routing(endpoint: &str) -> Vec<(String, String)> {
    let mut records: Vec<Value> = routing_keys().iter().map(|(_, k)| rec_ehk(k)).collect();
    records.extend((0..50).map(|i| rec(&format!("user-{i}"), b"r")));
    let (s, v) = call(
        endpoint,
        "PutRecords",
        &json!({"StreamName": STREAM, "Records": records}),
    )
    .await;
    assert_eq!(s, 200, "routing PutRecords at {endpoint}: {v}");
    let labels: Vec<String> = routing_keys()
        .into_iter()
        .map(|(l, _)| l)
        .chain((0..50).map(|i| format!("pk user-{i}")))
        .collect();
    labels
        .into_iter()
        .zip(v["Records"].as_array().unwrap())
        .map(|(l, r)| (l, r["ShardId"].as_str().unwrap_or("?").to_string()))
        .collect()
}

async fn ranges(endpoint: &str) -> Vec<(String, String)> {
    let (_, v) = call(endpoint, "ListShards", &json!({"StreamName": STREAM})).await;
    v["Shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["HashKeyRange"]["StartingHashKey"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                s["HashKeyRange"]["EndingHashKey"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_emulators() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let sim_ep = sim.endpoint_url();
    let (kl, km) = tokio::join!(
        start_or_skip(Emulator::Kinesalite),
        start_or_skip(Emulator::KinesisLocal)
    );
    let mut targets = vec![("kinesis-sim", sim_ep.clone())];
    if let Some(e) = &kl {
        targets.push(("kinesalite", e.endpoint_url()));
    }
    if let Some(e) = &km {
        targets.push(("kinesis-local", e.endpoint_url()));
    }

    let cases = script();
    let mut failures = Vec::new();
    let mut results = Vec::new();
    for (target, ep) in &targets {
        results.push((target, run_script(target, ep).await));
    }
    eprintln!(
        "{:<32} {}",
        "case",
        targets
            .iter()
            .map(|t| format!("{:<34}", t.0))
            .collect::<String>()
    );
    for (i, c) in cases.iter().enumerate() {
        let expect = (c.expect.0, c.expect.1.to_string());
        let mut row = format!("{:<32} ", c.name);
        for (target, res) in &results {
            let got = &res[i];
            row.push_str(&format!(
                "{:<34}",
                got.as_ref().map(show).unwrap_or("not run".into())
            ));
            let listed = KNOWN_DIFFERENCES
                .iter()
                .find(|d| d.0 == c.name && d.1 == **target);
            match (got, listed) {
                (None, _) => {}
                (Some(g), None) if *g != expect => failures.push(format!(
                    "{}: {target} gave {}, AWS reference {}",
                    c.name,
                    show(g),
                    show(&expect)
                )),
                (Some(g), Some(d)) if *g == expect => failures.push(format!(
                    "{}: {target} now matches AWS; remove the known difference ({})",
                    c.name, d.3
                )),
                (Some(g), Some(d)) if show(g) != d.2 => failures.push(format!(
                    "{}: {target} gave {}, table says {}",
                    c.name,
                    show(g),
                    d.2
                )),
                _ => {}
            }
        }
        eprintln!("{row}");
    }
    for d in KNOWN_DIFFERENCES {
        assert_ne!(
            d.1, "kinesis-sim",
            "kinesis-sim must follow the reference: {}",
            d.0
        );
    }

    // Routing and hash ranges agree across all three.
    let sim_routes = routing(&sim_ep).await;
    let sim_ranges = ranges(&sim_ep).await;
    for (target, ep) in &targets[1..] {
        let routes = routing(ep).await;
        for ((label, want), (_, got)) in sim_routes.iter().zip(&routes) {
            let quirk = ROUTING_QUIRKS
                .iter()
                .any(|q| q.0 == *target && q.1 == label);
            if want != got && !quirk {
                failures.push(format!(
                    "routing {label}: kinesis-sim {want}, {target} {got}"
                ));
            }
        }
        assert_eq!(routes.len(), sim_routes.len());
        let r = ranges(ep).await;
        let want: Vec<(String, String)> = if *target == "kinesis-local" {
            (0..SHARDS)
                .map(|i| {
                    let width = MAX_HASH_KEY / u128::from(SHARDS);
                    let s = u128::from(i) * width;
                    let e = if i + 1 == SHARDS {
                        MAX_HASH_KEY
                    } else {
                        s + width - 1
                    };
                    (s.to_string(), e.to_string())
                })
                .collect()
        } else {
            sim_ranges.clone()
        };
        if r[..SHARDS as usize] != want[..] {
            failures.push(format!("hash ranges differ: {target} {r:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
    drop((kl, km));
    sim.shutdown().await;
}
