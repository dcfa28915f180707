//! The broker's side of "a gateway can publish only as itself", against a real Mosquitto
//! configured with the project's own files: `fixtures/config/mosquitto/mosquitto.conf` (only
//! paths and ports rewritten) and `fixtures/config/mosquitto/acl` (copied as is), with a
//! password file made at test time by `mosquitto_passwd` and a CA, server and client
//! certificates made at test time by `rcgen`.
//!
//! - a gateway with its own credentials forwards readings; ingest (its own user, through its
//!   shared subscription) receives them;
//! - a gateway publishing on another gateway's topic gets PUBACK 0x87 (Not authorized): the
//!   forwarder counts it, keeps the readings queued, and ingest receives nothing;
//! - a wrong password is refused in the CONNACK and the broker stays up;
//! - TLS (the `mqtts` listener of the fixture) works with the pinned CA and fails on the
//!   certificate without it: this is the test DEPENDENCIES.md asks for, a real TLS connection
//!   through the gateway's rustls configuration, so a crypto-provider panic cannot come back
//!   silently.
//!
//! The broker listens on testkit's plain listener (used where TLS is not the point) and on
//! one TLS port per `listener` of the fixture; authentication and the ACL are the same on all
//! of them (`per_listener_settings false`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway::config::ForwardConfig;
use gateway::publish::{self, ForwarderSettings, ForwarderStats};
use gateway::queue::Queue;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use testkit::{Mosquitto, unavailable};
use time::macros::datetime;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vitals::*;

const WAIT: Duration = Duration::from_secs(20);

/// Test passwords, made into a Mosquitto password file at test time.
const USERS: [(&str, &str); 3] = [
    ("gw-0001", "test-pw-gw-0001"),
    ("gw-0002", "test-pw-gw-0002"),
    ("ingest", "test-pw-ingest"),
];

fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .expect("a test user")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/config/mosquitto")
        .join(name)
}

fn mosquitto_passwd() -> Result<PathBuf, String> {
    let path = std::env::var_os("MOSQUITTO_PASSWD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/mosquitto_passwd"));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found (Debian's `mosquitto` package ships it; scripts/services installs it)",
            path.display()
        ))
    }
}

// --- Certificates ------------------------------------------------------------------------------

/// PEM files of a throwaway PKI: a CA, a server certificate for 127.0.0.1 and localhost, and
/// a client certificate whose CN is `gw-0001`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rpm broker_security test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");

    let client_key = KeyPair::generate().expect("client key");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "gw-0001");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .expect("client certificate");

    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.crt", server_cert.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("gw-0001.crt", client_cert.pem()),
        client_key: write("gw-0001.key", client_key.serialize_pem()),
    }
}

// --- The broker --------------------------------------------------------------------------------

/// A Mosquitto running the fixture configuration.
struct SecureBroker {
    broker: Mosquitto,
    /// The test's copy of the fixture's TLS listener for gateways (8883 in production).
    tls_port: u16,
    /// The fixture's TLS listener for ingest (8884 in production).
    ingest_tls_port: u16,
    /// A listener added by the test: client certificate required, CN as user name.
    cert_port: u16,
    pki: Pki,
    _files: tempfile::TempDir,
}

impl SecureBroker {
    fn plain_port(&self) -> u16 {
        self.broker.port()
    }

    fn broker_config(&self, url: &str, user: Option<&str>) -> BrokerConfig {
        let mut config = BrokerConfig::new(url.parse().expect("a broker URL"));
        if let Some(user) = user {
            config.username = Some(user.to_owned());
            config.password = Some(password(user).to_owned());
        }
        config
    }

    /// A `[broker]` table for `user` on the plain listener.
    fn plain(&self, user: &str) -> BrokerConfig {
        self.broker_config(
            &format!("mqtt://127.0.0.1:{}", self.plain_port()),
            Some(user),
        )
    }

