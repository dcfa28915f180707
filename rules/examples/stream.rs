//! A synthetic stream for counting what a reading costs: 100 000 patients (by default) on the
//! COPD and hypertension fixture profiles, one warm-up reading of each kind per patient, then
//! N readings in random patient order — the stream `rpm bench rules` times — evaluated one
//! by one or in batches of 64. The timed part is the function `stream::measure`, so a
//! simulator can count only it:
//!
//! ```sh
//! cargo build --release -p rules --example stream
//! valgrind --tool=callgrind --toggle-collect='stream::measure' \
//!     --cache-sim=yes --D1=49152,12,64 --LL=2097152,16,64 \
//!     target/release/examples/stream 100000 600000 [batch]
//! ```
//!
//! Instructions (and simulated misses) divided by N are the cost per reading; unlike time on
//! a shared machine they repeat exactly. Run natively it prints time per reading too.
//!
//! `stream PATIENTS N classes [WARM]` evaluates each reading through a function of its
//! outcome (`class_quiet`, `class_raise`, …; learnt from a twin engine first) and prints how
//! many each had, so that callgrind with `--toggle-collect='stream::class_*'` counts the cost
//! of each outcome apart.
//!
//! `stream PATIENTS N latency [WARM]` times each reading on its own instead (two clock reads
//! around `Engine::evaluate`, as `rpm bench rules` does) and prints the latency split by
//! outcome: readings that produced no event, a repeat request only, a raise, an update or a
//! resolve, with each class's share and the share of the slowest 1 % it makes up. `WARM`
//! (default 3; after `single`, `batch` or `latency`) is the warm-up readings per patient:
//! `rpm bench rules` has run about 150 per patient by its latency figures, when trends and
//! day statistics have warmed up.

use std::time::Instant;

use rules::{Engine, Event, Measurement, PatientIdx, Profile, ProfileIdx, Sample, Timestamp};
use vitals::{Flags, Kind, PatientKey, ReadingId};

/// The allocator `rpm` uses (see its `main.rs`), so these figures are `rpm bench rules`'s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COPD: &str = include_str!("../../fixtures/profiles/copd.toml");
const HYPERTENSION: &str = include_str!("../../fixtures/profiles/hypertension.toml");
const STEP_MS: i64 = 10 * 60_000;
const BATCH: usize = 64;

/// The same generator as `rpm bench rules`: xorshift patients, a patient's readings cycle
/// through oximetry, blood pressure and spirometry, mostly normal.
#[derive(Clone)]
struct Feed {
    x: u64,
    clocks: Vec<i64>,
}

impl Feed {
    fn next(&mut self, buf: &mut [Measurement; 3]) -> (PatientIdx, Timestamp, usize) {
        let mut x = self.x;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.x = x;
        let p = (x % self.clocks.len() as u64) as usize;
        self.clocks[p] += STEP_MS;
        let (noise, k) = (x >> 20, (self.clocks[p] / STEP_MS) as u64);
        let jitter = (noise % 7) as f64;
        let rare = noise.is_multiple_of(97);
        let m = |kind, value| Measurement { kind, value };
        let n = match k % 3 {
            0 => {
                buf[0] = m(Kind::Spo2, if rare { 87.0 } else { 93.0 + jitter / 2.0 });
                buf[1] = m(Kind::PulseRate, 68.0 + jitter * 3.0);
                2
            }
            1 => {
                let sys = if rare { 185.0 } else { 128.0 + jitter * 3.0 };
                buf[0] = m(Kind::Systolic, sys);
                buf[1] = m(Kind::Diastolic, 78.0 + jitter);
                buf[2] = m(Kind::PulseRate, 70.0 + jitter);
                3
            }
            _ => {
                buf[0] = m(Kind::Fev1, 1.6 + jitter / 20.0);
                buf[1] = m(Kind::Pef, if rare { 180.0 } else { 300.0 + jitter * 5.0 });
                2
            }
        };
        (PatientIdx(p as u32), Timestamp(self.clocks[p]), n)
    }
}

