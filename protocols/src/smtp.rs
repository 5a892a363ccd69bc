//! The SMTP server session (RFC 5321), and LMTP's (RFC 2033), sans-IO: bytes in, replies and
//! requests out.
//!
//! LMTP is SMTP for the last hop, from an MTA that keeps the queue (Postfix's `lmtp` client)
//! to the mail store, and differs in three places, so it is a [`Dialect`] of this session
//! rather than a session of its own: the greeting is `LHLO` (EHLO and HELO are refused), the
//! end of the message gets one reply per accepted recipient, in RCPT order, each saying whether
//! that recipient's copy is durable ([`SmtpSession::delivered_each`]), and the trace header
//! says `with LMTP`.
//!
//! The caller [`push`](SmtpSession::push)es whatever it read and calls
//! [`step`](SmtpSession::step) until it returns [`Step::NeedInput`]. Replies are appended to
//! the caller's output buffer. When the session needs the outside world it returns a request
//! ([`Step::CheckRecipient`], [`Step::Deliver`]) and waits for the matching answer
//! ([`recipient_checked`](SmtpSession::recipient_checked),
//! [`delivered`](SmtpSession::delivered)) before going on, so pipelined commands are answered
//! in order. No sockets, no clocks, no storage inside.
//!
//! Extensions: PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8 (8-bit and UTF-8 bytes
//! are accepted and stored as they are), CHUNKING (RFC 3030: `BDAT` chunks of a stated size,
//! which may be pipelined with the envelope, so a message costs one round trip, not two). The
//! message is the client's bytes after dot-unstuffing (DATA) or the chunks joined (BDAT),
//! exactly; the node prepends a `Received:` header ([`received_header`]).

use crate::address::{parse_path, Mailbox};

/// Limits of a session, each with the default a demanding operator would expect.
#[derive(Clone, Debug)]
pub struct SmtpLimits {
    /// Longest command line, CRLF included (RFC 5321 says at least 512).
    pub command_line_bytes_max: usize,
    /// Largest message (announced by SIZE; enforced at MAIL and during DATA).
    pub message_bytes_max: usize,
    /// Recipients accepted per message (RFC 5321 requires at least 100).
    pub recipients_max: usize,
    /// Errors tolerated before the connection is closed with 421.
    pub errors_max: u32,
}

impl Default for SmtpLimits {
    fn default() -> Self {
        Self {
            command_line_bytes_max: 4096,
            message_bytes_max: 32 << 20,
            recipients_max: 100,
            errors_max: 10,
        }
    }
}

/// Which protocol the session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Smtp,
    /// RFC 2033.
    Lmtp,
}

impl Dialect {
    /// The `with` of the `Received:` header (RFC 3848).
    pub fn received_with(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Dialect::Smtp, false) => "ESMTP",
            (Dialect::Smtp, true) => "ESMTPS",
            (Dialect::Lmtp, false) => "LMTP",
            (Dialect::Lmtp, true) => "LMTPS",
        }
    }
}

/// What the session needs from its caller next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Everything buffered is handled: write the output, read more.
    NeedInput,
    /// Is this a local user? Answer with `recipient_checked`.
    CheckRecipient(Mailbox),
    /// Store the message for every recipient, durably; answer with `delivered` (SMTP) or
    /// `delivered_each` (LMTP: an outcome per recipient).
    Deliver(Envelope),
    /// STARTTLS was accepted (its 220 is in the output): write the output, run the TLS
    /// handshake, then call [`SmtpSession::tls_started`] (or [`SmtpSession::tls_failed`]).
    StartTls,
    /// Write the output, then close the connection.
    Close,
}

pub use crate::security::Tls;

/// A message ready to be stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The HELO/EHLO name the client gave.
    pub helo: String,
    /// Reverse path; empty for the null sender `<>`.
    pub from: String,
    pub recipients: Vec<Mailbox>,
    /// The message exactly as sent, dot-unstuffing undone, CRLFs kept.
    pub data: Vec<u8>,
    /// Whether it came over TLS (the Received header says `ESMTPS`).
    pub tls: bool,
}

