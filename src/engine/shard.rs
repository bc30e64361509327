//! Per-shard state and the set of shards the map predicts.
//!
//! Each open shard has its queue of user records (retries at the front, in order), at most one
//! sealed Kinesis record waiting for its limiter, its token buckets, its back-off and its
//! outstanding count. [`Shards`] keeps them in map order with an index by shard id, and moves
//! queued records to the shards that hold their hash keys when the map changes. Under `AUTO`
//! distribution there is no prediction: one stream-wide pseudo-shard (`*`) holds every record.
//!
//! ## Finding the shards with work, without a scan
//!
//! A poll visits only shards that may have something to do, so its cost follows the work done,
//! not the shard count. Three structures hold them:
//!
//! - the **ready queue** (FIFO, one flag per shard against duplicates): shards to drain at the
//!   next poll. A shard enters it when a record arrives that it may send now (always without
//!   aggregation or while flushing; with aggregation when its queue was empty or is now full),
//!   when records are put back at its front (any mutable access by index, `shards[i]`, marks the
//!   shard ready, so a caller that changes a shard cannot forget to wake it), when its
//!   outstanding count falls to 0 (per-shard ordering), when a timer fires, and when the map is
//!   installed or a flush or shutdown starts (every shard that holds records).
//! - the **timer heap** of (instant, shard), with lazy deletion: a shard's limiter, linger,
//!   back-off and TTL deadlines are folded into one wake time by the drain; a new entry is
//!   pushed only when it is earlier than the shard's pending one, and an entry whose time is no
//!   longer the shard's pending one is skipped when it comes up. A wake that comes too early
//!   costs one drain, which pushes the right time.
//! - the **blocked queue** (FIFO, flagged): shards that had work when the in-flight limit was
//!   saturated. They are drained, oldest first, as capacity frees, before newer ready shards.
//! - the **limited list** (flagged): shards whose limiter held a record back. Their timers
//!   were set at the rate in force then; when the stream's rate factor rises well above it
//!   (slow start, recovery after a cut), they are all made ready so that their wait is worked
//!   out again at the new rate. (A 1 MiB record taken at a factor of 1/20 leaves a debt that
//!   takes 20 s to refill at that rate, and under one second at the full rate.) Costs a pass
//!   over the limited shards once per such rise.

use super::entry::{Entry, KRecord};
pub(super) use super::shard_state::ShardState;
use super::shard_state::IDLE_QUEUE_CAPACITY;
use crate::hash_key::HashKey;
use crate::shard_map::{ShardInfo, ShardMap};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ops::{Index, IndexMut};
use std::sync::Arc;
use std::time::Instant;

/// The shards records are queued for, with the map that predicts them.
pub(super) struct Shards {
    pub map: ShardMap,
    states: Vec<ShardState>,
    /// Shard id → position (foldhash: every answered Kinesis record looks its shard up here).
    index: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    predict: bool,
    ready: VecDeque<usize>,
    blocked: VecDeque<usize>,
    limited: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The next [`ShardState::uid`].
    next_uid: u64,
    /// Position of each live state by uid.
    by_uid: HashMap<u64, usize, foldhash::fast::RandomState>,
    /// Retired states that had Kinesis records outstanding → the states (uids) that took over
    /// their range and inherited the count (a state retired in turn passes it on).
    heirs: HashMap<u64, Vec<u64>>,
}

impl Shards {
    pub fn new(predict: bool) -> Self {
        Shards {
            map: ShardMap::default(),
            states: Vec::new(),
            index: HashMap::default(),
            predict,
            ready: VecDeque::new(),
            blocked: VecDeque::new(),
            limited: Vec::new(),
            timers: BinaryHeap::new(),
            next_uid: 1,
            by_uid: HashMap::default(),
            heirs: HashMap::new(),
        }
    }

    /// Prediction on or off (the stream's distribution switched); takes effect at the next
    /// [`Shards::install`].
    pub fn set_predict(&mut self, predict: bool) {
        self.predict = predict;
    }

    /// The state of shard `i`, without marking it ready (the drain's own access).
    pub fn state_mut(&mut self, i: usize) -> &mut ShardState {
        &mut self.states[i]
    }

    /// Shard `i` is drained at the next poll.
    pub fn mark_ready(&mut self, i: usize) {
        let st = &mut self.states[i];
        if !st.ready {
            st.ready = true;
            self.ready.push_back(i);
        }
    }

    /// Every shard that holds records is drained at the next poll (map installed, flush or
    /// shutdown started: rare, so a pass over the shards is fine here).
    pub fn mark_all_held(&mut self) {
        for i in 0..self.states.len() {
            if self.states[i].holds() {
                self.mark_ready(i);
            }
        }
    }

