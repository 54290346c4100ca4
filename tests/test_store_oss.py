"""OSS specifics: signing, retries, error messages, configuration, and the test server's fidelity.

The server in tests/bed/oss_server.py is the OSS side of these tests, so part of this file checks
that it behaves like OSS where bale depends on it (using oss2 directly, not bale's code).
"""

from __future__ import annotations

import base64
import io
import random
from collections import Counter
from collections.abc import Callable

import oss2
import pytest

from pipeline.errors import InvalidStoreURL, StoreError
from pipeline.store.base import CopyRange, Inline
from pipeline.store.oss import OSSStore, region_from_endpoint
from pipeline.store.url import open_store
from tests.bed.fixtures_store import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_REGION,
    StoreBed,
    fast_retry,
)
from tests.bed.oss_server import OssServer, crc64

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB


def raw_bucket(server: OssServer, bucket: str) -> oss2.Bucket:
    """oss2 on its own, for checking the server (V4 signing, like bale)."""
    auth = oss2.ProviderAuthV4(
        oss2.credentials.StaticCredentialsProvider(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET)
    )
    return oss2.Bucket(auth, server.endpoint, bucket, region=OSS_REGION)


# -- bale's OSS backend ------------------------------------------------------------------------


def test_v4_signing_with_region(store_bed: Callable[..., StoreBed], oss_server: OssServer) -> None:
    bed = store_bed("oss")
    bed.store.put("k", b"v")
    bucket = bed.store.bucket_name
    assert {r.auth for r in oss_server.requests(bucket)} == {"v4"}


def test_v1_signing_without_region(oss_server: OssServer) -> None:
    bucket = oss_server.create_bucket()
    store = OSSStore(
        bucket,
        endpoint=oss_server.endpoint,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
    )
    store.put("k", b"v")
    assert store.read("k") == b"v"
    assert {r.auth for r in oss_server.requests(bucket)} == {"v1"}


def test_region_from_endpoint() -> None:
    assert region_from_endpoint("https://oss-cn-hangzhou.aliyuncs.com") == "cn-hangzhou"
    assert region_from_endpoint("oss-ap-southeast-1-internal.aliyuncs.com") == "ap-southeast-1"
    assert region_from_endpoint("http://127.0.0.1:9000") is None


def test_failed_part_is_retried_alone(
    store_bed: Callable[..., StoreBed], oss_server: OssServer
) -> None:
    bed = store_bed("oss")
    bucket = bed.store.bucket_name
    oss_server.fail("PUT", lambda key, q: q.get("partNumber") == "3", code="ServiceUnavailable")
    data = random.Random(1).randbytes(5 * MiB)
    bed.store.put_stream("retried", io.BytesIO(data), len(data))
    assert bed.store.read("retried") == data
    puts = Counter(
        r.query["partNumber"]
        for r in oss_server.requests(bucket)
        if r.method == "PUT" and "partNumber" in r.query
    )
    assert puts == {"1": 1, "2": 1, "3": 2, "4": 1, "5": 1}
    assert bed.open_uploads() == []


def test_throttling_gives_up_with_one_line(
    store_bed: Callable[..., StoreBed], oss_server: OssServer
) -> None:
    bed = store_bed("oss")
    oss_server.fail(
        "PUT", lambda key, q: key.endswith("/busy"), status=503, code="SlowDown", times=10
    )
    with pytest.raises(StoreError) as info:
        bed.store.put("busy", b"v")
    assert "gave up after 4 attempts" in str(info.value) and "\n" not in str(info.value)


def test_access_denied_names_the_bucket(
    store_bed: Callable[..., StoreBed], oss_server: OssServer
) -> None:
    bed = store_bed("oss")
    bucket = bed.store.bucket_name
    oss_server.deny(bucket)
    with pytest.raises(StoreError) as info:
        bed.store.put("x", b"v")
    assert str(info.value) == f"access denied to bucket {bucket} ({bed.store.describe('x')})"


