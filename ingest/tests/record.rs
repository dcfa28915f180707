//! The patient record's promises, each checked on both backends: SQLite in a temporary
//! directory and PostgreSQL through `testkit` (a fresh database per test; skipped locally
//! when no server answers, a failure under `CI=true`).

use std::collections::HashSet;
use std::time::Duration;

use ingest::record::bench::BenchFleet;
use ingest::record::{
    Audit, MAX_DEAD_LETTER_PAYLOAD, NewBinding, NewPatient, Page, PatientUpdate, Record,
    RecordError, SeqCheck,
};
use time::OffsetDateTime;
use time::macros::datetime;
use vitals::{
    AbsentReason, Decimal, DeviceId, DeviceIdentity, Flag, Flags, GatewayId, Kind, Observed,
    PatientKey, Reading, ReadingId, ReadingType, RejectReason, Unit, Value,
};

const AUDIT: Audit<'static> = Audit {
    who: "test",
    why: "record integration test",
};

/// A record under test and what keeps its database alive.
struct Db {
    record: Record,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<testkit::PgDatabase>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", dir.path().join("rpm.db").display());
    let record = Record::connect(&url, 4).await.expect("open SQLite record");
    Db {
        record,
        url,
        _dir: Some(dir),
        _pg: None,
    }
}

async fn postgres() -> Option<Db> {
    let pg = testkit::unavailable(testkit::PgDatabase::create().await)?;
    let url = pg.url().to_owned();
    let record = Record::connect(&url, 4)
        .await
        .expect("open PostgreSQL record");
    Some(Db {
        record,
        url,
        _dir: None,
        _pg: Some(pg),
    })
}

/// `both!(name)` runs `async fn name(db: Db)` once per backend, as `name::sqlite` and
/// `name::postgres`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = super::postgres().await else { return };
                super::$name(db).await;
            }
        }
    )*};
}

both!(
    migrations_apply_to_a_fresh_database,
    same_reading_twice_is_stored_once,
    a_backlog_batch_in_the_largest_statements_dedups_like_a_small_one,
    values_round_trip_exactly,
    dead_letters_keep_reason_and_capped_payload,
    bindings_follow_user_slots_and_validity_windows,
    an_unchanged_binding_view_is_not_reread_and_a_change_elsewhere_is,
    replays_are_flagged_not_lost,
    unknown_patient_fails_the_batch_permanently,
    timeline_pages_and_last_values,
    registry_changes_are_audited,
    many_alert_changes_in_one_write_keep_their_order,
);

fn key(s: &str) -> PatientKey {
    PatientKey::new(s).expect("valid patient key")
}

fn gw(s: &str) -> GatewayId {
    GatewayId::new(s).expect("valid gateway id")
}

fn dev(s: &str) -> DeviceId {
    s.parse().expect("valid device id")
}

fn patient(k: &str) -> NewPatient {
    NewPatient {
        key: key(k),
        display_name: Some("Test Person".into()),
        condition: "copd".into(),
        profile_id: None,
        care_team: None,
    }
}

async fn migrations_apply_to_a_fresh_database(db: Db) {
    let r = &db.record;
    assert_eq!(r.count_readings().await.expect("count"), 0);
    assert!(r.list_patients().await.expect("patients").is_empty());
    assert!(r.list_gateways().await.expect("gateways").is_empty());
    assert!(r.list_devices().await.expect("devices").is_empty());
    assert!(r.list_bindings(None).await.expect("bindings").is_empty());
    assert!(r.dead_letter_counts().await.expect("counts").is_empty());
    // Opening again finds the schema in place and changes nothing.
    r.close().await;
    let again = Record::connect(&db.url, 2).await.expect("reopen");
    assert_eq!(again.count_readings().await.expect("count"), 0);
}

async fn same_reading_twice_is_stored_once(db: Db) {
    let r = &db.record;
    let fleet = BenchFleet::setup(r, 3).await.expect("fleet");
    let a = fleet.reading(1);
    let b = fleet.reading(2);
    let out = r
        .insert_batch(&[a.clone(), b.clone(), a.clone()])
        .await
        .expect("first batch");
    assert_eq!(out.new, vec![a.0.id, b.0.id]);
    assert_eq!(
        out.duplicates, 1,
        "the second copy in one batch is a duplicate"
    );
    let c = fleet.reading(3);
    let out = r
        .insert_batch(&[b.clone(), c.clone()])
        .await
        .expect("second batch");
    assert_eq!(out.new, vec![c.0.id]);
    assert_eq!(
        out.duplicates, 1,
        "a reading stored by an earlier batch is a duplicate"
    );
    let out = r.insert_batch(&[a, b, c]).await.expect("replayed batch");
    assert!(out.new.is_empty());
    assert_eq!(out.duplicates, 3);
    assert_eq!(r.count_readings().await.expect("count"), 3);
}

