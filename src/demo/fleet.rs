//! Who is in the demo: the simulated patients with their scenarios and home hubs, the
//! registry entries that make their readings valid, the threshold profiles, and the ingest
//! configuration the demo runs with (written to the data directory for anyone to read).

use std::path::Path;

use anyhow::Context as _;
use ingest::record::{Audit, NewBinding, NewPatient, Record};
use simulators::scenario::Scenario;
use time::OffsetDateTime;
use vitals::{DeviceId, DeviceIdentity, GatewayId, PatientKey};

/// The faulty device's scenario (not one of the shipped `rpm gateway --simulate` ones).
const FAULTY_CUFF: &str = include_str!("../../fixtures/scenarios/faulty_cuff.toml");
/// The crisis patient measuring again when asked (see the file).
const CRISIS: &str = include_str!("../../fixtures/scenarios/hypertensive_crisis_remeasured.toml");

/// The shipped threshold profiles, embedded so the demo runs from any directory; written to
/// `<data dir>/profiles` and loaded from there like any `[rules] profiles_dir`.
const PROFILES: &[(&str, &str)] = &[
    (
        "copd.toml",
        include_str!("../../fixtures/profiles/copd.toml"),
    ),
    (
        "copd_hypercapnic.toml",
        include_str!("../../fixtures/profiles/copd_hypercapnic.toml"),
    ),
    (
        "default.toml",
        include_str!("../../fixtures/profiles/default.toml"),
    ),
    (
        "hypertension.toml",
        include_str!("../../fixtures/profiles/hypertension.toml"),
    ),
    (
        "overrides/example-copd-on-oxygen.toml",
        include_str!("../../fixtures/profiles/overrides/example-copd-on-oxygen.toml"),
    ),
];

/// When, in the scenario's own days from its start, a hub's internet connection is down.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    /// Cut at this many days after the scenario's start.
    pub from_day: f64,
    /// Restored at this many days after the scenario's start.
    pub to_day: f64,
}

/// One simulated patient at home.
#[derive(Clone, Debug)]
pub struct Member {
    /// What the demo shows with them.
    pub role: &'static str,
    /// Their clinical scenario.
    pub scenario: Scenario,
    /// Their home hub.
    pub gateway: GatewayId,
    /// Registry condition (selects the threshold profile).
    pub condition: &'static str,
    /// A made-up name, for the console (never logged).
    pub name: &'static str,
    /// The patient's own email for plain-words messages, when they want them.
    pub email: Option<&'static str>,
    /// The hub's internet outage, if it has one.
    pub outage: Option<Outage>,
}

impl Member {
    /// The pseudonymous key the devices and the record use.
    pub fn patient(&self) -> anyhow::Result<PatientKey> {
        Ok(PatientKey::new(self.scenario.patient.key.clone())?)
    }
}

fn builtin(name: &str) -> anyhow::Result<Scenario> {
    Ok(Scenario::builtin(name).with_context(|| format!("scenario `{name}` is not shipped"))??)
}

/// The demo's patients: a stable COPD patient, one heading into an exacerbation, a
/// hypertensive crisis, a failing cuff, and a hub that is offline for a day and a half.
pub fn members() -> anyhow::Result<Vec<Member>> {
    let gw = |n: u8| GatewayId::new(format!("gw-demo-{n}"));
    Ok(vec![
        Member {
            role: "stable COPD",
            scenario: builtin("copd_stable")?,
            gateway: gw(1)?,
            condition: "copd",
            name: "Ada Stable (demo)",
            email: None,
            outage: None,
        },
        Member {
            role: "COPD exacerbation",
            scenario: builtin("copd_exacerbation")?,
            gateway: gw(2)?,
            condition: "copd",
            name: "Ben Exacerbation (demo)",
            email: Some("ben.patient@example.org"),
            outage: None,
        },
        Member {
            role: "hypertensive crisis",
            scenario: Scenario::from_toml("hypertensive_crisis_remeasured", CRISIS)?,
            gateway: gw(3)?,
            condition: "hypertension",
            name: "Cleo Crisis (demo)",
            email: Some("cleo.patient@example.org"),
            outage: None,
        },
        Member {
            role: "faulty device",
            scenario: Scenario::from_toml("faulty_cuff", FAULTY_CUFF)?,
            gateway: gw(4)?,
            condition: "hypertension",
            name: "Dan Faulty-Cuff (demo)",
            email: None,
            outage: None,
        },
        Member {
            role: "hub offline",
            scenario: builtin("hypotension")?,
            gateway: gw(5)?,
            condition: "hypertension",
            name: "Eve Offline-Hub (demo)",
            email: None,
            // Cut before the morning measurement of day 1, back after that of day 2: three
            // measurement rounds wait in the hub's queue.
            outage: Some(Outage {
                from_day: 1.25,
                to_day: 2.5,
            }),
        },
    ])
}

