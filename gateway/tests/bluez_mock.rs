//! The BlueZ backend (`gateway::device::bluez`, the real btleplug code) against a mock BlueZ,
//! without Bluetooth hardware.
//!
//! Each test starts a private `dbus-daemon` and runs this test binary again as a child with
//! `DBUS_SYSTEM_BUS_ADDRESS` pointing at it (libdbus reads the variable at the first
//! connection, and setting it in this process would need `unsafe`). The child starts
//! `tests/bluez_mock/bluez_mock.py`, which owns `org.bluez` on that bus and plays bluetoothd:
//! an adapter `hci0`, a blood pressure cuff (0x1810 with 0x2A35 by indication, Device
//! Information strings, Battery), a second cuff that stores records (Blood Pressure Record
//! 0x2B36 and RACP 0x2A52) and has a wrong clock (Current Time 0x2A2B), a pulse oximeter
//! (0x1822 with 0x2A5E) and a heart-rate strap a health scan must not report, all paired
//! with the hub unless a test unpairs one (`unpair cuff`, then `pair cuff`). The child
//! drives the backend and the mock (through the mock's stdin) and asserts; the parent checks
//! that it passed.
//!
//! Needs `dbus-daemon` and a python3 with dbus-python and PyGObject (Debian: `dbus-daemon`,
//! `python3-dbus`, `python3-gi`; `scripts/services` installs them). Under `CI=true` a missing
//! piece fails the test; elsewhere it is skipped with a note.

#![cfg(all(feature = "bluez", target_os = "linux"))]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::codec::blood_pressure::{BloodPressureMeasurement, PressureUnit};
use gateway::codec::blood_pressure_record::{RecordBody, RecordedValue};
use gateway::codec::date_time::DateTime;
use gateway::codec::{self, Decoded, Float11073, device_information::DisString, segment};
use gateway::device::bluez::{BluezConfig, BluezSource};
use gateway::device::{
    Address, BackoffConfig, CharacteristicId, DeviceError, DeviceLink, DeviceSource, LinkEvent,
    Phase, ScanFilter, Session, SessionConfig, SessionError, SessionStats, SystemClock, Uuid,
    services,
};
use gateway::queue::Queue;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use vitals::{DeviceBinding, DeviceId, GatewayId, Kind, PatientKey};

/// Set in the child: which scenario to run.
const SCENARIO: &str = "RPM_BLUEZ_MOCK_SCENARIO";
/// Set in the child: the python that can run the mock.
const PYTHON: &str = "RPM_BLUEZ_MOCK_PYTHON";

const CUFF: Address = Address([0xC0, 0xFF, 0xEE, 0x00, 0x11, 0x22]);
const STORING_CUFF: Address = Address([0xC0, 0xFF, 0xEE, 0x00, 0x77, 0x88]);
const OXIMETER: Address = Address([0xC0, 0xFF, 0xEE, 0x00, 0x33, 0x44]);
const HEART_RATE_STRAP: Address = Address([0xC0, 0xFF, 0xEE, 0x00, 0x55, 0x66]);

const BPM: CharacteristicId = CharacteristicId::sig(0x1810, 0x2A35);
const MANUFACTURER: CharacteristicId = CharacteristicId::sig(0x180A, 0x2A29);
const BATTERY: CharacteristicId = CharacteristicId::sig(0x180F, 0x2A19);
const VENDOR_CONTROL: CharacteristicId = CharacteristicId::sig(0xFFF0, 0xFFF1);

// --- the parent: a private bus, and this binary again as the child ------------------------

#[test]
fn backend_scans_connects_reads_subscribes_and_sees_disconnections() {
    run_scenario("backend");
}

#[test]
fn session_over_bluez_queues_an_indicated_reading_and_resubscribes_after_reconnect() {
    run_scenario("session");
}

#[test]
fn allowlisted_but_unpaired_device_is_refused_until_paired() {
    run_scenario("unpaired");
}

#[test]
fn session_over_bluez_refuses_strangers_sets_the_clock_fetches_records_and_heals_a_wedged_link() {
    run_scenario("records");
}

/// The first python that can import what the mock needs.
fn mock_python() -> Result<String, String> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var(PYTHON) {
        candidates.push(p);
    }
    candidates.extend(["python3".to_string(), "/usr/bin/python3".to_string()]);
    for python in &candidates {
        let ok = Command::new(python)
            .args([
                "-c",
                "import dbus, dbus.service, dbus.mainloop.glib; from gi.repository import GLib",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(python.clone());
        }
    }
    Err(format!(
        "no python with dbus-python and PyGObject among {candidates:?} \
         (Debian: python3-dbus python3-gi; see scripts/services)"
    ))
}

