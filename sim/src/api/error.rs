//! The error half of the wire protocol: an [`ApiError`] is an HTTP status, the `__type` the
//! SDK maps to an error variant, and an optional message; [`Reply`] is what the server sends
//! back for a request (a JSON body, an error, or nothing at all when a fault drops the
//! connection).

use serde_json::json;

/// An API error: HTTP status, `__type` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: Some(message.into()),
        }
    }
    /// `ValidationException` with one or more already formatted constraint violations.
    pub fn validation(violations: &[String]) -> Self {
        let n = violations.len();
        let s = if n == 1 { "" } else { "s" };
        Self::new(
            400,
            "ValidationException",
            format!(
                "{n} validation error{s} detected: {}",
                violations.join("; ")
            ),
        )
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(400, "InvalidArgumentException", msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(400, "ResourceNotFoundException", msg)
    }
    pub fn in_use(msg: impl Into<String>) -> Self {
        Self::new(400, "ResourceInUseException", msg)
    }
    pub fn serialization(msg: impl Into<String>) -> Self {
        Self::new(400, "SerializationException", msg)
    }
    pub fn internal_failure() -> Self {
        Self::new(500, "InternalFailure", "Internal service failure.")
    }
    pub fn unknown_operation() -> Self {
        ApiError {
            status: 400,
            kind: "UnknownOperationException",
            message: None,
        }
    }
    /// JSON body `{"__type": .., "message": ..}`.
    pub fn body(&self) -> Vec<u8> {
        let v = match &self.message {
            Some(m) => json!({"__type": self.kind, "message": m}),
            None => json!({"__type": self.kind}),
        };
        serde_json::to_vec(&v).expect("json")
    }
}

/// What the server should do with a request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// HTTP 200 with this JSON body.
    Ok(Vec<u8>),
    /// An error response.
    Err(ApiError),
    /// Close the connection without a response.
    Drop,
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Err(e)
    }
}
