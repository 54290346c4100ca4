"""A small HTTP/1.1 fault-injecting proxy for tests: sits between bale and a real server.

The client talks to the proxy as if it were the server (`http://127.0.0.1:<proxy port>`); the
proxy forwards each request to the upstream (a registry, moto_server, ...) and streams the
answer back, except where a `Fault` matches the request:

- `DropAfter(n)`: forward the response head and `n` body bytes, then close the connection (a
  connection dropped mid-body: what resume-with-Range is for);
- `ResetAfter(n)`: the same, but the close is a TCP reset (RST), as a load balancer sends;
- `Truncate(keep)`: a *well-formed* short answer: Content-Length says `keep`, `keep` bytes
  follow, and the connection stays usable (only a digest or size check can notice);
- `WrongLength(delta)`: Content-Length off by `delta` while the real body is sent whole, then
  the connection closes (more declared than sent: a short read; less: stray bytes after the
  message);
- `Corrupt(at)`: flip one byte of the response body (default: the middle);
- `Trickle(rate)`: send the body at `rate` bytes/s in small pieces (a slow, live link);
- `Delay(seconds)`: wait before forwarding the response (the upstream has acted already);
- `Stall(after, head)`: forward the response head and `after` body bytes (with `head`: only
  that many bytes of the head), then send nothing more, the connection open, for `seconds`
  or until `release()` (a registry that accepted and then hangs);
- `Hold(seconds, forward)`: wait before forwarding the request (the upstream has not seen it
  yet); with `forward=False` the request is then dropped, never reaching the upstream (what a
  client killed during the wait leaves behind); `release()` ends the wait early;
- `Respond(status, headers, body)`: answer without asking the upstream (429 with Retry-After,
  503, a 307 to another host, ...);
- `StripHeader(name)`: forward the request without a header (a server that ignores `Range`);
- `ResetRequest(after)`: reset the connection after `after` bytes of the *request* body (an
  upload cut mid-way);
- `CorruptRequest(at)`: flip one byte of the *request* body on its way to the upstream (an
  upload damaged in transit: what a store's checksum check must refuse).

Each fault fires `times` times (default once; None for always) on requests matching `method`,
`path` (a regex searched in the path) and `query` (a regex searched in the query string).
Every request is logged with its headers, so tests can assert what reached the server
(`proxy.requests`, `proxy.find(...)`), and every response body write is metered with its
time (`proxy.meter`, `proxy.bytes_between(t0, t1)`) so tests can measure rates as the wire saw
them. `sndbuf` shrinks the kernel send buffer towards the client, so that the meter runs at
most that many bytes ahead of what the client's socket has taken, and `meter_piece` writes (and
meters) bodies in pieces that small, so that short windows are not counted in 256 KiB steps.

It understands just enough HTTP: one request at a time per connection (no pipelining, which
urllib3 never does), bodies by Content-Length or chunked, responses without either read to EOF,
and `Expect: 100-continue` (answered by the proxy itself, as boto3 sends it on uploads).
"""

from __future__ import annotations

import bisect
import contextlib
import re
import socket
import socketserver
import struct
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
    query: str | None = None
    """A regex searched in the query string (`partNumber=2`), or None for any."""

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], status: int | None
    ) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass
class _BodyFault(Fault):
    """A fault on a response body; by default only on successful bodies (a 401 before the
    real answer is left alone)."""

    statuses: tuple[int, ...] = (200, 206)

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], status: int | None
    ) -> bool:
        return status in self.statuses and super().matches(method, path, headers, status)


@dataclass
class DropAfter(_BodyFault):
    """Close the connection after `after` bytes of a response body whose status is in
    `statuses`."""

    after: int = 0


@dataclass
class ResetAfter(DropAfter):
    """`DropAfter`, closing with a TCP reset instead of a FIN (`ConnectionResetError`)."""


@dataclass
class Truncate(_BodyFault):
    """Answer with only the first `keep` bytes, Content-Length rewritten to match; the rest of
    the upstream body is thrown away and the client's connection stays open for more requests."""

    keep: int = 0


@dataclass
class WrongLength(_BodyFault):
    """Declare Content-Length as the real length plus `delta`, send the real body, then close."""

    delta: int = 1


@dataclass
class Corrupt(_BodyFault):
    """Flip the byte at offset `at` of the body (None: the middle of a Content-Length body)."""

    at: int | None = None


