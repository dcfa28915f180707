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
//! Memory, not computation, bounds the speed with many patients, so the state is laid out
//! for it: a patient is one 512-byte entry ([`PatientState`]) whose first cache line is the
//! header every reading reads and whose next lines hold the detectors as words, packed per
//! ruleset so that the state a reading's kinds reach shares as few lines as possible
//! ([`pack`]); what normal readings never touch is behind one pointer. A batch
//! ([`Engine::evaluate_batch`]) loads the lines each of a group of readings reaches, all
//! at once, before evaluating them.
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

/// A sample's first finite value of each kind (NaN for none), gathered once per reading so
/// each rule looks its values up by index.
struct Values([f64; Kind::COUNT]);

impl Values {
    fn get(&self, kind: Kind) -> Option<f64> {
        let v = self.0[kind.index()];
        (!v.is_nan()).then_some(v)
    }
}

impl Sample<'_> {
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

/// A ruleset with its dispatch masks and the layout of its patients' state.
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
    /// Value rules whose abnormal verdicts all have one level (no escalation bands, not
    /// NEWS2): an abnormal reading while their alert is open changes nothing.
    one_level: u64,
    /// Where each rule's state lives in a [`PatientState`], by rule index.
    layout: Vec<Layout>,
    /// Sizes of a patient's state arrays.
    sizes: Sizes,
    /// Where the last-seen time of each kind a missing-data rule watches is kept (kinds no
    /// such rule watches are not kept: nothing reads them).
    seen_at: [Option<Seen>; Kind::COUNT],
    /// The hot lines (and NEWS2 id lines) a finite value of each kind reaches.
    reach: [u8; Kind::COUNT],
    /// The hot line any value of each kind reaches (its last-seen time).
    reach_seen: [u8; Kind::COUNT],
    /// A new patient's hot lines.
    hot_init: Box<[Line]>,
    /// A new patient's cold lines (the enrolment time apart).
    cold_init: Box<[RuleState]>,
}

/// Which lines of a patient's entry a reading reaches, one bit each: bit 1 + i for hot line
/// i (lines in the entry only: past [`HOT_INLINE`] they are not fetched ahead), and
/// [`REACH_IDS`] for the first NEWS2 rule's id line. (The header is always fetched.) What
/// [`PatientState::touch`] brings in before the reading is evaluated.
type Reach = u8;

/// The id line's bit in a [`Reach`].
const REACH_IDS: Reach = 1 << 7;

/// Where a kind's last-seen time is kept: in the header (the first [`SEEN_INLINE`] kinds a
/// ruleset's missing-data rules watch) or in the hot lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Header(u8),
    Hot(Word),
}

/// Where one rule's state lives in its patient's arrays.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// The cold line of the rule's first confirm slot (the ring has `ring_len` slots, a line
    /// each, after every rule's line and every run's).
    ring_start: u16,
    ring_len: u8,
    /// The cold line of the current run's first reading (minimum-duration rules only).
    run: Option<u16>,
    det: DetSlot,
}

/// Which detector a rule has, and where its words are in the patient's hot lines.
#[derive(Clone, Copy, Debug)]
enum DetSlot {
    None,
    /// A [`DayStats`]: its [`DAY_WORDS`] words, today's values ([`TODAY_VALUES`] words,
    /// median summaries only) and its day ring, the day summaries `day_start..day_start +
    /// day_len` of the cold lines ([`DayLines`]).
    Days {
        at: Word,
        values: Option<Word>,
        day_start: u16,
        day_len: u16,
    },
    /// An [`Ewma`]'s [`EWMA_WORDS`] words.
    Ewma(Word),
    /// The latest NEWS2 values ([`LATEST_WORDS`] words) and their reading ids (id line
    /// `ids`: `PatientState::ids` for the first NEWS2 rule, the cold part's after it).
    News2 {
        at: Word,
        ids: u16,
    },
}

/// Lengths of a patient's state arrays under one ruleset.
#[derive(Clone, Copy, Debug, Default)]
struct Sizes {
    slots: usize,
    runs: usize,
    day_slots: usize,
    news2: usize,
    /// Cold lines ([`Cold`]).
    cold: usize,
}

/// Which device usually sends a kind: the hot state of rules on kinds measured together is
/// packed into the same lines, so a reading touches as few lines as it can.
fn device_group(k: Kind) -> u8 {
    match k {
        Kind::Systolic | Kind::Diastolic | Kind::MeanArterialPressure => 0,
        Kind::Spo2 | Kind::PulseRate | Kind::PulseAmplitudeIndex => 1,
        Kind::Fev1 | Kind::Fvc | Kind::Fev1FvcRatio | Kind::Pef => 2,
        Kind::BodyTemperature => 3,
    }
}

/// NEWS2 rules read several devices' values: their own group.
const NEWS2_GROUP: u8 = 4;

/// Places units of 1, 4 or 8 words (`(words, group)`) in lines of [`LINE_WORDS`]: every unit
/// inside one line at an offset that is a multiple of its size, units of one group sharing
/// lines and never a line with another group's. Returns each unit's first word and the
/// number of lines.
fn pack(units: &[(usize, u8)]) -> (Vec<Word>, usize) {
    let mut order: Vec<usize> = (0..units.len()).collect();
    // Largest first within a group, so every offset stays a multiple of the unit's size.
    order.sort_by_key(|&i| (units[i].1, std::cmp::Reverse(units[i].0)));
    let mut lines: Vec<(u8, usize)> = Vec::new();
    let mut at = vec![Word(0); units.len()];
    for i in order {
        let (size, group) = units[i];
        let l = match lines
            .iter()
            .position(|&(g, used)| g == group && used + size <= LINE_WORDS)
        {
            Some(l) => l,
            None => {
                lines.push((group, 0));
                lines.len() - 1
            }
        };
        // At most 2 units a rule, 64 rules, and one last-seen word per kind: far below
        // u16::MAX words.
        at[i] = Word((l * LINE_WORDS + lines[l].1) as u16);
        lines[l].1 += size;
    }
    (at, lines.len())
}

impl Compiled {
    /// What a sample's values reach.
    fn reach_of(&self, s: &Sample<'_>) -> Reach {
        s.values.iter().fold(0, |r, m| {
            let k = m.kind.index();
            let finite = if m.value.is_finite() {
                self.reach[k]
            } else {
                0
            };
            r | self.reach_seen[k] | finite
        })
    }

