//! The outbox in the record's database: the notifier's own [`SqliteOutbox`] on SQLite, and
//! [`PgOutbox`], the same columns and contract on PostgreSQL (migration `0003_outbox.sql`).

use std::time::Duration;

use notifier::{
    AlertId, Attempt, AttemptOutcome, CancelReason, Disposition, NewNotification, Notification,
    NotificationId, NotificationStatus, OutboxStore, SqliteOutbox, Step, StoreError, Timestamp,
};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row, SqlitePool};

/// Serialises claims across ingest nodes (a transaction-scoped advisory lock): two
/// dispatchers never lease the same group.
const CLAIM_LOCK: i64 = 0x7270_6d5f_6f75_7462; // "rpm_outb"

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn corrupt(id: &str, why: impl ToString) -> StoreError {
    StoreError::Corrupt {
        id: id.to_owned(),
        why: why.to_string(),
    }
}

fn from_ms(id: &str, v: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(v).map_err(|e| corrupt(id, e))
}

fn from_name<T: serde::de::DeserializeOwned>(id: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| corrupt(id, format!("unknown value `{s}`")))
}

fn parse_id(s: &str) -> Result<NotificationId, StoreError> {
    uuid::Uuid::parse_str(s)
        .map(NotificationId)
        .map_err(|e| corrupt(s, e))
}

/// An [`OutboxStore`] in the record's PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgOutbox {
    pool: PgPool,
}

impl PgOutbox {
    /// Over the record's pool (the tables come with the record's migrations).
    pub fn new(pool: PgPool) -> Self {
        PgOutbox { pool }
    }

