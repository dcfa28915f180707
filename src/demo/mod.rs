//! `rpm demo`: the whole system in one process on embedded defaults.
//!
//! ```text
//!  simulated devices ─GATT bytes─► device sessions ─► durable queue ─► forwarder ─┐  (one hub
//!  (simulators, paced)             (gateway crate, one hub per patient)           │   per patient)
//!                                                       [uplink relay, cut while offline]
//!                                                                                 ▼
//!                              rumqttd (embedded, loopback, MQTT 5) ◄─────────────┘
//!                                          │ $share/ingest/rpm/v1/gw/+/readings
//!                                          ▼
//!  ingest consumer ─► validate ─► SQLite record + rules ─► alerts + outbox ─► notifier ─SMTP─►
//!  mail catcher (<data dir>/mailbox/*.eml)        HTTP API (FHIR, /metrics, console) on loopback
//! ```
//!
//! Every part is the production code (`rpm gateway`'s sessions, queue and forwarder; `rpm
//! ingest`'s consumer, rules, notifier and HTTP API); only the broker (rumqttd instead of
//! Mosquitto), the devices (simulated) and the mail server (a catcher) stand in.
//!
//! **Accelerated time.** The scenarios' days are played so that they end *now*: the virtual
//! clock starts as many days ago as the longest scenario lasts and catches up with the wall
//! clock at the end of the playback (see [`Timeline`]). No reading is ever stamped in the
//! future, so ingest's clock-sanity check runs unchanged. Time-driven rules (missing data,
//! silent hub) look at the wall clock, so their first check is put after the playback.
//!
//! Start-up order matters with rumqttd (see [`broker`]): ingest subscribes before any hub
//! publishes a reading; the playback starts once ingest has recorded a hub's status, which
//! it can only receive through the subscriptions it made together with the readings one.

pub(crate) mod broker;
pub(crate) mod fleet;
mod mailbox;
mod uplink;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use gateway::publish::{Forwarder, ForwarderSettings, ForwarderStats};
use hdrhistogram::Histogram;
use ingest::consume::IngestStats;
use ingest::record::Record;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::fleet::Member;

/// `rpm demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run this many seconds, then stop and print a summary (exit 0). Without it the demo
    /// runs until Ctrl-C (and prints the summary then).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// How many seconds the simulated days take to play (default: 60 % of --duration, else
    /// 120). The rest of the run lets the hubs, ingest and the notifier catch up.
    #[arg(long, value_name = "SECS")]
    pub play: Option<u64>,
    /// Where the record (SQLite), the hubs' queues, the threshold profiles, the caught mail
    /// and the summary go; must not hold a previous demo's record. Default: a new
    /// `rpm-demo-*` directory under the system's temporary directory, kept afterwards.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Port of the embedded MQTT broker on 127.0.0.1 (default: a free one).
    #[arg(long, value_name = "PORT")]
    pub mqtt_port: Option<u16>,
    /// Port of the HTTP API and console on 127.0.0.1 (default: a free one).
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
}

const DAY: time::Duration = time::Duration::DAY;

/// Virtual time against wall time: `v0` at `t0`, moving `speed` times as fast, so that the
/// virtual clock reaches the wall clock at the end of the playback and never passes it.
#[derive(Clone, Copy, Debug)]
struct Timeline {
    t0: Instant,
    v0: OffsetDateTime,
    v_end: OffsetDateTime,
    /// Virtual seconds per wall second.
    speed: f64,
    play: Duration,
}

impl Timeline {
    /// Plays `span` of virtual time in `play` of wall time, ending at the wall clock.
    fn new(span: time::Duration, play: Duration) -> Self {
        let t0 = Instant::now();
        let now = OffsetDateTime::now_utc();
        let v_end = now + play;
        Timeline {
            t0,
            v0: v_end - span,
            v_end,
            speed: span.as_seconds_f64() / play.as_secs_f64().max(0.001),
            play,
        }
    }

    /// When (wall) the virtual clock reaches `v`.
    fn wall(&self, v: OffsetDateTime) -> Instant {
        let ahead = (v - self.v0).as_seconds_f64() / self.speed;
        self.t0 + Duration::from_secs_f64(ahead.max(0.0))
    }

    /// The virtual time now.
    fn virtual_now(&self) -> OffsetDateTime {
        let elapsed = self.t0.elapsed().min(self.play).as_secs_f64();
        self.v0 + time::Duration::seconds_f64(elapsed * self.speed)
    }
}

