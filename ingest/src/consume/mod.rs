//! The MQTT consumer: the server's per-reading path, top to bottom.
//!
//! ```text
//! broker ──(shared subscription, QoS 1, manual acks)──► event-loop task ──► channel
//!   ──► batcher: decode envelope → gateway known? → per reading: units, ranges, clock,
//!       gateway↔device↔patient binding
//!   ──(one prepared batch)──► committer: insert_batch_tracked (one transaction: envelope
//!       sequence numbers, insert, dedup by id, rules engine on the NEW readings, alert rows)
//!       → dead letters for what failed → statuses (a live one hears the hub: rules engine)
//!       → PUBACK every message, in arrival order
//! ```
//!
//! **Pipeline:** the batcher validates batch N+1 while the committer commits batch N. Batches
//! are committed one at a time in the order they were collected and each message is
//! acknowledged after its batch's commit, so acknowledgements leave in arrival order and a
//! crash at any point leaves only unacknowledged messages, which the broker delivers again.
//!
//! **Rules** ([`Consumer::run_with`]): every new reading is evaluated by the rules engine
//! against the patient's threshold profile, from per-patient state held in memory
//! ([`alerting`]), and the alerts it raises, updates or resolves are committed in the same
//! transaction as the readings. If that transaction fails, the state it changed is thrown
//! away and rebuilt from the record, so no reading is counted twice. Time-driven rules
//! (missing data, silent gateway) run every `[rules] tick_every` on the same task.
//!
//! **A message is acknowledged only after what it carried is committed**: its readings in the
//! record, or its rejection in the dead-letter table. The session is persistent (fixed client
//! id, `clean_start = false`, a session expiry), so messages a crashed node had not
//! acknowledged are delivered again when it comes back; they deduplicate by reading id.
//!
//! **Group commit:** the batcher takes whatever has arrived, up to `batch_max` readings,
//! waiting at most `batch_linger` for more, so an idle system commits each message at once
//! and a busy one commits thousands of readings per transaction.
//!
//! **Back-pressure:** the broker should never have more than `max_inflight` unacknowledged
//! messages out to this node (MQTT 5 receive maximum); the event-loop task never waits on the
//! batcher (rumqttc must be polled to keep the connection) and never drops a message: what a
//! broker sends beyond the window waits in the channel, and the batcher reports it.
//!
//! **Bad input** never stops the consumer: every rejection is a dead letter with its
//! [`RejectReason`], counted in [`IngestStats`]. Database outages are retried with backoff,
//! without acknowledging, until the database is back.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vitals::{
    Channel, Envelope, GatewayId, GatewayState, GatewayStatus, Observed, Reading, RejectReason,
    topic,
};

use crate::record::{Committed, Record, RecordError, RuleVersion, SeqCheck};

pub mod alerting;
pub mod latency;

pub use alerting::{Rules, RulesError};

/// How the consumer behaves.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// Shared-subscription group.
    pub group: String,
    /// Most readings per transaction.
    pub batch_max: usize,
    /// Longest wait for a batch to fill.
    pub batch_linger: Duration,
    /// Most unacknowledged messages from the broker at once.
    pub max_inflight: u16,
    /// Readings measured further than this in the future are rejected.
    pub max_future: Duration,
    /// Longest pause between retries of a failing database.
    pub max_backoff: Duration,
}

/// Counters, registered once and read by `/metrics`, tests and benchmarks.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Readings messages fully processed (committed, about to be acknowledged).
    pub messages: AtomicU64,
    /// Readings newly stored.
    pub readings_stored: AtomicU64,
    /// Readings that were already in the record (re-sent, re-delivered).
    pub readings_duplicate: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Envelopes with an old sequence number (flagged, still stored).
    pub replays: AtomicU64,
    /// Status messages recorded.
    pub statuses: AtomicU64,
    /// Database errors retried.
    pub db_retries: AtomicU64,
    /// Alert events stored (raised, updated, resolved, repeat requested).
    pub alert_events: AtomicU64,
    /// Patients whose rules state was rebuilt from the record.
    pub rules_rebuilds: AtomicU64,
    /// Batches rolled back because another node had evaluated the same patient.
    pub rules_stale: AtomicU64,
    /// Runs of the time-driven rules that completed (what they raised stored).
    pub ticks: AtomicU64,
    /// Time the rules engine took per reading evaluated.
    pub rule_latency: latency::LatencyHistogram,
    /// Messages received from the broker (readings and statuses).
    pub received: AtomicU64,
    /// Messages acknowledged to the broker.
    pub acked: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
}

