//! A patient's timeline: `GET /console/patients/{key}?range=48h|7d|30d|90d`. Charts of SpO2,
//! pulse, blood pressure, FEV1, PEF and a partial NEWS2 over the range, with the thresholds in
//! force drawn on them, the baselines the patient's baseline and personal-best rules compare
//! readings with (computed by the rules crate's own day summaries from the same readings the
//! engine saw, so the chart shows what the rule saw), and alerts marked, including those raised
//! before the range and still open in it; the readings table beneath, with device flags
//! written out. [`charts`] builds the charts from what the record returns and is pure, so it
//! is tested without a database.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use rules::{ReferenceSeries, RuleKind, RuleSpec, Ruleset, Timestamp};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};
use vitals::{Kind, PatientKey, Value};

use super::chart::{self, AlertMark, Band, Chart, Line, LineKind, Point, Range, Series, Trace};
use super::common::{self, ok_page, patient_href, patient_label, time_el};
use super::layout::Section;
use crate::console::auth::Staff;
use crate::http::HttpState;
use crate::record::{InboxAlert, Page, Record, RecordError, StoredReading};

/// Most readings drawn on one timeline (90 days of four-times-daily measuring is ~1 100).
const MAX_READINGS: u32 = 1000;
/// Most values a drawn baseline is computed from: a rule's window of home spot checks is a
/// few hundred; a continuous oximeter's is far more, and its baseline is then not drawn (and
/// the page says so).
const MAX_BASELINE_VALUES: u32 = 20_000;

/// A baseline or personal-best rule's reference, as the charts draw it.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The rule.
    pub rule: String,
    /// What it compared each reading with.
    pub series: ReferenceSeries,
}

/// The references of the baseline and personal-best rules of `ruleset` for readings measured
/// in `[from, to)`, computed from the record's values as the engine computes them (the
/// rule's window before `from` included; device-flagged values left out, as the engine
/// leaves them out). The second list names the rules whose series was too long to load.
pub async fn references(
    record: &Record,
    patient: &PatientKey,
    ruleset: &Ruleset,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<(Vec<Reference>, Vec<String>), RecordError> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for rule in &ruleset.rules {
        let (measure, days) = match rule.check {
            rules::Check::BaselineDrop { measure, days, .. }
            | rules::Check::BestDrop { measure, days, .. } => (measure, days),
            _ => continue,
        };
        let since = from - Duration::days(i64::from(days) + 1);
        let Some(values) = record
            .value_series(patient, measure, since, to, MAX_BASELINE_VALUES)
            .await?
        else {
            skipped.push(rule.id.clone());
            continue;
        };
        let values: Vec<(Timestamp, f64)> = values
            .into_iter()
            .filter(|(_, _, flags)| !flags.questions_the_value())
            .map(|(at, v, _)| (Timestamp::from_datetime(at), v))
            .collect();
        if let Some(series) = rules::reference_series(&rule.check, &values) {
            out.push(Reference {
                rule: rule.id.clone(),
                series,
            });
        }
    }
    Ok((out, skipped))
}

/// `?range=`.
#[derive(Debug, Default, Deserialize)]
pub struct RangeParams {
    range: Option<String>,
}

/// Which chart a measurement kind is drawn on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Panel {
    Spo2,
    Pulse,
    Bp,
    Fev1,
    Pef,
    News2,
}

impl Panel {
    const ALL: [Panel; 6] = [
        Panel::Spo2,
        Panel::Pulse,
        Panel::Bp,
        Panel::Fev1,
        Panel::Pef,
        Panel::News2,
    ];

    fn of(kind: &str) -> Option<Panel> {
        Some(match kind {
            "spo2" => Panel::Spo2,
            "pulse_rate" => Panel::Pulse,
            "systolic" | "diastolic" | "mean_arterial_pressure" => Panel::Bp,
            "fev1" => Panel::Fev1,
            "pef" => Panel::Pef,
            _ => return None,
        })
    }

