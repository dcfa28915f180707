//! Writing a batch's alert changes in a few statements instead of one or two per change.
//!
//! A batch of readings can raise, update and resolve many alerts (a bad night on a ward of
//! patients; a fleet alternating around a threshold). Written one by one, each change cost
//! two round trips (the alert row, then its event) and its notifications a third; a batch of
//! 500 readings could spend more time waiting on those than on its readings.
//!
//! The changes are written in *rounds*: the k-th change of each (patient, rule) goes into
//! round k, so within a round every key appears once. A round is one multi-row upsert for
//! its raises and updates and one `UPDATE … FROM (VALUES …)` for its resolves (neither may
//! meet the same row twice; rounds keep a raise and a later resolve of the same alert in
//! order). Almost every batch is one round. Then the events, in the order of the changes,
//! are one multi-row insert, and every notification the changes planned is one enqueue,
//! all on the caller's connection, inside its transaction; so is the cancelling of a resolved
//! alert's escalation rows still waiting (one statement per resolve, with notifications on).
//!
//! What is stored is what the one-at-a-time writes stored: the same rows, the same event
//! kinds (a raise that meets an open alert is stored as `updated`, `raised_elsewhere`), a
//! resolve that finds nothing open writes no event, events and [`WrittenEvent`]s are in the
//! order of the changes. Only the alert rows' ids may come in another order across alerts (a
//! round's rows are inserted together).

use std::collections::HashMap;

use sqlx::QueryBuilder;
use time::OffsetDateTime;
use vitals::PatientKey;

use super::alerts::{
    AlertEventKind, AlertWrite, OpenAlert, OutboxSql, WrittenEvent, alert_uid, audience_str,
};
use super::{RecordError, Result, from_us, to_us};
use crate::notify::{NoticeParts, Notifications, notice_for};

/// Alert rows per upsert (11 parameters each; SQLite allows 32 766 a statement).
const OPEN_CHUNK: usize = 1_000;
/// Resolves per update (3 parameters each).
const RESOLVE_CHUNK: usize = 2_000;
/// Events per insert (6 parameters each).
const EVENT_CHUNK: usize = 2_000;

/// The round of each change: how many earlier changes in `writes` have its (patient, rule).
/// Repeat requests touch no alert row: round 0.
pub(super) fn rounds(writes: &[AlertWrite]) -> Vec<usize> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    writes
        .iter()
        .map(|w| {
            let key = match w {
                AlertWrite::Open { patient, alert, .. } => (patient.as_str(), alert.rule.as_str()),
                AlertWrite::Resolve { patient, rule, .. } => (patient.as_str(), rule.as_str()),
                AlertWrite::Repeat { .. } => return 0,
            };
            let n = seen.entry(key).or_insert(0);
            let round = *n;
            *n += 1;
            round
        })
        .collect()
}

/// What a change did to its alert row.
#[derive(Clone, Debug)]
pub(super) enum Touched {
    /// Upserted: the row's id, its stored uid, and whether that is another episode's (the
    /// alert was already open, raised by another node or an earlier run).
    Opened { id: i64, uid: String, other: bool },
    /// Closed: the row and what the notice needs of it.
    Resolved(Box<ResolvedRow>),
}

/// A resolved alert row, as `UPDATE … RETURNING` gives it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(super) struct ResolvedRow {
    patient_key: String,
    rule_id: String,
    alert_id: i64,
    alert_uid: String,
    severity: String,
    audience: String,
    opened_at: i64,
    nurse_text: String,
    patient_text: Option<String>,
}

/// A raise or update to upsert: the change's index and its computed uid.
pub(super) struct OpenRow<'a> {
    index: usize,
    patient: &'a PatientKey,
    alert: &'a OpenAlert,
    uid: String,
}

/// A resolve to apply.
pub(super) struct ResolveRow<'a> {
    index: usize,
    patient: &'a PatientKey,
    rule: &'a str,
    at: OffsetDateTime,
}

/// An event row to insert.
struct EventRow<'a> {
    alert_id: Option<i64>,
    patient: &'a PatientKey,
    kind: AlertEventKind,
    at: i64,
    payload: String,
}

