//! The admin endpoint's request head parser on any bytes: no panic, and a parsed head never
//! announces a body past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_cluster::node::admin::{parse_head, BODY_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = parse_head(data) {
        assert!(head.content_length <= BODY_BYTES_MAX);
    }
});
