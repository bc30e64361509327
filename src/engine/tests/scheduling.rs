//! No per-shard scan: every reason a shard wakes.

use super::*;

// ---- no per-shard scan: every reason a shard wakes ----------------------------------------

/// Drains during `f`.
fn drains(h: &mut Harness, f: impl FnOnce(&mut Harness)) -> u64 {
    let before = h.engine.drains;
    f(h);
    h.engine.drains - before
}

#[test]
fn idle_shards_cost_nothing_per_poll() {
    let n = 10_000;
    let mut h = Harness::new(n, agg_config());
    assert_eq!(drains(&mut h, |h| assert!(h.poll().is_empty())), 0);
    assert_eq!(
        h.engine.shards.next_timer(),
        None,
        "nothing held, no shard timer"
    );
    let mut rx = h.add_to(4321, n, "k", "x");
    assert_eq!(drains(&mut h, |h| assert!(h.poll().is_empty())), 1);
    // the linger deadline is the only timer; polls before it visit no shard
    assert_eq!(
        h.engine.shards.next_timer(),
        Some(h.now + h.engine.s.config.max_buffered_time)
    );
    h.advance(50 * MS);
    assert_eq!(drains(&mut h, |h| assert!(h.poll().is_empty())), 0);
    // more records for the lingering shard do not visit it again
    let _more: Vec<Rx> = (0..10).map(|_| h.add_to(4321, n, "k", "y")).collect();
    assert_eq!(drains(&mut h, |h| assert!(h.poll().is_empty())), 0);
    h.advance(50 * MS);
    let sent = drains(&mut h, |h| {
        let sent = h.poll();
        assert_eq!(sent.len(), 1);
        let (id, req) = &sent[0];
        assert_eq!(req.records.len(), 1, "one aggregate");
        h.ok_all(*id, req, n);
    });
    assert_eq!(sent, 1);
    assert!(outcome(&mut rx).is_ok());
}

#[test]
fn a_full_aggregate_wakes_its_shard_before_the_linger() {
    let cfg = ProducerConfig {
        aggregation_max_count: 4,
        ..agg_config()
    };
    let mut h = Harness::new(64, cfg);
    let _rx: Vec<Rx> = (0..3).map(|_| h.add_to(7, 64, "k", "x")).collect();
    assert!(h.poll().is_empty());
    assert!(h.engine.collector.is_empty());
    let _last = h.add_to(7, 64, "k", "x");
    assert_eq!(drains(&mut h, |h| drop(h.poll())), 1);
    assert_eq!(h.engine.collector.len(), 1, "full: sealed at once");
}

#[test]
fn limiter_deadline_wakes_the_shard() {
    let mut h = Harness::new(100, config());
    let _first: Vec<Rx> = (0..1200).map(|_| h.add_to(3, 100, "k", "x")).collect();
    h.advance(100 * MS);
    let sent: usize = h.poll().iter().map(|(_, r)| r.records.len()).sum();
    assert_eq!(sent, 1000, "one second of budget");
    let due = h.engine.next_deadline().expect("limiter deadline");
    assert!(due > h.now && due <= h.now + 10 * MS, "{:?}", due - h.now);
    h.now = due;
    assert_eq!(
        drains(&mut h, |h| drop(h.poll())),
        1,
        "only the limited shard"
    );
    h.advance(200 * MS);
    let sent: usize = h
        .poll_after_window()
        .iter()
        .map(|(_, r)| r.records.len())
        .sum();
    assert!(sent >= 150, "{sent}");
}

#[test]
fn freed_in_flight_capacity_wakes_blocked_shards_in_turn() {
    let cfg = ProducerConfig {
        max_in_flight: 1,
        max_records_per_request: 1,
        rate_limiting: false,
        ..config()
    };
    let n = 1000;
    let mut h = Harness::new(n, cfg);
    let mut rxs: Vec<Rx> = (0..3).map(|s| h.add_to(s * 300, n, "k", "x")).collect();
    h.advance(100 * MS);
    let mut sent = h.poll();
    assert_eq!(sent.len(), 1);
    for _ in 0..2 {
        assert!(h.poll().is_empty(), "saturated");
        let (id, req) = sent.pop().unwrap();
        h.ok_all(id, &req, n);
        assert!(
            h.engine.next_deadline().is_some_and(|d| d <= h.now),
            "room freed: poll at once"
        );
        sent = h.poll_after_window();
        assert_eq!(sent.len(), 1);
    }
    let (id, req) = sent.pop().unwrap();
    h.ok_all(id, &req, n);
    for rx in &mut rxs {
        assert!(outcome(rx).is_ok());
    }
}

