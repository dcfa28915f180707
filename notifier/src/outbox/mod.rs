//! The durable outbox: every notification is a row before anything is sent.
//!
//! # Contract for implementers (ingest implements [`OutboxStore`] over its own database)
//!
//! - **Enqueue with the alert.** [`crate::plan`] turns a notice into [`NewNotification`]s;
//!   ingest inserts them in the *same transaction* as the alert row and its readings (for
//!   SQLite, [`SqliteOutbox::enqueue_in`] takes the transaction's connection; PostgreSQL
//!   uses the same columns, see [`SqliteOutbox::SCHEMA`]). Row ids are deterministic
//!   ([`NotificationId::derive`]), so inserting twice (`ON CONFLICT DO NOTHING`) is harmless.
//! - **Groups.** Rows with the same [`GroupKey`] (one recipient, one channel address, one
//!   patient) are sent as one message. A group is *due* when one of its pending rows is due
//!   (`next_at <= now`), none of its rows is leased, and it was last sent at least
//!   `group_interval` ago. Claiming leases *all* its pending rows, due or not: the first
//!   row's `group_wait` gathers everything that arrives meanwhile.
//! - **Leases, not locks.** A claim sets `lease_until`; a dispatcher that dies mid-send
//!   leaves the lease to expire and the group is claimed again: at least once.
//! - **Every attempt is recorded**, and [`OutboxStore::finish`] applies its
//!   [`Disposition`] atomically with the record: sent, retry at a time, or failed for good.
//!   Failed rows stay, and [`OutboxStore::failed`] lists them for the console: never dropped.
//! - **Escalation stops at the acknowledgement.** When an alert is acknowledged or resolved,
//!   [`OutboxStore::cancel_escalation`] marks its escalation rows (step past
//!   [`Step::FIRST`]) that are still pending `cancelled`, with the reason in `last_error`:
//!   never sent, never deleted, so the console shows what happened. First notifications
//!   (the raise, updates, the resolution itself) are not touched. A cancelled row that was
//!   already leased and then delivered becomes `sent` (it was); any other outcome of that
//!   attempt leaves it `cancelled`, so a retry cannot bring it back.
//! - **The escalation's progress is in the rows.** Each row carries its [`Step`] and when it
//!   was planned; [`OutboxStore::last_step`] reads the furthest step of an alert back, so an
//!   escalator started after a restart resumes there instead of at the first step.

mod memory;
mod sqlite;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::notice::{AlertId, AlertNotice};
use crate::plan::Step;
use crate::routing::{ChannelKind, Recipient};

pub use memory::MemoryOutbox;
pub use sqlite::SqliteOutbox;

/// A store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// A row that does not decode (written by a newer version, or corrupted).
    #[error("outbox row {id} does not decode: {why}")]
    Corrupt {
        /// The row.
        id: String,
        /// Why.
        why: String,
    },
}

/// Namespace for deterministic notification ids.
const NOTIFICATION_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_5a0e_8a8d_4d3b_9a51_1f4c_2b7e_90d1);

/// A notification row's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NotificationId(pub Uuid);

impl NotificationId {
    /// The id of the notification of one alert event to one recipient on one contact point
    /// at one escalation step: the same inputs always give the same id, so a replayed
    /// enqueue is a no-op.
    pub fn derive(
        notice: &AlertNotice,
        recipient: &Recipient,
        channel: ChannelKind,
        address: &str,
        step: u32,
    ) -> Self {
        let name = format!(
            "{}|{:?}|{}|{}|{}|{}|{}|{}",
            notice.alert,
            notice.kind,
            notice.severity,
            notice.at.as_millisecond(),
            recipient.key(),
            channel.as_str(),
            address,
            step
        );
        NotificationId(Uuid::new_v5(&NOTIFICATION_NAMESPACE, name.as_bytes()))
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Rows that are sent together: one recipient, one contact point, one patient. The address
/// is hashed, but the key still names the patient's pseudonymous key and a person id: log
/// [`GroupKey::log_id`] instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey(pub String);

impl GroupKey {
    /// The group of `recipient`'s messages about `patient` at `address` on `channel`.
    pub fn new(
        recipient: &Recipient,
        channel: ChannelKind,
        address: &str,
        patient: &vitals::PatientKey,
    ) -> Self {
        let digest = Sha256::digest(address.as_bytes());
        GroupKey(format!(
            "{}|{}|{}|{}",
            recipient.key(),
            channel.as_str(),
            patient,
            hex::encode(&digest[..8])
        ))
    }

    /// An opaque, stable id for logs and traces (names neither patient nor person).
    pub fn log_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..6])
    }
}

/// What is enqueued: one alert event for one recipient on one contact point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewNotification {
    /// Deterministic id.
    pub id: NotificationId,
    /// Which message it goes out in.
    pub group: GroupKey,
    /// The alert event.
    pub notice: AlertNotice,
    /// Who.
    pub recipient: Recipient,
    /// How.
    pub channel: ChannelKind,
    /// Where (PHI: never logged).
    pub address: String,
    /// Greeting name (PHI: never logged).
    pub name: String,
    /// The patient's action plan, for patient messages.
    pub action_plan: Option<String>,
    /// Not sent before (group wait, quiet hours).
    pub not_before: Timestamp,
    /// The escalation step it was planned for ([`Step::FIRST`] in rows written before steps
    /// were recorded).
    #[serde(default)]
    pub step: Step,
    /// When it was planned: for an escalation step, when the step fired, which is what the
    /// next step is timed from (the Unix epoch in rows written before this was recorded).
    #[serde(default)]
    pub planned_at: Timestamp,
}