/// A hub back from a week offline fills whole batches: 5 000 readings (10 000 values) go in
/// SQLite's largest statements (2 048 rows, 24 576 parameters, under its 32 766), and
/// PostgreSQL's arrays. A second batch overlapping the first by half stores only its new
/// half, and the record holds each reading once.
async fn a_backlog_batch_in_the_largest_statements_dedups_like_a_small_one(db: Db) {
    let r = &db.record;
    let fleet = BenchFleet::setup(r, 20).await.expect("fleet");
    let first = fleet.readings(0, 5_000);
    let out = r.insert_batch(&first).await.expect("first backlog");
    assert_eq!(out.new_count(), 5_000);
    assert_eq!(out.duplicates, 0);
    let second = fleet.readings(2_500, 5_000);
    let out = r.insert_batch(&second).await.expect("overlapping backlog");
    assert_eq!(out.duplicates, 2_500, "the half already stored");
    let expected: Vec<ReadingId> = second[2_500..].iter().map(|(r, _)| r.id).collect();
    assert_eq!(out.new, expected, "the new half, in batch order");
    assert_eq!(r.count_readings().await.expect("count"), 7_500);
}

/// A spirometry reading with an exact decimal, an absent value, a device clock, flags and a
/// user slot, stored and read back unchanged.
async fn values_round_trip_exactly(db: Db) {
    let r = &db.record;
    let fleet = BenchFleet::setup(r, 1).await.expect("fleet");
    let values = vec![
        Observed {
            kind: Kind::Fev1,
            value: Value::Number("2.10".parse::<Decimal>().expect("decimal")),
            unit: Unit::Litre,
        },
        Observed {
            kind: Kind::Fvc,
            value: Value::Absent(AbsentReason::PositiveInfinity),
            unit: Unit::Litre,
        },
        Observed {
            kind: Kind::Pef,
            value: Value::Number("12e2".parse::<Decimal>().expect("decimal")),
            unit: Unit::LitrePerMin,
        },
    ];
    let measured_at = datetime!(2026-11-26 06:59:13.123456 UTC);
    let reading = Reading {
        id: ReadingId(uuid::Uuid::nil()),
        seq: 1017,
        gateway: fleet.gateway.clone(),
        patient: fleet.patients[0].clone(),
        device: DeviceIdentity {
            model: Some("Spiro 3".into()),
            ..DeviceIdentity::new(fleet.devices[0])
        },
        user_index: Some(2),
        reading_type: ReadingType::Spirometry,
        device_time: Some(datetime!(2026-11-26 06:59:12)),
        measured_at,
        received_at: measured_at + Duration::from_secs(1),
        values: values.clone(),
        flags: Flags::EMPTY.with(Flag::FromStorage).with(Flag::LowBattery),
    }
    .with_computed_id();
    r.insert_batch(&[(reading.clone(), values.clone())])
        .await
        .expect("insert");

    let page = r
        .readings_for_patient(
            &reading.patient,
            measured_at,
            measured_at + Duration::from_secs(1),
            Page::first(10),
        )
        .await
        .expect("read back");
    assert_eq!(page.readings.len(), 1);
    let got = &page.readings[0];
    assert_eq!(got.id, reading.id);
    assert_eq!(
        got.values, values,
        "values in canonical order, exactly as stored"
    );
    assert_eq!(
        got.values[0].value.number().map(|d| d.to_string()),
        Some("2.10".to_owned())
    );
    assert_eq!(got.device_time, reading.device_time);
    assert_eq!(got.measured_at, measured_at);
    assert_eq!(got.received_at, reading.received_at);
    assert_eq!(got.flags, reading.flags);
    assert_eq!(got.user_index, Some(2));
    assert_eq!(got.gateway_seq, 1017);
    assert_eq!(got.reading_type, ReadingType::Spirometry);
    assert_eq!(got.device, reading.device.id);
    let device = r
        .device(&reading.device.id)
        .await
        .expect("device")
        .expect("registered");
    assert_eq!(device.identity.model.as_deref(), Some("Spiro 3"));
    assert_eq!(device.last_seen_at, Some(reading.received_at));
    let gateway = r
        .gateway(&fleet.gateway)
        .await
        .expect("gateway")
        .expect("registered");
    assert!(gateway.last_seen_at.is_some());
}

