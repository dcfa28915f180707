//! Readings: the batch insert on the hot path (top of the file), then the reads.

use std::collections::{HashMap, HashSet};

use sqlx::QueryBuilder;
use time::PrimitiveDateTime;
use time::macros::format_description;
use tracing::Instrument as _;
use vitals::{
    AbsentReason, Decimal, DeviceId, Flags, GatewayId, Kind, Observed, PatientKey, Reading,
    ReadingId, ReadingType, Unit, Value,
};

use super::{Record, RecordError, Result, from_us, now_us, to_us, with_pool};

/// What [`Record::insert_batch`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Ids stored by this call, in the order they first appear in the batch. Only these go on
    /// to the rules engine.
    pub new: Vec<ReadingId>,
    /// Readings that were already in the record, or appeared earlier in the same batch.
    pub duplicates: usize,
}

impl BatchOutcome {
    /// How many readings were new.
    pub fn new_count(&self) -> usize {
        self.new.len()
    }
}

const READING_COLUMNS: &str = "INSERT INTO readings (reading_id, patient_key, device_id, \
     gateway_id, user_index, reading_type, device_time, measured_at, received_at, ingested_at, \
     flags, gateway_seq) ";
const READING_BINDS: usize = 12;
const VALUE_COLUMNS: &str = "INSERT INTO reading_values (reading_id, kind, patient_key, \
     measured_at, value_text, value_num, unit, absent) ";
const VALUE_BINDS: usize = 8;
const DEVICE_BINDS: usize = 7;
const GATEWAY_BINDS: usize = 2;

/// A reading flattened into the values its row binds.
struct ReadingRow<'a> {
    id: String,
    reading: &'a Reading,
    values: &'a [Observed],
    device: String,
    device_time: Option<String>,
    measured_at: i64,
    received_at: i64,
    seq: i64,
}

const DEVICE_TIME: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");

impl<'a> ReadingRow<'a> {
    fn new(reading: &'a Reading, values: &'a [Observed]) -> Result<Self> {
        let seq = i64::try_from(reading.seq).map_err(|_| {
            RecordError::Invalid(format!(
                "reading sequence number {} is over i64::MAX",
                reading.seq
            ))
        })?;
        let device_time = reading
            .device_time
            .map(|t| t.format(DEVICE_TIME))
            .transpose()
            .map_err(|e| RecordError::Invalid(format!("device time: {e}")))?;
        Ok(ReadingRow {
            id: reading.id.to_string(),
            reading,
            values,
            device: reading.device.id.to_string(),
            device_time,
            measured_at: to_us(reading.measured_at),
            received_at: to_us(reading.received_at),
            seq,
        })
    }
}

impl Record {
    /// Stores a batch of validated readings, each with its normalized values, in one
    /// transaction. A reading whose id is already stored (or that appeared earlier in the
    /// batch) is a duplicate and changes nothing; the outcome lists the ids that were new.
    /// Also advances the last-seen time of the batch's devices and gateways.
    ///
    /// Patients and gateways must be in the registry (the consumer checks bindings first);
    /// a reading for an unknown one fails the whole batch with [`RecordError::Constraint`].
    pub async fn insert_batch(&self, batch: &[(Reading, Vec<Observed>)]) -> Result<BatchOutcome> {
        let outcome = self.insert_batch_inner(batch, None).await?;
        Ok(outcome.map(|(o, _)| o).unwrap_or_default())
    }

