//! Parsing a framed IMAP command ([`super::framer`]) into a [`Command`]: a hand-written
//! recursive descent over the command's bytes, literals in place, with a bound on nesting.
//!
//! Errors carry the tag when it could be read, so the session can answer `tag BAD`; a command
//! it does not know is [`ParseError::Unknown`].

use std::num::NonZeroU32;

use super::command::*;

/// Why a command could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No tag could be read: answered `* BAD`.
    NoTag,
    /// A command this server does not know.
    Unknown { tag: String, name: String },
    /// Bad arguments.
    Syntax { tag: String, what: String },
}

/// Deepest nesting of parenthesised search keys.
const NESTING_MAX: usize = 32;
/// Most items in one list (fetch items, flags, header fields, search keys).
const LIST_ITEMS_MAX: usize = 1000;

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: usize,
}

type Result<T> = std::result::Result<T, String>;

fn is_atom_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn at_end(&self) -> bool {
        matches!(self.peek(), None | Some(b'\r') | Some(b'\n'))
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Result<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected '{}'", b as char))
        }
    }

    fn sp(&mut self) -> Result<()> {
        self.expect(b' ')
    }

    /// The rest of the command must be its end.
    fn end(&mut self) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err("unexpected arguments".into())
        }
    }

    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(&pred) {
            self.at += 1;
        }
        &self.bytes[start..self.at]
    }

    fn atom(&mut self) -> Result<String> {
        let atom = self.take_while(is_atom_char);
        if atom.is_empty() {
            return Err("expected an atom".into());
        }
        Ok(String::from_utf8_lossy(atom).into_owned())
    }

    /// A keyword of the grammar, case-insensitively.
    fn keyword(&mut self) -> Result<String> {
        Ok(self.atom()?.to_ascii_uppercase())
    }

    fn number(&mut self) -> Result<u64> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() || digits.len() > 19 {
            return Err("expected a number".into());
        }
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| "expected a number".into())
    }

    fn number32(&mut self) -> Result<u32> {
        u32::try_from(self.number()?).map_err(|_| "number out of range".into())
    }

    fn quoted(&mut self) -> Result<Vec<u8>> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\r') | Some(b'\n') => return Err("unterminated string".into()),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.at += 1;
                        }
                        _ => return Err("bad escape in string".into()),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }

    /// `{n}` / `{n+}` / `~{n}`, its line end, then its octets.
    fn literal(&mut self) -> Result<Vec<u8>> {
        self.eat(b'~');
        self.expect(b'{')?;
        let len = usize::try_from(self.number()?).map_err(|_| "literal too large")?;
        self.eat(b'+');
        self.expect(b'}')?;
        self.eat(b'\r');
        self.expect(b'\n')?;
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("literal shorter than announced")?;
        let data = self.bytes[self.at..end].to_vec();
        self.at = end;
        Ok(data)
    }

    fn string(&mut self) -> Result<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{' | b'~') => self.literal(),
            _ => Err("expected a string".into()),
        }
    }

    fn astring_bytes(&mut self) -> Result<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{' | b'~') => self.string(),
            _ => {
                let atom = self.take_while(is_astring_char);
                if atom.is_empty() {
                    return Err("expected a string".into());
                }
                Ok(atom.to_vec())
            }
        }
    }

    fn astring(&mut self) -> Result<String> {
        String::from_utf8(self.astring_bytes()?).map_err(|_| "string is not UTF-8".into())
    }

    /// A mailbox name; INBOX in any case is INBOX.
    fn mailbox(&mut self) -> Result<String> {
        let name = self.astring()?;
        Ok(if name.eq_ignore_ascii_case("INBOX") {
            "INBOX".into()
        } else {
            name
        })
    }

    fn list_mailbox(&mut self) -> Result<String> {
        match self.peek() {
            Some(b'"' | b'{' | b'~') => {
                String::from_utf8(self.string()?).map_err(|_| "pattern is not UTF-8".into())
            }
            _ => {
                let pattern = self.take_while(is_list_char);
                if pattern.is_empty() {
                    return Err("expected a mailbox pattern".into());
                }
                Ok(String::from_utf8_lossy(pattern).into_owned())
            }
        }
    }

    fn seq_number(&mut self) -> Result<SeqNum> {
        if self.eat(b'*') {
            return Ok(SeqNum::Largest);
        }
        NonZeroU32::new(self.number32()?)
            .map(SeqNum::Value)
            .ok_or_else(|| "0 is not a message number".into())
    }

    fn sequence_set(&mut self) -> Result<SequenceSet> {
        if self.eat(b'$') {
            return Ok(SequenceSet::saved());
        }
        let mut ranges = Vec::new();
        loop {
            let first = self.seq_number()?;
            let last = if self.eat(b':') {
                self.seq_number()?
            } else {
                first
            };
            ranges.push((first, last));
            if ranges.len() > LIST_ITEMS_MAX * 10 {
                return Err("sequence set too long".into());
            }
            if !self.eat(b',') {
                return Ok(SequenceSet(ranges));
            }
        }
    }

    fn flag(&mut self) -> Result<Flag> {
        if self.eat(b'\\') {
            let name = self.atom()?;
            return match name.to_ascii_uppercase().as_str() {
                "SEEN" => Ok(Flag::Seen),
                "ANSWERED" => Ok(Flag::Answered),
                "FLAGGED" => Ok(Flag::Flagged),
                "DELETED" => Ok(Flag::Deleted),
                "DRAFT" => Ok(Flag::Draft),
                "RECENT" => Ok(Flag::Recent),
                _ => Err(format!("unknown system flag \\{name}")),
            };
        }
        Ok(Flag::Keyword(self.atom()?))
    }

    fn flag_list(&mut self) -> Result<Vec<Flag>> {
        self.expect(b'(')?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            flags.push(self.flag()?);
            if flags.len() > LIST_ITEMS_MAX {
                return Err("too many flags".into());
            }
            if self.eat(b')') {
                return Ok(flags);
            }
            self.sp()?;
        }
    }

    /// `d-Mon-yyyy` as days since the Unix epoch (quoted or not).
    fn search_date(&mut self) -> Result<i64> {
        let text = if self.peek() == Some(b'"') {
            self.quoted()?
        } else {
            self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-')
                .to_vec()
        };
        let text = String::from_utf8_lossy(&text).into_owned();
        parse_day(&text).ok_or_else(|| format!("bad date {text}"))
    }

    fn paren_list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        self.expect(b'(')?;
        let mut items = Vec::new();
        if self.eat(b')') {
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            if items.len() > LIST_ITEMS_MAX {
                return Err("list too long".into());
            }
            if self.eat(b')') {
                return Ok(items);
            }
            self.sp()?;
        }
    }
}

