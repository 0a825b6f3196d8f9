"""The executor's HTTP side: the web page, ``/status``, ``/events``, ``/metrics``, ``/healthz``.

- ``/`` is a live view of the cluster (plain HTML, CSS and JavaScript shipped in the
  package, ``grain/executor/web/``; no build step, nothing fetched from elsewhere). It
  reads the same document as ``/status``, pushed by ``/events`` (server-sent events).
- ``/status`` is the JSON status document (``status.build_status``), built per request.
- ``/events`` sends that document once a second as an event stream. One document is built
  per interval however many pages watch, and each stream holds only a reference to it.
- ``/metrics`` is Prometheus text, read from the executor's counters at scrape time by a
  custom collector (``metrics.METRICS`` declares every family; docs/interfaces.md lists
  them).

Hardening: GET and HEAD only; a request's head is read within ``REQUEST_TIMEOUT`` seconds
and ``MAX_REQUEST`` bytes (a request body is never read); at most ``max_connections``
connections and ``max_streams`` event streams at once, each stream ends after
``stream_seconds`` (browsers reconnect by themselves) and is dropped when its reader
stops reading; the static files are a fixed set loaded at start (a path is looked up in a
dict, never joined to a directory); every response says its content type and
``nosniff``, the page a strict Content-Security-Policy.
"""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any

import msgspec
import trio

from ..net import transport
from ..net.endpoints import Endpoint, parse_endpoint
from . import history
from .core import Executor
from .metrics import METRICS_TYPE, exposition, registry_for
from .status import build_status_stepped

log = logging.getLogger("grain.executor")

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
#: a write that a reader does not take within this long ends its connection
SEND_TIMEOUT = 10.0

#: the web page's files: URL path -> (file in grain/executor/web, content type)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/chart.js": ("chart.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
ROUTES = "/ /status /events /metrics /healthz"
_json = msgspec.json.Encoder()


def _head(status: str, ctype: str, length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{size}"
            f"X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
            f"{extra}Connection: close\r\n\r\n").encode()


def _response(status: str, body: bytes, ctype: str, extra: str = "",
              head_only: bool = False) -> bytes:
    return _head(status, ctype, len(body), extra) + (b"" if head_only else body)


def _text(status: str, text: str, extra: str = "", head_only: bool = False) -> bytes:
    return _response(status, text.encode(), "text/plain; charset=utf-8", extra, head_only)


