//! The reliability suite's invariants, checked against what kinesis-sim stored.
//!
//! ```text
//!  tagged records (id in the data) ──► producer ──► sim (faults) ──► sim.records()
//!        │                                                               │ deaggregate
//!        └── outcomes (Ok place / Err) ──────────► verify() ◄────────────┘
//! ```
//!
//! `verify` checks, for every record: an `Ok` names a stored Kinesis record (shard id +
//! sequence number) that holds exactly this record at its sub-sequence number, inside that
//! shard's hash range if it is a sub-record of an aggregate (KCL drops the others); every other stored copy (and every copy of a failed record) is explained
//! by an attempt whose outcome was unknown (timeout, dropped connection, in flight at the
//! shutdown deadline) or by a stranded sub-record re-send; the stream holds nothing else.
//! [`BoundSampler`] watches `stats()` for the buffer bound while a case runs, comparing the
//! engine's own count of what it holds with the buffer's semaphores.
#![allow(dead_code)]

use bytes::Bytes;
use kinesis_producer::aggregation::MAGIC;
use kinesis_producer::{
    deaggregate_strict, HashKey, PendingRecord, Producer, PutOutcome, RecordError, Stats,
    UserRecord,
};
use kinesis_sim::Simulator;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempt error codes whose request may or may not have been applied by the service.
pub const UNKNOWN_OUTCOME_CODES: &[&str] = &["Timeout", "ConnectionError", "ShutDownInFlight"];
/// Attempt error code of a sub-record re-sent because its aggregate landed outside its range.
pub const STRANDED_CODE: &str = "SubRecordOutsideShardRange";

/// Width of the decimal id at the start of every tagged record's data.
const ID_WIDTH: usize = 9;

/// Record `id` of a run: its data starts with the id (so a stored copy can be traced back), a
/// few hundred keys, some records routed by explicit hash key, data of varying length.
pub fn tagged_record(id: usize, keys: usize) -> UserRecord {
    let pad = (id * 7919) % 120;
    let data = format!("{id:0w$}|{}", "x".repeat(pad), w = ID_WIDTH);
    let r = UserRecord::new(format!("key-{}", id % keys), data);
    if id.is_multiple_of(11) {
        // Spread over the whole key space, shard boundaries included now and then.
        let h = (id as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        r.with_explicit_hash_key(h.to_string())
    } else {
        r
    }
}

/// The id a tagged record's data starts with.
pub fn record_id(data: &[u8]) -> Option<usize> {
    let head = data.get(..ID_WIDTH)?;
    std::str::from_utf8(head).ok()?.parse().ok()
}

/// The hash key Kinesis routes a record by.
pub fn hash_of(partition_key: &str, explicit_hash_key: Option<&str>) -> u128 {
    match explicit_hash_key {
        Some(h) => h.parse().expect("decimal hash key"),
        None => HashKey::from_partition_key(partition_key).0,
    }
}

/// One record's result, by id.
pub type Outcome = (UserRecord, Result<PutOutcome, RecordError>);

/// Awaits every future (each at most `deadline` from now): a hang fails the test.
pub async fn resolve_all(
    pending: Vec<(UserRecord, PendingRecord)>,
    deadline: Duration,
) -> Vec<Outcome> {
    let until = tokio::time::Instant::now() + deadline;
    let mut out = Vec::with_capacity(pending.len());
    for (r, p) in pending {
        let result = tokio::time::timeout_at(until, p)
            .await
            .unwrap_or_else(|_| panic!("record {r:?} unresolved after {deadline:?}"));
        out.push((r, result));
    }
    out
}

/// What `verify` counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Records reported stored.
    pub ok: usize,
    /// Records reported failed.
    pub failed: usize,
    /// Kinesis records the stream holds.
    pub kinesis_records: usize,
    /// User records the stream holds (sub-records of aggregates counted one by one).
    pub stored_user_records: usize,
    /// Stored copies beyond the reported one, explained by an attempt of unknown outcome.
    pub possible_duplicates: usize,
    /// Stored copies of failed records, explained by an attempt of unknown outcome.
    pub stored_but_failed: usize,
    /// Stored copies explained by a stranded-sub-record re-send.
    pub stranded_copies: usize,
    /// Attempts of unknown outcome across all records.
    pub unknown_attempts: usize,
}

