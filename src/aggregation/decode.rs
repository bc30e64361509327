//! The decoder: a Kinesis record back into its user records.

use bytes::Bytes;
use md5::{Digest, Md5};

use super::wire::{Reader, DIGEST_LEN, FRAMING_LEN, MAGIC, WIRE_LEN, WIRE_VARINT};

/// One user record recovered from a Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeaggregatedRecord {
    /// The user record's partition key.
    pub partition_key: String,
    /// The user record's own explicit hash key, if it had one. For a sub-record of an
    /// aggregate this comes from the aggregate's table only; the outer record's explicit hash
    /// key is not inherited.
    pub explicit_hash_key: Option<String>,
    /// The user record's data (shares the Kinesis record's buffer, no copy).
    pub data: Bytes,
    /// Index of the user record inside its aggregate; 0 for a plain record.
    pub sub_sequence_number: u64,
}

/// Why a Kinesis record that carries the aggregate magic could not be decoded.
///
/// Offsets are byte positions in the Kinesis record's data (the magic is at offset 0).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeaggregateError {
    /// The MD5 trailer does not match the protobuf bytes.
    #[error("aggregate MD5 mismatch: trailer is {expected:032x}, MD5 of the {protobuf_len}-byte protobuf is {actual:032x}")]
    DigestMismatch {
        /// The trailer found in the record (big-endian).
        expected: u128,
        /// The MD5 computed over the protobuf bytes (big-endian).
        actual: u128,
        /// Length of the protobuf part.
        protobuf_len: usize,
    },
    /// A varint runs past the end of its message.
    #[error("aggregate truncated: {what} at offset {offset} runs past the end of its message")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A varint is longer than ten bytes or overflows 64 bits.
    #[error("aggregate malformed: {what} at offset {offset} is not a valid 64-bit varint")]
    BadVarint {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A length prefix or fixed-size field goes past the end of its enclosing message.
    #[error("aggregate malformed: {what} at offset {offset} needs {length} bytes but only {available} remain")]
    LengthOutOfBounds {
        /// What was being read.
        what: &'static str,
        /// Where its payload starts.
        offset: usize,
        /// Length announced.
        length: u64,
        /// Bytes left in the enclosing message.
        available: usize,
    },
    /// A known field carries a wire type its declaration does not allow.
    #[error("aggregate malformed: field {field} of {message} at offset {offset} has wire type {wire_type}, expected {expected}")]
    WrongWireType {
        /// Message being decoded (`AggregatedRecord` or `Record`).
        message: &'static str,
        /// Field number.
        field: u64,
        /// Wire type found.
        wire_type: u8,
        /// Wire type the field requires.
        expected: u8,
        /// Offset of the field's tag.
        offset: usize,
    },
    /// A tag has field number 0 or a wire type that is invalid or unsupported (groups).
    #[error("aggregate malformed: invalid tag (field {field}, wire type {wire_type}) in {message} at offset {offset}")]
    InvalidTag {
        /// Message being decoded.
        message: &'static str,
        /// Field number.
        field: u64,
        /// Wire type.
        wire_type: u8,
        /// Offset of the tag.
        offset: usize,
    },
    /// A key table entry is not UTF-8.
    #[error("aggregate malformed: entry {index} of {table} is not valid UTF-8")]
    InvalidUtf8 {
        /// `partition_key_table` or `explicit_hash_key_table`.
        table: &'static str,
        /// Entry index.
        index: usize,
    },
    /// A record refers to a key table entry that does not exist.
    #[error("aggregate malformed: record {record} refers to entry {index} of {table}, which has {table_len} entries")]
    KeyIndexOutOfRange {
        /// Index of the record in the aggregate.
        record: usize,
        /// `partition_key_table` or `explicit_hash_key_table`.
        table: &'static str,
        /// Index found.
        index: u64,
        /// Entries in the table.
        table_len: usize,
    },
    /// A record lacks a required field.
    #[error("aggregate malformed: record {record} has no {field}")]
    MissingField {
        /// Index of the record in the aggregate.
        record: usize,
        /// `partition_key_index` or `data`.
        field: &'static str,
    },
    /// The aggregate is well formed but holds no record; no producer writes such a thing.
    #[error("aggregate holds no record")]
    Empty,
}