    /// [`Record::insert_batch`], with `evaluate` run inside the transaction on the new
    /// readings (see [`Record::insert_batch_evaluated`]). `None` when it asked for a rollback.
    pub(super) async fn insert_batch_inner(
        &self,
        batch: &[(Reading, Vec<Observed>)],
        evaluate: Option<&mut super::alerts::Evaluate<'_>>,
    ) -> Result<Option<(BatchOutcome, Vec<super::alerts::WrittenEvent>)>> {
        let ingested_at = now_us();
        let mut seen = HashSet::with_capacity(batch.len());
        let rows = batch
            .iter()
            .filter(|(r, _)| seen.insert(r.id))
            .map(|(r, v)| ReadingRow::new(r, v))
            .collect::<Result<Vec<_>>>()?;
        let in_batch_duplicates = batch.len() - rows.len();
        if rows.is_empty() {
            return Ok(Some((BatchOutcome::default(), Vec::new())));
        }

        // Devices and gateways touched by the batch, with their latest times.
        let mut devices: HashMap<&str, &ReadingRow<'_>> = HashMap::new();
        for row in &rows {
            devices
                .entry(row.device.as_str())
                .and_modify(|d| {
                    if row.received_at > d.received_at {
                        *d = row;
                    }
                })
                .or_insert(row);
        }
        let mut devices: Vec<&ReadingRow<'_>> = devices.into_values().collect();
        devices.sort_by(|a, b| a.device.cmp(&b.device)); // one lock order for every writer
        let mut gateways: Vec<&str> = rows.iter().map(|r| r.reading.gateway.as_str()).collect();
        gateways.sort_unstable();
        gateways.dedup();

        let span = tracing::debug_span!("insert_batch", readings = batch.len());
        let Some((new_ids, written)) = self
            .write_batch(&rows, &devices, &gateways, ingested_at, evaluate)
            .instrument(span)
            .await?
        else {
            return Ok(None);
        };

        let new: Vec<ReadingId> = rows
            .iter()
            .filter(|r| new_ids.contains(&r.id))
            .map(|r| r.reading.id)
            .collect();
        let outcome = BatchOutcome {
            duplicates: in_batch_duplicates + rows.len() - new.len(),
            new,
        };
        tracing::debug!(
            new = outcome.new.len(),
            duplicates = outcome.duplicates,
            "batch committed"
        );
        Ok(Some((outcome, written)))
    }

    /// The transaction of [`Record::insert_batch`]; returns the ids that were new and what
    /// `evaluate` stored, or `None` when `evaluate` asked for a rollback.
    async fn write_batch(
        &self,
        rows: &[ReadingRow<'_>],
        devices: &[&ReadingRow<'_>],
        gateways: &[&str],
        ingested_at: i64,
        evaluate: Option<&mut super::alerts::Evaluate<'_>>,
    ) -> Result<Option<(HashSet<String>, Vec<super::alerts::WrittenEvent>)>> {
        let max_binds = self.max_binds();
        let done = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let mut new_ids = HashSet::with_capacity(rows.len());
            for chunk in rows.chunks(max_binds / READING_BINDS) {
                let mut q = QueryBuilder::<DB>::new(READING_COLUMNS);
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(r.id.as_str())
                        .push_bind(r.reading.patient.as_str())
                        .push_bind(r.device.as_str())
                        .push_bind(r.reading.gateway.as_str())
                        .push_bind(r.reading.user_index.map(i64::from))
                        .push_bind(r.reading.reading_type.as_str())
                        .push_bind(r.device_time.as_deref())
                        .push_bind(r.measured_at)
                        .push_bind(r.received_at)
                        .push_bind(ingested_at)
                        .push_bind(i64::from(r.reading.flags.bits()))
                        .push_bind(r.seq);
                });
                q.push(" ON CONFLICT (reading_id) DO NOTHING RETURNING reading_id");
                let ids: Vec<String> = q.build_query_scalar().fetch_all(&mut *tx).await?;
                new_ids.extend(ids);
            }

            let values: Vec<(&ReadingRow<'_>, &Observed)> = rows
                .iter()
                .filter(|r| new_ids.contains(&r.id))
                .flat_map(|r| r.values.iter().map(move |o| (r, o)))
                .collect();
            for chunk in values.chunks(max_binds / VALUE_BINDS) {
                let mut q = QueryBuilder::<DB>::new(VALUE_COLUMNS);
                q.push_values(chunk, |mut b, (r, o)| {
                    let (text, num, absent) = match o.value {
                        Value::Number(d) => (Some(d.to_string()), Some(d.to_f64()), None),
                        Value::Absent(why) => (None, None, Some(why.as_str())),
                    };
                    b.push_bind(r.id.as_str())
                        .push_bind(o.kind.as_str())
                        .push_bind(r.reading.patient.as_str())
                        .push_bind(r.measured_at)
                        .push_bind(text)
                        .push_bind(num)
                        .push_bind(o.unit.ucum())
                        .push_bind(absent);
                });
                q.build().execute(&mut *tx).await?;
            }

            for chunk in devices.chunks(max_binds / DEVICE_BINDS) {
                let mut q = QueryBuilder::<DB>::new(
                    "INSERT INTO devices (device_id, manufacturer, model, serial, firmware, \
                     registered_at, last_seen_at) ",
                );
                q.push_values(chunk, |mut b, r| {
                    let d = &r.reading.device;
                    b.push_bind(r.device.as_str())
                        .push_bind(d.manufacturer.as_deref())
                        .push_bind(d.model.as_deref())
                        .push_bind(d.serial.as_deref())
                        .push_bind(d.firmware.as_deref())
                        .push_bind(ingested_at)
                        .push_bind(r.received_at);
                });
                q.push(
                    " ON CONFLICT (device_id) DO UPDATE SET \
                     manufacturer = COALESCE(excluded.manufacturer, devices.manufacturer), \
                     model = COALESCE(excluded.model, devices.model), \
                     serial = COALESCE(excluded.serial, devices.serial), \
                     firmware = COALESCE(excluded.firmware, devices.firmware), \
                     last_seen_at = CASE WHEN devices.last_seen_at IS NULL \
                       OR excluded.last_seen_at > devices.last_seen_at \
                       THEN excluded.last_seen_at ELSE devices.last_seen_at END",
                );
                q.build().execute(&mut *tx).await?;
            }

            for chunk in gateways.chunks(max_binds / GATEWAY_BINDS) {
                let mut q =
                    QueryBuilder::<DB>::new("UPDATE gateways SET last_seen_at = v.column2 FROM (");
                q.push_values(chunk, |mut b, g| {
                    b.push_bind(*g).push_bind(ingested_at);
                });
                q.push(
                    ") AS v WHERE gateways.gateway_id = v.column1 \
                     AND (gateways.last_seen_at IS NULL OR gateways.last_seen_at < v.column2)",
                );
                q.build().execute(&mut *tx).await?;
            }

            // The rules see the new readings before anything is committed: their alerts
            // commit with them, or neither does.
            let written = match evaluate {
                None => Some(Vec::new()),
                Some(evaluate) => {
                    let new: Vec<&Reading> = rows
                        .iter()
                        .filter(|r| new_ids.contains(&r.id))
                        .map(|r| r.reading)
                        .collect();
                    super::alerts::in_batch::<DB>(
                        &mut *tx,
                        &new,
                        evaluate,
                        self.notifications.as_deref(),
                    )
                    .await?
                }
            };
            match written {
                Some(written) => {
                    tx.commit().await?;
                    Some((new_ids, written))
                }
                None => {
                    tx.rollback().await?;
                    None
                }
            }
        });

