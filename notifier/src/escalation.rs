//! Escalation: when an alert is not acknowledged within its severity's time, the next tier
//! is notified; past the last tier, the last tier again, a bounded number of times. An
//! acknowledgement or the alert's resolution stops it.
//!
//! [`EscalationPolicy::next`] is the pure rule. [`Escalator`] is the task that applies it:
//! one owned task holding the open alerts, fed through a bounded channel
//! ([`EscalatorHandle`]), sleeping until the earliest deadline on tokio's clock (so tests
//! drive it with `tokio::time::pause()` and `advance()`), and enqueueing each step's
//! notifications in the outbox.
//!
//! Its state is in memory, its progress in the outbox: every row records its [`Step`] and
//! when it was planned. After a restart, ingest hands each open, unacknowledged alert to
//! [`EscalatorHandle::resume`], which picks up from the furthest step already enqueued
//! ([`OutboxStore::last_step`]) on that step's own timing: no step is enqueued twice, the
//! bounded repeats are not counted afresh, and a deadline that passed while the process was
//! down fires at once.
//!
//! Stopping also reaches the outbox: an acknowledgement or a resolution cancels the alert's
//! escalation rows still waiting there (their `group_wait`, or a retry), see
//! [`OutboxStore::cancel_escalation`]; the alert's first notifications are left alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::{AckError, AckSigner, Acknowledgement};
use crate::clock::{Clock, TokioClock};
use crate::notice::{AlertId, AlertNotice, NoticeKind, Severity};
use crate::outbox::{CancelReason, OutboxStore, add};
use crate::plan::{PlanPolicy, Step, plan};
use crate::routing::Directory;

/// Escalation timing for one severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityEscalation {
    /// Escalate when not acknowledged within this long of the last notification.
    #[serde(with = "humantime_serde")]
    pub ack_within: Duration,
    /// Times the last tier is notified again after its first notification.
    #[serde(default)]
    pub repeats: u32,
}

/// Escalation timing per severity; a severity left out does not escalate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EscalationPolicy {
    /// The timings.
    pub by_severity: BTreeMap<Severity, SeverityEscalation>,
}

impl EscalationPolicy {
    /// After step `done` of an alert of `severity` whose team has `tiers` tiers: how long to
    /// wait for an acknowledgement, and the step that follows. `None` when it stops there.
    pub fn next(&self, severity: Severity, tiers: usize, done: Step) -> Option<(Duration, Step)> {
        let timing = self.by_severity.get(&severity)?;
        let step = if done.tier + 1 < tiers {
            Step {
                tier: done.tier + 1,
                round: 0,
            }
        } else if tiers > 0 && done.round < timing.repeats {
            Step {
                tier: done.tier,
                round: done.round + 1,
            }
        } else {
            return None;
        };
        Some((timing.ack_within, step))
    }
}

/// An escalation step that was made (for observers and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscalationStep {
    /// The alert.
    pub alert: AlertId,
    /// The step.
    pub step: Step,
    /// When it fired.
    pub at: Timestamp,
    /// Notifications enqueued for it.
    pub notifications: usize,
}

/// The escalator cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EscalationError {
    /// It has stopped (shutdown).
    #[error("escalator stopped")]
    Stopped,
    /// The acknowledgement link was refused.
    #[error(transparent)]
    Link(#[from] AckError),
}

enum Command {
    Track(Box<AlertNotice>),
    Resume(Box<AlertNotice>),
    Ack(Acknowledgement, oneshot::Sender<bool>),
}

struct Open {
    notice: AlertNotice,
    step: Step,
    next: Option<(Timestamp, Step)>,
}

/// Talks to a running [`Escalator`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EscalatorHandle {
    tx: mpsc::Sender<Command>,
}

impl EscalatorHandle {
    /// Follows an alert event: a raise starts escalation (its first step, tier 0, is the
    /// caller's [`crate::plan`] at raise time), an update re-times it for the new severity
    /// (and restarts it if it had been acknowledged and got worse), a resolution stops it.
    pub async fn track(&self, notice: AlertNotice) -> Result<(), EscalationError> {
        self.tx
            .send(Command::Track(Box::new(notice)))
            .await
            .map_err(|_| EscalationError::Stopped)
    }

