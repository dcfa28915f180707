//! Putting a group of alerts into words.
//!
//! Nurses get the clinical detail: each alert's rule, wording, readings and the technical
//! line (baseline, trend, limits), a link to the patient in the console and a signed link to
//! acknowledge. Patients get their rule's plain wording and their action plan: what to do
//! now, with no figures they did not ask for.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;

use crate::ack::AckSigner;
use crate::notice::{AlertId, AlertNotice, NoticeKind};
use crate::outbox::{Notification, add};
use crate::routing::Recipient;

/// What rendering needs besides the rows.
#[derive(Clone, Debug)]
pub struct TemplateContext {
    /// The console's base URL, e.g. `https://rpm.example.org` (no trailing slash needed).
    pub console_url: String,
    /// Signs acknowledgement links.
    pub signer: AckSigner,
    /// How long an acknowledgement link stays valid.
    pub ack_ttl: Duration,
}

/// A group of alerts in words, for every channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// Email subject.
    pub subject: String,
    /// Plain-text body (email).
    pub text: String,
    /// Short text (SMS).
    pub short: String,
    /// The webhook body.
    pub json: serde_json::Value,
}

/// The alerts of a group, latest state of each, most severe first.
pub fn latest(rows: &[Notification]) -> Vec<&AlertNotice> {
    let mut by_alert: BTreeMap<&AlertId, &AlertNotice> = BTreeMap::new();
    for n in rows {
        let notice = &n.row.notice;
        let keep = by_alert
            .get(&notice.alert)
            .is_none_or(|old| notice.at >= old.at);
        if keep {
            by_alert.insert(&notice.alert, notice);
        }
    }
    let mut alerts: Vec<&AlertNotice> = by_alert.into_values().collect();
    alerts.sort_by(|a, b| {
        (a.kind == NoticeKind::Resolved)
            .cmp(&(b.kind == NoticeKind::Resolved))
            .then(b.severity.cmp(&a.severity))
            .then(a.opened_at.cmp(&b.opened_at))
    });
    alerts
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl TemplateContext {
    /// The acknowledgement link for `recipient` and `alert`, valid from `now`.
    pub fn ack_url(&self, alert: &AlertId, recipient: &Recipient, now: Timestamp) -> String {
        let token = self
            .signer
            .sign(alert, &recipient.key(), add(now, self.ack_ttl));
        format!("{}/ack?token={token}", base(&self.console_url))
    }

    /// Renders one group (rows share recipient, contact point and patient) at `now`.
    /// `None` when there is nothing left to say (empty group).
    pub fn render(&self, rows: &[Notification], now: Timestamp) -> Option<Rendered> {
        let first = rows.first()?;
        let alerts = latest(rows);
        match &first.row.recipient {
            Recipient::Staff { tier, .. } => Some(self.render_staff(
                rows,
                &alerts,
                &first.row.recipient,
                &first.row.name,
                *tier,
                now,
            )),
            Recipient::Patient { .. } => Some(render_patient(
                rows,
                &alerts,
                &first.row.name,
                first.row.action_plan.as_deref(),
            )),
        }
    }

    fn render_staff(
        &self,
        rows: &[Notification],
        alerts: &[&AlertNotice],
        recipient: &Recipient,
        name: &str,
        tier: u8,
        now: Timestamp,
    ) -> Rendered {
        let patient = &alerts[0].patient;
        let open = alerts
            .iter()
            .filter(|a| a.kind != NoticeKind::Resolved)
            .count();
        let top = alerts[0];
        let patient_url = format!("{}/console/patients/{patient}", base(&self.console_url));
        let subject = if open == 0 {
            format!(
                "[RPM] Resolved: {} alert(s) for patient {patient}",
                alerts.len()
            )
        } else {
            format!(
                "[RPM] {}: {open} open alert(s) for patient {patient}",
                top.severity.as_str().to_uppercase()
            )
        };
        let mut text = format!("Hello {name},\n\n");
        if tier > 0 {
            let _ = writeln!(
                text,
                "ESCALATED (tier {tier}): nobody has acknowledged this yet.\n"
            );
        }
        let _ = writeln!(text, "Patient {patient}: {open} open alert(s).\n");
        let mut items = Vec::new();
        for a in alerts {
            let state = match a.kind {
                NoticeKind::Raised => "raised",
                NoticeKind::Updated => "changed",
                NoticeKind::Resolved => "RESOLVED",
            };
            let _ = writeln!(
                text,
                "* {} {} ({state}; opened {}): {}",
                a.severity.as_str().to_uppercase(),
                a.rule,
                a.opened_at,
                a.nurse_text
            );
            for e in &a.evidence {
                let _ = writeln!(
                    text,
                    "    {}: {} {} at {}",
                    e.kind.info().display,
                    e.value,
                    e.kind.unit().symbol(),
                    e.at
                );
            }
            let _ = writeln!(text, "    Why: {}", a.explanation);
            let ack =
                (a.kind != NoticeKind::Resolved).then(|| self.ack_url(&a.alert, recipient, now));
            if let Some(url) = &ack {
                let _ = writeln!(text, "    Acknowledge: {url}");
            }
            text.push('\n');
            items.push(json!({
                "alert": a.alert,
                "rule": a.rule,
                "state": a.kind,
                "severity": a.severity,
                "opened_at": a.opened_at,
                "at": a.at,
                "text": a.nurse_text,
                "explanation": a.explanation,
                "evidence": a.evidence,
                "ack_url": ack,
            }));
        }
        let _ = writeln!(text, "Open the patient in the console: {patient_url}");
        let mut short = format!(
            "RPM {} {patient}: {}",
            top.severity.as_str().to_uppercase(),
            top.nurse_text
        );
        if alerts.len() > 1 {
            let _ = write!(short, " (+{} more)", alerts.len() - 1);
        }
        if top.kind == NoticeKind::Resolved {
            short = format!("RPM resolved {patient}: {}", top.nurse_text);
        } else {
            let _ = write!(short, " Ack: {}", self.ack_url(&top.alert, recipient, now));
        }
        let json = json!({
            "notifications": rows.iter().map(|n| n.row.id).collect::<Vec<_>>(),
            "recipient": recipient,
            "patient": patient,
            "console_url": patient_url,
            "alerts": items,
        });
        Rendered {
            subject,
            text,
            short,
            json,
        }
    }
}

/// What a patient is told to do when their plan says nothing.
const DEFAULT_ACTION: &str = "Your care team has been told and will contact you. If you feel \
                              very unwell or have trouble breathing, call your emergency \
                              number now.";

fn render_patient(
    rows: &[Notification],
    alerts: &[&AlertNotice],
    name: &str,
    action_plan: Option<&str>,
) -> Rendered {
    let said: Vec<&str> = {
        let mut v: Vec<&str> = alerts
            .iter()
            .filter(|a| a.kind != NoticeKind::Resolved)
            .filter_map(|a| a.patient_text.as_deref())
            .collect();
        v.dedup();
        v
    };
    let what_to_do = action_plan.unwrap_or(DEFAULT_ACTION);
    let mut text = format!("Hello {name},\n\n");
    for s in &said {
        let _ = writeln!(text, "{s}\n");
    }
    let _ = writeln!(text, "What to do now:\n{what_to_do}\n\nYour care team");
    let short = format!("{} {what_to_do}", said.join(" "));
    let json = json!({
        "notifications": rows.iter().map(|n| n.row.id).collect::<Vec<_>>(),
        "patient": alerts.first().map(|a| &a.patient),
        "messages": said,
        "what_to_do": what_to_do,
    });
    Rendered {
        subject: "A message from your care team".to_owned(),
        text,
        short,
        json,
    }
}
