//! Shared by the kinesis-sim integration tests.

use aws_sdk_kinesis::config::{Credentials, Region};
use aws_sdk_kinesis::Client;

/// An SDK client for the simulator at `endpoint`: static credentials, SDK retries off (every
/// answer the tests see is the simulator's first).
pub fn client(endpoint: &str) -> Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .endpoint_url(endpoint)
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}
