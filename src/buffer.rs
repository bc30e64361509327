//! The bound on what the producer holds: `max_buffered_records` and `max_buffered_bytes`.
//!
//! Two semaphores: `add` takes one record permit and one byte permit per byte (data + partition
//! key) before it queues a record; the engine gives them back when the record is resolved. So
//! everything held, queued, in flight or waiting for a retry, counts until its future resolves.
//! The engine's ledger counts the same records on its own; `stats()` reports both, so tests
//! can check one against the other.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::sync::Semaphore;

/// Records a caller's `add` takes room for per unit of its task's cooperative budget (Tokio
/// gives a task 128 units between yields). A unit stands for an operation on a resource (Tokio's
/// own channels spend one per message received); an `add` that finds room costs its caller a
/// few hundred nanoseconds, and a unit each made a caller adding in a loop yield every 128
/// records, each yield waking the runtime's other worker to steal the task: 83,000 against
/// 34,000 context switches in a 5 s run, and about 4 % more CPU per record (`bench_e2e cpu`;
/// BENCHMARKS.md, issue 12, ninth session). At a unit per four records the caller yields every
/// 512, about a fifth of a millisecond.
const ADDS_PER_BUDGET_UNIT: u8 = 4;

/// The admission caps of the streams a producer serves, and the room held back from `add` so
/// that what it may use is their sum (capped at the bound). Written by the engine thread only.
#[derive(Debug, Default)]
struct HoldBack {
    /// Each stream's cap (records, bytes), by the id its ledger got from [`BufferGauge::slot`].
    caps: HashMap<u64, (usize, usize)>,
    /// Sum of `caps`.
    total: (usize, usize),
    /// Room held back now, and how much should be.
    withheld: (usize, usize),
    withhold: (usize, usize),
    next_slot: u64,
}

#[derive(Debug)]
pub(crate) struct BufferGauge {
    records: Semaphore,
    bytes: Semaphore,
    pub max_records: usize,
    pub max_bytes: usize,
    /// Room the engine holds back from `add` (the admission cap below the bound), as
    /// (records, bytes); written by the engine only.
    withheld: (AtomicUsize, AtomicUsize),
    hold_back: Mutex<HoldBack>,
    /// Whether less is held back than the caps want (releases then fill it first): without
    /// it, [`BufferGauge::give_back`] gives room back without taking the lock.
    short: AtomicBool,
}