/// Wall time (Unix µs) at which each hub's simulated devices sent the values of a step, by
/// (hub index, virtual time in Unix µs): the start of the latency measurements.
type Stamps = Arc<Mutex<HashMap<(usize, i64), i64>>>;

fn unix_us(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

/// A hub: queue, forwarder, and the scenario playing into it.
struct Hub {
    member: Member,
    queue: gateway::queue::Queue,
    queue_path: PathBuf,
    wake: Arc<Notify>,
    stats: Arc<ForwarderStats>,
    uplink: Option<Arc<uplink::Uplink>>,
    forwarder: tokio::task::JoinHandle<Result<(), gateway::publish::ForwarderError>>,
    player: Option<tokio::task::JoinHandle<anyhow::Result<HubPlayed>>>,
    /// Kept so the forwarder's device-status channel stays open.
    _devices: tokio::sync::watch::Sender<Vec<vitals::DeviceStatus>>,
}

/// What a hub's devices did, from the device sessions' counters.
#[derive(Clone, Debug, Default)]
struct HubPlayed {
    queued: u64,
    decode_errors: u64,
    duplicates: u64,
    finished: bool,
    /// Readings the broker acknowledged (the forwarder's count).
    acked: u64,
    /// Connections the forwarder made to the broker.
    connects: u64,
}

/// `rpm demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = crate::serve::shutdown_on_signals();
    let members = fleet::members()?;
    let data_dir = data_dir(args.data_dir.as_deref())?;
    let duration = args.duration.map(Duration::from_secs);
    let play = Duration::from_secs(args.play.unwrap_or(match args.duration {
        Some(d) => (d * 6 / 10).max(1),
        None => 120,
    }));
    if let Some(d) = duration
        && play >= d
    {
        anyhow::bail!(
            "--play ({}s) must be shorter than --duration ({}s): the rest is for catching up",
            play.as_secs(),
            d.as_secs()
        );
    }
    let span_days = members.iter().map(|m| m.scenario.days).max().unwrap_or(1);
    let span = time::Duration::days(i64::from(span_days));

    // The parts that stand in for the outside world.
    let broker = broker::start(args.mqtt_port).await?;
    let hubs_token = CancellationToken::new();
    let server_token = CancellationToken::new();
    let (mail_tx, mut mail_rx) = mpsc::channel(64);
    let mailbox =
        mailbox::Mailbox::start(&data_dir.join("mailbox"), mail_tx, server_token.clone()).await?;
    let http_listener = tokio::net::TcpListener::bind(("127.0.0.1", args.http_port.unwrap_or(0)))
        .await
        .context("cannot listen for the HTTP API")?;
    let http_addr = http_listener.local_addr()?;

    // The server: record, registry, profiles, notifier, consumer, HTTP.
    fleet::write_profiles(&data_dir.join("profiles"))?;
    let ingest_text = fleet::ingest_toml(
        &fleet::IngestPorts {
            broker: broker.addr,
            http: http_addr,
            smtp: mailbox.port,
            data_dir: &data_dir,
            // First check of the time-driven rules after the playback (see the module doc).
            tick_every: play.max(Duration::from_secs(60)) + Duration::from_secs(5),
        },
        &members,
    )?;
    std::fs::write(data_dir.join("ingest.toml"), &ingest_text)
        .context("cannot write ingest.toml")?;
    let config: ingest::config::IngestConfig =
        toml::from_str(&ingest_text).context("the demo's ingest configuration")?;
    config
        .check()
        .map_err(|(key, why)| anyhow::anyhow!("demo ingest configuration: {key}: {why}"))?;
    let server = Server::start(
        &config,
        &members,
        OffsetDateTime::now_utc() - span - DAY * 2,
        http_listener,
        server_token.clone(),
    )
    .await?;

    // The homes.
    let stamps: Stamps = Arc::default();
    let mut hubs = Vec::new();
    for m in &members {
        hubs.push(Hub::start(m.clone(), &data_dir, broker.addr, &hubs_token).await?);
    }
    // Ingest must hold its subscriptions before the first reading is published.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.stats.statuses.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            anyhow::bail!("ingest did not subscribe to the embedded broker within 30 s");
        }
        tokio::select! {
            () = root.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let timeline = Timeline::new(span, play);
    let play_token = hubs_token.child_token();
    for (i, hub) in hubs.iter_mut().enumerate() {
        hub.play(i, timeline, stamps.clone(), play_token.clone());
    }

    let console_url = format!("http://{http_addr}/console");
    print_banner(&Banner {
        data_dir: &data_dir,
        broker: &broker,
        http: http_addr,
        users: &server.users,
        members: &members,
        span_days,
        play,
    });

    // Progress until the end (the duration, or Ctrl-C).
    let end = duration.map(|d| started + d);
    let bar = progress_bar(play);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_line = Instant::now();
    let mut played_out = false;
    loop {
        tokio::select! {
            () = root.cancelled() => break,
            () = sleep_until_opt(end) => break,
            Some(mail) = mail_rx.recv() => {
                let line = format!(
                    "  mail to {}: {} ({})",
                    mail.to.join(", "),
                    mail.subject,
                    mail.file.file_name().unwrap_or_default().to_string_lossy()
                );
                if bar.is_hidden() { eprintln!("{line}"); } else { bar.println(line); }
            }
            _ = tick.tick() => {
                let now_playing = hubs.iter().any(|h| h.player.as_ref().is_some_and(|p| !p.is_finished()));
                let status = progress_line(&timeline, &server, &hubs, &mailbox, now_playing);
                if now_playing {
                    bar.set_position(timeline.t0.elapsed().min(play).as_millis() as u64);
                } else if !played_out {
                    played_out = true;
                    bar.set_position(play.as_millis() as u64);
                    let line = format!("  simulated days played; the system keeps running (console: {console_url}){}",
                        if end.is_some() { "" } else { ", Ctrl-C to stop" });
                    if bar.is_hidden() { eprintln!("{line}"); } else { bar.println(line); }
                }
                bar.set_message(status.clone());
                if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(5) {
                    last_line = Instant::now();
                    eprintln!("  {status}");
                }
            }
        }
    }
    bar.finish_and_clear();
    let interrupted = root.is_cancelled();
    eprintln!("  stopping: hubs first, then ingest, the notifier and the HTTP API");

    // Drain in order: the homes stop (their queues stay on disk), then the server.
    hubs_token.cancel();
    let mut played = Vec::new();
    for hub in hubs.iter_mut() {
        let mut p = hub.stop().await;
        p.acked = hub.stats.readings_acked.load(Ordering::Relaxed);
        p.connects = hub.stats.connects.load(Ordering::Relaxed);
        played.push(p);
    }
    server_token.cancel();
    let server_stats = server.stats.clone();
    let dispatch = server.stop().await;
    let mut left = Vec::new();
    for (hub, played) in hubs.into_iter().zip(played.iter_mut()) {
        let (queued, depth) = hub.close().await;
        played.queued = queued;
        left.push(depth);
    }
    let caught = mailbox.caught.load(Ordering::Relaxed);
    mailbox.join().await;

    let summary = summarize(&Summarize {
        data_dir: &data_dir,
        members: &members,
        played: &played,
        left: &left,
        stats: &server_stats,
        dispatch,
        caught,
        stamps: &stamps,
        ran: started.elapsed(),
        play,
        span_days,
        interrupted,
    })
    .await?;
    std::fs::write(
        data_dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )
    .context("cannot write summary.json")?;
    print!("{}", render(&summary, &data_dir));
    Ok(())
}

