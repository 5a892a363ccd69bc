//! A message's MIME structure, computed once from its bytes: every part's header and body
//! ranges, content type and parameters, transfer encoding, size and lines — what IMAP's
//! `BODYSTRUCTURE`, `ENVELOPE` and `BODY[section]` need, so a FETCH slices the stored bytes
//! instead of parsing them again.
//!
//! Tolerant of broken mail (a missing boundary ends its multipart at the end of the message,
//! a header without a body is a header) and bounded: nesting deeper than [`DEPTH_MAX`] or more
//! than [`PARTS_MAX`] parts make the rest one opaque part.

use std::ops::Range;

/// Deepest nesting of multiparts and attached messages.
pub const DEPTH_MAX: usize = 16;
/// Most parts in one message.
pub const PARTS_MAX: usize = 500;

/// One part of a message (the message itself is the root part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The part's header block, blank line included (empty for a multipart's child without
    /// headers).
    pub header: Range<usize>,
    /// The part's body, still transfer-encoded.
    pub body: Range<usize>,
    /// Lower-case type and subtype (`text`/`plain` when absent).
    pub media_type: String,
    pub subtype: String,
    /// Content-Type parameters, names lower-case.
    pub params: Vec<(String, String)>,
    pub id: Option<String>,
    pub description: Option<String>,
    /// Lower-case Content-Transfer-Encoding (`7bit` when absent).
    pub encoding: String,
    pub md5: Option<String>,
    /// Content-Disposition, lower-case, with its parameters.
    pub disposition: Option<(String, Vec<(String, String)>)>,
    pub language: Option<String>,
    pub location: Option<String>,
    /// Lines of the body (CRLF-terminated lines, a final unterminated line counted).
    pub lines: u32,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Single,
    Multipart(Vec<Part>),
    /// `message/rfc822`: the attached message's own root part.
    Message(Box<Part>),
}

/// A header field: its name and its unfolded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// The end of the header block starting at `from` (just past the blank line, or `to`).
fn header_end(bytes: &[u8], from: usize, to: usize) -> usize {
    let mut at = from;
    // A message that starts with a blank line has an empty header.
    if bytes[at..to].starts_with(b"\r\n") {
        return at + 2;
    }
    if bytes[at..to].starts_with(b"\n") {
        return at + 1;
    }
    while at < to {
        let Some(nl) = memchr::memchr(b'\n', &bytes[at..to]) else {
            return to;
        };
        let next = at + nl + 1;
        if bytes[next..to].starts_with(b"\r\n") {
            return next + 2;
        }
        if bytes[next..to].starts_with(b"\n") {
            return next + 1;
        }
        at = next;
    }
    to
}

/// The fields of a header block, unfolded (continuation lines joined with their leading
/// whitespace kept).
pub fn fields(header: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(last) = out.last_mut() {
                last.value.push_str(&String::from_utf8_lossy(line));
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
        let value = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
        if out.len() < 1000 {
            out.push(Field { name, value });
        }
    }
    for field in &mut out {
        field.value = field.value.trim().to_owned();
    }
    out
}

fn field<'a>(fields: &'a [Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| f.value.as_str())
}

/// `value; a=b; c="d"` → (`value`, [(a, b), (c, d)]), names lower-case.
fn value_and_params(text: &str) -> (String, Vec<(String, String)>) {
    let mut parts = split_params(text).into_iter();
    let value = parts.next().unwrap_or_default().trim().to_owned();
    let mut params = Vec::new();
    for part in parts {
        if let Some((name, value)) = part.split_once('=') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
                .unwrap_or_else(|| value.to_owned());
            if !name.is_empty() && params.len() < 50 {
                params.push((name, value));
            }
        }
    }
    (value, params)
}

/// Splits at `;` outside quotes.
fn split_params(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for ch in text.chars() {
        if escaped {
            current.push(ch);
            escaped = false;
            continue;
        }
        match ch {
            '\\' if quoted => {
                current.push(ch);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                current.push(ch);
            }
            ';' if !quoted => parts.push(std::mem::take(&mut current)),
            _ => current.push(ch),
        }
    }
    parts.push(current);
    parts
}

fn count_lines(body: &[u8]) -> u32 {
    let newlines = memchr::memchr_iter(b'\n', body).count();
    let unterminated = usize::from(!body.is_empty() && !body.ends_with(b"\n"));
    u32::try_from(newlines + unterminated).unwrap_or(u32::MAX)
}

