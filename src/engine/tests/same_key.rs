//! Same-key aggregation ([`AggregationScope::PartitionKey`]): one partition key per aggregate,
//! the outer record carrying it, other keys' order kept, the look-ahead bounded.

use super::*;
use crate::config::AggregationScope;

fn same_key_config() -> ProducerConfig {
    ProducerConfig {
        aggregation_scope: AggregationScope::PartitionKey,
        ..agg_config()
    }
}

/// Adds a record hashed by its partition key (no explicit hash key).
fn add_keyed(h: &mut Harness, key: &str, data: &str) -> Rx {
    h.add(
        UserRecord::new(key, data.to_string()),
        HashKey::from_partition_key(key),
    )
}

/// Each Kinesis record of the requests, in order: (outer partition key, outer explicit hash
/// key, its user records as (partition key, data)); a raw record is one user record of its own.
type Sent = (String, Option<String>, Vec<(String, String)>);

fn unpack(sent: &[(u64, PutRecordsRequest)]) -> Vec<Sent> {
    let text = |b: &bytes::Bytes| String::from_utf8(b.to_vec()).unwrap();
    sent.iter()
        .flat_map(|(_, req)| &req.records)
        .map(|r| {
            let subs = if r.data.starts_with(&crate::aggregation::MAGIC) {
                crate::aggregation::deaggregate_strict(&r.partition_key, None, r.data.clone())
                    .unwrap()
                    .into_iter()
                    .map(|s| (s.partition_key, text(&s.data)))
                    .collect()
            } else {
                vec![(r.partition_key.to_string(), text(&r.data))]
            };
            (
                r.partition_key.to_string(),
                r.explicit_hash_key.clone(),
                subs,
            )
        })
        .collect()
}

/// Whether a Kinesis record of [`unpack`] is an aggregate.
fn aggregated(sent: &[(u64, PutRecordsRequest)], i: usize) -> bool {
    let r = sent
        .iter()
        .flat_map(|(_, req)| &req.records)
        .nth(i)
        .unwrap();
    r.data.starts_with(&crate::aggregation::MAGIC)
}

/// `(key, data)` pairs.
fn subs(key: &str, data: &[&str]) -> Vec<(String, String)> {
    data.iter()
        .map(|d| (key.to_string(), d.to_string()))
        .collect()
}

#[test]
fn same_key_scope_aggregates_each_key_apart_in_order() {
    let mut h = Harness::new(1, same_key_config());
    let mut rxs: Vec<Rx> = (0..9)
        .map(|i| add_keyed(&mut h, ["k1", "k2", "k3"][i % 3], &format!("d{i}")))
        .collect();
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        unpack(&sent),
        vec![
            ("k1".into(), None, subs("k1", &["d0", "d3", "d6"])),
            ("k2".into(), None, subs("k2", &["d1", "d4", "d7"])),
            ("k3".into(), None, subs("k3", &["d2", "d5", "d8"])),
        ],
        "one aggregate per key, in the order of each key's first record; the outer record \
         carries the key and no explicit hash key, as a plain record of that key would"
    );
    assert!((0..3).all(|i| aggregated(&sent, i)));
    let (id, req) = &sent[0];
    h.ok_all(*id, req, 1);
    for (i, rx) in rxs.iter_mut().enumerate() {
        let out = outcome(rx).unwrap();
        assert_eq!(out.sub_sequence_number, Some(i as u64 / 3), "record {i}");
    }
}

#[test]
fn shard_scope_stays_the_default_and_mixes_keys() {
    assert_eq!(
        ProducerConfig::default().aggregation_scope,
        AggregationScope::Shard
    );
    let mut h = Harness::new(1, agg_config());
    for i in 0..4 {
        add_keyed(&mut h, ["k1", "k2"][i % 2], &format!("d{i}"));
    }
    h.advance(Duration::from_millis(100));
    let got = unpack(&h.poll());
    let hash = HashKey::from_partition_key("k1").to_string();
    let mixed = [("k1", "d0"), ("k2", "d1"), ("k1", "d2"), ("k2", "d3")]
        .map(|(k, d)| (k.to_string(), d.to_string()))
        .to_vec();
    assert_eq!(got, vec![("k1".into(), Some(hash), mixed)]);
}

