//! Index checkpoints on any bytes: a damaged or forged checkpoint is refused (recovery then
//! scans the log), never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = porcupine_engine::checkpoint::decode(data);
});