fn data_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            if d.join("record.db").exists() {
                anyhow::bail!(
                    "{} already holds a demo record (record.db); give a new or empty directory",
                    d.display()
                );
            }
            d.to_path_buf()
        }
        None => tempfile::Builder::new()
            .prefix("rpm-demo-")
            .tempdir()
            .context("cannot create a data directory under the system's temporary directory")?
            .keep(),
    };
    std::fs::canonicalize(&dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

async fn sleep_until_opt(end: Option<Instant>) {
    match end {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Ingest with rules, the notifier and the HTTP API, wired as `rpm ingest` wires them.
struct Server {
    record: Record,
    /// The demo's console users and their passwords.
    users: Vec<fleet::DemoUser>,
    stats: Arc<IngestStats>,
    notifier: ingest::notify::Running,
    consumer: tokio::task::JoinHandle<Result<(), ingest::consume::ConsumeError>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(
        config: &ingest::config::IngestConfig,
        members: &[Member],
        bindings_from: OffsetDateTime,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Server> {
        let runtime = config
            .notifier
            .as_ref()
            .context("the demo configures a notifier")?
            .build()
            .context("invalid demo notifier configuration")?;
        let record = Record::open(&config.database)
            .await
            .context("cannot open the demo record")?
            .with_notifications(Arc::new(ingest::notify::Notifications::from_runtime(
                &runtime,
            )));
        fleet::register(&record, members, bindings_from).await?;
        let users = fleet::create_users(&record).await?;
        let notifier = ingest::notify::start(&record, &runtime, shutdown.clone())
            .await
            .context("cannot start the notifier")?;
        let rules = ingest::consume::Rules::load(&config.rules).context("cannot load the rules")?;
        let client_id = config
            .broker
            .client_id
            .clone()
            .unwrap_or_else(|| "rpm-demo-ingest".into());
        let options = ingest::consume::client_options(
            &config.broker,
            &client_id,
            config.consumer.max_inflight,
        )?;
        let capacity = options.request_channel_capacity();
        let stats = Arc::new(IngestStats::default());
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
            mqtt: rumqttc::v5::AsyncClient::new(options, capacity),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        };
        let consumer = tokio::spawn(consumer.run_with(rules));
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
        http_state.ack = Some(ingest::http::ack::AckLinks {
            signer: runtime.signer.clone(),
            escalator: notifier.escalator.clone(),
        });
        http_state.notifier = Some(notifier.stats.clone());
        let http = tokio::spawn(ingest::http::serve(
            listener,
            routes(http_state),
            shutdown.clone(),
        ));
        Ok(Server {
            record,
            users,
            stats,
            notifier,
            consumer,
            http,
        })
    }

    /// After the shutdown token: waits for the consumer (its last batch committed), the
    /// HTTP API and the notifier, then closes the record. Returns (sent, failed) messages.
    async fn stop(self) -> (u64, u64) {
        match self.consumer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the demo's ingest consumer stopped"),
            Err(e) => tracing::warn!(error = %e, "the demo's ingest consumer failed"),
        }
        match self.http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the demo's HTTP API stopped"),
            Err(e) => tracing::warn!(error = %e, "the demo's HTTP API task failed"),
        }
        let sent = self.notifier.stats.sent.load(Ordering::Relaxed);
        let failed = self.notifier.stats.failed.load(Ordering::Relaxed);
        self.notifier.join().await;
        self.record.close().await;
        (sent, failed)
    }
}

/// The demo's HTTP routes: ingest's API (FHIR views, /metrics, /healthz, /ack). The console
/// joins here when it is served.
fn routes(state: ingest::http::HttpState) -> axum::Router {
    ingest::http::router(state)
}

impl Hub {
    async fn start(
        member: Member,
        data_dir: &Path,
        broker: std::net::SocketAddr,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Hub> {
        let dir = data_dir.join("hubs").join(member.gateway.as_str());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let queue_path = dir.join("queue.db");
        let queue = gateway::queue::Queue::open(&queue_path).await?;
        let uplink = match member.outage {
            Some(_) => Some(Arc::new(
                uplink::Uplink::start(broker, shutdown.clone()).await?,
            )),
            None => None,
        };
        let via = uplink.as_ref().map_or(broker, |u| u.addr);
        let url: vitals::BrokerUrl = format!("mqtt://{via}")
            .parse()
            .map_err(|e| anyhow::anyhow!("broker url: {e}"))?;
        let id = member.gateway.clone();
        let status_topic = vitals::Topic::new(id.clone(), vitals::Channel::Status).to_string();
        let will = gateway::publish::offline_status(&id)?;
        let forward = gateway::config::ForwardConfig {
            batch_max: 200,
            linger: Duration::from_millis(20),
            max_inflight: 16,
        };
        let options = gateway::publish::mqtt_options(
            &vitals::BrokerConfig::new(url),
            id.as_str(),
            Some((status_topic, will)),
            forward.max_inflight,
        )?;
        let capacity = options.request_channel_capacity();
        let stats = Arc::new(ForwarderStats::default());
        let (devices_tx, devices) = tokio::sync::watch::channel(Vec::new());
        let (config_tx, _) = tokio::sync::watch::channel(None);
        let wake = Arc::new(Notify::new());
        let forwarder = Forwarder {
            settings: ForwarderSettings {
                gateway: id,
                forward,
                status_interval: Duration::from_secs(30),
                disk_low_bytes: 16 * 1024 * 1024,
                max_backoff: Duration::from_secs(2),
                // The device sessions push from their own tasks and nothing wakes the
                // forwarder per push (as in `rpm gateway`, which polls every second); the
                // pacer's wake-up can come before a session's last push, so poll briskly.
                poll_interval: Duration::from_millis(100),
            },
            queue: queue.clone(),
            mqtt: rumqttc::v5::AsyncClient::new(options, capacity),
            wake: wake.clone(),
            devices,
            config_out: config_tx,
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        };
        let forwarder = tokio::spawn(forwarder.run());
        Ok(Hub {
            member,
            queue,
            queue_path,
            wake,
            stats,
            uplink,
            forwarder,
            player: None,
            _devices: devices_tx,
        })
    }

    /// Starts playing the hub's scenario (and its outage) on `timeline`, ending with it.
    fn play(&mut self, index: usize, timeline: Timeline, stamps: Stamps, token: CancellationToken) {
        let scenario = self.member.scenario.clone();
        let start = timeline.v_end - time::Duration::days(i64::from(scenario.days));
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pacer: simulators::scenario::Pacer = {
            let wake = self.wake.clone();
            let token = token.clone();
            let stopped = stopped.clone();
            Arc::new(move |v: OffsetDateTime| {
                let wake = wake.clone();
                let token = token.clone();
                let stopped = stopped.clone();
                let stamps = stamps.clone();
                Box::pin(async move {
                    // What the previous step queued goes out now, not at the next poll.
                    wake.notify_one();
                    tokio::select! {
                        () = token.cancelled() => {
                            stopped.store(true, Ordering::Relaxed);
                            false
                        }
                        () = tokio::time::sleep_until(timeline.wall(v)) => {
                            stamps
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert((index, unix_us(v)), unix_us(OffsetDateTime::now_utc()));
                            true
                        }
                    }
                })
            })
        };
        let outage = match (self.member.outage, &self.uplink) {
            (Some(o), Some(link)) => Some((o, link.clone())),
            _ => None,
        };
        let queue_path = self.queue_path.clone();
        let gateway = self.member.gateway.clone();
        let wake = self.wake.clone();
        self.player = Some(tokio::spawn(async move {
            let outage_script = async {
                let Some((o, link)) = outage else { return };
                let at =
                    |days: f64| timeline.wall(start + time::Duration::seconds_f64(days * 86_400.0));
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep_until(at(o.from_day)) => link.set_online(false),
                }
                tokio::select! {
                    () = token.cancelled() => {}
                    () = tokio::time::sleep_until(at(o.to_day)) => {}
                }
                link.set_online(true);
            };
            let playing = simulators::scenario::run_paced(
                &scenario,
                &queue_path,
                gateway,
                Some(start),
                Some(pacer),
            );
            let (outcome, ()) = tokio::join!(playing, outage_script);
            wake.notify_one();
            let outcome = outcome?;
            Ok(HubPlayed {
                // Set from the queue itself when the hub closes: the sessions' counter can
                // lag the last push.
                queued: 0,
                decode_errors: outcome.total(|s| s.decode_errors),
                duplicates: outcome.total(|s| s.duplicates),
                finished: !stopped.load(Ordering::Relaxed),
                acked: 0,
                connects: 0,
            })
        }));
    }

    /// After the hubs' token: the scenario and the forwarder have stopped.
    async fn stop(&mut self) -> HubPlayed {
        let played = match self.player.take() {
            Some(p) => match p.await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "a demo hub's scenario failed");
                    HubPlayed::default()
                }
                Err(e) => {
                    tracing::error!(error = %e, "a demo hub's scenario task failed");
                    HubPlayed::default()
                }
            },
            None => HubPlayed::default(),
        };
        match (&mut self.forwarder).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "a demo hub's forwarder stopped"),
            Err(e) => tracing::error!(error = %e, "a demo hub's forwarder failed"),
        }
        played
    }

    /// Readings ever queued at the hub (the queue's sequence: every reading the devices
    /// produced, once) and readings still in its queue; closes it.
    async fn close(self) -> (u64, u64) {
        let counts = async {
            let depth = self.queue.depth().await?.readings;
            let queued = self.queue.last_seq().await?;
            Ok::<_, gateway::queue::QueueError>((queued, depth))
        };
        let counts = counts.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read a demo hub's queue");
            (0, u64::MAX)
        });
        self.queue.close().await;
        if let Some(link) = self.uplink
            && let Ok(link) = Arc::try_unwrap(link)
        {
            link.join().await;
        }
        counts
    }
}

