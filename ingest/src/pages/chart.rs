//! Server-rendered SVG charts for the patient timeline: one pure function, [`render`], from a
//! [`Chart`] (series of timed values with a device-quality flag, threshold lines and bands, a
//! baseline, alert markers and the time range shown) to an SVG string. No I/O, no clock: the
//! range is given, so the same input always draws the same picture and the tests can check it.
//!
//! What the picture promises a reader:
//! - values are placed on a linear time axis over exactly the range asked for; points outside
//!   it and non-finite values are left out;
//! - a series' line joins only trusted points and breaks across a gap longer than
//!   [`Chart::max_gap`], so a week without readings is never drawn as a straight line;
//! - a point the device flagged (motion, poor signal, cuff loose…) is drawn as a hollow
//!   diamond, off the line, never as a solid dot: the shape differs, not only the colour;
//! - a baseline that moves (the rules' rolling baseline or personal best, and the level that
//!   raises beside it) is a stepped trace: it holds its value until the next change, and
//!   breaks across the same gaps as the readings;
//! - an alert raised inside the range is a triangle at its time; one raised before the range
//!   (still open, or resolved within it) is an arrow at the left edge, so an alert is never
//!   missing from a chart because it began earlier; a bar along the top spans the time each
//!   alert was open;
//! - each point, threshold, band, baseline and alert carries a `<title>` (a tooltip and what a
//!   screen reader announces), and the whole chart a `<title>`/`<desc>` summary;
//! - every text that comes from outside (labels, rule names) is XML-escaped.
//!
//! The SVG has a fixed `viewBox` and no width or height, so CSS sizes it to its container
//! (`width: 100%`) on a ward PC and on a phone alike.

use std::fmt::Write as _;

use maud::{Markup, PreEscaped, html};
use time::{Duration, OffsetDateTime, UtcOffset};

/// Width of the drawing in `viewBox` units. Small on purpose: text stays legible when the
/// chart is scaled down to a phone's width.
pub const WIDTH: f64 = 480.0;
/// Height of the drawing in `viewBox` units.
pub const HEIGHT: f64 = 220.0;
const LEFT: f64 = 40.0;
const RIGHT: f64 = 56.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 26.0;

/// The time ranges the timeline offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Range {
    /// The last 48 hours.
    #[default]
    Hours48,
    /// The last 7 days.
    Days7,
    /// The last 30 days.
    Days30,
    /// The last 90 days.
    Days90,
}

impl Range {
    /// Every range, shortest first (the order of the range picker).
    pub const ALL: [Range; 4] = [Range::Hours48, Range::Days7, Range::Days30, Range::Days90];

    /// The query-string value (`?range=7d`).
    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hours48 => "48h",
            Range::Days7 => "7d",
            Range::Days30 => "30d",
            Range::Days90 => "90d",
        }
    }

    /// A human label.
    pub fn label(self) -> &'static str {
        match self {
            Range::Hours48 => "48 hours",
            Range::Days7 => "7 days",
            Range::Days30 => "30 days",
            Range::Days90 => "90 days",
        }
    }

    /// Parses a query-string value; `None` for anything else.
    pub fn parse(s: &str) -> Option<Range> {
        Range::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// How long the range is.
    pub fn duration(self) -> Duration {
        match self {
            Range::Hours48 => Duration::hours(48),
            Range::Days7 => Duration::days(7),
            Range::Days30 => Duration::days(30),
            Range::Days90 => Duration::days(90),
        }
    }

    /// The gap after which a line is broken: longer than the usual spacing of home readings
    /// at this zoom, so a missed day shows as a break on the short ranges.
    pub fn max_gap(self) -> Duration {
        match self {
            Range::Hours48 => Duration::hours(14),
            Range::Days7 => Duration::hours(30),
            Range::Days30 | Range::Days90 => Duration::days(3),
        }
    }
}

/// One value at one time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// When it was measured.
    pub at: OffsetDateTime,
    /// The value, in the chart's unit.
    pub value: f64,
    /// The device questioned the measurement (drawn hollow, off the line).
    pub flagged: bool,
}

/// A line of points (SpO2; or systolic and diastolic on one chart).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Its name in the legend and tooltips (`Systolic`).
    pub label: String,
    /// The points, in any order (they are sorted by time when drawn).
    pub points: Vec<Point>,
}

/// What a horizontal line means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// An alert is raised across it.
    Raise,
    /// The alert clears back across it.
    Clear,
    /// The patient's personal baseline (or best).
    Baseline,
}

impl LineKind {
    fn class(self) -> &'static str {
        match self {
            LineKind::Raise => "thr raise",
            LineKind::Clear => "thr clear",
            LineKind::Baseline => "baseline",
        }
    }
}

/// A horizontal line at a value.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// The value.
    pub value: f64,
    /// What it is.
    pub kind: LineKind,
    /// Its label at the right edge (`raise 90`).
    pub label: String,
}

