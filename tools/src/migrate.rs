//! Bringing a user's mail in from Maildir (Maildir++ folders, as Dovecot keeps them) or mbox,
//! and taking it out again as a Maildir Dovecot can serve: `porcupine import maildir|mbox` and
//! `porcupine export maildir`, through a running node's admin endpoint.
//!
//! Each imported message gets an id made from where it came from (its folder and Maildir
//! unique name, or its place and contents in the mbox) and its date, so a second run, after an
//! interruption or not, finds it stored and skips it: nothing is stored twice. Flags come from
//! the Maildir info (`:2,DFPRST` and Dovecot's keyword letters, named in `dovecot-keywords`) or
//! mbox `Status:`/`X-Status:` headers; INTERNALDATE from the file's time or the `From ` line.
//! Where a folder has Dovecot's `dovecot-uidlist`, its messages go in in UID order and keep
//! their UIDs and the folder its UIDVALIDITY, so a client that synced with Dovecot does not
//! download them again: the node keeps them when the folder is new or empty here (or already
//! has that UIDVALIDITY, for the UIDs above every one it gave); else it gives its own UIDs, in
//! the same order.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use porcupine_cluster::admin_client::AdminClient;
use porcupine_cluster::node::mail_transfer::{
    NewItem, NewMails, StoredMail, MANY_BYTES_MAX, MANY_MESSAGES_MAX,
};

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub stored: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes: u64,
    pub folders: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub fn line(&self, verb: &str) -> String {
        let seconds = self.elapsed.as_secs_f64().max(1e-6);
        format!(
            "{verb} {} messages ({} bytes) in {} folders, {} already there, {} failed, in {:.1} s ({:.0} messages/s)",
            self.stored,
            self.bytes,
            self.folders,
            self.skipped,
            self.failed,
            seconds,
            self.stored as f64 / seconds
        )
    }
}

/// One message found in a Maildir or mbox, ready to store.
struct Found {
    folder: String,
    flags: Vec<String>,
    date: i64,
    id: u128,
    source: Source,
    /// Its UID and its folder's UIDVALIDITY in Dovecot's `dovecot-uidlist`.
    uid: Option<(u32, u32)>,
}

enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// An id from where a message came from: its date in the high bits (as the node's own ids,
/// so ids sort by time), a hash of its origin in the low ones.
fn import_id(date: i64, user: &str, folder: &str, origin: &[u8]) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(user.as_bytes());
    hasher.update(&[0]);
    hasher.update(folder.as_bytes());
    hasher.update(&[0]);
    hasher.update(origin);
    let micros = u128::from(u64::try_from(date).unwrap_or(1).max(1)) * 1_000_000;
    (micros << 64) | u128::from(hasher.digest().max(1))
}

fn mtime(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// The folders of a Maildir++ tree: the root is INBOX, `.A.B` is `A/B`.
fn maildir_folders(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let is_maildir = |dir: &Path| dir.join("cur").is_dir() || dir.join("new").is_dir();
    let mut folders = Vec::new();
    if is_maildir(root) {
        folders.push(("INBOX".to_owned(), root.to_path_buf()));
    }
    let mut subs: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix('.') {
            if !rest.is_empty() && rest != "." && is_maildir(&entry.path()) {
                let folder = rest.replace('.', "/");
                // Dovecot's `.INBOX.x` layout: x is a child of INBOX.
                subs.push((folder, entry.path()));
            }
        }
    }
    subs.sort();
    folders.extend(subs);
    if folders.is_empty() {
        bail!(
            "{} is not a Maildir (no cur/ or new/, no .Folder/ with them)",
            root.display()
        );
    }
    Ok(folders)
}

/// Dovecot's keyword letters: `dovecot-keywords` lines `N name`, letter `a` + N.
fn dovecot_keywords(dir: &Path) -> BTreeMap<char, String> {
    let mut out = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("dovecot-keywords")) {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let (Some(n), Some(name)) = (words.next(), words.next()) {
                if let Ok(n) = n.parse::<u8>() {
                    if n < 26 {
                        out.insert(char::from(b'a' + n), name.to_owned());
                    }
                }
            }
        }
    }
    out
}

