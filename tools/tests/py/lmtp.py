"""LMTP (RFC 2033) through the real node: a raw socket and Python's smtplib.LMTP, then a real
Postfix delivering to it with `virtual_transport = lmtp:inet:...`. Mail is read back by POP3
and IMAP, byte for byte. Subcommands:

  direct HOST LMTP POP3 IMAP PASSWORD USER1 USER2
      LHLO/MAIL/RCPT/DATA on a raw socket: an unknown recipient refused alone at RCPT, one
      reply per accepted recipient after the data, pipelined, and BDAT LAST; smtplib.LMTP;
      every stored copy read back by POP3 and IMAP. Prints `direct ok`.
  postfix HOST LMTP POP3 IMAP PASSWORD USER1 USER2 WORKDIR
      starts a private Postfix (its own config, queue and log under WORKDIR) whose virtual
      transport is the node's LMTP, sends it one message for USER1, USER2 and an unknown
      address by SMTP, waits until its queue is empty, and checks both copies by POP3 and IMAP
      and the unknown address bounced by the node's 550. Prints `postfix ok`.
"""

import imaplib
import os
import poplib
import pwd
import re
import smtplib
import socket
import subprocess
import sys
import time


def fail(why):
    print("FAILED:", why)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


class Raw:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        """One (possibly multi-line) reply: its lines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines


def pop3_messages(host, port, user, password):
    p = poplib.POP3(host, int(port), timeout=30)
    p.user(user)
    p.pass_(password)
    out = []
    for n in range(1, p.stat()[0] + 1):
        _, lines, _ = p.retr(n)
        out.append(b"\r\n".join(lines) + b"\r\n")
    p.quit()
    return out


def imap_messages(host, port, user, password):
    m = imaplib.IMAP4(host, int(port))
    m.login(user, password)
    typ, data = m.select("INBOX", readonly=True)
    check(typ == "OK", f"SELECT: {data}")
    out = []
    if int(data[0]) > 0:
        typ, data = m.fetch("1:*", "(BODY.PEEK[])")
        check(typ == "OK", f"FETCH: {data}")
        out = [part[1] for part in data if isinstance(part, tuple)]
    m.logout()
    return out


def read_back(host, pop3, imap, password, user, bodies):
    """Both protocols return the same messages, each ending with one of `bodies`, in order."""
    by_pop3 = pop3_messages(host, pop3, user, password)
    by_imap = imap_messages(host, imap, user, password)
    check(by_pop3 == by_imap, f"POP3 and IMAP differ for {user}")
    check(len(by_pop3) == len(bodies), f"{user} has {len(by_pop3)} messages, expected {len(bodies)}")
    for stored, body in zip(by_pop3, bodies):
        check(stored.startswith(b"Received: "), f"no trace header: {stored[:80]!r}")
        check(b" with LMTP id " in stored.split(b"\r\n\r\n", 1)[0], f"trace header: {stored[:200]!r}")
        check(stored.endswith(body), f"{user}: stored bytes differ from those sent: {stored[-200:]!r}")
    return by_pop3


def direct(host, lmtp, pop3, imap, password, user1, user2):
    raw = Raw(host, lmtp)
    greeting = raw.reply()
    check(greeting[0].startswith(b"220 ") and b"LMTP" in greeting[0], f"greeting {greeting}")
    raw.send(b"EHLO client\r\n")
    check(raw.reply()[0].startswith(b"500"), "EHLO must be refused in LMTP")
    raw.send(b"LHLO client\r\n")
    lhlo = raw.reply()
    for ext in (b"PIPELINING", b"SIZE", b"8BITMIME", b"CHUNKING", b"SMTPUTF8", b"ENHANCEDSTATUSCODES"):
        check(any(ext in l for l in lhlo), f"LHLO lacks {ext}: {lhlo}")
    # Pipelined: the unknown address is refused alone; after the data one reply per accepted
    # recipient, in RCPT order.
    first = b"Subject: lmtp one\r\nFrom: a@example.org\r\n\r\n.dot-stuffed line\r\n\xc3\xa9\r\n"
    stuffed = first.replace(b"\r\n.", b"\r\n..")
    raw.send(
        b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n"
        + b"RCPT TO:<" + user1.encode() + b">\r\n"
        + b"RCPT TO:<nobody-here@localhost>\r\n"
        + b"RCPT TO:<" + user2.encode() + b">\r\n"
        + b"DATA\r\n"
    )
    check(raw.reply()[0].startswith(b"250"), "MAIL")
    check(raw.reply()[0].startswith(b"250"), "RCPT user1")
    refused = raw.reply()[0]
    check(refused.startswith(b"550 5.1.1"), f"unknown RCPT: {refused}")
    check(raw.reply()[0].startswith(b"250"), "RCPT user2")
    check(raw.reply()[0].startswith(b"354"), "DATA")
    raw.send(stuffed + b".\r\n")
    replies = [raw.reply()[0] for _ in range(2)]
    check(all(r.startswith(b"250 2.0.0") for r in replies), f"per-recipient replies: {replies}")
    check(user1.encode() in replies[0] and user2.encode() in replies[1], f"reply order: {replies}")
    # BDAT LAST: also one reply per recipient.
    second = b"Subject: lmtp two\r\n\r\nchunked\r\n"
    raw.send(
        b"MAIL FROM:<>\r\nRCPT TO:<" + user1.encode() + b">\r\nRCPT TO:<" + user2.encode() + b">\r\n"
        + b"BDAT %d LAST\r\n" % len(second) + second
    )
    codes = [raw.reply()[0][:3] for _ in range(5)]
    check(codes == [b"250"] * 5, f"BDAT LAST: {codes}")
    raw.send(b"QUIT\r\n")
    check(raw.reply()[0].startswith(b"221"), "QUIT")

    # The stock client: smtplib's LMTP class (one recipient, so one reply).
    third = b"Subject: lmtp three\r\n\r\nfrom smtplib.LMTP\r\n"
    with smtplib.LMTP(host, int(lmtp)) as client:
        refused = client.sendmail("c@example.org", [user2], third)
        check(refused == {}, f"smtplib.LMTP refused {refused}")
    read_back(host, pop3, imap, password, user1, [first, second])
    read_back(host, pop3, imap, password, user2, [first, second, third])
    print("direct ok")


MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postfix(host, lmtp, pop3, imap, password, user1, user2, workdir):
    base = os.path.abspath(workdir)
    config, queue, data = (os.path.join(base, d) for d in ("etc", "queue", "data"))
    for d in (config, queue, data):
        os.makedirs(d, exist_ok=True)
    log = os.path.join(base, "postfix.log")
    smtp_port = free_port()
    with open(os.path.join(config, "main.cf"), "w") as f:
        f.write(
            "compatibility_level = 3.6\n"
            f"queue_directory = {queue}\n"
            f"data_directory = {data}\n"
            "mail_owner = postfix\n"
            "setgid_group = postdrop\n"
            "inet_interfaces = 127.0.0.1\n"
            "inet_protocols = ipv4\n"
            "myhostname = postfix.lmtp.test\n"
            "mydestination =\n"
            "mynetworks = 127.0.0.0/8\n"
            "alias_maps =\n"
            "alias_database =\n"
            "biff = no\n"
            f"maillog_file = {log}\n"
            # Postfix writes its log only under these prefixes.
            f"maillog_file_prefixes = {base}\n"
            "append_dot_mydomain = no\n"
            "virtual_mailbox_domains = localhost\n"
            "virtual_mailbox_maps =\n"
            # The store knows its users: Postfix passes every address on, the store refuses
            # the unknown ones at RCPT, and Postfix bounces those alone.
            "smtpd_reject_unlisted_recipient = no\n"
            f"virtual_transport = lmtp:inet:{host}:{lmtp}\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
        )
    with open(os.path.join(config, "master.cf"), "w") as f:
        f.write(f"127.0.0.1:{smtp_port} inet n - n - - smtpd\n" + MASTER_SERVICES)
    postfix_user = pwd.getpwnam("postfix")
    os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
    started = subprocess.run(["postfix", "-c", config, "start"], capture_output=True, text=True)
    check(
        started.returncode == 0,
        f"postfix start: {started.stdout}{started.stderr}"
        + (open(log, errors="replace").read() if os.path.exists(log) else ""),
    )
    try:
        message = (
            b"Subject: through Postfix\r\nFrom: someone@example.org\r\n"
            b"Message-ID: <lmtp-postfix@example.org>\r\nDate: Mon, 7 Dec 2026 12:00:00 +0000\r\n"
            b"\r\nDelivered by Postfix over LMTP.\r\n\xc3\xa9t\xc3\xa9\r\n"
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", smtp_port, timeout=30)
                break
            except OSError:
                check(time.monotonic() < deadline, "Postfix's smtpd did not listen")
                time.sleep(0.2)
        with client:
            # The null sender: the bounce for the unknown address goes nowhere.
            refused = client.sendmail("", [user1, user2, "nobody-here@localhost"], message)
            check(refused == {}, f"Postfix refused {refused}")
        deadline = time.monotonic() + 60
        while True:
            text = open(log, errors="replace").read() if os.path.exists(log) else ""
            done = [l for l in text.splitlines() if "status=" in l and "lmtp" in l]
            if len(done) >= 3:
                break
            check(time.monotonic() < deadline, f"Postfix did not deliver within 60 s; log:\n{text}")
            time.sleep(0.2)
        sent = [l for l in done if "status=sent" in l]
        bounced = [l for l in done if "status=bounced" in l]
        check(len(sent) == 2, f"two recipients delivered over LMTP: {done}")
        check(
            len(bounced) == 1 and "nobody-here@localhost" in bounced[0] and "550 5.1.1" in bounced[0],
            f"the unknown address bounced alone by the node's 550: {done}",
        )
        for user in (user1, user2):
            stored = read_back(host, pop3, imap, password, user, [message])[0]
            head = stored.split(b"\r\n\r\n", 1)[0]
            check(b"by postfix.lmtp.test (Postfix)" in head, f"Postfix's own trace header: {head!r}")
    finally:
        subprocess.run(["postfix", "-c", config, "stop"], capture_output=True)
    print("postfix ok")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"direct": direct, "postfix": postfix}[command](*args)
