//! Per-shard state and the set of shards the map predicts.
//!
//! Each open shard has its queue of user records (retries at the front, in order), at most one
//! sealed Kinesis record waiting for its limiter, its token buckets, its back-off and its
//! outstanding count. [`Shards`] keeps them in map order with an index by shard id, and moves
//! queued records to the shards that hold their hash keys when the map changes. Under `AUTO`
//! distribution there is no prediction: one stream-wide pseudo-shard (`*`) holds every record.

use super::entry::{Entry, KRecord};
use super::ledger::Outstanding;
use super::telemetry::ShardTelemetry;
use crate::aggregation::{Aggregator, TryPush};
use crate::hash_key::HashKey;
use crate::kinesis::PutRecordsEntry;
use crate::limiter::ShardLimiter;
use crate::retry::Backoff;
use crate::shard_map::{ShardInfo, ShardMap};
use std::collections::{HashMap, VecDeque};
use std::ops::{Index, IndexMut};
use std::sync::Arc;
use std::time::Instant;

pub(super) struct ShardState {
    pub info: ShardInfo,
    pub queue: VecDeque<Entry>,
    pub queued_bytes: usize,
    pub sealed: Option<KRecord>,
    pub limiter: ShardLimiter,
    pub backoff: Backoff,
    pub backoff_until: Option<Instant>,
    pub outstanding: Outstanding,
    /// When the shard next has something to do without new input.
    pub wake: Option<Instant>,
    pub telemetry: ShardTelemetry,
}

impl ShardState {
    pub fn new(info: ShardInfo, limiter: ShardLimiter, telemetry: ShardTelemetry) -> Self {
        ShardState {
            info,
            queue: VecDeque::new(),
            queued_bytes: 0,
            sealed: None,
            limiter,
            backoff: Backoff::default(),
            backoff_until: None,
            outstanding: Outstanding::default(),
            wake: None,
            telemetry,
        }
    }

    pub fn push_back(&mut self, e: Entry) {
        self.queued_bytes += e.size();
        self.queue.push_back(e);
    }

    pub fn push_front(&mut self, e: Entry) {
        self.queued_bytes += e.size();
        self.queue.push_front(e);
    }

    pub fn pop_front(&mut self) -> Option<Entry> {
        let e = self.queue.pop_front()?;
        self.queued_bytes -= e.size();
        Some(e)
    }

    /// Every record it holds that has not left for the collector, oldest first.
    pub fn drain_held(&mut self) -> impl Iterator<Item = Entry> + '_ {
        let sealed = self.sealed.take().map(|r| r.entries).unwrap_or_default();
        self.queued_bytes = 0;
        sealed.into_iter().chain(self.queue.drain(..))
    }

    /// Takes the next Kinesis record off the queue: an aggregate of as many queued records as
    /// fit, or a single record (sent raw: aggregation off, the record too large to share, or
    /// only one record at hand).
    pub fn build_record(&mut self, aggregator: &mut Aggregator, aggregation: bool) -> KRecord {
        let first = self.pop_front().expect("caller checked the queue");
        let shard = self.info.id.clone();
        if !aggregation || self.queue.is_empty() {
            return KRecord::single(shard, first);
        }
        let r = &first.record;
        if let TryPush::NoCapacity =
            aggregator.try_push(&r.partition_key, r.explicit_hash_key.as_deref(), &r.data)
        {
            return KRecord::single(shard, first);
        }
        let mut entries = vec![first];
        while let Some(next) = self.queue.front() {
            let r = &next.record;
            match aggregator.try_push(&r.partition_key, r.explicit_hash_key.as_deref(), &r.data) {
                TryPush::Added => entries.push(self.pop_front().expect("front exists")),
                TryPush::NoCapacity => break,
            }
        }
        let aggregate = aggregator.finish().expect("aggregate holds records");
        if entries.len() == 1 {
            return KRecord::single(shard, entries.pop().expect("one entry"));
        }
        let oldest = entries.iter().map(|e| e.arrival).min().expect("entries");
        KRecord {
            shard,
            size: aggregate.data.len() + aggregate.partition_key.len(),
            // The outer hash key is the first sub-record's: inside the predicted shard's
            // range, so the aggregate lands on the shard all its sub-records were predicted for.
            wire: PutRecordsEntry {
                explicit_hash_key: Some(entries[0].hash_key.to_string()),
                data: aggregate.data,
                partition_key: aggregate.partition_key,
            },
            entries,
            aggregated: true,
            oldest,
        }
    }
}

/// The shards records are queued for, with the map that predicts them.
pub(super) struct Shards {
    pub map: ShardMap,
    states: Vec<ShardState>,
    index: HashMap<Arc<str>, usize>,
    predict: bool,
}

impl Shards {
    pub fn new(predict: bool) -> Self {
        Shards {
            map: ShardMap::default(),
            states: Vec::new(),
            index: HashMap::new(),
            predict,
        }
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

    /// Queues a new record behind the others of its shard.
    pub fn enqueue_back(&mut self, e: Entry) {
        let i = self.slot_for(e.hash_key);
        self.states[i].push_back(e);
    }

    /// Replaces the map. Shards that remain keep their state (`reset_limiter` may renew their
    /// limiter); new shards get a fresh state from `new_state`. Returns the records queued for
    /// shards that are gone, oldest first, to be queued again on the new map.
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
                None => new_state(info),
            })
            .collect();
        self.index = self
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.info.id.clone(), i))
            .collect();
        self.map = map;
        let mut orphans: Vec<ShardState> = old.into_values().collect();
        orphans.sort_by_key(|s| s.info.end);
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

impl IndexMut<usize> for Shards {
    fn index_mut(&mut self, i: usize) -> &mut ShardState {
        &mut self.states[i]
    }
}
