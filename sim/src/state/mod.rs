//! In-memory streams: the registry of streams, each stream's identity, settings, lifecycle
//! and faults, with its shards and records (in [`shards`]) behind a `Mutex`.
//!
//! Each stream sits behind its own `Mutex`; the registry of streams behind an `RwLock` held
//! only for lookups. Request parsing, base64 and JSON happen outside these locks.

mod lifecycle;
mod shards;
mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{
    Faults, RecordDistribution, SimConfig, StreamMode, StreamOptions, StreamSettings,
};
pub(crate) use lifecycle::Lifecycle;
pub use lifecycle::StreamStatus;
pub(crate) use shards::{PutEntry, PutResult, ReshardError, Shard, StreamState};
pub use view::{
    parse_sequence_number, parse_shard_id, sequence_number, shard_id, ShardCounters, ShardSnapshot,
    StoredRecord, StreamCounters,
};

/// Request-level counters, updated without the stream lock.
#[derive(Debug, Default)]
pub(crate) struct AtomicCounters {
    pub requests: AtomicU64,
    pub put_requests: AtomicU64,
    pub http_500: AtomicU64,
    pub http_503: AtomicU64,
    pub dropped: AtomicU64,
    pub unreachable: AtomicU64,
}

impl AtomicCounters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One stream: identity, settings, lifecycle, state behind a mutex, faults and request
/// counters.
#[derive(Debug)]
pub(crate) struct Stream {
    pub name: String,
    pub arn: String,
    pub created: SystemTime,
    settings: RwLock<StreamSettings>,
    lifecycle: Mutex<Lifecycle>,
    pub state: Mutex<StreamState>,
    pub faults: RwLock<Faults>,
    pub counters: AtomicCounters,
}

impl Stream {
    pub fn settings(&self) -> StreamSettings {
        *self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to a copy of the settings and keeps the copy if `change` returns
    /// `Ok`, atomically.
    pub fn update_settings<E>(
        &self,
        change: impl FnOnce(&mut StreamSettings) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut s = self.settings.write().unwrap_or_else(|p| p.into_inner());
        let mut next = *s;
        change(&mut next)?;
        *s = next;
        Ok(())
    }

    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> StreamStatus {
        self.lifecycle().status(Instant::now())
    }

    /// Starts an update lasting `d`, refused unless `ACTIVE`; `apply` runs when it ends
    /// (at once for a zero duration), if the stream still exists then.
    pub fn update_after(
        self: &Arc<Self>,
        d: Duration,
        apply: impl FnOnce(&Stream) + Send + 'static,
    ) -> Result<(), StreamStatus> {
        self.lifecycle().begin_update(Instant::now(), d)?;
        if d.is_zero() {
            apply(self);
        } else {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                if let Some(s) = weak.upgrade() {
                    apply(&s);
                }
            });
        }
        Ok(())
    }

    pub fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn counters(&self) -> StreamCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamCounters {
            requests: get(&c.requests),
            put_requests: get(&c.put_requests),
            http_500_injected: get(&c.http_500),
            http_503_injected: get(&c.http_503),
            connections_dropped: get(&c.dropped),
            unreachable_dropped: get(&c.unreachable),
            shards: self
                .lock()
                .shards
                .iter()
                .map(|s| s.counters.clone())
                .collect(),
        }
    }

    pub fn records(&self) -> Vec<StoredRecord> {
        let st = self.lock();
        st.shards
            .iter()
            .flat_map(|s| {
                s.records.iter().map(move |r| StoredRecord {
                    shard_id: shard_id(s.index),
                    sequence_number: sequence_number(r.seq),
                    partition_key: r.partition_key.clone(),
                    explicit_hash_key: r.explicit_hash_key.clone(),
                    data: r.data.clone(),
                    arrival: r.arrival,
                })
            })
            .collect()
    }
}

/// Why a stream operation of the inspection API failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimError {
    /// A stream of that name exists already.
    StreamExists(String),
    /// No stream of that name.
    StreamNotFound(String),
    /// An argument was out of range (shard count 0, bad split key, ...).
    InvalidArgument(String),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::StreamExists(s) => write!(f, "stream {s} already exists"),
            SimError::StreamNotFound(s) => write!(f, "stream {s} not found"),
            SimError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
        }
    }
}