@dataclass
class Trickle(_BodyFault):
    """Send the body at about `rate` bytes/s in `piece`-byte writes."""

    rate: float = 64 * 1024
    piece: int = 4096


@dataclass
class Stall(_BodyFault):
    """Send the head and `after` body bytes (or with `head`, that many bytes of the head only),
    then nothing, keeping the connection open, for `seconds` or until `release()`."""

    after: int = 0
    head: int | None = None
    seconds: float = 60.0
    released: threading.Event = field(default_factory=threading.Event, repr=False)

    def release(self) -> None:
        self.released.set()


@dataclass
class Delay(Fault):
    """Sleep `seconds` before the response is forwarded."""

    seconds: float = 0.0


@dataclass
class Hold(Fault):
    """Wait up to `seconds` before the request is forwarded (unlike `Delay`, where the
    upstream has already done the work); with `forward=False`, close the connection instead."""

    seconds: float = 0.0
    forward: bool = True
    released: threading.Event = field(default_factory=threading.Event, repr=False)

    def release(self) -> None:
        self.released.set()


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
class ResetRequest(Fault):
    """Reset the client's connection after `after` bytes of the request body were forwarded
    (the upstream sees a request cut short)."""

    after: int = 0


@dataclass
class CorruptRequest(Fault):
    """Flip the byte at offset `at` of the request body (None: the middle of a Content-Length
    body); fires only on requests that carry a body."""

    at: int | None = None

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], status: int | None
    ) -> bool:
        length = next((v for k, v in headers.items() if k.lower() == "content-length"), "0")
        chunked = any(
            k.lower() == "transfer-encoding" and v.lower() == "chunked" for k, v in headers.items()
        )
        has_body = chunked or int(length or 0) > 0
        return has_body and super().matches(method, path, headers, status)


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
    started: float = 0.0
    """`time.monotonic()` when the request head arrived."""
    finished: float | None = None
    """`time.monotonic()` when the response body was done (or cut)."""

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class _Closed(Exception):
    pass


class _Truncated(Exception):
    """A `Truncate` fault sent its bytes: drop the upstream connection, keep the client's."""


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


def _set(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k.lower() == name.lower() else v) for k, v in headers]


def _head_bytes(first: str, headers: list[tuple[str, str]]) -> bytes:
    text = first + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return text.encode("latin-1")


class _Budget:
    """What happens to the body bytes on their way: a limit after which the connection closes
    (or, with `truncate`, the message ends), a corrupted byte, a trickle, and the meter."""

    def __init__(
        self,
        limit: int | None,
        *,
        truncate: bool = False,
        corrupt_at: int | None = None,
        trickle: Trickle | None = None,
        meter: list[tuple[float, int]] | None = None,
        meter_lock: threading.Lock | None = None,
        piece: int | None = None,
    ) -> None:
        self.limit = limit
        self.truncate = truncate
        self.corrupt_at = corrupt_at
        self.trickle = trickle
        self.meter = meter
        self.meter_lock = meter_lock
        self.piece = piece
        self.sent = 0

    def send(self, sock: socket.socket | _NullSocket, data: bytes) -> None:
        if self.limit is not None and self.sent + len(data) >= self.limit:
            allowed = self.limit - self.sent
            if allowed > 0:
                self._out(sock, data[:allowed])
            raise _Truncated() if self.truncate else _Closed()
        self._out(sock, data)

    def _out(self, sock: socket.socket | _NullSocket, data: bytes) -> None:
        at = self.corrupt_at
        if at is not None and self.sent <= at < self.sent + len(data):
            i = at - self.sent
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        step = self.trickle.piece if self.trickle is not None else self.piece
        pieces = [data]
        if step:
            pieces = [data[i : i + step] for i in range(0, len(data), max(1, step))]
        for piece in pieces:
            if self.trickle is not None:
                time.sleep(len(piece) / self.trickle.rate)
            sock.sendall(piece)
            self.sent += len(piece)
            if self.meter is not None and self.meter_lock is not None:
                with self.meter_lock:
                    self.meter.append((time.monotonic(), len(piece)))


