//! The patient record: readings, the registry (patients, gateways, devices and their
//! bindings), dead letters, gateway message sequence numbers and the audit log, in SQLite (the
//! embedded default) or PostgreSQL (production), behind one type, [`Record`].
//!
//! ```no_run
//! # async fn demo() -> ingest::record::Result<()> {
//! use ingest::record::Record;
//! let record = Record::connect("sqlite:rpm.db", 4).await?; // or postgres://…
//! println!("{} readings", record.count_readings().await?);
//! # Ok(()) }
//! ```
//!
//! # Backends: an enum over native pools, one body of code
//!
//! [`Record`] holds either a pair of `SqlitePool`s or a `PgPool`. Every method is written once
//! and expanded for each backend by a small macro, so both arms are the same source text
//! type-checked against each driver: the same SQL (written with `$1` placeholders, which
//! SQLite accepts too), the same binds, the same row decoding. sqlx's `Any` driver was the
//! other choice; it was not taken because it decodes only a handful of types through an extra
//! conversion layer on every value (the hot path binds tens of thousands of parameters a
//! second) and it hides which backend a connection speaks, which the few places that need a
//! dialect (the migration directory, durability checks, bind-parameter limits) must know.
//! The price of native pools is that the code is compiled twice; the tests run every test
//! against both backends (SQLite in a temporary directory, PostgreSQL through `testkit`).
//!
//! # Schema
//!
//! `migrations/sqlite/` and `migrations/postgres/` hold the same tables column for column
//! (`INTEGER`/`BIGINT`, `REAL`/`DOUBLE PRECISION`, `BLOB`/`BYTEA`, rowid/identity keys):
//!
//! - `patients`: the pseudonymous `patient_key`, the display name (PHI: read by the console,
//!   never logged, redacted from `Debug`), the condition, the threshold profile id and the
//!   care team.
//! - `gateways` (registration, last seen, last status as JSON), `devices` (identity from the
//!   Device Information service, last seen) and `device_bindings`: gateway ↔ device ↔
//!   patient, with an optional user slot for multi-user cuffs and a validity window
//!   `[valid_from, valid_to)`; unbinding closes the window, history is kept.
//! - `readings`: one row per measurement event keyed by its deterministic id (text UUID),
//!   with patient, device, gateway, type, the device's own timestamp, measured/received/
//!   ingested times, flag bits and the gateway's queue sequence number.
//! - `reading_values`: one row per value with the exact decimal as text (`"2.10"` stays
//!   `"2.10"`), the same as a double for comparisons, the UCUM unit, or the reason a value is
//!   absent. `patient_key` and `measured_at` are copied from the reading so cohort queries
//!   (`kind, measured_at, value_num`) and per-patient series (`patient_key, kind,
//!   measured_at`) are single index range scans; the per-patient timeline uses
//!   `readings (patient_key, measured_at)`.
//! - `dead_letters`: rejected input with its [`vitals::RejectReason`] code, the error text and
//!   at most [`MAX_DEAD_LETTER_PAYLOAD`] bytes of payload (the full length is kept); the same
//!   payload rejected again on the same topic for the same reason bumps `count` instead of
//!   adding a row, so a gateway re-sending a poisoned message cannot flood the table.
//! - `gateway_seq`: the highest envelope sequence number seen per gateway.
//! - `audit_log`: who, when, what, on what, and why, for every registry change (and, later,
//!   threshold changes and acknowledgements).
//!
//! Times are stored as Unix microseconds in 64-bit integers on both backends (the precision
//! of a PostgreSQL `timestamptz`), so the same SQL compares and indexes them everywhere.
//! - `alerts` (at most one open per patient and rule), `alert_events` and `rule_versions`
//!   (migration 0002), written with the readings that raised them in one transaction:
//!   [`Record::insert_batch_evaluated`] (the `alerts.rs` module doc has the contract).
//!
//! - `notifier_outbox`, `notifier_attempts`, `notifier_groups` (migration 0003): the
//!   notifier's outbox, written in the alert's transaction (see [`crate::notify`]).
//! - `console_users`, `console_sessions`, `api_tokens` and `threshold_versions` (migration
//!   0004): console staff, their sessions and tokens (stored hashed, see `staff.rs`), and
//!   every per-patient threshold change with who, when and why.
//! - `binding_version` (migration 0007): one counter that triggers on `device_bindings` bump
//!   with every insert, update or delete, so ingest's in-memory view of the bindings asks one
//!   row whether it is still current.
//!
//! # Durability
//!
//! A method that returns `Ok` after writing has committed, and committed means on disk.
//! SQLite runs in WAL mode with `synchronous=FULL`: each commit fsyncs the WAL, so a power
//! cut after `Ok` loses nothing (`NORMAL` would be crash-safe for the process but may lose
//! the last commits on power loss, which would break the promise that an acknowledged MQTT
//! message is in the record). One fsync per batch is cheap when batches are hundreds of
//! readings. A connection of its own copies the WAL into the database file every 100 ms
//! (`PRAGMA wal_checkpoint(PASSIVE)`), so the writer's commits mostly skip that copy and its
//! fsync. Writes go through a single-connection SQLite pool, so writers queue in the pool
//! instead of failing with `SQLITE_BUSY`; reads use a separate pool and see the last commit.
//! PostgreSQL relies on the server's `synchronous_commit` (on by default); [`Record`]
//! checks it and `fsync` when it connects and warns when either is off.
//!
//! # Deduplication and replays
//!
//! A reading's id is derived from what the device said, so the same measurement re-sent,
//! re-read from device memory or re-published after a crash has the same id.
//! [`Record::insert_batch`] inserts with `ON CONFLICT (reading_id) DO NOTHING` in one
//! transaction and reports which ids were new: only those go on to the rules engine, so a
//! duplicate never raises a second alert. Duplicates inside one batch count as duplicates too.
//!
//! [`Record::check_and_advance_seq`] tracks the highest envelope sequence number per gateway
//! and says whether a message is in order, skips ahead, or is a replay (a number already
//! seen). A replay only flags: after a gateway or broker crash, re-delivering a message whose
//! acknowledgement was lost is legitimate, so the caller still stores its readings (they
//! dedup by id) and counts the replay; a reading is never dropped because its envelope's
//! number was old.

