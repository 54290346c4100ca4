"""`bale archive`: registry → content-addressed bucket → per-image tar → record.

An archive is the one copy engine (`pipeline/copy/engine.py`) into a `BucketDestination`
(`pipeline/transports/bucket.py`); this module decides what to archive (skips, read-ahead,
which manifests an index keeps) and turns the engine's counts into the image's result.

The order of writes is the registry's own and is what makes a crash harmless: blobs first
(each verified before it becomes visible), then layer links, manifests (children before the
index), revision links, tags, the tar, and the record last. A tag or record therefore never
points at data that is not there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Protocol

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.classes import StorageClasses
from pipeline.archive.record import ImageRecord
from pipeline.archive.tarplan import TarPlan
from pipeline.archive.tarstream import plan_resolved
from pipeline.copy.engine import CopyPlan, CopyStats, copy_image
from pipeline.copy.events import image_events
from pipeline.copy.result import ImageResult, Status
from pipeline.copy.session import RegistryOptions, Session
from pipeline.errors import BaleError, TagImmutable, UsageError
from pipeline.image import ImageSource, ResolvedImage, resolve_image, select_platforms
from pipeline.oci import ImageIndex, Platform, RawManifest
from pipeline.ops.copy import archive_image, open_archive
from pipeline.ops.readahead import ReadAhead
from pipeline.refs import Reference
from pipeline.registry.source import RegistrySource
from pipeline.store.encryption import NONE, Encryption
from pipeline.store.url import parse_location
from pipeline.transfer.progress import TransferEvents
from pipeline.transfer.retry import RetryPolicy
from pipeline.transports.bucket import BucketDestination
from pipeline.transports.names import ArchiveTransport

log = logging.getLogger("bale.archive")


@dataclass(frozen=True)
class ArchiveOptions:
    platform: Platform | None = None
    """Tar this platform (and, when given, store only it); default linux/amd64 or the first."""
    all_platforms: bool = False
    force: bool = False
    """Rewrite the tar and record even when the digest is already archived."""
    referrers: bool = True
    """Also store the image's signatures and attestations (cosign tags, OCI referrers)."""
    immutable: bool = False
    """A tag archived with another digest is refused, never moved (Harbor's, ECR's rule)."""
    storage_classes: StorageClasses | None = None
    """Classes to write in, checked against the store already (`StorageClasses.checked`)."""


@dataclass
class _Counts:
    downloaded: int = 0
    uploaded: int = 0
    already: int = 0
    copied: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        with self.lock:
            for name, n in amounts.items():
                setattr(self, name, getattr(self, name) + n)


@dataclass(frozen=True)
class NamedSource:
    """An image to archive that is read from elsewhere than the registry its name says (an
    image of a tar, an image archived in another store)."""

    source: ImageSource
    origin: str
    """What it was read from, for the record (`docker-archive:/abs/x.tar`)."""


SourceFinder = Callable[[Reference], NamedSource | None]
"""The source of an image to archive, when that is not its registry (None: the registry)."""


def tar_sources(
    transport: ArchiveTransport,
    name: Reference | None = None,
    *,
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
    encryption: Encryption = NONE,
) -> dict[Reference, NamedSource]:
    """The images of a tar to archive, by the names they are archived under.

    Each image of the tar goes in under every full name it carries (RepoTags, the
    `ref.name` / containerd annotations), or only the one `LOCATION:REF` picks; `name` (the
    command's `--name`) names the one image of a tar instead. An image with no name, or
    `name` with several images, is bad input: said here, before anything is written.
    """
    archive = open_archive(
        transport.location, endpoint_url=endpoint_url, retry=retry, encryption=encryption
    )
    origin = transport.location
    if not transport.is_stdio:
        origin = str(parse_location(transport.location))  # in full: s3://…, /abs/path
    origin = str(replace(transport, location=origin))
    picked = transport.name
    if picked is not None:
        images = [archive_image(archive, picked)]
    else:
        images = [archive_image(archive, f"@{i}") for i in range(len(archive.entries))]
    if name is not None:
        if len(images) != 1:
            raise UsageError(
                f"{transport} holds {len(images)} images and --name names one: pick it as "
                f"{transport.format}:LOCATION:REF or @N"
            )
        return {name: NamedSource(images[0], origin)}
    sources: dict[Reference, NamedSource] = {}
    for position, image in enumerate(images):
        if picked is not None and ("/" in picked or ":" in picked) and picked[0] != "@":
            refs = [Reference.parse(picked, default_tag=None)]
        else:
            refs = image.references
        if not refs:
            which = picked or f"@{position}"
            raise UsageError(
                f"the image {which} of {transport} has no name (no RepoTags or "
                "org.opencontainers.image.ref.name): give one with --name REPO:TAG"
            )
        for ref in refs:
            if ref.tag is None and ref.digest is None:
                ref = ref.with_tag("latest")  # as a bare IMAGE argument means
            sources.setdefault(ref, NamedSource(image, origin))
    return sources


