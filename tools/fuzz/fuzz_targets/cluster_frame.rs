//! Cluster frames on any bytes: the header and the CRC-checked payload decode or are refused,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_cluster::rpc::{OneWay, Request};
use porcupine_cluster::wire::{decode, decode_header, verify_payload, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some(header_bytes) = data.get(..HEADER_BYTES) else {
        return;
    };
    let Ok(header_bytes) = <[u8; HEADER_BYTES]>::try_from(header_bytes) else {
        return;
    };
    if let Ok(header) = decode_header(&header_bytes) {
        let payload = &data[HEADER_BYTES..];
        if verify_payload(&header_bytes, &header, payload).is_ok() {
            let _ = decode::<Request>(payload);
            let _ = decode::<OneWay>(payload);
        }
    }
});
