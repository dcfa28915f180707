//! Support for `rpm bench ingest` and the record's tests: a registered fleet of synthetic
//! patients and devices with a generator of valid readings, and the raw bulk-insert baseline.
//!
//! The baseline ([`Record::raw_insert_benchmark`]) inserts rows equivalent to what
//! [`Record::insert_batch`] writes (one reading row and two value rows per reading) into two
//! scratch tables with nothing but a primary key, in transactions of the same size and with
//! the same durability, then drops them: the database's own ceiling on this machine, to print
//! beside the record's figure.

use std::time::{Duration, Instant};

use sqlx::QueryBuilder;
use time::OffsetDateTime;
use vitals::{
    Decimal, DeviceId, DeviceIdentity, GatewayId, Kind, Observed, PatientKey, Reading, ReadingId,
    ReadingType, Value,
};

use super::{Record, RecordError, Result, with_pool};

/// A gateway with `patients` patients, each with one bound pulse oximeter, registered in a
/// record; [`BenchFleet::readings`] makes valid, distinct readings for them.
#[derive(Clone, Debug)]
pub struct BenchFleet {
    /// The gateway every reading comes through.
    pub gateway: GatewayId,
    /// Patient `i` uses device `i`.
    pub patients: Vec<PatientKey>,
    /// The devices.
    pub devices: Vec<DeviceId>,
    /// Measurement times start here.
    pub start: OffsetDateTime,
}