/// A folder's `dovecot-uidlist`: its UIDVALIDITY (header `3 V<validity> N<next> …`, or
/// `1 <validity> <next>` in the first format), and the UID of each unique name (the lines
/// `UID [extensions] :name`).
struct UidList {
    validity: Option<u32>,
    /// The next UID Dovecot would give (`N`): UIDs below it may have named messages expunged
    /// since, so they are never given again under this UIDVALIDITY.
    next: Option<u32>,
    uids: BTreeMap<String, u32>,
}

fn dovecot_uids(dir: &Path) -> UidList {
    let mut list = UidList {
        validity: None,
        next: None,
        uids: BTreeMap::new(),
    };
    let Ok(text) = std::fs::read_to_string(dir.join("dovecot-uidlist")) else {
        return list;
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let field = |key: char| {
        header
            .iter()
            .skip(1)
            .find_map(|f| f.strip_prefix(key)?.parse::<u32>().ok())
    };
    (list.validity, list.next) = match header.first() {
        Some(&"1") => (
            header.get(1).and_then(|v| v.parse().ok()),
            header.get(2).and_then(|n| n.parse().ok()),
        ),
        Some(_) => (field('V'), field('N')),
        None => (None, None),
    };
    list.validity = list.validity.filter(|v| *v != 0);
    for line in lines {
        let Some((uid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(uid) = uid.parse::<u32>() else {
            continue;
        };
        if let Some(name) = rest.split(':').nth(1) {
            list.uids.insert(name.to_owned(), uid);
        } else if let Some(name) = rest.split_whitespace().last() {
            list.uids
                .insert(name.trim_start_matches(':').to_owned(), uid);
        }
    }
    list
}

/// Flags from a Maildir info (`2,DFRS` and keyword letters).
fn maildir_flags(info: &str, keywords: &BTreeMap<char, String>) -> Vec<String> {
    let mut flags = Vec::new();
    let Some(letters) = info.strip_prefix("2,") else {
        return flags;
    };
    for c in letters.chars() {
        let flag = match c {
            'D' => Some("\\Draft".to_owned()),
            'F' => Some("\\Flagged".to_owned()),
            'P' => Some("$Forwarded".to_owned()),
            'R' => Some("\\Answered".to_owned()),
            'S' => Some("\\Seen".to_owned()),
            'T' => Some("\\Deleted".to_owned()),
            'a'..='z' => keywords.get(&c).cloned(),
            _ => None,
        };
        if let Some(flag) = flag {
            if !flags.contains(&flag) {
                flags.push(flag);
            }
        }
    }
    flags
}

/// A folder's UIDVALIDITY and next UID where its messages come from.
struct FolderUids {
    folder: String,
    validity: u32,
    next: u32,
}

fn scan_maildir(root: &Path, user: &str) -> Result<(Vec<Found>, usize, Vec<FolderUids>)> {
    let folders = maildir_folders(root)?;
    let mut found = Vec::new();
    let mut nexts = Vec::new();
    for (folder, dir) in &folders {
        let keywords = dovecot_keywords(dir);
        let uids = dovecot_uids(dir);
        if let (Some(validity), Some(next)) = (uids.validity, uids.next) {
            nexts.push(FolderUids {
                folder: folder.clone(),
                validity,
                next,
            });
        }
        let mut here = Vec::new();
        for sub in ["cur", "new"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries {
                let entry = entry?;
                if !entry.file_type()?.is_file() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let (unique, info) = match name.split_once(':').or_else(|| name.split_once('!')) {
                    Some((unique, info)) => (unique.to_owned(), info.to_owned()),
                    None => (name.clone(), String::new()),
                };
                let path = entry.path();
                let date = mtime(&path);
                let uid = uids.uids.get(&unique).copied();
                let order = uid.map_or(u64::MAX, u64::from);
                here.push((
                    order,
                    date,
                    unique.clone(),
                    Found {
                        folder: folder.clone(),
                        flags: maildir_flags(&info, &keywords),
                        date,
                        id: import_id(date, user, folder, unique.as_bytes()),
                        source: Source::File(path),
                        uid: uid.zip(uids.validity),
                    },
                ));
            }
        }
        here.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        found.extend(here.into_iter().map(|(_, _, _, f)| f));
    }
    Ok((found, folders.len(), nexts))
}

/// Messages of an mbox (mboxrd: `>From ` lines lose one `>`), with their flags and dates.
fn scan_mbox(path: &Path, user: &str, folder: &str) -> Result<Vec<Found>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(b"From ") {
        bail!(
            "{} is not an mbox (it does not start with a From line)",
            path.display()
        );
    }
    let mut found = Vec::new();
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut starts = vec![0usize];
    let mut at = 0;
    while let Some(i) = memchr::memmem::find(&bytes[at..], b"\nFrom ") {
        starts.push(at + i + 1);
        at += i + 1;
    }
    starts.push(bytes.len());
    for pair in starts.windows(2) {
        let chunk = &bytes[pair[0]..pair[1]];
        let Some(line_end) = chunk.iter().position(|&b| b == b'\n') else {
            continue;
        };
        let from_line = String::from_utf8_lossy(&chunk[..line_end]).into_owned();
        let mut body = &chunk[line_end + 1..];
        // The blank line before the next From belongs to the mbox, not the message.
        if body.ends_with(b"\n\n") {
            body = &body[..body.len() - 1];
        }
        let mut message = Vec::with_capacity(body.len() + body.len() / 40);
        for line in body.split_inclusive(|&b| b == b'\n') {
            let line = if line.starts_with(b">")
                && line
                    .iter()
                    .skip_while(|&&b| b == b'>')
                    .take(5)
                    .eq(b"From ".iter())
            {
                &line[1..]
            } else {
                line
            };
            // Mail is CRLF on the wire and in the store.
            if line.ends_with(b"\n") && !line.ends_with(b"\r\n") {
                message.extend_from_slice(&line[..line.len() - 1]);
                message.extend_from_slice(b"\r\n");
            } else {
                message.extend_from_slice(line);
            }
        }
        let header_end = memchr::memmem::find(&message, b"\r\n\r\n").unwrap_or(message.len());
        let header = String::from_utf8_lossy(&message[..header_end]).into_owned();
        let mut flags = Vec::new();
        for line in header.lines() {
            let lower = line.to_ascii_lowercase();
            let value = if let Some(v) = lower.strip_prefix("status:") {
                v
            } else if let Some(v) = lower.strip_prefix("x-status:") {
                v
            } else {
                continue;
            };
            for c in value.trim().chars() {
                let flag = match c {
                    'r' => "\\Seen",
                    'a' => "\\Answered",
                    'f' => "\\Flagged",
                    'd' => "\\Deleted",
                    't' => "\\Draft",
                    _ => continue,
                };
                if !flags.iter().any(|f| f == flag) {
                    flags.push(flag.to_owned());
                }
            }
        }
        let date = mbox_date(&from_line).unwrap_or_else(|| mtime(path));
        let digest = xxhash_rust::xxh3::xxh3_64(&message);
        let occurrence = seen.entry(digest).or_default();
        *occurrence += 1;
        let mut origin = digest.to_le_bytes().to_vec();
        origin.extend_from_slice(&occurrence.to_le_bytes());
        found.push(Found {
            folder: folder.to_owned(),
            flags,
            date,
            id: import_id(date, user, folder, &origin),
            source: Source::Bytes(message),
            uid: None,
        });
    }
    Ok(found)
}

/// The date of a `From sender Tue Jul  1 10:52:37 2003` line, Unix seconds (UTC).
fn mbox_date(line: &str) -> Option<i64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() < 7 {
        return None;
    }
    let n = words.len();
    let (month, day, time, year) = (words[n - 4], words[n - 3], words[n - 2], words[n - 1]);
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| month.eq_ignore_ascii_case(m))? as u32
        + 1;
    let day: u32 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (
        hms.next()??,
        hms.next()??,
        hms.next().flatten().unwrap_or(0),
    );
    let days = porcupine_protocols::imap::parser::days_from_civil(year, month, day);
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} ({{per_sec}}, {{eta}} left)"
    )) {
        bar.set_style(style);
    }
    bar
}

