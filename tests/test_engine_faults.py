"""One engine, one answer: every command survives the same faults, and fails the same way.

`archive`, `copy` (to a registry, and to a docker-archive tar on disk and in S3), `restore` and
`sync` all move blobs through `pipeline/copy/engine.py`. Each case runs the real CLI with
`tests/bed/proxy.py` between bale and the server the blob is read from (the registry, or for
`restore` the S3 bucket) and breaks the read of the image's largest blob:

- transient faults (a reset or a truncated body mid-blob, 429/503 with Retry-After, a body
  corrupted once, a 307 to another host/port that serves the blob, as an S3-backed registry
  answers) are survived: exit 0, the destination holds the image whole;
- a body corrupted on every read fails the command (exit 1, the digest named) and leaves
  nothing visible at the destination: no tag, no record or tar link, no tar, no multipart
  upload left open;
- `kill -9` mid-blob leaves nothing visible; the same command again completes, reading from the
  source only the blobs the destination does not already hold;
- `--limit-rate` caps the reads of every command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import tarfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.refs import Reference
from tests.bed.cli import isolated_env, kill_when, run_bale, show, start_bale
from tests.bed.fixtures_registry import RegistryFactory
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.proxy import (
    Corrupt,
    Fault,
    FaultProxy,
    ResetAfter,
    Respond,
    Stall,
    Truncate,
)
from tests.bed.registry import RegistryServer
from tests.bed.store_view import S3View, blob_digests, check_no_dangling

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
COMMANDS = ["archive", "copy-registry", "copy-tar", "copy-tar-s3", "restore", "sync"]
TO_TAR = ("copy-tar", "copy-tar-s3")


def _bale(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_bale("-v", *args, env=env)


@dataclass
class Bed:
    image: BuiltImage
    source: RegistryServer
    dest: RegistryServer
    moto: MotoServer
    archived: dict[str, str]
    """Repository -> an S3 store it was archived to, once per module, for `restore` to read."""
    large: BuiltImage
    """`engine/large:1`: a 12 MiB layer, over the 8 MiB part size, so that a write to S3 (the
    blob, or the tar) is a multipart upload with a part in it when the corruption is found."""

    def archived_store(self, repo: str, env: dict[str, str]) -> str:
        if repo not in self.archived:
            store = f"s3://{self.moto.create_bucket()}/arch"
            done = _bale(
                "archive", f"docker://{self.source.host}/{repo}:1", "--to", store,
                "--endpoint-url", self.moto.endpoint_url, "--src-tls-verify=false", env=env,
            )  # fmt: skip
            assert done.returncode == 0, show(done)
            self.archived[repo] = store
        return self.archived[repo]


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
    large = image_factory.image(
        layers=(LayerSpec(20_000, seed=7303), LayerSpec(12 * MiB, "none", seed=7304))
    )
    image_factory.push(large, f"{registry.host}/engine/large:1", registry)
    return Bed(image, registry, make_registry("none"), moto_server, {}, large)


# ---- the destinations, read directly (not through bale) ---------------------------------------

ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


def _registry_get(url: str, method: str = "GET") -> bytes | None:
    request = urllib.request.Request(url, method=method, headers={"Accept": ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError:
        return None


def _tar_digests(data: Path) -> set[str]:
    """The sha256 of every file in a tar: a blob is there, intact, if its digest is."""
    out = set()
    with tarfile.open(data) as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isfile() else None
            if f is not None:
                out.add("sha256:" + hashlib.sha256(f.read()).hexdigest())
    return out


@dataclass
class Dest:
    """Where a command writes, and what it shows there, read with urllib, tarfile and boto3."""

    args: list[str]
    """The command line's destination (with its options)."""
    landed: Callable[[], str | None]
    """The digest the destination names the image by (None: no image there). A tar names none:
    its digest stands for "every blob of the image is in the tar, intact"."""
    visible: Callable[[], list[str]]
    """Tags, records, tars: what a reader would take for an image (must be all or nothing)."""
    held: Callable[[], set[str]]
    """Blob digests the destination holds (a tar is written whole: none are reused)."""
    uploads: Callable[[], list[str]] = list
    """Multipart uploads left open."""
    begun: Callable[[], int] = int
    """Multipart uploads begun, as the server logged them (0 where there are none)."""


