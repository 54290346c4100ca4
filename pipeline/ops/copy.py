"""`bale copy`: one image from one transport to another, streamed end to end.

Two engines:
- `copy_to_archive`: any source → docker-archive/oci-archive. It writes the same dual-format
  tar `archive` writes, but straight to its location (a local file, stdout, or an S3/OSS object
  via a streaming multipart upload): no content-addressed area, no temporary files.
- `copy_image`: any `ImageSource` (a registry, the archive bucket, a tar) → any
  `ImageDestination` (a registry). `restore`, registry-to-registry copy and tar-to-registry
  copy are this one function with different ends.

Tars are read through ranged reads of their location (`open_archive`): a local file, an S3/OSS
object, or stdin. Stdin is the one place where a tar is held whole, since a pipe can be read
only once and a docker-archive's `manifest.json` may come after its layers: a redirected file
(`< image.tar`) is read in place, a pipe is kept in memory up to `stdin_limit` and refused
beyond it (bale never stages on local disk).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pipeline.archive.tarplan import write_tar
from pipeline.archive.tarread import (
    ArchiveImage,
    BytesSource,
    FileSource,
    ImageArchive,
    RandomAccess,
    StoreSource,
)
from pipeline.archive.tarstream import TarStream, plan_resolved
from pipeline.errors import (
    BaleError,
    InvalidArchive,
    ManifestError,
    NotFound,
    StoreNotFound,
    UsageError,
)
from pipeline.image import (
    BlobWrite,
    ImageDestination,
    ImageSource,
    read_top,
    resolve_image,
    select_platforms,
)
from pipeline.oci import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    RawManifest,
)
from pipeline.ops.events import ImageEvents, image_events
from pipeline.ops.session import RegistryOptions, Session
from pipeline.registry.destination import RegistryDestination
from pipeline.registry.source import RegistrySource
from pipeline.store.base import Readable
from pipeline.store.url import open_location, parse_location
from pipeline.transfer.progress import CountingReader, TransferEvents
from pipeline.transfer.ratelimit import limited
from pipeline.transfer.recompress import CompressOptions
from pipeline.transfer.retry import RetryPolicy
from pipeline.transfer.verify import VerifyingReader
from pipeline.transports import ArchiveTransport, RegistryTransport, Transport, archive_name
from pipeline.units import format_size

log = logging.getLogger("bale.copy")

DEFAULT_STDIN_LIMIT = 512 * 1024 * 1024
"""How much of a piped tar `open_archive` keeps in memory before refusing it."""


@dataclass(frozen=True)
class CopyResult:
    digest: str
    """Digest of the manifest the destination names (the tar's index.json root, or the
    manifest the registry now holds)."""
    size: int
    """Bytes written: the tar's size, or the bytes uploaded to a registry."""
    seconds: float
    destination: str
    stats: CopyStats | None = None
    """For a registry destination: what was uploaded, mounted, found there."""


def copy_to_archive(
    source: ImageSource,
    dest: ArchiveTransport,
    *,
    platform: Platform | None = None,
    all_platforms: bool = False,
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
) -> CopyResult:
    """Stream `source` as a dual-format tar to `dest` (a path, `-`, s3:// or oss://)."""
    started = time.monotonic()
    shown = str(dest)
    if not dest.is_stdio:  # (checked for writing by check_archive_destination)
        where = parse_location(dest.location)
        shown = str(replace(dest, location=str(where)))  # in full: s3://, /abs
        store, key = open_location(where, endpoint_url=endpoint_url, retry=retry)
    resolved = resolve_image(
        source, platform=platform, all_platforms=all_platforms, store_all=all_platforms
    )
    plan = plan_resolved(
        resolved, all_platforms=all_platforms, name=archive_name(dest, source.reference)
    )
    if dest.is_stdio:
        out = sys.stdout.buffer
        write_tar(plan, out, source.open_blob, verify=False)
        out.flush()
    else:
        stream = TarStream(plan, source.open_blob)
        try:
            store.put_stream(key, stream, plan.total_size)
        finally:
            stream.close()
    assert plan.root is not None
    return CopyResult(plan.root.digest, plan.total_size, time.monotonic() - started, shown)


# ---- the generic engine: any ImageSource into any ImageDestination ------------------------


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


def copy_image(
    source: ImageSource,
    dest: ImageDestination,
    *,
    session: Session,
    platform: Platform | None = None,
    all_platforms: bool = False,
    tag: str | None = None,
    events: TransferEvents | None = None,
) -> CopyStats:
    """Copy one image: plan, blobs in parallel, manifests children first, the tag last.

    Blobs go through the session's pool (`--jobs` bounds the whole run) and `once` (two images
    sharing a blob move it once); the destination skips what it holds and mounts what the same
    registry holds elsewhere. Manifests are written as the source's exact bytes, so every digest
    at the destination is the source's. With `tag` the top manifest is written under it, else
    by digest only. Call it from outside the session's pool (it waits on that pool).
    """
    started = time.monotonic()
    shown = image_events(events)
    name = str(source.reference) if source.reference is not None else "image"
    plan = plan_copy(
        source, platform=platform, all_platforms=all_platforms, probe=_probe_for(source)
    )
    stats = CopyStats(plan.top.digest, plan.top.media_type, plan.platforms)
    shown.on_image_size(name, plan.size)
    _copy_blobs(source, dest, plan, session, shown, name, stats)
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
    stats.seconds = round(time.monotonic() - started, 3)
    return stats


