//! Fuzzes `codec::segment`: the segmentation header and the joining of segments. The first
//! byte sets the cut length (1..=24), the value limit and the starting counter; the rest is
//! cut into notifications for a `Reassembler`, which never panics and never returns a value
//! over its limit, and every header byte decodes and re-encodes to itself. Then the rest is
//! split with `segment::split` and joined again: every segment is accepted and the last one
//! gives back exactly the value.
//!
//! Run from `fuzz/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O segment -- -max_total_time=60`.

#![no_main]

use gateway::codec::segment::{self, Reassembler, SegmentHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 24) + 1;

    let max = usize::from(cut);
    let mut joiner = Reassembler::new(max);
    for chunk in rest.chunks(step) {
        if let Some(&b) = chunk.first() {
            assert_eq!(SegmentHeader::from_u8(b).to_u8(), b);
        }
        if let Ok(Some(value)) = joiner.push(chunk) {
            assert!(value.len() <= max);
        }
    }

    let segments = segment::split(rest, step + 1, cut);
    let mut joiner = Reassembler::new(rest.len());
    for (i, s) in segments.iter().enumerate() {
        let out = joiner.push(s).expect("a segment from split joins");
        if i + 1 == segments.len() {
            assert_eq!(out.as_deref(), Some(rest));
        } else {
            assert_eq!(out, None);
        }
    }
});
