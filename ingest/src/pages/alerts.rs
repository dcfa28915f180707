//! The alert inbox: `GET /console/alerts` (open alerts, worst and oldest first, each with its
//! explanation, escalation state, who was notified and the acknowledge form; failed
//! notifications on top, since nobody was told), `GET /console/alerts?view=resolved` (the
//! resolved history, newest first, paged), and `POST /console/alerts/{uid}/acknowledge` (a
//! note is required; the acknowledgement stops escalation and is in the audit log).

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use notifier::{AckSource, Acknowledgement, AlertId, Timestamp};
use serde::Deserialize;
use serde_json::Value as Json;
use time::OffsetDateTime;

use super::common::{self, age, ok_page, patient_href, patient_label, severity, time_el};
use super::layout::{Flash, Section, csrf_field};
use crate::console::auth::Staff;
use crate::http::HttpState;
use crate::record::{InboxAlert, InboxQuery, NotificationView};

/// Alerts on one page.
const PAGE: u32 = 100;

/// `?view=resolved&before=ID&done=ack`.
#[derive(Debug, Default, Deserialize)]
pub struct InboxParams {
    view: Option<String>,
    before: Option<i64>,
    /// Set after an acknowledgement, to say so.
    done: Option<String>,
}

/// The acknowledge form.
#[derive(Debug, Default, Deserialize)]
pub struct AckForm {
    #[serde(default)]
    note: String,
}

