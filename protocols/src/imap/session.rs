//! The IMAP server session (RFC 3501 IMAP4rev1 and RFC 9051 IMAP4rev2, with LITERAL+, SASL-IR,
//! ID, ENABLE, IDLE, NAMESPACE, UNSELECT, UIDPLUS, MOVE, CHILDREN, SPECIAL-USE, LIST-EXTENDED,
//! LIST-STATUS, ESEARCH, SEARCHRES, CONDSTORE, QRESYNC, BINARY, STATUS=SIZE and APPENDLIMIT),
//! sans-IO.
//!
//! A client speaks IMAP4rev1 until it sends `ENABLE IMAP4rev2`; then SEARCH answers with
//! ESEARCH, SELECT sends the mailbox's LIST line and no RECENT. After `ENABLE QRESYNC`
//! expunges are announced as `VANISHED` UID sets, and SELECT may carry what the client knew.
//! No history of expunges is kept: `VANISHED (EARLIER)` names every UID the client may hold
//! (its known UIDs, or all below UIDNEXT) that is not in the mailbox now, which RFC 7162
//! allows (UIDs reported that the client never had are ignored by it).
//!
//! Same shape as the SMTP and POP3 sessions: `push` bytes, call `step` until
//! [`Step::NeedInput`], and answer each request step with the matching method (the step says
//! which). Commands are run one at a time, in order: a pipelining client's next command waits
//! in the framer while the session waits for an answer.
//!
//! The session keeps its view of the selected mailbox (message numbers, UIDs, flags) and
//! changes it only where IMAP allows: new mail, expunges made elsewhere and other sessions'
//! flag changes are learnt from a [`Step::Poll`] at NOOP, CHECK, IDLE and after EXPUNGE, never
//! while answering FETCH, STORE or SEARCH by message number; EXISTS never goes down.

use super::command::*;
use super::framer::{FrameError, FrameLimits, Framed, Framer};
use super::mime;
use super::parser::{self, ParseError};
use super::sets::{absent_in, ordered_set, ranges as uid_ranges, uid_set, write_ranges};
use super::structure::Described;
pub use crate::security::{Plaintext, Tls};

/// The session's limits.
#[derive(Clone, Debug)]
pub struct ImapLimits {
    pub frame: FrameLimits,
    /// Bad commands before the session is closed.
    pub errors_max: u32,
    /// Messages loaded from storage per request while answering FETCH or SEARCH.
    pub load_batch: usize,
}

impl Default for ImapLimits {
    fn default() -> Self {
        Self {
            frame: FrameLimits::default(),
            errors_max: 20,
            load_batch: 64,
        }
    }
}

/// One message of a mailbox as a session sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageView {
    pub uid: u32,
    /// Flags and keywords, without `\Recent`.
    pub flags: Vec<Flag>,
    pub modseq: u64,
    pub size: u32,
    /// INTERNALDATE, Unix seconds.
    pub internal_date: i64,
}

/// A mailbox's state: its identity, its messages in UID order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub uid_validity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub messages: Vec<MessageView>,
}

/// One mailbox of the user, for LIST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folder {
    pub name: String,
    pub subscribed: bool,
    /// RFC 6154 attribute (`\Sent`, …).
    pub special_use: Option<String>,
}

/// A mailbox's counts, for STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub messages: u32,
    pub unseen: u32,
    pub uid_next: u32,
    pub uid_validity: u32,
    pub highest_modseq: u64,
    pub size: u64,
    /// Messages flagged `\Deleted` (IMAP4rev2 STATUS DELETED).
    pub deleted: u32,
}

/// Why a mailbox operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxError {
    NoSuchMailbox,
    AlreadyExists,
    /// INBOX cannot be deleted, a mailbox cannot be renamed into itself, …
    NotAllowed(String),
    OverQuota,
    /// Storage could not be reached or failed; try again.
    Unavailable,
}

/// A user's quota: (used, limit) of each resource that has a limit; storage in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaView {
    pub storage: Option<(u64, u64)>,
    pub messages: Option<(u64, u64)>,
}

impl QuotaView {
    /// The resource list of a `* QUOTA` line (storage in units of 1024 octets, RFC 9208 5.1:
    /// usage rounded up, the limit down).
    fn resources(&self) -> String {
        let mut items = Vec::new();
        if let Some((used, limit)) = self.storage {
            items.push(format!("STORAGE {} {}", used.div_ceil(1024), limit / 1024));
        }
        if let Some((used, limit)) = self.messages {
            items.push(format!("MESSAGE {used} {limit}"));
        }
        items.join(" ")
    }
}

/// Operations on the user's set of mailboxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxOp {
    Create(String),
    Delete(String),
    Rename { from: String, to: String },
    Subscribe(String, bool),
}

/// The answer to [`Step::Login`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    Ok,
    BadCredentials,
    Unavailable,
}

/// What the session needs from the node.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    NeedInput,
    /// Check these credentials: answer with `logged_in`.
    Login {
        user: String,
        password: String,
    },
    /// The user's mailboxes: answer with `folders`.
    Folders,
    /// These mailboxes' counts: answer with `counts` (in the same order).
    Counts {
        mailboxes: Vec<String>,
    },
    /// Open this mailbox: answer with `selected`.
    Select {
        mailbox: String,
        read_only: bool,
    },
    /// The selected mailbox's current state: answer with `polled`.
    Poll,
    /// These messages' bytes (UIDs of the selected mailbox): answer with `loaded`.
    Load {
        uids: Vec<u32>,
    },
    /// These messages' descriptions ([`super::structure`]: ENVELOPE and BODYSTRUCTURE, made
    /// when each was stored, or now for one stored before): answer with `loaded`.
    Describe {
        uids: Vec<u32>,
    },
    /// Change these messages' flags: answer with `stored`.
    Store {
        uids: Vec<u32>,
        action: StoreAction,
        flags: Vec<Flag>,
        unchanged_since: Option<u64>,
    },
    /// Remove these messages for good: answer with `expunged`.
    Expunge {
        uids: Vec<u32>,
    },
    /// Store a new message in a mailbox: answer with `appended`.
    Append {
        mailbox: String,
        flags: Vec<Flag>,
        date: Option<i64>,
        message: Vec<u8>,
    },
    /// Copy (or move) these messages of the selected mailbox: answer with `copied`.
    Copy {
        uids: Vec<u32>,
        mailbox: String,
        moving: bool,
    },
    /// Create, delete, rename, (un)subscribe a mailbox: answer with `mailbox_done`.
    Mailbox(MailboxOp),
    /// The user's quota (RFC 9208; one quota root, `""`, for all their mailboxes): answer
    /// with `quota_told`.
    Quota,
    /// IDLE began (`+ idling` is in the output): read input, and call `poll_idle` now and
    /// then (about once a second) to learn of changes.
    Idle,
    /// STARTTLS was accepted (its OK is in the output): write the output, run the TLS
    /// handshake, then call `tls_started` (or `tls_failed`).
    StartTls,
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotAuthenticated,
    Authenticated,
    Selected,
    Closed,
}

/// A selected mailbox as this session knows it.
#[derive(Debug)]
struct Selected {
    name: String,
    read_only: bool,
    uid_validity: u32,
    uid_next: u32,
    highest_modseq: u64,
    /// In message-number order (which is UID order).
    messages: Vec<MessageView>,
}

/// What a FETCH needs of each message besides its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// Its description only (ENVELOPE, BODYSTRUCTURE, BODY).
    Description,
    /// Its bytes.
    Bytes,
}

/// FETCH in progress.
#[derive(Debug)]
struct FetchJob {
    tag: String,
    items: Vec<FetchItem>,
    /// Message numbers (1-based) to answer, in order.
    msns: Vec<usize>,
    next: usize,
    needs: Needs,
    sets_seen: bool,
    /// UIDs this fetch marked `\Seen` (their FETCH reports the new flags).
    newly_seen: Vec<u32>,
}

/// SEARCH in progress.
#[derive(Debug)]
struct SearchJob {
    tag: String,
    uid: bool,
    key: SearchKey,
    esearch: Option<Vec<SearchReturn>>,
    candidates: Vec<usize>,
    next: usize,
    found: Vec<usize>,
}

/// What the session waits for.
#[derive(Debug)]
enum Waiting {
    Login {
        tag: String,
    },
    Folders {
        tag: String,
        command: Command,
    },
    ListStatus {
        tag: String,
        lines: Vec<(Folder, Vec<u8>)>,
        items: Vec<StatusItem>,
        lsub: bool,
    },
    Status {
        tag: String,
        mailbox: String,
        items: Vec<StatusItem>,
    },
    Select {
        tag: String,
        mailbox: String,
        read_only: bool,
        qresync: Option<Resync>,
    },
    Poll {
        tag: Option<String>,
        done: String,
    },
    FetchLoad(FetchJob),
    FetchSeen(FetchJob, Vec<Option<Vec<u8>>>),
    Search(SearchJob),
    Store {
        tag: String,
        uid: bool,
        silent: bool,
        unchanged_since: Option<u64>,
        /// Messages of the set that did not qualify for UNCHANGEDSINCE.
        modified: Vec<u32>,
    },
    Expunge {
        tag: String,
        silent_then_close: bool,
    },
    Append {
        tag: String,
        /// Into the selected mailbox: the new message is announced before the tagged OK.
        into_selected: bool,
    },
    Copy {
        tag: String,
        moving: bool,
        into_selected: bool,
    },
    Mailbox {
        tag: String,
        what: &'static str,
    },
    Quota {
        tag: String,
        /// GETQUOTAROOT's mailbox (`None`: GETQUOTA of the root `""`).
        root_of: Option<String>,
    },
    /// `+ ` was sent for AUTHENTICATE PLAIN.
    AuthenticateData {
        tag: String,
    },
    Idle {
        tag: String,
    },
    /// A poll started from within IDLE.
    IdlePoll {
        tag: String,
    },
}

/// The IMAP session (see the module comment).
#[derive(Debug)]
pub struct ImapSession {
    limits: ImapLimits,
    framer: Framer,
    state: State,
    waiting: Option<Waiting>,
    selected: Option<Selected>,
    user: Option<String>,
    tls: Tls,
    plaintext: Plaintext,
    condstore: bool,
    /// `ENABLE QRESYNC` was sent: expunges are announced as VANISHED.
    qresync: bool,
    /// `ENABLE IMAP4rev2` was sent.
    rev2: bool,
    /// The UIDs of the last `SEARCH RETURN (SAVE)` in the selected mailbox (`$`).
    saved: Vec<u32>,
    errors: u32,
    /// `NO` and `BAD` replies written, for the node's metrics.
    errors_sent: u64,
    /// APPENDLIMIT to advertise.
    append_limit: usize,
    /// Lines of an IDLE that arrived before its DONE (discarded).
    idle_line: Vec<u8>,
}

