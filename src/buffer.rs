//! The bound on what the producer holds: `max_buffered_records` and `max_buffered_bytes`.
//!
//! Two semaphores: `add` takes one record permit and one byte permit per byte (data + partition
//! key) before it queues a record; the engine gives them back when the record is resolved. So
//! everything held, queued, in flight or waiting for a retry, counts until its future resolves.
//! The engine's ledger counts the same records on its own; `stats()` reports both, so tests
//! can check one against the other.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

#[derive(Debug)]
pub(crate) struct BufferGauge {
    records: Semaphore,
    bytes: Semaphore,
    pub max_records: usize,
    pub max_bytes: usize,
    /// Room the engine holds back from `add` (the admission cap below the bound), as
    /// (records, bytes); written by the engine only.
    withheld: (AtomicUsize, AtomicUsize),
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
        }
    }

    /// Takes up to `records` and `bytes` of the room free now, without waiting; returns what
    /// it took. The caller holds it back from `add` until it gives it back with
    /// [`BufferGauge::release`].
    pub fn take_free(&self, records: usize, bytes: usize) -> (usize, usize) {
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
    pub fn set_withheld(&self, records: usize, bytes: usize) {
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
}
