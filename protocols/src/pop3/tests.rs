use super::*;
use crate::sasl::ScramCredentials;

const MESSAGES: [&[u8]; 2] = [
    b"Subject: one\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n",
    b"Subject: two\r\n\r\nbody",
];

fn maildrop() -> AuthOutcome {
    AuthOutcome::Ok(
        MESSAGES
            .iter()
            .enumerate()
            .map(|(i, m)| MaildropEntry {
                uid: format!("uid{i}"),
                size: m.len() as u64,
            })
            .collect(),
    )
}

/// The stored SCRAM credentials of every user here (password "pw").
fn scram_pw() -> ScramCredentials {
    ScramCredentials::derive("pw", b"saltsaltsaltsalt", 4096)
}

/// Runs a script in chunks; the password is "pw"; returns output and the committed deletions.
fn drive(script: &[u8], chunk: usize) -> (String, Option<Vec<usize>>) {
    drive_with(Pop3Session::new(Pop3Limits::default()), script, chunk)
}

/// As [`drive`], with a session set up by the caller; a STLS handshake always succeeds.
fn drive_with(mut s: Pop3Session, script: &[u8], chunk: usize) -> (String, Option<Vec<usize>>) {
    let mut out = Vec::new();
    s.greeting(&mut out);
    let mut committed = None;
    'feed: for piece in script.chunks(chunk) {
        s.push(piece);
        loop {
            match s.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => break 'feed,
                Step::StartTls => s.tls_started(),
                Step::ScramCredentials { user } => {
                    let stored = (user == "a").then(scram_pw);
                    s.scram_credentials(stored, &[7; 32], &mut out);
                }
                Step::Open { .. } => s.authenticated(maildrop(), &mut out),
                Step::Authenticate { password, .. } => {
                    let outcome = if password == "pw" {
                        maildrop()
                    } else {
                        AuthOutcome::BadCredentials
                    };
                    s.authenticated(outcome, &mut out);
                }
                Step::Fetch { index, top } => {
                    s.fetched(index, top, Some(MESSAGES[index]), &mut out)
                }
                Step::Commit { delete } => {
                    committed = Some(delete);
                    s.committed(true, &mut out);
                }
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), committed)
}

const SCRIPT: &[u8] = b"STAT\r\nUSER a\r\nPASS wrong\r\nUSER a\r\nPASS pw\r\nSTAT\r\nUIDL\r\nRETR 1\r\nTOP 1 1\r\nDELE 2\r\nLIST\r\nRETR 2\r\nRSET\r\nDELE 1\r\nQUIT\r\n";

#[test]
fn any_chunking_gives_the_same_session() {
    let (expected, committed) = drive(SCRIPT, SCRIPT.len());
    assert_eq!(committed, Some(vec![0]));
    assert!(expected.contains("-ERR [AUTH] authenticate first"));
    assert!(expected.contains("-ERR [AUTH] invalid user name or password"));
    assert!(expected.contains("+OK maildrop has 2 messages"));
    assert!(expected.contains("1 uid0\r\n2 uid1\r\n.\r\n"));
    assert!(
        expected.contains("line 1\r\n..dot line\r\nline 3\r\n.\r\n"),
        "dot-stuffed RETR"
    );
    assert!(
        expected.contains("Subject: one\r\n\r\nline 1\r\n.\r\n"),
        "TOP 1 1"
    );
    assert!(expected.contains("+OK listing follows\r\n1 "));
    assert!(expected.contains("-ERR message already deleted"));
    for chunk in [1, 2, 3, 4, 8, 16, 64] {
        assert_eq!(
            drive(SCRIPT, chunk),
            (expected.clone(), committed.clone()),
            "chunk {chunk}"
        );
    }
}

#[test]
fn a_message_without_final_newline_is_terminated_properly() {
    let (out, _) = drive(b"USER a\r\nPASS pw\r\nRETR 2\r\nQUIT\r\n", 3);
    assert!(out.contains("Subject: two\r\n\r\nbody\r\n.\r\n"));
}

#[test]
fn dropping_before_quit_commits_nothing() {
    let (_, committed) = drive(b"USER a\r\nPASS pw\r\nDELE 1\r\n", 5);
    assert_eq!(committed, None);
}

mod garbage {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the session; every answer starts with +OK or -ERR or is
        /// part of a multi-line response; nothing is committed without a QUIT in the input.
        #[test]
        fn arbitrary_input_is_answered_not_panicked(
            bytes in proptest::collection::vec(any::<u8>(), 0..3000),
            chunk in 1usize..64,
        ) {
            let mut script = b"USER a\r\nPASS pw\r\n".to_vec();
            script.extend_from_slice(&bytes);
            let (out, committed) = drive(&script, chunk);
            prop_assert!(out.starts_with("+OK"));
            let has_quit = bytes.windows(4).any(|w| w.eq_ignore_ascii_case(b"QUIT"));
            prop_assert!(committed.is_none() || has_quit);
        }
    }
}