fn progress_bar(play: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(play.as_millis() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{bar:24}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn progress_line(
    timeline: &Timeline,
    server: &Server,
    hubs: &[Hub],
    mailbox: &mailbox::Mailbox,
    playing: bool,
) -> String {
    let s = &server.stats;
    let days = (timeline.virtual_now() - timeline.v0).as_seconds_f64() / 86_400.0;
    let total = (timeline.v_end - timeline.v0).as_seconds_f64() / 86_400.0;
    let offline: Vec<&str> = hubs
        .iter()
        .filter(|h| h.uplink.as_ref().is_some_and(|u| !u.is_online()))
        .map(|h| h.member.gateway.as_str())
        .collect();
    let mut line = format!(
        "{} {days:.1}/{total:.0} days · {} readings stored · {} rejected · {} alert events · {} mails",
        if playing { "day" } else { "played" },
        s.readings_stored.load(Ordering::Relaxed),
        s.rejected_total(),
        s.alert_events.load(Ordering::Relaxed),
        mailbox.caught.load(Ordering::Relaxed),
    );
    if !offline.is_empty() {
        line.push_str(&format!(" · hub {} OFFLINE", offline.join(", ")));
    }
    line
}

struct Banner<'a> {
    data_dir: &'a Path,
    broker: &'a broker::EmbeddedBroker,
    http: std::net::SocketAddr,
    users: &'a [fleet::DemoUser],
    members: &'a [Member],
    span_days: u32,
    play: Duration,
}

fn print_banner(b: &Banner<'_>) {
    let Banner {
        data_dir,
        broker,
        http,
        users,
        members,
        span_days,
        play,
    } = *b;
    let mut t = String::new();
    t.push_str("rpm demo: the whole system in this process\n");
    t.push_str(&format!("  data directory  {}\n", data_dir.display()));
    t.push_str(&format!(
        "  MQTT broker     mqtt://{} (embedded rumqttd, MQTT 5)\n",
        broker.addr
    ));
    t.push_str(&format!("  console         http://{http}/console\n"));
    for u in users {
        t.push_str(&format!(
            "    sign in as    {} / {}  ({})\n",
            u.username, u.password, u.role
        ));
    }
    t.push_str(&format!(
        "  API             http://{http}/api/v1 (http://{http}/api/openapi.json)\n"
    ));
    t.push_str(&format!("  FHIR            http://{http}/fhir/Patient\n"));
    t.push_str(&format!("  metrics         http://{http}/metrics\n"));
    t.push_str(&format!(
        "  mail            caught in {} (nothing is sent)\n",
        data_dir.join("mailbox").display()
    ));
    t.push_str(&format!(
        "  time            {span_days} simulated days in {} s, ending now\n",
        play.as_secs()
    ));
    t.push_str("  patients\n");
    for m in members {
        t.push_str(&format!(
            "    {:<20} {:<20} hub {}{}\n",
            m.role,
            m.scenario.patient.key,
            m.gateway,
            match m.outage {
                Some(o) => format!(" (offline from day {} to day {})", o.from_day, o.to_day),
                None => String::new(),
            }
        ));
    }
    eprint!("{t}");
}

struct Summarize<'a> {
    data_dir: &'a Path,
    members: &'a [Member],
    played: &'a [HubPlayed],
    left: &'a [u64],
    stats: &'a IngestStats,
    dispatch: (u64, u64),
    caught: u64,
    stamps: &'a Stamps,
    ran: Duration,
    play: Duration,
    span_days: u32,
    interrupted: bool,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 1 h, three significant figures.
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 10.0).round() / 10.0;
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// Counts from the process and from the record it wrote.
async fn summarize(s: &Summarize<'_>) -> anyhow::Result<serde_json::Value> {
    use sqlx::Row as _;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(s.data_dir.join("record.db"))
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .context("cannot read the demo record for the summary")?;
    let pairs = |rows: Vec<sqlx::sqlite::SqliteRow>| -> BTreeMap<String, i64> {
        rows.iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect()
    };
    let in_record = pairs(
        sqlx::query("SELECT patient_key, count(*) FROM readings GROUP BY patient_key")
            .fetch_all(&pool)
            .await?,
    );
    let alerts_by_rule = pairs(
        sqlx::query("SELECT rule_id, count(*) FROM alerts GROUP BY rule_id ORDER BY rule_id")
            .fetch_all(&pool)
            .await?,
    );
    let alerts_by_patient = pairs(
        sqlx::query("SELECT patient_key, count(*) FROM alerts GROUP BY patient_key")
            .fetch_all(&pool)
            .await?,
    );
    let rejected_by_gateway = pairs(
        sqlx::query(
            "SELECT coalesce(gateway_id, '?'), sum(count) FROM dead_letters GROUP BY gateway_id",
        )
        .fetch_all(&pool)
        .await?,
    );
    let outbox = pairs(
        sqlx::query("SELECT status, count(*) FROM notifier_outbox GROUP BY status")
            .fetch_all(&pool)
            .await?,
    );

    // Latencies: from the wall time a step's devices sent their values to the commit.
    let stamps = s
        .stamps
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let index: HashMap<&str, usize> = s
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.gateway.as_str(), i))
        .collect();
    let mut all = histogram()?;
    let mut online = histogram()?;
    let mut unmatched = 0u64;
    for row in sqlx::query("SELECT gateway_id, received_at, ingested_at FROM readings")
        .fetch_all(&pool)
        .await?
    {
        let gw: String = row.get(0);
        let Some(&i) = index.get(gw.as_str()) else {
            continue;
        };
        let Some(sent) = stamps.get(&(i, row.get::<i64, _>(1))) else {
            unmatched += 1;
            continue;
        };
        let us = u64::try_from(row.get::<i64, _>(2) - sent)
            .unwrap_or(0)
            .max(1);
        all.saturating_record(us);
        if s.members[i].outage.is_none() {
            online.saturating_record(us);
        }
    }
    let mut alerts = histogram()?;
    for row in sqlx::query(
        "SELECT e.recorded_at, min(r.gateway_id), min(r.received_at) FROM alert_events e \
         JOIN readings r ON r.patient_key = e.patient_key AND r.measured_at / 1000 = e.at / 1000 \
         WHERE e.kind = 'raised' GROUP BY e.event_id",
    )
    .fetch_all(&pool)
    .await?
    {
        let gw: String = row.get(1);
        let Some(&i) = index.get(gw.as_str()) else {
            continue;
        };
        if let Some(sent) = stamps.get(&(i, row.get::<i64, _>(2))) {
            let us = u64::try_from(row.get::<i64, _>(0) - sent)
                .unwrap_or(0)
                .max(1);
            alerts.saturating_record(us);
        }
    }
    pool.close().await;

    let mut rejected = BTreeMap::new();
    for reason in vitals::RejectReason::ALL {
        let n = s.stats.rejected(reason);
        if n > 0 {
            rejected.insert(reason.as_str().to_owned(), n);
        }
    }
    let patients: Vec<serde_json::Value> = s
        .members
        .iter()
        .zip(s.played)
        .zip(s.left)
        .map(|((m, p), left)| {
            let key = &m.scenario.patient.key;
            json!({
                "role": m.role,
                "patient": key,
                "gateway": m.gateway.as_str(),
                "scenario": m.scenario.name,
                "played_to_the_end": p.finished,
                "queued_at_hub": p.queued,
                "decode_errors_at_hub": p.decode_errors,
                "duplicates_at_hub": p.duplicates,
                "acked_by_broker": p.acked,
                "hub_connects": p.connects,
                "left_in_hub_queue": left,
                "in_record": in_record.get(key).copied().unwrap_or(0),
                "rejected_by_ingest": rejected_by_gateway.get(m.gateway.as_str()).copied().unwrap_or(0),
                "alerts": alerts_by_patient.get(key).copied().unwrap_or(0),
                "hub_outage": m.outage.map(|o| json!({ "from_day": o.from_day, "to_day": o.to_day })),
            })
        })
        .collect();
    Ok(json!({
        "ran_s": (s.ran.as_secs_f64() * 10.0).round() / 10.0,
        "play_s": s.play.as_secs(),
        "simulated_days": s.span_days,
        "interrupted": s.interrupted,
        "readings": {
            "queued_at_hubs": s.played.iter().map(|p| p.queued).sum::<u64>(),
            "ingested": s.stats.readings_stored.load(Ordering::Relaxed),
            "duplicates": s.stats.readings_duplicate.load(Ordering::Relaxed),
            "in_record": in_record.values().sum::<i64>(),
            "left_in_hub_queues": s.left.iter().sum::<u64>(),
        },
        "rejected_by_ingest": rejected,
        "decode_errors_at_hubs": s.played.iter().map(|p| p.decode_errors).sum::<u64>(),
        "alerts_by_rule": alerts_by_rule,
        "alert_events": s.stats.alert_events.load(Ordering::Relaxed),
        "notifications": {
            "sent": s.dispatch.0,
            "failed": s.dispatch.1,
            "outbox_by_status": outbox,
            "mailbox": s.caught,
        },
        "latency": {
            "reading_committed": percentiles(&all),
            "reading_committed_online_hubs": percentiles(&online),
            "alert_and_notification_enqueued": percentiles(&alerts),
            "readings_without_a_send_time": unmatched,
        },
        "patients": patients,
    }))
}

