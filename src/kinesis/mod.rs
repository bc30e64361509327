//! The I/O seam: the three Kinesis calls the producer makes, behind one object-safe trait.
//!
//! [`SdkKinesis`] implements it over `aws_sdk_kinesis::Client` with the SDK's own retries
//! disabled: the engine retries record by record, and an SDK retry of a whole PutRecords request
//! would resend records that already succeeded. Tests implement [`Kinesis`] with scripted fakes.

use crate::config::StreamRef;
use crate::shard_map::ShardInfo;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{RecordDistributionStrategy, StreamMode};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use bytes::Bytes;
use compact_str::CompactString;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

mod put_records;
mod results;

/// A boxed, sendable future: what the seam's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One Kinesis record of a PutRecords request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRecordsEntry {
    /// The record's data (an aggregate or one user record's data).
    pub data: Bytes,
    /// Its partition key (empty: none is sent). Inline up to 24 bytes, so a record's key goes
    /// from `add` to the request body without an allocation.
    pub partition_key: CompactString,
    /// Its explicit hash key (decimal), if any.
    pub explicit_hash_key: Option<String>,
}

/// A PutRecords request.
#[derive(Clone, Debug)]
pub struct PutRecordsRequest {
    /// The stream.
    pub stream: StreamRef,
    /// Up to 500 records.
    pub records: Vec<PutRecordsEntry>,
}

/// A sequence number as the service answered it. Read from a response, it is a slice of the
/// response's body, so a result costs no allocation until a record's future asks for it
/// ([`PutOutcome::sequence_number`](crate::PutOutcome)); fire-and-forget records never do.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Bytes);