def _probe_for(source: ImageSource) -> Callable[[Descriptor], object] | None:
    """How to learn up front that a source lacks a blob: only a tar can say cheaply (its
    index is in memory); registries and stores are trusted and fail on the read."""
    return source.blob_range if isinstance(source, ArchiveImage) else None


def _copy_blobs(
    source: ImageSource,
    dest: ImageDestination,
    plan: CopyPlan,
    session: Session,
    events: ImageEvents,
    name: str,
    stats: CopyStats,
) -> None:
    # A registry source's reads already pass the session's limiter (its client has it); any
    # other source is limited here, so each blob counts against --limit-rate once.
    limiter = None if isinstance(source, RegistrySource) else session.limiter
    mount_from = source.reference
    owned: set[str] = set()
    lock = threading.Lock()

    def one(desc: Descriptor) -> BlobWrite:
        owned.add(desc.digest)
        key = f"{name}@{desc.digest}"

        def report(n: int) -> None:
            with lock:
                stats.bytes_read += n
            events.on_bytes(key, n)
            events.on_image_bytes(name, moved=n)

        def open_stream() -> Readable:
            return CountingReader(limited(source.open_blob(desc), limiter), report)

        return dest.put_blob(desc, open_stream, mount_from=mount_from)

    where = dest.reference.name
    futures = [
        session.once(f"copy|{where}|{desc.digest}", lambda d=desc: one(d)) for desc in plan.blobs
    ]
    errors: list[BaseException] = []
    for desc, fut in zip(plan.blobs, futures, strict=True):
        try:
            result = fut.result()
        except BaleError as exc:
            errors.append(exc)
            continue
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


# ---- tars as sources ----------------------------------------------------------------------


def open_archive(
    location: str,
    *,
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
    stdin: io.RawIOBase | io.BufferedIOBase | None = None,
    stdin_limit: int = DEFAULT_STDIN_LIMIT,
) -> ImageArchive:
    """The tar at LOCATION (a path, `-`, s3://, oss://, file://), read by its headers."""
    return ImageArchive(
        _random_access(
            location,
            endpoint_url=endpoint_url,
            retry=retry,
            stdin=stdin,
            stdin_limit=stdin_limit,
        )
    )


def _random_access(
    location: str,
    *,
    endpoint_url: str | None,
    retry: RetryPolicy | None,
    stdin: io.RawIOBase | io.BufferedIOBase | None,
    stdin_limit: int,
) -> RandomAccess:
    if location == "-":
        return stdin_source(stdin if stdin is not None else sys.stdin.buffer, stdin_limit)
    parsed = parse_location(location)
    if parsed.store.scheme == "file":
        return FileSource(os.path.join(parsed.store.prefix, parsed.key))
    store, key = open_location(parsed, endpoint_url=endpoint_url, retry=retry, check="read")
    return StoreSource(store, key)


def stdin_source(stream: io.RawIOBase | io.BufferedIOBase, limit: int) -> RandomAccess:
    """Standard input as random access: a redirected file in place, a pipe held in memory.

    A pipe larger than `limit` is refused (exit 2) before anything is written: bale promises
    not to need local disk, and a tar read once cannot be re-read for its `manifest.json`.
    """
    try:
        fd = stream.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        fd, regular = -1, False
    if regular:
        return FileSource(f"/proc/self/fd/{fd}")
    buffer = io.BytesIO()
    size = 0
    while data := stream.read(1 << 20):
        size += len(data)
        if size > limit:
            raise UsageError(
                f"the tar on standard input is over {format_size(limit)}, the memory bale keeps "
                "for a pipe (--stdin-memory): give its path or s3:// location instead, or "
                "redirect the file (< image.tar)"
            )
        buffer.write(data)
    # getbuffer() shares the BytesIO's memory: the tar is held once, not copied.
    return BytesSource(buffer.getbuffer())  # type: ignore[arg-type]


def archive_image(archive: ImageArchive, name: str | None) -> ArchiveImage:
    """The image LOCATION[:REF] names: by RepoTag / ref.name, `@N` by position, or the only one.

    In an object store, each blob is then read as one streamed ranged GET rather than one
    request per read.
    """
    if name is not None and name.startswith("@") and name[1:].isdigit():
        image = archive.image(position=int(name[1:]))
    else:
        image = archive.image(name)
    if isinstance(archive.source, StoreSource):
        return _StoreArchiveImage(image.archive, image.entry)
    return image


