//! The wire envelope as a specification: round trips, ids, and every rejection by name.

use proptest::prelude::*;
use time::macros::datetime;
use vitals::*;

fn gw(s: &str) -> GatewayId {
    GatewayId::new(s).expect("valid gateway id")
}

fn bp_reading(systolic: &str, unit: Unit) -> Reading {
    Reading {
        id: ReadingId(uuid::Uuid::nil()),
        seq: 7,
        gateway: gw("gw-1"),
        patient: PatientKey::new("pk-0001").expect("valid key"),
        device: DeviceIdentity {
            serial: Some("SN123".into()),
            model: Some("BP7000".into()),
            ..DeviceIdentity::new("eui64:0011223344556677".parse().expect("valid device id"))
        },
        user_index: Some(1),
        reading_type: ReadingType::BloodPressure,
        device_time: Some(datetime!(2026-11-26 06:59:00)),
        measured_at: datetime!(2026-11-26 06:59:01.250 UTC),
        received_at: datetime!(2026-11-26 06:59:02 UTC),
        values: vec![
            Observed {
                kind: Kind::Systolic,
                value: Value::Number(systolic.parse().expect("decimal")),
                unit,
            },
            Observed {
                kind: Kind::Diastolic,
                value: Value::Number("10.7".parse().expect("decimal")),
                unit,
            },
            Observed {
                kind: Kind::MeanArterialPressure,
                value: Value::Absent(AbsentReason::Nan),
                unit,
            },
            Observed {
                kind: Kind::PulseRate,
                value: Value::Number(Decimal::from_int(72)),
                unit: Unit::PerMin,
            },
        ],
        flags: Flags::EMPTY.with(Flag::IrregularPulse),
    }
    .with_computed_id()
}

fn envelope(readings: Vec<Reading>) -> Envelope {
    Envelope {
        v: 1,
        gateway: gw("gw-1"),
        seq: 42,
        sent_at: datetime!(2026-11-26 07:00:00 UTC),
        readings,
    }
}

fn reject(payload: &[u8]) -> EnvelopeError {
    Envelope::decode(payload).expect_err("payload should be rejected")
}

fn json_of(e: &Envelope) -> serde_json::Value {
    serde_json::from_slice(&e.encode()).expect("encoded envelope is JSON")
}

fn reject_json(v: &serde_json::Value) -> EnvelopeError {
    reject(&serde_json::to_vec(v).expect("json"))
}