/// One flag as IMAP writes it (`\Seen`, `$Forwarded`), nothing around it; `None` if it is
/// not one.
pub fn parse_flag(text: &str) -> Option<Flag> {
    let mut c = Cursor {
        bytes: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    let flag = c.flag().ok()?;
    (c.at == text.len()).then_some(flag)
}

/// Days since the Unix epoch of `d-Mon-yyyy`.
pub fn parse_day(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let day: u32 = parts.next()?.trim().parse().ok()?;
    let month = month_number(parts.next()?)?;
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=31).contains(&day) || !(1..=9999).contains(&year) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .map(|i| i as u32 + 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `"dd-Mon-yyyy hh:mm:ss +zzzz"` (the day may be space-padded) as Unix seconds.
pub fn parse_date_time(text: &str) -> Option<i64> {
    let text = text.trim_start();
    let (date, rest) = text.split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    let days = parse_day(date)?;
    let mut hms = time.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let s: i64 = hms.next()?.parse().ok()?;
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = zone.get(1..5)?;
    if zone.len() != 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let zh: i64 = digits[..2].parse().ok()?;
    let zm: i64 = digits[2..].parse().ok()?;
    let offset = sign * (zh * 3600 + zm * 60);
    Some(days * 86_400 + h * 3600 + m * 60 + s - offset)
}

/// Parses one framed command.
pub fn parse(bytes: &[u8]) -> std::result::Result<Tagged, ParseError> {
    let mut c = Cursor {
        bytes,
        at: 0,
        depth: 0,
    };
    let tag_bytes = c.take_while(super::framer::is_tag_char);
    if tag_bytes.is_empty() || tag_bytes.len() > 64 || !c.eat(b' ') {
        return Err(ParseError::NoTag);
    }
    let tag = String::from_utf8_lossy(tag_bytes).into_owned();
    let syntax = |what: String| ParseError::Syntax {
        tag: tag.clone(),
        what,
    };
    let name = c.keyword().map_err(syntax)?;
    let command = match name.as_str() {
        "CAPABILITY" | "NOOP" | "LOGOUT" | "STARTTLS" | "NAMESPACE" | "IDLE" | "CHECK"
        | "CLOSE" | "UNSELECT" => {
            c.end().map_err(syntax)?;
            match name.as_str() {
                "CAPABILITY" => Command::Capability,
                "NOOP" => Command::Noop,
                "LOGOUT" => Command::Logout,
                "STARTTLS" => Command::StartTls,
                "NAMESPACE" => Command::Namespace,
                "IDLE" => Command::Idle,
                "CHECK" => Command::Check,
                "CLOSE" => Command::Close,
                _ => Command::Unselect,
            }
        }
        "EXPUNGE" => {
            c.end().map_err(syntax)?;
            Command::Expunge { uids: None }
        }
        "UID" => {
            c.sp().map_err(syntax)?;
            let sub = c.keyword().map_err(syntax)?;
            match sub.as_str() {
                "FETCH" | "STORE" | "SEARCH" | "COPY" | "MOVE" => {
                    c.sp().map_err(syntax)?;
                    body(&mut c, &sub, true).map_err(syntax)?
                }
                "EXPUNGE" => {
                    c.sp().map_err(syntax)?;
                    let set = c.sequence_set().map_err(syntax)?;
                    c.end().map_err(syntax)?;
                    Command::Expunge { uids: Some(set) }
                }
                _ => {
                    return Err(ParseError::Unknown {
                        tag,
                        name: format!("UID {sub}"),
                    })
                }
            }
        }
        "AUTHENTICATE" | "LOGIN" | "ENABLE" | "ID" | "SELECT" | "EXAMINE" | "CREATE" | "DELETE"
        | "RENAME" | "SUBSCRIBE" | "UNSUBSCRIBE" | "LIST" | "LSUB" | "STATUS" | "APPEND"
        | "SEARCH" | "FETCH" | "STORE" | "COPY" | "MOVE" | "GETQUOTA" | "GETQUOTAROOT"
        | "SETQUOTA" => {
            c.sp().map_err(syntax)?;
            body(&mut c, &name, false).map_err(syntax)?
        }
        _ => return Err(ParseError::Unknown { tag, name }),
    };
    Ok(Tagged { tag, command })
}

/// The arguments of command `name` (after its space).
fn body(c: &mut Cursor<'_>, name: &str, uid: bool) -> Result<Command> {
    let command = match name {
        "AUTHENTICATE" => {
            let mechanism = c.keyword()?;
            let initial = if c.eat(b' ') {
                let text = c.take_while(|b| b.is_ascii_graphic());
                if text == b"=" {
                    Some(Vec::new())
                } else {
                    Some(
                        crate::sasl::base64_decode(&String::from_utf8_lossy(text))
                            .ok_or("initial response is not base64")?,
                    )
                }
            } else {
                None
            };
            Command::Authenticate { mechanism, initial }
        }
        "GETQUOTA" => Command::GetQuota(c.astring()?),
        "GETQUOTAROOT" => Command::GetQuotaRoot(c.mailbox()?),
        "SETQUOTA" => {
            c.astring()?;
            c.sp()?;
            c.paren_list(|c| {
                c.keyword()?;
                c.sp()?;
                c.number().map(|_| ())
            })?;
            Command::SetQuota
        }
        "LOGIN" => {
            let user = c.astring()?;
            c.sp()?;
            let password = c.astring()?;
            Command::Login { user, password }
        }
        "ENABLE" => {
            let mut capabilities = vec![c.keyword()?];
            while c.eat(b' ') {
                capabilities.push(c.keyword()?);
                if capabilities.len() > LIST_ITEMS_MAX {
                    return Err("too many capabilities".into());
                }
            }
            Command::Enable(capabilities)
        }
        "ID" => {
            // The client's identification is read and not kept.
            if c.peek() == Some(b'(') {
                c.paren_list(|c| {
                    if c.peek() == Some(b'N') || c.peek() == Some(b'n') {
                        let nil = c.keyword()?;
                        if nil != "NIL" {
                            return Err("expected a string or NIL".into());
                        }
                        Ok(())
                    } else {
                        c.string().map(|_| ())
                    }
                })?;
            } else if c.keyword()? != "NIL" {
                return Err("expected a list or NIL".into());
            }
            Command::Id
        }
        "SELECT" | "EXAMINE" => {
            let mailbox = c.mailbox()?;
            let mut condstore = false;
            let mut qresync = None;
            if c.eat(b' ') {
                for parameter in c.paren_list(|c| {
                    let name = c.keyword()?;
                    match name.as_str() {
                        "CONDSTORE" => Ok(None),
                        "QRESYNC" => {
                            c.sp()?;
                            resync(c).map(Some)
                        }
                        other => Err(format!("unsupported SELECT parameter {other}")),
                    }
                })? {
                    match parameter {
                        None => condstore = true,
                        Some(params) => qresync = Some(params),
                    }
                }
            }
            Command::Select {
                mailbox,
                read_only: name == "EXAMINE",
                condstore,
                qresync,
            }
        }
        "CREATE" => {
            let mailbox = c.mailbox()?;
            if c.eat(b' ') {
                // `(USE (\Sent))` (RFC 6154) is accepted; the special use is not kept.
                c.paren_list(|c| {
                    c.keyword()?;
                    c.sp()?;
                    c.paren_list(|c| c.flag().map(|_| ()))
                })?;
            }
            Command::Create(mailbox)
        }
        "DELETE" => Command::Delete(c.mailbox()?),
        "SUBSCRIBE" => Command::Subscribe(c.mailbox()?),
        "UNSUBSCRIBE" => Command::Unsubscribe(c.mailbox()?),
        "RENAME" => {
            let from = c.mailbox()?;
            c.sp()?;
            let to = c.mailbox()?;
            Command::Rename { from, to }
        }
        "LIST" | "LSUB" => list(c, name == "LSUB")?,
        "STATUS" => {
            let mailbox = c.mailbox()?;
            c.sp()?;
            let items = c.paren_list(status_item)?;
            Command::Status { mailbox, items }
        }
        "APPEND" => {
            let mailbox = c.mailbox()?;
            c.sp()?;
            let mut flags = Vec::new();
            let mut date = None;
            if c.peek() == Some(b'(') {
                flags = c.flag_list()?;
                c.sp()?;
            }
            if c.peek() == Some(b'"') {
                let text = String::from_utf8_lossy(&c.quoted()?).into_owned();
                date = Some(parse_date_time(&text).ok_or("bad date-time")?);
                c.sp()?;
            }
            let message = c.literal()?;
            Command::Append {
                mailbox,
                flags,
                date,
                message,
            }
        }
        "SEARCH" => search(c, uid)?,
        "FETCH" => {
            let set = c.sequence_set()?;
            c.sp()?;
            let items = fetch_items(c)?;
            let mut changed_since = None;
            let mut vanished = false;
            if c.eat(b' ') {
                c.paren_list(|c| {
                    let modifier = c.keyword()?;
                    match modifier.as_str() {
                        "CHANGEDSINCE" => {
                            c.sp()?;
                            changed_since = Some(c.number()?);
                        }
                        "VANISHED" => vanished = true,
                        _ => return Err(format!("unsupported FETCH modifier {modifier}")),
                    }
                    Ok(())
                })?;
            }
            if vanished && (!uid || changed_since.is_none()) {
                return Err("VANISHED needs UID FETCH and CHANGEDSINCE".into());
            }
            Command::Fetch {
                uid,
                set,
                items,
                changed_since,
                vanished,
            }
        }
        "STORE" => {
            let set = c.sequence_set()?;
            c.sp()?;
            let mut unchanged_since = None;
            if c.peek() == Some(b'(') {
                for (modifier, value) in c.paren_list(|c| {
                    let name = c.keyword()?;
                    c.sp()?;
                    Ok((name, c.number()?))
                })? {
                    match modifier.as_str() {
                        "UNCHANGEDSINCE" => unchanged_since = Some(value),
                        _ => return Err(format!("unsupported STORE modifier {modifier}")),
                    }
                }
                c.sp()?;
            }
            let action = if c.eat(b'+') {
                StoreAction::Add
            } else if c.eat(b'-') {
                StoreAction::Remove
            } else {
                StoreAction::Replace
            };
            let item = c.keyword()?;
            let silent = match item.as_str() {
                "FLAGS" => false,
                "FLAGS.SILENT" => true,
                _ => return Err("expected FLAGS or FLAGS.SILENT".into()),
            };
            c.sp()?;
            let flags = if c.peek() == Some(b'(') {
                c.flag_list()?
            } else {
                let mut flags = vec![c.flag()?];
                while c.eat(b' ') {
                    flags.push(c.flag()?);
                    if flags.len() > LIST_ITEMS_MAX {
                        return Err("too many flags".into());
                    }
                }
                flags
            };
            Command::Store {
                uid,
                set,
                action,
                silent,
                flags,
                unchanged_since,
            }
        }
        "COPY" | "MOVE" => {
            let set = c.sequence_set()?;
            c.sp()?;
            let mailbox = c.mailbox()?;
            Command::Copy {
                uid,
                set,
                mailbox,
                moving: name == "MOVE",
            }
        }
        _ => return Err(format!("unknown command {name}")),
    };
    c.end()?;
    Ok(command)
}

fn status_item(c: &mut Cursor<'_>) -> Result<StatusItem> {
    let item = c.keyword()?;
    Ok(match item.as_str() {
        "MESSAGES" => StatusItem::Messages,
        "RECENT" => StatusItem::Recent,
        "UIDNEXT" => StatusItem::UidNext,
        "UIDVALIDITY" => StatusItem::UidValidity,
        "UNSEEN" => StatusItem::Unseen,
        "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
        "SIZE" => StatusItem::Size,
        "DELETED" => StatusItem::Deleted,
        _ => return Err(format!("unknown status item {item}")),
    })
}

/// QRESYNC's `(uidvalidity modseq [known-uids [(seq-match)]])`; the sequence match only
/// narrows what the server must check, and every known UID is checked here anyway.
fn resync(c: &mut Cursor<'_>) -> Result<Resync> {
    c.expect(b'(')?;
    let uid_validity = c.number32()?;
    c.sp()?;
    let modseq = c.number()?;
    let mut known_uids = None;
    if c.eat(b' ') {
        let set = c.sequence_set()?;
        if set.is_saved() {
            return Err("$ is not a list of known UIDs".into());
        }
        known_uids = Some(set);
        if c.eat(b' ') {
            c.expect(b'(')?;
            let _msns = c.sequence_set()?;
            c.sp()?;
            let _uids = c.sequence_set()?;
            c.expect(b')')?;
        }
    }
    c.expect(b')')?;
    if uid_validity == 0 {
        return Err("UIDVALIDITY 0".into());
    }
    Ok(Resync {
        uid_validity,
        modseq,
        known_uids,
    })
}

/// LIST [(selection)] reference pattern|(patterns) [RETURN (options)]; LSUB reference pattern.
fn list(c: &mut Cursor<'_>, lsub: bool) -> Result<Command> {
    let mut subscribed_only = lsub;
    let mut special_use = false;
    let mut recursive_match = false;
    let mut return_subscribed = false;
    if !lsub && c.peek() == Some(b'(') {
        for option in c.paren_list(|c| c.keyword())? {
            match option.as_str() {
                "SUBSCRIBED" => subscribed_only = true,
                "SPECIAL-USE" => special_use = true,
                "RECURSIVEMATCH" => recursive_match = true,
                "REMOTE" => {}
                other => return Err(format!("unsupported LIST selection {other}")),
            }
        }
        // RFC 5258 3.1: RECURSIVEMATCH alone says nothing to recurse on.
        if recursive_match && !subscribed_only && !special_use {
            return Err("RECURSIVEMATCH needs another selection option".into());
        }
        c.sp()?;
    }
    let reference = c.mailbox()?;
    c.sp()?;
    let patterns = if !lsub && c.peek() == Some(b'(') {
        c.paren_list(|c| c.list_mailbox())?
    } else {
        vec![c.list_mailbox()?]
    };
    let mut status = Vec::new();
    if !lsub && c.eat(b' ') {
        if c.keyword()? != "RETURN" {
            return Err("expected RETURN".into());
        }
        c.sp()?;
        c.expect(b'(')?;
        if !c.eat(b')') {
            loop {
                let option = c.keyword()?;
                match option.as_str() {
                    "SUBSCRIBED" => return_subscribed = true,
                    // Children and special-use attributes are always shown.
                    "CHILDREN" | "SPECIAL-USE" => {}
                    "STATUS" => {
                        c.sp()?;
                        status = c.paren_list(status_item)?;
                    }
                    other => return Err(format!("unsupported LIST return option {other}")),
                }
                if c.eat(b')') {
                    break;
                }
                c.sp()?;
            }
        }
    }
    Ok(Command::List {
        reference,
        patterns,
        subscribed_only,
        status,
        special_use,
        lsub,
        return_subscribed,
        recursive_match,
    })
}

fn search(c: &mut Cursor<'_>, uid: bool) -> Result<Command> {
    let mut esearch = None;
    let mut keys = Vec::new();
    let first = c.at;
    if let Ok(word) = c.keyword() {
        if word == "RETURN" {
            c.sp()?;
            let options = c.paren_list(|c| {
                let option = c.keyword()?;
                Ok(match option.as_str() {
                    "MIN" => SearchReturn::Min,
                    "MAX" => SearchReturn::Max,
                    "ALL" => SearchReturn::All,
                    "COUNT" => SearchReturn::Count,
                    "SAVE" => SearchReturn::Save,
                    other => return Err(format!("unknown RETURN option {other}")),
                })
            })?;
            esearch = Some(if options.is_empty() {
                vec![SearchReturn::All]
            } else {
                options
            });
            c.sp()?;
        } else {
            c.at = first;
        }
    } else {
        c.at = first;
    }
    let save = c.at;
    if let Ok(word) = c.keyword() {
        if word == "CHARSET" {
            c.sp()?;
            let charset = c.astring()?.to_ascii_uppercase();
            if !matches!(charset.as_str(), "UTF-8" | "US-ASCII") {
                return Err("BADCHARSET".into());
            }
            c.sp()?;
        } else {
            c.at = save;
        }
    } else {
        c.at = save;
    }
    loop {
        keys.push(search_key(c)?);
        if keys.len() > LIST_ITEMS_MAX {
            return Err("too many search keys".into());
        }
        if !c.eat(b' ') {
            break;
        }
    }
    let key = if keys.len() == 1 {
        keys.remove(0)
    } else {
        SearchKey::And(keys)
    };
    Ok(Command::Search { uid, key, esearch })
}

fn search_string(c: &mut Cursor<'_>) -> Result<String> {
    c.sp()?;
    Ok(String::from_utf8_lossy(&c.astring_bytes()?).into_owned())
}

fn search_key(c: &mut Cursor<'_>) -> Result<SearchKey> {
    if c.peek() == Some(b'(') {
        c.depth += 1;
        if c.depth > NESTING_MAX {
            return Err("search keys nested too deeply".into());
        }
        let keys = c.paren_list(search_key)?;
        c.depth -= 1;
        return Ok(SearchKey::And(keys));
    }
    if matches!(c.peek(), Some(b'0'..=b'9' | b'*' | b'$')) {
        return Ok(SearchKey::Sequence(c.sequence_set()?));
    }
    let word = c.keyword()?;
    let flag = |f: Flag, set: bool| Ok(SearchKey::Flag(f, set));
    match word.as_str() {
        "ALL" => Ok(SearchKey::All),
        "ANSWERED" => flag(Flag::Answered, true),
        "DELETED" => flag(Flag::Deleted, true),
        "DRAFT" => flag(Flag::Draft, true),
        "FLAGGED" => flag(Flag::Flagged, true),
        "SEEN" => flag(Flag::Seen, true),
        "RECENT" => flag(Flag::Recent, true),
        "UNANSWERED" => flag(Flag::Answered, false),
        "UNDELETED" => flag(Flag::Deleted, false),
        "UNDRAFT" => flag(Flag::Draft, false),
        "UNFLAGGED" => flag(Flag::Flagged, false),
        "UNSEEN" => flag(Flag::Seen, false),
        "NEW" => Ok(SearchKey::New),
        "OLD" => Ok(SearchKey::Old),
        "KEYWORD" | "UNKEYWORD" => {
            c.sp()?;
            let keyword = c.atom()?;
            Ok(SearchKey::Flag(Flag::Keyword(keyword), word == "KEYWORD"))
        }
        "NOT" => {
            c.sp()?;
            c.depth += 1;
            if c.depth > NESTING_MAX {
                return Err("search keys nested too deeply".into());
            }
            let key = search_key(c)?;
            c.depth -= 1;
            Ok(SearchKey::Not(Box::new(key)))
        }
        "OR" => {
            c.depth += 1;
            if c.depth > NESTING_MAX {
                return Err("search keys nested too deeply".into());
            }
            c.sp()?;
            let a = search_key(c)?;
            c.sp()?;
            let b = search_key(c)?;
            c.depth -= 1;
            Ok(SearchKey::Or(Box::new(a), Box::new(b)))
        }
        "UID" => {
            c.sp()?;
            Ok(SearchKey::Uid(c.sequence_set()?))
        }
        "LARGER" => {
            c.sp()?;
            Ok(SearchKey::Larger(c.number32()?))
        }
        "SMALLER" => {
            c.sp()?;
            Ok(SearchKey::Smaller(c.number32()?))
        }
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
            c.sp()?;
            let day = c.search_date()?;
            Ok(match word.as_str() {
                "BEFORE" => SearchKey::Before(day),
                "ON" => SearchKey::On(day),
                "SINCE" => SearchKey::Since(day),
                "SENTBEFORE" => SearchKey::SentBefore(day),
                "SENTON" => SearchKey::SentOn(day),
                _ => SearchKey::SentSince(day),
            })
        }
        "FROM" | "TO" | "CC" | "BCC" | "SUBJECT" => {
            let value = search_string(c)?;
            let field = match word.as_str() {
                "FROM" => "From",
                "TO" => "To",
                "CC" => "Cc",
                "BCC" => "Bcc",
                _ => "Subject",
            };
            Ok(SearchKey::Header(field.into(), value))
        }
        "HEADER" => {
            c.sp()?;
            let field = String::from_utf8_lossy(&c.astring_bytes()?).into_owned();
            let value = search_string(c)?;
            Ok(SearchKey::Header(field, value))
        }
        "BODY" => Ok(SearchKey::Body(search_string(c)?)),
        "TEXT" => Ok(SearchKey::Text(search_string(c)?)),
        "MODSEQ" => {
            c.sp()?;
            // `MODSEQ [entry-name entry-type] n`: the entry is read and ignored.
            if c.peek() == Some(b'"') {
                c.quoted()?;
                c.sp()?;
                c.atom()?;
                c.sp()?;
            }
            Ok(SearchKey::ModSeq(c.number()?))
        }
        other => Err(format!("unknown search key {other}")),
    }
}

fn fetch_items(c: &mut Cursor<'_>) -> Result<Vec<FetchItem>> {
    if c.peek() == Some(b'(') {
        c.paren_list(fetch_item)
    } else {
        let start = c.at;
        let word = c.keyword()?;
        match word.as_str() {
            "ALL" => Ok(vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
                FetchItem::Envelope,
            ]),
            "FAST" => Ok(vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
            ]),
            "FULL" => Ok(vec![
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
                FetchItem::Envelope,
                FetchItem::BodyShort,
            ]),
            _ => {
                c.at = start;
                Ok(vec![fetch_item(c)?])
            }
        }
    }
}