#[test]
fn backoff_and_retry_wake_the_shard() {
    let mut h = Harness::new(500, config());
    let mut rx = h.add_to(250, 500, "k", "x");
    h.advance(100 * MS);
    let (id, _) = h.poll().pop().unwrap();
    h.engine
        .on_response(id, Ok(vec![err_entry("InternalFailure")]), h.now);
    // the retry waits for the shard's back-off, and a timer brings it back
    assert!(h.poll().is_empty());
    let due = h.engine.next_deadline().expect("back-off deadline");
    assert!(due > h.now);
    h.now = due;
    let (id, req) = h.poll_after_window().pop().expect("retried");
    h.ok_all(id, &req, 500);
    assert_eq!(outcome(&mut rx).unwrap().attempts.len(), 2);
}

#[test]
fn ttl_expires_records_of_a_shard_blocked_by_the_in_flight_limit() {
    let cfg = ProducerConfig {
        max_in_flight: 1,
        max_records_per_request: 1,
        rate_limiting: false,
        record_ttl: Duration::from_secs(1),
        ..config()
    };
    let mut h = Harness::new(8, cfg);
    let t0 = h.now;
    let mut rxs = [h.add_to(0, 8, "a", "1"), h.add_to(5, 8, "b", "1")];
    h.advance(100 * MS);
    assert_eq!(h.poll().len(), 1);
    assert!(h.poll().is_empty());
    let ttl = t0 + Duration::from_secs(1);
    assert_eq!(
        h.engine.shards.next_timer(),
        Some(ttl),
        "the blocked record's TTL"
    );
    assert!(h.engine.next_deadline().is_some_and(|d| d <= ttl));
    h.now = ttl;
    assert_eq!(drains(&mut h, |h| drop(h.poll())), 1);
    let expired = rxs.iter_mut().map(|rx| !pending(rx)).filter(|e| *e).count();
    assert_eq!(
        expired, 1,
        "the record blocked by the in-flight limit expired"
    );
}

#[test]
fn records_overdue_on_arrival_share_an_aggregate_for_a_short_window() {
    let mut h = Harness::new(4, agg_config());
    h.advance(Duration::from_secs(2));
    let window = h.engine.s.config.max_buffered_time;
    // added a second ago (a backlog in the ingest channel), reaching the engine now
    let late = |h: &mut Harness, data: &str| {
        let hash = even_range(2, 4).0;
        let record =
            UserRecord::new("k", data.to_string()).with_explicit_hash_key(hash.to_string());
        assert!(h.gauge.try_acquire(record.size()));
        let arrival = h.now - Duration::from_secs(1);
        let entry = Entry::new(record, HashKey(hash), arrival, None);
        h.engine.on_record(entry, h.now);
    };
    late(&mut h, "1");
    assert!(
        h.poll().is_empty(),
        "lingers a window, not max_buffered_time"
    );
    assert_eq!(h.engine.shards.next_timer(), Some(h.now + window));
    h.advance(window / 2);
    late(&mut h, "2");
    late(&mut h, "3");
    assert!(h.poll().is_empty());
    h.advance(window / 2);
    let sent = h.poll_after_window();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.records.len(), 1, "one aggregate of the three");
    assert!(sent[0].1.records[0].data.len() > 3 * 10);
}

#[test]
fn a_drained_queue_gives_its_memory_back() {
    let mut h = Harness::new(1, config());
    let entry = |h: &Harness| Entry::new(UserRecord::new("k", "d"), HashKey(0), h.now, None);
    let fill = |h: &mut Harness, n: usize, keep: usize| {
        let entries: Vec<Entry> = (0..n).map(|_| entry(h)).collect();
        let st = h.engine.shards.state_mut(0);
        for e in entries {
            st.push_back(e);
        }
        while st.queue.len() > keep {
            st.pop_front();
        }
        st.shrink_idle();
        st.queue.capacity()
    };
    assert_eq!(fill(&mut h, 1_000, 0), 0, "empty: all given back");
    let small = super::super::shard_state::IDLE_QUEUE_CAPACITY;
    assert_eq!(
        fill(&mut h, small, 0),
        small,
        "a small queue keeps its room"
    );
    assert_eq!(fill(&mut h, small + 1, 0), 0, "one slot more: given back");
    let quarter = fill(&mut h, 1_000, 256);
    assert!(quarter >= 1_000, "a quarter in use is kept: {quarter}");
    let _ = h.engine.shards.state_mut(0).queue.drain(..);
    let eighth = fill(&mut h, 1_000, 128);
    assert!(
        (512..1_000).contains(&eighth),
        "under a quarter: halved, {eighth}"
    );
}