const PERMANENT_FLAGS: &str = "(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)";
const FLAGS: &str = "(\\Answered \\Flagged \\Deleted \\Seen \\Draft)";

fn status_line(out: &mut Vec<u8>, tag: &str, status: &str, text: &str) {
    out.extend_from_slice(tag.as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.as_bytes());
    out.push(b' ');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_flags(out: &mut Vec<u8>, flags: &[Flag]) {
    out.push(b'(');
    for (i, flag) in flags.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(flag.as_str().as_bytes());
    }
    out.push(b')');
}

/// `dd-Mon-yyyy hh:mm:ss +0000`.
pub fn internal_date(unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{d:02}-{}-{y:04} {:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Does `name` match the LIST `pattern` (`*` anything, `%` anything but the separator)?
fn list_matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| list_matches(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != b'/')
            .any(|i| list_matches(rest, &name[i..])),
        Some((&p, rest)) => name
            .split_first()
            .is_some_and(|(&n, name)| p.eq_ignore_ascii_case(&n) && list_matches(rest, name)),
    }
}

impl ImapSession {
    pub fn new(limits: ImapLimits) -> Self {
        let append_limit = limits.frame.literal_bytes_max;
        Self {
            framer: Framer::new(limits.frame.clone()),
            limits,
            state: State::NotAuthenticated,
            waiting: None,
            selected: None,
            user: None,
            tls: Tls::Unavailable,
            plaintext: Plaintext::Allowed,
            condstore: false,
            qresync: false,
            rev2: false,
            saved: Vec::new(),
            errors: 0,
            errors_sent: 0,
            append_limit,
            idle_line: Vec::new(),
        }
    }

    /// The connection's protection, before the greeting (see the POP3 session).
    pub fn set_security(&mut self, tls: Tls, plaintext: Plaintext) {
        self.tls = tls;
        self.plaintext = if tls == Tls::Active {
            Plaintext::Allowed
        } else {
            plaintext
        };
    }

    /// The logged-in user.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The selected mailbox's name.
    pub fn selected_mailbox(&self) -> Option<&str> {
        self.selected.as_ref().map(|s| s.name.as_str())
    }

    /// Whether the session is in IDLE (the edge then calls `poll_idle` now and then).
    pub fn is_idling(&self) -> bool {
        matches!(self.waiting, Some(Waiting::Idle { .. }))
    }

    pub fn errors_sent(&self) -> u64 {
        self.errors_sent
    }

    /// Bytes received but not yet handled (the edge stops reading while this is large).
    pub fn buffered_bytes(&self) -> usize {
        self.framer.buffered()
    }

    fn capabilities(&self) -> String {
        let mut caps = String::from(
            "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE \
             CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS ESEARCH SEARCHRES CONDSTORE QRESYNC \
             BINARY STATUS=SIZE QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE",
        );
        caps.push_str(&format!(" APPENDLIMIT={}", self.append_limit));
        if self.tls == Tls::Offered && self.state == State::NotAuthenticated {
            caps.push_str(" STARTTLS");
        }
        if self.state == State::NotAuthenticated {
            if self.plaintext == Plaintext::Allowed {
                caps.push_str(" AUTH=PLAIN");
            } else {
                caps.push_str(" LOGINDISABLED");
            }
        }
        caps
    }

