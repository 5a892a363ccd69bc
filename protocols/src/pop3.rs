//! The POP3 server session (RFC 1939, RFC 2449 CAPA and RESP-CODES, RFC 2595 STLS, RFC 5034
//! SASL with PLAIN and SCRAM-SHA-256), sans-IO.
//!
//! Same shape as the SMTP session: `push` bytes, call `step` until [`Step::NeedInput`], answer
//! its requests ([`Step::Authenticate`], [`Step::ScramCredentials`], [`Step::Open`],
//! [`Step::Fetch`], [`Step::Commit`], [`Step::StartTls`]). Deletions are only marked during the
//! session and handed over as [`Step::Commit`] on QUIT (the UPDATE state); a connection that
//! drops before QUIT deletes nothing.
//!
//! Where passwords may not cross in clear ([`Plaintext::Refused`]: not TLS, not loopback),
//! USER and SASL PLAIN are answered `-ERR [PRIVACY]` and not offered in CAPA until STLS; SCRAM,
//! which never sends the password, is offered either way.

use crate::sasl::{self, ScramCredentials, ScramServer};
pub use crate::security::{Plaintext, Tls};

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
    /// SCRAM needs the user's stored credentials: answer with `scram_credentials`.
    ScramCredentials {
        user: String,
    },
    /// The user proved who they are (SCRAM): lock the maildrop; answer with `authenticated`.
    Open {
        user: String,
    },
    /// STLS was accepted (its +OK is in the output): write the output, run the TLS handshake,
    /// then call `tls_started` (or `tls_failed`).
    StartTls,
    Close,
}

/// Where a SASL exchange stands.
#[derive(Debug)]
enum Sasl {
    /// `+ ` was sent: the next line is the PLAIN response.
    PlainResponse,
    /// `+ ` was sent: the next line is SCRAM's client-first message.
    ScramFirst,
    /// The stored credentials are being fetched.
    ScramCredentials(ScramServer),
    /// The server-first message was sent: the next line is the client-final one.
    ScramFinal(ScramServer, ScramCredentials),
    /// The server-final message was sent: an empty line, then the maildrop opens.
    ScramDone(String),
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
    /// In a SASL exchange (see `Pop3Session::sasl`).
    Sasl,
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
    tls: Tls,
    plaintext: Plaintext,
    sasl: Option<Sasl>,
    /// SASL exchanges that failed their proof here (the edge counts them against the client).
    proofs_failed: u64,
}

