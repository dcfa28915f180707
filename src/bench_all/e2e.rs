//! End-to-end latency: from a simulated device notification entering a hub's gateway pipeline
//! to the ingest transaction that stores the reading, evaluates it and (when it raises an
//! alert) enqueues the notification rows in the outbox, committed.
//!
//! ```text
//!  PLX spot-check bytes ─► codec::decode ─► mapping ─► durable queue ─► forwarder ─┐  (H hubs)
//!                                                                                  ▼
//!           ingest consumer ◄─ $share/ingest/… ◄─ broker (embedded rumqttd, or --broker)
//!             └─► validate ─► one transaction: readings + rules + alerts + outbox rows ─► commit
//! ```
//!
//! Every part is production code wired as `rpm gateway` and `rpm ingest` wire it (the hubs
//! with `rpm gateway`'s default `[forward]` settings, ingest with its default `[consumer]`
//! settings, the shipped threshold profiles and a notifier directory covering every patient),
//! in this process. The notifier's dispatcher does not run: the measurement ends when the
//! notification is enqueued, not sent.
//!
//! **Start.** Readings arrive open-loop at the offered rate; each one's latency counts from
//! its *scheduled* arrival, so a generator (or hub) that falls behind shows as latency rather
//! than hiding it (no coordinated omission).
//!
//! **End.** The consumer commits batches one at a time, in order, and counts each in
//! [`IngestStats::batches`] right after its commit. Every reading of a batch carries the
//! batch's `ingested_at` stamp (taken as its transaction begins), so the readings' distinct
//! stamps, sorted, number the batches; a watcher thread notes when the counter passes each
//! number (sampled every [`WATCH_EVERY`]). If the numbers do not line up (a batch retried
//! message by message, say) the report says so and falls back to the `ingested_at` stamp.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use gateway::codec::Decoded;
use gateway::device::mapping::{self, ClockCorrection, MapContext};
use gateway::publish::{Forwarder, ForwarderSettings, ForwarderStats};
use hdrhistogram::Histogram;
use ingest::consume::IngestStats;
use ingest::record::Record;
use ingest::record::bench::{BenchPatient, bench_device};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vitals::{DeviceBinding, DeviceIdentity, GatewayId, PatientKey, ReadingId};

use super::Percentiles;

/// How often the watcher thread samples the consumer's committed-batch counter.
pub const WATCH_EVERY: Duration = Duration::from_micros(200);
/// One patient in this many is unstable: SpO2 86 % twice, then 95 % twice, over and over,
/// so the COPD profile's confirmed low-SpO2 rule raises, clears and raises again.
const UNSTABLE_EVERY: usize = 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The broker the hubs and ingest use.
    pub broker: SocketAddr,
    /// Patients (one pulse oximeter each).
    pub patients: usize,
    /// Home hubs the patients are spread over (patient `i` on hub `i % hubs`).
    pub hubs: usize,
    /// Where the record and the hubs' queues go (a fresh directory).
    pub dir: PathBuf,
}

/// One load step.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// Offered load (readings/s over all hubs).
    pub offered: f64,
    /// How long readings arrive.
    pub duration: Duration,
}

/// What one step measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepResult {
    /// Offered load (readings/s).
    pub offered: f64,
    /// Readings queued at the hubs, divided by the time it took (the step's duration, or
    /// longer when the hubs could not keep up).
    pub achieved: f64,
    /// Every reading: device notification → its transaction committed.
    pub latency: Percentiles,
    /// Readings that raised an alert: device notification → the alert and its outbox rows
    /// committed.
    pub alerts: Percentiles,
    /// Baseline: the same rate of bare QoS 1 messages through the same broker, publish →
    /// a subscriber receives it.
    pub broker: Percentiles,
    /// Whole-process CPU time (hubs, broker, ingest, rules) per 1 000 readings (ms).
    pub cpu_ms_per_1000: f64,
}

/// One fleet's run over its load steps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Run {
    /// Patients.
    pub patients: usize,
    /// Hubs.
    pub hubs: usize,
    /// Registering the fleet and enrolling it in the rules engine (s).
    pub setup_s: f64,
    /// Resident memory of the process before the fleet was set up (MB).
    pub rss_before_mb: f64,
    /// ... once the fleet was registered, enrolled and its hubs connected (MB).
    pub rss_ready_mb: f64,
    /// ... after the last step (MB).
    pub rss_end_mb: f64,
    /// The load steps.
    pub steps: Vec<StepResult>,
    /// `true`: the end is the commit (see the module doc); `false`: the transaction's start.
    pub end_is_commit: bool,
    /// Alerts raised during the run.
    pub alerts_raised: u64,
    /// Outbox rows enqueued during the run.
    pub outbox_rows: u64,
}

