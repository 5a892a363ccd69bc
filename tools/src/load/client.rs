//! Minimal SMTP and POP3 clients for load generation: connection reuse, PIPELINING when the
//! server offers it, and POP3 retrieval with dot-unstuffing. Errors are reply codes or I/O;
//! each connect, delivery and POP session gives up after a limit ([`IO_TIMEOUT`] unless the
//! caller gives less), so a server that stops answering costs a worker one timeout, never the
//! run. (A timer per operation, not per read: io_uring read timeouts cost a cancellation per
//! completed read.)

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::dots;
use super::tls::Conn;

/// TLS for a connection: `None` in clear, else STARTTLS / STLS with this configuration.
pub type Tls<'a> = Option<&'a Arc<rustls::ClientConfig>>;

#[derive(Debug)]
pub enum ClientError {
    Io(std::io::Error),
    /// The server answered with this code (SMTP) or `-ERR` (POP3, code 0).
    Reply(u16, String),
    Protocol(String),
    /// An IMAP command answered NO or BAD: the command's name and the tagged line.
    Imap(&'static str, String),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// A short label for error counts: the reply code, or the kind of failure.
    pub fn label(&self) -> String {
        match self {
            ClientError::Io(e) => format!("io:{:?}", e.kind()),
            ClientError::Reply(0, text) => match text.split_whitespace().nth(1) {
                Some(code) if code.starts_with('[') => format!("pop3:{code}"),
                _ => "pop3:-ERR".into(),
            },
            ClientError::Reply(code, _) => code.to_string(),
            ClientError::Protocol(_) => "protocol".into(),
            ClientError::Imap(command, line) => {
                // "a7 NO [TRYCREATE] …": the command, the status and its response code if any.
                let mut words = line.split_whitespace().skip(1);
                let status = words.next().unwrap_or("?");
                match words.next() {
                    Some(code) if code.starts_with('[') => {
                        format!("imap:{command}:{status}:{}", code.trim_end_matches(']'))
                    }
                    _ => format!("imap:{command}:{status}"),
                }
            }
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// `work`, or a timed-out error once `limit` has passed.
pub async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let timeout = async {
        glommio::timer::sleep(limit).await;
        Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the server did not answer in time",
        )))
    };
    futures_lite::future::or(work, timeout).await
}

/// A buffered line reader over a socket. The buffer is zeroed once and reused: bytes between
/// `start` and `end` are unread.
pub(super) struct Lines {
    stream: Conn,
    addr: SocketAddr,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

const READ_BUFFER_BYTES: usize = 64 << 10;
/// The longest line a server may send (a longer one is a protocol error, not a bigger buffer).
const LINE_BYTES_MAX: usize = 1 << 20;

/// How long one connect, delivery or POP session may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

impl Lines {
    /// Connects (callers bound the whole exchange with [`within`]).
    pub(super) async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Io(e.into()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ClientError::Io(e.into()))?;
        Ok(Self {
            stream: Conn::Plain(stream),
            addr,
            buf: vec![0; READ_BUFFER_BYTES],
            start: 0,
            end: 0,
        })
    }

    /// Upgrades the connection to TLS (after STARTTLS / STLS was accepted).
    pub(super) async fn start_tls(&mut self, config: &Arc<rustls::ClientConfig>) -> Result<()> {
        if self.start != self.end {
            return Err(ClientError::Protocol(
                "the server sent more after accepting TLS".into(),
            ));
        }
        let conn = std::mem::replace(&mut self.stream, Conn::Gone);
        self.stream = conn.start_tls(config, self.addr).await?;
        Ok(())
    }

    /// The next line without its CRLF.
    pub(super) async fn line(&mut self) -> Result<Vec<u8>> {
        let mut searched: usize = 0;
        loop {
            let unread = &self.buf[self.start..self.end];
            let from = searched.saturating_sub(1);
            if let Some(at) = dots::find_crlf(&unread[from..]) {
                let line = unread[..from + at].to_vec();
                self.start += from + at + 2;
                return Ok(line);
            }
            if unread.len() > LINE_BYTES_MAX {
                return Err(ClientError::Protocol(format!(
                    "a line longer than {LINE_BYTES_MAX} bytes"
                )));
            }
            searched = unread.len();
            self.read_more().await?;
        }
    }

    /// The next `n` bytes, whatever they are (an IMAP literal; callers bound `n`).
    pub(super) async fn exact(&mut self, n: usize) -> Result<Vec<u8>> {
        while self.end - self.start < n {
            self.read_more().await?;
        }
        let bytes = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        Ok(bytes)
    }