/// The summary for people.
fn render(v: &serde_json::Value, data_dir: &Path) -> String {
    let n = |p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let mut t = String::new();
    t.push_str(&format!(
        "\nrpm demo summary ({} simulated days played in {} s; ran {} s{})\n",
        n("/simulated_days"),
        n("/play_s"),
        v["ran_s"],
        if v["interrupted"].as_bool() == Some(true) {
            "; interrupted"
        } else {
            ""
        }
    ));
    t.push_str(&format!(
        "readings ingested: {} (queued at the hubs {}, in the record {}, duplicates {}, still queued at hubs {})\n",
        n("/readings/ingested"),
        n("/readings/queued_at_hubs"),
        n("/readings/in_record"),
        n("/readings/duplicates"),
        n("/readings/left_in_hub_queues"),
    ));
    t.push_str("rejected by ingest:");
    match v["rejected_by_ingest"].as_object() {
        Some(m) if !m.is_empty() => {
            for (reason, count) in m {
                t.push_str(&format!(" {reason} {count};"));
            }
            t.push('\n');
        }
        _ => t.push_str(" none\n"),
    }
    t.push_str(&format!(
        "rejected at the hubs (values that did not decode): {}\n",
        n("/decode_errors_at_hubs")
    ));
    t.push_str("alerts raised by rule:");
    match v["alerts_by_rule"].as_object() {
        Some(m) if !m.is_empty() => {
            for (rule, count) in m {
                t.push_str(&format!(" {rule} {count};"));
            }
            t.push('\n');
        }
        _ => t.push_str(" none\n"),
    }
    t.push_str(&format!(
        "notifications sent: {} (failed {}; {} messages in the local mailbox {})\n",
        n("/notifications/sent"),
        n("/notifications/failed"),
        n("/notifications/mailbox"),
        data_dir.join("mailbox").display()
    ));
    let lat = |name: &str, p: &str| {
        let l = &v["latency"][p];
        if l["count"].as_u64().unwrap_or(0) == 0 {
            format!("{name}: no samples\n")
        } else {
            format!(
                "{name} (n={}): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms\n",
                l["count"], l["p50_ms"], l["p90_ms"], l["p99_ms"], l["max_ms"]
            )
        }
    };
    t.push_str("end-to-end latency, wall clock, from the simulated device sending a value:\n");
    t.push_str(&lat(
        "  to the reading committed, all hubs",
        "reading_committed",
    ));
    t.push_str(&lat(
        "  to the reading committed, hubs never offline",
        "reading_committed_online_hubs",
    ));
    t.push_str(&lat(
        "  to the alert and its notifications enqueued",
        "alert_and_notification_enqueued",
    ));
    t.push_str("patients:\n");
    for p in v["patients"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "  {:<20} hub {}: queued {} → in record {}, rejected {}, left at hub {}, alerts {}\n",
            p["role"].as_str().unwrap_or("?"),
            p["gateway"].as_str().unwrap_or("?"),
            p["queued_at_hub"],
            p["in_record"],
            p["rejected_by_ingest"],
            p["left_in_hub_queue"],
            p["alerts"],
        ));
    }
    t.push_str(&format!(
        "summary: {}\n",
        data_dir.join("summary.json").display()
    ));
    t
}
