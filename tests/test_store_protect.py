"""Encryption at rest and write-once buckets in the store layer, on the bed's real servers.

What reaches the server is read where the server sees it: a recording proxy in front of
moto_server (tests/bed/proxy.py logs every request's headers), the OSS test server's own request
log, and for Ceph RGW (which really encrypts with an SSE-C key, and enforces Object Lock) its
answers to a client that lacks the key. moto_server accepts SSE-C headers and ignores them, so
there it is the wire that is checked; RGW is where a wrong key is refused.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ObjectRetained, StoreUnusable, UsageError, WrongEncryptionKey
from pipeline.store.base import CopyRange, Inline
from pipeline.store.encryption import NONE, Encryption, from_options, sse_c_key
from pipeline.store.oss import OSSStore
from pipeline.store.protection import UNPROTECTED, Lock, Protection
from pipeline.store.s3 import S3Store
from pipeline.store.url import open_location, open_store
from tests.bed.fixtures_store import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_REGION,
    empty_locked_bucket,
    fast_retry,
)
from tests.bed.moto import MotoServer
from tests.bed.oss_server import OssServer
from tests.bed.proxy import FaultProxy, ProxiedRequest
from tests.bed.rgw import KMS_KEY_ID, RgwServer

MiB = 1024 * 1024
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def kinds(requests: list[ProxiedRequest]) -> list[str]:
    """S3 operations of `requests`, from method and query."""
    out = []
    for r in requests:
        query = r.path.partition("?")[2]
        if r.method == "PUT" and "uploadId" in query:
            op = "UploadPartCopy" if r.header("x-amz-copy-source") else "UploadPart"
        elif r.method == "POST" and "uploads" in query:
            op = "CreateMultipartUpload"
        elif r.method == "POST" and "uploadId" in query:
            op = "CompleteMultipartUpload"
        elif r.method == "PUT" and query.split("&")[0] in ("retention", "legal-hold"):
            op = "PutObjectRetention" if "retention" in query else "PutObjectLegalHold"
        else:
            op = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject"}.get(r.method, "")
            op = op or r.method
        out.append(op)
    return out


# -- the settings, no server -----------------------------------------------------------------


def test_sse_c_key_file_is_checked_and_never_shown(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(KEY)
    b64 = tmp_path / "b64.key"
    b64.write_text(base64.b64encode(KEY).decode() + "\n")
    assert sse_c_key(raw) == KEY == sse_c_key(b64)
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    for path, said in ((short, "31 bytes"), (tmp_path / "absent.key", "absent.key")):
        with pytest.raises(UsageError, match=said) as caught:
            from_options("s3", key_file=path)
        assert caught.value.exit_code == 2
    chosen = from_options("s3", key_file=raw)
    assert chosen.mode == "SSE-C" and chosen.customer_key == KEY
    shown = " ".join((repr(chosen), str(chosen), str(chosen.describe())))
    for secret in (KEY.hex(), base64.b64encode(KEY).decode(), repr(KEY)):
        assert secret not in shown
    assert chosen.describe() == {"sse": "SSE-C", "sse_c_key_md5": md5_b64(KEY)}
    assert "***" in chosen.scrub(f"oops {base64.b64encode(KEY).decode()}")


@pytest.mark.parametrize(
    ("scheme", "sse", "options", "said"),
    [
        ("oss", None, {"key_file": "k"}, "SSE-C is not available on oss://"),
        ("s3", "AES256", {"kms_key_id": "arn:k"}, "KMS key id needs"),
        ("s3", None, {"kms_key_id": "arn:k"}, "KMS key id needs"),
        ("s3", "DES", {}, "unknown encryption 'DES'"),
        ("s3", "SSE-C", {}, "needs its key"),
        ("file", "AES256", {}, "local directory is not encrypted"),
    ],
)
def test_encryption_that_cannot_work_is_refused(
    scheme: str, sse: str | None, options: dict[str, Any], said: str
) -> None:
    with pytest.raises(UsageError, match=said) as caught:
        from_options(scheme, sse, **options)
    assert caught.value.exit_code == 2


def test_encryption_names_per_provider() -> None:
    assert from_options("s3", "aws:kms", kms_key_id="arn:k").describe() == {
        "sse": "aws:kms",
        "kms_key_id": "arn:k",
    }
    assert from_options("oss", "aws:kms").mode == "KMS"  # one spelling for the user
    assert from_options("s3", "kms").mode == "aws:kms"
    assert from_options("oss", "AES256").oss_write_headers() == {
        "x-oss-server-side-encryption": "AES256"
    }
    assert from_options("s3", "none") is NONE and NONE.describe() == {}


def test_local_store_refuses_encryption_and_locks(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="local directory"):
        open_store(str(tmp_path), encryption=Encryption("AES256"))
    with pytest.raises(UsageError, match="local directory"):
        open_location(str(tmp_path / "x.tar"), encryption=Encryption("SSE-C", customer_key=KEY))
    store = open_store(str(tmp_path))
    assert store.protection() == UNPROTECTED
    with pytest.raises(UsageError, match="no Object Lock"):
        store.with_lock(Lock(legal_hold=True))
    with pytest.raises(UsageError, match="in the past"):
        Lock("GOVERNANCE", datetime.now(UTC) - timedelta(days=1))
    with pytest.raises(UsageError, match="both its mode"):
        Lock("GOVERNANCE")


# -- S3 on moto_server, seen through a recording proxy ----------------------------------------


def s3_stores(
    server: MotoServer | RgwServer, endpoint: str, **defaults: Any
) -> Iterator[Callable[..., S3Store]]:
    """`make(bucket=None, *, object_lock=False, **options)`: stores on fresh buckets of `server`
    (or on `bucket`), talking to `endpoint`; locked buckets emptied afterwards."""
    made: list[tuple[str, bool]] = []

    def make(bucket: str | None = None, *, object_lock: bool = False, **options: Any) -> S3Store:
        if bucket is None:
            bucket = server.create_bucket(object_lock=object_lock)
            made.append((bucket, object_lock))
        return S3Store(
            bucket,
            "pfx",
            endpoint_url=endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
            part_size=5 * MiB,
            retry=fast_retry(),
            **(defaults | options),
        )

    yield make
    client = server.client()
    for bucket, locked in made:
        if locked:
            empty_locked_bucket(client, bucket)


@pytest.fixture
def s3_behind(moto_server: MotoServer, moto_proxy: FaultProxy) -> Iterator[Callable[..., S3Store]]:
    """Stores on moto through the proxy. They send the signed payload hash (moto's probed
    choice) without probing: the probe's scratch writes are not what these tests look at."""
    yield from s3_stores(moto_server, moto_proxy.url, checksums="signature")