/// An aggregate whose records fill at least three quarters of its queue's buffer takes the
/// buffer itself (its records are not copied), and the records it leaves behind move to a new
/// buffer of the same size; one that takes less copies its records out and the queue keeps its
/// buffer. Either way every record is taken or left once, in order.
#[test]
fn an_aggregate_takes_the_buffer_of_the_queue_it_drains() {
    let cfg = ProducerConfig {
        aggregation_max_size: 2_000,
        ..agg_config()
    };
    let mut h = Harness::new(1, cfg);
    let build = |h: &mut Harness, n: usize, room: usize| {
        let now = h.now;
        let record = |i| UserRecord::new(format!("k{i}"), "x".repeat(90));
        let engine = &mut h.engine;
        let st = engine.shards.state_mut(0);
        st.queue = VecDeque::with_capacity(room);
        for i in 0..n {
            st.push_back(Entry::new(record(i), HashKey(0), now, None));
        }
        let buffer = st.queue.as_slices().0.as_ptr();
        let scope = crate::config::AggregationScope::Shard;
        let record = st.build_record(&mut engine.aggregator, true, scope);
        fn keys<'a>(es: impl Iterator<Item = &'a Entry>) -> Vec<String> {
            es.map(|e| e.key.to_string()).collect()
        }
        let taken = keys(record.entries.iter());
        let left = keys(st.queue.iter());
        let all: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        assert_eq!(
            [taken.clone(), left].concat(),
            all,
            "every record once, in order"
        );
        assert_eq!(
            st.queued_bytes,
            st.queue.iter().map(Entry::size).sum::<usize>()
        );
        let moved = record.entries.as_ptr() == buffer;
        let kept = st.queue.capacity();
        let _ = st.drain_held().count();
        (taken.len(), moved, kept)
    };
    assert_eq!(
        build(&mut h, 12, 16),
        (12, true, 0),
        "12 of 16 slots: moved"
    );
    let (taken, moved, kept) = build(&mut h, 11, 16);
    assert_eq!((taken, moved), (11, false), "11 of 16 slots: copied");
    assert!(kept >= 16, "the queue keeps its buffer: {kept}");
    let (fit, moved, _) = build(&mut h, 30, 32);
    assert!(fit < 30 && !moved, "{fit} of 30 taken, 32 slots: copied");
    // As many as fit, two left behind, in a buffer of their number.
    let (taken, moved, kept) = build(&mut h, fit + 2, fit + 2);
    assert_eq!(
        (taken, moved),
        (fit, true),
        "{fit} of {} slots: moved",
        fit + 2
    );
    assert_eq!(
        kept,
        fit + 2,
        "the records left behind get a buffer of the same size"
    );
}

#[test]
fn a_queue_lingers_from_its_front_record_unless_that_was_overdue_on_arrival() {
    let mut h = Harness::new(1, agg_config());
    let t0 = h.now;
    let mbt = h.engine.s.config.max_buffered_time;
    let st = h.engine.shards.state_mut(0);
    let e = |arrival| Entry::new(UserRecord::new("k", "d"), HashKey(0), arrival, None);
    // A retry from t0 at the front of a queue opened later, within its linger: its own due.
    st.push_back(e(t0));
    st.opened = Some(t0 + mbt / 2);
    assert_eq!(st.linger_due(mbt), Some(t0 + mbt));
    // Opened exactly at its due: still its own due.
    st.opened = Some(t0 + mbt);
    assert_eq!(st.linger_due(mbt), Some(t0 + mbt));
    // Opened after it was overdue: a linger from the opening.
    st.opened = Some(t0 + 3 * mbt);
    assert_eq!(st.linger_due(mbt), Some(t0 + 4 * mbt));
    // Bytes queued follow pushes and pops.
    let size = e(t0).size();
    st.push_back(e(t0));
    st.push_front(e(t0));
    assert_eq!(st.queued_bytes, 3 * size);
    st.pop_front();
    assert_eq!(st.queued_bytes, 2 * size);
}

#[test]
fn ready_shards_are_drained_round_robin_from_the_start_given() {
    let mut h = Harness::new(4, config());
    for i in [3, 0, 2, 1] {
        h.engine.shards.mark_ready(i);
    }
    h.engine.shards.rotate_ready(1);
    let order: Vec<usize> = std::iter::from_fn(|| h.engine.shards.next_to_drain(true)).collect();
    assert_eq!(order, [1, 2, 3, 0]);
}

#[test]
fn a_flush_sends_a_lingering_aggregate_at_once() {
    let mut h = Harness::new(1, agg_config());
    h.add_to(0, 1, "k", "a");
    h.add_to(0, 1, "k", "b");
    assert!(h.poll().is_empty(), "lingering");
    let (tx, _rx) = oneshot::channel();
    h.engine.on_flush(tx);
    let sent = h.poll();
    assert_eq!(sent.len(), 1, "the flush does not wait for the linger");
    // The request's size is the aggregate's: data and outer partition key.
    let r = &sent[0].1.records[0];
    assert_eq!(
        h.engine.in_flight[&sent[0].0].bytes,
        r.data.len() + r.partition_key.len()
    );
}

