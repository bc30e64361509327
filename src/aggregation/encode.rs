//! The encoder: one aggregate at a time, with exact, incremental size accounting.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use bytes::Bytes;
use md5::{Digest, Md5};

use super::wire::{
    len_field_size, put_varint, varint_len, FRAMING_LEN, MAGIC, TAG_EXPLICIT_HASH_KEY,
    TAG_PARTITION_KEY, TAG_RECORD, TAG_RECORD_DATA, TAG_RECORD_EHK_INDEX, TAG_RECORD_PK_INDEX,
};

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
/// `heads` maps a seeded `foldhash` of a key to the newest entry with that hash, and entries with
/// equal hashes are chained through `entries[i].next`. Lookups by `&str` therefore allocate
/// nothing, and once the buffers have grown, neither do inserts: `clear` keeps every
/// allocation.
struct KeyTable {
    tag: u8,
    encoded: Vec<u8>,
    entries: Vec<KeyEntry>,
    heads: HashMap<u64, usize, BuildHasherDefault<PrehashedHasher>>,
    /// Seeded per table: a hash that is fast on short keys (SipHash cost 7 % of the engine
    /// thread), and keys chosen to collide cannot be prepared in advance.
    hasher: foldhash::fast::RandomState,
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
            hasher: foldhash::fast::RandomState::default(),
        }
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
/// I/O, no clock) and shard-agnostic: see the [module docs](super) for the one-shard rule.
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
            .field("partition_keys", &self.partition_keys.entries.len())
            .field("explicit_hash_keys", &self.explicit_hash_keys.entries.len())
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

    /// The size bound of the aggregates begun now.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Changes the size bound of the aggregates begun from now on.
    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
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

#[cfg(test)]
mod tests;