fn count_codes(attempts: &[kinesis_producer::Attempt], codes: &[&str]) -> usize {
    attempts
        .iter()
        .filter(|a| a.error_code.as_deref().is_some_and(|c| codes.contains(&c)))
        .count()
}

/// Checks the invariants of the module docs; panics with the first violation.
pub fn verify(sim: &Simulator, stream: &str, outcomes: &[Outcome]) -> Verdict {
    let ranges: HashMap<String, (u128, u128)> = sim
        .shards(stream)
        .into_iter()
        .map(|s| (s.shard_id, (s.starting_hash_key, s.ending_hash_key)))
        .collect();
    let mut by_id: HashMap<usize, usize> = HashMap::with_capacity(outcomes.len());
    for (i, (r, _)) in outcomes.iter().enumerate() {
        let id = record_id(&r.data).expect("tagged record");
        assert!(by_id.insert(id, i).is_none(), "record id {id} added twice");
    }
    // Every stored copy of every user record: (shard, sequence number, sub index, aggregated).
    let mut copies: Vec<Vec<(String, String, u64, bool)>> = vec![Vec::new(); outcomes.len()];
    let mut v = Verdict::default();
    for s in sim.records(stream) {
        v.kinesis_records += 1;
        let subs = deaggregate_strict(
            &s.partition_key,
            s.explicit_hash_key.as_deref(),
            Bytes::from(s.data.clone()),
        )
        .unwrap_or_else(|e| panic!("stored record {} does not decode: {e}", s.sequence_number));
        let aggregated = subs.len() > 1 || (subs.len() == 1 && s.data.starts_with(&MAGIC));
        for sub in subs {
            v.stored_user_records += 1;
            let id = record_id(&sub.data)
                .unwrap_or_else(|| panic!("stored data that was never added: {:?}", sub.data));
            let &i = by_id
                .get(&id)
                .unwrap_or_else(|| panic!("stored record id {id} that was never added"));
            let (r, _) = &outcomes[i];
            assert_eq!(
                sub.partition_key, r.partition_key,
                "record {id}: stored key"
            );
            assert_eq!(sub.data, r.data, "record {id}: stored data");
            assert_eq!(
                sub.explicit_hash_key, r.explicit_hash_key,
                "record {id}: stored explicit hash key"
            );
            copies[i].push((
                s.shard_id.clone(),
                s.sequence_number.clone(),
                sub.sub_sequence_number,
                aggregated,
            ));
        }
    }
    for (i, (r, result)) in outcomes.iter().enumerate() {
        let attempts = match result {
            Ok(o) => &o.attempts,
            Err(e) => e.attempts(),
        };
        let unknown = count_codes(attempts, UNKNOWN_OUTCOME_CODES);
        let stranded = count_codes(attempts, &[STRANDED_CODE]);
        v.unknown_attempts += unknown;
        let mine = &copies[i];
        let extra = match result {
            Ok(out) => {
                v.ok += 1;
                assert!(
                    out.attempts.last().is_some_and(|a| a.succeeded()),
                    "{r:?}: Ok outcome whose last attempt failed"
                );
                let sub = out.sub_sequence_number.unwrap_or(0);
                let reported = mine.iter().position(|(shard, seq, s, agg)| {
                    **shard == *out.shard_id
                        && **seq == *out.sequence_number
                        && *s == sub
                        && *agg == out.sub_sequence_number.is_some()
                });
                assert!(
                    reported.is_some(),
                    "{r:?} reported stored at {} {} (sub {:?}) but the stream has it at {mine:?}",
                    out.shard_id,
                    out.sequence_number,
                    out.sub_sequence_number
                );
                // KCL's rule: a sub-record of an aggregate whose hash key lies outside the
                // holding shard's range is dropped; a plain record is read wherever it is (an
                // `AUTO` stream places records anywhere).
                if out.sub_sequence_number.is_some() {
                    let (start, end) = ranges[&*out.shard_id];
                    let h = hash_of(&r.partition_key, r.explicit_hash_key.as_deref());
                    assert!(
                        (start..=end).contains(&h),
                        "{r:?} reported in {} whose range does not hold its hash key: a KCL consumer drops it",
                        out.shard_id
                    );
                }
                mine.len() - 1
            }
            Err(_) => {
                v.failed += 1;
                v.stored_but_failed += mine.len();
                mine.len()
            }
        };
        assert!(
            extra <= unknown + stranded,
            "{r:?}: {extra} unexplained stored copies ({mine:?}); result {result:?}"
        );
        let from_stranded = extra.min(stranded);
        v.stranded_copies += from_stranded;
        if result.is_ok() {
            v.possible_duplicates += extra - from_stranded;
        }
    }
    v
}