/// A value that changes over time, drawn as steps: the rules' rolling baseline, or the level
/// that raises relative to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// What it is: [`LineKind::Baseline`] or [`LineKind::Raise`].
    pub kind: LineKind,
    /// Its label at the right edge, before the latest value (`baseline`).
    pub label: String,
    /// (from when, value), in time order. The value holds until the next point.
    pub points: Vec<(OffsetDateTime, f64)>,
}

/// A shaded horizontal band (a target range, an escalation band).
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    /// Lower edge.
    pub from: f64,
    /// Upper edge.
    pub to: f64,
    /// What it is (`target 92–96 %`).
    pub label: String,
}

/// A marker where an alert was raised.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertMark {
    /// When it was raised.
    pub at: OffsetDateTime,
    /// When it was resolved; `None` while it is open.
    pub until: Option<OffsetDateTime>,
    /// Severity name (`low`, `medium`, `high`, `emergency`): also its CSS class.
    pub severity: String,
    /// Tooltip: the rule and its explanation.
    pub label: String,
}

/// Everything one chart shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Title (the `<title>` of the SVG; pages show it as the figure caption too).
    pub title: String,
    /// Unit shown beside values (`%`, `/min`, `mmHg`, `L`, `L/min`, or empty).
    pub unit: String,
    /// Start of the time axis.
    pub from: OffsetDateTime,
    /// End of the time axis.
    pub to: OffsetDateTime,
    /// Offset the axis labels are written in.
    pub offset: UtcOffset,
    /// The lines of points.
    pub series: Vec<Series>,
    /// Threshold and baseline lines.
    pub lines: Vec<Line>,
    /// Baselines and levels that change over time.
    pub traces: Vec<Trace>,
    /// Shaded bands.
    pub bands: Vec<Band>,
    /// Alert markers.
    pub alerts: Vec<AlertMark>,
    /// The value axis always includes this span (`Some((85.0, 100.0))` for SpO2), widened to
    /// fit the data and lines.
    pub y_span: Option<(f64, f64)>,
    /// Lines break across gaps longer than this.
    pub max_gap: Duration,
}

impl Chart {
    /// An empty chart over `from..to`.
    pub fn new(
        title: impl Into<String>,
        unit: impl Into<String>,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Self {
        Chart {
            title: title.into(),
            unit: unit.into(),
            from,
            to,
            offset: UtcOffset::UTC,
            series: Vec::new(),
            lines: Vec::new(),
            traces: Vec::new(),
            bands: Vec::new(),
            alerts: Vec::new(),
            y_span: None,
            max_gap: Duration::days(3),
        }
    }
}

/// A linear map from a domain to a pixel interval.
#[derive(Clone, Copy, Debug)]
struct Scale {
    d0: f64,
    d1: f64,
    p0: f64,
    p1: f64,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        if self.d1 == self.d0 {
            return (self.p0 + self.p1) / 2.0;
        }
        self.p0 + (v - self.d0) / (self.d1 - self.d0) * (self.p1 - self.p0)
    }
}

/// A "nice" step (1, 2 or 5 × 10ⁿ) giving about `target` intervals over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The value axis: a domain that holds every value, line and band (and `y_span`), widened to
/// whole steps, and its ticks.
fn value_axis(
    chart: &Chart,
    visible: &[(usize, Point)],
    steps: &[Vec<Run>],
) -> (f64, f64, Vec<f64>) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    let mut take = |v: f64| {
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    };
    for (_, p) in visible {
        take(p.value);
    }
    for l in &chart.lines {
        take(l.value);
    }
    for (_, _, v) in steps.iter().flatten().flatten() {
        take(*v);
    }
    for b in &chart.bands {
        take(b.from);
        take(b.to);
    }
    if let Some((a, b)) = chart.y_span {
        take(a);
        take(b);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        let pad = if lo.abs() > 1.0 { lo.abs() * 0.05 } else { 1.0 };
        lo -= pad;
        hi += pad;
    }
    let step = nice_step(hi - lo, 4.0);
    let lo = (lo / step).floor() * step;
    let hi = (hi / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut t = lo;
    while t <= hi + step * 1e-6 && ticks.len() < 20 {
        ticks.push(t);
        t += step;
    }
    (lo, hi, ticks)
}

/// Time ticks: a step from a fixed ladder that gives at most about six labels, aligned to
/// whole steps in the display offset.
fn time_ticks(
    from: OffsetDateTime,
    to: OffsetDateTime,
    offset: UtcOffset,
) -> (Vec<OffsetDateTime>, bool) {
    let span = to - from;
    let ladder = [
        Duration::hours(1),
        Duration::hours(3),
        Duration::hours(6),
        Duration::hours(12),
        Duration::days(1),
        Duration::days(2),
        Duration::days(7),
        Duration::days(14),
        Duration::days(28),
    ];
    let step = ladder
        .into_iter()
        .find(|s| span / *s <= 6.0)
        .unwrap_or(Duration::days(28));
    let with_time = step < Duration::days(1);
    // Align to a whole step in local time: midnight-based for day steps, hour-based otherwise.
    let local = from.to_offset(offset);
    let midnight = local.replace_time(time::Time::MIDNIGHT);
    let mut t = midnight;
    while t < local {
        t += step;
    }
    let mut out = Vec::new();
    while t <= to && out.len() < 16 {
        out.push(t);
        t += step;
    }
    (out, with_time)
}

