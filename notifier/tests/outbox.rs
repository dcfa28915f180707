//! The outbox contract, run against both stores: grouping (group_wait gathers, group_interval
//! spaces), leases that run out after a crash, idempotent enqueue, failures kept.

mod support;

use std::time::Duration;

use notifier::{
    Attempt, AttemptOutcome, CancelReason, ChannelKind, Disposition, MemoryOutbox,
    NotificationStatus, OutboxStore, Severity, SqliteOutbox, Step, Timestamp, plan,
};
use support::fixture::{config, notice};

const S: Duration = Duration::from_secs(1);

fn t(s: u64) -> Timestamp {
    "2026-03-04T02:00:00Z"
        .parse::<Timestamp>()
        .expect("instant")
        + Duration::from_secs(s)
}

fn attempt(at: Timestamp, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        at,
        channel: ChannelKind::Email,
        outcome,
        error: (outcome != AttemptOutcome::Sent).then(|| "smtp 451".to_owned()),
    }
}

/// Ann's email rows for alert `id` raised at `at`.
fn rows(id: &str, at: Timestamp) -> Vec<notifier::NewNotification> {
    let runtime = config(1, "http://127.0.0.1:1", "").build().expect("config");
    let mut n = notice(id, "pt-1", "spo2-low", Severity::High, at);
    n.audience = notifier::Audience::Nurse;
    plan(&n, &runtime.directory, &runtime.policy, Step::FIRST, at)
        .into_iter()
        .filter(|r| r.channel == ChannelKind::Email)
        .collect()
}