impl IngestStats {
    /// Rejections so far under `reason` (a whole message counts once, a reading once).
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Messages received and not yet acknowledged: the consumer's queue, from the broker's
    /// delivery to the acknowledgement after the commit.
    pub fn pending_messages(&self) -> u64 {
        let acked = self.acked.load(Ordering::Relaxed);
        self.received.load(Ordering::Relaxed).saturating_sub(acked)
    }

    /// All rejections so far.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The MQTT client's request channel closed: the event loop is gone.
    #[error("the MQTT client stopped")]
    ClientGone,
}

/// Everything the consumer works with.
pub struct Consumer {
    /// Settings.
    pub settings: ConsumerSettings,
    /// The patient record.
    pub record: Record,
    /// The MQTT client and event loop (manual acks, persistent session: see [`client_options`]).
    pub mqtt: (AsyncClient, EventLoop),
    /// Counters.
    pub stats: Arc<IngestStats>,
    /// Cancelled to stop: intake stops, the current batch is committed and acknowledged.
    pub shutdown: CancellationToken,
}

/// rumqttc options for an ingest node: manual acknowledgements, a persistent session under a
/// stable client id (unacknowledged messages come back after a crash), and a receive maximum
/// of `max_inflight`.
pub fn client_options(
    broker: &vitals::BrokerConfig,
    client_id: &str,
    max_inflight: u16,
) -> Result<rumqttc::v5::MqttOptions, mqtt::OptionsError> {
    let mut options = mqtt::client_options(broker, client_id, None, 16)?;
    options.set_manual_acks(true);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(7 * 24 * 3600));
    options.set_receive_maximum(Some(max_inflight));
    Ok(options)
}

/// A message from the broker, kept until its batch is committed so it can be acknowledged.
enum Incoming {
    Readings(Publish),
    Status(Publish),
}

impl Incoming {
    fn publish(&self) -> &Publish {
        match self {
            Incoming::Readings(p) | Incoming::Status(p) => p,
        }
    }
}

/// A batch validated by the batcher and waiting for the committer.
struct Prepared {
    /// Every message of the batch in arrival order, acknowledged in that order once all of
    /// it is committed.
    messages: Vec<Incoming>,
    /// The readings that passed validation, with their normalized values.
    good: Vec<(Reading, Vec<Observed>)>,
    /// Which message (index into `messages`) each good reading came from.
    origin: Vec<usize>,
    /// What failed validation.
    dead: Vec<Dead>,
    /// The envelopes' sequence numbers, in arrival order, checked in the batch transaction.
    seqs: Vec<(GatewayId, u64)>,
}

/// The pipeline depth: batches validated and waiting while one commits. One is enough to keep
/// the database busy; more would only hold more messages unacknowledged.
const PIPELINE: usize = 1;

impl Consumer {
    /// Runs until `shutdown` is cancelled, storing readings without evaluating rules (the
    /// ingest path alone: benchmarks and tests of it). `rpm ingest` uses [`Consumer::run_with`].
    pub async fn run(self) -> Result<(), ConsumeError> {
        self.run_inner(None).await
    }

    /// Runs until `shutdown` is cancelled, evaluating every new reading with `rules` and
    /// storing the alerts with the readings. Every registered patient is enrolled first.
    pub async fn run_with(self, rules: Rules) -> Result<(), ConsumeError> {
        self.run_inner(Some(rules)).await
    }

