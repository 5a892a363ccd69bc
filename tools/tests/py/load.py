"""Concurrent deliveries with checksums; prints "ACK <id>" for every message that got a 250.

Usage: load.py SMTP_PORT RECIPIENT SECONDS THREADS
Each message carries `X-Load-Id` and `X-Checksum` (sha256 of the body) so a later check can
tell lost and corrupt mail apart. Exits quietly when the server goes away.
"""
import hashlib
import os
import smtplib
import sys
import threading
import time

port, rcpt, seconds, threads = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
lock = threading.Lock()
deadline = time.time() + seconds


def worker(n):
    seq = 0
    while time.time() < deadline:
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        except OSError:
            return
        try:
            while time.time() < deadline:
                seq += 1
                ident = f"{os.getpid()}-{n}-{seq}"
                raw = os.urandom(200 + (seq * 977) % 6000).hex()
                body = "\r\n".join(raw[i:i + 76] for i in range(0, len(raw), 76)).encode()
                digest = hashlib.sha256(body).hexdigest()
                msg = f"X-Load-Id: {ident}\r\nX-Checksum: {digest}\r\n\r\n".encode() + body + b"\r\n"
                s.sendmail("load@example.org", [rcpt], msg)
                with lock:
                    print(f"ACK {ident}", flush=True)
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass


ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
