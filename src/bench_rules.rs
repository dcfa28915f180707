//! `rpm bench rules`: throughput and per-reading latency of the rules engine on one core,
//! and its cost per reading as one patient's history grows (it must stay flat).
//!
//! The engine is fed synthetic readings (oximetry, blood pressure and spirometry in turn)
//! for patients on the COPD and hypertension fixture profiles, half each, in a pseudo-random
//! patient order so state is not conveniently in cache. Every figure is printed beside its
//! same-run baseline: the harness alone (generating the same readings and making one
//! threshold comparison), and the cost of reading the clock, which bounds how finely
//! single-reading latency can be measured.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rules::{Engine, Event, Measurement, PatientIdx, Profile, ProfileIdx, Sample, Timestamp};
use vitals::{Flags, Kind, PatientKey, ReadingId};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Patients enrolled for the throughput and latency runs (100 000 is the target scale).
    pub patients: usize,
    /// Readings evaluated in the throughput run.
    pub readings: usize,
    /// Smaller runs (CI smoke test): histories of 1k/10k/100k instead of 1k/100k/1M.
    pub quick: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            patients: 100_000,
            readings: 5_000_000,
            quick: false,
        }
    }
}

const COPD: &str = include_str!("../fixtures/profiles/copd.toml");
const HYPERTENSION: &str = include_str!("../fixtures/profiles/hypertension.toml");
/// Ten minutes of simulated time between a patient's readings.
const STEP_MS: i64 = 10 * 60_000;
/// Readings per timed batch in the batch-latency figure.
const BATCH: usize = 64;

/// Deterministic xorshift, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The synthetic reading stream: patient, time and values for reading `i`.
struct Feed {
    rng: Rng,
    /// Patients in turn rather than at random (state streams through the cache in order).
    in_turn: Option<usize>,
    clocks: Vec<i64>,
    id: ReadingId,
}

impl Feed {
    fn new(patients: usize) -> anyhow::Result<Self> {
        Ok(Feed {
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            in_turn: None,
            clocks: vec![0; patients],
            id: "6b1f4c1e-93a2-4f0e-9d7b-52c10e3a77d1"
                .parse()
                .context("reading id")?,
        })
    }

    /// Next reading: a random patient, its clock advanced by ten minutes.
    fn next(&mut self, buf: &mut [Measurement; 3]) -> (PatientIdx, Timestamp, usize) {
        let r = self.rng.next();
        let p = match &mut self.in_turn {
            Some(k) => {
                *k = (*k + 1) % self.clocks.len();
                *k
            }
            None => (r % self.clocks.len() as u64) as usize,
        };
        self.clocks[p] += STEP_MS;
        let at = Timestamp(self.clocks[p]);
        let n = fill(buf, r >> 20, (self.clocks[p] / STEP_MS) as u64);
        (PatientIdx(p as u32), at, n)
    }
}

/// Wall-clock and on-CPU time of one timed section.
struct Stopwatch {
    wall: Instant,
    cpu: Option<u64>,
}

/// What a [`Stopwatch`] measured.
struct Measured {
    wall: std::time::Duration,
    cpu_ns: Option<u64>,
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch {
            cpu: thread_cpu_ns(),
            wall: Instant::now(),
        }
    }

    fn stop(self) -> Measured {
        let wall = self.wall.elapsed();
        let cpu_ns = match (self.cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => b.checked_sub(a),
            _ => None,
        };
        Measured { wall, cpu_ns }
    }
}

impl Measured {
    fn wall_ns(&self, readings: usize) -> f64 {
        self.wall.as_secs_f64() * 1e9 / readings.max(1) as f64
    }

    fn cpu_ns(&self, readings: usize) -> Option<f64> {
        self.cpu_ns.map(|c| c as f64 / readings.max(1) as f64)
    }
}

/// Nanoseconds this thread has spent on a CPU (Linux; `None` elsewhere).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reusable room for one batch of [`BATCH`] readings from a [`Feed`].
struct Batches {
    values: [[Measurement; 3]; BATCH],
    heads: [(PatientIdx, Timestamp, usize); BATCH],
}

impl Batches {
    fn new() -> Self {
        Batches {
            values: [[m(Kind::Spo2, 0.0); 3]; BATCH],
            heads: [(PatientIdx(0), Timestamp(0), 0); BATCH],
        }
    }

