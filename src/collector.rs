//! The collector: packs ready Kinesis records into PutRecords requests.
//!
//! A request holds at most `max_records` records and `max_bytes` bytes (data + partition keys,
//! as the API counts them). A record is never split; one that would overflow the current
//! request closes it and starts the next. The current request is due when it is full, when its
//! oldest user record has waited `max_buffered_time`, or when the caller flushes.
//!
//! A request opened by a record that is already past its buffering deadline (released from a
//! rate-limited backlog, a retry) stays open for half of `max_buffered_time`
//! ([`MIN_WINDOW_DIVISOR`]), or until it holds a quarter of the byte limit; one opened by an
//! aggregate sealed when its own linger ended ([`Collector::push_due`]) is due at once. Without
//! the window, records released one by one from a backlog would each go out in a request of
//! their own. Pure and generic over the record type, so property tests can drive it with plain
//! values.

use std::time::{Duration, Instant};

/// A request opened by an overdue record stays open `max_buffered_time / MIN_WINDOW_DIVISOR`.
///
/// Half of `max_buffered_time`: its records are already later than that, and a stream that gets
/// a small share of a backlog (one of many streams, or one released by its limiter) would
/// otherwise send requests of a few aggregates each. With a tenth, requests of a stream with an
/// eighth of a producer's flow carried 2,100 user records; with a half, about 7,000
/// (BENCHMARKS.md, issue 15).
pub const MIN_WINDOW_DIVISOR: u32 = 2;

/// A request in a backlog's window goes once it holds `max_bytes / WINDOW_FILL_DIVISOR`.
pub const WINDOW_FILL_DIVISOR: usize = 4;

/// One request's worth of records.
#[derive(Debug)]
pub struct Batch<T> {
    /// The records, in the order they were pushed.
    pub records: Vec<T>,
    /// Sum of their sizes.
    pub bytes: usize,
}

/// Packs records into requests within the count and byte limits.
#[derive(Debug)]
pub struct Collector<T> {
    max_records: usize,
    max_bytes: usize,
    records: Vec<T>,
    bytes: usize,
    oldest: Option<Instant>,
    opened: Option<Instant>,
}

