"""A planned tar as a pull stream: `read(n)` walks the plan, opening each blob when reached.

Stores consume streams by pulling (`put_stream` reads in the caller's thread), so the tar is
produced on demand with no staging and no extra thread; memory stays at one read's worth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pipeline.archive.tarplan import BlobSource, TarPlan, plan_image_tar
from pipeline.errors import TransferError, UsageError
from pipeline.image import ResolvedImage
from pipeline.oci import Descriptor
from pipeline.refs import Reference
from pipeline.store.base import Readable


class TarStream:
    """Readable over the bytes of `plan`; blobs come from `open_blob` (which must verify)."""

    def __init__(self, plan: TarPlan, open_blob: Callable[[Descriptor], Readable]) -> None:
        self.plan = plan
        self._open_blob = open_blob
        self._pieces: Iterator[bytes | BlobSource] = iter(plan.pieces())
        self._inline = memoryview(b"")
        self._blob: Readable | None = None
        self._blob_desc: Descriptor | None = None
        self._blob_left = 0
        self.position = 0

    @property
    def size(self) -> int:
        return self.plan.total_size

    @property
    def blob(self) -> Descriptor | None:
        """The blob being read (or last read): the one a failed read was in."""
        return self._blob_desc

    def _advance(self) -> bool:
        """Move to the next piece; False at the end of the tar."""
        self._close_blob()
        piece = next(self._pieces, None)
        if piece is None:
            return False
        if isinstance(piece, bytes):
            self._inline = memoryview(piece)
        else:
            self._blob_desc = piece.descriptor
            self._blob_left = piece.descriptor.size
            if self._blob_left:
                self._blob = self._open_blob(piece.descriptor)
        return True

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        while True:
            if self._inline:
                out = bytes(self._inline[:n])
                self._inline = self._inline[len(out) :]
                self.position += len(out)
                return out
            if self._blob is not None and self._blob_left:
                data = self._blob.read(min(n, self._blob_left))
                if not data:
                    desc = self._blob_desc
                    assert desc is not None
                    raise TransferError(
                        f"blob {desc.digest} ended after {desc.size - self._blob_left} of "
                        f"{desc.size} bytes"
                    )
                self._blob_left -= len(data)
                self.position += len(data)
                return data
            if not self._advance():
                return b""

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        """`read` into the caller's buffer: blob bytes go from their source straight there
        when it has `readinto` (a verifying reader), else through one `read`."""
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        while True:
            if self._inline:
                got = min(len(view), len(self._inline))
                view[:got] = self._inline[:got]
                self._inline = self._inline[got:]
                self.position += got
                return got
            if self._blob is not None and self._blob_left:
                want = min(len(view), self._blob_left)
                into = getattr(self._blob, "readinto", None)
                if into is not None:
                    got = into(view[:want])
                else:
                    data = self._blob.read(want)
                    got = min(len(data), want)
                    view[:got] = data[:got] if got < len(data) else data
                if not got:
                    desc = self._blob_desc
                    assert desc is not None
                    raise TransferError(
                        f"blob {desc.digest} ended after {desc.size - self._blob_left} of "
                        f"{desc.size} bytes"
                    )
                self._blob_left -= got
                self.position += got
                return got
            if not self._advance():
                return 0

    def _close_blob(self) -> None:
        if self._blob is not None:
            close = getattr(self._blob, "close", None)
            if close is not None:
                close()
        self._blob = None
        self._blob_desc = None

    def close(self) -> None:
        self._close_blob()


def plan_resolved(
    resolved: ResolvedImage, *, all_platforms: bool, name: Reference | None = None
) -> TarPlan:
    """The dual-format tar of a resolved image: the selected platform, or the whole index.

    `name` is what the tar calls the image (RepoTags, ref.name); default the source reference.
    An image with neither cannot be named in a tar (bad input: the caller asks for a name).
    """
    ref = name or resolved.reference
    if ref is None:
        raise UsageError("the image has no name to put in its tar: give one")
    if all_platforms:
        in_tar = [i.raw for i in resolved.images] + list(resolved.extra_manifests)
    elif resolved.is_index:
        in_tar = [resolved.selected[0].raw]
    else:
        in_tar = []
    return plan_image_tar(ref, resolved.top, in_tar, all_platforms=all_platforms)
