//! The caseload: `GET /console/patients`, every patient with risk at a glance (open alerts and
//! the worst of them, last value per kind, days with readings in the last 30 against the
//! programme's 16, a silent-gateway flag), narrowed by cohort filters given as a plain GET
//! form: condition, "a value below/above X within H hours", "no reading for N days", "open
//! alerts only". Preset cohorts are links to the same filters.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use time::OffsetDateTime;

use super::common::{self, age, ok_page, patient_href, patient_label, severity};
use super::layout::{Flash, Section};
use crate::console::auth::Staff;
use crate::http::HttpState;
use crate::record::{CaseloadRow, CohortFilter, ValueFilter};

/// The filter form as sent (strings, so a bad value is answered with a message, not a bare
/// extractor rejection).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CohortParams {
    condition: Option<String>,
    kind: Option<String>,
    cmp: Option<String>,
    value: Option<String>,
    within: Option<String>,
    silent_days: Option<String>,
    open: Option<String>,
}

/// The kinds the value filter offers.
const FILTER_KINDS: [(&str, &str); 6] = [
    ("spo2", "SpO2 (%)"),
    ("pulse_rate", "Pulse (/min)"),
    ("systolic", "Systolic BP (mmHg)"),
    ("diastolic", "Diastolic BP (mmHg)"),
    ("fev1", "FEV1 (L)"),
    ("pef", "PEF (L/min)"),
];

const CONDITIONS: [(&str, &str); 4] = [
    ("copd", "COPD"),
    ("heart_failure", "Heart failure"),
    ("hypertension", "Hypertension"),
    ("asthma", "Asthma"),
];

/// Preset cohorts: a label and the query that is that cohort.
const PRESETS: [(&str, &str); 4] = [
    (
        "COPD, SpO2 under 90 in 48 h",
        "condition=copd&kind=spo2&cmp=below&value=90&within=48",
    ),
    ("No reading for 2 days", "silent_days=2"),
    ("Open alerts", "open=1"),
    (
        "Systolic over 180 in 7 days",
        "kind=systolic&cmp=above&value=180&within=168",
    ),
];

fn blank(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Turns the form into a filter, or says which field is wrong.
pub fn parse(p: &CohortParams) -> Result<CohortFilter, String> {
    let mut f = CohortFilter {
        condition: blank(&p.condition).map(str::to_owned),
        open_alerts_only: blank(&p.open).is_some_and(|v| v == "1" || v == "on" || v == "true"),
        ..CohortFilter::default()
    };
    if let Some(d) = blank(&p.silent_days) {
        let days: u32 = d
            .parse()
            .ok()
            .filter(|d| (1..=365).contains(d))
            .ok_or_else(|| {
                format!("“No reading for” must be a whole number of days from 1 to 365, not “{d}”.")
            })?;
        f.silent_days = Some(days);
    }
    match (blank(&p.kind), blank(&p.value)) {
        (None, None) => {}
        (Some(_), None) => return Err("Give a value for the measurement filter.".into()),
        (None, Some(_)) => return Err("Choose a measurement for the value filter.".into()),
        (Some(k), Some(v)) => {
            let kind: vitals::Kind = k
                .parse()
                .map_err(|_| format!("Unknown measurement “{k}”."))?;
            let value: f64 = v
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| format!("The value must be a number, not “{v}”."))?;
            let within_hours: u32 = match blank(&p.within) {
                None => 48,
                Some(h) => h
                    .parse()
                    .ok()
                    .filter(|h| (1..=24 * 90).contains(h))
                    .ok_or_else(|| format!("“Within” must be 1 to 2160 hours, not “{h}”."))?,
            };
            let above = match blank(&p.cmp) {
                None | Some("below") => false,
                Some("above") => true,
                Some(other) => {
                    return Err(format!("Compare with “below” or “above”, not “{other}”."));
                }
            };
            f.value = Some(ValueFilter {
                kind,
                above,
                value,
                within_hours,
            });
        }
    }
    Ok(f)
}

/// `GET /console/patients`.
pub async fn caseload(
    State(state): State<HttpState>,
    staff: Staff,
    Query(p): Query<CohortParams>,
) -> Response {
    let (filter, flash) = match parse(&p) {
        Ok(f) => (Some(f), None),
        Err(msg) => (None, Some(Flash::Error(msg))),
    };
    let rows = match &filter {
        Some(f) => match state.record.caseload(f).await {
            Ok(r) => Some(r),
            Err(e) => return common::unavailable(Some(&staff), &e),
        },
        None => None,
    };
    let now = OffsetDateTime::now_utc();
    let body = html! {
        h1 { "Patients" }
        (filter_form(&p))
        @match &rows {
            None => {},
            Some(rows) if rows.is_empty() => p id="no-patients" { "No patient matches these filters." },
            Some(rows) => (table(rows, now)),
        }
    };
    let mut response = ok_page("Patients", Section::Patients, &staff, flash.as_ref(), body);
    if filter.is_none() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    response
}

fn selected(cur: Option<&str>, v: &str) -> bool {
    cur == Some(v)
}