fn one_by_one(e: &mut Engine, f: &mut Feed, n: usize, id: ReadingId, out: &mut Vec<Event>) -> u64 {
    let mut events = 0;
    let mut buf = [Measurement {
        kind: Kind::Spo2,
        value: 0.0,
    }; 3];
    for _ in 0..n {
        let (p, at, k) = f.next(&mut buf);
        out.clear();
        let s = Sample {
            reading: id,
            at,
            flags: Flags::EMPTY,
            values: &buf[..k],
        };
        e.evaluate(p, &s, out).expect("enrolled");
        events += out.len() as u64;
    }
    events
}

/// The counted part.
#[inline(never)]
fn measure(
    e: &mut Engine,
    f: &mut Feed,
    n: usize,
    id: ReadingId,
    batch: bool,
    out: &mut Vec<Event>,
) -> u64 {
    if !batch {
        return one_by_one(e, f, n, id, out);
    }
    let mut events = 0;
    let mut values = [[Measurement {
        kind: Kind::Spo2,
        value: 0.0,
    }; 3]; BATCH];
    let mut heads = [(PatientIdx(0), Timestamp(0), 0); BATCH];
    for _ in 0..n / BATCH {
        for (head, v) in heads.iter_mut().zip(&mut values) {
            *head = f.next(v);
        }
        let batch: [(PatientIdx, Sample<'_>); BATCH] = std::array::from_fn(|j| {
            let (p, at, k) = heads[j];
            let s = Sample {
                reading: id,
                at,
                flags: Flags::EMPTY,
                values: &values[j][..k],
            };
            (p, s)
        });
        out.clear();
        e.evaluate_batch(&batch, out).expect("enrolled");
        events += out.len() as u64;
    }
    events
}

/// Nanoseconds this thread has spent on a CPU (Linux; `None` elsewhere): on a shared
/// machine the wall clock also counts time spent waiting for a core.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What a reading produced, for the latency split.
#[derive(Clone, Copy)]
enum Outcome {
    Quiet,
    NewDay,
    Nothing,
    RepeatOnly,
    Raise,
    Update,
    Resolve,
}

const OUTCOMES: [(Outcome, &str); 7] = [
    (
        Outcome::Quiet,
        "no event, quiet (no alert open, no abnormal value in the device's last 5)",
    ),
    (
        Outcome::NewDay,
        "no event, quiet, a COPD patient's first spirometry or oximetry of the day",
    ),
    (Outcome::Nothing, "no event, not quiet"),
    (Outcome::RepeatOnly, "repeat request only"),
    (Outcome::Raise, "raise (any)"),
    (Outcome::Update, "update (no raise)"),
    (Outcome::Resolve, "resolve only"),
];

/// What a reading produced (`quiet`, `new_day`: see [`Classifier::before`]).
fn outcome(out: &[Event], (quiet, new_day): (bool, bool)) -> Outcome {
    let has = |f: fn(&Event) -> bool| out.iter().any(f);
    if out.is_empty() {
        match (quiet, new_day) {
            (true, true) => Outcome::NewDay,
            (true, false) => Outcome::Quiet,
            (false, _) => Outcome::Nothing,
        }
    } else if has(|e| matches!(e, Event::Raised(_))) {
        Outcome::Raise
    } else if has(|e| matches!(e, Event::Updated(_))) {
        Outcome::Update
    } else if has(|e| matches!(e, Event::Resolved(_))) {
        Outcome::Resolve
    } else {
        Outcome::RepeatOnly
    }
}

/// What the stream says of a reading before it is evaluated.
struct Classifier {
    /// Per patient and device (oximetry, blood pressure, spirometry), that device's readings
    /// since its last abnormal value (the feed's `rare`).
    since_rare: Vec<[u8; 3]>,
    /// Per patient, alerts open (from the engine at the start, then from the events).
    open: Vec<u8>,
    /// Per patient, the day of its last oximetry and last spirometry: a COPD patient's first
    /// of the day closes the previous day in its day statistics (baseline, personal best).
    /// (Started at the day of its last reading of any kind: a few minutes off at midnight.)
    last_day: Vec<[i64; 2]>,
}

impl Classifier {
    fn new(e: &Engine, f: &Feed) -> Self {
        let n = f.clocks.len();
        Classifier {
            since_rare: vec![[u8::MAX; 3]; n],
            open: (0..n)
                .map(|p| e.open_alerts(PatientIdx(p as u32)).count() as u8)
                .collect(),
            last_day: f.clocks.iter().map(|&c| [Timestamp(c).day(); 2]).collect(),
        }
    }

