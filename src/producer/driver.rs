//! The engine's thread: a loop that takes records and commands from the handles and results
//! from the Tokio tasks that perform I/O, feeds them to the [`Engine`], performs the actions it
//! returns, and sleeps until its next deadline. It holds no state of its own.

use crate::config::StreamRef;
use crate::engine::{Action, Engine, Entry};
use crate::kinesis::{ClientError, ClientErrorKind, Kinesis, PutRecordsResultEntry, StreamSummary};
use crate::shard_map::ShardInfo;
use crossbeam_channel::{Receiver, Sender};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest wait of the engine loop when nothing is scheduled.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Messages the engine takes from the ingest channel between two polls.
const INGEST_BATCH: usize = 4096;

pub(super) enum Msg {
    Record(Entry),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

pub(super) enum Event {
    Response(u64, Result<Vec<PutRecordsResultEntry>, ClientError>),
    ShardMap(Result<Vec<ShardInfo>, ClientError>),
    StreamSettings(Result<StreamSummary, ClientError>),
}

pub(super) async fn with_timeout<T>(
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

/// The engine's thread: moves messages in, performs actions, sleeps until the next deadline.
pub(super) struct Driver {
    engine: Engine,
    kinesis: Arc<dyn Kinesis>,
    runtime: tokio::runtime::Handle,
    events_tx: Sender<Event>,
    request_timeout: Duration,
    stream: StreamRef,
}

/// Sends a "cancelled" result if a request's task is dropped before it answers (the runtime
/// shut down), so the engine never waits for a response that cannot come.
struct ResponseGuard {
    id: u64,
    tx: Option<Sender<Event>>,
}

impl ResponseGuard {
    fn send(mut self, result: Result<Vec<PutRecordsResultEntry>, ClientError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Event::Response(self.id, result));
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
            let _ = tx.send(Event::Response(self.id, Err(e)));
        }
    }
}

impl Driver {
    /// Starts the engine's thread; returns the channel the handles feed.
    pub(super) fn spawn(
        engine: Engine,
        kinesis: Arc<dyn Kinesis>,
        runtime: tokio::runtime::Handle,
        request_timeout: Duration,
        stream: StreamRef,
    ) -> std::io::Result<Sender<Msg>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let name = format!("kinesis-producer:{}", stream.as_str());
        let driver = Driver {
            engine,
            kinesis,
            runtime,
            events_tx,
            request_timeout,
            stream,
        };
        std::thread::Builder::new()
            .name(name)
            .spawn(move || driver.run(rx, events_rx))?;
        Ok(tx)
    }

    fn run(mut self, ingest: Receiver<Msg>, events: Receiver<Event>) {
        let mut ingest = Some(ingest);
        let mut actions = Vec::new();
        loop {
            let now = Instant::now();
            self.engine.poll(now, &mut actions);
            for action in actions.drain(..) {
                self.perform(action);
            }
            if self.engine.is_finished() {
                break;
            }
            let wait = self.engine.next_deadline().map_or(IDLE_WAIT, |d| {
                d.saturating_duration_since(Instant::now()).min(IDLE_WAIT)
            });
            let never = crossbeam_channel::never();
            let intake = ingest.as_ref().unwrap_or(&never);
            crossbeam_channel::select! {
                recv(intake) -> msg => match msg {
                    Ok(msg) => {
                        let now = Instant::now();
                        self.on_msg(msg, now);
                        for _ in 0..INGEST_BATCH {
                            match intake.try_recv() {
                                Ok(msg) => self.on_msg(msg, now),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => {
                        // Every handle is gone: drain in the background, then stop.
                        ingest = None;
                        self.engine.on_shutdown(None, Instant::now());
                    }
                },
                recv(events) -> ev => {
                    if let Ok(ev) = ev {
                        self.on_event(ev);
                        while let Ok(ev) = events.try_recv() {
                            self.on_event(ev);
                        }
                    }
                },
                default(wait) => {}
            }
        }
    }

    fn on_msg(&mut self, msg: Msg, now: Instant) {
        match msg {
            Msg::Record(entry) => self.engine.on_record(entry, now),
            Msg::Flush(reply) => self.engine.on_flush(reply),
            Msg::Shutdown(reply) => self.engine.on_shutdown(Some(reply), now),
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Response(id, result) => self.engine.on_response(id, result, now),
            Event::ShardMap(result) => self.engine.on_shard_map(result, now),
            Event::StreamSettings(result) => self.engine.on_stream_settings(result, now),
        }
    }

    fn perform(&self, action: Action) {
        let kinesis = self.kinesis.clone();
        let tx = self.events_tx.clone();
        let timeout = self.request_timeout;
        match action {
            Action::Send {
                id,
                request,
                timeout,
            } => {
                let guard = ResponseGuard { id, tx: Some(tx) };
                self.runtime.spawn(async move {
                    let result = with_timeout(timeout, kinesis.put_records(request)).await;
                    guard.send(result);
                });
            }
            Action::RefreshShardMap => {
                let stream = self.stream.clone();
                self.runtime.spawn(async move {
                    let result = with_timeout(timeout, kinesis.list_shards(&stream)).await;
                    let _ = tx.send(Event::ShardMap(result));
                });
            }
            Action::ReadStreamSettings => {
                let stream = self.stream.clone();
                self.runtime.spawn(async move {
                    let result =
                        with_timeout(timeout, kinesis.describe_stream_summary(&stream)).await;
                    let _ = tx.send(Event::StreamSettings(result));
                });
            }
        }
    }
}