/// Where a row stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// Waiting, or being retried.
    Pending,
    /// Delivered to the channel.
    Sent,
    /// Given up on: a permanent error or out of retries. Surfaced, not dropped.
    Failed,
    /// Not sent: an escalation row whose alert was acknowledged or resolved while it waited
    /// (the reason, a [`CancelReason`], is in `last_error`). Kept, not deleted.
    Cancelled,
}

impl NotificationStatus {
    /// Stable name.
    pub const fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Sent => "sent",
            NotificationStatus::Failed => "failed",
            NotificationStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(NotificationStatus::Pending),
            "sent" => Some(NotificationStatus::Sent),
            "failed" => Some(NotificationStatus::Failed),
            "cancelled" => Some(NotificationStatus::Cancelled),
            _ => None,
        }
    }
}

/// A stored row.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// What was enqueued.
    pub row: NewNotification,
    /// Where it stands.
    pub status: NotificationStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it is next due.
    pub next_at: Timestamp,
    /// The last error, for failed and retried rows.
    pub last_error: Option<String>,
}

/// How one delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Accepted by the server.
    Sent,
    /// Failed in a way worth retrying (SMTP 4xx, HTTP 5xx/429, timeouts, refused connections).
    Retryable,
    /// Failed in a way that will not get better (SMTP 5xx, HTTP 4xx, bad address).
    Permanent,
}

impl AttemptOutcome {
    /// Stable name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Sent => "sent",
            AttemptOutcome::Retryable => "retryable",
            AttemptOutcome::Permanent => "permanent",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "sent" => Some(AttemptOutcome::Sent),
            "retryable" => Some(AttemptOutcome::Retryable),
            "permanent" => Some(AttemptOutcome::Permanent),
            _ => None,
        }
    }
}

/// One delivery attempt, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// When it finished.
    pub at: Timestamp,
    /// Over which channel.
    pub channel: ChannelKind,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The error, free of PHI (status codes and error kinds, no addresses or bodies).
    pub error: Option<String>,
}

/// Why an escalation row was cancelled before it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Someone acknowledged the alert: nobody further needs telling.
    Acknowledged,
    /// The alert resolved: its resolution notice is sent, not the escalation.
    Resolved,
}

impl CancelReason {
    /// What is stored in the row's `last_error` and shown on the console.
    pub const fn as_str(self) -> &'static str {
        match self {
            CancelReason::Acknowledged => "cancelled: alert acknowledged",
            CancelReason::Resolved => "cancelled: alert resolved",
        }
    }
}

/// The furthest step of `rows` (ties: the latest planned), for [`OutboxStore::last_step`].
pub(crate) fn furthest_step<'a>(
    rows: impl IntoIterator<Item = &'a NewNotification>,
) -> Option<(Step, Timestamp)> {
    rows.into_iter().map(|r| (r.step, r.planned_at)).max()
}

/// What to do with rows after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done.
    Sent,
    /// Try again at this time.
    RetryAt(Timestamp),
    /// Give up; keep the row as failed.
    Failed,
}

/// The outbox the dispatcher works from. See the module docs for the contract.
pub trait OutboxStore: Send + Sync + 'static {
    /// Inserts rows; rows whose id is already there are ignored. Returns how many were new.
    fn enqueue(
        &self,
        rows: &[NewNotification],
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Leases up to `max_groups` due groups until `now + lease` and returns their pending
    /// rows, one `Vec` per group.
    fn claim_due(
        &self,
        now: Timestamp,
        group_interval: Duration,
        lease: Duration,
        max_groups: usize,
    ) -> impl Future<Output = Result<Vec<Vec<Notification>>, StoreError>> + Send;

    /// Records `attempt` against each row and applies `disposition`, atomically; releases
    /// the lease.
    fn finish(
        &self,
        ids: &[NotificationId],
        attempt: &Attempt,
        disposition: Disposition,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The earliest `next_at` of any pending row (the dispatcher sleeps until then).
    fn next_due(&self) -> impl Future<Output = Result<Option<Timestamp>, StoreError>> + Send;

    /// Rows given up on, oldest first.
    fn failed(&self) -> impl Future<Output = Result<Vec<Notification>, StoreError>> + Send;

    /// A row by id.
    fn get(
        &self,
        id: NotificationId,
    ) -> impl Future<Output = Result<Option<Notification>, StoreError>> + Send;

    /// The attempts recorded against a row, oldest first.
    fn attempts(
        &self,
        id: NotificationId,
    ) -> impl Future<Output = Result<Vec<Attempt>, StoreError>> + Send;

    /// The furthest escalation step enqueued for `alert` (in any status) and when it was
    /// planned; `None` when the outbox holds no row of it.
    fn last_step(
        &self,
        alert: &AlertId,
    ) -> impl Future<Output = Result<Option<(Step, Timestamp)>, StoreError>> + Send;

    /// Marks the pending escalation rows of `alert` (step past [`Step::FIRST`]) cancelled
    /// for `reason`, leased or not. Returns how many.
    fn cancel_escalation(
        &self,
        alert: &AlertId,
        reason: CancelReason,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

pub(crate) fn add(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}
