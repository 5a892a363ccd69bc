//! Log records on any bytes: the header check and the decoder refuse or decode, never panic;
//! a put's annex (an IMAP message description) and any bytes as one are read or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_engine::record::{check_header, decode, decode_retired};
use porcupine_protocols::imap::structure::Described;

fuzz_target!(|data: &[u8]| {
    let _ = check_header(data);
    if let Ok(view) = decode(data) {
        let _ = decode_retired(view.body).count();
        let _ = Described::decode(view.annex);
    }
    let _ = decode_retired(data).count();
    let _ = Described::decode(data);
});
