use bytes::Bytes;
use md5::{Digest, Md5};

use super::*;
use crate::aggregation::testing::framed;
use crate::aggregation::{deaggregate, MAGIC};

/// The aggregate's contents: (partition key table, explicit hash key table,
/// records as (pk index, ehk index, data)), read with a minimal independent walk.
type Parsed = (Vec<String>, Vec<String>, Vec<(u64, Option<u64>, Vec<u8>)>);

fn parse(data: &[u8]) -> Parsed {
    fn varint(buf: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = buf[*pos];
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                return v;
            }
        }
    }
    assert_eq!(data[..4], MAGIC);
    let proto = &data[4..data.len() - 16];
    assert_eq!(data[data.len() - 16..], Md5::digest(proto)[..]);
    let (mut pks, mut ehks, mut recs) = (vec![], vec![], vec![]);
    let mut pos = 0;
    while pos < proto.len() {
        let tag = varint(proto, &mut pos);
        let len = varint(proto, &mut pos) as usize;
        let body = &proto[pos..pos + len];
        pos += len;
        match tag {
            0x0A => pks.push(String::from_utf8(body.to_vec()).unwrap()),
            0x12 => ehks.push(String::from_utf8(body.to_vec()).unwrap()),
            0x1A => {
                let (mut pk, mut ehk, mut d) = (None, None, None);
                let mut p = 0;
                while p < body.len() {
                    match varint(body, &mut p) {
                        0x08 => pk = Some(varint(body, &mut p)),
                        0x10 => ehk = Some(varint(body, &mut p)),
                        0x1A => {
                            let l = varint(body, &mut p) as usize;
                            d = Some(body[p..p + l].to_vec());
                            p += l;
                        }
                        t => panic!("unexpected record tag {t}"),
                    }
                }
                recs.push((pk.unwrap(), ehk, d.unwrap()));
            }
            t => panic!("unexpected tag {t}"),
        }
    }
    (pks, ehks, recs)
}

#[test]
fn golden_tiny_aggregate() {
    let mut agg = Aggregator::new(1024, 10);
    assert_eq!(agg.try_push("a", None, b"xy"), TryPush::Added);
    assert_eq!(agg.try_push("bc", Some("123"), b""), TryPush::Added);
    assert_eq!(agg.try_push("a", None, b"z"), TryPush::Added);

    #[rustfmt::skip]
    let protobuf: &[u8] = &[
        0x0A, 0x01, b'a',                 // partition_key_table[0] = "a"  (field 1, LEN)
        0x0A, 0x02, b'b', b'c',           // partition_key_table[1] = "bc"
        0x12, 0x03, b'1', b'2', b'3',     // explicit_hash_key_table[0] = "123" (field 2)
        0x1A, 0x06,                       // records[0] (field 3, LEN 6)
        0x08, 0x00,                       //   partition_key_index = 0
        0x1A, 0x02, b'x', b'y',           //   data = "xy"
        0x1A, 0x06,                       // records[1]
        0x08, 0x01,                       //   partition_key_index = 1
        0x10, 0x00,                       //   explicit_hash_key_index = 0
        0x1A, 0x00,                       //   data = ""
        0x1A, 0x05,                       // records[2]
        0x08, 0x00,                       //   partition_key_index = 0
        0x1A, 0x01, b'z',                 //   data = "z"
    ];
    let expected = framed(protobuf);
    assert_eq!(agg.record_size(), 1 + expected.len());
    let aggregate = agg.finish().unwrap();
    assert_eq!(aggregate.partition_key, "a");
    assert_eq!(aggregate.count, 3);
    assert_eq!(aggregate.data, expected);
    assert!(agg.is_empty());
    assert_eq!(agg.record_size(), 0);
    assert!(agg.finish().is_none());
}

#[test]
fn keys_are_deduplicated() {
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    let keys = ["k1", "k2", "k1", "k3", "k2", "k1"];
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(agg.try_push(key, None, &[i as u8]), TryPush::Added);
    }
    let aggregate = agg.finish().unwrap();
    let (pks, ehks, recs) = parse(&aggregate.data);
    assert_eq!(pks, ["k1", "k2", "k3"]);
    assert!(ehks.is_empty());
    let indices: Vec<u64> = recs.iter().map(|r| r.0).collect();
    assert_eq!(indices, [0, 1, 0, 2, 1, 0]);

    // After finish, the tables start over.
    assert_eq!(agg.try_push("k3", None, b""), TryPush::Added);
    let (pks, _, recs) = parse(&agg.finish().unwrap().data);
    assert_eq!(pks, ["k3"]);
    assert_eq!(recs[0].0, 0);
}

