"""Client-side load for the API's connection handling: many event streams, slow clients, probes.

Used by tests/integration/test_api_streams.py and bench/streams.py. Streams and slow clients
are raw sockets driven by one selector thread each, so hundreds of them cost the client one
thread, and the latency probe (its own thread) is not slowed down by hundreds of readers.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class ReceivedEvent:
    """One SSE frame with an id: the event id, its kind, its data and when it arrived."""

    id: int
    kind: str
    data: dict[str, Any]
    received_at: float


@dataclass
class SseResponse:
    """An HTTP/1.1 response carrying Server-Sent Events, parsed as its bytes arrive (chunked framing)."""

    job_id: str
    opened_at: float = field(default_factory=time.monotonic)
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[ReceivedEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    body: bytes = b""           # the problem body of a response that is not a stream
    ended: bool = False         # the server sent the last chunk: the stream ended cleanly
    closed_at: float | None = None
    _raw: bytes = b""
    _text: str = ""

    def feed(self, data: bytes) -> None:
        """Take the next bytes read from the socket."""
        self._raw += data
        if self.status is None:
            head, found, rest = self._raw.partition(b"\r\n\r\n")
            if not found:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            self._raw = rest
        if self.headers.get("transfer-encoding") != "chunked":
            self.body += self._raw
            self._raw = b""
            return
        while not self.ended:
            size_line, found, rest = self._raw.partition(b"\r\n")
            if not found:
                return
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self._raw = rest[size + 2:]
            if size == 0:
                self.ended = True
            else:
                self._text += rest[:size].decode()
                self._parse_frames()

    def _parse_frames(self) -> None:
        while "\n\n" in self._text:
            frame, _, self._text = self._text.partition("\n\n")
            fields: dict[str, str] = {}
            for line in frame.split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
            if "id" in fields:
                self.events.append(ReceivedEvent(int(fields["id"]), fields.get("event", "message"),
                                                 json.loads(fields.get("data", "null")), time.monotonic()))

    def gaps(self, expected: list[int]) -> list[str]:
        """What is wrong with the ids received against ``expected`` (empty when they match exactly)."""
        got = [event.id for event in self.events]
        if got == expected:
            return []
        problems = []
        if got != sorted(got):
            problems.append("out of order")
        if len(set(got)) != len(got):
            problems.append("duplicates")
        missing = sorted(set(expected) - set(got))
        if missing:
            problems.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        extra = sorted(set(got) - set(expected))
        if extra:
            problems.append(f"unexpected {extra[:5]}")
        return problems or ["differs"]


def stream_request(host: str, job_id: str, last_event_id: int | None = None, token: str | None = None) -> bytes:
    """The request that opens an event stream."""
    lines = [f"GET /v1/jobs/{job_id}/events HTTP/1.1", f"Host: {host}", "Accept: text/event-stream"]
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class StreamCrowd:
    """Many event streams read by one selector thread until each ends, fails or ``stop`` is called."""

    def __init__(self, url: str, job_ids: list[str], *, last_event_id: int | None = None) -> None:
        self.host, self.port = host_port(url)
        self.responses = [SseResponse(job_id) for job_id in job_ids]
        self.last_event_id = last_event_id
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-crowd", daemon=True)

    def start(self) -> StreamCrowd:
        """Connect every stream (blocking until all requests are sent) and start reading."""
        for response in self.responses:
            sock = socket.create_connection((self.host, self.port), timeout=10)
            sock.sendall(stream_request(self.host, response.job_id, self.last_event_id))
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, (sock, response))
        self._thread.start()
        return self

    def open_count(self) -> int:
        """Streams whose server side has not closed yet."""
        return sum(1 for response in self.responses if response.closed_at is None)

    def wait_closed(self, timeout: float) -> bool:
        """Whether every stream was closed by the server within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_count() == 0:
                return True
            time.sleep(0.05)
        return self.open_count() == 0

    def stop(self) -> None:
        """Close the streams that are still open."""
        self._stop.set()
        self._thread.join(timeout=10)
        for key in list(self._selector.get_map().values()):
            sock: socket.socket = key.data[0]
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._stop.is_set() and self._selector.get_map():
            for key, _ in self._selector.select(timeout=0.1):
                sock: socket.socket
                response: SseResponse
                sock, response = key.data
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    response.feed(data)
                if not data or response.ended:
                    # A stream ends by its last chunk; a non-stream response by the server closing.
                    response.closed_at = time.monotonic()
                    self._selector.unregister(sock)
                    sock.close()