/// Samples `stats()` while a case runs and records any breach of the buffer bound.
///
/// Two independent counts meet here: the engine's ledger (`records_pending`, `bytes_pending`:
/// what the engine holds, counted as records enter and leave it) and the buffer's semaphores
/// (`buffer_records_free`, `buffer_bytes_free`: permits `add` took and the engine gave back),
/// beside the room the engine holds back from `add` while the stream drains slowly
/// (`buffer_*_withheld`). While the case runs, the ledger must stay within the bound (a lost or
/// double release lets `add` admit more than the bound) and free + withheld room must never
/// exceed the bound (a double release). When the case has settled, ledger and semaphores must
/// agree exactly: pending + free + withheld = bound, records and bytes alike.
pub struct BoundSampler {
    producer: Producer,
    bound: (u64, u64),
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Samples>,
}

/// What a [`BoundSampler`] saw.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub samples: usize,
    pub max_records: u64,
    pub max_bytes: u64,
    pub breaches: Vec<String>,
}

/// What is wrong with one `stats()` snapshot against the bound while records may be in transit
/// between `add` and the engine, if anything.
pub fn bound_breach(st: &Stats, max_records: u64, max_bytes: u64) -> Option<String> {
    (st.records_pending > max_records
        || st.bytes_pending > max_bytes
        || st.buffer_records_free + st.buffer_records_withheld > max_records
        || st.buffer_bytes_free + st.buffer_bytes_withheld > max_bytes)
        .then(|| {
            format!(
                "ledger {} records / {} bytes pending, semaphores {} / {} free, {} / {} withheld (bound {max_records} / {max_bytes})",
                st.records_pending,
                st.bytes_pending,
                st.buffer_records_free,
                st.buffer_bytes_free,
                st.buffer_records_withheld,
                st.buffer_bytes_withheld
            )
        })
}

/// Asserts that the ledger and the semaphores agree exactly once nothing is in transit (every
/// accepted record taken in by the engine): pending + free + withheld = bound.
pub fn assert_bound_agrees(st: &Stats, max_records: u64, max_bytes: u64) {
    assert_eq!(
        (
            st.records_pending + st.buffer_records_free + st.buffer_records_withheld,
            st.bytes_pending + st.buffer_bytes_free + st.buffer_bytes_withheld
        ),
        (max_records, max_bytes),
        "the engine's ledger and the buffer's semaphores disagree: {st:?}"
    );
}

impl BoundSampler {
    /// Samples every `every` until [`BoundSampler::finish`].
    pub fn start(p: &Producer, max_records: u64, max_bytes: u64, every: Duration) -> Self {
        let producer = p.clone();
        let p = p.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut s = Samples::default();
            while !flag.load(Ordering::Relaxed) {
                let st = p.stats();
                s.samples += 1;
                s.max_records = s.max_records.max(st.records_pending);
                s.max_bytes = s.max_bytes.max(st.bytes_pending);
                s.breaches.extend(bound_breach(&st, max_records, max_bytes));
                tokio::time::sleep(every).await;
            }
            s
        });
        BoundSampler {
            producer,
            bound: (max_records, max_bytes),
            stop,
            handle,
        }
    }

    /// Stops sampling once the case has settled (every accepted record resolved); asserts the
    /// bound held, at least one sample was taken, and ledger and semaphores agree now.
    pub async fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let s = self.handle.await.expect("sampler task");
        assert!(
            s.breaches.is_empty(),
            "buffer bound breached: {:?}",
            s.breaches
        );
        assert!(s.samples > 0);
        assert_bound_agrees(&self.producer.stats(), self.bound.0, self.bound.1);
        s
    }
}

/// Waits until `f` holds (polling every 5 ms) or `deadline` passes; returns whether it held.
pub async fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}