async fn dead_letters_keep_reason_and_capped_payload(db: Db) {
    let r = &db.record;
    let big = vec![b'x'; 100 * 1024];
    let topic = "rpm/v1/gw/gw-1/readings";
    r.dead_letter(
        topic,
        Some(&gw("gw-1")),
        RejectReason::MalformedJson,
        "expected value at line 1 column 1",
        &big,
    )
    .await
    .expect("dead letter");
    r.dead_letter(
        topic,
        None,
        RejectReason::Schema,
        "`.`: missing field `v`",
        b"{}",
    )
    .await
    .expect("dead letter");
    r.dead_letter(
        topic,
        None,
        RejectReason::Schema,
        "`.`: missing field `v`",
        b"{}",
    )
    .await
    .expect("same again");

    let counts = r.dead_letter_counts().await.expect("counts");
    assert_eq!(counts.get(&RejectReason::MalformedJson), Some(&1));
    assert_eq!(counts.get(&RejectReason::Schema), Some(&2));
    assert_eq!(counts.len(), 2);

    let letters = r.dead_letters(10).await.expect("letters");
    assert_eq!(
        letters.len(),
        2,
        "a repeated rejection counts, it adds no row"
    );
    let json = letters
        .iter()
        .find(|d| d.reason == RejectReason::MalformedJson)
        .expect("malformed one");
    assert_eq!(json.payload.len(), MAX_DEAD_LETTER_PAYLOAD);
    assert_eq!(json.payload_len, big.len() as u64);
    assert_eq!(json.gateway, Some(gw("gw-1")));
    assert_eq!(json.topic, topic);
    assert_eq!(json.error, "expected value at line 1 column 1");
    let schema = letters
        .iter()
        .find(|d| d.reason == RejectReason::Schema)
        .expect("schema one");
    assert_eq!(schema.count, 2);
    assert_eq!(schema.payload, b"{}");
    assert_eq!(schema.gateway, None);
}

/// The lookup view is checked against the record when it is old, and read again only when the
/// record's bindings changed: unchanged, no reload however many checks; an unbinding made by
/// another process (`rpm devices unbind` while ingest runs) is seen at the next check.
async fn an_unchanged_binding_view_is_not_reread_and_a_change_elsewhere_is(db: Db) {
    let r = &db.record;
    let g = gw("gw-home");
    let cuff = dev("bdaddr:00:11:22:33:44:66");
    let oxi = dev("bdaddr:00:11:22:33:44:77");
    r.create_gateway(&g, &AUDIT).await.expect("gateway");
    for d in [cuff, oxi] {
        r.create_device(&DeviceIdentity::new(d), &AUDIT)
            .await
            .expect("device");
    }
    r.create_patient(&patient("pk-anna"), &AUDIT)
        .await
        .expect("patient");
    let t0 = datetime!(2026-01-01 00:00 UTC);
    let later = datetime!(2026-06-01 00:00 UTC);
    for d in [cuff, oxi] {
        r.bind(
            &NewBinding {
                gateway: g.clone(),
                device: d,
                patient: key("pk-anna"),
                user_index: None,
                valid_from: t0,
            },
            &AUDIT,
        )
        .await
        .expect("bind");
    }
    // Every lookup finds the view old and asks whether the table changed.
    r.set_binding_ttl(Duration::ZERO);
    let who = |d: DeviceId| {
        let g = g.clone();
        async move {
            r.binding_for(&g, &d, None, later)
                .await
                .expect("lookup")
                .map(|k| k.as_str().to_owned())
        }
    };
    assert_eq!(who(cuff).await.as_deref(), Some("pk-anna"));
    let loaded = r.binding_reloads();
    assert!(loaded >= 1, "the first lookup loads the view");
    for _ in 0..20 {
        assert_eq!(who(cuff).await.as_deref(), Some("pk-anna"));
        assert_eq!(who(oxi).await.as_deref(), Some("pk-anna"));
    }
    assert_eq!(
        r.binding_reloads(),
        loaded,
        "nothing changed: the view is confirmed, not read again"
    );

    // Another process ends the oximeter's binding: this record did not make the change, so
    // only the bindings table's version can tell it.
    let other = Record::connect(&db.url, 1).await.expect("second record");
    other
        .unbind(&g, &oxi, None, t0 + Duration::from_secs(3600), &AUDIT)
        .await
        .expect("unbind elsewhere");
    assert_eq!(
        who(oxi).await,
        None,
        "the unbinding is seen at the next check"
    );
    assert_eq!(r.binding_reloads(), loaded + 1, "and read once");
    assert_eq!(who(cuff).await.as_deref(), Some("pk-anna"));
    assert_eq!(r.binding_reloads(), loaded + 1);

    // A change by hand in SQL, outside `rpm`, that keeps the number of bindings, the highest
    // id and the number of closed ones: the cuff's binding moved to another patient.
    r.create_patient(&patient("pk-bo"), &AUDIT)
        .await
        .expect("patient");
    by_hand(
        &db.url,
        "UPDATE device_bindings SET patient_key = 'pk-bo' WHERE device_id = $1",
        cuff.to_string(),
    )
    .await;
    assert_eq!(
        who(cuff).await.as_deref(),
        Some("pk-bo"),
        "an edit by hand is seen at the next check"
    );
    assert_eq!(r.binding_reloads(), loaded + 2);

    // A view that is still young is trusted as it is, without asking.
    r.set_binding_ttl(Duration::from_secs(3600));
    other
        .unbind(&g, &cuff, None, t0 + Duration::from_secs(3600), &AUDIT)
        .await
        .expect("unbind elsewhere");
    assert_eq!(
        who(cuff).await.as_deref(),
        Some("pk-bo"),
        "within the TTL the cached view answers"
    );
}

