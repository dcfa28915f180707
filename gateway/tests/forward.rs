//! The forwarder against a real Mosquitto: everything queued arrives, once, and leaves the
//! queue only after the broker acknowledged it — across a broker restart too. An independent
//! subscriber (a persistent MQTT session, so it misses nothing while reconnecting) counts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway::config::ForwardConfig;
use gateway::publish::{self, ForwarderSettings, ForwarderStats};
use gateway::queue::Queue;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use testkit::{Mosquitto, unavailable};
use time::macros::datetime;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use vitals::*;

fn gw() -> GatewayId {
    GatewayId::new("gw-fwd").expect("valid")
}

fn reading(n: u32) -> Reading {
    let at = datetime!(2026-11-20 00:00:00 UTC) + time::Duration::seconds(i64::from(n));
    Reading {
        id: ReadingId(Default::default()),
        seq: 0,
        gateway: gw(),
        patient: PatientKey::new("pk-1").expect("valid"),
        device: DeviceIdentity::new("eui64:0011223344556677".parse().expect("valid")),
        user_index: None,
        reading_type: ReadingType::OximetryContinuous,
        device_time: None,
        measured_at: at,
        received_at: at,
        values: vec![Observed {
            kind: Kind::Spo2,
            value: Value::Number(Decimal::from_int(95)),
            unit: Unit::Percent,
        }],
        flags: Flags::EMPTY,
    }
    .with_computed_id()
}

/// What the independent subscriber saw: envelopes decoded, keyed by reading id with a count.
struct Seen {
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
    ids: HashMap<ReadingId, u32>,
    statuses: Vec<GatewayStatus>,
    envelope_seqs: Vec<u64>,
}

impl Seen {
    fn drain(&mut self) {
        while let Ok((topic, payload, _)) = self.rx.try_recv() {
            if topic.ends_with("/readings") {
                let e = Envelope::decode_from(&topic, &payload)
                    .expect("the gateway publishes valid envelopes");
                self.envelope_seqs.push(e.seq);
                for r in e.readings {
                    *self.ids.entry(r.id).or_default() += 1;
                }
            } else if topic.ends_with("/status") {
                self.statuses
                    .push(serde_json::from_slice(&payload).expect("valid status"));
            }
        }
    }

    async fn wait_for(&mut self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.drain();
            if self.ids.len() >= n || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A subscriber with a persistent session: messages published while it reconnects after a
/// broker restart are kept for it by the broker.
async fn subscriber(port: u16) -> Seen {
    let mut opts = MqttOptions::new("independent-subscriber", "127.0.0.1", port);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(3600));
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(Some(4 * 1024 * 1024));
    let (client, mut events) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    client
        .subscribe("rpm/v1/gw/+/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        p.payload.to_vec(),
                        p.retain,
                    ));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    subscribed_rx.await.expect("subscribed");
    Seen {
        rx,
        ids: HashMap::new(),
        statuses: vec![],
        envelope_seqs: vec![],
    }
}

struct Running {
    devices: watch::Sender<Vec<DeviceStatus>>,
    task: tokio::task::JoinHandle<Result<(), publish::ForwarderError>>,
    wake: Arc<Notify>,
    stats: Arc<ForwarderStats>,
    shutdown: CancellationToken,
    config: watch::Receiver<Option<GatewayConfig>>,
}

fn start(port: u16, queue: Queue, batch_max: usize) -> Running {
    start_tuned(port, queue, batch_max, 8, 1)
}

fn start_tuned(
    port: u16,
    queue: Queue,
    batch_max: usize,
    max_inflight: u16,
    disk_low_bytes: u64,
) -> Running {
    start_polling(
        port,
        queue,
        batch_max,
        max_inflight,
        disk_low_bytes,
        Duration::from_secs(1),
    )
}