#[test]
fn the_timer_heap_keeps_the_earliest_wake_per_shard_and_drops_stale_ones() {
    let mut h = Harness::new(2, config());
    let t = h.now;
    let ms = |n| t + Duration::from_millis(n);
    let shards = &mut h.engine.shards;
    assert!(!shards.has_ready());
    shards.schedule(0, ms(10));
    shards.schedule(0, ms(20));
    assert_eq!(
        shards.next_timer(),
        Some(ms(10)),
        "a later wake does not replace it"
    );
    shards.fire_timers(ms(10));
    assert!(shards.has_ready(), "due exactly now: fired");
    assert_eq!(shards.next_to_drain(true), Some(0));
    // An earlier wake replaces a pending one, which goes stale and is dropped unfired.
    shards.schedule(1, ms(50));
    shards.schedule(1, ms(30));
    shards.fire_timers(ms(30));
    assert_eq!(shards.next_to_drain(true), Some(1));
    assert_eq!(shards.next_timer(), None, "the stale entry is gone");
}

#[test]
fn a_burst_of_timers_fires_in_order_and_gives_its_room_back() {
    use crate::engine::shard_state::IDLE_QUEUE_CAPACITY;
    let n = 4 * IDLE_QUEUE_CAPACITY as u32;
    let mut h = Harness::new(n, config());
    let t = h.now;
    let ms = |k: u64| t + Duration::from_millis(k);
    let shards = &mut h.engine.shards;
    for i in 0..n as usize {
        shards.schedule(i, ms(10 + i as u64));
    }
    shards.fire_timers(ms(10));
    assert_eq!(shards.next_to_drain(true), Some(0));
    assert!(!shards.has_ready());
    assert_eq!(
        shards.next_timer(),
        Some(ms(11)),
        "the others still pending"
    );
    shards.fire_timers(ms(10 + n as u64));
    let mut fired = 0;
    while shards.next_to_drain(true).is_some() {
        fired += 1;
    }
    assert_eq!(fired, n - 1);
    assert_eq!(shards.next_timer(), None);
    assert!(
        shards.timer_capacity() <= IDLE_QUEUE_CAPACITY,
        "no high-water mark kept: {}",
        shards.timer_capacity()
    );
}

#[test]
fn a_retired_range_passes_its_count_to_every_shard_it_overlaps_bounds_included() {
    let cfg = ProducerConfig {
        ordering: Ordering::PerShard,
        ..config()
    };
    let mut h = Harness::new(1, cfg);
    let info = |id: u32, start: u128, end: u128| ShardInfo {
        id: format!("shardId-{id:012}").into(),
        start,
        end,
        open: true,
    };
    h.engine.on_shard_map(
        Ok(vec![
            info(1, 0, 98),
            info(2, 99, 150),
            info(3, 151, u128::MAX),
        ]),
        h.now,
    );
    let _rx = h.add(
        UserRecord::new("k", "d").with_explicit_hash_key("120"),
        HashKey(120),
    );
    h.advance(Duration::from_millis(100));
    assert_eq!(h.poll_after_window().len(), 1);
    // Shard 2 [99, 150] is retired: [0, 99] and [100, 199] hold parts of its range.
    h.engine.on_shard_map(
        Ok(vec![
            info(4, 0, 99),
            info(5, 100, 199),
            info(6, 200, u128::MAX),
        ]),
        h.now,
    );
    let counts: Vec<usize> = h
        .engine
        .shards
        .iter()
        .map(|s| s.outstanding.get())
        .collect();
    assert_eq!(counts, [1, 1, 0]);
}

#[test]
fn a_shard_that_sent_all_it_held_is_not_queued_for_in_flight_room() {
    // One record per request, one request in flight: the record that fills the request also
    // saturates the limit, in the middle of the shard's drain.
    let cfg = ProducerConfig {
        max_in_flight: 1,
        max_records_per_request: 1,
        rate_limiting: false,
        ..config()
    };
    let mut h = Harness::new(2, cfg);
    h.add_to(0, 2, "k", "a");
    h.advance(100 * MS);
    assert_eq!(h.poll().len(), 1, "one request, the limit reached");
    assert!(
        !h.engine.shards.has_blocked(),
        "nothing left to send: no drain when room frees"
    );
    // A shard left holding a record when the limit is reached waits for room.
    h.add_to(1, 2, "k", "b");
    h.add_to(1, 2, "k", "c");
    h.advance(100 * MS);
    assert!(h.poll().is_empty(), "saturated");
    assert!(h.engine.shards.has_blocked());
}