/// Runs `sql` with one text argument on a connection of the test's own, as someone editing
/// the database by hand would.
async fn by_hand(url: &str, sql: &str, arg: String) {
    macro_rules! run {
        ($connection:ty) => {{
            let mut c = <$connection as sqlx::Connection>::connect(url)
                .await
                .expect("connect");
            sqlx::query(sql)
                .bind(arg)
                .execute(&mut c)
                .await
                .expect("edit by hand");
        }};
    }
    if url.starts_with("sqlite") {
        run!(sqlx::SqliteConnection)
    } else {
        run!(sqlx::PgConnection)
    }
}

async fn bindings_follow_user_slots_and_validity_windows(db: Db) {
    let r = &db.record;
    let g = gw("gw-home");
    let cuff = dev("bdaddr:00:11:22:33:44:55");
    r.create_gateway(&g, &AUDIT).await.expect("gateway");
    r.create_device(&DeviceIdentity::new(cuff), &AUDIT)
        .await
        .expect("device");
    for k in ["pk-anna", "pk-ben", "pk-cleo"] {
        r.create_patient(&patient(k), &AUDIT)
            .await
            .expect("patient");
    }
    let t0 = datetime!(2026-01-01 00:00 UTC);
    let t1 = datetime!(2026-03-01 00:00 UTC);
    let bind = |user: Option<u8>, p: &str, from: OffsetDateTime| NewBinding {
        gateway: g.clone(),
        device: cuff,
        patient: key(p),
        user_index: user,
        valid_from: from,
    };
    r.bind(&bind(Some(1), "pk-anna", t0), &AUDIT)
        .await
        .expect("user 1");
    r.bind(&bind(Some(2), "pk-ben", t0), &AUDIT)
        .await
        .expect("user 2");
    let who = |user: Option<u8>, at: OffsetDateTime| {
        let g = g.clone();
        async move {
            r.binding_for(&g, &cuff, user, at)
                .await
                .expect("lookup")
                .map(|k| k.as_str().to_owned())
        }
    };
    assert_eq!(who(Some(1), t0).await.as_deref(), Some("pk-anna"));
    assert_eq!(who(Some(2), t1).await.as_deref(), Some("pk-ben"));
    assert_eq!(
        who(Some(3), t1).await,
        None,
        "an unbound slot belongs to nobody"
    );
    assert_eq!(who(None, t1).await, None, "no whole-device binding");
    assert_eq!(
        who(Some(1), t0 - Duration::from_secs(1)).await,
        None,
        "before the binding started"
    );
    assert_eq!(
        who(Some(1), t0).await.as_deref(),
        Some("pk-anna"),
        "cached answer"
    );

    // The same slot cannot be bound twice at once.
    let err = r
        .bind(&bind(Some(1), "pk-cleo", t1), &AUDIT)
        .await
        .expect_err("slot is taken");
    assert!(matches!(err, RecordError::Conflict(_)), "{err}");

    // Slot 1 passes from Anna to Cleo at t1: readings before t1 stay Anna's.
    r.unbind(&g, &cuff, Some(1), t1, &AUDIT)
        .await
        .expect("unbind");
    r.bind(&bind(Some(1), "pk-cleo", t1), &AUDIT)
        .await
        .expect("rebind");
    assert_eq!(
        who(Some(1), t1 - Duration::from_secs(1)).await.as_deref(),
        Some("pk-anna")
    );
    assert_eq!(who(Some(1), t1).await.as_deref(), Some("pk-cleo"));

    // A whole-device binding catches slots without their own.
    r.bind(&bind(None, "pk-ben", t1), &AUDIT)
        .await
        .expect("whole device");
    assert_eq!(who(Some(7), t1).await.as_deref(), Some("pk-ben"));
    assert_eq!(who(None, t1).await.as_deref(), Some("pk-ben"));

    // Another process (`rpm devices bind` while ingest runs) sees the same record.
    let other = Record::connect(&db.url, 1).await.expect("second record");
    assert_eq!(
        other
            .binding_for(&g, &cuff, Some(9), t1)
            .await
            .expect("lookup")
            .as_ref()
            .map(PatientKey::as_str),
        Some("pk-ben")
    );
    let later = t1 + Duration::from_secs(120);
    r.unbind(&g, &cuff, None, t1 + Duration::from_secs(60), &AUDIT)
        .await
        .expect("end whole-device binding");
    assert_eq!(
        who(Some(9), later).await,
        None,
        "slot 9 now belongs to nobody"
    );
    // A binding made elsewhere is seen at once: a miss in the cached view asks the database.
    other
        .bind(&bind(Some(9), "pk-anna", t1), &AUDIT)
        .await
        .expect("bind elsewhere");
    assert_eq!(who(Some(9), later).await.as_deref(), Some("pk-anna"));

    // Unknown things are named.
    let err = r
        .bind(&bind(Some(4), "pk-nobody", t1), &AUDIT)
        .await
        .expect_err("unknown patient");
    assert!(
        matches!(
            err,
            RecordError::NotFound {
                what: "patient",
                ..
            }
        ),
        "{err}"
    );
    let err = r
        .unbind(&g, &cuff, Some(5), t1, &AUDIT)
        .await
        .expect_err("nothing bound");
    assert!(
        matches!(
            err,
            RecordError::NotFound {
                what: "binding",
                ..
            }
        ),
        "{err}"
    );

    let config = r.gateway_device_bindings(&g, later).await.expect("config");
    assert_eq!(config.len(), 1);
    assert_eq!(config[0].patient, None);
    assert_eq!(
        config[0]
            .users
            .iter()
            .map(|u| (u.user, u.patient.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "pk-cleo"), (2, "pk-ben"), (9, "pk-anna")]
    );
    let active = r.list_bindings(Some(later)).await.expect("active");
    assert_eq!(active.len(), 3);
    assert_eq!(r.list_bindings(None).await.expect("all").len(), 5);
}

