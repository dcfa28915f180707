//! `rpm bench all`: every benchmark in one run on this machine, written up as one Markdown
//! report with each figure beside its baseline from the same run, and an SVG plot of
//! end-to-end latency against load.
//!
//! On embedded defaults: the embedded MQTT broker of `rpm demo` (rumqttd, a free loopback
//! port) and SQLite in a temporary directory; `--broker` adds the ingest figures against
//! another broker (Mosquitto), `--postgres` adds PostgreSQL. The parts:
//!
//! 1. end-to-end latency at several offered loads ([`e2e`]), beside a bare broker's latency
//!    at the same rate;
//! 2. ingest's rate beside the bare subscriber and raw insert rates ([`crate::bench_ingest`]);
//! 3. the rules engine beside its harness and clock baselines ([`crate::bench_rules`]);
//! 4. the gateway's forwarding rate, CPU and memory beside a bare publisher
//!    ([`crate::bench_gateway`], in a child process so its memory is its own);
//! 5. each of those at 100, 1 000, 10 000 and 100 000 patients.
//!
//! The machine may be shared: where a run is cheap it is repeated and the median reported
//! with the runs beside it, and the load average is printed before and after each part.

pub mod e2e;
pub mod svg;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// A small run (seconds, for tests and a first look) instead of the full one.
    pub quick: bool,
    /// The Markdown report; the plot and the figures as JSON go beside it.
    pub out: PathBuf,
    /// Also measure ingest through this broker.
    pub broker: Option<String>,
    /// Also measure ingest on this PostgreSQL database (a scratch one).
    pub postgres: Option<String>,
    /// The command line, for the report.
    pub command: String,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    fn cells(&self) -> String {
        if self.count == 0 {
            return "— | — | — | —".into();
        }
        format!(
            "{} | {} | {} | {}",
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.p999_ms),
            ms(self.max_ms)
        )
    }
}

/// Milliseconds with about three significant figures.
fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A rate, rounded.
fn rate(v: f64) -> String {
    format!("{v:.0}")
}

/// A ratio to two significant figures at least, or a dash when the baseline is missing.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        fraction(a / b)
    } else {
        "—".into()
    }
}

/// A ratio already divided.
fn fraction(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.1}")
    } else if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.4}")
    }
}

/// The median of some runs (the upper one of an even number).
fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// "median (run / run / run)" when there was more than one run.
fn with_runs(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let m = fmt(median(v.to_vec()));
    if v.len() < 2 {
        return m;
    }
    let runs: Vec<String> = v.iter().map(|x| fmt(*x)).collect();
    format!("{m} ({})", runs.join(" / "))
}

/// The one-, five- and fifteen-minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(String::new(), |kb| {
            format!(", {:.1} GiB RAM", kb / 1048576.0)
        });
    format!("{cores} cores ({cpu}){mem}, Linux {kernel}")
}

/// The sizes of the full and the quick run.
struct Plan {
    /// Load sweep: patients, hubs, offered loads, seconds per load.
    sweep_patients: usize,
    hubs: usize,
    loads: Vec<f64>,
    step: Duration,
    /// Scaling: patient counts, the load they are measured at and for how long.
    scale: Vec<usize>,
    scale_load: f64,
    scale_step: Duration,
    /// Runs of the cheap benches (the median is reported).
    runs: usize,
    ingest_readings: usize,
    ingest_scale_readings: usize,
    rules_patients: usize,
    rules_readings: usize,
    rules_scale_readings: usize,
    gateway_readings: usize,
    gateway_scale_readings: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                sweep_patients: 100,
                hubs: 2,
                loads: vec![50.0, 200.0],
                step: Duration::from_secs(2),
                scale: vec![100, 1_000],
                scale_load: 100.0,
                scale_step: Duration::from_secs(1),
                runs: 1,
                ingest_readings: 2_000,
                ingest_scale_readings: 1_000,
                rules_patients: 1_000,
                rules_readings: 50_000,
                rules_scale_readings: 20_000,
                gateway_readings: 2_000,
                gateway_scale_readings: 1_000,
            }
        } else {
            Plan {
                sweep_patients: 1_000,
                hubs: 4,
                loads: vec![100.0, 300.0, 1_000.0, 2_000.0, 4_000.0],
                step: Duration::from_secs(15),
                scale: vec![100, 1_000, 10_000, 100_000],
                scale_load: 1_000.0,
                scale_step: Duration::from_secs(10),
                runs: 3,
                ingest_readings: 50_000,
                ingest_scale_readings: 30_000,
                rules_patients: 100_000,
                rules_readings: 2_000_000,
                rules_scale_readings: 1_000_000,
                gateway_readings: 50_000,
                gateway_scale_readings: 20_000,
            }
        }
    }
}

