//! PutRecords on the wire (AWS JSON 1.1), written and read here rather than by the SDK.
//!
//! The SDK still resolves the endpoint, signs, sends and maps errors, but for a request with no
//! records: an interceptor swaps in the body written here before signing, and on a 200 takes the
//! response body before the SDK parses it (leaving it an empty `Records`), to be parsed here.
//!
//! - **Request.** The SDK's serializer builds an entry object per record (the partition key
//!   copied into a `String`) and grows its output by doubling, copying the body each time; for a
//!   5 MiB request that is about 8 MiB held and 5 MiB copied. Here the length is worked out
//!   first, then each record's data is base64-encoded straight into its place.
//! - **Response.** The SDK makes two `String`s per result; here (`super::results`) the results
//!   are read in one pass, and a shard's id (or an error code) repeated in a row is one shared
//!   allocation.

use super::results::parse_results;
use super::{ClientError, ClientErrorKind, PutRecordsEntry, PutRecordsResultEntry};
use crate::config::StreamRef;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use aws_smithy_types::config_bag::ConfigBag;
use base64_simd::STANDARD;
use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// The interceptor of one PutRecords call: its request body, and the response body it took.
#[derive(Debug)]
pub(crate) struct Wire {
    body: Bytes,
    response: Mutex<Option<SdkBody>>,
}

/// What the SDK is left to parse in place of a successful response.
const NO_RECORDS: &str = r#"{"Records":[]}"#;

impl Wire {
    /// The interceptor for a call sending `records` to `stream`.
    pub(crate) fn new(stream: &StreamRef, records: &[PutRecordsEntry]) -> Arc<Self> {
        Arc::new(Wire {
            body: put_records_body(stream, records),
            response: Mutex::new(None),
        })
    }

    /// The results of the call's successful response, read and parsed; `n` were sent.
    pub(crate) async fn results(
        &self,
        n: usize,
    ) -> Result<Vec<PutRecordsResultEntry>, ClientError> {
        let body = self.response.lock().expect("wire").take().ok_or_else(|| {
            ClientError::new(
                ClientErrorKind::Service,
                "PutRecords answered without a body",
            )
        })?;
        let body = ByteStream::new(body)
            .collect()
            .await
            .map_err(|e| {
                ClientError::new(
                    ClientErrorKind::Connection,
                    format!("reading the PutRecords response: {e}"),
                )
            })?
            .into_bytes();
        parse_results(&body, n)
    }
}

/// Shared between the call's configuration and the caller, who reads the results.
#[derive(Debug)]
pub(crate) struct WireInterceptor(pub(crate) Arc<Wire>);

impl Intercept for WireInterceptor {
    fn name(&self) -> &'static str {
        "kinesis_producer::PutRecordsWire"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        request
            .headers_mut()
            .insert("content-length", self.0.body.len().to_string());
        *request.body_mut() = SdkBody::from(self.0.body.clone());
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if response.status().is_success() {
            let body = std::mem::replace(response.body_mut(), SdkBody::from(NO_RECORDS));
            *self.0.response.lock().expect("wire") = Some(body);
        }
        Ok(())
    }
}

/// The JSON body of a PutRecords request for `records` to `stream`:
/// `{"StreamName":…,"Records":[{"Data":…,"PartitionKey":…,"ExplicitHashKey":…},…]}`, with
/// `StreamARN` for an ARN, no `PartitionKey` for an empty key (an `AUTO` stream's unkeyed
/// record) and no `ExplicitHashKey` where there is none. The buffer is allocated at the body's
/// length; only a string that needs escaping (a quote, a backslash or a control character in a
/// key, rare) can make it grow.
fn put_records_body(stream: &StreamRef, records: &[PutRecordsEntry]) -> Bytes {
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
    body.extend_from_slice(OPEN);
    body.extend_from_slice(field);
    push_quoted(&mut body, id);
    body.extend_from_slice(RECORDS);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(DATA);
        STANDARD.encode_append(&r.data, &mut body);
        body.push(b'"');
        if !r.partition_key.is_empty() {
            body.extend_from_slice(PARTITION_KEY);
            push_quoted(&mut body, &r.partition_key);
        }
        if let Some(h) = &r.explicit_hash_key {
            body.extend_from_slice(EXPLICIT_HASH_KEY);
            push_quoted(&mut body, h);
        }
        body.push(b'}');
    }
    body.extend_from_slice(CLOSE);
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

/// The length of `s` as a JSON string, quotes included, when nothing in it needs escaping.
fn quoted_len(s: &str) -> usize {
    s.len() + 2
}

/// Appends `s` as a JSON string (`serde_json` escapes what needs it).
fn push_quoted(body: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(body, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn entry(data: &[u8], key: &str, hash: Option<&str>) -> PutRecordsEntry {
        PutRecordsEntry {
            data: Bytes::copy_from_slice(data),
            partition_key: key.into(),
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

    proptest::proptest! {
        /// Any keys (any Unicode, control characters included), data and hash keys: the body
        /// is JSON and reads back as the records it was made from.
        #[test]
        fn any_records_read_back(
            stream in "\\PC{0,20}",
            records in proptest::collection::vec(
                (
                    proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                    "[\\x00-\\x7f]{0,5}\\PC{0,10}",
                    proptest::option::of("[0-9]{1,39}"),
                ),
                0..20,
            ),
        ) {
            use base64::Engine as _;
            let records: Vec<PutRecordsEntry> = records
                .iter()
                .map(|(data, key, hash)| entry(data, key, hash.as_deref()))
                .collect();
            let v = parse(&put_records_body(&StreamRef::Name(stream.clone()), &records));
            proptest::prop_assert_eq!(v["StreamName"].as_str(), Some(stream.as_str()));
            let got = v["Records"].as_array().expect("Records");
            proptest::prop_assert_eq!(got.len(), records.len());
            for (g, r) in got.iter().zip(&records) {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(g["Data"].as_str().expect("Data"))
                    .expect("base64");
                proptest::prop_assert_eq!(&data[..], &r.data[..]);
                proptest::prop_assert_eq!(
                    g.get("PartitionKey").and_then(Value::as_str).unwrap_or(""),
                    r.partition_key.as_str()
                );
                proptest::prop_assert_eq!(
                    g.get("ExplicitHashKey").and_then(Value::as_str),
                    r.explicit_hash_key.as_deref()
                );
            }
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
