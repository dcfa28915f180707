//! `rpm`: the one binary of the remote patient monitoring system. Each part of the system is a
//! subcommand; `rpm --help` lists what this build can do.

#[cfg(feature = "demo")]
mod bench_all;
mod bench_gateway;
mod bench_ingest;
mod bench_rules;
mod config;
#[cfg(feature = "demo")]
mod demo;
mod logging;
mod registry_cli;
mod rules_cli;
mod serve;
mod users_cli;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Component;
use crate::logging::LogFormat;

/// mimalloc, not the system's malloc, for its arenas on transparent huge pages (it asks with
/// `madvise`; glibc's malloc does not). The rules engine's state for 100 000 patients is
/// hundreds of thousands of small boxes; on 4 KiB pages a reading's few boxes are a TLB miss
/// apiece (BENCHMARKS.md, "Rules: the allocator": with mimalloc's huge pages turned off, it is
/// no faster than glibc's malloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Remote patient monitoring: home-hub gateway, ingest, rules engine and notifier.
#[derive(Debug, Parser)]
#[command(name = "rpm", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log line format (logs go to standard error; filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "RPM_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system in one process on embedded defaults: an embedded MQTT broker,
    /// SQLite, simulated home patients through the real gateway pipeline, ingest, rules, the
    /// notifier (mail caught in the data directory) and the HTTP API on localhost.
    ///
    /// The simulated days are played in accelerated time so that they end now: the virtual
    /// clock starts as many days ago as the longest scenario lasts and catches up with the
    /// wall clock at the end of the playback. No reading is stamped in the future, so ingest's
    /// clock-sanity check runs unchanged. With --duration it stops by itself and prints a
    /// summary; otherwise it runs until Ctrl-C.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Decode one GATT characteristic value to JSON, for device debugging.
    ///
    /// Example: `rpm decode 2a35 "1e 78 00 50 00 5d 00"`. Exits 1 with the reason when the
    /// value is malformed. Segmented characteristics (Blood Pressure Record `2b36`, the
    /// Generic Health Sensor's `2b8b` live and `2bdd` stored observations) decode when the
    /// value holds the whole record in one segment.
    Decode {
        /// The 16-bit characteristic UUID: `2a35`, `2A35` or `0x2a35`.
        characteristic: String,
        /// The value as hex; spaces, `:` and `-` between bytes are allowed, and it may be given
        /// as several arguments.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        hex: Vec<String>,
    },
    /// Check, show or print sample configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Validate an MQTT readings payload (wire envelope v1) and say exactly what is wrong.
    #[command(subcommand)]
    Envelope(EnvelopeCommand),
    /// The home hub: BLE devices (through BlueZ, or simulated with `--simulate`) → durable
    /// queue → MQTT (runs until Ctrl-C or SIGTERM).
    Gateway {
        /// The gateway configuration file (see `rpm config sample gateway`).
        #[arg(long)]
        config: PathBuf,
        /// Play a clinical scenario on simulated devices that speak the real GATT bytes: a
        /// shipped name (copd_stable, copd_exacerbation, hypertensive_crisis, hypotension,
        /// measurement_faults, clock_faults, week_away) or a scenario file.
        #[arg(long)]
        simulate: Option<String>,
        /// Exit once the scenario has played and every reading was acknowledged by the broker.
        #[arg(long)]
        exit_when_drained: bool,
    },
    /// The server: consume readings from the broker, validate them and store them in the
    /// patient record (runs until Ctrl-C or SIGTERM).
    Ingest {
        /// The ingest configuration file (see `rpm config sample ingest`).
        #[arg(long)]
        config: PathBuf,
    },
    /// Threshold profiles: check them, and backtest them against recorded readings.
    #[command(subcommand)]
    Rules(rules_cli::RulesCommand),
    /// Enrol and list patients in the record.
    Patients {
        /// The patient record (`sqlite:path` or `postgres://…`).
        #[arg(long, env = "RPM_DATABASE_URL")]
        database: String,
        #[command(subcommand)]
        command: registry_cli::PatientsCmd,
    },
    /// Register and list home hubs (gateways) in the record.
    Gateways {
        /// The patient record (`sqlite:path` or `postgres://…`).
        #[arg(long, env = "RPM_DATABASE_URL")]
        database: String,
        #[command(subcommand)]
        command: registry_cli::GatewaysCmd,
    },
    /// Register devices and bind them to a patient on a gateway.
    Devices {
        /// The patient record (`sqlite:path` or `postgres://…`).
        #[arg(long, env = "RPM_DATABASE_URL")]
        database: String,
        #[command(subcommand)]
        command: registry_cli::DevicesCmd,
    },
    /// Console users (nurse, clinician, admin) and their API tokens.
    Users {
        /// The patient record (`sqlite:path` or `postgres://…`).
        #[arg(long, env = "RPM_DATABASE_URL")]
        database: String,
        #[command(subcommand)]
        command: users_cli::UsersCmd,
    },
    /// Benchmarks, each printed beside its same-run baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Every benchmark in one run on embedded defaults (the embedded broker on a free port,
    /// SQLite in a temporary directory): end-to-end latency from device notification to
    /// notification enqueued at several loads, ingest against the bare broker and database,
    /// the rules engine, the gateway's CPU and memory, and each from 100 to 100 000 patients.
    /// Writes a Markdown report with each figure beside its same-run baseline, an SVG plot of
    /// latency against load and the figures as JSON. The full run takes about 15 minutes.
    #[cfg(feature = "demo")]
    All {
        /// A small run (about a minute), for tests and a first look.
        #[arg(long)]
        quick: bool,
        /// The report; `latency-vs-load.svg` and `figures.json` are written beside it.
        #[arg(long, default_value = "target/bench-report/REPORT.md")]
        out: PathBuf,
        /// Also measure ingest through this broker (e.g. a local Mosquitto).
        #[arg(long)]
        broker: Option<String>,
        /// Also measure ingest on this PostgreSQL database (a scratch one: the bench
        /// registers a synthetic fleet and inserts readings).
        #[arg(long)]
        postgres: Option<String>,
    },
    /// The home hub: readings forwarded per second from a full durable queue, CPU time per
    /// 1 000 readings and resident memory, beside a bare publisher's rate to the same broker.
    Gateway {
        /// The broker to publish to.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Readings queued before forwarding starts.
        #[arg(long, default_value_t = 100_000)]
        readings: usize,
        /// Readings per MQTT message.
        #[arg(long, default_value_t = 200)]
        batch: usize,
        /// Patients (one pulse oximeter each) the readings are spread over.
        #[arg(long, default_value_t = 50)]
        patients: usize,
        /// Print the figures as JSON instead of the Markdown table.
        #[arg(long)]
        json: bool,
    },
    /// Ingest's sustained rate with durability on, beside the bare broker subscriber rate and
    /// the raw bulk-insert rate of the same database, measured in the same run.
    Ingest {
        /// The broker to publish through.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Also measure on this PostgreSQL database (a scratch one: the bench registers a
        /// synthetic fleet and inserts readings).
        #[arg(long)]
        postgres: Option<String>,
        /// Readings per run.
        #[arg(long, default_value_t = 100_000)]
        readings: usize,
        /// Readings per MQTT message (a live hub sends one or a few; a hub back from a week
        /// offline sends full messages).
        #[arg(long, alias = "per-message", default_value_t = 200)]
        batch: usize,
        /// Patients in the synthetic fleet.
        #[arg(long, default_value_t = 200)]
        patients: usize,
        /// Evaluate every new reading with the threshold profiles in `--profiles`, in the
        /// batch transaction, as `rpm ingest` does.
        #[arg(long)]
        rules: bool,
        /// The threshold profiles for `--rules`.
        #[arg(long, default_value = "fixtures/profiles")]
        profiles: std::path::PathBuf,
    },
    /// The rules engine: throughput and per-reading latency with many patients, and the cost
    /// per reading as one patient's history grows.
    Rules {
        /// Patients enrolled.
        #[arg(long, default_value_t = 100_000)]
        patients: usize,
        /// Readings evaluated in the throughput run.
        #[arg(long, default_value_t = 5_000_000)]
        readings: usize,
        /// Smaller histories (1k/10k/100k instead of 1k/100k/1M), for a quick look.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load FILE (with RPM_<COMPONENT>__* environment overrides), validate it and print the
    /// effective configuration as TOML. Exits 1 naming the file, key and problem when bad.
    Check {
        /// Which component the file configures.
        #[arg(value_enum)]
        component: Component,
        /// The TOML file.
        file: PathBuf,
    },
    /// Print the documented sample configuration of a component.
    Sample {
        /// Which component.
        #[arg(value_enum)]
        component: Component,
    },
}