/// Stores one batch of messages of `folder` (whose UIDVALIDITY where they come from is
/// `uid_validity`, if their UIDs are to be kept; with `uid_next`, the folder's next UID
/// there, once its messages are all sent).
fn send_batch(
    admin: &AdminClient,
    user: &str,
    (folder, uid_validity, uid_next): (&str, Option<u32>, Option<u32>),
    batch: Vec<(NewItem, Vec<u8>)>,
    summary: &mut Summary,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let count = batch.len() as u64;
    let bytes: u64 = batch.iter().map(|(_, b)| b.len() as u64).sum();
    let (items, contents): (Vec<NewItem>, Vec<Vec<u8>>) = batch.into_iter().unzip();
    let mails = NewMails {
        user: user.to_owned(),
        folder: folder.to_owned(),
        items,
        uid_validity,
        uid_next,
    };
    let mut body = serde_json::to_vec(&mails)?;
    body.push(b'\n');
    for content in contents {
        body.extend_from_slice(&content);
    }
    let response = admin.request("POST", "/users/append-many", &body)?;
    match response.status {
        201 => {
            summary.stored += count;
            summary.bytes += bytes;
        }
        404 => bail!("{}", response.body.trim()),
        _ => {
            summary.failed += count;
            bar.println(if count == 0 {
                format!("the next UID of {folder}: {}", response.body.trim())
            } else {
                format!("{count} messages of {folder}: {}", response.body.trim())
            });
        }
    }
    Ok(())
}