    /// Two stages joined by a channel of [`PIPELINE`] batches: this task (the batcher)
    /// collects and validates batch N+1 while the committer task commits batch N and then
    /// acknowledges its messages. Batches commit in the order they were collected and every
    /// acknowledgement follows its commit, so the order of acknowledgements is the order of
    /// arrival, and a crash anywhere leaves only unacknowledged messages, which come back.
    async fn run_inner(self, rules: Option<Rules>) -> Result<(), ConsumeError> {
        let Consumer {
            settings,
            record,
            mqtt: (client, events),
            stats,
            shutdown,
        } = self;
        let settings = Arc::new(settings);
        // Unbounded in type, bounded by the broker's in-flight window (the receive maximum):
        // the poller must neither wait on the batcher nor drop a message. Mosquitto 2.0 was
        // seen sending a shared subscriber far more than its receive maximum while a batch
        // was retried during a database outage; a dropped message would stay unacknowledged
        // until the next reconnection and stall the session, so the excess is queued here and
        // reported.
        let window = usize::from(settings.max_inflight) * 2 + 16;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut over_window = false;
        // The poller outlives `shutdown`: the committer's last acknowledgements travel through
        // the event loop, which is stopped (with a DISCONNECT) only once they are queued.
        let stop_polling = CancellationToken::new();
        let poller = tokio::spawn(poll_events(
            client.clone(),
            events,
            stats.clone(),
            settings.group.clone(),
            tx,
            stop_polling.clone(),
            settings.max_backoff,
        ));
        let (to_commit, committing) = mpsc::channel(PIPELINE);
        let committer = tokio::spawn(commit_batches(
            settings.clone(),
            record.clone(),
            stats.clone(),
            rules,
            client.clone(),
            committing,
            shutdown.clone(),
        ));
        let mut known = KnownGateways::default();
        loop {
            // Wait for the first message of a batch (or the end).
            let first = tokio::select! {
                () = shutdown.cancelled() => None,
                m = rx.recv() => m,
            };
            let Some(first) = first else { break };
            let deadline = tokio::time::Instant::now() + settings.batch_linger;
            let mut messages = Vec::new();
            let mut readings_in_batch = 0usize;
            let mut has_readings = false;
            let mut next = Some(first);
            while let Some(m) = next.take() {
                if let Incoming::Readings(p) = &m {
                    readings_in_batch += approx_readings(p);
                    has_readings = true;
                }
                messages.push(m);
                if readings_in_batch >= settings.batch_max {
                    break;
                }
                next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    // Only statuses so far: no reason to wait.
                    Err(_) if !has_readings => None,
                    Err(_) => tokio::select! {
                        () = tokio::time::sleep_until(deadline) => None,
                        m = rx.recv() => m,
                    },
                };
            }
            if rx.len() > window && !over_window {
                tracing::warn!(
                    queued = rx.len(),
                    max_inflight = settings.max_inflight,
                    "the broker sent more unacknowledged messages than the receive maximum"
                );
            }
            over_window = rx.len() > window;
            let prepared = prepare_batch(&settings, &record, &stats, &mut known, messages).await;
            if to_commit.send(prepared).await.is_err() {
                break; // the committer stopped: the MQTT client is gone
            }
        }
        // Intake has stopped; the committer commits and acknowledges what it was given.
        drop(to_commit);
        let result = match committer.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "the ingest committer task failed");
                Err(ConsumeError::ClientGone)
            }
        };
        stop_polling.cancel();
        if let Err(e) = poller.await {
            tracing::error!(error = %e, "the ingest event-loop task failed");
        }
        result
    }
}

/// The committer: commits each prepared batch (retrying while the database is away), then
/// acknowledges its messages in arrival order. Runs the time-driven rules between batches.
async fn commit_batches(
    settings: Arc<ConsumerSettings>,
    record: Record,
    stats: Arc<IngestStats>,
    mut rules: Option<Rules>,
    client: AsyncClient,
    mut batches: mpsc::Receiver<Prepared>,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    // Without rules the tick branch is disabled; the period only has to be valid.
    let tick_every = rules
        .as_ref()
        .map_or(Duration::from_secs(60), |r| r.tick_every);
    if let Some(rules) = rules.as_mut() {
        enrol_all(&settings, &record, &stats, rules, &shutdown).await;
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            biased;
            b = batches.recv() => b,
            _ = ticker.tick(), if rules.is_some() => {
                if let Some(rules) = rules.as_mut() {
                    tick(&settings, &record, &stats, rules).await;
                }
                continue;
            }
        };
        // `None`: the batcher stopped and everything it sent has been committed.
        let Some(batch) = batch else { return Ok(()) };
        let stopping = shutdown.is_cancelled();
        commit(
            &settings,
            &record,
            &stats,
            rules.as_mut(),
            batch,
            &client,
            stopping,
        )
        .await?;
    }
}

