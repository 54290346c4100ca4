"""The archive bucket as an `ImageDestination` of the copy engine.

`archive` is a copy into a `BucketDestination` with a tar: its compose starts in `begin` (the
tar's parts go up while its blobs stream in), the layer links, manifests, revision links and
tag are written as the manifests land, and the tar is finished and the record written in
`commit`. So the bucket is written in the registry's own order (blobs, layer links, manifests
children first, revision links, tag, tar, record) and a crash or `abort` leaves no tag or
record pointing at missing data. Without a tar (a referrer stored next to its image) the
destination is the same minus the compose and the record.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.tarplan import TarPlan, to_compose_pieces
from pipeline.copy.engine import CopyPlan
from pipeline.copy.events import ImageEvents
from pipeline.errors import NotFound, ObjectFrozen, StoreNotFound
from pipeline.image import BlobWrite
from pipeline.oci import Descriptor, RawManifest
from pipeline.refs import Reference
from pipeline.store.base import Composition, ObjectInfo, Readable, WriteResult


class BucketDestination:
    """One image's repository in the archive bucket (`<host>/<repo>` under the registry
    layout), optionally with the image's tar at `layout.tar_key_for(reference)`.

    `rewrite`: write every manifest, link and tag even when present (archive refreshes them);
    `record`: written last, in `commit`; `events`/`name`: the phases an archive shows;
    `tar_key`: where the tar goes instead, and with it the tag gets only its index link (a
    moved tag's image on a write-once bucket goes to its history path, docs/layout.md).
    """

    def __init__(
        self,
        bucket: ArchiveBucket,
        reference: Reference,
        *,
        tar: TarPlan | None = None,
        record: Callable[[], object] | None = None,
        rewrite: bool = False,
        events: ImageEvents | None = None,
        name: str | None = None,
        tar_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self._tar_key = tar_key
        self._reference = reference
        self._tar_plan = tar
        self._record = record
        self._rewrite = rewrite
        self._events = events
        self._name = name or str(reference)
        self._plan: CopyPlan | None = None
        self._tar: Composition | None = None
        self._linked = False
        self._pending: list[str] = []
        self._uploaded: list[Descriptor] = []
        self._entered = False
        self._heads: dict[str, ObjectInfo | None] = {}
        """The tar's blobs as `begin` found them (remote stores)."""
        self._staged: dict[str, str] = {}
        """Digest → staging key of each blob stored cold that the tar copies from a hot copy
        streamed from the source instead (docs/lifecycle.md)."""
        self.written: WriteResult | None = None
        """What finishing the tar sent and copied server-side (after `commit`)."""

    @property
    def reference(self) -> Reference:
        return self._reference

    @property
    def repo(self) -> str:
        return self._reference.store_repo

    @property
    def blob_scope(self) -> str:
        """The whole bucket: a blob shared by two repositories is stored once. Not when this
        tar stages cold blobs: each image streams those into its own staging copy, so another
        image of the run moving the same digest must not stand in for it."""
        return f"{self.bucket.url}#{id(self)}" if self._staged else self.bucket.url

    def _phase(self, phase: str) -> None:
        if self._events is not None:
            self._events.on_image_phase(self._name, phase)

    # -- the engine's lifetime ----------------------------------------------------------
    def begin(self, plan: CopyPlan) -> None:
        self._plan = plan
        if self._tar_plan is not None:
            self.bucket.gate.enter(d.digest for d in self._tar_plan.blobs)
            self._entered = True
            self._heads = self.bucket.blob_heads(self._tar_plan.blobs)
            frozen = sorted(
                {d.digest for d in self._tar_plan.blobs if self._stored(d, frozen=True)}
            )
            self._staged = {d: self.bucket.staging_key(d) for d in frozen}

            def key_for(desc: Descriptor) -> str:
                return self._staged.get(desc.digest) or layout.blob_key_for(desc)

            pieces = to_compose_pieces(self._tar_plan, key_for)
            tar = self.bucket.start_tar(
                self._tar_key or layout.tar_key_for(self._reference), pieces
            )
            self._tar = tar.__enter__()

    def commit(self) -> None:
        tar, self._tar = self._tar, None
        if tar is not None:
            self._phase("composing the tar")
            try:
                self.written = tar.finish()
            except BaseException as exc:
                tar.__exit__(type(exc), exc, exc.__traceback__)
                self._unstage()
                self._leave()
                raise
            tar.__exit__(None, None, None)
            self._unstage()
        due = self._leave()
        classes = self.bucket.classes
        if due or (self._uploaded and classes is not None and classes.blobs):
            # Before the record: a crash here leaves at worst a blob in the hot class. A blob
            # another tar of the run still copies from is moved when that tar is done.
            self._phase(f"moving blobs to {classes.blobs if classes else 'their class'}")
            for descriptor in self._uploaded:
                self.bucket.gate.move(descriptor.digest, partial(self.bucket.chill, descriptor))
            for move in due:
                move()
        if self._record is not None:
            self._phase("writing the record")
            self._record()

    def abort(self, error: BaseException) -> None:
        """The tar's compose is abandoned (no object, no open upload); what was stored stays
        unreferenced for gc."""
        tar, self._tar = self._tar, None
        if tar is not None:
            tar.__exit__(type(error), error, error.__traceback__)
        self._unstage()
        self._leave()  # moves left to this tar stay undone: those blobs stay hot

    def _leave(self) -> list[Callable[[], object]]:
        if not self._entered or self._tar_plan is None:
            return []
        self._entered = False
        return self.bucket.gate.leave(d.digest for d in self._tar_plan.blobs)

    def _unstage(self) -> None:
        staged, self._staged = self._staged, {}
        for key in staged.values():
            self.bucket.store.delete(key)

    # -- blobs --------------------------------------------------------------------------
    def put_blob(
        self,
        descriptor: Descriptor,
        open_stream: Callable[[], Readable],
        *,
        mount_from: Reference | None = None,
    ) -> BlobWrite:
        """Stream a blob in unless the bucket has it (verified before it becomes visible);
        the stream passes through the tar's compose, which keeps the bytes its own parts need
        and hears at once that the blob is stored."""
        if descriptor.digest in self._staged:
            result = self._stage(descriptor, open_stream)
        elif self._stored(descriptor):
            result = BlobWrite("exists")
        else:
            key = layout.blob_key_for(descriptor)
            stream = opened = open_stream()
            if self._tar is not None:
                stream = self._tar.capture(key, opened)
            try:
                written = self.bucket.put_blob(descriptor, stream)
                if self._tar is not None:
                    self._tar.stored(key, stream)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            result = BlobWrite("uploaded" if written.written else "exists", written.sent)
            if written.written:
                self._uploaded.append(descriptor)
        if self._plan is None:  # outside a copy: link at once
            self.bucket.link_layers(self.repo, [descriptor.digest])
        return result

    def _stored(self, descriptor: Descriptor, *, frozen: bool = False) -> bool:
        """The bucket has the blob (and with `frozen`, only in an archive class, unrestored),
        from the HEADs `begin` made where it made them."""
        if descriptor.digest not in self._heads:
            return not frozen and self.bucket.has_blob(descriptor)
        info = self._heads[descriptor.digest]
        if info is None or info.size != descriptor.size:
            return False
        return info.frozen or not frozen

    def _stage(self, descriptor: Descriptor, open_stream: Callable[[], Readable]) -> BlobWrite:
        """A blob the store keeps cold, streamed from the source into a hot copy the tar is
        composed from (the stored blob stays as it is); a source that cannot give it (an
        archive that has it cold too) fails the image naming the thaw that unblocks it."""
        assert self._tar is not None
        key = self._staged[descriptor.digest]
        stream: Readable | None = None
        try:
            stream = self._tar.capture(key, open_stream())
            written = self.bucket.store.put_stream(key, stream, descriptor.size)
            self._tar.stored(key, stream)
        except (ObjectFrozen, StoreNotFound, NotFound) as exc:
            holder = self.bucket.holder(descriptor.digest)
            thaw = f"bale thaw {holder.source if holder else 'IMAGE'} --from {self.bucket.url}"
            raise ObjectFrozen(
                f"blob {descriptor.digest} is stored in an archive class in {self.bucket.url} "
                f"and the source cannot give it ({str(exc).splitlines()[0]}): run `{thaw}` "
                "first",
                key=layout.blob_key(descriptor.digest),
            ) from exc
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return BlobWrite("exists", written.sent)

    def has_blob(self, descriptor: Descriptor) -> bool:
        return self.bucket.has_blob(descriptor)

    def blob_ready(self, descriptor: Descriptor) -> None:
        if self._tar is not None and descriptor.digest not in self._staged:
            self._tar.stored(layout.blob_key_for(descriptor))

    # -- manifests ----------------------------------------------------------------------
    def has_manifest(self, digest: str, tag: str | None = None) -> bool:
        if self._rewrite:
            return False
        store = self.bucket.store
        if store.head(layout.revision_link_key(self.repo, digest)) is None:
            return False
        if store.head(layout.blob_key(digest)) is None:
            return False
        return tag is None or self.bucket.tag_digest(self.repo, tag) == digest

    def put_manifest(self, raw: RawManifest, tag: str | None = None) -> None:
        """In a copy, the layer links go before the first manifest and the revision links of
        all the plan's manifests after the last (the top), then its tag."""
        plan = self._plan
        if plan is not None and not self._linked:
            self._linked = True
            self._phase("writing links")
            self.bucket.link_layers(self.repo, (d.digest for d in plan.blobs))
            self._phase("writing manifests")
        self.bucket.put_manifest(raw)
        self._pending.append(raw.digest)
        if plan is not None and raw.digest != plan.top.digest:
            return
        self.bucket.link_revisions(self.repo, self._pending)
        self._pending = []
        if tag is not None:
            self.bucket.tag(self.repo, tag, raw.digest, current=self._tar_key is None)
