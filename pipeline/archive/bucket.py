"""The archive bucket: the registry's own storage layout plus per-image tars and records.

Writes follow the registry's order (blobs, layer links, manifests, revision links, tags, tar,
record) so a crash leaves only unreferenced blobs. Blobs are content-addressed and written
create-if-absent, which is what makes concurrent writers (shards) safe.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pipeline.archive import layout
from pipeline.archive.classes import StorageClasses, is_small
from pipeline.archive.coldgate import ColdGate
from pipeline.archive.record import ImageRecord
from pipeline.errors import StoreNotFound
from pipeline.image import MemoisedTopSource
from pipeline.oci import Descriptor, RawManifest, digest_hex, verify_digest
from pipeline.refs import Reference
from pipeline.store.base import (
    Composition,
    CopyRange,
    ObjectInfo,
    ObjectStore,
    Piece,
    Readable,
    WriteResult,
)
from pipeline.store.resume import ResumingRead
from pipeline.transfer.digest_stream import VerifyingReader
from pipeline.transfer.retry import RetryPolicy

_LINK_WRITERS = 8

STAGING_PREFIX = "staging/"
"""Hot copies of blobs stored cold, written while a tar is composed from them and deleted
once it is (docs/lifecycle.md); one left by a crash is garbage, never referenced."""


@dataclass(frozen=True)
class ArchivedImage:
    """One archived image as the store lists it: its record, the record's own key (a tag's
    earlier digests sit beside it under other keys), and the listing's record and tar objects
    (size, date, storage class); `tar` is None when the record's tar is not listed."""

    record: ImageRecord
    key: str
    info: ObjectInfo
    tar: ObjectInfo | None


