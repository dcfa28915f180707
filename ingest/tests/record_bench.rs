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

/// A record in a temporary SQLite file (kept while the directory lives).
async fn sqlite_record() -> (Record, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("rpm.db").display());
    let record = Record::connect(&url, 2).await.expect("open");
    (record, dir)
}

/// A record in a fresh PostgreSQL database (dropped with it); `None` when there is no server
/// (a failure under `CI=true`).
async fn postgres_record() -> Option<(Record, testkit::PgDatabase)> {
    let db = testkit::unavailable(testkit::PgDatabase::create().await)?;
    let record = Record::connect(db.url(), 2).await.expect("open");
    Some((record, db))
}

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
    let (record, _dir) = sqlite_record().await;
    probe("sqlite", &record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
async fn insert_rate_postgres() {
    let Some((record, _db)) = postgres_record().await else {
        return;
    };
    probe("postgres", &record).await;
}

/// What a binding lookup costs once its view is old, at 100 000 bindings: reading the whole
/// table again (what every lookup after the TTL did before the view was checked) against asking
/// for the table's version and finding it unchanged, beside the aggregate over the table that
/// the check ran before the version existed (on a connection of its own to `url`). Prints
/// medians of 5; asserts only that the unchanged view was not read again.
async fn binding_probe(name: &str, record: &Record, url: &str) {
    const BINDINGS: usize = 100_000;
    let fleet = BenchFleet::setup(record, BINDINGS).await.expect("fleet");
    let (gateway, device) = (&fleet.gateway, &fleet.devices[0]);
    let at = fleet.start;
    record.set_binding_ttl(std::time::Duration::ZERO);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut full = Vec::new();
    for i in 1..=5 {
        // A change (an unbinding) makes the next lookup read the whole table.
        record
            .unbind(
                gateway,
                &fleet.devices[i],
                None,
                at + std::time::Duration::from_secs(3600),
                &ingest::record::Audit {
                    who: "probe",
                    why: "a change to the bindings",
                },
            )
            .await
            .expect("unbind");
        let before = record.binding_reloads();
        let started = Instant::now();
        record
            .binding_for(gateway, device, None, at)
            .await
            .expect("lookup")
            .expect("bound");
        full.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(record.binding_reloads(), before + 1, "changed: read again");
    }
    let reloads = record.binding_reloads();
    let mut checked = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        record
            .binding_for(gateway, device, None, at)
            .await
            .expect("lookup")
            .expect("bound");
        checked.push(started.elapsed().as_secs_f64() * 1e3);
    }
    assert_eq!(
        record.binding_reloads(),
        reloads,
        "unchanged: not read again"
    );
    // Five runs of the aggregate on one connection of the probe's own.
    macro_rules! aggregate_ms {
        ($connection:ty) => {{
            let mut c = <$connection as sqlx::Connection>::connect(url)
                .await
                .expect("connect");
            let mut ms = Vec::new();
            for _ in 0..5 {
                let started = Instant::now();
                let _: (i64, i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), COALESCE(MAX(binding_id), 0), COUNT(valid_to) \
                     FROM device_bindings",
                )
                .fetch_one(&mut c)
                .await
                .expect("aggregate");
                ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
            ms
        }};
    }
    let before = if url.starts_with("sqlite") {
        aggregate_ms!(sqlx::SqliteConnection)
    } else {
        aggregate_ms!(sqlx::PgConnection)
    };
    println!(
        "{name}: stale binding lookup at {BINDINGS} bindings: full reload {:.1} ms, \
         version unchanged {:.2} ms; the aggregate the check ran before {:.2} ms (medians of 5)",
        median(full),
        median(checked),
        median(before)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
async fn binding_lookup_sqlite() {
    let (record, dir) = sqlite_record().await;
    let url = format!("sqlite:{}", dir.path().join("rpm.db").display());
    binding_probe("sqlite", &record, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
async fn binding_lookup_postgres() {
    let Some((record, db)) = postgres_record().await else {
        return;
    };
    binding_probe("postgres", &record, db.url()).await;
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
    let (record, _dir) = sqlite_record().await;
    baselines_insert_their_rows_and_leave_the_record_alone(record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baselines_on_postgres() {
    let Some((record, _db)) = postgres_record().await else {
        return;
    };
    baselines_insert_their_rows_and_leave_the_record_alone(record).await;
}