    /// Whether the patient is quiet (no alert open, no abnormal value in the last 5
    /// readings of this reading's device, this one included: the confirm rings are at most 5
    /// long), and whether this is a COPD patient's first oximetry or spirometry of the day.
    fn before(&mut self, p: PatientIdx, at: Timestamp, values: &[Measurement]) -> (bool, bool) {
        let rare = values.iter().any(|m| {
            matches!(
                (m.kind, m.value),
                (Kind::Spo2, 87.0) | (Kind::Systolic, 185.0) | (Kind::Pef, 180.0)
            )
        });
        let device = match values.first().map(|m| m.kind) {
            Some(Kind::Spo2) => 0,
            Some(Kind::Systolic) => 1,
            _ => 2,
        };
        let since = &mut self.since_rare[p.0 as usize][device];
        *since = if rare { 0 } else { since.saturating_add(1) };
        let quiet = *since >= 5 && self.open[p.0 as usize] == 0;
        let new_day = device != 1 && {
            let day = &mut self.last_day[p.0 as usize][device / 2];
            let new = at.day() > *day;
            *day = at.day();
            // Patients alternate COPD, hypertension: even indices are COPD.
            new && p.0.is_multiple_of(2)
        };
        (quiet, new_day)
    }

    /// Counts the alerts the reading's events opened and closed.
    fn after(&mut self, p: PatientIdx, out: &[Event]) {
        let open = &mut self.open[p.0 as usize];
        for e in out {
            match e {
                Event::Raised(_) => *open += 1,
                Event::Resolved(_) => *open -= 1,
                _ => {}
            }
        }
    }
}

/// Each reading timed on its own, split by what it produced (printed, nothing returned).
fn latency(e: &mut Engine, f: &mut Feed, n: usize, id: ReadingId, out: &mut Vec<Event>) {
    let mut buf = [Measurement {
        kind: Kind::Spo2,
        value: 0.0,
    }; 3];
    let mut all: Vec<(u32, u8)> = Vec::with_capacity(n);
    let mut classes = Classifier::new(e, f);
    for _ in 0..n {
        let (p, at, k) = f.next(&mut buf);
        let before = classes.before(p, at, &buf[..k]);
        out.clear();
        let s = Sample {
            reading: id,
            at,
            flags: Flags::EMPTY,
            values: &buf[..k],
        };
        let t = Instant::now();
        e.evaluate(p, std::hint::black_box(&s), out)
            .expect("enrolled");
        let ns = t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32;
        all.push((ns, outcome(out, before) as u8));
        classes.after(p, out);
    }
    let pct = |v: &[u32], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let mut total: Vec<u32> = all.iter().map(|&(ns, _)| ns).collect();
    total.sort_unstable();
    let p99 = pct(&total, 0.99);
    println!(
        "{n} readings one at a time: p50 {} p99 {p99} p99.9 {} ns",
        pct(&total, 0.5),
        pct(&total, 0.999)
    );
    let tail = all.iter().filter(|&&(ns, _)| ns > p99).count().max(1);
    println!("| outcome | share | p50 | p99 | p99.9 | share of the slowest 1 % |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (o, name) in OUTCOMES {
        let mut v: Vec<u32> = all
            .iter()
            .filter(|&&(_, c)| c == o as u8)
            .map(|&(ns, _)| ns)
            .collect();
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        let slow = v.iter().filter(|&&ns| ns > p99).count();
        println!(
            "| {name} | {:.2} % | {} | {} | {} | {:.1} % |",
            v.len() as f64 * 100.0 / n.max(1) as f64,
            pct(&v, 0.5),
            pct(&v, 0.99),
            pct(&v, 0.999),
            slow as f64 * 100.0 / tail as f64
        );
    }
}

/// Evaluates `s` on `e`; one copy per outcome so that callgrind counts each apart
/// (`--toggle-collect='stream::class_*'`).
/// (Each passes its own number to `black_box`, or the compiler folds them into one.)
macro_rules! class_fns {
    ($($name:ident = $n:literal),*) => {$(
        #[inline(never)]
        fn $name(e: &mut Engine, p: PatientIdx, s: &Sample<'_>, out: &mut Vec<Event>) {
            std::hint::black_box($n);
            e.evaluate(p, s, out).expect("enrolled");
        }
    )*};
}