def _copy_body(
    src: BinaryIO,
    dst: socket.socket | _NullSocket,
    headers: list[tuple[str, str]],
    budget: _Budget,
    *,
    to_eof: bool,
    length: int | None = None,
) -> None:
    """Forward one message body: by Content-Length (or `length`), chunked, or (responses) to
    EOF."""
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
    declared = _get(headers, "Content-Length")
    if length is None and declared is not None:
        length = int(declared)
    if length is not None:
        remaining = length
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


def _reset(sock: socket.socket) -> None:
    """Close with RST: linger on, zero timeout."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """The proxy: `start()`, point the client at `host`, add faults, read `requests`."""

    def __init__(
        self,
        upstream: str,
        *,
        timeout: float = 30.0,
        sndbuf: int | None = None,
        meter_piece: int | None = None,
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.timeout = timeout
        self.sndbuf = sndbuf
        self.meter_piece = meter_piece
        self.faults: list[Fault] = []
        self.requests: list[ProxiedRequest] = []
        self.meter: list[tuple[float, int]] = []
        """(`time.monotonic()`, bytes) for every response-body write to a client."""
        self._meter_lock = threading.Lock()
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
        with self._meter_lock:
            self.meter.clear()

    def find(self, method: str | None = None, path: str | None = None) -> list[ProxiedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper())
                and (path is None or re.search(path, r.path))
            ]

    def bytes_between(self, start: float, end: float) -> int:
        """Response-body bytes written to clients in [start, end) (`time.monotonic()`)."""
        with self._meter_lock:
            samples = list(self.meter)
        times = [t for t, _ in samples]
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_left(times, end)
        return sum(n for _, n in samples[lo:hi])

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
        query: str,
        headers: Mapping[str, str],
        status: int | None = None,
    ) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if not isinstance(fault, kind):
                    continue
                if fault.query is not None and re.search(fault.query, query) is None:
                    continue
                if fault.matches(method, path, headers, status):
                    fault.fired += 1
                    return fault
        return None

    def _log(self, entry: ProxiedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.timeout)
        if self.sndbuf:
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        try:
            if client.recv(1, socket.MSG_PEEK) == b"\x16":
                return  # a TLS ClientHello (a client probing https): plain HTTP only here
        except OSError:
            return
        cfile = client.makefile("rb")
        upstream: socket.socket | None = None
        ufile: BinaryIO | None = None
        reset = False
        try:
            while True:
                head = _read_head(cfile)
                if head is None:
                    return
                started = time.monotonic()
                first = head[0].decode("latin-1")
                method, target, _version = ([*first.split(" ", 2), "", ""])[:3]
                headers = _parse_headers(head[1:])
                path, _, query = target.partition("?")
                logged_headers = dict(headers)

                def take(kind: type[Fault], status: int | None = None) -> Fault | None:
                    return self._take(kind, method, path, query, logged_headers, status)  # noqa: B023

                if (_get(headers, "Expect") or "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                strip = take(StripHeader)
                if isinstance(strip, StripHeader):
                    headers = [(k, v) for k, v in headers if k.lower() != strip.header.lower()]
                respond = take(Respond)
                if isinstance(respond, Respond):
                    _copy_body(cfile, _NullSocket(), headers, _Budget(None), to_eof=False)
                    self._respond(client, method, target, logged_headers, respond, started)
                    continue
                hold = take(Hold)
                if isinstance(hold, Hold):
                    hold.released.wait(hold.seconds)
                    if not hold.forward:
                        self._log(
                            ProxiedRequest(method, target, logged_headers, None, 0, "Hold", started)
                        )
                        return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=self.timeout)
                    ufile = upstream.makefile("rb")
                assert ufile is not None
                upstream.sendall(_head_bytes(first, headers))
                cut = take(ResetRequest)
                if isinstance(cut, ResetRequest):
                    self._log(
                        ProxiedRequest(
                            method, target, logged_headers, None, 0, "ResetRequest", started
                        )
                    )
                    with contextlib.suppress(_Closed):
                        _copy_body(cfile, upstream, headers, _Budget(cut.after), to_eof=False)
                    reset = True
                    return
                damage = take(CorruptRequest)
                damaged_at = None
                if isinstance(damage, CorruptRequest):
                    length = int(_get(headers, "Content-Length") or 0)
                    damaged_at = damage.at if damage.at is not None else length // 2
                request_budget = _Budget(None, corrupt_at=damaged_at)
                _copy_body(cfile, upstream, headers, request_budget, to_eof=False)
                rhead = _read_head(ufile)
                if rhead is None:
                    return
                status_line = rhead[0].decode("latin-1")
                rheaders = _parse_headers(rhead[1:])
                status = int(status_line.split(" ", 2)[1])
                fired: list[str] = ["StripHeader"] if strip is not None else []
                if damage is not None:
                    fired.append("CorruptRequest")
                if hold is not None:
                    fired.append("Hold")
                delay = take(Delay, status)
                if isinstance(delay, Delay):
                    fired.append("Delay")
                    time.sleep(delay.seconds)
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                declared = _get(rheaders, "Content-Length")
                real_length = int(declared) if declared is not None else None
                drop = take(DropAfter, status)
                stall = take(Stall, status) if drop is None else None
                truncate = take(Truncate, status) if not no_body else None
                wrong = take(WrongLength, status) if not no_body else None
                corrupt = take(Corrupt, status) if not no_body else None
                trickle = take(Trickle, status) if not no_body else None
                limit = drop.after if isinstance(drop, DropAfter) else None
                if isinstance(stall, Stall):
                    limit = stall.after
                if isinstance(truncate, Truncate) and real_length is not None:
                    rheaders = _set(rheaders, "Content-Length", str(truncate.keep))
                    limit = truncate.keep
                if isinstance(wrong, WrongLength) and real_length is not None:
                    rheaders = _set(rheaders, "Content-Length", str(real_length + wrong.delta))
                corrupt_at = None
                if isinstance(corrupt, Corrupt):
                    corrupt_at = corrupt.at if corrupt.at is not None else (real_length or 0) // 2
                for f in (drop, stall, truncate, wrong, corrupt, trickle):
                    if f is not None:
                        fired.append(type(f).__name__)
                budget = _Budget(
                    limit,
                    truncate=isinstance(truncate, Truncate) and drop is None,
                    corrupt_at=corrupt_at,
                    trickle=trickle if isinstance(trickle, Trickle) else None,
                    meter=self.meter,
                    meter_lock=self._meter_lock,
                    piece=self.meter_piece,
                )
                entry = ProxiedRequest(
                    method, target, logged_headers, status, 0, "+".join(fired) or None, started
                )
                self._log(entry)
                if isinstance(stall, Stall) and stall.head is not None:
                    client.sendall(_head_bytes(status_line, rheaders)[: stall.head])
                    stall.released.wait(stall.seconds)
                    return
                client.sendall(_head_bytes(status_line, rheaders))
                try:
                    if not no_body:
                        _copy_body(ufile, client, rheaders, budget, to_eof=True, length=real_length)
                except _Truncated:
                    # The client has a complete (short) message; the upstream still has the
                    # rest of the body on its connection, so that one goes.
                    with contextlib.suppress(OSError):
                        upstream.close()
                    upstream = ufile = None
                    continue
                except _Closed:
                    if isinstance(stall, Stall):
                        stall.released.wait(stall.seconds)
                    reset = isinstance(drop, ResetAfter)
                    raise
                finally:
                    entry.body_bytes = budget.sent
                    entry.finished = time.monotonic()
                if wrong is not None:
                    return  # the framing is broken: nothing more can follow on this connection
                if (_get(rheaders, "Connection") or "").lower() == "close":
                    return
        except (_Closed, OSError, ValueError, IndexError):
            return
        finally:
            for f in (cfile, ufile):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            if reset:
                _reset(client)
            for s in (client, upstream):
                if s is not None and not (reset and s is client):
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
        started: float,
    ) -> None:
        reason = {
            307: "Temporary Redirect",
            429: "Too Many Requests",
            503: "Service Unavailable",
        }.get(fault.status, "Fault")
        out = [(k, v) for k, v in fault.headers.items()]
        out.append(("Content-Length", str(len(fault.body))))
        self._log(
            ProxiedRequest(
                method,
                path,
                headers,
                fault.status,
                len(fault.body),
                "Respond",
                started,
                time.monotonic(),
            )
        )
        client.sendall(_head_bytes(f"HTTP/1.1 {fault.status} {reason}", out))
        if method != "HEAD":
            client.sendall(fault.body)


class _NullSocket:
    """Where the body of a request answered by a `Respond` fault goes."""

    def sendall(self, data: bytes) -> None:
        pass
