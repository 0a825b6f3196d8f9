"""A store-and-forward TCP echo server on loopback for the bare 10 MiB yardstick:
prints its port, then for each length-prefixed message reads all of it and sends it
back. Started and killed by ``bench.workloads.tcp_echo``."""

from __future__ import annotations

import socket


def main() -> None:
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        print(ls.getsockname()[1], flush=True)
        conn, _ = ls.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                head = _recv(conn, 8)
                if head is None:
                    return
                body = _recv(conn, int.from_bytes(head, "big"))
                if body is None:
                    return
                conn.sendall(head + body)


def _recv(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(buf)


if __name__ == "__main__":
    main()
