//! Aggregation, stranded sub-records after a split, AUTO distribution.

use super::*;

#[test]
fn aggregates_records_of_one_shard_and_reports_positions() {
    let mut h = Harness::new(2, agg_config());
    let mut rxs: Vec<Rx> = (0..5)
        .map(|i| h.add_to(0, 2, &format!("k{i}"), "data"))
        .collect();
    let mut other = h.add_to(1, 2, "lonely", "x");
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    assert_eq!(
        req.records.len(),
        2,
        "one aggregate for shard 0, one plain record for shard 1"
    );
    let agg = req
        .records
        .iter()
        .find(|r| r.data.starts_with(&crate::aggregation::MAGIC))
        .unwrap();
    assert_eq!(agg.partition_key, "k0");
    assert_eq!(
        agg.explicit_hash_key.as_deref(),
        Some("0"),
        "outer hash key inside shard 0"
    );
    let plain = req
        .records
        .iter()
        .find(|r| r.partition_key == "lonely")
        .unwrap();
    assert_eq!(&plain.data[..], b"x", "a single record is sent raw");
    let subs = crate::aggregation::deaggregate(&agg.partition_key, None, agg.data.clone()).unwrap();
    assert_eq!(subs.len(), 5);
    h.ok_all(id, &req, 2);
    let mut sequence_numbers = Vec::new();
    for (i, rx) in rxs.iter_mut().enumerate() {
        let out = outcome(rx).unwrap();
        assert_eq!(out.sub_sequence_number, Some(i as u64));
        sequence_numbers.push(out.sequence_number);
    }
    // The aggregate's sequence number, made once and shared by its sub-records' outcomes.
    let expected = match ok_entry(agg, 2) {
        PutRecordsResultEntry::Ok {
            sequence_number, ..
        } => sequence_number,
        other => panic!("{other:?}"),
    };
    assert_eq!(&*sequence_numbers[0], expected.as_str());
    assert!(sequence_numbers
        .iter()
        .all(|s| Arc::ptr_eq(s, &sequence_numbers[0])));
    assert_eq!(outcome(&mut other).unwrap().sub_sequence_number, None);
}

#[test]
fn aggregate_size_limit_is_exact() {
    let cfg = ProducerConfig {
        aggregation_max_size: 1_000,
        ..agg_config()
    };
    let mut h = Harness::new(1, cfg);
    for i in 0..50 {
        h.add_to(0, 1, &format!("key-{i}"), &"x".repeat(90));
    }
    h.add_to(0, 1, "big", &"y".repeat(5_000)); // too large to share an aggregate
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    let records: Vec<&PutRecordsEntry> = sent.iter().flat_map(|(_, r)| &r.records).collect();
    let mut subs = 0;
    for r in &records {
        if r.partition_key == "big" {
            assert_eq!(r.data.len(), 5_000, "sent alone, raw");
            continue;
        }
        assert!(r.data.len() + r.partition_key.len() <= 1_000);
        subs += crate::aggregation::deaggregate(&r.partition_key, None, r.data.clone())
            .unwrap()
            .len();
    }
    assert_eq!(subs, 50);
}

