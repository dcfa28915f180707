//! `rpm bench ingest`: ingest's sustained rate with durability on, beside two baselines
//! measured in the same run on the same machine:
//!
//! - **bare subscriber:** the same envelopes published to the same broker and received by a
//!   plain QoS 1 subscriber that does nothing with them (the broker's ceiling);
//! - **raw insert:** equivalent rows bulk-inserted into the same database with the same
//!   durability and transaction size, without validation, dedup or indexes (the database's
//!   ceiling; [`ingest::record::Record::raw_insert_benchmark`]);
//! - **raw insert, record's indexes:** the same into tables with the record's secondary
//!   indexes, so the ratio to it is the cost of ingest's own work (decoding, validation,
//!   dedup, sequence checks, acknowledgements) apart from the schema's
//!   ([`ingest::record::bench::RawShape::RecordIndexes`]).
//!
//! Targets (issue 6): ingest ≥ 0.8 × bare subscriber and ≥ 0.5 × raw insert, and at least
//! 20 000 readings/s on two cores.
//!
//! Realistic batches: a home hub in live operation sends a reading or a few per message; a
//! hub back from a week offline sends full ones. `--batch` sets the readings per message, and
//! `--rules` evaluates every new reading with the shipped threshold profiles in the batch
//! transaction, as `rpm ingest` does. The consumer runs with `rpm ingest`'s default
//! `[consumer]` settings.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ingest::consume::{Consumer, ConsumerSettings, IngestStats};
use ingest::record::Record;
use ingest::record::bench::BenchFleet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;
use vitals::{BrokerConfig, Envelope};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The broker (`mqtt://host:port`), e.g. a local Mosquitto.
    pub broker: String,
    /// PostgreSQL to measure as well (a scratch database: the bench registers a fleet).
    pub postgres: Option<String>,
    /// Readings per run.
    pub readings: usize,
    /// Readings per MQTT message.
    pub batch: usize,
    /// Patients in the synthetic fleet.
    pub patients: usize,
    /// Evaluate the rules (these profiles) on every new reading, as `rpm ingest` does.
    pub rules: Option<ingest::config::RulesConfig>,
}

/// One database's figures: the three rates of the same run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rates {
    /// `SQLite` or `PostgreSQL`.
    pub database: String,
    /// Baseline: a bare QoS 1 subscriber's rate from the same broker (readings/s).
    pub bare_subscriber: f64,
    /// Baseline: raw bulk inserts into the same database (readings/s).
    pub raw_insert: f64,
    /// Baseline: the same into tables with the record's indexes (readings/s).
    pub raw_insert_indexed: f64,
    /// Ingest with durability on (readings/s).
    pub ingest: f64,
}

/// Runs the benchmark and returns a markdown report.
pub async fn run(opts: &Options) -> anyhow::Result<String> {
    let rates = measure(opts).await?;
    Ok(render(opts, &rates))
}

/// The markdown report of [`measure`]'s figures.
pub fn render(opts: &Options, rates: &[Rates]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## rpm bench ingest\n\n{} readings in messages of {}, {} patients, rules {}; broker {}\n",
        opts.readings,
        opts.batch,
        opts.patients,
        if opts.rules.is_some() { "on" } else { "off" },
        opts.broker
    );
    let _ = writeln!(
        out,
        "| database | bare subscriber (readings/s) | raw insert (readings/s) | raw insert, record's indexes (readings/s) | ingest (readings/s) | ingest / subscriber | ingest / raw insert | ingest / raw insert with the record's indexes |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rates {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.database,
            r.bare_subscriber,
            r.raw_insert,
            r.raw_insert_indexed,
            r.ingest,
            r.ingest / r.bare_subscriber,
            r.ingest / r.raw_insert,
            r.ingest / r.raw_insert_indexed
        );
    }
    let _ = writeln!(
        out,
        "\nEach rate is readings divided by wall time from the first publish to the last reading \
         received (subscriber) or committed (ingest); one publisher, QoS 1, durability on."
    );
    out
}