fn start_polling(
    port: u16,
    queue: Queue,
    batch_max: usize,
    max_inflight: u16,
    disk_low_bytes: u64,
    poll_interval: Duration,
) -> Running {
    let broker = BrokerConfig::new(format!("mqtt://127.0.0.1:{port}").parse().expect("url"));
    let settings = ForwarderSettings {
        gateway: gw(),
        forward: ForwardConfig {
            batch_max,
            linger: Duration::from_millis(20),
            max_inflight,
        },
        status_interval: Duration::from_secs(60),
        disk_low_bytes,
        max_backoff: Duration::from_millis(500),
        poll_interval,
    };
    let will = publish::offline_status(&gw()).expect("json");
    let status_topic = Topic::new(gw(), Channel::Status).to_string();
    let options =
        publish::mqtt_options(&broker, "gw-fwd", Some((status_topic, will)), 8).expect("options");
    let mqtt = AsyncClient::new(options.clone(), options.request_channel_capacity());
    let wake = Arc::new(Notify::new());
    let stats = Arc::new(ForwarderStats::default());
    let shutdown = CancellationToken::new();
    let (devices_tx, devices) = watch::channel(Vec::new());
    let (config_tx, config) = watch::channel(None);
    let forwarder = publish::Forwarder {
        settings,
        queue,
        mqtt,
        wake: wake.clone(),
        devices,
        config_out: config_tx,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(forwarder.run());
    Running {
        devices: devices_tx,
        task,
        wake,
        stats,
        shutdown,
        config,
    }
}

/// A reading pushed while the forwarder idles leaves at once: the push itself wakes it (no
/// caller has to, and the poll is an hour away). Pushes come from a clone of the queue, as
/// the device sessions' do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_wakes_the_forwarder_without_waiting_for_its_poll() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    let mut seen = subscriber(broker.port()).await;
    let run = start_polling(
        broker.port(),
        queue.clone(),
        100,
        8,
        1,
        Duration::from_secs(3600),
    );
    // Connected and idle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while run.stats.connects.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forwarder connects"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..3 {
        let session = queue.clone();
        session.push(&[reading(n)]).await.expect("push");
        seen.wait_for(n as usize + 1, Duration::from_secs(20)).await;
        assert_eq!(seen.ids.len(), n as usize + 1, "reading {n} was forwarded");
    }
    assert_eq!(wait_until_empty(&queue, Duration::from_secs(10)).await, 0);
    run.shutdown.cancel();
    run.task.await.expect("joined").expect("clean stop");
}