def _dest(command: str, bed: Bed, image: BuiltImage, src: str, repo: str, tmp_path: Path) -> Dest:
    n = uuid.uuid4().hex[:8]  # destinations are shared by the module: a name per case
    blobs = {d.digest for d in image.blobs}

    if command in ("copy-registry", "restore", "sync"):
        name = {"copy-registry": f"copied/app{n}", "restore": f"restored/app{n}"}.get(
            command, f"synced{n}/{repo.rpartition('/')[2]}"
        )
        base = f"http://{bed.dest.host}/v2/{name}"

        def landed() -> str | None:
            raw = _registry_get(f"{base}/manifests/1")
            return None if raw is None else "sha256:" + hashlib.sha256(raw).hexdigest()

        where = f"docker://{bed.dest.host}/" + (f"synced{n}" if command == "sync" else f"{name}:1")
        return Dest(
            [where],
            landed,
            lambda: [name] if landed() is not None else [],
            lambda: {d for d in blobs if _registry_get(f"{base}/blobs/{d}", "HEAD") is not None},
        )
    if command == "copy-tar":
        tar = tmp_path / f"app{n}.tar"
        return Dest(
            [f"docker-archive:{tar}"],
            lambda: image.digest if tar.exists() and blobs <= _tar_digests(tar) else None,
            lambda: [tar.name] if tar.exists() else [],
            set,
        )
    bucket = bed.moto.create_bucket()
    view = S3View(bed.moto, bucket, "arch")
    endpoint = ["--endpoint-url", bed.moto.endpoint_url]
    uploads = lambda: [key for key, _id, _parts in view.uploads()]  # noqa: E731

    def begun() -> int:
        initiated = re.compile(rf'"POST /{bucket}/\S*\?uploads ')
        return len(initiated.findall(bed.moto.log_path.read_text(errors="replace")))

    if command == "copy-tar-s3":
        local = tmp_path / f"app{n}.tar"

        def landed_tar() -> str | None:
            keys = view.keys()
            if "app.tar" not in keys:
                return None
            view.client.download_file(bucket, "arch/app.tar", str(local))
            return image.digest if blobs <= _tar_digests(local) else None

        return Dest(
            [f"docker-archive:s3://{bucket}/arch/app.tar", *endpoint],
            landed_tar,
            lambda: sorted(view.keys()),
            set,
            uploads,
            begun,
        )
    ref = Reference.parse(src.removeprefix("docker://"))

    def landed_record() -> str | None:
        keys = view.keys()
        check_no_dangling(keys)
        if layout.record_key_for(ref) not in keys or not blobs <= blob_digests(keys):
            return None
        got = view.client.get_object(Bucket=bucket, Key=f"arch/{layout.record_key_for(ref)}")
        return str(json.loads(got["Body"].read())["digest"])

    def archived() -> list[str]:
        keys = view.keys()
        check_no_dangling(keys)
        return sorted(k for k in keys if k.startswith(layout.IMAGES_PREFIX) or "/tags/" in k)

    return Dest(
        ["--to", f"s3://{bucket}/arch", *endpoint],
        landed_record,
        archived,
        lambda: blob_digests(view.keys()),
        uploads,
        begun,
    )


# ---- one command, its source behind a proxy ----------------------------------------------------


@dataclass
class Case:
    proxy: FaultProxy
    dest: Dest
    image: BuiltImage
    argv: list[str]
    env: dict[str, str]
    where: Callable[[str], str]
    """The proxy path regex of a blob's reads."""
    elsewhere: Callable[[str], str]
    """A URL on another host:port (the upstream itself) that serves the blob."""

    @property
    def big(self) -> str:
        return max(self.image.layers, key=lambda d: d.size).digest

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return _bale(*self.argv, *extra, env=self.env)

    def reads(self, digest: str, since: int = 0) -> int:
        """Blob bodies served through the proxy (redirects and refusals not counted)."""
        path = self.where(digest)
        log = self.proxy.find("GET")[since:]
        return sum(r.status in (200, 206) and re.search(path, r.path) is not None for r in log)


