"""Deterministic slices of a run, so N machines split a spec with no coordinator.

CLI spelling (`bale run --shard`, or `BALE_SHARD` in the environment):

    --shard 2/8     shard 2 of 8
    --shard 8       shard $JOB_COMPLETION_INDEX of 8 (also written `--shard /8`)

`I` is 0-based, `0 <= I < N`, because Kubernetes numbers the pods of an Indexed Job from 0
(`JOB_COMPLETION_INDEX=0..completions-1`): a Job with `completions: 8` and `--shard 8` covers
every image exactly once.

An image belongs to shard `int(sha256(str(ref))[:8 bytes]) % N`. The reference is the
normalised one (`docker.io/library/nginx:1.17.6`), so every machine, Python build and run agrees
(Python's own `hash()` is salted per process and cannot be used), and an image keeps its shard
when others are added to or removed from the spec.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import TypeVar

from pipeline.errors import UsageError
from pipeline.refs import Reference

INDEX_ENV = "JOB_COMPLETION_INDEX"

T = TypeVar("T")


def _integer(text: str, what: str, spec: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"invalid --shard {spec!r}: {what} must be a whole number, got {text!r}")
    return int(text)


def parse_shard(text: str, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """`"I/N"`, `"/N"` or `"N"` → `(I, N)`, `I` from `$JOB_COMPLETION_INDEX` when omitted."""
    environ = os.environ if env is None else env
    spec = text.strip()
    index_text, sep, count_text = spec.rpartition("/")
    if not sep:
        index_text, count_text = "", spec
    count = _integer(count_text, "N", text)
    if count < 1:
        raise UsageError(f"invalid --shard {text!r}: N must be at least 1")
    if index_text.strip():
        index = _integer(index_text, "I", text)
    else:
        from_env = environ.get(INDEX_ENV)
        if from_env is None or not from_env.strip():
            raise UsageError(
                f"--shard {text!r} gives no index and ${INDEX_ENV} is not set: use --shard I/N"
            )
        index = _integer(from_env, f"${INDEX_ENV}", text)
    if index >= count:
        raise UsageError(
            f"invalid --shard {text!r}: index {index} is out of range 0..{count - 1} "
            "(indexes start at 0)"
        )
    return index, count


def shard_of(ref: Reference, count: int) -> int:
    """Which of `count` shards an image belongs to."""
    digest = hashlib.sha256(str(ref).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(ref: Reference, index: int, count: int) -> bool:
    return shard_of(ref, count) == index


def _ref_of(item: object) -> Reference:
    if isinstance(item, Reference):
        return item
    ref = getattr(item, "ref", None)
    if isinstance(ref, Reference):
        return ref
    raise TypeError(
        f"cannot shard {type(item).__name__}: expected a Reference or an item with .ref"
    )


def select(images: Iterable[T], index: int, count: int) -> list[T]:
    """The items of shard `index`, in their original order.

    Items are `Reference`s or anything with a `.ref` (such as `SpecImage`). Strings are refused:
    `nginx` and `docker.io/library/nginx:latest` are one image but hash differently.
    """
    return [item for item in images if in_shard(_ref_of(item), index, count)]