def bucket_sources(bucket: ArchiveBucket) -> SourceFinder:
    """Images read as they are archived in another store (what `restore` reads), each
    record naming that store as its origin."""
    return lambda ref: NamedSource(bucket.image(ref), bucket.url)


class BucketWorker:
    """What `Archiver` and `dryrun.Planner` share, so a dry run decides as a real one would:
    one bucket and session, the per-image events and timing, which images are skipped, and
    which manifests are resolved."""

    def __init__(
        self,
        bucket: ArchiveBucket,
        session: Session,
        events: TransferEvents | None = None,
        *,
        sources: SourceFinder | None = None,
    ) -> None:
        self.bucket = bucket
        self.session = session
        self.events = image_events(events)
        self.sources = sources

    def _open(
        self, ref: Reference, registry: RegistryOptions | None
    ) -> tuple[ImageSource, str | None]:
        """Where `ref` is read from, and the origin its record names (None: its registry)."""
        named = self.sources(ref) if self.sources is not None else None
        if named is not None:
            return named.source, named.origin
        return RegistrySource(self.session.client(ref.registry, registry), ref), None

    def archive(
        self,
        ref: Reference,
        registry: RegistryOptions | None = None,
        options: ArchiveOptions | None = None,
    ) -> ImageResult:
        """One image; failures are returned in the result, not raised."""
        started = time.monotonic()
        self.events.on_image_start(str(ref))
        result = self._image(ref, registry, options or ArchiveOptions()).after_signal()
        result.seconds = round(time.monotonic() - started, 3)
        self.events.on_image_done(result)
        return result

    def _image(
        self, ref: Reference, registry: RegistryOptions | None, options: ArchiveOptions
    ) -> ImageResult:
        raise NotImplementedError

    def _stored_digest(self, ref: Reference, top: RawManifest, options: ArchiveOptions) -> str:
        """What the tag and record will name: `top` itself, or the one platform's manifest when
        `--platform` alone drops the index (as `_resolve` does), read from the index at hand."""
        if options.platform is None or options.all_platforms:
            return top.digest
        index = top.parse()
        if not isinstance(index, ImageIndex):
            return top.digest
        return select_platforms(index, options.platform, what=str(ref))[0].digest

    def _done(
        self,
        ref: Reference,
        status: Status,
        top: RawManifest,
        digest: str,
        *,
        bytes_downloaded: int = 0,
        bytes_uploaded: int = 0,
        bytes_already_stored: int = 0,
        bytes_copied_server_side: int = 0,
        tar_key: str | None = None,
    ) -> ImageResult:
        """The result of an image whose digest is known, naming its tar in full."""
        tar_key = tar_key or layout.tar_key_for(ref)
        return ImageResult(
            str(ref),
            status,
            digest=digest,
            source_digest=top.digest if top.digest != digest else None,
            tar_key=tar_key,
            destination=self.bucket.store.describe(tar_key),
            bytes_downloaded=bytes_downloaded,
            bytes_uploaded=bytes_uploaded,
            bytes_already_stored=bytes_already_stored,
            bytes_copied_server_side=bytes_copied_server_side,
        )

    def sizes_ahead(
        self,
        images: list[tuple[Reference, RegistryOptions | None]],
        options: ArchiveOptions | None = None,
    ) -> AbstractContextManager[object]:
        """While the block runs, read waiting images ahead of their turn (see `Archiver`)."""
        return nullcontext()

    def _is_current(self, ref: Reference, digest: str, options: ArchiveOptions) -> bool:
        """Archived with this digest and its tar there: skipped, unless --force. On a
        write-once bucket, a moved tag's image kept at its history path counts too."""
        if options.force:
            return False
        record = self.bucket.read_record(ref)
        if record is not None and record.digest != digest and self.bucket.write_once:
            record = self.bucket.read_history(ref.store_repo, ref.tag or "latest", digest)
        if record is None or record.digest != digest:
            return False
        return self.bucket.store.head(record.tar_key) is not None

    def _moved_from(
        self, ref: Reference, digest: str, options: ArchiveOptions
    ) -> ImageRecord | None:
        """The tag's current record when the tag now names another digest (None: a new tag,
        the same image, or a digest reference). With `immutable` that is refused here, before
        anything is read or written."""
        if ref.tag is None or ref.digest is not None:
            return None
        previous = self.bucket.read_record(ref)
        if previous is None or previous.digest == digest:
            return None
        if options.immutable:
            raise TagImmutable(
                f"{ref} is immutable: archived as {previous.digest}, the registry now has {digest}"
            )
        return previous

    def _pinned(self, ref: Reference, digest: str) -> bool:
        """Whether `--force` rewrites a pinned record of this same image: the pin stays (it
        names the image, which has not changed)."""
        current = self.bucket.read_record(ref)
        return current is not None and current.digest == digest and current.pinned

    def _resolve(self, source: ImageSource, options: ArchiveOptions) -> ResolvedImage:
        """The bucket keeps a whole index unless `--platform` alone narrows it."""
        return resolve_image(
            source,
            platform=options.platform,
            all_platforms=options.all_platforms,
            store_all=options.platform is None or options.all_platforms,
        )


