"""Stock Python clients over TLS against a node.

starttls HOST SMTP POP3 POP3S CAFILE USER PASSWORD TAG
    smtplib: EHLO, STARTTLS (certificate checked against CAFILE), EHLO again, send one
    message "TAG"; poplib: STLS then USER/PASS, and POP3_SSL: each sees the message, which
    the last one deletes. Prints "tls ok".
privacy HOST POP3 POP3S CAFILE USER PASSWORD
    From off loopback: USER before STLS gets -ERR [PRIVACY] and CAPA offers no USER; after
    STLS the same login works, and POP3S takes it at once. Prints "privacy ok".
hold HOST POP3S CAFILE USER PASSWORD
    Logs in over POP3S, prints "held FINGERPRINT" (the server certificate's SHA-256), waits
    for a line on stdin, then proves the session still works (STAT) and quits: "still ok".
fingerprint HOST POP3S
    Prints the SHA-256 of the certificate a new POP3S connection gets.
"""
import hashlib
import imaplib
import poplib
import smtplib
import ssl
import sys


def context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx


def message_count(pop, tag):
    count = 0
    for n in range(1, len(pop.list()[1]) + 1):
        lines = pop.retr(n)[1]
        if any(tag.encode() in line for line in lines):
            count += 1
    return count


def starttls(host, smtp, pop3, pop3s, cafile, user, password, tag):
    ctx = context(cafile)
    s = smtplib.SMTP(host, int(smtp), timeout=30)
    s.ehlo("tls-client")
    assert s.has_extn("starttls"), s.esmtp_features
    s.starttls(context=ctx)
    s.ehlo("tls-client")
    assert not s.has_extn("starttls"), "STARTTLS offered again inside TLS"
    s.sendmail("sender@example.org", [user], f"Subject: {tag}\r\n\r\nover TLS {tag}\r\n")
    s.quit()

    p = poplib.POP3(host, int(pop3), timeout=30)
    assert "STLS" in p.capa(), p.capa()
    p.stls(context=ctx)
    assert "STLS" not in p.capa()
    p.user(user)
    p.pass_(password)
    assert message_count(p, tag) == 1
    p.quit()

    p = poplib.POP3_SSL(host, int(pop3s), context=ctx, timeout=30)
    p.user(user)
    p.pass_(password)
    assert message_count(p, tag) == 1
    for n in range(1, len(p.list()[1]) + 1):
        p.dele(n)
    p.quit()
    print("tls ok")


def privacy(host, pop3, pop3s, cafile, user, password, imap=None, imaps=None):
    ctx = context(cafile)
    p = poplib.POP3(host, int(pop3), timeout=30)
    capa = p.capa()
    assert "USER" not in capa, capa
    assert "STLS" in capa, capa
    try:
        p.user(user)
    except poplib.error_proto as e:
        assert b"[PRIVACY]" in e.args[0], e
    else:
        raise AssertionError("USER accepted in clear from off loopback")
    p.stls(context=ctx)
    assert "USER" in p.capa()
    p.user(user)
    p.pass_(password)
    p.quit()
    p = poplib.POP3_SSL(host, int(pop3s), context=ctx, timeout=30)
    p.user(user)
    p.pass_(password)
    p.quit()
    if imap:
        # IMAP the same: LOGINDISABLED and no AUTH=PLAIN in clear, LOGIN refused; after
        # STARTTLS or on IMAPS it works.
        m = imaplib.IMAP4(host, int(imap), timeout=30)
        assert "LOGINDISABLED" in m.capabilities and "AUTH=PLAIN" not in m.capabilities, m.capabilities
        try:
            m.login(user, password)
        except imaplib.IMAP4.error as e:
            assert "PRIVACY" in str(e) or "LOGINDISABLED" in str(e) or "TLS" in str(e), e
        else:
            raise AssertionError("IMAP LOGIN accepted in clear from off loopback")
        m = imaplib.IMAP4(host, int(imap), timeout=30)
        m.starttls(ctx)
        assert "LOGINDISABLED" not in m.capabilities, m.capabilities
        m.login(user, password)
        m.logout()
        m = imaplib.IMAP4_SSL(host, int(imaps), ssl_context=ctx, timeout=30)
        m.login(user, password)
        m.logout()
    print("privacy ok")


def fingerprint_of(sock):
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def hold(host, pop3s, cafile, user, password):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    p = poplib.POP3_SSL(host, int(pop3s), context=ctx, timeout=30)
    p.user(user)
    p.pass_(password)
    print("held", fingerprint_of(p.sock), flush=True)
    sys.stdin.readline()
    p.stat()
    p.quit()
    print("still ok", flush=True)


def fingerprint(host, pop3s):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    p = poplib.POP3_SSL(host, int(pop3s), context=ctx, timeout=30)
    print(fingerprint_of(p.sock))
    p.quit()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"starttls": starttls, "privacy": privacy, "hold": hold, "fingerprint": fingerprint}[command](*args)
