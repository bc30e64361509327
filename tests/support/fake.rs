//! A scripted, in-memory implementation of the producer's I/O seam.

#![allow(dead_code)]

use kinesis_producer::kinesis::{
    BoxFuture, ClientError, Kinesis, PutRecordsRequest, PutRecordsResultEntry, StreamSummary,
};
use kinesis_producer::shard_map::{even_range, ShardInfo};
use kinesis_producer::{HashKey, StreamRef};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One Kinesis record the fake stored.
#[derive(Clone, Debug)]
pub struct Stored {
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Script {
    /// Per-record results to hand out first, in order: `Some(code)` fails the record.
    record_results: VecDeque<Option<&'static str>>,
    /// Fail this fraction of records with this code (deterministic pattern).
    fail_every: Option<(usize, &'static str)>,
    /// Whole-request errors to hand out first.
    request_errors: VecDeque<ClientError>,
    /// Codes a stream lookup fails with.
    describe_error: Option<ClientError>,
    /// Errors the next stream lookups fail with, one each.
    describe_errors: VecDeque<ClientError>,
}

/// The fake stream: `listed` shards are what ListShards says, `actual` where records land.
pub struct FakeKinesis {
    listed: Mutex<u32>,
    actual: Mutex<(u32, u32)>, // (shard count, id offset)
    script: Mutex<Script>,
    pub stored: Mutex<Vec<Stored>>,
    seq: AtomicUsize,
    record_counter: AtomicUsize,
    pub requests: AtomicUsize,
    pub list_calls: AtomicUsize,
    in_flight: AtomicUsize,
    pub max_in_flight_seen: AtomicUsize,
    /// The most bytes (data + partition keys) one PutRecords request carried.
    pub max_request_bytes_seen: AtomicUsize,
    latency: Mutex<Duration>,
    /// When each PutRecords request arrived, in order.
    request_times: Mutex<Vec<Instant>>,
}

pub fn shard_id(i: u32) -> String {
    format!("shardId-{i:012}")
}

impl FakeKinesis {
    pub fn new(shards: u32) -> Arc<Self> {
        Arc::new(FakeKinesis {
            listed: Mutex::new(shards),
            actual: Mutex::new((shards, 0)),
            script: Mutex::default(),
            stored: Mutex::default(),
            seq: AtomicUsize::new(0),
            record_counter: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            list_calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight_seen: AtomicUsize::new(0),
            max_request_bytes_seen: AtomicUsize::new(0),
            latency: Mutex::new(Duration::ZERO),
            request_times: Mutex::default(),
        })
    }

    pub fn seam(self: &Arc<Self>) -> Arc<dyn Kinesis> {
        self.clone()
    }

    pub fn set_latency(&self, d: Duration) {
        *self.latency.lock().unwrap() = d;
    }

    pub fn script_records(&self, results: impl IntoIterator<Item = Option<&'static str>>) {
        self.script.lock().unwrap().record_results.extend(results);
    }

    /// Fails every `n`th record with `code`, forever.
    pub fn fail_every(&self, n: usize, code: &'static str) {
        self.script.lock().unwrap().fail_every = Some((n, code));
    }

    pub fn script_request_errors(&self, errors: impl IntoIterator<Item = ClientError>) {
        self.script.lock().unwrap().request_errors.extend(errors);
    }

    pub fn script_describe_errors(&self, errors: impl IntoIterator<Item = ClientError>) {
        self.script.lock().unwrap().describe_errors.extend(errors);
    }

    pub fn fail_describe(&self, e: ClientError) {
        self.script.lock().unwrap().describe_error = Some(e);
    }

    /// Reshards for real: records land on `n` new shards (ids from `offset`), and ListShards
    /// reports them from now on.
    pub fn reshard(&self, n: u32, offset: u32) {
        *self.actual.lock().unwrap() = (n, offset);
        *self.listed.lock().unwrap() = n;
    }

    /// Records land on `n` shards (ids from `offset`) but ListShards still says the old map.
    pub fn reshard_silently(&self, n: u32, offset: u32) {
        *self.actual.lock().unwrap() = (n, offset);
    }

    /// When each PutRecords request arrived, in order.
    pub fn request_times(&self) -> Vec<Instant> {
        self.request_times.lock().unwrap().clone()
    }

    pub fn stored(&self) -> Vec<Stored> {
        self.stored.lock().unwrap().clone()
    }

    fn route(&self, key: u128) -> String {
        let (n, offset) = *self.actual.lock().unwrap();
        let i = (0..n).find(|&i| even_range(i, n).1 >= key).unwrap();
        shard_id(i + offset)
    }

    fn next_result(&self) -> Option<&'static str> {
        let mut s = self.script.lock().unwrap();
        if let Some(r) = s.record_results.pop_front() {
            return r;
        }
        let k = self.record_counter.fetch_add(1, Ordering::Relaxed);
        match s.fail_every {
            Some((n, code)) if k.is_multiple_of(n) => Some(code),
            _ => None,
        }
    }
}

impl Kinesis for FakeKinesis {
    fn put_records(
        &self,
        request: PutRecordsRequest,
    ) -> BoxFuture<'_, Result<Vec<PutRecordsResultEntry>, ClientError>> {
        Box::pin(async move {
            self.request_times.lock().unwrap().push(Instant::now());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight_seen.fetch_max(now, Ordering::SeqCst);
            let latency = *self.latency.lock().unwrap();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.requests.fetch_add(1, Ordering::Relaxed);
            assert!(request.records.len() <= 500, "request over 500 records");
            let bytes: usize = request
                .records
                .iter()
                .map(|r| r.data.len() + r.partition_key.len())
                .sum();
            assert!(bytes <= 5 * 1024 * 1024, "request over 5 MiB");
            self.max_request_bytes_seen
                .fetch_max(bytes, Ordering::SeqCst);
            if let Some(e) = self.script.lock().unwrap().request_errors.pop_front() {
                return Err(e);
            }
            let mut out = Vec::with_capacity(request.records.len());
            let mut stored = self.stored.lock().unwrap();
            for r in request.records {
                if let Some(code) = self.next_result() {
                    out.push(PutRecordsResultEntry::Err {
                        code: code.into(),
                        message: format!("scripted {code}").into(),
                    });
                    continue;
                }
                let key = match &r.explicit_hash_key {
                    Some(k) => k.parse().unwrap(),
                    None => HashKey::from_partition_key(&r.partition_key).0,
                };
                let shard_id = self.route(key);
                let sequence_number = format!("{:056}", self.seq.fetch_add(1, Ordering::SeqCst));
                out.push(PutRecordsResultEntry::Ok {
                    shard_id: shard_id.clone().into(),
                    sequence_number: sequence_number.clone().into(),
                });
                stored.push(Stored {
                    shard_id,
                    sequence_number,
                    partition_key: r.partition_key.into(),
                    explicit_hash_key: r.explicit_hash_key,
                    data: r.data.to_vec(),
                });
            }
            Ok(out)
        })
    }

    fn list_shards(
        &self,
        _stream: &StreamRef,
    ) -> BoxFuture<'_, Result<Vec<ShardInfo>, ClientError>> {
        Box::pin(async move {
            self.list_calls.fetch_add(1, Ordering::SeqCst);
            let n = *self.listed.lock().unwrap();
            let (actual_n, offset) = *self.actual.lock().unwrap();
            let offset = if actual_n == n { offset } else { 0 };
            Ok((0..n)
                .map(|i| {
                    let (start, end) = even_range(i, n);
                    ShardInfo {
                        id: shard_id(i + offset).into(),
                        start,
                        end,
                        open: true,
                    }
                })
                .collect())
        })
    }

    fn describe_stream_summary(
        &self,
        _stream: &StreamRef,
    ) -> BoxFuture<'_, Result<StreamSummary, ClientError>> {
        Box::pin(async move {
            let mut script = self.script.lock().unwrap();
            if let Some(e) = script
                .describe_errors
                .pop_front()
                .or_else(|| script.describe_error.clone())
            {
                return Err(e);
            }
            Ok(StreamSummary {
                max_record_size_kib: Some(1024),
                auto_distribution: false,
                on_demand: None,
                status: "ACTIVE".into(),
            })
        })
    }
}