impl std::error::Error for SimError {}

/// All streams of one simulator.
#[derive(Debug)]
pub(crate) struct Registry {
    pub cfg: SimConfig,
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    pub unreachable_until: RwLock<Option<Instant>>,
}

impl Registry {
    pub fn new(cfg: SimConfig) -> Self {
        Registry {
            cfg,
            streams: RwLock::new(HashMap::new()),
            unreachable_until: RwLock::new(None),
        }
    }

    /// True while the whole endpoint is made unreachable.
    pub fn unreachable(&self) -> bool {
        self.unreachable_until
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| Instant::now() < u)
    }

    pub fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{}",
            self.cfg.region, self.cfg.account_id, name
        )
    }

    /// The stream of that name, unless its deletion has completed.
    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        let now = Instant::now();
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .filter(|s| !s.lifecycle().gone(now))
            .cloned()
    }

    /// Creates a stream that is `CREATING` for `creating`. The name must be free (a stream
    /// still `DELETING` holds it); the options must be valid.
    pub fn create(
        &self,
        name: &str,
        opts: &StreamOptions,
        creating: Duration,
    ) -> Result<Arc<Stream>, SimError> {
        if opts.shards == 0 {
            return Err(SimError::InvalidArgument(
                "shard count must be at least 1".into(),
            ));
        }
        let settings = StreamSettings {
            mode: opts.mode,
            distribution: opts.distribution,
            max_record_size_kib: opts
                .max_record_size_kib
                .unwrap_or(self.cfg.max_record_size_kib),
        };
        check_settings(&settings).map_err(SimError::InvalidArgument)?;
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if self.get_locked(&map, name).is_some() {
            return Err(SimError::StreamExists(name.to_string()));
        }
        let limits = opts.limits.unwrap_or(self.cfg.limits);
        let now = Instant::now();
        let stream = Arc::new(Stream {
            name: name.to_string(),
            arn: self.arn(name),
            created: SystemTime::now(),
            settings: RwLock::new(settings),
            lifecycle: Mutex::new(Lifecycle::new(now, creating)),
            state: Mutex::new(StreamState::new(
                opts.shards,
                limits,
                self.cfg.store_records,
            )),
            faults: RwLock::new(Faults::default()),
            counters: AtomicCounters::default(),
        });
        map.insert(name.to_string(), stream.clone());
        Ok(stream)
    }

    fn get_locked(&self, map: &HashMap<String, Arc<Stream>>, name: &str) -> Option<Arc<Stream>> {
        map.get(name)
            .filter(|s| !s.lifecycle().gone(Instant::now()))
            .cloned()
    }

    /// Deletes a stream: at once for a zero `deleting`, else it is `DELETING` that long.
    pub fn delete(&self, name: &str, deleting: Duration) -> Option<Arc<Stream>> {
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        let stream = self.get_locked(&map, name)?;
        if deleting.is_zero() {
            map.remove(name);
        } else {
            stream.lifecycle().begin_delete(Instant::now(), deleting);
        }
        Some(stream)
    }

    /// Names of the streams not yet gone, sorted.
    pub fn names(&self) -> Vec<String> {
        let now = Instant::now();
        let mut v: Vec<String> = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, s)| !s.lifecycle().gone(now))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }
}

/// The API's range of `MaxRecordSizeInKiB`.
pub(crate) fn check_record_size_kib(kib: u32) -> Result<(), String> {
    use crate::config::{MAX_MAX_RECORD_SIZE_KIB, MIN_MAX_RECORD_SIZE_KIB};
    if (MIN_MAX_RECORD_SIZE_KIB..=MAX_MAX_RECORD_SIZE_KIB).contains(&kib) {
        Ok(())
    } else {
        Err(format!(
            "MaxRecordSizeInKiB {kib} is outside {MIN_MAX_RECORD_SIZE_KIB}..={MAX_MAX_RECORD_SIZE_KIB}"
        ))
    }
}

/// The rule tying the record distribution to the capacity mode, as the API states it.
pub(crate) fn check_settings(s: &StreamSettings) -> Result<(), String> {
    if s.mode == StreamMode::Provisioned && s.distribution == RecordDistribution::Auto {
        return Err(
            "Record distribution strategy AUTO is only supported for ON_DEMAND streams.".into(),
        );
    }
    Ok(())
}
