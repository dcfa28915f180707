//! The outbox in memory: for tests and for `rpm demo` runs that need no durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;

use super::{
    Attempt, CancelReason, Disposition, GroupKey, NewNotification, Notification, NotificationId,
    NotificationStatus, OutboxStore, StoreError, add, furthest_step,
};
use crate::notice::AlertId;
use crate::plan::Step;

#[derive(Default)]
struct Inner {
    rows: BTreeMap<NotificationId, (Notification, Option<Timestamp>, i64)>,
    attempts: Vec<(NotificationId, Attempt)>,
    last_sent: HashMap<GroupKey, Timestamp>,
    seq: i64,
}

/// An [`OutboxStore`] in memory. Cloning shares the same rows.
#[derive(Clone, Default)]
pub struct MemoryOutbox {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied update here (each
        // operation mutates after all checks), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every row, in enqueue order (for tests and the console).
    pub fn all(&self) -> Vec<Notification> {
        let inner = self.lock();
        let mut rows: Vec<_> = inner.rows.values().collect();
        rows.sort_by_key(|(_, _, seq)| *seq);
        rows.into_iter().map(|(n, _, _)| n.clone()).collect()
    }
}

impl OutboxStore for MemoryOutbox {
    async fn enqueue(&self, rows: &[NewNotification]) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let mut new = 0;
        for row in rows {
            if inner.rows.contains_key(&row.id) {
                continue;
            }
            inner.seq += 1;
            let seq = inner.seq;
            inner.rows.insert(
                row.id,
                (
                    Notification {
                        row: row.clone(),
                        status: NotificationStatus::Pending,
                        attempts: 0,
                        next_at: row.not_before,
                        last_error: None,
                    },
                    None,
                    seq,
                ),
            );
            new += 1;
        }
        Ok(new)
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        group_interval: Duration,
        lease: Duration,
        max_groups: usize,
    ) -> Result<Vec<Vec<Notification>>, StoreError> {
        let mut inner = self.lock();
        let mut groups: BTreeMap<GroupKey, (Timestamp, bool)> = BTreeMap::new();
        for (n, lease_until, _) in inner.rows.values() {
            if n.status != NotificationStatus::Pending {
                continue;
            }
            let e = groups
                .entry(n.row.group.clone())
                .or_insert((Timestamp::MAX, false));
            e.0 = e.0.min(n.next_at);
            e.1 |= lease_until.is_some_and(|l| l > now);
        }
        let mut due: Vec<(Timestamp, GroupKey)> = groups
            .into_iter()
            .filter(|(g, (first, leased))| {
                !leased
                    && *first <= now
                    && inner
                        .last_sent
                        .get(g)
                        .is_none_or(|&t| add(t, group_interval) <= now)
            })
            .map(|(g, (first, _))| (first, g))
            .collect();
        due.sort();
        due.truncate(max_groups);
        let until = add(now, lease);
        let mut out = Vec::new();
        for (_, g) in due {
            let mut rows = Vec::new();
            for (n, lease_until, seq) in inner.rows.values_mut() {
                if n.status == NotificationStatus::Pending && n.row.group == g {
                    *lease_until = Some(until);
                    rows.push((*seq, n.clone()));
                }
            }
            rows.sort_by_key(|(seq, _)| *seq);
            out.push(rows.into_iter().map(|(_, n)| n).collect());
        }
        Ok(out)
    }

    async fn finish(
        &self,
        ids: &[NotificationId],
        attempt: &Attempt,
        disposition: Disposition,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let mut sent_groups = Vec::new();
        for id in ids {
            let Some((n, lease_until, _)) = inner.rows.get_mut(id) else {
                continue;
            };
            *lease_until = None;
            n.attempts += 1;
            // Cancelled while in flight: only a delivery changes that (it did go out).
            let cancelled = n.status == NotificationStatus::Cancelled;
            if !cancelled || disposition == Disposition::Sent {
                n.last_error.clone_from(&attempt.error);
            }
            match disposition {
                Disposition::Sent => {
                    n.status = NotificationStatus::Sent;
                    sent_groups.push(n.row.group.clone());
                }
                _ if cancelled => {}
                Disposition::RetryAt(t) => n.next_at = t,
                Disposition::Failed => n.status = NotificationStatus::Failed,
            }
            inner.attempts.push((*id, attempt.clone()));
        }
        for g in sent_groups {
            inner.last_sent.insert(g, attempt.at);
        }
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .rows
            .values()
            .filter(|(n, _, _)| n.status == NotificationStatus::Pending)
            .map(|(n, lease, _)| lease.map_or(n.next_at, |l| l.max(n.next_at)))
            .min())
    }

    async fn failed(&self) -> Result<Vec<Notification>, StoreError> {
        Ok(self
            .all()
            .into_iter()
            .filter(|n| n.status == NotificationStatus::Failed)
            .collect())
    }

    async fn get(&self, id: NotificationId) -> Result<Option<Notification>, StoreError> {
        Ok(self.lock().rows.get(&id).map(|(n, _, _)| n.clone()))
    }

    async fn attempts(&self, id: NotificationId) -> Result<Vec<Attempt>, StoreError> {
        Ok(self
            .lock()
            .attempts
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, a)| a.clone())
            .collect())
    }

    async fn last_step(&self, alert: &AlertId) -> Result<Option<(Step, Timestamp)>, StoreError> {
        let inner = self.lock();
        Ok(furthest_step(
            inner
                .rows
                .values()
                .map(|(n, _, _)| &n.row)
                .filter(|r| r.notice.alert == *alert),
        ))
    }

    async fn cancel_escalation(
        &self,
        alert: &AlertId,
        reason: CancelReason,
    ) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let mut cancelled = 0;
        for (n, _, _) in inner.rows.values_mut() {
            if n.status == NotificationStatus::Pending
                && n.row.step.is_escalation()
                && n.row.notice.alert == *alert
            {
                n.status = NotificationStatus::Cancelled;
                n.last_error = Some(reason.as_str().to_owned());
                cancelled += 1;
            }
        }
        Ok(cancelled)
    }
}
