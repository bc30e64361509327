//! The units the engine moves: a user record it holds ([`Entry`]) and a Kinesis record built
//! from one or more of them ([`KRecord`]).

use crate::error::RecordError;
use crate::hash_key::HashKey;
use crate::kinesis::PutRecordsEntry;
use crate::record::{Attempt, PutOutcome, UserRecord};
use crate::retry;
use bytes::Bytes;
use compact_str::CompactString;
use smallvec::{smallvec, SmallVec};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where a record's result goes.
pub(crate) type Reply = oneshot::Sender<Result<PutOutcome, RecordError>>;

/// A user record held by the engine, in parts.
///
/// The partition key is kept inline when it is short (up to 24 bytes, as nearly all are): the
/// key travels with the entry through the ingest channel and the shard queue instead of in a
/// heap allocation of its own, which the engine thread read cold when it aggregated the record
/// and freed against the allocating thread's arena (a quarter to a third of the producer's CPU
/// per record, and most of the plain run's peak RSS: BENCHMARKS.md, issue 12). The key arrives
/// so from [`UserRecord::partition_key`]; [`Entry::record`] rebuilds the user's record where one
/// is handed back (failures, dead letters, a refused `add`).
///
/// It is kept small (160 bytes): a full buffer holds hundreds of thousands of entries in its
/// shard queues, and each one is moved through the ingest channel and its queue. The deadline
/// is worked out from the arrival and the TTL ([`Entry::deadline`]); attempts are stored only
/// once a record has been tried ([`Attempts`]).
pub(crate) struct Entry {
    pub seq: u64,
    pub key: CompactString,
    pub explicit_hash_key: Option<Box<str>>,
    pub data: Bytes,
    /// The stream it goes to, as the user named it (`None`: the producer's).
    pub stream: Option<Arc<str>>,
    pub hash_key: HashKey,
    pub arrival: Instant,
    pub attempts: Attempts,
    pub reply: Option<Reply>,
    /// Never aggregated again: its aggregate landed on a shard whose range did not hold it
    /// (the map was stale, or the stream placed it under `AUTO`).
    pub plain: bool,
}

impl Entry {
    /// A new entry; `seq` is assigned by the engine's ledger.
    pub fn new(
        record: UserRecord,
        hash_key: HashKey,
        arrival: Instant,
        reply: Option<Reply>,
    ) -> Self {
        let UserRecord {
            partition_key,
            explicit_hash_key,
            data,
            stream,
        } = record;
        Entry {
            seq: 0,
            key: partition_key,
            explicit_hash_key: explicit_hash_key.map(String::into_boxed_str),
            data,
            stream,
            hash_key,
            arrival,
            attempts: Attempts::default(),
            reply,
            plain: false,
        }
    }

    /// When its TTL runs out, for the producer's `record_ttl`.
    pub fn deadline(&self, ttl: Duration) -> Instant {
        retry::deadline(self.arrival, ttl)
    }

    /// Data + partition key: what the buffer bound and the service count.
    pub fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }

    /// The user's record, as it was added.
    pub fn record(&self) -> UserRecord {
        UserRecord {
            partition_key: self.key.clone(),
            explicit_hash_key: self.explicit_hash_key.as_deref().map(String::from),
            data: self.data.clone(),
            stream: self.stream.clone(),
        }
    }

    /// The user's record, as it was added, taken out of the entry.
    pub fn into_record(self) -> UserRecord {
        UserRecord {
            partition_key: self.key,
            explicit_hash_key: self.explicit_hash_key.map(String::from),
            data: self.data,
            stream: self.stream,
        }
    }
}

// A regression here costs every buffered record (see the note on `Entry`).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() <= 160);

/// The attempts a record has been through: nothing on the heap (and 8 bytes in the entry)
/// until the first one that did not store it.
#[derive(Default)]
#[allow(clippy::box_collection)] // the box is the point: 8 bytes in the entry, not a Vec's 24
pub(crate) struct Attempts(Option<Box<Vec<Attempt>>>);

impl Attempts {
    /// Adds an attempt.
    pub fn push(&mut self, attempt: Attempt) {
        self.0.get_or_insert_default().push(attempt);
    }

    /// The attempts so far, then `last`: what a resolved record reports.
    pub fn with(&mut self, last: Attempt) -> Vec<Attempt> {
        let mut all = self.take();
        all.push(last);
        all
    }

    /// The attempts so far, taken out.
    pub fn take(&mut self) -> Vec<Attempt> {
        self.0.take().map_or_else(Vec::new, |b| *b)
    }
}

/// A Kinesis record: one user record, or an aggregate of user records of one predicted shard.
pub(super) struct KRecord {
    /// The shard it was built for.
    pub shard: Arc<str>,
    /// The identity of that shard's state ([`super::shard::ShardState::uid`]): a shard id can
    /// come back with a new state (the stream switched to `AUTO` and back), which must not
    /// count this record as its own.
    pub origin: u64,
    /// Its user records: one inline for a plain record (no allocation per record).
    pub entries: SmallVec<[Entry; 1]>,
    pub aggregated: bool,
    /// The wire form; moved out when the request is built (a retry rebuilds it).
    pub wire: PutRecordsEntry,
    /// Data + partition key of the wire form.
    pub size: usize,
    /// Arrival of its oldest user record.
    pub oldest: Instant,
}

impl KRecord {
    /// A user record sent as it is.
    pub fn single(shard: Arc<str>, origin: u64, e: Entry) -> Self {
        KRecord {
            shard,
            origin,
            size: e.size(),
            oldest: e.arrival,
            wire: PutRecordsEntry {
                data: e.data.clone(),
                partition_key: e.key.clone(),
                explicit_hash_key: e.explicit_hash_key.as_deref().map(String::from),
            },
            entries: smallvec![e],
            aggregated: false,
        }
    }

    /// Whether every user record in it is still within its TTL.
    pub fn live(&self, now: Instant, ttl: Duration) -> bool {
        self.entries.iter().all(|e| e.deadline(ttl) > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short keys (inline), a key just past the inline size, the longest key, no key, an
    /// explicit hash key and another stream: the record handed back is the one added, and the
    /// size the buffer counts is its data and key.
    #[test]
    fn an_entry_gives_back_the_record_it_was_made_from() {
        let records = [
            UserRecord::new("k", "data"),
            UserRecord::new("x".repeat(24), "inline at most"),
            UserRecord::new("y".repeat(25), "on the heap"),
            UserRecord::new("😀".repeat(256), vec![0u8; 1000]),
            UserRecord::unkeyed("no key"),
            UserRecord::new("k", "").with_explicit_hash_key("12345"),
            UserRecord::new("k", "d").to("other"),
        ];
        for r in records {
            let e = Entry::new(r.clone(), HashKey(1), Instant::now(), None);
            assert_eq!(e.size(), r.size());
            assert_eq!(e.key.as_str(), r.partition_key);
            assert_eq!(e.record(), r);
            assert_eq!(e.into_record(), r);
        }
    }
}
