//! Fuzzes `codec::vitalograph`: the rest of the input (after the first byte) as one Lung
//! Monitor frame, and as a serial byte stream cut into chunks of 1..=24 bytes (the first
//! byte) for a `FrameReader`. Nothing panics, found frames are never longer than a result,
//! and a frame that decodes re-encodes to exactly its bytes.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O vitalograph -- -max_total_time=60`.

#![no_main]

#[path = "common.rs"]
mod common;

use gateway::codec::vitalograph::FrameReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    common::lung_monitor_frame(rest);
    let mut serial = FrameReader::default();
    for chunk in rest.chunks(usize::from(cut % 24) + 1) {
        common::serial_chunk(&mut serial, chunk);
    }
});