    /// The next shard to drain: the oldest blocked one if `room` (the in-flight limit has
    /// room), else the oldest ready one.
    pub fn next_to_drain(&mut self, room: bool) -> Option<usize> {
        if room {
            if let Some(i) = self.blocked.pop_front() {
                self.states[i].blocked = false;
                return Some(i);
            }
        }
        let i = self.ready.pop_front()?;
        self.states[i].ready = false;
        Some(i)
    }

    /// Orders the ready queue round-robin from position `start` (modulo the shard count), as
    /// a sweep over the shards starting there would visit them: no shard is always first.
    /// Costs a sort of the ready shards only.
    pub fn rotate_ready(&mut self, start: usize) {
        let n = self.states.len().max(1);
        let start = start % n;
        self.ready
            .make_contiguous()
            .sort_unstable_by_key(|&i| (i + n - start) % n);
    }

    /// Shard `i` has work but the in-flight limit is saturated: drain it when room frees.
    pub fn block(&mut self, i: usize) {
        let st = &mut self.states[i];
        if !st.blocked {
            st.blocked = true;
            self.blocked.push_back(i);
        }
    }

    /// Whether a shard is on the limited list (one that has drained since may still be).
    pub fn any_limited(&self) -> bool {
        !self.limited.is_empty()
    }

    /// Shard `i`'s limiter held a record back, its wait worked out at the rate in force.
    pub fn limit(&mut self, i: usize) {
        let st = &mut self.states[i];
        if !st.limited {
            st.limited = true;
            self.limited.push(i);
        }
    }

    /// The rate rose: every shard its limiter held back is drained at the next poll, to work
    /// its wait out again.
    pub fn wake_limited(&mut self) {
        for i in std::mem::take(&mut self.limited) {
            self.states[i].limited = false;
            self.mark_ready(i);
        }
    }

    /// Whether a shard waits in the ready queue, or in the blocked queue.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Shard `i` wants to be drained at `at`: pushes a timer unless an earlier one is pending.
    pub fn schedule(&mut self, i: usize, at: Instant) {
        let st = &mut self.states[i];
        if st.timer.is_some_and(|t| t <= at) {
            return;
        }
        st.timer = Some(at);
        self.timers.push(Reverse((at, i)));
    }

