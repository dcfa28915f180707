//! Backtesting: replay recorded readings against a ruleset and report every alert it would
//! have raised, and the alert load per patient-day. The console's threshold editor calls
//! the same function to preview a change.

use std::collections::HashMap;

use time::OffsetDateTime;
use vitals::{PatientKey, Reading};

use crate::engine::Engine;
use crate::event::{Alert, Event, PatientIdx, RuleIdx, Timestamp};
use crate::profile::{Ruleset, Severity};

/// How often time-driven rules are ticked during a backtest.
pub const BACKTEST_TICK_MS: i64 = 3_600_000;
/// Progress is reported every this many readings (and once at the end).
pub const PROGRESS_EVERY: u64 = 65_536;

/// Where a backtest has got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BacktestProgress {
    /// Readings consumed so far.
    pub readings: u64,
    /// Measurement time of the latest reading.
    pub at: Option<Timestamp>,
    /// True on the last call.
    pub done: bool,
}

/// One alert a backtest would have raised.
#[derive(Clone, Debug, PartialEq)]
pub struct BacktestAlert {
    /// Whose.
    pub patient: PatientKey,
    /// Rule id.
    pub rule: String,
    /// The alert as raised (evidence and context).
    pub raised: Alert,
    /// Highest severity it reached.
    pub max_severity: Severity,
    /// How many updates followed.
    pub updates: u32,
    /// When it cleared, if it did before `to`.
    pub resolved_at: Option<Timestamp>,
}

/// Alert load of one patient.
#[derive(Clone, Debug, PartialEq)]
pub struct PatientLoad {
    /// Whose.
    pub patient: PatientKey,
    /// Alerts raised in the window.
    pub alerts: u32,
    /// Days monitored in the window (from the later of `from` and their first reading).
    pub days: f64,
}

/// What a backtest found.
#[derive(Clone, Debug, PartialEq)]
pub struct BacktestReport {
    /// Profile label (`copd@3`).
    pub profile: String,
    /// Window start.
    pub from: Timestamp,
    /// Window end.
    pub to: Timestamp,
    /// Readings consumed (warm-up included).
    pub readings: u64,
    /// Readings inside the window.
    pub readings_in_window: u64,
    /// Readings before `from`, used only to warm up baselines.
    pub warm_up: u64,
    /// Readings older than the one before them for the same patient (evaluated anyway).
    pub out_of_order: u64,
    /// Every alert raised inside the window, in order.
    pub alerts: Vec<BacktestAlert>,
    /// Repeat-measurement prompts inside the window.
    pub repeat_requests: u64,
    /// Alerts per rule id, in ruleset order.
    pub by_rule: Vec<(String, u32)>,
    /// Load per patient, in order of first reading.
    pub patients: Vec<PatientLoad>,
    /// Sum of monitored days.
    pub patient_days: f64,
    /// Alerts per patient-day.
    pub alerts_per_patient_day: f64,
}

