"""Store test bed fixtures: moto_server and Ceph RGW (S3 over HTTP), the OSS protocol server,
local dirs.

    moto_server      session: `moto_server` on a free loopback port (tests/bed/moto.py)
    rgw_server       session: a single-node Ceph cluster with radosgw (tests/bed/rgw.py)
    oss_server       session: the OSS protocol server (tests/bed/oss_server.py)
    s3_bucket        a fresh, empty bucket on moto_server
    moto_proxy       a recording proxy (tests/bed/proxy.py) in front of moto_server: what
                     reached the server, headers and answers
    fresh_probe      the S3 probe's per-endpoint memory emptied for the test, restored after
    oss_bucket       a fresh, empty bucket on oss_server
    store_bed        factory: a fresh store of one kind ("local", "s3", "rgw", "oss") with a prefix,
                     plus inspection that bypasses the store code (boto3 client, server state,
                     a directory walk) so tests can check what the server really holds
    any_store_bed    parametrized over all four kinds, and over variants of them (an Object Lock
                     bucket, SSE-C, KMS): the contract suite runs on it

Credentials are fixed test values given to each store explicitly; the process environment is
not changed (tests of `open_store` set variables with monkeypatch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest

from tests.bed.moto import MotoServer, start_moto_server
from tests.bed.oss_server import OssServer
from tests.bed.rgw import RgwServer, missing_binaries, start_rgw

OSS_ACCESS_KEY_ID = "bale-test-ak"
OSS_ACCESS_KEY_SECRET = "bale-test-secret"
OSS_REGION = "cn-test"


def oss_cli_env(home_parent: Path, server: OssServer) -> dict[str, str]:
    """An isolated environment in which the CLI reaches `server` with the bed's OSS keys."""
    from tests.bed.cli import isolated_env

    return isolated_env(
        home_parent,
        OSS_ENDPOINT=server.endpoint,
        OSS_ACCESS_KEY_ID=OSS_ACCESS_KEY_ID,
        OSS_ACCESS_KEY_SECRET=OSS_ACCESS_KEY_SECRET,
        OSS_REGION=OSS_REGION,
    )


def store_cli(
    bed: StoreBed, home_parent: Path, request: pytest.FixtureRequest
) -> tuple[str, dict[str, str]]:
    """The URL and isolated environment with which the CLI reaches `bed`'s store: a local
    directory, moto (`s3`) or the OSS test server (`oss`)."""
    from tests.bed.cli import isolated_env
    from tests.bed.moto import MOTO_KEYS

    if bed.kind == "local":
        return str(bed.store.root), isolated_env(home_parent)
    if bed.kind == "s3":
        moto = request.getfixturevalue("moto_server")
        env = isolated_env(home_parent, **MOTO_KEYS, AWS_ENDPOINT_URL=moto.endpoint_url)
        return bed.store.url, env
    if bed.kind == "oss":
        return bed.store.url, oss_cli_env(home_parent, request.getfixturevalue("oss_server"))
    raise ValueError(bed.kind)


KINDS = ("local", "s3", "rgw", "oss", "live-s3", "live-oss")

S3Server = MotoServer | RgwServer
"""Either S3 server of the bed: both offer `endpoint_url`, `client()` and `create_bucket()`."""

UPLOAD_GONE = frozenset({"NoSuchUpload", "NoSuchKey"})
"""ListParts' answers for an upload that is gone: moto and AWS say NoSuchUpload, RGW 16 says
NoSuchKey once the upload was aborted."""


