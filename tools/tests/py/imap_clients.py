"""Real IMAP clients against the node, driven non-interactively, checked with imaplib.

  CLIENT HOST IMAP SMTP USER PASSWORD WORKDIR

CLIENT is one of:
  mbsync      a folder tree synced both ways (isync), then again with nothing to do
  offlineimap the same with offlineimap3
  fetchmail   INBOX fetched over IMAP into a file, byte-exact, and marked seen
  neomutt     INBOX opened in a tmux pane, a message opened and read
  imapclient  the PyPI library: APPEND/FETCH byte-exact, flags, SEARCH, IDLE, MOVE
Each prints `CLIENT ok` when what it checks holds.
"""

import imaplib
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time


def fail(why):
    print("FAILED:", why)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def run(args, timeout=120, **kw):
    out = subprocess.run(args, capture_output=True, timeout=timeout, **kw)
    text = out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
    check(out.returncode == 0, f"{args[0]} exited {out.returncode}:\n{text}")
    return text


def message(subject, body):
    return (
        f"From: tester@example.org\r\nTo: someone@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.org>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


def deliver(host, smtp, user, subject, body):
    data = message(subject, body)
    with smtplib.SMTP(host, int(smtp)) as s:
        s.sendmail("tester@example.org", [user], data)
    return data


def server_view(host, imap, user, password):
    """{folder: {subject: (sorted flags, body)}} as the server has it."""
    m = imaplib.IMAP4(host, int(imap))
    m.login(user, password)
    view = {}
    for line in m.list()[1]:
        name = line.decode().rsplit(' "/" ', 1)[1].strip('"')
        typ, data = m.select(name, readonly=True)
        check(typ == "OK", f"EXAMINE {name}")
        folder = {}
        if int(data[0]) > 0:
            typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[])")
            for part in data:
                if not isinstance(part, tuple):
                    continue
                flags = sorted(re.search(rb"FLAGS \(([^)]*)\)", part[0]).group(1).decode().split())
                subject = re.search(rb"Subject: ([^\r\n]*)", part[1])
                folder[subject.group(1).decode() if subject else "?"] = (flags, part[1])
        view[name] = folder
    m.logout()
    return view


def plain(data):
    """A message as compared: LF line ends, without the tracking header mbsync adds."""
    return re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", data.replace(b"\r\n", b"\n"))


def maildir_files(root):
    found = {}
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) not in ("cur", "new"):
            continue
        for f in files:
            path = os.path.join(dirpath, f)
            data = open(path, "rb").read()
            subject = re.search(rb"Subject: ([^\r\n]*)", data)
            folder = os.path.relpath(os.path.dirname(dirpath), root)
            found.setdefault(folder, {})[subject.group(1).decode() if subject else "?"] = (path, data)
    return found


