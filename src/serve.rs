//! Long-running subcommands: wiring components together, signals and orderly shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// A token cancelled by Ctrl-C or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: finishing the current batch");
        t.cancel();
    });
    token
}

/// A stable MQTT client id for a persistent session on this machine.
fn default_client_id(prefix: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    if host.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}-{host}")
    }
}

/// `rpm ingest`.
pub async fn ingest(config: ingest::config::IngestConfig) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signals();
    let mut record = ingest::record::Record::open(&config.database)
        .await
        .context("cannot open the patient record")?;
    // The notifier: its rows are enqueued with the alerts (same transaction), so it is set
    // on the record before anything clones it.
    let notifier_runtime = match &config.notifier {
        Some(n) => {
            let runtime = n.build().context("invalid [notifier] configuration")?;
            record = record.with_notifications(Arc::new(
                ingest::notify::Notifications::from_runtime(&runtime),
            ));
            Some(runtime)
        }
        None => {
            tracing::info!("no [notifier]: alerts are stored, nobody is notified");
            None
        }
    };
    // Dispatcher and escalator before the consumer: rows a crash left unsent go out, and
    // open, unacknowledged alerts are followed again.
    let notifier = match &notifier_runtime {
        Some(runtime) => Some(
            ingest::notify::start(&record, runtime, shutdown.clone())
                .await
                .context("cannot start the notifier")?,
        ),
        None => None,
    };
    let client_id = config
        .broker
        .client_id
        .clone()
        .unwrap_or_else(|| default_client_id("rpm-ingest"));
    let options =
        ingest::consume::client_options(&config.broker, &client_id, config.consumer.max_inflight)?;
    let capacity = options.request_channel_capacity();
    let stats = Arc::new(ingest::consume::IngestStats::default());
    // Profiles first: a bad threshold profile stops ingest before it touches the broker.
    let rules = ingest::consume::Rules::load(&config.rules).context("cannot load the rules")?;
    let consumer = ingest::consume::Consumer {
        settings: ingest::consume::ConsumerSettings {
            group: config.consumer.group.clone(),
            batch_max: config.consumer.batch_max,
            batch_linger: config.consumer.batch_linger,
            max_inflight: config.consumer.max_inflight,
            max_future: config.clock.max_future,
            max_backoff: Duration::from_secs(30),
        },
        record: record.clone(),
        mqtt: rumqttc::v5::AsyncClient::new(options, capacity),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    tracing::info!(broker = %config.broker.url, group = %config.consumer.group, "ingest starting");
    let mut http_state = ingest::http::HttpState::new(record.clone(), stats.clone());
    http_state.public_url = config.http.public_url.clone();
    http_state.console.settings = ingest::console::ConsoleSettings::from_config(
        &config.console,
        config.http.public_url.as_deref(),
    );
    http_state.console.profiles = Some(Arc::new(
        ingest::console::thresholds::ProfileCatalog::load(&config.rules)
            .map_err(anyhow::Error::msg)
            .context("cannot load the threshold profiles for the console")?,
    ));
    if let (Some(runtime), Some(running)) = (&notifier_runtime, &notifier) {
        http_state.ack = Some(ingest::http::ack::AckLinks {
            signer: runtime.signer.clone(),
            escalator: running.escalator.clone(),
        });
        http_state.notifier = Some(running.stats.clone());
    }
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let http = tokio::spawn(ingest::http::serve(
        listener,
        ingest::http::router(http_state),
        shutdown.clone(),
    ));
    let progress = {
        let stats = stats.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => tracing::info!(
                        messages = stats.messages.load(Ordering::Relaxed),
                        stored = stats.readings_stored.load(Ordering::Relaxed),
                        duplicates = stats.readings_duplicate.load(Ordering::Relaxed),
                        rejected = stats.rejected_total(),
                        "ingest progress"
                    ),
                }
            }
        })
    };
    consumer.run_with(rules).await?;
    progress.abort();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP API stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the HTTP API task failed"),
    }
    if let Some(running) = notifier {
        // The consumer has returned: make sure the notifier tasks stop too.
        shutdown.cancel();
        running.join().await;
    }
    record.close().await;
    tracing::info!(
        stored = stats.readings_stored.load(Ordering::Relaxed),
        rejected = stats.rejected_total(),
        "ingest stopped"
    );
    Ok(())
}

/// Where `rpm gateway` gets readings from.
pub enum Devices {
    /// Simulated devices playing a scenario (`--simulate`).
    Simulate(Box<simulators::scenario::Scenario>),
    /// Real devices through BlueZ.
    Bluetooth,
}