def compose_a_tar(store: Any) -> bytes:
    """A small object, a multipart blob and a tar composed from it (UploadPartCopy): every kind
    of write; the tar's bytes."""
    layer = blob(11 * MiB, seed=1)
    store.put("small.json", b'{"a": 1}')
    store.put_stream("blobs/layer", io.BytesIO(layer), len(layer))
    store.compose("images/app.tar", [Inline(b"H" * 512), CopyRange("blobs/layer", 0, len(layer))])
    return b"H" * 512 + layer


@pytest.mark.integration
def test_s3_kms_headers_on_every_write(
    s3_behind: Callable[..., S3Store], moto_proxy: FaultProxy
) -> None:
    store = s3_behind(encryption=Encryption("aws:kms", kms_key_id="arn:aws:kms:bale-test"))
    tar = compose_a_tar(store)
    assert store.read("images/app.tar") == tar
    writes = [
        (op, r)
        for op, r in zip(kinds(moto_proxy.requests), moto_proxy.requests, strict=True)
        if op in ("PutObject", "CreateMultipartUpload")
    ]
    assert [op for op, _ in writes] == [
        "PutObject",  # small.json
        "CreateMultipartUpload",  # blobs/layer
        "CreateMultipartUpload",  # images/app.tar, composed
    ]
    for _, r in writes:
        assert r.header("x-amz-server-side-encryption") == "aws:kms"
        assert r.header("x-amz-server-side-encryption-aws-kms-key-id") == "arn:aws:kms:bale-test"
    # Parts, copies and reads need nothing under SSE-KMS.
    others = [r for r in moto_proxy.requests if r not in [w for _, w in writes]]
    assert others and not any(r.header("x-amz-server-side-encryption") for r in others)
    info = store.head("images/app.tar")
    assert info is not None and info.encryption == "aws:kms"


