//! The driver's intake: messages from the handles' ingest channel, taken in batches and
//! handed to the engines in the order they came; on a stream of thousands of shards, a few
//! ahead of their turn so that each record's shard state is prefetched.

use super::{Driver, Msg};
use crossbeam_channel::Receiver;
use std::time::Instant;
use tokio::sync::oneshot;

/// Messages the engine takes from the ingest channel between two polls.
const INGEST_BATCH: usize = 4096;

/// How many messages the engine takes from the ingest channel ahead of the one it handles, on
/// a stream of at least [`LOOKAHEAD_MIN_SHARDS`] shards (see [`Driver::take`]).
pub(super) const LOOKAHEAD: usize = 16;
/// Below this many shards, the shards' states and queues stay in cache: no look-ahead, which
/// would only cost a move per record (`bench_e2e cpu`: +5 % at 64 shards, neutral at 1,024,
/// 1-12 % less at 4,096 and 10,000; BENCHMARKS.md, issue 12).
const LOOKAHEAD_MIN_SHARDS: usize = 2048;

impl Driver {
    /// How far ahead to take messages: [`LOOKAHEAD`] when the producer's own stream has
    /// thousands of shards, else none.
    fn lookahead_depth(&self) -> usize {
        let many = self.slots[0]
            .as_ref()
            .is_some_and(|s| s.engine.shard_count() >= LOOKAHEAD_MIN_SHARDS);
        if many {
            LOOKAHEAD
        } else {
            0
        }
    }

    /// Handles `first` and what else the ingest channel holds, up to [`INGEST_BATCH`].
    pub(super) fn ingest(&mut self, first: Msg, intake: &Receiver<Msg>, now: Instant) {
        let ahead = self.lookahead_depth();
        // (The loop without look-ahead stays apart: going through `take` with no look-ahead
        // measured a few per cent slower at 64 shards.)
        if ahead == 0 {
            self.on_msg(first, now);
            for _ in 0..INGEST_BATCH {
                match intake.try_recv() {
                    Ok(msg) => self.on_msg(msg, now),
                    Err(_) => break,
                }
            }
            return;
        }
        self.take(first, ahead, now);
        for _ in 0..INGEST_BATCH {
            match intake.try_recv() {
                Ok(msg) => self.take(msg, ahead, now),
                Err(_) => break,
            }
        }
        while let Some((msg, _)) = self.lookahead.pop_front() {
            self.on_msg(msg, now);
        }
    }

    /// Handles `msg` after the `ahead` messages that follow it have been taken. On a stream of
    /// thousands of shards a record's shard state and queue are rarely in cache: the state of
    /// each record taken is prefetched, and the queue slot of the one halfway along (its state
    /// now in cache), so that the misses overlap instead of stalling one record at a time.
    /// Messages are handled in the order they came.
    fn take(&mut self, msg: Msg, ahead: usize, now: Instant) {
        let engine = &self.slots[0]
            .as_ref()
            .expect("the producer's own stream")
            .engine;
        let shard = match &msg {
            Msg::Record(e) if e.stream.is_none() => Some(engine.prefetch_state(e.hash_key)),
            _ => None,
        };
        if let Some(&(_, Some(halfway))) = self.lookahead.get(ahead / 2) {
            engine.prefetch_queue_slot(halfway);
        }
        self.lookahead.push_back((msg, shard));
        if self.lookahead.len() > ahead {
            let (msg, _) = self.lookahead.pop_front().expect("more than `ahead` held");
            self.on_msg(msg, now);
        }
    }

    pub(super) fn on_msg(&mut self, msg: Msg, now: Instant) {
        match msg {
            Msg::Record(entry) => {
                let i = match &entry.stream {
                    None => 0,
                    Some(name) => self.slot_for(name, now),
                };
                self.slot(i).engine.on_record(entry, now);
                self.touch(i);
            }
            Msg::Flush(reply) => {
                let slots: Vec<usize> = self.live_slots().collect();
                let mut replies = Vec::with_capacity(slots.len());
                for i in slots {
                    let (tx, rx) = oneshot::channel();
                    self.slot(i).engine.on_flush(tx);
                    self.touch(i);
                    replies.push(rx);
                }
                self.joins.push((replies, reply));
            }
            Msg::Shutdown(reply) => self.shut_down(Some(reply), now),
        }
    }
}
