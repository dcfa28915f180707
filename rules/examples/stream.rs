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
//! `stream PATIENTS N latency [WARM]` times each reading on its own instead (two clock reads
//! around `Engine::evaluate`, as `rpm bench rules` does) and prints the latency split by
//! outcome: readings that produced no event, a repeat request only, a raise, an update or a
//! resolve, with each class's share and the share of the slowest 1 % it makes up. `WARM`
//! (default 3) is the warm-up readings per patient: `rpm bench rules` has run about 150 per
//! patient by its latency figures, when trends and day statistics have warmed up.

use std::time::Instant;

use rules::{Engine, Event, Measurement, PatientIdx, Profile, ProfileIdx, Sample, Timestamp};
use vitals::{Flags, Kind, PatientKey, ReadingId};

const COPD: &str = include_str!("../../fixtures/profiles/copd.toml");
const HYPERTENSION: &str = include_str!("../../fixtures/profiles/hypertension.toml");
const STEP_MS: i64 = 10 * 60_000;
const BATCH: usize = 64;

/// The same generator as `rpm bench rules`: xorshift patients, a patient's readings cycle
/// through oximetry, blood pressure and spirometry, mostly normal.
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
    Nothing,
    RepeatOnly,
    Raise,
    Update,
    Resolve,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (
        Outcome::Quiet,
        "no event, no abnormal value in the patient's last 3 readings",
    ),
    (
        Outcome::Nothing,
        "no event, an abnormal value in the last 3",
    ),
    (Outcome::RepeatOnly, "repeat request only"),
    (Outcome::Raise, "raise (any)"),
    (Outcome::Update, "update (no raise)"),
    (Outcome::Resolve, "resolve only"),
];

fn outcome(out: &[Event]) -> Outcome {
    let has = |f: fn(&Event) -> bool| out.iter().any(f);
    if out.is_empty() {
        Outcome::Nothing
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

/// Each reading timed on its own, split by what it produced (printed, nothing returned).
fn latency(e: &mut Engine, f: &mut Feed, n: usize, id: ReadingId, out: &mut Vec<Event>) {
    let mut buf = [Measurement {
        kind: Kind::Spo2,
        value: 0.0,
    }; 3];
    let mut all: Vec<(u32, u8)> = Vec::with_capacity(n);
    // Per patient, readings since the last abnormal value (the feed's `rare`).
    let mut since_rare = vec![u8::MAX; f.clocks.len()];
    for _ in 0..n {
        let (p, at, k) = f.next(&mut buf);
        let rare = buf[..k].iter().any(|m| {
            matches!(
                (m.kind, m.value),
                (Kind::Spo2, 87.0) | (Kind::Systolic, 185.0) | (Kind::Pef, 180.0)
            )
        });
        let since = &mut since_rare[p.0 as usize];
        *since = if rare { 0 } else { since.saturating_add(1) };
        let quiet = *since > 3;
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
        let o = match outcome(out) {
            Outcome::Nothing if quiet => Outcome::Quiet,
            o => o,
        };
        all.push((ns, o as u8));
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map_or(Ok(default), |s| s.parse())
            .expect("usage: stream [PATIENTS [READINGS [batch | latency [WARM]]]]")
    };
    let (patients, n) = (arg(1, 100_000).max(1), arg(2, 600_000));
    let batch = args.get(3).is_some_and(|a| a == "batch");
    let timed = args.get(3).is_some_and(|a| a == "latency");
    let warm = if timed { arg(4, 3) } else { 3 };
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
    let id: ReadingId = "6b1f4c1e-93a2-4f0e-9d7b-52c10e3a77d1"
        .parse()
        .expect("uuid");
    let mut feed = Feed {
        x: 0x9E37_79B9_7F4A_7C15,
        clocks: vec![0; patients],
    };
    let mut out = Vec::with_capacity(64);
    one_by_one(&mut e, &mut feed, patients * warm, id, &mut out);
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
