//! Fuzzes every GATT decoder: the first byte picks a supported characteristic, the rest is
//! the value. Whatever decodes must serialize, re-encode, and decode again to the same value
//! (less the quirks encoding drops). The per-module targets (`blood_pressure`, `ghs`, …) run
//! the same check (`common::characteristic`) on one module's characteristics each.
//!
//! Run from `fuzz/` (works on the stable toolchain with `RUSTC_BOOTSTRAP=1`):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=60`. Seeding `corpus/decode/`
//! with the fixture vectors (selector byte = index in `codec::SUPPORTED`, then the value)
//! reaches deep fields faster.

#![no_main]

#[path = "common.rs"]
mod common;

use gateway::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((i, bytes)) = common::select(data, codec::SUPPORTED.len()) {
        common::characteristic(codec::SUPPORTED[i].0, bytes);
    }
});