    pub fn greeting(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!(
                "* OK [CAPABILITY {}] IMAP server ready (porcupine)\r\n",
                self.capabilities()
            )
            .as_bytes(),
        );
    }

    /// A goodbye before the connection closes (shutdown, idle timeout).
    pub fn goodbye(&mut self, out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(format!("* BYE {text}\r\n").as_bytes());
        self.state = State::Closed;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.framer.push(bytes);
    }

    /// The TLS handshake after [`Step::StartTls`] succeeded: what was sent in clear after
    /// STARTTLS is thrown away, and passwords are welcome.
    pub fn tls_started(&mut self) {
        self.framer = Framer::new(self.limits.frame.clone());
        self.tls = Tls::Active;
        self.plaintext = Plaintext::Allowed;
    }

    pub fn tls_failed(&mut self) {
        self.state = State::Closed;
    }

    fn no(&mut self, out: &mut Vec<u8>, tag: &str, text: &str) {
        status_line(out, tag, "NO", text);
        self.errors_sent += 1;
    }

    fn bad(&mut self, out: &mut Vec<u8>, tag: &str, text: &str) {
        status_line(out, tag, "BAD", text);
        self.errors_sent += 1;
        self.errors += 1;
        if self.errors >= self.limits.errors_max {
            out.extend_from_slice(b"* BYE too many bad commands\r\n");
            self.state = State::Closed;
        }
    }

    /// Runs commands until one needs the node (or input runs out).
    pub fn step(&mut self, out: &mut Vec<u8>) -> Step {
        loop {
            if self.state == State::Closed {
                return Step::Close;
            }
            match &self.waiting {
                Some(Waiting::Idle { .. }) => return self.idle_input(out),
                Some(Waiting::AuthenticateData { .. }) => {}
                Some(_) => return Step::NeedInput,
                None => {}
            }
            let Some(framed) = self.framer.next_frame() else {
                return Step::NeedInput;
            };
            let step = match framed {
                Framed::Continue { len, .. } => {
                    self.framer.accept_literal();
                    let _ = len;
                    out.extend_from_slice(b"+ go ahead\r\n");
                    None
                }
                Framed::Error { tag, error } => {
                    let tag = tag.unwrap_or_else(|| "*".into());
                    match error {
                        FrameError::LiteralTooBig => {
                            self.no(out, &tag, "[TOOBIG] literal too large");
                        }
                        FrameError::LineTooLong => self.bad(out, &tag, "line too long"),
                        FrameError::CommandTooBig => {
                            self.no(out, &tag, "[TOOBIG] command too large")
                        }
                        FrameError::TooManyLiterals => self.bad(out, &tag, "too many literals"),
                    }
                    None
                }
                Framed::Command(bytes) => {
                    if let Some(Waiting::AuthenticateData { tag }) = self.waiting.take() {
                        self.authenticate_data(&tag, &bytes, out)
                    } else {
                        self.command(&bytes, out)
                    }
                }
            };
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// Input while idling: only `DONE` (anything else ends the IDLE with BAD).
    fn idle_input(&mut self, out: &mut Vec<u8>) -> Step {
        let Some(framed) = self.framer.next_frame() else {
            return Step::NeedInput;
        };
        let Some(Waiting::Idle { tag }) = self.waiting.take() else {
            return Step::NeedInput;
        };
        match framed {
            Framed::Command(line) if line.trim_ascii().eq_ignore_ascii_case(b"DONE") => {
                status_line(out, &tag, "OK", "IDLE terminated");
            }
            _ => self.bad(out, &tag, "expected DONE"),
        }
        self.idle_line.clear();
        self.step(out)
    }

    /// While idling: ask the node for the mailbox's state (call about once a second).
    pub fn poll_idle(&mut self) -> Option<Step> {
        match self.waiting.take() {
            Some(Waiting::Idle { tag }) if self.selected.is_some() => {
                self.waiting = Some(Waiting::IdlePoll { tag });
                Some(Step::Poll)
            }
            other => {
                self.waiting = other;
                None
            }
        }
    }

    fn command(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        let tagged = match parser::parse(bytes) {
            Ok(tagged) => tagged,
            Err(ParseError::NoTag) => {
                self.bad(out, "*", "no tag");
                return None;
            }
            Err(ParseError::Unknown { tag, name }) => {
                self.bad(out, &tag, &format!("unknown command {name}"));
                return None;
            }
            Err(ParseError::Syntax { tag, what }) => {
                if what == "BADCHARSET" {
                    self.no(
                        out,
                        &tag,
                        "[BADCHARSET (UTF-8 US-ASCII)] charset not supported",
                    );
                } else {
                    self.bad(out, &tag, &format!("syntax: {what}"));
                }
                return None;
            }
        };
        let Tagged { tag, command } = tagged;
        use Command as C;
        // Commands valid in any state.
        match &command {
            C::Capability => {
                out.extend_from_slice(
                    format!("* CAPABILITY {}\r\n", self.capabilities()).as_bytes(),
                );
                status_line(out, &tag, "OK", "CAPABILITY completed");
                return None;
            }
            C::Noop | C::Check => {
                if self.state == State::Selected {
                    self.waiting = Some(Waiting::Poll {
                        tag: Some(tag),
                        done: if command == C::Noop {
                            "NOOP completed".into()
                        } else {
                            "CHECK completed".into()
                        },
                    });
                    return Some(Step::Poll);
                }
                status_line(out, &tag, "OK", "NOOP completed");
                return None;
            }
            C::Logout => {
                out.extend_from_slice(b"* BYE logging out\r\n");
                status_line(out, &tag, "OK", "LOGOUT completed");
                self.state = State::Closed;
                return Some(Step::Close);
            }
            C::Id => {
                out.extend_from_slice(b"* ID (\"name\" \"porcupine\")\r\n");
                status_line(out, &tag, "OK", "ID completed");
                return None;
            }
            _ => {}
        }
        match self.state {
            State::NotAuthenticated => self.not_authenticated(tag, command, out),
            State::Authenticated | State::Selected => self.authenticated(tag, command, out),
            State::Closed => Some(Step::Close),
        }
    }

    fn not_authenticated(
        &mut self,
        tag: String,
        command: Command,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        match command {
            Command::StartTls if self.tls == Tls::Offered => {
                status_line(out, &tag, "OK", "begin TLS negotiation now");
                Some(Step::StartTls)
            }
            Command::StartTls => {
                self.bad(out, &tag, "STARTTLS not available");
                None
            }
            Command::Login { user, password } => {
                if self.plaintext == Plaintext::Refused {
                    self.no(out, &tag, "[PRIVACYREQUIRED] use STARTTLS first");
                    return None;
                }
                self.waiting = Some(Waiting::Login { tag });
                Some(Step::Login { user, password })
            }
            Command::Authenticate { mechanism, initial } => {
                if mechanism != "PLAIN" {
                    self.no(out, &tag, "[CANNOT] only AUTHENTICATE PLAIN is supported");
                    return None;
                }
                if self.plaintext == Plaintext::Refused {
                    self.no(out, &tag, "[PRIVACYREQUIRED] use STARTTLS first");
                    return None;
                }
                match initial {
                    Some(response) => self.plain_response(&tag, &response, out),
                    None => {
                        out.extend_from_slice(b"+ \r\n");
                        self.waiting = Some(Waiting::AuthenticateData { tag });
                        None
                    }
                }
            }
            _ => {
                self.bad(out, &tag, "command not valid before login");
                None
            }
        }
    }

    fn authenticate_data(&mut self, tag: &str, line: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        let text = String::from_utf8_lossy(line.trim_ascii()).into_owned();
        if text == "*" {
            self.bad(out, tag, "AUTHENTICATE cancelled");
            return None;
        }
        match crate::sasl::base64_decode(&text) {
            Some(response) => self.plain_response(tag, &response, out),
            None => {
                self.bad(out, tag, "response is not base64");
                None
            }
        }
    }

    fn plain_response(&mut self, tag: &str, response: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        match crate::sasl::parse_plain(response) {
            Some((authz, user, password)) if authz.is_empty() || authz == user => {
                self.waiting = Some(Waiting::Login {
                    tag: tag.to_owned(),
                });
                Some(Step::Login { user, password })
            }
            _ => {
                self.no(out, tag, "[AUTHENTICATIONFAILED] malformed PLAIN response");
                None
            }
        }
    }

    /// The answer to [`Step::Login`].
    pub fn logged_in(&mut self, user: &str, outcome: LoginOutcome, out: &mut Vec<u8>) {
        let Some(Waiting::Login { tag }) = self.waiting.take() else {
            return;
        };
        match outcome {
            LoginOutcome::Ok => {
                self.state = State::Authenticated;
                self.user = Some(user.to_owned());
                status_line(
                    out,
                    &tag,
                    "OK",
                    &format!("[CAPABILITY {}] logged in", self.capabilities()),
                );
            }
            LoginOutcome::BadCredentials => {
                self.no(out, &tag, "[AUTHENTICATIONFAILED] invalid credentials")
            }
            LoginOutcome::Unavailable => self.no(out, &tag, "[UNAVAILABLE] try again later"),
        }
    }

    fn authenticated(&mut self, tag: String, command: Command, out: &mut Vec<u8>) -> Option<Step> {
        use Command as C;
        match command {
            C::Login { .. } | C::Authenticate { .. } => {
                self.bad(out, &tag, "already logged in");
                None
            }
            C::StartTls => {
                self.bad(out, &tag, "STARTTLS only before login");
                None
            }
            C::Enable(caps) => {
                let mut enabled = Vec::new();
                for cap in caps {
                    let newly = match cap.as_str() {
                        "CONDSTORE" => !std::mem::replace(&mut self.condstore, true),
                        // RFC 7162 3.2.3: QRESYNC implies CONDSTORE.
                        "QRESYNC" => {
                            self.condstore = true;
                            !std::mem::replace(&mut self.qresync, true)
                        }
                        "IMAP4REV2" => !std::mem::replace(&mut self.rev2, true),
                        _ => false,
                    };
                    if newly {
                        enabled.push(if cap == "IMAP4REV2" {
                            "IMAP4rev2".to_owned()
                        } else {
                            cap
                        });
                    }
                }
                out.extend_from_slice(
                    format!("* ENABLED {}\r\n", enabled.join(" "))
                        .trim_end()
                        .as_bytes(),
                );
                out.extend_from_slice(b"\r\n");
                status_line(out, &tag, "OK", "ENABLE completed");
                None
            }
            C::Namespace => {
                out.extend_from_slice(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                status_line(out, &tag, "OK", "NAMESPACE completed");
                None
            }
            C::Select {
                mailbox,
                read_only,
                condstore,
                qresync,
            } => {
                if qresync.is_some() && !self.qresync {
                    self.bad(out, &tag, "QRESYNC parameter without ENABLE QRESYNC");
                    return None;
                }
                if condstore {
                    self.condstore = true;
                }
                self.saved.clear();
                if self.selected.take().is_some() {
                    self.state = State::Authenticated;
                    if self.qresync || self.rev2 {
                        // RFC 7162 3.2.11, RFC 9051 7.1: where one mailbox's responses end.
                        out.extend_from_slice(b"* OK [CLOSED] previous mailbox closed\r\n");
                    }
                }
                self.waiting = Some(Waiting::Select {
                    tag,
                    mailbox: mailbox.clone(),
                    read_only,
                    qresync,
                });
                Some(Step::Select { mailbox, read_only })
            }
            C::List { .. } => {
                self.waiting = Some(Waiting::Folders { tag, command });
                Some(Step::Folders)
            }
            C::Status { mailbox, items } => {
                self.waiting = Some(Waiting::Status {
                    tag,
                    mailbox: mailbox.clone(),
                    items,
                });
                Some(Step::Counts {
                    mailboxes: vec![mailbox],
                })
            }
            C::Create(name) | C::Delete(name) if name.is_empty() => {
                self.bad(out, &tag, "empty mailbox name");
                None
            }
            C::Create(name) => self.mailbox_op(tag, "CREATE", MailboxOp::Create(name)),
            C::Delete(name) => self.mailbox_op(tag, "DELETE", MailboxOp::Delete(name)),
            C::Rename { from, to } => {
                self.mailbox_op(tag, "RENAME", MailboxOp::Rename { from, to })
            }
            C::Subscribe(name) => {
                self.mailbox_op(tag, "SUBSCRIBE", MailboxOp::Subscribe(name, true))
            }
            C::GetQuota(root) => {
                if !root.is_empty() {
                    self.no(
                        out,
                        &tag,
                        "[NONEXISTENT] no such quota root (the user's is \"\")",
                    );
                    return None;
                }
                self.waiting = Some(Waiting::Quota { tag, root_of: None });
                Some(Step::Quota)
            }
            C::GetQuotaRoot(mailbox) => {
                self.waiting = Some(Waiting::Quota {
                    tag,
                    root_of: Some(mailbox),
                });
                Some(Step::Quota)
            }
            C::SetQuota => {
                self.no(
                    out,
                    &tag,
                    "[NOPERM] quotas are set by the administrator (porcupine user quota)",
                );
                None
            }
            C::Unsubscribe(name) => {
                self.mailbox_op(tag, "UNSUBSCRIBE", MailboxOp::Subscribe(name, false))
            }
            C::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                if message.len() > self.append_limit {
                    self.no(out, &tag, "[TOOBIG] message too large");
                    return None;
                }
                let into_selected = self.is_selected(&mailbox);
                self.waiting = Some(Waiting::Append { tag, into_selected });
                Some(Step::Append {
                    mailbox,
                    flags: flags.into_iter().filter(|f| *f != Flag::Recent).collect(),
                    date,
                    message,
                })
            }
            C::Idle => {
                out.extend_from_slice(b"+ idling\r\n");
                self.waiting = Some(Waiting::Idle { tag });
                Some(Step::Idle)
            }
            other if self.state == State::Selected => self.selected_command(tag, other, out),
            _ => {
                self.bad(out, &tag, "no mailbox selected");
                None
            }
        }
    }

    fn mailbox_op(&mut self, tag: String, what: &'static str, op: MailboxOp) -> Option<Step> {
        self.waiting = Some(Waiting::Mailbox { tag, what });
        Some(Step::Mailbox(op))
    }

    /// Message numbers (1-based) a set names, by number or by UID.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<usize> {
        let Some(selected) = &self.selected else {
            return Vec::new();
        };
        let count = selected.messages.len();
        if uid {
            let largest = selected.messages.last().map_or(0, |m| m.uid);
            selected
                .messages
                .iter()
                .enumerate()
                .filter(|(_, m)| set.contains(m.uid, largest))
                .map(|(i, _)| i + 1)
                .collect()
        } else {
            (1..=count)
                .filter(|&n| set.contains(n as u32, count as u32))
                .collect()
        }
    }

    /// Whether a message-number set names numbers beyond the mailbox (a BAD per RFC 3501).
    fn set_out_of_range(&self, set: &SequenceSet) -> bool {
        let count = self.selected.as_ref().map_or(0, |s| s.messages.len()) as u32;
        set.0.iter().any(|(a, b)| {
            [a, b]
                .iter()
                .any(|s| matches!(s, SeqNum::Value(v) if v.get() > count))
        })
    }

    fn selected_command(
        &mut self,
        tag: String,
        command: Command,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        use Command as C;
        let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
        let mut command = command;
        self.expand_saved(&mut command);
        match command {
            C::Close | C::Unselect => {
                self.saved.clear();
                if command == C::Close && !read_only {
                    let uids = self.deleted_uids(None);
                    if !uids.is_empty() {
                        self.waiting = Some(Waiting::Expunge {
                            tag,
                            silent_then_close: true,
                        });
                        return Some(Step::Expunge { uids });
                    }
                }
                self.selected = None;
                self.state = State::Authenticated;
                status_line(out, &tag, "OK", "closed");
                None
            }
            C::Expunge { uids } => {
                if read_only {
                    self.no(out, &tag, "mailbox is read-only");
                    return None;
                }
                let uids = self.deleted_uids(uids.as_ref());
                if uids.is_empty() {
                    status_line(out, &tag, "OK", "EXPUNGE completed");
                    return None;
                }
                self.waiting = Some(Waiting::Expunge {
                    tag,
                    silent_then_close: false,
                });
                Some(Step::Expunge { uids })
            }
            C::Fetch {
                uid,
                set,
                mut items,
                changed_since,
                vanished,
            } => {
                if !uid && self.set_out_of_range(&set) {
                    self.bad(out, &tag, "message number out of range");
                    return None;
                }
                if vanished {
                    if !self.qresync {
                        self.bad(out, &tag, "VANISHED without ENABLE QRESYNC");
                        return None;
                    }
                    // RFC 7162 3.2.6: before the FETCH responses.
                    let gone = self.vanished_from(&set);
                    write_vanished(out, true, &gone);
                }
                if changed_since.is_some() {
                    self.condstore = true;
                }
                if uid && !items.contains(&FetchItem::Uid) {
                    items.insert(0, FetchItem::Uid);
                }
                if (changed_since.is_some() || items.contains(&FetchItem::ModSeq))
                    && !items.contains(&FetchItem::ModSeq)
                {
                    items.push(FetchItem::ModSeq);
                }
                if items.contains(&FetchItem::ModSeq) {
                    self.condstore = true;
                }
                let needs = if items.iter().any(|i| {
                    matches!(
                        i,
                        FetchItem::Rfc822(_) | FetchItem::Body { .. } | FetchItem::BinarySize(_)
                    )
                }) {
                    Needs::Bytes
                } else if items.iter().any(|i| {
                    matches!(
                        i,
                        FetchItem::Envelope | FetchItem::BodyStructure | FetchItem::BodyShort
                    )
                }) {
                    Needs::Description
                } else {
                    Needs::Nothing
                };
                let sets_seen = !read_only
                    && items.iter().any(|i| {
                        matches!(
                            i,
                            FetchItem::Body { peek: false, .. }
                                | FetchItem::Rfc822(Rfc822Part::Whole | Rfc822Part::Text)
                        )
                    });
                let mut msns = self.resolve(&set, uid);
                if let (Some(since), Some(selected)) = (changed_since, &self.selected) {
                    msns.retain(|&n| selected.messages[n - 1].modseq > since);
                }
                let job = FetchJob {
                    tag,
                    items,
                    msns,
                    next: 0,
                    needs,
                    sets_seen,
                    newly_seen: Vec::new(),
                };
                self.fetch_next(job, out)
            }
            C::Store {
                uid,
                set,
                action,
                silent,
                flags,
                unchanged_since,
            } => {
                if read_only {
                    self.no(out, &tag, "mailbox is read-only");
                    return None;
                }
                if !uid && self.set_out_of_range(&set) {
                    self.bad(out, &tag, "message number out of range");
                    return None;
                }
                if unchanged_since.is_some() {
                    self.condstore = true;
                }
                let msns = self.resolve(&set, uid);
                let selected = self.selected.as_ref()?;
                let mut uids = Vec::new();
                let mut modified = Vec::new();
                for n in msns {
                    let m = &selected.messages[n - 1];
                    if unchanged_since.is_some_and(|since| m.modseq > since) {
                        modified.push(if uid { m.uid } else { n as u32 });
                    } else {
                        uids.push(m.uid);
                    }
                }
                let flags: Vec<Flag> = flags.into_iter().filter(|f| *f != Flag::Recent).collect();
                self.waiting = Some(Waiting::Store {
                    tag,
                    uid,
                    silent,
                    unchanged_since,
                    modified,
                });
                Some(Step::Store {
                    uids,
                    action,
                    flags,
                    unchanged_since,
                })
            }
            C::Search {
                uid,
                key,
                mut esearch,
            } => {
                let count = self.selected.as_ref().map_or(0, |s| s.messages.len());
                if esearch.is_none() && self.rev2 {
                    // RFC 9051 6.4.4: SEARCH is answered by ESEARCH, as RETURN (ALL).
                    esearch = Some(vec![SearchReturn::All]);
                }
                let job = SearchJob {
                    tag,
                    uid,
                    key,
                    esearch,
                    candidates: (1..=count).collect(),
                    next: 0,
                    found: Vec::new(),
                };
                self.search_next(job, None, out)
            }
            C::Copy {
                uid,
                set,
                mailbox,
                moving,
            } => {
                if moving && read_only {
                    self.no(out, &tag, "mailbox is read-only");
                    return None;
                }
                if !uid && self.set_out_of_range(&set) {
                    self.bad(out, &tag, "message number out of range");
                    return None;
                }
                let selected = self.selected.as_ref()?;
                let uids: Vec<u32> = self
                    .resolve(&set, uid)
                    .into_iter()
                    .map(|n| selected.messages[n - 1].uid)
                    .collect();
                if uids.is_empty() {
                    status_line(out, &tag, "OK", "nothing to copy");
                    return None;
                }
                let into_selected = self.is_selected(&mailbox);
                self.waiting = Some(Waiting::Copy {
                    tag,
                    moving,
                    into_selected,
                });
                Some(Step::Copy {
                    uids,
                    mailbox,
                    moving,
                })
            }
            _ => {
                self.bad(out, &tag, "command not valid here");
                None
            }
        }
    }

    /// UIDs of `\Deleted` messages (within `only`, for UID EXPUNGE).
    fn deleted_uids(&self, only: Option<&SequenceSet>) -> Vec<u32> {
        let Some(selected) = &self.selected else {
            return Vec::new();
        };
        let largest = selected.messages.last().map_or(0, |m| m.uid);
        selected
            .messages
            .iter()
            .filter(|m| m.flags.contains(&Flag::Deleted))
            .filter(|m| only.is_none_or(|set| set.contains(m.uid, largest)))
            .map(|m| m.uid)
            .collect()
    }

    /// Replaces `$` in the command's sets by the saved search result (as UIDs or message
    /// numbers, as the command counts).
    fn expand_saved(&self, command: &mut Command) {
        match command {
            Command::Fetch { uid, set, .. }
            | Command::Store { uid, set, .. }
            | Command::Copy { uid, set, .. } => self.expand_set(set, *uid),
            Command::Expunge { uids: Some(set) } => self.expand_set(set, true),
            Command::Search { key, .. } => self.expand_key(key),
            _ => {}
        }
    }

    fn expand_key(&self, key: &mut SearchKey) {
        match key {
            SearchKey::Sequence(set) => self.expand_set(set, false),
            SearchKey::Uid(set) => self.expand_set(set, true),
            SearchKey::And(keys) => keys.iter_mut().for_each(|k| self.expand_key(k)),
            SearchKey::Or(a, b) => {
                self.expand_key(a);
                self.expand_key(b);
            }
            SearchKey::Not(k) => self.expand_key(k),
            _ => {}
        }
    }

    fn expand_set(&self, set: &mut SequenceSet, uid: bool) {
        if !set.is_saved() {
            return;
        }
        let values: Vec<u32> = match (&self.selected, uid) {
            (None, _) => Vec::new(),
            (Some(_), true) => self.saved.clone(),
            (Some(selected), false) => selected
                .messages
                .iter()
                .enumerate()
                .filter(|(_, m)| self.saved.binary_search(&m.uid).is_ok())
                .map(|(i, _)| i as u32 + 1)
                .collect(),
        };
        *set = SequenceSet(
            uid_ranges(&values)
                .into_iter()
                .filter_map(|(a, b)| {
                    Some((
                        SeqNum::Value(std::num::NonZeroU32::new(a)?),
                        SeqNum::Value(std::num::NonZeroU32::new(b)?),
                    ))
                })
                .collect(),
        );
    }

    /// The UIDs of `set` (a UID set; `*` up to UIDNEXT - 1) not in the mailbox now.
    fn vanished_from(&self, set: &SequenceSet) -> Vec<(u32, u32)> {
        let Some(selected) = &self.selected else {
            return Vec::new();
        };
        let largest = selected.uid_next.saturating_sub(1);
        let present: Vec<u32> = selected.messages.iter().map(|m| m.uid).collect();
        absent_in(set, largest, &present)
    }

    /// Reports messages gone from the view: `* n EXPUNGE` for each, from the highest number
    /// down (so each number is right when it is sent), or one `* VANISHED` under QRESYNC.
    fn report_expunged(qresync: bool, removed: &[(usize, u32)], out: &mut Vec<u8>) {
        if qresync {
            let uids: Vec<u32> = removed.iter().map(|r| r.1).collect();
            write_vanished(out, false, &uid_ranges(&uids));
            return;
        }
        let mut numbers: Vec<usize> = removed.iter().map(|r| r.0).collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        for n in numbers {
            out.extend_from_slice(format!("* {n} EXPUNGE\r\n").as_bytes());
        }
    }

    // ---- Answers from the node ----

    /// The answer to [`Step::Folders`].
    pub fn folders(
        &mut self,
        folders: Result<Vec<Folder>, MailboxError>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let Some(Waiting::Folders { tag, command }) = self.waiting.take() else {
            return None;
        };
        let Command::List {
            reference,
            patterns,
            subscribed_only,
            status,
            special_use,
            lsub,
            return_subscribed,
            recursive_match,
        } = command
        else {
            return None;
        };
        let folders = match folders {
            Ok(folders) => folders,
            Err(error) => {
                self.mailbox_error(out, &tag, &error);
                return None;
            }
        };
        let word = if lsub { "LSUB" } else { "LIST" };
        // LIST "" "": the hierarchy delimiter.
        if patterns.iter().all(String::is_empty) {
            out.extend_from_slice(format!("* {word} (\\Noselect) \"/\" \"\"\r\n").as_bytes());
            status_line(out, &tag, "OK", &format!("{word} completed"));
            return None;
        }
        let selection = ListSelection {
            subscribed_only,
            special_use,
            recursive_match,
            return_subscribed: !lsub && (subscribed_only || return_subscribed),
        };
        let lines: Vec<(Folder, Vec<u8>)> = list_lines(&folders, &selection, |name| {
            patterns.iter().any(|p| {
                let full = format!("{reference}{p}");
                list_matches(full.as_bytes(), name.as_bytes())
                    || (name == "INBOX"
                        && list_matches(full.to_ascii_uppercase().as_bytes(), b"INBOX"))
            })
        })
        .into_iter()
        .map(|(folder, mut line)| {
            let mut full = format!("* {word} ").into_bytes();
            full.append(&mut line);
            (folder, full)
        })
        .collect();
        if !status.is_empty() && !lines.is_empty() {
            let mailboxes = lines.iter().map(|(f, _)| f.name.clone()).collect();
            self.waiting = Some(Waiting::ListStatus {
                tag,
                lines,
                items: status,
                lsub,
            });
            return Some(Step::Counts { mailboxes });
        }
        for (_, line) in lines {
            out.extend_from_slice(&line);
        }
        status_line(out, &tag, "OK", &format!("{word} completed"));
        None
    }

    fn write_status(out: &mut Vec<u8>, mailbox: &str, items: &[StatusItem], counts: &Counts) {
        out.extend_from_slice(b"* STATUS ");
        mime::write_string(out, mailbox.as_bytes());
        let values: Vec<String> = items
            .iter()
            .map(|item| match item {
                StatusItem::Messages => format!("MESSAGES {}", counts.messages),
                StatusItem::Recent => "RECENT 0".into(),
                StatusItem::UidNext => format!("UIDNEXT {}", counts.uid_next),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", counts.uid_validity),
                StatusItem::Unseen => format!("UNSEEN {}", counts.unseen),
                StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", counts.highest_modseq),
                StatusItem::Size => format!("SIZE {}", counts.size),
                StatusItem::Deleted => format!("DELETED {}", counts.deleted),
            })
            .collect();
        out.extend_from_slice(format!(" ({})\r\n", values.join(" ")).as_bytes());
    }

    /// The answer to [`Step::Counts`].
    pub fn counts(
        &mut self,
        counts: Vec<Result<Counts, MailboxError>>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        match self.waiting.take() {
            Some(Waiting::Status {
                tag,
                mailbox,
                items,
            }) => match counts.into_iter().next() {
                Some(Ok(c)) => {
                    Self::write_status(out, &mailbox, &items, &c);
                    status_line(out, &tag, "OK", "STATUS completed");
                }
                Some(Err(error)) => self.mailbox_error(out, &tag, &error),
                None => self.mailbox_error(out, &tag, &MailboxError::Unavailable),
            },
            Some(Waiting::ListStatus {
                tag,
                lines,
                items,
                lsub,
            }) => {
                for ((folder, line), c) in lines.into_iter().zip(counts) {
                    out.extend_from_slice(&line);
                    if let Ok(c) = c {
                        Self::write_status(out, &folder.name, &items, &c);
                    }
                }
                let word = if lsub { "LSUB" } else { "LIST" };
                status_line(out, &tag, "OK", &format!("{word} completed"));
            }
            other => self.waiting = other,
        }
        None
    }

    fn mailbox_error(&mut self, out: &mut Vec<u8>, tag: &str, error: &MailboxError) {
        let text = match error {
            MailboxError::NoSuchMailbox => "[NONEXISTENT] no such mailbox".to_owned(),
            MailboxError::AlreadyExists => "[ALREADYEXISTS] mailbox already exists".to_owned(),
            MailboxError::NotAllowed(why) => format!("[CANNOT] {why}"),
            MailboxError::OverQuota => "[OVERQUOTA] quota exceeded".to_owned(),
            MailboxError::Unavailable => "[UNAVAILABLE] try again later".to_owned(),
        };
        self.no(out, tag, &text);
    }

    /// The answer to [`Step::Select`].
    pub fn selected(
        &mut self,
        snapshot: Result<Snapshot, MailboxError>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let Some(Waiting::Select {
            tag,
            mailbox,
            read_only,
            qresync,
        }) = self.waiting.take()
        else {
            return None;
        };
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(error) => {
                self.mailbox_error(out, &tag, &error);
                return None;
            }
        };
        out.extend_from_slice(format!("* FLAGS {FLAGS}\r\n").as_bytes());
        out.extend_from_slice(format!("* {} EXISTS\r\n", snapshot.messages.len()).as_bytes());
        if self.rev2 {
            // RFC 9051 6.3.2: the mailbox's name as the server spells it; no RECENT.
            out.extend_from_slice(b"* LIST () \"/\" ");
            mime::write_string(out, mailbox.as_bytes());
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(b"* 0 RECENT\r\n");
            if let Some(n) = snapshot
                .messages
                .iter()
                .position(|m| !m.flags.contains(&Flag::Seen))
            {
                out.extend_from_slice(
                    format!("* OK [UNSEEN {}] first unseen\r\n", n + 1).as_bytes(),
                );
            }
        }
        let permanent = if read_only { "()" } else { PERMANENT_FLAGS };
        out.extend_from_slice(
            format!("* OK [PERMANENTFLAGS {permanent}] flags permitted\r\n").as_bytes(),
        );
        out.extend_from_slice(
            format!(
                "* OK [UIDVALIDITY {}] UIDs valid\r\n",
                snapshot.uid_validity
            )
            .as_bytes(),
        );
        out.extend_from_slice(
            format!(
                "* OK [UIDNEXT {}] predicted next UID\r\n",
                snapshot.uid_next
            )
            .as_bytes(),
        );
        out.extend_from_slice(
            format!(
                "* OK [HIGHESTMODSEQ {}] highest\r\n",
                snapshot.highest_modseq.max(1)
            )
            .as_bytes(),
        );
        if let Some(resync) = qresync.filter(|r| r.uid_validity == snapshot.uid_validity) {
            Self::resynchronise(&resync, &snapshot, out);
        }
        status_line(
            out,
            &tag,
            "OK",
            if read_only {
                "[READ-ONLY] EXAMINE completed"
            } else {
                "[READ-WRITE] SELECT completed"
            },
        );
        self.selected = Some(Selected {
            name: mailbox,
            read_only,
            uid_validity: snapshot.uid_validity,
            uid_next: snapshot.uid_next,
            highest_modseq: snapshot.highest_modseq,
            messages: snapshot.messages,
        });
        self.state = State::Selected;
        None
    }

    /// QRESYNC at SELECT (RFC 7162 3.2.5.2): the known UIDs gone since, then the flags of
    /// what changed after the client's MODSEQ.
    fn resynchronise(resync: &Resync, snapshot: &Snapshot, out: &mut Vec<u8>) {
        let largest = snapshot.uid_next.saturating_sub(1);
        let present: Vec<u32> = snapshot.messages.iter().map(|m| m.uid).collect();
        let all = SequenceSet(vec![(
            SeqNum::Value(std::num::NonZeroU32::MIN),
            SeqNum::Largest,
        )]);
        let known = resync.known_uids.as_ref().unwrap_or(&all);
        write_vanished(out, true, &absent_in(known, largest, &present));
        for (i, m) in snapshot.messages.iter().enumerate() {
            if m.modseq > resync.modseq && known.contains(m.uid, largest) {
                out.extend_from_slice(
                    format!("* {} FETCH (UID {} FLAGS ", i + 1, m.uid).as_bytes(),
                );
                write_flags(out, &m.flags);
                out.extend_from_slice(format!(" MODSEQ ({}))\r\n", m.modseq).as_bytes());
            }
        }
    }

    /// Reports the differences between the session's view and `snapshot` and adopts it.
    fn apply_snapshot(&mut self, snapshot: Snapshot, out: &mut Vec<u8>) {
        let condstore = self.condstore;
        let qresync = self.qresync;
        let Some(selected) = &mut self.selected else {
            return;
        };
        if snapshot.uid_validity != selected.uid_validity {
            // The mailbox was deleted and made again: the client must start over.
            out.extend_from_slice(b"* BYE mailbox identity changed, select it again\r\n");
            self.state = State::Closed;
            return;
        }
        let present: std::collections::HashSet<u32> =
            snapshot.messages.iter().map(|m| m.uid).collect();
        let removed = remove_where(&mut selected.messages, |m| !present.contains(&m.uid));
        Self::report_expunged(qresync, &removed, out);
        let by_uid: std::collections::HashMap<u32, &MessageView> =
            snapshot.messages.iter().map(|m| (m.uid, m)).collect();
        for (i, m) in selected.messages.iter_mut().enumerate() {
            if let Some(now) = by_uid.get(&m.uid) {
                if now.flags != m.flags || (condstore && now.modseq != m.modseq) {
                    m.flags = now.flags.clone();
                    m.modseq = now.modseq;
                    out.extend_from_slice(format!("* {} FETCH (", i + 1).as_bytes());
                    out.extend_from_slice(b"FLAGS ");
                    write_flags(out, &m.flags);
                    out.extend_from_slice(format!(" UID {}", m.uid).as_bytes());
                    if condstore {
                        out.extend_from_slice(format!(" MODSEQ ({})", m.modseq).as_bytes());
                    }
                    out.extend_from_slice(b")\r\n");
                }
            }
        }
        let largest = selected.messages.last().map_or(0, |m| m.uid);
        let before = selected.messages.len();
        selected
            .messages
            .extend(snapshot.messages.into_iter().filter(|m| m.uid > largest));
        if selected.messages.len() != before {
            out.extend_from_slice(format!("* {} EXISTS\r\n", selected.messages.len()).as_bytes());
        }
        selected.uid_next = snapshot.uid_next.max(selected.uid_next);
        selected.highest_modseq = snapshot.highest_modseq.max(selected.highest_modseq);
    }

    /// The answer to [`Step::Poll`].
    pub fn polled(
        &mut self,
        snapshot: Result<Snapshot, MailboxError>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        match self.waiting.take() {
            Some(Waiting::Poll { tag, done }) => {
                match snapshot {
                    Ok(snapshot) => self.apply_snapshot(snapshot, out),
                    Err(MailboxError::NoSuchMailbox) => {
                        out.extend_from_slice(b"* BYE the selected mailbox is gone\r\n");
                        self.state = State::Closed;
                        return Some(Step::Close);
                    }
                    Err(_) => {}
                }
                if let Some(tag) = tag {
                    status_line(out, &tag, "OK", &done);
                }
                None
            }
            Some(Waiting::IdlePoll { tag }) => {
                if let Ok(snapshot) = snapshot {
                    self.apply_snapshot(snapshot, out);
                }
                if self.state == State::Closed {
                    return Some(Step::Close);
                }
                self.waiting = Some(Waiting::Idle { tag });
                None
            }
            other => {
                self.waiting = other;
                None
            }
        }
    }

    /// Sends FETCH responses from the job's next message on; asks for bytes when needed.
    fn fetch_next(&mut self, job: FetchJob, out: &mut Vec<u8>) -> Option<Step> {
        if job.next >= job.msns.len() {
            status_line(out, &job.tag, "OK", "FETCH completed");
            return None;
        }
        let batch_end = (job.next + self.limits.load_batch).min(job.msns.len());
        if job.needs != Needs::Nothing {
            let selected = self.selected.as_ref()?;
            let uids = job.msns[job.next..batch_end]
                .iter()
                .map(|&n| selected.messages[n - 1].uid)
                .collect();
            let step = if job.needs == Needs::Bytes {
                Step::Load { uids }
            } else {
                Step::Describe { uids }
            };
            self.waiting = Some(Waiting::FetchLoad(job));
            return Some(step);
        }
        let bodies = vec![None; batch_end - job.next];
        self.fetch_answer(job, bodies, out)
    }

    /// The answer to [`Step::Load`] (the messages' bytes) and to [`Step::Describe`] (their
    /// descriptions), `None` for a message gone or unreadable.
    pub fn loaded(&mut self, bodies: Vec<Option<Vec<u8>>>, out: &mut Vec<u8>) -> Option<Step> {
        match self.waiting.take() {
            Some(Waiting::FetchLoad(job)) => self.fetch_answer(job, bodies, out),
            Some(Waiting::Search(job)) => self.search_next(job, Some(bodies), out),
            other => {
                self.waiting = other;
                None
            }
        }
    }

    /// Answers a batch of the fetch, setting `\Seen` first where a body is fetched.
    fn fetch_answer(
        &mut self,
        mut job: FetchJob,
        bodies: Vec<Option<Vec<u8>>>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        if job.sets_seen {
            let selected = self.selected.as_ref()?;
            let unseen: Vec<u32> = job.msns[job.next..job.next + bodies.len()]
                .iter()
                .map(|&n| &selected.messages[n - 1])
                .filter(|m| !m.flags.contains(&Flag::Seen))
                .map(|m| m.uid)
                .collect();
            if !unseen.is_empty() {
                job.newly_seen = unseen.clone();
                self.waiting = Some(Waiting::FetchSeen(job, bodies));
                return Some(Step::Store {
                    uids: unseen,
                    action: StoreAction::Add,
                    flags: vec![Flag::Seen],
                    unchanged_since: None,
                });
            }
        }
        self.fetch_write(job, bodies, out)
    }

    fn fetch_write(
        &mut self,
        mut job: FetchJob,
        bodies: Vec<Option<Vec<u8>>>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let count = bodies.len();
        for (i, body) in bodies.into_iter().enumerate() {
            let n = job.msns[job.next + i];
            let Some(selected) = &self.selected else {
                break;
            };
            let Some(message) = selected.messages.get(n - 1).cloned() else {
                continue;
            };
            if job.needs != Needs::Nothing && body.is_none() {
                // Gone (expunged elsewhere) or unreadable: answer with what is known.
                out.extend_from_slice(
                    format!("* {n} FETCH (UID {} FLAGS ", message.uid).as_bytes(),
                );
                write_flags(out, &message.flags);
                out.extend_from_slice(b")\r\n");
                continue;
            }
            let (bytes, described) = match job.needs {
                Needs::Description => (None, body.as_deref().and_then(Described::decode)),
                _ => (body.as_deref(), None),
            };
            write_fetch(
                out,
                n,
                &message,
                &job.items,
                Loaded { bytes, described },
                self.condstore,
                job.newly_seen.contains(&message.uid),
            );
        }
        job.next += count;
        self.fetch_next(job, out)
    }

    /// The answer to [`Step::Store`]: the stored messages' new state.
    pub fn stored(
        &mut self,
        result: Result<Vec<MessageView>, MailboxError>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        match self.waiting.take() {
            Some(Waiting::FetchSeen(job, bodies)) => {
                if let Ok(views) = result {
                    self.update_views(&views);
                }
                self.fetch_write(job, bodies, out)
            }
            Some(Waiting::Store {
                tag,
                uid,
                silent,
                unchanged_since,
                modified,
            }) => {
                match result {
                    Ok(views) => {
                        self.update_views(&views);
                        if !silent || unchanged_since.is_some() {
                            if let Some(selected) = &self.selected {
                                for view in &views {
                                    let Some(n) =
                                        selected.messages.iter().position(|m| m.uid == view.uid)
                                    else {
                                        continue;
                                    };
                                    let m = &selected.messages[n];
                                    out.extend_from_slice(
                                        format!("* {} FETCH (", n + 1).as_bytes(),
                                    );
                                    let mut first = true;
                                    if !silent {
                                        out.extend_from_slice(b"FLAGS ");
                                        write_flags(out, &m.flags);
                                        first = false;
                                    }
                                    if uid {
                                        if !first {
                                            out.push(b' ');
                                        }
                                        out.extend_from_slice(format!("UID {}", m.uid).as_bytes());
                                        first = false;
                                    }
                                    if self.condstore {
                                        if !first {
                                            out.push(b' ');
                                        }
                                        out.extend_from_slice(
                                            format!("MODSEQ ({})", m.modseq).as_bytes(),
                                        );
                                    }
                                    out.extend_from_slice(b")\r\n");
                                }
                            }
                        }
                        if modified.is_empty() {
                            status_line(out, &tag, "OK", "STORE completed");
                        } else {
                            status_line(
                                out,
                                &tag,
                                "OK",
                                &format!(
                                    "[MODIFIED {}] conditional STORE failed",
                                    uid_set(&modified)
                                ),
                            );
                        }
                    }
                    Err(error) => self.mailbox_error(out, &tag, &error),
                }
                None
            }
            other => {
                self.waiting = other;
                None
            }
        }
    }

    fn update_views(&mut self, views: &[MessageView]) {
        let Some(selected) = &mut self.selected else {
            return;
        };
        for view in views {
            if let Some(m) = selected.messages.iter_mut().find(|m| m.uid == view.uid) {
                m.flags = view.flags.clone();
                m.modseq = view.modseq;
                selected.highest_modseq = selected.highest_modseq.max(view.modseq);
            }
        }
    }

    /// The answer to [`Step::Expunge`]: which of the UIDs are gone now.
    pub fn expunged(
        &mut self,
        result: Result<Vec<u32>, MailboxError>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let Some(Waiting::Expunge {
            tag,
            silent_then_close,
        }) = self.waiting.take()
        else {
            return None;
        };
        match result {
            Ok(gone) => {
                if silent_then_close {
                    self.selected = None;
                    self.state = State::Authenticated;
                    status_line(out, &tag, "OK", "CLOSE completed");
                    return None;
                }
                self.remove_uids(&gone, out);
                status_line(out, &tag, "OK", "EXPUNGE completed");
            }
            Err(error) => self.mailbox_error(out, &tag, &error),
        }
        None
    }

    fn remove_uids(&mut self, gone: &[u32], out: &mut Vec<u8>) {
        let Some(selected) = &mut self.selected else {
            return;
        };
        let removed = remove_where(&mut selected.messages, |m| gone.contains(&m.uid));
        Self::report_expunged(self.qresync, &removed, out);
    }

    /// The answer to [`Step::Append`]: the mailbox's UIDVALIDITY and the new message's UID.
    pub fn appended(
        &mut self,
        result: Result<(u32, u32), MailboxError>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let Some(Waiting::Append { tag, into_selected }) = self.waiting.take() else {
            return None;
        };
        match result {
            Ok((validity, uid)) => {
                let done = format!("[APPENDUID {validity} {uid}] APPEND completed");
                if into_selected {
                    // RFC 3501 6.3.11: the client hears of the new message at once.
                    self.waiting = Some(Waiting::Poll {
                        tag: Some(tag),
                        done,
                    });
                    return Some(Step::Poll);
                }
                status_line(out, &tag, "OK", &done)
            }
            Err(MailboxError::NoSuchMailbox) => self.no(out, &tag, "[TRYCREATE] no such mailbox"),
            Err(error) => self.mailbox_error(out, &tag, &error),
        }
        None
    }

    /// The answer to [`Step::Quota`]: the user's quota (`None` resources unlimited).
    pub fn quota_told(&mut self, quota: Result<QuotaView, MailboxError>, out: &mut Vec<u8>) {
        let Some(Waiting::Quota { tag, root_of }) = self.waiting.take() else {
            return;
        };
        let quota = match quota {
            Ok(quota) => quota,
            Err(error) => return self.mailbox_error(out, &tag, &error),
        };
        let limited = quota.storage.is_some() || quota.messages.is_some();
        match root_of {
            Some(mailbox) => {
                // With no limit there is no quota root (RFC 9208 4.3.2).
                let roots = if limited { " \"\"" } else { "" };
                out.extend_from_slice(b"* QUOTAROOT ");
                mime::write_string(out, mailbox.as_bytes());
                out.extend_from_slice(format!("{roots}\r\n").as_bytes());
                if limited {
                    out.extend_from_slice(
                        format!("* QUOTA \"\" ({})\r\n", quota.resources()).as_bytes(),
                    );
                }
                status_line(out, &tag, "OK", "GETQUOTAROOT completed");
            }
            None if limited => {
                out.extend_from_slice(
                    format!("* QUOTA \"\" ({})\r\n", quota.resources()).as_bytes(),
                );
                status_line(out, &tag, "OK", "GETQUOTA completed");
            }
            None => self.no(out, &tag, "[NONEXISTENT] no quota applies to this user"),
        }
    }

    /// The answer to [`Step::Copy`]: the target's UIDVALIDITY and (source, copy) UID pairs.
    pub fn copied(
        &mut self,
        result: Result<(u32, Vec<(u32, u32)>), MailboxError>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let Some(Waiting::Copy {
            tag,
            moving,
            into_selected,
        }) = self.waiting.take()
        else {
            return None;
        };
        match result {
            Ok((validity, pairs)) => {
                let sources: Vec<u32> = pairs.iter().map(|p| p.0).collect();
                let copies: Vec<u32> = pairs.iter().map(|p| p.1).collect();
                let code = if pairs.is_empty() {
                    String::new()
                } else {
                    format!(
                        "[COPYUID {validity} {} {}] ",
                        ordered_set(&sources),
                        ordered_set(&copies)
                    )
                };
                let done = if moving {
                    if !code.is_empty() {
                        out.extend_from_slice(format!("* OK {code}moved\r\n").as_bytes());
                    }
                    self.remove_uids(&sources, out);
                    "MOVE completed".to_owned()
                } else {
                    format!("{code}COPY completed")
                };
                if into_selected && !pairs.is_empty() {
                    self.waiting = Some(Waiting::Poll {
                        tag: Some(tag),
                        done,
                    });
                    return Some(Step::Poll);
                }
                status_line(out, &tag, "OK", &done);
            }
            Err(MailboxError::NoSuchMailbox) => self.no(out, &tag, "[TRYCREATE] no such mailbox"),
            Err(error) => self.mailbox_error(out, &tag, &error),
        }
        None
    }

    /// Whether `mailbox` (as the parser gave it: INBOX in capitals) is the selected one.
    fn is_selected(&self, mailbox: &str) -> bool {
        self.selected
            .as_ref()
            .is_some_and(|selected| selected.name == mailbox)
    }

    /// The answer to [`Step::Mailbox`].
    pub fn mailbox_done(
        &mut self,
        result: Result<(), MailboxError>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let Some(Waiting::Mailbox { tag, what }) = self.waiting.take() else {
            return None;
        };
        match result {
            Ok(()) => status_line(out, &tag, "OK", &format!("{what} completed")),
            Err(error) => self.mailbox_error(out, &tag, &error),
        }
        None
    }

    // ---- SEARCH ----

    fn search_next(
        &mut self,
        mut job: SearchJob,
        bodies: Option<Vec<Option<Vec<u8>>>>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let needs_bytes = key_needs_bytes(&job.key);
        let selected = self.selected.as_ref()?;
        let count = selected.messages.len() as u32;
        let largest_uid = selected.messages.last().map_or(0, |m| m.uid);
        if let Some(bodies) = bodies {
            let batch: Vec<usize> = job.candidates[job.next..job.next + bodies.len()].to_vec();
            for (n, body) in batch.into_iter().zip(bodies) {
                let m = &selected.messages[n - 1];
                let ctx = Ctx {
                    n: n as u32,
                    count,
                    largest_uid,
                    message: m,
                    bytes: body.as_deref(),
                };
                if matches(&job.key, &ctx) {
                    job.found.push(n);
                }
            }
            job.next += batch_len(&job, self.limits.load_batch);
        } else if !needs_bytes {
            for &n in &job.candidates {
                let ctx = Ctx {
                    n: n as u32,
                    count,
                    largest_uid,
                    message: &selected.messages[n - 1],
                    bytes: None,
                };
                if matches(&job.key, &ctx) {
                    job.found.push(n);
                }
            }
            job.next = job.candidates.len();
        }
        if job.next < job.candidates.len() {
            let end = (job.next + self.limits.load_batch).min(job.candidates.len());
            let uids = job.candidates[job.next..end]
                .iter()
                .map(|&n| selected.messages[n - 1].uid)
                .collect();
            self.waiting = Some(Waiting::Search(job));
            return Some(Step::Load { uids });
        }
        let values: Vec<u32> = job
            .found
            .iter()
            .map(|&n| {
                if job.uid {
                    selected.messages[n - 1].uid
                } else {
                    n as u32
                }
            })
            .collect();
        let modseq = key_has_modseq(&job.key).then(|| {
            job.found
                .iter()
                .map(|&n| selected.messages[n - 1].modseq)
                .max()
                .unwrap_or(0)
        });
        if let Some(options) = job
            .esearch
            .as_ref()
            .filter(|o| o.contains(&SearchReturn::Save))
        {
            // RFC 5182 2.1: with only MIN and/or MAX beside SAVE, only those are saved.
            let uids: Vec<u32> = job
                .found
                .iter()
                .map(|&n| selected.messages[n - 1].uid)
                .collect();
            let only_ends = !options.contains(&SearchReturn::All)
                && !options.contains(&SearchReturn::Count)
                && (options.contains(&SearchReturn::Min) || options.contains(&SearchReturn::Max));
            let mut saved = if only_ends {
                let mut ends = Vec::new();
                if options.contains(&SearchReturn::Min) {
                    ends.extend(uids.first());
                }
                if options.contains(&SearchReturn::Max) {
                    ends.extend(uids.last());
                }
                ends
            } else {
                uids
            };
            saved.sort_unstable();
            saved.dedup();
            self.saved = saved;
        }
        match &job.esearch {
            // SAVE alone: the result is kept, not sent.
            Some(options) if options.iter().all(|o| *o == SearchReturn::Save) => {}
            None => {
                out.extend_from_slice(b"* SEARCH");
                for v in &values {
                    out.extend_from_slice(format!(" {v}").as_bytes());
                }
                if let (Some(m), false) = (modseq, values.is_empty()) {
                    out.extend_from_slice(format!(" (MODSEQ {m})").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            Some(options) => {
                out.extend_from_slice(format!("* ESEARCH (TAG \"{}\")", job.tag).as_bytes());
                if job.uid {
                    out.extend_from_slice(b" UID");
                }
                if !values.is_empty() {
                    for option in options {
                        match option {
                            SearchReturn::Min => out.extend_from_slice(
                                format!(" MIN {}", values.iter().min().copied().unwrap_or(0))
                                    .as_bytes(),
                            ),
                            SearchReturn::Max => out.extend_from_slice(
                                format!(" MAX {}", values.iter().max().copied().unwrap_or(0))
                                    .as_bytes(),
                            ),
                            SearchReturn::All => out
                                .extend_from_slice(format!(" ALL {}", uid_set(&values)).as_bytes()),
                            SearchReturn::Count | SearchReturn::Save => {}
                        }
                    }
                }
                if options.contains(&SearchReturn::Count) {
                    out.extend_from_slice(format!(" COUNT {}", values.len()).as_bytes());
                }
                if let (Some(m), false) = (modseq, values.is_empty()) {
                    out.extend_from_slice(format!(" MODSEQ {m}").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        status_line(out, &job.tag, "OK", "SEARCH completed");
        None
    }
}

/// What a LIST selects and returns (RFC 5258).
struct ListSelection {
    subscribed_only: bool,
    special_use: bool,
    recursive_match: bool,
    return_subscribed: bool,
}

/// The LIST lines (after `* LIST `) for the folders whose names `matches`, with the parents
/// a folder implies but that do not exist: listed `\Noselect` where the pattern would
/// otherwise hide their children (`%`), and with `CHILDINFO` under RECURSIVEMATCH.
fn list_lines(
    folders: &[Folder],
    selection: &ListSelection,
    matches: impl Fn(&str) -> bool,
) -> Vec<(Folder, Vec<u8>)> {
    let qualifies = |f: &Folder| {
        (!selection.subscribed_only || f.subscribed)
            && (!selection.special_use || f.special_use.is_some())
    };
    let mut candidates: Vec<(Folder, bool)> = folders.iter().map(|f| (f.clone(), true)).collect();
    for folder in folders {
        for (i, _) in folder.name.match_indices('/') {
            let parent = &folder.name[..i];
            if !parent.is_empty() && !candidates.iter().any(|(c, _)| c.name == parent) {
                let implied = Folder {
                    name: parent.to_owned(),
                    subscribed: false,
                    special_use: None,
                };
                candidates.push((implied, false));
            }
        }
    }
    let mut lines = Vec::new();
    for (folder, exists) in &candidates {
        if !matches(&folder.name) {
            continue;
        }
        let prefix = format!("{}/", folder.name);
        let descendants = || folders.iter().filter(|f| f.name.starts_with(&prefix));
        let mut attrs: Vec<&str> = Vec::new();
        let mut child_info = None;
        let listed_itself = *exists && qualifies(folder);
        if !listed_itself && selection.recursive_match && descendants().any(qualifies) {
            // RFC 5258 3.5: listed for a descendant that qualifies.
            child_info = Some(if selection.subscribed_only {
                "SUBSCRIBED"
            } else {
                "SPECIAL-USE"
            });
            if !exists {
                attrs.push("\\NonExistent");
            }
        } else if !listed_itself
            && !exists
            && !selection.subscribed_only
            && !selection.special_use
            && !descendants().any(|f| matches(&f.name))
        {
            // RFC 3501 6.3.8: a parent whose children the pattern hides.
            attrs.push("\\Noselect");
        } else if !listed_itself {
            continue;
        }
        attrs.push(if descendants().next().is_some() {
            "\\HasChildren"
        } else {
            "\\HasNoChildren"
        });
        if selection.return_subscribed && folder.subscribed {
            attrs.push("\\Subscribed");
        }
        if let Some(use_) = &folder.special_use {
            attrs.push(use_);
        }
        let mut line = format!("({}) \"/\" ", attrs.join(" ")).into_bytes();
        mime::write_string(&mut line, folder.name.as_bytes());
        if let Some(info) = child_info {
            line.extend_from_slice(format!(" (\"CHILDINFO\" (\"{info}\"))").as_bytes());
        }
        line.extend_from_slice(b"\r\n");
        lines.push((folder.clone(), line));
    }
    lines
}

/// Removes the messages `gone` says, returning each one's message number (before any was
/// removed) and UID.
fn remove_where(
    messages: &mut Vec<MessageView>,
    gone: impl Fn(&MessageView) -> bool,
) -> Vec<(usize, u32)> {
    let mut removed = Vec::new();
    let mut n = 0;
    messages.retain(|m| {
        n += 1;
        if gone(m) {
            removed.push((n, m.uid));
            false
        } else {
            true
        }
    });
    removed
}

/// `* VANISHED [(EARLIER)] uid-set`, nothing when `uids` is empty.
fn write_vanished(out: &mut Vec<u8>, earlier: bool, uids: &[(u32, u32)]) {
    if uids.is_empty() {
        return;
    }
    out.extend_from_slice(b"* VANISHED ");
    if earlier {
        out.extend_from_slice(b"(EARLIER) ");
    }
    out.extend_from_slice(write_ranges(uids).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn batch_len(job: &SearchJob, batch: usize) -> usize {
    batch.min(job.candidates.len() - job.next)
}

fn key_needs_bytes(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(keys) => keys.iter().any(key_needs_bytes),
        SearchKey::Or(a, b) => key_needs_bytes(a) || key_needs_bytes(b),
        SearchKey::Not(k) => key_needs_bytes(k),
        SearchKey::Header(..)
        | SearchKey::Body(_)
        | SearchKey::Text(_)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_) => true,
        _ => false,
    }
}

fn key_has_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(keys) => keys.iter().any(key_has_modseq),
        SearchKey::Or(a, b) => key_has_modseq(a) || key_has_modseq(b),
        SearchKey::Not(k) => key_has_modseq(k),
        SearchKey::ModSeq(_) => true,
        _ => false,
    }
}

/// One message as a search sees it.
struct Ctx<'a> {
    n: u32,
    count: u32,
    largest_uid: u32,
    message: &'a MessageView,
    bytes: Option<&'a [u8]>,
}

fn contains_ci(haystack: &[u8], needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    let needle = needle.to_ascii_lowercase().into_bytes();
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(&needle))
}

fn header_of(bytes: &[u8]) -> &[u8] {
    let part = mime::parse(bytes);
    &bytes[part.header]
}

fn sent_day(bytes: &[u8]) -> Option<i64> {
    let fields = mime::fields(header_of(bytes));
    let date = fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("Date"))?;
    // "Tue, 1 Jul 2003 10:52:37 +0200": day, month, year.
    let words: Vec<&str> = date
        .value
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let start = usize::from(words.first()?.chars().next()?.is_alphabetic());
    let day = words.get(start)?;
    let month = words.get(start + 1)?;
    let year = words.get(start + 2)?;
    parser::parse_day(&format!("{day}-{month}-{year}"))
}

fn matches(key: &SearchKey, ctx: &Ctx<'_>) -> bool {
    let m = ctx.message;
    let day = m.internal_date.div_euclid(86_400);
    match key {
        SearchKey::All => true,
        SearchKey::And(keys) => keys.iter().all(|k| matches(k, ctx)),
        SearchKey::Or(a, b) => matches(a, ctx) || matches(b, ctx),
        SearchKey::Not(k) => !matches(k, ctx),
        // No message is `\Recent` here (the flag is not kept).
        SearchKey::Flag(Flag::Recent, set) => !set,
        SearchKey::Flag(flag, set) => {
            m.flags.iter().any(|f| match (f, flag) {
                (Flag::Keyword(a), Flag::Keyword(b)) => a.eq_ignore_ascii_case(b),
                (a, b) => a == b,
            }) == *set
        }
        SearchKey::New => false,
        SearchKey::Old => true,
        SearchKey::Sequence(set) => set.contains(ctx.n, ctx.count),
        SearchKey::Uid(set) => set.contains(m.uid, ctx.largest_uid),
        SearchKey::Larger(n) => m.size > *n,
        SearchKey::Smaller(n) => m.size < *n,
        SearchKey::Before(d) => day < *d,
        SearchKey::On(d) => day == *d,
        SearchKey::Since(d) => day >= *d,
        SearchKey::SentBefore(d) => ctx.bytes.and_then(sent_day).is_some_and(|s| s < *d),
        SearchKey::SentOn(d) => ctx.bytes.and_then(sent_day).is_some_and(|s| s == *d),
        SearchKey::SentSince(d) => ctx.bytes.and_then(sent_day).is_some_and(|s| s >= *d),
        SearchKey::Header(name, value) => ctx.bytes.is_some_and(|bytes| {
            mime::fields(header_of(bytes))
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(name))
                .any(|f| contains_ci(f.value.as_bytes(), value))
        }),
        SearchKey::Body(text) => ctx.bytes.is_some_and(|bytes| {
            let part = mime::parse(bytes);
            contains_ci(&bytes[part.body], text)
        }),
        SearchKey::Text(text) => ctx.bytes.is_some_and(|bytes| contains_ci(bytes, text)),
        SearchKey::ModSeq(n) => m.modseq >= *n,
    }
}

