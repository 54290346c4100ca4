"""Ctrl-C and SIGTERM: the real signal to the real `bale` process, mid-transfer.

Each test starts `python -m pipeline` at `--limit-rate 1M` (so a signal lands while bytes
move), waits until a transfer is under way, sends SIGINT or SIGTERM with `os.kill`, and then
checks what an operator (or Kubernetes) sees:

- the exit code is 130 (SIGINT) or 143 (SIGTERM), and one line says so (the test's timeout
  is only a bound: bale is not timed);
- `--report` and `--junit` are written, images the signal cut or never started are
  `interrupted` (a JUnit `<error>`), finished ones keep their status;
- nothing is left half-done: no multipart upload open in moto, no `.bale-tmp/` file in a local
  store, no partial tar at a copy's destination, `bale verify` clean, and a destination
  registry's every tag names a manifest whose blobs are all there;
- the same command again completes, and fetches no blob that was stored before the signal
  (the registry's access log).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from tests.bed.cli import isolated_env, run_bale, show, start_bale
from tests.bed.images import ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.proxy import Delay, FaultProxy, Respond
from tests.bed.registry import RegistryServer, blob_gets
from tests.bed.store_view import S3View, blob_digests, check_no_dangling, local_keys
from tests.bed.terminal import run_on_terminal

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SLOW = ("--limit-rate", "1M")
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class Trio:
    """Three tags of one repository sharing a small layer, each with a large one of its own."""

    repo: str
    """host/repo"""
    tags: tuple[str, ...]
    shared: str
    blobs: dict[str, dict[str, int]]
    """tag -> digest -> size of its config and layers"""

    def sizes(self, *tags: str) -> dict[str, int]:
        """digest -> size of every blob of these tags (all when none are named)."""
        return {d: n for t in tags or self.tags for d, n in self.blobs[t].items()}


@pytest.fixture(scope="module")
def trio(registry: RegistryServer, image_factory: ImageFactory) -> Trio:
    shared = LayerSpec(MiB // 2, "none", seed=8101)
    images = [
        image_factory.image(layers=(shared, LayerSpec(6 * MiB, "none", seed=8102 + i)))
        for i in range(3)
    ]
    repo = f"{registry.host}/signals/app"
    tags = ("1", "2", "3")
    for image, tag in zip(images, tags, strict=True):
        image_factory.push(image, f"{repo}:{tag}", registry)
    blobs = {t: {d.digest: d.size for d in i.blobs} for t, i in zip(tags, images, strict=True)}
    return Trio(repo, tags, images[0].layers[0].digest, blobs)


@dataclass(frozen=True)
class Big:
    """An image whose 20 MiB layer is three multipart parts (8 MiB each) in S3."""

    ref: str
    blobs: dict[str, int]


@pytest.fixture(scope="module")
def big(registry: RegistryServer, image_factory: ImageFactory) -> Big:
    image = image_factory.image(layers=(LayerSpec(20 * MiB, "none", seed=8201),))
    ref = f"{registry.host}/signals/big:1"
    image_factory.push(image, ref, registry)
    return Big(ref, {d.digest: d.size for d in image.blobs})


def wait_for(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 60) -> None:
    """Poll `ready()` every 20 ms while `proc` runs."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"bale ended before the signal: {proc.returncode}\n{out}\n{err}")
        assert time.monotonic() < deadline, "the moment to signal never came"
        time.sleep(0.02)


def interrupt(proc: subprocess.Popen[str], signum: int, *, again: bool = False) -> tuple[str, str]:
    """Send `signum` (twice with `again`) and wait for the exit; 60 s is a bound, not a goal."""
    sent = time.monotonic()
    os.kill(proc.pid, signum)
    if again:
        time.sleep(0.05)
        os.kill(proc.pid, signum)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"bale did not exit after {signum!r}\n{err}") from None
    print(f"\n{signal.Signals(signum).name}: exit {proc.returncode} {time.monotonic() - sent:.2f}s")
    # A second signal after the first one's wind-down (fast here) may meet the interpreter's
    # own exit, whose default handler ends the process by the signal: that is at once too.
    expected = {EXIT[signum], -signum} if again else {EXIT[signum]}
    assert proc.returncode in expected, f"exit {proc.returncode}\n{out}\n{err}"
    return out, err


