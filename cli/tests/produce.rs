//! `kpl produce` end to end: the binary against its embedded simulator, on small inputs.

use assert_cmd::Command;
use serde_json::Value;
use std::io::Write;

fn kpl() -> Command {
    let mut cmd = Command::cargo_bin("kpl").expect("binary");
    cmd.timeout(std::time::Duration::from_secs(60));
    cmd
}

/// Runs with `--json`; returns the exit code, the report and stderr.
fn run_json(cmd: &mut Command) -> (i32, Value, String) {
    let out = cmd.arg("--json").output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}): {stdout}\nstderr: {stderr}"));
    (out.status.code().expect("exit code"), report, stderr)
}

fn file(contents: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(contents).unwrap();
    f.flush().unwrap();
    f
}

fn n(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

/// The per-shard figures add up to the totals, and no failure is listed.
fn assert_consistent(report: &Value) {
    let shards = report["shards"].as_array().expect("shards");
    let sum = |field: &str| -> u64 { shards.iter().map(|s| s[field].as_u64().unwrap()).sum() };
    assert_eq!(
        sum("kinesis_records_put"),
        n(report, "kinesis_records_put"),
        "{report}"
    );
    assert_eq!(sum("bytes_put"), n(report, "kinesis_bytes_put"), "{report}");
    assert_eq!(sum("throttles"), n(report, "throttles"), "{report}");
    if report["success"] == true {
        assert_eq!(report["failures"], serde_json::json!({}), "{report}");
        assert_eq!(n(report, "records_failed"), 0);
        assert_eq!(n(report, "records_put"), n(report, "records_added"));
    }
}

#[test]
fn lines_from_a_file() {
    let input = file(b"alpha\nbeta\r\n\ngamma\ndelta");
    let (code, report, stderr) = run_json(
        kpl()
            .args(["produce", "--input"])
            .arg(input.path())
            .args(["--shards", "2"]),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["success"], true);
    assert_eq!(n(&report, "records_read"), 4, "blank line skipped");
    assert_eq!(n(&report, "records_added"), 4);
    assert_eq!(n(&report, "records_put"), 4);
    assert_eq!(n(&report, "records_failed"), 0);
    assert_eq!(n(&report, "invalid_lines"), 0);
    // 5+4+5+5 data bytes and 16-character random keys.
    assert_eq!(n(&report, "bytes_put"), 19 + 4 * 16);
    assert_eq!(report["shards"].as_array().unwrap().len(), 2);
    assert!(report["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    // Four records well within the limits: nothing throttled or retried.
    assert_eq!((n(&report, "throttles"), n(&report, "retries")), (0, 0));
    assert!(n(&report, "requests") >= 1);
    assert_consistent(&report);
}

#[test]
fn ndjson_from_stdin_with_key_field() {
    let mut input = String::new();
    for i in 0..200 {
        input.push_str(&format!("{{\"user\":\"u{}\",\"n\":{i}}}\n", i % 7));
    }
    input.push_str("{\"n\":\"no user: random key\"}\n");
    let conflict = kpl()
        .args([
            "produce",
            "--format",
            "ndjson",
            "--key-field",
            "user",
            "--key",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(
        conflict.status.code(),
        Some(2),
        "--key conflicts with --key-field"
    );
    let (code, report, stderr) = run_json(
        kpl()
            .args(["produce", "--format", "ndjson", "--key-field", "user"])
            .write_stdin(input.clone()),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["success"], true);
    assert_eq!(n(&report, "records_read"), 201);
    assert_eq!(n(&report, "records_put"), 201);
    assert_eq!(n(&report, "invalid_lines"), 0);
    assert_eq!(report["aggregation"], true);
    assert!(n(&report, "kinesis_records_put") < 201, "aggregated");
    // Each line is the data; keys "u0".."u6" (2 bytes), and a 16-character random key for the
    // line without a user.
    let data: usize = input.lines().map(str::len).sum();
    assert_eq!(n(&report, "bytes_put"), (data + 200 * 2 + 16) as u64);
    assert_consistent(&report);
}

#[test]
fn ndjson_lines_go_to_the_stream_they_name() {
    let mut input = String::new();
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..120 {
        let to = ["east", "west", "", "missing"][i % 4];
        let name = if to.is_empty() { "kpl-demo" } else { to };
        *expected.entry(name).or_insert(0u64) += 1;
        if to.is_empty() {
            input.push_str(&format!("{{\"k\":\"u{i}\"}}\n"));
        } else {
            input.push_str(&format!("{{\"k\":\"u{i}\",\"to\":\"{to}\"}}\n"));
        }
    }
    let lines_only = kpl()
        .args(["produce", "--stream-field", "to"])
        .write_stdin("x\n")
        .output()
        .unwrap();
    assert_eq!(
        lines_only.status.code(),
        Some(2),
        "--stream-field needs NDJSON"
    );
    let (code, report, stderr) = run_json(
        kpl()
            .args(["produce", "--format", "ndjson", "--key-field", "k"])
            .args(["--stream-field", "to", "--extra-stream", "east"])
            .args(["--extra-stream", "west", "--shards", "2"])
            .write_stdin(input),
    );
    assert_eq!(code, 1, "the missing stream's records fail: {stderr}");
    assert_eq!(report["success"], false);
    let rows: std::collections::BTreeMap<String, (u64, u64)> = report["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|r| {
            let name = r["stream"].as_str().unwrap().to_string();
            (name, (n(r, "records_put"), n(r, "records_failed")))
        })
        .collect();
    let want: std::collections::BTreeMap<String, (u64, u64)> = expected
        .iter()
        .map(|(name, count)| {
            let row = if *name == "missing" {
                (0, *count)
            } else {
                (*count, 0)
            };
            (name.to_string(), row)
        })
        .collect();
    assert_eq!(rows, want, "one row per stream: {report}");
    assert_eq!(
        report["failures"]["ResourceNotFoundException"]["count"], expected["missing"],
        "{report}"
    );
    assert_eq!(n(&report, "records_put"), 90);
}

#[test]
fn generated_load() {
    let (code, report, stderr) = run_json(kpl().args([
        "produce",
        "--generate",
        "3000",
        "--record-size",
        "64",
        "--keys",
        "50",
        "--aggregation",
        "off",
        "--max-buffered-time-ms",
        "20",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(n(&report, "records_put"), 3000);
    assert_eq!(n(&report, "records_added"), 3000);
    assert_eq!(n(&report, "kinesis_records_put"), 3000, "aggregation off");
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4);
    let per_shard: u64 = shards
        .iter()
        .map(|s| s["kinesis_records_put"].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, 3000);
    assert!(shards
        .iter()
        .all(|s| s["utilization_percent"].as_f64().unwrap() > 0.0));
    // Keys "key-0".."key-49" (5 or 6 bytes, drawn at random): between the two bounds.
    let bytes = n(&report, "bytes_put");
    assert!((3000 * 69..=3000 * 70).contains(&bytes), "{bytes}");
    // Aggregation off: a Kinesis record is a user record, byte for byte.
    assert_eq!(n(&report, "kinesis_bytes_put"), bytes);
    assert_eq!(report["success"], true);
    // 3,000 records in requests of at most 500.
    assert!(n(&report, "requests") >= 6, "{report}");
    assert_consistent(&report);
    assert!(report["records_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn aggregation_scope_partition_key_gives_one_aggregate_per_key() {
    // Keys a, b, c interleaved on one shard; a long linger, so every record is queued before
    // the end of input flushes them: one aggregate in all, or one per key.
    let mut input = String::new();
    for i in 0..60 {
        input.push_str(&format!(
            "{{\"k\":\"{}\",\"n\":{i}}}\n",
            ["a", "b", "c"][i % 3]
        ));
    }
    let run = |scope: &[&str]| {
        run_json(
            kpl()
                .args(["produce", "--format", "ndjson", "--key-field", "k"])
                .args(["--shards", "1", "--max-buffered-time-ms", "10000"])
                .args(scope)
                .write_stdin(input.clone()),
        )
    };
    let (code, report, stderr) = run(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["aggregation_scope"], "shard", "the default");
    assert_eq!(n(&report, "kinesis_records_put"), 1, "{report}");
    let (code, report, stderr) = run(&["--aggregation-scope", "partition-key"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["aggregation_scope"], "partition-key");
    assert_eq!(n(&report, "records_put"), 60);
    assert_eq!(n(&report, "kinesis_records_put"), 3, "{report}");
    assert_consistent(&report);

    let out = kpl()
        .args(["produce", "--format", "ndjson", "--key-field", "k"])
        .args(["--shards", "1", "--aggregation-scope", "partition-key"])
        .write_stdin(input.clone())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("aggregation on (one partition key per aggregate)"),
        "{text}"
    );
    let out = kpl()
        .args(["produce", "--generate", "1", "--aggregation-scope", "key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown scope: a usage error");
}

#[test]
fn bad_lines_are_reported_counted_and_fail_the_exit_status() {
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"k\":\"a\",\"v\":1}\n"); // 1 ok
    input.extend_from_slice(b"{\"k\":\"b\",\n"); // 2 unparsable
    input.extend_from_slice(b"{\"v\":3}\n"); // 3 missing key (required)
    input.extend_from_slice(b"{\"k\":\"c\",\"h\":\"-5\"}\n"); // 4 bad explicit hash key
    input.extend_from_slice(b"{\"k\":\"d\",\"pad\":\""); // 5 over the 1 MiB record limit
    input.extend_from_slice(&vec![b'x'; 1 << 20]);
    input.extend_from_slice(b"\"}\n");
    input.extend_from_slice(b"{\"k\":\"e\",\"h\":\"42\"}\n"); // 6 ok
    let input = file(&input);
    let (code, report, stderr) = run_json(
        kpl()
            .args(["produce", "--format", "ndjson", "--key-field", "k"])
            .args(["--require-key", "--ehk-field", "h", "--input"])
            .arg(input.path()),
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(report["success"], false);
    assert_eq!(n(&report, "records_read"), 6);
    assert_eq!(n(&report, "invalid_lines"), 4);
    assert_eq!(n(&report, "records_put"), 2, "good lines still produced");
    for line in [
        "line 2: invalid JSON",
        "line 3: key field",
        "line 4: ",
        "line 5: ",
    ] {
        assert!(stderr.contains(line), "{line:?} in stderr: {stderr}");
    }
    assert!(stderr.contains("explicit_hash_key"), "{stderr}");
    assert!(stderr.contains("record limit"), "{stderr}");
    let lines: Vec<u64> = report["invalid_examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 4, 5]);
}

#[test]
fn faults_are_retried_and_reported() {
    let (code, report, stderr) = run_json(kpl().args([
        "produce",
        "--generate",
        "1000",
        "--aggregation",
        "off",
        "--internal-failure-rate",
        "0.3",
        "--http-503-rate",
        "0.2",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(n(&report, "records_put"), 1000);
    assert_eq!(report["success"], true);
    assert!(n(&report, "retries") > 0, "{report}");
    assert!(report["target"].as_str().unwrap().contains("faults"));
    // Aggregation off: every record stored once, whatever the retries.
    assert_eq!(n(&report, "kinesis_records_put"), 1000);
    assert_consistent(&report);
}

#[test]
fn failures_are_listed_by_code() {
    // A TTL shorter than any retry schedule under constant failure: records expire.
    let (code, report, stderr) = run_json(kpl().args([
        "produce",
        "--generate",
        "50",
        "--internal-failure-rate",
        "1",
        "--ttl-ms",
        "300",
        "--show-failures",
        "2",
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(n(&report, "records_put"), 0);
    assert_eq!(n(&report, "records_failed"), 50);
    assert_eq!(
        (n(&report, "bytes_put"), n(&report, "kinesis_records_put")),
        (0, 0)
    );
    assert_consistent(&report);
    let group = &report["failures"]["RecordExpired"];
    assert_eq!(group["count"], 50, "{report}");
    let examples = group["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 2);
    assert!(examples[0]["message"]
        .as_str()
        .unwrap()
        .contains("InternalFailure"));
}

#[test]
fn human_report() {
    let out = kpl()
        .args(["produce", "--generate", "100", "--shards", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for part in [
        "all records put",
        "records put       100 of 100",
        "records/s",
        "MiB/s",
        "p99",
        "shardId-000000000000",
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }
}

#[test]
fn usage_errors() {
    let out = kpl()
        .args([
            "produce",
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--stream",
            "s",
        ])
        .args(["--shards", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards"));
    let out = kpl()
        .args(["produce", "--endpoint-url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--stream required");
    let out = kpl()
        .args(["produce", "--internal-failure-rate", "1.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unreachable_endpoint_is_a_setup_error() {
    let out = kpl()
        .args([
            "produce",
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--stream",
            "s",
        ])
        .args(["--generate", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"));
}

/// Five NDJSON lines of 0.5, 3, 4.9, 7 and 9.9 MiB into a stream whose records may be 10 MiB:
/// all five are put (before, the two largest were refused at `add` against a 5 MiB cap and the
/// others failed with them at the simulator).
#[test]
fn large_lines_on_a_stream_that_allows_them() {
    let mib = 1usize << 20;
    let mut input = Vec::new();
    let mut total = 0u64;
    for (i, size) in [mib / 2, 3 * mib, 49 * mib / 10, 7 * mib, 99 * mib / 10]
        .into_iter()
        .enumerate()
    {
        let prefix = format!(r#"{{"k":"key{i}","pad":""#);
        let line = format!("{prefix}{}\"}}", "x".repeat(size - prefix.len() - 2));
        assert_eq!(line.len(), size);
        total += (line.len() + format!("key{i}").len()) as u64;
        input.extend_from_slice(line.as_bytes());
        input.push(b'\n');
    }
    let input = file(&input);
    let (code, report, stderr) = run_json(
        kpl()
            .args(["produce", "--format", "ndjson", "--key-field", "k"])
            .args(["--max-record-size-kib", "10240", "--input"])
            .arg(input.path()),
    );
    assert_eq!(code, 0, "{report}\n{stderr}");
    assert_eq!(n(&report, "records_put"), 5, "{report}");
    assert_eq!(n(&report, "record_size_limit"), 10 << 20);
    assert_eq!(n(&report, "bytes_put"), total);
    assert_consistent(&report);
}
