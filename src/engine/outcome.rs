//! Outcomes: what a response, a failure or the TTL does to the records it concerns.
//!
//! A stored Kinesis record resolves its user records, unless it is an aggregate that landed on
//! a shard whose range does not hold some sub-records (the map was stale): those are re-sent,
//! the only re-send after a success. A retryable failure puts records back at the front of
//! their shard's queue, in order, and backs the shard off; a permanent one resolves them with
//! the service's error; a request refused for the sake of the records a validation error names
//! fails those only and sends the others again. Every delivery goes through [`Engine::resolve`] or
//! [`Engine::resolve_stored`], which release the records in the ledger first.

use super::entry::{Entry, KRecord};
use super::{Engine, InFlight, Landing, Parked};
use crate::error::RecordError;
use crate::kinesis::{ClientError, ClientErrorKind, PutRecordsResultEntry};
use crate::record::{Attempt, PutOutcome};
use crate::retry::{self, Decision};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Error code recorded on an attempt whose aggregate landed outside a sub-record's shard.
pub(crate) const STRANDED_CODE: &str = "SubRecordOutsideShardRange";
/// Error code recorded on an attempt still in flight when the shutdown deadline passed.
pub(crate) const SHUTDOWN_IN_FLIGHT_CODE: &str = "ShutDownInFlight";

impl Engine {
    /// Per-record results of a request: each Kinesis record stored or failed on its own.
    pub(super) fn on_results(
        &mut self,
        InFlight {
            mut records, start, ..
        }: InFlight,
        results: Vec<PutRecordsResultEntry>,
        now: Instant,
    ) -> Vec<Entry> {
        let duration = now.saturating_duration_since(start);
        if self.endpoint.answered() {
            self.telemetry.endpoint_backoff(None);
        }
        let mut retry_entries = Vec::new();
        let mut backoff_shards: Vec<Arc<str>> = Vec::new();
        // By reference: a Kinesis record is a few hundred bytes, and moving each one out of the
        // request only to drop it was about 14 % of the engine thread's CPU unaggregated.
        for (record, result) in records.iter_mut().zip(results) {
            match result {
                PutRecordsResultEntry::Ok {
                    shard_id,
                    sequence_number,
                } => {
                    let telemetry = self.shards.by_id(&record.shard).map(|st| {
                        st.backoff.reset();
                        &mut st.telemetry
                    });
                    self.telemetry.stored(record.size, telemetry);
                    self.rate.answered(record.size, false, now);
                    let attempt = Attempt {
                        start,
                        duration,
                        error_code: None,
                        error_message: None,
                    };
                    let landing = Landing {
                        shard_id,
                        sequence_number,
                        attempt,
                    };
                    self.on_stored(record, landing, &mut retry_entries);
                }
                PutRecordsResultEntry::Err { code, message } => {
                    self.returned(record);
                    self.telemetry.error(&code);
                    let decision = retry::classify_code(&code);
                    let throttled = decision == (Decision::Retry { throttled: true });
                    self.rate.answered(record.size, throttled, now);
                    if throttled {
                        if let Some(st) = self.shards.by_id(&record.shard) {
                            st.limiter.on_throttle(now);
                            self.telemetry.throttled(&mut st.telemetry);
                        }
                    }
                    if decision != Decision::Fail && !backoff_shards.contains(&record.shard) {
                        backoff_shards.push(record.shard.clone());
                    }
                    let attempt = Attempt {
                        start,
                        duration,
                        error_code: Some(code.clone()),
                        error_message: Some(message.clone()),
                    };
                    self.on_failed(record, decision, code, message, attempt, &mut retry_entries);
                }
            }
        }
        for id in backoff_shards {
            if let Some(st) = self.shards.by_id(&id) {
                st.backoff_until = Some(now + st.backoff.next_delay());
            }
        }
        retry_entries
    }

