//! A stream met on its first record: its settings (DescribeStreamSummary) and shard map
//! (ListShards) are read before its records are queued, without holding up other streams.
//!
//! Records that arrive meanwhile wait here, admitted and counted, and expire at their TTL like
//! any other. Transient read errors are retried by the two schedules as for a running stream.
//! A permanent one (the stream does not exist, access is denied) fails the waiting records
//! with that error, and the records that arrive in the next [`RETRY_AFTER`] fail at once; after
//! that the next record reads the stream again (it may have been created meanwhile).

use super::entry::Entry;
use super::{Engine, EngineSettings};
use crate::error::RecordError;
use crate::kinesis::{ClientError, StreamSummary};
use crate::retry::{self, Decision};
use crate::shard_map::{ShardInfo, ShardMap};
use crate::stream_settings::StreamSettings;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a stream that could not be used fails its records at once before it is read again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What is known of a stream being discovered.
#[derive(Default)]
pub(super) struct Discovery {
    /// Records waiting for the stream's settings and map, oldest first.
    waiting: VecDeque<Entry>,
    settings: Option<StreamSettings>,
    map: Option<Vec<ShardInfo>>,
    /// The stream cannot be used: (code, message, until when records fail at once).
    failed: Option<(Arc<str>, Arc<str>, Instant)>,
}

impl Discovery {
    fn rejection(&self) -> Option<RecordError> {
        self.failed
            .as_ref()
            .map(|(code, message, _)| RecordError::Rejected {
                code: code.clone(),
                message: message.clone(),
                attempts: vec![],
            })
    }
}

/// Whether a failed read of a stream being discovered is final (the stream is missing, access
/// is denied): the same classification as a failed request.
fn is_final(e: &ClientError) -> bool {
    retry::classify_request(e.code.as_deref(), e.status) == Decision::Fail
}

impl Engine {
    /// An engine for a stream not read yet: it asks for the stream's settings and map at its
    /// first poll and holds records until both are in.
    pub fn discovering(
        s: EngineSettings,
        gauge: Arc<crate::buffer::BufferGauge>,
        stats: Arc<crate::stats::SharedStats>,
        metrics: crate::metrics::Metrics,
        now: Instant,
    ) -> Self {
        let mut engine = Engine::new(s, ShardMap::default(), gauge, stats, metrics, now);
        engine.start_discovery();
        engine
    }

    fn start_discovery(&mut self) {
        self.discovery = Some(Discovery::default());
        self.refresh.request();
        self.settings_schedule.request();
    }

    /// A record for a stream being discovered: held, or failed at once if the stream cannot be
    /// used.
    pub(super) fn hold_for_discovery(&mut self, entry: Entry, now: Instant) {
        let d = self.discovery.as_mut().expect("discovering");
        if let Some((_, _, until)) = &d.failed {
            if now < *until {
                let error = d.rejection().expect("failed");
                self.resolve(entry, Err(error));
                return;
            }
            // Time to look again.
            self.start_discovery();
        }
        self.discovery
            .as_mut()
            .expect("discovering")
            .waiting
            .push_back(entry);
    }

    /// A settings read while discovering: `None` if it was consumed here.
    pub(super) fn discovered_settings(
        &mut self,
        result: Result<StreamSummary, ClientError>,
        now: Instant,
    ) -> Option<Result<StreamSummary, ClientError>> {
        let Some(d) = self.discovery.as_mut() else {
            return Some(result);
        };
        match result {
            Ok(summary) => {
                self.settings_schedule
                    .finished(crate::stream_settings::ReadOutcome::Ok, now);
                self.s.live.read();
                d.settings = Some(StreamSettings::from_summary(&summary));
                self.finish_discovery(now);
                None
            }
            Err(e) if is_final(&e) => {
                self.settings_schedule
                    .finished(crate::stream_settings::ReadOutcome::Ok, now);
                self.discovery_failed(e, now);
                None
            }
            // Transient (throttling included: many streams met at once share the account's
            // rate): read again soon, not after the running stream's long back-off.
            Err(e) => {
                self.telemetry.error(&e.code_or_kind());
                self.settings_schedule
                    .finished(crate::stream_settings::ReadOutcome::Failed, now);
                // Again as soon as the spacing between reads allows (2-4 s).
                self.settings_schedule.request();
                None
            }
        }
    }

    /// A shard map read while discovering: `None` if it was consumed here.
    pub(super) fn discovered_map(
        &mut self,
        result: Result<Vec<ShardInfo>, ClientError>,
        now: Instant,
    ) -> Option<Result<Vec<ShardInfo>, ClientError>> {
        let Some(d) = self.discovery.as_mut() else {
            return Some(result);
        };
        match result {
            Ok(shards) if shards.iter().any(|s| s.open) => {
                self.refresh.finished(true, now);
                d.map = Some(shards);
                self.finish_discovery(now);
                None
            }
            Err(e) if is_final(&e) => {
                self.refresh.finished(true, now);
                self.discovery_failed(e, now);
                None
            }
            other => Some(other),
        }
    }

    /// Both reads are in: the engine takes the stream's settings and map, and the waiting
    /// records are queued in order.
    fn finish_discovery(&mut self, now: Instant) {
        let Some(d) = self.discovery.as_mut() else {
            return;
        };
        let (Some(settings), Some(_)) = (d.settings, d.map.as_ref()) else {
            return;
        };
        let d = self.discovery.take().expect("discovering");
        let map = d.map.expect("read");
        self.s.follow_limits(settings);
        self.s.predict = !settings.auto_distribution;
        self.s.aggregation = self.s.config.aggregation && self.s.predict;
        self.adopt_limits();
        self.shards.set_predict(self.s.predict);
        self.s.live.set(settings, self.s.record_limit);
        self.telemetry
            .settings(!self.s.predict, self.s.record_limit.bytes);
        self.telemetry
            .discovered(map.iter().filter(|s| s.open).count());
        self.install_map(ShardMap::new(map), now);
        for entry in d.waiting {
            self.queue_record(entry, now);
        }
    }

    /// The stream cannot be used: the waiting records fail with the error.
    fn discovery_failed(&mut self, e: ClientError, now: Instant) {
        let code: Arc<str> = e.code_or_kind();
        self.telemetry.error(&code);
        if self.discovery.as_ref().is_some_and(|d| d.failed.is_some()) {
            return; // the other read failed too: said already
        }
        self.telemetry.discovery_failed(&code, &e.message);
        let d = self.discovery.as_mut().expect("discovering");
        d.failed = Some((code, e.message.clone(), now + RETRY_AFTER));
        d.settings = None;
        d.map = None;
        let error = d.rejection().expect("failed");
        for entry in std::mem::take(&mut d.waiting) {
            self.resolve(entry, Err(error.clone()));
        }
    }

    /// Waiting records past their TTL expire; every waiting record at the shutdown deadline.
    pub(super) fn poll_discovery(&mut self, now: Instant, all: bool) {
        while let Some(d) = self.discovery.as_mut() {
            let Some(e) = d.waiting.front() else { break };
            if !all && e.deadline(self.s.config.record_ttl) > now {
                break;
            }
            let e = d.waiting.pop_front().expect("front");
            if all {
                self.resolve(e, Err(RecordError::ShutDown { attempts: vec![] }));
            } else {
                self.expire(e);
            }
        }
    }

    /// When the oldest waiting record expires.
    pub(super) fn discovery_deadline(&self) -> Option<Instant> {
        self.discovery
            .as_ref()
            .and_then(|d| d.waiting.front())
            .map(|e| e.deadline(self.s.config.record_ttl))
    }
}
