//! The session driven through scripts against a small in-memory mailbox store that answers its
//! steps, fed in chunks of every size.

use super::*;
use crate::imap::memory_store::MemoryStore as Store;

/// Runs `script` through a session fed in `chunk`-byte pieces; returns all output.
fn run(store: &mut Store, script: &[u8], chunk: usize) -> String {
    let mut session = ImapSession::new(ImapLimits::default());
    let mut out = Vec::new();
    session.greeting(&mut out);
    for piece in script.chunks(chunk.max(1)) {
        session.push(piece);
        loop {
            let mut step = session.step(&mut out);
            while !matches!(step, Step::NeedInput | Step::Close | Step::StartTls) {
                match store.answer(&mut session, step, &mut out) {
                    Some(next) => step = next,
                    None => step = session.step(&mut out),
                }
            }
            if matches!(step, Step::NeedInput | Step::Close | Step::StartTls) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn run_all(script: &str) -> String {
    let mut reference = None;
    for chunk in [1, 2, 3, 5, 8, 64, 512, 100_000] {
        let mut store = Store::new();
        let output = run(&mut store, script.as_bytes(), chunk);
        match &reference {
            None => reference = Some(output),
            Some(r) => assert_eq!(&output, r, "chunk {chunk} answers differently"),
        }
    }
    reference.unwrap_or_default()
}

#[test]
fn login_select_fetch_in_any_chunking() {
    let out = run_all(
        "a1 CAPABILITY\r\na2 LOGIN alice secret\r\na3 SELECT inbox\r\na4 FETCH 1:* (UID FLAGS RFC822.SIZE)\r\na5 UID FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY[TEXT])\r\na6 LOGOUT\r\n",
    );
    assert!(out.starts_with("* OK [CAPABILITY IMAP4rev1 "), "{out}");
    assert!(out.contains("a2 OK [CAPABILITY"), "{out}");
    assert!(out.contains("* 3 EXISTS\r\n"), "{out}");
    assert!(out.contains("* OK [UIDVALIDITY 7]"), "{out}");
    assert!(out.contains("* OK [UIDNEXT 4]"), "{out}");
    assert!(out.contains("* OK [UNSEEN 1]"), "{out}");
    assert!(out.contains("a3 OK [READ-WRITE] SELECT completed"), "{out}");
    assert!(
        out.contains("* 1 FETCH (UID 1 FLAGS () RFC822.SIZE 88)"),
        "{out}"
    );
    assert!(
        out.contains("* 2 FETCH (UID 2 FLAGS (\\Seen) RFC822.SIZE"),
        "{out}"
    );
    assert!(
        out.contains("* 2 FETCH (UID 2 BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: second\r\n\r\n BODY[TEXT] {14}\r\nanother body\r\n)"),
        "{out}"
    );
    assert!(out.contains("* BYE"), "{out}");
    assert!(out.ends_with("a6 OK LOGOUT completed\r\n"), "{out}");
}

#[test]
fn a_body_fetch_sets_seen_and_reports_it() {
    let out =
        run_all("a LOGIN u secret\r\nb SELECT INBOX\r\nc FETCH 1 BODY[]\r\nd FETCH 1 FLAGS\r\n");
    assert!(out.contains("* 1 FETCH (BODY[] {88}\r\n"), "{out}");
    assert!(out.contains(" FLAGS (\\Seen))\r\nc OK"), "{out}");
    assert!(out.contains("* 1 FETCH (FLAGS (\\Seen))\r\nd OK"), "{out}");
}

#[test]
fn store_search_expunge() {
    let out = run_all(
        "a LOGIN u secret\r\nb SELECT INBOX\r\nc STORE 1 +FLAGS (\\Deleted)\r\nd SEARCH DELETED\r\ne SEARCH OR SUBJECT second FLAGGED\r\nf UID SEARCH TEXT \"hello WORLD\"\r\ng EXPUNGE\r\nh FETCH 1:* UID\r\ni SEARCH RETURN (MIN MAX COUNT) ALL\r\n",
    );
    assert!(
        out.contains("* 1 FETCH (FLAGS (\\Deleted))\r\nc OK"),
        "{out}"
    );
    assert!(out.contains("* SEARCH 1\r\nd OK"), "{out}");
    assert!(out.contains("* SEARCH 2 3\r\ne OK"), "{out}");
    assert!(out.contains("* SEARCH 1\r\nf OK"), "{out}");
    assert!(out.contains("* 1 EXPUNGE\r\ng OK"), "{out}");
    assert!(
        out.contains("* 1 FETCH (UID 2)\r\n* 2 FETCH (UID 3)\r\nh OK"),
        "{out}"
    );
    assert!(
        out.contains("* ESEARCH (TAG \"i\") MIN 1 MAX 2 COUNT 2\r\n"),
        "{out}"
    );
}

#[test]
fn structure_and_envelope() {
    let out = run_all("a LOGIN u secret\r\nb EXAMINE INBOX\r\nc FETCH 3 (BODYSTRUCTURE BODY.PEEK[2])\r\nd FETCH 1 ENVELOPE\r\n");
    assert!(out.contains("b OK [READ-ONLY]"), "{out}");
    assert!(out.contains("BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 8 1 NIL NIL NIL NIL)(\"TEXT\" \"HTML\" NIL NIL NIL \"7BIT\" 10 1 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"q\") NIL NIL NIL)"), "{out}");
    assert!(out.contains("BODY[2] {10}\r\n<b>two</b>)"), "{out}");
    assert!(
        out.contains(
            "ENVELOPE (\"Tue, 1 Jul 2003 10:52:37 +0200\" \"first\" ((\"A\" NIL \"a\" \"x.org\"))"
        ),
        "{out}"
    );
}

#[test]
fn append_copy_move_and_uidplus() {
    let out = run_all(
        "a LOGIN u secret\r\nb APPEND Sent (\\Seen) {11}\r\nhello there\r\nc APPEND Nowhere {1+}\r\nx\r\nd SELECT INBOX\r\ne COPY 1:2 Sent\r\nf UID MOVE 3 Sent\r\ng STATUS Sent (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)\r\n",
    );
    assert!(out.contains("+ go ahead\r\n"), "{out}");
    assert!(
        out.contains("b OK [APPENDUID 8 1] APPEND completed"),
        "{out}"
    );
    assert!(out.contains("c NO [TRYCREATE]"), "{out}");
    assert!(
        out.contains("e OK [COPYUID 8 1,2 2,3] COPY completed"),
        "{out}"
    );
    assert!(
        out.contains("* OK [COPYUID 8 3 4] moved\r\n* 3 EXPUNGE\r\nf OK MOVE completed"),
        "{out}"
    );
    assert!(
        out.contains("* STATUS \"Sent\" (MESSAGES 4 UIDNEXT 5 UIDVALIDITY 8 UNSEEN 2)"),
        "{out}"
    );
}

#[test]
fn append_and_copy_into_the_selected_mailbox_announce_the_new_message() {
    let out = run_all(
        "a LOGIN u secret\r\nb SELECT INBOX\r\nc APPEND INBOX {5}\r\nhello\r\nd COPY 1 INBOX\r\ne FETCH 5 UID\r\n",
    );
    assert!(
        out.contains("* 4 EXISTS\r\nc OK [APPENDUID 7 4] APPEND completed"),
        "{out}"
    );
    assert!(
        out.contains("* 5 EXISTS\r\nd OK [COPYUID 7 1 5] COPY completed"),
        "{out}"
    );
    assert!(out.contains("* 5 FETCH (UID 5)\r\ne OK"), "{out}");
}

#[test]
fn list_lsub_and_mailbox_management() {
    let out = run_all(
        "a LOGIN u secret\r\nb LIST \"\" \"*\"\r\nc LSUB \"\" \"*\"\r\nd LIST \"\" %\r\ne CREATE Work\r\nf CREATE Work\r\ng RENAME Work Play\r\nh LIST \"\" \"*\" RETURN (STATUS (MESSAGES))\r\ni LIST \"\" \"\"\r\nj DELETE Gone\r\n",
    );
    assert!(
        out.contains("* LIST (\\HasNoChildren) \"/\" \"INBOX\""),
        "{out}"
    );
    assert!(
        out.contains("* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\""),
        "{out}"
    );
    assert!(
        out.contains("* LIST (\\HasNoChildren) \"/\" \"Archive/2024\""),
        "{out}"
    );
    assert!(
        !out.contains("* LSUB (\\HasNoChildren) \"/\" \"Archive/2024\""),
        "{out}"
    );
    assert!(
        out.contains("* LSUB (\\HasNoChildren) \"/\" \"INBOX\""),
        "{out}"
    );
    // % does not cross the hierarchy delimiter.
    let d = &out[out.find("c OK").unwrap()..out.find("d OK").unwrap()];
    assert!(!d.contains("Archive/2024"), "{d}");
    assert!(out.contains("e OK CREATE completed"), "{out}");
    assert!(out.contains("f NO [ALREADYEXISTS]"), "{out}");
    assert!(out.contains("* STATUS \"Play\" (MESSAGES 0)"), "{out}");
    assert!(out.contains("* LIST (\\Noselect) \"/\" \"\""), "{out}");
    assert!(out.contains("j NO [NONEXISTENT]"), "{out}");
}

#[test]
fn idle_reports_new_mail_and_ends_on_done() {
    let out = run_all("a LOGIN u secret\r\nb SELECT INBOX\r\nc IDLE\r\nDONE\r\nd NOOP\r\n");
    assert!(out.contains("+ idling\r\n* 4 EXISTS\r\n"), "{out}");
    assert!(out.contains("c OK IDLE terminated"), "{out}");
    assert!(out.contains("d OK NOOP completed"), "{out}");
}

#[test]
fn authenticate_plain_with_and_without_initial_response() {
    let out = run_all("a AUTHENTICATE PLAIN AHUAc2VjcmV0\r\n");
    assert!(out.contains("a OK [CAPABILITY"), "{out}");
    let out = run_all("a AUTHENTICATE PLAIN\r\nAHUAd3Jvbmc=\r\nb AUTHENTICATE PLAIN\r\n*\r\n");
    assert!(out.contains("+ \r\n"), "{out}");
    assert!(out.contains("a NO [AUTHENTICATIONFAILED]"), "{out}");
    assert!(out.contains("b BAD AUTHENTICATE cancelled"), "{out}");
}

#[test]
fn bad_input_gets_bad_and_no_and_the_session_goes_on() {
    let out = run_all(
        "a SELECT INBOX\r\n\r\nb FROB\r\nc LOGIN u secret\r\nd FETCH 1 FLAGS\r\ne SELECT INBOX\r\nf FETCH 99 FLAGS\r\ng FETCH 1 (FLAGS\r\nh APPEND INBOX {999999999999}\r\ni NOOP\r\n",
    );
    assert!(
        out.contains("a BAD command not valid before login"),
        "{out}"
    );
    assert!(out.contains("* BAD no tag"), "{out}");
    assert!(out.contains("b BAD unknown command FROB"), "{out}");
    assert!(out.contains("d BAD no mailbox selected"), "{out}");
    assert!(out.contains("f BAD message number out of range"), "{out}");
    assert!(out.contains("g BAD syntax"), "{out}");
    assert!(out.contains("h NO [TOOBIG]"), "{out}");
    assert!(out.ends_with("i OK NOOP completed\r\n"), "{out}");
}

#[test]
fn login_is_refused_in_clear_where_plaintext_is_refused() {
    let mut session = ImapSession::new(ImapLimits::default());
    session.set_security(Tls::Offered, Plaintext::Refused);
    let mut out = Vec::new();
    session.greeting(&mut out);
    session.push(b"a LOGIN u secret\r\nb STARTTLS\r\n");
    assert_eq!(session.step(&mut out), Step::StartTls);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("LOGINDISABLED"), "{text}");
    assert!(text.contains("STARTTLS"), "{text}");
    assert!(text.contains("a NO [PRIVACYREQUIRED]"), "{text}");
    assert!(text.contains("b OK begin TLS"), "{text}");
    session.tls_started();
    session.push(b"c LOGIN u secret\r\n");
    assert!(matches!(session.step(&mut out), Step::Login { .. }));
}

#[test]
fn internal_dates_format() {
    assert_eq!(internal_date(0), "01-Jan-1970 00:00:00 +0000");
    assert_eq!(internal_date(1_700_000_000), "14-Nov-2023 22:13:20 +0000");
}

#[test]
fn list_patterns() {
    assert!(list_matches(b"*", b"a/b"));
    assert!(!list_matches(b"%", b"a/b"));
    assert!(list_matches(b"a/%", b"a/b"));
    assert!(list_matches(b"INBOX", b"inbox"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]
    #[test]
    fn garbage_after_login_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let mut store = Store::new();
        let mut script = b"a LOGIN u secret\r\nb SELECT INBOX\r\n".to_vec();
        script.extend(bytes);
        let _ = run(&mut store, &script, 7);
    }
}

/// The output from the line starting `from` to the line starting `to`.
fn between<'a>(out: &'a str, from: &str, to: &str) -> &'a str {
    let start = out.find(&format!("\r\n{from}")).unwrap_or(0);
    let end = out[start..]
        .find(&format!("\r\n{to}"))
        .map_or(out.len(), |e| start + e + 2);
    &out[start..end]
}

