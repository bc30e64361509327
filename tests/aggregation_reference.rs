//! Cross-check of the aggregation format against an independent implementation: the PyPI
//! package `aws-kinesis-agg`, run from the venv at `<target dir>/pyenv` through
//! `tests/support/agg_reference.py`.
//!
//! If the venv is missing, `scripts/setup-test-deps.sh` is run once. If it still cannot be had,
//! the tests fail when `CI=true` and are skipped (with a message on stderr) otherwise.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kinesis_producer::aggregation::{deaggregate, Aggregate, Aggregator, TryPush, MAGIC};
use kinesis_producer::DeaggregateError;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => Path::new(MANIFEST_DIR).join(dir),
        None => Path::new(MANIFEST_DIR).join("target"),
    }
}

fn venv_works(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import six, aws_kinesis_agg.deaggregator, aws_kinesis_agg.aggregator",
        ])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The venv's python, installing it first if needed; `None` means skip.
fn python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let python = target_dir().join("pyenv/bin/python");
        if venv_works(&python) {
            return Ok(python);
        }
        let script = Path::new(MANIFEST_DIR).join("scripts/setup-test-deps.sh");
        let setup = Command::new("bash").arg(&script).status();
        if venv_works(&python) {
            Ok(python)
        } else {
            Err(format!(
                "aws-kinesis-agg is not available at {} (ran {}: {:?})",
                python.display(),
                script.display(),
                setup
            ))
        }
    });
    match found {
        Ok(python) => Some(python.clone()),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and the reference decoder is missing: {why}")
        }
        Err(why) => {
            eprintln!("skipping the aws-kinesis-agg cross-check: {why}");
            None
        }
    }
}

