//! The notifier, wired into ingest: alerts become outbox rows in the record's own database,
//! in the transaction that stores the alert; a dispatcher sends them and an escalator follows
//! the open alerts.
//!
//! # The transaction path
//!
//! A [`Record`] built with [`Record::with_notifications`] carries [`Notifications`] (the
//! directory and the plan policy). Inside [`Record::insert_batch_evaluated`] and
//! [`Record::write_alerts`], every raise, update and resolve written to `alerts` is turned
//! into an [`AlertNotice`] (see [`notice_for_stored`] for the fields), planned with [`notifier::plan`] at
//! [`notifier::Step::FIRST`] and inserted into `notifier_outbox` **on the same connection, in
//! the same transaction** (SQLite: [`notifier::SqliteOutbox::enqueue_in`]; PostgreSQL: the
//! same columns, [`PgOutbox`]). An alert is never committed without its notifications, nor a
//! notification without its alert. Only after the commit is the escalator told
//! ([`notifier::EscalatorHandle::track`]) and the dispatcher woken: if the process dies in
//! between, the rows are in the database and the next start sends them (at least once), and
//! [`start`] tracks the open, unacknowledged alerts again.
//!
//! The escalator's clock for an alert starts at the commit (a reading measured hours ago by a
//! hub that was offline still gives the nurse the whole `ack_within`). After a restart, an
//! open alert is followed again from where its escalation had got to
//! ([`notifier::EscalatorHandle::resume`]): the furthest step its outbox rows record, timed
//! from when that step fired (or from the alert's last change, if later). A step due while
//! the process was down fires at once; a step already enqueued is never enqueued again, and
//! the bounded repeats are not counted afresh.
//!
//! A raise that met an alert another node had already opened (`raised_elsewhere`) is not
//! notified again: the node that opened it did. Repeat requests notify nobody.
//!
//! # Acknowledgements
//!
//! The `/ack?token=…` route ([`crate::http`]) verifies the signed link, stops the escalation
//! and writes `alert.acknowledge` on `alert:{alert_uid}` to the audit log, with the link's
//! recipient id (`staff:nurse.day`) as who. [`start`] skips alerts acknowledged that way.

mod outbox;

use std::sync::{Arc, RwLock};

use notifier::{
    AlertId, AlertNotice, Audience, Directory, DispatchStats, Dispatcher, Escalator,
    EscalatorHandle, EvidenceLine, NewNotification, NoticeKind, PlanPolicy, Runtime, Severity,
    Step, SystemClock, Timestamp, TokioClock,
};
use serde_json::Value as Json;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vitals::PatientKey;

use crate::record::{Record, RecordError, StoredAlert, WrittenEvent};

pub use outbox::{PgOutbox, RecordOutbox};

/// The audit action of an acknowledgement.
pub const ACK_ACTION: &str = "alert.acknowledge";

/// The audit target of an alert: `alert:{alert_uid}`.
pub fn ack_target(alert: &str) -> String {
    format!("alert:{alert}")
}

/// What the record needs to plan notifications inside its transactions, and whom to tell
/// after the commit.
#[derive(Debug)]
pub struct Notifications {
    directory: Arc<Directory>,
    policy: PlanPolicy,
    running: RwLock<Option<(EscalatorHandle, Arc<Notify>)>>,
}

impl Notifications {
    /// Plans with `directory` and `policy` (a built [`Runtime`]'s).
    pub fn new(directory: Arc<Directory>, policy: PlanPolicy) -> Self {
        Notifications {
            directory,
            policy,
            running: RwLock::new(None),
        }
    }

    /// From a built notifier config.
    pub fn from_runtime(runtime: &Runtime) -> Self {
        Self::new(runtime.directory.clone(), runtime.policy.clone())
    }

    /// The first step's outbox rows for `notice`, at `now`.
    pub fn plan(&self, notice: &AlertNotice, now: Timestamp) -> Vec<NewNotification> {
        notifier::plan(notice, &self.directory, &self.policy, Step::FIRST, now)
    }

    fn attach(&self, escalator: EscalatorHandle, wake: Arc<Notify>) {
        if let Ok(mut r) = self.running.write() {
            *r = Some((escalator, wake));
        }
    }

    /// After a commit: wakes the dispatcher and has the escalator follow each notice. Nothing
    /// is lost if this never runs (a crash): the rows are committed and [`start`] re-tracks.
    pub(crate) async fn committed(&self, written: &[WrittenEvent]) {
        let running = self.running.read().ok().and_then(|r| r.clone());
        let Some((escalator, wake)) = running else {
            return;
        };
        let mut any = false;
        let now = Timestamp::now();
        for notice in written.iter().filter_map(|w| w.notice.as_ref()) {
            any = true;
            // The escalation clock starts when the nurse is told, not when the reading was
            // measured (a hub back online after hours would otherwise escalate at once).
            let mut notice = notice.clone();
            notice.at = notice.at.max(now);
            let alert = notice.alert.clone();
            if let Err(e) = escalator.track(notice).await {
                tracing::warn!(%alert, error = %e, "escalator not running");
            }
        }
        if any {
            wake.notify_one();
        }
    }
}

