//! Alerts in the record: the rows the rules engine's events become, written in the same
//! transaction as the readings that raised them.
//!
//! # Tables (migration `0002_alerts.sql`)
//!
//! - `alerts`: one row per alert episode of one rule for one patient — a stable `alert_uid`,
//!   the rule id, the ruleset label that raised it (`copd@1`, `copd@1+override@2`), severity,
//!   audience, `state` (`open` or `resolved`), opened/updated/resolved times, the explanation
//!   as JSON (evidence: reading ids, times and values; the context: limit, baseline, score;
//!   the engine's one-line text) and the rendered nurse and patient wording. A partial unique
//!   index, `(patient_key, rule_id) WHERE state = 'open'`, allows at most one open alert per
//!   patient and rule on both backends.
//! - `alert_events`: what happened, in order: `raised`, `updated`, `resolved`, and
//!   `repeat_requested` (a prompt to measure again, which belongs to no alert), each with its
//!   time and a JSON payload.
//! - `rule_versions`: per patient, how many reading batches have been evaluated; see below.
//!
//! # One transaction: readings, then alerts
//!
//! [`Record::insert_batch_evaluated`] begins a transaction, inserts the batch (dedup by
//! reading id), bumps `rule_versions` for every patient with new readings, hands the new
//! readings and those versions to the caller's `evaluate` callback (synchronous: the rules
//! engine does no I/O), writes what it returns, and commits. The callback may instead return
//! `None` to roll everything back (its state for a patient was stale, see below). If the
//! commit fails the caller must treat the engine state it changed as lost and rebuild it.
//! [`Record::write_alerts`] writes alert changes alone (time-driven rules from
//! `Engine::tick`).
//!
//! # Several ingest nodes: the database is the arbiter
//!
//! A raise is an upsert on the partial unique index: when another node already opened the
//! alert, the row is updated instead (the event is stored as `updated`, with
//! `"raised_elsewhere": true`), never an error and never a second open row. A resolve
//! closes whatever open row there is. `rule_versions` detects a node whose in-memory state
//! missed readings another node stored: the bump returns the new version, and if it is not
//! the node's version plus one, the node rolls back, rebuilds from the record and tries
//! again. The bump also locks the patient's version row until commit, so two nodes evaluating
//! the same patient take turns (patients are bumped in key order: no deadlock).
//!
//! # For the notifier: outbox rows in the same transaction
//!
//! Every write returns a [`WrittenEvent`] naming the alert row (`alert_id`, `alert_uid`) and
//! what happened to it. The writes (`alert_batch.rs`, inside [`in_batch`] and
//! [`Record::write_alerts`]) enqueue the notifier's outbox rows on the same connection, in the
//! same transaction, so an alert is never committed without its notifications, nor a
//! notification without its alert; a resolve cancels the alert's escalation rows still
//! waiting in that transaction too. Done when the record carries
//! [`crate::notify::Notifications`] ([`Record::with_notifications`]): each raise, update and
//! resolve is planned and enqueued in `notifier_outbox` (migration 0003) before the commit,
//! and [`WrittenEvent::notice`] carries the notice so the escalator is told after it.

use notifier::{AlertNotice, NewNotification};
use serde_json::Value as Json;
use sqlx::QueryBuilder;
use time::OffsetDateTime;
use vitals::{PatientKey, Reading};

use super::alert_batch::BatchedAlertSql;
use super::{Record, RecordError, Result, from_us, now_us, to_us, with_pool};
use crate::notify::{Notifications, PgOutbox};
use crate::record::BatchOutcome;

/// The callback [`Record::insert_batch_evaluated`] runs inside its transaction.
pub type Evaluate<'a> =
    dyn FnMut(&[&Reading], &[RuleVersion]) -> Option<Vec<AlertWrite>> + Send + 'a;

/// A patient's rule version after this transaction's bump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleVersion {
    /// The patient.
    pub patient: PatientKey,
    /// Batches of the patient's readings evaluated so far, this one included.
    pub version: i64,
}

