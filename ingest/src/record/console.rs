//! What the console's pages and `/api/v1` read from the record, as `Serialize` view structs,
//! each page in one or a few queries whatever the number of patients, and the versioned
//! per-patient thresholds (migration `0004_console.sql`).
//!
//! Views carry the patient's display name (PHI): they are for signed-in staff only and are
//! never logged. Times are RFC 3339.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value as Json;
use sqlx::QueryBuilder;
use time::OffsetDateTime;
use utoipa::ToSchema;
use vitals::{Kind, PatientKey};

use super::{Audit, Record, RecordError, Result, from_us, now_us, to_us, with_pool};
use crate::notify::ACK_ACTION;

/// Queue depths for `/metrics` ([`Record::queue_depths`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Notifications waiting to be sent (or retried).
    pub outbox_pending: u64,
    /// Notifications given up on.
    pub outbox_failed: u64,
    /// Gateways whose latest status reports their queue.
    pub gateways_reporting: u64,
    /// Readings queued on those gateways, in total.
    pub gateway_queued: u64,
    /// The deepest of those queues.
    pub gateway_queued_max: u64,
}

const DAY_US: i64 = 86_400_000_000;

/// How an alert's acknowledgement is shown.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AckView {
    /// Who (staff id or user name).
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Their note.
    pub note: String,
}

/// One notification of an alert (who and how, never the address).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct NotificationView {
    /// The outbox row id.
    pub id: String,
    /// The alert's uid.
    pub alert: String,
    /// The patient.
    #[schema(value_type = String)]
    pub patient: Option<PatientKey>,
    /// Recipient id (`nurse.day`, `patient`).
    pub recipient: String,
    /// Channel (`email`, `sms`, `webhook`).
    pub channel: String,
    /// `pending`, `sent`, `failed` or `cancelled` (an escalation the acknowledgement or
    /// resolution made unnecessary; the reason is in `last_error`).
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// The last error, for retried and failed rows.
    pub last_error: Option<String>,
}

/// An alert in the inbox, with its explanation, escalation and acknowledgement.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct InboxAlert {
    /// Row id (paging cursor).
    pub id: i64,
    /// Stable id (use it to acknowledge).
    pub uid: String,
    /// The patient's key.
    #[schema(value_type = String)]
    pub patient: PatientKey,
    /// The patient's display name (PHI).
    pub patient_name: Option<String>,
    /// Rule id.
    pub rule: String,
    /// Ruleset label that raised it.
    pub profile: String,
    /// Severity.
    pub severity: String,
    /// `open` or `resolved`.
    pub state: String,
    /// Raised.
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Resolved.
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// Seconds since it was raised.
    pub age_seconds: i64,
    /// Evidence (readings and values), context (limit, baseline, score) and text.
    #[schema(value_type = Object)]
    pub explanation: Json,
    /// The nurse's wording.
    pub nurse_text: String,
    /// `acknowledged`, `notified` (waiting for acknowledgement), `failed` (a notification
    /// could not be delivered), `not_notified`.
    pub escalation: String,
    /// Who was notified, how, and how it went.
    pub notifications: Vec<NotificationView>,
    /// The acknowledgement, once there is one.
    pub acknowledgement: Option<AckView>,
}

/// Inbox query.
#[derive(Clone, Debug, Default)]
pub struct InboxQuery {
    /// Resolved history instead of open alerts.
    pub resolved: bool,
    /// Only this patient.
    pub patient: Option<PatientKey>,
    /// Page size (at most 500).
    pub limit: u32,
    /// History paging: alerts with a row id below this.
    pub before: Option<i64>,
}

/// One patient on the caseload.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CaseloadRow {
    /// Key.
    #[schema(value_type = String)]
    pub patient: PatientKey,
    /// Display name (PHI).
    pub name: Option<String>,
    /// Condition.
    pub condition: String,
    /// Care team.
    pub care_team: Option<String>,
    /// Open alerts.
    pub open_alerts: i64,
    /// The highest severity among them.
    pub top_severity: Option<String>,
    /// Last value per kind.
    pub last: Vec<LastReadingView>,
    /// When the patient last measured anything.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_reading_at: Option<OffsetDateTime>,
    /// Days (UTC) with at least one reading in the last 30.
    pub days_with_readings_30: i64,
    /// Whether that meets the programme's 16 of 30.
    pub meets_16_of_30: bool,
    /// None of the patient's gateways has been heard from in 24 hours (or never).
    pub silent_gateway: bool,
}

