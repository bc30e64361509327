//! KPL aggregation: many user records packed into one Kinesis record, and back.
//!
//! # Format
//!
//! An aggregate is the data blob of one ordinary Kinesis record:
//!
//! ```text
//! +-------------+------------------------------------+------------------------+
//! | F3 89 9A C2 | protobuf AggregatedRecord          | MD5(protobuf bytes)    |
//! |   4 bytes   | (varint/length-delimited fields)   | 16 bytes               |
//! +-------------+------------------------------------+------------------------+
//!
//! AggregatedRecord {
//!     1: repeated string partition_key_table;       // deduplicated keys
//!     2: repeated string explicit_hash_key_table;   // only keys that records carried
//!     3: repeated Record records;
//! }
//! Record {
//!     1: required uint64 partition_key_index;       // into partition_key_table
//!     2: optional uint64 explicit_hash_key_index;   // omitted when the record had none
//!     3: required bytes  data;
//!     4: repeated Tag    tags;                      // never written, skipped on read
//! }
//! Tag { 1: required string key; 2: optional string value; }
//! ```
//!
//! The Kinesis record that carries an aggregate uses the first user record's partition key as
//! its own (outer) partition key; the service counts that key plus the whole blob against the
//! record size limit, and that sum is what [`Aggregator::record_size`] reports.
//!
//! # One aggregate, one shard
//!
//! Kinesis routes the aggregate as a single record, by its outer key. The KCL then drops every
//! sub-record whose own hash key (its explicit hash key, or the MD5 of its partition key) lies
//! outside the range of the shard that holds the aggregate. So one aggregate must hold records of
//! **one predicted shard only**, and its outer `ExplicitHashKey` must lie inside that shard's hash
//! range. The engine keeps one [`Aggregator`] per shard and sets the outer hash key; the
//! aggregator itself knows nothing of shards.
//!
//! # Why the protobuf is written by hand
//!
//! The engine must know the *exact* size an aggregate will have before it adds a record, on
//! every add, so that an aggregate never overshoots the record limit and never needs to be
//! re-encoded. A general protobuf crate computes sizes by walking (or encoding) the whole message,
//! which is quadratic when asked after every add. The subset used here is three field kinds
//! (varint, bytes, string), so the encoder appends each record's bytes once into a reusable
//! buffer and keeps the running size with constant work per record; [`Aggregator::finish`]
//! concatenates the buffers into one allocation of exactly the final size. The decoder is
//! hand-written for the same reason it must be strict: every length is checked against the input
//! before it is used, so hostile input can neither panic it nor make it allocate.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use bytes::Bytes;
use md5::{Digest, Md5};

/// The four bytes that open every KPL aggregate.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 trailer.
const DIGEST_LEN: usize = 16;

/// Bytes an aggregate adds around its protobuf: magic and MD5 trailer.
const FRAMING_LEN: usize = MAGIC.len() + DIGEST_LEN;

// Protobuf wire types used by the format.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

// Field tags (field number << 3 | wire type) written by the encoder.
const TAG_PARTITION_KEY: u8 = 1 << 3 | WIRE_LEN;
const TAG_EXPLICIT_HASH_KEY: u8 = 2 << 3 | WIRE_LEN;
const TAG_RECORD: u8 = 3 << 3 | WIRE_LEN;
const TAG_RECORD_PK_INDEX: u8 = 1 << 3 | WIRE_VARINT;
const TAG_RECORD_EHK_INDEX: u8 = 2 << 3 | WIRE_VARINT;
const TAG_RECORD_DATA: u8 = 3 << 3 | WIRE_LEN;

/// Number of bytes the varint encoding of `value` takes (1 to 10).
#[inline]
fn varint_len(value: u64) -> usize {
    // Bits needed (at least 1), seven per byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[inline]
fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Size of a length-delimited field (one-byte tag) whose payload is `len` bytes.
#[inline]
fn len_field_size(len: usize) -> usize {
    1usize
        .saturating_add(varint_len(len as u64))
        .saturating_add(len)
}

/// Answer of [`Aggregator::try_push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum TryPush {
    /// The record is now part of the aggregate.
    Added,
    /// The record would take the aggregate over its size or count limit. The aggregator is
    /// unchanged: finish it and push again, or (when it is empty) send the record raw.
    NoCapacity,
}

/// Where a key stands in a [`KeyTable`]: already present, or to be added with this hash.
#[derive(Debug, Clone, Copy)]
enum KeySlot {
    Present(u64),
    Absent(u64),
}

/// Hasher for keys that are already well-mixed 64-bit hashes.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else so the hasher stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// One deduplicated string table of the aggregate, kept already encoded.
///
/// The key bytes live only in `encoded` (the protobuf field entries, ready to be copied out);
/// `heads` maps a keyed `SipHash` of a key to the newest entry with that hash, and entries with
/// equal hashes are chained through `entries[i].next`. Lookups by `&str` therefore allocate
/// nothing, and once the buffers have grown, neither do inserts: `clear` keeps every
/// allocation.
struct KeyTable {
    tag: u8,
    encoded: Vec<u8>,
    entries: Vec<KeyEntry>,
    heads: HashMap<u64, usize, BuildHasherDefault<PrehashedHasher>>,
    hasher: RandomState,
}