/// Writes the embedded profiles under `dir` (created).
pub fn write_profiles(dir: &Path) -> anyhow::Result<()> {
    for (name, text) in PROFILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The device ids of a scenario's devices, with the cuff's user slot.
pub fn devices(scenario: &Scenario) -> anyhow::Result<Vec<(DeviceId, Option<u8>)>> {
    scenario
        .device
        .iter()
        .map(|d| {
            let id = match &d.system_id {
                Some(s) => DeviceId::Eui64(
                    u64::from_str_radix(s, 16)
                        .with_context(|| format!("system_id `{s}`"))?
                        .to_be_bytes(),
                ),
                None => {
                    let a: gateway::device::Address = d
                        .address
                        .parse()
                        .map_err(|_| anyhow::anyhow!("address `{}`", d.address))?;
                    DeviceId::BdAddr(a.0)
                }
            };
            Ok((id, d.user))
        })
        .collect()
}

/// Registers every patient, hub and device, and binds each device to its patient on its hub
/// from `from` on (before the first simulated reading).
pub async fn register(
    record: &Record,
    members: &[Member],
    from: OffsetDateTime,
) -> anyhow::Result<()> {
    let audit = Audit {
        who: "rpm-demo",
        why: "demo fleet",
    };
    for m in members {
        let patient = m.patient()?;
        record
            .create_patient(
                &NewPatient {
                    key: patient.clone(),
                    display_name: Some(m.name.to_owned()),
                    condition: m.condition.to_owned(),
                    profile_id: None,
                    care_team: Some("demo-team".to_owned()),
                },
                &audit,
            )
            .await
            .context("cannot register a demo patient")?;
        record
            .create_gateway(&m.gateway, &audit)
            .await
            .context("cannot register a demo hub")?;
        for (device, user) in devices(&m.scenario)? {
            record
                .create_device(&DeviceIdentity::new(device), &audit)
                .await
                .context("cannot register a demo device")?;
            record
                .bind(
                    &NewBinding {
                        gateway: m.gateway.clone(),
                        device,
                        patient: patient.clone(),
                        user_index: user,
                        valid_from: from,
                    },
                    &audit,
                )
                .await
                .context("cannot bind a demo device")?;
        }
    }
    Ok(())
}

/// A console user the demo creates.
#[derive(Clone, Debug)]
pub struct DemoUser {
    /// Sign-in name.
    pub username: &'static str,
    /// Their role.
    pub role: ingest::record::Role,
    /// A password made for this run (printed; the demo listens on loopback only).
    pub password: String,
}

/// Creates the demo's nurse and clinician with fresh passwords.
pub async fn create_users(record: &Record) -> anyhow::Result<Vec<DemoUser>> {
    let audit = Audit {
        who: "rpm-demo",
        why: "demo console users",
    };
    let mut users = Vec::new();
    for (username, role) in [
        ("nurse", ingest::record::Role::Nurse),
        ("clinician", ingest::record::Role::Clinician),
    ] {
        let password = format!("demo-{}", &random_hex()[..12]);
        record
            .create_user(username, role, &password, &audit)
            .await
            .with_context(|| format!("cannot create the demo user `{username}`"))?;
        users.push(DemoUser {
            username,
            role,
            password,
        });
    }
    Ok(users)
}

/// What the ingest configuration is made from.
pub struct IngestPorts<'a> {
    /// The embedded broker.
    pub broker: std::net::SocketAddr,
    /// The HTTP API and console.
    pub http: std::net::SocketAddr,
    /// The mail catcher.
    pub smtp: u16,
    /// The data directory.
    pub data_dir: &'a Path,
    /// How often time-driven rules run.
    pub tick_every: std::time::Duration,
}