impl BenchFleet {
    /// Registers (or finds already registered) `bench-gw`, `bench-pk-{i}` and their devices
    /// (in bulk, [`Record::bench_register`]).
    pub async fn setup(record: &Record, patients: usize) -> Result<Self> {
        let start = OffsetDateTime::from_unix_timestamp(1_790_000_000)
            .map_err(|e| RecordError::Invalid(e.to_string()))?;
        let gateway =
            GatewayId::new("bench-gw").map_err(|e| RecordError::Invalid(e.to_string()))?;
        let fleet = (0..patients.max(1))
            .map(|i| {
                Ok(BenchPatient {
                    gateway: gateway.clone(),
                    patient: PatientKey::new(format!("bench-pk-{i}"))
                        .map_err(|e| RecordError::Invalid(e.to_string()))?,
                    device: bench_device(i as u32),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        record.bench_register(&fleet, "copd", start).await?;
        Ok(BenchFleet {
            gateway,
            devices: fleet.iter().map(|p| p.device).collect(),
            patients: fleet.into_iter().map(|p| p.patient).collect(),
            start,
        })
    }

    /// Readings number `first..first + n`: an SpO2 and pulse spot check each, patient
    /// `i % patients`, measured `i` milliseconds after `start`. The same number always gives
    /// the same reading (and id), so overlapping ranges make duplicates.
    pub fn readings(&self, first: u64, n: usize) -> Vec<(Reading, Vec<Observed>)> {
        (first..first + n as u64).map(|i| self.reading(i)).collect()
    }

    /// Reading number `i` with its (already canonical) values: patient `i mod n`'s reading
    /// number `i div n`. A clinic's mix: 19 patients in 20 measure in their usual range
    /// (SpO2 94–98 %, pulse 62–86 /min); 1 in 20 is having a bad day, SpO2 86 % twice then
    /// 95 % twice, in turn, so their alerts raise and resolve all through a run (the same mix
    /// as the end-to-end part of `rpm bench all`).
    pub fn reading(&self, i: u64) -> (Reading, Vec<Observed>) {
        let n = self.patients.len() as u64;
        let p = (i % n) as usize;
        let k = i / n;
        let (spo2, pulse) = if p.is_multiple_of(20) {
            (if k % 4 < 2 { 86 } else { 95 }, 96)
        } else {
            (94 + (k % 5) as i64, 62 + (k * 7 % 25) as i64)
        };
        let values = vec![
            Observed {
                kind: Kind::Spo2,
                value: Value::Number(Decimal::from_int(spo2)),
                unit: Kind::Spo2.unit(),
            },
            Observed {
                kind: Kind::PulseRate,
                value: Value::Number(Decimal::from_int(pulse)),
                unit: Kind::PulseRate.unit(),
            },
        ];
        let measured_at = self.start + Duration::from_millis(i);
        let reading = Reading {
            id: ReadingId(uuid::Uuid::nil()),
            seq: i,
            gateway: self.gateway.clone(),
            patient: self.patients[p].clone(),
            device: DeviceIdentity::new(self.devices[p]),
            user_index: None,
            reading_type: ReadingType::OximetrySpotCheck,
            device_time: None,
            measured_at,
            received_at: measured_at + Duration::from_millis(250),
            values: values.clone(),
            flags: vitals::Flags::EMPTY,
        }
        .with_computed_id();
        (reading, values)
    }
}

/// An id shaped like the record's reading ids ([`vitals::Reading::compute_id`]): the time
/// the device gave in the first 48 bits (here reading `i` is measured `i` ms after a fixed
/// start, as in [`BenchFleet::reading`]), the rest hash bits, so the baseline's keys grow
/// with time and scatter within a millisecond the way real ids do.
fn record_like_id(i: u64) -> String {
    // splitmix64: a bijection, so distinct inputs give distinct ids.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    const START_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let hi = mix(i.wrapping_add(0x9e37_79b9_7f4a_7c15));
    let hash = (u128::from(hi) << 64 | u128::from(mix(hi ^ i))).to_be_bytes();
    ReadingId::time_ordered(START_MS + i, hash).to_string()
}

/// One patient of a synthetic fleet: their home hub and their one device.
#[derive(Clone, Debug)]
pub struct BenchPatient {
    /// The hub their readings come through.
    pub gateway: GatewayId,
    /// The patient.
    pub patient: PatientKey,
    /// Their device, bound to them on `gateway`.
    pub device: DeviceId,
}

/// Synthetic device number `i` (an EUI-64 starting `be7c`).
pub fn bench_device(i: u32) -> DeviceId {
    let mut eui = [0xbe, 0x7c, 0, 0, 0, 0, 0, 0];
    eui[4..].copy_from_slice(&i.to_be_bytes());
    DeviceId::Eui64(eui)
}

/// Patients registered per transaction by [`Record::bench_register`].
const REGISTER_CHUNK: usize = 2_000;

/// The result of [`Record::raw_insert_benchmark`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawBench {
    /// Reading rows inserted.
    pub readings: u64,
    /// Value rows inserted.
    pub values: u64,
    /// Wall time, including every commit.
    pub elapsed: Duration,
}

impl RawBench {
    /// Readings per second.
    pub fn readings_per_sec(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Record {
    /// Registers a synthetic fleet for benchmarks: its gateways, its patients (all with
    /// `condition`) and their devices, each device bound to its patient on its gateway from
    /// `from` on. In bulk (multi-row statements, [`REGISTER_CHUNK`] patients per transaction)
    /// and without audit entries: 100 000 patients register in seconds, where the registry's
    /// one-at-a-time calls take minutes. What is already registered (or bound) is left as it is.
    pub async fn bench_register(
        &self,
        fleet: &[BenchPatient],
        condition: &str,
        from: OffsetDateTime,
    ) -> Result<()> {
        let now = super::now_us();
        let from = super::to_us(from);
        let mut gateways: Vec<&str> = fleet.iter().map(|p| p.gateway.as_str()).collect();
        gateways.sort_unstable();
        gateways.dedup();
        for chunk in fleet.chunks(REGISTER_CHUNK) {
            let devices: Vec<String> = chunk.iter().map(|p| p.device.to_string()).collect();
            with_pool!(self, write, |pool, DB| {
                let mut tx = pool.begin().await?;
                if !gateways.is_empty() {
                    let mut q = QueryBuilder::<DB>::new(
                        "INSERT INTO gateways (gateway_id, registered_at) ",
                    );
                    q.push_values(&gateways, |mut b, g| {
                        b.push_bind(*g).push_bind(now);
                    });
                    q.push(" ON CONFLICT (gateway_id) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                    gateways.clear();
                }
                let mut q = QueryBuilder::<DB>::new(
                    "INSERT INTO patients (patient_key, display_name, condition, profile_id, \
                     care_team, created_at, updated_at) ",
                );
                q.push_values(chunk, |mut b, p| {
                    b.push_bind(p.patient.as_str())
                        .push_bind(None::<&str>)
                        .push_bind(condition)
                        .push_bind(None::<&str>)
                        .push_bind(None::<&str>)
                        .push_bind(now)
                        .push_bind(now);
                });
                q.push(" ON CONFLICT (patient_key) DO NOTHING");
                q.build().execute(&mut *tx).await?;
                let mut q =
                    QueryBuilder::<DB>::new("INSERT INTO devices (device_id, registered_at) ");
                q.push_values(&devices, |mut b, d| {
                    b.push_bind(d.as_str()).push_bind(now);
                });
                q.push(" ON CONFLICT (device_id) DO NOTHING");
                q.build().execute(&mut *tx).await?;
                let mut q = QueryBuilder::<DB>::new(
                    "INSERT INTO device_bindings (gateway_id, device_id, user_index, \
                     patient_key, valid_from) ",
                );
                q.push_values(chunk.iter().zip(&devices), |mut b, (p, d)| {
                    b.push_bind(p.gateway.as_str())
                        .push_bind(d.as_str())
                        .push_bind(None::<i64>)
                        .push_bind(p.patient.as_str())
                        .push_bind(from);
                });
                q.push(" ON CONFLICT DO NOTHING");
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
            });
        }
        self.invalidate_bindings();
        Ok(())
    }

    /// The baseline for `rpm bench ingest`: `readings` synthetic reading rows (and two value
    /// rows each) inserted with plain bulk `INSERT`s into scratch tables with only a primary
    /// key (random UUID text, like real ids), `batch` readings per transaction, same
    /// durability; the tables are dropped afterwards. The statements have the form the record
    /// uses (`UNNEST` arrays on PostgreSQL, multi-row `VALUES` on SQLite), so the baseline is
    /// the database's ceiling for the same kind of statement.
    pub async fn raw_insert_benchmark(&self, readings: usize, batch: usize) -> Result<RawBench> {
        self.raw_insert_benchmark_shaped(readings, batch, RawShape::PrimaryKeys)
            .await
    }

    /// [`Record::raw_insert_benchmark`] into tables shaped as `shape` says: with
    /// [`RawShape::RecordIndexes`], the record's own secondary indexes (a reading's per-patient
    /// timeline; a value's primary key, cohort and per-patient series indexes), so the figure
    /// is the database's bulk-insert ceiling for the record's schema, and the difference from
    /// ingest is ingest's own work (decoding, validation, deduplication, sequence checks,
    /// acknowledgements). Rows are spread over 200 patients, as the bench fleet is.
    pub async fn raw_insert_benchmark_shaped(
        &self,
        readings: usize,
        batch: usize,
        shape: RawShape,
    ) -> Result<RawBench> {
        let batch = batch.max(1);
        let max_binds = self.max_binds();
        let started = with_pool!(self, write, |pool, DB| {
            for sql in [
                "DROP TABLE IF EXISTS bench_raw_values",
                "DROP TABLE IF EXISTS bench_raw_readings",
                "CREATE TABLE bench_raw_readings (reading_id TEXT PRIMARY KEY, \
                 patient_key TEXT NOT NULL, device_id TEXT NOT NULL, gateway_id TEXT NOT NULL, \
                 user_index BIGINT, reading_type TEXT NOT NULL, device_time TEXT, \
                 measured_at BIGINT NOT NULL, received_at BIGINT NOT NULL, \
                 ingested_at BIGINT NOT NULL, flags BIGINT NOT NULL, gateway_seq BIGINT NOT NULL)",
                "CREATE TABLE bench_raw_values (reading_id TEXT NOT NULL, kind TEXT NOT NULL, \
                 patient_key TEXT NOT NULL, measured_at BIGINT NOT NULL, value_text TEXT, \
                 value_num DOUBLE PRECISION, unit TEXT NOT NULL, absent TEXT)",
            ] {
                sqlx::query(sql).execute(pool).await?;
            }
            if shape == RawShape::RecordIndexes {
                for sql in [
                    "CREATE INDEX bench_raw_readings_patient_time \
                     ON bench_raw_readings (patient_key, measured_at)",
                    "CREATE UNIQUE INDEX bench_raw_values_pk ON bench_raw_values (reading_id, kind)",
                    "CREATE INDEX bench_raw_values_cohort \
                     ON bench_raw_values (kind, measured_at, value_num)",
                    "CREATE INDEX bench_raw_values_series \
                     ON bench_raw_values (patient_key, kind, measured_at)",
                ] {
                    sqlx::query(sql).execute(pool).await?;
                }
            }
            let started = Instant::now();
            let mut done = 0usize;
            while done < readings {
                let n = batch.min(readings - done);
                let rows: Vec<(String, i64)> = (done..done + n)
                    .map(|i| (record_like_id(i as u64), i as i64))
                    .collect();
                let mut tx = pool.begin().await?;
                <DB as RawInsert>::insert_raw(&mut *tx, &rows, max_binds).await?;
                tx.commit().await?;
                done += n;
            }
            let elapsed = started.elapsed();
            for sql in [
                "DROP TABLE bench_raw_values",
                "DROP TABLE bench_raw_readings",
            ] {
                sqlx::query(sql).execute(pool).await?;
            }
            elapsed
        });
        Ok(RawBench {
            readings: readings as u64,
            values: 2 * readings as u64,
            elapsed: started,
        })
    }
}

/// The tables of the raw-insert baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawShape {
    /// A primary key on the readings, nothing else: the database's bare insert ceiling.
    PrimaryKeys,
    /// The record's secondary indexes too (foreign keys left out: PostgreSQL's record has
    /// none on these tables since migration 0005; SQLite's would need the registry).
    RecordIndexes,
}

/// Patients the baseline's rows are spread over.
const RAW_PATIENTS: i64 = 200;

fn raw_patient(i: i64) -> String {
    format!("bench-pk-{}", i % RAW_PATIENTS)
}

/// One transaction's rows of the raw-insert baseline, in each backend's bulk form.
trait RawInsert: sqlx::Database {
    async fn insert_raw(
        conn: &mut Self::Connection,
        rows: &[(String, i64)],
        max_binds: usize,
    ) -> Result<()>;
}

impl RawInsert for sqlx::Sqlite {
    async fn insert_raw(
        conn: &mut sqlx::SqliteConnection,
        rows: &[(String, i64)],
        max_binds: usize,
    ) -> Result<()> {
        for chunk in rows.chunks(max_binds / 12) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO bench_raw_readings (reading_id, patient_key, device_id, \
                 gateway_id, user_index, reading_type, device_time, measured_at, \
                 received_at, ingested_at, flags, gateway_seq) ",
            );
            q.push_values(chunk, |mut b, (id, i)| {
                b.push_bind(id.as_str())
                    .push_bind(raw_patient(*i))
                    .push_bind("eui64:be7c000000000000")
                    .push_bind("bench-gw")
                    .push_bind(None::<i64>)
                    .push_bind("oximetry_spot_check")
                    .push_bind(None::<&str>)
                    .push_bind(*i)
                    .push_bind(*i)
                    .push_bind(*i)
                    .push_bind(0i64)
                    .push_bind(*i);
            });
            q.build().execute(&mut *conn).await?;
        }
        let values: Vec<(&str, &str, i64)> = rows
            .iter()
            .flat_map(|(id, i)| [(id.as_str(), "spo2", *i), (id.as_str(), "pulse_rate", *i)])
            .collect();
        for chunk in values.chunks(max_binds / 8) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO bench_raw_values (reading_id, kind, patient_key, \
                 measured_at, value_text, value_num, unit, absent) ",
            );
            q.push_values(chunk, |mut b, (id, kind, i)| {
                b.push_bind(*id)
                    .push_bind(*kind)
                    .push_bind(raw_patient(*i))
                    .push_bind(*i)
                    .push_bind("97")
                    .push_bind(97.0f64)
                    .push_bind("%")
                    .push_bind(None::<&str>);
            });
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }
}

impl RawInsert for sqlx::Postgres {
    async fn insert_raw(
        conn: &mut sqlx::PgConnection,
        rows: &[(String, i64)],
        _max_binds: usize,
    ) -> Result<()> {
        let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        let nums: Vec<i64> = rows.iter().map(|(_, i)| *i).collect();
        sqlx::query(
            "INSERT INTO bench_raw_readings (reading_id, patient_key, device_id, gateway_id, \
             user_index, reading_type, device_time, measured_at, received_at, ingested_at, \
             flags, gateway_seq) \
             SELECT r, 'bench-pk-' || (i % $3), 'eui64:be7c000000000000', 'bench-gw', NULL, \
             'oximetry_spot_check', NULL, i, i, i, 0, i FROM UNNEST($1::text[], $2::int8[]) \
             AS u(r, i)",
        )
        .bind(&ids)
        .bind(&nums)
        .bind(RAW_PATIENTS)
        .execute(&mut *conn)
        .await?;
        let value_ids: Vec<&str> = ids.iter().flat_map(|id| [*id, *id]).collect();
        let kinds: Vec<&str> = ids.iter().flat_map(|_| ["spo2", "pulse_rate"]).collect();
        let value_nums: Vec<i64> = nums.iter().flat_map(|i| [*i, *i]).collect();
        sqlx::query(
            "INSERT INTO bench_raw_values (reading_id, kind, patient_key, measured_at, \
             value_text, value_num, unit, absent) \
             SELECT r, k, 'bench-pk-' || (i % $4), i, '97', 97.0, '%', NULL \
             FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(r, k, i)",
        )
        .bind(&value_ids)
        .bind(&kinds)
        .bind(&value_nums)
        .bind(RAW_PATIENTS)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_is_mostly_well_and_one_patient_in_twenty_has_a_bad_day() {
        let fleet = BenchFleet {
            gateway: GatewayId::new("bench-gw").expect("id"),
            patients: (0..40)
                .map(|i| PatientKey::new(format!("bench-pk-{i}")).expect("key"))
                .collect(),
            devices: (0..40).map(bench_device).collect(),
            start: OffsetDateTime::UNIX_EPOCH,
        };
        let mut low = std::collections::BTreeSet::new();
        let mut low_count = 0;
        let readings = fleet.readings(0, 4_000);
        for (r, values) in &readings {
            let spo2 = values[0].value.number().expect("a number").to_f64();
            assert!((86.0..=98.0).contains(&spo2), "{spo2}");
            if spo2 < 90.0 {
                low_count += 1;
                low.insert(r.patient.as_str().to_owned());
            }
        }
        assert_eq!(
            low,
            ["bench-pk-0", "bench-pk-20"].map(str::to_owned).into(),
            "only the unwell patients"
        );
        assert_eq!(low_count, 4_000 / 40, "half of their readings");
        let ids: std::collections::HashSet<_> = readings.iter().map(|(r, _)| r.id).collect();
        assert_eq!(ids.len(), readings.len(), "distinct readings");
    }

    #[test]
    fn the_baseline_ids_are_laid_out_like_the_record_s() {
        let ids: Vec<uuid::Uuid> = (0..1000)
            .map(|i| record_like_id(i).parse().expect("a UUID"))
            .collect();
        let fleet = BenchFleet {
            gateway: GatewayId::new("bench-gw").expect("id"),
            patients: vec![PatientKey::new("bench-pk-0").expect("key")],
            devices: vec![bench_device(0)],
            start: OffsetDateTime::UNIX_EPOCH,
        };
        let real = fleet.reading(0).0.id.0;
        for id in &ids {
            assert_eq!(id.get_version_num(), real.get_version_num());
            assert_eq!(id.get_variant(), real.get_variant());
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "growing with time");
        let distinct: std::collections::HashSet<_> =
            ids.iter().map(|u| u.as_u128() & 0xffff_ffff).collect();
        assert_eq!(distinct.len(), ids.len(), "hash bits below the time");
    }
}
