"""A node's ports are its own.

intrude HOST PORT...     for each port: a socket with SO_REUSEADDR and SO_REUSEPORT must fail
                         to bind HOST:PORT and 0.0.0.0:PORT (EADDRINUSE); prints "intrude ok"
banners HOST PORT COUNT  opens COUNT SMTP connections at once, keeps them all open, and checks
                         that every one is greeted by porcupine; prints "banners ok N"
"""
import errno
import socket
import sys


def intrude(host, ports):
    for port in ports:
        for address in (host, "0.0.0.0"):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((address, int(port)))
                s.listen(16)
            except OSError as e:
                assert e.errno == errno.EADDRINUSE, f"{address}:{port}: {e}"
            else:
                raise AssertionError(f"bound {address}:{port} beside the node")
            finally:
                s.close()
    print("intrude ok")


def banners(host, port, count):
    conns = []
    try:
        for _ in range(int(count)):
            conns.append(socket.create_connection((host, int(port)), timeout=30))
        greetings = {}
        for c in conns:
            line = b""
            while not line.endswith(b"\r\n"):
                chunk = c.recv(512)
                assert chunk, "connection closed before the banner"
                line += chunk
            greetings[line] = greetings.get(line, 0) + 1
        assert len(greetings) == 1, f"several greetings: {greetings}"
        (line,) = greetings
        assert line.startswith(b"220 ") and b"porcupine" in line, line
        print(f"banners ok {len(conns)}")
        # Keep them open until told to go: the caller reads the node's per-core counts.
        sys.stdout.flush()
        sys.stdin.readline()
    finally:
        for c in conns:
            try:
                c.sendall(b"QUIT\r\n")
            except OSError:
                pass
            c.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "intrude":
        intrude(args[0], args[1:])
    elif command == "banners":
        banners(*args)
    else:
        raise SystemExit(f"unknown command {command}")