/// The section's bytes of `bytes` (`None`: no such part).
fn section_bytes<'a>(
    bytes: &'a [u8],
    root: &mime::Part,
    section: &Section,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    use std::borrow::Cow;
    let part = root.find(&section.part)?;
    // For a message/rfc822 part, HEADER and TEXT are its inner message's.
    let (header, body) = match (&part.kind, section.part.is_empty()) {
        (mime::Kind::Message(inner), false)
            if matches!(
                section.text,
                SectionText::Header | SectionText::Text | SectionText::HeaderFields { .. }
            ) =>
        {
            (inner.header.clone(), inner.body.clone())
        }
        _ => (part.header.clone(), part.body.clone()),
    };
    Some(match &section.text {
        SectionText::Full if section.part.is_empty() => Cow::Borrowed(bytes),
        SectionText::Full => Cow::Borrowed(&bytes[part.body.clone()]),
        SectionText::Header => Cow::Borrowed(&bytes[header]),
        SectionText::Mime => Cow::Borrowed(&bytes[part.header.clone()]),
        SectionText::Text => Cow::Borrowed(&bytes[body]),
        SectionText::HeaderFields { fields, not } => {
            let mut out = Vec::new();
            let block = &bytes[header];
            let mut keep = false;
            for line in block.split_inclusive(|&b| b == b'\n') {
                if line == b"\r\n" || line == b"\n" {
                    continue;
                }
                if line[0] != b' ' && line[0] != b'\t' {
                    let name = line.split(|&b| b == b':').next().unwrap_or(b"");
                    let name = String::from_utf8_lossy(name);
                    let listed = fields.iter().any(|f| f.eq_ignore_ascii_case(name.trim()));
                    keep = listed != *not;
                }
                if keep {
                    out.extend_from_slice(line);
                }
            }
            out.extend_from_slice(b"\r\n");
            Cow::Owned(out)
        }
    })
}