#[derive(Debug, Subcommand)]
enum EnvelopeCommand {
    /// Decode and validate a payload from FILE (or standard input with `-`); prints a JSON
    /// summary, or the rejection reason and exits 1.
    Check {
        /// The payload file, or `-`.
        file: PathBuf,
        /// The MQTT topic it arrived on; checks the topic names the envelope's gateway.
        #[arg(long)]
        topic: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo draws a progress display: only warnings and errors in between by default.
    #[cfg(feature = "demo")]
    let default_filter = if matches!(
        cli.command,
        Command::Demo(_) | Command::Bench(BenchCommand::All { .. })
    ) {
        // rumqttd logs every client that goes away as an error; the demo reports its own.
        "warn,rumqttd=off"
    } else {
        "info"
    };
    #[cfg(not(feature = "demo"))]
    let default_filter = "info";
    logging::init(cli.log_format, default_filter);
    // rumqttc, reqwest and lettre bring rustls with aws-lc-rs, sqlx and rumqttd with ring:
    // name the process-wide provider once so nothing has to guess (DEPENDENCIES.md).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            runtime()?.block_on(demo::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Decode {
            characteristic,
            hex,
        } => decode(&characteristic, &hex.join(" ")),
        Command::Rules(command) => rules_cli::run(command),
        Command::Gateway {
            config,
            simulate,
            exit_when_drained,
        } => {
            let config =
                config::load::<gateway::config::GatewayConfig>(Component::Gateway, &config, |c| {
                    c.check()
                })?;
            let devices = match simulate {
                None => serve::Devices::Bluetooth,
                Some(name) => serve::Devices::Simulate(Box::new(
                    match simulators::scenario::Scenario::builtin(&name) {
                        Some(s) => s?,
                        None => simulators::scenario::Scenario::load(&name).with_context(|| {
                            let names: Vec<&str> =
                                simulators::scenario::Scenario::builtin_names().collect();
                            format!(
                                "`{name}` is neither a shipped scenario ({}) nor a readable file",
                                names.join(", ")
                            )
                        })?,
                    },
                )),
            };
            runtime()?.block_on(serve::gateway(config, devices, exit_when_drained))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest { config } => {
            let config =
                config::load::<ingest::config::IngestConfig>(Component::Ingest, &config, |c| {
                    c.check()
                })?;
            runtime()?.block_on(serve::ingest(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Patients { database, command } => {
            runtime()?.block_on(registry_cli::run_patients(&database, command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateways { database, command } => {
            runtime()?.block_on(registry_cli::run_gateways(&database, command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices { database, command } => {
            runtime()?.block_on(registry_cli::run_devices(&database, command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Users { database, command } => {
            runtime()?.block_on(users_cli::run(&database, command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Gateway {
            broker,
            readings,
            batch,
            patients,
            json,
        }) => {
            let opts = bench_gateway::Options {
                broker,
                readings,
                batch,
                patients,
            };
            let figures = runtime()?.block_on(bench_gateway::measure(&opts))?;
            if json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                print!("{}", bench_gateway::render(&opts, &figures));
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Command::Bench(BenchCommand::All {
            quick,
            out,
            broker,
            postgres,
        }) => {
            let opts = bench_all::Options {
                quick,
                out,
                broker,
                postgres,
                command: std::iter::once("rpm".to_owned())
                    .chain(std::env::args().skip(1))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let report = runtime()?.block_on(bench_all::run(&opts))?;
            println!("report: {}", report.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Ingest {
            broker,
            postgres,
            readings,
            batch,
            patients,
            rules,
            profiles,
        }) => {
            let opts = bench_ingest::Options {
                broker,
                postgres,
                readings,
                batch,
                patients,
                rules: rules.then(|| ingest::config::RulesConfig {
                    profiles_dir: profiles,
                    ..Default::default()
                }),
            };
            let report = runtime()?.block_on(bench_ingest::run(&opts))?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Rules {
            patients,
            readings,
            quick,
        }) => {
            let report = bench_rules::run(&bench_rules::Options {
                patients,
                readings,
                quick,
            })?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { component, file }) => {
            let effective = match component {
                Component::Gateway => toml::to_string(&config::load::<
                    gateway::config::GatewayConfig,
                >(
                    component, &file, |c| c.check()
                )?)?,
                Component::Ingest => toml::to_string(
                    &config::load::<ingest::config::IngestConfig>(component, &file, |c| c.check())?,
                )?,
            };
            tracing::info!(component = ?component, file = %file.display(), "configuration is valid");
            print!("{effective}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Sample { component }) => {
            print!("{}", component.sample());
            Ok(ExitCode::SUCCESS)
        }
        Command::Envelope(EnvelopeCommand::Check { file, topic }) => {
            let mut payload = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .take(vitals::MAX_PAYLOAD_BYTES as u64 + 1)
                    .read_to_end(&mut payload)?;
            } else {
                payload = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
            }
            let decoded = match &topic {
                Some(t) => vitals::Envelope::decode_from(t, &payload),
                None => vitals::Envelope::decode(&payload),
            };
            match decoded {
                Ok(e) => {
                    let summary = serde_json::json!({
                        "valid": true,
                        "gateway": e.gateway,
                        "seq": e.seq,
                        "readings": e.readings.len(),
                        "ids": e.readings.iter().map(|r| r.id).collect::<Vec<_>>(),
                    });
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    let rejection = serde_json::json!({ "valid": false, "reason": err.reason(), "error": err.to_string() });
                    println!("{}", serde_json::to_string_pretty(&rejection)?);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// The async runtime for subcommands that talk to a database or a broker.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn decode(characteristic: &str, hex: &str) -> anyhow::Result<ExitCode> {
    let uuid = gateway::codec::parse_characteristic(characteristic).with_context(|| {
        format!("`{characteristic}` is not a 16-bit characteristic UUID (like 2a35) or name")
    })?;
    if gateway::codec::characteristic_name(uuid).is_none() {
        let known: Vec<String> = gateway::codec::SUPPORTED
            .iter()
            .map(|(u, name)| format!("{u:04x} ({name})"))
            .collect();
        anyhow::bail!(
            "no decoder for characteristic 0x{uuid:04x}; known: {}",
            known.join(", ")
        );
    }
    let bytes = parse_hex(hex)?;
    match gateway::codec::decode(uuid, &bytes) {
        Ok(value) => {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "error: malformed {} value: {e}",
                gateway::codec::characteristic_name(uuid).unwrap_or("GATT")
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':' && *c != '-')
        .collect();
    let compact = compact.strip_prefix("0x").unwrap_or(&compact);
    if !compact.len().is_multiple_of(2) {
        anyhow::bail!("hex value has an odd number of digits ({})", compact.len());
    }
    (0..compact.len())
        .step_by(2)
        .map(|i| {
            let pair = compact.get(i..i + 2).unwrap_or_default();
            u8::from_str_radix(pair, 16).with_context(|| format!("`{pair}` is not a hex byte"))
        })
        .collect()
}