struct Parser<'a> {
    bytes: &'a [u8],
    parts: usize,
}

/// Parses the whole message.
pub fn parse(bytes: &[u8]) -> Part {
    let mut parser = Parser { bytes, parts: 0 };
    parser.part(0, bytes.len(), 0, false)
}

impl Parser<'_> {
    /// The part in `[from, to)`; `digest`: inside `multipart/digest`, where the default type
    /// is `message/rfc822`.
    fn part(&mut self, from: usize, to: usize, depth: usize, digest: bool) -> Part {
        self.parts += 1;
        let head_end = header_end(self.bytes, from, to);
        let header_fields = fields(&self.bytes[from..head_end]);
        let (media, params) = match field(&header_fields, "Content-Type") {
            Some(text) => value_and_params(text),
            None if digest => ("message/rfc822".into(), Vec::new()),
            None => (
                "text/plain".into(),
                vec![("charset".into(), "us-ascii".into())],
            ),
        };
        let media = media.to_ascii_lowercase();
        let (media_type, subtype) = match media.split_once('/') {
            Some((t, s)) if !t.trim().is_empty() && !s.trim().is_empty() => {
                (t.trim().to_owned(), s.trim().to_owned())
            }
            _ => ("text".into(), "plain".into()),
        };
        let body = head_end..to;
        let disposition = field(&header_fields, "Content-Disposition").map(|text| {
            let (value, params) = value_and_params(text);
            (value.to_ascii_lowercase(), params)
        });
        let encoding = field(&header_fields, "Content-Transfer-Encoding")
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "7bit".into());
        let room = depth < DEPTH_MAX && self.parts < PARTS_MAX;
        let kind = if media_type == "multipart" && room {
            let boundary = params
                .iter()
                .find(|(n, _)| n == "boundary")
                .map(|(_, v)| v.clone());
            match boundary {
                Some(boundary) if !boundary.is_empty() => {
                    let children = self.multipart(
                        body.clone(),
                        boundary.as_bytes(),
                        depth,
                        subtype == "digest",
                    );
                    Kind::Multipart(children)
                }
                _ => Kind::Multipart(Vec::new()),
            }
        } else if media_type == "message"
            && (subtype == "rfc822" || subtype == "global")
            && room
            && matches!(encoding.as_str(), "7bit" | "8bit" | "binary")
        {
            Kind::Message(Box::new(self.part(body.start, body.end, depth + 1, false)))
        } else {
            Kind::Single
        };
        let kind = match kind {
            // A multipart without any part (no boundary found) is shown as one opaque part.
            Kind::Multipart(children) if children.is_empty() => Kind::Single,
            other => other,
        };
        Part {
            header: from..head_end,
            lines: count_lines(&self.bytes[body.clone()]),
            body,
            media_type,
            subtype,
            params,
            id: field(&header_fields, "Content-ID").map(str::to_owned),
            description: field(&header_fields, "Content-Description").map(str::to_owned),
            encoding,
            md5: field(&header_fields, "Content-MD5").map(str::to_owned),
            disposition,
            language: field(&header_fields, "Content-Language").map(str::to_owned),
            location: field(&header_fields, "Content-Location").map(str::to_owned),
            kind,
        }
    }

    /// The parts of a multipart body between its delimiter lines.
    fn multipart(
        &mut self,
        body: Range<usize>,
        boundary: &[u8],
        depth: usize,
        digest: bool,
    ) -> Vec<Part> {
        let mut delimiters = Vec::new(); // (line start, line end incl. newline, is close)
        let mut at = body.start;
        while at < body.end {
            let line_end =
                memchr::memchr(b'\n', &self.bytes[at..body.end]).map_or(body.end, |nl| at + nl + 1);
            let line = &self.bytes[at..line_end];
            if let Some(rest) = line
                .strip_prefix(b"--")
                .and_then(|r| r.strip_prefix(boundary))
            {
                let rest = rest
                    .strip_suffix(b"\n")
                    .map(|r| r.strip_suffix(b"\r").unwrap_or(r))
                    .unwrap_or(rest);
                let close = rest.starts_with(b"--");
                let trailing = if close { &rest[2..] } else { rest };
                if trailing.iter().all(|&b| b == b' ' || b == b'\t') {
                    delimiters.push((at, line_end, close));
                    if close {
                        break;
                    }
                }
            }
            at = line_end;
        }
        let mut parts = Vec::new();
        for pair in delimiters.windows(2) {
            let (_, open_end, close) = pair[0];
            if close {
                break;
            }
            let (next_start, _, _) = pair[1];
            // The CRLF before a delimiter belongs to the delimiter.
            let mut end = next_start;
            if end > open_end && self.bytes[end - 1] == b'\n' {
                end -= 1;
                if end > open_end && self.bytes[end - 1] == b'\r' {
                    end -= 1;
                }
            }
            if self.parts >= PARTS_MAX {
                break;
            }
            parts.push(self.part(open_end, end.max(open_end), depth + 1, digest));
        }
        // An opening delimiter with no closing one: its part runs to the end.
        if let Some(&(_, open_end, false)) = delimiters.last() {
            if self.parts < PARTS_MAX {
                parts.push(self.part(open_end, body.end, depth + 1, digest));
            }
        }
        parts
    }
}

