//! The audit log: `GET /console/audit`, newest first, filtered by a plain GET form (action
//! prefix such as `thresholds.` or `alert.acknowledge`, actor, target), paged by row id.

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::common::{self, ok_page, time_el};
use super::layout::Section;
use crate::console::auth::Staff;
use crate::http::HttpState;
use crate::record::AuditFilter;

const PAGE: u32 = 100;

/// Common action filters.
const ACTIONS: [(&str, &str); 6] = [
    ("", "All"),
    ("alert.acknowledge", "Acknowledgements"),
    ("thresholds.", "Threshold changes"),
    ("auth.", "Sign-ins and sign-outs"),
    ("patient.", "Patient registry"),
    ("user.", "Users"),
];

/// `?action=&actor=&target=&before=`.
#[derive(Debug, Default, Deserialize)]
pub struct AuditParams {
    action: Option<String>,
    actor: Option<String>,
    target: Option<String>,
    before: Option<i64>,
}

fn blank(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// `GET /console/audit`.
pub async fn list(
    State(state): State<HttpState>,
    staff: Staff,
    Query(p): Query<AuditParams>,
) -> Response {
    let action = blank(p.action);
    let actor = blank(p.actor);
    let target = blank(p.target);
    let f = AuditFilter {
        actor: actor.clone(),
        action: action.clone(),
        target: target.clone(),
        since: None,
        before: p.before,
        limit: PAGE,
    };
    let rows = match state.record.audit_entries(&f).await {
        Ok(r) => r,
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let cur = action.as_deref().unwrap_or("");
    let body = html! {
        h1 { "Audit log" }
        form class="filters" method="get" action="/console/audit" id="audit-filters" {
            div {
                label for="a-action" { "What" }
                select id="a-action" name="action" {
                    @for (v, l) in ACTIONS { option value=(v) selected[cur == v] { (l) } }
                }
            }
            div { label for="a-actor" { "Who" } input id="a-actor" name="actor" type="text" value=(actor.as_deref().unwrap_or("")); }
            div { label for="a-target" { "On" span class="hint" { " (patient:KEY, alert:ID, user:NAME)" } } input id="a-target" name="target" type="text" value=(target.as_deref().unwrap_or("")); }
            div class="actions" { button type="submit" { "Filter" } a class="button secondary" href="/console/audit" { "Clear" } }
        }
        @if rows.is_empty() {
            p class="muted" { "Nothing in the audit log matches." }
        } @else {
            div class="table-wrap" {
                table id="audit" {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "On" } th scope="col" { "Why" } } }
                    tbody {
                        @for r in &rows {
                            tr data-action=(r.action) {
                                td class="nowrap" { (time_el(r.at)) }
                                td { (r.actor) }
                                td { code { (r.action) } }
                                td { (r.target) }
                                td { (r.reason) }
                            }
                        }
                    }
                }
            }
            @if rows.len() as u32 == PAGE {
                @if let Some(last) = rows.last() {
                    p { a href={ "/console/audit?before=" (last.id) "&action=" (common::urlencode(cur)) "&actor=" (common::urlencode(actor.as_deref().unwrap_or(""))) "&target=" (common::urlencode(target.as_deref().unwrap_or(""))) } { "Older entries" } }
                }
            }
        }
    };
    ok_page("Audit log", Section::Audit, &staff, None, body)
}
