//! Bad input through `add` (and `try_add`, `add_blocking`) against kinesis-sim: each record is
//! either refused at once with an error that names the field, the value's size and the limit
//! (the record handed back unchanged), or accepted exactly as the API allows and then stored
//! byte for byte; the producer keeps serving the good records around the bad ones. Plus
//! configuration errors, which fail `build()` with a message naming the setting.

mod support;

use bytes::Bytes;
use kinesis_producer::{
    deaggregate_strict, AddError, BuildError, PendingRecord, Producer, ProducerBuilder, UserRecord,
    ValidationError,
};
use kinesis_sim::{SimConfig, Simulator};
use std::collections::HashMap;
use std::time::Duration;

const STREAM: &str = "bad-input";
const MIB: usize = 1024 * 1024;
const DEADLINE: Duration = Duration::from_secs(60);

async fn sim() -> Simulator {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.create_stream(STREAM, 3).unwrap();
    sim
}

async fn build(sim: &Simulator, b: ProducerBuilder) -> Result<Producer, BuildError> {
    b.build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
}

fn builder() -> ProducerBuilder {
    Producer::builder()
        .stream_name(STREAM)
        .max_buffered_time(Duration::from_millis(10))
}

/// What a bad or borderline record must come to.
enum Expect {
    /// Accepted, then stored exactly as given.
    Stored,
    /// Refused by `add`; the message holds every one of these pieces.
    Refused(&'static [&'static str]),
}

fn cases() -> Vec<(&'static str, UserRecord, Expect)> {
    use Expect::*;
    let key_257 = "k".repeat(257);
    let at_limit = MIB - 3; // data + 3-byte key = the 1 MiB record limit
    let ehk = |h: &str| UserRecord::new("k", "d").with_explicit_hash_key(h);
    vec![
        (
            "empty key",
            UserRecord::new("", "d"),
            Refused(&["partition_key", "empty", "1 to 256"]),
        ),
        (
            "257-character key",
            UserRecord::new(key_257, "d"),
            Refused(&["partition_key", "257", "256"]),
        ),
        (
            "257 four-byte characters",
            UserRecord::new("😀".repeat(257), "d"),
            Refused(&["partition_key", "257", "256"]),
        ),
        (
            "256 two-byte characters",
            UserRecord::new("é".repeat(256), "d"),
            Stored,
        ),
        (
            "256 three-byte characters",
            UserRecord::new("€".repeat(256), "d"),
            Stored,
        ),
        (
            "256 four-byte characters",
            UserRecord::new("😀".repeat(256), "d"),
            Stored,
        ),
        ("NUL key", UserRecord::new("\0", "d"), Stored),
        (
            "control characters",
            UserRecord::new("a\u{1}\t\n\r\u{1b}\u{7f}\u{85}b", "d\0\u{1}"),
            Stored,
        ),
        ("empty data", UserRecord::new("k", Bytes::new()), Stored),
        (
            "data exactly at the record limit",
            UserRecord::new("key", vec![7u8; at_limit]),
            Stored,
        ),
        (
            "data one byte over the record limit",
            UserRecord::new("key", vec![7u8; at_limit + 1]),
            Refused(&[
                "record size",
                "1048574",
                "partition_key 3",
                "1048577",
                "1048576",
            ]),
        ),
        ("hash key 0", ehk("0"), Stored),
        (
            "hash key 2^128 - 1",
            ehk("340282366920938463463374607431768211455"),
            Stored,
        ),
        (
            "hash key negative",
            ehk("-1"),
            Refused(&["explicit_hash_key", "\"-1\"", "'-'", "2^128 - 1"]),
        ),
        (
            "hash key 2^128",
            ehk("340282366920938463463374607431768211456"),
            Refused(&["explicit_hash_key", "39-digit", "2^128 - 1"]),
        ),
        (
            "hash key not a number",
            ehk("abc"),
            Refused(&["explicit_hash_key", "\"abc\"", "'a'"]),
        ),
        (
            "hash key with a leading space",
            ehk(" 12"),
            Refused(&["explicit_hash_key", "' '", "byte 0"]),
        ),
        (
            "hash key with an inner space",
            ehk("1 2"),
            Refused(&["explicit_hash_key", "' '", "byte 1"]),
        ),
        (
            "hash key with a trailing space",
            ehk("12 "),
            Refused(&["explicit_hash_key", "' '", "byte 2"]),
        ),
        (
            "hash key empty",
            ehk(""),
            Refused(&["explicit_hash_key", "empty"]),
        ),
        (
            "hash key with a plus",
            ehk("+5"),
            Refused(&["explicit_hash_key", "'+'"]),
        ),
        (
            "hash key in exponent form",
            ehk("1e5"),
            Refused(&["explicit_hash_key", "'e'"]),
        ),
        (
            "hash key in Arabic-Indic digits",
            ehk("١٢"),
            Refused(&["explicit_hash_key", "'١'"]),
        ),
        (
            "hash key with leading zeros",
            ehk("007"),
            Refused(&["explicit_hash_key", "leading zero"]),
        ),
    ]
}

