//! Hash-key arithmetic: MD5 routing, explicit hash keys and uniform shard ranges.

use md5::{Digest, Md5};

/// The largest hash key, `2^128 - 1`.
pub const MAX_HASH_KEY: u128 = u128::MAX;

/// The hash key Kinesis derives from a partition key: MD5 of its UTF-8 bytes, big-endian.
pub fn partition_key_hash(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Why an `ExplicitHashKey` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKeyError {
    /// Not a decimal number at all (AWS: `ValidationException`, pattern mismatch).
    NotANumber,
    /// A decimal number outside `[0, 2^128-1]` (AWS: `InvalidArgumentException`).
    OutOfRange,
}

/// Parses an `ExplicitHashKey` in `[0, 2^128-1]`. The digits must match the API's pattern
/// `0|([1-9]\d{0,38})` (no leading zeros, at most 39 digits), else [`HashKeyError::NotANumber`];
/// a sign is let through to the range check, which is what AWS-faithful emulators answer for
/// negative numbers.
pub fn parse_explicit_hash_key(s: &str) -> Result<u128, HashKeyError> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let pattern = digits == "0"
        || (matches!(digits.as_bytes().first(), Some(b'1'..=b'9'))
            && digits.len() <= 39
            && digits.bytes().all(|b| b.is_ascii_digit()));
    if !pattern {
        return Err(HashKeyError::NotANumber);
    }
    if s.starts_with('-') {
        // "-0" is still zero; any other negative number is out of range.
        return if digits.bytes().all(|b| b == b'0') {
            Ok(0)
        } else {
            Err(HashKeyError::OutOfRange)
        };
    }
    digits.parse::<u128>().map_err(|_| HashKeyError::OutOfRange)
}

/// The hash-key range `[start, end]` of shard `i` of `n` uniformly sized shards, as AWS
/// assigns them: shard `i` starts at `floor(i * 2^128 / n)`; the last ends at `2^128 - 1`.
pub fn uniform_range(i: u32, n: u32) -> (u128, u128) {
    assert!(n > 0 && i < n, "shard {i} of {n}");
    let start = uniform_start(i, n);
    let end = if i + 1 == n {
        MAX_HASH_KEY
    } else {
        uniform_start(i + 1, n) - 1
    };
    (start, end)
}

/// `floor(i * 2^128 / n)` without overflow: `2^128 = n*q + r + 1`.
fn uniform_start(i: u32, n: u32) -> u128 {
    let n128 = u128::from(n);
    let q = MAX_HASH_KEY / n128;
    let r = MAX_HASH_KEY % n128;
    let i = u128::from(i);
    i * q + (i * (r + 1)) / n128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_aws_for_three_shards() {
        assert_eq!(
            uniform_range(0, 3),
            (0, 113_427_455_640_312_821_154_458_202_477_256_070_484)
        );
        assert_eq!(
            uniform_range(1, 3).0,
            113_427_455_640_312_821_154_458_202_477_256_070_485
        );
        assert_eq!(uniform_range(2, 3).1, MAX_HASH_KEY);
    }

    #[test]
    fn ranges_tile_the_key_space() {
        for n in [1u32, 2, 3, 7, 8, 100, 1000, 4096] {
            let mut next = 0u128;
            for i in 0..n {
                let (s, e) = uniform_range(i, n);
                assert_eq!(s, next);
                assert!(e >= s);
                next = e.wrapping_add(1);
            }
            assert_eq!(next, 0, "last shard of {n} must end at 2^128-1");
        }
        assert_eq!(uniform_range(1, 2).0, 1u128 << 127);
    }

    #[test]
    fn explicit_hash_keys() {
        assert_eq!(parse_explicit_hash_key("0"), Ok(0));
        assert_eq!(
            parse_explicit_hash_key("340282366920938463463374607431768211455"),
            Ok(MAX_HASH_KEY)
        );
        assert_eq!(
            parse_explicit_hash_key("340282366920938463463374607431768211456"),
            Err(HashKeyError::OutOfRange)
        );
        assert_eq!(parse_explicit_hash_key("-1"), Err(HashKeyError::OutOfRange));
        assert_eq!(
            parse_explicit_hash_key("abc"),
            Err(HashKeyError::NotANumber)
        );
        assert_eq!(parse_explicit_hash_key(""), Err(HashKeyError::NotANumber));
        for leading_zero in ["00", "007", "0123", "-01"] {
            assert_eq!(
                parse_explicit_hash_key(leading_zero),
                Err(HashKeyError::NotANumber),
                "{leading_zero}"
            );
        }
        let forty_digits = format!("1{}", "0".repeat(39));
        assert_eq!(
            parse_explicit_hash_key(&forty_digits),
            Err(HashKeyError::NotANumber)
        );
        assert_eq!(parse_explicit_hash_key("-0"), Ok(0));
    }

    #[test]
    fn md5_routing() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(
            partition_key_hash(""),
            0xd41d8cd98f00b204e9800998ecf8427e_u128
        );
    }
}