    fn new(set: Ruleset) -> Self {
        let mut c = Compiled {
            set,
            by_value: [0; Kind::COUNT],
            by_seen: [0; Kind::COUNT],
            ticked: 0,
            gateway: 0,
            confirming: 0,
            one_level: 0,
            layout: Vec::new(),
            sizes: Sizes::default(),
            seen_at: [None; Kind::COUNT],
            reach: [0; Kind::COUNT],
            reach_seen: [0; Kind::COUNT],
            hot_init: Box::default(),
            cold_init: Box::default(),
        };
        // The hot units: (words, group), what each one holds, and the rule it serves.
        let mut units: Vec<(usize, u8)> = Vec::new();
        let mut holds: Vec<Unit> = Vec::new();
        let mut add = |words: usize, group: u8, what: Unit| {
            units.push((words, group));
            holds.push(what);
            units.len() - 1
        };
        let mut seen_unit: [Option<usize>; Kind::COUNT] = [None; Kind::COUNT];
        let mut seen_inline = 0;
        // Per rule, the indices of its units (detector words, today's values).
        let mut rule_units: Vec<(Option<usize>, Option<usize>)> = Vec::new();
        let mut z = Sizes::default();
        for (i, rule) in c.set.rules.iter().enumerate() {
            let bit = 1u64 << i;
            match rule.check {
                Check::Missing { measure, .. } => {
                    c.by_seen[measure.index()] |= bit;
                    c.ticked |= bit;
                    let k = measure.index();
                    if seen_unit[k].is_none() && c.seen_at[k].is_none() {
                        if seen_inline < SEEN_INLINE {
                            c.seen_at[k] = Some(Seen::Header(seen_inline as u8));
                            seen_inline += 1;
                        } else {
                            seen_unit[k] = Some(add(1, device_group(measure), Unit::Seen));
                        }
                    }
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
                    let one_level = match &rule.check {
                        Check::Threshold { bands, .. } => bands.is_empty(),
                        Check::News2 { .. } => false,
                        _ => true,
                    };
                    if one_level {
                        c.one_level |= bit;
                    }
                }
            }
            let units_of = match rule.check {
                Check::BaselineDrop { measure, .. } => {
                    let g = device_group(measure);
                    let d = add(DAY_WORDS, g, Unit::Days);
                    (Some(d), Some(add(TODAY_VALUES, g, Unit::Zero)))
                }
                Check::BestDrop { measure, .. } => (
                    Some(add(DAY_WORDS, device_group(measure), Unit::Days)),
                    None,
                ),
                Check::Trend { measure, .. } | Check::Cusum { measure, .. } => (
                    Some(add(EWMA_WORDS, device_group(measure), Unit::Zero)),
                    None,
                ),
                Check::News2 { .. } => (Some(add(LATEST_WORDS, NEWS2_GROUP, Unit::Latest)), None),
                _ => (None, None),
            };
            rule_units.push(units_of);
        }
        let (at, lines) = pack(&units);
        let mut init = vec![Line([0; LINE_WORDS]); lines];
        for (w, what) in at.iter().zip(&holds) {
            let line = &mut init[w.line()].0[w.offset()..];
            match what {
                Unit::Zero => {}
                Unit::Seen => line[0] = NEVER.0 as u64,
                Unit::Days => {
                    if let Some(h) = line.first_chunk_mut::<DAY_WORDS>() {
                        DayStats::new().store(h, None);
                    }
                }
                Unit::Latest => {
                    if let Some(l) = line.first_chunk_mut::<LATEST_WORDS>() {
                        *l = LATEST_EMPTY;
                    }
                }
            }
        }
        c.hot_init = init.into_boxed_slice();
        for (k, u) in seen_unit.iter().enumerate() {
            if let Some(u) = *u {
                c.seen_at[k] = Some(Seen::Hot(at[u]));
                c.reach_seen[k] = line_bit(at[u]);
            }
        }
        for (rule, (det_unit, values_unit)) in c.set.rules.iter().zip(rule_units) {
            // Sizes are bounded by MAX_RULES × MAX_CONFIRM and MAX_RULES × MAX_DAYS, which
            // fit in u16.
            let ring_len = match rule.persistence {
                Persistence::Confirm { m, .. } => m,
                _ => 0,
            };
            let ring_start = z.slots as u16;
            z.slots += usize::from(ring_len);
            let run = match rule.persistence {
                Persistence::MinDuration(_) => {
                    z.runs += 1;
                    Some((z.runs - 1) as u16)
                }
                _ => None,
            };
            let det_at = det_unit.map(|u| at[u]);
            let values = values_unit.map(|u| at[u]);
            let (det, reach) = match (&rule.check, det_at) {
                (Check::BaselineDrop { days, .. } | Check::BestDrop { days, .. }, Some(w)) => {
                    let d = DetSlot::Days {
                        at: w,
                        values,
                        day_start: z.day_slots as u16,
                        day_len: *days,
                    };
                    z.day_slots += usize::from(*days);
                    (d, line_bit(w) | values.map_or(0, line_bit))
                }
                (Check::Trend { .. } | Check::Cusum { .. }, Some(w)) => {
                    (DetSlot::Ewma(w), line_bit(w))
                }
                (Check::News2 { .. }, Some(w)) => {
                    let ids = z.news2 as u16;
                    z.news2 += 1;
                    let id_bit = if ids == 0 { REACH_IDS } else { 0 };
                    (DetSlot::News2 { at: w, ids }, line_bit(w) | id_bit)
                }
                _ => (DetSlot::None, 0),
            };
            for k in rule.measures() {
                c.reach[k.index()] |= reach;
            }
            c.layout.push(Layout {
                ring_start,
                ring_len,
                run,
                det,
            });
        }
        // Cold lines: one per rule (at least one: line 0 also holds the enrolment time),
        // then a line per run, a line per confirm slot, and three day summaries a line.
        let runs_at = c.set.rules.len().max(1);
        let slots_at = runs_at + z.runs;
        let days_at = slots_at + z.slots;
        z.cold = days_at + z.day_slots.div_ceil(DAYS_PER_LINE);
        // At most 64 rules, 64 runs, 64 × 6 slots and 64 × 92 day summaries: line and
        // summary indices fit in u16.
        for lay in &mut c.layout {
            lay.ring_start += slots_at as u16;
            lay.run = lay.run.map(|r| r + runs_at as u16);
            if let DetSlot::Days { day_start, .. } = &mut lay.det {
                *day_start += (days_at * DAYS_PER_LINE) as u16;
            }
        }
        let mut cold = vec![FRESH_RULE; z.cold];
        for line in &mut cold[days_at..] {
            line.w = [NO_DAY, 0, NO_DAY, 0, NO_DAY, 0];
        }
        c.cold_init = cold.into_boxed_slice();
        c.sizes = z;
        c
    }
}

/// What a hot unit holds, for its initial words.
#[derive(Clone, Copy)]
enum Unit {
    /// Words that start at zero (an [`Ewma`], today's values).
    Zero,
    /// A last-seen time, [`NEVER`] at first.
    Seen,
    /// A [`DayStats`].
    Days,
    /// The latest NEWS2 values, [`LATEST_EMPTY`] at first.
    Latest,
}

/// The bit of `w`'s line in a [`Reach`] (none past [`HOT_INLINE`]).
fn line_bit(w: Word) -> Reach {
    if w.line() < HOT_INLINE {
        2 << w.line()
    } else {
        0
    }
}

/// One persistence slot: an abnormal reading's time and what it showed.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slot {
    at: Timestamp,
    abnormal: Option<EvidenceItem>,
}

/// The last M checked readings of an N-of-M rule: `slots` (the rule's cold lines, a slot
/// each) with the head and a mask of the abnormal slots in the rule's state word
/// ([`RuleState`]). Only abnormal readings are stored (a normal one leaves `None`), and while
/// no slot is abnormal a normal reading changes nothing: the ring means the same either way,
/// and the slots are not touched at all on the common path.
struct Ring<'a> {
    slots: &'a mut [RuleState],
    state: &'a mut u64,
}

impl Ring<'_> {
    fn next(&self) -> u8 {
        (*self.state >> 8) as u8
    }

    fn mask(&self) -> u8 {
        (*self.state >> 16) as u8
    }

    fn set(&mut self, next: u8, mask: u8) {
        *self.state = (*self.state & !0xff_ff00) | u64::from(next) << 8 | u64::from(mask) << 16;
    }

    fn push(&mut self, slot: Slot) {
        let n = self.slots.len();
        let mut mask = self.mask();
        if n == 0 || (slot.abnormal.is_none() && mask == 0) {
            return;
        }
        let i = usize::from(self.next()) % n;
        if slot.abnormal.is_some() {
            self.slots[i].store_slot(Some(slot));
            mask |= 1 << i;
        } else {
            self.slots[i].store_slot(None);
            mask &= !(1 << i);
        }
        self.set(((i + 1) % n) as u8, mask);
    }

    fn clear(&mut self) {
        if self.mask() != 0 {
            self.slots.iter_mut().for_each(|s| s.store_slot(None));
        }
        self.set(0, 0);
    }

    /// Abnormal slots within `within` of `now`, oldest first.
    fn abnormal_within(&self, now: Timestamp, within: i64) -> impl Iterator<Item = EvidenceItem> {
        let n = if self.mask() == 0 {
            0
        } else {
            self.slots.len()
        };
        let start = usize::from(self.next());
        let slots = &*self.slots;
        (0..n)
            .filter_map(move |k| slots[(start + k) % n].slot())
            .filter(move |s| now.since(s.at) <= within)
            .filter_map(|s| s.abnormal)
    }
}

/// Daily summaries for baseline and personal-best rules: today's values (at most
/// [`TODAY_VALUES`], newest kept; median summaries only) and one summary per day in a ring
/// indexed by day number (the rule's part of the patient's day rings, touched once a day).
// Declaration order is layout order: what every reading reads first, today's values (median
// summaries only) last.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub(crate) struct DayStats {
    today: i64,
    pub(crate) today_max: Option<f64>,
    /// Summary of the completed days in the window (median of medians, or maximum).
    pub(crate) cached: Option<f64>,
    count: u8,
    pub(crate) cached_days: u16,
    values: [f64; TODAY_VALUES],
}

/// Values of one day a baseline keeps (home spot checks are a few a day).
pub const TODAY_VALUES: usize = 8;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Summary {
    MedianOfMedians,
    Max,
}

impl DayStats {
    pub(crate) fn new() -> Self {
        DayStats {
            today: i64::MIN,
            values: [0.0; TODAY_VALUES],
            count: 0,
            today_max: None,
            cached: None,
            cached_days: 0,
        }
    }