/// Turns a Kinesis record into its user records, as a KCL consumer reads them.
///
/// A record that is not a well-formed aggregate is one plain user record with the given
/// partition key, explicit hash key and data, exactly as the KCL (`AggregatorUtil`) and
/// aws-kinesis-agg deliver it: data without the [`MAGIC`] prefix, data of 20 bytes or fewer
/// (magic plus MD5 trailer and nothing to decode), a trailer that is not the MD5 of the bytes
/// between, and a protobuf that a protobuf parser refuses (truncated, a varint longer than ten
/// bytes, a length past the end, field number 0, wire type 6 or 7, an unmatched group, a
/// missing required field: `Record.partition_key_index`, `Record.data` or `Tag.key`). Fields
/// are read as protobuf parsers read them: unknown fields, known fields with another wire type
/// and groups are skipped, and the last of repeated scalar values wins. A well-formed aggregate
/// without records yields no user record. [`deaggregate_strict`] refuses all of these instead.
///
/// # Errors
///
/// Two cases where the references deliver something and this refuses, so that no user record
/// is silently lost or invented:
/// - [`DeaggregateError::KeyIndexOutOfRange`]: a record points past a key table. The KCL and
///   aws-kinesis-agg deliver the records before it, log an error and drop the rest.
/// - [`DeaggregateError::InvalidUtf8`]: a key a record uses is not UTF-8. The KCL substitutes
///   U+FFFD, aws-kinesis-agg hands out the raw bytes.
///
/// The function never panics, and never allocates on the word of a length field: every length
/// is checked against the input first, and what it allocates is bounded by the input size. The
/// records' data shares `data`'s buffer.
pub fn deaggregate(
    partition_key: &str,
    explicit_hash_key: Option<&str>,
    data: Bytes,
) -> Result<Vec<DeaggregatedRecord>, DeaggregateError> {
    let plain = |data: Bytes| {
        Ok(vec![DeaggregatedRecord {
            partition_key: partition_key.to_owned(),
            explicit_hash_key: explicit_hash_key.map(str::to_owned),
            data,
            sub_sequence_number: 0,
        }])
    };
    if data.len() <= FRAMING_LEN || data[..MAGIC.len()] != MAGIC || digest_mismatch(&data).is_some()
    {
        return plain(data);
    }
    match decode(&data, true) {
        Ok(records) => Ok(records),
        Err(
            e
            @ (DeaggregateError::KeyIndexOutOfRange { .. } | DeaggregateError::InvalidUtf8 { .. }),
        ) => Err(e),
        Err(_) => plain(data),
    }
}

/// Turns a Kinesis record into its user records, refusing anything but a well-formed aggregate
/// written as producers write it.
///
/// Data without the [`MAGIC`] prefix, or shorter than 20 bytes (magic plus MD5 trailer, so it
/// cannot be an aggregate), is one plain user record with the given partition key and explicit
/// hash key. Data with the magic is decoded strictly: a bad MD5, a truncated or malformed
/// protobuf (bad varint, wrong wire type, group, length past the end, key index out of range,
/// key not UTF-8, missing required field) or an aggregate without records is an error that
/// names what is wrong. Tags and unknown fields are skipped (a tag must still have its key).
///
/// Use it to check what a producer wrote; [`deaggregate`] reads as consumers do, and passes a
/// broken aggregate on as one plain record.
///
/// # Errors
///
/// A [`DeaggregateError`] when `data` starts with the magic, is at least 20 bytes long and is
/// not a valid aggregate of at least one record.
///
/// Like [`deaggregate`], it never panics and never allocates on the word of a length field.
pub fn deaggregate_strict(
    partition_key: &str,
    explicit_hash_key: Option<&str>,
    data: Bytes,
) -> Result<Vec<DeaggregatedRecord>, DeaggregateError> {
    if data.len() < FRAMING_LEN || data[..MAGIC.len()] != MAGIC {
        return Ok(vec![DeaggregatedRecord {
            partition_key: partition_key.to_owned(),
            explicit_hash_key: explicit_hash_key.map(str::to_owned),
            data,
            sub_sequence_number: 0,
        }]);
    }
    if let Some(mismatch) = digest_mismatch(&data) {
        return Err(mismatch);
    }
    let records = decode(&data, false)?;
    if records.is_empty() {
        return Err(DeaggregateError::Empty);
    }
    Ok(records)
}

