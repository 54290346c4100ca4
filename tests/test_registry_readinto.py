"""Blobs read with `readinto` from a real registry: the socket's bytes straight into the caller's
buffer, verified, resumed after a dropped connection, and the connection kept for the next."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.errors import DigestMismatch, TransferError
from pipeline.oci import Descriptor
from pipeline.registry.client import BlobBody, RegistryClient
from pipeline.registry.ranged import RangeBudget, RangedBlobBody
from pipeline.registry.transport import ConnectionOptions, RegistryOptions
from pipeline.transfer.digest_stream import VerifyingReader
from pipeline.transfer.retry import RetryPolicy
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.proxy import Corrupt, DropAfter, FaultProxy, ResetAfter
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

MiB = 1 << 20
FAST = RetryPolicy(retries=3, initial=0.01, maximum=0.05)
REPO = "readinto/img"


@pytest.fixture(scope="module")
def pushed(image_factory: ImageFactory, registry: RegistryServer) -> BuiltImage:
    return image_factory.build_and_push(
        f"{REPO}:1",
        registry,
        layers=[LayerSpec(3 * MiB + 4321, seed=971), LayerSpec(70_000, seed=972)],
    )


@pytest.fixture
def proxy(registry: RegistryServer) -> FaultProxy:
    p = FaultProxy(registry.host).start()
    yield p
    p.stop()


def _client(host: str) -> RegistryClient:
    return RegistryClient(host, ConnectionOptions(RegistryOptions(tls_verify=False), retry=FAST))


def _fill(reader: VerifyingReader | BlobBody | RangedBlobBody, size: int) -> bytes:
    out = bytearray()
    buf = bytearray(size)
    while n := reader.readinto(buf):
        out += buf[:n]
        buf[:] = bytes(size)  # the buffer is reused at once
    return bytes(out)


@pytest.mark.parametrize("size", [4096, 300_001, MiB, 8 * MiB])
def test_blob_by_readinto_is_the_blob(
    pushed: BuiltImage, registry: RegistryServer, size: int
) -> None:
    with _client(registry.host) as client:
        for layer in pushed.layers:
            reader = client.open_blob(REPO, layer)
            assert isinstance(reader._source, BlobBody)
            data = _fill(reader, size)
            assert reader.verified and data == pushed.read_blob(layer.digest)


def test_readinto_gives_the_connection_back(pushed: BuiltImage, registry: RegistryServer) -> None:
    with _client(registry.host) as client:
        for _ in range(3):
            for layer in pushed.layers:
                _fill(client.open_blob(REPO, layer), MiB)
        pool = client.transport.pool.connection_from_url(f"http://{registry.host}/")
        assert pool.num_connections == 1


@pytest.mark.parametrize("fault", [DropAfter, ResetAfter])
def test_readinto_resumes_after_a_dropped_connection(
    pushed: BuiltImage, proxy: FaultProxy, fault: type[DropAfter]
) -> None:
    layer = pushed.layers[0]
    proxy.add(fault(path="/blobs/", after=1_000_000))
    with _client(proxy.host) as client:
        reader = client.open_blob(REPO, layer)
        data = _fill(reader, MiB)
        body = reader._source
    assert reader.verified and data == pushed.read_blob(layer.digest)
    assert isinstance(body, BlobBody) and body.resumes == 1
    resumed = [r.header("Range") for r in proxy.find("GET", "/blobs/")][1]
    if fault is ResetAfter:  # a reset may throw away bytes the kernel had not handed over
        assert resumed is None or int(resumed[6:-1]) <= 1_000_000
    else:
        assert resumed == "bytes=1000000-"


def test_corrupt_bytes_fail_on_the_last_fill(pushed: BuiltImage, proxy: FaultProxy) -> None:
    layer = pushed.layers[0]
    proxy.add(Corrupt(path="/blobs/"))
    with _client(proxy.host) as client:
        reader = client.open_blob(REPO, layer)
        buf = bytearray(MiB)
        with pytest.raises(DigestMismatch):
            while reader.readinto(buf):
                pass
        assert reader.bytes_read == layer.size
        with pytest.raises(DigestMismatch):
            reader.readinto(buf)


def test_a_body_that_never_comes_back_gives_up(pushed: BuiltImage, proxy: FaultProxy) -> None:
    layer = pushed.layers[0]
    proxy.add(DropAfter(path="/blobs/", after=500_000, times=1))
    proxy.add(DropAfter(path="/blobs/", after=0, times=None))
    with _client(proxy.host) as client:
        reader = client.open_blob(REPO, layer)
        with pytest.raises(TransferError, match=r"at byte 500000 of \d+ \(gave up"):
            _fill(reader, MiB)


@pytest.mark.parametrize("fast_link", [None, 1.0], ids=["parallel", "one-stream"])
def test_ranged_body_by_readinto(
    pushed: BuiltImage, registry: RegistryServer, fast_link: float | None
) -> None:
    layer = pushed.layers[0]
    with _client(registry.host) as client:
        body = RangedBlobBody(
            client, REPO, layer, "x", streams=3, budget=RangeBudget(3), chunk=MiB,
            fast_link=fast_link,
        )  # fmt: skip
        body.open()
        reader = VerifyingReader(body, layer.digest, layer.size, what="x")
        data = _fill(reader, 700_000)
        reader.close()
    assert reader.verified and hashlib.sha256(data).hexdigest() == layer.hex
    assert body.parallel is (fast_link is None)


def test_ranged_body_with_wrong_bytes(pushed: BuiltImage, registry: RegistryServer) -> None:
    layer, other = pushed.layers
    lying = Descriptor(layer.media_type, other.digest, layer.size)
    with _client(registry.host) as client:
        body = RangedBlobBody(
            client, REPO, layer, "x", streams=2, budget=RangeBudget(2), chunk=MiB,
            fast_link=None,
        )  # fmt: skip
        body.open()
        reader = VerifyingReader(body, lying.digest, lying.size, what="x")
        with pytest.raises(DigestMismatch):
            _fill(reader, MiB)
        reader.close()
