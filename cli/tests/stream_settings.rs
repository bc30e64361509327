//! `kpl produce` follows the stream's settings and reports them: an `AUTO` stream from the
//! start (lines without a key are sent without one), and a switch to `AUTO` and back during a
//! run, seen in the report's `settings_changes`.

use assert_cmd::Command;
use kinesis_producer::deaggregate;
use kinesis_sim::{RecordDistribution, SimConfig, Simulator, StreamMode, StreamOptions};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON report ({e}): {stdout}"))
}

fn kpl() -> Command {
    let mut cmd = Command::cargo_bin("kpl").expect("binary");
    cmd.timeout(Duration::from_secs(120));
    cmd
}

#[test]
fn an_auto_stream_takes_lines_without_a_key_and_the_report_names_its_settings() {
    let mut input = tempfile::NamedTempFile::new().unwrap();
    for i in 0..300 {
        if i % 3 == 0 {
            writeln!(input, r#"{{"user":"u{i}","n":{i}}}"#).unwrap();
        } else {
            writeln!(input, r#"{{"n":{i}}}"#).unwrap();
        }
    }
    input.flush().unwrap();
    let report = run_json(
        kpl()
            .args([
                "produce",
                "--json",
                "--auto-distribution",
                "--format",
                "ndjson",
                "--key-field",
                "user",
                "--input",
            ])
            .arg(input.path()),
    );
    assert_eq!(report["records_put"], 300, "{report}");
    assert_eq!(report["aggregation"], true, "asked for, and off under AUTO");
    assert_eq!(
        report["kinesis_records_put"], 300,
        "each record alone: {report}"
    );
    let s = &report["stream_settings"];
    assert_eq!(s["mode"], "ON_DEMAND", "{report}");
    assert_eq!(s["record_distribution"], "AUTO", "{report}");
    assert_eq!(s["record_size_limit"], 1 << 20, "{report}");
    assert_eq!(
        report["settings_changes"],
        serde_json::json!([]),
        "{report}"
    );
    // Keyless lines cost no key bytes: 200 of them, each a few bytes of JSON.
    let keyed_bytes: u64 = (0..300)
        .filter(|i| i % 3 == 0)
        .map(|i| format!(r#"{{"user":"u{i}","n":{i}}}"#).len() + format!("u{i}").len())
        .sum::<usize>() as u64;
    let unkeyed_bytes: u64 = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| format!(r#"{{"n":{i}}}"#).len())
        .sum::<usize>() as u64;
    assert_eq!(report["bytes_put"], keyed_bytes + unkeyed_bytes, "{report}");
}

#[test]
fn a_switch_to_auto_and_back_during_a_run_is_followed_and_reported() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sim = rt.block_on(Simulator::start(SimConfig::default())).unwrap();
    sim.create_stream_with(
        "switch",
        StreamOptions {
            mode: StreamMode::OnDemand,
            ..StreamOptions::new(2)
        },
    )
    .unwrap();
    let url = sim.endpoint_url();
    let mut input = tempfile::NamedTempFile::new().unwrap();
    for i in 0..60_000 {
        writeln!(input, "{i:08}{}", "x".repeat(192)).unwrap();
    }
    input.flush().unwrap();
    let path = input.path().to_owned();
    // About 12 MiB at 2 MiB/s: the run lasts several seconds; the switch comes 1.5 s in and
    // is undone 1.5 s later.
    let run = std::thread::spawn(move || {
        run_json(
            kpl()
                .args([
                    "produce",
                    "--json",
                    "--endpoint-url",
                    &url,
                    "--stream",
                    "switch",
                    "--settings-refresh-ms",
                    "300",
                    "--input",
                ])
                .arg(&path),
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    sim.set_record_distribution("switch", RecordDistribution::Auto)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    sim.set_record_distribution("switch", RecordDistribution::UserPartitionKey)
        .unwrap();
    let report = run.join().expect("kpl ran");
    assert_eq!(report["records_put"], 60000, "{report}");
    assert_eq!(
        report["stream_settings"]["record_distribution"],
        "USER_PARTITION_KEY"
    );
    let changes: Vec<&str> = report["settings_changes"]
        .as_array()
        .expect("settings_changes")
        .iter()
        .map(|c| c["record_distribution"].as_str().expect("distribution"))
        .collect();
    assert_eq!(changes, ["AUTO", "USER_PARTITION_KEY"], "{report}");
    let at: Vec<f64> = report["settings_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["at_secs"].as_f64().unwrap())
        .collect();
    assert!(at[0] > 1.0 && at[1] > at[0], "{at:?}");
    // What the stream stored: every generated record once, as KCL reads it (a sub-record is
    // visible only inside its shard's range), copies beyond that only from stranded re-sends.
    let ranges: std::collections::HashMap<String, (u128, u128)> = sim
        .shards("switch")
        .into_iter()
        .map(|s| (s.shard_id, (s.starting_hash_key, s.ending_hash_key)))
        .collect();
    let mut visible = std::collections::HashSet::new();
    for r in sim.records("switch") {
        let subs = deaggregate(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            bytes::Bytes::from(r.data.clone()),
        )
        .expect("decodes");
        let aggregated = subs.len() > 1;
        for s in subs {
            let key = kinesis_producer::HashKey::from_partition_key(&s.partition_key).0;
            let (lo, hi) = ranges[&r.shard_id];
            if !aggregated || (lo..=hi).contains(&key) {
                visible.insert(s.data);
            }
        }
    }
    assert_eq!(visible.len(), 60000, "every record visible to a KCL reader");
    rt.block_on(sim.shutdown());
}
