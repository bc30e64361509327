//! Following the stream's settings while the producer runs.
//!
//! Two settings of a stream change under a running producer and decide what it may send:
//! the record distribution (`USER_PARTITION_KEY` or `AUTO`, switched by
//! `UpdateStreamRecordDistributionStrategy`) and the record size limit (`UpdateMaxRecordSize`,
//! 1,024 to 10,240 KiB). The engine re-reads them with `DescribeStreamSummary`:
//!
//! - **on a period** ([`crate::ProducerConfig::stream_settings_refresh_interval`], 60 s by
//!   default), each wait jittered by ±20 % so that a fleet started together spreads its calls.
//!   The API allows 20 `DescribeStreamSummary` calls per second per account: 1,000 producers at
//!   one call per 60 s make about 17 a second. Larger fleets set a longer period; a
//!   `LimitExceededException` doubles the wait (up to [`MAX_BACKOFF_FACTOR`] periods) until a
//!   call succeeds.
//! - **at once on evidence of a change** ([`SettingsSchedule::request`]): a record stored on a
//!   shard the map does not predict, a validation error from the service. Evidence-driven calls
//!   are spaced at least [`MIN_SPACING`] apart (jittered up to twice that).
//!
//! [`SettingsSchedule`] is pure (it takes `now`); [`LiveSettings`] is what the engine publishes
//! and `add` reads (atomics, no lock).

use crate::error::RecordLimitFrom;
use crate::kinesis::StreamSummary;
use crate::limits::DEFAULT_RECORD_SIZE_LIMIT;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Shortest wait between two evidence-driven reads.
pub const MIN_SPACING: Duration = Duration::from_secs(2);
/// The longest back-off after `LimitExceededException`, in periods.
pub const MAX_BACKOFF_FACTOR: u32 = 16;
/// Wait after a failed read (other than `LimitExceededException`).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How a read of the stream's settings ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The summary arrived.
    Ok,
    /// `LimitExceededException`: the account's call rate is spent; back off.
    LimitExceeded,
    /// Any other failure: try again a little later.
    Failed,
}

/// When to read the stream's settings next.
#[derive(Debug)]
pub struct SettingsSchedule {
    period: Duration,
    next: Instant,
    /// The earliest an evidence-driven read may start.
    not_before: Instant,
    requested: bool,
    in_progress: bool,
    /// Consecutive `LimitExceededException`s (capped: the wait stops doubling).
    limited: u32,
    rng: fastrand::Rng,
}

impl SettingsSchedule {
    /// A schedule whose last read happened at `now`; `seed` varies the jitter between
    /// producers.
    pub fn new(period: Duration, now: Instant, seed: u64) -> Self {
        let mut s = SettingsSchedule {
            period,
            next: now,
            not_before: now,
            requested: false,
            in_progress: false,
            limited: 0,
            rng: fastrand::Rng::with_seed(seed),
        };
        s.next = now + s.jitter(period, 0.8, 1.2);
        s
    }

    /// A uniform draw in `[lo, hi) × base`.
    fn jitter(&mut self, base: Duration, lo: f64, hi: f64) -> Duration {
        base.mul_f64(lo + (hi - lo) * self.rng.f64())
    }

    /// Evidence that the settings may have changed: read as soon as the spacing allows.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Whether a read should start now; marks it in progress if so.
    pub fn start_if_due(&mut self, now: Instant) -> bool {
        if self.in_progress {
            return false;
        }
        let due = now >= self.next || (self.requested && now >= self.not_before);
        if due {
            self.in_progress = true;
            self.requested = false;
        }
        due
    }

    /// A read finished at `now`.
    pub fn finished(&mut self, outcome: ReadOutcome, now: Instant) {
        self.in_progress = false;
        let wait = match outcome {
            ReadOutcome::Ok => {
                self.limited = 0;
                self.jitter(self.period, 0.8, 1.2)
            }
            ReadOutcome::LimitExceeded => {
                self.limited = (self.limited + 1).min(MAX_BACKOFF_FACTOR.ilog2());
                let factor = 1u32 << self.limited;
                self.jitter(self.period * factor, 0.8, 1.2)
            }
            ReadOutcome::Failed => self.jitter(RETRY_AFTER_FAILURE, 1.0, 2.0),
        };
        self.next = now + wait;
        // Evidence waits out a back-off as well: the account's rate is shared.
        self.not_before = if self.limited > 0 {
            self.next
        } else {
            now + self.jitter(MIN_SPACING, 1.0, 2.0)
        };
    }

    /// When the next read is due (for the engine's timer); `None` while one is under way.
    pub fn next_due(&self) -> Option<Instant> {
        if self.in_progress {
            return None;
        }
        Some(if self.requested {
            self.next.min(self.not_before)
        } else {
            self.next
        })
    }
}

/// The settings that decide what the producer may send (the default: the API's defaults, a
/// stream not read yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// `RecordDistributionStrategy` is `AUTO`.
    pub auto_distribution: bool,
    /// `MaxRecordSizeInKiB`, where the service reports it.
    pub max_record_size_kib: Option<u32>,
    /// The capacity mode is `ON_DEMAND`, where the service reports it (informational: it does
    /// not change what the producer sends, but a switch is counted and shown).
    pub on_demand: Option<bool>,
}