/// What happened to an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertEventKind {
    /// Opened.
    Raised,
    /// Changed while open (severity, evidence), or raised again by another node.
    Updated,
    /// Closed.
    Resolved,
    /// The patient is asked to measure again.
    RepeatRequested,
}

impl AlertEventKind {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertEventKind::Raised => "raised",
            AlertEventKind::Updated => "updated",
            AlertEventKind::Resolved => "resolved",
            AlertEventKind::RepeatRequested => "repeat_requested",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        [
            AlertEventKind::Raised,
            AlertEventKind::Updated,
            AlertEventKind::Resolved,
            AlertEventKind::RepeatRequested,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| RecordError::corrupt("alert_events", format!("unknown kind `{s}`")))
    }
}

/// An open alert as the record stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAlert {
    /// Rule id.
    pub rule: String,
    /// Ruleset label.
    pub profile: String,
    /// Current severity.
    pub severity: rules::Severity,
    /// Who is told.
    pub audience: rules::Audience,
    /// When it was raised.
    pub opened_at: OffsetDateTime,
    /// When this change happened.
    pub at: OffsetDateTime,
    /// Evidence and context (JSON).
    pub explanation: Json,
    /// Wording for the nurse.
    pub nurse: String,
    /// Wording for the patient.
    pub patient_text: Option<String>,
}

/// One change to store.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertWrite {
    /// Raise (`raised: true`) or update the open alert of the patient and rule.
    Open {
        /// The patient.
        patient: PatientKey,
        /// Whether the engine raised it (else it updated it).
        raised: bool,
        /// The alert.
        alert: OpenAlert,
    },
    /// Resolve the open alert of the patient and rule, if there is one.
    Resolve {
        /// The patient.
        patient: PatientKey,
        /// Rule id.
        rule: String,
        /// When it cleared.
        at: OffsetDateTime,
        /// What cleared it (JSON).
        payload: Json,
    },
    /// Ask the patient to measure again.
    Repeat {
        /// The patient.
        patient: PatientKey,
        /// When.
        at: OffsetDateTime,
        /// The reading and the reason (JSON).
        payload: Json,
    },
}

/// What a write did, for counting and for the notifier.
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenEvent {
    /// The alert row (none for a repeat request, or a resolve that found nothing open).
    pub alert_id: Option<i64>,
    /// Its stable id.
    pub alert_uid: Option<String>,
    /// The patient.
    pub patient: PatientKey,
    /// What happened, as stored.
    pub kind: AlertEventKind,
    /// A raise that met an alert another node (or an earlier run) had already opened.
    pub raised_elsewhere: bool,
    /// The notice whose notifications were enqueued with it (only when the record carries
    /// [`Notifications`]; none for repeat requests and raises met elsewhere).
    pub notice: Option<AlertNotice>,
}

/// Open or resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertState {
    /// Open.
    Open,
    /// Resolved.
    Resolved,
}

/// An alert row.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAlert {
    /// Row id.
    pub id: i64,
    /// Stable id.
    pub uid: String,
    /// The patient.
    pub patient: PatientKey,
    /// Rule id.
    pub rule: String,
    /// Ruleset label.
    pub profile: String,
    /// Severity name.
    pub severity: String,
    /// Audience name.
    pub audience: String,
    /// Open or resolved.
    pub state: AlertState,
    /// Raised at.
    pub opened_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
    /// Resolved at.
    pub resolved_at: Option<OffsetDateTime>,
    /// Evidence and context.
    pub explanation: Json,
    /// Wording for the nurse.
    pub nurse: String,
    /// Wording for the patient.
    pub patient_text: Option<String>,
}

/// An `alert_events` row.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAlertEvent {
    /// Row id (the order events were written in).
    pub id: i64,
    /// The alert, if any.
    pub alert_id: Option<i64>,
    /// The patient.
    pub patient: PatientKey,
    /// What happened.
    pub kind: AlertEventKind,
    /// When it happened.
    pub at: OffsetDateTime,
    /// Details.
    pub payload: Json,
}

