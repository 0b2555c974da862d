"""One connection of a guest to the lab's package repository, carried to 127.0.0.1.

QEMU's user network (``restrict=on``: no other way out) starts this for each TCP connection
the guest opens to the repository's address, with the connection on stdin and stdout; it
copies both ways to the HTTP server on 127.0.0.1 at the port given, and nowhere else.
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def main(port: int) -> None:
    server = socket.create_connection(("127.0.0.1", port), timeout=60)

    def to_server() -> None:
        while data := os.read(0, 65536):
            server.sendall(data)
        server.shutdown(socket.SHUT_WR)

    threading.Thread(target=to_server, daemon=True).start()
    while data := server.recv(65536):
        os.write(1, data)


if __name__ == "__main__":
    main(int(sys.argv[1]))