/// The changes of one round, split by statement.
pub(super) fn round_rows<'a>(
    writes: &'a [AlertWrite],
    round_of: &[usize],
    round: usize,
) -> (Vec<OpenRow<'a>>, Vec<ResolveRow<'a>>) {
    let mut opens = Vec::new();
    let mut resolves = Vec::new();
    for (index, (w, &r)) in writes.iter().zip(round_of).enumerate() {
        if r != round {
            continue;
        }
        match w {
            AlertWrite::Open { patient, alert, .. } => opens.push(OpenRow {
                index,
                patient,
                alert,
                uid: alert_uid(patient, &alert.rule, alert.opened_at),
            }),
            AlertWrite::Resolve {
                patient, rule, at, ..
            } => resolves.push(ResolveRow {
                index,
                patient,
                rule,
                at: *at,
            }),
            AlertWrite::Repeat { .. } => {}
        }
    }
    (opens, resolves)
}

/// Records what the upsert of `chunk` returned (one row per key) against each change.
pub(super) fn match_opened(
    chunk: &[OpenRow<'_>],
    returned: Vec<(String, String, i64, String)>,
    touched: &mut [Option<Touched>],
) -> Result<()> {
    let mut by_key: HashMap<(String, String), (i64, String)> = returned
        .into_iter()
        .map(|(patient, rule, id, uid)| ((patient, rule), (id, uid)))
        .collect();
    for row in chunk {
        let key = (row.patient.as_str().to_owned(), row.alert.rule.clone());
        let (id, uid) = by_key.remove(&key).ok_or_else(|| {
            RecordError::corrupt("alerts", "an upserted alert row was not returned")
        })?;
        let other = uid != row.uid;
        if let Some(slot) = touched.get_mut(row.index) {
            *slot = Some(Touched::Opened { id, uid, other });
        }
    }
    Ok(())
}

/// Records what the update of `chunk` closed against each change (a change whose alert was
/// not open gets nothing).
pub(super) fn match_resolved(
    chunk: &[ResolveRow<'_>],
    returned: Vec<ResolvedRow>,
    touched: &mut [Option<Touched>],
) {
    let mut by_key: HashMap<(String, String), ResolvedRow> = returned
        .into_iter()
        .map(|r| ((r.patient_key.clone(), r.rule_id.clone()), r))
        .collect();
    for row in chunk {
        let key = (row.patient.as_str().to_owned(), row.rule.to_owned());
        match by_key.remove(&key) {
            Some(r) => {
                if let Some(slot) = touched.get_mut(row.index) {
                    *slot = Some(Touched::Resolved(Box::new(r)));
                }
            }
            // Resolved by another node, or opened before the record kept alerts.
            None => tracing::debug!(rule = %row.rule, "resolve found no open alert"),
        }
    }
}

/// The events and notices of the changes, in their order, from what each did to its row.
fn events<'a>(
    writes: &'a [AlertWrite],
    touched: &[Option<Touched>],
    notify: Option<&Notifications>,
) -> Result<(Vec<EventRow<'a>>, Vec<WrittenEvent>)> {
    let mut rows = Vec::with_capacity(writes.len());
    let mut out = Vec::with_capacity(writes.len());
    for (w, t) in writes.iter().zip(touched) {
        let (alert, kind, patient, at, payload, elsewhere, notice) = match (w, t) {
            (
                AlertWrite::Open {
                    patient,
                    raised,
                    alert,
                },
                Some(Touched::Opened {
                    id,
                    uid: stored,
                    other,
                }),
            ) => {
                let elsewhere = *raised && *other;
                let kind = if *raised && !elsewhere {
                    AlertEventKind::Raised
                } else {
                    AlertEventKind::Updated
                };
                let payload = serde_json::json!({
                    "severity": alert.severity.as_str(),
                    "explanation": alert.explanation,
                    "raised_elsewhere": elsewhere,
                });
                // The node that opened it notified; a raise met here is not news.
                let notice = match notify {
                    Some(_) if !elsewhere => notice_for(&NoticeParts {
                        uid: stored,
                        patient,
                        rule: &alert.rule,
                        kind: if kind == AlertEventKind::Raised {
                            notifier::NoticeKind::Raised
                        } else {
                            notifier::NoticeKind::Updated
                        },
                        severity: alert.severity.as_str(),
                        audience: audience_str(alert.audience),
                        opened_at: alert.opened_at,
                        at: alert.at,
                        nurse: &alert.nurse,
                        patient_text: alert.patient_text.as_deref(),
                        explanation: &alert.explanation,
                    }),
                    _ => None,
                };
                (
                    Some((*id, stored.clone())),
                    kind,
                    patient,
                    alert.at,
                    payload,
                    elsewhere,
                    notice,
                )
            }
            (
                AlertWrite::Resolve {
                    patient,
                    rule,
                    at,
                    payload,
                },
                Some(Touched::Resolved(r)),
            ) => {
                let notice = match notify {
                    Some(_) => notice_for(&NoticeParts {
                        uid: &r.alert_uid,
                        patient,
                        rule,
                        kind: notifier::NoticeKind::Resolved,
                        severity: &r.severity,
                        audience: &r.audience,
                        opened_at: from_us(r.opened_at, "alerts")?,
                        at: *at,
                        nurse: &r.nurse_text,
                        patient_text: r.patient_text.as_deref(),
                        explanation: payload,
                    }),
                    None => None,
                };
                (
                    Some((r.alert_id, r.alert_uid.clone())),
                    AlertEventKind::Resolved,
                    patient,
                    *at,
                    payload.clone(),
                    false,
                    notice,
                )
            }
            // Nothing was open to resolve: no event.
            (AlertWrite::Resolve { .. }, _) => continue,
            (
                AlertWrite::Repeat {
                    patient,
                    at,
                    payload,
                },
                _,
            ) => (
                None,
                AlertEventKind::RepeatRequested,
                patient,
                *at,
                payload.clone(),
                false,
                None,
            ),
            (AlertWrite::Open { .. }, _) => {
                return Err(RecordError::corrupt(
                    "alerts",
                    "a raise or update wrote no alert row",
                ));
            }
        };
        rows.push(EventRow {
            alert_id: alert.as_ref().map(|(id, _)| *id),
            patient,
            kind,
            at: to_us(at),
            payload: payload.to_string(),
        });
        let (alert_id, alert_uid) = alert.unzip();
        out.push(WrittenEvent {
            alert_id,
            alert_uid,
            patient: patient.clone(),
            kind,
            raised_elsewhere: elsewhere,
            notice,
        });
    }
    Ok((rows, out))
}

/// Writing alert changes in rounds of multi-row statements.
pub(crate) trait BatchedAlertSql: OutboxSql {
    /// Writes the changes (see the module's documentation), with their notifications when
    /// `notify` is given, and returns what each did, in order.
    async fn write_batched(
        conn: &mut Self::Connection,
        writes: &[AlertWrite],
        now: i64,
        notify: Option<&Notifications>,
    ) -> Result<Vec<WrittenEvent>>;
}

macro_rules! batched_alert_sql {
    ($db:ty) => {
        impl BatchedAlertSql for $db {
            async fn write_batched(
                conn: &mut <$db as sqlx::Database>::Connection,
                writes: &[AlertWrite],
                now: i64,
                notify: Option<&Notifications>,
            ) -> Result<Vec<WrittenEvent>> {
                let round_of = rounds(writes);
                let round_count = round_of.iter().max().map_or(0, |r| r + 1);
                let mut touched: Vec<Option<Touched>> = vec![None; writes.len()];
                for round in 0..round_count {
                    let (opens, resolves) = round_rows(writes, &round_of, round);
                    for chunk in opens.chunks(OPEN_CHUNK) {
                        let mut q = QueryBuilder::<$db>::new(
                            "INSERT INTO alerts (alert_uid, patient_key, rule_id, profile, \
                             severity, audience, state, opened_at, updated_at, resolved_at, \
                             explanation, nurse_text, patient_text) ",
                        );
                        q.push_values(chunk, |mut b, row| {
                            let a = row.alert;
                            b.push_bind(row.uid.as_str())
                                .push_bind(row.patient.as_str())
                                .push_bind(a.rule.as_str())
                                .push_bind(a.profile.as_str())
                                .push_bind(a.severity.as_str())
                                .push_bind(audience_str(a.audience))
                                .push("'open'")
                                .push_bind(to_us(a.opened_at))
                                .push_bind(to_us(a.at))
                                .push("NULL")
                                .push_bind(a.explanation.to_string())
                                .push_bind(a.nurse.as_str())
                                .push_bind(a.patient_text.as_deref());
                        });
                        q.push(
                            " ON CONFLICT (patient_key, rule_id) WHERE state = 'open' \
                             DO UPDATE SET profile = excluded.profile, \
                             severity = excluded.severity, audience = excluded.audience, \
                             updated_at = CASE WHEN excluded.updated_at > alerts.updated_at \
                               THEN excluded.updated_at ELSE alerts.updated_at END, \
                             explanation = excluded.explanation, \
                             nurse_text = excluded.nurse_text, \
                             patient_text = excluded.patient_text \
                             RETURNING patient_key, rule_id, alert_id, alert_uid",
                        );
                        let returned: Vec<(String, String, i64, String)> =
                            q.build_query_as().fetch_all(&mut *conn).await?;
                        match_opened(chunk, returned, &mut touched)?;
                    }
                    for chunk in resolves.chunks(RESOLVE_CHUNK) {
                        let mut q = QueryBuilder::<$db>::new(
                            "UPDATE alerts SET state = 'resolved', resolved_at = v.column3, \
                             updated_at = v.column3 FROM (",
                        );
                        q.push_values(chunk, |mut b, row| {
                            b.push_bind(row.patient.as_str())
                                .push_bind(row.rule)
                                .push_bind(to_us(row.at));
                        });
                        q.push(
                            ") AS v WHERE alerts.patient_key = v.column1 \
                             AND alerts.rule_id = v.column2 AND alerts.state = 'open' \
                             RETURNING patient_key, rule_id, alert_id, alert_uid, severity, \
                             audience, opened_at, nurse_text, patient_text",
                        );
                        let returned: Vec<ResolvedRow> =
                            q.build_query_as().fetch_all(&mut *conn).await?;
                        match_resolved(chunk, returned, &mut touched);
                    }
                }
                let (rows, out) = events(writes, &touched, notify)?;
                for chunk in rows.chunks(EVENT_CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO alert_events (alert_id, patient_key, kind, at, \
                         recorded_at, payload) ",
                    );
                    q.push_values(chunk, |mut b, e| {
                        b.push_bind(e.alert_id)
                            .push_bind(e.patient.as_str())
                            .push_bind(e.kind.as_str())
                            .push_bind(e.at)
                            .push_bind(now)
                            .push_bind(e.payload.as_str());
                    });
                    q.build().execute(&mut *conn).await?;
                }
                // Every notification, on the same connection: they commit with the alerts.
                if let Some(n) = notify {
                    let planned_at = notifier::Timestamp::now();
                    let planned: Vec<_> = out
                        .iter()
                        .filter_map(|e| e.notice.as_ref())
                        .flat_map(|notice| n.plan(notice, planned_at))
                        .collect();
                    if !planned.is_empty() {
                        <$db as OutboxSql>::enqueue_outbox(&mut *conn, &planned).await?;
                    }
                    // A resolved alert's escalation still waiting is cancelled with the
                    // resolve, not after it: a crash between the commit and the escalator
                    // hearing of it would otherwise send it.
                    for e in &out {
                        if let (AlertEventKind::Resolved, Some(uid)) = (e.kind, &e.alert_uid) {
                            <$db as OutboxSql>::cancel_escalation(
                                &mut *conn,
                                uid,
                                notifier::CancelReason::Resolved,
                            )
                            .await?;
                        }
                    }
                }
                Ok(out)
            }
        }
    };
}

batched_alert_sql!(sqlx::Sqlite);
batched_alert_sql!(sqlx::Postgres);

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

    use super::*;

    fn key(s: &str) -> PatientKey {
        PatientKey::new(s).expect("key")
    }

    fn resolve(p: &str, rule: &str) -> AlertWrite {
        AlertWrite::Resolve {
            patient: key(p),
            rule: rule.into(),
            at: OffsetDateTime::UNIX_EPOCH,
            payload: Json::Null,
        }
    }

    fn repeat(p: &str) -> AlertWrite {
        AlertWrite::Repeat {
            patient: key(p),
            at: OffsetDateTime::UNIX_EPOCH,
            payload: Json::Null,
        }
    }

    #[test]
    fn the_kth_change_of_a_patient_and_rule_is_in_round_k() {
        let writes = [
            resolve("pk-1", "spo2-low"),
            resolve("pk-2", "spo2-low"),
            resolve("pk-1", "spo2-low"),
            repeat("pk-1"),
            resolve("pk-1", "pulse-high"),
            repeat("pk-1"),
            resolve("pk-1", "spo2-low"),
        ];
        assert_eq!(rounds(&writes), [0, 0, 1, 0, 0, 0, 2]);
    }
}