/// Stored name of an audience.
pub fn audience_str(a: rules::Audience) -> &'static str {
    match a {
        rules::Audience::Nurse => "nurse",
        rules::Audience::Patient => "patient",
        rules::Audience::Both => "both",
    }
}

/// A stable id for an alert episode: the same patient, rule and opening instant give the
/// same id on every node.
pub(super) fn alert_uid(patient: &PatientKey, rule: &str, opened_at: OffsetDateTime) -> String {
    let name = format!("{}/{}/{}", patient.as_str(), rule, to_us(opened_at));
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// Enqueueing outbox rows on a backend's connection (inside the caller's transaction).
pub(crate) trait OutboxSql: sqlx::Database {
    /// Inserts the rows; ids already there are ignored.
    async fn enqueue_outbox(conn: &mut Self::Connection, rows: &[NewNotification])
    -> Result<usize>;
    /// Cancels an alert's pending escalation rows, inside the transaction that resolves it
    /// or records its acknowledgement.
    async fn cancel_escalation(
        conn: &mut Self::Connection,
        alert: &str,
        reason: notifier::CancelReason,
    ) -> Result<usize>;
}

/// The alert id of a stored uid, as the outbox names it.
fn outbox_alert(uid: &str) -> Result<notifier::AlertId> {
    notifier::AlertId::new(uid).map_err(|e| RecordError::corrupt("alerts", e))
}

fn store_err(e: notifier::StoreError) -> RecordError {
    match e {
        notifier::StoreError::Database(e) => RecordError::from(e),
        other => RecordError::Invalid(other.to_string()),
    }
}

impl OutboxSql for sqlx::Sqlite {
    async fn enqueue_outbox(
        conn: &mut sqlx::SqliteConnection,
        rows: &[NewNotification],
    ) -> Result<usize> {
        notifier::SqliteOutbox::enqueue_in(conn, rows)
            .await
            .map_err(store_err)
    }

    async fn cancel_escalation(
        conn: &mut sqlx::SqliteConnection,
        alert: &str,
        reason: notifier::CancelReason,
    ) -> Result<usize> {
        notifier::SqliteOutbox::cancel_escalation_in(conn, &outbox_alert(alert)?, reason)
            .await
            .map_err(store_err)
    }
}

impl OutboxSql for sqlx::Postgres {
    async fn enqueue_outbox(
        conn: &mut sqlx::PgConnection,
        rows: &[NewNotification],
    ) -> Result<usize> {
        PgOutbox::enqueue_in(conn, rows).await.map_err(store_err)
    }

    async fn cancel_escalation(
        conn: &mut sqlx::PgConnection,
        alert: &str,
        reason: notifier::CancelReason,
    ) -> Result<usize> {
        PgOutbox::cancel_escalation_in(conn, &outbox_alert(alert)?, reason)
            .await
            .map_err(store_err)
    }
}

/// The SQL of alerts, written once and expanded for each backend.
pub(crate) trait AlertSql: BatchedAlertSql {
    /// Bumps the rule versions of `patients` (sorted, distinct) and returns the new ones.
    async fn bump_versions(
        conn: &mut Self::Connection,
        patients: &[&str],
    ) -> Result<Vec<(String, i64)>>;
}

macro_rules! alert_sql {
    ($db:ty) => {
        impl AlertSql for $db {
            async fn bump_versions(
                conn: &mut <$db as sqlx::Database>::Connection,
                patients: &[&str],
            ) -> Result<Vec<(String, i64)>> {
                let mut out = Vec::with_capacity(patients.len());
                for chunk in patients.chunks(10_000) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO rule_versions (patient_key, version) ",
                    );
                    q.push_values(chunk, |mut b, p| {
                        b.push_bind(*p).push_bind(1i64);
                    });
                    q.push(
                        " ON CONFLICT (patient_key) DO UPDATE \
                         SET version = rule_versions.version + 1 \
                         RETURNING patient_key, version",
                    );
                    let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(&mut *conn).await?;
                    out.extend(rows);
                }
                Ok(out)
            }
        }
    };
}