/// Readings in a message, estimated from its size, for batch sizing only.
fn approx_readings(p: &Publish) -> usize {
    (p.payload.len() / 400).max(1)
}

/// Queues the acknowledgement of `p` for the event loop. While stopping it never waits: with
/// the broker away and the request channel full, the message stays unacknowledged and the
/// broker sends it again to the next session (where its readings deduplicate by id).
async fn ack(client: &AsyncClient, p: &Publish, stopping: bool) -> Result<(), ConsumeError> {
    if !stopping {
        return client.ack(p).await.map_err(|_| ConsumeError::ClientGone);
    }
    // The event loop outlives the committer, so a failure here means a full channel.
    if client.try_ack(p).is_err() {
        tracing::debug!("the broker is away while stopping; a message stays unacknowledged");
    }
    Ok(())
}

/// The event-loop task: polls rumqttc, (re)subscribes on every connection and forwards
/// messages to the batcher. It never waits on anything but the broker: the channel has room
/// for every message the broker may have outstanding. When `stop` is cancelled it sends what
/// is queued (the last acknowledgements) and a DISCONNECT, for at most two seconds.
async fn poll_events(
    client: AsyncClient,
    mut events: EventLoop,
    stats: Arc<IngestStats>,
    group: String,
    tx: mpsc::UnboundedSender<Incoming>,
    stop: CancellationToken,
    max_backoff: Duration,
) {
    let mut failures = 0u32;
    let readings = topic::shared(&group, Channel::Readings);
    // Retained status messages are not delivered to shared subscriptions (MQTT 5, 4.8.2):
    // every node subscribes to them directly; recording them is idempotent.
    let statuses = topic::all_gateways(Channel::Status);
    let mut connected = false;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => {
                // The last acknowledgements, then a DISCONNECT (the session is kept).
                if connected
                    && !mqtt::disconnect_flushed(&client, &mut events, Duration::from_secs(2)).await
                {
                    tracing::debug!("ingest stopped without a clean DISCONNECT");
                }
                return;
            }
            e = events.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                failures = 0;
                connected = true;
                tracing::info!(
                    session_present = c.session_present,
                    "ingest connected to the broker"
                );
                let _ = client.try_subscribe(&readings, QoS::AtLeastOnce);
                let _ = client.try_subscribe(&statuses, QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = if p.topic.ends_with(b"/status") {
                    Incoming::Status(p)
                } else {
                    Incoming::Readings(p)
                };
                stats.received.fetch_add(1, Ordering::Relaxed);
                if tx.send(msg).is_err() {
                    return; // the batcher has stopped
                }
            }
            Ok(_) => {}
            Err(e) => {
                connected = false;
                tracing::warn!(error = %e, "ingest lost the broker connection");
                failures = failures.saturating_add(1);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(mqtt::backoff(failures, max_backoff)) => {}
                }
            }
        }
    }
}

/// Gateways known to the registry, so most messages cost no lookup.
#[derive(Default)]
struct KnownGateways(HashSet<GatewayId>);

/// A rejection waiting to be written to the dead-letter table.
struct Dead {
    topic: String,
    gateway: Option<GatewayId>,
    reason: RejectReason,
    error: String,
    payload: Vec<u8>,
}

