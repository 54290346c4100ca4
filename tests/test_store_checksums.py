"""Checksums the store verifies: uploads carry what the server checks, so bytes damaged between
bale and the store are refused there and sent again.

A fault proxy flips one byte of an upload body on its way (`CorruptRequest`). What each server
of the bed checks (docs/s3-compatibility.md):

- Ceph RGW 16 checks the payload hash boto3 signs into every upload without a checksum
  (`x-amz-content-sha256`: 400 XAmzContentSHA256Mismatch) and `Content-MD5` (400 BadDigest),
  not `x-amz-checksum-sha256`;
- moto_server 5.2 checks none of them; a damaged upload is stored (a gap of the server,
  asserted below so the docs' claim stays measured) and only bale's read-back finds it;
- the OSS protocol server, as OSS: `Content-MD5` (400 InvalidDigest) on PutObject and
  UploadPart, and the CRC64 of what it received in every answer, which oss2 compares;
- AWS checks `x-amz-checksum-sha256`; no server of the bed does, so that path is shown on the
  wire against moto (which computes the composite checksum of a multipart upload from the part
  checksums it is sent) with the store told to send it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.errors import StoreError
from pipeline.store import s3_probe
from pipeline.store.base import CopyRange, Inline
from pipeline.store.oss import OSSStore
from pipeline.store.s3 import S3Store
from tests.bed.fixtures_store import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_REGION,
    StoreBed,
    fast_retry,
)
from tests.bed.proxy import CorruptRequest, FaultProxy

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def endpoint_of(bed: StoreBed) -> str:
    store = bed.store
    return str(store.endpoint_url if isinstance(store, S3Store) else store.endpoint)


def behind(bed: StoreBed, proxy: FaultProxy, server: Any = None, **options: Any) -> Any:
    """A store of the bed's bucket and prefix that talks to its server through `proxy`
    (`server`: the S3 server of the bed, for its keys)."""
    store = bed.store
    if isinstance(store, S3Store):
        return S3Store(
            store.bucket,
            bed.prefix,
            endpoint_url=proxy.url,
            access_key=server.access_key,
            secret_key=server.secret_key,
            part_size=5 * MiB,
            retry=fast_retry(),
            **options,
        )
    return OSSStore(
        store.bucket_name,
        bed.prefix,
        endpoint=proxy.url,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
        region=OSS_REGION,
        part_size=1 * MiB,
        retry=fast_retry(),
        **options,
    )


SERVERS = {"s3": "moto_server", "rgw": "rgw_server"}


@pytest.fixture
def proxied(
    request: pytest.FixtureRequest, store_bed: Callable[..., StoreBed], fresh_probe: None
) -> Iterator[Callable[..., tuple[StoreBed, FaultProxy, Any]]]:
    """`proxied(kind, **options)`: a fresh store of the bed behind a fault proxy, probed."""
    proxies: list[FaultProxy] = []

    def make(kind: str, **options: Any) -> tuple[StoreBed, FaultProxy, Any]:
        bed = store_bed(kind)
        proxy = FaultProxy(endpoint_of(bed).removeprefix("http://")).start()
        proxies.append(proxy)
        server = request.getfixturevalue(SERVERS[kind]) if kind in SERVERS else None
        store = behind(bed, proxy, server, **options)
        store.put("warm-up", b"probed")  # the S3 probe runs before any fault is armed
        store.delete("warm-up")
        return bed, proxy, store

    yield make
    for proxy in proxies:
        proxy.stop()


def refused(proxy: FaultProxy) -> list[int | None]:
    """Statuses the server gave the requests whose body the proxy damaged."""
    return [r.status for r in proxy.requests if r.fault and "CorruptRequest" in r.fault]


@pytest.mark.parametrize("kind", ["rgw", "oss"])
def test_damaged_put_is_refused_and_sent_again(proxied: Callable[..., Any], kind: str) -> None:
    bed, proxy, store = proxied(kind)
    data = blob(300_000, 1)
    proxy.add(CorruptRequest(method="PUT"))
    assert store.put("small", data).written
    assert refused(proxy) == [400]  # RGW BadDigest, OSS InvalidDigest: nothing stored
    assert store.read("small") == data
    assert bed.names() == [bed.full("small")]


@pytest.mark.parametrize("kind", ["rgw", "oss"])
def test_damaged_part_is_sent_again(proxied: Callable[..., Any], kind: str) -> None:
    bed, proxy, store = proxied(kind)
    part = 5 * MiB if kind == "rgw" else 1 * MiB
    data = blob(2 * part + 12345, 2)
    proxy.add(CorruptRequest(method="PUT", query=r"partNumber=2(&|$)"))
    assert store.put_stream("big", io.BytesIO(data), len(data)).written
    # RGW refuses the part (400 BadDigest); OSS stores it and answers its CRC64, which oss2
    # finds differs from what it sent: either way the part goes again.
    assert refused(proxy) == [400 if kind == "rgw" else 200]
    assert store.read("big") == data
    assert bed.open_uploads() == []


@pytest.mark.parametrize("kind", ["rgw", "oss"])
@pytest.mark.parametrize("size", [300_000, 11 * MiB])
def test_upload_damaged_every_time_fails_cleanly(
    proxied: Callable[..., Any], kind: str, size: int
) -> None:
    bed, proxy, store = proxied(kind)
    data = blob(size, 3)
    proxy.add(CorruptRequest(method="PUT", times=None))
    with pytest.raises(StoreError) as caught:
        store.put_stream("doomed", io.BytesIO(data), len(data))
    assert "doomed" in str(caught.value)
    damaged = [r.path for r in proxy.requests if r.fault and "CorruptRequest" in r.fault]
    # Each request is tried once and retried three times, no more (parts run in parallel).
    assert max(damaged.count(path) for path in damaged) == 4
    assert bed.names() == []
    assert bed.open_uploads() == []


def test_oss_put_carries_content_md5(proxied: Callable[..., Any]) -> None:
    _bed, proxy, store = proxied("oss")
    store.put("k", b"abc")
    put = [r for r in proxy.requests if r.method == "PUT"][-1]
    md5 = base64.b64encode(hashlib.md5(b"abc").digest()).decode()
    assert put.header("Content-MD5") == md5


def test_rgw_uploads_carry_a_signed_payload_hash(proxied: Callable[..., Any]) -> None:
    _bed, proxy, store = proxied("rgw")
    assert s3_probe._known[proxy.url].integrity == "signature"
    data = blob(11 * MiB, 4)
    store.put_stream("big", io.BytesIO(data), len(data))
    parts = [r for r in proxy.requests if r.method == "PUT" and "/big?" in r.path]
    assert len(parts) == 3
    hashes = {r.header("x-amz-content-sha256") for r in parts}
    chunks = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    assert hashes == {hashlib.sha256(c).hexdigest() for c in chunks}
    assert not any(r.header("x-amz-checksum-sha256") for r in parts)


def test_moto_stores_a_damaged_upload(proxied: Callable[..., Any]) -> None:
    """A gap of moto_server 5.2, listed rather than hidden: it checks neither a checksum nor
    the signed payload hash, so a damaged body is stored as it arrived."""
    _bed, proxy, store = proxied("s3")
    assert s3_probe._known[proxy.url].integrity == "signature"
    proxy.add(CorruptRequest(method="PUT"))
    store.put("k", b"a" * 1000)
    assert refused(proxy) == [200]
    assert store.read("k") != b"a" * 1000


def test_s3_sha256_and_composite_checksum_on_the_wire(proxied: Callable[..., Any]) -> None:
    """Where the server checks x-amz-checksum-sha256 (AWS), single PUTs carry the SHA-256 of
    the body and multipart uploads declare SHA256 and send each part's: the server's composite
    checksum of the object is then the SHA-256 of the parts' digests."""
    bed, proxy, store = proxied("s3", checksums="sha256")
    client = bed.store.client
    store.put("small", b"hello")
    put = [r for r in proxy.requests if r.method == "PUT"][-1]
    assert put.header("x-amz-checksum-sha256") == b64sha256(b"hello")

    data = blob(12 * MiB, 5)
    store.put_stream("big", io.BytesIO(data), len(data))
    initiate = [r for r in proxy.requests if r.method == "POST" and r.path.endswith("?uploads")]
    assert initiate[-1].header("x-amz-checksum-algorithm") == "SHA256"
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    head = client.head_object(Bucket=store.bucket, Key=bed.full("big"), ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].split("-")[0] == base64.b64encode(composite).decode()

    # A compose mixes sent and copied parts on one SHA256 upload.
    result = store.compose("tar", [Inline(b"h" * 512), CopyRange("big", 0, len(data))])
    assert result.copied > 0
    assert store.read("tar") == b"h" * 512 + data
    assert bed.open_uploads() == []
