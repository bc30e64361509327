//! The engine driven by a virtual clock: batching, limits, failures, aggregation, resharding.

use super::outcome::STRANDED_CODE;
use super::*;
use crate::config::{Ordering, ProducerConfig, StreamRef};
use crate::hash_key::HashKey;
use crate::kinesis::{ClientErrorKind, PutRecordsEntry};
use crate::record::{PutOutcome, UserRecord};
use crate::shard_map::{even_range, even_shards as shards};
use crate::stream_settings::{LiveSettings, StreamSettings};
use std::time::Duration;
use tokio::sync::oneshot::error::TryRecvError;

type Rx = oneshot::Receiver<Result<PutOutcome, RecordError>>;

struct Harness {
    engine: Engine,
    now: Instant,
    gauge: Arc<BufferGauge>,
    actions: Vec<Action>,
}

/// Fixed concurrency: these tests count requests in flight from the first poll (the adaptive
/// controller is tested in `congestion.rs` and below).
fn config() -> ProducerConfig {
    ProducerConfig {
        stream: Some(StreamRef::Name("s".into())),
        aggregation: false,
        adaptive_concurrency: false,
        adaptive_rate: false,
        ..Default::default()
    }
}

impl Harness {
    fn new(n: u32, config: ProducerConfig) -> Self {
        Self::with_prediction(n, config, true)
    }

    fn with_prediction(n: u32, config: ProducerConfig, predict: bool) -> Self {
        let now = Instant::now();
        let gauge = Arc::new(BufferGauge::new(
            config.max_buffered_records,
            config.max_buffered_bytes,
        ));
        let stream_settings = StreamSettings {
            auto_distribution: !predict,
            max_record_size_kib: None,
            on_demand: None,
        };
        let live = Arc::new(LiveSettings::new(
            stream_settings,
            stream_settings.record_limit(config.request_bytes_for(1 << 20)),
        ));
        let settings =
            EngineSettings::new(&config, StreamRef::Name("s".into()), stream_settings, live);
        let engine = Engine::new(
            settings,
            ShardMap::new(shards(n)),
            gauge.clone(),
            SharedStats::new(now),
            Metrics::new("s", config.metrics_granularity),
            now,
        );
        Harness {
            engine,
            now,
            gauge,
            actions: Vec::new(),
        }
    }

    /// Adds a record aimed at `shard` of `n` (by explicit hash key).
    fn add_to(&mut self, shard: u32, n: u32, key: &str, data: &str) -> Rx {
        let hash = even_range(shard, n).0;
        let record =
            UserRecord::new(key, data.to_string()).with_explicit_hash_key(hash.to_string());
        self.add(record, HashKey(hash))
    }

    fn add(&mut self, record: UserRecord, hash: HashKey) -> Rx {
        let (tx, rx) = oneshot::channel();
        assert!(self.gauge.try_acquire(record.size()));
        self.engine
            .on_record(Entry::new(record, hash, self.now, Some(tx)), self.now);
        rx
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Polls and returns the requests sent.
    fn poll(&mut self) -> Vec<(u64, PutRecordsRequest)> {
        self.engine.poll(self.now, &mut self.actions);
        self.actions
            .drain(..)
            .filter_map(|a| match a {
                Action::Send { id, request, .. } => Some((id, request)),
                _ => None,
            })
            .collect()
    }

    /// Polls once more after the short window a request opened by overdue records (retries,
    /// a backlog) stays open.
    fn poll_after_window(&mut self) -> Vec<(u64, PutRecordsRequest)> {
        let mut sent = self.poll();
        if sent.is_empty() {
            self.advance(
                self.engine.s.config.max_buffered_time / crate::collector::MIN_WINDOW_DIVISOR,
            );
            sent = self.poll();
        }
        sent
    }

    fn poll_refresh(&mut self) -> bool {
        self.engine.poll(self.now, &mut self.actions);
        let refresh = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::RefreshShardMap));
        assert!(
            self.actions
                .iter()
                .all(|a| !matches!(a, Action::Send { .. })),
            "no send expected"
        );
        self.actions.clear();
        refresh
    }

    /// Answers a request: each record stored on the shard its explicit hash key names.
    fn ok_all(&mut self, id: u64, req: &PutRecordsRequest, n: u32) {
        let results = req.records.iter().map(|r| ok_entry(r, n)).collect();
        self.engine.on_response(id, Ok(results), self.now);
    }
}

fn ok_entry(r: &PutRecordsEntry, n: u32) -> PutRecordsResultEntry {
    let key = match &r.explicit_hash_key {
        Some(k) => k.parse::<u128>().unwrap(),
        None => HashKey::from_partition_key(&r.partition_key).0,
    };
    let i = (0..n).find(|&i| even_range(i, n).1 >= key).unwrap();
    PutRecordsResultEntry::Ok {
        shard_id: format!("shardId-{i:012}").into(),
        sequence_number: format!("{:056}", key % 1000).into(),
    }
}

fn err_entry(code: &str) -> PutRecordsResultEntry {
    PutRecordsResultEntry::Err {
        code: code.into(),
        message: format!("{code} message").into(),
    }
}

fn outcome(rx: &mut Rx) -> Result<PutOutcome, RecordError> {
    match rx.try_recv() {
        Ok(r) => r,
        Err(TryRecvError::Empty) => panic!("not resolved yet"),
        Err(TryRecvError::Closed) => panic!("dropped unresolved"),
    }
}

fn pending(rx: &mut Rx) -> bool {
    matches!(rx.try_recv(), Err(TryRecvError::Empty))
}

/// The one shard of a one-shard stream split in two at the middle of the key space: the
/// closed parent and its two children.
fn split_in_two() -> Vec<ShardInfo> {
    let half = 1u128 << 127;
    let info = |id: &str, start, end, open| ShardInfo {
        id: id.into(),
        start,
        end,
        open,
    };
    vec![
        info("shardId-000000000000", 0, u128::MAX, false),
        info("shardId-000000000001", 0, half - 1, true),
        info("shardId-000000000002", half, u128::MAX, true),
    ]
}

const MS: Duration = Duration::from_millis(1);

fn agg_config() -> ProducerConfig {
    ProducerConfig {
        aggregation: true,
        rate_limiting: false,
        ..config()
    }
}

mod accounting;
mod aggregation;
mod batching;
mod discovery;
mod failures;
mod ordering;
mod request_errors;
mod same_key;
mod scheduling;
mod settings;
mod telemetry;
mod wakeups;
