//! The registry: patients, gateways, devices and the bindings between them, with an audit row
//! for every change, and the cached binding lookup validation uses on every reading.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use vitals::{
    DeviceBinding, DeviceId, DeviceIdentity, GatewayId, GatewayStatus, PatientKey, UserBinding,
};

use super::{Record, RecordError, Result, from_us, now_us, to_us, with_pool};

/// Who makes a registry change and why; stored in the audit log with the change, in the same
/// transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Audit<'a> {
    /// The user or component (`nurse:jdoe`, `cli:root`).
    pub who: &'a str,
    /// Why (free text from the user).
    pub why: &'a str,
}

/// One audit log row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Row id (increasing).
    pub id: i64,
    /// When.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// What (`patient.create`, `device.bind`, …).
    pub action: String,
    /// On what (`patient:pk-1`, `device:eui64:…`).
    pub target: String,
    /// Why.
    pub reason: String,
}

/// A patient to register.
#[derive(Clone, PartialEq, Eq)]
pub struct NewPatient {
    /// The pseudonymous key gateways know the patient by.
    pub key: PatientKey,
    /// The name shown in the console (PHI: never logged).
    pub display_name: Option<String>,
    /// The monitored condition (`copd`, `heart_failure`, `hypertension`, …).
    pub condition: String,
    /// The threshold profile id (defaults to the condition's profile when absent).
    pub profile_id: Option<String>,
    /// The care team responsible for alerts.
    pub care_team: Option<String>,
}

/// A registered patient.
#[derive(Clone, PartialEq, Eq)]
pub struct Patient {
    /// The pseudonymous key.
    pub key: PatientKey,
    /// The name shown in the console (PHI: redacted from `Debug`, never logged).
    pub display_name: Option<String>,
    /// The monitored condition.
    pub condition: String,
    /// The threshold profile id.
    pub profile_id: Option<String>,
    /// The care team.
    pub care_team: Option<String>,
    /// When registered.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// Debug output never shows the name, so a `{:?}` in a log line cannot leak it.
fn redacted(name: &Option<String>) -> &'static str {
    if name.is_some() { "<redacted>" } else { "None" }
}

impl fmt::Debug for NewPatient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewPatient")
            .field("key", &self.key)
            .field("display_name", &redacted(&self.display_name))
            .field("condition", &self.condition)
            .field("profile_id", &self.profile_id)
            .field("care_team", &self.care_team)
            .finish()
    }
}

impl fmt::Debug for Patient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Patient")
            .field("key", &self.key)
            .field("display_name", &redacted(&self.display_name))
            .field("condition", &self.condition)
            .field("profile_id", &self.profile_id)
            .field("care_team", &self.care_team)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// Changes to a patient; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PatientUpdate {
    /// New display name.
    pub display_name: Option<Option<String>>,
    /// New condition.
    pub condition: Option<String>,
    /// New profile id.
    pub profile_id: Option<Option<String>>,
    /// New care team.
    pub care_team: Option<Option<String>>,
}

impl fmt::Debug for PatientUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientUpdate")
            .field(
                "display_name",
                &self.display_name.as_ref().map(|n| redacted(n)),
            )
            .field("condition", &self.condition)
            .field("profile_id", &self.profile_id)
            .field("care_team", &self.care_team)
            .finish()
    }
}

/// A registered gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Gateway {
    /// Its id.
    pub id: GatewayId,
    /// When registered.
    pub registered_at: OffsetDateTime,
    /// When it was last heard from, on ingest's clock: readings stored, or an `online` status
    /// it had just published.
    pub last_seen_at: Option<OffsetDateTime>,
    /// Its last retained status message.
    pub status: Option<GatewayStatus>,
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Identity and Device Information strings (updated from readings).
    pub identity: DeviceIdentity,
    /// When registered.
    pub registered_at: OffsetDateTime,
    /// When a gateway last received a reading from it.
    pub last_seen_at: Option<OffsetDateTime>,
}

/// A binding to create: readings from `device` through `gateway` (with `user_index`, if the
/// device has user slots) belong to `patient` from `valid_from` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBinding {
    /// The home hub.
    pub gateway: GatewayId,
    /// The device.
    pub device: DeviceId,
    /// The patient.
    pub patient: PatientKey,
    /// The user slot, or `None` for the whole device.
    pub user_index: Option<u8>,
    /// Start of validity.
    pub valid_from: OffsetDateTime,
}

/// A stored binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Row id.
    pub id: i64,
    /// The home hub.
    pub gateway: GatewayId,
    /// The device.
    pub device: DeviceId,
    /// The user slot, or `None` for the whole device.
    pub user_index: Option<u8>,
    /// The patient.
    pub patient: PatientKey,
    /// Start of validity.
    pub valid_from: OffsetDateTime,
    /// End of validity (exclusive), once unbound.
    pub valid_to: Option<OffsetDateTime>,
}

