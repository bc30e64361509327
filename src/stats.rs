//! `Producer::stats()`: counters kept by the engine, read by any handle.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A snapshot of a producer's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// User records accepted.
    pub records_received: u64,
    /// User records stored.
    pub records_put: u64,
    /// User records that finally failed (expired, rejected or shut down).
    pub records_failed: u64,
    /// Of the failed, those whose TTL expired.
    pub records_expired: u64,
    /// User records the engine holds now (queued, in flight or awaiting retry), by its own
    /// count (records accepted by `add` but not yet taken in by the engine are not included).
    pub records_pending: u64,
    /// Bytes (data + partition keys) the engine holds now, by its own count.
    pub bytes_pending: u64,
    /// Room left for records in the buffer bound: `max_buffered_records` minus the records
    /// `add` has reserved and the engine has not given back (the semaphore's free permits, not
    /// clamped: a double release shows as more room than the bound).
    pub buffer_records_free: u64,
    /// Room left for bytes in the buffer bound, likewise.
    pub buffer_bytes_free: u64,
    /// Room for records the producer holds back from `add` while the stream drains slower than
    /// records arrive (the bound in force is `max_buffered_records` minus this; see
    /// [`crate::admission`]). Settled, `records_pending + buffer_records_free +
    /// buffer_records_withheld` is `max_buffered_records`.
    pub buffer_records_withheld: u64,
    /// Room for bytes held back, likewise.
    pub buffer_bytes_withheld: u64,
    /// Kinesis records stored (an aggregate counts once).
    pub kinesis_records_put: u64,
    /// Bytes stored, as the service counts them (data + partition key of Kinesis records).
    pub bytes_put: u64,
    /// PutRecords requests completed (with any outcome).
    pub requests: u64,
    /// Kinesis records throttled by the service.
    pub throttles: u64,
    /// User record retries.
    pub retries: u64,
    /// User records sent again after an attempt whose outcome was unknown (the request timed
    /// out or its connection dropped): each may be stored twice.
    pub possible_duplicates: u64,
    /// Failed records offered to the dead-letter channel and taken.
    pub dead_letters_sent: u64,
    /// Failed records the dead-letter channel could not take (full or closed): dropped.
    pub dead_letters_dropped: u64,
    /// Sub-records re-sent after landing outside their shard's range.
    pub stranded_resent: u64,
    /// Shard map refreshes.
    pub shard_map_refreshes: u64,
    /// The stream's record distribution is `AUTO` (as last read): no shard prediction, no
    /// aggregation.
    pub auto_distribution: bool,
    /// The capacity mode is `ON_DEMAND` (`Some(false)`: `PROVISIONED`), where the service
    /// reports it.
    pub on_demand: Option<bool>,
    /// The record size limit in force (data + partition key), bytes.
    pub record_size_limit: u64,
    /// Changes of the stream's settings seen while running (distribution, record size limit).
    pub stream_settings_changes: u64,
    /// `DescribeStreamSummary` reads that succeeded after start.
    pub stream_settings_reads: u64,
    /// Time since the producer started.
    pub uptime: Duration,
    /// Per-shard counters (as of the engine's last publication, at most a second old).
    pub shards: Vec<ShardStats>,
}

impl Stats {
    /// Adds another stream's counters (records, bytes, requests, events) to these; settings,
    /// buffer room, uptime and per-shard counters stay.
    pub(crate) fn add_counters(&mut self, o: &Stats) {
        self.records_received += o.records_received;
        self.records_put += o.records_put;
        self.records_failed += o.records_failed;
        self.records_expired += o.records_expired;
        self.records_pending += o.records_pending;
        self.bytes_pending += o.bytes_pending;
        self.kinesis_records_put += o.kinesis_records_put;
        self.bytes_put += o.bytes_put;
        self.requests += o.requests;
        self.throttles += o.throttles;
        self.retries += o.retries;
        self.possible_duplicates += o.possible_duplicates;
        self.dead_letters_sent += o.dead_letters_sent;
        self.dead_letters_dropped += o.dead_letters_dropped;
        self.stranded_resent += o.stranded_resent;
        self.shard_map_refreshes += o.shard_map_refreshes;
        self.stream_settings_changes += o.stream_settings_changes;
        self.stream_settings_reads += o.stream_settings_reads;
    }
}