    /// Cancels alert `alert`'s pending escalation rows on `conn`, which may be inside the
    /// caller's transaction (the resolve's), so they are cancelled if and only if it commits.
    /// Rows written before steps were recorded have no `step`: first notifications, kept.
    pub async fn cancel_escalation_in(
        conn: &mut PgConnection,
        alert: &AlertId,
        reason: CancelReason,
    ) -> Result<usize, StoreError> {
        let done = sqlx::query(
            "UPDATE notifier_outbox SET status = 'cancelled', last_error = $2 \
             WHERE status = 'pending' AND (payload::jsonb -> 'notice' ->> 'alert') = $1 \
               AND (COALESCE((payload::jsonb -> 'step' ->> 'tier')::bigint, 0) > 0 \
                    OR COALESCE((payload::jsonb -> 'step' ->> 'round')::bigint, 0) > 0)",
        )
        .bind(alert.as_str())
        .bind(reason.as_str())
        .execute(&mut *conn)
        .await?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    /// Inserts rows on `conn`, which may be inside the caller's transaction (the alert's).
    /// Rows already present are ignored. Returns how many were new.
    pub async fn enqueue_in(
        conn: &mut PgConnection,
        rows: &[NewNotification],
    ) -> Result<usize, StoreError> {
        let mut new = 0;
        for row in rows {
            let payload =
                serde_json::to_string(row).map_err(|e| corrupt(&row.id.to_string(), e))?;
            let done = sqlx::query(
                "INSERT INTO notifier_outbox (id, group_key, payload, next_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
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

    fn decode(row: &PgRow) -> Result<Notification, StoreError> {
        let id: String = row.try_get("id")?;
        let payload: String = row.try_get("payload")?;
        let body: NewNotification = serde_json::from_str(&payload).map_err(|e| corrupt(&id, e))?;
        let status: String = row.try_get("status")?;
        let attempts: i32 = row.try_get("attempts")?;
        Ok(Notification {
            row: body,
            status: from_name::<NotificationStatus>(&id, &status)?,
            attempts: u32::try_from(attempts).unwrap_or(0),
            next_at: from_ms(&id, row.try_get("next_at")?)?,
            last_error: row.try_get("last_error")?,
        })
    }
}

const COLUMNS: &str = "id, group_key, status, payload, next_at, lease_until, attempts, last_error";

impl OutboxStore for PgOutbox {
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
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let groups: Vec<String> = sqlx::query_scalar(
            "SELECT o.group_key FROM notifier_outbox o \
             LEFT JOIN notifier_groups g ON g.group_key = o.group_key \
             WHERE o.status = 'pending' AND o.next_at <= $1 \
               AND (g.last_sent IS NULL OR g.last_sent + $2 <= $1) \
               AND NOT EXISTS (SELECT 1 FROM notifier_outbox l \
                               WHERE l.group_key = o.group_key AND l.status = 'pending' \
                                 AND l.lease_until > $1) \
             GROUP BY o.group_key ORDER BY MIN(o.next_at) LIMIT $3",
        )
        .bind(ms(now))
        .bind(millis(group_interval))
        .bind(i64::try_from(max_groups).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let until = ms(notifier_add(now, lease));
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let rows = sqlx::query(&format!(
                "UPDATE notifier_outbox SET lease_until = $1 \
                 WHERE group_key = $2 AND status = 'pending' RETURNING {COLUMNS}, seq"
            ))
            .bind(until)
            .bind(&g)
            .fetch_all(&mut *tx)
            .await?;
            let mut decoded: Vec<(i64, Notification)> = rows
                .iter()
                .map(|r| Ok((r.try_get::<i64, _>("seq")?, Self::decode(r)?)))
                .collect::<Result<_, StoreError>>()?;
            decoded.sort_by_key(|(seq, _)| *seq);
            out.push(decoded.into_iter().map(|(_, n)| n).collect());
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
                "INSERT INTO notifier_attempts (notification, at, channel, outcome, error) \
                 VALUES ($1, $2, $3, $4, $5)",
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
                "UPDATE notifier_outbox \
                 SET status = CASE WHEN status = 'cancelled' AND $2 <> 'sent' \
                                   THEN 'cancelled' ELSE $2 END, \
                     next_at = COALESCE($3, next_at), lease_until = NULL, \
                     attempts = attempts + 1, \
                     last_error = CASE WHEN status = 'cancelled' AND $2 <> 'sent' \
                                       THEN last_error ELSE $4 END \
                 WHERE id = $1 RETURNING group_key",
            )
            .bind(&id)
            .bind(status)
            .bind(next_at)
            .bind(&attempt.error)
            .fetch_optional(&mut *tx)
            .await?;
            if let (Disposition::Sent, Some(g)) = (disposition, group) {
                sqlx::query(
                    "INSERT INTO notifier_groups (group_key, last_sent) VALUES ($1, $2) \
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
            "SELECT MIN(GREATEST(next_at, COALESCE(lease_until, next_at))) \
             FROM notifier_outbox WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        next.map(|v| from_ms("next_due", v)).transpose()
    }

    async fn failed(&self) -> Result<Vec<Notification>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifier_outbox WHERE status = 'failed' ORDER BY seq"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::decode).collect()
    }

    async fn get(&self, id: NotificationId) -> Result<Option<Notification>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifier_outbox WHERE id = $1"
        ))
        .bind(id.0.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::decode).transpose()
    }

    async fn attempts(&self, id: NotificationId) -> Result<Vec<Attempt>, StoreError> {
        let key = id.0.to_string();
        let rows = sqlx::query(
            "SELECT at, channel, outcome, error FROM notifier_attempts \
             WHERE notification = $1 ORDER BY attempt_id",
        )
        .bind(&key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let channel: String = r.try_get("channel")?;
                let outcome: String = r.try_get("outcome")?;
                Ok(Attempt {
                    at: from_ms(&key, r.try_get("at")?)?,
                    channel: notifier::ChannelKind::parse(&channel)
                        .ok_or_else(|| corrupt(&key, format!("channel {channel}")))?,
                    outcome: from_name::<AttemptOutcome>(&key, &outcome)?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    async fn last_step(&self, alert: &AlertId) -> Result<Option<(Step, Timestamp)>, StoreError> {
        let payloads: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, payload FROM notifier_outbox \
             WHERE (payload::jsonb -> 'notice' ->> 'alert') = $1",
        )
        .bind(alert.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut furthest: Option<(Step, Timestamp)> = None;
        for (id, payload) in &payloads {
            let row: NewNotification = serde_json::from_str(payload).map_err(|e| corrupt(id, e))?;
            furthest = furthest.max(Some((row.step, row.planned_at)));
        }
        Ok(furthest)
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

fn notifier_add(t: Timestamp, d: Duration) -> Timestamp {
    jiff_add(t, d).unwrap_or(Timestamp::MAX)
}

fn jiff_add(t: Timestamp, d: Duration) -> Option<Timestamp> {
    let us = i64::try_from(d.as_micros()).ok()?;
    Timestamp::from_microsecond(t.as_microsecond().checked_add(us)?).ok()
}

/// The outbox of a [`crate::record::Record`], whichever its backend. Cheap to clone.
#[derive(Clone, Debug)]
pub enum RecordOutbox {
    /// The notifier's own SQLite outbox on the record's write pool.
    Sqlite {
        /// The store.
        outbox: SqliteOutbox,
        /// The same pool, for [`RecordOutbox::for_alert`].
        pool: SqlitePool,
    },
    /// PostgreSQL.
    Postgres(PgOutbox),
}

impl RecordOutbox {
    /// Every notification of an alert (by its `alert_uid`), in the order they were enqueued:
    /// for the console and tests.
    pub async fn for_alert(&self, alert: &str) -> Result<Vec<Notification>, StoreError> {
        let ids: Vec<String> = match self {
            RecordOutbox::Sqlite { pool, .. } => {
                sqlx::query_scalar(
                    "SELECT id FROM notifier_outbox \
                     WHERE json_extract(payload, '$.notice.alert') = $1 ORDER BY seq",
                )
                .bind(alert)
                .fetch_all(pool)
                .await?
            }
            RecordOutbox::Postgres(pg) => {
                sqlx::query_scalar(
                    "SELECT id FROM notifier_outbox \
                     WHERE (payload::jsonb -> 'notice' ->> 'alert') = $1 ORDER BY seq",
                )
                .bind(alert)
                .fetch_all(&pg.pool)
                .await?
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(n) = self.get(parse_id(&id)?).await? {
                out.push(n);
            }
        }
        Ok(out)
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            RecordOutbox::Sqlite { outbox: $s, .. } => $call.await,
            RecordOutbox::Postgres($s) => $call.await,
        }
    };
}

impl OutboxStore for RecordOutbox {
    async fn enqueue(&self, rows: &[NewNotification]) -> Result<usize, StoreError> {
        delegate!(self, s => s.enqueue(rows))
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        group_interval: Duration,
        lease: Duration,
        max_groups: usize,
    ) -> Result<Vec<Vec<Notification>>, StoreError> {
        delegate!(self, s => s.claim_due(now, group_interval, lease, max_groups))
    }

    async fn finish(
        &self,
        ids: &[NotificationId],
        attempt: &Attempt,
        disposition: Disposition,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.finish(ids, attempt, disposition))
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        delegate!(self, s => s.next_due())
    }

    async fn failed(&self) -> Result<Vec<Notification>, StoreError> {
        delegate!(self, s => s.failed())
    }

    async fn get(&self, id: NotificationId) -> Result<Option<Notification>, StoreError> {
        delegate!(self, s => s.get(id))
    }

    async fn attempts(&self, id: NotificationId) -> Result<Vec<Attempt>, StoreError> {
        delegate!(self, s => s.attempts(id))
    }

    async fn last_step(&self, alert: &AlertId) -> Result<Option<(Step, Timestamp)>, StoreError> {
        delegate!(self, s => s.last_step(alert))
    }

    async fn cancel_escalation(
        &self,
        alert: &AlertId,
        reason: CancelReason,
    ) -> Result<usize, StoreError> {
        delegate!(self, s => s.cancel_escalation(alert, reason))
    }
}
