"""Store keys: what a valid key is, and how a store's prefix joins it.

Keys come from validated references, but a store is also a public API: refusing `..`, empty
segments and leading slashes here means no backend can be talked into writing outside its
prefix (or, for local files, outside its directory).
"""

from __future__ import annotations

from pipeline.errors import StoreError


def check_key(key: str) -> str:
    """`key` unchanged if it is a valid object key, else StoreError."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise StoreError(f"invalid object key {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or "\x00" in segment:
            raise StoreError(f"invalid object key {key!r}")
    return key


def normalize_prefix(prefix: str) -> str:
    """A store prefix without surrounding slashes (`"/a/b/"` → `"a/b"`)."""
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
    return prefix


def join(prefix: str, key: str) -> str:
    """The full object name of `key` under `prefix`."""
    return f"{prefix}/{key}" if prefix else key


def strip(prefix: str, name: str) -> str:
    """The key of full object name `name` under `prefix` (inverse of `join`)."""
    if not prefix:
        return name
    return name[len(prefix) + 1 :]
