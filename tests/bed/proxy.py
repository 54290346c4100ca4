"""A small HTTP/1.1 fault-injecting proxy for tests: sits between bale and a real server.

The client talks to the proxy as if it were the server (`http://127.0.0.1:<proxy port>`); the
proxy forwards each request to the upstream and streams the answer back, except where a `Fault`
matches the request:

- `DropAfter(n)`: forward the response head and `n` body bytes, then close the connection (a
  connection dropped mid-body: what resume-with-Range is for);
- `Delay(seconds)`: wait before forwarding the response;
- `Respond(status, headers, body)`: answer without asking the upstream (429 with Retry-After,
  503, ...);
- `StripHeader(name)`: forward the request without a header (a server that ignores `Range`).

Each fault fires `times` times (default once; None for always) on requests matching `method`
and `path` (a regex searched in the path). Every request is logged with its headers, so tests
can assert what reached the server (`proxy.requests`, `proxy.find(...)`).

It understands just enough HTTP: one request at a time per connection (no pipelining, which
urllib3 never does), bodies by Content-Length or chunked, responses without either read to EOF.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

_CHUNK = 256 * 1024


@dataclass
class Fault:
    """Base of the faults: which requests it applies to and how many more times it fires."""

    method: str | None = None
    path: str | None = None
    times: int | None = 1
    fired: int = 0

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], status: int | None
    ) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass
class DropAfter(Fault):
    """Close the connection after `after` bytes of a response body whose status is in
    `statuses` (by default only successful bodies: a 401 before the real answer is left alone)."""

    after: int = 0
    statuses: tuple[int, ...] = (200, 206)

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], status: int | None
    ) -> bool:
        return status in self.statuses and super().matches(method, path, headers, status)


@dataclass
class Delay(Fault):
    """Sleep `seconds` before the response is forwarded."""

    seconds: float = 0.0


@dataclass
class Respond(Fault):
    """Answer with this status, headers and body; the upstream never sees the request."""

    status: int = 503
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class StripHeader(Fault):
    """Remove a request header before forwarding (e.g. `Range`); fires only on requests that
    carry it."""

    header: str = "Range"

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], status: int | None
    ) -> bool:
        present = any(k.lower() == self.header.lower() for k in headers)
        return present and super().matches(method, path, headers, status)


@dataclass
class ProxiedRequest:
    """One request as the proxy saw it, with what it did about it.

    Logged as soon as the response head is known (so it is there by the time the client has
    the body); `body_bytes` is final once the body is forwarded, or the connection dropped.
    """

    method: str
    path: str
    headers: dict[str, str]
    status: int | None
    body_bytes: int
    """Response body bytes sent to the client."""
    fault: str | None

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class _Closed(Exception):
    pass


def _read_head(f: BinaryIO) -> list[bytes] | None:
    lines: list[bytes] = []
    while True:
        line = f.readline(65537)
        if not line:
            if lines:
                raise _Closed()
            return None
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line.rstrip(b"\r\n"))


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for raw in lines:
        name, _, value = raw.decode("latin-1").partition(":")
        out.append((name.strip(), value.strip()))
    return out


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name.lower():
            return value
    return None


def _head_bytes(first: str, headers: list[tuple[str, str]]) -> bytes:
    text = first + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return text.encode("latin-1")


class _Budget:
    """How many body bytes may still pass before a DropAfter closes the connection."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.sent = 0

    def send(self, sock: socket.socket, data: bytes) -> None:
        if self.limit is not None and self.sent + len(data) >= self.limit:
            allowed = self.limit - self.sent
            if allowed > 0:
                sock.sendall(data[:allowed])
                self.sent += allowed
            raise _Closed()
        sock.sendall(data)
        self.sent += len(data)


