//! The public handle: `add` and its siblings, `flush`, `shutdown`, `stats`.
//!
//! ```text
//!  Producer (Clone) ──add()──► validate, hash, wait for buffer room ──► ingest channel
//!                                                                          │
//!        engine thread: select { ingest, I/O results, timer } ─► Engine ─► actions
//!                                                                          │
//!        tokio runtime: PutRecords / ListShards calls ──► I/O results ─────┘
//! ```
//!
//! # Backpressure
//! `add().await` waits until the producer holds fewer than `max_buffered_records` records and
//! `max_buffered_bytes` bytes (queued, in flight and awaiting retry all count); `try_add` never
//! waits and hands the record back; `add_blocking` blocks the calling thread.
//!
//! # Cancellation
//! Dropping the future returned by `add` (or [`PendingRecord`]) does not cancel the record: once
//! accepted, it is sent, and its result is counted in metrics and stats.
//!
//! # Shutdown
//! `shutdown().await` stops intake, sends everything and waits until every record is resolved;
//! after `shutdown_timeout` what is left fails with [`RecordError::ShutDown`]. Dropping the last
//! handle does the same in the background. The engine's requests run on the Tokio runtime that
//! called `build`; keep it alive until shutdown has finished.
//!
//! The builder is in `builder.rs`; the thread that drives the engine in `driver.rs`.

// `AddError` hands the caller's record back by value (no allocation when `add` refuses one):
// larger than clippy's default for an error, on purpose.
#![allow(clippy::result_large_err)]

mod builder;
mod driver;
mod streams;

pub use builder::ProducerBuilder;

use crate::buffer::BufferGauge;
use crate::config::StreamRef;
use crate::engine::Entry;
use crate::error::{AddError, RecordError, ValidationError};
use crate::hash_key::HashKey;
use crate::limits::MAX_PARTITION_KEY_CHARS;
use crate::record::{PutOutcome, UserRecord};
use crate::stats::Stats;
use crate::stream_settings::{LiveSettings, RecordLimit};
use crossbeam_channel::Sender;
use driver::Msg;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::oneshot;

/// Called with each failed fire-and-forget record (on the engine thread: keep it short).
pub type FailureCallback = Arc<dyn Fn(&UserRecord, &RecordError) + Send + Sync>;

/// The producer was shut down: `flush` or `shutdown` cannot wait for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the producer is shut down")]
pub struct ProducerClosed;

/// A cheap, cloneable handle to one producer engine. `Clone + Send + Sync`.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<Msg>,
    gauge: Arc<BufferGauge>,
    registry: Arc<streams::Registry>,
    closed: AtomicBool,
    /// The stream's settings as the engine last read them.
    live: Arc<LiveSettings>,
    stream: StreamRef,
    /// The record limit `add` applies to records for other streams: the largest a request
    /// can carry.
    any_stream_limit: RecordLimit,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.inner.stream)
            .finish()
    }
}

/// The future of one accepted record: resolves exactly once with its outcome.
#[derive(Debug)]
pub struct PendingRecord {
    rx: oneshot::Receiver<Result<PutOutcome, RecordError>>,
}

impl Future for PendingRecord {
    type Output = Result<PutOutcome, RecordError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            // The engine resolves every record before it stops; a dropped sender means the
            // engine thread itself died.
            r.unwrap_or(Err(RecordError::ShutDown { attempts: vec![] }))
        })
    }
}