/// Measures the three rates on SQLite (a temporary file) and, if given, PostgreSQL.
pub async fn measure(opts: &Options) -> anyhow::Result<Vec<Rates>> {
    let broker: BrokerConfig = BrokerConfig::new(
        opts.broker
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
    );
    let dir = tempfile::tempdir()?;
    let mut targets = vec![(
        "SQLite".to_owned(),
        format!("sqlite:{}", dir.path().join("bench.db").display()),
    )];
    if let Some(pg) = &opts.postgres {
        targets.push(("PostgreSQL".to_owned(), pg.clone()));
    }
    let mut rates = Vec::new();
    for (name, url) in targets {
        let record = Record::connect(&url, 8)
            .await
            .with_context(|| format!("cannot open {name}"))?;
        let fleet = BenchFleet::setup(&record, opts.patients).await?;
        let batch_max = ingest::config::ConsumerConfig::default().batch_max;
        let raw = record
            .raw_insert_benchmark(opts.readings, batch_max)
            .await?
            .readings_per_sec();
        let raw_indexed = record
            .raw_insert_benchmark_shaped(
                opts.readings,
                batch_max,
                ingest::record::bench::RawShape::RecordIndexes,
            )
            .await?
            .readings_per_sec();
        let first = record.count_readings().await? + 1_000_000_000;
        let bare = bare_subscriber(&broker, &fleet, first, opts).await?;
        let ingest =
            ingest_rate(&broker, &record, &fleet, first + opts.readings as u64, opts).await?;
        rates.push(Rates {
            database: name,
            bare_subscriber: bare,
            raw_insert: raw,
            raw_insert_indexed: raw_indexed,
            ingest,
        });
        record.close().await;
    }
    Ok(rates)
}

fn envelopes(fleet: &BenchFleet, first: u64, opts: &Options) -> Vec<Vec<u8>> {
    let mut seq = first;
    fleet
        .readings(first, opts.readings)
        .chunks(opts.batch.max(1))
        .map(|chunk| {
            seq += 1;
            Envelope {
                v: vitals::ENVELOPE_VERSION,
                gateway: fleet.gateway.clone(),
                seq,
                sent_at: time::OffsetDateTime::now_utc(),
                readings: chunk.iter().map(|(r, _)| r.clone()).collect(),
            }
            .encode()
        })
        .collect()
}

async fn publish_all(
    broker: BrokerConfig,
    client_id: String,
    payloads: Vec<Vec<u8>>,
    topic: String,
) -> anyhow::Result<()> {
    let mut opts = MqttOptions::new(client_id, broker.url.host.clone(), broker.url.port);
    opts.set_max_packet_size(Some(4 * 1024 * 1024));
    opts.set_outgoing_inflight_upper_limit(100);
    let (client, mut events) = AsyncClient::new(opts, 200);
    let n = payloads.len();
    let sender = tokio::spawn(async move {
        for p in payloads {
            if client
                .publish(&topic, QoS::AtLeastOnce, false, p)
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => anyhow::bail!("publisher lost the broker: {e}"),
        }
    }
    let client = sender.await?;
    let _ = client.disconnect().await;
    Ok(())
}

async fn bare_subscriber(
    broker: &BrokerConfig,
    fleet: &BenchFleet,
    first: u64,
    opts: &Options,
) -> anyhow::Result<f64> {
    let payloads = envelopes(fleet, first, opts);
    let expected = payloads.len();
    let topic = vitals::Topic::new(fleet.gateway.clone(), vitals::Channel::Readings).to_string();
    let mut sub_opts = MqttOptions::new(
        format!("bench-sub-{first}"),
        broker.url.host.clone(),
        broker.url.port,
    );
    sub_opts.set_max_packet_size(Some(4 * 1024 * 1024));
    let (sub, mut events) = AsyncClient::new(sub_opts, 200);
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            break;
        }
    }
    let started = Instant::now();
    let publisher = tokio::spawn(publish_all(
        broker.clone(),
        format!("bench-pub-{first}"),
        payloads,
        topic,
    ));
    let mut got = 0;
    while got < expected {
        match tokio::time::timeout(Duration::from_secs(60), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => got += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("subscriber lost the broker: {e}"),
            Err(_) => {
                anyhow::bail!("the bare subscriber received {got} of {expected} messages in 60 s")
            }
        }
    }
    let elapsed = started.elapsed();
    publisher.await??;
    let _ = sub.disconnect().await;
    Ok(opts.readings as f64 / elapsed.as_secs_f64())
}

