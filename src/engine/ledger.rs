//! The ledger of outstanding work: the one place that counts what the engine holds.
//!
//! Every user record the engine accepts is admitted here (it gets its sequence number) and
//! released here when its result is delivered; the records and bytes held in between are the
//! engine's own count, kept apart from the buffer's semaphores (which only `add` and this ledger
//! touch), so the two can be compared: a double release or a lost one shows as a disagreement.
//! The ledger also counts each shard's Kinesis records between the collector and their
//! response ([`Outstanding`]), which per-shard ordering waits on, answers `flush()` waiters, and
//! holds back buffer room from `add` when the admission cap is below the configured bound:
//! it takes free room, or keeps room that records give back, until it holds back enough.

use super::entry::Entry;
use crate::buffer::BufferGauge;
use crate::stats::SharedStats;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Kinesis records of one shard in the collector, the outbox or in flight. Only the ledger
/// changes it.
#[derive(Debug, Default)]
pub(super) struct Outstanding(usize);

impl Outstanding {
    /// How many.
    pub fn get(&self) -> usize {
        self.0
    }

    /// A retired shard whose range overlaps this one's still had `n` outstanding: they count
    /// here until they come back (see [`super::shard::Shards::install`]).
    pub fn inherit(&mut self, n: usize) {
        self.0 += n;
    }
}

struct FlushWaiter {
    barrier: u64,
    remaining: usize,
    reply: oneshot::Sender<()>,
}

pub(super) struct Ledger {
    next_seq: u64,
    records: usize,
    bytes: usize,
    flushes: Vec<FlushWaiter>,
    /// This stream's admission cap's id in the gauge.
    slot: u64,
    gauge: Arc<BufferGauge>,
    /// Where `records`/`bytes` are published for `stats()` (the engine is the only writer).
    shared: Arc<SharedStats>,
}

impl Ledger {
    pub fn new(gauge: Arc<BufferGauge>, shared: Arc<SharedStats>) -> Self {
        Ledger {
            next_seq: 0,
            records: 0,
            bytes: 0,
            flushes: Vec::new(),
            slot: gauge.slot(),
            gauge,
            shared,
        }
    }

    /// Whether the producer's buffer (shared by its streams) has no room left.
    pub fn buffer_full(&self) -> bool {
        self.gauge.is_full()
    }

    /// User records held (queued, in flight or awaiting retry).
    pub fn held(&self) -> usize {
        self.records
    }

    /// Bytes (data + partition keys) held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A record enters: it gets the next sequence number and counts as held.
    pub fn admit(&mut self, e: &mut Entry) {
        self.next_seq += 1;
        e.seq = self.next_seq;
        self.records += 1;
        self.bytes += e.size();
        self.publish();
    }

    /// Records leave (their results are about to be delivered): they stop counting and their
    /// buffer room goes back to `add`, once for the lot. Returns how many records and bytes.
    pub fn release<'a>(&mut self, entries: impl IntoIterator<Item = &'a Entry>) -> (usize, usize) {
        let (mut n, mut bytes) = (0, 0);
        for e in entries {
            n += 1;
            bytes += e.size();
        }
        self.records -= n;
        self.bytes -= bytes;
        self.gauge.give_back(n, bytes);
        self.publish();
        (n, bytes)
    }

    /// The admission cap in force: the room `add` may use for this stream's records (the
    /// gauge adds up the caps of every stream the producer serves).
    pub fn set_cap(&mut self, cap: (usize, usize)) {
        self.gauge.set_cap(self.slot, Some(cap));
    }

    /// The stream is released: its cap no longer counts.
    pub fn drop_cap(&mut self) {
        self.gauge.set_cap(self.slot, None);
    }

    /// A released record's result was delivered: flush waiters that wait for it are one record
    /// closer.
    pub fn delivered(&mut self, seq: u64) {
        if self.flushes.is_empty() {
            return;
        }
        for w in &mut self.flushes {
            if seq <= w.barrier {
                w.remaining -= 1;
            }
        }
        let mut i = 0;
        while i < self.flushes.len() {
            if self.flushes[i].remaining == 0 {
                let _ = self.flushes.swap_remove(i).reply.send(());
            } else {
                i += 1;
            }
        }
    }

    /// `flush()`: `reply` fires once every record admitted so far is delivered.
    pub fn flush(&mut self, reply: oneshot::Sender<()>) {
        if self.records == 0 {
            let _ = reply.send(());
        } else {
            self.flushes.push(FlushWaiter {
                barrier: self.next_seq,
                remaining: self.records,
                reply,
            });
        }
    }

    /// Whether a flush is waiting.
    pub fn flushing(&self) -> bool {
        !self.flushes.is_empty()
    }

    /// A Kinesis record of a shard left its queue for the collector.
    pub fn sent(&mut self, o: &mut Outstanding) {
        o.0 += 1;
    }

    /// A Kinesis record of a shard came back (answered, taken back, or failed at shutdown).
    pub fn returned(&mut self, o: &mut Outstanding) {
        debug_assert!(o.0 > 0, "a shard's outstanding count went below zero");
        o.0 = o.0.saturating_sub(1);
    }

    fn publish(&self) {
        self.shared
            .records_pending
            .store(self.records as u64, Relaxed);
        self.shared.bytes_pending.store(self.bytes as u64, Relaxed);
    }
}
