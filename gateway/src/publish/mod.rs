//! The MQTT 5 forwarder: drains the durable queue to the broker, one envelope per message,
//! and removes readings from the queue only when the broker's PUBACK for their message
//! arrived.
//!
//! One task owns the rumqttc event loop and decides what to publish. It never awaits a
//! publish (rumqttc issue #1025: a client that awaits a publish while nobody polls the event
//! loop freezes); it submits with `try_publish` into a request channel sized above the
//! in-flight limit, so a submission never blocks. Because that one task is the only
//! submitter, the order of rumqttc's `Outgoing::Publish(pkid)` events is the order of
//! submission, which is how a PUBACK's packet id is traced back to the queue rows it carries.
//!
//! The connection is a clean session. When it drops, rumqttc discards what it had in flight,
//! and so does the forwarder: everything not yet acknowledged is still in the queue and is
//! published again after the reconnect (at-least-once; the server deduplicates by reading
//! id). Reconnects back off exponentially with full jitter.
//!
//! After a reconnect the queue is drained on two lanes: the backlog (readings queued before
//! the link came back, oldest first) and live readings (queued since), alternating, so a week
//! of backlog never delays today's alarming reading by more than one batch.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vitals::{
    Channel, DeviceStatus, Envelope, GatewayConfig, GatewayId, GatewayState, GatewayStatus,
    QueueStatus, Topic,
};

/// Options for the forwarder's client: [`mqtt::client_options`], re-exported here.
pub use mqtt::{OptionsError, client_options as mqtt_options};

use crate::config::ForwardConfig;
use crate::queue::{Queue, QueueError};

/// How long the ids of forwarded readings a device could send again are remembered: longer
/// than a device keeps its records, so a record sent again is recognised and not forwarded.
/// (One the hub has forgotten would be forwarded again and dropped by the server by its id.)
pub const FORWARDED_RETENTION: time::Duration = time::Duration::days(400);

/// How often ids past [`FORWARDED_RETENTION`] are forgotten (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What the forwarder needs to know.
#[derive(Clone, Debug)]
pub struct ForwarderSettings {
    /// This gateway.
    pub gateway: GatewayId,
    /// Batching and in-flight limits.
    pub forward: ForwardConfig,
    /// How often the retained status is refreshed while connected.
    pub status_interval: Duration,
    /// Below this much free disk the status says `disk_low`.
    pub disk_low_bytes: u64,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Look at the queue at least this often even without a wake-up (readings pushed by
    /// another process, or a missed notification).
    pub poll_interval: Duration,
}

/// Counters a caller (status page, tests, benchmarks) can read at any time.
#[derive(Debug, Default)]
pub struct ForwarderStats {
    /// Envelopes handed to the MQTT client.
    pub messages_sent: AtomicU64,
    /// Readings acknowledged by the broker and removed from the queue.
    pub readings_acked: AtomicU64,
    /// PUBACKs with an error reason (e.g. not authorised): the readings stay queued.
    pub messages_refused: AtomicU64,
    /// Connections established.
    pub connects: AtomicU64,
    /// Config messages rejected as invalid.
    pub configs_rejected: AtomicU64,
}

/// Why the forwarder stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// The queue failed (disk, corruption): the hub needs attention.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What the device layer shares for the status message.
pub type DeviceStatuses = watch::Receiver<Vec<DeviceStatus>>;

/// A message submitted to rumqttc whose PUBACK we wait for.
#[derive(Debug)]
enum Pending {
    Readings { seqs: Vec<u64>, lane: Lane },
    Status,
}

/// Which part of the queue a batch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Backlog,
    Live,
}

struct State {
    /// Submitted, not yet given a packet id by rumqttc (in submission order).
    submitted: VecDeque<Pending>,
    /// Given a packet id, waiting for the PUBACK.
    awaiting: HashMap<u16, Pending>,
    /// Highest queue seq submitted on each lane during this connection.
    backlog_cursor: u64,
    live_cursor: u64,
    /// Queue seqs at or below this were queued before the connection came up.
    backlog_end: u64,
    next_lane: Lane,
    connected: bool,
    linger_until: Option<Instant>,
    /// After a refused message: submit nothing until then.
    paused_until: Option<Instant>,
    /// Refusals in a row, for the backoff.
    refusals: u32,
}