def test_wrong_key_id_is_reported_without_secrets(oss_server: OssServer) -> None:
    bucket = oss_server.create_bucket()
    store = OSSStore(
        bucket,
        endpoint=oss_server.endpoint,
        access_key_id="someone-else",
        access_key_secret="hunter2-secret",
        region=OSS_REGION,
        retry=fast_retry(),
    )
    with pytest.raises(StoreError) as info:
        store.put("x", b"v")
    message = str(info.value)
    assert message == f"credentials rejected for bucket {bucket} (InvalidAccessKeyId)"
    assert "hunter2" not in message


def test_missing_bucket(oss_server: OssServer) -> None:
    store = OSSStore(
        "no-such-bucket",
        endpoint=oss_server.endpoint,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
        region=OSS_REGION,
    )
    with pytest.raises(StoreError, match="bucket no-such-bucket does not exist"):
        store.head("k")


def test_compose_uses_upload_part_copy_and_sends_the_plan(
    store_bed: Callable[..., StoreBed], oss_server: OssServer
) -> None:
    bed = store_bed("oss")
    bucket = bed.store.bucket_name
    layer = random.Random(2).randbytes(12 * MiB)
    bed.store.put_stream("layer", io.BytesIO(layer), len(layer))
    before = len(oss_server.requests(bucket))
    result = bed.store.compose(
        "tar", [Inline(b"h" * 512), CopyRange("layer", 0, len(layer)), Inline(b"t" * 1024)]
    )
    log = oss_server.requests(bucket)[before:]
    sent = sum(r.body_bytes for r in log if r.method == "PUT")
    copies = [r for r in log if r.method == "PUT" and r.body_bytes == 0 and "partNumber" in r.query]
    assert sent == result.sent == 100 * KiB + 1024
    assert len(copies) == 1
    assert bed.store.read("tar") == b"h" * 512 + layer + b"t" * 1024


def test_open_store_from_environment(
    oss_server: OssServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = oss_server.create_bucket()
    monkeypatch.setenv("OSS_ENDPOINT", oss_server.endpoint)
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", OSS_ACCESS_KEY_ID)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", OSS_ACCESS_KEY_SECRET)
    monkeypatch.setenv("OSS_REGION", OSS_REGION)
    monkeypatch.delenv("OSS_SESSION_TOKEN", raising=False)
    store = open_store(f"oss://{bucket}/archive")
    assert isinstance(store, OSSStore) and store.url == f"oss://{bucket}/archive"
    store.put("k", b"v")
    assert oss_server.objects(bucket) == {"archive/k": b"v"}
    assert {r.auth for r in oss_server.requests(bucket)} == {"v4"}


def test_open_store_needs_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OSS_ENDPOINT", raising=False)
    with pytest.raises(InvalidStoreURL, match="OSS_ENDPOINT or --endpoint-url") as info:
        open_store("oss://bucket/p")
    assert info.value.exit_code == 2


def test_session_token_is_sent(oss_server: OssServer) -> None:
    bucket = oss_server.create_bucket()
    store = OSSStore(
        bucket,
        endpoint=oss_server.endpoint,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
        security_token="sts-token",
        region=OSS_REGION,
    )
    seen: list[str | None] = []
    original = store.bucket.session.do_request

    def spy(req, timeout):  # type: ignore[no-untyped-def]
        seen.append(req.headers.get("x-oss-security-token"))
        return original(req, timeout)

    store.bucket.session.do_request = spy  # type: ignore[method-assign]
    store.put("k", b"v")
    assert seen == ["sts-token"]


# -- the test server behaves like OSS where bale depends on it ---------------------------------


def test_server_xml_has_no_namespace_and_carries_oss_headers(oss_server: OssServer) -> None:
    bucket = oss_server.create_bucket()
    b = raw_bucket(oss_server, bucket)
    result = b.put_object("k", b"123456789")
    assert result.crc == 0x995DC9BBDF1939FA == crc64(b"123456789")  # CRC-64/XZ check value
    assert result.request_id and result.etag == "25F9E794323B453885F5181F1B624D0B"
    listing = b.list_objects_v2()
    assert [o.key for o in listing.object_list] == ["k"]
    raw = b.get_object("k").resp.headers
    assert raw["x-oss-hash-crc64ecma"] == str(0x995DC9BBDF1939FA)