#[test]
fn qresync_reports_expunges_as_vanished_and_resynchronises_at_select() {
    // Without ENABLE QRESYNC its SELECT parameter and FETCH modifier are refused.
    let out = run_all(
        "a LOGIN u secret\r\nb SELECT INBOX (QRESYNC (7 1))\r\nc SELECT INBOX\r\nd UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)\r\n",
    );
    assert!(out.contains("b BAD"), "{out}");
    assert!(out.contains("d BAD"), "{out}");
    let out = run_all(
        "a LOGIN u secret\r\nb ENABLE QRESYNC\r\nc SELECT INBOX\r\nd STORE 2 +FLAGS.SILENT (\\Deleted)\r\ne EXPUNGE\r\nf UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)\r\ng SELECT INBOX (QRESYNC (7 3 1:3))\r\nh SELECT INBOX (QRESYNC (7 4))\r\ni SELECT INBOX (QRESYNC (6 1 1:3))\r\n",
    );
    assert!(out.contains("* ENABLED QRESYNC\r\n"), "{out}");
    // An expunge is announced by UID, not by number.
    assert!(out.contains("* VANISHED 2\r\ne OK"), "{out}");
    assert!(!out.contains(" EXPUNGE\r\n"), "{out}");
    // VANISHED (EARLIER) comes before the FETCH responses of the set.
    assert!(
        out.contains("* VANISHED (EARLIER) 2\r\n* 1 FETCH (UID 1 FLAGS () MODSEQ ("),
        "{out}"
    );
    // A reselect reports the known UIDs gone and the messages changed after the client's
    // MODSEQ, closing the previous mailbox first.
    let g = between(&out, "f OK", "g OK");
    assert!(out.contains("* OK [CLOSED]"), "{out}");
    assert!(g.contains("* VANISHED (EARLIER) 2\r\n"), "{out}");
    assert!(
        g.contains("* 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ (4))\r\n"),
        "{out}"
    );
    assert!(!g.contains("* 1 FETCH"), "{out}");
    // Without known UIDs every UID below UIDNEXT may be held: 2 is reported all the same.
    let h = between(&out, "g OK", "h OK");
    assert!(h.contains("* VANISHED (EARLIER) 2\r\n"), "{out}");
    assert!(!h.contains(" FETCH ("), "{out}");
    // Another UIDVALIDITY: the client's state is worthless, nothing is resynchronised.
    let i = between(&out, "h OK", "i OK");
    assert!(!i.contains("VANISHED"), "{out}");
    assert!(out.contains("i OK [READ-WRITE]"), "{out}");
}