/// Decodes and validates a batch (the batcher's half of the pipeline): envelopes, known
/// gateways, and per reading units, ranges, clock and binding. Writes nothing except what
/// lookups cache.
async fn prepare_batch(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    known: &mut KnownGateways,
    messages: Vec<Incoming>,
) -> Prepared {
    let now = OffsetDateTime::now_utc();
    let mut good: Vec<(Reading, Vec<Observed>)> = Vec::new();
    let mut origin: Vec<usize> = Vec::new();
    let mut dead: Vec<Dead> = Vec::new();
    let mut seqs: Vec<(GatewayId, u64)> = Vec::new();
    for (m, message) in messages.iter().enumerate() {
        let Incoming::Readings(p) = message else {
            continue;
        };
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let envelope = match Envelope::decode_from(&topic, &p.payload) {
            Ok(e) => e,
            Err(e) => {
                let gateway = vitals::Topic::parse(&topic).ok().map(|t| t.gateway);
                dead.push(Dead {
                    topic,
                    gateway,
                    reason: e.reason(),
                    error: e.to_string(),
                    payload: p.payload.to_vec(),
                });
                continue;
            }
        };
        let gw_known = known.0.contains(&envelope.gateway) || {
            let found = retry(settings, stats, || async {
                record.gateway(&envelope.gateway).await.map(|g| g.is_some())
            })
            .await;
            if found {
                known.0.insert(envelope.gateway.clone());
            }
            found
        };
        if !gw_known {
            dead.push(Dead {
                topic,
                gateway: Some(envelope.gateway.clone()),
                reason: RejectReason::UnknownGateway,
                error: format!("gateway `{}` is not registered", envelope.gateway),
                payload: p.payload.to_vec(),
            });
            continue;
        }
        if i64::try_from(envelope.seq).is_ok() {
            seqs.push((envelope.gateway.clone(), envelope.seq));
        } else {
            tracing::error!(
                gateway = %envelope.gateway,
                seq = envelope.seq,
                "could not track the envelope sequence: over i64::MAX"
            );
        }
        for reading in envelope.readings {
            match check_reading(settings, record, stats, &reading, now).await {
                Ok(values) => {
                    good.push((reading, values));
                    origin.push(m);
                }
                Err((reason, error)) => dead.push(Dead {
                    topic: topic.clone(),
                    gateway: Some(envelope.gateway.clone()),
                    reason,
                    error,
                    payload: serde_json::to_vec(&reading).unwrap_or_default(),
                }),
            }
        }
    }
    Prepared {
        messages,
        good,
        origin,
        dead,
        seqs,
    }
}

