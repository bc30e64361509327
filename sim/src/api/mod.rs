//! The Kinesis awsJson1.1 API. Each action parses its request and validates it like AWS
//! (without any lock), resolves its stream and returns a [`Staged`] request; [`handle`]
//! then passes every staged request through the stream's fault gate — unreachable, latency,
//! HTTP 500/503, dropped connection — in this one place, and only then applies it under
//! the stream's lock. Actions live by family: [`put`], [`streams`], [`shards`], [`reads`].
//!
//! ```text
//! body ─▶ serde ─▶ validate ─▶ resolve stream ─▶ Staged ─▶ gate (here) ─▶ apply (lock) ─▶ JSON
//! ```

mod error;
mod put;
mod reads;
mod shards;
mod streams;
mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::state::{AtomicCounters, Registry, Stream, StreamStatus};
pub(crate) use error::{ApiError, Reply};
use validate::Rule;

pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// An action's outcome before or after the gate: `Err` carries an error reply or a drop.
pub(crate) type Res = Result<Reply, Reply>;

/// A validated request: the stream the fault gate applies to (none for account-level
/// actions) and the work to do once the gate lets it through.
pub(crate) struct Staged<'a> {
    stream: Option<Arc<Stream>>,
    write: bool,
    apply: Box<dyn FnOnce() -> Res + Send + 'a>,
}

impl<'a> Staged<'a> {
    /// A request on `stream` that reads or manages it.
    fn on(stream: &Arc<Stream>, apply: impl FnOnce() -> Res + Send + 'a) -> Self {
        Staged {
            stream: Some(stream.clone()),
            write: false,
            apply: Box::new(apply),
        }
    }
    /// A PutRecord(s) request on `stream` (counted in `put_requests`).
    fn write(stream: &Arc<Stream>, apply: impl FnOnce() -> Res + Send + 'a) -> Self {
        Staged {
            write: true,
            ..Self::on(stream, apply)
        }
    }
    /// An account-level request that no stream's faults apply to.
    fn ungated(apply: impl FnOnce() -> Res + Send + 'a) -> Self {
        Staged {
            stream: None,
            write: false,
            apply: Box::new(apply),
        }
    }
}

/// What an action's parsing and validation produce: a staged request, or the reply.
pub(crate) type Step<'a> = Result<Staged<'a>, Reply>;

type Action = for<'a> fn(&'a Arc<Registry>, &'a [u8]) -> Step<'a>;

/// Every action by name.
const ACTIONS: &[(&str, Action)] = &[
    ("PutRecords", put::put_records),
    ("PutRecord", put::put_record),
    ("CreateStream", streams::create_stream),
    ("DeleteStream", streams::delete_stream),
    ("DescribeStreamSummary", streams::describe_stream_summary),
    ("DescribeStream", streams::describe_stream),
    ("ListStreams", streams::list_streams),
    ("ListShards", shards::list_shards),
    ("GetShardIterator", reads::get_shard_iterator),
    ("GetRecords", reads::get_records),
    ("UpdateShardCount", shards::update_shard_count),
    ("SplitShard", shards::split_shard),
    ("MergeShards", shards::merge_shards),
    ("UpdateStreamMode", streams::update_stream_mode),
    ("UpdateMaxRecordSize", streams::update_max_record_size),
    (
        "UpdateStreamRecordDistributionStrategy",
        streams::update_stream_record_distribution_strategy,
    ),
];

/// Dispatches one request by action name (the part after `Kinesis_20131202.`).
pub(crate) async fn handle(reg: &Arc<Registry>, action: &str, body: &[u8]) -> Reply {
    let Some((_, act)) = ACTIONS.iter().find(|(name, _)| *name == action) else {
        return ApiError::unknown_operation().into();
    };
    let staged = match act(reg, body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let drop_after = match &staged.stream {
        Some(stream) => match gate(reg, stream, staged.write).await {
            Ok(drop_after) => drop_after,
            Err(r) => return r,
        },
        None => false,
    };
    let reply = (staged.apply)().unwrap_or_else(|r| r);
    if drop_after {
        Reply::Drop
    } else {
        reply
    }
}

fn ok(v: &impl Serialize) -> Res {
    Ok(Reply::Ok(serde_json::to_vec(v).expect("json")))
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    let body = if body.is_empty() { &b"{}"[..] } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::serialization(e.to_string()).into())
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Epoch seconds as a `SystemTime`; an error (not a panic) when out of range.
fn epoch_time(t: f64) -> Result<SystemTime, Reply> {
    Duration::try_from_secs_f64(t.max(0.0))
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .ok_or_else(|| ApiError::invalid(format!("Timestamp {t} is out of range.")).into())
}

// ---------------------------------------------------------------------------------------
// Stream resolution

/// The `StreamName` / `StreamARN` pair most actions take.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct StreamRef {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

impl StreamRef {
    fn resolve(&self, reg: &Registry) -> Result<Arc<Stream>, Reply> {
        resolve(reg, self.stream_name.as_deref(), self.stream_arn.as_deref())
    }
}

/// The stream named by `name` (preferred) or `arn`, or the error AWS gives.
fn resolve(reg: &Registry, name: Option<&str>, arn: Option<&str>) -> Result<Arc<Stream>, Reply> {
    let name = match (name, arn) {
        (Some(""), _) => {
            return Err(validate::fail(Some(&""), &"streamName", Rule::LengthAtLeast(1)).into())
        }
        (Some(n), _) => n,
        (None, Some(arn)) => {
            if !validate::is_stream_arn(arn) {
                let rule = Rule::Pattern(validate::STREAM_ARN_PATTERN);
                return Err(validate::fail(Some(&arn), &"streamARN", rule).into());
            }
            match arn.split_once(":stream/") {
                Some((_, n)) if reg.arn(n) == arn => n,
                _ => return Err(ApiError::not_found(format!("Stream arn {arn} not found.")).into()),
            }
        }
        (None, None) => return Err(validate::fail(None, &"streamName", Rule::NotNull).into()),
    };
    reg.get(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "Stream {name} under account {} not found.",
            reg.cfg.account_id
        ))
        .into()
    })
}

