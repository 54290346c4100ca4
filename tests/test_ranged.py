"""Parallel ranged blob downloads against a real registry: bytes in order, verified, resumed,
bounded, and one stream when the registry ignores `Range` or the link is fast."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from pipeline.errors import DigestMismatch
from pipeline.oci import Descriptor
from pipeline.registry import client as client_module
from pipeline.registry import ranged
from pipeline.registry.client import RegistryClient
from pipeline.registry.ranged import RangeBudget, RangedBlobBody
from pipeline.registry.transport import ConnectionOptions, RegistryOptions
from pipeline.transfer.digest_stream import VerifyingReader
from pipeline.transfer.retry import RetryPolicy
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.proxy import Delay, DropAfter, FaultProxy, StripHeader
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

MiB = 1 << 20
CHUNK = 1 * MiB
FAST = RetryPolicy(retries=3, initial=0.01, maximum=0.05)


@pytest.fixture(scope="module")
def pushed(image_factory: ImageFactory, registry: RegistryServer) -> BuiltImage:
    """A layer of a bit over 5 MiB (five whole ranges and a short last one) and a small one."""
    return image_factory.build_and_push(
        "ranged/img:1",
        registry,
        layers=[LayerSpec(5 * MiB + 12_345, seed=901), LayerSpec(4096, seed=902)],
    )


@pytest.fixture
def proxy(registry: RegistryServer) -> FaultProxy:
    p = FaultProxy(registry.host).start()
    yield p
    p.stop()


def _client(host: str, **kw: object) -> RegistryClient:
    return RegistryClient(
        host, ConnectionOptions(RegistryOptions(tls_verify=False), retry=FAST, **kw)
    )  # type: ignore[arg-type]


def _ranged(
    client: RegistryClient,
    layer: Descriptor,
    *,
    streams: int = 3,
    budget: RangeBudget | None = None,
    fast_link: float | None = None,
) -> tuple[RangedBlobBody, VerifyingReader]:
    body = RangedBlobBody(
        client,
        "ranged/img",
        layer,
        f"ranged/img@{layer.digest}",
        streams=streams,
        budget=budget or RangeBudget(streams),
        chunk=CHUNK,
        fast_link=fast_link,
    )
    body.open()
    return body, VerifyingReader(body, layer.digest, layer.size, what="test")


def _read_all(reader: VerifyingReader, n: int) -> bytes:
    out = bytearray()
    while chunk := reader.read(n):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("read_size", [CHUNK, 300_000, 8 * MiB])
def test_parallel_ranges_deliver_the_blob_in_order_and_verified(
    pushed: BuiltImage, proxy: FaultProxy, read_size: int
) -> None:
    layer = pushed.layers[0]
    with _client(proxy.host) as client:
        body, reader = _ranged(client, layer)
        data = _read_all(reader, read_size)
        reader.close()
    assert reader.verified and hashlib.sha256(data).hexdigest() == layer.hex
    assert body.parallel is True
    ranges = sorted(
        r.header("Range") or "" for r in proxy.find("GET", "/blobs/") if r.status == 206
    )
    starts = list(range(0, layer.size, CHUNK))
    expected = [f"bytes={s}-{s + CHUNK - 1}" for s in starts[:-1]] + [f"bytes={starts[-1]}-"]
    assert ranges == sorted(expected), "each range asked once, exactly (the last to the end)"


def test_whole_ranges_are_handed_on_without_copying(
    pushed: BuiltImage, registry: RegistryServer
) -> None:
    """A read of exactly one range returns the bytes object the range arrived in."""
    layer = pushed.layers[0]
    with _client(registry.host) as client:
        body, _ = _ranged(client, layer)
        first = body.read(CHUNK)
        second = body.read(CHUNK)
        body.close()
    assert len(first) == len(second) == CHUNK
    assert (
        hashlib.sha256(first + second).digest()
        == hashlib.sha256(pushed.read_blob(layer.digest)[: 2 * CHUNK]).digest()
    )


def test_fast_link_keeps_one_stream_after_the_first_range(
    pushed: BuiltImage, proxy: FaultProxy
) -> None:
    layer = pushed.layers[0]
    with _client(proxy.host) as client:
        body, reader = _ranged(client, layer, fast_link=1.0)  # any link beats 1 byte/s
        data = _read_all(reader, CHUNK)
    assert body.parallel is False and reader.verified
    assert hashlib.sha256(data).hexdigest() == layer.hex
    gets = [r.header("Range") for r in proxy.find("GET", "/blobs/")]
    assert gets == [f"bytes=0-{CHUNK - 1}", f"bytes={CHUNK}-"]


def test_registry_ignoring_range_is_read_as_one_stream(
    pushed: BuiltImage, proxy: FaultProxy
) -> None:
    layer = pushed.layers[0]
    proxy.add(StripHeader(path="/blobs/", header="Range", times=None))
    with _client(proxy.host) as client:
        body, reader = _ranged(client, layer)
        data = _read_all(reader, CHUNK)
    assert body.parallel is False and reader.verified
    assert hashlib.sha256(data).hexdigest() == layer.hex
    statuses = [r.status for r in proxy.find("GET", "/blobs/")]
    assert statuses == [200, 200]  # the probe (closed after its first range) and the stream


def test_a_range_whose_connection_drops_resumes_on_its_own(
    pushed: BuiltImage, proxy: FaultProxy
) -> None:
    layer = pushed.layers[0]
    proxy.add(DropAfter(path="/blobs/", after=100_000, statuses=(206,), times=2))
    with _client(proxy.host) as client:
        _, reader = _ranged(client, layer)
        data = _read_all(reader, CHUNK)
    assert reader.verified and hashlib.sha256(data).hexdigest() == layer.hex
    dropped = [r for r in proxy.find("GET", "/blobs/") if r.fault == "DropAfter"]
    assert len(dropped) == 2
    for r in dropped:  # each dropped range is asked again from the byte it reached
        first, _, last = (r.header("Range") or "")[6:].partition("-")
        resumed = f"bytes={int(first) + 100_000}-{last}"
        assert any(x.header("Range") == resumed for x in proxy.find("GET", "/blobs/"))


def test_wrong_bytes_fail_verification(pushed: BuiltImage, registry: RegistryServer) -> None:
    layer = pushed.layers[0]
    other = pushed.layers[1]
    lying = Descriptor(layer.media_type, other.digest, layer.size)
    with _client(registry.host) as client:
        body = RangedBlobBody(
            client, "ranged/img", layer, "x", streams=2, budget=RangeBudget(2), chunk=CHUNK,
            fast_link=None,
        )  # fmt: skip
        body.open()
        reader = VerifyingReader(body, lying.digest, lying.size, what="x")
        with pytest.raises(DigestMismatch):
            _read_all(reader, CHUNK)
        reader.close()


def test_blobs_sharing_a_budget_all_finish_and_give_slots_back(
    pushed: BuiltImage, registry: RegistryServer
) -> None:
    """Three readers, two slots between them, read in lock step: none starves, none blocks."""
    layer = pushed.layers[0]
    budget = RangeBudget(2)
    errors: list[BaseException] = []
    results: list[bytes] = []
    barrier = threading.Barrier(3)
    with _client(registry.host) as client:

        def one() -> None:
            try:
                _, reader = _ranged(client, layer, streams=2, budget=budget)
                out = bytearray()
                while True:
                    barrier.wait(timeout=30)
                    chunk = reader.read(CHUNK // 2)
                    out += chunk
                    if len(out) == layer.size:
                        break
                reader.close()
                results.append(bytes(out))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors and len(results) == 3
    assert all(hashlib.sha256(r).hexdigest() == layer.hex for r in results)
    assert budget.free == 2, "every slot came back"


def test_closing_early_returns_every_slot(pushed: BuiltImage, registry: RegistryServer) -> None:
    layer = pushed.layers[0]
    budget = RangeBudget(3)
    with _client(registry.host) as client:
        _, reader = _ranged(client, layer, budget=budget)
        reader.read(1000)
        assert budget.free == 1  # two ranges read ahead hold slots; the next one needs none
        reader.close()
        for _ in range(100):  # ranges still running release their slot when they finish
            if budget.free == 3:
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("slots not returned after close")


def test_client_uses_ranges_for_large_blobs_only(
    pushed: BuiltImage, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(client_module, "RANGED_MIN_SIZE", 2 * MiB)
    monkeypatch.setattr(ranged, "RANGE_CHUNK", CHUNK)
    monkeypatch.setattr(ranged, "FAST_LINK", float("inf"))  # any link counts as slow
    monkeypatch.setattr(ranged, "LONG_LINK", 0.0)  # and as long
    big, small = pushed.layers
    with _client(proxy.host, range_streams=3) as client:
        for layer in (big, small):
            reader = client.open_blob("ranged/img", layer)
            assert hashlib.sha256(reader.read()).hexdigest() == layer.hex and reader.verified
            reader.close()
    small_gets = proxy.find("GET", "/blobs/" + small.digest)
    assert [r.header("Range") for r in small_gets] == [None]
    big_ranges = {r.header("Range") for r in proxy.find("GET", "/blobs/" + big.digest)}
    assert len(big_ranges) == 6 and f"bytes=0-{CHUNK - 1}" in big_ranges


def test_range_streams_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.copy.session import Session, TransferOptions

    monkeypatch.setenv("BALE_RANGE_STREAMS", "7")
    assert TransferOptions().range_streams == 7
    monkeypatch.setenv("BALE_RANGE_STREAMS", "nonsense")
    assert TransferOptions().range_streams == 4
    with Session(TransferOptions(range_streams=1)) as session:
        assert session.client("127.0.0.1:1").range_streams == 1


def test_a_slow_first_range_on_a_short_link_keeps_one_stream(
    pushed: BuiltImage, proxy: FaultProxy
) -> None:
    """Slow but near (a busy machine, not a long path): one stream, no read-ahead memory."""
    layer = pushed.layers[0]
    with _client(proxy.host) as client:
        body, reader = _ranged(client, layer, fast_link=float("inf"))
        body.long_link = 10.0  # no loopback answer takes 10 s
        data = _read_all(reader, CHUNK)
    assert body.parallel is False and reader.verified
    assert hashlib.sha256(data).hexdigest() == layer.hex


def test_a_long_link_gets_parallel_ranges(pushed: BuiltImage, proxy: FaultProxy) -> None:
    """The first range's answer delayed like a long round trip: the rest comes in parallel."""
    layer = pushed.layers[0]
    proxy.add(Delay(path="/blobs/", seconds=0.05))
    with _client(proxy.host) as client:
        body, reader = _ranged(client, layer, fast_link=float("inf"))
        body.long_link = 0.03
        data = _read_all(reader, CHUNK)
    assert body.parallel is True and reader.verified
    assert hashlib.sha256(data).hexdigest() == layer.hex