/// Rules engine figures read from `rpm bench rules`'s report.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct RulesFigures {
    /// ns/reading: harness baseline, engine, batch harness baseline, engine batched.
    harness_ns: f64,
    engine_ns: f64,
    batch_harness_ns: f64,
    batch_ns: f64,
    /// Per-reading latency (ns): clock baseline, single reading, batch of 64: p50, p99, p99.9.
    clock: [f64; 3],
    single: [f64; 3],
    batched: [f64; 3],
}

/// The numbers of the table row named `name` in a Markdown report (cells that are not
/// numbers, like "n/a", are NaN; a trailing " M" is dropped).
fn row(report: &str, name: &str) -> anyhow::Result<Vec<f64>> {
    let prefix = format!("| {name} |");
    let line = report
        .lines()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("`rpm bench rules` printed no row `{name}`"))?;
    Ok(line[prefix.len()..]
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| c.trim_end_matches(" M").parse().unwrap_or(f64::NAN))
        .collect())
}

/// Runs `rpm bench rules` and reads its tables. Its Markdown is the interface (the report
/// is what the rules bench promises); a renamed row fails here, loudly, and in the test.
fn rules(patients: usize, readings: usize, quick: bool) -> anyhow::Result<RulesFigures> {
    let report = crate::bench_rules::run(&crate::bench_rules::Options {
        patients,
        readings,
        quick,
    })?;
    let at = |name: &str, i: usize| -> anyhow::Result<f64> {
        row(&report, name)?
            .get(i)
            .copied()
            .with_context(|| format!("row `{name}` has no column {i}"))
    };
    let pcts = |name: &str| -> anyhow::Result<[f64; 3]> {
        // samples | p50 | p99 | p99.9 | max
        Ok([at(name, 1)?, at(name, 2)?, at(name, 3)?])
    };
    Ok(RulesFigures {
        harness_ns: at("baseline: harness + one comparison", 0)?,
        engine_ns: at("engine (`Engine::evaluate`)", 0)?,
        batch_harness_ns: at("baseline: batch harness + one comparison", 0)?,
        batch_ns: at("engine, batches of 64 (`Engine::evaluate_batch`)", 0)?,
        clock: pcts("baseline: clock read alone")?,
        single: pcts("single reading (incl. clock)")?,
        batched: pcts("batch of 64, per reading")?,
    })
}

/// Runs `rpm bench gateway --json` in a child process (so the memory it reports is the
/// gateway's, not this process's broker and record) against `broker`.
fn gateway(broker: &str, readings: usize, patients: usize) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find the rpm binary")?;
    let out = std::process::Command::new(exe)
        .args(["bench", "gateway", "--json", "--broker", broker])
        .args(["--readings", &readings.to_string()])
        .args(["--patients", &patients.to_string()])
        // Its progress lines would interleave with ours; warnings still show.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run `rpm bench gateway`")?;
    anyhow::ensure!(
        out.status.success(),
        "`rpm bench gateway` failed ({})",
        out.status
    );
    serde_json::from_slice(&out.stdout).context("`rpm bench gateway --json` printed no JSON")
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// One decimal, or "unavailable" for a figure the run could not take (JSON `null`).
fn one_decimal(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "unavailable".into()
    }
}

fn ingest_opts(
    broker: &str,
    postgres: Option<&str>,
    readings: usize,
    patients: usize,
) -> crate::bench_ingest::Options {
    crate::bench_ingest::Options {
        broker: broker.to_owned(),
        postgres: postgres.map(str::to_owned),
        readings,
        batch: 200,
        patients,
        rules: None,
    }
}

