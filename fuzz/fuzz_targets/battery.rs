//! Fuzzes `codec::battery`: Battery Level (0x2A19).
//! Decoding never panics; whatever decodes serializes, re-encodes and decodes again to the
//! same value (less the quirks encoding drops). The first byte picks the characteristic
//! (index in `common::BATTERY`, modulo its length), the rest is the value.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O battery -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::one_of(common::BATTERY, data));
