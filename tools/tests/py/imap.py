"""IMAP through the real node with Python's imaplib (and a raw socket where imaplib has no
API, IDLE and hostile input). Subcommands:

  basics HOST SMTP IMAP IMAPS POP3 CA USER PASSWORD
      one node, one user: byte-exact APPEND/FETCH, SMTP mail in IMAP, UIDPLUS, flags seen by a
      second session, IDLE woken by SMTP, folders and MOVE, one INBOX shared with POP3,
      STARTTLS, IMAPS, AUTHENTICATE PLAIN, hostile input answered BAD/NO.
  populate HOST IMAP USER PASSWORD TAG COUNT
      appends COUNT messages to INBOX and Archive and sets flags on some.
  snapshot HOST IMAP USER PASSWORD
      prints one line `snapshot JSON`: per folder, UIDVALIDITY and [uid, sorted flags, size].
  idle-for HOST IMAP USER PASSWORD SECONDS
      IDLEs in INBOX; prints `idle saw N EXISTS` when new mail is announced.
  store HOST IMAP USER PASSWORD UID FLAG
      sets FLAG on UID in INBOX; prints `stored`.
  expunge HOST IMAP USER PASSWORD UID
      expunges UID from INBOX (STORE \Deleted, UID EXPUNGE); prints `expunged`.
  expunge-seen HOST IMAP USER PASSWORD UID SECONDS
      NOOPs until an EXPUNGE of UID's message is announced; prints `expunge seen`.
  deliver HOST SMTP USER SUBJECT
      sends one message by SMTP; prints `delivered`.
  flags-of HOST IMAP USER PASSWORD UID SECONDS
      NOOPs until UID's flags change from what the first FETCH shows; prints them.
  inbox-or-refusal HOST IMAP USER PASSWORD
      logs in and EXAMINEs INBOX; prints `inbox UIDS` (comma-separated) when it is shown, or
      `refused TEXT` when the login or the EXAMINE is answered NO.
  resync HOST IMAP USER PASSWORD
      IMAP4rev2 and QRESYNC on a raw socket while imaplib changes the folder `Resync`:
      VANISHED at NOOP, QRESYNC at SELECT and in UID FETCH, SEARCH RETURN (SAVE) and $,
      STATUS DELETED/SIZE, a BINARY APPEND with a NUL read back; prints
      `resync state UIDVALIDITY HIGHESTMODSEQ UIDS`.
  resync-check HOST IMAP USER PASSWORD UIDVALIDITY HIGHESTMODSEQ UIDS
      SELECT (QRESYNC ...) with that state: nothing may have vanished or changed, and
      HIGHESTMODSEQ may not have gone down; prints `resync unchanged`.
"""

import email.utils
import imaplib
import json
import poplib
import re
import smtplib
import socket
import ssl
import sys
import time


def fail(why):
    print("FAILED:", why)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def ok(typ_data, what):
    typ, data = typ_data
    check(typ == "OK", f"{what}: {typ} {data}")
    return data


def login(host, port, user, password):
    m = imaplib.IMAP4(host, int(port))
    ok(m.login(user, password), "LOGIN")
    return m


def uid_fetch(m, uids, items):
    """{uid: {item: value}} for a UID FETCH (literals as bytes)."""
    data = ok(m.uid("FETCH", uids, items), f"UID FETCH {uids} {items}")
    out = {}
    for part in data:
        if part is None or part == b")":
            continue
        if isinstance(part, tuple):
            head, literal = part
        else:
            head, literal = part, None
        uid = int(re.search(rb"UID (\d+)", head).group(1))
        entry = out.setdefault(uid, {})
        flags = re.search(rb"FLAGS \(([^)]*)\)", head)
        if flags:
            entry["flags"] = sorted(flags.group(1).decode().split())
        size = re.search(rb"RFC822\.SIZE (\d+)", head)
        if size:
            entry["size"] = int(size.group(1))
        if literal is not None:
            entry["literal"] = literal
    return out


def selected_count(m, mailbox):
    data = ok(m.select(mailbox), f"SELECT {mailbox}")
    return int(data[0])


