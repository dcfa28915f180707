//! Model-based check of deduplication: random batches of readings with many repeats (inside a
//! batch and across batches) against a `HashSet` of what has been stored. Few cases, because
//! each one opens a fresh database.

use std::collections::HashSet;

use ingest::record::Record;
use ingest::record::bench::BenchFleet;
use proptest::prelude::*;
use vitals::ReadingId;

/// Batches of reading numbers from a small range, so repeats are common.
fn batches() -> impl Strategy<Value = Vec<Vec<u64>>> {
    prop::collection::vec(prop::collection::vec(0u64..60, 0..40), 1..6)
}

async fn check(record: &Record, batches: &[Vec<u64>]) -> Result<(), TestCaseError> {
    let fleet = BenchFleet::setup(record, 3)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut stored: HashSet<u64> = HashSet::new();
    for numbers in batches {
        let batch: Vec<_> = numbers.iter().map(|&i| fleet.reading(i)).collect();
        let outcome = record
            .insert_batch(&batch)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // The model: new are the numbers not stored before, once each, in first-seen order.
        let mut expected_new: Vec<ReadingId> = Vec::new();
        for &i in numbers {
            if stored.insert(i) {
                expected_new.push(fleet.reading(i).0.id);
            }
        }
        prop_assert_eq!(&outcome.new, &expected_new);
        prop_assert_eq!(outcome.duplicates, numbers.len() - expected_new.len());
    }
    let count = record
        .count_readings()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(count, stored.len() as u64);
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn dedup_matches_a_set_model_on_sqlite(batches in batches()) {
        let rt = runtime();
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("temporary directory");
            let url = format!("sqlite:{}", dir.path().join("rpm.db").display());
            let record = Record::connect(&url, 2).await.expect("open");
            let result = check(&record, &batches).await;
            record.close().await;
            result
        })?;
    }

    #[test]
    fn dedup_matches_a_set_model_on_postgres(batches in batches()) {
        let rt = runtime();
        rt.block_on(async {
            let Some(db) = testkit::unavailable(testkit::PgDatabase::create().await) else {
                return Ok(());
            };
            let record = Record::connect(db.url(), 2).await.expect("open");
            let result = check(&record, &batches).await;
            record.close().await;
            result
        })?;
    }
}
