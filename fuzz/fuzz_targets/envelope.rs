//! Any bytes on a readings topic: `Envelope::decode_from` either accepts them or says why,
//! never panics, and an accepted envelope re-encodes to something that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitals::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode_from("rpm/v1/gw/gw-1/readings", data) {
        let again = Envelope::decode(&envelope.encode()).expect("a decoded envelope re-encodes validly");
        assert_eq!(again, envelope);
    }
});
