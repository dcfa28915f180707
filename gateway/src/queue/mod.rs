//! The durable store-and-forward queue: every reading is here before it counts as received,
//! and leaves only after the broker acknowledged the message that carried it.
//!
//! # Format
//!
//! One SQLite database in WAL mode with `synchronous = FULL`, so a transaction that has
//! returned is on stable storage (the WAL is fsynced at every commit). Three tables
//! (`gateway/migrations/`):
//!
//! - `queue(seq, reading_id UNIQUE, measured_at, body)`: pending readings. `seq` comes from
//!   `AUTOINCREMENT`, so it is strictly increasing and never reused, even after the table
//!   empties; it is the reading's `seq` on the wire and the order of forwarding.
//! - `forwarded(reading_id, measured_at)`: readings the broker acknowledged that a device can
//!   send again (they carry a device timestamp). The forwarder forgets those measured more
//!   than its retention window ago, at start and daily (`publish::FORWARDED_RETENTION`).
//! - `meta(key, value)`: `next_envelope_seq`, the MQTT message counter.
//!
//! # What each step makes durable, and what a crash leaves
//!
//! - [`Queue::push`] inserts a batch in one transaction, skipping readings already queued or
//!   already forwarded. When it returns, the readings are durable: only then may the device
//!   layer confirm or delete the records on the device. A crash before the commit leaves
//!   nothing of the batch; the device still has its records and sends them again.
//! - [`Queue::peek`] reads without changing anything. A crash after peeking, or after
//!   publishing but before the PUBACK, leaves the readings queued: they are sent again on
//!   restart (at-least-once; the server deduplicates by reading id).
//! - [`Queue::ack`] deletes acknowledged readings and remembers the re-sendable ones in
//!   `forwarded`, in one transaction. A crash between the PUBACK and this commit means the
//!   readings are published once more after restart: a duplicate the server drops by id,
//!   never a loss.
//! - [`Queue::take_envelope_seq`] increments the message counter durably before the message
//!   is published, so sequence numbers never repeat across restarts (gaps are possible).
//!
//! Recovery is opening the file: SQLite replays the WAL; there is nothing else to repair.
//!
//! # Capacity
//!
//! A reading is about 0.5 KB. A week offline at 1 Hz continuous oximetry plus spot checks is
//! about 0.6 M readings. `gateway/tests/forward.rs` queues 1.05 M (about 400 MB) and forwards
//! them in order, none lost or doubled (ignored by default: minutes in a debug build; it took
//! 117 s to fill and 152 s to drain on a loaded two-core machine); the end-to-end fault suite
//! forwards a backlog of 100 000 (`tests/faults.rs`). The forwarder reads by `seq` range (the
//! primary key); [`Queue::depth`] scans the table once per status. It never drops a reading:
//! when the disk fills, `push` fails whole (the device keeps its records and sends them again
//! once there is room: `simulators/tests/disk_full.rs`) and the status reports `disk_low` long
//! before that ([`Queue::disk_free_bytes`]).

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite};
use time::OffsetDateTime;
use vitals::{Reading, ReadingId};

/// What can go wrong with the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database could not be opened, read or written (disk full, I/O error, corrupt file).
    #[error("queue database {path}: {source}")]
    Database {
        /// The queue file.
        path: PathBuf,
        /// What SQLite said.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("queue database {path}: migration failed: {source}")]
    Migrate {
        /// The queue file.
        path: PathBuf,
        /// What went wrong.
        source: sqlx::migrate::MigrateError,
    },
    /// A reading could not be serialised for storage.
    #[error("cannot serialise a reading for the queue: {0}")]
    Encode(String),
    /// A stored body could not be read back: the file was altered outside the gateway.
    #[error("queue database {path}: row {seq} is not a reading: {message}")]
    Corrupt {
        /// The queue file.
        path: PathBuf,
        /// The row.
        seq: u64,
        /// What is wrong.
        message: String,
    },
}

/// The result of a [`Queue::push`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Readings newly queued.
    pub queued: usize,
    /// Readings already queued or already forwarded, skipped.
    pub duplicates: usize,
}

/// Depth and age of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Depth {
    /// Readings waiting.
    pub readings: u64,
    /// Measurement time of the oldest, if any.
    pub oldest: Option<OffsetDateTime>,
}