/// The [`DeaggregateError::DigestMismatch`] of `data` (magic, protobuf, trailer; at least 20
/// bytes), or `None` when the trailer is right.
fn digest_mismatch(data: &[u8]) -> Option<DeaggregateError> {
    let protobuf_end = data.len() - DIGEST_LEN;
    let protobuf = &data[MAGIC.len()..protobuf_end];
    let mut trailer = [0u8; DIGEST_LEN];
    trailer.copy_from_slice(&data[protobuf_end..]);
    let actual: [u8; DIGEST_LEN] = Md5::digest(protobuf).into();
    (actual != trailer).then(|| DeaggregateError::DigestMismatch {
        expected: u128::from_be_bytes(trailer),
        actual: u128::from_be_bytes(actual),
        protobuf_len: protobuf.len(),
    })
}

/// Decodes the protobuf between magic and trailer (digest already checked). Lenient decoding
/// reads as protobuf parsers do (see [`Reader`]) and checks UTF-8 only in keys that records
/// use; strict decoding refuses other wire types and groups and checks every table entry.
fn decode(data: &Bytes, lenient: bool) -> Result<Vec<DeaggregatedRecord>, DeaggregateError> {
    let protobuf_end = data.len() - DIGEST_LEN;
    // First pass: the tables, and where each record message lies.
    let mut partition_keys: Vec<&[u8]> = Vec::new();
    let mut explicit_hash_keys: Vec<&[u8]> = Vec::new();
    let mut records: Vec<(usize, usize)> = Vec::new();
    let mut reader =
        Reader::new(data, MAGIC.len(), protobuf_end, "AggregatedRecord").lenient(lenient);
    while let Some((field, wire_type, tag_offset)) = reader.tag()? {
        if !(1..=3).contains(&field)
            || !wire_type_ok(&reader, field, wire_type, WIRE_LEN, tag_offset)?
        {
            reader.skip(field, wire_type)?;
            continue;
        }
        let (start, end) = reader.length_delimited(FIELD_NAMES[field as usize])?;
        let bytes = &data[start..end];
        match field {
            1 => {
                if !lenient {
                    utf8(bytes, 1, partition_keys.len())?;
                }
                partition_keys.push(bytes);
            }
            2 => {
                if !lenient {
                    utf8(bytes, 2, explicit_hash_keys.len())?;
                }
                explicit_hash_keys.push(bytes);
            }
            _ => records.push((start, end)),
        }
    }

    // Second pass: each record.
    let mut out = Vec::with_capacity(records.len());
    for (record, &(start, end)) in records.iter().enumerate() {
        let mut pk_index = None;
        let mut ehk_index = None;
        let mut payload = None;
        let mut reader = Reader::new(data, start, end, "Record").lenient(lenient);
        while let Some((field, wire_type, tag_offset)) = reader.tag()? {
            let expected = if field == 1 || field == 2 {
                WIRE_VARINT
            } else {
                WIRE_LEN
            };
            if !(1..=4).contains(&field)
                || !wire_type_ok(&reader, field, wire_type, expected, tag_offset)?
            {
                reader.skip(field, wire_type)?;
                continue;
            }
            match field {
                1 | 2 => {
                    let value = reader.varint(FIELD_NAMES[3 + field as usize])?;
                    if field == 1 {
                        pk_index = Some(value);
                    } else {
                        ehk_index = Some(value);
                    }
                }
                3 => payload = Some(reader.length_delimited("Record.data")?),
                _ => {
                    let (start, end) = reader.length_delimited("Record.tags")?;
                    check_tag(data, start, end, record, lenient)?;
                }
            }
        }
        let pk_index = pk_index.ok_or(DeaggregateError::MissingField {
            record,
            field: "partition_key_index",
        })?;
        let (data_start, data_end) = payload.ok_or(DeaggregateError::MissingField {
            record,
            field: "data",
        })?;
        let partition_key = table_entry(&partition_keys, pk_index, record, 1)?;
        let explicit_hash_key = match ehk_index {
            Some(index) => Some(table_entry(&explicit_hash_keys, index, record, 2)?.to_owned()),
            None => None,
        };
        out.push(DeaggregatedRecord {
            partition_key: partition_key.to_owned(),
            explicit_hash_key,
            data: data.slice(data_start..data_end),
            sub_sequence_number: record as u64,
        });
    }
    Ok(out)
}

