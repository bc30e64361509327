//! # kinesis-producer
//!
//! An in-process producer for Amazon Kinesis Data Streams (and Kinesis-compatible services):
//! shard-aware batching, exact per-shard rate limiting, retries with back-off until a record's
//! TTL, bounded memory with backpressure, optional per-shard ordering and KPL aggregation that
//! KCL consumers read.
//!
//! ```no_run
//! use kinesis_producer::{Producer, UserRecord};
//! use std::time::Duration;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let sdk_config = aws_config::load_from_env().await;
//! let producer = Producer::builder()
//!     .stream_name("orders")
//!     .max_buffered_time(Duration::from_millis(100))
//!     .build(&sdk_config)
//!     .await?;
//! let pending = producer.add(UserRecord::new("user-42", "payload")).await?;
//! let put = pending.await?;
//! println!("stored in {} as {}", put.shard_id, put.sequence_number);
//! producer.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! See [`producer`] for backpressure, cancellation and shutdown, and `ARCHITECTURE.md` for the
//! pipeline, step by step.

#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

pub mod admission;
pub mod aggregation;
mod buffer;
pub mod collector;
pub mod config;
pub mod congestion;
pub mod dead_letter;
mod engine;
pub mod error;
pub mod hash_key;
pub mod kinesis;
pub mod limiter;
pub mod limits;
pub mod metrics;
pub mod producer;
pub mod record;
pub mod retry;
pub mod shard_map;
pub mod stats;
pub mod stream_settings;

pub use aggregation::{deaggregate, deaggregate_strict, DeaggregateError, DeaggregatedRecord};
/// The type of [`UserRecord::partition_key`] (keys of up to 24 bytes are held inline).
pub use compact_str::CompactString;
pub use config::{AggregationScope, MetricsGranularity, Ordering, ProducerConfig, StreamRef};
pub use dead_letter::DeadLetter;
pub use error::{AddError, BuildError, ConfigError, RecordError, RecordLimitFrom, ValidationError};
pub use hash_key::HashKey;
pub use kinesis::{Kinesis, SdkKinesis};
pub use limits::MAX_PARTITION_KEY_CHARS;
pub use producer::{FailureCallback, PendingRecord, Producer, ProducerBuilder, ProducerClosed};
pub use record::{Attempt, PutOutcome, UserRecord};
pub use stats::{ShardStats, Stats};
