"""`copy_image`: the one engine that moves an image from any source to any destination.

Restore, `copy`, `sync`, referrers and `archive` are this function with different ends:
`dest.begin(plan)` → the blobs (in the session's pool, each digest once per run and
destination, skipped when there, mounted when the registry can, fetched again from the start
on a digest mismatch up to `--retries`) → the manifests, children first, the top one (and its
tag) last → the referrers → `dest.commit()`; `dest.abort()` when any step fails.

The engine knows the two protocols of `pipeline/image.py` and the small optional ones below,
never a concrete transport: a source or destination that lacks a capability simply lacks the
method (as rclone's optional features).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

from pipeline.copy.events import ImageEvents, image_events
from pipeline.copy.session import Session
from pipeline.errors import (
    BaleError,
    DigestMismatch,
    InvalidArchive,
    ManifestError,
    NotFound,
    StoreNotFound,
)
from pipeline.image import (
    BlobWrite,
    ImageDestination,
    ImageSource,
    ResolvedImage,
    read_top,
    select_platforms,
)
from pipeline.oci import Descriptor, ImageIndex, ImageManifest, Platform, RawManifest
from pipeline.store.base import Readable
from pipeline.transfer.progress import CountingReader, TransferEvents
from pipeline.transfer.ratelimit import limited

log = logging.getLogger("bale.copy")


# ---- optional capabilities ---------------------------------------------------------------


@runtime_checkable
class ProbesBlobs(Protocol):
    """A source that can say cheaply, before anything is written, whether it holds a blob (a
    tar: its index is in memory). `blob_range` raises when the blob is missing."""

    def blob_range(self, descriptor: Descriptor) -> tuple[int, int]: ...


@runtime_checkable
class LimitsItsReads(Protocol):
    """A source whose reads already pass the session's rate limiter (a registry client holds
    it); the engine limits every other source, so each byte counts against --limit-rate once."""

    reads_limited: bool


@runtime_checkable
class Transactional(Protocol):
    """A destination with a lifetime around the copy: `begin` before the first blob, `commit`
    after the last manifest and referrer, `abort` on any failure (nothing left visible)."""

    def begin(self, plan: CopyPlan) -> None: ...

    def commit(self) -> None: ...

    def abort(self, error: BaseException) -> None: ...


@runtime_checkable
class SharesBlobs(Protocol):
    """`blob_scope` names where blobs are shared between the images of a run (a bucket: the
    whole bucket; default: the destination repository). A blob moves once per scope."""

    @property
    def blob_scope(self) -> str: ...


@runtime_checkable
class HearsOfBlobs(Protocol):
    """A destination told that a blob is there for this image, whichever image moved it (a
    tar composed from stored blobs starts copying it)."""

    def blob_ready(self, descriptor: Descriptor) -> None: ...


# ---- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyPlan:
    """What a copy writes: blobs, then manifests children first, the top one last."""

    top: RawManifest
    manifests: tuple[RawManifest, ...]
    blobs: tuple[Descriptor, ...]
    platforms: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)

    @classmethod
    def of_resolved(cls, resolved: ResolvedImage) -> CopyPlan:
        """The plan that stores `resolved` whole: every stored image, the index's other
        manifests kept as bytes, the top last."""
        manifests = [i.raw for i in resolved.images] + list(resolved.extra_manifests)
        if resolved.top.digest not in {m.digest for m in manifests}:
            manifests.append(resolved.top)
        return cls(
            resolved.top,
            tuple(manifests),
            tuple(resolved.blobs()),
            tuple(resolved.platforms),
        )


@dataclass
class CopyStats:
    """What `copy_image` did. Byte counts are what moved, not image sizes."""

    digest: str
    media_type: str
    platforms: tuple[str, ...] = ()
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    blobs_existing: int = 0
    bytes_read: int = 0
    """Bytes read from the source (every attempt)."""
    bytes_uploaded: int = 0
    """Bytes sent to the destination (every attempt)."""
    bytes_skipped: int = 0
    """Bytes of blobs the destination had, mounted, or another image of the run moved."""
    manifests_pushed: int = 0
    manifests_existing: int = 0
    seconds: float = 0.0


_MISSING = (NotFound, StoreNotFound, InvalidArchive)
"""How a source says it lacks a manifest or blob (registry, store, tar)."""


def _is_foreign(desc: Descriptor) -> bool:
    """A non-distributable layer (Windows base layers): registries serve it from its URLs."""
    return bool(desc.urls) and "foreign" in desc.media_type


def plan_copy(
    source: ImageSource,
    *,
    platform: Platform | None = None,
    all_platforms: bool = False,
    probe: Callable[[Descriptor], object] | None = None,
) -> CopyPlan:
    """Read every manifest a copy needs before anything is written.

    An index is copied whole (its digest kept) unless `platform` picks one image from it (and
    `all_platforms` is not set): then that image's manifest alone is the top. A source that
    lacks some children of its index (a tar or archive holding one platform) gives the default
    (or `platform`'s) image alone, unless `all_platforms` insists on the whole index.
    `probe(descriptor)` raises when the source lacks a blob; it runs on every blob planned, so
    an incomplete source fails here, with nothing written.
    """
    what = str(source.reference) if source.reference is not None else "image"
    top, parsed = read_top(source, what=what, verb="copied")
    if isinstance(parsed, ImageManifest):
        return _plan_of(top, [(top, parsed)], probe, ())
    if platform is not None and not all_platforms:
        chosen = select_platforms(parsed, platform, what=what)[0]
        return _single_from(source, chosen, probe, what)
    manifests: list[RawManifest] = []
    images: list[tuple[RawManifest, ImageManifest]] = []
    try:
        _collect(source, parsed, manifests, images, probe, depth=0)
    except _MISSING as exc:
        if all_platforms:
            raise
        chosen = select_platforms(parsed, None, what=what)[0]
        log.warning(
            "%s: the source lacks part of the index (%s); copying %s only, under its own digest",
            what,
            str(exc).splitlines()[0],
            chosen.platform or chosen.digest,
        )
        return _single_from(source, chosen, probe, what)
    manifests.append(top)
    platforms = tuple(str(d.platform) for d in parsed.manifests if d.platform is not None)
    return _plan_of(top, images, probe, platforms, manifests)


def _single_from(
    source: ImageSource,
    chosen: Descriptor,
    probe: Callable[[Descriptor], object] | None,
    what: str,
) -> CopyPlan:
    raw = source.manifest(chosen.digest)
    child = raw.parse()
    if not isinstance(child, ImageManifest):
        raise ManifestError(f"{what}: index entry {chosen.digest} is not an image manifest")
    platforms = (str(chosen.platform),) if chosen.platform is not None else ()
    return _plan_of(raw, [(raw, child)], probe, platforms)


def _collect(
    source: ImageSource,
    index: ImageIndex,
    manifests: list[RawManifest],
    images: list[tuple[RawManifest, ImageManifest]],
    probe: Callable[[Descriptor], object] | None,
    *,
    depth: int,
) -> None:
    """Every manifest under `index`, children before their parents (the order a registry
    accepts them in)."""
    if depth > 4:
        raise ManifestError("index nesting is deeper than 4 levels")
    for desc in index.manifests:
        raw = source.manifest(desc.digest)
        child = raw.parse()
        if isinstance(child, ImageIndex):
            _collect(source, child, manifests, images, probe, depth=depth + 1)
        elif isinstance(child, ImageManifest):
            images.append((raw, child))
            if probe is not None:
                for blob in child.blobs:
                    if not _is_foreign(blob):
                        probe(blob)
        manifests.append(raw)


def _plan_of(
    top: RawManifest,
    images: list[tuple[RawManifest, ImageManifest]],
    probe: Callable[[Descriptor], object] | None,
    platforms: tuple[str, ...],
    manifests: list[RawManifest] | None = None,
) -> CopyPlan:
    blobs: dict[str, Descriptor] = {}
    for _raw, manifest in images:
        for desc in manifest.blobs:
            if not _is_foreign(desc):
                blobs.setdefault(desc.digest, desc)
    if probe is not None:
        for desc in blobs.values():
            probe(desc)
    ordered = list(dict.fromkeys(manifests if manifests is not None else [top]))
    return CopyPlan(top, tuple(ordered), tuple(blobs.values()), platforms)


def probe_for(source: ImageSource) -> Callable[[Descriptor], object] | None:
    """How to learn up front that a source lacks a blob: only a source that can say cheaply
    (a tar); registries and stores are trusted and fail on the read."""
    return source.blob_range if isinstance(source, ProbesBlobs) else None


# ---- the engine ----------------------------------------------------------------------------


def copy_image(
    source: ImageSource,
    dest: ImageDestination,
    plan: CopyPlan | None = None,
    *,
    session: Session,
    platform: Platform | None = None,
    all_platforms: bool = False,
    tag: str | None = None,
    events: TransferEvents | None = None,
    name: str | None = None,
    report_size: bool = True,
    referrers: Callable[[CopyStats], None] | None = None,
) -> CopyStats:
    """Copy one image: plan, blobs in parallel, manifests children first, the tag last.

    Blobs go through the session's pool (`--jobs` bounds the whole run) and `once` (two images
    sharing a blob move it once); the destination skips what it holds and mounts what the same
    registry holds elsewhere. Manifests are written as the source's exact bytes, so every digest
    at the destination is the source's. With `tag` the top manifest is written under it, else
    by digest only. Without `plan`, `plan_copy` makes one (`platform`, `all_platforms`).
    `referrers(stats)` runs after the manifests and before the destination commits. Call it
    from outside the session's pool (it waits on that pool).
    """
    started = time.monotonic()
    shown = image_events(events)
    if name is None:
        name = str(source.reference) if source.reference is not None else "image"
    if plan is None:
        plan = plan_copy(
            source, platform=platform, all_platforms=all_platforms, probe=probe_for(source)
        )
    stats = CopyStats(plan.top.digest, plan.top.media_type, plan.platforms)
    if report_size:
        shown.on_image_size(name, plan.size)
    lifetime = dest if isinstance(dest, Transactional) else None
    if lifetime is not None:
        lifetime.begin(plan)
    try:
        _copy_blobs(source, dest, plan.blobs, session, shown, name, stats)
        _copy_manifests(dest, plan, tag, stats)
        if referrers is not None:
            referrers(stats)
    except BaseException as exc:
        if lifetime is not None:
            lifetime.abort(exc)
        raise
    if lifetime is not None:
        lifetime.commit()
    stats.seconds = round(time.monotonic() - started, 3)
    return stats


def _copy_manifests(
    dest: ImageDestination, plan: CopyPlan, tag: str | None, stats: CopyStats
) -> None:
    for raw in plan.manifests[:-1]:
        if dest.has_manifest(raw.digest):
            stats.manifests_existing += 1
        else:
            dest.put_manifest(raw)
            stats.manifests_pushed += 1
    if dest.has_manifest(plan.top.digest, tag):
        stats.manifests_existing += 1
    else:
        dest.put_manifest(plan.top, tag)
        stats.manifests_pushed += 1


def _copy_blobs(
    source: ImageSource,
    dest: ImageDestination,
    blobs: Sequence[Descriptor],
    session: Session,
    events: ImageEvents,
    name: str,
    stats: CopyStats,
) -> None:
    limiter = None if isinstance(source, LimitsItsReads) else session.limiter
    mount_from = source.reference
    retries = session.transfer.retry.retries
    owned: set[str] = set()
    lock = threading.Lock()

    def one(desc: Descriptor) -> BlobWrite:
        owned.add(desc.digest)  # runs only when this image's call started the transfer
        key = f"{name}@{desc.digest}"

        def report(n: int) -> None:
            with lock:
                stats.bytes_read += n
            events.on_bytes(key, n)
            events.on_image_bytes(name, moved=n)

        def open_stream() -> Readable:
            return CountingReader(limited(source.open_blob(desc), limiter), report)

        # A digest mismatch (bytes corrupted on the way) is not resumable: fetch the blob again
        # from the start, up to --retries times. Nothing of a failed attempt becomes visible.
        for attempt in range(1, retries + 2):
            try:
                return dest.put_blob(desc, open_stream, mount_from=mount_from)
            except DigestMismatch as exc:
                if attempt > retries:
                    raise
                log.warning(
                    "fetching %s again after %s (attempt %d/%d)",
                    desc.digest,
                    exc,
                    attempt + 1,
                    retries + 1,
                )
        raise AssertionError("unreachable")

    scope = dest.blob_scope if isinstance(dest, SharesBlobs) else dest.reference.name
    ready = dest if isinstance(dest, HearsOfBlobs) else None
    futures = [session.once(f"copy|{scope}|{desc.digest}", partial(one, desc)) for desc in blobs]
    errors: list[BaseException] = []
    for desc, fut in zip(blobs, futures, strict=True):
        try:
            result = fut.result()
        except BaleError as exc:
            errors.append(exc)
            continue
        if ready is not None:
            ready.blob_ready(desc)
        if desc.digest not in owned:
            result = BlobWrite("exists")  # another image of the run moved it
        if result.outcome == "uploaded":
            stats.blobs_uploaded += 1
            stats.bytes_uploaded += result.sent
        else:
            if result.outcome == "mounted":
                stats.blobs_mounted += 1
            else:
                stats.blobs_existing += 1
            stats.bytes_skipped += desc.size
            events.on_image_bytes(name, skipped=desc.size)
    if errors:
        raise errors[0]