/// Runs everything and writes the report, the plot and the figures; returns the report's
/// path.
pub async fn run(opts: &Options) -> anyhow::Result<PathBuf> {
    let plan = Plan::new(opts.quick);
    let started = Instant::now();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let out_dir = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("rpm-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let broker = crate::demo::broker::start(None).await?;
    let embedded = format!("mqtt://{}", broker.addr);
    let profiles = work.path().join("profiles");
    crate::demo::fleet::write_profiles(&profiles)?;
    let mut loads = vec![("start".to_owned(), load_average())];
    let mut json = serde_json::Map::new();
    let say = |what: &str| {
        eprintln!(
            "rpm bench all: {what} ({:.0} s)",
            started.elapsed().as_secs_f64()
        )
    };

    // 1. End-to-end latency against load.
    say("end-to-end latency against load");
    let steps: Vec<e2e::Step> = plan
        .loads
        .iter()
        .map(|&offered| e2e::Step {
            offered,
            duration: plan.step,
        })
        .collect();
    let sweep = e2e::run(
        &e2e::Setup {
            broker: broker.addr,
            patients: plan.sweep_patients,
            hubs: plan.hubs,
            dir: work.path().join("sweep"),
        },
        &steps,
    )
    .await
    .context("end-to-end latency")?;
    loads.push(("after the load sweep".into(), load_average()));
    json.insert("latency_sweep".into(), serde_json::to_value(&sweep)?);

    // 2. Ingest against the bare broker and database.
    say("ingest rate");
    let rules_config = ingest::config::RulesConfig {
        profiles_dir: profiles.clone(),
        ..Default::default()
    };
    let mut ingest_sets: Vec<(String, crate::bench_ingest::Options)> = Vec::new();
    for (label, broker_url, rules) in [
        ("embedded broker, rules off", embedded.clone(), false),
        ("embedded broker, rules on", embedded.clone(), true),
    ] {
        let mut o = ingest_opts(
            &broker_url,
            opts.postgres.as_deref(),
            plan.ingest_readings,
            plan.sweep_patients,
        );
        o.rules = rules.then(|| rules_config.clone());
        ingest_sets.push((label.to_owned(), o));
    }
    if let Some(b) = &opts.broker {
        let mut o = ingest_opts(
            b,
            opts.postgres.as_deref(),
            plan.ingest_readings,
            plan.sweep_patients,
        );
        o.rules = Some(rules_config.clone());
        ingest_sets.push((format!("{b}, rules on"), o));
    }
    let mut ingest_rows: Vec<(String, String, Vec<crate::bench_ingest::Rates>)> = Vec::new();
    for (label, o) in &ingest_sets {
        let mut runs: Vec<Vec<crate::bench_ingest::Rates>> = Vec::new();
        for _ in 0..plan.runs {
            runs.push(
                crate::bench_ingest::measure(o)
                    .await
                    .with_context(|| format!("ingest, {label}"))?,
            );
        }
        let databases = runs.first().map_or(0, Vec::len);
        for d in 0..databases {
            let per: Vec<crate::bench_ingest::Rates> =
                runs.iter().filter_map(|r| r.get(d).cloned()).collect();
            let db = per.first().map(|r| r.database.clone()).unwrap_or_default();
            ingest_rows.push((label.clone(), db, per));
        }
    }
    loads.push(("after ingest".into(), load_average()));
    json.insert(
        "ingest".into(),
        serde_json::to_value(
            ingest_rows
                .iter()
                .map(|(l, db, r)| serde_json::json!({ "set": l, "database": db, "runs": r }))
                .collect::<Vec<_>>(),
        )?,
    );

    // 3. Rules engine.
    say("rules engine");
    let mut rules_runs = Vec::new();
    for _ in 0..plan.runs {
        rules_runs.push(rules(plan.rules_patients, plan.rules_readings, opts.quick)?);
    }
    loads.push(("after the rules engine".into(), load_average()));
    json.insert("rules".into(), serde_json::to_value(&rules_runs)?);

    // 4. Gateway.
    say("gateway");
    let mut gateway_runs = Vec::new();
    for _ in 0..plan.runs {
        gateway_runs.push(gateway(
            &embedded,
            plan.gateway_readings,
            plan.sweep_patients,
        )?);
    }
    loads.push(("after the gateway".into(), load_average()));
    json.insert(
        "gateway".into(),
        serde_json::Value::Array(gateway_runs.clone()),
    );

    // 5. Scaling with the number of patients.
    let mut scaling = Vec::new();
    for &patients in &plan.scale {
        say(&format!("{patients} patients"));
        let e2e = e2e::run(
            &e2e::Setup {
                broker: broker.addr,
                patients,
                hubs: plan.hubs,
                dir: work.path().join(format!("scale-{patients}")),
            },
            &[e2e::Step {
                offered: plan.scale_load,
                duration: plan.scale_step,
            }],
        )
        .await
        .with_context(|| format!("end-to-end latency with {patients} patients"))?;
        let mut o = ingest_opts(&embedded, None, plan.ingest_scale_readings, patients);
        o.rules = Some(rules_config.clone());
        let ingest = crate::bench_ingest::measure(&o)
            .await
            .with_context(|| format!("ingest with {patients} patients"))?;
        let rules = rules(patients, plan.rules_scale_readings, true)?;
        let gw = gateway(&embedded, plan.gateway_scale_readings, patients)?;
        scaling.push((patients, e2e, ingest, rules, gw));
    }
    loads.push(("end".into(), load_average()));
    json.insert(
        "scaling".into(),
        serde_json::to_value(
            scaling
                .iter()
                .map(|(n, e, i, r, g)| serde_json::json!({ "patients": n, "e2e": e, "ingest": i, "rules": r, "gateway": g }))
                .collect::<Vec<_>>(),
        )?,
    );

    // The plot.
    let svg_name = "latency-vs-load.svg";
    let svg_path = out_dir.join(svg_name);
    let achieved = |f: fn(&e2e::StepResult) -> f64| -> Vec<(f64, f64)> {
        sweep.steps.iter().map(|s| (s.achieved, f(s))).collect()
    };
    let chart = svg::line_chart(
        &format!(
            "End-to-end latency, {} patients on {} hubs",
            sweep.patients, sweep.hubs
        ),
        "readings/s arriving at the hubs",
        "ms, device notification → committed",
        &[
            svg::Series {
                name: "p50".into(),
                color: "#1f77b4",
                dashed: false,
                points: achieved(|s| s.latency.p50_ms),
            },
            svg::Series {
                name: "p99".into(),
                color: "#ff7f0e",
                dashed: false,
                points: achieved(|s| s.latency.p99_ms),
            },
            svg::Series {
                name: "p99.9".into(),
                color: "#d62728",
                dashed: false,
                points: achieved(|s| s.latency.p999_ms),
            },
            svg::Series {
                name: "bare broker p50".into(),
                color: "#7f7f7f",
                dashed: true,
                points: achieved(|s| s.broker.p50_ms),
            },
            svg::Series {
                name: "bare broker p99.9".into(),
                color: "#2ca02c",
                dashed: true,
                points: achieved(|s| s.broker.p999_ms),
            },
        ],
    );
    std::fs::write(&svg_path, chart)
        .with_context(|| format!("cannot write {}", svg_path.display()))?;

    // The report.
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# rpm bench all{}\n",
        if opts.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(r, "- command: `{}`", opts.command);
    let _ = writeln!(
        r,
        "- date: {date}; took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        r,
        "- build: {}",
        if cfg!(debug_assertions) {
            "debug (figures are not representative; use --release)"
        } else {
            "release"
        }
    );
    let _ = writeln!(r, "- machine: {}", machine());
    let _ = writeln!(
        r,
        "- load average (1, 5, 15 min): {}",
        loads
            .iter()
            .map(|(w, l)| format!("{w} {l}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        r,
        "- broker: embedded rumqttd on {}{}; database: SQLite (WAL, synchronous commits) in a temporary directory{}",
        broker.addr,
        opts.broker
            .as_deref()
            .map_or(String::new(), |b| format!(", and {b} for ingest")),
        if opts.postgres.is_some() {
            ", and PostgreSQL for ingest"
        } else {
            ""
        }
    );
    let _ = writeln!(
        r,
        "- where a figure shows runs in brackets, it is their median: the machine may be shared\n"
    );

    let _ = writeln!(r, "## End-to-end latency against load\n");
    let _ = writeln!(
        r,
        "{} patients, one pulse oximeter each, on {} home hubs; each load offered for {} s. \
         Each reading starts as a PLX spot-check notification (GATT 0x2A5E bytes) that the \
         gateway code decodes, maps and writes to the hub's durable queue (SQLite, synchronous \
         commit); the hub's forwarder (`rpm gateway`'s defaults: up to 200 readings a message, \
         a partial batch waits up to 200 ms, 16 messages in flight) publishes it over MQTT 5 \
         QoS 1; ingest (default `[consumer]`: batches up to 2 000 readings, 20 ms linger) \
         validates it and, in one transaction, stores it, evaluates the shipped COPD profile on \
         it and writes any alert and its notification rows to the outbox.\n",
        sweep.patients,
        sweep.hubs,
        plan.step.as_secs()
    );
    let _ = writeln!(
        r,
        "**Measured from** the reading's scheduled arrival at the hub (open loop, so a hub that \
         falls behind shows as latency) **to** {}. For a reading that raised an alert that \
         transaction is the one that enqueued its notification rows (\"alert\" columns); for \
         the others it is the reading committed and evaluated. 1 patient in 20 alternates \
         SpO2 86 % (twice) and 95 % (twice), so the confirmed low-SpO2 rule raises, clears and \
         raises again; {} alerts raised, {} outbox rows enqueued.\n",
        if sweep.end_is_commit {
            format!(
                "the commit of the ingest transaction that holds it (the moment the consumer's \
                 committed-batch counter passes its batch, sampled every {} µs)",
                e2e::WATCH_EVERY.as_micros()
            )
        } else {
            "the start of the ingest transaction that holds it (its `ingested_at`; the commit \
             could not be matched to batches in this run)"
                .into()
        },
        sweep.alerts_raised,
        sweep.outbox_rows
    );
    let _ = writeln!(
        r,
        "Baseline, same run: bare QoS 1 messages of one reading's size at the same rate through \
         the same broker, publish → a subscriber has it.\n"
    );
    let _ = writeln!(
        r,
        "| offered (readings/s) | arrived (readings/s) | readings | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | alert readings | alert p50 (ms) | alert p99 (ms) | alert p99.9 (ms) | alert max (ms) | bare broker p50 / p99 / p99.9 (ms) | p50 / broker p50 | p99.9 / broker p99.9 | CPU ms per 1 000 readings |"
    );
    let _ = writeln!(
        r,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
    );
    for s in &sweep.steps {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {:.0} |",
            rate(s.offered),
            rate(s.achieved),
            s.latency.count,
            s.latency.cells(),
            s.alerts.count,
            s.alerts.cells(),
            ms(s.broker.p50_ms),
            ms(s.broker.p99_ms),
            ms(s.broker.p999_ms),
            ratio(s.latency.p50_ms, s.broker.p50_ms),
            ratio(s.latency.p999_ms, s.broker.p999_ms),
            s.cpu_ms_per_1000
        );
    }
    let _ = writeln!(
        r,
        "\nCPU is the whole process's (hubs, broker, ingest, rules) per 1 000 readings. Plot: [{svg_name}]({svg_name}).\n\n![latency against load]({svg_name})\n"
    );

    let _ = writeln!(
        r,
        "## Ingest rate against the bare broker and the bare database\n"
    );
    let _ = writeln!(
        r,
        "`rpm bench ingest`: {} readings in messages of 200, {} patients; the bare subscriber \
         and the raw inserts (plain tables, and tables with the record's indexes) are \
         measured in the same run, just before ingest (see `src/bench_ingest.rs`). Targets (issue 6): ingest ≥ 0.8 × subscriber, ≥ 0.5 × raw \
         insert, ≥ 20 000 readings/s.\n",
        plan.ingest_readings, plan.sweep_patients
    );
    let _ = writeln!(
        r,
        "| set | database | bare subscriber (readings/s) | raw insert (readings/s) | raw insert, record's indexes (readings/s) | ingest (readings/s) | ingest / subscriber | ingest / raw insert | ingest / raw insert with the record's indexes |"
    );
    let _ = writeln!(r, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, db, runs) in &ingest_rows {
        let pick =
            |f: fn(&crate::bench_ingest::Rates) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let ratios = |f: fn(&crate::bench_ingest::Rates) -> f64| {
            with_runs(
                &runs.iter().map(|x| x.ingest / f(x)).collect::<Vec<_>>(),
                fraction,
            )
        };
        let _ = writeln!(
            r,
            "| {label} | {db} | {} | {} | {} | {} | {} | {} | {} |",
            with_runs(&pick(|r| r.bare_subscriber), rate),
            with_runs(&pick(|r| r.raw_insert), rate),
            with_runs(&pick(|r| r.raw_insert_indexed), rate),
            with_runs(&pick(|r| r.ingest), rate),
            ratios(|r| r.bare_subscriber),
            ratios(|r| r.raw_insert),
            ratios(|r| r.raw_insert_indexed),
        );
    }

    let _ = writeln!(r, "\n## Rules engine\n");
    let _ = writeln!(
        r,
        "`rpm bench rules --patients {} --readings {}{}`: one core, patients in random order; \
         the baselines are the bench's own harness (the same readings generated, one \
         comparison each) and the cost of reading the clock. Wall-clock time (on a shared \
         machine it includes waiting for a core).\n",
        plan.rules_patients,
        plan.rules_readings,
        if opts.quick { " --quick" } else { "" }
    );
    let pick = |f: fn(&RulesFigures) -> f64| rules_runs.iter().map(f).collect::<Vec<f64>>();
    let ns = |v: f64| format!("{v:.1}");
    let _ = writeln!(
        r,
        "| run | ns/reading | readings/s | baseline ns/reading | engine / baseline |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|");
    let _ = writeln!(
        r,
        "| one at a time (`Engine::evaluate`) | {} | {} | {} | {} |",
        with_runs(&pick(|f| f.engine_ns), ns),
        rate(1e9 / median(pick(|f| f.engine_ns))),
        with_runs(&pick(|f| f.harness_ns), ns),
        ratio(
            median(pick(|f| f.engine_ns)),
            median(pick(|f| f.harness_ns))
        )
    );
    let _ = writeln!(
        r,
        "| batches of 64 (`Engine::evaluate_batch`) | {} | {} | {} | {} |",
        with_runs(&pick(|f| f.batch_ns), ns),
        rate(1e9 / median(pick(|f| f.batch_ns))),
        with_runs(&pick(|f| f.batch_harness_ns), ns),
        ratio(
            median(pick(|f| f.batch_ns)),
            median(pick(|f| f.batch_harness_ns))
        )
    );
    let _ = writeln!(r, "\n| latency per reading (ns) | p50 | p99 | p99.9 |");
    let _ = writeln!(r, "|---|---:|---:|---:|");
    for (name, f) in [
        (
            "baseline: clock read alone",
            (|f: &RulesFigures| f.clock) as fn(&RulesFigures) -> [f64; 3],
        ),
        ("single reading (incl. clock)", |f: &RulesFigures| f.single),
        ("batch of 64, per reading", |f: &RulesFigures| f.batched),
    ] {
        let col = |i: usize| median(rules_runs.iter().map(|x| f(x)[i]).collect());
        let _ = writeln!(
            r,
            "| {name} | {:.0} | {:.0} | {:.0} |",
            col(0),
            col(1),
            col(2)
        );
    }

    let _ = writeln!(r, "\n## Gateway memory and CPU\n");
    let _ = writeln!(
        r,
        "`rpm bench gateway --readings {} --patients {}` in a child process against the embedded \
         broker: the forwarder drains a full durable queue; the baseline is a bare publisher \
         sending the same envelopes, run after the memory and CPU figures are read. CPU and \
         RSS are the child process's while it forwards, when it holds only the forwarder, its \
         SQLite queue, the tokio runtime and a small counting subscriber on its own thread (the \
         readings are generated and queued 1 000 at a time); the peak is VmHWM reset just \
         before forwarding starts (\"unavailable\" where it cannot be reset).\n",
        plan.gateway_readings, plan.sweep_patients
    );
    let gpick = |k: &str| gateway_runs.iter().map(|g| num(g, k)).collect::<Vec<f64>>();
    let _ = writeln!(r, "| figure | value |\n|---|---:|");
    let _ = writeln!(
        r,
        "| baseline: bare publisher (readings/s) | {} |",
        with_runs(&gpick("bare_publisher"), rate)
    );
    let _ = writeln!(
        r,
        "| forwarded from the full queue (readings/s) | {} |",
        with_runs(&gpick("forwarded"), rate)
    );
    let _ = writeln!(
        r,
        "| forwarded / bare publisher | {} |",
        with_runs(
            &gateway_runs
                .iter()
                .map(|g| num(g, "forwarded") / num(g, "bare_publisher"))
                .collect::<Vec<_>>(),
            fraction
        )
    );
    let _ = writeln!(
        r,
        "| queue fill, 1 000 per commit (readings/s) | {} |",
        with_runs(&gpick("queue_fill"), rate)
    );
    let _ = writeln!(
        r,
        "| CPU per 1 000 readings while forwarding, whole process (ms) | {} |",
        with_runs(&gpick("cpu_ms_per_1000"), one_decimal)
    );
    let _ = writeln!(
        r,
        "| of it the counting subscriber (ms) | {} |",
        with_runs(&gpick("subscriber_cpu_ms_per_1000"), one_decimal)
    );
    let _ = writeln!(
        r,
        "| RSS at the start of forwarding (MB) | {} |",
        with_runs(&gpick("forwarding_rss_start_mb"), one_decimal)
    );
    let _ = writeln!(
        r,
        "| peak RSS while forwarding (MB) | {} |",
        with_runs(&gpick("forwarding_rss_peak_mb"), one_decimal)
    );

    let _ = writeln!(
        r,
        "\n## Growth from {} to {} patients\n",
        plan.scale.first().copied().unwrap_or(0),
        plan.scale.last().copied().unwrap_or(0)
    );
    let _ = writeln!(
        r,
        "One run per size. End-to-end: {} readings/s for {} s on {} hubs, as above. Ingest: \
         {} readings, rules on. Rules: {} readings (`--quick` histories). Gateway: {} readings \
         spread over that many patients' devices. Memory of the end-to-end run is this whole \
         process (broker, hubs, ingest with the rules state, notifier directory), which by \
         then also holds the embedded broker's logs of the earlier parts (rumqttd keeps up to \
         8 × 16 MB a filter): compare sizes, not absolute values.\n",
        rate(plan.scale_load),
        plan.scale_step.as_secs(),
        plan.hubs,
        plan.ingest_scale_readings,
        plan.rules_scale_readings,
        plan.gateway_scale_readings
    );
    let _ = writeln!(
        r,
        "| patients | set-up (s) | e2e p50 (ms) | e2e p99 (ms) | e2e p99.9 (ms) | bare broker p99.9 (ms) | RSS ready / end (MB) | ingest (readings/s) | ingest / subscriber | ingest / raw insert | rules ns/reading | rules / harness | gateway readings/s | gateway / bare publisher | gateway CPU ms / 1 000 | gateway peak RSS forwarding (MB) |"
    );
    let _ = writeln!(
        r,
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (n, e, i, ru, g) in &scaling {
        let s = e.steps.first().cloned().unwrap_or_else(|| e2e::StepResult {
            offered: 0.0,
            achieved: 0.0,
            latency: Percentiles::default(),
            alerts: Percentiles::default(),
            broker: Percentiles::default(),
            cpu_ms_per_1000: f64::NAN,
        });
        let sq = i.first();
        let _ = writeln!(
            r,
            "| {n} | {:.1} | {} | {} | {} | {} | {:.0} / {:.0} | {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} |",
            e.setup_s,
            ms(s.latency.p50_ms),
            ms(s.latency.p99_ms),
            ms(s.latency.p999_ms),
            ms(s.broker.p999_ms),
            e.rss_ready_mb,
            e.rss_end_mb,
            sq.map_or("—".into(), |x| rate(x.ingest)),
            sq.map_or("—".into(), |x| ratio(x.ingest, x.bare_subscriber)),
            sq.map_or("—".into(), |x| ratio(x.ingest, x.raw_insert)),
            ru.engine_ns,
            ratio(ru.engine_ns, ru.harness_ns),
            rate(num(g, "forwarded")),
            ratio(num(g, "forwarded"), num(g, "bare_publisher")),
            num(g, "cpu_ms_per_1000"),
            one_decimal(num(g, "forwarding_rss_peak_mb")),
        );
    }
    let _ = writeln!(r, "\nFigures as JSON: [figures.json](figures.json).");

    std::fs::write(&opts.out, &r)
        .with_context(|| format!("cannot write {}", opts.out.display()))?;
    let json_path = out_dir.join("figures.json");
    std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&serde_json::Value::Object(json))?,
    )
    .with_context(|| format!("cannot write {}", json_path.display()))?;
    say("done");
    Ok(opts.out.clone())
}
