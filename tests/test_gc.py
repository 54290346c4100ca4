"""`bale gc` against real stores: two images archived from a real registry (sharing a layer) to a
local directory and to S3 (moto_server); one is forgotten (record and tag deleted) and gc must
find exactly its own blobs, never the shared layer, and leave a store that verifies clean."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.record import ImageRecord
from pipeline.ops.gc import GcStopped, collect_garbage
from pipeline.ops.verify import verify_store
from tests.bed.cli import isolated_env, run_bale
from tests.bed.image_pair import Pushed, archive_both, push_pair
from tests.bed.moto import MOTO_KEYS

pytestmark = pytest.mark.integration

ZERO = timedelta(0)


@pytest.fixture(scope="module")
def pushed(registry: Any, image_factory: Any) -> Pushed:
    return push_pair(registry, image_factory)


def forget(bucket: ArchiveBucket, record: ImageRecord) -> None:
    """Delete an image's record and its tag (current and history links), as a user would."""
    store = bucket.store
    store.delete(record.record_key)
    assert record.tag is not None
    for info in list(store.list(layout.tags_prefix(record.repo) + record.tag + "/")):
        store.delete(info.key)


def blob_keys(store: Any) -> set[str]:
    return {i.key for i in store.list(layout.BLOBS_PREFIX)}


def unique_to_b(pushed: Pushed) -> set[str]:
    return {pushed.b_digest, pushed.b_config, pushed.b_only}


@pytest.mark.parametrize("kind", ["local", pytest.param("s3")])
def test_gc_removes_only_the_forgotten_images_blobs(
    kind: str, store_bed: Any, pushed: Pushed
) -> None:
    bed = store_bed(kind)
    bucket = ArchiveBucket(bed.store)
    _a, b = archive_both(bucket, pushed)
    before = blob_keys(bed.store)

    untouched = collect_garbage(bucket, older_than=ZERO, dry_run=True)
    assert untouched.blobs == [] and untouched.links == [] and untouched.dangling == []
    assert untouched.live_blobs == 7

    forget(bucket, b)
    dry = collect_garbage(bucket, older_than=ZERO, dry_run=True)
    assert {x.digest for x in dry.blobs} == unique_to_b(pushed)
    assert pushed.shared not in {x.digest for x in dry.blobs}
    sizes = {x.digest: x.size for x in b.blobs}
    assert {x.digest: x.size for x in dry.blobs} == {d: sizes[d] for d in unique_to_b(pushed)}
    assert dry.bytes_freed == sum(sizes[d] for d in unique_to_b(pushed))
    # b's links to its own blobs go with them (config, layer, revision); the shared layer's stays
    assert set(dry.links) == {
        layout.layer_link_key(b.repo, pushed.b_config),
        layout.layer_link_key(b.repo, pushed.b_only),
        layout.revision_link_key(b.repo, pushed.b_digest),
    }
    assert blob_keys(bed.store) == before  # a dry run removes nothing

    kept = collect_garbage(bucket)  # default 24h: b's links are young, so still roots
    assert kept.blobs == [] and kept.links == [] and kept.live_blobs == 7

    done = collect_garbage(bucket, older_than=ZERO)
    assert {x.digest for x in done.blobs} == unique_to_b(pushed)
    assert blob_keys(bed.store) == before - {layout.blob_key(d) for d in unique_to_b(pushed)}
    for key in done.links:
        assert bed.store.head(key) is None
    assert bed.store.head(layout.layer_link_key(b.repo, pushed.shared)) is not None
    report = verify_store(bucket)
    assert report.ok, [str(f) for f in report.faults]
    assert collect_garbage(bucket, older_than=ZERO).blobs == []


@pytest.mark.parametrize("kind", ["local", pytest.param("s3")])
def test_gc_aborts_stale_uploads(kind: str, store_bed: Any) -> None:
    bed = store_bed(kind)
    bucket = ArchiveBucket(bed.store)
    bed.start_stale_upload("images/x/y/crashed.tar")
    assert len(bed.open_uploads()) == 1

    if kind == "local":  # moto dates every upload 2010-11-10, so only here is one young
        young = collect_garbage(bucket, older_than=timedelta(hours=1))
        assert young.uploads == []
        assert len(bed.open_uploads()) == 1

    dry = collect_garbage(bucket, older_than=ZERO, dry_run=True)
    assert [u.key for u in dry.uploads] == ["images/x/y/crashed.tar"]
    assert len(bed.open_uploads()) == 1

    done = collect_garbage(bucket, older_than=ZERO)
    assert [u.key for u in done.uploads] == ["images/x/y/crashed.tar"]
    assert bed.open_uploads() == []