impl Producer {
    /// A builder with every setting at its default.
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder::default()
    }

    /// The producer's own stream: where records that name no other ([`UserRecord::to`]) go.
    pub fn stream(&self) -> &StreamRef {
        &self.inner.stream
    }

    /// The record size limit in force for the producer's own stream (data + partition key),
    /// from the stream (followed while the producer runs: `UpdateMaxRecordSize` raises or lowers
    /// it). Another stream's: [`Producer::stream_stats`]'s `record_size_limit`.
    pub fn max_record_size(&self) -> usize {
        self.inner.live.record_limit().bytes
    }

    /// The stream's settings as the producer follows them (record distribution, record size
    /// limit, capacity mode, changes seen): atomics, cheap to read often.
    pub fn stream_settings(&self) -> &LiveSettings {
        &self.inner.live
    }

    /// Validates and hashes a record: everything `add` checks before it takes buffer room.
    /// Returns the hash key and the record's arrival (its TTL runs from here).
    fn check(&self, record: UserRecord) -> Result<(UserRecord, HashKey, Instant), AddError> {
        if self.inner.closed.load(AtomicOrdering::Acquire) {
            return Err(AddError::ShutDown { record });
        }
        // Another stream's settings are not known here: the largest record a request can
        // carry passes, and its engine checks the stream's own limits when it queues it.
        let (limit, auto) = match &record.stream {
            Some(s) if **s != *self.inner.stream.as_str() => (self.inner.any_stream_limit, true),
            _ => (
                self.inner.live.record_limit(),
                self.inner.live.auto_distribution(),
            ),
        };
        match validate(&record, limit, auto, self.inner.gauge.max_bytes) {
            Ok(hash_key) => Ok((record, hash_key, Instant::now())),
            Err(error) => Err(AddError::Invalid { error, record }),
        }
    }

    fn send(&self, entry: Entry) -> Result<(), AddError> {
        // An `add` that waited for room while `shutdown()` ran must not slip in after the
        // engine stopped (it would never be counted, and an untracked record would vanish).
        if self.inner.closed.load(AtomicOrdering::Acquire) {
            self.inner.gauge.release(1, entry.size());
            return Err(AddError::ShutDown {
                record: entry.into_record(),
            });
        }
        self.inner.tx.send(Msg::Record(entry)).map_err(|e| {
            let Msg::Record(entry) = e.into_inner() else {
                unreachable!("sent a record")
            };
            self.inner.gauge.release(1, entry.size());
            AddError::ShutDown {
                record: entry.into_record(),
            }
        })
    }

    /// Adds a record, waiting for buffer room. Returns the record's future.
    pub async fn add(&self, record: UserRecord) -> Result<PendingRecord, AddError> {
        let (record, hash_key, arrival) = self.check(record)?;
        self.inner.gauge.acquire(record.size()).await;
        // The entry is made once there is room: it is not carried across the wait.
        let (tx, rx) = oneshot::channel();
        self.send(Entry::new(record, hash_key, arrival, Some(tx)))?;
        Ok(PendingRecord { rx })
    }

    /// Adds a record if there is buffer room now; otherwise hands it back in
    /// [`AddError::BufferFull`]. Never waits.
    pub fn try_add(&self, record: UserRecord) -> Result<PendingRecord, AddError> {
        let (record, hash_key, arrival) = self.check(record)?;
        if !self.inner.gauge.try_acquire(record.size()) {
            let g = &self.inner.gauge;
            let (withheld_records, withheld_bytes) = g.withheld();
            return Err(AddError::BufferFull {
                buffered_records: g.records_held(),
                buffered_bytes: g.bytes_held(),
                max_records: g.max_records.saturating_sub(withheld_records),
                max_bytes: g.max_bytes.saturating_sub(withheld_bytes),
                record,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.send(Entry::new(record, hash_key, arrival, Some(tx)))?;
        Ok(PendingRecord { rx })
    }

    /// Adds a record from a thread outside an async runtime, blocking it while the buffer is
    /// full. Do not call it from inside an async task (it would block the runtime's thread).
    pub fn add_blocking(&self, record: UserRecord) -> Result<PendingRecord, AddError> {
        futures::executor::block_on(self.add(record))
    }

    /// Fire and forget: adds a record without a per-record future (the fastest path). Waits
    /// for buffer room like `add`. Failures reach metrics, stats and the builder's
    /// `on_untracked_failure` callback.
    pub async fn add_untracked(&self, record: UserRecord) -> Result<(), AddError> {
        let (record, hash_key, arrival) = self.check(record)?;
        self.inner.gauge.acquire(record.size()).await;
        self.send(Entry::new(record, hash_key, arrival, None))
    }

    /// Sends everything buffered now and waits until every record added before this call is
    /// resolved (stored or failed).
    pub async fn flush(&self) -> Result<(), ProducerClosed> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Flush(tx))
            .map_err(|_| ProducerClosed)?;
        rx.await.map_err(|_| ProducerClosed)
    }

    /// Stops intake, sends everything and waits until every record is resolved (or
    /// `shutdown_timeout` passes, after which the rest fail with [`RecordError::ShutDown`]).
    /// Other handles get [`AddError::ShutDown`] from then on.
    pub async fn shutdown(&self) -> Result<(), ProducerClosed> {
        self.inner.closed.store(true, AtomicOrdering::Release);
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Shutdown(tx))
            .map_err(|_| ProducerClosed)?;
        rx.await.map_err(|_| ProducerClosed)
    }

    /// A snapshot of the producer's counters: records, bytes, requests and events of every
    /// stream it served (streams released when idle included); the buffer's room (one bound
    /// for all streams); the settings and per-shard counters of the producer's own stream.
    pub fn stats(&self) -> Stats {
        self.inner.registry.total(self.inner.gauge.room())
    }

    /// One stream's counters and settings (the buffer's room is the producer's), if the
    /// producer serves it now: its own stream always, another from its first record until it
    /// is released after `stream_idle_timeout` without records.
    pub fn stream_stats(&self, stream: &str) -> Option<Stats> {
        self.inner.registry.stream(stream, self.inner.gauge.room())
    }

    /// The streams the producer serves now, its own first.
    pub fn streams(&self) -> Vec<Arc<str>> {
        self.inner.registry.names()
    }
}

