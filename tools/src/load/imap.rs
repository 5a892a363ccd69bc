//! The IMAP4rev1 session of `porcupine-load`: what a mail client does when it opens a mailbox,
//! against any IMAP server, with each command's latency and every fetched body checked.
//!
//! One session: LOGIN, SELECT INBOX, `UID FETCH n:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])`
//! for the headers the client has not seen yet (`n` comes from the caller's cache of the
//! user's UIDVALIDITY and highest UID seen), `UID FETCH … (BODY.PEEK[])` of the newest few of
//! those (each body checked against its `X-Load-Sum` and its RFC822.SIZE), `UID STORE …
//! +FLAGS (\Seen)` on them, APPEND of one new message (LITERAL+ when offered), `UID STORE …
//! +FLAGS (\Deleted)` and EXPUNGE of one message the client knows, chosen at random (two
//! while the mailbox is larger than when this client first opened it, so that hot mailboxes
//! that concurrent sessions append to keep their size), now and then a short IDLE (done at
//! once when EXISTS arrives, else after a bounded time), LOGOUT. STARTTLS first when asked.
//!
//! Responses are read whole: a line ending in `{n}` is followed by an n-byte literal and the
//! rest of the response, so bodies, headers and odd strings in any field parse the same way.
//! Nothing from the socket is trusted: literals and lines have limits, and a malformed
//! response is a protocol error, never a panic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::{ClientError, Lines, Tls};
use super::workload::{self, Checked};

type Result<T> = std::result::Result<T, ClientError>;

/// The largest literal a server may send (messages are at most 1 MiB; headroom for headers).
const LITERAL_BYTES_MAX: usize = 64 << 20;
/// The most literals in one response (a FETCH of one message has one or two).
const LITERALS_MAX: usize = 64;

/// The commands a session sends, each counted and timed on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Command {
    Capability,
    StartTls,
    Login,
    Select,
    FetchHeaders,
    FetchBodies,
    StoreSeen,
    Append,
    StoreDeleted,
    Expunge,
    Idle,
    Logout,
}

impl Command {
    pub const ALL: [Command; 12] = [
        Command::Capability,
        Command::StartTls,
        Command::Login,
        Command::Select,
        Command::FetchHeaders,
        Command::FetchBodies,
        Command::StoreSeen,
        Command::Append,
        Command::StoreDeleted,
        Command::Expunge,
        Command::Idle,
        Command::Logout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Command::Capability => "CAPABILITY",
            Command::StartTls => "STARTTLS",
            Command::Login => "LOGIN",
            Command::Select => "SELECT",
            Command::FetchHeaders => "FETCH-HEADERS",
            Command::FetchBodies => "FETCH-BODIES",
            Command::StoreSeen => "STORE-SEEN",
            Command::Append => "APPEND",
            Command::StoreDeleted => "STORE-DELETED",
            Command::Expunge => "EXPUNGE",
            Command::Idle => "IDLE",
            Command::Logout => "LOGOUT",
        }
    }
}

/// What a client remembers of a mailbox between its sessions.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    pub uidvalidity: u32,
    /// The highest UID whose header it has fetched.
    pub last_uid: u32,
    /// Messages it has seen and not deleted itself: UID and load id.
    pub known: Vec<(u32, Option<String>)>,
    /// The mailbox's size (EXISTS) when this client first opened it.
    pub baseline: u32,
}

/// Messages a client remembers per mailbox at most (the oldest are forgotten first).
const KNOWN_MAX: usize = 10_000;

/// What one session should do beyond reading.
#[derive(Debug)]
pub struct Plan<'a> {
    pub addr: SocketAddr,
    pub user: &'a str,
    pub password: &'a str,
    pub tls: Tls<'a>,
    /// What this client remembers of the mailbox, if it has been here.
    pub cache: Option<Cache>,
    /// A random number: which known messages to delete.
    pub pick: u64,
    /// Bodies fetched (and checked) at most, the newest of the new messages.
    pub bodies_max: usize,
    /// The message to APPEND to INBOX.
    pub append: &'a [u8],
    /// Whether to delete and expunge one of the new messages.
    pub expunge: bool,
    /// IDLE before LOGOUT, for at most this long.
    pub idle: Option<Duration>,
    /// Stop after LOGIN (no mailbox touched): the warm-up.
    pub login_only: bool,
}

