"""Read a run's images ahead of their turn, so its progress knows the whole size from the start.

A run of many images starts `--jobs` of them at once; the others wait. Their sizes are only
known once their manifests are read, so an overall progress bar counting only started images
grows as the run goes and its ETA means little. `ReadAhead` prepares the waiting items one at
a time in a background thread (for `bale archive`: the top manifest, whether it is already
archived, the child manifests), hands each result to `on_ready` (which reports the size), and
gives it to the item's own turn, which then reads nothing twice.

An item whose turn comes while it is being prepared waits for that preparation rather than
repeating it; an item already started is never prepared. A failure while preparing (a
`BaleError`) is the item's failure, as it would have been in its turn; any other error is
ignored here and the turn does the work itself. After `running` ends nothing more is
reported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pipeline.errors import BaleError

log = logging.getLogger("bale.readahead")

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item of the run


@dataclass
class Prepared(Generic[T]):
    """One item read ahead: what `prepare` returned or the failure it raised, and whether
    `on_ready` has had it (if not, the item's turn reports it)."""

    value: T | None = None
    error: BaleError | None = None
    reported: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ReadAhead(Generic[I, T]):
    def __init__(
        self,
        key: Callable[[I], str],
        prepare: Callable[[I], T],
        on_ready: Callable[[str, T], None],
    ) -> None:
        self._key = key
        self._prepare = prepare
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._slots: dict[str, Prepared[T]] = {}
        self._taken: set[str] = set()
        self._stopped = False

    @contextmanager
    def running(self, items: Iterable[I]) -> Iterator[ReadAhead[I, T]]:
        """Prepare `items` in the background while the block runs."""
        thread = threading.Thread(
            target=self._run, args=(list(items),), name="bale-readahead", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            with self._lock:
                self._stopped = True
            # Not joined: it may be inside a request; it reports and prepares nothing more.

    def take(self, item: I) -> Prepared[T]:
        """What was prepared for `item`, waiting if it is being prepared; empty when it was
        not. Each prepared item is given once."""
        key = self._key(item)
        with self._lock:
            self._taken.add(key)
            slot = self._slots.pop(key, None)
        if slot is None:
            return Prepared()
        with slot.lock:
            return slot

    def _run(self, items: list[I]) -> None:
        for item in items:
            key = self._key(item)
            with self._lock:
                if self._stopped:
                    return
                if key in self._taken or key in self._slots:
                    continue
                slot: Prepared[T] = Prepared()
                slot.lock.acquire()
                self._slots[key] = slot
            try:
                slot.value = self._prepare(item)
            except BaleError as exc:
                slot.error = exc
            except Exception:  # its own turn does the work again and reports what fails
                log.debug("reading %s ahead failed", key, exc_info=True)
            finally:
                slot.lock.release()
            with self._lock:
                if self._stopped:
                    return
                if slot.value is not None and key not in self._taken:
                    slot.reported = True
                    try:
                        self._on_ready(key, slot.value)
                    except Exception:
                        log.debug("reporting %s failed", key, exc_info=True)
