//! The notifier: who is told about an alert, when, how, and what happens when nobody answers.
//!
//! An alert reaches this crate as an [`AlertNotice`] (ingest converts the rules engine's
//! events into it; the notifier depends on `vitals` only). From there:
//!
//! 1. **Routing** ([`routing`]) decides the recipients, purely, with the time passed in:
//!    the care team covering the patient, the person on duty in the tier being notified
//!    (weekly rotas in a named time zone, explicit shifts that override them), their contact
//!    points, and the patient with their preferences and quiet hours. Quiet hours delay only
//!    non-urgent patient messages, to the end of the quiet period; nurses are never held back.
//! 2. **The outbox** ([`outbox`]) holds every notification durably. [`plan`] turns a notice
//!    into outbox rows; ingest writes them in the same transaction as the alert, so a crash
//!    between raising and sending resends after restart. Rows of one recipient and one
//!    patient form a *group* and are sent as one message (Alertmanager's `group_wait` and
//!    `group_interval`), so a bad night is one clear message per nurse, not twenty.
//! 3. **The dispatcher** ([`Dispatcher`]) claims due groups with a lease, renders them
//!    ([`template`]), sends them over email, SMS gateway or webhook ([`channel`]), records
//!    every attempt, retries what is retryable with capped, fully jittered exponential
//!    backoff and marks the rest failed permanently, where [`OutboxStore::failed`] surfaces
//!    them. Delivery is at least once.
//! 4. **Escalation** ([`escalation`]): if an alert is not acknowledged within its severity's
//!    time, the next tier is notified, then again, a bounded number of times. An
//!    acknowledgement (console, API, or the signed, expiring link in every nurse message,
//!    see [`ack`]) or the alert's resolution stops it.
//!
//! It is not an alert store, an HTTP server or a scheduler of clinical work: ingest owns the
//! alert rows, the routes (`/ack?token=…` calls [`AckSigner::verify`]) and the audit log.
//! Nothing here logs a name, an address, a phone number or a message body.
//!
//! ```no_run
//! # async fn demo(config: notifier::NotifierConfig, notice: notifier::AlertNotice)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use notifier::{Dispatcher, MemoryOutbox, OutboxStore, Step, SystemClock, plan};
//! let runtime = config.build()?;
//! let store = MemoryOutbox::new();
//! let now = jiff::Timestamp::now();
//! store.enqueue(&plan(&notice, &runtime.directory, &runtime.policy, Step::FIRST, now)).await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let dispatcher = Dispatcher::new(store, runtime.dispatch, std::sync::Arc::new(SystemClock));
//! dispatcher.run(shutdown).await;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod ack;
pub mod channel;
mod clock;
pub mod config;
mod dispatch;
pub mod escalation;
mod notice;
pub mod outbox;
mod plan;
pub mod routing;
pub mod template;

pub use ack::{AckClaim, AckError, AckSigner, AckSource, Acknowledgement};
pub use clock::{Clock, SystemClock, TokioClock};
pub use config::{ConfigError, NotifierConfig, Runtime};
pub use dispatch::{DispatchConfig, DispatchStats, Dispatcher, RetryPolicy};
pub use escalation::{EscalationPolicy, EscalationStep, Escalator, EscalatorHandle};
pub use jiff::Timestamp;
pub use notice::{AlertId, AlertNotice, Audience, EvidenceLine, NoticeError, NoticeKind, Severity};
pub use outbox::{
    Attempt, AttemptOutcome, CancelReason, Disposition, GroupKey, MemoryOutbox, NewNotification,
    Notification, NotificationId, NotificationStatus, OutboxStore, SqliteOutbox, StoreError,
};
pub use plan::{PlanPolicy, Step, plan};
pub use routing::{ChannelKind, Contact, Directory, PersonId, Recipient};
