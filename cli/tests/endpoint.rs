//! `kpl produce --endpoint-url` against a kinesis-sim started in this process, with the
//! producer options that only show in what the endpoint stored or saw: `--ordering`,
//! `--rate-limit-percent` and `--max-in-flight` (through a counting proxy in front of the
//! simulator).

use assert_cmd::Command;
use bytes::Bytes;
use kinesis_producer::deaggregate;
use kinesis_sim::{parse_sequence_number, Faults, SimConfig, Simulator};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// A simulator on its own runtime (the test thread runs the `kpl` binary meanwhile).
struct Sim {
    rt: Runtime,
    sim: Simulator,
}

fn sim(stream: &str, shards: u32) -> Sim {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sim = rt.block_on(Simulator::start(SimConfig::default())).unwrap();
    sim.create_stream(stream, shards).unwrap();
    Sim { rt, sim }
}

fn kpl(url: &str, stream: &str) -> Command {
    let mut cmd = Command::cargo_bin("kpl").expect("binary");
    cmd.timeout(Duration::from_secs(120));
    cmd.args([
        "produce",
        "--json",
        "--endpoint-url",
        url,
        "--stream",
        stream,
    ]);
    cmd
}

fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON report ({e}): {stdout}"))
}

fn n(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

/// One user record as stored: shard, sequence number, position in its aggregate, key, data.
type Stored = (String, u64, u64, String, Bytes);

fn stored(sim: &Simulator, stream: &str) -> Vec<Stored> {
    let mut out = Vec::new();
    for r in sim.records(stream) {
        let seq = parse_sequence_number(&r.sequence_number).expect("sequence number");
        let subs = deaggregate(
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
            Bytes::from(r.data),
        )
        .expect("stored records decode");
        for (i, sub) in subs.into_iter().enumerate() {
            out.push((
                r.shard_id.clone(),
                seq,
                i as u64,
                sub.partition_key,
                sub.data,
            ));
        }
    }
    out.sort();
    out
}

/// NDJSON lines `{"k":"k<i % keys>","n":<i>,"pad":"xx.."}` and the (key, data) pairs they
/// make.
fn ndjson(count: usize, keys: usize, pad: usize) -> (String, Vec<(String, Bytes)>) {
    let mut text = String::new();
    let mut records = Vec::new();
    for i in 0..count {
        let line = format!(
            "{{\"k\":\"k{}\",\"n\":{i},\"pad\":\"{}\"}}",
            i % keys,
            "x".repeat(pad)
        );
        text.push_str(&line);
        text.push('\n');
        records.push((format!("k{}", i % keys), Bytes::from(line)));
    }
    (text, records)
}

#[test]
fn endpoint_url_run_stores_exactly_the_input() {
    let stream = "external";
    let s = sim(stream, 3);
    let (text, mut want) = ndjson(600, 25, 0);
    let input = file(&text);
    let report = run_json(
        kpl(&s.sim.endpoint_url(), stream)
            .args(["--format", "ndjson", "--key-field", "k", "--input"])
            .arg(input.path()),
    );
    assert_eq!(report["success"], true);
    assert!(report["target"]
        .as_str()
        .unwrap()
        .contains(&s.sim.endpoint_url()));
    assert_eq!(report["stream"], stream);
    assert_eq!(n(&report, "records_read"), 600);
    assert_eq!(n(&report, "records_added"), 600);
    assert_eq!(n(&report, "records_put"), 600);
    assert_eq!(n(&report, "records_failed"), 0);
    let user_bytes: usize = want.iter().map(|(k, d)| k.len() + d.len()).sum();
    assert_eq!(n(&report, "bytes_put"), user_bytes as u64);
    // What the endpoint holds is exactly the input, once each.
    let mut got: Vec<(String, Bytes)> = stored(&s.sim, stream)
        .into_iter()
        .map(|(_, _, _, k, d)| (k, d))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // The report's Kinesis figures are the endpoint's.
    let kinesis = s.sim.records(stream);
    assert_eq!(n(&report, "kinesis_records_put"), kinesis.len() as u64);
    let kinesis_bytes: usize = kinesis
        .iter()
        .map(|r| r.partition_key.len() + r.data.len())
        .sum();
    assert_eq!(n(&report, "kinesis_bytes_put"), kinesis_bytes as u64);
    let shards = report["shards"].as_array().unwrap();
    let mut per_shard: BTreeMap<String, u64> = BTreeMap::new();
    for r in &kinesis {
        *per_shard.entry(r.shard_id.clone()).or_default() += 1;
    }
    let reported: BTreeMap<String, u64> = shards
        .iter()
        .map(|s| {
            (
                s["shard_id"].as_str().unwrap().to_string(),
                s["kinesis_records_put"].as_u64().unwrap(),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    assert_eq!(reported, per_shard);
    s.rt.block_on(s.sim.shutdown());
}

#[test]
fn ordering_per_shard_stores_each_key_in_input_order_under_failures() {
    let stream = "ordered";
    let s = sim(stream, 2);
    s.sim
        .set_faults(
            stream,
            Faults {
                internal_failure_rate: 0.3,
                ..Faults::default()
            },
        )
        .unwrap();
    // 500-byte lines, 5 MB: ordered aggregates hold up to 256 KiB, so about 20 of them; with
    // 30 % of Kinesis records failing, the faults hit (all 20 pass with probability 0.08 %).
    const LINES: u64 = 10_000;
    let (text, _) = ndjson(LINES as usize, 10, 470);
    let input = file(&text);
    let report = run_json(
        kpl(&s.sim.endpoint_url(), stream)
            .args(["--format", "ndjson", "--key-field", "k"])
            // Aggregation on (the default): a shard's part of a request is one aggregate that
            // succeeds or fails whole, and is retried before anything newer of its shard.
            .args(["--ordering", "per-shard", "--max-buffered-time-ms", "20"])
            .args(["--ttl-ms", "120000", "--input"])
            .arg(input.path()),
    );
    assert_eq!(n(&report, "records_put"), LINES);
    assert!(n(&report, "retries") > 0, "the faults hit: {report}");
    // Storage order (shard, sequence number) per key is input order, each record once.
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, _, _, key, data) in stored(&s.sim, stream) {
        let v: Value = serde_json::from_slice(&data).unwrap();
        by_key
            .entry(key)
            .or_default()
            .push(v["n"].as_u64().unwrap());
    }
    assert_eq!(by_key.len(), 10);
    for (key, ns) in by_key {
        let k: u64 = key[1..].parse().unwrap();
        let want: Vec<u64> = (0..LINES / 10).map(|j| j * 10 + k).collect();
        assert_eq!(ns, want, "{key}: stored in input order");
    }
    s.rt.block_on(s.sim.shutdown());
}

#[test]
fn rate_limit_percent_holds_each_shard_near_that_share() {
    let stream = "half";
    let s = sim(stream, 2);
    let report = run_json(kpl(&s.sim.endpoint_url(), stream).args([
        "--generate",
        "3000",
        "--record-size",
        "10",
        "--keys",
        "400",
        "--aggregation",
        "off",
        "--rate-limit-percent",
        "50",
    ]));
    assert_eq!(n(&report, "records_put"), 3_000);
    assert_eq!(n(&report, "throttles"), 0, "half the limit never throttles");
    assert_eq!(s.sim.counters(stream).throttled_records(), 0);
    // Per shard: records accepted per second once the bucket's initial burst is spent.
    let mut arrivals: HashMap<String, Vec<f64>> = HashMap::new();
    for r in s.sim.records(stream) {
        let t = r.arrival.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        arrivals.entry(r.shard_id).or_default().push(t);
    }
    assert_eq!(arrivals.len(), 2);
    for (shard, mut ts) in arrivals {
        ts.sort_by(f64::total_cmp);
        let from = ts[0] + 1.0;
        let last = *ts.last().unwrap();
        assert!(last - from >= 0.5, "{shard}: too short a window to measure");
        let rate = ts.iter().filter(|&&t| t > from).count() as f64 / (last - from);
        // Shard limit 1,000 records/s: half is 500.
        assert!(
            (400.0..=600.0).contains(&rate),
            "{shard}: {rate:.0} records/s"
        );
    }
    s.rt.block_on(s.sim.shutdown());
}

/// Most PutRecords requests in flight at once, as seen by a proxy in front of the simulator.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
    put_requests: AtomicUsize,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 message (head and a Content-Length body) from `conn` into `buf`;
/// returns its length, or `None` at the end of the connection.
async fn read_message(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(head_end + len)
}

/// A proxy on 127.0.0.1 in front of `upstream` (host:port) that counts PutRecords requests in
/// flight. One upstream connection per client connection, one request at a time on each (as
/// HTTP/1.1 without pipelining does).
async fn counting_proxy(upstream: String, counts: Arc<InFlight>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (upstream, counts) = (upstream.clone(), counts.clone());
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut from_client, mut from_server) = (Vec::new(), Vec::new());
                while let Some(len) = read_message(&mut client, &mut from_client).await {
                    let request: Vec<u8> = from_client.drain(..len).collect();
                    let put = find(&request, b"Kinesis_20131202.PutRecords").is_some();
                    if put {
                        counts.put_requests.fetch_add(1, Ordering::SeqCst);
                        let now = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
                        counts.max.fetch_max(now, Ordering::SeqCst);
                    }
                    let answered = match server.write_all(&request).await {
                        Ok(()) => read_message(&mut server, &mut from_server).await,
                        Err(_) => None,
                    };
                    if put {
                        counts.now.fetch_sub(1, Ordering::SeqCst);
                    }
                    let Some(len) = answered else { return };
                    let response: Vec<u8> = from_server.drain(..len).collect();
                    if client.write_all(&response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn max_in_flight_bounds_the_requests_under_way() {
    for (max_in_flight, stream) in [(1usize, "one-at-a-time"), (3, "three-at-a-time")] {
        let s = sim(stream, 4);
        // Every request takes 300 ms at the simulator: requests overlap whenever allowed.
        s.sim
            .set_faults(
                stream,
                Faults {
                    latency: Duration::from_millis(300),
                    ..Faults::default()
                },
            )
            .unwrap();
        let counts = Arc::new(InFlight::default());
        let upstream = s.sim.local_addr().to_string();
        let url = s.rt.block_on(counting_proxy(upstream, counts.clone()));
        let report = run_json(kpl(&url, stream).args([
            "--generate",
            "3000",
            "--record-size",
            "10",
            "--aggregation",
            "off",
            "--max-in-flight",
            &max_in_flight.to_string(),
        ]));
        assert_eq!(n(&report, "records_put"), 3_000);
        assert_eq!(s.sim.records(stream).len(), 3_000);
        let max = counts.max.load(Ordering::SeqCst);
        assert_eq!(
            counts.put_requests.load(Ordering::SeqCst) as u64,
            n(&report, "requests"),
            "the proxy saw every request"
        );
        if max_in_flight == 1 {
            assert_eq!(max, 1, "one request at a time");
        } else {
            assert!(
                (2..=max_in_flight).contains(&max),
                "{max} in flight with --max-in-flight {max_in_flight}"
            );
        }
        s.rt.block_on(s.sim.shutdown());
    }
}
