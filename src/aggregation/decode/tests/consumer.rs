//! The consumer reading of `deaggregate` (as KCL and aws-kinesis-agg read) against the strict one.

use super::*;

fn consumer_read(data: Bytes) -> Read {
    match deaggregate("outer", Some("9"), data.clone()) {
        Ok(records) if records.len() == 1 && records[0].data == data => {
            assert_eq!(records[0].partition_key, "outer");
            assert_eq!(records[0].explicit_hash_key.as_deref(), Some("9"));
            assert_eq!(records[0].sub_sequence_number, 0);
            Read::Plain
        }
        Ok(records) => Read::Users(
            records
                .iter()
                .map(|r| {
                    let pk: &'static str = r.partition_key.clone().leak();
                    let data: &'static [u8] = r.data.to_vec().leak();
                    (pk, data)
                })
                .collect(),
        ),
        Err(e) => Read::Error(e),
    }
}

/// The consumer's reading agrees with the KCL's `AggregatorUtil.deaggregate` and with
/// aws-kinesis-agg (tests/aggregation_reference.rs runs the latter on the same bytes).
#[test]
fn consumer_reading_of_broken_aggregates() {
    use DeaggregateError as E;
    let ok: &[u8] = &[0x0A, 0x01, b'k', 0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00];
    let with = |head: &[u8]| Bytes::from([head, ok].concat());
    let one = || Read::Users(vec![("k", &b""[..])]);
    let mut bad_md5 = framed(ok).to_vec();
    *bad_md5.last_mut().unwrap() ^= 1;
    let mut bad_magic = framed(ok).to_vec();
    bad_magic[3] ^= 1;
    let cases: Vec<(&str, Bytes, Read)> = vec![
        ("well formed", framed(ok), one()),
        ("bad MD5", Bytes::from(bad_md5), Read::Plain),
        ("bad magic", Bytes::from(bad_magic), Read::Plain),
        (
            "20 bytes: magic and MD5 of nothing",
            framed(b""),
            Read::Plain,
        ),
        (
            "truncated protobuf",
            framed(&ok[..ok.len() - 1]),
            Read::Plain,
        ),
        ("truncated tag", framed(&[0x80]), Read::Plain),
        (
            "length past the end",
            framed(&[0x0A, 0x05, b'a']),
            Read::Plain,
        ),
        (
            "eleven-byte varint",
            framed(&[&[0x28][..], &[0xFF; 10], &[0x01], ok].concat()),
            Read::Plain,
        ),
        (
            "tenth varint byte above 1",
            framed(&with(&[&[0x28][..], &[0xFF; 9], &[0x02]].concat())),
            one(),
        ),
        ("field number 0", framed(&with(&[0x02, 0x00])), Read::Plain),
        (
            "field number 2^29",
            framed(&with(&[0x80, 0x80, 0x80, 0x80, 0x10, 0x00])),
            Read::Plain,
        ),
        (
            "field number 2^29 - 1",
            framed(&with(&[0xF8, 0xFF, 0xFF, 0xFF, 0x0F, 0x00])),
            one(),
        ),
        ("wire type 6", framed(&with(&[0x26])), Read::Plain),
        ("wire type 7", framed(&with(&[0x27])), Read::Plain),
        (
            "group skipped",
            framed(&with(&[0x23, 0x28, 0x01, 0x24])),
            one(),
        ),
        (
            "nested groups skipped",
            framed(&with(&[0x23, 0x2B, 0x2C, 0x24])),
            one(),
        ),
        ("group never closed", framed(&with(&[0x23])), Read::Plain),
        (
            "end group without start",
            framed(&with(&[0x24])),
            Read::Plain,
        ),
        (
            "group closed by another field",
            framed(&with(&[0x23, 0x2C])),
            Read::Plain,
        ),
        (
            "table with varint wire type: unknown field",
            framed(&with(&[0x08, 0x01])),
            one(),
        ),
        (
            "record with fixed32 wire type: unknown field",
            framed(&with(&[0x1D, 0, 0, 0, 0])),
            one(),
        ),
        (
            "no record",
            framed(&[0x0A, 0x01, b'k']),
            Read::Users(vec![]),
        ),
        (
            "only an unknown field",
            framed(&[0x08, 0x01]),
            Read::Users(vec![]),
        ),
        (
            "index with length wire type: skipped, last index wins",
            framed(&[
                0x0A, 0x01, b'k', 0x1A, 0x06, 0x0A, 0x00, 0x08, 0x00, 0x1A, 0x00,
            ]),
            one(),
        ),
        (
            "missing partition key index",
            framed(&[0x0A, 0x01, b'k', 0x1A, 0x02, 0x1A, 0x00]),
            Read::Plain,
        ),
        (
            "missing data",
            framed(&[0x0A, 0x01, b'k', 0x1A, 0x02, 0x08, 0x00]),
            Read::Plain,
        ),
        (
            "tag without key",
            framed(&[
                0x0A, 0x01, b'k', 0x1A, 0x08, 0x08, 0x00, 0x1A, 0x00, 0x22, 0x02, 0x12, 0x00,
            ]),
            Read::Plain,
        ),
        (
            "tag not a message",
            framed(&[
                0x0A, 0x01, b'k', 0x1A, 0x08, 0x08, 0x00, 0x1A, 0x00, 0x22, 0x02, 0xFF, 0xFF,
            ]),
            Read::Plain,
        ),
        (
            "unused table entry not UTF-8",
            framed(&[
                0x0A, 0x01, b'k', 0x12, 0x01, 0xFF, 0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00,
            ]),
            one(),
        ),
        (
            "used partition key not UTF-8",
            framed(&[0x0A, 0x02, 0xC3, 0x28, 0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00]),
            Read::Error(E::InvalidUtf8 {
                table: "partition_key_table",
                index: 0,
            }),
        ),
        (
            "second record's index out of range",
            framed(
                &with(&[])
                    .iter()
                    .chain(&[0x1A, 0x04, 0x08, 0x01, 0x1A, 0x00])
                    .copied()
                    .collect::<Vec<u8>>(),
            ),
            Read::Error(E::KeyIndexOutOfRange {
                record: 1,
                table: "partition_key_table",
                index: 1,
                table_len: 1,
            }),
        ),
    ];
    for (name, data, expected) in cases {
        assert_eq!(consumer_read(data), expected, "case {name}");
    }
}