    /// Follows an open, unacknowledged alert again after a restart (`notice` as a raise at
    /// its last change): from the furthest step the outbox holds for it, timed from when
    /// that step fired (or from the last change, if later), so a step already enqueued is
    /// not enqueued again. Without rows past the first step it is [`Self::track`]. An alert
    /// already followed since the start is left as it is.
    pub async fn resume(&self, notice: AlertNotice) -> Result<(), EscalationError> {
        self.tx
            .send(Command::Resume(Box::new(notice)))
            .await
            .map_err(|_| EscalationError::Stopped)
    }

    /// Records an acknowledgement and cancels the alert's escalation rows still waiting in
    /// the outbox; `true` when it stopped a running escalation.
    pub async fn acknowledge(&self, ack: Acknowledgement) -> Result<bool, EscalationError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Ack(ack, tx))
            .await
            .map_err(|_| EscalationError::Stopped)?;
        rx.await.map_err(|_| EscalationError::Stopped)
    }

    /// Verifies a link token at `now` and acknowledges as its recipient. The returned
    /// acknowledgement is what the caller writes to its audit log.
    pub async fn acknowledge_link(
        &self,
        signer: &AckSigner,
        token: &str,
        now: Timestamp,
    ) -> Result<Acknowledgement, EscalationError> {
        let claim = signer.verify(token, now)?;
        let ack = Acknowledgement::from_link(claim, now);
        self.acknowledge(ack.clone()).await?;
        Ok(ack)
    }
}

/// The escalation task. Build, then [`Escalator::spawn`].
pub struct Escalator<S> {
    store: S,
    directory: Arc<Directory>,
    plan: PlanPolicy,
    policy: EscalationPolicy,
    clock: TokioClock,
    wake: Option<Arc<Notify>>,
    observer: Option<mpsc::Sender<EscalationStep>>,
    open: HashMap<AlertId, Open>,
    acked: HashMap<AlertId, (Acknowledgement, Severity)>,
}

/// How many commands may wait for the escalator.
const COMMAND_QUEUE: usize = 256;

impl<S: OutboxStore> Escalator<S> {
    /// An escalator enqueueing into `store`.
    pub fn new(
        store: S,
        directory: Arc<Directory>,
        plan: PlanPolicy,
        policy: EscalationPolicy,
        clock: TokioClock,
    ) -> Self {
        Escalator {
            store,
            directory,
            plan,
            policy,
            clock,
            wake: None,
            observer: None,
            open: HashMap::new(),
            acked: HashMap::new(),
        }
    }