/// A last value.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct LastReadingView {
    /// Kind (`spo2`, `systolic`, …).
    pub kind: String,
    /// The exact decimal, or none when the device sent a special value.
    pub value: Option<String>,
    /// UCUM unit.
    pub unit: String,
    /// When measured.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Cohort filters for the caseload (all optional, combined with AND).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CohortFilter {
    /// Condition (`copd`).
    pub condition: Option<String>,
    /// A value of `kind` below (`above: false`) or above `value` within `within_hours`.
    pub value: Option<ValueFilter>,
    /// No reading at all for this many days.
    pub silent_days: Option<u32>,
    /// Only patients with open alerts.
    pub open_alerts_only: bool,
}

/// "kind below/above X within H hours".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueFilter {
    /// The measurement.
    pub kind: Kind,
    /// Above instead of below.
    pub above: bool,
    /// The limit.
    pub value: f64,
    /// Look back this many hours.
    pub within_hours: u32,
}

/// One stored threshold change.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ThresholdVersion {
    /// 1, 2, … per patient.
    pub version: i64,
    /// The base profile the override applies to.
    pub base_profile: String,
    /// The override (`rules::ProfileOverride` as JSON).
    #[schema(value_type = Object)]
    pub override_json: Json,
    /// Who.
    pub author: String,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An audit row as the console lists it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AuditView {
    /// Row id (paging cursor).
    pub id: i64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Why.
    pub reason: String,
}

/// Audit listing filters (all optional).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Actions starting with this (`auth.`, `thresholds.`, `alert.acknowledge`).
    pub action: Option<String>,
    /// Exactly this target (`patient:pk-1`).
    pub target: Option<String>,
    /// From.
    pub since: Option<OffsetDateTime>,
    /// Before this row id (paging).
    pub before: Option<i64>,
    /// Page size (at most 500).
    pub limit: u32,
}

/// A mean of a patient's values over a window (a drawing aid, not a rule's baseline).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct MeanView {
    /// Kind.
    pub kind: String,
    /// Mean.
    pub mean: f64,
    /// Values averaged.
    pub count: i64,
}

fn severity_rank_sql() -> &'static str {
    "CASE a.severity WHEN 'emergency' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 \
     WHEN 'low' THEN 3 ELSE 4 END"
}

#[derive(sqlx::FromRow)]
struct InboxRow {
    alert_id: i64,
    alert_uid: String,
    patient_key: String,
    display_name: Option<String>,
    rule_id: String,
    profile: String,
    severity: String,
    state: String,
    opened_at: i64,
    updated_at: i64,
    resolved_at: Option<i64>,
    explanation: String,
    nurse_text: String,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: String,
    status: String,
    payload: String,
    attempts: i64,
    last_error: Option<String>,
}

fn notification_view(r: OutboxRow) -> Option<NotificationView> {
    let payload: Json = serde_json::from_str(&r.payload).ok()?;
    let notice = &payload["notice"];
    let text = |v: &Json| -> String {
        match v {
            Json::String(s) => s.clone(),
            Json::Null => String::new(),
            other => other.to_string(),
        }
    };
    Some(NotificationView {
        id: r.id,
        alert: text(&notice["alert"]),
        patient: notice["patient"]
            .as_str()
            .and_then(|p| PatientKey::new(p).ok()),
        recipient: text(&payload["recipient"]),
        channel: text(&payload["channel"]),
        status: r.status,
        attempts: r.attempts,
        last_error: r.last_error,
    })
}

fn pk(s: String, table: &'static str) -> Result<PatientKey> {
    PatientKey::new(s).map_err(|e| RecordError::corrupt(table, e))
}