/// Whether a known field has its declared wire type. If not, a strict reader fails and a
/// lenient one answers `false` (the field is then skipped as unknown).
fn wire_type_ok(
    reader: &Reader<'_>,
    field: u64,
    wire_type: u8,
    expected: u8,
    tag_offset: usize,
) -> Result<bool, DeaggregateError> {
    if reader.is_lenient() {
        Ok(wire_type == expected)
    } else {
        reader
            .expect_wire_type(field, wire_type, expected, tag_offset)
            .map(|()| true)
    }
}

/// Checks one `Tag {1: required string key; 2: optional string value}` message: well formed,
/// with a key. Its contents are not used.
fn check_tag(
    data: &[u8],
    start: usize,
    end: usize,
    record: usize,
    lenient: bool,
) -> Result<(), DeaggregateError> {
    let mut reader = Reader::new(data, start, end, "Tag").lenient(lenient);
    let mut has_key = false;
    while let Some((field, wire_type, tag_offset)) = reader.tag()? {
        if (field == 1 || field == 2)
            && wire_type_ok(&reader, field, wire_type, WIRE_LEN, tag_offset)?
        {
            reader.length_delimited(if field == 1 { "Tag.key" } else { "Tag.value" })?;
            has_key |= field == 1;
        } else {
            reader.skip(field, wire_type)?;
        }
    }
    if has_key {
        Ok(())
    } else {
        Err(DeaggregateError::MissingField {
            record,
            field: "tags.key",
        })
    }
}

/// Names for error messages: table names by field number, then Record index fields.
const FIELD_NAMES: [&str; 6] = [
    "",
    "partition_key_table",
    "explicit_hash_key_table",
    "records",
    "Record.partition_key_index",
    "Record.explicit_hash_key_index",
];

fn utf8(bytes: &[u8], field: u64, index: usize) -> Result<&str, DeaggregateError> {
    std::str::from_utf8(bytes).map_err(|_| DeaggregateError::InvalidUtf8 {
        table: FIELD_NAMES[field as usize],
        index,
    })
}

fn table_entry<'a>(
    table: &[&'a [u8]],
    index: u64,
    record: usize,
    field: u64,
) -> Result<&'a str, DeaggregateError> {
    let i = usize::try_from(index)
        .ok()
        .filter(|&i| i < table.len())
        .ok_or(DeaggregateError::KeyIndexOutOfRange {
            record,
            table: FIELD_NAMES[field as usize],
            index,
            table_len: table.len(),
        })?;
    utf8(table[i], field, i)
}

#[cfg(test)]
mod tests;