def upload_gone(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response["Error"]["Code"] in UPLOAD_GONE


def fast_retry() -> Any:
    """A retry policy that does not make tests wait."""
    from pipeline.transfer.retry import RetryPolicy

    return RetryPolicy(retries=3, initial=0.01, maximum=0.05)


@dataclass
class StoreBed:
    """A store under test and an independent view of what its server holds."""

    kind: str
    store: Any
    prefix: str
    open_uploads: Callable[[], list[tuple[str, str]]]
    """(full name, upload id) of every unfinished upload, as the server lists them."""
    parts_of: Callable[[str, str], int | None]
    """Parts the server holds for (full name, upload id); None when the upload is gone."""
    names: Callable[[], list[str]]
    """Full names of every object in the bucket (or file under the directory)."""
    start_stale_upload: Callable[[str], str]
    """Begin an upload of `key` and leave it unfinished (a crashed writer); its upload id."""
    cleanup: Callable[[], None] = lambda: None
    variant: str = ""
    """"" for the plain store; `locked` (an Object Lock bucket, every write retained a day in
    GOVERNANCE mode), `sse-c` (a customer key), `kms` (SSE-KMS): see `VARIANTS`."""

    def full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto_server(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RgwServer]:
    missing = missing_binaries()
    if missing:
        pytest.fail(f"Ceph RGW bed: {', '.join(missing)} not installed (`make deps` installs it)")
    server = start_rgw(tmp_path_factory.mktemp("rgw"))
    print(f"\nCeph RGW up at {server.endpoint_url} in {server.started_in:.1f} s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def oss_server() -> Iterator[OssServer]:
    server = OssServer(access_key_id=OSS_ACCESS_KEY_ID, region=OSS_REGION)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Forget what earlier tests probed of S3 endpoints, so this test's stores probe again."""
    from pipeline.store import s3_probe

    saved = dict(s3_probe._known)
    s3_probe._known.clear()
    yield
    s3_probe._known.clear()
    s3_probe._known.update(saved)


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> str:
    return moto_server.create_bucket()


@pytest.fixture
def moto_proxy(moto_server: MotoServer) -> Iterator[Any]:
    from tests.bed.proxy import FaultProxy

    proxy = FaultProxy(moto_server.endpoint_url.removeprefix("http://")).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def oss_bucket(oss_server: OssServer) -> str:
    return oss_server.create_bucket()


VARIANTS = {
    "s3": ("locked", "sse-c", "kms"),
    "rgw": ("locked", "sse-c", "kms"),
    "oss": ("kms",),
}
"""What each server of the bed offers beyond the plain store: moto keeps Object Lock and
accepts (ignores) SSE-C and KMS headers; RGW enforces Object Lock and SSE-C, and encrypts with
SSE-KMS through its testing KMS back end (key id `bale-test-key`, tests/bed/rgw.py); the OSS
test server keeps KMS, and its WORM policy is tested on its own."""


def retained_a_day() -> Any:
    """The lock of the `locked` variant: GOVERNANCE (a test can still clean up), one day."""
    from datetime import UTC, datetime, timedelta

    from pipeline.store.protection import Lock

    return Lock("GOVERNANCE", datetime.now(UTC) + timedelta(days=1))


def _variant_tuning(kind: str, variant: str, tuning: dict[str, Any]) -> None:
    from pipeline.store.encryption import Encryption

    if variant == "sse-c":
        tuning.setdefault("encryption", Encryption("SSE-C", customer_key=os.urandom(32)))
    elif variant == "kms":
        kms = Encryption("KMS" if kind == "oss" else "aws:kms", kms_key_id="bale-test-key")
        tuning.setdefault("encryption", kms)


def empty_locked_bucket(client: Any, bucket: str) -> None:
    """Every version and delete marker removed, bypassing GOVERNANCE retention and lifting
    legal holds."""
    r = client.list_object_versions(Bucket=bucket)
    for v in r.get("Versions", []):
        try:
            hold = client.get_object_legal_hold(
                Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"]
            )
        except client.exceptions.ClientError:  # RGW: no legal hold is an error answer
            continue
        if hold.get("LegalHold", {}).get("Status") == "ON":
            client.put_object_legal_hold(
                Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"], LegalHold={"Status": "OFF"}
            )
    for v in r.get("Versions", []) + r.get("DeleteMarkers", []):
        client.delete_object(
            Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"], BypassGovernanceRetention=True
        )


def _s3_bed(
    server: S3Server, prefix: str, kind: str = "s3", variant: str = "", **tuning: Any
) -> StoreBed:
    from pipeline.store.multipart import S3_LIMITS
    from pipeline.store.s3 import S3Store

    locked = variant == "locked"
    bucket = server.create_bucket(object_lock=True) if locked else server.create_bucket()
    tuning.setdefault("part_size", S3_LIMITS.min_part)
    tuning.setdefault("retry", fast_retry())
    _variant_tuning(kind, variant, tuning)
    store = S3Store(
        bucket,
        prefix,
        endpoint_url=server.endpoint_url,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **tuning,
    )
    if locked:
        store = store.with_lock(retained_a_day())
    client = server.client()

    def open_uploads() -> list[tuple[str, str]]:
        r = client.list_multipart_uploads(Bucket=bucket)
        return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]

    def parts_of(name: str, upload_id: str) -> int | None:
        try:
            r = client.list_parts(Bucket=bucket, Key=name, UploadId=upload_id)
        except client.exceptions.ClientError as exc:
            if upload_gone(exc):
                return None
            raise
        return len(r.get("Parts", []))

    def names() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def start_stale_upload(key: str) -> str:
        name = f"{prefix}/{key}" if prefix else key
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=name)["UploadId"]
        client.upload_part(Bucket=bucket, Key=name, UploadId=upload_id, PartNumber=1, Body=b"x")
        return str(upload_id)

    def cleanup() -> None:
        for name, upload_id in open_uploads():
            client.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload_id)
        if locked:
            empty_locked_bucket(client, bucket)
        for name in names():
            client.delete_object(Bucket=bucket, Key=name)
        client.delete_bucket(Bucket=bucket)

    return StoreBed(
        kind, store, prefix, open_uploads, parts_of, names, start_stale_upload, cleanup, variant
    )


