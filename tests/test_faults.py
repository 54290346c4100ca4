"""Fault injection: the real `bale` CLI archiving through a proxy that breaks things on purpose.

Every test here runs `python -m pipeline archive` against a real registry (docker-registry
2.8.2) with `tests/bed/proxy.py` in between (and, for store faults, in front of moto_server),
then checks three things: the command's outcome (exit code, one line per failure), what went
over the wire (the proxy's request log: which requests were retried, with which `Range`), and
what the store holds (`bale verify` clean, every blob hashing to its name, nothing that points
at missing data).

The helpers the other fault suites share (running the CLI, reading the store) live in
tests/bed/cli.py and tests/bed/store_view.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from tests.bed.cli import isolated_env, run_bale, show
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.proxy import (
    Corrupt,
    DropAfter,
    Fault,
    FaultProxy,
    ResetAfter,
    ResetRequest,
    Respond,
    Trickle,
    Truncate,
    WrongLength,
)
from tests.bed.registry import RegistryServer
from tests.bed.store_view import blob_digests, check_local_blobs, local_keys, record_of

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def verify_clean(store: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    proc = run_bale("verify", store, *extra, env=env)
    assert proc.returncode == 0, show(proc)
    assert proc.stdout == "", show(proc)  # one line per fault, and there are none
    return proc


def layer_path(layer: Any) -> str:
    """A proxy path regex for exactly this blob."""
    return "/blobs/" + re.escape(layer.digest) + "$"


# ---- the image every registry-fault test archives ----------------------------------------------


@dataclass(frozen=True)
class Pushed:
    image: BuiltImage
    repo: str
    tag: str

    @property
    def big(self) -> Any:
        """The 3 MiB layer that faults are aimed at."""
        return max(self.image.layers, key=lambda d: d.size)

    def ref(self, host: str) -> str:
        return f"docker://{host}/{self.repo}:{self.tag}"


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, image_factory: ImageFactory) -> Pushed:
    """One image in the anonymous registry: a small gzip layer and a 3 MiB stored one."""
    image = image_factory.image(
        layers=(LayerSpec(20_000, seed=7001), LayerSpec(3 * MiB, "none", seed=7002))
    )
    image_factory.push(image, f"{registry.host}/faults/app:1", registry)
    return Pushed(image, "faults/app", "1")


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p


def archive_through(
    proxy: FaultProxy, pushed: Pushed, tmp_path: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], Path, dict[str, str]]:
    store = tmp_path / "store"
    env = isolated_env(tmp_path, **MOTO_KEYS)
    proc = run_bale(
        "-v",
        "archive",
        pushed.ref(proxy.host),
        "--to",
        str(store),
        "--src-tls-verify=false",
        *extra,
        env=env,
    )
    return proc, store, env


def assert_archived(
    proc: subprocess.CompletedProcess[str],
    store: Path,
    pushed: Pushed,
    host: str,
    env: dict[str, str],
) -> None:
    """Exit 0, the record names the pushed digest, every blob is intact, verify is clean."""
    assert proc.returncode == 0, show(proc)
    assert re.search(r"^archived\s", proc.stdout, re.M), show(proc)
    assert record_of(store, f"{host}/{pushed.repo}:{pushed.tag}")["digest"] == pushed.image.digest
    held = blob_digests(local_keys(store))
    assert {d.digest for d in pushed.image.blobs} <= held
    assert check_local_blobs(store) == len(held)
    assert not [k for k in local_keys(store) if k.startswith(".bale-tmp/")]
    verify_clean(str(store), env)


# ---- registry faults: each one is survived -----------------------------------------------------


@dataclass(frozen=True)
class RegistryFault:
    id: str
    faults: Callable[[Pushed], list[Fault]]
    log: str
    """A regex that must match a line of stderr (the retry made visible)."""
    big_gets: list[tuple[int, str | None, str | None]] | None
    """(status, Range sent, fault) of each GET of the big layer, in order."""


RESUME_AT = 1_000_000

REGISTRY_FAULTS = [
    RegistryFault(
        "connection-reset-mid-blob",
        lambda p: [ResetAfter(method="GET", path=layer_path(p.big), after=RESUME_AT)],
        # A reset throws away what the client's kernel had not yet handed over, so the resume
        # starts at or before the byte the proxy got to (checked in the test).
        r"Connection reset by peer.* at byte \d+ of \d+; resuming",
        None,
    ),
    RegistryFault(
        "connection-closed-mid-blob",
        lambda p: [DropAfter(method="GET", path=layer_path(p.big), after=RESUME_AT)],
        rf"at byte {RESUME_AT} of \d+; resuming",
        [(200, None, "DropAfter"), (206, f"bytes={RESUME_AT}-", None)],
    ),
    RegistryFault(
        "truncated-body",
        lambda p: [Truncate(method="GET", path=layer_path(p.big), keep=RESUME_AT)],
        rf"connection closed early at byte {RESUME_AT} of \d+; resuming",
        [(200, None, "Truncate"), (206, f"bytes={RESUME_AT}-", None)],
    ),
    RegistryFault(
        "content-length-too-small",
        # The server declares 1000 bytes fewer than it sends: the message ends early, the
        # stray bytes after it must not be taken for the next response.
        lambda p: [WrongLength(method="GET", path=layer_path(p.big), delta=-1000)],
        r"connection closed early at byte \d+ of \d+; resuming",
        None,  # checked in the test: the resume starts 1000 bytes before the end
    ),
    RegistryFault(
        "content-length-too-large",
        # More declared than sent, then the connection closes: the blob's own size says when
        # it is complete, so nothing is lost and nothing is retried.
        lambda p: [WrongLength(method="GET", path=layer_path(p.big), delta=+1000)],
        "",
        [(200, None, "WrongLength")],
    ),
    RegistryFault(
        "429-retry-after-seconds",
        lambda p: [
            Respond(method="GET", path=layer_path(p.big), status=429, headers={"Retry-After": "1"})
        ],
        r"retrying .*@sha256:[0-9a-f]{64} in 1\.\ds after HTTP 429 \(attempt 2/6\)",
        [(429, None, "Respond"), (200, None, None)],
    ),
    RegistryFault(
        "503-retry-after-http-date",
        lambda p: [
            Respond(
                method="GET",
                path=layer_path(p.big),
                status=503,
                # A date has whole seconds and bale takes a moment to start: 4 s ahead still
                # leaves over 1 s to wait when the request arrives.
                headers={"Retry-After": formatdate(time.time() + 4, usegmt=True)},
            )
        ],
        r"retrying .*@sha256:[0-9a-f]{64} in [0-4]\.\ds after HTTP 503 \(attempt 2/6\)",
        [(503, None, "Respond"), (200, None, None)],
    ),
    RegistryFault(
        "503-on-manifest-twice",
        lambda p: [
            Respond(
                method="GET", path="/manifests/", status=503, headers={"Retry-After": "0"}, times=2
            )
        ],
        r"retrying .*faults/app:1 in .* after HTTP 503 \(attempt 3/6\)",
        [(200, None, None)],
    ),
    RegistryFault(
        "slow-trickle",
        lambda p: [Trickle(method="GET", path=layer_path(p.big), rate=2 * MiB, piece=8192)],
        "",
        [(200, None, "Trickle")],
    ),
]


@pytest.mark.parametrize("case", REGISTRY_FAULTS, ids=[c.id for c in REGISTRY_FAULTS])
def test_archive_survives_registry_fault(
    case: RegistryFault, proxy: FaultProxy, pushed: Pushed, tmp_path: Path
) -> None:
    for fault in case.faults(pushed):
        proxy.add(fault)
    started = time.monotonic()
    proc, store, env = archive_through(proxy, pushed, tmp_path)
    took = time.monotonic() - started
    assert_archived(proc, store, pushed, proxy.host, env)
    assert all(f.fired for f in proxy.faults), "a fault never fired: " + show(proc)
    if case.log:
        assert re.search(case.log, proc.stderr, re.M), show(proc)
    big = [r for r in proxy.find("GET", layer_path(pushed.big))]
    got = [(r.status, r.header("Range"), r.fault) for r in big]
    if case.big_gets is not None:
        assert got == case.big_gets, show(proc)
    if case.id == "connection-reset-mid-blob":
        assert got[0] == (200, None, "ResetAfter") and len(got) == 2, got
        resumed = got[1][1]
        if resumed is None:  # nothing had reached bale before the reset: a fresh GET
            assert got[1][0] == 200
        else:
            assert got[1][0] == 206 and int(resumed[6:-1]) <= RESUME_AT, got
    if case.id == "content-length-too-small":
        size = pushed.big.size
        assert got == [(200, None, "WrongLength"), (206, f"bytes={size - 1000}-", None)]
    if case.id.startswith(("429", "503-retry")):
        waited = big[1].started - big[0].started
        assert waited >= 0.9, f"Retry-After not honoured: retried after {waited:.2f}s"
    if case.id == "slow-trickle":
        assert took >= pushed.big.size / (2 * MiB) * 0.9  # the trickle really was slow
        assert big[0].finished is not None and big[0].finished - big[0].started >= 1.2


def test_retries_stop_when_the_connection_never_makes_progress(
    proxy: FaultProxy, pushed: Pushed, tmp_path: Path
) -> None:
    """Every GET of the layer resets at byte 0: `--retries 2` means three tries, then the image
    fails (exit 1, one line naming the blob) and nothing of it is referenced in the store."""
    proxy.add(ResetAfter(method="GET", path=layer_path(pushed.big), after=0, times=None))
    proc, store, env = archive_through(proxy, pushed, tmp_path, "--retries", "2")
    assert proc.returncode == 1, show(proc)
    failed = [line for line in proc.stdout.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1, show(proc)
    assert pushed.big.digest in failed[0] and "gave up after 3 attempts" in failed[0]
    assert len(proxy.find("GET", layer_path(pushed.big))) == 3
    assert_nothing_of_it(store, env, missing=pushed.big.digest)


def assert_nothing_of_it(store: Path, env: dict[str, str], missing: str) -> None:
    """A failed image leaves no tag, link, manifest, tar or record, never the bad blob, and no
    temporary file; any other blob it stored is intact and unreferenced (gc lists it)."""
    keys = local_keys(store)
    assert not [k for k in keys if k.startswith((layout.IMAGES_PREFIX, layout.REPOSITORIES_PREFIX))]
    assert not [k for k in keys if k.startswith(".bale-tmp/")], keys
    held = blob_digests(keys)
    assert missing not in held
    check_local_blobs(store)
    if store.exists():
        verify_clean(str(store), env)
        dry = run_bale("gc", str(store), "--dry-run", "--older-than", "0s", env=env)
        assert dry.returncode == 0, show(dry)
        listed = {line.split()[3] for line in dry.stdout.splitlines() if " blob " in line}
        assert listed == held, show(dry)


# ---- corrupted bytes ---------------------------------------------------------------------------


def test_corrupt_blob_is_never_stored_and_the_image_fails(
    proxy: FaultProxy, pushed: Pushed, tmp_path: Path
) -> None:
    """The registry flips a byte of the layer on every GET: the digest check catches it, the
    upload of that blob is abandoned, the image fails with exit 1 and one line."""
    proxy.add(Corrupt(method="GET", path=layer_path(pushed.big), times=None))
    report = tmp_path / "report.json"
    proc, store, env = archive_through(proxy, pushed, tmp_path, "--report", str(report))
    assert proc.returncode == 1, show(proc)
    failed = [line for line in proc.stdout.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1, show(proc)
    assert f"expected {pushed.big.digest}, got sha256:" in failed[0]
    (image,) = json.loads(report.read_text())["images"]
    assert image["status"] == "failed" and pushed.big.digest in image["error"]
    assert_nothing_of_it(store, env, missing=pushed.big.digest)


def test_corrupt_response_once_is_refetched(
    proxy: FaultProxy, pushed: Pushed, tmp_path: Path
) -> None:
    proxy.add(Corrupt(method="GET", path=layer_path(pushed.big), times=1))
    proc, store, env = archive_through(proxy, pushed, tmp_path)
    assert_archived(proc, store, pushed, proxy.host, env)
    assert len(proxy.find("GET", layer_path(pushed.big))) == 2


# ---- a redirect to another host ----------------------------------------------------------------


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_redirect_to_another_host_carries_no_authorization(
    auth: str,
    registries: dict[str, RegistryServer],
    image_factory: ImageFactory,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    """The authenticated registry answers the layer GET with a 307 to another origin (as an S3
    or CDN redirect does); that host serves the blob anonymously and must never see the
    registry's Authorization (Basic password or Bearer token)."""
    front_registry, storage_registry = registries[auth], registries["none"]
    image = image_factory.image(layers=(LayerSpec(300_000, seed=7101),))
    image_factory.push(image, f"{front_registry.host}/{unique_repo}:1", front_registry)
    image_factory.push(image, f"{storage_registry.host}/{unique_repo}:1", storage_registry)
    (layer,) = image.layers
    with FaultProxy(front_registry.host) as front, FaultProxy(storage_registry.host) as storage:
        # `localhost` vs `127.0.0.1`: another origin, as the storage behind a registry is.
        target = f"http://localhost:{storage.port}/v2/{unique_repo}/blobs/{layer.digest}"
        front.add(Respond(path=layer_path(layer), status=307, headers={"Location": target}))
        store = tmp_path / "store"
        env = isolated_env(tmp_path, **MOTO_KEYS)
        proc = run_bale(
            "-vv",
            "archive",
            f"docker://{front.host}/{unique_repo}:1",
            "--to",
            str(store),
            "--src-tls-verify=false",
            "--src-creds",
            str(front_registry.creds),
            env=env,
        )
        assert proc.returncode == 0, show(proc)
        (redirect,) = front.find("GET", layer_path(layer))
        assert redirect.status == 307 and redirect.header("Authorization"), redirect
        (followed,) = storage.find("GET", layer_path(layer))
        assert followed.status == 200
        assert followed.header("Authorization") is None, followed.headers
        secret = str(front_registry.password)
        for request in storage.requests:
            assert not any(
                secret in v or "Bearer" in v or "Basic" in v for v in request.headers.values()
            )
        host = front.host
    assert record_of(store, f"{host}/{unique_repo}:1")["digest"] == image.digest
    assert check_local_blobs(store) == len(image.blobs) + 1
    verify_clean(str(store), env)