def test_gc_cli_on_s3_lists_then_removes(
    store_bed: Any, moto_server: Any, pushed: Pushed, tmp_path: Path
) -> None:
    bed = store_bed("s3", prefix="g")
    bucket = ArchiveBucket(bed.store)
    _a, b = archive_both(bucket, pushed)
    forget(bucket, b)
    client = moto_server.client()
    upload = client.create_multipart_upload(
        Bucket=bed.store.bucket, Key="g/docker/registry/v2/blobs/sha256/00/partial"
    )["UploadId"]
    env = isolated_env(tmp_path, **MOTO_KEYS)
    url = f"s3://{bed.store.bucket}/g"
    args = ("gc", url, "--endpoint-url", moto_server.endpoint_url, "--older-than", "0s")

    proc = run_bale(*args, "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    blob_lines = [line for line in lines if line.startswith("would remove blob ")]
    assert {line.split()[3] for line in blob_lines} == unique_to_b(pushed)
    assert all(line.split()[5] in ("B", "KiB") for line in blob_lines)  # sizes shown
    assert f"would abort upload docker/registry/v2/blobs/sha256/00/partial {upload}" in proc.stdout
    assert "would be removed" in proc.stderr
    assert len(bed.open_uploads()) == 1

    proc = run_bale(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sum(line.startswith("removed blob ") for line in proc.stdout.splitlines()) == 3
    assert bed.open_uploads() == []
    proc = run_bale("verify", url, "--endpoint-url", moto_server.endpoint_url, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gc_reports_dangling_links_and_keeps_them(
    tmp_path: Path, store_bed: Any, pushed: Pushed
) -> None:
    bed = store_bed("local")
    bucket = ArchiveBucket(bed.store)
    a, b = archive_both(bucket, pushed)
    bed.store.delete(layout.blob_key(pushed.shared))
    report = collect_garbage(bucket, older_than=ZERO)
    assert report.blobs == []
    assert {(d.key, d.digest) for d in report.dangling} == {
        (layout.layer_link_key(a.repo, pushed.shared), pushed.shared),
        (layout.layer_link_key(b.repo, pushed.shared), pushed.shared),
    }
    for d in report.dangling:
        assert bed.store.head(d.key) is not None

    proc = run_bale("gc", str(tmp_path / "store-0"), "--older-than", "0s", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("dangling link ") == 2


def test_gc_stops_before_deleting_when_a_manifest_is_unreadable(
    store_bed: Any, pushed: Pushed
) -> None:
    bed = store_bed("local")
    bucket = ArchiveBucket(bed.store)
    archive_both(bucket, pushed)
    orphan = "sha256:" + "cd" * 32
    bed.store.put(layout.blob_key(orphan), b"left by a crash")
    bed.store.delete(layout.blob_key(pushed.a_digest))
    bed.store.put(layout.blob_key(pushed.a_digest), b"{broken")
    with pytest.raises(GcStopped, match="nothing deleted"):
        collect_garbage(bucket, older_than=ZERO)
    assert bed.store.head(layout.blob_key(orphan)) is not None


def test_young_links_are_roots(store_bed: Any, pushed: Pushed) -> None:
    """A link written moments ago (an archive in progress) keeps its blob even with no tag or
    record yet, as long as the link is younger than --older-than."""
    bed = store_bed("local")
    bucket = ArchiveBucket(bed.store)
    _a, b = archive_both(bucket, pushed)
    forget(bucket, b)
    later = datetime.now(UTC) + timedelta(seconds=30)
    kept = collect_garbage(bucket, older_than=timedelta(minutes=10), now=later)
    assert kept.blobs == [] and kept.links == []
    assert kept.young_blobs == 0  # kept because their links are young roots, not as young blobs
    gone = collect_garbage(bucket, older_than=timedelta(seconds=1), now=later)
    assert {x.digest for x in gone.blobs} == unique_to_b(pushed)


def test_orphan_and_stray_keys_survive(store_bed: Any, tmp_path: Path) -> None:
    bed = store_bed("local")
    bucket = ArchiveBucket(bed.store)
    orphan = "sha256:" + "ef" * 32
    bed.store.put(layout.blob_key(orphan), b"orphan")
    bed.store.put("docker/registry/v2/blobs/README", b"not a blob key")
    bed.store.put("docker/registry/v2/repositories/x/_uploads/abc/data", b"registry upload")
    report = collect_garbage(bucket, older_than=ZERO)
    assert [x.digest for x in report.blobs] == [orphan]
    assert bed.store.head("docker/registry/v2/blobs/README") is not None
    assert bed.store.head("docker/registry/v2/repositories/x/_uploads/abc/data") is not None
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)


def test_link_keys_parse_only_what_layout_builds() -> None:
    from pipeline.archive.links import parse_link_key

    d = "sha256:" + "12" * 32
    for key, kind in (
        (layout.layer_link_key("docker.io/library/nginx", d), "layer"),
        (layout.revision_link_key("127.0.0.1-5000/a/b", d), "revision"),
        (layout.tag_current_link_key("a/b", "v1.0"), "tag-current"),
        (layout.tag_index_link_key("a/b", "v1.0", d), "tag-index"),
    ):
        link = parse_link_key(key)
        assert link is not None and link.kind == kind and link.key == key
    assert parse_link_key(layout.tag_current_link_key("a/b", "v1.0")).tag == "v1.0"  # type: ignore[union-attr]
    for key in (
        "docker/registry/v2/repositories/a/_uploads/x/data",
        "docker/registry/v2/repositories/_layers/sha256/" + "12" * 32 + "/link",
        "docker/registry/v2/repositories/a/../b/_layers/sha256/" + "12" * 32 + "/link",
        "docker/registry/v2/repositories/a/_layers/sha256/" + "AB" * 32 + "/link",
        "docker/registry/v2/repositories/a/_layers/sha512/" + "12" * 32 + "/link",
        "docker/registry/v2/repositories/a/_manifests/tags/bad tag/current/link",
        "docker/registry/v2/blobs/sha256/12/" + "12" * 32 + "/data",
    ):
        assert parse_link_key(key) is None, key