async fn replays_are_flagged_not_lost(db: Db) {
    let r = &db.record;
    let g = gw("gw-seq");
    assert_eq!(
        r.check_and_advance_seq(&g, 5).await.expect("seq"),
        SeqCheck::First
    );
    assert_eq!(
        r.check_and_advance_seq(&g, 6).await.expect("seq"),
        SeqCheck::InOrder
    );
    assert_eq!(
        r.check_and_advance_seq(&g, 9).await.expect("seq"),
        SeqCheck::Gap { missing: 2 }
    );
    assert_eq!(
        r.check_and_advance_seq(&g, 9).await.expect("seq"),
        SeqCheck::Replay { last: 9 }
    );
    assert_eq!(
        r.check_and_advance_seq(&g, 7).await.expect("seq"),
        SeqCheck::Replay { last: 9 }
    );
    assert_eq!(
        r.check_and_advance_seq(&g, 10).await.expect("seq"),
        SeqCheck::InOrder,
        "a replay does not move the high-water mark back"
    );
    assert_eq!(r.replay_count(&g).await.expect("replays"), 2);
    assert_eq!(
        r.check_and_advance_seq(&gw("gw-other"), 10)
            .await
            .expect("seq"),
        SeqCheck::First
    );
    assert!(matches!(
        r.check_and_advance_seq(&g, u64::MAX).await,
        Err(RecordError::Invalid(_))
    ));

    // The readings of a replayed message are still stored (or dedup): nothing is lost.
    let fleet = BenchFleet::setup(r, 1).await.expect("fleet");
    let batch = fleet.readings(0, 3);
    r.insert_batch(&batch[..2]).await.expect("first delivery");
    let out = r.insert_batch(&batch).await.expect("replayed delivery");
    assert_eq!(out.new, vec![batch[2].0.id]);
    assert_eq!(r.count_readings().await.expect("count"), 3);
}

async fn unknown_patient_fails_the_batch_permanently(db: Db) {
    let r = &db.record;
    let fleet = BenchFleet::setup(r, 1).await.expect("fleet");
    let good = fleet.reading(1);
    let mut stranger = fleet.reading(2);
    stranger.0.patient = key("pk-unregistered");
    stranger.0 = stranger.0.with_computed_id();
    let err = r
        .insert_batch(&[good.clone(), stranger])
        .await
        .expect_err("unknown patient");
    assert!(matches!(err, RecordError::Constraint(_)), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(
        r.count_readings().await.expect("count"),
        0,
        "the whole batch rolled back"
    );
    let out = r.insert_batch(&[good]).await.expect("good alone");
    assert_eq!(out.new_count(), 1);
}

/// Two ingest nodes given the same reading at once (a hub re-sent a message, and the broker
/// handed each copy to a different node): the node that loses the race gets a retryable
/// error, not a permanent one (which would dead-letter its batch), and its retry finds the
/// reading stored and stores the rest of its batch. PostgreSQL only: SQLite has one writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_another_node_is_storing_is_a_lost_race_then_a_duplicate() {
    use sqlx::Connection as _;
    let Some(db) = postgres().await else { return };
    let r = &db.record;
    let fleet = BenchFleet::setup(r, 2).await.expect("fleet");
    let (a, b) = (fleet.reading(1), fleet.reading(2));
    // The other node has inserted `a` and not yet committed.
    let mut other = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("second connection");
    let mut tx = other.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO readings (reading_id, patient_key, device_id, gateway_id, reading_type, \
         measured_at, received_at, ingested_at, flags, gateway_seq) \
         VALUES ($1, $2, $3, $4, $5, 0, 0, 0, 0, 0)",
    )
    .bind(a.0.id.to_string())
    .bind(a.0.patient.as_str())
    .bind(a.0.device.id.to_string())
    .bind(a.0.gateway.as_str())
    .bind(a.0.reading_type.as_str())
    .execute(&mut *tx)
    .await
    .expect("the other node's insert");
    let batch = vec![a.clone(), b.clone()];
    let record = r.clone();
    let ours = tokio::spawn(async move { record.insert_batch(&batch).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !ours.is_finished(),
        "our insert waits for the other node's transaction"
    );
    tx.commit().await.expect("the other node commits");
    match ours.await.expect("task") {
        Err(e) => assert!(
            matches!(e, RecordError::Contention(_)) && e.is_retryable(),
            "a lost race must be retried, not dead-lettered: {e}"
        ),
        Ok(out) => assert_eq!(out.new, vec![b.0.id], "{out:?}"),
    }
    let out = r
        .insert_batch(&[a.clone(), b.clone()])
        .await
        .expect("retry");
    assert_eq!(
        out.new.len() + out.duplicates,
        2,
        "every reading is new or a duplicate: {out:?}"
    );
    assert!(!out.new.contains(&a.0.id), "`a` was the other node's");
    assert_eq!(r.count_readings().await.expect("count"), 2);
}

