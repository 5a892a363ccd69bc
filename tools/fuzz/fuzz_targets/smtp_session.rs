//! The SMTP session, and its LMTP dialect, on any bytes, fed in chunks the input chooses, every
//! request answered (recipients known or not, deliveries stored or failed, per recipient in
//! LMTP, STARTTLS completing): it must never panic, and what it delivers must be within the
//! size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_protocols::smtp::{
    Dialect, DeliveryOutcome, RecipientCheck, SmtpLimits, SmtpSession, Step, Tls,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, script)) = data.split_first() else {
        return;
    };
    let limits = SmtpLimits {
        message_bytes_max: 4096,
        ..SmtpLimits::default()
    };
    let max = limits.message_bytes_max;
    let dialect = if control & 0x80 == 0 { Dialect::Smtp } else { Dialect::Lmtp };
    let mut session =
        SmtpSession::with_dialect(dialect, limits, "mx.fuzz", &["localhost".to_owned()]);
    session.set_tls(if control & 1 == 0 { Tls::Offered } else { Tls::Unavailable });
    let mut out = Vec::new();
    session.greeting(&mut out);
    let chunk = usize::from(control >> 1).max(1);
    let mut answers = control;
    for piece in script.chunks(chunk) {
        session.push(piece);
        loop {
            answers = answers.rotate_left(1);
            match session.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => return,
                Step::CheckRecipient(_) => {
                    let check = match answers & 3 {
                        0 | 1 => RecipientCheck::Local,
                        2 => RecipientCheck::Unknown,
                        _ => RecipientCheck::OverQuota,
                    };
                    session.recipient_checked(check, &mut out);
                }
                Step::Deliver(envelope) => {
                    assert!(envelope.data.len() <= max, "a message over the limit was delivered");
                    let outcomes: Vec<DeliveryOutcome> = (0..envelope.recipients.len())
                        .map(|i| match (answers >> (i % 8)) & 6 {
                            0 => DeliveryOutcome::Stored("id".into()),
                            2 => DeliveryOutcome::Failed,
                            4 => DeliveryOutcome::OverQuota,
                            _ => DeliveryOutcome::NoSuchUser,
                        })
                        .collect();
                    session.delivered_each(&envelope.recipients, &outcomes, &mut out);
                }
                Step::StartTls => session.tls_started(),
            }
            if answers & 4 == 0 {
                session.refuse_for_memory();
            }
        }
        out.clear();
    }
});
