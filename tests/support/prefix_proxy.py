"""A reverse proxy that serves a real server under a path prefix, as an ingress or nginx would.

`PrefixProxy(target, "/fitjobs")` forwards `/fitjobs/X` to `target/X`, the prefix stripped and
named in `X-Forwarded-Prefix` (nginx: `location /fitjobs/ { proxy_pass http://target/; }`).
Anything outside the prefix is a 404 and is recorded, so a page that used an absolute URL shows
up. Response bodies are streamed as they arrive, so Server-Sent Events pass through live.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

# Headers that belong to one connection, not to the request or response (RFC 9110 section 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "host"}
UPSTREAM_TIMEOUT_S = 120


class PrefixProxy:
    """Serves ``target_url`` under ``prefix`` on a free local port; ``url`` is the prefixed base."""

    def __init__(self, target_url: str, prefix: str) -> None:
        target = urlsplit(target_url)
        assert target.hostname and target.port, target_url
        self.target = (target.hostname, target.port)
        self.prefix = prefix.rstrip("/")
        self.outside: list[str] = []  # paths asked for outside the prefix
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.prefix}"
        threading.Thread(target=self.server.serve_forever, name="prefix-proxy", daemon=True).start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: each response ends by closing the connection, so bodies of any kind
            # (sized, chunked upstream, endless event streams) pass through unchanged.
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the service logs every request itself

            def forward(self) -> None:
                if not self.path.startswith(proxy.prefix + "/"):
                    proxy.outside.append(self.path)
                    self.send_error(404, f"Outside {proxy.prefix}/")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
                headers["X-Forwarded-Prefix"] = proxy.prefix
                upstream = http.client.HTTPConnection(*proxy.target, timeout=UPSTREAM_TIMEOUT_S)
                try:
                    upstream.request(self.command, self.path[len(proxy.prefix):], body=body, headers=headers)
                    response = upstream.getresponse()
                    self.send_response(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in HOP_BY_HOP:
                            self.send_header(name, value)
                    self.end_headers()
                    while chunk := response.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (OSError, http.client.HTTPException):
                    pass  # the browser or the server left; the connection closes either way
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = forward

        return Handler

    def close(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> PrefixProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