fn fmt_num(v: f64) -> String {
    // Enough digits for FEV1 (2.15 L) without noise on PEF (410 L/min).
    let s = if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn fmt_coord(v: f64) -> String {
    format!("{v:.1}")
}

fn fmt_time(t: OffsetDateTime, offset: UtcOffset) -> String {
    let t = t.to_offset(offset);
    format!(
        "{} {:02} {} {:02}:{:02}",
        weekday(t.weekday()),
        t.day(),
        month(t.month()),
        t.hour(),
        t.minute()
    )
}

fn weekday(w: time::Weekday) -> &'static str {
    use time::Weekday::*;
    match w {
        Monday => "Mon",
        Tuesday => "Tue",
        Wednesday => "Wed",
        Thursday => "Thu",
        Friday => "Fri",
        Saturday => "Sat",
        Sunday => "Sun",
    }
}

fn month(m: time::Month) -> &'static str {
    use time::Month::*;
    match m {
        January => "Jan",
        February => "Feb",
        March => "Mar",
        April => "Apr",
        May => "May",
        June => "Jun",
        July => "Jul",
        August => "Aug",
        September => "Sep",
        October => "Oct",
        November => "Nov",
        December => "Dec",
    }
}

fn tick_label(t: OffsetDateTime, with_time: bool) -> String {
    if with_time {
        format!("{} {:02}:{:02}", weekday(t.weekday()), t.hour(), t.minute())
    } else {
        format!("{} {}", t.day(), month(t.month()))
    }
}

/// Draws the chart. The result is a complete `<svg>` element.
pub fn render(chart: &Chart) -> String {
    svg(chart).into_string()
}