impl<T> Collector<T> {
    /// A collector for requests of at most `max_records` records and `max_bytes` bytes.
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Collector {
            max_records,
            max_bytes,
            records: Vec::with_capacity(max_records),
            bytes: 0,
            oldest: None,
            opened: None,
        }
    }

    /// Adds, at `now`, a record of `size` bytes whose oldest user record arrived at `arrived`.
    /// Returns the previous request if this record did not fit in it. A record larger than
    /// `max_bytes` on its own still goes, alone (callers validate sizes before this point).
    pub fn push(
        &mut self,
        record: T,
        size: usize,
        arrived: Instant,
        now: Instant,
    ) -> Option<Batch<T>> {
        self.add(record, size, arrived, Some(now))
    }

    /// Like [`Collector::push`], for a record sealed when its own deadline came (an aggregate
    /// whose linger ended): a request it opens is due by age, at once, and opens no window.
    pub fn push_due(&mut self, record: T, size: usize, arrived: Instant) -> Option<Batch<T>> {
        self.add(record, size, arrived, None)
    }

    fn add(
        &mut self,
        record: T,
        size: usize,
        arrived: Instant,
        opened: Option<Instant>,
    ) -> Option<Batch<T>> {
        let closed = if !self.records.is_empty()
            && (self.records.len() >= self.max_records || self.bytes + size > self.max_bytes)
        {
            Some(self.take())
        } else {
            None
        };
        if self.records.is_empty() {
            self.opened = opened;
        }
        self.records.push(record);
        self.bytes += size;
        self.oldest = Some(self.oldest.map_or(arrived, |o| o.min(arrived)));
        closed
    }

    /// The request byte limit changed (the stream's record size limit did): applies to the
    /// next request; what is collected stays.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
    }

    /// Whether the current request cannot take another record of any size.
    pub fn is_full(&self) -> bool {
        self.records.len() >= self.max_records || self.bytes >= self.max_bytes
    }

    /// Whether no record is waiting.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// When the current request is due by age, if it holds anything: when its oldest record
    /// has waited `max_buffered_time`, or, for a request opened by an overdue record (see
    /// [`Collector::push_due`] for the exception), the window after it opened.
    pub fn due_at(&self, max_buffered_time: Duration) -> Option<Instant> {
        let oldest = self.oldest?;
        let by_age = oldest.checked_add(max_buffered_time).unwrap_or(oldest);
        match self.opened {
            // Opened by a record already overdue (released from a backlog, or a retry): keep
            // it open so that the records released next join it.
            Some(opened) if opened > by_age => {
                Some(opened + max_buffered_time / MIN_WINDOW_DIVISOR)
            }
            _ => Some(by_age),
        }
    }

    /// Takes the current request (possibly empty).
    pub fn take(&mut self) -> Batch<T> {
        self.oldest = None;
        self.opened = None;
        let bytes = std::mem::take(&mut self.bytes);
        let records = std::mem::replace(&mut self.records, Vec::with_capacity(self.max_records));
        Batch { records, bytes }
    }

    /// Takes the current request if it is full, or due at `now`, or `flush` is set.
    pub fn take_ready(
        &mut self,
        now: Instant,
        max_buffered_time: Duration,
        flush: bool,
    ) -> Option<Batch<T>> {
        if self.records.is_empty() {
            return None;
        }
        let due = self.due_at(max_buffered_time).is_some_and(|d| d <= now);
        (flush || due || self.is_full() || self.window_filled(max_buffered_time))
            .then(|| self.take())
    }

    /// Whether a request kept open for a backlog's window already holds a
    /// [`WINDOW_FILL_DIVISOR`]th of the byte limit: large enough that waiting longer saves
    /// little per request, and memory in flight stays small.
    fn window_filled(&self, max_buffered_time: Duration) -> bool {
        let by_age = self.oldest.and_then(|o| o.checked_add(max_buffered_time));
        let in_window = matches!((self.opened, by_age), (Some(o), Some(b)) if o > b);
        in_window && self.bytes >= self.max_bytes / WINDOW_FILL_DIVISOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn closes_on_count_and_bytes() {
        let t = Instant::now();
        let mut c = Collector::new(3, 100);
        assert!(c.push(1, 10, t, t).is_none());
        assert!(c.push(2, 10, t, t).is_none());
        assert!(c.push(3, 10, t, t).is_none());
        assert!(c.is_full());
        let b = c
            .push(4, 10, t, t)
            .expect("fourth closes the first request");
        assert_eq!(b.records, vec![1, 2, 3]);
        assert_eq!(b.bytes, 30);
        let b = c.push(5, 95, t, t).expect("bytes overflow closes");
        assert_eq!(b.records, vec![4]);
        assert!(
            c.push(6, 5, t, t).is_none(),
            "exactly at the byte limit fits"
        );
        assert!(c.is_full());
    }

    #[test]
    fn a_new_byte_limit_applies_to_what_comes_next() {
        let t = Instant::now();
        let mut c = Collector::new(500, 1_000);
        assert!(c.push(1, 600, t, t).is_none());
        c.set_max_bytes(2_000);
        assert!(c.push(2, 600, t, t).is_none(), "1,200 bytes fit in 2,000");
        assert!(!c.is_full());
        c.set_max_bytes(1_000);
        assert!(c.is_full(), "1,200 bytes are over the lowered limit");
        let b = c.push(3, 10, t, t).expect("closes the request");
        assert_eq!(b.records, vec![1, 2]);
    }

    #[test]
    fn counts_what_waits() {
        let t = Instant::now();
        let mut c = Collector::new(3, 100);
        assert!(c.is_empty());
        assert_eq!(c.len(), 0);
        assert!(c.push(1, 10, t, t).is_none());
        assert!(c.push(2, 10, t, t).is_none());
        assert!(!c.is_empty());
        assert_eq!(c.len(), 2);
        assert_eq!(c.take().records, vec![1, 2]);
        assert!(c.is_empty());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn due_by_age_or_flush() {
        let t = Instant::now();
        let mbt = Duration::from_millis(100);
        let mut c = Collector::new(500, 1 << 20);
        assert!(c.take_ready(t, mbt, true).is_none());
        c.push("a", 1, t + Duration::from_millis(5), t);
        c.push("b", 1, t, t);
        assert_eq!(c.due_at(mbt), Some(t + mbt));
        assert!(c
            .take_ready(t + Duration::from_millis(99), mbt, false)
            .is_none());
        assert!(c.take_ready(t + mbt, mbt, false).is_some());
        c.push("c", 1, t, t);
        assert!(c.take_ready(t, mbt, true).is_some());
        assert!(c.is_empty());
    }

    #[test]
    fn a_backlog_is_batched_for_a_minimum_window() {
        let t = Instant::now();
        let mbt = Duration::from_millis(100);
        let mut c = Collector::new(500, 1 << 20);
        let long_ago = t - Duration::from_secs(5);
        c.push(1, 1, long_ago, t);
        assert_eq!(c.due_at(mbt), Some(t + Duration::from_millis(50)));
        assert!(c
            .take_ready(t + Duration::from_millis(49), mbt, false)
            .is_none());
        c.push(2, 1, long_ago, t + Duration::from_millis(30));
        let b = c
            .take_ready(t + Duration::from_millis(50), mbt, false)
            .unwrap();
        assert_eq!(b.records, vec![1, 2]);
    }

    #[test]
    fn a_backlog_window_closes_once_a_quarter_of_the_byte_limit_is_in() {
        let t = Instant::now();
        let mbt = Duration::from_millis(100);
        let mut c = Collector::new(500, 1_000);
        let long_ago = t - Duration::from_secs(5);
        c.push(1, 249, long_ago, t);
        assert!(c.take_ready(t, mbt, false).is_none(), "in its window");
        c.push(2, 1, long_ago, t);
        let b = c.take_ready(t, mbt, false).expect("250 bytes: a quarter");
        assert_eq!(b.records, vec![1, 2]);
        // Outside a backlog's window, size below the limit does not close a request.
        c.push(3, 600, t, t);
        assert!(c.take_ready(t, mbt, false).is_none());
    }

    #[test]
    fn a_record_sealed_at_its_deadline_opens_no_window() {
        let t = Instant::now();
        let mbt = Duration::from_millis(100);
        let mut c = Collector::new(500, 1 << 20);
        // An aggregate sealed when its linger ended, a little after its deadline.
        let arrived = t - mbt - Duration::from_millis(2);
        assert!(c.push_due(1, 1, arrived).is_none());
        assert_eq!(c.due_at(mbt), Some(arrived + mbt));
        // An overdue record released later joins it: the request stays due by age.
        c.push(2, 1, t - Duration::from_secs(1), t);
        let b = c.take_ready(t, mbt, false).unwrap();
        assert_eq!(b.records, vec![1, 2]);
        // The same record released from a backlog opens the window.
        c.push(3, 1, arrived, t);
        assert_eq!(c.due_at(mbt), Some(t + mbt / MIN_WINDOW_DIVISOR));
    }

    proptest! {
        /// No request over the limits, none lost or duplicated, order kept, every record sent
        /// by its deadline when the caller polls at each due time.
        #[test]
        fn packs_within_limits(
            sizes in proptest::collection::vec(0usize..=1_000_000, 0..2_000),
            gaps in proptest::collection::vec(0u64..50, 0..2_000),
            max_records in 1usize..=500,
            max_bytes in 1_000_000usize..=10 * 1024 * 1024,
        ) {
            let mbt = Duration::from_millis(100);
            let t0 = Instant::now();
            let mut now = t0;
            let mut c = Collector::new(max_records, max_bytes);
            let mut out: Vec<(usize, Instant)> = Vec::new();
            let mut arrivals = Vec::new();
            let check = |b: Batch<usize>, at: Instant, out: &mut Vec<(usize, Instant)>| {
                prop_assert!(!b.records.is_empty());
                prop_assert!(b.records.len() <= max_records);
                prop_assert!(b.bytes <= max_bytes);
                prop_assert_eq!(b.bytes, b.records.iter().map(|&i| sizes[i]).sum::<usize>());
                out.extend(b.records.into_iter().map(|i| (i, at)));
                Ok(())
            };
            for (i, &size) in sizes.iter().enumerate() {
                let next = now + Duration::from_millis(gaps.get(i).copied().unwrap_or(1));
                // poll at the due time if it falls before the next arrival
                if let Some(due) = c.due_at(mbt) {
                    if due <= next {
                        let b = c.take_ready(due, mbt, false).unwrap();
                        check(b, due, &mut out)?;
                    }
                }
                now = next;
                arrivals.push(now);
                if let Some(b) = c.push(i, size, now, now) {
                    check(b, now, &mut out)?;
                }
                if let Some(b) = c.take_ready(now, mbt, false) {
                    check(b, now, &mut out)?;
                }
            }
            if let Some(b) = c.take_ready(now, mbt, true) {
                check(b, now, &mut out)?;
            }
            let ids: Vec<usize> = out.iter().map(|(i, _)| *i).collect();
            prop_assert_eq!(ids, (0..sizes.len()).collect::<Vec<_>>());
            for (i, at) in &out {
                prop_assert!(*at <= arrivals[*i] + mbt, "record {} sent late", i);
            }
        }
    }
}