    /// A request that failed as a whole: every record in it shares the error.
    pub(super) fn on_request_error(
        &mut self,
        InFlight {
            mut records,
            bytes,
            start,
        }: InFlight,
        error: ClientError,
        now: Instant,
    ) -> Vec<Entry> {
        let duration = now.saturating_duration_since(start);
        let code = error.code_or_kind();
        self.telemetry.error(&code);
        let cancelled = error.kind == ClientErrorKind::Cancelled;
        let decision = if cancelled {
            Decision::Fail
        } else {
            retry::classify_request(error.code.as_deref(), error.status)
        };
        let retryable = matches!(decision, Decision::Retry { .. });
        if retryable {
            if let Some(delay) = self.endpoint.failed(now) {
                self.telemetry.endpoint_backoff(Some(delay));
            }
        }
        // Timeouts, dropped connections and retryable whole-request errors are congestion; a
        // final error is an ordinary answer.
        match error.kind {
            ClientErrorKind::Timeout => self.concurrency.on_congestion(true, now),
            ClientErrorKind::Connection => self.concurrency.on_congestion(false, now),
            ClientErrorKind::Service if retryable => self.concurrency.on_congestion(false, now),
            ClientErrorKind::Service => self.concurrency.on_answer(duration, bytes, now),
            ClientErrorKind::Construction | ClientErrorKind::Cancelled => {}
        }
        // The service may have stored these records before the answer was lost: sending them
        // again may store them twice.
        let unknown_outcome = matches!(
            error.kind,
            ClientErrorKind::Timeout | ClientErrorKind::Connection
        );
        if retryable && unknown_outcome {
            self.telemetry
                .possible_duplicates(records.iter().map(|r| r.entries.len()).sum());
        }
        if error.code.as_deref() == Some("ValidationException") {
            // A size or key the service refused may mean the stream's settings changed.
            self.settings_schedule.request();
        }
        // A validation error that names the records at fault refuses the request for their
        // sake only: they fail, the others go again.
        let culprits = if decision == Decision::Fail
            && records.len() > 1
            && error.code.as_deref() == Some("ValidationException")
        {
            let at = retry::invalid_record_positions(&error.message);
            if at.last().is_some_and(|&i| i < records.len()) {
                at
            } else {
                Vec::new()
            }
        } else {
            Vec::new()
        };
        let mut retry_entries = Vec::new();
        for (i, record) in records.iter_mut().enumerate() {
            self.returned(record);
            if decision == (Decision::Retry { throttled: true }) {
                self.rate.answered(record.size, true, now);
                if let Some(st) = self.shards.by_id(&record.shard) {
                    st.limiter.on_throttle(now);
                }
            }
            let attempt = Attempt {
                start,
                duration,
                error_code: Some(code.clone()),
                error_message: Some(error.message.clone()),
            };
            if cancelled {
                for mut e in record.entries.drain(..) {
                    let attempts = e.attempts.with(attempt.clone());
                    self.resolve(e, Err(RecordError::ShutDown { attempts }));
                }
                continue;
            }
            let (decision, attempt) = if culprits.is_empty() || culprits.binary_search(&i).is_ok() {
                (decision, attempt)
            } else {
                let note = format!(
                    "refused with its request because of another record: {}",
                    error.message
                );
                let attempt = Attempt {
                    error_message: Some(note.into()),
                    ..attempt
                };
                (Decision::Retry { throttled: false }, attempt)
            };
            let message = error.message.clone();
            self.on_failed(
                record,
                decision,
                code.clone(),
                message,
                attempt,
                &mut retry_entries,
            );
        }
        retry_entries
    }