async fn contract<S: OutboxStore>(store: S) {
    let interval = 60 * S;
    let lease = 10 * S;
    // group_wait is 300 ms: al-1 due at t(0)+300ms; al-2 arrives later, not yet due itself.
    let a = rows("al-1", t(0));
    let b = rows("al-2", t(0) + Duration::from_millis(200));
    assert_eq!(store.enqueue(&a).await.expect("enqueue"), 1);
    assert_eq!(
        store.enqueue(&a).await.expect("enqueue"),
        0,
        "same id: ignored"
    );
    store.enqueue(&b).await.expect("enqueue");

    assert!(
        store
            .claim_due(t(0), interval, lease, 10)
            .await
            .expect("claim")
            .is_empty(),
        "group_wait"
    );
    let claimed = store
        .claim_due(t(1), interval, lease, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one group");
    assert_eq!(claimed[0].len(), 2, "al-2 gathered into al-1's group");

    // Leased: nobody else gets it until the lease runs out (a dead dispatcher's rows return).
    assert!(
        store
            .claim_due(t(2), interval, lease, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_due(t(12), interval, lease, 10)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1, "lease ran out: claimable again");

    let ids: Vec<_> = again[0].iter().map(|n| n.row.id).collect();
    store
        .finish(
            &ids,
            &attempt(t(12), AttemptOutcome::Retryable),
            Disposition::RetryAt(t(14)),
        )
        .await
        .expect("finish");
    assert!(
        store
            .claim_due(t(13), interval, lease, 10)
            .await
            .expect("claim")
            .is_empty(),
        "backoff"
    );
    assert_eq!(store.next_due().await.expect("next"), Some(t(14)));
    let third = store
        .claim_due(t(14), interval, lease, 10)
        .await
        .expect("claim");
    store
        .finish(
            &ids,
            &attempt(t(15), AttemptOutcome::Sent),
            Disposition::Sent,
        )
        .await
        .expect("finish");
    assert_eq!(third[0].len(), 2);
    for id in &ids {
        let row = store.get(*id).await.expect("get").expect("row");
        assert_eq!(row.status, NotificationStatus::Sent);
        assert_eq!(row.attempts, 2);
        let outcomes: Vec<_> = store
            .attempts(*id)
            .await
            .expect("attempts")
            .iter()
            .map(|a| a.outcome)
            .collect();
        assert_eq!(outcomes, [AttemptOutcome::Retryable, AttemptOutcome::Sent]);
    }

    // A new alert for the same nurse and patient waits out group_interval after the send.
    let c = rows("al-3", t(20));
    store.enqueue(&c).await.expect("enqueue");
    assert!(
        store
            .claim_due(t(74), interval, lease, 10)
            .await
            .expect("claim")
            .is_empty(),
        "group_interval"
    );
    let later = store
        .claim_due(t(75), interval, lease, 10)
        .await
        .expect("claim");
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].len(), 1, "sent rows are not sent again");

    // Permanent failure: kept and listed.
    store
        .finish(
            &[c[0].id],
            &attempt(t(76), AttemptOutcome::Permanent),
            Disposition::Failed,
        )
        .await
        .expect("finish");
    let failed = store.failed().await.expect("failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].row.id, c[0].id);
    assert_eq!(failed[0].last_error.as_deref(), Some("smtp 451"));
    assert!(
        store
            .claim_due(t(1000), interval, lease, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(store.next_due().await.expect("next"), None);
}

/// Ann's rows for alert `id` at step `step`, planned at `at`.
fn step_rows(id: &str, at: Timestamp, step: Step) -> Vec<notifier::NewNotification> {
    let runtime = config(1, "http://127.0.0.1:1", "").build().expect("config");
    let mut n = notice(id, "pt-1", "spo2-low", Severity::High, t(0));
    n.audience = notifier::Audience::Nurse;
    plan(&n, &runtime.directory, &runtime.policy, step, at)
        .into_iter()
        .filter(|r| r.channel == ChannelKind::Email)
        .collect()
}

/// Cancelling an alert's escalation: pending escalation rows (leased too) become cancelled
/// with the reason and are never claimed; first notifications and other alerts are left
/// alone; an attempt already in flight that does not deliver cannot bring the row back. The
/// furthest step of an alert is read back from its rows.
async fn cancel_contract<S: OutboxStore>(store: S) {
    let interval = Duration::ZERO;
    let lease = 10 * S;
    let alert: notifier::AlertId = "al-c".parse().expect("id");
    let first = step_rows("al-c", t(0), Step::FIRST);
    let tier1 = step_rows("al-c", t(600), Step { tier: 1, round: 0 });
    let repeat = step_rows("al-c", t(1200), Step { tier: 1, round: 1 });
    let other = step_rows("al-d", t(600), Step { tier: 1, round: 0 });
    assert_eq!(store.last_step(&alert).await.expect("last"), None);
    for rows in [&first, &tier1, &other] {
        store.enqueue(rows).await.expect("enqueue");
    }
    assert_eq!(
        store.last_step(&alert).await.expect("last"),
        Some((Step { tier: 1, round: 0 }, t(600)))
    );
    // The tier-1 row's group is claimed (leased): an attempt is in flight.
    let claimed = store
        .claim_due(t(700), interval, lease, 10)
        .await
        .expect("claim");
    assert!(claimed.iter().flatten().any(|n| n.row.id == tier1[0].id));
    store.enqueue(&repeat).await.expect("enqueue");
    assert_eq!(
        store.last_step(&alert).await.expect("last"),
        Some((Step { tier: 1, round: 1 }, t(1200)))
    );

    let n = store
        .cancel_escalation(&alert, CancelReason::Acknowledged)
        .await
        .expect("cancel");
    assert_eq!(n, 2, "the leased tier-1 row and the waiting repeat");
    for id in [tier1[0].id, repeat[0].id] {
        let row = store.get(id).await.expect("get").expect("kept");
        assert_eq!(row.status, NotificationStatus::Cancelled);
        assert_eq!(
            row.last_error.as_deref(),
            Some("cancelled: alert acknowledged")
        );
    }
    // The attempt in flight fails and would be retried: it stays cancelled.
    store
        .finish(
            &[tier1[0].id],
            &attempt(t(701), AttemptOutcome::Retryable),
            Disposition::RetryAt(t(702)),
        )
        .await
        .expect("finish");
    let row = store.get(tier1[0].id).await.expect("get").expect("kept");
    assert_eq!(row.status, NotificationStatus::Cancelled);
    assert_eq!(
        row.last_error.as_deref(),
        Some("cancelled: alert acknowledged")
    );
    assert_eq!(
        store.attempts(tier1[0].id).await.expect("attempts").len(),
        1
    );

    let first_row = store.get(first[0].id).await.expect("get").expect("kept");
    assert_ne!(first_row.status, NotificationStatus::Cancelled);
    let other_row = store.get(other[0].id).await.expect("get").expect("kept");
    assert_ne!(other_row.status, NotificationStatus::Cancelled);
    let later = store
        .claim_due(t(5000), interval, lease, 10)
        .await
        .expect("claim");
    assert!(
        later
            .iter()
            .flatten()
            .all(|n| n.row.notice.alert != alert || !n.row.step.is_escalation()),
        "{later:?}"
    );
    assert_eq!(
        store
            .cancel_escalation(&alert, CancelReason::Resolved)
            .await
            .expect("cancel"),
        0,
        "nothing left to cancel"
    );
}

#[tokio::test]
async fn memory_outbox_cancels_an_acknowledged_alerts_escalation() {
    cancel_contract(MemoryOutbox::new()).await;
}

#[tokio::test]
async fn sqlite_outbox_cancels_an_acknowledged_alerts_escalation() {
    let dir = tempfile::tempdir().expect("dir");
    cancel_contract(
        SqliteOutbox::open(dir.path().join("outbox.sqlite"))
            .await
            .expect("open"),
    )
    .await;
}

#[tokio::test]
async fn memory_outbox_keeps_the_contract() {
    contract(MemoryOutbox::new()).await;
}

#[tokio::test]
async fn sqlite_outbox_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("dir");
    contract(
        SqliteOutbox::open(dir.path().join("outbox.sqlite"))
            .await
            .expect("open"),
    )
    .await;
}

#[tokio::test]
async fn sqlite_outbox_rows_enqueued_in_a_rolled_back_transaction_are_not_there() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteOutbox::open(dir.path().join("o.sqlite"))
        .await
        .expect("open");
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.path().join("o.sqlite").display()))
            .await
            .expect("second pool, as ingest's");
    let a = rows("al-1", t(0));
    let b = rows("al-2", t(0));
    let mut tx = pool.begin().await.expect("begin");
    SqliteOutbox::enqueue_in(&mut tx, &a)
        .await
        .expect("enqueue in tx");
    tx.rollback().await.expect("rollback");
    let mut tx = pool.begin().await.expect("begin");
    SqliteOutbox::enqueue_in(&mut tx, &b)
        .await
        .expect("enqueue in tx");
    tx.commit().await.expect("commit");
    assert!(
        store.get(a[0].id).await.expect("get").is_none(),
        "rolled back with the alert"
    );
    assert!(
        store.get(b[0].id).await.expect("get").is_some(),
        "committed with the alert"
    );
}