impl Record {
    /// The alert inbox: open alerts by severity (worst first) then age (oldest first), or
    /// the resolved history newest first with paging; each with its notifications and its
    /// acknowledgement. Three queries per page.
    pub async fn alert_inbox(&self, q: &InboxQuery) -> Result<Vec<InboxAlert>> {
        let limit = i64::from(q.limit.clamp(1, 500));
        let order = if q.resolved {
            "a.alert_id DESC".to_owned()
        } else {
            format!("{}, a.opened_at, a.alert_id", severity_rank_sql())
        };
        let sql = format!(
            "SELECT a.alert_id, a.alert_uid, a.patient_key, p.display_name, a.rule_id, \
             a.profile, a.severity, a.state, a.opened_at, a.updated_at, a.resolved_at, \
             a.explanation, a.nurse_text FROM alerts a \
             JOIN patients p ON p.patient_key = a.patient_key \
             WHERE a.state = $1 AND ($2 IS NULL OR a.patient_key = $2) \
             AND ($3 IS NULL OR a.alert_id < $3) ORDER BY {order} LIMIT $4"
        );
        let state = if q.resolved { "resolved" } else { "open" };
        let patient = q.patient.as_ref().map(|p| p.as_str().to_owned());
        let rows: Vec<InboxRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&sql)
                .bind(state)
                .bind(patient.as_deref())
                .bind(q.before)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let uids: Vec<String> = rows.iter().map(|r| r.alert_uid.clone()).collect();
        let acks = self.acknowledgements(&uids).await?;
        // Outbox rows are made when an alert is raised or changes, so none of this page's
        // is older than its oldest alert: one scan from there (milliseconds, the notifier's unit).
        let since_ms = rows.iter().map(|r| r.opened_at).min().unwrap_or(0) / 1000;
        let wanted: HashSet<&str> = uids.iter().map(String::as_str).collect();
        let mut by_alert: HashMap<String, Vec<NotificationView>> = HashMap::new();
        for n in self.outbox_since(since_ms, None).await? {
            if wanted.contains(n.alert.as_str()) {
                by_alert.entry(n.alert.clone()).or_default().push(n);
            }
        }
        let now = now_us();
        rows.into_iter()
            .map(|r| {
                let notifications = by_alert.remove(&r.alert_uid).unwrap_or_default();
                let acknowledgement = acks.get(&r.alert_uid).cloned();
                let escalation = if acknowledgement.is_some() {
                    "acknowledged"
                } else if notifications.iter().any(|n| n.status == "failed") {
                    "failed"
                } else if notifications.is_empty() {
                    "not_notified"
                } else {
                    "notified"
                };
                Ok(InboxAlert {
                    id: r.alert_id,
                    patient: pk(r.patient_key, "alerts")?,
                    patient_name: r.display_name,
                    rule: r.rule_id,
                    profile: r.profile,
                    severity: r.severity,
                    state: r.state,
                    opened_at: from_us(r.opened_at, "alerts")?,
                    updated_at: from_us(r.updated_at, "alerts")?,
                    resolved_at: r.resolved_at.map(|t| from_us(t, "alerts")).transpose()?,
                    age_seconds: (now - r.opened_at) / 1_000_000,
                    explanation: serde_json::from_str(&r.explanation)
                        .map_err(|e| RecordError::corrupt("alerts", e))?,
                    nurse_text: r.nurse_text,
                    escalation: escalation.into(),
                    notifications,
                    acknowledgement,
                    uid: r.alert_uid,
                })
            })
            .collect()
    }

    /// One alert of the inbox by uid (open or resolved).
    pub async fn inbox_alert(&self, uid: &str) -> Result<Option<InboxAlert>> {
        let id: Option<(i64, String)> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as("SELECT alert_id, state FROM alerts WHERE alert_uid = $1")
                .bind(uid)
                .fetch_optional(pool)
                .await?
        });
        let Some((id, state)) = id else {
            return Ok(None);
        };
        let page = self
            .alert_inbox(&InboxQuery {
                resolved: state == "resolved",
                patient: None,
                limit: 1,
                before: Some(id + 1),
            })
            .await?;
        // Open alerts are ordered by severity, so `before` alone does not pick this one.
        if let Some(a) = page.into_iter().find(|a| a.uid == uid) {
            return Ok(Some(a));
        }
        let all = self
            .alert_inbox(&InboxQuery {
                resolved: state == "resolved",
                patient: None,
                limit: 500,
                before: Some(id + 1),
            })
            .await?;
        Ok(all.into_iter().find(|a| a.uid == uid))
    }

    /// The acknowledgements (latest per alert) of these alerts, from the audit log.
    async fn acknowledgements(&self, uids: &[String]) -> Result<HashMap<String, AckView>> {
        let mut out = HashMap::new();
        for chunk in uids.chunks(500) {
            let rows: Vec<(String, String, i64, String)> = with_pool!(self, read, |pool, DB| {
                let mut q = QueryBuilder::<DB>::new(
                    "SELECT target, actor, at, reason FROM audit_log WHERE action = ",
                );
                q.push_bind(ACK_ACTION);
                q.push(" AND target IN (");
                let mut sep = q.separated(", ");
                for uid in chunk {
                    sep.push_bind(crate::notify::ack_target(uid));
                }
                q.push(") ORDER BY audit_id");
                q.build_query_as().fetch_all(pool).await?
            });
            for (target, actor, at, reason) in rows {
                let uid = target.trim_start_matches("alert:").to_owned();
                out.insert(
                    uid,
                    AckView {
                        by: actor,
                        at: from_us(at, "audit_log")?,
                        note: reason,
                    },
                );
            }
        }
        Ok(out)
    }

    async fn outbox_since(
        &self,
        since_ms: i64,
        status: Option<&str>,
    ) -> Result<Vec<NotificationView>> {
        let rows: Vec<OutboxRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT id, status, payload, CAST(attempts AS BIGINT) AS attempts, last_error \
                 FROM notifier_outbox WHERE next_at >= $1 AND ($2 IS NULL OR status = $2) \
                 ORDER BY seq",
            )
            .bind(since_ms)
            .bind(status)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().filter_map(notification_view).collect())
    }

    /// Notifications the notifier gave up on (a permanent error or out of retries), newest
    /// first: the console must show them, since nobody was told.
    pub async fn failed_notifications(&self, limit: u32) -> Result<Vec<NotificationView>> {
        let rows: Vec<OutboxRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT id, status, payload, CAST(attempts AS BIGINT) AS attempts, last_error \
                 FROM notifier_outbox WHERE status = 'failed' ORDER BY seq DESC LIMIT $1",
            )
            .bind(i64::from(limit.clamp(1, 500)))
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().filter_map(notification_view).collect())
    }

    /// Depths of the queues around the server, for `/metrics`: notifications in the outbox by
    /// status, and the gateways' store-and-forward queues as their latest status reported
    /// them (a gateway that went offline keeps its last report).
    pub async fn queue_depths(&self) -> Result<QueueDepths> {
        let by_status: Vec<(String, i64)> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as("SELECT status, COUNT(*) FROM notifier_outbox GROUP BY status")
                .fetch_all(pool)
                .await?
        });
        let mut depths = QueueDepths::default();
        for (status, n) in by_status {
            let n = u64::try_from(n).unwrap_or(0);
            match status.as_str() {
                "pending" => depths.outbox_pending = n,
                "failed" => depths.outbox_failed = n,
                _ => {}
            }
        }
        for g in self.list_gateways().await? {
            if let Some(q) = g.status.and_then(|s| s.queue) {
                depths.gateways_reporting += 1;
                depths.gateway_queued += q.depth;
                depths.gateway_queued_max = depths.gateway_queued_max.max(q.depth);
            }
        }
        Ok(depths)
    }

    /// Whether an alert is open: `None` when there is no such alert.
    pub async fn alert_is_open(&self, uid: &str) -> Result<Option<bool>> {
        let state: Option<String> = with_pool!(self, read, |pool, DB| {
            sqlx::query_scalar("SELECT state FROM alerts WHERE alert_uid = $1")
                .bind(uid)
                .fetch_optional(pool)
                .await?
        });
        Ok(state.map(|s| s == "open"))
    }

    /// The caseload with cohort filters: six queries, whatever the number of patients.
    pub async fn caseload(&self, f: &CohortFilter) -> Result<Vec<CaseloadRow>> {
        let now = now_us();
        let patients: Vec<(String, Option<String>, String, Option<String>)> =
            with_pool!(self, read, |pool, DB| {
                sqlx::query_as(
                    "SELECT patient_key, display_name, condition, care_team FROM patients \
                     WHERE $1 IS NULL OR condition = $1 ORDER BY patient_key",
                )
                .bind(f.condition.as_deref())
                .fetch_all(pool)
                .await?
            });
        let open: Vec<(String, i64, i64)> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&format!(
                "SELECT a.patient_key, COUNT(*), CAST(MIN({}) AS BIGINT) FROM alerts a WHERE a.state = 'open' \
                 GROUP BY a.patient_key",
                severity_rank_sql()
            ))
            .fetch_all(pool)
            .await?
        });
        let open: HashMap<String, (i64, i64)> =
            open.into_iter().map(|(p, n, r)| (p, (n, r))).collect();
        #[allow(clippy::type_complexity)]
        let last: Vec<(String, String, Option<String>, String, i64)> =
            with_pool!(self, read, |pool, DB| {
                sqlx::query_as(
                    "SELECT v.patient_key, v.kind, v.value_text, v.unit, v.measured_at \
                     FROM reading_values v JOIN (SELECT patient_key, kind, \
                     MAX(measured_at) AS m FROM reading_values GROUP BY patient_key, kind) l \
                     ON l.patient_key = v.patient_key AND l.kind = v.kind AND l.m = v.measured_at \
                     ORDER BY v.patient_key, v.kind",
                )
                .fetch_all(pool)
                .await?
            });
        let mut last_by: HashMap<String, BTreeMap<String, LastReadingView>> = HashMap::new();
        for (p, kind, value, unit, at) in last {
            last_by.entry(p).or_default().insert(
                kind.clone(),
                LastReadingView {
                    kind,
                    value,
                    unit,
                    at: from_us(at, "reading_values")?,
                },
            );
        }
        let days: Vec<(String, i64)> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT patient_key, COUNT(DISTINCT measured_at / 86400000000) FROM readings \
                 WHERE measured_at >= $1 AND measured_at <= $2 GROUP BY patient_key",
            )
            .bind(now - 30 * DAY_US)
            .bind(now)
            .fetch_all(pool)
            .await?
        });
        let days: HashMap<String, i64> = days.into_iter().collect();
        let heard: Vec<(String, Option<i64>)> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT b.patient_key, MAX(g.last_seen_at) FROM device_bindings b \
                 JOIN gateways g ON g.gateway_id = b.gateway_id WHERE b.valid_to IS NULL \
                 GROUP BY b.patient_key",
            )
            .fetch_all(pool)
            .await?
        });
        let heard: HashMap<String, Option<i64>> = heard.into_iter().collect();
        let matching: Option<HashSet<String>> = match f.value {
            Some(v) => {
                let cmp = if v.above { ">" } else { "<" };
                let keys: Vec<String> = with_pool!(self, read, |pool, DB| {
                    sqlx::query_scalar(&format!(
                        "SELECT DISTINCT patient_key FROM reading_values WHERE kind = $1 \
                         AND measured_at >= $2 AND value_num {cmp} $3"
                    ))
                    .bind(v.kind.as_str())
                    .bind(now - i64::from(v.within_hours) * 3_600_000_000)
                    .bind(v.value)
                    .fetch_all(pool)
                    .await?
                });
                Some(keys.into_iter().collect())
            }
            None => None,
        };
        let ranks = ["emergency", "high", "medium", "low", "info"];
        let mut out = Vec::new();
        for (key, name, condition, care_team) in patients {
            if matching.as_ref().is_some_and(|m| !m.contains(&key)) {
                continue;
            }
            let (open_alerts, rank) = open.get(&key).copied().unwrap_or((0, 99));
            if f.open_alerts_only && open_alerts == 0 {
                continue;
            }
            let last: Vec<LastReadingView> = last_by
                .remove(&key)
                .map(|m| m.into_values().collect())
                .unwrap_or_default();
            let last_reading_at = last.iter().map(|l| l.at).max();
            if let Some(n) = f.silent_days {
                let cutoff = now - i64::from(n) * DAY_US;
                if last_reading_at.is_some_and(|t| to_us(t) >= cutoff) {
                    continue;
                }
            }
            let days = days.get(&key).copied().unwrap_or(0);
            let silent_gateway = heard
                .get(&key)
                .is_none_or(|t| t.is_none_or(|t| t < now - DAY_US));
            out.push(CaseloadRow {
                open_alerts,
                top_severity: usize::try_from(rank)
                    .ok()
                    .and_then(|r| ranks.get(r))
                    .map(|s| (*s).to_owned()),
                last,
                last_reading_at,
                days_with_readings_30: days,
                meets_16_of_30: days >= 16,
                silent_gateway,
                patient: pk(key, "patients")?,
                name,
                condition,
                care_team,
            });
        }
        Ok(out)
    }

    /// A patient's numeric values of one kind measured in `[from, to)`, oldest first, with
    /// the reading's device flags: what a rules-engine baseline is made from. `None` when
    /// there are more than `limit` (a continuous oximeter's month), so a caller never loads
    /// an unbounded series.
    pub async fn value_series(
        &self,
        patient: &PatientKey,
        kind: Kind,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: u32,
    ) -> Result<Option<Vec<(OffsetDateTime, f64, vitals::Flags)>>> {
        let rows: Vec<(i64, f64, i64)> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT v.measured_at, v.value_num, CAST(r.flags AS BIGINT) FROM reading_values v \
                 JOIN readings r ON r.reading_id = v.reading_id \
                 WHERE v.patient_key = $1 AND v.kind = $2 AND v.measured_at >= $3 \
                 AND v.measured_at < $4 AND v.value_num IS NOT NULL \
                 ORDER BY v.measured_at, v.reading_id LIMIT $5",
            )
            .bind(patient.as_str())
            .bind(kind.as_str())
            .bind(to_us(from))
            .bind(to_us(to))
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await?
        });
        if rows.len() > limit as usize {
            return Ok(None);
        }
        rows.into_iter()
            .map(|(at, v, flags)| {
                Ok((
                    from_us(at, "reading_values")?,
                    v,
                    vitals::Flags::from_bits_truncate(u32::try_from(flags).unwrap_or(0)),
                ))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Mean of each kind's values for a patient between `from` and `to`.
    pub async fn value_means(
        &self,
        patient: &PatientKey,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<MeanView>> {
        let rows: Vec<(String, Option<f64>, i64)> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT kind, AVG(value_num), COUNT(value_num) FROM reading_values \
                 WHERE patient_key = $1 AND measured_at >= $2 AND measured_at <= $3 \
                 AND value_num IS NOT NULL GROUP BY kind ORDER BY kind",
            )
            .bind(patient.as_str())
            .bind(to_us(from))
            .bind(to_us(to))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(kind, mean, count)| {
                Some(MeanView {
                    kind,
                    mean: mean?,
                    count,
                })
            })
            .collect())
    }

    /// A patient's alerts overlapping `[from, to]`, oldest first, with acknowledgements.
    pub async fn alerts_in_range(
        &self,
        patient: &PatientKey,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<InboxAlert>> {
        let mut all = self
            .alert_inbox(&InboxQuery {
                resolved: false,
                patient: Some(patient.clone()),
                limit: 500,
                before: None,
            })
            .await?;
        all.extend(
            self.alert_inbox(&InboxQuery {
                resolved: true,
                patient: Some(patient.clone()),
                limit: 500,
                before: None,
            })
            .await?,
        );
        all.retain(|a| a.opened_at <= to && a.resolved_at.is_none_or(|r| r >= from));
        all.sort_by_key(|a| (a.opened_at, a.id));
        Ok(all)
    }

    /// The audit log, newest first, filtered.
    pub async fn audit_entries(&self, f: &AuditFilter) -> Result<Vec<AuditView>> {
        let action_like = f.action.as_ref().map(|a| {
            let escaped = a
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("{escaped}%")
        });
        let rows: Vec<(i64, i64, String, String, String, String)> =
            with_pool!(self, read, |pool, DB| {
                sqlx::query_as(
                    "SELECT audit_id, at, actor, action, target, reason FROM audit_log \
                     WHERE ($1 IS NULL OR actor = $1) \
                     AND ($2 IS NULL OR action LIKE $2 ESCAPE '\\') \
                     AND ($3 IS NULL OR target = $3) AND ($4 IS NULL OR at >= $4) \
                     AND ($5 IS NULL OR audit_id < $5) ORDER BY audit_id DESC LIMIT $6",
                )
                .bind(f.actor.as_deref())
                .bind(action_like.as_deref())
                .bind(f.target.as_deref())
                .bind(f.since.map(to_us))
                .bind(f.before)
                .bind(i64::from(f.limit.clamp(1, 500)))
                .fetch_all(pool)
                .await?
            });
        rows.into_iter()
            .map(|(id, at, actor, action, target, reason)| {
                Ok(AuditView {
                    id,
                    at: from_us(at, "audit_log")?,
                    actor,
                    action,
                    target,
                    reason,
                })
            })
            .collect()
    }

    /// A patient's threshold changes, newest first.
    pub async fn threshold_versions(&self, patient: &PatientKey) -> Result<Vec<ThresholdVersion>> {
        let rows: Vec<(i64, String, String, String, String, i64)> =
            with_pool!(self, read, |pool, DB| {
                sqlx::query_as(
                    "SELECT version, base_profile, override_json, author, reason, created_at \
                     FROM threshold_versions WHERE patient_key = $1 ORDER BY version DESC",
                )
                .bind(patient.as_str())
                .fetch_all(pool)
                .await?
            });
        rows.into_iter()
            .map(|(version, base_profile, json, author, reason, at)| {
                Ok(ThresholdVersion {
                    version,
                    base_profile,
                    override_json: serde_json::from_str(&json)
                        .map_err(|e| RecordError::corrupt("threshold_versions", e))?,
                    author,
                    reason,
                    at: from_us(at, "threshold_versions")?,
                })
            })
            .collect()
    }

    /// The threshold version in force for a patient (the latest), if any.
    pub async fn current_thresholds(
        &self,
        patient: &PatientKey,
    ) -> Result<Option<ThresholdVersion>> {
        Ok(self.threshold_versions(patient).await?.into_iter().next())
    }

    /// Stores a new threshold version for a patient (the next number), audits it
    /// (`thresholds.change` on `patient:{key}`, with the reason) and bumps the patient's rule
    /// version, all in one transaction: every ingest node sees its rules state is stale at
    /// its next batch or tick and rebuilds it with the new thresholds.
    /// The caller has validated `override_json` (it builds on `base_profile`).
    pub async fn save_thresholds(
        &self,
        patient: &PatientKey,
        base_profile: &str,
        override_json: &Json,
        audit: &Audit<'_>,
    ) -> Result<i64> {
        if audit.why.trim().is_empty() {
            return Err(RecordError::Invalid(
                "say why the thresholds change (the reason is kept with the version)".into(),
            ));
        }
        if self.patient(patient).await?.is_none() {
            return Err(RecordError::NotFound {
                what: "patient",
                key: patient.to_string(),
            });
        }
        let now = now_us();
        let text = override_json.to_string();
        let target = format!("patient:{patient}");
        let version = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let next: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM threshold_versions \
                 WHERE patient_key = $1",
            )
            .bind(patient.as_str())
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO threshold_versions (patient_key, version, base_profile, \
                 override_json, author, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(patient.as_str())
            .bind(next)
            .bind(base_profile)
            .bind(text.as_str())
            .bind(audit.who)
            .bind(audit.why)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, target, reason) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(now)
            .bind(audit.who)
            .bind(format!("thresholds.change(v{next})"))
            .bind(target.as_str())
            .bind(audit.why)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO rule_versions (patient_key, version) VALUES ($1, 1) \
                 ON CONFLICT (patient_key) DO UPDATE SET version = rule_versions.version + 1",
            )
            .bind(patient.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            next
        });
        Ok(version)
    }
}