/// The answer to [`Step::CheckRecipient`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientCheck {
    Local,
    Unknown,
    /// The mailbox is at its quota, or would pass it with the size MAIL declared: 552 5.2.2
    /// (RFC 1870 lets a server refuse at RCPT for a recipient's storage).
    OverQuota,
    /// The user directory could not be reached (a storage error): 451, try later.
    Unavailable,
}

/// The answer to [`Step::Deliver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Durable for every recipient; the string names the message in the 250 reply.
    Stored(String),
    /// Out of space: 452, the client retries later.
    NoSpace,
    /// Any other storage failure: 451, the client retries later.
    Failed,
    /// The recipient no longer exists (deleted since RCPT): 550 5.1.1.
    NoSuchUser,
    /// The message would take the recipient past their quota: 552 5.2.2.
    OverQuota,
}

impl DeliveryOutcome {
    /// How bad an outcome is when one reply must speak for several (SMTP): temporary
    /// failures first (the client tries again later), then permanent ones.
    fn severity(&self) -> u8 {
        match self {
            DeliveryOutcome::NoSpace => 4,
            DeliveryOutcome::Failed => 3,
            DeliveryOutcome::OverQuota => 2,
            DeliveryOutcome::NoSuchUser => 1,
            DeliveryOutcome::Stored(_) => 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for EHLO/HELO.
    Connected,
    /// Greeted, no transaction.
    Ready,
    /// MAIL accepted, recipients being collected.
    Transaction,
    /// Receiving message data.
    Data,
    /// Receiving the bytes of a `BDAT` chunk.
    Chunk(Chunk),
    /// A request is out; nothing is processed until it is answered.
    Waiting(Pending),
    Closed,
}

/// A `BDAT` chunk being read: its bytes are always consumed, then answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    remaining: u64,
    last: bool,
    /// The error to answer once the chunk is consumed (no transaction, no recipients…).
    refused: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Recipient,
    Delivery,
    /// The TLS handshake after STARTTLS.
    Handshake,
}

/// One SMTP connection.
#[derive(Debug)]
pub struct SmtpSession {
    dialect: Dialect,
    limits: SmtpLimits,
    hostname: String,
    local_domains: Vec<String>,
    state: State,
    input: Vec<u8>,
    /// Bytes of `input` already handled.
    consumed: usize,
    /// A command line too long: skip to its end.
    discarding_line: bool,
    errors: u32,
    helo: String,
    from: String,
    recipients: Vec<Mailbox>,
    /// The size MAIL declared (RFC 1870), for the recipients' quota checks.
    declared_size: Option<u64>,
    pending_recipient: Option<Mailbox>,
    data: Vec<u8>,
    data_too_big: bool,
    /// The node ran short of memory for messages in transfer: this one is dropped as it
    /// arrives and answered 451 4.3.1.
    data_no_memory: bool,
    /// The last data line ended in CRLF (so a "." line may end the message).
    data_at_line_start: bool,
    /// This transaction's message is coming in `BDAT` chunks (DATA is then refused).
    chunked: bool,
    tls: Tls,
}

/// Formats a 2- or 3-part reply line.
fn reply(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

impl SmtpSession {
    pub fn new(limits: SmtpLimits, hostname: &str, local_domains: &[String]) -> Self {
        Self::with_dialect(Dialect::Smtp, limits, hostname, local_domains)
    }

    pub fn with_dialect(
        dialect: Dialect,
        limits: SmtpLimits,
        hostname: &str,
        local_domains: &[String],
    ) -> Self {
        Self {
            dialect,
            limits,
            hostname: hostname.to_owned(),
            local_domains: local_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            state: State::Connected,
            input: Vec::new(),
            consumed: 0,
            discarding_line: false,
            errors: 0,
            helo: String::new(),
            from: String::new(),
            recipients: Vec::new(),
            pending_recipient: None,
            declared_size: None,
            data: Vec::new(),
            data_too_big: false,
            data_no_memory: false,
            data_at_line_start: true,
            chunked: false,
            tls: Tls::Unavailable,
        }
    }

    /// Whether STARTTLS is offered, or TLS already on (implicit TLS): before the greeting.
    pub fn set_tls(&mut self, tls: Tls) {
        self.tls = tls;
    }

    /// The TLS handshake after [`Step::StartTls`] succeeded. The session starts over, as RFC
    /// 3207 asks: the client greets again, and whatever it sent in clear after STARTTLS is
    /// thrown away unread (commands slipped in before the handshake must not run as if they
    /// came over TLS).
    pub fn tls_started(&mut self) {
        if self.state != State::Waiting(Pending::Handshake) {
            return;
        }
        self.input.clear();
        self.consumed = 0;
        self.discarding_line = false;
        self.reset_transaction();
        self.helo.clear();
        self.tls = Tls::Active;
        self.state = State::Connected;
    }

    /// The TLS handshake after [`Step::StartTls`] failed: the connection is over.
    pub fn tls_failed(&mut self) {
        self.state = State::Closed;
    }

    /// The 220 banner, to send first.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        let name = match self.dialect {
            Dialect::Smtp => "ESMTP",
            Dialect::Lmtp => "LMTP",
        };
        reply(
            out,
            &format!("220 {} {name} porcupine ready", self.hostname),
        );
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The 421 to send when the node shuts down or a client idles too long.
    pub fn goodbye(&mut self, out: &mut Vec<u8>, why: &str) {
        reply(out, &format!("421 4.4.2 {} {why}", self.hostname));
        self.state = State::Closed;
    }

    /// Adds bytes read from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed == self.input.len() {
            self.input.clear();
            self.consumed = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// True while a message is being transferred, by DATA or in chunks (a dropped connection
    /// then stores nothing).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data | State::Chunk(_)) || self.chunked
    }

