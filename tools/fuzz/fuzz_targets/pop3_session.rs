//! The POP3 session on any bytes, in any chunking, with STLS, SASL PLAIN and SCRAM steps
//! answered: it must never panic, and it commits deletions only of messages it listed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_protocols::pop3::{
    AuthOutcome, MaildropEntry, Plaintext, Pop3Limits, Pop3Session, Step, Tls,
};
use porcupine_protocols::sasl::ScramCredentials;

const MESSAGES: [&[u8]; 3] = [b"Subject: a\r\n\r\n.dot\r\nline\r\n", b"x", b""];

fuzz_target!(|data: &[u8]| {
    let Some((&control, script)) = data.split_first() else {
        return;
    };
    let mut session = Pop3Session::new(Pop3Limits::default());
    let plaintext = if control & 1 == 0 { Plaintext::Allowed } else { Plaintext::Refused };
    session.set_security(Tls::Offered, plaintext);
    let mut out = Vec::new();
    session.greeting(&mut out);
    let chunk = usize::from(control >> 1).max(1);
    let scram = ScramCredentials::derive("pw", b"0123456789abcdef", 64);
    for piece in script.chunks(chunk) {
        session.push(piece);
        loop {
            match session.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => return,
                Step::StartTls => session.tls_started(),
                Step::ScramCredentials { .. } => {
                    session.scram_credentials(Some(scram.clone()), &[3; 32], &mut out)
                }
                Step::Authenticate { password, .. } if password != "pw" => {
                    session.authenticated(AuthOutcome::BadCredentials, &mut out)
                }
                Step::Authenticate { .. } | Step::Open { .. } => {
                    let entries = MESSAGES
                        .iter()
                        .enumerate()
                        .map(|(i, m)| MaildropEntry {
                            uid: format!("u{i}"),
                            size: m.len() as u64,
                        })
                        .collect();
                    session.authenticated(AuthOutcome::Ok(entries), &mut out);
                }
                Step::Fetch { index, top } => {
                    let message = MESSAGES.get(index).copied();
                    session.fetched(index, top, message, &mut out);
                }
                Step::Commit { delete } => {
                    assert!(delete.iter().all(|&i| i < MESSAGES.len()));
                    session.committed(true, &mut out);
                }
            }
        }
        out.clear();
    }
});