def test_server_forbid_overwrite(oss_server: OssServer) -> None:
    b = raw_bucket(oss_server, oss_server.create_bucket())
    b.put_object("k", b"1")
    with pytest.raises(oss2.exceptions.ServerError) as info:
        b.put_object("k", b"2", headers={"x-oss-forbid-overwrite": "true"})
    assert (info.value.status, info.value.code) == (409, "FileAlreadyExists")
    assert b.get_object("k").read() == b"1"


def test_server_multipart_rules(oss_server: OssServer) -> None:
    b = raw_bucket(oss_server, oss_server.create_bucket())
    upload = b.init_multipart_upload("m").upload_id
    p1 = b.upload_part("m", upload, 1, b"a" * 1000)  # under 100 KB and not last
    p2 = b.upload_part("m", upload, 2, b"b" * 10)
    parts = [oss2.models.PartInfo(1, p1.etag), oss2.models.PartInfo(2, p2.etag)]
    with pytest.raises(oss2.exceptions.ServerError) as info:
        b.complete_multipart_upload("m", upload, parts)
    assert info.value.code == "EntityTooSmall"
    with pytest.raises(oss2.exceptions.ServerError) as info:
        b.complete_multipart_upload("m", upload, [oss2.models.PartInfo(1, "0" * 32)])
    assert info.value.code == "InvalidPart"
    assert [p.part_number for p in b.list_parts("m", upload).parts] == [1, 2]
    big = b.upload_part("m", upload, 1, b"a" * (100 * KiB))
    b.put_object("m", b"already")
    with pytest.raises(oss2.exceptions.ServerError) as info:
        b.complete_multipart_upload(
            "m",
            upload,
            [oss2.models.PartInfo(1, big.etag), oss2.models.PartInfo(2, p2.etag)],
            headers={"x-oss-forbid-overwrite": "true"},
        )
    assert (info.value.status, info.value.code) == (409, "FileAlreadyExists")
    b.complete_multipart_upload(
        "m", upload, [oss2.models.PartInfo(1, big.etag), oss2.models.PartInfo(2, p2.etag)]
    )
    assert b.get_object("m").read() == b"a" * (100 * KiB) + b"b" * 10
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        b.list_parts("m", upload)


def test_server_upload_part_copy_and_uploads_listing(oss_server: OssServer) -> None:
    b = raw_bucket(oss_server, oss_server.create_bucket())
    b.put_object("src", bytes(range(256)) * 1000)
    upload = b.init_multipart_upload("dst").upload_id
    other = b.init_multipart_upload("dst2").upload_id
    copied = b.upload_part_copy(b.bucket_name, "src", (100, 199), "dst", upload, 1)
    assert copied.etag
    listed = b.list_multipart_uploads(max_uploads=1)
    assert [u.upload_id for u in listed.upload_list] == [upload] and listed.is_truncated
    rest = b.list_multipart_uploads(
        key_marker=listed.next_key_marker, upload_id_marker=listed.next_upload_id_marker
    )
    assert [u.upload_id for u in rest.upload_list] == [other]
    b.complete_multipart_upload("dst", upload, [oss2.models.PartInfo(1, copied.etag)])
    assert b.get_object("dst").read() == (bytes(range(256)) * 1000)[100:200]
    b.abort_multipart_upload("dst2", other)
    assert b.list_multipart_uploads().upload_list == []


