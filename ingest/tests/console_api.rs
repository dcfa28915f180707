//! The console's JSON API against a real axum server on a free port, over HTTP with a cookie
//! store, on SQLite and PostgreSQL: every route refuses an unauthenticated caller (walked from
//! the OpenAPI document, so a new route cannot escape), roles are enforced, CSRF is required
//! on cookie-authenticated changes, sessions expire, tokens work and can be revoked, failed
//! logins are audited and lock the account, acknowledgements are audited with their note, and
//! a threshold change is versioned, audited and used by the running consumer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ingest::config::RulesConfig;
use ingest::console::ConsoleSettings;
use ingest::console::thresholds::ProfileCatalog;
use ingest::consume::{Consumer, ConsumerSettings, IngestStats, Rules, client_options};
use ingest::http::{HttpState, router, serve};
use ingest::record::{
    AlertWrite, Audit, AuditFilter, NewBinding, NewPatient, OpenAlert, Record, Role,
};
use reqwest::StatusCode;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use serde_json::{Value, json};
use testkit::{Mosquitto, PgDatabase, unavailable};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use vitals::*;

const PASSWORD: &str = "correct horse battery";
const SETUP: Audit<'static> = Audit {
    who: "test",
    why: "console API test set-up",
};

fn rules_config() -> RulesConfig {
    RulesConfig {
        profiles_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/profiles").into(),
        ..RulesConfig::default()
    }
}

fn key() -> PatientKey {
    PatientKey::new("pk-1").expect("valid")
}
fn gw() -> GatewayId {
    GatewayId::new("gw-1").expect("valid")
}
fn device() -> DeviceId {
    "eui64:0011223344556677".parse().expect("valid")
}

