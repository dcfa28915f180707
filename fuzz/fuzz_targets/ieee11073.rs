//! Fuzzes `codec::ieee11073`: the input read as little-endian SFLOATs (every two bytes) and
//! FLOATs (every four). Decoding never fails or panics, formatting never panics, and every
//! decoded number re-encodes to bits that decode to the same number.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O ieee11073 -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for c in data.chunks_exact(2) {
        common::sfloat(u16::from_le_bytes([c[0], c[1]]));
    }
    for c in data.chunks_exact(4) {
        common::float(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
});
