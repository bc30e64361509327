//! The units the engine moves: a user record it holds ([`Entry`]) and a Kinesis record built
//! from one or more of them ([`KRecord`]).

use crate::error::RecordError;
use crate::hash_key::HashKey;
use crate::kinesis::PutRecordsEntry;
use crate::record::{Attempt, PutOutcome, UserRecord};
use crate::retry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where a record's result goes.
pub(crate) type Reply = oneshot::Sender<Result<PutOutcome, RecordError>>;

/// A user record held by the engine.
pub(crate) struct Entry {
    pub seq: u64,
    pub record: UserRecord,
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
        Entry {
            seq: 0,
            record,
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
        self.record.size()
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
                data: e.record.data.clone(),
                partition_key: e.record.partition_key.clone(),
                explicit_hash_key: e.record.explicit_hash_key.clone(),
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
