//! What the inspection API hands out: shard ids and sequence numbers as AWS formats them,
//! stored records, shard snapshots and counters. Plain data, copied out under the stream's
//! lock.

use std::time::SystemTime;

/// Formats a shard index as an AWS shard id (`shardId-000000000007`).
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

/// Parses `shardId-000000000007` (or a bare number) back to its index.
pub fn parse_shard_id(id: &str) -> Option<u32> {
    id.strip_prefix("shardId-").unwrap_or(id).parse().ok()
}

/// Formats an internal sequence counter as a 56-digit decimal string (AWS width), so that
/// string order equals numeric order.
pub fn sequence_number(n: u64) -> String {
    format!("49{n:054}")
}

/// Parses a sequence number produced by [`sequence_number`].
pub fn parse_sequence_number(s: &str) -> Option<u64> {
    if s.len() != 56 {
        return None;
    }
    s.strip_prefix("49")?.parse().ok()
}

/// One record as stored by the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Shard the record landed on.
    pub shard_id: String,
    /// Its sequence number (56 decimal digits).
    pub sequence_number: String,
    /// Partition key as sent.
    pub partition_key: String,
    /// Explicit hash key as sent, if any.
    pub explicit_hash_key: Option<String>,
    /// The decoded payload.
    pub data: Vec<u8>,
    /// Arrival time (ApproximateArrivalTimestamp).
    pub arrival: SystemTime,
}

/// A shard as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// `shardId-000000000000` style id.
    pub shard_id: String,
    /// Parent (split/merge/reshard source), if any.
    pub parent_shard_id: Option<String>,
    /// Second parent of a merge, if any.
    pub adjacent_parent_shard_id: Option<String>,
    /// First hash key of the shard's range.
    pub starting_hash_key: u128,
    /// Last hash key of the shard's range (inclusive).
    pub ending_hash_key: u128,
    /// False once the shard was closed by a reshard.
    pub open: bool,
    /// Starting sequence number.
    pub starting_sequence_number: String,
    /// Ending sequence number once closed.
    pub ending_sequence_number: Option<String>,
    /// Number of stored records.
    pub stored_records: usize,
}

/// Per-shard write counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Shard id.
    pub shard_id: String,
    /// Records accepted (stored).
    pub accepted_records: u64,
    /// Bytes (data + partition key) accepted.
    pub accepted_bytes: u64,
    /// Records rejected with `ProvisionedThroughputExceededException`.
    pub throttled_records: u64,
    /// Bytes of throttled records.
    pub throttled_bytes: u64,
    /// Records failed with an injected `InternalFailure`.
    pub failed_records: u64,
    /// Bytes of failed records.
    pub failed_bytes: u64,
}

/// Counters of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Requests naming the stream (all actions, including faulted ones).
    pub requests: u64,
    /// PutRecords and PutRecord requests that reached the stream.
    pub put_requests: u64,
    /// Injected HTTP 500 responses.
    pub http_500_injected: u64,
    /// Injected HTTP 503 responses.
    pub http_503_injected: u64,
    /// Connections dropped by `drop_connection_rate`.
    pub connections_dropped: u64,
    /// Requests dropped while the stream was unreachable.
    pub unreachable_dropped: u64,
    /// Per-shard counters in shard-index order (closed shards included).
    pub shards: Vec<ShardCounters>,
}

impl StreamCounters {
    /// Sum of accepted records over all shards.
    pub fn accepted_records(&self) -> u64 {
        self.shards.iter().map(|s| s.accepted_records).sum()
    }
    /// Sum of throttled records over all shards.
    pub fn throttled_records(&self) -> u64 {
        self.shards.iter().map(|s| s.throttled_records).sum()
    }
    /// Sum of injected-failure records over all shards.
    pub fn failed_records(&self) -> u64 {
        self.shards.iter().map(|s| s.failed_records).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_sort_as_strings() {
        let a = sequence_number(9);
        let b = sequence_number(10);
        assert_eq!(a.len(), 56);
        assert!(a < b);
        assert_eq!(parse_sequence_number(&b), Some(10));
    }

    #[test]
    fn shard_ids_round_trip() {
        assert_eq!(shard_id(7), "shardId-000000000007");
        assert_eq!(parse_shard_id("shardId-000000000007"), Some(7));
        assert_eq!(parse_shard_id("bogus"), None);
    }
}