fn section_name(section: &Section) -> String {
    let mut name: Vec<String> = section.part.iter().map(u32::to_string).collect();
    match &section.text {
        SectionText::Full => {}
        SectionText::Header => name.push("HEADER".into()),
        SectionText::Text => name.push("TEXT".into()),
        SectionText::Mime => name.push("MIME".into()),
        SectionText::HeaderFields { fields, not } => name.push(format!(
            "HEADER.FIELDS{} ({})",
            if *not { ".NOT" } else { "" },
            fields
                .iter()
                .map(|f| f.to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join(" ")
        )),
    }
    name.join(".")
}

fn write_literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
}

/// A BINARY section: a `~{n}` literal when it holds a NUL, which a plain literal may not
/// (RFC 3516 4.3).
fn write_binary_literal(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.contains(&0) {
        out.push(b'~');
    }
    write_literal(out, bytes);
}

/// Decodes base64 or quoted-printable content for BINARY.
fn decode_transfer(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    match encoding {
        "base64" => {
            let text: String = bytes
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .map(|&b| b as char)
                .collect();
            crate::sasl::base64_decode(&text).unwrap_or_default()
        }
        "quoted-printable" => {
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'=' if bytes.get(i + 1) == Some(&b'\r')
                        && bytes.get(i + 2) == Some(&b'\n') =>
                    {
                        i += 3
                    }
                    b'=' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
                    b'=' if i + 2 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok());
                        match hex {
                            Some(v) => {
                                out.push(v);
                                i += 3;
                            }
                            None => {
                                out.push(b'=');
                                i += 1;
                            }
                        }
                    }
                    b => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            out
        }
        _ => bytes.to_vec(),
    }
}