fn section(c: &mut Cursor<'_>) -> Result<Section> {
    c.expect(b'[')?;
    let mut part = Vec::new();
    let mut text = SectionText::Full;
    if !c.eat(b']') {
        loop {
            if c.peek().is_some_and(|b| b.is_ascii_digit()) {
                let n = c.number32()?;
                if n == 0 || part.len() >= NESTING_MAX {
                    return Err("bad section part".into());
                }
                part.push(n);
                if c.eat(b'.') {
                    continue;
                }
                break;
            }
            let word = c
                .take_while(|b| b.is_ascii_alphanumeric() || b == b'.')
                .to_ascii_uppercase();
            text = match &word[..] {
                b"HEADER" => SectionText::Header,
                b"TEXT" => SectionText::Text,
                b"MIME" if !part.is_empty() => SectionText::Mime,
                b"HEADER.FIELDS" | b"HEADER.FIELDS.NOT" => {
                    c.sp()?;
                    let fields = c.paren_list(|c| c.astring())?;
                    SectionText::HeaderFields {
                        fields,
                        not: word.ends_with(b".NOT"),
                    }
                }
                _ => return Err("bad section".into()),
            };
            break;
        }
        c.expect(b']')?;
    }
    Ok(Section { part, text })
}

fn partial(c: &mut Cursor<'_>) -> Result<Option<(u32, u32)>> {
    if !c.eat(b'<') {
        return Ok(None);
    }
    let start = c.number32()?;
    c.expect(b'.')?;
    let len = c.number32()?;
    if len == 0 {
        return Err("a partial length of 0".into());
    }
    c.expect(b'>')?;
    Ok(Some((start, len)))
}