impl Binding {
    fn valid_at(&self, at: OffsetDateTime) -> bool {
        self.valid_from <= at && self.valid_to.is_none_or(|to| at < to)
    }
}

#[derive(sqlx::FromRow)]
struct PatientRow {
    patient_key: String,
    display_name: Option<String>,
    condition: String,
    profile_id: Option<String>,
    care_team: Option<String>,
    created_at: i64,
    updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct GatewayRow {
    gateway_id: String,
    registered_at: i64,
    last_seen_at: Option<i64>,
    status_json: Option<String>,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    device_id: String,
    manufacturer: Option<String>,
    model: Option<String>,
    serial: Option<String>,
    firmware: Option<String>,
    registered_at: i64,
    last_seen_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct BindingRow {
    binding_id: i64,
    gateway_id: String,
    device_id: String,
    user_index: Option<i64>,
    patient_key: String,
    valid_from: i64,
    valid_to: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    audit_id: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    reason: String,
}

const PATIENT_COLUMNS: &str =
    "patient_key, display_name, condition, profile_id, care_team, created_at, updated_at";
const BINDING_COLUMNS: &str =
    "binding_id, gateway_id, device_id, user_index, patient_key, valid_from, valid_to";
const DEVICE_COLUMNS: &str =
    "device_id, manufacturer, model, serial, firmware, registered_at, last_seen_at";
const AUDIT_INSERT: &str =
    "INSERT INTO audit_log (at, actor, action, target, reason) VALUES ($1, $2, $3, $4, $5)";

/// How long the in-memory binding view is trusted before the record is asked whether it
/// changed. A lookup that finds nothing always asks the database, so a new binding (made by
/// `rpm devices bind` in another process) is seen at once; an unbinding made elsewhere is seen
/// within this time.
pub const BINDING_CACHE_TTL: Duration = Duration::from_secs(5);

/// The longest the view is kept without reloading it, even when the record says nothing
/// changed: a backstop should the version ever miss a change (the triggers were dropped, or
/// the table restored from a backup with an older version).
const BINDING_CACHE_MAX_AGE: Duration = Duration::from_secs(300);

/// All bindings by (gateway, device), loaded at once: one binding lookup per reading must not
/// be one query per reading.
///
/// Reloading every binding is O(bindings): over a second at 100 000 patients, on the
/// consumer's path. So when the view is [`BINDING_CACHE_TTL`] old, the record is first asked
/// for the table's version (migration 0007: a counter its triggers bump with every insert,
/// update or delete, made through `rpm` or by hand); the whole table is read again only when
/// the version differs.
pub(crate) struct BindingCache {
    /// When the view was last confirmed current (loaded, or its version matched).
    checked_at: Option<Instant>,
    loaded_at: Option<Instant>,
    version: Option<BindingVersion>,
    ttl: Duration,
    reloads: u64,
    by_pair: HashMap<(GatewayId, DeviceId), Vec<Binding>>,
}

impl Default for BindingCache {
    fn default() -> Self {
        Self {
            checked_at: None,
            loaded_at: None,
            version: None,
            ttl: BINDING_CACHE_TTL,
            reloads: 0,
            by_pair: HashMap::new(),
        }
    }
}

/// The bindings table's version (`binding_version`): see [`BindingCache`].
type BindingVersion = i64;

/// The patient a reading with `user_index` at `at` belongs to: the binding of its user slot
/// if there is one, else the whole-device binding (the rule of `vitals::DeviceBinding`).
fn pick(bindings: &[Binding], user_index: Option<u8>, at: OffsetDateTime) -> Option<&PatientKey> {
    let slot = user_index.and_then(|u| {
        bindings
            .iter()
            .find(|b| b.user_index == Some(u) && b.valid_at(at))
    });
    slot.or_else(|| {
        bindings
            .iter()
            .find(|b| b.user_index.is_none() && b.valid_at(at))
    })
    .map(|b| &b.patient)
}

fn check_text(what: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(RecordError::Invalid(format!("{what} must not be empty")));
    }
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(RecordError::Invalid(format!(
            "{what} must be at most {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// [`check_audit`], and the action and target of an audit row.
fn check_audit_row(audit: &Audit<'_>, action: &str, target: &str) -> Result<()> {
    check_audit(audit)?;
    check_text("audit action", action, 200)?;
    check_text("audit target", target, 400)
}

/// The audit row of `audit` doing `action` to `target` now, ready to execute.
macro_rules! audit_insert {
    ($audit:expr, $action:expr, $target:expr) => {
        sqlx::query(AUDIT_INSERT)
            .bind(now_us())
            .bind($audit.who)
            .bind($action)
            .bind($target)
            .bind($audit.why)
    };
}

fn check_audit(audit: &Audit<'_>) -> Result<()> {
    check_text("audit `who`", audit.who, 200)?;
    check_text("audit `why`", audit.why, 2000)
}

fn check_optional(what: &str, value: Option<&str>, max: usize) -> Result<()> {
    value.map_or(Ok(()), |v| check_text(what, v, max))
}

impl Record {
    // ------------------------------------------------------------------------------------
    // Patients

    /// Registers a patient. [`RecordError::Conflict`] if the key is taken.
    pub async fn create_patient(&self, new: &NewPatient, audit: &Audit<'_>) -> Result<Patient> {
        check_audit(audit)?;
        check_text("condition", &new.condition, 64)?;
        check_optional("display name", new.display_name.as_deref(), 200)?;
        check_optional("profile id", new.profile_id.as_deref(), 64)?;
        check_optional("care team", new.care_team.as_deref(), 200)?;
        let now = now_us();
        let target = format!("patient:{}", new.key);
        let inserted = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "INSERT INTO patients (patient_key, display_name, condition, profile_id, \
                 care_team, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                 ON CONFLICT (patient_key) DO NOTHING",
            )
            .bind(new.key.as_str())
            .bind(new.display_name.as_deref())
            .bind(new.condition.as_str())
            .bind(new.profile_id.as_deref())
            .bind(new.care_team.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(audit.who)
                    .bind("patient.create")
                    .bind(target.as_str())
                    .bind(audit.why)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            done == 1
        });
        if !inserted {
            return Err(RecordError::Conflict(format!(
                "patient `{}` already exists",
                new.key
            )));
        }
        self.patient(&new.key).await?.ok_or(RecordError::NotFound {
            what: "patient",
            key: new.key.to_string(),
        })
    }

    /// Changes a patient. [`RecordError::NotFound`] if there is no such patient.
    pub async fn update_patient(
        &self,
        key: &PatientKey,
        update: &PatientUpdate,
        audit: &Audit<'_>,
    ) -> Result<Patient> {
        check_audit(audit)?;
        if let Some(c) = &update.condition {
            check_text("condition", c, 64)?;
        }
        check_optional(
            "display name",
            update.display_name.as_ref().and_then(|n| n.as_deref()),
            200,
        )?;
        check_optional(
            "profile id",
            update.profile_id.as_ref().and_then(|n| n.as_deref()),
            64,
        )?;
        check_optional(
            "care team",
            update.care_team.as_ref().and_then(|n| n.as_deref()),
            200,
        )?;
        let Some(current) = self.patient(key).await? else {
            return Err(RecordError::NotFound {
                what: "patient",
                key: key.to_string(),
            });
        };
        let display_name = update.display_name.clone().unwrap_or(current.display_name);
        let condition = update.condition.clone().unwrap_or(current.condition);
        let profile_id = update.profile_id.clone().unwrap_or(current.profile_id);
        let care_team = update.care_team.clone().unwrap_or(current.care_team);
        // Which fields changed goes in the audit row; the name itself never does.
        let mut fields = Vec::new();
        for (name, set) in [
            ("display_name", update.display_name.is_some()),
            ("condition", update.condition.is_some()),
            ("profile_id", update.profile_id.is_some()),
            ("care_team", update.care_team.is_some()),
        ] {
            if set {
                fields.push(name);
            }
        }
        let action = format!("patient.update({})", fields.join(","));
        let now = now_us();
        let target = format!("patient:{key}");
        with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE patients SET display_name = $2, condition = $3, profile_id = $4, \
                 care_team = $5, updated_at = $6 WHERE patient_key = $1",
            )
            .bind(key.as_str())
            .bind(display_name.as_deref())
            .bind(condition.as_str())
            .bind(profile_id.as_deref())
            .bind(care_team.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(AUDIT_INSERT)
                .bind(now)
                .bind(audit.who)
                .bind(action.as_str())
                .bind(target.as_str())
                .bind(audit.why)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        self.patient(key).await?.ok_or(RecordError::NotFound {
            what: "patient",
            key: key.to_string(),
        })
    }

    /// One patient.
    pub async fn patient(&self, key: &PatientKey) -> Result<Option<Patient>> {
        let sql = format!("SELECT {PATIENT_COLUMNS} FROM patients WHERE patient_key = $1");
        let row: Option<PatientRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&sql)
                .bind(key.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.map(patient_from_row).transpose()
    }

    /// Every patient, by key.
    pub async fn list_patients(&self) -> Result<Vec<Patient>> {
        let sql = format!("SELECT {PATIENT_COLUMNS} FROM patients ORDER BY patient_key");
        let rows: Vec<PatientRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(patient_from_row).collect()
    }

    // ------------------------------------------------------------------------------------
    // Gateways

    /// Registers a gateway. [`RecordError::Conflict`] if it exists.
    pub async fn create_gateway(&self, id: &GatewayId, audit: &Audit<'_>) -> Result<Gateway> {
        check_audit(audit)?;
        let now = now_us();
        let target = format!("gateway:{id}");
        let inserted = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "INSERT INTO gateways (gateway_id, registered_at) VALUES ($1, $2) \
                 ON CONFLICT (gateway_id) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(audit.who)
                    .bind("gateway.create")
                    .bind(target.as_str())
                    .bind(audit.why)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            done == 1
        });
        if !inserted {
            return Err(RecordError::Conflict(format!(
                "gateway `{id}` already exists"
            )));
        }
        self.gateway(id).await?.ok_or(RecordError::NotFound {
            what: "gateway",
            key: id.to_string(),
        })
    }

    /// One gateway.
    pub async fn gateway(&self, id: &GatewayId) -> Result<Option<Gateway>> {
        let row: Option<GatewayRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT gateway_id, registered_at, last_seen_at, status_json FROM gateways \
                 WHERE gateway_id = $1",
            )
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?
        });
        row.map(gateway_from_row).transpose()
    }

    /// Every gateway, by id.
    pub async fn list_gateways(&self) -> Result<Vec<Gateway>> {
        let rows: Vec<GatewayRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT gateway_id, registered_at, last_seen_at, status_json FROM gateways \
                 ORDER BY gateway_id",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(gateway_from_row).collect()
    }

    /// Stores a gateway's retained status message. `false` when the gateway is not
    /// registered (the status is then not stored).
    pub async fn record_gateway_status(&self, status: &GatewayStatus) -> Result<bool> {
        self.record_gateway_status_heard(status, None).await
    }

    /// [`Record::record_gateway_status`] for a status that proves the gateway is alive at
    /// `heard` (ingest's clock): an `online` status the broker forwarded as it was published,
    /// not a retained copy replayed on subscription nor a last will. `heard` also advances the
    /// gateway's `last_seen_at`, which a rebuilt rules state starts its silent-gateway clock
    /// from, so a hub that sends statuses but no readings is not taken for silent.
    pub async fn record_gateway_status_heard(
        &self,
        status: &GatewayStatus,
        heard: Option<OffsetDateTime>,
    ) -> Result<bool> {
        let json = serde_json::to_string(status)
            .map_err(|e| RecordError::Invalid(format!("gateway status: {e}")))?;
        let updated = with_pool!(self, write, |pool, DB| {
            // A NULL `heard` compares as unknown: `last_seen_at` is kept.
            sqlx::query(
                "UPDATE gateways SET status_json = $2, status_at = $3, \
                 last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < $4 \
                   THEN $4 ELSE last_seen_at END \
                 WHERE gateway_id = $1",
            )
            .bind(status.gateway.as_str())
            .bind(json.as_str())
            .bind(now_us())
            .bind(heard.map(to_us))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated == 1)
    }

    // ------------------------------------------------------------------------------------
    // Devices and bindings

    /// Registers a device. [`RecordError::Conflict`] if it exists.
    pub async fn create_device(
        &self,
        identity: &DeviceIdentity,
        audit: &Audit<'_>,
    ) -> Result<Device> {
        check_audit(audit)?;
        for (what, v) in [
            ("manufacturer", &identity.manufacturer),
            ("model", &identity.model),
            ("serial", &identity.serial),
            ("firmware", &identity.firmware),
        ] {
            check_optional(what, v.as_deref(), 64)?;
        }
        let now = now_us();
        let id = identity.id.to_string();
        let target = format!("device:{id}");
        let inserted = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "INSERT INTO devices (device_id, manufacturer, model, serial, firmware, \
                 registered_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (device_id) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(identity.manufacturer.as_deref())
            .bind(identity.model.as_deref())
            .bind(identity.serial.as_deref())
            .bind(identity.firmware.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(audit.who)
                    .bind("device.create")
                    .bind(target.as_str())
                    .bind(audit.why)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            done == 1
        });
        if !inserted {
            return Err(RecordError::Conflict(format!(
                "device `{id}` already exists"
            )));
        }
        self.device(&identity.id)
            .await?
            .ok_or(RecordError::NotFound {
                what: "device",
                key: id,
            })
    }

    /// One device.
    pub async fn device(&self, id: &DeviceId) -> Result<Option<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1");
        let id = id.to_string();
        let row: Option<DeviceRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.map(device_from_row).transpose()
    }

    /// Every device, by id.
    pub async fn list_devices(&self) -> Result<Vec<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id");
        let rows: Vec<DeviceRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(device_from_row).collect()
    }

    /// Binds a device (or one of its user slots) on a gateway to a patient. The gateway,
    /// device and patient must be registered ([`RecordError::NotFound`]); a binding of the
    /// same slot that is open or overlaps `valid_from` is a [`RecordError::Conflict`].
    pub async fn bind(&self, new: &NewBinding, audit: &Audit<'_>) -> Result<Binding> {
        check_audit(audit)?;
        let now = now_us();
        let from = to_us(new.valid_from);
        let device = new.device.to_string();
        let user = new.user_index.map(i64::from);
        let target = match new.user_index {
            Some(u) => format!("device:{device}#user{u}@gateway:{}", new.gateway),
            None => format!("device:{device}@gateway:{}", new.gateway),
        };
        let action = format!("device.bind(patient:{})", new.patient);
        enum Outcome {
            Missing(&'static str, String),
            Overlap,
            Bound(i64),
        }
        let outcome = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let mut missing = None;
            for (what, sql, key) in [
                (
                    "gateway",
                    "SELECT COUNT(*) FROM gateways WHERE gateway_id = $1",
                    new.gateway.as_str(),
                ),
                (
                    "device",
                    "SELECT COUNT(*) FROM devices WHERE device_id = $1",
                    device.as_str(),
                ),
                (
                    "patient",
                    "SELECT COUNT(*) FROM patients WHERE patient_key = $1",
                    new.patient.as_str(),
                ),
            ] {
                let n: i64 = sqlx::query_scalar(sql)
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
                if n == 0 {
                    missing = Some((what, key.to_owned()));
                    break;
                }
            }
            if let Some((what, key)) = missing {
                Outcome::Missing(what, key)
            } else {
                let overlapping: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM device_bindings WHERE gateway_id = $1 \
                     AND device_id = $2 AND user_index IS NOT DISTINCT FROM $3 \
                     AND (valid_to IS NULL OR valid_to > $4)",
                )
                .bind(new.gateway.as_str())
                .bind(device.as_str())
                .bind(user)
                .bind(from)
                .fetch_one(&mut *tx)
                .await?;
                if overlapping > 0 {
                    Outcome::Overlap
                } else {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO device_bindings (gateway_id, device_id, user_index, \
                         patient_key, valid_from) VALUES ($1, $2, $3, $4, $5) \
                         RETURNING binding_id",
                    )
                    .bind(new.gateway.as_str())
                    .bind(device.as_str())
                    .bind(user)
                    .bind(new.patient.as_str())
                    .bind(from)
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query(AUDIT_INSERT)
                        .bind(now)
                        .bind(audit.who)
                        .bind(action.as_str())
                        .bind(target.as_str())
                        .bind(audit.why)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Outcome::Bound(id)
                }
            }
        });
        match outcome {
            Outcome::Missing(what, key) => Err(RecordError::NotFound { what, key }),
            Outcome::Overlap => Err(RecordError::Conflict(format!(
                "{target} is already bound at that time; unbind it first"
            ))),
            Outcome::Bound(id) => {
                self.invalidate_bindings();
                Ok(Binding {
                    id,
                    gateway: new.gateway.clone(),
                    device: new.device,
                    user_index: new.user_index,
                    patient: new.patient.clone(),
                    valid_from: from_us(from, "device_bindings")?,
                    valid_to: None,
                })
            }
        }
    }

    /// Ends the open binding of a device (or user slot) on a gateway at `at`. Readings
    /// measured from `at` on no longer belong to its patient; earlier ones still do.
    /// [`RecordError::NotFound`] when nothing was bound.
    pub async fn unbind(
        &self,
        gateway: &GatewayId,
        device: &DeviceId,
        user_index: Option<u8>,
        at: OffsetDateTime,
        audit: &Audit<'_>,
    ) -> Result<()> {
        check_audit(audit)?;
        let device_s = device.to_string();
        let target = match user_index {
            Some(u) => format!("device:{device_s}#user{u}@gateway:{gateway}"),
            None => format!("device:{device_s}@gateway:{gateway}"),
        };
        let now = now_us();
        let closed = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE device_bindings SET valid_to = $4 WHERE gateway_id = $1 \
                 AND device_id = $2 AND user_index IS NOT DISTINCT FROM $3 \
                 AND valid_to IS NULL AND valid_from <= $4",
            )
            .bind(gateway.as_str())
            .bind(device_s.as_str())
            .bind(user_index.map(i64::from))
            .bind(to_us(at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(audit.who)
                    .bind("device.unbind")
                    .bind(target.as_str())
                    .bind(audit.why)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            n
        });
        if closed == 0 {
            return Err(RecordError::NotFound {
                what: "binding",
                key: target,
            });
        }
        self.invalidate_bindings();
        Ok(())
    }

    /// Bindings, by gateway, device and start; with `active_at`, only those valid then.
    pub async fn list_bindings(&self, active_at: Option<OffsetDateTime>) -> Result<Vec<Binding>> {
        let rows: Vec<BindingRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&format!(
                "SELECT {BINDING_COLUMNS} FROM device_bindings \
                 WHERE $1 IS NULL OR (valid_from <= $1 AND (valid_to IS NULL OR valid_to > $1)) \
                 ORDER BY gateway_id, device_id, valid_from, binding_id"
            ))
            .bind(active_at.map(to_us))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(binding_from_row).collect()
    }

    /// The patients with a device bound through `gateway` at `at`, each once.
    pub async fn patients_on_gateway(
        &self,
        gateway: &GatewayId,
        at: OffsetDateTime,
    ) -> Result<Vec<PatientKey>> {
        let keys: Vec<String> = with_pool!(self, read, |pool, DB| {
            sqlx::query_scalar(
                "SELECT DISTINCT patient_key FROM device_bindings WHERE gateway_id = $1 \
                 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2) \
                 ORDER BY patient_key",
            )
            .bind(gateway.as_str())
            .bind(to_us(at))
            .fetch_all(pool)
            .await?
        });
        keys.into_iter()
            .map(|k| {
                PatientKey::new(k)
                    .map_err(|e| RecordError::corrupt("device_bindings", e.to_string()))
            })
            .collect()
    }

    /// When a gateway bound to the patient at `at` was last heard from (its `last_seen_at`:
    /// readings stored, or a live status); `None` when none has been.
    pub async fn patient_gateways_heard(
        &self,
        patient: &PatientKey,
        at: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>> {
        let heard: Option<i64> = with_pool!(self, read, |pool, DB| {
            sqlx::query_scalar(
                "SELECT MAX(g.last_seen_at) FROM device_bindings b \
                 JOIN gateways g ON g.gateway_id = b.gateway_id \
                 WHERE b.patient_key = $1 AND b.valid_from <= $2 \
                 AND (b.valid_to IS NULL OR b.valid_to > $2)",
            )
            .bind(patient.as_str())
            .bind(to_us(at))
            .fetch_one(pool)
            .await?
        });
        heard.map(|t| from_us(t, "gateways")).transpose()
    }

    /// The patient a reading from `device` (user slot `user_index`) through `gateway`,
    /// measured at `at`, belongs to; `None` when the device is not bound there then.
    ///
    /// Answers from an in-memory view of all bindings, reloaded every
    /// [`BINDING_CACHE_TTL`] and after every change made through this `Record`; a lookup
    /// that finds nothing asks the database before saying `None`.
    pub async fn binding_for(
        &self,
        gateway: &GatewayId,
        device: &DeviceId,
        user_index: Option<u8>,
        at: OffsetDateTime,
    ) -> Result<Option<PatientKey>> {
        let key = (gateway.clone(), *device);
        let (mut fresh, known, loaded_at) = {
            let cache = self.bindings.read().unwrap_or_else(|p| p.into_inner());
            let fresh = cache.checked_at.is_some_and(|t| t.elapsed() < cache.ttl);
            if let Some(found) = fresh
                .then(|| cache.by_pair.get(&key))
                .flatten()
                .and_then(|b| pick(b, user_index, at))
            {
                return Ok(Some(found.clone()));
            }
            (fresh, cache.version, cache.loaded_at)
        };
        if !fresh {
            // Stale: has anything changed since the view was loaded?
            let now = self.binding_version().await?;
            let young = loaded_at.is_some_and(|t| t.elapsed() < BINDING_CACHE_MAX_AGE);
            if young && known == Some(now) {
                let mut cache = self.bindings.write().unwrap_or_else(|p| p.into_inner());
                if cache.version == Some(now) {
                    cache.checked_at = Some(Instant::now());
                    if let Some(found) = cache
                        .by_pair
                        .get(&key)
                        .and_then(|b| pick(b, user_index, at))
                    {
                        return Ok(Some(found.clone()));
                    }
                    fresh = true;
                }
            }
            if !fresh {
                return self.reload_bindings(now, &key, user_index, at).await;
            }
        }
        // A fresh view found nothing: it may predate a binding made by another process.
        let device_s = device.to_string();
        let rows: Vec<BindingRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&format!(
                "SELECT {BINDING_COLUMNS} FROM device_bindings \
                 WHERE gateway_id = $1 AND device_id = $2"
            ))
            .bind(gateway.as_str())
            .bind(device_s.as_str())
            .fetch_all(pool)
            .await?
        });
        let bindings = rows
            .into_iter()
            .map(binding_from_row)
            .collect::<Result<Vec<_>>>()?;
        let found = pick(&bindings, user_index, at).cloned();
        if found.is_some() {
            self.invalidate_bindings();
        }
        Ok(found)
    }

    /// The devices a gateway may talk to at `at` and whose readings are whose: the body of
    /// its retained config message.
    pub async fn gateway_device_bindings(
        &self,
        gateway: &GatewayId,
        at: OffsetDateTime,
    ) -> Result<Vec<DeviceBinding>> {
        let mut by_device: BTreeMap<DeviceId, DeviceBinding> = BTreeMap::new();
        for b in self.list_bindings(Some(at)).await? {
            if &b.gateway != gateway {
                continue;
            }
            let entry = by_device.entry(b.device).or_insert_with(|| DeviceBinding {
                id: b.device,
                patient: None,
                users: Vec::new(),
            });
            match b.user_index {
                None => entry.patient = Some(b.patient),
                Some(user) => entry.users.push(UserBinding {
                    user,
                    patient: b.patient,
                }),
            }
        }
        let mut out: Vec<DeviceBinding> = by_device.into_values().collect();
        for d in &mut out {
            d.users.sort_by_key(|u| u.user);
        }
        Ok(out)
    }

    /// Reads every binding into the view (taken with `version`, read before the rows: a
    /// change in between makes the next check reload again) and answers the lookup from it.
    async fn reload_bindings(
        &self,
        version: BindingVersion,
        key: &(GatewayId, DeviceId),
        user_index: Option<u8>,
        at: OffsetDateTime,
    ) -> Result<Option<PatientKey>> {
        let all = self.list_bindings(None).await?;
        let mut by_pair: HashMap<(GatewayId, DeviceId), Vec<Binding>> = HashMap::new();
        for b in all {
            by_pair
                .entry((b.gateway.clone(), b.device))
                .or_default()
                .push(b);
        }
        let found = by_pair
            .get(key)
            .and_then(|b| pick(b, user_index, at))
            .cloned();
        let mut cache = self.bindings.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        cache.checked_at = Some(now);
        cache.loaded_at = Some(now);
        cache.version = Some(version);
        cache.reloads += 1;
        cache.by_pair = by_pair;
        Ok(found)
    }

    /// See [`BindingCache`]: the bindings table's version, one row.
    async fn binding_version(&self) -> Result<BindingVersion> {
        Ok(with_pool!(self, read, |pool, DB| {
            sqlx::query_scalar::<_, BindingVersion>(
                "SELECT version FROM binding_version WHERE id = 1",
            )
            .fetch_one(pool)
            .await?
        }))
    }

    /// How many times this record has read the whole bindings table into its lookup view.
    pub fn binding_reloads(&self) -> u64 {
        self.bindings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .reloads
    }

    /// How long a binding lookup trusts its view before asking the record whether it changed
    /// ([`BINDING_CACHE_TTL`] unless set). For tests and tools that must see another
    /// process's unbinding sooner.
    pub fn set_binding_ttl(&self, ttl: Duration) {
        self.bindings.write().unwrap_or_else(|p| p.into_inner()).ttl = ttl;
    }

    pub(super) fn invalidate_bindings(&self) {
        let mut cache = self.bindings.write().unwrap_or_else(|p| p.into_inner());
        cache.checked_at = None;
        cache.version = None;
    }

    // ------------------------------------------------------------------------------------
    // Audit

    /// Adds an audit row (for changes made outside the registry: thresholds, acknowledgements).
    pub async fn append_audit(&self, audit: &Audit<'_>, action: &str, target: &str) -> Result<()> {
        check_audit_row(audit, action, target)?;
        with_pool!(self, write, |pool, DB| {
            audit_insert!(audit, action, target).execute(pool).await?;
        });
        Ok(())
    }

    /// Records an alert's acknowledgement: the audit entry (`action` on `target`, as
    /// [`Record::append_audit`]) and, in the same transaction, the cancelling of the alert's
    /// escalation rows still waiting in the outbox. So the record never says acknowledged
    /// while an escalation it holds can still go out (after a crash, nothing else would
    /// cancel it), and a failed write leaves both as they were: the escalation goes on.
    /// Returns how many rows were cancelled.
    pub async fn record_acknowledgement(
        &self,
        audit: &Audit<'_>,
        action: &str,
        target: &str,
        alert_uid: &str,
    ) -> Result<usize> {
        check_audit_row(audit, action, target)?;
        let cancelled = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            audit_insert!(audit, action, target)
                .execute(&mut *tx)
                .await?;
            let n = <DB as super::alerts::OutboxSql>::cancel_escalation(
                &mut *tx,
                alert_uid,
                notifier::CancelReason::Acknowledged,
            )
            .await?;
            tx.commit().await?;
            n
        });
        Ok(cancelled)
    }

    /// The latest audit rows, newest first; with `target`, only rows about it.
    pub async fn audit_log(&self, target: Option<&str>, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(
                "SELECT audit_id, at, actor, action, target, reason FROM audit_log \
                 WHERE $1 IS NULL OR target = $1 ORDER BY audit_id DESC LIMIT $2",
            )
            .bind(target)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.audit_id,
                    at: from_us(r.at, "audit_log")?,
                    actor: r.actor,
                    action: r.action,
                    target: r.target,
                    reason: r.reason,
                })
            })
            .collect()
    }
}

