"""Mail through a cluster with stock clients (smtplib, poplib).

deliver HOST SMTP_PORT TAG USERS       one message "TAG n" to each of user1..userN@localhost
check HOST POP3_PORT PASSWORD USERS TAG...
    every user's maildrop holds exactly one "TAG n" per tag given, nothing else of those
    tags, and every message is byte-exact; nothing is deleted
empty HOST POP3_PORT PASSWORD USERS
    every user's maildrop is empty (nothing deleted has come back); nothing is deleted
login HOST POP3_PORT USER PASSWORD
    prints "login ok" or "login refused"
repeat HOST SMTP_PORT TAG COUNT
    COUNT messages "TAG k" to user1@localhost over one connection
count HOST POP3_PORT PASSWORD USER
    prints "count N": the messages in USER's maildrop (nothing is deleted)
take HOST POP3_PORT PASSWORD USERS TAG
    deletes every user's "TAG n" (exactly one each) and QUITs; prints "took N"
gone HOST POP3_PORT PASSWORD USERS TAG
    no user's maildrop holds a "TAG n" (a delete did not come back); nothing is deleted
"""
import poplib
import smtplib
import sys


def body(tag, n):
    return f"Subject: {tag} {n}\r\nX-Check: {tag}-{n}\r\n\r\nmessage {tag} for user{n}\r\n..a dotted line\r\n"


def deliver(host, port, tag, users):
    client = smtplib.SMTP(host, int(port), timeout=30)
    for n in range(1, int(users) + 1):
        client.sendmail("sender@example.org", [f"user{n}@localhost"], body(tag, n))
    client.quit()
    print(f"delivered {users}")


def check(host, port, password, users, tags):
    seen = 0
    for n in range(1, int(users) + 1):
        pop = poplib.POP3(host, int(port), timeout=30)
        pop.user(f"user{n}@localhost")
        pop.pass_(password)
        count = len(pop.list()[1])
        found = {}
        for k in range(1, count + 1):
            lines = pop.retr(k)[1]
            text = b"\r\n".join(lines).decode()
            for tag in tags:
                if f"X-Check: {tag}-{n}\r\n" in text:
                    found[tag] = found.get(tag, 0) + 1
                    expected = body(tag, n).split("\r\n\r\n", 1)[1]
                    got = text.split("\r\n\r\n", 1)[1] + "\r\n"
                    assert got == expected, (n, tag, got, expected)
        pop.quit()
        for tag in tags:
            assert found.get(tag) == 1, f"user{n}: {tag} seen {found.get(tag, 0)} times"
        seen += sum(found.values())
    print(f"check ok {seen}")


def empty(host, port, password, users):
    found = []
    for n in range(1, int(users) + 1):
        pop = poplib.POP3(host, int(port), timeout=30)
        pop.user(f"user{n}@localhost")
        pop.pass_(password)
        count, _ = pop.stat()
        if count:
            # Which messages: the headers say whether each is a load message (X-Load-Id) and
            # the Received: line when and through which node it arrived.
            heads = []
            for k in range(1, min(count, 5) + 1):
                lines = pop.top(k, 0)[1]
                heads.append(b" | ".join(lines).decode(errors="replace"))
            found.append((n, count, heads))
        pop.quit()
    assert not found, f"maildrops not empty (user, messages, headers): {found[:20]}"
    print(f"empty ok {users}")


def with_tag(host, port, password, users, tag, delete):
    found = []
    for n in range(1, int(users) + 1):
        pop = poplib.POP3(host, int(port), timeout=30)
        pop.user(f"user{n}@localhost")
        pop.pass_(password)
        count = len(pop.list()[1])
        tagged = []
        for k in range(1, count + 1):
            text = b"\r\n".join(pop.top(k, 0)[1]).decode()
            if f"X-Check: {tag}-{n}\r\n" in text + "\r\n":
                tagged.append(k)
        if delete:
            assert len(tagged) == 1, f"user{n}: {tag} seen {len(tagged)} times"
            for k in tagged:
                pop.dele(k)
        found.extend((n, k) for k in tagged)
        pop.quit()
    return found


def take(host, port, password, users, tag):
    print(f"took {len(with_tag(host, port, password, users, tag, True))}")


def gone(host, port, password, users, tag):
    found = with_tag(host, port, password, users, tag, False)
    assert not found, f"deleted messages shown again (user, number): {found[:20]}"
    print(f"gone ok {users}")


def login(host, port, user, password):
    pop = poplib.POP3(host, int(port), timeout=30)
    pop.user(user)
    try:
        pop.pass_(password)
    except poplib.error_proto as refused:
        print(f"login refused {refused}")
        return
    pop.quit()
    print("login ok")


def repeat(host, port, tag, count):
    client = smtplib.SMTP(host, int(port), timeout=30)
    for k in range(1, int(count) + 1):
        client.sendmail("sender@example.org", ["user1@localhost"], body(tag, k))
    client.quit()
    print(f"delivered {count}")


def count(host, port, password, user):
    pop = poplib.POP3(host, int(port), timeout=30)
    pop.user(user)
    pop.pass_(password)
    messages, _ = pop.stat()
    pop.quit()
    print(f"count {messages}")


if __name__ == "__main__":
    if sys.argv[1] == "deliver":
        deliver(*sys.argv[2:6])
    elif sys.argv[1] == "empty":
        empty(*sys.argv[2:6])
    elif sys.argv[1] == "login":
        login(*sys.argv[2:6])
    elif sys.argv[1] == "repeat":
        repeat(*sys.argv[2:6])
    elif sys.argv[1] == "count":
        count(*sys.argv[2:6])
    elif sys.argv[1] == "take":
        take(*sys.argv[2:7])
    elif sys.argv[1] == "gone":
        gone(*sys.argv[2:7])
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