impl SequenceNumber {
    /// A slice of `body` holding `text` (which must lie within it).
    pub(crate) fn within(body: &Bytes, text: &str) -> Self {
        SequenceNumber(body.slice_ref(text.as_bytes()))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        // Only ever made from a `str`: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl From<&str> for SequenceNumber {
    fn from(text: &str) -> Self {
        SequenceNumber(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<String> for SequenceNumber {
    fn from(text: String) -> Self {
        SequenceNumber(Bytes::from(text))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The result of one record of a PutRecords request, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutRecordsResultEntry {
    /// Stored.
    Ok {
        /// The shard that stored it.
        shard_id: Arc<str>,
        /// Its sequence number.
        sequence_number: SequenceNumber,
    },
    /// Not stored.
    Err {
        /// `ErrorCode`, e.g. `ProvisionedThroughputExceededException`.
        code: Arc<str>,
        /// `ErrorMessage`.
        message: Arc<str>,
    },
}

/// What the producer needs from `DescribeStreamSummary`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// `MaxRecordSizeInKiB`, where the service reports it.
    pub max_record_size_kib: Option<u32>,
    /// `RecordDistributionStrategy` is `AUTO`: the service ignores keys when placing records.
    pub auto_distribution: bool,
    /// `StreamModeDetails.StreamMode` is `ON_DEMAND` (`Some(false)`: `PROVISIONED`), where the
    /// service reports it.
    pub on_demand: Option<bool>,
    /// `StreamStatus`, e.g. `ACTIVE`.
    pub status: String,
}

/// How a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// The service answered with an error.
    Service,
    /// No answer in time.
    Timeout,
    /// The connection failed or was dropped.
    Connection,
    /// The request could not be built or signed (e.g. no credentials).
    Construction,
    /// The call was abandoned because the runtime shut down.
    Cancelled,
}

/// A failed call: kind, error code and message when the service sent them, HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    /// How it failed.
    pub kind: ClientErrorKind,
    /// The service's error code (`__type`), if any.
    pub code: Option<Arc<str>>,
    /// What happened.
    pub message: Arc<str>,
    /// HTTP status, if a response arrived.
    pub status: Option<u16>,
}

impl ClientError {
    /// An error of `kind` with a message and no code or status.
    pub fn new(kind: ClientErrorKind, message: impl Into<Arc<str>>) -> Self {
        ClientError {
            kind,
            code: None,
            message: message.into(),
            status: None,
        }
    }

    /// A service error with a code and HTTP status.
    pub fn service(code: &str, message: &str, status: u16) -> Self {
        ClientError {
            kind: ClientErrorKind::Service,
            code: Some(code.into()),
            message: message.into(),
            status: Some(status),
        }
    }

    /// The code to report: the service's, or one naming the kind (`Timeout`, `ConnectionError`,
    /// `HttpError500`, ...).
    pub fn code_or_kind(&self) -> Arc<str> {
        if let Some(code) = &self.code {
            return code.clone();
        }
        match (self.kind, self.status) {
            (ClientErrorKind::Timeout, _) => "Timeout".into(),
            (ClientErrorKind::Connection, _) => "ConnectionError".into(),
            (ClientErrorKind::Construction, _) => "RequestConstructionError".into(),
            (ClientErrorKind::Cancelled, _) => "Cancelled".into(),
            (ClientErrorKind::Service, Some(s)) => format!("HttpError{s}").into(),
            (ClientErrorKind::Service, None) => "ServiceError".into(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code_or_kind(), self.message)
    }
}

impl std::error::Error for ClientError {}

/// The calls the producer makes. Object-safe: the producer holds an `Arc<dyn Kinesis>`.
pub trait Kinesis: Send + Sync + 'static {
    /// PutRecords. `Ok` holds one result per request record, in order.
    fn put_records(
        &self,
        request: PutRecordsRequest,
    ) -> BoxFuture<'_, Result<Vec<PutRecordsResultEntry>, ClientError>>;

    /// Every shard of the stream (open and closed), following `NextToken` to the end.
    fn list_shards(&self, stream: &StreamRef)
        -> BoxFuture<'_, Result<Vec<ShardInfo>, ClientError>>;

    /// DescribeStreamSummary.
    fn describe_stream_summary(
        &self,
        stream: &StreamRef,
    ) -> BoxFuture<'_, Result<StreamSummary, ClientError>>;
}

/// [`Kinesis`] over `aws_sdk_kinesis::Client`, with SDK retries disabled.
#[derive(Clone, Debug)]
pub struct SdkKinesis {
    client: aws_sdk_kinesis::Client,
}

impl SdkKinesis {
    /// Wraps a client, rebuilding its configuration with retries disabled.
    pub fn new(client: &aws_sdk_kinesis::Client) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        SdkKinesis {
            client: aws_sdk_kinesis::Client::from_conf(config),
        }
    }

    /// A client from shared AWS configuration, retries disabled.
    pub fn from_sdk_config(sdk_config: &aws_types::SdkConfig) -> Self {
        let config = aws_sdk_kinesis::config::Builder::from(sdk_config)
            .retry_config(RetryConfig::disabled())
            .build();
        SdkKinesis {
            client: aws_sdk_kinesis::Client::from_conf(config),
        }
    }
}

fn client_error<E>(err: SdkError<E, HttpResponse>) -> ClientError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_smithy_types::error::display::DisplayErrorContext;
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(Arc::from);
    let message: Arc<str> = err
        .message()
        .map(Arc::from)
        .unwrap_or_else(|| DisplayErrorContext(&err).to_string().into());
    let kind = match &err {
        SdkError::TimeoutError(_) => ClientErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => ClientErrorKind::Timeout,
        SdkError::DispatchFailure(_) => ClientErrorKind::Connection,
        SdkError::ConstructionFailure(_) => ClientErrorKind::Construction,
        _ => ClientErrorKind::Service,
    };
    ClientError {
        kind,
        code,
        message,
        status,
    }
}

fn parse_hash(s: &str) -> Result<u128, ClientError> {
    s.parse().map_err(|_| {
        ClientError::new(
            ClientErrorKind::Service,
            format!("ListShards returned a hash key that is not a 128-bit integer: {s:?}"),
        )
    })
}

impl Kinesis for SdkKinesis {
    fn put_records(
        &self,
        request: PutRecordsRequest,
    ) -> BoxFuture<'_, Result<Vec<PutRecordsResultEntry>, ClientError>> {
        Box::pin(async move {
            let PutRecordsRequest { stream, records } = request;
            let n = records.len();
            let wire = put_records::Wire::new(&stream, &records);
            // The body holds the data now: an aggregate's buffer is not kept for the whole call.
            drop(records);
            let call = self.client.put_records().set_records(Some(Vec::new()));
            let call = match &stream {
                StreamRef::Name(name) => call.stream_name(name),
                StreamRef::Arn(arn) => call.stream_arn(arn),
            };
            call.customize()
                .interceptor(put_records::WireInterceptor(wire.clone()))
                .send()
                .await
                .map_err(client_error)?;
            wire.results(n).await
        })
    }

