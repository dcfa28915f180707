//! Fuzzes every GATT decoder: the first byte picks a supported characteristic, the rest is
//! the value. Whatever decodes must serialize, re-encode, and decode again to the same value
//! (less the quirks encoding drops).
//!
//! Run from `fuzz/` (works on the stable toolchain with `RUSTC_BOOTSTRAP=1`):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=60`. Seeding `corpus/decode/`
//! with the fixture vectors (selector byte = index in `codec::SUPPORTED`, then the value)
//! reaches deep fields faster.

#![no_main]

use gateway::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((selector, bytes)) = data.split_first() else {
        return;
    };
    let supported = codec::SUPPORTED;
    let Some((uuid16, _)) = supported.get(usize::from(*selector) % supported.len()) else {
        return;
    };
    if let Ok(decoded) = codec::decode(*uuid16, bytes) {
        let _ = serde_json::to_string(&decoded);
        let again = codec::encode(&decoded).expect("a decoded value re-encodes");
        let back = codec::decode(*uuid16, &again).expect("re-encoded bytes decode");
        assert_eq!(back.without_quirks(), decoded.without_quirks());
    }
});
