//! KPL aggregation: many user records packed into one Kinesis record, and back.
//!
//! # Format
//!
//! An aggregate is the data blob of one ordinary Kinesis record:
//!
//! ```text
//! +-------------+------------------------------------+------------------------+
//! | F3 89 9A C2 | protobuf AggregatedRecord          | MD5(protobuf bytes)    |
//! |   4 bytes   | (varint/length-delimited fields)   | 16 bytes               |
//! +-------------+------------------------------------+------------------------+
//!
//! AggregatedRecord {
//!     1: repeated string partition_key_table;       // deduplicated keys
//!     2: repeated string explicit_hash_key_table;   // only keys that records carried
//!     3: repeated Record records;
//! }
//! Record {
//!     1: required uint64 partition_key_index;       // into partition_key_table
//!     2: optional uint64 explicit_hash_key_index;   // omitted when the record had none
//!     3: required bytes  data;
//!     4: repeated Tag    tags;                      // never written, skipped on read
//! }
//! Tag { 1: required string key; 2: optional string value; }
//! ```
//!
//! The Kinesis record that carries an aggregate uses the first user record's partition key as
//! its own (outer) partition key; the service counts that key plus the whole blob against the
//! record size limit, and that sum is what [`Aggregator::record_size`] reports.
//!
//! # One aggregate, one shard
//!
//! Kinesis routes the aggregate as a single record, by its outer key. The KCL then drops every
//! sub-record whose own hash key (its explicit hash key, or the MD5 of its partition key) lies
//! outside the range of the shard that holds the aggregate. So one aggregate must hold records of
//! **one predicted shard only**, and its outer `ExplicitHashKey` must lie inside that shard's hash
//! range. The engine keeps one shared [`Aggregator`]: it fills it from one shard's queue at a
//! time and finishes it before turning to another shard, so an aggregate never mixes shards, and
//! it sets the outer hash key to the first sub-record's. The aggregator itself knows nothing of
//! shards.
//!
//! Under [`crate::config::AggregationScope::PartitionKey`] the engine narrows this further: one
//! aggregate holds records of one partition key (and one hash key), so the outer partition key,
//! the first record's, is every sub-record's, and the outer record carries the records' explicit
//! hash key only if they have one (the key's MD5 routes it to the same shard otherwise).
//!
//! # Why the protobuf is written by hand
//!
//! The engine must know the *exact* size an aggregate will have before it adds a record, on
//! every add, so that an aggregate never overshoots the record limit and never needs to be
//! re-encoded. A general protobuf crate computes sizes by walking (or encoding) the whole message,
//! which is quadratic when asked after every add. The subset used here is three field kinds
//! (varint, bytes, string), so the encoder appends each record's bytes once into a reusable
//! buffer and keeps the running size with constant work per record; [`Aggregator::finish`]
//! concatenates the buffers into one allocation of exactly the final size. The decoder is
//! hand-written for the same reason it must be strict: every length is checked against the input
//! before it is used, so hostile input can neither panic it nor make it allocate.
//!
//! # Files
//!
//! - `wire`: format constants, field tags, varints, the bounds-checked reader.
//! - `encode`: [`Aggregator`] and its exact size plan.
//! - `decode`: [`deaggregate`] and its errors.
//! - `testing` (tests and the `testing` feature only): helpers shared by the tests.

mod decode;
mod encode;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod wire;

pub use decode::{deaggregate, deaggregate_strict, DeaggregateError, DeaggregatedRecord};
pub use encode::{Aggregate, Aggregator, TryPush};
pub use wire::MAGIC;