async fn timeline_pages_and_last_values(db: Db) {
    let r = &db.record;
    let fleet = BenchFleet::setup(r, 2).await.expect("fleet");
    // Readings 0, 2, 4, … are patient 0's; 25 of them.
    let batch = fleet.readings(0, 50);
    r.insert_batch(&batch).await.expect("insert");
    let p0 = &fleet.patients[0];
    let from = fleet.start;
    let to = fleet.start + Duration::from_secs(60);
    let mut page = Page::first(10);
    let mut seen = Vec::new();
    loop {
        let got = r
            .readings_for_patient(p0, from, to, page)
            .await
            .expect("page");
        assert!(got.readings.len() <= 10);
        seen.extend(got.readings.iter().map(|s| s.id));
        assert!(got.readings.iter().all(|s| &s.patient == p0));
        match got.next {
            Some(next) => page = next,
            None => break,
        }
    }
    let expected: Vec<ReadingId> = batch
        .iter()
        .filter(|(rd, _)| &rd.patient == p0)
        .map(|(rd, _)| rd.id)
        .collect();
    assert_eq!(seen, expected, "every reading once, in time order");

    let last = r.last_values(p0).await.expect("last values");
    let (latest, _) = &batch[48];
    assert_eq!(last.len(), 2);
    for lv in &last {
        assert_eq!(lv.reading, latest.id);
        assert_eq!(lv.measured_at, latest.measured_at);
        assert_eq!(
            Some(lv.observed.value),
            latest
                .values
                .iter()
                .find(|o| o.kind == lv.observed.kind)
                .map(|o| o.value)
        );
    }

    // Cohort: patient 0 is the fleet's unwell one (SpO2 86 twice, then 95 twice, in turn),
    // patient 1 measures 94–98.
    let low = r
        .patients_below(Kind::Spo2, 90.0, fleet.start)
        .await
        .expect("cohort");
    assert_eq!(low, vec![fleet.patients[0].clone()]);
    let later = r
        .patients_below(Kind::Spo2, 90.0, fleet.start + Duration::from_millis(40))
        .await
        .expect("cohort");
    assert_eq!(
        later,
        vec![fleet.patients[0].clone()],
        "reading 48 (patient 0's 25th) is 86 again"
    );
    let under_95 = r
        .patients_below(Kind::Spo2, 94.0, fleet.start)
        .await
        .expect("cohort");
    assert_eq!(
        under_95,
        vec![fleet.patients[0].clone()],
        "94 is not under 94"
    );
    let none = r
        .patients_below(Kind::Spo2, 86.0, fleet.start)
        .await
        .expect("cohort");
    assert!(none.is_empty());
}