# ---- store faults: a proxy in front of moto_server or the OSS server -----------------------------


@pytest.fixture(scope="module")
def big_pushed(registry: RegistryServer, image_factory: ImageFactory) -> Pushed:
    """A 12 MiB layer: two multipart parts at the default 8 MiB part size."""
    image = image_factory.image(layers=(LayerSpec(12 * MiB, "none", seed=7201),))
    image_factory.push(image, f"{registry.host}/faults/big:1", registry)
    return Pushed(image, "faults/big", "1")


@dataclass
class StoreBehindProxy:
    """A fresh bucket on a store server, a proxy in front of it, and a view around the proxy."""

    scheme: str
    bucket: str
    proxy: FaultProxy
    env: dict[str, str]
    read: Callable[[str], bytes]
    """Bytes of a full object name, read from the server directly."""
    open_uploads: Callable[[], list[str]]

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}/arch"


@pytest.fixture(params=["s3", "oss"])
def store_proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBehindProxy]:
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        bucket = moto.create_bucket()
        client = moto.client()
        with FaultProxy(moto.endpoint_url.removeprefix("http://")) as proxy:
            yield StoreBehindProxy(
                "s3",
                bucket,
                proxy,
                isolated_env(tmp_path, **MOTO_KEYS),
                lambda name: client.get_object(Bucket=bucket, Key=name)["Body"].read(),
                lambda: [
                    u["Key"]
                    for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                ],
            )
        return
    from tests.bed.fixtures_store import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_REGION

    oss = request.getfixturevalue("oss_server")
    bucket = oss.create_bucket()
    env = isolated_env(
        tmp_path,
        **MOTO_KEYS,
        OSS_ACCESS_KEY_ID=OSS_ACCESS_KEY_ID,
        OSS_ACCESS_KEY_SECRET=OSS_ACCESS_KEY_SECRET,
        OSS_REGION=OSS_REGION,
    )
    with FaultProxy(oss.endpoint.removeprefix("http://")) as proxy:
        yield StoreBehindProxy(
            "oss",
            bucket,
            proxy,
            env,
            lambda name: oss.objects(bucket)[name],
            lambda: [u.key for u in oss.uploads(bucket)],
        )
    oss.drop_bucket(bucket)


