//! The care team, patients and config the tests share.

use notifier::{
    AlertId, AlertNotice, Audience, EvidenceLine, NoticeKind, NotifierConfig, Severity, Timestamp,
};
use vitals::{Kind, PatientKey};

pub const ACK_KEY: &str = "test-ack-key-0123456789abcdef-0123456789";
pub const WEBHOOK_SECRET: &str = "webhook-secret";

/// A config with SMTP on `smtp_port` and the HTTP receiver at `http` (webhook at `/hook`,
/// SMS gateway at `/sms`). Tier 0 is Ann (email, webhook, SMS), tier 1 Bob (email); the
/// rotas cover every hour so wall-clock time does not matter. `extra` is appended.
pub fn config(smtp_port: u16, http: &str, extra: &str) -> NotifierConfig {
    let text = format!(
        r#"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "RPM alerts <alerts@rpm.test>"
timeout = "2s"

[webhook]
secret = "{WEBHOOK_SECRET}"
timeout = "2s"

[sms]
url = "{http}/sms"
username = "AC-test"
password = "sms-secret"
from = "+447700900000"
timeout = "2s"

[links]
console_url = "https://console.rpm.test/"
ack_key = "{ACK_KEY}"
ack_ttl = "1h"

[dispatch]
lease = "3s"
poll = "100ms"
batch = 16
retry_base = "100ms"
retry_cap = "400ms"
max_attempts = 100

[grouping]
group_wait = "300ms"
group_interval = "1s"
immediate_from = "emergency"
patient_urgent_from = "emergency"
notify_from = "low"

[escalation]
emergency = {{ ack_within = "5m", repeats = 2 }}
high = {{ ack_within = "10m" }}

[[directory.people]]
id = "ann"
name = "Ann"
contacts = [
  {{ channel = "email", address = "ann@ward.test" }},
  {{ channel = "webhook", address = "{http}/hook" }},
  {{ channel = "sms", address = "+447700900111" }},
]

[[directory.people]]
id = "bob"
name = "Bob"
contacts = [{{ channel = "email", address = "bob@ward.test" }}]

[[directory.teams]]
id = "copd"
patients = ["pt-1", "pt-2"]

[[directory.teams.tiers]]
time_zone = "Europe/London"
weekly = [{{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "00:00", person = "ann" }}]

[[directory.teams.tiers]]
time_zone = "UTC"
weekly = [{{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "00:00", person = "bob" }}]

[[directory.patients]]
patient = "pt-1"
name = "Alex"
time_zone = "Europe/London"
contacts = [
  {{ channel = "email", address = "alex@home.test" }},
  {{ channel = "sms", address = "+447700900222" }},
]
action_plan = "Start your rescue pack as your nurse showed you, and rest. If you get more breathless, call the nurse line now."
{extra}
"#
    );
    toml::from_str(&text).expect("test config parses")
}

pub fn patient(key: &str) -> PatientKey {
    PatientKey::new(key).expect("test patient key")
}

/// A raised SpO2 alert for `patient`.
pub fn notice(
    alert: &str,
    patient_key: &str,
    rule: &str,
    severity: Severity,
    at: Timestamp,
) -> AlertNotice {
    AlertNotice {
        alert: AlertId::new(alert).expect("test alert id"),
        patient: patient(patient_key),
        rule: rule.to_owned(),
        kind: NoticeKind::Raised,
        severity,
        audience: Audience::Both,
        opened_at: at,
        at,
        nurse_text: format!("SpO2 88 % below limit 90 ({rule})"),
        patient_text: Some("Your oxygen level is lower than usual.".to_owned()),
        explanation: format!("rule {rule} (below) of copd@3: {severity}; limit 90, clears at 92"),
        evidence: vec![EvidenceLine {
            kind: Kind::Spo2,
            value: 88.0,
            at,
        }],
    }
}

/// Quoted-printable soft breaks and `=3D` undone, so substrings can be asserted.
pub fn unfold(raw: &str) -> String {
    raw.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}