/// The stream of an action that takes only a `StreamARN`.
fn resolve_arn(reg: &Registry, arn: Option<&str>) -> Result<Arc<Stream>, Reply> {
    let arn = validate::required(arn, &"streamARN")?;
    resolve(reg, None, Some(arn))
}

/// `ResourceInUseException` for a stream that is not `ACTIVE`.
fn not_active(reg: &Registry, s: &Stream, status: StreamStatus) -> Reply {
    ApiError::in_use(format!(
        "Stream {} under account {} not ACTIVE, instead in state {}",
        s.name,
        reg.cfg.account_id,
        status.as_str()
    ))
    .into()
}

/// Starts an update (reshard, mode change) of an `ACTIVE` stream: `UPDATING` for the
/// configured time, then `apply`; `ResourceInUseException` otherwise.
fn update(
    reg: &Registry,
    s: &Arc<Stream>,
    apply: impl FnOnce(&Stream) + Send + 'static,
) -> Result<(), Reply> {
    s.update_after(reg.cfg.transitions.updating, apply)
        .map_err(|status| not_active(reg, s, status))
}

// ---------------------------------------------------------------------------------------
// The fault gate

/// Applies the stream's faults: unreachable, latency, HTTP 500/503, dropped connections.
/// `Ok(true)`: proceed, then drop the connection instead of answering.
async fn gate(reg: &Registry, stream: &Stream, is_write: bool) -> Result<bool, Reply> {
    let c = &stream.counters;
    AtomicCounters::bump(&c.requests);
    if is_write {
        AtomicCounters::bump(&c.put_requests);
    }
    let f = stream.faults();
    if f.unreachable_until.is_some_and(|u| Instant::now() < u) || reg.unreachable() {
        AtomicCounters::bump(&c.unreachable);
        return Err(Reply::Drop);
    }
    enum Decision {
        Proceed(bool),
        Http500,
        Http503,
        Drop,
    }
    let (delay, decision) = {
        let mut rng = rand::rng();
        let mut delay = f.latency;
        if !f.latency_jitter.is_zero() {
            delay += f.latency_jitter.mul_f64(rng.random::<f64>());
        }
        if f.latency_spike_rate > 0.0 && rng.random::<f64>() < f.latency_spike_rate {
            delay += f.latency_spike;
        }
        let decision = if f.http_500_rate > 0.0 && rng.random::<f64>() < f.http_500_rate {
            Decision::Http500
        } else if f.http_503_rate > 0.0 && rng.random::<f64>() < f.http_503_rate {
            Decision::Http503
        } else if f.drop_connection_rate > 0.0 && rng.random::<f64>() < f.drop_connection_rate {
            if is_write && rng.random::<bool>() {
                Decision::Proceed(true)
            } else {
                Decision::Drop
            }
        } else {
            Decision::Proceed(false)
        };
        (delay, decision)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match decision {
        Decision::Proceed(drop_after) => {
            if drop_after {
                AtomicCounters::bump(&c.dropped);
            }
            Ok(drop_after)
        }
        Decision::Http500 => {
            AtomicCounters::bump(&c.http_500);
            Err(ApiError::internal_failure().into())
        }
        Decision::Http503 => {
            AtomicCounters::bump(&c.http_503);
            Err(ApiError::new(503, "ServiceUnavailable", "Service is unavailable.").into())
        }
        Decision::Drop => {
            AtomicCounters::bump(&c.dropped);
            Err(Reply::Drop)
        }
    }
}
