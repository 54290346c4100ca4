"""The `ImageDestination` contract, run unchanged against every transport through the one engine.

Each destination (a registry; the archive bucket on a local directory, S3 and OSS; a tar on
the same three) receives the same image from a registry with `copy_image`, and is then read
back through its own `ImageSource` (registry, `BucketImage`, the tar reader):
- a copy reads back with the same top digest and every blob intact;
- a blob whose bytes arrive corrupted once is fetched again and the copy succeeds;
- a blob corrupted on every read fails the copy with `DigestMismatch`, and the destination
  then names no image (no tag, no tar): `abort` left nothing visible.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket, BucketImage
from pipeline.archive.tarread import ImageArchive, StoreSource
from pipeline.archive.tarstream import plan_resolved
from pipeline.copy.engine import CopyPlan, copy_image
from pipeline.copy.session import RegistryOptions, Session, TransferOptions
from pipeline.errors import DigestMismatch
from pipeline.image import ImageDestination, ImageSource, resolve_image
from pipeline.oci import Descriptor
from pipeline.refs import Reference
from pipeline.registry.destination import RegistryDestination
from pipeline.registry.source import RegistrySource
from pipeline.store.base import Readable
from pipeline.transfer.digest_stream import VerifyingReader
from pipeline.transfer.retry import RetryPolicy
from pipeline.transports.bucket import BucketDestination
from pipeline.transports.tarball import TarDestination
from tests.bed.fixtures_registry import RegistryFactory
from tests.bed.fixtures_store import StoreBed
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

TRANSPORTS = [
    "registry",
    "bucket-local",
    "bucket-s3",
    "bucket-oss",
    "tar-local",
    "tar-s3",
    "tar-oss",
]
NO_TLS = RegistryOptions(tls_verify=False)


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, image_factory: ImageFactory) -> tuple[BuiltImage, Reference]:
    image = image_factory.image(
        layers=(LayerSpec(30_000, seed=7501), LayerSpec(600_000, "none", seed=7502))
    )
    image_factory.push(image, f"{registry.host}/contract/app:1", registry)
    return image, Reference.parse(f"{registry.host}/contract/app:1")


@pytest.fixture(scope="module")
def dest_registry(make_registry: RegistryFactory) -> RegistryServer:
    return make_registry("none")


class Corrupting:
    """A source whose largest blob arrives with one byte flipped, `times` times (None: always),
    still through a verifying reader, as a bad network would deliver it."""

    def __init__(self, inner: RegistrySource, digest: str, times: int | None) -> None:
        self.inner = inner
        self.digest = digest
        self.left = times

    @property
    def reference(self) -> Reference:
        return self.inner.reference

    reads_limited = True

    def manifest(self, digest: str | None = None):  # type: ignore[no-untyped-def]
        return self.inner.manifest(digest)

    def blob(self, descriptor: Descriptor) -> bytes:
        return self.inner.blob(descriptor)

    def open_blob(self, descriptor: Descriptor) -> Readable:
        if descriptor.digest != self.digest or self.left == 0:
            return self.inner.open_blob(descriptor)
        if self.left is not None:
            self.left -= 1
        data = bytearray(self.inner.open_blob(descriptor).read())
        data[len(data) // 2] ^= 0xFF
        return VerifyingReader(
            io.BytesIO(bytes(data)), descriptor.digest, descriptor.size, what="x"
        )


@dataclass
class End:
    """One transport under test: its destination, and how to read back what it holds."""

    dest: ImageDestination
    read_back: Callable[[], ImageSource]


@pytest.fixture
def session() -> Iterator[Session]:
    retry = RetryPolicy(retries=2, initial=0.01, maximum=0.05)
    with Session(TransferOptions(jobs=4, retry=retry)) as s:
        yield s


def _end(
    kind: str,
    session: Session,
    source: ImageSource,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> End:
    if kind == "registry":
        # Another registry than the source's, so that nothing is mounted: the bytes move.
        dest_registry: RegistryServer = request.getfixturevalue("dest_registry")
        ref = Reference.parse(f"{dest_registry.host}/contract/out-{tmp_path.name}:1")
        client = session.client(ref.registry, NO_TLS)
        return End(RegistryDestination(client, ref), lambda: RegistrySource(client, ref))
    transport, _, store_kind = kind.partition("-")
    make: Callable[..., StoreBed] = request.getfixturevalue("store_bed")
    store = make(store_kind).store
    resolved = resolve_image(source)
    ref = source.reference
    tar = plan_resolved(resolved, all_platforms=False)
    if transport == "bucket":
        bucket = ArchiveBucket(store)
        dest = BucketDestination(bucket, ref, tar=tar, rewrite=True)
        return End(dest, lambda: BucketImage(bucket, ref))
    dest_tar = TarDestination(ref, tar, store, "out/image.tar", retries=2)
    return End(dest_tar, lambda: ImageArchive(StoreSource(store, "out/image.tar")).image(None))


def _copy(source: ImageSource, end: End, session: Session) -> str:
    plan = CopyPlan.of_resolved(resolve_image(source))
    tag = source.reference.tag if not isinstance(end.dest, TarDestination) else None
    return copy_image(source, end.dest, plan, session=session, tag=tag).digest


def _source(pushed: tuple[BuiltImage, Reference], session: Session) -> RegistrySource:
    _, ref = pushed
    return RegistrySource(session.client(ref.registry, NO_TLS), ref)


def _largest(image: BuiltImage) -> str:
    return max(image.layers, key=lambda d: d.size).digest


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_copy_reads_back_whole(
    kind: str,
    pushed: tuple[BuiltImage, Reference],
    session: Session,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    image, _ = pushed
    source = _source(pushed, session)
    end = _end(kind, session, source, request, tmp_path)
    assert _copy(source, end, session) == image.digest
    back = end.read_back()
    assert back.manifest().digest == image.digest
    for desc in resolve_image(back).blobs():
        with_stream = back.open_blob(desc)
        while with_stream.read(1 << 16):
            pass


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_blob_corrupted_once_is_fetched_again(
    kind: str,
    pushed: tuple[BuiltImage, Reference],
    session: Session,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    image, _ = pushed
    source = Corrupting(_source(pushed, session), _largest(image), times=1)
    end = _end(kind, session, source, request, tmp_path)
    assert _copy(source, end, session) == image.digest
    assert source.left == 0
    assert end.read_back().manifest().digest == image.digest


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_blob_always_corrupted_fails_and_leaves_no_image(
    kind: str,
    pushed: tuple[BuiltImage, Reference],
    session: Session,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    image, _ = pushed
    source = Corrupting(_source(pushed, session), _largest(image), times=None)
    end = _end(kind, session, source, request, tmp_path)
    with pytest.raises(DigestMismatch):
        _copy(source, end, session)
    with pytest.raises(Exception):  # noqa: B017 - each transport says "missing" its own way
        end.read_back().manifest()
    if isinstance(end.dest, BucketDestination):
        store = end.dest.bucket.store
        assert store.head(layout.tar_key_for(source.reference)) is None
        assert store.head(layout.blob_key(_largest(image))) is None