/// The user's messages as the node lists them.
fn stored(admin: &AdminClient, user: &str) -> Result<Vec<StoredMail>> {
    let response = admin.request("POST", "/users/messages", user.as_bytes())?;
    if response.status != 200 {
        bail!("{}", response.body.trim());
    }
    serde_json::from_str(&response.body).context("the node's list of messages")
}

fn import(
    admin: &AdminClient,
    user: &str,
    found: Vec<Found>,
    folders: usize,
    nexts: Vec<FolderUids>,
) -> Result<Summary> {
    let started = Instant::now();
    // Where each id is now. A message found only in INBOX while it belongs elsewhere is one a
    // failed batch wrote but never filed (the node lists such copies as new mail): it is
    // stored again, into its folder. Anywhere else it is where the last run put it.
    let present: std::collections::HashMap<String, String> = stored(admin, user)?
        .into_iter()
        .map(|m| (m.id, m.folder))
        .collect();
    let mut summary = Summary {
        folders,
        ..Summary::default()
    };
    let bar = progress(found.len() as u64, "importing");
    // Messages go in batches of one folder, stored together on the node (their writes share
    // group commits), in the order found.
    let mut batch: Vec<(NewItem, Vec<u8>)> = Vec::new();
    let mut batch_folder = String::new();
    let mut batch_validity = None;
    let mut batch_bytes = 0usize;
    for message in found {
        bar.inc(1);
        let id = format!("{:032x}", message.id);
        match present.get(&id) {
            Some(folder) if folder != "INBOX" || message.folder == "INBOX" => {
                summary.skipped += 1;
                continue;
            }
            _ => {}
        }
        let bytes = with_crlf(match message.source {
            Source::Bytes(bytes) => bytes,
            Source::File(path) => {
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
            }
        });
        if !batch.is_empty()
            && (message.folder != batch_folder
                || message.uid.map(|(_, v)| v) != batch_validity
                || batch.len() >= MANY_MESSAGES_MAX
                || batch_bytes + bytes.len() > MANY_BYTES_MAX)
        {
            send_batch(
                admin,
                user,
                (&batch_folder, batch_validity, None),
                std::mem::take(&mut batch),
                &mut summary,
                &bar,
            )?;
            batch_bytes = 0;
        }
        batch_folder = message.folder;
        batch_validity = message.uid.map(|(_, v)| v);
        batch_bytes += bytes.len();
        batch.push((
            NewItem {
                flags: message.flags,
                date: message.date,
                id,
                len: bytes.len(),
                uid: message.uid.map(|(uid, _)| uid),
            },
            bytes,
        ));
    }
    if !batch.is_empty() {
        send_batch(
            admin,
            user,
            (&batch_folder, batch_validity, None),
            batch,
            &mut summary,
            &bar,
        )?;
    }
    // Once a folder's messages are all in (this run or an earlier one), it gives no UID that
    // Dovecot gave before, even to a message expunged there since.
    for FolderUids {
        folder,
        validity,
        next,
    } in nexts
    {
        send_batch(
            admin,
            user,
            (&folder, Some(validity), Some(next)),
            Vec::new(),
            &mut summary,
            &bar,
        )?;
    }
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// A message with bare LF line ends (as Postfix and most MDAs write Maildir files) with
/// CRLF ones, as IMAP serves it and as mail that came by SMTP is stored (Dovecot makes the
/// same change as it reads such files); a message with CRLF already is left as it is.
fn with_crlf(bytes: Vec<u8>) -> Vec<u8> {
    let bare = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
        .count();
    if bare == 0 {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len() + bare);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

pub fn import_maildir(admin: &AdminClient, dir: &Path, user: &str) -> Result<Summary> {
    let (found, folders, nexts) = scan_maildir(dir, user)?;
    import(admin, user, found, folders, nexts)
}

pub fn import_mbox(admin: &AdminClient, file: &Path, user: &str, folder: &str) -> Result<Summary> {
    let found = scan_mbox(file, user, folder)?;
    import(admin, user, found, 1, Vec::new())
}

/// The Maildir++ directory of `folder` under `root`.
fn folder_dir(root: &Path, folder: &str) -> PathBuf {
    if folder == "INBOX" {
        root.to_path_buf()
    } else {
        root.join(format!(".{}", folder.replace('/', ".")))
    }
}

/// Maildir info letters for `flags`, keywords taking Dovecot letters from `keywords`.
fn info_of(flags: &[String], keywords: &mut Vec<String>) -> String {
    let mut letters: Vec<char> = Vec::new();
    for flag in flags {
        let letter = match flag.as_str() {
            "\\Draft" => Some('D'),
            "\\Flagged" => Some('F'),
            "$Forwarded" => Some('P'),
            "\\Answered" => Some('R'),
            "\\Seen" => Some('S'),
            "\\Deleted" => Some('T'),
            keyword => {
                let n = match keywords.iter().position(|k| k == keyword) {
                    Some(n) => Some(n),
                    None if keywords.len() < 26 => {
                        keywords.push(keyword.to_owned());
                        Some(keywords.len() - 1)
                    }
                    None => None,
                };
                n.map(|n| char::from(b'a' + n as u8))
            }
        };
        letters.extend(letter);
    }
    letters.sort_unstable();
    letters.dedup();
    format!("2,{}", letters.into_iter().collect::<String>())
}

/// Writes a folder's `dovecot-uidlist` (format 3) with porcupine's UIDVALIDITY and UIDs, so
/// Dovecot serving the export shows clients the UIDs they know. A folder whose UIDVALIDITY
/// differs from the one already written (the mailbox was deleted and made again since an
/// earlier export) keeps the file's, and Dovecot gives the new messages UIDs of its own.
fn write_uidlist(dir: &Path, validity: u32, list: &UidList) -> Result<()> {
    let validity = match list.validity {
        Some(written) if written != validity => return Ok(()),
        _ => validity,
    };
    if validity == 0 || list.uids.is_empty() {
        return Ok(());
    }
    let mut by_uid: Vec<(&u32, &String)> = list.uids.iter().map(|(n, u)| (u, n)).collect();
    by_uid.sort();
    // Never below porcupine's own next UID: the UIDs of messages expunged here are not
    // given again by Dovecot either.
    let next = by_uid
        .last()
        .map_or(1, |(uid, _)| uid.saturating_add(1))
        .max(list.next.unwrap_or(0));
    let guid = xxhash_rust::xxh3::xxh3_128(dir.as_os_str().as_encoded_bytes());
    let mut text = format!("3 V{validity} N{next} G{guid:032x}\n");
    for (uid, name) in by_uid {
        text.push_str(&format!("{uid} :{name}\n"));
    }
    let tmp = dir.join("dovecot-uidlist.porcupine-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("dovecot-uidlist"))?;
    Ok(())
}

pub fn export_maildir(admin: &AdminClient, user: &str, root: &Path) -> Result<Summary> {
    let started = Instant::now();
    let messages = stored(admin, user)?;
    let mut by_folder: BTreeMap<String, Vec<StoredMail>> = BTreeMap::new();
    for message in messages {
        by_folder
            .entry(message.folder.clone())
            .or_default()
            .push(message);
    }
    let total = by_folder.values().map(|v| v.len() as u64).sum();
    let bar = progress(total, "exporting");
    let mut summary = Summary {
        folders: by_folder.len(),
        ..Summary::default()
    };
    for (folder, messages) in by_folder {
        let dir = folder_dir(root, &folder);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mut keywords: Vec<String> = dovecot_keywords(&dir).into_values().collect();
        let mut uidlist = dovecot_uids(&dir);
        let validity = messages.first().map_or(0, |m| m.uid_validity);
        let uid_next = messages.first().map_or(0, |m| m.uid_next);
        uidlist.next = uidlist.next.max(Some(uid_next));
        let existing: HashSet<String> = std::fs::read_dir(dir.join("cur"))?
            .filter_map(|e| e.ok())
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        for message in messages {
            bar.inc(1);
            let unique = format!("{}.P{}.porcupine", message.date.max(0), message.id);
            if existing.contains(&unique) {
                summary.skipped += 1;
                continue;
            }
            uidlist.uids.insert(unique.clone(), message.uid);
            let holders: Vec<String> = message.holders.iter().map(u64::to_string).collect();
            let request = format!("{user} {} {}", message.id, holders.join(","));
            let (status, bytes) =
                admin.request_bytes("POST", "/users/message", request.as_bytes())?;
            if status != 200 {
                summary.failed += 1;
                bar.println(format!(
                    "{} in {folder}: {}",
                    message.id,
                    String::from_utf8_lossy(&bytes).trim()
                ));
                continue;
            }
            let name = format!("{unique}:{}", info_of(&message.flags, &mut keywords));
            let tmp = dir.join("tmp").join(&unique);
            let mut file = std::fs::File::create(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            let date = UNIX_EPOCH + Duration::from_secs(message.date.max(0) as u64);
            file.set_modified(date.max(UNIX_EPOCH + Duration::from_secs(1)))?;
            drop(file);
            std::fs::rename(&tmp, dir.join("cur").join(&name))?;
            summary.stored += 1;
            summary.bytes += bytes.len() as u64;
        }
        write_uidlist(&dir, validity, &uidlist)?;
        if !keywords.is_empty() {
            let text: String = keywords
                .iter()
                .enumerate()
                .map(|(n, k)| format!("{n} {k}\n"))
                .collect();
            std::fs::write(dir.join("dovecot-keywords"), text)?;
        }
    }
    bar.finish_and_clear();
    // Dovecot lists Maildir++ folders it finds; subscriptions make clients show them.
    let subscriptions: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix('.'))
                .map(str::to_owned)
        })
        .filter(|n| !n.is_empty())
        .collect();
    if !subscriptions.is_empty() {
        let mut text = subscriptions.join("\n");
        text.push('\n');
        std::fs::write(root.join("subscriptions"), text)?;
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}
