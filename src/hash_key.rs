//! Hash keys: where a record lands in a stream's 128-bit key space.
//!
//! Kinesis maps a partition key to a hash key by taking the MD5 digest of the key's UTF-8
//! bytes and reading it as a big-endian unsigned 128-bit integer. A record may instead carry an
//! explicit hash key: a decimal integer from 0 to 2^128 - 1.

use md5::{Digest, Md5};
use std::fmt;

/// A position in a stream's hash key space, `0..=2^128 - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashKey(pub u128);

impl HashKey {
    /// The hash key Kinesis derives from a partition key: MD5 of its UTF-8 bytes, big-endian.
    pub fn from_partition_key(partition_key: &str) -> Self {
        let digest = Md5::digest(partition_key.as_bytes());
        HashKey(u128::from_be_bytes(digest.into()))
    }

    /// Parses an `ExplicitHashKey`: decimal digits only, value at most 2^128 - 1.
    pub fn parse_explicit(text: &str) -> Result<Self, ExplicitHashKeyError> {
        if text.is_empty() {
            return Err(ExplicitHashKeyError::Empty);
        }
        if let Some((index, ch)) = text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            return Err(ExplicitHashKeyError::NotDecimal { index, ch });
        }
        if text.len() > 1 && text.starts_with('0') {
            // The API's pattern is `0|([1-9]\d{0,38})`: Kinesis refuses the whole request.
            return Err(ExplicitHashKeyError::LeadingZero);
        }
        text.parse::<u128>()
            .map(HashKey)
            .map_err(|_| ExplicitHashKeyError::OutOfRange { digits: text.len() })
    }
}

/// A hash key's decimal digits, held on the stack (`HashKey::decimal`).
pub(crate) struct Decimal {
    digits: [u8; 39],
    len: u8,
}

impl HashKey {
    /// Its decimal digits (`0`, or up to 39 digits without a leading zero).
    pub(crate) fn decimal(self) -> Decimal {
        struct Fill<'a>(&'a mut Decimal);
        impl fmt::Write for Fill<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let at = usize::from(self.0.len);
                let to = self.0.digits.get_mut(at..at + s.len()).ok_or(fmt::Error)?;
                to.copy_from_slice(s.as_bytes());
                self.0.len += s.len() as u8;
                Ok(())
            }
        }
        let mut d = Decimal {
            digits: [0; 39],
            len: 0,
        };
        fmt::write(&mut Fill(&mut d), format_args!("{}", self.0)).expect("39 digits at most");
        d
    }
}

impl std::ops::Deref for Decimal {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).expect("ASCII digits")
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Why an `ExplicitHashKey` string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExplicitHashKeyError {
    /// The string was empty.
    #[error("is empty; expected a decimal integer from 0 to 2^128 - 1")]
    Empty,
    /// A character other than an ASCII digit (signs and spaces included).
    #[error("has {ch:?} at byte {index}; expected only decimal digits (0 to 2^128 - 1)")]
    NotDecimal {
        /// Byte offset of the first offending character.
        index: usize,
        /// The offending character.
        ch: char,
    },
    /// A number with a leading zero, which the API's pattern `0|([1-9]\d{0,38})` refuses.
    #[error("has a leading zero; expected 0 or a decimal integer without leading zeros (API pattern 0|([1-9]\\d{{0,38}}))")]
    LeadingZero,
    /// The number is larger than 2^128 - 1.
    #[error("is a {digits}-digit number above the limit 2^128 - 1 (340282366920938463463374607431768211455)")]
    OutOfRange {
        /// Number of digits in the string.
        digits: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decimal_is_the_number_as_the_api_spells_it() {
        for n in [
            0,
            1,
            9,
            10,
            12345,
            u64::MAX as u128 + 1,
            u128::MAX - 1,
            u128::MAX,
        ] {
            let d = HashKey(n).decimal();
            assert_eq!(&*d, n.to_string());
            assert_eq!(HashKey::parse_explicit(&d), Ok(HashKey(n)));
        }
    }

    /// MD5 digests computed independently (`printf '%s' KEY | md5sum`).
    #[test]
    fn md5_vectors() {
        let cases = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("user-42", "7631bc07a1cc8fcd56e70fc6b2fb4a43"),
            ("héllo", "be50e8478cf24ff3595bc7307fb91b50"),
        ];
        for (key, hex) in cases {
            let expected = u128::from_str_radix(hex, 16).unwrap();
            assert_eq!(HashKey::from_partition_key(key).0, expected, "key {key:?}");
        }
    }

    #[test]
    fn explicit_hash_key_bounds() {
        assert_eq!(HashKey::parse_explicit("0"), Ok(HashKey(0)));
        assert_eq!(
            HashKey::parse_explicit("340282366920938463463374607431768211455"),
            Ok(HashKey(u128::MAX))
        );
        assert_eq!(
            HashKey::parse_explicit("340282366920938463463374607431768211456"),
            Err(ExplicitHashKeyError::OutOfRange { digits: 39 })
        );
        assert_eq!(
            HashKey::parse_explicit("-1"),
            Err(ExplicitHashKeyError::NotDecimal { index: 0, ch: '-' })
        );
        assert_eq!(
            HashKey::parse_explicit("12 3"),
            Err(ExplicitHashKeyError::NotDecimal { index: 2, ch: ' ' })
        );
        assert_eq!(
            HashKey::parse_explicit("+5"),
            Err(ExplicitHashKeyError::NotDecimal { index: 0, ch: '+' })
        );
        assert_eq!(
            HashKey::parse_explicit(""),
            Err(ExplicitHashKeyError::Empty)
        );
        assert_eq!(
            HashKey::parse_explicit("007"),
            Err(ExplicitHashKeyError::LeadingZero)
        );
    }
}
