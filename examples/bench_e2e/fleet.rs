//! `bench_e2e fleet`: N producers that do not know of each other on one stream (issue 14).
//!
//! Each producer has its own engine and SDK client (separate instances of a service), all on
//! one in-process kinesis-sim with limits on; the offered load is split evenly. Once a second
//! the scenario reads the simulator's counters and each producer's `stats()`, and computes
//! every figure from the measured time between two such snapshots.

use super::*;

/// One tracked record in this many: its add-to-ack latency is sampled.
const LATENCY_SAMPLE: u64 = 64;
/// Window over which the join/leave figures must be back within bounds.
const SETTLED_WINDOW: usize = 5;

/// Adds records at `rate` per second until `stop`; one in [`LATENCY_SAMPLE`] is tracked.
async fn feed(
    producer: Producer,
    load: (Arc<Vec<String>>, Bytes),
    rate: f64,
    stop: Arc<AtomicBool>,
    latencies: Latencies,
    offset: usize,
) {
    let (keys, data) = load;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let n = keys.len();
    let stride = 7919 % n.max(1);
    let mut k = offset % n.max(1);
    while !stop.load(AtomicOrdering::Relaxed) {
        let target = (start.elapsed().as_secs_f64() * rate) as u64;
        if sent >= target {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        for _ in 0..(target - sent).min(4096) {
            let record = UserRecord::new(keys[k].as_str(), data.clone());
            k += stride;
            if k >= n {
                k -= n;
            }
            if sent.is_multiple_of(LATENCY_SAMPLE) {
                let t0 = Instant::now();
                let Ok(pending) = producer.add(record).await else {
                    return;
                };
                let lat = latencies.clone();
                tokio::spawn(async move {
                    if pending.await.is_ok() {
                        lat.lock()
                            .expect("latencies")
                            .push((t0, t0.elapsed().as_secs_f64()));
                    }
                });
            } else if producer.add_untracked(record).await.is_err() {
                return;
            }
            sent += 1;
            if stop.load(AtomicOrdering::Relaxed) {
                return;
            }
        }
    }
}

struct Member {
    producer: Producer,
    stop: Arc<AtomicBool>,
    /// Seconds since the start when it began and stopped feeding.
    joined: f64,
    left: Option<f64>,
}

/// One second of the run: simulator counters and each member's records put.
struct Sample {
    t: f64,
    counters: StreamCounters,
    put: Vec<Option<u64>>,
    factor: Vec<Option<f64>>,
}

/// Figures over samples `a..b`: (utilization per shard, throttled fraction, Jain's index
/// of the members present throughout, their accepted user records/s).
fn figures(samples: &[Sample], a: usize, b: usize) -> (Vec<f64>, f64, f64, Vec<f64>) {
    let secs = samples[b].t - samples[a].t;
    let d = deltas(&samples[a].counters, &samples[b].counters);
    let util: Vec<f64> = d
        .iter()
        .map(|x| (x.1 / secs / MIB).max(x.0 / secs / SHARD_RECORDS))
        .collect();
    let accepted: f64 = d.iter().map(|x| x.0).sum();
    let throttled: f64 = d.iter().map(|x| x.2).sum();
    let rates: Vec<f64> = samples[a]
        .put
        .iter()
        .zip(&samples[b].put)
        .filter_map(|(x, y)| Some((y.as_ref()? - x.as_ref()?) as f64 / secs))
        .collect();
    let sum: f64 = rates.iter().sum();
    let squares: f64 = rates.iter().map(|x| x * x).sum();
    let jain = if squares > 0.0 {
        sum * sum / (rates.len() as f64 * squares)
    } else {
        f64::NAN
    };
    (
        util,
        throttled / (accepted + throttled).max(1.0),
        jain,
        rates,
    )
}

fn within_bounds(samples: &[Sample], a: usize, b: usize) -> bool {
    let (util, throttled, jain, _) = figures(samples, a, b);
    min_mean(&util).0 >= 0.95 && throttled <= 0.02 && jain >= 0.95
}

/// Seconds after the sample at `event` until a [`SETTLED_WINDOW`] starts that is within
/// bounds (and the following ones up to `end` as well, stepping by the window).
fn reconverge(samples: &[Sample], event: usize, end: usize) -> Option<f64> {
    (event..end.saturating_sub(SETTLED_WINDOW))
        .find(|&i| {
            (i..end.saturating_sub(SETTLED_WINDOW))
                .step_by(SETTLED_WINDOW)
                .all(|j| within_bounds(samples, j, j + SETTLED_WINDOW))
        })
        .map(|i| samples[i].t - samples[event].t)
}

pub fn scenario_fleet(o: &Opts) {
    let n = o.producers.unwrap_or(8).max(1);
    let env = start_env(o, true);
    let rt = producer_runtime();
    let load = Load::new(o);
    let offered = o.load.unwrap_or(2.0);
    let each = load.capacity(o) * offered / n as f64;
    let latencies: Latencies = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let spawn = |i: usize| -> Member {
        // Each producer its own client (connection pool) and engine, as separate instances.
        let b = Producer::builder()
            .stream_name(o.stream.clone())
            .aggregation(o.aggregation)
            .shutdown_timeout(Duration::from_secs(1))
            .client(client(&env.endpoint));
        let producer = rt.block_on(b).expect("build producer");
        let stop = Arc::new(AtomicBool::new(false));
        rt.spawn(feed(
            producer.clone(),
            (load.keys.clone(), load.data.clone()),
            each,
            stop.clone(),
            latencies.clone(),
            i * 977,
        ));
        Member {
            producer,
            stop,
            joined: start.elapsed().as_secs_f64(),
            left: None,
        }
    };
    let mut members: Vec<Member> = (0..n).map(spawn).collect();
    let join_at = o.seconds / 3.0;
    let leave_at = 2.0 * o.seconds / 3.0;
    let (mut joined, mut left) = (None, None);
    let mut samples: Vec<Sample> = Vec::new();
    let mut series = o
        .series
        .as_ref()
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("series file")));
    let mut tick = 0u64;
    loop {
        tick += 1;
        let at = start + Duration::from_secs(tick);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let t = start.elapsed().as_secs_f64();
        if o.join_leave && joined.is_none() && t >= join_at {
            members.push(spawn(members.len()));
            joined = Some(samples.len());
        }
        if o.join_leave && left.is_none() && t >= leave_at {
            let m = &mut members[0];
            m.stop.store(true, AtomicOrdering::Relaxed);
            m.left = Some(t);
            let p = m.producer.clone();
            rt.spawn(async move {
                let _ = p.shutdown().await;
            });
            left = Some(samples.len());
        }
        let counters = env.counters(&o.stream).expect("in-process simulator");
        let active = |m: &Member| m.left.is_none() && m.joined < t - 1.0;
        let put = members
            .iter()
            .map(|m| active(m).then(|| m.producer.stats().records_put))
            .collect();
        let factor = members
            .iter()
            .map(|m| {
                active(m).then(|| {
                    let s = m.producer.stats();
                    s.shards.iter().map(|x| x.rate_factor).sum::<f64>()
                        / s.shards.len().max(1) as f64
                })
            })
            .collect();
        samples.push(Sample {
            t,
            counters,
            put,
            factor,
        });
        if let (Some(w), [.., a, b]) = (series.as_mut(), samples.as_slice()) {
            use std::io::Write as _;
            let secs = b.t - a.t;
            let (util, throttled, _, _) = figures(&samples, samples.len() - 2, samples.len() - 1);
            let rates: Vec<String> = a
                .put
                .iter()
                .zip(b.put.iter().chain(std::iter::repeat(&None)))
                .map(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) => format!("{}", ((y - x) as f64 / secs).round()),
                    _ => "null".into(),
                })
                .chain(b.put.iter().skip(a.put.len()).map(|_| "null".to_string()))
                .collect();
            let factors: Vec<String> = b
                .factor
                .iter()
                .map(|f| f.map_or("null".into(), |f| format!("{}", r3(f))))
                .collect();
            let _ = writeln!(
                w,
                "{{\"t\":{},\"rates\":[{}],\"rate_factor\":[{}],\"throttle_fraction\":{},\
                 \"utilization_min\":{}}}",
                r3(b.t),
                rates.join(","),
                factors.join(","),
                (throttled * 1e5).round() / 1e5,
                r3(min_mean(&util).0),
            );
        }
        if t >= o.seconds {
            break;
        }
    }
    for m in &members {
        m.stop.store(true, AtomicOrdering::Relaxed);
        let s = m.producer.stats();
        let f: Vec<String> = s
            .shards
            .iter()
            .map(|x| format!("{:.2}", x.rate_factor))
            .collect();
        let t: Vec<String> = s
            .shards
            .iter()
            .map(|x| format!("{}", x.throttles))
            .collect();
        eprintln!("rate factors {} throttles {}", f.join(" "), t.join(" "));
    }
    drop(series);
    // The measured window: after the warm-up; with join/leave, the steady part before
    // the join is reported on its own, and reconvergence after each event.
    let w = o.warmup.unwrap_or(10.0);
    let first = samples.iter().position(|s| s.t >= w).unwrap_or(0);
    let last = samples.len() - 1;
    let steady_end = if o.join_leave {
        joined.unwrap_or(last)
    } else {
        last
    };
    let (util, throttled, jain, rates) = figures(&samples, first, steady_end);
    let (umin, umean) = min_mean(&util);
    let xs = latencies_ms(&latencies, start, w);
    let stats: Vec<Stats> = members.iter().map(|m| m.producer.stats()).collect();
    let (put, failed, krecords, throttles) = sum_stats(&stats);
    let expired: u64 = stats.iter().map(|s| s.records_expired).sum();
    let mut fields = format!(
        "\"scenario\":\"fleet\",\"aggregation\":{},\"producers\":{n},\"shards\":{},\
         \"record_size\":{},\"seconds\":{},\"warmup\":{w},\"throttle_model\":\"{}\",\
         \"offered_load\":{offered},\"offered_records_per_sec_each\":{},\
         \"records_put\":{put},\"records_failed\":{failed},\"records_expired\":{expired},\
         \"kinesis_records\":{krecords},\"producer_throttles\":{throttles},\
         \"window_s\":{},\"shard_utilization\":{},\"producer_records_per_sec\":{},\
         \"utilization_min\":{},\"utilization_mean\":{},\"throttle_fraction\":{},\
         \"fairness_jain\":{},\"latency_samples\":{},\"p50_ms\":{},\"p99_ms\":{}",
        o.aggregation,
        o.shards,
        o.record_size,
        o.seconds,
        o.throttle_model.as_str(),
        each.round(),
        r3(samples[steady_end].t - samples[first].t),
        json_list(&util),
        json_list(&rates.iter().map(|r| r.round()).collect::<Vec<_>>()),
        r3(umin),
        r3(umean),
        (throttled * 1e5).round() / 1e5,
        r3(jain),
        xs.len(),
        r3(percentile(&xs, 0.5)),
        r3(percentile(&xs, 0.99)),
    );
    if let (Some(j), Some(l)) = (joined, left) {
        let after_join = reconverge(&samples, j, l);
        let after_leave = reconverge(&samples, l, last + 1);
        let show = |x: Option<f64>| x.map_or("null".to_string(), |x| format!("{}", r3(x)));
        let worst = match (after_join, after_leave) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        fields.push_str(&format!(
            ",\"join_at_s\":{},\"leave_at_s\":{},\"reconverge_join_s\":{},\
             \"reconverge_leave_s\":{},\"reconverge_s\":{}",
            r3(samples[j].t),
            r3(samples[l].t),
            show(after_join),
            show(after_leave),
            show(worst),
        ));
    }
    println!("{{{fields}}}");
    rt.block_on(async {
        for m in &members {
            let _ = m.producer.shutdown().await;
        }
    });
    drop(members);
    env.shutdown();
    drop(rt);
}
