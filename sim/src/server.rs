//! The HTTP server (hyper 1, HTTP/1.1 and h2c) and the [`Simulator`] handle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::api::{handle, ApiError, Reply};
use crate::config::{
    Faults, RecordDistribution, SimConfig, StreamMode, StreamOptions, StreamSettings,
};

use crate::state::{
    check_record_size_kib, check_settings, Registry, ReshardError, ShardSnapshot, SimError,
    StoredRecord, StreamCounters, StreamStatus,
};

/// The `X-Amz-Target` prefix of every Kinesis action.
pub const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// A running simulator. Dropping it stops the server (the accept loop and every connection).
#[derive(Debug)]
pub struct Simulator {
    reg: Arc<Registry>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
    runtime: tokio::runtime::Handle,
}

/// Returned by the service to make hyper close the connection without a response.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

fn json_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-requestid", "00000000-0000-0000-0000-000000000000")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// Most bytes reserved up front for a body, whatever its `Content-Length` says.
const MAX_BODY_RESERVE: usize = 16 * 1_048_576;

/// The request's body in one buffer sized by its `Content-Length`: the frames are copied
/// once as they arrive (collecting them first and joining them would hold the body twice).
/// `None` if the connection fails mid-body.
async fn read_body(req: Request<Incoming>) -> Option<Vec<u8>> {
    let expected = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = req.into_body();
    let mut buf = Vec::with_capacity(expected.min(MAX_BODY_RESERVE));
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.ok()?.data_ref() {
            buf.extend_from_slice(data);
        }
    }
    Some(buf)
}

async fn serve(
    reg: Arc<Registry>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    if reg.unreachable() {
        return Err(DropConnection);
    }
    let action = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .map(str::to_owned);
    let Some(body) = read_body(req).await else {
        return Err(DropConnection);
    };
    let Some(action) = action else {
        let e = ApiError::unknown_operation();
        return Ok(json_response(e.status, e.body()));
    };
    match handle(&reg, &action, &body).await {
        Reply::Ok(b) => Ok(json_response(200, b)),
        Reply::Err(e) => Ok(json_response(e.status, e.body())),
        Reply::Drop => Err(DropConnection),
    }
}