    /// Closes the connection (errors ignored: the exchange is over).
    pub(super) async fn close(&mut self) {
        let _ = self.stream.close().await;
    }

    /// The body of the multi-line response that follows, dot-unstuffed, lines ending in CRLF.
    async fn multiline(&mut self) -> Result<Vec<u8>> {
        let mut searched: usize = 0;
        loop {
            let unread = &self.buf[self.start..self.end];
            if let Some((body_len, consumed)) = dots::find_multiline(unread, searched) {
                let body = dots::unstuff(&unread[..body_len]);
                self.start += consumed;
                return Ok(body);
            }
            searched = unread.len();
            self.read_more().await?;
        }
    }

    /// Whether a whole line is already buffered.
    pub(super) fn has_line(&self) -> bool {
        dots::find_crlf(&self.buf[self.start..self.end]).is_some()
    }

    /// Moves the unread bytes to the front, grows a full buffer, and reads what the socket has.
    /// Cancel-safe: the reader's state changes only once a read has completed.
    pub(super) async fn read_more(&mut self) -> Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A line or response longer than the buffer: grow (zeroing only the new part).
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(ClientError::Protocol("connection closed".into()));
        }
        self.end += n;
        Ok(())
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// One SMTP reply (possibly multi-line): (code, text of the last line).
    async fn reply(&mut self) -> Result<(u16, String)> {
        loop {
            let line = self.line().await?;
            if line.len() < 3 {
                return Err(ClientError::Protocol(format!("short reply {line:?}")));
            }
            let code: u16 = std::str::from_utf8(&line[..3])
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| ClientError::Protocol("reply without a code".into()))?;
            if line.get(3) != Some(&b'-') {
                return Ok((code, String::from_utf8_lossy(&line).into_owned()));
            }
        }
    }

    async fn expect(&mut self, want: u16) -> Result<String> {
        let (code, text) = self.reply().await?;
        if code == want {
            Ok(text)
        } else {
            Err(ClientError::Reply(code, text))
        }
    }
}

/// How the SMTP client sends a message body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// `BDAT size LAST` pipelined with the envelope when the server offers CHUNKING and
    /// PIPELINING (one round trip per message), DATA otherwise.
    ChunkingWhenOffered,
    /// Always DATA (two round trips per message), as clients without RFC 3030 do.
    Data,
}

pub struct SmtpClient {
    /// The server's 220 line.
    pub greeting: String,
    lines: Lines,
    pipelining: bool,
    chunking: bool,
    out: Vec<u8>,
}

impl std::fmt::Debug for SmtpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpClient")
            .field("pipelining", &self.pipelining)
            .field("chunking", &self.chunking)
            .finish()
    }
}

impl SmtpClient {
    /// Connects, reads the greeting and says EHLO (with STARTTLS first when `tls` is given),
    /// within [`IO_TIMEOUT`].
    pub async fn connect(
        addr: SocketAddr,
        helo: &str,
        transfer: Transfer,
        tls: Tls<'_>,
    ) -> Result<Self> {
        within(IO_TIMEOUT, Self::connect_now(addr, helo, transfer, tls)).await
    }

    async fn connect_now(
        addr: SocketAddr,
        helo: &str,
        transfer: Transfer,
        tls: Tls<'_>,
    ) -> Result<Self> {
        let mut lines = Lines::connect(addr).await?;
        let greeting = lines.expect(220).await?;
        let mut offer = ehlo(&mut lines, helo).await?;
        if let Some(config) = tls {
            if !offer.starttls {
                return Err(ClientError::Protocol(
                    "the server offers no STARTTLS".into(),
                ));
            }
            lines.write(b"STARTTLS\r\n").await?;
            lines.expect(220).await?;
            lines.start_tls(config).await?;
            offer = ehlo(&mut lines, helo).await?;
        }
        let (pipelining, chunking) = (
            offer.pipelining,
            offer.chunking && transfer == Transfer::ChunkingWhenOffered,
        );
        Ok(Self {
            greeting,
            lines,
            pipelining,
            chunking: chunking && pipelining,
            out: Vec::with_capacity(8 << 10),
        })
    }

    /// Sends one message; Ok on 250. After an error other than a reply, the connection is in
    /// an unknown state: drop it.
    pub async fn send(&mut self, from: &str, to: &str, message: &[u8]) -> Result<()> {
        within(IO_TIMEOUT, self.send_now(from, to, message)).await
    }

