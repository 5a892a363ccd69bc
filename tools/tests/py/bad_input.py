"""Hostile and broken clients against the real node; each gets the RFC's reply or a clean
close, nothing is stored that should not be, and the node keeps serving everyone else.

Usage: bad_input.py SMTP_PORT POP3_PORT USER PASSWORD
Prints one line per case: `case | what it got`, used for the table in docs/bad-input.md.
"""
import poplib
import smtplib
import socket
import sys
import time

smtp_port, pop3_port, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
results = []


def raw(port, payload, read_for=1.0, chunks=None):
    """Sends bytes on a raw socket and returns what came back (until close or read_for seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(read_for)
    got = b""
    try:
        got += s.recv(4096)
        for piece in chunks or [payload]:
            s.sendall(piece)
        end = time.time() + read_for
        while time.time() < end:
            data = s.recv(65536)
            if not data:
                break
            got += data
    except (socket.timeout, ConnectionResetError, BrokenPipeError):
        pass
    s.close()
    return got


def codes(reply):
    return [l[:3].decode(errors="replace") for l in reply.split(b"\r\n") if len(l) > 3 and l[3:4] == b" "]


def mailbox_count():
    p = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
    p.user(user)
    p.pass_(password)
    n = p.stat()[0]
    p.quit()
    return n


def healthy():
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250


def case(name, got, expect):
    ok = expect(got)
    results.append((name, got, ok))
    healthy()
    assert ok, (name, got)


def cut_after(transfer):
    """Sends an envelope for `user` and the start of a message, then drops the connection."""
    s = socket.create_connection(("127.0.0.1", smtp_port), timeout=5)
    s.recv(4096)
    s.sendall(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<" + user.encode() + b">\r\n" + transfer)
    time.sleep(0.3)
    s.close()
    time.sleep(0.3)


before = mailbox_count()

got = codes(raw(smtp_port, b"\x00\x01\x02garbage\xff\xfe\r\nHELO x\r\nQUIT\r\n"))
case("garbage and NUL bytes", got, lambda c: c[:2] == ["220", "500"] and c[-1] == "221")

got = codes(raw(smtp_port, b"HELO " + b"a" * 100_000 + b"\r\nNOOP\r\nQUIT\r\n"))
case("a 100 KB command line", got, lambda c: "500" in c and c[-2:] == ["250", "221"])

got = codes(raw(smtp_port, b"RCPT TO:<" + user.encode() + b">\r\nMAIL FROM:<a@b>\r\nQUIT\r\n"))
case("commands out of order (RCPT/MAIL before HELO)", got, lambda c: c == ["220", "503", "503", "221"])

got = codes(raw(smtp_port, b"EHLO x\r\nMAIL FROM:<a@b>\r\nDATA\r\nQUIT\r\n"))
case("DATA before RCPT", got, lambda c: c[-2:] == ["554", "221"])

got = codes(raw(smtp_port, b"EHLO x\r\nMAIL FROM:<a@b> SIZE=999999999999\r\nQUIT\r\n"))
case("SIZE over the limit at MAIL", got, lambda c: c[-2:] == ["552", "221"])

big = b"x" * 998 + b"\r\n"
payload = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<" + user.encode() + b">\r\nDATA\r\n" + big * 40_000 + b".\r\nQUIT\r\n"
got = codes(raw(smtp_port, payload, read_for=5.0))
case("a message over the size limit during DATA (40 MB)", got, lambda c: c[-2:] == ["552", "221"])

rcpts = b"".join(b"RCPT TO:<r%d@localhost>\r\n" % n for n in range(1, 1001))
got = codes(raw(smtp_port, b"EHLO x\r\nMAIL FROM:<a@b>\r\n" + rcpts + b"RSET\r\nQUIT\r\n", read_for=5.0))
case("1,000 RCPTs", got, lambda c: c.count("250") >= 100 and c.count("452") == 900 and c[-1] == "221")

got = codes(raw(smtp_port, b"EHLO x\r\nMAIL FROM:<not an address>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<@@>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<nobody@localhost>\r\nQUIT\r\n"))
case("invalid and foreign addresses", got, lambda c: c[2:] == ["501", "250", "501", "550", "550", "221"])

got = codes(raw(smtp_port, b"EHLO x\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\nQUIT\r\n"))
case("BDAT before MAIL (its chunk is read, not run)", got, lambda c: c == ["220", "250", "503", "250", "221"])

got = codes(raw(smtp_port, b"EHLO x\r\nMAIL FROM:<a@b>\r\nBDAT lots\r\nNOOP\r\n"))
case("BDAT with an unreadable size", got, lambda c: c == ["220", "250", "250", "501", "421"])

cut_after(b"BDAT 100 LAST\r\nSubject: cut\r\n\r\nhalf")
case("a connection cut mid-BDAT", [f"{mailbox_count() - before} stored"], lambda c: c == ["0 stored"])

# A client that stalls mid-command: others are served meanwhile; the stalled one is not served.
stalled = socket.create_connection(("127.0.0.1", smtp_port), timeout=5)
stalled.recv(4096)
stalled.sendall(b"EHLO slow")
healthy()
for _ in range(3):
    stalled.sendall(b"w")
    healthy()
stalled.close()
case("a client that stalls (slowloris)", ["others served while it stalls"], lambda c: True)

cut_after(b"DATA\r\nSubject: cut\r\n\r\nhalf a mess")
case("a connection cut mid-DATA", [f"{mailbox_count() - before} stored"], lambda c: c == ["0 stored"])

p = poplib.POP3("127.0.0.1", pop3_port, timeout=10)
p.user(user)
try:
    p.pass_("wrong password")
    got = ["accepted"]
except poplib.error_proto as e:
    got = [e.args[0].decode()]
p.close()
case("wrong password (POP3)", got, lambda c: c[0].startswith("-ERR [AUTH]"))

got = raw(pop3_port, b"STAT\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n").decode(errors="replace").splitlines()
case("POP3 commands before authentication", got, lambda c: sum(l.startswith("-ERR [AUTH]") for l in c) == 3 and c[-1].startswith("+OK"))

got = raw(pop3_port, b"USER " + b"u" * 100_000 + b"\r\nQUIT\r\n").decode(errors="replace").splitlines()
case("a 100 KB POP3 line", got, lambda c: c[1].startswith("-ERR") and c[-1].startswith("+OK"))

assert mailbox_count() == before, "bad input stored mail"
for name, got, ok in results:
    shown = " ".join(got) if isinstance(got, list) else str(got)
    print(f"| {name} | {shown[:120]} |")
print("bad input ok")