#[test]
fn imap4rev2_answers_search_with_esearch_and_select_with_the_mailbox_name() {
    let out = run_all(
        "a LOGIN u secret\r\nb ENABLE IMAP4rev2\r\nc SELECT inbox\r\nd SEARCH FLAGGED\r\ne UID SEARCH UNSEEN\r\nf STATUS INBOX (MESSAGES DELETED SIZE)\r\ng ENABLE IMAP4rev2\r\n",
    );
    assert!(out.contains("IMAP4rev1 IMAP4rev2 "), "{out}");
    assert!(out.contains("* ENABLED IMAP4rev2\r\n"), "{out}");
    assert!(out.contains("* LIST () \"/\" \"INBOX\"\r\n"), "{out}");
    assert!(!out.contains("RECENT"), "{out}");
    assert!(out.contains("* ESEARCH (TAG \"d\") ALL 3\r\n"), "{out}");
    assert!(
        out.contains("* ESEARCH (TAG \"e\") UID ALL 1,3\r\n"),
        "{out}"
    );
    assert!(!out.contains("* SEARCH"), "{out}");
    assert!(
        out.contains("* STATUS \"INBOX\" (MESSAGES 3 DELETED 0 SIZE "),
        "{out}"
    );
    // Enabled once: the second ENABLE names nothing new.
    assert!(out.contains("* ENABLED\r\ng OK"), "{out}");
    // A rev1 client still gets SEARCH and RECENT.
    let out = run_all("a LOGIN u secret\r\nb SELECT INBOX\r\nc SEARCH FLAGGED\r\n");
    assert!(out.contains("* 0 RECENT\r\n"), "{out}");
    assert!(out.contains("* SEARCH 3\r\n"), "{out}");
}