/// A directory under the test's own temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the helper script on `json` and returns its output lines split on tabs.
fn run_reference(python: &Path, command: &str, json: &str) -> Vec<Vec<String>> {
    let dir = TempDir::new(command);
    let input = dir.0.join("input.json");
    std::fs::write(&input, json).expect("write input");
    let script = Path::new(MANIFEST_DIR).join("tests/support/agg_reference.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(command)
        .arg(&input)
        .output()
        .expect("run python");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "agg_reference.py {command} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn unhex_str(s: &str) -> String {
    String::from_utf8(unhex(s)).expect("utf-8 key")
}

type UserRecord = (String, Option<String>, Vec<u8>);

/// A mixed workload: Unicode keys (some repeated, one of 256 characters), empty data,
/// explicit hash keys on some records, more than 128 distinct keys.
fn user_records() -> Vec<UserRecord> {
    let unicode = ["ключ-1", "鍵", "🦀 crab", "plain", "a\"quote\\", "ñ"];
    let long_key: String = "é🦀字".chars().cycle().take(256).collect();
    let mut records = Vec::new();
    for i in 0..700usize {
        let pk = match i % 10 {
            0..=3 => unicode[i % unicode.len()].to_owned(),
            4 if i % 70 == 4 => long_key.clone(),
            _ => format!("key-{}", i % 150),
        };
        let ehk = match i % 4 {
            0 => Some(format!("{}", (i as u128 % 5) * (u128::MAX / 5))),
            1 if i % 3 == 0 => Some(u128::MAX.to_string()),
            _ => None,
        };
        let len = if i % 9 == 0 { 0 } else { (i * 37) % 900 };
        let data = (0..len).map(|b| (b * 31 + i) as u8).collect();
        records.push((pk, ehk, data));
    }
    records
}

/// Aggregates `records` in order, `max_size` each; every aggregate holds at least 2 records.
fn aggregate_all(records: &[UserRecord], max_size: usize) -> Vec<Aggregate> {
    let mut agg = Aggregator::new(max_size, usize::MAX);
    let mut out = Vec::new();
    for (pk, ehk, data) in records {
        if agg.try_push(pk, ehk.as_deref(), data) == TryPush::NoCapacity {
            out.extend(agg.finish());
            assert_eq!(agg.try_push(pk, ehk.as_deref(), data), TryPush::Added);
        }
    }
    out.extend(agg.finish());
    out
}

#[test]
fn our_aggregates_decode_with_aws_kinesis_agg() {
    let Some(python) = python() else { return };
    let records = user_records();
    let mut aggregates = aggregate_all(&records[..40], 1 << 20); // one aggregate
    aggregates.extend(aggregate_all(&records[40..], 51_200)); // several
    aggregates.extend(aggregate_all(&records[..1], 1 << 20)); // a single record
    assert!(aggregates.len() >= 5, "{} aggregates", aggregates.len());
    let mut expected: Vec<&[UserRecord]> = Vec::new();
    let mut at = 0;
    for (i, a) in aggregates.iter().enumerate() {
        if i == aggregates.len() - 1 {
            at = 0; // the single-record aggregate starts over
        }
        expected.push(&records[at..at + a.count]);
        at += a.count;
    }

    let mut json = String::from("{\"aggregates\": [");
    for (i, a) in aggregates.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        write!(
            json,
            "{{\"partition_key\": {}, \"data\": \"{}\"}}",
            json_string(&a.partition_key),
            base64(&a.data)
        )
        .unwrap();
    }
    json.push_str("]}");

    let lines = run_reference(&python, "decode", &json);
    let mut lines = lines.iter();
    for (i, expected) in expected.iter().enumerate() {
        let head = lines.next().expect("AGG line");
        assert_eq!(head[..2], ["AGG", &i.to_string()]);
        assert_eq!(
            head[2],
            expected.len().to_string(),
            "aggregate {i}: user record count"
        );
        assert_eq!(
            head[3], "1",
            "aggregate {i}: not recognised as an aggregate"
        );
        assert_eq!(head[4], "1", "aggregate {i}: MD5 trailer rejected");
        for (j, (pk, ehk, data)) in expected.iter().enumerate() {
            let rec = lines.next().expect("REC line");
            assert_eq!(
                rec[..4],
                ["REC", &i.to_string(), &j.to_string(), &j.to_string()]
            );
            assert_eq!(
                &unhex_str(&rec[4]),
                pk,
                "aggregate {i} record {j}: partition key"
            );
            assert_eq!(&unhex(&rec[5]), data, "aggregate {i} record {j}: data");
            let got_ehk = (rec[6] != "-").then(|| unhex_str(&rec[6]));
            assert_eq!(&got_ehk, ehk, "aggregate {i} record {j}: explicit hash key");
        }
    }
    assert!(lines.next().is_none(), "unexpected extra output");
}

#[test]
fn python_aggregates_decode_with_ours() {
    let Some(python) = python() else { return };
    let records = user_records();
    for max_size in [51_200, 4_000] {
        let mut json = format!("{{\"max_size\": {max_size}, \"records\": [");
        for (i, (pk, ehk, data)) in records.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            let ehk = ehk.as_deref().map_or("null".to_owned(), json_string);
            write!(
                json,
                "{{\"partition_key\": {}, \"explicit_hash_key\": {ehk}, \"data\": \"{}\"}}",
                json_string(pk),
                base64(data)
            )
            .unwrap();
        }
        json.push_str("]}");

        let lines = run_reference(&python, "encode", &json);
        assert!(
            lines.len() >= 2,
            "expected several aggregates, got {}",
            lines.len()
        );
        let mut decoded = Vec::new();
        for line in &lines {
            assert_eq!(line[0], "AGG");
            let data = Bytes::from(unhex(&line[2]));
            assert_eq!(data[..4], MAGIC, "python output is not an aggregate");
            let users = deaggregate(&unhex_str(&line[1]), None, data).expect("valid aggregate");
            assert_eq!(users.len().to_string(), line[3]);
            for (j, user) in users.into_iter().enumerate() {
                assert_eq!(user.sub_sequence_number, j as u64);
                decoded.push((
                    user.partition_key,
                    user.explicit_hash_key,
                    user.data.to_vec(),
                ));
            }
        }
        assert_eq!(decoded, records, "max_size {max_size}");
    }
}

