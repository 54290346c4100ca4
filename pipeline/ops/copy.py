"""`bale copy`: one image from one transport to another, streamed end to end.

Both ends go through the one engine (`pipeline/copy/engine.py`):
- `copy_to_archive`: any source → docker-archive/oci-archive, a `TarDestination`. It writes the
  same dual-format tar `archive` writes, but straight to its location (a local file, stdout, or
  an S3/OSS object via a streaming multipart upload): no content-addressed area, no temporary
  files.
- `copy_transports`: any `ImageSource` (a registry, the archive bucket, a tar) → a registry or
  a tar.

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
import time
from dataclasses import dataclass, replace
from typing import BinaryIO

from pipeline.archive.tarread import (
    ArchiveImage,
    BytesSource,
    FileSource,
    ImageArchive,
    RandomAccess,
    StoreSource,
)
from pipeline.archive.tarstream import plan_resolved
from pipeline.copy.engine import CopyPlan, CopyStats, copy_image
from pipeline.copy.session import RegistryOptions, Session
from pipeline.errors import (
    UsageError,
)
from pipeline.image import (
    ImageSource,
    resolve_image,
)
from pipeline.oci import (
    Descriptor,
    Platform,
)
from pipeline.registry.destination import RegistryDestination
from pipeline.registry.source import RegistrySource
from pipeline.store.base import ObjectStore, Readable
from pipeline.store.encryption import NONE, Encryption
from pipeline.store.url import ObjectLocation, open_location, parse_location
from pipeline.transfer.digest_stream import VerifyingReader
from pipeline.transfer.progress import TransferEvents
from pipeline.transfer.recompress import CompressOptions
from pipeline.transfer.retry import RetryPolicy
from pipeline.transports.names import ArchiveTransport, RegistryTransport, Transport, archive_name
from pipeline.transports.tarball import TarDestination
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
    session: Session,
    platform: Platform | None = None,
    all_platforms: bool = False,
    endpoint_url: str | None = None,
    events: TransferEvents | None = None,
    encryption: Encryption = NONE,
) -> CopyResult:
    """Stream `source` as a dual-format tar to `dest` (a path, `-`, s3:// or oss://): the one
    engine into a `TarDestination`."""
    started = time.monotonic()
    shown = str(dest)
    store: ObjectStore | None = None
    key: str | None = None
    if not dest.is_stdio:  # (checked for writing by check_archive_destination)
        where = parse_location(dest.location)
        shown = str(replace(dest, location=str(where)))  # in full: s3://, /abs
        store, key = open_location(
            where,
            endpoint_url=endpoint_url,
            retry=session.transfer.retry,
            encryption=_remote(where, encryption),
        )
    resolved = resolve_image(
        source, platform=platform, all_platforms=all_platforms, store_all=all_platforms
    )
    name = archive_name(dest, source.reference)
    tar = plan_resolved(resolved, all_platforms=all_platforms, name=name)
    target = TarDestination(name, tar, store, key, retries=session.transfer.retry.retries)
    copy_image(source, target, CopyPlan.of_resolved(resolved), session=session, events=events)
    assert tar.root is not None
    return CopyResult(tar.root.digest, tar.total_size, time.monotonic() - started, shown)


# ---- tars as sources ----------------------------------------------------------------------


def open_archive(
    location: str,
    *,
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
    stdin: io.RawIOBase | io.BufferedIOBase | None = None,
    stdin_limit: int = DEFAULT_STDIN_LIMIT,
    encryption: Encryption = NONE,
) -> ImageArchive:
    """The tar at LOCATION (a path, `-`, s3://, oss://, file://), read by its headers;
    `encryption` for a store's (SSE-C: its key), none for a file."""
    return ImageArchive(
        _random_access(
            location,
            endpoint_url=endpoint_url,
            retry=retry,
            stdin=stdin,
            stdin_limit=stdin_limit,
            encryption=encryption,
        )
    )


def _random_access(
    location: str,
    *,
    endpoint_url: str | None,
    retry: RetryPolicy | None,
    stdin: io.RawIOBase | io.BufferedIOBase | None,
    stdin_limit: int,
    encryption: Encryption = NONE,
) -> RandomAccess:
    if location == "-":
        return stdin_source(stdin if stdin is not None else sys.stdin.buffer, stdin_limit)
    parsed = parse_location(location)
    if parsed.store.scheme == "file":
        return FileSource(os.path.join(parsed.store.prefix, parsed.key))
    store, key = open_location(
        parsed, endpoint_url=endpoint_url, retry=retry, check="read", encryption=encryption
    )
    from pipeline.ops.thaw import check_object_thawed

    check_object_thawed(store, key)  # a cold tar: exit 2 naming the thaw, nothing read
    return StoreSource(store, key)


def stdin_source(stream: io.RawIOBase | io.BufferedIOBase | BinaryIO, limit: int) -> RandomAccess:
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
    encryption: Encryption = NONE,
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
        encryption=encryption,
    )
    return archive_image(archive, transport.name)


def _remote(where: ObjectLocation, encryption: Encryption) -> Encryption:
    """`encryption` for a store's object, none for a local file (a copy between a file and a
    bucket encrypts the bucket's side)."""
    return NONE if where.store.scheme == "file" else encryption


def check_archive_destination(
    dest: ArchiveTransport,
    *,
    force: bool = False,
    endpoint_url: str | None = None,
    encryption: Encryption = NONE,
) -> None:
    """Refuse, as skopeo and `docker save` do, to replace an existing tar (unless `force`) or
    to write one to a terminal: either is a typo that costs a file or floods a screen. A
    store that cannot be written is said here too, before the source is read."""
    if dest.is_stdio:
        if sys.stdout.isatty():
            raise UsageError("refusing to write a tar to a terminal; redirect stdout")
        return
    where = parse_location(dest.location)
    store, key = open_location(
        where, endpoint_url=endpoint_url, check="write", encryption=_remote(where, encryption)
    )
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
    encryption: Encryption = NONE,
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
        check_archive_destination(
            dst, force=force, endpoint_url=endpoint_url, encryption=encryption
        )
    original = source = open_source(
        src,
        session=session,
        registry=src_registry,
        endpoint_url=endpoint_url,
        stdin_limit=stdin_limit,
        encryption=encryption,
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
            session=session,
            platform=platform,
            all_platforms=all_platforms,
            endpoint_url=endpoint_url,
            encryption=encryption,
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
