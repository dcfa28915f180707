//! The outbox in a SQLite file: what `rpm demo` and single-node installs use, and the model
//! for ingest's own implementation (same columns on PostgreSQL).
//!
//! Durability: WAL with `synchronous = FULL`, so a row is on disk when `enqueue` returns and
//! an attempt is on disk when `finish` returns. A crash at any point leaves either a pending
//! row (sent again once its lease runs out) or a finished one.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{
    Attempt, AttemptOutcome, CancelReason, Disposition, NewNotification, Notification,
    NotificationId, NotificationStatus, OutboxStore, StoreError, add, furthest_step,
};
use crate::notice::AlertId;
use crate::plan::Step;
use crate::routing::ChannelKind;

/// An [`OutboxStore`] in a SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteOutbox {
    pool: SqlitePool,
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn from_ms(id: &str, v: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(v).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        why: e.to_string(),
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteOutbox {
    /// The tables, in SQLite's dialect. On PostgreSQL the same columns with `BIGINT` for the
    /// millisecond times and `JSONB` for the payload.
    pub const SCHEMA: &'static str = "
        CREATE TABLE IF NOT EXISTS notifier_outbox (
            id TEXT PRIMARY KEY,
            group_key TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            payload TEXT NOT NULL,
            next_at INTEGER NOT NULL,
            lease_until INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            seq INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS notifier_outbox_due ON notifier_outbox (status, next_at);
        CREATE INDEX IF NOT EXISTS notifier_outbox_group ON notifier_outbox (group_key, status);
        CREATE INDEX IF NOT EXISTS notifier_outbox_alert
            ON notifier_outbox (json_extract(payload, '$.notice.alert'));
        CREATE TABLE IF NOT EXISTS notifier_attempts (
            notification TEXT NOT NULL,
            at INTEGER NOT NULL,
            channel TEXT NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT
        );
        CREATE INDEX IF NOT EXISTS notifier_attempts_row ON notifier_attempts (notification);
        CREATE TABLE IF NOT EXISTS notifier_groups (
            group_key TEXT PRIMARY KEY,
            last_sent INTEGER NOT NULL
        );";

    /// Cancels the pending escalation rows of alert `?1` with reason `?2` (see
    /// [`OutboxStore::cancel_escalation`]). Rows written before steps were recorded have no
    /// `step` and count as first notifications.
    const CANCEL_ESCALATION: &'static str = "
        UPDATE notifier_outbox SET status = 'cancelled', last_error = ?2
        WHERE status = 'pending' AND json_extract(payload, '$.notice.alert') = ?1
          AND (COALESCE(json_extract(payload, '$.step.tier'), 0) > 0
               OR COALESCE(json_extract(payload, '$.step.round'), 0) > 0)";

    /// Opens (creating if needed) the outbox in the SQLite file at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        // One connection: claims are read-then-write and SQLite has one writer anyway.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Self::with_pool(pool).await
    }

    /// Uses an existing pool (ingest's), creating the tables if needed.
    pub async fn with_pool(pool: SqlitePool) -> Result<Self, StoreError> {
        sqlx::raw_sql(Self::SCHEMA).execute(&pool).await?;
        Ok(SqliteOutbox { pool })
    }

    /// Cancels alert `alert`'s pending escalation rows on `conn`, which may be inside the
    /// caller's transaction (the resolve's), so they are cancelled if and only if it commits.
    /// Returns how many were cancelled.
    pub async fn cancel_escalation_in(
        conn: &mut SqliteConnection,
        alert: &AlertId,
        reason: CancelReason,
    ) -> Result<usize, StoreError> {
        let done = sqlx::query(Self::CANCEL_ESCALATION)
            .bind(alert.as_str())
            .bind(reason.as_str())
            .execute(&mut *conn)
            .await?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    /// Inserts rows on `conn`, which may be inside the caller's transaction (the alert's),
    /// so they commit or roll back with it. Rows already present are ignored.
    pub async fn enqueue_in(
        conn: &mut SqliteConnection,
        rows: &[NewNotification],
    ) -> Result<usize, StoreError> {
        let mut new = 0;
        for row in rows {
            let payload = serde_json::to_string(row).map_err(|e| StoreError::Corrupt {
                id: row.id.to_string(),
                why: e.to_string(),
            })?;
            let done = sqlx::query(
                "INSERT INTO notifier_outbox (id, group_key, payload, next_at, seq)
                 VALUES (?1, ?2, ?3, ?4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM notifier_outbox))
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(row.id.0.to_string())
            .bind(&row.group.0)
            .bind(payload)
            .bind(ms(row.not_before))
            .execute(&mut *conn)
            .await?;
            new += usize::try_from(done.rows_affected()).unwrap_or(0);
        }
        Ok(new)
    }

    fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<Notification, StoreError> {
        let id: String = row.try_get("id")?;
        let corrupt = |why: String| StoreError::Corrupt {
            id: id.clone(),
            why,
        };
        let payload: String = row.try_get("payload")?;
        let body: NewNotification =
            serde_json::from_str(&payload).map_err(|e| corrupt(e.to_string()))?;
        let status: String = row.try_get("status")?;
        let status = NotificationStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("status {status}")))?;
        let attempts: i64 = row.try_get("attempts")?;
        Ok(Notification {
            row: body,
            status,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            next_at: from_ms(&id, row.try_get("next_at")?)?,
            last_error: row.try_get("last_error")?,
        })
    }
}