/// A hub: its queue and forwarder, and the patients whose devices talk to it.
struct Hub {
    id: GatewayId,
    queue: gateway::queue::Queue,
    wake: Arc<Notify>,
    forwarder: tokio::task::JoinHandle<Result<(), gateway::publish::ForwarderError>>,
    patients: Arc<Vec<(DeviceBinding, DeviceIdentity)>>,
    _devices: tokio::sync::watch::Sender<Vec<vitals::DeviceStatus>>,
}

/// Sets the fleet up, runs the steps in order and measures them.
pub async fn run(setup: &Setup, steps: &[Step]) -> anyhow::Result<Run> {
    let started = Instant::now();
    let (rss_before, _) = crate::bench_gateway::rss_kb();
    let dir = &setup.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::demo::fleet::write_profiles(&dir.join("profiles"))?;
    let hub_ids: Vec<GatewayId> = (0..setup.hubs.max(1))
        .map(|h| GatewayId::new(format!("bench-hub-{h}")))
        .collect::<Result<_, _>>()?;
    let fleet: Vec<BenchPatient> = (0..setup.patients)
        .map(|i| {
            Ok(BenchPatient {
                gateway: hub_ids[i % hub_ids.len()].clone(),
                patient: PatientKey::new(format!("bench-pk-{i}"))?,
                device: bench_device(i as u32),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let config = ingest_config(setup.broker, dir, &fleet)?;
    let runtime = config
        .notifier
        .as_ref()
        .context("the bench configures a notifier")?
        .build()
        .context("the bench's notifier configuration")?;
    let record = Record::open(&config.database)
        .await
        .context("cannot open the bench record")?
        .with_notifications(Arc::new(ingest::notify::Notifications::from_runtime(
            &runtime,
        )));
    record
        .bench_register(
            &fleet,
            "copd",
            OffsetDateTime::now_utc() - time::Duration::DAY,
        )
        .await?;

    // Ingest, as `rpm ingest` runs it (without the HTTP API and the dispatcher).
    let stats = Arc::new(IngestStats::default());
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let stats = stats.clone();
        let watching = watching.clone();
        std::thread::Builder::new()
            .name("bench-commit-watch".into())
            .spawn(move || watch_commits(&stats, &watching))?
    };
    let server = CancellationToken::new();
    let rules = ingest::consume::Rules::load(&config.rules).context("cannot load the rules")?;
    let mut options = ingest::consume::client_options(
        &config.broker,
        &format!("bench-e2e-ingest-{}", setup.patients),
        config.consumer.max_inflight,
    )?;
    // No persistent session (see `bench_ingest::ingest_rate`: rumqttd 0.20 panics when a
    // persistent shared-subscription client leaves with messages unacknowledged).
    options.set_clean_start(true);
    options.set_session_expiry_interval(None);
    let capacity = options.request_channel_capacity();
    let consumer = ingest::consume::Consumer {
        settings: ingest::consume::ConsumerSettings {
            group: config.consumer.group.clone(),
            batch_max: config.consumer.batch_max,
            batch_linger: config.consumer.batch_linger,
            max_inflight: config.consumer.max_inflight,
            max_future: config.clock.max_future,
            max_backoff: Duration::from_secs(2),
        },
        record: record.clone(),
        mqtt: AsyncClient::new(options, capacity),
        stats: stats.clone(),
        shutdown: server.clone(),
    };
    let consumer = tokio::spawn(consumer.run_with(rules));
    let allowed = Duration::from_secs(60 + setup.patients as u64 / 500);
    wait_for(
        allowed,
        "ingest to enrol the fleet in the rules engine",
        || {
            consumer.is_finished()
                || stats.rules_rebuilds.load(Ordering::Relaxed) >= fleet.len() as u64
        },
    )
    .await?;
    anyhow::ensure!(!consumer.is_finished(), "the ingest consumer stopped");

    // The hubs; ingest holds its subscriptions once it has recorded every hub's status.
    let hubs_token = CancellationToken::new();
    let mut hubs = Vec::new();
    for (h, id) in hub_ids.iter().enumerate() {
        let patients = fleet
            .iter()
            .skip(h)
            .step_by(hub_ids.len())
            .map(|p| {
                (
                    DeviceBinding {
                        id: p.device,
                        patient: Some(p.patient.clone()),
                        users: Vec::new(),
                    },
                    DeviceIdentity::new(p.device),
                )
            })
            .collect();
        hubs.push(start_hub(setup.broker, dir, id.clone(), patients, &hubs_token).await?);
    }
    wait_for(
        Duration::from_secs(30),
        "every hub's status to reach ingest",
        || stats.statuses.load(Ordering::Relaxed) >= hubs.len() as u64,
    )
    .await?;
    let setup_s = started.elapsed().as_secs_f64();
    let (rss_ready, _) = crate::bench_gateway::rss_kb();

    // The steps.
    let mut stamps: Vec<(ReadingId, usize, i64)> = Vec::new();
    let mut step_figures = Vec::new();
    let mut offsets = vec![0u64; hubs.len()];
    for (s, step) in steps.iter().enumerate() {
        let broker = broker_latency(setup.broker, step).await?;
        let cpu_before = crate::bench_gateway::cpu_time();
        let t0 = Instant::now();
        let t0_us = unix_us(OffsetDateTime::now_utc());
        let per_hub = step.offered / hubs.len() as f64;
        let mut drivers = tokio::task::JoinSet::new();
        for (h, hub) in hubs.iter().enumerate() {
            drivers.spawn(drive(Driver {
                index: h,
                gateway: hub.id.clone(),
                queue: hub.queue.clone(),
                wake: hub.wake.clone(),
                patients: hub.patients.clone(),
                rate: per_hub,
                duration: step.duration,
                t0,
                t0_us,
                offset: offsets[h],
            }));
        }
        let mut arrived = 0u64;
        let mut finished = t0 + step.duration;
        while let Some(done) = drivers.join_next().await {
            let (h, done, at) = done??;
            finished = finished.max(at);
            offsets[h] += done.len() as u64;
            arrived += done.len() as u64;
            stamps.extend(done.into_iter().map(|(id, at)| (id, s, at)));
        }
        let expected = stamps.len() as u64;
        wait_for(
            Duration::from_secs(300),
            "ingest to store the step's readings",
            || stats.readings_stored.load(Ordering::Relaxed) >= expected,
        )
        .await
        .with_context(|| {
            format!(
                "stored {} of {expected}, rejected {}",
                stats.readings_stored.load(Ordering::Relaxed),
                stats.rejected_total()
            )
        })?;
        let cpu = crate::bench_gateway::cpu_time().saturating_sub(cpu_before);
        step_figures.push((
            step,
            // A hub that could not keep up took longer than the step to queue its readings.
            arrived as f64 / (finished - t0).as_secs_f64(),
            broker,
            cpu.as_secs_f64() * 1e3 / (arrived.max(1) as f64 / 1e3),
        ));
    }
    let (rss_end, _) = crate::bench_gateway::rss_kb();

    // Stop in order: the hubs, ingest (its last batch committed), the watcher.
    hubs_token.cancel();
    for hub in hubs {
        hub.forwarder.await?.context("a hub's forwarder")?;
        hub.queue.close().await;
    }
    server.cancel();
    consumer.await?.context("the ingest consumer")?;
    let batches = stats.batches.load(Ordering::Relaxed);
    watching.store(false, Ordering::Relaxed);
    let samples = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the commit watcher panicked"))?;
    record.close().await;

    let found = read_record(&dir.join("record.db")).await?;
    let ends = commit_times(&found.readings, &samples, batches);
    let end_is_commit = ends.is_some();
    let end_of = |ingested_at: i64| match &ends {
        Some(ends) => ends.get(&ingested_at).copied().unwrap_or(ingested_at),
        None => ingested_at,
    };
    let mut all: Vec<Histogram<u64>> = steps
        .iter()
        .map(|_| histogram())
        .collect::<Result<_, _>>()?;
    let mut alerting: Vec<Histogram<u64>> = steps
        .iter()
        .map(|_| histogram())
        .collect::<Result<_, _>>()?;
    let started_at: HashMap<String, (usize, i64)> = stamps
        .into_iter()
        .map(|(id, s, at)| (id.to_string(), (s, at)))
        .collect();
    anyhow::ensure!(
        found.readings.len() == started_at.len(),
        "the record holds {} readings, {} were sent",
        found.readings.len(),
        started_at.len()
    );
    for (id, ingested_at) in &found.readings {
        let (s, at) = started_at
            .get(id)
            .with_context(|| format!("reading {id} in the record was never sent"))?;
        let us = (end_of(*ingested_at) - at).max(1) as u64;
        all[*s].saturating_record(us);
        if found.raised.contains(id) {
            alerting[*s].saturating_record(us);
        }
    }
    Ok(Run {
        patients: setup.patients,
        hubs: hub_ids.len(),
        setup_s,
        rss_before_mb: rss_before as f64 / 1024.0,
        rss_ready_mb: rss_ready as f64 / 1024.0,
        rss_end_mb: rss_end as f64 / 1024.0,
        steps: step_figures
            .into_iter()
            .zip(all.iter().zip(&alerting))
            .map(|((step, achieved, broker, cpu), (h, a))| StepResult {
                offered: step.offered,
                achieved,
                latency: Percentiles::from_us(h),
                alerts: Percentiles::from_us(a),
                broker,
                cpu_ms_per_1000: cpu,
            })
            .collect(),
        end_is_commit,
        alerts_raised: found.raised.len() as u64,
        outbox_rows: found.outbox,
    })
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 1 h, three significant figures.
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

fn unix_us(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

async fn wait_for(
    allowed: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + allowed;
    while !done() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {} s",
            allowed.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The watcher thread: (batches committed, Unix µs) each time the count changes.
fn watch_commits(stats: &IngestStats, watching: &AtomicBool) -> Vec<(u64, i64)> {
    let mut samples = vec![(0, unix_us(OffsetDateTime::now_utc()))];
    let mut last = 0;
    while watching.load(Ordering::Relaxed) {
        let n = stats.batches.load(Ordering::Relaxed);
        if n != last {
            last = n;
            samples.push((n, unix_us(OffsetDateTime::now_utc())));
        }
        std::thread::sleep(WATCH_EVERY);
    }
    let n = stats.batches.load(Ordering::Relaxed);
    if n != last {
        samples.push((n, unix_us(OffsetDateTime::now_utc())));
    }
    samples
}

/// Commit time of each batch by its `ingested_at` stamp, when the stamps and the counter
/// agree on the number of batches.
fn commit_times(
    readings: &[(String, i64)],
    samples: &[(u64, i64)],
    batches: u64,
) -> Option<HashMap<i64, i64>> {
    let mut stamps: Vec<i64> = readings.iter().map(|(_, at)| *at).collect();
    stamps.sort_unstable();
    stamps.dedup();
    if stamps.len() as u64 != batches {
        return None;
    }
    stamps
        .iter()
        .enumerate()
        .map(|(k, &began)| {
            let i = samples.partition_point(|(n, _)| *n < k as u64 + 1);
            samples.get(i).map(|(_, t)| (began, (*t).max(began)))
        })
        .collect()
}

struct Found {
    /// (reading id, ingested_at) of every reading.
    readings: Vec<(String, i64)>,
    /// Readings that raised an alert.
    raised: std::collections::HashSet<String>,
    outbox: u64,
}

async fn read_record(path: &Path) -> anyhow::Result<Found> {
    use sqlx::Row as _;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .context("cannot read the bench record")?;
    let readings = sqlx::query("SELECT reading_id, ingested_at FROM readings")
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect();
    // An alert event's `at` is the raising reading's measurement time, to the millisecond.
    let raised = sqlx::query(
        "SELECT r.reading_id FROM alert_events e JOIN readings r \
         ON r.patient_key = e.patient_key AND r.measured_at >= e.at AND r.measured_at < e.at + 1000 \
         WHERE e.kind = 'raised'",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM notifier_outbox")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(Found {
        readings,
        raised,
        outbox: outbox.max(0) as u64,
    })
}

async fn start_hub(
    broker: SocketAddr,
    dir: &Path,
    id: GatewayId,
    patients: Vec<(DeviceBinding, DeviceIdentity)>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Hub> {
    let hub_dir = dir.join("hubs").join(id.as_str());
    std::fs::create_dir_all(&hub_dir)
        .with_context(|| format!("cannot create {}", hub_dir.display()))?;
    let queue = gateway::queue::Queue::open(hub_dir.join("queue.db")).await?;
    let url: vitals::BrokerUrl = format!("mqtt://{broker}")
        .parse()
        .map_err(|e| anyhow::anyhow!("broker url: {e}"))?;
    let status_topic = vitals::Topic::new(id.clone(), vitals::Channel::Status).to_string();
    let will = gateway::publish::offline_status(&id)?;
    // `rpm gateway`'s defaults: batches of 200, a 200 ms linger, 16 in flight.
    let forward = gateway::config::ForwardConfig::default();
    let options = gateway::publish::mqtt_options(
        &vitals::BrokerConfig::new(url),
        id.as_str(),
        Some((status_topic, will)),
        forward.max_inflight,
    )?;
    let capacity = options.request_channel_capacity();
    let (devices_tx, devices) = tokio::sync::watch::channel(Vec::new());
    let (config_tx, _) = tokio::sync::watch::channel(None);
    let wake = Arc::new(Notify::new());
    let forwarder = Forwarder {
        settings: ForwarderSettings {
            gateway: id.clone(),
            forward,
            status_interval: Duration::from_secs(60),
            disk_low_bytes: 0,
            max_backoff: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
        },
        queue: queue.clone(),
        mqtt: AsyncClient::new(options, capacity),
        wake: wake.clone(),
        devices,
        config_out: config_tx,
        stats: Arc::new(ForwarderStats::default()),
        shutdown: shutdown.clone(),
    };
    Ok(Hub {
        id,
        queue,
        wake,
        forwarder: tokio::spawn(forwarder.run()),
        patients: Arc::new(patients),
        _devices: devices_tx,
    })
}

/// One hub's devices during one step.
struct Driver {
    /// Which hub.
    index: usize,
    gateway: GatewayId,
    queue: gateway::queue::Queue,
    wake: Arc<Notify>,
    patients: Arc<Vec<(DeviceBinding, DeviceIdentity)>>,
    /// Readings/s at this hub.
    rate: f64,
    duration: Duration,
    t0: Instant,
    t0_us: i64,
    /// Readings this hub sent in earlier steps (continues each patient's pattern).
    offset: u64,
}

/// Delivers the hub's readings at its rate, open loop, patients in turn: a PLX spot-check
/// notification decoded and mapped by the gateway's code, pushed to the durable queue, the
/// forwarder woken. Returns the hub's index, each reading's id and scheduled arrival (Unix
/// µs), and when the last one was in the queue.
async fn drive(d: Driver) -> anyhow::Result<(usize, Vec<(ReadingId, i64)>, Instant)> {
    let interval = 1.0 / d.rate.max(1e-3);
    let n = (d.duration.as_secs_f64() / interval).floor() as u64;
    let mut sent = Vec::with_capacity(n as usize);
    let hub = d.patients.len().max(1) as u64;
    for i in 0..n {
        let due = Duration::from_secs_f64(i as f64 * interval);
        tokio::time::sleep_until(d.t0 + due).await;
        // The hub's patients take turns; patient `p`'s `k`-th reading overall.
        let global = d.offset + i;
        let p = (global % hub) as usize;
        let k = global / hub;
        let (binding, identity) = &d.patients[p];
        let unstable = bench_index(binding).is_some_and(|i| i % UNSTABLE_EVERY == 0);
        let spo2: u8 = if unstable && k % 4 < 2 {
            86
        } else {
            94 + (global % 4) as u8
        };
        let pulse = 64 + (global % 23) as u8;
        // Flags 0, SpO2 and pulse rate as SFLOATs with exponent 0.
        let bytes = [0x00, spo2, 0x00, pulse, 0x00];
        let Decoded::PlxSpotCheckMeasurement(m) = gateway::codec::decode(0x2A5E, &bytes)? else {
            anyhow::bail!("a PLX spot-check did not decode as one");
        };
        let ctx = MapContext {
            gateway: &d.gateway,
            binding,
            identity,
            received_at: OffsetDateTime::now_utc(),
            clock: ClockCorrection {
                device_minus_gateway: None,
                zone: time::UtcOffset::UTC,
            },
            from_storage: false,
            low_battery: false,
        };
        let reading = mapping::plx_spot_check(&m, &ctx)?;
        d.queue.push(std::slice::from_ref(&reading)).await?;
        d.wake.notify_one();
        sent.push((reading.id, d.t0_us + due.as_micros() as i64));
    }
    Ok((d.index, sent, Instant::now()))
}

/// The `i` of `bench-pk-{i}`, the patient a bench device is bound to.
fn bench_index(binding: &DeviceBinding) -> Option<usize> {
    binding
        .patient
        .as_ref()?
        .as_str()
        .strip_prefix("bench-pk-")?
        .parse()
        .ok()
}

/// The baseline: bare QoS 1 messages the size of a one-reading envelope at the step's rate
/// through the same broker; latency from the scheduled publish to the subscriber's receipt.
async fn broker_latency(broker: SocketAddr, step: &Step) -> anyhow::Result<Percentiles> {
    let topic = "rpm/bench/latency";
    let host = broker.ip().to_string();
    let mut sub_opts = MqttOptions::new("bench-latency-sub", host.clone(), broker.port());
    sub_opts.set_max_packet_size(Some(1024 * 1024));
    let (sub, mut sub_events) = AsyncClient::new(sub_opts, 64);
    sub.subscribe(topic, QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_events.poll().await? {
            break;
        }
    }
    let mut pub_opts = MqttOptions::new("bench-latency-pub", host, broker.port());
    pub_opts.set_outgoing_inflight_upper_limit(256);
    let (publisher, mut pub_events) = AsyncClient::new(pub_opts, 512);
    let pub_loop = tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
    let interval = 1.0 / step.offered.max(1e-3);
    let n = (step.duration.as_secs_f64() / interval).floor() as u64;
    let t0 = Instant::now();
    let t0_us = unix_us(OffsetDateTime::now_utc());
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let due = Duration::from_secs_f64(i as f64 * interval);
            tokio::time::sleep_until(t0 + due).await;
            let mut payload = vec![b' '; 400];
            let at = (t0_us + due.as_micros() as i64).to_le_bytes();
            payload[..8].copy_from_slice(&at);
            if publisher
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
        publisher
    });
    let mut h = histogram()?;
    let deadline = t0 + step.duration + Duration::from_secs(30);
    while h.len() < n {
        let event = tokio::select! {
            e = sub_events.poll() => e?,
            () = tokio::time::sleep_until(deadline) => {
                anyhow::bail!("the bare subscriber received {} of {n} messages", h.len())
            }
        };
        if let Event::Incoming(Packet::Publish(p)) = event
            && let Some(at) = p.payload.get(..8)
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(at);
            let sent = i64::from_le_bytes(b);
            h.saturating_record((unix_us(OffsetDateTime::now_utc()) - sent).max(1) as u64);
        }
    }
    let publisher = sender.await?;
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    pub_loop.abort();
    Ok(Percentiles::from_us(&h))
}

/// The ingest configuration the bench runs with, in `rpm ingest`'s file format: the broker,
/// SQLite in `dir`, the shipped profiles, and a notifier whose one care team covers every
/// patient (one nurse on duty around the clock), so each raised alert enqueues outbox rows.
fn ingest_config(
    broker: SocketAddr,
    dir: &Path,
    fleet: &[BenchPatient],
) -> anyhow::Result<ingest::config::IngestConfig> {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let d = dir.to_str().context("the bench directory is not UTF-8")?;
    let patients: Vec<String> = fleet.iter().map(|p| q(p.patient.as_str())).collect();
    let text = format!(
        r#"[broker]
url = "mqtt://{broker}"

[database]
url = {db}

[rules]
profiles_dir = {profiles}
default_profile = "default"
tick_every = "1h"

[notifier.smtp]
host = "127.0.0.1"
port = 9
security = "none"
from = "RPM bench <alerts@bench.invalid>"

[notifier.links]
console_url = "http://127.0.0.1:9"
ack_key = "{key}"

[[notifier.directory.people]]
id = "nurse.bench"
name = "Bench Nurse"
contacts = [{{ channel = "email", address = "nurse@bench.invalid" }}]

[[notifier.directory.teams]]
id = "bench-team"
patients = [{patients}]

[[notifier.directory.teams.tiers]]
time_zone = "UTC"
weekly = [{{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "00:00", person = "nurse.bench" }}]
"#,
        db = q(&format!("sqlite:{d}/record.db")),
        profiles = q(&format!("{d}/profiles")),
        // Signs acknowledgement links nobody will follow: a fixed key is enough.
        key = "b".repeat(64),
        patients = patients.join(", "),
    );
    let config: ingest::config::IngestConfig =
        toml::from_str(&text).context("the bench's ingest configuration")?;
    config
        .check()
        .map_err(|(key, why)| anyhow::anyhow!("bench ingest configuration: {key}: {why}"))?;
    Ok(config)
}