    async fn send_now(&mut self, from: &str, to: &str, message: &[u8]) -> Result<()> {
        if self.chunking {
            return self.send_chunked(from, to, message).await;
        }
        let envelope = format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n");
        if self.pipelining {
            self.lines.write(envelope.as_bytes()).await?;
            let mail = self.lines.reply().await?;
            let rcpt = self.lines.reply().await?;
            let data = self.lines.reply().await?;
            if mail.0 != 250 || rcpt.0 != 250 || data.0 != 354 {
                let failed = [mail, rcpt, data]
                    .into_iter()
                    .find(|r| r.0 >= 400)
                    .unwrap_or((0, "unexpected".into()));
                if data_started(&failed) {
                    self.lines.write(b".\r\n").await?;
                    let _ = self.lines.reply().await?;
                }
                self.lines.write(b"RSET\r\n").await?;
                self.lines.expect(250).await?;
                return Err(ClientError::Reply(failed.0, failed.1));
            }
        } else {
            let mut parts = envelope.split_inclusive("\r\n");
            for want in [250, 250, 354] {
                self.lines
                    .write(parts.next().unwrap_or_default().as_bytes())
                    .await?;
                if let Err(e) = self.lines.expect(want).await {
                    self.lines.write(b"RSET\r\n").await?;
                    let _ = self.lines.reply().await;
                    return Err(e);
                }
            }
        }
        self.out.clear();
        dots::stuff_data(message, &mut self.out);
        let out = std::mem::take(&mut self.out);
        let written = self.lines.write(&out).await;
        self.out = out;
        written?;
        self.lines.expect(250).await.map(|_| ())
    }

    /// The envelope and the whole message as one `BDAT … LAST` chunk, in one write; the server
    /// reads a refused chunk too, so three replies always come back.
    async fn send_chunked(&mut self, from: &str, to: &str, message: &[u8]) -> Result<()> {
        self.out.clear();
        // Written in place: no envelope string per message.
        let _ = write!(
            self.out,
            "MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nBDAT {} LAST\r\n",
            message.len()
        );
        self.out.extend_from_slice(message);
        let out = std::mem::take(&mut self.out);
        let written = self.lines.write(&out).await;
        self.out = out;
        written?;
        let mail = self.lines.reply().await?;
        let rcpt = self.lines.reply().await?;
        let bdat = self.lines.reply().await?;
        if bdat.0 == 250 {
            return Ok(());
        }
        let failed = [mail, rcpt, bdat]
            .into_iter()
            .find(|r| r.0 >= 400)
            .unwrap_or((0, "unexpected".into()));
        self.lines.write(b"RSET\r\n").await?;
        self.lines.expect(250).await?;
        Err(ClientError::Reply(failed.0, failed.1))
    }

    pub async fn quit(mut self) {
        let _ = self.lines.write(b"QUIT\r\n").await;
        let _ = self.lines.reply().await;
        let _ = self.lines.stream.close().await;
    }
}

/// What an EHLO reply offers.
struct Offer {
    pipelining: bool,
    chunking: bool,
    starttls: bool,
}

/// EHLO and its reply.
async fn ehlo(lines: &mut Lines, helo: &str) -> Result<Offer> {
    lines.write(format!("EHLO {helo}\r\n").as_bytes()).await?;
    let mut offer = Offer {
        pipelining: false,
        chunking: false,
        starttls: false,
    };
    loop {
        let line = lines.line().await?;
        let keyword = line.get(4..).unwrap_or_default();
        offer.pipelining |= keyword.eq_ignore_ascii_case(b"PIPELINING");
        offer.chunking |= keyword.eq_ignore_ascii_case(b"CHUNKING");
        offer.starttls |= keyword.eq_ignore_ascii_case(b"STARTTLS");
        if line.len() < 4 || line[3] != b'-' {
            if !line.starts_with(b"250") {
                return Err(ClientError::Reply(
                    0,
                    String::from_utf8_lossy(&line).into_owned(),
                ));
            }
            return Ok(offer);
        }
    }
}

/// STLS (RFC 2595) right after the greeting, when `tls` is given.
async fn stls(lines: &mut Lines, tls: Tls<'_>) -> Result<()> {
    if let Some(config) = tls {
        lines.write(b"STLS\r\n").await?;
        ok(lines.line().await?)?;
        lines.start_tls(config).await?;
    }
    Ok(())
}

fn data_started(reply: &(u16, String)) -> bool {
    reply.0 == 354
}

/// USER and PASS.
async fn authenticate(lines: &mut Lines, user: &str, password: &str) -> Result<()> {
    lines.write(format!("USER {user}\r\n").as_bytes()).await?;
    ok(lines.line().await?)?;
    lines
        .write(format!("PASS {password}\r\n").as_bytes())
        .await?;
    ok(lines.line().await?)?;
    Ok(())
}

