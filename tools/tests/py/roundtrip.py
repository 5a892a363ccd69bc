"""Byte-exact round trips through the real node with Python's smtplib and poplib.

Usage: roundtrip.py SMTP_PORT POP3_PORT PASSWORD USER [USER2 USER3]
"""
import poplib
import smtplib
import sys
import time

smtp_port, pop3_port, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
users = sys.argv[4:]
alice, bob, carol = users[0], users[1], users[2]


def pop(user, retry_in_use=False):
    for attempt in range(100):
        p = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
        p.user(user)
        try:
            p.pass_(password)
            return p
        except poplib.error_proto as e:
            p.close()
            if not (retry_in_use and b"[IN-USE]" in e.args[0]):
                raise
            time.sleep(0.02)
    raise AssertionError("maildrop stayed locked")


def retr(p, n):
    # poplib undoes dot-stuffing and splits on CRLF; rebuild the exact bytes.
    _, lines, _ = p.retr(n)
    return b"\r\n".join(lines) + b"\r\n"


def stored_body(raw):
    # Strip the Received: header the node prepends (folded over three lines).
    assert raw.startswith(b"Received: "), raw[:80]
    head, _, rest = raw.partition(b"\r\n\t")
    _, _, rest = rest.partition(b"\r\n\t")
    _, _, rest = rest.partition(b"\r\n")
    return rest


cases = {
    "leading dots": b"Subject: dots\r\n\r\n.one\r\n..two\r\n...three\r\n",
    "lone dot line": b"Subject: lone\r\n\r\nbefore\r\n.\r\nafter\r\n",
    "8-bit": b"Subject: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9 \xff\xfe\x80\r\n",
    "998-byte line": b"Subject: long\r\n\r\n" + b"x" * 998 + b"\r\n",
    "empty body": b"Subject: empty\r\n\r\n",
    "5 MB": b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 62 + b"\r\n") * 5200,
}

# Clear the mailboxes first.
for u in (alice, bob, carol):
    p = pop(u)
    for i in range(1, p.stat()[0] + 1):
        p.dele(i)
    p.quit()

with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as s:
    for name, body in cases.items():
        refused = s.sendmail("sender@example.org", [alice], body)
        assert refused == {}, (name, refused)
    refused = s.sendmail("sender@example.org", [alice, bob, carol], b"Subject: many\r\n\r\nto three\r\n")
    assert refused == {}, refused

p = pop(alice)
count, _ = p.stat()
assert count == len(cases) + 1, count
for n, (name, body) in enumerate(cases.items(), start=1):
    got = stored_body(retr(p, n))
    assert got == body, (name, len(got), len(body), got[:60], body[:60])
uidl_first = p.uidl()[1]
# TOP: headers, blank line, first line of the body.
_, top_lines, _ = p.top(1, 1)
assert top_lines[-1] == b".one" and b"Subject: dots" in top_lines, top_lines
p.quit()

# UIDL is stable across sessions.
p = pop(alice)
assert p.uidl()[1] == uidl_first
p.quit()

# Several recipients: each mailbox has the message.
for u in (bob, carol):
    p = pop(u)
    assert p.stat()[0] == 1
    assert stored_body(retr(p, 1)) == b"Subject: many\r\n\r\nto three\r\n"
    p.quit()

# DELE + RSET keeps everything.
p = pop(alice)
p.dele(1)
p.rset()
p.quit()
p = pop(alice)
assert p.stat()[0] == count
# DELE then drop the connection: nothing is deleted.
p.dele(1)
p.close()  # drop without QUIT
# The server notices the drop a moment later; until then the maildrop is still locked.
p = pop(alice, retry_in_use=True)
assert p.stat()[0] == count, "a dropped session deleted mail"
# A second session on the same maildrop is refused with [IN-USE].
try:
    pop(alice)
    raise AssertionError("second session was allowed")
except poplib.error_proto as e:
    assert b"[IN-USE]" in e.args[0], e
# DELE + QUIT deletes durably.
p.dele(1)
p.dele(2)
p.quit()
p = pop(alice)
assert p.stat()[0] == count - 2
assert p.uidl()[1] == uidl_first[2:] or [l.split()[1] for l in p.uidl()[1]] == [l.split()[1] for l in uidl_first[2:]]
p.quit()

# Wrong password.
try:
    q = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
    q.user(alice)
    q.pass_("wrong")
    raise AssertionError("wrong password accepted")
except poplib.error_proto as e:
    assert b"[AUTH]" in e.args[0], e
print("roundtrip ok")