#[test]
fn envelope_round_trips_exactly() {
    let e = envelope(vec![bp_reading("16.0", Unit::KPa)]);
    let bytes = e.encode();
    assert_eq!(Envelope::decode(&bytes), Ok(e.clone()));
    // Precision survives the wire.
    let text = String::from_utf8(bytes).expect("utf8");
    assert!(text.contains(r#""value":"16.0""#), "{text}");
    assert!(text.contains(r#""absent":"nan""#), "{text}");
    assert!(
        text.contains(r#""device_time":"2026-11-26T06:59:00""#),
        "{text}"
    );
}

#[test]
fn same_measurement_same_id_different_measurement_different_id() {
    let a = bp_reading("120", Unit::MmHg);
    let mut resent = a.clone();
    // Re-sent later through another path: gateway-side times and queue position differ.
    resent.seq = 99;
    resent.received_at = datetime!(2026-12-03 10:00:00 UTC);
    resent.measured_at = datetime!(2026-11-26 06:59:03 UTC);
    resent.flags.insert(Flag::FromStorage);
    resent.values.reverse();
    assert_eq!(resent.compute_id(), a.id);
    assert_eq!(bp_reading("120", Unit::MmHg).id, a.id, "deterministic");
    assert_ne!(bp_reading("121", Unit::MmHg).id, a.id);
    assert_ne!(
        bp_reading("120.0", Unit::MmHg).id,
        a.id,
        "precision is part of what was said"
    );
    let mut other_user = a.clone();
    other_user.user_index = Some(2);
    assert_ne!(other_user.compute_id(), a.id);
    let mut other_time = a.clone();
    other_time.device_time = Some(datetime!(2026-11-26 06:59:01));
    assert_ne!(other_time.compute_id(), a.id);
}

#[test]
fn a_device_without_a_clock_is_identified_by_the_gateway_stamp() {
    let mut r = bp_reading("120", Unit::MmHg);
    r.device_time = None;
    let id = r.compute_id();
    r.received_at = datetime!(2027-01-01 00:00:00 UTC);
    assert_eq!(r.compute_id(), id, "received_at is not part of the id");
    r.measured_at = datetime!(2026-11-26 06:59:02 UTC);
    assert_ne!(
        r.compute_id(),
        id,
        "two identical values a second apart are two readings"
    );
}

#[test]
fn ids_sort_by_the_time_the_device_gave_and_keep_the_name_hash() {
    let a = bp_reading("120", Unit::MmHg);
    let id = a.id.0;
    assert_eq!(id.get_version_num(), 8);
    assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
    // The first 48 bits: the device's own timestamp (read as UTC) in milliseconds.
    let millis = datetime!(2026-11-26 06:59:00 UTC).unix_timestamp() as u64 * 1000;
    assert_eq!(&id.as_bytes()[..6], &millis.to_be_bytes()[2..]);
    // The rest: the v5 hash of the name, where the layout leaves it.
    let v5 = a.compute_id_v5().0;
    assert_eq!(v5.get_version_num(), 5);
    assert_eq!(id.as_bytes()[9..], v5.as_bytes()[9..]);
    assert_eq!(id.as_bytes()[7], v5.as_bytes()[7]);

    // Later measurements sort later, as text too (the record's key); a device without a
    // clock sorts by the gateway's stamp.
    let mut later = a.clone();
    later.device_time = Some(datetime!(2026-11-26 07:00:00));
    let mut no_clock = a.clone();
    no_clock.device_time = None;
    let mut no_clock_later = no_clock.clone();
    no_clock_later.measured_at = datetime!(2026-11-26 06:59:01.251 UTC);
    for (before, after) in [(&a, &later), (&no_clock, &no_clock_later)] {
        let (b, l) = (before.compute_id(), after.compute_id());
        assert!(b < l, "{b} before {l}");
        assert!(b.to_string() < l.to_string());
    }
    assert_eq!(
        &no_clock.compute_id().0.as_bytes()[..6],
        &(datetime!(2026-11-26 06:59:01.250 UTC).unix_timestamp_nanos() as u64 / 1_000_000)
            .to_be_bytes()[2..]
    );
    // A device clock before 1970 (reset to zero and worse) clamps, still deterministic.
    let mut reset = a.clone();
    reset.device_time = Some(datetime!(1969-12-31 23:59:59));
    assert_eq!(&reset.compute_id().0.as_bytes()[..6], &[0; 6]);
    assert_eq!(reset.compute_id(), reset.clone().compute_id());
}

#[test]
fn a_reading_queued_with_a_layout_1_id_still_validates() {
    let mut old = bp_reading("120", Unit::MmHg);
    old.id = old.compute_id_v5();
    assert_ne!(old.id, old.compute_id());
    old.validate()
        .expect("an older gateway's queued reading is accepted");
    // Anything else is still a mismatch, naming the current id.
    let mut wrong = old.clone();
    wrong.id = bp_reading("121", Unit::MmHg).id;
    match wrong.validate() {
        Err(ReadingError::IdMismatch { expected, found }) => {
            assert_eq!(expected, old.compute_id());
            assert_eq!(found, wrong.id);
        }
        other => panic!("expected an id mismatch, got {other:?}"),
    }
}

#[test]
fn validate_values_checks_everything_but_the_id() {
    let mut r = bp_reading("120", Unit::MmHg);
    r.id = bp_reading("121", Unit::MmHg).id;
    assert!(matches!(r.validate(), Err(ReadingError::IdMismatch { .. })));
    r.validate_values()
        .expect("the id is the one thing validate_values leaves alone");
    // Everything structural still fails it, as it fails validate.
    let mut twice = r.clone();
    twice.values.push(twice.values[0]);
    assert!(matches!(
        twice.validate_values(),
        Err(ReadingError::DuplicateKind { .. })
    ));
    assert!(twice.validate().is_err());
    let mut none = r.clone();
    none.values.clear();
    assert!(matches!(
        none.validate_values(),
        Err(ReadingError::NoValues)
    ));
}

#[test]
fn id_name_is_readable_and_documented() {
    let r = bp_reading("120", Unit::MmHg);
    assert_eq!(
        r.id_name(),
        "rpm-reading/1|eui64:0011223344556677|blood_pressure|1|d:2026-11-26T06:59:00|\
         systolic=120mm[Hg];diastolic=10.7mm[Hg];mean_arterial_pressure=!nanmm[Hg];pulse_rate=72/min;"
    );
}

#[test]
fn normalisation_converts_kpa_and_checks_ranges() {
    let r = bp_reading("16.0", Unit::KPa);
    let n = r.normalized().expect("plausible");
    assert_eq!(n[0].value, Value::Number(Decimal::from_int(120)));
    assert_eq!(n[0].unit, Unit::MmHg);
    assert_eq!(n[1].value, Value::Number(Decimal::from_int(80)));
    assert_eq!(n[2].value, Value::Absent(AbsentReason::Nan));
    let absurd = bp_reading("400", Unit::MmHg);
    let err = absurd.normalized().expect_err("400 mmHg is not plausible");
    assert_eq!(err.reason(), RejectReason::OutOfRange);
    assert!(
        err.to_string()
            .starts_with("`values[0]`: systolic of 400 mm[Hg] is outside"),
        "{err}"
    );
}

#[test]
fn size_encoding_and_syntax_are_rejected_before_anything_else() {
    let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
    assert_eq!(
        reject(&big),
        EnvelopeError::TooLarge {
            len: MAX_PAYLOAD_BYTES + 1,
            max: MAX_PAYLOAD_BYTES
        }
    );
    assert_eq!(
        reject(b"{\"v\":1,\xff}"),
        EnvelopeError::NotUtf8 { offset: 7 }
    );
    assert_eq!(reject(b"{\"v\":1,").reason(), RejectReason::MalformedJson);
    assert!(matches!(
        reject(b"{\"v\":1,"),
        EnvelopeError::Truncated { .. }
    ));
    assert!(matches!(
        reject(b"{\"v\" 1}"),
        EnvelopeError::Syntax { line: 1, .. }
    ));
    assert!(matches!(reject(b""), EnvelopeError::Truncated { .. }));
    let mut trailing = envelope(vec![bp_reading("120", Unit::MmHg)]).encode();
    trailing.extend_from_slice(b" {}");
    assert_eq!(reject(&trailing).reason(), RejectReason::MalformedJson);
}

#[test]
fn schema_errors_name_the_field() {
    let good = json_of(&envelope(vec![bp_reading("120", Unit::MmHg)]));

    let mut v = good.clone();
    v["readings"][0]["values"][1]["unit"] = "mmHg".into();
    let err = reject_json(&v);
    assert_eq!(err.reason(), RejectReason::Schema);
    assert!(
        err.to_string()
            .starts_with("`readings[0].values[1].unit`: unknown variant `mmHg`"),
        "{err}"
    );

    let mut v = good.clone();
    v["readings"][0]["patient"] = "Jane Smith".into();
    assert_eq!(
        reject_json(&v).to_string(),
        "`readings[0].patient`: invalid patient key: contains a character outside the allowed set"
    );

    let mut v = good.clone();
    v["readings"][0]["seq"] = "7".into();
    assert!(
        reject_json(&v)
            .to_string()
            .starts_with("`readings[0].seq`: invalid type")
    );

    let mut v = good.clone();
    v["readings"][0]["values"][0]["value"] = "12O".into();
    assert!(
        reject_json(&v)
            .to_string()
            .starts_with("`readings[0].values[0].value`")
    );

    let mut v = good.clone();
    v["readings"][0]["name"] = "Jane".into();
    assert!(reject_json(&v).to_string().contains("unknown field `name`"));

    let mut v = good.clone();
    v["readings"][0]["values"][2]["value"] = "80".into();
    assert_eq!(
        reject_json(&v).to_string(),
        "`readings[0].values[2]`: has both `value` and `absent`; send one"
    );

    let mut v = good.clone();
    v["readings"][0]["measured_at"] = "yesterday".into();
    assert!(
        reject_json(&v)
            .to_string()
            .starts_with("`readings[0].measured_at`")
    );

    let mut v = good;
    v.as_object_mut().expect("object").remove("gateway");
    assert_eq!(reject_json(&v).to_string(), "`.`: missing field `gateway`");
}

#[test]
fn versions_and_batch_sizes() {
    let good = json_of(&envelope(vec![bp_reading("120", Unit::MmHg)]));
    let mut v = good.clone();
    v["v"] = 2.into();
    assert_eq!(reject_json(&v), EnvelopeError::Version { found: 2 });
    // A future version with a different shape is still reported as a version problem.
    assert_eq!(
        reject(br#"{"v":3,"batch":[]}"#),
        EnvelopeError::Version { found: 3 }
    );

    let mut v = good.clone();
    v["readings"] = serde_json::json!([]);
    assert_eq!(reject_json(&v), EnvelopeError::BatchSize { count: 0 });

    let many = envelope(vec![bp_reading("120", Unit::MmHg); MAX_READINGS + 1]);
    assert_eq!(
        reject(&many.encode()),
        EnvelopeError::BatchSize {
            count: MAX_READINGS + 1
        }
    );
    let full = envelope(vec![bp_reading("120", Unit::MmHg); MAX_READINGS]);
    assert!(
        Envelope::decode(&full.encode()).is_ok(),
        "a full batch fits the payload cap"
    );
}

#[test]
fn reading_level_rejections_carry_their_reason() {
    let case = |edit: &dyn Fn(&mut Reading)| {
        let mut r = bp_reading("120", Unit::MmHg);
        edit(&mut r);
        reject(&envelope(vec![bp_reading("120", Unit::MmHg), r]).encode())
    };
    let err = case(&|r| r.id = ReadingId(uuid::Uuid::nil()));
    assert_eq!(err.reason(), RejectReason::IdMismatch);
    assert!(
        err.to_string()
            .starts_with("`readings[1]`: `id` is 00000000-"),
        "{err}"
    );

    let err = case(&|r| {
        r.values[0].unit = Unit::Litre;
        *r = r.clone().with_computed_id();
    });
    assert_eq!(err.reason(), RejectReason::UnitMismatch);
    assert_eq!(
        err.to_string(),
        "`readings[1]`: `values[0]`: L is not a unit of systolic (expected mm[Hg])"
    );

    let err = case(&|r| {
        r.values.push(Observed {
            kind: Kind::Spo2,
            value: Value::Number(Decimal::from_int(97)),
            unit: Unit::Percent,
        });
        *r = r.clone().with_computed_id();
    });
    assert_eq!(
        err.to_string(),
        "`readings[1]`: `values[4]`: a blood_pressure reading cannot carry spo2"
    );
    assert_eq!(err.reason(), RejectReason::InvalidReading);

    let err = case(&|r| {
        r.values[1].kind = Kind::Systolic;
        *r = r.clone().with_computed_id();
    });
    assert_eq!(
        err.to_string(),
        "`readings[1]`: `values[1]`: systolic appears twice"
    );

    let err = case(&|r| {
        r.values.clear();
        *r = r.clone().with_computed_id();
    });
    assert_eq!(err.reason(), RejectReason::InvalidReading);

    let err = case(&|r| r.gateway = gw("gw-2"));
    assert_eq!(err.reason(), RejectReason::GatewayMismatch);
}

#[test]
fn the_topic_must_name_the_envelopes_gateway() {
    let bytes = envelope(vec![bp_reading("120", Unit::MmHg)]).encode();
    assert!(Envelope::decode_from("rpm/v1/gw/gw-1/readings", &bytes).is_ok());
    let err = Envelope::decode_from("rpm/v1/gw/gw-2/readings", &bytes).expect_err("impersonation");
    assert_eq!(err.reason(), RejectReason::GatewayMismatch);
    assert_eq!(
        err.to_string(),
        "topic `rpm/v1/gw/gw-2/readings`: names gateway `gw-2` but the envelope says `gw-1`"
    );
    assert_eq!(
        Envelope::decode_from("rpm/v1/gw/gw-1/status", &bytes)
            .expect_err("status")
            .reason(),
        RejectReason::BadTopic
    );
    assert_eq!(
        Envelope::decode_from("other/topic", &bytes)
            .expect_err("foreign")
            .reason(),
        RejectReason::BadTopic
    );
}

#[test]
fn reject_reasons_have_unique_stable_codes() {
    let mut codes: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "ALL is in declaration order");
    }
    for r in RejectReason::ALL {
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            format!("\"{}\"", r.as_str())
        );
    }
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), RejectReason::ALL.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }

    /// Mutating one byte of a valid envelope gives either a valid envelope or a typed error.
    #[test]
    fn corrupting_a_valid_envelope_never_panics(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut bytes = envelope(vec![bp_reading("120", Unit::MmHg), bp_reading("16.0", Unit::KPa)]).encode();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = Envelope::decode(&bytes);
        let n = cut.index(bytes.len());
        prop_assert!(Envelope::decode(&bytes[..n]).is_err(), "a truncated envelope is never accepted");
    }

    /// `decode` parses a payload without recording the path to each field, and parses a
    /// refused one again with the path for its error: the two parses accept exactly the same
    /// texts and read them the same way, and what they refuse, `decode` refuses (the errors
    /// themselves are the other tests' business).
    #[test]
    fn the_fast_parse_accepts_exactly_what_the_path_recording_one_does(
        pos in any::<prop::sample::Index>(),
        byte in prop::sample::select(b"{}[]\",:0123456789.-eEtruefalsn \\x".to_vec()),
        cut in any::<prop::sample::Index>(),
        tail in proptest::option::of(prop::sample::select(b"} x0\n".to_vec())),
    ) {
        let mut bytes = envelope(vec![bp_reading("120", Unit::MmHg)]).encode();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        bytes.truncate(bytes.len() - cut.index(bytes.len() / 8));
        bytes.extend(tail);
        let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(()) };
        let fast = serde_json::from_str::<Envelope>(text).ok();
        let mut de = serde_json::Deserializer::from_str(text);
        let slow = serde_path_to_error::deserialize::<_, Envelope>(&mut de)
            .ok()
            .filter(|_| de.end().is_ok());
        prop_assert_eq!(&fast, &slow);
        if slow.is_none() {
            prop_assert!(Envelope::decode(text.as_bytes()).is_err());
        }
    }

    #[test]
    fn readings_round_trip(sys in 40i64..300, dia in 20i64..200, exp in -1i8..=0, seq in any::<u64>(), user in proptest::option::of(any::<u8>())) {
        let mut r = bp_reading("120", Unit::MmHg);
        r.seq = seq;
        r.user_index = user;
        r.values[0].value = Value::Number(Decimal::new(sys * 10i64.pow(u32::from(exp.unsigned_abs())), exp).expect("in range"));
        r.values[1].value = Value::Number(Decimal::from_int(dia));
        r.values[1].unit = Unit::MmHg;
        let r = r.with_computed_id();
        let e = envelope(vec![r]);
        prop_assert_eq!(Envelope::decode(&e.encode()), Ok(e));
    }
}