async fn accept_loop(listener: TcpListener, reg: Arc<Registry>) {
    let mut conns = JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = tcp.set_nodelay(true);
        let reg = reg.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| serve(reg.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

impl Simulator {
    /// Binds `127.0.0.1:cfg.port` (0 = any free port) and starts serving on the current
    /// tokio runtime.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(("127.0.0.1", cfg.port)).await?;
        let addr = listener.local_addr()?;
        let reg = Arc::new(Registry::new(cfg));
        let server = tokio::spawn(accept_loop(listener, reg.clone()));
        Ok(Simulator {
            reg,
            addr,
            server: Some(server),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// `http://127.0.0.1:PORT`, for the SDK's `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.reg.cfg
    }

    /// Creates an ACTIVE stream with `shards` uniformly sized shards.
    pub fn create_stream(&self, name: &str, shards: u32) -> Result<(), SimError> {
        self.create_stream_with(name, StreamOptions::new(shards))
    }

    /// Creates an ACTIVE stream with explicit options (record size, per-shard limits).
    pub fn create_stream_with(&self, name: &str, opts: StreamOptions) -> Result<(), SimError> {
        self.reg.create(name, &opts, Duration::ZERO).map(|_| ())
    }

    /// Deletes a stream and everything stored in it.
    pub fn delete_stream(&self, name: &str) -> Result<(), SimError> {
        self.reg
            .delete(name, Duration::ZERO)
            .map(|_| ())
            .ok_or_else(|| SimError::StreamNotFound(name.to_string()))
    }

    /// Names of all streams, sorted.
    pub fn stream_names(&self) -> Vec<String> {
        self.reg.names()
    }

    fn stream(&self, name: &str) -> Result<Arc<crate::state::Stream>, SimError> {
        self.reg
            .get(name)
            .ok_or_else(|| SimError::StreamNotFound(name.to_string()))
    }

    /// The stream's current settings (capacity mode, record distribution, record size).
    pub fn stream_settings(&self, stream: &str) -> Result<StreamSettings, SimError> {
        Ok(self.stream(stream)?.settings())
    }

    /// The stream's current status (`ACTIVE` unless [`SimConfig::transitions`] are set).
    pub fn stream_status(&self, stream: &str) -> Result<StreamStatus, SimError> {
        Ok(self.stream(stream)?.status())
    }

    /// Switches the capacity mode now (UpdateStreamMode without the `UPDATING` time).
    /// Switching to `PROVISIONED` while the distribution is `AUTO` is refused.
    pub fn set_stream_mode(&self, stream: &str, mode: StreamMode) -> Result<(), SimError> {
        self.change_settings(stream, |s| s.mode = mode)
    }

    /// Switches the record distribution now (UpdateStreamRecordDistributionStrategy);
    /// `AUTO` needs an `ON_DEMAND` stream.
    pub fn set_record_distribution(
        &self,
        stream: &str,
        distribution: RecordDistribution,
    ) -> Result<(), SimError> {
        self.change_settings(stream, |s| s.distribution = distribution)
    }

    /// Sets the stream's largest record, 1024..=10240 KiB, now (UpdateMaxRecordSize).
    pub fn set_max_record_size_kib(&self, stream: &str, kib: u32) -> Result<(), SimError> {
        check_record_size_kib(kib).map_err(SimError::InvalidArgument)?;
        self.change_settings(stream, |s| s.max_record_size_kib = kib)
    }

    fn change_settings(
        &self,
        stream: &str,
        change: impl FnOnce(&mut StreamSettings),
    ) -> Result<(), SimError> {
        self.stream(stream)?
            .update_settings(|s| {
                change(s);
                check_settings(s)
            })
            .map_err(SimError::InvalidArgument)
    }

    /// Replaces the stream's fault injection; takes effect for the next request. A
    /// `reshard_at` schedules a uniform reshard relative to now.
    pub fn set_faults(&self, stream: &str, faults: Faults) -> Result<(), SimError> {
        let s = self.stream(stream)?;
        s.lock().competing_share = faults.competing_writer_share.clamp(0.0, 1.0);
        if let Some((after, n)) = faults.reshard_at {
            if n == 0 {
                return Err(SimError::InvalidArgument("reshard to 0 shards".into()));
            }
            let weak = Arc::downgrade(&s);
            self.runtime.spawn(async move {
                tokio::time::sleep(after).await;
                if let Some(s) = weak.upgrade() {
                    s.lock().reshard_uniform(n);
                }
            });
        }
        *s.faults.write().unwrap_or_else(|p| p.into_inner()) = faults;
        Ok(())
    }

    /// Makes the whole endpoint drop every request without a response until `until`
    /// (`None` restores service).
    pub fn set_unreachable_until(&self, until: Option<Instant>) {
        *self
            .reg
            .unreachable_until
            .write()
            .unwrap_or_else(|p| p.into_inner()) = until;
    }

    /// Uniform rescaling to `new_shard_count` shards now (like UpdateShardCount): every open
    /// shard closes, new shards open with parent links.
    pub fn reshard(&self, stream: &str, new_shard_count: u32) -> Result<(), SimError> {
        if new_shard_count == 0 {
            return Err(SimError::InvalidArgument("reshard to 0 shards".into()));
        }
        self.stream(stream)?.lock().reshard_uniform(new_shard_count);
        Ok(())
    }

    /// SplitShard on demand.
    pub fn split_shard(
        &self,
        stream: &str,
        shard: u32,
        new_starting_hash_key: u128,
    ) -> Result<(), SimError> {
        let s = self.stream(stream)?;
        let r = s.lock().split(shard, new_starting_hash_key);
        r.map_err(|e| self.reshard_error(&s, e))
    }

    /// MergeShards on demand.
    pub fn merge_shards(&self, stream: &str, shard: u32, adjacent: u32) -> Result<(), SimError> {
        let s = self.stream(stream)?;
        let r = s.lock().merge(shard, adjacent);
        r.map_err(|e| self.reshard_error(&s, e))
    }

    fn reshard_error(&self, s: &crate::state::Stream, e: ReshardError) -> SimError {
        SimError::InvalidArgument(e.message(&s.name, &self.reg.cfg.account_id))
    }

    /// All shards of the stream (closed ones included) in shard-index order; empty if the
    /// stream does not exist.
    pub fn shards(&self, stream: &str) -> Vec<ShardSnapshot> {
        self.reg
            .get(stream)
            .map(|s| s.lock().shards.iter().map(|sh| sh.snapshot()).collect())
            .unwrap_or_default()
    }

    /// Every stored record, grouped by shard in shard-index order, in sequence order within
    /// a shard; empty if the stream does not exist.
    pub fn records(&self, stream: &str) -> Vec<StoredRecord> {
        self.reg
            .get(stream)
            .map(|s| s.records())
            .unwrap_or_default()
    }

    /// Request and per-shard counters; default (all zero) if the stream does not exist.
    pub fn counters(&self, stream: &str) -> StreamCounters {
        self.reg
            .get(stream)
            .map(|s| s.counters())
            .unwrap_or_default()
    }

    /// Stops the server and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
            let _ = h.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}
