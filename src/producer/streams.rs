//! The streams a producer serves, as its handles see them: each stream's counters and
//! settings, for `stats()` and `stream_stats()`. The engine thread adds a stream on its first
//! record and removes it when it is released; the counters of released streams stay in the
//! producer's totals.

use crate::stats::{SharedStats, Stats};
use crate::stream_settings::LiveSettings;
use std::sync::{Arc, Mutex, MutexGuard};

/// One stream's counters and settings.
pub(super) struct StreamEntry {
    pub name: Arc<str>,
    pub stats: Arc<SharedStats>,
    pub live: Arc<LiveSettings>,
}

impl StreamEntry {
    /// Its counters with the buffer's room (`room`, producer-wide) and its settings.
    fn snapshot(&self, room: (usize, usize, usize, usize)) -> Stats {
        let live = &self.live;
        Stats {
            auto_distribution: live.auto_distribution(),
            on_demand: live.on_demand(),
            record_size_limit: live.record_limit().bytes as u64,
            stream_settings_changes: live.changes(),
            stream_settings_reads: live.reads(),
            ..self.stats.snapshot(room)
        }
    }
}

/// The streams in use, the producer's own first.
#[derive(Default)]
pub(super) struct Registry {
    streams: Mutex<Vec<StreamEntry>>,
    /// Counters of streams released so far.
    released: Mutex<Stats>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Vec<StreamEntry>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, entry: StreamEntry) {
        self.lock().push(entry);
    }

    /// A stream is released: its counters move to the released total.
    pub fn remove(&self, name: &str) {
        let mut streams = self.lock();
        if let Some(pos) = streams.iter().position(|s| &*s.name == name) {
            let gone = streams.remove(pos);
            let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
            released.add_counters(&gone.snapshot((0, 0, 0, 0)));
        }
    }

    /// The producer's totals: counters of every stream, released ones included; settings and
    /// per-shard counters of the producer's own stream.
    pub fn total(&self, room: (usize, usize, usize, usize)) -> Stats {
        let streams = self.lock();
        let mut total = streams[0].snapshot(room);
        for s in &streams[1..] {
            total.add_counters(&s.snapshot(room));
        }
        total.add_counters(&self.released.lock().unwrap_or_else(|e| e.into_inner()));
        total
    }

    /// One stream's counters and settings, if it is in use.
    pub fn stream(&self, name: &str, room: (usize, usize, usize, usize)) -> Option<Stats> {
        let streams = self.lock();
        streams
            .iter()
            .find(|s| &*s.name == name)
            .map(|s| s.snapshot(room))
    }

    /// The names of the streams in use, the producer's own first.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.lock().iter().map(|s| s.name.clone()).collect()
    }
}
