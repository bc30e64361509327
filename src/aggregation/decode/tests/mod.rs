//! The strict decoder: framing, digest, protobuf errors, tags, zero-copy.

use super::*;
use crate::aggregation::testing::framed;
use crate::aggregation::{Aggregator, TryPush};

fn decode(protobuf: &[u8]) -> Result<Vec<DeaggregatedRecord>, DeaggregateError> {
    deaggregate_strict("outer", Some("1"), framed(protobuf))
}

#[test]
fn plain_records_pass_through() {
    for data in [
        &b""[..],
        b"hello",
        &MAGIC,
        &[0xF3, 0x89, 0x9A, 0xC2, 1, 2, 3][..],
        &[0; 19],
    ] {
        let records = deaggregate_strict("pk", Some("123"), Bytes::copy_from_slice(data)).unwrap();
        assert_eq!(
            records,
            [DeaggregatedRecord {
                partition_key: "pk".into(),
                explicit_hash_key: Some("123".into()),
                data: Bytes::copy_from_slice(data),
                sub_sequence_number: 0,
            }]
        );
    }
    // 19 bytes with the magic is still too short to be an aggregate.
    let mut short = MAGIC.to_vec();
    short.extend_from_slice(&[0; 15]);
    assert_eq!(
        deaggregate_strict("pk", None, Bytes::from(short))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn bad_digest_is_an_error() {
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    assert_eq!(agg.try_push("a", None, b"data"), TryPush::Added);
    let good = agg.finish().unwrap().data;
    for flip in [4, good.len() / 2, good.len() - 1] {
        let mut bad = good.to_vec();
        bad[flip] ^= 1;
        let err = deaggregate_strict("a", None, Bytes::from(bad)).unwrap_err();
        assert!(
            matches!(err, DeaggregateError::DigestMismatch { protobuf_len, .. } if protobuf_len == good.len() - 20)
        );
        assert!(err.to_string().contains("MD5 mismatch"), "{err}");
    }
}

#[test]
fn malformed_protobuf_errors() {
    use DeaggregateError as E;
    let ok_record: &[u8] = &[0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00];
    let with_pk = |rest: &[u8]| [&[0x0A, 0x01, b'k'][..], rest].concat();
    let cases: Vec<(&str, Vec<u8>, E)> = vec![
        ("empty", vec![], E::Empty),
        ("only a table", vec![0x0A, 0x01, b'k'], E::Empty),
        (
            "truncated tag",
            vec![0x80],
            E::Truncated {
                what: "field tag",
                offset: 4,
            },
        ),
        (
            "truncated length",
            vec![0x0A],
            E::Truncated {
                what: "partition_key_table",
                offset: 5,
            },
        ),
        (
            "eleven-byte varint",
            [&[0x0A][..], &[0xFF; 10], &[0x01]].concat(),
            E::BadVarint {
                what: "partition_key_table",
                offset: 5,
            },
        ),
        (
            "varint over 64 bits",
            [&[0x0A][..], &[0xFF; 9], &[0x02]].concat(),
            E::BadVarint {
                what: "partition_key_table",
                offset: 5,
            },
        ),
        (
            "length past the end",
            vec![0x0A, 0x05, b'a'],
            E::LengthOutOfBounds {
                what: "partition_key_table",
                offset: 6,
                length: 5,
                available: 1,
            },
        ),
        (
            "huge length",
            [&[0x1A][..], &[0xFF; 9], &[0x01]].concat(),
            E::LengthOutOfBounds {
                what: "records",
                offset: 15,
                length: u64::MAX,
                available: 0,
            },
        ),
        (
            "table with varint wire type",
            vec![0x08, 0x01],
            E::WrongWireType {
                message: "AggregatedRecord",
                field: 1,
                wire_type: 0,
                expected: 2,
                offset: 4,
            },
        ),
        (
            "record with fixed32 wire type",
            vec![0x1D, 0, 0, 0, 0],
            E::WrongWireType {
                message: "AggregatedRecord",
                field: 3,
                wire_type: 5,
                expected: 2,
                offset: 4,
            },
        ),
        (
            "field number 0",
            vec![0x02, 0x00],
            E::InvalidTag {
                message: "AggregatedRecord",
                field: 0,
                wire_type: 2,
                offset: 4,
            },
        ),
        (
            "group wire type",
            vec![0x0B],
            E::InvalidTag {
                message: "AggregatedRecord",
                field: 1,
                wire_type: 3,
                offset: 4,
            },
        ),
        (
            "invalid wire type 7",
            vec![0x27],
            E::InvalidTag {
                message: "AggregatedRecord",
                field: 4,
                wire_type: 7,
                offset: 4,
            },
        ),
        (
            "partition key not UTF-8",
            [&[0x0A, 0x02, 0xC3, 0x28][..], ok_record].concat(),
            E::InvalidUtf8 {
                table: "partition_key_table",
                index: 0,
            },
        ),
        (
            "explicit hash key not UTF-8",
            [&[0x0A, 0x01, b'k', 0x12, 0x01, 0xFF][..], ok_record].concat(),
            E::InvalidUtf8 {
                table: "explicit_hash_key_table",
                index: 0,
            },
        ),
        (
            "partition key index out of range",
            with_pk(&[0x1A, 0x04, 0x08, 0x01, 0x1A, 0x00]),
            E::KeyIndexOutOfRange {
                record: 0,
                table: "partition_key_table",
                index: 1,
                table_len: 1,
            },
        ),
        (
            "partition key index out of an empty table",
            ok_record.to_vec(),
            E::KeyIndexOutOfRange {
                record: 0,
                table: "partition_key_table",
                index: 0,
                table_len: 0,
            },
        ),
        (
            "explicit hash key index out of range",
            with_pk(&[0x1A, 0x06, 0x08, 0x00, 0x10, 0x00, 0x1A, 0x00]),
            E::KeyIndexOutOfRange {
                record: 0,
                table: "explicit_hash_key_table",
                index: 0,
                table_len: 0,
            },
        ),
        (
            "missing partition key index",
            with_pk(&[0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00, 0x1A, 0x02, 0x1A, 0x00]),
            E::MissingField {
                record: 1,
                field: "partition_key_index",
            },
        ),
        (
            "missing data",
            with_pk(&[0x1A, 0x02, 0x08, 0x00]),
            E::MissingField {
                record: 0,
                field: "data",
            },
        ),
        (
            "index with length wire type",
            with_pk(&[0x1A, 0x04, 0x0A, 0x00, 0x1A, 0x00]),
            E::WrongWireType {
                message: "Record",
                field: 1,
                wire_type: 2,
                expected: 0,
                offset: 9,
            },
        ),
        (
            "data with varint wire type",
            with_pk(&[0x1A, 0x04, 0x08, 0x00, 0x18, 0x00]),
            E::WrongWireType {
                message: "Record",
                field: 3,
                wire_type: 0,
                expected: 2,
                offset: 11,
            },
        ),
        (
            "data length past the record's end",
            with_pk(&[0x1A, 0x04, 0x08, 0x00, 0x1A, 0x01]),
            E::LengthOutOfBounds {
                what: "Record.data",
                offset: 13,
                length: 1,
                available: 0,
            },
        ),
        (
            "truncated index inside a record",
            with_pk(&[0x1A, 0x02, 0x08, 0x80]),
            E::Truncated {
                what: "Record.partition_key_index",
                offset: 10,
            },
        ),
        (
            "truncated skipped fixed64",
            with_pk(&[0x31, 0, 0, 0]),
            E::LengthOutOfBounds {
                what: "skipped field",
                offset: 8,
                length: 8,
                available: 3,
            },
        ),
    ];
    for (name, protobuf, expected) in cases {
        let got = decode(&protobuf);
        assert_eq!(got, Err(expected), "case {name}");
        // Every message names the problem.
        assert!(!got.unwrap_err().to_string().is_empty());
    }
}

#[test]
fn tags_and_unknown_fields_are_skipped() {
    #[rustfmt::skip]
    let protobuf: &[u8] = &[
        0x0A, 0x01, b'k',
        0x28, 0x96, 0x01,                         // unknown field 5, varint
        0x31, 1, 2, 3, 4, 5, 6, 7, 8,             // unknown field 6, fixed64
        0x3D, 1, 2, 3, 4,                         // unknown field 7, fixed32
        0x1A, 0x12,
        0x08, 0x00,
        0x22, 0x06, 0x0A, 0x01, b't', 0x12, 0x01, b'v', // tags[0] = {key "t", value "v"}
        0x1A, 0x02, b'h', b'i',
        0x42, 0x00,                               // unknown field 8 in Record, empty
        0x08, 0x00,                               // repeated scalar: last one wins
    ];
    let records = decode(protobuf).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].partition_key, "k");
    assert_eq!(records[0].explicit_hash_key, None);
    assert_eq!(&records[0].data[..], b"hi");
}