    /// Moves to the day of `at`, closing the previous day into `days` (the ring of day
    /// summaries, `(day, summary)` at `day mod` its length) and recomputing the cached
    /// summary (O(days), once a day).
    pub(crate) fn roll<R: DayRing + ?Sized>(&mut self, days: &mut R, at: Timestamp, how: Summary) {
        let day = at.day();
        if day <= self.today {
            return;
        }
        let n = usize::from(self.count).min(TODAY_VALUES);
        let len = days.days() as i64;
        // The window slides by one day: of the completed days, it loses the oldest, whose
        // slot in the ring the closing day takes, and gains the closing day. A maximum
        // follows without reading the rest of the ring, unless the day leaving held it.
        if how == Summary::Max && self.today.checked_add(1) == Some(day) && len > 0 {
            let slot = self.today.rem_euclid(len) as usize;
            let leaving = days.get(slot).filter(|&(d, _)| d == self.today - len);
            if leaving.is_none_or(|(_, v)| self.cached != Some(v)) {
                let mut k = self.cached_days;
                if leaving.is_some() {
                    k = k.saturating_sub(1);
                }
                let mut best = if k > 0 { self.cached } else { None };
                if n > 0 {
                    let summary = self.today_max.unwrap_or(f64::NEG_INFINITY);
                    days.set(slot, (self.today, summary));
                    k += 1;
                    best = Some(best.map_or(summary, |b| b.max(summary)));
                }
                self.today = day;
                self.count = 0;
                self.today_max = None;
                self.cached_days = k;
                self.cached = best;
                return;
            }
        }
        if n > 0 {
            let summary = match how {
                Summary::MedianOfMedians => {
                    let mut today = self.values;
                    median(&mut today[..n])
                }
                Summary::Max => self.today_max.unwrap_or(f64::NEG_INFINITY),
            };
            days.set(self.today.rem_euclid(len) as usize, (self.today, summary));
        }
        self.today = day;
        self.count = 0;
        self.today_max = None;
        let oldest = day - days.days() as i64;
        let mut buf = [0.0f64; crate::profile::MAX_DAYS as usize];
        let mut k = 0;
        for i in 0..days.days() {
            if let Some((d, v)) = days.get(i)
                && d >= oldest
                && d < day
            {
                buf[k] = v;
                k += 1;
            }
        }
        self.cached_days = k as u16;
        self.cached = (k > 0).then(|| match how {
            Summary::MedianOfMedians => median(&mut buf[..k]),
            Summary::Max => buf[..k].iter().copied().fold(f64::NEG_INFINITY, f64::max),
        });
    }

    pub(crate) fn add(&mut self, at: Timestamp, v: f64, how: Summary) {
        if at.day() != self.today {
            return; // a late reading: checked, not added to a closed day
        }
        if how == Summary::MedianOfMedians {
            self.values[usize::from(self.count) % TODAY_VALUES] = v;
        }
        self.count = self.count.saturating_add(1);
        self.today_max = Some(self.today_max.map_or(v, |m| m.max(v)));
    }
}

/// A ring of day summaries (`None` where no day is kept).
pub(crate) trait DayRing {
    /// Its length in days.
    fn days(&self) -> usize;
    /// Entry `i`.
    fn get(&self, i: usize) -> Option<(i64, f64)>;
    /// Sets entry `i`.
    fn set(&mut self, i: usize, day: (i64, f64));
}

impl DayRing for [Option<(i64, f64)>] {
    fn days(&self) -> usize {
        self.len()
    }

    fn get(&self, i: usize) -> Option<(i64, f64)> {
        self[i]
    }

    fn set(&mut self, i: usize, day: (i64, f64)) {
        self[i] = Some(day);
    }
}

/// A rule's day ring in its patient's cold lines: summaries `start..start + days` of the
/// lines, [`DAYS_PER_LINE`] a line, each the day and the summary's bits ([`NO_DAY`] for
/// none).
struct DayLines<'a> {
    lines: &'a mut [RuleState],
    start: usize,
    days: usize,
}

/// Day summaries in a cold line.
const DAYS_PER_LINE: usize = 3;

/// The day word of an empty day summary: no day is `i64::MIN` (days are milliseconds / 86.4
/// million).
const NO_DAY: u64 = i64::MIN as u64;

impl DayRing for DayLines<'_> {
    fn days(&self) -> usize {
        self.days
    }

    fn get(&self, i: usize) -> Option<(i64, f64)> {
        let d = self.start + i;
        let w = &self.lines[d / DAYS_PER_LINE].w[d % DAYS_PER_LINE * 2..];
        (w[0] != NO_DAY).then(|| (w[0] as i64, f64::from_bits(w[1])))
    }

    fn set(&mut self, i: usize, (day, v): (i64, f64)) {
        let d = self.start + i;
        let w = &mut self.lines[d / DAYS_PER_LINE].w[d % DAYS_PER_LINE * 2..];
        w[0] = day as u64;
        w[1] = v.to_bits();
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

/// Words of an [`Ewma`] in the hot lines: `n`, then the bits of `mean`, `var` and `sum`.
const EWMA_WORDS: usize = 4;

impl Ewma {
    fn load(w: &[u64; EWMA_WORDS]) -> Ewma {
        Ewma {
            n: w[0] as u32,
            mean: f64::from_bits(w[1]),
            var: f64::from_bits(w[2]),
            sum: f64::from_bits(w[3]),
        }
    }

    fn store(&self, w: &mut [u64; EWMA_WORDS]) {
        *w = [
            u64::from(self.n),
            self.mean.to_bits(),
            self.var.to_bits(),
            self.sum.to_bits(),
        ];
    }
}

/// Words of a [`DayStats`] in the hot lines, today's values apart: `today`, the bits of
/// `today_max` and `cached` (0 when `None`), and `count | cached_days << 8` with a bit each
/// for whether `today_max` and `cached` are `Some`. Lossless: every state round-trips.
const DAY_WORDS: usize = 4;
const HAS_MAX: u64 = 1 << 24;
const HAS_CACHED: u64 = 1 << 25;

impl DayStats {
    /// The day statistics from their words and, for median summaries, today's values
    /// (zeros without: only median summaries keep them).
    fn load(h: &[u64; DAY_WORDS], values: Option<&[u64; TODAY_VALUES]>) -> DayStats {
        let f = h[3];
        DayStats {
            today: h[0] as i64,
            today_max: (f & HAS_MAX != 0).then(|| f64::from_bits(h[1])),
            cached: (f & HAS_CACHED != 0).then(|| f64::from_bits(h[2])),
            count: f as u8,
            cached_days: (f >> 8) as u16,
            values: values.map_or([0.0; TODAY_VALUES], |v| v.map(f64::from_bits)),
        }
    }

    fn store(&self, h: &mut [u64; DAY_WORDS], values: Option<&mut [u64; TODAY_VALUES]>) {
        let has = |o: Option<f64>, bit: u64| if o.is_some() { bit } else { 0 };
        *h = [
            self.today as u64,
            self.today_max.map_or(0, f64::to_bits),
            self.cached.map_or(0, f64::to_bits),
            u64::from(self.count)
                | u64::from(self.cached_days) << 8
                | has(self.today_max, HAS_MAX)
                | has(self.cached, HAS_CACHED),
        ];
        if let Some(v) = values {
            *v = self.values.map(f64::to_bits);
        }
    }
}

/// Words per cache line.
const LINE_WORDS: usize = 8;

/// One cache line of a patient's hot state: the detectors (day statistics, EWMAs, latest
/// NEWS2 values) and last-seen times a reading reads and writes, as words, packed per
/// ruleset by [`pack`] so that a reading touches as few lines as it can. Each detector
/// decodes its words into its typed form (`load`), works on that and encodes it back
/// (`store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
struct Line([u64; LINE_WORDS]);

/// A word's position in a patient's hot lines (line `.0 / 8`, word `.0 % 8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word(u16);

impl Word {
    fn line(self) -> usize {
        usize::from(self.0) / LINE_WORDS
    }

    fn offset(self) -> usize {
        usize::from(self.0) % LINE_WORDS
    }
}

/// Today's values are one line.
const _: () = assert!(TODAY_VALUES == LINE_WORDS);

/// The latest SpO2, systolic, pulse and temperature of a NEWS2 rule, as words: the times
/// (`Timestamp` as `u64`), then `f64::to_bits` of the values or [`NO_VALUE`]. Their reading
/// ids are in an [`IdLine`].
const LATEST_WORDS: usize = 8;
const LATEST_EMPTY: [u64; LATEST_WORDS] = {
    let never = NEVER.0 as u64;
    [
        never, never, never, never, NO_VALUE, NO_VALUE, NO_VALUE, NO_VALUE,
    ]
};

/// The reading ids of a NEWS2 rule's latest values (nil until the value is there: the
/// value word says whether it is).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
struct IdLine([ReadingId; 4]);

impl IdLine {
    fn empty() -> IdLine {
        // The nil UUID (`Uuid::default`), named through `ReadingId`.
        IdLine([ReadingId(Default::default()); 4])
    }
}

/// A NaN bit pattern: no value of this kind yet.
const NO_VALUE: u64 = u64::MAX;

const NEWS2_KINDS: [Kind; 4] = [
    Kind::Spo2,
    Kind::Systolic,
    Kind::PulseRate,
    Kind::BodyTemperature,
];

/// One cache line of a patient's cold part ([`Cold`]). The first lines are the rules', one
/// each: the open alert (boxed, only while open), the unconfirmed first reading (boxed,
/// rare) and, in `w[0]`, the level (bits 0–7), the confirm ring's next slot (8–15) and its
/// mask of abnormal slots (16–23); line 0's `w[1]` is the enrolment time. The lines after
/// hold the other cold arrays as words, their pointers `None`: a run's first reading or a
/// confirm slot a line ([`RuleState::store_slot`]), then the day rings ([`DayLines`]).
#[derive(Clone, Debug, PartialEq)]
#[repr(C, align(64))]
struct RuleState {
    open: Option<Box<Alert>>,
    /// The first abnormal reading of a confirm-by-repeat rule still waiting for its repeat.
    unconfirmed: Option<Box<Unconfirmed>>,
    w: [u64; 6],
}

const _: () = assert!(std::mem::size_of::<RuleState>() == 64);

impl RuleState {
    fn level(&self) -> u8 {
        self.w[0] as u8
    }

    fn set_level(&mut self, level: u8) {
        self.w[0] = (self.w[0] & !0xff) | u64::from(level);
    }

    /// Bit i set: confirm slot i holds an abnormal reading.
    fn mask(&self) -> u8 {
        (self.w[0] >> 16) as u8
    }

    /// Stores a confirm slot (or a run's first reading) in the words: `w[0]` bit 0 says
    /// there is one, bit 1 that it has an abnormal item, bits 8.. the item's kind; `w[1]` the
    /// slot's time; `w[2]`, `w[3]` the item's reading id; `w[4]` its time and `w[5]` its
    /// value. All zeros for none.
    fn store_slot(&mut self, slot: Option<Slot>) {
        self.w = match slot {
            None => [0; 6],
            Some(Slot { at, abnormal: None }) => [1, at.0 as u64, 0, 0, 0, 0],
            Some(Slot {
                at,
                abnormal: Some(e),
            }) => {
                let (hi, lo) = e.reading.0.as_u64_pair();
                [
                    3 | (e.kind.index() as u64) << 8,
                    at.0 as u64,
                    hi,
                    lo,
                    e.at.0 as u64,
                    e.value.to_bits(),
                ]
            }
        };
    }

    /// The slot [`RuleState::store_slot`] stored.
    fn slot(&self) -> Option<Slot> {
        let w = &self.w;
        if w[0] & 1 == 0 {
            return None;
        }
        let abnormal = if w[0] & 2 != 0 {
            Some(EvidenceItem {
                reading: ReadingId(uuid::Uuid::from_u64_pair(w[2], w[3])),
                at: Timestamp(w[4] as i64),
                kind: *Kind::ALL.get((w[0] >> 8) as usize)?,
                value: f64::from_bits(w[5]),
            })
        } else {
            None
        };
        Some(Slot {
            at: Timestamp(w[1] as i64),
            abnormal,
        })
    }

    /// The first reading of a run, stored as a slot of its time.
    fn run(&self) -> Option<EvidenceItem> {
        self.slot().and_then(|s| s.abnormal)
    }

    fn set_run(&mut self, item: Option<EvidenceItem>) {
        self.store_slot(item.map(|e| Slot {
            at: e.at,
            abnormal: Some(e),
        }));
    }
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

const FRESH_RULE: RuleState = RuleState {
    open: None,
    unconfirmed: None,
    w: [0; 6],
};

const NEVER: Timestamp = Timestamp(i64::MIN);

/// A reading's values in canonical units, into `buf`; returns how many. Values that cannot
/// be converted are left out; absent ones are NaN (they count for adherence only).
fn measurements(reading: &Reading, buf: &mut [Measurement; Kind::COUNT]) -> usize {
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
    n
}

/// The sample of `reading` with its converted `values`.
fn sample_of<'a>(reading: &Reading, values: &'a [Measurement]) -> Sample<'a> {
    Sample {
        reading: reading.id,
        at: Timestamp::from_datetime(reading.measured_at),
        flags: reading.flags,
        values,
    }
}

