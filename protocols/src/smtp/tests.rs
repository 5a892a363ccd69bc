use super::*;

fn session() -> SmtpSession {
    let limits = SmtpLimits {
        message_bytes_max: 1000,
        recipients_max: 3,
        errors_max: 5,
        ..SmtpLimits::default()
    };
    SmtpSession::new(limits, "mx.test", &["localhost".to_owned()])
}

/// Drives a session over `script` fed in chunks of `chunk` bytes; every local part starting
/// with "u" exists; deliveries succeed. Returns the output and the delivered envelopes.
fn drive(script: &[u8], chunk: usize) -> (String, Vec<Envelope>) {
    drive_with(session(), script, chunk)
}

/// As [`drive`], with a session set up by the caller; a STARTTLS handshake always succeeds.
fn drive_with(mut s: SmtpSession, script: &[u8], chunk: usize) -> (String, Vec<Envelope>) {
    let mut out = Vec::new();
    s.greeting(&mut out);
    let mut delivered = Vec::new();
    'feed: for piece in script.chunks(chunk) {
        s.push(piece);
        loop {
            match s.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => break 'feed,
                Step::CheckRecipient(m) => {
                    let check = if m.local.to_lowercase().starts_with('u') {
                        RecipientCheck::Local
                    } else {
                        RecipientCheck::Unknown
                    };
                    s.recipient_checked(check, &mut out);
                }
                Step::Deliver(envelope) => {
                    delivered.push(envelope);
                    s.delivered(DeliveryOutcome::Stored("X1".into()), &mut out);
                }
                Step::StartTls => s.tls_started(),
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), delivered)
}

fn codes(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| l[..3].to_owned())
        .collect()
}

const SCRIPT: &[u8] =
    b"EHLO client\r\nMAIL FROM:<a@b> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<u1@localhost>\r\n\
RCPT TO:<nobody@localhost>\r\nRCPT TO:<u2@other.org>\r\nRCPT TO:<U1@localhost>\r\nDATA\r\n\
..leading dot\r\n.\r\nQUIT\r\n";

#[test]
fn the_same_script_in_any_chunking_gives_the_same_result() {
    let (expected, envelopes) = drive(SCRIPT, SCRIPT.len());
    assert_eq!(
        codes(&expected),
        ["220", "250", "250", "250", "550", "550", "250", "354", "250", "221"]
    );
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].data, b".leading dot\r\n");
    for chunk in [1, 2, 3, 4, 8, 16, 64, 512] {
        let (output, again) = drive(SCRIPT, chunk);
        assert_eq!(output, expected, "chunk {chunk}");
        assert_eq!(again, envelopes, "chunk {chunk}");
    }
}

#[test]
fn data_is_stored_exactly_after_unstuffing() {
    let body: &[u8] = b"Subject: t\r\n\r\n..two dots\r\n.\r\nnot the end: a lone dot line was stuffed\r\n\xff\xfe 8-bit\r\n";
    let mut stuffed = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    let mut script = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n".to_vec();
    script.extend_from_slice(&stuffed);
    script.extend_from_slice(b".\r\nQUIT\r\n");
    for chunk in [1, 5, 4096] {
        let (_, envelopes) = drive(&script, chunk);
        assert_eq!(envelopes.len(), 1);
        assert_eq!(envelopes[0].data, body, "chunk {chunk}");
        assert_eq!(envelopes[0].from, "");
    }
}

#[test]
fn limits_and_order() {
    let (out, _) = drive(b"MAIL FROM:<a@b>\r\nEHLO x\r\nRCPT TO:<u@localhost>\r\nDATA\r\nMAIL FROM:<a@b> SIZE=5000\r\nQUIT\r\n", 7);
    assert_eq!(
        codes(&out),
        ["220", "503", "250", "503", "503", "552", "221"]
    );
    let (out, _) = drive(
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\nRCPT TO:<u2@localhost>\r\nRCPT TO:<u3@localhost>\r\nRCPT TO:<u4@localhost>\r\nQUIT\r\n",
        3,
    );
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "250", "452", "221"]
    );
    let mut big = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"0123456789\r\n".to_vec(), 200).flatten());
    big.extend_from_slice(b".\r\nQUIT\r\n");
    let (out, envelopes) = drive(&big, 100);
    assert!(envelopes.is_empty());
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "552", "221"]
    );
}

