//! `rpm gateway` on real devices, as a process: its BlueZ backend talks to a mock bluetoothd
//! (`gateway/tests/bluez_mock/bluez_mock.py`) on a private D-Bus, and an indication from the
//! allowlisted cuff reaches an independent MQTT subscriber as a reading of its patient, and
//! nothing from the oximeter, which is not allowlisted, is published or queued.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use testkit::{DbusDaemon, Mosquitto, RpmProcess, unavailable};
use vitals::{Envelope, Kind, ReadingType};

fn mock_python() -> Result<String, String> {
    for python in ["python3", "/usr/bin/python3"] {
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
            return Ok(python.to_owned());
        }
    }
    Err("no python with dbus-python and PyGObject (Debian: python3-dbus python3-gi; scripts/services installs them)".into())
}

struct MockBluez {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far, whether `expect` was waiting for it or not.
    seen: Vec<String>,
}

impl MockBluez {
    fn start(python: &str, bus: &str) -> MockBluez {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway/tests/bluez_mock/bluez_mock.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--bus", bus])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the mock starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mock = MockBluez {
            child,
            lines,
            seen: Vec::new(),
        };
        mock.expect("READY", Duration::from_secs(10));
        mock
    }

    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("the mock never said {prefix:?}; it said {:?}", self.seen),
            }
        }
    }

    /// How many lines so far start with `prefix`.
    fn count(&mut self, prefix: &str) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// A line starting with `prefix`, said already (even while `expect` waited for another)
    /// or within `timeout`.
    fn said(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.seen.iter().find(|l| l.starts_with(prefix)) {
            Some(line) => line.clone(),
            None => self.expect(prefix, timeout),
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{command}").expect("write to the mock");
        stdin.flush().expect("flush");
    }
}

impl Drop for MockBluez {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indication_from_an_allowlisted_cuff_reaches_the_broker_as_its_patients_reading() {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(bus) = unavailable(DbusDaemon::start()) else {
        return;
    };
    let Some(python) = unavailable(mock_python()) else {
        return;
    };
    let mut mock = MockBluez::start(&python, bus.address());

    let mut opts = MqttOptions::new("observer", "127.0.0.1", broker.port());
    opts.set_max_packet_size(Some(1024 * 1024));
    let (client, mut events) = AsyncClient::new(opts, 10);
    client
        .subscribe("rpm/v1/gw/+/readings", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send((
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    p.payload.to_vec(),
                ));
            }
        }
    });

    // Only the cuff is allowlisted; the oximeter the mock also advertises is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"gw-ble\"\ndata_dir = \"{}\"\n[broker]\nurl = \"{}\"\n[forward]\nlinger = \"20ms\"\n\
             [[devices]]\nid = \"bdaddr:c0:ff:ee:00:11:22\"\npatient = \"pk-ble\"\n",
            dir.path().join("data").display(),
            broker.url()
        ),
    )
    .expect("config");
    let mut gw = RpmProcess::spawn(
        env!("CARGO_BIN_EXE_rpm"),
        &["gateway", "--config", cfg.to_str().expect("utf8")],
        &[
            ("DBUS_SYSTEM_BUS_ADDRESS", bus.address()),
            ("RUST_LOG", "info"),
        ],
    )
    .expect("spawn the gateway");
    // The hub scans, connects to the cuff, identifies it and subscribes to its measurements.
    mock.expect("START_NOTIFY cuff 2a35", Duration::from_secs(60));
    // Nordic's "full" Blood Pressure Measurement vector (fixtures/gatt/blood_pressure.toml).
    mock.send("notify cuff 2a35 1e8a00580078000000041114293b3c0001 2700");
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no reading published\\n{}", gw.stderr()))
        .expect("observer alive");
    let envelope = Envelope::decode_from(&topic, &payload).expect("a valid envelope");
    assert_eq!(envelope.gateway.as_str(), "gw-ble");
    let r = &envelope.readings[0];
    assert_eq!(r.patient.as_str(), "pk-ble");
    assert_eq!(r.reading_type, ReadingType::BloodPressure);
    assert_eq!(r.device.id.to_string(), "bdaddr:c0:ff:ee:00:11:22");
    assert_eq!(
        r.value_of(Kind::Systolic).map(|d| d.to_string()).as_deref(),
        Some("138")
    );
    assert_eq!(r.device.manufacturer.as_deref(), Some("Acme Medical"));

    // The oximeter was connected to once, identified by its address, refused and let go
    // (its Device Information names nobody on the allowlist) ...
    mock.said("DISCONNECT oxi", Duration::from_secs(60));
    // ... so a measurement it indicates now reaches no subscription (the mock drops it) ...
    // (Nordic/Spezi's full spot-check vector, fixtures/gatt/pulse_oximeter.toml.)
    mock.send("notify oxi 2a5e 0facf3bef5e8070b1d170839204022000066e3");
    mock.expect("DROPPED oxi 2a5e", Duration::from_secs(10));
    // ... and nothing of it is published: whatever else arrives is the cuff's.
    let oximeter = "bdaddr:c0:ff:ee:00:33:44";
    let quiet = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some((topic, payload))) = tokio::time::timeout_at(quiet, rx.recv()).await {
        let envelope = Envelope::decode_from(&topic, &payload).expect("a valid envelope");
        for r in &envelope.readings {
            assert_ne!(r.device.id.to_string(), oximeter, "published: {r:?}");
            assert_eq!(r.patient.as_str(), "pk-ble");
        }
    }
    gw.kill().expect("stop");
    // ... nor left in the hub's queue.
    let queue = gateway::queue::Queue::open(dir.path().join("data/queue.db"))
        .await
        .expect("the hub's queue");
    let pending = queue.peek(0, 1000).await.expect("the queue");
    assert!(
        pending.iter().all(|r| r.device.id.to_string() != oximeter),
        "queued: {pending:?}"
    );
    assert_eq!(mock.count("START_NOTIFY oxi"), 0, "{:?}", mock.seen);
    // A refused device is not tried again for a while.
    assert_eq!(mock.count("CONNECT oxi"), 1, "{:?}", mock.seen);
}
