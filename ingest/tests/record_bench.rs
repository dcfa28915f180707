//! A quick insert-rate probe on both backends, beside the raw bulk-insert baseline measured
//! in the same run. Not a timed test: it asserts nothing about speed and is ignored by
//! default; run it with
//! `cargo test -p ingest --test record_bench -- --ignored --nocapture` (and `--release` for
//! figures worth quoting). `rpm bench ingest` is the real benchmark.

use std::time::Instant;

use ingest::record::Record;
use ingest::record::bench::{BenchFleet, RawShape};

const READINGS: usize = 20_000;
const BATCH: usize = 1_000;

async fn probe(name: &str, record: &Record) {
    let fleet = BenchFleet::setup(record, 200).await.expect("fleet");
    let started = Instant::now();
    let mut new = 0;
    for first in (0..READINGS).step_by(BATCH) {
        let batch = fleet.readings(first as u64, BATCH);
        new += record
            .insert_batch(&batch)
            .await
            .expect("insert")
            .new_count();
    }
    let elapsed = started.elapsed();
    assert_eq!(new, READINGS);
    let raw = record
        .raw_insert_benchmark(READINGS, BATCH)
        .await
        .expect("baseline");
    println!(
        "{name}: insert_batch {:.0} readings/s ({READINGS} in batches of {BATCH}, {:.2} s); \
         raw multi-row insert baseline {:.0} readings/s ({:.2} s)",
        READINGS as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        raw.readings_per_sec(),
        raw.elapsed.as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
async fn insert_rate_sqlite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("rpm.db").display());
    let record = Record::connect(&url, 2).await.expect("open");
    probe("sqlite", &record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
async fn insert_rate_postgres() {
    let Some(db) = testkit::unavailable(testkit::PgDatabase::create().await) else {
        return;
    };
    let record = Record::connect(db.url(), 2).await.expect("open");
    probe("postgres", &record).await;
}

/// Both baselines run on both backends, insert what they say, and leave the record alone
/// (their scratch tables are dropped, so a second run starts clean).
async fn baselines_insert_their_rows_and_leave_the_record_alone(record: Record) {
    for shape in [RawShape::PrimaryKeys, RawShape::RecordIndexes] {
        for _ in 0..2 {
            let raw = record
                .raw_insert_benchmark_shaped(1_000, 300, shape)
                .await
                .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
            assert_eq!(raw.readings, 1_000);
            assert_eq!(raw.values, 2_000);
            assert!(raw.readings_per_sec() > 0.0);
        }
    }
    assert_eq!(record.count_readings().await.expect("count"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baselines_on_sqlite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("rpm.db").display());
    let record = Record::connect(&url, 2).await.expect("open");
    baselines_insert_their_rows_and_leave_the_record_alone(record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baselines_on_postgres() {
    let Some(db) = testkit::unavailable(testkit::PgDatabase::create().await) else {
        return;
    };
    let record = Record::connect(db.url(), 2).await.expect("open");
    baselines_insert_their_rows_and_leave_the_record_alone(record).await;
}