/// Checks a record against the Kinesis limits and the stream's settings (`auto`: the record
/// distribution is `AUTO`, where a key may be absent) and returns its hash key.
pub(crate) fn validate(
    record: &UserRecord,
    limit: RecordLimit,
    auto: bool,
    max_buffered_bytes: usize,
) -> Result<HashKey, ValidationError> {
    let key = &record.partition_key;
    if key.is_empty() && !auto {
        return Err(ValidationError::PartitionKeyEmpty);
    }
    // A key of at most 256 bytes has at most 256 characters: count only longer ones.
    if key.len() > MAX_PARTITION_KEY_CHARS {
        let chars = key.chars().count();
        if chars > MAX_PARTITION_KEY_CHARS {
            return Err(ValidationError::PartitionKeyTooLong {
                chars,
                limit: MAX_PARTITION_KEY_CHARS,
            });
        }
    }
    if let Some(e) = too_large(record.data.len(), record.partition_key.len(), limit) {
        return Err(e);
    }
    let size = record.size();
    if size > max_buffered_bytes {
        return Err(ValidationError::LargerThanBuffer {
            size,
            limit: max_buffered_bytes,
        });
    }
    match &record.explicit_hash_key {
        Some(ehk) => {
            HashKey::parse_explicit(ehk).map_err(|reason| ValidationError::ExplicitHashKey {
                value: ehk.chars().take(64).collect(),
                reason,
            })
        }
        None => Ok(HashKey::from_partition_key(key)),
    }
}

/// The error for a record over the limit in force, if it is (`add`, and queued records when the
/// stream lowers its limit).
pub(crate) fn too_large(
    data_bytes: usize,
    key_bytes: usize,
    limit: RecordLimit,
) -> Option<ValidationError> {
    let size = data_bytes + key_bytes;
    (size > limit.bytes).then(|| ValidationError::RecordTooLarge {
        data_bytes,
        // At most 256 characters of at most 4 bytes: checked before.
        key_bytes: key_bytes.min(u16::MAX as usize) as u16,
        size,
        limit: limit.bytes,
        limit_from: limit.from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const API_DEFAULT: RecordLimit = RecordLimit {
        bytes: 1 << 20,
        from: crate::error::RecordLimitFrom::ApiDefault,
    };

    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn producer_is_clone_send_sync() {
        assert_send_sync_clone::<Producer>();
    }

    #[test]
    fn validation_names_field_size_and_limit() {
        let v = |r: &UserRecord| validate(r, API_DEFAULT, false, 64 << 20);
        assert_eq!(
            v(&UserRecord::unkeyed("x")),
            Err(ValidationError::PartitionKeyEmpty)
        );
        assert_eq!(
            validate(&UserRecord::unkeyed("x"), API_DEFAULT, true, 64 << 20),
            Ok(HashKey::from_partition_key("")),
            "an AUTO stream takes records without a key"
        );
        let long = "k".repeat(257);
        let err = v(&UserRecord::new(long, "x")).unwrap_err();
        assert_eq!(
            err,
            ValidationError::PartitionKeyTooLong {
                chars: 257,
                limit: 256
            }
        );
        assert!(err.to_string().contains("257") && err.to_string().contains("256"));
        // 256 four-byte characters: 1,024 bytes but within the character limit.
        assert!(v(&UserRecord::new("😀".repeat(256), "x")).is_ok());
        assert!(
            v(&UserRecord::new("\0\u{1}\t", "")).is_ok(),
            "control characters and empty data are allowed"
        );
        let at_limit = UserRecord::new("k", vec![0u8; (1 << 20) - 1]);
        assert!(v(&at_limit).is_ok());
        let over = UserRecord::new("k", vec![0u8; 1 << 20]);
        let err = v(&over).unwrap_err().to_string();
        assert!(err.contains("1048577") && err.contains("1048576"), "{err}");
        for bad in [
            "-1",
            "340282366920938463463374607431768211456",
            "abc",
            " 1",
            "",
        ] {
            let r = UserRecord::new("k", "x").with_explicit_hash_key(bad);
            let err = v(&r).unwrap_err().to_string();
            assert!(err.contains("explicit_hash_key"), "{err}");
        }
        let r = UserRecord::new("k", "x")
            .with_explicit_hash_key("340282366920938463463374607431768211455");
        assert_eq!(v(&r), Ok(HashKey(u128::MAX)));
        assert!(matches!(
            validate(
                &UserRecord::new("k", vec![0u8; 100]),
                API_DEFAULT,
                false,
                50
            ),
            Err(ValidationError::LargerThanBuffer {
                size: 101,
                limit: 50
            })
        ));
    }
}