/// The queue. Cheap to clone; all clones share one connection pool and one append signal.
#[derive(Clone, Debug)]
pub struct Queue {
    pool: SqlitePool,
    path: PathBuf,
    appended: std::sync::Arc<tokio::sync::Notify>,
}

/// SQLite's limit on bound parameters per statement is 32766; four per row keeps a statement
/// of this many rows well below it.
const ROWS_PER_STATEMENT: usize = 1000;

/// Connections in the pool: one for the device sessions' pushes, one for the forwarder.
const MAX_CONNECTIONS: u32 = 2;

impl Queue {
    /// Opens (creating if needed) the queue at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Queue, QueueError> {
        let path = path.as_ref().to_owned();
        let db_err = |source| QueueError::Database {
            path: path.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db_err)?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the WAL is fsynced at every commit, so a returned push survives power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(db_err)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| QueueError::Migrate {
                path: path.clone(),
                source,
            })?;
        Ok(Queue {
            pool,
            path,
            appended: std::sync::Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Signalled after every push that queued something (through this handle or a clone of
    /// it): the forwarder waits on it, so a live reading leaves as soon as it is stored. One
    /// permit is kept when nobody waits, so no push goes unnoticed. Another process's pushes
    /// (a second `Queue::open` of the same file) are seen at the forwarder's next poll.
    pub fn appended(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.appended.clone()
    }

    fn db_err(&self) -> impl Fn(sqlx::Error) -> QueueError + '_ {
        |source| QueueError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends readings durably, oldest first in the order given, skipping any already queued
    /// or already forwarded. When this returns `Ok`, they are on stable storage.
    pub async fn push(&self, readings: &[Reading]) -> Result<PushOutcome, QueueError> {
        if readings.is_empty() {
            return Ok(PushOutcome::default());
        }
        let rows: Vec<(Vec<u8>, i64, bool, Vec<u8>)> = readings
            .iter()
            .map(|r| {
                let body = serde_json::to_vec(r).map_err(|e| QueueError::Encode(e.to_string()))?;
                Ok((
                    r.id.0.as_bytes().to_vec(),
                    unix_millis(r.measured_at),
                    r.device_time.is_some(),
                    body,
                ))
            })
            .collect::<Result<_, QueueError>>()?;
        let mut tx = self.pool.begin().await.map_err(self.db_err())?;
        let mut queued = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            // Readings already forwarded are dropped by the WHERE; readings already queued by
            // the UNIQUE constraint (INSERT OR IGNORE).
            let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO queue (reading_id, measured_at, resendable, body) \
                 SELECT column1, column2, column3, column4 FROM (",
            );
            builder.push_values(chunk, |mut row, (id, at, resendable, body)| {
                row.push_bind(id.as_slice())
                    .push_bind(*at)
                    .push_bind(*resendable)
                    .push_bind(body.as_slice());
            });
            builder.push(") WHERE column1 NOT IN (SELECT reading_id FROM forwarded)");
            let done = builder
                .build()
                .execute(&mut *tx)
                .await
                .map_err(self.db_err())?;
            queued += done.rows_affected() as usize;
        }
        tx.commit().await.map_err(self.db_err())?;
        if queued > 0 {
            self.appended.notify_one();
        }
        Ok(PushOutcome {
            queued,
            duplicates: readings.len() - queued,
        })
    }

    /// Up to `max` readings with `seq > after`, oldest first, each with its `seq` set.
    pub async fn peek(&self, after: u64, max: usize) -> Result<Vec<Reading>, QueueError> {
        let rows = sqlx::query("SELECT seq, body FROM queue WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(self.db_err())?;
        rows.into_iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let body: Vec<u8> = row.get(1);
                let seq = seq as u64;
                let mut reading: Reading =
                    serde_json::from_slice(&body).map_err(|e| QueueError::Corrupt {
                        path: self.path.clone(),
                        seq,
                        message: e.to_string(),
                    })?;
                reading.seq = seq;
                Ok(reading)
            })
            .collect()
    }

    /// The newest queued `seq` (0 when empty): readings pushed later have a larger one.
    pub async fn last_seq(&self) -> Result<u64, QueueError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'queue'")
                .fetch_optional(&self.pool)
                .await
                .map_err(self.db_err())?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Removes readings the broker acknowledged (by their queue `seq`), remembering the
    /// re-sendable ones in `forwarded`. Unknown `seq`s are ignored (already acknowledged).
    pub async fn ack(&self, seqs: &[u64]) -> Result<(), QueueError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(self.db_err())?;
        for chunk in seqs.chunks(ROWS_PER_STATEMENT) {
            let mut remember: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO forwarded (reading_id, measured_at) \
                 SELECT reading_id, measured_at FROM queue \
                 WHERE resendable AND seq IN (",
            );
            let mut list = remember.separated(", ");
            for s in chunk {
                list.push_bind(*s as i64);
            }
            remember.push(")");
            remember
                .build()
                .execute(&mut *tx)
                .await
                .map_err(self.db_err())?;

            let mut delete: QueryBuilder<Sqlite> =
                QueryBuilder::new("DELETE FROM queue WHERE seq IN (");
            let mut list = delete.separated(", ");
            for s in chunk {
                list.push_bind(*s as i64);
            }
            delete.push(")");
            delete
                .build()
                .execute(&mut *tx)
                .await
                .map_err(self.db_err())?;
        }
        tx.commit().await.map_err(self.db_err())?;
        Ok(())
    }

    /// Forgets forwarded ids measured before `cutoff` (the retention window's start). A device
    /// re-sending a record older than the window would have it forwarded again, and the server
    /// would drop it by id.
    pub async fn prune_forwarded(&self, cutoff: OffsetDateTime) -> Result<u64, QueueError> {
        let done = sqlx::query("DELETE FROM forwarded WHERE measured_at < ?")
            .bind(unix_millis(cutoff))
            .execute(&self.pool)
            .await
            .map_err(self.db_err())?;
        Ok(done.rows_affected())
    }

    /// Whether a reading id is queued or was forwarded within the retention window.
    pub async fn knows(&self, id: ReadingId) -> Result<bool, QueueError> {
        let bytes = id.0.as_bytes().to_vec();
        let known: i64 = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM queue WHERE reading_id = ?1) OR EXISTS (SELECT 1 FROM forwarded WHERE reading_id = ?1)",
        )
        .bind(bytes)
        .fetch_one(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(known != 0)
    }

    /// How many readings wait, and since when.
    pub async fn depth(&self) -> Result<Depth, QueueError> {
        let row = sqlx::query("SELECT count(*), min(measured_at) FROM queue")
            .fetch_one(&self.pool)
            .await
            .map_err(self.db_err())?;
        let count: i64 = row.get(0);
        let oldest: Option<i64> = row.get(1);
        Ok(Depth {
            readings: count as u64,
            oldest: oldest.and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            }),
        })
    }

    /// Takes the next envelope sequence number, durably (never repeats across restarts).
    pub async fn take_envelope_seq(&self) -> Result<u64, QueueError> {
        let seq: i64 = sqlx::query_scalar(
            "UPDATE meta SET value = value + 1 WHERE key = 'next_envelope_seq' RETURNING value - 1",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(self.db_err())?;
        Ok(seq as u64)
    }

    /// Free bytes on the file system holding the queue, when the platform can tell.
    pub fn disk_free_bytes(&self) -> Option<u64> {
        disk_free(&self.path)
    }

    /// Closes the pool, waiting for open transactions.
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Caps the database at `max_pages` pages on every connection of the pool (`None` lifts
    /// the cap to SQLite's own maximum), so a write that needs another page fails with
    /// `SQLITE_FULL` ("database or disk is full") exactly as it does when the disk is full.
    /// A cap below the current size holds the file at its current size.
    ///
    /// For tests of the full-disk path only; the gateway never calls it. SQLite keeps the cap
    /// per connection, so it holds for the connections open now: the pool would open a new,
    /// uncapped one only after an idle one expired (minutes), longer than such a test runs.
    #[doc(hidden)]
    pub async fn limit_size_for_tests(&self, max_pages: Option<u32>) -> Result<(), QueueError> {
        // 4294967294 is SQLite's largest page count and its default cap.
        let pages = max_pages.unwrap_or(u32::MAX - 1);
        // Holding every connection at once makes each acquire a different one.
        let mut held = Vec::with_capacity(MAX_CONNECTIONS as usize);
        for _ in 0..MAX_CONNECTIONS {
            held.push(self.pool.acquire().await.map_err(self.db_err())?);
        }
        for conn in &mut held {
            sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
                .execute(&mut **conn)
                .await
                .map_err(self.db_err())?;
        }
        Ok(())
    }
}

fn unix_millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn disk_free(path: &Path) -> Option<u64> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs4::available_space(dir).ok()
}

#[cfg(test)]
mod tests;
