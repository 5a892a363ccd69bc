"""Checks a maildrop against a list of acknowledged ids: every one present, intact, once.

Usage: verify.py POP3_PORT USER PASSWORD ACKED_FILE
"""
import hashlib
import poplib
import sys

port, user, password, acked_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
acked = {l.split()[1] for l in open(acked_file) if l.startswith("ACK ")}
p = poplib.POP3("127.0.0.1", port, timeout=60)
p.user(user)
p.pass_(password)
count, _ = p.stat()
seen = {}
corrupt = []
for n in range(1, count + 1):
    _, lines, _ = p.retr(n)
    headers = {}
    i = 0
    while lines[i]:
        if b": " in lines[i]:
            k, v = lines[i].split(b": ", 1)
            headers[k.decode()] = v.decode()
        i += 1
    body = b"\r\n".join(lines[i + 1:])
    ident = headers.get("X-Load-Id")
    if hashlib.sha256(body).hexdigest() != headers.get("X-Checksum"):
        corrupt.append(ident)
    seen[ident] = seen.get(ident, 0) + 1
p.quit()
lost = acked - set(seen)
dupes = [i for i, c in seen.items() if c > 1]
print(f"acked {len(acked)} stored {count} lost {len(lost)} corrupt {len(corrupt)} duplicated {len(dupes)}")
assert not lost, sorted(lost)[:10]
assert not corrupt, corrupt[:10]
assert not dupes, dupes[:10]
