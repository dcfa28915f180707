//! Readings: the batch insert on the hot path (top of the file), then the reads.
//!
//! # The batch transaction
//!
//! [`Record::insert_batch_tracked`] is what the consumer commits per batch, in one
//! transaction: the envelopes' sequence numbers, the readings (dedup by id), their values,
//! the devices' and gateways' last-seen times and, with rules on, the rule versions and the
//! alerts (see `alerts.rs`). Each table takes one statement per batch, whatever its size:
//!
//! - **PostgreSQL:** `INSERT … SELECT … FROM UNNEST($1::text[], …)`, one array per column, so
//!   each statement has the same text (and is prepared once per connection) for any number
//!   of rows, and binds 12 parameters instead of 12 per row.
//! - **SQLite:** multi-row `VALUES` lists in a few fixed sizes ([`SQLITE_CHUNKS`]), so the
//!   statement cache holds a handful of statements instead of one per batch size.
//!
//! Readings and values reference patients and gateways by key. On PostgreSQL the per-row
//! foreign-key triggers of `0001` were the largest single cost of the insert (migration 0005
//! drops them); instead, one query per batch checks that every patient and gateway the batch
//! names is registered (they are never deleted), and the batch fails with
//! [`RecordError::Constraint`] as before when one is not. SQLite keeps its foreign keys: an
//! index probe each, cheap there, and dropping them would mean rebuilding the tables.

use std::collections::{HashMap, HashSet};

use sqlx::QueryBuilder;
use time::PrimitiveDateTime;
use time::macros::format_description;
use tracing::Instrument as _;
use vitals::{
    AbsentReason, Decimal, DeviceId, Flags, GatewayId, Kind, Observed, PatientKey, Reading,
    ReadingId, ReadingType, Unit, Value,
};

use super::alerts::{AlertSql, Evaluate, WrittenEvent};
use super::{Record, RecordError, Result, SeqCheck, from_us, now_us, to_us, with_pool};

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

/// What one [`Record::insert_batch_tracked`] transaction committed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Committed {
    /// The readings.
    pub outcome: BatchOutcome,
    /// One check per envelope sequence number given, in the same order: what
    /// [`Record::check_and_advance_seq`] would have said for each, one after the other.
    pub seqs: Vec<SeqCheck>,
    /// The alert events the rules raised (empty without rules).
    pub written: Vec<WrittenEvent>,
}

/// The multi-row statement sizes on SQLite: a batch is cut into the largest of these that
/// fit, so at most this many statement texts per table are ever prepared (and cached).
pub const SQLITE_CHUNKS: [usize; 6] = [2048, 256, 64, 16, 4, 1];

/// Cuts `items` into chunks of the sizes in [`SQLITE_CHUNKS`], largest first.
fn fixed_chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = SQLITE_CHUNKS
            .iter()
            .copied()
            .find(|&c| c <= rest.len())
            .unwrap_or(1);
        let (head, tail) = rest.split_at(size);
        rest = tail;
        Some(head)
    })
}

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

/// A value flattened into its row's binds.
struct ValueRow<'r, 'a> {
    row: &'r ReadingRow<'a>,
    kind: &'static str,
    text: Option<String>,
    num: Option<f64>,
    unit: &'static str,
    absent: Option<&'static str>,
}

impl<'r, 'a> ValueRow<'r, 'a> {
    fn new(row: &'r ReadingRow<'a>, o: &Observed) -> Self {
        let (text, num, absent) = match o.value {
            Value::Number(d) => (Some(d.to_string()), Some(d.to_f64()), None),
            Value::Absent(why) => (None, None, Some(why.as_str())),
        };
        ValueRow {
            row,
            kind: o.kind.as_str(),
            text,
            num,
            unit: o.unit.ucum(),
            absent,
        }
    }
}

/// A `gateway_seq` row to write: the state after every envelope of the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SeqRow<'a> {
    gateway: &'a str,
    last_seq: i64,
    previous_seq: Option<i64>,
    replays: i64,
}

