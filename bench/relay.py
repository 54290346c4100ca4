"""A TCP relay on loopback that counts bytes and can shape the link it stands for.

Put in front of the registry or the S3 server, it gives two things the bench needs:

- bytes on the wire, per direction, counted outside every contender (case d: what really moved);
- a slower link: `rate` caps the bytes per second of all connections together (a shared
  uplink, e.g. the registry shaped to the store's write rate), and `latency` with `window`
  models a long path: every chunk is delivered `latency` seconds after it was read, and at most
  `window` bytes are in flight per connection and direction, so one connection moves at most
  `window / latency` bytes per second, the way a TCP window caps one stream over a long RTT,
  and every request waits a round trip (2 x latency) for its first byte.

HTTP is not parsed: the relay is transparent to keep-alive, ranges and chunked bodies.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from dataclasses import dataclass

_CHUNK = 256 * 1024


class TokenBucket:
    """Bytes per second shared by every caller, with a burst of `burst` bytes."""

    def __init__(self, rate: float, burst: int = 1 << 20) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


@dataclass
class Counts:
    up: int = 0
    """Client to server (request bodies and heads)."""
    down: int = 0
    """Server to client."""
    connections: int = 0


class Relay:
    """`start()`, point a client at `host`, read `counts` (reset with `reset()`)."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float | None = None,
        latency: float = 0.0,
        window: int = 4 << 20,
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.latency = latency
        self.window = window
        self._buckets = {
            "up": TokenBucket(rate) if rate else None,
            "down": TokenBucket(rate) if rate else None,
        }
        self.counts = Counts()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def reset(self) -> Counts:
        """The counts so far, and start again from zero."""
        with self._lock:
            counts, self.counts = self.counts, Counts()
        return counts

    def start(self) -> Relay:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=30)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.counts.connections += 1
                self._open.update((client, server))
            pair = _Pair(self, client, server)
            for src, dst, direction in ((client, server, "up"), (server, client, "down")):
                threading.Thread(
                    target=pair.pump, args=(src, dst, direction), daemon=True, name="relay"
                ).start()

    def _count(self, direction: str, n: int) -> None:
        with self._lock:
            if direction == "up":
                self.counts.up += n
            else:
                self.counts.down += n

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(socks)


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, relay: Relay, client: socket.socket, server: socket.socket) -> None:
        self.relay = relay
        self.client = client
        self.server = server
        self._done = 0
        self._lock = threading.Lock()

    def pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            if self.relay.latency > 0:
                self._delayed(src, dst, direction)
            else:
                self._direct(src, dst, direction)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with self._lock:
                self._done += 1
                last = self._done == 2
            if last:
                for s in (self.client, self.server):
                    with contextlib.suppress(OSError):
                        s.close()
                self.relay._forget(self.client, self.server)

    def _direct(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        bucket = self.relay._buckets[direction]
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = src.recv_into(buf)
            if not n:
                return
            if bucket is not None:
                bucket.take(n)
            dst.sendall(view[:n])
            self.relay._count(direction, n)

    def _delayed(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        """A delay line: a reader stamps chunks, this thread sends each when its time comes;
        at most `window` bytes wait in the line (the reader blocks, as a full TCP window)."""
        relay = self.relay
        line: collections.deque[tuple[float, bytes]] = collections.deque()
        cond = threading.Condition()
        state = {"queued": 0, "eof": False}

        def reader() -> None:
            try:
                while True:
                    data = src.recv(_CHUNK)
                    with cond:
                        if not data:
                            state["eof"] = True
                            cond.notify_all()
                            return
                        while state["queued"] >= relay.window:
                            cond.wait()
                        line.append((time.monotonic() + relay.latency, data))
                        state["queued"] += len(data)
                        cond.notify_all()
            except OSError:
                with cond:
                    state["eof"] = True
                    cond.notify_all()

        threading.Thread(target=reader, daemon=True, name="relay-read").start()
        bucket = relay._buckets[direction]
        while True:
            with cond:
                while not line and not state["eof"]:
                    cond.wait()
                if not line:
                    return
                due, data = line.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if bucket is not None:
                bucket.take(len(data))
            dst.sendall(data)
            relay._count(direction, len(data))
            with cond:
                state["queued"] -= len(data)
                cond.notify_all()
