//! The floor's encoding, shared by `bench_e2e`'s `floor_us_per_record` and `queue_floor`: the
//! KPL aggregate and the PutRecords JSON entry, written here independently of the library.

use md5::{Digest, Md5};

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Encodes `records` (partition key, data) into `agg` as one KPL aggregate, once, into a
/// buffer of its exact size: the magic, a key table entry per record, the records, and the
/// MD5 checksum.
pub fn encode_aggregate<'a, I>(agg: &mut Vec<u8>, records: I)
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let record_len = |j: usize, data: &[u8]| {
        1 + varint_len(j as u64) + 1 + varint_len(data.len() as u64) + data.len()
    };
    let mut size = 4 + 16;
    for (j, (key, data)) in records.clone().enumerate() {
        size += 1 + varint_len(key.len() as u64) + key.len();
        let r = record_len(j, data);
        size += 1 + varint_len(r as u64) + r;
    }
    agg.clear();
    agg.reserve_exact(size);
    agg.extend_from_slice(&[0xF3, 0x89, 0x9A, 0xC2]);
    for (key, _) in records.clone() {
        agg.push(0x0A);
        varint(agg, key.len() as u64);
        agg.extend_from_slice(key);
    }
    for (j, (_, data)) in records.enumerate() {
        agg.push(0x1A);
        varint(agg, record_len(j, data) as u64);
        agg.push(0x08);
        varint(agg, j as u64);
        agg.push(0x1A);
        varint(agg, data.len() as u64);
        agg.extend_from_slice(data);
    }
    let digest = Md5::digest(&agg[4..]);
    agg.extend_from_slice(&digest);
}

/// Appends one PutRecords JSON entry, as the request body carries it.
pub fn json_entry(body: &mut String, data: &[u8], key: &str, hash: Option<u128>) {
    use base64::Engine as _;
    use std::fmt::Write as _;
    if !body.ends_with('[') {
        body.push(',');
    }
    body.push_str("{\"Data\":\"");
    base64::engine::general_purpose::STANDARD.encode_string(data, body);
    body.push_str("\",\"PartitionKey\":\"");
    body.push_str(key);
    body.push('"');
    if let Some(h) = hash {
        let _ = write!(body, ",\"ExplicitHashKey\":\"{h}\"");
    }
    body.push('}');
}
