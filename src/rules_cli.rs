//! `rpm rules`: check threshold profiles, and backtest one against recorded readings — the
//! same `rules::backtest` the console's threshold editor previews a change with.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use rules::{BacktestReport, Profile, ProfileOverride, Ruleset};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use vitals::{DeviceIdentity, Envelope, Reading};

/// `rpm rules …`.
#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Load and validate a threshold profile (and an override on top); exits 1 with the exact
    /// problem when it could not go live.
    Check {
        /// The profile (TOML, e.g. fixtures/profiles/copd.toml).
        profile: PathBuf,
        /// A per-patient override to apply on top.
        #[arg(long = "override")]
        overlay: Option<PathBuf>,
    },
    /// Replay recorded readings against a profile and report every alert it would have raised
    /// and the alert load per patient-day.
    Backtest {
        /// The profile (TOML).
        #[arg(long)]
        profile: PathBuf,
        /// A per-patient override to apply on top.
        #[arg(long = "override")]
        overlay: Option<PathBuf>,
        /// Readings as JSON lines: one `Reading` or one wire `Envelope` per line.
        #[arg(
            long,
            conflicts_with = "database",
            required_unless_present = "database"
        )]
        readings: Option<PathBuf>,
        /// Or the patient record (`sqlite:path` or `postgres://…`).
        #[arg(long)]
        database: Option<String>,
        /// Window start (RFC 3339, or a date like 2026-11-01); earlier readings only warm up
        /// baselines. Default: the first reading.
        #[arg(long)]
        from: Option<String>,
        /// Window end (RFC 3339 or a date). Default: just after the last reading.
        #[arg(long)]
        to: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `rpm rules` command.