/// [`render`] as maud markup, to embed in a page without copying.
pub fn svg(chart: &Chart) -> Markup {
    let (from, to) = if chart.to > chart.from {
        (chart.from, chart.to)
    } else {
        (chart.from, chart.from + Duration::hours(1))
    };
    let in_range = |t: OffsetDateTime| t >= from && t <= to;

    // (series index, point), in range and finite, sorted by time.
    let mut visible: Vec<(usize, Point)> = Vec::new();
    for (i, s) in chart.series.iter().enumerate() {
        let mut pts: Vec<Point> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.value.is_finite() && in_range(p.at))
            .collect();
        pts.sort_by_key(|p| p.at);
        visible.extend(pts.into_iter().map(|p| (i, p)));
    }
    let t_of = |t: OffsetDateTime| (t - from).as_seconds_f64();
    let steps: Vec<Vec<Run>> = chart
        .traces
        .iter()
        .map(|tr| trace_runs(tr, from, to, chart.max_gap, &t_of))
        .collect();
    let (y0, y1, yticks) = value_axis(chart, &visible, &steps);
    let x = Scale {
        d0: 0.0,
        d1: (to - from).as_seconds_f64(),
        p0: LEFT,
        p1: WIDTH - RIGHT,
    };
    let y = Scale {
        d0: y0,
        d1: y1,
        p0: HEIGHT - BOTTOM,
        p1: TOP,
    };
    let px = |t: OffsetDateTime| x.at((t - from).as_seconds_f64());
    let (xticks, with_time) = time_ticks(from, to, chart.offset);
    let unit = if chart.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", chart.unit)
    };

    let total = visible.len();
    let flagged = visible.iter().filter(|(_, p)| p.flagged).count();
    // Alerts raised in the range, and those raised before it that were still open in it.
    let alerts_in_range: Vec<&AlertMark> = chart.alerts.iter().filter(|a| in_range(a.at)).collect();
    let earlier: Vec<&AlertMark> = chart
        .alerts
        .iter()
        .filter(|a| a.at < from && a.until.is_none_or(|u| u >= from))
        .collect();
    let desc = summary(
        chart,
        &visible,
        flagged,
        alerts_in_range.len(),
        earlier.len(),
        &unit,
    );

    html! {
        svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img"
            viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } {
            title { (chart.title) }
            desc { (desc) }
            // Bands first, under everything else.
            @for b in &chart.bands {
                @let (top, bottom) = (y.at(b.to.max(b.from)), y.at(b.to.min(b.from)));
                rect class="band" x=(fmt_coord(LEFT)) y=(fmt_coord(top))
                    width=(fmt_coord(WIDTH - RIGHT - LEFT)) height=(fmt_coord((bottom - top).max(0.0))) {
                    title { (b.label) }
                }
            }
            g class="grid" {
                @for t in &yticks {
                    line x1=(fmt_coord(LEFT)) x2=(fmt_coord(WIDTH - RIGHT))
                        y1=(fmt_coord(y.at(*t))) y2=(fmt_coord(y.at(*t))) {}
                }
                @for t in &xticks {
                    line x1=(fmt_coord(px(*t))) x2=(fmt_coord(px(*t)))
                        y1=(fmt_coord(TOP)) y2=(fmt_coord(HEIGHT - BOTTOM)) {}
                }
            }
            g class="axis y" {
                @for t in &yticks {
                    text x=(fmt_coord(LEFT - 4.0)) y=(fmt_coord(y.at(*t) + 4.0)) text-anchor="end" { (fmt_num(*t)) }
                }
            }
            g class="axis x" {
                @for t in &xticks {
                    text x=(fmt_coord(px(*t))) y=(fmt_coord(HEIGHT - BOTTOM + 16.0)) text-anchor="middle" {
                        (tick_label(t.to_offset(chart.offset), with_time))
                    }
                }
            }
            @for l in &chart.lines {
                @if l.value.is_finite() {
                    g class=(l.kind.class()) {
                        title { (l.label) }
                        line x1=(fmt_coord(LEFT)) x2=(fmt_coord(WIDTH - RIGHT))
                            y1=(fmt_coord(y.at(l.value))) y2=(fmt_coord(y.at(l.value))) {}
                        text x=(fmt_coord(WIDTH - RIGHT + 3.0)) y=(fmt_coord(y.at(l.value) + 4.0)) { (l.label) }
                    }
                }
            }
            @for (tr, runs) in chart.traces.iter().zip(&steps) {
                @if let Some(last) = runs.last().and_then(|r| r.last()) {
                    g class={ "trace " (tr.kind.class()) } {
                        title { (tr.label) " " (fmt_num(last.2)) (unit) " (changes over time)" }
                        @for run in runs {
                            polyline points=(step_points(run, &x, &y)) {}
                        }
                        text x=(fmt_coord(WIDTH - RIGHT + 3.0)) y=(fmt_coord(y.at(last.2) + 4.0)) { (tr.label) " " (fmt_num(last.2)) }
                    }
                }
            }
            @for a in alerts_in_range.iter().chain(&earlier) {
                @let x0 = px(a.at.max(from));
                @let x1 = px(a.until.unwrap_or(to).min(to));
                rect class={ "alert-span " (a.severity) } x=(fmt_coord(x0)) y=(fmt_coord(TOP))
                    width=(fmt_coord((x1 - x0).max(1.0))) height="3" {
                    title { "Alert open (" (a.severity) "): " (a.label) }
                }
            }
            @for a in &earlier {
                g class={ "alert earlier " (a.severity) } {
                    title { "Alert (" (a.severity) ") raised before this range: " (a.label) ", " (fmt_time(a.at, chart.offset)) }
                    path d={ "M" (fmt_coord(LEFT + 1.0)) "," (fmt_coord(TOP + 8.0)) "l8,-5v10z" } {}
                }
            }
            @for a in &alerts_in_range {
                @let ax = px(a.at);
                g class={ "alert " (a.severity) } {
                    title { "Alert (" (a.severity) "): " (a.label) ", " (fmt_time(a.at, chart.offset)) }
                    line x1=(fmt_coord(ax)) x2=(fmt_coord(ax)) y1=(fmt_coord(TOP)) y2=(fmt_coord(HEIGHT - BOTTOM)) {}
                    path d={ "M" (fmt_coord(ax - 5.0)) "," (fmt_coord(TOP - 8.0)) "h10l-5,8z" } {}
                }
            }
            @for (i, s) in chart.series.iter().enumerate() {
                g class={ "series s" (i) } {
                    @for run in runs(&visible, i, chart.max_gap) {
                        @if run.len() > 1 {
                            polyline points=(polyline_points(&run, &px, &y)) {}
                        }
                    }
                    @for (_, p) in visible.iter().filter(|(j, _)| *j == i) {
                        @let (cx, cy) = (px(p.at), y.at(p.value));
                        @if p.flagged {
                            path class="flagged" d={ "M" (fmt_coord(cx)) "," (fmt_coord(cy - 4.5)) "l4.5,4.5l-4.5,4.5l-4.5,-4.5z" } {
                                title { (s.label) " " (fmt_num(p.value)) (unit) ", " (fmt_time(p.at, chart.offset)) " — flagged by the device" }
                            }
                        } @else {
                            circle class="pt" cx=(fmt_coord(cx)) cy=(fmt_coord(cy)) r="2.5" {
                                title { (s.label) " " (fmt_num(p.value)) (unit) ", " (fmt_time(p.at, chart.offset)) }
                            }
                        }
                    }
                }
            }
            @if total == 0 {
                text class="empty" x=(fmt_coord((LEFT + WIDTH - RIGHT) / 2.0)) y=(fmt_coord((TOP + HEIGHT - BOTTOM) / 2.0)) text-anchor="middle" {
                    "No readings in this range"
                }
            }
            rect class="frame" x=(fmt_coord(LEFT)) y=(fmt_coord(TOP))
                width=(fmt_coord(WIDTH - RIGHT - LEFT)) height=(fmt_coord(HEIGHT - BOTTOM - TOP)) {}
        }
    }
}

