//! `rpm patients`, `rpm gateways` and `rpm devices`: the registry of the patient record from
//! the command line (enrolling a patient, registering a home hub, binding a device to a
//! patient on a hub). Every change is written to the audit log as `cli:$USER` with the
//! `--reason` given. Lists print a table, or JSON with `--json`.
//!
//! Display names are PHI: `add --name` stores one for the console, but lists never print it
//! and `patients show` prints it only with `--show-name`.

use std::fmt::Write as _;

use anyhow::Context as _;
use ingest::record::{Audit, NewBinding, NewPatient, Patient, Record};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use vitals::{DeviceId, DeviceIdentity, GatewayId, PatientKey};

const DEFAULT_REASON: &str = "registered with the rpm CLI";

/// `rpm patients …`.
#[derive(Debug, clap::Subcommand)]
pub enum PatientsCmd {
    /// Register a patient under a pseudonymous key.
    Add {
        /// The key gateways and the wire know the patient by (`A-Z a-z 0-9 - _ .`).
        key: PatientKey,
        /// Display name for the console (PHI: never printed by lists or logged).
        #[arg(long)]
        name: Option<String>,
        /// Monitored condition: copd, heart_failure, hypertension, …
        #[arg(long)]
        condition: String,
        /// Threshold profile id (default: the condition's profile).
        #[arg(long)]
        profile: Option<String>,
        /// Care team responsible for the patient's alerts.
        #[arg(long)]
        care_team: Option<String>,
        /// Why, for the audit log.
        #[arg(long, default_value = DEFAULT_REASON)]
        reason: String,
    },
    /// List patients (without names).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one patient.
    Show {
        /// The patient key.
        key: PatientKey,
        /// Also print the display name (PHI).
        #[arg(long)]
        show_name: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `rpm gateways …`.
#[derive(Debug, clap::Subcommand)]
pub enum GatewaysCmd {
    /// Register a home hub.
    Add {
        /// Its id (`a-z 0-9 - _`): its MQTT topic level and broker user name.
        id: GatewayId,
        /// Why, for the audit log.
        #[arg(long, default_value = DEFAULT_REASON)]
        reason: String,
    },
    /// List gateways with when they were last seen.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `rpm devices …`.
#[derive(Debug, clap::Subcommand)]
pub enum DevicesCmd {
    /// Register a device by its identity (`eui64:0123456789abcdef` or `bdaddr:aa:bb:cc:dd:ee:ff`).
    Add {
        /// The device id.
        id: DeviceId,
        /// Model number.
        #[arg(long)]
        model: Option<String>,
        /// Serial number.
        #[arg(long)]
        serial: Option<String>,
        /// Manufacturer.
        #[arg(long)]
        manufacturer: Option<String>,
        /// Why, for the audit log.
        #[arg(long, default_value = DEFAULT_REASON)]
        reason: String,
    },
    /// Bind a device (or one user slot of a multi-user cuff) on a gateway to a patient.
    Bind {
        /// The device id.
        device: DeviceId,
        /// The gateway it talks to.
        #[arg(long)]
        gateway: GatewayId,
        /// The patient its readings belong to.
        #[arg(long)]
        patient: PatientKey,
        /// The device's user slot (multi-user blood pressure cuffs); omit for the whole device.
        #[arg(long)]
        user: Option<u8>,
        /// Start of validity, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_time)]
        from: Option<OffsetDateTime>,
        /// Why, for the audit log.
        #[arg(long, default_value = DEFAULT_REASON)]
        reason: String,
    },
    /// End the open binding of a device (or user slot) on a gateway.
    Unbind {
        /// The device id.
        device: DeviceId,
        /// The gateway.
        #[arg(long)]
        gateway: GatewayId,
        /// The user slot; omit for the whole-device binding.
        #[arg(long)]
        user: Option<u8>,
        /// When the binding ends, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_time)]
        at: Option<OffsetDateTime>,
        /// Why, for the audit log.
        #[arg(long, default_value = DEFAULT_REASON)]
        reason: String,
    },
    /// List devices and the bindings in force now.
    List {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time like 2026-11-26T07:00:00Z: {e}"))
}

fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

async fn open(db_url: &str) -> anyhow::Result<Record> {
    Record::connect(db_url, 2)
        .await
        .context("cannot open the patient record")
}

fn time_text(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

/// A plain text table: columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(text, "{cell:<w$}");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn patient_json(p: &Patient, with_name: bool) -> serde_json::Value {
    let mut v = json!({
        "key": p.key,
        "condition": p.condition,
        "profile": p.profile_id,
        "care_team": p.care_team,
        "created_at": time_text(Some(p.created_at)),
        "updated_at": time_text(Some(p.updated_at)),
    });
    if with_name {
        v["name"] = json!(p.display_name);
    }
    v
}

/// Writes to standard output; a closed pipe (`rpm devices list | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// Runs `rpm patients …` against the record at `db_url`.
pub async fn run_patients(db_url: &str, cmd: PatientsCmd) -> anyhow::Result<()> {
    let record = open(db_url).await?;
    let who = actor();
    let result = match cmd {
        PatientsCmd::Add {
            key,
            name,
            condition,
            profile,
            care_team,
            reason,
        } => {
            let new = NewPatient {
                key,
                display_name: name,
                condition,
                profile_id: profile,
                care_team,
            };
            let audit = Audit {
                who: &who,
                why: &reason,
            };
            let p = record
                .create_patient(&new, &audit)
                .await
                .context("cannot register the patient")?;
            println!("registered patient {}", p.key);
            Ok(())
        }
        PatientsCmd::List { json } => {
            let patients = record.list_patients().await?;
            if json {
                print_json(&serde_json::Value::Array(
                    patients.iter().map(|p| patient_json(p, false)).collect(),
                ))
            } else {
                let rows: Vec<Vec<String>> = patients
                    .iter()
                    .map(|p| {
                        vec![
                            p.key.to_string(),
                            p.condition.clone(),
                            or_dash(p.profile_id.as_deref()).to_owned(),
                            or_dash(p.care_team.as_deref()).to_owned(),
                            time_text(Some(p.created_at)),
                        ]
                    })
                    .collect();
                emit(&table(
                    &["KEY", "CONDITION", "PROFILE", "CARE TEAM", "CREATED"],
                    &rows,
                ))?;
                Ok(())
            }
        }
        PatientsCmd::Show {
            key,
            show_name,
            json,
        } => {
            let p = record
                .patient(&key)
                .await?
                .with_context(|| format!("no patient `{key}`"))?;
            if json {
                print_json(&patient_json(&p, show_name))
            } else {
                println!("key:        {}", p.key);
                if show_name {
                    println!("name:       {}", or_dash(p.display_name.as_deref()));
                }
                println!("condition:  {}", p.condition);
                println!("profile:    {}", or_dash(p.profile_id.as_deref()));
                println!("care team:  {}", or_dash(p.care_team.as_deref()));
                println!("created:    {}", time_text(Some(p.created_at)));
                println!("updated:    {}", time_text(Some(p.updated_at)));
                Ok(())
            }
        }
    };
    record.close().await;
    result
}

/// Runs `rpm gateways …` against the record at `db_url`.
pub async fn run_gateways(db_url: &str, cmd: GatewaysCmd) -> anyhow::Result<()> {
    let record = open(db_url).await?;
    let who = actor();
    let result = match cmd {
        GatewaysCmd::Add { id, reason } => {
            let audit = Audit {
                who: &who,
                why: &reason,
            };
            record
                .create_gateway(&id, &audit)
                .await
                .context("cannot register the gateway")?;
            println!("registered gateway {id}");
            Ok(())
        }
        GatewaysCmd::List { json } => {
            let gateways = record.list_gateways().await?;
            if json {
                print_json(&serde_json::Value::Array(
                    gateways
                        .iter()
                        .map(|g| {
                            json!({
                                "id": g.id,
                                "registered_at": time_text(Some(g.registered_at)),
                                "last_seen_at": g.last_seen_at.map(|t| time_text(Some(t))),
                                "status": g.status,
                            })
                        })
                        .collect(),
                ))
            } else {
                let rows: Vec<Vec<String>> = gateways
                    .iter()
                    .map(|g| {
                        let state = g.status.as_ref().map_or("-".to_owned(), |s| {
                            serde_json::to_value(s.state)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_else(|| "-".to_owned())
                        });
                        vec![
                            g.id.to_string(),
                            time_text(Some(g.registered_at)),
                            time_text(g.last_seen_at),
                            state,
                        ]
                    })
                    .collect();
                emit(&table(&["ID", "REGISTERED", "LAST SEEN", "STATE"], &rows))?;
                Ok(())
            }
        }
    };
    record.close().await;
    result
}

/// Runs `rpm devices …` against the record at `db_url`.
pub async fn run_devices(db_url: &str, cmd: DevicesCmd) -> anyhow::Result<()> {
    let record = open(db_url).await?;
    let who = actor();
    let result = match cmd {
        DevicesCmd::Add {
            id,
            model,
            serial,
            manufacturer,
            reason,
        } => {
            let identity = DeviceIdentity {
                model,
                serial,
                manufacturer,
                ..DeviceIdentity::new(id)
            };
            let audit = Audit {
                who: &who,
                why: &reason,
            };
            record
                .create_device(&identity, &audit)
                .await
                .context("cannot register the device")?;
            println!("registered device {id}");
            Ok(())
        }
        DevicesCmd::Bind {
            device,
            gateway,
            patient,
            user,
            from,
            reason,
        } => {
            let audit = Audit {
                who: &who,
                why: &reason,
            };
            let b = record
                .bind(
                    &NewBinding {
                        gateway,
                        device,
                        patient,
                        user_index: user,
                        valid_from: from.unwrap_or_else(OffsetDateTime::now_utc),
                    },
                    &audit,
                )
                .await
                .context("cannot bind the device")?;
            let slot = b.user_index.map_or(String::new(), |u| format!(" user {u}"));
            println!(
                "bound device {}{slot} on gateway {} to patient {} from {}",
                b.device,
                b.gateway,
                b.patient,
                time_text(Some(b.valid_from))
            );
            Ok(())
        }
        DevicesCmd::Unbind {
            device,
            gateway,
            user,
            at,
            reason,
        } => {
            let audit = Audit {
                who: &who,
                why: &reason,
            };
            let at = at.unwrap_or_else(OffsetDateTime::now_utc);
            record
                .unbind(&gateway, &device, user, at, &audit)
                .await
                .context("cannot unbind the device")?;
            let slot = user.map_or(String::new(), |u| format!(" user {u}"));
            println!(
                "unbound device {device}{slot} on gateway {gateway} at {}",
                time_text(Some(at))
            );
            Ok(())
        }
        DevicesCmd::List { json } => {
            let devices = record.list_devices().await?;
            let bindings = record
                .list_bindings(Some(OffsetDateTime::now_utc()))
                .await?;
            if json {
                print_json(&json!({
                    "devices": devices.iter().map(|d| json!({
                        "id": d.identity.id,
                        "manufacturer": d.identity.manufacturer,
                        "model": d.identity.model,
                        "serial": d.identity.serial,
                        "firmware": d.identity.firmware,
                        "registered_at": time_text(Some(d.registered_at)),
                        "last_seen_at": d.last_seen_at.map(|t| time_text(Some(t))),
                    })).collect::<Vec<_>>(),
                    "bindings": bindings.iter().map(|b| json!({
                        "device": b.device,
                        "gateway": b.gateway,
                        "user": b.user_index,
                        "patient": b.patient,
                        "valid_from": time_text(Some(b.valid_from)),
                    })).collect::<Vec<_>>(),
                }))
            } else {
                let rows: Vec<Vec<String>> = devices
                    .iter()
                    .map(|d| {
                        vec![
                            d.identity.id.to_string(),
                            or_dash(d.identity.model.as_deref()).to_owned(),
                            or_dash(d.identity.serial.as_deref()).to_owned(),
                            or_dash(d.identity.firmware.as_deref()).to_owned(),
                            time_text(d.last_seen_at),
                        ]
                    })
                    .collect();
                emit(&table(
                    &["DEVICE", "MODEL", "SERIAL", "FIRMWARE", "LAST SEEN"],
                    &rows,
                ))?;
                let rows: Vec<Vec<String>> = bindings
                    .iter()
                    .map(|b| {
                        vec![
                            b.device.to_string(),
                            b.user_index.map_or("-".to_owned(), |u| u.to_string()),
                            b.gateway.to_string(),
                            b.patient.to_string(),
                            time_text(Some(b.valid_from)),
                        ]
                    })
                    .collect();
                emit("\n")?;
                emit(&table(
                    &["DEVICE", "USER", "GATEWAY", "PATIENT", "SINCE"],
                    &rows,
                ))?;
                Ok(())
            }
        }
    };
    record.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let t = table(
            &["KEY", "CONDITION"],
            &[
                vec!["pk-1".into(), "copd".into()],
                vec!["p".into(), "-".into()],
            ],
        );
        assert_eq!(t, "KEY   CONDITION\npk-1  copd\np     -\n");
    }

    #[test]
    fn times_parse_as_rfc3339() {
        assert!(parse_time("2026-11-26T07:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
