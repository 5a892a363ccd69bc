"""The user lifecycle and quotas through stock clients (smtplib, smtplib.LMTP, poplib, imaplib)
against the real node. Subcommands (HOST is the node's address; ports are numbers):

  fill HOST SMTP IMAP PASSWORD USER OTHER
      4 messages to USER and 1 to OTHER by SMTP; as USER over IMAP, CREATE Work and APPEND one
      message there. Prints a JSON line {"uidvalidity": INBOX's UIDVALIDITY}.
  gone HOST SMTP POP3 IMAP PASSWORD USER OTHER
      USER is refused at RCPT (550 5.1.1) and cannot log in by POP3 or IMAP; OTHER still gets
      mail and still has its message. Prints `gone ok`.
  fresh HOST IMAP PASSWORD USER OLD_UIDVALIDITY
      USER (added again) logs in to an empty INBOX with a new UIDVALIDITY and no Work folder.
      Prints `fresh ok`.
  stale HOST IMAP PASSWORD USER TRIGGER
      logs in as USER, prints `logged in`, waits (at most 120 s) until the file TRIGGER exists
      (meanwhile USER is deleted and added again), then SELECTs INBOX: the session must be
      closed with BYE, never shown the new user's mail. Prints `stale refused`.
  quota HOST SMTP LMTP POP3 IMAP PASSWORD A B C
      A has a 20 KiB storage limit (the node's default), B a 3-message limit, C the default.
      The limits are met at RCPT (SIZE), at the end of DATA (no SIZE), per recipient by LMTP,
      and at IMAP APPEND ([OVERQUOTA]); GETQUOTAROOT/GETQUOTA tell them; a POP3 DELE frees
      room. Prints `quota ok`.
  send HOST SMTP RCPT EXPECTED
      One message to RCPT; EXPECTED is 250 (taken) or the code it is refused with.
"""

import imaplib
import json
import poplib
import re
import smtplib
import socket
import sys
import time