fn fetch_item(c: &mut Cursor<'_>) -> Result<FetchItem> {
    let word = c
        .take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        .to_ascii_uppercase();
    let body = |c: &mut Cursor<'_>, peek: bool, binary: bool| -> Result<FetchItem> {
        let section = section(c)?;
        let partial = partial(c)?;
        Ok(FetchItem::Body {
            section,
            partial,
            peek,
            binary,
        })
    };
    match &word[..] {
        b"UID" => Ok(FetchItem::Uid),
        b"FLAGS" => Ok(FetchItem::Flags),
        b"INTERNALDATE" => Ok(FetchItem::InternalDate),
        b"RFC822.SIZE" => Ok(FetchItem::Rfc822Size),
        b"ENVELOPE" => Ok(FetchItem::Envelope),
        b"BODYSTRUCTURE" => Ok(FetchItem::BodyStructure),
        b"MODSEQ" => Ok(FetchItem::ModSeq),
        b"RFC822" => Ok(FetchItem::Rfc822(Rfc822Part::Whole)),
        b"RFC822.HEADER" => Ok(FetchItem::Rfc822(Rfc822Part::Header)),
        b"RFC822.TEXT" => Ok(FetchItem::Rfc822(Rfc822Part::Text)),
        b"BODY" if c.peek() == Some(b'[') => body(c, false, false),
        b"BODY" => Ok(FetchItem::BodyShort),
        b"BODY.PEEK" => body(c, true, false),
        b"BINARY" => body(c, false, true),
        b"BINARY.PEEK" => body(c, true, true),
        b"BINARY.SIZE" => match body(c, true, true)? {
            FetchItem::Body {
                section:
                    Section {
                        part,
                        text: SectionText::Full,
                    },
                partial: None,
                ..
            } => Ok(FetchItem::BinarySize(part)),
            _ => Err("bad BINARY.SIZE section".into()),
        },
        other => Err(format!(
            "unknown fetch item {}",
            String::from_utf8_lossy(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Command {
        parse(line.as_bytes())
            .unwrap_or_else(|e| panic!("{line}: {e:?}"))
            .command
    }

    fn n(v: u32) -> SeqNum {
        SeqNum::Value(NonZeroU32::new(v).unwrap())
    }

    #[test]
    fn simple_commands_and_strings() {
        assert_eq!(cmd("a1 NOOP\r\n"), Command::Noop);
        assert_eq!(cmd("a1 capability\r\n"), Command::Capability);
        assert_eq!(
            cmd("a LOGIN \"bob@x\" {3}\r\np\"w\r\n"),
            Command::Login {
                user: "bob@x".into(),
                password: "p\"w".into()
            }
        );
        assert_eq!(
            cmd("a LOGIN bob \"a\\\"b\\\\c\"\r\n"),
            Command::Login {
                user: "bob".into(),
                password: "a\"b\\c".into()
            }
        );
        assert_eq!(
            cmd("a select inbox\r\n"),
            Command::Select {
                mailbox: "INBOX".into(),
                read_only: false,
                condstore: false,
                qresync: None
            }
        );
        assert_eq!(
            cmd("a EXAMINE \"Sent\" (CONDSTORE)\r\n"),
            Command::Select {
                mailbox: "Sent".into(),
                read_only: true,
                condstore: true,
                qresync: None
            }
        );
        assert_eq!(
            cmd("a AUTHENTICATE PLAIN AGJvYgBwdw==\r\n"),
            Command::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some(b"\0bob\0pw".to_vec())
            }
        );
    }

    #[test]
    fn fetch_items_sections_and_partials() {
        assert_eq!(
            cmd("a UID FETCH 1:*,7 (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-TUID MESSAGE-ID)] BODY[1.2.MIME]<0.100>)\r\n"),
            Command::Fetch {
                uid: true,
                set: SequenceSet(vec![(n(1), SeqNum::Largest), (n(7), n(7))]),
                items: vec![
                    FetchItem::Uid,
                    FetchItem::Flags,
                    FetchItem::Body {
                        section: Section {
                            part: vec![],
                            text: SectionText::HeaderFields {
                                fields: vec!["X-TUID".into(), "MESSAGE-ID".into()],
                                not: false
                            }
                        },
                        partial: None,
                        peek: true,
                        binary: false
                    },
                    FetchItem::Body {
                        section: Section {
                            part: vec![1, 2],
                            text: SectionText::Mime
                        },
                        partial: Some((0, 100)),
                        peek: false,
                        binary: false
                    },
                ],
                changed_since: None,
                vanished: false,
            }
        );
        assert_eq!(
            cmd("a FETCH 2 FAST\r\n"),
            Command::Fetch {
                uid: false,
                set: SequenceSet(vec![(n(2), n(2))]),
                items: vec![
                    FetchItem::Flags,
                    FetchItem::InternalDate,
                    FetchItem::Rfc822Size
                ],
                changed_since: None,
                vanished: false
            }
        );
        assert_eq!(
            cmd("a FETCH 1 BODY[]\r\n"),
            Command::Fetch {
                uid: false,
                set: SequenceSet(vec![(n(1), n(1))]),
                items: vec![FetchItem::Body {
                    section: Section {
                        part: vec![],
                        text: SectionText::Full
                    },
                    partial: None,
                    peek: false,
                    binary: false
                }],
                changed_since: None,
                vanished: false
            }
        );
        assert!(parse(b"a FETCH 0 FLAGS\r\n").is_err());
        assert!(parse(b"a FETCH 1 (FLAGS\r\n").is_err());
    }

    #[test]
    fn store_search_append_list() {
        assert_eq!(
            cmd("a UID STORE 5 +FLAGS.SILENT (\\Seen $Junk)\r\n"),
            Command::Store {
                uid: true,
                set: SequenceSet(vec![(n(5), n(5))]),
                action: StoreAction::Add,
                silent: true,
                flags: vec![Flag::Seen, Flag::Keyword("$Junk".into())],
                unchanged_since: None
            }
        );
        assert_eq!(
            cmd("a SEARCH OR FROM bob (SINCE 1-Feb-2024 UNSEEN) NOT LARGER 100\r\n"),
            Command::Search {
                uid: false,
                key: SearchKey::And(vec![
                    SearchKey::Or(
                        Box::new(SearchKey::Header("From".into(), "bob".into())),
                        Box::new(SearchKey::And(vec![
                            SearchKey::Since(days_from_civil(2024, 2, 1)),
                            SearchKey::Flag(Flag::Seen, false)
                        ]))
                    ),
                    SearchKey::Not(Box::new(SearchKey::Larger(100)))
                ]),
                esearch: None
            }
        );
        assert_eq!(
            cmd("a APPEND Drafts (\\Draft) \" 5-Mar-2024 10:00:00 +0100\" {5+}\r\nhello\r\n"),
            Command::Append {
                mailbox: "Drafts".into(),
                flags: vec![Flag::Draft],
                date: Some(days_from_civil(2024, 3, 5) * 86_400 + 9 * 3600),
                message: b"hello".to_vec()
            }
        );
        assert_eq!(
            cmd("a LIST \"\" \"*\" RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\n"),
            Command::List {
                reference: "".into(),
                patterns: vec!["*".into()],
                subscribed_only: false,
                status: vec![StatusItem::Messages, StatusItem::Unseen],
                special_use: false,
                lsub: false,
                return_subscribed: false,
                recursive_match: false
            }
        );
        assert_eq!(
            cmd("a LSUB \"\" %\r\n"),
            Command::List {
                reference: "".into(),
                patterns: vec!["%".into()],
                subscribed_only: true,
                status: vec![],
                special_use: false,
                lsub: true,
                return_subscribed: false,
                recursive_match: false
            }
        );
    }

    #[test]
    fn qresync_searchres_and_rev2_syntax() {
        assert_eq!(
            cmd("a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1:2 41,43)))\r\n"),
            Command::Select {
                mailbox: "INBOX".into(),
                read_only: false,
                condstore: false,
                qresync: Some(Resync {
                    uid_validity: 67_890_007,
                    modseq: 20_050_715_194_045_000,
                    known_uids: Some(SequenceSet(vec![
                        (n(41), n(41)),
                        (n(43), n(211)),
                        (n(214), n(541))
                    ])),
                })
            }
        );
        assert!(matches!(
            cmd("a EXAMINE x (CONDSTORE QRESYNC (1 2))\r\n"),
            Command::Select {
                condstore: true,
                qresync: Some(Resync {
                    known_uids: None,
                    ..
                }),
                ..
            }
        ));
        assert!(matches!(
            cmd("a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n"),
            Command::Fetch {
                vanished: true,
                changed_since: Some(12345),
                ..
            }
        ));
        for bad in [
            "a FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)\r\n",
            "a UID FETCH 1 FLAGS (VANISHED)\r\n",
            "a SELECT INBOX (QRESYNC (0 1))\r\n",
            "a SELECT INBOX (QRESYNC (1 1 $))\r\n",
            "a LIST (RECURSIVEMATCH) \"\" *\r\n",
            "a FETCH $,1 FLAGS\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(matches!(
            cmd("a UID STORE $ +FLAGS (\\Seen)\r\n"),
            Command::Store { set, .. } if set.is_saved()
        ));
        assert!(matches!(
            cmd("a SEARCH RETURN (SAVE MIN) $ UNSEEN\r\n"),
            Command::Search { esearch: Some(r), key: SearchKey::And(_), .. } if r == vec![SearchReturn::Save, SearchReturn::Min]
        ));
        assert!(matches!(
            cmd("a STATUS INBOX (DELETED SIZE)\r\n"),
            Command::Status { items, .. } if items == vec![StatusItem::Deleted, StatusItem::Size]
        ));
        assert!(matches!(
            cmd("a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (% Archive/*) RETURN (SUBSCRIBED CHILDREN)\r\n"),
            Command::List { recursive_match: true, return_subscribed: true, subscribed_only: true, ref patterns, .. } if patterns.len() == 2
        ));
    }

    #[test]
    fn errors_keep_the_tag_and_deep_nesting_is_refused() {
        assert_eq!(parse(b"\r\n"), Err(ParseError::NoTag));
        assert!(matches!(
            parse(b"t7 FROB\r\n"),
            Err(ParseError::Unknown { tag, .. }) if tag == "t7"
        ));
        let deep = format!("t8 SEARCH {}ALL{}\r\n", "(".repeat(100), ")".repeat(100));
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(ParseError::Syntax { tag, .. }) if tag == "t8"
        ));
        let nots = format!("t9 SEARCH {}ALL\r\n", "NOT ".repeat(100));
        assert!(parse(nots.as_bytes()).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(parse_day("1-Jan-1970"), Some(0));
        assert_eq!(parse_day("31-dec-1969"), Some(-1));
        assert_eq!(parse_date_time("01-Jan-1970 00:00:01 +0000"), Some(1));
        assert_eq!(parse_date_time(" 1-Jan-1970 01:00:00 +0100"), Some(0));
        assert_eq!(parse_date_time("1-Foo-1970 00:00:00 +0000"), None);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
