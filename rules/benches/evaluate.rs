//! Per-reading cost of [`rules::Engine::evaluate`] on the COPD fixture profile, across
//! patient counts and history lengths (it should be flat in both). `rpm bench rules` has the
//! fuller report with percentiles; this is the quick look: `cargo bench -p rules`.

use rules::{Engine, Measurement, PatientIdx, Profile, Sample, Timestamp};
use vitals::{Flags, Kind, PatientKey, ReadingId};

/// The allocator `rpm` uses (see its `main.rs`), so these figures are `rpm bench rules`'s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const COPD: &str = include_str!("../../fixtures/profiles/copd.toml");
const MIN: i64 = 60_000;

fn engine(patients: u32) -> Engine {
    let set = Profile::from_toml(COPD)
        .expect("fixture parses")
        .build()
        .expect("fixture valid");
    let mut e = Engine::new();
    let p = e.add_profile(set);
    for i in 0..patients {
        e.add_patient(
            PatientKey::new(format!("pt-{i}")).expect("key"),
            p,
            Timestamp(0),
        )
        .expect("enrol");
    }
    e
}

fn values(i: u64) -> [Measurement; 2] {
    [
        Measurement {
            kind: Kind::Spo2,
            value: 93.0 + (i % 5) as f64,
        },
        Measurement {
            kind: Kind::PulseRate,
            value: 70.0 + (i % 11) as f64,
        },
    ]
}

fn id() -> ReadingId {
    "6b1f4c1e-93a2-4f0e-9d7b-52c10e3a77d1"
        .parse()
        .expect("uuid")
}

/// One reading to each patient in turn (a reading every 10 minutes of simulated time).
#[divan::bench(args = [1_000, 100_000])]
fn across_patients(bencher: divan::Bencher, patients: u32) {
    let mut e = engine(patients);
    let reading = id();
    let mut out = Vec::with_capacity(64);
    let mut i = 0u64;
    bencher.bench_local(|| {
        let v = values(i);
        let p = (i % u64::from(patients)) as u32;
        let at = Timestamp((i / u64::from(patients)) as i64 * 10 * MIN);
        let s = Sample {
            reading,
            at,
            flags: Flags::EMPTY,
            values: &v,
        };
        out.clear();
        let _ = e.evaluate(PatientIdx(p), divan::black_box(&s), &mut out);
        i += 1;
    });
}

/// One patient after `history` readings: the cost must not grow with it.
#[divan::bench(args = [1_000, 100_000])]
fn after_history(bencher: divan::Bencher, history: u64) {
    let mut e = engine(1);
    let reading = id();
    let mut out = Vec::with_capacity(64);
    let mut i = 0u64;
    let step = |e: &mut Engine, out: &mut Vec<rules::Event>, i: u64| {
        let v = values(i);
        let s = Sample {
            reading,
            at: Timestamp(i as i64 * 10 * MIN),
            flags: Flags::EMPTY,
            values: &v,
        };
        out.clear();
        let _ = e.evaluate(PatientIdx(0), divan::black_box(&s), out);
    };
    while i < history {
        step(&mut e, &mut out, i);
        i += 1;
    }
    bencher.bench_local(|| {
        step(&mut e, &mut out, i);
        i += 1;
    });
}
