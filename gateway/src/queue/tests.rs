//! The queue against a model: random pushes (with duplicates), acknowledgements in any order,
//! crashes (the queue dropped and reopened) and pruning, checked after every step against a
//! `VecDeque` of pending readings and a set of forwarded ids.

use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use vitals::*;

use super::*;

/// Reading number `n` of a small universe; even numbers carry a device timestamp (they can be
/// re-sent by a device), odd ones do not (continuous oximetry).
fn reading(n: u32) -> Reading {
    let at = datetime!(2026-11-20 00:00:00 UTC) + Duration::seconds(i64::from(n));
    let device_time = n
        .is_multiple_of(2)
        .then(|| time::PrimitiveDateTime::new(at.date(), at.time()));
    Reading {
        id: ReadingId(Default::default()),
        seq: 0,
        gateway: GatewayId::new("gw-1").expect("valid"),
        patient: PatientKey::new("pk-1").expect("valid"),
        device: DeviceIdentity::new("eui64:0011223344556677".parse().expect("valid")),
        user_index: None,
        reading_type: ReadingType::OximetrySpotCheck,
        device_time,
        measured_at: at,
        received_at: at,
        values: vec![Observed {
            kind: Kind::Spo2,
            value: Value::Number(Decimal::from_int(90 + i64::from(n % 10))),
            unit: Unit::Percent,
        }],
        flags: Flags::EMPTY,
    }
    .with_computed_id()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[derive(Clone, Debug)]
enum Op {
    Push(Vec<u32>),
    /// Peek this many, then acknowledge the ones whose bit is set in the mask.
    PeekAck(usize, u64),
    Crash,
    PruneAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u32..40, 0..8).prop_map(Op::Push),
        3 => (0usize..10, any::<u64>()).prop_map(|(n, mask)| Op::PeekAck(n, mask)),
        1 => Just(Op::Crash),
        1 => Just(Op::PruneAll),
    ]
}

#[derive(Default)]
struct Model {
    pending: VecDeque<u32>,
    forwarded: HashSet<u32>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queue_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        rt.block_on(async {
            let mut queue = Queue::open(&path).await.expect("open");
            let mut model = Model::default();
            let mut highest_seq = 0u64;
            let mut seq_of: std::collections::HashMap<ReadingId, u64> = Default::default();
            for op in ops {
                match op {
                    Op::Push(ns) => {
                        let batch: Vec<Reading> = ns.iter().map(|n| reading(*n)).collect();
                        let outcome = queue.push(&batch).await.expect("push");
                        let mut queued = 0;
                        for n in ns {
                            if !model.pending.contains(&n) && !model.forwarded.contains(&n) {
                                model.pending.push_back(n);
                                queued += 1;
                            }
                        }
                        prop_assert_eq!(outcome.queued, queued);
                        prop_assert_eq!(outcome.queued + outcome.duplicates, batch.len());
                    }
                    Op::PeekAck(n, mask) => {
                        let peeked = queue.peek(0, n).await.expect("peek");
                        let acked: Vec<&Reading> = peeked.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, r)| r).collect();
                        queue.ack(&acked.iter().map(|r| r.seq).collect::<Vec<_>>()).await.expect("ack");
                        for r in acked {
                            let n = (r.measured_at - datetime!(2026-11-20 00:00:00 UTC)).whole_seconds() as u32;
                            model.pending.retain(|p| *p != n);
                            if r.device_time.is_some() {
                                model.forwarded.insert(n);
                            }
                        }
                    }
                    Op::Crash => {
                        drop(queue);
                        queue = Queue::open(&path).await.expect("reopen after crash");
                    }
                    Op::PruneAll => {
                        queue.prune_forwarded(OffsetDateTime::now_utc() + Duration::days(1)).await.expect("prune");
                        model.forwarded.clear();
                    }
                }
                let all = queue.peek(0, usize::MAX).await.expect("peek all");
                let ids: Vec<ReadingId> = all.iter().map(|r| r.id).collect();
                let expected: Vec<ReadingId> = model.pending.iter().map(|n| reading(*n).id).collect();
                prop_assert_eq!(ids, expected, "queue order and content");
                for pair in all.windows(2) {
                    prop_assert!(pair[0].seq < pair[1].seq, "seq strictly increasing");
                }
                // A queued reading keeps its seq; a newly queued one gets a seq above every seq
                // handed out before, even across crashes and after its predecessors left.
                let before = highest_seq;
                for r in &all {
                    match seq_of.get(&r.id) {
                        Some(seq) => prop_assert_eq!(*seq, r.seq, "seq is stable"),
                        _ => {
                            prop_assert!(r.seq > before, "seq {} reused (highest before: {})", r.seq, before);
                            highest_seq = highest_seq.max(r.seq);
                        }
                    }
                    seq_of.insert(r.id, r.seq);
                }
                seq_of.retain(|id, _| ids_contains(&all, *id));
                prop_assert_eq!(queue.depth().await.expect("depth").readings, model.pending.len() as u64);
            }
            Ok(())
        })?;
    }
}