def check_reports(report: Path, junit: Path, err: str, signum: int) -> dict[str, Any]:
    """The one line, the JSON report and the JUnit file agree on what was interrupted."""
    name = signal.Signals(signum).name
    line = re.search(
        rf"bale: interrupted by {name}; (\d+) done, (\d+) interrupted, report written to "
        rf"{re.escape(str(report))} and {re.escape(str(junit))}",
        err,
    )
    assert line, err
    data = json.loads(report.read_text())
    statuses = [i["status"] for i in data["images"]]
    interrupted = [i for i in data["images"] if i["status"] == "interrupted"]
    assert interrupted, data
    assert all(i["error"].startswith(f"interrupted by {name}") for i in interrupted), data
    assert data["totals"]["interrupted"] == len(interrupted) == int(line.group(2))
    assert len(statuses) - len(interrupted) == int(line.group(1))
    assert "failed" not in statuses, data
    suite = ET.parse(junit).getroot()
    assert suite.get("errors") == str(len(interrupted))
    errors = [c for c in suite.iter("testcase") if c.find("error") is not None]
    assert [c.get("name") for c in errors] == [i["source"] for i in interrupted]
    assert {c.find("error").get("type") for c in errors} == {"interrupted"}  # type: ignore[union-attr]
    return data


# ---- archive / run ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "kind", "signum"),
    [
        ("archive", "local", signal.SIGINT),
        ("archive", "s3", signal.SIGTERM),
        ("run", "local", signal.SIGTERM),
    ],
)
def test_archive_signal_mid_transfer(
    command: str,
    kind: str,
    signum: int,
    trio: Trio,
    registry: RegistryServer,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Two images move (`--jobs 2`), the third waits; the signal comes once the shared layer is
    stored and the large ones are part way through (in S3: with a part of a multipart upload
    stored, so the abort is seen)."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    shared = layout.blob_key(trio.shared)
    refs = [f"{trio.repo}:{t}" for t in trio.tags]
    blobs = trio.sizes()
    if kind == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        bucket = moto.create_bucket()
        view = S3View(moto, bucket, "arch")
        store_args = [f"s3://{bucket}/arch", "--endpoint-url", moto.endpoint_url]
        keys: Callable[[], set[str]] = view.keys
        large: Big = request.getfixturevalue("big")
        refs = [large.ref, *refs[:2]]
        blobs = {**large.blobs, **trio.sizes(*trio.tags[:2])}
        rate = "4M"  # the first 8 MiB part of the large layer is stored after 2 to 4 s

        def leftovers() -> list[Any]:
            return view.uploads()

        def in_flight() -> bool:
            return shared in keys() and any(parts for _key, _id, parts in view.uploads())

    else:
        root = tmp_path / "store"
        store_args = [str(root)]
        rate = "1M"

        def keys() -> set[str]:
            return {k for k in local_keys(root) if not k.startswith(".bale-tmp/")}

        def leftovers() -> list[Any]:
            return sorted(local_keys(root) - keys())

        def in_flight() -> bool:
            return shared in keys() and any(local_keys(root) - keys())

    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    if command == "run":  # the same images from a spec, in the same order
        host, repo = trio.repo.split("/", 1)
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"{host}:\n  tls-verify: false\n  images:\n    {repo}: {list(trio.tags)}\n")
        images = [str(spec)]
    else:
        images = [f"docker://{ref}" for ref in refs]
    archive = [command, *images, "--to", *store_args, "--src-tls-verify=false", "--jobs", "2"]
    reports = ["--report", str(report), "--junit", str(junit)]
    since = registry.mark()
    proc = start_bale(*archive, "--limit-rate", rate, *reports, env=env)
    wait_for(proc, in_flight)
    time.sleep(0.5)
    open_before = leftovers()  # S3: multipart uploads; local: the blobs' temporary files
    _out, err = interrupt(proc, signum)
    assert open_before, "nothing was in flight when the signal came"

    data = check_reports(report, junit, err, signum)
    never = data["images"][2]  # --jobs 2: the third image waited for its turn
    assert never["error"] == f"interrupted by {signal.Signals(signum).name} before it started"
    assert "Traceback" not in err, err
    assert leftovers() == []
    before = keys()
    check_no_dangling(before)
    stored = blob_digests(before) & set(blobs)
    assert trio.shared in stored and stored != set(blobs)
    verify = run_bale("verify", *store_args, env=env)
    assert verify.returncode == 0 and verify.stdout == "", show(verify)

    rerun = run_bale(*archive, *reports, env=env)
    assert rerun.returncode == 0, show(rerun)
    again = json.loads(report.read_text())
    assert [i["status"] for i in again["images"]] == ["archived"] * 3, again
    missing = sum(blobs[d] for d in set(blobs) - stored)
    assert again["totals"]["bytes_downloaded"] == missing  # nothing stored is fetched again
    gets = blob_gets(registry, since)
    assert all(gets[d] == 1 for d in stored), gets
    verify = run_bale("verify", *store_args, env=env)
    assert verify.returncode == 0 and verify.stdout == "", show(verify)