#[test]
fn same_key_scope_keeps_the_explicit_hash_key_and_the_order_of_a_hash_key() {
    let mut h = Harness::new(2, same_key_config());
    // `add_to` gives every record of a shard the same explicit hash key (the shard's start).
    let ehk = Some(even_range(1, 2).0.to_string());
    for (key, data) in [("a", "0"), ("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
        h.add_to(1, 2, key, data);
    }
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    assert_eq!(
        unpack(&sent),
        vec![
            ("a".into(), ehk.clone(), subs("a", &["0", "1"])),
            ("b".into(), ehk.clone(), subs("b", &["2"])),
            ("a".into(), ehk.clone(), subs("a", &["3"])),
            ("c".into(), ehk.clone(), subs("c", &["4"])),
        ],
        "the outer record keeps the records' explicit hash key; `b` shares it, so the scan \
         stops there: records of one hash key are never reordered"
    );
    assert!(aggregated(&sent, 0) && !aggregated(&sent, 2));
}

#[test]
fn same_key_scope_stops_at_a_plain_record_of_its_key() {
    let mut h = Harness::new(1, same_key_config());
    let hash = HashKey::from_partition_key("k");
    let (tx, _rx) = oneshot::channel();
    for data in ["0", "1"] {
        add_keyed(&mut h, "k", data);
    }
    // A stranded sub-record being re-sent is marked plain: never aggregated, never overtaken.
    let mut plain = Entry::new(UserRecord::new("k", "2"), hash, h.now, Some(tx));
    plain.make_plain();
    assert!(h.gauge.try_acquire(plain.size()));
    h.engine.on_record(plain, h.now);
    add_keyed(&mut h, "other", "3");
    add_keyed(&mut h, "k", "4");
    h.advance(Duration::from_millis(100));
    let got = unpack(&h.poll());
    let data: Vec<Vec<&str>> = got
        .iter()
        .map(|s| s.2.iter().map(|d| &*d.1).collect())
        .collect();
    assert_eq!(data, [vec!["0", "1"], vec!["2"], vec!["3"], vec!["4"]]);
}

#[test]
fn same_key_look_ahead_is_bounded() {
    use crate::engine::shard_state::SAME_KEY_LOOKAHEAD;
    for (others, joined) in [(SAME_KEY_LOOKAHEAD - 1, true), (SAME_KEY_LOOKAHEAD, false)] {
        let mut h = Harness::new(1, same_key_config());
        add_keyed(&mut h, "hot", "first");
        for i in 0..others {
            add_keyed(&mut h, &format!("other-{i}"), "x");
        }
        add_keyed(&mut h, "hot", "second");
        h.advance(Duration::from_millis(100));
        let got = unpack(&h.poll());
        let hot: Vec<&Vec<(String, String)>> =
            got.iter().filter(|s| s.0 == "hot").map(|s| &s.2).collect();
        if joined {
            assert_eq!(
                hot,
                [&subs("hot", &["first", "second"])],
                "within the look-ahead"
            );
        } else {
            assert_eq!(
                hot,
                [&subs("hot", &["first"]), &subs("hot", &["second"])],
                "past the look-ahead: two records"
            );
        }
        let others_sent: Vec<&str> = got.iter().filter(|s| s.0 != "hot").map(|s| &*s.0).collect();
        let expected: Vec<String> = (0..others).map(|i| format!("other-{i}")).collect();
        assert_eq!(others_sent, expected, "other keys keep their order");
    }
}

#[test]
fn same_key_look_ahead_follows_a_key_through_a_long_queue() {
    // A record of `hot` every 100 records: 2,000 records in all, far past the look-ahead, but
    // each `hot` record within it of the previous one: one aggregate.
    let mut h = Harness::new(1, same_key_config());
    for i in 0..2_000 {
        let key = if i % 100 == 0 {
            "hot".to_string()
        } else {
            format!("other-{i}")
        };
        add_keyed(&mut h, &key, &i.to_string());
    }
    h.advance(Duration::from_millis(100));
    let got = unpack(&h.poll_after_window());
    let hot: Vec<&Sent> = got.iter().filter(|s| s.0 == "hot").collect();
    let data: Vec<String> = (0..20).map(|i| (i * 100).to_string()).collect();
    let data: Vec<&str> = data.iter().map(|d| &**d).collect();
    assert_eq!(hot, [&("hot".to_string(), None, subs("hot", &data))]);
}

#[test]
fn same_key_aggregates_split_at_the_size_limit_and_lose_nothing() {
    let cfg = ProducerConfig {
        aggregation_max_size: 300,
        ..same_key_config()
    };
    let mut h = Harness::new(2, cfg);
    // A deterministic shuffle of 5 keys over 2 shards, 200 records.
    let keys = ["a", "b", "c", "d", "e"];
    let mut added: Vec<(String, String)> = Vec::new();
    let mut x = 7u32;
    for i in 0..200 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let key = keys[(x >> 16) as usize % keys.len()];
        let data = format!("{i:03}-{}", "x".repeat(20));
        add_keyed(&mut h, key, &data);
        added.push((key.to_string(), data));
    }
    h.advance(Duration::from_millis(100));
    let sent = h.poll_after_window();
    let got = unpack(&sent);
    let mut stored: Vec<(String, String)> = Vec::new();
    for (i, (outer, ehk, subs)) in got.iter().enumerate() {
        assert_eq!(*ehk, None);
        assert!(subs.iter().all(|s| s.0 == *outer), "one key per aggregate");
        if aggregated(&sent, i) {
            let size = sent.iter().flat_map(|(_, r)| &r.records).nth(i).unwrap();
            assert!(size.data.len() + size.partition_key.len() <= 300);
        }
        stored.extend(subs.iter().cloned());
    }
    assert!(
        got.len() >= 10 && got.len() < 40,
        "{} Kinesis records",
        got.len()
    );
    assert!(
        h.engine
            .shards
            .iter()
            .all(|s| s.queue.is_empty() && s.queued_bytes == 0),
        "records taken from the middle of a queue are counted out of its bytes"
    );
    // Per key, stored in `add` order (each shard's records leave in queue order).
    for key in keys {
        let want: Vec<&String> = added.iter().filter(|a| a.0 == key).map(|a| &a.1).collect();
        let have: Vec<&String> = stored.iter().filter(|s| s.0 == key).map(|s| &s.1).collect();
        assert_eq!(have, want, "key {key}");
    }
}