mod stuffing {
    use crate::pop3::write_stuffed;
    use proptest::prelude::*;

    /// RFC 1939 §3, line by line: a line starting with `.` gets one more; the response ends
    /// with CRLF (added if the message does not end a line) and `.` CRLF.
    fn reference(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !message.is_empty() && !message.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    proptest! {
        /// RETR's stuffing equals the line rule for any mix of dots, CRs, LFs and text.
        #[test]
        fn retr_stuffs_as_the_line_rule(
            message in proptest::collection::vec(prop::sample::select(vec![b'.', b'\r', b'\n', b'a']), 0..400),
        ) {
            let mut out = Vec::new();
            write_stuffed(&message, None, &mut out);
            prop_assert_eq!(out, reference(&message));
        }
    }
}

#[test]
fn errors_sent_counts_error_replies_not_body_lines_that_look_like_them() {
    let body: &[u8] = b"Subject: x\r\n\r\n-ERR not a reply\r\n-ERR nor this\r\n";
    let mut s = Pop3Session::new(Pop3Limits::default());
    let mut out = Vec::new();
    s.greeting(&mut out);
    s.push(b"STAT\r\nUSER a\r\nPASS wrong\r\nUSER a\r\nPASS pw\r\nRETR 1\r\nRETR 9\r\nQUIT\r\n");
    loop {
        match s.step(&mut out) {
            Step::NeedInput | Step::Close => break,
            Step::Authenticate { password, .. } => {
                let outcome = if password == "pw" {
                    AuthOutcome::Ok(vec![MaildropEntry {
                        uid: "u".into(),
                        size: body.len() as u64,
                    }])
                } else {
                    AuthOutcome::BadCredentials
                };
                s.authenticated(outcome, &mut out);
            }
            Step::Fetch { index, top } => s.fetched(index, top, Some(body), &mut out),
            Step::Commit { .. } => s.committed(true, &mut out),
            other => panic!("unexpected {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&out);
    let lines_like_errors = text.lines().filter(|l| l.starts_with("-ERR")).count();
    assert_eq!(lines_like_errors, 5, "{text}");
    // STAT before login, the wrong password, RETR 9.
    assert_eq!(s.errors_sent(), 3, "{text}");
}

#[test]
fn errors_sent_counts_the_closing_error_and_a_failed_commit() {
    let limits = Pop3Limits::default();
    let mut s = Pop3Session::new(limits.clone());
    let mut out = Vec::new();
    for _ in 0..limits.errors_max {
        s.push(b"NOPE\r\n");
        let _ = s.step(&mut out);
    }
    // Each bad command, then "too many errors, closing".
    assert_eq!(s.errors_sent(), u64::from(limits.errors_max) + 1);

    let mut s = Pop3Session::new(Pop3Limits::default());
    s.committed(false, &mut out);
    assert_eq!(s.errors_sent(), 1);
}

/// A session where passwords may not travel in clear and STLS is offered.
fn guarded() -> Pop3Session {
    let mut s = Pop3Session::new(Pop3Limits::default());
    s.set_security(Tls::Offered, Plaintext::Refused);
    s
}

#[test]
fn off_loopback_without_tls_no_password_is_taken_in_clear() {
    let (out, _) = drive_with(
        guarded(),
        b"CAPA\r\nUSER a\r\nPASS pw\r\nAUTH PLAIN AGEAcHc=\r\nSTAT\r\n",
        5,
    );
    let capa = out.split("+OK capability list follows\r\n").nth(1).unwrap();
    let capa = capa.split("\r\n.\r\n").next().unwrap();
    assert!(!capa.contains("USER"), "{capa}");
    assert!(capa.contains("SASL SCRAM-SHA-256"), "{capa}");
    assert!(capa.contains("STLS"), "{capa}");
    assert_eq!(out.matches("-ERR [PRIVACY]").count(), 3, "{out}");
    assert!(!out.contains("maildrop has"), "{out}");
}

#[test]
fn stls_discards_what_was_pipelined_in_clear_and_then_takes_passwords() {
    // "USER a" rides in the same segment as STLS: it must not be run after the handshake.
    let script = b"STLS\r\nUSER a\r\n";
    let mut s = guarded();
    let mut out = Vec::new();
    s.greeting(&mut out);
    s.push(script);
    assert_eq!(s.step(&mut out), Step::StartTls);
    s.tls_started();
    assert_eq!(s.step(&mut out), Step::NeedInput);
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.ends_with("+OK begin TLS negotiation\r\n"), "{text}");
    let (out, _) = drive_with(
        guarded(),
        b"STLS\r\nCAPA\r\nSTLS\r\nUSER a\r\nPASS pw\r\nQUIT\r\n",
        3,
    );
    let after = out.split("+OK begin TLS negotiation\r\n").nth(1).unwrap();
    assert!(
        after.contains("USER\r\nSASL PLAIN SCRAM-SHA-256\r\n"),
        "{after}"
    );
    assert!(!after.contains("STLS\r\n"), "{after}");
    assert!(after.contains("-ERR TLS is already active"), "{after}");
    assert!(after.contains("+OK maildrop has 2 messages"), "{after}");
}

#[test]
fn sasl_plain_with_and_without_an_initial_response() {
    // base64("\0a\0pw") = "AGEAcHc="; base64("b\0a\0pw") acts as b: refused.
    for script in [
        &b"AUTH PLAIN AGEAcHc=\r\nSTAT\r\n"[..],
        b"AUTH PLAIN\r\nAGEAcHc=\r\nSTAT\r\n",
    ] {
        for chunk in [1, 4, 64] {
            let (out, _) = drive(script, chunk);
            assert!(out.contains("+OK maildrop has 2 messages"), "{out}");
        }
    }
    let (out, _) = drive(
        b"AUTH PLAIN YgBhAHB3\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN !!\r\nAUTH X\r\n",
        2,
    );
    assert!(out.contains("acting as another user"), "{out}");
    assert!(out.contains("authentication cancelled"), "{out}");
    assert!(out.contains("invalid base64"), "{out}");
    assert!(out.contains("unsupported SASL mechanism"), "{out}");
    let (out, _) = drive(b"AUTH PLAIN AGEAd3Jvbmc=\r\n", 64);
    assert!(
        out.contains("-ERR [AUTH] invalid user name or password"),
        "{out}"
    );
}

/// A SCRAM-SHA-256 client, from RFC 5802's definitions, for the tests.
fn scram_client_final(password: &str, client_first_bare: &str, server_first: &str) -> String {
    use ring::{digest, hmac, pbkdf2};
    let field = |name: &str| {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix(name))
            .unwrap()
            .to_owned()
    };
    let salt = crate::sasl::base64_decode(&field("s=")).unwrap();
    let iterations: u32 = field("i=").parse().unwrap();
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored = digest::digest(&digest::SHA256, client_key.as_ref());
    let without_proof = format!("c=biws,r={}", field("r="));
    let auth = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, stored.as_ref()),
        auth.as_bytes(),
    );
    let proof: Vec<u8> = client_key
        .as_ref()
        .iter()
        .zip(signature.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    format!("{without_proof},p={}", crate::sasl::base64_encode(&proof))
}

/// Runs AUTH SCRAM-SHA-256 as `user` with `password` against a guarded session; the output.
fn scram_login(user: &str, password: &str) -> String {
    use crate::sasl::{base64_decode, base64_encode};
    let mut s = guarded();
    let mut out = Vec::new();
    s.greeting(&mut out);
    let bare = format!("n={user},r=clientnonce");
    s.push(
        format!(
            "AUTH SCRAM-SHA-256 {}\r\n",
            base64_encode(format!("n,,{bare}").as_bytes())
        )
        .as_bytes(),
    );
    let mut challenges = Vec::new();
    loop {
        match s.step(&mut out) {
            Step::ScramCredentials { user } => {
                s.scram_credentials((user == "a").then(scram_pw), &[9; 32], &mut out)
            }
            Step::Open { user } => {
                assert_eq!(user, "a");
                s.authenticated(maildrop(), &mut out);
            }
            Step::NeedInput | Step::Close => {
                let text = String::from_utf8_lossy(&out).into_owned();
                let last = text.lines().last().unwrap_or("").to_owned();
                match last.strip_prefix("+ ") {
                    Some(data) if challenges.is_empty() => {
                        let server_first = String::from_utf8(base64_decode(data).unwrap()).unwrap();
                        challenges.push(server_first.clone());
                        let reply = scram_client_final(password, &bare, &server_first);
                        s.push(format!("{}\r\n", base64_encode(reply.as_bytes())).as_bytes());
                    }
                    Some(data) if challenges.len() == 1 => {
                        challenges.push(String::from_utf8(base64_decode(data).unwrap()).unwrap());
                        s.push(b"\r\n");
                    }
                    _ => return text,
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn scram_sha_256_logs_in_without_the_password_crossing_even_in_clear() {
    let out = scram_login("a", "pw");
    assert!(out.contains("+OK maildrop has 2 messages"), "{out}");
    assert!(!out.contains("PRIVACY"), "{out}");
    // The server proved it holds the keys: its last challenge was v=…
    let finals: Vec<&str> = out.lines().filter(|l| l.starts_with("+ ")).collect();
    assert_eq!(finals.len(), 2, "{out}");
    let server_final = crate::sasl::base64_decode(&finals[1][2..]).unwrap();
    assert!(server_final.starts_with(b"v="), "{out}");
    for (user, password) in [("a", "wrong"), ("nobody", "pw")] {
        let out = scram_login(user, password);
        assert!(out.contains("-ERR [AUTH] authentication failed"), "{out}");
        assert!(!out.contains("maildrop has"), "{out}");
    }
}