        Ok(done)
    }
}

// ----------------------------------------------------------------------------------------
// Reads

/// A reading as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredReading {
    /// Its id.
    pub id: ReadingId,
    /// The patient.
    pub patient: PatientKey,
    /// The gateway it came through.
    pub gateway: GatewayId,
    /// The device that measured.
    pub device: DeviceId,
    /// User slot on a multi-user device.
    pub user_index: Option<u8>,
    /// What sort of measurement.
    pub reading_type: ReadingType,
    /// The device's own timestamp.
    pub device_time: Option<PrimitiveDateTime>,
    /// When it was measured (to the microsecond).
    pub measured_at: time::OffsetDateTime,
    /// When the gateway received it.
    pub received_at: time::OffsetDateTime,
    /// When the record stored it.
    pub ingested_at: time::OffsetDateTime,
    /// Device-reported conditions.
    pub flags: Flags,
    /// The gateway's queue sequence number.
    pub gateway_seq: u64,
    /// The normalized values, in canonical kind order.
    pub values: Vec<Observed>,
}

/// Where a page of readings starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Most readings returned (capped at 1000).
    pub limit: u32,
    /// Continue after this position (the `next` of the previous page).
    pub after: Option<Cursor>,
}

impl Page {
    /// The first `limit` readings.
    pub fn first(limit: u32) -> Self {
        Page { limit, after: None }
    }
}

/// An opaque position in a patient's timeline (measurement time, then id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    measured_at: i64,
    id: String,
}

/// One page of a patient's readings, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadingsPage {
    /// The readings.
    pub readings: Vec<StoredReading>,
    /// The next page, when this one was full.
    pub next: Option<Page>,
}

/// The latest value of one kind for a patient.
#[derive(Clone, Debug, PartialEq)]
pub struct LastValue {
    /// The value with its unit.
    pub observed: Observed,
    /// When it was measured.
    pub measured_at: time::OffsetDateTime,
    /// The reading it belongs to.
    pub reading: ReadingId,
}

#[derive(sqlx::FromRow)]
struct ReadingDbRow {
    reading_id: String,
    patient_key: String,
    device_id: String,
    gateway_id: String,
    user_index: Option<i64>,
    reading_type: String,
    device_time: Option<String>,
    measured_at: i64,
    received_at: i64,
    ingested_at: i64,
    flags: i64,
    gateway_seq: i64,
}

#[derive(sqlx::FromRow)]
struct ValueDbRow {
    reading_id: String,
    kind: String,
    value_text: Option<String>,
    unit: String,
    absent: Option<String>,
    measured_at: i64,
}

