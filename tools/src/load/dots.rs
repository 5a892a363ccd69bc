//! Dot-stuffing as the load clients need it: stuffing a message for SMTP DATA (RFC 5321 §4.5.2)
//! and unstuffing the body of a POP3 multi-line response (RFC 1939 §3). Whole runs of text are
//! copied at once between the places a `memmem` search finds, not line by line: the load
//! generator must stay cheaper than the servers it measures.

use std::sync::LazyLock;

use memchr::memmem::Finder;

static LF_DOT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n."));
static CRLF_DOT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n."));
static CRLF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n"));
static END_OF_MULTILINE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n.\r\n"));

/// `message` as SMTP DATA into `out`: every line (split at LF) that starts with `.` gets one
/// more, the last line is ended with CRLF if it was not, then the terminating `.` line.
pub fn stuff_data(message: &[u8], out: &mut Vec<u8>) {
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut copied = 0;
    for at in LF_DOT.find_iter(message) {
        out.extend_from_slice(&message[copied..=at]);
        out.push(b'.');
        copied = at + 1;
    }
    out.extend_from_slice(&message[copied..]);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// Where the first CRLF in `bytes` is.
pub fn find_crlf(bytes: &[u8]) -> Option<usize> {
    CRLF.find(bytes)
}

/// A complete multi-line response body at the start of `bytes` (just after the `+OK` line):
/// `Some((body_len, consumed))`, where `bytes[..body_len]` is the still-stuffed body (each line
/// with its CRLF) and `consumed` includes the terminating `.` line; `None` if it is not all here.
/// `searched` bytes are known to hold no complete response (what an earlier call was given), so
/// only the end marker that may straddle them is looked for again.
pub fn find_multiline(bytes: &[u8], searched: usize) -> Option<(usize, usize)> {
    if bytes.starts_with(b".\r\n") {
        return Some((0, 3));
    }
    let marker = END_OF_MULTILINE.needle().len();
    let from = searched.saturating_sub(marker - 1).min(bytes.len());
    END_OF_MULTILINE
        .find(&bytes[from..])
        .map(|at| (from + at + 2, from + at + marker))
}

/// A stuffed multi-line body (lines ending in CRLF) with the leading dot of every line removed.
pub fn unstuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut copied = usize::from(body.first() == Some(&b'.'));
    for at in CRLF_DOT.find_iter(body) {
        // Keep the CRLF, drop the dot after it.
        out.extend_from_slice(&body[copied..at + 2]);
        copied = at + 3;
    }
    out.extend_from_slice(&body[copied.min(body.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 5321 §4.5.2, one line at a time.
    fn stuff_by_lines(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// RFC 1939 §3, one CRLF line at a time, until the lone `.` line.
    fn unstuff_by_lines(response: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let end = at + find_crlf(&response[at..])?;
            let line = &response[at..end];
            at = end + 2;
            if line == b"." {
                return Some((out, at));
            }
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            out.extend_from_slice(b"\r\n");
        }
    }

    fn text() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a')],
            0..64,
        )
    }

    proptest! {
        #[test]
        fn stuffing_matches_the_line_rule(message in text()) {
            let mut out = Vec::new();
            stuff_data(&message, &mut out);
            prop_assert_eq!(out, stuff_by_lines(&message));
        }

        /// What a server sends for any CRLF message, followed by more traffic, decodes to the
        /// same body and length as the line-by-line rule, and to the message itself.
        #[test]
        fn unstuffing_matches_the_line_rule(
            lines in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'a'), Just(b'\r')], 0..6),
                1..8,
            ),
            after in text(),
            piece in 1usize..8,
        ) {
            let mut message = Vec::new();
            for line in &lines {
                // A CR before the line's CRLF would make "\r\r\n"; it is still one line.
                message.extend_from_slice(line);
                message.extend_from_slice(b"\r\n");
            }
            let mut response = Vec::new();
            stuff_data(&message, &mut response);
            response.extend_from_slice(&after);
            let (body_len, consumed) = find_multiline(&response, 0).expect("complete");
            // Fed in pieces, as the client reads it: the same answer once the piece holding
            // the end marker has arrived.
            let mut searched = 0;
            let mut end = 0;
            let found = loop {
                if let Some(found) = find_multiline(&response[..end], searched) {
                    break Some(found);
                }
                if end == response.len() {
                    break None;
                }
                searched = end;
                end = (end + piece).min(response.len());
            };
            prop_assert_eq!(found, Some((body_len, consumed)));
            let expected = unstuff_by_lines(&response).expect("complete");
            prop_assert_eq!(consumed, expected.1);
            prop_assert_eq!(&unstuff(&response[..body_len]), &expected.0);
            prop_assert_eq!(unstuff(&response[..body_len]), message);
        }

        /// A response cut short is never taken for a complete one.
        #[test]
        fn an_incomplete_response_is_not_complete(message in text(), cut in 0usize..64) {
            let mut response = Vec::new();
            stuff_data(&message, &mut response);
            let cut = cut.min(response.len() - 1);
            prop_assert!(find_multiline(&response[..cut], 0).is_none());
        }
    }

    #[test]
    fn an_empty_body_and_leading_dots() {
        assert_eq!(find_multiline(b".\r\n+OK", 0), Some((0, 3)));
        assert_eq!(unstuff(b"..a\r\nb\r\n...\r\n"), b".a\r\nb\r\n..\r\n");
        let mut out = Vec::new();
        stuff_data(b".\r\nx\n.y", &mut out);
        assert_eq!(out, b"..\r\nx\n..y\r\n.\r\n");
    }
}