fn run_scenario(name: &str) {
    let Some(bus) = testkit::unavailable(testkit::DbusDaemon::start()) else {
        return;
    };
    let Some(python) = testkit::unavailable(mock_python()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "child_scenario",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO, name)
        .env(PYTHON, &python)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("re-running the test binary");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let passed = format!("SCENARIO {name} PASSED");
    assert!(
        status.is_some_and(|s| s.success()) && stdout.contains(&passed),
        "scenario {name} failed ({status:?}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

/// The child's entry point: does nothing unless a parent test started it.
#[test]
fn child_scenario() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        match scenario.as_str() {
            "backend" => backend_scenario().await,
            "session" => session_scenario().await,
            "records" => records_scenario().await,
            "unpaired" => unpaired_scenario().await,
            other => panic!("unknown scenario {other}"),
        }
    });
    println!("SCENARIO {scenario} PASSED");
}

// --- the mock ---------------------------------------------------------------------------

/// The python BlueZ mock: commands on its stdin, what the client did on its stdout.
struct Mock {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line seen so far.
    seen: Vec<String>,
}

impl Mock {
    async fn start() -> Mock {
        let python = std::env::var(PYTHON).expect("the parent names the python");
        let bus = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").expect("the parent names the bus");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bluez_mock/bluez_mock.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--bus", &bus])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the mock");
        let stdin = child.stdin.take().expect("mock stdin");
        let stdout = child.stdout.take().expect("mock stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mock = Mock {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        mock.expect("READY").await;
        mock
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("writing to the mock");
        self.stdin.flush().expect("flushing the mock's stdin");
    }

    /// Waits for a line starting with `prefix` that came after the last one `expect`
    /// returned; returns it.
    async fn expect(&mut self, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    println!("mock: {line}");
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Ok(None) => panic!("the mock exited; waiting for {prefix:?}"),
                Err(_) => panic!(
                    "no {prefix:?} from the mock within 10 s; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// The match rules the backend holds on the bus (`None` when the daemon cannot say),
    /// after letting asynchronous RemoveMatch calls land.
    async fn match_rules(&mut self) -> Option<u64> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.send("match-rules");
        let line = self.expect("MATCH_RULES").await;
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok())
    }

    /// Every line the mock printed so far.
    fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            println!("mock: {line}");
            self.seen.push(line);
        }
        &self.seen
    }

    fn count(&mut self, prefix: &str) -> usize {
        self.drain()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- helpers -----------------------------------------------------------------------------

/// The hex of a vector in `fixtures/gatt/<file>`, without spaces.
fn fixture_hex(file: &str, name: &str) -> String {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/gatt")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("fixture file");
    let doc: toml::Value = toml::from_str(&text).expect("fixture TOML");
    let vectors = doc
        .get("vector")
        .and_then(toml::Value::as_array)
        .expect("[[vector]] entries");
    let v = vectors
        .iter()
        .find(|v| v.get("name").and_then(toml::Value::as_str) == Some(name))
        .expect("the named vector");
    v.get("hex")
        .and_then(toml::Value::as_str)
        .expect("hex")
        .split_whitespace()
        .collect()
}

fn config() -> BluezConfig {
    BluezConfig {
        adapter: Some("hci0".into()),
        scan_restart: Duration::from_secs(1),
        call_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(5),
        find_timeout: Duration::from_secs(2),
        require_pairing: true,
    }
}

async fn next_event(events: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a link event within 5 s")
        .expect("the link's event channel is open")
}

fn assert_bp_138_88_120(bytes: &[u8]) {
    let Ok(Decoded::BloodPressureMeasurement(m)) = codec::decode(0x2A35, bytes) else {
        panic!("not a blood pressure measurement: {bytes:02x?}");
    };
    assert_eq!(m.systolic.to_f64(), Some(138.0));
    assert_eq!(m.diastolic.to_f64(), Some(88.0));
    assert_eq!(m.mean_arterial_pressure.to_f64(), Some(120.0));
    assert_eq!(m.pulse_rate_per_min.and_then(|p| p.to_f64()), Some(60.0));
}

// --- scenario: the backend on its own ------------------------------------------------------

async fn backend_scenario() {
    let mut mock = Mock::start().await;

    // Adapter by name; a wrong name says which adapters exist.
    let wrong = BluezSource::new(BluezConfig {
        adapter: Some("hci9".into()),
        ..config()
    })
    .await;
    match wrong {
        Err(DeviceError::AdapterUnavailable(m)) => assert!(m.contains("hci0"), "{m}"),
        Err(e) => panic!("expected AdapterUnavailable, got {e}"),
        Ok(_) => panic!("hci9 does not exist"),
    }
    let source = BluezSource::new(config()).await.expect("the BlueZ source");
    assert_eq!(source.adapter_name(), "hci0");

    // A scan for everything, so BlueZ knows the heart-rate strap too.
    let all = source
        .scan(&ScanFilter {
            services: vec![],
            duration: Duration::from_millis(800),
        })
        .await
        .expect("an unfiltered scan");
    let addresses: Vec<Address> = all.iter().map(|a| a.address).collect();
    assert!(addresses.contains(&HEART_RATE_STRAP), "{addresses:?}");

    // The health scan, longer than scan_restart: discovery restarts, the filter goes to
    // BlueZ each time, and what another client's filter lets in is filtered out here.
    mock.send("ignore-filter on");
    mock.expect("IGNORE_FILTER").await;
    let before = mock.count("START_DISCOVERY");
    let health = source
        .scan(&ScanFilter::default_with(Duration::from_millis(2500)))
        .await
        .expect("a health scan");
    let addresses: Vec<Address> = health.iter().map(|a| a.address).collect();
    assert!(addresses.contains(&CUFF), "{addresses:?}");
    assert!(addresses.contains(&OXIMETER), "{addresses:?}");
    assert!(!addresses.contains(&HEART_RATE_STRAP), "{addresses:?}");
    let cuff_ad = health
        .iter()
        .find(|a| a.address == CUFF)
        .expect("the cuff advertised");
    assert!(cuff_ad.services.contains(&services::BLOOD_PRESSURE));
    assert!(cuff_ad.rssi.is_some());
    let starts: Vec<String> = mock
        .drain()
        .iter()
        .filter(|l| l.starts_with("START_DISCOVERY"))
        .skip(before)
        .cloned()
        .collect();
    assert!(starts.len() >= 2, "discovery restarted: {starts:?}");
    for s in &starts {
        for uuid in ["00001810-", "00001822-", "00001840-"] {
            assert!(s.contains(uuid), "filter sent to BlueZ: {s}");
        }
    }
    mock.send("ignore-filter off");

    // Connect, discover, read Device Information.
    let mut link = source.connect(CUFF).await.expect("connecting the cuff");
    mock.expect("CONNECT cuff").await;
    assert_eq!(link.address(), CUFF);
    let mut events = link.take_events().expect("the event stream");
    assert!(link.take_events().is_none(), "events are taken once");
    let chars = link.discover().await.expect("discovery");
    let bpm = chars
        .iter()
        .find(|c| c.id == BPM)
        .expect("0x2A35 in 0x1810");
    assert!(bpm.properties.indicate && !bpm.properties.notify && !bpm.properties.read);
    let manufacturer = link.read(MANUFACTURER).await.expect("reading 0x2A29");
    assert_eq!(
        DisString::decode(&manufacturer)
            .expect("a DIS string")
            .value,
        "Acme Medical"
    );
    assert_eq!(link.read(BATTERY).await.expect("battery"), [87]);

    // Subscribing twice is harmless: one StartNotify reaches BlueZ.
    link.subscribe(BPM).await.expect("subscribing 0x2A35");
    link.subscribe(BPM).await.expect("subscribing 0x2A35 again");
    mock.expect("START_NOTIFY cuff 2a35").await;
    link.subscribe(BATTERY).await.expect("subscribing battery");
    mock.expect("START_NOTIFY cuff 2a19").await;
    assert_eq!(mock.count("START_NOTIFY cuff 2a35"), 1);

    // What the characteristic does not allow is refused, permanently.
    let e = link
        .subscribe(MANUFACTURER)
        .await
        .expect_err("0x2A29 cannot notify");
    assert_eq!(e, DeviceError::NotPermitted(MANUFACTURER.uuid, "subscribe"));
    assert!(!e.is_retryable());
    let e = link
        .write(MANUFACTURER, &[1])
        .await
        .expect_err("0x2A29 is read-only");
    assert!(!e.is_retryable(), "{e}");
    let absent = CharacteristicId::sig(0x1810, 0x2A36);
    assert_eq!(
        link.read(absent).await,
        Err(DeviceError::NoSuchCharacteristic(Uuid::from_u16(0x2A36)))
    );

    // Write with response.
    link.write(VENDOR_CONTROL, &[0x01, 0x02, 0x03])
        .await
        .expect("writing the vendor control point");
    let line = mock.expect("WRITE cuff fff1").await;
    assert_eq!(line, "WRITE cuff fff1 010203 request");

    // BlueZ signals a read value like a notification; a characteristic the link did not
    // subscribe to does not become an event.
    link.read(MANUFACTURER).await.expect("0x2A29 again");
    mock.expect("READ cuff 2a29").await;

    // An indication with real GATT bytes arrives as a value and decodes.
    let hex = fixture_hex("blood_pressure.toml", "nordic_bpm_full");
    mock.send(&format!("notify cuff 2a35 {hex}"));
    mock.expect("SENT cuff 2a35").await;
    match next_event(&mut events).await {
        LinkEvent::Value {
            characteristic,
            bytes,
        } => {
            assert_eq!(characteristic, BPM);
            assert_eq!(hex::encode(&bytes), hex);
            assert_bp_138_88_120(&bytes);
        }
        other => panic!("expected the indication, got {other:?}"),
    }
    // A notification on the other subscribed characteristic.
    mock.send("notify cuff 2a19 32");
    match next_event(&mut events).await {
        LinkEvent::Value {
            characteristic,
            bytes,
        } => {
            assert_eq!(characteristic, BATTERY);
            assert_eq!(bytes, [0x32]);
        }
        other => panic!("expected the battery notification, got {other:?}"),
    }

    // A wedged link: BlueZ never answers the read; the call times out instead of hanging.
    mock.send("hang-reads on");
    mock.expect("HANG_READS on").await;
    let started = Instant::now();
    let e = link.read(BATTERY).await.expect_err("no answer");
    assert_eq!(e, DeviceError::Timeout);
    assert!(e.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    mock.send("hang-reads off");
    mock.expect("HANG_READS off").await;

    // The device drops the link: a Disconnected event, then the channel ends.
    mock.send("disconnect cuff");
    mock.expect("DROPPED_LINK cuff").await;
    match next_event(&mut events).await {
        LinkEvent::Disconnected { .. } => {}
        other => panic!("expected the disconnection, got {other:?}"),
    }
    assert!(
        timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("the channel closes")
            .is_none()
    );
    // Operations on the dead link fail quickly and are retryable.
    let started = Instant::now();
    let e = link.read(BATTERY).await.expect_err("the link is gone");
    assert!(e.is_retryable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    link.disconnect()
        .await
        .expect("disconnecting a dropped link");
    drop(link);

    // Reconnect: a new link; subscribing again works and values flow again.
    let mut link = source.connect(CUFF).await.expect("reconnecting the cuff");
    let mut events = link.take_events().expect("the new event stream");
    link.discover().await.expect("discovery again");
    link.subscribe(BPM)
        .await
        .expect("subscribing after reconnect");
    mock.expect("START_NOTIFY cuff 2a35").await;
    mock.send(&format!("notify cuff 2a35 {hex}"));
    match next_event(&mut events).await {
        LinkEvent::Value { bytes, .. } => assert_bp_138_88_120(&bytes),
        other => panic!("expected the indication, got {other:?}"),
    }
    // Closing the link ourselves reaches BlueZ.
    link.disconnect().await.expect("disconnecting");
    mock.expect("DISCONNECT cuff").await;
    drop(link);

    // Match rules do not pile up: more scans, connections, subscriptions and
    // disconnections leave the client holding as many rules as before.
    let before = mock.match_rules().await;
    for _ in 0..4 {
        source
            .scan(&ScanFilter::default_with(Duration::from_millis(300)))
            .await
            .expect("a short scan");
        let mut link = source.connect(CUFF).await.expect("connecting again");
        let mut events = link.take_events().expect("events");
        link.discover().await.expect("discovery");
        link.subscribe(BPM).await.expect("subscribing");
        mock.expect("START_NOTIFY cuff 2a35").await;
        mock.send(&format!("notify cuff 2a35 {hex}"));
        assert!(matches!(
            next_event(&mut events).await,
            LinkEvent::Value { .. }
        ));
        mock.send("disconnect cuff");
        assert!(matches!(
            next_event(&mut events).await,
            LinkEvent::Disconnected { .. }
        ));
        link.disconnect().await.expect("closing");
    }
    let after = mock.match_rules().await;
    if let (Some(before), Some(after)) = (before, after) {
        assert_eq!(after, before, "match rules held before and after");
    }

    // A pulse oximeter link dropped without disconnect() is disconnected anyway.
    let mut oxi = source
        .connect(OXIMETER)
        .await
        .expect("connecting the oximeter");
    let oxi_chars = oxi.discover().await.expect("oximeter discovery");
    assert!(
        oxi_chars
            .iter()
            .any(|c| c.id == CharacteristicId::sig(0x1822, 0x2A5E) && c.properties.indicate)
    );
    drop(oxi);
    mock.expect("DISCONNECT oxi").await;

    // An address BlueZ never saw: looked for, then not found.
    let stranger: Address = "c0:ff:ee:99:99:99".parse().expect("an address");
    match source.connect(stranger).await {
        Err(DeviceError::NotFound) => {}
        Err(e) => panic!("expected NotFound, got {e}"),
        Ok(_) => panic!("connected to a device that does not exist"),
    }
}

trait DefaultWith {
    fn default_with(duration: Duration) -> Self;
}

impl DefaultWith for ScanFilter {
    /// The health services, for `duration`.
    fn default_with(duration: Duration) -> Self {
        ScanFilter {
            duration,
            ..ScanFilter::default()
        }
    }
}

// --- scenario: a real session over the backend ----------------------------------------------

async fn wait_for(
    stats: &mut watch::Receiver<SessionStats>,
    what: &str,
    f: impl Fn(&SessionStats) -> bool,
) -> SessionStats {
    let reached = timeout(Duration::from_secs(30), stats.wait_for(|s| f(s)))
        .await
        .is_ok_and(|r| r.is_ok());
    let now = stats.borrow().clone();
    assert!(reached, "session never got to: {what}; stats {now:?}");
    now
}

async fn session_scenario() {
    let mut mock = Mock::start().await;
    let source = Arc::new(BluezSource::new(config()).await.expect("the BlueZ source"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let queue = Queue::open(dir.path().join("queue.db"))
        .await
        .expect("the queue");
    let bindings: Arc<[DeviceBinding]> = vec![DeviceBinding {
        id: DeviceId::BdAddr(CUFF.0),
        patient: Some(PatientKey::new("pk-bluez-mock").expect("a patient key")),
        users: vec![],
    }]
    .into();
    let session_config = SessionConfig {
        gateway: GatewayId::new("gw-bluez").expect("a gateway id"),
        clock_tolerance: Duration::from_secs(2),
        watchdog: Duration::from_secs(30),
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        op_timeout: Duration::from_secs(8),
        zone: time::UtcOffset::UTC,
        low_battery_percent: 15,
        jitter_seed: 7,
    };
    let handle = Session::new(
        source.clone(),
        CUFF,
        bindings,
        queue.clone(),
        Arc::new(SystemClock),
        session_config,
    )
    .spawn(CancellationToken::new());
    let mut stats = handle.stats();

    // The session connects (BlueZ finds the cuff by discovery), identifies it through DIS,
    // reads the battery and subscribes.
    wait_for(&mut stats, "streaming", |s| s.phase == Phase::Streaming).await;
    mock.expect("START_NOTIFY cuff 2a35").await;
    let s = stats.borrow().clone();
    assert_eq!(s.battery, Some(87));
    assert_eq!(s.device, Some(DeviceId::BdAddr(CUFF.0)));

    // The cuff indicates a measurement: it lands in the queue.
    let hex = fixture_hex("blood_pressure.toml", "nordic_bpm_full");
    mock.send(&format!("notify cuff 2a35 {hex}"));
    wait_for(&mut stats, "one reading queued", |s| s.readings_queued == 1).await;
    let readings = queue.peek(0, 10).await.expect("the queue");
    assert_eq!(readings.len(), 1);
    let r = &readings[0];
    let value = |k: Kind| {
        r.values
            .iter()
            .find(|o| o.kind == k)
            .and_then(|o| o.value.number())
            .map(|d| d.to_f64())
    };
    assert_eq!(value(Kind::Systolic), Some(138.0));
    assert_eq!(value(Kind::Diastolic), Some(88.0));
    assert_eq!(value(Kind::MeanArterialPressure), Some(120.0));
    assert_eq!(r.device.manufacturer.as_deref(), Some("Acme Medical"));
    assert_eq!(r.device.model.as_deref(), Some("BP-100"));

    // The cuff drops the link: the session reconnects, subscribes again, and the next
    // measurement lands too.
    mock.send("disconnect cuff");
    wait_for(&mut stats, "reconnected", |s| {
        s.disconnects >= 1 && s.connects >= 2 && s.phase == Phase::Streaming
    })
    .await;
    mock.expect("START_NOTIFY cuff 2a35").await;
    let other = fixture_hex("blood_pressure.toml", "nordic_bpm_kpa_some");
    mock.send(&format!("notify cuff 2a35 {other}"));
    wait_for(&mut stats, "a second reading queued", |s| {
        s.readings_queued == 2
    })
    .await;
    let readings = queue.peek(0, 10).await.expect("the queue");
    assert_eq!(readings.len(), 2);

    handle.shutdown().await.expect("the session ends cleanly");
    mock.expect("DISCONNECT cuff").await;
}

// --- scenario: pairing is required as well as the allowlist ------------------------------

async fn unpaired_scenario() {
    let mut mock = Mock::start().await;
    mock.send("unpair cuff");
    mock.expect("UNPAIRED cuff").await;
    let source = Arc::new(BluezSource::new(config()).await.expect("the BlueZ source"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let queue = Queue::open(dir.path().join("queue.db"))
        .await
        .expect("the queue");
    // The cuff is allowlisted and bound to a patient, but not paired.
    let bindings: Arc<[DeviceBinding]> = vec![DeviceBinding {
        id: DeviceId::BdAddr(CUFF.0),
        patient: Some(PatientKey::new("pk-bluez-unpaired").expect("a patient key")),
        users: vec![],
    }]
    .into();
    let session_config = SessionConfig {
        gateway: GatewayId::new("gw-bluez").expect("a gateway id"),
        clock_tolerance: Duration::from_secs(2),
        watchdog: Duration::from_secs(30),
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(300),
        },
        op_timeout: Duration::from_secs(8),
        zone: time::UtcOffset::UTC,
        low_battery_percent: 15,
        jitter_seed: 13,
    };
    let handle = Session::new(
        source.clone(),
        CUFF,
        bindings,
        queue.clone(),
        Arc::new(SystemClock),
        session_config,
    )
    .spawn(CancellationToken::new());
    let mut stats = handle.stats();

    // Refused again and again, never connected to; the session goes on waiting.
    let s = wait_for(&mut stats, "refused three times", |s| {
        s.refused_unpaired >= 3
    })
    .await;
    assert_eq!((s.connects, s.readings_queued), (0, 0), "{s:?}");
    assert_ne!(s.phase, Phase::Stopped);
    assert_eq!(
        mock.count("CONNECT cuff"),
        0,
        "an unpaired device is not connected to"
    );
    // The backend says why, and that trying again can help.
    match source.connect(CUFF).await {
        Err(e) => {
            assert_eq!(e, DeviceError::NotPaired);
            assert!(e.is_retryable());
        }
        Ok(_) => panic!("connected to an unpaired device"),
    }
    // What the cuff sends meanwhile reaches nobody: nothing subscribed, nothing queued.
    let hex = fixture_hex("blood_pressure.toml", "nordic_bpm_full");
    mock.send(&format!("notify cuff 2a35 {hex}"));
    mock.expect("DROPPED cuff 2a35").await;
    assert!(queue.peek(0, 10).await.expect("the queue").is_empty());
    assert_eq!(mock.count("CONNECT cuff"), 0);

    // Someone pairs it (bluetoothctl pair): the next attempt is let in, and its readings
    // are queued.
    mock.send("pair cuff");
    mock.expect("PAIRED cuff").await;
    wait_for(&mut stats, "streaming once paired", |s| {
        s.phase == Phase::Streaming
    })
    .await;
    mock.expect("START_NOTIFY cuff 2a35").await;
    let refused = stats.borrow().refused_unpaired;
    mock.send(&format!("notify cuff 2a35 {hex}"));
    wait_for(&mut stats, "one reading queued", |s| s.readings_queued == 1).await;
    let readings = queue.peek(0, 10).await.expect("the queue");
    assert_eq!(readings.len(), 1);
    assert_eq!(
        readings[0].value_of(Kind::Systolic).map(|d| d.to_f64()),
        Some(138.0)
    );
    assert_eq!(readings[0].device.id, DeviceId::BdAddr(CUFF.0));

    // The bond is removed (the link drops with it): refused again, not reconnected.
    mock.send("unpair cuff");
    mock.expect("UNPAIRED cuff").await;
    wait_for(&mut stats, "refused again once unpaired", |s| {
        s.refused_unpaired > refused && s.disconnects >= 1
    })
    .await;
    let connects = stats.borrow().connects;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats.borrow().connects, connects);

    // With `ble.require_pairing = false` the same unpaired device is connected to.
    let lax = BluezSource::new(BluezConfig {
        require_pairing: false,
        ..config()
    })
    .await
    .expect("a source that does not require pairing");
    let before = mock.count("CONNECT cuff");
    let mut link = lax.connect(CUFF).await.expect("connecting without pairing");
    mock.expect("CONNECT cuff").await;
    assert_eq!(mock.count("CONNECT cuff"), before + 1);
    link.disconnect().await.expect("disconnecting");

    handle.shutdown().await.expect("the session ends cleanly");
}

// --- scenario: allowlist, clock, stored records and the watchdog over the backend ----------

/// A Blood Pressure Record value (one segment) holding a measurement stamped `at` on the
/// device's clock.
fn stored_record(sequence_number: u16, systolic: i32, at: time::PrimitiveDateTime) -> String {
    let measurement = BloodPressureMeasurement {
        unit: PressureUnit::MmHg,
        systolic: Float11073::new(systolic, 0),
        diastolic: Float11073::new(80, 0),
        mean_arterial_pressure: Float11073::new(95, 0),
        timestamp: Some(DateTime::new(
            u16::try_from(at.year()).expect("a year after 0"),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
        )),
        pulse_rate_per_min: Some(Float11073::new(70, 0)),
        user_id: None,
        status: None,
        quirks: vec![],
    };
    let body = RecordBody {
        sequence_number,
        recorded: RecordedValue::BloodPressureMeasurement(measurement),
    }
    .encode()
    .expect("a record encodes");
    let segments = segment::split(&body, 244, 0);
    assert_eq!(segments.len(), 1, "one segment at this MTU");
    hex::encode(&segments[0])
}

/// Systolic values of the queued readings, in queue order.
async fn queued_systolics(queue: &Queue) -> Vec<(f64, time::OffsetDateTime)> {
    queue
        .peek(0, 100)
        .await
        .expect("the queue")
        .iter()
        .filter_map(|r| {
            let s = r.values.iter().find(|o| o.kind == Kind::Systolic)?;
            Some((s.value.number()?.to_f64(), r.measured_at))
        })
        .collect()
}

async fn records_scenario() {
    let mut mock = Mock::start().await;
    let source = Arc::new(BluezSource::new(config()).await.expect("the BlueZ source"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let queue = Queue::open(dir.path().join("queue.db"))
        .await
        .expect("the queue");
    // The storing cuff is allowlisted; the oximeter is not.
    let bindings: Arc<[DeviceBinding]> = vec![DeviceBinding {
        id: DeviceId::BdAddr(STORING_CUFF.0),
        patient: Some(PatientKey::new("pk-bluez-records").expect("a patient key")),
        users: vec![],
    }]
    .into();
    let session_config = SessionConfig {
        gateway: GatewayId::new("gw-bluez").expect("a gateway id"),
        clock_tolerance: Duration::from_secs(2),
        watchdog: Duration::from_secs(1),
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        op_timeout: Duration::from_secs(8),
        zone: time::UtcOffset::UTC,
        low_battery_percent: 15,
        jitter_seed: 11,
    };

    // A device that is not on the allowlist is connected once, identified, refused and let
    // go; its session ends with the reason.
    let stranger = Session::new(
        source.clone(),
        OXIMETER,
        bindings.clone(),
        queue.clone(),
        Arc::new(SystemClock),
        session_config.clone(),
    )
    .spawn(CancellationToken::new());
    let mut stranger_stats = stranger.stats();
    wait_for(&mut stranger_stats, "the stranger refused", |s| {
        s.phase == Phase::Stopped
    })
    .await;
    mock.expect("DISCONNECT oxi").await;
    assert!(matches!(
        stranger.shutdown().await,
        Err(SessionError::NotAllowlisted)
    ));
    assert_eq!(mock.count("CONNECT oxi"), 1);

    // Two measurements stored on the cuff, stamped by its clock, which says 2020-01-01
    // 00:00: one a day before that, one an hour before.
    let device_now = time::macros::datetime!(2020-01-01 00:00:00);
    mock.send(&format!(
        "store bls 0 {}",
        stored_record(0, 141, device_now - time::Duration::days(1))
    ));
    mock.send(&format!(
        "store bls 1 {}",
        stored_record(1, 142, device_now - time::Duration::hours(1))
    ));
    mock.expect("STORED bls 1").await;

    let handle = Session::new(
        source.clone(),
        STORING_CUFF,
        bindings,
        queue.clone(),
        Arc::new(SystemClock),
        session_config,
    )
    .spawn(CancellationToken::new());
    let mut stats = handle.stats();
    let s = wait_for(&mut stats, "streaming after the first transfer", |s| {
        s.phase == Phase::Streaming
    })
    .await;
    let gateway_now = time::OffsetDateTime::now_utc();

    // The clock was six years off: read, then set to the gateway's time.
    let write = mock.expect("WRITE bls 2a2b").await;
    let written = write.split_whitespace().nth(3).expect("the written hex");
    let Ok(Decoded::CurrentTime(set)) = codec::decode(0x2A2B, &hex::decode(written).expect("hex"))
    else {
        panic!("not a Current Time value: {write}");
    };
    let set = set
        .date_time
        .to_primitive()
        .expect("a complete time")
        .assume_utc();
    assert!(
        (set - gateway_now).abs() < time::Duration::seconds(10),
        "{set}"
    );
    assert_eq!(s.clock_sets, 1);

    // Then every stored record (RACP: greater than or equal to sequence 0), queued, and
    // only then deleted on the device (less than or equal to 1).
    assert_eq!(
        mock.expect("WRITE bls 2a52").await,
        "WRITE bls 2a52 0103010000 request"
    );
    assert_eq!(
        mock.expect("WRITE bls 2a52").await,
        "WRITE bls 2a52 0202010100 request"
    );
    mock.expect("DELETED bls 0,1").await;
    let s = stats.borrow().clone();
    assert_eq!((s.transfers, s.deletes, s.readings_queued), (1, 1, 2));
    let queued = queued_systolics(&queue).await;
    assert_eq!(
        queued.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        [141.0, 142.0]
    );
    // Stamped by the wrong clock, placed by its offset: a day and an hour before now.
    for ((_, at), ago) in queued
        .iter()
        .zip([time::Duration::days(1), time::Duration::hours(1)])
    {
        let error = (*at - (gateway_now - ago)).abs();
        assert!(error < time::Duration::seconds(10), "{at} is {error} off");
    }
    let readings = queue.peek(0, 10).await.expect("the queue");
    assert!(
        readings
            .iter()
            .all(|r| r.flags.contains(vitals::Flag::FromStorage))
    );

    // A quiet link is probed; a probe that is answered keeps the link.
    wait_for(&mut stats, "two watchdog probes answered", |s| {
        s.watchdog_probes >= 2
    })
    .await;
    assert_eq!(stats.borrow().connects, 1);

    // Away: the cuff stores two more measurements and drops the link. On reconnection the
    // session subscribes again and asks for the records from sequence 2 on, not from 0.
    let now = time::OffsetDateTime::now_utc();
    let now = time::PrimitiveDateTime::new(now.date(), now.time());
    mock.send(&format!(
        "store bls 2 {}",
        stored_record(2, 143, now - time::Duration::minutes(30))
    ));
    mock.send(&format!(
        "store bls 3 {}",
        stored_record(3, 144, now - time::Duration::minutes(20))
    ));
    mock.expect("STORED bls 3").await;
    let subscribed_before = mock.count("START_NOTIFY bls 2a35");
    mock.send("disconnect bls");
    wait_for(&mut stats, "reconnected after the second transfer", |s| {
        s.connects >= 2 && s.deletes >= 2 && s.phase == Phase::Streaming
    })
    .await;
    assert_eq!(
        mock.expect("WRITE bls 2a52").await,
        "WRITE bls 2a52 0103010200 request"
    );
    assert_eq!(
        mock.expect("WRITE bls 2a52").await,
        "WRITE bls 2a52 0202010300 request"
    );
    mock.expect("DELETED bls 2,3").await;
    assert_eq!(mock.count("START_NOTIFY bls 2a35"), subscribed_before + 1);
    assert_eq!(
        queued_systolics(&queue)
            .await
            .iter()
            .map(|(v, _)| *v)
            .collect::<Vec<_>>(),
        [141.0, 142.0, 143.0, 144.0]
    );
    // The clock kept the time it was given: not set again.
    assert_eq!(stats.borrow().clock_sets, 1);
    assert_eq!(mock.count("WRITE bls 2a2b"), 1);

    // A wedged link: the watchdog's probe goes unanswered, the link is dropped and made
    // again (with backoff while reads still hang), and streaming resumes once it answers.
    let before = stats.borrow().clone();
    mock.send("hang-reads on");
    mock.expect("HANG_READS on").await;
    wait_for(&mut stats, "the wedged link dropped", |s| {
        s.disconnects > before.disconnects
    })
    .await;
    mock.send("hang-reads off");
    mock.expect("HANG_READS off").await;
    let after = wait_for(&mut stats, "streaming again", |s| {
        s.connects > before.connects && s.phase == Phase::Streaming
    })
    .await;
    assert!(after.watchdog_probes > before.watchdog_probes);
    // Nothing left to fetch: the cuff says so and nothing is queued twice.
    assert_eq!(queue.peek(0, 100).await.expect("the queue").len(), 4);

    handle.shutdown().await.expect("the session ends cleanly");
}