#[test]
fn garbage_long_lines_and_too_many_errors_close_the_connection() {
    let mut script = vec![b'A'; 10_000];
    script.extend_from_slice(
        b"\r\nNOOP\r\n\x00\x01\x02\r\nBOGUS\r\nBOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n",
    );
    let (out, _) = drive(&script, 1000);
    let c = codes(&out);
    assert_eq!(c[..3], ["220", "500", "250"]);
    assert_eq!(c.last().map(String::as_str), Some("421"));
    assert!(
        !c[3..].contains(&"250".to_owned()),
        "nothing is served after 421: {c:?}"
    );
}

#[test]
fn bare_lf_dot_does_not_end_data() {
    // SMTP smuggling: "\n.\r\n" must not end the message.
    let script = b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@localhost>\r\nDATA\r\nx\n.\r\nMAIL FROM:<evil@x>\r\n\r\n.\r\nQUIT\r\n";
    let (_, envelopes) = drive(script, 4);
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].data, b"x\n.\r\nMAIL FROM:<evil@x>\r\n\r\n");
}

mod garbage {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes in arbitrary chunks never panic the session, every reply line is a
        /// well-formed code, and nothing is delivered without a DATA command in the input.
        #[test]
        fn arbitrary_input_is_answered_not_panicked(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            chunk in 1usize..64,
        ) {
            let (text, envelopes) = drive(&bytes, chunk);
            let delivered = !envelopes.is_empty();
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                prop_assert!(line.len() >= 4 && line[..3].bytes().all(|b| b.is_ascii_digit()), "bad reply line {line:?}");
            }
            let has_data = bytes.windows(4).any(|w| w.eq_ignore_ascii_case(b"DATA"));
            prop_assert!(!delivered || has_data);
        }
    }
}

mod data_transparency {
    use super::*;
    use proptest::prelude::*;

    /// The DATA rule of RFC 5321 §4.5.2, line by line: after a CRLF (or at the start), ".\r\n"
    /// ends the message and a leading dot is dropped; a bare LF starts no line. Returns the
    /// message and the bytes left after the terminator, or `None` if none was found.
    fn reference(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
        let mut data = Vec::new();
        let mut at_line_start = true;
        let mut rest = input;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..=end];
            rest = &rest[end + 1..];
            if at_line_start && line == b".\r\n" {
                return Some((data, rest));
            }
            let skip = usize::from(at_line_start && line.first() == Some(&b'.'));
            data.extend_from_slice(&line[skip..]);
            at_line_start = line.ends_with(b"\r\n");
        }
        None
    }

    proptest! {
        /// The session's DATA scanner gives the same message as the line-by-line rule for any
        /// mix of dots, CRs, LFs and text, in any chunking.
        #[test]
        fn data_is_what_the_line_rule_gives(
            body in proptest::collection::vec(prop::sample::select(vec![b'.', b'\r', b'\n', b'a']), 0..400),
            chunk in 1usize..40,
        ) {
            let mut script = b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@localhost>\r\nDATA\r\n".to_vec();
            script.extend_from_slice(&body);
            script.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let data_at = script.len() - body.len() - b"\r\n.\r\nQUIT\r\n".len();
            let (expected, _) = reference(&script[data_at..]).expect("the script ends the message");
            let (_, envelopes) = drive(&script, chunk);
            prop_assert_eq!(envelopes.len(), 1);
            prop_assert_eq!(&envelopes[0].data, &expected);
        }
    }
}