#[test]
fn explicit_hash_key_table_only_when_present() {
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    for _ in 0..3 {
        assert_eq!(agg.try_push("p", None, b"d"), TryPush::Added);
    }
    let (_, ehks, recs) = parse(&agg.finish().unwrap().data);
    assert!(ehks.is_empty());
    assert!(recs.iter().all(|r| r.1.is_none()));

    let pushes = [None, Some("99"), None, Some("7"), Some("99")];
    for ehk in pushes {
        assert_eq!(agg.try_push("p", ehk, b"d"), TryPush::Added);
    }
    let aggregate = agg.finish().unwrap();
    let (_, ehks, recs) = parse(&aggregate.data);
    assert_eq!(ehks, ["99", "7"]);
    let indices: Vec<Option<u64>> = recs.iter().map(|r| r.1).collect();
    assert_eq!(indices, [None, Some(0), None, Some(1), Some(0)]);

    let records = deaggregate(&aggregate.partition_key, Some("5"), aggregate.data).unwrap();
    let got: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.explicit_hash_key.as_deref())
        .collect();
    assert_eq!(got, pushes);
}

/// Pushes and checks, at every step, that the predicted size is the actual one.
fn push_checked(agg: &mut Aggregator, pk: &str, ehk: Option<&str>, data: &[u8]) {
    let predicted = agg.size_if_pushed(pk, ehk, data.len());
    let before = agg.record_size();
    assert_eq!(agg.try_push(pk, ehk, data), TryPush::Added);
    assert_eq!(agg.record_size(), predicted);
    assert!(predicted > before);
}

fn finish_checked(agg: &mut Aggregator) -> Aggregate {
    let size = agg.record_size();
    let count = agg.len();
    let aggregate = agg.finish().unwrap();
    assert_eq!(size, aggregate.partition_key.len() + aggregate.data.len());
    assert_eq!(count, aggregate.count);
    aggregate
}

#[test]
fn size_accounting_is_exact_at_every_push() {
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    let data = vec![0xAB; 20_000];
    let mut expected = Vec::new();
    for i in 0..300usize {
        let pk = format!("key-{}-é", i % 37);
        let ehk = (i % 3 == 0).then(|| format!("{}", i % 11 * 1_000_000_007));
        let len = (i * 131) % 300 + if i % 50 == 0 { 19_000 } else { 0 };
        push_checked(&mut agg, &pk, ehk.as_deref(), &data[..len]);
        expected.push((pk, ehk, len));
        // The exact size is also the size of an aggregate finished now.
        let mut copy = Aggregator::new(usize::MAX, usize::MAX);
        if i % 60 == 0 {
            for (pk, ehk, len) in &expected {
                push_checked(&mut copy, pk, ehk.as_deref(), &data[..*len]);
            }
            finish_checked(&mut copy);
        }
    }
    let aggregate = finish_checked(&mut agg);
    let records = deaggregate(&aggregate.partition_key, None, aggregate.data).unwrap();
    assert_eq!(records.len(), expected.len());
    for (i, (rec, (pk, ehk, len))) in records.iter().zip(&expected).enumerate() {
        assert_eq!(&rec.partition_key, pk);
        assert_eq!(&rec.explicit_hash_key, ehk);
        assert_eq!(rec.data.len(), *len);
        assert_eq!(rec.sub_sequence_number, i as u64);
    }
}

#[test]
fn size_if_pushed_on_empty_uses_the_new_key_as_outer_key() {
    let agg = Aggregator::new(0, 0);
    // 4 magic + 16 md5 + table entry (1 + 1 + 3) + record (1 + 1 + [1 + 1 + 1 + 1 + 2]).
    assert_eq!(agg.size_if_pushed("abc", None, 2), 3 + 20 + 5 + 8);
    // Huge lengths saturate instead of overflowing.
    assert_eq!(agg.size_if_pushed("abc", None, usize::MAX), usize::MAX);
}