    fn title(self) -> &'static str {
        match self {
            Panel::Spo2 => "SpO2",
            Panel::Pulse => "Pulse",
            Panel::Bp => "Blood pressure",
            Panel::Fev1 => "FEV1",
            Panel::Pef => "Peak expiratory flow",
            Panel::News2 => "NEWS2 (partial: home vitals only)",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Panel::Spo2 => "%",
            Panel::Pulse => "/min",
            Panel::Bp => "mmHg",
            Panel::Fev1 => "L",
            Panel::Pef => "L/min",
            Panel::News2 => "",
        }
    }

    fn span(self) -> Option<(f64, f64)> {
        match self {
            Panel::Spo2 => Some((88.0, 100.0)),
            Panel::Pulse => Some((50.0, 110.0)),
            Panel::Bp => Some((60.0, 160.0)),
            Panel::News2 => Some((0.0, 7.0)),
            Panel::Fev1 | Panel::Pef => None,
        }
    }

    fn kinds(self) -> &'static [(Kind, &'static str)] {
        match self {
            Panel::Spo2 => &[(Kind::Spo2, "SpO2")],
            Panel::Pulse => &[(Kind::PulseRate, "Pulse")],
            Panel::Bp => &[(Kind::Systolic, "Systolic"), (Kind::Diastolic, "Diastolic")],
            Panel::Fev1 => &[(Kind::Fev1, "FEV1")],
            Panel::Pef => &[(Kind::Pef, "PEF")],
            Panel::News2 => &[],
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    v.number().map(|d| d.to_f64()).filter(|f| f.is_finite())
}

/// The NEWS2 rule's minimum response as a score (low 1, medium 5, high 7).
fn response_score(r: &str) -> f64 {
    match r {
        "medium" => 5.0,
        "high" => 7.0,
        _ => 1.0,
    }
}

/// A partial NEWS2 at each oximetry or blood-pressure reading, from the latest SpO2, systolic
/// and pulse measured within `fresh` before it (what the rules engine scores).
fn news2_points(
    readings: &[StoredReading],
    scale: rules::news2::Spo2Scale,
    on_oxygen: bool,
    fresh: Duration,
) -> Vec<Point> {
    let mut last: BTreeMap<&'static str, (OffsetDateTime, f64, bool)> = BTreeMap::new();
    let mut out = Vec::new();
    for r in readings {
        let mut touched = false;
        for o in &r.values {
            let key = match o.kind {
                Kind::Spo2 => "spo2",
                Kind::Systolic => "systolic",
                Kind::PulseRate => "pulse",
                _ => continue,
            };
            if let Some(v) = number(&o.value) {
                last.insert(key, (r.measured_at, v, r.flags.questions_the_value()));
                touched = true;
            }
        }
        if !touched {
            continue;
        }
        let at = r.measured_at;
        let get = |k| {
            last.get(k)
                .filter(|(t, _, _)| at - *t <= fresh)
                .map(|(_, v, _)| *v)
        };
        let flagged = ["spo2", "systolic", "pulse"]
            .iter()
            .any(|k| last.get(k).is_some_and(|(t, _, f)| at - *t <= fresh && *f));
        let s = rules::news2::score(
            get("spo2"),
            get("systolic"),
            get("pulse"),
            None,
            scale,
            on_oxygen,
        );
        out.push(Point {
            at,
            value: f64::from(s.total),
            flagged,
        });
    }
    out
}

fn fmt(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Threshold lines, escalation bands and the NEWS2 alert line from the rules in force.
fn rule_lines(panel: Panel, rules: &[RuleSpec], c: &mut Chart) {
    for r in rules.iter().filter(|r| r.enabled != Some(false)) {
        let measure = r.measure.as_deref().unwrap_or("");
        match r.kind {
            Some(RuleKind::Below | RuleKind::Above) if Panel::of(measure) == Some(panel) => {
                let below = r.kind == Some(RuleKind::Below);
                let who = if panel == Panel::Bp {
                    format!("{} ", common::kind_label(measure))
                } else {
                    String::new()
                };
                let Some(raise) = r.raise else { continue };
                c.lines.push(Line {
                    value: raise,
                    kind: LineKind::Raise,
                    label: format!("{who}{} {}", if below { "≤" } else { "≥" }, fmt(raise)),
                });
                if let Some(clear) = r.clear {
                    c.lines.push(Line {
                        value: clear,
                        kind: LineKind::Clear,
                        label: format!("clear {}", fmt(clear)),
                    });
                }
                let worst =
                    r.bands
                        .iter()
                        .flatten()
                        .map(|b| b.at)
                        .fold(None, |acc: Option<f64>, at| {
                            Some(match acc {
                                None => at,
                                Some(a) if below => a.min(at),
                                Some(a) => a.max(at),
                            })
                        });
                let edge = worst.unwrap_or(if below {
                    raise - (raise.abs() * 0.03).max(1.0)
                } else {
                    raise + (raise.abs() * 0.03).max(1.0)
                });
                c.bands.push(Band {
                    from: edge.min(raise),
                    to: edge.max(raise),
                    label: format!(
                        "alert zone ({} {})",
                        r.id,
                        if below { "low" } else { "high" }
                    ),
                });
            }
            Some(RuleKind::News2) if panel == Panel::News2 => {
                let min = r.min_response.map(|m| m.as_str()).unwrap_or("low");
                let v = response_score(min);
                c.lines.push(Line {
                    value: v,
                    kind: LineKind::Raise,
                    label: format!("≥ {} ({min})", fmt(v)),
                });
            }
            _ => {}
        }
    }
}

/// The charts of a timeline: one per panel, in a fixed order.
pub fn charts(
    readings: &[StoredReading],
    rules: &[RuleSpec],
    references: &[Reference],
    alerts: &[InboxAlert],
    range: Range,
    to: OffsetDateTime,
) -> Vec<Chart> {
    let from = to - range.duration();
    let news2_rule = rules
        .iter()
        .find(|r| r.kind == Some(RuleKind::News2) && r.enabled != Some(false));
    let scale = match news2_rule.and_then(|r| r.scale) {
        Some(2) => rules::news2::Spo2Scale::Two,
        _ => rules::news2::Spo2Scale::One,
    };
    let on_oxygen = news2_rule.and_then(|r| r.on_oxygen).unwrap_or(false);
    let fresh = news2_rule
        .and_then(|r| r.fresh)
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::hours(1));
    Panel::ALL
        .into_iter()
        .map(|panel| {
            let mut c = Chart::new(panel.title(), panel.unit(), from, to);
            c.y_span = panel.span();
            c.max_gap = range.max_gap();
            if panel == Panel::News2 {
                c.series.push(Series {
                    label: "NEWS2".into(),
                    points: news2_points(readings, scale, on_oxygen, fresh),
                });
            }
            for (kind, label) in panel.kinds() {
                let points = readings
                    .iter()
                    .flat_map(|r| {
                        r.values
                            .iter()
                            .filter(|o| o.kind == *kind)
                            .filter_map(move |o| {
                                Some(Point {
                                    at: r.measured_at,
                                    value: number(&o.value)?,
                                    flagged: r.flags.questions_the_value(),
                                })
                            })
                    })
                    .collect();
                c.series.push(Series {
                    label: (*label).into(),
                    points,
                });
            }
            for r in references
                .iter()
                .filter(|r| Panel::of(r.series.measure.as_str()) == Some(panel))
            {
                let (name, raise) = if r.series.personal_best {
                    ("best", "best −%")
                } else {
                    ("baseline", "baseline −")
                };
                let drop = rules
                    .iter()
                    .find(|s| s.id == r.rule)
                    .and_then(|s| s.drop)
                    .map(fmt)
                    .unwrap_or_default();
                let raise = if r.series.personal_best {
                    raise.replace('%', &format!("{drop} %"))
                } else {
                    format!("{raise}{drop}")
                };
                c.traces.push(Trace {
                    kind: LineKind::Baseline,
                    label: name.into(),
                    points: r
                        .series
                        .points
                        .iter()
                        .map(|p| (p.at.to_datetime(), p.reference))
                        .collect(),
                });
                c.traces.push(Trace {
                    kind: LineKind::Raise,
                    label: raise,
                    points: r
                        .series
                        .points
                        .iter()
                        .map(|p| (p.at.to_datetime(), p.raise_at))
                        .collect(),
                });
            }
            rule_lines(panel, rules, &mut c);
            for a in alerts {
                let ctx = a.explanation["context"]["type"].as_str();
                let kind = a.explanation["evidence"][0]["kind"].as_str().unwrap_or("");
                let on = if ctx == Some("news2") {
                    Some(Panel::News2)
                } else {
                    Panel::of(kind)
                };
                if on == Some(panel) {
                    c.alerts.push(AlertMark {
                        at: a.opened_at,
                        until: a.resolved_at,
                        severity: a.severity.clone(),
                        label: format!("{}: {}", a.rule, a.nurse_text),
                    });
                }
            }
            c
        })
        .collect()
}

/// `GET /console/patients/{key}`.
pub async fn timeline(
    State(state): State<HttpState>,
    staff: Staff,
    Path(key): Path<String>,
    Query(q): Query<RangeParams>,
) -> Response {
    let Ok(key) = PatientKey::new(key) else {
        return common::error_page(
            StatusCode::NOT_FOUND,
            &staff,
            "No such patient",
            "That is not a patient key.",
        );
    };
    let range = q
        .range
        .as_deref()
        .and_then(Range::parse)
        .unwrap_or_default();
    let record = &state.record;
    let patient = match record.patient(&key).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return common::error_page(
                StatusCode::NOT_FOUND,
                &staff,
                "No such patient",
                "No patient has that key.",
            );
        }
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let to = OffsetDateTime::now_utc();
    let from = to - range.duration();
    let page = match record
        .readings_for_patient(&key, from, to, Page::first(MAX_READINGS))
        .await
    {
        Ok(p) => p,
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let alerts = match record.alerts_in_range(&key, from, to).await {
        Ok(a) => a,
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let in_force = match super::thresholds::rules_in_force(&state, &patient).await {
        Ok(r) => r,
        Err(e) => return common::unavailable(Some(&staff), &e),
    };
    let (refs, not_drawn) = match &in_force {
        Some(f) => match references(record, &key, &f.ruleset, from, to).await {
            Ok(r) => r,
            Err(e) => return common::unavailable(Some(&staff), &e),
        },
        None => (Vec::new(), Vec::new()),
    };
    let rules = in_force.map(|r| r.rules).unwrap_or_default();
    let charts = charts(&page.readings, &rules, &refs, &alerts, range, to);
    let truncated = page.next.is_some();
    let body = html! {
        (header(&patient, "timeline"))
        nav aria-label="Time range" {
            ul class="ranges" {
                @for r in Range::ALL {
                    li { a href={ (patient_href(key.as_str())) "?range=" (r.as_str()) } aria-current=(if r == range { "true" } else { "false" }) { (r.label()) } }
                }
            }
        }
        @if !not_drawn.is_empty() {
            p class="flash" { "The baseline of " (not_drawn.join(", ")) " is not drawn: more than " (MAX_BASELINE_VALUES) " readings in its window." }
        }
        @if truncated {
            p class="flash" { "Only the first " (MAX_READINGS) " readings of this range are shown; choose a shorter range for the rest." }
        }
        div class="charts" {
            @for c in &charts {
                figure class="chart-fig" {
                    figcaption { (c.title) @if !c.unit.is_empty() { " (" (c.unit) ")" } }
                    (chart::svg(c))
                }
            }
        }
        p class="legend" {
            "Solid dots: readings. Hollow diamonds: readings the device flagged (movement, poor signal, loose cuff…), not joined to the line. "
            "Dashed red: alert thresholds, shaded: alert zone. Dotted green steps: the baseline (median of daily medians) or personal best each of the patient's baseline rules compares readings with, with the level that raises in dashed red beside it. "
            "Triangles: alerts raised; an arrow at the left edge: an alert raised before this range, still open in it; bars along the top: how long each alert was open."
        }
        h2 id="readings-h" { "Readings" }
        (readings_table(&page.readings))
    };
    ok_page(
        &format!("Patient {}", key.as_str()),
        Section::Patients,
        &staff,
        None,
        body,
    )
}

/// The patient's name, key and links, atop each of the patient's pages.
pub fn header(p: &crate::record::Patient, current: &str) -> Markup {
    let href = patient_href(p.key.as_str());
    html! {
        h1 { (patient_label(p.display_name.as_deref(), p.key.as_str())) }
        p class="muted" {
            (p.condition)
            @if let Some(t) = &p.care_team { " · team " (t) }
        }
        nav aria-label="Patient" {
            ul class="ranges" {
                li { a href=(href) aria-current=(if current == "timeline" { "true" } else { "false" }) { "Timeline" } }
                li { a href={ (href) "/thresholds" } aria-current=(if current == "thresholds" { "true" } else { "false" }) { "Thresholds" } }
            }
        }
    }
}

fn readings_table(readings: &[StoredReading]) -> Markup {
    html! {
        @if readings.is_empty() {
            p class="muted" { "No readings in this range." }
        } @else {
            div class="table-wrap" {
                table id="readings" aria-labelledby="readings-h" {
                    thead {
                        tr {
                            th scope="col" { "Measured" }
                            th scope="col" { "Values" }
                            th scope="col" { "Device" }
                            th scope="col" { "Flags" }
                        }
                    }
                    tbody {
                        @for r in readings.iter().rev() {
                            @let flagged = r.flags.questions_the_value();
                            tr class=[flagged.then_some("flagged")] {
                                td class="nowrap" { (time_el(r.measured_at)) }
                                td {
                                    @for (i, o) in r.values.iter().enumerate() {
                                        @if i > 0 { ", " }
                                        span class="nowrap" {
                                            (o.kind.info().display) " "
                                            @match o.value {
                                                Value::Number(d) => strong { (d) },
                                                Value::Absent(a) => em { "no value (" (format!("{a:?}").to_lowercase()) ")" },
                                            }
                                            " " (o.unit)
                                        }
                                    }
                                }
                                td class="muted" { (r.device) }
                                td {
                                    @if r.flags.is_empty() { span class="muted" { "none" } }
                                    @else {
                                        @for (i, f) in r.flags.iter().enumerate() {
                                            @if i > 0 { ", " }
                                            @if f.questions_the_value() { strong class="flag" { (f.as_str()) } } @else { (f.as_str()) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