/// Readings of a batch whose patients' state is fetched together before they are evaluated.
const PREFETCH_GROUP: usize = 16;

/// One patient's state: opaque, comparable (a replay must rebuild exactly this).
///
/// One entry of 512 bytes, eight cache lines (`repr(C)`, declaration order is layout
/// order): the header every reading reads (alert bits, gateway clock, ruleset, last-seen
/// times), the hot lines holding the detectors, packed per ruleset so that a reading
/// touches only the lines of what its kinds reach (a hypertension patient's reading, one or
/// two; a COPD patient's oximetry, six), and the reading ids of the latest NEWS2 values.
/// What is touched on abnormal readings, once a day or by `tick` (open alerts, confirm
/// slots, day rings, the enrolment time) is in [`Cold`], one allocation behind one pointer
/// (its lines are one miss away from the header, the open alerts two); hot lines past
/// [`HOT_INLINE`] and NEWS2 ids past the first rule's, for unusually large rulesets, are in
/// [`Spill`].
#[derive(Clone, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct PatientState {
    /// Bit r: rule r has an open alert (mirrors `rules[r].open`).
    open_bits: u64,
    /// Bit r: rule r has an unconfirmed reading or an abnormal confirm slot (mirrors
    /// `rules[r]`). A rule with neither bit needs nothing from a reading that is not abnormal.
    busy_bits: u64,
    gateway_heard: Timestamp,
    profile: ProfileIdx,
    on_oxygen: bool,
    /// Last-seen times (`Timestamp` as `u64`) of the kinds the ruleset's missing-data rules
    /// watch (see [`Seen`]).
    seen: [u64; SEEN_INLINE],
    cold: Cold,
    spill: Option<Box<Spill>>,
    /// Detector words, laid out by the ruleset (`Compiled::hot_init`).
    hot: [Line; HOT_INLINE],
    /// Reading ids of the first NEWS2 rule's latest values.
    ids: IdLine,
}

/// Hot lines held in a [`PatientState`] itself; a ruleset that needs more keeps the rest in
/// [`Spill`] (reached, not fetched ahead).
pub const HOT_INLINE: usize = 6;

/// Last-seen times held in the header (one: the header's room went to the cold part's
/// pointer, a slice's).
const SEEN_INLINE: usize = 1;

/// The part of a patient's state a normal reading does not touch: cache lines laid out per
/// ruleset (`Compiled::cold_init`), each rule's state first, then the runs, confirm slots
/// and day rings, as words (see [`RuleState`]). One allocation, so that each is one miss
/// from the header, and none past another.
#[derive(Clone, Debug, PartialEq)]
struct Cold {
    rules: Box<[RuleState]>,
}

/// What an unusually large ruleset keeps past the entry.
#[derive(Clone, Debug, PartialEq)]
struct Spill {
    /// Hot lines past [`HOT_INLINE`].
    hot_rest: Box<[Line]>,
    /// Reading ids of NEWS2 rules after the first.
    ids_rest: Box<[IdLine]>,
}

/// The header is one cache line, the whole entry eight.
const _: () = assert!(std::mem::offset_of!(PatientState, hot) == 64);
const _: () = assert!(std::mem::size_of::<PatientState>() == 512);

impl PatientState {
    fn new(profile: ProfileIdx, c: &Compiled, enrolled: Timestamp, on_oxygen: bool) -> Self {
        let z = c.sizes;
        let mut hot = [Line([0; LINE_WORDS]); HOT_INLINE];
        let inline = c.hot_init.len().min(HOT_INLINE);
        hot[..inline].copy_from_slice(&c.hot_init[..inline]);
        let mut rules = c.cold_init.clone();
        if let Some(first) = rules.first_mut() {
            first.w[1] = enrolled.0 as u64;
        }
        let spill = (c.hot_init.len() > inline || z.news2 > 1).then(|| {
            Box::new(Spill {
                hot_rest: c.hot_init[inline..].into(),
                ids_rest: vec![IdLine::empty(); z.news2.saturating_sub(1)].into_boxed_slice(),
            })
        });
        PatientState {
            open_bits: 0,
            busy_bits: 0,
            gateway_heard: enrolled,
            profile,
            on_oxygen,
            seen: [NEVER.0 as u64; SEEN_INLINE],
            cold: Cold { rules },
            spill,
            hot,
            ids: IdLine::empty(),
        }
    }