#[test]
fn strict_and_consumer_readings_differ_on_broken_aggregates_only() {
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    assert_eq!(agg.try_push("a", None, b"one"), TryPush::Added);
    assert_eq!(agg.try_push("b", Some("5"), b"two"), TryPush::Added);
    let good = agg.finish().unwrap().data;
    assert_eq!(
        deaggregate("x", None, good.clone()),
        deaggregate_strict("x", None, good.clone())
    );
    let mut bad = good.to_vec();
    bad[6] ^= 0x40;
    let bad = Bytes::from(bad);
    assert!(matches!(
        deaggregate_strict("x", None, bad.clone()),
        Err(DeaggregateError::DigestMismatch { .. })
    ));
    assert_eq!(
        deaggregate("x", Some("3"), bad.clone()),
        Ok(vec![DeaggregatedRecord {
            partition_key: "x".into(),
            explicit_hash_key: Some("3".into()),
            data: bad,
            sub_sequence_number: 0,
        }])
    );
    // 20 bytes, magic and the MD5 of an empty protobuf: strict says empty, consumers see data.
    assert_eq!(
        deaggregate_strict("x", None, framed(b"")),
        Err(DeaggregateError::Empty)
    );
    assert_eq!(
        deaggregate("x", None, framed(b"")).unwrap()[0].data,
        framed(b"")
    );
}
