//! Fuzzes `codec::blood_pressure_record`: the Blood Pressure Record characteristic (0x2B36,
//! a whole record in one segment) and the joined record body that `RecordBody::decode`
//! reads after reassembly. Decoding never panics and whatever decodes re-encodes to bytes
//! that decode again. The first byte picks: 0 the characteristic, 1 the body (modulo 2).
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O blood_pressure_record -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::one_of_or(common::BLOOD_PRESSURE_RECORD, &[common::record_body], data)
});
