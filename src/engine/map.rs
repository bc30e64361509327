//! Installing a shard map, and telling admission what the stream can take.

use super::shard::ShardState;
use super::Engine;
use crate::limiter::ShardLimiter;
use crate::shard_map::ShardMap;
use std::time::Instant;

impl Engine {
    /// Replaces the shard map. Shards that remain keep their state; records queued for shards
    /// that are gone move to the shards that now hold their hash keys, in order.
    pub(super) fn install_map(&mut self, map: ShardMap, now: Instant) {
        // Under AUTO one pseudo-shard carries the whole stream's rate.
        let scale = if self.s.predict {
            1.0
        } else {
            map.len().max(1) as f64
        };
        let (rate, predict, telemetry) = (self.s.shard_rate, self.s.predict, &self.telemetry);
        let limiter = move || match rate {
            Some((records, bytes)) => ShardLimiter::new(records * scale, bytes * scale, now),
            None => ShardLimiter::unlimited(now),
        };
        let orphans = self.shards.install(
            map,
            |info| {
                let t = telemetry.shard(&info.id);
                ShardState::new(info, limiter(), t)
            },
            |st| {
                if !predict {
                    st.limiter = limiter();
                }
            },
        );
        for e in orphans {
            self.shards.enqueue_back(e, now, |_| true);
        }
        self.update_capacity();
    }

    /// Tells admission what the stream can take: the limits of every open shard (of the whole
    /// stream under AUTO, where one pseudo-shard carries them all). Aggregated, the record limit
    /// applies to aggregates, not to user records. Ordered and plain, a shard sends one record
    /// per round trip: as many records per second as round trips, none counted before the
    /// first answer (admission then starts at its floor and follows the measured drain).
    pub(super) fn update_capacity(&mut self) {
        let scale = if self.s.predict {
            1.0
        } else {
            self.shards.map.len().max(1) as f64
        };
        let (rate, states) = (self.s.shard_rate, self.shards.len() as f64);
        // Shards whose limits the stream's capacity adds up.
        let stream = states * scale;
        let ordered_plain =
            self.s.config.ordering == crate::config::Ordering::PerShard && !self.s.aggregation;
        let capacity = if ordered_plain {
            let per_round_trip = self
                .concurrency
                .round_trip()
                .map_or(0.0, |rtt| 1.0 / rtt.as_secs_f64().max(1e-3));
            Some((
                states * rate.map_or(per_round_trip, |(r, _)| r.min(per_round_trip)),
                rate.map_or(f64::INFINITY, |(_, b)| b * stream),
            ))
        } else {
            rate.map(|(records, bytes)| {
                // Shard-wide aggregates carry any number of user records; aggregates of one
                // key may hold one each (many keys per shard): counted as plain until the
                // measured drain says more.
                let shard_wide =
                    self.s.config.aggregation_scope == crate::config::AggregationScope::Shard;
                let records = if self.s.aggregation && shard_wide {
                    f64::INFINITY
                } else {
                    records * stream
                };
                (records, bytes * stream)
            })
        };
        self.admission.set_capacity(capacity);
        self.ledger.set_cap(self.admission.cap());
    }
}