def fail(why):
    print("FAILED:", why)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def message(tag, size):
    head = f"From: a@example.org\r\nTo: someone\r\nSubject: {tag}\r\n\r\n"
    body = (tag + " ") * (size // (len(tag) + 1) + 1)
    return (head + body[: max(0, size - len(head) - 2)] + "\r\n").encode()


def send(host, port, rcpt, data):
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        s.sendmail("sender@example.org", [rcpt], data)


def raw_reply(sock_file):
    lines = [sock_file.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(sock_file.readline())
    return lines[-1].decode().strip()


def raw_smtp_without_size(host, port, rcpt, data):
    """MAIL without SIZE, so nothing is known of the message before its end: the reply to
    the data."""
    sock = socket.create_connection((host, int(port)), timeout=30)
    f = sock.makefile("rb")
    replies = [raw_reply(f)]
    for line in [b"EHLO c", b"MAIL FROM:<a@example.org>", f"RCPT TO:<{rcpt}>".encode(), b"DATA"]:
        sock.sendall(line + b"\r\n")
        replies.append(raw_reply(f))
    check(replies[-2].startswith("250") and replies[-1].startswith("354"), replies)
    sock.sendall(data + b".\r\n")
    end = raw_reply(f)
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return end


def imap_login(host, port, user, password):
    m = imaplib.IMAP4(host, int(port))
    m.login(user, password)
    return m


def fill(host, smtp, imap, password, user, other):
    for n in range(4):
        send(host, smtp, user, message(f"inbox-{n}", 600))
    send(host, smtp, other, message("other", 600))
    m = imap_login(host, imap, user, password)
    typ, _ = m.create("Work")
    check(typ == "OK", "CREATE Work")
    typ, _ = m.append("Work", None, None, message("filed", 500))
    check(typ == "OK", "APPEND to Work")
    typ, data = m.status("INBOX", "(UIDVALIDITY MESSAGES)")
    check(typ == "OK", data)
    text = data[0].decode()
    check("MESSAGES 4" in text, text)
    validity = int(re.search(r"UIDVALIDITY (\d+)", text).group(1))
    m.logout()
    print(json.dumps({"uidvalidity": validity}))


def gone(host, smtp, pop3, imap, password, user, other):
    try:
        send(host, smtp, user, message("after", 300))
        fail("mail to a deleted user was accepted")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients[user]
        check(code == 550 and b"5.1.1" in text, (code, text))
    try:
        p = poplib.POP3(host, int(pop3), timeout=30)
        p.user(user)
        p.pass_(password)
        fail("a deleted user logged in by POP3")
    except poplib.error_proto:
        pass
    try:
        imap_login(host, imap, user, password)
        fail("a deleted user logged in by IMAP")
    except imaplib.IMAP4.error:
        pass
    send(host, smtp, other, message("other-after", 300))
    p = poplib.POP3(host, int(pop3), timeout=30)
    p.user(other)
    p.pass_(password)
    count, _ = p.stat()
    check(count >= 2, f"{other} has {count} messages, expected 2 or more")
    p.quit()
    print("gone ok")


def fresh(host, imap, password, user, old_validity):
    m = imap_login(host, imap, user, password)
    typ, data = m.status("INBOX", "(UIDVALIDITY MESSAGES)")
    text = data[0].decode()
    check("MESSAGES 0" in text, text)
    validity = int(re.search(r"UIDVALIDITY (\d+)", text).group(1))
    check(validity != int(old_validity), f"UIDVALIDITY {validity} was the deleted user's")
    typ, listed = m.list()
    names = b" ".join(listed).decode()
    check("Work" not in names and "Sent" in names, names)
    m.logout()
    print("fresh ok")


def stale(host, imap, password, user, trigger):
    import os
    m = imap_login(host, imap, user, password)
    print("logged in", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(trigger):
        check(time.monotonic() < deadline, "never triggered")
        time.sleep(0.1)
    try:
        typ, data = m.select("INBOX")
    except imaplib.IMAP4.abort as e:
        check("removed" in str(e), e)
        print("stale refused")
        return
    fail(f"a session of the deleted user was served the address's next user: {typ} {data}")


def quota(host, smtp, lmtp, pop3, imap, password, a, b, c):
    big = message("big", 6000)
    # A: 20 KiB. Three messages of about 6.2 KB (with the Received header) fit.
    for n in range(3):
        send(host, smtp, a, message(f"a-{n}", 6000))
    # The fourth: smtplib declares SIZE, so it is refused at RCPT.
    try:
        send(host, smtp, a, big)
        fail("a message past the storage quota was accepted (SIZE declared)")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients[a]
        check(code == 552 and b"5.2.2" in text, (code, text))
    # Without SIZE it is refused at the end of the data.
    end = raw_smtp_without_size(host, smtp, a, big)
    check(end.startswith("552 5.2.2"), end)
    # A small message still fits under the storage limit.
    send(host, smtp, a, message("small", 200))
    # B: three messages at most, whatever their size.
    for n in range(3):
        send(host, smtp, b, message(f"b-{n}", 100))
    try:
        send(host, smtp, b, message("b-4", 100))
        fail("a message past the message quota was accepted")
    except smtplib.SMTPRecipientsRefused as e:
        code, _ = e.recipients[b]
        check(code == 552, e.recipients)
    # LMTP: the full mailboxes are refused alone; C gets its copy.
    with smtplib.LMTP(host, int(lmtp), timeout=30) as l:
        refused = l.sendmail("sender@example.org", [a, b, c], big)
        check(set(refused) == {a, b}, refused)
        check(all(code == 552 for code, _ in refused.values()), refused)
    # IMAP: the quota told, APPEND refused.
    m = imap_login(host, imap, a, password)
    check(b"QUOTA=RES-STORAGE" in m.capability()[1][0], m.capabilities)
    typ, data = m.getquotaroot("INBOX")
    check(typ == "OK", data)
    told = b" ".join(x for part in data for x in part).decode()
    # imaplib gives the responses without their names: `"INBOX" ""`, `"" (STORAGE …)`.
    check(told.startswith('"INBOX" ""'), told)
    used, limit = map(int, re.search(r"STORAGE (\d+) (\d+)", told).groups())
    check(limit == 20 and 18 <= used <= 20, told)
    typ, data = m.append("INBOX", None, None, big)
    check(typ == "NO" and b"OVERQUOTA" in data[0], (typ, data))
    m.logout()
    m = imap_login(host, imap, b, password)
    typ, data = m.getquota('""')
    check(typ == "OK" and b"MESSAGE 3 3" in data[0], data)
    check(b"STORAGE" not in data[0], data)
    m.logout()
    # A POP3 DELE frees room: after the usage is counted again, the big message fits.
    p = poplib.POP3(host, int(pop3), timeout=30)
    p.user(a)
    p.pass_(password)
    p.dele(1)
    p.dele(2)
    p.quit()
    time.sleep(1.5)
    send(host, smtp, a, big)
    print("quota ok")


def send_expecting(host, smtp, rcpt, expected):
    """One message to RCPT: prints `sent 250` or `refused CODE`, and fails unless it is
    EXPECTED's."""
    try:
        send(host, smtp, rcpt, message("one", 300))
        said = "sent 250"
    except smtplib.SMTPRecipientsRefused as e:
        said = f"refused {e.recipients[rcpt][0]}"
    print(said)
    check(said.endswith(expected), f"expected {expected}, got {said}")


def main():
    what, args = sys.argv[1], sys.argv[2:]
    {
        "fill": fill,
        "gone": gone,
        "fresh": fresh,
        "quota": quota,
        "stale": stale,
        "send": send_expecting,
    }[what](*args)


if __name__ == "__main__":
    main()