    /// A Kinesis record was stored on `landing.shard_id`.
    fn on_stored(
        &mut self,
        record: &mut KRecord,
        landing: Landing,
        retry_entries: &mut Vec<Entry>,
    ) {
        let off_shard = landing.shard_id != record.shard;
        if off_shard && (self.s.predict || record.aggregated) {
            // The map is stale, or the stream now places records itself (`AUTO`): read both
            // again. A plain record always lands where the service puts it: it succeeded. An
            // aggregate's sub-records may lie outside the storing shard's range: check them
            // against the map, or against the refreshed one if even the current map does not
            // know the shard. (An aggregate sent before a switch to `AUTO` lands here too.)
            self.refresh.request();
            self.settings_schedule.request();
            self.telemetry.mispredicted();
            if record.aggregated {
                if self.shards.map.shard(&landing.shard_id).is_some() {
                    self.returned(record);
                    self.check_stranded(record, landing, retry_entries);
                } else {
                    // Still outstanding: under per-shard ordering the shards of its range wait
                    // until its stranded sub-records are back at the front of their queues.
                    let record = record.take();
                    self.parked.push(Parked { record, landing });
                }
                return;
            }
        }
        self.returned(record);
        self.resolve_stored(record, landing);
    }

    /// Resolves an aggregate's sub-records that lie in the storing shard's range; re-sends the
    /// others (KCL would drop them).
    pub(super) fn check_stranded(
        &mut self,
        record: &mut KRecord,
        landing: Landing,
        retry_entries: &mut Vec<Entry>,
    ) {
        let Some(range) = self.shards.map.shard(&landing.shard_id).cloned() else {
            // Not even the refreshed map knows the shard: nothing to check against.
            self.resolve_stored(record, landing);
            return;
        };
        let Landing {
            shard_id,
            sequence_number,
            attempt,
        } = landing;
        let sequence_number: Arc<str> = sequence_number.as_str().into();
        let stranded_before = retry_entries.len();
        for (i, mut e) in record.entries.drain(..).enumerate() {
            if range.contains(e.hash_key) {
                let attempts = e.attempts.with(attempt.clone());
                self.resolve(
                    e,
                    Ok(PutOutcome {
                        shard_id: shard_id.clone(),
                        sequence_number: sequence_number.clone(),
                        sub_sequence_number: Some(i as u64),
                        attempts,
                    }),
                );
            } else {
                e.attempts.push(Attempt {
                    error_code: Some(STRANDED_CODE.into()),
                    error_message: Some(
                        format!("stored in {shard_id} ({sequence_number}) whose hash range does not hold the record's hash key; re-sent").into(),
                    ),
                    ..attempt.clone()
                });
                // Re-sent plain, once: aggregated again it could be stranded again.
                e.make_plain();
                retry_entries.push(e);
            }
        }
        let stranded = retry_entries.len() - stranded_before;
        if stranded > 0 {
            self.telemetry.stranded(stranded, &shard_id);
        }
    }

    /// Resolves the user records of one stored Kinesis record.
    fn resolve_stored(&mut self, record: &mut KRecord, landing: Landing) {
        let Landing {
            shard_id,
            sequence_number,
            attempt,
        } = landing;
        // Buffer room, stats and metrics once per Kinesis record rather than once per user
        // record, before any future resolves (as `resolve` does).
        let (n, bytes) = self.ledger.release(&record.entries);
        self.admission.on_drained(n, bytes);
        self.telemetry.put(n);
        // The sequence number as the futures hold it, made for the first one (none for
        // fire-and-forget records) and shared by the sub-records of an aggregate.
        let mut shared: Option<Arc<str>> = None;
        // By reference: moving each entry out would copy it only to drop it.
        for (i, e) in record.entries.iter_mut().enumerate() {
            // Fire-and-forget records have no future: no outcome to build.
            if let Some(reply) = e.reply.take() {
                let attempts = e.attempts.with(attempt.clone());
                let sequence_number = shared
                    .get_or_insert_with(|| sequence_number.as_str().into())
                    .clone();
                let _ = reply.send(Ok(PutOutcome {
                    shard_id: shard_id.clone(),
                    sequence_number,
                    sub_sequence_number: record.aggregated.then_some(i as u64),
                    attempts,
                }));
            }
            self.ledger.delivered(e.seq);
        }
    }