async fn ingest_rate(
    broker: &BrokerConfig,
    record: &Record,
    fleet: &BenchFleet,
    first: u64,
    opts: &Options,
) -> anyhow::Result<f64> {
    let payloads = envelopes(fleet, first, opts);
    let topic = vitals::Topic::new(fleet.gateway.clone(), vitals::Channel::Readings).to_string();
    let stats = Arc::new(IngestStats::default());
    let shutdown = CancellationToken::new();
    // A fresh client id and group every run: the consumer's session is persistent, and a
    // session left by an earlier run (same id) would come back with the messages queued for
    // it, or fill the broker's per-client queue so that it drops this run's messages.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let client_id = format!("bench-ingest-{first}-{nonce}");
    // What `rpm ingest` runs with when the configuration says nothing.
    let defaults = ingest::config::ConsumerConfig::default();
    let mut options = ingest::consume::client_options(broker, &client_id, defaults.max_inflight)?;
    // No persistent session: each run has its own client id and group, and rumqttd 0.20
    // (the embedded broker) panics ("group must exists", routing.rs) when a persistent
    // shared-subscription client leaves with messages unacknowledged, killing the broker.
    options.set_clean_start(true);
    options.set_session_expiry_interval(None);
    let capacity = options.request_channel_capacity();
    let consumer = Consumer {
        settings: ConsumerSettings {
            group: format!("bench{first}-{nonce}"),
            batch_max: defaults.batch_max,
            batch_linger: defaults.batch_linger,
            max_inflight: defaults.max_inflight,
            max_future: Duration::from_secs(300),
            max_backoff: Duration::from_secs(2),
        },
        record: record.clone(),
        mqtt: AsyncClient::new(options, capacity),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let task = match &opts.rules {
        None => tokio::spawn(consumer.run()),
        Some(config) => {
            let rules = ingest::consume::Rules::load(config).with_context(|| {
                format!(
                    "cannot load the threshold profiles in {}",
                    config.profiles_dir.display()
                )
            })?;
            tokio::spawn(consumer.run_with(rules))
        }
    };
    // The consumer subscribes on connecting (and with rules, enrols the fleet first); give it
    // a moment before the clock starts.
    // A minute, and a second more per 500 patients (rebuilding is a few queries a patient).
    let allowed = Duration::from_secs(60 + fleet.patients.len() as u64 / 500);
    let ready = Instant::now() + allowed;
    while opts.rules.is_some()
        && stats.rules_rebuilds.load(Ordering::Relaxed) < fleet.patients.len() as u64
    {
        if Instant::now() > ready || task.is_finished() {
            anyhow::bail!(
                "ingest did not enrol the fleet's {} patients in {} s",
                fleet.patients.len(),
                allowed.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let publisher = tokio::spawn(publish_all(
        broker.clone(),
        format!("bench-pub-{first}"),
        payloads,
        topic,
    ));
    let deadline = started + Duration::from_secs(300);
    while stats.readings_stored.load(Ordering::Relaxed) < opts.readings as u64 {
        if Instant::now() > deadline || task.is_finished() {
            anyhow::bail!(
                "ingest stored {} of {} readings (rejected {})",
                stats.readings_stored.load(Ordering::Relaxed),
                opts.readings,
                stats.rejected_total()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    publisher.await??;
    shutdown.cancel();
    let _ = task.await;
    end_session(broker, &client_id).await;
    Ok(opts.readings as f64 / elapsed.as_secs_f64())
}

/// Ends the consumer's persistent session (a clean start with no expiry), so the broker does
/// not keep queueing for it after the run. Best effort.
async fn end_session(broker: &BrokerConfig, client_id: &str) {
    let opts = MqttOptions::new(client_id, broker.url.host.clone(), broker.url.port);
    let (client, mut events) = AsyncClient::new(opts, 10);
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if connected {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    }
}