class _StoreArchiveImage(ArchiveImage):
    """A tar in S3/OSS: headers through the ranged-read index, blobs as one ranged stream each."""

    def open_blob(self, descriptor: Descriptor) -> Readable:
        offset, size = self.blob_range(descriptor)
        source = self.archive.source
        assert isinstance(source, StoreSource)
        return VerifyingReader(
            source.store.open(source.key, offset, size),
            descriptor.digest,
            descriptor.size,
            what=f"archive blob {descriptor.digest}",
        )


# ---- transport to transport (what `bale copy` runs) ---------------------------------------


def open_source(
    transport: Transport,
    *,
    session: Session,
    registry: RegistryOptions | None = None,
    endpoint_url: str | None = None,
    stdin_limit: int = DEFAULT_STDIN_LIMIT,
) -> ImageSource:
    """The image a `docker://`, `docker-archive:` or `oci-archive:` source names."""
    if isinstance(transport, RegistryTransport):
        ref = transport.reference
        return RegistrySource(session.client(ref.registry, registry), ref)
    archive = open_archive(
        transport.location,
        endpoint_url=endpoint_url,
        retry=session.transfer.retry,
        stdin_limit=stdin_limit,
    )
    return archive_image(archive, transport.name)


def check_archive_destination(
    dest: ArchiveTransport, *, force: bool = False, endpoint_url: str | None = None
) -> None:
    """Refuse, as skopeo and `docker save` do, to replace an existing tar (unless `force`) or
    to write one to a terminal: either is a typo that costs a file or floods a screen. A
    store that cannot be written is said here too, before the source is read."""
    if dest.is_stdio:
        if sys.stdout.isatty():
            raise UsageError("refusing to write a tar to a terminal; redirect stdout")
        return
    store, key = open_location(dest.location, endpoint_url=endpoint_url, check="write")
    if not force and store.head(key) is not None:
        raise UsageError(f"{dest.location} already exists: give --force to replace it")


def copy_transports(
    src: Transport,
    dst: Transport,
    *,
    session: Session,
    src_registry: RegistryOptions | None = None,
    dest_registry: RegistryOptions | None = None,
    platform: Platform | None = None,
    all_platforms: bool = False,
    endpoint_url: str | None = None,
    stdin_limit: int = DEFAULT_STDIN_LIMIT,
    events: TransferEvents | None = None,
    referrers: bool = True,
    compress: CompressOptions | None = None,
    force: bool = False,
) -> CopyResult:
    """`bale copy SRC DST` for any pair of transports. Bad input (a malformed or incomplete
    tar, a digest as the destination, an existing tar without `force`, a tar to a terminal)
    fails before anything is written.

    Registry to registry, the image's signatures and attestations follow it (`referrers`);
    `compress` recompresses its layers on the way (to a registry or into a tar)."""
    if isinstance(dst, RegistryTransport) and dst.reference.digest is not None:
        raise UsageError(f"copy destination {dst} must name a tag, not a digest")
    stdio = [t for t in (src, dst) if isinstance(t, ArchiveTransport) and t.is_stdio]
    if len(stdio) == 2:
        raise UsageError("copy cannot read and write standard input/output at once")
    if isinstance(dst, ArchiveTransport):
        check_archive_destination(dst, force=force, endpoint_url=endpoint_url)
    original = source = open_source(
        src,
        session=session,
        registry=src_registry,
        endpoint_url=endpoint_url,
        stdin_limit=stdin_limit,
    )
    if compress is not None:
        source = compress.wrap(
            original,
            platform=platform,
            all_platforms=all_platforms
            or (platform is None and isinstance(dst, RegistryTransport)),
            jobs=session.transfer.jobs,
        )
    if isinstance(dst, ArchiveTransport):
        bare = dst.name is None or (
            dst.format == "oci-archive" and "/" not in dst.name and ":" not in dst.name
        )
        if source.reference is None and bare:
            raise UsageError(f"the image in {src} has no name: give one as {dst}:NAME")
        return copy_to_archive(
            source,
            dst,
            platform=platform,
            all_platforms=all_platforms,
            endpoint_url=endpoint_url,
            retry=session.transfer.retry,
        )
    started = time.monotonic()
    ref = dst.reference
    dest = RegistryDestination(session.client(ref.registry, dest_registry), ref)
    stats = copy_image(
        source,
        dest,
        session=session,
        platform=platform,
        all_platforms=all_platforms,
        tag=ref.tag,
        events=events,
    )
    if referrers and compress is None:
        from pipeline.ops.referrers import RegistryRepo, sync_referrers, written_subjects

        found = sync_referrers(
            original,
            written_subjects(original, stats.digest),
            RegistryRepo(dest.client, ref),
            session,
        )
        stats.bytes_read += found.bytes_read
        stats.bytes_uploaded += found.bytes_uploaded
    return CopyResult(
        stats.digest, stats.bytes_uploaded, time.monotonic() - started, str(dst), stats
    )