async fn registry_changes_are_audited(db: Db) {
    let r = &db.record;
    let who = Audit {
        who: "nurse:jdoe",
        why: "enrolled after discharge",
    };
    let created = r
        .create_patient(&patient("pk-dora"), &who)
        .await
        .expect("create");
    assert_eq!(created.display_name.as_deref(), Some("Test Person"));
    let err = r
        .create_patient(&patient("pk-dora"), &who)
        .await
        .expect_err("twice");
    assert!(matches!(err, RecordError::Conflict(_)), "{err}");
    let updated = r
        .update_patient(
            &key("pk-dora"),
            &PatientUpdate {
                profile_id: Some(Some("copd_hypercapnic".into())),
                display_name: Some(None),
                ..PatientUpdate::default()
            },
            &Audit {
                who: "clinician:drx",
                why: "hypercapnic on last gas",
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.profile_id.as_deref(), Some("copd_hypercapnic"));
    assert_eq!(updated.display_name, None);
    assert_eq!(updated.condition, "copd");
    assert_eq!(updated.created_at, created.created_at);

    let log = r
        .audit_log(Some("patient:pk-dora"), 10)
        .await
        .expect("audit log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].actor, "clinician:drx");
    assert_eq!(log[0].action, "patient.update(display_name,profile_id)");
    assert_eq!(log[0].reason, "hypercapnic on last gas");
    assert_eq!(log[1].action, "patient.create");
    assert!(
        log.iter().all(|e| !e.action.contains("Test Person")),
        "names stay out of the audit log"
    );
    let err = r
        .create_patient(
            &patient("pk-eve"),
            &Audit {
                who: "",
                why: "no one",
            },
        )
        .await
        .expect_err("anonymous change");
    assert!(matches!(err, RecordError::Invalid(_)), "{err}");
    assert!(r.patient(&key("pk-eve")).await.expect("lookup").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_record_survives_reopening() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("rpm.db").display());
    let ids: HashSet<ReadingId> = {
        let record = Record::connect(&url, 2).await.expect("open");
        let fleet = BenchFleet::setup(&record, 4).await.expect("fleet");
        let out = record
            .insert_batch(&fleet.readings(0, 100))
            .await
            .expect("insert");
        record
            .dead_letter("t", None, RejectReason::BadTopic, "bad topic", b"x")
            .await
            .expect("dead letter");
        record.close().await;
        out.new.into_iter().collect()
    };
    assert_eq!(ids.len(), 100);
    let record = Record::connect(&url, 2).await.expect("reopen");
    assert_eq!(record.count_readings().await.expect("count"), 100);
    assert_eq!(record.list_patients().await.expect("patients").len(), 4);
    assert_eq!(
        record
            .dead_letter_counts()
            .await
            .expect("counts")
            .get(&RejectReason::BadTopic),
        Some(&1)
    );
    let fleet = BenchFleet::setup(&record, 4).await.expect("same fleet");
    let out = record
        .insert_batch(&fleet.readings(50, 100))
        .await
        .expect("overlapping batch");
    assert_eq!(out.new_count(), 50);
    assert_eq!(out.duplicates, 50);
}

/// SQLite's WAL is copied into the database file by the record's own checkpointer, beside
/// the writer, not inside the writer's commits: a small batch (far under the writer's own
/// checkpoint threshold) reaches the database file by itself within moments. The file then
/// holds every page the record has, so its size is the record's page count times the page
/// size (a checkpoint that has copied the whole WAL sets it so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_beside_the_writer() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("rpm.db");
    let url = format!("sqlite://{}", path.display());
    let record = Record::connect(&url, 2).await.expect("open");
    let fleet = BenchFleet::setup(&record, 4).await.expect("fleet");
    record
        .insert_batch(&fleet.readings(0, 200))
        .await
        .expect("insert");
    let mut reader = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("a connection of the test's own");
    let mut seen = (0, 0);
    for _ in 0..100 {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut reader)
            .await
            .expect("page count");
        let size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut reader)
            .await
            .expect("page size");
        let on_disk = std::fs::metadata(&path).expect("database file").len();
        seen = (on_disk, pages * size);
        if i64::try_from(on_disk).expect("file size") == pages * size {
            record.close().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the database file stayed at {} bytes after 5 s, the record has {} in pages: \
         nothing checkpointed the WAL",
        seen.0, seen.1
    );
}

#[tokio::test]
async fn in_memory_sqlite_works_for_throwaway_use() {
    let record = Record::connect("sqlite::memory:", 4).await.expect("open");
    let fleet = BenchFleet::setup(&record, 1).await.expect("fleet");
    record
        .insert_batch(&fleet.readings(0, 10))
        .await
        .expect("insert");
    assert_eq!(record.count_readings().await.expect("count"), 10);
}

