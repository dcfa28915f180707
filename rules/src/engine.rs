//! The hot path: one reading in, events out, from per-patient state in flat, pre-sized
//! structures.
//!
//! Read top to bottom: [`Engine::evaluate`] updates the patient's last-seen times, resolves
//! missing-data alerts the reading answers, gates doubtful readings into a repeat request,
//! finds the rules the reading's kinds touch (one bit mask per kind, precomputed per
//! ruleset), runs each rule's check into a [`Verdict`], and feeds the verdict through the
//! shared lifecycle ([`lifecycle`]): persistence (immediate, minimum duration or N of M),
//! raise, update, resolve.
//!
//! Cost per reading is bounded by the number of rules (at most 64) and constants (M ≤ 6
//! confirm slots, ≤ 8 values kept for today); nothing grows with history. Allocation happens
//! when a patient is added (state sized to the ruleset) and when an alert opens (the open
//! alert is boxed so idle rules stay small); evaluating a reading otherwise allocates
//! nothing, and events go into the caller's `Vec`.
//!
//! Time order: readings are expected in measurement order per patient. A late reading (older
//! than the day a baseline is collecting) is still checked, but is not added to past days.

use std::collections::HashMap;

use vitals::{Flags, Kind, PatientKey, Reading, ReadingId, Value};

use crate::event::{
    Alert, Context, Event, Evidence, EvidenceItem, PatientIdx, ProfileIdx, RepeatReason,
    RepeatRequest, RuleIdx, Timestamp,
};
use crate::news2::{self, Response};
use crate::profile::{Check, Direction, Persistence, Rule, Ruleset, Severity};

/// One value of a [`Sample`], in its kind's canonical unit. A non-finite value means the
/// device sent a reading of this kind without a number (it counts for adherence only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// The kind.
    pub kind: Kind,
    /// The value in the canonical unit, or NaN for an absent value.
    pub value: f64,
}

/// A reading as the engine sees it: borrowed, `Copy`-cheap, no strings.
#[derive(Clone, Copy, Debug)]
pub struct Sample<'a> {
    /// The reading's id (carried into alert evidence).
    pub reading: ReadingId,
    /// When it was measured.
    pub at: Timestamp,
    /// Device flags.
    pub flags: Flags,
    /// The values.
    pub values: &'a [Measurement],
}

impl Sample<'_> {
    fn value(&self, kind: Kind) -> Option<f64> {
        self.values
            .iter()
            .find(|m| m.kind == kind && m.value.is_finite())
            .map(|m| m.value)
    }

    fn item(&self, kind: Kind, value: f64) -> EvidenceItem {
        EvidenceItem {
            reading: self.reading,
            at: self.at,
            kind,
            value,
        }
    }
}

/// Misuse of the engine's indices.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No patient at that index.
    #[error("no patient with index {0}")]
    UnknownPatient(u32),
    /// No ruleset at that index.
    #[error("no profile with index {0}")]
    UnknownProfile(u32),
    /// The patient key is already enrolled.
    #[error("patient already enrolled as index {0}")]
    AlreadyEnrolled(u32),
    /// A reading for a patient the engine does not know.
    #[error("reading for a patient that is not enrolled")]
    NotEnrolled,
}

/// A ruleset with its dispatch masks.
#[derive(Debug)]
struct Compiled {
    set: Ruleset,
    /// Value rules touched by a finite value of each kind.
    by_value: [u64; Kind::COUNT],
    /// Missing-data rules answered by any value of each kind.
    by_seen: [u64; Kind::COUNT],
    /// Rules `tick` looks at.
    ticked: u64,
    /// Silent-gateway rules.
    gateway: u64,
    /// Confirm-by-repeat rules that ask the patient to repeat: an abnormal reading nobody
    /// re-measured within the window is escalated by `tick`.
    confirming: u64,
}

impl Compiled {
    fn new(set: Ruleset) -> Self {
        let mut c = Compiled {
            set,
            by_value: [0; Kind::COUNT],
            by_seen: [0; Kind::COUNT],
            ticked: 0,
            gateway: 0,
            confirming: 0,
        };
        for (i, rule) in c.set.rules.iter().enumerate() {
            let bit = 1u64 << i;
            match rule.check {
                Check::Missing { measure, .. } => {
                    c.by_seen[measure.index()] |= bit;
                    c.ticked |= bit;
                }
                Check::SilentGateway { .. } => {
                    c.gateway |= bit;
                    c.ticked |= bit;
                }
                _ => {
                    for k in rule.measures() {
                        c.by_value[k.index()] |= bit;
                    }
                    if rule.ask_repeat && matches!(rule.persistence, Persistence::Confirm { .. }) {
                        c.confirming |= bit;
                    }
                }
            }
        }
        c
    }
}

