//! `rpm bench gateway`: how fast the hub drains a full queue to the broker, and what it costs
//! (resident memory, CPU time per 1 000 readings), beside the same-run baseline of a bare
//! MQTT publisher sending the same envelopes to the same broker.
//!
//! Targets (issue 5): ≥ 5 000 readings/s forwarded from a full queue, RSS under 30 MB.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gateway::config::ForwardConfig;
use gateway::publish::{Forwarder, ForwarderSettings, ForwarderStats};
use gateway::queue::Queue;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;
use vitals::{
    BrokerConfig, Decimal, DeviceIdentity, Envelope, GatewayId, Kind, Observed, PatientKey,
    Reading, ReadingId, ReadingType, Unit, Value,
};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The broker (`mqtt://host:port`).
    pub broker: String,
    /// Readings queued before forwarding starts.
    pub readings: usize,
    /// Readings per MQTT message.
    pub batch: usize,
    /// Patients (one oximeter each) the readings are spread over.
    pub patients: usize,
}

/// What [`measure`] found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figures {
    /// Readings queued and forwarded.
    pub readings: u64,
    /// Baseline: a bare publisher sending the same envelopes (readings/s).
    pub bare_publisher: f64,
    /// The forwarder draining the full durable queue (readings/s).
    pub forwarded: f64,
    /// Filling the queue, 1 000 readings per durable commit (readings/s).
    pub queue_fill: f64,
    /// Process CPU time (user + system) per 1 000 readings forwarded (ms).
    pub cpu_ms_per_1000: f64,
    /// Resident memory before forwarding (MB).
    pub rss_before_mb: f64,
    /// Resident memory after forwarding (MB).
    pub rss_after_mb: f64,
    /// Peak resident memory of the whole bench process (MB).
    pub rss_peak_mb: f64,
}

/// Synthetic 1 Hz continuous-oximetry readings spread over `patients` patients.
fn readings(gateway: &GatewayId, n: usize, patients: usize) -> anyhow::Result<Vec<Reading>> {
    let patients = patients.max(1) as u64;
    let start = time::OffsetDateTime::now_utc() - time::Duration::days(7);
    (0..n as u64)
        .map(|i| {
            let at = start + time::Duration::milliseconds(i as i64 * 20);
            Ok(Reading {
                id: ReadingId(Default::default()),
                seq: 0,
                gateway: gateway.clone(),
                patient: PatientKey::new(format!("bench-pk-{}", i % patients))?,
                device: DeviceIdentity::new(ingest::record::bench::bench_device(
                    (i % patients) as u32,
                )),
                user_index: None,
                reading_type: ReadingType::OximetryContinuous,
                device_time: None,
                measured_at: at,
                received_at: at,
                values: vec![
                    Observed {
                        kind: Kind::Spo2,
                        value: Value::Number(Decimal::from_int(90 + (i % 9) as i64)),
                        unit: Unit::Percent,
                    },
                    Observed {
                        kind: Kind::PulseRate,
                        value: Value::Number(Decimal::from_int(60 + (i % 40) as i64)),
                        unit: Unit::PerMin,
                    },
                ],
                flags: vitals::Flags::EMPTY,
            }
            .with_computed_id())
        })
        .collect()
}

/// Resident set size now and at its peak (kB), from /proc.
pub(crate) fn rss_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU time of this process so far (Linux clock ticks of 10 ms).
pub(crate) fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line; after the `)` (which ends field 2)
    // they are the 12th and 13th words, indexes 11 and 12.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A subscriber that counts readings (Mosquitto answers "no matching subscribers" otherwise,
/// and the forwarder keeps such readings queued). Mosquitto's default `max_queued_messages`
/// (1 000) drops what a slow subscriber cannot take; at the gateway's rate it keeps up.
async fn counter(broker: &BrokerConfig, topic: &str, id: &str) -> anyhow::Result<Arc<AtomicU64>> {
    let mut opts = MqttOptions::new(id, broker.url.host.clone(), broker.url.port);
    opts.set_max_packet_size(Some(4 * 1024 * 1024));
    let (client, mut events) = AsyncClient::new(opts, 100);
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            break;
        }
    }
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev
                && let Ok(e) = Envelope::decode(&p.payload)
            {
                c.fetch_add(e.readings.len() as u64, Ordering::Relaxed);
            }
        }
    });
    Ok(count)
}

