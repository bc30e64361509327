//! The driver's I/O: each action an engine returns runs as a Tokio task on the producer's
//! runtime, bounded by a timeout, and its result comes back to the engine's thread as an
//! [`Event`] on the events channel.

use super::{Driver, Event, EventKind};
use crate::engine::Action;
use crate::kinesis::{ClientError, ClientErrorKind, PutRecordsResultEntry};
use crossbeam_channel::Sender;
use std::future::Future;
use std::time::Duration;

/// The result of `f`, or a `Timeout` error once `timeout` has passed without one.
pub(in crate::producer) async fn with_timeout<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(ClientError::new(
            ClientErrorKind::Timeout,
            format!("no answer within {timeout:?}"),
        ))
    })
}

/// Sends a "cancelled" result if a request's task is dropped before it answers (the runtime
/// shut down), so the engine never waits for a response that cannot come.
struct ResponseGuard {
    to: (usize, u64, u64),
    tx: Option<Sender<Event>>,
}

impl ResponseGuard {
    fn send(mut self, result: Result<Vec<PutRecordsResultEntry>, ClientError>) {
        if let Some(tx) = self.tx.take() {
            let (slot, generation, id) = self.to;
            let _ = tx.send(Event(slot, generation, EventKind::Response(id, result)));
        }
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let e = ClientError::new(
                ClientErrorKind::Cancelled,
                "the Tokio runtime shut down during the request",
            );
            let (slot, generation, id) = self.to;
            let _ = tx.send(Event(slot, generation, EventKind::Response(id, Err(e))));
        }
    }
}

impl Driver {
    /// Starts the I/O of an action of slot `i`'s engine.
    pub(super) fn perform(&self, i: usize, action: Action) {
        let slot = self.slots[i].as_ref().expect("live slot");
        let (generation, stream) = (slot.generation, slot.stream.clone());
        let kinesis = self.shared.kinesis.clone();
        let tx = self.events_tx.clone();
        let timeout = self.shared.config.request_timeout;
        match action {
            Action::Send {
                id,
                request,
                timeout,
            } => {
                let guard = ResponseGuard {
                    to: (i, generation, id),
                    tx: Some(tx),
                };
                self.shared.runtime.spawn(async move {
                    let result = with_timeout(timeout, kinesis.put_records(request)).await;
                    guard.send(result);
                });
            }
            Action::RefreshShardMap => {
                self.shared.runtime.spawn(async move {
                    let result = with_timeout(timeout, kinesis.list_shards(&stream)).await;
                    let _ = tx.send(Event(i, generation, EventKind::ShardMap(result)));
                });
            }
            Action::ReadStreamSettings => {
                self.shared.runtime.spawn(async move {
                    let result =
                        with_timeout(timeout, kinesis.describe_stream_summary(&stream)).await;
                    let _ = tx.send(Event(i, generation, EventKind::StreamSettings(result)));
                });
            }
        }
    }
}
