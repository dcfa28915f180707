//! `rpm bench gateway`: how fast the hub drains a full queue to the broker, and what it costs
//! (resident memory, CPU time per 1 000 readings), beside the same-run baseline of a bare
//! MQTT publisher sending the same envelopes to the same broker.
//!
//! Targets (issue 5): ≥ 5 000 readings/s forwarded from a full queue, RSS under 30 MB.
//!
//! Memory and CPU are read while the forwarder drains the queue, and only then: the readings
//! are generated and queued 1 000 at a time (nothing holds all of them), the peak resident size
//! is reset through `/proc/self/clear_refs` just before forwarding starts, and the baseline,
//! which regenerates the same readings, runs after the figures are read. What the process
//! then holds is the forwarder, its queue, the tokio runtime and a small counting subscriber
//! on a thread of its own, whose CPU time is reported beside the process's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
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
///
/// Memory and CPU cover the bench process while it forwards: by then it holds only the
/// forwarder, its SQLite queue, the tokio runtime and a small counting subscriber on a thread
/// of its own (the readings were generated and queued in chunks; the bare-publisher baseline
/// runs after these figures are read).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figures {
    /// Readings queued.
    pub readings: u64,
    /// Readings the broker acknowledged to the forwarder (and the queue then dropped).
    pub acked: u64,
    /// Readings the counting subscriber received from the forwarder.
    pub delivered: u64,
    /// Baseline: a bare publisher sending the same envelopes (readings/s).
    pub bare_publisher: f64,
    /// The forwarder draining the full durable queue (readings/s).
    pub forwarded: f64,
    /// Filling the queue, 1 000 readings per durable commit (readings/s).
    pub queue_fill: f64,
    /// Process CPU time (user + system) while forwarding, per 1 000 readings (ms).
    pub cpu_ms_per_1000: f64,
    /// The part of [`Figures::cpu_ms_per_1000`] spent by the counting subscriber's thread
    /// (ms); `None` where a thread's CPU time cannot be read.
    pub subscriber_cpu_ms_per_1000: Option<f64>,
    /// Resident memory when forwarding starts (MB).
    pub forwarding_rss_start_mb: f64,
    /// Resident memory when the queue is empty (MB).
    pub forwarding_rss_end_mb: f64,
    /// Peak resident memory while forwarding (MB): VmHWM, reset just before forwarding
    /// starts. `None` where the peak cannot be reset (not Linux, or /proc/self/clear_refs
    /// not writable): the unreset peak would be the queue fill's, not the forwarder's.
    pub forwarding_rss_peak_mb: Option<f64>,
}

/// Synthetic 1 Hz continuous-oximetry readings spread over `patients` patients, made from
/// their index alone, so the queue is filled chunk by chunk and the baseline can make the same
/// readings again without anything holding all of them.
struct Synthetic {
    gateway: GatewayId,
    patients: u64,
    start: time::OffsetDateTime,
}

impl Synthetic {
    fn new(gateway: GatewayId, patients: usize) -> Self {
        Synthetic {
            gateway,
            patients: patients.max(1) as u64,
            start: time::OffsetDateTime::now_utc() - time::Duration::days(7),
        }
    }

    /// Readings `range` (by index).
    fn readings(&self, range: std::ops::Range<usize>) -> anyhow::Result<Vec<Reading>> {
        range.map(|i| self.reading(i as u64)).collect()
    }

