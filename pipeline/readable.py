"""`Readable`: the one stream shape every layer passes bytes through.

It sits below both the stores and the byte-moving code (pipeline/transfer/), which each
need it: defined in either, the stores (using transfer's retry policy and cancel token) and
transfer's readers would import each other.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Readable(Protocol):
    """Anything with `read(n)`: a file, an HTTP body, a verifying reader."""

    def read(self, n: int = -1, /) -> bytes: ...
