//! `rpm users` as a process, on SQLite and a real PostgreSQL: a user created from standard
//! input signs in with that password, a token printed once authenticates until revoked, a
//! disabled user cannot sign in, nothing secret is listed, bad input is refused with the
//! reason and changes nothing, and every change is audited as `cli:$USER`.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ingest::record::{LoginRefused, Record, Role};
use testkit::{PgDatabase, unavailable};

const PASSWORD: &str = "correct horse battery staple";

fn rpm(database: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpm"))
        .arg("users")
        .args(args)
        .env("RPM_DATABASE_URL", database)
        .env("USER", "ops.tester")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rpm runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("rpm finishes")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(database: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = rpm(database, args, stdin);
    assert!(
        out.status.success(),
        "rpm users {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn refused(database: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = rpm(database, args, stdin);
    assert!(!out.status.success(), "rpm users {args:?} should fail");
    text(&out.stderr)
}

async fn users_from_the_command_line(database: &str) {
    let out = ok(
        database,
        &["add", "nurse.kim", "--role", "nurse", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.contains("user nurse.kim created (nurse)"), "{out}");
    ok(
        database,
        &["add", "dr.ade", "--role", "clinician", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );

    // Refused, with the reason, changing nothing.
    let why = refused(
        database,
        &["add", "nurse.kim", "--role", "admin", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(why.contains("nurse.kim"), "a taken name: {why}");
    let why = refused(
        database,
        &["add", "nurse.lou", "--role", "nurse", "--password-stdin"],
        Some("short\n"),
    );
    assert!(why.contains("password"), "a short password: {why}");
    let why = refused(
        database,
        &["add", "nurse.lou", "--role", "matron", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(why.contains("matron"), "an unknown role: {why}");
    let why = refused(
        database,
        &["add", "Bad Name!", "--role", "nurse", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(
        why.to_lowercase().contains("name"),
        "a malformed name: {why}"
    );

    // A token, printed once on standard output.
    let out = rpm(
        database,
        &["token", "dr.ade", "--label", "lab-feed", "--role", "nurse"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert!(token.len() >= 32, "a long random token: {token}");
    assert!(text(&out.stderr).contains("shown once"));

    let listed = ok(database, &["list", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&listed).expect("JSON list");
    let names: Vec<&str> = v["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, ["dr.ade", "nurse.kim"], "{listed}");
    assert_eq!(v["tokens"][0]["label"], "lab-feed");
    assert_eq!(
        v["tokens"][0]["role"], "nurse",
        "capped below the owner's role"
    );
    assert!(!listed.contains(&token), "the token is never listed");
    assert!(!listed.contains("argon2"), "no password hash is listed");
    assert!(!listed.contains(PASSWORD));
    let table = ok(database, &["list"], None);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("dr.ade") && l.contains("lab-feed (nurse)")),
        "{table}"
    );

    // What the CLI wrote works where the console checks it.
    let record = Record::connect(database, 2).await.expect("record");
    let signed_in = record
        .login("nurse.kim", PASSWORD, Duration::from_secs(3600))
        .await
        .expect("login");
    assert!(signed_in.is_ok(), "the password from stdin signs in");
    let p = record
        .token_principal(&token)
        .await
        .expect("lookup")
        .expect("the printed token authenticates");
    assert_eq!(p.username, "dr.ade");
    assert_eq!(p.role, Role::Nurse);

    ok(database, &["revoke", "dr.ade", "--label", "lab-feed"], None);
    assert!(
        record
            .token_principal(&token)
            .await
            .expect("lookup")
            .is_none(),
        "a revoked token stops working"
    );
    let out = ok(
        database,
        &["disable", "nurse.kim", "--reason", "left the team"],
        None,
    );
    assert!(out.contains("nurse.kim disabled"), "{out}");
    let refused_login = record
        .login("nurse.kim", PASSWORD, Duration::from_secs(3600))
        .await
        .expect("login");
    assert!(
        matches!(refused_login, Err(LoginRefused::Disabled)),
        "a disabled user cannot sign in"
    );
    let why = refused(database, &["disable", "nobody.here"], None);
    assert!(why.contains("nobody.here"), "{why}");

    let audit = record
        .audit_log(Some("user:nurse.kim"), 20)
        .await
        .expect("audit");
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.actor.as_str(), a.action.as_str()))
        .collect();
    assert!(
        actions
            .iter()
            .any(|(who, what)| *who == "cli:ops.tester" && what.starts_with("user.create")),
        "{actions:?}"
    );
    assert!(
        audit
            .iter()
            .any(|a| a.actor == "cli:ops.tester" && a.reason == "left the team"),
        "{audit:?}"
    );
    record.close().await;
}

#[tokio::test]
async fn users_cli_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("record.db").display());
    users_from_the_command_line(&url).await;
}

#[tokio::test]
async fn users_cli_on_postgresql() {
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    users_from_the_command_line(db.url()).await;
}
