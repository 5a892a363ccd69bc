//! Cutting IMAP client input into whole commands, incrementally and within limits.
//!
//! A command is a line, or several lines joined by literals (`{n}` or `{n+}` — LITERAL+ — or
//! `~{n}` for BINARY, at the end of a line, followed by exactly `n` octets). The framer takes
//! bytes in any chunking (one at a time works, in linear time) and yields:
//! - [`Framed::Command`]: a complete command, its bytes exactly as received (literal
//!   announcements and contents in place), for the parser;
//! - [`Framed::Continue`]: a synchronizing literal was announced; the session answers `+` (the
//!   client waits for it) or refuses with [`Framer::refuse_literal`];
//! - [`Framed::Error`]: the command broke a limit or the line syntax; it was dropped (a
//!   non-synchronizing literal's octets are read and thrown away first, so the next command is
//!   found where it starts), and the tag is given if it could be read.
//!
//! Limits: a line's length, a literal's size, a command's total size and its number of
//! literals. Nothing beyond them is ever buffered: a client announcing a 1 GB literal gets
//! `NO [TOOBIG]` before it sends a byte of it, or, if it sent it without waiting (LITERAL+), the
//! octets are counted off and dropped.

use std::collections::VecDeque;

/// The framer's limits.
#[derive(Clone, Debug)]
pub struct FrameLimits {
    /// Longest line (between literals), CRLF excluded.
    pub line_bytes_max: usize,
    /// Largest literal (an APPENDed message is one).
    pub literal_bytes_max: usize,
    /// Largest command: lines and literals together.
    pub command_bytes_max: usize,
    /// Most literals in one command.
    pub literals_max: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            line_bytes_max: 64 << 10,
            literal_bytes_max: 64 << 20,
            command_bytes_max: (64 << 20) + (64 << 10),
            literals_max: 64,
        }
    }
}

/// Why a command was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    LineTooLong,
    LiteralTooBig,
    CommandTooBig,
    TooManyLiterals,
}

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    Command(Vec<u8>),
    /// A synchronizing literal of `len` octets is announced (`binary`: `~{n}`).
    Continue {
        len: usize,
        binary: bool,
    },
    Error {
        tag: Option<String>,
        error: FrameError,
    },
}

#[derive(Debug)]
enum State {
    /// Reading a line of the command.
    Line,
    /// Waiting for the session's answer to a synchronizing literal of this many octets.
    AwaitingContinue(usize),
    /// Reading a literal's octets.
    Literal(usize),
    /// Throwing away a refused non-synchronizing literal's octets, then the rest of its
    /// command.
    Discard(usize),
    /// Throwing away the rest of a refused command, up to the end of its line (a literal
    /// announced there is thrown away too if it does not wait for `+`).
    SkipLine,
}

/// The incremental framer (see the module comment).
#[derive(Debug)]
pub struct Framer {
    limits: FrameLimits,
    state: State,
    input: VecDeque<u8>,
    /// The command so far.
    command: Vec<u8>,
    /// Where the current line starts in `command`.
    line_start: usize,
    literals: usize,
    /// The error to report once a dropped command has been thrown away, with its tag.
    pending_error: Option<(Option<String>, FrameError)>,
}