/// Checks envelope numbers `marks` in order against the stored high-water marks `stored`, as
/// [`Record::check_and_advance_seq`] would one by one, and the rows that leave the table as
/// those calls would have left it (`replays` here is the number to add).
fn plan_seqs<'a>(
    marks: &'a [(GatewayId, u64)],
    stored: &HashMap<String, i64>,
) -> (Vec<SeqCheck>, Vec<SeqRow<'a>>) {
    let mut state: Vec<SeqRow<'a>> = Vec::new();
    let mut index: HashMap<&str, (usize, Option<u64>)> = HashMap::new();
    let mut checks = Vec::with_capacity(marks.len());
    for (gateway, seq) in marks {
        let g = gateway.as_str();
        let (i, last) = *index.entry(g).or_insert_with(|| {
            state.push(SeqRow {
                gateway: g,
                last_seq: 0,
                previous_seq: None,
                replays: 0,
            });
            (state.len() - 1, stored.get(g).map(|&l| l.max(0) as u64))
        });
        let check = match last {
            None => SeqCheck::First,
            Some(last) if *seq <= last => SeqCheck::Replay { last },
            Some(last) if *seq == last + 1 => SeqCheck::InOrder,
            Some(last) => SeqCheck::Gap {
                missing: seq - last - 1,
            },
        };
        let row = &mut state[i];
        row.previous_seq = last.map(|l| l as i64);
        if let SeqCheck::Replay { .. } = check {
            row.replays += 1;
        }
        let now_last = last.map_or(*seq, |l| l.max(*seq));
        row.last_seq = now_last as i64;
        index.insert(g, (i, Some(now_last)));
        checks.push(check);
    }
    (checks, state)
}

