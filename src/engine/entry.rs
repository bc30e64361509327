//! The units the engine moves: a user record it holds ([`Entry`]) and a Kinesis record built
//! from one or more of them ([`KRecord`]).

use crate::error::RecordError;
use crate::hash_key::HashKey;
use crate::kinesis::PutRecordsEntry;
use crate::record::{Attempt, PutOutcome, UserRecord};
use crate::retry;
use bytes::Bytes;
use compact_str::CompactString;
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
/// per record, and most of the plain run's peak RSS: BENCHMARKS.md, issue 12). The caller's
/// `String` is freed on the caller's thread by [`Entry::new`]; [`Entry::record`] rebuilds the
/// user's record where one is handed back (failures, dead letters, a refused `add`).
pub(crate) struct Entry {
    pub seq: u64,
    pub key: CompactString,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
    /// The stream it goes to, as the user named it (`None`: the producer's).
    pub stream: Option<Arc<str>>,
    pub hash_key: HashKey,
    pub arrival: Instant,
    pub deadline: Instant,
    pub attempts: Vec<Attempt>,
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
        ttl: Duration,
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
            key: CompactString::from(partition_key),
            explicit_hash_key,
            data,
            stream,
            hash_key,
            arrival,
            deadline: retry::deadline(arrival, ttl),
            attempts: Vec::new(),
            reply,
            plain: false,
        }
    }

    /// Data + partition key: what the buffer bound and the service count.
    pub fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }

    /// The user's record, as it was added.
    pub fn record(&self) -> UserRecord {
        UserRecord {
            partition_key: self.key.to_string(),
            explicit_hash_key: self.explicit_hash_key.clone(),
            data: self.data.clone(),
            stream: self.stream.clone(),
        }
    }

    /// The user's record, as it was added, taken out of the entry.
    pub fn into_record(self) -> UserRecord {
        UserRecord {
            partition_key: self.key.into_string(),
            explicit_hash_key: self.explicit_hash_key,
            data: self.data,
            stream: self.stream,
        }
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
    pub entries: Vec<Entry>,
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
                partition_key: e.key.to_string(),
                explicit_hash_key: e.explicit_hash_key.clone(),
            },
            entries: vec![e],
            aggregated: false,
        }
    }

    /// Whether every user record in it is still within its TTL.
    pub fn live(&self, now: Instant) -> bool {
        self.entries.iter().all(|e| e.deadline > now)
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
            let e = Entry::new(
                r.clone(),
                HashKey(1),
                Instant::now(),
                Duration::from_secs(1),
                None,
            );
            assert_eq!(e.size(), r.size());
            assert_eq!(e.key.as_str(), r.partition_key);
            assert_eq!(e.record(), r);
            assert_eq!(e.into_record(), r);
        }
    }
}
