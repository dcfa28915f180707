//! The outbox contract, run against both stores: grouping (group_wait gathers, group_interval
//! spaces), leases that run out after a crash, idempotent enqueue, failures kept.

mod support;

use std::time::Duration;

use notifier::{
    Attempt, AttemptOutcome, ChannelKind, Disposition, MemoryOutbox, NotificationStatus,
    OutboxStore, Severity, SqliteOutbox, Step, Timestamp, plan,
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