impl StreamSettings {
    /// The settings a summary reports.
    pub fn from_summary(summary: &StreamSummary) -> Self {
        StreamSettings {
            auto_distribution: summary.auto_distribution,
            max_record_size_kib: summary.max_record_size_kib,
            on_demand: summary.on_demand,
        }
    }

    /// The stream's own record limit in bytes.
    pub fn stream_record_limit(&self) -> usize {
        self.max_record_size_kib
            .map_or(DEFAULT_RECORD_SIZE_LIMIT, |k| k as usize * 1024)
    }

    /// The record limit in force and where it comes from, given the request byte limit: a
    /// record must fit in one request too.
    pub fn record_limit(&self, request_bytes: usize) -> RecordLimit {
        let stream = self.stream_record_limit();
        if request_bytes < stream {
            RecordLimit {
                bytes: request_bytes,
                from: RecordLimitFrom::MaxRequestBytes,
            }
        } else if let Some(kib) = self.max_record_size_kib {
            RecordLimit {
                bytes: stream,
                from: RecordLimitFrom::Stream {
                    kib: u16::try_from(kib).unwrap_or(u16::MAX),
                },
            }
        } else {
            RecordLimit {
                bytes: stream,
                from: RecordLimitFrom::ApiDefault,
            }
        }
    }
}

/// A record size limit and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLimit {
    /// Data + partition key bytes.
    pub bytes: usize,
    /// Its source, for error messages.
    pub from: RecordLimitFrom,
}

impl RecordLimit {
    /// Packs into 64 bits: bytes (32), source (8), KiB (16).
    fn to_bits(self) -> u64 {
        let (tag, kib) = match self.from {
            RecordLimitFrom::Stream { kib } => (0u64, kib as u64),
            RecordLimitFrom::ApiDefault => (1, 0),
            RecordLimitFrom::MaxRequestBytes => (2, 0),
        };
        (self.bytes.min(u32::MAX as usize) as u64) | (tag << 32) | (kib << 40)
    }

    fn from_bits(bits: u64) -> Self {
        let from = match (bits >> 32) & 0xff {
            0 => RecordLimitFrom::Stream {
                kib: (bits >> 40) as u16,
            },
            1 => RecordLimitFrom::ApiDefault,
            _ => RecordLimitFrom::MaxRequestBytes,
        };
        RecordLimit {
            bytes: (bits & u32::MAX as u64) as usize,
            from,
        }
    }
}

/// The settings in force, published by the engine and read by `add` and `stats()`.
#[derive(Debug)]
pub struct LiveSettings {
    auto_distribution: AtomicBool,
    /// 0 unknown, 1 provisioned, 2 on-demand.
    mode: AtomicU8,
    record_limit: AtomicU64,
    changes: AtomicU64,
    reads: AtomicU64,
}