mod alert_batch;
mod alerts;
mod console;
mod dead_letters;
mod error;
mod readings;
mod registry;
mod staff;

pub mod bench;

use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;

use crate::config::DatabaseConfig;

pub use alerts::{
    AlertEventKind, AlertState, AlertWrite, Evaluate, OpenAlert, RuleVersion, StoredAlert,
    StoredAlertEvent, WrittenEvent, audience_str,
};
pub use console::{
    AckView, AuditFilter, AuditView, CaseloadRow, CohortFilter, InboxAlert, InboxQuery,
    LastReadingView, MeanView, NotificationView, QueueDepths, ThresholdVersion, ValueFilter,
};
pub use dead_letters::{DeadLetter, MAX_DEAD_LETTER_PAYLOAD, SeqCheck};
pub use error::{RecordError, Result};
pub use readings::{
    BatchOutcome, Committed, LastValue, Page, ReadingsPage, SQLITE_CHUNKS, StoredReading,
};
pub use registry::{
    Audit, AuditEntry, BINDING_CACHE_TTL, Binding, Device, Gateway, NewBinding, NewPatient,
    Patient, PatientUpdate,
};
pub use staff::{
    ApiToken, AuthVia, LOCKOUT_AFTER, LOCKOUT_FOR, LoginRefused, MIN_PASSWORD, NewSession,
    Principal, Role, StaffUser, check_username,
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a [`Record`] is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// SQLite (a file, or `sqlite::memory:` for throwaway use).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

#[derive(Clone)]
enum Backend {
    Sqlite {
        /// One connection: SQLite has one writer at a time, so writers wait here, in order.
        write: SqlitePool,
        /// Readers (WAL lets them run beside the writer).
        read: SqlitePool,
        /// The WAL checkpointer's connection (none for an in-memory database, which has no
        /// WAL); see [`checkpoint_in_background`].
        checkpoint: Option<SqlitePool>,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's write (or read) pool and `$db` to its
/// `sqlx::Database` type. The body is the same text in both arms, checked against each driver.
macro_rules! with_pool {
    ($record:expr, write, |$pool:ident, $db:ident| $body:expr) => {
        match &$record.backend {
            $crate::record::Backend::Sqlite { write: $pool, .. } => {
                #[allow(dead_code)]
                type $db = ::sqlx::Sqlite;
                $body
            }
            $crate::record::Backend::Postgres($pool) => {
                #[allow(dead_code)]
                type $db = ::sqlx::Postgres;
                $body
            }
        }
    };
    ($record:expr, read, |$pool:ident, $db:ident| $body:expr) => {
        match &$record.backend {
            $crate::record::Backend::Sqlite { read: $pool, .. } => {
                #[allow(dead_code)]
                type $db = ::sqlx::Sqlite;
                $body
            }
            $crate::record::Backend::Postgres($pool) => {
                #[allow(dead_code)]
                type $db = ::sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

/// The patient record. Cheap to clone: clones share the connection pools and the binding
/// cache (and `close` closes them for all); every method takes `&self`.
#[derive(Clone)]
pub struct Record {
    backend: Backend,
    /// Shared by clones, so a change made through one is seen by all.
    bindings: std::sync::Arc<RwLock<registry::BindingCache>>,
    /// When set, alert writes enqueue their notifications in the same transaction.
    notifications: Option<std::sync::Arc<crate::notify::Notifications>>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("backend", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Record {
    /// Opens the database named in the config and brings its schema up to date.
    pub async fn open(config: &DatabaseConfig) -> Result<Self> {
        Self::connect(&config.url, config.max_connections).await
    }

    /// Opens `url` (`sqlite:PATH`, `sqlite://PATH`, `sqlite::memory:` or `postgres://…`) with
    /// at most `max_connections` connections (for SQLite: readers; there is one writer), and
    /// runs the migrations. A SQLite file is created if missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let max_connections = max_connections.max(1);
        let backend = if url.starts_with("sqlite:") {
            Self::open_sqlite(url, max_connections).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url, max_connections).await?
        } else {
            return Err(RecordError::Invalid(
                "database URL must start with sqlite: or postgres://".into(),
            ));
        };
        let record = Record {
            backend,
            bindings: std::sync::Arc::new(RwLock::new(registry::BindingCache::default())),
            notifications: None,
        };
        tracing::debug!(backend = ?record.kind(), "patient record open");
        Ok(record)
    }

    async fn open_sqlite(url: &str, max_connections: u32) -> Result<Backend> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| RecordError::Invalid(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // An in-memory database lives and dies with its connection: keep exactly one, forever.
        let single = || {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        };
        // The writer's page cache: a batch inserts into several B-trees (reading ids grow with
        // time, but the per-patient series and timeline indexes take rows at one place per
        // patient, and a backlog's old readings land mid-tree); SQLite's default 2 MiB cache
        // turns those pages into disk reads. 64 MiB (grown only as used) keeps the hot pages
        // of a large record in memory.
        //
        // Its statement journals in memory: a multi-row INSERT inside the batch transaction
        // copies each page it changes into a statement journal (so that a failed statement
        // can be undone alone), and SQLite's default keeps that journal in a temporary file,
        // written for every page a batch touches. Only the writer has statement journals; the
        // readers keep the default, so a large sort still spills to disk, not memory.
        //
        // Most of its checkpointing happens elsewhere: by default the connection whose
        // commit takes the WAL past 1 000 pages copies the WAL into the database file and
        // fsyncs it inside that commit. Every 10 000-reading batch did, and the commit (and
        // the acknowledgements and alerts waiting on it) waited for a second fsync. A
        // connection of its own now checkpoints every [`CHECKPOINT_EVERY`] while the writer
        // goes on, and the writer only past [`WRITER_CHECKPOINT_PAGES`]. The WAL starts again
        // from its beginning only when it was copied whole before the writer's next
        // transaction began, which a backlog (the next batch always waiting) rarely allows:
        // then the writer's own checkpoint still runs every few batches, copies what the
        // checkpointer has not yet, and lets the WAL start again.
        let write = single()
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", "-65536")
                    .pragma("temp_store", "memory")
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string()),
            )
            .await?;
        SQLITE_MIGRATIONS.run(&write).await?;
        let (read, checkpoint) = if in_memory {
            (write.clone(), None)
        } else {
            let checkpoint = single().connect_with(options.clone()).await?;
            tokio::spawn(checkpoint_in_background(checkpoint.clone()));
            let read = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .connect_with(options.read_only(true))
                .await?;
            (read, Some(checkpoint))
        };
        Ok(Backend::Sqlite {
            write,
            read,
            checkpoint,
        })
    }

    async fn open_postgres(url: &str, max_connections: u32) -> Result<Backend> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| RecordError::Invalid(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        for setting in ["synchronous_commit", "fsync"] {
            let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                .fetch_one(&pool)
                .await?;
            if value == "off" {
                tracing::warn!(
                    setting,
                    "PostgreSQL {setting} is off: a commit may be lost on a crash"
                );
            }
        }
        Ok(Backend::Postgres(pool))
    }

    /// This record, enqueueing notifications for every alert it writes, in the alert's own
    /// transaction (see [`crate::notify`]). Clones made after this share it.
    pub fn with_notifications(mut self, n: std::sync::Arc<crate::notify::Notifications>) -> Self {
        self.notifications = Some(n);
        self
    }

    /// What [`Record::with_notifications`] set.
    pub fn notifications(&self) -> Option<&std::sync::Arc<crate::notify::Notifications>> {
        self.notifications.as_ref()
    }

    /// The notifier's outbox in this database (migration 0003).
    pub async fn outbox(&self) -> Result<crate::notify::RecordOutbox> {
        let store_err = |e: notifier::StoreError| match e {
            notifier::StoreError::Database(e) => RecordError::from(e),
            other => RecordError::Invalid(other.to_string()),
        };
        Ok(match &self.backend {
            Backend::Sqlite { write, .. } => crate::notify::RecordOutbox::Sqlite {
                outbox: notifier::SqliteOutbox::with_pool(write.clone())
                    .await
                    .map_err(store_err)?,
                pool: write.clone(),
            },
            Backend::Postgres(pool) => {
                crate::notify::RecordOutbox::Postgres(crate::notify::PgOutbox::new(pool.clone()))
            }
        })
    }

    /// Which database this is.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite {
                write,
                read,
                checkpoint,
            } => {
                if let Some(checkpoint) = checkpoint {
                    checkpoint.close().await;
                }
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }

    /// Most bind parameters one statement may carry.
    fn max_binds(&self) -> usize {
        match self.backend {
            Backend::Sqlite { .. } => 32_766,
            Backend::Postgres(_) => 65_535,
        }
    }
}

/// How often the checkpointer copies what the WAL holds into the SQLite database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL pages past which the SQLite writer checkpoints in its own commit (SQLite's default is
/// 1 000): under a backlog every few batches, to let the WAL start again (see
/// `open_sqlite`), and whenever the checkpointer falls behind or stops, so the WAL stays
/// bounded (64 MiB at 4 KiB pages) whatever happens to it.
const WRITER_CHECKPOINT_PAGES: u32 = 16_384;

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] on a connection of its own, beside the
/// writer, until the pool is closed. `PASSIVE` waits for nobody: it copies the frames no
/// reader still needs, fsyncs the database file, and leaves the rest for the next round; once
/// it has copied everything, the writer's next transaction starts the WAL from the beginning.
/// When there is nothing to copy it does no I/O.
async fn checkpoint_in_background(pool: SqlitePool) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        every.tick().await;
        if pool.is_closed() {
            return;
        }
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            Ok(_) => failing = false,
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        error = %e,
                        "the SQLite WAL checkpoint failed; retrying (the writer checkpoints itself past {WRITER_CHECKPOINT_PAGES} pages)"
                    );
                }
            }
        }
    }
}

/// Unix microseconds, the stored form of every instant.
pub(crate) fn to_us(t: OffsetDateTime) -> i64 {
    // i64 microseconds reach past the year 292 000; `time` stops at 9999.
    (t.unix_timestamp_nanos() / 1_000) as i64
}

pub(crate) fn from_us(us: i64, table: &'static str) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .map_err(|e| RecordError::corrupt(table, e))
}

pub(crate) fn now_us() -> i64 {
    to_us(OffsetDateTime::now_utc())
}
