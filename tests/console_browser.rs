//! The console in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver, the `fantoccini` crate) against a real `rpm ingest` fed by a simulated COPD
//! exacerbation (simulated devices → `rpm gateway` → Mosquitto → `rpm ingest` with rules and
//! the notifier on PostgreSQL, mail to aiosmtpd).
//!
//! A nurse signs in, finds the alert in the inbox, opens the patient's chart, acknowledges
//! with a note and finds it in the audit log; she gets no threshold form, and her POST to the
//! thresholds is refused by the server. A clinician signs in, edits a threshold, sees the
//! preview's numbers and saves it with a reason. Screenshots at 1280 px and 390 px are saved
//! under `target/console-screenshots/`, and at 390 px no page is wider than the screen.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`scripts/services` installs them):
//! under `CI=true` a missing browser fails the test; elsewhere it is skipped with a message.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use ingest::record::{Audit, InboxQuery, NewPatient, Record, Role};
use simulators::scenario::Scenario;
use testkit::{Mosquitto, PgDatabase, RpmProcess, SmtpSink, unavailable};
use vitals::{GatewayId, PatientKey};

const BIN: &str = env!("CARGO_BIN_EXE_rpm");
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "console browser test",
};
/// A name only signed-in staff may see.
const PATIENT_NAME: &str = "Ada Testpatient";
const NURSE: (&str, &str) = ("nurse.ng", "nurse-password-42");
const CLINICIAN: (&str, &str) = ("dr.okafor", "clinician-password-42");

/// A chromedriver on a free port, killed on drop.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    fn start() -> Result<Self, String> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).exists() {
                return Err(format!(
                    "{bin} is missing (Debian packages chromium and chromium-driver; scripts/services installs them)"
                ));
            }
        }
        let port = testkit::free_port().map_err(|e| e.to_string())?;
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {CHROMEDRIVER}: {e}"))?;
        if let Err(e) = testkit::wait_for_port(port, Duration::from_secs(20)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("chromedriver did not listen: {e}"));
        }
        Ok(Chromedriver { child, port })
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--hide-scrollbars", "--lang=en-GB"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session through chromedriver")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// Saves the page (scrolled to `focus`, when given) at 1280 px and 390 px wide (as `{name}-1280.png` and `{name}-390.png`) and
/// checks that at 390 px nothing makes the page wider than the screen.
async fn screenshots(c: &Client, name: &str, focus: Option<&str>) {
    for (w, h) in [(1280u32, 1000u32), (390, 844)] {
        c.set_window_size(w, h).await.expect("resize");
        // Let layout settle after the resize.
        tokio::time::sleep(Duration::from_millis(150)).await;
        if let Some(css) = focus {
            c.execute(
                "const e = document.querySelector(arguments[0]); if (e) e.scrollIntoView();",
                vec![serde_json::json!(css)],
            )
            .await
            .expect("scroll");
        }
        let png = c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(screenshots_dir().join(format!("{name}-{w}.png")), png).expect("save");
        if w == 390 {
            let widths = c
                .execute(
                    "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];",
                    vec![],
                )
                .await
                .expect("widths");
            let (scroll, client) = (widths[0].as_i64(), widths[1].as_i64());
            assert!(
                scroll <= client,
                "{name}: at 390 px the page is {scroll:?} px wide for a {client:?} px screen (tables may scroll inside their box, the page must not)"
            );
        }
    }
    c.set_window_size(1280, 1000).await.expect("resize back");
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.expect("text"),
        Err(e) => {
            let page = match c.find(Locator::Css("main")).await {
                Ok(m) => m.text().await.unwrap_or_default(),
                Err(_) => c.source().await.unwrap_or_default(),
            };
            panic!("{css}: {e}\non a page saying:\n{page}")
        }
    }
}