const MAX_PAGE: u32 = 1000;

impl Record {
    /// A patient's readings measured in `[from, to)`, oldest first, one page at a time.
    pub async fn readings_for_patient(
        &self,
        patient: &PatientKey,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
        page: Page,
    ) -> Result<ReadingsPage> {
        let limit = page.limit.clamp(1, MAX_PAGE);
        let (after_t, after_id) = match &page.after {
            Some(c) => (c.measured_at, c.id.clone()),
            None => (i64::MIN, String::new()),
        };
        let (rows, values) = with_pool!(self, read, |pool, DB| {
            let rows: Vec<ReadingDbRow> = sqlx::query_as(
                "SELECT reading_id, patient_key, device_id, gateway_id, user_index, \
                 reading_type, device_time, measured_at, received_at, ingested_at, flags, \
                 gateway_seq FROM readings \
                 WHERE patient_key = $1 AND measured_at >= $2 AND measured_at < $3 \
                 AND (measured_at, reading_id) > ($4, $5) \
                 ORDER BY measured_at, reading_id LIMIT $6",
            )
            .bind(patient.as_str())
            .bind(to_us(from))
            .bind(to_us(to))
            .bind(after_t)
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            let values: Vec<ValueDbRow> = if rows.is_empty() {
                Vec::new()
            } else {
                let mut q = QueryBuilder::<DB>::new(
                    "SELECT reading_id, kind, value_text, unit, absent, measured_at \
                     FROM reading_values WHERE reading_id IN (",
                );
                let mut list = q.separated(", ");
                for r in &rows {
                    list.push_bind(r.reading_id.as_str());
                }
                q.push(")");
                q.build_query_as().fetch_all(pool).await?
            };
            (rows, values)
        });

        let mut by_reading: HashMap<String, Vec<Observed>> = HashMap::new();
        for v in values {
            let observed = observed_from_row(&v)?;
            by_reading.entry(v.reading_id).or_default().push(observed);
        }
        let next = (rows.len() == limit as usize)
            .then(|| rows.last())
            .flatten()
            .map(|last| Page {
                limit,
                after: Some(Cursor {
                    measured_at: last.measured_at,
                    id: last.reading_id.clone(),
                }),
            });
        let readings = rows
            .into_iter()
            .map(|row| {
                let mut values = by_reading.remove(&row.reading_id).unwrap_or_default();
                values.sort_by_key(|o| o.kind);
                reading_from_row(row, values)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ReadingsPage { readings, next })
    }

    /// One reading by id, with its values, or `None` when the record has no such reading.
    pub async fn reading(&self, id: &ReadingId) -> Result<Option<StoredReading>> {
        let id = id.to_string();
        let (row, values) = with_pool!(self, read, |pool, DB| {
            let row: Option<ReadingDbRow> = sqlx::query_as(
                "SELECT reading_id, patient_key, device_id, gateway_id, user_index, \
                 reading_type, device_time, measured_at, received_at, ingested_at, flags, \
                 gateway_seq FROM readings WHERE reading_id = $1",
            )
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
            let values: Vec<ValueDbRow> = if row.is_some() {
                sqlx::query_as(
                    "SELECT reading_id, kind, value_text, unit, absent, measured_at \
                     FROM reading_values WHERE reading_id = $1",
                )
                .bind(id.as_str())
                .fetch_all(pool)
                .await?
            } else {
                Vec::new()
            };
            (row, values)
        });
        let Some(row) = row else { return Ok(None) };
        let mut observed = values
            .iter()
            .map(observed_from_row)
            .collect::<Result<Vec<_>>>()?;
        observed.sort_by_key(|o| o.kind);
        reading_from_row(row, observed).map(Some)
    }

    /// The most recent value of each kind the patient has readings of (absent values count:
    /// an oximeter that last said "no signal" last said that).
    pub async fn last_values(&self, patient: &PatientKey) -> Result<Vec<LastValue>> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let row: Option<ValueDbRow> = with_pool!(self, read, |pool, DB| {
                sqlx::query_as(
                    "SELECT reading_id, kind, value_text, unit, absent, measured_at \
                     FROM reading_values WHERE patient_key = $1 AND kind = $2 \
                     ORDER BY measured_at DESC, reading_id DESC LIMIT 1",
                )
                .bind(patient.as_str())
                .bind(kind.as_str())
                .fetch_optional(pool)
                .await?
            });
            if let Some(row) = row {
                out.push(LastValue {
                    observed: observed_from_row(&row)?,
                    measured_at: from_us(row.measured_at, "reading_values")?,
                    reading: parse_reading_id(&row.reading_id)?,
                });
            }
        }
        Ok(out)
    }

    /// Patients with a numeric value of `kind` below `threshold` measured at or after
    /// `since` (the cohort query: "SpO2 under 90 in the last 48 h"), sorted by key.
    pub async fn patients_below(
        &self,
        kind: Kind,
        threshold: f64,
        since: time::OffsetDateTime,
    ) -> Result<Vec<PatientKey>> {
        let keys: Vec<String> = with_pool!(self, read, |pool, DB| {
            sqlx::query_scalar(
                "SELECT DISTINCT patient_key FROM reading_values \
                 WHERE kind = $1 AND measured_at >= $2 AND value_num < $3 \
                 ORDER BY patient_key",
            )
            .bind(kind.as_str())
            .bind(to_us(since))
            .bind(threshold)
            .fetch_all(pool)
            .await?
        });
        keys.into_iter()
            .map(|k| PatientKey::new(k).map_err(|e| RecordError::corrupt("reading_values", e)))
            .collect()
    }

    /// How many readings the record holds.
    pub async fn count_readings(&self) -> Result<u64> {
        let n: i64 = with_pool!(self, read, |pool, DB| {
            sqlx::query_scalar("SELECT COUNT(*) FROM readings")
                .fetch_one(pool)
                .await?
        });
        Ok(n.max(0) as u64)
    }
}