def pop3_count(host, port, user, password):
    p = poplib.POP3(host, int(port))
    p.user(user)
    p.pass_(password)
    count = p.stat()[0]
    p.quit()
    return count


def deliver(host, port, user, subject, body=b"hello\r\n"):
    message = (
        b"From: sender@example.org\r\nTo: " + user.encode() + b"\r\nSubject: " + subject.encode()
        + b"\r\nMessage-ID: <" + subject.encode() + b"@example.org>\r\n\r\n" + body
    )
    with smtplib.SMTP(host, int(port)) as s:
        s.sendmail("sender@example.org", [user], message)
    return message


def quoted(text):
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


class Raw:
    """A line-oriented IMAP connection on a plain socket."""

    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data):
        self.sock.sendall(data)

    def line(self, timeout=None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until_tagged(self, tag):
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines


def idle_until_exists(host, port, user, password, seconds, on_idle=None):
    raw = Raw(host, port, timeout=seconds + 5)
    raw.send(b"a LOGIN " + quoted(user) + b" " + quoted(password) + b"\r\n")
    check(raw.until_tagged(b"a")[-1].startswith(b"a OK"), "raw LOGIN")
    raw.send(b"b SELECT INBOX\r\n")
    lines = raw.until_tagged(b"b")
    exists = [int(l.split()[1]) for l in lines if l.endswith(b" EXISTS")]
    check(exists, f"SELECT without EXISTS: {lines}")
    before = exists[0]
    raw.send(b"c IDLE\r\n")
    check(raw.line().startswith(b"+"), "IDLE continuation")
    started = time.monotonic()
    if on_idle:
        on_idle()
    deadline = started + seconds
    while True:
        left = deadline - time.monotonic()
        check(left > 0, f"IDLE saw no new mail in {seconds} s")
        try:
            line = raw.line(timeout=left)
        except socket.timeout:
            fail(f"IDLE saw no new mail in {seconds} s")
        if line.endswith(b" EXISTS") and int(line.split()[1]) > before:
            seen = time.monotonic() - started
            break
    raw.send(b"DONE\r\n")
    check(raw.until_tagged(b"c")[-1].startswith(b"c OK"), "IDLE DONE")
    raw.send(b"d LOGOUT\r\n")
    return int(line.split()[1]), seen


def basics(host, smtp, imap, imaps, pop3, ca, user, password):
    # Mail delivered by SMTP is in INBOX, its body byte for byte after the trace header.
    sent = deliver(host, smtp, user, "by-smtp", b"line one\r\n\tindented \xc3\xa9t\xc3\xa9\r\n.dot\r\n")
    m = login(host, imap, user, password)
    caps = m.capabilities
    for cap in ("IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "LITERAL+", "SPECIAL-USE", "NAMESPACE"):
        check(cap in caps, f"capability {cap} missing: {caps}")
    check(selected_count(m, "INBOX") == 1, "INBOX does not hold the SMTP message")
    by_uid = uid_fetch(m, "1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[])")
    check(len(by_uid) == 1, f"one message expected: {by_uid}")
    first_uid, first = next(iter(by_uid.items()))
    check(first["literal"].endswith(sent), "BODY[] of the SMTP message differs")
    check(first["size"] == len(first["literal"]), "RFC822.SIZE is not BODY[]'s length")
    check(first["flags"] == [], f"new mail has flags: {first['flags']}")

    # APPEND then FETCH BODY[] returns the very bytes; UIDPLUS names the UID.
    appended = (
        b"From: me@example.org\r\nSubject: appended \xe2\x9c\x93\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
        + b"a long line " * 200 + b"\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQFBgc=\r\n--XX--\r\n"
    )
    answer = ok(m.append("INBOX", r"(\Draft $Label1)", None, appended), "APPEND")
    found = re.search(rb"APPENDUID (\d+) (\d+)", answer[-1])
    check(found, f"no APPENDUID: {answer}")
    appended_uid = int(found.group(2))
    check(appended_uid > first_uid, "UIDs do not ascend")
    got = uid_fetch(m, str(appended_uid), "(FLAGS BODY.PEEK[])")[appended_uid]
    check(got["literal"] == appended, "APPEND then FETCH BODY[] differs")
    check(got["flags"] == sorted(["\\Draft", "$Label1"]), f"APPEND flags: {got['flags']}")
    structure = ok(m.uid("FETCH", str(appended_uid), "(BODYSTRUCTURE ENVELOPE)"), "BODYSTRUCTURE")
    text = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in structure)
    check(b'"MIXED"' in text.upper() and b'"BOUNDARY" "XX"' in text.upper(), f"BODYSTRUCTURE: {text}")
    check(b"ENVELOPE (" in text and b"appended" in text
          and b'((NIL NIL "me" "example.org"))' in text, f"ENVELOPE: {text}")
    part = uid_fetch(m, str(appended_uid), "(BODY.PEEK[2])")[appended_uid]["literal"]
    check(part == b"AAECAwQFBgc=", f"BODY[2]: {part!r}")

    # A second session sees the first one's flag change at its next NOOP.
    other = login(host, imap, user, password)
    selected_count(other, "INBOX")
    ok(m.uid("STORE", str(first_uid), "+FLAGS", r"(\Seen \Flagged)"), "STORE")
    ok(other.noop(), "NOOP")
    seen = uid_fetch(other, str(first_uid), "(FLAGS)")[first_uid]["flags"]
    check(seen == sorted(["\\Seen", "\\Flagged"]), f"other session's flags: {seen}")

    # IDLE is woken by mail delivered through SMTP.
    exists, after = idle_until_exists(
        host, imap, user, password, 5, lambda: deliver(host, smtp, user, "while-idle")
    )
    check(exists == 3, f"IDLE announced {exists}")
    print(f"idle woke after {after:.3f} s")

    # Folders: CREATE a tree, MOVE out of INBOX, STATUS, and one INBOX shared with POP3.
    ok(m.create("Work/Reports"), "CREATE")
    listed = b"\n".join(ok(m.list(), "LIST"))
    for name in (b"INBOX", b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive", b"Work/Reports"):
        check(name in listed, f"LIST lacks {name}: {listed}")
    check(b"\\Sent" in listed and b"\\Trash" in listed, f"no SPECIAL-USE: {listed}")
    selected_count(m, "INBOX")
    check(pop3_count(host, pop3, user, password) == 3, "POP3 does not see INBOX's 3 messages")
    ok(m.uid("MOVE", str(appended_uid), "Work/Reports"), "MOVE")
    status = ok(m.status("Work/Reports", "(MESSAGES UIDNEXT UIDVALIDITY)"), "STATUS")[0]
    check(b"MESSAGES 1" in status, f"STATUS after MOVE: {status}")
    check(pop3_count(host, pop3, user, password) == 2, "POP3 still shows a moved message")
    # POP3 DELE is an IMAP expunge...
    p = poplib.POP3(host, int(pop3))
    p.user(user)
    p.pass_(password)
    p.dele(1)
    p.quit()
    ok(m.noop(), "NOOP")
    remaining = uid_fetch(m, "1:*", "(FLAGS)")
    check(first_uid not in remaining and len(remaining) == 1, f"POP3 DELE not expunged: {remaining}")
    # ...and an IMAP expunge is gone from POP3.
    last_uid = next(iter(remaining))
    ok(m.uid("STORE", str(last_uid), "+FLAGS", r"(\Deleted)"), "STORE \\Deleted")
    ok(m.expunge(), "EXPUNGE")
    check(pop3_count(host, pop3, user, password) == 0, "POP3 still shows an expunged message")
    check(selected_count(m, "Work/Reports") == 1, "the moved message is gone")
    got = uid_fetch(m, "1:*", "(BODY.PEEK[])")
    check([v["literal"] for v in got.values()] == [appended], "the moved message changed")
    m.logout()
    other.logout()

    # STARTTLS and IMAPS, checking the node's certificate; AUTHENTICATE PLAIN.
    context = ssl.create_default_context(cafile=ca)
    t = imaplib.IMAP4(host, int(imap))
    check("STARTTLS" in t.capabilities, f"no STARTTLS: {t.capabilities}")
    ok(t.starttls(context), "STARTTLS")
    ok(t.login(user, password), "LOGIN after STARTTLS")
    t.logout()
    s = imaplib.IMAP4_SSL(host, int(imaps), ssl_context=context)
    ok(s.authenticate("PLAIN", lambda _: b"\0" + user.encode() + b"\0" + password.encode()), "AUTHENTICATE PLAIN")
    check(selected_count(s, "INBOX") == 0, "INBOX over IMAPS")
    s.logout()
    bad = imaplib.IMAP4(host, int(imap))
    try:
        bad.login(user, "wrong password")
        fail("a wrong password logged in")
    except imaplib.IMAP4.error as e:
        check("AUTHENTICATIONFAILED" in str(e) or "NO" in str(e), f"wrong password: {e}")

    # Hostile input: BAD or NO, the connection or at least the node serving on.
    raw = Raw(host, imap)
    raw.send(b"\x00\xff garbage\r\n")
    check(b"BAD" in raw.line(), "garbage not answered BAD")
    raw.send(b"t1 SELECT INBOX\r\n")
    line = raw.line()
    check(line.startswith(b"t1 BAD") or line.startswith(b"t1 NO"), f"SELECT before login: {line}")
    raw.send(b"t2 APPEND INBOX {1000000000}\r\n")
    line = raw.line()
    check(line.startswith(b"t2 NO") or line.startswith(b"t2 BAD") or b"BYE" in line, f"1 GB literal: {line}")
    raw2 = Raw(host, imap)
    raw2.send(b"u1 FETCH 1 FLAGS\r\n")
    line = raw2.line()
    check(line.startswith(b"u1 BAD") or line.startswith(b"u1 NO"), f"FETCH before login: {line}")
    raw2.send(b"u2 LOGIN " + user.encode() + b" {5+}\r\nab\r\n)\r\n")
    line = raw2.line()
    check(b"u2 NO" in line or b"u2 BAD" in line, f"bad LOGIN literal: {line}")
    raw3 = Raw(host, imap)
    raw3.send(b"v1 LOGIN " + quoted(user) + b" " + quoted(password) + b"\r\nv2 SELECT INBOX\r\n"
              b"v3 FETCH 99:* (FLAGS\r\nv4 STORE 1 +FLAGS (\\Seen\r\nv5 NOOP\r\n")
    lines = raw3.until_tagged(b"v5")
    check(any(l.startswith(b"v3 BAD") for l in lines), f"unbalanced FETCH: {lines}")
    check(lines[-1].startswith(b"v5 OK"), f"after bad input: {lines}")
    # The node serves on.
    m = login(host, imap, user, password)
    check(selected_count(m, "INBOX") == 0, "INBOX after hostile input")
    m.logout()
    print("basics ok")


def populate(host, imap, user, password, tag, count):
    m = login(host, imap, user, password)
    for i in range(int(count)):
        folder = "INBOX" if i % 3 else "Archive"
        body = f"Subject: {tag} {i}\r\nFrom: p@example.org\r\n\r\n{tag} body {i}\r\n".encode()
        flags = r"(\Seen)" if i % 2 else None
        ok(m.append(folder, flags, None, body), "APPEND")
    selected_count(m, "INBOX")
    ok(m.store("1:2", "+FLAGS", r"(\Flagged $Work)"), "STORE")
    m.logout()
    print("populated", count)


def snapshot(host, imap, user, password):
    m = login(host, imap, user, password)
    out = {}
    for line in ok(m.list(), "LIST"):
        name = line.decode().rsplit(' "/" ', 1)[1].strip('"')
        data = ok(m.select(name, readonly=True), f"EXAMINE {name}")
        validity = m.untagged_responses.get("UIDVALIDITY", [b"0"])[-1].decode()
        rows = []
        if int(data[0]) > 0:
            for uid, entry in sorted(uid_fetch(m, "1:*", "(FLAGS RFC822.SIZE)").items()):
                rows.append([uid, entry["flags"], entry["size"]])
        out[name] = {"uidvalidity": validity, "messages": rows}
    m.logout()
    print("snapshot", json.dumps(out, sort_keys=True))


def inbox_or_refusal(host, imap, user, password):
    m = imaplib.IMAP4(host, int(imap), timeout=30)
    try:
        m.login(user, password)
    except imaplib.IMAP4.error as e:
        print("refused", e)
        return
    typ, data = m.select("INBOX", readonly=True)
    if typ != "OK":
        print("refused", data)
        return
    uids = sorted(uid_fetch(m, "1:*", "(FLAGS)")) if int(data[0]) > 0 else []
    m.logout()
    print("inbox", ",".join(map(str, uids)))


def idle_for(host, imap, user, password, seconds):
    exists, after = idle_until_exists(host, imap, user, password, float(seconds))
    print(f"idle saw {exists} EXISTS after {after:.3f} s")


def store(host, imap, user, password, uid, flag):
    m = login(host, imap, user, password)
    selected_count(m, "INBOX")
    ok(m.uid("STORE", uid, "+FLAGS", f"({flag})"), "STORE")
    m.logout()
    print("stored")


def flags_of(host, imap, user, password, uid, seconds):
    m = login(host, imap, user, password)
    selected_count(m, "INBOX")
    first = uid_fetch(m, uid, "(FLAGS)")[int(uid)]["flags"]
    print("flags before", first, flush=True)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        ok(m.noop(), "NOOP")
        now = uid_fetch(m, uid, "(FLAGS)")[int(uid)]["flags"]
        if now != first:
            print("flags now", now)
            m.logout()
            return
        time.sleep(0.05)
    fail(f"flags of {uid} did not change in {seconds} s")


def expunge(host, imap, user, password, uid):
    m = login(host, imap, user, password)
    selected_count(m, "INBOX")
    ok(m.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
    ok(m.uid("EXPUNGE", uid), "UID EXPUNGE")
    m.logout()
    print("expunged")


def expunge_seen(host, imap, user, password, uid, seconds):
    m = login(host, imap, user, password)
    selected_count(m, "INBOX")
    check(int(uid) in uid_fetch(m, uid, "(FLAGS)"), f"UID {uid} not there to begin with")
    print("watching", flush=True)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        typ, _ = m.noop()
        check(typ == "OK", "NOOP")
        if m.untagged_responses.pop("EXPUNGE", None):
            # imaplib hands a command every FETCH response it kept, the unsolicited ones too:
            # the \Deleted flag announced before the expunge would look like an answer.
            m.untagged_responses.pop("FETCH", None)
            typ, data = m.uid("FETCH", uid, "(FLAGS)")
            check(typ == "OK" and data in ([None], []), f"expunged UID still answers: {data}")
            print("expunge seen")
            m.logout()
            return
        time.sleep(0.05)
    fail(f"no EXPUNGE of UID {uid} announced in {seconds} s")


def raw_login(host, imap, user, password, enable="QRESYNC IMAP4rev2"):
    raw = Raw(host, imap)
    raw.send(b"a LOGIN " + quoted(user) + b" " + quoted(password) + b"\r\n")
    check(raw.until_tagged(b"a")[-1].startswith(b"a OK"), "raw LOGIN")
    raw.send(b"b ENABLE " + enable.encode() + b"\r\n")
    lines = raw.until_tagged(b"b")
    check(lines[-1].startswith(b"b OK"), f"ENABLE: {lines}")
    return raw, lines


def must(raw, tag, text):
    raw.send(tag + b" " + text + b"\r\n")
    lines = raw.until_tagged(tag)
    check(lines[-1].startswith(tag + b" OK"), f"{text!r}: {lines}")
    return lines


def code_value(lines, name):
    for line in lines:
        found = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if found:
            return int(found.group(1))
    fail(f"no {name!r} in {lines}")


def fetched(lines):
    """{uid: (flags, modseq)} of the FETCH lines."""
    out = {}
    for line in lines:
        found = re.match(rb"\* \d+ FETCH \((.*)\)$", line)
        if not found:
            continue
        body = found.group(1)
        uid = int(re.search(rb"UID (\d+)", body).group(1))
        flags = re.search(rb"FLAGS \(([^)]*)\)", body)
        modseq = re.search(rb"MODSEQ \((\d+)\)", body)
        out[uid] = (
            sorted(flags.group(1).decode().split()) if flags else None,
            int(modseq.group(1)) if modseq else None,
        )
    return out


def vanished(lines, earlier):
    prefix = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    uids = set()
    for line in lines:
        if line.startswith(prefix) and (earlier or not line.startswith(b"* VANISHED (")):
            for part in line[len(prefix):].decode().split(","):
                a, _, b = part.partition(":")
                uids.update(range(int(a), int(b or a) + 1))
    return uids


def resync(host, imap, user, password):
    m = login(host, imap, user, password)
    typ, _ = m.create("Resync")
    uids = []
    for i in range(5):
        body = f"Subject: resync {i}\r\nFrom: r@example.org\r\n\r\nbody {i}\r\n".encode()
        data = ok(m.append("Resync", None, None, body), "APPEND")
        uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))

    raw, enabled = raw_login(host, imap, user, password)
    check(b"* ENABLED QRESYNC IMAP4rev2" in enabled, f"ENABLE: {enabled}")
    lines = must(raw, b"c", b"SELECT Resync")
    check(b'* LIST () "/" "Resync"' in lines, f"rev2 SELECT names the mailbox: {lines}")
    check(not any(l.endswith(b" RECENT") for l in lines), f"rev2 SELECT sent RECENT: {lines}")
    validity = code_value(lines, b"UIDVALIDITY")
    modseq0 = code_value(lines, b"HIGHESTMODSEQ")

    # Another session flags one message and expunges another.
    ok(m.select("Resync"), "SELECT Resync")
    ok(m.uid("STORE", str(uids[1]), "+FLAGS", r"(\Flagged)"), "STORE \\Flagged")
    ok(m.uid("STORE", str(uids[3]), "+FLAGS", r"(\Deleted)"), "STORE \\Deleted")
    ok(m.expunge(), "EXPUNGE")

    # Told at NOOP: the expunge as VANISHED (no EXPUNGE), the flag with its MODSEQ.
    lines = must(raw, b"d", b"NOOP")
    check(vanished(lines, False) == {uids[3]}, f"NOOP under QRESYNC: {lines}")
    check(not any(l.endswith(b" EXPUNGE") for l in lines), f"EXPUNGE under QRESYNC: {lines}")
    changed = fetched(lines)
    check(uids[1] in changed and "\\Flagged" in changed[uids[1]][0], f"flag at NOOP: {lines}")
    check(changed[uids[1]][1] > modseq0, f"MODSEQ did not grow: {lines}")
    raw.send(b"z LOGOUT\r\n")

    # A client back with what it knew: the vanished UID and the changed flag, nothing else.
    raw, _ = raw_login(host, imap, user, password)
    known = f"{uids[0]}:{uids[-1]}".encode()
    lines = must(
        raw, b"c", b"SELECT Resync (QRESYNC (%d %d %s))" % (validity, modseq0, known)
    )
    check(vanished(lines, True) == {uids[3]}, f"QRESYNC SELECT vanished: {lines}")
    changed = fetched(lines)
    check(set(changed) == {uids[1]}, f"QRESYNC SELECT changes: {lines}")
    modseq1 = code_value(lines, b"HIGHESTMODSEQ")
    check(modseq1 > modseq0, f"HIGHESTMODSEQ after STORE and EXPUNGE: {modseq0} {modseq1}")
    lines = must(
        raw, b"d", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq0
    )
    check(vanished(lines, True) == {uids[3]}, f"UID FETCH VANISHED: {lines}")
    check(set(fetched(lines)) == {uids[1]}, f"UID FETCH CHANGEDSINCE: {lines}")
    check(
        lines.index(next(l for l in lines if l.startswith(b"* VANISHED")))
        < lines.index(next(l for l in lines if b" FETCH " in l)),
        f"VANISHED (EARLIER) must come before the FETCH responses: {lines}",
    )

    # SEARCHRES: a saved result used by the next command; rev2 answers SEARCH by ESEARCH.
    lines = must(raw, b"e", b"UID SEARCH RETURN (SAVE) FLAGGED")
    check(not any(l.startswith(b"* ESEARCH") or l.startswith(b"* SEARCH") for l in lines), f"SAVE alone: {lines}")
    lines = must(raw, b"f", b"UID FETCH $ (FLAGS)")
    check(set(fetched(lines)) == {uids[1]}, f"FETCH $: {lines}")
    lines = must(raw, b"g", b"SEARCH ALL")
    check(any(l.startswith(b'* ESEARCH (TAG "g") ALL 1:4') for l in lines), f"rev2 SEARCH: {lines}")
    lines = must(raw, b"h", b"STATUS Resync (MESSAGES DELETED SIZE)")
    check(any(re.match(rb'\* STATUS "Resync" \(MESSAGES 4 DELETED 0 SIZE \d+\)', l) for l in lines), f"STATUS: {lines}")

    # BINARY: a literal8 APPEND with a NUL, read back byte for byte.
    message = b"Subject: binary\r\nContent-Transfer-Encoding: binary\r\n\r\nzero \x00 byte\r\n"
    raw.send(b"i APPEND Resync ~{%d+}\r\n" % len(message) + message + b"\r\n")
    lines = raw.until_tagged(b"i")
    check(lines[-1].startswith(b"i OK [APPENDUID"), f"binary APPEND: {lines}")
    new_uid = int(re.search(rb"APPENDUID \d+ (\d+)", lines[-1]).group(1))
    raw.send(b"j UID FETCH %d BINARY.PEEK[]\r\n" % new_uid)
    head = raw.line()
    found = re.search(rb"BINARY\[\] ~\{(\d+)\}$", head)
    check(found, f"BINARY literal8: {head}")
    size = int(found.group(1))
    while len(raw.buf) < size:
        raw.buf += raw.sock.recv(65536)
    body, raw.buf = raw.buf[:size], raw.buf[size:]
    check(body == message, f"BINARY[] differs: {body!r}")
    check(raw.until_tagged(b"j")[-1].startswith(b"j OK"), "BINARY FETCH")
    lines = must(raw, b"k", b"NOOP")
    raw.send(b"z LOGOUT\r\n")
    m.logout()

    remaining = [u for u in uids if u != uids[3]] + [new_uid]
    state = ",".join(map(str, remaining))
    # The last HIGHESTMODSEQ this client was told.
    raw, _ = raw_login(host, imap, user, password)
    lines = must(raw, b"c", b"SELECT Resync")
    modseq2 = code_value(lines, b"HIGHESTMODSEQ")
    raw.send(b"z LOGOUT\r\n")
    print(f"resync state {validity} {modseq2} {state}")


def resync_check(host, imap, user, password, validity, modseq, known):
    raw, _ = raw_login(host, imap, user, password)
    lines = must(
        raw, b"c", b"SELECT Resync (QRESYNC (%s %s %s))" % (validity.encode(), modseq.encode(), known.encode())
    )
    check(code_value(lines, b"UIDVALIDITY") == int(validity), f"UIDVALIDITY changed: {lines}")
    check(code_value(lines, b"HIGHESTMODSEQ") >= int(modseq), f"HIGHESTMODSEQ went down: {lines}")
    check(not vanished(lines, True), f"known UIDs vanished: {lines}")
    check(not fetched(lines), f"changes reported where there were none: {lines}")
    raw.send(b"z LOGOUT\r\n")
    print("resync unchanged")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {
        "basics": basics,
        "populate": populate,
        "snapshot": snapshot,
        "idle-for": idle_for,
        "store": store,
        "flags-of": flags_of,
        "expunge": expunge,
        "expunge-seen": expunge_seen,
        "inbox-or-refusal": inbox_or_refusal,
        "resync": resync,
        "resync-check": resync_check,
        "deliver": lambda host, smtp, user, subject: (deliver(host, smtp, user, subject), print("delivered")),
    }[command](*args)