def two_way_sync(name, sync, host, imap, smtp, user, password, root):
    """The checks mbsync and offlineimap share; `sync()` runs the client once."""
    name = f"{name}{os.getpid()}"
    sent = deliver(host, smtp, user, f"{name}-from-smtp", "delivered before the first sync")
    sync()
    local = maildir_files(root)
    check("INBOX" in local and f"{name}-from-smtp" in local["INBOX"], f"first sync: {sorted(local)}")
    path, data = local["INBOX"][f"{name}-from-smtp"]
    check(plain(data).endswith(plain(sent)), f"synced message differs: {data!r}")
    for special in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        check(os.path.isdir(os.path.join(root, special)), f"{special} not synced")

    # Local changes go up: a flag, a new message in a new folder, one in INBOX.
    base = os.path.basename(path)
    head, flags = base.split(":2,", 1) if ":2," in base else (base, "")
    cur = os.path.join(os.path.dirname(os.path.dirname(path)), "cur")
    os.rename(path, os.path.join(cur, head + ":2," + "".join(sorted(set(flags + "F")))))
    # A folder tree: its parent is a folder too (a Maildir), as the clients make it.
    for folder in ("Projects", f"Projects/{name}"):
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, folder, sub), exist_ok=True)
    for folder, subject in ((f"Projects/{name}", f"{name}-local-folder"), ("INBOX", f"{name}-local-inbox")):
        d = os.path.join(root, folder)
        with open(os.path.join(d, "cur", f"{int(time.time())}.{subject}.host:2,S"), "wb") as f:
            f.write(message(subject, f"written locally by {name}").replace(b"\r\n", b"\n"))
    sync()
    view = server_view(host, imap, user, password)
    check("Projects" in view and f"Projects/{name}" in view, f"local folders not created on the server: {sorted(view)}")
    check(f"{name}-local-folder" in view[f"Projects/{name}"], "local message not uploaded")
    flags, body = view[f"Projects/{name}"][f"{name}-local-folder"]
    check("\\Seen" in flags, f"uploaded flags: {flags}")
    check(plain(body) == plain(message(f"{name}-local-folder", f"written locally by {name}")), f"uploaded message differs: {body!r}")
    check(f"{name}-local-inbox" in view["INBOX"], "local INBOX message not uploaded")
    check("\\Flagged" in view["INBOX"][f"{name}-from-smtp"][0], "local flag not uploaded")

    # A server-side change comes down: a flag and an expunge.
    m = imaplib.IMAP4(host, int(imap))
    m.login(user, password)
    m.select("INBOX")
    typ, data = m.search(None, "SUBJECT", f'"{name}-local-inbox"')
    check(typ == "OK" and data[0], f"SEARCH: {data}")
    m.store(data[0].split()[0].decode(), "+FLAGS", "(\\Deleted)")
    m.expunge()
    typ, data = m.search(None, "SUBJECT", f'"{name}-from-smtp"')
    m.store(data[0].split()[0].decode(), "+FLAGS", "(\\Answered)")
    m.logout()
    sync()
    local = maildir_files(root)
    check(f"{name}-local-inbox" not in local["INBOX"], "server expunge not synced down")
    path, _ = local["INBOX"][f"{name}-from-smtp"]
    check(re.search(r":2,[A-Z]*R", path), f"server flag not synced down: {path}")

    # Again, with nothing to do: nothing changes on either side.
    before = server_view(host, imap, user, password)
    before_local = {k: sorted(v) for k, v in maildir_files(root).items()}
    sync()
    check(server_view(host, imap, user, password) == before, "a sync with nothing to do changed the server")
    check({k: sorted(v) for k, v in maildir_files(root).items()} == before_local, "a sync with nothing to do changed the Maildir")


def mbsync(host, imap, smtp, user, password, work):
    root = os.path.join(work, "mbsync")
    os.makedirs(root, exist_ok=True)
    conf = os.path.join(work, "mbsyncrc")
    with open(conf, "w") as f:
        f.write(
            f"IMAPAccount porcupine\nHost {host}\nPort {imap}\nUser {user}\nPass \"{password}\"\n"
            f"SSLType None\nAuthMechs LOGIN\n\nIMAPStore remote\nAccount porcupine\n\n"
            f"MaildirStore local\nPath {root}/\nInbox {root}/INBOX\nSubFolders Verbatim\n\n"
            f"Channel all\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\n"
            f"SyncState *\n"
        )
    two_way_sync("mbsync", lambda: run(["mbsync", "-c", conf, "all"]), host, imap, smtp, user, password, root)
    print("mbsync ok")


def offlineimap(host, imap, smtp, user, password, work):
    root = os.path.join(work, "offlineimap")
    os.makedirs(root, exist_ok=True)
    conf = os.path.join(work, "offlineimaprc")
    with open(conf, "w") as f:
        f.write(
            f"[general]\naccounts = porcupine\nmetadata = {work}/offlineimap-meta\n\n"
            f"[Account porcupine]\nlocalrepository = local\nremoterepository = remote\n\n"
            f"[Repository local]\ntype = Maildir\nlocalfolders = {root}\nsep = /\n\n"
            f"[Repository remote]\ntype = IMAP\nremotehost = {host}\nremoteport = {imap}\n"
            f"remoteuser = {user}\nremotepass = {password}\nssl = no\nstarttls = no\n"
            f"createfolders = True\n"
        )
    two_way_sync(
        "offlineimap",
        lambda: run(["offlineimap", "-c", conf, "-o", "-u", "basic"], timeout=60),
        host, imap, smtp, user, password, root,
    )
    print("offlineimap ok")