    fn on_failed(
        &mut self,
        record: &mut KRecord,
        decision: Decision,
        code: Arc<str>,
        message: Arc<str>,
        attempt: Attempt,
        retry_entries: &mut Vec<Entry>,
    ) {
        for mut e in record.entries.drain(..) {
            e.attempts.push(attempt.clone());
            match decision {
                Decision::Retry { .. } => retry_entries.push(e),
                Decision::Fail => {
                    let attempts = e.attempts.take();
                    self.resolve(
                        e,
                        Err(RecordError::Rejected {
                            code: code.clone(),
                            message: message.clone(),
                            attempts,
                        }),
                    );
                }
            }
        }
    }

    /// Records to retry: counted, then put back (see [`Engine::put_back`]).
    pub(super) fn requeue(&mut self, entries: Vec<Entry>, now: Instant) {
        let ttl = self.s.config.record_ttl;
        let retries = entries.iter().filter(|e| e.deadline(ttl) > now).count();
        self.telemetry.retried(retries);
        self.put_back(entries, now);
    }

    /// Puts records back at the front of their shard's queue, in their order, ahead of newer
    /// records, to be drained at the next poll; records past their TTL fail instead.
    pub(super) fn put_back(&mut self, entries: Vec<Entry>, now: Instant) {
        let mut by_shard: Vec<Vec<Entry>> = Vec::new();
        let ttl = self.s.config.record_ttl;
        for e in entries {
            if e.deadline(ttl) <= now {
                self.expire(e);
                continue;
            }
            let i = self.shards.slot_for(e.hash_key);
            if by_shard.len() <= i {
                by_shard.resize_with(i + 1, Vec::new);
            }
            by_shard[i].push(e);
        }
        for (i, list) in by_shard.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            // Mutable access marks the shard ready: it is drained at the next poll.
            let st = &mut self.shards[i];
            for e in list.into_iter().rev() {
                st.push_front(e);
            }
        }
    }

    pub(super) fn expire(&mut self, mut e: Entry) {
        let attempts = e.attempts.take();
        self.telemetry.expired();
        let ttl = self.s.config.record_ttl;
        self.resolve(e, Err(RecordError::Expired { ttl, attempts }));
    }

    /// Delivers a record's result, gives its buffer room back and counts it.
    pub(super) fn resolve(&mut self, e: Entry, result: Result<PutOutcome, RecordError>) {
        let (n, bytes) = self.ledger.release([&e]);
        match &result {
            Ok(_) => {
                self.admission.on_drained(n, bytes);
                self.telemetry.put(n);
            }
            Err(err) => self.telemetry.failed(&e, err),
        }
        let seq = e.seq;
        if let Some(reply) = e.reply {
            let _ = reply.send(result);
        }
        self.ledger.delivered(seq);
    }

    /// Shutdown deadline: every record still held fails.
    pub(super) fn fail_everything(&mut self, now: Instant) {
        self.poll_discovery(now, true);
        let mut all: Vec<Entry> = Vec::new();
        for st in self.shards.iter_mut() {
            all.extend(st.drain_held());
        }
        let collected = self.collector.take();
        let outbox: Vec<KRecord> = self.outbox.drain(..).flat_map(|b| b.records).collect();
        for r in collected.records.into_iter().chain(outbox) {
            self.returned(&r);
            all.extend(r.entries);
        }
        // A request still in flight may yet be applied: say so in the record's attempts, so
        // the error does not claim the record was not stored.
        for (_, f) in std::mem::take(&mut self.in_flight) {
            self.s.requests.fetch_sub(1, Relaxed);
            let attempt = Attempt {
                start: f.start,
                duration: now.saturating_duration_since(f.start),
                error_code: Some(SHUTDOWN_IN_FLIGHT_CODE.into()),
                error_message: Some(
                    "the shutdown deadline passed while the request was in flight; the record may have been stored".into(),
                ),
            };
            for r in f.records {
                self.returned(&r);
                for mut e in r.entries {
                    e.attempts.push(attempt.clone());
                    all.push(e);
                }
            }
        }
        for p in std::mem::take(&mut self.parked) {
            self.returned(&p.record);
            all.extend(p.record.entries);
        }
        for mut e in all {
            let attempts = e.attempts.take();
            self.resolve(e, Err(RecordError::ShutDown { attempts }));
        }
    }
}
