//! `rpm users`: console staff from the command line — create a user (the password from a
//! prompt, or from standard input with `--password-stdin`), list, disable, and issue or
//! revoke API tokens. Every change is in the audit log as `cli:$USER`.
//!
//! A token is printed once, on standard output, and stored only as its SHA-256.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::Context as _;
use ingest::record::{Audit, Record, Role};
use serde_json::json;

/// `rpm users …`.
#[derive(Debug, clap::Subcommand)]
pub enum UsersCmd {
    /// Create a console user. The password is asked for (twice), or read from standard input.
    Add {
        /// Sign-in name (`a-z 0-9 . _ -`).
        name: String,
        /// nurse (read, acknowledge), clinician (+ thresholds) or admin (+ users, registry).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users and their tokens (never a password or a token).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: no more sign-ins; their sessions end and their tokens stop working.
    Disable {
        /// The user.
        name: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "disabled with the rpm CLI")]
        reason: String,
    },
    /// Issue an API token for a user (printed once).
    Token {
        /// The user.
        name: String,
        /// The token's name, unique per user (`lab-integration`).
        #[arg(long)]
        label: String,
        /// A lower role than the user's (default: the user's).
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
    },
    /// Revoke a user's API token.
    Revoke {
        /// The user.
        name: String,
        /// The token's label.
        #[arg(long)]
        label: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse::<Role>().map_err(|e| e.to_string())
}

fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

/// Reads one line from standard input, without echo when it is a terminal.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("{prompt}");
        std::io::stderr().flush().ok();
        let _ = std::process::Command::new("stty").arg("-echo").status();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if tty {
        let _ = std::process::Command::new("stty").arg("echo").status();
        eprintln!();
    }
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Runs `rpm users …` against the record at `db_url`.
pub async fn run(db_url: &str, cmd: UsersCmd) -> anyhow::Result<()> {
    let record = Record::connect(db_url, 2)
        .await
        .with_context(|| "cannot open the patient record".to_string())?;
    let who = actor();
    let result = run_on(&record, &who, cmd).await;
    record.close().await;
    result
}

async fn run_on(record: &Record, who: &str, cmd: UsersCmd) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::Add {
            name,
            role,
            password_stdin,
        } => {
            let password = if password_stdin {
                read_secret("")?
            } else {
                let first = read_secret(&format!("Password for {name}: "))?;
                let again = read_secret("Again: ")?;
                anyhow::ensure!(first == again, "the passwords differ; nothing was changed");
                first
            };
            let audit = Audit {
                who,
                why: "created with the rpm CLI",
            };
            let user = record.create_user(&name, role, &password, &audit).await?;
            println!("user {} created ({})", user.username, user.role);
        }
        UsersCmd::List { json } => {
            let users = record.list_users().await?;
            let tokens = record.list_tokens().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "users": users, "tokens": tokens }))?
                );
            } else {
                println!("{:<24} {:<10} {:<8} TOKENS", "USER", "ROLE", "STATE");
                for u in users {
                    let labels: Vec<String> = tokens
                        .iter()
                        .filter(|t| t.username == u.username && t.revoked_at.is_none())
                        .map(|t| format!("{} ({})", t.label, t.role))
                        .collect();
                    println!(
                        "{:<24} {:<10} {:<8} {}",
                        u.username,
                        u.role.as_str(),
                        if u.disabled_at.is_some() {
                            "disabled"
                        } else {
                            "active"
                        },
                        labels.join(", ")
                    );
                }
            }
        }
        UsersCmd::Disable { name, reason } => {
            let audit = Audit { who, why: &reason };
            record.disable_user(&name, &audit).await?;
            println!("user {name} disabled");
        }
        UsersCmd::Token { name, label, role } => {
            let audit = Audit {
                who,
                why: "issued with the rpm CLI",
            };
            let (token, meta) = record.create_token(&name, &label, role, &audit).await?;
            eprintln!(
                "token `{}` for {} ({}); it is shown once — store it now:",
                meta.label, meta.username, meta.role
            );
            println!("{token}");
        }
        UsersCmd::Revoke { name, label } => {
            let audit = Audit {
                who,
                why: "revoked with the rpm CLI",
            };
            record.revoke_token(&name, &label, &audit).await?;
            println!("token `{label}` of {name} revoked");
        }
    }
    Ok(())
}
