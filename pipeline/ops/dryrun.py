"""`--dry-run`: what `bale archive` / `bale run` would do, found with reads only.

The registry is asked for manifests (never blobs) and the store for HEADs and records; nothing
is written anywhere. Each image's result has status `planned` (or `skipped` when the real run
would skip it: already archived with the same digest) and these byte counts:

    bytes_downloaded          blob bytes that would come from the registry
    bytes_already_stored      blob bytes the store has, or that another image of this run
                              would bring (a blob shared by images moves once, as in a real run)
    bytes_uploaded            blob bytes that would go up, plus the tar bytes the client sends
                              (headers, index.json, manifest.json)
    bytes_copied_server_side  tar bytes composed from blobs already in the store

The tar figures assume the store composes ranges in place (local files, S3, OSS). On S3/OSS a
blob below the part-copy minimum is read and sent instead: a real run may move a little more.

A blob the store keeps in an archive class (not restored) cannot be copied into the tar: the
real run streams it from the source into a staging copy. Where the source is another store
that keeps it cold too, the real run would fail: the plan fails the image the
same way, naming the blobs and the `bale thaw` that unblocks it (docs/lifecycle.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.archive import layout
from pipeline.archive.bucket import BucketImage
from pipeline.archive.classes import store_scheme
from pipeline.archive.costs import bytes_by_class, monthly
from pipeline.archive.record import ImageRecord
from pipeline.archive.tarplan import to_compose_pieces
from pipeline.archive.tarstream import plan_resolved
from pipeline.copy.engine import CopyPlan, copy_image
from pipeline.copy.result import ImageResult
from pipeline.copy.session import RegistryOptions
from pipeline.errors import BaleError, ObjectFrozen
from pipeline.image import ImageSource
from pipeline.oci import Descriptor
from pipeline.ops.archive import ArchiveOptions, BucketWorker
from pipeline.refs import Reference
from pipeline.store.base import CopyRange
from pipeline.transports.bucket import BucketDestination
from pipeline.transports.dryrun import DryRunDestination


class Planner(BucketWorker):
    """Plans images into one bucket; `Archiver`'s signature, for `archive_many` and `run_plan`.
    `prices` (class -> price per GiB-month) makes each result carry bytes per class and a
    monthly estimate (archive/costs.py)."""

    prices: dict[str, float] | None = None

    def _image(
        self, ref: Reference, registry: RegistryOptions | None, options: ArchiveOptions
    ) -> ImageResult:
        """Failures (a missing image, an unreachable registry) are returned."""
        try:
            return self._plan(ref, registry, options)
        except BaleError as exc:
            return ImageResult(str(ref), "failed", error=str(exc).splitlines()[0])

    def _plan(
        self, ref: Reference, registry: RegistryOptions | None, options: ArchiveOptions
    ) -> ImageResult:
        source, _origin = self._open(ref, registry)
        top = source.manifest()
        digest = self._stored_digest(ref, top, options)
        if self._is_current(ref, digest, options):
            return self._done(ref, "skipped", top, digest)
        self._moved_from(ref, digest, options)  # --immutable refuses a moved tag here too
        resolved = self._resolve(source, options)
        stats = copy_image(
            source,
            DryRunDestination(BucketDestination(self.bucket, ref)),
            CopyPlan.of_resolved(resolved),
            session=self.session,
            report_size=False,
        )
        to_move, already = stats.bytes_uploaded, stats.bytes_skipped
        plan = plan_resolved(resolved, all_platforms=options.all_platforms, name=ref)
        self._check_suppliable(source, plan.blobs)
        pieces = to_compose_pieces(plan, layout.blob_key_for)
        copied = sum(p.size for p in pieces if isinstance(p, CopyRange))
        inline = sum(p.size for p in pieces if not isinstance(p, CopyRange))
        result = self._done(
            ref,
            "planned",
            top,
            digest,
            bytes_downloaded=to_move,
            bytes_uploaded=to_move + inline,
            bytes_already_stored=already,
            bytes_copied_server_side=copied,
        )
        if self.prices is not None:
            stored = [*resolved.blobs(), *(i.raw.descriptor() for i in resolved.images)]
            record = ImageRecord.build(
                ref, resolved.top, plan, stored=stored, storage_class=options.storage_classes
            )
            scheme = store_scheme(self.bucket.url)
            result.bytes_by_class = found = bytes_by_class(record, scheme)
            result.monthly_estimate = monthly(found, self.prices)
        return result

    def _check_suppliable(self, source: ImageSource, blobs: Sequence[Descriptor]) -> None:
        """ObjectFrozen when the tar would copy from blobs stored here in an archive class that
        the source (another store) cannot give either: the real run fails on them."""
        if not isinstance(source, BucketImage):
            return  # a registry or a tar gives its blobs: the real run stages them
        heads = self.bucket.blob_heads(blobs)
        frozen = [d for d in blobs if (info := heads.get(d.digest)) and info.frozen]
        there = source.bucket.blob_heads(frozen)
        stuck = {d.digest for d in frozen if (info := there.get(d.digest)) and info.frozen}
        if not stuck:
            return
        from pipeline.ops.thaw import thaw_command

        holders = [r.source for r in self.bucket.records() if stuck & {b.digest for b in r.blobs}]
        raise ObjectFrozen(
            f"{len(stuck)} blob(s) the tar copies are stored in an archive class in "
            f"{self.bucket.url} and {source.bucket.url} cannot give them "
            f"({', '.join(sorted(stuck))}): run `{thaw_command(holders or ['IMAGE'], self.bucket)}`"
            " first",
            key=layout.blob_key(min(stuck)),
        )