def _copy_body(
    src: BinaryIO,
    dst: socket.socket,
    headers: list[tuple[str, str]],
    budget: _Budget,
    *,
    to_eof: bool,
) -> None:
    """Forward one message body: by Content-Length, chunked, or (responses) to EOF."""
    if (_get(headers, "Transfer-Encoding") or "").lower() == "chunked":
        while True:
            size_line = src.readline(65537)
            if not size_line:
                raise _Closed()
            dst.sendall(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = src.readline(65537)
                    if not trailer:
                        raise _Closed()
                    dst.sendall(trailer)
                    if trailer in (b"\r\n", b"\n"):
                        return
            remaining = size
            while remaining:
                data = src.read(min(_CHUNK, remaining))
                if not data:
                    raise _Closed()
                budget.send(dst, data)
                remaining -= len(data)
            dst.sendall(src.readline(65537))  # the CRLF after the chunk
        return
    length = _get(headers, "Content-Length")
    if length is not None:
        remaining = int(length)
        while remaining:
            data = src.read(min(_CHUNK, remaining))
            if not data:
                raise _Closed()
            budget.send(dst, data)
            remaining -= len(data)
        return
    if to_eof:
        while True:
            data = src.read1(_CHUNK) if hasattr(src, "read1") else src.read(_CHUNK)
            if not data:
                raise _Closed()
            budget.send(dst, data)


class FaultProxy:
    """The proxy: `start()`, point the client at `host`, add faults, read `requests`."""

    def __init__(self, upstream: str, *, timeout: float = 30.0) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.timeout = timeout
        self.faults: list[Fault] = []
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- control -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def find(self, method: str | None = None, path: str | None = None) -> list[ProxiedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper())
                and (path is None or re.search(path, r.path))
            ]

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- serving -----------------------------------------------------------------------

    def _take(
        self,
        kind: type[Fault],
        method: str,
        path: str,
        headers: Mapping[str, str],
        status: int | None = None,
    ) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if isinstance(fault, kind) and fault.matches(method, path, headers, status):
                    fault.fired += 1
                    return fault
        return None

    def _log(self, entry: ProxiedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.timeout)
        try:
            if client.recv(1, socket.MSG_PEEK) == b"\x16":
                return  # a TLS ClientHello (a client probing https): plain HTTP only here
        except OSError:
            return
        cfile = client.makefile("rb")
        upstream: socket.socket | None = None
        ufile: BinaryIO | None = None
        try:
            while True:
                head = _read_head(cfile)
                if head is None:
                    return
                first = head[0].decode("latin-1")
                method, target, _version = ([*first.split(" ", 2), "", ""])[:3]
                headers = _parse_headers(head[1:])
                path = target.split("?", 1)[0]
                logged_headers = dict(headers)
                strip = self._take(StripHeader, method, path, logged_headers)
                if isinstance(strip, StripHeader):
                    headers = [(k, v) for k, v in headers if k.lower() != strip.header.lower()]
                respond = self._take(Respond, method, path, logged_headers)
                if isinstance(respond, Respond):
                    _copy_body(cfile, _NullSocket(), headers, _Budget(None), to_eof=False)
                    self._respond(client, method, target, logged_headers, respond)
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=self.timeout)
                    ufile = upstream.makefile("rb")
                assert ufile is not None
                upstream.sendall(_head_bytes(first, headers))
                _copy_body(cfile, upstream, headers, _Budget(None), to_eof=False)
                rhead = _read_head(ufile)
                if rhead is None:
                    return
                status_line = rhead[0].decode("latin-1")
                rheaders = _parse_headers(rhead[1:])
                status = int(status_line.split(" ", 2)[1])
                delay = self._take(Delay, method, path, logged_headers, status)
                if isinstance(delay, Delay):
                    time.sleep(delay.seconds)
                drop = self._take(DropAfter, method, path, logged_headers, status)
                budget = _Budget(drop.after if isinstance(drop, DropAfter) else None)
                fault = type(drop).__name__ if drop else (type(delay).__name__ if delay else None)
                if strip is not None:
                    fault = "StripHeader" if fault is None else f"StripHeader+{fault}"
                entry = ProxiedRequest(method, target, logged_headers, status, 0, fault)
                self._log(entry)
                client.sendall(_head_bytes(status_line, rheaders))
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                try:
                    if not no_body:
                        _copy_body(ufile, client, rheaders, budget, to_eof=True)
                finally:
                    entry.body_bytes = budget.sent
                if (_get(rheaders, "Connection") or "").lower() == "close":
                    return
        except (_Closed, OSError, ValueError, IndexError):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()

    def _respond(
        self,
        client: socket.socket,
        method: str,
        path: str,
        headers: dict[str, str],
        fault: Respond,
    ) -> None:
        reason = {429: "Too Many Requests", 503: "Service Unavailable"}.get(fault.status, "Fault")
        out = [(k, v) for k, v in fault.headers.items()]
        out.append(("Content-Length", str(len(fault.body))))
        self._log(ProxiedRequest(method, path, headers, fault.status, len(fault.body), "Respond"))
        client.sendall(_head_bytes(f"HTTP/1.1 {fault.status} {reason}", out))
        if method != "HEAD":
            client.sendall(fault.body)


class _NullSocket:
    """Where the body of a request answered by a `Respond` fault goes."""

    def sendall(self, data: bytes) -> None:
        pass