    /// Reads the header and one word of each hot line in `reach` (and the id line), so that
    /// their cache misses are in flight together: a batch does this for a group of readings
    /// before evaluating them. Returns the words folded together, for the caller to
    /// `black_box` once. (A prefetch instruction would not hold up the processor until the
    /// line arrives, but on stable Rust it needs `unsafe`, which the workspace forbids; plain
    /// loads, few instructions apart, keep many misses in the processor's window.)
    fn touch(&self, reach: Reach) -> u64 {
        let mut acc = self.open_bits;
        let mut lines = (reach & !REACH_IDS) >> 1;
        while lines != 0 {
            let l = lines.trailing_zeros() as usize;
            lines &= lines - 1;
            if let Some(line) = self.hot.get(l) {
                acc ^= line.0[0];
            }
        }
        if reach & REACH_IDS != 0 {
            acc ^= self.ids.0[0].0.as_u64_pair().0;
        }
        acc
    }

    /// Reads the cold lines applying `pending` will touch (each rule's line, its confirm
    /// ring and run; then the whole open alert of a rule whose verdict resolves it or changes
    /// its level), so that their misses are in flight together. Returns the words folded
    /// together.
    fn fetch_cold(&self, c: &Compiled, pending: &[(usize, Verdict)]) -> u64 {
        let lines = &self.cold.rules;
        let word = |l: usize| lines.get(l).map_or(0, |l| l.w[0]);
        let mut acc = 0;
        for &(i, _) in pending {
            let Some(lay) = c.layout.get(i) else {
                continue;
            };
            acc ^= word(i);
            let ring = usize::from(lay.ring_start);
            for l in ring..ring + usize::from(lay.ring_len) {
                acc ^= word(l);
            }
            if let Some(r) = lay.run {
                acc ^= word(usize::from(r));
            }
        }
        for (i, verdict) in pending {
            let Some(line) = lines.get(*i) else {
                continue;
            };
            let changes = match verdict {
                Verdict::Normal(_) => true,
                Verdict::Abnormal { level, .. } => *level != line.level(),
                Verdict::Between | Verdict::Unknown => false,
            };
            if changes && let Some(alert) = line.open.as_deref() {
                // A copy reads every line of it.
                acc ^= std::hint::black_box(*alert).at.0 as u64;
            }
        }
        acc
    }

    /// When the patient was enrolled (the missing-data clocks' start).
    fn enrolled(&self) -> Timestamp {
        Timestamp(self.cold.rules.first().map_or(0, |l| l.w[1]) as i64)
    }

    /// Brings rule `r`'s bits in `open_bits` and `busy_bits` up to date with its state.
    fn sync(&mut self, r: usize) {
        let bit = 1u64 << r;
        let st = &self.cold.rules[r];
        let (open, busy) = (
            st.open.is_some(),
            st.unconfirmed.is_some() || st.mask() != 0,
        );
        if open {
            self.open_bits |= bit;
        } else {
            self.open_bits &= !bit;
        }
        if busy {
            self.busy_bits |= bit;
        } else {
            self.busy_bits &= !bit;
        }
    }

    /// Hot line `l`.
    fn line_mut(&mut self, l: usize) -> Option<&mut Line> {
        match l.checked_sub(HOT_INLINE) {
            None => self.hot.get_mut(l),
            Some(r) => self.spill.as_deref_mut()?.hot_rest.get_mut(r),
        }
    }

    /// The `N` words at `w` (a unit never crosses a line; `None` if it would).
    fn unit<const N: usize>(&mut self, w: Word) -> Option<&mut [u64; N]> {
        self.line_mut(w.line())?
            .0
            .get_mut(w.offset()..)?
            .first_chunk_mut::<N>()
    }

    /// The latest values of NEWS2 rule `j` (in ruleset order), at `at`, and their reading
    /// ids.
    fn latest_mut(&mut self, at: Word, j: u16) -> Option<(&mut [u64; LATEST_WORDS], &mut IdLine)> {
        let PatientState {
            hot, ids, spill, ..
        } = self;
        let (hot_rest, ids_rest): (&mut [Line], &mut [IdLine]) = match spill.as_deref_mut() {
            Some(Spill { hot_rest, ids_rest }) => (hot_rest, ids_rest),
            None => (&mut [], &mut []),
        };
        let line = match at.line().checked_sub(HOT_INLINE) {
            None => hot.get_mut(at.line())?,
            Some(r) => hot_rest.get_mut(r)?,
        };
        let words = line
            .0
            .get_mut(at.offset()..)?
            .first_chunk_mut::<LATEST_WORDS>()?;
        let id_line = match usize::from(j).checked_sub(1) {
            None => ids,
            Some(r) => ids_rest.get_mut(r)?,
        };
        Some((words, id_line))
    }

    /// The reading ids of NEWS2 rule `j` (in ruleset order).
    #[cfg(test)]
    fn id_line_mut(&mut self, j: u16) -> Option<&mut IdLine> {
        match usize::from(j).checked_sub(1) {
            None => Some(&mut self.ids),
            Some(r) => self.spill.as_deref_mut()?.ids_rest.get_mut(r),
        }
    }

    /// The last reading of `kind` (any value), if a missing-data rule of the patient's
    /// ruleset watches it; [`NEVER`] before the first.
    fn last_seen(&mut self, c: &Compiled, kind: Kind) -> Timestamp {
        self.seen_mut(c, kind)
            .map_or(NEVER, |x| Timestamp(*x as i64))
    }

    /// Where the last-seen time (`Timestamp` as `u64`) of `kind` is kept, if a missing-data
    /// rule of the ruleset watches it.
    fn seen_mut(&mut self, c: &Compiled, kind: Kind) -> Option<&mut u64> {
        match c.seen_at[kind.index()]? {
            Seen::Header(i) => self.seen.get_mut(usize::from(i)),
            Seen::Hot(w) => self.unit::<1>(w).map(|[x]| x),
        }
    }
}

/// One rule's mutable state for the lifecycle, borrowed from its patient's cold lines.
struct RuleMut<'a> {
    st: &'a mut RuleState,
    slots: &'a mut [RuleState],
    /// The line of the current run's first reading (minimum-duration rules).
    run: Option<&'a mut RuleState>,
}

impl<'a> RuleMut<'a> {
    /// Rule `r`'s state, laid out as `lay` says, in `lines` (every rule's line comes before
    /// the runs', which come before the confirm slots).
    fn new(lines: &'a mut [RuleState], r: usize, lay: &Layout) -> Option<Self> {
        let (head, tail) = lines.split_at_mut(r.checked_add(1)?.min(lines.len()));
        let st = head.get_mut(r)?;
        let at = |line: u16| usize::from(line).checked_sub(r + 1);
        let (runs, slots) = tail.split_at_mut(at(lay.ring_start)?.min(tail.len()));
        let slots = slots
            .get_mut(..usize::from(lay.ring_len))
            .unwrap_or_default();
        let run = lay.run.and_then(at).and_then(|i| runs.get_mut(i));
        Some(RuleMut { st, slots, run })
    }

    fn ring(&mut self) -> Ring<'_> {
        Ring {
            slots: &mut *self.slots,
            state: &mut self.st.w[0],
        }
    }

    fn clear_run(&mut self) {
        if let Some(r) = self.run.as_deref_mut()
            && r.w[0] != 0
        {
            r.set_run(None);
        }
    }
}

/// The rules engine: rulesets, enrolled patients and their state.
#[derive(Debug, Default)]
pub struct Engine {
    profiles: Vec<Compiled>,
    patients: Vec<PatientState>,
    /// Each patient's ruleset, also in its state; kept apart (4 bytes a patient, in cache)
    /// so what a reading needs of the state is known before the state is fetched.
    profile_of: Vec<ProfileIdx>,
    keys: HashMap<PatientKey, PatientIdx>,
    /// A reading's verdicts that change a rule's state, by rule, kept between judging the
    /// reading and applying them (reused: empty between readings).
    pending: Vec<(usize, Verdict)>,
    spare: Spare,
}

/// Boxes of resolved alerts and settled unconfirmed readings, kept for the next ones that
/// readings raise or leave pending: a box just read is in cache, a fresh one from the
/// allocator often is not (and malloc and free are not free). At most [`SPARE`] of each.
// The boxes themselves are what is kept (a `Vec<Alert>` would copy the alert into a box
// allocated anew).
#[allow(clippy::vec_box)]
#[derive(Debug, Default)]
struct Spare {
    alerts: Vec<Box<Alert>>,
    unconfirmed: Vec<Box<Unconfirmed>>,
}

