"""Stand-in servers for testing the load generator's own checks (not mail servers).

smtp PORT BANNER     accepts any mail and answers 250; binds with SO_REUSEPORT, so two of
                     these with different banners share one port as two servers would
pop3-stall PORT      greets, then never answers anything
Each prints "listening" once bound and serves until killed.
"""
import socket
import sys
import threading


def listen(port, reuse_port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen(128)
    print("listening", flush=True)
    return s


def smtp_session(conn, banner):
    conn.sendall(banner.encode() + b"\r\n")
    buf = b""
    in_data = False
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        while True:
            if in_data:
                end = buf.find(b"\r\n.\r\n")
                if end < 0:
                    break
                buf = buf[end + 5:]
                in_data = False
                conn.sendall(b"250 ok\r\n")
                continue
            at = buf.find(b"\r\n")
            if at < 0:
                break
            line, buf = buf[:at].upper(), buf[at + 2:]
            if line.startswith(b"EHLO"):
                conn.sendall(b"250-stub\r\n250 PIPELINING\r\n")
            elif line.startswith(b"DATA"):
                conn.sendall(b"354 go\r\n")
                in_data = True
            elif line.startswith(b"QUIT"):
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")


def pop3_stall(conn):
    conn.sendall(b"+OK stalling stub\r\n")
    while conn.recv(65536):
        pass


def serve(listener, handler, *args):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handler, args=(conn, *args), daemon=True).start()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "smtp":
        serve(listen(sys.argv[2], True), smtp_session, sys.argv[3])
    elif mode == "pop3-stall":
        serve(listen(sys.argv[2], False), pop3_stall)
    else:
        raise SystemExit(f"unknown mode {mode}")