/// Per-shard counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardStats {
    /// The shard id.
    pub shard_id: String,
    /// Kinesis records stored on it.
    pub kinesis_records_put: u64,
    /// Bytes stored on it (data + partition key).
    pub bytes_put: u64,
    /// Kinesis records the service throttled on it.
    pub throttles: u64,
    /// Current rate as a fraction of the configured limit: the stream's rate factor, the same
    /// for all its shards (below 1 in slow start and when other writers share the stream).
    pub rate_factor: f64,
}

impl ShardStats {
    /// Average use of the shard's write limits over `window`: the larger of records/s over
    /// 1,000 and bytes/s over 1 MiB.
    pub fn utilization(&self, window: Duration) -> f64 {
        let secs = window.as_secs_f64().max(1e-9);
        let records =
            self.kinesis_records_put as f64 / secs / crate::limits::SHARD_RECORDS_PER_SEC as f64;
        let bytes = self.bytes_put as f64 / secs / crate::limits::SHARD_BYTES_PER_SEC as f64;
        records.max(bytes)
    }
}

/// Counters shared between the engine (the only writer) and the handles.
#[derive(Debug)]
pub(crate) struct SharedStats {
    pub started: Instant,
    pub records_received: AtomicU64,
    pub records_put: AtomicU64,
    pub records_failed: AtomicU64,
    pub records_expired: AtomicU64,
    pub kinesis_records_put: AtomicU64,
    pub bytes_put: AtomicU64,
    pub requests: AtomicU64,
    pub throttles: AtomicU64,
    pub retries: AtomicU64,
    pub possible_duplicates: AtomicU64,
    pub dead_letters_sent: AtomicU64,
    pub dead_letters_dropped: AtomicU64,
    pub stranded_resent: AtomicU64,
    pub shard_map_refreshes: AtomicU64,
    /// Published by the engine's ledger.
    pub records_pending: AtomicU64,
    /// Published by the engine's ledger.
    pub bytes_pending: AtomicU64,
    pub shards: Mutex<Vec<ShardStats>>,
}

impl SharedStats {
    pub fn new(started: Instant) -> Arc<Self> {
        Arc::new(SharedStats {
            started,
            records_received: AtomicU64::new(0),
            records_put: AtomicU64::new(0),
            records_failed: AtomicU64::new(0),
            records_expired: AtomicU64::new(0),
            kinesis_records_put: AtomicU64::new(0),
            bytes_put: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            throttles: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            possible_duplicates: AtomicU64::new(0),
            dead_letters_sent: AtomicU64::new(0),
            dead_letters_dropped: AtomicU64::new(0),
            stranded_resent: AtomicU64::new(0),
            shard_map_refreshes: AtomicU64::new(0),
            records_pending: AtomicU64::new(0),
            bytes_pending: AtomicU64::new(0),
            shards: Mutex::new(Vec::new()),
        })
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The counters, with the buffer's room: free (as the semaphores report it) and withheld,
    /// records and bytes.
    pub fn snapshot(&self, room: (usize, usize, usize, usize)) -> Stats {
        let (buffer_records_free, buffer_bytes_free, records_withheld, bytes_withheld) = room;
        Stats {
            records_received: self.records_received.load(Relaxed),
            records_put: self.records_put.load(Relaxed),
            records_failed: self.records_failed.load(Relaxed),
            records_expired: self.records_expired.load(Relaxed),
            records_pending: self.records_pending.load(Relaxed),
            bytes_pending: self.bytes_pending.load(Relaxed),
            buffer_records_free: buffer_records_free as u64,
            buffer_bytes_free: buffer_bytes_free as u64,
            buffer_records_withheld: records_withheld as u64,
            buffer_bytes_withheld: bytes_withheld as u64,
            kinesis_records_put: self.kinesis_records_put.load(Relaxed),
            bytes_put: self.bytes_put.load(Relaxed),
            requests: self.requests.load(Relaxed),
            throttles: self.throttles.load(Relaxed),
            retries: self.retries.load(Relaxed),
            possible_duplicates: self.possible_duplicates.load(Relaxed),
            dead_letters_sent: self.dead_letters_sent.load(Relaxed),
            dead_letters_dropped: self.dead_letters_dropped.load(Relaxed),
            stranded_resent: self.stranded_resent.load(Relaxed),
            shard_map_refreshes: self.shard_map_refreshes.load(Relaxed),
            uptime: self.started.elapsed(),
            shards: self.shards.lock().map(|s| s.clone()).unwrap_or_default(),
            // The stream's settings are added by the producer's handle.
            ..Stats::default()
        }
    }
}