/// What one session did, filled in as it goes (so a failed session still reports its part).
#[derive(Debug, Default)]
pub struct Tally {
    /// The server's greeting, its response code left out (capabilities change with state).
    pub greeting: Option<String>,
    /// Every command answered OK, with its latency in microseconds.
    pub ops: Vec<(Command, u64)>,
    /// The cache to keep for the next session of this user.
    pub cache: Option<Cache>,
    /// Headers fetched.
    pub headers: u64,
    /// Bodies fetched and checked (load messages only: others have no checksum).
    pub bodies_checked: u64,
    /// Bodies fetched that are not load messages.
    pub bodies_foreign: u64,
    /// Load ids of bodies whose checksum did not match, or whose length differs from the
    /// RFC822.SIZE the server announced.
    pub corrupt: Vec<String>,
    /// Whether the APPEND was answered OK.
    pub appended: bool,
    /// Load ids of messages this session expunged (answered OK).
    pub expunged: Vec<String>,
    /// Load ids whose removal was asked for but not confirmed (the session failed between the
    /// STORE \Deleted and EXPUNGE's OK): another session's EXPUNGE may remove them.
    pub uncertain: Vec<String>,
    /// Whether the session went into IDLE, and whether an EXISTS ended it early.
    pub idled: bool,
    pub idle_woken: bool,
}

/// One session, within `limit`.
pub async fn session(plan: &Plan<'_>, limit: Duration, tally: &mut Tally) -> Result<()> {
    super::client::within(limit, steps(plan, tally)).await
}

/// A response: text pieces, each but the last followed by the literal of the same index.
#[derive(Debug, Default)]
struct Response {
    pieces: Vec<Vec<u8>>,
    literals: Vec<Vec<u8>>,
}

impl Response {
    fn first(&self) -> &[u8] {
        self.pieces.first().map_or(&[][..], |p| p.as_slice())
    }

