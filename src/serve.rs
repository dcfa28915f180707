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
    let record = ingest::record::Record::open(&config.database)
        .await
        .context("cannot open the patient record")?;
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
    record.close().await;
    tracing::info!(
        stored = stats.readings_stored.load(Ordering::Relaxed),
        rejected = stats.rejected_total(),
        "ingest stopped"
    );
    Ok(())
}

/// `rpm gateway --simulate`: the scenario's devices feed the real device sessions and the
/// durable queue; the forwarder drains the queue to the broker.
pub async fn gateway(
    config: gateway::config::GatewayConfig,
    scenario: simulators::scenario::Scenario,
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
    let (devices_tx, devices) = tokio::sync::watch::channel(Vec::new());
    let (config_tx, _config_rx) = tokio::sync::watch::channel(None);
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
        devices,
        config_out: config_tx,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let forwarding = tokio::spawn(forwarder.run());
    if !config.devices.is_empty() {
        tracing::info!(
            "simulating: the scenario's devices and bindings replace the configured allowlist"
        );
    }
    // The scenario ends today, so its readings are recent.
    let days = i64::from(scenario.days);
    let start = (time::OffsetDateTime::now_utc().date() - time::Duration::days(days))
        .midnight()
        .assume_utc();
    tracing::info!(scenario = %scenario.name, days, "playing the scenario on simulated devices");
    let outcome = simulators::scenario::run_as(&scenario, &queue_path, id, Some(start)).await?;
    let played: u64 = outcome.stats.values().map(|s| s.readings_queued).sum();
    let now = time::OffsetDateTime::now_utc();
    let statuses: Vec<vitals::DeviceStatus> = outcome
        .stats
        .values()
        .filter_map(|s| {
            Some(vitals::DeviceStatus {
                id: s.device?,
                last_contact: Some(now),
                battery: s.battery,
                clock_offset_ms: s.clock_offset.map(|d| d.whole_milliseconds() as i64),
            })
        })
        .collect();
    let _ = devices_tx.send(statuses);
    tracing::info!(readings_queued = played, "scenario played");
    wake.notify_one();
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
    tracing::info!(
        readings_acked = stats.readings_acked.load(Ordering::Relaxed),
        messages = stats.messages_sent.load(Ordering::Relaxed),
        "gateway stopped"
    );
    Ok(())
}
