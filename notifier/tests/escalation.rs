//! Escalation on tokio's paused clock: deadlines are met to the second without sleeping,
//! acknowledgements (console or signed link) and resolutions stop it, bad links are refused.

mod support;

use notifier::escalation::EscalationError;
use notifier::{
    AckError, AckSource, Acknowledgement, CancelReason, EscalationStep, Escalator, EscalatorHandle,
    MemoryOutbox, NoticeKind, NotificationStatus, OutboxStore, Recipient, Runtime, Severity, Step,
    Timestamp, TokioClock, plan,
};
use notifier::{Clock, PersonId};
use std::time::Duration;
use support::fixture::{config, notice};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MIN: Duration = Duration::from_secs(60);

struct Rig {
    runtime: Runtime,
    clock: TokioClock,
    store: MemoryOutbox,
    handle: EscalatorHandle,
    steps: mpsc::Receiver<EscalationStep>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    fn start() -> Rig {
        Rig::start_on(MemoryOutbox::new(), t0())
    }

    /// An escalator over `store` whose clock reads `now` (a restart: the outbox outlives it).
    fn start_on(store: MemoryOutbox, now: Timestamp) -> Rig {
        let runtime = config(1, "http://127.0.0.1:1", "")
            .build()
            .expect("config builds");
        let clock = TokioClock::anchored(now);
        let (tx, steps) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let (handle, task) = Escalator::new(
            store.clone(),
            runtime.directory.clone(),
            runtime.policy.clone(),
            runtime.escalation.clone(),
            clock,
        )
        .observe(tx)
        .spawn(shutdown.clone());
        Rig {
            runtime,
            clock,
            store,
            handle,
            steps,
            shutdown,
            task,
        }
    }

    /// Raises an alert the way ingest does: first notification planned, then tracked.
    async fn raise(&self, alert: &str, severity: Severity) -> notifier::AlertNotice {
        let n = notice(alert, "pt-1", "spo2-low", severity, self.clock.now());
        let rows = plan(
            &n,
            &self.runtime.directory,
            &self.runtime.policy,
            Step::FIRST,
            self.clock.now(),
        );
        self.store.enqueue(&rows).await.expect("enqueue");
        self.handle.track(n.clone()).await.expect("track");
        settle().await;
        n
    }

    fn steps(&mut self) -> Vec<EscalationStep> {
        let mut v = Vec::new();
        while let Ok(s) = self.steps.try_recv() {
            v.push(s);
        }
        v
    }

    fn rows_for(&self, person: &str) -> Vec<notifier::Notification> {
        let person = PersonId::new(person).expect("person id");
        self.store
            .all()
            .into_iter()
            .filter(
                |n| matches!(&n.row.recipient, Recipient::Staff { person: p, .. } if *p == person),
            )
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("escalator ends");
    }
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    settle().await;
}

fn t0() -> Timestamp {
    "2026-03-04T02:00:00Z".parse().expect("instant")
}

