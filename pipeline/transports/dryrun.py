"""`--dry-run` as a destination: wraps a real one, asks it only what it holds (HEADs), writes
nothing, and counts what a real copy would move.

A blob the destination lacks is reported `uploaded` with its size as the bytes sent, without
opening the source; a blob it has is `exists`. Through the engine's `once`, a blob that
another image of the run would bring counts as present, as in a real run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pipeline.image import BlobWrite
from pipeline.oci import Descriptor, RawManifest
from pipeline.refs import Reference
from pipeline.store.base import Readable


class HasBlobs(Protocol):
    """What a dry run asks of the destination it wraps."""

    @property
    def reference(self) -> Reference: ...

    @property
    def blob_scope(self) -> str: ...

    def has_blob(self, descriptor: Descriptor) -> bool: ...


class DryRunDestination:
    def __init__(self, inner: HasBlobs) -> None:
        self.inner = inner

    @property
    def reference(self) -> Reference:
        return self.inner.reference

    @property
    def blob_scope(self) -> str:
        """Apart from the real transfers of the same run: a plan claims nothing real."""
        return f"dry-run|{self.inner.blob_scope}"

    def put_blob(
        self,
        descriptor: Descriptor,
        open_stream: Callable[[], Readable],
        *,
        mount_from: Reference | None = None,
    ) -> BlobWrite:
        if self.inner.has_blob(descriptor):
            return BlobWrite("exists")
        return BlobWrite("uploaded", descriptor.size)

    def has_manifest(self, digest: str, tag: str | None = None) -> bool:
        return True  # nothing is written: a manifest counts as there

    def put_manifest(self, raw: RawManifest, tag: str | None = None) -> None:
        raise AssertionError("a dry run writes no manifest")