impl State {
    fn new() -> Self {
        State {
            submitted: VecDeque::new(),
            awaiting: HashMap::new(),
            backlog_cursor: 0,
            live_cursor: 0,
            backlog_end: 0,
            next_lane: Lane::Live,
            connected: false,
            linger_until: None,
            paused_until: None,
            refusals: 0,
        }
    }

    fn in_flight(&self) -> usize {
        self.submitted.len() + self.awaiting.len()
    }

    /// The connection is gone: rumqttc dropped its in-flight messages, so do we; the queue
    /// still holds every unacknowledged reading.
    fn disconnected(&mut self) {
        self.connected = false;
        self.submitted.clear();
        self.awaiting.clear();
        self.linger_until = None;
    }
}

/// Everything the forwarder task works with.
pub struct Forwarder {
    /// Settings.
    pub settings: ForwarderSettings,
    /// The durable queue it drains.
    pub queue: Queue,
    /// The MQTT client and its event loop (from [`mqtt_options`]); the forwarder owns both.
    pub mqtt: (AsyncClient, EventLoop),
    /// Notified by whoever pushes to the queue.
    pub wake: Arc<Notify>,
    /// Per-device status from the device layer, for the status message.
    pub devices: DeviceStatuses,
    /// Receives each valid configuration from the server.
    pub config_out: watch::Sender<Option<GatewayConfig>>,
    /// Counters.
    pub stats: Arc<ForwarderStats>,
    /// Cancelled to stop: the forwarder says goodbye (offline status) and returns.
    pub shutdown: CancellationToken,
}

