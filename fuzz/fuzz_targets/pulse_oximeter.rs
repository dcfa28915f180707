//! Fuzzes `codec::pulse_oximeter`: PLX Spot-Check Measurement (0x2A5E), PLX Continuous
//! Measurement (0x2A5F) and PLX Features (0x2A60).
//! Decoding never panics; whatever decodes serializes, re-encodes and decodes again to the
//! same value (less the quirks encoding drops). The first byte picks the characteristic
//! (index in `common::PULSE_OXIMETER`, modulo its length), the rest is the value.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O pulse_oximeter -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::one_of(common::PULSE_OXIMETER, data));