/// `rpm gateway`: devices feed the device sessions and the durable queue; the forwarder
/// drains the queue to the broker.
pub async fn gateway(
    config: gateway::config::GatewayConfig,
    devices: Devices,
    exit_when_drained: bool,
) -> anyhow::Result<()> {
    use gateway::publish::{Forwarder, ForwarderSettings, ForwarderStats};
    let shutdown = shutdown_on_signals();
    let id = config.gateway.id.clone();
    std::fs::create_dir_all(&config.gateway.data_dir)
        .with_context(|| format!("cannot create {}", config.gateway.data_dir.display()))?;
    let queue_path = config.gateway.data_dir.join("queue.db");
    let queue = gateway::queue::Queue::open(&queue_path).await?;
    let status_topic = vitals::Topic::new(id.clone(), vitals::Channel::Status).to_string();
    let will = gateway::publish::offline_status(&id)?;
    let options = gateway::publish::mqtt_options(
        &config.broker,
        id.as_str(),
        Some((status_topic, will)),
        config.forward.max_inflight,
    )?;
    let capacity = options.request_channel_capacity();
    let wake = Arc::new(tokio::sync::Notify::new());
    let stats = Arc::new(ForwarderStats::default());
    let (devices_tx, device_statuses) = tokio::sync::watch::channel(Vec::new());
    // The server's last good configuration stays in force, and in the status, until the server
    // sends a newer valid one: across restarts, and whatever is retained on the broker.
    let (config_tx, config_rx) = tokio::sync::watch::channel(saved_server_config(&config));
    let keeper = tokio::spawn(keep_server_configs(
        config.gateway.data_dir.clone(),
        config_rx.clone(),
    ));
    let forwarder = Forwarder {
        settings: ForwarderSettings {
            gateway: id.clone(),
            forward: config.forward.clone(),
            status_interval: Duration::from_secs(60),
            disk_low_bytes: config.queue.disk_low_bytes,
            max_backoff: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
        },
        queue: queue.clone(),
        mqtt: rumqttc::v5::AsyncClient::new(options, capacity),
        wake: wake.clone(),
        devices: device_statuses,
        config_out: config_tx,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let forwarding = tokio::spawn(forwarder.run());
    match devices {
        Devices::Simulate(scenario) => {
            simulate(&config, *scenario, &queue_path, &devices_tx).await?;
            wake.notify_one();
        }
        Devices::Bluetooth => {
            bluetooth(
                &config,
                queue.clone(),
                &devices_tx,
                config_rx,
                shutdown.clone(),
            )
            .await?;
        }
    }
    if exit_when_drained {
        loop {
            let depth = queue.depth().await?.readings;
            if depth == 0 {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        shutdown.cancel();
    } else {
        shutdown.cancelled().await;
    }
    forwarding.await??;
    // The forwarder is gone, and with it the sender: the keeper has saved the last config.
    if let Err(e) = keeper.await {
        tracing::warn!(error = %e, "the configuration keeper failed");
    }
    tracing::info!(
        readings_acked = stats.readings_acked.load(Ordering::Relaxed),
        messages = stats.messages_sent.load(Ordering::Relaxed),
        "gateway stopped"
    );
    Ok(())
}

/// Plays the scenario on simulated devices into the queue, ending today.
async fn simulate(
    config: &gateway::config::GatewayConfig,
    scenario: simulators::scenario::Scenario,
    queue_path: &std::path::Path,
    devices_tx: &tokio::sync::watch::Sender<Vec<vitals::DeviceStatus>>,
) -> anyhow::Result<()> {
    if !config.devices.is_empty() {
        tracing::info!(
            "simulating: the scenario's devices and bindings replace the configured allowlist"
        );
    }
    let days = i64::from(scenario.days);
    let start = (time::OffsetDateTime::now_utc().date() - time::Duration::days(days))
        .midnight()
        .assume_utc();
    tracing::info!(scenario = %scenario.name, days, "playing the scenario on simulated devices");
    let outcome = simulators::scenario::run_as(
        &scenario,
        queue_path,
        config.gateway.id.clone(),
        Some(start),
    )
    .await?;
    let played: u64 = outcome.stats.values().map(|s| s.readings_queued).sum();
    let stats: Vec<gateway::device::SessionStats> = outcome.stats.into_values().collect();
    let _ = devices_tx.send(device_statuses(&stats));
    tracing::info!(readings_queued = played, "scenario played");
    Ok(())
}

fn device_statuses(stats: &[gateway::device::SessionStats]) -> Vec<vitals::DeviceStatus> {
    let now = time::OffsetDateTime::now_utc();
    stats
        .iter()
        .filter_map(|s| {
            Some(vitals::DeviceStatus {
                id: s.device?,
                last_contact: (s.connects > 0).then_some(now),
                battery: s.battery,
                clock_offset_ms: s.clock_offset.map(|d| d.whole_milliseconds() as i64),
            })
        })
        .collect()
}

/// The server's last good config, kept in the data directory, checked as when it arrived.
fn saved_server_config(config: &gateway::config::GatewayConfig) -> Option<vitals::GatewayConfig> {
    let path = config.gateway.data_dir.join(SERVER_CONFIG);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot read the server's last configuration");
            return None;
        }
    };
    match gateway::publish::accept_config(&config.gateway.id, &bytes, None) {
        Ok(Some(c)) => {
            tracing::info!(
                version = c.version,
                devices = c.devices.len(),
                "using the server's last good configuration"
            );
            Some(c)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "ignoring the saved server configuration");
            None
        }
    }
}

