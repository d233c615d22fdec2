"""A TCP proxy in front of a real server whose open connections a test can cut, like a network that drops."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class TcpProxy:
    """Forwards every connection on a free local port to ``target``; `drop` cuts those open now.

    It also keeps the first bytes each client sent (the request head), so a test can see what
    a reconnecting client asked for.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.request_heads: list[bytes] = []
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            head = bytearray()
            with self._lock:
                self._open += [client, upstream]
                index = len(self.request_heads)
                self.request_heads.append(b"")

            def record(data: bytes, index: int = index, head: bytearray = head) -> None:
                if len(head) < 4096:
                    head.extend(data)
                    self.request_heads[index] = bytes(head)

            threading.Thread(target=self._pipe, args=(client, upstream, record), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: object) -> None:
        try:
            while data := source.recv(65536):
                if callable(record):
                    record(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop(self) -> int:
        """Cut every connection open now (both sides, no goodbye); how many client connections that was."""
        with self._lock:
            cut, self._open = self._open, []
        for sock in cut:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        return len(cut) // 2

    def close(self) -> None:
        """Stop listening and cut everything."""
        self._closed = True
        self.listener.close()
        self.drop()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
