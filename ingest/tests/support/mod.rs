//! Shared by the HTTP tests: the two backends, a seeded registry, and the independent FHIR R4
//! validator (Python `fhir.resources` 6.4.0, FHIR 4.0.1, installed by `scripts/services`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use ingest::record::{Audit, NewBinding, NewPatient, Record};
use time::OffsetDateTime;
use vitals::{DeviceId, DeviceIdentity, GatewayId, PatientKey};

pub const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "FHIR view test set-up",
};

/// A record under test and what keeps its database alive.
pub struct Db {
    pub record: Record,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<testkit::PgDatabase>,
}

pub async fn sqlite() -> Db {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("rpm.db").display());
    let record = Record::connect(&url, 4).await.expect("open SQLite record");
    Db {
        record,
        _dir: Some(dir),
        _pg: None,
    }
}

pub async fn postgres() -> Option<Db> {
    let pg = testkit::unavailable(testkit::PgDatabase::create().await)?;
    let record = Record::connect(pg.url(), 4)
        .await
        .expect("open PostgreSQL record");
    Some(Db {
        record,
        _dir: None,
        _pg: Some(pg),
    })
}

/// `both!(name)` runs `async fn name(db: Db)` once per backend, as `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::support::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::support::postgres().await else { return };
                super::$name(db).await;
            }
        }
    )*};
}

pub fn key(k: &str) -> PatientKey {
    PatientKey::new(k).expect("valid patient key")
}

pub fn gw(id: &str) -> GatewayId {
    GatewayId::new(id).expect("valid gateway id")
}

/// Registers a patient (with a display name that must never be served), a gateway, a device
/// with its Device Information strings, and binds them.
pub async fn registry(record: &Record, patient: &PatientKey, device: &DeviceIdentity) {
    record
        .create_patient(
            &NewPatient {
                key: patient.clone(),
                display_name: Some("Jane Example-Secret".into()),
                condition: "copd".into(),
                profile_id: None,
                care_team: None,
            },
            &AUDIT,
        )
        .await
        .expect("patient");
    if record
        .gateway(&gw("gw-1"))
        .await
        .expect("gateway")
        .is_none()
    {
        record
            .create_gateway(&gw("gw-1"), &AUDIT)
            .await
            .expect("gateway");
    }
    record.create_device(device, &AUDIT).await.expect("device");
    record
        .bind(
            &NewBinding {
                gateway: gw("gw-1"),
                device: device.id,
                patient: patient.clone(),
                user_index: None,
                valid_from: OffsetDateTime::UNIX_EPOCH,
            },
            &AUDIT,
        )
        .await
        .expect("binding");
}

pub fn identity(id: &str) -> DeviceIdentity {
    let id: DeviceId = id.parse().expect("device id");
    DeviceIdentity {
        id,
        serial: Some("SN-0042".into()),
        manufacturer: Some("Acme Medical".into()),
        model: Some("BP-7".into()),
        firmware: Some("1.4.2".into()),
    }
}

/// The Python interpreter with fhir.resources 6.4.0 (FHIR R4), or why there is none.
fn validator_python() -> Result<PathBuf, String> {
    let venv = std::env::var("RPM_FHIR_VENV").unwrap_or_else(|_| "/opt/rpm-test/fhir-r4".into());
    let candidates = [
        PathBuf::from(venv).join("bin/python"),
        PathBuf::from("python3"),
    ];
    for python in candidates {
        let ok = Command::new(&python)
            .args([
                "-c",
                "import fhir.resources as f; assert f.__fhir_version__ == '4.0.1'",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(python);
        }
    }
    Err("no python with fhir.resources for FHIR R4 (4.0.1); run scripts/services".into())
}

/// Validates raw JSON resource texts (kept as sent, so decimals reach the validator with their
/// digits) with the independent validator. Skips locally when it is missing; fails under CI.
pub fn validate_fhir(resources: &[&str]) {
    let Some(python) = testkit::unavailable(validator_python()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("resources.json");
    std::fs::write(&file, format!("[{}]", resources.join(","))).expect("write resources");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/fhir_validate.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&file)
        .output()
        .expect("run the FHIR validator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "FHIR R4 validation failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("ok {}", resources.len())),
        "{stdout}"
    );
}
