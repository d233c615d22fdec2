"""A real HTTP server on 127.0.0.1 that records the webhooks it receives, for tests of delivery.

Each request is kept with its path, headers and exact body. ``status`` and ``location`` decide
the answer (a 302 with a Location to test redirects); ``ssl_context`` serves https.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    server_name: str | None = None  # the SNI name, over https


@dataclass
class Receiver:
    """A listening receiver: where it is and what it got."""

    port: int
    status: int = 204
    location: str | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)


@contextmanager
def webhook_receiver(port: int = 0, *, status: int = 204, location: str | None = None,
                     ssl_context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """Serve on 127.0.0.1 (``port`` 0: a free one) until the block ends."""
    receiver = Receiver(port=port, status=status, location=location)
    server_names: dict[int, str | None] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            name = server_names.get(id(self.connection))
            with receiver.lock:
                receiver.received.append(Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                                  body, name))
            self.send_response(receiver.status)
            if receiver.location is not None:
                self.send_header("Location", receiver.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if ssl_context is not None:
        def remember_name(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
            server_names[id(sock)] = name

        ssl_context.sni_callback = remember_name
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