fn filter_form(p: &CohortParams) -> Markup {
    let cond = blank(&p.condition);
    let kind = blank(&p.kind);
    let cmp = blank(&p.cmp).unwrap_or("below");
    html! {
        h2 class="sub" { "Cohorts" }
        ul class="cohorts" {
            @for (label, q) in PRESETS {
                li { a class="button secondary" href={ "/console/patients?" (q) } { (label) } }
            }
        }
        form class="filters" method="get" action="/console/patients" id="cohort-filters" {
            div {
                label for="f-condition" { "Condition" }
                select id="f-condition" name="condition" {
                    option value="" { "Any" }
                    @for (v, l) in CONDITIONS {
                        option value=(v) selected[selected(cond, v)] { (l) }
                    }
                }
            }
            div {
                label for="f-kind" { "Measurement" }
                select id="f-kind" name="kind" {
                    option value="" { "Any" }
                    @for (v, l) in FILTER_KINDS {
                        option value=(v) selected[selected(kind, v)] { (l) }
                    }
                }
            }
            div {
                label for="f-cmp" { "is" }
                select id="f-cmp" name="cmp" {
                    option value="below" selected[cmp == "below"] { "below" }
                    option value="above" selected[cmp == "above"] { "above" }
                }
            }
            div {
                label for="f-value" { "Value" }
                input id="f-value" name="value" type="text" inputmode="decimal" value=(blank(&p.value).unwrap_or(""));
            }
            div {
                label for="f-within" { "Within (hours)" }
                input id="f-within" name="within" type="number" min="1" max="2160" value=(blank(&p.within).unwrap_or("48"));
            }
            div {
                label for="f-silent" { "No reading for (days)" }
                input id="f-silent" name="silent_days" type="number" min="1" max="365" value=(blank(&p.silent_days).unwrap_or(""));
            }
            div {
                label for="f-open" {
                    input id="f-open" name="open" type="checkbox" value="1" checked[blank(&p.open).is_some()];
                    " Open alerts only"
                }
            }
            div class="actions" {
                button type="submit" { "Filter" }
                a class="button secondary" href="/console/patients" { "Clear" }
            }
        }
    }
}

fn last_values(r: &CaseloadRow) -> Markup {
    html! {
        @for (i, l) in r.last.iter().enumerate() {
            @if i > 0 { br; }
            span class="nowrap" {
                (common::kind_label(&l.kind)) " "
                strong { (l.value.as_deref().unwrap_or("—")) }
                " " (l.unit)
            }
        }
    }
}

fn table(rows: &[CaseloadRow], now: OffsetDateTime) -> Markup {
    html! {
        div class="table-wrap" {
            table id="caseload" {
                caption { (rows.len()) " patients" }
                thead {
                    tr {
                        th scope="col" { "Patient" }
                        th scope="col" { "Condition" }
                        th scope="col" { "Open alerts" }
                        th scope="col" { "Last values" }
                        th scope="col" { "Last reading" }
                        th scope="col" { "Days with readings (30)" }
                        th scope="col" { "Gateway" }
                    }
                }
                tbody {
                    @for r in rows {
                        tr data-patient=(r.patient.as_str()) {
                            th scope="row" { a href=(patient_href(r.patient.as_str())) { (patient_label(r.name.as_deref(), r.patient.as_str())) } }
                            td { (r.condition) @if let Some(t) = &r.care_team { br; span class="muted" { (t) } } }
                            td {
                                @if r.open_alerts == 0 { span class="muted" { "none" } }
                                @else {
                                    (r.open_alerts) " "
                                    @if let Some(s) = &r.top_severity { (severity(s)) }
                                }
                            }
                            td { (last_values(r)) }
                            td {
                                @match r.last_reading_at {
                                    Some(t) => { (age(common::seconds_since(t, now))) " ago" },
                                    None => span class="badge warn" { "never" },
                                }
                            }
                            td class="num" {
                                (r.days_with_readings_30) "/30 "
                                @if r.meets_16_of_30 { span class="badge ok" { "meets 16" } }
                                @else { span class="badge warn" { "under 16" } }
                            }
                            td {
                                @if r.silent_gateway { span class="badge warn" { "silent" } }
                                @else { span class="badge ok" { "heard" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> CohortParams {
        serde_urlencoded_like(q)
    }

    /// The presets go through the same parser as the form.
    fn serde_urlencoded_like(q: &str) -> CohortParams {
        let mut p = CohortParams::default();
        for pair in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = Some(v.to_owned());
            match k {
                "condition" => p.condition = v,
                "kind" => p.kind = v,
                "cmp" => p.cmp = v,
                "value" => p.value = v,
                "within" => p.within = v,
                "silent_days" => p.silent_days = v,
                "open" => p.open = v,
                other => panic!("unknown field {other}"),
            }
        }
        p
    }

    #[test]
    fn the_presets_are_valid_cohorts() {
        let copd = parse(&params(PRESETS[0].1)).expect("valid");
        assert_eq!(copd.condition.as_deref(), Some("copd"));
        assert_eq!(
            copd.value,
            Some(ValueFilter {
                kind: vitals::Kind::Spo2,
                above: false,
                value: 90.0,
                within_hours: 48
            })
        );
        assert_eq!(
            parse(&params(PRESETS[1].1)).expect("valid").silent_days,
            Some(2)
        );
        assert!(
            parse(&params(PRESETS[2].1))
                .expect("valid")
                .open_alerts_only
        );
        for (_, q) in PRESETS {
            parse(&params(q)).expect(q);
        }
    }

    #[test]
    fn bad_filters_are_refused_with_the_field_named() {
        let e = parse(&params("kind=spo2&value=ninety")).expect_err("not a number");
        assert!(e.contains("ninety"), "{e}");
        assert!(
            parse(&params("kind=height&value=1"))
                .expect_err("kind")
                .contains("height")
        );
        assert!(parse(&params("value=90")).is_err());
        assert!(parse(&params("kind=spo2")).is_err());
        assert!(parse(&params("silent_days=0")).is_err());
        assert!(parse(&params("kind=spo2&value=90&cmp=sideways")).is_err());
        assert!(parse(&params("kind=spo2&value=NaN")).is_err());
        // Empty fields are "not set".
        assert_eq!(
            parse(&params("condition=&kind=&value=&silent_days=")),
            Ok(CohortFilter::default())
        );
    }
}