def test_ctrl_c_typed_on_a_terminal(trio: Trio, tmp_path: Path) -> None:
    """A person's Ctrl-C: the pty's line discipline sends SIGINT while the bars move; the bars
    give way to the summary and the one line, nothing is left behind."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    root = tmp_path / "store"
    refs = [f"docker://{trio.repo}:{t}" for t in trio.tags]
    archive = ["archive", *refs, "--to", str(root), "--src-tls-verify=false", "--jobs", "2"]
    run = run_on_terminal(*archive, *SLOW, env=env, timeout=120, ctrl_c_after="MiB/s")
    assert run.returncode == 130, run.text
    assert "Traceback" not in run.text, run.text
    assert re.search(r"bale: interrupted by SIGINT; 0 done, 3 interrupted\n", run.text), run.text
    assert not [k for k in local_keys(root) if k.startswith(".bale-tmp/")]
    verify = run_bale("verify", str(root), env=env)
    assert verify.returncode == 0 and verify.stdout == "", show(verify)


@pytest.mark.parametrize("command", ["run", "sync"])
def test_signal_while_a_spec_is_listed(
    command: str, trio: Trio, registry: RegistryServer, dest: RegistryServer, tmp_path: Path
) -> None:
    """`bale run` and `sync --src yaml` list every repository of a spec before any image
    moves; each listing takes 1 s here (a proxy delays it). SIGTERM during the first: no
    further repository is listed, and the report names every repository and image as
    interrupted."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    with FaultProxy(registry.host) as proxy:
        slow = proxy.add(Delay(path=r"/tags/list$", seconds=1.0, times=None))
        repos = "".join(f"    signals/app{n}: []\n" for n in ("", 2, 3, 4, 5))
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"{proxy.host}:\n  tls-verify: false\n  images:\n{repos}")
        if command == "run":
            args = ["run", str(spec), "--to", str(tmp_path / "store")]
        else:
            args = ["sync", "--src", "yaml", str(spec), f"docker://{dest.host}/listed"]
            args.append("--dest-tls-verify=false")
        proc = start_bale(*args, "--report", str(report), "--junit", str(junit), env=env)
        wait_for(proc, lambda: slow.fired > 0)
        _out, err = interrupt(proc, signal.SIGTERM)
        listed = len(proxy.find("GET", r"/tags/list$"))
    data = check_reports(report, junit, err, signal.SIGTERM)
    assert listed == 1, listed
    assert {i["status"] for i in data["images"]} == {"interrupted"}
    # the three tags of the repository listed before the signal, the four never listed
    assert len(data["images"]) == 7, data


def test_signal_ends_a_retry_wait(trio: Trio, registry: RegistryServer, tmp_path: Path) -> None:
    """Every blob GET answers 503 with `Retry-After: 300`: bale waits 300 s before its next
    attempt, and the signal ends that wait (the test's 60 s bound would catch it otherwise)."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    root = tmp_path / "store"
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    with FaultProxy(registry.host) as proxy:
        busy = proxy.add(
            Respond(path=r"/blobs/sha256:", times=None, headers={"Retry-After": "300"})
        )
        ref = f"docker://{proxy.host}/{trio.repo.split('/', 1)[1]}:1"
        archive = ["archive", ref, "--to", str(root), "--src-tls-verify=false"]
        proc = start_bale(*archive, "--report", str(report), "--junit", str(junit), env=env)
        wait_for(proc, lambda: busy.fired > 0)
        time.sleep(0.3)
        _out, err = interrupt(proc, signal.SIGTERM)
    check_reports(report, junit, err, signal.SIGTERM)
    assert "retrying" in err, err
    assert not [k for k in local_keys(root) if k.startswith(".bale-tmp/")]
    check_no_dangling(local_keys(root))


def test_second_signal_exits_at_once_leaving_no_temporary_file(trio: Trio, tmp_path: Path) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    root = tmp_path / "store"
    refs = [f"docker://{trio.repo}:{t}" for t in trio.tags]
    archive = ["archive", *refs, "--to", str(root), "--src-tls-verify=false"]
    proc = start_bale(*archive, *SLOW, env=env)
    wait_for(proc, lambda: any(p.stat().st_size for p in (root / ".bale-tmp").glob("*")))
    _out, err = interrupt(proc, signal.SIGINT, again=True)
    assert "Traceback" not in err, err
    assert not [k for k in local_keys(root) if k.startswith(".bale-tmp/")]
    check_no_dangling(local_keys(root))
    verify = run_bale("verify", str(root), env=env)
    assert verify.returncode == 0 and verify.stdout == "", show(verify)
    rerun = run_bale(*archive, env=env)
    assert rerun.returncode == 0, show(rerun)


def test_second_signal_removes_the_scratch_files_and_exits(tmp_path: Path) -> None:
    """The second signal's path on its own, deterministically: a process inside the CLI's
    signal handling writes a temporary file and then sleeps, as a transfer stuck after the
    first signal would; the second signal removes the file and exits at once."""
    scratch = tmp_path / ".bale-tmp" / "blob.tmp"
    scratch.parent.mkdir()
    code = f"""