    /// A `[broker]` table for `user` on the `mqtts` listener at `port`, trusting the test CA.
    fn tls(&self, port: u16, user: Option<&str>) -> BrokerConfig {
        let mut config = self.broker_config(&format!("mqtts://127.0.0.1:{port}"), user);
        config.ca_file = Some(self.pki.ca.clone());
        config
    }
}

/// Turns the fixture `mosquitto.conf` into the test's: each `listener` on a free port of
/// 127.0.0.1 (`ports` maps production port to test port), every file path to the test's
/// files, and what testkit already sets (persistence location, log) left to testkit.
fn test_config(
    fixture_conf: &str,
    files: &Path,
    pki: &Pki,
    ports: &mut HashMap<u16, u16>,
) -> String {
    let mut out = String::new();
    for line in fixture_conf.lines() {
        let trimmed = line.trim();
        let (key, value) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
        let path = |p: &Path| format!("{key} {}", p.display());
        let rewritten = match key {
            _ if trimmed.is_empty() || trimmed.starts_with('#') => line.to_owned(),
            "listener" => {
                let prod: u16 = value
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("a listener port in the fixture");
                let port = *ports
                    .entry(prod)
                    .or_insert_with(|| testkit::free_port().expect("a free port"));
                format!("listener {port} 127.0.0.1")
            }
            "password_file" => path(&files.join("passwd")),
            "acl_file" => path(&files.join("acl")),
            "cafile" => path(&pki.ca),
            "certfile" => path(&pki.server_cert),
            "keyfile" => path(&pki.server_key),
            "persistence_location" | "log_dest" => format!("# (set by testkit) {line}"),
            _ => line.to_owned(),
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    // Nothing may still point at the production machine's files.
    for line in out.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(
            !line.contains("/etc/") && !line.contains("/var/"),
            "a path in the fixture mosquitto.conf the test does not rewrite: {line}"
        );
    }
    out
}

/// Starts Mosquitto with the fixture configuration and ACL. `None` (after saying why) when
/// Mosquitto or mosquitto_passwd is missing outside CI; under `CI=true` that fails the test.
fn start_secure_broker() -> Option<SecureBroker> {
    let passwd_bin = unavailable(mosquitto_passwd())?;
    let files = tempfile::tempdir().expect("tempdir");
    // Mosquitto started as root reads its files as the `mosquitto` user.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    std::fs::copy(fixture("acl"), files.path().join("acl")).expect("copy the fixture ACL");
    let passwd = files.path().join("passwd");
    for (i, (user, pw)) in USERS.iter().enumerate() {
        let mut cmd = Command::new(&passwd_bin);
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(&passwd)
            .arg(user)
            .arg(pw)
            .output()
            .expect("run mosquitto_passwd");
        assert!(
            out.status.success(),
            "mosquitto_passwd failed for {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pki = make_pki(files.path());
    let conf = std::fs::read_to_string(fixture("mosquitto.conf")).expect("fixture mosquitto.conf");
    let mut ports = HashMap::new();
    let mut extra = test_config(&conf, files.path(), &pki, &mut ports);
    let tls_port = *ports
        .get(&8883)
        .expect("the fixture has an mqtts listener on 8883");
    let ingest_tls_port = *ports
        .get(&8884)
        .expect("the fixture has a listener on 8884");
    // A listener where gateways authenticate by certificate (the fixture's commented option).
    let cert_port = testkit::free_port().expect("a free port");
    extra.push_str(&format!(
        "\nlistener {cert_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
         require_certificate true\nuse_identity_as_username true\n",
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    ));
    let broker = unavailable(Mosquitto::start_with(&extra))?;
    for port in [tls_port, ingest_tls_port, cert_port] {
        if let Err(e) = testkit::wait_for_port(port, Duration::from_secs(10)) {
            panic!("TLS listener {port}: {e}\n{}", broker.log());
        }
    }
    Some(SecureBroker {
        broker,
        tls_port,
        ingest_tls_port,
        cert_port,
        pki,
        _files: files,
    })
}

// --- Clients -----------------------------------------------------------------------------------

/// A raw MQTT 5 client whose event loop the test polls itself.
struct Raw {
    client: AsyncClient,
    events: EventLoop,
}

/// Connects with `options` and waits for the CONNACK; the error is what the event loop said.
async fn connect(options: MqttOptions) -> Result<Raw, ConnectionError> {
    let (client, mut events) = AsyncClient::new(options, 16);
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("a CONNACK or an error in time");
    outcome.map(|()| Raw { client, events })
}

fn options(broker: &BrokerConfig, client_id: &str) -> MqttOptions {
    publish::mqtt_options(broker, client_id, None, 8).expect("options")
}

impl Raw {
    /// Publishes at QoS 1 and returns the PUBACK's reason (one publish at a time).
    async fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) -> PubAckReason {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .expect("publish queued");
        tokio::time::timeout(WAIT, async {
            loop {
                match self.events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(ack))) => return ack.reason,
                    Ok(_) => {}
                    Err(e) => panic!("connection lost while waiting for a PUBACK: {e}"),
                }
            }
        })
        .await
        .expect("a PUBACK in time")
    }
}

