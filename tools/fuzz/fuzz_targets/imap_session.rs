//! The IMAP session on any bytes, in any chunking, against an in-memory mailbox store that
//! answers every step (with STARTTLS, AUTHENTICATE, IDLE, literals and LITERAL+): it must never
//! panic, never loop, and never answer more than it was asked plus its greeting.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_protocols::imap::memory_store::MemoryStore;
use porcupine_protocols::imap::session::{Plaintext, Tls};
use porcupine_protocols::imap::{ImapLimits, ImapSession, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&control, script)) = data.split_first() else {
        return;
    };
    let mut store = MemoryStore::new();
    let mut session = ImapSession::new(ImapLimits::default());
    let plaintext = if control & 1 == 0 {
        Plaintext::Allowed
    } else {
        Plaintext::Refused
    };
    session.set_security(Tls::Offered, plaintext);
    let mut out = Vec::new();
    session.greeting(&mut out);
    let chunk = usize::from(control >> 1).max(1);
    for piece in script.chunks(chunk) {
        session.push(piece);
        // Each step answers something or consumes input: a bound catches a session that spins.
        for _ in 0..100_000 {
            let mut step = session.step(&mut out);
            let mut answered = 0;
            while !matches!(step, Step::NeedInput | Step::Close | Step::StartTls) {
                answered += 1;
                assert!(answered < 100_000, "the session asks for ever");
                match store.answer(&mut session, step, &mut out) {
                    Some(next) => step = next,
                    None => step = session.step(&mut out),
                }
            }
            match step {
                Step::NeedInput => break,
                Step::Close => return,
                Step::StartTls => session.tls_started(),
                _ => {}
            }
        }
        // Output is taken by the edge as it goes.
        out.clear();
    }
});
