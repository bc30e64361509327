//! The wire format's constants, protobuf field tags and varints, and a bounds-checked reader.

use super::decode::DeaggregateError;

/// The four bytes that open every KPL aggregate.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 trailer.
pub(super) const DIGEST_LEN: usize = 16;

/// Bytes an aggregate adds around its protobuf: magic and MD5 trailer.
pub(super) const FRAMING_LEN: usize = MAGIC.len() + DIGEST_LEN;

// Protobuf wire types used by the format.
pub(super) const WIRE_VARINT: u8 = 0;
pub(super) const WIRE_FIXED64: u8 = 1;
pub(super) const WIRE_LEN: u8 = 2;
pub(super) const WIRE_START_GROUP: u8 = 3;
pub(super) const WIRE_END_GROUP: u8 = 4;
pub(super) const WIRE_FIXED32: u8 = 5;

/// Nesting depth of groups a lenient reader skips (protobuf parsers' usual recursion limit).
const MAX_GROUP_DEPTH: usize = 100;

// Field tags (field number << 3 | wire type) written by the encoder.
pub(super) const TAG_PARTITION_KEY: u8 = 1 << 3 | WIRE_LEN;
pub(super) const TAG_EXPLICIT_HASH_KEY: u8 = 2 << 3 | WIRE_LEN;
pub(super) const TAG_RECORD: u8 = 3 << 3 | WIRE_LEN;
pub(super) const TAG_RECORD_PK_INDEX: u8 = 1 << 3 | WIRE_VARINT;
pub(super) const TAG_RECORD_EHK_INDEX: u8 = 2 << 3 | WIRE_VARINT;
pub(super) const TAG_RECORD_DATA: u8 = 3 << 3 | WIRE_LEN;

/// Number of bytes the varint encoding of `value` takes (1 to 10).
#[inline]
pub(super) fn varint_len(value: u64) -> usize {
    // Bits needed (at least 1), seven per byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[inline]
pub(super) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Size of a length-delimited field (one-byte tag) whose payload is `len` bytes.
#[inline]
pub(super) fn len_field_size(len: usize) -> usize {
    1usize
        .saturating_add(varint_len(len as u64))
        .saturating_add(len)
}

/// Bounds-checked protobuf reader over `buf[pos..end]`.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    message: &'static str,
    /// Read as a protobuf parser does (the references' way): known fields with another wire
    /// type are skipped as unknown, groups are skipped, and a tenth varint byte may carry
    /// bits past the 64th (dropped). Strict readers refuse all three.
    lenient: bool,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], pos: usize, end: usize, message: &'static str) -> Self {
        debug_assert!(pos <= end && end <= buf.len());
        Self {
            buf,
            pos,
            end,
            message,
            lenient: false,
        }
    }

    /// The same reader in lenient mode (see the field's docs).
    pub(super) fn lenient(mut self, lenient: bool) -> Self {
        self.lenient = lenient;
        self
    }

    /// Whether this reader is lenient.
    pub(super) fn is_lenient(&self) -> bool {
        self.lenient
    }

    pub(super) fn varint(&mut self, what: &'static str) -> Result<u64, DeaggregateError> {
        let offset = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf[..self.end].get(self.pos) else {
                return Err(DeaggregateError::Truncated { what, offset });
            };
            self.pos += 1;
            // The tenth byte may only contribute the 64th bit.
            if i == 9 && byte > 1 && !(self.lenient && byte < 0x80) {
                return Err(DeaggregateError::BadVarint { what, offset });
            }
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(DeaggregateError::BadVarint { what, offset })
    }

    /// Next field's (number, wire type, tag offset), or `None` at the end of the message.
    pub(super) fn tag(&mut self) -> Result<Option<(u64, u8, usize)>, DeaggregateError> {
        if self.pos == self.end {
            return Ok(None);
        }
        let offset = self.pos;
        let key = self.varint("field tag")?;
        let field = key >> 3;
        let wire_type = (key & 7) as u8;
        let valid_wire_type = match wire_type {
            WIRE_VARINT | WIRE_FIXED64 | WIRE_LEN | WIRE_FIXED32 => true,
            WIRE_START_GROUP | WIRE_END_GROUP => self.lenient,
            _ => false,
        };
        if field == 0 || field > u64::from(u32::MAX >> 3) || !valid_wire_type {
            return Err(DeaggregateError::InvalidTag {
                message: self.message,
                field,
                wire_type,
                offset,
            });
        }
        Ok(Some((field, wire_type, offset)))
    }

    pub(super) fn expect_wire_type(
        &self,
        field: u64,
        wire_type: u8,
        expected: u8,
        offset: usize,
    ) -> Result<(), DeaggregateError> {
        if wire_type == expected {
            Ok(())
        } else {
            Err(DeaggregateError::WrongWireType {
                message: self.message,
                field,
                wire_type,
                expected,
                offset,
            })
        }
    }

    /// Advances over `length` bytes, returning their range.
    pub(super) fn take(
        &mut self,
        what: &'static str,
        length: u64,
    ) -> Result<(usize, usize), DeaggregateError> {
        let available = self.end - self.pos;
        match usize::try_from(length) {
            Ok(len) if len <= available => {
                let start = self.pos;
                self.pos += len;
                Ok((start, self.pos))
            }
            _ => Err(DeaggregateError::LengthOutOfBounds {
                what,
                offset: self.pos,
                length,
                available,
            }),
        }
    }

    pub(super) fn length_delimited(
        &mut self,
        what: &'static str,
    ) -> Result<(usize, usize), DeaggregateError> {
        let length = self.varint(what)?;
        self.take(what, length)
    }

    /// Skips the value of field `field` with `wire_type` (tag already read).
    pub(super) fn skip(&mut self, field: u64, wire_type: u8) -> Result<(), DeaggregateError> {
        self.skip_nested(field, wire_type, 0)
    }

    fn skip_nested(
        &mut self,
        field: u64,
        wire_type: u8,
        depth: usize,
    ) -> Result<(), DeaggregateError> {
        const WHAT: &str = "skipped field";
        match wire_type {
            WIRE_VARINT => self.varint(WHAT).map(drop),
            WIRE_FIXED64 => self.take(WHAT, 8).map(drop),
            WIRE_FIXED32 => self.take(WHAT, 4).map(drop),
            WIRE_LEN => self.length_delimited(WHAT).map(drop),
            // Only lenient readers return group tags: a group ends at the end-group tag of the
            // same field, and an end-group tag anywhere else is malformed.
            WIRE_START_GROUP if depth < MAX_GROUP_DEPTH => {
                let start = self.pos;
                loop {
                    match self.tag()? {
                        None => {
                            return Err(DeaggregateError::Truncated {
                                what: "group",
                                offset: start,
                            })
                        }
                        Some((f, WIRE_END_GROUP, _)) if f == field => return Ok(()),
                        Some((f, WIRE_END_GROUP, offset)) => {
                            return Err(DeaggregateError::InvalidTag {
                                message: self.message,
                                field: f,
                                wire_type: WIRE_END_GROUP,
                                offset,
                            });
                        }
                        Some((f, w, _)) => self.skip_nested(f, w, depth + 1)?,
                    }
                }
            }
            _ => Err(DeaggregateError::InvalidTag {
                message: self.message,
                field,
                wire_type,
                offset: self.pos,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