#[test]
fn decoded_data_shares_the_input_buffer() {
    let mut agg = Aggregator::new(usize::MAX, usize::MAX);
    assert_eq!(agg.try_push("k", None, &[5; 64]), TryPush::Added);
    let data = agg.finish().unwrap().data;
    let range = data.as_ptr_range();
    let records = deaggregate("k", None, data.clone()).unwrap();
    assert!(range.contains(&records[0].data.as_ptr()));
}

/// What `deaggregate` (the consumer's reading) makes of a framed protobuf.
#[derive(Debug, PartialEq)]
enum Read {
    /// Passed through as one plain record.
    Plain,
    /// Decoded: (partition key, data) per user record.
    Users(Vec<(&'static str, &'static [u8])>),
    Error(DeaggregateError),
}

mod consumer;

#[test]
fn an_unused_key_that_is_not_utf8_fails_only_the_strict_decoder() {
    #[rustfmt::skip]
    let protobuf: &[u8] = &[
        0x0A, 0x01, b'k',                 // partition_key_table[0] = "k"
        0x0A, 0x01, 0xFF,                 // partition_key_table[1]: not UTF-8, used by nobody
        0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00, // one record, key 0, empty data
    ];
    assert_eq!(
        decode(protobuf),
        Err(DeaggregateError::InvalidUtf8 {
            table: "partition_key_table",
            index: 1
        })
    );
    let lenient = deaggregate("outer", Some("1"), framed(protobuf)).unwrap();
    assert_eq!(lenient.len(), 1);
    assert_eq!(lenient[0].partition_key, "k");
}

