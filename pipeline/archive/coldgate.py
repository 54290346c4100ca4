"""When a blob may go cold: only once no tar being composed in this process copies from it.

An archive moves the layer blobs it wrote into their cold class after its tar is complete
(docs/lifecycle.md). Another image of the same run may share such a blob and still be composing
its tar from it, and an object in an archive class is no copy source: so the move waits until
the last tar that uses the blob is done (or given up), and is then made by that image.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable


class ColdGate:
    """Tars in progress per blob digest, and the moves waiting for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: Counter[str] = Counter()
        self._waiting: dict[str, Callable[[], object]] = {}

    def enter(self, digests: Iterable[str]) -> None:
        """A tar composed from `digests` begins (before it looks at their classes)."""
        with self._lock:
            self._users.update(set(digests))

    def leave(self, digests: Iterable[str]) -> list[Callable[[], object]]:
        """The tar is complete or abandoned: the moves now due, for the caller to make."""
        due = []
        with self._lock:
            for digest in set(digests):
                self._users[digest] -= 1
                if self._users[digest] <= 0:
                    del self._users[digest]
                    if digest in self._waiting:
                        due.append(self._waiting.pop(digest))
        return due

    def move(self, digest: str, move: Callable[[], object]) -> bool:
        """Make `move` now (True) when no tar uses `digest`, else leave it to the last one."""
        with self._lock:
            if self._users[digest] > 0:
                self._waiting[digest] = move
                return False
        move()
        return True