@pytest.mark.integration
def test_s3_sse_c_key_on_every_request_that_touches_bytes(
    s3_behind: Callable[..., S3Store], moto_proxy: FaultProxy
) -> None:
    chosen = Encryption("SSE-C", customer_key=KEY)
    store = s3_behind(encryption=chosen)
    tar = compose_a_tar(store)
    assert store.read("images/app.tar", 100, 1000) == tar[100:1100]
    assert store.open("blobs/layer").read(10) == tar[512:522]
    assert store.head("small.json") is not None
    ops = kinds(moto_proxy.requests)
    assert {"PutObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy", "GetObject",
            "HeadObject", "CompleteMultipartUpload"} <= set(ops)  # fmt: skip
    key_b64, key_md5 = base64.b64encode(KEY).decode(), md5_b64(KEY)
    for op, r in zip(ops, moto_proxy.requests, strict=True):
        if op == "CompleteMultipartUpload":
            continue  # AWS wants the key there only with checksums (none here)
        assert r.header("x-amz-server-side-encryption-customer-algorithm") == "AES256", op
        assert r.header("x-amz-server-side-encryption-customer-key") == key_b64, op
        assert r.header("x-amz-server-side-encryption-customer-key-md5") == key_md5, op
        copy_key = r.header("x-amz-copy-source-server-side-encryption-customer-key")
        assert (copy_key == key_b64) == (op == "UploadPartCopy"), op
        if op == "UploadPartCopy":
            assert r.header("x-amz-copy-source-server-side-encryption-customer-key-md5") == key_md5
    assert key_b64 not in repr(store) and key_b64 not in str(store.encryption.describe())


@pytest.mark.integration
def test_s3_protection_asked_once(
    s3_behind: Callable[..., S3Store], moto_server: MotoServer, moto_proxy: FaultProxy
) -> None:
    plain = s3_behind()
    with pytest.raises(UsageError, match="has no Object Lock") as refused:
        plain.with_lock(Lock(legal_hold=True))
    assert refused.value.exit_code == 2
    assert plain.protection() == UNPROTECTED
    locked = s3_behind(object_lock=True)
    assert locked.protection() == Protection("object-lock")
    moto_server.client().put_object_lock_configuration(
        Bucket=locked.bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Years": 1}},
        },
    )
    assert locked.protection() == Protection("object-lock")  # kept: asked once
    fresh = S3Store(
        locked.bucket,
        endpoint_url=moto_proxy.url,
        access_key=moto_server.access_key,
        secret_key=moto_server.secret_key,
    )
    view = fresh.with_storage_class("STANDARD_IA")
    found = view.protection()
    assert found == Protection("object-lock", mode="COMPLIANCE", days=365)
    assert fresh.protection() is found  # views share what was learnt of the bucket
    assert found.describe() == {
        "protection": "object-lock",
        "mode": "COMPLIANCE",
        "retention_days": 365,
    }
    asked = [r for r in moto_proxy.requests if r.path.endswith("?object-lock")]
    assert len(asked) == 3  # one per store: plain, locked, fresh