#[test]
fn stranded_sub_records_are_resent_after_a_split() {
    let mut h = Harness::new(1, agg_config());
    let half = 1u128 << 127;
    let keys = [1u128, half - 1, half, u128::MAX];
    let mut rxs: Vec<Rx> = keys
        .iter()
        .map(|&k| {
            h.add(
                UserRecord::new(format!("k{k}"), "d").with_explicit_hash_key(k.to_string()),
                HashKey(k),
            )
        })
        .collect();
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    assert_eq!(req.records.len(), 1, "one aggregate");
    // the shard was split meanwhile: the aggregate (outer key 1) landed on the lower child,
    // which the producer's map does not know yet
    let child = PutRecordsResultEntry::Ok {
        shard_id: "shardId-000000000001".into(),
        sequence_number: "77".into(),
    };
    h.engine.on_response(id, Ok(vec![child]), h.now);
    assert!(
        pending(&mut rxs[0]),
        "parked until the map says the child's range"
    );
    assert!(h.poll_refresh());
    h.engine.on_shard_map(Ok(split_in_two()), h.now);
    for rx in &mut rxs[..2] {
        let out = outcome(rx).unwrap();
        assert_eq!(&*out.shard_id, "shardId-000000000001");
    }
    assert_eq!(
        h.engine
            .telemetry
            .stats
            .stranded_resent
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll_after_window().pop().unwrap();
    assert_eq!(
        req.records.len(),
        2,
        "the two stranded records, each plain: an aggregate could be stranded again"
    );
    assert!(req
        .records
        .iter()
        .all(|r| r.explicit_hash_key.is_some() && r.data.as_ref() == b"d"));
    let results = vec![
        PutRecordsResultEntry::Ok {
            shard_id: "shardId-000000000002".into(),
            sequence_number: "78".into(),
        };
        2
    ];
    h.engine.on_response(id, Ok(results), h.now);
    for rx in &mut rxs[2..] {
        let out = outcome(rx).unwrap();
        assert_eq!(&*out.shard_id, "shardId-000000000002");
        assert_eq!(out.attempts.len(), 2);
        assert_eq!(out.attempts[0].error_code.as_deref(), Some(STRANDED_CODE));
    }
}

#[test]
fn auto_distribution_limits_stream_wide_and_never_predicts() {
    // AUTO: the service ignores keys, so one stream-wide limiter of 4 shards' budget.
    let cfg = ProducerConfig {
        aggregation: true,
        ..config()
    };
    let mut h = Harness::with_prediction(4, cfg, false);
    assert_eq!(h.engine.shards.len(), 1);
    assert!(!h.engine.s.aggregation, "aggregation is off under AUTO");
    let mut rxs: Vec<Rx> = (0..5_000)
        .map(|i| h.add_to(0, 4, &format!("k{i}"), "x"))
        .collect();
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    let total: usize = sent.iter().map(|(_, r)| r.records.len()).sum();
    assert_eq!(
        total, 4_000,
        "four shards' one-second burst, whatever the keys"
    );
    for (id, req) in &sent {
        // stored anywhere: no misprediction
        let results = req
            .records
            .iter()
            .map(|_| PutRecordsResultEntry::Ok {
                shard_id: "shardId-000000000003".into(),
                sequence_number: "1".into(),
            })
            .collect();
        h.engine.on_response(*id, Ok(results), h.now);
    }
    assert!(outcome(&mut rxs[0]).is_ok());
    assert!(!h.poll_refresh(), "no refresh: nothing is predicted");
}

#[test]
fn auto_distribution_scales_bytes_too_and_follows_a_reshard() {
    let cfg = ProducerConfig {
        max_request_bytes: Some(10 << 20),
        ..config()
    };
    let mut h = Harness::with_prediction(4, cfg, false);
    // Four shards' bytes: 4 MiB at once, then nothing until the bucket refills.
    let mut rxs: Vec<Rx> = (0..8)
        .map(|i| h.add_to(0, 4, &format!("k{i}"), &"x".repeat(1 << 19)))
        .collect();
    h.advance(Duration::from_millis(100));
    let sent = h.poll_after_window();
    let bytes: usize = sent
        .iter()
        .flat_map(|(_, r)| &r.records)
        .map(|r| r.data.len())
        .sum();
    assert!(
        (3 << 20..=4 << 20).contains(&bytes),
        "the stream's 4 MiB/s, whatever the keys: {bytes}"
    );
    for (id, req) in &sent {
        h.ok_all(*id, req, 4);
    }
    for rx in rxs
        .iter_mut()
        .take(sent.iter().map(|(_, r)| r.records.len()).sum())
    {
        assert!(outcome(rx).is_ok());
    }
    // The stream doubles: the stream-wide limiter doubles with it.
    h.engine.on_shard_map(Ok(shards(8)), h.now);
    let _more: Vec<Rx> = (0..12_000)
        .map(|i| h.add_to(0, 8, &format!("m{i}"), "y"))
        .collect();
    h.advance(Duration::from_secs(2));
    let sent = h.poll_after_window();
    let records: usize = sent.iter().map(|(_, r)| r.records.len()).sum();
    assert!(
        records >= 8_000,
        "eight shards' records once the bucket refilled: {records}"
    );
}

#[test]
fn admission_is_capped_by_what_the_stream_takes_in_half_the_ttl() {
    let plain = Harness::new(4, config());
    assert_eq!(
        plain.engine.admission.cap(),
        (4 * 1_000 * 15, 4 * (1 << 20) * 15),
        "4 shards × (1,000 records/s, 1 MiB/s) × 15 s"
    );
    let aggregated = Harness::new(4, agg_config_limited());
    assert_eq!(
        aggregated.engine.admission.cap(),
        (200_000, 60 << 20),
        "aggregated: the record rate does not bind user records"
    );
    let auto = Harness::with_prediction(4, config(), false);
    assert_eq!(
        auto.engine.admission.cap(),
        (60_000, 60 << 20),
        "AUTO: one pseudo-shard with the whole stream's rate"
    );
}

fn agg_config_limited() -> ProducerConfig {
    ProducerConfig {
        aggregation: true,
        ..config()
    }
}

/// Below the full rate (here slow start, from 1/32 of a shard's 1 MiB/s) aggregates are bounded
/// to `aggregate_cap` of the factor in force; at the full rate, to the configured size again.
#[test]
fn aggregates_shrink_with_the_rate_factor() {
    let cfg = ProducerConfig {
        adaptive_rate: true,
        ..agg_config_limited()
    };
    let mut h = Harness::new(1, cfg);
    // The largest Kinesis record sent for 400 records of 100 bytes, and the largest cap in
    // force meanwhile (the factor only grows in slow start).
    let largest = |h: &mut Harness| {
        for i in 0..400 {
            h.add_to(0, 1, &format!("key-{i}"), &"x".repeat(100));
        }
        h.advance(Duration::from_millis(100));
        let mut sizes = Vec::new();
        for _ in 0..400 {
            for (id, req) in h.poll() {
                sizes.extend(
                    req.records
                        .iter()
                        .map(|r| r.data.len() + r.partition_key.len()),
                );
                h.ok_all(id, &req, 1);
            }
            if h.engine.ledger.held() == 0 {
                break;
            }
            h.advance(Duration::from_millis(10));
        }
        let factor = h.engine.rate.factor(h.now);
        let cap = crate::limiter::control::aggregate_cap(factor, 1_048_576.0, 51_200);
        (sizes.into_iter().max().expect("sent"), cap)
    };
    let (small, cap) = largest(&mut h);
    assert!(small <= cap && cap < 20_000, "{small} vs {cap}");
    h.advance(crate::limiter::control::WINDOW * 20);
    assert_eq!(h.engine.rate.factor(h.now), 1.0);
    let (full, cap) = largest(&mut h);
    assert_eq!(cap, 51_200);
    assert!(full > 30_000, "{full}");
}
