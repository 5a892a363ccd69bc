"""Mail until a disk is full, with stock clients (smtplib, poplib).

fill HOST SMTP_PORT USERS SIZE ROUNDS_MAX OUT.json [CODE [TRIGGER AFTER_ROUND]]
    rounds of one SIZE-byte message to each of user1..userN@localhost (one connection,
    reconnecting if the server drops it); stops two rounds after the first round in which
    some message was refused with CODE (default 452; so users on the failed disk have been
    refused again while the others are still accepted), or after ROUNDS_MAX rounds. With
    TRIGGER, that file is created after round AFTER_ROUND (a fault switched on under load).
    Writes what was accepted and refused to OUT.json and prints "accepted A refused R".
check HOST POP3_PORT PASSWORD OUT.json [REFUSED_MAY_BE_STORED]
    every accepted message is in its user's maildrop exactly once and byte-exact, no refused
    one is (with REFUSED_MAY_BE_STORED=1: a refused one may be, once and byte-exact — a write
    that reached the disk before its sync failed; the client was told to try again); nothing
    is deleted. Prints "check ok A" (and "refused but stored R").
"""
import json
import poplib
import smtplib
import sys


def body(tag, size):
    head = f"Subject: {tag}\r\nX-Check: {tag}\r\n\r\n"
    line = (f"{tag} " * 20)[:74] + "\r\n"
    lines = max(1, (size - len(head)) // len(line))
    return head + line * lines


def fill(host, port, users, size, rounds_max, out, code=452, trigger=None, after=0):
    users, size, rounds_max, code, after = int(users), int(size), int(rounds_max), int(code), int(after)
    accepted, refused = [], []
    full_round = None
    client = None
    for r in range(1, rounds_max + 1):
        refused_now = 0
        for n in range(1, users + 1):
            tag = f"r{r}-u{n}"
            if client is None:
                client = smtplib.SMTP(host, int(port), timeout=60)
            try:
                client.sendmail("sender@example.org", [f"user{n}@localhost"], body(tag, size))
                accepted.append([n, tag])
            except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused) as error:
                got = error.smtp_code if hasattr(error, "smtp_code") else \
                    list(error.recipients.values())[0][0]
                assert got == code, f"{tag}: refused with {got}, not {code}: {error}"
                refused.append([n, tag])
                refused_now += 1
                client.rset()
            except smtplib.SMTPServerDisconnected:
                client = None
                refused.append([n, tag])
        if trigger and r == after:
            open(trigger, "w").close()
        if refused_now and full_round is None:
            full_round = r
        if full_round is not None and r >= full_round + 2:
            break
    if client is not None:
        client.quit()
    with open(out, "w") as f:
        json.dump({"size": size, "accepted": accepted, "refused": refused,
                   "full_round": full_round}, f)
    print(f"accepted {len(accepted)} refused {len(refused)} full_round {full_round}")


def check(host, port, password, out, refused_may_be_stored="0"):
    with open(out) as f:
        run = json.load(f)
    size = run["size"]
    want = {}
    for n, tag in run["accepted"]:
        want.setdefault(n, set()).add(tag)
    unwanted = {tag for _, tag in run["refused"]}
    users = {n for n, _ in run["accepted"]} | {n for n, _ in run["refused"]}
    seen, refused_stored = 0, 0
    for n in sorted(users):
        pop = poplib.POP3(host, int(port), timeout=60)
        pop.user(f"user{n}@localhost")
        pop.pass_(password)
        found = {}
        for k in range(1, len(pop.list()[1]) + 1):
            text = b"\r\n".join(pop.retr(k)[1]).decode() + "\r\n"
            tag = text.split("X-Check: ", 1)[1].split("\r\n", 1)[0]
            if tag in unwanted:
                assert refused_may_be_stored == "1", f"user{n}: {tag} was refused but stored"
                refused_stored += 1
            expected = body(tag, size).split("\r\n\r\n", 1)[1]
            got = text.split("\r\n\r\n", 1)[1]
            assert got == expected, f"user{n}: {tag} is not byte-exact"
            found[tag] = found.get(tag, 0) + 1
        pop.quit()
        twice = [t for t, c in found.items() if c > 1]
        assert not twice, f"user{n}: shown twice: {twice[:5]}"
        missing = want.get(n, set()) - set(found)
        assert not missing, f"user{n}: acknowledged but missing: {sorted(missing)[:5]}"
        seen += len(found)
    print(f"check ok {seen} refused but stored {refused_stored}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"fill": fill, "check": check}[command](*args)
