//! Helpers shared by the crate's unit tests, `tests/fuzz.rs` and `tests/aggregation_reference.rs`:
//! hand-framed aggregates and proptest generators of user records and protobuf-shaped bytes.
//!
//! Compiled for the crate's own tests and with the `testing` cargo feature (which the crate's
//! tests and benches turn on through a dev-dependency on the crate itself); not part of the
//! default public API.

use bytes::Bytes;
use md5::{Digest, Md5};
use proptest::prelude::*;

use super::wire::MAGIC;

/// Writes `value` as a protobuf varint.
pub fn put_varint(out: &mut Vec<u8>, value: u64) {
    super::wire::put_varint(out, value);
}

/// `MAGIC + protobuf + MD5(protobuf)`: passes the digest check, so a decoder must parse it.
pub fn framed(protobuf: &[u8]) -> Bytes {
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(protobuf);
    data.extend_from_slice(&Md5::digest(protobuf));
    Bytes::from(data)
}

/// Proptest case count: `PROPTEST_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic filler (xorshift), so that large data costs no per-byte strategy work.
pub fn filled(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A user record as the tests see it: partition key, explicit hash key, data.
pub type UserRecord = (String, Option<String>, Vec<u8>);

/// Partition keys: a small pool (so keys repeat and get deduplicated) or 1 to 256 arbitrary
/// characters.
pub fn partition_key() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4).prop_map(|i| format!("pool-{i}")),
        prop::collection::vec(any::<char>(), 1..=256).prop_map(String::from_iter),
    ]
}

/// No explicit hash key, one of three repeated ones, or any valid one.
pub fn explicit_hash_key() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (0u8..3).prop_map(|i| Some(format!("{}", u128::MAX / 3 * u128::from(i)))),
        any::<u128>().prop_map(|v| Some(v.to_string())),
    ]
}

/// Data of 0 to `max_len` bytes, often empty.
pub fn data(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(Vec::new()),
        8 => prop::collection::vec(any::<u8>(), 0..300.min(max_len + 1)),
        1 => (0usize..=max_len, any::<u64>()).prop_map(|(len, seed)| filled(len, seed)),
    ]
}

/// User records with keys from [`partition_key`], [`explicit_hash_key`] and [`data`].
pub fn user_record(max_data: usize) -> impl Strategy<Value = UserRecord> {
    (partition_key(), explicit_hash_key(), data(max_data))
}

/// Protobuf-shaped bytes: fields 0 to 7 with every wire type (and the invalid 6 and 7), lengths
/// that lie (huge, past the end), and varints of every size.
pub fn protobuf_like() -> impl Strategy<Value = Vec<u8>> {
    let field = (
        0u64..8,
        0u8..8,
        prop_oneof![
            Just(0u64),
            0u64..300,
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
            any::<u64>()
        ],
        prop::collection::vec(any::<u8>(), 0..40),
    );
    prop::collection::vec(field, 0..24).prop_map(|fields| {
        let mut out = Vec::new();
        for (number, wire, value, payload) in fields {
            put_varint(&mut out, (number << 3) | u64::from(wire));
            match wire {
                0 => put_varint(&mut out, value),
                1 => out.extend_from_slice(&value.to_le_bytes()),
                2 => {
                    // Mostly honest lengths, sometimes a lie.
                    let len = if value.is_multiple_of(3) {
                        value
                    } else {
                        payload.len() as u64
                    };
                    put_varint(&mut out, len);
                    out.extend_from_slice(&payload);
                }
                5 => out.extend_from_slice(&(value as u32).to_le_bytes()),
                _ => out.extend_from_slice(&payload),
            }
        }
        out
    })
}
