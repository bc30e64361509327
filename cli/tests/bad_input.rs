//! Bad input through `kpl produce` (NDJSON, embedded simulator), complementing
//! `produce.rs::bad_lines_are_reported_counted_and_fail_the_exit_status` (invalid JSON, missing
//! key, negative hash key, over-limit record): the key and hash key edge cases of the
//! library's `add`, each line refused with its line number and a reason naming the field, or
//! produced exactly as the API allows, while the good lines around it are produced.

use assert_cmd::Command;
use serde_json::{json, Value};
use std::io::Write;

#[test]
fn key_and_hash_key_edge_cases() {
    // (line, accepted?, words the refusal must contain)
    let cases: Vec<(Value, bool, &[&str])> = vec![
        (json!({"k": ""}), false, &["partition_key", "empty"]),
        (
            json!({"k": "k".repeat(257)}),
            false,
            &["partition_key", "257", "256"],
        ),
        (
            json!({"k": "😀".repeat(257)}),
            false,
            &["partition_key", "257", "256"],
        ),
        (json!({"k": "😀".repeat(256)}), true, &[]),
        (json!({"k": "é".repeat(256)}), true, &[]),
        (json!({"k": "\u{0}\u{1}\t\u{7f}"}), true, &[]),
        (json!({"k": 12345}), true, &[]),
        (json!({"k": "a", "h": "0"}), true, &[]),
        (json!({"k": "a", "h": 0}), true, &[]),
        (
            json!({"k": "a", "h": "340282366920938463463374607431768211455"}),
            true,
            &[],
        ),
        (
            json!({"k": "a", "h": "340282366920938463463374607431768211456"}),
            false,
            &["explicit_hash_key", "2^128 - 1"],
        ),
        (
            json!({"k": "a", "h": -1}),
            false,
            &["explicit_hash_key", "'-'"],
        ),
        (
            json!({"k": "a", "h": "abc"}),
            false,
            &["explicit_hash_key", "'a'"],
        ),
        (
            json!({"k": "a", "h": " 12"}),
            false,
            &["explicit_hash_key", "' '"],
        ),
        (
            json!({"k": "a", "h": "1 2"}),
            false,
            &["explicit_hash_key", "' '"],
        ),
        (
            json!({"k": "a", "h": "007"}),
            false,
            &["explicit_hash_key", "leading zero"],
        ),
        (
            json!({"k": "a", "h": 1.5}),
            false,
            &["explicit_hash_key", "'.'"],
        ),
    ];
    let mut input = Vec::new();
    let mut expect_ok = 0;
    let mut bad_lines = Vec::new();
    let mut line = 0u64;
    for (value, accepted, words) in &cases {
        // A good line before each case: it must be produced whatever follows.
        line += 1;
        expect_ok += 1;
        writeln!(input, "{}", json!({"k": format!("good-{line}"), "v": line})).unwrap();
        line += 1;
        writeln!(input, "{value}").unwrap();
        if *accepted {
            expect_ok += 1;
        } else {
            bad_lines.push((line, *words));
        }
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&input).unwrap();
    file.flush().unwrap();
    let out = Command::cargo_bin("kpl")
        .unwrap()
        .timeout(std::time::Duration::from_secs(120))
        .args([
            "produce",
            "--format",
            "ndjson",
            "--key-field",
            "k",
            "--require-key",
        ])
        .args(["--ehk-field", "h", "--json", "--input"])
        .arg(file.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}): {stdout}\nstderr: {stderr}"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad lines fail the run: {stderr}"
    );
    assert_eq!(report["records_read"].as_u64(), Some(line), "{report}");
    assert_eq!(
        report["invalid_lines"].as_u64(),
        Some(bad_lines.len() as u64),
        "{report}\n{stderr}"
    );
    assert_eq!(
        report["records_put"].as_u64(),
        Some(expect_ok),
        "every good and every allowed line produced: {report}\n{stderr}"
    );
    for (n, words) in bad_lines {
        let echoed = stderr
            .lines()
            .find(|l| l.contains(&format!("line {n}: ")))
            .unwrap_or_else(|| panic!("line {n} not reported: {stderr}"));
        for w in words {
            assert!(echoed.contains(w), "line {n}: {echoed:?} lacks {w:?}");
        }
    }
}
