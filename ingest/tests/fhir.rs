//! The HTTP API's FHIR R4 views, health check and metrics, on SQLite and PostgreSQL: readings
//! stored through `Record::insert_batch` are read back as PHD-shaped resources, searches page
//! through everything exactly once, absent values become `dataAbsentReason`, decimals keep
//! their digits, errors are `OperationOutcome`s, and every resource passes an independent
//! FHIR R4 validator (Python `fhir.resources` 6.4.0, FHIR 4.0.1).

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ingest::consume::IngestStats;
use ingest::http::{HttpState, router, serve};
use serde_json::Value as Json;
use support::{Db, identity, key, registry, validate_fhir};
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use vitals::{
    AbsentReason, DeviceIdentity, Flag, Flags, Kind, Observed, PatientKey, Reading, ReadingId,
    ReadingType, Value,
};

const BASE: &str = "http://rpm.test";

fn app(db: &Db) -> (Router, Arc<IngestStats>) {
    let stats = Arc::new(IngestStats::default());
    let mut state = HttpState::new(db.record.clone(), stats.clone());
    state.public_url = Some(format!("{BASE}/"));
    (router(state), stats)
}

struct Got {
    status: StatusCode,
    content_type: String,
    body: String,
}

impl Got {
    fn json(&self) -> Json {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

async fn get(app: &Router, path: &str) -> Got {
    let path = path.strip_prefix(BASE).unwrap_or(path);
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).expect("a request"))
        .await
        .expect("the router answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("a body");
    Got {
        status,
        content_type,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8"),
    }
}

fn num(v: &str) -> Value {
    Value::Number(v.parse().expect("decimal"))
}

fn obs(kind: Kind, value: Value) -> Observed {
    Observed {
        kind,
        value,
        unit: kind.unit(),
    }
}

fn reading(
    patient: &PatientKey,
    device: &DeviceIdentity,
    reading_type: ReadingType,
    at: OffsetDateTime,
    values: Vec<Observed>,
    flags: Flags,
) -> (Reading, Vec<Observed>) {
    let r = Reading {
        id: ReadingId(Default::default()),
        seq: 1,
        gateway: support::gw("gw-1"),
        patient: patient.clone(),
        device: device.clone(),
        user_index: None,
        reading_type,
        device_time: None,
        measured_at: at,
        received_at: at,
        values: values.clone(),
        flags,
    }
    .with_computed_id();
    (r, values)
}

fn codes(concept: &Json) -> Vec<(String, String)> {
    concept["coding"]
        .as_array()
        .expect("codings")
        .iter()
        .map(|c| {
            (
                c["system"].as_str().expect("system").to_owned(),
                c["code"].as_str().expect("code").to_owned(),
            )
        })
        .collect()
}

fn has_code(concept: &Json, system: &str, code: &str) -> bool {
    codes(concept).iter().any(|(s, c)| s == system && c == code)
}

const LOINC: &str = "http://loinc.org";
const MDC: &str = "urn:iso:std:iso:11073:10101";
const UCUM: &str = "http://unitsofmeasure.org";

both!(
    resources_have_the_phd_shapes,
    search_pages_through_every_observation_once,
    errors_are_operation_outcomes,
    health_and_metrics,
    served_over_tcp_until_shutdown,
    rare_code_over_a_long_history_pages_with_bounded_work,
);

async fn resources_have_the_phd_shapes(db: Db) {
    let patient = key("pk_7f3a.9");
    let cuff = identity("eui64:0011223344aabbcc");
    let spirometer = DeviceIdentity::new("bdaddr:c0:ff:ee:00:11:22".parse().expect("id"));
    registry(&db.record, &patient, &cuff).await;
    db.record
        .create_device(&spirometer, &support::AUDIT)
        .await
        .expect("device");
    let at = datetime!(2026-11-05 08:30:00.123456 UTC);
    let bp = reading(
        &patient,
        &cuff,
        ReadingType::BloodPressure,
        at,
        vec![
            obs(Kind::Systolic, num("128")),
            obs(Kind::Diastolic, num("82")),
            obs(
                Kind::MeanArterialPressure,
                Value::Absent(AbsentReason::Nres),
            ),
            obs(Kind::PulseRate, num("71")),
        ],
        Flags::EMPTY
            .with(Flag::IrregularPulse)
            .with(Flag::PulseRateHigh),
    );
    let spiro = reading(
        &patient,
        &spirometer,
        ReadingType::Spirometry,
        at + time::Duration::minutes(5),
        vec![
            obs(Kind::Fev1, num("2.10")),
            obs(Kind::Fvc, num("3.05")),
            obs(Kind::Fev1FvcRatio, num("69")),
            obs(Kind::Pef, num("390")),
        ],
        Flags::EMPTY,
    );
    let spo2_absent = reading(
        &patient,
        &cuff,
        ReadingType::OximetrySpotCheck,
        at + time::Duration::minutes(10),
        vec![
            obs(Kind::Spo2, Value::Absent(AbsentReason::Nan)),
            obs(Kind::PulseRate, num("70")),
        ],
        Flags::EMPTY.with(Flag::LowPerfusion),
    );
    let temp = reading(
        &patient,
        &cuff,
        ReadingType::Temperature,
        at + time::Duration::minutes(15),
        vec![obs(Kind::BodyTemperature, num("37.0"))],
        Flags::EMPTY,
    );
    let batch = vec![bp.clone(), spiro.clone(), spo2_absent.clone(), temp.clone()];
    let outcome = db.record.insert_batch(&batch).await.expect("insert");
    assert_eq!(outcome.new_count(), 4);
    let (app, _) = app(&db);
    let mut served = Vec::new();

    // Patient: the pseudonymous key, and no name, whatever the record holds.
    let got = get(&app, "/fhir/Patient/pk.-7f3a..9").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(got.content_type.starts_with("application/fhir+json"));
    let p = got.json();
    assert_eq!(p["resourceType"], "Patient");
    assert_eq!(p["id"], "pk.-7f3a..9");
    assert_eq!(p["identifier"][0]["value"], "pk_7f3a.9");
    assert!(p.get("name").is_none());
    assert!(!got.body.contains("Jane"), "{}", got.body);
    served.push(got.body);

    // Device: EUI-64 system id as the PHD IG writes it, and the DIS strings.
    let got = get(&app, "/fhir/Device/eui64-0011223344aabbcc").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let d = got.json();
    assert_eq!(d["identifier"][0]["value"], "00-11-22-33-44-AA-BB-CC");
    assert_eq!(
        d["identifier"][0]["system"],
        "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
    );
    assert_eq!(d["identifier"][0]["type"]["coding"][0]["code"], "SYSID");
    assert_eq!(d["serialNumber"], "SN-0042");
    assert_eq!(d["modelNumber"], "BP-7");
    assert_eq!(d["manufacturer"], "Acme Medical");
    assert_eq!(d["version"][0]["value"], "1.4.2");
    served.push(got.body);
    let got = get(&app, "/fhir/Device/bdaddr-c0ffee001122").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let d = got.json();
    assert_eq!(d["identifier"][0]["type"]["coding"][0]["code"], "BTMAC");
    assert_eq!(d["identifier"][0]["value"], "C0-FF-EE-00-11-22");
    assert!(d.get("serialNumber").is_none());
    served.push(got.body);

    // Blood pressure: a panel with components, MDC beside LOINC, UCUM, absent MAP.
    let bp_id = bp.0.id;
    let got = get(&app, &format!("/fhir/Observation/{bp_id}-bp")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let o = got.json();
    assert_eq!(o["status"], "final");
    assert!(has_code(&o["code"], LOINC, "85354-9"));
    assert!(has_code(&o["code"], MDC, "150020"));
    assert!(has_code(
        &o["category"][0],
        "http://terminology.hl7.org/CodeSystem/observation-category",
        "vital-signs"
    ));
    assert_eq!(o["subject"]["reference"], "Patient/pk.-7f3a..9");
    assert_eq!(o["device"]["reference"], "Device/eui64-0011223344aabbcc");
    assert_eq!(o["effectiveDateTime"], "2026-11-05T08:30:00.123456Z");
    assert_eq!(o["identifier"][0]["value"], format!("{bp_id}-bp"));
    assert!(o.get("valueQuantity").is_none());
    let components = o["component"].as_array().expect("components");
    assert_eq!(components.len(), 3);
    assert!(has_code(&components[0]["code"], LOINC, "8480-6"));
    assert!(has_code(&components[0]["code"], MDC, "150021"));
    assert_eq!(components[0]["valueQuantity"]["code"], "mm[Hg]");
    assert_eq!(components[0]["valueQuantity"]["system"], UCUM);
    assert!(has_code(&components[1]["code"], LOINC, "8462-4"));
    assert!(has_code(&components[2]["code"], LOINC, "8478-0"));
    assert!(components[2].get("valueQuantity").is_none());
    assert_eq!(
        components[2]["dataAbsentReason"]["coding"][0]["code"],
        "error"
    );
    let flags: Vec<&str> = o["extension"]
        .as_array()
        .expect("flag extensions")
        .iter()
        .map(|e| e["valueCode"].as_str().expect("code"))
        .collect();
    assert_eq!(flags, ["irregular_pulse", "pulse_rate_high"]);
    assert!(got.body.contains(r#""value":128,"#), "{}", got.body);
    served.push(got.body);

    // The cuff's pulse is its own Observation, with the device's range bit as interpretation.
    let got = get(&app, &format!("/fhir/Observation/{bp_id}-pulse")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let o = got.json();
    assert!(has_code(&o["code"], LOINC, "8867-4"));
    // MDC_PULS_RATE_NON_INV, as the PHD guide codes a cuff's pulse (an oximeter's is 149530).
    assert!(has_code(&o["code"], MDC, "149546"), "{}", got.body);
    assert!(!has_code(&o["code"], MDC, "149530"), "{}", got.body);
    assert_eq!(o["valueQuantity"]["code"], "/min");
    assert_eq!(o["interpretation"][0]["coding"][0]["code"], "H");
    served.push(got.body);

    // SpO2 the oximeter could not measure: both LOINC codes, MDC, and dataAbsentReason.
    let got = get(
        &app,
        &format!("/fhir/Observation/{}-spo2", spo2_absent.0.id),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let o = got.json();
    assert!(has_code(&o["code"], LOINC, "59408-5"));
    assert!(has_code(&o["code"], LOINC, "2708-6"));
    assert!(has_code(&o["code"], MDC, "150456"));
    assert!(o.get("valueQuantity").is_none());
    assert_eq!(
        o["dataAbsentReason"]["coding"][0],
        serde_json::json!({
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "not-a-number",
            "display": "Not a Number (NaN)"
        })
    );
    served.push(got.body);

    // Precision: the digits the device sent, in the JSON text itself.
    let got = get(&app, &format!("/fhir/Observation/{}-fev1", spiro.0.id)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(got.body.contains(r#""value":2.10,"#), "{}", got.body);
    assert!(has_code(&got.json()["code"], LOINC, "20150-9"));
    assert_eq!(
        got.json()["device"]["reference"],
        "Device/bdaddr-c0ffee001122"
    );
    served.push(got.body);
    let got = get(&app, &format!("/fhir/Observation/{}-fvc", spiro.0.id)).await;
    assert!(got.body.contains(r#""value":3.05,"#), "{}", got.body);
    served.push(got.body);
    for (part, loinc, ucum) in [("fev1fvc", "19926-5", "%"), ("pef", "19935-6", "L/min")] {
        let got = get(&app, &format!("/fhir/Observation/{}-{part}", spiro.0.id)).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert!(has_code(&got.json()["code"], LOINC, loinc));
        assert_eq!(got.json()["valueQuantity"]["code"], ucum);
        served.push(got.body);
    }
    let got = get(&app, &format!("/fhir/Observation/{}-temp", temp.0.id)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert!(got.body.contains(r#""value":37.0,"#), "{}", got.body);
    assert!(has_code(&got.json()["code"], LOINC, "8310-5"));
    assert_eq!(got.json()["valueQuantity"]["code"], "Cel");
    served.push(got.body);

    // A part the reading does not have is not an Observation.
    let got = get(&app, &format!("/fhir/Observation/{}-spo2", temp.0.id)).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);

    // The whole patient as one search Bundle: BP panel and pulse, four spirometry
    // Observations, SpO2 and pulse, temperature.
    let got = get(&app, "/fhir/Observation?patient=Patient/pk.-7f3a..9").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let b = got.json();
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["entry"].as_array().expect("entries").len(), 9);
    assert!(got.body.contains(r#""value":2.10,"#));
    assert!(!got.body.contains("Jane"));
    served.push(got.body);

    let metadata = get(&app, "/fhir/metadata").await;
    assert_eq!(metadata.status, StatusCode::OK);
    assert_eq!(metadata.json()["fhirVersion"], "4.0.1");
    served.push(metadata.body);

    let served: Vec<&str> = served.iter().map(String::as_str).collect();
    validate_fhir(&served);
}

async fn search_pages_through_every_observation_once(db: Db) {
    let patient = key("pk-paging");
    let oximeter = identity("eui64:00000000000000aa");
    registry(&db.record, &patient, &oximeter).await;
    // 23 spot checks (SpO2 + pulse), several at the very same microsecond, from Oct 30 on.
    let start = datetime!(2026-10-30 12:00 UTC);
    let batch: Vec<_> = (0..23i64)
        .map(|i| {
            let at = start + time::Duration::days(i / 3);
            reading(
                &patient,
                &oximeter,
                ReadingType::OximetrySpotCheck,
                at,
                vec![
                    obs(Kind::PulseRate, num(&format!("{}", 60 + i))),
                    obs(Kind::Spo2, num(&format!("{}", 90 + i % 10))),
                ],
                Flags::EMPTY,
            )
        })
        .collect();
    db.record.insert_batch(&batch).await.expect("insert");
    // Another patient's readings must never appear.
    let other = key("pk-other");
    let other_device = identity("eui64:00000000000000bb");
    registry(&db.record, &other, &other_device).await;
    db.record
        .insert_batch(&[reading(
            &other,
            &other_device,
            ReadingType::OximetrySpotCheck,
            start,
            vec![obs(Kind::Spo2, num("95"))],
            Flags::EMPTY,
        )])
        .await
        .expect("insert");
    let (app, _) = app(&db);

    async fn all_pages(app: &Router, first: &str) -> (Vec<String>, Vec<String>) {
        let mut ids = Vec::new();
        let mut bodies = Vec::new();
        let mut url = Some(first.to_owned());
        while let Some(u) = url.take() {
            let got = get(app, &u).await;
            assert_eq!(got.status, StatusCode::OK, "{u}: {}", got.body);
            let b = got.json();
            for e in b["entry"].as_array().into_iter().flatten() {
                let id = e["resource"]["id"].as_str().expect("id").to_owned();
                assert_eq!(e["fullUrl"], format!("{BASE}/fhir/Observation/{id}"));
                assert_eq!(e["search"]["mode"], "match");
                ids.push(id);
            }
            url = b["link"]
                .as_array()
                .expect("links")
                .iter()
                .find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().expect("url").to_owned());
            bodies.push(got.body);
            assert!(bodies.len() < 100, "paging does not end");
        }
        (ids, bodies)
    }

    // Everything, 7 to a page: 46 Observations, each once, in time order.
    let (ids, bodies) = all_pages(&app, "/fhir/Observation?patient=pk-paging&_count=7").await;
    assert_eq!(ids.len(), 46);
    assert_eq!(bodies.len(), 7, "46 = 6 full pages of 7 and one of 4");
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 46);
    for (reading, _) in &batch {
        assert!(ids.contains(&format!("{}-spo2", reading.id)));
        assert!(ids.contains(&format!("{}-pulse", reading.id)));
    }
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    validate_fhir(&bodies);

    // SpO2 only (by LOINC 2708-6 or MDC), in November before the 5th, 4 to a page.
    let (ids, _) = all_pages(
        &app,
        "/fhir/Observation?patient=Patient%2Fpk-paging&code=urn:iso:std:iso:11073:10101%7C150456,http://loinc.org%7C2708-6&date=ge2026-11-01&date=lt2026-11-05&_count=4",
    )
    .await;
    let expected: Vec<String> = batch
        .iter()
        .filter(|(r, _)| {
            r.measured_at >= datetime!(2026-11-01 0:00 UTC)
                && r.measured_at < datetime!(2026-11-05 0:00 UTC)
        })
        .map(|(r, _)| format!("{}-spo2", r.id))
        .collect();
    assert_eq!(expected.len(), 12);
    let mut sorted = ids.clone();
    sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted);
    assert_eq!(ids.len(), 12, "no duplicates across pages");

    // A search of nobody's readings is an empty Bundle, not an error.
    let got = get(&app, "/fhir/Observation?patient=nobody&code=8867-4").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.json().get("entry").is_none());
    validate_fhir(&[&got.body]);
}

async fn errors_are_operation_outcomes(db: Db) {
    let (app, _) = app(&db);
    let mut served = Vec::new();
    for (path, status, code) in [
        (
            "/fhir/Patient/pk-unknown",
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            "/fhir/Patient/not_an_id",
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            "/fhir/Device/eui64-0011223344556677",
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            "/fhir/Observation/3e7b1a0c-0000-5000-8000-000000000000-bp",
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            "/fhir/Observation/nonsense",
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        ("/fhir/Encounter/1", StatusCode::NOT_FOUND, "not-found"),
        (
            "/fhir/Observation?date=ge2026-11-01",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "/fhir/Observation?patient=pk-1&date=sa2026-11-01",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "/fhir/Observation?patient=pk-1&date=ge2026-02-30",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "/fhir/Observation?patient=pk-1&_count=100000",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "/fhir/Observation?patient=pk-1&_cursor=abc",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            "/fhir/Observation?patient=pk-1&categroy=vital-signs",
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
    ] {
        let got = get(&app, path).await;
        assert_eq!(got.status, status, "{path}: {}", got.body);
        assert!(
            got.content_type.starts_with("application/fhir+json"),
            "{path}"
        );
        let o = got.json();
        assert_eq!(o["resourceType"], "OperationOutcome", "{path}");
        assert_eq!(o["issue"][0]["code"], code, "{path}");
        assert_eq!(o["issue"][0]["severity"], "error", "{path}");
        served.push(got.body);
    }
    // A bad search names the parameter and what was wrong.
    let got = get(&app, "/fhir/Observation?patient=pk-1&date=sa2026-11-01").await;
    let o = got.json();
    assert_eq!(o["issue"][0]["expression"][0], "date");
    let why = o["issue"][0]["diagnostics"].as_str().expect("diagnostics");
    assert!(why.contains("prefix `sa`"), "{why}");
    let got = get(&app, "/fhir/Observation?code=8867-4").await;
    assert_eq!(got.json()["issue"][0]["expression"][0], "patient");
    // Outside /fhir, a plain 404.
    let got = get(&app, "/nothing-here").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);

    let served: Vec<&str> = served.iter().map(String::as_str).collect();
    validate_fhir(&served);
}

async fn health_and_metrics(db: Db) {
    let (app, stats) = app(&db);
    let got = get(&app, "/healthz").await;
    assert_eq!(got.status, StatusCode::OK);

    stats.readings_stored.store(1234, Ordering::Relaxed);
    stats.readings_duplicate.store(5, Ordering::Relaxed);
    let got = get(&app, "/metrics").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.content_type.starts_with("text/plain; version=0.0.4"));
    assert!(
        got.body
            .contains("\nrpm_ingest_readings_stored_total 1234\n"),
        "{}",
        got.body
    );
    assert!(
        got.body
            .contains("\nrpm_ingest_readings_duplicate_total 5\n")
    );
    assert!(
        got.body
            .contains("rpm_ingest_rejected_total{reason=\"unknown_patient\"} 0\n")
    );
    assert!(
        got.body
            .contains("# TYPE rpm_ingest_rejected_total counter\n")
    );

    // A database that no longer answers makes the health check fail.
    db.record.close().await;
    let got = get(&app, "/healthz").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
}

async fn served_over_tcp_until_shutdown(db: Db) {
    let patient = key("pk-tcp");
    registry(&db.record, &patient, &identity("eui64:00000000000000cc")).await;
    let state = HttpState::new(db.record.clone(), Arc::new(IngestStats::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(serve(listener, router(state), shutdown.clone()));

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /fhir/Observation?patient=pk-tcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Without a configured public URL, links are absolute from the Host the client used.
    assert!(
        response.contains(&format!(
            "\"url\":\"http://{addr}/fhir/Observation?patient=Patient%2Fpk-tcp"
        )),
        "{response}"
    );

    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the server stops on shutdown")
        .expect("server task")
        .expect("server result");
}

async fn rare_code_over_a_long_history_pages_with_bounded_work(db: Db) {
    let patient = key("pk-long");
    let thermometer = identity("eui64:00000000000000dd");
    registry(&db.record, &patient, &thermometer).await;
    let start = datetime!(2026-11-01 0:00 UTC);
    // 5,100 temperatures (more than one request reads), then one SpO2.
    let mut batch: Vec<_> = (0..5_100i64)
        .map(|i| {
            reading(
                &patient,
                &thermometer,
                ReadingType::Temperature,
                start + time::Duration::seconds(i),
                vec![obs(Kind::BodyTemperature, num(&format!("36.{}", i % 10)))],
                Flags::EMPTY,
            )
        })
        .collect();
    let spo2 = reading(
        &patient,
        &thermometer,
        ReadingType::OximetrySpotCheck,
        start + time::Duration::hours(3),
        vec![obs(Kind::Spo2, num("97"))],
        Flags::EMPTY,
    );
    batch.push(spo2.clone());
    db.record.insert_batch(&batch).await.expect("insert");
    let (app, _) = app(&db);

    let first = get(&app, "/fhir/Observation?patient=pk-long&code=59408-5").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let b = first.json();
    // The first request stops after its scan budget: no match yet, but a way on.
    assert!(b.get("entry").is_none(), "{}", first.body);
    let next = b["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .expect("a next link after a bounded scan")
        .to_owned();
    let second = get(&app, &next).await;
    let b = second.json();
    let entries = b["entry"].as_array().expect("the SpO2");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["resource"]["id"], format!("{}-spo2", spo2.0.id));
    assert!(
        !b["link"]
            .as_array()
            .expect("links")
            .iter()
            .any(|l| l["relation"] == "next"),
        "nothing after the last match"
    );
    validate_fhir(&[&first.body, &second.body]);
}
