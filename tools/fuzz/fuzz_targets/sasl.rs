//! SASL pieces on any input: base64 round trips, PLAIN responses, and a SCRAM server fed
//! arbitrary client-first and client-final messages never panics nor accepts a made-up proof.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_protocols::sasl::{
    base64_decode, base64_encode, parse_plain, ScramCredentials, ScramServer,
};

fuzz_target!(|data: &[u8]| {
    assert_eq!(base64_decode(&base64_encode(data)).as_deref(), Some(data));
    let _ = parse_plain(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = base64_decode(text);
    let _ = ScramCredentials::from_text(text);
    let middle = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (first, last) = text.split_at(middle);
    if let Ok((mut server, _)) = ScramServer::start(first) {
        let credentials = ScramCredentials::derive("secret", b"saltsaltsaltsalt", 16);
        server.challenge(&credentials, b"nonce");
        assert!(server.finish(last, &credentials).is_err(), "a random proof was accepted");
    }
});