/// One persistence slot: a reading time and, if it was abnormal, what it showed.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slot {
    at: Timestamp,
    abnormal: Option<EvidenceItem>,
}

/// The last M checked readings of an N-of-M rule.
#[derive(Clone, Debug, PartialEq)]
struct ConfirmRing {
    slots: Box<[Option<Slot>]>,
    next: u8,
}

impl ConfirmRing {
    fn new(m: u8) -> Self {
        ConfirmRing {
            slots: vec![None; usize::from(m)].into_boxed_slice(),
            next: 0,
        }
    }

    fn push(&mut self, slot: Slot) {
        if self.slots.is_empty() {
            return;
        }
        let i = usize::from(self.next) % self.slots.len();
        self.slots[i] = Some(slot);
        self.next = ((i + 1) % self.slots.len()) as u8;
    }

    fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.next = 0;
    }

    /// Abnormal slots within `within` of `now`, oldest first.
    fn abnormal_within(&self, now: Timestamp, within: i64) -> impl Iterator<Item = EvidenceItem> {
        let n = self.slots.len();
        let start = usize::from(self.next);
        (0..n)
            .filter_map(move |k| self.slots[(start + k) % n])
            .filter(move |s| now.since(s.at) <= within)
            .filter_map(|s| s.abnormal)
    }
}

/// Daily summaries for baseline and personal-best rules: today's values (at most
/// [`TODAY_VALUES`], newest kept) and one summary per day in a ring indexed by day number.
#[derive(Clone, Debug, PartialEq)]
struct DayStats {
    today: i64,
    values: [f64; TODAY_VALUES],
    count: u8,
    today_max: Option<f64>,
    /// (day, summary) at `day mod days`.
    days: Box<[Option<(i64, f64)>]>,
    /// Summary of the completed days in the window (median of medians, or maximum).
    cached: Option<f64>,
    cached_days: u16,
}

/// Values of one day a baseline keeps (home spot checks are a few a day).
pub const TODAY_VALUES: usize = 8;

#[derive(Clone, Copy, PartialEq)]
enum Summary {
    MedianOfMedians,
    Max,
}

impl DayStats {
    fn new(days: u16) -> Self {
        DayStats {
            today: i64::MIN,
            values: [0.0; TODAY_VALUES],
            count: 0,
            today_max: None,
            days: vec![None; usize::from(days)].into_boxed_slice(),
            cached: None,
            cached_days: 0,
        }
    }

    /// Moves to the day of `at`, closing the previous day and recomputing the cached
    /// summary (O(days), once a day).
    fn roll(&mut self, at: Timestamp, how: Summary) {
        let day = at.day();
        if day <= self.today {
            return;
        }
        let n = usize::from(self.count).min(TODAY_VALUES);
        if n > 0 {
            let summary = match how {
                Summary::MedianOfMedians => {
                    let mut today = self.values;
                    median(&mut today[..n])
                }
                Summary::Max => self.today_max.unwrap_or(f64::NEG_INFINITY),
            };
            let len = self.days.len() as i64;
            self.days[self.today.rem_euclid(len) as usize] = Some((self.today, summary));
        }
        self.today = day;
        self.count = 0;
        self.today_max = None;
        let oldest = day - self.days.len() as i64;
        let mut buf = [0.0f64; crate::profile::MAX_DAYS as usize];
        let mut k = 0;
        for (d, v) in self.days.iter().flatten() {
            if *d >= oldest && *d < day {
                buf[k] = *v;
                k += 1;
            }
        }
        self.cached_days = k as u16;
        self.cached = (k > 0).then(|| match how {
            Summary::MedianOfMedians => median(&mut buf[..k]),
            Summary::Max => buf[..k].iter().copied().fold(f64::NEG_INFINITY, f64::max),
        });
    }