/// `GET /console/alerts`.
pub async fn inbox(
    State(state): State<HttpState>,
    staff: Staff,
    Query(p): Query<InboxParams>,
) -> Response {
    let resolved = p.view.as_deref() == Some("resolved");
    let q = InboxQuery {
        resolved,
        patient: None,
        limit: PAGE,
        before: p.before.filter(|_| resolved),
    };
    let alerts = match state.record.alert_inbox(&q).await {
        Ok(a) => a,
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let failed = match state.record.failed_notifications(20).await {
        Ok(f) => f,
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let csrf = staff.csrf().unwrap_or_default().to_owned();
    let flash = match p.done.as_deref() {
        Some("ack") => Some(Flash::Ok(
            "Alert acknowledged: escalation has stopped.".into(),
        )),
        _ => None,
    };
    let now = OffsetDateTime::now_utc();
    let body = html! {
        h1 { "Alert inbox" }
        nav aria-label="Inbox views" {
            ul class="ranges" {
                li { a href="/console/alerts" aria-current=(if resolved { "false" } else { "true" }) { "Open" } }
                li { a href="/console/alerts?view=resolved" aria-current=(if resolved { "true" } else { "false" }) { "Resolved history" } }
            }
        }
        @if !failed.is_empty() {
            section class="flash error" aria-labelledby="failed-h" id="failed-notifications" {
                h2 id="failed-h" { "Notifications that could not be delivered" }
                p { "Nobody was told about these alerts by the channel shown: check them here." }
                ul {
                    @for n in &failed {
                        li { (failed_line(n)) }
                    }
                }
            }
        }
        @if alerts.is_empty() {
            p class="muted" id="no-alerts" {
                @if resolved { "No resolved alerts yet." } @else { "No open alerts." }
            }
        } @else {
            p class="muted" {
                (alerts.len()) @if resolved { " resolved alerts, newest first." } @else { " open alerts, most severe first, then oldest first." }
            }
            ul class="alerts" {
                @for a in &alerts {
                    li { (card(a, &csrf, now, !resolved)) }
                }
            }
            @if resolved && alerts.len() as u32 == PAGE {
                @if let Some(last) = alerts.last() {
                    p { a href={ "/console/alerts?view=resolved&before=" (last.id) } { "Older alerts" } }
                }
            }
        }
    };
    ok_page("Alert inbox", Section::Alerts, &staff, flash.as_ref(), body)
}

fn failed_line(n: &NotificationView) -> Markup {
    html! {
        "To " strong { (recipient(&n.recipient)) } " by " (n.channel) ", after " (n.attempts) " attempts"
        @if let Some(e) = &n.last_error { ": " span class="muted" { (e) } }
        @if let Some(p) = &n.patient { " — " a href=(patient_href(p.as_str())) { "patient " (p.as_str()) } }
    }
}

/// A recipient as people read it: the outbox names one as JSON (`{"type":"staff",
/// "person":"nurse.duty","tier":0}`, `{"type":"patient","patient":"pk-1"}`) or a plain id.
fn recipient(r: &str) -> String {
    match serde_json::from_str::<Json>(r) {
        Ok(v) if v["type"] == "patient" => "the patient".to_owned(),
        Ok(v) if v.is_object() => {
            let who = v["person"]
                .as_str()
                .or(v["id"].as_str())
                .unwrap_or("someone")
                .to_owned();
            match v["tier"].as_u64() {
                Some(t) => format!("{who} (tier {})", t + 1),
                None => who,
            }
        }
        _ => r.to_owned(),
    }
}

fn escalation(state: &str) -> Markup {
    let (class, text) = match state {
        "acknowledged" => ("badge ok", "acknowledged"),
        "notified" => ("badge warn", "notified, awaiting acknowledgement"),
        "failed" => ("badge warn", "notification failed"),
        "not_notified" => ("badge", "not notified"),
        other => ("badge", other),
    };
    html! { span class=(class) { (text) } }
}

/// One alert as a card. `ack` shows the acknowledge form when it is not yet acknowledged.
pub fn card(a: &InboxAlert, csrf: &str, now: OffsetDateTime, ack: bool) -> Markup {
    let sev = match a.severity.as_str() {
        "low" | "medium" | "high" | "emergency" => a.severity.as_str(),
        _ => "low",
    };
    let open_for = common::seconds_since(a.opened_at, now);
    html! {
        article class={ "alert-card " (sev) } data-rule=(a.rule) data-uid=(a.uid) data-state=(a.state) {
            header {
                (severity(&a.severity))
                h3 { a class="patient-link" href=(patient_href(a.patient.as_str())) { (patient_label(a.patient_name.as_deref(), a.patient.as_str())) } }
                span class="muted" {
                    @if a.state == "open" { "open for " (age(open_for)) } @else { "resolved" }
                }
            }
            p class="explain" { (a.nurse_text) }
            dl {
                dt { "Rule" } dd { code { (a.rule) } " · " span class="muted" { (a.profile) } }
                dt { "Raised" } dd { (time_el(a.opened_at)) }
                @if let Some(r) = a.resolved_at { dt { "Resolved" } dd { (time_el(r)) } }
                (explanation(&a.explanation))
                dt { "Escalation" } dd { (escalation(&a.escalation)) }
                dt { "Notified" }
                dd {
                    @if a.notifications.is_empty() { span class="muted" { "nobody" } }
                    @else {
                        ul class="plain" {
                            @for n in &a.notifications {
                                li {
                                    (recipient(&n.recipient)) " by " (n.channel) ": "
                                    @if n.status == "failed" { strong { "failed" } } @else { (n.status) }
                                    @if n.attempts > 1 { " (" (n.attempts) " attempts)" }
                                    @if let (Some(e), true) = (&n.last_error, n.status != "sent") { " — " span class="muted" { (e) } }
                                }
                            }
                        }
                    }
                }
                @if let Some(ackv) = &a.acknowledgement {
                    dt { "Acknowledged" }
                    dd class="acknowledged" { (ackv.by) ", " (time_el(ackv.at)) @if !ackv.note.is_empty() { ": “" (ackv.note) "”" } }
                }
            }
            @if ack && a.acknowledgement.is_none() && !csrf.is_empty() {
                form class="ack" method="post" action={ "/console/alerts/" (common::urlencode(&a.uid)) "/acknowledge" } {
                    (csrf_field(csrf))
                    label for={ "note-" (a.uid) } { "Note " span class="hint" { "(required: what you did or will do)" } }
                    textarea id={ "note-" (a.uid) } name="note" required maxlength="2000" {}
                    div { button type="submit" { "Acknowledge" } }
                }
            }
        }
    }
}

fn num(v: &Json) -> Option<String> {
    v.as_f64().map(|f| {
        let s = format!("{f:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    })
}

/// The figures the rule compared, from the stored explanation.
fn explanation(e: &Json) -> Markup {
    let ctx = &e["context"];
    let evidence = e["evidence"].as_array().cloned().unwrap_or_default();
    html! {
        @match ctx["type"].as_str() {
            Some("threshold") => {
                dt { "Limit" } dd { (num(&ctx["limit"]).unwrap_or_default()) @if let Some(c) = num(&ctx["clear"]) { " (clears at " (c) ")" } }
            },
            Some("baseline") => {
                dt { "Baseline" } dd { (num(&ctx["baseline"]).unwrap_or_default()) " (usual over " (num(&ctx["days"]).unwrap_or_default()) " days; drop " (num(&ctx["drop"]).unwrap_or_default()) ")" }
            },
            Some("personal_best") => {
                dt { "Personal best" } dd { (num(&ctx["best"]).unwrap_or_default()) " (drop " (num(&ctx["drop_percent"]).unwrap_or_default()) " %)" }
            },
            Some("trend") => {
                dt { "Recent average" } dd { (num(&ctx["mean"]).unwrap_or_default()) " ± " (num(&ctx["sd"]).unwrap_or_default()) }
            },
            Some("cusum") => {
                dt { "Drift" } dd { "cumulative " (num(&ctx["sum"]).unwrap_or_default()) " over limit " (num(&ctx["limit"]).unwrap_or_default()) }
            },
            Some("news2") => {
                dt { "NEWS2 score" } dd { (num(&ctx["score"]).unwrap_or_default()) " (" (ctx["response"].as_str().unwrap_or("")) "; partial: home vitals only)" }
            },
            Some("missing") => {
                dt { "Missing" } dd { (common::kind_label(ctx["kind"].as_str().unwrap_or(""))) " readings" }
            },
            Some("silent_gateway") => {
                dt { "Gateway" } dd { "not heard from" }
            },
            _ => {},
        }
        @if !evidence.is_empty() {
            dt { "Readings" }
            dd {
                ul class="plain evidence" {
                    @for ev in evidence.iter().take(6) {
                        li {
                            (common::kind_label(ev["kind"].as_str().unwrap_or("")))
                            " " (num(&ev["value"]).unwrap_or_default())
                            @if let Some(t) = ev["at"].as_i64().and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()) {
                                " at " (time_el(t))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /console/alerts/{uid}/acknowledge`.
pub async fn acknowledge(
    State(state): State<HttpState>,
    staff: Staff,
    Path(uid): Path<String>,
    Form(f): Form<AckForm>,
) -> Response {
    let note = f.note.trim();
    if note.is_empty() || note.len() > 2000 {
        return common::error_page(
            StatusCode::BAD_REQUEST,
            &staff,
            "A note is needed",
            "Write what you did or will do about the alert, then acknowledge it.",
        );
    }
    match state.record.alert_is_open(&uid).await {
        Ok(Some(true)) => {}
        Ok(Some(false)) => {
            return common::error_page(
                StatusCode::CONFLICT,
                &staff,
                "Already resolved",
                "This alert has resolved; there is nothing left to acknowledge.",
            );
        }
        Ok(None) => {
            return common::error_page(
                StatusCode::NOT_FOUND,
                &staff,
                "No such alert",
                "No alert has that id.",
            );
        }
        Err(e) => return common::unavailable(Some(&staff), &e),
    }
    let Ok(alert) = AlertId::new(&uid) else {
        return common::error_page(
            StatusCode::NOT_FOUND,
            &staff,
            "No such alert",
            "No alert has that id.",
        );
    };
    let ack = Acknowledgement {
        alert,
        by: AckSource::Console {
            user: staff.0.username.clone(),
        },
        at: Timestamp::now(),
    };
    match crate::http::ack::acknowledge_and_audit(&state, ack, note).await {
        Ok(_) => Redirect::to("/console/alerts?done=ack").into_response(),
        Err((status, message)) => common::error_page(status, &staff, "Not acknowledged", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_named_not_dumped() {
        assert_eq!(
            recipient(r#"{"person":"nurse.duty","tier":0}"#),
            "nurse.duty (tier 1)"
        );
        assert_eq!(recipient("patient"), "patient");
        // As the outbox stores them (notifier::Recipient's JSON).
        assert_eq!(
            recipient(r#"{"type":"staff","person":"charge.cal","tier":1}"#),
            "charge.cal (tier 2)"
        );
        assert_eq!(
            recipient(r#"{"type":"patient","patient":"pk-1"}"#),
            "the patient"
        );
    }

    #[test]
    fn the_explanation_shows_the_figures_compared() {
        let e = serde_json::json!({
            "context": {"type": "threshold", "limit": 90.0, "clear": 92.0},
            "evidence": [{"kind": "spo2", "value": 88.0, "at": 1_700_000_000_000i64, "reading": "x"}],
        });
        let html = explanation(&e).into_string();
        assert!(
            html.contains("Limit") && html.contains("90") && html.contains("clears at 92"),
            "{html}"
        );
        assert!(html.contains("SpO2 88"), "{html}");
        assert!(html.contains("2023-11-14 22:13"), "{html}");
    }
}
