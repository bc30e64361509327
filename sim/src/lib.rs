//! # kinesis-sim
//!
//! A simulated Amazon Kinesis Data Streams endpoint that the unmodified `aws-sdk-kinesis`
//! talks to over real HTTP (awsJson1.1: `POST /`, `X-Amz-Target: Kinesis_20131202.<Action>`,
//! `Content-Type: application/x-amz-json-1.1`, blobs as base64). It keeps every record per
//! shard, enforces the per-shard write limits per record, validates requests like AWS, and
//! injects faults on demand. Use it in tests and benchmarks, or run the `kinesis-sim` binary.
//!
//! ```text
//! SDK ──HTTP──▶ server (hyper, HTTP/1.1 + h2c) ──▶ api (parse, validate, fault gate)
//!                                                      │
//!                                   per-stream Mutex ──▶ state (shards, token buckets, records)
//! ```
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use kinesis_sim::{Faults, SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default()).await?;
//! sim.create_stream("orders", 4).unwrap();
//! sim.set_faults("orders", Faults { internal_failure_rate: 0.1, ..Faults::default() }).unwrap();
//! // point aws-sdk-kinesis at sim.endpoint_url() ...
//! assert!(sim.records("orders").is_empty());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## API
//! * [`Simulator::start`] binds `127.0.0.1:port` (0 = free port); [`Simulator::endpoint_url`].
//! * Streams: [`Simulator::create_stream`], [`Simulator::create_stream_with`]
//!   ([`StreamOptions`]: max record size, per-shard [`RateLimits`], [`StreamMode`],
//!   [`RecordDistribution`]), [`Simulator::delete_stream`].
//! * Live settings: [`Simulator::set_stream_mode`], [`Simulator::set_record_distribution`],
//!   [`Simulator::set_max_record_size_kib`], [`Simulator::stream_settings`] (the same rules
//!   as the API actions); [`Simulator::stream_status`] with [`SimConfig::transitions`].
//! * Faults: [`Simulator::set_faults`] with [`Faults`] (per-record `InternalFailure`, HTTP
//!   500/503, latency with jitter and spikes, dropped connections, unreachable window,
//!   scheduled reshard, competing writer), [`Simulator::set_unreachable_until`] for the whole
//!   endpoint.
//! * Resharding on demand: [`Simulator::reshard`], [`Simulator::split_shard`],
//!   [`Simulator::merge_shards`].
//! * Inspection: [`Simulator::shards`], [`Simulator::records`], [`Simulator::counters`].
//!
//! Actions: CreateStream, DeleteStream, DescribeStream, DescribeStreamSummary, ListStreams,
//! ListShards (paging, ShardFilter), PutRecords, PutRecord, GetShardIterator, GetRecords,
//! UpdateShardCount, SplitShard, MergeShards, UpdateStreamMode, UpdateMaxRecordSize,
//! UpdateStreamRecordDistributionStrategy. Paging as the API defines it: ListShards at most
//! 1000 a page, DescribeStream 100 (`HasMoreShards`), ListStreams by `Limit`.
//!
//! ## Semantics
//! * Hash ranges: shard `i` of `n` covers `[i*2^128/n, (i+1)*2^128/n - 1]`; routing by MD5 of
//!   the partition key or by `ExplicitHashKey` (binary search over the open shards); under
//!   `AUTO` on a pseudo-random open shard whatever the keys.
//! * Record size: each stream's `MaxRecordSizeInKiB` (1024-10240); PutRecords at most 500
//!   records and 10 MiB of data and keys.
//! * Sequence numbers: 56 decimal digits, unique per stream, increasing per shard.
//! * Limits: a token bucket per shard (records and data+key bytes, capacity one second of
//!   rate, continuous refill), or fixed one-second windows (`ThrottleModel`); an over-budget
//!   record fails with
//!   `ProvisionedThroughputExceededException` while the others in the request succeed.
//! * Uniform resharding closes every open shard; a child's parent is the old shard holding its
//!   first hash key and its adjacent parent the one holding its last key (a child that spans
//!   more than two old shards lists only those two).
//!
//! [`emulators`] starts kinesalite and kinesis-local for conformance tests.

#![warn(missing_docs)]

mod api;
pub mod config;
pub mod emulators;
pub mod hash;
mod server;
mod state;

pub use config::{
    Faults, RateLimits, RecordDistribution, SimConfig, StreamMode, StreamOptions, StreamSettings,
    ThrottleModel, Transitions,
};
pub use server::{Simulator, TARGET_PREFIX};
pub use state::{
    parse_sequence_number, sequence_number, shard_id, ShardCounters, ShardSnapshot, SimError,
    StoredRecord, StreamCounters, StreamStatus,
};