    fn add(&mut self, at: Timestamp, v: f64) {
        if at.day() != self.today {
            return; // a late reading: checked, not added to a closed day
        }
        self.values[usize::from(self.count) % TODAY_VALUES] = v;
        self.count = self.count.saturating_add(1);
        self.today_max = Some(self.today_max.map_or(v, |m| m.max(v)));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Exponentially weighted mean and variance, plus a CUSUM sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Ewma {
    n: u32,
    mean: f64,
    var: f64,
    sum: f64,
}

impl Ewma {
    fn update(&mut self, x: f64, alpha: f64) {
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let diff = x - self.mean;
            let incr = alpha * diff;
            self.mean += incr;
            self.var = ((1.0 - alpha) * (self.var + diff * incr)).max(0.0);
        }
        self.n = self.n.saturating_add(1);
    }

    fn sd(&self, floor: f64) -> f64 {
        self.var.sqrt().max(floor)
    }
}

/// Kind-specific detector state.
#[derive(Clone, Debug, PartialEq)]
enum Detector {
    None,
    Days(Box<DayStats>),
    Ewma(Ewma),
    /// Latest SpO2, systolic, pulse, temperature (boxed: one rule per patient needs it and
    /// it would quadruple every rule's state inline).
    News2(Box<[Option<EvidenceItem>; 4]>),
}

#[derive(Clone, Debug, PartialEq)]
struct RuleState {
    open: Option<Box<Alert>>,
    level: u8,
    run_start: Option<EvidenceItem>,
    ring: ConfirmRing,
    det: Detector,
    /// The first abnormal reading of a confirm-by-repeat rule still waiting for its repeat.
    unconfirmed: Option<Box<Unconfirmed>>,
}

/// An abnormal reading the patient was asked to repeat.
#[derive(Clone, Debug, PartialEq)]
struct Unconfirmed {
    at: Timestamp,
    level: u8,
    severity: Severity,
    evidence: Evidence,
    context: Context,
}

impl RuleState {
    fn fresh(rule: &Rule) -> Self {
        let m = match rule.persistence {
            Persistence::Confirm { m, .. } => m,
            _ => 0,
        };
        let det = match rule.check {
            Check::BaselineDrop { days, .. } | Check::BestDrop { days, .. } => {
                Detector::Days(Box::new(DayStats::new(days)))
            }
            Check::Trend { .. } | Check::Cusum { .. } => Detector::Ewma(Ewma::default()),
            Check::News2 { .. } => Detector::News2(Box::new([None; 4])),
            _ => Detector::None,
        };
        RuleState {
            open: None,
            level: 0,
            run_start: None,
            ring: ConfirmRing::new(m),
            det,
            unconfirmed: None,
        }
    }
}

const NEVER: Timestamp = Timestamp(i64::MIN);

/// One patient's state: opaque, comparable (a replay must rebuild exactly this).
#[derive(Clone, Debug, PartialEq)]
pub struct PatientState {
    profile: ProfileIdx,
    enrolled: Timestamp,
    on_oxygen: bool,
    /// Last reading of each kind; [`NEVER`] before the first.
    last_seen: [Timestamp; Kind::COUNT],
    gateway_heard: Timestamp,
    rules: Box<[RuleState]>,
}

impl PatientState {
    fn new(profile: ProfileIdx, set: &Ruleset, enrolled: Timestamp, on_oxygen: bool) -> Self {
        PatientState {
            profile,
            enrolled,
            on_oxygen,
            last_seen: [NEVER; Kind::COUNT],
            gateway_heard: enrolled,
            rules: set.rules.iter().map(RuleState::fresh).collect(),
        }
    }
}

/// The rules engine: rulesets, enrolled patients and their state.
#[derive(Debug, Default)]
pub struct Engine {
    profiles: Vec<Compiled>,
    patients: Vec<PatientState>,
    keys: HashMap<PatientKey, PatientIdx>,
}

/// What a rule's check made of a reading.
// Lives on the stack for one rule check and is never stored; boxing the big variant would
// allocate on every abnormal reading.
#[allow(clippy::large_enum_variant)]
enum Verdict {
    /// Abnormal at `level` (1 = raise level, 2… = bands or response bands).
    Abnormal {
        level: u8,
        severity: Severity,
        evidence: Evidence,
        context: Context,
    },
    /// Back to normal: clears an open alert.
    Normal(Context),
    /// Between raise and clear: an open alert stays open, nothing new raises.
    Between,
    /// The rule cannot tell yet (warming up, no baseline).
    Unknown,
}

impl Engine {
    /// An engine with no rulesets and no patients.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a validated ruleset.
    pub fn add_profile(&mut self, set: Ruleset) -> ProfileIdx {
        self.profiles.push(Compiled::new(set));
        ProfileIdx((self.profiles.len() - 1) as u32)
    }

    /// The ruleset at `idx`.
    pub fn profile(&self, idx: ProfileIdx) -> Option<&Ruleset> {
        self.profiles.get(idx.0 as usize).map(|c| &c.set)
    }

