//! Fuzzes the decoders that read a stream of values rather than one: GATT segments joined
//! into a Blood Pressure Record or a GHS observation, GHS RACP values, and Vitalograph Lung
//! Monitor packets found in a serial byte stream cut at arbitrary points. Nothing panics,
//! joined values stay bounded, and whatever decodes re-encodes to bytes that decode the same.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run streams -- -max_total_time=60`.

#![no_main]

use gateway::codec::blood_pressure_record::{MAX_RECORD, RecordBody};
use gateway::codec::ghs::{self, GhsRacp, Observation, StoredObservation};
use gateway::codec::segment::Reassembler;
use gateway::codec::vitalograph::{FrameReader, LungMonitorResult};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says where to cut the rest into notifications.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 24) + 1;

    let mut record = Reassembler::new(MAX_RECORD);
    let mut observation = Reassembler::new(ghs::MAX_OBSERVATION);
    let mut serial = FrameReader::default();
    for chunk in rest.chunks(step) {
        if let Ok(Some(body)) = record.push(chunk) {
            assert!(body.len() <= MAX_RECORD);
            if let Ok(r) = RecordBody::decode(&body) {
                let again = r.encode().expect("a decoded record re-encodes");
                assert!(RecordBody::decode(&again).is_ok());
            }
        }
        if let Ok(Some(body)) = observation.push(chunk) {
            if let Ok(o) = Observation::decode(&body) {
                let _ = serde_json::to_string(&o);
                let again = o.encode().expect("a decoded observation re-encodes");
                let back = Observation::decode(&again).expect("re-encoded bytes decode");
                let _ = o.numerics();
                assert_eq!(back.without_quirks(), o.without_quirks());
            }
            if let Ok(s) = StoredObservation::decode(&body) {
                assert!(StoredObservation::decode(&s.encode().expect("re-encodes")).is_ok());
            }
        }
        for frame in serial.push(chunk) {
            assert!(frame.len() <= gateway::codec::vitalograph::FRAME_LEN);
            if let Ok(p) = LungMonitorResult::decode(&frame) {
                assert_eq!(p.encode().expect("re-encodes"), frame);
            }
        }
    }
    if let Ok(m) = GhsRacp::decode(rest) {
        assert_eq!(m.encode(), rest);
    }
});