impl LiveSettings {
    /// The settings found at start.
    pub fn new(settings: StreamSettings, limit: RecordLimit) -> Self {
        LiveSettings {
            auto_distribution: AtomicBool::new(settings.auto_distribution),
            mode: AtomicU8::new(mode_bits(settings.on_demand)),
            record_limit: AtomicU64::new(limit.to_bits()),
            changes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    /// Whether the stream's distribution is `AUTO`.
    pub fn auto_distribution(&self) -> bool {
        self.auto_distribution.load(Ordering::Acquire)
    }

    /// Whether the capacity mode is `ON_DEMAND`, where the service reports it.
    pub fn on_demand(&self) -> Option<bool> {
        match self.mode.load(Ordering::Acquire) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// The record limit in force.
    pub fn record_limit(&self) -> RecordLimit {
        RecordLimit::from_bits(self.record_limit.load(Ordering::Acquire))
    }

    /// Settings changes seen since start.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Successful `DescribeStreamSummary` reads since start.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub(crate) fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, settings: StreamSettings, limit: RecordLimit) {
        let (auto, bits, mode) = (
            settings.auto_distribution,
            limit.to_bits(),
            mode_bits(settings.on_demand),
        );
        let old_auto = self.auto_distribution.swap(auto, Ordering::AcqRel);
        let old_bits = self.record_limit.swap(bits, Ordering::AcqRel);
        let old_mode = self.mode.swap(mode, Ordering::AcqRel);
        if old_auto != auto || old_bits != bits || old_mode != mode {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn mode_bits(on_demand: Option<bool>) -> u8 {
    match on_demand {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn periodic_reads_are_jittered_around_the_period() {
        let t0 = Instant::now();
        let mut dues = Vec::new();
        for seed in 1..50u64 {
            let mut s = SettingsSchedule::new(60 * S, t0, seed * 7919);
            let due = s.next_due().unwrap() - t0;
            assert!(due >= 48 * S && due < 72 * S, "{due:?}");
            assert!(!s.start_if_due(t0 + due - Duration::from_millis(1)));
            assert!(s.start_if_due(t0 + due));
            assert_eq!(s.next_due(), None, "none while one is under way");
            dues.push(due);
        }
        dues.sort();
        dues.dedup();
        assert!(dues.len() > 40, "seeds spread the first reads: {dues:?}");
    }

    #[test]
    fn evidence_reads_at_once_then_spaced() {
        let t0 = Instant::now();
        let mut s = SettingsSchedule::new(60 * S, t0, 3);
        s.request();
        assert_eq!(s.next_due(), Some(t0));
        assert!(s.start_if_due(t0));
        s.request();
        assert!(!s.start_if_due(t0), "one at a time");
        s.finished(ReadOutcome::Ok, t0 + S);
        let due = s.next_due().unwrap();
        assert!(due >= t0 + S + MIN_SPACING && due < t0 + S + 2 * MIN_SPACING);
        assert!(!s.start_if_due(due - Duration::from_millis(1)));
        assert!(s.start_if_due(due));
        s.finished(ReadOutcome::Ok, due);
        let periodic = s.next_due().unwrap() - due;
        assert!(
            periodic >= 48 * S,
            "no evidence: back to the period, {periodic:?}"
        );
    }

    #[test]
    fn limit_exceeded_doubles_the_wait_up_to_the_cap_and_holds_evidence_back() {
        let t0 = Instant::now();
        let mut s = SettingsSchedule::new(10 * S, t0, 11);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            now = s.next_due().unwrap();
            assert!(s.start_if_due(now));
            s.finished(ReadOutcome::LimitExceeded, now);
            s.request();
            let due = s.next_due().unwrap();
            waits.push((due - now).as_secs_f64() / 10.0);
        }
        let expected = [2.0, 4.0, 8.0, 16.0, 16.0, 16.0, 16.0];
        for (w, e) in waits.iter().zip(expected) {
            assert!(*w >= 0.8 * e && *w < 1.2 * e, "{waits:?}");
        }
        assert!(s.start_if_due(s.next_due().unwrap()));
        let t = s.next_due().unwrap_or(now);
        s.finished(ReadOutcome::Ok, t);
        assert!(
            (s.next_due().unwrap() - t) < 12 * S,
            "a success ends the back-off"
        );
    }

    #[test]
    fn a_failure_retries_within_seconds() {
        let t0 = Instant::now();
        let mut s = SettingsSchedule::new(60 * S, t0, 5);
        assert!(s.start_if_due(t0 + 60 * S + 60 * S / 5));
        s.finished(ReadOutcome::Failed, t0 + 80 * S);
        let wait = s.next_due().unwrap() - (t0 + 80 * S);
        assert!(wait >= 5 * S && wait < 10 * S, "{wait:?}");
    }

    #[test]
    fn record_limit_follows_stream_and_request() {
        let kib = |k| StreamSettings {
            auto_distribution: false,
            max_record_size_kib: k,
            on_demand: None,
        };
        assert_eq!(
            kib(Some(10240)).record_limit(10 << 20),
            RecordLimit {
                bytes: 10 << 20,
                from: RecordLimitFrom::Stream { kib: 10240 }
            }
        );
        assert_eq!(
            kib(Some(10240)).record_limit(5 << 20),
            RecordLimit {
                bytes: 5 << 20,
                from: RecordLimitFrom::MaxRequestBytes
            }
        );
        assert_eq!(
            kib(None).record_limit(5 << 20),
            RecordLimit {
                bytes: 1 << 20,
                from: RecordLimitFrom::ApiDefault
            }
        );
    }

    #[test]
    fn live_settings_round_trip_and_count_changes() {
        let limits = [
            RecordLimit {
                bytes: 10 << 20,
                from: RecordLimitFrom::Stream { kib: 10240 },
            },
            RecordLimit {
                bytes: 1 << 20,
                from: RecordLimitFrom::ApiDefault,
            },
            RecordLimit {
                bytes: 5 << 20,
                from: RecordLimitFrom::MaxRequestBytes,
            },
        ];
        let settings = |auto, on_demand| StreamSettings {
            auto_distribution: auto,
            max_record_size_kib: None,
            on_demand,
        };
        let live = LiveSettings::new(settings(false, None), limits[0]);
        assert_eq!(live.record_limit(), limits[0]);
        live.set(settings(false, None), limits[0]);
        assert_eq!(live.changes(), 0, "the same settings are no change");
        for (i, l) in limits.iter().enumerate() {
            live.set(settings(i % 2 == 0, None), *l);
            assert_eq!(live.record_limit(), *l);
            assert_eq!(live.auto_distribution(), i % 2 == 0);
        }
        assert_eq!(live.changes(), 3);
        live.set(settings(false, Some(true)), limits[2]);
        assert_eq!(live.on_demand(), Some(true));
        live.set(settings(false, Some(false)), limits[2]);
        assert_eq!(live.on_demand(), Some(false));
        assert_eq!(live.changes(), 5, "a mode switch is a change too");
    }
}
