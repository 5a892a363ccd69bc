"""Abuse limits of a node, as a misbehaving client would meet them.

held HOST SMTP N            opens N SMTP connections and keeps them; the one after them must
                            be refused 421 4.7.0 "from your address"; prints "held ok"
rate HOST SMTP N            opens and closes N connections as fast as it can; prints
                            "rate admitted A refused R"
logins HOST POP3 USER GOOD  three wrong passwords, then the good one: each failure answered,
                            later ones more slowly; prints "logins ok" and the waits
stall HOST POP3 USER PW     pipelines RETRs of a large message and never reads: the node must
                            drop the session; prints "stall dropped after N bytes"
big HOST SMTP USER BYTES    a message of BYTES: prints the reply code of the end of DATA, then
                            that of a small message right after on the same connection
"""
import poplib
import smtplib
import socket
import sys
import time


def banner(sock):
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(512)
        if not chunk:
            break
        data += chunk
    return data


def held(host, port, n):
    conns = [socket.create_connection((host, int(port)), timeout=10) for _ in range(int(n))]
    for c in conns:
        line = banner(c)
        assert line.startswith(b"220 "), line
    extra = socket.create_connection((host, int(port)), timeout=10)
    line = banner(extra)
    assert line.startswith(b"421 4.7.0") and b"from your address" in line, line
    for c in conns:
        c.sendall(b"QUIT\r\n")
        c.close()
    print("held ok")


def rate(host, port, n):
    admitted = refused = 0
    for _ in range(int(n)):
        c = socket.create_connection((host, int(port)), timeout=10)
        line = banner(c)
        if line.startswith(b"220 "):
            admitted += 1
            c.sendall(b"QUIT\r\n")
        elif line.startswith(b"421 4.7.0"):
            refused += 1
        c.close()
    print(f"rate admitted {admitted} refused {refused}")


def logins(host, port, user, good):
    waits = []
    for attempt in range(3):
        p = poplib.POP3(host, int(port), timeout=60)
        p.user(user)
        began = time.monotonic()
        try:
            p.pass_("wrong-" + str(attempt))
        except poplib.error_proto as e:
            assert b"[AUTH]" in e.args[0], e
        else:
            raise AssertionError("a wrong password was accepted")
        waits.append(time.monotonic() - began)
        p.quit()
    assert waits[2] > waits[0] + 0.5, waits
    p = poplib.POP3(host, int(port), timeout=60)
    p.user(user)
    p.pass_(good)
    p.quit()
    print("logins ok", " ".join(f"{w:.2f}" for w in waits))


def stall(host, port, user, password):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect((host, int(port)))
    banner(s)
    s.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
    time.sleep(0.5)
    s.sendall(b"RETR 1\r\n" * 40)
    # Never read while the node writes; then see how much it sent before it gave up.
    time.sleep(6)
    received = 0
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            received += len(chunk)
    except (ConnectionResetError, socket.timeout) as e:
        if isinstance(e, socket.timeout):
            raise AssertionError(f"the node kept the stalled session ({received} bytes)")
    print(f"stall dropped after {received} bytes")


def big(host, port, user, size):
    s = smtplib.SMTP(host, int(port), timeout=60)
    s.ehlo("abuse")
    body = ("x" * 76 + "\r\n") * (int(size) // 78 + 1)
    code, _ = s.docmd("MAIL FROM:<a@example.org>")
    code, _ = s.docmd(f"RCPT TO:<{user}>")
    code, _ = s.docmd("DATA")
    assert code == 354, code
    s.send(("Subject: big\r\n\r\n" + body + ".\r\n").encode())
    code, text = s.getreply()
    small = s.sendmail("a@example.org", [user], "Subject: small\r\n\r\nsmall\r\n")
    print(f"big {code} {text.decode()} then small {'250' if small == {} else small}")
    s.quit()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"held": held, "rate": rate, "logins": logins, "stall": stall, "big": big}[command](*args)