    fn list_shards(
        &self,
        stream: &StreamRef,
    ) -> BoxFuture<'_, Result<Vec<ShardInfo>, ClientError>> {
        let stream = stream.clone();
        Box::pin(async move {
            let mut shards = Vec::new();
            let mut next_token: Option<String> = None;
            loop {
                // NextToken must be sent without the stream name or ARN, or the API refuses it.
                let call = match (&next_token, &stream) {
                    (Some(token), _) => self.client.list_shards().next_token(token),
                    (None, StreamRef::Name(name)) => self.client.list_shards().stream_name(name),
                    (None, StreamRef::Arn(arn)) => self.client.list_shards().stream_arn(arn),
                };
                let out = call.send().await.map_err(client_error)?;
                for s in out.shards() {
                    let range = s.hash_key_range();
                    let (start, end) = match range {
                        Some(r) => (
                            parse_hash(r.starting_hash_key())?,
                            parse_hash(r.ending_hash_key())?,
                        ),
                        None => continue,
                    };
                    let open = s
                        .sequence_number_range()
                        .is_none_or(|r| r.ending_sequence_number().is_none());
                    shards.push(ShardInfo {
                        id: s.shard_id().into(),
                        start,
                        end,
                        open,
                    });
                }
                match out.next_token() {
                    Some(t) if !t.is_empty() && !out.shards().is_empty() => {
                        next_token = Some(t.to_string())
                    }
                    _ => break,
                }
            }
            Ok(shards)
        })
    }

    fn describe_stream_summary(
        &self,
        stream: &StreamRef,
    ) -> BoxFuture<'_, Result<StreamSummary, ClientError>> {
        let stream = stream.clone();
        Box::pin(async move {
            let call = self.client.describe_stream_summary();
            let call = match &stream {
                StreamRef::Name(name) => call.stream_name(name),
                StreamRef::Arn(arn) => call.stream_arn(arn),
            };
            let out = call.send().await.map_err(client_error)?;
            let summary = out.stream_description_summary();
            Ok(StreamSummary {
                max_record_size_kib: summary
                    .and_then(|s| s.max_record_size_in_kib())
                    .and_then(|k| u32::try_from(k).ok()),
                auto_distribution: matches!(
                    summary.and_then(|s| s.record_distribution_strategy()),
                    Some(RecordDistributionStrategy::Auto)
                ),
                on_demand: summary
                    .and_then(|s| s.stream_mode_details())
                    .map(|m| m.stream_mode() == &StreamMode::OnDemand),
                status: summary
                    .map(|s| s.stream_status().as_str().to_string())
                    .unwrap_or_default(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence number prints as its digits, and debugs as a string, from any source.
    #[test]
    fn sequence_numbers_print_as_their_digits() {
        let body = Bytes::from_static(b"[\"4950\"]");
        let numbers = [
            SequenceNumber::within(&body, std::str::from_utf8(&body[2..6]).unwrap()),
            SequenceNumber::from("4950"),
            SequenceNumber::from(String::from("4950")),
        ];
        for n in &numbers {
            assert_eq!((n.as_str(), n.to_string()), ("4950", "4950".to_string()));
            assert_eq!(format!("{n:?}"), "\"4950\"");
            assert_eq!(n, &numbers[0]);
        }
    }

    #[test]
    fn seam_is_object_safe() {
        fn takes(_: Option<Arc<dyn Kinesis>>) {}
        takes(None);
    }

    #[test]
    fn codes_for_errors_without_a_service_code() {
        assert_eq!(
            &*ClientError::new(ClientErrorKind::Timeout, "t").code_or_kind(),
            "Timeout"
        );
        let mut e = ClientError::new(ClientErrorKind::Service, "x");
        e.status = Some(503);
        assert_eq!(&*e.code_or_kind(), "HttpError503");
        assert_eq!(
            &*ClientError::service("AccessDeniedException", "no", 400).code_or_kind(),
            "AccessDeniedException"
        );
    }
}