/// One reading of a Kinesis record: passed on whole, decoded into (partition key, data) pairs,
/// or (ours only) refused.
#[derive(Debug, PartialEq)]
enum Reading {
    Plain,
    Users(Vec<(Vec<u8>, Vec<u8>)>),
    Refused(String),
}

/// Broken aggregates: named edge cases, then seeded mutations of real aggregates (bytes
/// flipped, cut, inserted, removed), each with the MD5 recomputed half of the time.
fn broken_aggregates() -> Vec<(String, Vec<u8>)> {
    use kinesis_producer::aggregation::testing::{filled, framed};
    let ok: &[u8] = &[0x0A, 0x01, b'k', 0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00];
    let with = |head: &[u8]| framed(&[head, ok].concat()).to_vec();
    let good = framed(ok).to_vec();
    let flip = |at: usize| {
        let mut d = good.clone();
        d[at] ^= 1;
        d
    };
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("well formed".into(), good.clone()),
        ("bad MD5".into(), flip(good.len() - 1)),
        ("bad magic".into(), flip(3)),
        ("protobuf byte changed, old MD5".into(), flip(6)),
        ("20 bytes".into(), framed(b"").to_vec()),
        (
            "truncated protobuf".into(),
            framed(&ok[..ok.len() - 1]).to_vec(),
        ),
        ("truncated tag".into(), framed(&[0x80]).to_vec()),
        (
            "length past the end".into(),
            framed(&[0x0A, 0x05, b'a']).to_vec(),
        ),
        (
            "eleven-byte varint".into(),
            with(&[&[0x28][..], &[0xFF; 10], &[1]].concat()),
        ),
        (
            "tenth varint byte 2".into(),
            with(&[&[0x28][..], &[0xFF; 9], &[2]].concat()),
        ),
        ("field 0".into(), with(&[0x02, 0x00])),
        ("wire type 7".into(), with(&[0x27])),
        ("group".into(), with(&[0x23, 0x28, 0x01, 0x24])),
        ("unmatched end group".into(), with(&[0x24])),
        ("table with varint wire type".into(), with(&[0x08, 0x01])),
        ("no record".into(), framed(&[0x0A, 0x01, b'k']).to_vec()),
        (
            "tag not a message".into(),
            framed(&[0x0A, 1, b'k', 0x1A, 8, 8, 0, 0x1A, 0, 0x22, 2, 0xFF, 0xFF]).to_vec(),
        ),
        (
            "pk index out of range".into(),
            framed(&[ok, &[0x1A, 4, 8, 1, 0x1A, 0][..]].concat()).to_vec(),
        ),
        (
            "missing data (python differs)".into(),
            framed(&[0x0A, 1, b'k', 0x1A, 2, 8, 0]).to_vec(),
        ),
    ];
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for n in 0..400 {
        for r in 0..(next() % 5 + 1) {
            let pk = format!("key-{}", next() % 7);
            let ehk = (next() % 3 == 0).then(|| (next() % 1000).to_string());
            let data = filled((next() % 30) as usize, next());
            assert_eq!(
                agg.try_push(&pk, ehk.as_deref(), &data),
                TryPush::Added,
                "{r}"
            );
        }
        let data = agg.finish().unwrap().data;
        let mut protobuf = data[MAGIC.len()..data.len() - 16].to_vec();
        for _ in 0..(next() % 3 + 1) {
            if protobuf.is_empty() {
                break;
            }
            let at = (next() % protobuf.len() as u64) as usize;
            match next() % 4 {
                0 => protobuf[at] ^= next() as u8 | 1,
                1 => protobuf.truncate(at),
                2 => protobuf.insert(at, next() as u8),
                _ => {
                    protobuf.remove(at);
                }
            }
        }
        let mut bytes = framed(&protobuf).to_vec();
        if n % 2 == 1 {
            bytes.splice(bytes.len() - 16.., data[data.len() - 16..].iter().copied());
        }
        cases.push((format!("mutation {n}"), bytes));
    }
    cases
}

