//! Delivery against real servers: aiosmtpd for email, an HTTP receiver for webhooks and the
//! SMS gateway. Missing aiosmtpd skips locally and fails under CI=true (testkit::unavailable).

mod support;

use std::sync::Arc;
use std::time::Duration;

use notifier::channel::signature;
use notifier::{
    AttemptOutcome, Dispatcher, MemoryOutbox, NotificationStatus, OutboxStore, Severity,
    SqliteOutbox, Step, SystemClock, Timestamp, plan,
};
use support::fixture::{WEBHOOK_SECRET, config, notice, unfold};
use support::{HttpReceiver, SmtpSink};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_bad_night_is_one_message_per_recipient_and_channel_with_the_right_words() {
    let Some(smtp) = testkit::unavailable(SmtpSink::start()) else {
        return;
    };
    let http = HttpReceiver::start().await;
    let runtime = config(smtp.port(), &http.url(""), "")
        .build()
        .expect("config builds");
    let store = MemoryOutbox::new();
    let now = Timestamp::now();
    // Three alerts for one patient within group_wait.
    for (i, rule) in ["spo2-low", "spo2-drop", "news2"].iter().enumerate() {
        let n = notice(&format!("al-{i}"), "pt-1", rule, Severity::High, now);
        let rows = plan(&n, &runtime.directory, &runtime.policy, Step::FIRST, now);
        store.enqueue(&rows).await.expect("enqueue");
    }
    assert_eq!(
        store.all().len(),
        15,
        "3 alerts x (ann: 3 contacts + patient: 2)"
    );

    let shutdown = CancellationToken::new();
    let dispatcher = Dispatcher::new(
        store.clone(),
        runtime.dispatch.clone(),
        Arc::new(SystemClock),
    );
    let task = tokio::spawn(dispatcher.run(shutdown.clone()));

    smtp.wait_for(2, WAIT).await;
    let requests = http.wait_for(3, WAIT).await;
    // Anything more would arrive within a few polls.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mails: Vec<String> = smtp.messages().iter().map(|m| unfold(m)).collect();
    let requests = if requests.len() == http.received().len() {
        requests
    } else {
        http.received()
    };
    assert_eq!(mails.len(), 2, "one email to the nurse, one to the patient");
    let hooks: Vec<_> = requests.iter().filter(|r| r.path == "/hook").collect();
    let sms: Vec<_> = requests.iter().filter(|r| r.path == "/sms").collect();
    assert_eq!(hooks.len(), 1, "one webhook call");
    assert_eq!(sms.len(), 2, "one text to the nurse, one to the patient");

    let nurse = mails
        .iter()
        .find(|m| m.contains("X-Envelope-To: ann@ward.test"))
        .expect("nurse email");
    assert!(
        nurse.contains("Subject: [RPM] HIGH: 3 open alert(s) for patient pt-1"),
        "{nurse}"
    );
    for rule in ["spo2-low", "spo2-drop", "news2"] {
        assert!(nurse.contains(&format!("HIGH {rule}")), "{rule} in {nurse}");
    }
    assert!(nurse.contains("SpO2: 88 %"), "readings in {nurse}");
    assert!(
        nurse.contains("limit 90, clears at 92"),
        "rule detail in {nurse}"
    );
    assert!(
        nurse.contains("https://console.rpm.test/console/patients/pt-1"),
        "console link in {nurse}"
    );
    assert_eq!(
        nurse.matches("https://console.rpm.test/ack?token=").count(),
        3
    );
    let token = nurse
        .split("ack?token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("ack token in the email");
    let claim = runtime
        .signer
        .verify(token, Timestamp::now())
        .expect("the emailed link verifies");
    assert_eq!(claim.recipient, "staff:ann");
    assert!(claim.alert.as_str().starts_with("al-"));
    assert!(nurse.contains("X-Envelope-From: alerts@rpm.test"));

    let patient = mails
        .iter()
        .find(|m| m.contains("X-Envelope-To: alex@home.test"))
        .expect("patient email");
    assert!(patient.contains("Hello Alex"));
    assert!(patient.contains("Your oxygen level is lower than usual."));
    assert_eq!(
        patient
            .matches("Your oxygen level is lower than usual.")
            .count(),
        1,
        "said once"
    );
    assert!(patient.contains("What to do now:"));
    assert!(patient.contains("Start your rescue pack"));
    let body = patient
        .split("\r\n\r\n")
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n");
    for jargon in ["88", "%", "SpO2", "spo2-low", "limit", "HIGH", "ack?token"] {
        assert!(
            !body.contains(jargon),
            "patient body holds {jargon:?}: {body}"
        );
    }

    let hook = hooks[0];
    assert_eq!(
        hook.headers.get("x-rpm-signature").map(String::as_str),
        Some(signature(WEBHOOK_SECRET.as_bytes(), &hook.body).as_str()),
        "webhook signed over its exact body"
    );
    let json: serde_json::Value = serde_json::from_slice(&hook.body).expect("webhook json");
    assert_eq!(json["patient"], "pt-1");
    assert_eq!(json["alerts"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["alerts"][0]["severity"], "high");

    let forms: Vec<String> = sms
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    let to_nurse = forms
        .iter()
        .find(|f| f.contains("To=%2B447700900111"))
        .expect("nurse sms");
    assert!(to_nurse.contains("From=%2B447700900000"));
    assert!(to_nurse.contains("Body=RPM+HIGH+pt-1"), "{to_nurse}");
    assert!(to_nurse.contains("%28%2B2+more%29"), "{to_nurse}");
    let to_patient = forms
        .iter()
        .find(|f| f.contains("To=%2B447700900222"))
        .expect("patient sms");
    assert!(!to_patient.contains("88"), "{to_patient}");
    assert!(
        sms.iter()
            .all(|r| r.headers.get("authorization").map(String::as_str)
                == Some("Basic QUMtdGVzdDpzbXMtc2VjcmV0")),
        "basic auth on every SMS"
    );

    assert!(
        store
            .all()
            .iter()
            .all(|n| n.status == NotificationStatus::Sent)
    );
    shutdown.cancel();
    task.await.expect("dispatcher ends");
}

#[tokio::test]
async fn no_notification_lost_or_doubled_while_smtp_is_down_for_a_while() {
    let port = testkit::free_port().expect("free port");
    // Is aiosmtpd there at all? Check before relying on it later.
    let Some(mut probe) = testkit::unavailable(SmtpSink::start()) else {
        return;
    };
    probe.stop();
    let http = HttpReceiver::start().await;
    let runtime = config(port, &http.url(""), "")
        .build()
        .expect("config builds");
    let store = MemoryOutbox::new();
    let now = Timestamp::now();
    let mut ids = Vec::new();
    for (i, pt) in ["pt-1", "pt-2"].iter().enumerate() {
        let mut n = notice(&format!("al-{i}"), pt, "spo2-low", Severity::High, now);
        n.audience = notifier::Audience::Nurse;
        let rows: Vec<_> = plan(&n, &runtime.directory, &runtime.policy, Step::FIRST, now)
            .into_iter()
            .filter(|r| r.channel == notifier::ChannelKind::Email)
            .collect();
        ids.extend(rows.iter().map(|r| r.id));
        store.enqueue(&rows).await.expect("enqueue");
    }
    assert_eq!(ids.len(), 2);

    let shutdown = CancellationToken::new();
    let dispatcher = Dispatcher::new(
        store.clone(),
        runtime.dispatch.clone(),
        Arc::new(SystemClock),
    );
    let task = tokio::spawn(dispatcher.run(shutdown.clone()));

    // Nothing listens: attempts fail as retryable and are recorded.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = store.attempts(ids[0]).await.expect("attempts");
        if a.len() >= 3 || tokio::time::Instant::now() > deadline {
            assert!(a.len() >= 3, "retried while down: {a:?}");
            assert!(a.iter().all(|a| a.outcome == AttemptOutcome::Retryable));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store
            .all()
            .iter()
            .all(|n| n.status == NotificationStatus::Pending)
    );

    let Some(smtp) = testkit::unavailable(SmtpSink::start_on(port)) else {
        return;
    };
    let mails = smtp.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2, "both delivered once the server is up");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "and not doubled");
    assert!(mails.iter().any(|m| m.contains("patient pt-1")));
    assert!(mails.iter().any(|m| m.contains("patient pt-2")));
    for id in &ids {
        let row = store.get(*id).await.expect("get").expect("row kept");
        assert_eq!(row.status, NotificationStatus::Sent);
        let attempts = store.attempts(*id).await.expect("attempts");
        assert_eq!(
            attempts.last().map(|a| a.outcome),
            Some(AttemptOutcome::Sent)
        );
        assert_eq!(
            attempts
                .iter()
                .filter(|a| a.outcome == AttemptOutcome::Sent)
                .count(),
            1
        );
    }
    shutdown.cancel();
    task.await.expect("dispatcher ends");
}