/// Where the server's last good config is kept, in the data directory.
const SERVER_CONFIG: &str = "server-config.json";

/// Saves every configuration the forwarder takes from the server, until the forwarder stops.
async fn keep_server_configs(
    dir: std::path::PathBuf,
    mut configs: tokio::sync::watch::Receiver<Option<vitals::GatewayConfig>>,
) {
    while configs.changed().await.is_ok() {
        let Some(c) = configs.borrow_and_update().clone() else {
            continue;
        };
        match save_server_config(&dir, &c) {
            Ok(()) => tracing::debug!(version = c.version, "kept the server's configuration"),
            Err(e) => {
                tracing::error!(error = %e, "could not keep the server's configuration on disk")
            }
        }
    }
}

/// Keeps a configuration the server sent, atomically (write, sync, rename).
fn save_server_config(dir: &std::path::Path, c: &vitals::GatewayConfig) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join("server-config.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(c).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SERVER_CONFIG))?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

/// Real devices through BlueZ: scans for health-service advertisers and keeps one device
/// session per device found (the session connects, checks the allowlist against the device's
/// identity, and queues its readings). A new configuration from the server replaces the
/// allowlist and restarts the sessions.
async fn bluetooth(
    config: &gateway::config::GatewayConfig,
    queue: gateway::queue::Queue,
    devices_tx: &tokio::sync::watch::Sender<Vec<vitals::DeviceStatus>>,
    mut server_config: tokio::sync::watch::Receiver<Option<vitals::GatewayConfig>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use gateway::device::bluez::{BluezConfig, BluezSource};
    use gateway::device::session::{Session, SessionConfig, SystemClock};
    use gateway::device::{Address, DeviceSource as _, ScanFilter};
    use std::collections::HashMap;

    const RETRY_REFUSED: Duration = Duration::from_secs(600);
    let source = Arc::new(BluezSource::new(BluezConfig::from_ble(&config.ble)).await?);
    // The server's last good config if it sent one, else the file's `[[devices]]`.
    let mut bindings: Arc<[vitals::DeviceBinding]> = match server_config.borrow().as_ref() {
        Some(c) => c.devices.clone().into(),
        None => config.devices.clone().into(),
    };
    let mut sessions: HashMap<Address, gateway::device::session::SessionHandle> = HashMap::new();
    let mut refused: HashMap<Address, tokio::time::Instant> = HashMap::new();
    let mut failures = 0u32;
    tracing::info!(
        devices = bindings.len(),
        "scanning for the allowlisted devices"
    );
    loop {
        // Sessions that ended (a device not on the allowlist, a permanent error) are not
        // retried for a while.
        sessions.retain(|address, h| {
            if h.is_finished() {
                refused.insert(*address, tokio::time::Instant::now());
                false
            } else {
                true
            }
        });
        refused.retain(|_, at| at.elapsed() < RETRY_REFUSED);
        let filter = ScanFilter::default();
        let found = tokio::select! {
            () = shutdown.cancelled() => break,
            r = source.scan(&filter) => r,
        };
        match found {
            Ok(ads) => {
                failures = 0;
                for ad in ads {
                    if sessions.contains_key(&ad.address) || refused.contains_key(&ad.address) {
                        continue;
                    }
                    let session = Session::new(
                        source.clone(),
                        ad.address,
                        bindings.clone(),
                        queue.clone(),
                        Arc::new(SystemClock),
                        SessionConfig::from_ble(config.gateway.id.clone(), &config.ble),
                    );
                    sessions.insert(ad.address, session.spawn(shutdown.child_token()));
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "Bluetooth scan failed");
            }
        }
        let stats: Vec<_> = sessions
            .values()
            .map(|h| h.stats().borrow().clone())
            .collect();
        devices_tx.send_if_modified(|current| {
            let next = device_statuses(&stats);
            let changed = *current != next;
            *current = next;
            changed
        });
        let pause = if failures > 0 {
            mqtt::backoff(failures, Duration::from_secs(60))
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
            changed = server_config.changed() => {
                if changed.is_err() {
                    continue;
                }
                let Some(c) = server_config.borrow_and_update().clone() else { continue };
                tracing::info!(version = c.version, devices = c.devices.len(), "new allowlist: restarting device sessions");
                bindings = c.devices.into();
                sessions.clear();
                refused.clear();
            }
        }
    }
    for (_, h) in sessions.drain() {
        let _ = h.shutdown().await;
    }
    Ok(())
}