@pytest.mark.integration
def test_s3_retention_and_legal_hold_on_writes(
    s3_behind: Callable[..., S3Store], moto_proxy: FaultProxy
) -> None:
    until = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    plain = s3_behind(object_lock=True)
    store = plain.with_lock(Lock("GOVERNANCE", until, legal_hold=True))
    assert plain.lock == Lock()  # the view carries the lock, not the store
    assert store.lock.describe() == {
        "mode": "GOVERNANCE",
        "retain_until": until.isoformat(),
        "legal_hold": "ON",
    }
    tar = compose_a_tar(store)
    ops = kinds(moto_proxy.requests)
    for op, r in zip(ops, moto_proxy.requests, strict=True):
        if op in ("PutObject", "CreateMultipartUpload"):
            assert r.header("x-amz-object-lock-mode") == "GOVERNANCE", op
            assert r.header("x-amz-object-lock-retain-until-date") is not None
            assert r.header("x-amz-object-lock-legal-hold") == "ON", op
        if op in ("PutObject", "UploadPart"):
            assert r.header("Content-MD5"), op  # what S3 requires of locked writes
    # moto (and RGW) drop the lock asked at CreateMultipartUpload: the store sets it on the
    # completed version (AWS keeps it, and the store then sees it there and asks nothing).
    assert {"PutObjectRetention", "PutObjectLegalHold"} <= set(ops)
    for key in ("small.json", "blobs/layer", "images/app.tar"):
        info = store.head(key)
        assert info is not None and info.retention is not None, key
        assert (info.retention.mode, info.retention.until, info.retention.legal_hold) == (
            "GOVERNANCE",
            until,
            True,
        )
        with pytest.raises(ObjectRetained, match="legal hold") as refused:
            store.delete(key)
        assert refused.value.key == key and refused.value.legal_hold
    assert store.read("small.json") == b'{"a": 1}'
    assert store.read("images/app.tar") == tar
    # Without a lock, on the same bucket: deleting removes the version itself, not just
    # hiding it behind a delete marker.
    plain.put("free", b"x")
    plain.delete("free")
    versions = plain.client.list_object_versions(Bucket=plain.bucket, Prefix="pfx/free")
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []
    plain.delete("free")  # gone already: fine


@pytest.mark.integration
def test_s3_default_retention_learns_content_md5(
    s3_behind: Callable[..., S3Store], moto_server: MotoServer, moto_proxy: FaultProxy
) -> None:
    """A bucket whose default retention makes S3 require Content-MD5: a store that was not
    told (protection() not asked) is refused once, then sends it on every write."""
    store = s3_behind(object_lock=True)
    moto_server.client().put_object_lock_configuration(
        Bucket=store.bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2}},
        },
    )
    store.put("a", b"first")
    store.put("b", b"second")
    puts = moto_proxy.find("PUT")
    assert [(r.status, r.header("Content-MD5")) for r in puts] == [
        (400, None),
        (200, md5_b64(b"first")),
        (200, md5_b64(b"second")),
    ]
    info = store.head("a")
    assert info is not None and info.retention is not None and info.retention.mode == "GOVERNANCE"
    with pytest.raises(ObjectRetained, match="retained until"):
        store.delete("a")


# -- OSS on the OSS test server (its own request log) ----------------------------------------


@pytest.fixture
def oss_store(oss_server: OssServer) -> Iterator[Callable[..., OSSStore]]:
    buckets: list[str] = []

    def make(bucket: str | None = None, **options: Any) -> OSSStore:
        if bucket is None:
            bucket = oss_server.create_bucket()
            buckets.append(bucket)
        return OSSStore(
            bucket,
            "pfx",
            endpoint=oss_server.endpoint,
            access_key_id=OSS_ACCESS_KEY_ID,
            access_key_secret=OSS_ACCESS_KEY_SECRET,
            region=OSS_REGION,
            part_size=1 * MiB,
            retry=fast_retry(),
            **options,
        )

    yield make
    for bucket in buckets:
        oss_server.drop_bucket(bucket)


