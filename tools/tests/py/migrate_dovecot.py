"""A Maildir as real Postfix and Dovecot write one, and the view an IMAP client has of it.
Subcommands:

  prepare SMTP IMAP USER PASSWORD
      sends 6 messages to USER through Postfix (127.0.0.1:SMTP), waits until Dovecot's IMAP
      (127.0.0.1:IMAP) shows them, then as a client would: CREATE Work, MOVE two messages
      there, set flags and keywords (\\Seen, \\Flagged, \\Answered, $Work, Later), and
      expunge the newest, so the next UID is above every UID left.
  view PORT USER PASSWORD
      prints `view {JSON}`: for INBOX and Work, the UIDVALIDITY, UIDNEXT and each message's UID,
      flags (sorted; \\Recent left out) and the SHA-256 of its BODY.PEEK[].
"""

import hashlib
import imaplib
import json
import re
import smtplib
import sys
import time


def fail(why):
    print("FAILED:", why)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def message(n):
    # Line ends are LF, as a local MDA writes them; Postfix keeps them so in the Maildir.
    return (
        f"From: sender{n}@example.org\nTo: someone\nSubject: message {n}\n"
        f"Message-ID: <m{n}@example.org>\nDate: Mon, 1 Jan 2024 10:00:0{n} +0000\n\n"
        f"Body {n}.\n.leading dot\n" + "x" * (n * 50) + "\n"
    )


def prepare(smtp, imap, user, password):
    with smtplib.SMTP("127.0.0.1", int(smtp), timeout=30) as s:
        for n in range(6):
            s.sendmail("sender@example.org", [user], message(n))
    deadline = time.time() + 60
    while True:
        m = imaplib.IMAP4("127.0.0.1", int(imap))
        m.login(user, password)
        typ, data = m.select("INBOX")
        if typ == "OK" and int(data[0]) == 6:
            break
        m.logout()
        check(time.time() < deadline, "Postfix did not deliver the 6 messages to Dovecot")
        time.sleep(0.3)
    check(m.create("Work")[0] == "OK", "CREATE Work")
    check(m.uid("MOVE", "2,4", "Work")[0] == "OK", "UID MOVE 2,4 Work")
    check(m.uid("STORE", "1", "+FLAGS", "(\\Seen)")[0] == "OK", "STORE")
    check(m.uid("STORE", "3", "+FLAGS", "(\\Flagged $Work)")[0] == "OK", "STORE")
    check(m.uid("STORE", "5", "+FLAGS", "(\\Seen Later)")[0] == "OK", "STORE")
    # The newest is expunged: Dovecot's next UID (7) is above every UID left (5), and
    # must stay so through the import and the export.
    check(m.uid("STORE", "6", "+FLAGS", "(\\Deleted)")[0] == "OK", "STORE \\Deleted")
    check(m.expunge()[0] == "OK", "EXPUNGE")
    m.select("Work")
    check(m.uid("STORE", "1", "+FLAGS", "(\\Answered \\Seen)")[0] == "OK", "STORE in Work")
    m.logout()
    print("prepared")


def view(port, user, password):
    m = imaplib.IMAP4("127.0.0.1", int(port))
    m.login(user, password)
    out = {}
    for folder in ["INBOX", "Work"]:
        typ, data = m.select(folder, readonly=True)
        check(typ == "OK", (folder, data))
        validity = int(m.untagged_responses["UIDVALIDITY"][-1])
        uid_next = int(m.untagged_responses["UIDNEXT"][-1])
        rows = []
        if int(data[0]) > 0:
            typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            check(typ == "OK", data)
            for part in data:
                if not isinstance(part, tuple):
                    continue
                head, body = part
                uid = int(re.search(rb"UID (\d+)", head).group(1))
                flags = re.search(rb"FLAGS \(([^)]*)\)", head).group(1).decode().split()
                flags = sorted(f for f in flags if f != "\\Recent")
                rows.append([uid, flags, hashlib.sha256(body).hexdigest(), len(body)])
        rows.sort()
        out[folder] = {"uidvalidity": validity, "uidnext": uid_next, "messages": rows}
    m.logout()
    print("view", json.dumps(out, sort_keys=True))


def main():
    what, args = sys.argv[1], sys.argv[2:]
    {"prepare": prepare, "view": view}[what](*args)


if __name__ == "__main__":
    main()
