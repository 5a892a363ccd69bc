//! A message's description for IMAP — its `ENVELOPE`, `BODYSTRUCTURE` and `BODY` exactly as a
//! FETCH writes them — made once, when the message is stored (the engine's annotator keeps it
//! beside the message as the put record's annex), so a FETCH of them reads it back and never
//! parses the message again.
//!
//! Format, version 1 (little-endian; the record's CRC covers it, the engine reads it whole):
//!
//! | offset | size | field                  | meaning                                        |
//! |-------:|-----:|------------------------|------------------------------------------------|
//! | 0      | 1    | `version`              | 1                                              |
//! | 1      | 4    | `envelope_len`         | bytes of the ENVELOPE list that follow         |
//! | 5      | …    | `envelope`             | `(date subject from …)` as FETCH ENVELOPE writes it |
//! | …      | 4    | `body_structure_len`   | bytes of the BODYSTRUCTURE list that follow    |
//! | …      | …    | `body_structure`       | the extensible form (FETCH BODYSTRUCTURE)      |
//! | …      | 4    | `body_len`             | bytes of the BODY list that follow             |
//! | …      | …    | `body`                 | the non-extensible form (FETCH BODY)           |
//!
//! Anything else (another version, lengths past the end, bytes left over) is no description:
//! the reader describes the message from its bytes instead, as it does for mail stored before
//! descriptions were.

use super::mime;

/// The format written by this build.
pub const DESCRIPTION_VERSION: u8 = 1;

/// A stored description, borrowed from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Described<'a> {
    pub envelope: &'a [u8],
    pub body_structure: &'a [u8],
    pub body: &'a [u8],
}

/// Appends the description of `message` to `out` (the engine's annotator).
pub fn annotate(message: &[u8], out: &mut Vec<u8>) {
    let root = mime::parse(message);
    let mut section = Vec::with_capacity(512);
    out.push(DESCRIPTION_VERSION);
    mime::write_envelope(&mut section, &mime::fields(&message[root.header.clone()]));
    put_section(out, &section);
    for extensible in [true, false] {
        section.clear();
        mime::write_body_structure(&mut section, &root, message, extensible);
        put_section(out, &section);
    }
}

/// The description of `message`, made now.
pub fn describe(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    annotate(message, &mut out);
    out
}

fn put_section(out: &mut Vec<u8>, section: &[u8]) {
    out.extend_from_slice(&(section.len() as u32).to_le_bytes());
    out.extend_from_slice(section);
}

impl<'a> Described<'a> {
    /// Reads a stored description; `None` if the bytes are not one this build writes.
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != DESCRIPTION_VERSION {
            return None;
        }
        let mut section = || -> Option<&'a [u8]> {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let bytes = rest.get(4..4usize.checked_add(len)?)?;
            rest = &rest[4 + len..];
            Some(bytes)
        };
        let described = Described {
            envelope: section()?,
            body_structure: section()?,
            body: section()?,
        };
        rest.is_empty().then_some(described)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIXED: &[u8] = b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: hi\r\n\
        Date: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
        --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n\
        --b1\r\nContent-Type: application/pdf; name=x.pdf\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b1--\r\n";

    #[test]
    fn a_description_is_what_fetch_writes_from_the_bytes() {
        let described = describe(MIXED);
        let read = Described::decode(&described).unwrap();
        let root = mime::parse(MIXED);
        let mut envelope = Vec::new();
        mime::write_envelope(&mut envelope, &mime::fields(&MIXED[root.header.clone()]));
        let mut body_structure = Vec::new();
        mime::write_body_structure(&mut body_structure, &root, MIXED, true);
        let mut body = Vec::new();
        mime::write_body_structure(&mut body, &root, MIXED, false);
        assert_eq!(read.envelope, &envelope[..]);
        assert_eq!(read.body_structure, &body_structure[..]);
        assert_eq!(read.body, &body[..]);
        assert!(read.envelope.starts_with(b"(\"Mon, 7 Dec 2026"));
        assert!(read
            .body_structure
            .windows(5)
            .any(|w| w == b"mixed" || w == b"MIXED"));
    }

    #[test]
    fn anything_else_is_no_description() {
        let described = describe(MIXED);
        assert!(Described::decode(&[]).is_none());
        assert!(Described::decode(&described[..described.len() - 1]).is_none());
        let mut longer = described.clone();
        longer.push(0);
        assert!(Described::decode(&longer).is_none());
        let mut other = described;
        other[0] = 2;
        assert!(Described::decode(&other).is_none());
    }

    proptest! {
        #[test]
        fn any_message_is_described_and_read_back(message in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let described = describe(&message);
            prop_assert!(Described::decode(&described).is_some());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Described::decode(&bytes);
        }
    }
}