#[test]
fn a_tag_needs_its_key_and_may_carry_unknown_fields() {
    let with_tag = |tag: &[u8]| {
        let mut record = vec![0x08, 0x00, 0x1A, 0x00, 0x22, tag.len() as u8];
        record.extend_from_slice(tag);
        let mut protobuf = vec![0x0A, 0x01, b'k', 0x1A, record.len() as u8];
        protobuf.extend(record);
        protobuf
    };
    // A key alone, and an unknown varint field beside it: well formed.
    assert!(decode(&with_tag(&[0x0A, 0x01, b't'])).is_ok());
    assert!(decode(&with_tag(&[0x0A, 0x01, b't', 0x18, 0x05])).is_ok());
    // A value without a key: the required key is missing.
    assert_eq!(
        decode(&with_tag(&[0x12, 0x01, b'v'])),
        Err(DeaggregateError::MissingField {
            record: 0,
            field: "tags.key"
        })
    );
    // A length past the tag's end names the field it belongs to.
    let what = |tag: &[u8]| match decode(&with_tag(tag)) {
        Err(DeaggregateError::LengthOutOfBounds { what, .. }) => what,
        other => panic!("{other:?}"),
    };
    assert_eq!(what(&[0x0A, 0x05, b't']), "Tag.key");
    assert_eq!(what(&[0x0A, 0x01, b't', 0x12, 0x05, b'v']), "Tag.value");
}
