//! The dispatcher: claims due groups from the outbox, renders and sends them, records every
//! attempt, and decides what happens next. At least once: a group is marked sent only after
//! its channel accepted it, so a crash between the two sends it again after the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::channel::{Channels, DeliveryError, Outgoing};
use crate::clock::Clock;
use crate::outbox::{
    Attempt, AttemptOutcome, Disposition, Notification, NotificationId, OutboxStore, StoreError,
    add,
};
use crate::template::TemplateContext;

/// Capped exponential backoff with full jitter, and a bound on attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry waits up to this long.
    pub base: Duration,
    /// No wait is longer.
    pub cap: Duration,
    /// Attempts in all before a group is failed permanently.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
            max_attempts: 12,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based), given `unit` drawn
    /// uniformly from [0, 1): `unit × min(cap, base × 2^(attempt-1))` ("full jitter").
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// How the dispatcher runs.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// Retries.
    pub retry: RetryPolicy,
    /// How long a claim is held; a dispatcher that dies lets it run out. Longer than the
    /// slowest channel timeout.
    pub lease: Duration,
    /// Longest sleep between looks at the outbox (others may enqueue without waking us).
    pub poll: Duration,
    /// Groups claimed per pass.
    pub batch: usize,
    /// Least time between two messages of one group (Alertmanager's `group_interval`).
    pub group_interval: Duration,
    /// The channels.
    pub channels: Channels,
    /// Wording and links.
    pub templates: TemplateContext,
}

/// Counters (also what metrics export).
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Groups delivered.
    pub sent: AtomicU64,
    /// Attempts that failed and will be retried.
    pub retried: AtomicU64,
    /// Groups failed for good.
    pub failed: AtomicU64,
}

/// Sends what the outbox holds. Run one per store (more are safe: leases keep them apart).
pub struct Dispatcher<S> {
    store: S,
    config: DispatchConfig,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    stats: Arc<DispatchStats>,
}

impl<S: OutboxStore> Dispatcher<S> {
    /// A dispatcher over `store`.
    pub fn new(store: S, config: DispatchConfig, clock: Arc<dyn Clock>) -> Self {
        Dispatcher {
            store,
            config,
            clock,
            wake: Arc::new(Notify::new()),
            stats: Arc::new(DispatchStats::default()),
        }
    }

    /// Notify it after enqueueing to have it look at once instead of at the next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<DispatchStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled. A send in progress is finished first (it is
    /// bounded by the channel timeouts), so nothing is left half-recorded on a clean stop.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let wait = match self.tick().await {
                Ok(n) if n > 0 => Duration::ZERO,
                Ok(_) => self.idle_wait().await,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox unavailable; retrying");
                    self.config.poll
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("dispatcher stopped");
    }

    async fn idle_wait(&self) -> Duration {
        let now = self.clock.now();
        match self.store.next_due().await {
            Ok(Some(t)) if t > now => Duration::try_from(t.duration_since(now))
                .unwrap_or(self.config.poll)
                .min(self.config.poll),
            // Due now but not claimable (group interval): look again soon, not in a spin.
            Ok(Some(_)) => self.config.poll.min(Duration::from_millis(200)),
            _ => self.config.poll,
        }
    }

    /// One pass: claims due groups and sends each. Returns how many groups it handled.
    pub async fn tick(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let groups = self
            .store
            .claim_due(
                now,
                self.config.group_interval,
                self.config.lease,
                self.config.batch,
            )
            .await?;
        let n = groups.len();
        for rows in groups {
            self.deliver(rows).await?;
        }
        Ok(n)
    }

    async fn deliver(&self, rows: Vec<Notification>) -> Result<(), StoreError> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let ids: Vec<NotificationId> = rows.iter().map(|n| n.row.id).collect();
        let channel = first.row.channel;
        let group = first.row.group.log_id();
        let now = self.clock.now();
        let result = match self.config.templates.render(&rows, now) {
            Some(rendered) => {
                let delivery_id = first.row.id.to_string();
                let msg = Outgoing {
                    to: &first.row.address,
                    rendered: &rendered,
                    delivery_id: &delivery_id,
                };
                self.config.channels.send(channel, msg).await
            }
            None => Ok(()),
        };
        let at = self.clock.now();
        let attempts = rows.iter().map(|n| n.attempts).max().unwrap_or(0) + 1;
        let (outcome, error, disposition) = match result {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%group, channel = channel.as_str(), rows = ids.len(), attempt = attempts, "delivered");
                (AttemptOutcome::Sent, None, Disposition::Sent)
            }
            Err(DeliveryError::Retryable(e)) if attempts < self.config.retry.max_attempts => {
                let wait = self.config.retry.backoff(attempts, fastrand::f64());
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%group, channel = channel.as_str(), attempt = attempts, error = %e, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                (
                    AttemptOutcome::Retryable,
                    Some(e),
                    Disposition::RetryAt(add(at, wait)),
                )
            }
            Err(DeliveryError::Retryable(e)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%group, channel = channel.as_str(), attempt = attempts, error = %e, "delivery failed; out of retries");
                (AttemptOutcome::Retryable, Some(e), Disposition::Failed)
            }
            Err(DeliveryError::Permanent(e)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%group, channel = channel.as_str(), attempt = attempts, error = %e, "delivery failed permanently");
                (AttemptOutcome::Permanent, Some(e), Disposition::Failed)
            }
        };
        let attempt = Attempt {
            at,
            channel,
            outcome,
            error,
        };
        self.record(&ids, &attempt, disposition).await
    }

    /// Records an attempt. When the channel took the message but the outbox cannot record
    /// that (its database restarting), recording is retried while the lease keeps the group
    /// this dispatcher's: giving up at once would let the group be claimed again and the
    /// message sent twice. Past the lease it gives up (delivery stays at least once).
    async fn record(
        &self,
        ids: &[NotificationId],
        attempt: &Attempt,
        disposition: Disposition,
    ) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.config.lease;
        let mut failures = 0u32;
        loop {
            match self.store.finish(ids, attempt, disposition).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if attempt.outcome == AttemptOutcome::Sent
                        && tokio::time::Instant::now() < deadline =>
                {
                    failures = failures.saturating_add(1);
                    let wait = self
                        .config
                        .retry
                        .backoff(failures, 1.0)
                        .min(deadline - tokio::time::Instant::now());
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "delivered, but the outbox cannot record it yet; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_exponential_with_full_jitter() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_attempts: 10,
        };
        assert_eq!(
            p.backoff(1, 0.999_999),
            Duration::from_secs(1).mul_f64(0.999_999)
        );
        assert_eq!(p.backoff(4, 0.5), Duration::from_secs(4));
        assert_eq!(p.backoff(30, 1.0), Duration::from_secs(60));
        assert_eq!(p.backoff(5, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(u32::MAX, 1.0), Duration::from_secs(60));
    }
}
