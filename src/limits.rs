//! The Kinesis Data Streams API's limits, in one place. Every check in `add`, every bound of the
//! collector and every default of [`crate::config`] that mirrors the service refers to these.

/// Most records in one PutRecords request.
pub const MAX_RECORDS_PER_REQUEST: usize = 500;
/// Most bytes (data + partition keys) in one PutRecords request the API allows: 10 MiB.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// A stream's record size limit (data + partition key) when the service does not report
/// `MaxRecordSizeInKiB`: 1 MiB.
pub const DEFAULT_RECORD_SIZE_LIMIT: usize = 1024 * 1024;
/// Longest partition key, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Per-shard write limit in records per second.
pub const SHARD_RECORDS_PER_SEC: u64 = 1_000;
/// Per-shard write limit in bytes per second (data + partition key).
pub const SHARD_BYTES_PER_SEC: u64 = 1024 * 1024;