fn parse_reading_id(s: &str) -> Result<ReadingId> {
    s.parse()
        .map_err(|e| RecordError::corrupt("readings", format!("reading_id: {e}")))
}

fn reading_type_from_str(s: &str) -> Option<ReadingType> {
    [
        ReadingType::BloodPressure,
        ReadingType::OximetrySpotCheck,
        ReadingType::OximetryContinuous,
        ReadingType::Spirometry,
        ReadingType::Temperature,
    ]
    .into_iter()
    .find(|t| t.as_str() == s)
}

fn absent_from_str(s: &str) -> Option<AbsentReason> {
    [
        AbsentReason::Nan,
        AbsentReason::Nres,
        AbsentReason::PositiveInfinity,
        AbsentReason::NegativeInfinity,
        AbsentReason::Reserved,
    ]
    .into_iter()
    .find(|a| a.as_str() == s)
}

fn observed_from_row(v: &ValueDbRow) -> Result<Observed> {
    let bad = |why: String| RecordError::corrupt("reading_values", why);
    let kind: Kind = v.kind.parse().map_err(|e| bad(format!("kind: {e}")))?;
    let unit: Unit = v.unit.parse().map_err(|e| bad(format!("unit: {e}")))?;
    let value = match (&v.value_text, &v.absent) {
        (Some(text), None) => Value::Number(
            text.parse::<Decimal>()
                .map_err(|e| bad(format!("value_text: {e}")))?,
        ),
        (None, Some(why)) => Value::Absent(
            absent_from_str(why).ok_or_else(|| bad(format!("unknown absent reason `{why}`")))?,
        ),
        _ => return Err(bad("needs exactly one of value_text and absent".into())),
    };
    Ok(Observed { kind, value, unit })
}

fn reading_from_row(row: ReadingDbRow, values: Vec<Observed>) -> Result<StoredReading> {
    let bad = |why: String| RecordError::corrupt("readings", why);
    Ok(StoredReading {
        id: parse_reading_id(&row.reading_id)?,
        patient: PatientKey::new(row.patient_key).map_err(|e| bad(e.to_string()))?,
        gateway: GatewayId::new(row.gateway_id).map_err(|e| bad(e.to_string()))?,
        device: row.device_id.parse().map_err(|e| bad(format!("{e}")))?,
        user_index: row
            .user_index
            .map(u8::try_from)
            .transpose()
            .map_err(|_| bad("user_index out of range".into()))?,
        reading_type: reading_type_from_str(&row.reading_type)
            .ok_or_else(|| bad(format!("unknown reading type `{}`", row.reading_type)))?,
        device_time: row
            .device_time
            .map(|t| PrimitiveDateTime::parse(&t, DEVICE_TIME))
            .transpose()
            .map_err(|e| bad(format!("device_time: {e}")))?,
        measured_at: from_us(row.measured_at, "readings")?,
        received_at: from_us(row.received_at, "readings")?,
        ingested_at: from_us(row.ingested_at, "readings")?,
        flags: Flags::from_bits_truncate(row.flags as u32),
        gateway_seq: u64::try_from(row.gateway_seq)
            .map_err(|_| bad("negative gateway_seq".into()))?,
        values,
    })
}