/// Spare boxes kept, of each kind.
const SPARE: usize = 32;

impl Spare {
    fn alert(&mut self, alert: Alert) -> Box<Alert> {
        match self.alerts.pop() {
            Some(mut b) => {
                *b = alert;
                b
            }
            None => Box::new(alert),
        }
    }

    fn keep_alert(&mut self, b: Box<Alert>) {
        if self.alerts.len() < SPARE {
            self.alerts.push(b);
        }
    }

    fn unconfirmed(&mut self, u: Unconfirmed) -> Box<Unconfirmed> {
        match self.unconfirmed.pop() {
            Some(mut b) => {
                *b = u;
                b
            }
            None => Box::new(u),
        }
    }

    /// Clears `slot`, keeping its box.
    fn settle(&mut self, slot: &mut Option<Box<Unconfirmed>>) {
        if let Some(b) = slot.take()
            && self.unconfirmed.len() < SPARE
        {
            self.unconfirmed.push(b);
        }
    }
}

/// What a rule's check made of a reading.
// Lives on the stack for one rule check and is never stored; boxing the big variant would
// allocate on every abnormal reading.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
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
            .push(PatientState::new(profile, c, enrolled, false));
        self.profile_of.push(profile);
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
        *p = PatientState::new(profile, c, p.enrolled(), p.on_oxygen);
        if let Some(slot) = self.profile_of.get_mut(idx.0 as usize) {
            *slot = profile;
        }
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
            .flat_map(|p| p.cold.rules.iter().filter_map(|r| r.open.as_deref()))
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
        let n = measurements(reading, &mut buf);
        self.evaluate(idx, &sample_of(reading, &buf[..n]), out)
    }

    /// Evaluates [`Reading`]s, in order, as [`Engine::evaluate_reading`] on each would (the
    /// same events in the same order), through [`Engine::evaluate_batch`]: ingest's path, a
    /// committed batch's readings at once.
    ///
    /// An index that names no patient is refused before anything is evaluated.
    pub fn evaluate_readings(
        &mut self,
        batch: &[(PatientIdx, &Reading)],
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        // Every reading's converted values in one vector, then the samples over it.
        let mut values = Vec::with_capacity(batch.len() * 3);
        let mut ends = Vec::with_capacity(batch.len());
        let mut buf = [Measurement {
            kind: Kind::Spo2,
            value: f64::NAN,
        }; Kind::COUNT];
        for (_, r) in batch {
            let n = measurements(r, &mut buf);
            values.extend_from_slice(&buf[..n]);
            ends.push(values.len());
        }
        let mut start = 0;
        let samples: Vec<(PatientIdx, Sample<'_>)> = batch
            .iter()
            .zip(ends)
            .map(|(&(idx, r), end)| {
                let s = sample_of(r, &values[start..end]);
                start = end;
                (idx, s)
            })
            .collect();
        self.evaluate_batch(&samples, out)
    }

    /// The lines of patient `idx`'s entry evaluating `s` will read (none for an unknown
    /// index), from the patient's ruleset, which is kept apart so that this needs nothing
    /// from the entry.
    fn reach(&self, idx: PatientIdx, s: &Sample<'_>) -> Reach {
        self.profile_of
            .get(idx.0 as usize)
            .and_then(|pr| self.profiles.get(pr.0 as usize))
            .map_or(0, |c| c.reach_of(s))
    }

    /// Evaluates a batch of readings, in order, exactly as [`Engine::evaluate`] on each would
    /// (events in the same order, each carrying its patient), but faster when the patients'
    /// state is not in cache: the state of the next readings' patients is fetched from memory
    /// together, a group at a time, instead of one miss after another.
    ///
    /// An index that names no patient is refused before anything is evaluated.
    pub fn evaluate_batch(
        &mut self,
        batch: &[(PatientIdx, Sample<'_>)],
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        if let Some((idx, _)) = batch
            .iter()
            .find(|(idx, _)| idx.0 as usize >= self.patients.len())
        {
            return Err(EngineError::UnknownPatient(idx.0));
        }
        let mut plan = [(0usize, 0 as Reach); PREFETCH_GROUP];
        for group in batch.chunks(PREFETCH_GROUP) {
            // First what each reading reaches (from the ruleset, in cache), then the loads,
            // back to back: few instructions between them, so that the whole group's misses
            // fit in the processor's window at once.
            for (slot, (idx, s)) in plan.iter_mut().zip(group) {
                *slot = (idx.0 as usize, self.reach(*idx, s));
            }
            let lines = plan[..group.len()].iter().fold(0, |a, &(i, reach)| {
                a ^ self.patients.get(i).map_or(0, |p| p.touch(reach))
            });
            std::hint::black_box(lines);
            for (idx, s) in group {
                self.evaluate_fetched(*idx, s, out)?;
            }
        }
        Ok(())
    }

    /// Evaluates one reading for one patient, pushing what it decides into `out`.
    pub fn evaluate(
        &mut self,
        idx: PatientIdx,
        s: &Sample<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        // The same sized fetch as a batch's: with the lines of a patient in one entry, it is
        // faster than fetching the whole entry when the state is not in cache (and slower by
        // a few instructions when it is).
        if let Some(p) = self.patients.get(idx.0 as usize) {
            std::hint::black_box(p.touch(self.reach(idx, s)));
        }
        self.evaluate_fetched(idx, s, out)
    }

    /// [`Engine::evaluate`] once the state is on its way.
    fn evaluate_fetched(
        &mut self,
        idx: PatientIdx,
        s: &Sample<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        let Engine {
            profiles,
            patients,
            pending,
            spare,
            ..
        } = self;
        let p = patients
            .get_mut(idx.0 as usize)
            .ok_or(EngineError::UnknownPatient(idx.0))?;
        let c = &profiles[p.profile.0 as usize];
        let ids = Ids {
            patient: idx,
            profile: p.profile,
        };
        // A repeat asked for earlier whose window has passed by this reading's time raises
        // now, before the reading is judged, as a tick in between would have. Not on a reading
        // the device doubts: nothing raises with one (the next trusted reading or tick does).
        if c.confirming & p.busy_bits & !p.open_bits != 0 && !s.flags.questions_the_value() {
            lapse_confirmations(c, p, ids, s.at, u64::MAX, out);
        }

        // Adherence and gateway liveness first: a doubtful reading still shows the patient
        // measured and the gateway is alive.
        let mut seen = 0u64;
        let mut touched = 0u64;
        let mut vals = Values([f64::NAN; Kind::COUNT]);
        for m in s.values {
            let k = m.kind.index();
            if let Some(last) = p.seen_mut(c, m.kind) {
                *last = (*last as i64).max(s.at.0) as u64;
            }
            seen |= c.by_seen[k];
            if m.value.is_finite() {
                touched |= c.by_value[k];
                if vals.0[k].is_nan() {
                    vals.0[k] = m.value;
                }
            }
        }
        p.gateway_heard = p.gateway_heard.max(s.at);
        // Only an open missing-data or silent-gateway alert is answered (rarely any).
        if (seen | c.gateway) & c.ticked & p.open_bits != 0 {
            resolve_ticked(c, p, ids, seen | c.gateway, s.at, out);
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
        let on_oxygen = p.on_oxygen;
        pending.clear();
        while touched != 0 {
            let i = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            let rule = &c.set.rules[i];
            let lay = &c.layout[i];
            let verdict = check(rule, lay, p, s, &vals, on_oxygen);
            let bit = 1u64 << i;
            // Whether the verdict changes nothing, so that the rule's state (in the cold part:
            // a cache miss or two) is not touched at all. Nothing pending (no unconfirmed
            // reading, no abnormal reading in the confirm ring) and no run: a reading between
            // the levels or that the rule cannot judge changes nothing, open alert or not, and
            // a normal one changes nothing unless it resolves an open alert. An abnormal one
            // changes nothing while the alert is open at the only level the rule has (it
            // updates only on a change of level).
            let idle = match verdict {
                Verdict::Between | Verdict::Unknown => p.busy_bits & bit == 0 && lay.run.is_none(),
                Verdict::Normal(_) => (p.open_bits | p.busy_bits) & bit == 0 && lay.run.is_none(),
                Verdict::Abnormal { .. } => p.open_bits & c.one_level & bit != 0,
            };
            if !idle {
                pending.push((i, verdict));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        // Judged every rule first (a check reads and writes only the hot lines), applied the
        // verdicts after, in rule order as before: so the cold lines they need (rule states,
        // confirm rings, runs, then the alerts that resolve or update) are fetched together
        // here, not one rule's miss after another's.
        std::hint::black_box(p.fetch_cold(c, pending));
        for &(i, ref verdict) in pending.iter() {
            let Some(mut rm) = RuleMut::new(&mut p.cold.rules, i, &c.layout[i]) else {
                continue;
            };
            lifecycle(
                &c.set.rules[i],
                &mut rm,
                ids,
                RuleIdx(i as u16),
                s,
                verdict,
                &mut repeat_sent,
                spare,
                out,
            );
            p.sync(i);
        }
        pending.clear();
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
            lapse_confirmations(c, p, ids, now, u64::MAX, out);
            let mut bits = c.ticked & !p.open_bits;
            while bits != 0 {
                let r = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let rule = &c.set.rules[r];
                let Some(clock) = ticked_clock(rule, c, p) else {
                    continue;
                };
                if clock.due(now) {
                    raise_ticked(c, p, ids, r, now, clock.context, out);
                }
            }
        }
    }

    /// The index of rule `id` in the patient's ruleset.
    pub fn rule_index(&self, idx: PatientIdx, id: &str) -> Option<RuleIdx> {
        let profile = self.profile_of.get(idx.0 as usize)?;
        let c = self.profiles.get(profile.0 as usize)?;
        let r = c.set.rules.iter().position(|rule| rule.id == id)?;
        Some(RuleIdx(r as u16))
    }

    /// After [`Engine::rebuild`] (and [`Engine::gateway_heard`] with when the hub was last
    /// heard): makes the alerts [`Engine::tick`] raises agree with the record's. Replay raises
    /// nothing, so without this the engine would not know of a missing-data, silent-gateway or
    /// lapsed-confirmation alert the record holds open: nothing would resolve it when the
    /// patient measures or the hub is heard, and the next tick would raise it again.
    ///
    /// `recorded` lists the patient's rules whose alert the record holds open, with when each
    /// was opened. For each of them that the tick drives and that is not open here:
    ///
    /// - still due at `now` (the hub still silent, the kind still missing, the repeat still
    ///   not made): open here too, since the record's opening time, and no event: the record
    ///   has it and whoever had to be told was told;
    /// - no longer due (the hub was heard, the kind measured, since it was raised; or its
    ///   window changed): an [`Event::Resolved`], at the moment that answered it (`now` if
    ///   that is not after the opening), for the caller to close the record's alert. A
    ///   lapsed confirmation that replay no longer finds pending is left to the readings.
    ///
    /// Nothing is raised: what is due and not in the record is for the next tick (a node
    /// starting after an outage would otherwise raise "hub silent" for every hub before their
    /// queued statuses and readings are read). Other rules are left as replay made them.
    pub fn settle(
        &mut self,
        idx: PatientIdx,
        now: Timestamp,
        recorded: &[(RuleIdx, Timestamp)],
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
        let opened = |r: usize| {
            recorded
                .iter()
                .find(|(rule, _)| usize::from(rule.0) == r)
                .map(|&(_, at)| at)
        };
        let mut mask = 0u64;
        for &(rule, _) in recorded {
            if usize::from(rule.0) < c.set.rules.len() {
                mask |= 1u64 << rule.0;
            }
        }
        // Raised here only to be adopted: the events are the record's already.
        let mut adopted = Vec::new();
        lapse_confirmations(c, p, ids, now, mask, &mut adopted);
        let mut bits = mask & c.ticked & !p.open_bits;
        while bits != 0 {
            let r = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let rule = &c.set.rules[r];
            let (Some(clock), Some(opened_at)) = (ticked_clock(rule, c, p), opened(r)) else {
                continue;
            };
            if clock.due(now) {
                raise_ticked(c, p, ids, r, now, clock.context, &mut adopted);
                continue;
            }
            let at = if clock.last > opened_at && clock.last <= now {
                clock.last
            } else {
                now
            };
            out.push(Event::Resolved(Alert {
                patient: idx,
                profile: ids.profile,
                rule: RuleIdx(r as u16),
                severity: rule.severity,
                audience: rule.audience,
                opened_at,
                at,
                evidence: Evidence::default(),
                context: clock.context,
            }));
        }
        for event in adopted {
            if let Event::Raised(a) = event
                && let Some(opened_at) = opened(usize::from(a.rule.0))
                && let Some(open) = p.cold.rules[usize::from(a.rule.0)].open.as_mut()
            {
                open.opened_at = opened_at;
            }
        }
        Ok(())
    }
}

/// Raises time-driven rule `r`, whose clock is due at `now`: level 1, the rule's severity, no
/// readings as evidence (what is missing is the evidence; `context` says since when).
fn raise_ticked(
    c: &Compiled,
    p: &mut PatientState,
    ids: Ids,
    r: usize,
    now: Timestamp,
    context: Context,
    out: &mut Vec<Event>,
) {
    let rule = &c.set.rules[r];
    raise(
        rule,
        &mut p.cold.rules[r],
        ids,
        RuleIdx(r as u16),
        now,
        1,
        rule.severity,
        Evidence::default(),
        context,
        out,
    );
    p.sync(r);
}

/// Where a time-driven rule's clock stands.
struct Clock {
    /// When it last restarted: the kind last measured (enrolment before the first), the hub
    /// last heard.
    last: Timestamp,
    /// How long it may run.
    within: i64,
    /// What a raise now would say.
    context: Context,
}

impl Clock {
    /// Whether the rule is due at `now`.
    fn due(&self, now: Timestamp) -> bool {
        now.since(self.last) > self.within
    }
}

/// The clock of a missing-data or silent-gateway rule; `None` for other rules.
fn ticked_clock(rule: &Rule, c: &Compiled, p: &mut PatientState) -> Option<Clock> {
    match rule.check {
        Check::Missing { measure, within } => {
            let last = match p.last_seen(c, measure) {
                NEVER => p.enrolled(),
                t => t,
            };
            Some(Clock {
                last,
                within,
                context: Context::Missing {
                    kind: measure,
                    last_seen: last,
                    within,
                },
            })
        }
        Check::SilentGateway { within } => Some(Clock {
            last: p.gateway_heard,
            within,
            context: Context::SilentGateway {
                last_heard: p.gateway_heard,
                within,
            },
        }),
        _ => None,
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
    let mut bits = bits & c.ticked & p.open_bits;
    while bits != 0 {
        let r = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        p.open_bits &= !(1u64 << r);
        let st = &mut p.cold.rules[r];
        if let Some(mut alert) = st.open.take() {
            alert.happened_at(at);
            match &mut alert.context {
                Context::Missing { last_seen, .. } => *last_seen = at,
                Context::SilentGateway { last_heard, .. } => *last_heard = at,
                _ => {}
            }
            st.set_level(0);
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

impl PatientState {
    /// Runs `f` on the [`Ewma`] at `at` and keeps what it leaves.
    fn with_ewma(&mut self, at: Word, f: impl FnOnce(&mut Ewma) -> Verdict) -> Verdict {
        let Some(w) = self.unit::<EWMA_WORDS>(at) else {
            return Verdict::Unknown;
        };
        let mut e = Ewma::load(w);
        let verdict = f(&mut e);
        e.store(w);
        verdict
    }

    /// Moves the [`DayStats`] at `at` (with today's values at `values`) to the day of `now`
    /// ([`DayStats::roll`] on its day ring), runs `f` on it and keeps what it leaves.
    #[allow(clippy::too_many_arguments)]
    fn with_days(
        &mut self,
        at: Word,
        values: Option<Word>,
        day_start: u16,
        day_len: u16,
        now: Timestamp,
        how: Summary,
        f: impl FnOnce(&mut DayStats) -> Verdict,
    ) -> Verdict {
        let today = values.and_then(|v| self.unit::<TODAY_VALUES>(v).map(|w| *w));
        let Some(h) = self.unit::<DAY_WORDS>(at) else {
            return Verdict::Unknown;
        };
        let mut days = DayStats::load(h, today.as_ref());
        if now.day() > days.today {
            // A new day (roll does nothing otherwise): only now is the ring needed.
            let mut ring = DayLines {
                lines: &mut self.cold.rules,
                start: usize::from(day_start),
                days: usize::from(day_len),
            };
            let last = (ring.start + ring.days).div_ceil(DAYS_PER_LINE);
            if ring.days == 0 || last > ring.lines.len() {
                return Verdict::Unknown;
            }
            days.roll(&mut ring, now, how);
        }
        let verdict = f(&mut days);
        if let Some(h) = self.unit::<DAY_WORDS>(at) {
            days.store(h, None);
        }
        if let Some(v) = values.and_then(|v| self.unit::<TODAY_VALUES>(v)) {
            *v = days.values.map(f64::to_bits);
        }
        verdict
    }
}

/// Runs a rule's check on a reading and updates the detector state.
fn check(
    rule: &Rule,
    lay: &Layout,
    det: &mut PatientState,
    s: &Sample<'_>,
    vals: &Values,
    on_oxygen: bool,
) -> Verdict {
    match (&rule.check, lay.det) {
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
            let p = vals.get(limit.measure);
            let q = also.and_then(|a| vals.get(a.measure).map(|v| (a, v)));
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
            DetSlot::Days {
                at,
                values,
                day_start,
                day_len,
            },
        ) => {
            let Some(x) = vals.get(*measure) else {
                return Verdict::Unknown;
            };
            det.with_days(
                at,
                values,
                day_start,
                day_len,
                s.at,
                Summary::MedianOfMedians,
                |days| {
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
                    days.add(s.at, x, Summary::MedianOfMedians);
                    verdict
                },
            )
        }
        (
            Check::BestDrop {
                measure,
                drop_percent,
                clear_percent,
                min_days,
                ..
            },
            DetSlot::Days {
                at,
                values,
                day_start,
                day_len,
            },
        ) => {
            let Some(x) = vals.get(*measure) else {
                return Verdict::Unknown;
            };
            det.with_days(at, values, day_start, day_len, s.at, Summary::Max, |days| {
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
                days.add(s.at, x, Summary::Max);
                verdict
            })
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
            DetSlot::Ewma(at),
        ) => {
            let Some(x) = vals.get(*measure) else {
                return Verdict::Unknown;
            };
            det.with_ewma(at, |e| {
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
            })
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
            DetSlot::Ewma(at),
        ) => {
            let Some(x) = vals.get(*measure) else {
                return Verdict::Unknown;
            };
            det.with_ewma(at, |e| {
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
            })
        }
        (
            Check::News2 {
                scale,
                on_oxygen: prescribed,
                fresh,
                min_response,
            },
            DetSlot::News2 { at, ids },
        ) => {
            let Some((l, ids_of)) = det.latest_mut(at, ids) else {
                return Verdict::Unknown;
            };
            // l[i]: when NEWS2_KINDS[i] was last measured; l[4 + i]: its value's bits.
            let when = |l: &[u64; LATEST_WORDS], i: usize| Timestamp(l[i] as i64);
            for (i, kind) in NEWS2_KINDS.into_iter().enumerate() {
                if let Some(v) = vals.get(kind)
                    && (l[4 + i] == NO_VALUE || when(l, i) <= s.at)
                {
                    l[i] = s.at.0 as u64;
                    l[4 + i] = v.to_bits();
                    ids_of.0[i] = s.reading;
                }
            }
            let mut fresh_vals = [None; 4];
            for (i, v) in fresh_vals.iter_mut().enumerate() {
                if l[4 + i] != NO_VALUE && s.at.since(when(l, i)) <= *fresh {
                    *v = Some(f64::from_bits(l[4 + i]));
                }
            }
            let [a, b, c, d] = fresh_vals;
            let score = news2::score(a, b, c, d, *scale, on_oxygen || *prescribed);
            if score.response >= *min_response {
                let mut evidence = Evidence::default();
                for (i, v) in fresh_vals.iter().enumerate() {
                    if let Some(value) = *v {
                        evidence.push(EvidenceItem {
                            reading: ids_of.0[i],
                            at: when(l, i),
                            kind: NEWS2_KINDS[i],
                            value,
                        });
                    }
                }
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
    rm: &mut RuleMut<'_>,
    ids: Ids,
    r: RuleIdx,
    s: &Sample<'_>,
    verdict: &Verdict,
    repeat_sent: &mut bool,
    spare: &mut Spare,
    out: &mut Vec<Event>,
) {
    match verdict {
        &Verdict::Abnormal {
            level,
            severity,
            ref evidence,
            context,
        } => {
            let st = &mut *rm.st;
            let current = st.level();
            if st.open.is_some() && level != current {
                st.set_level(level);
            }
            if let Some(open) = st.open.as_deref_mut() {
                if level != current {
                    open.severity = severity;
                    open.happened_at(s.at);
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
                Persistence::Immediate => Some(*evidence),
                Persistence::MinDuration(d) => {
                    let now = newest.unwrap_or(EvidenceItem {
                        reading: s.reading,
                        at: s.at,
                        kind: Kind::Spo2,
                        value: f64::NAN,
                    });
                    let first = match rm.run.as_deref_mut() {
                        Some(line) => match line.run() {
                            Some(first) => first,
                            None => {
                                line.set_run(Some(now));
                                now
                            }
                        },
                        None => now,
                    };
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
                    let mut ring = rm.ring();
                    ring.push(Slot {
                        at: s.at,
                        abnormal: newest,
                    });
                    let mut e = Evidence::default();
                    let mut count = 0u8;
                    for item in ring.abnormal_within(s.at, within) {
                        count += 1;
                        e.push(item);
                    }
                    (count >= n).then_some(e)
                }
            };
            let st = &mut *rm.st;
            if confirmed.is_none()
                && rule.ask_repeat
                && st.unconfirmed.is_none()
                && matches!(rule.persistence, Persistence::Confirm { .. })
            {
                st.unconfirmed = Some(spare.unconfirmed(Unconfirmed {
                    at: s.at,
                    level,
                    severity,
                    evidence: *evidence,
                    context,
                }));
            }
            match confirmed {
                Some(e) => {
                    rm.clear_run();
                    spare.settle(&mut rm.st.unconfirmed);
                    rm.ring().clear();
                    let alert = alert_of(rule, ids, r, s.at, severity, e, context);
                    rm.st.set_level(level);
                    rm.st.open = Some(spare.alert(alert));
                    out.push(Event::Raised(alert));
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
        &Verdict::Normal(context) => {
            rm.clear_run();
            rm.ring().push(Slot {
                at: s.at,
                abnormal: None,
            });
            let st = &mut *rm.st;
            spare.settle(&mut st.unconfirmed);
            if let Some(mut alert) = st.open.take() {
                st.set_level(0);
                alert.happened_at(s.at);
                alert.context = context;
                out.push(Event::Resolved(*alert));
                spare.keep_alert(alert);
            }
        }
        Verdict::Between | Verdict::Unknown => {
            rm.clear_run();
            if matches!(verdict, Verdict::Between) {
                // The repeat came back below the raise level: it did not confirm.
                spare.settle(&mut rm.st.unconfirmed);
            }
            rm.ring().push(Slot {
                at: s.at,
                abnormal: None,
            });
        }
    }
}

/// Raises, at `now`, every alert whose confirming repeat was asked for and did not come within
/// its window (the nurse hears of the reading unconfirmed rather than not at all). Run by
/// [`Engine::tick`] and before each reading is judged, at its time: so an alert whose window
/// lapsed between two readings is raised whether or not a tick came between them (a hub back
/// from a week offline delivers its readings with no tick between them), and live evaluation
/// agrees with a backtest. Only the rules in `only` ([`Engine::settle`]: those the record holds
/// open).
fn lapse_confirmations(
    c: &Compiled,
    p: &mut PatientState,
    ids: Ids,
    now: Timestamp,
    only: u64,
    out: &mut Vec<Event>,
) {
    // Only rules with an unconfirmed reading (busy) and no open alert can be due.
    let mut pending = c.confirming & p.busy_bits & !p.open_bits & only;
    while pending != 0 {
        let r = pending.trailing_zeros() as usize;
        pending &= pending - 1;
        let rule = &c.set.rules[r];
        let st = &p.cold.rules[r];
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
        let Some(mut rm) = RuleMut::new(&mut p.cold.rules, r, &c.layout[r]) else {
            continue;
        };
        if let Some(u) = rm.st.unconfirmed.take() {
            rm.ring().clear();
            raise(
                rule,
                rm.st,
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
        p.sync(r);
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
    let alert = alert_of(rule, ids, r, at, severity, evidence, context);
    st.set_level(level);
    st.open = Some(Box::new(alert));
    out.push(Event::Raised(alert));
}

/// The alert `rule` raises at `at`.
fn alert_of(
    rule: &Rule,
    ids: Ids,
    r: RuleIdx,
    at: Timestamp,
    severity: Severity,
    evidence: Evidence,
    context: Context,
) -> Alert {
    Alert {
        patient: ids.patient,
        profile: ids.profile,
        rule: r,
        severity,
        audience: rule.audience,
        opened_at: at,
        at,
        evidence,
        context,
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "cold_tests.rs"]
mod cold_tests;
