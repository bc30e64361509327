//! A stream's status over time: `CREATING` until it becomes active, `UPDATING` while a
//! reshard or mode change is pending, `DELETING` until it is gone. Computed from instants on
//! every read, so no timer is needed to move a stream along; zero durations keep a stream
//! `ACTIVE` throughout (the default).

use std::time::{Duration, Instant};

/// The `StreamStatus` a stream reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamStatus {
    /// Created through the API and not yet usable.
    Creating,
    /// Being deleted: still described, no longer written to.
    Deleting,
    /// Usable.
    Active,
    /// A reshard or mode change is under way; writes proceed.
    Updating,
}

impl StreamStatus {
    /// The API's name (`ACTIVE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Creating => "CREATING",
            StreamStatus::Deleting => "DELETING",
            StreamStatus::Active => "ACTIVE",
            StreamStatus::Updating => "UPDATING",
        }
    }
}

/// The instants at which a stream changes status.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifecycle {
    active_at: Instant,
    updating_until: Option<Instant>,
    gone_at: Option<Instant>,
}

impl Lifecycle {
    /// A stream that is `CREATING` for `creating`, then `ACTIVE`.
    pub fn new(now: Instant, creating: Duration) -> Self {
        Lifecycle {
            active_at: now + creating,
            updating_until: None,
            gone_at: None,
        }
    }

    pub fn status(&self, now: Instant) -> StreamStatus {
        if self.gone_at.is_some() {
            StreamStatus::Deleting
        } else if now < self.active_at {
            StreamStatus::Creating
        } else if self.updating_until.is_some_and(|u| now < u) {
            StreamStatus::Updating
        } else {
            StreamStatus::Active
        }
    }

    /// True once a deletion has run its course.
    pub fn gone(&self, now: Instant) -> bool {
        self.gone_at.is_some_and(|g| now >= g)
    }

    /// Starts an update lasting `d`; refused (with the current status) unless `ACTIVE`.
    pub fn begin_update(&mut self, now: Instant, d: Duration) -> Result<(), StreamStatus> {
        match self.status(now) {
            StreamStatus::Active => {
                self.updating_until = Some(now + d);
                Ok(())
            }
            other => Err(other),
        }
    }

    /// Starts deleting, gone after `d` (a second delete does not extend it).
    pub fn begin_delete(&mut self, now: Instant, d: Duration) {
        self.gone_at.get_or_insert(now + d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_instants() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = Lifecycle::new(t0, s);
        assert_eq!(l.status(t0), StreamStatus::Creating);
        assert_eq!(l.begin_update(t0, s), Err(StreamStatus::Creating));
        assert_eq!(l.status(t0 + s), StreamStatus::Active);
        assert_eq!(l.begin_update(t0 + s, s), Ok(()));
        assert_eq!(l.status(t0 + s), StreamStatus::Updating);
        assert_eq!(l.begin_update(t0 + s, s), Err(StreamStatus::Updating));
        assert_eq!(l.status(t0 + 2 * s), StreamStatus::Active);
        l.begin_delete(t0 + 2 * s, s);
        l.begin_delete(t0 + 3 * s, s);
        assert_eq!(l.status(t0 + 2 * s), StreamStatus::Deleting);
        assert!(!l.gone(t0 + 2 * s));
        assert!(l.gone(t0 + 3 * s));
        assert_eq!(StreamStatus::Deleting.as_str(), "DELETING");
        let zero = Lifecycle::new(t0, Duration::ZERO);
        assert_eq!(zero.status(t0), StreamStatus::Active);
    }
}
