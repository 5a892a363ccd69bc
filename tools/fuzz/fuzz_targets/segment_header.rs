//! Segment headers on any bytes: parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_engine::segment::SegmentHeader;

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::parse(data, std::path::Path::new("fuzz.log"));
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = porcupine_engine::segment::parse_segment_name(name);
    }
});