#[tokio::test]
async fn bad_urls_are_invalid_not_retryable() {
    let err = Record::connect("mysql://localhost/rpm", 1)
        .await
        .expect_err("unsupported");
    assert!(matches!(err, RecordError::Invalid(_)), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn unreachable_postgres_is_retryable() {
    let port = testkit::free_port().expect("free port");
    let err = Record::connect(&format!("postgres://postgres@127.0.0.1:{port}/rpm"), 1)
        .await
        .expect_err("nobody listens");
    assert!(err.is_retryable(), "{err:?}");
}

/// A batch's alert changes are written a round at a time (the k-th change of each patient
/// and rule in round k): raising, resolving and raising again the same rule in one write,
/// beside other patients' changes, a repeat prompt and a resolve with nothing open, stores
/// what writing them one by one would, in their order.
async fn many_alert_changes_in_one_write_keep_their_order(db: Db) {
    use ingest::record::{AlertEventKind, AlertState, AlertWrite, OpenAlert};
    let record = &db.record;
    for k in ["pk-1", "pk-2", "pk-3"] {
        record
            .create_patient(&patient(k), &AUDIT)
            .await
            .expect("patient");
    }
    let t0 = datetime!(2026-11-20 08:00 UTC);
    let minutes = |m: i64| t0 + time::Duration::minutes(m);
    let open = |k: &str, rule: &str, opened: i64, at: i64, raised: bool| AlertWrite::Open {
        patient: key(k),
        raised,
        alert: OpenAlert {
            rule: rule.into(),
            profile: "copd@1".into(),
            severity: rules::Severity::High,
            audience: rules::Audience::Nurse,
            opened_at: minutes(opened),
            at: minutes(at),
            explanation: serde_json::json!({"at": at}),
            nurse: format!("{rule} at {at}"),
            patient_text: None,
        },
    };
    let resolve = |k: &str, rule: &str, at: i64| AlertWrite::Resolve {
        patient: key(k),
        rule: rule.into(),
        at: minutes(at),
        payload: serde_json::json!({"cleared": at}),
    };
    // pk-3's spo2-low is already open (raised by another node).
    record
        .write_alerts(&[open("pk-3", "spo2-low", 0, 0, true)])
        .await
        .expect("the other node's raise");
    let writes = [
        open("pk-1", "spo2-low", 1, 1, true),
        open("pk-2", "spo2-low", 1, 1, true),
        open("pk-1", "spo2-low", 1, 2, false),
        AlertWrite::Repeat {
            patient: key("pk-2"),
            at: minutes(2),
            payload: serde_json::json!({"reason": "device_quality"}),
        },
        resolve("pk-1", "spo2-low", 3),
        resolve("pk-2", "pulse-high", 3),
        open("pk-3", "spo2-low", 3, 3, true),
        open("pk-1", "spo2-low", 4, 4, true),
        open("pk-1", "pulse-high", 4, 4, true),
    ];
    let written = record.write_alerts(&writes).await.expect("written");
    let kinds: Vec<(&str, AlertEventKind, bool)> = written
        .iter()
        .map(|w| (w.patient.as_str(), w.kind, w.raised_elsewhere))
        .collect();
    use AlertEventKind::*;
    assert_eq!(
        kinds,
        [
            ("pk-1", Raised, false),
            ("pk-2", Raised, false),
            ("pk-1", Updated, false),
            ("pk-2", RepeatRequested, false),
            ("pk-1", Resolved, false),
            // pk-2's pulse-high was never open: no event.
            ("pk-3", Updated, true),
            ("pk-1", Raised, false),
            ("pk-1", Raised, false),
        ]
    );
    // The first episode of pk-1's spo2-low was raised, updated and resolved; the second is
    // a new row.
    assert_eq!(written[0].alert_id, written[2].alert_id);
    assert_eq!(written[0].alert_id, written[4].alert_id);
    assert_ne!(written[0].alert_id, written[6].alert_id);
    assert_eq!(written[3].alert_id, None);
    let alerts = record
        .alerts_for_patient(&key("pk-1"))
        .await
        .expect("alerts");
    // Row ids follow the rounds, not the changes, across alerts: compare by opening.
    let mut rows: Vec<(
        OffsetDateTime,
        &str,
        AlertState,
        Option<OffsetDateTime>,
        &str,
    )> = alerts
        .iter()
        .map(|a| {
            (
                a.opened_at,
                a.rule.as_str(),
                a.state,
                a.resolved_at,
                a.nurse.as_str(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    assert_eq!(
        rows,
        [
            (
                minutes(1),
                "spo2-low",
                AlertState::Resolved,
                Some(minutes(3)),
                "spo2-low at 2"
            ),
            (
                minutes(4),
                "pulse-high",
                AlertState::Open,
                None,
                "pulse-high at 4"
            ),
            (
                minutes(4),
                "spo2-low",
                AlertState::Open,
                None,
                "spo2-low at 4"
            ),
        ]
    );
    let events = record
        .alert_events_for_patient(&key("pk-1"))
        .await
        .expect("events");
    // What a rebuilt rules state is reconciled with: the open ones only.
    let open = record
        .open_alerts_for_patient(&key("pk-1"))
        .await
        .expect("open alerts");
    assert_eq!(open.len(), 2);
    assert!(open.iter().all(|a| a.state == AlertState::Open));
    // Events are written in the order of the changes.
    let stored: Vec<(AlertEventKind, Option<i64>, OffsetDateTime)> =
        events.iter().map(|e| (e.kind, e.alert_id, e.at)).collect();
    assert_eq!(
        stored,
        [
            (Raised, written[0].alert_id, minutes(1)),
            (Updated, written[0].alert_id, minutes(2)),
            (Resolved, written[0].alert_id, minutes(3)),
            (Raised, written[6].alert_id, minutes(4)),
            (Raised, written[7].alert_id, minutes(4)),
        ]
    );
    assert_eq!(events[2].payload, serde_json::json!({"cleared": 3}));
    let pk3 = record
        .alerts_for_patient(&key("pk-3"))
        .await
        .expect("alerts");
    assert_eq!(pk3.len(), 1, "one open row per patient and rule");
    assert_eq!(pk3[0].nurse, "spo2-low at 3");
    let pk2 = record
        .alert_events_for_patient(&key("pk-2"))
        .await
        .expect("events");
    assert_eq!(
        pk2.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [Raised, RepeatRequested]
    );
}