    /// Handles buffered input until it is used up or the caller must act.
    pub fn step(&mut self, out: &mut Vec<u8>) -> Step {
        loop {
            match self.state {
                State::Closed => return Step::Close,
                State::Waiting(_) => return Step::NeedInput,
                State::Data => {
                    if let Some(step) = self.step_data(out) {
                        return step;
                    }
                }
                State::Chunk(chunk) => {
                    if let Some(step) = self.step_chunk(chunk, out) {
                        return step;
                    }
                }
                _ => {
                    let Some(line) = self.next_line(out) else {
                        self.compact();
                        return Step::NeedInput;
                    };
                    if let Some(step) = self.command(&line, out) {
                        return step;
                    }
                }
            }
        }
    }

    fn compact(&mut self) {
        if self.consumed > 0 {
            self.input.drain(..self.consumed);
            self.consumed = 0;
        }
    }

    /// The next complete command line (without CRLF), handling over-long lines.
    fn next_line(&mut self, out: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            let rest = &self.input[self.consumed..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line = rest[..end].to_vec();
                    self.consumed += end + 1;
                    if self.discarding_line {
                        self.discarding_line = false;
                        continue;
                    }
                    if line.len() + 1 > self.limits.command_line_bytes_max {
                        self.error(out, "500 5.5.6 Line too long");
                        continue;
                    }
                    let mut line = line;
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Some(line);
                }
                None => {
                    if rest.len() > self.limits.command_line_bytes_max {
                        if !self.discarding_line {
                            self.error(out, "500 5.5.6 Line too long");
                        }
                        self.discarding_line = true;
                        self.consumed = self.input.len();
                    }
                    return None;
                }
            }
        }
    }

    /// Sends an error reply and counts it; too many close the connection.
    fn error(&mut self, out: &mut Vec<u8>, text: &str) {
        reply(out, text);
        self.errors += 1;
        if self.errors >= self.limits.errors_max && self.state != State::Closed {
            reply(
                out,
                &format!("421 4.7.0 {} Too many errors, closing", self.hostname),
            );
            self.state = State::Closed;
        }
    }

    /// STARTTLS (RFC 3207): only outside a transaction, once, when offered.
    fn starttls(&mut self, arg: &str, out: &mut Vec<u8>) -> Option<Step> {
        if !arg.is_empty() {
            self.error(out, "501 5.5.4 Syntax: STARTTLS (no parameters)");
        } else if self.tls == Tls::Active {
            self.error(out, "503 5.5.1 TLS is already active");
        } else if self.tls == Tls::Unavailable {
            self.error(out, "454 4.7.0 TLS not available");
        } else if matches!(self.state, State::Transaction) {
            self.error(
                out,
                "503 5.5.1 STARTTLS inside a mail transaction: RSET first",
            );
        } else {
            reply(out, "220 2.0.0 Ready to start TLS");
            self.state = State::Waiting(Pending::Handshake);
            return Some(Step::StartTls);
        }
        None
    }

    fn reset_transaction(&mut self) {
        self.from.clear();
        self.recipients.clear();
        self.declared_size = None;
        self.data = Vec::new();
        self.data_too_big = false;
        self.data_no_memory = false;
        self.chunked = false;
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        if line.contains(&0) {
            self.error(out, "500 5.5.2 NUL byte in command");
            return None;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            self.error(out, "500 5.5.2 Command is not valid UTF-8");
            return None;
        };
        let (verb, arg) = match text.find(' ') {
            Some(i) => (&text[..i], text[i + 1..].trim()),
            None => (text.trim(), ""),
        };
        let lmtp = self.dialect == Dialect::Lmtp;
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if lmtp => self.error(out, "500 5.5.1 This is LMTP: greet with LHLO"),
            "LHLO" if !lmtp => self.error(out, "500 5.5.2 Command not recognized"),
            "EHLO" | "HELO" | "LHLO" if arg.is_empty() => {
                self.error(out, "501 5.5.4 Syntax: EHLO hostname")
            }
            "EHLO" | "LHLO" => {
                self.helo = arg.to_owned();
                self.reset_transaction();
                self.state = State::Ready;
                let h = &self.hostname;
                let max = self.limits.message_bytes_max;
                let starttls = if self.tls == Tls::Offered {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                out.extend_from_slice(
                    format!(
                        "250-{h} greets {arg}\r\n250-PIPELINING\r\n250-SIZE {max}\r\n250-8BITMIME\r\n\
                         250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n{starttls}250 HELP\r\n"
                    )
                    .as_bytes(),
                );
            }
            "HELO" => {
                self.helo = arg.to_owned();
                self.reset_transaction();
                self.state = State::Ready;
                reply(out, &format!("250 {}", self.hostname));
            }
            "MAIL" => self.mail(arg, out),
            "RCPT" => return self.rcpt(arg, out),
            "DATA" => {
                if !arg.is_empty() {
                    self.error(out, "501 5.5.4 DATA takes no argument");
                } else if self.state == State::Connected || self.state == State::Ready {
                    self.error(out, "503 5.5.1 Need MAIL and RCPT first");
                } else if self.chunked {
                    self.error(out, "503 5.5.1 DATA after BDAT: send the rest with BDAT");
                } else if self.recipients.is_empty() {
                    self.error(out, "554 5.5.1 No valid recipients");
                } else {
                    reply(out, "354 Start mail input; end with <CRLF>.<CRLF>");
                    self.state = State::Data;
                    self.data_at_line_start = true;
                }
            }
            "BDAT" => return self.bdat(arg, out),
            "RSET" => {
                self.reset_transaction();
                if self.state != State::Connected {
                    self.state = State::Ready;
                }
                reply(out, "250 2.0.0 Ok");
            }
            "NOOP" => reply(out, "250 2.0.0 Ok"),
            "QUIT" => {
                reply(
                    out,
                    &format!("221 2.0.0 {} closing connection", self.hostname),
                );
                self.state = State::Closed;
                return Some(Step::Close);
            }
            "VRFY" => reply(
                out,
                "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
            ),
            "EXPN" => self.error(out, "502 5.5.1 EXPN not supported"),
            "HELP" => reply(
                out,
                if lmtp {
                    "214 2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"
                } else {
                    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"
                },
            ),
            "STARTTLS" => return self.starttls(arg, out),
            "AUTH" | "ETRN" | "TURN" => self.error(out, "502 5.5.1 Command not implemented"),
            _ => self.error(out, "500 5.5.2 Command not recognized"),
        }
        None
    }

    fn mail(&mut self, arg: &str, out: &mut Vec<u8>) {
        match self.state {
            State::Connected => return self.error(out, "503 5.5.1 Send EHLO or HELO first"),
            State::Transaction => return self.error(out, "503 5.5.1 Nested MAIL command"),
            _ => {}
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.error(out, "501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let (path, params) = split_path(rest.trim_start());
        let from = match parse_path(path, true) {
            Ok(from) => from,
            Err(_) => return self.error(out, "501 5.1.7 Bad sender address syntax"),
        };
        let mut declared = None;
        for param in params.split_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(size) if size > self.limits.message_bytes_max as u64 => {
                        return self.error(
                            out,
                            "552 5.3.4 Message size exceeds fixed maximum message size",
                        );
                    }
                    Ok(size) => declared = Some(size),
                    Err(_) => return self.error(out, "501 5.5.4 Bad SIZE value"),
                },
                "BODY" => {
                    if !matches!(value.to_ascii_uppercase().as_str(), "7BIT" | "8BITMIME") {
                        return self.error(out, "501 5.5.4 BODY must be 7BIT or 8BITMIME");
                    }
                }
                "SMTPUTF8" => {}
                _ => return self.error(out, "555 5.5.4 Unsupported MAIL parameter"),
            }
        }
        self.reset_transaction();
        self.from = from.map(|m| m.to_string()).unwrap_or_default();
        self.declared_size = declared;
        self.state = State::Transaction;
        reply(out, "250 2.1.0 Ok");
    }

    fn rcpt(&mut self, arg: &str, out: &mut Vec<u8>) -> Option<Step> {
        if self.state != State::Transaction {
            self.error(out, "503 5.5.1 Need MAIL before RCPT");
            return None;
        }
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            self.error(out, "501 5.5.4 Syntax: RCPT TO:<address>");
            return None;
        };
        let (path, params) = split_path(rest.trim_start());
        if !params.trim().is_empty() {
            self.error(out, "555 5.5.4 Unsupported RCPT parameter");
            return None;
        }
        let mailbox = match parse_path(path, false) {
            Ok(Some(mailbox)) => mailbox,
            _ => {
                self.error(out, "501 5.1.3 Bad recipient address syntax");
                return None;
            }
        };
        if self.recipients.len() >= self.limits.recipients_max {
            // Not counted as an error: the client is expected to send the rest in another transaction.
            reply(out, "452 4.5.3 Too many recipients");
            return None;
        }
        if !self
            .local_domains
            .iter()
            .any(|d| *d == mailbox.domain_lowercase())
        {
            self.error(out, "550 5.7.1 Relaying denied: not a local domain");
            return None;
        }
        self.pending_recipient = Some(mailbox.clone());
        self.state = State::Waiting(Pending::Recipient);
        Some(Step::CheckRecipient(mailbox))
    }

    /// The size the transaction's MAIL declared (SIZE=), if it did: what a recipient's quota
    /// check at RCPT counts on.
    pub fn declared_size(&self) -> Option<u64> {
        self.declared_size
    }

    /// The answer to [`Step::CheckRecipient`].
    pub fn recipient_checked(&mut self, check: RecipientCheck, out: &mut Vec<u8>) {
        if self.state != State::Waiting(Pending::Recipient) {
            return;
        }
        self.state = State::Transaction;
        let Some(mailbox) = self.pending_recipient.take() else {
            return;
        };
        match check {
            RecipientCheck::Local => {
                if !self.recipients.contains(&mailbox) {
                    self.recipients.push(mailbox);
                }
                reply(out, "250 2.1.5 Ok");
            }
            RecipientCheck::Unknown => self.error(out, "550 5.1.1 No such user here"),
            RecipientCheck::OverQuota => reply(
                out,
                &format!("552 5.2.2 <{mailbox}> Mailbox full: over quota"),
            ),
            RecipientCheck::Unavailable => {
                reply(out, "451 4.3.0 User directory unavailable, try again later")
            }
        }
    }

    /// Consumes message data; returns a step when the message ends.
    ///
    /// Only a line that follows a CRLF and starts with `.` is special (the terminator, or a
    /// dot to remove), so the data between two such places is found with one `memmem` search
    /// for CRLF + `.` and moved in one copy, not line by line.
    fn step_data(&mut self, out: &mut Vec<u8>) -> Option<Step> {
        loop {
            let rest = &self.input[self.consumed..];
            if rest.is_empty() {
                self.compact();
                return Some(Step::NeedInput);
            }
            if self.data_at_line_start {
                if rest[0] == b'.' {
                    if rest.starts_with(b".\r\n") {
                        self.consumed += 3;
                        return self.end_of_data(out);
                    }
                    if b".\r\n".starts_with(rest) {
                        // Maybe the terminator: wait for the rest of it.
                        self.compact();
                        return Some(Step::NeedInput);
                    }
                    // A stuffed dot: drop it; the line's text follows.
                    self.consumed += 1;
                }
                self.data_at_line_start = false;
                continue;
            }
            match memchr::memmem::find(rest, b"\r\n.") {
                Some(at) => {
                    // Up to and with the CRLF; the dot starts the next line.
                    self.append_data(at + 2);
                    self.data_at_line_start = true;
                }
                None => {
                    // All of it, but a trailing CR: its LF (and a dot) may follow.
                    let available = rest.len();
                    let take = if rest.ends_with(b"\r") {
                        available - 1
                    } else {
                        available
                    };
                    let at_line_start = rest[..take].ends_with(b"\r\n");
                    self.append_data(take);
                    self.data_at_line_start = at_line_start;
                    if take < available {
                        self.compact();
                        return Some(Step::NeedInput);
                    }
                }
            }
        }
    }

    /// `BDAT size [LAST]` (RFC 3030): the chunk's bytes follow at once, so they are read even
    /// when the chunk will be refused; a size that cannot be read leaves no way to find the
    /// next command, so the session closes.
    fn bdat(&mut self, arg: &str, out: &mut Vec<u8>) -> Option<Step> {
        let mut words = arg.split_ascii_whitespace();
        let size = words
            .next()
            .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse::<u64>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(remaining), Some(last), None) = (size, last, words.next()) else {
            reply(out, "501 5.5.4 Syntax: BDAT size [LAST]");
            reply(
                out,
                &format!("421 4.5.4 {} Chunk size unreadable, closing", self.hostname),
            );
            self.state = State::Closed;
            return Some(Step::Close);
        };
        let refused = match self.state {
            State::Connected | State::Ready => Some("503 5.5.1 Need MAIL and RCPT first"),
            _ if self.recipients.is_empty() => Some("554 5.5.1 No valid recipients"),
            _ => None,
        };
        if refused.is_none() {
            self.chunked = true;
        }
        self.state = State::Chunk(Chunk {
            remaining,
            last,
            refused,
        });
        None
    }

    /// Consumes a `BDAT` chunk's bytes; answers it once they are all in.
    fn step_chunk(&mut self, chunk: Chunk, out: &mut Vec<u8>) -> Option<Step> {
        let available = (self.input.len() - self.consumed) as u64;
        let take = available.min(chunk.remaining) as usize;
        if chunk.refused.is_none() {
            self.append_data(take);
        } else {
            self.consumed += take;
        }
        let remaining = chunk.remaining - take as u64;
        if remaining > 0 {
            self.state = State::Chunk(Chunk { remaining, ..chunk });
            self.compact();
            return Some(Step::NeedInput);
        }
        if let Some(refusal) = chunk.refused {
            // Nothing of the transaction is kept: a refused chunk fails the whole message.
            // Back to before MAIL (an empty HELO name is refused, so none means not greeted).
            self.state = if self.helo.is_empty() {
                State::Connected
            } else {
                State::Ready
            };
            self.reset_transaction();
            self.error(out, refusal);
            return None;
        }
        if chunk.last {
            return self.end_of_data(out);
        }
        self.state = State::Transaction;
        if self.data_too_big || self.data_no_memory {
            // Keep reading chunks (the client may have pipelined them); refuse at LAST.
            reply(
                out,
                "250 2.0.0 Chunk received (the message will be refused)",
            );
        } else {
            reply(
                out,
                &format!("250 2.0.0 {} octets received", self.data.len()),
            );
        }
        None
    }

    /// Bytes this session holds of what the client sent: unread input and the message so far
    /// (what the node's budget for messages in transfer counts).
    pub fn buffered_bytes(&self) -> usize {
        self.input.len() + self.data.len()
    }

    /// The node has no memory left for this message: it is dropped as it arrives, and the
    /// client gets 451 4.3.1 at its end (to try again later). Nothing else changes.
    pub fn refuse_for_memory(&mut self) {
        if self.in_data() || self.state == State::Transaction {
            self.data_no_memory = true;
            self.data = Vec::new();
        }
    }

    /// Moves `len` bytes from input to the message, minding the size limit.
    fn append_data(&mut self, len: usize) {
        let bytes = &self.input[self.consumed..self.consumed + len];
        if self.data_no_memory {
            // Dropped as it comes: the answer at its end is 451 4.3.1.
        } else if !self.data_too_big {
            if self.data.len() + bytes.len() > self.limits.message_bytes_max {
                self.data_too_big = true;
                self.data = Vec::new();
            } else {
                self.data.extend_from_slice(bytes);
            }
        }
        if len > 0 {
            self.data_at_line_start = false;
        }
        self.consumed += len;
    }

    /// `None` when the message was refused and the session goes on with the next command.
    fn end_of_data(&mut self, out: &mut Vec<u8>) -> Option<Step> {
        self.state = State::Ready;
        // LMTP (RFC 2033 4.2): one reply per accepted recipient, refusals included.
        let replies = match self.dialect {
            Dialect::Smtp => 1,
            Dialect::Lmtp => self.recipients.len().max(1),
        };
        if self.data_no_memory {
            self.reset_transaction();
            for _ in 0..replies {
                reply(
                    out,
                    "451 4.3.1 Insufficient system storage for the message now, try again later",
                );
            }
            return None;
        }
        if self.data_too_big {
            self.reset_transaction();
            for _ in 0..replies {
                reply(
                    out,
                    "552 5.3.4 Message size exceeds fixed maximum message size",
                );
            }
            return None;
        }
        self.state = State::Waiting(Pending::Delivery);
        Some(Step::Deliver(Envelope {
            helo: self.helo.clone(),
            from: std::mem::take(&mut self.from),
            recipients: std::mem::take(&mut self.recipients),
            data: std::mem::take(&mut self.data),
            tls: self.tls == Tls::Active,
        }))
    }

    /// The answer to [`Step::Deliver`]: a 250 only when the message is durable.
    pub fn delivered(&mut self, outcome: DeliveryOutcome, out: &mut Vec<u8>) {
        if self.state != State::Waiting(Pending::Delivery) {
            return;
        }
        self.state = State::Ready;
        self.reset_transaction();
        match outcome {
            DeliveryOutcome::Stored(id) => reply(out, &format!("250 2.0.0 Ok: queued as {id}")),
            DeliveryOutcome::NoSpace => reply(out, "452 4.3.1 Insufficient system storage"),
            DeliveryOutcome::Failed => {
                reply(out, "451 4.3.0 Local error in processing, try again later")
            }
            DeliveryOutcome::NoSuchUser => reply(out, "550 5.1.1 No such user here"),
            DeliveryOutcome::OverQuota => reply(out, "552 5.2.2 Mailbox full: over quota"),
        }
    }

    /// The answer to [`Step::Deliver`] with an outcome per recipient of the envelope, in its
    /// order. LMTP replies to each (a 250 only for a durable copy); SMTP, which has one reply
    /// for the message, answers with the worst of them.
    pub fn delivered_each(
        &mut self,
        recipients: &[Mailbox],
        outcomes: &[DeliveryOutcome],
        out: &mut Vec<u8>,
    ) {
        if self.dialect == Dialect::Smtp {
            let worst = outcomes
                .iter()
                .max_by_key(|o| o.severity())
                .cloned()
                .unwrap_or(DeliveryOutcome::Failed);
            return self.delivered(worst, out);
        }
        if self.state != State::Waiting(Pending::Delivery) {
            return;
        }
        self.state = State::Ready;
        self.reset_transaction();
        for (i, recipient) in recipients.iter().enumerate() {
            match outcomes.get(i) {
                Some(DeliveryOutcome::Stored(id)) => reply(
                    out,
                    &format!("250 2.0.0 <{recipient}> Ok: delivered as {id}"),
                ),
                Some(DeliveryOutcome::NoSpace) => reply(
                    out,
                    &format!("452 4.3.1 <{recipient}> Insufficient system storage"),
                ),
                Some(DeliveryOutcome::NoSuchUser) => {
                    reply(out, &format!("550 5.1.1 <{recipient}> No such user here"))
                }
                Some(DeliveryOutcome::OverQuota) => reply(
                    out,
                    &format!("552 5.2.2 <{recipient}> Mailbox full: over quota"),
                ),
                Some(DeliveryOutcome::Failed) | None => reply(
                    out,
                    &format!("451 4.3.0 <{recipient}> Local error in processing, try again later"),
                ),
            }
        }
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Splits `<path> params` at the closing `>` (or the first space for a bare address).
fn split_path(text: &str) -> (&str, &str) {
    if text.starts_with('<') {
        match text.find('>') {
            Some(end) => (&text[..=end], &text[end + 1..]),
            None => (text, ""),
        }
    } else {
        match text.find(' ') {
            Some(i) => (&text[..i], &text[i..]),
            None => (text, ""),
        }
    }
}

/// The `Received:` header the node prepends (RFC 5321 §4.4); `date` is RFC 5322 text. It names
/// no recipient, so one stored copy serves every recipient's mailbox.
/// `with` names the protocol ([`Dialect::received_with`]).
pub fn received_header(
    helo: &str,
    peer: &str,
    hostname: &str,
    with: &str,
    id: &str,
    date: &str,
) -> String {
    let helo: String = helo.chars().filter(|c| !c.is_control()).take(255).collect();
    format!("Received: from {helo} ({peer})\r\n\tby {hostname} (porcupine) with {with} id {id};\r\n\t{date}\r\n")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn a_message_refused_for_memory_is_read_to_its_end_and_answered_451() {
        let mut s = SmtpSession::new(SmtpLimits::default(), "mx", &["localhost".into()]);
        let mut out = Vec::new();
        s.push(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@localhost>\r\nDATA\r\nline one\r\n");
        loop {
            match s.step(&mut out) {
                Step::CheckRecipient(_) => s.recipient_checked(RecipientCheck::Local, &mut out),
                Step::NeedInput => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(s.buffered_bytes() > 0);
        s.refuse_for_memory();
        s.push(b"line two\r\n.\r\nNOOP\r\n");
        assert_eq!(s.step(&mut out), Step::NeedInput);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("451 4.3.1"), "{text}");
        assert!(
            text.ends_with("250 2.0.0 Ok\r\n"),
            "the session goes on: {text}"
        );
        assert_eq!(s.buffered_bytes(), 0);
    }
}
