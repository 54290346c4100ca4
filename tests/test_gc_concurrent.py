"""`bale gc` in a loop beside `bale archive` on the same store, local and S3 (moto).

Eight images share a base layer. Each round first forgets every image (records and tags
deleted, as prune does), so the store is full of old, unreferenced blobs, and then archives
them all again while gc runs over and over: each archive finds its blobs already stored and
links them, which is exactly when gc could delete them under it. gc's re-check of the links and
records written since its plan is what keeps them. An archive that gc still cut short (it found
a blob gc deleted a moment later: it fails before its record) is rerun once gc has stopped, as
a user would. Then `verify --deep` must be clean and every image must restore into the test
registry with its digest.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from tests.bed.cli import run_bale, show, start_bale
from tests.bed.fixtures_store import store_cli
from tests.bed.images import LayerSpec
from tests.bed.proxy import FaultProxy, Hold

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGES = 8
ROUNDS = 3
BASE = LayerSpec(4000, seed=901)


def forget_all(bucket: ArchiveBucket) -> None:
    store = bucket.store
    for info in list(store.list(layout.IMAGES_PREFIX)):
        store.delete(info.key)
    for info in list(store.list(layout.REPOSITORIES_PREFIX)):
        if "/_manifests/tags/" in info.key:
            store.delete(info.key)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_gc_loop_beside_archives_loses_nothing(
    kind: str,
    store_bed: Any,
    registry: Any,
    image_factory: Any,
    unique_repo: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    bed = store_bed(kind)
    bucket = ArchiveBucket(bed.store)
    url, env = store_cli(bed, tmp_path, request)
    refs, digests = push_images(registry, image_factory, unique_repo)
    archive = ("archive", *refs, "--to", url, "--src-tls-verify=false", "--jobs", "4")
    first = run_bale(*archive, env=env)
    assert first.returncode == 0, show(first)

    gc_runs, swept, failed_archives = 0, 0, 0
    for _ in range(ROUNDS):
        forget_all(bucket)
        stop = threading.Event()
        errors: list[str] = []

        def gc_loop(stop: threading.Event = stop, errors: list[str] = errors) -> None:
            nonlocal gc_runs, swept
            while not stop.is_set():
                done = run_bale("gc", url, "--grace", "0s", env=env)
                gc_runs += 1
                swept += done.stdout.count("removed blob")
                if done.returncode != 0:
                    errors.append(show(done))

        loop = threading.Thread(target=gc_loop)
        loop.start()
        try:
            time.sleep(0.5)
            racing = run_bale(*archive, env=env)
        finally:
            stop.set()
            loop.join()
        assert errors == [], errors[0]
        if racing.returncode != 0:
            failed_archives += 1
            again = run_bale(*archive, env=env)
            assert again.returncode == 0, show(again)

        verified = run_bale("verify", url, "--deep", env=env)
        assert verified.returncode == 0, show(verified)
    print(f"\n{kind}: {gc_runs} gc runs removed {swept} blobs; {failed_archives} batch(es) rerun")
    assert swept > 0  # the race was real: gc did delete blobs while archives ran

    restore_all(registry, unique_repo, url, env, digests)


def test_gc_rechecks_what_was_linked_during_its_plan(
    store_bed: Any,
    registry: Any,
    image_factory: Any,
    unique_repo: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The race made certain: gc (through a proxy to moto) is held at the end of its plan,
    right after it listed the store full of forgotten blobs; the whole batch of archives then
    runs, finds those blobs stored and links them; gc goes on. Without the re-check it deletes
    every blob the archives just linked (verify: missing blobs, restore fails)."""
    bed = store_bed("s3")
    url, env = store_cli(bed, tmp_path, request)
    refs, digests = push_images(registry, image_factory, unique_repo)
    archive = ("archive", *refs, "--to", url, "--src-tls-verify=false", "--jobs", "4")
    assert run_bale(*archive, env=env).returncode == 0
    forget_all(ArchiveBucket(bed.store))

    moto = request.getfixturevalue("moto_server")
    proxy = FaultProxy(moto.endpoint_url.removeprefix("http://")).start()
    request.addfinalizer(proxy.stop)
    hold = proxy.add(Hold(method="GET", query="uploads", seconds=300))
    assert isinstance(hold, Hold)
    gc = start_bale("gc", url, "--grace", "0s", "--endpoint-url", proxy.url, env=env)
    try:
        deadline = time.monotonic() + 120
        while hold.fired == 0 and gc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hold.fired == 1, "gc never reached the end of its plan"
        racing = run_bale(*archive, env=env)
        assert racing.returncode == 0, show(racing)
    finally:
        hold.release()
        out, err = gc.communicate(timeout=120)
    assert gc.returncode == 0, err
    verified = run_bale("verify", url, "--deep", env=env)
    assert verified.returncode == 0, show(verified)
    restore_all(registry, unique_repo, url, env, digests)
    assert "removed blob" not in out, out


def push_images(registry: Any, image_factory: Any, repo: str) -> tuple[list[str], dict[str, str]]:
    refs, digests = [], {}
    for i in range(IMAGES):
        ref = f"{registry.host}/{repo}/app{i % 2}:v{i}"
        layers = (BASE, LayerSpec(2000 + 100 * i, seed=910 + i))
        digests[ref] = image_factory.build_and_push(ref, registry, layers=layers).digest
        refs.append(ref)
    return refs, digests


def restore_all(
    registry: Any, repo: str, url: str, env: dict[str, str], digests: dict[str, str]
) -> None:
    """Every image restores into the test registry with the digest it was pushed with."""
    for ref, digest in digests.items():
        dest = f"docker://{registry.host}/{repo}/restored:{ref.rsplit(':', 1)[1]}"
        done = run_bale("restore", ref, dest, "--from", url, "--dest-tls-verify=false", env=env)
        assert done.returncode == 0, show(done)
        assert digest in done.stdout + done.stderr