impl BufferGauge {
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        let cap = Semaphore::MAX_PERMITS;
        BufferGauge {
            records: Semaphore::new(max_records.min(cap)),
            bytes: Semaphore::new(max_bytes.min(cap)),
            max_records,
            max_bytes,
            withheld: (AtomicUsize::new(0), AtomicUsize::new(0)),
            hold_back: Mutex::new(HoldBack::default()),
            short: AtomicBool::new(false),
        }
    }

    fn hold_back(&self) -> std::sync::MutexGuard<'_, HoldBack> {
        // Only the engine thread locks it, and nothing panics while it is held.
        self.hold_back.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An id for a stream's admission cap (see [`BufferGauge::set_cap`]).
    pub fn slot(&self) -> u64 {
        let mut h = self.hold_back();
        h.next_slot += 1;
        h.next_slot
    }

    /// Stream `slot`'s admission cap (`None`: the stream is gone). `add` may use the sum of
    /// the streams' caps, at most the bound: room above it is held back (taken from what is
    /// free now, the rest as records give it back); room below it that was held back goes back.
    pub fn set_cap(&self, slot: u64, cap: Option<(usize, usize)>) {
        let mut h = self.hold_back();
        let old = match cap {
            Some(cap) => h.caps.insert(slot, cap),
            None => h.caps.remove(&slot),
        }
        .unwrap_or((0, 0));
        let new = cap.unwrap_or((0, 0));
        h.total = (h.total.0 - old.0 + new.0, h.total.1 - old.1 + new.1);
        let withhold = (
            self.max_records.saturating_sub(h.total.0),
            self.max_bytes.saturating_sub(h.total.1),
        );
        // Unchanged: what is still to withhold comes from releases (free room appears only
        // through them, and they fill the withheld room first).
        if withhold == h.withhold {
            return;
        }
        h.withhold = withhold;
        let excess = (
            h.withheld.0.saturating_sub(withhold.0),
            h.withheld.1.saturating_sub(withhold.1),
        );
        if excess != (0, 0) {
            // Give back before no longer counting it (see `BufferGauge::room`).
            self.release(excess.0, excess.1);
            h.withheld = (h.withheld.0 - excess.0, h.withheld.1 - excess.1);
            self.set_withheld(h.withheld.0, h.withheld.1);
        }
        let taken = self.take_free(
            withhold.0.saturating_sub(h.withheld.0),
            withhold.1.saturating_sub(h.withheld.1),
        );
        if taken != (0, 0) {
            h.withheld = (h.withheld.0 + taken.0, h.withheld.1 + taken.1);
            self.set_withheld(h.withheld.0, h.withheld.1);
        }
        self.short.store(h.withheld != withhold, Ordering::Relaxed);
    }

    /// Records resolved give their room back: what the caps want held back is kept, the rest
    /// goes back to `add`.
    pub fn give_back(&self, records: usize, bytes: usize) {
        // Only the engine thread calls this and `set_cap`: the flag is current.
        if !self.short.load(Ordering::Relaxed) {
            self.release(records, bytes);
            return;
        }
        let mut h = self.hold_back();
        let keep = (
            records.min(h.withhold.0.saturating_sub(h.withheld.0)),
            bytes.min(h.withhold.1.saturating_sub(h.withheld.1)),
        );
        if keep != (0, 0) {
            h.withheld = (h.withheld.0 + keep.0, h.withheld.1 + keep.1);
            self.set_withheld(h.withheld.0, h.withheld.1);
            self.short
                .store(h.withheld != h.withhold, Ordering::Relaxed);
        }
        self.release(records - keep.0, bytes - keep.1);
    }

    /// Takes up to `records` and `bytes` of the room free now, without waiting; returns what
    /// it took. The caller holds it back from `add` until it gives it back with
    /// [`BufferGauge::release`].
    fn take_free(&self, records: usize, bytes: usize) -> (usize, usize) {
        let take = |sem: &Semaphore, want: usize| {
            let n = want.min(sem.available_permits()).min(u32::MAX as usize);
            match sem.try_acquire_many(n as u32) {
                Ok(p) if n > 0 => {
                    p.forget();
                    n
                }
                _ => 0,
            }
        };
        (take(&self.records, records), take(&self.bytes, bytes))
    }

    /// Records and bytes the engine holds back now.
    pub fn withheld(&self) -> (usize, usize) {
        (
            self.withheld.0.load(Ordering::Acquire),
            self.withheld.1.load(Ordering::Acquire),
        )
    }

    /// Publishes what the engine holds back (after taking room, before giving it back).
    fn set_withheld(&self, records: usize, bytes: usize) {
        self.withheld.0.store(records, Ordering::Release);
        self.withheld.1.store(bytes, Ordering::Release);
    }

    /// Free room and withheld room read together: `(records free, bytes free, records
    /// withheld, bytes withheld)`. The engine takes room before it counts it withheld and gives
    /// it back before it stops counting it, so a read between two equal reads of the withheld
    /// room is consistent.
    pub fn room(&self) -> (usize, usize, usize, usize) {
        loop {
            let w = self.withheld();
            let free = (self.records_free(), self.bytes_free());
            if self.withheld() == w {
                return (free.0, free.1, w.0, w.1);
            }
        }
    }

    /// Waits for room for one record of `size` bytes (`size <= max_bytes`, checked by the caller).
    pub async fn acquire(&self, size: usize) {
        // Room now (as nearly always unless the buffer is full) is taken without setting up a
        // wait; the task's cooperative budget is still spent first, a unit every
        // [`ADDS_PER_BUDGET_UNIT`] calls on this thread, so a caller adding in a loop yields to
        // the runtime now and then. (Spent before taking the room: a future dropped while it
        // yields has taken nothing.)
        thread_local!(static CALLS: Cell<u8> = const { Cell::new(0) });
        let n = CALLS.get().wrapping_add(1);
        CALLS.set(n);
        if n.is_multiple_of(ADDS_PER_BUDGET_UNIT) {
            tokio::task::coop::consume_budget().await;
        }
        if self.try_acquire(size) {
            return;
        }
        // Neither semaphore is ever closed, so acquire cannot fail. The record permit is kept
        // as a guard until the bytes are in hand: if the caller's future is dropped while it
        // waits for bytes, the guard gives the record room back (cancellation safety).
        let record = self.records.acquire().await;
        let bytes = self.bytes.acquire_many(size as u32).await;
        if let (Ok(record), Ok(bytes)) = (record, bytes) {
            record.forget();
            bytes.forget();
        }
    }

    /// Takes room for one record of `size` bytes if there is some now.
    pub fn try_acquire(&self, size: usize) -> bool {
        let Ok(record) = self.records.try_acquire() else {
            return false;
        };
        match self.bytes.try_acquire_many(size as u32) {
            Ok(bytes) => {
                record.forget();
                bytes.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back room for `records` records totalling `bytes`.
    pub fn release(&self, records: usize, bytes: usize) {
        self.records.add_permits(records);
        self.bytes.add_permits(bytes);
    }

    /// Records held now (room taken and not withheld).
    pub fn records_held(&self) -> usize {
        self.max_records
            .saturating_sub(self.records.available_permits())
            .saturating_sub(self.withheld().0)
    }

    /// Bytes held now (room taken and not withheld).
    pub fn bytes_held(&self) -> usize {
        self.max_bytes
            .saturating_sub(self.bytes.available_permits())
            .saturating_sub(self.withheld().1)
    }

    /// Whether the buffer has no room to speak of: none for a record, or under a 256th of the
    /// byte bound (an `add` of any but a small record waits).
    pub fn is_full(&self) -> bool {
        self.records_free() == 0 || self.bytes_free() < self.max_bytes / 256
    }

    /// Room for records now, as the semaphore has it (above `max_records` after a double
    /// release).
    pub fn records_free(&self) -> usize {
        self.records.available_permits()
    }

    /// Room for bytes now, as the semaphore has it.
    pub fn bytes_free(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_acquire_respects_both_bounds() {
        let g = BufferGauge::new(2, 100);
        assert!(g.try_acquire(60));
        assert!(!g.try_acquire(60), "bytes full");
        assert_eq!(
            g.records_held(),
            1,
            "a refused try gives the record permit back"
        );
        assert!(g.try_acquire(40));
        assert!(!g.try_acquire(0), "records full");
        g.release(2, 100);
        assert_eq!((g.records_held(), g.bytes_held()), (0, 0));
    }

    #[test]
    fn take_free_takes_only_what_is_free_and_room_reports_it_withheld() {
        let g = BufferGauge::new(10, 1_000);
        assert!(g.try_acquire(300));
        assert_eq!(g.room(), (9, 700, 0, 0));
        // Asks for more than is free: gets what is free.
        assert_eq!(g.take_free(20, 500), (9, 500));
        g.set_withheld(9, 500);
        assert_eq!(g.room(), (0, 200, 9, 500));
        assert_eq!(
            (g.records_held(), g.bytes_held()),
            (1, 300),
            "withheld room is not held by records"
        );
        assert!(!g.try_acquire(1), "no record room left for add");
        assert_eq!(g.take_free(0, 0), (0, 0));
        assert_eq!(g.take_free(5, 0), (0, 0), "nothing free to take");
        // Giving it back: free first, then no longer withheld.
        g.release(9, 500);
        g.set_withheld(0, 0);
        assert_eq!(g.room(), (9, 700, 0, 0));
    }

    #[test]
    fn the_caps_of_several_streams_add_up_to_what_add_may_use() {
        let g = BufferGauge::new(100, 1_000);
        let (a, b) = (g.slot(), g.slot());
        g.set_cap(a, Some((30, 300)));
        assert_eq!(g.withheld(), (70, 700), "one stream: its cap");
        g.set_cap(b, Some((50, 500)));
        assert_eq!(g.withheld(), (20, 200), "two: the sum");
        g.set_cap(b, Some((90, 900)));
        assert_eq!(g.withheld(), (0, 0), "never above the bound");
        g.set_cap(b, None);
        assert_eq!(
            g.withheld(),
            (70, 700),
            "a stream released: its cap no longer counts"
        );
        // Room held by records comes back into the withheld room first once freed.
        g.set_cap(a, Some((0, 0)));
        assert_eq!(g.withheld(), (100, 1_000));
        g.set_cap(a, Some((100, 1_000)));
        assert!(g.try_acquire(10));
        g.set_cap(a, Some((95, 950)));
        assert_eq!(g.withheld(), (5, 50), "taken from the free room");
        g.set_cap(a, Some((90, 900)));
        g.give_back(1, 10);
        assert_eq!(g.withheld(), (10, 100));
        assert_eq!(g.room(), (90, 900, 10, 100));
    }

    #[tokio::test]
    async fn acquire_waits_for_release() {
        let g = std::sync::Arc::new(BufferGauge::new(1, 10));
        g.acquire(10).await;
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.acquire(5).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        g.release(1, 10);
        waiter.await.unwrap();
        assert_eq!(g.bytes_held(), 5);
    }

    /// Room taken without a wait still spends the task's cooperative budget, a unit every
    /// [`ADDS_PER_BUDGET_UNIT`] records: a caller adding in a loop lets the runtime's other
    /// tasks run long before its buffer fills, after more records than the budget's 128 units.
    #[tokio::test(flavor = "current_thread")]
    async fn acquiring_with_room_yields_to_other_tasks_now_and_then() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let g = BufferGauge::new(100_000, 100_000);
        let ran = std::sync::Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        tokio::spawn(async move { r.store(true, Ordering::SeqCst) });
        let mut taken = 0;
        while !ran.load(Ordering::SeqCst) && taken < 10_000 {
            g.acquire(1).await;
            taken += 1;
        }
        // (A unit per record yields after 129 records; a unit per four after about 512.)
        assert!(
            ran.load(Ordering::SeqCst) && taken > 256 && taken < 1_000,
            "the other task ran after {taken} records"
        );
        assert_eq!(g.records_held(), taken);
    }
}