/// What a FETCH response is written from besides the message's state: its bytes, or its
/// stored description.
#[derive(Clone, Copy, Debug, Default)]
struct Loaded<'a> {
    bytes: Option<&'a [u8]>,
    described: Option<Described<'a>>,
}

/// One `* n FETCH (...)` response.
fn write_fetch(
    out: &mut Vec<u8>,
    n: usize,
    m: &MessageView,
    items: &[FetchItem],
    loaded: Loaded<'_>,
    condstore: bool,
    newly_seen: bool,
) {
    let Loaded { bytes, described } = loaded;
    let root = bytes.map(mime::parse);
    out.extend_from_slice(format!("* {n} FETCH (").as_bytes());
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    let mut wrote_flags = false;
    for item in items {
        match item {
            FetchItem::Uid => {
                sep(out);
                out.extend_from_slice(format!("UID {}", m.uid).as_bytes());
            }
            FetchItem::Flags => {
                sep(out);
                out.extend_from_slice(b"FLAGS ");
                write_flags(out, &m.flags);
                wrote_flags = true;
            }
            FetchItem::InternalDate => {
                sep(out);
                out.extend_from_slice(
                    format!("INTERNALDATE \"{}\"", internal_date(m.internal_date)).as_bytes(),
                );
            }
            FetchItem::Rfc822Size => {
                sep(out);
                out.extend_from_slice(format!("RFC822.SIZE {}", m.size).as_bytes());
            }
            FetchItem::ModSeq => {
                sep(out);
                out.extend_from_slice(format!("MODSEQ ({})", m.modseq).as_bytes());
            }
            FetchItem::Envelope => {
                if let Some(described) = &described {
                    sep(out);
                    out.extend_from_slice(b"ENVELOPE ");
                    out.extend_from_slice(described.envelope);
                    continue;
                }
                let (Some(bytes), Some(root)) = (bytes, &root) else {
                    continue;
                };
                sep(out);
                out.extend_from_slice(b"ENVELOPE ");
                mime::write_envelope(out, &mime::fields(&bytes[root.header.clone()]));
            }
            FetchItem::BodyStructure | FetchItem::BodyShort => {
                let extensible = *item == FetchItem::BodyStructure;
                let name: &[u8] = if extensible {
                    b"BODYSTRUCTURE "
                } else {
                    b"BODY "
                };
                if let Some(described) = &described {
                    sep(out);
                    out.extend_from_slice(name);
                    out.extend_from_slice(if extensible {
                        described.body_structure
                    } else {
                        described.body
                    });
                    continue;
                }
                let (Some(bytes), Some(root)) = (bytes, &root) else {
                    continue;
                };
                sep(out);
                out.extend_from_slice(name);
                mime::write_body_structure(out, root, bytes, extensible);
            }
            FetchItem::Rfc822(part) => {
                let (Some(bytes), Some(root)) = (bytes, &root) else {
                    continue;
                };
                sep(out);
                let (name, data) = match part {
                    Rfc822Part::Whole => ("RFC822", bytes),
                    Rfc822Part::Header => ("RFC822.HEADER", &bytes[root.header.clone()]),
                    Rfc822Part::Text => ("RFC822.TEXT", &bytes[root.body.clone()]),
                };
                out.extend_from_slice(name.as_bytes());
                out.push(b' ');
                write_literal(out, data);
            }
            FetchItem::Body {
                section,
                partial,
                binary,
                ..
            } => {
                let (Some(bytes), Some(root)) = (bytes, &root) else {
                    continue;
                };
                sep(out);
                let prefix = if *binary { "BINARY" } else { "BODY" };
                out.extend_from_slice(format!("{prefix}[{}]", section_name(section)).as_bytes());
                let data = section_bytes(bytes, root, section);
                let data = match (data, binary) {
                    (Some(d), true) => {
                        let encoding = root
                            .find(&section.part)
                            .map_or("7bit".to_owned(), |p| p.encoding.clone());
                        Some(std::borrow::Cow::Owned(decode_transfer(&encoding, &d)))
                    }
                    (d, _) => d,
                };
                match (data, partial) {
                    (None, _) => {
                        if let Some((start, _)) = partial {
                            out.extend_from_slice(format!("<{start}>").as_bytes());
                        }
                        out.extend_from_slice(b" NIL");
                    }
                    (Some(data), Some((start, len))) => {
                        let start_usize = (*start as usize).min(data.len());
                        let end = start_usize.saturating_add(*len as usize).min(data.len());
                        out.extend_from_slice(format!("<{start}> ").as_bytes());
                        let write = if *binary {
                            write_binary_literal
                        } else {
                            write_literal
                        };
                        write(out, &data[start_usize..end]);
                    }
                    (Some(data), None) => {
                        out.push(b' ');
                        let write = if *binary {
                            write_binary_literal
                        } else {
                            write_literal
                        };
                        write(out, &data);
                    }
                }
            }
            FetchItem::BinarySize(part) => {
                let (Some(bytes), Some(root)) = (bytes, &root) else {
                    continue;
                };
                sep(out);
                let size = root
                    .find(part)
                    .map(|p| decode_transfer(&p.encoding, &bytes[p.body.clone()]).len())
                    .unwrap_or(0);
                let name: Vec<String> = part.iter().map(u32::to_string).collect();
                out.extend_from_slice(format!("BINARY.SIZE[{}] {size}", name.join(".")).as_bytes());
            }
        }
    }
    // A fetch that set `\Seen` reports the new flags (RFC 3501 6.4.5), asked or not.
    if newly_seen && !wrote_flags {
        sep(out);
        out.extend_from_slice(b"FLAGS ");
        write_flags(out, &m.flags);
    }
    if condstore && !items.contains(&FetchItem::ModSeq) && newly_seen {
        sep(out);
        out.extend_from_slice(format!("MODSEQ ({})", m.modseq).as_bytes());
    }
    out.extend_from_slice(b")\r\n");
}

#[cfg(test)]
mod tests;