fn patient_from_row(r: PatientRow) -> Result<Patient> {
    Ok(Patient {
        key: PatientKey::new(r.patient_key).map_err(|e| RecordError::corrupt("patients", e))?,
        display_name: r.display_name,
        condition: r.condition,
        profile_id: r.profile_id,
        care_team: r.care_team,
        created_at: from_us(r.created_at, "patients")?,
        updated_at: from_us(r.updated_at, "patients")?,
    })
}

fn gateway_from_row(r: GatewayRow) -> Result<Gateway> {
    Ok(Gateway {
        id: GatewayId::new(r.gateway_id).map_err(|e| RecordError::corrupt("gateways", e))?,
        registered_at: from_us(r.registered_at, "gateways")?,
        last_seen_at: r.last_seen_at.map(|t| from_us(t, "gateways")).transpose()?,
        status: r
            .status_json
            .map(|j| serde_json::from_str(&j))
            .transpose()
            .map_err(|e| RecordError::corrupt("gateways", format!("status_json: {e}")))?,
    })
}

fn device_from_row(r: DeviceRow) -> Result<Device> {
    let id: DeviceId = r
        .device_id
        .parse()
        .map_err(|e| RecordError::corrupt("devices", e))?;
    Ok(Device {
        identity: DeviceIdentity {
            id,
            serial: r.serial,
            manufacturer: r.manufacturer,
            model: r.model,
            firmware: r.firmware,
        },
        registered_at: from_us(r.registered_at, "devices")?,
        last_seen_at: r.last_seen_at.map(|t| from_us(t, "devices")).transpose()?,
    })
}