struct KeyEntry {
    /// Key bytes are `encoded[start..start + len]`.
    start: usize,
    len: usize,
    /// Previous entry with the same hash, or `usize::MAX`.
    next: usize,
}

impl KeyTable {
    fn new(tag: u8) -> Self {
        Self {
            tag,
            encoded: Vec::new(),
            entries: Vec::new(),
            heads: HashMap::default(),
            hasher: RandomState::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn lookup(&self, key: &str) -> KeySlot {
        let hash = self.hasher.hash_one(key.as_bytes());
        let Some(&head) = self.heads.get(&hash) else {
            return KeySlot::Absent(hash);
        };
        let mut at = head;
        while at != usize::MAX {
            let entry = &self.entries[at];
            if &self.encoded[entry.start..entry.start + entry.len] == key.as_bytes() {
                return KeySlot::Present(at as u64);
            }
            at = entry.next;
        }
        KeySlot::Absent(hash)
    }

    /// Index the key would get, and the bytes it would add to the table.
    fn plan(&self, slot: KeySlot, key: &str) -> (u64, usize) {
        match slot {
            KeySlot::Present(index) => (index, 0),
            KeySlot::Absent(_) => (self.entries.len() as u64, len_field_size(key.len())),
        }
    }

    fn insert(&mut self, slot: KeySlot, key: &str) -> u64 {
        let hash = match slot {
            KeySlot::Present(index) => return index,
            KeySlot::Absent(hash) => hash,
        };
        let index = self.entries.len();
        self.encoded.push(self.tag);
        put_varint(&mut self.encoded, key.len() as u64);
        let start = self.encoded.len();
        self.encoded.extend_from_slice(key.as_bytes());
        let next = self.heads.insert(hash, index).unwrap_or(usize::MAX);
        self.entries.push(KeyEntry {
            start,
            len: key.len(),
            next,
        });
        index as u64
    }

    fn clear(&mut self) {
        self.encoded.clear();
        self.entries.clear();
        self.heads.clear();
    }
}

/// What adding one record would do, computed once and then either committed or dropped.
struct Plan {
    pk: KeySlot,
    ehk: Option<KeySlot>,
    pk_index: u64,
    ehk_index: Option<u64>,
    /// Length of the Record message (without its own tag and length).
    inner_len: usize,
    /// `record_size()` after the push.
    new_size: usize,
}

/// Encoder for one aggregate with exact, incremental size accounting.
///
/// Push user records with [`try_push`](Self::try_push) until it answers
/// [`TryPush::NoCapacity`], then take the aggregate with [`finish`](Self::finish), which also
/// resets the aggregator for the next one while keeping its buffers. The aggregator is pure (no
/// I/O, no clock) and shard-agnostic: see the [module docs](self) for the one-shard rule.
///
/// ```
/// use kinesis_producer::aggregation::{deaggregate, Aggregator, TryPush};
///
/// let mut agg = Aggregator::new(50 * 1024, usize::MAX);
/// assert_eq!(agg.try_push("user-1", None, b"hello"), TryPush::Added);
/// assert_eq!(agg.try_push("user-2", None, b"world"), TryPush::Added);
/// let size = agg.record_size();
/// let aggregate = agg.finish().unwrap();
/// assert_eq!(aggregate.count, 2);
/// assert_eq!(aggregate.partition_key, "user-1");
/// assert_eq!(size, aggregate.partition_key.len() + aggregate.data.len());
///
/// let records = deaggregate(&aggregate.partition_key, None, aggregate.data).unwrap();
/// assert_eq!(records[1].partition_key, "user-2");
/// assert_eq!(&records[1].data[..], b"world");
/// ```
pub struct Aggregator {
    max_size: usize,
    max_count: usize,
    partition_keys: KeyTable,
    explicit_hash_keys: KeyTable,
    /// Encoded `records` fields (tag, length, Record message), in push order.
    records: Vec<u8>,
    count: usize,
    /// Partition key of the first record: the outer key of the Kinesis record.
    outer_key: String,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("max_size", &self.max_size)
            .field("max_count", &self.max_count)
            .field("count", &self.count)
            .field("record_size", &self.record_size())
            .field("partition_keys", &self.partition_keys.len())
            .field("explicit_hash_keys", &self.explicit_hash_keys.len())
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    /// Creates an empty aggregator whose aggregates stay within `max_size` bytes (as
    /// [`record_size`](Self::record_size) counts them) and `max_count` user records.
    pub fn new(max_size: usize, max_count: usize) -> Self {
        Self {
            max_size,
            max_count,
            partition_keys: KeyTable::new(TAG_PARTITION_KEY),
            explicit_hash_keys: KeyTable::new(TAG_EXPLICIT_HASH_KEY),
            records: Vec::new(),
            count: 0,
            outer_key: String::new(),
        }
    }

    /// Adds a user record if the aggregate stays within `max_size` and `max_count`.
    ///
    /// The size bounded is [`record_size`](Self::record_size): the Kinesis record as the
    /// service counts it, outer partition key bytes (the first record's partition key) plus the
    /// encoded data (4 magic bytes, protobuf, 16 MD5 bytes). It is exact, never an estimate. If
    /// even the first record does not fit, the answer is [`TryPush::NoCapacity`] and the caller
    /// sends that record raw. On `NoCapacity` the aggregator is unchanged.
    pub fn try_push(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: &[u8],
    ) -> TryPush {
        if self.count >= self.max_count {
            return TryPush::NoCapacity;
        }
        let plan = self.plan(partition_key, explicit_hash_key, data.len());
        if plan.new_size > self.max_size {
            return TryPush::NoCapacity;
        }
        self.commit(&plan, partition_key, explicit_hash_key, data);
        TryPush::Added
    }

    /// Number of user records in the aggregate.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the aggregate holds no user record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Exact size of the Kinesis record if the aggregate were finished now: outer partition key
    /// bytes plus data bytes. 0 when empty.
    pub fn record_size(&self) -> usize {
        if self.count == 0 {
            0
        } else {
            self.outer_key.len() + FRAMING_LEN + self.protobuf_len()
        }
    }

    /// Exact [`record_size`](Self::record_size) the aggregate would have after pushing a record
    /// with these keys and `data_len` bytes of data, without pushing it. Limits are not
    /// checked (saturates at `usize::MAX`).
    pub fn size_if_pushed(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> usize {
        self.plan(partition_key, explicit_hash_key, data_len)
            .new_size
    }

    /// Takes the aggregate, or `None` when empty, and resets the aggregator for reuse (its
    /// buffers keep their capacity). The data is built in one allocation of exactly its size.
    pub fn finish(&mut self) -> Option<Aggregate> {
        if self.count == 0 {
            return None;
        }
        let protobuf_len = self.protobuf_len();
        let mut data = Vec::with_capacity(FRAMING_LEN + protobuf_len);
        data.extend_from_slice(&MAGIC);
        data.extend_from_slice(&self.partition_keys.encoded);
        data.extend_from_slice(&self.explicit_hash_keys.encoded);
        data.extend_from_slice(&self.records);
        let digest = Md5::digest(&data[MAGIC.len()..]);
        data.extend_from_slice(&digest);
        debug_assert_eq!(data.len(), data.capacity());

        let aggregate = Aggregate {
            partition_key: self.outer_key.clone(),
            data: Bytes::from(data),
            count: self.count,
        };
        self.partition_keys.clear();
        self.explicit_hash_keys.clear();
        self.records.clear();
        self.outer_key.clear();
        self.count = 0;
        Some(aggregate)
    }

    fn protobuf_len(&self) -> usize {
        self.partition_keys.encoded.len()
            + self.explicit_hash_keys.encoded.len()
            + self.records.len()
    }

    fn plan(&self, partition_key: &str, explicit_hash_key: Option<&str>, data_len: usize) -> Plan {
        let pk = self.partition_keys.lookup(partition_key);
        let (pk_index, pk_table_growth) = self.partition_keys.plan(pk, partition_key);
        let ehk = explicit_hash_key.map(|key| self.explicit_hash_keys.lookup(key));
        let (ehk_index, ehk_table_growth) = match (ehk, explicit_hash_key) {
            (Some(slot), Some(key)) => {
                let (index, growth) = self.explicit_hash_keys.plan(slot, key);
                (Some(index), growth)
            }
            _ => (None, 0),
        };

        let mut inner_len = 1 + varint_len(pk_index);
        if let Some(index) = ehk_index {
            inner_len += 1 + varint_len(index);
        }
        let inner_len = inner_len.saturating_add(len_field_size(data_len));

        let current = if self.count == 0 {
            partition_key.len() + FRAMING_LEN
        } else {
            self.record_size()
        };
        let new_size = current
            .saturating_add(pk_table_growth)
            .saturating_add(ehk_table_growth)
            .saturating_add(len_field_size(inner_len));
        Plan {
            pk,
            ehk,
            pk_index,
            ehk_index,
            inner_len,
            new_size,
        }
    }

    fn commit(
        &mut self,
        plan: &Plan,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: &[u8],
    ) {
        let pk_index = self.partition_keys.insert(plan.pk, partition_key);
        debug_assert_eq!(pk_index, plan.pk_index);
        if let (Some(slot), Some(key)) = (plan.ehk, explicit_hash_key) {
            let ehk_index = self.explicit_hash_keys.insert(slot, key);
            debug_assert_eq!(Some(ehk_index), plan.ehk_index);
        }

        let records = &mut self.records;
        records.reserve(len_field_size(plan.inner_len));
        records.push(TAG_RECORD);
        put_varint(records, plan.inner_len as u64);
        records.push(TAG_RECORD_PK_INDEX);
        put_varint(records, plan.pk_index);
        if let Some(index) = plan.ehk_index {
            records.push(TAG_RECORD_EHK_INDEX);
            put_varint(records, index);
        }
        records.push(TAG_RECORD_DATA);
        put_varint(records, data.len() as u64);
        records.extend_from_slice(data);

        if self.count == 0 {
            self.outer_key.push_str(partition_key);
        }
        self.count += 1;
        debug_assert_eq!(self.record_size(), plan.new_size);
    }
}

/// A finished aggregate: the partition key and data of one Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// Partition key of the first user record, used as the Kinesis record's partition key.
    pub partition_key: String,
    /// Magic, protobuf and MD5 trailer.
    pub data: Bytes,
    /// Number of user records inside.
    pub count: usize,
}

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

/// Bounds-checked protobuf reader over `buf[pos..end]`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], pos: usize, end: usize, message: &'static str) -> Self {
        debug_assert!(pos <= end && end <= buf.len());
        Self {
            buf,
            pos,
            end,
            message,
        }
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DeaggregateError> {
        let offset = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf[..self.end].get(self.pos) else {
                return Err(DeaggregateError::Truncated { what, offset });
            };
            self.pos += 1;
            // The tenth byte may only contribute the 64th bit.
            if i == 9 && byte > 1 {
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
    fn tag(&mut self) -> Result<Option<(u64, u8, usize)>, DeaggregateError> {
        if self.pos == self.end {
            return Ok(None);
        }
        let offset = self.pos;
        let key = self.varint("field tag")?;
        let field = key >> 3;
        let wire_type = (key & 7) as u8;
        let valid_wire_type = matches!(
            wire_type,
            WIRE_VARINT | WIRE_FIXED64 | WIRE_LEN | WIRE_FIXED32
        );
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

    fn expect_wire_type(
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
    fn take(
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

    fn length_delimited(&mut self, what: &'static str) -> Result<(usize, usize), DeaggregateError> {
        let length = self.varint(what)?;
        self.take(what, length)
    }

    fn skip(&mut self, wire_type: u8) -> Result<(), DeaggregateError> {
        const WHAT: &str = "skipped field";
        match wire_type {
            WIRE_VARINT => self.varint(WHAT).map(drop),
            WIRE_FIXED64 => self.take(WHAT, 8).map(drop),
            WIRE_FIXED32 => self.take(WHAT, 4).map(drop),
            _ => self.length_delimited(WHAT).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MAGIC + `protobuf` + MD5(`protobuf`).
    fn framed(protobuf: &[u8]) -> Bytes {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(protobuf);
        data.extend_from_slice(&Md5::digest(protobuf));
        Bytes::from(data)
    }

    fn decode(protobuf: &[u8]) -> Result<Vec<DeaggregatedRecord>, DeaggregateError> {
        deaggregate("outer", Some("1"), framed(protobuf))
    }

    /// The aggregate's contents: (partition key table, explicit hash key table,
    /// records as (pk index, ehk index, data)), read with a minimal independent walk.
    type Parsed = (Vec<String>, Vec<String>, Vec<(u64, Option<u64>, Vec<u8>)>);

    fn parse(data: &[u8]) -> Parsed {
        fn varint(buf: &[u8], pos: &mut usize) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let b = buf[*pos];
                *pos += 1;
                v |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    return v;
                }
            }
        }
        assert_eq!(data[..4], MAGIC);
        let proto = &data[4..data.len() - 16];
        assert_eq!(data[data.len() - 16..], Md5::digest(proto)[..]);
        let (mut pks, mut ehks, mut recs) = (vec![], vec![], vec![]);
        let mut pos = 0;
        while pos < proto.len() {
            let tag = varint(proto, &mut pos);
            let len = varint(proto, &mut pos) as usize;
            let body = &proto[pos..pos + len];
            pos += len;
            match tag {
                0x0A => pks.push(String::from_utf8(body.to_vec()).unwrap()),
                0x12 => ehks.push(String::from_utf8(body.to_vec()).unwrap()),
                0x1A => {
                    let (mut pk, mut ehk, mut d) = (None, None, None);
                    let mut p = 0;
                    while p < body.len() {
                        match varint(body, &mut p) {
                            0x08 => pk = Some(varint(body, &mut p)),
                            0x10 => ehk = Some(varint(body, &mut p)),
                            0x1A => {
                                let l = varint(body, &mut p) as usize;
                                d = Some(body[p..p + l].to_vec());
                                p += l;
                            }
                            t => panic!("unexpected record tag {t}"),
                        }
                    }
                    recs.push((pk.unwrap(), ehk, d.unwrap()));
                }
                t => panic!("unexpected tag {t}"),
            }
        }
        (pks, ehks, recs)
    }

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

    #[test]
    fn golden_tiny_aggregate() {
        let mut agg = Aggregator::new(1024, 10);
        assert_eq!(agg.try_push("a", None, b"xy"), TryPush::Added);
        assert_eq!(agg.try_push("bc", Some("123"), b""), TryPush::Added);
        assert_eq!(agg.try_push("a", None, b"z"), TryPush::Added);

        #[rustfmt::skip]
        let protobuf: &[u8] = &[
            0x0A, 0x01, b'a',                 // partition_key_table[0] = "a"  (field 1, LEN)
            0x0A, 0x02, b'b', b'c',           // partition_key_table[1] = "bc"
            0x12, 0x03, b'1', b'2', b'3',     // explicit_hash_key_table[0] = "123" (field 2)
            0x1A, 0x06,                       // records[0] (field 3, LEN 6)
            0x08, 0x00,                       //   partition_key_index = 0
            0x1A, 0x02, b'x', b'y',           //   data = "xy"
            0x1A, 0x06,                       // records[1]
            0x08, 0x01,                       //   partition_key_index = 1
            0x10, 0x00,                       //   explicit_hash_key_index = 0
            0x1A, 0x00,                       //   data = ""
            0x1A, 0x05,                       // records[2]
            0x08, 0x00,                       //   partition_key_index = 0
            0x1A, 0x01, b'z',                 //   data = "z"
        ];
        let expected = framed(protobuf);
        assert_eq!(agg.record_size(), 1 + expected.len());
        let aggregate = agg.finish().unwrap();
        assert_eq!(aggregate.partition_key, "a");
        assert_eq!(aggregate.count, 3);
        assert_eq!(aggregate.data, expected);
        assert!(agg.is_empty());
        assert_eq!(agg.record_size(), 0);
        assert!(agg.finish().is_none());
    }

    #[test]
    fn keys_are_deduplicated() {
        let mut agg = Aggregator::new(usize::MAX, usize::MAX);
        let keys = ["k1", "k2", "k1", "k3", "k2", "k1"];
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(agg.try_push(key, None, &[i as u8]), TryPush::Added);
        }
        let aggregate = agg.finish().unwrap();
        let (pks, ehks, recs) = parse(&aggregate.data);
        assert_eq!(pks, ["k1", "k2", "k3"]);
        assert!(ehks.is_empty());
        let indices: Vec<u64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(indices, [0, 1, 0, 2, 1, 0]);

        // After finish, the tables start over.
        assert_eq!(agg.try_push("k3", None, b""), TryPush::Added);
        let (pks, _, recs) = parse(&agg.finish().unwrap().data);
        assert_eq!(pks, ["k3"]);
        assert_eq!(recs[0].0, 0);
    }

    #[test]
    fn explicit_hash_key_table_only_when_present() {
        let mut agg = Aggregator::new(usize::MAX, usize::MAX);
        for _ in 0..3 {
            assert_eq!(agg.try_push("p", None, b"d"), TryPush::Added);
        }
        let (_, ehks, recs) = parse(&agg.finish().unwrap().data);
        assert!(ehks.is_empty());
        assert!(recs.iter().all(|r| r.1.is_none()));

        let pushes = [None, Some("99"), None, Some("7"), Some("99")];
        for ehk in pushes {
            assert_eq!(agg.try_push("p", ehk, b"d"), TryPush::Added);
        }
        let aggregate = agg.finish().unwrap();
        let (_, ehks, recs) = parse(&aggregate.data);
        assert_eq!(ehks, ["99", "7"]);
        let indices: Vec<Option<u64>> = recs.iter().map(|r| r.1).collect();
        assert_eq!(indices, [None, Some(0), None, Some(1), Some(0)]);

        let records = deaggregate(&aggregate.partition_key, Some("5"), aggregate.data).unwrap();
        let got: Vec<Option<&str>> = records
            .iter()
            .map(|r| r.explicit_hash_key.as_deref())
            .collect();
        assert_eq!(got, pushes);
    }

    /// Pushes and checks, at every step, that the predicted size is the actual one.
    fn push_checked(agg: &mut Aggregator, pk: &str, ehk: Option<&str>, data: &[u8]) {
        let predicted = agg.size_if_pushed(pk, ehk, data.len());
        let before = agg.record_size();
        assert_eq!(agg.try_push(pk, ehk, data), TryPush::Added);
        assert_eq!(agg.record_size(), predicted);
        assert!(predicted > before);
    }

    fn finish_checked(agg: &mut Aggregator) -> Aggregate {
        let size = agg.record_size();
        let count = agg.len();
        let aggregate = agg.finish().unwrap();
        assert_eq!(size, aggregate.partition_key.len() + aggregate.data.len());
        assert_eq!(count, aggregate.count);
        aggregate
    }

    #[test]
    fn size_accounting_is_exact_at_every_push() {
        let mut agg = Aggregator::new(usize::MAX, usize::MAX);
        let data = vec![0xAB; 20_000];
        let mut expected = Vec::new();
        for i in 0..300usize {
            let pk = format!("key-{}-é", i % 37);
            let ehk = (i % 3 == 0).then(|| format!("{}", i % 11 * 1_000_000_007));
            let len = (i * 131) % 300 + if i % 50 == 0 { 19_000 } else { 0 };
            push_checked(&mut agg, &pk, ehk.as_deref(), &data[..len]);
            expected.push((pk, ehk, len));
            // The exact size is also the size of an aggregate finished now.
            let mut copy = Aggregator::new(usize::MAX, usize::MAX);
            if i % 60 == 0 {
                for (pk, ehk, len) in &expected {
                    push_checked(&mut copy, pk, ehk.as_deref(), &data[..*len]);
                }
                finish_checked(&mut copy);
            }
        }
        let aggregate = finish_checked(&mut agg);
        let records = deaggregate(&aggregate.partition_key, None, aggregate.data).unwrap();
        assert_eq!(records.len(), expected.len());
        for (i, (rec, (pk, ehk, len))) in records.iter().zip(&expected).enumerate() {
            assert_eq!(&rec.partition_key, pk);
            assert_eq!(&rec.explicit_hash_key, ehk);
            assert_eq!(rec.data.len(), *len);
            assert_eq!(rec.sub_sequence_number, i as u64);
        }
    }

    #[test]
    fn size_if_pushed_on_empty_uses_the_new_key_as_outer_key() {
        let agg = Aggregator::new(0, 0);
        // 4 magic + 16 md5 + table entry (1 + 1 + 3) + record (1 + 1 + [1 + 1 + 1 + 1 + 2]).
        assert_eq!(agg.size_if_pushed("abc", None, 2), 3 + 20 + 5 + 8);
        // Huge lengths saturate instead of overflowing.
        assert_eq!(agg.size_if_pushed("abc", None, usize::MAX), usize::MAX);
    }

    #[test]
    fn size_boundaries() {
        let exact = Aggregator::new(0, 1).size_if_pushed("first", None, 10);
        let mut agg = Aggregator::new(exact, usize::MAX);
        assert_eq!(agg.try_push("first", None, &[1; 10]), TryPush::Added);
        assert_eq!(agg.record_size(), exact);

        // The first record does not fit by one byte: refused, the caller sends it raw.
        let mut agg = Aggregator::new(exact - 1, usize::MAX);
        assert_eq!(agg.try_push("first", None, &[1; 10]), TryPush::NoCapacity);
        assert!(agg.is_empty());
        assert_eq!(agg.record_size(), 0);
        assert!(agg.finish().is_none());

        // A later record: exactly at the limit is accepted, one byte over is refused and
        // leaves the aggregator as it was.
        let mut probe = Aggregator::new(usize::MAX, usize::MAX);
        assert_eq!(probe.try_push("first", None, &[1; 10]), TryPush::Added);
        let second = probe.size_if_pushed("second", Some("42"), 30);

        let mut agg = Aggregator::new(second - 1, usize::MAX);
        assert_eq!(agg.try_push("first", None, &[1; 10]), TryPush::Added);
        let before = agg.record_size();
        assert_eq!(
            agg.try_push("second", Some("42"), &[2; 30]),
            TryPush::NoCapacity
        );
        assert_eq!((agg.len(), agg.record_size()), (1, before));
        let aggregate = finish_checked(&mut agg);
        let (pks, ehks, recs) = parse(&aggregate.data);
        assert_eq!((pks.len(), ehks.len(), recs.len()), (1, 0, 1));

        let mut agg = Aggregator::new(second, usize::MAX);
        assert_eq!(agg.try_push("first", None, &[1; 10]), TryPush::Added);
        assert_eq!(agg.try_push("second", Some("42"), &[2; 30]), TryPush::Added);
        assert_eq!(agg.record_size(), second);
        // Even the smallest further record is refused.
        assert_eq!(agg.try_push("first", None, b""), TryPush::NoCapacity);
        assert_eq!(finish_checked(&mut agg).data.len() + "first".len(), second);
    }

    #[test]
    fn count_boundaries() {
        let mut agg = Aggregator::new(usize::MAX, 2);
        assert_eq!(agg.try_push("a", None, b"1"), TryPush::Added);
        assert_eq!(agg.try_push("a", None, b"2"), TryPush::Added);
        let size = agg.record_size();
        assert_eq!(agg.try_push("a", None, b"3"), TryPush::NoCapacity);
        assert_eq!((agg.len(), agg.record_size()), (2, size));
        assert_eq!(finish_checked(&mut agg).count, 2);
        assert_eq!(agg.try_push("a", None, b"3"), TryPush::Added);

        let mut none = Aggregator::new(usize::MAX, 0);
        assert_eq!(none.try_push("a", None, b""), TryPush::NoCapacity);
        assert!(none.is_empty());
    }

    #[test]
    fn varint_transitions_in_data_lengths() {
        // Data lengths around the 1/2 and 2/3 byte varint boundaries, for both the data length
        // and the Record message length (which is 4 to 7 bytes more).
        let data = vec![7u8; 20_000];
        for len in (115..=135).chain(16_370..=16_390) {
            let mut agg = Aggregator::new(usize::MAX, usize::MAX);
            push_checked(&mut agg, "k", None, &data[..len]);
            push_checked(&mut agg, "k", Some("1"), &data[..len]);
            let aggregate = finish_checked(&mut agg);
            let records = deaggregate("k", None, aggregate.data).unwrap();
            assert!(records.iter().all(|r| r.data.len() == len));
        }
        // 127 bytes of data: data length varint is 1 byte; 128 bytes: 2 bytes.
        let agg = Aggregator::new(0, 0);
        assert_eq!(
            agg.size_if_pushed("k", None, 128) - agg.size_if_pushed("k", None, 127),
            2
        );
        // Record lengths 127 (data 123) and 128 (data 124).
        assert_eq!(
            agg.size_if_pushed("k", None, 124) - agg.size_if_pushed("k", None, 123),
            2
        );
    }

    #[test]
    fn varint_transitions_in_tables() {
        let mut agg = Aggregator::new(usize::MAX, usize::MAX);
        let mut ehk_agg = Aggregator::new(usize::MAX, usize::MAX);
        for i in 0..300 {
            push_checked(&mut agg, &format!("{i}"), None, b"x");
            push_checked(&mut ehk_agg, "pk", Some(&format!("{i}")), b"x");
        }
        // Index 127 takes one varint byte, index 128 two.
        let mut grows = Vec::new();
        for agg in [&mut agg, &mut ehk_agg] {
            let aggregate = finish_checked(agg);
            let (pks, ehks, recs) = parse(&aggregate.data);
            assert_eq!(
                pks.len() + ehks.len(),
                if ehks.is_empty() { 300 } else { 301 }
            );
            assert_eq!(recs.len(), 300);
            let records = deaggregate(&aggregate.partition_key, None, aggregate.data).unwrap();
            assert_eq!(records.len(), 300);
            assert_eq!(records[128].sub_sequence_number, 128);
            grows.push(records);
        }
        assert_eq!(grows[0][128].partition_key, "128");
        assert_eq!(grows[1][299].explicit_hash_key.as_deref(), Some("299"));

        let mut agg = Aggregator::new(usize::MAX, usize::MAX);
        for i in 0..127 {
            push_checked(&mut agg, &format!("{i}"), None, b"");
        }
        let at_127 = agg.size_if_pushed("new", None, 0) - agg.record_size();
        push_checked(&mut agg, "127", None, b"");
        let at_128 = agg.size_if_pushed("new", None, 0) - agg.record_size();
        assert_eq!(at_128, at_127 + 1);

        // Key lengths 127 and 128.
        let key127 = "k".repeat(127);
        let key128 = "k".repeat(128);
        let agg = Aggregator::new(0, 0);
        assert_eq!(
            agg.size_if_pushed(&key128, None, 0) - agg.size_if_pushed(&key127, None, 0),
            3
        );
        let mut agg = Aggregator::new(usize::MAX, usize::MAX);
        push_checked(&mut agg, &key127, Some(&key128), b"");
        push_checked(&mut agg, &key128, Some(&key127), b"");
        let aggregate = finish_checked(&mut agg);
        let records = deaggregate("x", None, aggregate.data).unwrap();
        assert_eq!(records[1].partition_key, key128);
        assert_eq!(
            records[1].explicit_hash_key.as_deref(),
            Some(key127.as_str())
        );
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
            let records = deaggregate("pk", Some("123"), Bytes::copy_from_slice(data)).unwrap();
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
            deaggregate("pk", None, Bytes::from(short)).unwrap().len(),
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
            let err = deaggregate("a", None, Bytes::from(bad)).unwrap_err();
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

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Case count: `PROPTEST_CASES` if set, else `default`.
        fn cases(default: u32) -> u32 {
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        }

        /// Deterministic filler, so that large data costs no per-byte strategy work.
        fn filled(len: usize, seed: u64) -> Vec<u8> {
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

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                // A small pool, so that keys repeat and get deduplicated.
                (0u8..4).prop_map(|i| format!("pool-{i}")),
                prop::collection::vec(any::<char>(), 1..=256).prop_map(String::from_iter),
            ]
        }

        fn explicit_hash_key() -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                Just(None),
                (0u8..3).prop_map(|i| Some(format!("{}", u128::MAX / 3 * u128::from(i)))),
                any::<u128>().prop_map(|v| Some(v.to_string())),
            ]
        }

        fn data() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                4 => Just(Vec::new()),
                8 => prop::collection::vec(any::<u8>(), 0..300),
                1 => (0usize..=100_000, any::<u64>()).prop_map(|(len, seed)| filled(len, seed)),
            ]
        }

