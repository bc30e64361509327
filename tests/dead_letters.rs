//! The dead-letter channel against kinesis-sim over HTTP: every record that finally fails
//! arrives once, whole, with its error, tracked and fire-and-forget alike; a full channel drops
//! and counts, and never holds the producer up.

mod support;

use kinesis_producer::{DeadLetter, HashKey, Producer, RecordError, UserRecord};
use kinesis_sim::{Faults, SimConfig, Simulator};
use std::collections::HashMap;
use std::time::Duration;

async fn failing_stream(name: &str) -> Simulator {
    let sim = Simulator::start(SimConfig::default()).await.expect("start");
    sim.create_stream(name, 2).expect("create");
    sim
}

fn fail_everything(sim: &Simulator, name: &str) {
    let faults = Faults {
        http_503_rate: 1.0,
        ..Faults::default()
    };
    sim.set_faults(name, faults).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_record_arrives_once_with_its_error() {
    let sim = failing_stream("dead").await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DeadLetter>(1_000);
    let p = Producer::builder()
        .stream_name("dead")
        .record_ttl(Duration::from_millis(800))
        .dead_letters(tx)
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build");
    fail_everything(&sim, "dead");
    let mut tracked = Vec::new();
    let mut sent: HashMap<String, UserRecord> = HashMap::new();
    for i in 0..50 {
        let r = UserRecord::new(format!("k{i}"), format!("tracked {i}"))
            .with_explicit_hash_key((i as u128 * 1_000).to_string());
        sent.insert(format!("tracked {i}"), r.clone());
        tracked.push(p.add(r).await.expect("accepted"));
        let u = UserRecord::new(format!("u{i}"), format!("untracked {i}"));
        sent.insert(format!("untracked {i}"), u.clone());
        p.add_untracked(u).await.expect("accepted");
    }
    for f in tracked {
        assert!(matches!(f.await, Err(RecordError::Expired { .. })));
    }
    p.flush().await.expect("flush");
    let mut letters = Vec::new();
    while let Ok(letter) = rx.try_recv() {
        letters.push(letter);
    }
    assert_eq!(letters.len(), 100, "each failed record once");
    for l in &letters {
        let data = String::from_utf8(l.record.data.to_vec()).unwrap();
        let original = sent.remove(&data).expect("a record that was added, once");
        assert_eq!(l.record, original);
        assert_eq!(l.stream.as_str(), "dead");
        let expected_hash = match &original.explicit_hash_key {
            Some(h) => HashKey(h.parse().unwrap()),
            None => HashKey::from_partition_key(&original.partition_key),
        };
        assert_eq!(l.hash_key, expected_hash);
        assert!(
            matches!(l.error, RecordError::Expired { .. }),
            "{:?}",
            l.error
        );
        assert!(
            !l.error.attempts().is_empty(),
            "attempts included: {:?}",
            l.error
        );
    }
    assert!(sent.is_empty());
    let st = p.stats();
    assert_eq!((st.dead_letters_sent, st.dead_letters_dropped), (100, 0));
    p.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_drops_and_counts_and_the_producer_keeps_serving() {
    let sim = failing_stream("full").await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DeadLetter>(2);
    let p = Producer::builder()
        .stream_name("full")
        .record_ttl(Duration::from_millis(500))
        .dead_letters(tx)
        .build(&support::reader::sdk_config(&sim.endpoint_url()).await)
        .await
        .expect("build");
    fail_everything(&sim, "full");
    let mut pending = Vec::new();
    for i in 0..10 {
        pending.push(p.add(UserRecord::new("k", format!("{i}"))).await.unwrap());
    }
    for f in pending {
        assert!(f.await.is_err());
    }
    sim.set_faults("full", Faults::default()).unwrap();
    // The failures in a row put all sending in back-off (100 ms doubling, jittered): let it
    // run out, or the next record could spend its 500 ms TTL waiting for it (seen under load).
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.add(UserRecord::new("k", "later"))
        .await
        .unwrap()
        .await
        .expect("stored: nothing waited for the channel's reader");
    let st = p.stats();
    assert_eq!((st.dead_letters_sent, st.dead_letters_dropped), (2, 8));
    assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
    assert!(rx.try_recv().is_err());
    p.shutdown().await.expect("shutdown");
}