async fn wait_count(count: &AtomicU64, n: u64, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: {} of {n} readings arrived in 10 minutes",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Fills a durable queue and drains it with the real forwarder, after the bare publisher.
pub async fn measure(opts: &Options) -> anyhow::Result<Figures> {
    let broker = BrokerConfig::new(
        opts.broker
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
    );
    let gw = GatewayId::new("bench-gw")?;
    let topic = vitals::Topic::new(gw.clone(), vitals::Channel::Readings).to_string();
    let data = readings(&gw, opts.readings, opts.patients)?;
    let n = data.len() as u64;

    // Baseline: a bare publisher sends the same envelopes (QoS 1, waits for every PUBACK).
    let payloads: Vec<Vec<u8>> = data
        .chunks(opts.batch.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            Envelope {
                v: 1,
                gateway: gw.clone(),
                seq: i as u64 + 1,
                sent_at: time::OffsetDateTime::now_utc(),
                readings: chunk.to_vec(),
            }
            .encode()
        })
        .collect();
    let mut popts = MqttOptions::new(
        "bench-gw-baseline-pub",
        broker.url.host.clone(),
        broker.url.port,
    );
    popts.set_max_packet_size(Some(4 * 1024 * 1024));
    popts.set_outgoing_inflight_upper_limit(16);
    let (publisher, mut pevents) = AsyncClient::new(popts, 64);
    let messages = payloads.len();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for p in payloads {
            if publisher
                .publish("rpm/v1/gw/bench-gw/readings", QoS::AtLeastOnce, false, p)
                .await
                .is_err()
            {
                break;
            }
        }
        publisher
    });
    let mut acked = 0;
    while acked < messages {
        if let Event::Incoming(Packet::PubAck(_)) = pevents.poll().await? {
            acked += 1;
        }
    }
    let baseline = n as f64 / started.elapsed().as_secs_f64();
    let _ = sender.await?.disconnect().await;

    // The hub: fill a durable queue, then drain it with the real forwarder.
    let dir = tempfile::tempdir()?;
    let queue = Queue::open(dir.path().join("queue.db")).await?;
    let fill_started = Instant::now();
    for chunk in data.chunks(1000) {
        queue.push(chunk).await?;
    }
    let fill_rate = n as f64 / fill_started.elapsed().as_secs_f64();
    // The hub holds nothing but the queue file: let go of the generated readings.
    drop(data);
    let forwarded = counter(&broker, &topic, "bench-gw-forward-sub").await?;
    let (rss_before, _) = rss_kb();
    let cpu_before = cpu_time();
    let options = mqtt::client_options(&broker, "bench-gw", None, 16)?;
    let cap = options.request_channel_capacity();
    let stats = Arc::new(ForwarderStats::default());
    let shutdown = CancellationToken::new();
    let (_devices_tx, devices) = tokio::sync::watch::channel(Vec::new());
    let (config_tx, _config_rx) = tokio::sync::watch::channel(None);
    let forwarder = Forwarder {
        settings: ForwarderSettings {
            gateway: gw.clone(),
            forward: ForwardConfig {
                batch_max: opts.batch,
                linger: Duration::from_millis(20),
                max_inflight: 16,
            },
            status_interval: Duration::from_secs(600),
            disk_low_bytes: 0,
            max_backoff: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
        },
        queue: queue.clone(),
        mqtt: AsyncClient::new(options, cap),
        wake: Arc::new(tokio::sync::Notify::new()),
        devices,
        config_out: config_tx,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let started = Instant::now();
    let task = tokio::spawn(forwarder.run());
    while queue.depth().await?.readings > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the queue did not drain in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    let (rss_after, rss_peak) = rss_kb();
    shutdown.cancel();
    task.await?.context("forwarder")?;
    wait_count(&forwarded, n, "forwarded").await?;
    let rate = n as f64 / elapsed.as_secs_f64();

    Ok(Figures {
        readings: n,
        bare_publisher: baseline,
        forwarded: rate,
        queue_fill: fill_rate,
        cpu_ms_per_1000: cpu.as_secs_f64() * 1000.0 / (n as f64 / 1000.0),
        rss_before_mb: rss_before as f64 / 1024.0,
        rss_after_mb: rss_after as f64 / 1024.0,
        rss_peak_mb: rss_peak as f64 / 1024.0,
    })
}

/// The markdown report of [`measure`]'s figures.
pub fn render(opts: &Options, f: &Figures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## rpm bench gateway\n\n{} readings of {} patients queued, forwarded in messages of {} (16 in flight); broker {}\n",
        f.readings, opts.patients, opts.batch, opts.broker
    );
    let _ = writeln!(out, "| figure | value |\n|---|---:|");
    let _ = writeln!(
        out,
        "| baseline: bare publisher, same envelopes (readings/s) | {:.0} |",
        f.bare_publisher
    );
    let _ = writeln!(
        out,
        "| gateway: forwarded from the full durable queue (readings/s) | {:.0} |",
        f.forwarded
    );
    let _ = writeln!(
        out,
        "| gateway / baseline | {:.2} |",
        f.forwarded / f.bare_publisher
    );
    let _ = writeln!(
        out,
        "| queue fill, 1 000 per durable commit (readings/s) | {:.0} |",
        f.queue_fill
    );
    let _ = writeln!(
        out,
        "| CPU time per 1 000 readings forwarded (ms) | {:.1} |",
        f.cpu_ms_per_1000
    );
    let _ = writeln!(
        out,
        "| RSS before / after forwarding (MB) | {:.1} / {:.1} |",
        f.rss_before_mb, f.rss_after_mb
    );
    let _ = writeln!(
        out,
        "| peak RSS of the whole bench process (MB) | {:.1} |",
        f.rss_peak_mb
    );
    let _ = writeln!(
        out,
        "\nCPU and RSS are this process's (the forwarder, plus the counting subscriber and, for the peak, the \
         readings generated up front); the gateway alone uses less."
    );
    out
}