/// An independent subscriber: what it receives, by topic.
struct Inbox {
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    got: Vec<(String, Vec<u8>)>,
    _task: tokio::task::JoinHandle<()>,
}

impl Inbox {
    /// Subscribes to `filters` with `options` and returns once the SUBACK came back.
    async fn subscribe(options: MqttOptions, filters: &[&str]) -> Inbox {
        let mut raw = connect(options).await.expect("the subscriber connects");
        for filter in filters {
            raw.client
                .subscribe(*filter, QoS::AtLeastOnce)
                .await
                .expect("subscribe queued");
        }
        let mut acked = 0;
        tokio::time::timeout(WAIT, async {
            while acked < filters.len() {
                match raw.events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        assert!(
                            ack.return_codes
                                .iter()
                                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                            "subscription refused: {ack:?}"
                        );
                        acked += 1;
                    }
                    Ok(_) => {}
                    Err(e) => panic!("the subscriber lost its connection: {e}"),
                }
            }
        })
        .await
        .expect("SUBACKs in time");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let Raw { client, mut events } = raw;
            let _client = client;
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    if tx.send((topic, p.payload.to_vec())).is_err() {
                        return;
                    }
                }
            }
        });
        Inbox {
            rx,
            got: vec![],
            _task: task,
        }
    }

    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.got.push(m);
        }
    }

    /// Waits until `done` holds for what arrived so far; false on timeout.
    async fn wait_until(&mut self, done: impl Fn(&[(String, Vec<u8>)]) -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain();
            if done(&self.got) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn topics(&self) -> Vec<&str> {
        self.got.iter().map(|(t, _)| t.as_str()).collect()
    }

    /// Reading ids that arrived in envelopes, with how often each came.
    fn reading_ids(&self) -> HashMap<ReadingId, u32> {
        let mut ids = HashMap::new();
        for (topic, payload) in &self.got {
            if topic.ends_with("/readings")
                && let Ok(envelope) = Envelope::decode_from(topic, payload)
            {
                for r in envelope.readings {
                    *ids.entry(r.id).or_default() += 1;
                }
            }
        }
        ids
    }
}

/// Ingest's view: its own user, readings through its shared subscription (as `rpm ingest`
/// consumes them), and every gateway's status.
async fn ingest_inbox(broker: &BrokerConfig) -> Inbox {
    let readings = vitals::topic::shared("ingest", Channel::Readings);
    Inbox::subscribe(
        options(broker, "ingest-test"),
        &[readings.as_str(), "rpm/v1/gw/+/status"],
    )
    .await
}

// --- Readings and the forwarder ----------------------------------------------------------------

