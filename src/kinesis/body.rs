//! The PutRecords request body (AWS JSON 1.1), written once into a buffer of its exact size.
//!
//! The SDK's serializer builds an entry object per record (the partition key copied into a
//! `String`) and grows its output by doubling, copying the body each time; for a 5 MiB request
//! that is about 8 MiB held and 5 MiB copied. Here the length is worked out first, then each
//! record's data is base64-encoded straight into its place.

use super::PutRecordsEntry;
use crate::config::StreamRef;
use base64_simd::STANDARD;
use bytes::Bytes;

/// The JSON body of a PutRecords request for `records` to `stream`:
/// `{"StreamName":…,"Records":[{"Data":…,"PartitionKey":…,"ExplicitHashKey":…},…]}`, with
/// `StreamARN` for an ARN, no `PartitionKey` for an empty key (an `AUTO` stream's unkeyed
/// record) and no `ExplicitHashKey` where there is none.
pub(crate) fn put_records_body(stream: &StreamRef, records: &[PutRecordsEntry]) -> Bytes {
    let (field, id) = match stream {
        StreamRef::Name(name) => (STREAM_NAME, name.as_str()),
        StreamRef::Arn(arn) => (STREAM_ARN, arn.as_str()),
    };
    let len = OPEN.len()
        + field.len()
        + quoted_len(id)
        + RECORDS.len()
        + records.len().saturating_sub(1)
        + records.iter().map(entry_len).sum::<usize>()
        + CLOSE.len();
    let mut body = Vec::with_capacity(len);
    body.put(OPEN);
    body.put(field);
    body.quoted(id);
    body.put(RECORDS);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.put(b",");
        }
        body.put(DATA);
        STANDARD.encode_append(&r.data, &mut body);
        body.put(b"\"");
        if !r.partition_key.is_empty() {
            body.put(PARTITION_KEY);
            body.quoted(&r.partition_key);
        }
        if let Some(h) = &r.explicit_hash_key {
            body.put(EXPLICIT_HASH_KEY);
            body.quoted(h);
        }
        body.put(b"}");
    }
    body.put(CLOSE);
    debug_assert_eq!(body.len(), len, "the body's length was worked out wrong");
    Bytes::from(body)
}

const OPEN: &[u8] = b"{";
const STREAM_NAME: &[u8] = b"\"StreamName\":";
const STREAM_ARN: &[u8] = b"\"StreamARN\":";
const RECORDS: &[u8] = b",\"Records\":[";
const CLOSE: &[u8] = b"]}";
const DATA: &[u8] = b"{\"Data\":\"";
const PARTITION_KEY: &[u8] = b",\"PartitionKey\":";
const EXPLICIT_HASH_KEY: &[u8] = b",\"ExplicitHashKey\":";

fn entry_len(r: &PutRecordsEntry) -> usize {
    let key = if r.partition_key.is_empty() {
        0
    } else {
        PARTITION_KEY.len() + quoted_len(&r.partition_key)
    };
    let hash = r
        .explicit_hash_key
        .as_deref()
        .map_or(0, |h| EXPLICIT_HASH_KEY.len() + quoted_len(h));
    DATA.len() + STANDARD.encoded_length(r.data.len()) + 1 + key + hash + 1
}

/// How `b` is written inside a JSON string: `"` and `\` get a backslash, other control
/// characters are `\u00XX`; everything else (UTF-8 included) goes as it is.
fn escaped(b: u8) -> Option<&'static [u8]> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const fn table() -> [[u8; 6]; 32] {
        let mut t = [[0; 6]; 32];
        let mut i = 0;
        while i < 32 {
            t[i] = [b'\\', b'u', b'0', b'0', HEX[i >> 4], HEX[i & 15]];
            i += 1;
        }
        t
    }
    static CONTROL: [[u8; 6]; 32] = table();
    match b {
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        0..=0x1f => Some(&CONTROL[b as usize]),
        _ => None,
    }
}

/// The length of `s` as a JSON string, quotes included.
fn quoted_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| escaped(b).map_or(1, <[u8]>::len))
        .sum::<usize>()
}

/// Appends to a body whose capacity is already its final length.
trait Put {
    fn put(&mut self, bytes: &[u8]);
    fn quoted(&mut self, s: &str);
}

impl Put for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn quoted(&mut self, s: &str) {
        self.put(b"\"");
        let s = s.as_bytes();
        let mut plain = 0;
        for (i, &b) in s.iter().enumerate() {
            if let Some(esc) = escaped(b) {
                self.put(&s[plain..i]);
                self.put(esc);
                plain = i + 1;
            }
        }
        self.put(&s[plain..]);
        self.put(b"\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn entry(data: &[u8], key: &str, hash: Option<&str>) -> PutRecordsEntry {
        PutRecordsEntry {
            data: Bytes::copy_from_slice(data),
            partition_key: key.to_string(),
            explicit_hash_key: hash.map(str::to_string),
        }
    }

    fn parse(body: &Bytes) -> Value {
        serde_json::from_slice(body).expect("the body is JSON")
    }

    #[test]
    fn a_body_reads_back_as_the_records_it_was_made_from() {
        use base64::Engine as _;
        let records = vec![
            entry(b"", "k", None),
            entry(b"a", "key \"quoted\" \\ back\nslash\u{1}", None),
            entry(
                &[0xff; 100],
                "ключ 🔑",
                Some("340282366920938463463374607431768211455"),
            ),
            entry(&(0..=255).collect::<Vec<u8>>(), "", Some("0")),
        ];
        let body = put_records_body(&StreamRef::Name("my \"stream\"".into()), &records);
        let v = parse(&body);
        assert_eq!(v["StreamName"], "my \"stream\"");
        assert!(v.get("StreamARN").is_none());
        let got = v["Records"].as_array().expect("Records");
        assert_eq!(got.len(), records.len());
        for (g, r) in got.iter().zip(&records) {
            let data = base64::engine::general_purpose::STANDARD
                .decode(g["Data"].as_str().expect("Data"))
                .expect("base64");
            assert_eq!(data, &r.data[..]);
            match g.get("PartitionKey") {
                Some(k) => assert_eq!(k, r.partition_key.as_str()),
                None => assert!(r.partition_key.is_empty(), "key dropped: {r:?}"),
            }
            assert_eq!(
                g.get("ExplicitHashKey").and_then(Value::as_str),
                r.explicit_hash_key.as_deref()
            );
        }
    }

    #[test]
    fn a_stream_given_by_arn_is_sent_as_stream_arn() {
        let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/s";
        let body = put_records_body(&StreamRef::Arn(arn.into()), &[entry(b"x", "k", None)]);
        let v = parse(&body);
        assert_eq!(v["StreamARN"], arn);
        assert!(v.get("StreamName").is_none());
    }

    #[test]
    fn every_control_character_is_escaped() {
        let key: String = (0u8..0x20)
            .map(char::from)
            .chain("\"\\/é".chars())
            .collect();
        let body = put_records_body(&StreamRef::Name("s".into()), &[entry(b"", &key, None)]);
        assert!(
            body.iter().all(|&b| b >= 0x20),
            "a raw control byte in {body:?}"
        );
        assert_eq!(parse(&body)["Records"][0]["PartitionKey"], key.as_str());
    }

    #[test]
    fn an_empty_request_is_valid_json() {
        let v = parse(&put_records_body(&StreamRef::Name("s".into()), &[]));
        assert_eq!(v["Records"], Value::Array(vec![]));
    }
}