/// A `BDAT` command followed by its chunk.
fn bdat(chunk: &[u8], last: bool) -> Vec<u8> {
    let mut out = format!(
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(chunk);
    out
}

const BDAT_BODY_1: &[u8] = b"Subject: c\r\n\r\n.a line with a dot\r\nand no final CRLF";

fn bdat_script() -> Vec<u8> {
    let mut script = b"EHLO client\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\n".to_vec();
    // Chunks carry any bytes, CRLF.CRLF and command-like text included, and are not unstuffed.
    script.extend(bdat(&BDAT_BODY_1[..10], false));
    script.extend(bdat(&BDAT_BODY_1[10..], false));
    script.extend(bdat(b"\r\n.\r\nQUIT\r\n", true));
    // A message in one pipelined group, then one with DATA: both still work.
    script.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<u2@localhost>\r\n");
    script.extend(bdat(b"x", true));
    script.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<u2@localhost>\r\nDATA\r\ny\r\n.\r\n");
    script.extend_from_slice(b"QUIT\r\n");
    script
}

#[test]
fn bdat_chunks_are_joined_exactly_in_any_chunking() {
    let script = bdat_script();
    let (expected, envelopes) = drive(&script, script.len());
    assert!(expected.contains("250-CHUNKING\r\n"), "{expected}");
    assert_eq!(
        codes(&expected),
        [
            "220", "250", "250", "250", "250", "250", "250", "250", "250", "250", "250", "250",
            "354", "250", "221"
        ],
        "{expected}"
    );
    let bodies: Vec<&[u8]> = envelopes.iter().map(|e| e.data.as_slice()).collect();
    let mut first = BDAT_BODY_1.to_vec();
    first.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    assert_eq!(bodies, [first.as_slice(), b"x", b"y\r\n"]);
    for chunk in [1, 2, 3, 7, 16] {
        let (out, again) = drive(&script, chunk);
        assert_eq!(out, expected, "chunk {chunk}");
        assert_eq!(again, envelopes, "chunk {chunk}");
    }
}

#[test]
fn a_refused_bdat_still_consumes_its_chunk() {
    let mut script = b"EHLO client\r\n".to_vec();
    // No MAIL: 503, and the chunk (which looks like a command) is not run as one.
    script.extend(bdat(b"QUIT\r\n", true));
    // MAIL, but the only recipient is unknown: 554 after the chunk.
    script.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<nobody@localhost>\r\n");
    script.extend(bdat(b"RSET\r\n", true));
    // DATA after a chunk of this transaction: 503; the transaction goes on by BDAT.
    script.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\n");
    script.extend(bdat(b"part", false));
    script.extend_from_slice(b"DATA\r\n");
    script.extend(bdat(b"s", true));
    script.extend_from_slice(b"QUIT\r\n");
    let (out, envelopes) = drive(&script, 5);
    assert_eq!(
        codes(&out),
        ["220", "250", "503", "250", "550", "554", "250", "250", "250", "503", "250", "221"],
        "{out}"
    );
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].data, b"parts");
}

#[test]
fn bdat_over_the_size_limit_is_refused_at_last_and_the_session_goes_on() {
    // The limit in these tests is 1000 bytes.
    let mut script = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\n".to_vec();
    script.extend(bdat(&[b'a'; 600], false));
    script.extend(bdat(&[b'b'; 600], true));
    script.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\n");
    script.extend(bdat(b"fits", true));
    let (out, envelopes) = drive(&script, 64);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "552", "250", "250", "250"],
        "{out}"
    );
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].data, b"fits");
}

#[test]
fn an_unreadable_bdat_size_closes_the_session() {
    for command in [
        "BDAT\r\n",
        "BDAT x LAST\r\n",
        "BDAT -1\r\n",
        "BDAT 5 FIRST\r\n",
        "BDAT 5 LAST more\r\n",
    ] {
        let script = format!(
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\n{command}12345NOOP\r\n"
        );
        let (out, envelopes) = drive(script.as_bytes(), 3);
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "501", "421"],
            "{command}: {out}"
        );
        assert!(envelopes.is_empty());
    }
}

fn session_offering_tls() -> SmtpSession {
    let mut s = session();
    s.set_tls(Tls::Offered);
    s
}