#[tokio::test(start_paused = true)]
async fn escalation_reaches_the_second_tier_on_time_when_nobody_acknowledges() {
    let mut rig = Rig::start();
    rig.raise("al-1", Severity::High).await;
    assert!(!rig.rows_for("ann").is_empty(), "tier 0 told at raise");

    advance(10 * MIN - Duration::from_secs(1)).await;
    assert!(rig.steps().is_empty(), "not before its time");
    assert!(rig.rows_for("bob").is_empty());

    advance(Duration::from_secs(1)).await;
    let steps = rig.steps();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].step, Step { tier: 1, round: 0 });
    assert_eq!(steps[0].at, t0() + 10 * MIN);
    let bob = rig.rows_for("bob");
    assert_eq!(bob.len(), 1, "tier 1 has one contact point");
    assert_eq!(bob[0].row.notice.alert.as_str(), "al-1");
    assert!(matches!(
        bob[0].row.recipient,
        Recipient::Staff { tier: 1, .. }
    ));
    assert_eq!(
        bob[0].row.not_before,
        t0() + 10 * MIN + rig.runtime.policy.group_wait
    );

    // `high` has no repeats: that was the last step.
    advance(600 * MIN).await;
    assert!(rig.steps().is_empty());
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn emergency_escalation_repeats_the_last_tier_a_bounded_number_of_times() {
    let mut rig = Rig::start();
    rig.raise("al-2", Severity::Emergency).await;
    for _ in 0..24 {
        advance(5 * MIN).await;
    }
    let steps = rig.steps();
    let at: Vec<Timestamp> = steps.iter().map(|s| s.at).collect();
    assert_eq!(at, [t0() + 5 * MIN, t0() + 10 * MIN, t0() + 15 * MIN]);
    let steps: Vec<Step> = steps.into_iter().map(|s| s.step).collect();
    assert_eq!(
        steps,
        [
            Step { tier: 1, round: 0 },
            Step { tier: 1, round: 1 },
            Step { tier: 1, round: 2 },
        ],
        "tier 1, then its two repeats, then stop"
    );
    assert_eq!(rig.rows_for("bob").len(), 3, "three distinct notifications");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn acknowledgement_by_signed_link_stops_escalation_and_records_who_and_when() {
    let mut rig = Rig::start();
    rig.raise("al-3", Severity::Emergency).await;
    advance(5 * MIN).await;
    assert_eq!(rig.steps().len(), 1, "tier 1 told");

    // Bob follows the link in the message he was sent.
    let bob = rig.rows_for("bob");
    let rendered = rig
        .runtime
        .dispatch
        .templates
        .render(&bob, rig.clock.now())
        .expect("rendered");
    assert!(rendered.text.contains("ESCALATED (tier 1)"));
    let token = rendered
        .text
        .split("ack?token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("ack link in the message");

    advance(MIN).await;
    let ack = rig
        .handle
        .acknowledge_link(&rig.runtime.signer, token, rig.clock.now())
        .await
        .expect("link accepted");
    assert_eq!(ack.alert.as_str(), "al-3");
    assert_eq!(
        ack.by,
        AckSource::Link {
            recipient: "staff:bob".into()
        }
    );
    assert_eq!(ack.at, t0() + 6 * MIN);

    advance(120 * MIN).await;
    assert!(rig.steps().is_empty(), "no step after the acknowledgement");
    assert_eq!(rig.rows_for("bob").len(), 1);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn acknowledgement_from_the_console_or_resolution_stops_escalation() {
    let mut rig = Rig::start();
    rig.raise("al-4", Severity::Emergency).await;
    let n5 = rig.raise("al-5", Severity::High).await;
    advance(2 * MIN).await;
    let stopped = rig
        .handle
        .acknowledge(Acknowledgement {
            alert: "al-4".parse().expect("id"),
            by: AckSource::Console {
                user: "nurse.ann".into(),
            },
            at: rig.clock.now(),
        })
        .await
        .expect("ack");
    assert!(stopped);
    let mut resolved = n5.clone();
    resolved.kind = NoticeKind::Resolved;
    resolved.at = rig.clock.now();
    rig.handle.track(resolved).await.expect("track");
    advance(600 * MIN).await;
    assert!(rig.steps().is_empty());
    assert!(rig.rows_for("bob").is_empty(), "tier 1 never bothered");
    // A second acknowledgement changes nothing.
    let again = rig
        .handle
        .acknowledge(Acknowledgement {
            alert: "al-4".parse().expect("id"),
            by: AckSource::Api {
                user: "ward-system".into(),
            },
            at: rig.clock.now(),
        })
        .await
        .expect("ack");
    assert!(!again);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_tampered_or_expired_link_is_refused_and_escalation_goes_on() {
    let mut rig = Rig::start();
    rig.raise("al-6", Severity::Emergency).await;
    let now = rig.clock.now();
    let ann = rig.rows_for("ann");
    let url = rig.runtime.dispatch.templates.ack_url(
        &ann[0].row.notice.alert,
        &ann[0].row.recipient,
        now,
    );
    let token = url.split("token=").nth(1).expect("token").to_owned();

    // One character of the signature changed.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let err = rig
        .handle
        .acknowledge_link(&rig.runtime.signer, &tampered, now)
        .await
        .expect_err("tampered link refused");
    assert!(
        matches!(err, EscalationError::Link(AckError::BadSignature)),
        "{err:?}"
    );

    // Another alert's id spliced into the payload.
    let (_, sig) = token.split_once('.').expect("two parts");
    let other = rig.runtime.signer.sign(
        &"al-other".parse().expect("id"),
        "staff:ann",
        now + 60 * MIN,
    );
    let (other_payload, _) = other.split_once('.').expect("two parts");
    let err = rig
        .handle
        .acknowledge_link(&rig.runtime.signer, &format!("{other_payload}.{sig}"), now)
        .await
        .expect_err("spliced link refused");
    assert!(matches!(err, EscalationError::Link(AckError::BadSignature)));

    // Past the one-hour lifetime.
    let err = rig
        .handle
        .acknowledge_link(&rig.runtime.signer, &token, now + 61 * MIN)
        .await
        .expect_err("expired link refused");
    assert!(matches!(err, EscalationError::Link(AckError::Expired)));

    advance(5 * MIN).await;
    assert_eq!(rig.steps().len(), 1, "escalation went on");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn escalation_resumes_after_a_restart_from_the_step_reached_on_its_original_time() {
    // Emergency: tier 1 after 5 minutes, then two repeats 5 minutes apart, then stop.
    let mut first = Rig::start();
    let raised = first.raise("al-7", Severity::Emergency).await;
    advance(5 * MIN).await;
    advance(2 * MIN).await;
    let mut steps = first.steps();
    let store = first.store.clone();
    first.stop().await;

    // Restarted twice, each time handed the open alert as ingest hands it over: a raise at
    // its last change.
    let mut second = Rig::start_on(store.clone(), t0() + 7 * MIN);
    second.handle.resume(raised.clone()).await.expect("resume");
    settle().await;
    advance(3 * MIN).await;
    advance(MIN).await;
    steps.extend(second.steps());
    second.stop().await;

    let mut third = Rig::start_on(store.clone(), t0() + 11 * MIN);
    third.handle.resume(raised).await.expect("resume");
    settle().await;
    advance(4 * MIN).await;
    for _ in 0..12 {
        advance(5 * MIN).await;
    }
    steps.extend(third.steps());

    let made: Vec<(Step, Timestamp)> = steps.iter().map(|s| (s.step, s.at)).collect();
    assert_eq!(
        made,
        [
            (Step { tier: 1, round: 0 }, t0() + 5 * MIN),
            (Step { tier: 1, round: 1 }, t0() + 10 * MIN),
            (Step { tier: 1, round: 2 }, t0() + 15 * MIN),
        ],
        "each step once, when it would have been made without the restarts"
    );
    let bob: Vec<Step> = third.rows_for("bob").iter().map(|n| n.row.step).collect();
    assert_eq!(
        bob,
        [
            Step { tier: 1, round: 0 },
            Step { tier: 1, round: 1 },
            Step { tier: 1, round: 2 },
        ]
    );
    assert_eq!(
        store
            .last_step(&"al-7".parse().expect("id"))
            .await
            .expect("last step"),
        Some((Step { tier: 1, round: 2 }, t0() + 15 * MIN))
    );
    third.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_escalation_waiting_in_the_outbox_is_cancelled_not_sent_once_acknowledged_or_resolved() {
    let mut rig = Rig::start();
    rig.raise("al-8", Severity::High).await;
    let n9 = rig.raise("al-9", Severity::High).await;
    // Tier 1 is told at 10 minutes; its rows wait out group_wait (300 ms) in the outbox.
    advance(10 * MIN).await;
    assert_eq!(rig.steps().len(), 2);
    let waiting = rig.rows_for("bob");
    assert_eq!(waiting.len(), 2);
    assert!(
        waiting
            .iter()
            .all(|n| n.status == NotificationStatus::Pending && n.row.step.is_escalation())
    );

    let stopped = rig
        .handle
        .acknowledge(Acknowledgement {
            alert: "al-8".parse().expect("id"),
            by: AckSource::Console {
                user: "nurse.ann".into(),
            },
            at: rig.clock.now(),
        })
        .await
        .expect("ack");
    assert!(stopped);
    // A resolution is planned and enqueued by the caller (ingest), then tracked.
    let mut resolved = n9;
    resolved.kind = NoticeKind::Resolved;
    resolved.at = rig.clock.now();
    let resolution = plan(
        &resolved,
        &rig.runtime.directory,
        &rig.runtime.policy,
        Step::FIRST,
        rig.clock.now(),
    );
    rig.store.enqueue(&resolution).await.expect("enqueue");
    rig.handle.track(resolved).await.expect("track");
    settle().await;

    let bob = rig.rows_for("bob");
    let mut why: Vec<(&str, NotificationStatus, Option<&str>)> = bob
        .iter()
        .map(|n| {
            (
                n.row.notice.alert.as_str(),
                n.status,
                n.last_error.as_deref(),
            )
        })
        .collect();
    why.sort_by_key(|(alert, _, _)| *alert);
    assert_eq!(
        why,
        [
            (
                "al-8",
                NotificationStatus::Cancelled,
                Some(CancelReason::Acknowledged.as_str())
            ),
            (
                "al-9",
                NotificationStatus::Cancelled,
                Some(CancelReason::Resolved.as_str())
            ),
        ],
        "kept, with the reason, not deleted"
    );
    // First notifications stay: the raises and the resolution are still Ann's to receive.
    let ann = rig.rows_for("ann");
    assert!(
        ann.iter().all(|n| n.status == NotificationStatus::Pending),
        "{ann:?}"
    );
    assert!(
        ann.iter()
            .any(|n| n.row.notice.kind == NoticeKind::Resolved)
    );
    // Nothing of Bob's is ever claimed for sending.
    let later = rig.clock.now() + 60 * MIN;
    let claimed = rig
        .store
        .claim_due(later, Duration::ZERO, MIN, 100)
        .await
        .expect("claim");
    assert!(!claimed.is_empty());
    assert!(
        claimed
            .iter()
            .flatten()
            .all(|n| !n.row.step.is_escalation()),
        "{claimed:?}"
    );
    rig.stop().await;
}