    /// The text with literals left out: for status lines and short untagged responses.
    fn text(&self) -> String {
        let mut out = Vec::new();
        for piece in &self.pieces {
            out.extend_from_slice(piece);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// `{n}` (or `{n+}`) at the end of a line: n.
fn literal_size(line: &[u8]) -> Result<Option<(usize, usize)>> {
    let Some(body) = line.strip_suffix(b"}") else {
        return Ok(None);
    };
    let Some(open) = body.iter().rposition(|&b| b == b'{') else {
        return Ok(None);
    };
    let digits = body[open + 1..]
        .strip_suffix(b"+")
        .unwrap_or(&body[open + 1..]);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|&n| n <= LITERAL_BYTES_MAX)
        .ok_or_else(|| ClientError::Protocol("a literal too large".into()))?;
    Ok(Some((open, n)))
}

async fn read_response(lines: &mut Lines) -> Result<Response> {
    let mut response = Response::default();
    loop {
        let mut line = lines.line().await?;
        match literal_size(&line)? {
            Some((open, n)) => {
                if response.literals.len() >= LITERALS_MAX {
                    return Err(ClientError::Protocol("too many literals".into()));
                }
                line.truncate(open);
                response.pieces.push(line);
                response.literals.push(lines.exact(n).await?);
            }
            None => {
                response.pieces.push(line);
                return Ok(response);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Atom(&'a [u8]),
    String(Vec<u8>),
    Open,
    Close,
}

/// The tokens of a response (atoms keep a `[…]` section whole: `BODY[HEADER]`).
fn tokens(response: &Response) -> Result<Vec<Token<'_>>> {
    let mut out = Vec::new();
    for (i, piece) in response.pieces.iter().enumerate() {
        let mut at = 0;
        while at < piece.len() {
            match piece[at] {
                b' ' => at += 1,
                b'(' => {
                    out.push(Token::Open);
                    at += 1;
                }
                b')' => {
                    out.push(Token::Close);
                    at += 1;
                }
                b'"' => {
                    let mut s = Vec::new();
                    at += 1;
                    loop {
                        match piece.get(at) {
                            None => return Err(ClientError::Protocol("unended string".into())),
                            Some(b'"') => break,
                            Some(b'\\') => {
                                at += 1;
                                s.push(*piece.get(at).ok_or_else(|| {
                                    ClientError::Protocol("unended string".into())
                                })?);
                            }
                            Some(&b) => s.push(b),
                        }
                        at += 1;
                    }
                    at += 1;
                    out.push(Token::String(s));
                }
                _ => {
                    let start = at;
                    let mut depth = 0usize;
                    while at < piece.len() {
                        match piece[at] {
                            b'[' => depth += 1,
                            b']' => depth = depth.saturating_sub(1),
                            b' ' | b'(' | b')' | b'"' if depth == 0 => break,
                            _ => {}
                        }
                        at += 1;
                    }
                    out.push(Token::Atom(&piece[start..at]));
                }
            }
        }
        if let Some(literal) = response.literals.get(i) {
            out.push(Token::String(literal.clone()));
        }
    }
    Ok(out)
}

/// What a FETCH response says about one message.
#[derive(Debug, Default)]
struct Fetched {
    uid: Option<u32>,
    size: Option<u64>,
    seen: bool,
    header: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
}

/// `* n FETCH (…)`: its items, or None for another response.
fn fetched(response: &Response) -> Result<Option<Fetched>> {
    let first = response.first();
    if !first.starts_with(b"* ") {
        return Ok(None);
    }
    let all = tokens(response)?;
    let is_fetch = matches!(all.get(2), Some(Token::Atom(a)) if a.eq_ignore_ascii_case(b"FETCH"));
    if !is_fetch || all.get(3) != Some(&Token::Open) {
        return Ok(None);
    }
    let bad = || ClientError::Protocol("malformed FETCH response".into());
    let mut out = Fetched::default();
    let mut i = 4;
    loop {
        let name = match all.get(i) {
            Some(Token::Close) => return Ok(Some(out)),
            Some(Token::Atom(name)) => name.to_ascii_uppercase(),
            _ => return Err(bad()),
        };
        i += 1;
        let number = |t: Option<&Token>| match t {
            Some(Token::Atom(a)) => std::str::from_utf8(a).ok()?.parse::<u64>().ok(),
            _ => None,
        };
        match name.as_slice() {
            b"UID" => {
                out.uid = Some(
                    number(all.get(i))
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(bad)?,
                );
                i += 1;
            }
            b"RFC822.SIZE" => {
                out.size = Some(number(all.get(i)).ok_or_else(bad)?);
                i += 1;
            }
            b"BODY[HEADER]" | b"BODY[]" => {
                let value = match all.get(i) {
                    Some(Token::String(s)) => Some(s.clone()),
                    Some(Token::Atom(a)) if a.eq_ignore_ascii_case(b"NIL") => None,
                    _ => return Err(bad()),
                };
                if name.as_slice() == b"BODY[]" {
                    out.body = value;
                } else {
                    out.header = value;
                }
                i += 1;
            }
            b"FLAGS" => {
                if all.get(i) != Some(&Token::Open) {
                    return Err(bad());
                }
                i += 1;
                loop {
                    match all.get(i) {
                        Some(Token::Close) => break,
                        Some(Token::Atom(flag)) => {
                            out.seen |= flag.eq_ignore_ascii_case(b"\\Seen");
                        }
                        _ => return Err(bad()),
                    }
                    i += 1;
                }
                i += 1;
            }
            _ => {
                // Any other item (MODSEQ (…), INTERNALDATE "…"): skip its value.
                let mut depth = 0usize;
                loop {
                    match all.get(i) {
                        None => return Err(bad()),
                        Some(Token::Open) => depth += 1,
                        Some(Token::Close) => {
                            if depth == 0 {
                                return Err(bad());
                            }
                            depth -= 1;
                        }
                        Some(_) => {}
                    }
                    i += 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
        }
    }
}

/// `* n EXISTS`: n.
fn exists(response: &Response) -> Option<u32> {
    let text = std::str::from_utf8(response.first()).ok()?;
    let mut words = text.strip_prefix("* ")?.split(' ');
    let n = words.next()?.parse().ok()?;
    words
        .next()
        .filter(|w| w.eq_ignore_ascii_case("EXISTS"))
        .map(|_| n)
}

/// The number in a response code such as `[UIDVALIDITY 3857529045]`.
fn code_number(text: &str, code: &str) -> Option<u32> {
    let upper = text.to_ascii_uppercase();
    let at = upper.find(&format!("[{code} "))? + code.len() + 2;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The capabilities a line lists (`* CAPABILITY …` or a `[CAPABILITY …]` code), upper case.
fn capabilities(text: &str) -> Option<Vec<String>> {
    let upper = text.to_ascii_uppercase();
    let list = if let Some(at) = upper.find("[CAPABILITY ") {
        let rest = &upper[at + "[CAPABILITY ".len()..];
        &rest[..rest.find(']')?]
    } else {
        upper.strip_prefix("* CAPABILITY ")?
    };
    Some(list.split_whitespace().map(str::to_owned).collect())
}

/// The X-Load-Id of a header block.
fn load_id(header: &[u8]) -> Option<String> {
    String::from_utf8_lossy(header)
        .split("\r\n")
        .find_map(|l| l.strip_prefix("X-Load-Id:").map(|v| v.trim().to_owned()))
}

/// An IMAP quoted string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn uid_set(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

struct Conn {
    lines: Lines,
    tag: u32,
    capabilities: Vec<String>,
}

impl Conn {
    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("a{}", self.tag)
    }

    fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    fn note_capabilities(&mut self, text: &str) {
        if let Some(list) = capabilities(text) {
            self.capabilities = list;
        }
    }

    /// Reads up to the tagged response of `tag`, giving every other response to `untagged`;
    /// Ok with the tagged line if it says OK.
    async fn finish(
        &mut self,
        command: Command,
        tag: &str,
        mut untagged: impl FnMut(&Response) -> Result<()>,
    ) -> Result<String> {
        loop {
            let response = read_response(&mut self.lines).await?;
            let first = response.first();
            if first.starts_with(tag.as_bytes()) && first.get(tag.len()) == Some(&b' ') {
                let text = response.text();
                let status = text[tag.len() + 1..].split(' ').next().unwrap_or("");
                if status.eq_ignore_ascii_case("OK") {
                    self.note_capabilities(&text);
                    return Ok(text);
                }
                return Err(ClientError::Imap(command.name(), text));
            }
            if first.starts_with(b"* ") {
                let text_start = String::from_utf8_lossy(&first[..first.len().min(16)]);
                if text_start.to_ascii_uppercase().starts_with("* CAPABILITY ") {
                    self.note_capabilities(&response.text());
                }
                untagged(&response)?;
            } else if !first.starts_with(b"+") {
                return Err(ClientError::Protocol(format!(
                    "unexpected response to {}: {:?}",
                    command.name(),
                    String::from_utf8_lossy(&first[..first.len().min(80)])
                )));
            }
        }
    }

    /// Sends `tag text` and reads to its tagged OK; the latency goes to `tally`.
    async fn command(
        &mut self,
        command: Command,
        text: &str,
        tally: &mut Tally,
        untagged: impl FnMut(&Response) -> Result<()>,
    ) -> Result<String> {
        let tag = self.next_tag();
        let began = Instant::now();
        self.lines
            .write(format!("{tag} {text}\r\n").as_bytes())
            .await?;
        let done = self.finish(command, &tag, untagged).await?;
        tally.ops.push((command, micros(began)));
        Ok(done)
    }

    /// Waits for a `+` continuation (untagged responses before it are passed over).
    async fn continuation(&mut self, command: Command) -> Result<()> {
        loop {
            let response = read_response(&mut self.lines).await?;
            let first = response.first();
            if first.starts_with(b"+") {
                return Ok(());
            }
            if !first.starts_with(b"* ") {
                return Err(ClientError::Imap(command.name(), response.text()));
            }
        }
    }
}

fn micros(began: Instant) -> u64 {
    (began.elapsed().as_micros() as u64).max(1)
}

/// A message the header fetch saw.
struct Seen {
    uid: u32,
    size: Option<u64>,
    id: Option<String>,
}

async fn steps(plan: &Plan<'_>, tally: &mut Tally) -> Result<()> {
    let lines = Lines::connect(plan.addr).await?;
    let mut conn = Conn {
        lines,
        tag: 0,
        capabilities: Vec::new(),
    };
    let greeting = read_response(&mut conn.lines).await?.text();
    tally.greeting = Some(greeting_shape(&greeting));
    if !greeting.starts_with("* OK") {
        return Err(ClientError::Imap("greeting", greeting));
    }
    conn.note_capabilities(&greeting);
    if conn.capabilities.is_empty() {
        conn.command(Command::Capability, "CAPABILITY", tally, |_| Ok(()))
            .await?;
    }
    if let Some(config) = plan.tls {
        if !conn.has("STARTTLS") {
            return Err(ClientError::Protocol(
                "the server offers no STARTTLS".into(),
            ));
        }
        conn.command(Command::StartTls, "STARTTLS", tally, |_| Ok(()))
            .await?;
        conn.lines.start_tls(config).await?;
        conn.capabilities.clear();
        conn.command(Command::Capability, "CAPABILITY", tally, |_| Ok(()))
            .await?;
    }
    let login = format!("LOGIN {} {}", quoted(plan.user), quoted(plan.password));
    conn.command(Command::Login, &login, tally, |_| Ok(()))
        .await?;
    if plan.login_only {
        return logout(&mut conn, tally).await;
    }

    // SELECT: UIDVALIDITY decides whether the cache still holds.
    let mut uidvalidity = None;
    let mut messages = 0;
    let select = conn
        .command(Command::Select, "SELECT INBOX", tally, |r| {
            if let Some(v) = code_number(&r.text(), "UIDVALIDITY") {
                uidvalidity = Some(v);
            }
            if let Some(n) = exists(r) {
                messages = n;
            }
            Ok(())
        })
        .await?;
    if select.to_ascii_uppercase().contains("[READ-ONLY]") {
        // A read-only INBOX would refuse the STOREs: say so plainly.
        return Err(ClientError::Imap("SELECT", select));
    }
    let uidvalidity = uidvalidity.unwrap_or(0);
    let mut cache = match &plan.cache {
        Some(cache) if cache.uidvalidity == uidvalidity => cache.clone(),
        _ => Cache {
            uidvalidity,
            baseline: messages,
            ..Cache::default()
        },
    };
    let last_seen = cache.last_uid;

    // The headers of what is new since this client's last visit.
    let from = last_seen.saturating_add(1);
    let mut new: Vec<Seen> = Vec::new();
    let fetch = format!("UID FETCH {from}:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])");
    conn.command(Command::FetchHeaders, &fetch, tally, |r| {
        if let Some(f) = fetched(r)? {
            // `n:*` names the last message even when its UID is below n.
            if let (Some(uid), Some(header)) = (f.uid, f.header) {
                if uid >= from {
                    new.push(Seen {
                        uid,
                        size: f.size,
                        id: load_id(&header),
                    });
                }
            }
        }
        Ok(())
    })
    .await?;
    new.sort_by_key(|s| s.uid);
    new.dedup_by_key(|s| s.uid);
    tally.headers += new.len() as u64;
    if let Some(newest) = new.last() {
        cache.last_uid = newest.uid.max(last_seen);
    }
    cache
        .known
        .extend(new.iter().map(|s| (s.uid, s.id.clone())));
    if cache.known.len() > KNOWN_MAX {
        let extra = cache.known.len() - KNOWN_MAX;
        cache.known.drain(..extra);
    }
    tally.cache = Some(cache.clone());

    // The newest few bodies, checked, then marked \Seen.
    let chosen: Vec<u32> = new
        .iter()
        .rev()
        .take(plan.bodies_max)
        .map(|s| s.uid)
        .collect();
    if !chosen.is_empty() {
        let set = uid_set(&chosen);
        let mut bodies: Vec<(u32, Vec<u8>)> = Vec::new();
        conn.command(
            Command::FetchBodies,
            &format!("UID FETCH {set} (BODY.PEEK[])"),
            tally,
            |r| {
                if let Some(f) = fetched(r)? {
                    if let (Some(uid), Some(body)) = (f.uid, f.body) {
                        bodies.push((uid, body));
                    }
                }
                Ok(())
            },
        )
        .await?;
        for (uid, body) in bodies {
            let announced = new.iter().find(|s| s.uid == uid).and_then(|s| s.size);
            let size_differs = announced.is_some_and(|size| size != body.len() as u64);
            match workload::check(&body) {
                Checked::Intact(id) => {
                    tally.bodies_checked += 1;
                    if size_differs {
                        tally.corrupt.push(id);
                    }
                }
                Checked::Corrupt(id) => {
                    tally.bodies_checked += 1;
                    tally.corrupt.push(id);
                }
                Checked::Foreign => tally.bodies_foreign += 1,
            }
        }
        conn.command(
            Command::StoreSeen,
            &format!("UID STORE {set} +FLAGS (\\Seen)"),
            tally,
            |_| Ok(()),
        )
        .await?;
    }

    // One new message.
    append(&mut conn, plan.append, tally).await?;
    tally.appended = true;

    // One known message deleted, chosen at random (two while the mailbox is larger than
    // this client first found it). One another session deleted already is flagged in vain.
    if plan.expunge && !cache.known.is_empty() {
        let count = if messages > cache.baseline { 2 } else { 1 };
        let mut pick = plan.pick;
        let mut victims = Vec::new();
        for _ in 0..count.min(cache.known.len()) {
            // xorshift64*: a few independent choices from one random number.
            pick ^= pick >> 12;
            pick ^= pick << 25;
            pick ^= pick >> 27;
            let at = (pick.wrapping_mul(0x2545_f491_4f6c_dd1d) % cache.known.len() as u64) as usize;
            victims.push(cache.known.swap_remove(at));
        }
        tally.cache = Some(cache.clone());
        let ids: Vec<String> = victims.iter().filter_map(|(_, id)| id.clone()).collect();
        tally.uncertain.extend(ids.iter().cloned());
        let uids: Vec<u32> = victims.iter().map(|(uid, _)| *uid).collect();
        conn.command(
            Command::StoreDeleted,
            &format!("UID STORE {} +FLAGS (\\Deleted)", uid_set(&uids)),
            tally,
            |_| Ok(()),
        )
        .await?;
        conn.command(Command::Expunge, "EXPUNGE", tally, |_| Ok(()))
            .await?;
        tally.uncertain.retain(|u| !ids.contains(u));
        tally.expunged.extend(ids);
    }

    if let Some(bound) = plan.idle {
        if conn.has("IDLE") {
            idle(&mut conn, bound, tally).await?;
        }
    }
    logout(&mut conn, tally).await
}

/// APPEND to INBOX: one write with LITERAL+, else after the server's continuation.
async fn append(conn: &mut Conn, message: &[u8], tally: &mut Tally) -> Result<()> {
    let tag = conn.next_tag();
    let began = Instant::now();
    let plus = conn.has("LITERAL+");
    let head = format!(
        "{tag} APPEND INBOX {{{}{}}}\r\n",
        message.len(),
        if plus { "+" } else { "" }
    );
    let mut out = Vec::with_capacity(head.len() + message.len() + 2);
    out.extend_from_slice(head.as_bytes());
    if plus {
        out.extend_from_slice(message);
        out.extend_from_slice(b"\r\n");
        conn.lines.write(&out).await?;
    } else {
        conn.lines.write(&out).await?;
        conn.continuation(Command::Append).await?;
        out.clear();
        out.extend_from_slice(message);
        out.extend_from_slice(b"\r\n");
        conn.lines.write(&out).await?;
    }
    conn.finish(Command::Append, &tag, |_| Ok(())).await?;
    tally.ops.push((Command::Append, micros(began)));
    Ok(())
}

/// IDLE until EXISTS arrives or `bound` passes, then DONE.
async fn idle(conn: &mut Conn, bound: Duration, tally: &mut Tally) -> Result<()> {
    let tag = conn.next_tag();
    let began = Instant::now();
    conn.lines
        .write(format!("{tag} IDLE\r\n").as_bytes())
        .await?;
    conn.continuation(Command::Idle).await?;
    tally.idled = true;
    let deadline = began + bound;
    'waiting: loop {
        // Whole responses already here first; then wait for more bytes or the deadline. Only
        // the wait is cancelled (a read that has not completed changes nothing), never a
        // response half read.
        while conn.lines.has_line() {
            let response = read_response(&mut conn.lines).await?;
            if exists(&response).is_some() {
                tally.idle_woken = true;
                break 'waiting;
            }
            if !response.first().starts_with(b"* ") {
                return Err(ClientError::Imap("IDLE", response.text()));
            }
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let timed_out = async {
            glommio::timer::sleep(left).await;
            Ok(false)
        };
        let more = async { conn.lines.read_more().await.map(|()| true) };
        if !futures_lite::future::or(more, timed_out).await? {
            break;
        }
    }
    conn.lines.write(b"DONE\r\n").await?;
    conn.finish(Command::Idle, &tag, |_| Ok(())).await?;
    tally.ops.push((Command::Idle, micros(began)));
    Ok(())
}

async fn logout(conn: &mut Conn, tally: &mut Tally) -> Result<()> {
    conn.command(Command::Logout, "LOGOUT", tally, |_| Ok(()))
        .await?;
    conn.lines.close().await;
    Ok(())
}

/// A greeting without its response code: `* OK [CAPABILITY …] text` → `* OK text`.
fn greeting_shape(greeting: &str) -> String {
    match (greeting.find('['), greeting.find(']')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}{}", greeting[..open].trim_end(), &greeting[close + 1..])
        }
        _ => greeting.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(pieces: &[&[u8]], literals: &[&[u8]]) -> Response {
        Response {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            literals: literals.iter().map(|l| l.to_vec()).collect(),
        }
    }

    #[test]
    fn literal_sizes_are_read_and_bounded() {
        assert_eq!(
            literal_size(b"* 1 FETCH (BODY[] {12}").ok().flatten(),
            Some((18, 12))
        );
        assert_eq!(
            literal_size(b"a1 APPEND INBOX {7+}").ok().flatten(),
            Some((16, 7))
        );
        assert!(matches!(literal_size(b"* OK {nope}"), Ok(None)));
        assert!(matches!(literal_size(b"* OK done"), Ok(None)));
        assert!(literal_size(b"* 1 FETCH (BODY[] {99999999999999999999}").is_err());
    }

    #[test]
    fn a_fetch_with_literals_and_other_items_parses() {
        let r = response(
            &[
                b"* 3 FETCH (UID 17 MODSEQ (5) FLAGS (\\Seen \\Recent) RFC822.SIZE 42 BODY[HEADER] ",
                b" INTERNALDATE \"1-Jan-2020 00:00:00 +0000\")",
            ],
            &[b"X-Load-Id: r-1\r\nSubject: (x)\r\n\r\n"],
        );
        let f = fetched(&r).ok().flatten().expect("a FETCH");
        assert_eq!(f.uid, Some(17));
        assert_eq!(f.size, Some(42));
        assert!(f.seen);
        assert_eq!(
            load_id(f.header.as_deref().unwrap_or_default()).as_deref(),
            Some("r-1")
        );
        let body = response(&[b"* 1 FETCH (UID 2 BODY[] \"a \\\"q\\\" b\")"], &[]);
        let f = fetched(&body).ok().flatten().expect("a FETCH");
        assert_eq!(f.body.as_deref(), Some(&b"a \"q\" b"[..]));
        assert!(fetched(&response(&[b"* 4 EXISTS"], &[]))
            .ok()
            .flatten()
            .is_none());
    }

    #[test]
    fn malformed_responses_are_errors_not_panics() {
        for bad in [
            &b"* 1 FETCH (UID"[..],
            b"* 1 FETCH (UID x)",
            b"* 1 FETCH (FLAGS \\Seen)",
            b"* 1 FETCH (BODY[] \"unended",
            b"* 1 FETCH (X (((",
            b"* 1 FETCH (X ))",
            b"* 1 FETCH (UID 99999999999)",
        ] {
            assert!(fetched(&response(&[bad], &[])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_details_are_found() {
        assert_eq!(
            code_number("* OK [UIDVALIDITY 3857529045] UIDs valid", "UIDVALIDITY"),
            Some(3857529045)
        );
        assert_eq!(exists(&response(&[b"* 12 EXISTS"], &[])), Some(12));
        assert_eq!(exists(&response(&[b"* 12 RECENT"], &[])), None);
        let caps =
            capabilities("* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] ready").unwrap_or_default();
        assert!(caps.contains(&"LITERAL+".to_owned()));
        assert_eq!(
            greeting_shape("* OK [CAPABILITY IMAP4rev1] Dovecot ready."),
            "* OK Dovecot ready."
        );
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
