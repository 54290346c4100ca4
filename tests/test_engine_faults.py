"""One engine, one answer: a blob corrupted on the way is fetched again by every command.

`archive`, `copy` (to a registry and to a tar), `restore` and `sync` all move blobs through
`pipeline/copy/engine.py`; a digest mismatch is retried there, once for all of them. Each case
runs the real CLI with `tests/bed/proxy.py` between bale and the server the blob is read from
(the registry, or for `restore` the S3 bucket), flipping a byte of the blob's body once (the
command succeeds, the blob read twice) or on every read (exit 1, the digest named, nothing
tagged at the destination).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.refs import Reference
from tests.bed.cli import isolated_env, run_bale, show
from tests.bed.fixtures_registry import RegistryFactory
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.proxy import Corrupt, FaultProxy
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
COMMANDS = ["archive", "copy-registry", "copy-tar", "restore", "sync"]


def _env(tmp_path: Path) -> dict[str, str]:
    return isolated_env(tmp_path, **MOTO_KEYS)


def _bale(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_bale("-v", *args, env=env)


@dataclass(frozen=True)
class Bed:
    image: BuiltImage
    source: RegistryServer
    dest: RegistryServer
    moto: MotoServer

    @property
    def big(self) -> str:
        return max(self.image.layers, key=lambda d: d.size).digest


@pytest.fixture(scope="module")
def bed(
    registry: RegistryServer,
    make_registry: RegistryFactory,
    image_factory: ImageFactory,
    moto_server: MotoServer,
) -> Bed:
    image = image_factory.image(
        layers=(LayerSpec(20_000, seed=7301), LayerSpec(2 * MiB, "none", seed=7302))
    )
    image_factory.push(image, f"{registry.host}/engine/app:1", registry)
    return Bed(image, registry, make_registry("none"), moto_server)


@dataclass
class Case:
    proc: subprocess.CompletedProcess[str]
    proxy: FaultProxy
    blob_path: str
    check: str
    """What the destination must hold on success (a registry ref, a tar, a store)."""


def _run(
    command: str,
    bed: Bed,
    tmp_path: Path,
    times: int | None,
    *extra: str,
    image: BuiltImage | None = None,
    repo: str = "engine/app",
    **proxy_options: int,
) -> Iterator[Case]:
    """Run `command` with the blob's source behind a proxy; a `Corrupt` fault on `bed.big`
    unless `times` is 0. Yields once, while the proxy is still up."""
    env = _env(tmp_path)
    n = uuid.uuid4().hex[:8]  # destinations are shared by the module: a name per case
    image = image or bed.image
    big = max(image.layers, key=lambda d: d.size).digest
    if command == "restore":
        # The image is archived in S3 directly, then restored through a proxy in front of it.
        bucket = bed.moto.create_bucket()
        store = f"s3://{bucket}/arch"
        ref = f"docker://{bed.source.host}/{repo}:1"
        done = _bale(
            "archive", ref, "--to", store, "--endpoint-url", bed.moto.endpoint_url,
            "--src-tls-verify=false", env=env,
        )  # fmt: skip
        assert done.returncode == 0, show(done)
        moto_host = bed.moto.endpoint_url.removeprefix("http://")
        with FaultProxy(moto_host, **proxy_options) as proxy:  # type: ignore[arg-type]
            path = re.escape(layout.blob_key(big)).replace("/", "(?:/|%2F)")
            if times != 0:
                proxy.add(Corrupt(method="GET", path=path, times=times))
            dest = f"docker://{bed.dest.host}/restored/app{n}:1"
            proc = _bale(
                "restore", ref, dest, "--from", store, "--endpoint-url", proxy.url,
                "--dest-tls-verify=false", *extra, env=env,
            )  # fmt: skip
            yield Case(proc, proxy, path, dest)
        return
    with FaultProxy(bed.source.host, **proxy_options) as proxy:  # type: ignore[arg-type]
        path = "/blobs/" + re.escape(big) + "$"
        if times != 0:
            proxy.add(Corrupt(method="GET", path=path, times=times))
        src = f"docker://{proxy.host}/{repo}:1"
        tls = ("--src-tls-verify=false", "--dest-tls-verify=false")
        if command == "archive":
            store = str(tmp_path / f"store{n}")
            proc = _bale("archive", src, "--to", store, "--src-tls-verify=false", *extra, env=env)
            yield Case(proc, proxy, path, store)
        elif command == "copy-registry":
            dest = f"docker://{bed.dest.host}/copied/app{n}:1"
            proc = _bale("copy", src, dest, *tls, *extra, env=env)
            yield Case(proc, proxy, path, dest)
        elif command == "copy-tar":
            tar = tmp_path / f"app{n}.tar"
            proc = _bale(
                "copy", src, f"docker-archive:{tar}", "--src-tls-verify=false", *extra, env=env
            )
            yield Case(proc, proxy, path, str(tar))
        else:
            dest = f"docker://{bed.dest.host}/synced{n}"
            proc = _bale("sync", src, dest, *tls, *extra, env=env)
            yield Case(proc, proxy, path, f"{dest}/{repo.rpartition('/')[2]}:1")


def _dest_digest(ref: str) -> str | None:
    """The digest of the manifest a registry holds under `docker://HOST/REPO:TAG`."""
    host, _, rest = ref.removeprefix("docker://").partition("/")
    repo, _, tag = rest.rpartition(":")
    accept = ", ".join(
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
    )
    request = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return "sha256:" + hashlib.sha256(resp.read()).hexdigest()
    except urllib.error.HTTPError:
        return None


@pytest.mark.parametrize("command", COMMANDS)
def test_corrupt_blob_once_is_fetched_again(command: str, bed: Bed, tmp_path: Path) -> None:
    for case in _run(command, bed, tmp_path, times=1):
        assert case.proc.returncode == 0, show(case.proc)
        assert len(case.proxy.find("GET", case.blob_path)) == 2, show(case.proc)
        assert re.search(rf"fetching {bed.big} again after .* \(attempt 2/", case.proc.stderr)
        if command == "copy-tar":
            names = subprocess.run(["tar", "tf", case.check], capture_output=True, text=True)
            assert bed.big.removeprefix("sha256:") in names.stdout
        elif command == "archive":
            ref = Reference.parse(f"{case.proxy.host}/engine/app:1")
            record = json.loads((Path(case.check) / layout.record_key_for(ref)).read_text())
            assert record["digest"] == bed.image.digest
        else:
            assert _dest_digest(case.check) == bed.image.digest


@pytest.mark.parametrize("command", COMMANDS)
def test_corrupt_blob_every_time_fails_with_nothing_tagged(
    command: str, bed: Bed, tmp_path: Path
) -> None:
    for case in _run(command, bed, tmp_path, times=None):
        assert case.proc.returncode == 1, show(case.proc)
        assert f"expected {bed.big}, got sha256:" in case.proc.stdout + case.proc.stderr
        if command == "copy-tar":
            assert not Path(case.check).exists()
        elif command == "archive":
            keys = [p for p in Path(case.check).rglob("*") if p.is_file()]
            assert not [k for k in keys if layout.IMAGES_PREFIX in k.as_posix()]
        else:
            assert _dest_digest(case.check) is None


# ---- --limit-rate --------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_limit_rate_caps_every_command(
    command: str, bed: Bed, image_factory: ImageFactory, tmp_path: Path
) -> None:
    """The one limiter paces every command's blob reads: the bytes crossing the proxy in front
    of the source (registry, or the S3 bucket for restore), in 3-second windows after the
    first second, stay under a 4 MiB/s cap plus 15% (the shape of tests/test_limit_rate.py).
    Pushing to a registry on a busy machine may run below the cap: only the cap is asserted (a
    floor is a speed target, the bench's, and failed here under load); a limiter that stalls
    never lets the command finish, and its exit code is checked."""
    rate = 4 * MiB
    image = image_factory.image(
        layers=tuple(LayerSpec(2 * MiB, "none", seed=7400 + i) for i in range(12))
    )
    repo = f"engine/capped-{command}"
    image_factory.push(image, f"{bed.source.host}/{repo}:1", bed.source)
    extra = ("--jobs", "8", "--limit-rate", str(rate))
    options = {"sndbuf": 64 * 1024, "meter_piece": 16 * 1024}
    for case in _run(command, bed, tmp_path, 0, *extra, image=image, repo=repo, **options):
        assert case.proc.returncode == 0, show(case.proc)
        proxy = case.proxy
        first = min(t for t, _ in proxy.meter)
        gets = [r for r in proxy.find("GET", "") if r.finished is not None and r.body_bytes > MiB]
        last = max(r.finished for r in gets if r.finished is not None)
        rates = []
        t = first + 1.0
        while t + 3.0 <= last:
            rates.append(proxy.bytes_between(t, t + 3.0) / 3.0)
            t += 0.25
        assert len(rates) >= 2, (first, last)  # enough 3 s windows to judge the cap
        shown = " ".join(f"{r / MiB:.2f}" for r in rates)
        assert max(rates) <= 1.15 * rate, shown