struct Server {
    base: String,
    record: Record,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn start(record: Record, settings: ConsoleSettings) -> Server {
    record
        .create_patient(
            &NewPatient {
                key: key(),
                display_name: Some("Ada Example".into()),
                condition: "copd".into(),
                profile_id: None,
                care_team: None,
            },
            &SETUP,
        )
        .await
        .expect("patient");
    for (name, role) in [
        ("nurse.day", Role::Nurse),
        ("dr.lee", Role::Clinician),
        ("admin", Role::Admin),
    ] {
        record
            .create_user(name, role, PASSWORD, &SETUP)
            .await
            .expect("user");
    }
    let mut state = HttpState::new(record.clone(), Arc::new(IngestStats::default()));
    state.console.settings = settings;
    state.console.profiles = Some(Arc::new(
        ProfileCatalog::load(&rules_config()).expect("profiles"),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, router(state), shutdown.clone()));
    Server {
        base,
        record,
        shutdown,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in; returns the cookie-holding client and the CSRF token.
async fn sign_in(s: &Server, user: &str) -> (reqwest::Client, String) {
    let c = client();
    let r = c
        .post(s.url("/api/v1/session"))
        .json(&json!({"username": user, "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK, "login of {user}");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let body: Value = r.json().await.expect("json");
    let csrf = body["csrf_token"].as_str().expect("csrf").to_owned();
    (c, csrf)
}

async fn open_alert(record: &Record) -> String {
    let now = OffsetDateTime::now_utc();
    let written = record
        .write_alerts(&[AlertWrite::Open {
            patient: key(),
            raised: true,
            alert: OpenAlert {
                rule: "spo2-low".into(),
                profile: "copd@1".into(),
                severity: rules::Severity::High,
                audience: rules::Audience::Nurse,
                opened_at: now,
                at: now,
                explanation: json!({"evidence": [], "context": {"type": "threshold", "limit": 90.0}, "text": "SpO2 87 %"}),
                nurse: "SpO2 87 % (at or under 90 %)".into(),
                patient_text: None,
            },
        }])
        .await
        .expect("alert");
    written[0].alert_uid.clone().expect("uid")
}

fn settings() -> ConsoleSettings {
    ConsoleSettings::default()
}

// ----------------------------------------------------------------------------------------

async fn an_unauthenticated_request_to_any_api_route_gets_nothing(record: Record) {
    let s = start(record, settings()).await;
    let uid = open_alert(&s.record).await;
    let c = client();
    let doc: Value = c
        .get(s.url("/api/openapi.json"))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        paths.len() >= 15,
        "the document lists the routes: {paths:?}"
    );
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{key}", "pk-1")
            .replace("{uid}", &uid)
            .replace("{name}", "nurse.day")
            .replace("{label}", "x");
        assert!(!concrete.contains('{'), "unfilled parameter in {path}");
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let mut req = c.request(m, s.url(&concrete));
            // Well-formed bodies, so a route could only answer 401 for lack of credentials.
            if method != "get" {
                req = req.json(&json!({
                    "username": "nobody", "password": "not the password",
                    "note": "n", "rules": [], "reason": "r", "label": "l",
                    "role": "nurse", "key": "pk-2", "condition": "copd"
                }));
            }
            let r = req.send().await.expect("request");
            let status = r.status();
            let body = r.text().await.expect("body");
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            let v: Value = serde_json::from_str(&body).expect("a JSON error");
            assert_eq!(
                v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
                Some(vec!["error".to_owned()]),
                "{method} {path} leaks: {body}"
            );
            assert!(!body.contains("Ada") && !body.contains("pk-1"), "{body}");
            checked += 1;
        }
    }
    assert!(checked >= 18, "only {checked} routes checked");
    // A bad token is refused the same way.
    let r = c
        .get(s.url("/api/v1/alerts"))
        .bearer_auth("rpm_0000")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

async fn a_nurse_cannot_change_thresholds(record: Record) {
    let s = start(record, settings()).await;
    let change = json!({"rules": [{"id": "spo2-low", "raise": 89, "clear": 91}], "reason": "tolerates lower"});
    let (nurse, csrf) = sign_in(&s, "nurse.day").await;
    let r = nurse
        .get(s.url("/api/v1/patients/pk-1/thresholds"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK, "a nurse reads thresholds");
    for path in [
        "/api/v1/patients/pk-1/thresholds",
        "/api/v1/patients/pk-1/thresholds/preview",
    ] {
        let r = nurse
            .post(s.url(path))
            .header("x-csrf-token", &csrf)
            .json(&change)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    assert!(
        s.record
            .threshold_versions(&key())
            .await
            .expect("versions")
            .is_empty()
    );
    let r = nurse
        .get(s.url("/api/v1/users"))
        .send()
        .await
        .expect("users");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "users are for admins");
    let (clinician, csrf) = sign_in(&s, "dr.lee").await;
    let r = clinician
        .post(s.url("/api/v1/patients/pk-1/thresholds"))
        .header("x-csrf-token", &csrf)
        .json(&change)
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

async fn a_cookie_request_without_the_csrf_token_is_refused(record: Record) {
    let s = start(record, settings()).await;
    let uid = open_alert(&s.record).await;
    let (nurse, csrf) = sign_in(&s, "nurse.day").await;
    let ack = s.url(&format!("/api/v1/alerts/{uid}/ack"));
    let r = nurse
        .post(&ack)
        .json(&json!({"note": "called the patient"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = nurse
        .post(&ack)
        .header("x-csrf-token", "0".repeat(64))
        .json(&json!({"note": "called the patient"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a wrong token");
    let audit = s
        .record
        .audit_entries(&AuditFilter {
            action: Some("alert.acknowledge".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert!(audit.is_empty(), "nothing was acknowledged: {audit:?}");
    let r = nurse
        .post(&ack)
        .header("x-csrf-token", &csrf)
        .json(&json!({"note": "called the patient"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    // The HTML form carries it as a field.
    let r = nurse
        .post(s.url("/logout"))
        .form(&[("other", "x")])
        .send()
        .await
        .expect("logout");
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a form without csrf_token"
    );
    let r = nurse
        .post(s.url("/logout"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = nurse
        .get(s.url("/api/v1/alerts"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "signed out");
}

async fn sessions_expire_when_idle_and_at_their_limit(record: Record) {
    let s = start(
        record,
        ConsoleSettings {
            session_idle: Duration::from_millis(800),
            session_max: Duration::from_secs(3600),
            ..settings()
        },
    )
    .await;
    let (nurse, _) = sign_in(&s, "nurse.day").await;
    let ok = nurse
        .get(s.url("/api/v1/alerts"))
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = nurse
        .get(s.url("/api/v1/alerts"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "idle expiry");
    drop(s);
}

async fn sessions_end_at_their_absolute_limit(record: Record) {
    let s = start(
        record,
        ConsoleSettings {
            session_idle: Duration::from_secs(3600),
            session_max: Duration::from_secs(1),
            ..settings()
        },
    )
    .await;
    let (nurse, _) = sign_in(&s, "nurse.day").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = nurse
        .get(s.url("/api/v1/alerts"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "absolute expiry");
}

async fn api_tokens_authenticate_with_their_role_until_revoked(record: Record) {
    let s = start(record, settings()).await;
    let (token, meta) = s
        .record
        .create_token("dr.lee", "integration", Some(Role::Nurse), &SETUP)
        .await
        .expect("token");
    assert_eq!(meta.role, Role::Nurse);
    assert!(
        s.record
            .create_token("nurse.day", "up", Some(Role::Admin), &SETUP)
            .await
            .is_err(),
        "a token above its owner's role"
    );
    let c = reqwest::Client::new();
    let r = c
        .get(s.url("/api/v1/patients"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let rows: Value = r.json().await.expect("json");
    assert_eq!(rows[0]["patient"], "pk-1");
    // No CSRF for tokens, but the token's role (nurse) caps the clinician owner's.
    let r = c
        .post(s.url("/api/v1/patients/pk-1/thresholds"))
        .bearer_auth(&token)
        .json(&json!({"rules": [], "reason": "x"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    s.record
        .revoke_token("dr.lee", "integration", &SETUP)
        .await
        .expect("revoke");
    let r = c
        .get(s.url("/api/v1/patients"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "revoked");
}

/// Password spraying: failures across many accounts from one address stop that address (429
/// with Retry-After, on the API and the form), even with a right password, and no other.
async fn failed_sign_ins_from_one_address_are_throttled_across_accounts(record: Record) {
    let mut limited = settings();
    limited.login_limit.max_failures = 3;
    limited.client_ip_header = Some("x-forwarded-for".into());
    let s = start(record, limited).await;
    let c = client();
    let attempt = |from: &'static str, user: &'static str, password: &'static str| {
        c.post(s.url("/api/v1/session"))
            .header("x-forwarded-for", format!("203.0.113.50, {from}"))
            .json(&json!({"username": user, "password": password}))
            .send()
    };
    // One failure on each of three accounts: no account reaches its own lockout.
    for user in ["nurse.day", "dr.lee", "admin"] {
        let r = attempt("192.0.2.10", user, "guess guess guess")
            .await
            .expect("login");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = attempt("192.0.2.10", "admin", PASSWORD)
        .await
        .expect("login");
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the address is refused, right password or not"
    );
    let wait: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=900).contains(&wait), "{wait}");
    assert!(
        r.headers().get("set-cookie").is_none(),
        "no session for a refused address"
    );
    // The form is refused the same way, with words for the nurse.
    let form = c
        .post(s.url("/login"))
        .header("x-forwarded-for", "192.0.2.10")
        .form(&[("username", "admin"), ("password", PASSWORD)])
        .send()
        .await
        .expect("form");
    assert_eq!(form.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(form.headers().get("set-cookie").is_none());
    let page = form.text().await.expect("html");
    assert!(page.contains("Too many failed sign-ins"), "{page}");
    // Another address (the proxy's last entry is the one that counts) signs in.
    let r = attempt("192.0.2.11", "admin", PASSWORD)
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
    // The accounts themselves were not locked: one failure each (a client without the
    // admin's session cookie, which would need its CSRF token).
    let r = client()
        .post(s.url("/api/v1/session"))
        .header("x-forwarded-for", "192.0.2.12")
        .json(&json!({"username": "nurse.day", "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
}

/// Without a proxy header the connection's own address counts.
async fn failed_sign_ins_are_counted_by_the_peer_address(record: Record) {
    let mut limited = settings();
    limited.login_limit.max_failures = 2;
    let s = start(record, limited).await;
    let statuses = {
        let mut out = Vec::new();
        for password in ["wrong one", "wrong two", PASSWORD] {
            let r = client()
                .post(s.url("/api/v1/session"))
                // Not trusted: no client_ip_header is configured.
                .header("x-forwarded-for", format!("198.51.100.{}", out.len()))
                .json(&json!({"username": "dr.lee", "password": password}))
                .send()
                .await
                .expect("login");
            out.push(r.status());
        }
        out
    };
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

async fn failed_logins_are_audited_and_lock_the_account(record: Record) {
    let s = start(record, settings()).await;
    let c = client();
    for _ in 0..ingest::record::LOCKOUT_AFTER {
        let r = c
            .post(s.url("/api/v1/session"))
            .json(&json!({"username": "nurse.day", "password": "guess guess guess"}))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = c
        .post(s.url("/api/v1/session"))
        .json(&json!({"username": "nurse.day", "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "locked, right password or not"
    );
    let audit = s
        .record
        .audit_entries(&AuditFilter {
            action: Some("auth.".into()),
            target: Some("user:nurse.day".into()),
            limit: 50,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "auth.login_failed")
            .count(),
        ingest::record::LOCKOUT_AFTER as usize,
        "{actions:?}"
    );
    assert!(actions.contains(&"auth.locked"), "{actions:?}");
    let (_, _) = sign_in(&s, "dr.lee").await;
    let logins = s
        .record
        .audit_entries(&AuditFilter {
            action: Some("auth.login".into()),
            target: Some("user:dr.lee".into()),
            limit: 5,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(logins.len(), 1, "{logins:?}");
}

async fn an_acknowledgement_with_a_note_is_shown_and_audited(record: Record) {
    let s = start(record, settings()).await;
    let uid = open_alert(&s.record).await;
    let (nurse, csrf) = sign_in(&s, "nurse.day").await;
    let inbox: Value = nurse
        .get(s.url("/api/v1/alerts"))
        .send()
        .await
        .expect("inbox")
        .json()
        .await
        .expect("json");
    assert_eq!(inbox[0]["uid"], uid.as_str());
    assert_eq!(
        inbox[0]["patient_name"], "Ada Example",
        "names for signed-in staff"
    );
    assert_eq!(inbox[0]["escalation"], "not_notified");
    let r = nurse
        .post(s.url(&format!("/api/v1/alerts/{uid}/ack")))
        .header("x-csrf-token", &csrf)
        .json(&json!({"note": "phoned; using rescue pack"}))
        .send()
        .await
        .expect("ack");
    assert_eq!(r.status(), StatusCode::OK);
    let alert: Value = nurse
        .get(s.url(&format!("/api/v1/alerts/{uid}")))
        .send()
        .await
        .expect("alert")
        .json()
        .await
        .expect("json");
    assert_eq!(alert["escalation"], "acknowledged");
    assert_eq!(alert["acknowledgement"]["by"], "nurse.day");
    assert_eq!(
        alert["acknowledgement"]["note"],
        "phoned; using rescue pack"
    );
    // The escalator follows the same audit row after a restart.
    assert!(
        s.record
            .open_unacknowledged_alerts()
            .await
            .expect("open")
            .is_empty()
    );
    let caseload: Value = nurse
        .get(s.url("/api/v1/patients?condition=copd&open_alerts_only=true"))
        .send()
        .await
        .expect("caseload")
        .json()
        .await
        .expect("json");
    assert_eq!(caseload[0]["open_alerts"], 1);
    assert_eq!(caseload[0]["top_severity"], "high");
    let none: Value = nurse
        .get(s.url("/api/v1/patients?condition=hypertension"))
        .send()
        .await
        .expect("caseload")
        .json()
        .await
        .expect("json");
    assert_eq!(none, json!([]));
}

async fn a_threshold_change_is_versioned_audited_and_judges_the_next_reading(record: Record) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let s = start(record, settings()).await;
    bind_oximeter(&s.record).await;
    let consumer = start_consumer(&broker, s.record.clone()).await;
    let publisher = publisher(&broker);
    // COPD raises at SpO2 90 (confirmed twice): 93 twice raises nothing. Under the change
    // below (raise 94, clear 96) these would have raised one alert, cleared by the 97.
    send(
        &publisher,
        &consumer,
        1,
        vec![spo2(0, "93"), spo2(1, "93"), spo2(2, "97")],
    )
    .await;
    assert!(spo2_low(&s.record).await.is_empty());

    let (clinician, csrf) = sign_in(&s, "dr.lee").await;
    let bad = clinician
        .post(s.url("/api/v1/patients/pk-1/thresholds"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"rules": [{"id": "spo2-low", "raise": 95, "clear": 92}], "reason": "x"}))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let why: Value = bad.json().await.expect("json");
    assert!(
        why["error"]
            .as_str()
            .is_some_and(|e| e.contains("spo2-low")),
        "the rules engine's reason names the rule: {why}"
    );
    let change = json!({"rules": [{"id": "spo2-low", "raise": 94, "clear": 96}],
                        "reason": "usual SpO2 is 97; act earlier"});
    let preview: Value = clinician
        .post(s.url("/api/v1/patients/pk-1/thresholds/preview"))
        .header("x-csrf-token", &csrf)
        .json(&change)
        .send()
        .await
        .expect("preview")
        .json()
        .await
        .expect("json");
    assert_eq!(preview["current"]["alerts"], 0, "{preview}");
    assert_eq!(preview["candidate"]["by_rule"]["spo2-low"], 1, "{preview}");
    assert!(
        preview["message"]
            .as_str()
            .is_some_and(|m| m.contains("instead of 0")),
        "{preview}"
    );
    let saved = clinician
        .post(s.url("/api/v1/patients/pk-1/thresholds"))
        .header("x-csrf-token", &csrf)
        .json(&change)
        .send()
        .await
        .expect("save");
    assert_eq!(saved.status(), StatusCode::CREATED);
    let saved: Value = saved.json().await.expect("json");
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["profile"], "copd@1+console@1");

    let versions = s.record.threshold_versions(&key()).await.expect("versions");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].author, "dr.lee");
    assert_eq!(versions[0].reason, "usual SpO2 is 97; act earlier");
    let audit = s
        .record
        .audit_entries(&AuditFilter {
            action: Some("thresholds.change".into()),
            target: Some("patient:pk-1".into()),
            limit: 5,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "dr.lee");

    // The running consumer judges the next readings by the new threshold.
    send(
        &publisher,
        &consumer,
        2,
        vec![spo2(10, "93"), spo2(11, "93")],
    )
    .await;
    let raised = spo2_low(&s.record).await;
    assert_eq!(raised.len(), 1, "93 is under the new raise level 94");
    assert_eq!(raised[0].profile, "copd@1+console@1");
    let view: Value = clinician
        .get(s.url("/api/v1/patients/pk-1/thresholds"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(view["profile"], "copd@1+console@1");
    assert_eq!(view["versions"][0]["author"], "dr.lee");
    let timeline: Value = clinician
        .get(s.url("/api/v1/patients/pk-1/timeline"))
        .send()
        .await
        .expect("timeline")
        .json()
        .await
        .expect("json");
    assert_eq!(timeline["readings"].as_array().map(Vec::len), Some(5));
    let line = timeline["thresholds"]
        .as_array()
        .and_then(|l| l.iter().find(|t| t["rule"] == "spo2-low"))
        .cloned()
        .expect("the spo2-low line");
    assert_eq!(line["raise"], 94.0);
    consumer.shutdown.cancel();
    let _ = consumer.task.await;
}

/// Readings already stored that breach thresholds saved later raise their alert when the
/// consumer takes the change up, not never: the replay under the new thresholds holds the
/// alert open in the engine, so the record must have it too.
async fn stored_readings_that_breach_new_thresholds_raise_their_alert(record: Record) {
    let Some(broker) = unavailable(Mosquitto::start()) else {
        return;
    };
    let s = start(record, settings()).await;
    bind_oximeter(&s.record).await;
    let consumer = start_consumer(&broker, s.record.clone()).await;
    let publisher = publisher(&broker);
    // 93 twice: nothing under COPD's raise level of 90.
    send(&publisher, &consumer, 1, vec![spo2(0, "93"), spo2(1, "93")]).await;
    assert!(spo2_low(&s.record).await.is_empty());

    let (clinician, csrf) = sign_in(&s, "dr.lee").await;
    let saved = clinician
        .post(s.url("/api/v1/patients/pk-1/thresholds"))
        .header("x-csrf-token", &csrf)
        .json(
            &json!({"rules": [{"id": "spo2-low", "raise": 94, "clear": 96}],
                      "reason": "usual SpO2 is 97; act earlier"}),
        )
        .send()
        .await
        .expect("save");
    assert_eq!(saved.status(), StatusCode::CREATED);

    // A reading that by itself changes nothing (95: neither raises nor clears under the new
    // levels) makes the consumer take the change up.
    send(&publisher, &consumer, 2, vec![spo2(5, "95")]).await;
    let raised = spo2_low(&s.record).await;
    assert_eq!(
        raised.len(),
        1,
        "the two stored 93s breach the new raise level 94: {raised:?}"
    );
    assert_eq!(raised[0].state, ingest::record::AlertState::Open);
    assert_eq!(raised[0].profile, "copd@1+console@1");
    // Taking the change up again (another reading) raises nothing more.
    send(&publisher, &consumer, 3, vec![spo2(6, "95")]).await;
    assert_eq!(spo2_low(&s.record).await.len(), 1);
    consumer.shutdown.cancel();
    let _ = consumer.task.await;
}

/// The timeline draws the baseline the patient's baseline rule compares readings with
/// (median of daily medians over the completed days of its window, device-flagged values left
/// out as the engine leaves them out), in the API and on the page.
async fn the_timeline_shows_the_baseline_the_rules_compare_with(record: Record) {
    let s = start(record, settings()).await;
    bind_oximeter(&s.record).await;
    // Anchored to UTC midnights, as the engine's days are: nothing depends on the hour the
    // test runs at.
    let midnight = OffsetDateTime::now_utc().replace_time(time::Time::MIDNIGHT);
    let at =
        |day: i64, hour: i64| midnight + time::Duration::days(day) + time::Duration::hours(hour);
    let mut batch = Vec::new();
    let mut n = 0u64;
    let mut add = |when: OffsetDateTime, value: &str, flags: Flags| {
        n += 1;
        let mut r = spo2(0, value);
        r.measured_at = when;
        r.received_at = when;
        r.seq = n;
        r.flags = flags;
        let r = r.with_computed_id();
        let values = r.values.clone();
        batch.push((r, values));
    };
    let doubtful: Flags = [Flag::BodyMovement].into_iter().collect();
    // Days −8 to −2: 95, 96, 97 (median 96); on four of them also a reading of 80 taken while
    // moving, which would pull those days' medians to 95.5 and the baseline with them.
    for day in -8..=-2 {
        for (hour, v) in [(8, "95"), (12, "96"), (18, "97")] {
            add(at(day, hour), v, Flags::default());
        }
        if day % 2 == 0 {
            add(at(day, 20), "80", doubtful);
        }
    }
    // Yesterday: a fall.
    add(at(-1, 8), "91", Flags::default());
    add(at(-1, 9), "92", Flags::default());
    s.record.insert_batch(&batch).await.expect("stored");

    let (clinician, _) = sign_in(&s, "dr.lee").await;
    let timeline: Value = clinician
        .get(s.url("/api/v1/patients/pk-1/timeline"))
        .send()
        .await
        .expect("timeline")
        .json()
        .await
        .expect("json");
    let reference = timeline["references"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["rule"] == "spo2-baseline-drop"))
        .cloned()
        .unwrap_or_else(|| panic!("the SpO2 baseline rule's reference: {timeline}"));
    assert_eq!(reference["measure"], "spo2");
    assert_eq!(reference["personal_best"], false);
    let points = reference["points"].as_array().expect("points");
    let yesterday = points
        .iter()
        .find(|p| {
            p["at"].as_str().and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            }) == Some(at(-1, 8))
        })
        .unwrap_or_else(|| panic!("a point for yesterday's first reading: {reference}"));
    assert_eq!(yesterday["reference"], 96.0, "{yesterday}");
    assert_eq!(
        yesterday["raise_at"], 92.0,
        "the rule's drop is 4: {yesterday}"
    );
    assert_eq!(yesterday["days"], 7);
    // No point before the rule has min_days (5) completed days behind it.
    assert!(
        points.iter().all(|p| p["days"].as_u64() >= Some(5)),
        "{reference}"
    );
    assert_eq!(timeline["references_not_computed"], json!([]));

    let page = clinician
        .get(s.url("/console/patients/pk-1?range=7d"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("class=\"trace baseline\""), "{page}");
    assert!(page.contains("baseline 96"), "{page}");
    assert!(page.contains("class=\"trace thr raise\""), "{page}");
    assert!(page.contains("baseline −4 92"), "{page}");
}

/// Registers the gateway and the oximeter and binds it to the patient, so readings are
/// stored and judged.
async fn bind_oximeter(record: &Record) {
    record.create_gateway(&gw(), &SETUP).await.expect("gateway");
    record
        .create_device(&DeviceIdentity::new(device()), &SETUP)
        .await
        .expect("device");
    record
        .bind(
            &NewBinding {
                gateway: gw(),
                device: device(),
                patient: key(),
                user_index: None,
                valid_from: OffsetDateTime::UNIX_EPOCH,
            },
            &SETUP,
        )
        .await
        .expect("bind");
}

// ----------------------------------------------------------------------------------------
// The consumer side (as in alerts.rs).

struct Node {
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ingest::consume::ConsumeError>>,
}

async fn start_consumer(broker: &Mosquitto, record: Record) -> Node {
    let config = BrokerConfig::new(broker.url().parse().expect("url"));
    let options = client_options(&config, "ingest-console", 32).expect("options");
    let cap = options.request_channel_capacity();
    let stats = Arc::new(IngestStats::default());
    let shutdown = CancellationToken::new();
    let rules = Rules::load(&rules_config()).expect("profiles");
    let consumer = Consumer {
        settings: ConsumerSettings {
            group: "ingest".into(),
            batch_max: 500,
            batch_linger: Duration::from_millis(10),
            max_inflight: 32,
            max_future: Duration::from_secs(300),
            max_backoff: Duration::from_millis(200),
        },
        record,
        mqtt: AsyncClient::new(options, cap),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    };
    let node = Node {
        stats,
        shutdown,
        task: tokio::spawn(consumer.run_with(rules)),
    };
    wait_for("the consumer's subscription", || {
        broker
            .log()
            .matches("$share/ingest/rpm/v1/gw/+/readings")
            .count()
            >= 1
    })
    .await;
    node
}

fn publisher(broker: &Mosquitto) -> AsyncClient {
    let opts = MqttOptions::new("console-test-publisher", "127.0.0.1", broker.port());
    let (client, events) = AsyncClient::new(opts, 100);
    testkit::drive_mqtt(events);
    client
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spo2(minute: i64, value: &str) -> Reading {
    let at = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid")
        - time::Duration::minutes(30)
        + time::Duration::minutes(minute);
    Reading {
        id: ReadingId(Default::default()),
        seq: minute as u64,
        gateway: gw(),
        patient: key(),
        device: DeviceIdentity::new(device()),
        user_index: None,
        reading_type: ReadingType::OximetrySpotCheck,
        device_time: None,
        measured_at: at,
        received_at: at,
        values: vec![Observed {
            kind: Kind::Spo2,
            value: Value_::Number(value.parse().expect("decimal")),
            unit: Unit::Percent,
        }],
        flags: Flags::default(),
    }
    .with_computed_id()
}

use vitals::Value as Value_;

async fn send(client: &AsyncClient, node: &Node, seq: u64, readings: Vec<Reading>) {
    let before = node.stats.messages.load(Ordering::Relaxed);
    let payload = Envelope {
        v: 1,
        gateway: gw(),
        seq,
        sent_at: OffsetDateTime::now_utc(),
        readings,
    }
    .encode();
    client
        .publish("rpm/v1/gw/gw-1/readings", QoS::AtLeastOnce, false, payload)
        .await
        .expect("publish");
    let stats = node.stats.clone();
    wait_for("the message committed", || {
        stats.messages.load(Ordering::Relaxed) > before
    })
    .await;
}

async fn spo2_low(record: &Record) -> Vec<ingest::record::StoredAlert> {
    record
        .alerts_for_patient(&key())
        .await
        .expect("alerts")
        .into_iter()
        .filter(|a| a.rule == "spo2-low")
        .collect()
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite:{}", dir.path().join("record.db").display());
                super::$name(super::Record::connect(&url, 4).await.expect("record")).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::unavailable(super::PgDatabase::create().await) else {
                    return;
                };
                super::$name(super::Record::connect(db.url(), 4).await.expect("record")).await;
            }
        }
    )*};
}

both!(
    an_unauthenticated_request_to_any_api_route_gets_nothing,
    a_nurse_cannot_change_thresholds,
    a_cookie_request_without_the_csrf_token_is_refused,
    sessions_expire_when_idle_and_at_their_limit,
    sessions_end_at_their_absolute_limit,
    api_tokens_authenticate_with_their_role_until_revoked,
    failed_logins_are_audited_and_lock_the_account,
    an_acknowledgement_with_a_note_is_shown_and_audited,
    a_threshold_change_is_versioned_audited_and_judges_the_next_reading,
    stored_readings_that_breach_new_thresholds_raise_their_alert,
    the_timeline_shows_the_baseline_the_rules_compare_with,
    failed_sign_ins_from_one_address_are_throttled_across_accounts,
    failed_sign_ins_are_counted_by_the_peer_address,
);