async fn wait_until_empty(queue: &Queue, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let depth = queue.depth().await.expect("depth").readings;
        if depth == 0 || tokio::time::Instant::now() > deadline {
            return depth;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_queued_arrives_once_and_leaves_the_queue_after_puback() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    let readings: Vec<Reading> = (0..2000).map(reading).collect();
    queue.push(&readings).await.expect("push");
    let mut seen = subscriber(broker.port()).await;
    let run = start(broker.port(), queue.clone(), 100);

    assert_eq!(
        wait_until_empty(&queue, Duration::from_secs(30)).await,
        0,
        "the queue drains"
    );
    seen.wait_for(readings.len(), Duration::from_secs(10)).await;
    let expected: HashSet<ReadingId> = readings.iter().map(|r| r.id).collect();
    let arrived: HashSet<ReadingId> = seen.ids.keys().copied().collect();
    assert_eq!(
        expected.difference(&arrived).count(),
        0,
        "every reading arrived ({} of {})",
        arrived.len(),
        expected.len()
    );
    assert_eq!(arrived.len(), expected.len(), "nothing else arrived");
    assert!(
        seen.ids.values().all(|c| *c == 1),
        "no reading arrived twice"
    );
    assert!(
        seen.envelope_seqs.windows(2).all(|w| w[0] < w[1]),
        "envelope seqs increase: {:?}",
        seen.envelope_seqs
    );
    assert_eq!(run.stats.readings_acked.load(Ordering::Relaxed), 2000);

    // A reading pushed later is forwarded promptly after a wake-up.
    queue.push(&[reading(5000)]).await.expect("push");
    run.wake.notify_one();
    seen.wait_for(2001, Duration::from_secs(10)).await;
    assert!(seen.ids.contains_key(&reading(5000).id));

    // Online status was retained with the queue's depth.
    let online = seen
        .statuses
        .iter()
        .find(|s| s.state == GatewayState::Online)
        .expect("an online status");
    assert!(
        online.queue.as_ref().is_some_and(|q| q.depth == 2000),
        "{online:?}"
    );

    run.shutdown.cancel();
    run.task.await.expect("joined").expect("clean stop");
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.drain();
    assert_eq!(
        seen.statuses.last().map(|s| s.state),
        Some(GatewayState::Offline),
        "a clean stop says offline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reading_lost_or_doubled_when_the_broker_restarts_mid_forward() {
    let Some(mut broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    let mut seen = subscriber(broker.port()).await;
    let run = start(broker.port(), queue.clone(), 50);
    let mut pushed = Vec::new();
    for round in 0..30u32 {
        let batch: Vec<Reading> = (round * 100..round * 100 + 100).map(reading).collect();
        queue.push(&batch).await.expect("push");
        pushed.extend(batch.iter().map(|r| r.id));
        run.wake.notify_one();
        match round {
            // Restarted at once, mid-forward.
            10 => broker.restart().expect("broker restarts"),
            // Stopped for a while as readings keep coming, then started again.
            15 => broker.terminate(),
            22 => broker.start_again().expect("broker starts again"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        queue.depth().await.expect("depth").readings > 0
            || run.stats.connects.load(Ordering::Relaxed) >= 3
    );
    assert_eq!(
        wait_until_empty(&queue, Duration::from_secs(60)).await,
        0,
        "the queue drains after the restarts"
    );
    seen.wait_for(pushed.len(), Duration::from_secs(20)).await;
    let missing = pushed
        .iter()
        .filter(|id| !seen.ids.contains_key(id))
        .count();
    assert_eq!(
        missing,
        0,
        "no reading lost ({} of {} arrived)",
        seen.ids.len(),
        pushed.len()
    );
    // QoS 1 is at-least-once: a message the broker took but whose PUBACK was lost in the
    // restart is published again, and the record drops the copy by reading id. Only what was
    // in flight at a disconnect may come twice: at most max_inflight x batch_max per restart.
    let doubled = seen.ids.values().filter(|c| **c > 1).count();
    let connects = run.stats.connects.load(Ordering::Relaxed) as usize;
    assert!(
        doubled <= 8 * 50 * connects,
        "{doubled} readings arrived more than once"
    );
    assert!(
        seen.ids.values().all(|c| *c <= connects as u32),
        "a reading re-sent more often than there were reconnects"
    );
    eprintln!("readings that arrived twice (in flight at a restart): {doubled}");
    assert!(
        run.stats.connects.load(Ordering::Relaxed) >= 3,
        "reconnected after each restart"
    );
    run.shutdown.cancel();
    let _ = run.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_config_is_taken_and_a_malformed_one_is_refused() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    let (admin, mut admin_events) =
        AsyncClient::new(MqttOptions::new("server", "127.0.0.1", broker.port()), 10);
    tokio::spawn(async move { while admin_events.poll().await.is_ok() {} });
    let topic = Topic::new(gw(), Channel::Config).to_string();
    let good = r#"{"v":1,"gateway":"gw-fwd","version":7,"devices":[{"id":"bdaddr:00:11:22:33:44:55","users":[{"user":1,"patient":"pk-a"}]}]}"#;
    admin
        .publish(&topic, QoS::AtLeastOnce, true, good.as_bytes().to_vec())
        .await
        .expect("publish");
    let mut run = start(broker.port(), queue, 100);
    tokio::time::timeout(
        Duration::from_secs(10),
        run.config.wait_for(|c| c.is_some()),
    )
    .await
    .expect("config in time")
    .expect("sender alive");
    assert_eq!(run.config.borrow().as_ref().map(|c| c.version), Some(7));

    admin
        .publish(
            &topic,
            QoS::AtLeastOnce,
            true,
            b"{\"v\":1,\"gateway\":\"gw-fwd\"".to_vec(),
        )
        .await
        .expect("publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while run.stats.configs_rejected.load(Ordering::Relaxed) == 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        run.stats.configs_rejected.load(Ordering::Relaxed),
        1,
        "the malformed config was counted"
    );
    assert_eq!(
        run.config.borrow().as_ref().map(|c| c.version),
        Some(7),
        "the last good config is kept"
    );
    run.shutdown.cancel();
    let _ = run.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_nobody_subscribes_to_stay_queued_until_someone_does() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    let readings: Vec<Reading> = (0..10).map(reading).collect();
    queue.push(&readings).await.expect("push");
    // No ingest session exists yet: Mosquitto answers "no matching subscribers" (0x10).
    let run = start(broker.port(), queue.clone(), 100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while run.stats.messages_refused.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        queue.depth().await.expect("depth").readings,
        10,
        "nothing is dropped for want of a subscriber"
    );
    assert_eq!(run.stats.readings_acked.load(Ordering::Relaxed), 0);
    // A consumer appears: the forwarder's retry delivers everything.
    let mut seen = subscriber(broker.port()).await;
    assert_eq!(wait_until_empty(&queue, Duration::from_secs(30)).await, 0);
    seen.wait_for(10, Duration::from_secs(10)).await;
    assert_eq!(seen.ids.len(), 10);
    run.shutdown.cancel();
    let _ = run.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_will_marks_a_crashed_gateway_offline_and_device_news_refreshes_the_status() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    let mut seen = subscriber(broker.port()).await;
    let run = start(broker.port(), queue, 100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        seen.drain();
        if seen
            .statuses
            .iter()
            .any(|s| s.state == GatewayState::Online)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no online status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A device reports in: the status is republished with it at once, not at the next interval.
    run.devices
        .send(vec![DeviceStatus {
            id: "eui64:0011223344556677".parse().expect("valid"),
            last_contact: Some(time::OffsetDateTime::now_utc()),
            battery: Some(12),
            clock_offset_ms: Some(-1500),
        }])
        .expect("forwarder listening");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        seen.drain();
        if let Some(s) = seen.statuses.iter().rev().find(|s| !s.devices.is_empty()) {
            assert_eq!(s.devices[0].battery, Some(12));
            assert_eq!(s.devices[0].clock_offset_ms, Some(-1500));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no status with the device"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The hub crashes: no goodbye. The broker publishes its last will.
    run.task.abort();
    let _ = run.task.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        seen.drain();
        if seen
            .statuses
            .last()
            .is_some_and(|s| s.state == GatewayState::Offline)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker never published the will"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The order readings arrive in, as the independent subscriber sees it.
fn arrival_order(seen: &mut Seen, order: &mut Vec<ReadingId>) {
    while let Ok((topic, payload, _)) = seen.rx.try_recv() {
        if topic.ends_with("/readings") {
            let e = Envelope::decode_from(&topic, &payload).expect("valid envelope");
            order.extend(e.readings.iter().map(|r| r.id));
        } else if topic.ends_with("/status") {
            seen.statuses
                .push(serde_json::from_slice(&payload).expect("valid status"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_reading_is_not_stuck_behind_a_week_of_backlog_and_a_full_disk_is_reported() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    // The backlog: queued while the link was down.
    let backlog: Vec<Reading> = (0..3000).map(reading).collect();
    queue.push(&backlog).await.expect("push");
    let mut seen = subscriber(broker.port()).await;
    // One message of 50 in flight at a time; the disk floor is set so high the disk is "low".
    let run = start_tuned(broker.port(), queue.clone(), 50, 1, u64::MAX);
    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while order.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "forwarding never started"
        );
        arrival_order(&mut seen, &mut order);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Today's reading arrives while the backlog drains.
    let live = reading(100_000);
    queue.push(std::slice::from_ref(&live)).await.expect("push");
    run.wake.notify_one();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while order.len() < 3001 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everything arrived: {}",
            order.len()
        );
        arrival_order(&mut seen, &mut order);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at = order
        .iter()
        .position(|id| *id == live.id)
        .expect("the live reading arrived");
    assert!(
        at < 500,
        "the live reading came after {at} backlog readings: it waited for the backlog"
    );
    // The backlog itself arrives oldest first.
    let backlog_order: Vec<ReadingId> = order.iter().copied().filter(|id| *id != live.id).collect();
    assert_eq!(
        backlog_order,
        backlog.iter().map(|r| r.id).collect::<Vec<_>>(),
        "in order"
    );
    let status = seen
        .statuses
        .iter()
        .rev()
        .find_map(|s| s.queue.clone())
        .expect("a status with the queue");
    assert!(status.disk_low, "the hub says its disk is low");
    run.shutdown.cancel();
    let _ = run.task.await;
}

/// Capacity: more than a week at 1 Hz continuous oximetry (604 800) queued while offline, then
/// forwarded oldest first with nothing lost or doubled. Minutes in a debug build, so not part
/// of the default run: `cargo test -p gateway --test forward -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a million readings: minutes in a debug build"]
async fn a_million_queued_readings_are_forwarded_in_order_once() {
    const N: u32 = 1_050_000;
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    let started = std::time::Instant::now();
    for first in (0..N).step_by(10_000) {
        let chunk: Vec<Reading> = (first..(first + 10_000).min(N)).map(reading).collect();
        queue.push(&chunk).await.expect("push");
    }
    let filled = started.elapsed();
    assert_eq!(queue.depth().await.expect("depth").readings, u64::from(N));
    let bytes = std::fs::metadata(dir.path().join("q.db")).map_or(0, |m| m.len())
        + std::fs::metadata(dir.path().join("q.db-wal")).map_or(0, |m| m.len());
    let mut seen = subscriber(broker.port()).await;
    let started = std::time::Instant::now();
    let run = start_tuned(broker.port(), queue.clone(), 200, 16, 1);
    let mut order = Vec::with_capacity(N as usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
    while order.len() < N as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {N} arrived in 30 minutes",
            order.len()
        );
        arrival_order(&mut seen, &mut order);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let forwarded = started.elapsed();
    assert_eq!(wait_until_empty(&queue, Duration::from_secs(30)).await, 0);
    eprintln!(
        "{N} readings: queued in {filled:?} ({} MB on disk), forwarded in {forwarded:?} ({:.0}/s)",
        bytes / 1_000_000,
        f64::from(N) / forwarded.as_secs_f64()
    );
    assert_eq!(order.len(), N as usize, "nothing doubled");
    assert!(
        order.iter().zip(0..N).all(|(id, n)| *id == reading(n).id),
        "in the order they were queued"
    );
    run.shutdown.cancel();
    let _ = run.task.await;
}

/// A re-sendable reading (it carries the device's time stamp) measured `days_ago`.
fn stamped(days_ago: i64) -> Reading {
    let at = time::OffsetDateTime::now_utc() - time::Duration::days(days_ago);
    let mut r = reading(0);
    r.measured_at = at;
    r.received_at = at;
    r.device_time = Some(time::PrimitiveDateTime::new(at.date(), at.time()));
    r.with_computed_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_ids_are_forgotten_after_the_retention_window_and_kept_within_it() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = Queue::open(dir.path().join("q.db")).await.expect("queue");
    let old = stamped(publish::FORWARDED_RETENTION.whole_days() + 30);
    let recent = stamped(2);
    queue
        .push(&[old.clone(), recent.clone()])
        .await
        .expect("push");
    let mut seen = subscriber(broker.port()).await;
    let run = start(broker.port(), queue.clone(), 100);
    seen.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(wait_until_empty(&queue, Duration::from_secs(10)).await, 0);
    assert!(
        queue.knows(old.id).await.expect("knows"),
        "remembered once forwarded"
    );
    run.shutdown.cancel();
    run.task.await.expect("joined").expect("clean stop");

    // The next start forgets what is past the window, and only that.
    let run = start(broker.port(), queue.clone(), 100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while queue.knows(old.id).await.expect("knows") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a reading measured past the retention window is still remembered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        queue.knows(recent.id).await.expect("knows"),
        "a recent one is remembered, so a device sending it again is not forwarded twice"
    );
    run.shutdown.cancel();
    let _ = run.task.await;
}