/// Commits one prepared batch (the committer's half): readings and sequence numbers in one
/// transaction, then dead letters and statuses, then the acknowledgements, in arrival order.
/// Database errors are retried until they clear; only a gone MQTT client ends it early.
async fn commit(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    mut rules: Option<&mut Rules>,
    batch: Prepared,
    client: &AsyncClient,
    stopping: bool,
) -> Result<(), ConsumeError> {
    let Prepared {
        messages,
        good,
        origin,
        mut dead,
        seqs,
    } = batch;
    if !good.is_empty() || !seqs.is_empty() {
        let checks = store(
            settings,
            record,
            stats,
            rules.as_deref_mut(),
            &good,
            &origin,
            &seqs,
            &mut dead,
        )
        .await;
        for ((gateway, seq), check) in seqs.iter().zip(checks) {
            if let SeqCheck::Replay { last } = check {
                stats.replays.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%gateway, seq, last, "replayed envelope (kept; readings dedup by id)");
            }
        }
    }
    for d in dead {
        retry(settings, stats, || {
            record.dead_letter(&d.topic, d.gateway.as_ref(), d.reason, &d.error, &d.payload)
        })
        .await;
        stats.reject(d.reason);
    }
    let mut readings_messages = 0u64;
    for m in &messages {
        match m {
            Incoming::Status(p) => {
                record_status(settings, record, stats, rules.as_deref_mut(), p).await;
            }
            Incoming::Readings(_) => readings_messages += 1,
        }
    }
    // Counted once everything the messages carried is committed (readings and dead letters).
    stats
        .messages
        .fetch_add(readings_messages, Ordering::Relaxed);
    for m in &messages {
        ack(client, m.publish(), stopping).await?;
        stats.acked.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Units, plausible ranges, clock sanity and the binding of gateway, device and patient.
async fn check_reading(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    r: &Reading,
    now: OffsetDateTime,
) -> Result<Vec<Observed>, (RejectReason, String)> {
    let values = r.normalized().map_err(|e| (e.reason(), e.to_string()))?;
    if r.measured_at > now + settings.max_future {
        return Err((
            RejectReason::ClockSanity,
            format!("measured {} in the future", r.measured_at - now),
        ));
    }
    if r.measured_at > r.received_at + settings.max_future {
        return Err((
            RejectReason::ClockSanity,
            "measured after it was received".into(),
        ));
    }
    let bound = retry(settings, stats, || {
        record.binding_for(&r.gateway, &r.device.id, r.user_index, r.measured_at)
    })
    .await;
    match bound {
        Some(p) if p == r.patient => Ok(values),
        Some(_) => Err((
            RejectReason::UnboundDevice,
            "the device is bound to another patient on this gateway".into(),
        )),
        None => Err((
            RejectReason::UnboundDevice,
            "the device is not bound to a patient on this gateway at that time".into(),
        )),
    }
}

/// Commits the good readings and the sequence numbers in one transaction; if the record
/// refuses the batch permanently, tracks the numbers alone, stores message by message and
/// dead-letters what still fails. Returns the sequence checks (empty if they could not be
/// stored).
#[allow(clippy::too_many_arguments)]
async fn store(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    mut rules: Option<&mut Rules>,
    good: &[(Reading, Vec<Observed>)],
    origin: &[usize],
    seqs: &[(GatewayId, u64)],
    dead: &mut Vec<Dead>,
) -> Vec<SeqCheck> {
    match insert(settings, record, stats, rules.as_deref_mut(), good, seqs).await {
        Ok(committed) => {
            if !good.is_empty() {
                count(
                    stats,
                    committed.outcome.new_count(),
                    committed.outcome.duplicates,
                );
            }
            committed.seqs
        }
        Err(e) => {
            tracing::error!(error = %e, "the record refused a batch; storing message by message");
            let checks = match retry_permanent(settings, stats, || {
                record.insert_batch_tracked(&[], seqs, None)
            })
            .await
            {
                Ok(c) => c.map(|c| c.seqs).unwrap_or_default(),
                Err(e) => {
                    tracing::error!(error = %e, "could not track the envelope sequences");
                    Vec::new()
                }
            };
            let mut start = 0;
            while start < good.len() {
                let end = start
                    + origin[start..]
                        .iter()
                        .take_while(|m| **m == origin[start])
                        .count();
                let part = &good[start..end];
                match insert(settings, record, stats, rules.as_deref_mut(), part, &[]).await {
                    Ok(c) => count(stats, c.outcome.new_count(), c.outcome.duplicates),
                    Err(e) => {
                        for (r, _) in part {
                            dead.push(Dead {
                                topic: vitals::Topic::new(r.gateway.clone(), Channel::Readings)
                                    .to_string(),
                                gateway: Some(r.gateway.clone()),
                                reason: RejectReason::StoreFailed,
                                error: e.to_string(),
                                payload: serde_json::to_vec(r).unwrap_or_default(),
                            });
                        }
                    }
                }
                start = end;
            }
            checks
        }
    }
}

/// Inserts one batch with its sequence numbers, with or without rules; transient failures
/// are retried.
async fn insert(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    rules: Option<&mut Rules>,
    batch: &[(Reading, Vec<Observed>)],
    seqs: &[(GatewayId, u64)],
) -> Result<Committed, RecordError> {
    match rules {
        None => {
            retry_permanent(settings, stats, || async {
                // Without `evaluate` nothing asks for a rollback.
                Ok(record
                    .insert_batch_tracked(batch, seqs, None)
                    .await?
                    .unwrap_or_default())
            })
            .await
        }
        Some(rules) => insert_evaluated(settings, record, stats, rules, batch, seqs).await,
    }
}

/// Rebuild what is stale → begin → insert → evaluate the new readings → alert rows →
/// commit. A rollback for stale state rebuilds and tries again; a failed transaction throws
/// the batch's patients' state away (it counted readings that are not in the record).
async fn insert_evaluated(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    rules: &mut Rules,
    batch: &[(Reading, Vec<Observed>)],
    seqs: &[(GatewayId, u64)],
) -> Result<Committed, RecordError> {
    let mut patients: Vec<&vitals::PatientKey> = batch.iter().map(|(r, _)| &r.patient).collect();
    patients.sort_unstable();
    patients.dedup();
    // The batch's arrival hears its hubs, whenever its readings were measured.
    let received = OffsetDateTime::now_utc();
    let mut failures = 0u32;
    let mut rollbacks = 0u32;
    loop {
        let prepared = prepare(record, stats, rules, &patients).await;
        let result = match prepared {
            Ok(()) => {
                let force = rollbacks >= alerting::MAX_ROLLBACKS;
                let mut evaluate = |new: &[&Reading], versions: &[RuleVersion]| {
                    rules.evaluate(new, versions, force, received, &stats.rule_latency)
                };
                record
                    .insert_batch_tracked(batch, seqs, Some(&mut evaluate))
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(Some(committed)) => {
                stats
                    .alert_events
                    .fetch_add(committed.written.len() as u64, Ordering::Relaxed);
                return Ok(committed);
            }
            Ok(None) => {
                rollbacks += 1;
                stats.rules_stale.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(rollbacks, "rules state was stale; rebuilding and retrying");
            }
            Err(e) => {
                rules.discard(patients.iter().copied());
                if !e.is_retryable() {
                    return Err(e);
                }
                failures = failures.saturating_add(1);
                stats.db_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, failures, "database unavailable; retrying");
                tokio::time::sleep(mqtt::backoff(failures, settings.max_backoff)).await;
            }
        }
    }
}
/// Rebuilds the state of the patients that need it. A patient whose readings cannot be read
/// back (a permanent error) is logged and left stale: their readings are still stored.
async fn prepare(
    record: &Record,
    stats: &IngestStats,
    rules: &mut Rules,
    patients: &[&vitals::PatientKey],
) -> Result<(), RecordError> {
    let now = OffsetDateTime::now_utc();
    for key in patients {
        if rules.is_current(key) {
            continue;
        }
        match rules.rebuild(record, key, now).await {
            Ok(_) => {
                stats.rules_rebuilds.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => tracing::error!(error = %e, "could not rebuild a patient's rules state"),
        }
    }
    Ok(())
}

/// Enrols every registered patient at start-up (retrying while the database is away).
async fn enrol_all(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    rules: &mut Rules,
    shutdown: &CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        match rules.enrol_all(record, OffsetDateTime::now_utc()).await {
            Ok(n) => {
                stats.rules_rebuilds.fetch_add(n as u64, Ordering::Relaxed);
                tracing::info!(patients = n, "rules state rebuilt from the record");
                return;
            }
            Err(e) if e.is_retryable() => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, "database unavailable; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(mqtt::backoff(failures, settings.max_backoff)) => {}
                }
            }
            Err(e) => {
                // Patients are then enrolled as their readings arrive.
                tracing::error!(error = %e, "could not rebuild rules state at start-up");
                return;
            }
        }
    }
}