@dataclass
class _Ahead:
    """An image's manifests read before its turn (`Archiver.sizes_ahead`)."""

    source: ImageSource
    origin: str | None
    resolved: ResolvedImage | None = None
    """None when it was already archived then."""
    reported: bool = False
    """Its size went to the events already."""


class Archiver(BucketWorker):
    """Archives images into one bucket, sharing transfers of common blobs between images."""

    def __init__(
        self,
        bucket: ArchiveBucket,
        session: Session,
        events: TransferEvents | None = None,
        *,
        sources: SourceFinder | None = None,
    ) -> None:
        super().__init__(bucket, session, events, sources=sources)
        self._ahead: ReadAhead[tuple[Reference, RegistryOptions | None], _Ahead] | None = None
        self.locks: dict[str, dict[str, str]] = {}
        """The retention of each tar this run wrote (tar key: the record's `lock`), for the
        run's report on a write-once bucket."""

    @contextmanager
    def sizes_ahead(
        self,
        images: list[tuple[Reference, RegistryOptions | None]],
        options: ArchiveOptions | None = None,
    ) -> Iterator[object]:
        """Read the manifests of the images waiting for their turn in the background and
        report their sizes, so the run's whole size is known soon after it starts; each
        image's turn reuses what was read (no manifest is fetched twice)."""
        opts = options or ArchiveOptions()

        def prepare(image: tuple[Reference, RegistryOptions | None]) -> _Ahead:
            ref, registry = image
            source, origin = self._open(ref, registry)
            if self._is_current(ref, self._stored_digest(ref, source.manifest(), opts), opts):
                return _Ahead(source, origin)
            return _Ahead(source, origin, self._resolve(source, opts))

        def ready(name: str, ahead: _Ahead) -> None:
            if ahead.resolved is not None:
                self.events.on_image_size(name, sum(b.size for b in ahead.resolved.blobs()))

        self._ahead = ReadAhead(lambda image: str(image[0]), prepare, ready)
        try:
            with self._ahead.running(images) as running:
                yield running
        finally:
            self._ahead = None

    def _take_ahead(self, ref: Reference, registry: RegistryOptions | None) -> _Ahead | None:
        if self._ahead is None:
            return None
        prepared = self._ahead.take((ref, registry))
        if prepared.error is not None:
            raise prepared.error
        if prepared.value is not None:
            prepared.value.reported = prepared.reported
        return prepared.value

    def _image(
        self, ref: Reference, registry: RegistryOptions | None, options: ArchiveOptions
    ) -> ImageResult:
        counts = _Counts()
        digest: str | None = None
        try:
            ahead = self._take_ahead(ref, registry)
            if ahead is not None:
                source, origin = ahead.source, ahead.origin
            else:
                source, origin = self._open(ref, registry)
            top = source.manifest()
            digest = self._stored_digest(ref, top, options)
            record = self._archive(ref, source, origin, digest, options, counts, ahead)
            status: Status = "archived" if record is not None else "skipped"
        except BaleError as exc:
            return ImageResult(
                source=str(ref),
                digest=digest,
                status="failed",
                error=str(exc).splitlines()[0],
                bytes_downloaded=counts.downloaded,
                bytes_uploaded=counts.uploaded,
                bytes_already_stored=counts.already,
                bytes_copied_server_side=counts.copied,
            )
        return self._done(
            ref,
            status,
            top,
            digest,
            bytes_downloaded=counts.downloaded,
            bytes_uploaded=counts.uploaded,
            bytes_already_stored=counts.already,
            bytes_copied_server_side=counts.copied,
            tar_key=record.tar_key if record is not None else None,
        )

    # -- steps -----------------------------------------------------------------------------
    def _archive(
        self,
        ref: Reference,
        source: ImageSource,
        origin: str | None,
        digest: str,
        options: ArchiveOptions,
        counts: _Counts,
        ahead: _Ahead | None = None,
    ) -> ImageRecord | None:
        """Archive `source` under `ref` (its own name, or the one a tar's image was given)."""
        if self._is_current(ref, digest, options):
            return None
        previous = self._moved_from(ref, digest, options)
        history_only = previous is not None and self.bucket.write_once
        pinned = options.force and self._pinned(ref, digest)
        if ahead is not None and ahead.resolved is not None:
            resolved = ahead.resolved
        else:
            resolved = self._resolve(source, options)
        if ahead is None or ahead.resolved is None or not ahead.reported:
            self.events.on_image_size(str(ref), sum(b.size for b in resolved.blobs()))
        plan = plan_resolved(resolved, all_platforms=options.all_platforms, name=ref)
        name = str(ref)
        record: list[ImageRecord] = []
        # The tar's parts go up while its blobs stream in; it becomes visible only at commit,
        # after the tags, and is abandoned (nothing left) if any step before fails.
        if previous is not None and not history_only:
            # The tag moves: its current tar and record are kept at the history path first,
            # complete before the tag link, tar or record is replaced (docs/layout.md).
            self.events.on_image_phase(name, "keeping the previous image")
            kept = self.bucket.keep_history(previous)
            if kept is not None:
                counts.add(uploaded=kept.sent, copied=kept.copied)
        dest = BucketDestination(
            self.bucket.with_classes(options.storage_classes),
            ref,
            tar=plan,
            record=lambda: record.append(
                self._write_record(
                    ref,
                    resolved,
                    plan,
                    origin,
                    options.storage_classes,
                    history=history_only,
                    pinned=pinned,
                )
            ),
            rewrite=True,
            events=self.events,
            name=name,
            tar_key=layout.history_tar_key(ref.store_repo, ref.tag or "", digest)
            if history_only
            else None,
        )
        moves = CopyPlan.of_resolved(resolved)
        subjects = [m.digest for m in moves.manifests]

        def referrers(stats: CopyStats) -> None:
            if options.referrers:
                self.events.on_image_phase(name, "checking signatures")
                self._archive_referrers(ref, source, subjects, counts)

        stats = copy_image(
            source,
            dest,
            moves,
            session=self.session,
            tag=ref.tag if ref.tag and not ref.digest else None,
            events=self.events,
            name=name,
            report_size=False,
            referrers=referrers,
        )
        counts.add(
            downloaded=stats.bytes_read, uploaded=stats.bytes_uploaded, already=stats.bytes_skipped
        )
        if dest.written is not None:
            counts.add(uploaded=dest.written.sent, copied=dest.written.copied)
        return record[0]

    def _archive_referrers(
        self, ref: Reference, source: ImageSource, subjects: list[str], counts: _Counts
    ) -> None:
        """Signatures and attestations of the manifests just stored, kept as manifests and
        tags of the same repository (see `ops/referrers.py`); before the record, so an image
        whose referrers failed is not marked archived."""
        from pipeline.ops.referrers import BucketRepo, sync_referrers

        target = BucketRepo(self.bucket, ref)
        stats = sync_referrers(source, subjects, target, self.session)
        counts.add(downloaded=stats.bytes_read, uploaded=stats.bytes_uploaded)

    def _write_record(
        self,
        ref: Reference,
        resolved: ResolvedImage,
        plan: TarPlan,
        origin: str | None,
        classes: StorageClasses | None = None,
        *,
        history: bool = False,
        pinned: bool = False,
    ) -> ImageRecord:
        stored = [*resolved.blobs(), *(i.raw.descriptor() for i in resolved.images)]
        stored += [m.descriptor() for m in resolved.extra_manifests]
        record = ImageRecord.build(
            ref,
            resolved.top,
            plan,
            stored=stored,
            stored_platforms=resolved.platforms,
            origin=origin,
            storage_class=classes,
        )
        if history:
            record = record.as_history()
        record = replace(
            record,
            encryption=self.bucket.store.encryption.describe(),
            lock=self._lock_of(record),
            pinned=pinned,
        )
        self.bucket.with_classes(classes).write_record(record)
        if record.lock:
            self.locks[record.tar_key] = record.lock
        return record

    def _lock_of(self, record: ImageRecord) -> dict[str, str]:
        """The tar's retention as the store keeps it (its HEAD: exact, whether it came from
        --retain or the bucket's default); no request on an unprotected store."""
        if not self.bucket.store.protection().protected:
            return {}
        info = self.bucket.store.head(record.tar_key)
        return info.retention.describe() if info is not None and info.retention else {}


class ImageWorker(Protocol):
    """What `archive_many` drives: `Archiver`, or `dryrun.Planner` for `--dry-run`."""

    session: Session

    def sizes_ahead(
        self,
        images: list[tuple[Reference, RegistryOptions | None]],
        options: ArchiveOptions | None = None,
    ) -> AbstractContextManager[object]: ...

    def archive(
        self,
        ref: Reference,
        registry: RegistryOptions | None = None,
        options: ArchiveOptions | None = None,
    ) -> ImageResult: ...
