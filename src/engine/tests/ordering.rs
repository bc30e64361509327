//! Map changes and per-shard ordering.

use super::*;

#[test]
fn refresh_moves_queued_records_to_the_new_shards() {
    let mut h = Harness::new(1, config());
    let mut rxs: Vec<Rx> = (0..4u32)
        .map(|i| {
            let hash = even_range(i, 4).0;
            h.add(
                UserRecord::new(format!("k{i}"), "x").with_explicit_hash_key(hash.to_string()),
                HashKey(hash),
            )
        })
        .collect();
    let mut new_shards = shards(4);
    new_shards.push(ShardInfo {
        id: "shardId-000000000000".into(),
        start: 0,
        end: u128::MAX,
        open: false,
    });
    // rename the children so that the parent is gone from the open set
    for (i, s) in new_shards.iter_mut().take(4).enumerate() {
        s.id = format!("shardId-00000000010{i}").into();
    }
    h.engine.on_shard_map(Ok(new_shards), h.now);
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll().pop().unwrap();
    assert_eq!(req.records.len(), 4);
    let results = req
        .records
        .iter()
        .map(|r| {
            let key: u128 = r.explicit_hash_key.as_ref().unwrap().parse().unwrap();
            let i = (0..4).find(|&i| even_range(i, 4).0 == key).unwrap();
            PutRecordsResultEntry::Ok {
                shard_id: format!("shardId-00000000010{i}").into(),
                sequence_number: "1".into(),
            }
        })
        .collect();
    h.engine.on_response(id, Ok(results), h.now);
    for rx in &mut rxs {
        assert!(outcome(rx).is_ok());
    }
    assert!(!h.poll_refresh(), "predictions matched the new map");
}

#[test]
fn per_shard_ordering_one_request_in_flight_per_shard() {
    let cfg = ProducerConfig {
        ordering: Ordering::PerShard,
        ..config()
    };
    let mut h = Harness::new(2, cfg);
    let mut a1 = h.add_to(0, 2, "a", "1");
    let mut a2 = h.add_to(0, 2, "a", "2");
    let mut b1 = h.add_to(1, 2, "b", "1");
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    let (id, req) = &sent[0];
    let keys: Vec<(&str, &[u8])> = req
        .records
        .iter()
        .map(|r| (r.partition_key.as_str(), &r.data[..]))
        .collect();
    assert_eq!(
        keys,
        vec![("b", &b"1"[..]), ("a", &b"1"[..])],
        "one record per shard per request"
    );
    // shard 0 fails, shard 1 succeeds
    h.engine.on_response(
        *id,
        Ok(vec![
            ok_entry(&req.records[0], 2),
            err_entry("InternalFailure"),
        ]),
        h.now,
    );
    assert!(outcome(&mut b1).is_ok());
    h.advance(Duration::from_secs(6));
    let (id, req) = h.poll_after_window().pop().unwrap();
    assert_eq!(
        &req.records[0].data[..],
        b"1",
        "the failed record goes before the newer one"
    );
    assert_eq!(req.records.len(), 1);
    h.ok_all(id, &req, 2);
    assert!(outcome(&mut a1).is_ok());
    assert!(pending(&mut a2));
    h.advance(Duration::from_millis(100));
    let (id, req) = h.poll_after_window().pop().unwrap();
    assert_eq!(&req.records[0].data[..], b"2");
    h.ok_all(id, &req, 2);
    assert!(outcome(&mut a2).is_ok());
}

