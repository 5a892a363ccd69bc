"""IMAP sessions through node failures (tools/tests/imap_chaos.rs kills and restarts nodes).

  run HOSTS USERS PASSWORD SECONDS LOG
      HOSTS is ip:port,… (IMAP). One worker per user appends, flags and expunges in INBOX
      through a random node, reconnecting elsewhere when a node dies, and writes to LOG what
      was answered OK (and what was sent but never answered: it may or may not have happened).
  check HOSTS USERS PASSWORD LOG
      Through every node: each APPEND answered OK is there under the UID it was given (unless
      its expunge was answered OK), no UID names another message, no message is shown twice,
      every flag change answered OK holds, nothing whose expunge was answered OK is back, and
      every node shows the same mailbox. Prints `chaos ok` and counts.
"""

import imaplib
import random
import re
import socket
import sys
import threading
import time

KEYWORDS = ["$K1", "$K2", "$K3", "$K4"]


def connect(host, password, user):
    ip, port = host.rsplit(":", 1)
    m = imaplib.IMAP4(ip, int(port), timeout=15)
    m.login(user, password)
    typ, _ = m.select("INBOX")
    if typ != "OK":
        raise imaplib.IMAP4.error("SELECT")
    return m


def worker(hosts, user, password, deadline, log, lock, stats):
    rng = random.Random(user)
    live = {}  # uid -> subject, as answered
    n = 0
    m = None
    validity = None

    def write(line):
        with lock:
            log.write(f"{line} @{time.time():.3f}\n")
            log.flush()

    while time.monotonic() < deadline:
        try:
            if m is None:
                m = connect(rng.choice(hosts), password, user)
            roll = rng.random()
            if roll < 0.5 or not live:
                n += 1
                subject = f"chaos-{user}-{n}"
                body = f"Subject: {subject}\r\nFrom: c@example.org\r\n\r\n{subject} body\r\n".encode()
                write(f"A? {user} {subject}")
                typ, data = m.append("INBOX", None, None, body)
                if typ != "OK":
                    stats["no"] += 1
                    continue
                found = re.search(rb"APPENDUID (\d+) (\d+)", data[-1])
                if not found:
                    raise AssertionError(f"no APPENDUID: {data}")
                validity, uid = int(found.group(1)), int(found.group(2))
                live[uid] = subject
                write(f"A {user} {validity} {uid} {subject}")
                stats["append"] += 1
            elif roll < 0.85:
                uid = rng.choice(list(live))
                keyword = rng.choice(KEYWORDS)
                write(f"F? {user} {uid} {keyword}")
                typ, data = m.uid("STORE", str(uid), "+FLAGS", f"({keyword})")
                if typ != "OK":
                    stats["no"] += 1
                    continue
                write(f"F {user} {uid} {keyword}")
                stats["store"] += 1
            else:
                uid = rng.choice(list(live))
                write(f"X? {user} {uid}")
                typ, _ = m.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
                if typ != "OK":
                    stats["no"] += 1
                    continue
                typ, _ = m.uid("EXPUNGE", str(uid))
                if typ != "OK":
                    stats["no"] += 1
                    continue
                del live[uid]
                write(f"X {user} {uid}")
                stats["expunge"] += 1
        except (OSError, EOFError, socket.timeout, imaplib.IMAP4.abort, imaplib.IMAP4.error) as e:
            stats["broken"] += 1
            try:
                if m is not None:
                    m.shutdown()
            except Exception:
                pass
            m = None
            time.sleep(0.2)
    if m is not None:
        try:
            m.logout()
        except Exception:
            pass


