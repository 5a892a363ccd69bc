//! The `porcupine serve --config` TOML file on any text: parsed into the serve settings or
//! refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = porcupine_tools::serve_config::parse(text);
    }
});