class SlowClients:
    """Sockets that send a request's headers, or its body, a few bytes at a time, for as long as they run.

    A slow-header socket sends its request line and then one header line per ``interval``; a
    slow-body socket sends complete headers announcing a large JSON body, then one byte per
    ``interval``. When the server closes one, that is counted and a new one takes its place,
    so the load stays the same while it runs.
    """

    def __init__(self, url: str, *, header_sockets: int, body_sockets: int, interval: float) -> None:
        self.host, self.port = host_port(url)
        self.interval = interval
        self.kinds = ["header"] * header_sockets + ["body"] * body_sockets
        self.closed_by_server = {"header": 0, "body": 0}
        self.lifetimes: dict[str, list[float]] = {"header": [], "body": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._sockets: list[tuple[str, socket.socket, float]] = []

    def start(self) -> SlowClients:
        """Open every socket and start trickling."""
        self._sockets = [self._open(kind) for kind in self.kinds]
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every socket (the clients go away)."""
        self._stop.set()
        self._thread.join(timeout=10)
        for _, sock, _ in self._sockets:
            sock.close()
        self._sockets = []

    def _open(self, kind: str) -> tuple[str, socket.socket, float]:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        if kind == "header":
            sock.sendall(f"GET /readyz HTTP/1.1\r\nHost: {self.host}\r\n".encode())
        else:
            sock.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          "Content-Length: 1000000\r\n\r\n{").encode())
        sock.setblocking(False)
        return kind, sock, time.monotonic()

    def _server_closed(self, sock: socket.socket) -> bool:
        try:
            return sock.recv(4096) == b""  # bytes here would be an error response; it is closed next
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            count += 1
            for index, (kind, sock, opened) in enumerate(self._sockets):
                try:
                    if self._server_closed(sock):
                        raise ConnectionResetError
                    sock.send(f"X-Slow-{count}: {'x' * 8}\r\n".encode() if kind == "header" else b" ")
                except OSError:
                    sock.close()
                    self.closed_by_server[kind] += 1
                    self.lifetimes[kind].append(time.monotonic() - opened)
                    if not self._stop.is_set():
                        self._sockets[index] = self._open(kind)


def timed_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[float, int]:
    """(seconds, status) of one GET on a new connection, as a probe makes it; status 0 when it failed."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return time.monotonic() - started, response.status
    except OSError:
        return time.monotonic() - started, 0
    finally:
        connection.close()


class LatencyProbe:
    """GETs ``paths`` in turn, each on a new connection, every ``interval`` seconds, and keeps the timings."""

    def __init__(self, url: str, paths: list[str], *, interval: float = 0.02, timeout: float = 5.0) -> None:
        self.host, self.port = host_port(url)
        self.paths = paths
        self.interval = interval
        self.timeout = timeout
        self.samples: dict[str, list[float]] = {path: [] for path in paths}
        self.failures: dict[str, int] = {path: 0 for path in paths}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)

    def start(self) -> LatencyProbe:
        self._thread.start()
        return self

    def stop(self) -> LatencyProbe:
        self._stop.set()
        self._thread.join(timeout=self.timeout * len(self.paths) + 5)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in self.paths:
                seconds, status = timed_get(self.host, self.port, path, self.timeout)
                self.samples[path].append(seconds)
                if status != 200:
                    self.failures[path] += 1
            self._stop.wait(self.interval)


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]