/// The trusted points of series `i`, split where consecutive points are further apart than
/// `max_gap`.
fn runs(visible: &[(usize, Point)], i: usize, max_gap: Duration) -> Vec<Vec<Point>> {
    let mut out: Vec<Vec<Point>> = Vec::new();
    let mut last: Option<OffsetDateTime> = None;
    for (_, p) in visible.iter().filter(|(j, p)| *j == i && !p.flagged) {
        match (last, out.last_mut()) {
            (Some(prev), Some(run)) if p.at - prev <= max_gap => run.push(*p),
            _ => out.push(vec![*p]),
        }
        last = Some(p.at);
    }
    out
}

/// Steps `(x0, x1, value)` drawn as one polyline, in seconds from the range's start.
type Run = Vec<(f64, f64, f64)>;

/// A trace cut to `from..=to` as runs of steps `(x0, x1, value)` in seconds from `from`: each
/// value holds until the next point, the value in force at `from` starts the first run, and a
/// run breaks where the next point is more than `max_gap` away (the last value holds at most
/// `max_gap`, and never past `to`).
fn trace_runs(
    tr: &Trace,
    from: OffsetDateTime,
    to: OffsetDateTime,
    max_gap: Duration,
    t_of: &impl Fn(OffsetDateTime) -> f64,
) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut pts: Vec<(OffsetDateTime, f64)> = tr
        .points
        .iter()
        .copied()
        .filter(|(_, v)| v.is_finite())
        .collect();
    pts.sort_by_key(|p| p.0);
    for (k, &(at, v)) in pts.iter().enumerate() {
        let next = pts.get(k + 1).map(|p| p.0);
        let end = match next {
            Some(n) if n - at <= max_gap => n,
            _ => at + max_gap,
        }
        .min(to);
        let start = at.max(from);
        if end <= start || at > to {
            continue;
        }
        let step = (t_of(start), t_of(end), v);
        let joined = k > 0 && pts[k - 1].0 + max_gap >= at && pts[k - 1].0 <= to;
        match runs.last_mut() {
            Some(run) if joined && at >= from => run.push(step),
            _ => runs.push(vec![step]),
        }
    }
    runs
}

fn step_points(run: &[(f64, f64, f64)], x: &Scale, y: &Scale) -> PreEscaped<String> {
    let mut s = String::with_capacity(run.len() * 24);
    for (k, (x0, x1, v)) in run.iter().enumerate() {
        if k > 0 {
            s.push(' ');
        }
        let yv = fmt_coord(y.at(*v));
        let _ = write!(
            s,
            "{},{yv} {},{yv}",
            fmt_coord(x.at(*x0)),
            fmt_coord(x.at(*x1))
        );
    }
    PreEscaped(s)
}

fn polyline_points(
    run: &[Point],
    px: &impl Fn(OffsetDateTime) -> f64,
    y: &Scale,
) -> PreEscaped<String> {
    let mut s = String::with_capacity(run.len() * 12);
    for (k, p) in run.iter().enumerate() {
        if k > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{},{}", fmt_coord(px(p.at)), fmt_coord(y.at(p.value)));
    }
    // Only digits, '.', ',', '-' and spaces: nothing to escape.
    PreEscaped(s)
}

