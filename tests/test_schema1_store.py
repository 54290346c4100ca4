"""A Docker schema1 manifest in the store: gc and verify treat it as an image, not a crash.

bale never archives schema1, but a stock registry sharing the bucket can leave one (an old
image pushed by an old client). gc must keep its layers (it is a live image of that registry)
and verify must check it like any other manifest.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.ops.gc import collect_garbage
from pipeline.ops.verify import verify_store
from tests.bed.cli import isolated_env, run_bale

pytestmark = pytest.mark.integration

REPO = "registry.example/legacy/app"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_schema1_image(store: Any) -> tuple[str, str]:
    """A tagged schema1 image as distribution stores it: (manifest digest, layer digest)."""
    layer = b"a legacy layer" * 100
    layer_digest = _digest(layer)
    manifest = json.dumps(
        {
            "schemaVersion": 1,
            "name": "legacy/app",
            "tag": "old",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": layer_digest}],
            "history": [{"v1Compatibility": json.dumps({"id": "ab" * 32})}],
        },
        indent=3,
    ).encode()
    digest = _digest(manifest)
    store.put(layout.blob_key(layer_digest), layer)
    store.put(layout.blob_key(digest), manifest)
    store.put(layout.layer_link_key(REPO, layer_digest), layout.link_body(layer_digest))
    store.put(layout.revision_link_key(REPO, digest), layout.link_body(digest))
    store.put(layout.tag_current_link_key(REPO, "old"), layout.link_body(digest))
    store.put(layout.tag_index_link_key(REPO, "old", digest), layout.link_body(digest))
    return digest, layer_digest


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_gc_and_verify_cli_accept_a_schema1_manifest(
    kind: str, store_bed: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bed = store_bed(kind, prefix="legacy")
    _, layer_digest = _write_schema1_image(bed.store)
    orphan = b"left by a crash"
    bed.store.put(layout.blob_key(_digest(orphan)), orphan)
    if kind == "s3":
        server = request.getfixturevalue("moto_server")
        url = f"s3://{bed.store.bucket}/legacy"
        extra: tuple[str, ...] = ("--endpoint-url", server.endpoint_url)
        env = isolated_env(
            tmp_path,
            AWS_ACCESS_KEY_ID=server.access_key,
            AWS_SECRET_ACCESS_KEY=server.secret_key,
            AWS_DEFAULT_REGION="us-east-1",
        )
    else:
        url, extra, env = str(bed.store.root), (), isolated_env(tmp_path)

    proc = run_bale("gc", url, *extra, "--older-than", "0s", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    removed = [line.split()[3] for line in proc.stdout.splitlines() if "remove blob" in line]
    assert removed == [_digest(orphan)]  # the schema1 manifest and its layer stay

    proc = run_bale("verify", url, *extra, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr

    # A schema1 manifest whose layer is gone is damage verify names, not a crash.
    bed.store.delete(layout.blob_key(layer_digest))
    proc = run_bale("verify", url, *extra, env=env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"blob-missing {layout.blob_key(layer_digest)}" in proc.stdout + proc.stderr


def test_gc_keeps_a_schema1_images_layers(store_bed: Any) -> None:
    bed = store_bed("local")
    _write_schema1_image(bed.store)
    report = collect_garbage(ArchiveBucket(bed.store), older_than=timedelta(0))
    assert report.blobs == [] and report.live_blobs == 2
    assert verify_store(ArchiveBucket(bed.store)).ok