def run(hosts, users, password, seconds, log_path):
    hosts = hosts.split(",")
    deadline = time.monotonic() + float(seconds)
    stats = {"append": 0, "store": 0, "expunge": 0, "no": 0, "broken": 0}
    lock = threading.Lock()
    with open(log_path, "w") as log:
        threads = [
            threading.Thread(target=worker, args=(hosts, u, password, deadline, log, lock, stats))
            for u in users.split(",")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print("run", " ".join(f"{k}={v}" for k, v in stats.items()))


def view_of(host, user, password):
    deadline = time.monotonic() + 60
    while True:
        try:
            ip, port = host.rsplit(":", 1)
            m = imaplib.IMAP4(ip, int(port), timeout=15)
            m.login(user, password)
            typ, data = m.select("INBOX", readonly=True)
            if typ != "OK":
                raise imaplib.IMAP4.error(f"EXAMINE: {data}")
            validity = int(m.untagged_responses["UIDVALIDITY"][-1])
            messages = {}
            if int(data[0]) > 0:
                typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                if typ != "OK":
                    raise imaplib.IMAP4.error(f"FETCH: {data}")
                for part in data:
                    if not isinstance(part, tuple):
                        continue
                    uid = int(re.search(rb"UID (\d+)", part[0]).group(1))
                    flags = set(re.search(rb"FLAGS \(([^)]*)\)", part[0]).group(1).decode().split())
                    subject = re.search(rb"Subject: ([^\r\n]*)", part[1]).group(1).decode()
                    messages[uid] = (subject, flags)
            m.logout()
            return validity, messages
        except (OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{host} never served {user}: {e}")
            time.sleep(0.5)


def check(hosts, users, password, log_path):
    appended, flagged, expunged = {}, {}, set()
    maybe_expunged, maybe_flagged = set(), set()
    for line in open(log_path):
        kind, user, *rest = line.split()
        if kind == "A":
            validity, uid, subject = int(rest[0]), int(rest[1]), rest[2]
            appended[(user, uid)] = (validity, subject)
        elif kind == "F":
            flagged.setdefault((user, int(rest[0])), set()).add(rest[1])
        elif kind == "F?":
            maybe_flagged.add((user, int(rest[0]), rest[1]))
        elif kind == "X":
            expunged.add((user, int(rest[0])))
        elif kind == "X?":
            maybe_expunged.add((user, int(rest[0])))
    failures = []
    counts = {"messages": 0, "flags": 0, "expunged": len(expunged)}
    for user in users.split(","):
        views = [view_of(h, user, password) for h in hosts.split(",")]
        for host, view in zip(hosts.split(","), views[1:]):
            if view != views[0]:
                failures.append(f"{user}: nodes disagree: {views[0]} vs {view}")
        validity, messages = views[0]
        seen = {}
        for uid, (subject, flags) in messages.items():
            if subject in seen:
                failures.append(f"{user}: {subject} shown twice (UIDs {seen[subject]}, {uid})")
            seen[subject] = uid
            known = appended.get((user, uid))
            if known and known[1] != subject:
                failures.append(f"{user}: UID {uid} was {known[1]}, now names {subject}")
        for (u, uid), (v, subject) in appended.items():
            if u != user:
                continue
            if v != validity:
                failures.append(f"{user}: UIDVALIDITY {v} when {subject} was appended, now {validity}")
            if (user, uid) in expunged:
                if subject in seen:
                    failures.append(f"{user}: {subject} expunged (OK) and back as UID {seen[subject]}")
                continue
            if uid not in messages:
                if (user, uid) not in maybe_expunged:
                    failures.append(f"{user}: {subject} (UID {uid}, APPEND answered OK) is gone")
                continue
            counts["messages"] += 1
            for keyword in flagged.get((user, uid), ()):
                counts["flags"] += 1
                if keyword not in messages[uid][1]:
                    failures.append(f"{user}: {keyword} on UID {uid} answered OK and lost")
    if failures:
        # What the log says about each message that failed, for the post-mortem.
        for f in failures[:5]:
            found = re.search(r"^(\S+): (\S+) ", f)
            if found and found.group(2).startswith("chaos-"):
                user, subject = found.group(1), found.group(2)
                print(f"log of {subject}:")
                uids = set()
                for line in open(log_path):
                    parts = line.split()
                    if subject in parts:
                        print("  ", line.rstrip())
                        if parts[0] == "A":
                            uids.add(parts[3])
                for line in open(log_path):
                    parts = line.split()
                    if parts[1] == user and parts[0] in ("X", "X?", "F", "F?") and parts[2] in uids:
                        print("  ", line.rstrip())
            found = re.search(r"^(\S+): .*UID (\d+)", f)
            if found:
                user, uid = found.group(1), found.group(2)
                print(f"log of {user} UID {uid}:")
                for line in open(log_path):
                    parts = line.split()
                    if parts[1] == user and (uid in parts[2:4]):
                        print("  ", line.rstrip())
        print("FAILED:\n" + "\n".join(failures[:50]))
        sys.exit(1)
    print("chaos ok", " ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"run": run, "check": check}[command](*args)