def load_static() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the package: URL path -> (bytes, content type)."""
    web = importlib.resources.files(__package__ or "grain.executor").joinpath("web")
    return {path: (web.joinpath(fname).read_bytes(), ctype)
            for path, (fname, ctype) in STATIC.items()}


class HttpServer:
    """Serves an executor's web page, status, event stream, metrics and health."""

    def __init__(self, executor: Executor, *, max_connections: int = 64,
                 max_streams: int = 16, stream_interval: float = 1.0,
                 stream_seconds: float = 300.0) -> None:
        self.executor = executor
        self.history = history.attach(executor)
        self._registry: Any = None   # prometheus_client's, made at the first scrape
        self.static = load_static()
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.stream_interval = stream_interval
        self.stream_seconds = stream_seconds
        self.connections = 0
        self.streams = 0
        self._doc: tuple[float, bytes] | None = None   # (when built, the status JSON)
        self._building: trio.Event | None = None
        self._builds = trio.CapacityLimiter(2)   # status documents being built at once
        self.bound: Endpoint | None = None

    # -- documents -------------------------------------------------------------------
    async def status_json(self) -> bytes:
        """A freshly built status document, as one line of JSON. Built in steps (other
        tasks run in between) and encoded by msgspec (a few ms for thousands of jobs)."""
        async with self._builds:
            return _json.encode(await build_status_stepped(self.executor))

    async def shared_status(self) -> bytes:
        """The status document for event streams: rebuilt at most once per half interval,
        shared by every stream (one build at a time; the others wait for it)."""
        while self._building is not None:
            await self._building.wait()
        now = trio.current_time()
        if self._doc is None or now - self._doc[0] >= self.stream_interval / 2:
            self._building = trio.Event()
            try:
                self._doc = (now, await self.status_json())
            finally:
                self._building.set()
                self._building = None
        return self._doc[1]

    async def route(self, path: str, head_only: bool = False) -> bytes:
        """The whole response to a GET (or HEAD) of ``path`` (not ``/events``)."""
        path = path.split("?", 1)[0]
        static = self.static.get(path)
        if static is not None:
            body, ctype = static
            policy = f"Content-Security-Policy: {PAGE_POLICY}\r\n" if ctype.startswith(
                "text/html") else ""
            return _response("200 OK", body, ctype,
                             policy + "Cache-Control: no-cache\r\n", head_only)
        if path == "/healthz":
            return _text("200 OK", "ok\n", head_only=head_only)
        if path == "/status":
            return _response("200 OK", await self.status_json(), "application/json",
                             "Cache-Control: no-store\r\n", head_only)
        if path == "/metrics":
            return _response("200 OK", exposition(self.registry), METRICS_TYPE,
                             "Cache-Control: no-store\r\n", head_only)
        return _text("404 Not Found", f"not found: try {ROUTES}\n", head_only=head_only)

    @property
    def registry(self) -> Any:
        """The Prometheus registry ``/metrics`` reads (prometheus_client, ~3 MiB, is
        loaded at the first scrape: an executor nobody scrapes does without it)."""
        if self._registry is None:
            self._registry = registry_for(self.executor)
        return self._registry

    # -- serving ---------------------------------------------------------------------
    async def serve(self, address: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``address`` (``HOST:PORT``) and serve until cancelled; also samples
        the executor's utilization once a second for the history."""
        ep = parse_endpoint(address if "://" in address else "grain://" + address, 8080)
        listeners, self.bound = await transport.open_listeners(ep)
        log.info("executor HTTP on http://%s:%d (%s)", self.bound.host, self.bound.port,
                 ROUTES)
        async with trio.open_nursery() as n:
            n.start_soon(self.history.sample_forever, self.executor)
            task_status.started(self.bound)
            await transport.serve(listeners, self._handle)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        if self.connections >= self.max_connections:
            await trio.aclose_forcefully(stream)   # over the cap: cheapest refusal
            return
        self.connections += 1
        try:
            await self._serve_one(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                OSError):
            pass
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_one(self, stream: trio.abc.Stream) -> None:
        data = b""
        with trio.move_on_after(REQUEST_TIMEOUT):
            while b"\r\n\r\n" not in data:
                if len(data) >= MAX_REQUEST:
                    await self._refuse(stream, _text("431 Request Header Fields Too Large",
                                                     "request head too large\n"))
                    return
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
        if b"\r\n\r\n" not in data:
            return   # too slow: closed without an answer
        line = data.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) != 3 or not line[2].startswith("HTTP/") or not line[1].startswith("/"):
            await self._refuse(stream, _text("400 Bad Request", "bad request line\n"))
        elif line[0] not in ("GET", "HEAD"):
            await self._refuse(stream, _text("405 Method Not Allowed", "GET or HEAD only\n",
                                             "Allow: GET, HEAD\r\n"))
        elif line[1].split("?", 1)[0] == "/events":
            await self._events(stream, head_only=line[0] == "HEAD")
        else:
            response = await self.route(line[1], head_only=line[0] == "HEAD")
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(response)

    @staticmethod
    async def _refuse(stream: trio.abc.Stream, response: bytes) -> None:
        """Send an error, then read (and drop) what the peer still sends, briefly: closing
        a socket with unread bytes resets it, and the peer would lose the answer."""
        with trio.fail_after(SEND_TIMEOUT):
            await stream.send_all(response)
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        with trio.move_on_after(1.0):
            drained = 0
            while drained < 4 * MAX_REQUEST:
                chunk = await stream.receive_some(MAX_REQUEST)
                if not chunk:
                    break
                drained += len(chunk)

    async def _events(self, stream: trio.abc.Stream, head_only: bool) -> None:
        """A server-sent event stream: the status document every ``stream_interval``."""
        if self.streams >= self.max_streams:
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(_text("503 Service Unavailable",
                                            "too many event streams; poll /status\n",
                                            "Retry-After: 5\r\n"))
            return
        head = _head("200 OK", "text/event-stream; charset=utf-8", None,
                     "Cache-Control: no-store\r\n")
        if head_only:
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(head)
            return
        self.streams += 1
        try:
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(head + b"retry: 2000\n\n")
            with trio.move_on_after(self.stream_seconds):
                while True:
                    # the JSON is one line (no newline inside), as an event's data must be
                    body = await self.shared_status()
                    with trio.fail_after(SEND_TIMEOUT):
                        await stream.send_all(b"event: status\ndata: " + body + b"\n\n")
                    await trio.sleep(self.stream_interval)
        finally:
            self.streams -= 1
