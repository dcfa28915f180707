//! Fuzzes `codec::ghs` (Generic Health Sensor): Live Health Observations (0x2B8B), Stored
//! Health Observations (0x2BDD), Health Sensor Features (0x2BF3), the GHS Control Point
//! (0x2BF4), Observation Schedule Changed (0x2BF1), and the values read after reassembly or
//! on the GHS RACP: a joined observation, a joined stored observation, a GHS RACP value.
//! Decoding never panics; whatever decodes re-encodes and decodes again to the same value
//! (RACP: to the same bytes). The first byte picks, modulo 8: 0..=4 the characteristics in
//! `common::GHS` order, 5 an observation, 6 a stored observation, 7 GHS RACP.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O ghs -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::one_of_or(
        common::GHS,
        &[
            common::observation,
            common::stored_observation,
            common::ghs_racp,
        ],
        data,
    )
});