#[test]
fn a_saved_search_result_is_used_by_dollar() {
    let out = run_all(
        "a LOGIN u secret\r\nb SELECT INBOX\r\nc SEARCH RETURN (SAVE) UNSEEN\r\nd FETCH $ (UID)\r\ne UID SEARCH RETURN (SAVE MIN) ALL\r\nf UID FETCH $ (FLAGS)\r\ng SEARCH $ FLAGGED\r\nh SEARCH RETURN (SAVE COUNT) FLAGGED\r\ni UID STORE $ +FLAGS (\\Deleted)\r\nj UID EXPUNGE $\r\nk FETCH $ UID\r\nl UNSELECT\r\nm SELECT INBOX\r\nn FETCH $ UID\r\n",
    );
    // SAVE alone sends no result.
    assert!(!out.contains("TAG \"c\""), "{out}");
    assert!(!out.contains("* SEARCH\r\nc OK"), "{out}");
    assert!(
        out.contains("* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\nd OK"),
        "{out}"
    );
    // SAVE with MIN saves the minimum only.
    assert!(out.contains("* ESEARCH (TAG \"e\") UID MIN 1\r\n"), "{out}");
    assert!(out.contains("* 1 FETCH (UID 1 FLAGS ())\r\nf OK"), "{out}");
    assert!(out.contains("* SEARCH\r\ng OK"), "{out}");
    assert!(out.contains("* ESEARCH (TAG \"h\") COUNT 1\r\n"), "{out}");
    assert!(out.contains("* 3 EXPUNGE\r\nj OK"), "{out}");
    // The saved message is gone: `$` names nothing now, and nothing after a new SELECT.
    assert!(out.contains("j OK EXPUNGE completed\r\nk OK"), "{out}");
    assert!(out.contains("n OK"), "{out}");
    assert!(!out.contains("FETCH (UID 3)\r\nn OK"), "{out}");
}