/// Replays `readings` (in measurement order) against `profile` and reports what would have
/// been raised between `from` and `to`. Readings before `from` warm up baselines; readings
/// after `to` end the replay. Time-driven rules are ticked hourly. Patients are scored as
/// on air (NEWS2).
pub fn backtest(
    profile: &Ruleset,
    readings: impl IntoIterator<Item = Reading>,
    from: OffsetDateTime,
    to: OffsetDateTime,
    mut progress: impl FnMut(BacktestProgress),
) -> BacktestReport {
    let from = Timestamp::from_datetime(from);
    let to = Timestamp::from_datetime(to);
    let mut engine = Engine::new();
    let pidx = engine.add_profile(profile.clone());
    let mut keys: Vec<PatientKey> = Vec::new();
    let mut first_seen: Vec<Timestamp> = Vec::new();
    let mut last_at: Vec<Timestamp> = Vec::new();
    let mut open: HashMap<(PatientIdx, RuleIdx), usize> = HashMap::new();
    let mut report = BacktestReport {
        profile: profile.label(),
        from,
        to,
        readings: 0,
        readings_in_window: 0,
        warm_up: 0,
        out_of_order: 0,
        alerts: Vec::new(),
        repeat_requests: 0,
        by_rule: profile.rules.iter().map(|r| (r.id.clone(), 0)).collect(),
        patients: Vec::new(),
        patient_days: 0.0,
        alerts_per_patient_day: 0.0,
    };
    let mut events = Vec::with_capacity(16);
    let mut next_tick: Option<Timestamp> = None;
    let mut latest = None;

    let take = |events: &mut Vec<Event>,
                report: &mut BacktestReport,
                keys: &[PatientKey],
                open: &mut HashMap<(PatientIdx, RuleIdx), usize>| {
        for e in events.drain(..) {
            let at = match &e {
                Event::RepeatRequested(r) => r.at,
                Event::Raised(a) | Event::Updated(a) | Event::Resolved(a) => a.at,
            };
            let inside = at >= from && at <= to;
            match e {
                Event::Raised(a) if inside => {
                    open.insert((a.patient, a.rule), report.alerts.len());
                    report.by_rule[usize::from(a.rule.0)].1 += 1;
                    report.alerts.push(BacktestAlert {
                        patient: keys[a.patient.0 as usize].clone(),
                        rule: profile.rules[usize::from(a.rule.0)].id.clone(),
                        raised: a,
                        max_severity: a.severity,
                        updates: 0,
                        resolved_at: None,
                    });
                }
                Event::Updated(a) => {
                    if let Some(&i) = open.get(&(a.patient, a.rule)) {
                        let b = &mut report.alerts[i];
                        b.updates += 1;
                        b.max_severity = b.max_severity.max(a.severity);
                    }
                }
                Event::Resolved(a) => {
                    if let Some(i) = open.remove(&(a.patient, a.rule)) {
                        report.alerts[i].resolved_at = Some(a.at);
                    }
                }
                Event::RepeatRequested(_) if inside => report.repeat_requests += 1,
                _ => {}
            }
        }
    };

    for r in readings {
        let at = Timestamp::from_datetime(r.measured_at);
        if at > to {
            break;
        }
        report.readings += 1;
        if at < from {
            report.warm_up += 1;
        } else {
            report.readings_in_window += 1;
        }
        latest = Some(at);
        let tick_from = *next_tick.get_or_insert(Timestamp(
            at.0 - at.0.rem_euclid(BACKTEST_TICK_MS) + BACKTEST_TICK_MS,
        ));
        let mut t = tick_from;
        while t <= at {
            engine.tick(t, &mut events);
            take(&mut events, &mut report, &keys, &mut open);
            t = Timestamp(t.0 + BACKTEST_TICK_MS);
        }
        next_tick = Some(t);
        let idx = match engine.patient_index(&r.patient) {
            Some(idx) => idx,
            None => match engine.add_patient(r.patient.clone(), pidx, at) {
                Ok(idx) => {
                    keys.push(r.patient.clone());
                    first_seen.push(at);
                    last_at.push(at);
                    idx
                }
                Err(_) => continue,
            },
        };
        let last = &mut last_at[idx.0 as usize];
        if at < *last {
            report.out_of_order += 1;
        }
        *last = (*last).max(at);
        if engine.evaluate_reading(idx, &r, &mut events).is_ok() {
            take(&mut events, &mut report, &keys, &mut open);
        }
        if report.readings.is_multiple_of(PROGRESS_EVERY) {
            progress(BacktestProgress {
                readings: report.readings,
                at: latest,
                done: false,
            });
        }
    }
    if let Some(mut t) = next_tick {
        while t <= to {
            engine.tick(t, &mut events);
            take(&mut events, &mut report, &keys, &mut open);
            t = Timestamp(t.0 + BACKTEST_TICK_MS);
        }
    }
    let mut counts = vec![0u32; keys.len()];
    for a in &report.alerts {
        counts[a.raised.patient.0 as usize] += 1;
    }
    for (i, key) in keys.iter().enumerate() {
        let start = first_seen[i].max(from);
        let days = (to.since(start).max(0) as f64) / 86_400_000.0;
        report.patient_days += days;
        report.patients.push(PatientLoad {
            patient: key.clone(),
            alerts: counts[i],
            days,
        });
    }
    report.alerts_per_patient_day = if report.patient_days > 0.0 {
        report.alerts.len() as f64 / report.patient_days
    } else {
        0.0
    };
    progress(BacktestProgress {
        readings: report.readings,
        at: latest,
        done: true,
    });
    report
}