#[test]
fn size_boundaries() {
    let exact = Aggregator::new(0, 1).size_if_pushed("first", None, 10);
    let mut agg = Aggregator::new(exact, usize::MAX);
    assert_eq!(agg.try_push("first", None, &[1; 10]), TryPush::Added);
    assert_eq!(agg.record_size(), exact);

    // The first record does not fit by one byte: refused, the caller sends it raw.
    let mut agg = Aggregator::new(exact - 1, usize::MAX);
    assert_eq!(agg.try_push("first", None, &[1; 10]), TryPush::NoCapacity);
    assert!(agg.is_empty());
    assert_eq!(agg.record_size(), 0);
    assert!(agg.finish().is_none());

    // A later record: exactly at the limit is accepted, one byte over is refused and
    // leaves the aggregator as it was.
    let mut probe = Aggregator::new(usize::MAX, usize::MAX);
    assert_eq!(probe.try_push("first", None, &[1; 10]), TryPush::Added);
    let second = probe.size_if_pushed("second", Some("42"), 30);

    let mut agg = Aggregator::new(second - 1, usize::MAX);
    assert_eq!(agg.try_push("first", None, &[1; 10]), TryPush::Added);
    let before = agg.record_size();
    assert_eq!(
        agg.try_push("second", Some("42"), &[2; 30]),
        TryPush::NoCapacity
    );
    assert_eq!((agg.len(), agg.record_size()), (1, before));
    let aggregate = finish_checked(&mut agg);
    let (pks, ehks, recs) = parse(&aggregate.data);
    assert_eq!((pks.len(), ehks.len(), recs.len()), (1, 0, 1));

    let mut agg = Aggregator::new(second, usize::MAX);
    assert_eq!(agg.try_push("first", None, &[1; 10]), TryPush::Added);
    assert_eq!(agg.try_push("second", Some("42"), &[2; 30]), TryPush::Added);
    assert_eq!(agg.record_size(), second);
    // Even the smallest further record is refused.
    assert_eq!(agg.try_push("first", None, b""), TryPush::NoCapacity);
    assert_eq!(finish_checked(&mut agg).data.len() + "first".len(), second);
}

#[test]
fn count_boundaries() {
    let mut agg = Aggregator::new(usize::MAX, 2);
    assert_eq!(agg.try_push("a", None, b"1"), TryPush::Added);
    assert_eq!(agg.try_push("a", None, b"2"), TryPush::Added);
    let size = agg.record_size();
    assert_eq!(agg.try_push("a", None, b"3"), TryPush::NoCapacity);
    assert_eq!((agg.len(), agg.record_size()), (2, size));
    assert_eq!(finish_checked(&mut agg).count, 2);
    assert_eq!(agg.try_push("a", None, b"3"), TryPush::Added);

    let mut none = Aggregator::new(usize::MAX, 0);
    assert_eq!(none.try_push("a", None, b""), TryPush::NoCapacity);
    assert!(none.is_empty());
}

#[test]
fn varint_transitions_in_data_lengths() {
    // Data lengths around the 1/2 and 2/3 byte varint boundaries, for both the data length
    // and the Record message length (which is 4 to 7 bytes more).
    let data = vec![7u8; 20_000];
    for len in (115..=135).chain(16_370..=16_390) {
        let mut agg = Aggregator::new(usize::MAX, usize::MAX);
        push_checked(&mut agg, "k", None, &data[..len]);
        push_checked(&mut agg, "k", Some("1"), &data[..len]);
        let aggregate = finish_checked(&mut agg);
        let records = deaggregate("k", None, aggregate.data).unwrap();
        assert!(records.iter().all(|r| r.data.len() == len));
    }
    // 127 bytes of data: data length varint is 1 byte; 128 bytes: 2 bytes.
    let agg = Aggregator::new(0, 0);
    assert_eq!(
        agg.size_if_pushed("k", None, 128) - agg.size_if_pushed("k", None, 127),
        2
    );
    // Record lengths 127 (data 123) and 128 (data 124).
    assert_eq!(
        agg.size_if_pushed("k", None, 124) - agg.size_if_pushed("k", None, 123),
        2
    );
}

#[test]
fn varint_transitions_in_tables() {
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    let mut ehk_agg = Aggregator::new(usize::MAX, usize::MAX);
    for i in 0..300 {
        push_checked(&mut agg, &format!("{i}"), None, b"x");
        push_checked(&mut ehk_agg, "pk", Some(&format!("{i}")), b"x");
    }
    // Index 127 takes one varint byte, index 128 two.
    let mut grows = Vec::new();
    for agg in [&mut agg, &mut ehk_agg] {
        let aggregate = finish_checked(agg);
        let (pks, ehks, recs) = parse(&aggregate.data);
        assert_eq!(
            pks.len() + ehks.len(),
            if ehks.is_empty() { 300 } else { 301 }
        );
        assert_eq!(recs.len(), 300);
        let records = deaggregate(&aggregate.partition_key, None, aggregate.data).unwrap();
        assert_eq!(records.len(), 300);
        assert_eq!(records[128].sub_sequence_number, 128);
        grows.push(records);
    }
    assert_eq!(grows[0][128].partition_key, "128");
    assert_eq!(grows[1][299].explicit_hash_key.as_deref(), Some("299"));

    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    for i in 0..127 {
        push_checked(&mut agg, &format!("{i}"), None, b"");
    }
    let at_127 = agg.size_if_pushed("new", None, 0) - agg.record_size();
    push_checked(&mut agg, "127", None, b"");
    let at_128 = agg.size_if_pushed("new", None, 0) - agg.record_size();
    assert_eq!(at_128, at_127 + 1);

    // Key lengths 127 and 128.
    let key127 = "k".repeat(127);
    let key128 = "k".repeat(128);
    let agg = Aggregator::new(0, 0);
    assert_eq!(
        agg.size_if_pushed(&key128, None, 0) - agg.size_if_pushed(&key127, None, 0),
        3
    );
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    push_checked(&mut agg, &key127, Some(&key128), b"");
    push_checked(&mut agg, &key128, Some(&key127), b"");
    let aggregate = finish_checked(&mut agg);
    let records = deaggregate("x", None, aggregate.data).unwrap();
    assert_eq!(records[1].partition_key, key128);
    assert_eq!(
        records[1].explicit_hash_key.as_deref(),
        Some(key127.as_str())
    );
}