    /// The next [`BATCH`] readings of `feed`.
    fn fill(&mut self, feed: &mut Feed) -> [(PatientIdx, Sample<'_>); BATCH] {
        for (head, values) in self.heads.iter_mut().zip(&mut self.values) {
            *head = feed.next(values);
        }
        let (heads, values, id) = (&self.heads, &self.values, feed.id);
        std::array::from_fn(|j| {
            let (p, at, n) = heads[j];
            let s = Sample {
                reading: id,
                at,
                flags: Flags::EMPTY,
                values: &values[j][..n],
            };
            (p, s)
        })
    }
}

/// Values for a patient's `k`-th reading: oximetry, then BP, then spirometry; mostly
/// normal with some noise, now and then abnormal.
fn fill(buf: &mut [Measurement; 3], noise: u64, k: u64) -> usize {
    let jitter = (noise % 7) as f64;
    let rare = noise.is_multiple_of(97);
    match k % 3 {
        0 => {
            buf[0] = m(Kind::Spo2, if rare { 87.0 } else { 93.0 + jitter / 2.0 });
            buf[1] = m(Kind::PulseRate, 68.0 + jitter * 3.0);
            2
        }
        1 => {
            buf[0] = m(
                Kind::Systolic,
                if rare { 185.0 } else { 128.0 + jitter * 3.0 },
            );
            buf[1] = m(Kind::Diastolic, 78.0 + jitter);
            buf[2] = m(Kind::PulseRate, 70.0 + jitter);
            3
        }
        _ => {
            buf[0] = m(Kind::Fev1, 1.6 + jitter / 20.0);
            buf[1] = m(Kind::Pef, if rare { 180.0 } else { 300.0 + jitter * 5.0 });
            2
        }
    }
}

fn m(kind: Kind, value: f64) -> Measurement {
    Measurement { kind, value }
}

fn engine(patients: usize) -> anyhow::Result<Engine> {
    let mut e = Engine::new();
    let mut sets: Vec<ProfileIdx> = Vec::new();
    for (name, text) in [("copd", COPD), ("hypertension", HYPERTENSION)] {
        let set = Profile::from_toml(text)
            .and_then(|p| p.build())
            .with_context(|| format!("fixture profile {name}"))?;
        sets.push(e.add_profile(set));
    }
    for i in 0..patients {
        let key = PatientKey::new(format!("bench-{i}")).context("patient key")?;
        e.add_patient(key, sets[i % sets.len()], Timestamp(0))
            .context("enrol")?;
    }
    Ok(e)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")
}

/// The process's resident memory ([`crate::bench_gateway::rss_kb`]), how much of it is on
/// transparent huge pages (`AnonHugePages` of `/proc/self/smaps_rollup`) and the kernel's THP
/// mode: the engine's state for 100 000 patients is hundreds of megabytes of small boxes, and
/// whether they sit on 2 MiB pages (the allocator, `main.rs`) or on 4 KiB ones moves the
/// latency figures by about 15 % (BENCHMARKS.md). "n/a" for what this system does not say.
fn memory_line() -> String {
    let huge_kib = std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|rollup| {
            rollup.lines().find_map(|l| {
                let kb = l
                    .strip_prefix("AnonHugePages:")?
                    .trim()
                    .strip_suffix("kB")?;
                kb.trim().parse::<u64>().ok()
            })
        });
    let thp_mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| Some(s.split_once('[')?.1.split_once(']')?.0.to_owned()));
    let mib = |k: Option<u64>| k.map_or("n/a".to_owned(), |k| format!("{} MiB", k / 1024));
    let (resident_kib, _) = crate::bench_gateway::rss_kb();
    format!(
        "Memory after the run: {} resident, {} of it on transparent huge pages (kernel THP \
         mode: {}; allocator: mimalloc).",
        mib(Some(resident_kib).filter(|&k| k > 0)),
        mib(huge_kib),
        thp_mode.as_deref().unwrap_or("n/a")
    )
}