@pytest.mark.integration
def test_oss_kms_headers_on_every_write(
    oss_store: Callable[..., OSSStore], oss_server: OssServer
) -> None:
    store = oss_store(encryption=from_options("oss", "KMS", kms_key_id="bale-cmk"))
    tar = compose_a_tar(store)
    assert store.read("images/app.tar") == tar
    log = oss_server.requests(store.bucket_name)
    writes = [
        r for r in log if (r.method == "PUT" and not r.query) or (r.method == "POST" and "uploads" in r.query)
    ]  # fmt: skip
    assert len(writes) == 3  # the small object; the blob's and the tar's uploads
    for r in writes:
        assert r.headers["x-oss-server-side-encryption"] == "KMS"
        assert r.headers["x-oss-server-side-encryption-key-id"] == "bale-cmk"
    for key in ("small.json", "blobs/layer", "images/app.tar"):
        assert oss_server.stored(store.bucket_name, f"pfx/{key}").sse == "KMS"
        info = store.head(key)
        assert info is not None and info.encryption == "KMS"
    plain = oss_store()
    plain.put("x", b"x")
    assert "x-oss-server-side-encryption" not in oss_server.requests(plain.bucket_name)[-1].headers


@pytest.mark.integration
def test_oss_worm_refuses_overwrite_and_delete(
    oss_store: Callable[..., OSSStore], oss_server: OssServer
) -> None:
    store = oss_store()
    store.put("images/a.tar", b"first")
    assert store.protection() == UNPROTECTED
    worm_id = store.bucket.init_bucket_worm(2).worm_id  # the bucket's owner, with oss2 itself
    fresh = oss_store(store.bucket_name)
    assert fresh.protection() == Protection("worm", mode="WORM", days=2, state="InProgress")
    store.bucket.complete_bucket_worm(worm_id)
    assert fresh.protection().state == "InProgress"  # asked once
    locked = oss_store(store.bucket_name)
    found = locked.protection()
    assert found == Protection("worm", mode="WORM", days=2, state="Locked")
    assert str(found) == "OSS WORM (Locked), 2 days from each write"

    written = locked.head("images/a.tar")
    assert written is not None and written.modified is not None
    assert written.retention is not None
    assert written.retention.until == written.modified + timedelta(days=2)
    with pytest.raises(ObjectRetained, match=r"images/a.tar: retained until") as refused:
        locked.delete("images/a.tar")
    assert refused.value.until == written.retention.until
    with pytest.raises(ObjectRetained):
        locked.put("images/a.tar", b"second")
    with pytest.raises(ObjectRetained):  # a multipart overwrite, refused at completion
        locked.put_stream("images/a.tar", io.BytesIO(blob(3 * MiB)), 3 * MiB)
    assert locked.put("images/a.tar", b"second", if_absent=True).written is False
    assert locked.read("images/a.tar") == b"first"
    assert oss_server.uploads(store.bucket_name) == []  # the refused upload was aborted
    refusals = [r for r in oss_server.requests(store.bucket_name) if r.status == 409]
    assert [(r.method, r.key) for r in refusals] == [
        ("DELETE", "pfx/images/a.tar"),
        ("PUT", "pfx/images/a.tar"),
        ("POST", "pfx/images/a.tar"),  # the completion
        ("PUT", "pfx/images/a.tar"),  # if-absent: taken (FileAlreadyExists), no WORM involved
    ]
    assert locked.put("images/b.tar", b"new").written  # new objects are fine

    oss_server.age(store.bucket_name, "pfx/images/a.tar", 3 * 86400)
    locked.delete("images/a.tar")
    assert locked.head("images/a.tar") is None
    with pytest.raises(UsageError, match="OSS has no retention"):
        locked.with_lock(Lock(legal_hold=True))


