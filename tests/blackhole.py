"""A TCP relay on loopback that can start dropping everything, as a firewall that DROPs a
database host's packets (or a host that is gone) looks to a client: connections stay open,
what is sent is taken, and nothing ever comes back, neither to connections opened before nor
to new ones (accepted, then never answered)."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from tests.ports import free_port


class Blackhole:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.dropping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self) -> None:
        """From now on nothing reaches either side."""
        self.dropping.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._sockets.append(client)
            if self.dropping.is_set():
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            server = socket.create_connection(self.target)
            with self._lock:
                self._sockets.append(server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while chunk := self._receive(source):
            if not self.dropping.is_set():
                try:
                    sink.sendall(chunk)
                except OSError:
                    return
        if not self.dropping.is_set():  # one end finished sending: pass that on
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _swallow(self, client: socket.socket) -> None:
        while self._receive(client):
            pass

    @staticmethod
    def _receive(source: socket.socket) -> bytes:
        try:
            return source.recv(65536)
        except OSError:
            return b""

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