#[test]
fn list_extended_returns_subscriptions_and_recursive_matches() {
    let out = run_all(
        "a LOGIN u secret\r\nb LIST \"\" \"*\" RETURN (SUBSCRIBED CHILDREN)\r\nc SUBSCRIBE Archive/2024\r\nd LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\"\r\ne LIST (RECURSIVEMATCH) \"\" \"*\"\r\n",
    );
    assert!(
        out.contains("* LIST (\\HasNoChildren \\Subscribed) \"/\" \"INBOX\"\r\n"),
        "{out}"
    );
    assert!(
        out.contains("* LIST (\\HasNoChildren) \"/\" \"Archive/2024\"\r\n"),
        "{out}"
    );
    let d = between(&out, "c OK", "d OK");
    assert!(
        d.contains("* LIST (\\NonExistent \\HasChildren) \"/\" \"Archive\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"),
        "{out}"
    );
    assert!(!d.contains("Archive/2024"), "{out}");
    assert!(out.contains("e BAD"), "{out}");
}

#[test]
fn binary_append_and_fetch_keep_nul_bytes() {
    let message = b"Subject: bin\r\nContent-Transfer-Encoding: binary\r\n\r\na\0b\r\n";
    let script = [
        b"a LOGIN u secret\r\nb APPEND INBOX ~{".as_slice(),
        message.len().to_string().as_bytes(),
        b"+}\r\n",
        message,
        b"\r\nc SELECT INBOX\r\nd FETCH 4 BINARY.PEEK[TEXT]\r\n",
    ]
    .concat();
    let mut store = Store::new();
    let out = run(&mut store, &script, 7);
    assert!(out.contains("b OK [APPENDUID 7 4]"), "{out}");
    assert!(
        out.contains("* 4 FETCH (BINARY[TEXT] ~{5}\r\na\0b\r\n)"),
        "{out}"
    );
}

#[test]
fn quota_is_told_for_the_one_root_and_cannot_be_set() {
    let out = run_all(
        "a LOGIN u secret\r\nb GETQUOTAROOT INBOX\r\nc GETQUOTA \"\"\r\nd GETQUOTA \"other\"\r\ne SETQUOTA \"\" (STORAGE 10)\r\nf GETQUOTAROOT\r\n",
    );
    assert!(
        out.contains("* QUOTAROOT \"INBOX\" \"\"\r\n* QUOTA \"\" (STORAGE 1 1024 MESSAGE 3 1000)\r\nb OK GETQUOTAROOT completed"),
        "{out}"
    );
    assert!(
        out.contains("* QUOTA \"\" (STORAGE 1 1024 MESSAGE 3 1000)\r\nc OK GETQUOTA completed"),
        "{out}"
    );
    assert!(out.contains("d NO [NONEXISTENT]"), "{out}");
    assert!(out.contains("e NO [NOPERM]"), "{out}");
    assert!(out.contains("f BAD"), "{out}");
    assert!(
        out.contains(" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE"),
        "{out}"
    );
}