def _oss_bed(server: OssServer, prefix: str, variant: str = "", **tuning: Any) -> StoreBed:
    from pipeline.store.oss import OSSStore

    bucket = server.create_bucket()
    tuning.setdefault("part_size", 1024 * 1024)
    tuning.setdefault("retry", fast_retry())
    _variant_tuning("oss", variant, tuning)
    store = OSSStore(
        bucket,
        prefix,
        endpoint=server.endpoint,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
        region=OSS_REGION,
        **tuning,
    )

    def open_uploads() -> list[tuple[str, str]]:
        return [(u.key, u.upload_id) for u in server.uploads(bucket)]

    def parts_of(name: str, upload_id: str) -> int | None:
        for u in server.uploads(bucket):
            if u.upload_id == upload_id:
                return len(u.parts)
        return None

    def names() -> list[str]:
        return sorted(server.objects(bucket))

    def start_stale_upload(key: str) -> str:
        name = f"{prefix}/{key}" if prefix else key
        upload_id = store.bucket.init_multipart_upload(name).upload_id  # oss2 itself
        store.bucket.upload_part(name, upload_id, 1, b"x")
        return str(upload_id)

    def cleanup() -> None:
        server.drop_bucket(bucket)

    return StoreBed(
        "oss", store, prefix, open_uploads, parts_of, names, start_stale_upload, cleanup, variant
    )


def _local_bed(root: Path, **tuning: Any) -> StoreBed:
    from pipeline.store.local import TMP_DIR, LocalStore

    store = LocalStore(root, fsync=False)
    tmp = root / TMP_DIR

    def open_uploads() -> list[tuple[str, str]]:
        if not tmp.exists():
            return []
        return [(unquote(p.name.rsplit(".", 2)[0]), p.name) for p in tmp.rglob("*") if p.is_file()]

    def parts_of(name: str, upload_id: str) -> int | None:
        return 1 if (tmp / upload_id).exists() else None

    def names() -> list[str]:
        found = []
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                found.append((Path(dirpath) / f).relative_to(root).as_posix())
        return sorted(found)

    def start_stale_upload(key: str) -> str:
        upload_id = f"{quote(key, safe='')}.0123456789ab.tmp"  # as LocalStore names them
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / upload_id).write_bytes(b"x")
        return upload_id

    return StoreBed("local", store, "", open_uploads, parts_of, names, start_stale_upload)


LIVE_S3_URL = "BALE_LIVE_S3_URL"
LIVE_OSS_URL = "BALE_LIVE_OSS_URL"


def live_skip_reason(kind: str) -> str | None:
    """Why a live test of `kind` cannot run here, or None when its credentials are set."""
    if kind == "live-s3":
        if not os.environ.get(LIVE_S3_URL):
            return f"{LIVE_S3_URL} (s3://bucket/prefix) is not set"
        import boto3

        if boto3.session.Session().get_credentials() is None:
            return "no AWS credentials in the environment or profile"
        return None
    if not os.environ.get(LIVE_OSS_URL):
        return f"{LIVE_OSS_URL} (oss://bucket/prefix) is not set"
    needed = ("OSS_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET")
    missing = [v for v in needed if not os.environ.get(v)]
    return f"{', '.join(missing)} not set" if missing else None