alert_sql!(sqlx::Sqlite);
alert_sql!(sqlx::Postgres);

/// Inside the batch transaction: bump versions, evaluate, write. `None`: roll back.
pub(super) async fn in_batch<DB: AlertSql>(
    conn: &mut DB::Connection,
    new: &[&Reading],
    evaluate: &mut Evaluate<'_>,
    notify: Option<&Notifications>,
) -> Result<Option<Vec<WrittenEvent>>> {
    if new.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let mut patients: Vec<&str> = new.iter().map(|r| r.patient.as_str()).collect();
    patients.sort_unstable();
    patients.dedup();
    let versions = DB::bump_versions(conn, &patients)
        .await?
        .into_iter()
        .map(|(p, version)| {
            PatientKey::new(p)
                .map(|patient| RuleVersion { patient, version })
                .map_err(|e| RecordError::corrupt("rule_versions", e))
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(writes) = evaluate(new, &versions) else {
        return Ok(None);
    };
    DB::write_batched(conn, &writes, now_us(), notify)
        .await
        .map(Some)
}

#[derive(sqlx::FromRow)]
struct AlertDbRow {
    alert_id: i64,
    alert_uid: String,
    patient_key: String,
    rule_id: String,
    profile: String,
    severity: String,
    audience: String,
    state: String,
    opened_at: i64,
    updated_at: i64,
    resolved_at: Option<i64>,
    explanation: String,
    nurse_text: String,
    patient_text: Option<String>,
}

#[derive(sqlx::FromRow)]
struct EventDbRow {
    event_id: i64,
    alert_id: Option<i64>,
    patient_key: String,
    kind: String,
    at: i64,
    payload: String,
}

fn stored_alert(r: AlertDbRow) -> Result<StoredAlert> {
    Ok(StoredAlert {
        id: r.alert_id,
        uid: r.alert_uid,
        patient: PatientKey::new(r.patient_key).map_err(|e| RecordError::corrupt("alerts", e))?,
        rule: r.rule_id,
        profile: r.profile,
        severity: r.severity,
        audience: r.audience,
        state: match r.state.as_str() {
            "open" => AlertState::Open,
            "resolved" => AlertState::Resolved,
            other => {
                return Err(RecordError::corrupt(
                    "alerts",
                    format!("unknown state `{other}`"),
                ));
            }
        },
        opened_at: from_us(r.opened_at, "alerts")?,
        updated_at: from_us(r.updated_at, "alerts")?,
        resolved_at: r.resolved_at.map(|t| from_us(t, "alerts")).transpose()?,
        explanation: json(&r.explanation, "alerts")?,
        nurse: r.nurse_text,
        patient_text: r.patient_text,
    })
}

fn json(text: &str, table: &'static str) -> Result<Json> {
    serde_json::from_str(text).map_err(|e| RecordError::corrupt(table, e))
}

impl Record {
    /// Stores a batch like [`Record::insert_batch`] and, in the same transaction, runs
    /// `evaluate` on the readings that were new (in batch order) with the patients' bumped
    /// [`RuleVersion`]s, then stores the [`AlertWrite`]s it returns before committing.
    /// `evaluate` returning `None` rolls everything back and this returns `Ok(None)`.
    ///
    /// On `Err`, `evaluate` may or may not have run and nothing is committed: state the
    /// callback changed must be discarded.
    pub async fn insert_batch_evaluated<F>(
        &self,
        batch: &[(Reading, Vec<vitals::Observed>)],
        mut evaluate: F,
    ) -> Result<Option<(BatchOutcome, Vec<WrittenEvent>)>>
    where
        F: FnMut(&[&Reading], &[RuleVersion]) -> Option<Vec<AlertWrite>> + Send,
    {
        let done = self.insert_batch_inner(batch, Some(&mut evaluate)).await?;
        if let (Some(n), Some((_, written))) = (&self.notifications, &done) {
            n.committed(written).await;
        }
        Ok(done)
    }

    /// Stores alert changes in a transaction of their own (time-driven rules).
    pub async fn write_alerts(&self, writes: &[AlertWrite]) -> Result<Vec<WrittenEvent>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_us();
        let notify = self.notifications.as_deref();
        let written = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let written =
                <DB as BatchedAlertSql>::write_batched(&mut *tx, writes, now, notify).await?;
            tx.commit().await?;
            written
        });
        if let Some(n) = notify {
            n.committed(&written).await;
        }
        Ok(written)
    }

    /// Open alerts nobody has acknowledged (no `alert.acknowledge` row on `alert:{uid}` in
    /// the audit log), oldest first: what the escalator follows again after a restart.
    pub async fn open_unacknowledged_alerts(&self) -> Result<Vec<StoredAlert>> {
        let rows: Vec<AlertDbRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT alert_id, alert_uid, patient_key, rule_id, profile, severity, audience, \
                 state, opened_at, updated_at, resolved_at, explanation, nurse_text, \
                 patient_text FROM alerts a WHERE state = 'open' AND NOT EXISTS \
                 (SELECT 1 FROM audit_log l WHERE l.target = 'alert:' || a.alert_uid \
                  AND l.action = $1) ORDER BY alert_id",
            )
            .bind(crate::notify::ACK_ACTION)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(stored_alert).collect()
    }

    /// The patient's rule version: how many batches of their readings have been evaluated
    /// (0 before the first).
    pub async fn rule_version(&self, patient: &PatientKey) -> Result<i64> {
        let v: Option<i64> = with_pool!(self, read, |pool, DB| {
            sqlx::query_scalar("SELECT version FROM rule_versions WHERE patient_key = $1")
                .bind(patient.as_str())
                .fetch_optional(pool)
                .await?
        });
        Ok(v.unwrap_or(0))
    }

    /// The patient's alerts, oldest first.
    pub async fn alerts_for_patient(&self, patient: &PatientKey) -> Result<Vec<StoredAlert>> {
        self.patient_alerts(patient, false).await
    }

    /// The patient's open alerts (at most one per rule), oldest first: what a rebuilt rules
    /// state is reconciled with, without reading the patient's alert history.
    pub async fn open_alerts_for_patient(&self, patient: &PatientKey) -> Result<Vec<StoredAlert>> {
        self.patient_alerts(patient, true).await
    }

    async fn patient_alerts(
        &self,
        patient: &PatientKey,
        open_only: bool,
    ) -> Result<Vec<StoredAlert>> {
        let rows: Vec<AlertDbRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT alert_id, alert_uid, patient_key, rule_id, profile, severity, audience, \
                 state, opened_at, updated_at, resolved_at, explanation, nurse_text, \
                 patient_text FROM alerts WHERE patient_key = $1 \
                 AND ($2 = 0 OR state = 'open') ORDER BY alert_id",
            )
            .bind(patient.as_str())
            .bind(i64::from(open_only))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(stored_alert).collect()
    }

    /// The patient's alert events, in the order they were written.
    pub async fn alert_events_for_patient(
        &self,
        patient: &PatientKey,
    ) -> Result<Vec<StoredAlertEvent>> {
        let rows: Vec<EventDbRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT event_id, alert_id, patient_key, kind, at, payload \
                 FROM alert_events WHERE patient_key = $1 ORDER BY event_id",
            )
            .bind(patient.as_str())
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(StoredAlertEvent {
                    id: r.event_id,
                    alert_id: r.alert_id,
                    patient: PatientKey::new(r.patient_key)
                        .map_err(|e| RecordError::corrupt("alert_events", e))?,
                    kind: AlertEventKind::parse(&r.kind)?,
                    at: from_us(r.at, "alert_events")?,
                    payload: json(&r.payload, "alert_events")?,
                })
            })
            .collect()
    }
}