    /// Enrols a patient on a ruleset. `enrolled` starts the missing-data and silent-gateway
    /// clocks.
    pub fn add_patient(
        &mut self,
        key: PatientKey,
        profile: ProfileIdx,
        enrolled: Timestamp,
    ) -> Result<PatientIdx, EngineError> {
        if let Some(idx) = self.keys.get(&key) {
            return Err(EngineError::AlreadyEnrolled(idx.0));
        }
        let c = self
            .profiles
            .get(profile.0 as usize)
            .ok_or(EngineError::UnknownProfile(profile.0))?;
        let idx = PatientIdx(self.patients.len() as u32);
        self.patients
            .push(PatientState::new(profile, &c.set, enrolled, false));
        self.keys.insert(key, idx);
        Ok(idx)
    }

    /// A patient's index.
    pub fn patient_index(&self, key: &PatientKey) -> Option<PatientIdx> {
        self.keys.get(key).copied()
    }

    /// Number of enrolled patients.
    pub fn patient_count(&self) -> usize {
        self.patients.len()
    }

    /// Moves a patient to another ruleset. Their state starts afresh (open alerts are
    /// dropped: the caller closes them in the record and replays history with
    /// [`Engine::rebuild`]).
    pub fn set_profile(&mut self, idx: PatientIdx, profile: ProfileIdx) -> Result<(), EngineError> {
        let c = self
            .profiles
            .get(profile.0 as usize)
            .ok_or(EngineError::UnknownProfile(profile.0))?;
        let p = self
            .patients
            .get_mut(idx.0 as usize)
            .ok_or(EngineError::UnknownPatient(idx.0))?;
        *p = PatientState::new(profile, &c.set, p.enrolled, p.on_oxygen);
        Ok(())
    }

    /// Whether the patient is on supplemental oxygen (NEWS2: +2, and scale 2's upper band).
    pub fn set_on_oxygen(&mut self, idx: PatientIdx, on_oxygen: bool) -> Result<(), EngineError> {
        self.state_mut(idx)?.on_oxygen = on_oxygen;
        Ok(())
    }

    /// The patient's state, for comparing a replay with incremental evaluation.
    pub fn patient_state(&self, idx: PatientIdx) -> Option<&PatientState> {
        self.patients.get(idx.0 as usize)
    }

    /// The patient's open alerts.
    pub fn open_alerts(&self, idx: PatientIdx) -> impl Iterator<Item = &Alert> {
        self.patients
            .get(idx.0 as usize)
            .into_iter()
            .flat_map(|p| p.rules.iter().filter_map(|r| r.open.as_deref()))
    }

    /// Puts an alert into words (allocates; call when an event is delivered, not per reading).
    pub fn describe(&self, alert: &Alert) -> Option<crate::event::AlertText> {
        let c = self.profiles.get(alert.profile.0 as usize)?;
        let rule = c.set.rules.get(usize::from(alert.rule.0))?;
        Some(crate::event::describe(&c.set, rule, alert))
    }

    pub(crate) fn state_mut(&mut self, idx: PatientIdx) -> Result<&mut PatientState, EngineError> {
        self.patients
            .get_mut(idx.0 as usize)
            .ok_or(EngineError::UnknownPatient(idx.0))
    }

    pub(crate) fn reset(&mut self, idx: PatientIdx) -> Result<(), EngineError> {
        let profile = self.state_mut(idx)?.profile;
        self.set_profile(idx, profile)
    }

    /// Evaluates a [`Reading`] (values converted to canonical units on the stack; values
    /// that cannot be converted are ignored, absent values count for adherence only).
    pub fn evaluate_reading(
        &mut self,
        idx: PatientIdx,
        reading: &Reading,
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        let mut buf = [Measurement {
            kind: Kind::Spo2,
            value: f64::NAN,
        }; Kind::COUNT];
        let mut n = 0;
        for o in reading.values.iter().take(Kind::COUNT) {
            let value = match o.value {
                Value::Number(d) => match o.kind.to_canonical(d, o.unit) {
                    Ok(c) => c.to_f64(),
                    Err(_) => continue,
                },
                Value::Absent(_) => f64::NAN,
            };
            buf[n] = Measurement {
                kind: o.kind,
                value,
            };
            n += 1;
        }
        let sample = Sample {
            reading: reading.id,
            at: Timestamp::from_datetime(reading.measured_at),
            flags: reading.flags,
            values: &buf[..n],
        };
        self.evaluate(idx, &sample, out)
    }