impl Part {
    /// The part at `path` (1-based part numbers, IMAP style); the empty path is this part.
    /// Of an attached message, `1` names its root part's body (its first part if it is a
    /// multipart), as in IMAP.
    pub fn find(&self, path: &[u32]) -> Option<&Part> {
        let Some((&first, rest)) = path.split_first() else {
            return Some(self);
        };
        let index = usize::try_from(first).ok()?.checked_sub(1)?;
        match &self.kind {
            Kind::Multipart(children) => children.get(index)?.find(rest),
            Kind::Message(inner) => match &inner.kind {
                Kind::Multipart(children) => children.get(index)?.find(rest),
                _ if index == 0 => inner.find(rest),
                _ => None,
            },
            Kind::Single if index == 0 => self.find(rest),
            Kind::Single => None,
        }
    }
}

// ---- Writing IMAP strings ----

/// `s` as an IMAP string: quoted if it can be, else a literal.
pub fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() < 1024
        && s.iter()
            .all(|&b| b != b'\r' && b != b'\n' && b != 0 && b < 0x80);
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    }
}

/// `NIL` or the string.
pub fn write_nstring(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_string(out, s.as_bytes()),
        None => out.extend_from_slice(b"NIL"),
    }
}

fn write_params(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        write_string(out, name.to_ascii_uppercase().as_bytes());
        out.push(b' ');
        write_string(out, value.as_bytes());
    }
    out.push(b')');
}