impl Forwarder {
    /// Runs until `shutdown` is cancelled, or the queue fails.
    pub async fn run(self) -> Result<(), ForwarderError> {
        let Forwarder {
            settings,
            queue,
            mqtt: (client, mut events),
            wake,
            mut devices,
            config_out,
            stats,
            shutdown,
        } = self;
        // Pushes through this queue (device sessions in this process) wake the loop at once;
        // `wake` is for callers with news of their own, the poll for everything else.
        let appended = queue.appended();
        let mut devices_open = true;
        let readings_topic = Topic::new(settings.gateway.clone(), Channel::Readings).to_string();
        let status_topic = Topic::new(settings.gateway.clone(), Channel::Status).to_string();
        let config_topic = Topic::new(settings.gateway.clone(), Channel::Config).to_string();
        let mut state = State::new();
        let mut failures: u32 = 0;
        let mut next_status = Instant::now();
        let mut current_config_version = config_out.borrow().as_ref().map(|c| c.version);
        // Why the server's latest config was refused, for the status (the server has no other
        // way to learn that its update did not take).
        let mut config_rejected: Option<String> = None;
        // The disk is watched connected or not: a hub offline for days is the one filling it.
        let mut next_disk_check = Instant::now();
        let mut next_prune = Instant::now();

        loop {
            if Instant::now() >= next_disk_check {
                warn_if_disk_low(&settings, &queue);
                next_disk_check = Instant::now() + settings.status_interval;
            }
            if Instant::now() >= next_prune {
                let cutoff = OffsetDateTime::now_utc() - FORWARDED_RETENTION;
                let forgotten = queue.prune_forwarded(cutoff).await?;
                if forgotten > 0 {
                    tracing::info!(
                        forgotten,
                        "forgot forwarded readings past the retention window"
                    );
                }
                next_prune = Instant::now() + PRUNE_EVERY;
            }
            if state.connected {
                fill_window(
                    &settings,
                    &queue,
                    &client,
                    &readings_topic,
                    &mut state,
                    &stats,
                )
                .await?;
                if Instant::now() >= next_status
                    && state.in_flight() < usize::from(settings.forward.max_inflight) + 1
                {
                    let status = status_message(
                        &settings,
                        &queue,
                        &devices,
                        current_config_version,
                        config_rejected.as_deref(),
                    )
                    .await?;
                    if client
                        .try_publish(&status_topic, QoS::AtLeastOnce, true, status)
                        .is_ok()
                    {
                        state.submitted.push_back(Pending::Status);
                    }
                    next_status = Instant::now() + settings.status_interval;
                }
            }
            let linger = state.linger_until;
            let paused = state.paused_until;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    if state.connected {
                        // A clean goodbye: mark offline ourselves (the will is only for crashes).
                        if let Ok(bytes) = offline_status(&settings.gateway) {
                            let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, bytes);
                        }
                        // Let the event loop flush the goodbye, briefly.
                        mqtt::disconnect_flushed(&client, &mut events, Duration::from_secs(2)).await;
                    }
                    return Ok(());
                }
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        state.disconnected();
                        state.connected = true;
                        state.backlog_end = queue.last_seq().await?;
                        state.backlog_cursor = 0;
                        state.live_cursor = state.backlog_end;
                        next_status = Instant::now();
                        stats.connects.fetch_add(1, Ordering::Relaxed);
                        let _ = client.try_subscribe(&config_topic, QoS::AtLeastOnce);
                        tracing::info!(backlog_end = state.backlog_end, "connected to the broker");
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                        if let Some(p) = state.submitted.pop_front() {
                            state.awaiting.insert(pkid, p);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let Some(pending) = state.awaiting.remove(&ack.pkid) else { continue };
                        // "No matching subscribers" means nobody will ever get the message (no
                        // ingest session exists): for readings that is not delivery.
                        let delivered = matches!(ack.reason, PubAckReason::Success);
                        match pending {
                            Pending::Readings { seqs, .. } if delivered => {
                                queue.ack(&seqs).await?;
                                stats.readings_acked.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                                state.refusals = 0;
                            }
                            Pending::Readings { seqs, lane } => {
                                stats.messages_refused.fetch_add(1, Ordering::Relaxed);
                                state.refusals = state.refusals.saturating_add(1);
                                let pause = mqtt::backoff(state.refusals, settings.max_backoff).max(Duration::from_millis(200));
                                tracing::error!(reason = ?ack.reason, retry_in = ?pause, "broker did not take a readings message; they stay queued");
                                state.paused_until = Some(Instant::now() + pause);
                                // Send this batch (and what followed it on its lane) again later.
                                let before = seqs.first().map_or(0, |s| s.saturating_sub(1));
                                match lane {
                                    Lane::Backlog => state.backlog_cursor = state.backlog_cursor.min(before),
                                    Lane::Live => state.live_cursor = state.live_cursor.min(before),
                                }
                            }
                            Pending::Status if !matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers) => {
                                tracing::warn!(reason = ?ack.reason, "broker refused the status message");
                            }
                            Pending::Status => {}
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == config_topic.as_bytes() {
                            match accept_config(&settings.gateway, &p.payload, current_config_version) {
                                Ok(Some(config)) => {
                                    tracing::info!(version = config.version, devices = config.devices.len(), "new configuration from the server");
                                    current_config_version = Some(config.version);
                                    config_rejected = None;
                                    let _ = config_out.send(Some(config));
                                    next_status = Instant::now();
                                }
                                Ok(None) => {}
                                Err(why) => {
                                    stats.configs_rejected.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(error = %why, "rejected a configuration from the server; keeping the last good one");
                                    config_rejected = Some(why.label().to_owned());
                                    next_status = Instant::now();
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if state.connected {
                            tracing::warn!(error = %e, "lost the broker connection");
                        } else {
                            tracing::debug!(error = %e, "cannot reach the broker");
                        }
                        state.disconnected();
                        failures = failures.saturating_add(1);
                        let pause = mqtt::backoff(failures, settings.max_backoff);
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                },
                () = wake.notified(), if state.connected => {}
                () = appended.notified(), if state.connected => {}
            changed = devices.changed(), if devices_open => {
                // A device reported in (battery, clock, contact): say so in the status now.
                match changed {
                    Ok(()) => next_status = Instant::now(),
                    Err(_) => devices_open = false,
                }
            }
            () = tokio::time::sleep(settings.poll_interval), if state.connected => {}
                () = sleep_until(linger), if linger.is_some() => fill_window_now(&mut state),
            () = sleep_until(paused), if paused.is_some() => {}
                () = tokio::time::sleep_until(next_status), if state.connected => {}
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Marks that the linger period is over: the next fill sends a partial batch.
fn fill_window_now(state: &mut State) {
    state.linger_until = Some(Instant::now() - Duration::from_millis(1));
}

/// Submits batches until the in-flight window is full or the queue has nothing more to send.
async fn fill_window(
    settings: &ForwarderSettings,
    queue: &Queue,
    client: &AsyncClient,
    topic: &str,
    state: &mut State,
    stats: &ForwarderStats,
) -> Result<(), QueueError> {
    let batch_max = settings.forward.batch_max;
    if let Some(until) = state.paused_until {
        if Instant::now() < until {
            return Ok(());
        }
        state.paused_until = None;
    }
    while state.in_flight() < usize::from(settings.forward.max_inflight) {
        let (lane, batch) = next_batch(queue, state, batch_max).await?;
        let Some(last) = batch.last() else {
            return Ok(());
        };
        if batch.len() < batch_max {
            // A partial batch waits up to `linger` for company, unless the wait is over.
            match state.linger_until {
                None => {
                    state.linger_until = Some(Instant::now() + settings.forward.linger);
                    return Ok(());
                }
                Some(deadline) if Instant::now() < deadline => return Ok(()),
                Some(_) => state.linger_until = None,
            }
        }
        let last_seq = last.seq;
        let envelope = Envelope {
            v: vitals::ENVELOPE_VERSION,
            gateway: settings.gateway.clone(),
            seq: queue.take_envelope_seq().await?,
            sent_at: OffsetDateTime::now_utc(),
            readings: batch,
        };
        let seqs: Vec<u64> = envelope.readings.iter().map(|r| r.seq).collect();
        if client
            .try_publish(topic, QoS::AtLeastOnce, false, envelope.encode())
            .is_err()
        {
            // The request channel is full or closed: the event loop will report why.
            return Ok(());
        }
        state.submitted.push_back(Pending::Readings { seqs, lane });
        stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        match lane {
            Lane::Backlog => state.backlog_cursor = last_seq,
            Lane::Live => state.live_cursor = last_seq,
        }
    }
    Ok(())
}

/// The next batch, alternating lanes so live readings are never stuck behind the backlog.
async fn next_batch(
    queue: &Queue,
    state: &mut State,
    max: usize,
) -> Result<(Lane, Vec<vitals::Reading>), QueueError> {
    let order = match state.next_lane {
        Lane::Live => [Lane::Live, Lane::Backlog],
        Lane::Backlog => [Lane::Backlog, Lane::Live],
    };
    for lane in order {
        let batch = match lane {
            Lane::Backlog if state.backlog_cursor < state.backlog_end => {
                let mut b = queue.peek(state.backlog_cursor, max).await?;
                b.retain(|r| r.seq <= state.backlog_end);
                b
            }
            Lane::Backlog => Vec::new(),
            Lane::Live => queue.peek(state.live_cursor, max).await?,
        };
        if !batch.is_empty() {
            state.next_lane = if lane == Lane::Live {
                Lane::Backlog
            } else {
                Lane::Live
            };
            return Ok((lane, batch));
        }
    }
    Ok((Lane::Live, Vec::new()))
}

async fn status_message(
    settings: &ForwarderSettings,
    queue: &Queue,
    devices: &DeviceStatuses,
    config_version: Option<u64>,
    config_rejected: Option<&str>,
) -> Result<Vec<u8>, QueueError> {
    let depth = queue.depth().await?;
    let free = queue.disk_free_bytes();
    let disk_low = free.is_some_and(|f| f < settings.disk_low_bytes);
    let status = GatewayStatus {
        v: 1,
        gateway: settings.gateway.clone(),
        state: GatewayState::Online,
        at: OffsetDateTime::now_utc(),
        queue: Some(QueueStatus {
            depth: depth.readings,
            oldest: depth.oldest,
            disk_free_bytes: free.unwrap_or(0),
            disk_low,
        }),
        devices: devices.borrow().clone(),
        config_version,
        config_rejected: config_rejected.map(str::to_owned),
        software: Some(concat!("rpm ", env!("CARGO_PKG_VERSION")).to_owned()),
    };
    Ok(serde_json::to_vec(&status).unwrap_or_default())
}

/// Logs a warning when the queue's disk has less free space than the configured floor.
fn warn_if_disk_low(settings: &ForwarderSettings, queue: &Queue) {
    if let Some(free) = queue
        .disk_free_bytes()
        .filter(|f| *f < settings.disk_low_bytes)
    {
        tracing::warn!(
            free_bytes = free,
            "disk space is low on the gateway; readings are kept, but the hub needs attention"
        );
    }
}

/// The retained status that says "offline": the last will, and the clean goodbye.
pub fn offline_status(gateway: &GatewayId) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&GatewayStatus {
        v: 1,
        gateway: gateway.clone(),
        state: GatewayState::Offline,
        at: OffsetDateTime::now_utc(),
        queue: None,
        devices: vec![],
        config_version: None,
        config_rejected: None,
        software: None,
    })
}

/// Why a configuration from the server was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ConfigRejection {
    /// Not a configuration message.
    #[error("not a valid configuration message: {0}")]
    Malformed(String),
    /// For another gateway.
    #[error("configuration is for gateway `{0}`")]
    OtherGateway(GatewayId),
    /// A device listed twice or bound to nobody, or a user slot bound twice.
    #[error("invalid binding: {0}")]
    Binding(String),
}

impl ConfigRejection {
    /// The reason as the status reports it; the details (which may quote the payload) stay in
    /// the hub's log.
    pub fn label(&self) -> &'static str {
        match self {
            ConfigRejection::Malformed(_) => "malformed",
            ConfigRejection::OtherGateway(_) => "other_gateway",
            ConfigRejection::Binding(_) => "invalid_binding",
        }
    }
}