/// Good records around every bad one, through `add`; every accepted record is stored exactly
/// where its outcome says, with its exact key, hash key and data.
async fn bad_records_do_not_disturb_good_ones(aggregation: bool) {
    let sim = sim().await;
    let p = build(&sim, builder().aggregation(aggregation))
        .await
        .unwrap();
    let mut accepted: Vec<(String, UserRecord, PendingRecord)> = Vec::new();
    let mut good = 0;
    for (name, record, expect) in cases() {
        for _ in 0..20 {
            good += 1;
            let r = UserRecord::new(format!("good-{good}"), format!("good data {good}"));
            accepted.push(("good".into(), r.clone(), p.add(r).await.unwrap()));
        }
        match (p.add(record.clone()).await, expect) {
            (Ok(pending), Expect::Stored) => accepted.push((name.into(), record, pending)),
            (Ok(_), Expect::Refused(_)) => panic!("{name}: accepted, expected a refusal"),
            (Err(e), Expect::Stored) => panic!("{name}: refused: {e}"),
            (Err(e), Expect::Refused(pieces)) => {
                let text = e.to_string();
                for piece in pieces {
                    assert!(text.contains(piece), "{name}: {text:?} lacks {piece:?}");
                }
                let AddError::Invalid {
                    error,
                    record: back,
                } = e
                else {
                    panic!("{name}: {text}");
                };
                assert_eq!(back, record, "{name}: the record comes back unchanged");
                // The other entry points refuse it the same way.
                let again = p.try_add(record.clone()).unwrap_err();
                assert!(matches!(&again, AddError::Invalid { error: e2, .. } if *e2 == error));
                let blocking = {
                    let (p, r) = (p.clone(), record.clone());
                    tokio::task::spawn_blocking(move || p.add_blocking(r).err())
                        .await
                        .unwrap()
                };
                assert!(
                    matches!(&blocking, Some(AddError::Invalid { error: e2, .. }) if *e2 == error)
                );
            }
        }
    }
    let mut outcomes = Vec::new();
    for (name, r, pending) in accepted {
        let out = tokio::time::timeout(DEADLINE, pending)
            .await
            .expect("resolved in time")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        outcomes.push((name, r, out));
    }
    let stored: HashMap<(String, String), Vec<kinesis_producer::DeaggregatedRecord>> = sim
        .records(STREAM)
        .into_iter()
        .map(|s| {
            let subs = deaggregate_strict(
                &s.partition_key,
                s.explicit_hash_key.as_deref(),
                Bytes::from(s.data),
            )
            .unwrap();
            ((s.shard_id, s.sequence_number), subs)
        })
        .collect();
    let mut sub_records = 0;
    for subs in stored.values() {
        sub_records += subs.len();
    }
    assert_eq!(
        sub_records,
        outcomes.len(),
        "each accepted record stored once"
    );
    for (name, r, out) in &outcomes {
        let subs = &stored[&(out.shard_id.to_string(), out.sequence_number.to_string())];
        let sub = &subs[out.sub_sequence_number.unwrap_or(0) as usize];
        assert_eq!(sub.partition_key, r.partition_key, "{name}");
        assert_eq!(sub.explicit_hash_key, r.explicit_hash_key, "{name}");
        assert_eq!(sub.data, r.data, "{name}");
    }
    p.shutdown().await.unwrap();
    let stats = p.stats();
    assert_eq!(stats.records_received, outcomes.len() as u64);
    assert_eq!(stats.records_put, outcomes.len() as u64);
    assert_eq!(stats.records_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_aggregation_off() {
    bad_records_do_not_disturb_good_ones(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_aggregation_on() {
    bad_records_do_not_disturb_good_ones(true).await;
}

/// A record larger than `max_buffered_bytes` could never be buffered: refused, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_larger_than_the_buffer_is_refused_not_stuck() {
    let sim = sim().await;
    let p = build(&sim, builder().max_buffered_bytes(1_000))
        .await
        .unwrap();
    let r = UserRecord::new("k", vec![0u8; 1_000]);
    let e = tokio::time::timeout(Duration::from_secs(5), p.add(r))
        .await
        .expect("no wait")
        .unwrap_err();
    assert!(
        matches!(
            e,
            AddError::Invalid {
                error: ValidationError::LargerThanBuffer {
                    size: 1_001,
                    limit: 1_000
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("max_buffered_bytes"), "{e}");
    p.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_fail_build_with_a_clear_message() {
    let sim = sim().await;
    let cases: Vec<(&str, ProducerBuilder, &[&str])> = vec![
        (
            "zero in-flight requests",
            builder().max_in_flight(0),
            &["max_in_flight", "0", "at least 1"],
        ),
        (
            "TTL zero",
            builder().record_ttl(Duration::ZERO),
            &["record_ttl", "0s", "more than zero"],
        ),
        (
            "request limit over 10 MiB",
            builder().max_request_bytes(10 * MIB + 1),
            &["max_request_bytes", "10485761", "10485760"],
        ),
        (
            "aggregate size over the record limit",
            builder().aggregation_max_size(MIB + 1),
            &["aggregation_max_size", "1048577", "record size limit"],
        ),
        (
            "aggregate size over the request limit",
            builder()
                .max_request_bytes(MIB)
                .aggregation_max_size(MIB + 1),
            &["aggregation_max_size", "1048577", "max_request_bytes"],
        ),
        (
            "501 records per request",
            builder().max_records_per_request(501),
            &["max_records_per_request", "501", "500"],
        ),
        (
            "rate limit 0 %",
            builder().rate_limit_percent(0),
            &["rate_limit_percent", "0", "100"],
        ),
        (
            "no stream",
            Producer::builder().stream_name(""),
            &["stream", "stream_name"],
        ),
    ];
    for (name, b, pieces) in cases {
        let e = build(&sim, b).await.expect_err(name);
        assert!(matches!(e, BuildError::Config(_)), "{name}: {e:?}");
        let text = e.to_string();
        for piece in pieces {
            assert!(text.contains(piece), "{name}: {text:?} lacks {piece:?}");
        }
    }
    // The aggregate limit applies only with aggregation on.
    let p = build(
        &sim,
        builder().aggregation(false).aggregation_max_size(MIB + 1),
    )
    .await
    .expect("aggregation off: the aggregate size does not matter");
    p.shutdown().await.unwrap();
}