STORE_FAULTS = {
    "503-on-one-part": lambda key: Respond(
        method="PUT",
        path=key,
        query=r"partNumber=2(&|$)",
        status=503,
        headers={"Content-Type": "application/xml"},
        body=b"<Error><Code>ServiceUnavailable</Code><Message>slow down</Message></Error>",
    ),
    "reset-during-one-part": lambda key: ResetRequest(
        method="PUT", path=key, query=r"partNumber=1(&|$)", after=2 * MiB
    ),
}


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_failed_multipart_part_is_retried_alone(
    fault: str,
    store_proxy: StoreBehindProxy,
    registry: RegistryServer,
    big_pushed: Pushed,
) -> None:
    """One part of a blob's multipart upload fails (a 503, or the connection reset while the
    part is sent): that part alone is sent again, within the same upload, and the blob is
    stored whole and intact."""
    proxy = store_proxy.proxy
    (layer,) = big_pushed.image.layers
    # oss2 sends the key URL-encoded (`%2F`), boto3 with plain slashes.
    key = re.escape(layout.blob_key(layer.digest)).replace("/", "(?:/|%2F)")
    proxy.add(STORE_FAULTS[fault](key))
    env = store_proxy.env
    endpoint = ["--endpoint-url", proxy.url]
    proc = run_bale(
        "-v",
        "archive",
        big_pushed.ref(registry.host),
        "--to",
        store_proxy.url,
        *endpoint,
        "--src-tls-verify=false",
        env=env,
    )
    assert proc.returncode == 0, show(proc)
    assert all(f.fired for f in proxy.faults)
    puts = [r for r in proxy.find("PUT", key) if "partNumber=" in r.path]
    numbers = [re.search(r"partNumber=(\d+)", r.path).group(1) for r in puts]  # type: ignore[union-attr]
    bad = "2" if fault == "503-on-one-part" else "1"
    good = "1" if bad == "2" else "2"
    assert sorted(numbers) == sorted([bad, bad, good]), numbers  # only the failed part again
    assert len(proxy.find("POST", key)) == 2  # initiate, complete: one upload, not a restart
    assert re.search(r"retrying .* after ", proc.stderr), show(proc)
    data = store_proxy.read(f"arch/{layout.blob_key(layer.digest)}")
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
    assert store_proxy.open_uploads() == []
    verify_clean(store_proxy.url, env, *endpoint)