fn ids_contains(all: &[Reading], id: ReadingId) -> bool {
    all.iter().any(|r| r.id == id)
}

#[test]
fn seq_is_never_reused_even_when_the_queue_empties() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::open(dir.path().join("q.db")).await.expect("open");
        queue.push(&[reading(1), reading(3)]).await.expect("push");
        let first = queue.peek(0, 10).await.expect("peek");
        assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        queue.ack(&[1, 2]).await.expect("ack");
        assert_eq!(queue.depth().await.expect("depth").readings, 0);
        queue.close().await;
        let queue = Queue::open(dir.path().join("q.db")).await.expect("reopen");
        queue.push(&[reading(5)]).await.expect("push");
        assert_eq!(queue.peek(0, 10).await.expect("peek")[0].seq, 3);
        assert_eq!(queue.last_seq().await.expect("last"), 3);
    });
}

#[test]
fn a_record_resent_by_the_device_after_forwarding_is_not_queued_again() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::open(dir.path().join("q.db")).await.expect("open");
        let stored = reading(2); // has a device timestamp
        let live = reading(3); // does not
        assert_eq!(
            queue
                .push(&[stored.clone(), live.clone()])
                .await
                .expect("push")
                .queued,
            2
        );
        assert_eq!(
            queue
                .push(std::slice::from_ref(&stored))
                .await
                .expect("push")
                .duplicates,
            1,
            "already queued"
        );
        queue.ack(&[1, 2]).await.expect("ack");
        let again = queue
            .push(std::slice::from_ref(&stored))
            .await
            .expect("push");
        assert_eq!(
            again,
            PushOutcome {
                queued: 0,
                duplicates: 1
            },
            "forwarded within the retention window"
        );
        assert!(queue.knows(stored.id).await.expect("knows"));
        assert!(
            !queue.knows(live.id).await.expect("knows"),
            "only re-sendable ids are remembered"
        );
        assert_eq!(
            queue
                .prune_forwarded(datetime!(2030-01-01 00:00:00 UTC))
                .await
                .expect("prune"),
            1
        );
        assert_eq!(
            queue.push(&[stored]).await.expect("push").queued,
            1,
            "after the window it is forwarded again (the server dedups)"
        );
    });
}

#[test]
fn depth_reports_the_oldest_measurement_and_envelope_seqs_survive_restarts() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.db");
        let queue = Queue::open(&path).await.expect("open");
        assert_eq!(
            queue.depth().await.expect("depth"),
            Depth {
                readings: 0,
                oldest: None
            }
        );
        queue.push(&[reading(7), reading(4)]).await.expect("push");
        let depth = queue.depth().await.expect("depth");
        assert_eq!(depth.readings, 2);
        assert_eq!(depth.oldest, Some(reading(4).measured_at));
        assert_eq!(queue.take_envelope_seq().await.expect("seq"), 1);
        assert_eq!(queue.take_envelope_seq().await.expect("seq"), 2);
        queue.close().await;
        let queue = Queue::open(&path).await.expect("reopen");
        assert_eq!(queue.take_envelope_seq().await.expect("seq"), 3);
        assert!(queue.disk_free_bytes().is_some_and(|b| b > 0));
    });
}

#[test]
fn a_large_batch_is_split_under_the_parameter_limit() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::open(dir.path().join("q.db")).await.expect("open");
        let batch: Vec<Reading> = (0..2500).map(reading).collect();
        assert_eq!(queue.push(&batch).await.expect("push").queued, 2500);
        let seqs: Vec<u64> = queue
            .peek(0, 3000)
            .await
            .expect("peek")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs.len(), 2500);
        queue.ack(&seqs).await.expect("ack");
        assert_eq!(queue.depth().await.expect("depth").readings, 0);
    });
}

#[test]
fn a_push_that_finds_the_disk_full_fails_whole_and_the_same_push_succeeds_once_there_is_room() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::open(dir.path().join("q.db")).await.expect("open");
        queue.push(&[reading(1)]).await.expect("push");
        queue.limit_size_for_tests(Some(1)).await.expect("limit");
        // More than the pages already allocated can hold.
        let batch: Vec<Reading> = (2..200).map(reading).collect();
        let err = queue.push(&batch).await.expect_err("the file may not grow");
        assert!(
            matches!(&err, QueueError::Database { .. }),
            "a database error: {err}"
        );
        assert!(
            err.to_string().contains("database or disk is full"),
            "says what happened: {err}"
        );
        assert_eq!(
            queue.depth().await.expect("depth").readings,
            1,
            "nothing of the failed batch was kept"
        );
        queue.limit_size_for_tests(None).await.expect("lift");
        assert_eq!(queue.push(&batch).await.expect("push").queued, batch.len());
        assert_eq!(queue.depth().await.expect("depth").readings, 199);
    });
}
