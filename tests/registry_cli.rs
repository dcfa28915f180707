//! `rpm patients`, `rpm gateways`, `rpm devices` against SQLite and a real PostgreSQL.

use std::process::{Command, Output};

use testkit::{PgDatabase, unavailable};

fn rpm(database: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rpm"))
        .args(args)
        .env("RPM_DATABASE_URL", database)
        .env_remove("RUST_LOG")
        .output()
        .expect("rpm runs")
}

fn ok(database: &str, args: &[&str]) -> String {
    let out = rpm(database, args);
    assert!(
        out.status.success(),
        "rpm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn enrol_bind_and_list(database: &str) {
    ok(
        database,
        &[
            "patients",
            "add",
            "pk-7f3a",
            "--name",
            "Ada Example",
            "--condition",
            "copd",
        ],
    );
    ok(database, &["gateways", "add", "gw-0001"]);
    ok(
        database,
        &[
            "devices",
            "add",
            "bdaddr:c4:7c:8d:6a:11:22",
            "--model",
            "BP7000",
        ],
    );
    ok(
        database,
        &[
            "devices",
            "bind",
            "bdaddr:c4:7c:8d:6a:11:22",
            "--gateway",
            "gw-0001",
            "--patient",
            "pk-7f3a",
            "--user",
            "1",
        ],
    );

    let list = ok(database, &["patients", "list"]);
    assert!(list.contains("pk-7f3a") && list.contains("copd"), "{list}");
    assert!(!list.contains("Ada"), "lists never show names: {list}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(database, &["patients", "list", "--json"])).expect("JSON");
    assert!(json.to_string().contains("pk-7f3a"));
    assert!(
        !json.to_string().contains("Ada"),
        "JSON lists never show names either"
    );
    let shown = ok(database, &["patients", "show", "pk-7f3a", "--show-name"]);
    assert!(shown.contains("Ada Example"), "{shown}");

    let devices = ok(database, &["devices", "list"]);
    assert!(
        devices.contains("gw-0001") && devices.contains("pk-7f3a"),
        "{devices}"
    );

    // Bad input is refused with a reason, and nothing half-done is left.
    let dup = rpm(
        database,
        &["patients", "add", "pk-7f3a", "--condition", "copd"],
    );
    assert!(!dup.status.success());
    let bad = rpm(
        database,
        &[
            "devices",
            "bind",
            "bdaddr:c4:7c:8d:6a:11:22",
            "--gateway",
            "gw-9",
            "--patient",
            "pk-7f3a",
        ],
    );
    assert!(
        !bad.status.success(),
        "binding on an unknown gateway is refused"
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("gw-9"), "{stderr}");
    assert!(!stderr.contains("Ada"), "no names in errors");
}

#[test]
fn registry_commands_work_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("record.db").display());
    enrol_bind_and_list(&url);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_commands_work_on_postgresql() {
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    let url = db.url().to_owned();
    tokio::task::spawn_blocking(move || enrol_bind_and_list(&url))
        .await
        .expect("joined");
}
