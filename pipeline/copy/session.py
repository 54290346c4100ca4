"""What one invocation shares across images: options, registry clients, the blob pool.

A run of many images keeps one client per registry (connection pools and tokens are reused),
one bounded pool of blob transfers (`--jobs` is a global bound, not per image) and one rate
limiter (`--limit-rate` caps the whole process).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar, cast

from pipeline.errors import NotFound, StoreNotFound
from pipeline.registry.client import RegistryClient
from pipeline.registry.transport import READ_TIMEOUT, ConnectionOptions, RegistryOptions
from pipeline.transfer import cancel
from pipeline.transfer.ratelimit import make_limiter
from pipeline.transfer.retry import RetryPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class TransferOptions:
    jobs: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limit_rate: int | None = None
    """Total bytes per second across all transfers of the process; None for no cap."""
    range_streams: int = field(default_factory=lambda: _env_int("BALE_RANGE_STREAMS", 4))
    """Parallel `Range` GETs for each large blob (1 turns it off); `BALE_RANGE_STREAMS`."""
    read_timeout: float = READ_TIMEOUT
    """Seconds without a byte from a registry before a request counts as stalled."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


class TagListings:
    """Tag lists read once per repository for a whole run (held by its `Session`): archiving or
    restoring 500 tags of a repository lists its tags once, not 500 times. A new run lists
    afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: dict[tuple[str, str], frozenset[str]] = {}

    def get(self, key: tuple[str, str], load: Callable[[], Iterable[str]]) -> frozenset[str]:
        """The tags under `key` (where, repository), from `load()` the first time."""
        with self._lock:
            found = self._tags.get(key)
        if found is None:
            try:
                found = frozenset(load())
            except (NotFound, StoreNotFound):
                found = frozenset()
            with self._lock:
                found = self._tags.setdefault(key, found)
        return found

    def put(self, key: tuple[str, str], tags: Iterable[str]) -> None:
        """A listing the run already made (sync lists a repository to find its images)."""
        with self._lock:
            self._tags.setdefault(key, frozenset(tags))


class Session:
    """Shared machinery for one command: clients per registry, blob pool, rate limiter."""

    def __init__(self, transfer: TransferOptions | None = None) -> None:
        self.transfer = transfer or TransferOptions()
        if self.transfer.jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.limiter = make_limiter(self.transfer.limit_rate)
        self.pool = ThreadPoolExecutor(self.transfer.jobs, thread_name_prefix="bale-blob")
        self._clients: dict[tuple[str, RegistryOptions], RegistryClient] = {}
        self._lock = threading.Lock()
        self._once: dict[str, Future[object]] = {}
        self.listings = TagListings()
        """Tag lists read in this run, by (registry or store, repository)."""

    def client(self, registry: str, options: RegistryOptions | None = None) -> RegistryClient:
        options = options or RegistryOptions()
        key = (registry, options)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = RegistryClient(
                    registry,
                    ConnectionOptions(
                        options,
                        retry=self.transfer.retry,
                        read_timeout=self.transfer.read_timeout,
                        limiter=self.limiter,
                        pool_size=max(16, self.transfer.jobs * 2 + self.transfer.range_streams),
                        range_streams=self.transfer.range_streams,
                    ),
                )
                self._clients[key] = client
            return client

    def once(self, key: str, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` in the blob pool at most once per key at a time; failures are forgotten.

        Two images sharing a layer wait on the same transfer instead of both downloading it;
        a failed transfer is dropped so that a later image (or a retry) tries again. A transfer
        still queued when a signal cancels the run does not start (not even its first request).
        """

        def checked() -> T:
            cancel.check()
            return fn()

        with self._lock:
            held = self._once.get(key)
            if held is not None and not (held.done() and held.exception() is not None):
                return cast("Future[T]", held)  # the key names one transfer, of one type
            fut = self.pool.submit(checked)
            self._once[key] = cast("Future[object]", fut)
        return fut

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
