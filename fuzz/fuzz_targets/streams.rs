//! Fuzzes the decoders that read a stream of values rather than one: GATT segments joined
//! into a Blood Pressure Record or a GHS observation, GHS RACP values, and Vitalograph Lung
//! Monitor packets found in a serial byte stream cut at arbitrary points. Nothing panics,
//! joined values stay bounded, and whatever decodes re-encodes to bytes that decode the same.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run streams -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use gateway::codec::blood_pressure_record::MAX_RECORD;
use gateway::codec::ghs;
use gateway::codec::segment::Reassembler;
use gateway::codec::vitalograph::FrameReader;
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
            common::record_body(&body);
        }
        if let Ok(Some(body)) = observation.push(chunk) {
            common::observation(&body);
            common::stored_observation(&body);
        }
        common::serial_chunk(&mut serial, chunk);
    }
    common::ghs_racp(rest);
});
