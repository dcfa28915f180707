//! Fuzzes `codec::device_information`: the Device Information Service strings (0x2A29,
//! 0x2A24, 0x2A25, 0x2A27, 0x2A26, 0x2A28), System ID (0x2A23), Regulatory Certification Data
//! (0x2A2A) and PnP ID (0x2A50).
//! Decoding never panics; whatever decodes serializes, re-encodes and decodes again to the
//! same value (less the quirks encoding drops). The first byte picks the characteristic
//! (index in `common::DEVICE_INFORMATION`, modulo its length), the rest is the value.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O device_information -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::one_of(common::DEVICE_INFORMATION, data));