/// The chart in words, for `<desc>`: what a screen reader says instead of the picture.
fn summary(
    chart: &Chart,
    visible: &[(usize, Point)],
    flagged: usize,
    alerts: usize,
    earlier: usize,
    unit: &str,
) -> String {
    let mut s = String::new();
    if visible.is_empty() {
        s.push_str("No readings in this range.");
    }
    for (i, series) in chart.series.iter().enumerate() {
        let pts: Vec<&Point> = visible
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, p)| p)
            .collect();
        let Some(last) = pts.last() else { continue };
        let (min, max) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.value), b.max(p.value))
            });
        let _ = write!(
            s,
            "{}: {} readings, lowest {}{unit}, highest {}{unit}, latest {}{unit} on {}. ",
            series.label,
            pts.len(),
            fmt_num(min),
            fmt_num(max),
            fmt_num(last.value),
            fmt_time(last.at, chart.offset)
        );
    }
    if flagged > 0 {
        let _ = write!(s, "{flagged} flagged by the device. ");
    }
    if alerts > 0 {
        let _ = write!(s, "{alerts} alerts raised. ");
    }
    if earlier > 0 {
        let _ = write!(
            s,
            "{earlier} alerts raised before this range were still open in it. "
        );
    }
    s.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-03-10 00:00 UTC);

    fn spo2(points: &[(i64, f64, bool)]) -> Chart {
        let mut c = Chart::new("SpO2", "%", T0, T0 + Duration::hours(48));
        c.series.push(Series {
            label: "SpO2".into(),
            points: points
                .iter()
                .map(|&(h, value, flagged)| Point {
                    at: T0 + Duration::hours(h),
                    value,
                    flagged,
                })
                .collect(),
        });
        c.y_span = Some((85.0, 100.0));
        c.max_gap = Range::Hours48.max_gap();
        c
    }

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg)
            .unwrap_or_else(|e| panic!("not well-formed SVG: {e}\n{svg}"))
    }

    fn by_class<'a>(doc: &'a roxmltree::Document<'a>, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
        doc.descendants()
            .filter(|n| {
                n.attribute("class")
                    .is_some_and(|c| c.split(' ').any(|w| w == class))
            })
            .collect()
    }

    fn num(n: &roxmltree::Node<'_, '_>, attr: &str) -> f64 {
        n.attribute(attr)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{attr} on {n:?}"))
    }

    #[test]
    fn every_point_in_range_is_drawn_once_and_placed_on_the_axes() {
        let c = spo2(&[
            (0, 96.0, false),
            (12, 94.0, false),
            (24, 91.0, false),
            (48, 89.0, false),
        ]);
        let svg = render(&c);
        let doc = parse(&svg);
        let pts = by_class(&doc, "pt");
        assert_eq!(pts.len(), 4);
        // Time is linear over the range: first at the left edge, last at the right.
        let xs: Vec<f64> = pts.iter().map(|p| num(p, "cx")).collect();
        assert_eq!(xs[0], LEFT);
        assert_eq!(xs[3], WIDTH - RIGHT);
        assert!(
            (xs[1] - (LEFT + (WIDTH - RIGHT - LEFT) / 4.0)).abs() < 0.1,
            "{xs:?}"
        );
        // Lower values are drawn lower (larger y).
        let ys: Vec<f64> = pts.iter().map(|p| num(p, "cy")).collect();
        assert!(ys.windows(2).all(|w| w[0] < w[1]), "{ys:?}");
        // One unbroken line through the four.
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        assert_eq!(lines, 1);
    }

    #[test]
    fn points_outside_the_range_and_non_finite_values_are_left_out() {
        let c = spo2(&[
            (-1, 96.0, false),
            (5, f64::NAN, false),
            (10, 95.0, false),
            (49, 90.0, false),
        ]);
        let doc_text = render(&c);
        let doc = parse(&doc_text);
        assert_eq!(by_class(&doc, "pt").len(), 1);
        assert!(!doc_text.contains("NaN"));
    }

    #[test]
    fn flagged_points_are_hollow_diamonds_off_the_line() {
        let c = spo2(&[(0, 96.0, false), (6, 84.0, true), (12, 95.0, false)]);
        let svg = render(&c);
        let doc = parse(&svg);
        assert_eq!(by_class(&doc, "pt").len(), 2);
        let flagged = by_class(&doc, "flagged");
        assert_eq!(flagged.len(), 1);
        assert_eq!(flagged[0].tag_name().name(), "path");
        let tip = flagged[0]
            .children()
            .find(|n| n.has_tag_name("title"))
            .and_then(|t| t.text());
        assert!(
            tip.is_some_and(|t| t.contains("84") && t.contains("flagged")),
            "{tip:?}"
        );
        // The line joins only the two trusted points: two coordinate pairs.
        let poly = doc
            .descendants()
            .find(|n| n.has_tag_name("polyline"))
            .expect("line");
        assert_eq!(
            poly.attribute("points").map(|p| p.split(' ').count()),
            Some(2)
        );
        assert!(svg.contains("1 flagged by the device"));
    }

    #[test]
    fn a_long_gap_breaks_the_line() {
        // 48 h range breaks across more than 14 h.
        let c = spo2(&[
            (0, 96.0, false),
            (2, 95.0, false),
            (30, 94.0, false),
            (32, 93.0, false),
        ]);
        let doc_text = render(&c);
        let doc = parse(&doc_text);
        assert_eq!(
            doc.descendants()
                .filter(|n| n.has_tag_name("polyline"))
                .count(),
            2
        );
    }

    #[test]
    fn thresholds_bands_and_baseline_sit_at_their_values() {
        let mut c = spo2(&[(1, 95.0, false)]);
        c.lines.push(Line {
            value: 90.0,
            kind: LineKind::Raise,
            label: "raise 90".into(),
        });
        c.lines.push(Line {
            value: 92.0,
            kind: LineKind::Clear,
            label: "clear 92".into(),
        });
        c.lines.push(Line {
            value: 96.0,
            kind: LineKind::Baseline,
            label: "baseline 96".into(),
        });
        c.bands.push(Band {
            from: 85.0,
            to: 88.0,
            label: "high severity under 88".into(),
        });
        let svg = render(&c);
        let doc = parse(&svg);
        let y_of = |class: &str| {
            let g = by_class(&doc, class).into_iter().next().expect(class);
            let l = g.children().find(|n| n.has_tag_name("line")).expect("line");
            num(&l, "y1")
        };
        let (raise, clear, base) = (y_of("raise"), y_of("clear"), y_of("baseline"));
        assert!(base < clear && clear < raise, "{base} {clear} {raise}");
        // 90 and 92 are 2 units apart, 92 and 96 are 4: spacing is linear.
        assert!(((clear - base) - 2.0 * (raise - clear)).abs() < 0.2);
        let band = by_class(&doc, "band").into_iter().next().expect("band");
        let (top, h) = (num(&band, "y"), num(&band, "height"));
        assert!(top > raise && h > 0.0, "band under the raise line");
        assert!(svg.contains("raise 90") && svg.contains("baseline 96"));
    }

    #[test]
    fn the_value_axis_widens_to_hold_every_value_and_line() {
        let mut c = spo2(&[(1, 78.0, false)]);
        c.lines.push(Line {
            value: 101.0,
            kind: LineKind::Raise,
            label: "x".into(),
        });
        let doc_text = render(&c);
        let doc = parse(&doc_text);
        let pt = by_class(&doc, "pt").into_iter().next().expect("point");
        let cy = num(&pt, "cy");
        assert!((TOP..=HEIGHT - BOTTOM).contains(&cy), "{cy}");
        let line = by_class(&doc, "raise").into_iter().next().expect("line");
        let ly = num(
            &line.children().find(|n| n.has_tag_name("line")).expect("l"),
            "y1",
        );
        assert!((TOP..=HEIGHT - BOTTOM).contains(&ly), "{ly}");
    }

    #[test]
    fn alerts_are_marked_at_their_time_with_their_severity() {
        let mut c = spo2(&[(0, 96.0, false), (24, 88.0, false)]);
        c.alerts.push(AlertMark {
            at: T0 + Duration::hours(24),
            until: Some(T0 + Duration::hours(36)),
            severity: "high".into(),
            label: "spo2-low: SpO2 88 %".into(),
        });
        // Raised before the range and still open in it.
        c.alerts.push(AlertMark {
            at: T0 - Duration::hours(10),
            until: None,
            severity: "low".into(),
            label: "before".into(),
        });
        // Raised and resolved before the range: not drawn.
        c.alerts.push(AlertMark {
            at: T0 - Duration::hours(10),
            until: Some(T0 - Duration::hours(2)),
            severity: "medium".into(),
            label: "long gone".into(),
        });
        let svg = render(&c);
        let doc = parse(&svg);
        let marks = by_class(&doc, "alert");
        assert_eq!(marks.len(), 2, "{svg}");
        let inside = &marks
            .iter()
            .find(|m| !m.attribute("class").unwrap_or("").contains("earlier"))
            .expect("the alert raised in the range");
        assert!(
            inside
                .attribute("class")
                .is_some_and(|c| c.contains("high"))
        );
        let l = inside
            .children()
            .find(|n| n.has_tag_name("line"))
            .expect("line");
        assert!((num(&l, "x1") - (LEFT + WIDTH - RIGHT) / 2.0).abs() < 0.1);
        let earlier = by_class(&doc, "earlier");
        assert_eq!(earlier.len(), 1);
        assert!(
            earlier[0]
                .attribute("class")
                .is_some_and(|c| c.contains("low"))
        );
        assert!(svg.contains("raised before this range: before"), "{svg}");
        assert!(!svg.contains("long gone"), "{svg}");
        // Spans: the earlier one from the left edge to the right (still open), the other from
        // the middle to three quarters.
        let spans = by_class(&doc, "alert-span");
        assert_eq!(spans.len(), 2);
        let width = WIDTH - RIGHT - LEFT;
        let span_of = |sev: &str| {
            let s = spans
                .iter()
                .find(|s| s.attribute("class").is_some_and(|c| c.contains(sev)))
                .expect("span");
            (num(s, "x"), num(s, "width"))
        };
        let (x, w) = span_of("high");
        assert!((x - (LEFT + width / 2.0)).abs() < 0.1, "{x}");
        assert!((w - width / 4.0).abs() < 0.1, "{w}");
        let (x, w) = span_of("low");
        assert!((x - LEFT).abs() < 0.1 && (w - width).abs() < 0.1, "{x} {w}");
        let desc = doc
            .descendants()
            .find(|n| n.has_tag_name("desc"))
            .and_then(|n| n.text())
            .unwrap_or_default()
            .to_owned();
        assert!(desc.contains("1 alerts raised."), "{desc}");
        assert!(desc.contains("1 alerts raised before this range"), "{desc}");
    }

    #[test]
    fn a_moving_baseline_is_drawn_in_steps_that_break_across_gaps() {
        let mut c = spo2(&[(0, 96.0, false), (47, 95.0, false)]);
        // In force from before the range, changing at 22 h and 30 h; then nothing for 16 h.
        c.traces.push(Trace {
            kind: LineKind::Baseline,
            label: "baseline".into(),
            points: vec![
                (T0 - Duration::hours(2), 95.0),
                (T0 + Duration::hours(10), 95.0),
                (T0 + Duration::hours(22), 94.0),
                (T0 + Duration::hours(30), 93.0),
                (T0 + Duration::hours(46), 93.5),
            ],
        });
        let svg = render(&c);
        let doc = parse(&svg);
        let traces = by_class(&doc, "trace");
        assert_eq!(traces.len(), 1);
        let lines: Vec<Vec<(f64, f64)>> = traces[0]
            .children()
            .filter(|n| n.has_tag_name("polyline"))
            .map(|n| {
                n.attribute("points")
                    .expect("points")
                    .split(' ')
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').expect("x,y");
                        (x.parse().expect("x"), y.parse().expect("y"))
                    })
                    .collect()
            })
            .collect();
        // 30 h → 46 h is longer than the 14 h gap: two runs.
        assert_eq!(lines.len(), 2, "{svg}");
        let hour = (WIDTH - RIGHT - LEFT) / 48.0;
        let first = &lines[0];
        // Starts at the left edge with the value in force there (95), steps down at 22 h.
        assert!((first[0].0 - LEFT).abs() < 0.1, "{first:?}");
        let step = first
            .iter()
            .position(|p| p.1 != first[0].1)
            .expect("a step");
        assert!(
            (first[step].0 - (LEFT + 22.0 * hour)).abs() < 0.1,
            "{first:?}"
        );
        assert_eq!(first[step - 1].0, first[step].0, "a vertical step");
        assert!(first[step].1 > first[0].1, "94 is drawn below 95");
        // The 93 at 30 h holds for at most the gap (14 h), not up to the next point.
        let last_of_first = first.last().expect("point");
        assert!(
            (last_of_first.0 - (LEFT + 44.0 * hour)).abs() < 0.1,
            "{first:?}"
        );
        // The last run holds 93.5 to the end of the range, labelled with it.
        let second = &lines[1];
        assert!((second[0].0 - (LEFT + 46.0 * hour)).abs() < 0.1);
        assert!((second.last().expect("point").0 - (WIDTH - RIGHT)).abs() < 0.1);
        assert!(svg.contains("baseline 93.5"), "{svg}");
    }

    #[test]
    fn text_from_outside_is_escaped() {
        let mut c = spo2(&[(1, 95.0, false)]);
        c.title = "<script>alert(1)</script>".into();
        c.alerts.push(AlertMark {
            at: T0 + Duration::hours(2),
            until: None,
            severity: "low".into(),
            label: "a & \"b\" <c>".into(),
        });
        let svg = render(&c);
        assert!(!svg.contains("<script>"));
        let doc = parse(&svg);
        let title = doc
            .root_element()
            .children()
            .find(|n| n.has_tag_name("title"))
            .and_then(|t| t.text());
        assert_eq!(title, Some("<script>alert(1)</script>"));
    }

    #[test]
    fn an_empty_chart_says_so() {
        let c = spo2(&[]);
        let svg = render(&c);
        let doc = parse(&svg);
        assert_eq!(by_class(&doc, "empty").len(), 1);
        assert!(svg.contains("No readings in this range"));
        // A flat single value still gets a non-degenerate axis.
        let c = spo2(&[(1, 95.0, false)]);
        let mut c2 = c.clone();
        c2.y_span = None;
        parse(&render(&c2));
    }

    #[test]
    fn two_series_share_the_axes_for_blood_pressure() {
        let mut c = Chart::new("Blood pressure", "mmHg", T0, T0 + Duration::days(7));
        for (label, v) in [("Systolic", 150.0), ("Diastolic", 90.0)] {
            c.series.push(Series {
                label: label.into(),
                points: (0..7)
                    .map(|d| Point {
                        at: T0 + Duration::days(d) + Duration::hours(8),
                        value: v + d as f64,
                        flagged: false,
                    })
                    .collect(),
            });
        }
        let svg = render(&c);
        let doc = parse(&svg);
        assert_eq!(by_class(&doc, "s0").len(), 1);
        assert_eq!(by_class(&doc, "s1").len(), 1);
        assert_eq!(by_class(&doc, "pt").len(), 14);
        assert!(
            svg.contains("Systolic: 7 readings, lowest 150 mmHg, highest 156 mmHg"),
            "{svg}"
        );
    }

    #[test]
    fn time_ticks_fit_each_range() {
        for r in Range::ALL {
            let to = T0 + r.duration();
            let (ticks, with_time) = time_ticks(T0, to, UtcOffset::UTC);
            assert!((2..=7).contains(&ticks.len()), "{r:?}: {ticks:?}");
            assert!(ticks.iter().all(|t| *t >= T0 && *t <= to));
            assert_eq!(with_time, r == Range::Hours48);
        }
        assert_eq!(Range::parse("30d"), Some(Range::Days30));
        assert_eq!(Range::parse("1y"), None);
    }

    #[test]
    fn nice_steps_and_numbers() {
        assert_eq!(nice_step(15.0, 4.0), 5.0);
        assert_eq!(nice_step(3.0, 4.0), 1.0);
        assert_eq!(nice_step(300.0, 4.0), 100.0);
        assert_eq!(fmt_num(2.10), "2.1");
        assert_eq!(fmt_num(410.0), "410");
        assert_eq!(fmt_num(94.5), "94.5");
    }
}
