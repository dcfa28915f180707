//! What ingest pays to decode and validate one MQTT payload ([`vitals::Envelope::decode`]),
//! beside plain JSON parses of the same bytes measured in the same run:
//! `cargo bench -p vitals`. Envelopes of 1 reading (a live hub) and 200 (a hub's backlog).

use time::macros::datetime;
use vitals::{
    Decimal, DeviceIdentity, Envelope, Flags, GatewayId, Kind, Observed, PatientKey, Reading,
    ReadingId, ReadingType, Value,
};

/// The allocator `rpm` uses (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const SIZES: &[usize] = &[1, 200];

/// An encoded envelope of `n` SpO2 spot checks from one hub, as the bench fleet sends.
fn payload(n: usize) -> Vec<u8> {
    let gateway = GatewayId::new("bench-gw").expect("valid gateway id");
    let start = datetime!(2026-11-26 07:00:00 UTC);
    let readings = (0..n)
        .map(|i| {
            let at = start + time::Duration::milliseconds(i as i64);
            Reading {
                id: ReadingId(uuid::Uuid::nil()),
                seq: i as u64,
                gateway: gateway.clone(),
                patient: PatientKey::new(format!("bench-pk-{i}")).expect("valid key"),
                device: DeviceIdentity::new(
                    format!("eui64:be7c{:012x}", i)
                        .parse()
                        .expect("valid device id"),
                ),
                user_index: None,
                reading_type: ReadingType::OximetrySpotCheck,
                device_time: None,
                measured_at: at,
                received_at: at + time::Duration::milliseconds(250),
                values: vec![
                    Observed {
                        kind: Kind::Spo2,
                        value: Value::Number(Decimal::from_int(96)),
                        unit: Kind::Spo2.unit(),
                    },
                    Observed {
                        kind: Kind::PulseRate,
                        value: Value::Number(Decimal::from_int(72)),
                        unit: Kind::PulseRate.unit(),
                    },
                ],
                flags: Flags::EMPTY,
            }
            .with_computed_id()
        })
        .collect();
    Envelope {
        v: vitals::ENVELOPE_VERSION,
        gateway,
        seq: 1,
        sent_at: start,
        readings,
    }
    .encode()
}

/// Runs `parse` on the text of an `n`-reading envelope, counting readings.
fn bench_text<T>(bencher: divan::Bencher, n: usize, parse: impl Fn(&str) -> T + Sync) {
    let text = String::from_utf8(payload(n)).expect("UTF-8");
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .bench(|| parse(divan::black_box(&text)));
}

/// The whole decode: size, UTF-8, JSON, shape, version and every reading's checks and id.
#[divan::bench(args = SIZES)]
fn decode(bencher: divan::Bencher, n: usize) {
    bench_text(bencher, n, |t| {
        Envelope::decode(t.as_bytes()).expect("valid payload")
    });
}

/// Baseline: the same bytes into the same types with serde_json alone, no checks.
#[divan::bench(args = SIZES)]
fn serde_only(bencher: divan::Bencher, n: usize) {
    bench_text(bencher, n, |t| {
        serde_json::from_str::<Envelope>(t).expect("valid payload")
    });
}

/// The same parse recording the path to each field, as the slow path for bad payloads does
/// (and as every payload was parsed before).
#[divan::bench(args = SIZES)]
fn serde_with_path(bencher: divan::Bencher, n: usize) {
    bench_text(bencher, n, |t| {
        let mut de = serde_json::Deserializer::from_str(t);
        serde_path_to_error::deserialize::<_, Envelope>(&mut de).expect("valid payload")
    });
}

/// Baseline: the same bytes into a generic JSON tree.
#[divan::bench(args = SIZES)]
fn json_value(bencher: divan::Bencher, n: usize) {
    bench_text(bencher, n, |t| {
        serde_json::from_str::<serde_json::Value>(t).expect("valid JSON")
    });
}