def test_server_range_behaviour(oss_server: OssServer) -> None:
    b = raw_bucket(oss_server, oss_server.create_bucket())
    b.put_object("r", b"0123456789")
    assert b.get_object("r", byte_range=(2, 4)).read() == b"234"
    # OSS's legacy behaviour: an unsatisfiable range returns the whole object with 200 ...
    assert b.get_object("r", byte_range=(20, 30)).read() == b"0123456789"
    # ... unless the client asks for standard behaviour.
    with pytest.raises(oss2.exceptions.ServerError) as info:
        b.get_object("r", byte_range=(20, 30), headers={"x-oss-range-behavior": "standard"})
    assert info.value.status == 416


def test_server_requires_a_well_formed_authorization(oss_server: OssServer) -> None:
    bucket = oss_server.create_bucket()
    anonymous = oss2.Bucket(oss2.AnonymousAuth(), oss_server.endpoint, bucket)
    with pytest.raises(oss2.exceptions.ServerError) as info:
        anonymous.put_object("k", b"v")
    assert info.value.status == 403
    head = oss2.Bucket(oss2.AnonymousAuth(), oss_server.endpoint, bucket)
    with pytest.raises(oss2.exceptions.ServerError) as info:
        head.head_object("k")
    assert info.value.status == 403
    assert base64.b64decode(info.value.headers["x-oss-err"]).startswith(b"<?xml")


@pytest.fixture
def slow_restore(oss_server: OssServer) -> Callable[[float], None]:
    """Make restores on the test server take a while (put back afterwards)."""
    saved = oss_server.restore_delay

    def set_delay(seconds: float) -> None:
        oss_server.restore_delay = seconds

    yield set_delay  # type: ignore[misc]
    oss_server.restore_delay = saved


def test_restore_in_progress_then_ready(
    store_bed: Callable[..., StoreBed],
    oss_server: OssServer,
    slow_restore: Callable[[float], None],
) -> None:
    """A restore that takes time: in progress (reads still refused, a second request not
    sent again), then ready; ColdArchive restores carry the tier."""
    import time

    from pipeline.errors import ObjectFrozen
    from pipeline.store.classes import Thaw

    slow_restore(1.0)
    bed = store_bed("oss")
    store = bed.store
    store.with_storage_class("ColdArchive").put("ice", b"cold bytes")
    assert store.restore("ice", days=3, tier="expedited") is Thaw.IN_PROGRESS
    info = store.head("ice")
    assert info.frozen and info.restore is not None and info.restore.ongoing
    with pytest.raises(ObjectFrozen):
        store.read("ice")
    restores = [r for r in oss_server.requests(store.bucket_name) if "restore" in r.query]
    assert [r.status for r in restores] == [202]
    assert store.restore("ice") is Thaw.IN_PROGRESS  # HEAD says so: not asked again
    while store.head("ice").frozen:
        time.sleep(0.1)
    assert store.restore("ice") is Thaw.READY
    assert store.read("ice") == b"cold bytes"
    restores = [r for r in oss_server.requests(store.bucket_name) if "restore" in r.query]
    assert len(restores) == 1


def test_server_models_archive_objects(oss_server: OssServer, oss_bucket: str) -> None:
    """The test server answers as OSS does for archive objects (oss2 on its own)."""
    bucket = raw_bucket(oss_server, oss_bucket)
    bucket.put_object("ice", b"x", headers={"x-oss-storage-class": "Archive"})
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        bucket.get_object("ice")
    assert (caught.value.status, caught.value.code) == (403, "InvalidObjectState")
    assert bucket.head_object("ice").headers["x-oss-storage-class"] == "Archive"
    assert bucket.restore_object("ice").status == 202
    assert bucket.restore_object("ice").status == 200  # done at once: extended
    assert bucket.head_object("ice").headers["x-oss-restore"].startswith('ongoing-request="false"')
    assert bucket.get_object("ice").read() == b"x"
    bucket.put_object("warm", b"y")
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        bucket.restore_object("warm")
    assert caught.value.code == "OperationNotSupported"
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        bucket.put_object("k", b"z", headers={"x-oss-storage-class": "Glacier"})
    assert (caught.value.status, caught.value.code) == (400, "InvalidArgument")
