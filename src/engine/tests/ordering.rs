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