    fn reading(&self, i: u64) -> anyhow::Result<Reading> {
        let at = self.start + time::Duration::milliseconds(i as i64 * 20);
        let patient = i % self.patients;
        Ok(Reading {
            id: ReadingId(Default::default()),
            seq: 0,
            gateway: self.gateway.clone(),
            patient: PatientKey::new(format!("bench-pk-{patient}"))?,
            device: DeviceIdentity::new(ingest::record::bench::bench_device(patient as u32)),
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
    }
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

/// Resets this process's peak resident set size (VmHWM) to its current size (Linux ≥ 4.0);
/// false if it could not.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
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

/// Time a thread has spent on a CPU, from its /proc `schedstat` file (nanoseconds, where a
/// `stat` file counts 10 ms ticks: the subscriber's share of a short run is a few ticks).
fn thread_cpu_time(schedstat: &Path) -> Option<Duration> {
    std::fs::read_to_string(schedstat)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

/// Only payloads' reading counts: fully decoding them (each reading's id is re-hashed) would
/// cost about as much CPU as forwarding them, all of it charged to the forwarding figures.
#[derive(serde::Deserialize)]
struct ReadingCount {
    readings: Vec<serde::de::IgnoredAny>,
}

/// A subscriber that counts readings (Mosquitto answers "no matching subscribers" otherwise,
/// and the forwarder keeps such readings queued), on a thread and runtime of its own so its
/// CPU time can be told apart from the forwarder's. Mosquitto's default
/// `max_queued_messages` (1 000) drops what a slow subscriber cannot take; at the gateway's
/// rate it keeps up. Dropping it stops the thread.
struct Counter {
    count: Arc<AtomicU64>,
    /// The thread's /proc `schedstat` file.
    schedstat: Option<PathBuf>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Counter {
    async fn start(broker: &BrokerConfig, topic: &str, id: &str) -> anyhow::Result<Self> {
        let mut opts = MqttOptions::new(id, broker.url.host.clone(), broker.url.port);
        opts.set_max_packet_size(Some(4 * 1024 * 1024));
        // It publishes nothing; left unset, rumqttc sizes its outgoing window for 65 535
        // messages up front (some 14 MB), which would be counted as the forwarder's memory.
        opts.set_outgoing_inflight_upper_limit(1);
        let topic = topic.to_owned();
        let count = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (ready_tx, ready) = tokio::sync::oneshot::channel::<anyhow::Result<Option<PathBuf>>>();
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("bench-counter".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (client, mut events) = AsyncClient::new(opts, 100);
                    let subscribed = async {
                        client.subscribe(topic, QoS::AtLeastOnce).await?;
                        loop {
                            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
                                return anyhow::Ok(());
                            }
                        }
                    };
                    if let Err(e) = subscribed.await {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    let stat = std::fs::read_link("/proc/thread-self")
                        .ok()
                        .map(|t| Path::new("/proc").join(t).join("schedstat"));
                    let _ = ready_tx.send(Ok(stat));
                    loop {
                        let ev = tokio::select! {
                            () = s.cancelled() => break,
                            ev = events.poll() => ev,
                        };
                        match ev {
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                if let Ok(r) = serde_json::from_slice::<ReadingCount>(&p.payload) {
                                    c.fetch_add(r.readings.len() as u64, Ordering::Relaxed);
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    let _ = client.disconnect().await;
                });
            })?;
        let mut counter = Counter {
            count,
            schedstat: None,
            stop,
            thread: Some(thread),
        };
        counter.schedstat = ready
            .await
            .context("the counting subscriber's thread ended")??;
        Ok(counter)
    }

    /// The subscriber thread's CPU time so far.
    fn cpu_time(&self) -> Option<Duration> {
        thread_cpu_time(self.schedstat.as_deref()?)
    }

    /// Disconnects and waits for the thread to end.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the counting subscriber panicked"))?;
        }
        Ok(())
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
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

/// Fills a durable queue chunk by chunk and drains it with the real forwarder, reading memory
/// and CPU while it forwards; then runs the bare-publisher baseline.
pub async fn measure(opts: &Options) -> anyhow::Result<Figures> {
    let broker = BrokerConfig::new(
        opts.broker
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
    );
    let gw = GatewayId::new("bench-gw")?;
    let topic = vitals::Topic::new(gw.clone(), vitals::Channel::Readings).to_string();
    let synthetic = Synthetic::new(gw.clone(), opts.patients);
    let n = opts.readings;

    // The hub: fill a durable queue, then drain it with the real forwarder.
    let dir = tempfile::tempdir()?;
    let queue = Queue::open(dir.path().join("queue.db")).await?;
    let fill_started = Instant::now();
    for from in (0..n).step_by(1000) {
        queue
            .push(&synthetic.readings(from..(from + 1000).min(n))?)
            .await?;
    }
    let fill_rate = n as f64 / fill_started.elapsed().as_secs_f64();
    let counter = Counter::start(&broker, &topic, "bench-gw-forward-sub").await?;
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
    // From here the peak is the forwarder's, not the queue fill's.
    let peak_reset = reset_peak_rss();
    let (rss_start, _) = rss_kb();
    let cpu_before = cpu_time();
    let counter_cpu_before = counter.cpu_time();
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
    let counter_cpu = counter
        .cpu_time()
        .zip(counter_cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let (rss_end, rss_peak) = rss_kb();
    shutdown.cancel();
    task.await?.context("forwarder")?;
    wait_count(&counter.count, n as u64, "forwarded").await?;
    let delivered = counter.count.load(Ordering::Relaxed);
    counter.stop().await?;
    let per_1000 = |d: Duration| d.as_secs_f64() * 1000.0 / (n as f64 / 1000.0);
    let mb = |kb: u64| kb as f64 / 1024.0;
    let figures = Figures {
        readings: n as u64,
        acked: stats.readings_acked.load(Ordering::Relaxed),
        delivered,
        bare_publisher: f64::NAN,
        forwarded: n as f64 / elapsed.as_secs_f64(),
        queue_fill: fill_rate,
        cpu_ms_per_1000: per_1000(cpu),
        subscriber_cpu_ms_per_1000: counter_cpu.map(per_1000),
        forwarding_rss_start_mb: mb(rss_start),
        forwarding_rss_end_mb: mb(rss_end),
        forwarding_rss_peak_mb: peak_reset.then(|| mb(rss_peak.max(rss_end))),
    };
    drop(queue);
    drop(dir);

    let bare_publisher = bare_publisher(&broker, &topic, &synthetic, n, opts.batch).await?;
    Ok(Figures {
        bare_publisher,
        ..figures
    })
}

/// Baseline: a bare publisher sends the same envelopes (QoS 1, waits for every PUBACK), in
/// readings/s. Its payloads are encoded before its clock starts, as a bare publisher's would
/// be ready; the forwarding figures were read already, so holding them costs those nothing.
async fn bare_publisher(
    broker: &BrokerConfig,
    topic: &str,
    synthetic: &Synthetic,
    n: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let batch = batch.max(1);
    let payloads = (0..n)
        .step_by(batch)
        .enumerate()
        .map(|(i, from)| {
            Ok(Envelope {
                v: 1,
                gateway: synthetic.gateway.clone(),
                seq: i as u64 + 1,
                sent_at: time::OffsetDateTime::now_utc(),
                readings: synthetic.readings(from..(from + batch).min(n))?,
            }
            .encode())
        })
        .collect::<anyhow::Result<Vec<Vec<u8>>>>()?;
    let mut popts = MqttOptions::new(
        "bench-gw-baseline-pub",
        broker.url.host.clone(),
        broker.url.port,
    );
    popts.set_max_packet_size(Some(4 * 1024 * 1024));
    popts.set_outgoing_inflight_upper_limit(16);
    let (publisher, mut pevents) = AsyncClient::new(popts, 64);
    let messages = payloads.len();
    let topic = topic.to_owned();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for p in payloads {
            if publisher
                .publish(&topic, QoS::AtLeastOnce, false, p)
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
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = sender.await?.disconnect().await;
    Ok(rate)
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
        "| readings acknowledged to the forwarder / received by the subscriber | {} / {} |",
        f.acked, f.delivered
    );
    let _ = writeln!(
        out,
        "| queue fill, 1 000 per durable commit (readings/s) | {:.0} |",
        f.queue_fill
    );
    let _ = writeln!(
        out,
        "| CPU time per 1 000 readings while forwarding (ms), process / of it the counting subscriber | {:.1} / {} |",
        f.cpu_ms_per_1000,
        f.subscriber_cpu_ms_per_1000
            .map_or("unavailable".into(), |v| format!("{v:.1}"))
    );
    let _ = writeln!(
        out,
        "| RSS at the start / end of forwarding (MB) | {:.1} / {:.1} |",
        f.forwarding_rss_start_mb, f.forwarding_rss_end_mb
    );
    let _ = writeln!(
        out,
        "| peak RSS while forwarding (MB) | {} |",
        f.forwarding_rss_peak_mb
            .map_or("unavailable".into(), |v| format!("{v:.1}"))
    );
    let _ = writeln!(
        out,
        "\nCPU and RSS are this bench process's while it forwards, when it holds only the \
         forwarder, its SQLite queue, the tokio runtime and a small counting subscriber on a \
         thread of its own: the readings were generated and queued 1 000 at a time, and the \
         baseline runs after these figures are read. The peak is VmHWM, reset through \
         /proc/self/clear_refs just before forwarding starts{}.",
        if f.forwarding_rss_peak_mb.is_some() {
            ""
        } else {
            " (it could not be reset here, so no peak is given: it would be the queue fill's)"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_regenerates_the_readings_that_were_queued() {
        let gw = GatewayId::new("bench-gw").expect("a valid id");
        let synthetic = Synthetic::new(gw, 7);
        let queued: Vec<Reading> = (0..2500)
            .step_by(1000)
            .flat_map(|from| {
                synthetic
                    .readings(from..(from + 1000).min(2500))
                    .expect("readings")
            })
            .collect();
        let again: Vec<Reading> = (0..2500)
            .step_by(200)
            .flat_map(|from| {
                synthetic
                    .readings(from..(from + 200).min(2500))
                    .expect("readings")
            })
            .collect();
        assert_eq!(queued.len(), 2500);
        assert_eq!(queued, again);
    }

    #[test]
    fn a_threads_cpu_time_is_read_from_its_schedstat() {
        let me = std::fs::read_link("/proc/thread-self").expect("Linux /proc");
        let schedstat = Path::new("/proc").join(me).join("schedstat");
        let before = thread_cpu_time(&schedstat).expect("schedstat");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        assert!(thread_cpu_time(&schedstat).expect("schedstat") > before);
        assert_eq!(
            thread_cpu_time(Path::new("/proc/self/task/0/schedstat")),
            None
        );
    }
}