/// Runs the benchmark and returns a markdown report.
pub fn run(opts: &Options) -> anyhow::Result<String> {
    anyhow::ensure!(opts.patients > 0, "--patients must be at least 1");
    anyhow::ensure!(opts.readings > 0, "--readings must be at least 1");
    let mut report = String::new();
    let mut out: Vec<Event> = Vec::with_capacity(64);
    let mut buf = [m(Kind::Spo2, 0.0); 3];

    // Setup and warm-up: every patient gets a day of readings (baselines, EWMAs warm).
    let t = Instant::now();
    let mut e = engine(opts.patients)?;
    let mut feed = Feed::new(opts.patients)?;
    let enrol = t.elapsed();
    let warm = (opts.patients * 3).min(3_000_000);
    for _ in 0..warm {
        let (p, at, n) = feed.next(&mut buf);
        out.clear();
        let s = Sample {
            reading: feed.id,
            at,
            flags: Flags::EMPTY,
            values: &buf[..n],
        };
        e.evaluate(p, &s, &mut out).context("evaluate")?;
    }

    // Baseline: the harness alone, one threshold comparison per reading.
    let mut base_feed = Feed::new(opts.patients)?;
    let t = Stopwatch::start();
    let mut hits = 0u64;
    for _ in 0..opts.readings {
        let (p, at, n) = base_feed.next(&mut buf);
        let s = Sample {
            reading: base_feed.id,
            at,
            flags: Flags::EMPTY,
            values: &buf[..n],
        };
        let s = black_box(&s);
        hits += u64::from(s.values[0].value < 90.0) + u64::from(p.0 == u32::MAX);
    }
    black_box(hits);
    let base = t.stop();

    // Throughput.
    let mut raised = 0u64;
    let mut repeats = 0u64;
    let t = Stopwatch::start();
    for _ in 0..opts.readings {
        let (p, at, n) = feed.next(&mut buf);
        out.clear();
        let s = Sample {
            reading: feed.id,
            at,
            flags: Flags::EMPTY,
            values: &buf[..n],
        };
        e.evaluate(p, black_box(&s), &mut out).context("evaluate")?;
        for ev in &out {
            match ev {
                Event::Raised(_) => raised += 1,
                Event::RepeatRequested(_) => repeats += 1,
                _ => {}
            }
        }
    }
    let run = t.stop();

    // The same stream handed over in batches (`Engine::evaluate_batch`), as ingest has them:
    // a message's readings at once. Its baseline is the batch harness alone.
    let mut batch_buf = Batches::new();
    let mut base_feed = Feed::new(opts.patients)?;
    let t = Stopwatch::start();
    let mut hits = 0u64;
    for _ in 0..opts.readings / BATCH {
        let batch = batch_buf.fill(&mut base_feed);
        let batch = black_box(&batch);
        for (p, s) in batch {
            hits += u64::from(s.values[0].value < 90.0) + u64::from(p.0 == u32::MAX);
        }
    }
    black_box(hits);
    let batch_base = t.stop();
    let t = Stopwatch::start();
    for _ in 0..opts.readings / BATCH {
        let batch = batch_buf.fill(&mut feed);
        out.clear();
        e.evaluate_batch(black_box(&batch), &mut out)
            .context("evaluate")?;
    }
    let batched_run = t.stop();
    let batched_readings = (opts.readings / BATCH * BATCH).max(1);

    // The same, patients in turn: the best case for the cache, as when readings of one
    // patient arrive together.
    let mut turn_feed = Feed::new(opts.patients)?;
    turn_feed.in_turn = Some(0);
    turn_feed.clocks.clone_from(&feed.clocks);
    let t = Stopwatch::start();
    for _ in 0..opts.readings {
        let (p, at, n) = turn_feed.next(&mut buf);
        out.clear();
        let s = Sample {
            reading: turn_feed.id,
            at,
            flags: Flags::EMPTY,
            values: &buf[..n],
        };
        e.evaluate(p, black_box(&s), &mut out).context("evaluate")?;
    }
    let in_turn = t.stop();
    let n = opts.readings;

    let _ = writeln!(report, "# rules engine benchmark\n");
    let _ = writeln!(
        report,
        "{} patients (half COPD, half hypertension fixture profiles), {} readings in random \
         patient order, one core. Enrolment took {:.2} s; {} warm-up readings first.\n",
        opts.patients,
        opts.readings,
        enrol.as_secs_f64(),
        warm
    );
    let _ = writeln!(report, "{}\n", memory_line());
    let _ = writeln!(report, "## Throughput\n");
    let _ = writeln!(
        report,
        "Wall-clock time per reading, and the time this thread was actually on a CPU \
         (`/proc/thread-self/schedstat`; on a shared machine the wall clock also counts time \
         spent waiting for a core). Readings/s is from the wall clock.\n"
    );
    let _ = writeln!(
        report,
        "| run | ns/reading | on-CPU ns/reading | readings/s |"
    );
    let _ = writeln!(report, "| --- | ---: | ---: | ---: |");
    let batch = format!("engine, batches of {BATCH} (`Engine::evaluate_batch`)");
    for (name, m, n) in [
        ("baseline: harness + one comparison", &base, n),
        ("engine (`Engine::evaluate`)", &run, n),
        (
            "baseline: batch harness + one comparison",
            &batch_base,
            batched_readings,
        ),
        (batch.as_str(), &batched_run, batched_readings),
        ("engine, patients in turn instead of random", &in_turn, n),
    ] {
        let _ = writeln!(
            report,
            "| {name} | {:.1} | {} | {:.2} M |",
            m.wall_ns(n),
            m.cpu_ns(n).map_or("n/a".to_owned(), |c| format!("{c:.1}")),
            1e3 / m.wall_ns(n).max(1e-9)
        );
    }
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "{raised} alerts raised and {repeats} repeat requests during the run.\n"
    );

    // Latency: each reading timed on its own, and batches of BATCH readings.
    let samples = if opts.quick { 200_000 } else { 1_000_000 }.min(opts.readings.max(1_000));
    let mut clock = histogram()?;
    for _ in 0..samples {
        let t = Instant::now();
        let d = t.elapsed();
        clock.saturating_record(d.as_nanos() as u64);
    }
    let mut single = histogram()?;
    for _ in 0..samples {
        let (p, at, n) = feed.next(&mut buf);
        out.clear();
        let s = Sample {
            reading: feed.id,
            at,
            flags: Flags::EMPTY,
            values: &buf[..n],
        };
        let t = Instant::now();
        e.evaluate(p, black_box(&s), &mut out).context("evaluate")?;
        single.saturating_record(t.elapsed().as_nanos() as u64);
    }
    let mut batched = histogram()?;
    for _ in 0..samples / BATCH {
        let t = Instant::now();
        for _ in 0..BATCH {
            let (p, at, n) = feed.next(&mut buf);
            out.clear();
            let s = Sample {
                reading: feed.id,
                at,
                flags: Flags::EMPTY,
                values: &buf[..n],
            };
            e.evaluate(p, black_box(&s), &mut out).context("evaluate")?;
        }
        batched.saturating_record(t.elapsed().as_nanos() as u64 / BATCH as u64);
    }
    let _ = writeln!(report, "## Latency per reading (ns)\n");
    let _ = writeln!(
        report,
        "Single readings are timed with two clock reads each, so they include the clock's \
         own cost (first row, measured in the same run). Batches time {BATCH} readings and \
         divide, which removes the clock cost but averages within a batch (harness \
         included).\n"
    );
    let _ = writeln!(
        report,
        "| measurement | samples | p50 | p99 | p99.9 | max |"
    );
    let _ = writeln!(report, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, h) in [
        ("baseline: clock read alone", &clock),
        ("single reading (incl. clock)", &single),
        ("batch of 64, per reading", &batched),
    ] {
        let _ = writeln!(
            report,
            "| {name} | {} | {} | {} | {} | {} |",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }

    // Flatness: one patient, growing history.
    let histories: [u64; 3] = if opts.quick {
        [1_000, 10_000, 100_000]
    } else {
        [1_000, 100_000, 1_000_000]
    };
    let measured: u64 = if opts.quick { 20_000 } else { 200_000 };
    let _ = writeln!(
        report,
        "\n## Cost per reading as one patient's history grows\n"
    );
    let _ = writeln!(
        report,
        "One COPD patient, a reading every ten minutes; after the history, the next \
         {measured} readings are timed together.\n"
    );
    let _ = writeln!(report, "| history (readings) | ns/reading |");
    let _ = writeln!(report, "| ---: | ---: |");
    for history in histories {
        let mut e = engine(1)?;
        let mut k = 0u64;
        let id = feed.id;
        let mut step = |e: &mut Engine, out: &mut Vec<Event>, k: u64| -> anyhow::Result<()> {
            let n = fill(&mut buf, k.wrapping_mul(0x9E37_79B9), k);
            out.clear();
            let s = Sample {
                reading: id,
                at: Timestamp(k as i64 * STEP_MS),
                flags: Flags::EMPTY,
                values: &buf[..n],
            };
            e.evaluate(PatientIdx(0), black_box(&s), out)
                .context("evaluate")
        };
        while k < history {
            step(&mut e, &mut out, k)?;
            k += 1;
        }
        let t = Instant::now();
        for _ in 0..measured {
            step(&mut e, &mut out, k)?;
            k += 1;
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / measured as f64;
        let _ = writeln!(report, "| {history} | {ns:.1} |");
    }
    Ok(report)
}
