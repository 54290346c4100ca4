"""`docker-archive:` / `oci-archive:` as an `ImageDestination` of the copy engine.

The tar is the dual-format one `archive` composes in the bucket, written straight to its
location (a local file, stdout, or an S3/OSS object via a streaming multipart upload) with no
staging. A tar is sequential: the engine hands each blob's opener to `put_blob`, and `commit`
streams the tar in plan order, opening each blob when its turn comes (`TarStream`), so the
bytes are identical to what the tar planner gives and memory stays at one read's worth.

A blob corrupted on the way (a digest mismatch) cannot be taken back out of a stream already
sent, but a file or object only appears when complete: the whole tar is written again, up to
`retries` times. To stdout a mismatch is final.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

from pipeline.archive.tarplan import TarPlan, write_tar
from pipeline.archive.tarstream import TarStream
from pipeline.errors import DigestMismatch
from pipeline.image import BlobWrite
from pipeline.oci import Descriptor, RawManifest
from pipeline.refs import Reference
from pipeline.store.base import ObjectStore, Readable

log = logging.getLogger("bale.copy")


class TarDestination:
    """One image as a tar at `store`/`key` (both None: stdout), laid out by `tar`."""

    def __init__(
        self,
        reference: Reference,
        tar: TarPlan,
        store: ObjectStore | None,
        key: str | None,
        *,
        retries: int = 0,
    ) -> None:
        self._reference = reference
        self.tar = tar
        self._store = store
        self._key = key
        self._retries = retries
        self._openers: dict[str, Callable[[], Readable]] = {}
        self._lock = threading.Lock()

    @property
    def reference(self) -> Reference:
        return self._reference

    @property
    def blob_scope(self) -> str:
        """This one tar: no other image of a run writes into it."""
        return f"tar|{id(self)}"

    def begin(self, plan: object) -> None:
        pass

    def put_blob(
        self,
        descriptor: Descriptor,
        open_stream: Callable[[], Readable],
        *,
        mount_from: Reference | None = None,
    ) -> BlobWrite:
        """Keep the opener: the blob is read when the tar reaches it, in `commit`."""
        with self._lock:
            self._openers[descriptor.digest] = open_stream
        return BlobWrite("uploaded", descriptor.size)

    def has_manifest(self, digest: str, tag: str | None = None) -> bool:
        return True  # the tar plan holds every manifest already

    def put_manifest(self, raw: RawManifest, tag: str | None = None) -> None:
        raise AssertionError("a tar's manifests come from its plan")

    def _open(self, descriptor: Descriptor) -> Readable:
        return self._openers[descriptor.digest]()

    def commit(self) -> None:
        if self._store is None:
            out = sys.stdout.buffer
            write_tar(self.tar, out, self._open, verify=False)
            out.flush()
            return
        for attempt in range(1, self._retries + 2):
            stream = TarStream(self.tar, self._open)
            try:
                assert self._key is not None
                self._store.put_stream(self._key, stream, self.tar.total_size)
                return
            except DigestMismatch as exc:
                if attempt > self._retries:
                    raise
                log.warning(
                    "fetching %s again after %s (attempt %d/%d)",
                    stream.blob.digest if stream.blob is not None else "the tar",
                    exc,
                    attempt + 1,
                    self._retries + 1,
                )
            finally:
                stream.close()

    def abort(self, error: BaseException) -> None:
        pass  # nothing was written before `commit`