/// A `time` instant as the notifier's.
fn ts(t: OffsetDateTime) -> Timestamp {
    let us = i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn from_name<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(Json::String(s.to_owned())).ok()
}

/// The parts of an alert a notice is made of, as the record has them.
pub(crate) struct NoticeParts<'a> {
    pub uid: &'a str,
    pub patient: &'a PatientKey,
    pub rule: &'a str,
    pub kind: NoticeKind,
    pub severity: &'a str,
    pub audience: &'a str,
    pub opened_at: OffsetDateTime,
    pub at: OffsetDateTime,
    pub nurse: &'a str,
    pub patient_text: Option<&'a str>,
    /// The stored explanation (`evidence`, `context`, `text`), see `consume::alerting`.
    pub explanation: &'a Json,
}

/// The notifier's form of an alert event: patient key, rule, severity, audience, the
/// engine's wording (`Engine::describe`, stored as `nurse_text`/`patient_text`), the
/// one-line explanation and the evidence readings. `None` (logged) for a row that does not
/// convert, which is a bug, not an input error.
pub(crate) fn notice_for(p: &NoticeParts<'_>) -> Option<AlertNotice> {
    let alert = match AlertId::new(p.uid) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "alert uid is not a notifier alert id");
            return None;
        }
    };
    let (Some(severity), Some(audience)) = (
        from_name::<Severity>(p.severity),
        from_name::<Audience>(p.audience),
    ) else {
        tracing::error!(alert = %alert, "alert severity or audience unknown to the notifier");
        return None;
    };
    let evidence = p.explanation["evidence"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|e| {
                    Some(EvidenceLine {
                        kind: e["kind"].as_str()?.parse().ok()?,
                        value: e["value"].as_f64()?,
                        at: Timestamp::from_millisecond(e["at"].as_i64()?).ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(AlertNotice {
        alert,
        patient: p.patient.clone(),
        rule: p.rule.to_owned(),
        kind: p.kind,
        severity,
        audience,
        opened_at: ts(p.opened_at),
        at: ts(p.at),
        nurse_text: p.nurse.to_owned(),
        patient_text: p.patient_text.map(str::to_owned),
        explanation: p.explanation["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        evidence,
    })
}

/// An open alert as the escalator is told about it again after a restart: a raise, at its
/// last change.
pub fn notice_for_stored(a: &StoredAlert) -> Option<AlertNotice> {
    notice_for(&NoticeParts {
        uid: &a.uid,
        patient: &a.patient,
        rule: &a.rule,
        kind: NoticeKind::Raised,
        severity: &a.severity,
        audience: &a.audience,
        opened_at: a.opened_at,
        at: a.updated_at,
        nurse: &a.nurse,
        patient_text: a.patient_text.as_deref(),
        explanation: &a.explanation,
    })
}

/// The dispatcher and the escalator of a running ingest node.
#[derive(Debug)]
pub struct Running {
    /// Talks to the escalator (the `/ack` route uses it).
    pub escalator: EscalatorHandle,
    /// The dispatcher's counters.
    pub stats: Arc<DispatchStats>,
    /// Alerts tracked again at start-up.
    pub retracked: usize,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits for both tasks to end (after the shutdown token is cancelled).
    pub async fn join(self) {
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "a notifier task failed");
            }
        }
    }
}

/// Starts the dispatcher over the record's outbox and the escalator, attaches them to the
/// record's [`Notifications`] (so commits wake and track), and resumes the escalation of
/// every open alert that has no acknowledgement in the audit log from the step it had
/// reached: escalation survives a restart without repeating itself, and rows left pending
/// by a crash are sent. Both stop when `shutdown` is cancelled.
pub async fn start(
    record: &Record,
    runtime: &Runtime,
    shutdown: CancellationToken,
) -> Result<Running, RecordError> {
    let outbox = record.outbox().await?;
    let dispatcher = Dispatcher::new(
        outbox.clone(),
        runtime.dispatch.clone(),
        Arc::new(SystemClock),
    );
    let wake = dispatcher.waker();
    let stats = dispatcher.stats();
    let (escalator, escalating) = Escalator::new(
        outbox,
        runtime.directory.clone(),
        runtime.policy.clone(),
        runtime.escalation.clone(),
        TokioClock::new(),
    )
    .wake_dispatcher(wake.clone())
    .spawn(shutdown.clone());
    if let Some(n) = record.notifications() {
        n.attach(escalator.clone(), wake.clone());
    } else {
        tracing::warn!("notifier started on a record without notifications: nothing is enqueued");
    }
    let mut retracked = 0;
    for alert in record.open_unacknowledged_alerts().await? {
        if let Some(notice) = notice_for_stored(&alert)
            && escalator.resume(notice).await.is_ok()
        {
            retracked += 1;
        }
    }
    let dispatching = tokio::spawn(dispatcher.run(shutdown));
    tracing::info!(open_alerts = retracked, "notifier started");
    Ok(Running {
        escalator,
        stats,
        retracked,
        tasks: vec![dispatching, escalating],
    })
}