fn binding_from_row(r: BindingRow) -> Result<Binding> {
    let bad = |e: String| RecordError::corrupt("device_bindings", e);
    Ok(Binding {
        id: r.binding_id,
        gateway: GatewayId::new(r.gateway_id).map_err(|e| bad(e.to_string()))?,
        device: r.device_id.parse().map_err(|e| bad(format!("{e}")))?,
        user_index: r
            .user_index
            .map(u8::try_from)
            .transpose()
            .map_err(|_| bad("user_index out of range".into()))?,
        patient: PatientKey::new(r.patient_key).map_err(|e| bad(e.to_string()))?,
        valid_from: from_us(r.valid_from, "device_bindings")?,
        valid_to: r
            .valid_to
            .map(|t| from_us(t, "device_bindings"))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn binding(
        user: Option<u8>,
        patient: &str,
        from: OffsetDateTime,
        to: Option<OffsetDateTime>,
    ) -> Binding {
        Binding {
            id: 0,
            gateway: GatewayId::new("gw-1").expect("valid"),
            device: "eui64:0011223344556677".parse().expect("valid"),
            user_index: user,
            patient: PatientKey::new(patient).expect("valid"),
            valid_from: from,
            valid_to: to,
        }
    }

    #[test]
    fn user_slot_beats_whole_device_and_windows_are_half_open() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let t1 = datetime!(2026-02-01 00:00 UTC);
        let bs = [
            binding(None, "pk-whole", t0, None),
            binding(Some(1), "pk-one", t0, Some(t1)),
        ];
        let who = |u, at| pick(&bs, u, at).map(PatientKey::as_str);
        assert_eq!(who(Some(1), t0), Some("pk-one"));
        assert_eq!(
            who(Some(1), t1),
            Some("pk-whole"),
            "slot binding ended at t1"
        );
        assert_eq!(who(Some(2), t0), Some("pk-whole"));
        assert_eq!(who(None, t0), Some("pk-whole"));
        assert_eq!(who(None, t0 - time::Duration::SECOND), None);
    }

    #[test]
    fn debug_output_hides_names() {
        let p = NewPatient {
            key: PatientKey::new("pk-1").expect("valid"),
            display_name: Some("Jane Example".into()),
            condition: "copd".into(),
            profile_id: None,
            care_team: None,
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("Jane"), "{shown}");
        assert!(shown.contains("pk-1"));
    }
}