/// Waits (at most ten seconds) until the browser's URL satisfies `ok(path, query)` after a
/// click (a form post's navigation can still be under way when the click returns); the path
/// and query it ended at.
async fn wait_for(c: &Client, ok: impl Fn(&str, Option<&str>) -> bool) -> (String, Option<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = c.current_url().await.expect("url");
        if ok(now.path(), now.query()) || tokio::time::Instant::now() > deadline {
            return (now.path().to_owned(), now.query().map(str::to_owned));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_for`] a path.
async fn wait_path(c: &Client, path: &str) -> String {
    wait_for(c, |p, _| p == path).await.0
}

async fn sign_in(c: &Client, base: &str, (user, password): (&str, &str), next: &str) {
    c.goto(&format!("{base}{next}")).await.expect("open");
    let url = c.current_url().await.expect("url");
    assert_eq!(
        url.path(),
        "/login",
        "an unauthenticated page sends to the sign-in form"
    );
    let page = c.source().await.expect("source");
    assert!(
        !page.contains(PATIENT_NAME),
        "no patient name before signing in"
    );
    c.find(Locator::Id("username"))
        .await
        .expect("user name field")
        .send_keys(user)
        .await
        .expect("type");
    c.find(Locator::Id("password"))
        .await
        .expect("password field")
        .send_keys(password)
        .await
        .expect("type");
    c.find(Locator::Css("#sign-in button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    let at = wait_path(c, next).await;
    if at != next {
        let page = text(c, "main").await;
        panic!("signed in as {user}, expected {next}, at {at}: {page}");
    }
}

async fn sign_out(c: &Client) {
    c.find(Locator::Css("form.who button"))
        .await
        .expect("sign-out button")
        .click()
        .await
        .expect("sign out");
    assert_eq!(wait_path(c, "/login").await, "/login");
}

/// Registers the scenario's patient (with a display name), devices and bindings, and the two
/// staff users.
async fn register(record: &Record, scenario: &Scenario, gateway: &GatewayId) -> PatientKey {
    let key = PatientKey::new(scenario.patient.key.clone()).expect("valid key");
    record
        .create_patient(
            &NewPatient {
                key: key.clone(),
                display_name: Some(PATIENT_NAME.into()),
                condition: "copd".into(),
                profile_id: None,
                care_team: Some("copd".into()),
            },
            &AUDIT,
        )
        .await
        .expect("patient");
    support::register_devices(record, scenario, gateway, &key).await;
    record
        .create_user(NURSE.0, Role::Nurse, NURSE.1, &AUDIT)
        .await
        .expect("nurse");
    record
        .create_user(CLINICIAN.0, Role::Clinician, CLINICIAN.1, &AUDIT)
        .await
        .expect("clinician");
    key
}

fn write(dir: &Path, name: &str, text: String) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf8").to_owned()
}

/// "This change would have raised N alerts in the last 30 days instead of M." → (N, M).
fn preview_numbers(text: &str) -> (u32, u32) {
    let number = |s: Option<&str>| -> Option<u32> {
        s?.split_whitespace()
            .next()?
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    };
    let n = number(text.split("would have raised ").nth(1));
    let m = number(text.split("instead of ").nth(1));
    match (n, m) {
        (Some(n), Some(m)) => (n, m),
        _ => panic!("no preview sentence in {text:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nurse_and_clinician_work_an_exacerbation_in_the_console() {
    let Some(driver) = unavailable(Chromedriver::start()) else {
        return;
    };
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let Some(db) = unavailable(PgDatabase::create().await) else {
        return;
    };
    let Some(smtp) = unavailable(SmtpSink::start()) else {
        return;
    };
    let record = Record::connect(db.url(), 2).await.expect("record");
    let scenario = Scenario::builtin("copd_exacerbation")
        .expect("shipped")
        .expect("valid");
    let gateway = GatewayId::new("gw-console").expect("valid");
    let key = register(&record, &scenario, &gateway).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let ingest_cfg = write(
        dir.path(),
        "ingest.toml",
        format!(
            "[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"ingest-console\"\n[database]\nurl = \"{db}\"\n\
             [consumer]\nbatch_linger = \"10ms\"\n\
             [notifier.smtp]\nhost = \"127.0.0.1\"\nport = {smtp}\nsecurity = \"none\"\nfrom = \"RPM <alerts@clinic.example>\"\n\
             [notifier.links]\nconsole_url = \"http://127.0.0.1\"\nack_key = \"0123456789abcdef0123456789abcdef-test\"\n\
             [notifier.grouping]\ngroup_wait = \"1s\"\ngroup_interval = \"5m\"\nimmediate_from = \"emergency\"\n\
             patient_urgent_from = \"emergency\"\nnotify_from = \"low\"\n\
             [[notifier.directory.people]]\nid = \"nurse.duty\"\nname = \"Duty Nurse\"\ncontacts = [{{ channel = \"email\", address = \"duty@clinic.example\" }}]\n\
             [[notifier.directory.teams]]\nid = \"copd\"\npatients = [\"{key}\"]\n\
             [[notifier.directory.teams.tiers]]\ntime_zone = \"UTC\"\n\
             weekly = [{{ days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"], start = \"00:00\", end = \"00:00\", person = \"nurse.duty\" }}]\n",
            port = broker.port(),
            db = db.url(),
            smtp = smtp.port(),
            key = key.as_str(),
        ),
    );
    let ingest = testkit::spawn_ingest(BIN, &ingest_cfg, &broker, &[("RUST_LOG", "info")])
        .expect("ingest connects and subscribes");
    let addr = support::http_addr(&ingest);
    let base = format!("http://{addr}");

    let gw_cfg = write(
        dir.path(),
        "gateway.toml",
        format!(
            "[gateway]\nid = \"{gateway}\"\ndata_dir = \"{}\"\n[broker]\nurl = \"mqtt://127.0.0.1:{}\"\n",
            dir.path().join("gw-data").display(),
            broker.port(),
            gateway = gateway.as_str(),
        ),
    );
    let mut gw = RpmProcess::spawn(
        BIN,
        &[
            "gateway",
            "--config",
            &gw_cfg,
            "--simulate",
            "copd_exacerbation",
            "--exit-when-drained",
        ],
        &[],
    )
    .expect("spawn gateway");
    assert!(
        gw.wait_timeout(Duration::from_secs(90))
            .expect("gateway exits")
            .success(),
        "{}",
        gw.stderr()
    );
    // The exacerbation raises alerts in the record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let open = loop {
        let open = record
            .alert_inbox(&InboxQuery {
                limit: 100,
                ..InboxQuery::default()
            })
            .await
            .expect("inbox");
        if !open.is_empty() || tokio::time::Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !open.is_empty(),
        "the exacerbation raised alerts\n{}",
        ingest.stderr()
    );

    let c = driver.browser().await;

    // --- The nurse -----------------------------------------------------------------------
    sign_in(&c, &base, NURSE, "/console/alerts").await;
    let cards = c
        .find_all(Locator::Css("article.alert-card[data-state=open]"))
        .await
        .expect("cards");
    assert!(!cards.is_empty(), "open alerts in the inbox");
    let inbox = c.source().await.expect("source");
    assert!(inbox.contains(PATIENT_NAME), "staff see the patient's name");
    assert!(
        inbox.contains("spo2-low") || inbox.contains("news2") || inbox.contains("pef-best-drop"),
        "an exacerbation rule in the inbox"
    );
    screenshots(&c, "inbox", None).await;

    // The patient's chart.
    c.find(Locator::Css("article.alert-card a.patient-link"))
        .await
        .expect("patient link")
        .click()
        .await
        .expect("open the patient");
    let patient_path = format!("/console/patients/{}", key.as_str());
    assert_eq!(wait_path(&c, &patient_path).await, patient_path);
    let charts = c
        .find_all(Locator::Css("figure.chart-fig svg.chart"))
        .await
        .expect("charts");
    assert_eq!(
        charts.len(),
        6,
        "SpO2, pulse, BP, FEV1, PEF and NEWS2 charts"
    );
    // The scenario ends now, so the last 48 hours hold its worst days.
    let spo2_points = c
        .find_all(Locator::Css(
            "figure.chart-fig:first-child svg .s0 circle.pt",
        ))
        .await
        .expect("points");
    assert!(!spo2_points.is_empty(), "SpO2 readings drawn");

    assert!(
        !c.find_all(Locator::Css("table#readings tbody tr"))
            .await
            .expect("rows")
            .is_empty(),
        "the readings table"
    );
    screenshots(&c, "timeline-48h", None).await;
    c.find(Locator::Css("ul.ranges a[href$='range=30d']"))
        .await
        .expect("30 days")
        .click()
        .await
        .expect("range");
    assert_eq!(
        wait_for(&c, |_, q| q == Some("range=30d"))
            .await
            .1
            .as_deref(),
        Some("range=30d")
    );
    // The exacerbation's alerts were raised over its last days: all within 30 days.
    let marks = c
        .find_all(Locator::Css("svg.chart g.alert"))
        .await
        .expect("marks");
    assert!(!marks.is_empty(), "alerts marked on the charts");
    screenshots(&c, "timeline-30d", None).await;

    // Acknowledge the first open alert with a note.
    c.goto(&format!("{base}/console/alerts"))
        .await
        .expect("inbox");
    let card = c
        .find(Locator::Css("article.alert-card[data-state=open]"))
        .await
        .expect("an open alert");
    let uid = card.attr("data-uid").await.expect("attr").expect("uid");
    let note = "Phoned the patient: rescue pack started, GP informed";
    card.find(Locator::Css("textarea[name=note]"))
        .await
        .expect("note field")
        .send_keys(note)
        .await
        .expect("type");
    card.find(Locator::Css("form.ack button[type=submit]"))
        .await
        .expect("acknowledge button")
        .click()
        .await
        .expect("acknowledge");
    assert_eq!(
        wait_for(&c, |_, q| q == Some("done=ack"))
            .await
            .1
            .as_deref(),
        Some("done=ack")
    );
    let acked = text(
        &c,
        &format!("article.alert-card[data-uid='{uid}'] dd.acknowledged"),
    )
    .await;
    assert!(
        acked.contains(NURSE.0) && acked.contains(note),
        "the acknowledgement is shown: {acked}"
    );
    // ... and is in the audit log with who and why.
    c.goto(&format!("{base}/console/audit?action=alert.acknowledge"))
        .await
        .expect("audit");
    let audit = text(&c, "table#audit tbody").await;
    assert!(
        audit.contains(NURSE.0) && audit.contains(note) && audit.contains(&uid),
        "the acknowledgement in the audit log: {audit}"
    );
    screenshots(&c, "audit", None).await;

    // No threshold form for a nurse, and the server refuses her POST even with a valid
    // session and CSRF token.
    let thresholds = format!("/console/patients/{}/thresholds", key.as_str());
    c.goto(&format!("{base}{thresholds}"))
        .await
        .expect("thresholds");
    assert!(
        c.find_all(Locator::Css("#threshold-edit"))
            .await
            .expect("query")
            .is_empty(),
        "a nurse gets no edit form"
    );
    c.find(Locator::Id("edit-clinicians-only"))
        .await
        .expect("says who may edit");
    screenshots(&c, "thresholds-nurse", None).await;
    // The page's CSP allows no script requests, so the forged change is a form the nurse's
    // browser posts itself: her session cookie and a valid CSRF token, a changed limit.
    c.execute(
        "const f = document.createElement('form');
         f.method = 'post';
         f.action = arguments[0];
         const add = (n, v) => { const i = document.createElement('input'); i.type = 'hidden'; i.name = n; i.value = v; f.appendChild(i); };
         add('csrf_token', document.querySelector('input[name=csrf_token]').value);
         add('spo2-low.raise', '80');
         add('spo2-low.enabled', 'on');
         add('reason', 'a nurse tries');
         document.body.appendChild(f);
         f.submit();",
        vec![serde_json::json!(thresholds)],
    )
    .await
    .expect("post the form");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refusal = c.source().await.expect("source");
    assert!(
        refusal.contains("clinician"),
        "the server refuses a nurse's threshold change: {refusal}"
    );
    assert_eq!(
        record.current_thresholds(&key).await.expect("read"),
        None,
        "nothing was saved"
    );

    c.goto(&format!("{base}/console/alerts"))
        .await
        .expect("back to the inbox");
    sign_out(&c).await;
    c.goto(&format!("{base}/console/alerts"))
        .await
        .expect("after sign-out");
    assert_eq!(
        c.current_url().await.expect("url").path(),
        "/login",
        "the session is over"
    );

    // --- The clinician -------------------------------------------------------------------
    sign_in(&c, &base, CLINICIAN, &thresholds).await;
    let raise = c
        .find(Locator::Id("spo2-low.raise"))
        .await
        .expect("the SpO2 limit is editable");
    assert_eq!(
        raise.prop("value").await.expect("value").as_deref(),
        Some("90"),
        "the COPD profile's limit"
    );
    raise.clear().await.expect("clear");
    raise.send_keys("91").await.expect("type");
    c.find(Locator::Id("preview-btn"))
        .await
        .expect("preview button")
        .click()
        .await
        .expect("preview");
    let preview_path = format!("{thresholds}/preview");
    assert_eq!(wait_path(&c, &preview_path).await, preview_path);
    let preview = text(&c, "#preview").await;
    let (n, m) = preview_numbers(&preview);
    assert!(
        m > 0,
        "the thresholds in force raised alerts over the exacerbation: {preview}"
    );
    assert!(
        n >= m,
        "raising the SpO2 limit cannot raise fewer alerts: {preview}"
    );
    assert_eq!(
        c.find(Locator::Id("spo2-low.raise"))
            .await
            .expect("kept")
            .prop("value")
            .await
            .expect("value")
            .as_deref(),
        Some("91"),
        "the edit is kept in the form"
    );
    screenshots(&c, "thresholds-preview", Some("#preview")).await;
    let reason = "Patient's usual SpO2 is 95-96: alert earlier during exacerbations";
    c.find(Locator::Id("reason"))
        .await
        .expect("reason")
        .send_keys(reason)
        .await
        .expect("type");
    c.find(Locator::Id("save"))
        .await
        .expect("save button")
        .click()
        .await
        .expect("save");
    assert_eq!(wait_path(&c, &thresholds).await, thresholds);
    let versions = text(&c, "table#versions tbody").await;
    assert!(
        versions.contains(CLINICIAN.0)
            && versions.contains(reason)
            && versions.contains("raise 91"),
        "the new version with who and why: {versions}"
    );
    let in_force = text(&c, "table#rules tr[data-rule=spo2-low]").await;
    assert!(in_force.contains("raise 91"), "{in_force}");
    screenshots(&c, "thresholds-saved", None).await;
    let current = record
        .current_thresholds(&key)
        .await
        .expect("read")
        .expect("a version");
    assert_eq!(current.author, CLINICIAN.0);
    assert_eq!(current.reason, reason);

    // The caseload and gateways pages render for staff too.
    c.goto(&format!(
        "{base}/console/patients?condition=copd&kind=spo2&cmp=below&value=95&within=2160"
    ))
    .await
    .expect("caseload");
    let row = text(&c, "table#caseload tbody").await;
    assert!(row.contains(PATIENT_NAME), "{row}");
    screenshots(&c, "caseload", None).await;
    c.goto(&format!("{base}/console/gateways"))
        .await
        .expect("gateways");
    assert!(text(&c, "main").await.contains(gateway.as_str()));
    screenshots(&c, "gateways", None).await;

    c.close().await.expect("close the browser");
    drop(ingest);
}

#[test]
fn preview_sentences_are_read() {
    assert_eq!(
        preview_numbers("This change would have raised 7 alerts in the last 30 days instead of 3."),
        (7, 3)
    );
    assert_eq!(
        preview_numbers(
            "This change would have raised 1 alert in the last 30 days instead of 0.\nBacktest of 50 readings: raised 9"
        ),
        (1, 0)
    );
}
