"""A TCP proxy that can freeze, for the stalled-connection tests (tests/test_revocation.py) and
bench/revocation.py: put it between one server's LISTEN connection and PostgreSQL
(`TOKENTRAIL_LISTEN_URL`), then freeze it."""

from __future__ import annotations

import socket
import threading


class FreezableProxy:
    """A TCP proxy to PostgreSQL that can freeze: stop forwarding in both directions while every
    socket stays open, as a NAT or firewall that silently drops an idle connection's traffic."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            flowing = self.flowing  # this connection's: replacing `flowing` spares it
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, flowing), daemon=True).start()

    def _pipe(self, source, sink, flowing) -> None:  # noqa: ANN001
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            while not flowing.wait(0.1):  # frozen: hold the bytes, keep the sockets
                if self._closed:
                    return
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        self.server.close()
        for sock in self.sockets:
            sock.close()