pub fn run(command: RulesCommand) -> anyhow::Result<ExitCode> {
    match command {
        RulesCommand::Check { profile, overlay } => {
            let ruleset = load_ruleset(&profile, overlay.as_deref())?;
            println!(
                "{}: valid profile {} with {} rules",
                profile.display(),
                ruleset.label(),
                ruleset.rules.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Backtest {
            profile,
            overlay,
            readings,
            database,
            from,
            to,
            json,
        } => {
            let ruleset = load_ruleset(&profile, overlay.as_deref())?;
            let mut all = match (readings, database) {
                (Some(file), _) => read_readings_file(&file)?,
                (None, Some(url)) => crate::runtime()?.block_on(read_readings_database(&url))?,
                (None, None) => bail!("give --readings FILE or --database URL"),
            };
            if all.is_empty() {
                bail!("there are no readings to replay (the file or record holds none)");
            }
            all.sort_by_key(|r| r.measured_at);
            let first = all.first().map(|r| r.measured_at);
            let last = all.last().map(|r| r.measured_at);
            let from = match from {
                Some(t) => parse_time(&t).context("--from")?,
                None => first.unwrap_or(OffsetDateTime::UNIX_EPOCH),
            };
            let to = match to {
                Some(t) => parse_time(&t).context("--to")?,
                None => last.map_or(OffsetDateTime::UNIX_EPOCH, |t| t + time::Duration::SECOND),
            };
            if to <= from {
                bail!("--to must be after --from");
            }
            let total = all.len() as u64;
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} readings ({per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            if total < 100_000 {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let report = rules::backtest(&ruleset, all, from, to, |p| {
                bar.set_position(p.readings);
                if p.done {
                    bar.finish_and_clear();
                }
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report_json(&report))?);
            } else {
                print!("{}", report_text(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_ruleset(profile: &Path, overlay: Option<&Path>) -> anyhow::Result<Ruleset> {
    let text = std::fs::read_to_string(profile)
        .with_context(|| format!("cannot read {}", profile.display()))?;
    let base = Profile::from_toml(&text).with_context(|| format!("{}", profile.display()))?;
    match overlay {
        None => base
            .build()
            .with_context(|| format!("{}", profile.display())),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let o =
                ProfileOverride::from_toml(&text).with_context(|| format!("{}", path.display()))?;
            base.build_with(&o)
                .with_context(|| format!("{}", path.display()))
        }
    }
}

/// JSON lines of readings or envelopes; a bad line stops the run with its number and reason.
fn read_readings_file(path: &Path) -> anyhow::Result<Vec<Reading>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_start().starts_with("{\"v\"") {
            let e = Envelope::decode(line.as_bytes())
                .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
            out.extend(e.readings);
        } else {
            let r: Reading = serde_json::from_str(&line)
                .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
            r.validate()
                .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
            out.push(r);
        }
    }
    Ok(out)
}

/// Every reading in the record, patient by patient, with a counter on stderr (when it is a
/// terminal): on a long run, reading the record is most of the wait.
async fn read_readings_database(url: &str) -> anyhow::Result<Vec<Reading>> {
    let record = ingest::record::Record::connect(url, 2).await?;
    let mut out = Vec::new();
    let counter = indicatif::ProgressBar::new_spinner();
    counter.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} reading the record: {pos} readings ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    for patient in record.list_patients().await? {
        let mut page = ingest::record::Page::first(1000);
        loop {
            let got = record
                .readings_for_patient(&patient.key, OffsetDateTime::UNIX_EPOCH, far_future(), page)
                .await?;
            counter.inc(got.readings.len() as u64);
            out.extend(got.readings.into_iter().map(|s| Reading {
                id: s.id,
                seq: s.gateway_seq,
                gateway: s.gateway,
                patient: s.patient,
                device: DeviceIdentity::new(s.device),
                user_index: s.user_index,
                reading_type: s.reading_type,
                device_time: s.device_time,
                measured_at: s.measured_at,
                received_at: s.received_at,
                values: s.values,
                flags: s.flags,
            }));
            match got.next {
                Some(next) => page = next,
                None => break,
            }
        }
    }
    counter.finish_and_clear();
    record.close().await;
    Ok(out)
}

fn far_future() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::days(365 * 1000)
}

fn parse_time(text: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let date = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| format!("`{text}` is neither RFC 3339 nor YYYY-MM-DD"))?;
    Ok(date.midnight().assume_utc())
}

fn ts(t: rules::Timestamp) -> String {
    t.to_datetime().format(&Rfc3339).unwrap_or_default()
}

fn report_json(r: &BacktestReport) -> serde_json::Value {
    json!({
        "profile": r.profile,
        "from": ts(r.from),
        "to": ts(r.to),
        "readings": r.readings,
        "readings_in_window": r.readings_in_window,
        "warm_up": r.warm_up,
        "out_of_order": r.out_of_order,
        "repeat_requests": r.repeat_requests,
        "alerts_total": r.alerts.len(),
        "patient_days": r.patient_days,
        "alerts_per_patient_day": r.alerts_per_patient_day,
        "by_rule": r.by_rule.iter().map(|(rule, n)| json!({"rule": rule, "alerts": n})).collect::<Vec<_>>(),
        "patients": r.patients.iter().map(|p| json!({"patient": p.patient, "alerts": p.alerts, "days": p.days})).collect::<Vec<_>>(),
        "alerts": r.alerts.iter().map(|a| json!({
            "patient": a.patient,
            "rule": a.rule,
            "raised_at": ts(a.raised.at),
            "severity": a.raised.severity.as_str(),
            "max_severity": a.max_severity.as_str(),
            "updates": a.updates,
            "resolved_at": a.resolved_at.map(ts),
            "readings": a.raised.evidence.iter().map(|e| e.reading.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn report_text(r: &BacktestReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "profile {}  window {} .. {}",
        r.profile,
        ts(r.from),
        ts(r.to)
    );
    let _ = writeln!(
        s,
        "{} readings ({} in the window, {} warm-up, {} out of order); {} repeat prompts",
        r.readings, r.readings_in_window, r.warm_up, r.out_of_order, r.repeat_requests
    );
    let _ = writeln!(
        s,
        "{} alerts over {:.1} patient-days = {:.3} alerts per patient-day",
        r.alerts.len(),
        r.patient_days,
        r.alerts_per_patient_day
    );
    let _ = writeln!(s, "\nby rule:");
    for (rule, n) in &r.by_rule {
        let _ = writeln!(s, "  {rule:<28} {n}");
    }
    let _ = writeln!(s, "\nalerts:");
    for a in &r.alerts {
        let resolved = a
            .resolved_at
            .map_or_else(|| "open".to_owned(), |t| format!("resolved {}", ts(t)));
        let _ = writeln!(
            s,
            "  {}  {:<10} {:<24} {:<9} (max {}, {} updates, {resolved})",
            ts(a.raised.at),
            a.patient,
            a.rule,
            a.raised.severity.as_str(),
            a.max_severity.as_str(),
            a.updates
        );
    }
    s
}
