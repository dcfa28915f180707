//! Fuzzes `codec::blood_pressure`: Blood Pressure Measurement (0x2A35), Intermediate Cuff
//! Pressure (0x2A36) and Blood Pressure Feature (0x2A49).
//! Decoding never panics; whatever decodes serializes, re-encodes and decodes again to the
//! same value (less the quirks encoding drops). The first byte picks the characteristic
//! (index in `common::BLOOD_PRESSURE`, modulo its length), the rest is the value.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O blood_pressure -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::one_of(common::BLOOD_PRESSURE, data));
