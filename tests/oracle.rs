//! The buffer-bound oracle itself can fail: it flags a ledger over the bound, a double release
//! of buffer room, and a ledger that disagrees with the semaphores once settled. The
//! reliability suite relies on these checks (through `BoundSampler`).

mod support;

use kinesis_producer::Stats;
use support::invariants::{assert_bound_agrees, bound_breach};

const RECORDS: u64 = 100;
const BYTES: u64 = 10_000;

fn stats(pending: (u64, u64), free: (u64, u64)) -> Stats {
    withheld(pending, free, (0, 0))
}

fn withheld(pending: (u64, u64), free: (u64, u64), withheld: (u64, u64)) -> Stats {
    Stats {
        records_pending: pending.0,
        bytes_pending: pending.1,
        buffer_records_free: free.0,
        buffer_bytes_free: free.1,
        buffer_records_withheld: withheld.0,
        buffer_bytes_withheld: withheld.1,
        ..Stats::default()
    }
}

#[test]
fn a_snapshot_within_the_bound_passes() {
    // 5 records in transit between `add` and the engine: room taken, not yet in the ledger.
    let s = stats((60, 6_000), (35, 3_500));
    assert_eq!(bound_breach(&s, RECORDS, BYTES), None);
    assert_eq!(
        bound_breach(&stats((100, 10_000), (0, 0)), RECORDS, BYTES),
        None
    );
}

#[test]
fn a_ledger_over_the_bound_is_a_breach() {
    let s = stats((101, 6_000), (0, 0));
    let breach = bound_breach(&s, RECORDS, BYTES).expect("breach");
    assert!(breach.contains("ledger 101 records"), "{breach}");
    assert!(bound_breach(&stats((10, 10_001), (0, 0)), RECORDS, BYTES).is_some());
}

#[test]
fn more_free_room_than_the_bound_is_a_double_release() {
    assert!(bound_breach(&stats((0, 0), (101, 10_000)), RECORDS, BYTES).is_some());
    assert!(bound_breach(&stats((0, 0), (100, 10_001)), RECORDS, BYTES).is_some());
}

#[test]
fn settled_ledger_and_semaphores_that_agree_pass() {
    assert_bound_agrees(&stats((0, 0), (100, 10_000)), RECORDS, BYTES);
    assert_bound_agrees(&stats((3, 300), (97, 9_700)), RECORDS, BYTES);
    // Room held back by the admission cap counts neither as free nor as pending.
    let s = withheld((3, 300), (57, 5_700), (40, 4_000));
    assert_bound_agrees(&s, RECORDS, BYTES);
    assert_eq!(bound_breach(&s, RECORDS, BYTES), None);
}

#[test]
fn withheld_room_on_top_of_all_free_room_is_a_double_release() {
    let s = withheld((0, 0), (100, 10_000), (1, 0));
    assert!(bound_breach(&s, RECORDS, BYTES).is_some());
}

#[test]
#[should_panic(expected = "disagree")]
fn a_lost_release_shows_as_disagreement_once_settled() {
    // The engine let go of a record but its room never came back.
    assert_bound_agrees(&stats((0, 0), (99, 9_900)), RECORDS, BYTES);
}

#[test]
#[should_panic(expected = "disagree")]
fn a_double_release_below_the_bound_shows_as_disagreement_once_settled() {
    // One record held, yet every permit is free: its room was given back twice.
    assert_bound_agrees(&stats((1, 100), (100, 10_000)), RECORDS, BYTES);
}