/// The one webhook row an emergency for the nurse on duty plans (alert `alert`, patient pt-1).
fn webhook_rows(runtime: &notifier::Runtime, alert: &str) -> Vec<notifier::NewNotification> {
    let now = Timestamp::now();
    let mut n = notice(alert, "pt-1", "spo2-low", Severity::Emergency, now);
    n.audience = notifier::Audience::Nurse;
    let rows: Vec<_> = plan(&n, &runtime.directory, &runtime.policy, Step::FIRST, now)
        .into_iter()
        .filter(|r| r.channel == notifier::ChannelKind::Webhook)
        .collect();
    assert_eq!(rows.len(), 1);
    rows
}

#[tokio::test]
async fn no_alert_lost_when_notifier_killed_mid_dispatch_resent_after_restart() {
    let http = HttpReceiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("outbox.sqlite");
    let runtime = config(1, &http.url(""), "").build().expect("config builds");
    let rows = webhook_rows(&runtime, "al-crash");
    let id = rows[0].id;

    http.hang(true);
    {
        let store = SqliteOutbox::open(&file).await.expect("open outbox");
        assert_eq!(store.enqueue(&rows).await.expect("enqueue"), 1);
        assert_eq!(
            store.enqueue(&rows).await.expect("enqueue again"),
            0,
            "idempotent"
        );
        let dispatcher = Dispatcher::new(
            store.clone(),
            runtime.dispatch.clone(),
            Arc::new(SystemClock),
        );
        let task = tokio::spawn(dispatcher.run(CancellationToken::new()));
        let got = http.wait_for(1, WAIT).await;
        assert_eq!(got.len(), 1, "the send is in flight");
        // Killed mid-send: no cleanup, no finish recorded.
        task.abort();
        let _ = task.await;
        let row = store.get(id).await.expect("get").expect("row");
        assert_eq!(row.status, NotificationStatus::Pending);
        assert!(store.attempts(id).await.expect("attempts").is_empty());
    }
    http.release();

    // A new notifier on the same file, as after a restart.
    let store = SqliteOutbox::open(&file).await.expect("reopen outbox");
    let shutdown = CancellationToken::new();
    let dispatcher = Dispatcher::new(
        store.clone(),
        runtime.dispatch.clone(),
        Arc::new(SystemClock),
    );
    let task = tokio::spawn(dispatcher.run(shutdown.clone()));
    let got = http.wait_for(2, WAIT).await;
    assert_eq!(
        got.len(),
        2,
        "resent once the dead dispatcher's lease ran out"
    );
    assert_eq!(
        got[0].headers.get("x-rpm-delivery"),
        got[1].headers.get("x-rpm-delivery"),
        "same delivery id so the receiver can deduplicate"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.get(id).await.expect("get").map(|r| r.status) != Some(NotificationStatus::Sent) {
        assert!(tokio::time::Instant::now() < deadline, "marked sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = store.attempts(id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Sent);
    assert_eq!(attempts[0].channel, notifier::ChannelKind::Webhook);
    shutdown.cancel();
    task.await.expect("dispatcher ends");
}

#[tokio::test]
async fn http_4xx_fails_permanently_and_is_surfaced_5xx_is_retried() {
    let http = HttpReceiver::start().await;
    let runtime = config(1, &http.url(""), "").build().expect("config builds");
    let store = SqliteOutbox::open(tempfile::tempdir().expect("dir").path().join("o.sqlite"))
        .await
        .expect("open");
    let now = Timestamp::now();
    let mut n = notice("al-4xx", "pt-1", "spo2-low", Severity::Emergency, now);
    n.audience = notifier::Audience::Nurse;
    let rows: Vec<_> = plan(&n, &runtime.directory, &runtime.policy, Step::FIRST, now)
        .into_iter()
        .filter(|r| r.channel == notifier::ChannelKind::Webhook)
        .collect();
    store.enqueue(&rows).await.expect("enqueue");
    let dispatcher = Dispatcher::new(
        store.clone(),
        runtime.dispatch.clone(),
        Arc::new(SystemClock),
    );

    http.set_status(503);
    dispatcher.tick().await.expect("tick");
    let row = store.get(rows[0].id).await.expect("get").expect("row");
    assert_eq!(row.status, NotificationStatus::Pending);
    assert_eq!(row.last_error.as_deref(), Some("webhook http 503"));

    http.set_status(400);
    tokio::time::sleep(Duration::from_millis(500)).await;
    dispatcher.tick().await.expect("tick");
    let failed = store.failed().await.expect("failed");
    assert_eq!(failed.len(), 1, "kept and listed, not dropped");
    assert_eq!(failed[0].last_error.as_deref(), Some("webhook http 400"));
    let outcomes: Vec<_> = store
        .attempts(rows[0].id)
        .await
        .expect("attempts")
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [AttemptOutcome::Retryable, AttemptOutcome::Permanent]
    );
    assert_eq!(http.received().len(), 2);
}

/// A [`MemoryOutbox`] whose database is away for a while: recording an attempt fails until
/// `back` is set.
#[derive(Clone)]
struct OutboxAway {
    inner: MemoryOutbox,
    back: Arc<std::sync::atomic::AtomicBool>,
}

impl OutboxStore for OutboxAway {
    async fn enqueue(
        &self,
        rows: &[notifier::NewNotification],
    ) -> Result<usize, notifier::StoreError> {
        self.inner.enqueue(rows).await
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        group_interval: Duration,
        lease: Duration,
        max_groups: usize,
    ) -> Result<Vec<Vec<notifier::Notification>>, notifier::StoreError> {
        self.inner
            .claim_due(now, group_interval, lease, max_groups)
            .await
    }

    async fn finish(
        &self,
        ids: &[notifier::NotificationId],
        attempt: &notifier::Attempt,
        disposition: notifier::Disposition,
    ) -> Result<(), notifier::StoreError> {
        if !self.back.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(notifier::StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        self.inner.finish(ids, attempt, disposition).await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, notifier::StoreError> {
        self.inner.next_due().await
    }

    async fn failed(&self) -> Result<Vec<notifier::Notification>, notifier::StoreError> {
        self.inner.failed().await
    }

    async fn get(
        &self,
        id: notifier::NotificationId,
    ) -> Result<Option<notifier::Notification>, notifier::StoreError> {
        self.inner.get(id).await
    }

    async fn attempts(
        &self,
        id: notifier::NotificationId,
    ) -> Result<Vec<notifier::Attempt>, notifier::StoreError> {
        self.inner.attempts(id).await
    }

    async fn last_step(
        &self,
        alert: &notifier::AlertId,
    ) -> Result<Option<(notifier::Step, Timestamp)>, notifier::StoreError> {
        self.inner.last_step(alert).await
    }

    async fn cancel_escalation(
        &self,
        alert: &notifier::AlertId,
        reason: notifier::CancelReason,
    ) -> Result<usize, notifier::StoreError> {
        self.inner.cancel_escalation(alert, reason).await
    }
}

#[tokio::test]
async fn a_message_is_not_sent_twice_when_the_outbox_cannot_record_it_for_a_moment() {
    let http = HttpReceiver::start().await;
    let runtime = config(1, &http.url(""), "").build().expect("config builds");
    let rows = webhook_rows(&runtime, "al-db-away");
    let id = rows[0].id;
    let store = OutboxAway {
        inner: MemoryOutbox::new(),
        back: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    store.enqueue(&rows).await.expect("enqueue");
    let shutdown = CancellationToken::new();
    let dispatcher = Dispatcher::new(
        store.clone(),
        runtime.dispatch.clone(),
        Arc::new(SystemClock),
    );
    let task = tokio::spawn(dispatcher.run(shutdown.clone()));
    // Sent, but the outbox cannot record it: its database is restarting.
    assert_eq!(http.wait_for(1, WAIT).await.len(), 1);
    tokio::time::sleep(runtime.dispatch.lease / 2).await;
    store.back.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.get(id).await.expect("get").map(|r| r.status) != Some(NotificationStatus::Sent) {
        assert!(tokio::time::Instant::now() < deadline, "marked sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the lease: nothing claims the group again.
    tokio::time::sleep(runtime.dispatch.lease).await;
    assert_eq!(http.received().len(), 1, "sent once");
    let attempts = store.attempts(id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Sent);
    shutdown.cancel();
    task.await.expect("dispatcher ends");
}

#[tokio::test]
async fn a_webhook_that_never_answers_times_out_and_retries_are_bounded_then_kept_as_failed() {
    let http = HttpReceiver::start().await;
    http.hang(true);
    let mut file = config(1, &http.url(""), "");
    if let Some(w) = file.webhook.as_mut() {
        w.timeout = Duration::from_millis(300);
    }
    file.dispatch.max_attempts = 2;
    let runtime = file.build().expect("config builds");
    let rows = webhook_rows(&runtime, "al-hangs");
    let id = rows[0].id;
    let store = MemoryOutbox::new();
    store.enqueue(&rows).await.expect("enqueue");
    let dispatcher = Dispatcher::new(
        store.clone(),
        runtime.dispatch.clone(),
        Arc::new(SystemClock),
    );

    // The receiver takes the request and never answers: the webhook's timeout ends the
    // attempt, long before the lease would.
    let started = tokio::time::Instant::now();
    tokio::time::timeout(WAIT, dispatcher.tick())
        .await
        .expect("the attempt ends at the webhook timeout, not never")
        .expect("tick");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ended by the 300 ms timeout: {:?}",
        started.elapsed()
    );
    let row = store.get(id).await.expect("get").expect("row");
    assert_eq!(row.status, NotificationStatus::Pending, "retried later");
    assert_eq!(row.last_error.as_deref(), Some("webhook timeout"));

    // The second attempt is the last one (max_attempts = 2): failed, kept and listed.
    tokio::time::sleep(runtime.dispatch.retry.cap).await;
    tokio::time::timeout(WAIT, dispatcher.tick())
        .await
        .expect("second attempt ends")
        .expect("tick");
    let failed = store.failed().await.expect("failed");
    assert_eq!(failed.len(), 1, "out of retries: kept and listed");
    assert_eq!(failed[0].row.id, id);
    assert_eq!(failed[0].last_error.as_deref(), Some("webhook timeout"));
    let attempts = store.attempts(id).await.expect("attempts");
    assert_eq!(
        attempts.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        [AttemptOutcome::Retryable, AttemptOutcome::Retryable]
    );
    assert!(
        attempts
            .iter()
            .all(|a| a.channel == notifier::ChannelKind::Webhook)
    );

    // And no third attempt.
    tokio::time::sleep(runtime.dispatch.retry.cap).await;
    assert_eq!(dispatcher.tick().await.expect("tick"), 0);
    assert_eq!(http.received().len(), 2, "two attempts in all");
    http.release();
}