        type UserRecord = (String, Option<String>, Vec<u8>);

        fn records() -> impl Strategy<Value = Vec<UserRecord>> {
            prop::collection::vec((key(), explicit_hash_key(), data()), 0..40)
        }

        fn limits() -> impl Strategy<Value = (usize, usize)> {
            (
                prop_oneof![0usize..400, 0usize..5_000, 0usize..250_000],
                prop_oneof![1usize..6, Just(usize::MAX)],
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases(256)))]

            #[test]
            fn round_trip_within_limits(records in records(), (max_size, max_count) in limits()) {
                let mut agg = Aggregator::new(max_size, max_count);
                // Kinesis records produced: (outer key, data, raw?).
                let mut kinesis: Vec<(String, Option<String>, Bytes)> = Vec::new();
                let check_and_finish = |agg: &mut Aggregator, kinesis: &mut Vec<_>| {
                    let size = agg.record_size();
                    if let Some(a) = agg.finish() {
                        prop_assert_eq!(size, a.partition_key.len() + a.data.len());
                        prop_assert!(size <= max_size, "size {} over {}", size, max_size);
                        prop_assert!(a.count >= 1 && a.count <= max_count);
                        kinesis.push((a.partition_key, None, a.data));
                    }
                    Ok(())
                };
                for (pk, ehk, data) in &records {
                    let predicted = agg.size_if_pushed(pk, ehk.as_deref(), data.len());
                    match agg.try_push(pk, ehk.as_deref(), data) {
                        TryPush::Added => prop_assert_eq!(agg.record_size(), predicted),
                        TryPush::NoCapacity => {
                            check_and_finish(&mut agg, &mut kinesis)?;
                            let predicted = agg.size_if_pushed(pk, ehk.as_deref(), data.len());
                            match agg.try_push(pk, ehk.as_deref(), data) {
                                TryPush::Added => prop_assert_eq!(agg.record_size(), predicted),
                                TryPush::NoCapacity => {
                                    prop_assert!(predicted > max_size || max_count == 0);
                                    prop_assert!(agg.is_empty());
                                    kinesis.push((pk.clone(), ehk.clone(), Bytes::from(data.clone())));
                                }
                            }
                        }
                    }
                    prop_assert!(agg.record_size() <= max_size && agg.len() <= max_count);
                }
                check_and_finish(&mut agg, &mut kinesis)?;

                let mut decoded = Vec::new();
                for (pk, ehk, data) in kinesis {
                    let is_plain = ehk.is_some() || data.len() < 20 || data[..4] != MAGIC;
                    let out = deaggregate(&pk, ehk.as_deref(), data).unwrap();
                    for (i, r) in out.iter().enumerate() {
                        prop_assert_eq!(r.sub_sequence_number, if is_plain { 0 } else { i as u64 });
                    }
                    decoded.extend(out.into_iter().map(|r| (r.partition_key, r.explicit_hash_key, r.data.to_vec())));
                }
                prop_assert_eq!(decoded, records);
            }

            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in prop::collection::vec(any::<u8>(), 0..600),
                framing in 0u8..3,
            ) {
                let data = match framing {
                    0 => bytes.clone(),
                    1 => [&MAGIC[..], &bytes].concat(),
                    _ => framed(&bytes).to_vec(),
                };
                let _ = deaggregate("pk", None, Bytes::from(data));
            }

            #[test]
            fn mutated_aggregates_never_panic(
                records in prop::collection::vec((key(), explicit_hash_key(), prop::collection::vec(any::<u8>(), 0..40)), 1..8),
                mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
            ) {
                let mut agg = Aggregator::new(usize::MAX, usize::MAX);
                for (pk, ehk, data) in &records {
                    prop_assert_eq!(agg.try_push(pk, ehk.as_deref(), data), TryPush::Added);
                }
                let data = agg.finish().unwrap().data;
                let mut protobuf = data[4..data.len() - 16].to_vec();
                for (at, byte, kind) in mutations {
                    if protobuf.is_empty() {
                        break;
                    }
                    let i = at.index(protobuf.len());
                    match kind {
                        0 => protobuf[i] = byte,
                        1 => protobuf.truncate(i),
                        2 => protobuf.insert(i, byte),
                        _ => { protobuf.remove(i); }
                    }
                }
                // A valid MD5 over the mutated protobuf, so the decoder must look inside.
                if let Ok(out) = deaggregate("pk", None, framed(&protobuf)) {
                    prop_assert!(!out.is_empty());
                }
            }
        }
    }
}