@contextlib.contextmanager
def _case(
    command: str,
    bed: Bed,
    tmp_path: Path,
    *,
    image: BuiltImage | None = None,
    repo: str = "engine/app",
    **proxy_options: int,
) -> Iterator[Case]:
    """`command` with the server the blobs are read from behind a proxy; yields once, while the
    proxy is up. `restore` reads an S3 store the image was archived to (once per module)."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    image = image or bed.image
    if command == "restore":
        store = bed.archived_store(repo, env)
        upstream = bed.moto.endpoint_url.removeprefix("http://")
        bucket = store.removeprefix("s3://")

        def where(digest: str) -> str:
            # boto3 may send the key with `%2F` for its slashes.
            return re.escape(layout.blob_key(digest)).replace("/", "(?:/|%2F)")

        def elsewhere(digest: str) -> str:
            return (
                f"http://localhost:{upstream.rpartition(':')[2]}/{bucket}/{layout.blob_key(digest)}"
            )

    else:
        upstream = bed.source.host

        def where(digest: str) -> str:
            return "/blobs/" + re.escape(digest) + "$"

        def elsewhere(digest: str) -> str:
            # `localhost` vs `127.0.0.1`, and the registry's own port: another origin.
            return f"http://localhost:{upstream.rpartition(':')[2]}/v2/{repo}/blobs/{digest}"

    with FaultProxy(upstream, **proxy_options) as proxy:
        src = f"docker://{bed.source.host if command == 'restore' else proxy.host}/{repo}:1"
        dest = _dest(command, bed, image, src, repo, tmp_path)
        tls = ["--src-tls-verify=false"]
        if command in ("copy-registry", "sync"):
            tls.append("--dest-tls-verify=false")
        verb = command.partition("-")[0]
        argv = [verb, src, *dest.args, *tls]
        if command == "restore":
            argv = [
                "restore", src, *dest.args, "--from", store, "--endpoint-url", proxy.url,
                "--dest-tls-verify=false",
            ]  # fmt: skip
        yield Case(proxy, dest, image, argv, env, where, elsewhere)


# ---- transient faults: survived by every command -----------------------------------------------


@dataclass(frozen=True)
class Transient:
    id: str
    faults: Callable[[str, str], list[Fault]]
    """The faults, given the blob's proxy path regex and a URL elsewhere that serves it."""
    log: str = ""
    """A regex stderr must match: the retry made visible."""
    retry_after: float = 0.0


TRANSIENT = [
    Transient("reset-mid-blob", lambda p, _u: [ResetAfter(method="GET", path=p, after=MiB)]),
    Transient("truncated-body", lambda p, _u: [Truncate(method="GET", path=p, keep=MiB)]),
    Transient(
        "429-retry-after",
        lambda p, _u: [Respond(method="GET", path=p, status=429, headers={"Retry-After": "1"})],
        r"after .*\b429\b",
        1.0,
    ),
    Transient(
        "503-retry-after",
        # Delta seconds: an HTTP date's wait depends on when the request arrives, which on a
        # loaded machine left under 1 s (test_faults.py checks the date form for archive).
        lambda p, _u: [Respond(method="GET", path=p, status=503, headers={"Retry-After": "2"})],
        r"after .*\b503\b",
        2.0,
    ),
    Transient(
        "corrupt-once",
        lambda p, _u: [Corrupt(method="GET", path=p, times=1)],
        r"fetching sha256:[0-9a-f]{64} again after .* \(attempt 2/",
    ),
    Transient(
        "redirect",
        lambda p, u: [Respond(method="GET", path=p, status=307, headers={"Location": u})],
    ),
]