mod props {
    use super::*;
    use crate::aggregation::testing::{cases, user_record, UserRecord};
    use proptest::prelude::*;

    fn records() -> impl Strategy<Value = Vec<UserRecord>> {
        prop::collection::vec(user_record(100_000), 0..40)
    }

    fn limits() -> impl Strategy<Value = (usize, usize)> {
        (
            prop_oneof![0usize..400, 0usize..5_000, 0usize..250_000],
            prop_oneof![1usize..6, Just(usize::MAX)],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(256)))]

        #[test]
        fn round_trip_within_limits(records in records(), (max_size, max_count) in limits()) {
            let mut agg = Aggregator::new(max_size, max_count);
            // Kinesis records produced: (outer key, data, raw?).
            let mut kinesis: Vec<(String, Option<String>, Bytes)> = Vec::new();
            let check_and_finish = |agg: &mut Aggregator, kinesis: &mut Vec<_>| {
                let size = agg.record_size();
                if let Some(a) = agg.finish() {
                    prop_assert_eq!(size, a.partition_key.len() + a.data.len());
                    prop_assert!(size <= max_size, "size {} over {}", size, max_size);
                    prop_assert!(a.count >= 1 && a.count <= max_count);
                    kinesis.push((a.partition_key, None, a.data));
                }
                Ok(())
            };
            for (pk, ehk, data) in &records {
                let predicted = agg.size_if_pushed(pk, ehk.as_deref(), data.len());
                match agg.try_push(pk, ehk.as_deref(), data) {
                    TryPush::Added => prop_assert_eq!(agg.record_size(), predicted),
                    TryPush::NoCapacity => {
                        check_and_finish(&mut agg, &mut kinesis)?;
                        let predicted = agg.size_if_pushed(pk, ehk.as_deref(), data.len());
                        match agg.try_push(pk, ehk.as_deref(), data) {
                            TryPush::Added => prop_assert_eq!(agg.record_size(), predicted),
                            TryPush::NoCapacity => {
                                prop_assert!(predicted > max_size || max_count == 0);
                                prop_assert!(agg.is_empty());
                                kinesis.push((pk.clone(), ehk.clone(), Bytes::from(data.clone())));
                            }
                        }
                    }
                }
                prop_assert!(agg.record_size() <= max_size && agg.len() <= max_count);
            }
            check_and_finish(&mut agg, &mut kinesis)?;

            let mut decoded = Vec::new();
            for (pk, ehk, data) in kinesis {
                let is_plain = ehk.is_some() || data.len() < 20 || data[..4] != MAGIC;
                let out = deaggregate(&pk, ehk.as_deref(), data).unwrap();
                for (i, r) in out.iter().enumerate() {
                    prop_assert_eq!(r.sub_sequence_number, if is_plain { 0 } else { i as u64 });
                }
                decoded.extend(out.into_iter().map(|r| (r.partition_key, r.explicit_hash_key, r.data.to_vec())));
            }
            prop_assert_eq!(decoded, records);
        }
    }
}

#[test]
fn empty_until_a_record_and_debug_shows_the_plan() {
    let mut agg = Aggregator::new(1_000, 10);
    assert!(agg.is_empty());
    assert_eq!(agg.try_push("k", None, b"data"), TryPush::Added);
    assert!(!agg.is_empty());
    let shown = format!("{agg:?}");
    for field in [
        "max_size: 1000",
        "max_count: 10",
        "count: 1",
        "partition_keys: 1",
    ] {
        assert!(shown.contains(field), "{field} in {shown}");
    }
    agg.finish();
    assert!(agg.is_empty(), "finish starts a new aggregate");
}
