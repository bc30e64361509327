use super::*;

#[test]
fn varint_len_matches_encoding() {
    for v in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        (1 << 21) - 1,
        1 << 21,
        u64::MAX >> 1,
        u64::MAX,
    ] {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        assert_eq!(varint_len(v), buf.len(), "value {v}");
        let mut reader = Reader::new(&buf, 0, buf.len(), "test");
        assert_eq!(reader.varint("v"), Ok(v));
    }
}

/// `depth` groups of field 5, each inside the previous one.
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut buf = vec![(5 << 3) | WIRE_START_GROUP; depth];
    buf.extend(std::iter::repeat_n((5 << 3) | WIRE_END_GROUP, depth));
    buf
}

#[test]
fn a_lenient_reader_skips_groups_nested_up_to_the_limit() {
    for depth in [1, MAX_GROUP_DEPTH, MAX_GROUP_DEPTH + 1] {
        let buf = nested_groups(depth);
        let mut reader = Reader::new(&buf, 0, buf.len(), "test").lenient(true);
        let (field, wire_type, _) = reader.tag().unwrap().unwrap();
        let skipped = reader.skip(field, wire_type);
        if depth <= MAX_GROUP_DEPTH {
            assert_eq!(skipped, Ok(()), "depth {depth}");
            assert_eq!(reader.tag(), Ok(None), "depth {depth}: all read");
        } else {
            assert_eq!(
                skipped,
                Err(DeaggregateError::InvalidTag {
                    message: "test",
                    field: 5,
                    wire_type: WIRE_START_GROUP,
                    offset: MAX_GROUP_DEPTH + 1,
                }),
                "one group too deep"
            );
        }
    }
}