/// Time-driven rules: rebuilds stale patients, ticks the engine, and stores what it raises
/// for patients whose state matches the record (another node may have newer readings: those
/// patients are rebuilt and checked again at the next tick).
async fn tick(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    rules: &mut Rules,
) {
    let stale = rules.stale();
    let stale: Vec<&vitals::PatientKey> = stale.iter().collect();
    if prepare(record, stats, rules, &stale).await.is_err() {
        return; // the database is away; the next tick tries again
    }
    let raised = rules.tick(OffsetDateTime::now_utc());
    store_timed(settings, record, stats, rules, raised).await;
    stats.ticks.fetch_add(1, Ordering::Relaxed);
}

/// Stores alert writes made outside a batch transaction (time-driven rules, a hub heard
/// from) for patients whose state matches the record; the others are rebuilt before they
/// speak again.
async fn store_timed(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    rules: &mut Rules,
    raised: Vec<(vitals::PatientKey, i64, crate::record::AlertWrite)>,
) {
    if raised.is_empty() {
        return;
    }
    let mut writes = Vec::with_capacity(raised.len());
    let mut outdated = Vec::new();
    for (key, version, write) in raised {
        match record.rule_version(&key).await {
            Ok(v) if v == version => writes.push(write),
            Ok(_) => outdated.push(key),
            Err(e) => {
                tracing::warn!(error = %e, "could not check a rules version; tick skipped");
                outdated.push(key);
            }
        }
    }
    rules.discard(outdated.iter());
    match retry_permanent(settings, stats, || record.write_alerts(&writes)).await {
        Ok(written) => {
            stats
                .alert_events
                .fetch_add(written.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store alerts outside a batch");
            let keys: Vec<vitals::PatientKey> = writes.iter().map(write_patient).cloned().collect();
            rules.discard(keys.iter());
        }
    }
}

fn write_patient(w: &crate::record::AlertWrite) -> &vitals::PatientKey {
    use crate::record::AlertWrite as W;
    match w {
        W::Open { patient, .. } | W::Resolve { patient, .. } | W::Repeat { patient, .. } => patient,
    }
}

fn count(stats: &IngestStats, new: usize, duplicates: usize) {
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .readings_stored
        .fetch_add(new as u64, Ordering::Relaxed);
    stats
        .readings_duplicate
        .fetch_add(duplicates as u64, Ordering::Relaxed);
}

/// Records a gateway's status. One the hub has just published (`online`, forwarded live: not
/// the retained copy a (re)subscription replays, which may be days old, nor a last will)
/// proves the hub is up at its receive time: the record's `last_seen_at` and the rules
/// engine's silent-gateway clock of every patient bound to it advance to that time.
async fn record_status(
    settings: &ConsumerSettings,
    record: &Record,
    stats: &IngestStats,
    rules: Option<&mut Rules>,
    p: &Publish,
) {
    let Ok(status) = serde_json::from_slice::<GatewayStatus>(&p.payload) else {
        stats.reject(RejectReason::Schema);
        return;
    };
    let topic_gw = vitals::Topic::parse(&String::from_utf8_lossy(&p.topic))
        .ok()
        .map(|t| t.gateway);
    if topic_gw.as_ref() != Some(&status.gateway) {
        stats.reject(RejectReason::GatewayMismatch);
        return;
    }
    // The broker clears RETAIN on a message it forwards as published (retain-as-published is
    // off) and sets it on a stored one it replays to a new subscription (MQTT 5, 3.3.1.3).
    let heard = (!p.retain && status.state == GatewayState::Online).then(OffsetDateTime::now_utc);
    match record.record_gateway_status_heard(&status, heard).await {
        Ok(known) => {
            stats.statuses.fetch_add(1, Ordering::Relaxed);
            if let (true, Some(at), Some(rules)) = (known, heard, rules) {
                let bound = retry_permanent(settings, stats, || {
                    record.patients_on_gateway(&status.gateway, at)
                })
                .await;
                match bound {
                    Ok(patients) => {
                        let writes = rules.gateway_heard(&patients, at);
                        store_timed(settings, record, stats, rules, writes).await;
                    }
                    // The next status, a minute later, tells them.
                    Err(e) => tracing::error!(error = %e, "could not find a hub's patients"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not record a gateway status"),
    }
}

/// Runs a database operation until it succeeds or fails permanently; transient failures
/// (connection lost, busy) are retried with capped, jittered backoff, never acknowledged.
async fn retry_permanent<T, F, Fut>(
    settings: &ConsumerSettings,
    stats: &IngestStats,
    mut op: F,
) -> Result<T, RecordError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RecordError>>,
{
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                failures = failures.saturating_add(1);
                stats.db_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, failures, "database unavailable; retrying");
                tokio::time::sleep(mqtt::backoff(failures, settings.max_backoff)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// [`retry_permanent`] for lookups whose permanent failure means "not found / no": logged,
/// and answered with the default (an unknown gateway, no binding), which dead-letters the
/// input rather than losing it.
async fn retry<T: Default, F, Fut>(settings: &ConsumerSettings, stats: &IngestStats, op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RecordError>>,
{
    match retry_permanent(settings, stats, op).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "database lookup failed permanently");
            T::default()
        }
    }
}