@pytest.mark.parametrize("fault", TRANSIENT, ids=[f.id for f in TRANSIENT])
@pytest.mark.parametrize("command", COMMANDS)
def test_transient_fault_is_survived(
    command: str, fault: Transient, bed: Bed, tmp_path: Path
) -> None:
    with _case(command, bed, tmp_path) as case:
        for f in fault.faults(case.where(case.big), case.elsewhere(case.big)):
            case.proxy.add(f)
        proc = case.run()
        assert proc.returncode == 0, show(proc)
        assert all(f.fired for f in case.proxy.faults), "the fault never fired: " + show(proc)
        assert case.dest.landed() == case.image.digest, show(proc)
        assert case.dest.uploads() == []
        if fault.log:
            assert re.search(fault.log, proc.stderr), show(proc)
        gets = case.proxy.find("GET", case.where(case.big))
        if fault.id == "redirect" and command != "restore":
            # Followed to the other origin, not read here again. (botocore takes an S3 307
            # for a region redirect and asks the same endpoint again: a read after the 307.)
            assert [r.status for r in gets] == [307], show(proc)
        elif fault.id == "redirect":
            assert [r.status for r in gets] == [307, 200], show(proc)
        else:
            assert len(gets) == 2, show(proc)
        if fault.retry_after:
            waited = gets[1].started - gets[0].started
            assert waited >= 0.9 * fault.retry_after, f"Retry-After not honoured: {waited:.2f}s"


# ---- a persistent fault: the command fails, with nothing half-visible --------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_corrupt_blob_every_time_fails_with_nothing_visible(
    command: str, bed: Bed, tmp_path: Path
) -> None:
    with _case(command, bed, tmp_path, image=bed.large, repo="engine/large") as case:
        # The byte flipped is past the first 8 MiB part: that part is sent before the digest
        # check fails, and the upload it belongs to must be aborted.
        case.proxy.add(Corrupt(method="GET", path=case.where(case.big), times=None, at=10 * MiB))
        proc = case.run()
        assert proc.returncode == 1, show(proc)
        assert f"expected {case.big}, got sha256:" in proc.stdout + proc.stderr, show(proc)
        assert case.dest.visible() == []
        assert case.dest.uploads() == []
        if command in ("archive", "copy-tar-s3"):
            assert case.dest.begun() >= 1  # there was an upload to abort


# ---- kill -9 mid-blob, then the same command again ---------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_kill_9_mid_blob_then_rerun_fetches_what_is_missing(
    command: str, bed: Bed, tmp_path: Path
) -> None:
    """The largest blob's read stalls half-way (the other blobs have landed, for destinations
    that keep blobs); bale is killed there. Nothing is visible at the destination; the rerun
    completes and reads from the source each blob the destination did not hold, once, and
    none that it held (a tar is written whole: every blob, once)."""
    with _case(command, bed, tmp_path) as case:
        stall = case.proxy.add(Stall(method="GET", path=case.where(case.big), after=MiB))
        assert isinstance(stall, Stall)
        others = {d.digest for d in case.image.blobs} - {case.big}

        def ready() -> bool:
            return stall.fired > 0 and (command in TO_TAR or others <= case.dest.held())

        proc = start_bale(*case.argv, env=case.env)
        try:
            kill_when(proc, ready)
        finally:
            stall.release()
        assert case.dest.visible() == []
        held = case.dest.held()
        assert case.big not in held
        since = len(case.proxy.find("GET"))
        rerun = case.run()
        assert rerun.returncode == 0, show(rerun)
        assert case.dest.landed() == case.image.digest, show(rerun)
        reads = {d.digest: case.reads(d.digest, since) for d in case.image.blobs}
        assert reads == {d: 0 if d in held else 1 for d in reads}, (held, show(rerun))


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
    with _case(command, bed, tmp_path, image=image, repo=repo, **options) as case:
        proc = case.run(*extra)
        assert proc.returncode == 0, show(proc)
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