    /// Evaluates one reading for one patient, pushing what it decides into `out`.
    pub fn evaluate(
        &mut self,
        idx: PatientIdx,
        s: &Sample<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        let p = self
            .patients
            .get_mut(idx.0 as usize)
            .ok_or(EngineError::UnknownPatient(idx.0))?;
        let c = &self.profiles[p.profile.0 as usize];
        let ids = Ids {
            patient: idx,
            profile: p.profile,
        };

        // Adherence and gateway liveness first: a doubtful reading still shows the patient
        // measured and the gateway is alive.
        let mut seen = 0u64;
        let mut touched = 0u64;
        for m in s.values {
            let last = &mut p.last_seen[m.kind.index()];
            *last = (*last).max(s.at);
            seen |= c.by_seen[m.kind.index()];
            if m.value.is_finite() {
                touched |= c.by_value[m.kind.index()];
            }
        }
        p.gateway_heard = p.gateway_heard.max(s.at);
        let answered = seen | c.gateway;
        if answered != 0 {
            resolve_ticked(c, p, ids, answered, s.at, out);
        }

        if s.flags.questions_the_value() {
            out.push(Event::RepeatRequested(RepeatRequest {
                patient: idx,
                reading: s.reading,
                at: s.at,
                reason: RepeatReason::DeviceQuality(s.flags),
            }));
            return Ok(());
        }

        let mut repeat_sent = false;
        while touched != 0 {
            let i = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            let rule = &c.set.rules[i];
            let st = &mut p.rules[i];
            let verdict = check(rule, st, s, p.on_oxygen);
            lifecycle(
                rule,
                st,
                ids,
                RuleIdx(i as u16),
                s,
                verdict,
                &mut repeat_sent,
                out,
            );
        }
        Ok(())
    }

    /// Tells the engine the patient's gateway was heard from at `at` (a status message):
    /// resolves a silent-gateway alert.
    pub fn gateway_heard(
        &mut self,
        idx: PatientIdx,
        at: Timestamp,
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        let p = self
            .patients
            .get_mut(idx.0 as usize)
            .ok_or(EngineError::UnknownPatient(idx.0))?;
        let c = &self.profiles[p.profile.0 as usize];
        p.gateway_heard = p.gateway_heard.max(at);
        let ids = Ids {
            patient: idx,
            profile: p.profile,
        };
        resolve_ticked(c, p, ids, c.gateway, at, out);
        Ok(())
    }