/// The per-backend statements of the batch transaction.
trait BatchSql: AlertSql {
    /// Fails with [`RecordError::Constraint`] when a patient or gateway is not registered
    /// (where the schema has no foreign key doing it row by row).
    async fn check_registry(
        conn: &mut Self::Connection,
        patients: &[&str],
        gateways: &[&str],
    ) -> Result<()>;
    /// The stored high-water marks of `gateways` (sorted, distinct), locked until commit.
    async fn last_seqs(
        conn: &mut Self::Connection,
        gateways: &[&str],
    ) -> Result<HashMap<String, i64>>;
    /// Writes the planned `gateway_seq` rows.
    async fn store_seqs(conn: &mut Self::Connection, rows: &[SeqRow<'_>], at: i64) -> Result<()>;
    /// Inserts the readings not yet stored; returns the ids that were new.
    async fn insert_readings(
        conn: &mut Self::Connection,
        rows: &[ReadingRow<'_>],
        ingested_at: i64,
    ) -> Result<HashSet<String>>;
    /// Inserts value rows.
    async fn insert_values(conn: &mut Self::Connection, values: &[ValueRow<'_, '_>]) -> Result<()>;
    /// Registers unknown devices and advances last-seen times (devices sorted by id).
    async fn touch_devices(
        conn: &mut Self::Connection,
        devices: &[&ReadingRow<'_>],
        ingested_at: i64,
    ) -> Result<()>;
    /// Advances the gateways' last-seen times.
    async fn touch_gateways(conn: &mut Self::Connection, gateways: &[&str], at: i64) -> Result<()>;
}

const DEVICE_UPSERT_TAIL: &str = " ON CONFLICT (device_id) DO UPDATE SET \
     manufacturer = COALESCE(excluded.manufacturer, devices.manufacturer), \
     model = COALESCE(excluded.model, devices.model), \
     serial = COALESCE(excluded.serial, devices.serial), \
     firmware = COALESCE(excluded.firmware, devices.firmware), \
     last_seen_at = CASE WHEN devices.last_seen_at IS NULL \
       OR excluded.last_seen_at > devices.last_seen_at \
       THEN excluded.last_seen_at ELSE devices.last_seen_at END";

const SEQ_UPSERT_TAIL: &str = " ON CONFLICT (gateway_id) DO UPDATE SET \
     previous_seq = excluded.previous_seq, \
     last_seq = CASE WHEN excluded.last_seq > gateway_seq.last_seq \
       THEN excluded.last_seq ELSE gateway_seq.last_seq END, \
     replays = gateway_seq.replays + excluded.replays, \
     updated_at = excluded.updated_at";

const GATEWAY_TOUCH: &str = "UPDATE gateways SET last_seen_at = $2 \
     WHERE gateway_id IN (SELECT value FROM json_each($1)) \
     AND (last_seen_at IS NULL OR last_seen_at < $2)";

impl BatchSql for sqlx::Sqlite {
    async fn check_registry(
        _conn: &mut sqlx::SqliteConnection,
        _patients: &[&str],
        _gateways: &[&str],
    ) -> Result<()> {
        Ok(()) // the foreign keys of readings check every row
    }

    async fn last_seqs(
        conn: &mut sqlx::SqliteConnection,
        gateways: &[&str],
    ) -> Result<HashMap<String, i64>> {
        // The single writer connection holds the database lock until commit.
        let list = serde_json::to_string(gateways)
            .map_err(|e| RecordError::Invalid(format!("gateway ids: {e}")))?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT gateway_id, last_seq FROM gateway_seq \
             WHERE gateway_id IN (SELECT value FROM json_each($1))",
        )
        .bind(list)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn store_seqs(
        conn: &mut sqlx::SqliteConnection,
        rows: &[SeqRow<'_>],
        at: i64,
    ) -> Result<()> {
        for chunk in fixed_chunks(rows) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO gateway_seq (gateway_id, last_seq, previous_seq, replays, updated_at) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.gateway)
                    .push_bind(r.last_seq)
                    .push_bind(r.previous_seq)
                    .push_bind(r.replays)
                    .push_bind(at);
            });
            q.push(SEQ_UPSERT_TAIL);
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn insert_readings(
        conn: &mut sqlx::SqliteConnection,
        rows: &[ReadingRow<'_>],
        ingested_at: i64,
    ) -> Result<HashSet<String>> {
        let mut new_ids = HashSet::with_capacity(rows.len());
        for chunk in fixed_chunks(rows) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO readings (reading_id, patient_key, device_id, gateway_id, \
                 user_index, reading_type, device_time, measured_at, received_at, ingested_at, \
                 flags, gateway_seq) ",
            );
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
            let ids: Vec<String> = q.build_query_scalar().fetch_all(&mut *conn).await?;
            new_ids.extend(ids);
        }
        Ok(new_ids)
    }

    async fn insert_values(
        conn: &mut sqlx::SqliteConnection,
        values: &[ValueRow<'_, '_>],
    ) -> Result<()> {
        for chunk in fixed_chunks(values) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO reading_values (reading_id, kind, patient_key, measured_at, \
                 value_text, value_num, unit, absent) ",
            );
            q.push_values(chunk, |mut b, v| {
                b.push_bind(v.row.id.as_str())
                    .push_bind(v.kind)
                    .push_bind(v.row.reading.patient.as_str())
                    .push_bind(v.row.measured_at)
                    .push_bind(v.text.as_deref())
                    .push_bind(v.num)
                    .push_bind(v.unit)
                    .push_bind(v.absent);
            });
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn touch_devices(
        conn: &mut sqlx::SqliteConnection,
        devices: &[&ReadingRow<'_>],
        ingested_at: i64,
    ) -> Result<()> {
        for chunk in fixed_chunks(devices) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
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
            q.push(DEVICE_UPSERT_TAIL);
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn touch_gateways(
        conn: &mut sqlx::SqliteConnection,
        gateways: &[&str],
        at: i64,
    ) -> Result<()> {
        let list = serde_json::to_string(gateways)
            .map_err(|e| RecordError::Invalid(format!("gateway ids: {e}")))?;
        sqlx::query(GATEWAY_TOUCH)
            .bind(list)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// The PostgreSQL readings insert skips ids already stored with `NOT EXISTS` rather than
/// `ON CONFLICT DO NOTHING`: a speculative insertion per row made the statement about 1.6
/// times slower (100 000 rows: 0.99–1.06 s against 0.61–0.63 s). What `NOT EXISTS` cannot see
/// is another writer's uncommitted row with the same id (two ingest nodes given the same
/// reading at once): the insert waits for that transaction, and when it commits, fails on
/// the primary key. That is a lost race, not bad input: [`RecordError::Contention`], so the
/// batch is tried again and then finds the reading stored.
fn lost_race(e: sqlx::Error) -> RecordError {
    match &e {
        sqlx::Error::Database(db) if db.constraint() == Some("readings_pkey") => {
            RecordError::Contention(e)
        }
        _ => e.into(),
    }
}

impl BatchSql for sqlx::Postgres {
    async fn check_registry(
        conn: &mut sqlx::PgConnection,
        patients: &[&str],
        gateways: &[&str],
    ) -> Result<()> {
        let (p, g): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM patients WHERE patient_key = ANY($1)), \
                    (SELECT COUNT(*) FROM gateways WHERE gateway_id = ANY($2))",
        )
        .bind(patients)
        .bind(gateways)
        .fetch_one(&mut *conn)
        .await?;
        let missing = |what: &str| {
            RecordError::Constraint(sqlx::Error::InvalidArgument(format!(
                "a reading names a {what} the registry does not know"
            )))
        };
        if p != patients.len() as i64 {
            return Err(missing("patient"));
        }
        if g != gateways.len() as i64 {
            return Err(missing("gateway"));
        }
        Ok(())
    }

    async fn last_seqs(
        conn: &mut sqlx::PgConnection,
        gateways: &[&str],
    ) -> Result<HashMap<String, i64>> {
        // Locked in key order until commit, so two nodes checking the same gateway take turns.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT gateway_id, last_seq FROM gateway_seq WHERE gateway_id = ANY($1) \
             ORDER BY gateway_id FOR UPDATE",
        )
        .bind(gateways)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn store_seqs(conn: &mut sqlx::PgConnection, rows: &[SeqRow<'_>], at: i64) -> Result<()> {
        let gateways: Vec<&str> = rows.iter().map(|r| r.gateway).collect();
        let last: Vec<i64> = rows.iter().map(|r| r.last_seq).collect();
        let previous: Vec<Option<i64>> = rows.iter().map(|r| r.previous_seq).collect();
        let replays: Vec<i64> = rows.iter().map(|r| r.replays).collect();
        sqlx::query(&format!(
            "INSERT INTO gateway_seq (gateway_id, last_seq, previous_seq, replays, updated_at) \
             SELECT g, l, p, r, $5 FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[]) \
             AS u(g, l, p, r){SEQ_UPSERT_TAIL}"
        ))
        .bind(gateways)
        .bind(last)
        .bind(previous)
        .bind(replays)
        .bind(at)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn insert_readings(
        conn: &mut sqlx::PgConnection,
        rows: &[ReadingRow<'_>],
        ingested_at: i64,
    ) -> Result<HashSet<String>> {
        let col = |f: fn(&ReadingRow<'_>) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let patients: Vec<&str> = rows.iter().map(|r| r.reading.patient.as_str()).collect();
        let devices: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
        let gateways: Vec<&str> = rows.iter().map(|r| r.reading.gateway.as_str()).collect();
        let users: Vec<Option<i64>> = rows
            .iter()
            .map(|r| r.reading.user_index.map(i64::from))
            .collect();
        let types: Vec<&str> = rows
            .iter()
            .map(|r| r.reading.reading_type.as_str())
            .collect();
        let device_times: Vec<Option<&str>> =
            rows.iter().map(|r| r.device_time.as_deref()).collect();
        let new: Vec<String> = sqlx::query_scalar(
            "INSERT INTO readings (reading_id, patient_key, device_id, gateway_id, user_index, \
             reading_type, device_time, measured_at, received_at, ingested_at, flags, \
             gateway_seq) \
             SELECT r, p, d, g, u, t, dt, m, rc, $10, f, s FROM UNNEST($1::text[], \
             $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], \
             $8::int8[], $9::int8[], $11::int8[], $12::int8[]) \
             AS x(r, p, d, g, u, t, dt, m, rc, f, s) \
             WHERE NOT EXISTS (SELECT 1 FROM readings o WHERE o.reading_id = x.r) \
             RETURNING reading_id",
        )
        .bind(ids)
        .bind(patients)
        .bind(devices)
        .bind(gateways)
        .bind(users)
        .bind(types)
        .bind(device_times)
        .bind(col(|r| r.measured_at))
        .bind(col(|r| r.received_at))
        .bind(ingested_at)
        .bind(col(|r| i64::from(r.reading.flags.bits())))
        .bind(col(|r| r.seq))
        .fetch_all(&mut *conn)
        .await
        .map_err(lost_race)?;
        Ok(new.into_iter().collect())
    }

    async fn insert_values(
        conn: &mut sqlx::PgConnection,
        values: &[ValueRow<'_, '_>],
    ) -> Result<()> {
        let ids: Vec<&str> = values.iter().map(|v| v.row.id.as_str()).collect();
        let kinds: Vec<&str> = values.iter().map(|v| v.kind).collect();
        let patients: Vec<&str> = values
            .iter()
            .map(|v| v.row.reading.patient.as_str())
            .collect();
        let measured: Vec<i64> = values.iter().map(|v| v.row.measured_at).collect();
        let texts: Vec<Option<&str>> = values.iter().map(|v| v.text.as_deref()).collect();
        let nums: Vec<Option<f64>> = values.iter().map(|v| v.num).collect();
        let units: Vec<&str> = values.iter().map(|v| v.unit).collect();
        let absent: Vec<Option<&str>> = values.iter().map(|v| v.absent).collect();
        sqlx::query(
            "INSERT INTO reading_values (reading_id, kind, patient_key, measured_at, \
             value_text, value_num, unit, absent) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], \
             $6::float8[], $7::text[], $8::text[])",
        )
        .bind(ids)
        .bind(kinds)
        .bind(patients)
        .bind(measured)
        .bind(texts)
        .bind(nums)
        .bind(units)
        .bind(absent)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn touch_devices(
        conn: &mut sqlx::PgConnection,
        devices: &[&ReadingRow<'_>],
        ingested_at: i64,
    ) -> Result<()> {
        let ids: Vec<&str> = devices.iter().map(|r| r.device.as_str()).collect();
        let field = |f: fn(&vitals::DeviceIdentity) -> Option<&str>| {
            devices
                .iter()
                .map(|r| f(&r.reading.device))
                .collect::<Vec<Option<&str>>>()
        };
        let seen: Vec<i64> = devices.iter().map(|r| r.received_at).collect();
        sqlx::query(&format!(
            "INSERT INTO devices (device_id, manufacturer, model, serial, firmware, \
             registered_at, last_seen_at) \
             SELECT d, ma, mo, se, fw, $6, ls FROM UNNEST($1::text[], $2::text[], $3::text[], \
             $4::text[], $5::text[], $7::int8[]) AS u(d, ma, mo, se, fw, ls){DEVICE_UPSERT_TAIL}"
        ))
        .bind(ids)
        .bind(field(|d| d.manufacturer.as_deref()))
        .bind(field(|d| d.model.as_deref()))
        .bind(field(|d| d.serial.as_deref()))
        .bind(field(|d| d.firmware.as_deref()))
        .bind(ingested_at)
        .bind(seen)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn touch_gateways(
        conn: &mut sqlx::PgConnection,
        gateways: &[&str],
        at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE gateways SET last_seen_at = $2 WHERE gateway_id = ANY($1) \
             AND (last_seen_at IS NULL OR last_seen_at < $2)",
        )
        .bind(gateways)
        .bind(at)
        .execute(&mut *conn)
        .await?;
        Ok(())
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

    /// The consumer's batch transaction: [`Record::insert_batch`], and in the same
    /// transaction the envelope sequence numbers `seqs` (gateway and number, in arrival order)
    /// checked and advanced as [`Record::check_and_advance_seq`] would one by one, and, with
    /// `evaluate`, the rules run on the new readings with their alerts stored (see
    /// [`Record::insert_batch_evaluated`]). `None` when `evaluate` asked for a rollback.
    ///
    /// `seqs` may be given with an empty `batch` (messages whose readings were all rejected).
    pub async fn insert_batch_tracked(
        &self,
        batch: &[(Reading, Vec<Observed>)],
        seqs: &[(GatewayId, u64)],
        evaluate: Option<&mut Evaluate<'_>>,
    ) -> Result<Option<Committed>> {
        let evaluated = evaluate.is_some();
        let done = self.insert_batch_full(batch, seqs, evaluate).await?;
        if let (true, Some(n), Some(c)) = (evaluated, &self.notifications, &done) {
            n.committed(&c.written).await;
        }
        Ok(done)
    }

    /// [`Record::insert_batch`], with `evaluate` run inside the transaction on the new
    /// readings (see [`Record::insert_batch_evaluated`]). `None` when it asked for a rollback.
    pub(super) async fn insert_batch_inner(
        &self,
        batch: &[(Reading, Vec<Observed>)],
        evaluate: Option<&mut Evaluate<'_>>,
    ) -> Result<Option<(BatchOutcome, Vec<WrittenEvent>)>> {
        let done = self.insert_batch_full(batch, &[], evaluate).await?;
        Ok(done.map(|c| (c.outcome, c.written)))
    }

    async fn insert_batch_full(
        &self,
        batch: &[(Reading, Vec<Observed>)],
        seqs: &[(GatewayId, u64)],
        evaluate: Option<&mut Evaluate<'_>>,
    ) -> Result<Option<Committed>> {
        let ingested_at = now_us();
        if let Some((_, seq)) = seqs.iter().find(|(_, s)| i64::try_from(*s).is_err()) {
            return Err(RecordError::Invalid(format!(
                "envelope sequence number {seq} is over i64::MAX"
            )));
        }
        let mut seen = HashSet::with_capacity(batch.len());
        let rows = batch
            .iter()
            .filter(|(r, _)| seen.insert(r.id))
            .map(|(r, v)| ReadingRow::new(r, v))
            .collect::<Result<Vec<_>>>()?;
        let in_batch_duplicates = batch.len() - rows.len();
        if rows.is_empty() && seqs.is_empty() {
            return Ok(Some(Committed::default()));
        }

        // Devices, gateways and patients touched by the batch, with the devices' latest times.
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
        let mut patients: Vec<&str> = rows.iter().map(|r| r.reading.patient.as_str()).collect();
        patients.sort_unstable();
        patients.dedup();
        let mut seq_gateways: Vec<&str> = seqs.iter().map(|(g, _)| g.as_str()).collect();
        seq_gateways.sort_unstable();
        seq_gateways.dedup();

        let span = tracing::debug_span!(
            "insert_batch",
            readings = batch.len(),
            messages = seqs.len()
        );
        let notify = self.notifications.as_deref();
        let done = async {
            Ok::<_, RecordError>(with_pool!(self, write, |pool, DB| {
                let mut tx = pool.begin().await?;
                let mut checks = Vec::new();
                if !seqs.is_empty() {
                    let stored = <DB as BatchSql>::last_seqs(&mut *tx, &seq_gateways).await?;
                    let (c, planned) = plan_seqs(seqs, &stored);
                    <DB as BatchSql>::store_seqs(&mut *tx, &planned, ingested_at).await?;
                    checks = c;
                }
                let mut new_ids = HashSet::new();
                if !rows.is_empty() {
                    <DB as BatchSql>::check_registry(&mut *tx, &patients, &gateways).await?;
                    new_ids =
                        <DB as BatchSql>::insert_readings(&mut *tx, &rows, ingested_at).await?;
                    let values: Vec<ValueRow<'_, '_>> = rows
                        .iter()
                        .filter(|r| new_ids.contains(&r.id))
                        .flat_map(|r| r.values.iter().map(move |o| ValueRow::new(r, o)))
                        .collect();
                    if !values.is_empty() {
                        <DB as BatchSql>::insert_values(&mut *tx, &values).await?;
                    }
                    <DB as BatchSql>::touch_devices(&mut *tx, &devices, ingested_at).await?;
                    <DB as BatchSql>::touch_gateways(&mut *tx, &gateways, ingested_at).await?;
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
                        super::alerts::in_batch::<DB>(&mut *tx, &new, evaluate, notify).await?
                    }
                };
                match written {
                    Some(written) => {
                        tx.commit().await?;
                        Some((new_ids, checks, written))
                    }
                    None => {
                        tx.rollback().await?;
                        None
                    }
                }
            }))
        }
        .instrument(span)
        .await?;
        let Some((new_ids, seqs, written)) = done else {
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
        Ok(Some(Committed {
            outcome,
            seqs,
            written,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(id: &str) -> GatewayId {
        GatewayId::new(id).expect("gateway id")
    }

    #[test]
    fn fixed_chunks_cover_everything_in_known_sizes() {
        for n in [
            0usize, 1, 3, 4, 5, 63, 64, 255, 256, 257, 1000, 2001, 2048, 10_000,
        ] {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = fixed_chunks(&items).collect();
            assert!(
                chunks.iter().all(|c| SQLITE_CHUNKS.contains(&c.len())),
                "{n}"
            );
            let joined: Vec<usize> = chunks.concat();
            assert_eq!(joined, items, "{n}: every item once, in order");
        }
        // Largest first: 300 = 256 + 16 + 16 + 4 + 4 + 4.
        let items = [0u8; 300];
        let sizes: Vec<usize> = fixed_chunks(&items).map(<[u8]>::len).collect();
        assert_eq!(sizes, vec![256, 16, 16, 4, 4, 4]);
        // A full default batch (10 000 readings): four statements of 2 048 rows, then smaller.
        let items = [0u8; 10_000];
        let sizes: Vec<usize> = fixed_chunks(&items).map(<[u8]>::len).collect();
        let mut expected = vec![2048; 4];
        expected.extend([256; 7]);
        expected.push(16);
        assert_eq!(sizes, expected);
    }

    #[test]
    fn planned_seqs_match_checking_one_message_at_a_time() {
        let marks = vec![
            (gw("a"), 5),
            (gw("b"), 1),
            (gw("a"), 6),
            (gw("a"), 6),
            (gw("a"), 9),
            (gw("a"), 3),
        ];
        let stored: HashMap<String, i64> = [("a".to_owned(), 4)].into_iter().collect();
        let (checks, rows) = plan_seqs(&marks, &stored);
        assert_eq!(
            checks,
            vec![
                SeqCheck::InOrder,
                SeqCheck::First,
                SeqCheck::InOrder,
                SeqCheck::Replay { last: 6 },
                SeqCheck::Gap { missing: 2 },
                SeqCheck::Replay { last: 9 },
            ]
        );
        assert_eq!(
            rows,
            vec![
                SeqRow {
                    gateway: "a",
                    last_seq: 9,
                    previous_seq: Some(9),
                    replays: 2
                },
                SeqRow {
                    gateway: "b",
                    last_seq: 1,
                    previous_seq: None,
                    replays: 0
                },
            ]
        );
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

impl From<StoredReading> for Reading {
    /// The reading as the gateway sent it: what the rules engine replays (rebuilds, backtest
    /// previews) to judge stored readings exactly as it judged them live.
    fn from(s: StoredReading) -> Reading {
        Reading {
            id: s.id,
            seq: s.gateway_seq,
            gateway: s.gateway,
            patient: s.patient,
            device: vitals::DeviceIdentity::new(s.device),
            user_index: s.user_index,
            reading_type: s.reading_type,
            device_time: s.device_time,
            measured_at: s.measured_at,
            received_at: s.received_at,
            values: s.values,
            flags: s.flags,
        }
    }
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
    /// All of a patient's readings measured in `[from, to)`, oldest first, as readings the
    /// rules engine replays (every page of [`Record::readings_for_patient`]).
    pub async fn readings_to_replay(
        &self,
        patient: &PatientKey,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
    ) -> Result<Vec<Reading>> {
        let mut out = Vec::new();
        let mut page = Page::first(MAX_PAGE);
        loop {
            let got = self.readings_for_patient(patient, from, to, page).await?;
            out.extend(got.readings.into_iter().map(Reading::from));
            match got.next {
                Some(next) => page = next,
                None => return Ok(out),
            }
        }
    }

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