/// `BODYSTRUCTURE` (`extensible`) or `BODY` of `part` in `bytes`.
pub fn write_body_structure(out: &mut Vec<u8>, part: &Part, bytes: &[u8], extensible: bool) {
    out.push(b'(');
    match &part.kind {
        Kind::Multipart(children) => {
            for child in children {
                write_body_structure(out, child, bytes, extensible);
            }
            out.push(b' ');
            write_string(out, part.subtype.to_ascii_uppercase().as_bytes());
            if extensible {
                out.push(b' ');
                write_params(out, &part.params);
                write_extensions(out, part);
            }
        }
        kind => {
            write_string(out, part.media_type.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            write_string(out, part.subtype.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            write_params(out, &part.params);
            out.push(b' ');
            write_nstring(out, part.id.as_deref());
            out.push(b' ');
            write_nstring(out, part.description.as_deref());
            out.push(b' ');
            write_string(out, part.encoding.to_ascii_uppercase().as_bytes());
            out.extend_from_slice(format!(" {}", part.body.len()).as_bytes());
            if let Kind::Message(inner) = kind {
                out.push(b' ');
                write_envelope(out, &fields(&bytes[inner.header.clone()]));
                out.push(b' ');
                write_body_structure(out, inner, bytes, extensible);
                out.extend_from_slice(format!(" {}", part.lines).as_bytes());
            } else if part.media_type == "text" {
                out.extend_from_slice(format!(" {}", part.lines).as_bytes());
            }
            if extensible {
                out.push(b' ');
                write_nstring(out, part.md5.as_deref());
                write_extensions(out, part);
            }
        }
    }
    out.push(b')');
}

fn write_extensions(out: &mut Vec<u8>, part: &Part) {
    out.push(b' ');
    match &part.disposition {
        Some((kind, params)) => {
            out.push(b'(');
            write_string(out, kind.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            write_params(out, params);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    write_nstring(out, part.language.as_deref());
    out.push(b' ');
    write_nstring(out, part.location.as_deref());
}

/// One address of an address list: display name, mailbox (local part) and host; a group
/// start (`mailbox` the group name, no host) or end (all `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub name: Option<String>,
    pub mailbox: Option<String>,
    pub host: Option<String>,
}

/// Parses an RFC 5322 address list, tolerantly (comments dropped, groups kept).
pub fn addresses(text: &str) -> Vec<Address> {
    let mut out = Vec::new();
    let mut tokens = Vec::new(); // (token, is quoted)
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut current = String::new();
    let flush = |current: &mut String, tokens: &mut Vec<(String, bool)>| {
        if !current.trim().is_empty() {
            tokens.push((current.trim().to_owned(), false));
        }
        current.clear();
    };
    while i < chars.len() && out.len() < 1000 {
        let ch = chars[i];
        match ch {
            '"' => {
                flush(&mut current, &mut tokens);
                let mut quoted = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    quoted.push(chars[i]);
                    i += 1;
                }
                tokens.push((quoted, true));
            }
            '(' => {
                // A comment, nested.
                let mut depth = 1;
                i += 1;
                while i < chars.len() && depth > 0 {
                    match chars[i] {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        '\\' => i += 1,
                        _ => {}
                    }
                    i += 1;
                }
                continue;
            }
            '<' => {
                flush(&mut current, &mut tokens);
                let end = chars[i..].iter().position(|&c| c == '>').map(|p| i + p);
                let addr: String = chars[i + 1..end.unwrap_or(chars.len())].iter().collect();
                let name = phrase(&tokens);
                tokens.clear();
                out.push(split_address(name, addr.trim()));
                i = end.map_or(chars.len(), |e| e + 1);
                // Skip to the next separator.
                while i < chars.len() && chars[i] != ',' && chars[i] != ';' {
                    i += 1;
                }
                continue;
            }
            ':' => {
                flush(&mut current, &mut tokens);
                let group = phrase(&tokens);
                tokens.clear();
                out.push(Address {
                    name: None,
                    mailbox: Some(group.unwrap_or_default()),
                    host: None,
                });
            }
            ';' => {
                flush(&mut current, &mut tokens);
                if let Some(addr) = bare(&tokens) {
                    out.push(addr);
                }
                tokens.clear();
                out.push(Address {
                    name: None,
                    mailbox: None,
                    host: None,
                });
            }
            ',' => {
                flush(&mut current, &mut tokens);
                if let Some(addr) = bare(&tokens) {
                    out.push(addr);
                }
                tokens.clear();
            }
            _ => current.push(ch),
        }
        i += 1;
    }
    flush(&mut current, &mut tokens);
    if let Some(addr) = bare(&tokens) {
        out.push(addr);
    }
    out
}

fn phrase(tokens: &[(String, bool)]) -> Option<String> {
    let text = tokens
        .iter()
        .map(|(t, _)| t.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    (!text.is_empty()).then_some(text)
}

fn bare(tokens: &[(String, bool)]) -> Option<Address> {
    let text = tokens
        .iter()
        .map(|(t, _)| t.as_str())
        .collect::<Vec<_>>()
        .join("");
    let text = text.trim();
    (!text.is_empty()).then(|| split_address(None, text))
}

fn split_address(name: Option<String>, addr: &str) -> Address {
    let addr = addr.rsplit(':').next().unwrap_or(addr); // drop a source route
    match addr.rsplit_once('@') {
        Some((mailbox, host)) => Address {
            name,
            mailbox: Some(mailbox.to_owned()),
            host: Some(host.to_owned()),
        },
        None => Address {
            name,
            mailbox: Some(addr.to_owned()),
            host: Some(String::new()),
        },
    }
}

fn write_address_list(out: &mut Vec<u8>, value: Option<&str>) {
    let list = value.map(addresses).unwrap_or_default();
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for address in &list {
        out.push(b'(');
        write_nstring(out, address.name.as_deref());
        out.extend_from_slice(b" NIL ");
        write_nstring(out, address.mailbox.as_deref());
        out.push(b' ');
        write_nstring(out, address.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// `ENVELOPE` of a header's fields.
pub fn write_envelope(out: &mut Vec<u8>, fields: &[Field]) {
    let get = |name: &str| field(fields, name).filter(|v| !v.is_empty());
    out.push(b'(');
    write_nstring(out, get("Date"));
    out.push(b' ');
    write_nstring(out, get("Subject"));
    let from = get("From");
    for (name, fallback) in [
        ("From", None),
        ("Sender", from),
        ("Reply-To", from),
        ("To", None),
        ("Cc", None),
        ("Bcc", None),
    ] {
        out.push(b' ');
        write_address_list(out, get(name).or(fallback));
    }
    out.push(b' ');
    write_nstring(out, get("In-Reply-To"));
    out.push(b' ');
    write_nstring(out, get("Message-ID"));
    out.push(b')');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structure(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        write_body_structure(&mut out, &parse(bytes), bytes, true);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_plain_message() {
        let msg = b"From: Bob <bob@example.org>\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n";
        let part = parse(msg);
        assert_eq!(&msg[part.body.clone()], b"line one\r\nline two\r\n");
        assert_eq!(part.lines, 2);
        assert_eq!(
            structure(msg),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 20 2 NIL NIL NIL NIL)"
        );
        let mut env = Vec::new();
        write_envelope(&mut env, &fields(&msg[part.header.clone()]));
        assert_eq!(
            String::from_utf8(env).unwrap(),
            "(NIL \"hi\" ((\"Bob\" NIL \"bob\" \"example.org\")) ((\"Bob\" NIL \"bob\" \"example.org\")) ((\"Bob\" NIL \"bob\" \"example.org\")) NIL NIL NIL NIL NIL)"
        );
    }

    #[test]
    fn multipart_with_an_attached_message() {
        let msg = b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\nepilogue\r\n";
        let part = parse(msg);
        let Kind::Multipart(children) = &part.kind else {
            panic!("{part:?}")
        };
        assert_eq!(children.len(), 2);
        assert_eq!(&msg[children[0].body.clone()], b"hello");
        assert_eq!(
            &msg[children[1].body.clone()],
            b"Subject: inner\r\n\r\ninner body"
        );
        let inner = part.find(&[2, 1]).unwrap();
        assert_eq!(&msg[inner.body.clone()], b"inner body");
        assert_eq!(part.find(&[1]).unwrap().subtype, "plain");
        assert!(part.find(&[3]).is_none());
        let text = structure(msg);
        assert!(
            text.starts_with("((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 5 1"),
            "{text}"
        );
        assert!(text.contains("\"MESSAGE\" \"RFC822\""), "{text}");
        assert!(text.contains(" \"MIXED\" (\"BOUNDARY\" \"b1\")"), "{text}");
    }

    #[test]
    fn broken_mail_is_tolerated() {
        // No closing delimiter; a boundary parameter that never appears; garbage.
        let open = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nbody";
        let Kind::Multipart(children) = parse(open).kind else {
            panic!()
        };
        assert_eq!(children.len(), 1);
        assert!(matches!(
            parse(b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nnothing").kind,
            Kind::Single
        ));
        let _ = parse(b"");
        let _ = parse(b"\r\n");
        let _ = parse(b"no header at all");
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut msg = Vec::new();
        for i in 0..100 {
            msg.extend(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").bytes(),
            );
        }
        msg.extend(b"\r\nleaf\r\n");
        let part = parse(&msg);
        let mut depth = 0;
        let mut p = &part;
        while let Kind::Multipart(children) = &p.kind {
            depth += 1;
            p = &children[0];
        }
        assert!(depth <= DEPTH_MAX, "{depth}");
    }

    #[test]
    fn addresses_groups_and_comments() {
        let list = addresses("\"Doe, John\" <john@x.org>, jane@y.org (Jane), team: a@b.c, d@e.f;");
        assert_eq!(list[0].name.as_deref(), Some("Doe, John"));
        assert_eq!(list[0].mailbox.as_deref(), Some("john"));
        assert_eq!(list[1].host.as_deref(), Some("y.org"));
        assert_eq!(list[2].mailbox.as_deref(), Some("team"));
        assert_eq!(list[2].host, None);
        assert_eq!(list[4].host.as_deref(), Some("e.f"));
        assert_eq!(list[5].mailbox, None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_within_bounds(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let part = parse(&bytes);
            let mut out = Vec::new();
            write_body_structure(&mut out, &part, &bytes, true);
            proptest::prop_assert!(part.body.end <= bytes.len());
        }
    }
}
