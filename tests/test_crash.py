"""Crash safety: `kill -9` of a running `bale archive`, then the same command again.

Two images share a layer; the archive is slowed down with `--limit-rate` so the kill lands
where it hurts: after the shared layer is stored, while a large layer is half uploaded (an S3
multipart upload with parts in it, or a local temporary file). Then:

- right after the kill, nothing in the store points at missing data (`bale verify` is clean);
- the rerun completes, and the registry's access log shows that no blob stored before the
  kill was downloaded again (the shared one in particular: exactly one GET in both runs);
- `bale verify` is clean, `bale gc --dry-run --older-than 0s` lists the upload the kill left
  behind and `bale gc --older-than 0s` removes it (moto dates uploads 2010-11-10, so any
  cut-off finds them; local temporary files are dated now, and 0s is older than that).

A sweep kills a smaller run at several moments (before, during and after the blobs) and checks
the invariant each time: whatever is in the store, no tag, link, tar or record is dangling.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from pipeline.refs import Reference
from tests.bed.cli import isolated_env, kill_when, run_bale, show, start_bale
from tests.bed.fixtures_store import S3Server
from tests.bed.images import ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.proxy import FaultProxy, Hold
from tests.bed.registry import RegistryServer, blob_gets
from tests.bed.store_view import (
    S3View,
    blob_digests,
    check_local_blobs,
    check_no_dangling,
    local_keys,
    record_of,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@dataclass(frozen=True)
class Pair:
    """Images a and b in the registry, sharing `shared`; `a_big` and `b_big` are their own."""

    a: str
    b: str
    a_digest: str
    b_digest: str
    shared: str
    a_big: str
    b_big: str
    blobs: frozenset[str]
    """Every config and layer digest of both images."""


@pytest.fixture(scope="module")
def pair(registry: RegistryServer, image_factory: ImageFactory) -> Pair:
    shared = LayerSpec(4 * MiB, "none", seed=7401)
    a = image_factory.image(layers=(shared, LayerSpec(24 * MiB, "none", seed=7402)))
    b = image_factory.image(layers=(shared, LayerSpec(24 * MiB, "none", seed=7403)))
    image_factory.push(a, f"{registry.host}/crash/a:1", registry)
    image_factory.push(b, f"{registry.host}/crash/b:1", registry)
    assert a.config_descriptor is not None and b.config_descriptor is not None
    return Pair(
        a=f"{registry.host}/crash/a:1",
        b=f"{registry.host}/crash/b:1",
        a_digest=a.digest,
        b_digest=b.digest,
        shared=a.layers[0].digest,
        a_big=a.layers[1].digest,
        b_big=b.layers[1].digest,
        blobs=frozenset(d.digest for d in (*a.blobs, *b.blobs)),
    )


ARCHIVE_SLOW = ("--jobs", "2", "--limit-rate", "12M")


@pytest.mark.parametrize("kind", ["local", "s3", "rgw"])
def test_kill_9_mid_upload_then_rerun(
    kind: str,
    pair: Pair,
    registry: RegistryServer,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    env = isolated_env(tmp_path, **MOTO_KEYS)
    if kind in ("s3", "rgw"):
        server: S3Server = request.getfixturevalue("rgw_server" if kind == "rgw" else "moto_server")
        env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
        bucket = server.create_bucket()
        view = S3View(server, bucket, "arch")
        store = f"s3://{bucket}/arch"
        store_args = [store, "--endpoint-url", server.endpoint_url]

        def keys() -> set[str]:
            return view.keys()

        def in_flight() -> list[str]:
            return [key for key, _id, _parts in view.uploads()]

        def writing() -> bool:
            return any(parts >= 1 for _key, _id, parts in view.uploads())

    else:
        root = tmp_path / "store"
        store = str(root)
        store_args = [store]

        def keys() -> set[str]:
            return {k for k in local_keys(root) if not k.startswith(".bale-tmp/")}

        def in_flight() -> list[str]:
            return [p.name for p in (root / ".bale-tmp").glob("*") if p.is_file()]

        def writing() -> bool:
            return any(p.stat().st_size > 0 for p in (root / ".bale-tmp").glob("*"))

    refs = [f"docker://{pair.a}", f"docker://{pair.b}"]
    archive = ["-v", "archive", *refs, "--to", *store_args, "--src-tls-verify=false"]
    since = registry.mark()

    first = start_bale(*archive, *ARCHIVE_SLOW, env=env)
    shared_key = layout.blob_key(pair.shared)
    kill_when(first, lambda: shared_key in keys() and writing())

    # After the kill: the shared layer is stored, an upload is left open, nothing dangles.
    before = keys()
    stored_before = blob_digests(before)
    assert pair.shared in stored_before
    assert not (pair.a_big in stored_before and pair.b_big in stored_before)
    assert not any(k.endswith(".json") for k in before), "an image finished before the kill"
    check_no_dangling(before)
    left_open = in_flight()
    assert left_open
    proc = run_bale("verify", *store_args, env=env)
    assert proc.returncode == 0, show(proc)

    # The same command again: completes, and downloads only what was not stored.
    rerun = run_bale(*archive, env=env)
    assert rerun.returncode == 0, show(rerun)
    assert rerun.stdout.count("archived ") == 2, show(rerun)
    gets = blob_gets(registry, since)
    for digest in stored_before:
        if digest in pair.blobs:
            assert gets.get(digest) == 1, f"{digest} stored before the kill, fetched {gets}"
    assert gets[pair.shared] == 1
    assert set(gets) == set(pair.blobs)
    assert max(gets.values()) <= 2  # what was cut off is fetched once more, nothing else
    print(
        f"\n{kind}: stored before the kill {len(stored_before & pair.blobs)}/{len(pair.blobs)} "
        f"blobs, uploads left open {len(left_open)}; blob GETs over both runs: "
        + ", ".join(f"{d[7:19]}={n}" for d, n in sorted(gets.items()))
    )
    after = keys()
    check_no_dangling(after)
    for ref, digest in ((pair.a, pair.a_digest), (pair.b, pair.b_digest)):
        assert layout.record_key_for(Reference.parse(ref)) in after
        assert layout.tar_key_for(Reference.parse(ref)) in after
        assert layout.blob_key(digest) in after
    proc = run_bale("verify", *store_args, env=env)
    assert proc.returncode == 0 and proc.stdout == "", show(proc)
    if kind == "local":
        assert check_local_blobs(Path(store)) == len(pair.blobs) + 2

    # gc: the upload the kill left behind is listed, then removed; nothing else goes.
    gc = ["gc", *store_args, "--older-than", "0s"]
    dry = run_bale(*gc, "--dry-run", env=env)
    assert dry.returncode == 0, show(dry)
    aborted = [line for line in dry.stdout.splitlines() if line.startswith("would abort upload ")]
    assert len(aborted) == len(left_open) >= 1, show(dry)
    assert not [line for line in dry.stdout.splitlines() if " blob " in line], show(dry)
    if kind != "local":
        assert sorted(line.split()[3] for line in aborted) == sorted(left_open), show(dry)
    else:
        assert {line.split()[4] for line in aborted} == set(left_open), show(dry)
    done = run_bale(*gc, env=env)
    assert done.returncode == 0, show(done)
    assert sum(line.startswith("aborted upload ") for line in done.stdout.splitlines()) == len(
        aborted
    )
    assert in_flight() == []
    if kind != "local":
        assert view.uploads() == []
    assert keys() == after
    proc = run_bale("verify", *store_args, env=env)
    assert proc.returncode == 0 and proc.stdout == "", show(proc)


@pytest.fixture(scope="module")
def small(registry: RegistryServer, image_factory: ImageFactory, tmp_path_factory: Any) -> Any:
    """An index of two platforms, and how long an undisturbed capped archive of it takes."""
    image = image_factory.index(
        platforms=("linux/amd64", "linux/arm64"),
        layers=(LayerSpec(600_000, "none", seed=7501), LayerSpec(900_000, seed=7502)),
    )
    pushed = image_factory.push(image, f"{registry.host}/crash/small:1", registry)
    scratch = tmp_path_factory.mktemp("crash-timing")
    began = time.monotonic()
    proc = run_bale(
        *small_archive(pushed, scratch / "store"),
        *SMALL_SLOW,
        env=isolated_env(scratch, **MOTO_KEYS),
    )
    assert proc.returncode == 0, show(proc)
    return pushed, time.monotonic() - began


SMALL_SLOW = ("--limit-rate", "2M", "--jobs", "2")


def small_archive(pushed: Any, root: Path) -> list[str]:
    return ["archive", f"docker://{pushed.reference}", "--to", str(root), "--src-tls-verify=false"]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9])
def test_kill_9_at_any_moment_leaves_nothing_dangling(
    fraction: float, small: Any, tmp_path: Path
) -> None:
    """The index archived at 2 MiB/s (about 1.7 s of blobs, then manifests, links, tags, the
    tar and the record), killed at a fraction of the undisturbed run's time: the store verifies
    clean whatever it holds, and the rerun completes with the pushed digest."""
    pushed, full = small
    env = isolated_env(tmp_path, **MOTO_KEYS)
    root = tmp_path / "store"
    archive = small_archive(pushed, root)
    proc = start_bale(*archive, *SMALL_SLOW, env=env)
    time.sleep(full * fraction)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    if proc.returncode == 0:
        pytest.skip(f"the run ended before {full * fraction:.2f}s: nothing was killed")
    assert proc.returncode == -signal.SIGKILL
    check_no_dangling({k for k in local_keys(root) if not k.startswith(".bale-tmp/")})
    if root.exists():
        verify = run_bale("verify", str(root), env=env)
        assert verify.returncode == 0 and verify.stdout == "", show(verify)
    rerun = run_bale(*archive, env=env)
    assert rerun.returncode == 0, show(rerun)
    assert record_of(root, str(pushed.reference))["digest"] == pushed.digest
    verify = run_bale("verify", str(root), env=env)
    assert verify.returncode == 0 and verify.stdout == "", show(verify)


@pytest.mark.parametrize("stage", ["tar", "record"])
def test_kill_9_while_the_tar_or_record_is_written_to_s3(
    stage: str, pair: Pair, moto_server: MotoServer, tmp_path: Path
) -> None:
    """A proxy in front of moto holds the request that completes the tar's multipart upload
    (its parts already copied server-side), or the one that writes the record; bale is killed
    while it waits, and the request is dropped. The tags are there and point at stored manifests, no record
    exists without its tar, verify is clean; the rerun completes, and gc lists the tar upload
    left open (and only it), then aborts it."""
    env = isolated_env(tmp_path, **MOTO_KEYS)
    bucket = moto_server.create_bucket()
    view = S3View(moto_server, bucket, "arch")
    ref = Reference.parse(pair.a)
    key = layout.tar_key_for(ref) if stage == "tar" else layout.record_key_for(ref)
    where = re.escape(f"/{bucket}/arch/{key}") + "$"
    with FaultProxy(moto_server.endpoint_url.removeprefix("http://")) as proxy:
        if stage == "tar":
            held = proxy.add(
                Hold(method="POST", path=where, query="uploadId=", seconds=60, forward=False)
            )
        else:
            held = proxy.add(Hold(method="PUT", path=where, seconds=60, forward=False))
        store_args = [f"s3://{bucket}/arch", "--endpoint-url", proxy.url]
        archive = ["archive", f"docker://{pair.a}", "--to", *store_args, "--src-tls-verify=false"]
        proc = start_bale(*archive, env=env)
        kill_when(proc, lambda: held.fired > 0)
        held.release()  # dropped: the request bale was making never reaches moto
        keys = view.keys()
        check_no_dangling(keys)
        assert layout.tag_current_link_key(ref.store_repo, "1") in keys  # tags come before
        assert layout.record_key_for(ref) not in keys
        assert (layout.tar_key_for(ref) in keys) == (stage == "record")
        open_uploads = [k for k, _i, parts in view.uploads() if parts]
        assert open_uploads == ([layout.tar_key_for(ref)] if stage == "tar" else [])
        verify = run_bale("verify", *store_args, env=env)
        assert verify.returncode == 0 and verify.stdout == "", show(verify)
        rerun = run_bale(*archive, env=env)
        assert rerun.returncode == 0, show(rerun)
        assert layout.record_key_for(ref) in view.keys()  # noqa: SIM118
        verify = run_bale("verify", *store_args, env=env)
        assert verify.returncode == 0 and verify.stdout == "", show(verify)
        dry = run_bale("gc", *store_args, "--older-than", "0s", "--dry-run", env=env)
        assert dry.returncode == 0, show(dry)
        listed = [line.split()[3] for line in dry.stdout.splitlines() if "abort upload" in line]
        assert listed == open_uploads, show(dry)
        assert " blob " not in dry.stdout, show(dry)
        done = run_bale("gc", *store_args, "--older-than", "0s", env=env)
        assert done.returncode == 0, show(done)
        assert view.uploads() == []