impl Framer {
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            limits,
            state: State::Line,
            input: VecDeque::new(),
            command: Vec::new(),
            line_start: 0,
            literals: 0,
            pending_error: None,
        }
    }

    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }

    /// Takes more input.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend(bytes);
    }

    /// Bytes taken but not yet framed (a bound on what a client can make the server hold is
    /// the caller's: it should stop reading while this is large).
    pub fn buffered(&self) -> usize {
        self.input.len() + self.command.len()
    }

    /// The session accepted the announced synchronizing literal (and wrote `+`).
    pub fn accept_literal(&mut self) {
        if let State::AwaitingContinue(len) = self.state {
            self.state = State::Literal(len);
        }
    }

    /// The session refused the announced synchronizing literal (and answered the command): the
    /// client sends no octets of it, and the command is over.
    pub fn refuse_literal(&mut self) {
        if matches!(self.state, State::AwaitingContinue(_)) {
            self.reset();
        }
    }

    /// Whether the framer waits for the session's answer to a literal.
    pub fn awaiting_continue(&self) -> bool {
        matches!(self.state, State::AwaitingContinue(_))
    }

    fn reset(&mut self) {
        self.state = State::Line;
        self.command.clear();
        self.line_start = 0;
        self.literals = 0;
    }

    /// The tag of the command so far, if it has one.
    fn tag(&self) -> Option<String> {
        let end = self
            .command
            .iter()
            .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
            .unwrap_or(self.command.len());
        let tag = &self.command[..end];
        (!tag.is_empty() && tag.len() <= 64 && tag.iter().all(|&b| is_tag_char(b)))
            .then(|| String::from_utf8_lossy(tag).into_owned())
    }

    /// Drops the command: reports `error` once the rest of it is thrown away.
    fn drop_command(&mut self, error: FrameError, next: State) -> Option<Framed> {
        let tag = self.tag();
        self.command.clear();
        self.line_start = 0;
        self.literals = 0;
        match next {
            State::Line => {
                self.state = State::Line;
                Some(Framed::Error { tag, error })
            }
            other => {
                self.pending_error = Some((tag, error));
                self.state = other;
                None
            }
        }
    }

    /// The next thing framed, if the input holds one.
    pub fn next_frame(&mut self) -> Option<Framed> {
        loop {
            match self.state {
                State::AwaitingContinue(_) => return None,
                State::Literal(remaining) => {
                    if remaining == 0 {
                        self.state = State::Line;
                        self.line_start = self.command.len();
                        continue;
                    }
                    if self.input.is_empty() {
                        return None;
                    }
                    let take = remaining.min(self.input.len());
                    self.command.extend(self.input.drain(..take));
                    self.state = State::Literal(remaining - take);
                }
                State::Discard(remaining) => {
                    if remaining == 0 {
                        self.state = State::SkipLine;
                        continue;
                    }
                    if self.input.is_empty() {
                        return None;
                    }
                    let take = remaining.min(self.input.len());
                    self.input.drain(..take);
                    self.state = State::Discard(remaining - take);
                }
                State::SkipLine => {
                    let Some(end) = self.input.iter().position(|&b| b == b'\n') else {
                        // Keep only what could be the start of a literal announcement.
                        let keep = self.input.len().min(32);
                        let drop = self.input.len() - keep;
                        self.input.drain(..drop);
                        return None;
                    };
                    let line: Vec<u8> = self.input.drain(..=end).collect();
                    match announcement(trim_line_end(&line)) {
                        Some(Announced {
                            len, sync: false, ..
                        }) => {
                            self.state = State::Discard(len);
                        }
                        _ => {
                            self.state = State::Line;
                            if let Some((tag, error)) = self.pending_error.take() {
                                return Some(Framed::Error { tag, error });
                            }
                        }
                    }
                }
                State::Line => {
                    let Some(end) = self.input.iter().position(|&b| b == b'\n') else {
                        let line_len = self.command.len() - self.line_start + self.input.len();
                        if line_len > self.limits.line_bytes_max + 2 {
                            self.command.extend(self.input.drain(..));
                            match self.drop_command(FrameError::LineTooLong, State::SkipLine) {
                                Some(framed) => return Some(framed),
                                None => continue,
                            }
                        }
                        return None;
                    };
                    self.command.extend(self.input.drain(..=end));
                    let line = &self.command[self.line_start..];
                    if trim_line_end(line).len() > self.limits.line_bytes_max {
                        return self.drop_command(FrameError::LineTooLong, State::Line);
                    }
                    if self.command.len() > self.limits.command_bytes_max {
                        return self.drop_command(FrameError::CommandTooBig, State::Line);
                    }
                    let Some(literal) = announcement(trim_line_end(line)) else {
                        self.line_start = 0;
                        // The limit is per command: the next one starts counting afresh.
                        self.literals = 0;
                        return Some(Framed::Command(std::mem::take(&mut self.command)));
                    };
                    self.literals += 1;
                    let total = self.command.len().saturating_add(literal.len);
                    let refused = if self.literals > self.limits.literals_max {
                        Some(FrameError::TooManyLiterals)
                    } else if literal.len > self.limits.literal_bytes_max {
                        Some(FrameError::LiteralTooBig)
                    } else if total > self.limits.command_bytes_max {
                        Some(FrameError::CommandTooBig)
                    } else {
                        None
                    };
                    match (refused, literal.sync) {
                        (None, true) => {
                            self.state = State::AwaitingContinue(literal.len);
                            return Some(Framed::Continue {
                                len: literal.len,
                                binary: literal.binary,
                            });
                        }
                        (None, false) => self.state = State::Literal(literal.len),
                        // The client waits for `+`: it sends nothing more of this command.
                        (Some(error), true) => return self.drop_command(error, State::Line),
                        (Some(error), false) => {
                            match self.drop_command(error, State::Discard(literal.len)) {
                                Some(framed) => return Some(framed),
                                None => continue,
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A literal announced at the end of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Announced {
    len: usize,
    sync: bool,
    binary: bool,
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `{n}`, `{n+}` or `~{n}` ending `line` (a number too large to count is announced as the
/// largest size, which every limit refuses).
fn announcement(line: &[u8]) -> Option<Announced> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(rest) => {
            digits = rest;
            false
        }
        None => true,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = digits.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    });
    let binary = open > 0 && inner[open - 1] == b'~';
    Some(Announced { len, sync, binary })
}

/// A character a tag may hold (RFC 3501 `tag`: ASTRING-CHAR except `+`).
pub fn is_tag_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> FrameLimits {
        FrameLimits {
            line_bytes_max: 100,
            literal_bytes_max: 50,
            command_bytes_max: 300,
            literals_max: 3,
        }
    }

    /// Feeds `input` in chunks of `chunk` bytes, accepting every synchronizing literal.
    fn frame(input: &[u8], chunk: usize, limits: FrameLimits) -> Vec<Framed> {
        let mut framer = Framer::new(limits);
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            framer.push(piece);
            while let Some(framed) = framer.next_frame() {
                if matches!(framed, Framed::Continue { .. }) {
                    framer.accept_literal();
                }
                out.push(framed);
            }
        }
        out
    }

    #[test]
    fn commands_with_literals_come_out_whole_in_any_chunking() {
        let input =
            b"a1 LOGIN {3}\r\nbob {2+}\r\npw\r\na2 NOOP\r\na3 APPEND INBOX ~{5}\r\nhe\0lo\r\n";
        for chunk in [1, 2, 3, 4, 7, 16, 64, 512] {
            let framed = frame(input, chunk, FrameLimits::default());
            assert_eq!(
                framed,
                vec![
                    Framed::Continue {
                        len: 3,
                        binary: false
                    },
                    Framed::Command(b"a1 LOGIN {3}\r\nbob {2+}\r\npw\r\n".to_vec()),
                    Framed::Command(b"a2 NOOP\r\n".to_vec()),
                    Framed::Continue {
                        len: 5,
                        binary: true
                    },
                    Framed::Command(b"a3 APPEND INBOX ~{5}\r\nhe\0lo\r\n".to_vec()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_synchronizing_literal_over_the_limit_is_refused_before_any_octet() {
        let framed = frame(b"t1 APPEND INBOX {1000000000}\r\nt2 NOOP\r\n", 5, small());
        assert_eq!(
            framed,
            vec![
                Framed::Error {
                    tag: Some("t1".into()),
                    error: FrameError::LiteralTooBig
                },
                Framed::Command(b"t2 NOOP\r\n".to_vec()),
            ]
        );
    }

    #[test]
    fn a_non_synchronizing_literal_over_the_limit_is_counted_off_and_dropped() {
        let mut input = b"t1 APPEND INBOX {60+}\r\n".to_vec();
        input.extend([b'x'; 60]);
        input.extend(b" more {2+}\r\nzz tail\r\nt2 NOOP\r\n");
        for chunk in [1, 3, 17, 1000] {
            let framed = frame(&input, chunk, small());
            assert_eq!(
                framed,
                vec![
                    Framed::Error {
                        tag: Some("t1".into()),
                        error: FrameError::LiteralTooBig
                    },
                    Framed::Command(b"t2 NOOP\r\n".to_vec()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_announced_huge_literal_never_overflows() {
        let framed = frame(b"t1 X {99999999999999999999999+}\r\n", 4, small());
        assert_eq!(
            framed,
            vec![] as Vec<Framed>,
            "still discarding what it announced"
        );
    }

    #[test]
    fn long_lines_and_too_many_literals_are_refused_and_framing_resumes() {
        let mut input = vec![b'a'; 150];
        input.extend(b"\r\nt2 NOOP\r\n");
        let framed = frame(&input, 7, small());
        assert_eq!(
            framed,
            vec![
                Framed::Error {
                    tag: None,
                    error: FrameError::LineTooLong
                },
                Framed::Command(b"t2 NOOP\r\n".to_vec()),
            ]
        );
        let framed = frame(
            b"t3 X {1+}\r\na{1+}\r\nb{1+}\r\nc{1+}\r\nd\r\nt4 NOOP\r\n",
            1,
            small(),
        );
        assert_eq!(
            framed,
            vec![
                Framed::Error {
                    tag: Some("t3".into()),
                    error: FrameError::TooManyLiterals
                },
                Framed::Command(b"t4 NOOP\r\n".to_vec()),
            ]
        );
    }

    #[test]
    fn the_literal_limit_counts_each_command_afresh() {
        // small() allows 3 literals per command; ten commands of two each all pass.
        let mut input = Vec::new();
        for n in 0..10 {
            input.extend(format!("t{n} X {{1+}}\r\na {{1+}}\r\nb\r\n").as_bytes());
        }
        let framed = frame(&input, 5, small());
        assert_eq!(framed.len(), 10, "{framed:?}");
        assert!(
            framed.iter().all(|f| matches!(f, Framed::Command(_))),
            "{framed:?}"
        );
    }

    #[test]
    fn a_refused_synchronizing_literal_ends_the_command() {
        let mut framer = Framer::new(small());
        framer.push(b"t1 APPEND INBOX {10}\r\nt2 NOOP\r\n");
        assert_eq!(
            framer.next_frame(),
            Some(Framed::Continue {
                len: 10,
                binary: false
            })
        );
        assert_eq!(framer.next_frame(), None);
        framer.refuse_literal();
        assert_eq!(
            framer.next_frame(),
            Some(Framed::Command(b"t2 NOOP\r\n".to_vec()))
        );
    }

    #[test]
    fn bare_lf_ends_a_line() {
        assert_eq!(
            frame(b"a NOOP\nb NOOP\n", 1, small()),
            vec![
                Framed::Command(b"a NOOP\n".to_vec()),
                Framed::Command(b"b NOOP\n".to_vec())
            ]
        );
    }
}