class_fns!(
    class_quiet = 0,
    class_new_day = 1,
    class_nothing = 2,
    class_repeat = 3,
    class_raise = 4,
    class_update = 5,
    class_resolve = 6
);

/// The stream evaluated on `twin` first, to learn each reading's outcome, then on `e`
/// through the `class_*` function of that outcome (engines built and warmed up alike).
fn by_class(e: &mut Engine, twin: &mut Engine, f: &mut Feed, n: usize, id: ReadingId) {
    let mut buf = [Measurement {
        kind: Kind::Spo2,
        value: 0.0,
    }; 3];
    let (mut out, mut twin_out) = (Vec::with_capacity(64), Vec::with_capacity(64));
    let mut classes = Classifier::new(twin, f);
    let mut counts = [0u64; OUTCOMES.len()];
    for _ in 0..n {
        let (p, at, k) = f.next(&mut buf);
        let before = classes.before(p, at, &buf[..k]);
        let s = Sample {
            reading: id,
            at,
            flags: Flags::EMPTY,
            values: &buf[..k],
        };
        twin_out.clear();
        twin.evaluate(p, &s, &mut twin_out).expect("enrolled");
        let o = outcome(&twin_out, before);
        classes.after(p, &twin_out);
        counts[o as usize] += 1;
        out.clear();
        let class = match o {
            Outcome::Quiet => class_quiet,
            Outcome::NewDay => class_new_day,
            Outcome::Nothing => class_nothing,
            Outcome::RepeatOnly => class_repeat,
            Outcome::Raise => class_raise,
            Outcome::Update => class_update,
            Outcome::Resolve => class_resolve,
        };
        class(e, p, &s, &mut out);
        assert_eq!(out, twin_out, "the twin engines agree");
    }
    println!("{n} readings by outcome (divide each class_* function's cost by its count):");
    for (o, name) in OUTCOMES {
        println!("{:>8}  {name}", counts[o as usize]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| {
        args.get(i).map_or(Ok(default), |s| s.parse()).expect(
            "usage: stream [PATIENTS [READINGS [single | batch | latency | classes [WARM]]]]",
        )
    };
    let (patients, n) = (arg(1, 100_000).max(1), arg(2, 600_000));
    let batch = args.get(3).is_some_and(|a| a == "batch");
    let timed = args.get(3).is_some_and(|a| a == "latency");
    let split = args.get(3).is_some_and(|a| a == "classes");
    let warm = arg(4, 3);
    let id: ReadingId = "6b1f4c1e-93a2-4f0e-9d7b-52c10e3a77d1"
        .parse()
        .expect("uuid");
    let start = Feed {
        x: 0x9E37_79B9_7F4A_7C15,
        clocks: vec![0; patients],
    };
    let mut out = Vec::with_capacity(64);
    let warmed = |out: &mut Vec<Event>| {
        let mut e = Engine::new();
        let sets: Vec<ProfileIdx> = [COPD, HYPERTENSION]
            .iter()
            .map(|t| {
                let set = Profile::from_toml(t).and_then(|p| p.build());
                e.add_profile(set.expect("fixture profile"))
            })
            .collect();
        for i in 0..patients {
            let key = PatientKey::new(format!("stream-{i}")).expect("key");
            e.add_patient(key, sets[i % sets.len()], Timestamp(0))
                .expect("new patient");
        }
        let mut feed = start.clone();
        one_by_one(&mut e, &mut feed, patients * warm, id, out);
        (e, feed)
    };
    let (mut e, mut feed) = warmed(&mut out);
    if split {
        let (mut twin, _) = warmed(&mut out);
        by_class(&mut e, &mut twin, &mut feed, n, id);
        return;
    }
    if timed {
        latency(&mut e, &mut feed, n, id, &mut out);
        return;
    }
    let cpu = thread_cpu_ns();
    let t = Instant::now();
    let events = measure(&mut e, &mut feed, n, id, batch, &mut out);
    let ns = t.elapsed().as_secs_f64() * 1e9 / n.max(1) as f64;
    let on_cpu = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) => format!("{:.1}", b.saturating_sub(a) as f64 / n.max(1) as f64),
        _ => "?".into(),
    };
    println!(
        "{n} readings{}: {ns:.1} ns/reading, {on_cpu} on-CPU ns/reading, {events} events",
        if batch { " in batches" } else { "" }
    );
}