#[test]
fn after_a_split_the_child_waits_for_what_its_parent_has_in_flight() {
    let cfg = ProducerConfig {
        ordering: Ordering::PerShard,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let half = 1u128 << 127;
    let hash = half + 5; // the upper child's range
    let add = |h: &mut Harness, d: &str| {
        h.add(
            UserRecord::new("k", d.to_string()).with_explicit_hash_key(hash.to_string()),
            HashKey(hash),
        )
    };
    let mut a = add(&mut h, "a");
    h.advance(Duration::from_millis(100));
    let first = h.poll_after_window();
    assert_eq!(first.len(), 1);
    h.engine.on_shard_map(Ok(split_in_two()), h.now);
    let mut b = add(&mut h, "b");
    h.advance(Duration::from_millis(300));
    assert!(
        h.poll_after_window().is_empty(),
        "the child holds the key's newer record while the parent's older one is in flight"
    );
    // The parent's request is throttled: the older record goes first on the child.
    let throttled = err_entry("ProvisionedThroughputExceededException");
    h.engine.on_response(first[0].0, Ok(vec![throttled]), h.now);
    h.advance(Duration::from_secs(2));
    let second = h.poll_after_window();
    assert_eq!(second.len(), 1);
    assert_eq!(
        second[0].1.records.len(),
        1,
        "one record per shard per request"
    );
    assert_eq!(second[0].1.records[0].data.as_ref(), b"a");
    let stored = PutRecordsResultEntry::Ok {
        shard_id: "shardId-000000000002".into(),
        sequence_number: "10".into(),
    };
    h.engine.on_response(second[0].0, Ok(vec![stored]), h.now);
    assert!(outcome(&mut a).is_ok());
    let third = h.poll_after_window();
    assert_eq!(third[0].1.records[0].data.as_ref(), b"b");
    let stored = PutRecordsResultEntry::Ok {
        shard_id: "shardId-000000000002".into(),
        sequence_number: "11".into(),
    };
    h.engine.on_response(third[0].0, Ok(vec![stored]), h.now);
    assert!(outcome(&mut b).is_ok());
}

#[test]
fn ordered_plain_records_are_admitted_for_one_per_shard_per_round_trip() {
    let cfg = ProducerConfig {
        ordering: Ordering::PerShard,
        adaptive_concurrency: true,
        ..config()
    };
    let mut h = Harness::new(64, cfg);
    assert_eq!(
        h.engine.admission.cap().0,
        crate::admission::MIN_RECORDS,
        "no round trip known yet: the floor"
    );
    let _rx = h.add_to(0, 64, "k", "d");
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    h.advance(Duration::from_millis(20));
    h.ok_all(sent[0].0, &sent[0].1, 64);
    h.advance(crate::admission::TICK);
    let _ = h.poll();
    // 64 shards × one record per 20 ms × half the 30 s TTL; bytes: 64 MiB/s × 15 s is over
    // the 64 MiB bound, which holds.
    assert_eq!(h.engine.admission.cap(), (64 * 50 * 15, 64 << 20));
}

#[test]
fn ordered_aggregates_grow_to_a_quarter_of_a_shards_second() {
    let limit = |mib: usize| crate::stream_settings::RecordLimit {
        bytes: mib << 20,
        from: crate::error::RecordLimitFrom::ApiDefault,
    };
    let ordered = ProducerConfig {
        ordering: Ordering::PerShard,
        ..config()
    };
    assert_eq!(aggregate_max(&ordered, limit(1)), 256 * 1024);
    assert_eq!(aggregate_max(&ordered, limit(10)), 256 * 1024);
    assert_eq!(
        aggregate_max(&config(), limit(1)),
        51_200,
        "unordered: the configured size"
    );
    let larger = ProducerConfig {
        aggregation_max_size: 512 * 1024,
        ..ordered
    };
    assert_eq!(
        aggregate_max(&larger, limit(1)),
        512 * 1024,
        "never below the configured size"
    );
}

#[test]
fn an_ordered_shard_waiting_for_its_answer_is_not_queued_for_in_flight_room() {
    let cfg = ProducerConfig {
        ordering: Ordering::PerShard,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    h.add_to(0, 1, "k", "a");
    h.add_to(0, 1, "k", "b");
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    assert!(
        !h.engine.shards.has_blocked(),
        "its answer wakes it, not free room in flight"
    );
}
