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

import dataclasses
import hashlib
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
from pipeline.errors import BaleError, DigestMismatch
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
    "bucket-rgw",
    "bucket-oss",
    "tar-local",
    "tar-s3",
    "tar-rgw",
    "tar-oss",
    "tar-stdout",
]
SOURCES = [k for k in TRANSPORTS if k != "tar-stdout"]
"""What each destination wrote is read back through that transport's `ImageSource`: the
source-side contract runs on every one (the tar read from stdout's bytes is a local tar)."""
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
    store = make("local" if store_kind == "stdout" else store_kind).store
    resolved = resolve_image(source)
    ref = source.reference
    tar = plan_resolved(resolved, all_platforms=False)
    if transport == "bucket":
        bucket = ArchiveBucket(store)
        dest = BucketDestination(bucket, ref, tar=tar, rewrite=True)
        return End(dest, lambda: BucketImage(bucket, ref))
    key = "out/image.tar"

    def read_tar() -> ImageSource:
        return ImageArchive(StoreSource(store, key)).image(None)

    if store_kind == "stdout":
        # docker-archive:- and oci-archive:- write the same dual-format tar to stdout.
        captured: pytest.CaptureFixture[bytes] = request.getfixturevalue("capsysbinary")

        def from_stdout() -> ImageSource:
            store.put(key, captured.readouterr().out)
            return read_tar()

        return End(TarDestination(ref, tar, None, None), from_stdout)
    return End(TarDestination(ref, tar, store, key, retries=2), read_tar)


def _copy(source: ImageSource, end: End, session: Session) -> str:
    plan = CopyPlan.of_resolved(resolve_image(source))
    tag = source.reference.tag if not isinstance(end.dest, TarDestination) else None
    return copy_image(source, end.dest, plan, session=session, tag=tag).digest


def _source(pushed: tuple[BuiltImage, Reference], session: Session) -> RegistrySource:
    _, ref = pushed
    return RegistrySource(session.client(ref.registry, NO_TLS), ref)


def _largest(image: BuiltImage) -> str:
    return max(image.layers, key=lambda d: d.size).digest


@dataclass
class Contract:
    image: BuiltImage
    source: ImageSource
    end: End


@pytest.fixture
def contract(
    pushed: tuple[BuiltImage, Reference],
    session: Session,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Callable[[str, int | None], Contract]:
    """`contract(kind, corrupt)`: the pushed image's source (its largest blob corrupted
    `corrupt` times, None: always) and a fresh destination of `kind`."""

    def make(kind: str, corrupt: int | None = 0) -> Contract:
        image, _ = pushed
        source: ImageSource = _source(pushed, session)
        if corrupt != 0:
            source = Corrupting(_source(pushed, session), _largest(image), times=corrupt)
        return Contract(image, source, _end(kind, session, source, request, tmp_path))

    return make


def _read_whole(source: ImageSource, desc: Descriptor) -> bytes:
    stream = source.open_blob(desc)
    chunks = []
    while chunk := stream.read(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_copy_reads_back_whole(
    kind: str, contract: Callable[..., Contract], session: Session
) -> None:
    c = contract(kind)
    assert _copy(c.source, c.end, session) == c.image.digest
    back = c.end.read_back()
    assert back.manifest().digest == c.image.digest
    for desc in resolve_image(back).blobs():
        assert "sha256:" + hashlib.sha256(_read_whole(back, desc)).hexdigest() == desc.digest


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_blob_corrupted_once_is_fetched_again(
    kind: str, contract: Callable[..., Contract], session: Session
) -> None:
    c = contract(kind, 1)
    assert isinstance(c.source, Corrupting)
    if kind == "tar-stdout":  # bytes already written cannot be taken back: the one exception
        with pytest.raises(DigestMismatch):
            _copy(c.source, c.end, session)
        return
    assert _copy(c.source, c.end, session) == c.image.digest
    assert c.source.left == 0
    assert c.end.read_back().manifest().digest == c.image.digest


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_blob_always_corrupted_fails_and_leaves_no_image(
    kind: str, contract: Callable[..., Contract], session: Session
) -> None:
    c = contract(kind, None)
    with pytest.raises(DigestMismatch):
        _copy(c.source, c.end, session)
    with pytest.raises(Exception):  # noqa: B017 - each transport says "missing" its own way
        c.end.read_back().manifest()
    if isinstance(c.end.dest, BucketDestination):
        store = c.end.dest.bucket.store
        assert store.head(layout.tar_key_for(c.source.reference)) is None
        assert store.head(layout.blob_key(_largest(c.image))) is None


# ---- the source side: every transport's ImageSource ---------------------------------------


@pytest.mark.parametrize("kind", SOURCES)
def test_source_serves_the_image_verified(
    kind: str, contract: Callable[..., Contract], session: Session
) -> None:
    """Manifest, config and every layer come out of the source whole; a descriptor the bytes
    do not match (another blob's size) fails verification, and a blob the source does not hold
    fails: both as a `BaleError` (an exit code and one line), never bytes passed on or a stray
    SDK error."""
    c = contract(kind)
    _copy(c.source, c.end, session)
    source = c.end.read_back() if kind != "registry" else c.source
    top = source.manifest()
    assert top.digest == c.image.digest
    resolved = resolve_image(source)
    blobs = resolved.blobs()
    assert {d.digest for d in blobs} == {d.digest for d in c.image.blobs}
    for desc in blobs:
        assert "sha256:" + hashlib.sha256(_read_whole(source, desc)).hexdigest() == desc.digest
    big = max(blobs, key=lambda d: d.size)
    small = min(blobs, key=lambda d: d.size)
    with pytest.raises(BaleError):
        _read_whole(source, dataclasses.replace(small, digest=big.digest))
    missing = dataclasses.replace(small, digest="sha256:" + "0" * 64)
    with pytest.raises(BaleError) as raised:
        _read_whole(source, missing)
    assert "0" * 12 in str(raised.value) or "not found" in str(raised.value).lower()