def _live_bed(kind: str, **tuning: Any) -> StoreBed:
    """A store on a real cloud under a fresh sub-prefix, emptied afterwards."""
    import uuid

    from pipeline.store.url import open_store, parse_store_url

    reason = live_skip_reason(kind)
    if reason:
        pytest.skip(f"live {kind[5:]} test: {reason}")
    base = parse_store_url(os.environ[LIVE_S3_URL if kind == "live-s3" else LIVE_OSS_URL])
    sub = f"bale-test-{uuid.uuid4().hex[:12]}"
    prefix = f"{base.prefix}/{sub}" if base.prefix else sub
    # The same part sizes as the local test servers, so the suite means the same thing here.
    part_size = tuning.get("part_size", 5 * 1024 * 1024 if kind == "live-s3" else 1024 * 1024)
    store: Any = open_store(
        f"{base.scheme}://{base.bucket}/{prefix}",
        part_size=part_size,
        parallel=tuning.get("parallel"),
    )

    if kind == "live-s3":
        client, bucket = store.client, base.bucket

        def open_uploads() -> list[tuple[str, str]]:
            r = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/")
            return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]

        def parts_of(name: str, upload_id: str) -> int | None:
            try:
                r = client.list_parts(Bucket=bucket, Key=name, UploadId=upload_id)
            except client.exceptions.ClientError as exc:
                if upload_gone(exc):
                    return None
                raise
            return len(r.get("Parts", []))

        def names() -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix + "/"
            )
            return [o["Key"] for page in pages for o in page.get("Contents", [])]

        def start_stale_upload(key: str) -> str:
            r = client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/{key}")
            return str(r["UploadId"])

        def drop_upload(name: str, upload_id: str) -> None:
            client.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload_id)

        def drop(name: str) -> None:
            client.delete_object(Bucket=bucket, Key=name)

    else:
        import oss2

        oss = store.bucket

        def open_uploads() -> list[tuple[str, str]]:
            r = oss.list_multipart_uploads(prefix=prefix + "/")
            return [(u.key, u.upload_id) for u in r.upload_list]

        def parts_of(name: str, upload_id: str) -> int | None:
            try:
                return len(oss.list_parts(name, upload_id).parts)
            except oss2.exceptions.NoSuchUpload:
                return None

        def names() -> list[str]:
            return [o.key for o in oss2.ObjectIteratorV2(oss, prefix=prefix + "/")]

        def start_stale_upload(key: str) -> str:
            return str(oss.init_multipart_upload(f"{prefix}/{key}").upload_id)

        def drop_upload(name: str, upload_id: str) -> None:
            oss.abort_multipart_upload(name, upload_id)

        def drop(name: str) -> None:
            oss.delete_object(name)

    def cleanup() -> None:
        for name, upload_id in open_uploads():
            drop_upload(name, upload_id)
        for name in names():
            drop(name)

    return StoreBed(kind, store, prefix, open_uploads, parts_of, names, start_stale_upload, cleanup)


@pytest.fixture
def store_bed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., StoreBed]]:
    """`store_bed(kind, prefix="pfx", **tuning)`: a fresh store; servers start on first use.

    Kinds: "local", "s3" (moto_server), "rgw" (Ceph RGW), "oss" (the OSS protocol server), and
    "live-s3" / "live-oss" (real clouds, skipped unless their credentials are set).
    """
    beds: list[StoreBed] = []

    def make(kind: str, prefix: str = "pfx", variant: str = "", **tuning: Any) -> StoreBed:
        if variant and variant not in VARIANTS.get(kind, ()):
            raise ValueError(f"{kind} has no variant {variant}")
        if kind == "s3":
            bed = _s3_bed(request.getfixturevalue("moto_server"), prefix, "s3", variant, **tuning)
        elif kind == "rgw":
            bed = _s3_bed(request.getfixturevalue("rgw_server"), prefix, "rgw", variant, **tuning)
        elif kind == "oss":
            bed = _oss_bed(request.getfixturevalue("oss_server"), prefix, variant, **tuning)
        elif kind == "local":
            bed = _local_bed(tmp_path / f"store-{len(beds)}", **tuning)
        elif kind in ("live-s3", "live-oss"):
            bed = _live_bed(kind, **tuning)
        else:
            raise ValueError(kind)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.cleanup()


@pytest.fixture(
    params=[
        pytest.param("local"),
        pytest.param("s3", marks=pytest.mark.integration),
        pytest.param("rgw", marks=pytest.mark.integration),
        pytest.param("oss", marks=pytest.mark.integration),
        pytest.param("live-s3", marks=pytest.mark.live),
        pytest.param("live-oss", marks=pytest.mark.live),
        *(
            pytest.param(f"{kind}-{variant}", marks=pytest.mark.integration)
            for kind, variants in VARIANTS.items()
            for variant in variants
        ),
    ]
)
def any_store_bed(request: pytest.FixtureRequest, store_bed: Callable[..., StoreBed]) -> StoreBed:
    """Every backend in turn, and its variants (`s3-locked`, `rgw-sse-c`, ...); the contract
    suite (tests/test_store_contract.py) runs on it."""
    kind, _, variant = str(request.param).partition("-")
    if kind == "live":
        return store_bed(request.param)
    return store_bed(kind, variant=variant)