fn reading(gateway: &str, n: u32) -> Reading {
    let at = datetime!(2026-11-20 00:00:00 UTC) + time::Duration::seconds(i64::from(n));
    Reading {
        id: ReadingId(Default::default()),
        seq: 0,
        gateway: GatewayId::new(gateway).expect("valid"),
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

struct Running {
    task: tokio::task::JoinHandle<Result<(), publish::ForwarderError>>,
    stats: Arc<ForwarderStats>,
    shutdown: CancellationToken,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the forwarder task joined")
            .expect("the forwarder stopped cleanly");
    }
}

/// The real forwarder for gateway `gateway`, with the broker table `broker` (its user name
/// need not be `gateway`: that is the impostor case).
fn start_forwarder(gateway: &str, broker: &BrokerConfig, queue: Queue) -> Running {
    let gw = GatewayId::new(gateway).expect("valid");
    let settings = ForwarderSettings {
        gateway: gw.clone(),
        forward: ForwardConfig {
            batch_max: 50,
            linger: Duration::from_millis(20),
            max_inflight: 4,
        },
        status_interval: Duration::from_secs(60),
        disk_low_bytes: 1,
        max_backoff: Duration::from_millis(300),
        poll_interval: Duration::from_secs(1),
    };
    let will = publish::offline_status(&gw).expect("json");
    let status_topic = Topic::new(gw, Channel::Status).to_string();
    let options = publish::mqtt_options(broker, gateway, Some((status_topic, will)), 4)
        .expect("forwarder options");
    let mqtt = AsyncClient::new(options.clone(), options.request_channel_capacity());
    let stats = Arc::new(ForwarderStats::default());
    let shutdown = CancellationToken::new();
    let (_devices_tx, devices) = watch::channel(Vec::new());
    let (config_tx, _config) = watch::channel(None);
    let forwarder = publish::Forwarder {
        settings,
        queue,
        mqtt,
        wake: Arc::new(Notify::new()),
        devices,
        config_out: config_tx,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    Running {
        task: tokio::spawn(forwarder.run()),
        stats,
        shutdown,
    }
}

async fn queue_with(dir: &Path, gateway: &str, n: u32) -> (Queue, HashSet<ReadingId>) {
    let queue = Queue::open(dir.join("q.db")).await.expect("queue");
    let readings: Vec<Reading> = (0..n).map(|i| reading(gateway, i)).collect();
    queue.push(&readings).await.expect("push");
    (queue, readings.iter().map(|r| r.id).collect())
}

async fn depth(queue: &Queue) -> u64 {
    queue.depth().await.expect("depth").readings
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes a marker as `gw-0002` on its own readings topic and waits until `inbox` has it.
/// Mosquitto handles one message at a time and delivers to a subscriber in order, so once the
/// marker (published after the refusals were acknowledged) has arrived, anything a refused
/// publish could have delivered would have arrived before it.
async fn flush_with_marker(broker: &SecureBroker, inbox: &mut Inbox) {
    let mut marker = connect(options(&broker.plain("gw-0002"), "gw-0002-marker"))
        .await
        .expect("gw-0002 connects");
    let reason = marker
        .publish("rpm/v1/gw/gw-0002/readings", b"marker", false)
        .await;
    assert_eq!(
        reason,
        PubAckReason::Success,
        "gw-0002 may publish as itself"
    );
    assert!(
        inbox
            .wait_until(|got| got.iter().any(|(_, p)| p == b"marker"))
            .await,
        "the marker arrived: {:?}",
        inbox.topics()
    );
}

// --- Tests -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_its_own_credentials_forwards_and_ingest_receives_through_its_shared_subscription()
 {
    let Some(broker) = start_secure_broker() else {
        return;
    };
    let mut inbox = ingest_inbox(&broker.plain("ingest")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, expected) = queue_with(dir.path(), "gw-0001", 300).await;
    let run = start_forwarder("gw-0001", &broker.plain("gw-0001"), queue.clone());

    wait_for("the queue to drain", async || depth(&queue).await == 0).await;
    let arrived = inbox.wait_until(|got| {
        let n: HashSet<ReadingId> = got
            .iter()
            .filter(|(t, _)| t == "rpm/v1/gw/gw-0001/readings")
            .filter_map(|(t, p)| Envelope::decode_from(t, p).ok())
            .flat_map(|e| e.readings.into_iter().map(|r| r.id))
            .collect();
        n == expected
    });
    assert!(arrived.await, "every reading reached ingest");
    assert!(
        inbox.reading_ids().values().all(|c| *c == 1),
        "no reading arrived twice"
    );
    assert!(
        inbox
            .wait_until(|got| got.iter().any(|(t, _)| t == "rpm/v1/gw/gw-0001/status"))
            .await,
        "ingest reads the gateway's status"
    );
    assert_eq!(run.stats.readings_acked.load(Ordering::Relaxed), 300);
    assert_eq!(run.stats.messages_refused.load(Ordering::Relaxed), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_on_another_gateways_topic_is_refused_with_puback_not_authorized() {
    let Some(broker) = start_secure_broker() else {
        return;
    };
    let mut inbox = ingest_inbox(&broker.plain("ingest")).await;
    let mut gw1 = connect(options(&broker.plain("gw-0001"), "gw-0001"))
        .await
        .expect("gw-0001 connects");

    // As another gateway: readings and status are refused (0x87), not silently dropped.
    for topic in ["rpm/v1/gw/gw-0002/readings", "rpm/v1/gw/gw-0002/status"] {
        assert_eq!(
            gw1.publish(topic, b"impostor", false).await,
            PubAckReason::NotAuthorized,
            "gw-0001 publishing on {topic}"
        );
    }
    // A gateway does not write configuration, not even its own.
    assert_eq!(
        gw1.publish("rpm/v1/gw/gw-0001/config", b"{}", true).await,
        PubAckReason::NotAuthorized
    );
    // Nor anything outside the scheme.
    assert_eq!(
        gw1.publish("rpm/v1/other", b"x", false).await,
        PubAckReason::NotAuthorized
    );
    // Its own readings topic is fine.
    assert_eq!(
        gw1.publish("rpm/v1/gw/gw-0001/readings", b"own", false)
            .await,
        PubAckReason::Success
    );
    // The server's user never publishes as a gateway (the ACL's deny line).
    let mut ingest = connect(options(&broker.plain("ingest"), "ingest-publisher"))
        .await
        .expect("ingest connects");
    assert_eq!(
        ingest
            .publish("rpm/v1/gw/ingest/readings", b"x", false)
            .await,
        PubAckReason::NotAuthorized
    );

    flush_with_marker(&broker, &mut inbox).await;
    assert!(
        !inbox.got.iter().any(|(_, p)| p == b"impostor"),
        "ingest received a refused message: {:?}",
        inbox.topics()
    );
    assert!(
        inbox.got.iter().any(|(_, p)| p == b"own"),
        "the allowed publish arrived"
    );
    assert!(
        broker.broker.log().contains("Denied PUBLISH"),
        "Mosquitto logged the denial"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_whose_gateway_id_is_not_its_user_name_is_refused_and_keeps_its_readings() {
    let Some(broker) = start_secure_broker() else {
        return;
    };
    let mut inbox = ingest_inbox(&broker.plain("ingest")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, expected) = queue_with(dir.path(), "gw-0002", 120).await;
    // Claims to be gw-0002, logs in as gw-0001.
    let run = start_forwarder("gw-0002", &broker.plain("gw-0001"), queue.clone());

    // Refused, backs off, refused again: it neither gives up nor drops anything.
    wait_for("two refused messages", async || {
        run.stats.messages_refused.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(run.stats.readings_acked.load(Ordering::Relaxed), 0);
    assert_eq!(depth(&queue).await, 120, "the readings stay queued");
    run.stop().await;
    assert_eq!(depth(&queue).await, 120, "the readings stay queued");

    flush_with_marker(&broker, &mut inbox).await;
    assert!(
        inbox.reading_ids().is_empty(),
        "ingest received readings published under another gateway's id"
    );
    assert!(
        !inbox.topics().contains(&"rpm/v1/gw/gw-0002/status"),
        "the impostor's status was delivered"
    );

    // With its own credentials the same queue goes out in full: nothing was lost.
    let run = start_forwarder("gw-0002", &broker.plain("gw-0002"), queue.clone());
    wait_for("the queue to drain", async || depth(&queue).await == 0).await;
    let arrived = inbox.wait_until(|got| {
        got.iter()
            .filter(|(t, _)| t.ends_with("/readings"))
            .filter_map(|(t, p)| Envelope::decode_from(t, p).ok())
            .flat_map(|e| e.readings.into_iter().map(|r| r.id))
            .collect::<HashSet<_>>()
            == expected
    });
    assert!(arrived.await, "every kept reading arrived once allowed");
    assert_eq!(run.stats.messages_refused.load(Ordering::Relaxed), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_receives_only_its_own_config() {
    let Some(broker) = start_secure_broker() else {
        return;
    };
    // gw-0001 subscribes to every gateway's config: Mosquitto grants the subscription but
    // delivers only what the ACL lets it read.
    let mut gw1 = Inbox::subscribe(
        options(&broker.plain("gw-0001"), "gw-0001"),
        &["rpm/v1/gw/+/config"],
    )
    .await;
    let mut server = connect(options(&broker.plain("ingest"), "server"))
        .await
        .expect("ingest connects");
    for gw in ["gw-0002", "gw-0001"] {
        let reason = server
            .publish(&format!("rpm/v1/gw/{gw}/config"), gw.as_bytes(), true)
            .await;
        assert_eq!(reason, PubAckReason::Success, "ingest writes {gw}'s config");
    }
    // gw-0001's own config was published last: once it is here, gw-0002's would be too.
    assert!(
        gw1.wait_until(|got| got.iter().any(|(_, p)| p == b"gw-0001"))
            .await
    );
    assert_eq!(
        gw1.topics(),
        vec!["rpm/v1/gw/gw-0001/config"],
        "gw-0001 read another gateway's config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_in_the_connack_and_the_broker_stays_up() {
    let Some(mut broker) = start_secure_broker() else {
        return;
    };
    let refused = |result: Result<Raw, ConnectionError>| match result {
        Ok(_) => panic!("connected with bad credentials"),
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got: {e}"),
    };
    let mut wrong = broker.plain("gw-0001");
    wrong.password = Some("not-the-password".into());
    let code = refused(connect(options(&wrong, "gw-0001")).await);
    // Mosquitto 2.0 answers 0x87 Not authorized (0x86 Bad user name or password would do).
    assert!(
        matches!(
            code,
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
        ),
        "{code:?}"
    );
    let mut unknown = broker.plain("gw-0001");
    unknown.username = Some("gw-9999".into());
    refused(connect(options(&unknown, "gw-9999")).await);
    let mut anonymous = broker.plain("gw-0001");
    anonymous.username = None;
    anonymous.password = None;
    refused(connect(options(&anonymous, "anonymous")).await);
    // Over TLS the same.
    let mut wrong_tls = broker.tls(broker.tls_port, Some("gw-0001"));
    wrong_tls.password = Some("not-the-password".into());
    refused(connect(options(&wrong_tls, "gw-0001")).await);

    // A forwarder with a wrong password keeps its readings and keeps trying.
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = queue_with(dir.path(), "gw-0001", 10).await;
    let run = start_forwarder("gw-0001", &wrong, queue.clone());
    assert!(
        tokio::time::timeout(Duration::from_secs(2), async {
            while run.stats.connects.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_err(),
        "the forwarder connected with a wrong password"
    );
    assert!(!run.task.is_finished(), "the forwarder keeps running");
    run.stop().await;
    assert_eq!(depth(&queue).await, 10);

    assert!(broker.broker.is_running(), "the broker is still up");
    connect(options(&broker.plain("gw-0001"), "gw-0001"))
        .await
        .expect("the right password still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_are_forwarded_over_tls_with_the_pinned_ca() {
    let Some(broker) = start_secure_broker() else {
        return;
    };
    // Ingest over its own TLS listener, the gateway over the gateways' one.
    let mut inbox = ingest_inbox(&broker.tls(broker.ingest_tls_port, Some("ingest"))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, expected) = queue_with(dir.path(), "gw-0001", 200).await;
    let run = start_forwarder(
        "gw-0001",
        &broker.tls(broker.tls_port, Some("gw-0001")),
        queue.clone(),
    );
    wait_for("the queue to drain over TLS", async || {
        depth(&queue).await == 0
    })
    .await;
    let arrived = inbox.wait_until(|got| {
        got.iter()
            .filter(|(t, _)| t.ends_with("/readings"))
            .filter_map(|(t, p)| Envelope::decode_from(t, p).ok())
            .flat_map(|e| e.readings.into_iter().map(|r| r.id))
            .collect::<HashSet<_>>()
            == expected
    });
    assert!(arrived.await, "every reading arrived over TLS");
    assert_eq!(run.stats.readings_acked.load(Ordering::Relaxed), 200);
    run.stop().await;
    let log = broker.broker.log();
    assert!(
        log.contains(&format!("on port {}", broker.tls_port)),
        "the gateway came in on the TLS listener:\n{log}"
    );
}

/// Asserts the connection failed in the TLS handshake on the server's certificate.
fn assert_certificate_error(result: Result<Raw, ConnectionError>) {
    let e = match result {
        Ok(_) => panic!("connected without trusting the broker's CA"),
        Err(e) => e,
    };
    let rustls_error = match &e {
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) | ConnectionError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        ConnectionError::Tls(rumqttc::TlsError::TLS(tls)) => Some(tls),
        _ => None,
    };
    assert!(
        matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_))),
        "expected a certificate error, got: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_tls_fails_on_the_certificate_and_never_falls_back_to_plain_tcp() {
    let Some(broker) = start_secure_broker() else {
        return;
    };
    // No ca_file: the system's roots, which do not include the test CA.
    let mut system_roots = broker.tls(broker.tls_port, Some("gw-0001"));
    system_roots.ca_file = None;
    assert_certificate_error(connect(options(&system_roots, "gw-0001")).await);

    // A CA that did not sign the server's certificate.
    let other = tempfile::tempdir().expect("tempdir");
    let other_pki = make_pki(other.path());
    let mut wrong_ca = broker.tls(broker.tls_port, Some("gw-0001"));
    wrong_ca.ca_file = Some(other_pki.ca.clone());
    assert_certificate_error(connect(options(&wrong_ca, "gw-0001")).await);

    // mqtts:// pointed at a plain listener: the TLS handshake fails, no plain-text session.
    let mut to_plain = broker.tls(broker.plain_port(), Some("gw-0001"));
    to_plain.ca_file = Some(broker.pki.ca.clone());
    match connect(options(&to_plain, "gw-0001")).await {
        Ok(_) => panic!("mqtts:// connected to a plain-text listener"),
        Err(ConnectionError::Tls(_) | ConnectionError::Io(_)) => {}
        Err(e) => panic!("expected a TLS failure, got: {e:?}"),
    }

    // And the forwarder without the CA forwards nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = queue_with(dir.path(), "gw-0001", 10).await;
    let run = start_forwarder("gw-0001", &system_roots, queue.clone());
    assert!(
        tokio::time::timeout(Duration::from_secs(2), async {
            while run.stats.connects.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_err(),
        "the forwarder connected without the CA"
    );
    run.stop().await;
    assert_eq!(depth(&queue).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_gateway_listener_one_gateway_cannot_take_over_anothers_client_id() {
    let Some(broker) = start_secure_broker() else {
        return;
    };
    let mut gw2 = connect(options(
        &broker.tls(broker.tls_port, Some("gw-0002")),
        "gw-0002",
    ))
    .await
    .expect("gw-0002 connects");
    // gw-0001 connects with gw-0002's client id: `use_username_as_clientid` makes it gw-0001.
    let _impostor = connect(options(
        &broker.tls(broker.tls_port, Some("gw-0001")),
        "gw-0002",
    ))
    .await
    .expect("gw-0001 connects");
    // Mosquitto would have disconnected gw-0002 while handling the impostor's CONNECT, before
    // its CONNACK: gw-0002's next publish would meet that disconnect first.
    assert_eq!(
        gw2.publish("rpm/v1/gw/gw-0002/readings", b"still here", false)
            .await,
        PubAckReason::NoMatchingSubscribers,
        "gw-0002 kept its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_authenticated_by_its_client_certificate_forwards_as_its_cn() {
    let Some(broker) = start_secure_broker() else {
        return;
    };
    let mut inbox = ingest_inbox(&broker.plain("ingest")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, expected) = queue_with(dir.path(), "gw-0001", 50).await;
    let mut by_cert = broker.tls(broker.cert_port, None);
    by_cert.client_cert = Some(broker.pki.client_cert.clone());
    by_cert.client_key = Some(broker.pki.client_key.clone());
    assert!(by_cert.check().is_ok());
    let run = start_forwarder("gw-0001", &by_cert, queue.clone());
    wait_for("the queue to drain", async || depth(&queue).await == 0).await;
    let arrived = inbox.wait_until(|got| {
        got.iter()
            .filter(|(t, _)| t == "rpm/v1/gw/gw-0001/readings")
            .filter_map(|(t, p)| Envelope::decode_from(t, p).ok())
            .flat_map(|e| e.readings.into_iter().map(|r| r.id))
            .collect::<HashSet<_>>()
            == expected
    });
    assert!(arrived.await, "readings arrived from the certificate's CN");
    run.stop().await;

    // The certificate's CN is the user name the ACL sees: gw-0001 only.
    let mut raw = connect(options(&by_cert, "cert-client"))
        .await
        .expect("connects with its certificate");
    assert_eq!(
        raw.publish("rpm/v1/gw/gw-0002/readings", b"impostor", false)
            .await,
        PubAckReason::NotAuthorized
    );

    // Without a certificate that listener lets nobody in, password or not.
    let no_cert = broker.tls(broker.cert_port, Some("gw-0001"));
    assert!(
        connect(options(&no_cert, "gw-0001")).await.is_err(),
        "connected without a client certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_password_file_is_valid_for_mosquitto() {
    // The committed example, with the ACL, in a broker of its own.
    let files = tempfile::tempdir().expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    for name in ["passwd.example", "acl"] {
        std::fs::copy(fixture(name), files.path().join(name)).expect("copy a fixture");
    }
    let extra = format!(
        "allow_anonymous false\npassword_file {dir}/passwd.example\nacl_file {dir}/acl\n",
        dir = files.path().display()
    );
    let Some(broker) = unavailable(Mosquitto::start_with(&extra)) else {
        return;
    };
    for user in ["gw-0001", "gw-0002", "ingest"] {
        let mut config = BrokerConfig::new(broker.url().parse().expect("url"));
        config.username = Some(user.to_owned());
        config.password = Some(format!("EXAMPLE-ONLY-{user}-not-a-password"));
        connect(options(&config, user))
            .await
            .unwrap_or_else(|e| panic!("{user} with the documented example password: {e}"));
    }
}