#[test]
fn starttls_starts_over_and_what_was_pipelined_in_clear_is_never_run() {
    let mut s = session();
    s.set_tls(Tls::Offered);
    let mut out = Vec::new();
    s.greeting(&mut out);
    // The injection of CVE-2011-0411: a command slipped in after STARTTLS, in clear.
    s.push(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n");
    assert_eq!(s.step(&mut out), Step::StartTls);
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains("250-STARTTLS\r\n"), "{text}");
    assert!(text.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{text}");
    s.tls_started();
    out.clear();
    assert_eq!(s.step(&mut out), Step::NeedInput);
    assert!(
        out.is_empty(),
        "the pipelined MAIL was run: {:?}",
        String::from_utf8_lossy(&out)
    );
    // In clear up to STARTTLS, then (after the handshake) what the client sends over TLS.
    let (clear, secure) = (
        &b"EHLO c\r\nSTARTTLS\r\n"[..],
        &b"MAIL FROM:<a@b>\r\nEHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"[..],
    );
    for chunk in [1, 3, 17, secure.len()] {
        let mut s = session();
        s.set_tls(Tls::Offered);
        // Fed so that no chunk straddles the handshake, as a client must wait for the 220.
        let (first, _) = drive_with(session_offering_tls(), clear, chunk);
        assert!(
            first.ends_with("220 2.0.0 Ready to start TLS\r\n"),
            "{first}"
        );
        let mut out = Vec::new();
        s.greeting(&mut out);
        let mut delivered = Vec::new();
        for (part, piece) in [clear, secure].into_iter().enumerate() {
            for bytes in piece.chunks(chunk) {
                s.push(bytes);
                loop {
                    match s.step(&mut out) {
                        Step::NeedInput | Step::Close => break,
                        Step::StartTls if part == 0 => s.tls_started(),
                        Step::StartTls => panic!("a second STARTTLS was accepted"),
                        Step::CheckRecipient(_) => {
                            s.recipient_checked(RecipientCheck::Local, &mut out)
                        }
                        Step::Deliver(envelope) => {
                            delivered.push(envelope);
                            s.delivered(DeliveryOutcome::Stored("X".into()), &mut out);
                        }
                    }
                }
            }
        }
        let out = String::from_utf8_lossy(&out).into_owned();
        let after = out
            .split("220 2.0.0 Ready to start TLS\r\n")
            .nth(1)
            .unwrap();
        // After the handshake the session starts over: EHLO again, and it lists no STARTTLS.
        assert!(after.starts_with("503 5.5.1"), "chunk {chunk}: {after}");
        assert!(!after.contains("STARTTLS"), "chunk {chunk}: {after}");
        assert!(
            after.contains("503 5.5.1 TLS is already active"),
            "chunk {chunk}: {after}"
        );
        assert_eq!(delivered.len(), 1);
        assert!(delivered[0].tls);
    }
    let (out, delivered) = drive(
        b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\nDATA\r\nhi\r\n.\r\n",
        64,
    );
    assert!(!out.contains("STARTTLS"), "{out}");
    assert!(out.contains("454 4.7.0 TLS not available"), "{out}");
    assert!(!delivered[0].tls);
}

fn lmtp_session() -> SmtpSession {
    let limits = SmtpLimits {
        message_bytes_max: 1000,
        recipients_max: 3,
        errors_max: 5,
        ..SmtpLimits::default()
    };
    SmtpSession::with_dialect(Dialect::Lmtp, limits, "mx.test", &["localhost".to_owned()])
}

/// Drives an LMTP session; deliveries to local parts starting with "ufail" fail, others succeed.
fn drive_lmtp(script: &[u8], chunk: usize) -> (String, Vec<Envelope>) {
    let mut s = lmtp_session();
    let mut out = Vec::new();
    s.greeting(&mut out);
    let mut delivered = Vec::new();
    'feed: for piece in script.chunks(chunk) {
        s.push(piece);
        loop {
            match s.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => break 'feed,
                Step::CheckRecipient(m) => {
                    // "ufull" is at its quota: refused at RCPT when MAIL declared a size.
                    let check = if m.local.starts_with("ufull") && s.declared_size().is_some() {
                        RecipientCheck::OverQuota
                    } else if m.local.starts_with('u') {
                        RecipientCheck::Local
                    } else {
                        RecipientCheck::Unknown
                    };
                    s.recipient_checked(check, &mut out);
                }
                Step::Deliver(envelope) => {
                    let outcomes: Vec<DeliveryOutcome> = envelope
                        .recipients
                        .iter()
                        .map(|r| {
                            if r.local.starts_with("ufail") {
                                DeliveryOutcome::Failed
                            } else if r.local.starts_with("ufull") {
                                DeliveryOutcome::OverQuota
                            } else if r.local.starts_with("ugone") {
                                DeliveryOutcome::NoSuchUser
                            } else {
                                DeliveryOutcome::Stored("X1".into())
                            }
                        })
                        .collect();
                    let recipients = envelope.recipients.clone();
                    delivered.push(envelope);
                    s.delivered_each(&recipients, &outcomes, &mut out);
                }
                Step::StartTls => s.tls_started(),
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), delivered)
}