# -- Ceph RGW: SSE-C and Object Lock enforced ------------------------------------------------


@pytest.fixture
def rgw_store(rgw_server: RgwServer) -> Iterator[Callable[..., S3Store]]:
    yield from s3_stores(rgw_server, rgw_server.endpoint_url)


@pytest.mark.integration
def test_rgw_sse_c_round_trip_and_wrong_key(
    rgw_store: Callable[..., S3Store], rgw_server: RgwServer
) -> None:
    store = rgw_store(encryption=Encryption("SSE-C", customer_key=KEY))
    tar = compose_a_tar(store)
    assert store.read("images/app.tar") == tar
    assert store.read("blobs/layer", 5 * MiB, 10) == tar[512 + 5 * MiB : 522 + 5 * MiB]
    info = store.head("images/app.tar")
    assert info is not None and info.encryption == "SSE-C"

    # The server holds it encrypted: a client without the key gets nothing.
    client = rgw_server.client()
    with pytest.raises(client.exceptions.ClientError):
        client.get_object(Bucket=store.bucket, Key="pfx/small.json")

    other = rgw_store(store.bucket, encryption=Encryption("SSE-C", customer_key=OTHER_KEY))
    none = rgw_store(store.bucket)
    for reader, said in ((other, "does not match"), (none, "read without one")):
        for read in (
            lambda s: s.read("small.json"),
            lambda s: s.open("blobs/layer", 0, 10).read(),
            lambda s: s.head("images/app.tar"),
        ):
            with pytest.raises(WrongEncryptionKey, match=said) as caught:
                read(reader)
            assert caught.value.exit_code == 2
            assert "s3://" in str(caught.value)
            for secret in (base64.b64encode(KEY).decode(), base64.b64encode(OTHER_KEY).decode()):
                assert secret not in str(caught.value)


@pytest.mark.integration
def test_rgw_kms_refusals_are_one_line_exit_2(rgw_store: Callable[..., S3Store]) -> None:
    """RGW (its testing KMS back end) encrypts with its one key id; no id or another is
    refused there, and `check(write=True)` says so before any image."""
    good = rgw_store(encryption=from_options("s3", "aws:kms", kms_key_id=KMS_KEY_ID))
    good.check(write=True)
    good.put("k", b"kms")
    info = good.head("k")
    assert info is not None and info.encryption == "aws:kms" and good.read("k") == b"kms"
    for key_id, said in ((None, "requires .*key-id"), ("no-such-key", "no-such-key")):
        store = rgw_store(encryption=from_options("s3", "aws:kms", kms_key_id=key_id))
        with pytest.raises(StoreUnusable, match=f"refused encryption sse=aws:kms.*{said}") as no:
            store.check(write=True)
        assert no.value.exit_code == 2 and "credentials" not in str(no.value)
        with pytest.raises(StoreUnusable):
            store.put("k2", b"x")


@pytest.mark.integration
def test_rgw_object_lock(rgw_store: Callable[..., S3Store]) -> None:
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    plain = rgw_store(object_lock=True)
    assert plain.protection() == Protection("object-lock")
    store = plain.with_lock(Lock("GOVERNANCE", until))
    store.put("records/a.json", b"{}")
    data = blob(6 * MiB, seed=3)
    store.put_stream("blobs/b", io.BytesIO(data), len(data))  # multipart: locked the same
    for key in ("records/a.json", "blobs/b"):
        info = store.head(key)
        assert info is not None and info.retention is not None, key
        assert (info.retention.mode, info.retention.until) == ("GOVERNANCE", until)
    with pytest.raises(ObjectRetained, match="retained until") as refused:
        store.delete("records/a.json")
    assert refused.value.until == until
    assert store.read("records/a.json") == b"{}"
    plain.put("free", b"x")
    plain.delete("free")
    assert plain.head("free") is None
    assert rgw_store().protection() == UNPROTECTED