import os, signal, sys, time
from pipeline.transfer import cancel
with cancel.on_signals() as token:
    open({str(scratch)!r}, "w").write("partial")
    cancel.scratch_file({str(scratch)!r})
    os.kill(os.getpid(), signal.SIGTERM)
    while not token.cancelled:
        time.sleep(0.01)
    print("cancelled", flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
print("not reached")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc
    assert proc.stdout == "cancelled\n", proc
    assert proc.stderr == "bale: SIGINT again: exiting now\n", proc
    assert not scratch.parent.exists()


# ---- into a registry: restore, sync ------------------------------------------------------------

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def _get(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers={"Accept": MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def complete_tags(server: RegistryServer, repo: str) -> set[str]:
    """The tags of `repo`, after checking that each names a manifest whose blobs (and child
    manifests) the registry holds: what a signal may never break."""
    status, body = _get(f"{server.url}/v2/{repo}/tags/list")
    if status == 404:
        return set()
    tags = set(json.loads(body).get("tags") or [])

    def check(reference: str) -> None:
        status, raw = _get(f"{server.url}/v2/{repo}/manifests/{reference}")
        assert status == 200, f"{repo}:{reference} names a missing manifest"
        manifest = json.loads(raw)
        for child in manifest.get("manifests", []):
            check(child["digest"])
        for blob in [manifest.get("config"), *manifest.get("layers", [])]:
            if blob:
                status, _ = _get(f"{server.url}/v2/{repo}/blobs/{blob['digest']}", "HEAD")
                assert status == 200, f"{repo}:{reference} names missing blob {blob['digest']}"

    for tag in tags:
        check(tag)
    return tags


def blob_puts(server: RegistryServer, since: int) -> dict[str, int]:
    """Blob uploads the registry completed (201), per digest."""
    counts: dict[str, int] = {}
    for entry in server.requests("PUT", r"/blobs/uploads/", since=since, status=201):
        digest = re.search(r"digest=(sha256(?::|%3A)[0-9a-f]{64})", entry.query)
        assert digest, entry
        key = digest.group(1).replace("%3A", ":")
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture(scope="module")
def dest(make_registry: Any) -> RegistryServer:
    """A second registry: nothing can be mounted from the source's repositories."""
    return make_registry()


def interrupt_push(
    args: list[str], dest: RegistryServer, signum: int, tmp_path: Path, env: dict[str, str]
) -> tuple[dict[str, Any], int]:
    """Run `args` with reports until the destination completed its first blob upload and a
    second is under way, then signal; the checked report and the access-log mark."""
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    since = dest.mark()
    proc = start_bale(*args, *SLOW, "--report", str(report), "--junit", str(junit), env=env)
    wait_for(proc, lambda: dest.count("PUT", r"/blobs/uploads/", since=since, status=201) >= 2)
    time.sleep(1.0)
    _out, err = interrupt(proc, signum)
    assert "Traceback" not in err, err
    return check_reports(report, junit, err, signum), since


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_restore_all_tags_signal_mid_push(
    signum: int, trio: Trio, dest: RegistryServer, tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    store = str(tmp_path / "store")
    refs = [f"docker://{trio.repo}:{t}" for t in trio.tags]
    done = run_bale("archive", *refs, "--to", store, "--src-tls-verify=false", env=env)
    assert done.returncode == 0, show(done)
    restore = [
        "restore",
        trio.repo,
        f"docker://{dest.host}/restored/app",
        "--all-tags",
        "--from",
        store,
        "--dest-tls-verify=false",
        "--jobs",
        "2",
    ]
    data, since = interrupt_push(restore, dest, signum, tmp_path, env)
    finished = {i["source"].rsplit(":", 1)[1] for i in data["images"] if i["status"] == "restored"}
    assert complete_tags(dest, "restored/app") == finished
    assert dest.count("DELETE", r"/blobs/uploads/", since=since) >= 1  # the cut upload's session

    rerun = run_bale(*restore, env=env)
    assert rerun.returncode == 0, show(rerun)
    assert complete_tags(dest, "restored/app") == set(trio.tags)
    puts = blob_puts(dest, since)
    assert set(puts) == set(trio.sizes()) and set(puts.values()) == {1}, puts  # none sent twice


def test_sync_signal_mid_push(trio: Trio, dest: RegistryServer, tmp_path: Path) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    sync = [
        "sync",
        f"docker://{trio.repo}",
        f"docker://{dest.host}/mirror",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--jobs",
        "2",
    ]
    data, since = interrupt_push(sync, dest, signal.SIGINT, tmp_path, env)
    finished = {i["source"].rsplit(":", 1)[1] for i in data["images"] if i["status"] == "copied"}
    assert complete_tags(dest, "mirror/app") == finished

    rerun = run_bale(*sync, env=env)
    assert rerun.returncode == 0, show(rerun)
    assert complete_tags(dest, "mirror/app") == set(trio.tags)
    puts = blob_puts(dest, since)
    assert set(puts) == set(trio.sizes()) and set(puts.values()) == {1}, puts


# ---- copy into a tar -------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "signum"), [("local", signal.SIGINT), ("s3", signal.SIGTERM)])
def test_copy_to_tar_signal_mid_transfer(
    kind: str, signum: int, trio: Trio, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """No tar, whole or partial, at the destination; no temporary file, no open upload."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    out = tmp_path / "out"
    out.mkdir()
    if kind == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        bucket = moto.create_bucket()
        view = S3View(moto, bucket, "tars")
        source = request.getfixturevalue("big").ref
        target = [f"oci-archive:s3://{bucket}/tars/app.tar", "--endpoint-url", moto.endpoint_url]
        rate = "4M"  # 8 MiB parts: the first is uploaded after 2 s

        def busy() -> bool:
            return any(parts for _key, _id, parts in view.uploads())

        def leftovers() -> list[Any]:
            return [*view.keys(), *view.uploads()]

    else:
        source = f"{trio.repo}:1"
        target = [f"docker-archive:{out / 'app.tar'}"]
        rate = "1M"

        def busy() -> bool:
            return any(p.stat().st_size for p in out.rglob("*.tmp"))

        def leftovers() -> list[Any]:
            return sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))

    copy = ["copy", f"docker://{source}", *target, "--src-tls-verify=false"]
    proc = start_bale(*copy, "--limit-rate", rate, env=env)
    wait_for(proc, busy)
    time.sleep(0.5)
    _out, err = interrupt(proc, signum)
    assert err.strip().splitlines()[-1] == f"bale: interrupted by {signal.Signals(signum).name}"
    assert leftovers() == []
    rerun = run_bale(*copy, env=env)
    assert rerun.returncode == 0, show(rerun)
    assert leftovers() != []


def test_copy_to_a_registry_signal_mid_push(
    trio: Trio, dest: RegistryServer, tmp_path: Path
) -> None:
    """One image, no report: the one line, exit 130, and no tag at the destination until the
    rerun writes it (with every blob there)."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    target = f"docker://{dest.host}/copied/app:1"
    copy = ["copy", f"docker://{trio.repo}:1", target, "--src-tls-verify=false"]
    copy += ["--dest-tls-verify=false"]
    since = dest.mark()
    proc = start_bale(*copy, *SLOW, env=env)
    wait_for(proc, lambda: dest.count("PUT", r"/blobs/uploads/", since=since, status=201) >= 1)
    time.sleep(1.0)
    _out, err = interrupt(proc, signal.SIGINT)
    assert err.strip().splitlines()[-1] == "bale: interrupted by SIGINT", err
    assert complete_tags(dest, "copied/app") == set()
    rerun = run_bale(*copy, env=env)
    assert rerun.returncode == 0, show(rerun)
    assert complete_tags(dest, "copied/app") == {"1"}
