//! Following the stream's settings: what a `DescribeStreamSummary` read changes.
//!
//! - **To `AUTO`**: the service now places records anywhere, so prediction and aggregation stop
//!   (one stream-wide pseudo-shard and limiter, as for a stream that is `AUTO` at start).
//!   Aggregates that have not left are split back into their user records, which are sent
//!   plain; aggregates in flight that land off their shard have their stranded sub-records
//!   re-sent plain (see `outcome`).
//! - **Back to `USER_PARTITION_KEY`**: prediction resumes with the map in hand, a fresh map is
//!   asked for, and aggregation resumes once it is installed. Queued records without a key fail
//!   with [`ValidationError::PartitionKeyRequired`].
//! - **Record size limit raised**: larger records are accepted from then on. **Lowered**: queued
//!   records over the new limit fail with the error `add` now gives them; nothing else changes.
//!
//! A change re-sorts every record that has not left (queues, sealed records, the collector, the
//! outbox): a pass over the buffer, on a rare event, never on the hot path.

use super::entry::Entry;
use super::Engine;
use crate::error::{RecordError, ValidationError};
use crate::kinesis::{ClientError, StreamSummary};
use crate::producer::too_large;
use crate::stream_settings::{ReadOutcome, StreamSettings};
use std::time::Instant;

/// A seed for the read schedule's jitter that differs between producers (and processes).
pub(super) fn jitter_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

impl Engine {
    /// The result of an [`super::Action::ReadStreamSettings`].
    pub fn on_stream_settings(&mut self, result: Result<StreamSummary, ClientError>, now: Instant) {
        let Some(result) = self.discovered_settings(result, now) else {
            return;
        };
        let summary = match result {
            Ok(summary) => summary,
            Err(e) => {
                let code = e.code_or_kind();
                self.telemetry.error(&code);
                let outcome = if &*code == "LimitExceededException" {
                    ReadOutcome::LimitExceeded
                } else {
                    ReadOutcome::Failed
                };
                self.settings_schedule.finished(outcome, now);
                return;
            }
        };
        self.settings_schedule.finished(ReadOutcome::Ok, now);
        self.s.live.read();
        let new = StreamSettings::from_summary(&summary);
        let old = self.s.stream_settings;
        if new == old {
            return;
        }
        let limit_lowered = new.stream_record_limit() < old.stream_record_limit();
        self.s.follow_limits(new);
        self.adopt_limits();
        let switched = new.auto_distribution != old.auto_distribution;
        if switched {
            self.s.predict = !new.auto_distribution;
            self.s.aggregation = false;
            self.resume_aggregation = self.s.predict && self.s.config.aggregation;
            if self.s.predict {
                self.refresh.request();
            }
        }
        if switched || limit_lowered {
            self.resort_unsent(now);
        }
        self.s.live.set(new, self.s.record_limit);
        self.telemetry
            .settings_changed(new.auto_distribution, self.s.record_limit.bytes);
    }

    /// Brings the collector, the aggregator and admission to the limits in force.
    pub(super) fn adopt_limits(&mut self) {
        self.collector.set_max_bytes(self.s.request_bytes);
        self.aggregator = crate::aggregation::Aggregator::new(
            self.s.aggregate_max,
            self.s.config.aggregation_max_count,
        );
        self.admission
            .set_max_record_size(self.s.record_limit.bytes);
    }

    /// Why a record no longer meets the stream's settings, if it does not.
    pub(super) fn unfit(&self, e: &Entry) -> Option<ValidationError> {
        if self.s.predict && e.key.is_empty() {
            return Some(ValidationError::PartitionKeyRequired);
        }
        too_large(e.data.len(), e.key.len(), self.s.record_limit)
    }

    /// Takes back every record that has not left, re-installs the map under the settings in
    /// force (prediction on or off), fails the records that no longer meet them and queues the
    /// rest again, each shard's in its order.
    fn resort_unsent(&mut self, now: Instant) {
        let mut unsent: Vec<Entry> = Vec::new();
        let collected = self.collector.take();
        let outbox: Vec<_> = self.outbox.drain(..).flat_map(|b| b.records).collect();
        for r in collected.records.into_iter().chain(outbox) {
            self.returned(&r);
            unsent.extend(r.entries);
        }
        for st in self.shards.iter_mut() {
            unsent.extend(st.drain_held());
        }
        self.shards.set_predict(self.s.predict);
        let map = self.shards.map.clone();
        self.install_map(map, now);
        let mut keep = Vec::with_capacity(unsent.len());
        for mut e in unsent {
            match self.unfit(&e) {
                Some(error) => {
                    let attempts = e.attempts.take();
                    self.resolve(e, Err(RecordError::Invalid { error, attempts }));
                }
                None => keep.push(e),
            }
        }
        // Records from the collector and the outbox are older than those still queued for the
        // same shard, and came first: putting them all back in this order keeps each shard's.
        self.put_back(keep, now);
    }
}
