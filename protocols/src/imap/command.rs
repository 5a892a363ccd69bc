//! The IMAP commands a client may send, as typed values (what [`super::parser`] makes of a
//! framed command), for IMAP4rev1 (RFC 3501) with the extensions the server offers.

use std::num::NonZeroU32;

/// A parsed command with its tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged {
    pub tag: String,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Capability,
    Noop,
    Logout,
    StartTls,
    /// `AUTHENTICATE mechanism [initial-response]` (SASL-IR; `=` is an empty response).
    Authenticate {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    Login {
        user: String,
        password: String,
    },
    Enable(Vec<String>),
    Id,
    Namespace,
    Select {
        mailbox: String,
        read_only: bool,
        condstore: bool,
        /// `(QRESYNC (uidvalidity modseq [known-uids]))` (RFC 7162 3.2.5).
        qresync: Option<Resync>,
    },
    Create(String),
    Delete(String),
    Rename {
        from: String,
        to: String,
    },
    Subscribe(String),
    Unsubscribe(String),
    /// `GETQUOTA root` (RFC 9208).
    GetQuota(String),
    /// `GETQUOTAROOT mailbox` (RFC 9208).
    GetQuotaRoot(String),
    /// `SETQUOTA root (…)`: refused, quotas are the administrator's.
    SetQuota,
    List {
        reference: String,
        patterns: Vec<String>,
        subscribed_only: bool,
        /// `RETURN (... STATUS (items))` (LIST-STATUS).
        status: Vec<StatusItem>,
        /// The `(SPECIAL-USE)` selection: only mailboxes with a special use.
        special_use: bool,
        /// LSUB rather than LIST (answered with `* LSUB`).
        lsub: bool,
        /// `RETURN (SUBSCRIBED)`: `\Subscribed` on every subscribed mailbox listed.
        return_subscribed: bool,
        /// The `RECURSIVEMATCH` selection: a mailbox that does not match the selection but
        /// has a descendant that does is listed with `CHILDINFO`.
        recursive_match: bool,
    },
    Status {
        mailbox: String,
        items: Vec<StatusItem>,
    },
    Append {
        mailbox: String,
        flags: Vec<Flag>,
        date: Option<i64>,
        message: Vec<u8>,
    },
    Idle,
    Check,
    Close,
    Unselect,
    Expunge {
        /// `UID EXPUNGE set`: only these (and only if `\Deleted`).
        uids: Option<SequenceSet>,
    },
    Search {
        uid: bool,
        key: SearchKey,
        /// ESEARCH `RETURN (...)` options; `None`: a plain `* SEARCH` answer.
        esearch: Option<Vec<SearchReturn>>,
    },
    Fetch {
        uid: bool,
        set: SequenceSet,
        items: Vec<FetchItem>,
        changed_since: Option<u64>,
        /// `(CHANGEDSINCE n VANISHED)` (QRESYNC): expunged UIDs of the set are reported.
        vanished: bool,
    },
    Store {
        uid: bool,
        set: SequenceSet,
        action: StoreAction,
        silent: bool,
        flags: Vec<Flag>,
        unchanged_since: Option<u64>,
    },
    Copy {
        uid: bool,
        set: SequenceSet,
        mailbox: String,
        /// MOVE rather than COPY.
        moving: bool,
    },
}

/// What a client knew of a mailbox when it last synchronised (QRESYNC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resync {
    pub uid_validity: u32,
    pub modseq: u64,
    /// The UIDs the client holds; `None`: all below UIDNEXT.
    pub known_uids: Option<SequenceSet>,
}

/// A message flag: a system flag or a keyword.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
    /// `\Recent` as a search or store argument (never stored).
    Recent,
    Keyword(String),
}

impl Flag {
    /// The flag as IMAP writes it.
    pub fn as_str(&self) -> &str {
        match self {
            Flag::Seen => "\\Seen",
            Flag::Answered => "\\Answered",
            Flag::Flagged => "\\Flagged",
            Flag::Deleted => "\\Deleted",
            Flag::Draft => "\\Draft",
            Flag::Recent => "\\Recent",
            Flag::Keyword(k) => k,
        }
    }
}

/// How STORE changes the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreAction {
    Replace,
    Add,
    Remove,
}

/// A set of message numbers or UIDs: ranges, `*` meaning the largest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<(SeqNum, SeqNum)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqNum {
    Value(NonZeroU32),
    /// `*`: the largest number in use.
    Largest,
    /// `$` (RFC 5182 SEARCHRES): the last saved search result, always a set on its own. The
    /// session replaces it with the saved messages before it uses the set.
    Saved,
}

impl SequenceSet {
    /// `$`: the saved search result.
    pub fn saved() -> Self {
        Self(vec![(SeqNum::Saved, SeqNum::Saved)])
    }

    pub fn is_saved(&self) -> bool {
        self.0
            .iter()
            .any(|r| r.0 == SeqNum::Saved || r.1 == SeqNum::Saved)
    }

    /// Whether `n` is in the set when the largest number in use is `largest`.
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        self.0.iter().any(|&(a, b)| {
            let value = |s: SeqNum| match s {
                SeqNum::Value(v) => v.get(),
                SeqNum::Largest => largest,
                SeqNum::Saved => 0,
            };
            let (lo, hi) = (value(a).min(value(b)), value(a).max(value(b)));
            (lo..=hi).contains(&n)
        })
    }
}

/// STATUS items (and LIST-STATUS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    HighestModSeq,
    Size,
    /// IMAP4rev2: messages with `\\Deleted`.
    Deleted,
}

/// What FETCH asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchItem {
    Uid,
    Flags,
    InternalDate,
    Rfc822Size,
    Envelope,
    BodyStructure,
    /// `BODY` without a section: the non-extensible structure.
    BodyShort,
    ModSeq,
    /// `RFC822` (= `BODY[]`, sets `\Seen`), `RFC822.HEADER` (= `BODY.PEEK[HEADER]`) and
    /// `RFC822.TEXT` (= `BODY[TEXT]`): answered under their own names.
    Rfc822(Rfc822Part),
    /// `BODY[section]<partial>` / `BODY.PEEK[...]`; `BINARY[...]` (decoded) with `binary`.
    Body {
        section: Section,
        partial: Option<(u32, u32)>,
        peek: bool,
        binary: bool,
    },
    /// `BINARY.SIZE[part]`.
    BinarySize(Vec<u32>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rfc822Part {
    Whole,
    Header,
    Text,
}

/// A body section: a part path (empty: the message) and what of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: SectionText,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectionText {
    /// The whole part (or the whole message).
    Full,
    Header,
    HeaderFields {
        fields: Vec<String>,
        not: bool,
    },
    Text,
    Mime,
}

/// A search criterion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchKey {
    All,
    And(Vec<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    Not(Box<SearchKey>),
    /// Messages with (`true`) or without this flag.
    Flag(Flag, bool),
    New,
    Old,
    /// Message numbers.
    Sequence(SequenceSet),
    Uid(SequenceSet),
    Larger(u32),
    Smaller(u32),
    /// INTERNALDATE, by day (days since the Unix epoch).
    Before(i64),
    On(i64),
    Since(i64),
    /// The Date: header, by day.
    SentBefore(i64),
    SentOn(i64),
    SentSince(i64),
    /// A header field containing a string (`From`, `Subject`, … or `HEADER name value`).
    Header(String, String),
    Body(String),
    Text(String),
    ModSeq(u64),
}

/// ESEARCH `RETURN` options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchReturn {
    Min,
    Max,
    All,
    Count,
    /// SEARCHRES: keep the result for `$`.
    Save,
}
