//! Following the stream's settings: switches to and from `AUTO`, the record size limit raised and
//! lowered, and reads on evidence.

use super::*;
use crate::config::DEFAULT_MAX_REQUEST_BYTES;
use crate::error::{RecordLimitFrom, ValidationError};
use crate::kinesis::StreamSummary;

fn summary(auto_distribution: bool, kib: Option<u32>) -> Result<StreamSummary, ClientError> {
    Ok(StreamSummary {
        max_record_size_kib: kib,
        auto_distribution,
        on_demand: None,
        status: "ACTIVE".into(),
    })
}

fn stored_on(shard: u32, n: usize) -> Vec<PutRecordsResultEntry> {
    (0..n)
        .map(|i| PutRecordsResultEntry::Ok {
            shard_id: format!("shardId-{shard:012}").into(),
            sequence_number: format!("{i}").into(),
        })
        .collect()
}

/// Past every linger and request window: what is queued goes.
fn settle(h: &mut Harness) -> Vec<(u64, PutRecordsRequest)> {
    h.advance(Duration::from_millis(250));
    h.poll_after_window()
}

fn reads_settings(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::ReadStreamSettings))
}

#[test]
fn switch_to_auto_sends_queued_records_plain_and_resends_stranded_sub_records_plain() {
    let mut h = Harness::new(4, agg_config());
    let mut sent_before: Vec<Rx> = (0..40)
        .map(|i| h.add_to(i % 4, 4, &format!("a{i}"), "d"))
        .collect();
    h.advance(Duration::from_millis(100));
    let in_flight = h.poll();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0].1.records.len(), 4, "one aggregate per shard");
    let mut queued: Vec<Rx> = (0..8)
        .map(|i| h.add_to(i % 4, 4, &format!("b{i}"), "d"))
        .collect();

    h.engine.on_stream_settings(summary(true, None), h.now);
    assert_eq!(h.engine.shards.len(), 1, "one stream-wide pseudo-shard");
    assert!(!h.engine.s.aggregation && h.engine.s.live.auto_distribution());
    assert_eq!(h.engine.s.live.changes(), 1);
    let sent = settle(&mut h);
    let plain: Vec<&PutRecordsEntry> = sent.iter().flat_map(|(_, r)| &r.records).collect();
    assert_eq!(plain.len(), 8, "the queued records go at once, each alone");
    assert!(plain.iter().all(|r| r.data.as_ref() == b"d"));
    for (id, req) in &sent {
        h.engine
            .on_response(*id, Ok(stored_on(3, req.records.len())), h.now);
    }
    for rx in &mut queued {
        assert_eq!(outcome(rx).unwrap().sub_sequence_number, None);
    }

    // The aggregates sent before the switch: the service put all four on shard 2.
    let (id, req) = &in_flight[0];
    h.engine
        .on_response(*id, Ok(stored_on(2, req.records.len())), h.now);
    let stats = &h.engine.telemetry.stats;
    assert_eq!(
        stats
            .stranded_resent
            .load(std::sync::atomic::Ordering::Relaxed),
        30,
        "the sub-records outside shard 2's range"
    );
    for (i, rx) in sent_before.iter_mut().enumerate() {
        if i % 4 == 2 {
            assert_eq!(&*outcome(rx).unwrap().shard_id, "shardId-000000000002");
        } else {
            assert!(pending(rx));
        }
    }
    let resent = settle(&mut h);
    let resent_records: Vec<&PutRecordsEntry> =
        resent.iter().flat_map(|(_, r)| &r.records).collect();
    assert_eq!(
        resent_records.len(),
        30,
        "re-sent plain, never aggregated again"
    );
    assert!(resent_records.iter().all(|r| r.data.as_ref() == b"d"));
    for (id, req) in &resent {
        h.engine
            .on_response(*id, Ok(stored_on(1, req.records.len())), h.now);
    }
    for (i, rx) in sent_before.iter_mut().enumerate() {
        if i % 4 != 2 {
            let out = outcome(rx).unwrap();
            assert_eq!(out.attempts[0].error_code.as_deref(), Some(STRANDED_CODE));
            let why = out.attempts[0].error_message.as_deref().unwrap_or("");
            assert!(
                why.contains("shardId-000000000002") && why.contains("re-sent"),
                "{why}"
            );
            assert_eq!(out.sub_sequence_number, None);
        }
    }
    assert_eq!(h.engine.ledger.held(), 0);
}

