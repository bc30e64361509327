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
