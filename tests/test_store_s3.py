"""S3 specifics against moto_server: client set-up, retries, error messages, URL configuration.

Faults are injected at botocore's transport hook (`before-send`), which stands in for the server
answering 503/409/403: the store's own code (retry, error mapping, abort) runs for real.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from pipeline.errors import InvalidStoreURL, StoreError
from pipeline.store.base import CopyRange, Inline
from pipeline.store.s3 import S3Store
from pipeline.store.url import open_store
from tests.bed.fixtures_store import StoreBed
from tests.bed.moto import ACCESS_KEY, SECRET_KEY, MotoServer

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def error_response(url: str, status: int, code: str) -> AWSResponse:
    body = f"<Error><Code>{code}</Code><Message>injected {code}</Message></Error>".encode()
    return AWSResponse(url, status, {"Content-Type": "application/xml"}, _Raw(body))


def inject(
    store: S3Store, operation: str, fault: Callable[[Any], AWSResponse | None]
) -> Counter[str]:
    """Call `fault(request)` before each `operation` is sent; a response it returns is what the
    client receives instead of the server's. Returns a counter of requests seen, by URL query."""
    seen: Counter[str] = Counter()

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        seen[request.url.split("?", 1)[-1]] += 1
        return fault(request)

    store.client.meta.events.register(f"before-send.s3.{operation}", hook)
    return seen


def test_client_is_set_up_for_s3_compatible_servers(store_bed: Callable[..., StoreBed]) -> None:
    store = store_bed("s3", parallel=16).store
    config = store.client.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.s3["addressing_style"] == "path"
    assert config.max_pool_connections >= 16 * 2
    assert config.retries["total_max_attempts"] == 1  # one retry policy: bale's


def test_failed_part_is_retried_alone(store_bed: Callable[..., StoreBed]) -> None:
    bed = store_bed("s3")
    store = bed.store
    failed: list[str] = []

    def fault(request: Any) -> AWSResponse | None:
        if "partNumber=2&" in request.url + "&" and not failed:
            failed.append(request.url)
            return error_response(request.url, 503, "SlowDown")
        return None

    seen = inject(store, "UploadPart", fault)
    data = random.Random(3).randbytes(16 * MiB)
    store.put_stream("retried", io.BytesIO(data), len(data))
    assert store.read("retried") == data
    by_part = Counter({q.split("partNumber=")[1].split("&")[0]: n for q, n in seen.items()})
    assert by_part == {"1": 1, "2": 2, "3": 1, "4": 1}
    assert bed.open_uploads() == []


def test_retries_give_up_with_one_line_and_abort(store_bed: Callable[..., StoreBed]) -> None:
    bed = store_bed("s3")
    store = bed.store
    inject(store, "UploadPart", lambda r: error_response(r.url, 503, "ServiceUnavailable"))
    data = random.Random(4).randbytes(11 * MiB)
    with pytest.raises(StoreError) as info:
        store.put_stream("never", io.BytesIO(data), len(data))
    message = str(info.value)
    assert "\n" not in message and "gave up after 4 attempts" in message
    assert SECRET_KEY not in message
    assert store.head("never") is None
    assert bed.open_uploads() == []


def test_conflicting_concurrent_put_is_retried(store_bed: Callable[..., StoreBed]) -> None:
    store = store_bed("s3").store
    conflicts: list[int] = []

    def fault(request: Any) -> AWSResponse | None:
        if len(conflicts) < 2:
            conflicts.append(1)
            return error_response(request.url, 409, "ConditionalRequestConflict")
        return None

    inject(store, "PutObject", fault)
    assert store.put("k", b"v", if_absent=True).written
    assert len(conflicts) == 2
    assert store.read("k") == b"v"


def test_access_denied_names_the_bucket(store_bed: Callable[..., StoreBed]) -> None:
    store = store_bed("s3").store
    inject(store, "GetObject", lambda r: error_response(r.url, 403, "AccessDenied"))
    with pytest.raises(StoreError) as info:
        store.read("secret/thing")
    assert (
        str(info.value)
        == f"access denied to bucket {store.bucket} ({store.describe('secret/thing')})"
    )


def test_missing_bucket(moto_server: MotoServer) -> None:
    store = S3Store(
        "no-such-bucket-here",
        endpoint_url=moto_server.endpoint_url,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    with pytest.raises(StoreError, match="bucket no-such-bucket-here does not exist"):
        store.put("k", b"v")


def test_compose_sends_only_the_planned_bytes(store_bed: Callable[..., StoreBed]) -> None:
    """Count what really goes up (PUT and UploadPart bodies) against the reported `sent`."""
    store = store_bed("s3").store
    layer = random.Random(5).randbytes(12 * MiB)
    store.put_stream("layer", io.BytesIO(layer), len(layer))
    uploaded: list[int] = []
    copies: list[str] = []

    def count(request: Any) -> None:
        uploaded.append(int(request.headers.get("Content-Length", 0)))

    inject(store, "UploadPart", count)
    inject(store, "PutObject", count)
    inject(store, "UploadPartCopy", lambda r: copies.append(r.headers["x-amz-copy-source-range"]))
    result = store.compose(
        "tar", [Inline(b"h" * 512), CopyRange("layer", 0, len(layer)), Inline(b"t" * 1024)]
    )
    assert sum(uploaded) == result.sent == 5 * MiB + 1024
    shown = [c.decode() if isinstance(c, bytes) else c for c in copies]
    assert shown == [f"bytes={5 * MiB - 512}-{len(layer) - 1}"]


# -- configuration from the URL and the environment --------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    """The standard AWS chain, pointed at test credentials only."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return monkeypatch


def test_open_store_uses_aws_endpoint_url(
    moto_server: MotoServer, aws_env: pytest.MonkeyPatch
) -> None:
    bucket = moto_server.create_bucket()
    aws_env.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    store = open_store(f"s3://{bucket}/some/prefix/")
    assert isinstance(store, S3Store)
    assert store.url == f"s3://{bucket}/some/prefix"
    assert store.client.meta.config.s3["addressing_style"] == "path"
    store.put("k", b"v")
    assert (
        moto_server.client().get_object(Bucket=bucket, Key="some/prefix/k")["Body"].read() == b"v"
    )


def test_endpoint_url_option_wins_over_env(
    moto_server: MotoServer, aws_env: pytest.MonkeyPatch
) -> None:
    bucket = moto_server.create_bucket()
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    store = open_store(f"s3://{bucket}", endpoint_url=moto_server.endpoint_url)
    store.put("k", b"v")
    assert store.read("k") == b"v"


def test_no_endpoint_means_aws_virtual_hosted(aws_env: pytest.MonkeyPatch) -> None:
    store = open_store("s3://some-bucket/p")
    assert isinstance(store, S3Store)
    assert store.endpoint_url is None
    assert store.client.meta.config.s3.get("addressing_style") is None


def test_bucketless_urls_are_usage_errors() -> None:
    for url in ("s3://", "s3:///prefix"):
        with pytest.raises(InvalidStoreURL) as info:
            open_store(url)
        assert info.value.exit_code == 2