    /// Checks time-driven rules (missing data, silent gateway) for every patient at `now`.
    /// Call it periodically (every minute is plenty); cost is O(patients × ticked rules).
    pub fn tick(&mut self, now: Timestamp, out: &mut Vec<Event>) {
        for (i, p) in self.patients.iter_mut().enumerate() {
            let c = &self.profiles[p.profile.0 as usize];
            let ids = Ids {
                patient: PatientIdx(i as u32),
                profile: p.profile,
            };
            let mut pending = c.confirming;
            while pending != 0 {
                let r = pending.trailing_zeros() as usize;
                pending &= pending - 1;
                let rule = &c.set.rules[r];
                let st = &mut p.rules[r];
                let Persistence::Confirm { within, .. } = rule.persistence else {
                    continue;
                };
                let due = st
                    .unconfirmed
                    .as_ref()
                    .is_some_and(|u| now.since(u.at) > within);
                if st.open.is_some() || !due {
                    continue;
                }
                // Asked to repeat, nobody did: the nurse hears of the reading unconfirmed
                // rather than not at all.
                if let Some(u) = st.unconfirmed.take() {
                    st.ring.clear();
                    raise(
                        rule,
                        st,
                        ids,
                        RuleIdx(r as u16),
                        now,
                        u.level,
                        u.severity,
                        u.evidence,
                        u.context,
                        out,
                    );
                }
            }
            let mut bits = c.ticked;
            while bits != 0 {
                let r = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let rule = &c.set.rules[r];
                let st = &mut p.rules[r];
                if st.open.is_some() {
                    continue;
                }
                let context = match rule.check {
                    Check::Missing { measure, within } => {
                        let last = match p.last_seen[measure.index()] {
                            NEVER => p.enrolled,
                            t => t,
                        };
                        if now.since(last) <= within {
                            continue;
                        }
                        Context::Missing {
                            kind: measure,
                            last_seen: last,
                            within,
                        }
                    }
                    Check::SilentGateway { within } => {
                        if now.since(p.gateway_heard) <= within {
                            continue;
                        }
                        Context::SilentGateway {
                            last_heard: p.gateway_heard,
                            within,
                        }
                    }
                    _ => continue,
                };
                raise(
                    rule,
                    st,
                    ids,
                    RuleIdx(r as u16),
                    now,
                    1,
                    rule.severity,
                    Evidence::default(),
                    context,
                    out,
                );
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Ids {
    patient: PatientIdx,
    profile: ProfileIdx,
}

/// Resolves open tick-raised alerts among `bits` that this moment answers.
fn resolve_ticked(
    c: &Compiled,
    p: &mut PatientState,
    _ids: Ids,
    bits: u64,
    at: Timestamp,
    out: &mut Vec<Event>,
) {
    let mut bits = bits & c.ticked;
    while bits != 0 {
        let r = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let st = &mut p.rules[r];
        if let Some(mut alert) = st.open.take() {
            alert.at = at;
            match &mut alert.context {
                Context::Missing { last_seen, .. } => *last_seen = at,
                Context::SilentGateway { last_heard, .. } => *last_heard = at,
                _ => {}
            }
            st.level = 0;
            out.push(Event::Resolved(*alert));
        }
    }
}

fn beyond(direction: Direction, v: f64, level: f64) -> bool {
    match direction {
        Direction::Below => v <= level,
        Direction::Above => v >= level,
    }
}

fn cleared(direction: Direction, v: f64, clear: f64) -> bool {
    match direction {
        Direction::Below => v >= clear,
        Direction::Above => v <= clear,
    }
}

fn single(item: EvidenceItem) -> Evidence {
    let mut e = Evidence::default();
    e.push(item);
    e
}

fn response_severity(r: Response) -> Severity {
    match r {
        Response::None => Severity::Info,
        Response::Low => Severity::Low,
        Response::LowMedium => Severity::Medium,
        Response::Medium => Severity::High,
        Response::High => Severity::Emergency,
    }
}

/// Runs a rule's check on a reading and updates the detector state.
fn check(rule: &Rule, st: &mut RuleState, s: &Sample<'_>, on_oxygen: bool) -> Verdict {
    match (&rule.check, &mut st.det) {
        (
            Check::Threshold {
                direction,
                limit,
                also,
                bands,
            },
            _,
        ) => {
            let d = *direction;
            let p = s.value(limit.measure);
            let q = also.and_then(|a| s.value(a.measure).map(|v| (a, v)));
            let p_hit = p.filter(|v| beyond(d, *v, limit.raise));
            let q_hit = q.filter(|(a, v)| beyond(d, *v, a.raise));
            if let Some(v) = p_hit {
                let mut level = 1u8;
                let (mut at, mut severity) = (limit.raise, rule.severity);
                for (b, sev) in bands {
                    if beyond(d, v, *b) {
                        level += 1;
                        (at, severity) = (*b, *sev);
                    }
                }
                let mut evidence = single(s.item(limit.measure, v));
                if let Some((a, w)) = q_hit {
                    evidence.push(s.item(a.measure, w));
                }
                return Verdict::Abnormal {
                    level,
                    severity,
                    evidence,
                    context: Context::Threshold {
                        limit: at,
                        clear: limit.clear,
                    },
                };
            }
            if let Some((a, w)) = q_hit {
                return Verdict::Abnormal {
                    level: 1,
                    severity: rule.severity,
                    evidence: single(s.item(a.measure, w)),
                    context: Context::Threshold {
                        limit: a.raise,
                        clear: a.clear,
                    },
                };
            }
            let p_clear = p.is_none_or(|v| cleared(d, v, limit.clear));
            let q_clear = q.is_none_or(|(a, v)| cleared(d, v, a.clear));
            if p_clear && q_clear {
                Verdict::Normal(Context::Threshold {
                    limit: limit.raise,
                    clear: limit.clear,
                })
            } else {
                Verdict::Between
            }
        }
        (
            Check::BaselineDrop {
                measure,
                drop,
                clear_drop,
                min_days,
                ..
            },
            Detector::Days(days),
        ) => {
            let Some(x) = s.value(*measure) else {
                return Verdict::Unknown;
            };
            days.roll(s.at, Summary::MedianOfMedians);
            let verdict = match days.cached {
                Some(baseline) if days.cached_days >= *min_days => {
                    let down = baseline - x;
                    let context = Context::Baseline {
                        baseline,
                        drop: down,
                        days: days.cached_days,
                    };
                    if down >= *drop {
                        Verdict::Abnormal {
                            level: 1,
                            severity: rule.severity,
                            evidence: single(s.item(*measure, x)),
                            context,
                        }
                    } else if down <= *clear_drop {
                        Verdict::Normal(context)
                    } else {
                        Verdict::Between
                    }
                }
                _ => Verdict::Unknown,
            };
            days.add(s.at, x);
            verdict
        }
        (
            Check::BestDrop {
                measure,
                drop_percent,
                clear_percent,
                min_days,
                ..
            },
            Detector::Days(days),
        ) => {
            let Some(x) = s.value(*measure) else {
                return Verdict::Unknown;
            };
            days.roll(s.at, Summary::Max);
            let best = match (days.cached, days.today_max) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let verdict = match best {
                Some(best) if best > 0.0 && days.cached_days >= *min_days => {
                    let pct = (best - x) / best * 100.0;
                    let context = Context::PersonalBest {
                        best,
                        drop_percent: pct,
                    };
                    if pct >= *drop_percent {
                        Verdict::Abnormal {
                            level: 1,
                            severity: rule.severity,
                            evidence: single(s.item(*measure, x)),
                            context,
                        }
                    } else if pct <= *clear_percent {
                        Verdict::Normal(context)
                    } else {
                        Verdict::Between
                    }
                }
                _ => Verdict::Unknown,
            };
            days.add(s.at, x);
            verdict
        }
        (
            Check::Trend {
                measure,
                direction,
                k,
                clear_k,
                alpha,
                min_sd,
                min_readings,
            },
            Detector::Ewma(e),
        ) => {
            let Some(x) = s.value(*measure) else {
                return Verdict::Unknown;
            };
            let verdict = if e.n >= *min_readings {
                let sd = e.sd(*min_sd);
                let sign = if *direction == Direction::Below {
                    -1.0
                } else {
                    1.0
                };
                let limit = e.mean + sign * k * sd;
                let clear = e.mean + sign * clear_k * sd;
                let context = Context::Trend {
                    mean: e.mean,
                    sd,
                    limit,
                };
                // Strictly beyond mean ∓ k·sd.
                let out = match direction {
                    Direction::Below => x < limit,
                    Direction::Above => x > limit,
                };
                if out {
                    Verdict::Abnormal {
                        level: 1,
                        severity: rule.severity,
                        evidence: single(s.item(*measure, x)),
                        context,
                    }
                } else if cleared(*direction, x, clear) {
                    Verdict::Normal(context)
                } else {
                    Verdict::Between
                }
            } else {
                Verdict::Unknown
            };
            e.update(x, *alpha);
            verdict
        }
        (
            Check::Cusum {
                measure,
                direction,
                slack,
                limit,
                clear_limit,
                alpha,
                min_sd,
                min_readings,
            },
            Detector::Ewma(e),
        ) => {
            let Some(x) = s.value(*measure) else {
                return Verdict::Unknown;
            };
            if e.n < *min_readings {
                e.update(x, *alpha);
                return Verdict::Unknown;
            }
            let sd = e.sd(*min_sd);
            let z = match direction {
                Direction::Below => (e.mean - x) / sd,
                Direction::Above => (x - e.mean) / sd,
            };
            e.sum = (e.sum + z - slack).max(0.0);
            let context = Context::Cusum {
                sum: e.sum,
                limit: *limit,
                mean: e.mean,
                sd,
            };
            let verdict = if e.sum >= *limit {
                Verdict::Abnormal {
                    level: 1,
                    severity: rule.severity,
                    evidence: single(s.item(*measure, x)),
                    context,
                }
            } else if e.sum <= *clear_limit {
                Verdict::Normal(context)
            } else {
                Verdict::Between
            };
            // The reference is frozen while a drift is accumulating, so a slow drift is not
            // absorbed into the mean it is measured against.
            if e.sum == 0.0 {
                e.update(x, *alpha);
            }
            verdict
        }
        (
            Check::News2 {
                scale,
                fresh,
                min_response,
            },
            Detector::News2(latest),
        ) => {
            const KINDS: [Kind; 4] = [
                Kind::Spo2,
                Kind::Systolic,
                Kind::PulseRate,
                Kind::BodyTemperature,
            ];
            for (slot, kind) in latest.iter_mut().zip(KINDS) {
                if let Some(v) = s.value(kind)
                    && slot.is_none_or(|old| old.at <= s.at)
                {
                    *slot = Some(s.item(kind, v));
                }
            }
            let mut evidence = Evidence::default();
            let mut vals = [None; 4];
            for (i, slot) in latest.iter().enumerate() {
                if let Some(item) = slot
                    && s.at.since(item.at) <= *fresh
                {
                    vals[i] = Some(item.value);
                    evidence.push(*item);
                }
            }
            let score = news2::score(vals[0], vals[1], vals[2], vals[3], *scale, on_oxygen);
            if score.response >= *min_response {
                Verdict::Abnormal {
                    level: score.response as u8,
                    severity: rule.severity.max(response_severity(score.response)),
                    evidence,
                    context: Context::News2(score),
                }
            } else {
                Verdict::Normal(Context::News2(score))
            }
        }
        _ => Verdict::Unknown,
    }
}

/// Persistence and the raise → update → resolve lifecycle, shared by every value rule.
#[allow(clippy::too_many_arguments)]
fn lifecycle(
    rule: &Rule,
    st: &mut RuleState,
    ids: Ids,
    r: RuleIdx,
    s: &Sample<'_>,
    verdict: Verdict,
    repeat_sent: &mut bool,
    out: &mut Vec<Event>,
) {
    match verdict {
        Verdict::Abnormal {
            level,
            severity,
            evidence,
            context,
        } => {
            if let Some(open) = st.open.as_deref_mut() {
                if level != st.level {
                    st.level = level;
                    open.severity = severity;
                    open.at = s.at;
                    open.context = context;
                    if let Some(item) = evidence.last() {
                        open.evidence.push(*item);
                    }
                    out.push(Event::Updated(*open));
                }
                return;
            }
            let newest = evidence.last().copied();
            let confirmed = match rule.persistence {
                Persistence::Immediate => Some(evidence),
                Persistence::MinDuration(d) => {
                    let first = *st.run_start.get_or_insert(newest.unwrap_or(EvidenceItem {
                        reading: s.reading,
                        at: s.at,
                        kind: Kind::Spo2,
                        value: f64::NAN,
                    }));
                    (s.at.since(first.at) >= d).then(|| {
                        let mut e = Evidence::default();
                        if first.reading != s.reading {
                            e.push(first);
                        }
                        evidence.iter().for_each(|i| e.push(*i));
                        e
                    })
                }
                Persistence::Confirm { n, within, .. } => {
                    st.ring.push(Slot {
                        at: s.at,
                        abnormal: newest,
                    });
                    let mut e = Evidence::default();
                    let mut count = 0u8;
                    for item in st.ring.abnormal_within(s.at, within) {
                        count += 1;
                        e.push(item);
                    }
                    (count >= n).then_some(e)
                }
            };
            if confirmed.is_none()
                && rule.ask_repeat
                && st.unconfirmed.is_none()
                && matches!(rule.persistence, Persistence::Confirm { .. })
            {
                st.unconfirmed = Some(Box::new(Unconfirmed {
                    at: s.at,
                    level,
                    severity,
                    evidence,
                    context,
                }));
            }
            match confirmed {
                Some(e) => {
                    st.run_start = None;
                    st.unconfirmed = None;
                    st.ring.clear();
                    raise(rule, st, ids, r, s.at, level, severity, e, context, out);
                }
                None if rule.ask_repeat && !*repeat_sent => {
                    *repeat_sent = true;
                    out.push(Event::RepeatRequested(RepeatRequest {
                        patient: ids.patient,
                        reading: s.reading,
                        at: s.at,
                        reason: RepeatReason::Confirm(r),
                    }));
                }
                None => {}
            }
        }
        Verdict::Normal(context) => {
            st.run_start = None;
            st.unconfirmed = None;
            st.ring.push(Slot {
                at: s.at,
                abnormal: None,
            });
            if let Some(mut alert) = st.open.take() {
                st.level = 0;
                alert.at = s.at;
                alert.context = context;
                out.push(Event::Resolved(*alert));
            }
        }
        Verdict::Between | Verdict::Unknown => {
            st.run_start = None;
            if matches!(verdict, Verdict::Between) {
                // The repeat came back below the raise level: it did not confirm.
                st.unconfirmed = None;
            }
            st.ring.push(Slot {
                at: s.at,
                abnormal: None,
            });
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn raise(
    rule: &Rule,
    st: &mut RuleState,
    ids: Ids,
    r: RuleIdx,
    at: Timestamp,
    level: u8,
    severity: Severity,
    evidence: Evidence,
    context: Context,
    out: &mut Vec<Event>,
) {
    let alert = Alert {
        patient: ids.patient,
        profile: ids.profile,
        rule: r,
        severity,
        audience: rule.audience,
        opened_at: at,
        at,
        evidence,
        context,
    };
    st.level = level;
    st.open = Some(Box::new(alert));
    out.push(Event::Raised(alert));
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