#[test]
fn lmtp_replies_once_per_recipient_after_the_data() {
    let script = b"EHLO c\r\nLHLO client\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\n\
RCPT TO:<nobody@localhost>\r\nRCPT TO:<ufail@localhost>\r\nRCPT TO:<u2@localhost>\r\nDATA\r\n\
hello\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u3@localhost>\r\nBDAT 5 LAST\r\nhelloQUIT\r\n";
    let (expected, envelopes) = drive_lmtp(script, script.len());
    for chunk in [1, 2, 7, 64] {
        assert_eq!(drive_lmtp(script, chunk).0, expected, "chunk {chunk}");
    }
    assert!(expected.starts_with("220 mx.test LMTP"), "{expected}");
    // EHLO is not LMTP; LHLO offers what EHLO does, STARTTLS aside.
    assert_eq!(
        codes(&expected)[..4],
        ["220", "500", "250", "250"],
        "{expected}"
    );
    assert!(expected.contains("250-PIPELINING\r\n"), "{expected}");
    assert!(expected.contains("250-CHUNKING\r\n"), "{expected}");
    assert!(!expected.contains("STARTTLS"), "{expected}");
    // The unknown recipient is refused alone at RCPT; after the data, one reply for each of
    // the three accepted, in order: the failed copy is a 451 for that recipient only.
    assert!(expected.contains("550 5.1.1"), "{expected}");
    assert!(
        expected.contains(
            "354 Start mail input; end with <CRLF>.<CRLF>\r\n\
250 2.0.0 <u1@localhost> Ok: delivered as X1\r\n\
451 4.3.0 <ufail@localhost> Local error in processing, try again later\r\n\
250 2.0.0 <u2@localhost> Ok: delivered as X1\r\n"
        ),
        "{expected}"
    );
    assert!(
        expected.contains("250 2.0.0 <u3@localhost> Ok: delivered as X1\r\n221"),
        "{expected}"
    );
    assert_eq!(envelopes.len(), 2);
    assert_eq!(envelopes[0].recipients.len(), 3);
    assert_eq!(envelopes[0].data, b"hello\r\n");
    assert_eq!(envelopes[1].data, b"hello");
}

#[test]
fn lmtp_refuses_an_oversized_message_once_per_recipient() {
    let big = "x".repeat(1100);
    let script = format!(
        "LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\nRCPT TO:<u2@localhost>\r\nDATA\r\n{big}\r\n.\r\nNOOP\r\n"
    );
    let (out, envelopes) = drive_lmtp(script.as_bytes(), 13);
    assert!(envelopes.is_empty());
    assert_eq!(out.matches("552 5.3.4").count(), 2, "{out}");
    assert!(out.ends_with("250 2.0.0 Ok\r\n"), "{out}");
    // SMTP still has one reply per message, and no LHLO.
    let (out, _) = drive(b"LHLO c\r\n", 64);
    assert!(out.contains("500 5.5.2"), "{out}");
}

#[test]
fn received_names_the_protocol() {
    let header = received_header(
        "c",
        "127.0.0.1:5",
        "mx",
        Dialect::Lmtp.received_with(false),
        "X",
        "d",
    );
    assert!(header.contains("with LMTP id X"), "{header}");
    assert_eq!(Dialect::Smtp.received_with(true), "ESMTPS");
}

#[test]
fn a_full_mailbox_is_refused_alone_at_rcpt_and_after_the_data() {
    // MAIL declared a size: the full mailbox is refused at RCPT, the others go on.
    let script = b"LHLO c\r\nMAIL FROM:<a@b> SIZE=10\r\nRCPT TO:<ufull@localhost>\r\n\
RCPT TO:<u1@localhost>\r\nDATA\r\nhi\r\n.\r\n\
MAIL FROM:<a@b>\r\nRCPT TO:<ufull@localhost>\r\nRCPT TO:<ugone@localhost>\r\n\
RCPT TO:<u2@localhost>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n";
    let (out, envelopes) = drive_lmtp(script, 9);
    assert!(
        out.contains("552 5.2.2 <ufull@localhost> Mailbox full: over quota\r\n250 2.1.5"),
        "{out}"
    );
    assert_eq!(envelopes[0].recipients.len(), 1);
    // Without SIZE it is found at the end of the data, for that recipient only.
    assert!(
        out.contains(
            "552 5.2.2 <ufull@localhost> Mailbox full: over quota\r\n\
550 5.1.1 <ugone@localhost> No such user here\r\n\
250 2.0.0 <u2@localhost> Ok: delivered as X1\r\n"
        ),
        "{out}"
    );
    // SMTP answers for the whole message with the worst: a temporary failure first.
    let mut s = session();
    let mut out = Vec::new();
    s.push(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1@localhost>\r\nDATA\r\nx\r\n.\r\n");
    loop {
        match s.step(&mut out) {
            Step::CheckRecipient(_) => s.recipient_checked(RecipientCheck::Local, &mut out),
            Step::Deliver(envelope) => {
                s.delivered_each(
                    &envelope.recipients,
                    &[DeliveryOutcome::NoSuchUser, DeliveryOutcome::OverQuota],
                    &mut out,
                );
                break;
            }
            _ => break,
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.ends_with("552 5.2.2 Mailbox full: over quota\r\n"),
        "{out}"
    );
}