#[test]
fn back_from_auto_fails_unkeyed_records_and_aggregates_after_a_fresh_map() {
    let mut h = Harness::with_prediction(4, agg_config(), false);
    let mut unkeyed: Vec<Rx> = (0..3)
        .map(|i| {
            h.add(
                UserRecord::unkeyed(format!("u{i}")),
                HashKey::from_partition_key(""),
            )
        })
        .collect();
    let mut keyed: Vec<Rx> = (0..4).map(|i| h.add_to(i, 4, "k", "d")).collect();

    h.engine.on_stream_settings(summary(false, None), h.now);
    for rx in &mut unkeyed {
        match outcome(rx) {
            Err(RecordError::Invalid {
                error: ValidationError::PartitionKeyRequired,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(!h.engine.s.aggregation, "not before a fresh map");
    assert_eq!(
        h.engine.shards.len(),
        4,
        "predicted again, on the map in hand"
    );
    h.engine.poll(h.now, &mut h.actions);
    assert!(h
        .actions
        .iter()
        .any(|a| matches!(a, Action::RefreshShardMap)));
    h.actions.clear();
    let sent = settle(&mut h);
    assert_eq!(sent.iter().map(|(_, r)| r.records.len()).sum::<usize>(), 4);
    for (id, req) in &sent {
        h.ok_all(*id, req, 4);
    }
    for rx in &mut keyed {
        assert!(outcome(rx).is_ok());
    }
    // An unkeyed record validated while the stream was AUTO and arriving after the switch.
    let mut late = h.add(UserRecord::unkeyed("late"), HashKey::from_partition_key(""));
    assert!(matches!(
        outcome(&mut late),
        Err(RecordError::Invalid {
            error: ValidationError::PartitionKeyRequired,
            ..
        })
    ));

    h.engine.on_shard_map(Ok(shards(4)), h.now);
    assert!(
        h.engine.s.aggregation,
        "aggregation resumes on the fresh map"
    );
    let _rxs: Vec<Rx> = (0..10)
        .map(|i| h.add_to(1, 4, &format!("c{i}"), "d"))
        .collect();
    h.advance(Duration::from_millis(100));
    let sent = h.poll();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.records.len(), 1, "one aggregate of ten");
}

#[test]
fn record_limit_raised_takes_larger_records_lowered_fails_queued_ones_over_it() {
    let mut h = Harness::new(1, config());
    assert_eq!(h.engine.s.request_bytes, DEFAULT_MAX_REQUEST_BYTES);
    h.engine
        .on_stream_settings(summary(false, Some(10240)), h.now);
    assert_eq!(h.engine.s.record_limit.bytes, 10 << 20);
    assert_eq!(
        h.engine.s.request_bytes,
        10 << 20,
        "the request limit follows"
    );
    assert_eq!(h.engine.s.live.record_limit().bytes, 10 << 20);
    let mut big = h.add_to(0, 1, "k", &"x".repeat(3 << 20));
    let sent = settle(&mut h);
    assert_eq!(sent[0].1.records[0].data.len(), 3 << 20);
    h.ok_all(sent[0].0, &sent[0].1, 1);
    assert!(outcome(&mut big).is_ok());

    // Queued behind the limiter (3 MiB sent: the shard's byte budget is spent for seconds).
    let mut over = h.add_to(0, 1, "k", &"x".repeat(2 << 20));
    let mut small = h.add_to(0, 1, "k", "small");
    assert!(h.poll().is_empty());
    h.engine
        .on_stream_settings(summary(false, Some(1024)), h.now);
    match outcome(&mut over) {
        Err(RecordError::Invalid {
            error:
                ValidationError::RecordTooLarge {
                    limit, limit_from, ..
                },
            ..
        }) => {
            assert_eq!(limit, 1 << 20);
            assert_eq!(limit_from, RecordLimitFrom::Stream { kib: 1024 });
        }
        other => panic!("{other:?}"),
    }
    assert!(pending(&mut small), "nothing else is touched");
    assert_eq!(h.engine.s.request_bytes, DEFAULT_MAX_REQUEST_BYTES);
    assert_eq!(h.engine.s.live.changes(), 2);
    h.advance(Duration::from_secs(4));
    let sent = settle(&mut h);
    assert_eq!(sent.len(), 1);
    h.ok_all(sent[0].0, &sent[0].1, 1);
    assert!(outcome(&mut small).is_ok());
}

#[test]
fn a_record_off_its_predicted_shard_reads_the_settings_at_once() {
    let mut h = Harness::new(4, config());
    let _rx = h.add_to(0, 4, "k", "d");
    let sent = settle(&mut h);
    assert!(!reads_settings(&h.actions));
    h.engine.on_response(sent[0].0, Ok(stored_on(3, 1)), h.now);
    h.engine.poll(h.now, &mut h.actions);
    assert!(
        reads_settings(&h.actions),
        "read at once, not after the period"
    );
    h.actions.clear();
    h.engine.on_stream_settings(summary(false, None), h.now);
    assert_eq!(h.engine.s.live.changes(), 0, "the same settings: no change");
    assert_eq!(h.engine.s.live.reads(), 1);
    h.engine.on_stream_settings(summary(false, None), h.now);
    assert_eq!(h.engine.s.live.reads(), 2, "each read counted");
}

#[test]
fn a_record_in_flight_across_a_switch_and_back_holds_its_range_in_order_and_is_counted_once() {
    let cfg = ProducerConfig {
        ordering: Ordering::PerShard,
        ..config()
    };
    let mut h = Harness::new(2, cfg);
    let mut a = h.add_to(0, 2, "k", "a");
    let first = settle(&mut h);
    assert_eq!(first.len(), 1);
    h.engine.on_stream_settings(summary(true, None), h.now);
    h.engine.on_stream_settings(summary(false, None), h.now);
    let mut b = h.add_to(0, 2, "k", "b");
    assert!(
        settle(&mut h).is_empty(),
        "shard 0's new state waits for the record its range had in flight before the switches"
    );
    h.engine.on_response(first[0].0, Ok(stored_on(0, 1)), h.now);
    assert!(outcome(&mut a).is_ok());
    let second = settle(&mut h);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].1.records[0].data.as_ref(), b"b");
    h.ok_all(second[0].0, &second[0].1, 2);
    assert!(outcome(&mut b).is_ok());
    assert_eq!(h.engine.ledger.held(), 0);
    assert!(
        h.engine.shards.iter().all(|s| s.outstanding.get() == 0),
        "every count came back exactly once"
    );
}

#[test]
fn each_producer_jitters_its_reads_differently() {
    let seeds: std::collections::HashSet<u64> = (0..8)
        .map(|_| super::super::settings::jitter_seed())
        .collect();
    assert_eq!(seeds.len(), 8);
}

#[test]
fn limit_exceeded_backs_the_reads_off_other_errors_retry_soon() {
    let due_after = |code: &str| {
        let mut h = Harness::new(1, config());
        h.engine.settings_schedule.request();
        h.engine.poll(h.now, &mut h.actions);
        assert!(reads_settings(&h.actions));
        let e = ClientError::service(code, "no", 400);
        h.engine.on_stream_settings(Err(e), h.now);
        h.engine.settings_schedule.next_due().unwrap() - h.now
    };
    let period = ProducerConfig::default().stream_settings_refresh_interval;
    assert!(due_after("LimitExceededException") >= period.mul_f64(1.6));
    assert!(due_after("AccessDeniedException") <= Duration::from_secs(10));
}

#[test]
fn a_mode_switch_alone_leaves_what_is_collected_in_place() {
    let mut h = Harness::new(1, config());
    h.add_to(0, 1, "k", "d");
    // Drained into the collector, which waits for the record's max_buffered_time.
    assert!(h.poll().is_empty());
    assert_eq!(h.engine.collector.len(), 1);
    let on_demand = Ok(StreamSummary {
        max_record_size_kib: None,
        auto_distribution: false,
        on_demand: Some(true),
        status: "ACTIVE".into(),
    });
    h.engine.on_stream_settings(on_demand, h.now);
    assert_eq!(h.engine.s.live.changes(), 1);
    assert_eq!(h.engine.collector.len(), 1, "nothing re-sorted");
}

#[test]
fn back_from_auto_without_configured_aggregation_stays_plain() {
    let mut h = Harness::with_prediction(2, config(), false);
    h.engine.on_stream_settings(summary(false, None), h.now);
    h.engine.on_shard_map(Ok(shards(2)), h.now);
    assert!(!h.engine.s.aggregation);
}