fn our_reading(data: &[u8]) -> Reading {
    match deaggregate("outer", None, Bytes::copy_from_slice(data)) {
        Ok(users)
            if users.len() == 1 && users[0].data == data && users[0].partition_key == "outer" =>
        {
            Reading::Plain
        }
        Ok(users) => Reading::Users(
            users
                .into_iter()
                .map(|u| (u.partition_key.into_bytes(), u.data.to_vec()))
                .collect(),
        ),
        Err(e) => Reading::Refused(e.to_string()),
    }
}

/// Our `deaggregate` against aws-kinesis-agg's `iter_deaggregate_records` on the same broken
/// bytes. Where they differ the difference must be one of the three documented ones.
#[test]
fn broken_aggregates_read_as_aws_kinesis_agg_reads_them() {
    let Some(python) = python() else { return };
    let cases = broken_aggregates();
    let mut json = String::from("{\"records\": [");
    for (i, (_, data)) in cases.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        write!(
            json,
            "{{\"partition_key\": \"outer\", \"data\": \"{}\"}}",
            base64(data)
        )
        .unwrap();
    }
    json.push_str("]}");
    let lines = run_reference(&python, "consume", &json);
    let mut lines = lines.iter().peekable();
    // Kinds of documented difference seen, by name.
    let mut differences: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut agreed = [0usize; 3];
    for (i, (name, data)) in cases.iter().enumerate() {
        let out = lines.next().expect("OUT line");
        assert_eq!(out[..2], ["OUT", &i.to_string()]);
        let count: usize = out[2].parse().unwrap();
        let logged_error = out[3] == "1";
        let mut users = Vec::new();
        let mut flagged = Vec::new();
        for j in 0..count {
            let u = lines.next().expect("USER line");
            assert_eq!(u[..3], ["USER", &i.to_string(), &j.to_string()]);
            flagged.push(u[3] == "1");
            users.push((unhex(&u[4]), unhex(&u[5])));
        }
        let theirs = if count == 1 && !flagged[0] {
            assert_eq!(
                (&users[0].0[..], &users[0].1),
                (&b"outer"[..], data),
                "{name}"
            );
            Reading::Plain
        } else {
            assert!(flagged.iter().all(|&f| f), "{name}: mixed flags");
            Reading::Users(users)
        };
        let ours = our_reading(data);
        if ours == theirs && !logged_error {
            agreed[match ours {
                Reading::Plain => 0,
                Reading::Users(_) => 1,
                Reading::Refused(_) => 2,
            }] += 1;
            continue;
        }
        let strict =
            kinesis_producer::deaggregate_strict("outer", None, Bytes::copy_from_slice(data));
        let kind = match (&ours, &strict) {
            // The references deliver the records before the bad index and log an error.
            (Reading::Refused(e), _) if e.contains("refers to entry") && logged_error => {
                "index out of range: python delivers a prefix and logs"
            }
            // aws-kinesis-agg never looks up explicit hash keys.
            (Reading::Refused(e), _) if e.contains("explicit_hash_key_table") && !logged_error => {
                "explicit hash key index out of range: python ignores it"
            }
            (Reading::Refused(e), _) if e.contains("UTF-8") => "key not UTF-8: python passes bytes",
            // The KCL's protobuf enforces required fields; Python's upb fills in defaults.
            (Reading::Plain, Err(DeaggregateError::MissingField { .. })) => {
                "missing required field: python fills in defaults"
            }
            _ => panic!(
                "{name}: ours {ours:?}, aws-kinesis-agg {theirs:?} (error logged: {logged_error})"
            ),
        };
        *differences.entry(kind).or_default() += 1;
    }
    assert!(lines.next().is_none(), "unexpected extra output");
    // Seeded input, so exact counts: 400 mutations and 19 named cases.
    assert_eq!(agreed, [390, 21, 0], "agreed (plain, decoded, refused)");
    let expected: std::collections::BTreeMap<&str, usize> = [
        ("explicit hash key index out of range: python ignores it", 2),
        ("index out of range: python delivers a prefix and logs", 1),
        ("key not UTF-8: python passes bytes", 3),
        ("missing required field: python fills in defaults", 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(differences, expected);
}
