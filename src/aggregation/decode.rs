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

/// Turns a Kinesis record into its user records.
///
/// Data without the [`MAGIC`] prefix, or shorter than 20 bytes (magic plus MD5 trailer, so it
/// cannot be an aggregate), is one plain user record with the given partition key and explicit
/// hash key. Data with the magic is decoded strictly: a bad MD5, a truncated or malformed
/// protobuf (bad varint, wrong wire type, length past the end, key index out of range, key not
/// UTF-8, missing required field) or an aggregate without records is an error that names what
/// is wrong. Tags and unknown fields are skipped.
///
/// Unlike the KCL, which treats a record with the magic but a bad MD5 as a plain record, this
/// returns [`DeaggregateError::DigestMismatch`]: a broken aggregate is never passed on as user
/// data. Producers that send raw user data starting with the magic bytes will see this error.
///
/// # Errors
///
/// A [`DeaggregateError`] when `data` starts with the magic, is at least 20 bytes long and is
/// not a valid aggregate of at least one record.
///
/// The function never panics, and never allocates on the word of a length field: every length
/// is checked against the input first, and what it allocates is bounded by the input size. The
/// records' data shares `data`'s buffer.
pub fn deaggregate(
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

    let protobuf_end = data.len() - DIGEST_LEN;
    let protobuf = &data[MAGIC.len()..protobuf_end];
    let mut trailer = [0u8; DIGEST_LEN];
    trailer.copy_from_slice(&data[protobuf_end..]);
    let actual: [u8; DIGEST_LEN] = Md5::digest(protobuf).into();
    if actual != trailer {
        return Err(DeaggregateError::DigestMismatch {
            expected: u128::from_be_bytes(trailer),
            actual: u128::from_be_bytes(actual),
            protobuf_len: protobuf.len(),
        });
    }

    // First pass: the tables, and where each record message lies.
    let mut partition_keys: Vec<&str> = Vec::new();
    let mut explicit_hash_keys: Vec<&str> = Vec::new();
    let mut records: Vec<(usize, usize)> = Vec::new();
    let mut reader = Reader::new(&data, MAGIC.len(), protobuf_end, "AggregatedRecord");
    while let Some((field, wire_type, tag_offset)) = reader.tag()? {
        match field {
            1..=3 => {
                reader.expect_wire_type(field, wire_type, WIRE_LEN, tag_offset)?;
                let (start, end) = reader.length_delimited(FIELD_NAMES[field as usize])?;
                match field {
                    1 => partition_keys.push(utf8(&data[start..end], 1, partition_keys.len())?),
                    2 => explicit_hash_keys.push(utf8(
                        &data[start..end],
                        2,
                        explicit_hash_keys.len(),
                    )?),
                    _ => records.push((start, end)),
                }
            }
            _ => reader.skip(wire_type)?,
        }
    }
    if records.is_empty() {
        return Err(DeaggregateError::Empty);
    }

    // Second pass: each record.
    let mut out = Vec::with_capacity(records.len());
    for (record, &(start, end)) in records.iter().enumerate() {
        let mut pk_index = None;
        let mut ehk_index = None;
        let mut payload = None;
        let mut reader = Reader::new(&data, start, end, "Record");
        while let Some((field, wire_type, tag_offset)) = reader.tag()? {
            match field {
                1 | 2 => {
                    reader.expect_wire_type(field, wire_type, WIRE_VARINT, tag_offset)?;
                    let value = reader.varint(FIELD_NAMES[3 + field as usize])?;
                    if field == 1 {
                        pk_index = Some(value);
                    } else {
                        ehk_index = Some(value);
                    }
                }
                3 => {
                    reader.expect_wire_type(field, wire_type, WIRE_LEN, tag_offset)?;
                    payload = Some(reader.length_delimited("Record.data")?);
                }
                // Field 4 (tags) and unknown fields are skipped, after bounds checks.
                _ => reader.skip(wire_type)?,
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
    table: &[&'a str],
    index: u64,
    record: usize,
    field: u64,
) -> Result<&'a str, DeaggregateError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| table.get(i).copied())
        .ok_or(DeaggregateError::KeyIndexOutOfRange {
            record,
            table: FIELD_NAMES[field as usize],
            index,
            table_len: table.len(),
        })
}

#[cfg(test)]
mod tests;