    /// Wakes the dispatcher after each step ([`crate::Dispatcher::waker`]).
    pub fn wake_dispatcher(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Reports each step on `observer` (best effort: a full channel drops the report, never
    /// the step).
    pub fn observe(mut self, observer: mpsc::Sender<EscalationStep>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Starts the task. It ends when `shutdown` is cancelled or every handle is dropped.
    pub fn spawn(self, shutdown: CancellationToken) -> (EscalatorHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let task = tokio::spawn(self.run(rx, shutdown));
        (EscalatorHandle { tx }, task)
    }

    fn schedule(
        &self,
        notice: &AlertNotice,
        done: Step,
        from: Timestamp,
    ) -> Option<(Timestamp, Step)> {
        let tiers = self.directory.tiers(&notice.patient);
        self.policy
            .next(notice.severity, tiers, done)
            .map(|(wait, step)| (add(from, wait), step))
    }

    /// Cancels what the outbox still holds of the alert's escalation. A failure is logged:
    /// the escalation itself has stopped either way.
    async fn cancel_pending(&self, alert: &AlertId, reason: CancelReason) {
        match self.store.cancel_escalation(alert, reason).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(%alert, rows = n, reason = reason.as_str(), "pending escalation notifications cancelled");
            }
            Err(e) => {
                tracing::error!(%alert, error = %e, reason = reason.as_str(), "pending escalation notifications could not be cancelled and may still be sent");
            }
        }
    }

    async fn on_track(&mut self, notice: AlertNotice) {
        let id = notice.alert.clone();
        match notice.kind {
            NoticeKind::Resolved => {
                self.open.remove(&id);
                self.acked.remove(&id);
                self.cancel_pending(&id, CancelReason::Resolved).await;
            }
            NoticeKind::Raised | NoticeKind::Updated => {
                if let Some((_, severity)) = self.acked.get(&id) {
                    if notice.severity <= *severity {
                        return;
                    }
                    // Worse since it was acknowledged: escalate afresh.
                    self.acked.remove(&id);
                    self.open.remove(&id);
                }
                if let Some(step) = self.open.get(&id).map(|o| o.step) {
                    // Re-time from now for the new severity, keeping the tier reached.
                    let next = self.schedule(&notice, step, self.clock.now());
                    if let Some(o) = self.open.get_mut(&id) {
                        o.notice = notice;
                        o.next = next;
                    }
                } else {
                    let next = self.schedule(&notice, Step::FIRST, notice.at);
                    self.open.insert(
                        id,
                        Open {
                            notice,
                            step: Step::FIRST,
                            next,
                        },
                    );
                }
            }
        }
    }

    async fn on_resume(&mut self, notice: AlertNotice) {
        let id = notice.alert.clone();
        if self.open.contains_key(&id) || self.acked.contains_key(&id) {
            return;
        }
        let (step, from) = match self.store.last_step(&id).await {
            Ok(Some((step, at))) if step.is_escalation() => (step, at.max(notice.at)),
            Ok(_) => (Step::FIRST, notice.at),
            Err(e) => {
                // Escalating again beats never escalating: the old behaviour, logged.
                tracing::error!(alert = %id, error = %e, "escalation progress unreadable; following the alert from its first step");
                (Step::FIRST, notice.at)
            }
        };
        let next = self.schedule(&notice, step, from);
        tracing::info!(alert = %id, tier = step.tier, round = step.round, "escalation resumed");
        self.open.insert(id, Open { notice, step, next });
    }

    async fn on_ack(&mut self, ack: Acknowledgement) -> bool {
        self.cancel_pending(&ack.alert, CancelReason::Acknowledged)
            .await;
        let Some(open) = self.open.remove(&ack.alert) else {
            return false;
        };
        tracing::info!(alert = %ack.alert, step_tier = open.step.tier, "alert acknowledged; escalation stopped");
        self.acked
            .insert(ack.alert.clone(), (ack, open.notice.severity));
        true
    }

    async fn fire_due(&mut self) {
        let now = self.clock.now();
        let due: Vec<AlertId> = self
            .open
            .iter()
            .filter(|(_, o)| o.next.is_some_and(|(t, _)| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(open) = self.open.get(&id) else {
                continue;
            };
            let Some((_, step)) = open.next else { continue };
            let rows = plan(&open.notice, &self.directory, &self.plan, step, now);
            match self.store.enqueue(&rows).await {
                Ok(_) => {
                    tracing::warn!(alert = %id, tier = step.tier, round = step.round, recipients = rows.len(), "not acknowledged in time; escalated");
                    let next = self.schedule(&open.notice, step, now);
                    if let Some(o) = self.open.get_mut(&id) {
                        o.step = step;
                        o.next = next;
                    }
                    if let Some(w) = &self.wake {
                        w.notify_one();
                    }
                    if let Some(obs) = &self.observer {
                        let _ = obs.try_send(EscalationStep {
                            alert: id.clone(),
                            step,
                            at: now,
                            notifications: rows.len(),
                        });
                    }
                }
                Err(e) => {
                    tracing::error!(alert = %id, error = %e, "escalation could not be enqueued; retrying");
                    if let Some(o) = self.open.get_mut(&id) {
                        o.next = Some((add(now, Duration::from_secs(5)), step));
                    }
                }
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        loop {
            let next = self
                .open
                .values()
                .filter_map(|o| o.next.map(|(t, _)| t))
                .min();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(self.clock.instant_at(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Command::Track(notice)) => self.on_track(*notice).await,
                    Some(Command::Resume(notice)) => self.on_resume(*notice).await,
                    Some(Command::Ack(ack, reply)) => {
                        let stopped = self.on_ack(ack).await;
                        let _ = reply.send(stopped);
                    }
                },
                () = sleep => self.fire_due().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_walks_the_tiers_then_repeats_the_last_a_bounded_number_of_times() {
        let mut policy = EscalationPolicy::default();
        policy.by_severity.insert(
            Severity::High,
            SeverityEscalation {
                ack_within: Duration::from_secs(600),
                repeats: 1,
            },
        );
        let s = |tier, round| Step { tier, round };
        let ten = Duration::from_secs(600);
        assert_eq!(
            policy.next(Severity::High, 2, s(0, 0)),
            Some((ten, s(1, 0)))
        );
        assert_eq!(
            policy.next(Severity::High, 2, s(1, 0)),
            Some((ten, s(1, 1)))
        );
        assert_eq!(policy.next(Severity::High, 2, s(1, 1)), None);
        assert_eq!(policy.next(Severity::Low, 2, s(0, 0)), None);
        assert_eq!(policy.next(Severity::High, 0, s(0, 0)), None);
    }
}
