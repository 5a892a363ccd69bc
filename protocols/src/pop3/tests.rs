use super::*;

const MESSAGES: [&[u8]; 2] = [
    b"Subject: one\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n",
    b"Subject: two\r\n\r\nbody",
];

/// Runs a script in chunks; the password is "pw"; returns output and the committed deletions.
fn drive(script: &[u8], chunk: usize) -> (String, Option<Vec<usize>>) {
    let mut s = Pop3Session::new(Pop3Limits::default());
    let mut out = Vec::new();
    s.greeting(&mut out);
    let mut committed = None;
    'feed: for piece in script.chunks(chunk) {
        s.push(piece);
        loop {
            match s.step(&mut out) {
                Step::NeedInput => break,
                Step::Close => break 'feed,
                Step::Authenticate { password, .. } => {
                    let outcome = if password == "pw" {
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
