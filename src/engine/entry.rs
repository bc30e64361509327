//! The units the engine moves: a user record it holds ([`Entry`]) and a Kinesis record built
//! from one or more of them ([`KRecord`]).

use crate::error::RecordError;
use crate::hash_key::{Decimal, HashKey};
use crate::kinesis::PutRecordsEntry;
use crate::record::{Attempt, PutOutcome, UserRecord};
use crate::retry;
use bytes::Bytes;
use compact_str::CompactString;
use smallvec::{smallvec, SmallVec};
use std::sync::{Arc, LazyLock};
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
/// It is kept small (128 bytes, two cache lines): a full buffer holds hundreds of thousands of
/// entries in its shard queues, and each one is moved through the ingest channel and its
/// queue. The deadline is worked out from the arrival and the TTL ([`Entry::deadline`]); the
/// arrival and two flags are held in 8 bytes ([`Stamp`]); an explicit hash key is kept only
/// as its parsed value, `hash_key` (`add` accepts only the API's spelling of a number, so its
/// decimal is the string the user gave); attempts are stored only once a record has been
/// tried ([`Attempts`]).
pub(crate) struct Entry {
    pub seq: u64,
    pub key: CompactString,
    pub data: Bytes,
    /// The stream it goes to, as the user named it (`None`: the producer's).
    pub stream: Option<Arc<str>>,
    pub hash_key: HashKey,
    stamp: Stamp,
    pub attempts: Attempts,
    pub reply: Option<Reply>,
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
        debug_assert!(explicit_hash_key
            .as_deref()
            .is_none_or(|k| k.parse() == Ok(hash_key.0)));
        Entry {
            seq: 0,
            key: partition_key,
            data,
            stream,
            hash_key,
            stamp: Stamp::new(arrival, explicit_hash_key.is_some()),
            attempts: Attempts::default(),
            reply,
        }
    }

    /// When it was added.
    pub fn arrival(&self) -> Instant {
        self.stamp.instant()
    }

    /// Its explicit hash key, as the user gave it, if it has one.
    pub fn explicit_hash_key(&self) -> Option<Decimal> {
        self.stamp
            .has(Stamp::EXPLICIT)
            .then(|| self.hash_key.decimal())
    }

    /// Never aggregated again: its aggregate landed on a shard whose range did not hold it
    /// (the map was stale, or the stream placed it under `AUTO`).
    pub fn plain(&self) -> bool {
        self.stamp.has(Stamp::PLAIN)
    }

    /// Marks it [`Entry::plain`].
    pub fn make_plain(&mut self) {
        self.stamp.0 |= Stamp::PLAIN;
    }

    /// When its TTL runs out, for the producer's `record_ttl`.
    pub fn deadline(&self, ttl: Duration) -> Instant {
        retry::deadline(self.arrival(), ttl)
    }

    /// Data + partition key: what the buffer bound and the service count.
    pub fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }

    /// The user's record, as it was added.
    pub fn record(&self) -> UserRecord {
        UserRecord {
            partition_key: self.key.clone(),
            explicit_hash_key: self.explicit_hash_key().map(|k| k.to_string()),
            data: self.data.clone(),
            stream: self.stream.clone(),
        }
    }

    /// The user's record, as it was added, taken out of the entry.
    pub fn into_record(self) -> UserRecord {
        let explicit_hash_key = self.explicit_hash_key().map(|k| k.to_string());
        UserRecord {
            partition_key: self.key,
            explicit_hash_key,
            data: self.data,
            stream: self.stream,
        }
    }
}

// A regression here costs every buffered record (see the note on `Entry`).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Entry>() <= 128);

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
            oldest: e.arrival(),
            wire: PutRecordsEntry {
                data: e.data.clone(),
                partition_key: e.key.clone(),
                explicit_hash_key: e.explicit_hash_key().map(|k| k.to_string()),
            },
            entries: smallvec![e],
            aggregated: false,
        }
    }

    /// Takes its user records and wire form out, leaving it empty (for a record that must
    /// outlive the request it came back in).
    pub fn take(&mut self) -> Self {
        KRecord {
            shard: self.shard.clone(),
            entries: std::mem::take(&mut self.entries),
            wire: std::mem::take(&mut self.wire),
            ..*self
        }
    }

    /// Whether every user record in it is still within its TTL: whether its oldest one is
    /// (checked before each request without reading the entries, which at thousands of shards
    /// have long left the cache).
    pub fn live(&self, now: Instant, ttl: Duration) -> bool {
        retry::deadline(self.oldest, ttl) > now
    }
}

/// A record's arrival and two flags in 8 bytes (`Instant` alone takes 16): signed nanoseconds
/// from an origin taken once per process (signed because a virtual clock in tests may start
/// before it), shifted left past the flags; about ±73 years, exact both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(i64);

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Stamp {
    /// The hash key is the user's explicit hash key.
    const EXPLICIT: i64 = 1;
    /// See [`Entry::plain`].
    const PLAIN: i64 = 2;
    const FLAGS: u32 = 2;

    fn new(t: Instant, explicit: bool) -> Self {
        let origin = *ORIGIN;
        let max = i64::MAX >> Self::FLAGS;
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).map_or(max, |n| n.min(max));
        let nanos = match t.checked_duration_since(origin) {
            Some(after) => nanos(after),
            None => -nanos(origin - t),
        };
        Stamp(nanos << Self::FLAGS | if explicit { Self::EXPLICIT } else { 0 })
    }

    fn instant(self) -> Instant {
        let nanos = self.0 >> Self::FLAGS;
        let d = Duration::from_nanos(nanos.unsigned_abs());
        if nanos >= 0 {
            *ORIGIN + d
        } else {
            *ORIGIN - d
        }
    }

    fn has(self, flag: i64) -> bool {
        self.0 & flag != 0
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
            UserRecord::new("k", "").with_explicit_hash_key(u128::MAX.to_string()),
            UserRecord::new("k", "").with_explicit_hash_key("0"),
            UserRecord::new("k", "d").to("other"),
        ];
        for r in records {
            let hash = r
                .explicit_hash_key
                .as_deref()
                .map_or(1, |k| k.parse().unwrap());
            let e = Entry::new(r.clone(), HashKey(hash), Instant::now(), None);
            assert_eq!(e.size(), r.size());
            assert_eq!(e.key.as_str(), r.partition_key);
            assert_eq!(e.record(), r);
            assert_eq!(e.into_record(), r);
        }
    }

    #[test]
    fn a_stamp_gives_back_the_instant_it_was_made_from() {
        let origin = *ORIGIN;
        for t in [
            origin,
            origin + Duration::from_nanos(1),
            origin + Duration::from_secs(86_400 * 365 * 70) + Duration::from_nanos(7),
            origin - Duration::from_nanos(1),
            origin
                .checked_sub(Duration::from_secs(3600))
                .unwrap_or(origin),
            Instant::now() + Duration::from_millis(1234),
        ] {
            for explicit in [false, true] {
                let mut s = Stamp::new(t, explicit);
                assert_eq!((s.instant(), s.has(Stamp::EXPLICIT)), (t, explicit));
                assert!(!s.has(Stamp::PLAIN));
                s.0 |= Stamp::PLAIN;
                assert_eq!((s.instant(), s.has(Stamp::EXPLICIT)), (t, explicit));
                assert!(s.has(Stamp::PLAIN));
            }
        }
    }
}