    /// Moves the shards whose timers are due at `now` to the ready queue, and drops stale
    /// entries from the top of the heap so that [`Shards::next_timer`] is exact.
    pub fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            let live = self.states.get(i).is_some_and(|st| st.timer == Some(at));
            if live && at > now {
                break;
            }
            self.timers.pop();
            if live {
                self.states[i].timer = None;
                self.mark_ready(i);
            }
        }
        if self.timers.is_empty() && self.timers.capacity() > IDLE_QUEUE_CAPACITY {
            self.timers = BinaryHeap::new();
        }
    }

    /// Room of the timer heap (tests check it is given back after a burst).
    #[cfg(test)]
    pub fn timer_capacity(&self) -> usize {
        self.timers.capacity()
    }

    /// The earliest pending timer.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ShardState> {
        self.states.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut ShardState> {
        self.states.iter_mut()
    }

    /// The positions of the states that count a Kinesis record as outstanding: the state it was
    /// built from, or the heirs of that state's range if it was retired meanwhile.
    pub fn counting(&self, r: &KRecord, out: &mut Vec<usize>) {
        if let Some(&i) = self.by_uid.get(&r.origin) {
            out.push(i); // the common case: no reshard since it was built
            return;
        }
        let mut pending = vec![r.origin];
        while let Some(uid) = pending.pop() {
            if let Some(&i) = self.by_uid.get(&uid) {
                out.push(i);
            } else if let Some(heirs) = self.heirs.get(&uid) {
                pending.extend(heirs);
            }
        }
    }

    /// Positions of the states whose ranges overlap `[start, end]` (states are in map order).
    fn overlapping(&self, start: u128, end: u128) -> impl Iterator<Item = usize> + '_ {
        let first = self.states.partition_point(|s| s.info.end < start);
        (first..self.states.len()).take_while(move |&i| self.states[i].info.start <= end)
    }

    /// The state of the shard with this id, if the map still has it.
    pub fn by_id(&mut self, id: &str) -> Option<&mut ShardState> {
        let i = *self.index.get(id)?;
        Some(&mut self.states[i])
    }

    /// The position of the shard a record with this hash key is queued for.
    pub fn slot_for(&self, key: HashKey) -> usize {
        if self.predict {
            self.map.lookup(key).unwrap_or(0)
        } else {
            0
        }
    }

    /// Prefetches the state of the shard `key` falls on; returns its index.
    pub fn prefetch_state(&self, key: HashKey) -> usize {
        let i = self.slot_for(key);
        if let Some(st) = self.states.get(i) {
            prefetch((st as *const ShardState).cast());
        }
        i
    }

    /// Prefetches the queue slot the next record of shard `i` goes to (a 128-byte entry
    /// aligned to 16 bytes touches up to three cache lines).
    pub fn prefetch_queue_slot(&self, i: usize) {
        let Some(st) = self.states.get(i) else {
            return;
        };
        if st.queue.len() < st.queue.capacity() {
            // After the last entry; at the end of the buffer the slot wraps to its start, and
            // the hint is only wasted.
            let (front, back) = st.queue.as_slices();
            let last = if back.is_empty() { front } else { back };
            let slot = last.as_ptr_range().end.cast::<u8>();
            for line in 0..3 {
                prefetch(slot.wrapping_add(64 * line));
            }
        }
    }

    /// Queues a new record behind the others of its shard, and marks the shard ready if `wake`
    /// says that the shard, as it is now, may send.
    pub fn enqueue_back(&mut self, e: Entry, now: Instant, wake: impl FnOnce(&ShardState) -> bool) {
        let i = self.slot_for(e.hash_key);
        let st = &mut self.states[i];
        if st.queue.is_empty() {
            st.opened = Some(now);
        }
        st.push_back(e);
        if wake(st) {
            self.mark_ready(i);
        }
    }

    /// Replaces the map. Shards that remain keep their state (`reset_limiter` may renew their
    /// limiter); new shards get a fresh state from `new_state`. A shard that is gone with Kinesis
    /// records outstanding passes the count to the shards that now hold its range, which wait
    /// for them under per-shard ordering. Returns the records queued for shards that are gone,
    /// oldest first, to be queued again on the new map.
    pub fn install(
        &mut self,
        map: ShardMap,
        mut new_state: impl FnMut(ShardInfo) -> ShardState,
        mut reset_limiter: impl FnMut(&mut ShardState),
    ) -> Vec<Entry> {
        let open: Vec<ShardInfo> = if self.predict {
            map.open_shards().to_vec()
        } else {
            vec![ShardInfo {
                id: "*".into(),
                start: 0,
                end: u128::MAX,
                open: true,
            }]
        };
        let mut old: HashMap<Arc<str>, ShardState> = self
            .states
            .drain(..)
            .map(|s| (s.info.id.clone(), s))
            .collect();
        self.states = open
            .into_iter()
            .map(|info| match old.remove(&info.id) {
                Some(mut st) => {
                    reset_limiter(&mut st);
                    st
                }
                None => {
                    let mut st = new_state(info);
                    st.uid = self.next_uid;
                    self.next_uid += 1;
                    st
                }
            })
            .collect();
        self.index = self
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.info.id.clone(), i))
            .collect();
        self.by_uid = self
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.uid, i))
            .collect();
        self.map = map;
        // Positions changed: rebuild the ready, blocked and timer sets from scratch.
        self.ready.clear();
        self.blocked.clear();
        self.limited.clear();
        self.timers.clear();
        for st in &mut self.states {
            (st.ready, st.blocked, st.limited, st.timer) = (false, false, false, None);
        }
        self.mark_all_held();
        let mut orphans: Vec<ShardState> = old.into_values().collect();
        orphans.sort_by_key(|s| s.info.end);
        // Per-key order across a reshard: a range's new shards wait for what the retired
        // shard still has in flight (it may fail and be retried, ahead of newer records).
        for o in &orphans {
            let n = o.outstanding.get();
            if n == 0 {
                continue;
            }
            let heirs: Vec<usize> = self.overlapping(o.info.start, o.info.end).collect();
            for &i in &heirs {
                self.states[i].outstanding.inherit(n);
            }
            let uids = heirs.iter().map(|&i| self.states[i].uid).collect();
            self.heirs.insert(o.uid, uids);
        }
        orphans
            .iter_mut()
            .flat_map(|st| st.drain_held().collect::<Vec<_>>())
            .collect()
    }
}

impl Index<usize> for Shards {
    type Output = ShardState;
    fn index(&self, i: usize) -> &ShardState {
        &self.states[i]
    }
}

/// Mutable access by index marks the shard ready: whoever changes a shard (records put back at
/// its front) gets it drained at the next poll.
impl IndexMut<usize> for Shards {
    fn index_mut(&mut self, i: usize) -> &mut ShardState {
        self.mark_ready(i);
        &mut self.states[i]
    }
}

/// Asks the CPU to bring the cache line holding `p` into cache.
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: a prefetch is a hint to the cache; it reads nothing into the program and does
    // not fault, whatever the address. The SSE it needs is part of every x86_64 target.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