impl OutboxStore for SqliteOutbox {
    async fn enqueue(&self, rows: &[NewNotification]) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let new = Self::enqueue_in(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(new)
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        group_interval: Duration,
        lease: Duration,
        max_groups: usize,
    ) -> Result<Vec<Vec<Notification>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let groups: Vec<String> = sqlx::query_scalar(
            "SELECT o.group_key FROM notifier_outbox o
             LEFT JOIN notifier_groups g ON g.group_key = o.group_key
             WHERE o.status = 'pending' AND o.next_at <= ?1
               AND (g.last_sent IS NULL OR g.last_sent + ?2 <= ?1)
               AND NOT EXISTS (SELECT 1 FROM notifier_outbox l
                               WHERE l.group_key = o.group_key AND l.status = 'pending'
                                 AND l.lease_until > ?1)
             GROUP BY o.group_key ORDER BY MIN(o.next_at) LIMIT ?3",
        )
        .bind(ms(now))
        .bind(millis(group_interval))
        .bind(i64::try_from(max_groups).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let until = ms(add(now, lease));
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            sqlx::query(
                "UPDATE notifier_outbox SET lease_until = ?1
                 WHERE group_key = ?2 AND status = 'pending'",
            )
            .bind(until)
            .bind(&g)
            .execute(&mut *tx)
            .await?;
            let rows = sqlx::query(
                "SELECT * FROM notifier_outbox WHERE group_key = ?1 AND status = 'pending'
                 ORDER BY seq",
            )
            .bind(&g)
            .fetch_all(&mut *tx)
            .await?;
            out.push(
                rows.iter()
                    .map(Self::decode)
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn finish(
        &self,
        ids: &[NotificationId],
        attempt: &Attempt,
        disposition: Disposition,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            let id = id.0.to_string();
            sqlx::query(
                "INSERT INTO notifier_attempts (notification, at, channel, outcome, error)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(&id)
            .bind(ms(attempt.at))
            .bind(attempt.channel.as_str())
            .bind(attempt.outcome.as_str())
            .bind(&attempt.error)
            .execute(&mut *tx)
            .await?;
            let (status, next_at) = match disposition {
                Disposition::Sent => ("sent", None),
                Disposition::RetryAt(t) => ("pending", Some(ms(t))),
                Disposition::Failed => ("failed", None),
            };
            // A row cancelled while in flight stays cancelled unless it was delivered.
            let group: Option<String> = sqlx::query_scalar(
                "UPDATE notifier_outbox
                 SET status = CASE WHEN status = 'cancelled' AND ?2 <> 'sent'
                                   THEN 'cancelled' ELSE ?2 END,
                     next_at = COALESCE(?3, next_at), lease_until = NULL,
                     attempts = attempts + 1,
                     last_error = CASE WHEN status = 'cancelled' AND ?2 <> 'sent'
                                       THEN last_error ELSE ?4 END
                 WHERE id = ?1 RETURNING group_key",
            )
            .bind(&id)
            .bind(status)
            .bind(next_at)
            .bind(&attempt.error)
            .fetch_optional(&mut *tx)
            .await?;
            if let (Disposition::Sent, Some(g)) = (disposition, group) {
                sqlx::query(
                    "INSERT INTO notifier_groups (group_key, last_sent) VALUES (?1, ?2)
                     ON CONFLICT (group_key) DO UPDATE SET last_sent = excluded.last_sent",
                )
                .bind(g)
                .bind(ms(attempt.at))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(MAX(next_at, COALESCE(lease_until, next_at))) FROM notifier_outbox
             WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        next.map(|v| from_ms("next_due", v)).transpose()
    }

    async fn failed(&self) -> Result<Vec<Notification>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM notifier_outbox WHERE status = 'failed' ORDER BY seq")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(Self::decode).collect()
    }

    async fn get(&self, id: NotificationId) -> Result<Option<Notification>, StoreError> {
        let row = sqlx::query("SELECT * FROM notifier_outbox WHERE id = ?1")
            .bind(id.0.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::decode).transpose()
    }

    async fn attempts(&self, id: NotificationId) -> Result<Vec<Attempt>, StoreError> {
        let key = id.0.to_string();
        let rows = sqlx::query(
            "SELECT at, channel, outcome, error FROM notifier_attempts
             WHERE notification = ?1 ORDER BY rowid",
        )
        .bind(&key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let corrupt = |why: String| StoreError::Corrupt {
                    id: key.clone(),
                    why,
                };
                let channel: String = r.try_get("channel")?;
                let outcome: String = r.try_get("outcome")?;
                Ok(Attempt {
                    at: from_ms(&key, r.try_get("at")?)?,
                    channel: ChannelKind::parse(&channel)
                        .ok_or_else(|| corrupt(format!("channel {channel}")))?,
                    outcome: AttemptOutcome::parse(&outcome)
                        .ok_or_else(|| corrupt(format!("outcome {outcome}")))?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    async fn last_step(&self, alert: &AlertId) -> Result<Option<(Step, Timestamp)>, StoreError> {
        let payloads: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, payload FROM notifier_outbox
             WHERE json_extract(payload, '$.notice.alert') = ?1",
        )
        .bind(alert.as_str())
        .fetch_all(&self.pool)
        .await?;
        let rows = payloads
            .iter()
            .map(|(id, p)| {
                serde_json::from_str::<NewNotification>(p).map_err(|e| StoreError::Corrupt {
                    id: id.clone(),
                    why: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(furthest_step(&rows))
    }

    async fn cancel_escalation(
        &self,
        alert: &AlertId,
        reason: CancelReason,
    ) -> Result<usize, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Self::cancel_escalation_in(&mut conn, alert, reason).await
    }
}