/// Validates a configuration from the server. `Ok(None)` means it is not newer than the one in
/// force (a retained message seen again after a reconnect).
pub fn accept_config(
    gateway: &GatewayId,
    payload: &[u8],
    current: Option<u64>,
) -> Result<Option<GatewayConfig>, ConfigRejection> {
    if payload.len() > vitals::MAX_PAYLOAD_BYTES {
        return Err(ConfigRejection::Malformed(format!(
            "{} bytes is over the limit",
            payload.len()
        )));
    }
    let config: GatewayConfig =
        serde_json::from_slice(payload).map_err(|e| ConfigRejection::Malformed(e.to_string()))?;
    if config.v != 1 {
        return Err(ConfigRejection::Malformed(format!(
            "version {} is not supported",
            config.v
        )));
    }
    if &config.gateway != gateway {
        return Err(ConfigRejection::OtherGateway(config.gateway));
    }
    crate::config::check_bindings(&config.devices)
        .map_err(|(_, why)| ConfigRejection::Binding(why))?;
    if current.is_some_and(|v| config.version <= v) {
        return Ok(None);
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_validated_and_only_newer_ones_taken() {
        let gw = GatewayId::new("gw-1").expect("valid");
        let good = br#"{"v":1,"gateway":"gw-1","version":3,"devices":[{"id":"eui64:0011223344556677","patient":"pk-1"}]}"#;
        assert_eq!(
            accept_config(&gw, good, None)
                .expect("valid")
                .map(|c| c.version),
            Some(3)
        );
        assert_eq!(
            accept_config(&gw, good, Some(2))
                .expect("valid")
                .map(|c| c.version),
            Some(3)
        );
        assert!(
            accept_config(&gw, good, Some(3)).expect("valid").is_none(),
            "not newer"
        );
        let other = br#"{"v":1,"gateway":"gw-2","version":3,"devices":[]}"#;
        assert!(matches!(
            accept_config(&gw, other, None),
            Err(ConfigRejection::OtherGateway(_))
        ));
        let unbound =
            br#"{"v":1,"gateway":"gw-1","version":4,"devices":[{"id":"eui64:0011223344556677"}]}"#;
        assert!(matches!(
            accept_config(&gw, unbound, None),
            Err(ConfigRejection::Binding(_))
        ));
        // A cuff's user slot belongs to one patient: the same checks as the file's allowlist.
        let slot_twice = br#"{"v":1,"gateway":"gw-1","version":5,"devices":[{"id":"bdaddr:00:11:22:33:44:55","users":[{"user":1,"patient":"pk-a"},{"user":1,"patient":"pk-b"}]}]}"#;
        assert!(matches!(
            accept_config(&gw, slot_twice, None),
            Err(ConfigRejection::Binding(_))
        ));
        let unknown_slot = br#"{"v":1,"gateway":"gw-1","version":5,"devices":[{"id":"bdaddr:00:11:22:33:44:55","users":[{"user":255,"patient":"pk-a"}]}]}"#;
        assert!(matches!(
            accept_config(&gw, unknown_slot, None),
            Err(ConfigRejection::Binding(_))
        ));
        for junk in [&b"{"[..], b"null", b"\xff", br#"{"v":1}"#] {
            assert!(matches!(
                accept_config(&gw, junk, None),
                Err(ConfigRejection::Malformed(_))
            ));
        }
    }
}