/// The server's first line, as text.
fn greeting_text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

/// Logs in and quits at once (no mailbox changes).
pub async fn pop_login(addr: SocketAddr, user: &str, password: &str, tls: Tls<'_>) -> Result<()> {
    within(IO_TIMEOUT, pop_login_steps(addr, user, password, tls)).await
}

async fn pop_login_steps(addr: SocketAddr, user: &str, password: &str, tls: Tls<'_>) -> Result<()> {
    let mut lines = Lines::connect(addr).await?;
    ok(lines.line().await?)?;
    stls(&mut lines, tls).await?;
    authenticate(&mut lines, user, password).await?;
    lines.write(b"QUIT\r\n").await?;
    ok(lines.line().await?)?;
    let _ = lines.stream.close().await;
    Ok(())
}

/// Messages whose RETR and DELE are pipelined in one write when the server offers PIPELINING:
/// the commands of one window (about 1 KB) always fit in the socket buffers, so neither side
/// can block the other while writing.
const POP_WINDOW: usize = 32;

/// Logs in, retrieves every message, deletes them all, quits (the paper's POP session).
/// Returns the messages retrieved; deletions are committed only if QUIT succeeds. When the
/// server lists PIPELINING in CAPA (RFC 2449), RETR and DELE go out a window at a time.
/// A POP session that failed: the error, and if QUIT had been sent, what the session had
/// retrieved (the server may or may not have deleted it: the client cannot tell).
#[derive(Debug)]
pub struct PopFailure {
    pub error: ClientError,
    pub after_quit: Option<Vec<Vec<u8>>>,
}

/// One POP session: retrieve and delete every message, then QUIT, within `limit`.
/// `greeting` gets the server's first line once it has come.
pub async fn pop_session(
    addr: SocketAddr,
    user: &str,
    password: &str,
    limit: Duration,
    tls: Tls<'_>,
    greeting: &mut Option<String>,
) -> std::result::Result<Vec<Vec<u8>>, PopFailure> {
    let mut messages = Vec::new();
    let mut quit_sent = false;
    let steps = pop_session_steps(
        addr,
        user,
        password,
        tls,
        &mut messages,
        &mut quit_sent,
        greeting,
    );
    match within(limit, steps).await {
        Ok(()) => Ok(messages),
        Err(error) => Err(PopFailure {
            error,
            after_quit: quit_sent.then_some(messages),
        }),
    }
}

async fn pop_session_steps(
    addr: SocketAddr,
    user: &str,
    password: &str,
    tls: Tls<'_>,
    messages: &mut Vec<Vec<u8>>,
    quit_sent: &mut bool,
    greeting: &mut Option<String>,
) -> Result<()> {
    let mut lines = Lines::connect(addr).await?;
    let first = lines.line().await?;
    *greeting = Some(greeting_text(&first));
    ok(first)?;
    stls(&mut lines, tls).await?;
    lines.write(b"CAPA\r\n").await?;
    let mut pipelining = false;
    if lines.line().await?.starts_with(b"+OK") {
        loop {
            let line = lines.line().await?;
            if line == b"." {
                break;
            }
            pipelining |= line.eq_ignore_ascii_case(b"PIPELINING");
        }
    }
    authenticate(&mut lines, user, password).await?;
    lines.write(b"STAT\r\n").await?;
    let stat = ok(lines.line().await?)?;
    let count: usize = String::from_utf8_lossy(&stat)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ClientError::Protocol("bad STAT".into()))?;
    let window = if pipelining { POP_WINDOW } else { 1 };
    messages.reserve(count);
    let mut commands = Vec::with_capacity(window * 24);
    let mut first = 1;
    while first <= count {
        let last = (first + window - 1).min(count);
        commands.clear();
        for n in first..=last {
            commands.extend_from_slice(format!("RETR {n}\r\nDELE {n}\r\n").as_bytes());
        }
        lines.write(&commands).await?;
        for _ in first..=last {
            ok(lines.line().await?)?;
            messages.push(lines.multiline().await?);
            ok(lines.line().await?)?;
        }
        first = last + 1;
    }
    *quit_sent = true;
    lines.write(b"QUIT\r\n").await?;
    ok(lines.line().await?)?;
    let _ = lines.stream.close().await;
    Ok(())
}

fn ok(line: Vec<u8>) -> Result<Vec<u8>> {
    if line.starts_with(b"+OK") {
        Ok(line)
    } else {
        Err(ClientError::Reply(
            0,
            String::from_utf8_lossy(&line).into_owned(),
        ))
    }
}
