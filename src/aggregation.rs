//! TEMPORARY placeholder while the real module is written; replaced before commit.
#![allow(missing_docs, dead_code)]
use bytes::Bytes;
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
pub enum TryPush {
    Added,
    NoCapacity,
}
pub struct Aggregate {
    pub partition_key: String,
    pub data: Bytes,
    pub count: usize,
}
pub struct Aggregator {
    max_size: usize,
    max_count: usize,
}
impl Aggregator {
    pub fn new(max_size: usize, max_count: usize) -> Self {
        Aggregator {
            max_size,
            max_count,
        }
    }
    pub fn try_push(&mut self, _pk: &str, _ehk: Option<&str>, _data: &[u8]) -> TryPush {
        TryPush::NoCapacity
    }
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        true
    }
    pub fn record_size(&self) -> usize {
        0
    }
    pub fn finish(&mut self) -> Option<Aggregate> {
        None
    }
}