def fetchmail(host, imap, smtp, user, password, work):
    sent = [deliver(host, smtp, user, f"fetchmail-{i}", f"body {i} " + "x" * (i * 500)) for i in range(3)]
    out = os.path.join(work, "fetched")
    rc = os.path.join(work, "fetchmailrc")
    with open(rc, "w") as f:
        f.write(
            f'poll {host} service {imap} protocol IMAP auth password user "{user}" '
            f'password "{password}" keep sslproto "" mda "/bin/sh -c \'cat >> {out}\'"\n'
        )
    os.chmod(rc, 0o600)
    run(["fetchmail", "-f", rc, "--nosyslog", "-s", "--nodetach", "--idfile", os.path.join(work, "fetchids")],
        env={**os.environ, "HOME": work})
    data = open(out, "rb").read().replace(b"\r\n", b"\n")
    for m in sent:
        check(m.replace(b"\r\n", b"\n") in data, "a message fetched by fetchmail differs")
    view = server_view(host, imap, user, password)
    for i in range(3):
        check("\\Seen" in view["INBOX"][f"fetchmail-{i}"][0], "fetchmail did not mark the message seen")
    print("fetchmail ok")


def neomutt(host, imap, smtp, user, password, work):
    deliver(host, smtp, user, "neomutt-check", "The body neomutt must show.")
    rc = os.path.join(work, "neomuttrc")
    with open(rc, "w") as f:
        f.write(
            f'set imap_user = "{user}"\nset imap_pass = "{password}"\n'
            f'set folder = "imap://{host}:{imap}/"\nset spoolfile = "+INBOX"\n'
            f"set ssl_starttls = no\nset ssl_force_tls = no\nset header_cache = \"\"\n"
            f"set message_cachedir = \"\"\nset mail_check = 5\nset sort = date\n"
            f"set pager_stop = yes\nset sidebar_visible = no\nset use_from = no\n"
        )
    session = f"porcupine-neomutt-{os.getpid()}"
    run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50",
         f"env HOME={work} TERM=xterm neomutt -n -F {rc}"])
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True).stdout.decode(errors="replace")

        def wait_for(text, seconds=20):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                shown = screen()
                if text in shown:
                    return shown
                time.sleep(0.2)
            fail(f"neomutt never showed {text!r}:\n{screen()}")

        wait_for("neomutt-check")
        run(["tmux", "send-keys", "-t", session, "/", "neomutt-check", "Enter"])
        time.sleep(0.5)
        run(["tmux", "send-keys", "-t", session, "Enter"])
        wait_for("The body neomutt must show.")
        run(["tmux", "send-keys", "-t", session, "q"])
        run(["tmux", "send-keys", "-t", session, "q"])
        time.sleep(1)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    view = server_view(host, imap, user, password)
    check("\\Seen" in view["INBOX"]["neomutt-check"][0], "the message neomutt read is not \\Seen")
    print("neomutt ok")


def imapclient_checks(host, imap, smtp, user, password, work):
    from imapclient import IMAPClient

    c = IMAPClient(host, port=int(imap), ssl=False, timeout=20)
    c.login(user, password)
    c.select_folder("INBOX")
    data = message("imapclient-append", "bytes \u2713 kept")
    data = data + bytes(range(1, 9)) + b"\r\n"
    answer = c.append("INBOX", data, flags=["$Important"])
    found = re.search(rb"APPENDUID \d+ (\d+)", answer)
    check(found, f"no APPENDUID: {answer!r}")
    uid = int(found.group(1))
    got = c.fetch([uid], ["BODY.PEEK[]", "FLAGS"])[uid]
    check(got[b"BODY[]"] == data, "imapclient: FETCH BODY[] differs from APPEND")
    check(b"$Important" in got[b"FLAGS"], f"imapclient flags: {got[b'FLAGS']}")
    c.add_flags([uid], [b"\\Seen"])
    check(c.search(["SEEN"]) == [uid], f"SEARCH SEEN: {c.search(['SEEN'])}")
    check(c.search(["SUBJECT", "imapclient-append"]) == [uid], "SEARCH SUBJECT")
    c.idle()
    deliver(host, smtp, user, "imapclient-idle", "woke the idler")
    responses = c.idle_check(timeout=10)
    c.idle_done()
    check(any(r[1] == b"EXISTS" for r in responses), f"IDLE responses: {responses}")
    c.create_folder("Kept")
    c.move([uid], "Kept")
    check(c.folder_status("Kept", ["MESSAGES"])[b"MESSAGES"] == 1, "MOVE to Kept")
    c.logout()
    print("imapclient ok")


if __name__ == "__main__":
    client, host, imap, smtp, user, password, work = sys.argv[1:8]
    os.makedirs(work, exist_ok=True)
    {
        "mbsync": mbsync,
        "offlineimap": offlineimap,
        "fetchmail": fetchmail,
        "neomutt": neomutt,
        "imapclient": imapclient_checks,
    }[client](
        host, imap, smtp, user, password, work
    )
