//! The POP3 server session (RFC 1939, RFC 2449 CAPA and RESP-CODES), sans-IO.
//!
//! Same shape as the SMTP session: `push` bytes, call `step` until [`Step::NeedInput`], answer
//! its requests ([`Step::Authenticate`], [`Step::Fetch`], [`Step::Commit`]). Deletions are only
//! marked during the session and handed over as [`Step::Commit`] on QUIT (the UPDATE state);
//! a connection that drops before QUIT deletes nothing.

/// One message of the maildrop as the session sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaildropEntry {
    /// Unique, stable id (shown by UIDL).
    pub uid: String,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct Pop3Limits {
    pub command_line_bytes_max: usize,
    pub errors_max: u32,
}

impl Default for Pop3Limits {
    fn default() -> Self {
        Self {
            command_line_bytes_max: 1024,
            errors_max: 10,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    NeedInput,
    /// Check these credentials and lock the maildrop; answer with `authenticated`.
    Authenticate {
        user: String,
        password: String,
    },
    /// Read message `index` (0-based, as given by the maildrop); answer with `fetched`.
    /// `top` is `Some(lines)` for TOP.
    Fetch {
        index: usize,
        top: Option<usize>,
    },
    /// QUIT in the transaction state: delete these messages durably, then answer `committed`.
    Commit {
        delete: Vec<usize>,
    },
    Close,
}

/// The answer to [`Step::Authenticate`].
#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Ok(Vec<MaildropEntry>),
    BadCredentials,
    InUse,
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Authorization,
    Transaction,
    Waiting,
    Closed,
}

#[derive(Debug)]
pub struct Pop3Session {
    limits: Pop3Limits,
    state: State,
    input: Vec<u8>,
    consumed: usize,
    discarding_line: bool,
    errors: u32,
    /// Every `-ERR` reply written so far, for the node's metrics (the output cannot be scanned
    /// for them: message bodies may hold such lines, and scanning them costs a pass per byte).
    errors_sent: u64,
    user: Option<String>,
    maildrop: Vec<MaildropEntry>,
    deleted: Vec<bool>,
}

fn ok(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"+OK ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

impl Pop3Session {
    pub fn new(limits: Pop3Limits) -> Self {
        Self {
            limits,
            state: State::Authorization,
            input: Vec::new(),
            consumed: 0,
            discarding_line: false,
            errors: 0,
            errors_sent: 0,
            user: None,
            maildrop: Vec::new(),
            deleted: Vec::new(),
        }
    }

    pub fn greeting(&self, out: &mut Vec<u8>) {
        ok(out, "POP3 server ready (porcupine)");
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed == self.input.len() {
            self.input.clear();
            self.consumed = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The authenticated user, once PASS succeeded (the caller unlocks it when the session ends).
    pub fn locked_user(&self) -> Option<&str> {
        match self.state {
            State::Transaction | State::Waiting => self.user.as_deref(),
            _ => None,
        }
    }

    /// How many `-ERR` replies this session has written.
    pub fn errors_sent(&self) -> u64 {
        self.errors_sent
    }

    fn err(&mut self, out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(b"-ERR ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.errors += 1;
        self.errors_sent += 1;
        if self.errors >= self.limits.errors_max {
            out.extend_from_slice(b"-ERR too many errors, closing\r\n");
            self.errors_sent += 1;
            self.state = State::Closed;
        }
    }

    pub fn step(&mut self, out: &mut Vec<u8>) -> Step {
        loop {
            match self.state {
                State::Closed => return Step::Close,
                State::Waiting => return Step::NeedInput,
                _ => {}
            }
            let Some(line) = self.next_line(out) else {
                if self.consumed > 0 {
                    self.input.drain(..self.consumed);
                    self.consumed = 0;
                }
                return if self.state == State::Closed {
                    Step::Close
                } else {
                    Step::NeedInput
                };
            };
            if let Some(step) = self.command(&line, out) {
                return step;
            }
        }
    }

    fn next_line(&mut self, out: &mut Vec<u8>) -> Option<String> {
        loop {
            let rest = &self.input[self.consumed..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let mut line = rest[..end].to_vec();
                    self.consumed += end + 1;
                    if std::mem::take(&mut self.discarding_line) {
                        continue;
                    }
                    if line.len() + 1 > self.limits.command_line_bytes_max {
                        self.err(out, "line too long");
                        continue;
                    }
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Some(String::from_utf8_lossy(&line).into_owned());
                }
                None => {
                    if rest.len() > self.limits.command_line_bytes_max {
                        if !self.discarding_line {
                            self.err(out, "line too long");
                        }
                        self.discarding_line = true;
                        self.consumed = self.input.len();
                    }
                    return None;
                }
            }
        }
    }

    /// Parses a 1-based message number that exists and is not deleted.
    fn message(&self, arg: &str) -> Result<usize, &'static str> {
        let n: usize = arg.trim().parse().map_err(|_| "invalid message number")?;
        if n == 0 || n > self.maildrop.len() {
            return Err("no such message");
        }
        if self.deleted[n - 1] {
            return Err("message already deleted");
        }
        Ok(n - 1)
    }

    fn command(&mut self, line: &str, out: &mut Vec<u8>) -> Option<Step> {
        let mut parts = line.splitn(2, ' ');
        let verb = parts.next().unwrap_or("").to_ascii_uppercase();
        let arg = parts.next().unwrap_or("");
        match (self.state, verb.as_str()) {
            (_, "CAPA") => {
                out.extend_from_slice(
                    b"+OK capability list follows\r\nUSER\r\nUIDL\r\nTOP\r\nRESP-CODES\r\nPIPELINING\r\nIMPLEMENTATION porcupine\r\n.\r\n",
                );
            }
            (_, "NOOP") if self.state == State::Transaction => ok(out, ""),
            (State::Authorization, "USER") => {
                if arg.trim().is_empty() {
                    self.err(out, "USER needs a name");
                } else {
                    self.user = Some(arg.trim().to_owned());
                    ok(out, "send PASS");
                }
            }
            (State::Authorization, "PASS") => match self.user.clone() {
                None => self.err(out, "send USER first"),
                Some(user) => {
                    self.state = State::Waiting;
                    return Some(Step::Authenticate {
                        user,
                        password: arg.to_owned(),
                    });
                }
            },
            (State::Authorization, "QUIT") => {
                ok(out, "bye");
                self.state = State::Closed;
                return Some(Step::Close);
            }
            (State::Authorization, _) => self.err(out, "[AUTH] authenticate first (USER/PASS)"),
            (State::Transaction, "STAT") => {
                let (count, size) = self
                    .live()
                    .fold((0, 0), |(c, s), (_, m)| (c + 1, s + m.size));
                ok(out, &format!("{count} {size}"));
            }
            (State::Transaction, "LIST" | "UIDL") => {
                let uidl = verb == "UIDL";
                let show = |i: usize, m: &MaildropEntry| {
                    if uidl {
                        format!("{} {}", i + 1, m.uid)
                    } else {
                        format!("{} {}", i + 1, m.size)
                    }
                };
                if arg.trim().is_empty() {
                    let lines: Vec<String> = self.live().map(|(i, m)| show(i, m)).collect();
                    ok(out, "listing follows");
                    for l in lines {
                        out.extend_from_slice(l.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b".\r\n");
                } else {
                    match self.message(arg) {
                        Ok(i) => {
                            let text = show(i, &self.maildrop[i]);
                            ok(out, &text);
                        }
                        Err(e) => self.err(out, e),
                    }
                }
            }
            (State::Transaction, "RETR") => match self.message(arg) {
                Ok(index) => {
                    self.state = State::Waiting;
                    return Some(Step::Fetch { index, top: None });
                }
                Err(e) => self.err(out, e),
            },
            (State::Transaction, "TOP") => {
                let mut args = arg.split_whitespace();
                let (msg, lines) = (
                    args.next().unwrap_or(""),
                    args.next().map(str::parse::<usize>),
                );
                match (self.message(msg), lines) {
                    (Ok(index), Some(Ok(lines))) => {
                        self.state = State::Waiting;
                        return Some(Step::Fetch {
                            index,
                            top: Some(lines),
                        });
                    }
                    (Err(e), _) => self.err(out, e),
                    _ => self.err(out, "usage: TOP msg lines"),
                }
            }
            (State::Transaction, "DELE") => match self.message(arg) {
                Ok(i) => {
                    self.deleted[i] = true;
                    ok(out, &format!("message {} deleted", i + 1));
                }
                Err(e) => self.err(out, e),
            },
            (State::Transaction, "RSET") => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                ok(out, "");
            }
            (State::Transaction, "QUIT") => {
                let delete: Vec<usize> = (0..self.maildrop.len())
                    .filter(|&i| self.deleted[i])
                    .collect();
                self.state = State::Waiting;
                return Some(Step::Commit { delete });
            }
            (State::Transaction, "USER" | "PASS") => self.err(out, "already authenticated"),
            _ => self.err(out, "unknown command"),
        }
        None
    }

    fn live(&self) -> impl Iterator<Item = (usize, &MaildropEntry)> {
        self.maildrop
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
    }

    /// The answer to [`Step::Authenticate`].
    pub fn authenticated(&mut self, outcome: AuthOutcome, out: &mut Vec<u8>) {
        if self.state != State::Waiting {
            return;
        }
        match outcome {
            AuthOutcome::Ok(maildrop) => {
                let size: u64 = maildrop.iter().map(|m| m.size).sum();
                ok(
                    out,
                    &format!("maildrop has {} messages ({size} octets)", maildrop.len()),
                );
                self.deleted = vec![false; maildrop.len()];
                self.maildrop = maildrop;
                self.state = State::Transaction;
            }
            other => {
                self.state = State::Authorization;
                self.user = None;
                match other {
                    AuthOutcome::InUse => {
                        self.err(out, "[IN-USE] maildrop is locked by another session")
                    }
                    AuthOutcome::Unavailable => {
                        self.err(out, "[SYS/TEMP] maildrop unavailable, try again later")
                    }
                    _ => self.err(out, "[AUTH] invalid user name or password"),
                }
            }
        }
    }

    /// The answer to [`Step::Fetch`]: the message bytes, or `None` if it could not be read.
    pub fn fetched(
        &mut self,
        index: usize,
        top: Option<usize>,
        message: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) {
        if self.state != State::Waiting {
            return;
        }
        self.state = State::Transaction;
        let Some(message) = message else {
            self.err(out, "[SYS/TEMP] message unavailable, try again later");
            return;
        };
        let size = self
            .maildrop
            .get(index)
            .map_or(message.len() as u64, |m| m.size);
        ok(out, &format!("{size} octets"));
        write_stuffed(message, top, out);
    }

    /// The answer to [`Step::Commit`]: whether every marked message was deleted durably.
    pub fn committed(&mut self, all_deleted: bool, out: &mut Vec<u8>) {
        if all_deleted {
            ok(out, "bye");
        } else {
            out.extend_from_slice(b"-ERR [SYS/TEMP] some deleted messages not removed\r\n");
            self.errors_sent += 1;
        }
        self.state = State::Closed;
    }
}

/// Writes a message as a POP3 multi-line response: dot-stuffed, CRLF-terminated, ending with
/// ".\r\n". With `top`, only the headers, the blank line and `top` body lines.
pub fn write_stuffed(message: &[u8], top: Option<usize>, out: &mut Vec<u8>) {
    let Some(limit) = top else {
        write_all_stuffed(message, out);
        return;
    };
    let mut in_body = false;
    let mut body_lines = 0;
    let mut ends_with_newline = true;
    for line in message.split_inclusive(|&b| b == b'\n') {
        if in_body {
            if body_lines >= limit {
                break;
            }
            body_lines += 1;
        } else if line == b"\r\n" || line == b"\n" {
            in_body = true;
        }
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        ends_with_newline = line.ends_with(b"\n");
    }
    if !ends_with_newline {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// The whole message, dot-stuffed: only a line that starts with `.` changes, so the text
/// between two LF + `.` places is found with one `memmem` search and copied at once.
fn write_all_stuffed(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + 5);
    let mut rest = message;
    if rest.first() == Some(&b'.') {
        out.push(b'.');
    }
    while let Some(at) = memchr::memmem::find(rest, b"\n.") {
        // Through the LF, then the extra dot; the line's own dot follows with the rest.
        out.extend_from_slice(&rest[..=at]);
        out.push(b'.');
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    if !message.is_empty() && !message.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests;