/// The ingest configuration of the demo, as TOML: the same file format `rpm ingest` reads.
/// The notifier's timings are shortened to suit accelerated time (a one-second group wait,
/// dispatch polled four times a second).
pub fn ingest_toml(p: &IngestPorts<'_>, members: &[Member]) -> anyhow::Result<String> {
    let dir = p
        .data_dir
        .to_str()
        .context("the data directory path is not UTF-8")?;
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let patients: Vec<String> = members.iter().map(|m| q(&m.scenario.patient.key)).collect();
    let mut t = format!(
        r#"# The configuration `rpm demo` runs ingest with (written for reading; the demo does not
# read this file back). Same format as `rpm config sample ingest`.

[broker]
url = "mqtt://{broker}"
client_id = "rpm-demo-ingest"

[database]
url = {db}

[http]
listen = "{http}"
public_url = "http://{http}"

[rules]
profiles_dir = {profiles}
default_profile = "default"
tick_every = "{tick}s"

[notifier.smtp]
host = "127.0.0.1"
port = {smtp}
security = "none"
from = "RPM demo alerts <alerts@rpm-demo.example.org>"
timeout = "5s"

[notifier.links]
console_url = "http://{http}"
ack_key = "{key}"
ack_ttl = "24h"

[notifier.dispatch]
lease = "30s"
poll = "250ms"
batch = 32
retry_base = "500ms"
retry_cap = "5s"
max_attempts = 8

[notifier.grouping]
group_wait = "1s"
group_interval = "10s"
immediate_from = "emergency"
patient_urgent_from = "emergency"
notify_from = "low"

[notifier.escalation]
emergency = {{ ack_within = "2m", repeats = 2 }}
high = {{ ack_within = "5m", repeats = 1 }}

[[notifier.directory.people]]
id = "nurse.demo"
name = "Demo Nurse"
contacts = [{{ channel = "email", address = "nurse@rpm-demo.example.org" }}]

[[notifier.directory.people]]
id = "clinician.demo"
name = "Demo Clinician"
contacts = [{{ channel = "email", address = "clinician@rpm-demo.example.org" }}]

[[notifier.directory.teams]]
id = "demo-team"
patients = [{patients}]

[[notifier.directory.teams.tiers]]
time_zone = "UTC"
weekly = [{{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "00:00", person = "nurse.demo" }}]

[[notifier.directory.teams.tiers]]
time_zone = "UTC"
weekly = [{{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "00:00", person = "clinician.demo" }}]
"#,
        broker = p.broker,
        db = q(&format!("sqlite:{dir}/record.db")),
        http = p.http,
        profiles = q(&format!("{dir}/profiles")),
        tick = p.tick_every.as_secs().max(1),
        smtp = p.smtp,
        key = random_hex(),
        patients = patients.join(", "),
    );
    for m in members {
        if let Some(email) = m.email {
            t.push_str(&format!(
                r#"
[[notifier.directory.patients]]
patient = {key}
name = {name}
time_zone = "UTC"
contacts = [{{ channel = "email", address = {email} }}]
"#,
                key = q(&m.scenario.patient.key),
                name = q(m.name.split(' ').next().unwrap_or(m.name)),
                email = q(email),
            ));
        }
    }
    Ok(t)
}

/// 256 fresh bits as hex, for the demo's acknowledgement-link key and passwords: std's
/// `RandomState` is seeded from the operating system's random source, which is all a
/// throwaway demo secret needs.
fn random_hex() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    (0..4)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_has_the_five_situations_and_distinct_devices() {
        let members = members().expect("fleet");
        let roles: Vec<&str> = members.iter().map(|m| m.role).collect();
        for r in [
            "stable COPD",
            "COPD exacerbation",
            "hypertensive crisis",
            "faulty device",
            "hub offline",
        ] {
            assert!(roles.contains(&r), "{roles:?}");
        }
        let mut ids = std::collections::HashSet::new();
        for m in &members {
            for (d, _) in devices(&m.scenario).expect("devices") {
                assert!(ids.insert(d), "device {d} used twice");
            }
        }
        assert_eq!(members.iter().filter(|m| m.outage.is_some()).count(), 1);
    }

    #[test]
    fn the_generated_ingest_configuration_is_valid() {
        let members = members().expect("fleet");
        let dir = Path::new("/tmp/rpm-demo-test");
        let text = ingest_toml(
            &IngestPorts {
                broker: "127.0.0.1:1884".parse().expect("addr"),
                http: "127.0.0.1:8081".parse().expect("addr"),
                smtp: 2525,
                data_dir: dir,
                tick_every: std::time::Duration::from_secs(90),
            },
            &members,
        )
        .expect("toml");
        let config: ingest::config::IngestConfig = toml::from_str(&text).expect("parses");
        config.check().expect("valid");
        let n = config.notifier.expect("notifier");
        assert_eq!(n.links.ack_key.len(), 64);
        assert_ne!(random_hex(), random_hex());
        assert_eq!(config.rules.profiles_dir, dir.join("profiles"));
    }

    #[test]
    fn the_embedded_profiles_load_as_a_profiles_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_profiles(dir.path()).expect("write");
        let rules = ingest::consume::Rules::load(&ingest::config::RulesConfig {
            profiles_dir: dir.path().to_path_buf(),
            ..Default::default()
        });
        assert!(rules.is_ok(), "{:?}", rules.err());
        // Every shipped profile is embedded: a new file in fixtures/profiles must be added.
        let shipped =
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/profiles"))
                .expect("fixtures")
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .count();
        assert_eq!(
            PROFILES.iter().filter(|(n, _)| !n.contains('/')).count(),
            shipped
        );
    }
}
