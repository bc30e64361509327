//! A dead-letter route: every record that finally fails (TTL, a final error from the service,
//! the shutdown deadline, settings that changed under it), whole, with its error, so that it can
//! be stored and replayed.
//!
//! The caller makes a bounded Tokio channel and gives its sender to
//! [`crate::ProducerBuilder::dead_letters`]. The engine offers each failed record exactly once,
//! tracked (`add`) and fire-and-forget (`add_untracked`) alike, with `try_send`: it never waits
//! for the channel's reader. A dead letter that finds the channel full (or closed) is dropped and
//! counted in `stats().dead_letters_dropped`; the record's own future (if any) still resolves
//! with the error. Size the channel for the failures a reader can fall behind by.

use crate::config::StreamRef;
use crate::error::RecordError;
use crate::hash_key::HashKey;
use crate::record::UserRecord;

/// One record that finally failed.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The stream it was for.
    pub stream: StreamRef,
    /// The record as it was added: partition key, explicit hash key, data.
    pub record: UserRecord,
    /// The hash key it was routed by.
    pub hash_key: HashKey,
    /// Why it failed, with every attempt.
    pub error: RecordError,
}

/// The sending end the engine offers dead letters to.
pub type DeadLetterSender = tokio::sync::mpsc::Sender<DeadLetter>;