/// The refusal of a password in clear (USER/PASS, SASL PLAIN) off loopback without TLS.
const PRIVACY: &str = "[PRIVACY] no password in clear on an unencrypted connection: use STLS \
                       (or POP3S, or SASL SCRAM-SHA-256)";

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
            tls: Tls::Unavailable,
            plaintext: Plaintext::Allowed,
            sasl: None,
            proofs_failed: 0,
        }
    }

    /// How many SCRAM exchanges failed their proof in this session (wrong password).
    pub fn proofs_failed(&self) -> u64 {
        self.proofs_failed
    }

    /// The connection's protection, before the greeting: whether STLS is offered (or TLS is
    /// on already), and whether a password may be sent as it is.
    pub fn set_security(&mut self, tls: Tls, plaintext: Plaintext) {
        self.tls = tls;
        self.plaintext = if tls == Tls::Active {
            Plaintext::Allowed
        } else {
            plaintext
        };
    }

    /// The TLS handshake after [`Step::StartTls`] succeeded: anything sent in clear after STLS
    /// is thrown away unread, and passwords are welcome from now on.
    pub fn tls_started(&mut self) {
        if self.state != State::Waiting || self.tls != Tls::Offered {
            return;
        }
        self.input.clear();
        self.consumed = 0;
        self.discarding_line = false;
        self.user = None;
        self.tls = Tls::Active;
        self.plaintext = Plaintext::Allowed;
        self.state = State::Authorization;
    }

    /// The TLS handshake after [`Step::StartTls`] failed: the connection is over.
    pub fn tls_failed(&mut self) {
        self.state = State::Closed;
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
            let step = if self.state == State::Sasl {
                self.sasl_line(&line, out)
            } else {
                self.command(&line, out)
            };
            if let Some(step) = step {
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
            (_, "CAPA") => self.capabilities(out),
            (State::Authorization, "STLS") => match self.tls {
                Tls::Offered if arg.trim().is_empty() => {
                    ok(out, "begin TLS negotiation");
                    self.state = State::Waiting;
                    return Some(Step::StartTls);
                }
                Tls::Offered => self.err(out, "STLS takes no argument"),
                Tls::Active => self.err(out, "TLS is already active"),
                Tls::Unavailable => self.err(out, "STLS is not available"),
            },
            (State::Authorization, "AUTH") => return self.auth(arg, out),
            (State::Authorization, "USER" | "PASS") if self.plaintext == Plaintext::Refused => {
                self.err(out, PRIVACY)
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

    fn capabilities(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"+OK capability list follows\r\n");
        let in_clear_ok = self.plaintext == Plaintext::Allowed;
        if in_clear_ok {
            out.extend_from_slice(b"USER\r\nSASL PLAIN SCRAM-SHA-256\r\n");
        } else {
            out.extend_from_slice(b"SASL SCRAM-SHA-256\r\n");
        }
        if self.tls == Tls::Offered && self.state == State::Authorization {
            out.extend_from_slice(b"STLS\r\n");
        }
        out.extend_from_slice(
            b"UIDL\r\nTOP\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION porcupine\r\n.\r\n",
        );
    }

    /// `AUTH [mechanism [initial-response]]` (RFC 5034).
    fn auth(&mut self, arg: &str, out: &mut Vec<u8>) -> Option<Step> {
        let mut words = arg.split_whitespace();
        let Some(mechanism) = words.next() else {
            out.extend_from_slice(b"+OK mechanisms follow\r\n");
            if self.plaintext == Plaintext::Allowed {
                out.extend_from_slice(b"PLAIN\r\n");
            }
            out.extend_from_slice(b"SCRAM-SHA-256\r\n.\r\n");
            return None;
        };
        let initial = words.next();
        if words.next().is_some() {
            self.err(out, "usage: AUTH mechanism [initial-response]");
            return None;
        }
        let mechanism = mechanism.to_ascii_uppercase();
        let sasl = match mechanism.as_str() {
            sasl::PLAIN if self.plaintext == Plaintext::Refused => {
                self.err(out, PRIVACY);
                return None;
            }
            sasl::PLAIN => Sasl::PlainResponse,
            sasl::SCRAM_SHA_256 => Sasl::ScramFirst,
            _ => {
                self.err(out, "unsupported SASL mechanism (PLAIN, SCRAM-SHA-256)");
                return None;
            }
        };
        self.sasl = Some(sasl);
        self.state = State::Sasl;
        match initial {
            // RFC 4954's "=" is an empty initial response.
            Some(response) => self.sasl_line(response, out),
            None => {
                out.extend_from_slice(b"+ \r\n");
                None
            }
        }
    }

    /// Ends a SASL exchange in failure, back in the AUTHORIZATION state.
    fn sasl_failed(&mut self, out: &mut Vec<u8>, text: &str) -> Option<Step> {
        self.sasl = None;
        self.state = State::Authorization;
        self.err(out, text);
        None
    }

    /// A client line inside a SASL exchange.
    fn sasl_line(&mut self, line: &str, out: &mut Vec<u8>) -> Option<Step> {
        let line = line.trim();
        if line == "*" {
            return self.sasl_failed(out, "authentication cancelled");
        }
        let decoded = if line == "=" || line.is_empty() {
            Some(Vec::new())
        } else {
            sasl::base64_decode(line)
        };
        let Some(response) = decoded else {
            return self.sasl_failed(out, "invalid base64 in a SASL response");
        };
        match self.sasl.take() {
            Some(Sasl::PlainResponse) => match sasl::parse_plain(&response) {
                Some((authzid, user, password)) if authzid.is_empty() || authzid == user => {
                    self.user = Some(user.clone());
                    self.state = State::Waiting;
                    Some(Step::Authenticate { user, password })
                }
                Some(_) => self.sasl_failed(out, "[AUTH] acting as another user is not allowed"),
                None => self.sasl_failed(out, "[AUTH] malformed PLAIN response"),
            },
            Some(Sasl::ScramFirst) => {
                let Ok(text) = String::from_utf8(response) else {
                    return self.sasl_failed(out, "[AUTH] malformed SCRAM message");
                };
                match ScramServer::start(&text) {
                    Ok((server, user)) => {
                        self.sasl = Some(Sasl::ScramCredentials(server));
                        self.state = State::Waiting;
                        Some(Step::ScramCredentials { user })
                    }
                    Err(sasl::ScramError::ChannelBinding) => {
                        self.sasl_failed(out, "[AUTH] channel binding is not supported")
                    }
                    Err(_) => self.sasl_failed(out, "[AUTH] authentication failed"),
                }
            }
            Some(Sasl::ScramFinal(server, credentials)) => {
                let Ok(text) = String::from_utf8(response) else {
                    return self.sasl_failed(out, "[AUTH] malformed SCRAM message");
                };
                match server.finish(&text, &credentials) {
                    Ok(server_final) => {
                        // RFC 5034: additional data with success goes in a last challenge,
                        // which the client answers with an empty line.
                        out.extend_from_slice(b"+ ");
                        out.extend_from_slice(
                            sasl::base64_encode(server_final.as_bytes()).as_bytes(),
                        );
                        out.extend_from_slice(b"\r\n");
                        self.sasl = Some(Sasl::ScramDone(server.user().to_owned()));
                        None
                    }
                    Err(_) => {
                        self.proofs_failed += 1;
                        self.sasl_failed(out, "[AUTH] authentication failed")
                    }
                }
            }
            Some(Sasl::ScramDone(user)) => {
                if !response.is_empty() {
                    return self.sasl_failed(out, "[AUTH] unexpected data after SCRAM's end");
                }
                self.user = Some(user.clone());
                self.state = State::Waiting;
                Some(Step::Open { user })
            }
            Some(Sasl::ScramCredentials(_)) | None => {
                self.sasl_failed(out, "no SASL exchange is under way")
            }
        }
    }

    /// The answer to [`Step::ScramCredentials`]: the user's stored credentials (`None` for an
    /// unknown user or one stored without them) and `random` bytes for the server nonce and,
    /// for a missing user, made-up credentials (so the exchange looks alike and fails at its
    /// proof).
    pub fn scram_credentials(
        &mut self,
        credentials: Option<ScramCredentials>,
        random: &[u8; 32],
        out: &mut Vec<u8>,
    ) {
        let Some(Sasl::ScramCredentials(mut server)) = self.sasl.take() else {
            return;
        };
        let credentials = credentials.unwrap_or_else(|| ScramCredentials {
            iterations: sasl::SCRAM_ITERATIONS,
            salt: random[18..].to_vec(),
            stored_key: *random,
            server_key: *random,
        });
        let server_first = server.challenge(&credentials, &random[..18]);
        out.extend_from_slice(b"+ ");
        out.extend_from_slice(sasl::base64_encode(server_first.as_bytes()).as_bytes());
        out.extend_from_slice(b"\r\n");
        self.sasl = Some(Sasl::ScramFinal(server, credentials));
        self.state = State::Sasl;
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