class ArchiveBucket:
    """An `ObjectStore` seen as an archive: what is stored where, and in which order."""

    def __init__(
        self,
        store: ObjectStore,
        classes: StorageClasses | None = None,
        *,
        gate: ColdGate | None = None,
    ) -> None:
        self.store = store
        self.gate = gate or ColdGate()
        """Shared by every view of this bucket in the process (`with_classes`)."""
        self.classes = classes
        """Classes new objects go in (None: the store's default for all); layer blobs are
        written in the default class whatever it says, and moved by `chill` once the tar
        that copies them is complete (docs/lifecycle.md)."""
        self._small = store
        self._tars = store
        self._cold: ObjectStore | None = None
        if classes is not None:
            self._small = store.with_storage_class(classes.small)
            self._tars = store.with_storage_class(classes.tars)
            if classes.blobs is not None:
                self._cold = store.with_storage_class(classes.blobs)

    def with_classes(self, classes: StorageClasses | None) -> ArchiveBucket:
        """This bucket writing in `classes` (same store, same connections)."""
        if classes == self.classes:
            return self
        return ArchiveBucket(self.store, classes, gate=self.gate)

    @property
    def url(self) -> str:
        return self.store.url

    # -- blobs ---------------------------------------------------------------------------
    def has_blob(self, descriptor: Descriptor) -> bool:
        info = self.store.head(layout.blob_key(descriptor.digest))
        return info is not None and info.size == descriptor.size

    def put_blob(self, descriptor: Descriptor, stream: Readable) -> WriteResult:
        """Stream a blob in; `stream` must verify itself (the read reaching its size fails).
        A config goes in the small objects' class, a layer in the default class (see `chill`)."""
        store = self._small if is_small(descriptor.media_type) else self.store
        return store.put_stream(
            layout.blob_key(descriptor.digest), stream, descriptor.size, if_absent=True
        )

    def chill(self, descriptor: Descriptor) -> bool:
        """Move a layer blob this run wrote into the blobs' class by copying it onto its own
        key (CopyObject / UploadPartCopy with the new class): done after the tar that copies
        it is complete, since an archived object cannot be a copy source. True when moved."""
        if self._cold is None or is_small(descriptor.media_type):
            return False
        key = layout.blob_key(descriptor.digest)
        info = self.store.head(key)
        if info is None or info.storage_class == self._cold.storage_class:
            return False
        self._cold.compose(key, [CopyRange(key, 0, info.size)])
        return True

    def blob_heads(self, descriptors: Iterable[Descriptor]) -> dict[str, ObjectInfo | None]:
        """HEAD of each blob, several at a time: at the start of an archive, whether each of
        the tar's blobs is stored and whether it is frozen (a compose cannot copy from it).
        Empty for a local store, which has no archive class (its blobs are checked as they
        come)."""
        if self.store.url.startswith("file:"):
            return {}
        digests = sorted({d.digest for d in descriptors})
        if not digests:
            return {}
        with ThreadPoolExecutor(min(_LINK_WRITERS, len(digests)), "bale-head") as pool:
            infos = list(pool.map(lambda d: self.store.head(layout.blob_key(d)), digests))
        return dict(zip(digests, infos, strict=True))

    def staging_key(self, digest: str) -> str:
        return f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}/{digest_hex(digest)}"

    def holder(self, digest: str) -> ImageRecord | None:
        """An archived image that keeps blob `digest` (to name in a thaw command)."""
        for record in self.records():
            if any(b.digest == digest for b in record.blobs):
                return record
        return None

    def put_manifest(self, raw: RawManifest) -> WriteResult:
        return self._small.put(layout.blob_key(raw.digest), raw.data, if_absent=True)

    def read_blob(self, descriptor: Descriptor) -> bytes:
        data = self.store.read(layout.blob_key(descriptor.digest))
        verify_digest(data, descriptor.digest, f"{self.url} blob {descriptor.digest}")
        return data

    def open_blob(self, descriptor: Descriptor) -> Readable:
        """A verified stream of a blob that resumes where a broken GET stopped (a reset or
        truncated body costs what was not yet read, not the image)."""
        key = layout.blob_key(descriptor.digest)
        what = f"{self.url} blob {descriptor.digest}"
        policy = getattr(self.store, "retry", None)  # remote stores carry theirs
        retries = (policy if isinstance(policy, RetryPolicy) else RetryPolicy()).retries
        stream = ResumingRead(
            lambda at: self.store.open(key, start=at), descriptor.size, retries=retries, what=what
        )
        return VerifyingReader(stream, descriptor.digest, descriptor.size, what=what)

    def read_manifest(self, digest: str) -> RawManifest:
        data = self.store.read(layout.blob_key(digest))
        verify_digest(data, digest, f"{self.url} manifest {digest}")
        return RawManifest.from_bytes(data)

    # -- links and tags ------------------------------------------------------------------
    def _link(self, key: str, digest: str) -> None:
        # A link's body is its key's digest, but for a tag's current link, which a write-once
        # bucket never moves: there, one already written is left as it is.
        self._small.put(key, layout.link_body(digest), if_absent=self.write_once)

    def _links(self, links: list[tuple[str, str]]) -> None:
        """Write (key, digest) links, several at a time: an image of 40 layers is 40 small PUTs,
        a round trip each."""
        if len(links) <= 1:
            for key, digest in links:
                self._link(key, digest)
            return
        with ThreadPoolExecutor(min(_LINK_WRITERS, len(links)), "bale-link") as pool:
            for future in [pool.submit(self._link, key, digest) for key, digest in links]:
                future.result()

    def link_layers(self, repo: str, digests: Iterable[str]) -> None:
        self._links([(layout.layer_link_key(repo, d), d) for d in digests])

    def link_revisions(self, repo: str, digests: Iterable[str]) -> None:
        self._links([(layout.revision_link_key(repo, d), d) for d in digests])

    def tag(self, repo: str, tag: str, digest: str, *, current: bool = True) -> None:
        """The tag's index link, then (unless `current` is False: a write-once bucket keeps a
        tag where it is) its current link."""
        self._link(layout.tag_index_link_key(repo, tag, digest), digest)
        if current:
            self._link(layout.tag_current_link_key(repo, tag), digest)

    def tag_digest(self, repo: str, tag: str) -> str | None:
        """What the tag points at, or None when the bucket has no such tag."""
        try:
            body = self.store.read(layout.tag_current_link_key(repo, tag))
        except StoreNotFound:
            return None
        return body.decode("ascii").strip()

    # -- tars and records ----------------------------------------------------------------
    def start_tar(self, key: str, pieces: Sequence[Piece]) -> Composition:
        """The tar's compose, begun before its blobs are stored (see `Composition`)."""
        return self._tars.start_compose(key, pieces)

    def write_record(self, record: ImageRecord) -> None:
        self._small.put(record.record_key, record.to_json())

    def read_record(self, ref: Reference) -> ImageRecord | None:
        key = layout.record_key(
            ref.store_repo, tag=ref.tag if not ref.digest else None, digest=ref.digest
        )
        try:
            return ImageRecord.from_json(self.store.read(key))
        except StoreNotFound:
            return None

    def records(self, *, history: bool = False) -> Iterator[ImageRecord]:
        """The current image of every tag and digest, and with `history` the images moved
        tags had before (`ImageRecord.is_history`)."""
        for entry in self.archived(history=history):
            yield entry.record

    def archived(self, jobs: int = _LINK_WRITERS, *, history: bool = True) -> list[ArchivedImage]:
        """Every archived image, from one listing of `images/` (records read several at a
        time): what `ls` shows and `prune` decides on, with the listing's dates and classes.
        `history` includes the earlier images of moved tags (prune's rules apply to them too)."""
        infos = {info.key: info for info in self.store.list(layout.IMAGES_PREFIX)}
        keys = []
        for key in infos:
            parsed = layout.parse_image_key(key)
            if parsed is None or parsed.kind != "record" or (parsed.history and not history):
                continue
            keys.append(key)

        def read(key: str) -> ArchivedImage | None:
            try:
                record = ImageRecord.from_json(self.store.read(key))
            except StoreNotFound:
                return None  # removed since the listing
            return ArchivedImage(record, key, infos[key], infos.get(record.tar_key))

        with ThreadPoolExecutor(max(1, min(jobs, len(keys))), "bale-records") as pool:
            return [entry for entry in pool.map(read, keys) if entry is not None]

    # -- history: the earlier images of a moved tag (docs/layout.md) ---------------------
    @property
    def write_once(self) -> bool:
        """The store refuses to overwrite: a moved tag's new image then goes to its history
        path only and the tag's current keys stay. OSS WORM refuses overwrites; S3 Object Lock
        does not (an overwrite is a new version, the old one stays retained), so it is not
        write-once here. A store may also say so itself (`write_once`, as tests' do)."""
        if getattr(self.store, "write_once", False):
            return True
        return self.store.protection().kind == "worm"

    def read_history(self, repo: str, tag: str, digest: str) -> ImageRecord | None:
        """The tag's kept image of `digest`, when its record (written after its tar) is there."""
        try:
            data = self.store.read(layout.history_record_key(repo, tag, digest))
        except StoreNotFound:
            return None
        return ImageRecord.from_json(data)

    def keep_history(self, previous: ImageRecord) -> WriteResult | None:
        """Copy a tag's current tar and record to its history path before they are replaced.

        The tar goes first (a server-side copy in S3/OSS), the record after it, both
        create-if-absent: a history record that exists describes a complete tar, and one that
        a crashed run already wrote is never replaced by a current tar that may have changed
        since. Returns what copying the tar sent and copied; None when nothing was copied: the
        history record was there already, or the current tar is gone (the old image then stays
        reachable in the registry area only: its revision and tag index links).
        """
        kept = previous.as_history()
        if self.store.head(kept.record_key) is not None:
            return None
        info = self.store.head(previous.tar_key)
        if info is None:
            return None
        copy = [CopyRange(previous.tar_key, 0, info.size)]
        written = self.store.compose(kept.tar_key, copy, if_absent=True)
        self.store.put(kept.record_key, kept.to_json(), if_absent=True)
        return written

    def tags(self, repo: str) -> list[str]:
        """Tags the bucket holds for `repo` (store repo path), sorted."""
        keys = (info.key for info in self.store.list(layout.tags_prefix(repo)))
        return sorted(layout.tags_from_keys(repo, keys))

    def image(self, ref: Reference) -> BucketImage:
        return BucketImage(self, ref)


class BucketImage(MemoisedTopSource):
    """An archived image as an `ImageSource`: what `restore` and `inspect --from` read."""

    def __init__(self, bucket: ArchiveBucket, reference: Reference) -> None:
        super().__init__(reference)
        self.bucket = bucket

    def _read_manifest(self, digest: str) -> RawManifest:
        return self.bucket.read_manifest(digest)

    def _read_top(self) -> RawManifest:
        ref = self._reference
        top_digest = ref.digest or self.bucket.tag_digest(ref.store_repo, ref.tag or "latest")
        if top_digest is None:
            raise StoreNotFound(f"{ref} is not archived in {self.bucket.url}")
        try:
            return self.bucket.read_manifest(top_digest)
        except StoreNotFound:
            raise StoreNotFound(
                f"{ref}: manifest {top_digest} is missing from {self.bucket.url}"
            ) from None

    def blob(self, descriptor: Descriptor) -> bytes:
        return self.bucket.read_blob(descriptor)

    def open_blob(self, descriptor: Descriptor) -> Readable:
        return self.bucket.open_blob(descriptor)
